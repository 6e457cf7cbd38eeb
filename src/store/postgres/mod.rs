//! PostgreSQL (and TimescaleDB) implementation of [`Store`].
//!
//! A batch is written with a handful of `INSERT ... SELECT FROM UNNEST(...)`
//! statements in one transaction: one round trip per table regardless of
//! batch size, and `ON CONFLICT DO NOTHING` keeps every write idempotent.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Row};
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
use crate::domain::DeviceId;
use crate::rules::snapshot::RulesData;
use crate::scenario::{LoadReport, Scenario};

/// NOTIFY channel the `devices` trigger publishes on (see the migration).
const DEVICE_CHANNEL: &str = "waypoint_devices";

/// Migrations embedded at build time from `migrations/postgres/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// PostgreSQL store; cheap to clone (shares the pool).
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

/// Classifies sqlx errors: anything about reaching the server, or a
/// server-requested retry, is transient; the rest is about the data.
pub fn classify(e: sqlx::Error) -> StoreError {
    let transient = match &e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08 connection, 40 rollback (deadlock/serialization), 53 resources,
            // 57 operator intervention (shutdown), 58 system error.
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| c.starts_with(class))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    };
    if transient {
        StoreError::Unavailable(e)
    } else {
        StoreError::Refused(e)
    }
}

impl PgStore {
    /// Connects a pool. `max_connections` should cover one per shard plus
    /// the device directory and readiness checks.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let opts: PgConnectOptions = url.parse().map_err(StoreError::Refused)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts.application_name("waypoint"))
            .await
            .map_err(classify)?;
        Ok(Self { pool })
    }

    /// Wraps an existing pool (tests, benches).
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool, for components that need PostgreSQL specifics (LISTEN).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn device_from_row(r: &sqlx::postgres::PgRow) -> Result<DeviceRecord, StoreError> {
    let id: String = r.get("device_id");
    let user: Option<String> = r.get("owntracks_user");
    let dev: Option<String> = r.get("owntracks_device");
    let revoked: Option<DateTime<Utc>> = r.get("revoked_at");
    Ok(DeviceRecord {
        key: r.get("device_key"),
        // The table's CHECK constraint enforces the same rule as DeviceId.
        id: DeviceId::parse(&id).map_err(|e| StoreError::NotFound(format!("{id:?}: {e}")))?,
        owntracks: user.zip(dev),
        revoked: revoked.is_some(),
    })
}

const DEVICE_COLUMNS: &str = "device_key, device_id, owntracks_user, owntracks_device, revoked_at";

/// Column arrays for one UNNEST insert of fixes; also used by the benchmark
/// baseline so both measure the same statement.
#[derive(Default)]
pub struct FixColumns {
    device_key: Vec<i64>,
    fix_time: Vec<DateTime<Utc>>,
    boot: Vec<i64>,
    seq: Vec<i64>,
    idx: Vec<i16>,
    received_at: Vec<DateTime<Utc>>,
    lat: Vec<f64>,
    lon: Vec<f64>,
    acc: Vec<f32>,
    alt: Vec<Option<f32>>,
    speed: Vec<Option<f32>>,
    heading: Vec<Option<f32>>,
    src: Vec<&'static str>,
}

/// The duplicate-safe fix insert.
pub const INSERT_FIXES: &str = "INSERT INTO fixes (device_key, fix_time, boot, seq, idx, \
     received_at, lat, lon, acc_m, alt_m, speed_mps, heading_deg, src) \
     SELECT * FROM UNNEST($1::int8[], $2::timestamptz[], $3::int8[], $4::int8[], $5::int2[], \
     $6::timestamptz[], $7::float8[], $8::float8[], $9::float4[], $10::float4[], $11::float4[], \
     $12::float4[], $13::text[]) ON CONFLICT DO NOTHING";

