//! Retention on PostgreSQL: bounded batch deletes, keyed by each table's
//! primary key so the same statements work on a plain `fixes` table and on
//! a TimescaleDB hypertable (where `ctid` is per chunk and cannot name a row).

use sqlx::PgPool;

use super::classify;
use crate::store::{PurgeReport, PurgeWindow, StoreError, EVIDENCE_MARGIN};

/// Fixes past retention, oldest pages first, skipping every fix of an
/// alert's device inside the alert's evidence window. `GREATEST` ignores a
/// NULL `condition_ended_at` (condition still active).
const PURGE_FIXES: &str = "\
DELETE FROM fixes f USING (
    SELECT c.device_key, c.fix_time, c.boot, c.seq, c.idx FROM fixes c
    WHERE c.received_at < $1
      AND ($2::timestamptz IS NULL OR c.received_at >= $2)
      AND NOT EXISTS (
          SELECT 1 FROM alerts a
          WHERE a.device_key = c.device_key
            AND c.fix_time >= a.started_at - make_interval(secs => $4)
            AND c.fix_time <= GREATEST(a.last_evidence_at, a.condition_ended_at)
                              + make_interval(secs => $4))
    LIMIT $3) d
WHERE f.device_key = d.device_key AND f.fix_time = d.fix_time
  AND f.boot = d.boot AND f.seq = d.seq AND f.idx = d.idx";

const PURGE_REJECTIONS: &str = "\
DELETE FROM rejected_messages WHERE id IN (
    SELECT id FROM rejected_messages
    WHERE received_at < $1 AND ($2::timestamptz IS NULL OR received_at >= $2)
    LIMIT $3)";

const PURGE_LEDGER: &str = "\
DELETE FROM messages m USING (
    SELECT device_key, boot, seq FROM messages
    WHERE received_at < $1 AND ($2::timestamptz IS NULL OR received_at >= $2)
    LIMIT $3) d
WHERE m.device_key = d.device_key AND m.boot = d.boot AND m.seq = d.seq";

/// TimescaleDB's own retention policy (added by migration 0001) drops whole
/// chunks by fix time, evidence included; the batch job below replaces it.
/// Guarded by the extension check: without TimescaleDB the function does
/// not exist and naming it would fail.
const DROP_TIMESCALE_POLICY: &str = "\
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM remove_retention_policy('fixes', if_exists => true);
    END IF;
END $$";

pub(super) async fn purge(
    pool: &PgPool,
    window: PurgeWindow,
    batch: usize,
) -> Result<PurgeReport, StoreError> {
    // A full pass (the first after start) also makes sure no chunk-dropping
    // policy is left to delete what this job keeps.
    if window.after.is_none() {
        sqlx::query(DROP_TIMESCALE_POLICY)
            .execute(pool)
            .await
            .map_err(classify)?;
    }
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let margin = EVIDENCE_MARGIN.num_seconds() as f64;
    // Each statement is its own transaction: row locks are held for one
    // batch only, and a failure loses nothing but that batch's progress.
    let fixes = sqlx::query(PURGE_FIXES)
        .bind(window.before)
        .bind(window.after)
        .bind(limit)
        .bind(margin)
        .execute(pool)
        .await
        .map_err(classify)?
        .rows_affected();
    let rejections = sqlx::query(PURGE_REJECTIONS)
        .bind(window.before)
        .bind(window.after)
        .bind(limit)
        .execute(pool)
        .await
        .map_err(classify)?
        .rows_affected();
    let messages = sqlx::query(PURGE_LEDGER)
        .bind(window.before)
        .bind(window.after)
        .bind(limit)
        .execute(pool)
        .await
        .map_err(classify)?
        .rows_affected();
    Ok(PurgeReport {
        fixes,
        rejections,
        messages,
    })
}
