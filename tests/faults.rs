//! Faults with real processes. Each test owns the process it breaks: a
//! Mosquitto started from deploy/mosquitto.conf, a PostgreSQL cluster (as
//! the postgres user), or the `waypoint` server binary itself, and drives a
//! sustained QoS 1 load from persistent-session device publishers while the
//! fault happens. Every test counts, prints and asserts:
//! - sent: publishes handed to the device clients;
//! - acked: PUBACKs the device clients received (the broker took them);
//! - stored: distinct (device, boot, seq) rows in `fixes`;
//! - duplicates: extra fix rows per (device, boot, seq, idx), alerts of the
//!   same condition overlapping in time, `raised` entries per alert beyond one;
//! - lost: acked but not stored.
//!
//! and fails on any loss or duplicate. CI sizes (a few seconds of outage)
//! by default; `benches/faults.sh` runs the long versions through the
//! `FAULTS_*` variables.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use common::broker::{start_broker, Broker};
use common::pg_cluster::PgCluster;
use common::walk;
use common::*;
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::ingest::topic::native_topic;
use waypoint::scenario::Scenario;
use waypoint::store::Store;

/// The process-level fault tests each load both cores: one at a time, so
/// their timing (and the figures they print) mean something.
/// (An async lock: the tests run on runtimes of their own, and a test that
/// fails releases it as it unwinds.)
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A duration from `FAULTS_<name>` in seconds, else `default`.
fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(env_u64(name, default))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(format!("FAULTS_{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// GET over HTTP/1.1 that reports a server that is not there (killed)
/// instead of panicking.
async fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let code = buf.get(9..12)?.parse().ok()?;
        Some((
            code,
            buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
        ))
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .ok()?
}

/// The `waypoint serve` binary run as a child process, so that it can be
/// killed with SIGKILL. It runs from a private copy of the binary: other
/// worktrees sharing the target directory rebuild target/debug/waypoint.
struct ServerProc {
    bin: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    http: SocketAddr,
    log: PathBuf,
    /// Holds the binary's copy and the log.
    dir: tempfile::TempDir,
}

impl ServerProc {
    /// Starts `waypoint serve` on these services with a stable MQTT client
    /// id (its persistent session is what a restart resumes).
    async fn start(mqtt_url: &str, database_url: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("waypoint");
        std::fs::copy(env!("CARGO_BIN_EXE_waypoint"), &bin)
            .expect("copy the waypoint binary (cargo build --bin waypoint)");
        let mut args: Vec<String> = [
            "serve",
            "--mqtt-url",
            mqtt_url,
            "--database-url",
            database_url,
            "--mqtt-client-id",
            "waypoint-faults",
            "--topic-prefix",
            "",
            "--shards",
            "2",
            "--batch-max-delay-ms",
            "5",
            "--shutdown-grace-secs",
            "3",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.path().join("server.log");
        let mut s = Self {
            bin,
            args,
            child: None,
            http: "127.0.0.1:0".parse().unwrap(),
            log,
            dir,
        };
        s.spawn().await;
        s
    }

    /// Starts the process (again) and waits until it is ready.
    async fn spawn(&mut self) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        self.http = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .args(&self.args)
            .args(["--http-addr", &self.http.to_string()])
            .env("WAYPOINT_LOG", "info,sqlx=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn waypoint");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = try_get(self.http, "/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server not ready after 30 s; log:\n{}",
                self.log_tail()
            );
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("server exited with {st}; log:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no flush, no final acks, nothing saved.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL the server");
            c.wait().unwrap();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Resident memory in KiB (VmRSS).
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// /metrics as name{labels} -> value; None while it does not answer.
    async fn metrics(&self) -> Option<HashMap<String, f64>> {
        let (code, body) = try_get(self.http, "/metrics").await?;
        (code == 200).then(|| {
            body.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect()
        })
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
        let _ = &self.dir;
    }
}

/// A one-fix JSON v1 message; no status block, so the load itself raises no
/// alerts (the alerts a test counts are the ones it provokes).
fn load_msg(device: &str, seq: u64) -> String {
    json!({"v": 1, "device": device, "boot": 1, "seq": seq, "fixes": [{
        "ts": now_ms(), "lat": 52.0 + (seq % 1000) as f64 * 1e-5, "lon": 0.1, "acc": 6}]})
    .to_string()
}

/// Devices publishing at a steady rate, each from its own persistent
/// session, until stopped.
struct Load {
    devices: Vec<String>,
    pubs: Vec<Arc<Publisher>>,
    sent: Vec<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(port: u16, devices: &[String], per_device_per_s: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut pubs, mut sent, mut tasks) = (vec![], vec![], vec![]);
        for d in devices {
            let p = Arc::new(
                Publisher::connect_persistent(port, &format!("faults-{d}"), (d, "p")).await,
            );
            let n = Arc::new(AtomicU64::new(0));
            let (p2, n2, stop2, d) = (p.clone(), n.clone(), stop.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                let topic = native_topic("", &d);
                let mut tick =
                    tokio::time::interval(Duration::from_micros(1_000_000 / per_device_per_s));
                // A stalled client (broker down, in-flight window full)
                // catches up at its own pace rather than in a burst.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop2.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let seq = n2.load(Ordering::SeqCst) + 1;
                    p2.publish(&topic, load_msg(&d, seq)).await;
                    n2.store(seq, Ordering::SeqCst);
                }
            }));
            pubs.push(p);
            sent.push(n);
        }
        Self {
            devices: devices.to_vec(),
            pubs,
            sent,
            stop,
            tasks,
        }
    }

    fn sent_total(&self) -> u64 {
        self.sent.iter().map(|n| n.load(Ordering::SeqCst)).sum()
    }

    fn acked_total(&self) -> u64 {
        self.pubs
            .iter()
            .map(|p| p.broker_acks.load(Ordering::SeqCst))
            .sum()
    }

    /// Stops publishing and waits until the broker acknowledged every
    /// publish (the device clients resend until it does); per-device sent.
    async fn finish(&mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
        let sent = self.sent_total();
        wait_for(
            "the broker acked every publish",
            Duration::from_secs(60),
            || async { self.acked_total() >= sent },
        )
        .await;
        self.sent.iter().map(|n| n.load(Ordering::SeqCst)).collect()
    }
}

