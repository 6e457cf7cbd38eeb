//! The rules engine end to end: scenario → server → Mosquitto → PostgreSQL
//! → alerts (rows, evidence, event log, MQTT), restarts, live changes,
//! no_signal on the injectable clock, officers' actions.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use common::walk::*;
use common::*;
use waypoint::alerts::{AlertKey, AlertKind, AlertOp, Confidence, NewAlert, OfficerAction};
use waypoint::alerts::{ResolutionOutcome, Severity};
use waypoint::clock::ManualClock;
use waypoint::ingest::topic::native_topic;
use waypoint::store::{AlertFilter, AlertWrites, Store, StoreError};

const WAIT: Duration = Duration::from_secs(30);

async fn alerts(db: &TestDb) -> Vec<waypoint::store::AlertRecord> {
    db.store()
        .alerts(&AlertFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Collects everything published under `filter`.
async fn subscribe(filter: &str) -> (Arc<Mutex<Vec<serde_json::Value>>>, AsyncClient) {
    let mut o = MqttOptions::new(unique("sub-"), BROKER.0, BROKER.1);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 100);
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(v) = serde_json::from_slice(&p.payload) {
                        sink.lock().unwrap().push(v);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("SUBACK")
        .unwrap();
    (got, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_into_an_exclusion_zone_yields_one_alert_with_evidence() {
    let db = TestDb::new().await;
    db.store()
        .apply_scenario(&scenario("tag-1"), "test")
        .await
        .unwrap();
    let opts = ServerOpts::new(&db);
    let (published, _sub) = subscribe(&format!("{}em/v1/alerts/#", opts.prefix)).await;
    let srv = start_server(&opts).await;
    let publ = Publisher::connect().await;
    let topic = native_topic(&opts.prefix, "tag-1");

    // Walk from 400 m north to 40 m inside, then stay, one fix per message.
    let t0 = Utc::now() - TimeDelta::seconds(120);
    let path = [400.0, 250.0, 120.0, 60.0, 40.0, 45.0, 50.0, 55.0];
    let msgs: Vec<String> = path
        .iter()
        .enumerate()
        .map(|(i, d)| {
            at(
                "tag-1",
                i as u64 + 1,
                t0 + TimeDelta::seconds(10 * i as i64),
                *d,
            )
        })
        .collect();
    for m in &msgs {
        publ.publish(&topic, m.as_str()).await;
    }
    wait_for("8 messages acked", WAIT, || async {
        srv.metrics.messages_acked.get() >= 8
    })
    .await;

    let a = alerts(&db).await;
    assert_eq!(a.len(), 1, "{a:#?}");
    let a = &a[0];
    assert_eq!(a.kind, "exclusion_zone_entry");
    assert_eq!(a.status, "open");
    assert_eq!(a.confidence, "confirmed");
    assert_eq!(a.severity, "critical");
    assert_eq!(a.case_ref.as_deref(), Some("C-100"));
    assert_eq!(a.zone_version, Some(1));
    assert!(a.condition_ended_at.is_none());
    assert_eq!(
        a.evidence_count, 5,
        "two triggering fixes and three updates"
    );
    assert_eq!(
        a.evidence.len(),
        5,
        "every fix kept as evidence while under the cap"
    );
    assert!(a
        .evidence
        .iter()
        .all(|e| e.lat.is_some() && e.acc_m == Some(8.0)));
    assert!(
        a.explanation
            .starts_with("Entered exclusion zone 'Victim residence' at "),
        "{}",
        a.explanation
    );
    assert!(a.explanation.contains("m inside, accuracy 8 m"));

    // Redelivery of everything: nothing new.
    for m in &msgs {
        publ.publish(&topic, m.as_str()).await;
    }
    wait_for("16 messages acked", WAIT, || async {
        srv.metrics.messages_acked.get() >= 16
    })
    .await;
    let again = alerts(&db).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].evidence_count, 5, "redelivery is not new evidence");

    // The event log reached MQTT: raised, then updates.
    wait_for("alert events on MQTT", WAIT, || async {
        published
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["event_type"] == "raised")
    })
    .await;
    let events = published.lock().unwrap().clone();
    let raised: Vec<_> = events
        .iter()
        .filter(|e| e["event_type"] == "raised")
        .collect();
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0]["alert_id"], a.alert_id);
    assert_eq!(raised[0]["device_id"], "tag-1");
    assert_eq!(raised[0]["alert"]["kind"], "exclusion_zone_entry");
    let metrics = http_get(srv.http_addr, "/metrics").await.1;
    assert!(
        metrics.contains("waypoint_alerts_raised_total{kind=\"exclusion_zone_entry\"} 1"),
        "{metrics}"
    );
    // Event ids are gap-free and increasing in the log.
    let ids: Vec<i64> = sqlx::query_scalar("SELECT event_id FROM alert_events ORDER BY event_id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_violation_in_progress_survives_a_restart_and_is_never_raised_twice() {
    let db = TestDb::new().await;
    db.store()
        .apply_scenario(&scenario("tag-2"), "test")
        .await
        .unwrap();
    let opts = ServerOpts::new(&db);
    let topic = native_topic(&opts.prefix, "tag-2");
    let publ = Publisher::connect().await;
    let t0 = Utc::now() - TimeDelta::seconds(120);

    // One violating fix, then the server restarts.
    let srv = start_server(&opts).await;
    publ.publish(&topic, at("tag-2", 1, t0, 10.0)).await;
    wait_for("1 ack", WAIT, || async {
        srv.metrics.messages_acked.get() >= 1
    })
    .await;
    srv.stop().await;
    assert!(alerts(&db).await.is_empty(), "one fix is not enough");

    // The second violating fix, after the restart, completes the debounce.
    let srv = start_server(&opts).await;
    publ.publish(&topic, at("tag-2", 2, t0 + TimeDelta::seconds(10), 10.0))
        .await;
    wait_for("1 ack", WAIT, || async {
        srv.metrics.messages_acked.get() >= 1
    })
    .await;
    assert_eq!(
        alerts(&db).await.len(),
        1,
        "the violation in progress was kept"
    );
    srv.stop().await;

    // And after another restart the open alert is updated, not raised again.
    let srv = start_server(&opts).await;
    publ.publish(&topic, at("tag-2", 3, t0 + TimeDelta::seconds(20), 10.0))
        .await;
    wait_for("1 ack", WAIT, || async {
        srv.metrics.messages_acked.get() >= 1
    })
    .await;
    let a = alerts(&db).await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].evidence_count, 3);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_changes_reach_a_running_server_without_restart() {
    let db = TestDb::new().await;
    db.enroll("tag-3").await;
    let opts = ServerOpts::new(&db);
    let srv = start_server(&opts).await;
    assert_eq!(srv.rules.snapshot().counts(), (0, 0));

    let loaded = Instant::now();
    db.store()
        .apply_scenario(&scenario("tag-3"), "test")
        .await
        .unwrap();
    wait_for("the new rules in force", Duration::from_secs(5), || async {
        srv.rules.snapshot().counts() == (1, 1)
    })
    .await;
    eprintln!(
        "rules in force {:?} after the load committed",
        loaded.elapsed()
    );

    let publ = Publisher::connect().await;
    let topic = native_topic(&opts.prefix, "tag-3");
    let t0 = Utc::now() - TimeDelta::seconds(60);
    publ.publish(&topic, at("tag-3", 1, t0, 0.0)).await;
    publ.publish(&topic, at("tag-3", 2, t0 + TimeDelta::seconds(5), 0.0))
        .await;
    wait_for("2 acks", WAIT, || async {
        srv.metrics.messages_acked.get() >= 2
    })
    .await;
    assert_eq!(alerts(&db).await.len(), 1);

    // Editing the zone makes a new version; later alerts point at it.
    let mut edited = scenario("tag-3");
    edited.zones[0].geojson["properties"]["radius_m"] = json!(150);
    let rep = db.store().apply_scenario(&edited, "test").await.unwrap();
    assert_eq!(rep.zone_versions_added, 1);
    let again = db.store().apply_scenario(&edited, "test").await.unwrap();
    assert_eq!(again.zone_versions_added, 0, "loading is idempotent");
    assert_eq!(again.supervisees_created + again.zones_created, 0);
    // Handing the device back: the same assignment gets its end, in place.
    edited.assignments[0].to = Some(Utc::now() + TimeDelta::days(1));
    db.store().apply_scenario(&edited, "test").await.unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM device_assignments WHERE valid_to IS NOT NULL")
            .await,
        1
    );
    assert_eq!(db.count("SELECT count(*) FROM device_assignments").await, 1);
    wait_for(
        "zone version 2 in force",
        Duration::from_secs(5),
        || async {
            srv.rules
                .snapshot()
                .zone(
                    sqlx::query_scalar::<_, i64>("SELECT zone_id FROM zones")
                        .fetch_one(&db.pool)
                        .await
                        .unwrap(),
                )
                .is_some_and(|z| z.version == 2)
        },
    )
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signal_follows_the_server_clock_and_ends_when_messages_return() {
    let db = TestDb::new().await;
    db.store()
        .apply_scenario(&scenario("tag-4"), "test")
        .await
        .unwrap();
    let start = Utc::now();
    let clock = Arc::new(ManualClock::new(start));
    let mut opts = ServerOpts::new(&db);
    opts.clock = clock.clone();
    let srv = start_server(&opts).await;
    let publ = Publisher::connect().await;
    let topic = native_topic(&opts.prefix, "tag-4");
    publ.publish(&topic, at("tag-4", 1, start - TimeDelta::seconds(5), 500.0))
        .await;
    wait_for("1 ack", WAIT, || async {
        srv.metrics.messages_acked.get() >= 1
    })
    .await;

    // Interval 10 s × 3: silent for 25 s is fine.
    clock.advance(TimeDelta::seconds(25));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(alerts(&db).await.is_empty());
    clock.advance(TimeDelta::seconds(10));
    wait_for("no_signal raised", Duration::from_secs(10), || async {
        alerts(&db).await.iter().any(|a| a.kind == "no_signal")
    })
    .await;
    let a = alerts(&db).await;
    assert!(
        a[0].explanation.starts_with("No message since"),
        "{}",
        a[0].explanation
    );

    publ.publish(&topic, at("tag-4", 2, clock_now(&clock), 500.0))
        .await;
    wait_for("no_signal ended", Duration::from_secs(10), || async {
        alerts(&db)
            .await
            .iter()
            .any(|a| a.kind == "no_signal" && a.condition_ended_at.is_some())
    })
    .await;
    assert_eq!(alerts(&db).await.len(), 1, "raised once");
    srv.stop().await;
}

