//! End to end through a real broker: devices publish QoS 1 to Mosquitto,
//! Waypoint (in-process) ingests, commits and acks. Baseline in the same
//! run: the same publishes to the same broker drained by a plain MQTT v5
//! subscriber that acks at once — the broker's own ceiling on this machine.
//!
//! Run: `cargo bench --bench e2e` (env: WAYPOINT_BENCH_DATABASE_URL as for
//! the ingest bench). The bench starts its own Mosquitto on a free port with
//! the flow limits of deploy/mosquitto.conf: a stock Mosquitto queues only
//! 1 000 messages per subscriber and silently drops the rest of a burst.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sqlx::{Connection, Executor};

mod common;

use common::ScratchDb;
use waypoint::clock::{Clock, SystemClock};
use waypoint::config::{Cli, Command};
use waypoint::ingest::topic::native_topic;
use waypoint::store::postgres::PgStore;

const DEVICES: usize = 1_000;
const MESSAGES: usize = 40_000;
const FIXES_PER_MSG: usize = 10;
const PUBLISHERS: usize = 2;
/// A round that has not finished by then has lost messages: fail, do not hang.
const ROUND_LIMIT: Duration = Duration::from_secs(180);

/// Mosquitto with the production flow limits, on a free port.
struct Broker(std::process::Child, u16, std::path::PathBuf);

impl Broker {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = std::env::temp_dir().join(format!("wp-e2e-{}.conf", std::process::id()));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_inflight_messages 2000\nmax_queued_messages 1000000\nmax_queued_bytes 0\n\
                 max_packet_size 131072\n"
            ),
        )
        .unwrap();
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto must be installed");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child, port, conf)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.2);
    }
}