/// What a test reports.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    acked: u64,
    stored: u64,
    duplicates: u64,
    lost: u64,
}

/// Fix rows stored for (device, boot 1, seq 1..=sent): distinct and total.
async fn stored(pool: &PgPool, device: &str, sent: u64) -> (u64, u64) {
    let (distinct, rows): (i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT (f.boot, f.seq, f.idx)), count(*) FROM fixes f \
         JOIN devices d USING (device_key) \
         WHERE d.device_id = $1 AND f.boot = 1 AND f.seq BETWEEN 1 AND $2",
    )
    .bind(device)
    .bind(sent as i64)
    .fetch_one(pool)
    .await
    .unwrap();
    (distinct as u64, rows as u64)
}

/// Alerts of one condition that overlap in time (a condition raised twice),
/// plus `raised` log entries beyond one per alert.
async fn duplicate_alerts(pool: &PgPool) -> u64 {
    let overlapping: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alerts a JOIN alerts b ON a.alert_id < b.alert_id \
         AND a.device_key = b.device_key AND a.kind = b.kind \
         AND a.zone_id IS NOT DISTINCT FROM b.zone_id \
         AND a.pairing_id IS NOT DISTINCT FROM b.pairing_id \
         AND b.started_at < COALESCE(a.condition_ended_at, 'infinity')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let raised_twice: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(n - 1), 0)::bigint FROM (SELECT count(*) AS n FROM alert_events \
         WHERE event_type = 'raised' GROUP BY alert_id) x",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (overlapping + raised_twice) as u64
}

/// Waits until everything sent is stored (or `limit` passes), then counts.
async fn tally(pool: &PgPool, load: &mut Load, limit: Duration) -> Tally {
    let sent = load.finish().await;
    let total: u64 = sent.iter().sum();
    let deadline = Instant::now() + limit;
    let mut t;
    loop {
        t = Tally {
            sent: total,
            acked: load.acked_total(),
            ..Tally::default()
        };
        for (d, n) in load.devices.iter().zip(&sent) {
            let (distinct, rows) = stored(pool, d, *n).await;
            t.stored += distinct;
            t.duplicates += rows - distinct;
            t.lost += n - distinct;
        }
        if t.lost == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t.duplicates += duplicate_alerts(pool).await;
    t
}

fn assert_clean(what: &str, t: &Tally) {
    println!(
        "{what}: sent={} acked={} stored={} duplicates={} lost={}",
        t.sent, t.acked, t.stored, t.duplicates, t.lost
    );
    assert!(t.sent > 0, "{what}: nothing sent");
    assert_eq!(t.acked, t.sent, "{what}: every publish acknowledged");
    assert_eq!(t.lost, 0, "{what}: acknowledged but not stored: {t:?}");
    assert_eq!(t.duplicates, 0, "{what}: duplicates: {t:?}");
    assert_eq!(t.stored, t.sent, "{what}: {t:?}");
}

fn load_devices(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("load-{i}")).collect()
}

