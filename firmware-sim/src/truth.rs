//! Ground truth: what the server should raise, derived from the true
//! trajectory and device state (not from the noisy fixes the server sees),
//! and the comparison with the alerts that actually arrived.
//!
//! Each rule is tracked per device as *runs*: a run opens at the first fix
//! that breaks the rule (or might, within the noise and accuracy margin) and
//! closes after the server's own hysteresis of clearly compliant fixes. A run
//! with `confirm` consecutive clear violations is **expected** — the server
//! must raise for it. A run that only came near the boundary is **optional**:
//! an alert for it is neither missed nor unexpected, because the server may
//! rightly call a noisy fix "possible" or "probable". Every alert that falls
//! in no run is **unexpected**.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// Alert kinds the simulator checks, as the server names them.
pub const KINDS: [&str; 9] = [
    "exclusion_zone_entry",
    "inclusion_zone_exit",
    "curfew_violation",
    "victim_proximity",
    "strap_tamper",
    "battery_low",
    "battery_critical",
    "gps_loss",
    "no_signal",
];

/// How one observation stands against a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Clearly breaks it.
    Bad,
    /// Clearly keeps it.
    Good,
    /// Within the noise/accuracy margin of the boundary.
    Unsure,
}

/// A stretch of time during which a rule was (or may have been) broken.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Episode {
    /// Alert kind.
    pub kind: &'static str,
    /// First observation of the run, epoch ms (device time; wall clock for no_signal).
    pub first_ms: i64,
    /// Last non-compliant observation, epoch ms.
    pub last_ms: i64,
    /// The server must raise an alert for it.
    pub must: bool,
    /// Some observations were within the margin (more than one alert is acceptable).
    pub ambiguous: bool,
    /// Time of the observation that made the run expected: the server's
    /// alert must not be decided by a later one (its `last_evidence_at`).
    pub decided_ms: Option<i64>,
}

/// Debounced run tracker for one rule of one device.
#[derive(Debug, Clone)]
pub struct Tracker {
    kind: &'static str,
    confirm: u32,
    close_after: u32,
    bad: u32,
    good: u32,
    open: Option<Episode>,
    /// Closed runs.
    pub done: Vec<Episode>,
}

impl Tracker {
    /// A tracker: `confirm` consecutive clear violations make a run
    /// expected; `close_after` consecutive clear compliant observations end it.
    pub fn new(kind: &'static str, confirm: u32, close_after: u32) -> Tracker {
        Tracker {
            kind,
            confirm: confirm.max(1),
            close_after: close_after.max(1),
            bad: 0,
            good: 0,
            open: None,
            done: Vec::new(),
        }
    }

    /// One observation at `ts` (observations must come in time order).
    pub fn observe(&mut self, ts: i64, c: Class) {
        let kind = self.kind;
        let run = |open: &mut Option<Episode>| {
            open.get_or_insert(Episode {
                kind,
                first_ms: ts,
                last_ms: ts,
                must: false,
                ambiguous: false,
                decided_ms: None,
            })
            .last_ms = ts;
        };
        match c {
            Class::Bad => {
                self.good = 0;
                self.bad += 1;
                run(&mut self.open);
                if self.bad >= self.confirm {
                    if let Some(r) = self.open.as_mut().filter(|r| !r.must) {
                        r.must = true;
                        r.decided_ms = Some(ts);
                    }
                }
            }
            Class::Unsure => {
                self.good = 0;
                self.bad = 0;
                run(&mut self.open);
                if let Some(r) = self.open.as_mut() {
                    r.ambiguous = true;
                }
            }
            Class::Good => {
                self.bad = 0;
                self.good += 1;
                if self.good >= self.close_after {
                    self.close();
                }
            }
        }
    }

    /// Ends the open run, if any.
    pub fn close(&mut self) {
        if let Some(r) = self.open.take() {
            self.done.push(r);
        }
    }

    /// Adds a run decided elsewhere (gps_loss, no_signal).
    pub fn push(&mut self, e: Episode) {
        self.done.push(e);
    }

    /// All runs, the open one closed.
    pub fn finish(mut self) -> Vec<Episode> {
        self.close();
        self.done
    }
}

