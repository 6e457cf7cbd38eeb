//! Commit latency and throughput of 1 000-fix batches on both storage
//! backends, in one process: `PgStore` on a scratch PostgreSQL database and
//! `SqliteStore` on a file in a temporary directory (WAL, synchronous=FULL,
//! its one writer connection).
//!
//! ```sh
//! cargo bench --bench storage                      # 3 warm-up + 100 measured rounds
//! cargo bench --bench storage -- --rounds 300      # more rounds
//! ```
//!
//! Each round commits one batch to each backend, alternating which goes
//! first, so that the noise of a shared machine falls on both alike. Two
//! workloads, both 1 000 fixes per batch from 100 enrolled devices, each
//! message with a status block (the latest-status upsert runs too):
//!
//! - `10 fixes/msg`: 100 messages of 10 fixes (a device that buffers);
//! - `1 fix/msg`: 1 000 messages of one fix (the message ledger doubles the
//!   rows).
//!
//! What is timed is `Store::commit` alone (one transaction: message ledger,
//! fixes, latest status), with a hook that evaluates no rules
//! ([`NoRules`]); the batches are built before the clock starts. PostgreSQL
//! is reached through `WAYPOINT_BENCH_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); its scratch database is
//! dropped at the end.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

use common::ScratchDb;
use waypoint::domain::{DeviceId, Fix, FixSource, MessageKey, Status, Telemetry};
use waypoint::store::postgres::PgStore;
use waypoint::store::sqlite::SqliteStore;
use waypoint::store::{AcceptedMessage, NoRules, Prepared, Store};

/// Devices the batches come from.
const DEVICES: usize = 100;
/// Fixes per batch (the pipeline's default `--batch-max-fixes`).
const FIXES_PER_BATCH: usize = 1_000;
/// Unmeasured rounds per workload first (caches, prepared statements).
const WARMUP: usize = 3;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// Message number `n` of `device_key` with `fixes` fixes; fix times are
/// distinct and increasing per device, as a real device's are.
fn message(device_key: i64, n: i64, fixes: usize) -> Prepared {
    let base = t0() + TimeDelta::seconds(n * 60);
    let fixes = (0..fixes)
        .map(|i| Fix {
            ts: base + TimeDelta::seconds(i as i64 * 6),
            lat: 51.5 + (device_key as f64) * 1e-3 + i as f64 * 1e-5,
            lon: -0.12 + n as f64 * 1e-6,
            acc_m: 8.5,
            alt_m: Some(12.0),
            speed_mps: Some(1.4),
            heading_deg: Some(90.0),
            src: FixSource::Gnss,
        })
        .collect();
    let id = format!("bench-{device_key}");
    Prepared::Accepted(Box::new(AcceptedMessage {
        device_key,
        topic: format!("em/v1/devices/{id}/telemetry"),
        received_at: base + TimeDelta::seconds(60),
        digest: [(n % 251) as u8; 16],
        telemetry: Telemetry {
            device: DeviceId::parse(&id).unwrap(),
            key: MessageKey { boot: 1, seq: n },
            fixes,
            status: Some(Status {
                battery_pct: Some(70),
                ..Default::default()
            }),
            events: vec![],
        },
        item_rejections: vec![],
        payload: Bytes::from_static(b"{}"),
        store_fixes: true,
    }))
}

/// One batch of 1 000 fixes in messages of `per_msg` fixes; `round` makes
/// every message key new.
fn batch(keys: &[i64], round: usize, per_msg: usize) -> Vec<Prepared> {
    let messages = FIXES_PER_BATCH / per_msg;
    let per_device = messages / keys.len();
    (0..messages)
        .map(|i| {
            let n = (round * per_device + i / keys.len() + 1) as i64;
            message(keys[i % keys.len()], n, per_msg)
        })
        .collect()
}

async fn enroll<S: Store>(s: &S) -> Vec<i64> {
    let mut keys = Vec::with_capacity(DEVICES);
    for d in 0..DEVICES {
        let id = DeviceId::parse(&format!("bench-{d}")).unwrap();
        keys.push(s.add_device(&id, None, t0()).await.expect("enroll").key);
    }
    keys
}

