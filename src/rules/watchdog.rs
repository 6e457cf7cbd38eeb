//! no_signal: the one rule driven by the server's (injectable) clock rather
//! than by event time, since it is about messages *not* arriving.
//!
//! One task owns every no_signal alert, raising and ending them, so there is
//! no race between shards and the timer. Shards report each device's newest
//! receive time into [`Liveness`] after they commit. Silence is counted only
//! from when ingest was able to hear the device: while the broker
//! connection is down or a shard is stalled on the database, and for one
//! threshold after it recovers, the server's own deafness is not blamed on
//! devices. Nor is silence from before the server knew of an assignment:
//! assignments are often recorded retroactively (a scenario loaded now with a
//! start in the past), so a never-heard device's silence counts at the
//! earliest from when this task first saw its assignment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Rules;
use crate::alerts::{AlertKey, AlertKind, AlertOp, Confidence, NewAlert};
use crate::clock::SharedClock;
use crate::ingest::mqtt::MqttStatus;
use crate::store::{AlertWrites, Store};

/// Newest receive time per device, shared by the shards and the watchdog.
#[derive(Debug, Default)]
pub struct Liveness {
    seen: Mutex<HashMap<i64, DateTime<Utc>>>,
    /// Shards currently retrying an unavailable database.
    stalled: AtomicUsize,
}

impl Liveness {
    /// Records that `device` was heard at `at` (committed).
    pub fn heard(&self, device_key: i64, at: DateTime<Utc>) {
        let mut m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(device_key).or_insert(at);
        *e = (*e).max(at);
    }

