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

use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::ApiState;
use crate::alerts::Severity;
use crate::store::postgres::alerts::append_events;

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
    let now = st.clock.now();
    let mut sevs = Vec::new();
    let mut cutoffs = Vec::new();
    for s in [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
    ] {
        if let Some(limit) = st.cfg.escalation_limit(s) {
            // Limits are bounded by configuration (≤ 30 days); checked anyway
            // so a bad value can never stop escalation for every severity.
            let Some(cutoff) = chrono::TimeDelta::from_std(limit)
                .ok()
                .and_then(|l| now.checked_sub_signed(l))
            else {
                continue;
            };
            sevs.push(s.as_str());
            cutoffs.push(cutoff);
        }
    }
    if sevs.is_empty() {
        return Ok(0);
    }
    let mut tx = st.pool.begin().await?;
    let rows = sqlx::query(
        "SELECT a.alert_id, a.severity, o.officer_id, t.supervisor_id \
         FROM alerts a \
         JOIN UNNEST($1::text[], $2::timestamptz[]) AS lim(sev, cutoff) \
           ON a.severity = lim.sev AND a.raised_at <= lim.cutoff \
         LEFT JOIN supervisees s ON s.supervisee_id = a.supervisee_id \
         LEFT JOIN officers o ON o.officer_ref = s.officer_ref \
         LEFT JOIN teams t ON t.team_id = o.team_id \
           AND EXISTS (SELECT 1 FROM officers sup WHERE sup.officer_id = t.supervisor_id AND sup.active) \
         WHERE a.status = 'open' AND a.escalated_at IS NULL \
         ORDER BY a.raised_at LIMIT $3 FOR UPDATE OF a SKIP LOCKED",
    )
    .bind(&sevs)
    .bind(&cutoffs)
    .bind(ROUND)
    .fetch_all(&mut *tx)
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
            .get::<Option<i64>, _>("supervisor_id")
            .filter(|s| Some(*s) != officer);
        let limit = severity
            .parse::<Severity>()
            .ok()
            .and_then(|s| st.cfg.escalation_limit(s))
            .map_or(0, |d| d.as_secs());
        sqlx::query(
            "INSERT INTO alert_escalations (alert_id, level, at, to_officer_id, to_group, reason) \
             VALUES ($1, 1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(alert_id)
        .bind(now)
        .bind(to)
        .bind(to.is_none().then_some(st.cfg.on_call_group.as_str()))
        .bind(format!(
            "{severity} alert not acknowledged within {}",
            human(limit)
        ))
        .execute(&mut *tx)
        .await?;
        events.push((alert_id, "escalated"));
    }
    let ids: Vec<i64> = events.iter().map(|e| e.0).collect();
    sqlx::query("UPDATE alerts SET escalated_at = $2 WHERE alert_id = ANY($1)")
        .bind(&ids)
        .bind(now)
        .execute(&mut *tx)
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
