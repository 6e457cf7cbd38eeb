//! The evaluation of one device's messages against its rules.
//!
//! Pure and synchronous: (snapshot, device state, message) → (new state,
//! alert operations). The shard runs it inside the batch's transaction, on a
//! copy of the state that is kept only if the transaction commits.
//!
//! Everything runs on event time (the fixes' and reports' own timestamps),
//! so a replayed or accelerated stream behaves like a live one. Fixes are
//! evaluated in time order; a fix older than the newest already evaluated is
//! *late*: it is judged against the rules in force at its own time, may
//! raise a retrospective alert, and never changes the current state.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::board::{VictimBoard, VictimFix};
use super::snapshot::{Role, Rule, Snapshot, Target};
use crate::alerts::{
    AlertKey, AlertKind, AlertOp, Confidence, Evidence, NewAlert, Severities, MAX_EVIDENCE,
};
use crate::domain::{EventKind, Fix, StrapState};
use crate::geofence::{Probe, Relation};
use crate::store::AcceptedMessage;

/// Thresholds of the engine; every one has a flag.
#[derive(Debug, Clone)]
pub struct RulesConfig {
    /// Severity per kind.
    pub severities: Severities,
    /// battery_low at or below this percentage.
    pub battery_low_pct: u8,
    /// battery_critical at or below this percentage.
    pub battery_critical_pct: u8,
    /// A battery alert clears this many points above its threshold (or on
    /// charging), so a level hovering at the threshold does not flap.
    pub battery_hysteresis_pct: u8,
    /// no_signal after this many reporting intervals without a message.
    pub no_signal_intervals: u32,
    /// gps_loss after this long receiving messages without a usable fix.
    pub gps_loss_after: TimeDelta,
    /// Fixes with a larger accuracy radius do not count as usable for gps_loss.
    pub usable_accuracy_m: f32,
    /// A victim position older (or newer) than this relative to the
    /// supervisee's fix is not compared.
    pub proximity_max_age: TimeDelta,
    /// Consecutive compliant fixes that end an active condition (or the
    /// rule's grace of compliance): the other half of the anti-flapping.
    pub clear_fixes: u32,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            severities: Severities::default(),
            battery_low_pct: 20,
            battery_critical_pct: 10,
            battery_hysteresis_pct: 5,
            no_signal_intervals: 3,
            gps_loss_after: TimeDelta::minutes(5),
            usable_accuracy_m: 200.0,
            proximity_max_age: TimeDelta::minutes(5),
            clear_fixes: 2,
        }
    }
}

/// Last position, kept for proximity checks and explanations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LastFix {
    /// Fix time.
    pub at: DateTime<Utc>,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Accuracy radius, metres.
    pub acc: f32,
}

/// One condition being watched: pending (not yet raised) or active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// Which alert it would be.
    pub key: AlertKey,
    /// Rule it comes from, if any.
    pub rule: Option<i64>,
    /// Raised and not yet ended.
    pub active: bool,
    /// Consecutive confirmed/probable observations while pending.
    pub count: u32,
    /// Event time the violation was first seen (pending or active).
    pub since: DateTime<Utc>,
    /// Start of an uninterrupted run of only-possible observations.
    pub possible_since: Option<DateTime<Utc>>,
    /// Strongest confidence seen while pending.
    pub best: Option<Confidence>,
    /// Evidence gathered while pending (bounded).
    pub evidence: Vec<Evidence>,
    /// Consecutive compliant observations while active.
    pub clear_count: u32,
    /// When the compliant run began.
    pub clear_since: Option<DateTime<Utc>>,
}

/// Per-device rules state. Small (no condition → under 100 bytes), kept in
/// memory by the device's shard and in `device_state` by the store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Bumped on every write; lets another instance notice changes.
    #[serde(default)]
    pub version: i64,
    /// Newest fix time evaluated; older fixes are late.
    pub newest_fix: Option<DateTime<Utc>>,
    /// Newest fix.
    pub last_fix: Option<LastFix>,
    /// Server time of the newest message.
    pub last_seen: Option<DateTime<Utc>>,
    /// Event time of the first message without a usable fix after the
    /// last one with (gps_loss counts from here; silence does not count).
    #[serde(default)]
    pub unusable_since: Option<DateTime<Utc>>,
    /// Event time of the newest device report (event or status) applied;
    /// older reports cannot end an alert or change the beacon state.
    #[serde(default)]
    pub newest_report: Option<DateTime<Utc>>,
    /// Home beacon in range, as last reported.
    pub beacon: Option<bool>,
    /// Conditions being watched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Newest fix time as of the last write to the store (memory only).
    #[serde(skip)]
    pub checkpoint: Option<DateTime<Utc>>,
}

