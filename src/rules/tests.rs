//! Engine behaviour on hand-built snapshots: debounce, hysteresis, accuracy
//! classes, late fixes, device reports, schedules, exceptions, assignments,
//! proximity.

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use super::board::{VictimBoard, VictimFix};
use super::engine::{DeviceState, Evaluator, Output, RulesConfig};
use super::snapshot::*;
use crate::alerts::{AlertKind, AlertOp, Confidence};
use crate::domain::{
    DeviceEvent, DeviceId, EventKind, Fix, FixSource, MessageKey, Status, StrapState, Telemetry,
};
use crate::store::AcceptedMessage;

const DEV: i64 = 1;
const SUP: i64 = 10;
// A point and metres-to-degrees near it (latitude 51.5).
const LAT: f64 = 51.5;
const LON: f64 = -0.12;
const M_LAT: f64 = 1.0 / 111_195.0;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_780_000_000 + s, 0).unwrap()
}

fn circle(lat: f64, lon: f64, r: f64) -> serde_json::Value {
    json!({"type": "Feature", "properties": {"radius_m": r},
           "geometry": {"type": "Point", "coordinates": [lon, lat]}})
}

fn zone(id: i64, name: &str, geojson: serde_json::Value) -> ZoneRow {
    ZoneRow {
        id,
        name: name.into(),
        list_ref: None,
        version: 3,
        geojson: Some(geojson),
    }
}

fn rule(id: i64, role: &str, zone: i64) -> RuleRow {
    RuleRow {
        id,
        supervisee_id: SUP,
        role: role.into(),
        zone_id: Some(zone),
        list_ref: None,
        schedule: None,
        confirm_fixes: 2,
        grace_s: 60,
    }
}

/// One supervisee wearing DEV since t(-1e6), with an exclusion circle of
/// 100 m at (LAT, LON).
fn base() -> RulesData {
    RulesData {
        supervisees: vec![SuperviseeRow {
            id: SUP,
            case_ref: "C-1".into(),
            time_zone: "Europe/London".into(),
        }],
        zones: vec![zone(100, "Victim residence", circle(LAT, LON, 100.0))],
        assignments: vec![AssignmentRow {
            device_key: DEV,
            supervisee_id: SUP,
            from: "2020-01-01T00:00:00Z".parse().unwrap(),
            to: None,
        }],
        rules: vec![rule(1, "exclusion", 100)],
        ..Default::default()
    }
}

fn fix(s: i64, north_m: f64, acc: f32) -> Fix {
    Fix {
        ts: t(s),
        lat: LAT + north_m * M_LAT,
        lon: LON,
        acc_m: acc,
        alt_m: None,
        speed_mps: None,
        heading_deg: None,
        src: FixSource::Gnss,
    }
}

fn msg(fixes: Vec<Fix>, events: Vec<DeviceEvent>, status: Option<Status>) -> AcceptedMessage {
    let rx = fixes
        .iter()
        .map(|f| f.ts)
        .chain(events.iter().map(|e| e.ts))
        .max()
        .unwrap_or(t(0));
    AcceptedMessage {
        device_key: DEV,
        topic: String::new(),
        received_at: rx,
        digest: [0; 16],
        telemetry: Telemetry {
            device: DeviceId::parse("dev-1").unwrap(),
            key: MessageKey { boot: 1, seq: 1 },
            fixes,
            status,
            events,
        },
        item_rejections: vec![],
        payload: Bytes::new(),
        store_fixes: true,
    }
}

struct Rig {
    snap: Snapshot,
    cfg: RulesConfig,
    board: VictimBoard,
    st: DeviceState,
}

impl Rig {
    fn new(data: RulesData) -> Self {
        let snap = Snapshot::build(data);
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        Self {
            snap,
            cfg: RulesConfig::default(),
            board: VictimBoard::default(),
            st: DeviceState::default(),
        }
    }

    fn feed(&mut self, m: AcceptedMessage) -> Output {
        let mut out = Output::default();
        Evaluator::new(&self.snap, &self.cfg, &self.board).message(&mut self.st, &m, &mut out);
        out
    }

    fn fix(&mut self, s: i64, north_m: f64, acc: f32) -> Output {
        self.feed(msg(vec![fix(s, north_m, acc)], vec![], None))
    }
}

fn raises(out: &Output) -> Vec<&crate::alerts::NewAlert> {
    out.ops
        .iter()
        .filter_map(|o| match o {
            AlertOp::Raise(a) => Some(&**a),
            _ => None,
        })
        .collect()
}

