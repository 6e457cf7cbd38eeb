//! Command line and environment. Flags win over `WAYPOINT_*` variables,
//! which win over defaults; each stage gets its own typed config.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::alerts::Severities;
use crate::ingest::mqtt::{parse_url, MqttConfig};
use crate::rules::engine::RulesConfig;
use crate::track::{PrepareConfig, ShardConfig};

/// Waypoint: electronic-monitoring telemetry server.
#[derive(Debug, Parser)]
#[command(name = "waypoint", version, about, args_override_self = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: ingest from MQTT, store, serve /metrics and probes.
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate(DbArgs),
    /// Enroll, revoke and list devices.
    Devices {
        /// Device action.
        #[command(subcommand)]
        cmd: DevicesCmd,
    },
    /// Provision supervisees, devices, zones, rules and pairings from a file.
    Scenario {
        /// Scenario action.
        #[command(subcommand)]
        cmd: ScenarioCmd,
    },
    /// Print the officer API's OpenAPI document (JSON) and exit.
    Openapi,
    /// Run the whole system on this machine with nothing installed: an
    /// embedded server, a simulated fleet in accelerated time raising every
    /// kind of alert, the dashboard, and a summary at the end.
    Demo(DemoArgs),
    /// Issue and revoke officer API tokens.
    Tokens {
        /// Token action.
        #[command(subcommand)]
        cmd: TokensCmd,
    },
    /// List alerts and record officers' decisions from the shell (the
    /// officer API is the primary interface).
    Alerts {
        /// Alert action.
        #[command(subcommand)]
        cmd: AlertsCmd,
    },
}