/// How stale the stored copy of a device's position bookkeeping may get.
/// Conditions (membership, debounce counters) are written whenever they
/// change; only `newest_fix`/`last_fix`/`last_seen` are checkpointed at
/// most this often (in fix time). Staleness is harmless after a restart:
/// redelivered messages are de-duplicated before evaluation, and no_signal
/// counts silence from the new subscription anyway; a genuinely late fix
/// arriving right after a restart may be judged as current.
pub const CHECKPOINT_EVERY: TimeDelta = TimeDelta::minutes(5);

impl DeviceState {
    /// Whether this state must be written, compared with `before`.
    pub fn needs_write(&self, before: &DeviceState) -> bool {
        self.conditions != before.conditions
            || self.beacon != before.beacon
            || self.unusable_since != before.unusable_since
            || self.newest_report.is_some() != before.newest_report.is_some()
            || match (self.newest_fix, before.checkpoint) {
                (Some(n), Some(c)) => n - c >= CHECKPOINT_EVERY,
                (Some(_), None) => true,
                (None, _) => before.checkpoint.is_none() && before.version == 0,
            }
    }
}

impl DeviceState {
    fn cond(&self, key: &AlertKey) -> Option<usize> {
        self.conditions.iter().position(|c| c.key == *key)
    }

    /// Whether an alert of this kind is active (for tests and views).
    pub fn is_active(&self, kind: AlertKind) -> bool {
        self.conditions
            .iter()
            .any(|c| c.key.kind == kind && c.active)
    }
}

/// A 'possible' observation kept on the device's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    /// Device.
    pub device_key: i64,
    /// Event time.
    pub at: DateTime<Utc>,
    /// Alert kind it may become.
    pub kind: AlertKind,
    /// Zone.
    pub zone_id: Option<i64>,
    /// Plain words.
    pub detail: String,
}

/// What one evaluation produces.
#[derive(Debug, Default)]
pub struct Output {
    /// Alert changes.
    pub ops: Vec<AlertOp>,
    /// Timeline entries.
    pub timeline: Vec<TimelineEntry>,
}

/// What a fix says about one condition.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Obs {
    Violation(Confidence, f64),
    Compliant,
    /// Neither: inside a hysteresis band; changes nothing.
    Hold,
    /// The rule does not apply now (schedule off, exception, removed).
    NotApplicable,
}

/// Accuracy-aware classification. `violating_point`: the fix's point breaks
/// the rule; `boundary_m`: metres from it to the boundary.
pub fn classify(violating_point: bool, boundary_m: f64, acc_m: f64) -> Option<Confidence> {
    match (violating_point, boundary_m >= acc_m) {
        (true, true) => Some(Confidence::Confirmed),
        (true, false) => Some(Confidence::Probable),
        (false, false) => Some(Confidence::Possible),
        (false, true) => None,
    }
}

fn observe(violating_point: bool, rel: Relation, acc: f64) -> Obs {
    match classify(violating_point, rel.boundary_m, acc) {
        Some(c) => Obs::Violation(c, rel.boundary_m),
        None => Obs::Compliant,
    }
}

/// Great-circle distance in metres.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const R: f64 = 6_371_008.8;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R * a.sqrt().min(1.0).asin()
}

/// Evaluates messages of one device.
pub struct Evaluator<'a> {
    snap: &'a Snapshot,
    cfg: &'a RulesConfig,
    board: &'a VictimBoard,
    /// Reused for shared-list observations: no allocation per fix.
    scratch: std::cell::RefCell<Vec<(AlertKey, Obs)>>,
}

/// Items of one message in event-time order.
enum Item<'m> {
    Event(DateTime<Utc>, EventKind),
    Fix(&'m Fix),
}

