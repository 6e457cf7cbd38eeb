//! Officer-API harness: the API router served on a free port against a
//! fresh database (no MQTT needed), a live alert feed behind it, a small
//! organisation (two teams, officers, supervisees) and a token per role.
//!
//! Every officer-API test runs against both storage backends, so the
//! embedded mode (SQLite) and the server mode (PostgreSQL) cannot drift:
//! a test body is written once as `async fn name(backend: Backend)` and
//! [`both!`](crate::both) instantiates it as `name::pg` and `name::sqlite`.
//! Fixtures go through [`Q`] in the SQL subset both databases accept, or
//! through the real [`Store`] API, so both backends hold what production
//! writes.

use std::sync::Arc;

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use waypoint::alerts::outbox::{self, Outbox};
use waypoint::alerts::{AlertKey, AlertKind, AlertOp, Confidence, Evidence, NewAlert, Severity};
use waypoint::api::auth::{create_token, Role};
use waypoint::api::{ApiConfig, ApiState};
use waypoint::clock::{ManualClock, SharedClock};
use waypoint::store::postgres::PgStore;
use waypoint::store::sql::{Db, On, Q};
use waypoint::store::sqlite::SqliteStore;
use waypoint::store::{AlertWrites, Store};

use super::TestDb;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh PostgreSQL database on the local server.
    Pg,
    /// A fresh SQLite file in a temporary directory (the embedded mode).
    Sqlite,
}

/// Runs an `async fn name(backend: Backend)` test once per backend, as
/// `name::pg` and `name::sqlite` (so `cargo test sqlite` picks one side).
/// Neither case skips: a missing PostgreSQL fails `::pg` loudly.
#[macro_export]
macro_rules! both {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn pg() {
                super::$name($crate::common::api::Backend::Pg).await
            }
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::api::Backend::Sqlite).await
            }
        }
    )+};
}

/// The store behind a test database, for the live alert feed and for
/// fixtures written the way production writes them.
#[derive(Clone)]
pub enum AnyStore {
    /// PostgreSQL.
    Pg(PgStore),
    /// SQLite.
    Lite(SqliteStore),
}

/// A database created for one test, on either backend.
pub struct ApiDb {
    /// What the API and the tests query.
    pub db: Db,
    /// The same database as a [`Store`].
    pub store: AnyStore,
    /// The PostgreSQL test database (left for a later run's sweep, like
    /// every [`TestDb`]).
    pg: Option<TestDb>,
    /// Holds the SQLite file; last, so it goes after the pools.
    _dir: Option<tempfile::TempDir>,
}