/// `waypoint scenario ...`
#[derive(Debug, Subcommand)]
pub enum ScenarioCmd {
    /// Validate and load a scenario file (docs/scenario.md) in one transaction.
    Load {
        /// Path to the JSON file.
        file: std::path::PathBuf,
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Validate a scenario file without touching the database.
    Check {
        /// Path to the JSON file.
        file: std::path::PathBuf,
    },
}

/// `waypoint tokens ...`
#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// Create a token and print it once (only its hash is stored).
    Create {
        /// officer, supervisor, admin or auditor.
        #[arg(long)]
        role: String,
        /// The officer the token acts for (required for officer and
        /// supervisor; must exist and be active).
        #[arg(long)]
        officer: Option<String>,
        /// A label to recognise it by.
        #[arg(long)]
        label: Option<String>,
        /// Expires after this many days, 1..=3650 (default: never).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        expires_in_days: Option<u32>,
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a token by id; it stops working at once.
    Revoke {
        /// Token id (printed by `create`).
        token_id: i64,
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
}

/// `waypoint alerts ...`
#[derive(Debug, Subcommand)]
pub enum AlertsCmd {
    /// List alerts (most severe, newest first) as JSON lines.
    List {
        /// open, acknowledged or resolved.
        #[arg(long)]
        status: Option<String>,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
        /// Most rows.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Acknowledge an alert.
    Ack {
        /// Alert id.
        alert_id: i64,
        /// Who is acting.
        #[arg(long)]
        actor: String,
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Resolve an alert with an outcome and a note.
    Resolve {
        /// Alert id.
        alert_id: i64,
        /// Who is acting.
        #[arg(long)]
        actor: String,
        /// contacted_supervisee, equipment_fault, gps_false_alarm,
        /// approved_absence, referred_for_review, no_action_needed.
        #[arg(long)]
        outcome: String,
        /// Why (required).
        #[arg(long)]
        note: String,
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Add a note to an alert.
    Note {
        /// Alert id.
        alert_id: i64,
        /// Who is acting.
        #[arg(long)]
        actor: String,
        /// The note.
        #[arg(long)]
        note: String,
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
}

/// Database location.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL; the database is created if missing.
    #[arg(
        long,
        env = "WAYPOINT_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/waypoint"
    )]
    pub database_url: String,
    /// Use the SQLite database of an embedded server in this directory
    /// (`serve --embedded`, `demo`) instead of PostgreSQL. A flag only, no
    /// environment variable: the embedded database is never chosen by
    /// accident.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
}

/// Device administration until the officer API exists.
#[derive(Debug, Subcommand)]
pub enum DevicesCmd {
    /// Enroll a device and print how to create its broker credential.
    Add {
        /// Device id: 1-64 of A-Z a-z 0-9 . _ - (it becomes a topic segment).
        device_id: String,
        /// Also accept OwnTracks locations published as `owntracks/<user>/<device>`.
        #[arg(long, value_name = "USER/DEVICE")]
        owntracks: Option<String>,
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a device: its later messages are refused as `device_revoked`.
    Revoke {
        /// Device id.
        device_id: String,
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
    /// List enrolled devices.
    List {
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
}

/// `waypoint serve` settings.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
    /// Run with nothing installed, for demos and pilots: an in-process MQTT
    /// broker (on --mqtt-addr) and a SQLite database (in --data-dir,
    /// default `waypoint-data`); --mqtt-url and --database-url (and their
    /// variables) do not apply. See docs/embedded.md for its limits. A flag
    /// only, no environment variable: a typo in a production environment
    /// can never start it.
    #[arg(long)]
    pub embedded: bool,
    /// Address of the embedded broker's device listener (MQTT 3.1.1; with
    /// --embedded). It has no authentication or ACL: keep it on loopback
    /// unless the network is trusted (docs/embedded.md).
    #[arg(long, default_value = "127.0.0.1:1883", requires = "embedded")]
    pub mqtt_addr: SocketAddr,
    /// Broker URL, `mqtt://[user:pass@]host[:port]`.
    #[arg(
        long,
        env = "WAYPOINT_MQTT_URL",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    pub mqtt_url: String,
    /// HTTP listen address for /metrics, /healthz, /readyz.
    #[arg(long, env = "WAYPOINT_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// MQTT client id: unique per server instance, stable across restarts
    /// (the broker keeps this instance's session under it).
    #[arg(
        long,
        env = "WAYPOINT_MQTT_CLIENT_ID",
        default_value = "waypoint-ingest-1"
    )]
    pub mqtt_client_id: String,
    /// Prefix before every topic (empty, or ending in `/`).
    #[arg(long, env = "WAYPOINT_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Seconds the broker keeps our session and queued messages while we are down.
    #[arg(long, env = "WAYPOINT_SESSION_EXPIRY_SECS", default_value_t = 86_400)]
    pub session_expiry_secs: u32,
    /// MQTT Receive Maximum: unacknowledged publishes in flight to us. It
    /// bounds memory (at most this many payloads are held) and, because acks
    /// wait for commits, it also caps throughput at about this many messages
    /// per commit latency (BENCHMARKS.md).
    #[arg(long, env = "WAYPOINT_RECEIVE_MAXIMUM", default_value_t = 5_000)]
    pub receive_maximum: u16,
    /// Application payload cap in bytes; larger payloads are refused as `oversize`.
    #[arg(long, env = "WAYPOINT_MAX_PAYLOAD_BYTES", default_value_t = 256 * 1024)]
    pub max_payload_bytes: usize,
    /// Parallel shards (each with its own database connection).
    #[arg(long, env = "WAYPOINT_SHARDS", default_value_t = 4)]
    pub shards: usize,
    /// Flush a batch at this many fixes.
    #[arg(long, env = "WAYPOINT_BATCH_MAX_FIXES", default_value_t = 1_000)]
    pub batch_max_fixes: usize,
    /// Flush a batch this many milliseconds after its first message.
    #[arg(long, env = "WAYPOINT_BATCH_MAX_DELAY_MS", default_value_t = 10)]
    pub batch_max_delay_ms: u64,
    /// On shutdown, seconds to keep retrying an unavailable database before
    /// leaving unacked messages to the broker.
    #[arg(long, env = "WAYPOINT_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Override an alert kind's severity, `kind=critical|high|medium|low`
    /// (repeatable; comma-separated in the environment).
    #[arg(long = "severity", env = "WAYPOINT_SEVERITY", value_delimiter = ',')]
    pub severity: Vec<String>,
    /// battery_low at or below this percentage.
    #[arg(long, env = "WAYPOINT_BATTERY_LOW_PCT", default_value_t = 20)]
    pub battery_low_pct: u8,
    /// battery_critical at or below this percentage.
    #[arg(long, env = "WAYPOINT_BATTERY_CRITICAL_PCT", default_value_t = 10)]
    pub battery_critical_pct: u8,
    /// no_signal after this many reporting intervals without a message.
    #[arg(long, env = "WAYPOINT_NO_SIGNAL_INTERVALS", default_value_t = 3)]
    pub no_signal_intervals: u32,
    /// gps_loss after this many seconds of messages without a usable fix.
    #[arg(long, env = "WAYPOINT_GPS_LOSS_SECS", default_value_t = 300)]
    pub gps_loss_secs: u32,
    /// Publish the alert-event log on MQTT (`em/v1/alerts/{device}`).
    #[arg(long, env = "WAYPOINT_PUBLISH_ALERTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub publish_alerts: bool,
    /// Escalate an alert nobody acknowledged after this long, by severity:
    /// `critical=5m,high=15m,medium=1h,low=4h` (units s, m, h; `off` never).
    #[arg(
        long = "escalate-after",
        env = "WAYPOINT_ESCALATE_AFTER",
        value_delimiter = ','
    )]
    pub escalate_after: Vec<String>,
    /// Group named on escalations when the officer has no supervisor.
    #[arg(long, env = "WAYPOINT_ON_CALL_GROUP", default_value = "on-call")]
    pub on_call_group: String,
    /// Failed authentications one client (IPv4 address, IPv6 /64) may make
    /// at once before it is answered 429 (docs/api.md).
    #[arg(long, env = "WAYPOINT_AUTH_FAILURES_BURST", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failures_burst: u32,
    /// Failed authentications a client is forgiven per minute after that.
    #[arg(long, env = "WAYPOINT_AUTH_FAILURES_PER_MINUTE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failures_per_minute: u32,
    /// Serve the officer API under /api/v1 and the dashboard at /.
    #[arg(long, env = "WAYPOINT_API", default_value_t = true, action = clap::ArgAction::Set)]
    pub api: bool,
    /// Basemap tile URL for the dashboard's maps
    /// (`https://host/{z}/{x}/{y}.png`); without one, maps draw zones and
    /// tracks on their own (no internet needed).
    #[arg(long, env = "WAYPOINT_BASEMAP_URL")]
    pub basemap_url: Option<String>,
    /// Attribution the basemap's provider requires.
    #[arg(long, env = "WAYPOINT_BASEMAP_ATTRIBUTION")]
    pub basemap_attribution: Option<String>,
    /// Days raw fixes, refused messages and the message ledger are kept
    /// (by receive time), 7..=3650; fixes that are evidence of an alert are
    /// kept with the alert (docs/storage.md, "Retention").
    #[arg(long, env = "WAYPOINT_RETENTION_DAYS", default_value_t = crate::retention::DEFAULT_DAYS)]
    pub retention_days: u32,
}

/// `waypoint demo`
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How long the simulated fleet runs, in seconds of wall-clock time;
    /// the dashboard stays up afterwards until Ctrl-C unless --exit.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Simulated people (every kind of situation is among them from 20).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(10..=2000))]
    pub devices: u64,
    /// Data directory (default: a new directory under the system's
    /// temporary directory).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Dashboard, API and /metrics address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Port of the embedded broker's device listener (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub mqtt_port: u16,
    /// Stop once the fleet has run and the summary is printed, instead of
    /// keeping the dashboard up until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Print the summary as JSON (for scripts and tests).
    #[arg(long)]
    pub json: bool,
}