async fn wait_until(what: &str, started: Instant, done: impl Fn() -> bool) {
    while !done() {
        assert!(
            started.elapsed() < ROUND_LIMIT,
            "{what}: not finished in {ROUND_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn payload(dev: usize, seq: usize, t0: i64) -> Vec<u8> {
    let fixes: Vec<String> = (0..FIXES_PER_MSG)
        .map(|k| {
            format!(
                r#"{{"ts":{},"lat":{:.6},"lon":-0.12,"acc":6.5,"src":"gnss"}}"#,
                t0 + (seq * 10 + k) as i64 * 1000,
                51.5 + dev as f64 * 1e-4
            )
        })
        .collect();
    format!(
        r#"{{"v":1,"device":"e2e-{dev}","boot":1,"seq":{seq},"fixes":[{}],"status":{{"battery":80}}}}"#,
        fixes.join(",")
    )
    .into_bytes()
}

/// Publishes every message from `PUBLISHERS` connections; returns when the
/// broker has PUBACKed them all.
async fn publish_all(port: u16, prefix: &str) -> Duration {
    let t0 = SystemClock.now().timestamp_millis() - 3_600_000;
    let started = Instant::now();
    let mut tasks = vec![];
    for p in 0..PUBLISHERS {
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut o = MqttOptions::new(
                format!("e2e-pub-{p}-{}", std::process::id()),
                "127.0.0.1",
                port,
            );
            o.set_inflight(1_000);
            o.set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut el) = AsyncClient::new(o, 1_000);
            let mine: Vec<usize> = (0..MESSAGES).filter(|i| i % PUBLISHERS == p).collect();
            let n = mine.len() as u64;
            let acks = Arc::new(AtomicU64::new(0));
            let a = acks.clone();
            let poll = tokio::spawn(async move {
                while a.load(Ordering::Relaxed) < n {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            a.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => panic!("publisher connection failed: {e}"),
                    }
                }
            });
            for i in mine {
                let dev = i % DEVICES;
                let seq = i / DEVICES;
                client
                    .publish(
                        native_topic(&prefix, &format!("e2e-{dev}")),
                        QoS::AtLeastOnce,
                        false,
                        payload(dev, seq, t0),
                    )
                    .await
                    .unwrap();
            }
            poll.await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

/// Broker-only baseline: a v5 subscriber with manual acks that acks at once.
async fn broker_only(port: u16) -> f64 {
    let prefix = format!("e2e-base-{}/", std::process::id());
    let mut o = Options5::new(format!("e2e-sub-{}", std::process::id()), "127.0.0.1", port);
    o.set_manual_acks(true)
        .set_receive_maximum(Some(2_000))
        .set_max_packet_size(Some(1 << 20));
    let (client, mut el) = Client5::new(o, 4_000);
    client
        .subscribe(
            format!("{prefix}em/v1/devices/+/telemetry"),
            QoS5::AtLeastOnce,
        )
        .await
        .unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let sub = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event5::Incoming(Packet5::Publish(p))) => {
                    let _ = client.try_ack(&p);
                    g.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event5::Incoming(Packet5::SubAck(_))) => {}
                Ok(_) => {}
                Err(e) => panic!("subscriber failed: {e}"),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    publish_all(port, &prefix).await;
    wait_until("broker-only", started, || {
        got.load(Ordering::Relaxed) >= MESSAGES as u64
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    sub.abort();
    MESSAGES as f64 / secs
}

async fn waypoint_e2e(port: u16, db_url: &str) -> (f64, f64, f64) {
    let prefix = format!("e2e-wp-{}/", std::process::id());
    let mqtt_url = format!("mqtt://127.0.0.1:{port}");
    let argv = [
        "waypoint",
        "serve",
        "--mqtt-url",
        &mqtt_url,
        "--http-addr",
        "127.0.0.1:0",
        "--database-url",
        db_url,
        "--topic-prefix",
        &prefix,
        "--mqtt-client-id",
        &format!("e2e-srv-{}", std::process::id()),
    ];
    let Command::Serve(args) = Cli::parse_from(argv).command else {
        unreachable!()
    };
    let cfg = args.to_config().unwrap();
    let store = PgStore::connect(db_url, (cfg.shards + 4) as u32)
        .await
        .unwrap();
    let srv = waypoint::app::start(cfg, store, Arc::new(SystemClock))
        .await
        .unwrap();
    while srv.metrics.mqtt_connected.get() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    publish_all(port, &prefix).await;
    wait_until("waypoint", started, || {
        srv.metrics.messages_acked.get() >= MESSAGES as u64
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(
        srv.metrics.fixes_stored.get() as usize,
        MESSAGES * FIXES_PER_MSG
    );
    let (p50, p99) = {
        let h = srv.metrics.commit_latency_us.lock().unwrap();
        (
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        )
    };
    srv.stop().await;
    (MESSAGES as f64 / secs, p50, p99)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let db = ScratchDb::create("e2e", DEVICES, "e2e-").await;
    let url = db.url.clone();
    println!(
        "end-to-end: {MESSAGES} QoS 1 messages × {FIXES_PER_MSG} fixes from {DEVICES} devices over {PUBLISHERS} publisher connections\n"
    );
    println!(
        "{:<8} {:>16} {:>16} {:>9} {:>9} {:>9}",
        "round", "broker-only msg/s", "waypoint msg/s", "ratio", "p50 ms", "p99 ms"
    );
    let broker = Broker::start();
    for round in 1..=2 {
        let base = broker_only(broker.1).await;
        // Fresh tables each round so the second round is not all duplicates.
        sqlx::PgConnection::connect(&url)
            .await
            .unwrap()
            .execute("TRUNCATE fixes, messages, device_status")
            .await
            .unwrap();
        let (wp, p50, p99) = waypoint_e2e(broker.1, &url).await;
        println!(
            "{round:<8} {base:>16.0} {wp:>16.0} {:>9.2} {p50:>9.2} {p99:>9.2}",
            wp / base
        );
    }
    println!("\nwaypoint msg/s counts a message once Waypoint has committed it and sent its PUBACK; fixes/s = msg/s × {FIXES_PER_MSG}");
    db.drop_database().await;
}
