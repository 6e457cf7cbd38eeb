//! Escalation: an open alert nobody acknowledged within its severity's limit
//! goes to the responsible officer's supervisor (their team's supervisor),
//! or to the on-call group when there is none.
//!
//! Escalating means notifying people: a row in `alert_escalations`, the
//! alert's `escalated_at`, and an `escalated` entry in the alert-event log,
//! which the live stream delivers to the supervisor (whose scope covers the
//! team's alerts) and the MQTT publisher to integrations. Nothing here acts
//! on the supervisee. Each alert escalates once (level 1); the row lock and
//! `escalated_at IS NULL` make concurrent instances escalate it once.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use tokio_util::sync::CancellationToken;

use super::alerts::append_events;
use super::error::ApiError;
use super::{ApiConfig, ApiState};
use crate::alerts::Severity;
use crate::store::sql::{Db, Q};

/// How often due alerts are looked for.
pub const TICK: Duration = Duration::from_secs(1);
/// Most alerts escalated per round (the rest wait a tick).
const ROUND: i64 = 500;

/// Escalates due alerts every [`TICK`] until cancelled.
pub async fn run(st: ApiState, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match escalate_due(&st).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(alerts = n, "escalated unacknowledged alerts");
                st.outbox.wake();
            }
            Err(e) => tracing::warn!(error = %e, "escalation round failed; will retry"),
        }
    }
}

/// One round: escalates every alert now due; returns how many.
pub async fn escalate_due(st: &ApiState) -> Result<u64, ApiError> {
    escalate_due_at(&st.db, &st.cfg, st.clock.now()).await
}

/// PostgreSQL: per severity, the open alerts raised before its cutoff,
/// locked (`SKIP LOCKED`: another instance's round takes the others).
const DUE_PG: &str = "SELECT a.alert_id, a.severity, o.officer_id, t.supervisor_id \
     FROM alerts a \
     JOIN UNNEST($1::text[], $2::timestamptz[]) AS lim(sev, cutoff) \
       ON a.severity = lim.sev AND a.raised_at <= lim.cutoff \
     LEFT JOIN supervisees s ON s.supervisee_id = a.supervisee_id \
     LEFT JOIN officers o ON o.officer_ref = s.officer_ref \
     LEFT JOIN teams t ON t.team_id = o.team_id \
       AND EXISTS (SELECT 1 FROM officers sup WHERE sup.officer_id = t.supervisor_id AND sup.active) \
     WHERE a.status = 'open' AND a.escalated_at IS NULL \
     ORDER BY a.raised_at LIMIT $3 FOR UPDATE OF a SKIP LOCKED";

/// [`DUE_PG`] on SQLite: no arrays, so the two lists arrive as JSON arrays
/// zipped by position; cutoffs are RFC 3339 text in the form times are
/// stored in, so they compare as text. No row locks: the single writer
/// runs one round at a time.
const DUE_LITE: &str = "SELECT a.alert_id, a.severity, o.officer_id, t.supervisor_id \
     FROM alerts a \
     JOIN (SELECT js.value AS sev, jc.value AS cutoff \
           FROM json_each($1) js JOIN json_each($2) jc ON jc.key = js.key) AS lim \
       ON a.severity = lim.sev AND a.raised_at <= lim.cutoff \
     LEFT JOIN supervisees s ON s.supervisee_id = a.supervisee_id \
     LEFT JOIN officers o ON o.officer_ref = s.officer_ref \
     LEFT JOIN teams t ON t.team_id = o.team_id \
       AND EXISTS (SELECT 1 FROM officers sup WHERE sup.officer_id = t.supervisor_id AND sup.active) \
     WHERE a.status = 'open' AND a.escalated_at IS NULL \
     ORDER BY a.raised_at LIMIT $3";

