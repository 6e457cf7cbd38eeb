//! Officer API at scale, each figure beside a baseline measured in the same
//! process on the same data (the machine is shared; ratios mean more):
//! - alert list (first page, 50 rows) per officer and per supervisor,
//!   against the same SQL sent straight to PostgreSQL;
//! - one supervisee's 30-day track (43,200 fixes) through the API, against
//!   the raw index scan;
//! - SSE: a new alert committed through the production path
//!   (`Store::commit_alerts`) and delivered to 1,000 connected officers,
//!   against an in-process subscriber of the same broadcast (no HTTP).
//!
//! Needs the seeded database (benches/api/README.md):
//! `WAYPOINT_API_BENCH_DB=postgres://postgres@127.0.0.1/waypoint_bench cargo bench --bench api`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use waypoint::alerts::outbox::{self, Outbox};
use waypoint::alerts::{AlertKey, AlertKind, AlertOp, Confidence, NewAlert, Severity};
use waypoint::api::auth::{create_token, principal_for, Role};
use waypoint::api::{ApiConfig, ApiState};
use waypoint::clock::SystemClock;
use waypoint::store::postgres::PgStore;
use waypoint::store::{AlertWrites, Store};

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn row(name: &str, h: &Histogram<u64>) {
    println!(
        "{name:<46} n={:<6} p50={:>8.2} ms p99={:>8.2} ms max={:>8.2} ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::var("WAYPOINT_API_BENCH_DB")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/waypoint_bench".into());
    let pool = PgPoolOptions::new()
        .max_connections(24)
        .connect(&url)
        .await
        .expect("the seeded benchmark database (benches/api/README.md)");
    let store = PgStore::from_pool(pool.clone());
    store.migrate().await.unwrap();
    let supervisees = scalar(&pool, "SELECT count(*) FROM supervisees").await;
    let alerts = scalar(&pool, "SELECT count(*) FROM alerts").await;
    let fixes = scalar(
        &pool,
        "SELECT reltuples::bigint FROM pg_class WHERE relname = 'fixes'",
    )
    .await;
    println!(
        "data: {supervisees} supervisees, {alerts} alerts, ~{fixes} fixes (pg_class estimate)"
    );
    assert!(
        supervisees >= 100_000 && alerts >= 1_000_000 && fixes >= 100_000_000,
        "seed the database first (benches/api/README.md)"
    );

    // The API as the server runs it, on a free port.
    let cancel = CancellationToken::new();
    let ob = Outbox::new();
    tokio::spawn(outbox::run_live(store.clone(), ob.clone(), cancel.clone()));
    tokio::spawn(waypoint::store::postgres::watch_alert_log(
        pool.clone(),
        ob.clone(),
        cancel.clone(),
    ));
    let state = ApiState::new(
        waypoint::api::pool_for_api(&pool),
        ob.clone(),
        Arc::new(SystemClock),
        ApiConfig {
            escalate_after: [None; 4],
            ..ApiConfig::default()
        },
    );
    let app = waypoint::api::router(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();

    // Officers that are not team supervisors (officer 1 of each team is).
    let officer_refs: Vec<String> = (1..=2000)
        .filter(|o| (o - 1) % 20 != 0)
        .take(1000)
        .map(|o| format!("bench-o-{o}"))
        .collect();
    let mut officer_tokens = Vec::new();
    for r in &officer_refs {
        let t = create_token(
            &waypoint::store::sql::Db::Pg(pool.clone()),
            Role::Officer,
            Some(r),
            Some("bench"),
            None,
        )
        .await
        .unwrap();
        officer_tokens.push(t.token);
    }
    let mut sup_tokens = Vec::new();
    for t in 0..100 {
        let r = format!("bench-o-{}", t * 20 + 1);
        sup_tokens.push(
            create_token(
                &waypoint::store::sql::Db::Pg(pool.clone()),
                Role::Supervisor,
                Some(&r),
                Some("bench"),
                None,
            )
            .await
            .unwrap()
            .token,
        );
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);

    // ---- Alert list ----
    for (label, tokens, query) in [
        (
            "list: officer, first page",
            &officer_tokens,
            "/alerts?limit=50",
        ),
        (
            "list: officer, open only",
            &officer_tokens,
            "/alerts?status=open&limit=50",
        ),
        (
            "list: supervisor (team of 20), first page",
            &sup_tokens,
            "/alerts?limit=50",
        ),
    ] {
        let (mut api, mut sql) = (hist(), hist());
        for i in 0..1000 {
            let tok = &tokens[rng.random_range(0..tokens.len())];
            let t = Instant::now();
            let r = http
                .get(format!("{base}{query}"))
                .bearer_auth(tok)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let body: serde_json::Value = r.json().await.unwrap();
            api.record(t.elapsed().as_micros() as u64).unwrap();
            if i == 0 {
                assert!(!body["items"].as_array().unwrap().is_empty());
            }
            // Baseline: the same query, straight to PostgreSQL.
            let who = principal_for(&waypoint::store::sql::Db::Pg(pool.clone()), tok, Utc::now())
                .await
                .unwrap()
                .unwrap();
            let status = query.contains("open").then_some("open");
            let t = Instant::now();
            let rows = sqlx::query(&waypoint::api::alerts::list_sql(&who))
                .bind(who.scope_param())
                .bind(status)
                .bind(None::<String>)
                .bind(None::<String>)
                .bind(None::<String>)
                .bind(None::<i64>)
                .bind(None::<chrono::DateTime<Utc>>)
                .bind(None::<chrono::DateTime<Utc>>)
                .bind(None::<chrono::DateTime<Utc>>)
                .bind(0i64)
                .bind(51i64)
                .fetch_all(&pool)
                .await
                .unwrap();
            sql.record(t.elapsed().as_micros() as u64).unwrap();
            assert!(!rows.is_empty() || status.is_some());
        }
        row(&format!("{label} (API)"), &api);
        row(&format!("{label} (SQL baseline)"), &sql);
    }

    // ---- 30-day track ----
    let (mut api, mut sql) = (hist(), hist());
    let mut rows_seen = 0;
    for i in 0..20 {
        let n = 1 + (i * 113) % 2315;
        let (sid, officer): (i64, String) = sqlx::query_as(
            "SELECT supervisee_id, officer_ref FROM supervisees WHERE case_ref = $1",
        )
        .bind(format!("bench-s-{n}"))
        .fetch_one(&pool)
        .await
        .unwrap();
        let tok = create_token(
            &waypoint::store::sql::Db::Pg(pool.clone()),
            Role::Officer,
            Some(&officer),
            Some("bench"),
            None,
        )
        .await
        .unwrap()
        .token;
        let t = Instant::now();
        let r = http
            .get(format!(
                "{base}/supervisees/{sid}/track?from=2026-10-01T00:00:00Z&to=2026-10-31T00:00:00Z"
            ))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        api.record(t.elapsed().as_micros() as u64).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        rows_seen = v["fixes"].as_array().map_or(0, |a| a.len());
        let t = Instant::now();
        let raw = sqlx::query(
            "SELECT f.fix_time, f.lat, f.lon, f.acc_m FROM fixes f \
             JOIN device_assignments a ON a.device_key = f.device_key AND a.supervisee_id = $1 \
             WHERE f.fix_time >= '2026-10-01' AND f.fix_time < '2026-10-31' ORDER BY f.fix_time",
        )
        .bind(sid)
        .fetch_all(&pool)
        .await
        .unwrap();
        sql.record(t.elapsed().as_micros() as u64).unwrap();
        assert_eq!(raw.len(), rows_seen);
    }
    println!("track rows per request: {rows_seen}");
    row("track: 30 days, 1/min (API, JSON)", &api);
    row("track: 30 days, 1/min (SQL baseline)", &sql);

    // ---- SSE fan-out ----
    sse(
        &base,
        &http,
        &store,
        &pool,
        &officer_refs,
        &officer_tokens,
        &ob,
    )
    .await;
    cancel.cancel();
}

/// Opens one stream per token; each reports (alert_id, arrival) for every
/// `raised` event it receives.
async fn connect_all(
    base: &str,
    http: &reqwest::Client,
    tokens: &[String],
    tx: mpsc::UnboundedSender<(i64, Instant)>,
) {
    let mut ready = Vec::new();
    for tok in tokens {
        let resp = http
            .get(format!("{base}/alerts/stream"))
            .bearer_auth(tok)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let tx = tx.clone();
        ready.push(tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                let at = Instant::now();
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    if !block.contains("event: raised") {
                        continue;
                    }
                    if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                        let v: serde_json::Value = serde_json::from_str(data).unwrap();
                        let _ = tx.send((v["alert_id"].as_i64().unwrap(), at));
                    }
                }
            }
        }));
    }
    std::mem::forget(ready);
}