/// Bytes of headroom between the payload cap and the MQTT packet cap, for
/// the topic and properties: a payload up to the cap always reaches us and
/// is refused with a record, never dropped by the broker for being too big
/// for this client.
pub const PACKET_HEADROOM: usize = 64 * 1024;

/// Invalid settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad value, with an explanation.
    #[error("{0}")]
    Invalid(String),
}

/// The typed configuration of a running server.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Broker session.
    pub mqtt: MqttConfig,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// Number of shards.
    pub shards: usize,
    /// Per-shard batching and preparation.
    pub shard: ShardConfig,
    /// Shutdown grace when the database is unavailable.
    pub shutdown_grace: Duration,
    /// Rules thresholds and severities.
    pub rules: RulesConfig,
    /// Publish alert events on MQTT.
    pub publish_alerts: bool,
    /// The officer API's tunables; `None` when it is switched off.
    pub api: Option<crate::api::ApiConfig>,
    /// The dashboard's deployment settings (served with the API).
    pub web: crate::web::UiConfig,
    /// Retention of raw data.
    pub retention: crate::retention::RetentionConfig,
}

/// Parses `5m`, `90s`, `1h` or `off`.
fn parse_duration(v: &str) -> Result<Option<Duration>, String> {
    if v == "off" {
        return Ok(None);
    }
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{v:?}: expected a number with s, m or h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{v:?}: unit must be s, m or h")),
    };
    if secs == 0 || secs > 30 * 86_400 {
        return Err(format!("{v:?}: must be between 1s and 30 days (or off)"));
    }
    Ok(Some(Duration::from_secs(secs)))
}