impl FixColumns {
    /// Appends the fixes of one message.
    pub fn push_message(&mut self, m: &AcceptedMessage) {
        if !m.store_fixes {
            return;
        }
        let t = &m.telemetry;
        for (i, f) in t.fixes.iter().enumerate() {
            self.device_key.push(m.device_key);
            self.fix_time.push(f.ts);
            self.boot.push(t.key.boot);
            self.seq.push(t.key.seq);
            // Validation caps fixes per message well below i16::MAX.
            self.idx.push(i as i16);
            self.received_at.push(m.received_at);
            self.lat.push(f.lat);
            self.lon.push(f.lon);
            self.acc.push(f.acc_m);
            self.alt.push(f.alt_m);
            self.speed.push(f.speed_mps);
            self.heading.push(f.heading_deg);
            self.src.push(f.src.as_str());
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.device_key.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.device_key.is_empty()
    }

    /// Runs [`INSERT_FIXES`] on `conn`; returns rows written.
    pub async fn insert(&self, conn: &mut sqlx::PgConnection) -> Result<u64, sqlx::Error> {
        let r = self.bind(sqlx::query(INSERT_FIXES)).execute(conn).await?;
        Ok(r.rows_affected())
    }

    /// Binds the 13 column arrays, in table order, as the next parameters.
    fn bind<'q>(
        &'q self,
        q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        q.bind(&self.device_key)
            .bind(&self.fix_time)
            .bind(&self.boot)
            .bind(&self.seq)
            .bind(&self.idx)
            .bind(&self.received_at)
            .bind(&self.lat)
            .bind(&self.lon)
            .bind(&self.acc)
            .bind(&self.alt)
            .bind(&self.speed)
            .bind(&self.heading)
            .bind(&self.src)
    }
}

/// Claims message keys in the ledger and writes the fixes of the messages
/// that were new, in one statement (one round trip). Data-modifying CTEs share
/// the statement's snapshot, so the last branch sees only ledger rows that
/// existed before this statement: exactly the redeliveries and conflicts. It
/// runs only when some key was not new (the one-time filter skips it).
const CLAIM_AND_INSERT: &str = "WITH k AS ( \
       SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::bytea[], $5::timestamptz[], \
       $6::int4[]) WITH ORDINALITY AS k(device_key, boot, seq, digest, received_at, fix_count, ord)), \
     m AS ( \
       INSERT INTO messages (device_key, boot, seq, digest, received_at, fix_count) \
       SELECT device_key, boot, seq, digest, received_at, fix_count FROM k \
       ON CONFLICT DO NOTHING RETURNING device_key, boot, seq), \
     f AS ( \
       INSERT INTO fixes (device_key, fix_time, boot, seq, idx, received_at, lat, lon, acc_m, \
       alt_m, speed_mps, heading_deg, src) \
       SELECT u.device_key, u.fix_time, u.boot, u.seq, u.idx, u.received_at, u.lat, u.lon, \
       u.acc_m, u.alt_m, u.speed_mps, u.heading_deg, u.src \
       FROM UNNEST($7::int8[], $8::timestamptz[], $9::int8[], $10::int8[], $11::int2[], \
       $12::timestamptz[], $13::float8[], $14::float8[], $15::float4[], $16::float4[], \
       $17::float4[], $18::float4[], $19::text[]) AS u(device_key, fix_time, boot, seq, idx, \
       received_at, lat, lon, acc_m, alt_m, speed_mps, heading_deg, src) \
       JOIN m USING (device_key, boot, seq) \
       ON CONFLICT DO NOTHING RETURNING 1) \
     SELECT (SELECT count(*) FROM m) AS inserted, (SELECT count(*) FROM f) AS fixes, \
       NULL::int8 AS ord, NULL::bytea AS digest \
     UNION ALL \
     SELECT NULL, NULL, k.ord, old.digest FROM k JOIN messages old USING (device_key, boot, seq) \
       WHERE (SELECT count(*) FROM m) < (SELECT count(*) FROM k)";