impl<'a> Evaluator<'a> {
    /// An evaluator over one snapshot (create one per batch).
    pub fn new(snap: &'a Snapshot, cfg: &'a RulesConfig, board: &'a VictimBoard) -> Self {
        Self {
            snap,
            cfg,
            board,
            scratch: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Evaluates one new message.
    pub fn message(&self, st: &mut DeviceState, m: &AcceptedMessage, out: &mut Output) {
        let device = m.device_key;
        let t = &m.telemetry;
        st.last_seen = Some(st.last_seen.map_or(m.received_at, |s| s.max(m.received_at)));

        if !self.snap.victim_pairings(device).is_empty() {
            // A victim's device: its position feeds the proximity check of
            // the supervisee's shard and nothing else.
            if let Some(f) = t.fixes.iter().max_by_key(|f| f.ts) {
                self.board.update(
                    device,
                    VictimFix {
                        at: f.ts,
                        lat: f.lat,
                        lon: f.lon,
                        acc: f.acc_m,
                    },
                );
            }
            return;
        }

        // One fix and no events is the common message: no allocation.
        let mut sorted: Vec<Item>;
        let single;
        let items: &[Item] = if t.events.is_empty() && t.fixes.len() == 1 {
            single = [Item::Fix(&t.fixes[0])];
            &single
        } else {
            sorted = t
                .events
                .iter()
                .map(|e| Item::Event(e.ts, e.kind))
                .chain(t.fixes.iter().map(Item::Fix))
                .collect();
            sorted.sort_by_key(|i| match i {
                Item::Event(ts, _) => *ts,
                Item::Fix(f) => f.ts,
            });
            &sorted
        };
        // Status has no timestamp of its own: it is as new as the message's
        // newest item, or its receive time.
        let status_at = items
            .last()
            .map(|i| match i {
                Item::Event(ts, _) => *ts,
                Item::Fix(f) => f.ts,
            })
            .unwrap_or(m.received_at);

        let mut late = LateGroups::default();
        for item in items {
            match item {
                Item::Event(ts, k) => self.device_event(st, device, *ts, *k, out),
                Item::Fix(f) => {
                    if st.newest_fix.is_some_and(|n| f.ts < n) {
                        self.late_fix(device, f, &mut late);
                    } else {
                        st.newest_fix = Some(f.ts);
                        st.last_fix = Some(LastFix {
                            at: f.ts,
                            lat: f.lat,
                            lon: f.lon,
                            acc: f.acc_m,
                        });
                        self.fix(st, device, f, out);
                    }
                }
            }
        }
        if let Some(s) = &t.status {
            self.status(st, device, status_at, s, out);
        }
        self.gps_loss(st, device, m, status_at, out);
        out.ops.extend(late.finish());
    }

    fn tz_of(&self, supervisee: Option<i64>) -> chrono_tz::Tz {
        supervisee
            .and_then(|s| self.snap.supervisee(s))
            .map_or(chrono_tz::UTC, |s| s.tz)
    }

    fn local(&self, supervisee: Option<i64>, t: DateTime<Utc>) -> String {
        let tz = self.tz_of(supervisee);
        t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()
    }

    /// Evaluates one in-order fix against every rule of its wearer.
    fn fix(&self, st: &mut DeviceState, device: i64, f: &Fix, out: &mut Output) {
        let wearer = self.snap.wearer(device, f.ts);
        let acc = f64::from(f.acc_m);
        let probe = Probe::new(f.lat, f.lon);
        if let Some(sup) = wearer {
            for rule in self.snap.rules_of(sup) {
                let applies = self.snap.applies(sup, rule, f.ts);
                if let Target::Zone(z) = rule.target {
                    // The common case, without allocating.
                    let (key, obs) =
                        self.zone_observation(st, device, &probe, rule, z, acc, applies);
                    self.step(st, key, Some(rule.id), rule, obs, f, sup, out);
                    continue;
                }
                let mut scratch = std::mem::take(&mut *self.scratch.borrow_mut());
                scratch.clear();
                self.rule_observations(st, device, &probe, rule, acc, applies, &mut scratch);
                for (key, obs) in scratch.drain(..) {
                    self.step(st, key, Some(rule.id), rule, obs, f, sup, out);
                }
                *self.scratch.borrow_mut() = scratch;
            }
            for p in self.snap.pairings_of(sup) {
                let key = AlertKey {
                    device_key: device,
                    kind: AlertKind::VictimProximity,
                    zone_id: None,
                    pairing_id: Some(p.id),
                };
                let active = st.cond(&key).is_some_and(|i| st.conditions[i].active);
                let obs = match self.board.get(p.victim_device_key) {
                    Some(v) if (v.at - f.ts).abs() <= self.cfg.proximity_max_age => {
                        let d = haversine_m(f.lat, f.lon, v.lat, v.lon);
                        let slack = acc + f64::from(v.acc);
                        if d + slack <= p.enter_m {
                            Obs::Violation(Confidence::Confirmed, d)
                        } else if d <= p.enter_m {
                            Obs::Violation(Confidence::Probable, d)
                        } else if active && d <= p.exit_m {
                            Obs::Hold
                        } else if d - slack <= p.enter_m {
                            Obs::Violation(Confidence::Possible, d)
                        } else {
                            Obs::Compliant
                        }
                    }
                    // No current victim position (it reports rarely, or the
                    // board is empty after a restart): nothing is known,
                    // so nothing changes.
                    _ => Obs::Hold,
                };
                let rule = Rule {
                    id: 0,
                    role: Role::Exclusion,
                    target: Target::Zone(0),
                    schedule: None,
                    // A victim's safety does not wait for a second fix.
                    confirm_fixes: 1,
                    grace: TimeDelta::seconds(60),
                };
                self.step(st, key, None, &rule, obs, f, sup, out);
            }
        }
        if st.conditions.is_empty() {
            return;
        }
        // Conditions of rules no longer in force (rule removed, device
        // reissued, pairing ended) end now.
        let rules = wearer.map_or(&[][..], |s| self.snap.rules_of(s));
        let pairings = wearer.map_or(&[][..], |s| self.snap.pairings_of(s));
        let stale: Vec<AlertKey> = st
            .conditions
            .iter()
            .filter(|c| match (c.rule, c.key.pairing_id) {
                (Some(r), _) => !rules.iter().any(|x| x.id == r),
                (None, Some(p)) => !pairings.iter().any(|x| x.id == p),
                (None, None) => false,
            })
            .map(|c| c.key)
            .collect();
        for key in stale {
            let any = Rule {
                id: 0,
                role: Role::Exclusion,
                target: Target::Zone(0),
                schedule: None,
                confirm_fixes: 1,
                grace: TimeDelta::zero(),
            };
            self.step(st, key, None, &any, Obs::NotApplicable, f, 0, out);
        }
    }

    fn kind_of(role: Role) -> AlertKind {
        match role {
            Role::Inclusion => AlertKind::InclusionZoneExit,
            Role::Exclusion => AlertKind::ExclusionZoneEntry,
            Role::Home => AlertKind::CurfewViolation,
        }
    }

    /// The observation of a single-zone rule.
    #[allow(clippy::too_many_arguments)]
    fn zone_observation(
        &self,
        st: &DeviceState,
        device: i64,
        probe: &Probe,
        rule: &Rule,
        z: i64,
        acc: f64,
        applies: bool,
    ) -> (AlertKey, Obs) {
        let key = AlertKey {
            device_key: device,
            kind: Self::kind_of(rule.role),
            zone_id: Some(z),
            pairing_id: None,
        };
        let obs = if !applies {
            Obs::NotApplicable
        } else if rule.role == Role::Home && st.beacon == Some(true) {
            Obs::Compliant
        } else {
            match self.snap.zone(z) {
                Some(zone) => {
                    // Capped: the boundary distance is only needed up to the
                    // accuracy radius to classify; the exact figure is
                    // computed when an alert is raised.
                    let rel = zone
                        .geom
                        .relate_capped_probe(probe, acc)
                        .unwrap_or(Relation {
                            inside: false,
                            boundary_m: f64::INFINITY,
                        });
                    observe((rule.role == Role::Exclusion) == rel.inside, rel, acc)
                }
                None => Obs::NotApplicable,
            }
        };
        (key, obs)
    }

    /// Observations of one rule for one fix, keyed by the alert they feed.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    fn rule_observations(
        &self,
        st: &DeviceState,
        device: i64,
        probe: &Probe,
        rule: &Rule,
        acc: f64,
        applies: bool,
        v: &mut Vec<(AlertKey, Obs)>,
    ) {
        let kind = Self::kind_of(rule.role);
        let key = |zone: i64| AlertKey {
            device_key: device,
            kind,
            zone_id: Some(zone),
            pairing_id: None,
        };
        match &rule.target {
            Target::Zone(z) => {
                v.push(self.zone_observation(st, device, probe, rule, *z, acc, applies));
            }
            Target::List(l) => {
                if applies {
                    if let Some(index) = self.snap.list(l) {
                        index.near_capped_probe(probe, acc, |z, rel| {
                            v.push((key(z), observe(rel.inside, rel, acc)));
                        });
                    }
                }
                // Zones of this list being watched but not near now: compliant
                // (or not applicable when the rule is off).
                let off = if applies {
                    Obs::Compliant
                } else {
                    Obs::NotApplicable
                };
                for c in st.conditions.iter().filter(|c| c.rule == Some(rule.id)) {
                    if !v.iter().any(|(k, _)| *k == c.key) {
                        v.push((c.key, off));
                    }
                }
            }
        }
    }

    /// Advances one condition by one observation: debounce on the way up,
    /// hysteresis on the way down.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        st: &mut DeviceState,
        key: AlertKey,
        rule_id: Option<i64>,
        rule: &Rule,
        obs: Obs,
        f: &Fix,
        sup: i64,
        out: &mut Output,
    ) {
        let at = f.ts;
        let idx = st.cond(&key);
        match (idx, obs) {
            (_, Obs::Hold) => {}
            (None, Obs::Compliant | Obs::NotApplicable) => {}
            (None, Obs::Violation(conf, d)) => {
                st.conditions.push(Condition {
                    key,
                    rule: rule_id,
                    active: false,
                    count: 0,
                    since: at,
                    possible_since: None,
                    best: None,
                    evidence: Vec::new(),
                    clear_count: 0,
                    clear_since: None,
                });
                let i = st.conditions.len() - 1;
                self.pending(st, i, rule, conf, d, f, sup, out);
            }
            (Some(i), Obs::Violation(conf, d)) => {
                if st.conditions[i].active {
                    let c = &mut st.conditions[i];
                    c.clear_count = 0;
                    c.clear_since = None;
                    out.ops.push(AlertOp::Evidence {
                        key,
                        at,
                        evidence: Some(evidence_of(f, conf, d)),
                    });
                } else {
                    self.pending(st, i, rule, conf, d, f, sup, out);
                }
            }
            (Some(i), Obs::Compliant) => {
                let c = &mut st.conditions[i];
                if !c.active {
                    // Back inside the rules before it was raised: nothing
                    // happened that needs a person.
                    st.conditions.remove(i);
                    return;
                }
                c.clear_count += 1;
                let since = *c.clear_since.get_or_insert(at);
                if c.clear_count >= self.cfg.clear_fixes || at - since >= rule.grace {
                    st.conditions.remove(i);
                    out.ops.push(AlertOp::End {
                        key,
                        at: since,
                        reason: "back within the rules".into(),
                    });
                }
            }
            (Some(i), Obs::NotApplicable) => {
                let c = st.conditions.remove(i);
                if c.active {
                    out.ops.push(AlertOp::End {
                        key,
                        at,
                        reason: "rule no longer applies (schedule, approved absence or change)"
                            .into(),
                    });
                }
            }
        }
    }

