//! `waypoint demo`: the whole system on one machine in about a minute.
//!
//! ```text
//! embedded server (rumqttd + SQLite) ◀── firmware-sim fleet (in-process, accelerated time)
//!        │ alert log ──▶ live lines on stdout (as an officer's queue shows them)
//!        └─ dashboard + API ◀── the demo officer's token
//! end: summary (fixes stored, alerts by kind, PUBACK and alert latency)
//! ```
//!
//! The fleet is firmware-sim's: seeded people with every persona (curfew
//! breaker, exclusion-zone entrant, strap opener, battery neglect, lost
//! coverage, victim pairing, ...), replayed at 80× so an evening's worth of
//! situations happens in under a minute. Every supervisee is on one demo
//! officer's caseload so that officer's dashboard shows everything.
//! Nothing here acts on anyone: alerts are printed, as prompts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::alerts::AlertKind;
use crate::api::auth::{self, Role};
use crate::clock::{Clock, SystemClock};
use crate::config::{AppConfig, DemoArgs};
use crate::embedded::{self, EmbeddedError};
use crate::scenario::Scenario;
use crate::store::sql::Q;
use crate::store::{Store, StoreError};

/// The officer whose caseload is the whole demo fleet.
pub const DEMO_OFFICER: &str = "demo-officer";

/// Simulated seconds per wall-clock second.
const SPEED: f64 = 80.0;

/// Wall-clock seconds left after the fleet stops publishing for the last
/// decisions (no_signal needs a few report intervals of silence).
const SETTLE_S: f64 = 12.0;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Bad flags.
    #[error("{0}")]
    Args(String),
    /// The embedded server.
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// Provisioning or reading the results.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The simulated fleet.
    #[error("simulated fleet: {0}")]
    Fleet(String),
    /// Reading the results back.
    #[error("reading the results: {0}")]
    Results(String),
}

/// What the demo did, printed at the end (`--json` for scripts).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Where the database is.
    pub data_dir: PathBuf,
    /// Dashboard URL.
    pub dashboard: String,
    /// Simulated people.
    pub devices: u64,
    /// Fixes the fleet sent.
    pub fixes_sent: u64,
    /// Fixes stored in the database.
    pub fixes_stored: i64,
    /// Messages the broker did not acknowledge.
    pub puback_missing: u64,
    /// Alerts raised, by kind.
    pub alerts_by_kind: BTreeMap<String, i64>,
    /// Kinds the engine can raise that did not appear.
    pub kinds_missing: Vec<String>,
    /// PUBACK latency (publish → broker ack), ms: p50, p99, max.
    pub puback_ms: [f64; 3],
    /// Alert latency (deciding publish → alert on the MQTT alert topic),
    /// ms: p50, p99, max.
    pub alert_ms: [f64; 3],
    /// Stopped by Ctrl-C before the fleet finished.
    pub stopped_early: bool,
}

/// Kinds the demo must show: every kind the engine raises from protocol v1
/// (`body_contact_lost` has no report in it yet; docs/rules.md).
pub fn demo_kinds() -> Vec<&'static str> {
    AlertKind::ALL
        .iter()
        .filter(|k| **k != AlertKind::BodyContactLost)
        .map(|k| k.as_str())
        .collect()
}

/// Runs the demo. `cfg` is the server configuration (defaults, with the
/// HTTP address of the flags); `stop` ends it early (Ctrl-C).
pub async fn run(
    args: &DemoArgs,
    cfg: AppConfig,
    stop: CancellationToken,
) -> Result<Summary, DemoError> {
    if !(args.duration.is_finite() && (20.0..=3600.0).contains(&args.duration)) {
        return Err(DemoError::Args(
            "--duration must be 20..=3600 seconds (the fleet needs ~20 s to show every kind)"
                .into(),
        ));
    }
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "waypoint-demo-{}",
            SystemClock.now().format("%Y%m%d-%H%M%S")
        )),
    };
    let mqtt = std::net::SocketAddr::from(([127, 0, 0, 1], args.mqtt_port));
    let emb = embedded::start(cfg, &data_dir, mqtt, Arc::new(SystemClock)).await?;
    // Whatever happens next, the server drains and the database closes.
    let result = show(args, &emb, data_dir, stop.clone()).await;
    if result.is_ok() && !args.exit && !stop.is_cancelled() {
        if !args.json {
            println!(
                "\nThe dashboard stays up at http://{}/ — Ctrl-C to stop.",
                emb.running.http_addr
            );
        }
        stop.cancelled().await;
    }
    let store = emb.store.clone();
    emb.running.stop().await;
    store.close().await;
    result
}

