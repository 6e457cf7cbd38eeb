//! Retention: raw fixes, refusals and the de-duplication ledger are deleted
//! once older (by server receive time) than the configured number of days;
//! fixes that are evidence of an alert stay as long as the alert does.
//!
//! What "evidence" covers (docs/storage.md, "Retention"): every fix of the
//! alert's device whose event time lies from `started_at` −
//! [`EVIDENCE_MARGIN`] to the later of `last_evidence_at` and
//! `condition_ended_at`, + [`EVIDENCE_MARGIN`]: the track the officer's alert
//! view shows, so the picture behind a decision stays complete. Alerts are
//! never deleted, so neither are those fixes. `alert_evidence` keeps its
//! own copies of the observations besides.
//!
//! One background task per server deletes in bounded batches (each its own
//! short transaction) with a pause between them, at start and then every
//! [`RetentionConfig::every`]. Each pass after the first only looks at rows
//! received since the previous pass's cutoff, so kept evidence fixes are not
//! re-examined every hour; every [`FULL_PASS_EVERY`]th pass looks at
//! everything again, in case another process wrote behind the cutoff.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::store::{PurgeReport, PurgeWindow, Store, StoreError, EVIDENCE_MARGIN};

/// Default retention of raw fixes and refusals, in days.
pub const DEFAULT_DAYS: u32 = 90;
/// Shortest retention allowed. The ledger (`messages`) is purged with the
/// same cutoff, and a ledger row must outlive every possible redelivery of
/// its message (broker session expiry, 1 day by default; a device retrying
/// after a lost PUBACK): a week is far beyond both. See also the check
/// against `--session-expiry-secs` in [`crate::config`].
pub const MIN_DAYS: u32 = 7;
/// Longest retention allowed (ten years); keeping raw positions of people
/// forever is not an option this server offers.
pub const MAX_DAYS: u32 = 3650;
/// Every this many passes, one looks at all rows again, not only those
/// received since the previous pass.
pub const FULL_PASS_EVERY: u32 = 24;

/// Invalid retention settings.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// Days outside [`MIN_DAYS`]..=[`MAX_DAYS`].
    #[error("retention of {0} days is outside {MIN_DAYS}..={MAX_DAYS}")]
    Days(u32),
}

/// How retention runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Rows received more than this many days ago are deleted.
    pub days: u32,
    /// Time between passes (wall time; the cutoff comes from the clock).
    pub every: Duration,
    /// Most rows per table deleted in one transaction.
    pub batch: usize,
    /// Pause between batches, so ingest gets the database (on SQLite, the
    /// one writer) in between.
    pub pause: Duration,
}

impl RetentionConfig {
    /// `days` of retention with the default schedule: hourly passes of
    /// 1,000-row batches 20 ms apart (a few milliseconds of writer time
    /// each on SQLite; about 50,000 rows per second at most).
    pub fn new(days: u32) -> Result<Self, RetentionError> {
        if !(MIN_DAYS..=MAX_DAYS).contains(&days) {
            return Err(RetentionError::Days(days));
        }
        Ok(Self {
            days,
            every: Duration::from_secs(3600),
            batch: 1_000,
            pause: Duration::from_millis(20),
        })
    }

    /// The retention as a time span.
    pub fn period(&self) -> TimeDelta {
        TimeDelta::days(i64::from(self.days))
    }

    /// Rows received before this are past retention at `now`.
    pub fn cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now.checked_sub_signed(self.period())
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self::new(DEFAULT_DAYS).expect("the default is in range")
    }
}