fn ends(out: &Output) -> usize {
    out.ops
        .iter()
        .filter(|o| matches!(o, AlertOp::End { .. }))
        .count()
}

#[test]
fn exclusion_entry_is_debounced_then_updated_then_ended() {
    let mut r = Rig::new(base());
    assert!(r.fix(0, 500.0, 5.0).ops.is_empty(), "outside");
    assert!(
        r.fix(10, 30.0, 5.0).ops.is_empty(),
        "one violating fix is not enough"
    );
    let out = r.fix(20, 30.0, 5.0);
    let a = raises(&out);
    assert_eq!(a.len(), 1);
    let a = a[0];
    assert_eq!(a.key.kind, AlertKind::ExclusionZoneEntry);
    assert_eq!(a.key.zone_id, Some(100));
    assert_eq!(a.zone_version, Some(3));
    assert_eq!(a.confidence, Confidence::Confirmed);
    assert_eq!(
        a.started_at,
        t(10),
        "the episode started at the first violating fix"
    );
    assert_eq!(a.evidence.len(), 2, "both triggering fixes are kept");
    assert!(
        a.explanation
            .starts_with("Entered exclusion zone 'Victim residence' at ")
            && a.explanation.contains("70 m inside, accuracy 5 m"),
        "{}",
        a.explanation
    );
    // Persisting: updates, never a second raise.
    let out = r.fix(30, 50.0, 5.0);
    assert!(matches!(out.ops[..], [AlertOp::Evidence { .. }]));
    // One compliant fix is not enough to end it (GPS noise), two are.
    assert!(r.fix(40, 300.0, 5.0).ops.is_empty());
    let out = r.fix(50, 300.0, 5.0);
    assert_eq!(ends(&out), 1);
    match &out.ops[0] {
        AlertOp::End { at, .. } => assert_eq!(*at, t(40), "ended when it first cleared"),
        other => panic!("{other:?}"),
    }
    assert!(r.st.conditions.is_empty());
}

#[test]
fn a_long_violation_raises_by_time_even_with_sparse_fixes() {
    let mut data = base();
    data.rules[0].confirm_fixes = 5;
    let mut r = Rig::new(data);
    assert!(r.fix(0, 0.0, 5.0).ops.is_empty());
    assert!(r.fix(30, 0.0, 5.0).ops.is_empty());
    assert_eq!(raises(&r.fix(61, 0.0, 5.0)).len(), 1, "60 s in violation");
}

#[test]
fn gps_noise_on_the_edge_does_not_flap() {
    let mut r = Rig::new(base());
    // A device parked 100 m from the centre (on the boundary) with ±15 m noise.
    let noise = [12.0, -9.0, 14.0, -13.0, 3.0, -1.0, 8.0, -11.0, 15.0, -14.0];
    let mut raised = 0;
    let mut ended = 0;
    for i in 0..200 {
        let out = r.fix(i * 5, 100.0 + noise[(i as usize * 7) % 10], 10.0);
        raised += raises(&out).len();
        ended += ends(&out);
    }
    assert!(raised <= 1, "raised {raised} times");
    assert!(ended <= 1);
}

#[test]
fn accuracy_decides_the_confidence_class() {
    // 20 m inside with 10 m accuracy: confirmed; with 50 m: probable.
    let mut r = Rig::new(base());
    r.fix(0, 80.0, 10.0);
    assert_eq!(
        raises(&r.fix(5, 80.0, 10.0))[0].confidence,
        Confidence::Confirmed
    );
    let mut r = Rig::new(base());
    r.fix(0, 80.0, 50.0);
    let out = r.fix(5, 80.0, 50.0);
    assert_eq!(raises(&out)[0].confidence, Confidence::Probable);
    assert!(raises(&out)[0].explanation.contains("Probable"));
}

#[test]
fn possible_violations_go_to_the_timeline_and_raise_only_after_grace() {
    // 20 m outside with 50 m accuracy: only part of the disc is inside.
    let mut r = Rig::new(base());
    let out = r.fix(0, 120.0, 50.0);
    assert!(out.ops.is_empty());
    assert_eq!(out.timeline.len(), 1);
    assert!(r.fix(30, 120.0, 50.0).ops.is_empty(), "still within grace");
    assert!(
        r.fix(30, 120.0, 50.0).timeline.is_empty(),
        "timeline once per episode"
    );
    let out = r.fix(61, 120.0, 50.0);
    let a = raises(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].confidence, Confidence::Possible);
    // A short possible episode that clears raises nothing.
    let mut r = Rig::new(base());
    r.fix(0, 120.0, 50.0);
    assert!(r.fix(20, 400.0, 5.0).ops.is_empty());
    assert!(
        r.fix(90, 120.0, 50.0).ops.is_empty(),
        "a new episode starts its own grace"
    );
}

