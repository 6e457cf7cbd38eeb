//! Alert writes (inside a batch's transaction), the alert-event log, and
//! officers' actions.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};

use super::classify;
use crate::alerts::{
    AlertEvent, AlertKey, AlertOp, Audience, Evidence, OfficerAction, MAX_EVIDENCE,
};
use crate::store::{
    ActionRecord, AlertFilter, AlertRecord, AlertWrites, CommitReport, StateRow, StoreError,
};

/// Writes the rules engine's output. Runs inside the caller's transaction.
pub(super) async fn write(
    conn: &mut PgConnection,
    w: &AlertWrites,
    report: &mut CommitReport,
) -> Result<(), StoreError> {
    upsert_states(conn, &w.states).await?;
    insert_timeline(conn, w).await?;
    if w.ops.is_empty() {
        return Ok(());
    }
    // (alert_id, event type); at most one `updated` per alert per batch.
    let mut events: Vec<(i64, &'static str)> = Vec::new();
    let push = |events: &mut Vec<(i64, &'static str)>, id: i64, ty: &'static str| {
        if ty == "updated" && events.iter().any(|(a, _)| *a == id) {
            return;
        }
        events.push((id, ty));
    };
    let ops = coalesce(&w.ops);
    // Keys raised or ended in this batch keep their exact order; evidence
    // for every other (already open) alert goes in bulk statements, which is
    // what a device sitting in a zone costs per batch.
    let transitions: HashSet<AlertKey> = ops
        .iter()
        .filter_map(|o| match o {
            Op::Raise(a) => Some(a.key),
            Op::End { key, .. } => Some(*key),
            Op::Evidence { .. } => None,
        })
        .collect();
    let mut bulk: Vec<&Op> = Vec::new();
    let mut evidence_rows: Vec<(i64, &Evidence)> = Vec::new();
    for op in &ops {
        match op {
            Op::Evidence { key, .. } if !transitions.contains(key) => bulk.push(op),
            Op::Raise(a) => {
                let row = sqlx::query(
                    "INSERT INTO alerts AS a (device_key, supervisee_id, kind, severity, zone_id, \
                     zone_version, pairing_id, rule_id, confidence, late, started_at, raised_at, \
                     last_evidence_at, evidence_count, condition_ended_at, explanation, details) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
                     ON CONFLICT (device_key, kind, zone_id, pairing_id) \
                       WHERE condition_ended_at IS NULL \
                     DO UPDATE SET last_evidence_at = \
                       GREATEST(a.last_evidence_at, EXCLUDED.last_evidence_at), \
                       evidence_count = a.evidence_count + EXCLUDED.evidence_count \
                     RETURNING alert_id, (xmax = 0) AS inserted",
                )
                .bind(a.key.device_key)
                .bind(a.supervisee_id)
                .bind(a.key.kind.as_str())
                .bind(a.severity.as_str())
                .bind(a.key.zone_id)
                .bind(a.zone_version)
                .bind(a.key.pairing_id)
                .bind(a.rule_id)
                .bind(a.confidence.as_str())
                .bind(a.late)
                .bind(a.started_at)
                .bind(w.now)
                .bind(a.last_evidence_at)
                .bind(a.evidence.len().max(1) as i32)
                .bind(a.ended_at)
                .bind(&a.explanation)
                .bind(&a.details)
                .fetch_one(&mut *conn)
                .await
                .map_err(classify)?;
                let id: i64 = row.get("alert_id");
                let inserted: bool = row.get("inserted");
                if inserted {
                    report.alerts_raised.push(a.key.kind);
                    push(&mut events, id, "raised");
                } else {
                    // The condition was already on record (a restart lost
                    // the in-memory flag, or another instance raised it):
                    // never a second alert.
                    push(&mut events, id, "updated");
                }
                evidence_rows.extend(a.evidence.iter().map(|e| (id, e)));
            }
            Op::Evidence {
                key,
                at,
                count,
                evidence,
            } => {
                let sql = format!(
                    "UPDATE alerts SET last_evidence_at = GREATEST(last_evidence_at, $5), \
                     evidence_count = evidence_count + $6 {ACTIVE_BY_KEY} RETURNING alert_id"
                );
                let id: Option<i64> = bind_key(sqlx::query_scalar(&sql), key)
                    .bind(at)
                    .bind(count)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(classify)?;
                if let Some(id) = id {
                    evidence_rows.extend(evidence.iter().map(|e| (id, e)));
                    push(&mut events, id, "updated");
                }
            }
            Op::End { key, at, reason } => {
                let sql = format!(
                    "UPDATE alerts SET condition_ended_at = GREATEST($5, started_at), \
                     details = details || jsonb_build_object('end_reason', $6::text) \
                     {ACTIVE_BY_KEY} RETURNING alert_id"
                );
                let ids: Vec<i64> = bind_key(sqlx::query_scalar(&sql), key)
                    .bind(at)
                    .bind(reason)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(classify)?;
                for id in ids {
                    push(&mut events, id, "condition_ended");
                }
            }
        }
    }
    for (id, updated) in bulk_evidence(conn, &bulk, &mut evidence_rows).await? {
        if updated {
            push(&mut events, id, "updated");
        }
    }
    insert_evidence(conn, &evidence_rows).await?;
    append_events(conn, &events, w.now).await?;
    report.alert_events += events.len() as u64;
    Ok(())
}

/// The open alert of an [`AlertKey`] bound as $1..$4 (see [`bind_key`]).
const ACTIVE_BY_KEY: &str = "WHERE device_key = $1 AND kind = $2 \
     AND zone_id IS NOT DISTINCT FROM $3 AND pairing_id IS NOT DISTINCT FROM $4 \
     AND condition_ended_at IS NULL";

fn bind_key<'q, O>(
    q: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    key: &AlertKey,
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    q.bind(key.device_key)
        .bind(key.kind.as_str())
        .bind(key.zone_id)
        .bind(key.pairing_id)
}

/// An op with consecutive evidence updates of one alert merged, so a device
/// sitting in a zone costs one UPDATE per batch, not one per fix.
enum Op<'a> {
    Raise(&'a crate::alerts::NewAlert),
    Evidence {
        key: AlertKey,
        at: DateTime<Utc>,
        count: i32,
        evidence: Vec<Evidence>,
    },
    End {
        key: AlertKey,
        at: DateTime<Utc>,
        reason: &'a str,
    },
}

fn coalesce(ops: &[AlertOp]) -> Vec<Op<'_>> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    // Index in `out` of the open evidence group per key; closed by any
    // raise or end of the same key so the order of transitions is kept.
    let mut open: HashMap<AlertKey, usize> = HashMap::new();
    for op in ops {
        match op {
            AlertOp::Raise(a) => {
                open.remove(&a.key);
                out.push(Op::Raise(a));
            }
            AlertOp::End { key, at, reason } => {
                open.remove(key);
                out.push(Op::End {
                    key: *key,
                    at: *at,
                    reason,
                });
            }
            AlertOp::Evidence { key, at, evidence } => match open.get(key) {
                Some(&i) => {
                    if let Op::Evidence {
                        at: last,
                        count,
                        evidence: ev,
                        ..
                    } = &mut out[i]
                    {
                        *last = (*last).max(*at);
                        *count += 1;
                        ev.extend(evidence.iter().cloned());
                    }
                }
                None => {
                    open.insert(*key, out.len());
                    out.push(Op::Evidence {
                        key: *key,
                        at: *at,
                        count: 1,
                        evidence: evidence.iter().cloned().collect(),
                    });
                }
            },
        }
    }
    out
}

