//! Alerts for officers: the queue (filters, cursor pagination), one alert
//! with its evidence and explanation, and the officer's decisions
//! (acknowledge, resolve with an outcome and a note, add a note).
//!
//! Only decisions exist here: no endpoint performs or schedules anything
//! against the person supervised. Decisions and detail reads are audited;
//! a decision and its audit record commit together.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{self, AuditReason, Entry};
use super::auth::{Principal, CASEWORK};
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, FieldError, StdErrors};
use super::{ApiState, Page};
use crate::alerts::{AlertKind, OfficerAction, ResolutionOutcome};
use crate::store::postgres::alerts::officer_action_in;
use crate::store::StoreError;

/// An alert as listed in a queue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlertSummary {
    /// Id.
    pub alert_id: i64,
    /// Whose alert.
    pub supervisee_id: Option<i64>,
    /// Their case reference.
    pub case_ref: Option<String>,
    /// Device that reported.
    pub device_id: String,
    /// What kind of situation.
    pub kind: String,
    /// critical, high, medium or low.
    pub severity: String,
    /// confirmed, probable or possible (how sure the evidence is).
    pub confidence: String,
    /// open, acknowledged or resolved.
    pub status: String,
    /// Raised from late-arriving data (a record of the past).
    pub late: bool,
    /// Event time of the first evidence.
    pub started_at: DateTime<Utc>,
    /// When the server raised it.
    pub raised_at: DateTime<Utc>,
    /// Event time of the newest evidence.
    pub last_evidence_at: DateTime<Utc>,
    /// Evidence observations so far.
    pub evidence_count: i32,
    /// When the condition ended (the alert stays for the officer).
    pub condition_ended_at: Option<DateTime<Utc>>,
    /// When it was escalated for lack of acknowledgement.
    pub escalated_at: Option<DateTime<Utc>>,
    /// Plain-words explanation.
    pub explanation: String,
    /// Zone involved.
    pub zone_id: Option<i64>,
    /// Version of that zone in force when raised.
    pub zone_version: Option<i32>,
}

const SUMMARY_COLS: &str = "a.alert_id, a.supervisee_id, s.case_ref, d.device_id, a.kind, \
    a.severity, a.confidence, a.status, a.late, a.started_at, a.raised_at, a.last_evidence_at, \
    a.evidence_count, a.condition_ended_at, a.escalated_at, a.explanation, a.zone_id, \
    a.zone_version";

fn summary(r: &PgRow) -> AlertSummary {
    AlertSummary {
        alert_id: r.get("alert_id"),
        supervisee_id: r.get("supervisee_id"),
        case_ref: r.get("case_ref"),
        device_id: r.get("device_id"),
        kind: r.get("kind"),
        severity: r.get("severity"),
        confidence: r.get("confidence"),
        status: r.get("status"),
        late: r.get("late"),
        started_at: r.get("started_at"),
        raised_at: r.get("raised_at"),
        last_evidence_at: r.get("last_evidence_at"),
        evidence_count: r.get("evidence_count"),
        condition_ended_at: r.get("condition_ended_at"),
        escalated_at: r.get("escalated_at"),
        explanation: r.get("explanation"),
        zone_id: r.get("zone_id"),
        zone_version: r.get("zone_version"),
    }
}

/// Filters of the alert queue.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// open, acknowledged or resolved.
    pub status: Option<String>,
    /// Alert kind, e.g. `exclusion_zone_entry`.
    pub kind: Option<String>,
    /// critical, high, medium or low.
    pub severity: Option<String>,
    /// confirmed, probable or possible.
    pub confidence: Option<String>,
    /// Only this supervisee.
    pub supervisee_id: Option<i64>,
    /// Raised at or after.
    pub from: Option<DateTime<Utc>>,
    /// Raised before.
    pub to: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size 1..=200 (default 50).
    pub limit: Option<i64>,
}

fn one_of(field: &str, v: &Option<String>, allowed: &[&str], errs: &mut Vec<FieldError>) {
    if let Some(v) = v {
        if !allowed.contains(&v.as_str()) {
            errs.push(FieldError::new(
                field,
                format!("must be one of {}", allowed.join(", ")),
            ));
        }
    }
}

