//! Retention on both backends with simulated time: raw fixes, refusals and
//! ledger rows past retention are deleted in batches, newer ones kept, and
//! every fix of an alert's device inside the alert's evidence window
//! (started_at − 30 min .. max(last_evidence_at, condition_ended_at) + 30 min)
//! stays, boundaries included, on that device only.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use common::stores::{lite, pg, Backend};
use waypoint::alerts::{AlertKey, AlertKind, AlertOp, Confidence, Evidence, NewAlert, Severity};
use waypoint::clock::{Clock, ManualClock};
use waypoint::domain::{DeviceId, Fix, FixSource, MessageKey, RejectReason, Telemetry};
use waypoint::metrics::Metrics;
use waypoint::retention::{self, RetentionConfig};
use waypoint::store::{
    AcceptedMessage, AlertFilter, AlertWrites, NoRules, Prepared, PurgeReport, PurgeWindow,
    Rejection, Store,
};

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
    a_pass_deletes_what_is_past_retention_and_keeps_alert_evidence,
    the_background_task_follows_the_clock_and_counts_in_metrics,
);

/// Day 0 of the simulated calendar.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// Day 1 plus `min` minutes: the old day whose data ages out.
fn day1(min: i64) -> DateTime<Utc> {
    t0() + TimeDelta::days(1) + TimeDelta::minutes(min)
}

/// Fixes every 5 minutes over a whole day.
const FIXES_PER_DAY: i64 = 24 * 12 + 1;

/// One message with one fix at `at`, received 5 s later.
fn message(device: &str, device_key: i64, seq: i64, at: DateTime<Utc>) -> Prepared {
    Prepared::Accepted(Box::new(AcceptedMessage {
        device_key,
        topic: format!("wp/v1/{device}/up"),
        received_at: at + TimeDelta::seconds(5),
        digest: [seq as u8; 16],
        telemetry: Telemetry {
            device: DeviceId::parse(device).unwrap(),
            key: MessageKey { boot: 1, seq },
            fixes: vec![Fix {
                ts: at,
                lat: 51.5,
                lon: -0.12,
                acc_m: 8.0,
                alt_m: None,
                speed_mps: None,
                heading_deg: None,
                src: FixSource::Gnss,
            }],
            status: None,
            events: vec![],
        },
        item_rejections: vec![],
        payload: Bytes::from(format!("{device}/{seq}")),
        store_fixes: true,
    }))
}

fn refusal(n: i64, at: DateTime<Utc>) -> Prepared {
    Prepared::Rejected(Box::new(Rejection {
        received_at: at,
        topic: "wp/v1/stranger/up".into(),
        device_key: None,
        device_claim: Some("stranger".into()),
        key: None,
        reason: RejectReason::UnknownDevice,
        detail: "not enrolled".into(),
        payload: Some(Bytes::from(format!("refused {n}"))),
    }))
}

/// A tamper alert on `device_key` with evidence from `start` to `last`
/// (minutes of day 1), ended at `ended` when given.
fn alert(device_key: i64, start: i64, last: i64, ended: Option<i64>) -> AlertOp {
    AlertOp::Raise(Box::new(NewAlert {
        key: AlertKey::device(device_key, AlertKind::StrapTamper),
        supervisee_id: None,
        severity: Severity::Critical,
        zone_version: None,
        rule_id: None,
        confidence: Confidence::Confirmed,
        late: ended.is_some(),
        started_at: day1(start),
        last_evidence_at: day1(last),
        ended_at: ended.map(day1),
        explanation: "Device reported its strap opened.".into(),
        details: json!({}),
        evidence: vec![Evidence {
            at: day1(start),
            lat: Some(51.5),
            lon: Some(-0.12),
            acc_m: Some(8.0),
            observation: "strap_open".into(),
            distance_m: None,
            detail: None,
        }],
    }))
}