/// [`escalate_due`] at `now` with `cfg`'s limits.
async fn escalate_due_at(db: &Db, cfg: &ApiConfig, now: DateTime<Utc>) -> Result<u64, ApiError> {
    let mut sevs = Vec::new();
    let mut cutoffs = Vec::new();
    for s in [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
    ] {
        if let Some(limit) = cfg.escalation_limit(s) {
            // Limits are bounded by configuration (≤ 30 days); checked anyway
            // so a bad value can never stop escalation for every severity.
            let Some(cutoff) = chrono::TimeDelta::from_std(limit)
                .ok()
                .and_then(|l| now.checked_sub_signed(l))
            else {
                continue;
            };
            sevs.push(s.as_str().to_owned());
            // Text rather than times because a list binds as text[] (cast
            // back by the statement on PostgreSQL); written exactly as sqlx
            // writes a time into SQLite, so SQLite's text comparison is
            // time order. Microseconds, as PostgreSQL keeps.
            cutoffs.push(
                cutoff
                    .trunc_subsecs(6)
                    .to_rfc3339_opts(SecondsFormat::AutoSi, false),
            );
        }
    }
    if sevs.is_empty() {
        return Ok(0);
    }
    let mut tx = db.begin().await?;
    let rows = Q::split(DUE_PG, DUE_LITE)
        .bind(sevs)
        .bind(cutoffs)
        .bind(ROUND)
        .fetch_all(&mut tx)
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut events = Vec::with_capacity(rows.len());
    for r in &rows {
        let alert_id: i64 = r.get("alert_id");
        let severity: String = r.get("severity");
        let officer: Option<i64> = r.get("officer_id");
        // A supervisor's own alert goes to on-call, not back to them; so does
        // one whose team's supervisor is inactive (joined as absent above).
        let to = r
            .get::<Option<i64>>("supervisor_id")
            .filter(|s| Some(*s) != officer);
        let limit = severity
            .parse::<Severity>()
            .ok()
            .and_then(|s| cfg.escalation_limit(s))
            .map_or(0, |d| d.as_secs());
        Q::new(
            "INSERT INTO alert_escalations (alert_id, level, at, to_officer_id, to_group, reason) \
             VALUES ($1, 1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(alert_id)
        .bind(now)
        .bind(to)
        .bind(to.is_none().then_some(cfg.on_call_group.as_str()))
        .bind(format!(
            "{severity} alert not acknowledged within {}",
            human(limit)
        ))
        .execute(&mut tx)
        .await?;
        events.push((alert_id, "escalated"));
    }
    let ids: Vec<i64> = events.iter().map(|e| e.0).collect();
    Q::split(
        "UPDATE alerts SET escalated_at = $2 WHERE alert_id = ANY($1)",
        "UPDATE alerts SET escalated_at = $2 WHERE alert_id IN (SELECT value FROM json_each($1))",
    )
    .bind(ids)
    .bind(now)
    .execute(&mut tx)
    .await?;
    append_events(&mut tx, &events, now).await?;
    tx.commit().await?;
    Ok(events.len() as u64)
}

fn human(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::api::alerts::tests::{alert, t0, world};

    /// Makes `alert` open again with its condition ongoing, as escalation
    /// sees most alerts.
    async fn reopen(db: &Db, alert_id: i64) {
        Q::new("UPDATE alerts SET condition_ended_at = NULL WHERE alert_id = $1")
            .bind(alert_id)
            .execute(db)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn due_alerts_escalate_once_to_the_team_supervisor_or_on_call_on_sqlite() {
        let w = world().await;
        let cfg = ApiConfig::default();
        let now = t0() + TimeDelta::minutes(10);
        let cutoff = (now - TimeDelta::minutes(5)).trunc_subsecs(6);
        let team = alert(&w.db, 1, "critical", t0()).await;
        let no_team = alert(&w.db, 2, "critical", t0()).await;
        let not_yet = alert(&w.db, 1, "high", t0()).await;
        let at_cutoff = alert(&w.db, 2, "critical", cutoff).await;
        let just_after = alert(&w.db, 1, "critical", cutoff + TimeDelta::nanoseconds(1)).await;
        let acked = alert(&w.db, 1, "critical", t0()).await;
        reopen(&w.db, team).await;
        Q::new("UPDATE alerts SET status = 'acknowledged' WHERE alert_id = $1")
            .bind(acked)
            .execute(&w.db)
            .await
            .unwrap();

        assert_eq!(escalate_due_at(&w.db, &cfg, now).await.unwrap(), 3);
        assert_eq!(escalate_due_at(&w.db, &cfg, now).await.unwrap(), 0, "once");

        type Row = (i64, i64, Option<i64>, Option<String>, String, DateTime<Utc>);
        let rows: Vec<Row> = Q::new(
            "SELECT alert_id, level, to_officer_id, to_group, reason, at \
             FROM alert_escalations ORDER BY alert_id",
        )
        .fetch_all(&w.db)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get("alert_id"),
                r.get("level"),
                r.get("to_officer_id"),
                r.get("to_group"),
                r.get("reason"),
                r.get("at"),
            )
        })
        .collect();
        let why = "critical alert not acknowledged within 5 min".to_owned();
        assert_eq!(
            rows,
            [
                (team, 1, Some(w.sup_id), None, why.clone(), now),
                (no_team, 1, None, Some("on-call".into()), why.clone(), now),
                (at_cutoff, 1, None, Some("on-call".into()), why, now),
            ]
        );
        for (id, escalated) in [
            (team, true),
            (no_team, true),
            (at_cutoff, true),
            (not_yet, false),
            (just_after, false),
            (acked, false),
        ] {
            let at: Option<DateTime<Utc>> =
                Q::new("SELECT escalated_at FROM alerts WHERE alert_id = $1")
                    .bind(id)
                    .scalar(&w.db)
                    .await
                    .unwrap();
            assert_eq!(at, escalated.then_some(now), "alert {id}");
        }
        // Oldest first in the log, each entry with the alert as escalated.
        let log =
            Q::new("SELECT alert_id, event_type, payload FROM alert_events ORDER BY event_id")
                .fetch_all(&w.db)
                .await
                .unwrap();
        let ids: Vec<i64> = log.iter().map(|r| r.get("alert_id")).collect();
        assert_eq!(ids, [team, no_team, at_cutoff]);
        for r in &log {
            assert_eq!(r.get::<String>("event_type"), "escalated");
            let p = r.json("payload");
            let at: DateTime<Utc> = serde_json::from_value(p["escalated_at"].clone()).unwrap();
            assert_eq!(at, now);
        }

        // An inactive supervisor is skipped for on-call.
        let later = now + TimeDelta::hours(1);
        Q::new("UPDATE officers SET active = false WHERE officer_id = $1")
            .bind(w.sup_id)
            .execute(&w.db)
            .await
            .unwrap();
        let id = alert(&w.db, 1, "critical", now).await;
        // This one, and the two that were not due an hour ago.
        assert_eq!(escalate_due_at(&w.db, &cfg, later).await.unwrap(), 3);
        let to: Option<String> =
            Q::new("SELECT to_group FROM alert_escalations WHERE alert_id = $1")
                .bind(id)
                .scalar(&w.db)
                .await
                .unwrap();
        assert_eq!(to.as_deref(), Some("on-call"));

        let never = ApiConfig {
            escalate_after: [None; 4],
            ..ApiConfig::default()
        };
        assert_eq!(escalate_due_at(&w.db, &never, later).await.unwrap(), 0);
    }
}
