//! firmware-sim against a running server: a small fleet of every persona,
//! replayed at 80× through Mosquitto into a server on PostgreSQL. Every
//! violation the simulator injected must be raised, nothing it did not
//! inject may be, and every fix sent must be stored.

mod common;

use std::time::Duration;

use common::*;
use firmware_sim::encode::Encoding;
use firmware_sim::fleet::{window, Fleet, FleetParams, ServerRules};
use firmware_sim::persona::Mix;
use firmware_sim::provision::{ApiTarget, Provisioner};
use firmware_sim::readback::Readback;
use firmware_sim::run::{run, Broker, RunOptions};
use firmware_sim::world::Frame;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_injected_violation_is_raised_and_nothing_else() {
    let db = TestDb::new().await;
    let o = ServerOpts::new(&db);
    let server = start_server(&o).await;

    // A 2 s interval makes no_signal's threshold 6 s of wall clock, so the
    // battery-neglect tag that dies mid-run is silent long enough to raise it.
    let (speed, duration_s) = (80.0, 30.0);
    let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let (start_ms, span_ms) = window(&tz, chrono::Utc::now(), speed, duration_s);
    let fleet = Fleet::generate(FleetParams {
        seed: 11,
        devices: 30,
        mix: Mix::default(),
        interval_s: 2,
        fixes_per_message: 1,
        frame: Frame {
            lat0: 40.70,
            lon0: -73.95,
        },
        time_zone: "America/New_York".into(),
        id_prefix: unique("s"),
        start_ms,
        span_ms,
        server: ServerRules::default(),
    })
    .unwrap();
    // Provisioned as an administrator would: through the officer API.
    let admin = common::api::token(&db.pool, waypoint::api::auth::Role::Admin, None).await;
    Provisioner {
        bin: env!("CARGO_BIN_EXE_waypoint").into(),
        database_url: Some(db.url.clone()),
        api: Some(ApiTarget {
            url: format!("http://{}", server.http_addr),
            token: admin,
        }),
    }
    .load(&fleet.scenario())
    .await
    .expect("provisioning through POST /api/v1/scenario");

    let (host, port) = (BROKER.0.to_string(), BROKER.1);
    let opts = RunOptions {
        broker: Broker {
            host,
            port,
            username: None,
            password: None,
            device_usernames: false,
            listener: None,
        },
        connections: 3,
        encoding: Encoding::Binary,
        prefix: o.prefix.clone(),
        client_id: unique("sim-"),
        speed,
        settle: Duration::from_secs(30),
        check_alerts: true,
        drain: false,
        progress: false,
        inflight: 200,
        readback: Some(Readback::connect(Some(&db.url), None).await.unwrap()),
    };
    let report = run(&fleet, &opts, CancellationToken::new()).await.unwrap();
    let table = report.table();
    eprintln!("{table}");

    let l = &report.load;
    assert_eq!(l.puback_missing, 0, "{table}");
    assert!(l.fixes_sent > 10_000, "{table}");
    assert_eq!(l.fixes_stored, Some(l.fixes_sent), "{table}");
    let v = report.alerts.as_ref().expect("alerts were checked");
    for (kind, kv) in &v.kinds {
        assert!(kv.expected >= 1, "no {kind} was injected:\n{table}");
        assert_eq!(kv.missed, 0, "{kind} missed:\n{table}");
        assert_eq!(kv.unexpected, 0, "{kind} unexpected:\n{table}");
    }
    assert!(report.ok(), "{table}");
    // Latency was traced back to the deciding publish for the fix- and
    // report-decided kinds (all but no_signal).
    assert!(
        report.alert_latency.count
            >= v.kinds.values().map(|k| k.detected).sum::<u64>() - v.kinds["no_signal"].detected
    );
    server.stop().await;
}