/// Devices a (two alerts) and b (none) report every 5 minutes on day 1 and
/// on day 95; 40 refusals on day 1 and 10 on day 95. Returns (a, b).
async fn fill<B: Backend>(b: &B) -> (i64, i64) {
    let s = b.store();
    let key = |id: &str| {
        let s = s.clone();
        let id = DeviceId::parse(id).unwrap();
        async move { s.add_device(&id, None, t0()).await.expect("enroll").key }
    };
    let (ka, kb) = (key("tag-a").await, key("tag-b").await);
    let mut batch = Vec::new();
    for (dev, k) in [("tag-a", ka), ("tag-b", kb)] {
        for i in 0..FIXES_PER_DAY {
            batch.push(message(dev, k, i, day1(i * 5)));
            batch.push(message(
                dev,
                k,
                10_000 + i,
                t0() + TimeDelta::days(95) + TimeDelta::minutes(i * 5),
            ));
        }
    }
    for n in 0..40 {
        batch.push(refusal(n, day1(n)));
    }
    for n in 40..50 {
        batch.push(refusal(n, t0() + TimeDelta::days(95)));
    }
    for chunk in batch.chunks(200) {
        s.commit(chunk, &NoRules).await.expect("commit");
    }
    let writes = AlertWrites {
        now: day1(24 * 60),
        // Ended at 07:00, evidence 06:00-06:10: kept 05:30..07:30.
        // Still active, evidence 20:00-21:00: kept 19:30..21:30.
        ops: vec![alert(ka, 360, 370, Some(420)), alert(ka, 1200, 1260, None)],
        ..Default::default()
    };
    s.commit_alerts(&writes).await.expect("raise alerts");
    (ka, kb)
}

/// Fixes of each evidence window, boundaries included: 25 each.
const KEPT_PER_WINDOW: i64 = (450 - 330) / 5 + 1;

fn cfg(batch: usize) -> RetentionConfig {
    RetentionConfig {
        batch,
        pause: Duration::from_millis(1),
        ..RetentionConfig::new(90).unwrap()
    }
}

