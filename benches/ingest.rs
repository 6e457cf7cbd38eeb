//! Ingest throughput: the pipeline (decode → shard → batch → durable commit
//! to local PostgreSQL, no broker) against a baseline that inserts the same
//! fix rows with the same duplicate-safe UNNEST statement straight from
//! memory, in the same process, interleaved so machine noise hits both.
//!
//! Run: `cargo bench --bench ingest` (env: WAYPOINT_BENCH_DATABASE_URL,
//! default postgres://postgres@127.0.0.1:5432/postgres for the admin
//! connection; a scratch database is created and dropped).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sqlx::{Executor, PgPool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod common;

use common::ScratchDb;
use waypoint::alerts::outbox::Outbox;
use waypoint::clock::{Clock, SystemClock};
use waypoint::decode::{self, binary, WireFix, WireMessage};
use waypoint::directory::Directory;
use waypoint::domain::{DeviceId, MessageKey};
use waypoint::ingest::acker::AckQueue;
use waypoint::ingest::topic::native_topic;
use waypoint::ingest::Incoming;
use waypoint::metrics::Metrics;
use waypoint::rules::engine::RulesConfig;
use waypoint::rules::snapshot::Snapshot;
use waypoint::rules::watchdog::Liveness;
use waypoint::rules::Rules;
use waypoint::scenario::Scenario;
use waypoint::scenario::{AssignmentSpec, RuleSpec, SuperviseeSpec, ZoneSpec};
use waypoint::store::postgres::{FixColumns, PgStore};
use waypoint::store::{AcceptedMessage, NoRules, Prepared, Store};
use waypoint::track::{
    prepare, run_shard, PrepareConfig, ShardConfig, ShardContext, ShardRouter, ShardRules,
};

const DEVICES: usize = 1_000;
const TOTAL_FIXES: usize = 300_000;
const BATCH_FIXES: usize = 1_000;
const SHARDS: usize = 4;

struct Workload {
    label: &'static str,
    fixes_per_msg: usize,
    binary: bool,
}

fn payloads(w: &Workload) -> Vec<(String, Bytes)> {
    let msgs = TOTAL_FIXES / w.fixes_per_msg;
    let t0 = SystemClock.now().timestamp_millis() - 3_600_000;
    (0..msgs)
        .map(|i| {
            let dev = format!("bench-{}", i % DEVICES);
            let seq = (i / DEVICES) as i64;
            let m = WireMessage {
                device: Some(dev.clone()),
                key: MessageKey { boot: 1, seq },
                fixes: (0..w.fixes_per_msg)
                    .map(|k| WireFix {
                        ts_ms: t0 + seq * 10_000 + k as i64 * 100,
                        lat: 51.5 + (i % 997) as f64 * 1e-4,
                        lon: -0.12 + k as f64 * 1e-5,
                        acc: 6.5,
                        alt: None,
                        speed: Some(1.2),
                        heading: None,
                        src: Some("gnss".into()),
                    })
                    .collect(),
                status: Some(decode::WireStatus {
                    battery: Some(80),
                    charging: Some(false),
                    strap: Some("closed".into()),
                    beacon: Some(false),
                    rssi: None,
                    fw: None,
                }),
                events: vec![],
            };
            let body = if w.binary {
                binary::encode(&m)
            } else {
                json_of(&m)
            };
            (native_topic("", &dev), Bytes::from(body))
        })
        .collect()
}

fn json_of(m: &WireMessage) -> Vec<u8> {
    let fixes: Vec<String> = m
        .fixes
        .iter()
        .map(|f| {
            format!(
                r#"{{"ts":{},"lat":{:.7},"lon":{:.7},"acc":{},"spd":1.2,"src":"gnss"}}"#,
                f.ts_ms, f.lat, f.lon, f.acc
            )
        })
        .collect();
    format!(
        r#"{{"v":1,"device":"{}","boot":{},"seq":{},"fixes":[{}],"status":{{"battery":80,"charging":false,"strap":"closed","beacon":false}}}}"#,
        m.device.as_deref().unwrap_or_default(),
        m.key.boot,
        m.key.seq,
        fixes.join(",")
    )
    .into_bytes()
}

async fn reset(pool: &PgPool) {
    pool.execute(
        "TRUNCATE fixes, messages, device_status, device_events, rejected_messages, \
         device_state, device_timeline, alert_evidence, alert_events, alert_actions, alerts",
    )
    .await
    .expect("truncate");
}