/// A page cursor: the last row's (raised_at, alert_id).
fn parse_cursor(c: &str) -> Option<(DateTime<Utc>, i64)> {
    let (t, id) = c.split_once('_')?;
    let t = DateTime::from_timestamp_micros(t.parse().ok()?)?;
    Some((t, id.parse().ok()?))
}

fn make_cursor(a: &AlertSummary) -> String {
    format!("{}_{}", a.raised_at.timestamp_micros(), a.alert_id)
}

/// The queue query for `who`: `$1` scope, `$2..$8` filters (status, kind,
/// severity, confidence, supervisee, from, to), `$9, $10` the cursor,
/// `$11` the row limit. Public so the benchmark can time it without HTTP.
pub fn list_sql(who: &Principal) -> String {
    // Per supervisee in scope, its newest alerts through the
    // (supervisee_id, raised_at, alert_id) index, at most one page each;
    // then the page across them. A supervisor's 1,000 supervisees cost
    // 1,000 short index scans, however long their histories. Device ids
    // are joined for the final page only.
    format!(
        "SELECT x.*, d.device_id FROM ( \
           SELECT a.alert_id, a.supervisee_id, s.case_ref, a.device_key, a.kind, a.severity, \
             a.confidence, a.status, a.late, a.started_at, a.raised_at, a.last_evidence_at, \
             a.evidence_count, a.condition_ended_at, a.escalated_at, a.explanation, a.zone_id, \
             a.zone_version \
           FROM supervisees s CROSS JOIN LATERAL ( \
             SELECT * FROM alerts a WHERE a.supervisee_id = s.supervisee_id \
               AND ($2::text IS NULL OR a.status = $2) AND ($3::text IS NULL OR a.kind = $3) \
               AND ($4::text IS NULL OR a.severity = $4) \
               AND ($5::text IS NULL OR a.confidence = $5) \
               AND ($7::timestamptz IS NULL OR a.raised_at >= $7) \
               AND ($8::timestamptz IS NULL OR a.raised_at < $8) \
               AND ($9::timestamptz IS NULL OR (a.raised_at, a.alert_id) < ($9, $10)) \
             ORDER BY a.raised_at DESC, a.alert_id DESC LIMIT $11) a \
           WHERE {} AND ($6::bigint IS NULL OR s.supervisee_id = $6) \
           ORDER BY a.raised_at DESC, a.alert_id DESC LIMIT $11) x \
         JOIN devices d ON d.device_key = x.device_key \
         ORDER BY x.raised_at DESC, x.alert_id DESC",
        who.scope_sql()
    )
}

/// The caller's alerts, newest first, with filters.
#[utoipa::path(
    get,
    path = "/alerts",
    tag = "alerts",
    params(AlertQuery),
    responses((status = 200, description = "A page of alerts, newest first", body = Page<AlertSummary>), StdErrors),
    security(("bearer" = []))
)]
pub async fn list_alerts(
    State(st): State<ApiState>,
    who: Principal,
    ApiQuery(q): ApiQuery<AlertQuery>,
) -> Result<Json<Page<AlertSummary>>, ApiError> {
    who.require(CASEWORK)?;
    let mut errs = Vec::new();
    one_of(
        "status",
        &q.status,
        &["open", "acknowledged", "resolved"],
        &mut errs,
    );
    let kinds: Vec<&str> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
    one_of("kind", &q.kind, &kinds, &mut errs);
    one_of(
        "severity",
        &q.severity,
        &["critical", "high", "medium", "low"],
        &mut errs,
    );
    one_of(
        "confidence",
        &q.confidence,
        &["confirmed", "probable", "possible"],
        &mut errs,
    );
    if let (Some(f), Some(t)) = (q.from, q.to) {
        if f >= t {
            errs.push(FieldError::new("to", "must be after from"));
        }
    }
    let cursor = match q.cursor.as_deref().map(parse_cursor) {
        None => None,
        Some(Some(c)) => Some(c),
        Some(None) => {
            errs.push(FieldError::new("cursor", "not a cursor from this endpoint"));
            None
        }
    };
    let limit = super::limit_of(q.limit, 50, 200, &mut errs);
    super::done(errs)?;
    let sql = list_sql(&who);
    let rows = sqlx::query(&sql)
        .bind(who.scope_param())
        .bind(&q.status)
        .bind(&q.kind)
        .bind(&q.severity)
        .bind(&q.confidence)
        .bind(q.supervisee_id)
        .bind(q.from)
        .bind(q.to)
        .bind(cursor.map(|c| c.0))
        .bind(cursor.map_or(0, |c| c.1))
        .bind(limit + 1)
        .fetch_all(&st.pool)
        .await?;
    let mut items: Vec<AlertSummary> = rows.iter().map(summary).collect();
    let next_cursor = super::paginate(&mut items, limit, make_cursor);
    Ok(Json(Page { items, next_cursor }))
}