/// Evidence updates of open alerts in one statement. Returns each updated
/// alert with whether it deserves an `updated` log entry: at most one per
/// alert per minute of event time, so a device parked in a zone for hours
/// does not flood the log (the alert row always has the current count and
/// last evidence time). Evidence rows are queued while the alert keeps fewer
/// than the cap.
async fn bulk_evidence<'a>(
    conn: &mut PgConnection,
    ops: &[&'a Op<'a>],
    rows: &mut Vec<(i64, &'a Evidence)>,
) -> Result<Vec<(i64, bool)>, StoreError> {
    if ops.is_empty() {
        return Ok(Vec::new());
    }
    let (mut dk, mut kind, mut zone, mut pair, mut at, mut n) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for op in ops {
        if let Op::Evidence {
            key, at: t, count, ..
        } = op
        {
            dk.push(key.device_key);
            kind.push(key.kind.as_str());
            zone.push(key.zone_id);
            pair.push(key.pairing_id);
            at.push(*t);
            n.push(*count);
        }
    }
    // `o` is the row as it was before this statement: the old count and
    // evidence time decide about evidence rows and the log entry.
    let updated = sqlx::query(
        "UPDATE alerts a SET last_evidence_at = GREATEST(a.last_evidence_at, u.at), \
           evidence_count = a.evidence_count + u.n \
         FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::timestamptz[], \
           $6::int4[]) WITH ORDINALITY AS u(device_key, kind, zone_id, pairing_id, at, n, i), \
           alerts o \
         WHERE a.device_key = u.device_key AND a.kind = u.kind \
           AND a.zone_id IS NOT DISTINCT FROM u.zone_id \
           AND a.pairing_id IS NOT DISTINCT FROM u.pairing_id \
           AND a.condition_ended_at IS NULL AND o.alert_id = a.alert_id \
         RETURNING a.alert_id, u.i, o.evidence_count AS old_count, \
           date_trunc('minute', a.last_evidence_at) > date_trunc('minute', o.last_evidence_at) \
             AS new_minute",
    )
    .bind(&dk)
    .bind(&kind)
    .bind(&zone)
    .bind(&pair)
    .bind(&at)
    .bind(&n)
    .fetch_all(&mut *conn)
    .await
    .map_err(classify)?;
    let mut out = Vec::with_capacity(updated.len());
    for r in updated {
        let id: i64 = r.get("alert_id");
        let i: i64 = r.get("i");
        let old: i32 = r.get("old_count");
        if (old as usize) < MAX_EVIDENCE {
            if let Some(Op::Evidence { evidence, .. }) = ops.get(i as usize - 1).copied() {
                rows.extend(evidence.iter().map(|e| (id, e)));
            }
        }
        out.push((id, r.get("new_minute")));
    }
    Ok(out)
}

