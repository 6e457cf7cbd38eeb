//! The embedded broker (rumqttd) under the full server: devices publish on
//! its MQTT 3.1.1 port with rumqttc's v4 client at QoS 1 (as firmware-sim
//! does); the server's v5 ingest session reads from its loopback v5 port.
//! Also pins the rumqttd behaviour src/broker.rs relies on, so an upgrade
//! that changes it fails here.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use common::{json_msg, unique, wait_for, DbProxy, Publisher, TestDb};
use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, Publish as Publish5};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::{AsyncClient as Client5, Event as Event5, EventLoop as EventLoop5};
use waypoint::app::Running;
use waypoint::broker::{BrokerError, BrokerOptions, EmbeddedBroker, INFLIGHT_PER_CONNECTION};
use waypoint::clock::SystemClock;
use waypoint::config::{AppConfig, Cli, Command};
use waypoint::ingest::topic::native_topic;
use waypoint::store::postgres::PgStore;

const WAIT: Duration = Duration::from_secs(30);

fn embedded() -> EmbeddedBroker {
    EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), BrokerOptions::default())
        .expect("embedded broker starts")
}

/// A server whose MQTT clients use the embedded broker's ingest listener.
struct Server {
    database_url: String,
    ingest: SocketAddr,
    prefix: String,
    client_id: String,
}

impl Server {
    fn new(db_url: &str, broker: &EmbeddedBroker) -> Self {
        Self {
            database_url: db_url.to_owned(),
            ingest: broker.ingest_addr(),
            prefix: format!("{}/", unique("e")),
            client_id: unique("wp-emb-"),
        }
    }

    /// Its configuration, through `waypoint serve`'s flag parsing as
    /// tests/common's start_server does.
    fn config(&self) -> AppConfig {
        let argv = [
            "waypoint",
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--batch-max-delay-ms",
            "5",
            "--shutdown-grace-secs",
            "3",
            "--mqtt-url",
            &format!("mqtt://{}", self.ingest),
            "--database-url",
            &self.database_url,
            "--topic-prefix",
            &self.prefix,
            "--mqtt-client-id",
            &self.client_id,
        ];
        let Command::Serve(args) = Cli::try_parse_from(argv).expect("flags").command else {
            unreachable!()
        };
        args.to_config().expect("config")
    }

    /// Starts it and waits for /readyz.
    async fn start(&self) -> Running {
        let cfg = self.config();
        // What the server's client accepts bounds what the broker may accept.
        assert!(
            BrokerOptions::for_ingest(&cfg.mqtt).max_packet_bytes
                <= BrokerOptions::default().max_packet_bytes
        );
        let store = PgStore::connect(&self.database_url, 8)
            .await
            .expect("connect");
        let running = waypoint::app::start(cfg, store, std::sync::Arc::new(SystemClock))
            .await
            .expect("server starts");
        let addr = running.http_addr;
        wait_for(
            "server ready (/readyz)",
            Duration::from_secs(10),
            || async move { common::http_get(addr, "/readyz").await.0 == 200 },
        )
        .await;
        running
    }
}

