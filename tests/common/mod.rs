//! Test harness: a fresh PostgreSQL database per test, a Waypoint server on
//! the shared Mosquitto under a topic prefix of its own, a QoS 1 publisher,
//! and a TCP proxy that can cut the database away. Services that are missing
//! make the tests fail loudly, never skip.
#![allow(dead_code)]

pub mod api;
pub mod broker;
pub mod pg_cluster;
pub mod stores;
pub mod walk;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sqlx::{Connection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use clap::Parser;
use waypoint::app::Running;
use waypoint::clock::SystemClock;
use waypoint::config::{Cli, Command};
use waypoint::domain::DeviceId;
use waypoint::store::postgres::PgStore;
use waypoint::store::Store;

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const BROKER: (&str, u16) = ("127.0.0.1", 1883);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique to this process and call.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        % 1_000_000_000;
    format!("{prefix}{}_{t}_{n}", std::process::id())
}

/// A database created for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let mut admin = sqlx::PgConnection::connect(PG_ADMIN)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL must be running on 127.0.0.1:5432 (trust auth, user postgres): {e}"
                )
            });
        sweep_stale_databases(&mut admin).await;
        let name = unique("wp_test_");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let pool = PgPool::connect(&url).await.expect("connect test database");
        PgStore::from_pool(pool.clone())
            .migrate()
            .await
            .expect("migrations apply on plain PostgreSQL");
        Self { name, url, pool }
    }

    pub fn store(&self) -> PgStore {
        PgStore::from_pool(self.pool.clone())
    }

    pub async fn enroll(&self, id: &str) {
        self.store()
            .add_device(&DeviceId::parse(id).unwrap(), None, chrono::Utc::now())
            .await
            .expect("enroll");
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn rejections(&self, reason: &str) -> i64 {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rejected_messages WHERE reason = $1")
            .bind(reason)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// Drops databases left by test processes that no longer run (a panicking
/// test cannot clean up after itself); names carry the creating pid.
async fn sweep_stale_databases(admin: &mut sqlx::PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'wp\\_test\\_%'")
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for name in names {
        let pid = name
            .trim_start_matches("wp_test_")
            .split('_')
            .next()
            .unwrap_or("");
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut *admin)
                .await;
        }
    }
}

pub fn require_broker() {
    std::net::TcpStream::connect_timeout(
        &format!("{}:{}", BROKER.0, BROKER.1).parse().unwrap(),
        Duration::from_secs(2),
    )
    .unwrap_or_else(|e| panic!("Mosquitto must be running on 127.0.0.1:1883: {e}"));
}

/// Server settings a test can adjust.
pub struct ServerOpts {
    /// The server's clock (system clock by default).
    pub clock: waypoint::clock::SharedClock,
    pub broker: String,
    pub database_url: String,
    pub prefix: String,
    pub client_id: String,
    pub extra: Vec<String>,
}

impl ServerOpts {
    pub fn new(db: &TestDb) -> Self {
        Self {
            clock: Arc::new(SystemClock),
            broker: format!("mqtt://{}:{}", BROKER.0, BROKER.1),
            database_url: db.url.clone(),
            prefix: format!("{}/", unique("t")),
            client_id: unique("wp-srv-"),
            extra: vec![],
        }
    }
}

