//! SQLite implementation of [`Store`]: the embedded mode, everything in one
//! file, nothing to install.
//!
//! SQLite runs one write transaction at a time for the whole file, so the
//! store has two pools: `write` with a single connection, through which every
//! write transaction goes (started `BEGIN IMMEDIATE`, so a transaction never
//! has to upgrade a read lock and cannot hit an upgrade deadlock), and `read`
//! with a few read-only connections, which WAL lets run beside the writer.
//! Statements are in-process calls, not round trips, so where PostgreSQL
//! sends column arrays through UNNEST, this backend runs multi-row VALUES
//! statements (`insert_rows`) or a prepared statement per row.
//!
//! Schema: `migrations/sqlite/` (its header lists what differs from
//! PostgreSQL and why).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(crate) mod alerts;
mod retention;
mod rules;

use super::{
    AcceptedMessage, AlertFilter, AlertRecord, AlertWrites, CommitHook, CommitReport, DeviceRecord,
    Outcome, Prepared, PurgeReport, PurgeWindow, RejectionRow, StateRow, Store, StoreError,
};
use crate::alerts::{AlertEvent, AlertKind, OfficerAction};
use crate::directory::DirectoryEvent;
use crate::domain::{DeviceId, RejectReason};
use crate::rules::snapshot::RulesData;
use crate::scenario::{LoadReport, Scenario};

/// Migrations embedded at build time from `migrations/sqlite/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The database file inside the data directory.
pub const DB_FILE: &str = "waypoint.db";

/// How long a statement waits for another process's write lock (the CLI
/// loading a scenario while the server runs) before failing as contended.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read-only connections beside the writer: the directory, the rules loader,
/// the outbox, the change pollers and readiness checks each hold one
/// briefly; the officer API's reads (lists, tracks, streams) and up to two
/// export snapshots held for a whole export share the rest.
const READ_CONNECTIONS: u32 = 8;

/// How often the change watchers read the `config_version` counters. There
/// is no LISTEN/NOTIFY in SQLite, and another process (the CLI) may change
/// the configuration, so polling is the one way to hear of it; one indexed
/// read of a one-row table costs microseconds.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// How a write transaction starts: takes the write lock up front, so a
/// transaction that reads before it writes never fails to upgrade.
pub(crate) const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// SQLite store; cheap to clone (shares the pools).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// The one writer connection; SQLite serialises writers anyway, and
    /// queueing them here instead of in SQLite's lock avoids SQLITE_BUSY.
    write: SqlitePool,
    /// Read-only connections; WAL lets them read while a write commits.
    read: SqlitePool,
    /// The database file, for messages.
    path: PathBuf,
}

/// Primary SQLite result codes that classify an error (the low byte of an
/// extended code).
mod code {
    pub const NOMEM: i32 = 7;
    pub const BUSY: i32 = 5;
    pub const LOCKED: i32 = 6;
    pub const READONLY: i32 = 8;
    pub const INTERRUPT: i32 = 9;
    pub const IOERR: i32 = 10;
    pub const CORRUPT: i32 = 11;
    pub const FULL: i32 = 13;
    pub const CANTOPEN: i32 = 14;
    pub const PROTOCOL: i32 = 15;
    pub const NOTADB: i32 = 26;
}

/// Classifies sqlx errors like [`crate::store::postgres::classify`]: a lock
/// held by another writer is contention (retry); trouble with the file or
/// the machine (I/O, disk full, read-only file, corruption) makes the
/// database unavailable (retry later, ack nothing: it is not the data's
/// fault, so no message may be isolated as refused for it); anything else,
/// constraint violations included, is about the data.
pub fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            let primary = db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .map_or(0, |c| c & 0xff);
            match primary {
                code::BUSY | code::LOCKED => {
                    StoreError::Contended(format!("database file locked: {}", db.message()))
                }
                code::NOMEM
                | code::READONLY
                | code::INTERRUPT
                | code::IOERR
                | code::CORRUPT
                | code::FULL
                | code::CANTOPEN
                | code::PROTOCOL
                | code::NOTADB => StoreError::Unavailable(e),
                _ => StoreError::Refused(e),
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
        _ => StoreError::Refused(e),
    }
}

