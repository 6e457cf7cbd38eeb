//! A shard: prepare → batch → commit → report tickets to the acker.
//!
//! Batches flush when they hold `max_batch_fixes` fixes (or as many
//! messages), or `max_delay` after their first message, whichever is first.
//! A transient store failure is retried with capped backoff, holding the
//! batch (and so its acks): the shard stops reading, its bounded queue fills,
//! the broker's Receive Maximum stops the flow, and memory stays bounded.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::prepare::{prepare, PrepareConfig};
use super::rules::ShardRules;
use crate::alerts::outbox::Outbox;
use crate::directory::Directory;
use crate::domain::RejectReason;
use crate::ingest::{AckTicket, Incoming};
use crate::metrics::{Metrics, StageLabels};
use crate::rules::watchdog::Liveness;
use crate::store::{CommitHook, CommitReport, Outcome, Prepared, Rejection, Store, StoreError};

/// Batching settings.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Flush when a batch holds this many fixes (or messages).
    pub max_batch_fixes: usize,
    /// Flush this long after the batch's first message.
    pub max_delay: Duration,
    /// Prepare settings.
    pub prepare: PrepareConfig,
}

/// What every shard shares.
pub struct ShardContext<S> {
    /// Storage.
    pub store: S,
    /// Device directory.
    pub directory: Arc<Directory<S>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Committed tickets go here, in commit order.
    pub completions: mpsc::Sender<Vec<AckTicket>>,
    /// Fired when shutdown should stop retrying an unavailable database:
    /// unacked messages are then left to the broker to redeliver.
    pub abandon: CancellationToken,
    /// Committed receive times, for no_signal.
    pub liveness: Arc<Liveness>,
    /// Woken when alert changes were committed.
    pub outbox: Arc<Outbox>,
}

struct Batch {
    items: Vec<Prepared>,
    tickets: Vec<AckTicket>,
    fixes: usize,
    deadline: Option<Instant>,
}

impl Batch {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            tickets: Vec::new(),
            fixes: 0,
            deadline: None,
        }
    }
}

/// Runs one shard until its input closes, then flushes and returns.
pub async fn run_shard<S: Store>(
    name: String,
    mut rx: mpsc::Receiver<Incoming>,
    ctx: Arc<ShardContext<S>>,
    cfg: ShardConfig,
    rules: ShardRules,
) {
    let mut batch = Batch::new();
    // One handle for this shard's gauge: no label lookup per message.
    let depth = ctx
        .metrics
        .queue_depth
        .get_or_create(&StageLabels { stage: name })
        .clone();
    loop {
        let deadline = batch.deadline;
        tokio::select! {
            biased;
            inc = rx.recv() => {
                let Some(inc) = inc else { break };
                let Some(mut p) = with_retry(&ctx, || prepare(&inc, &ctx.directory, &cfg.prepare)).await
                else { return };
                rules.mark_private(&mut p);
                if let Prepared::Accepted(m) = &p {
                    batch.fixes += m.telemetry.fixes.len();
                    for f in &m.telemetry.fixes {
                        let lag = (m.received_at - f.ts).num_milliseconds() as f64 / 1000.0;
                        ctx.metrics.fix_lag_seconds.observe(lag.max(0.0));
                    }
                }
                batch.items.push(p);
                batch.tickets.extend(inc.ticket);
                batch.deadline.get_or_insert_with(|| Instant::now() + cfg.max_delay);
                let full = batch.fixes >= cfg.max_batch_fixes
                    || batch.items.len() >= cfg.max_batch_fixes;
                if full && !flush(&ctx, &rules, &mut batch).await {
                    return;
                }
                depth.set(rx.len() as i64);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                if !flush(&ctx, &rules, &mut batch).await { return }
            }
        }
    }
    flush(&ctx, &rules, &mut batch).await;
}