    /// A violating observation on a condition not yet raised.
    #[allow(clippy::too_many_arguments)]
    fn pending(
        &self,
        st: &mut DeviceState,
        i: usize,
        rule: &Rule,
        conf: Confidence,
        d: f64,
        f: &Fix,
        sup: i64,
        out: &mut Output,
    ) {
        let at = f.ts;
        let c = &mut st.conditions[i];
        if c.evidence.len() < 3 {
            c.evidence.push(evidence_of(f, conf, d));
        }
        if conf == Confidence::Possible {
            let first = c.possible_since.is_none();
            let ps = *c.possible_since.get_or_insert(at);
            if first {
                out.timeline.push(TimelineEntry {
                    device_key: c.key.device_key,
                    at,
                    kind: c.key.kind,
                    zone_id: c.key.zone_id,
                    detail: format!(
                        "possible {}: part of the {:.0} m accuracy disc is in violation",
                        c.key.kind, f.acc_m
                    ),
                });
            }
            let raise_possible = c.count == 0 && at - ps >= rule.grace;
            if !raise_possible {
                return;
            }
            c.best = Some(c.best.map_or(conf, |b| b.min(conf)));
        } else {
            c.count += 1;
            c.possible_since = None;
            c.best = Some(c.best.map_or(conf, |b| b.min(conf)));
            let by_count = c.count >= rule.confirm_fixes;
            let by_time = at - c.since >= rule.grace;
            if !(by_count || by_time) {
                return;
            }
        }
        c.active = true;
        let c = c.clone();
        st.conditions[i].evidence.clear();
        let alert = self.new_alert(&c, sup, Some(f), d, false);
        out.ops.push(AlertOp::Raise(Box::new(alert)));
    }

