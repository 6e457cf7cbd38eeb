//! The shard's side of the rules engine: per-device state in memory, loaded
//! lazily from the store, and the [`CommitHook`] that evaluates a batch's
//! new messages inside its transaction.
//!
//! Evaluation works on staged copies of the devices' states; they replace
//! the live ones only when the transaction commits, so a failed or retried
//! commit can never leave memory ahead of the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::super::rules::engine::{DeviceState, Evaluator, Output};
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::rules::Rules;
use crate::store::{AcceptedMessage, AlertWrites, CommitHook, Prepared, StateRow};

#[derive(Default)]
struct States {
    live: HashMap<i64, DeviceState>,
    staged: HashMap<i64, DeviceState>,
}

/// One shard's rules state.
pub struct ShardRules {
    rules: Arc<Rules>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    states: Mutex<States>,
}

impl ShardRules {
    /// Empty state; devices are loaded on first sight.
    pub fn new(rules: Arc<Rules>, clock: SharedClock, metrics: Arc<Metrics>) -> Self {
        Self {
            rules,
            clock,
            metrics,
            states: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, States> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Devices of `items` whose state is not in memory yet.
    pub fn missing(&self, items: &[Prepared]) -> Vec<i64> {
        let s = self.lock();
        let mut keys: Vec<i64> = items
            .iter()
            .filter_map(|p| match p {
                Prepared::Accepted(m) if !s.live.contains_key(&m.device_key) => Some(m.device_key),
                _ => None,
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Installs states read from the store; requested devices without a row
    /// start empty. An unreadable row (written by a newer version?) also
    /// starts empty rather than stopping the shard: the unique index still
    /// prevents duplicate alerts.
    pub fn install(&self, requested: &[i64], rows: Vec<StateRow>) {
        let mut s = self.lock();
        for r in rows {
            let st = serde_json::from_value::<DeviceState>(r.state).unwrap_or_else(|e| {
                tracing::warn!(device_key = r.device_key, error = %e, "unreadable device state; starting fresh");
                DeviceState::default()
            });
            s.live.insert(
                r.device_key,
                DeviceState {
                    version: r.version,
                    ..st
                },
            );
        }
        for k in requested {
            s.live.entry(*k).or_default();
        }
    }

    /// Keeps victims' positions out of storage (they serve the proximity
    /// check only).
    pub fn mark_private(&self, p: &mut Prepared) {
        if let Prepared::Accepted(m) = p {
            if !self
                .rules
                .snapshot()
                .victim_pairings(m.device_key)
                .is_empty()
            {
                m.store_fixes = false;
            }
        }
    }

    /// The transaction committed: staged states become live.
    pub fn commit_staged(&self) {
        let mut s = self.lock();
        let staged = std::mem::take(&mut s.staged);
        s.live.extend(staged);
    }

    /// The transaction failed: forget staged states.
    pub fn discard_staged(&self) {
        self.lock().staged.clear();
    }

    /// Devices held in memory.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// Whether no device is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A device's live state (tests).
    pub fn state(&self, device_key: i64) -> Option<DeviceState> {
        self.lock().live.get(&device_key).cloned()
    }
}

impl CommitHook for ShardRules {
    fn evaluate(&self, fresh: &[&AcceptedMessage]) -> AlertWrites {
        let started = std::time::Instant::now();
        let snap = self.rules.snapshot();
        let ev = Evaluator {
            snap: &snap,
            cfg: &self.rules.cfg,
            board: &self.rules.board,
        };
        let mut out = Output::default();
        let mut guard = self.lock();
        let s = &mut *guard;
        s.staged.clear();
        for m in fresh {
            let st = s
                .staged
                .entry(m.device_key)
                .or_insert_with(|| s.live.get(&m.device_key).cloned().unwrap_or_default());
            ev.message(st, m, &mut out);
        }
        let mut states = Vec::new();
        for (k, st) in s.staged.iter_mut() {
            let before = s.live.get(k);
            if before.is_some_and(|b| !st.needs_write(b)) {
                continue;
            }
            st.version += 1;
            st.checkpoint = st.newest_fix;
            states.push(StateRow {
                device_key: *k,
                version: st.version,
                last_seen: st.last_seen,
                state: serde_json::to_value(&*st).unwrap_or_default(),
            });
        }
        self.metrics
            .rules_eval_seconds
            .observe(started.elapsed().as_secs_f64());
        AlertWrites {
            now: self.clock.now(),
            ops: out.ops,
            states,
            timeline: out.timeline,
        }
    }
}