/// Provisions the fleet, runs it with alerts printed live, and prints the
/// summary.
async fn show(
    args: &DemoArgs,
    emb: &embedded::Embedded,
    data_dir: PathBuf,
    stop: CancellationToken,
) -> Result<Summary, DemoError> {
    // Counted from here: a reused --data-dir holds earlier runs.
    let started = SystemClock.now();
    let db = emb.store.api_db();
    let dashboard = format!("http://{}/", emb.running.http_addr);

    // The fleet: every persona, a window placed so that evenings (curfews)
    // fall inside it.
    let fleet_s = (args.duration - SETTLE_S).max(10.0);
    let tz: chrono_tz::Tz = "Europe/London".parse().expect("a known zone");
    let (start_ms, span_ms) = firmware_sim::fleet::window(&tz, SystemClock.now(), SPEED, fleet_s);
    let fleet = firmware_sim::fleet::Fleet::generate(firmware_sim::fleet::FleetParams {
        seed: 7,
        devices: args.devices as usize,
        mix: firmware_sim::persona::Mix::default(),
        interval_s: 2,
        fixes_per_message: 1,
        frame: firmware_sim::world::Frame {
            lat0: 51.507,
            lon0: -0.128,
        },
        time_zone: "Europe/London".into(),
        id_prefix: "demo-".into(),
        start_ms,
        span_ms,
        server: firmware_sim::fleet::ServerRules::default(),
    })
    .map_err(|e| DemoError::Fleet(e.to_string()))?;
    let mut doc = fleet.scenario();
    if let Some(people) = doc["supervisees"].as_array_mut() {
        for p in people {
            p["officer"] = DEMO_OFFICER.into();
        }
    }
    let scenario =
        Scenario::parse(&doc.to_string()).map_err(|e| DemoError::Fleet(e.to_string()))?;
    emb.store.apply_scenario(&scenario, "demo").await?;
    let token = auth::create_token(
        &db,
        Role::Officer,
        Some(DEMO_OFFICER),
        Some("waypoint demo"),
        Some(SystemClock.now() + chrono::TimeDelta::days(1)),
    )
    .await
    .map_err(|e| DemoError::Fleet(format!("demo token: {e}")))?;

    if !args.json {
        println!("Waypoint demo: an embedded server and {} simulated people at {SPEED}× speed for {:.0} s.\n", args.devices, args.duration);
        println!("  Dashboard     {dashboard}");
        println!("  Officer token {}", token.token);
        println!(
            "                (sign in with it: it sees {DEMO_OFFICER}'s caseload, the whole fleet)"
        );
        println!("  API           {}api/v1/openapi.json", dashboard);
        println!(
            "  MQTT          mqtt://{} (MQTT 3.1.1, no authentication)",
            emb.broker.local_addr()
        );
        println!("  Data          {}\n", data_dir.display());
        println!("Alerts as officers see them (a prompt to look, never an action):");
    }
    let printer = tokio::spawn(print_alerts(
        emb.running.outbox.subscribe(),
        args.json,
        stop.clone(),
    ));

    let opts = firmware_sim::run::RunOptions {
        broker: firmware_sim::run::Broker {
            host: "127.0.0.1".into(),
            port: emb.broker.local_addr().port(),
            username: None,
            password: None,
            device_usernames: false,
            listener: None,
        },
        connections: 2,
        encoding: firmware_sim::encode::Encoding::Binary,
        prefix: String::new(),
        client_id: "waypoint-demo-fleet".into(),
        speed: SPEED,
        settle: Duration::from_secs_f64(SETTLE_S),
        check_alerts: true,
        drain: false,
        progress: false,
        inflight: 200,
        readback: None,
    };
    let report = firmware_sim::run::run(&fleet, &opts, stop.clone())
        .await
        .map_err(|e| DemoError::Fleet(e.to_string()))?;
    printer.abort();

    // Victims' devices are not counted as sent; people's devices are the
    // assigned ones.
    let fixes_stored: i64 = Q::new(
        "SELECT count(*) FROM fixes WHERE received_at >= $1 \
         AND device_key IN (SELECT device_key FROM device_assignments)",
    )
    .bind(started)
    .scalar(&db)
    .await
    .map_err(|e| DemoError::Results(e.to_string()))?;
    let mut alerts_by_kind = BTreeMap::new();
    for r in Q::new("SELECT kind, count(*) AS n FROM alerts WHERE raised_at >= $1 GROUP BY kind")
        .bind(started)
        .fetch_all(&db)
        .await
        .map_err(|e| DemoError::Results(e.to_string()))?
    {
        alerts_by_kind.insert(r.get::<String>("kind"), r.get::<i64>("n"));
    }
    let kinds_missing = demo_kinds()
        .into_iter()
        .filter(|k| !alerts_by_kind.contains_key(*k))
        .map(str::to_owned)
        .collect();
    let p = |q: &firmware_sim::run::stats::Percentiles| [q.p50_ms, q.p99_ms, q.max_ms];
    let summary = Summary {
        data_dir,
        dashboard,
        devices: args.devices,
        fixes_sent: report.load.fixes_sent,
        fixes_stored,
        puback_missing: report.load.puback_missing,
        alerts_by_kind,
        kinds_missing,
        puback_ms: p(&report.puback_latency),
        alert_ms: p(&report.alert_latency),
        stopped_early: report.load.stopped_early,
    };
    print_summary(&summary, args.json);
    Ok(summary)
}