fn clock_now(c: &ManualClock) -> DateTime<Utc> {
    use waypoint::clock::Clock;
    c.now()
}

fn raise(device_key: i64, at: DateTime<Utc>) -> AlertOp {
    AlertOp::Raise(Box::new(NewAlert {
        key: AlertKey {
            device_key,
            kind: AlertKind::StrapTamper,
            zone_id: None,
            pairing_id: None,
        },
        supervisee_id: None,
        severity: Severity::Critical,
        zone_version: None,
        rule_id: None,
        confidence: Confidence::Confirmed,
        late: false,
        started_at: at,
        last_evidence_at: at,
        ended_at: None,
        explanation: "Device reported its strap opened.".into(),
        details: json!({}),
        evidence: vec![],
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_active_alert_per_condition_and_officer_decisions_are_recorded() {
    let db = TestDb::new().await;
    db.enroll("tag-5").await;
    let store = db.store();
    let key: i64 = sqlx::query_scalar("SELECT device_key FROM devices")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let now = Utc::now();
    let w = |ops| AlertWrites {
        now,
        ops,
        ..Default::default()
    };
    // Two writers racing on the same condition (NULL zone and pairing).
    let (w1, w2) = (w(vec![raise(key, now)]), w(vec![raise(key, now)]));
    let (a, b) = tokio::join!(store.commit_alerts(&w1), store.commit_alerts(&w2));
    let raised = a.unwrap().alerts_raised.len() + b.unwrap().alerts_raised.len();
    assert_eq!(raised, 1);
    assert_eq!(alerts(&db).await.len(), 1);
    let id = alerts(&db).await[0].alert_id;

    // A recurrence after the condition ended opens a new alert, while the
    // first still waits for a decision.
    let end = AlertOp::End {
        key: AlertKey {
            device_key: key,
            kind: AlertKind::StrapTamper,
            zone_id: None,
            pairing_id: None,
        },
        at: now,
        reason: "closed".into(),
    };
    store.commit_alerts(&w(vec![end])).await.unwrap();
    store
        .commit_alerts(&w(vec![raise(key, now + TimeDelta::seconds(60))]))
        .await
        .unwrap();
    assert_eq!(alerts(&db).await.len(), 2);

    // Officer workflow.
    let resolve = |note: &str| OfficerAction::Resolve {
        outcome: ResolutionOutcome::EquipmentFault,
        note: note.into(),
    };
    assert!(matches!(
        store.alert_action(id, "pc-1", &resolve(""), now).await,
        Err(StoreError::Invalid(_))
    ));
    store
        .alert_action(id, "pc-1", &OfficerAction::Acknowledge, now)
        .await
        .unwrap();
    store
        .alert_action(
            id,
            "pc-1",
            &OfficerAction::Note("called, no answer".into()),
            now,
        )
        .await
        .unwrap();
    store
        .alert_action(id, "pc-2", &resolve("strap replaced at visit"), now)
        .await
        .unwrap();
    assert!(matches!(
        store
            .alert_action(id, "pc-1", &OfficerAction::Acknowledge, now)
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .alert_action(999_999, "pc-1", &OfficerAction::Acknowledge, now)
            .await,
        Err(StoreError::NotFound(_))
    ));
    // Every decision that took effect is in the audit trail (refused ones
    // are not: their transaction rolled back).
    let trail: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT action, actor, role FROM audit_log WHERE alert_id = $1 ORDER BY audit_id",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let trail: Vec<(&str, &str, &str)> = trail
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        trail,
        [
            ("alert.acknowledge", "pc-1", "cli"),
            ("alert.note", "pc-1", "cli"),
            ("alert.resolve", "pc-2", "cli")
        ]
    );
    let rec = alerts(&db)
        .await
        .into_iter()
        .find(|a| a.alert_id == id)
        .unwrap();
    assert_eq!(rec.status, "resolved");
    let who: Vec<(&str, &str)> = rec
        .actions
        .iter()
        .map(|a| (a.action.as_str(), a.actor.as_str()))
        .collect();
    assert_eq!(
        who,
        [
            ("acknowledge", "pc-1"),
            ("note", "pc-1"),
            ("resolve", "pc-2")
        ]
    );
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM alert_events WHERE alert_id = $1 ORDER BY event_id",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        types,
        // The racing writer's raise became an update of the same alert.
        [
            "raised",
            "updated",
            "condition_ended",
            "acknowledged",
            "note",
            "resolved"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_load_and_alert_decisions_from_the_cli() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scenario.json");
    std::fs::write(
        &file,
        serde_json::to_string(&serde_json::to_value(scenario("tag-6")).unwrap()).unwrap(),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_waypoint"))
            .args(args)
            .env("WAYPOINT_DATABASE_URL", &db.url)
            .output()
            .unwrap()
    };
    let f = file.to_str().unwrap();
    let out = run(&["scenario", "load", f]);
    assert!(out.status.success(), "{out:?}");
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["zones_created"], 1);
    assert_eq!(rep["assignments_created"], 1);
    let out = run(&["scenario", "load", f]);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["zones_created"], 0, "idempotent");

    // A bad file changes nothing and says where it is wrong.
    std::fs::write(
        &file,
        r#"{"zones": [{"zone_ref": "z", "name": "Z", "geojson": {"type": "Point", "coordinates": [0, 0]}}]}"#,
    )
    .unwrap();
    let out = run(&["scenario", "load", f]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("zones[0] (z)"), "{err}");

    let key: i64 = sqlx::query_scalar("SELECT device_key FROM devices")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    db.store()
        .commit_alerts(&AlertWrites {
            now: Utc::now(),
            ops: vec![raise(key, Utc::now())],
            ..Default::default()
        })
        .await
        .unwrap();
    let out = run(&["alerts", "list", "--status", "open"]);
    let line: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    let id = line["alert_id"].as_i64().unwrap().to_string();
    let out = run(&[
        "alerts",
        "resolve",
        &id,
        "--actor",
        "pc-9",
        "--outcome",
        "sanction",
        "--note",
        "x",
    ]);
    assert!(!out.status.success(), "no such outcome");
    let out = run(&[
        "alerts",
        "resolve",
        &id,
        "--actor",
        "pc-9",
        "--outcome",
        "gps_false_alarm",
        "--note",
        " ",
    ]);
    assert!(!out.status.success(), "note required");
    let out = run(&[
        "alerts",
        "resolve",
        &id,
        "--actor",
        "pc-9",
        "--outcome",
        "equipment_fault",
        "--note",
        "strap worn; replaced",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["alerts", "list", "--status", "resolved"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("strap worn; replaced"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_victims_device_coming_close_raises_proximity_and_its_positions_are_not_stored() {
    let db = TestDb::new().await;
    let mut s = scenario("tag-7");
    s.rules.clear();
    s.devices.push(waypoint::scenario::DeviceSpec {
        device_id: "victim-7".into(),
        report_interval_s: None,
    });
    s.pairings.push(waypoint::scenario::PairingSpec {
        victim_device: "victim-7".into(),
        supervisee: "C-100".into(),
        enter_m: Some(300.0),
        exit_m: Some(500.0),
    });
    db.store().apply_scenario(&s, "test").await.unwrap();
    // More shards than devices' worth of luck: the two devices may land on
    // different shards; the design does not care.
    let mut opts = ServerOpts::new(&db);
    opts.extra = vec!["--shards".into(), "4".into()];
    let srv = start_server(&opts).await;
    let publ = Publisher::connect().await;
    let t0 = Utc::now() - TimeDelta::seconds(60);
    publ.publish(
        &native_topic(&opts.prefix, "victim-7"),
        at("victim-7", 1, t0, 0.0),
    )
    .await;
    wait_for("victim message acked", WAIT, || async {
        srv.metrics.messages_acked.get() >= 1
    })
    .await;
    publ.publish(
        &native_topic(&opts.prefix, "tag-7"),
        at("tag-7", 1, t0 + TimeDelta::seconds(5), 150.0),
    )
    .await;
    wait_for("proximity alert", WAIT, || async {
        alerts(&db)
            .await
            .iter()
            .any(|a| a.kind == "victim_proximity")
    })
    .await;
    let a = alerts(&db).await;
    assert_eq!(a.len(), 1);
    assert!(
        a[0].explanation.contains("Paired victim's device"),
        "{}",
        a[0].explanation
    );
    let victim_fixes = db
        .count(
            "SELECT count(*) FROM fixes f JOIN devices d USING (device_key) \
             WHERE d.device_id = 'victim-7'",
        )
        .await;
    assert_eq!(victim_fixes, 0, "victim positions serve the check only");
    assert_eq!(
        db.count("SELECT count(*) FROM messages m JOIN devices d USING (device_key) WHERE d.device_id = 'victim-7'")
            .await,
        1,
        "but the message is on the ledger (no duplicates on redelivery)"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signal_is_not_blamed_on_devices_while_the_server_could_not_hear() {
    let mut broker = common::broker::start_broker(&[("waypoint-server", "s"), ("tag-8", "p")]);
    let db = TestDb::new().await;
    db.store()
        .apply_scenario(&scenario("tag-8"), "test")
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let mut opts = ServerOpts::new(&db);
    opts.clock = clock.clone();
    opts.prefix = String::new();
    opts.broker = format!("mqtt://waypoint-server:s@127.0.0.1:{}", broker.port);
    let srv = start_server(&opts).await;
    let publ = Publisher::connect_to(broker.port, Some(("tag-8", "p"))).await;
    let topic = native_topic("", "tag-8");
    publ.publish(
        &topic,
        at("tag-8", 1, clock_now(&clock) - TimeDelta::seconds(5), 500.0),
    )
    .await;
    wait_for("1 ack", WAIT, || async {
        srv.metrics.messages_acked.get() >= 1
    })
    .await;

    // The broker goes away for two (server-clock) minutes: the server hears
    // nothing, and that is not the device's fault.
    broker.stop();
    wait_for("server notices", WAIT, || async {
        srv.metrics.mqtt_connected.get() == 0
    })
    .await;
    clock.advance(TimeDelta::seconds(120));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        alerts(&db).await.is_empty(),
        "deaf server blamed the device"
    );

    broker.start();
    let addr = srv.http_addr;
    wait_for("server hears again", WAIT, || async move {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        alerts(&db).await.is_empty(),
        "silence is counted from the reconnection, not from the last message"
    );
    clock.advance(TimeDelta::seconds(31));
    wait_for(
        "no_signal after a full threshold of hearing",
        WAIT,
        || async { alerts(&db).await.iter().any(|a| a.kind == "no_signal") },
    )
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigned_device_that_never_reports_raises_no_signal() {
    let db = TestDb::new().await;
    db.store()
        .apply_scenario(&scenario("tag-9"), "test")
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let mut opts = ServerOpts::new(&db);
    opts.clock = clock.clone();
    let srv = start_server(&opts).await;
    // Silence counts from the subscription (server clock at SUBACK).
    clock.advance(TimeDelta::seconds(25));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(alerts(&db).await.is_empty());
    clock.advance(TimeDelta::seconds(10));
    wait_for("no_signal for a silent tag", WAIT, || async {
        alerts(&db).await.iter().any(|a| a.kind == "no_signal")
    })
    .await;
    let a = alerts(&db).await;
    assert!(
        a[0].explanation.starts_with("No message ever received"),
        "{}",
        a[0].explanation
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_provisioned_on_a_long_running_server_gets_a_full_threshold_before_no_signal() {
    let db = TestDb::new().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let mut opts = ServerOpts::new(&db);
    opts.clock = clock.clone();
    let srv = start_server(&opts).await;
    // The server has been hearing for an hour (threshold: 10 s × 3).
    clock.advance(TimeDelta::hours(1));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Provisioned now, recorded retroactively (as the simulator does): the
    // assignment starts in 2020 and the tag has never been heard.
    let provisioned = clock_now(&clock);
    db.store()
        .apply_scenario(&scenario("tag-10"), "test")
        .await
        .unwrap();
    wait_for(
        "the assignment in force",
        Duration::from_secs(5),
        || async { srv.rules.snapshot().counts() == (1, 1) },
    )
    .await;
    // A couple of watchdog ticks see the assignment before time moves on.
    let a = expect_no_signal_after_full_threshold(
        &db,
        &clock,
        "blamed for silence before the server knew of the assignment",
    )
    .await;
    assert_eq!(
        (a[0].kind.as_str(), a[0].device_id.as_str()),
        ("no_signal", "tag-10")
    );
    assert!(
        a[0].started_at >= provisioned,
        "silence counted from provisioning, not from the assignment's start: {}",
        a[0].started_at
    );
    assert!(
        a[0].explanation.starts_with("No message ever received")
            && a[0].explanation.contains("monitor"),
        "{}",
        a[0].explanation
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_heard_long_ago_and_handed_to_a_new_wearer_gets_a_full_threshold_before_no_signal() {
    let db = TestDb::new().await;
    let start = Utc::now();
    let mut s = scenario("tag-11");
    s.supervisees.push(waypoint::scenario::SuperviseeSpec {
        case_ref: "C-200".into(),
        name: None,
        time_zone: "Europe/London".into(),
        officer: None,
    });
    db.store().apply_scenario(&s, "test").await.unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let mut opts = ServerOpts::new(&db);
    opts.clock = clock.clone();
    let srv = start_server(&opts).await;
    let publ = Publisher::connect().await;
    let topic = native_topic(&opts.prefix, "tag-11");

    // Worn by C-100 (assignment A) and heard once.
    publ.publish(
        &topic,
        at("tag-11", 1, start - TimeDelta::seconds(5), 500.0),
    )
    .await;
    wait_for("1 ack", WAIT, || async {
        srv.metrics.messages_acked.get() >= 1
    })
    .await;

    // Handed back 10 s later (A closed in place), then the tag lies unused
    // for 30 days (threshold: 10 s × 3): nobody wears it, so no alert.
    let handed_back = start + TimeDelta::seconds(10);
    s.assignments[0].to = Some(handed_back);
    db.store().apply_scenario(&s, "test").await.unwrap();
    wait_for("assignment A closed", Duration::from_secs(5), || async {
        srv.rules
            .snapshot()
            .worn_at(handed_back + TimeDelta::seconds(1))
            .next()
            .is_none()
    })
    .await;
    clock.advance(TimeDelta::days(30));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(alerts(&db).await.is_empty(), "an unworn tag is not watched");

    // Handed to C-200 (assignment B), recorded retroactively: B starts a
    // day after the hand-back, 29 days before the server learns of it.
    let provisioned = clock_now(&clock);
    s.assignments.push(waypoint::scenario::AssignmentSpec {
        device: "tag-11".into(),
        supervisee: "C-200".into(),
        from: handed_back + TimeDelta::days(1),
        to: None,
    });
    db.store().apply_scenario(&s, "test").await.unwrap();
    wait_for("assignment B in force", Duration::from_secs(5), || async {
        srv.rules.snapshot().worn_at(provisioned).next().is_some()
    })
    .await;
    // A couple of watchdog ticks see B before time moves on.
    let a = expect_no_signal_after_full_threshold(
        &db,
        &clock,
        "blamed for silence since its last message under the previous wearer",
    )
    .await;
    assert_eq!(
        (
            a[0].kind.as_str(),
            a[0].device_id.as_str(),
            a[0].case_ref.as_deref()
        ),
        ("no_signal", "tag-11", Some("C-200"))
    );
    assert!(
        a[0].started_at >= provisioned,
        "silence counted from provisioning, not from the old message: {}",
        a[0].started_at
    );
    assert!(
        a[0].explanation.starts_with("No message since"),
        "{}",
        a[0].explanation
    );
    srv.stop().await;
}

/// With a 30 s no_signal threshold (10 s interval × 3) counted from now on
/// `clock`: no alert after a couple of watchdog ticks (`early` says why one
/// would be wrong), none 25 s on, then exactly one once 35 s have passed.
/// Returns the alerts for the caller's own checks.
async fn expect_no_signal_after_full_threshold(
    db: &TestDb,
    clock: &ManualClock,
    early: &str,
) -> Vec<waypoint::store::AlertRecord> {
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(alerts(db).await.is_empty(), "{early}");
    clock.advance(TimeDelta::seconds(25));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        alerts(db).await.is_empty(),
        "less than a threshold since provisioning"
    );
    clock.advance(TimeDelta::seconds(10));
    wait_for("no_signal once the threshold has passed", WAIT, || async {
        alerts(db).await.iter().any(|a| a.kind == "no_signal")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let a = alerts(db).await;
    assert_eq!(a.len(), 1, "raised once: {a:?}");
    a
}

/// The officer's side of the same walk, through the officer API of the
/// running server: the alert arrives on the live stream, explains itself
/// with evidence, is resolved with an outcome and a note, and the decision
/// reaches the stream, the MQTT alert topic and the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_sees_the_alert_live_and_resolves_it_through_the_api() {
    let db = TestDb::new().await;
    db.store()
        .apply_scenario(&scenario("tag-11"), "test")
        .await
        .unwrap();
    let opts = ServerOpts::new(&db);
    let (published, _sub) = subscribe(&format!("{}em/v1/alerts/#", opts.prefix)).await;
    let srv = start_server(&opts).await;
    let base = format!("http://{}/api/v1", srv.http_addr);
    let token =
        common::api::token(&db.pool, waypoint::api::auth::Role::Officer, Some("pc-1")).await;
    let http = reqwest::Client::new();
    let stream = http
        .get(format!("{base}/alerts/stream"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);

    let publ = Publisher::connect().await;
    let topic = native_topic(&opts.prefix, "tag-11");
    let t0 = Utc::now() - TimeDelta::seconds(60);
    for (i, d) in [300.0, 150.0, 40.0, 35.0].iter().enumerate() {
        let m = at(
            "tag-11",
            i as u64 + 1,
            t0 + TimeDelta::seconds(10 * i as i64),
            *d,
        );
        publ.publish(&topic, m.as_str()).await;
    }
    // Raised by the rules engine, delivered live; then our own decision
    // comes back on the same stream.
    let reader = tokio::spawn(common::api::sse_events(stream, 2));
    let id = loop {
        let a = alerts(&db).await;
        if let Some(a) = a.first() {
            break a.alert_id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let detail = common::api::read(
        http.get(format!("{base}/alerts/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(detail.status, 200, "{}", detail.text);
    assert_eq!(detail.body["kind"], "exclusion_zone_entry");
    assert_eq!(detail.body["zone"]["version"], 1);
    assert!(detail.body["evidence"].as_array().unwrap().len() >= 2);
    assert!(!detail.body["explanation"].as_str().unwrap().is_empty());
    let resolved = common::api::read(
        http.post(format!("{base}/alerts/{id}/resolve"))
            .bearer_auth(&token)
            .json(&json!({"outcome": "contacted_supervisee",
                          "note": "phoned; walking a friend's dog, agreed a new route"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resolved.status, 200, "{}", resolved.text);
    let events = reader.await.unwrap();
    assert_eq!(events[0].1, "raised");
    assert_eq!(events[0].2["alert_id"], id);
    assert_eq!(events[1].1, "resolved");
    assert_eq!(events[1].2["alert"]["outcome"], "contacted_supervisee");
    wait_for("resolved on the MQTT alert topic", WAIT, || async {
        published
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["alert_id"] == id && e["event_type"] == "resolved")
    })
    .await;
    let trail: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log WHERE alert_id = $1 ORDER BY audit_id")
            .bind(id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(trail, ["alert.read", "alert.resolve"]);
    srv.stop().await;
}
