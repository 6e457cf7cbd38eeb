//! Alert writes (inside a batch's transaction), the alert-event log, and
//! officers' actions: the same behaviour as `postgres::alerts`, written as
//! one statement per alert where PostgreSQL uses one per batch (statements
//! here are in-process calls, and the single writer holds the file's write
//! lock, so a read followed by a write sees no interleaving).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::{classify, insert_rows, Q};
use crate::alerts::{
    AlertEvent, AlertKey, AlertOp, Audience, Evidence, NewAlert, OfficerAction, MAX_EVIDENCE,
};
use crate::store::{
    ActionRecord, AlertFilter, AlertRecord, AlertWrites, CommitReport, StateRow, StoreError,
};

/// Writes the rules engine's output. Runs inside the caller's transaction.
pub(crate) async fn write(
    conn: &mut SqliteConnection,
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
    // for every other (already open) alert is applied after them, as
    // PostgreSQL's bulk statement does, so both log the same entries.
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
                let (id, inserted) = raise(conn, a, w.now).await?;
                if inserted {
                    report.alerts_raised.push(a.key.kind);
                    push(&mut events, id, "raised");
                } else {
                    // The condition was already on record (a restart lost
                    // the in-memory flag): never a second alert.
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
                    "UPDATE alerts SET last_evidence_at = max(last_evidence_at, $5), \
                     evidence_count = evidence_count + $6 {ACTIVE_BY_KEY} RETURNING alert_id"
                );
                let id: Option<i64> = bind_key(sqlx::query(&sql), key)
                    .bind(at)
                    .bind(count)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(classify)?
                    .map(|r| r.try_get(0))
                    .transpose()
                    .map_err(classify)?;
                if let Some(id) = id {
                    evidence_rows.extend(evidence.iter().map(|e| (id, e)));
                    push(&mut events, id, "updated");
                }
            }
            Op::End { key, at, reason } => {
                let sql = format!(
                    "UPDATE alerts SET condition_ended_at = max($5, started_at), \
                     details = json_set(details, '$.end_reason', $6) \
                     {ACTIVE_BY_KEY} RETURNING alert_id"
                );
                let rows = bind_key(sqlx::query(&sql), key)
                    .bind(at)
                    .bind(*reason)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(classify)?;
                for r in rows {
                    push(
                        &mut events,
                        r.try_get(0).map_err(classify)?,
                        "condition_ended",
                    );
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
/// Written with `ifnull` so it matches the `alerts_one_active` index, which
/// SQLite then uses (it cannot for `zone_id IS $3`).
const ACTIVE_BY_KEY: &str = "WHERE device_key = $1 AND kind = $2 \
     AND ifnull(zone_id, -1) = ifnull($3, -1) AND ifnull(pairing_id, -1) = ifnull($4, -1) \
     AND condition_ended_at IS NULL";

fn bind_key<'q>(q: Q<'q>, key: &AlertKey) -> Q<'q> {
    q.bind(key.device_key)
        .bind(key.kind.as_str())
        .bind(key.zone_id)
        .bind(key.pairing_id)
}