/// Appends evidence rows after each alert's existing ones, up to the cap,
/// in one statement.
async fn insert_evidence(
    conn: &mut PgConnection,
    rows: &[(i64, &Evidence)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let (mut id, mut at, mut lat, mut lon, mut acc, mut obs, mut dist, mut detail) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    for (a, e) in rows {
        id.push(*a);
        at.push(e.at);
        lat.push(e.lat);
        lon.push(e.lon);
        acc.push(e.acc_m);
        obs.push(e.observation.as_ref());
        dist.push(e.distance_m);
        detail.push(e.detail.as_deref());
    }
    sqlx::query(
        "INSERT INTO alert_evidence (alert_id, ord, fix_time, lat, lon, acc_m, observation, \
         boundary_m, detail) \
         SELECT u.alert_id, b.n + u.rn - 1, u.fix_time, u.lat, u.lon, u.acc_m, u.observation, \
           u.boundary_m, u.detail \
         FROM (SELECT x.*, row_number() OVER (PARTITION BY x.alert_id ORDER BY x.i) AS rn \
               FROM UNNEST($1::int8[], $2::timestamptz[], $3::float8[], $4::float8[], \
                 $5::float4[], $6::text[], $7::float4[], $8::text[]) WITH ORDINALITY \
                 AS x(alert_id, fix_time, lat, lon, acc_m, observation, boundary_m, detail, i)) u \
         CROSS JOIN LATERAL (SELECT count(*) AS n FROM alert_evidence e \
                             WHERE e.alert_id = u.alert_id) b \
         WHERE b.n + u.rn <= $9",
    )
    .bind(&id)
    .bind(&at)
    .bind(&lat)
    .bind(&lon)
    .bind(&acc)
    .bind(&obs)
    .bind(&dist)
    .bind(&detail)
    .bind(MAX_EVIDENCE as i64)
    .execute(conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// Appends to the alert-event log. The counter row is locked until this
/// transaction commits, so ids are handed out in commit order.
/// Appends entries to the alert-event log inside `conn`'s transaction
/// (ids strictly in commit order; see migration 0002).
pub(crate) async fn append_events(
    conn: &mut PgConnection,
    events: &[(i64, &'static str)],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let n = events.len() as i64;
    let last: i64 = sqlx::query_scalar(
        "UPDATE alert_event_counter SET last_id = last_id + $1 RETURNING last_id",
    )
    .bind(n)
    .fetch_one(&mut *conn)
    .await
    .map_err(classify)?;
    let ids: Vec<i64> = (last - n + 1..=last).collect();
    let alert_ids: Vec<i64> = events.iter().map(|e| e.0).collect();
    let types: Vec<&str> = events.iter().map(|e| e.1).collect();
    sqlx::query(
        "INSERT INTO alert_events (event_id, alert_id, event_type, at, payload) \
         SELECT u.event_id, u.alert_id, u.event_type, $4, \
           to_jsonb(a) || jsonb_build_object('device_id', d.device_id) \
         FROM UNNEST($1::int8[], $2::int8[], $3::text[]) AS u(event_id, alert_id, event_type) \
         JOIN alerts a ON a.alert_id = u.alert_id \
         JOIN devices d ON d.device_key = a.device_key",
    )
    .bind(&ids)
    .bind(&alert_ids)
    .bind(&types)
    .bind(now)
    .execute(conn)
    .await
    .map_err(classify)?;
    Ok(())
}

async fn upsert_states(conn: &mut PgConnection, states: &[StateRow]) -> Result<(), StoreError> {
    if states.is_empty() {
        return Ok(());
    }
    // Sorted so concurrent shards lock rows in one order.
    let mut rows: Vec<&StateRow> = states.iter().collect();
    rows.sort_by_key(|r| r.device_key);
    rows.dedup_by_key(|r| r.device_key);
    let dk: Vec<i64> = rows.iter().map(|r| r.device_key).collect();
    let ver: Vec<i64> = rows.iter().map(|r| r.version).collect();
    let seen: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.last_seen).collect();
    let st: Vec<&serde_json::Value> = rows.iter().map(|r| &r.state).collect();
    sqlx::query(
        "INSERT INTO device_state AS s (device_key, version, last_seen, state) \
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::timestamptz[], $4::jsonb[]) \
         ON CONFLICT (device_key) DO UPDATE SET version = EXCLUDED.version, \
           last_seen = EXCLUDED.last_seen, state = EXCLUDED.state",
    )
    .bind(&dk)
    .bind(&ver)
    .bind(&seen)
    .bind(&st)
    .execute(conn)
    .await
    .map_err(classify)?;
    Ok(())
}

async fn insert_timeline(conn: &mut PgConnection, w: &AlertWrites) -> Result<(), StoreError> {
    if w.timeline.is_empty() {
        return Ok(());
    }
    let dk: Vec<i64> = w.timeline.iter().map(|t| t.device_key).collect();
    let at: Vec<DateTime<Utc>> = w.timeline.iter().map(|t| t.at).collect();
    let kind: Vec<&str> = w.timeline.iter().map(|t| t.kind.as_str()).collect();
    let zone: Vec<Option<i64>> = w.timeline.iter().map(|t| t.zone_id).collect();
    let detail: Vec<&str> = w.timeline.iter().map(|t| t.detail.as_str()).collect();
    sqlx::query(
        "INSERT INTO device_timeline (device_key, at, kind, zone_id, detail) \
         SELECT * FROM UNNEST($1::int8[], $2::timestamptz[], $3::text[], $4::int8[], $5::text[])",
    )
    .bind(&dk)
    .bind(&at)
    .bind(&kind)
    .bind(&zone)
    .bind(&detail)
    .execute(conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub(super) async fn load_states(
    pool: &PgPool,
    device_keys: &[i64],
) -> Result<Vec<StateRow>, StoreError> {
    if device_keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT device_key, version, last_seen, state FROM device_state \
         WHERE device_key = ANY($1)",
    )
    .bind(device_keys)
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    Ok(rows
        .iter()
        .map(|r| StateRow {
            device_key: r.get("device_key"),
            version: r.get("version"),
            last_seen: r.get("last_seen"),
            state: r.get("state"),
        })
        .collect())
}

/// Log entries after `after`, oldest first, each with its current audience.
pub(crate) async fn events_after(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> Result<Vec<AlertEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT e.event_id, e.alert_id, e.event_type, e.at, e.payload, s.officer_ref, o.team_id, \
           s.case_ref \
         FROM alert_events e JOIN alerts a ON a.alert_id = e.alert_id \
         LEFT JOIN supervisees s ON s.supervisee_id = a.supervisee_id \
         LEFT JOIN officers o ON o.officer_ref = s.officer_ref \
         WHERE e.event_id > $1 ORDER BY e.event_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    Ok(rows
        .iter()
        .map(|r| {
            let alert: serde_json::Value = r.get("payload");
            AlertEvent {
                event_id: r.get("event_id"),
                alert_id: r.get("alert_id"),
                event_type: r.get("event_type"),
                at: r.get("at"),
                device_id: alert["device_id"].as_str().unwrap_or_default().to_owned(),
                alert,
                audience: Audience {
                    officer_ref: r.get("officer_ref"),
                    team_id: r.get("team_id"),
                    case_ref: r.get("case_ref"),
                },
            }
        })
        .collect())
}

pub(super) async fn officer_action(
    pool: &PgPool,
    alert_id: i64,
    actor: &str,
    action: &OfficerAction,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(classify)?;
    officer_action_in(&mut tx, alert_id, actor, action, at).await?;
    // Decisions taken outside the API (the `waypoint alerts` CLI) are in
    // the audit trail too, with the same action names and role `cli`.
    sqlx::query(
        "INSERT INTO audit_log (at, actor, role, action, supervisee_id, alert_id, detail) \
         SELECT $1, $2, 'cli', $3, supervisee_id, alert_id, $4 FROM alerts WHERE alert_id = $5",
    )
    .bind(at)
    .bind(actor)
    .bind(format!("alert.{}", action.as_str()))
    .bind(match action {
        OfficerAction::Resolve { outcome, .. } => {
            serde_json::json!({ "outcome": outcome.as_str() })
        }
        _ => serde_json::json!({}),
    })
    .bind(alert_id)
    .execute(&mut *tx)
    .await
    .map_err(classify)?;
    tx.commit().await.map_err(classify)?;
    Ok(())
}

/// [`officer_action`] inside the caller's transaction (the API writes its
/// audit record in the same one).
pub(crate) async fn officer_action_in(
    tx: &mut PgConnection,
    alert_id: i64,
    actor: &str,
    action: &OfficerAction,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    action
        .validate(actor)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM alerts WHERE alert_id = $1 FOR UPDATE")
            .bind(alert_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(classify)?;
    let Some(status) = status else {
        return Err(StoreError::NotFound(format!("alert {alert_id}")));
    };
    let refuse =
        |what: &str| StoreError::Invalid(format!("alert {alert_id} is {status}; cannot {what}"));
    let (event, outcome, note) = match action {
        OfficerAction::Acknowledge => {
            if status != "open" {
                return Err(refuse("acknowledge"));
            }
            sqlx::query(
                "UPDATE alerts SET status = 'acknowledged', acknowledged_at = $2, \
                 acknowledged_by = $3 WHERE alert_id = $1",
            )
            .bind(alert_id)
            .bind(at)
            .bind(actor)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            ("acknowledged", None, None)
        }
        OfficerAction::Resolve { outcome, note } => {
            if status == "resolved" {
                return Err(refuse("resolve"));
            }
            sqlx::query(
                "UPDATE alerts SET status = 'resolved', resolved_at = $2, resolved_by = $3, \
                 outcome = $4, resolution_note = $5, \
                 acknowledged_at = COALESCE(acknowledged_at, $2), \
                 acknowledged_by = COALESCE(acknowledged_by, $3) WHERE alert_id = $1",
            )
            .bind(alert_id)
            .bind(at)
            .bind(actor)
            .bind(outcome.as_str())
            .bind(note)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            ("resolved", Some(outcome.as_str()), Some(note.as_str()))
        }
        OfficerAction::Note(note) => ("note", None, Some(note.as_str())),
    };
    sqlx::query(
        "INSERT INTO alert_actions (alert_id, action, actor, at, outcome, note) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(alert_id)
    .bind(action.as_str())
    .bind(actor)
    .bind(at)
    .bind(outcome)
    .bind(note)
    .execute(&mut *tx)
    .await
    .map_err(classify)?;
    append_events(&mut *tx, &[(alert_id, event)], at).await?;
    Ok(())
}

pub(super) async fn list(pool: &PgPool, f: &AlertFilter) -> Result<Vec<AlertRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT a.alert_id, d.device_id, s.case_ref, a.kind, a.severity, a.confidence, \
           a.zone_id, a.zone_version, a.late, a.status, a.started_at, a.raised_at, \
           a.last_evidence_at, a.evidence_count, a.condition_ended_at, a.explanation \
         FROM alerts a JOIN devices d USING (device_key) \
         LEFT JOIN supervisees s USING (supervisee_id) \
         WHERE ($1::text IS NULL OR a.status = $1) AND ($2::text IS NULL OR a.kind = $2) \
           AND ($3::text IS NULL OR d.device_id = $3) \
         ORDER BY CASE a.severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 \
           WHEN 'medium' THEN 2 ELSE 3 END, a.raised_at DESC, a.alert_id DESC \
         LIMIT $4",
    )
    .bind(&f.status)
    .bind(f.kind.map(|k| k.as_str()))
    .bind(&f.device_id)
    .bind(f.limit.clamp(1, 10_000))
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get("alert_id")).collect();
    let mut evidence: HashMap<i64, Vec<Evidence>> = HashMap::new();
    for r in sqlx::query(
        "SELECT alert_id, fix_time, lat, lon, acc_m, observation, boundary_m, detail \
         FROM alert_evidence WHERE alert_id = ANY($1) ORDER BY alert_id, ord",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    .map_err(classify)?
    {
        evidence
            .entry(r.get("alert_id"))
            .or_default()
            .push(Evidence {
                at: r.get("fix_time"),
                lat: r.get("lat"),
                lon: r.get("lon"),
                acc_m: r.get("acc_m"),
                observation: r.get::<String, _>("observation").into(),
                distance_m: r.get("boundary_m"),
                detail: r.get("detail"),
            });
    }
    let mut actions: HashMap<i64, Vec<ActionRecord>> = HashMap::new();
    for r in sqlx::query(
        "SELECT alert_id, action, actor, at, outcome, note FROM alert_actions \
         WHERE alert_id = ANY($1) ORDER BY action_id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    .map_err(classify)?
    {
        actions
            .entry(r.get("alert_id"))
            .or_default()
            .push(ActionRecord {
                action: r.get("action"),
                actor: r.get("actor"),
                at: r.get("at"),
                outcome: r.get("outcome"),
                note: r.get("note"),
            });
    }
    Ok(rows
        .iter()
        .map(|r| {
            let id: i64 = r.get("alert_id");
            AlertRecord {
                alert_id: id,
                device_id: r.get("device_id"),
                case_ref: r.get("case_ref"),
                kind: r.get("kind"),
                severity: r.get("severity"),
                confidence: r.get("confidence"),
                zone_id: r.get("zone_id"),
                zone_version: r.get("zone_version"),
                late: r.get("late"),
                status: r.get("status"),
                started_at: r.get("started_at"),
                raised_at: r.get("raised_at"),
                last_evidence_at: r.get("last_evidence_at"),
                evidence_count: r.get("evidence_count"),
                condition_ended_at: r.get("condition_ended_at"),
                explanation: r.get("explanation"),
                evidence: evidence.remove(&id).unwrap_or_default(),
                actions: actions.remove(&id).unwrap_or_default(),
            }
        })
        .collect())
}