    fn new_alert(&self, c: &Condition, sup: i64, f: Option<&Fix>, d: f64, late: bool) -> NewAlert {
        let conf = c.best.unwrap_or(Confidence::Confirmed);
        let zone = c.key.zone_id.and_then(|z| self.snap.zone(z));
        // Hot-path distances are capped at the accuracy radius; an alert
        // states the exact figure.
        let d = match (zone, f) {
            (Some(z), Some(f)) if !d.is_finite() => z.geom.relate(f.lat, f.lon).boundary_m,
            _ => d,
        };
        let sup_opt = (sup != 0).then_some(sup);
        let at = f.map_or(c.since, |f| f.ts);
        let when = self.local(sup_opt, c.since);
        let acc = f.map_or(0.0, |f| f.acc_m);
        let zname = zone.map_or_else(|| "(removed zone)".to_owned(), |z| z.name.clone());
        let mut explanation = match c.key.kind {
            AlertKind::ExclusionZoneEntry => format!(
                "Entered exclusion zone '{zname}' at {when}, {d:.0} m inside, accuracy {acc:.0} m."
            ),
            AlertKind::InclusionZoneExit => format!(
                "Left inclusion zone '{zname}' at {when}, {d:.0} m outside, accuracy {acc:.0} m."
            ),
            AlertKind::CurfewViolation => format!(
                "Away from home zone '{zname}' during curfew at {when}, {d:.0} m outside, \
                 accuracy {acc:.0} m; home beacon not present."
            ),
            AlertKind::VictimProximity => {
                format!("Paired victim's device {d:.0} m away at {when}, accuracy {acc:.0} m.")
            }
            other => format!("{other} at {when}."),
        };
        match conf {
            Confidence::Possible => explanation.push_str(
                " Possible only: part of the accuracy disc was in violation for longer than the grace period.",
            ),
            Confidence::Probable => explanation
                .push_str(" Probable: the position is in violation but within its accuracy of the boundary."),
            Confidence::Confirmed => {}
        }
        if late {
            explanation.push_str(
                " Reported late: these fixes arrived after newer ones and did not change the current state.",
            );
        }
        let mut evidence = c.evidence.clone();
        if let Some(f) = f {
            if evidence.last().is_none_or(|e| e.at != f.ts) {
                evidence.push(evidence_of(f, conf, d));
            }
        }
        NewAlert {
            key: c.key,
            supervisee_id: sup_opt,
            severity: self.cfg.severities.of(c.key.kind),
            zone_version: zone.map(|z| z.version),
            rule_id: c.rule,
            confidence: conf,
            late,
            started_at: c.since,
            last_evidence_at: at,
            ended_at: late.then_some(at),
            explanation,
            details: serde_json::json!({
                "distance_m": (d * 10.0).round() / 10.0,
                "accuracy_m": acc,
                "zone_name": zone.map(|z| z.name.clone()),
            }),
            evidence,
        }
    }