/// Classifies a position against a boundary at signed depth `depth_m`
/// (positive = on the violating side) for a fix whose noise stays within
/// `noise_m` and which reports accuracy `acc_m`. The server calls a fix
/// compliant only when the boundary is farther than its accuracy, so the
/// compliant side needs the accuracy on top of the noise.
pub fn classify(depth_m: f64, noise_m: f64, acc_m: f64) -> Class {
    if depth_m > noise_m + 1.0 {
        Class::Bad
    } else if -depth_m > noise_m + acc_m + 1.0 {
        Class::Good
    } else {
        Class::Unsure
    }
}

/// An alert as received on the alert topic (its first `raised` event).
#[derive(Debug, Clone, Serialize)]
pub struct Observed {
    /// Device id.
    pub device_id: String,
    /// Alert kind.
    pub kind: String,
    /// Server alert id.
    pub alert_id: i64,
    /// Alert's `started_at`, epoch ms.
    pub started_ms: i64,
    /// Raised as a late (finished) episode.
    pub late: bool,
    /// Alert's `last_evidence_at` when raised (the deciding observation), epoch ms.
    pub evidence_ms: Option<i64>,
    /// From the publish of the deciding message to arrival, ms (if known).
    pub latency_ms: Option<f64>,
}

/// Per-kind comparison.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct KindVerdict {
    /// Runs the server had to raise.
    pub expected: u64,
    /// Runs it may raise (near a boundary).
    pub optional: u64,
    /// Distinct alerts received.
    pub raised: u64,
    /// Expected runs with an alert.
    pub detected: u64,
    /// Expected runs without one.
    pub missed: u64,
    /// Alerts matching no run (or duplicating a clear-cut one).
    pub unexpected: u64,
    /// Alerts for expected runs decided later than the ground truth's
    /// deciding observation allows (debounce slower than configured).
    pub slow: u64,
}

/// The comparison for the whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// By kind.
    pub kinds: BTreeMap<String, KindVerdict>,
    /// A sample of missed runs (device, episode), for diagnosis.
    pub missed: Vec<(String, Episode)>,
    /// A sample of unexpected alerts.
    pub unexpected: Vec<Observed>,
    /// A sample of slow alerts.
    pub slow: Vec<Observed>,
}

impl Verdict {
    /// Expected runs without an alert, over all kinds.
    pub fn total_missed(&self) -> u64 {
        self.kinds.values().map(|k| k.missed).sum()
    }
    /// Alerts matching nothing, over all kinds.
    pub fn total_unexpected(&self) -> u64 {
        self.kinds.values().map(|k| k.unexpected).sum()
    }
    /// Alerts decided later than they should have been, over all kinds.
    pub fn total_slow(&self) -> u64 {
        self.kinds.values().map(|k| k.slow).sum()
    }
}

const SAMPLE: usize = 20;