impl ApiDb {
    /// A fresh, migrated database on `backend`.
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Pg => {
                let t = TestDb::new().await;
                Self {
                    db: t.store().api_db(),
                    store: AnyStore::Pg(t.store()),
                    pg: Some(t),
                    _dir: None,
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let store = SqliteStore::open(dir.path())
                    .await
                    .expect("SQLite store opens");
                store.migrate().await.expect("SQLite migrations apply");
                Self {
                    db: store.api_db(),
                    store: AnyStore::Lite(store),
                    pg: None,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// The PostgreSQL test database, for the few PostgreSQL-only checks.
    pub fn pg(&self) -> Option<&TestDb> {
        self.pg.as_ref()
    }

    /// `SELECT count(*) ...` (portable SQL).
    pub async fn count(&self, sql: &'static str) -> i64 {
        Q::new(sql)
            .scalar::<i64>(&self.db)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Commits alert changes through the store, as the rules engine does.
    pub async fn commit_alerts(&self, w: &AlertWrites) {
        let r = match &self.store {
            AnyStore::Pg(s) => s.commit_alerts(w).await,
            AnyStore::Lite(s) => s.commit_alerts(w).await,
        };
        r.expect("alert writes commit");
    }
}

impl std::ops::Deref for ApiDb {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

/// So statements run on a test database directly: `Q::new(..).execute(&w.db)`.
impl<'e> From<&'e ApiDb> for On<'e> {
    fn from(d: &'e ApiDb) -> Self {
        On::Db(&d.db)
    }
}

/// Anything fixtures can write through: a test database on either backend,
/// or a PostgreSQL pool or [`TestDb`] (the PostgreSQL-only suites: OpenAPI,
/// dashboard, rules, simulator).
pub trait AsDb {
    /// The database as the API sees it.
    fn as_db(&self) -> Db;
}

impl AsDb for Db {
    fn as_db(&self) -> Db {
        self.clone()
    }
}

impl AsDb for ApiDb {
    fn as_db(&self) -> Db {
        self.db.clone()
    }
}

impl AsDb for PgPool {
    fn as_db(&self) -> Db {
        Db::Pg(self.clone())
    }
}

impl AsDb for TestDb {
    fn as_db(&self) -> Db {
        Db::Pg(self.pool.clone())
    }
}

/// A database an [`ApiServer`] can serve: it also feeds the live alert
/// stream from the database's alert log.
pub trait Serves: AsDb {
    /// Spawns the live alert feed until `cancel`.
    fn spawn_alert_feed(&self, ob: Arc<Outbox>, cancel: CancellationToken);
}

/// PostgreSQL: the log is followed from its head and woken by the
/// database's NOTIFY, so alerts written by other connections (the
/// fixtures) arrive without a wake-up call.
fn spawn_pg_feed(pool: &PgPool, ob: Arc<Outbox>, cancel: CancellationToken) {
    tokio::spawn(outbox::run_live(
        PgStore::from_pool(pool.clone()),
        ob.clone(),
        cancel.clone(),
    ));
    tokio::spawn(waypoint::store::postgres::watch_alert_log(
        pool.clone(),
        ob,
        cancel,
    ));
}

impl Serves for TestDb {
    fn spawn_alert_feed(&self, ob: Arc<Outbox>, cancel: CancellationToken) {
        spawn_pg_feed(&self.pool, ob, cancel);
    }
}

impl Serves for ApiDb {
    fn spawn_alert_feed(&self, ob: Arc<Outbox>, cancel: CancellationToken) {
        match &self.store {
            AnyStore::Pg(_) => {
                let pool = self.db.pg().expect("a PostgreSQL store has a pool");
                spawn_pg_feed(pool, ob, cancel);
            }
            // SQLite has no NOTIFY: as in the embedded server (src/app.rs),
            // the log is looked at every second for entries other writers
            // (here: the fixtures) appended.
            AnyStore::Lite(s) => {
                tokio::spawn(outbox::run_live(s.clone(), ob.clone(), cancel.clone()));
                tokio::spawn(outbox::poll_wake(ob, Duration::from_secs(1), cancel));
            }
        }
    }
}

/// Shows the server's warnings and errors with a failing test's output
/// (libtest captures them per test): a 500 or 503 then comes with the
/// database's error, not only the problem type. `RUST_LOG` overrides the
/// level.
fn log_to_test_output() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Only the first call in a test binary installs it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

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
    pub async fn start(db: &impl Serves, cfg: ApiConfig) -> Self {
        log_to_test_output();
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let shared: SharedClock = clock.clone();
        let cancel = CancellationToken::new();
        let ob = Outbox::new();
        db.spawn_alert_feed(ob.clone(), cancel.clone());
        let state = ApiState::new(db.as_db(), ob, shared, cfg);
        let app = waypoint::api::router(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = cancel.clone();
        tokio::spawn(async move {
            // Peer addresses, as src/app.rs serves them (authentication limits).
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
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

async fn team(db: &Db, team_ref: &str) -> i64 {
    Q::new("INSERT INTO teams (team_ref, name) VALUES ($1, $1) RETURNING team_id")
        .bind(team_ref)
        .scalar(db)
        .await
        .unwrap()
}

async fn officer(db: &Db, officer_ref: &str, team: i64) -> i64 {
    Q::new(
        "INSERT INTO officers (officer_ref, display_name, team_id) VALUES ($1, $1, $2) \
         RETURNING officer_id",
    )
    .bind(officer_ref)
    .bind(team)
    .scalar(db)
    .await
    .unwrap()
}

/// A supervisee of `officer_ref` (Europe/London).
pub async fn supervisee(db: &impl AsDb, case_ref: &str, officer_ref: &str) -> i64 {
    Q::new(
        "INSERT INTO supervisees (case_ref, display_name, time_zone, officer_ref) \
         VALUES ($1, $1, 'Europe/London', $2) RETURNING supervisee_id",
    )
    .bind(case_ref)
    .bind(officer_ref)
    .scalar(&db.as_db())
    .await
    .unwrap()
}

/// A token for `role` acting as `officer`.
pub async fn token(db: &impl AsDb, role: Role, officer: Option<&str>) -> String {
    create_token(&db.as_db(), role, officer, Some("test"), None)
        .await
        .expect("token")
        .token
}

impl Org {
    /// Creates the organisation.
    pub async fn create(db: &impl AsDb) -> Self {
        let db = &db.as_db();
        let team_north = team(db, "north").await;
        let team_south = team(db, "south").await;
        officer(db, "off-a", team_north).await;
        officer(db, "off-b", team_north).await;
        officer(db, "off-c", team_south).await;
        let sup = officer(db, "sup-n", team_north).await;
        Q::new("UPDATE teams SET supervisor_id = $1 WHERE team_id = $2")
            .bind(sup)
            .bind(team_north)
            .execute(db)
            .await
            .unwrap();
        Self {
            team_north,
            team_south,
            case_a: supervisee(db, "case-a", "off-a").await,
            case_b: supervisee(db, "case-b", "off-b").await,
            case_c: supervisee(db, "case-c", "off-c").await,
            off_a: token(db, Role::Officer, Some("off-a")).await,
            off_b: token(db, Role::Officer, Some("off-b")).await,
            off_c: token(db, Role::Officer, Some("off-c")).await,
            sup_n: token(db, Role::Supervisor, Some("sup-n")).await,
            admin: token(db, Role::Admin, None).await,
            auditor: token(db, Role::Auditor, None).await,
        }
    }
}

/// Enrolls `device_id` and assigns it to `supervisee_id` from `from`.
pub async fn assign_device(
    db: &impl AsDb,
    device_id: &str,
    supervisee_id: i64,
    from: DateTime<Utc>,
) -> i64 {
    let db = &db.as_db();
    let key: i64 = Q::new("INSERT INTO devices (device_id) VALUES ($1) RETURNING device_key")
        .bind(device_id)
        .scalar(db)
        .await
        .unwrap();
    Q::new(
        "INSERT INTO device_assignments (device_key, supervisee_id, valid_from) VALUES ($1, $2, $3)",
    )
    .bind(key)
    .bind(supervisee_id)
    .bind(from)
    .execute(db)
    .await
    .unwrap();
    key
}

/// Fix rows per INSERT: 3 parameters a row stays far below both databases'
/// limits (SQLite 32 766, PostgreSQL 65 535).
const FIX_ROWS_PER_STATEMENT: usize = 2000;

/// Inserts fixes for a device, one per `step` from `from`, `n` of them:
/// fix `g` (0-based) has `seq = g`, is received at its fix time, and lies at
/// latitude 51.5 + g * 1e-5, longitude -0.1, 8 m accuracy.
///
/// Times are computed here and bound, not computed in SQL: SQLite stores
/// times as text in the exact form its driver binds, and SQL date
/// arithmetic would write another form that does not compare equal.
pub async fn insert_fixes(
    db: &impl AsDb,
    device_key: i64,
    from: DateTime<Utc>,
    step: chrono::TimeDelta,
    n: i32,
) {
    let db = &db.as_db();
    let n = i64::from(n);
    let mut g = 0_i64;
    while g < n {
        let rows = (n - g).min(FIX_ROWS_PER_STATEMENT as i64);
        let mut sql = String::from(
            "INSERT INTO fixes (device_key, fix_time, boot, seq, idx, received_at, lat, lon, \
             acc_m, src) VALUES ",
        );
        for r in 0..rows {
            let p = 2 + 3 * r;
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "($1, ${p}, 1, ${}, 0, ${p}, ${}, -0.1, 8, 'gnss')",
                p + 1,
                p + 2
            ));
        }
        let mut q = Q::new(sql).bind(device_key);
        for i in g..g + rows {
            let step_i = i32::try_from(i).expect("fits");
            q = q
                .bind(from + step * step_i)
                .bind(i)
                .bind(51.5 + i as f64 * 1e-5);
        }
        q.execute(db).await.unwrap();
        g += rows;
    }
}

/// Raises a confirmed alert for a supervisee's device at `raised_at` (its
/// condition already ended, so any number of one kind can coexist), with
/// one evidence fix; returns the alert id.
///
/// It goes through [`Store::commit_alerts`], the path the rules engine's
/// timers use, so each backend writes the alert, its evidence and its
/// `raised` log entry (the payload the live stream reads) exactly as in
/// production.
pub async fn insert_alert(
    db: &ApiDb,
    device_key: i64,
    supervisee_id: i64,
    kind: &str,
    severity: &str,
    raised_at: DateTime<Utc>,
) -> i64 {
    let kind = AlertKind::parse(kind).unwrap_or_else(|| panic!("alert kind {kind:?}"));
    let severity: Severity = severity.parse().expect("severity");
    let alert = NewAlert {
        key: AlertKey {
            device_key,
            kind,
            zone_id: None,
            pairing_id: None,
        },
        supervisee_id: Some(supervisee_id),
        severity,
        zone_version: None,
        rule_id: None,
        confidence: Confidence::Confirmed,
        late: false,
        started_at: raised_at,
        last_evidence_at: raised_at,
        ended_at: Some(raised_at),
        explanation: "test alert".into(),
        details: serde_json::json!({}),
        evidence: vec![Evidence {
            at: raised_at,
            lat: Some(51.5),
            lon: Some(-0.1),
            acc_m: Some(8.0),
            observation: "confirmed".into(),
            distance_m: None,
            detail: None,
        }],
    };
    db.commit_alerts(&AlertWrites {
        now: raised_at,
        ops: vec![AlertOp::Raise(Box::new(alert))],
        ..AlertWrites::default()
    })
    .await;
    // Ids only grow, and a test raises its alerts one at a time.
    Q::new("SELECT max(alert_id) FROM alerts WHERE device_key = $1")
        .bind(device_key)
        .scalar::<i64>(db)
        .await
        .unwrap()
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