/// A data directory that cannot hold the database, named with the cause.
fn unusable(dir: &Path, cause: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(format!(
        "data directory {} is unusable: {cause}",
        dir.display()
    ))
}

/// Checks, before SQLite sees it, that `dir` is a directory we can create
/// files in: SQLite's own error for this ("unable to open database file")
/// names neither the path nor the cause. WAL mode creates `-wal` and `-shm`
/// files beside the database, so a writable database file is not enough.
fn prepare_dir(dir: &Path) -> Result<PathBuf, StoreError> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Err(unusable(dir, "it exists and is not a directory")),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)
            .map_err(|e| unusable(dir, format!("cannot create: {e}")))?,
        Err(e) => return Err(unusable(dir, e)),
    }
    let probe = dir.join(format!(".waypoint-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| unusable(dir, format!("cannot create files in it: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    let file = dir.join(DB_FILE);
    match std::fs::metadata(&file) {
        Ok(m) if !m.is_file() => Err(unusable(
            dir,
            format!("{} exists and is not a file", file.display()),
        )),
        Ok(_) => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .map(|_| file.clone())
            .map_err(|e| unusable(dir, format!("cannot open {}: {e}", file.display()))),
        Err(_) => Ok(file),
    }
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) `<dir>/waypoint.db`
    /// in WAL mode with `synchronous=FULL` (a commit that returned survives a
    /// power cut, which is what acking after commit promises) and foreign
    /// keys enforced. Does not migrate; see [`Store::migrate`].
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = prepare_dir(dir)?;
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // Many distinct multi-row statements (see `insert_rows`) plus the
            // rest; evicting them would re-prepare on every batch.
            .statement_cache_capacity(256);
        let write_opts = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // Writers queue here for the single connection; a batch waiting
            // behind a long scenario load is slow, not broken.
            .acquire_timeout(Duration::from_secs(30))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(write_opts)
            .await
            .map_err(|e| match classify(e) {
                StoreError::Unavailable(e) | StoreError::Refused(e) => {
                    unusable(dir, format!("cannot open {}: {e}", path.display()))
                }
                other => other,
            })?;
        // The writer created the file and switched it to WAL (a persistent
        // setting), so read-only connections can open it now.
        let read = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base.read_only(true))
            .await
            .map_err(classify)?;
        Ok(Self { write, read, path })
    }

    /// The single-connection pool every write transaction goes through.
    pub fn write_pool(&self) -> &SqlitePool {
        &self.write
    }

    /// Read-only connections for queries.
    pub fn read_pool(&self) -> &SqlitePool {
        &self.read
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes both pools once their connections are returned; the last
    /// connection to close checkpoints the WAL into the database file.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// The store behind `pools` (opened by [`SqliteStore::open`]), for
    /// code that holds the API's handle to it ([`crate::store::sql::Db`]).
    pub fn from_pools(pools: &crate::store::sql::LitePools) -> Self {
        Self {
            write: pools.write.clone(),
            read: pools.read.clone(),
            path: PathBuf::new(),
        }
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE`: the write lock is
    /// taken at once, so another process's writer makes it wait in the busy
    /// handler instead of failing at its first write).
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        self.write.begin_with(BEGIN_WRITE).await.map_err(classify)
    }

    /// Follows one `config_version` counter, sending `event()` at start and
    /// whenever the counter moved since the last poll. A failed read is
    /// followed by a send once reads work again, like a LISTEN reconnect:
    /// the consumer reloads rather than trusting it missed nothing.
    async fn poll_version<T: Send>(
        &self,
        column: &'static str,
        tx: mpsc::Sender<T>,
        cancel: CancellationToken,
        event: impl Fn() -> T + Send,
    ) {
        let sql = format!("SELECT {column} FROM config_version");
        let mut last: Option<i64> = None;
        let mut first = true;
        loop {
            match sqlx::query_scalar::<_, i64>(&sql)
                .fetch_one(&self.read)
                .await
            {
                Ok(v) => {
                    if first || last != Some(v) {
                        first = false;
                        if tx.send(event()).await.is_err() {
                            return;
                        }
                    }
                    last = Some(v);
                }
                Err(e) => {
                    tracing::warn!(error = %e, column, "reading config_version failed; retrying");
                    last = None;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    }
}

fn device_from_row(r: &SqliteRow) -> Result<DeviceRecord, StoreError> {
    let id: String = r.try_get("device_id").map_err(classify)?;
    let user: Option<String> = r.try_get("owntracks_user").map_err(classify)?;
    let dev: Option<String> = r.try_get("owntracks_device").map_err(classify)?;
    let revoked: Option<DateTime<Utc>> = r.try_get("revoked_at").map_err(classify)?;
    Ok(DeviceRecord {
        key: r.try_get("device_key").map_err(classify)?,
        // The table's CHECK constraint enforces the same rule as DeviceId.
        id: DeviceId::parse(&id).map_err(|e| StoreError::NotFound(format!("{id:?}: {e}")))?,
        owntracks: user.zip(dev),
        revoked: revoked.is_some(),
    })
}

const DEVICE_COLUMNS: &str = "device_key, device_id, owntracks_user, owntracks_device, revoked_at";

/// A query being built with its arguments.
pub(crate) type Q<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// Rows per multi-row statement. With at most 13 columns that is 832
/// parameters, far below SQLite's limit of 32766.
const CHUNK: usize = 64;

/// Statement sizes for `n` rows: full chunks, then the binary digits of the
/// remainder (32, 16, ... 1), so each table needs at most seven distinct
/// statements, all of which stay prepared in the statement cache.
fn chunk_sizes(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    while n >= CHUNK {
        out.push(CHUNK);
        n -= CHUNK;
    }
    let mut size = CHUNK / 2;
    while n > 0 {
        if n >= size {
            out.push(size);
            n -= size;
        }
        size /= 2;
    }
    out
}

/// Runs `head VALUES (?, ...), ... tail` over `rows` in chunks, binding each
/// row's `cols` values with `bind`; returns what `tail`'s RETURNING clause
/// yields (nothing without one).
pub(crate) async fn insert_rows<T>(
    conn: &mut SqliteConnection,
    head: &str,
    cols: usize,
    tail: &str,
    rows: &[T],
    bind: for<'q> fn(Q<'q>, &'q T) -> Q<'q>,
) -> Result<Vec<SqliteRow>, sqlx::Error> {
    let mut out = Vec::new();
    let mut rest = rows;
    for size in chunk_sizes(rows.len()) {
        let (chunk, more) = rest.split_at(size);
        rest = more;
        let one = format!("({})", vec!["?"; cols].join(", "));
        let sql = format!("{head} VALUES {} {tail}", vec![one; size].join(", "));
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = bind(q, r);
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// One fix row, borrowed from its message.
struct FixRow<'a> {
    m: &'a AcceptedMessage,
    idx: i64,
    f: &'a crate::domain::Fix,
}

fn bind_fix<'q>(q: Q<'q>, r: &'q FixRow<'_>) -> Q<'q> {
    q.bind(r.m.device_key)
        .bind(r.f.ts)
        .bind(r.m.telemetry.key.boot)
        .bind(r.m.telemetry.key.seq)
        .bind(r.idx)
        .bind(r.m.received_at)
        .bind(r.f.lat)
        .bind(r.f.lon)
        .bind(r.f.acc_m)
        .bind(r.f.alt_m)
        .bind(r.f.speed_mps)
        .bind(r.f.heading_deg)
        .bind(r.f.src.as_str())
}

fn bind_claim<'q>(q: Q<'q>, m: &'q &AcceptedMessage) -> Q<'q> {
    q.bind(m.device_key)
        .bind(m.telemetry.key.boot)
        .bind(m.telemetry.key.seq)
        .bind(&m.digest[..])
        .bind(m.received_at)
        .bind(if m.store_fixes {
            m.telemetry.fixes.len() as i64
        } else {
            0
        })
}

type Key = (i64, i64, i64);

fn key_of(m: &AcceptedMessage) -> Key {
    (m.device_key, m.telemetry.key.boot, m.telemetry.key.seq)
}

/// Claims the candidates' keys in the ledger. Returns, per candidate
/// position, the digest already stored under its key (`None`: new).
async fn claim(
    conn: &mut SqliteConnection,
    candidates: &[&AcceptedMessage],
) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
    let inserted = insert_rows(
        conn,
        "INSERT INTO messages (device_key, boot, seq, digest, received_at, fix_count)",
        6,
        "ON CONFLICT DO NOTHING RETURNING device_key, boot, seq",
        candidates,
        bind_claim,
    )
    .await
    .map_err(classify)?;
    let mut new: std::collections::HashSet<Key> = std::collections::HashSet::new();
    for r in &inserted {
        new.insert((
            r.try_get(0).map_err(classify)?,
            r.try_get(1).map_err(classify)?,
            r.try_get(2).map_err(classify)?,
        ));
    }
    let mut out = Vec::with_capacity(candidates.len());
    for m in candidates {
        if new.contains(&key_of(m)) {
            out.push(None);
            continue;
        }
        // Redeliveries are the exception, so one lookup each is fine.
        let old: Vec<u8> = sqlx::query_scalar(
            "SELECT digest FROM messages WHERE device_key = $1 AND boot = $2 AND seq = $3",
        )
        .bind(m.device_key)
        .bind(m.telemetry.key.boot)
        .bind(m.telemetry.key.seq)
        .fetch_one(&mut *conn)
        .await
        .map_err(classify)?;
        out.push(Some(old));
    }
    Ok(out)
}

impl Store for SqliteStore {
    /// The API shares the one writer: SQLite has no second one to give it.
    fn api_db(&self) -> crate::store::sql::Db {
        crate::store::sql::Db::Lite(crate::store::sql::LitePools {
            write: self.write_pool().clone(),
            read: self.read_pool().clone(),
        })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.write).await?;
        Ok(())
    }

    async fn commit(
        &self,
        batch: &[Prepared],
        hook: &dyn CommitHook,
    ) -> Result<CommitReport, StoreError> {
        let mut report = CommitReport {
            outcomes: vec![Outcome::Stored; batch.len()],
            ..Default::default()
        };
        let mut rejections: Vec<RejectionRow> = Vec::new();

        // 1. De-duplicate inside the batch: the first copy of a key is the
        //    candidate; later copies are duplicates or conflicts of it.
        let mut first: HashMap<Key, &AcceptedMessage> = HashMap::new();
        let mut candidates: Vec<(usize, &AcceptedMessage)> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            match p {
                Prepared::Rejected(r) => {
                    report.outcomes[i] = Outcome::Rejected;
                    rejections.push(RejectionRow::whole(r));
                }
                Prepared::Accepted(m) => match first.get(&key_of(m)) {
                    None => {
                        first.insert(key_of(m), m);
                        candidates.push((i, m));
                    }
                    Some(earlier) if earlier.digest == m.digest => {
                        report.outcomes[i] = Outcome::Duplicate;
                    }
                    Some(_) => {
                        report.outcomes[i] = Outcome::Conflict;
                        rejections.push(RejectionRow::conflict(
                            m,
                            "same (device, boot, seq) as an earlier message with other content",
                        ));
                    }
                },
            }
        }

        let mut tx = self.begin_write().await?;

        // 2. Claim keys; keys that already existed come back with their
        //    digest: same digest is a redelivery, another a seq_conflict.
        //    The single writer holds the file's write lock, so no other
        //    transaction can claim a key between the claim and the commit.
        let ms: Vec<&AcceptedMessage> = candidates.iter().map(|c| c.1).collect();
        let existing = claim(&mut tx, &ms).await?;
        let mut fresh: Vec<&AcceptedMessage> = Vec::with_capacity(candidates.len());
        for (&(i, m), old) in candidates.iter().zip(&existing) {
            match old {
                None => {
                    fresh.push(m);
                    rejections.extend(m.item_rejections.iter().map(|r| RejectionRow::item(m, r)));
                }
                Some(d) if d[..] == m.digest[..] => report.outcomes[i] = Outcome::Duplicate,
                Some(_) => {
                    report.outcomes[i] = Outcome::Conflict;
                    rejections.push(RejectionRow::conflict(
                        m,
                        "same (device, boot, seq) already stored with other content",
                    ));
                }
            }
        }

        // 3. Everything the new messages carry.
        let fixes: Vec<FixRow> = fresh
            .iter()
            .filter(|m| m.store_fixes)
            .flat_map(|m| {
                m.telemetry
                    .fixes
                    .iter()
                    .enumerate()
                    .map(move |(i, f)| FixRow {
                        m,
                        idx: i as i64,
                        f,
                    })
            })
            .collect();
        report.fixes_stored = insert_rows(
            &mut tx,
            "INSERT INTO fixes (device_key, fix_time, boot, seq, idx, received_at, lat, lon, \
             acc_m, alt_m, speed_mps, heading_deg, src)",
            13,
            "ON CONFLICT DO NOTHING RETURNING 1",
            &fixes,
            bind_fix,
        )
        .await
        .map_err(classify)?
        .len() as u64;
        insert_events(&mut tx, &fresh).await?;
        upsert_status(&mut tx, &fresh).await?;
        let recorded = insert_rejections(&mut tx, &rejections).await?;

        // 4. Rules: evaluated once per new message, written with it.
        let writes = hook.evaluate(&fresh);
        alerts::write(&mut tx, &writes, &mut report).await?;

        tx.commit().await.map_err(classify)?;
        // Only rows actually written count: a redelivered refusal is already
        // on record.
        for r in recorded {
            *report.rejections.entry(r).or_default() += 1;
        }
        Ok(report)
    }

    async fn commit_alerts(&self, writes: &AlertWrites) -> Result<CommitReport, StoreError> {
        let mut report = CommitReport::default();
        let mut tx = self.begin_write().await?;
        alerts::write(&mut tx, writes, &mut report).await?;
        tx.commit().await.map_err(classify)?;
        Ok(report)
    }

    async fn load_device_states(&self, device_keys: &[i64]) -> Result<Vec<StateRow>, StoreError> {
        alerts::load_states(&self.read, device_keys).await
    }

    async fn last_seen_all(&self) -> Result<Vec<(i64, DateTime<Utc>)>, StoreError> {
        sqlx::query_as("SELECT device_key, last_seen FROM device_state WHERE last_seen IS NOT NULL")
            .fetch_all(&self.read)
            .await
            .map_err(classify)
    }

    async fn active_alert_devices(&self, kind: AlertKind) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT device_key FROM alerts WHERE kind = $1 AND condition_ended_at IS NULL",
        )
        .bind(kind.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(classify)
    }

    async fn load_rules(&self, known: &[(i64, i32)]) -> Result<RulesData, StoreError> {
        rules::load(&self.read, known).await
    }

    async fn watch_rules(&self, tx: mpsc::Sender<()>, cancel: CancellationToken) {
        self.poll_version("rules_version", tx, cancel, || ()).await
    }

    async fn apply_scenario(
        &self,
        scenario: &Scenario,
        actor: &str,
    ) -> Result<LoadReport, StoreError> {
        let mut tx = self.begin_write().await?;
        let rep = rules::apply_scenario(&mut tx, scenario, actor).await?;
        tx.commit().await.map_err(classify)?;
        Ok(rep)
    }

    async fn alert_events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AlertEvent>, StoreError> {
        alerts::events_after(&self.read, after, limit).await
    }

    async fn alert_event_head(&self) -> Result<i64, StoreError> {
        // AUTOINCREMENT's high-water mark: like PostgreSQL's counter row it
        // never goes back, even when retention has deleted the newest entries.
        sqlx::query_scalar(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'alert_events'), 0)",
        )
        .fetch_one(&self.read)
        .await
        .map_err(classify)
    }

    async fn outbox_cursor(&self, consumer: &str) -> Result<i64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT last_event_id FROM outbox_cursors WHERE consumer = $1")
                .bind(consumer)
                .fetch_optional(&self.read)
                .await
                .map_err(classify)?;
        Ok(v.unwrap_or(0))
    }

    async fn set_outbox_cursor(
        &self,
        consumer: &str,
        last_event_id: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO outbox_cursors (consumer, last_event_id) VALUES ($1, $2) \
             ON CONFLICT (consumer) DO UPDATE SET last_event_id = \
             max(outbox_cursors.last_event_id, excluded.last_event_id)",
        )
        .bind(consumer)
        .bind(last_event_id)
        .execute(&self.write)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn alert_action(
        &self,
        alert_id: i64,
        actor: &str,
        action: &OfficerAction,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        alerts::officer_action(&mut tx, alert_id, actor, action, at).await?;
        tx.commit().await.map_err(classify)?;
        Ok(())
    }

    async fn alerts(&self, filter: &AlertFilter) -> Result<Vec<AlertRecord>, StoreError> {
        alerts::list(&self.read, filter).await
    }

    async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY device_key"
        ))
        .fetch_all(&self.read)
        .await
        .map_err(classify)?;
        rows.iter().map(device_from_row).collect()
    }

    async fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(classify)?;
        row.as_ref().map(device_from_row).transpose()
    }

    async fn device_by_owntracks(
        &self,
        user: &str,
        device: &str,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE owntracks_user = $1 AND owntracks_device = $2"
        ))
        .bind(user)
        .bind(device)
        .fetch_optional(&self.read)
        .await
        .map_err(classify)?;
        row.as_ref().map(device_from_row).transpose()
    }

    async fn add_device(
        &self,
        id: &DeviceId,
        owntracks: Option<(&str, &str)>,
        now: DateTime<Utc>,
    ) -> Result<DeviceRecord, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO devices (device_id, owntracks_user, owntracks_device, enrolled_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING {DEVICE_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(owntracks.map(|o| o.0))
        .bind(owntracks.map(|o| o.1))
        .bind(now)
        .fetch_optional(&self.write)
        .await
        .map_err(classify)?;
        match row {
            Some(r) => device_from_row(&r),
            None => Err(StoreError::AlreadyExists(format!(
                "device {id} or its OwnTracks pair is already enrolled"
            ))),
        }
    }

    async fn revoke_device(&self, id: &DeviceId, now: DateTime<Utc>) -> Result<(), StoreError> {
        let r = sqlx::query(
            "UPDATE devices SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL",
        )
        .bind(id.as_str())
        .bind(now)
        .execute(&self.write)
        .await
        .map_err(classify)?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "no enrolled, unrevoked device {id}"
            )));
        }
        Ok(())
    }

    async fn watch_devices(&self, tx: mpsc::Sender<DirectoryEvent>, cancel: CancellationToken) {
        // The counter says that something changed, not which device: the
        // directory reloads whole, which for an embedded fleet is cheap.
        self.poll_version("devices_version", tx, cancel, || DirectoryEvent::Resync)
            .await
    }

    async fn purge_expired(
        &self,
        window: PurgeWindow,
        batch: usize,
    ) -> Result<PurgeReport, StoreError> {
        retention::purge(&self.read, &self.write, window, batch).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map_err(classify)?;
        Ok(())
    }
}

struct EventRow<'a> {
    m: &'a AcceptedMessage,
    idx: i64,
    e: &'a crate::domain::DeviceEvent,
}

fn bind_event<'q>(q: Q<'q>, r: &'q EventRow<'_>) -> Q<'q> {
    q.bind(r.m.device_key)
        .bind(r.e.ts)
        .bind(r.m.telemetry.key.boot)
        .bind(r.m.telemetry.key.seq)
        .bind(r.idx)
        .bind(r.e.kind.as_str())
        .bind(r.m.received_at)
}

async fn insert_events(
    conn: &mut SqliteConnection,
    fresh: &[&AcceptedMessage],
) -> Result<(), StoreError> {
    let rows: Vec<EventRow> = fresh
        .iter()
        .flat_map(|m| {
            m.telemetry
                .events
                .iter()
                .enumerate()
                .map(move |(i, e)| EventRow {
                    m,
                    idx: i as i64,
                    e,
                })
        })
        .collect();
    insert_rows(
        conn,
        "INSERT INTO device_events (device_key, event_time, boot, seq, idx, kind, received_at)",
        7,
        "ON CONFLICT DO NOTHING",
        &rows,
        bind_event,
    )
    .await
    .map_err(classify)?;
    Ok(())
}

fn bind_status<'q>(q: Q<'q>, m: &'q &AcceptedMessage) -> Q<'q> {
    let s = m.telemetry.status.as_ref();
    q.bind(m.device_key)
        .bind(m.telemetry.key.boot)
        .bind(m.telemetry.key.seq)
        .bind(m.received_at)
        .bind(s.and_then(|s| s.battery_pct).map(i16::from))
        .bind(s.and_then(|s| s.charging))
        .bind(s.and_then(|s| s.strap).map(|x| x.as_str()))
        .bind(s.and_then(|s| s.beacon))
        .bind(s.and_then(|s| s.rssi_dbm))
        .bind(s.and_then(|s| s.firmware.as_deref()))
}

async fn upsert_status(
    conn: &mut SqliteConnection,
    fresh: &[&AcceptedMessage],
) -> Result<(), StoreError> {
    // One row per device per statement, the newest: within one boot a higher
    // seq is newer; across boots (a restart, a reflashed counter, or the
    // OwnTracks stream beside the native one) the later receive wins.
    let mut latest: HashMap<i64, &AcceptedMessage> = HashMap::new();
    for m in fresh.iter().filter(|m| m.telemetry.status.is_some()) {
        let e = latest.entry(m.device_key).or_insert(m);
        if m.telemetry.key > e.telemetry.key {
            *e = m;
        }
    }
    let mut rows: Vec<&AcceptedMessage> = latest.into_values().collect();
    rows.sort_by_key(|m| m.device_key);
    insert_rows(
        conn,
        "INSERT INTO device_status (device_key, boot, seq, received_at, battery_pct, \
         charging, strap, beacon, rssi_dbm, firmware)",
        10,
        "ON CONFLICT (device_key) DO UPDATE SET boot = excluded.boot, seq = excluded.seq, \
         received_at = excluded.received_at, battery_pct = excluded.battery_pct, \
         charging = excluded.charging, strap = excluded.strap, beacon = excluded.beacon, \
         rssi_dbm = excluded.rssi_dbm, firmware = excluded.firmware \
         WHERE (device_status.boot = excluded.boot AND device_status.seq < excluded.seq) \
            OR (device_status.boot <> excluded.boot \
                AND device_status.received_at <= excluded.received_at)",
        &rows,
        bind_status,
    )
    .await
    .map_err(classify)?;
    Ok(())
}

/// A rejection row with its dedupe key computed once.
struct RejectionInsert<'a> {
    r: &'a RejectionRow,
    dedupe: [u8; 16],
}

fn bind_rejection<'q>(q: Q<'q>, x: &'q RejectionInsert<'_>) -> Q<'q> {
    let r = x.r;
    q.bind(r.received_at)
        .bind(clean_text(&r.topic))
        .bind(r.device_key)
        .bind(r.device_claim.as_deref().map(clean_text))
        .bind(r.key.map(|k| k.boot))
        .bind(r.key.map(|k| k.seq))
        .bind(r.item.map(|(k, _)| k.as_str()))
        .bind(r.item.map(|(_, i)| i64::from(i)))
        .bind(r.reason.as_str())
        .bind(clean_text(&r.detail))
        .bind(r.payload.as_deref())
        .bind(&x.dedupe[..])
}

async fn insert_rejections(
    conn: &mut SqliteConnection,
    rows: &[RejectionRow],
) -> Result<Vec<RejectReason>, StoreError> {
    let rows: Vec<RejectionInsert> = rows
        .iter()
        .map(|r| RejectionInsert {
            r,
            dedupe: r.dedupe_key(),
        })
        .collect();
    let inserted = insert_rows(
        conn,
        "INSERT INTO rejected_messages (received_at, topic, device_key, device_claim, boot, seq, \
         item_kind, item_index, reason, detail, payload, dedupe_key)",
        12,
        "ON CONFLICT DO NOTHING RETURNING reason",
        &rows,
        bind_rejection,
    )
    .await
    .map_err(classify)?;
    let mut out = Vec::with_capacity(inserted.len());
    for r in &inserted {
        let name: String = r.try_get(0).map_err(classify)?;
        if let Some(reason) = RejectReason::ALL.into_iter().find(|x| x.as_str() == name) {
            out.push(reason);
        }
    }
    Ok(out)
}

/// Text as PostgreSQL would store it: NUL replaced. SQLite could keep the
/// NUL, but many of its string functions stop at one, and both backends
/// should hand back the same record.
fn clean_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;

    #[test]
    fn chunk_sizes_cover_every_row_with_few_distinct_statements() {
        for n in 0..300 {
            let sizes = chunk_sizes(n);
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.iter().all(|s| s.is_power_of_two() && *s <= CHUNK));
        }
        assert_eq!(chunk_sizes(100), vec![64, 32, 4]);
    }

    async fn migrated() -> (tempfile::TempDir, SqliteStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(tmp.path()).await.unwrap();
        store.migrate().await.unwrap();
        (tmp, store)
    }

    #[tokio::test]
    async fn a_lock_held_elsewhere_is_contention_and_bad_data_is_refused() {
        let (_tmp, store) = migrated().await;
        // Another process (the CLI) writing the same file: it finds the lock
        // taken and, with no patience, fails at once.
        let mut other = sqlx::SqliteConnection::connect_with(
            &SqliteConnectOptions::new()
                .filename(store.path())
                .busy_timeout(Duration::ZERO),
        )
        .await
        .unwrap();
        let held = store.begin_write().await.unwrap();
        let busy = sqlx::query("INSERT INTO outbox_cursors VALUES ('cli', 1)")
            .execute(&mut other)
            .await
            .unwrap_err();
        let busy = classify(busy);
        assert!(matches!(busy, StoreError::Contended(_)), "{busy:?}");
        assert!(busy.is_transient());
        drop(held);

        let refused = |e: sqlx::Error| {
            let kind = e.as_database_error().map(|d| d.kind());
            match classify(e) {
                StoreError::Refused(e) => (kind, e.to_string()),
                other => panic!("not refused: {other:?}"),
            }
        };
        let bad_id = sqlx::query("INSERT INTO devices (device_id) VALUES ('-x')")
            .execute(store.write_pool())
            .await
            .unwrap_err();
        assert_eq!(
            refused(bad_id).0,
            Some(sqlx::error::ErrorKind::CheckViolation)
        );
        let twice = "INSERT INTO devices (device_id) VALUES ('tag-1')";
        sqlx::query(twice)
            .execute(store.write_pool())
            .await
            .unwrap();
        let dup = sqlx::query(twice)
            .execute(store.write_pool())
            .await
            .unwrap_err();
        assert_eq!(
            refused(dup).0,
            Some(sqlx::error::ErrorKind::UniqueViolation)
        );
        sqlx::query(
            "INSERT INTO audit_log (at, actor, role, action) \
             VALUES ('2026-01-01T00:00:00+00:00', 'a', 'admin', 'x')",
        )
        .execute(store.write_pool())
        .await
        .unwrap();
        let erase = sqlx::query("DELETE FROM audit_log")
            .execute(store.write_pool())
            .await
            .unwrap_err();
        assert!(refused(erase).1.contains("append-only"));
        // Read-only connections refuse writes; that is a misuse of the pool,
        // not a property of the data, so nothing gets isolated for it.
        let ro = sqlx::query("DELETE FROM outbox_cursors")
            .execute(store.read_pool())
            .await
            .unwrap_err();
        assert!(matches!(classify(ro), StoreError::Unavailable(_)));
        assert!(classify(sqlx::Error::PoolTimedOut).is_transient());
    }

    #[tokio::test]
    async fn reopening_keeps_the_data_and_the_migrations() {
        let (tmp, store) = migrated().await;
        store
            .add_device(&DeviceId::parse("tag-1").unwrap(), None, Utc::now())
            .await
            .unwrap();
        store.write_pool().close().await;
        store.read_pool().close().await;
        let again = SqliteStore::open(tmp.path()).await.unwrap();
        again.migrate().await.unwrap();
        assert_eq!(again.devices().await.unwrap().len(), 1);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(again.read_pool())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn a_file_where_the_directory_should_be_is_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = SqliteStore::open(&file).await.unwrap_err().to_string();
        assert!(err.contains("not-a-dir"), "{err}");
        assert!(err.contains("not a directory"), "{err}");

        let dir = tmp.path().join("data");
        std::fs::create_dir_all(dir.join(DB_FILE)).unwrap();
        let err = SqliteStore::open(&dir).await.unwrap_err().to_string();
        assert!(
            err.contains("waypoint.db exists and is not a file"),
            "{err}"
        );
        assert!(!StoreError::Invalid(err).is_transient());
    }
}