/// One piece of evidence kept with an alert.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EvidenceItem {
    /// Event time.
    pub at: DateTime<Utc>,
    /// Latitude (absent for device reports).
    pub lat: Option<f64>,
    /// Longitude.
    pub lon: Option<f64>,
    /// Reported accuracy radius, metres.
    pub acc_m: Option<f32>,
    /// confirmed/probable/possible, or a device report such as `strap_open`.
    pub observation: String,
    /// Distance to the boundary (or the victim), metres.
    pub distance_m: Option<f32>,
    /// Anything else worth showing.
    pub detail: Option<String>,
}

/// An officer's decision or note on record.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActionItem {
    /// acknowledge, resolve or note.
    pub action: String,
    /// Who.
    pub actor: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Outcome of a resolution.
    pub outcome: Option<String>,
    /// The note.
    pub note: Option<String>,
}

/// An escalation on record.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EscalationItem {
    /// 1 = first escalation.
    pub level: i16,
    /// When.
    pub at: DateTime<Utc>,
    /// The supervisor notified.
    pub to_officer_ref: Option<String>,
    /// Or the group notified.
    pub to_group: Option<String>,
    /// Why.
    pub reason: String,
}

/// The zone as it was when the alert was raised.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ZoneAtAlert {
    /// Zone id.
    pub zone_id: i64,
    /// Its reference.
    pub zone_ref: String,
    /// Its name.
    pub name: String,
    /// The version in force.
    pub version: i32,
    /// That version's GeoJSON geometry.
    #[schema(value_type = Object)]
    pub geojson: serde_json::Value,
}

/// One alert with everything an officer needs to decide.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlertDetail {
    /// The summary fields.
    #[serde(flatten)]
    pub alert: AlertSummary,
    /// Rule-specific facts (thresholds, battery level, ...).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// Evidence kept with the alert (outlives raw-fix retention).
    pub evidence: Vec<EvidenceItem>,
    /// The zone version in force, if a zone was involved.
    pub zone: Option<ZoneAtAlert>,
    /// Decisions and notes, oldest first.
    pub actions: Vec<ActionItem>,
    /// Escalations.
    pub escalations: Vec<EscalationItem>,
}