/// Retries `op` while the database is unavailable; `None` once abandoned.
async fn with_retry<S, T, F, Fut>(ctx: &ShardContext<S>, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Duration::from_millis(50);
    let mut stalled = false;
    let unstall = |stalled: bool| {
        if stalled {
            ctx.liveness.set_stalled(false);
        }
    };
    loop {
        match op().await {
            Ok(v) => {
                unstall(stalled);
                return Some(v);
            }
            Err(e) => {
                if !stalled {
                    stalled = true;
                    ctx.liveness.set_stalled(true);
                }
                ctx.metrics.store_retries.inc();
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "database unavailable; holding acks");
                tokio::select! {
                    _ = ctx.abandon.cancelled() => {
                        unstall(stalled);
                        return None;
                    }
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Commits the batch and releases its tickets; false if abandoned.
async fn flush<S: Store>(ctx: &ShardContext<S>, rules: &ShardRules, batch: &mut Batch) -> bool {
    if batch.items.is_empty() {
        return true;
    }
    let started = std::time::Instant::now();
    let items = std::mem::take(&mut batch.items);
    let Some(report) = commit_isolating(ctx, rules, &items).await else {
        return false;
    };
    for p in &items {
        if let Prepared::Accepted(m) = p {
            ctx.liveness.heard(m.device_key, m.received_at);
        }
    }
    let m = &ctx.metrics;
    m.record_alerts(&report);
    if report.alert_events > 0 {
        ctx.outbox.wake();
    }
    m.record_commit(started.elapsed());
    m.batch_messages.observe(report.outcomes.len() as f64);
    m.fixes_stored.inc_by(report.fixes_stored);
    m.messages_duplicate.inc_by(
        report
            .outcomes
            .iter()
            .filter(|o| **o == Outcome::Duplicate)
            .count() as u64,
    );
    for (r, n) in &report.rejections {
        m.reject(*r, *n);
    }
    let tickets = std::mem::take(&mut batch.tickets);
    *batch = Batch::new();
    if !tickets.is_empty() && ctx.completions.send(tickets).await.is_err() {
        tracing::error!("the MQTT source is gone; committed messages will be redelivered");
    }
    true
}

/// Commits `items`; if the database refuses the batch's data (not its
/// availability), commits message by message so one bad message is recorded
/// as `storage_rejected` instead of blocking its neighbours forever.
async fn commit_isolating<S: Store>(
    ctx: &ShardContext<S>,
    rules: &ShardRules,
    items: &[Prepared],
) -> Option<CommitReport> {
    let err = match commit_or_refused(ctx, rules, items).await? {
        Ok(report) => return Some(report),
        Err(e) => e,
    };
    tracing::error!(error = %err, messages = items.len(), "batch refused by the database; isolating");
    let mut total = CommitReport::default();
    for item in items {
        let one = [item.clone()];
        let r = match commit_or_refused(ctx, rules, &one).await? {
            Ok(r) => r,
            Err(e) => {
                let rej = [Prepared::Rejected(Box::new(storage_rejection(&one[0], &e)))];
                match commit_or_refused(ctx, rules, &rej).await? {
                    Ok(r) => r,
                    Err(e) => {
                        // Not even the refusal record fits: count it and move
                        // on rather than stall every device of this shard.
                        tracing::error!(error = %e, "could not record a storage refusal");
                        ctx.metrics.reject(RejectReason::StorageRejected, 1);
                        CommitReport {
                            outcomes: vec![Outcome::Rejected],
                            ..Default::default()
                        }
                    }
                }
            }
        };
        total.outcomes.extend(r.outcomes);
        total.fixes_stored += r.fixes_stored;
        total.alerts_raised.extend(r.alerts_raised);
        total.alert_events += r.alert_events;
        for (k, v) in r.rejections {
            *total.rejections.entry(k).or_default() += v;
        }
    }
    Some(total)
}

/// Commits, retrying while the database is unavailable; a data refusal is
/// returned as the inner `Err`. `None` once abandoned.
async fn commit_or_refused<S: Store>(
    ctx: &ShardContext<S>,
    rules: &ShardRules,
    items: &[Prepared],
) -> Option<Result<CommitReport, sqlx::Error>> {
    with_retry(ctx, || async {
        // Devices not in memory (first sight since start, or evicted after
        // a failed commit): resume their rules state from the store first.
        let missing = rules.missing(items);
        if !missing.is_empty() {
            let rows = ctx.store.load_device_states(&missing).await?;
            rules.install(&missing, rows);
        }
        let r = ctx.store.commit(items, rules as &dyn CommitHook).await;
        match &r {
            Ok(_) => rules.commit_staged(),
            Err(_) => rules.discard_staged(),
        }
        match r {
            Err(StoreError::Refused(e)) => Ok(Err(e)),
            other => other.map(Ok),
        }
    })
    .await
}

fn storage_rejection(item: &Prepared, e: &sqlx::Error) -> Rejection {
    let detail = format!("database refused the message: {e}");
    match item {
        Prepared::Rejected(r) => Rejection {
            reason: RejectReason::StorageRejected,
            detail,
            ..(**r).clone()
        },
        Prepared::Accepted(m) => Rejection {
            received_at: m.received_at,
            topic: m.topic.clone(),
            device_key: Some(m.device_key),
            device_claim: Some(m.telemetry.device.to_string()),
            key: Some(m.telemetry.key),
            reason: RejectReason::StorageRejected,
            detail,
            payload: Some(m.payload.clone()),
        }
        .capped(),
    }
}