/// Broker users: the server, the load devices and `more`.
fn users<'a>(devices: &'a [String], more: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    let mut u = vec![("waypoint-server", "s")];
    u.extend(devices.iter().map(|d| (d.as_str(), "p")));
    u.extend(more.iter().map(|d| (*d, "p")));
    u
}

fn server_url(broker: &Broker) -> String {
    format!("mqtt://waypoint-server:s@127.0.0.1:{}", broker.port)
}

async fn enroll_all(store: &impl Store, devices: &[String]) {
    for d in devices {
        store
            .add_device(
                &waypoint::domain::DeviceId::parse(d).unwrap(),
                None,
                Utc::now(),
            )
            .await
            .expect("enroll");
    }
}

/// A test-owned Mosquitto restarted while the database is unreachable
/// (through a proxy that cuts it): the redelivery finds the shard queue
/// full, and every message is still stored and acked exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_during_a_database_outage_loses_nothing() {
    let _one = serial().await;
    let mut broker = start_broker(&[("waypoint-server", "s"), ("dev-1", "p")]);
    let db = TestDb::new().await;
    db.enroll("dev-1").await;
    let proxy = DbProxy::start("127.0.0.1:5432").await;
    let mut opts = ServerOpts::new(&db);
    opts.prefix = String::new();
    opts.broker = format!("mqtt://waypoint-server:s@127.0.0.1:{}", broker.port);
    opts.database_url = proxy.url_for(&db);
    // One small shard queue and one-message batches, so the stalled shard
    // holds one message and its queue the other 19: the broker's redelivery
    // after the restart finds the queue still full of the old connection's.
    opts.extra = [
        "--receive-maximum",
        "20",
        "--shards",
        "1",
        "--batch-max-fixes",
        "1",
    ]
    .map(String::from)
    .to_vec();
    let srv = start_server(&opts).await;

    proxy.cut();
    let publ = Publisher::connect_to(broker.port, Some(("dev-1", "p"))).await;
    let topic = native_topic("", "dev-1");
    for seq in 0..60 {
        publ.publish(&topic, json_msg("dev-1", 1, seq, 1)).await;
    }
    publ.wait_broker_acks(60).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(srv.metrics.messages_acked.get(), 0);

    broker.restart();
    wait_for("server reconnected", Duration::from_secs(20), || async {
        srv.metrics.mqtt_connects.get() >= 2 && srv.metrics.mqtt_connected.get() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(db.count("SELECT count(*) FROM messages").await, 0);

    proxy.restore();
    wait_for(
        "all 60 messages stored",
        Duration::from_secs(60),
        || async { db.count("SELECT count(*) FROM messages").await == 60 },
    )
    .await;
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 60);
    assert!(
        srv.metrics.deferred.get() > 0,
        "the redelivery should have found the shard queue full"
    );
    // Deferred messages come back through a resync reconnect and are acked,
    // in order, each exactly once; then nothing is left unacknowledged.
    wait_for("everything acked", Duration::from_secs(30), || async {
        srv.metrics.messages_acked.get() >= 60
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(srv.metrics.messages_acked.get(), 60, "acked more than once");
    let (_, m) = http_get(srv.http_addr, "/metrics").await;
    assert!(m.contains(r#"waypoint_queue_depth{stage="acks"} 0"#), "{m}");
    assert!(m.contains("waypoint_oldest_unacked_seconds 0.0"), "{m}");
    assert_eq!(db.count("SELECT count(*) FROM messages").await, 60);
    srv.stop().await;
}

/// Two people wearing tag-a and tag-b, each excluded from the walk's zone.
fn two_walkers() -> Scenario {
    let zone = json!({"zone_ref": "victim-home", "name": "Victim residence", "geojson": {
        "type": "Feature", "properties": {"radius_m": 100},
        "geometry": {"type": "Point", "coordinates": [walk::LON, walk::LAT]}}});
    Scenario::parse(
        &json!({
            "supervisees": [
                {"case_ref": "C-A", "time_zone": "Europe/London", "officer": "pc-1"},
                {"case_ref": "C-B", "time_zone": "Europe/London", "officer": "pc-1"}],
            "devices": [{"device_id": "tag-a", "report_interval_s": 10},
                        {"device_id": "tag-b", "report_interval_s": 10}],
            "zones": [zone],
            "rules": [{"supervisee": "C-A", "role": "exclusion", "zone": "victim-home"},
                      {"supervisee": "C-B", "role": "exclusion", "zone": "victim-home"}],
            "assignments": [
                {"device": "tag-a", "supervisee": "C-A", "from": "2020-01-01T00:00:00Z"},
                {"device": "tag-b", "supervisee": "C-B", "from": "2020-01-01T00:00:00Z"}]
        })
        .to_string(),
    )
    .unwrap()
}

async fn zone_alerts(pool: &PgPool, device: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM alerts a JOIN devices d USING (device_key) \
         WHERE d.device_id = $1 AND a.kind = 'exclusion_zone_entry'",
    )
    .bind(device)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn messages_of(pool: &PgPool, device: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM messages m JOIN devices d USING (device_key) WHERE d.device_id = $1",
    )
    .bind(device)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// kill -9 of the server under sustained load, restarted after an outage:
/// every acknowledged fix stored exactly once, no alert raised twice, and a
/// violation in progress across the kill (one fix inside the zone, the
/// second needed to confirm it arriving after the restart) raised once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_under_load_loses_and_duplicates_nothing() {
    let _one = serial().await;
    let devices = load_devices(4);
    let mut broker = start_broker(&users(&devices, &["tag-a", "tag-b"]));
    let db = TestDb::new().await;
    db.store()
        .apply_scenario(&two_walkers(), "test")
        .await
        .unwrap();
    enroll_all(&db.store(), &devices).await;
    let mut srv = ServerProc::start(&server_url(&broker), &db.url, &[]).await;
    let rate = env_u64("RATE", 100);
    let mut load = Load::start(broker.port, &devices, rate).await;
    let port = broker.port;
    let tag_a = Publisher::connect_persistent(port, "faults-tag-a", ("tag-a", "p")).await;
    let tag_b = Publisher::connect_persistent(port, "faults-tag-b", ("tag-b", "p")).await;
    let t0 = Utc::now() - TimeDelta::seconds(300);
    let fix = |d: &str, seq: u64, north_m: f64| {
        walk::at(d, seq, t0 + TimeDelta::seconds(10 * seq as i64), north_m)
    };
    // tag-b walks in and is confirmed (alert raised) before the kill;
    // tag-a has one fix inside (60 m from the centre of a 100 m zone) when
    // the server dies: the second, which confirms it, comes after.
    let path = [400.0, 250.0, 120.0, 60.0, 40.0, 45.0];
    for (i, d) in path.iter().enumerate() {
        tag_b
            .publish(&native_topic("", "tag-b"), fix("tag-b", i as u64 + 1, *d))
            .await;
    }
    for (i, d) in path[..4].iter().enumerate() {
        tag_a
            .publish(&native_topic("", "tag-a"), fix("tag-a", i as u64 + 1, *d))
            .await;
    }
    wait_for("the walks stored", Duration::from_secs(20), || async {
        messages_of(&db.pool, "tag-a").await == 4 && messages_of(&db.pool, "tag-b").await == 6
    })
    .await;
    assert_eq!(
        zone_alerts(&db.pool, "tag-b").await,
        1,
        "tag-b raised before the kill"
    );
    assert_eq!(
        zone_alerts(&db.pool, "tag-a").await,
        0,
        "tag-a still pending at the kill"
    );

    let kills = env_u64("KILLS", 1);
    let down = env_secs("KILL_DOWN_SECS", 3);
    let mut seq_a = 4;
    let mut seq_b = 6;
    for k in 0..kills {
        tokio::time::sleep(Duration::from_secs(2)).await;
        srv.kill9();
        let killed_at = load.sent_total();
        // The walkers keep reporting from inside the zone while the server
        // is down; the broker queues for its persistent session.
        seq_a += 1;
        seq_b += 1;
        tag_a
            .publish(
                &native_topic("", "tag-a"),
                fix("tag-a", seq_a, 45.0 + k as f64),
            )
            .await;
        tag_b
            .publish(
                &native_topic("", "tag-b"),
                fix("tag-b", seq_b, 50.0 + k as f64),
            )
            .await;
        tokio::time::sleep(down).await;
        println!(
            "kill {}: sent {} at the kill, {} when restarted",
            k + 1,
            killed_at,
            load.sent_total()
        );
        srv.spawn().await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..2 {
        seq_a += 1;
        seq_b += 1;
        tag_a
            .publish(&native_topic("", "tag-a"), fix("tag-a", seq_a, 55.0))
            .await;
        tag_b
            .publish(&native_topic("", "tag-b"), fix("tag-b", seq_b, 55.0))
            .await;
    }
    let t = tally(&db.pool, &mut load, Duration::from_secs(60)).await;
    wait_for("the walks stored", Duration::from_secs(30), || async {
        messages_of(&db.pool, "tag-a").await == seq_a as i64
            && messages_of(&db.pool, "tag-b").await == seq_b as i64
    })
    .await;
    let (a, b) = (
        zone_alerts(&db.pool, "tag-a").await,
        zone_alerts(&db.pool, "tag-b").await,
    );
    println!("kill -9 x{kills} ({down:?} down): alerts tag-a={a} tag-b={b}");
    assert_clean(&format!("kill -9 x{kills}"), &t);
    assert_eq!(a, 1, "the violation in progress at the kill is raised once");
    assert_eq!(
        b, 1,
        "the violation raised before the kill is not raised again"
    );
    let m = srv.metrics().await.expect("metrics");
    println!(
        "after the last restart: {} redelivered messages found already stored",
        m["waypoint_messages_duplicate_total"]
    );
    assert!(m["waypoint_mqtt_connected"] == 1.0, "{m:?}");
    broker.stop();
}

/// Mosquitto stopped (SIGTERM, as an operator restarting it) and started
/// again under load, the server running: nothing lost, and the server and
/// devices reconnect by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_under_load_loses_nothing() {
    let _one = serial().await;
    let devices = load_devices(4);
    let mut broker = start_broker(&users(&devices, &[]));
    let db = TestDb::new().await;
    enroll_all(&db.store(), &devices).await;
    let srv = ServerProc::start(&server_url(&broker), &db.url, &[]).await;
    let mut load = Load::start(broker.port, &devices, env_u64("RATE", 100)).await;
    let restarts = env_u64("BROKER_RESTARTS", 1);
    let down = env_secs("BROKER_DOWN_SECS", 2);
    for _ in 0..restarts {
        tokio::time::sleep(Duration::from_secs(2)).await;
        broker.stop();
        tokio::time::sleep(down).await;
        broker.start();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = tally(&db.pool, &mut load, Duration::from_secs(60)).await;
    let m = srv.metrics().await.expect("metrics");
    println!(
        "broker restarted x{restarts} ({down:?} down): server connects={} duplicates skipped={}",
        m["waypoint_mqtt_connects_total"], m["waypoint_messages_duplicate_total"]
    );
    assert_clean(&format!("broker restart x{restarts}"), &t);
    assert_eq!(m["waypoint_mqtt_connected"], 1.0, "server reconnected");
    assert!(
        m["waypoint_mqtt_connects_total"] >= 1.0 + restarts as f64,
        "{m:?}"
    );
}

/// Sum of the queue depths the server reports (shard queues and the acks
/// waiting for their turn).
fn queued(m: &HashMap<String, f64>) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("waypoint_queue_depth{"))
        .map(|(_, v)| v)
        .sum()
}

/// PostgreSQL stopped (`pg_ctl stop -m fast`) under load and started again:
/// the server stops acking, its queues stay within the Receive Maximum and
/// its memory flat, nothing it acknowledged is missing from the database
/// (read while the server still cannot reach it), and it recovers on its
/// own with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_stopped_under_load_stops_acks_and_recovers() {
    let _one = serial().await;
    let devices = load_devices(4);
    let broker = start_broker(&users(&devices, &[]));
    let pg = PgCluster::start();
    let url = pg.create_db("wp_faults").await;
    let pool = {
        let store = waypoint::store::postgres::PgStore::connect(&url, 2)
            .await
            .expect("connect the test cluster");
        store.migrate().await.expect("migrate");
        enroll_all(&store, &devices).await;
        PgPool::connect(&url).await.unwrap()
    };
    const RECEIVE_MAX: f64 = 500.0;
    let srv = ServerProc::start(&server_url(&broker), &url, &["--receive-maximum", "500"]).await;
    let mut load = Load::start(broker.port, &devices, env_u64("RATE", 100)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = srv.rss_kib();
    // The pool's connections die with the cluster; it reconnects later.
    pg.stop();
    let stopped = Instant::now();
    let down = env_secs("PG_DOWN_SECS", 8);
    let (mut max_queued, mut max_rss) = (0.0f64, rss_before);
    let mut acked_settled = None;
    let mut received_at_stop = None;
    while stopped.elapsed() < down {
        tokio::time::sleep(Duration::from_millis(250)).await;
        max_rss = max_rss.max(srv.rss_kib());
        let Some(m) = srv.metrics().await else {
            continue;
        };
        max_queued = max_queued.max(queued(&m));
        received_at_stop.get_or_insert(m["waypoint_messages_received_total"]);
        // Commits in flight when the cluster went down have failed within
        // a second; from then on nothing may be acknowledged.
        if stopped.elapsed() > Duration::from_secs(1) {
            let acked = m["waypoint_messages_acked_total"];
            let settled = *acked_settled.get_or_insert(acked);
            assert_eq!(
                acked, settled,
                "the server acked while the database was down"
            );
        }
    }
    let m = srv.metrics().await.expect("metrics during the outage");
    let acked_down = m["waypoint_messages_acked_total"];
    let received_down = m["waypoint_messages_received_total"];
    let sent_down = load.sent_total();
    // Read what is committed while the server still finds the database down.
    pg.start_socket_only();
    let committed: i64 = {
        let p = PgPool::connect(&pg.socket_url("wp_faults")).await.unwrap();
        let n = sqlx::query_scalar("SELECT count(*) FROM messages")
            .fetch_one(&p)
            .await
            .unwrap();
        p.close().await;
        n
    };
    pg.stop();
    pg.start_again();
    let outage = stopped.elapsed();
    println!(
        "PostgreSQL down {outage:.1?}: devices sent {sent_down}, server received {received_down} \
         (of which {} while down), acked {acked_down}, committed {committed}; \
         queued at most {max_queued} (receive maximum {RECEIVE_MAX}); \
         RSS {rss_before} KiB before, at most {max_rss} KiB during",
        received_down - received_at_stop.unwrap_or(received_down)
    );
    assert!(
        acked_down <= committed as f64,
        "acked {acked_down} but only {committed} committed"
    );
    assert!(
        max_queued <= RECEIVE_MAX,
        "queues beyond the receive maximum"
    );
    assert!(
        max_rss <= rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {max_rss} KiB during the outage"
    );
    wait_for("acking again", Duration::from_secs(30), || async {
        srv.metrics()
            .await
            .is_some_and(|m| m["waypoint_messages_acked_total"] > acked_down)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = tally(&pool, &mut load, Duration::from_secs(60)).await;
    assert_clean(&format!("PostgreSQL stopped {down:?}"), &t);
    // Everything is stored; the server's own acks to the broker for the
    // backlog follow the commits (and it has acked every message once).
    wait_for(
        "the server acked the backlog",
        Duration::from_secs(30),
        || async {
            srv.metrics()
                .await
                .is_some_and(|m| m["waypoint_messages_acked_total"] >= t.sent as f64)
        },
    )
    .await;
    let m = srv.metrics().await.expect("metrics");
    println!(
        "recovered: store retries {}, messages acked {}",
        m["waypoint_store_retries_total"], m["waypoint_messages_acked_total"]
    );
    pool.close().await;
}

/// One person (officer pc-1's) excluded from `zones` small zones in a row,
/// 0.01° of longitude (~700 m) apart, wearing tag-z.
fn many_zones(zones: usize) -> Scenario {
    let z: Vec<_> = (0..zones)
        .map(|k| {
            json!({"zone_ref": format!("z{k}"), "name": format!("Zone {k}"), "geojson": {
                "type": "Feature", "properties": {"radius_m": 100},
                "geometry": {"type": "Point",
                             "coordinates": [walk::LON + 0.01 * k as f64, walk::LAT]}}})
        })
        .collect();
    let rules: Vec<_> = (0..zones)
        .map(|k| json!({"supervisee": "C-Z", "role": "exclusion", "zone": format!("z{k}")}))
        .collect();
    Scenario::parse(
        &json!({
            "supervisees": [{"case_ref": "C-Z", "time_zone": "Europe/London", "officer": "pc-1"}],
            "devices": [{"device_id": "tag-z", "report_interval_s": 10}],
            "zones": z,
            "rules": rules,
            "assignments": [{"device": "tag-z", "supervisee": "C-Z", "from": "2020-01-01T00:00:00Z"}]
        })
        .to_string(),
    )
    .unwrap()
}

/// Reads SSE event ids from `body` until `until` is seen (or `limit`).
async fn read_ids<S>(
    body: &mut S,
    buf: &mut String,
    ids: &mut Vec<i64>,
    until: i64,
    limit: Duration,
) where
    S: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    use futures_util::StreamExt;
    let read = async {
        while ids.last().is_none_or(|l| *l < until) {
            let Some(chunk) = body.next().await else {
                panic!("stream ended after {} events", ids.len())
            };
            buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if let Some(id) = block.lines().find_map(|l| l.strip_prefix("id:")) {
                    ids.push(id.trim().parse().unwrap());
                }
            }
        }
    };
    tokio::time::timeout(limit, read).await.unwrap_or_else(|_| {
        panic!(
            "timed out at {} events, last {:?}, waiting for {until}",
            ids.len(),
            ids.last()
        )
    });
}

/// Consumers that are slow or gone hold nothing up and lose nothing that
/// matters: while a device raises and ends hundreds of alerts (thousands of
/// log entries, more than the live channel's capacity plus the socket
/// buffers), one SSE client stops reading and an MQTT subscriber stops
/// polling and another leaves; a second SSE client and a second MQTT
/// subscriber still get every entry in order, the MQTT publisher's cursor
/// reaches the head of the log, the stalled SSE client gets every entry
/// once it reads again (from the database: its live channel lagged), and
/// the log holds one `raised` per alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_gone_consumers_hold_up_nothing() {
    let _one = serial().await;
    let zones = env_u64("ZONES", 1000) as usize;
    let db = TestDb::new().await;
    db.store()
        .apply_scenario(&many_zones(zones), "test")
        .await
        .unwrap();
    let opts = ServerOpts::new(&db);
    let srv = start_server(&opts).await;
    let officer =
        common::api::token(&db.pool, waypoint::api::auth::Role::Officer, Some("pc-1")).await;
    let http = reqwest::Client::new();
    let stream = || {
        http.get(format!("http://{}/api/v1/alerts/stream", srv.http_addr))
            .bearer_auth(&officer)
            .send()
    };
    let slow = stream().await.unwrap();
    let fast = stream().await.unwrap();
    assert_eq!(slow.status(), 200);
    assert_eq!(fast.status(), 200);

    // MQTT consumers of the alert topic on the shared broker: one reading,
    // one connected but never polled (its socket fills), one gone (its
    // persistent session left behind).
    let filter = format!("{}em/v1/alerts/#", opts.prefix);
    let (mqtt_fast, mut mqtt_rx) = {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let (client, mut el) =
            AsyncClient::new(MqttOptions::new(unique("fast-"), BROKER.0, BROKER.1), 100);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<i64>();
        let (subacked, subacked_rx) = tokio::sync::oneshot::channel();
        let mut subacked = Some(subacked);
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(s) = subacked.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                        let _ = tx.send(v["event_id"].as_i64().expect("event_id"));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        client.subscribe(&filter, QoS::AtLeastOnce).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), subacked_rx)
            .await
            .unwrap()
            .unwrap();
        (client, rx)
    };
    let _mqtt_stalled = {
        use rumqttc::{AsyncClient, MqttOptions, QoS};
        let (client, mut el) = AsyncClient::new(
            MqttOptions::new(unique("stalled-"), BROKER.0, BROKER.1),
            100,
        );
        client.subscribe(&filter, QoS::AtLeastOnce).await.unwrap();
        // Poll only until subscribed, then never again.
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = el.poll().await.unwrap() {
                break;
            }
        }
        (client, el)
    };
    {
        use rumqttc::{AsyncClient, MqttOptions, QoS};
        let mut o = MqttOptions::new(unique("gone-"), BROKER.0, BROKER.1);
        o.set_clean_session(false);
        let (client, mut el) = AsyncClient::new(o, 100);
        client.subscribe(&filter, QoS::AtLeastOnce).await.unwrap();
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = el.poll().await.unwrap() {
                break;
            }
        }
        client.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), el.poll()).await;
    }

    // The walk: into zone k twice (confirmed: raised), then halfway to the
    // next (outside every zone: the condition ends once confirmed, so every
    // zone but the last logs `condition_ended`), 2 s apart.
    let publ = Publisher::connect().await;
    let topic = native_topic(&opts.prefix, "tag-z");
    let t0 = Utc::now() - TimeDelta::seconds(3 * 2 * zones as i64 + 60);
    let fixes: Vec<serde_json::Value> = (0..zones)
        .flat_map(|k| [0.0, 0.0, 0.005].map(|dlon| (k, dlon)))
        .enumerate()
        .map(|(i, (k, dlon))| {
            json!({"ts": (t0 + TimeDelta::seconds(2 * i as i64)).timestamp_millis(),
                   "lat": walk::LAT, "lon": walk::LON + 0.01 * k as f64 + dlon, "acc": 8})
        })
        .collect();
    let started = Instant::now();
    for (seq, chunk) in fixes.chunks(300).enumerate() {
        let m = json!({"v": 1, "device": "tag-z", "boot": 1, "seq": seq + 1, "fixes": chunk});
        publ.publish(&topic, m.to_string()).await;
    }
    let messages = fixes.len().div_ceil(300) as u64;
    wait_for("the walk stored", Duration::from_secs(60), || async {
        srv.metrics.messages_acked.get() >= messages
    })
    .await;
    let head: i64 = sqlx::query_scalar("SELECT max(event_id) FROM alert_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let logged: i64 = db.count("SELECT count(*) FROM alert_events").await;
    let raised = db.count("SELECT count(*) FROM alerts").await;
    assert_eq!(raised, zones as i64, "one alert per zone entered");

    let mut fast_body = Box::pin(fast.bytes_stream());
    let (mut buf, mut fast_ids) = (String::new(), vec![]);
    read_ids(
        &mut fast_body,
        &mut buf,
        &mut fast_ids,
        head,
        Duration::from_secs(60),
    )
    .await;
    let fast_took = started.elapsed();
    let mut mqtt_ids = vec![];
    tokio::time::timeout(Duration::from_secs(60), async {
        while mqtt_ids.last().is_none_or(|l| *l < head) {
            mqtt_ids.push(mqtt_rx.recv().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("MQTT subscriber got {} of {logged}", mqtt_ids.len()));
    wait_for(
        "the MQTT publisher's cursor at the head",
        Duration::from_secs(30),
        || async {
            db.count("SELECT COALESCE(max(last_event_id), 0) FROM outbox_cursors")
                .await
                >= head
        },
    )
    .await;
    // The stalled client reads again.
    let mut slow_body = Box::pin(slow.bytes_stream());
    let (mut buf, mut slow_ids) = (String::new(), vec![]);
    read_ids(
        &mut slow_body,
        &mut buf,
        &mut slow_ids,
        head,
        Duration::from_secs(60),
    )
    .await;

    let all: Vec<i64> = sqlx::query_scalar("SELECT event_id FROM alert_events ORDER BY event_id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    // At least once: a page the broker did not confirm in time is sent
    // again; integrations drop repeats by event_id.
    let mqtt_received = mqtt_ids.len();
    mqtt_ids.sort_unstable();
    mqtt_ids.dedup();
    println!(
        "slow consumers: {zones} zones, {raised} alerts, {logged} log entries (live channel {}); \
         fast SSE client got {} in {fast_took:.1?}, stalled SSE client {} after resuming, \
         MQTT subscriber {} ({} repeats)",
        waypoint::alerts::outbox::LIVE_CAPACITY,
        fast_ids.len(),
        slow_ids.len(),
        mqtt_ids.len(),
        mqtt_received - mqtt_ids.len()
    );
    assert!(
        logged as usize > waypoint::alerts::outbox::LIVE_CAPACITY,
        "enough to lag"
    );
    assert_eq!(
        fast_ids, all,
        "the fast SSE client got every entry, in order"
    );
    assert_eq!(
        slow_ids, all,
        "the stalled SSE client got every entry once it read again"
    );
    assert_eq!(mqtt_ids, all, "the MQTT subscriber got every entry");
    assert_eq!(duplicate_alerts(&db.pool).await, 0);
    // Open streams would hold the server's graceful shutdown.
    drop((fast_body, slow_body, mqtt_fast));
    srv.stop().await;
}