    /// A fix older than the newest evaluated: judged against the rules at
    /// its own time; violations become late alerts, the state is untouched.
    fn late_fix(&self, device: i64, f: &Fix, late: &mut LateGroups) {
        let Some(sup) = self.snap.wearer(device, f.ts) else {
            return;
        };
        let acc = f64::from(f.acc_m);
        let probe = Probe::new(f.lat, f.lon);
        let empty = DeviceState::default();
        for rule in self.snap.rules_of(sup) {
            if !self.snap.applies(sup, rule, f.ts) {
                continue;
            }
            let mut v = Vec::new();
            self.rule_observations(&empty, device, &probe, rule, acc, true, &mut v);
            for (key, obs) in v {
                if let Obs::Violation(conf @ (Confidence::Confirmed | Confidence::Probable), d) =
                    obs
                {
                    late.add(key, rule, conf, d, f, || {
                        let c = Condition {
                            key,
                            rule: Some(rule.id),
                            active: true,
                            count: 1,
                            since: f.ts,
                            possible_since: None,
                            best: Some(conf),
                            evidence: Vec::new(),
                            clear_count: 0,
                            clear_since: None,
                        };
                        self.new_alert(&c, sup, Some(f), d, true)
                    });
                }
            }
        }
    }

    /// A device report that raises at once (tamper, battery): never debounced.
    #[allow(clippy::too_many_arguments)]
    fn report_raise(
        &self,
        st: &mut DeviceState,
        device: i64,
        kind: AlertKind,
        at: DateTime<Utc>,
        what: &str,
        explanation: String,
        out: &mut Output,
    ) {
        let key = AlertKey::device(device, kind);
        let ev = Evidence {
            at,
            lat: st.last_fix.map(|l| l.lat),
            lon: st.last_fix.map(|l| l.lon),
            acc_m: st.last_fix.map(|l| l.acc),
            observation: what.to_owned().into(),
            distance_m: None,
            detail: None,
        };
        if st.cond(&key).is_some() {
            out.ops.push(AlertOp::Evidence {
                key,
                at,
                evidence: Some(ev),
            });
            return;
        }
        st.conditions.push(Condition {
            key,
            rule: None,
            active: true,
            count: 1,
            since: at,
            possible_since: None,
            best: Some(Confidence::Confirmed),
            evidence: Vec::new(),
            clear_count: 0,
            clear_since: None,
        });
        let sup = self.snap.wearer(device, at);
        let when = self.local(sup, at);
        out.ops.push(AlertOp::Raise(Box::new(NewAlert {
            key,
            supervisee_id: sup,
            severity: self.cfg.severities.of(kind),
            zone_version: None,
            rule_id: None,
            confidence: Confidence::Confirmed,
            late: false,
            started_at: at,
            last_evidence_at: at,
            ended_at: None,
            explanation: format!("{explanation} at {when}."),
            details: serde_json::json!({ "report": what }),
            evidence: vec![ev],
        })));
    }