#[test]
fn tamper_is_raised_at_once_and_ends_when_closed() {
    let mut r = Rig::new(base());
    let ev = |s, kind| DeviceEvent { ts: t(s), kind };
    let out = r.feed(msg(vec![], vec![ev(0, EventKind::StrapOpen)], None));
    let a = raises(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].key.kind, AlertKind::StrapTamper);
    assert_eq!(a[0].severity, crate::alerts::Severity::Critical);
    // Repeats (event or status) update the same alert.
    let out = r.feed(msg(
        vec![],
        vec![],
        Some(Status {
            strap: Some(StrapState::Open),
            ..Default::default()
        }),
    ));
    assert!(raises(&out).is_empty());
    let out = r.feed(msg(vec![], vec![ev(20, EventKind::StrapClosed)], None));
    assert_eq!(ends(&out), 1);
    // Even a device assigned to nobody reports tamper: never filtered out.
    let mut data = base();
    data.assignments.clear();
    let mut r = Rig::new(data);
    let out = r.feed(msg(vec![], vec![ev(0, EventKind::StrapOpen)], None));
    assert_eq!(raises(&out).len(), 1);
    assert_eq!(raises(&out)[0].supervisee_id, None);
}

#[test]
fn late_fixes_raise_retrospective_alerts_without_touching_state() {
    let mut r = Rig::new(base());
    r.fix(1000, 500.0, 5.0);
    let before = r.st.clone();
    // Buffered fixes from earlier, inside the zone, arriving after newer ones.
    let out = r.feed(msg(
        vec![
            fix(100, 10.0, 5.0),
            fix(110, 20.0, 5.0),
            fix(120, 15.0, 5.0),
        ],
        vec![],
        None,
    ));
    let a = raises(&out);
    assert_eq!(a.len(), 1, "one retrospective alert for the episode");
    assert!(a[0].late);
    assert_eq!(a[0].started_at, t(100));
    assert_eq!(a[0].ended_at, Some(t(120)));
    assert_eq!(a[0].evidence.len(), 3);
    assert!(a[0].explanation.contains("Reported late"));
    assert_eq!(
        r.st.conditions, before.conditions,
        "current state unchanged"
    );
    assert_eq!(r.st.newest_fix, before.newest_fix);
}

#[test]
fn coverage_loss_batches_are_evaluated_in_time_order() {
    // Offline upload: one message with fixes out of order, all newer than
    // anything seen: they are sorted and evaluated as live, not late.
    let mut r = Rig::new(base());
    r.fix(0, 500.0, 5.0);
    let out = r.feed(msg(
        vec![fix(30, 10.0, 5.0), fix(10, 10.0, 5.0), fix(20, 10.0, 5.0)],
        vec![],
        None,
    ));
    let a = raises(&out);
    assert_eq!(a.len(), 1);
    assert!(!a[0].late);
    assert_eq!(a[0].started_at, t(10));
    assert_eq!(r.st.newest_fix, Some(t(30)));
}

#[test]
fn curfew_needs_home_zone_or_beacon_during_the_window_only() {
    let mut data = base();
    data.rules = vec![RuleRow {
        schedule: Some(
            json!({"windows": [{"days": ["mon","tue","wed","thu","fri","sat","sun"],
            "start": "21:00", "end": "07:00"}]}),
        ),
        ..rule(2, "home", 200)
    }];
    data.zones
        .push(zone(200, "Home", circle(LAT + 0.01, LON, 50.0)));
    let mut r = Rig::new(data);
    // 2026-07-01 12:00 BST (11:00Z): outside the window, away from home: fine.
    let day = "2026-07-01T11:00:00Z".parse::<DateTime<Utc>>().unwrap();
    let at = |h: i64| {
        let mut f = fix(0, 0.0, 5.0);
        f.ts = day + TimeDelta::hours(h);
        f
    };
    assert!(r.feed(msg(vec![at(0)], vec![], None)).ops.is_empty());
    // 22:00 and 22:00 + 1 h BST: away during curfew.
    assert!(r.feed(msg(vec![at(10)], vec![], None)).ops.is_empty());
    let out = r.feed(msg(vec![at(11)], vec![], None));
    let a = raises(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].key.kind, AlertKind::CurfewViolation);
    assert!(
        a[0].explanation.contains("BST") || a[0].explanation.contains("+01"),
        "{}",
        a[0].explanation
    );
    // The home beacon answers for the person: the condition ends.
    let out = r.feed(msg(
        vec![],
        vec![DeviceEvent {
            ts: day + TimeDelta::hours(12),
            kind: EventKind::BeaconEnter,
        }],
        None,
    ));
    assert_eq!(ends(&out), 1);
    // No fix during the window is unknown, not a violation: nothing happens.
    assert!(r.st.conditions.is_empty());
}

