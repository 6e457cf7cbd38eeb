//! Officer-API harness: the API router served on a free port against a
//! fresh database (no MQTT needed), a live alert feed behind it, a small
//! organisation (two teams, officers, supervisees) and a token per role.

use std::sync::Arc;

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use waypoint::alerts::outbox::{self, Outbox};
use waypoint::api::auth::{create_token, Role};
use waypoint::api::{ApiConfig, ApiState};
use waypoint::clock::{ManualClock, SharedClock};
use waypoint::store::sql::Db;

use super::TestDb;

/// A running API.
pub struct ApiServer {
    /// `http://127.0.0.1:port/api/v1`
    pub base: String,
    /// Client.
    pub http: reqwest::Client,
    /// Same state the handlers see (tests call escalation directly).
    pub state: ApiState,
    /// The clock behind it.
    pub clock: Arc<ManualClock>,
    cancel: CancellationToken,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A reply: status, content type, JSON body (Null when not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl ApiServer {
    /// Serves the API on 127.0.0.1:0 with a manual clock at `now`.
    pub async fn start(db: &TestDb, cfg: ApiConfig) -> Self {
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let shared: SharedClock = clock.clone();
        let cancel = CancellationToken::new();
        let ob = Outbox::new();
        tokio::spawn(outbox::run_live(db.store(), ob.clone(), cancel.clone()));
        tokio::spawn(waypoint::store::postgres::watch_alert_log(
            db.pool.clone(),
            ob.clone(),
            cancel.clone(),
        ));
        let state = ApiState::new(Db::Pg(db.pool.clone()), ob, shared, cfg);
        let app = waypoint::api::router(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = cancel.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        Self {
            base: format!("http://{addr}/api/v1"),
            http: reqwest::Client::new(),
            state,
            clock,
            cancel,
        }
    }

    /// Sends a request; `body` as JSON when given.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        read(rb.send().await.expect("request sent")).await
    }

    /// GET with a token.
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// POST JSON with a token.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }
}

/// Reads a response whole.
pub async fn read(r: reqwest::Response) -> Reply {
    let status = r.status();
    let headers = r.headers().clone();
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        content_type,
        body,
        headers,
        text,
    }
}

/// Asserts an RFC 9457 problem with `status`.
pub fn assert_problem(r: &Reply, status: u16) {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.text);
    assert_eq!(r.content_type, "application/problem+json", "{}", r.text);
    assert_eq!(r.body["status"], status, "{}", r.text);
    assert!(r.body["type"].is_string() && r.body["title"].is_string());
    let lower = r.text.to_lowercase();
    for leak in [
        "select ",
        "insert ",
        "sqlx",
        "postgres",
        "panicked",
        "constraint",
    ] {
        assert!(!lower.contains(leak), "problem leaks {leak:?}: {}", r.text);
    }
}

/// The organisation every API test starts from.
///
/// - team `north` (supervisor `sup-n`): officers `off-a`, `off-b`
/// - team `south`: officer `off-c`, no supervisor
/// - supervisees `case-a` (off-a), `case-b` (off-b), `case-c` (off-c)
pub struct Org {
    pub team_north: i64,
    pub team_south: i64,
    pub case_a: i64,
    pub case_b: i64,
    pub case_c: i64,
    /// Tokens: officer off-a, officer off-b, officer off-c, supervisor
    /// sup-n, admin, auditor.
    pub off_a: String,
    pub off_b: String,
    pub off_c: String,
    pub sup_n: String,
    pub admin: String,
    pub auditor: String,
}

async fn team(pool: &PgPool, team_ref: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO teams (team_ref, name) VALUES ($1, $1) RETURNING team_id")
        .bind(team_ref)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn officer(pool: &PgPool, officer_ref: &str, team: i64) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO officers (officer_ref, display_name, team_id) VALUES ($1, $1, $2) \
         RETURNING officer_id",
    )
    .bind(officer_ref)
    .bind(team)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A supervisee of `officer_ref` (Europe/London).
pub async fn supervisee(pool: &PgPool, case_ref: &str, officer_ref: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO supervisees (case_ref, display_name, time_zone, officer_ref) \
         VALUES ($1, $1, 'Europe/London', $2) RETURNING supervisee_id",
    )
    .bind(case_ref)
    .bind(officer_ref)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A token for `role` acting as `officer`.
pub async fn token(pool: &PgPool, role: Role, officer: Option<&str>) -> String {
    create_token(&Db::Pg(pool.clone()), role, officer, Some("test"), None)
        .await
        .expect("token")
        .token
}