struct PipelineRun {
    secs: f64,
    fixes: u64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn run_pipeline(
    store: &PgStore,
    input: &[(String, Bytes)],
    rules: &Arc<Rules>,
) -> PipelineRun {
    let metrics = Arc::new(Metrics::new());
    let directory = Directory::load(store.clone()).await.expect("directory");
    let (done_tx, mut done_rx) = mpsc::channel(SHARDS * 4);
    let ctx = Arc::new(ShardContext {
        store: store.clone(),
        directory,
        metrics: metrics.clone(),
        completions: done_tx,
        abandon: CancellationToken::new(),
        liveness: Arc::new(Liveness::default()),
        outbox: Outbox::new(),
    });
    let cfg = ShardConfig {
        max_batch_fixes: BATCH_FIXES,
        max_delay: Duration::from_millis(10),
        prepare: PrepareConfig {
            topic_prefix: String::new(),
            max_payload: 256 * 1024,
        },
    };
    let mut senders = vec![];
    let mut shards = vec![];
    for i in 0..SHARDS {
        let (tx, rx) = mpsc::channel(2_000);
        senders.push(tx);
        shards.push(tokio::spawn(run_shard(
            format!("shard-{i}"),
            rx,
            ctx.clone(),
            cfg.clone(),
            ShardRules::new(rules.clone(), Arc::new(SystemClock), metrics.clone()),
        )));
    }
    drop(ctx);
    let router = ShardRouter::new(senders, String::new());
    let acks = Arc::new(Mutex::new(AckQueue::default()));
    acks.lock().unwrap().new_epoch();
    let total = input.len();
    let acker = {
        let acks = acks.clone();
        tokio::spawn(async move {
            let mut acked = 0usize;
            while let Some(t) = done_rx.recv().await {
                acked += acks.lock().unwrap().commit(&t).len();
            }
            acked
        })
    };
    let started = Instant::now();
    for (topic, payload) in input {
        let ticket = acks.lock().unwrap().register(
            1,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            tokio::time::Instant::now(),
        );
        let inc = Incoming {
            topic: topic.clone(),
            payload: payload.clone(),
            received_at: SystemClock.now(),
            ticket: Some(ticket),
        };
        router
            .sender_for(topic)
            .send(inc)
            .await
            .expect("shard alive");
    }
    drop(router);
    for s in shards {
        s.await.unwrap();
    }
    let acked = acker.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(acked, total, "every message acked");
    let h = metrics.commit_latency_us.lock().unwrap();
    PipelineRun {
        secs,
        fixes: metrics.fixes_stored.get(),
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

/// The same fix rows, decoded up front, inserted with the pipeline's own
/// statement on `conns` connections in `BATCH_FIXES`-row batches.
async fn run_baseline(
    pool: &PgPool,
    store: &PgStore,
    input: &[(String, Bytes)],
    conns: usize,
) -> (f64, u64) {
    let directory = Directory::load(store.clone()).await.expect("directory");
    let now = SystemClock.now();
    let mut batches: Vec<FixColumns> = (0..conns).map(|_| FixColumns::default()).collect();
    let mut all: Vec<Vec<FixColumns>> = (0..conns).map(|_| vec![]).collect();
    for (i, (_, payload)) in input.iter().enumerate() {
        let wire = decode::decode_native(payload).unwrap();
        let id = DeviceId::parse(wire.device.as_deref().unwrap()).unwrap();
        let dev = directory.by_id(&id).await.unwrap().unwrap();
        let v = decode::validate(wire, id, now);
        let m = AcceptedMessage {
            device_key: dev.key,
            topic: String::new(),
            received_at: now,
            digest: [0; 16],
            telemetry: v.telemetry,
            item_rejections: vec![],
            payload: Bytes::new(),
            store_fixes: true,
        };
        let c = i % conns;
        batches[c].push_message(&m);
        if batches[c].len() >= BATCH_FIXES {
            all[c].push(std::mem::take(&mut batches[c]));
        }
    }
    for (c, b) in batches.into_iter().enumerate() {
        if !b.is_empty() {
            all[c].push(b);
        }
    }
    let started = Instant::now();
    let tasks: Vec<_> = all
        .into_iter()
        .map(|batches| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.acquire().await.unwrap();
                let mut n = 0;
                for b in batches {
                    n += b.insert(&mut conn).await.unwrap();
                }
                n
            })
        })
        .collect();
    let mut rows = 0;
    for t in tasks {
        rows += t.await.unwrap();
    }
    (started.elapsed().as_secs_f64(), rows)
}