#[test]
fn curfew_across_the_spring_forward_gap_does_not_panic_and_holds() {
    let mut data = base();
    data.supervisees[0].time_zone = "America/New_York".into();
    data.rules = vec![RuleRow {
        schedule: Some(json!({"windows": [{"days": ["sat", "sun"],
            "start": "01:30", "end": "03:30"}]})),
        ..rule(2, "home", 200)
    }];
    data.zones
        .push(zone(200, "Home", circle(LAT + 0.01, LON, 50.0)));
    let mut r = Rig::new(data);
    // 2026-03-08: 01:30 EST = 06:30Z; the clocks jump 02:00 EST -> 03:00 EDT
    // (07:00Z); 03:30 EDT = 07:30Z. Fixes every 5 min across the gap.
    let start = "2026-03-08T06:20:00Z".parse::<DateTime<Utc>>().unwrap();
    let mut raised = 0;
    let mut ended = 0;
    for i in 0..20 {
        let mut f = fix(0, 0.0, 5.0);
        f.ts = start + TimeDelta::minutes(5 * i);
        let out = r.feed(msg(vec![f], vec![], None));
        raised += raises(&out).len();
        ended += ends(&out);
    }
    assert_eq!(raised, 1);
    assert_eq!(ended, 1, "ended when the window closed at 03:30 EDT");
}

#[test]
fn an_approved_absence_suspends_the_rule() {
    let mut data = base();
    data.exceptions.push(ExceptionRow {
        supervisee_id: SUP,
        rule_id: Some(1),
        starts_at: t(0),
        ends_at: t(3600),
    });
    let mut r = Rig::new(data);
    assert!(r.fix(10, 0.0, 5.0).ops.is_empty());
    assert!(r.fix(20, 0.0, 5.0).ops.is_empty());
    r.fix(3600, 0.0, 5.0);
    assert_eq!(raises(&r.fix(3610, 0.0, 5.0)).len(), 1, "after the absence");
}

#[test]
fn fixes_belong_to_whoever_wore_the_device_then() {
    let mut data = base();
    data.assignments[0].to = Some(t(1000));
    data.supervisees.push(SuperviseeRow {
        id: SUP + 1,
        case_ref: "C-2".into(),
        time_zone: "UTC".into(),
    });
    data.assignments.push(AssignmentRow {
        device_key: DEV,
        supervisee_id: SUP + 1,
        from: t(1000),
        to: None,
    });
    let mut r = Rig::new(data);
    // After reissue, C-2 has no rules: no alert.
    r.fix(2000, 0.0, 5.0);
    assert!(r.fix(2010, 0.0, 5.0).ops.is_empty());
    // Late fixes from C-1's time are judged by C-1's rules.
    let out = r.feed(msg(
        vec![fix(500, 0.0, 5.0), fix(510, 0.0, 5.0)],
        vec![],
        None,
    ));
    let a = raises(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].supervisee_id, Some(SUP));
}

#[test]
fn victim_proximity_has_separate_enter_and_exit_distances() {
    let mut data = base();
    data.rules.clear();
    data.pairings.push(PairingRow {
        id: 7,
        victim_device_key: 99,
        supervisee_id: SUP,
        enter_m: 500.0,
        exit_m: 800.0,
    });
    let mut r = Rig::new(data);
    let victim = |r: &Rig, s: i64| {
        r.board.update(
            99,
            VictimFix {
                at: t(s),
                lat: LAT,
                lon: LON,
                acc: 10.0,
            },
        )
    };
    victim(&r, 0);
    let out = r.fix(5, 200.0, 10.0);
    let a = raises(&out);
    assert_eq!(a.len(), 1, "no waiting for a second fix");
    assert_eq!(a[0].key.pairing_id, Some(7));
    assert_eq!(a[0].confidence, Confidence::Confirmed);
    // Between enter and exit: holds, no flapping.
    victim(&r, 10);
    assert!(r
        .fix(15, 650.0, 10.0)
        .ops
        .iter()
        .all(|o| !matches!(o, AlertOp::End { .. })));
    assert!(r
        .fix(20, 650.0, 10.0)
        .ops
        .iter()
        .all(|o| !matches!(o, AlertOp::End { .. })));
    victim(&r, 25);
    r.fix(30, 1000.0, 10.0);
    assert_eq!(ends(&r.fix(35, 1000.0, 10.0)), 1);
}