async fn raise(store: &PgStore, pool: &PgPool, case_ref: &str) -> (i64, Instant) {
    let (sid, key): (i64, i64) = sqlx::query_as(
        "SELECT s.supervisee_id, a.device_key FROM supervisees s \
         JOIN device_assignments a USING (supervisee_id) WHERE s.case_ref = $1",
    )
    .bind(case_ref)
    .fetch_one(pool)
    .await
    .unwrap();
    let now = Utc::now();
    let alert = NewAlert {
        key: AlertKey::device(key, AlertKind::StrapTamper),
        supervisee_id: Some(sid),
        severity: Severity::Critical,
        zone_version: None,
        rule_id: None,
        confidence: Confidence::Confirmed,
        late: false,
        started_at: now,
        last_evidence_at: now,
        ended_at: None,
        explanation: "benchmark: strap opened".into(),
        details: serde_json::json!({}),
        evidence: vec![],
    };
    let writes = AlertWrites {
        now,
        ops: vec![
            AlertOp::Raise(Box::new(alert)),
            AlertOp::End {
                key: AlertKey::device(key, AlertKind::StrapTamper),
                at: now + TimeDelta::seconds(1),
                reason: "benchmark".into(),
            },
        ],
        ..Default::default()
    };
    store.commit_alerts(&writes).await.unwrap();
    let committed = Instant::now();
    let id: i64 = sqlx::query_scalar(
        "SELECT max(alert_id) FROM alerts WHERE supervisee_id = $1 AND kind = 'strap_tamper'",
    )
    .bind(sid)
    .fetch_one(pool)
    .await
    .unwrap();
    (id, committed)
}

