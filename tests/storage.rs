//! The storage contract, written once and run against both backends:
//! PostgreSQL (a fresh database per test; PostgreSQL missing fails the test,
//! never skips it) and SQLite (a fresh file in a temporary directory). A
//! parity test also runs one alert history through both and compares what
//! consumers see: the alert log and the officers' alert list.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use common::stores::{lite, pg, Backend};
use waypoint::alerts::{
    AlertEvent, AlertKey, AlertKind, AlertOp, Confidence, Evidence, NewAlert, OfficerAction,
    ResolutionOutcome, Severity,
};
use waypoint::directory::DirectoryEvent;
use waypoint::domain::{
    DeviceEvent, DeviceId, EventKind, Fix, FixSource, ItemKind, ItemRejection, MessageKey,
    RejectReason, Status, StrapState, Telemetry,
};
use waypoint::rules::engine::TimelineEntry;
use waypoint::scenario::Scenario;
use waypoint::store::{
    AcceptedMessage, AlertFilter, AlertRecord, AlertWrites, CommitHook, Outcome, Prepared,
    Rejection, StateRow, Store, StoreError,
};

/// Each case as a test on each backend.
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::pg().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::lite().await).await;
                }
            )*
        }
    };
}

on_both!(
    migrate_is_idempotent,
    redeliveries_are_duplicates_and_other_content_is_a_conflict,
    refusals_are_recorded_once,
    an_older_status_never_overwrites_a_newer_one,
    devices_are_enrolled_found_and_revoked,
    a_scenario_loads_idempotently_and_feeds_the_rules_snapshot,
    alert_writes_the_log_and_officer_decisions,
    watchers_fire_at_start_and_after_a_change,
    racing_writers_raise_one_alert_and_lose_no_message,
);

/// Whole seconds after a fixed instant: both backends store them exactly
/// (PostgreSQL keeps microseconds, SQLite the text sqlx wrote).
fn t(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::TimeDelta::seconds(s)
}

fn fix(s: i64, lat: f64) -> Fix {
    Fix {
        ts: t(s),
        lat,
        lon: -0.12,
        acc_m: 8.5,
        alt_m: Some(12.0),
        speed_mps: None,
        heading_deg: Some(90.0),
        src: FixSource::Gnss,
    }
}

/// A message from `device_key`: `fixes` fixes, `digest` standing for its
/// content (same digest = same bytes).
fn msg(device_key: i64, seq: i64, fixes: usize, digest: u8) -> AcceptedMessage {
    AcceptedMessage {
        device_key,
        topic: "wp/v1/tag-1/up".into(),
        received_at: t(seq),
        digest: [digest; 16],
        telemetry: Telemetry {
            device: DeviceId::parse("tag-1").unwrap(),
            key: MessageKey { boot: 1, seq },
            fixes: (0..fixes)
                .map(|i| fix(seq, 51.5 + i as f64 * 1e-4))
                .collect(),
            status: None,
            events: vec![],
        },
        item_rejections: vec![],
        payload: Bytes::from(vec![digest; 8]),
        store_fixes: true,
    }
}

fn accepted(m: AcceptedMessage) -> Prepared {
    Prepared::Accepted(Box::new(m))
}

fn refused_whole(claim: &str, payload: &'static [u8]) -> Prepared {
    Prepared::Rejected(Box::new(
        Rejection {
            received_at: t(1),
            topic: format!("wp/v1/{claim}/up"),
            device_key: None,
            device_claim: Some(claim.into()),
            key: None,
            reason: RejectReason::UnknownDevice,
            detail: "not enrolled".into(),
            payload: Some(Bytes::from_static(payload)),
        }
        .capped(),
    ))
}

/// Hands out prepared [`AlertWrites`], one per call that has new messages,
/// and records which messages it was shown.
#[derive(Default)]
struct Hook {
    writes: Mutex<VecDeque<AlertWrites>>,
    seen: Mutex<Vec<Vec<(i64, i64)>>>,
}