/// Oldest receive time a full pass walks back to in slices; anything older
/// goes in one last open-ended slice (the protocol refuses fix times before
/// 2000, so normally there is nothing there).
fn slice_floor() -> DateTime<Utc> {
    DateTime::from_timestamp(946_684_800, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Deletes everything in `window` in batches of `cfg.batch`, pausing
/// `cfg.pause` between them; stops early (with what was done) on `cancel`.
///
/// Kept evidence fixes are looked at again by every batch of the window
/// they are in (a batch counts only what it deletes), so a window without a
/// lower bound is walked backwards in slices of 1, 2, 4, ... days: each
/// batch then re-reads only the evidence of its own slice, not of all
/// history.
pub async fn purge<S: Store>(
    store: &S,
    window: PurgeWindow,
    cfg: &RetentionConfig,
    metrics: Option<&Metrics>,
    cancel: &CancellationToken,
) -> Result<PurgeReport, StoreError> {
    if window.after.is_some() {
        return purge_slice(store, window, cfg, metrics, cancel).await;
    }
    let mut total = PurgeReport::default();
    let mut upper = window.before;
    let mut span = TimeDelta::days(1);
    while upper > slice_floor() && !cancel.is_cancelled() {
        let lower = (upper - span).max(slice_floor());
        let slice = PurgeWindow {
            after: Some(lower),
            before: upper,
        };
        total.add(purge_slice(store, slice, cfg, metrics, cancel).await?);
        upper = lower;
        span = span * 2;
    }
    // The open-ended rest (also where PostgreSQL drops a TimescaleDB
    // chunk policy).
    let rest = PurgeWindow {
        after: None,
        before: upper,
    };
    total.add(purge_slice(store, rest, cfg, metrics, cancel).await?);
    Ok(total)
}

async fn purge_slice<S: Store>(
    store: &S,
    window: PurgeWindow,
    cfg: &RetentionConfig,
    metrics: Option<&Metrics>,
    cancel: &CancellationToken,
) -> Result<PurgeReport, StoreError> {
    let mut total = PurgeReport::default();
    loop {
        let r = store.purge_expired(window, cfg.batch).await?;
        total.add(r);
        if let Some(m) = metrics {
            m.record_purge(&r);
        }
        if !r.was_full(cfg.batch) {
            return Ok(total);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(total),
            _ = tokio::time::sleep(cfg.pause) => {}
        }
    }
}

/// The background task: a pass at start, then one every `cfg.every`, until
/// cancelled. A failed pass is logged and retried at the next tick from the
/// same starting point, so nothing past retention is skipped.
pub async fn run<S: Store>(
    store: S,
    cfg: RetentionConfig,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    tracing::info!(
        days = cfg.days,
        evidence_margin_min = EVIDENCE_MARGIN.num_minutes(),
        "retention: raw fixes, refusals and the message ledger are deleted after {} days; \
         alert evidence is kept",
        cfg.days
    );
    // Cutoff of the last pass that finished: rows received before it are
    // done (deleted, or kept as evidence for good).
    let mut done_until: Option<DateTime<Utc>> = None;
    let mut passes: u32 = 0;
    loop {
        let before = cfg.cutoff(clock.now());
        let after = if passes.is_multiple_of(FULL_PASS_EVERY) {
            None
        } else {
            done_until.filter(|d| *d <= before)
        };
        let window = PurgeWindow { after, before };
        let started = std::time::Instant::now();
        match purge(&store, window, &cfg, Some(&metrics), &cancel).await {
            Ok(r) if !cancel.is_cancelled() => {
                done_until = Some(before);
                passes = passes.wrapping_add(1);
                tracing::info!(
                    %before,
                    full = after.is_none(),
                    fixes = r.fixes,
                    rejections = r.rejections,
                    ledger = r.messages,
                    ms = started.elapsed().as_millis() as u64,
                    "retention pass done"
                );
            }
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "retention pass failed; retrying at the next tick");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(cfg.every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_bounded_and_the_cutoff_never_overflows() {
        assert!(RetentionConfig::new(MIN_DAYS - 1).is_err());
        assert!(RetentionConfig::new(MAX_DAYS + 1).is_err());
        let c = RetentionConfig::new(90).unwrap();
        let now = DateTime::from_timestamp(1_780_000_000, 0).unwrap();
        assert_eq!(c.cutoff(now), now - TimeDelta::days(90));
        assert_eq!(c.cutoff(DateTime::<Utc>::MIN_UTC), DateTime::<Utc>::MIN_UTC);
        assert_eq!(RetentionConfig::default().days, DEFAULT_DAYS);
    }
}
