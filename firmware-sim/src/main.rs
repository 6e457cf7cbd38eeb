//! `firmware-sim`: parse the command line, build or load the fleet,
//! provision it, run it, print the report. Everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use firmware_sim::encode::Encoding;
use firmware_sim::fleet::{window, Fleet, FleetParams, ServerRules};
use firmware_sim::persona::{Mix, Persona};
use firmware_sim::provision::{ApiTarget, Provisioner};
use firmware_sim::readback::Readback;
use firmware_sim::run::{Broker, RunOptions};
use firmware_sim::world::Frame;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "firmware-sim",
    version,
    about = "Device-fleet simulator for Waypoint: load test with ground-truth alert checks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Provision a fleet, run it against the broker, check the alerts, report.
    Run(Box<RunArgs>),
    /// Generate a fleet and write it (and its Waypoint scenario) to files.
    Generate {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Fleet file to write (reload it with `run --fleet-file`).
        #[arg(long)]
        save_fleet: PathBuf,
        /// Also write the Waypoint scenario (`waypoint scenario load` format).
        #[arg(long)]
        scenario_out: Option<PathBuf>,
    },
    /// Draw a chart (SVG) of one or more `run --report` files.
    Chart {
        /// Report files, each optionally `path=label`.
        #[arg(long = "input", required = true)]
        inputs: Vec<String>,
        /// SVG file to write.
        #[arg(long)]
        out: PathBuf,
        /// Chart title.
        #[arg(long, default_value = "firmware-sim")]
        title: String,
    },
}