#[test]
fn victim_devices_only_post_their_position() {
    let mut data = base();
    data.pairings.push(PairingRow {
        id: 7,
        victim_device_key: DEV,
        supervisee_id: SUP + 5,
        enter_m: 500.0,
        exit_m: 800.0,
    });
    let mut r = Rig::new(data);
    let out = r.fix(5, 0.0, 10.0);
    assert!(out.ops.is_empty());
    assert_eq!(r.board.get(DEV).map(|v| v.at), Some(t(5)));
}

#[test]
fn battery_thresholds_with_hysteresis_and_charging() {
    let mut r = Rig::new(base());
    let bat = |pct, charging| {
        msg(
            vec![],
            vec![],
            Some(Status {
                battery_pct: Some(pct),
                charging: Some(charging),
                ..Default::default()
            }),
        )
    };
    let out = r.feed(bat(15, false));
    assert_eq!(raises(&out)[0].key.kind, AlertKind::BatteryLow);
    let out = r.feed(bat(9, false));
    let a = raises(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].key.kind, AlertKind::BatteryCritical);
    assert_eq!(ends(&r.feed(bat(11, false))), 0, "hysteresis");
    assert_eq!(ends(&r.feed(bat(12, true))), 2, "charging ends both");
}

#[test]
fn gps_loss_after_minutes_of_messages_without_usable_fixes() {
    let mut r = Rig::new(base());
    r.fix(0, 500.0, 5.0);
    let status_at = |s| {
        let mut m = msg(vec![], vec![], Some(Status::default()));
        m.received_at = t(s);
        m
    };
    // A long silence is no_signal's business, not gps_loss's: the count
    // starts at the first message without a usable fix.
    assert!(r.feed(status_at(2000)).ops.is_empty());
    let poor = msg(vec![fix(2250, 500.0, 900.0)], vec![], None);
    assert!(r.feed(poor).ops.is_empty(), "a 900 m fix is not usable");
    assert!(r.feed(status_at(2290)).ops.is_empty(), "4 min 50 s");
    let out = r.feed(status_at(2301));
    assert_eq!(raises(&out)[0].key.kind, AlertKind::GpsLoss);
    assert_eq!(ends(&r.fix(2400, 500.0, 5.0)), 1);
}

#[test]
fn late_reports_cannot_end_alerts_or_fake_the_beacon() {
    let mut r = Rig::new(base());
    let ev = |s, kind| DeviceEvent { ts: t(s), kind };
    r.feed(msg(vec![], vec![ev(100, EventKind::StrapOpen)], None));
    // A buffered strap_closed from before the opening is history.
    let out = r.feed(msg(vec![], vec![ev(50, EventKind::StrapClosed)], None));
    assert_eq!(ends(&out), 0);
    assert!(r.st.is_active(AlertKind::StrapTamper));
    let out = r.feed(msg(vec![], vec![ev(60, EventKind::BeaconEnter)], None));
    assert!(out.ops.is_empty());
    assert_eq!(r.st.beacon, None, "a late beacon report changes nothing");
    // A newer one does end it.
    assert_eq!(
        ends(&r.feed(msg(vec![], vec![ev(150, EventKind::StrapClosed)], None))),
        1
    );
}

#[test]
fn late_fixes_need_the_same_debounce_as_live_ones() {
    let mut r = Rig::new(base());
    r.fix(1000, 500.0, 5.0);
    // One buffered fix inside the zone: noise until shown otherwise.
    assert!(raises(&r.feed(msg(vec![fix(100, 10.0, 5.0)], vec![], None))).is_empty());
}

#[test]
fn rules_removed_or_reassigned_end_their_conditions() {
    let mut r = Rig::new(base());
    r.fix(0, 0.0, 5.0);
    assert_eq!(raises(&r.fix(5, 0.0, 5.0)).len(), 1);
    let mut data = base();
    data.rules.clear();
    r.snap = Snapshot::build(data);
    assert_eq!(ends(&r.fix(10, 0.0, 5.0)), 1);
}