impl Org {
    /// Creates the organisation.
    pub async fn create(pool: &PgPool) -> Self {
        let team_north = team(pool, "north").await;
        let team_south = team(pool, "south").await;
        officer(pool, "off-a", team_north).await;
        officer(pool, "off-b", team_north).await;
        officer(pool, "off-c", team_south).await;
        let sup = officer(pool, "sup-n", team_north).await;
        sqlx::query("UPDATE teams SET supervisor_id = $1 WHERE team_id = $2")
            .bind(sup)
            .bind(team_north)
            .execute(pool)
            .await
            .unwrap();
        Self {
            team_north,
            team_south,
            case_a: supervisee(pool, "case-a", "off-a").await,
            case_b: supervisee(pool, "case-b", "off-b").await,
            case_c: supervisee(pool, "case-c", "off-c").await,
            off_a: token(pool, Role::Officer, Some("off-a")).await,
            off_b: token(pool, Role::Officer, Some("off-b")).await,
            off_c: token(pool, Role::Officer, Some("off-c")).await,
            sup_n: token(pool, Role::Supervisor, Some("sup-n")).await,
            admin: token(pool, Role::Admin, None).await,
            auditor: token(pool, Role::Auditor, None).await,
        }
    }
}

/// Enrolls `device_id` and assigns it to `supervisee_id` from `from`.
pub async fn assign_device(
    pool: &PgPool,
    device_id: &str,
    supervisee_id: i64,
    from: chrono::DateTime<chrono::Utc>,
) -> i64 {
    let key: i64 =
        sqlx::query_scalar("INSERT INTO devices (device_id) VALUES ($1) RETURNING device_key")
            .bind(device_id)
            .fetch_one(pool)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO device_assignments (device_key, supervisee_id, valid_from) VALUES ($1, $2, $3)",
    )
    .bind(key)
    .bind(supervisee_id)
    .bind(from)
    .execute(pool)
    .await
    .unwrap();
    key
}

/// Inserts fixes for a device, one per `step` from `from`, `n` of them.
pub async fn insert_fixes(
    pool: &PgPool,
    device_key: i64,
    from: chrono::DateTime<chrono::Utc>,
    step: chrono::TimeDelta,
    n: i32,
) {
    sqlx::query(
        "INSERT INTO fixes (device_key, fix_time, boot, seq, idx, received_at, lat, lon, acc_m, src) \
         SELECT $1, $2 + $3 * g, 1, g, 0, $2 + $3 * g, 51.5 + g * 1e-5, -0.1, 8, 'gnss' \
         FROM generate_series(0, $4 - 1) g",
    )
    .bind(device_key)
    .bind(from)
    .bind(step)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// Inserts an open alert for a supervisee's device (and its log entry),
/// as the rules engine would; returns the alert id.
pub async fn insert_alert(
    pool: &PgPool,
    device_key: i64,
    supervisee_id: i64,
    kind: &str,
    severity: &str,
    raised_at: chrono::DateTime<chrono::Utc>,
) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO alerts (device_key, supervisee_id, kind, severity, confidence, started_at, \
           raised_at, last_evidence_at, explanation, condition_ended_at) \
         VALUES ($1, $2, $3, $4, 'confirmed', $5, $5, $5, 'test alert', $5) RETURNING alert_id",
    )
    .bind(device_key)
    .bind(supervisee_id)
    .bind(kind)
    .bind(severity)
    .bind(raised_at)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO alert_evidence (alert_id, ord, fix_time, lat, lon, acc_m, observation) \
         VALUES ($1, 0, $2, 51.5, -0.1, 8, 'confirmed')",
    )
    .bind(id)
    .bind(raised_at)
    .execute(&mut *tx)
    .await
    .unwrap();
    let ev: i64 = sqlx::query_scalar(
        "UPDATE alert_event_counter SET last_id = last_id + 1 RETURNING last_id",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO alert_events (event_id, alert_id, event_type, at, payload) \
         SELECT $1, a.alert_id, 'raised', $3, to_jsonb(a) || jsonb_build_object('device_id', d.device_id) \
         FROM alerts a JOIN devices d USING (device_key) WHERE a.alert_id = $2",
    )
    .bind(ev)
    .bind(id)
    .bind(raised_at)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

/// Events of a text/event-stream, read until `n` have arrived.
pub async fn sse_events(resp: reqwest::Response, n: usize) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    let read = async {
        while out.len() < n {
            let Some(chunk) = body.next().await else {
                break;
            };
            buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let (mut id, mut ev, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if !id.is_empty() {
                    out.push((id, ev, serde_json::from_str(&data).unwrap()));
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {n} events; got {out:?}"));
    out
}