#[derive(Args)]
struct FleetArgs {
    /// Random seed: the same seed and options give the same fleet and messages.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Supervisee devices (victims' devices of the victim-pair persona come on top).
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Persona weights, e.g. `compliant=90,curfew_violator=5,strap_tamper=5`.
    #[arg(long)]
    mix: Option<Mix>,
    /// Seconds between a device's messages, in simulated time.
    #[arg(long, default_value_t = 60)]
    interval: u32,
    /// Fixes per message, spread over the interval.
    #[arg(long, default_value_t = 1)]
    fixes_per_message: u32,
    /// City centre, `lat,lon`.
    #[arg(long, default_value = "40.70,-73.95", value_parser = parse_center)]
    center: (f64, f64),
    /// IANA time zone of the supervisees (curfews are local).
    #[arg(long, default_value = "America/New_York")]
    time_zone: String,
    /// Prefix of every id the fleet provisions. Default: `sim<run tag>-`,
    /// new for every run, because the server judges a device's fixes on its
    /// own timeline and a replay of an earlier window with the same ids
    /// would arrive "late". Give a fixed prefix (and --start) to reproduce
    /// a run byte for byte.
    #[arg(long)]
    id_prefix: Option<String>,
    /// Real seconds the load runs.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Total messages/s to offer (sets the time acceleration).
    #[arg(long, conflicts_with = "speed")]
    rate: Option<f64>,
    /// Simulated seconds per real second (1 = real time).
    #[arg(long)]
    speed: Option<f64>,
    /// Start of the simulated window (RFC 3339). Default: real time starts
    /// now; accelerated runs replay a window that ends before now, placed so
    /// a curfew starts inside it.
    #[arg(long)]
    start: Option<chrono::DateTime<chrono::Utc>>,
    /// Server's `--gps-loss-secs` (the ground truth mirrors it).
    #[arg(long, default_value_t = 300)]
    gps_loss_secs: u32,
    /// Server's `--no-signal-intervals`.
    #[arg(long, default_value_t = 3)]
    no_signal_intervals: u32,
    /// Server's `--battery-low-pct`.
    #[arg(long, default_value_t = 20)]
    battery_low_pct: u8,
    /// Server's `--battery-critical-pct`.
    #[arg(long, default_value_t = 10)]
    battery_critical_pct: u8,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// Load the fleet from a file written by `generate` or `--save-fleet`
    /// (its window and layout; --duration still sets the real length).
    #[arg(long)]
    fleet_file: Option<PathBuf>,
    /// Write the generated fleet to a file.
    #[arg(long)]
    save_fleet: Option<PathBuf>,
    /// Broker URL.
    #[arg(
        long,
        env = "FIRMWARE_SIM_BROKER",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    broker: String,
    /// Username for the publishing connections.
    #[arg(long, env = "FIRMWARE_SIM_USERNAME")]
    username: Option<String>,
    /// Password.
    #[arg(long, env = "FIRMWARE_SIM_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Log each connection in as its first device's id (with --password),
    /// as a per-device broker ACL expects; use with --connections equal to
    /// the device count for one connection per device.
    #[arg(long)]
    device_usernames: bool,
    /// Username of the alert listener (default: --username).
    #[arg(long, env = "FIRMWARE_SIM_ALERTS_USERNAME")]
    alerts_username: Option<String>,
    /// Password of the alert listener.
    #[arg(long, env = "FIRMWARE_SIM_ALERTS_PASSWORD", hide_env_values = true)]
    alerts_password: Option<String>,
    /// MQTT connections the devices share (one per device for realism, up
    /// to the ~28k ephemeral ports of one host).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Payload encoding.
    #[arg(long, default_value = "json")]
    encoding: Encoding,
    /// Topic prefix of the deployment (as the server's --topic-prefix).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Client id prefix (unique per simulator instance).
    #[arg(long, default_value = "firmware-sim")]
    client_id: String,
    /// Unacknowledged publishes per connection.
    #[arg(long, default_value_t = 1000)]
    inflight: u16,
    /// Longest wait after the load for PUBACKs, stored fixes and alerts (s).
    #[arg(long, default_value_t = 60.0)]
    settle: f64,
    /// Do not listen for alerts (no ground-truth check).
    #[arg(long)]
    no_alerts: bool,
    /// Broker-only baseline: subscribe to the telemetry and drain it (no server needed).
    #[arg(long)]
    drain: bool,
    /// Waypoint's database, to count stored fixes (and to provision).
    #[arg(long, env = "WAYPOINT_DATABASE_URL")]
    database_url: Option<String>,
    /// Waypoint's metrics endpoint (http://host:port/metrics), for the lag series.
    #[arg(long)]
    metrics_url: Option<String>,
    /// The `waypoint` binary used to provision (when no --api-url).
    #[arg(long)]
    waypoint_bin: Option<PathBuf>,
    /// Provision through the officer API of this server
    /// (http://host:port) instead of the `waypoint` binary.
    #[arg(long, requires = "api_token")]
    api_url: Option<String>,
    /// Admin token for --api-url (`waypoint tokens create --role admin`).
    #[arg(long, env = "FIRMWARE_SIM_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Do not provision (the fleet is already loaded).
    #[arg(long)]
    no_provision: bool,
    /// Leave the fleet's assignments open after the run.
    #[arg(long)]
    keep_assignments: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report (with the time series) to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// `sim<base-36 of the current second>-`: a short prefix new for every run.
fn run_tag() -> String {
    let mut n = chrono::Utc::now().timestamp().max(0) as u64;
    let mut tag = Vec::new();
    while n > 0 {
        tag.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    tag.reverse();
    format!("sim{}-", String::from_utf8_lossy(&tag))
}

fn parse_center(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s.split_once(',').ok_or("expected lat,lon")?;
    let lat: f64 = a.trim().parse().map_err(|_| "latitude is not a number")?;
    let lon: f64 = b.trim().parse().map_err(|_| "longitude is not a number")?;
    if !(-80.0..=80.0).contains(&lat) || !(-179.0..=179.0).contains(&lon) {
        return Err("centre out of range (|lat| ≤ 80, |lon| ≤ 179)".into());
    }
    Ok((lat, lon))
}

impl FleetArgs {
    /// Builds the fleet and returns it with the acceleration to run it at.
    fn build(&self) -> anyhow::Result<(Fleet, f64)> {
        let mix = self.mix.clone().unwrap_or_default();
        anyhow::ensure!(
            self.duration > 0.0 && self.duration.is_finite(),
            "--duration must be a positive number of seconds"
        );
        anyhow::ensure!(
            (1..=1_000_000).contains(&self.devices),
            "--devices must be 1..=1000000"
        );
        let victims = mix
            .assign(self.devices)
            .iter()
            .filter(|p| **p == Persona::VictimPair)
            .count();
        let total = (self.devices + victims) as f64;
        let speed = match (self.rate, self.speed) {
            (Some(r), _) => {
                anyhow::ensure!(r > 0.0, "--rate must be positive");
                r * f64::from(self.interval.max(1)) / total
            }
            (None, Some(s)) => s,
            (None, None) => 60.0,
        };
        anyhow::ensure!(
            speed > 0.0 && speed.is_finite(),
            "the acceleration must be positive"
        );
        anyhow::ensure!(
            speed * self.duration * 1000.0 <= firmware_sim::fleet::MAX_SPAN_MS as f64,
            "--duration × speed must stay within 366 days of simulated time"
        );
        let tz: chrono_tz::Tz = self
            .time_zone
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown time zone {:?}", self.time_zone))?;
        let (start_ms, span_ms) = match self.start {
            Some(s) => (
                s.timestamp_millis(),
                (self.duration * speed * 1000.0) as i64,
            ),
            None => window(&tz, chrono::Utc::now(), speed, self.duration),
        };
        let params = FleetParams {
            seed: self.seed,
            devices: self.devices,
            mix,
            interval_s: self.interval,
            fixes_per_message: self.fixes_per_message,
            frame: Frame {
                lat0: self.center.0,
                lon0: self.center.1,
            },
            time_zone: self.time_zone.clone(),
            id_prefix: self.id_prefix.clone().unwrap_or_else(run_tag),
            start_ms,
            span_ms,
            server: ServerRules {
                gps_loss_s: self.gps_loss_secs,
                no_signal_intervals: self.no_signal_intervals,
                battery_low_pct: self.battery_low_pct,
                battery_critical_pct: self.battery_critical_pct,
                ..ServerRules::default()
            },
        };
        Ok((Fleet::generate(params)?, speed))
    }
}

fn broker(a: &RunArgs) -> anyhow::Result<Broker> {
    let u =
        url::Url::parse(&a.broker).map_err(|e| anyhow::anyhow!("--broker {:?}: {e}", a.broker))?;
    anyhow::ensure!(
        u.scheme() == "mqtt" || u.scheme() == "tcp",
        "--broker {:?}: only mqtt:// (plain TCP) is supported",
        a.broker
    );
    let host = u
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("--broker {:?} has no host", a.broker))?;
    Ok(Broker {
        host: host.to_string(),
        port: u.port().unwrap_or(1883),
        username: a.username.clone(),
        password: a.password.clone(),
        device_usernames: a.device_usernames,
        listener: a
            .alerts_username
            .clone()
            .map(|u| (u, a.alerts_password.clone().unwrap_or_default())),
    })
}

async fn run(a: RunArgs) -> anyhow::Result<bool> {
    let broker = broker(&a)?;
    anyhow::ensure!(
        a.settle.is_finite() && a.settle >= 0.0,
        "--settle must be a number of seconds"
    );
    anyhow::ensure!(
        (1..=30_000).contains(&a.connections),
        "--connections must be 1..=30000 (one host has ~28k ephemeral ports)"
    );
    let (fleet, speed) = match &a.fleet_file {
        Some(f) => {
            let fleet = Fleet::load(&f.display().to_string())?;
            anyhow::ensure!(
                a.fleet.duration > 0.0 && a.fleet.duration.is_finite(),
                "--duration must be a positive number of seconds"
            );
            let speed = fleet.params.span_ms as f64 / 1000.0 / a.fleet.duration;
            (fleet, speed)
        }
        None => a.fleet.build()?,
    };
    if let Some(f) = &a.save_fleet {
        fleet.save(&f.display().to_string())?;
    }
    let provisioner = Provisioner {
        bin: a
            .waypoint_bin
            .clone()
            .unwrap_or_else(Provisioner::default_bin),
        database_url: a.database_url.clone(),
        api: a
            .api_url
            .clone()
            .zip(a.api_token.clone())
            .map(|(url, token)| ApiTarget { url, token }),
    };
    if !a.no_provision {
        let took = provisioner.load(&fleet.scenario()).await?;
        eprintln!(
            "provisioned {} devices in {:.1} s",
            fleet.devices.len(),
            took.as_secs_f64()
        );
    }
    let readback = match (&a.database_url, &a.metrics_url) {
        (None, None) => None,
        (d, m) => Some(Readback::connect(d.as_deref(), m.as_deref()).await?),
    };
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping: finishing the summary (Ctrl-C again to abort)");
            s.cancel();
            let _ = tokio::signal::ctrl_c().await;
            std::process::exit(130);
        }
    });
    let opts = RunOptions {
        broker,
        connections: a.connections,
        encoding: a.encoding,
        prefix: a.topic_prefix.clone(),
        client_id: a.client_id.clone(),
        speed,
        settle: Duration::from_secs_f64(a.settle.max(0.0)),
        check_alerts: !a.no_alerts && !a.drain,
        drain: a.drain,
        progress: !a.no_progress && !a.json,
        inflight: a.inflight,
        readback,
    };
    let report = firmware_sim::run::run(&fleet, &opts, stop).await;
    if !a.no_provision && !a.keep_assignments {
        if let Err(e) = provisioner.load(&fleet.teardown(chrono::Utc::now())).await {
            eprintln!("warning: could not close the fleet's assignments: {e}");
        }
    }
    let report = report?;
    if let Some(f) = &a.report {
        std::fs::write(f, serde_json::to_vec_pretty(&report)?)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(report.ok())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(a) => run(*a).await,
        Cmd::Generate {
            fleet,
            save_fleet,
            scenario_out,
        } => (|| {
            let (f, _) = fleet.build()?;
            f.save(&save_fleet.display().to_string())?;
            if let Some(s) = scenario_out {
                std::fs::write(&s, serde_json::to_vec(&f.scenario())?)?;
            }
            eprintln!("wrote {} devices", f.devices.len());
            Ok(true)
        })(),
        Cmd::Chart { inputs, out, title } => {
            firmware_sim::chart::draw(&inputs, &out, &title).map(|_| true)
        }
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("firmware-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}