/// Commit times of one backend in one workload.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn q(&self, q: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }

    /// Fixes per second over the measured commits (total fixes ÷ total time).
    fn fixes_per_s(&self) -> f64 {
        let total: Duration = self.0.iter().sum();
        (self.0.len() * FIXES_PER_BATCH) as f64 / total.as_secs_f64()
    }
}

async fn timed<S: Store>(s: &S, b: &[Prepared]) -> Duration {
    let started = Instant::now();
    let r = s.commit(b, &NoRules).await.expect("commit");
    let took = started.elapsed();
    assert_eq!(r.fixes_stored, FIXES_PER_BATCH as u64, "every fix is new");
    took
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn file_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn rounds_from_args() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("--rounds takes a number"))
        .unwrap_or(100)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too
    // (without it): keep that run to one round so tests stay fast.
    let args: Vec<String> = std::env::args().collect();
    let rounds = if args.iter().any(|a| a == "--bench") {
        rounds_from_args()
    } else {
        1
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(rounds));
}

async fn run(rounds: usize) {
    let scratch = ScratchDb::create("storage", 0, "").await;
    // One connection: a batch is one transaction on one connection, as in a
    // pipeline shard.
    let pg = PgStore::connect(&scratch.url, 1).await.expect("PostgreSQL");
    let dir = tempfile::tempdir().expect("temporary directory");
    let lite = SqliteStore::open(&dir.path().join("data"))
        .await
        .expect("open SQLite");
    lite.migrate().await.expect("SQLite migrations");
    let pg_keys = enroll(&pg).await;
    let lite_keys = enroll(&lite).await;

    println!(
        "storage: commit of {FIXES_PER_BATCH}-fix batches from {DEVICES} devices, \
         {rounds} measured rounds per workload after {WARMUP} warm-up, backends alternating"
    );
    println!(
        "| workload | backend | p50 ms | p90 ms | p99 ms | max ms | fixes/s | SQLite ÷ PostgreSQL fixes/s | SQLite ÷ PostgreSQL p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut round_base = 0;
    for per_msg in [10, 1] {
        let (mut p, mut l) = (Samples::default(), Samples::default());
        for r in 0..WARMUP + rounds {
            let pb = batch(&pg_keys, round_base + r, per_msg);
            let lb = batch(&lite_keys, round_base + r, per_msg);
            let (pt, lt) = if r % 2 == 0 {
                let pt = timed(&pg, &pb).await;
                (pt, timed(&lite, &lb).await)
            } else {
                let lt = timed(&lite, &lb).await;
                (timed(&pg, &pb).await, lt)
            };
            if r >= WARMUP {
                p.0.push(pt);
                l.0.push(lt);
            }
        }
        round_base += WARMUP + rounds;
        let workload = format!("{per_msg} fix{}/msg", if per_msg == 1 { "" } else { "es" });
        let ratio_rate = l.fixes_per_s() / p.fixes_per_s();
        let ratio_p50 = l.q(0.5).as_secs_f64() / p.q(0.5).as_secs_f64();
        for (name, s) in [("PostgreSQL", &p), ("SQLite", &l)] {
            println!(
                "| {workload} | {name} | {} | {} | {} | {} | {:.0} | {} | {} |",
                ms(s.q(0.5)),
                ms(s.q(0.9)),
                ms(s.q(0.99)),
                ms(s.q(1.0)),
                s.fixes_per_s(),
                if name == "SQLite" {
                    format!("{ratio_rate:.2}")
                } else {
                    String::new()
                },
                if name == "SQLite" {
                    format!("{ratio_p50:.2}")
                } else {
                    String::new()
                },
            );
        }
    }
    let fixes = (2 * (WARMUP + rounds) * FIXES_PER_BATCH) as u64;
    println!(
        "SQLite files after {fixes} fixes: {} bytes ({:.0} bytes/fix, WAL included)",
        file_bytes(&dir.path().join("data")),
        file_bytes(&dir.path().join("data")) as f64 / fixes as f64
    );
    pg.pool().close().await;
    scratch.drop_database().await;
}
