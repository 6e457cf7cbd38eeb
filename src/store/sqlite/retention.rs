//! Retention on SQLite: the same rules as PostgreSQL, in batches small
//! enough that the one writer is back for ingest within milliseconds.
//!
//! Times are RFC 3339 text; the evidence window is compared through
//! `julianday`, which parses that text (offset and fraction included), so
//! no text arithmetic can misorder a boundary.

use sqlx::SqlitePool;

use super::{classify, BEGIN_WRITE};
use crate::store::{PurgeReport, PurgeWindow, StoreError, EVIDENCE_MARGIN};

const PURGE_FIXES: &str = "\
DELETE FROM fixes WHERE (device_key, fix_time, boot, seq, idx) IN (
    SELECT c.device_key, c.fix_time, c.boot, c.seq, c.idx FROM fixes c
    WHERE c.received_at < ?1 AND (?2 IS NULL OR c.received_at >= ?2)
      AND NOT EXISTS (
          SELECT 1 FROM alerts a
          WHERE a.device_key = c.device_key
            AND julianday(c.fix_time) >= julianday(a.started_at) - ?4
            AND julianday(c.fix_time)
                <= julianday(max(a.last_evidence_at,
                                 coalesce(a.condition_ended_at, a.last_evidence_at))) + ?4)
    LIMIT ?3)";

const PURGE_REJECTIONS: &str = "\
DELETE FROM rejected_messages WHERE id IN (
    SELECT id FROM rejected_messages
    WHERE received_at < ?1 AND (?2 IS NULL OR received_at >= ?2)
    LIMIT ?3)";

const PURGE_LEDGER: &str = "\
DELETE FROM messages WHERE (device_key, boot, seq) IN (
    SELECT device_key, boot, seq FROM messages
    WHERE received_at < ?1 AND (?2 IS NULL OR received_at >= ?2)
    LIMIT ?3)";

pub(super) async fn purge(
    write: &SqlitePool,
    window: PurgeWindow,
    batch: usize,
) -> Result<PurgeReport, StoreError> {
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    // julianday counts days; a little over the margin so rounding of the
    // double can only ever keep a boundary fix, never drop one.
    let margin_days = EVIDENCE_MARGIN.num_seconds() as f64 / 86_400.0 + 1e-6;
    let run = |sql: &'static str, with_margin: bool| {
        let write = write.clone();
        async move {
            // One short write transaction per table and batch: the writer
            // is released between them for the ingest batches queued behind.
            let mut tx = write.begin_with(BEGIN_WRITE).await.map_err(classify)?;
            let mut q = sqlx::query(sql)
                .bind(window.before)
                .bind(window.after)
                .bind(limit);
            if with_margin {
                q = q.bind(margin_days);
            }
            let n = q.execute(&mut *tx).await.map_err(classify)?.rows_affected();
            tx.commit().await.map_err(classify)?;
            Ok::<u64, StoreError>(n)
        }
    };
    let fixes = run(PURGE_FIXES, true).await?;
    let rejections = run(PURGE_REJECTIONS, false).await?;
    let messages = run(PURGE_LEDGER, false).await?;
    Ok(PurgeReport {
        fixes,
        rejections,
        messages,
    })
}