impl ServeArgs {
    fn api_config(&self) -> Result<Option<crate::api::ApiConfig>, ConfigError> {
        if !self.api {
            return Ok(None);
        }
        let mut c = crate::api::ApiConfig {
            on_call_group: self.on_call_group.clone(),
            auth_limits: crate::api::limit::AuthLimits {
                per_client_burst: self.auth_failures_burst,
                per_client_per_minute: self.auth_failures_per_minute,
                ..Default::default()
            },
            ..Default::default()
        };
        for spec in &self.escalate_after {
            let err = |e: String| ConfigError::Invalid(format!("--escalate-after: {e}"));
            let (sev, dur) = spec
                .split_once('=')
                .ok_or_else(|| err(format!("expected severity=duration, got {spec:?}")))?;
            let sev: crate::alerts::Severity = sev.parse().map_err(err)?;
            c.escalate_after[sev as usize] = parse_duration(dur).map_err(err)?;
        }
        Ok(Some(c))
    }

    /// Checks and converts the flags.
    pub fn to_config(&self) -> Result<AppConfig, ConfigError> {
        let bad = |s: String| ConfigError::Invalid(s);
        let (host, port, credentials) = parse_url(&self.mqtt_url).map_err(bad)?;
        if !(self.topic_prefix.is_empty() || self.topic_prefix.ends_with('/'))
            || self.topic_prefix.contains(['+', '#'])
        {
            return Err(bad(format!(
                "--topic-prefix {:?} must be empty or end in '/', without wildcards",
                self.topic_prefix
            )));
        }
        if self.shards == 0 || self.shards > 256 {
            return Err(bad("--shards must be 1..=256".into()));
        }
        if self.receive_maximum == 0 {
            return Err(bad("--receive-maximum must be at least 1".into()));
        }
        if self.batch_max_fixes == 0 {
            return Err(bad("--batch-max-fixes must be at least 1".into()));
        }
        let mut severities = Severities::default();
        for spec in &self.severity {
            severities
                .set(spec)
                .map_err(|e| bad(format!("--severity: {e}")))?;
        }
        if self.battery_critical_pct >= self.battery_low_pct || self.battery_low_pct > 100 {
            return Err(bad(
                "--battery-critical-pct must be below --battery-low-pct (<= 100)".into(),
            ));
        }
        if self.no_signal_intervals == 0 {
            return Err(bad("--no-signal-intervals must be at least 1".into()));
        }
        let rules = RulesConfig {
            severities,
            battery_low_pct: self.battery_low_pct,
            battery_critical_pct: self.battery_critical_pct,
            no_signal_intervals: self.no_signal_intervals,
            gps_loss_after: chrono::TimeDelta::seconds(i64::from(self.gps_loss_secs)),
            ..RulesConfig::default()
        };
        let retention = crate::retention::RetentionConfig::new(self.retention_days)
            .map_err(|e| bad(format!("--retention-days: {e}")))?;
        // The ledger is purged with the same cutoff: it must outlive every
        // redelivery the broker can still make from our session.
        if u64::from(self.retention_days) * 86_400 < 2 * u64::from(self.session_expiry_secs) {
            return Err(bad(format!(
                "--retention-days {} must be at least twice --session-expiry-secs ({} s): \
                 the message ledger must outlive every redelivery",
                self.retention_days, self.session_expiry_secs
            )));
        }
        let max_packet = self.max_payload_bytes.saturating_add(PACKET_HEADROOM);
        let max_packet = u32::try_from(max_packet)
            .map_err(|_| bad("--max-payload-bytes is too large".into()))?;
        Ok(AppConfig {
            mqtt: MqttConfig {
                host,
                port,
                credentials,
                client_id: self.mqtt_client_id.clone(),
                topic_prefix: self.topic_prefix.clone(),
                session_expiry_secs: self.session_expiry_secs,
                receive_maximum: self.receive_maximum,
                max_packet_bytes: max_packet,
                keep_alive: Duration::from_secs(30),
            },
            http_addr: self.http_addr,
            shards: self.shards,
            shard: ShardConfig {
                max_batch_fixes: self.batch_max_fixes,
                max_delay: Duration::from_millis(self.batch_max_delay_ms),
                prepare: PrepareConfig {
                    topic_prefix: self.topic_prefix.clone(),
                    max_payload: self.max_payload_bytes,
                },
            },
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            rules,
            publish_alerts: self.publish_alerts,
            api: self.api_config()?,
            web: crate::web::UiConfig {
                basemap_url: match &self.basemap_url {
                    Some(u) if !(u.starts_with("https://") || u.starts_with("http://")) => {
                        return Err(bad(format!("--basemap-url {u:?} must be an http(s) URL")))
                    }
                    u => u.clone(),
                },
                basemap_attribution: self.basemap_attribution.clone(),
            },
            retention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<AppConfig, String> {
        let mut v = vec!["waypoint", "serve"];
        v.extend_from_slice(extra);
        let cli = Cli::try_parse_from(v).map_err(|e| e.to_string())?;
        let Command::Serve(s) = cli.command else {
            unreachable!()
        };
        s.to_config().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid_and_layered() {
        let c = args(&[]).unwrap();
        assert!(c.mqtt.max_packet_bytes as usize > c.shard.prepare.max_payload);
        assert_eq!(c.mqtt.port, 1883);
    }

    #[test]
    fn bad_values_get_clear_errors() {
        assert!(args(&["--topic-prefix", "x"])
            .unwrap_err()
            .contains("end in '/'"));
        assert!(args(&["--shards", "0"]).unwrap_err().contains("shards"));
        assert!(args(&["--mqtt-url", "http://x"])
            .unwrap_err()
            .contains("scheme"));
        assert!(args(&["--http-addr", "nope"]).is_err());
        assert!(args(&["--severity", "no_signal=urgent"])
            .unwrap_err()
            .contains("severity"));
        assert!(args(&["--battery-critical-pct", "30"])
            .unwrap_err()
            .contains("battery"));
        assert!(args(&["--escalate-after", "critical=5x"])
            .unwrap_err()
            .contains("unit"));
        assert!(args(&["--escalate-after", "critical=3000000000h"])
            .unwrap_err()
            .contains("30 days"));
        assert!(args(&["--basemap-url", "ftp://tiles/{z}/{x}/{y}.png"])
            .unwrap_err()
            .contains("basemap"));
        assert!(args(&["--retention-days", "0"])
            .unwrap_err()
            .contains("retention"));
        assert!(args(&["--retention-days", "3651"])
            .unwrap_err()
            .contains("retention"));
        assert!(
            args(&["--retention-days", "7", "--session-expiry-secs", "400000"])
                .unwrap_err()
                .contains("ledger")
        );
        assert_eq!(args(&[]).unwrap().retention.days, 90);
        assert!(args(&["--escalate-after", "urgent=5m"])
            .unwrap_err()
            .contains("severity"));
        let c = args(&["--escalate-after", "critical=90s,low=off"]).unwrap();
        let api = c.api.unwrap();
        assert_eq!(api.escalate_after[0], Some(Duration::from_secs(90)));
        assert_eq!(api.escalate_after[3], None);
        let c = args(&["--severity", "battery_low=high,no_signal=critical"]).unwrap();
        assert_eq!(
            c.rules.severities.of(crate::alerts::AlertKind::NoSignal),
            crate::alerts::Severity::Critical
        );
    }
}