impl Hook {
    fn with(writes: Vec<AlertWrites>) -> Self {
        Self {
            writes: Mutex::new(writes.into()),
            ..Default::default()
        }
    }
    fn seen(&self) -> Vec<Vec<(i64, i64)>> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl CommitHook for Hook {
    fn evaluate(&self, fresh: &[&AcceptedMessage]) -> AlertWrites {
        self.seen.lock().unwrap().push(
            fresh
                .iter()
                .map(|m| (m.telemetry.key.boot, m.telemetry.key.seq))
                .collect(),
        );
        if fresh.is_empty() {
            return AlertWrites::default();
        }
        self.writes.lock().unwrap().pop_front().unwrap_or_default()
    }
}

async fn enroll<B: Backend>(b: &B, id: &str) -> i64 {
    b.store()
        .add_device(&DeviceId::parse(id).unwrap(), None, t(0))
        .await
        .expect("enroll")
        .key
}

async fn migrate_is_idempotent<B: Backend>(b: &B) {
    let s = b.store();
    s.migrate().await.expect("second run");
    s.migrate().await.expect("third run");
    s.ping().await.expect("ping");
    assert!(s.devices().await.unwrap().is_empty());
    assert_eq!(s.alert_event_head().await.unwrap(), 0);
}

async fn redeliveries_are_duplicates_and_other_content_is_a_conflict<B: Backend>(b: &B) {
    let s = b.store();
    let key = enroll(b, "tag-1").await;
    let hook = Hook::default();

    let mut m1 = msg(key, 1, 2, 1);
    m1.telemetry.events = vec![DeviceEvent {
        ts: t(1),
        kind: EventKind::StrapOpen,
    }];
    m1.telemetry.status = Some(Status {
        battery_pct: Some(80),
        strap: Some(StrapState::Open),
        firmware: Some("1.4.2".into()),
        ..Default::default()
    });
    let batch = vec![
        accepted(m1.clone()),
        accepted(msg(key, 2, 1, 2)),
        // Same key twice in one batch: same content, then other content.
        accepted(msg(key, 2, 1, 2)),
        accepted(msg(key, 2, 1, 9)),
        // A victim's device: ledger row, no fixes.
        accepted(AcceptedMessage {
            store_fixes: false,
            ..msg(key, 3, 4, 3)
        }),
    ];
    let r = s.commit(&batch, &hook).await.unwrap();
    use Outcome::*;
    assert_eq!(r.outcomes, [Stored, Stored, Duplicate, Conflict, Stored]);
    assert_eq!(r.fixes_stored, 3);
    assert_eq!(
        r.rejections,
        BTreeMap::from([(RejectReason::SeqConflict, 1)])
    );
    assert_eq!(hook.seen(), [vec![(1, 1), (1, 2), (1, 3)]]);

    // The broker redelivers the batch: nothing new, the hook sees nothing,
    // and the conflict already on record is not recorded again.
    let r = s.commit(&batch, &hook).await.unwrap();
    assert_eq!(
        r.outcomes,
        [Duplicate, Duplicate, Duplicate, Conflict, Duplicate]
    );
    assert_eq!(r.fixes_stored, 0);
    assert!(r.rejections.is_empty(), "{:?}", r.rejections);
    assert_eq!(hook.seen(), [Vec::<(i64, i64)>::new()]);

    // A third version of seq 1 in a later batch is a conflict of its own.
    let r = s
        .commit(&[accepted(msg(key, 1, 1, 7))], &hook)
        .await
        .unwrap();
    assert_eq!(r.outcomes, [Conflict]);
    assert_eq!(
        r.rejections,
        BTreeMap::from([(RejectReason::SeqConflict, 1)])
    );

    assert_eq!(b.scalar("SELECT count(*) FROM messages").await, 3);
    assert_eq!(b.scalar("SELECT count(*) FROM fixes").await, 3);
    assert_eq!(
        b.scalar("SELECT CAST(sum(fix_count) AS bigint) FROM messages")
            .await,
        3
    );
    assert_eq!(b.scalar("SELECT count(*) FROM device_events").await, 1);
    assert_eq!(
        b.scalar("SELECT CAST(battery_pct AS bigint) FROM device_status")
            .await,
        80
    );
    assert_eq!(
        b.scalar("SELECT count(*) FROM rejected_messages WHERE reason = 'seq_conflict'")
            .await,
        2
    );
    // Stored values read back as written.
    assert_eq!(
        b.scalar(
            "SELECT count(*) FROM fixes WHERE idx = 1 AND acc_m = 8.5 AND alt_m = 12 \
             AND speed_mps IS NULL AND heading_deg = 90 AND src = 'gnss' AND boot = 1"
        )
        .await,
        1
    );
}

async fn refusals_are_recorded_once<B: Backend>(b: &B) {
    let s = b.store();
    let key = enroll(b, "tag-1").await;
    let mut m = msg(key, 1, 1, 1);
    m.item_rejections = vec![ItemRejection {
        kind: ItemKind::Fix,
        index: 1,
        reason: RejectReason::InvalidCoordinates,
        detail: "latitude out of range".into(),
    }];
    let batch = vec![
        accepted(m),
        refused_whole("ghost", b"{\"v\":1}"),
        // NUL in a topic must not cost the record.
        refused_whole("gh\0st", b"x"),
    ];
    let r = s.commit(&batch, &Hook::default()).await.unwrap();
    assert_eq!(
        r.outcomes,
        [Outcome::Stored, Outcome::Rejected, Outcome::Rejected]
    );
    assert_eq!(
        r.rejections,
        BTreeMap::from([
            (RejectReason::UnknownDevice, 2),
            (RejectReason::InvalidCoordinates, 1)
        ])
    );
    let r = s.commit(&batch, &Hook::default()).await.unwrap();
    assert_eq!(
        r.outcomes,
        [Outcome::Duplicate, Outcome::Rejected, Outcome::Rejected]
    );
    assert!(r.rejections.is_empty(), "{:?}", r.rejections);
    assert_eq!(b.scalar("SELECT count(*) FROM rejected_messages").await, 3);
    assert_eq!(
        b.scalar(
            "SELECT count(*) FROM rejected_messages WHERE item_kind = 'fix' AND item_index = 1 \
             AND boot = 1 AND seq = 1 AND device_claim = 'tag-1'"
        )
        .await,
        1
    );
}

async fn an_older_status_never_overwrites_a_newer_one<B: Backend>(b: &B) {
    let s = b.store();
    let key = enroll(b, "tag-1").await;
    let with_battery = |seq: i64, pct: u8| {
        let mut m = msg(key, seq, 0, seq as u8);
        m.telemetry.status = Some(Status {
            battery_pct: Some(pct),
            charging: Some(true),
            beacon: Some(false),
            rssi_dbm: Some(-71),
            ..Default::default()
        });
        accepted(m)
    };
    let battery = || b.scalar("SELECT CAST(battery_pct AS bigint) FROM device_status");
    // In one batch the newest wins whatever the order.
    s.commit(
        &[with_battery(5, 50), with_battery(4, 40)],
        &Hook::default(),
    )
    .await
    .unwrap();
    assert_eq!(battery().await, 50);
    // An older message arriving later does not win either.
    s.commit(&[with_battery(3, 90)], &Hook::default())
        .await
        .unwrap();
    assert_eq!(battery().await, 50);
    s.commit(&[with_battery(6, 60)], &Hook::default())
        .await
        .unwrap();
    assert_eq!(battery().await, 60);
    assert_eq!(
        b.scalar(
            "SELECT count(*) FROM device_status WHERE charging AND NOT beacon AND rssi_dbm = -71"
        )
        .await,
        1
    );
}

async fn devices_are_enrolled_found_and_revoked<B: Backend>(b: &B) {
    let s = b.store();
    let id = |s: &str| DeviceId::parse(s).unwrap();
    let a = s.add_device(&id("tag-1"), None, t(0)).await.unwrap();
    let o = s
        .add_device(&id("phone-1"), Some(("alice", "pixel")), t(0))
        .await
        .unwrap();
    assert_eq!(o.owntracks, Some(("alice".into(), "pixel".into())));
    assert!(!a.revoked);
    assert!(matches!(
        s.add_device(&id("tag-1"), None, t(0)).await,
        Err(StoreError::AlreadyExists(_))
    ));
    // The OwnTracks pair is unique too.
    assert!(matches!(
        s.add_device(&id("phone-2"), Some(("alice", "pixel")), t(0))
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(s.device(&id("tag-1")).await.unwrap(), Some(a.clone()));
    assert_eq!(s.device(&id("nobody")).await.unwrap(), None);
    assert_eq!(
        s.device_by_owntracks("alice", "pixel").await.unwrap(),
        Some(o.clone())
    );
    assert_eq!(s.device_by_owntracks("alice", "other").await.unwrap(), None);

    s.revoke_device(&id("tag-1"), t(5)).await.unwrap();
    assert!(matches!(
        s.revoke_device(&id("tag-1"), t(6)).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.revoke_device(&id("nobody"), t(6)).await,
        Err(StoreError::NotFound(_))
    ));
    let mut all = s.devices().await.unwrap();
    all.sort_by_key(|d| d.key);
    assert_eq!(all.len(), 2);
    assert!(all[0].revoked && all[0].id.as_str() == "tag-1");
    assert_eq!(all[1], o);
}

fn scenario() -> Scenario {
    Scenario::parse(
        &json!({
            "supervisees": [{"case_ref": "C-100", "time_zone": "Europe/London",
                             "officer": "pc-1"}],
            "devices": [{"device_id": "tag-1", "report_interval_s": 10},
                        {"device_id": "victim-1"}],
            "zones": [{"zone_ref": "victim-home", "name": "Victim residence", "geojson": {
                "type": "Feature", "properties": {"radius_m": 100},
                "geometry": {"type": "Point", "coordinates": [-0.12, 51.5]}}}],
            "rules": [{"supervisee": "C-100", "role": "exclusion", "zone": "victim-home",
                       "grace_s": 30}],
            "assignments": [{"device": "tag-1", "supervisee": "C-100",
                             "from": "2020-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}],
            "exceptions": [{"supervisee": "C-100",
                            "rule": {"role": "exclusion", "zone": "victim-home"},
                            "from": "2026-02-01T10:00:00Z", "to": "2026-02-01T12:00:00Z",
                            "reason": "court hearing"}],
            "pairings": [{"victim_device": "victim-1", "supervisee": "C-100",
                          "enter_m": 500, "exit_m": 700}]
        })
        .to_string(),
    )
    .unwrap()
}

async fn a_scenario_loads_idempotently_and_feeds_the_rules_snapshot<B: Backend>(b: &B) {
    let s = b.store();
    let rep = s.apply_scenario(&scenario(), "test").await.unwrap();
    assert_eq!(
        (
            rep.supervisees_created,
            rep.devices_created,
            rep.zones_created,
            rep.zone_versions_added,
            rep.rules_upserted,
            rep.assignments_created,
            rep.exceptions_created,
            rep.pairings_upserted
        ),
        (1, 2, 1, 0, 1, 1, 1, 1)
    );
    let data = s.load_rules(&[]).await.unwrap();
    assert_eq!(data.supervisees.len(), 1);
    assert_eq!(data.supervisees[0].case_ref, "C-100");
    assert_eq!(data.zones.len(), 1);
    let zone = &data.zones[0];
    assert_eq!((zone.version, zone.name.as_str()), (1, "Victim residence"));
    assert!(zone.geojson.is_some());
    assert_eq!(data.rules.len(), 1);
    assert_eq!(
        (data.rules[0].role.as_str(), data.rules[0].zone_id),
        ("exclusion", Some(zone.id))
    );
    assert_eq!(
        (data.rules[0].confirm_fixes, data.rules[0].grace_s),
        (2, 30)
    );
    assert_eq!(data.assignments.len(), 1);
    assert_eq!(
        data.assignments[0].from,
        Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap()
    );
    assert_eq!(
        data.assignments[0].to,
        Some(Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap())
    );
    assert_eq!(data.exceptions.len(), 1);
    assert_eq!(data.exceptions[0].rule_id, Some(data.rules[0].id));
    assert_eq!(data.pairings.len(), 1);
    assert_eq!(
        (data.pairings[0].enter_m, data.pairings[0].exit_m),
        (500.0, 700.0)
    );
    let mut intervals = data.intervals.clone();
    intervals.sort_by_key(|i| i.1);
    assert_eq!(intervals.iter().map(|i| i.1).collect::<Vec<_>>(), [10, 60]);

    // Geometry already held is not read again.
    let again = s.load_rules(&[(zone.id, 1)]).await.unwrap();
    assert!(again.zones[0].geojson.is_none());
    let other_version = s.load_rules(&[(zone.id, 2)]).await.unwrap();
    assert!(other_version.zones[0].geojson.is_some());

    // Loading the same file again creates nothing.
    let rep = s.apply_scenario(&scenario(), "test").await.unwrap();
    assert_eq!(
        (
            rep.supervisees_created,
            rep.devices_created,
            rep.zones_created,
            rep.zone_versions_added,
            rep.assignments_created,
            rep.exceptions_created
        ),
        (0, 0, 0, 0, 0, 0)
    );
    assert_eq!(b.scalar("SELECT count(*) FROM rules").await, 1);
    assert_eq!(b.scalar("SELECT count(*) FROM device_assignments").await, 1);

    // An edited geometry is a new version; the alert history keeps the old.
    let mut edited = scenario();
    edited.zones[0].geojson["properties"]["radius_m"] = json!(150);
    let rep = s.apply_scenario(&edited, "test").await.unwrap();
    assert_eq!((rep.zones_created, rep.zone_versions_added), (0, 1));
    let data = s.load_rules(&[(zone.id, 1)]).await.unwrap();
    assert_eq!(data.zones[0].version, 2);
    assert!(data.zones[0].geojson.is_some());

    // A second wearer overlapping the first is refused, and the whole file
    // with it.
    let mut overlap = scenario();
    overlap.supervisees[0].case_ref = "C-200".into();
    overlap.rules.clear();
    overlap.exceptions.clear();
    overlap.pairings.clear();
    overlap.assignments[0].supervisee = "C-200".into();
    overlap.assignments[0].from = t(0);
    match s.apply_scenario(&overlap, "test").await {
        Err(StoreError::Invalid(m)) => {
            assert!(m.starts_with("assignments[0]"), "{m}");
            assert!(m.contains("overlaps"), "{m}");
        }
        other => panic!("overlap accepted: {other:?}"),
    }
    assert_eq!(b.scalar("SELECT count(*) FROM supervisees").await, 1);
    // Handing the device back first makes room for the next wearer.
    let mut handed_back = scenario();
    handed_back.assignments[0].to = Some(t(0));
    s.apply_scenario(&handed_back, "test").await.unwrap();
    let rep = s.apply_scenario(&overlap, "test").await.unwrap();
    assert_eq!(rep.assignments_created, 1);

    // Unknown references name the entry.
    let mut bad = scenario();
    bad.assignments[0].device = "nope".into();
    match s.apply_scenario(&bad, "test").await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("assignments[0]"), "{m}"),
        other => panic!("unknown device accepted: {other:?}"),
    }
}

fn tamper(device_key: i64) -> AlertKey {
    AlertKey::device(device_key, AlertKind::StrapTamper)
}

fn evidence(s: i64) -> Evidence {
    Evidence {
        at: t(s),
        lat: Some(51.5),
        lon: Some(-0.12),
        acc_m: Some(9.5),
        observation: "strap_open".into(),
        distance_m: None,
        detail: Some(format!("report {s}")),
    }
}

fn raise(device_key: i64, s: i64, ended: Option<i64>) -> AlertOp {
    AlertOp::Raise(Box::new(NewAlert {
        key: tamper(device_key),
        supervisee_id: None,
        severity: Severity::Critical,
        zone_version: None,
        rule_id: None,
        confidence: Confidence::Confirmed,
        late: ended.is_some(),
        started_at: t(s),
        last_evidence_at: t(s),
        ended_at: ended.map(t),
        explanation: "Device reported its strap opened.".into(),
        details: json!({"source": "test"}),
        evidence: vec![evidence(s)],
    }))
}

fn writes(now: i64, ops: Vec<AlertOp>) -> AlertWrites {
    AlertWrites {
        now: t(now),
        ops,
        ..Default::default()
    }
}

/// One alert history, checked as it goes; returns what consumers see so the
/// parity test can compare the backends.
async fn alert_history<B: Backend>(b: &B) -> (Vec<AlertEvent>, Vec<AlertRecord>) {
    let s = b.store();
    let key = enroll(b, "tag-1").await;
    let k = tamper(key);
    let state = |v: i64| StateRow {
        device_key: key,
        version: v,
        last_seen: Some(t(v * 10)),
        state: json!({"zones": [], "v": v}),
    };
    let hook = Hook::with(vec![
        AlertWrites {
            states: vec![state(1)],
            timeline: vec![TimelineEntry {
                device_key: key,
                at: t(10),
                kind: AlertKind::StrapTamper,
                zone_id: None,
                detail: "possible".into(),
            }],
            ..writes(10, vec![raise(key, 10, None)])
        },
        // Evidence on the open alert, merged; the minute changes: one log entry.
        AlertWrites {
            states: vec![state(2)],
            ..writes(
                90,
                vec![
                    AlertOp::Evidence {
                        key: k,
                        at: t(20),
                        evidence: Some(evidence(20)),
                    },
                    AlertOp::Evidence {
                        key: k,
                        at: t(90),
                        evidence: Some(evidence(90)),
                    },
                ],
            )
        },
        // Same minute: counted, no log entry.
        writes(
            95,
            vec![AlertOp::Evidence {
                key: k,
                at: t(95),
                evidence: None,
            }],
        ),
    ]);
    let r = s
        .commit(&[accepted(msg(key, 1, 1, 1))], &hook)
        .await
        .unwrap();
    assert_eq!(r.alerts_raised, [AlertKind::StrapTamper]);
    assert_eq!(r.alert_events, 1);
    let r = s
        .commit(&[accepted(msg(key, 2, 1, 2))], &hook)
        .await
        .unwrap();
    assert_eq!((r.alerts_raised.len(), r.alert_events), (0, 1));
    let r = s
        .commit(&[accepted(msg(key, 3, 1, 3))], &hook)
        .await
        .unwrap();
    assert_eq!((r.alerts_raised.len(), r.alert_events), (0, 0));
    // Redelivered: the hook is not asked to evaluate it again.
    let r = s
        .commit(&[accepted(msg(key, 3, 1, 3))], &hook)
        .await
        .unwrap();
    assert_eq!((r.outcomes[0], r.alert_events), (Outcome::Duplicate, 0));
    assert_eq!(
        s.active_alert_devices(AlertKind::StrapTamper)
            .await
            .unwrap(),
        [key]
    );
    assert!(s
        .active_alert_devices(AlertKind::NoSignal)
        .await
        .unwrap()
        .is_empty());

    // Timers' writes: the condition ends; it recurs (a raise twice in one
    // batch is one alert); a late alert of a finished past episode is a row
    // of its own even while the condition is open.
    let r = s
        .commit_alerts(&writes(
            100,
            vec![AlertOp::End {
                key: k,
                at: t(100),
                reason: "strap closed".into(),
            }],
        ))
        .await
        .unwrap();
    assert_eq!(r.alert_events, 1);
    assert!(s
        .active_alert_devices(AlertKind::StrapTamper)
        .await
        .unwrap()
        .is_empty());
    let r = s
        .commit_alerts(&writes(
            200,
            vec![raise(key, 200, None), raise(key, 201, None)],
        ))
        .await
        .unwrap();
    assert_eq!((r.alerts_raised.len(), r.alert_events), (1, 1));
    let r = s
        .commit_alerts(&writes(300, vec![raise(key, 50, Some(60))]))
        .await
        .unwrap();
    assert_eq!((r.alerts_raised.len(), r.alert_events), (1, 1));
    assert_eq!(b.scalar("SELECT count(*) FROM alerts").await, 3);
    assert_eq!(b.scalar("SELECT count(*) FROM device_timeline").await, 1);

    // Per-device state.
    let states = s.load_device_states(&[key, 999]).await.unwrap();
    assert_eq!(states, [state(2)]);
    assert!(s.load_device_states(&[]).await.unwrap().is_empty());
    assert_eq!(s.last_seen_all().await.unwrap(), [(key, t(20))]);

    // Officers' decisions.
    let first = b.scalar("SELECT min(alert_id) FROM alerts").await;
    s.alert_action(first, "pc-1", &OfficerAction::Acknowledge, t(400))
        .await
        .unwrap();
    assert!(matches!(
        s.alert_action(first, "pc-1", &OfficerAction::Acknowledge, t(401))
            .await,
        Err(StoreError::Invalid(_))
    ));
    let resolve = |note: &str| OfficerAction::Resolve {
        outcome: ResolutionOutcome::EquipmentFault,
        note: note.into(),
    };
    assert!(matches!(
        s.alert_action(first, "pc-1", &resolve(" "), t(402)).await,
        Err(StoreError::Invalid(_))
    ));
    s.alert_action(first, "pc-2", &OfficerAction::Note("called".into()), t(403))
        .await
        .unwrap();
    s.alert_action(first, "pc-2", &resolve("strap replaced"), t(404))
        .await
        .unwrap();
    assert!(matches!(
        s.alert_action(first, "pc-2", &resolve("again"), t(405))
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.alert_action(999_999, "pc-1", &OfficerAction::Acknowledge, t(406))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        b.scalar("SELECT count(*) FROM audit_log WHERE role = 'cli'")
            .await,
        3
    );

    // The log: every change in order, ids without gaps, the alert as it
    // stood after each change.
    let log = s.alert_events_after(0, 100).await.unwrap();
    let types: Vec<&str> = log.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "raised",
            "updated",
            "condition_ended",
            "raised",
            "raised",
            "acknowledged",
            "note",
            "resolved"
        ]
    );
    let ids: Vec<i64> = log.iter().map(|e| e.event_id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    assert_eq!(s.alert_event_head().await.unwrap(), *ids.last().unwrap());
    assert_eq!(s.alert_events_after(ids[5], 2).await.unwrap().len(), 2);
    let raised = &log[0].alert;
    assert_eq!(log[0].device_id, "tag-1");
    assert_eq!(raised["device_id"], "tag-1");
    assert_eq!(raised["late"], json!(false));
    assert_eq!(raised["evidence_count"], json!(1));
    assert_eq!(raised["details"], json!({"source": "test"}));
    assert_eq!(raised["status"], "open");
    assert_eq!(log[1].alert["evidence_count"], json!(3));
    assert_eq!(
        log[2].alert["details"],
        json!({"source": "test", "end_reason": "strap closed"})
    );
    assert_eq!(log[4].alert["late"], json!(true));
    assert_eq!(log[7].alert["status"], "resolved");
    assert_eq!(log[7].at, t(404));

    // Outbox cursors only move forward.
    assert_eq!(s.outbox_cursor("mqtt").await.unwrap(), 0);
    s.set_outbox_cursor("mqtt", ids[3]).await.unwrap();
    s.set_outbox_cursor("mqtt", ids[1]).await.unwrap();
    assert_eq!(s.outbox_cursor("mqtt").await.unwrap(), ids[3]);
    assert_eq!(s.outbox_cursor("other").await.unwrap(), 0);

    // The officers' list.
    let all = s
        .alerts(&AlertFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    // Newest raised first within a severity.
    let raised_at: Vec<DateTime<Utc>> = all.iter().map(|a| a.raised_at).collect();
    assert_eq!(raised_at, [t(300), t(200), t(10)]);
    let done = s
        .alerts(&AlertFilter {
            status: Some("resolved".into()),
            kind: Some(AlertKind::StrapTamper),
            device_id: Some("tag-1".into()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    let a = &done[0];
    assert_eq!(a.alert_id, first);
    assert_eq!(
        (a.evidence_count, a.last_evidence_at, a.condition_ended_at),
        (4, t(95), Some(t(100)))
    );
    assert_eq!(a.evidence, [evidence(10), evidence(20), evidence(90)]);
    let actions: Vec<(&str, &str, Option<&str>)> = a
        .actions
        .iter()
        .map(|x| (x.action.as_str(), x.actor.as_str(), x.outcome.as_deref()))
        .collect();
    assert_eq!(
        actions,
        [
            ("acknowledge", "pc-1", None),
            ("note", "pc-2", None),
            ("resolve", "pc-2", Some("equipment_fault"))
        ]
    );
    assert!(s
        .alerts(&AlertFilter {
            device_id: Some("other".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty());
    (log, all)
}

async fn alert_writes_the_log_and_officer_decisions<B: Backend>(b: &B) {
    alert_history(b).await;
}

/// Both backends, one history: consumers cannot tell them apart. Alert ids
/// are compared by rank: PostgreSQL's identity skips the value an upsert
/// that became an update drew, SQLite's ids have no gaps; both are unique
/// and increasing, which is all ids promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_give_consumers_the_same_alert_log_and_list() {
    let (pg_log, pg_list) = alert_history(&pg().await).await;
    let (lite_log, lite_list) = alert_history(&lite().await).await;
    let (pg_log, pg_list) = by_rank(pg_log, pg_list);
    let (lite_log, lite_list) = by_rank(lite_log, lite_list);
    assert_eq!(lite_list, pg_list);
    assert_eq!(lite_log.len(), pg_log.len());
    for (l, p) in lite_log.iter().zip(&pg_log) {
        assert_eq!(l, p, "log entry {}", p.event_id);
    }
}

/// Replaces alert ids by their rank among the listed alerts.
fn by_rank(
    mut log: Vec<AlertEvent>,
    mut list: Vec<AlertRecord>,
) -> (Vec<AlertEvent>, Vec<AlertRecord>) {
    let mut ids: Vec<i64> = list.iter().map(|a| a.alert_id).collect();
    ids.sort_unstable();
    let rank = |id: i64| ids.iter().position(|&x| x == id).expect("listed") as i64 + 1;
    for a in &mut list {
        a.alert_id = rank(a.alert_id);
    }
    for e in &mut log {
        e.alert_id = rank(e.alert_id);
        e.alert["alert_id"] = json!(e.alert_id);
    }
    (log, list)
}

async fn racing_writers_raise_one_alert_and_lose_no_message<B: Backend>(b: &B) {
    let s = b.store();
    let key = enroll(b, "tag-1").await;
    // Two writers (two shards, or two instances) on the same condition.
    let (w1, w2) = (
        writes(10, vec![raise(key, 10, None)]),
        writes(10, vec![raise(key, 11, None)]),
    );
    let (r1, r2) = tokio::join!(s.commit_alerts(&w1), s.commit_alerts(&w2));
    let raised = r1.unwrap().alerts_raised.len() + r2.unwrap().alerts_raised.len();
    assert_eq!(raised, 1);
    assert_eq!(b.scalar("SELECT count(*) FROM alerts").await, 1);
    // Eight batches at once, each with its own messages and one copy of a
    // shared one: every message is stored once, the shared one once.
    let commits = (0..8i64).map(|w| {
        let s = s.clone();
        async move {
            let batch: Vec<Prepared> = (0..20)
                .map(|i| accepted(msg(key, 100 + w * 20 + i, 2, 1)))
                .chain([accepted(msg(key, 1, 1, 1))])
                .collect();
            // What the batcher does: a transient error (PostgreSQL reports
            // a key claimed by a concurrent transaction as Contended) is
            // retried with the same batch.
            loop {
                match s.commit(&batch, &Hook::default()).await {
                    Err(e) if e.is_transient() => continue,
                    r => break r,
                }
            }
        }
    });
    let reports = futures_util::future::join_all(commits).await;
    let mut shared_stored = 0;
    for r in reports {
        let r = r.unwrap();
        assert!(r.outcomes[..20].iter().all(|o| *o == Outcome::Stored));
        shared_stored += usize::from(r.outcomes[20] == Outcome::Stored);
    }
    assert_eq!(shared_stored, 1);
    assert_eq!(b.scalar("SELECT count(*) FROM messages").await, 161);
    assert_eq!(b.scalar("SELECT count(*) FROM fixes").await, 321);
}

/// Waits for the next event, or fails after `limit`.
async fn next<T>(rx: &mut mpsc::Receiver<T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within 10 s"))
        .unwrap_or_else(|| panic!("{what}: watcher stopped"))
}

async fn watchers_fire_at_start_and_after_a_change<B: Backend>(b: &B) {
    let s = b.store();
    let cancel = CancellationToken::new();
    let (dtx, mut drx) = mpsc::channel(64);
    let (rtx, mut rrx) = mpsc::channel(64);
    let devices = tokio::spawn({
        let (s, c) = (s.clone(), cancel.clone());
        async move { s.watch_devices(dtx, c).await }
    });
    let rules = tokio::spawn({
        let (s, c) = (s.clone(), cancel.clone());
        async move { s.watch_rules(rtx, c).await }
    });
    // Both start with a full reload.
    assert!(matches!(
        next(&mut drx, "initial device resync").await,
        DirectoryEvent::Resync
    ));
    next(&mut rrx, "initial rules reload").await;
    while drx.try_recv().is_ok() {}
    while rrx.try_recv().is_ok() {}

    enroll(b, "tag-9").await;
    match next(&mut drx, "device change").await {
        DirectoryEvent::Resync => {}
        DirectoryEvent::Changed(id) => assert_eq!(id, "tag-9"),
    }
    // Enrollment is part of the rules snapshot too (report intervals).
    next(&mut rrx, "rules change after enrollment").await;
    while rrx.try_recv().is_ok() {}

    s.apply_scenario(&scenario(), "test").await.unwrap();
    next(&mut rrx, "rules change").await;

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), async {
        devices.await.unwrap();
        rules.await.unwrap();
    })
    .await
    .expect("watchers stop when cancelled");
}