async fn a_pass_deletes_what_is_past_retention_and_keeps_alert_evidence<B: Backend>(b: &B) {
    let (ka, kb) = fill(b).await;
    let s = b.store();
    let clock = ManualClock::new(t0() + TimeDelta::days(100));
    let cfg = cfg(100);
    let metrics = Metrics::new();
    let cancel = CancellationToken::new();
    let window = PurgeWindow {
        after: None,
        before: cfg.cutoff(clock.now()),
    };
    let r = retention::purge(&s, window, &cfg, Some(&metrics), &cancel)
        .await
        .expect("purge");
    let old_fixes = 2 * FIXES_PER_DAY;
    assert_eq!(
        r,
        PurgeReport {
            fixes: (old_fixes - 2 * KEPT_PER_WINDOW) as u64,
            rejections: 40,
            messages: old_fixes as u64,
        }
    );
    assert_eq!(metrics.purged_count("fixes"), r.fixes);
    assert_eq!(metrics.purged_count("rejected_messages"), 40);
    assert_eq!(metrics.purged_count("messages"), r.messages);

    // Day 95 untouched; of day 1, only device a's evidence windows remain.
    let q = |dev: i64, day: i64, tail: &str| {
        format!(
            "SELECT count(*) FROM fixes WHERE device_key = {dev} AND fix_time {} '{}'{tail}",
            if day == 1 { "<" } else { ">=" },
            (t0() + TimeDelta::days(2)).format("%Y-%m-%dT%H:%M:%S+00:00"),
        )
    };
    assert_eq!(b.scalar(&q(ka, 95, "")).await, FIXES_PER_DAY);
    assert_eq!(b.scalar(&q(kb, 95, "")).await, FIXES_PER_DAY);
    assert_eq!(
        b.scalar(&q(kb, 1, "")).await,
        0,
        "no alert on b: all of day 1 goes"
    );
    assert_eq!(b.scalar(&q(ka, 1, "")).await, 2 * KEPT_PER_WINDOW);
    // Exactly the windows, both boundaries (05:30, 07:30, 19:30, 21:30) in.
    for (lo, hi) in [(330, 450), (1170, 1290)] {
        let inside = format!(
            " AND fix_time >= '{}' AND fix_time <= '{}'",
            day1(lo).format("%Y-%m-%dT%H:%M:%S+00:00"),
            day1(hi).format("%Y-%m-%dT%H:%M:%S+00:00"),
        );
        assert_eq!(b.scalar(&q(ka, 1, &inside)).await, KEPT_PER_WINDOW);
    }
    assert_eq!(b.scalar("SELECT count(*) FROM rejected_messages").await, 10);
    assert_eq!(
        b.scalar("SELECT count(*) FROM messages").await,
        2 * FIXES_PER_DAY
    );
    // The alerts and their copied evidence are untouched.
    let alerts = s
        .alerts(&AlertFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alerts.len(), 2);
    assert!(alerts.iter().all(|a| a.evidence.len() == 1));

    // A second pass finds nothing; so does an incremental one.
    let again = retention::purge(&s, window, &cfg, None, &cancel)
        .await
        .unwrap();
    assert_eq!(again, PurgeReport::default());
    let later = PurgeWindow {
        after: Some(window.before),
        before: window.before + TimeDelta::days(1),
    };
    assert_eq!(
        retention::purge(&s, later, &cfg, None, &cancel)
            .await
            .unwrap(),
        PurgeReport::default()
    );

    // Past the day-95 data too (day 190): everything but the evidence goes.
    let end = PurgeWindow {
        after: Some(window.before),
        before: t0() + TimeDelta::days(100),
    };
    let r = retention::purge(&s, end, &cfg, None, &cancel)
        .await
        .unwrap();
    assert_eq!(r.fixes, 2 * FIXES_PER_DAY as u64);
    assert_eq!(r.rejections, 10);
    assert_eq!(
        b.scalar("SELECT count(*) FROM fixes").await,
        2 * KEPT_PER_WINDOW
    );
    assert_eq!(b.scalar("SELECT count(*) FROM messages").await, 0);
}

async fn the_background_task_follows_the_clock_and_counts_in_metrics<B: Backend>(b: &B) {
    let (ka, _) = fill(b).await;
    // Day 50: nothing is 90 days old yet.
    let clock = Arc::new(ManualClock::new(t0() + TimeDelta::days(50)));
    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let cfg = RetentionConfig {
        every: Duration::from_millis(50),
        ..cfg(50)
    };
    let task = tokio::spawn(retention::run(
        b.store(),
        cfg,
        clock.clone(),
        metrics.clone(),
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metrics.purged_count("fixes"),
        0,
        "nothing is past retention on day 50"
    );
    assert_eq!(
        b.scalar("SELECT count(*) FROM fixes").await,
        4 * FIXES_PER_DAY
    );

    // Day 93: all of day 1 (its last fix, at 24:00, included) is past
    // retention; the next tick deletes it.
    clock.set(t0() + TimeDelta::days(93));
    let want = (2 * FIXES_PER_DAY - 2 * KEPT_PER_WINDOW) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.purged_count("fixes") < want
        || metrics.purged_count("messages") < 2 * FIXES_PER_DAY as u64
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run: {} fixes purged",
            metrics.purged_count("fixes")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let a few more ticks run: counts must not move (nothing else is due).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(metrics.purged_count("fixes"), want);
    assert_eq!(metrics.purged_count("rejected_messages"), 40);
    assert!(metrics.encode().contains(&format!(
        "waypoint_retention_purged_rows_total{{table=\"fixes\"}} {want}"
    )));
    assert_eq!(
        b.scalar(&format!(
            "SELECT count(*) FROM fixes WHERE device_key = {ka}"
        ))
        .await,
        FIXES_PER_DAY + 2 * KEPT_PER_WINDOW
    );
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task stops when cancelled")
        .unwrap();
}
