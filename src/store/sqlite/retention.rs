//! Retention on SQLite: the same rules as PostgreSQL, shaped for one writer.
//!
//! Everything that only reads (the alerts' evidence windows, the next page
//! of candidates in `received_at` index order) runs on the read pool; the
//! writer is taken only for point deletes by primary key, a few hundred per
//! short transaction, so ingest batches queued behind it wait milliseconds. Two things SQLite does badly are avoided on purpose: a
//! row-value `IN (SELECT ...)` delete on these WITHOUT ROWID tables uses
//! only the key's first column (scanning a device's whole history per
//! batch), and `alerts` has no index on `device_key`, so an SQL `NOT EXISTS`
//! would scan every alert for every candidate fix. The evidence windows are
//! read once per call instead and checked here, on decoded times.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::SqlitePool;

use super::{classify, BEGIN_WRITE};
use crate::store::{PurgeReport, PurgeWindow, StoreError, EVIDENCE_MARGIN};

/// Point deletes per write transaction: ~130 µs each through sqlx (measured,
/// release build), so an ingest batch queued behind retention waits about
/// 30 ms at most.
const DELETES_PER_TX: usize = 250;

const EVIDENCE_WINDOWS: &str = "\
SELECT device_key, started_at,
       max(last_evidence_at, coalesce(condition_ended_at, last_evidence_at))
FROM alerts";

/// A fix's primary key: (device_key, fix_time, boot, seq, idx).
type FixKey = (i64, DateTime<Utc>, i64, i64, i64);
/// A candidate: its key columns, then `received_at`.
type FixRow = (i64, DateTime<Utc>, i64, i64, i64, DateTime<Utc>);
/// Event-time spans (margin included) whose fixes are kept, by device.
type KeepWindows = HashMap<i64, Vec<(DateTime<Utc>, DateTime<Utc>)>>;

const FIRST_FIXES: &str = "\
SELECT device_key, fix_time, boot, seq, idx, received_at FROM fixes
WHERE received_at < ?1 AND (?2 IS NULL OR received_at >= ?2)
ORDER BY received_at, device_key, fix_time, boot, seq, idx LIMIT ?3";

/// The next page after a cursor: the row value walks the index in order.
const NEXT_FIXES: &str = "\
SELECT device_key, fix_time, boot, seq, idx, received_at FROM fixes
WHERE received_at < ?1 AND (?2 IS NULL OR received_at >= ?2)
  AND (received_at, device_key, fix_time, boot, seq, idx) > (?4, ?5, ?6, ?7, ?8, ?9)
ORDER BY received_at, device_key, fix_time, boot, seq, idx LIMIT ?3";

const DELETE_FIX: &str = "\
DELETE FROM fixes WHERE device_key = ?1 AND fix_time = ?2 AND boot = ?3 AND seq = ?4 AND idx = ?5";

const PURGE_REJECTIONS: &str = "\
DELETE FROM rejected_messages WHERE id IN (
    SELECT id FROM rejected_messages
    WHERE received_at < ?1 AND (?2 IS NULL OR received_at >= ?2)
    LIMIT ?3)";

const LEDGER_PAGE: &str = "\
SELECT device_key, boot, seq FROM messages
WHERE received_at < ?1 AND (?2 IS NULL OR received_at >= ?2)
LIMIT ?3";

const DELETE_LEDGER: &str = "DELETE FROM messages WHERE device_key = ?1 AND boot = ?2 AND seq = ?3";

pub(super) async fn purge(
    read: &SqlitePool,
    write: &SqlitePool,
    window: PurgeWindow,
    batch: usize,
) -> Result<PurgeReport, StoreError> {
    let limit = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
    Ok(PurgeReport {
        fixes: purge_fixes(read, write, window, limit).await?,
        rejections: purge_rejections(write, window, limit).await?,
        messages: purge_ledger(read, write, window, limit).await?,
    })
}

