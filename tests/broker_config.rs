//! deploy/mosquitto.conf, run for real: a Mosquitto started by the test on
//! free ports with the production config (only paths and ports rewritten)
//! enforces per-device credentials, the topic ACL and the packet-size layer,
//! and Waypoint ingests through it with its own credential.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::broker::start_broker;
use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Connects as `user`; returns the client and a channel of the events that
/// matter here (connection results and PUBACK counts).
async fn device(
    port: u16,
    user: &str,
    pass: &str,
) -> (AsyncClient, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let mut o = MqttOptions::new(unique("dev-"), "127.0.0.1", port);
    o.set_credentials(user, pass);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 100);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let ev = match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(c))) => format!("connack {:?}", c.code),
                Ok(Event::Incoming(Packet::PubAck(_))) => "puback".into(),
                Ok(_) => continue,
                Err(e) => format!("error {e}"),
            };
            let stop = ev.starts_with("error");
            if tx.send(ev).is_err() || stop {
                return;
            }
        }
    });
    (client, rx)
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("broker answered")
        .unwrap_or_else(|| "closed".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_broker_config_enforces_credentials_acl_and_size() {
    assert!(
        Path::new("/usr/sbin/mosquitto").exists() || which("mosquitto"),
        "mosquitto must be installed"
    );
    let broker = start_broker(&[
        ("waypoint-server", "srv-secret"),
        ("dev-1", "pw-1"),
        ("dev-2", "pw-2"),
    ]);
    let db = TestDb::new().await;
    db.enroll("dev-1").await;
    db.enroll("dev-2").await;

    let mut opts = ServerOpts::new(&db);
    opts.prefix = String::new(); // the ACL names the production topics
    opts.broker = format!(
        "mqtt://waypoint-server:srv-secret@127.0.0.1:{}",
        broker.port
    );
    let srv = start_server(&opts).await;

    // Anonymous and wrong-password connections are refused.
    let (_c, mut rx) = device(broker.port, "dev-1", "wrong").await;
    let r = next(&mut rx).await;
    assert!(
        r.contains("error") || r.contains("NotAuthorized") || r.contains("BadUserNamePassword"),
        "{r}"
    );

    let (c1, mut rx1) = device(broker.port, "dev-1", "pw-1").await;
    assert_eq!(next(&mut rx1).await, "connack Success");
    // Its own topic: stored.
    c1.publish(
        "em/v1/devices/dev-1/telemetry",
        QoS::AtLeastOnce,
        false,
        json_msg("dev-1", 1, 1, 2),
    )
    .await
    .unwrap();
    assert_eq!(next(&mut rx1).await, "puback");
    // Another device's topic: the ACL drops it before Waypoint sees it
    // (MQTT 3.1.1 still PUBACKs a denied publish).
    c1.publish(
        "em/v1/devices/dev-2/telemetry",
        QoS::AtLeastOnce,
        false,
        json_msg("dev-2", 1, 1, 2),
    )
    .await
    .unwrap();
    assert_eq!(next(&mut rx1).await, "puback");
    // Alerts are not a device's to read or write.
    c1.publish("em/v1/alerts/forged", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(next(&mut rx1).await, "puback");
    // Oversize for the broker (128 KiB): refused at the device's connection.
    c1.publish(
        "em/v1/devices/dev-1/telemetry",
        QoS::AtLeastOnce,
        false,
        vec![b' '; 200 * 1024],
    )
    .await
    .unwrap();
    let r = next(&mut rx1).await;
    assert!(
        r.starts_with("error"),
        "oversize publish was not refused by the broker: {r}"
    );

    wait_for(
        "dev-1's message stored",
        Duration::from_secs(10),
        || async { db.count("SELECT count(*) FROM fixes").await == 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        db.count("SELECT count(*) FROM fixes").await,
        2,
        "only dev-1's own message"
    );
    assert_eq!(db.count("SELECT count(*) FROM rejected_messages").await, 0);
    assert_eq!(srv.metrics.messages_received.get(), 1);
    srv.stop().await;
}

fn which(bin: &str) -> bool {
    Command::new("which")
        .arg(bin)
        .output()
        .is_ok_and(|o| o.status.success())
}