/// The pipeline's own commit (ledger + fixes + status in one transaction) on
/// batches prepared up front, `conns` tasks in parallel: the same rows the
/// pipeline writes, without the channels, batching timers and acks.
async fn run_commit_only(store: &PgStore, input: &[(String, Bytes)], conns: usize) -> (f64, u64) {
    let directory = Directory::load(store.clone()).await.expect("directory");
    let now = SystemClock.now();
    let cfg = PrepareConfig {
        topic_prefix: String::new(),
        max_payload: 256 * 1024,
    };
    let router = ShardRouter::new(
        (0..conns).map(|_| mpsc::channel(1).0).collect(),
        String::new(),
    );
    let mut per_task: Vec<Vec<Vec<Prepared>>> = (0..conns).map(|_| vec![vec![]]).collect();
    let mut fixes_in: Vec<usize> = vec![0; conns];
    for (topic, payload) in input {
        let inc = Incoming {
            topic: topic.clone(),
            payload: payload.clone(),
            received_at: now,
            ticket: None,
        };
        let p = prepare(&inc, &directory, &cfg).await.unwrap();
        let n = match &p {
            Prepared::Accepted(m) => m.telemetry.fixes.len(),
            Prepared::Rejected(_) => 0,
        };
        let c = router.shard_of(topic);
        per_task[c].last_mut().unwrap().push(p);
        fixes_in[c] += n;
        if fixes_in[c] >= BATCH_FIXES {
            fixes_in[c] = 0;
            per_task[c].push(vec![]);
        }
    }
    let started = Instant::now();
    let tasks: Vec<_> = per_task
        .into_iter()
        .map(|batches| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut n = 0;
                for b in batches.iter().filter(|b| !b.is_empty()) {
                    n += store.commit(b, &NoRules).await.unwrap().fixes_stored;
                }
                n
            })
        })
        .collect();
    let mut rows = 0;
    for t in tasks {
        rows += t.await.unwrap();
    }
    (started.elapsed().as_secs_f64(), rows)
}

/// Every bench device worn by its own supervisee with the realistic rule
/// set: a shared county inclusion zone, a home curfew, two personal
/// exclusion circles (for one device in `alert_every()` placed on its path,
/// so alerts are raised and kept updated), and a shared list of `SCHOOLS`
/// exclusion zones.
const SCHOOLS: usize = 10_000;