/// Reads one alert the caller may see (no audit: callers audit).
async fn read_detail(
    conn: &mut PgConnection,
    who: &Principal,
    alert_id: i64,
) -> Result<AlertDetail, ApiError> {
    let sql = format!(
        "SELECT {SUMMARY_COLS}, a.details FROM alerts a \
         JOIN supervisees s ON s.supervisee_id = a.supervisee_id \
         JOIN devices d ON d.device_key = a.device_key \
         WHERE a.alert_id = $2 AND {}",
        who.scope_sql()
    );
    let r = sqlx::query(&sql)
        .bind(who.scope_param())
        .bind(alert_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(ApiError::NotFound)?;
    let alert = summary(&r);
    let details: serde_json::Value = r.get("details");
    let evidence = sqlx::query(
        "SELECT fix_time, lat, lon, acc_m, observation, boundary_m, detail \
         FROM alert_evidence WHERE alert_id = $1 ORDER BY ord",
    )
    .bind(alert_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| EvidenceItem {
        at: r.get("fix_time"),
        lat: r.get("lat"),
        lon: r.get("lon"),
        acc_m: r.get("acc_m"),
        observation: r.get("observation"),
        distance_m: r.get("boundary_m"),
        detail: r.get("detail"),
    })
    .collect();
    let zone = match (alert.zone_id, alert.zone_version) {
        (Some(z), Some(v)) => sqlx::query(
            "SELECT z.zone_id, z.zone_ref, z.name, v.version, v.geojson \
             FROM zones z JOIN zone_versions v ON v.zone_id = z.zone_id \
             WHERE z.zone_id = $1 AND v.version = $2",
        )
        .bind(z)
        .bind(v)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| ZoneAtAlert {
            zone_id: r.get("zone_id"),
            zone_ref: r.get("zone_ref"),
            name: r.get("name"),
            version: r.get("version"),
            geojson: r.get("geojson"),
        }),
        _ => None,
    };
    let actions = sqlx::query(
        "SELECT action, actor, at, outcome, note FROM alert_actions \
         WHERE alert_id = $1 ORDER BY action_id",
    )
    .bind(alert_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| ActionItem {
        action: r.get("action"),
        actor: r.get("actor"),
        at: r.get("at"),
        outcome: r.get("outcome"),
        note: r.get("note"),
    })
    .collect();
    let escalations = sqlx::query(
        "SELECT e.level, e.at, o.officer_ref, e.to_group, e.reason FROM alert_escalations e \
         LEFT JOIN officers o ON o.officer_id = e.to_officer_id \
         WHERE e.alert_id = $1 ORDER BY e.level",
    )
    .bind(alert_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| EscalationItem {
        level: r.get("level"),
        at: r.get("at"),
        to_officer_ref: r.get("officer_ref"),
        to_group: r.get("to_group"),
        reason: r.get("reason"),
    })
    .collect();
    Ok(AlertDetail {
        alert,
        details,
        evidence,
        zone,
        actions,
        escalations,
    })
}

/// One alert: evidence, zone version, explanation, decisions, escalations.
/// Audited (`alert.read`): evidence holds positions.
#[utoipa::path(
    get,
    path = "/alerts/{alert_id}",
    tag = "alerts",
    params(("alert_id" = i64, Path, description = "Alert id"), ("X-Audit-Reason" = Option<String>, Header, description = "Why you are looking (kept in the audit log)")),
    responses((status = 200, description = "The alert", body = AlertDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn alert_detail(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(alert_id): ApiPath<i64>,
) -> Result<Json<AlertDetail>, ApiError> {
    who.require(CASEWORK)?;
    let mut tx = st.pool.begin().await?;
    let d = read_detail(&mut tx, &who, alert_id).await?;
    audit::record_pg(
        &mut *tx,
        &who,
        &reason,
        st.clock.now(),
        Entry::alert("alert.read", alert_id, d.alert.supervisee_id),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(d))
}

/// Body of a resolution.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    /// contacted_supervisee, equipment_fault, gps_false_alarm,
    /// approved_absence, referred_for_review or no_action_needed.
    pub outcome: String,
    /// What was found and decided (required, ≤ 10,000 characters).
    pub note: String,
}

/// Body of a note.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    /// The note (required, ≤ 10,000 characters).
    pub note: String,
}

fn check_note(note: &str, errs: &mut Vec<FieldError>) {
    if note.trim().is_empty() {
        errs.push(FieldError::new("note", "is required"));
    } else if note.chars().count() > 10_000 {
        errs.push(FieldError::new("note", "longer than 10000 characters"));
    }
}

