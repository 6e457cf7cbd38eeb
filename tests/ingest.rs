//! End-to-end ingest against the real PostgreSQL and Mosquitto.

mod common;

use std::time::Duration;

use common::*;
use waypoint::decode::binary;
use waypoint::decode::{WireFix, WireMessage};
use waypoint::domain::{MessageKey, RejectReason};
use waypoint::ingest::topic::native_topic;
use waypoint::store::Store;

const WAIT: Duration = Duration::from_secs(30);

async fn wait_acked(srv: &waypoint::app::Running, n: u64) {
    wait_for(&format!("{n} server acks"), WAIT, || async {
        srv.metrics.messages_acked.get() >= n
    })
    .await;
}

fn binary_msg(device: &str, boot: i64, seq: i64, n: usize) -> Vec<u8> {
    let t = now_ms() - 30_000;
    binary::encode(&WireMessage {
        device: Some(device.into()),
        key: MessageKey { boot, seq },
        fixes: (0..n)
            .map(|i| WireFix {
                ts_ms: t + i as i64,
                lat: 48.85 + seq as f64 * 1e-5,
                lon: 2.35,
                acc: 12.5,
                alt: Some(35.0),
                speed: None,
                heading: None,
                src: Some("wifi".into()),
            })
            .collect(),
        status: None,
        events: vec![],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_fix_is_stored_exactly_once() {
    let db = TestDb::new().await;
    let devices: Vec<String> = (0..5).map(|i| format!("dev-{i}")).collect();
    for d in &devices {
        db.enroll(d).await;
    }
    let opts = ServerOpts::new(&db);
    let srv = start_server(&opts).await;
    let publ = Publisher::connect().await;

    // 200 messages, JSON and binary interleaved, 3 fixes each.
    let mut sent = Vec::new();
    for seq in 0..40u64 {
        for (i, d) in devices.iter().enumerate() {
            let payload = if (seq as usize + i).is_multiple_of(2) {
                json_msg(d, 1, seq, 3).into_bytes()
            } else {
                binary_msg(d, 1, seq as i64, 3)
            };
            let topic = native_topic(&opts.prefix, d);
            publ.publish(&topic, payload.clone()).await;
            sent.push((topic, payload));
        }
    }
    wait_acked(&srv, 200).await;
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 600);
    assert_eq!(db.count("SELECT count(*) FROM messages").await, 200);
    assert_eq!(db.count("SELECT count(*) FROM rejected_messages").await, 0);
    assert_eq!(srv.metrics.fixes_stored.get(), 600);
    // Latest status per device is that of its highest-seq message with a
    // status block (only the JSON messages carry one): 39 or 38.
    assert_eq!(db.count("SELECT count(*) FROM device_status").await, 5);
    assert_eq!(
        db.count("SELECT count(*) FROM device_status WHERE seq = 39")
            .await,
        2
    );
    assert_eq!(
        db.count("SELECT count(*) FROM device_status WHERE seq = 38")
            .await,
        3
    );

    // The whole stream again, as after a device-side retry: no new rows.
    for (topic, payload) in &sent {
        publ.publish(topic, payload.clone()).await;
    }
    wait_acked(&srv, 400).await;
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 600);
    assert_eq!(srv.metrics.messages_duplicate.get(), 200);

    // Same key, other content: refused as seq_conflict, never silently dropped.
    let (topic, _) = &sent[0];
    publ.publish(topic, json_msg(&devices[0], 1, 0, 1)).await;
    wait_acked(&srv, 401).await;
    assert_eq!(db.rejections("seq_conflict").await, 1);
    let conflicting: String = sqlx::query_scalar(
        "SELECT convert_from(payload, 'UTF8') FROM rejected_messages WHERE reason = 'seq_conflict'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // The same conflicting message redelivered is on record once; a second,
    // different version gets its own record.
    publ.publish(topic, conflicting).await;
    wait_acked(&srv, 402).await;
    assert_eq!(db.rejections("seq_conflict").await, 1);
    publ.publish(topic, json_msg(&devices[0], 1, 0, 2)).await;
    wait_acked(&srv, 403).await;
    assert_eq!(db.rejections("seq_conflict").await, 2);
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 600);

    // Metrics endpoint and probes.
    let (code, body) = http_get(srv.http_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("waypoint_fixes_stored_total 600"), "{body}");
    assert!(body.contains("waypoint_messages_acked_total 403"), "{body}");
    assert!(body.contains(r#"waypoint_messages_rejected_total{reason="seq_conflict"} 2"#));
    assert!(body.contains("waypoint_commit_seconds_bucket"));
    assert!(body.contains("waypoint_oldest_unacked_seconds"));
    // A broker exceeding Receive Maximum shows here (BENCHMARKS.md).
    assert!(
        body.contains("waypoint_messages_deferred_total 0"),
        "{body}"
    );
    assert_eq!(http_get(srv.http_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(srv.http_addr, "/readyz").await.0, 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_input_is_recorded_with_its_reason() {
    let db = TestDb::new().await;
    db.enroll("good").await;
    db.enroll("gone").await;
    db.store()
        .revoke_device(
            &waypoint::domain::DeviceId::parse("gone").unwrap(),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let mut opts = ServerOpts::new(&db);
    opts.extra = vec!["--max-payload-bytes".into(), "8192".into()];
    let srv = start_server(&opts).await;
    let publ = Publisher::connect().await;
    let t = |d: &str| native_topic(&opts.prefix, d);
    let now = now_ms();
    let fix = |lat: &str, acc: &str, ts: i64| {
        format!(r#"{{"ts":{ts},"lat":{lat},"lon":-0.12,"acc":{acc}}}"#)
    };
    let msg = |seq: u64, fixes: Vec<String>| {
        format!(
            r#"{{"v":1,"device":"good","boot":1,"seq":{seq},"fixes":[{}]}}"#,
            fixes.join(",")
        )
    };
    let good = fix("51.5", "5", now - 1000);
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (t("good"), b"{\"v\":1,".to_vec(), "malformed_json"),
        (t("good"), vec![0x0a, 0xff, 0x01], "malformed_binary"),
        (t("good"), br#"{"v":9,"device":"good","boot":1,"seq":1}"#.to_vec(), "unsupported_version"),
        (t("good"), msg(2, vec![good.clone(), fix("91.0", "5", now)]).into_bytes(), "invalid_coordinates"),
        (t("good"), msg(3, vec![good.clone(), fix("51.5", "-1", now)]).into_bytes(), "invalid_accuracy"),
        (t("good"), msg(4, vec![good.clone(), fix("51.5", "5", now + 600_000)]).into_bytes(), "future_timestamp"),
        (t("good"), vec![b' '; 9000], "oversize"),
        (t("good"), json_msg("other", 1, 5, 1).into_bytes(), "device_mismatch"),
        (t("stranger"), json_msg("stranger", 1, 1, 1).into_bytes(), "unknown_device"),
        (t("bad$id"), json_msg("bad$id", 1, 1, 1).into_bytes(), "invalid_device_id"),
        (t("gone"), json_msg("gone", 1, 1, 1).into_bytes(), "device_revoked"),
        (t("good"), msg(6, vec![good.clone(), r#"{"ts":1,"lat":51.5,"lon":0,"acc":3}"#.into()]).into_bytes(), "timestamp_out_of_range"),
        (t("good"), br#"{"v":1,"device":"good","boot":1,"seq":7,"events":[{"ts":1764133200000,"kind":"nope"}]}"#.to_vec(), "unknown_event_kind"),
    ];
    for (topic, payload, _) in &cases {
        publ.publish(topic, payload.clone()).await;
    }
    wait_acked(&srv, cases.len() as u64).await;
    for (_, _, reason) in &cases {
        assert_eq!(db.rejections(reason).await, 1, "reason {reason}");
        let r = RejectReason::ALL
            .into_iter()
            .find(|r| r.as_str() == *reason)
            .unwrap();
        assert_eq!(srv.metrics.rejected_count(r), 1, "metric for {reason}");
    }
    // The valid siblings of the four per-fix refusals were stored.
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 4);
    // Whole-message refusals keep the (capped) payload for investigation.
    assert_eq!(
        db.count("SELECT count(*) FROM rejected_messages WHERE reason = 'oversize' AND length(payload) = 4096").await,
        1
    );
    // The pipeline is not stalled by any of it.
    publ.publish(&t("good"), json_msg("good", 2, 1, 2)).await;
    wait_acked(&srv, cases.len() as u64 + 1).await;
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 6);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owntracks_locations_are_accepted_and_deduplicated_on_tst() {
    let db = TestDb::new().await;
    db.store()
        .add_device(
            &waypoint::domain::DeviceId::parse("phone-1").unwrap(),
            Some(("alice", "pixel")),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let opts = ServerOpts::new(&db);
    let srv = start_server(&opts).await;
    let publ = Publisher::connect().await;
    let topic = format!("{}owntracks/alice/pixel", opts.prefix);
    let tst = now_ms() / 1000 - 10;
    let loc = |tst: i64| {
        format!(
            r#"{{"_type":"location","tid":"al","lat":48.8566,"lon":2.3522,"tst":{tst},"acc":9,"batt":71,"bs":1}}"#
        )
    };
    publ.publish(&topic, loc(tst)).await;
    publ.publish(&topic, loc(tst)).await;
    publ.publish(&topic, loc(tst + 5)).await;
    publ.publish(&topic, r#"{"_type":"lwt","tst":1}"#).await;
    publ.publish(&format!("{}owntracks/bob/phone", opts.prefix), loc(tst))
        .await;
    wait_acked(&srv, 5).await;
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 2);
    assert_eq!(db.rejections("unsupported_type").await, 1);
    assert_eq!(db.rejections("unknown_device").await, 1);
    assert_eq!(
        db.count("SELECT count(*) FROM device_status WHERE battery_pct = 71 AND charging = false")
            .await,
        1
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_acked_while_the_database_is_unreachable_and_nothing_is_lost() {
    let db = TestDb::new().await;
    db.enroll("dev-a").await;
    db.enroll("dev-b").await;
    let proxy = DbProxy::start("127.0.0.1:5432").await;
    let mut opts = ServerOpts::new(&db);
    opts.database_url = proxy.url_for(&db);
    let srv = start_server(&opts).await;
    let publ = Publisher::connect().await;
    let topic = |d: &str| native_topic(&opts.prefix, d);

    for seq in 0..50 {
        publ.publish(&topic("dev-a"), json_msg("dev-a", 1, seq, 2))
            .await;
    }
    wait_acked(&srv, 50).await;
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 100);

    proxy.cut();
    for seq in 50..150 {
        let d = if seq % 2 == 0 { "dev-a" } else { "dev-b" };
        publ.publish(&topic(d), json_msg(d, 1, seq, 2)).await;
    }
    publ.wait_broker_acks(150).await;
    // Let the server try (and fail) for a while: it must ack nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        srv.metrics.messages_acked.get(),
        50,
        "acked while the database was down"
    );
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 100);
    assert!(srv.metrics.store_retries.get() > 0);
    let (code, _) = http_get(srv.http_addr, "/readyz").await;
    assert_eq!(code, 503, "not ready while the database is unreachable");

    proxy.restore();
    wait_acked(&srv, 150).await;
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 300);
    assert_eq!(db.count("SELECT count(*) FROM messages").await, 150);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_mid_stream_loses_nothing() {
    let db = TestDb::new().await;
    db.enroll("dev-r").await;
    let opts = ServerOpts::new(&db);
    let first = start_server(&opts).await;
    let publ = Publisher::connect().await;
    let topic = native_topic(&opts.prefix, "dev-r");

    // A steady stream across the restart.
    let stream = {
        let client = publ.client.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for seq in 0..400u64 {
                client
                    .publish(
                        &topic,
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        json_msg("dev-r", 1, seq, 1),
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    first.stop().await;
    // While no server runs, the broker queues for the persistent session.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = start_server(&opts).await;
    stream.await.unwrap();
    publ.wait_broker_acks(400).await;
    wait_for("all 400 messages stored", WAIT, || async {
        db.count("SELECT count(*) FROM messages").await == 400
    })
    .await;
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 400);
    assert_eq!(
        db.count("SELECT count(DISTINCT seq) FROM fixes").await,
        400,
        "every seq exactly once"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_changes_reach_a_running_server() {
    let db = TestDb::new().await;
    let opts = ServerOpts::new(&db);
    let srv = start_server(&opts).await;
    let publ = Publisher::connect().await;
    let topic = native_topic(&opts.prefix, "late-1");

    publ.publish(&topic, json_msg("late-1", 1, 1, 1)).await;
    wait_acked(&srv, 1).await;
    assert_eq!(db.rejections("unknown_device").await, 1);

    // Enrolled while the server runs: accepted without a restart.
    db.enroll("late-1").await;
    // Changes must take effect within a second (NOTIFY usually takes ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    publ.publish(&topic, json_msg("late-1", 1, 2, 1)).await;
    wait_acked(&srv, 2).await;
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 1);

    // Revoked while it runs: refused within a second (LISTEN/NOTIFY).
    db.store()
        .revoke_device(
            &waypoint::domain::DeviceId::parse("late-1").unwrap(),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    publ.publish(&topic, json_msg("late-1", 1, 3, 1)).await;
    wait_acked(&srv, 3).await;
    assert_eq!(db.rejections("device_revoked").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_clock_is_injected_not_read_from_the_wall() {
    use waypoint::clock::ManualClock;
    let db = TestDb::new().await;
    db.enroll("dev-c").await;
    let mut opts = ServerOpts::new(&db);
    // The server believes it is one hour earlier than the wall clock.
    let server_now = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    opts.clock = std::sync::Arc::new(ManualClock::new(server_now));
    let srv = start_server(&opts).await;
    let publ = Publisher::connect().await;
    let topic = native_topic(&opts.prefix, "dev-c");
    let fix = |ts: i64| format!(r#"{{"ts":{ts},"lat":1,"lon":1,"acc":3}}"#);
    let wall = now_ms();
    // 90 minutes before the wall clock: 30 minutes in the server's past.
    // The wall clock's now: an hour in the server's future.
    publ.publish(
        &topic,
        format!(
            r#"{{"v":1,"device":"dev-c","boot":1,"seq":1,"fixes":[{},{}]}}"#,
            fix(wall - 90 * 60_000),
            fix(wall)
        ),
    )
    .await;
    wait_acked(&srv, 1).await;
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 1);
    assert_eq!(db.rejections("future_timestamp").await, 1);
    let received: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT received_at FROM fixes")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        received.timestamp_micros(),
        server_now.timestamp_micros(),
        "receive time comes from the injected clock"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_database_outage_acks_nothing_and_the_next_start_stores_all() {
    let db = TestDb::new().await;
    db.enroll("dev-d").await;
    let proxy = DbProxy::start("127.0.0.1:5432").await;
    let mut opts = ServerOpts::new(&db);
    opts.database_url = proxy.url_for(&db);
    let srv = start_server(&opts).await;
    let publ = Publisher::connect().await;
    let topic = native_topic(&opts.prefix, "dev-d");

    proxy.cut();
    for seq in 0..30 {
        publ.publish(&topic, json_msg("dev-d", 1, seq, 1)).await;
    }
    publ.wait_broker_acks(30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = srv.metrics.clone();
    // Shutdown grace is 3 s in tests: stop must not hang on the outage.
    tokio::time::timeout(Duration::from_secs(15), srv.stop())
        .await
        .expect("shutdown completes while the database is down");
    assert_eq!(metrics.messages_acked.get(), 0, "acked without a commit");

    proxy.restore();
    let second = start_server(&opts).await;
    wait_for("all 30 stored after restart", WAIT, || async {
        db.count("SELECT count(*) FROM messages").await == 30
    })
    .await;
    wait_acked(&second, 30).await;
    second.stop().await;
}