    fn report_end(
        &self,
        st: &mut DeviceState,
        device: i64,
        kind: AlertKind,
        at: DateTime<Utc>,
        reason: &str,
        out: &mut Output,
    ) {
        let key = AlertKey::device(device, kind);
        if let Some(i) = st.cond(&key) {
            st.conditions.remove(i);
            out.ops.push(AlertOp::End {
                key,
                at,
                reason: reason.to_owned(),
            });
        }
    }

    fn device_event(
        &self,
        st: &mut DeviceState,
        device: i64,
        at: DateTime<Utc>,
        kind: EventKind,
        out: &mut Output,
    ) {
        let tamper = AlertKind::StrapTamper;
        if st.newest_report.is_some_and(|n| at < n) {
            // A report older than one already applied (a buffered upload):
            // it may still raise (tamper is never filtered out), but it
            // cannot end an alert or change the beacon state.
            if matches!(kind, EventKind::StrapOpen | EventKind::CaseTamper) {
                self.report_raise(
                    st,
                    device,
                    tamper,
                    at,
                    kind.as_str(),
                    "Device reported (late) its strap or case opened".into(),
                    out,
                );
            }
            return;
        }
        st.newest_report = Some(at);
        match kind {
            EventKind::StrapOpen => self.report_raise(
                st,
                device,
                tamper,
                at,
                "strap_open",
                "Device reported its strap opened".into(),
                out,
            ),
            EventKind::CaseTamper => self.report_raise(
                st,
                device,
                tamper,
                at,
                "case_tamper",
                "Device reported its case opened".into(),
                out,
            ),
            EventKind::StrapClosed => {
                self.report_end(st, device, tamper, at, "strap closed again", out)
            }
            EventKind::BatteryLow => self.report_raise(
                st,
                device,
                AlertKind::BatteryLow,
                at,
                "battery_low",
                "Device reported a low battery".into(),
                out,
            ),
            EventKind::ChargerConnected => {
                for k in [AlertKind::BatteryLow, AlertKind::BatteryCritical] {
                    self.report_end(st, device, k, at, "charger connected", out);
                }
            }
            EventKind::BeaconEnter => {
                st.beacon = Some(true);
                self.beacon_home(st, device, at, out);
            }
            EventKind::BeaconLeave => st.beacon = Some(false),
            EventKind::ChargerDisconnected
            | EventKind::PowerOn
            | EventKind::PowerOff
            | EventKind::GnssJamming => {}
        }
    }

    /// The home beacon is present: every curfew condition is satisfied.
    fn beacon_home(&self, st: &mut DeviceState, device: i64, at: DateTime<Utc>, out: &mut Output) {
        let keys: Vec<AlertKey> = st
            .conditions
            .iter()
            .filter(|c| c.key.kind == AlertKind::CurfewViolation)
            .map(|c| c.key)
            .collect();
        for key in keys {
            if let Some(i) = st.cond(&key) {
                let c = st.conditions.remove(i);
                if c.active {
                    out.ops.push(AlertOp::End {
                        key,
                        at,
                        reason: "home beacon present".into(),
                    });
                }
            }
        }
        let _ = device;
    }

