//! The rules engine: zones, schedules and supervision rules evaluated on
//! every fix, producing alert changes for officers.
//!
//! - [`snapshot`]: the configuration in force (supervisees, dated device
//!   assignments, zones with their R-trees, rules, exceptions, pairings),
//!   immutable and swapped whole by [`follow`] when the database notifies a
//!   change: evaluation never waits for a reload.
//! - [`engine`]: per-device evaluation on event time (debounce, hysteresis,
//!   late fixes, device reports).
//! - [`schedule`]: weekly windows in the supervisee's time zone, DST-correct.
//! - [`board`]: victims' latest positions, shared across shards.
//! - [`watchdog`]: no_signal, the one rule driven by the server's clock.

pub mod board;
pub mod engine;
pub mod schedule;
pub mod snapshot;
pub mod watchdog;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};
use board::VictimBoard;
use engine::RulesConfig;
use snapshot::Snapshot;

/// The engine's shared parts.
pub struct Rules {
    snapshot: ArcSwap<Snapshot>,
    /// Victim positions for proximity.
    pub board: VictimBoard,
    /// Thresholds.
    pub cfg: RulesConfig,
}

impl Rules {
    /// Loads the configuration once.
    pub async fn load<S: Store>(store: &S, cfg: RulesConfig) -> Result<Arc<Self>, StoreError> {
        let rules = Arc::new(Self {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            board: VictimBoard::default(),
            cfg,
        });
        rules.reload(store).await?;
        Ok(rules)
    }

    /// A rules engine with a fixed snapshot (tests, benches).
    pub fn fixed(snapshot: Snapshot, cfg: RulesConfig) -> Arc<Self> {
        Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            board: VictimBoard::default(),
            cfg,
        })
    }

    /// The snapshot in force; cheap, lock-free.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Rebuilds the snapshot from the store and swaps it in. Building (R-tree
    /// bulk loads) runs on a blocking thread, beside ingest.
    pub async fn reload<S: Store>(&self, store: &S) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let prev = self.snapshot();
        let data = store.load_rules(&prev.zone_versions()).await?;
        let snap = tokio::task::spawn_blocking(move || Snapshot::rebuild(data, Some(&prev)))
            .await
            .map_err(|e| StoreError::Invalid(format!("snapshot build failed: {e}")))?;
        for p in &snap.problems {
            tracing::warn!(problem = %p, "rules configuration entry skipped");
        }
        let (zones, rules) = snap.counts();
        self.board.retain(|d| !snap.victim_pairings(d).is_empty());
        self.snapshot.store(Arc::new(snap));
        tracing::info!(
            zones,
            rules,
            took_ms = started.elapsed().as_millis() as u64,
            "rules loaded"
        );
        Ok(())
    }
}

/// Keeps the snapshot fresh: reloads on every change notification (bursts
/// coalesced) and after every reconnect of the listener.
pub async fn follow<S: Store>(rules: Arc<Rules>, store: S, cancel: CancellationToken) {
    // Capacity 1 and try_send semantics upstream are not needed: a reload
    // reads everything, so pending notifications are drained and merged.
    let (tx, mut rx) = mpsc::channel(64);
    let watcher = tokio::spawn({
        let (store, cancel) = (store.clone(), cancel.clone());
        async move { store.watch_rules(tx, cancel).await }
    });
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            n = rx.recv() => if n.is_none() { break },
        }
        // Coalesce a burst (a scenario load touches many tables).
        tokio::time::sleep(Duration::from_millis(50)).await;
        while rx.try_recv().is_ok() {}
        let mut backoff = Duration::from_millis(200);
        while let Err(e) = rules.reload(&store).await {
            tracing::warn!(error = %e, "rules reload failed; retrying");
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
    let _ = watcher.await;
}