/// Prints one line per raised or escalated alert until `stop`.
async fn print_alerts(
    mut rx: tokio::sync::broadcast::Receiver<crate::alerts::AlertEvent>,
    quiet: bool,
    stop: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let e = tokio::select! {
            _ = stop.cancelled() => return,
            e = rx.recv() => e,
        };
        match e {
            Ok(e) if !quiet && e.event_type == "raised" => {
                let a = &e.alert;
                let s = |k: &str| a[k].as_str().unwrap_or("?").to_owned();
                println!(
                    "  {}  {:<8} {:<22} {:<12} {:<9} {}",
                    e.at.format("%H:%M:%S"),
                    s("severity").to_uppercase(),
                    s("kind"),
                    e.audience.case_ref.as_deref().unwrap_or("-"),
                    s("confidence"),
                    s("explanation"),
                );
            }
            Ok(_) => {}
            // A slow terminal skips lines; the summary counts from the database.
            Err(RecvError::Lagged(n)) => {
                if !quiet {
                    println!("  … {n} alert events not shown (the dashboard has them all)");
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// The end-of-run summary, as a table or JSON.
pub fn print_summary(s: &Summary, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(s).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
        return;
    }
    println!("\nSummary");
    println!(
        "  fixes sent {}, stored {}{}",
        s.fixes_sent,
        s.fixes_stored,
        if s.puback_missing > 0 {
            format!(", {} not acknowledged by the broker", s.puback_missing)
        } else {
            String::new()
        }
    );
    println!("  alerts by kind:");
    for (k, n) in &s.alerts_by_kind {
        println!("    {k:<24} {n}");
    }
    if !s.kinds_missing.is_empty() {
        println!("  not seen this run: {}", s.kinds_missing.join(", "));
    }
    println!(
        "  PUBACK latency  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.puback_ms[0], s.puback_ms[1], s.puback_ms[2]
    );
    println!(
        "  alert latency   p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (deciding fix → alert published)",
        s.alert_ms[0], s.alert_ms[1], s.alert_ms[2]
    );
    println!("  data kept in {}", s.data_dir.display());
}