async fn wait_acked(srv: &Running, n: u64) {
    wait_for(&format!("{n} server acks"), WAIT, || async {
        srv.metrics.messages_acked.get() >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fix_published_through_the_embedded_broker_is_stored_exactly_once() {
    let broker = embedded();
    let db = TestDb::new().await;
    let devices: Vec<String> = (0..5).map(|i| format!("emb-{i}")).collect();
    for d in &devices {
        db.enroll(d).await;
    }
    let server = Server::new(&db.url, &broker);
    let srv = server.start().await;
    let publ = Publisher::connect_to(broker.local_addr().port(), None).await;

    // 500 messages of 2 fixes: more than rumqttd's in-flight window (100),
    // so flow control through withheld acks is exercised.
    for seq in 0..100u64 {
        for d in &devices {
            publ.publish(&native_topic(&server.prefix, d), json_msg(d, 1, seq, 2))
                .await;
        }
    }
    publ.wait_broker_acks(500).await;
    wait_acked(&srv, 500).await;
    assert_eq!(db.count("SELECT count(*) FROM messages").await, 500);
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 1000);
    // Exactly once: one row per (device, seq, fix), not just 1000 rows.
    assert_eq!(
        db.count("SELECT count(DISTINCT (device_key, seq, idx)) FROM fixes")
            .await,
        1000
    );
    assert_eq!(srv.metrics.messages_duplicate.get(), 0);
    assert_eq!(
        srv.metrics.deferred.get(),
        0,
        "rumqttd exceeded Receive Maximum"
    );
    // Every publish the devices made got exactly one PUBACK from the broker.
    assert_eq!(
        publ.broker_acks.load(std::sync::atomic::Ordering::SeqCst),
        500
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_mid_stream_on_the_embedded_broker_loses_nothing() {
    let broker = embedded();
    let db = TestDb::new().await;
    db.enroll("emb-r").await;
    let server = Server::new(&db.url, &broker);
    let first = server.start().await;
    let publ = Publisher::connect_to(broker.local_addr().port(), None).await;
    let topic = native_topic(&server.prefix, "emb-r");

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
                        json_msg("emb-r", 1, seq, 1),
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    first.stop().await;
    // No server: rumqttd keeps the persistent session and logs for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = server.start().await;
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

/// The contract's hard case: messages the server holds but cannot commit
/// are never acknowledged, and the next session gets them from rumqttd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_unacked_at_shutdown_are_redelivered_to_the_next_start() {
    let broker = embedded();
    let db = TestDb::new().await;
    db.enroll("emb-d").await;
    let proxy = DbProxy::start("127.0.0.1:5432").await;
    let server = Server::new(&proxy.url_for(&db), &broker);
    let first = server.start().await;
    let publ = Publisher::connect_to(broker.local_addr().port(), None).await;
    let topic = native_topic(&server.prefix, "emb-d");

    proxy.cut();
    // 150: more than rumqttd has in flight to the server, so some wait in
    // its log and some in the server's queues.
    for seq in 0..150 {
        publ.publish(&topic, json_msg("emb-d", 1, seq, 1)).await;
    }
    publ.wait_broker_acks(150).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = first.metrics.clone();
    tokio::time::timeout(Duration::from_secs(15), first.stop())
        .await
        .expect("shutdown completes while the database is down");
    assert_eq!(metrics.messages_acked.get(), 0, "acked without a commit");
    assert_eq!(db.count("SELECT count(*) FROM messages").await, 0);

    proxy.restore();
    let second = server.start().await;
    wait_for("all 150 stored after restart", WAIT, || async {
        db.count("SELECT count(*) FROM messages").await == 150
    })
    .await;
    wait_acked(&second, 150).await;
    assert_eq!(db.count("SELECT count(DISTINCT seq) FROM fixes").await, 150);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_devices_send_while_the_server_starts_is_kept_only_for_a_prepared_session() {
    let broker = embedded();
    let db = TestDb::new().await;
    db.enroll("emb-s").await;
    let publ = Publisher::connect_to(broker.local_addr().port(), None).await;

    // Prepared: the broker keeps what arrives before the server connects.
    let server = Server::new(&db.url, &broker);
    broker
        .prepare_ingest_session(&server.config().mqtt)
        .expect("session prepared");
    let topic = native_topic(&server.prefix, "emb-s");
    for seq in 0..50 {
        publ.publish(&topic, json_msg("emb-s", 1, seq, 1)).await;
    }
    publ.wait_broker_acks(50).await;
    let srv = server.start().await;
    wait_acked(&srv, 50).await;
    assert_eq!(db.count("SELECT count(*) FROM messages").await, 50);
    srv.stop().await;

    // Not prepared: rumqttd acknowledges the publishes and routes them to
    // nobody (the limit prepare_ingest_session exists for).
    let late = Server::new(&db.url, &broker);
    let topic = native_topic(&late.prefix, "emb-s");
    for seq in 50..60 {
        publ.publish(&topic, json_msg("emb-s", 1, seq, 1)).await;
    }
    publ.wait_broker_acks(60).await;
    let srv = late.start().await;
    publ.publish(&topic, json_msg("emb-s", 1, 60, 1)).await;
    wait_acked(&srv, 1).await;
    assert_eq!(db.count("SELECT count(*) FROM messages").await, 51);
    srv.stop().await;
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = EmbeddedBroker::start(addr, BrokerOptions::default()).unwrap_err();
    assert!(matches!(err, BrokerError::PortInUse { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "port {} on 127.0.0.1 is in use: pick another with --mqtt-port or stop the program using it",
            addr.port()
        )
    );
}

fn subscriber(addr: SocketAddr, id: &str, receive_maximum: u16) -> (Client5, EventLoop5) {
    let mut o = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_receive_maximum(Some(receive_maximum))
        .set_max_packet_size(Some(320 * 1024))
        .set_manual_acks(true);
    Client5::new(o, 1000)
}

/// Publishes received: waits up to [`WAIT`] until `want` have arrived, then
/// keeps taking more until `quiet` passes without one (so a test can see
/// that no more than expected arrive). Other events are skipped; a
/// connection error ends it.
async fn receive(el: &mut EventLoop5, want: usize, quiet: Duration) -> Vec<Publish5> {
    let mut got = vec![];
    loop {
        let limit = if got.len() < want { WAIT } else { quiet };
        match tokio::time::timeout(limit, el.poll()).await {
            Ok(Ok(Event5::Incoming(Packet5::Publish(p)))) => got.push(p),
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return got,
        }
    }
}

fn seqs(p: &[Publish5]) -> Vec<u32> {
    p.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).parse().unwrap())
        .collect()
}

/// (a) v4 publishers reach a v5 subscriber (and the other way round, as
/// alerts do); (b) a persistent session gets
/// what it had not acknowledged again; (c) Receive Maximum is ignored in
/// favour of rumqttd's fixed window; (d) an oversize publish ends the
/// publisher's connection and reaches nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttd_behaves_as_src_broker_rs_documents() {
    let broker = embedded();
    let quiet = Duration::from_millis(500);
    let (sub, mut el) = subscriber(broker.ingest_addr(), "probe-srv", 10);
    sub.subscribe("probe/#", QoS5::AtLeastOnce).await.unwrap();
    assert!(receive(&mut el, 0, quiet).await.is_empty());

    let publ = Publisher::connect_to(broker.local_addr().port(), None).await;
    for i in 0..300u32 {
        publ.publish(&format!("probe/{}", i % 3), i.to_string())
            .await;
    }
    publ.wait_broker_acks(300).await;
    let first = receive(&mut el, 100, quiet).await;
    let window = usize::from(INFLIGHT_PER_CONNECTION);
    assert_eq!(seqs(&first), (0..window as u32).collect::<Vec<_>>());

    // Acknowledge 20 (in order), then drop the connection without DISCONNECT.
    for p in &first[..20] {
        sub.try_ack(p).unwrap();
    }
    let more = receive(&mut el, 20, quiet).await;
    assert_eq!(more.len(), 20, "the window slides by what was acknowledged");
    drop((sub, el));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (sub, mut el) = subscriber(broker.ingest_addr(), "probe-srv", 10);
    let mut all = vec![];
    // The window again, starting with what was delivered before and not
    // acknowledged; acknowledging then lets the rest through.
    let mut batch = receive(&mut el, 100, quiet).await;
    assert_eq!(
        seqs(&batch)[0],
        20,
        "redelivery starts at the oldest unacked"
    );
    while !batch.is_empty() {
        for p in &batch {
            sub.try_ack(p).unwrap();
        }
        all.extend(seqs(&batch));
        let rest = 280usize.saturating_sub(all.len()).min(window);
        batch = receive(&mut el, rest, quiet).await;
    }
    assert_eq!(
        all,
        (20..300).collect::<Vec<_>>(),
        "nothing lost or repeated"
    );

    let big = Publisher::connect_to(broker.local_addr().port(), None).await;
    big.publish("probe/big", vec![b'x'; DEFAULT_OVER]).await;
    publ.publish("probe/fits", vec![b'y'; 100 * 1024]).await;
    let got = receive(&mut el, 1, quiet).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.len(), 100 * 1024);
    assert_eq!(
        big.broker_acks.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an oversize publish is never acknowledged"
    );
    assert!(broker.is_running());
}

/// Alerts go the other way: published by the server's v5 client on the
/// ingest listener, read by 3.1.1 clients (firmware-sim's alert listener)
/// on the device listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_publish_reaches_a_v4_subscriber() {
    let broker = embedded();
    let mut o = rumqttc::MqttOptions::new("probe-v4-sub", "127.0.0.1", broker.local_addr().port());
    o.set_clean_session(false);
    let (sub, mut sub_el) = rumqttc::AsyncClient::new(o, 16);
    sub.subscribe("probe-alerts/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(WAIT, sub_el.poll())
            .await
            .expect("SUBACK");
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) = ev {
            break;
        }
    }
    let ingest = broker.ingest_addr();
    let o = rumqttc::v5::MqttOptions::new("probe-v5-pub", "127.0.0.1", ingest.port());
    let (publ, mut publ_el) = Client5::new(o, 16);
    tokio::spawn(async move { while publ_el.poll().await.is_ok() {} });
    publ.publish("probe-alerts/dev-1", QoS5::AtLeastOnce, false, "alert")
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(WAIT, sub_el.poll())
            .await
            .expect("publish");
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = ev {
            assert_eq!(p.topic, "probe-alerts/dev-1");
            assert_eq!(&p.payload[..], b"alert");
            break;
        }
    }
}

/// Just over the embedded broker's default packet limit.
const DEFAULT_OVER: usize = waypoint::broker::DEFAULT_MAX_PACKET_BYTES + 1;