    fn status(
        &self,
        st: &mut DeviceState,
        device: i64,
        at: DateTime<Utc>,
        s: &crate::domain::Status,
        out: &mut Output,
    ) {
        if st.newest_report.is_some_and(|n| at < n) {
            if s.strap == Some(StrapState::Open) {
                self.report_raise(
                    st,
                    device,
                    AlertKind::StrapTamper,
                    at,
                    "strap_open",
                    "Device status (late) shows its strap open".into(),
                    out,
                );
            }
            return;
        }
        st.newest_report = Some(at);
        match s.strap {
            Some(StrapState::Open) => self.report_raise(
                st,
                device,
                AlertKind::StrapTamper,
                at,
                "strap_open",
                "Device status shows its strap open".into(),
                out,
            ),
            Some(StrapState::Closed) => {
                self.report_end(st, device, AlertKind::StrapTamper, at, "strap closed", out)
            }
            None => {}
        }
        if let Some(b) = s.beacon {
            st.beacon = Some(b);
            if b {
                self.beacon_home(st, device, at, out);
            }
        }
        let charging = s.charging == Some(true);
        if let Some(pct) = s.battery_pct {
            let cfg = self.cfg;
            for (kind, threshold) in [
                (AlertKind::BatteryCritical, cfg.battery_critical_pct),
                (AlertKind::BatteryLow, cfg.battery_low_pct),
            ] {
                if pct <= threshold && !charging {
                    self.report_raise(
                        st,
                        device,
                        kind,
                        at,
                        &format!("battery_{pct}"),
                        format!("Battery at {pct} % (threshold {threshold} %)"),
                        out,
                    );
                } else if charging || pct >= threshold.saturating_add(cfg.battery_hysteresis_pct) {
                    self.report_end(st, device, kind, at, "battery recovered or charging", out);
                }
            }
        } else if charging {
            for k in [AlertKind::BatteryLow, AlertKind::BatteryCritical] {
                self.report_end(st, device, k, at, "charging", out);
            }
        }
    }

    /// gps_loss: messages keep arriving, but none with a usable fix. Counted
    /// on event time from the first unusable message, so a silent device
    /// (that is no_signal's business) or a server outage does not count.
    fn gps_loss(
        &self,
        st: &mut DeviceState,
        device: i64,
        m: &AcceptedMessage,
        at: DateTime<Utc>,
        out: &mut Output,
    ) {
        let usable = m
            .telemetry
            .fixes
            .iter()
            .any(|f| f.acc_m <= self.cfg.usable_accuracy_m);
        let kind = AlertKind::GpsLoss;
        if usable || st.beacon == Some(true) {
            // A usable position, or at home by the beacon (no position is
            // needed, and indoors there rarely is one).
            st.unusable_since = None;
            self.report_end(st, device, kind, at, "usable positions again", out);
            return;
        }
        let since = *st.unusable_since.get_or_insert(at);
        let key = AlertKey::device(device, kind);
        if at - since >= self.cfg.gps_loss_after && st.cond(&key).is_none() {
            let mins = (at - since).num_minutes();
            self.report_raise(
                st,
                device,
                kind,
                at,
                "no_usable_fix",
                format!("Messages without a usable position for {mins} min"),
                out,
            );
        }
    }
}

fn evidence_of(f: &Fix, conf: Confidence, d: f64) -> Evidence {
    Evidence {
        at: f.ts,
        lat: Some(f.lat),
        lon: Some(f.lon),
        acc_m: Some(f.acc_m),
        observation: conf.as_str().into(),
        distance_m: d.is_finite().then_some(d as f32),
        detail: None,
    }
}

/// Late violations of one message, merged per alert key so a batch of
/// buffered fixes yields one retrospective alert, not one per fix.
#[derive(Default)]
struct LateGroups {
    /// Alert so far, violating fixes seen, and the rule's debounce.
    groups: HashMap<AlertKey, (NewAlert, u32, u32, TimeDelta)>,
    order: Vec<AlertKey>,
}

impl LateGroups {
    fn add(
        &mut self,
        key: AlertKey,
        rule: &Rule,
        conf: Confidence,
        d: f64,
        f: &Fix,
        make: impl FnOnce() -> NewAlert,
    ) {
        match self.groups.get_mut(&key) {
            Some((a, n, _, _)) => {
                *n += 1;
                a.started_at = a.started_at.min(f.ts);
                a.last_evidence_at = a.last_evidence_at.max(f.ts);
                a.ended_at = Some(a.last_evidence_at);
                a.confidence = a.confidence.min(conf);
                if a.evidence.len() < MAX_EVIDENCE {
                    a.evidence.push(evidence_of(f, conf, d));
                }
            }
            None => {
                self.order.push(key);
                self.groups
                    .insert(key, (make(), 1, rule.confirm_fixes, rule.grace));
            }
        }
    }

    /// Late episodes that pass the same debounce as live ones.
    fn finish(mut self) -> Vec<AlertOp> {
        self.order
            .iter()
            .filter_map(|k| self.groups.remove(k))
            .filter(|(a, n, confirm, grace)| {
                *n >= *confirm || a.last_evidence_at - a.started_at >= *grace
            })
            .map(|(a, ..)| AlertOp::Raise(Box::new(a)))
            .collect()
    }
}