/// Starts a server through the same flag parsing `waypoint serve` uses.
pub async fn start_server(o: &ServerOpts) -> Running {
    require_broker();
    let mut argv: Vec<String> = [
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
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend([
        "--mqtt-url".into(),
        o.broker.clone(),
        "--database-url".into(),
        o.database_url.clone(),
        "--topic-prefix".into(),
        o.prefix.clone(),
        "--mqtt-client-id".into(),
        o.client_id.clone(),
    ]);
    argv.extend(o.extra.iter().cloned());
    let Command::Serve(args) = Cli::try_parse_from(argv).expect("flags").command else {
        unreachable!()
    };
    let cfg = args.to_config().expect("config");
    let store = PgStore::connect(&o.database_url, 8).await.expect("connect");
    let running = waypoint::app::start(cfg, store, o.clock.clone())
        .await
        .expect("server starts");
    // Connected, subscribed and database reachable before tests publish
    // (a test that cuts the database does so after this).
    let addr = running.http_addr;
    wait_for(
        "server ready (/readyz)",
        Duration::from_secs(10),
        || async move { http_get(addr, "/readyz").await.0 == 200 },
    )
    .await;
    running
}

/// Polls `cond` until true or panics after `limit` with `what`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A QoS 1 publisher playing a device (or a whole fleet) on the shared broker.
pub struct Publisher {
    pub client: AsyncClient,
    pub broker_acks: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect() -> Self {
        require_broker();
        Self::connect_to(BROKER.1, None).await
    }

    /// Connects to a broker on 127.0.0.1:`port`, with credentials if given.
    pub async fn connect_to(port: u16, credentials: Option<(&str, &str)>) -> Self {
        let mut o = MqttOptions::new(unique("pub-"), BROKER.0, port);
        if let Some((u, p)) = credentials {
            o.set_credentials(u, p);
        }
        o.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        o.set_inflight(500);
        let (client, mut el) = AsyncClient::new(o, 1000);
        let broker_acks = Arc::new(AtomicU64::new(0));
        let acks = broker_acks.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self {
            client,
            broker_acks,
            task,
        }
    }

    /// A device with a persistent session (clean session off) under a
    /// stable client id, as firmware connects: publishes in flight when the
    /// broker goes away are sent again on reconnect until acknowledged.
    pub async fn connect_persistent(port: u16, client_id: &str, credentials: (&str, &str)) -> Self {
        let mut o = MqttOptions::new(client_id, BROKER.0, port);
        o.set_credentials(credentials.0, credentials.1);
        o.set_clean_session(false);
        o.set_inflight(100);
        let (client, mut el) = AsyncClient::new(o, 100);
        let broker_acks = Arc::new(AtomicU64::new(0));
        let acks = broker_acks.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self {
            client,
            broker_acks,
            task,
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish request");
    }

    /// Waits until the broker has acknowledged `n` publishes in total.
    pub async fn wait_broker_acks(&self, n: u64) {
        let acks = self.broker_acks.clone();
        wait_for("broker PUBACKs", Duration::from_secs(20), || {
            let acks = acks.clone();
            async move { acks.load(Ordering::SeqCst) >= n }
        })
        .await;
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A JSON v1 message with `n` fixes.
pub fn json_msg(device: &str, boot: u64, seq: u64, n: usize) -> String {
    let t = now_ms() - 60_000;
    let fixes: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"ts":{},"lat":{},"lon":{},"acc":{},"src":"gnss"}}"#,
                t + i as i64 * 1000,
                51.5 + seq as f64 * 1e-5,
                -0.12 + i as f64 * 1e-5,
                5.0 + i as f64
            )
        })
        .collect();
    format!(
        r#"{{"v":1,"device":"{device}","boot":{boot},"seq":{seq},"fixes":[{}],"status":{{"battery":{},"charging":false,"strap":"closed","beacon":true}}}}"#,
        fixes.join(","),
        (seq % 100)
    )
}

/// Raw GET over HTTP/1.1 (enough for the ops endpoints).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf[9..12].parse().unwrap();
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (code, body)
}

/// A TCP proxy in front of PostgreSQL that the test can cut and restore:
/// cutting closes every proxied connection and refuses new ones.
pub struct DbProxy {
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl DbProxy {
    pub async fn start(upstream: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, up_rx) = watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !*up_rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut rx = up_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up }
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// The same database reached through the proxy.
    pub fn url_for(&self, db: &TestDb) -> String {
        format!("postgres://postgres@{}/{}", self.addr, db.name)
    }
}