/// Inserts the alert, or, when its condition is already open (the unique
/// index's key), counts the evidence on the open one. Returns the alert id
/// and whether it is new. A raise that is already ended (a late alert) is
/// outside the one-active index, so it is always a new row, as in
/// PostgreSQL's ON CONFLICT on that partial index.
async fn raise(
    conn: &mut SqliteConnection,
    a: &NewAlert,
    now: DateTime<Utc>,
) -> Result<(i64, bool), StoreError> {
    let count = a.evidence.len().max(1) as i64;
    if a.ended_at.is_none() {
        let sql = format!("SELECT alert_id FROM alerts {ACTIVE_BY_KEY}");
        let open = bind_key(sqlx::query(&sql), &a.key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(classify)?;
        if let Some(r) = open {
            let id: i64 = r.try_get(0).map_err(classify)?;
            sqlx::query(
                "UPDATE alerts SET last_evidence_at = max(last_evidence_at, $2), \
                 evidence_count = evidence_count + $3 WHERE alert_id = $1",
            )
            .bind(id)
            .bind(a.last_evidence_at)
            .bind(count)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
            return Ok((id, false));
        }
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO alerts (device_key, supervisee_id, kind, severity, zone_id, \
         zone_version, pairing_id, rule_id, confidence, late, started_at, raised_at, \
         last_evidence_at, evidence_count, condition_ended_at, explanation, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
         RETURNING alert_id",
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
    .bind(now)
    .bind(a.last_evidence_at)
    .bind(count)
    .bind(a.ended_at)
    .bind(&a.explanation)
    .bind(&a.details)
    .fetch_one(&mut *conn)
    .await
    .map_err(classify)?;
    Ok((id, true))
}

/// An op with consecutive evidence updates of one alert merged, so a device
/// sitting in a zone costs one UPDATE per batch, not one per fix.
enum Op<'a> {
    Raise(&'a NewAlert),
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

/// Evidence updates of already open alerts. Returns each updated alert with
/// whether it deserves an `updated` log entry: at most one per alert per
/// minute of event time, so a device parked in a zone for hours does not
/// flood the log. Evidence rows are queued while the alert keeps fewer than
/// the cap.
async fn bulk_evidence<'a>(
    conn: &mut SqliteConnection,
    ops: &[&'a Op<'a>],
    rows: &mut Vec<(i64, &'a Evidence)>,
) -> Result<Vec<(i64, bool)>, StoreError> {
    let mut out = Vec::with_capacity(ops.len());
    let select =
        format!("SELECT alert_id, evidence_count, last_evidence_at FROM alerts {ACTIVE_BY_KEY}");
    for op in ops {
        let Op::Evidence {
            key,
            at,
            count,
            evidence,
        } = op
        else {
            continue;
        };
        let Some(r) = bind_key(sqlx::query(&select), key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(classify)?
        else {
            continue;
        };
        let id: i64 = r.try_get(0).map_err(classify)?;
        let old_count: i64 = r.try_get(1).map_err(classify)?;
        let old_last: DateTime<Utc> = r.try_get(2).map_err(classify)?;
        let new_last = old_last.max(*at);
        sqlx::query(
            "UPDATE alerts SET last_evidence_at = $2, evidence_count = evidence_count + $3 \
             WHERE alert_id = $1",
        )
        .bind(id)
        .bind(new_last)
        .bind(count)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
        if (old_count as usize) < MAX_EVIDENCE {
            rows.extend(evidence.iter().map(|e| (id, e)));
        }
        // date_trunc('minute', new) > date_trunc('minute', old), in UTC.
        let minute = |t: DateTime<Utc>| t.timestamp().div_euclid(60);
        out.push((id, minute(new_last) > minute(old_last)));
    }
    Ok(out)
}

/// Appends evidence rows after each alert's existing ones, up to the cap.
async fn insert_evidence(
    conn: &mut SqliteConnection,
    rows: &[(i64, &Evidence)],
) -> Result<(), StoreError> {
    let mut held: HashMap<i64, i64> = HashMap::new();
    for (id, e) in rows {
        let n = match held.get(id) {
            Some(&n) => n,
            None => sqlx::query_scalar("SELECT count(*) FROM alert_evidence WHERE alert_id = $1")
                .bind(id)
                .fetch_one(&mut *conn)
                .await
                .map_err(classify)?,
        };
        if n >= MAX_EVIDENCE as i64 {
            held.insert(*id, n);
            continue;
        }
        sqlx::query(
            "INSERT INTO alert_evidence (alert_id, ord, fix_time, lat, lon, acc_m, observation, \
             boundary_m, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(n)
        .bind(e.at)
        .bind(e.lat)
        .bind(e.lon)
        .bind(e.acc_m)
        .bind(e.observation.as_ref())
        .bind(e.distance_m)
        .bind(e.detail.as_deref())
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
        held.insert(*id, n + 1);
    }
    Ok(())
}

/// The alert row as JSON plus the device id: what PostgreSQL's
/// `to_jsonb(a) || jsonb_build_object('device_id', d.device_id)` gives.
/// Times are the stored RFC 3339 text; `late` becomes a JSON boolean and
/// `details` stays an object (not a string holding one).
const ALERT_JSON: &str = "json_object('alert_id', a.alert_id, 'device_key', a.device_key, \
     'supervisee_id', a.supervisee_id, 'kind', a.kind, 'severity', a.severity, \
     'zone_id', a.zone_id, 'zone_version', a.zone_version, 'pairing_id', a.pairing_id, \
     'rule_id', a.rule_id, 'confidence', a.confidence, \
     'late', json(CASE WHEN a.late THEN 'true' ELSE 'false' END), \
     'started_at', a.started_at, 'raised_at', a.raised_at, \
     'last_evidence_at', a.last_evidence_at, 'evidence_count', a.evidence_count, \
     'condition_ended_at', a.condition_ended_at, 'explanation', a.explanation, \
     'details', json(a.details), 'status', a.status, 'acknowledged_at', a.acknowledged_at, \
     'acknowledged_by', a.acknowledged_by, 'resolved_at', a.resolved_at, \
     'resolved_by', a.resolved_by, 'outcome', a.outcome, \
     'resolution_note', a.resolution_note, 'escalated_at', a.escalated_at, \
     'device_id', d.device_id)";

/// Appends entries to the alert-event log inside `conn`'s transaction. Ids
/// come from AUTOINCREMENT; the single writer makes them commit-ordered
/// (see the migration's header). Each entry carries the alert as it stands
/// when appended, i.e. after every change of the batch, as in PostgreSQL.
pub(crate) async fn append_events(
    conn: &mut SqliteConnection,
    events: &[(i64, &'static str)],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO alert_events (alert_id, event_type, at, payload) \
         SELECT a.alert_id, $2, $3, {ALERT_JSON} \
         FROM alerts a JOIN devices d ON d.device_key = a.device_key WHERE a.alert_id = $1"
    );
    for (id, ty) in events {
        sqlx::query(&sql)
            .bind(id)
            .bind(*ty)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    }
    Ok(())
}

fn bind_state<'q>(q: Q<'q>, r: &'q &StateRow) -> Q<'q> {
    q.bind(r.device_key)
        .bind(r.version)
        .bind(r.last_seen)
        .bind(&r.state)
}

async fn upsert_states(conn: &mut SqliteConnection, states: &[StateRow]) -> Result<(), StoreError> {
    // One row per device per statement; sorted, then the first of each
    // device kept, exactly as the PostgreSQL writer does.
    let mut rows: Vec<&StateRow> = states.iter().collect();
    rows.sort_by_key(|r| r.device_key);
    rows.dedup_by_key(|r| r.device_key);
    insert_rows(
        conn,
        "INSERT INTO device_state (device_key, version, last_seen, state)",
        4,
        "ON CONFLICT (device_key) DO UPDATE SET version = excluded.version, \
         last_seen = excluded.last_seen, state = excluded.state",
        &rows,
        bind_state,
    )
    .await
    .map_err(classify)?;
    Ok(())
}

fn bind_timeline<'q>(q: Q<'q>, t: &'q crate::rules::engine::TimelineEntry) -> Q<'q> {
    q.bind(t.device_key)
        .bind(t.at)
        .bind(t.kind.as_str())
        .bind(t.zone_id)
        .bind(t.detail.as_str())
}

async fn insert_timeline(conn: &mut SqliteConnection, w: &AlertWrites) -> Result<(), StoreError> {
    insert_rows(
        conn,
        "INSERT INTO device_timeline (device_key, at, kind, zone_id, detail)",
        5,
        "",
        &w.timeline,
        bind_timeline,
    )
    .await
    .map_err(classify)?;
    Ok(())
}

/// A list of ids as one parameter: SQLite has no arrays, so the list goes
/// as a JSON array read with `json_each`.
pub(super) fn id_list(ids: &[i64]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())
}

pub(super) async fn load_states(
    pool: &SqlitePool,
    device_keys: &[i64],
) -> Result<Vec<StateRow>, StoreError> {
    if device_keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT device_key, version, last_seen, state FROM device_state \
         WHERE device_key IN (SELECT value FROM json_each($1))",
    )
    .bind(id_list(device_keys))
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    rows.iter()
        .map(|r| {
            Ok(StateRow {
                device_key: r.try_get("device_key")?,
                version: r.try_get("version")?,
                last_seen: r.try_get("last_seen")?,
                state: r.try_get("state")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(classify)
}

/// Log entries after `after`, oldest first, each with its current audience.
pub(crate) async fn events_after(
    pool: &SqlitePool,
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
    rows.iter()
        .map(|r| {
            let alert: serde_json::Value = r.try_get("payload")?;
            Ok(AlertEvent {
                event_id: r.try_get("event_id")?,
                alert_id: r.try_get("alert_id")?,
                event_type: r.try_get("event_type")?,
                at: r.try_get("at")?,
                device_id: alert["device_id"].as_str().unwrap_or_default().to_owned(),
                alert,
                audience: Audience {
                    officer_ref: r.try_get("officer_ref")?,
                    team_id: r.try_get("team_id")?,
                    case_ref: r.try_get("case_ref")?,
                },
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(classify)
}

/// Applies an officer's action with its log entry and, since decisions
/// taken outside the API (the `waypoint alerts` CLI) belong in the audit
/// trail too, an audit record with role `cli`. Runs in the caller's write
/// transaction.
pub(crate) async fn officer_action(
    conn: &mut SqliteConnection,
    alert_id: i64,
    actor: &str,
    action: &OfficerAction,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    officer_action_in(&mut *conn, alert_id, actor, action, at).await?;
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
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// The action itself, inside the caller's write transaction (the API writes
/// its own audit record in the same one). The write transaction holds the
/// file's write lock from its start (BEGIN IMMEDIATE), which is what
/// PostgreSQL's `SELECT ... FOR UPDATE` buys: the status read cannot go
/// stale before the update.
pub(crate) async fn officer_action_in(
    conn: &mut SqliteConnection,
    alert_id: i64,
    actor: &str,
    action: &OfficerAction,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    action
        .validate(actor)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM alerts WHERE alert_id = $1")
            .bind(alert_id)
            .fetch_optional(&mut *conn)
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
            .execute(&mut *conn)
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
                 acknowledged_at = coalesce(acknowledged_at, $2), \
                 acknowledged_by = coalesce(acknowledged_by, $3) WHERE alert_id = $1",
            )
            .bind(alert_id)
            .bind(at)
            .bind(actor)
            .bind(outcome.as_str())
            .bind(note)
            .execute(&mut *conn)
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
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    append_events(&mut *conn, &[(alert_id, event)], at).await?;
    Ok(())
}

fn evidence_from_row(r: &SqliteRow) -> Result<Evidence, sqlx::Error> {
    Ok(Evidence {
        at: r.try_get("fix_time")?,
        lat: r.try_get("lat")?,
        lon: r.try_get("lon")?,
        acc_m: r.try_get("acc_m")?,
        observation: r.try_get::<String, _>("observation")?.into(),
        distance_m: r.try_get("boundary_m")?,
        detail: r.try_get("detail")?,
    })
}

fn action_from_row(r: &SqliteRow) -> Result<ActionRecord, sqlx::Error> {
    Ok(ActionRecord {
        action: r.try_get("action")?,
        actor: r.try_get("actor")?,
        at: r.try_get("at")?,
        outcome: r.try_get("outcome")?,
        note: r.try_get("note")?,
    })
}

pub(super) async fn list(
    pool: &SqlitePool,
    f: &AlertFilter,
) -> Result<Vec<AlertRecord>, StoreError> {
    // One read transaction, so the evidence and actions belong to the same
    // state as the alert rows (PostgreSQL reads them in three statements
    // too, but its rows are never deleted between them either).
    let mut tx = pool.begin().await.map_err(classify)?;
    let rows = sqlx::query(
        "SELECT a.alert_id, d.device_id, s.case_ref, a.kind, a.severity, a.confidence, \
           a.zone_id, a.zone_version, a.late, a.status, a.started_at, a.raised_at, \
           a.last_evidence_at, a.evidence_count, a.condition_ended_at, a.explanation \
         FROM alerts a JOIN devices d USING (device_key) \
         LEFT JOIN supervisees s USING (supervisee_id) \
         WHERE ($1 IS NULL OR a.status = $1) AND ($2 IS NULL OR a.kind = $2) \
           AND ($3 IS NULL OR d.device_id = $3) \
         ORDER BY CASE a.severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 \
           WHEN 'medium' THEN 2 ELSE 3 END, a.raised_at DESC, a.alert_id DESC \
         LIMIT $4",
    )
    .bind(&f.status)
    .bind(f.kind.map(|k| k.as_str()))
    .bind(&f.device_id)
    .bind(f.limit.clamp(1, 10_000))
    .fetch_all(&mut *tx)
    .await
    .map_err(classify)?;
    let ids: Vec<i64> = rows
        .iter()
        .map(|r| r.try_get("alert_id"))
        .collect::<Result<_, _>>()
        .map_err(classify)?;
    let ids = id_list(&ids);
    let mut evidence: HashMap<i64, Vec<Evidence>> = HashMap::new();
    for r in sqlx::query(
        "SELECT alert_id, fix_time, lat, lon, acc_m, observation, boundary_m, detail \
         FROM alert_evidence WHERE alert_id IN (SELECT value FROM json_each($1)) \
         ORDER BY alert_id, ord",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(classify)?
    {
        let id: i64 = r.try_get("alert_id").map_err(classify)?;
        evidence
            .entry(id)
            .or_default()
            .push(evidence_from_row(&r).map_err(classify)?);
    }
    let mut actions: HashMap<i64, Vec<ActionRecord>> = HashMap::new();
    for r in sqlx::query(
        "SELECT alert_id, action, actor, at, outcome, note FROM alert_actions \
         WHERE alert_id IN (SELECT value FROM json_each($1)) ORDER BY action_id",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(classify)?
    {
        let id: i64 = r.try_get("alert_id").map_err(classify)?;
        actions
            .entry(id)
            .or_default()
            .push(action_from_row(&r).map_err(classify)?);
    }
    tx.commit().await.map_err(classify)?;
    rows.iter()
        .map(|r| {
            let id: i64 = r.try_get("alert_id")?;
            Ok(AlertRecord {
                alert_id: id,
                device_id: r.try_get("device_id")?,
                case_ref: r.try_get("case_ref")?,
                kind: r.try_get("kind")?,
                severity: r.try_get("severity")?,
                confidence: r.try_get("confidence")?,
                zone_id: r.try_get("zone_id")?,
                zone_version: r.try_get("zone_version")?,
                late: r.try_get("late")?,
                status: r.try_get("status")?,
                started_at: r.try_get("started_at")?,
                raised_at: r.try_get("raised_at")?,
                last_evidence_at: r.try_get("last_evidence_at")?,
                evidence_count: r.try_get("evidence_count")?,
                condition_ended_at: r.try_get("condition_ended_at")?,
                explanation: r.try_get("explanation")?,
                evidence: evidence.remove(&id).unwrap_or_default(),
                actions: actions.remove(&id).unwrap_or_default(),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(classify)
}