async fn sse(
    base: &str,
    http: &reqwest::Client,
    store: &PgStore,
    pool: &PgPool,
    officer_refs: &[String],
    officer_tokens: &[String],
    ob: &Arc<Outbox>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let t = Instant::now();
    connect_all(base, http, officer_tokens, tx.clone()).await;
    println!(
        "sse: {} officer streams connected in {:.1} s",
        officer_tokens.len(),
        t.elapsed().as_secs_f64()
    );
    // Baseline subscriber: the broadcast itself, no HTTP.
    let mut base_rx = ob.subscribe();
    // Supervisees of connected officers: bench-s-N belongs to officer (N-1)%2000+1.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut lat, mut baseline) = (hist(), hist());
    let mut pending: HashMap<i64, Instant> = HashMap::new();
    for _ in 0..200 {
        let o: usize = rng.random_range(0..officer_refs.len());
        let officer_n: i64 = officer_refs[o]
            .trim_start_matches("bench-o-")
            .parse()
            .unwrap();
        let k: i64 = rng.random_range(0..50);
        let case = format!("bench-s-{}", officer_n + 2000 * k);
        let (id, committed) = raise(store, pool, &case).await;
        pending.insert(id, committed);
        // Broadcast arrival of the raise (baseline).
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => panic!("broadcast did not carry alert {id}"),
                e = base_rx.recv() => match e {
                    Ok(e) if e.alert_id == id && e.event_type == "raised" => {
                        baseline.record(committed.elapsed().as_micros().max(1) as u64).unwrap();
                        break;
                    }
                    _ => {}
                }
            }
        }
        // Delivery to the officer's stream.
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        while pending.contains_key(&id) {
            tokio::select! {
                _ = &mut deadline => panic!("alert {id} not delivered within 5 s"),
                Some((got, at)) = rx.recv() => {
                    if let Some(c) = pending.remove(&got) {
                        lat.record(at.duration_since(c).as_micros().max(1) as u64).unwrap();
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    row("sse: commit -> officer's stream (1,000 streams)", &lat);
    row("sse: commit -> in-process broadcast (baseline)", &baseline);

    // Fan-out: 1,000 streams all entitled to every alert (one team's
    // supervisor, 1,000 tokens), 50 alerts -> 50,000 deliveries.
    let sup_ref = "bench-o-1";
    let mut sup_tokens = Vec::new();
    for _ in 0..1000 {
        sup_tokens.push(
            create_token(
                &waypoint::store::sql::Db::Pg(pool.clone()),
                Role::Supervisor,
                Some(sup_ref),
                Some("bench"),
                None,
            )
            .await
            .unwrap()
            .token,
        );
    }
    let (ftx, mut frx) = mpsc::unbounded_channel();
    connect_all(base, http, &sup_tokens, ftx).await;
    let mut fan = hist();
    for i in 0..50 {
        // Team 1 = officers 1..=20; their supervisees bench-s-(o + 2000k).
        let case = format!("bench-s-{}", 2 + (i % 19) + 2000 * (i / 19 + 10));
        let (id, committed) = raise(store, pool, &case).await;
        let mut got = 0;
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        while got < 1000 {
            tokio::select! {
                _ = &mut deadline => panic!("alert {id}: {got}/1000 delivered in 10 s"),
                Some((a, at)) = frx.recv() => if a == id {
                    got += 1;
                    fan.record(at.duration_since(committed).as_micros().max(1) as u64).unwrap();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    row("sse: commit -> all 1,000 supervisor streams", &fan);
    drop(tx);
}