/// Matches received alerts to runs. An alert matches a run of its device
/// and kind when its `started_at` lies within the run widened by `slack_ms`
/// (`slack_wall_ms` for no_signal, whose times are server wall clock). An
/// alert for an expected run is *slow* when its deciding evidence is later
/// than the run's deciding observation plus `decide_slack_ms`.
pub fn check(
    episodes: &HashMap<String, Vec<Episode>>,
    alerts: &[Observed],
    slack_ms: i64,
    slack_wall_ms: i64,
    decide_slack_ms: i64,
) -> Verdict {
    let mut v = Verdict::default();
    for k in KINDS {
        v.kinds.insert(k.to_string(), KindVerdict::default());
    }
    let mut hits: HashMap<(&str, usize), u64> = HashMap::new();
    for a in alerts {
        let kv = v.kinds.entry(a.kind.clone()).or_default();
        kv.raised += 1;
        let slack = if a.kind == "no_signal" {
            slack_wall_ms
        } else {
            slack_ms
        };
        let found = episodes.get(&a.device_id).and_then(|eps| {
            eps.iter().position(|e| {
                e.kind == a.kind
                    && a.started_ms >= e.first_ms - slack
                    && a.started_ms <= e.last_ms + slack
            })
        });
        match found {
            Some(i) => {
                *hits.entry((a.device_id.as_str(), i)).or_default() += 1;
                let e = &episodes[&a.device_id][i];
                let late = e.must
                    && matches!((e.decided_ms, a.evidence_ms), (Some(d), Some(ev)) if ev > d + decide_slack_ms);
                if late {
                    kv.slow += 1;
                    if v.slow.len() < SAMPLE {
                        v.slow.push(a.clone());
                    }
                }
            }
            None => {
                kv.unexpected += 1;
                if v.unexpected.len() < SAMPLE {
                    v.unexpected.push(a.clone());
                }
            }
        }
    }
    for (dev, eps) in episodes {
        for (i, e) in eps.iter().enumerate() {
            let kv = v.kinds.entry(e.kind.to_string()).or_default();
            let n = hits.get(&(dev.as_str(), i)).copied().unwrap_or(0);
            if e.must {
                kv.expected += 1;
                if n > 0 {
                    kv.detected += 1;
                } else {
                    kv.missed += 1;
                    if v.missed.len() < SAMPLE {
                        v.missed.push((dev.clone(), e.clone()));
                    }
                }
            } else {
                kv.optional += 1;
            }
            // One clear-cut run is one alert: more means the server flapped.
            if n > 1 && !e.ambiguous {
                kv.unexpected += n - 1;
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_need_confirmation_and_close_on_hysteresis() {
        let mut t = Tracker::new("exclusion_zone_entry", 2, 2);
        t.observe(0, Class::Good);
        t.observe(1, Class::Bad);
        t.observe(2, Class::Good); // one compliant fix does not end it
        t.observe(3, Class::Bad);
        t.observe(4, Class::Bad);
        t.observe(5, Class::Good);
        t.observe(6, Class::Good);
        t.observe(7, Class::Unsure);
        let eps = t.finish();
        assert_eq!(eps.len(), 2);
        assert!(eps[0].must && !eps[0].ambiguous);
        assert_eq!((eps[0].first_ms, eps[0].last_ms), (1, 4));
        assert!(!eps[1].must && eps[1].ambiguous);
        assert_eq!(classify(10.0, 5.0, 8.0), Class::Bad);
        assert_eq!(classify(-20.0, 5.0, 8.0), Class::Good);
        assert_eq!(classify(-10.0, 5.0, 8.0), Class::Unsure);
    }

    #[test]
    fn check_counts_missed_unexpected_and_flapping() {
        let ep = |kind, first_ms, last_ms, must| Episode {
            kind,
            first_ms,
            last_ms,
            must,
            ambiguous: false,
            decided_ms: Some(first_ms),
        };
        let mut eps = HashMap::new();
        eps.insert(
            "d1".to_string(),
            vec![
                ep("strap_tamper", 1000, 2000, true),
                ep("gps_loss", 5000, 9000, true),
            ],
        );
        eps.insert(
            "d2".to_string(),
            vec![ep("curfew_violation", 0, 100, false)],
        );
        let obs = |d: &str, kind: &str, started_ms| Observed {
            device_id: d.into(),
            kind: kind.into(),
            alert_id: started_ms,
            started_ms,
            late: false,
            evidence_ms: Some(started_ms),
            latency_ms: None,
        };
        let alerts = vec![
            obs("d1", "strap_tamper", 1000),
            obs("d1", "strap_tamper", 1500), // flapping on a clear-cut run
            obs("d1", "battery_low", 1000),  // nothing injected
            obs("d2", "curfew_violation", 50), // optional: fine
        ];
        let v = check(&eps, &alerts, 10, 10, 1000);
        assert_eq!(v.kinds["strap_tamper"].detected, 1);
        assert_eq!(v.kinds["strap_tamper"].unexpected, 1);
        assert_eq!(v.kinds["gps_loss"].missed, 1);
        assert_eq!(v.kinds["battery_low"].unexpected, 1);
        assert_eq!(v.kinds["curfew_violation"].unexpected, 0);
        assert_eq!(v.kinds["curfew_violation"].optional, 1);
        assert_eq!((v.total_missed(), v.total_unexpected()), (1, 2));
        // Raised, but decided 3 s after the truth's deciding observation.
        let mut slow = obs("d1", "gps_loss", 5000);
        slow.evidence_ms = Some(8000);
        let v = check(&eps, &[slow], 10, 10, 1000);
        assert_eq!(
            (v.kinds["gps_loss"].detected, v.kinds["gps_loss"].slow),
            (1, 1)
        );
    }
}