    /// A shard started (`true`) or stopped (`false`) waiting for the database.
    pub fn set_stalled(&self, stalled: bool) {
        if stalled {
            self.stalled.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stalled.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> Vec<(i64, DateTime<Utc>)> {
        let m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// Runs until cancelled.
pub async fn run<S: Store>(
    store: S,
    rules: Arc<Rules>,
    liveness: Arc<Liveness>,
    mqtt: Arc<MqttStatus>,
    clock: SharedClock,
    on_commit: impl Fn(&crate::store::CommitReport) + Send,
    cancel: CancellationToken,
) {
    // device → receive time it had when its no_signal alert was raised; a
    // newer message ends the alert.
    let mut active: HashMap<i64, DateTime<Utc>> = HashMap::new();
    // (device, assignment start) → server-clock time this task first saw
    // that assignment worn. Only assignments worn now are kept, so memory is
    // bounded by the worn set. Those already configured at startup are seen
    // at the first tick, which fires as soon as this task starts; ingest
    // subscribes after that, so after a restart `since` still decides.
    let mut first_seen: HashMap<(i64, DateTime<Utc>), DateTime<Utc>> = HashMap::new();
    let mut loaded = false;
    let mut unstalled_since: Option<DateTime<Utc>> = None;
    let mut stall_seen = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = clock.now();
        let snap = rules.snapshot();
        // Worn now: (supervisee, assigned since), once per tick. Recorded
        // before any of the waits below so that an assignment provisioned
        // while the server is deaf or loading is still dated by when it
        // appeared, not by when the server recovered.
        let worn: HashMap<i64, (i64, DateTime<Utc>)> = snap
            .worn_at(now)
            .map(|(d, sup, from)| (d, (sup, from)))
            .collect();
        first_seen.retain(|(d, from), _| worn.get(d).is_some_and(|(_, f)| f == from));
        for (d, (_, from)) in &worn {
            first_seen.entry((*d, *from)).or_insert(now);
        }
        if !loaded {
            // Restart: recover what was heard and which alerts are active.
            match (
                store.last_seen_all().await,
                store.active_alert_devices(AlertKind::NoSignal).await,
            ) {
                (Ok(seen), Ok(act)) => {
                    for (d, t) in seen {
                        liveness.heard(d, t);
                    }
                    let seen: HashMap<i64, DateTime<Utc>> =
                        liveness.snapshot().into_iter().collect();
                    for d in act {
                        active.insert(d, seen.get(&d).copied().unwrap_or(now));
                    }
                    loaded = true;
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "no_signal watchdog cannot load state yet");
                    continue;
                }
            }
        }
        // Silence counts from the later of: the current subscription (set
        // by the source when the broker granted it), and the end of the
        // last database stall (seen at tick resolution).
        let Some(subscribed) = mqtt.hearing_since() else {
            continue;
        };
        if liveness.stalled.load(Ordering::Relaxed) > 0 {
            stall_seen = true;
            continue;
        }
        if stall_seen {
            stall_seen = false;
            unstalled_since = Some(now);
        }
        let since = unstalled_since.map_or(subscribed, |u| u.max(subscribed));
        let mut ops = Vec::new();
        let mut raised = Vec::new();
        let mut ended = Vec::new();
        // Devices heard at least once, and devices worn now that were never
        // heard: an assigned tag that never reports is a monitoring gap too.
        let heard: HashMap<i64, DateTime<Utc>> = liveness.snapshot().into_iter().collect();
        let mut watch: Vec<(i64, Option<DateTime<Utc>>)> =
            heard.iter().map(|(d, t)| (*d, Some(*t))).collect();
        watch.extend(
            worn.keys()
                .filter(|d| !heard.contains_key(d) && snap.victim_pairings(**d).is_empty())
                .map(|d| (*d, None)),
        );
        for (dev, seen) in watch {
            let key = AlertKey::device(dev, AlertKind::NoSignal);
            if let Some(at_raise) = active.get(&dev) {
                if let Some(seen) = seen.filter(|s| s > at_raise) {
                    ops.push(AlertOp::End {
                        key,
                        at: seen,
                        reason: "messages arriving again".into(),
                    });
                    ended.push(dev);
                }
                continue;
            }
            let Some(&(sup, assigned)) = worn.get(&dev) else {
                continue;
            };
            let interval = snap.report_interval(dev);
            let threshold = interval * rules.cfg.no_signal_intervals.min(10_000) as i32;
            // Silent since its last message or, for this wearer, since the
            // assignment; but a device is not blamed for silence before the
            // server knew of the assignment (recorded retroactively, or a
            // tag handed to a new wearer after lying unused), nor while the
            // server could not hear.
            let monitored = first_seen
                .get(&(dev, assigned))
                .map_or(assigned, |f| assigned.max(*f));
            let silent_from = seen.map_or(monitored, |s| s.max(monitored)).max(since);
            if now - silent_from < threshold {
                continue;
            }
            let tz = snap.supervisee(sup).map_or(chrono_tz::UTC, |s| s.tz);
            let local = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z");
            let explanation = match seen {
                Some(seen) => format!(
                    "No message since {} ({} min; expected every {} s).",
                    local(seen),
                    (now - seen).num_minutes(),
                    interval.num_seconds()
                ),
                // Say when monitoring began if that is visibly later than
                // the assignment's start, so the text matches `started_at`'s
                // reasoning and does not imply silence was watched for years.
                None if local(monitored).to_string() != local(assigned).to_string() => format!(
                    "No message ever received from this device since it was assigned on {} \
                     (monitored from {}; expected every {} s).",
                    local(assigned),
                    local(monitored),
                    interval.num_seconds()
                ),
                None => format!(
                    "No message ever received from this device since it was assigned on {} \
                     (expected every {} s).",
                    local(assigned),
                    interval.num_seconds()
                ),
            };
            ops.push(AlertOp::Raise(Box::new(NewAlert {
                key,
                supervisee_id: Some(sup),
                severity: rules.cfg.severities.of(AlertKind::NoSignal),
                zone_version: None,
                rule_id: None,
                confidence: Confidence::Confirmed,
                late: false,
                started_at: silent_from,
                last_evidence_at: now,
                ended_at: None,
                explanation,
                details: serde_json::json!({
                    "last_seen": seen,
                    "report_interval_s": interval.num_seconds(),
                    "threshold_s": threshold.num_seconds(),
                }),
                evidence: Vec::new(),
            })));
            raised.push((dev, seen.unwrap_or(DateTime::<Utc>::MIN_UTC)));
        }
        if ops.is_empty() {
            continue;
        }
        let w = AlertWrites {
            now,
            ops,
            ..Default::default()
        };
        match store.commit_alerts(&w).await {
            Ok(report) => {
                active.extend(raised);
                for d in ended {
                    active.remove(&d);
                }
                on_commit(&report);
            }
            Err(e) => tracing::warn!(error = %e, "no_signal changes not committed; will retry"),
        }
    }
}