type Key = (i64, i64, i64);

fn key_of(m: &AcceptedMessage) -> Key {
    (m.device_key, m.telemetry.key.boot, m.telemetry.key.seq)
}

impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
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
        let mut first: HashMap<Key, usize> = HashMap::new();
        let mut candidates: Vec<usize> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            match p {
                Prepared::Rejected(r) => {
                    report.outcomes[i] = Outcome::Rejected;
                    rejections.push(RejectionRow::whole(r));
                }
                Prepared::Accepted(m) => match first.get(&key_of(m)) {
                    None => {
                        first.insert(key_of(m), i);
                        candidates.push(i);
                    }
                    Some(&j) => {
                        let Prepared::Accepted(earlier) = &batch[j] else {
                            unreachable!("only accepted messages are indexed")
                        };
                        if earlier.digest == m.digest {
                            report.outcomes[i] = Outcome::Duplicate;
                        } else {
                            report.outcomes[i] = Outcome::Conflict;
                            rejections.push(RejectionRow::conflict(
                                m,
                                "same (device, boot, seq) as an earlier message with other content",
                            ));
                        }
                    }
                },
            }
        }
        let accepted = |i: usize| match &batch[i] {
            Prepared::Accepted(m) => m.as_ref(),
            Prepared::Rejected(_) => unreachable!("candidates are accepted messages"),
        };

        let mut tx = self.pool.begin().await.map_err(classify)?;

        // 2. Claim keys and write the fixes of new messages in one round
        //    trip; keys that already existed come back with their digest:
        //    same digest is a redelivery, another digest a seq_conflict.
        let mut fresh: Vec<&AcceptedMessage> = Vec::with_capacity(candidates.len());
        if !candidates.is_empty() {
            let (mut dk, mut bt, mut sq, mut dg, mut rc, mut fc) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            let mut fixes = FixColumns::default();
            for &i in &candidates {
                let m = accepted(i);
                dk.push(m.device_key);
                bt.push(m.telemetry.key.boot);
                sq.push(m.telemetry.key.seq);
                dg.push(m.digest.to_vec());
                rc.push(m.received_at);
                fc.push(if m.store_fixes {
                    m.telemetry.fixes.len() as i32
                } else {
                    0
                });
                fixes.push_message(m);
            }
            let q = sqlx::query(CLAIM_AND_INSERT)
                .bind(&dk)
                .bind(&bt)
                .bind(&sq)
                .bind(&dg)
                .bind(&rc)
                .bind(&fc);
            let rows = fixes.bind(q).fetch_all(&mut *tx).await.map_err(classify)?;
            let mut inserted = 0usize;
            let mut existing: HashMap<usize, Vec<u8>> = HashMap::new();
            for r in rows {
                match r.get::<Option<i64>, _>("ord") {
                    None => {
                        inserted = r.get::<Option<i64>, _>("inserted").unwrap_or(0) as usize;
                        report.fixes_stored = r.get::<Option<i64>, _>("fixes").unwrap_or(0) as u64;
                    }
                    // ORDINALITY is 1-based over `candidates`.
                    Some(ord) => {
                        existing.insert(ord as usize - 1, r.get("digest"));
                    }
                }
            }
            if inserted + existing.len() != candidates.len() {
                // Another writer claimed a key after our snapshot was taken
                // (only possible with several instances): retry the batch.
                return Err(StoreError::Contended(
                    "a message key was claimed concurrently".into(),
                ));
            }
            for (pos, &i) in candidates.iter().enumerate() {
                let m = accepted(i);
                match existing.get(&pos) {
                    None => {
                        fresh.push(m);
                        rejections
                            .extend(m.item_rejections.iter().map(|r| RejectionRow::item(m, r)));
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
        }

        // 3. Everything else new messages carry.
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

    async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices"))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter().map(device_from_row).collect()
    }

    async fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
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
        .fetch_optional(&self.pool)
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
        .fetch_optional(&self.pool)
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
        .execute(&self.pool)
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
        listen(&self.pool, DEVICE_CHANNEL, tx, cancel, |n| match n {
            Some(id) => DirectoryEvent::Changed(id.to_owned()),
            None => DirectoryEvent::Resync,
        })
        .await
    }

    async fn commit_alerts(&self, writes: &AlertWrites) -> Result<CommitReport, StoreError> {
        let mut report = CommitReport::default();
        let mut tx = self.pool.begin().await.map_err(classify)?;
        alerts::write(&mut tx, writes, &mut report).await?;
        tx.commit().await.map_err(classify)?;
        Ok(report)
    }

    async fn load_device_states(&self, device_keys: &[i64]) -> Result<Vec<StateRow>, StoreError> {
        alerts::load_states(&self.pool, device_keys).await
    }

    async fn last_seen_all(&self) -> Result<Vec<(i64, DateTime<Utc>)>, StoreError> {
        sqlx::query_as("SELECT device_key, last_seen FROM device_state WHERE last_seen IS NOT NULL")
            .fetch_all(&self.pool)
            .await
            .map_err(classify)
    }

    async fn active_alert_devices(&self, kind: AlertKind) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT device_key FROM alerts WHERE kind = $1 AND condition_ended_at IS NULL",
        )
        .bind(kind.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(classify)
    }

    async fn load_rules(&self, known: &[(i64, i32)]) -> Result<RulesData, StoreError> {
        rules::load(&self.pool, known).await
    }

    async fn watch_rules(&self, tx: mpsc::Sender<()>, cancel: CancellationToken) {
        listen(&self.pool, rules::CHANNEL, tx, cancel, |_| ()).await
    }

    async fn apply_scenario(
        &self,
        scenario: &Scenario,
        actor: &str,
    ) -> Result<LoadReport, StoreError> {
        rules::apply_scenario(&self.pool, scenario, actor).await
    }

    async fn alert_events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AlertEvent>, StoreError> {
        alerts::events_after(&self.pool, after, limit).await
    }

    async fn alert_event_head(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT last_id FROM alert_event_counter")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)
    }

    async fn outbox_cursor(&self, consumer: &str) -> Result<i64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT last_event_id FROM outbox_cursors WHERE consumer = $1")
                .bind(consumer)
                .fetch_optional(&self.pool)
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
             GREATEST(outbox_cursors.last_event_id, EXCLUDED.last_event_id)",
        )
        .bind(consumer)
        .bind(last_event_id)
        .execute(&self.pool)
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
        alerts::officer_action(&self.pool, alert_id, actor, action, at).await
    }

    async fn alerts(&self, filter: &AlertFilter) -> Result<Vec<AlertRecord>, StoreError> {
        alerts::list(&self.pool, filter).await
    }

    fn api_db(&self) -> crate::store::sql::Db {
        crate::api::pool_for_api(&self.pool)
    }

    async fn purge_expired(
        &self,
        window: PurgeWindow,
        batch: usize,
    ) -> Result<PurgeReport, StoreError> {
        retention::purge(&self.pool, window, batch).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// Wakes the alert log's readers (live views, MQTT publisher) whenever any
/// process appends to it: officer actions from the CLI, other instances.
/// Wake-ups coalesce, so a burst of notifications costs one read.
pub async fn watch_alert_log(
    pool: PgPool,
    outbox: std::sync::Arc<crate::alerts::outbox::Outbox>,
    cancel: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<()>(16);
    let follow = listen(&pool, "waypoint_alert_events", tx, cancel, |_| ());
    let wake = async {
        while rx.recv().await.is_some() {
            outbox.wake();
        }
    };
    tokio::join!(follow, wake);
}

/// Follows a NOTIFY channel: `map(Some(payload))` per notification,
/// `map(None)` after every (re)connect, since notifications sent while
/// disconnected are lost and the consumer must resynchronise.
async fn listen<T: Send>(
    pool: &PgPool,
    channel: &str,
    tx: mpsc::Sender<T>,
    cancel: CancellationToken,
    map: impl Fn(Option<&str>) -> T + Send,
) {
    let pause = || async {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    while !cancel.is_cancelled() {
        let mut listener = match PgListener::connect_with(pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, channel, "LISTEN connection failed; retrying");
                pause().await;
                continue;
            }
        };
        if let Err(e) = listener.listen(channel).await {
            tracing::warn!(error = %e, channel, "LISTEN failed; retrying");
            pause().await;
            continue;
        }
        if tx.send(map(None)).await.is_err() {
            return;
        }
        loop {
            let n = tokio::select! {
                _ = cancel.cancelled() => return,
                n = listener.try_recv() => n,
            };
            let ev = match n {
                Ok(Some(n)) => map(Some(n.payload())),
                // Connection lost; the listener reconnects on the next call,
                // and whatever was sent meanwhile is gone.
                Ok(None) => map(None),
                Err(e) => {
                    tracing::warn!(error = %e, channel, "LISTEN failed; reconnecting");
                    break;
                }
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
        pause().await;
    }
}

async fn insert_events(
    conn: &mut sqlx::PgConnection,
    fresh: &[&AcceptedMessage],
) -> Result<(), StoreError> {
    let (mut dk, mut ts, mut bt, mut sq, mut ix, mut kind, mut rc) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for m in fresh {
        for (i, e) in m.telemetry.events.iter().enumerate() {
            dk.push(m.device_key);
            ts.push(e.ts);
            bt.push(m.telemetry.key.boot);
            sq.push(m.telemetry.key.seq);
            ix.push(i as i16);
            kind.push(e.kind.as_str());
            rc.push(m.received_at);
        }
    }
    if dk.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO device_events (device_key, event_time, boot, seq, idx, kind, received_at) \
         SELECT * FROM UNNEST($1::int8[], $2::timestamptz[], $3::int8[], $4::int8[], \
         $5::int2[], $6::text[], $7::timestamptz[]) ON CONFLICT DO NOTHING",
    )
    .bind(&dk)
    .bind(&ts)
    .bind(&bt)
    .bind(&sq)
    .bind(&ix)
    .bind(&kind)
    .bind(&rc)
    .execute(conn)
    .await
    .map_err(classify)?;
    Ok(())
}

async fn upsert_status(
    conn: &mut sqlx::PgConnection,
    fresh: &[&AcceptedMessage],
) -> Result<(), StoreError> {
    // ON CONFLICT DO UPDATE refuses to touch one row twice in a statement, so
    // keep the newest status per device; rows are sorted by key so concurrent
    // shards lock devices in the same order and cannot deadlock. Within one
    // boot a higher seq is newer; across boots (a restart, a reflashed
    // counter, or the OwnTracks stream beside the native one) the later
    // receive wins.
    let mut latest: HashMap<i64, &AcceptedMessage> = HashMap::new();
    for m in fresh.iter().filter(|m| m.telemetry.status.is_some()) {
        let e = latest.entry(m.device_key).or_insert(m);
        if m.telemetry.key > e.telemetry.key {
            *e = m;
        }
    }
    if latest.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<&AcceptedMessage> = latest.into_values().collect();
    rows.sort_by_key(|m| m.device_key);
    let (mut dk, mut bt, mut sq, mut rc) = (vec![], vec![], vec![], vec![]);
    let (mut bat, mut chg, mut strap, mut bcn, mut rssi, mut fw) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for m in rows {
        let s = m.telemetry.status.as_ref().expect("filtered on status");
        dk.push(m.device_key);
        bt.push(m.telemetry.key.boot);
        sq.push(m.telemetry.key.seq);
        rc.push(m.received_at);
        bat.push(s.battery_pct.map(i16::from));
        chg.push(s.charging);
        strap.push(s.strap.map(|x| x.as_str()));
        bcn.push(s.beacon);
        rssi.push(s.rssi_dbm);
        fw.push(s.firmware.as_deref());
    }
    sqlx::query(
        "INSERT INTO device_status AS s (device_key, boot, seq, received_at, battery_pct, \
         charging, strap, beacon, rssi_dbm, firmware) \
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::timestamptz[], \
         $5::int2[], $6::bool[], $7::text[], $8::bool[], $9::int2[], $10::text[]) \
         ON CONFLICT (device_key) DO UPDATE SET boot = EXCLUDED.boot, seq = EXCLUDED.seq, \
         received_at = EXCLUDED.received_at, battery_pct = EXCLUDED.battery_pct, \
         charging = EXCLUDED.charging, strap = EXCLUDED.strap, beacon = EXCLUDED.beacon, \
         rssi_dbm = EXCLUDED.rssi_dbm, firmware = EXCLUDED.firmware \
         WHERE (s.boot = EXCLUDED.boot AND s.seq < EXCLUDED.seq) \
            OR (s.boot <> EXCLUDED.boot AND s.received_at <= EXCLUDED.received_at)",
    )
    .bind(&dk)
    .bind(&bt)
    .bind(&sq)
    .bind(&rc)
    .bind(&bat)
    .bind(&chg)
    .bind(&strap)
    .bind(&bcn)
    .bind(&rssi)
    .bind(&fw)
    .execute(conn)
    .await
    .map_err(classify)?;
    Ok(())
}

async fn insert_rejections(
    conn: &mut sqlx::PgConnection,
    rows: &[RejectionRow],
) -> Result<Vec<crate::domain::RejectReason>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut rc = vec![];
    let mut topic = vec![];
    let mut dk = vec![];
    let mut claim = vec![];
    let mut bt = vec![];
    let mut sq = vec![];
    let mut ik = vec![];
    let mut ix = vec![];
    let mut reason = vec![];
    let mut detail = vec![];
    let mut payload: Vec<Option<&[u8]>> = vec![];
    let mut dedupe = vec![];
    for r in rows {
        rc.push(r.received_at);
        topic.push(pg_text(&r.topic));
        dk.push(r.device_key);
        claim.push(r.device_claim.as_deref().map(pg_text));
        bt.push(r.key.map(|k| k.boot));
        sq.push(r.key.map(|k| k.seq));
        ik.push(r.item.map(|(k, _)| k.as_str()));
        ix.push(r.item.map(|(_, i)| i as i32));
        reason.push(r.reason.as_str());
        detail.push(pg_text(&r.detail));
        payload.push(r.payload.as_deref());
        dedupe.push(r.dedupe_key().to_vec());
    }
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO rejected_messages (received_at, topic, device_key, device_claim, boot, seq, \
         item_kind, item_index, reason, detail, payload, dedupe_key) \
         SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::int8[], $4::text[], $5::int8[], \
         $6::int8[], $7::text[], $8::int4[], $9::text[], $10::text[], $11::bytea[], $12::bytea[]) \
         ON CONFLICT DO NOTHING RETURNING reason",
    )
    .bind(&rc)
    .bind(&topic)
    .bind(&dk)
    .bind(&claim)
    .bind(&bt)
    .bind(&sq)
    .bind(&ik)
    .bind(&ix)
    .bind(&reason)
    .bind(&detail)
    .bind(&payload)
    .bind(&dedupe)
    .fetch_all(conn)
    .await
    .map_err(classify)?;
    Ok(inserted
        .iter()
        .filter_map(|r| {
            crate::domain::RejectReason::ALL
                .into_iter()
                .find(|x| x.as_str() == r)
        })
        .collect())
}

/// PostgreSQL `text` cannot hold NUL; MQTT forbids it in topics but a
/// broker may pass it through, and it must not cost the refusal record.
fn pg_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}