/// Applies a decision and its audit record in one transaction.
async fn decide(
    st: &ApiState,
    who: &Principal,
    reason: &AuditReason,
    alert_id: i64,
    action: OfficerAction,
    audit_action: &'static str,
) -> Result<Json<AlertDetail>, ApiError> {
    who.require(CASEWORK)?;
    let now = st.clock.now();
    let mut tx = st.pool.begin().await?;
    let sql = format!(
        "SELECT a.supervisee_id FROM alerts a JOIN supervisees s \
         ON s.supervisee_id = a.supervisee_id WHERE a.alert_id = $2 AND {} FOR UPDATE OF a",
        who.scope_sql()
    );
    let supervisee_id: i64 = sqlx::query_scalar(&sql)
        .bind(who.scope_param())
        .bind(alert_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ApiError::NotFound)?;
    let detail = match &action {
        OfficerAction::Resolve { outcome, .. } => {
            serde_json::json!({ "outcome": outcome.as_str() })
        }
        _ => serde_json::json!({}),
    };
    officer_action_in(&mut tx, alert_id, &who.actor(), &action, now)
        .await
        .map_err(|e| match e {
            StoreError::Invalid(m) => ApiError::Conflict(m),
            e => e.into(),
        })?;
    audit::record_pg(
        &mut *tx,
        who,
        reason,
        now,
        Entry::alert(audit_action, alert_id, Some(supervisee_id)).with(detail),
    )
    .await?;
    let d = read_detail(&mut tx, who, alert_id).await?;
    tx.commit().await?;
    st.outbox.wake();
    Ok(Json(d))
}

/// Acknowledges an open alert ("I have seen it and am on it").
#[utoipa::path(
    post,
    path = "/alerts/{alert_id}/acknowledge",
    tag = "alerts",
    params(("alert_id" = i64, Path, description = "Alert id"), ("X-Audit-Reason" = Option<String>, Header, description = "Kept in the audit log")),
    responses((status = 200, description = "The alert after the decision", body = AlertDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn acknowledge(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(alert_id): ApiPath<i64>,
) -> Result<Json<AlertDetail>, ApiError> {
    decide(
        &st,
        &who,
        &reason,
        alert_id,
        OfficerAction::Acknowledge,
        "alert.acknowledge",
    )
    .await
}

/// Resolves an alert with an outcome and a mandatory note. This records
/// the officer's decision; it triggers nothing against the supervisee.
#[utoipa::path(
    post,
    path = "/alerts/{alert_id}/resolve",
    tag = "alerts",
    params(("alert_id" = i64, Path, description = "Alert id"), ("X-Audit-Reason" = Option<String>, Header, description = "Kept in the audit log")),
    request_body = ResolveBody,
    responses((status = 200, description = "The alert after the decision", body = AlertDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn resolve(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(alert_id): ApiPath<i64>,
    ApiJson(body): ApiJson<ResolveBody>,
) -> Result<Json<AlertDetail>, ApiError> {
    who.require(CASEWORK)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let body = body?;
    let mut errs = Vec::new();
    let outcome = body
        .outcome
        .parse::<ResolutionOutcome>()
        .map_err(|e| errs.push(FieldError::new("outcome", e)))
        .ok();
    check_note(&body.note, &mut errs);
    let (Some(outcome), true) = (outcome, errs.is_empty()) else {
        return Err(ApiError::Validation(errs));
    };
    let action = OfficerAction::Resolve {
        outcome,
        note: body.note,
    };
    decide(&st, &who, &reason, alert_id, action, "alert.resolve").await
}

/// Adds a note to an alert (any status).
#[utoipa::path(
    post,
    path = "/alerts/{alert_id}/notes",
    tag = "alerts",
    params(("alert_id" = i64, Path, description = "Alert id"), ("X-Audit-Reason" = Option<String>, Header, description = "Kept in the audit log")),
    request_body = NoteBody,
    responses((status = 200, description = "The alert with the note", body = AlertDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn add_note(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(alert_id): ApiPath<i64>,
    ApiJson(body): ApiJson<NoteBody>,
) -> Result<Json<AlertDetail>, ApiError> {
    who.require(CASEWORK)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let body = body?;
    let mut errs = Vec::new();
    check_note(&body.note, &mut errs);
    if !errs.is_empty() {
        return Err(ApiError::Validation(errs));
    }
    decide(
        &st,
        &who,
        &reason,
        alert_id,
        OfficerAction::Note(body.note),
        "alert.note",
    )
    .await
}

/// Routes of this module.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_alerts))
        .routes(routes!(alert_detail))
        .routes(routes!(acknowledge))
        .routes(routes!(resolve))
        .routes(routes!(add_note))
}