fn rules_scenario() -> Scenario {
    let circle = |lat: f64, lon: f64, r: f64| {
        serde_json::json!({"type": "Feature", "properties": {"radius_m": r},
            "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    };
    let mut s = Scenario::default();
    s.zones.push(ZoneSpec {
        zone_ref: "county".into(),
        name: "County".into(),
        list: None,
        geojson: serde_json::json!({"type": "Polygon", "coordinates": [[
            [-0.6, 51.2], [0.4, 51.2], [0.4, 51.8], [-0.6, 51.8], [-0.6, 51.2]]]}),
    });
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    for i in 0..SCHOOLS {
        let (lat, mut lon) = (51.3 + next() * 0.4, -0.5 + next() * 0.8);
        // Keep schools off the devices' path (lon ≈ -0.12): the list is
        // searched for every fix, but only the chosen devices violate.
        if (lon + 0.12).abs() < 0.01 {
            lon += 0.03;
        }
        s.zones.push(ZoneSpec {
            zone_ref: format!("school-{i}"),
            name: format!("School {i}"),
            list: Some("schools".into()),
            geojson: circle(lat, lon, 50.0 + next() * 100.0),
        });
    }
    for d in 0..DEVICES {
        let case = format!("case-{d}");
        s.supervisees.push(SuperviseeSpec {
            case_ref: case.clone(),
            name: None,
            time_zone: "Europe/London".into(),
            officer: None,
        });
        let path_lat = 51.5 + (d % 997) as f64 * 1e-4;
        let on_path = d % alert_every() == 0;
        for (j, (lat, lon)) in [
            (if on_path { path_lat } else { 51.25 }, -0.1199),
            (51.75, 0.3),
        ]
        .into_iter()
        .enumerate()
        {
            s.zones.push(ZoneSpec {
                zone_ref: format!("excl-{d}-{j}"),
                name: format!("Exclusion {j} of {case}"),
                list: None,
                geojson: circle(lat, lon, 40.0),
            });
            s.rules.push(rule(
                &case,
                "exclusion",
                Some(format!("excl-{d}-{j}")),
                None,
            ));
        }
        s.zones.push(ZoneSpec {
            zone_ref: format!("home-{d}"),
            name: "Home".into(),
            list: None,
            // Home contains the devices' path, so the curfew is evaluated
            // whatever the hour of the run and never raises: results do not
            // depend on the time of day.
            geojson: circle(51.55, -0.12, 10_000.0),
        });
        let mut curfew = rule(&case, "home", Some(format!("home-{d}")), None);
        curfew.schedule = Some(serde_json::json!({"windows": [{
            "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "start": "21:00", "end": "07:00"}]}));
        s.rules.push(curfew);
        s.rules
            .push(rule(&case, "inclusion", Some("county".into()), None));
        s.rules
            .push(rule(&case, "exclusion", None, Some("schools".into())));
        s.assignments.push(AssignmentSpec {
            device: format!("bench-{d}"),
            supervisee: case,
            from: "2020-01-01T00:00:00Z".parse().unwrap(),
            to: None,
        });
    }
    s
}

/// One device in this many sits in a personal exclusion zone throughout
/// (an alert raised and kept updated): 2 % by default, a heavy caseload;
/// `WAYPOINT_BENCH_ALERT_EVERY` overrides.
fn alert_every() -> usize {
    std::env::var("WAYPOINT_BENCH_ALERT_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

fn rule(case: &str, role: &str, zone: Option<String>, list: Option<String>) -> RuleSpec {
    RuleSpec {
        supervisee: case.into(),
        role: role.into(),
        zone,
        list,
        schedule: None,
        confirm_fixes: None,
        grace_s: None,
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let db = ScratchDb::create("bench", DEVICES, "bench-").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(SHARDS as u32 + 4)
        .connect(&db.url)
        .await
        .unwrap();
    let store = PgStore::from_pool(pool.clone());
    let scenario = rules_scenario();
    scenario.validate().expect("bench scenario is valid");
    store
        .apply_scenario(&scenario, "bench")
        .await
        .expect("load bench scenario");
    let with_rules = Rules::load(&store, RulesConfig::default())
        .await
        .expect("rules");
    let no_rules = Rules::fixed(Snapshot::default(), RulesConfig::default());

    println!(
        "ingest benchmark: {TOTAL_FIXES} fixes, {DEVICES} devices, {SHARDS} shards, batches of {BATCH_FIXES} fixes\n"
    );
    println!(
        "rules: {DEVICES} supervisees, each with county inclusion, home curfew, 2 exclusion \
         circles and a shared list of {SCHOOLS} school zones\n"
    );
    println!(
        "{:<22} {:>5} {:>7} {:>11} {:>11} {:>11} {:>11} {:>9} {:>8} {:>8} {:>8}",
        "workload",
        "round",
        "alerts",
        "pipeline/s",
        "no-rules/s",
        "fixes-raw/s",
        "same-rows/s",
        "vs fixes",
        "vs same",
        "p50 ms",
        "p99 ms"
    );
    let workloads = [
        Workload {
            label: "json, 10 fixes/msg",
            fixes_per_msg: 10,
            binary: false,
        },
        Workload {
            label: "binary, 10 fixes/msg",
            fixes_per_msg: 10,
            binary: true,
        },
        Workload {
            label: "json, 1 fix/msg",
            fixes_per_msg: 1,
            binary: false,
        },
    ];
    for w in &workloads {
        let input = payloads(w);
        for round in 1..=2 {
            reset(&pool).await;
            let (bf_secs, bf_rows) = run_baseline(&pool, &store, &input, SHARDS).await;
            reset(&pool).await;
            let (bc_secs, bc_rows) = run_commit_only(&store, &input, SHARDS).await;
            reset(&pool).await;
            let p = run_pipeline(&store, &input, &with_rules).await;
            let raised: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts")
                .fetch_one(&pool)
                .await
                .unwrap();
            assert!(
                raised > 0 || alert_every() > DEVICES,
                "the rules workload raises alerts"
            );
            reset(&pool).await;
            let nr = run_pipeline(&store, &input, &no_rules).await;
            assert_eq!(nr.fixes as usize, TOTAL_FIXES);
            assert_eq!(p.fixes as usize, TOTAL_FIXES);
            assert_eq!(bf_rows as usize, TOTAL_FIXES);
            assert_eq!(bc_rows as usize, TOTAL_FIXES);
            let pr = p.fixes as f64 / p.secs;
            let bf = bf_rows as f64 / bf_secs;
            let bc = bc_rows as f64 / bc_secs;
            println!(
                "{:<22} {:>5} {:>7} {:>11.0} {:>11.0} {:>11.0} {:>11.0} {:>9.2} {:>8.2} {:>8.2} {:>8.2}",
                w.label,
                round,
                raised,
                pr,
                nr.fixes as f64 / nr.secs,
                bf,
                bc,
                pr / bf,
                pr / bc,
                p.p50_ms,
                p.p99_ms
            );
        }
    }
    println!(
        "\npipeline: with rules evaluation, device state and alerts in the same transaction\n\
         no-rules: the same pipeline with an empty rules snapshot (device state still written)\n\
         fixes-raw: the fix rows alone, with the pipeline's INSERT statement, {SHARDS} connections, from memory\n\
         same-rows: the pipeline's own commit (ledger + fixes + status) on batches prepared up front\n\
         peak RSS {:.0} MiB",
        peak_rss_mib()
    );
    pool.close().await;
    db.drop_database().await;
}