#[test]
fn shared_lists_raise_per_zone() {
    let mut data = base();
    data.rules = vec![RuleRow {
        zone_id: None,
        list_ref: Some("schools".into()),
        ..rule(3, "exclusion", 0)
    }];
    for i in 0..50 {
        let mut z = zone(
            1000 + i,
            &format!("School {i}"),
            circle(LAT + i as f64 * 0.01, LON, 80.0),
        );
        z.list_ref = Some("schools".into());
        data.zones.push(z);
    }
    let mut r = Rig::new(data);
    r.fix(0, 0.0, 5.0);
    let a = raises(&r.fix(5, 0.0, 5.0))
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].key.zone_id, Some(1000));
    // Walk away: the list rule sees the zone no longer near and clears it.
    r.fix(10, 500.0, 5.0);
    assert_eq!(ends(&r.fix(15, 500.0, 5.0)), 1);
}

#[test]
fn device_state_stays_small_and_round_trips() {
    let mut r = Rig::new(base());
    r.fix(0, 0.0, 5.0);
    r.fix(5, 0.0, 5.0);
    let json = serde_json::to_value(&r.st).unwrap();
    let back: DeviceState = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, r.st);
    // In memory: the struct, one active condition, a hash-map slot.
    let bytes = std::mem::size_of::<DeviceState>()
        + r.st.conditions.capacity() * std::mem::size_of::<super::engine::Condition>()
        + 48;
    eprintln!(
        "device state: {} B struct, {} B per condition, {bytes} B with one active condition",
        std::mem::size_of::<DeviceState>(),
        std::mem::size_of::<super::engine::Condition>()
    );
    assert!(bytes <= 1024, "{bytes} bytes per tracked device");
    let idle = DeviceState::default();
    assert!(serde_json::to_string(&idle).unwrap().len() < 200);
}

#[test]
fn a_reload_reuses_prepared_zones_and_unchanged_list_indexes() {
    let mut data = base();
    for i in 0..20 {
        let mut z = zone(1000 + i, "School", circle(LAT + i as f64 * 0.01, LON, 80.0));
        z.list_ref = Some("schools".into());
        data.zones.push(z);
    }
    let first = Snapshot::build(data.clone());
    let list_ptr = |s: &Snapshot| s.list("schools").unwrap() as *const _;
    // The store sends no geometry for versions the snapshot already holds.
    let mut again = data.clone();
    for z in &mut again.zones {
        z.geojson = None;
    }
    let second = Snapshot::rebuild(again.clone(), Some(&first));
    assert!(second.problems.is_empty(), "{:?}", second.problems);
    assert_eq!(second.counts(), first.counts());
    assert_eq!(list_ptr(&second), list_ptr(&first), "list index reused");
    // One school edited: new version, geometry sent, the list is rebuilt.
    let mut edited = again.clone();
    let school = edited.zones.iter_mut().find(|z| z.id == 1005).unwrap();
    school.version += 1;
    school.geojson = Some(circle(LAT, LON + 0.5, 80.0));
    let third = Snapshot::rebuild(edited, Some(&second));
    assert!(third.problems.is_empty());
    assert_ne!(list_ptr(&third), list_ptr(&second));
    assert_eq!(third.zone(1005).unwrap().version, 4);
    // A broken new version keeps the last good one in force (fail safe).
    let mut broken = again.clone();
    broken
        .zones
        .iter_mut()
        .find(|z| z.id == 1005)
        .unwrap()
        .version = 4;
    let victim_home = broken.zones.iter_mut().find(|z| z.id == 100).unwrap();
    victim_home.version += 1;
    victim_home.geojson = Some(json!({"type": "Point", "coordinates": [0, 0]}));
    let fourth = Snapshot::rebuild(broken, Some(&third));
    assert_eq!(fourth.problems.len(), 1, "{:?}", fourth.problems);
    assert_eq!(fourth.zone(100).unwrap().version, 3);
    assert_eq!(fourth.rules_of(SUP).len(), 1, "the rule stays in force");
    // Without a previous snapshot, missing geometry is a problem, not a panic.
    let orphan = Snapshot::rebuild(again, None);
    // 21 zones without geometry, and the rule that needed one of them.
    assert_eq!(orphan.problems.len(), 22);
}
