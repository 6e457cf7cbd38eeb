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

    /// The transaction failed: forget staged states. The devices' live
    /// states are evicted too, to be reloaded from the store before the
    /// retry: a commit that failed on the way back (connection lost after
    /// COMMIT reached the server) may in fact have been applied, and then
    /// the retry only finds duplicates and evaluates nothing.
    pub fn discard_staged(&self) {
        let mut s = self.lock();
        let staged = std::mem::take(&mut s.staged);
        for k in staged.keys() {
            s.live.remove(k);
        }
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
        let ev = Evaluator::new(&snap, &self.rules.cfg, &self.rules.board);
        let mut out = Output::default();
        let mut guard = self.lock();
        let s = &mut *guard;
        s.staged.clear();
        // A device's messages can arrive out of order (an offline buffer
        // uploaded in several messages, retries): within the batch, evaluate
        // each device's messages by the time of their oldest item, so only
        // fixes older than what earlier batches saw are treated as late.
        let mut ordered: Vec<&AcceptedMessage> = fresh.to_vec();
        ordered.sort_by_key(|m| {
            let t = &m.telemetry;
            let first = t
                .fixes
                .iter()
                .map(|f| f.ts)
                .chain(t.events.iter().map(|e| e.ts))
                .min();
            (m.device_key, first.unwrap_or(m.received_at))
        });
        for m in ordered {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::{DeviceId, Fix, FixSource, MessageKey, Telemetry};
    use crate::rules::engine::RulesConfig;
    use crate::rules::snapshot::{
        AssignmentRow, RuleRow, RulesData, Snapshot, SuperviseeRow, ZoneRow,
    };
    use chrono::{DateTime, Utc};

    fn msg(seq: i64, secs: &[i64], inside: bool) -> AcceptedMessage {
        let t0 = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        AcceptedMessage {
            device_key: 1,
            topic: String::new(),
            received_at: t0 + chrono::TimeDelta::seconds(1000),
            digest: [0; 16],
            telemetry: Telemetry {
                device: DeviceId::parse("d").unwrap(),
                key: MessageKey { boot: 1, seq },
                fixes: secs
                    .iter()
                    .map(|s| Fix {
                        ts: t0 + chrono::TimeDelta::seconds(*s),
                        lat: if inside { 51.5 } else { 51.6 },
                        lon: -0.12,
                        acc_m: 5.0,
                        alt_m: None,
                        speed_mps: None,
                        heading_deg: None,
                        src: FixSource::Gnss,
                    })
                    .collect(),
                status: None,
                events: vec![],
            },
            item_rejections: vec![],
            payload: bytes::Bytes::new(),
            store_fixes: true,
        }
    }

    #[test]
    fn out_of_order_messages_in_a_batch_are_not_late_and_state_is_staged() {
        let data = RulesData {
            supervisees: vec![SuperviseeRow {
                id: 1,
                case_ref: "C".into(),
                time_zone: "UTC".into(),
            }],
            zones: vec![ZoneRow {
                id: 1,
                name: "Z".into(),
                list_ref: None,
                version: 1,
                geojson: Some(
                    serde_json::json!({"type": "Feature", "properties": {"radius_m": 100},
                    "geometry": {"type": "Point", "coordinates": [-0.12, 51.5]}}),
                ),
            }],
            assignments: vec![AssignmentRow {
                device_key: 1,
                supervisee_id: 1,
                from: DateTime::from_timestamp(0, 0).unwrap(),
                to: None,
            }],
            rules: vec![RuleRow {
                id: 1,
                supervisee_id: 1,
                role: "exclusion".into(),
                zone_id: Some(1),
                list_ref: None,
                schedule: None,
                confirm_fixes: 2,
                grace_s: 60,
            }],
            ..Default::default()
        };
        let rules = crate::rules::Rules::fixed(Snapshot::build(data), RulesConfig::default());
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let sr = ShardRules::new(rules, clock, Arc::new(Metrics::new()));
        // The newer message first, then the older one.
        let (newer, older) = (msg(2, &[30, 40], true), msg(1, &[10, 20], true));
        let w = sr.evaluate(&[&newer, &older]);
        let raised: Vec<_> = w
            .ops
            .iter()
            .filter_map(|o| match o {
                crate::alerts::AlertOp::Raise(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(raised.len(), 1);
        assert!(!raised[0].late, "sorted within the batch, nothing is late");
        assert_eq!(raised[0].started_at.timestamp(), 1_790_000_010);
        assert_eq!(w.states.len(), 1);
        // Nothing is live until the commit succeeds.
        assert!(sr.state(1).is_none());
        sr.discard_staged();
        assert!(sr.state(1).is_none());
        let _ = sr.evaluate(&[&newer, &older]);
        sr.commit_staged();
        assert!(sr
            .state(1)
            .is_some_and(|s| s.is_active(crate::alerts::AlertKind::ExclusionZoneEntry)));
    }
}