/// Deletes up to `limit` fixes outside every evidence window, paging past
/// the kept ones (they never count against the batch).
async fn purge_fixes(
    read: &SqlitePool,
    write: &SqlitePool,
    window: PurgeWindow,
    limit: i64,
) -> Result<u64, StoreError> {
    let rows: Vec<(i64, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(EVIDENCE_WINDOWS)
        .fetch_all(read)
        .await
        .map_err(classify)?;
    let mut keep = KeepWindows::new();
    for (device, from, to) in rows {
        keep.entry(device)
            .or_default()
            .push((from - EVIDENCE_MARGIN, to + EVIDENCE_MARGIN));
    }
    let kept = |k: &FixKey| {
        keep.get(&k.0)
            .is_some_and(|ws| ws.iter().any(|(lo, hi)| *lo <= k.1 && k.1 <= *hi))
    };
    let mut deleted = 0u64;
    let mut cursor: Option<(DateTime<Utc>, FixKey)> = None;
    while deleted < limit as u64 {
        let q = match &cursor {
            None => sqlx::query_as(FIRST_FIXES),
            Some(_) => sqlx::query_as(NEXT_FIXES),
        };
        let mut q = q.bind(window.before).bind(window.after).bind(limit);
        if let Some((at, k)) = &cursor {
            q = q
                .bind(*at)
                .bind(k.0)
                .bind(k.1)
                .bind(k.2)
                .bind(k.3)
                .bind(k.4);
        }
        let page: Vec<FixRow> = q.fetch_all(read).await.map_err(classify)?;
        let Some(last) = page.last() else { break };
        cursor = Some((last.5, (last.0, last.1, last.2, last.3, last.4)));
        let doomed: Vec<FixKey> = page
            .iter()
            .map(|r| (r.0, r.1, r.2, r.3, r.4))
            .filter(|k| !kept(k))
            .collect();
        for chunk in doomed.chunks(DELETES_PER_TX) {
            let mut tx = write.begin_with(BEGIN_WRITE).await.map_err(classify)?;
            for k in chunk {
                deleted += sqlx::query(DELETE_FIX)
                    .bind(k.0)
                    .bind(k.1)
                    .bind(k.2)
                    .bind(k.3)
                    .bind(k.4)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?
                    .rows_affected();
            }
            tx.commit().await.map_err(classify)?;
        }
        if (page.len() as i64) < limit {
            break;
        }
    }
    Ok(deleted)
}

async fn purge_rejections(
    write: &SqlitePool,
    window: PurgeWindow,
    limit: i64,
) -> Result<u64, StoreError> {
    // `id` is the rowid: this plan is a rowid lookup per row.
    let mut tx = write.begin_with(BEGIN_WRITE).await.map_err(classify)?;
    let n = sqlx::query(PURGE_REJECTIONS)
        .bind(window.before)
        .bind(window.after)
        .bind(limit)
        .execute(&mut *tx)
        .await
        .map_err(classify)?
        .rows_affected();
    tx.commit().await.map_err(classify)?;
    Ok(n)
}

async fn purge_ledger(
    read: &SqlitePool,
    write: &SqlitePool,
    window: PurgeWindow,
    limit: i64,
) -> Result<u64, StoreError> {
    let page: Vec<(i64, i64, i64)> = sqlx::query_as(LEDGER_PAGE)
        .bind(window.before)
        .bind(window.after)
        .bind(limit)
        .fetch_all(read)
        .await
        .map_err(classify)?;
    let mut n = 0;
    for chunk in page.chunks(DELETES_PER_TX) {
        let mut tx = write.begin_with(BEGIN_WRITE).await.map_err(classify)?;
        for (device, boot, seq) in chunk {
            n += sqlx::query(DELETE_LEDGER)
                .bind(device)
                .bind(boot)
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(classify)?
                .rows_affected();
        }
        tx.commit().await.map_err(classify)?;
    }
    Ok(n)
}
