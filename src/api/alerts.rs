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
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{self, AuditReason, Entry};
use super::auth::{Principal, CASEWORK};
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, FieldError, StdErrors};
use super::{ApiState, Page};
use crate::alerts::{AlertKind, OfficerAction, ResolutionOutcome};
use crate::store::postgres::alerts::officer_action_in;
use crate::store::sql::{self, Db, DbRow, Tx, Q};
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

fn summary(r: &DbRow) -> AlertSummary {
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

/// A page cursor: the last row's (raised_at, alert_id), the time in
/// microseconds. PostgreSQL keeps microseconds, so that is exact there;
/// SQLite keeps whatever text was written, possibly nanoseconds, and a
/// cursor rounded down to the microsecond would skip the rest of a batch
/// raised in that microsecond. So a time with a sub-microsecond part
/// carries it as a `.nnn` suffix (never on PostgreSQL: its cursors are
/// unchanged).
fn parse_cursor(c: &str) -> Option<(DateTime<Utc>, i64)> {
    let (t, id) = c.split_once('_')?;
    let (micros, nanos) = match t.split_once('.') {
        None => (t, 0),
        Some((m, n)) if n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit()) => {
            (m, n.parse().ok()?)
        }
        Some(_) => return None,
    };
    let t = DateTime::from_timestamp_micros(micros.parse().ok()?)?
        .checked_add_signed(chrono::TimeDelta::nanoseconds(nanos))?;
    Some((t, id.parse().ok()?))
}

fn make_cursor(a: &AlertSummary) -> String {
    let micros = a.raised_at.timestamp_micros();
    match a.raised_at.timestamp_subsec_nanos() % 1000 {
        0 => format!("{micros}_{}", a.alert_id),
        ns => format!("{micros}.{ns:03}_{}", a.alert_id),
    }
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

/// [`list_sql`] for SQLite, which has no LATERAL: one scan of the
/// caller's alerts in page order. The same parameters and result columns;
/// the device join likewise only for the page.
fn list_sql_lite(who: &Principal) -> String {
    sql::to_sqlite(&format!(
        "SELECT x.*, d.device_id FROM ( \
           SELECT a.alert_id, a.supervisee_id, s.case_ref, a.device_key, a.kind, a.severity, \
             a.confidence, a.status, a.late, a.started_at, a.raised_at, a.last_evidence_at, \
             a.evidence_count, a.condition_ended_at, a.escalated_at, a.explanation, a.zone_id, \
             a.zone_version \
           FROM alerts a JOIN supervisees s ON s.supervisee_id = a.supervisee_id \
           WHERE {} AND ($6 IS NULL OR s.supervisee_id = $6) \
             AND ($2 IS NULL OR a.status = $2) AND ($3 IS NULL OR a.kind = $3) \
             AND ($4 IS NULL OR a.severity = $4) AND ($5 IS NULL OR a.confidence = $5) \
             AND ($7 IS NULL OR a.raised_at >= $7) AND ($8 IS NULL OR a.raised_at < $8) \
             AND ($9 IS NULL OR (a.raised_at, a.alert_id) < ($9, $10)) \
           ORDER BY a.raised_at DESC, a.alert_id DESC LIMIT $11) x \
         JOIN devices d ON d.device_key = x.device_key \
         ORDER BY x.raised_at DESC, x.alert_id DESC",
        who.scope_sql()
    ))
    .into_owned()
}

/// Up to `rows` of the caller's alerts matching `q`, after `cursor`,
/// newest first.
async fn list_page(
    db: &Db,
    who: &Principal,
    q: &AlertQuery,
    cursor: Option<(DateTime<Utc>, i64)>,
    rows: i64,
) -> Result<Vec<AlertSummary>, sqlx::Error> {
    Ok(Q::split(list_sql(who), list_sql_lite(who))
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
        .bind(rows)
        .fetch_all(db)
        .await?
        .iter()
        .map(summary)
        .collect())
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
    let mut items = list_page(&st.db, &who, &q, cursor, limit + 1).await?;
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
async fn read_detail(tx: &mut Tx, who: &Principal, alert_id: i64) -> Result<AlertDetail, ApiError> {
    let r = Q::new(format!(
        "SELECT {SUMMARY_COLS}, a.details FROM alerts a \
         JOIN supervisees s ON s.supervisee_id = a.supervisee_id \
         JOIN devices d ON d.device_key = a.device_key \
         WHERE a.alert_id = $2 AND {}",
        who.scope_sql()
    ))
    .bind(who.scope_param())
    .bind(alert_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    let alert = summary(&r);
    let details = r.json("details");
    let evidence = Q::new(
        "SELECT fix_time, lat, lon, acc_m, observation, boundary_m, detail \
         FROM alert_evidence WHERE alert_id = $1 ORDER BY ord",
    )
    .bind(alert_id)
    .fetch_all(&mut *tx)
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
        (Some(z), Some(v)) => Q::new(
            "SELECT z.zone_id, z.zone_ref, z.name, v.version, v.geojson \
             FROM zones z JOIN zone_versions v ON v.zone_id = z.zone_id \
             WHERE z.zone_id = $1 AND v.version = $2",
        )
        .bind(z)
        .bind(v)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| ZoneAtAlert {
            zone_id: r.get("zone_id"),
            zone_ref: r.get("zone_ref"),
            name: r.get("name"),
            version: r.get("version"),
            geojson: r.json("geojson"),
        }),
        _ => None,
    };
    let actions = Q::new(
        "SELECT action, actor, at, outcome, note FROM alert_actions \
         WHERE alert_id = $1 ORDER BY action_id",
    )
    .bind(alert_id)
    .fetch_all(&mut *tx)
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
    let escalations = Q::new(
        "SELECT e.level, e.at, o.officer_ref, e.to_group, e.reason FROM alert_escalations e \
         LEFT JOIN officers o ON o.officer_id = e.to_officer_id \
         WHERE e.alert_id = $1 ORDER BY e.level",
    )
    .bind(alert_id)
    .fetch_all(&mut *tx)
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
    let mut tx = st.db.begin().await?;
    let d = read_detail(&mut tx, &who, alert_id).await?;
    audit::record(
        &mut tx,
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
    let mut tx = st.db.begin().await?;
    let d = decide_in(
        &mut tx,
        who,
        reason,
        alert_id,
        &action,
        audit_action,
        st.clock.now(),
    )
    .await?;
    tx.commit().await?;
    st.outbox.wake();
    Ok(Json(d))
}

/// [`decide`]'s reads and writes inside `tx`: the alert (in the caller's
/// scope, locked), the decision, its audit record, and the alert after it.
async fn decide_in(
    tx: &mut Tx,
    who: &Principal,
    reason: &AuditReason,
    alert_id: i64,
    action: &OfficerAction,
    audit_action: &'static str,
    now: DateTime<Utc>,
) -> Result<AlertDetail, ApiError> {
    let select = format!(
        "SELECT a.supervisee_id FROM alerts a JOIN supervisees s \
         ON s.supervisee_id = a.supervisee_id WHERE a.alert_id = $2 AND {}",
        who.scope_sql()
    );
    // SQLite has no row locks: its one writer already serialises decisions.
    let lite = sql::to_sqlite(&select).into_owned();
    let supervisee_id: i64 = Q::split(format!("{select} FOR UPDATE OF a"), lite)
        .bind(who.scope_param())
        .bind(alert_id)
        .scalar_opt(&mut *tx)
        .await?
        .ok_or(ApiError::NotFound)?;
    let detail = match action {
        OfficerAction::Resolve { outcome, .. } => {
            serde_json::json!({ "outcome": outcome.as_str() })
        }
        _ => serde_json::json!({}),
    };
    officer_action(tx, alert_id, &who.actor(), action, now).await?;
    audit::record(
        tx,
        who,
        reason,
        now,
        Entry::alert(audit_action, alert_id, Some(supervisee_id)).with(detail),
    )
    .await?;
    read_detail(tx, who, alert_id).await
}

/// An officer's decision inside `tx`: the store's own writer for the
/// backend (shared with the `waypoint alerts` CLI), so a decision writes
/// the same rows (status columns, one `alert_actions` row, one log entry)
/// however it is made.
async fn officer_action(
    tx: &mut Tx,
    alert_id: i64,
    actor: &str,
    action: &OfficerAction,
    at: DateTime<Utc>,
) -> Result<(), ApiError> {
    let r = match tx {
        Tx::Pg(t) => officer_action_in(t, alert_id, actor, action, at).await,
        Tx::Lite(t) => {
            crate::store::sqlite::alerts::officer_action_in(t, alert_id, actor, action, at).await
        }
    };
    r.map_err(|e| match e {
        StoreError::Invalid(m) => ApiError::Conflict(m),
        e => e.into(),
    })
}

/// Appends `(alert_id, event type)` entries to the alert-event log inside
/// `tx`, in the given order, each with the alert as it stands in `tx`
/// (the store's own log writer for the backend).
pub(crate) async fn append_events(
    tx: &mut Tx,
    events: &[(i64, &'static str)],
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    match tx {
        Tx::Pg(t) => crate::store::postgres::alerts::append_events(t, events, now).await?,
        Tx::Lite(t) => crate::store::sqlite::alerts::append_events(t, events, now).await?,
    }
    Ok(())
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

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use chrono::{SubsecRound, TimeDelta};
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    use super::*;
    use crate::alerts::ResolutionOutcome;
    use crate::api::auth::Role;
    use crate::store::sql::LitePools;

    /// A fresh SQLite database from the embedded-mode schema, laid out as in
    /// production: one writer connection, separate readers. A statement
    /// that wrongly writes through the pool while a transaction holds the
    /// writer fails on the acquire timeout instead of hanging the test.
    /// The directory must outlive the pools.
    pub(crate) async fn lite_db() -> (Db, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("waypoint.db"))
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = |n| {
            SqlitePoolOptions::new()
                .max_connections(n)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(opts.clone())
        };
        let write = pool(1).await.expect("writer");
        sqlx::migrate!("./migrations/sqlite")
            .run(&write)
            .await
            .expect("schema");
        let read = pool(2).await.expect("readers");
        (Db::Lite(LitePools { write, read }), dir)
    }

    /// A time with nanoseconds, as `Utc::now()` gives on Linux.
    pub(crate) fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000, 123_456_789).expect("valid time")
    }

    /// Two caseloads: `o1` (team T, supervised by `sup`) has supervisee 1
    /// with device `dev-1`; `o2` (no team) has supervisee 2 with `dev-2`.
    /// Zone 1 has versions 1 and 2.
    pub(crate) struct World {
        pub db: Db,
        pub _dir: tempfile::TempDir,
        pub o1: Principal,
        pub o2: Principal,
        pub sup: Principal,
        pub sup_id: i64,
    }

    async fn exec(db: &Db, sql: &'static str) {
        Q::new(sql).execute(db).await.expect(sql);
    }

    pub(crate) async fn world() -> World {
        let (db, dir) = lite_db().await;
        exec(
            &db,
            "INSERT INTO teams (team_ref, name) VALUES ('T', 'Team T')",
        )
        .await;
        exec(
            &db,
            "INSERT INTO officers (officer_ref, display_name, team_id) VALUES \
             ('o1', 'Officer One', 1), ('sup', 'Supervisor', NULL), ('o2', 'Officer Two', NULL)",
        )
        .await;
        exec(&db, "UPDATE teams SET supervisor_id = 2 WHERE team_id = 1").await;
        exec(
            &db,
            "INSERT INTO supervisees (case_ref, time_zone, officer_ref) VALUES \
             ('C-1', 'Europe/London', 'o1'), ('C-2', 'Europe/London', 'o2')",
        )
        .await;
        exec(
            &db,
            "INSERT INTO devices (device_id) VALUES ('dev-1'), ('dev-2')",
        )
        .await;
        exec(
            &db,
            "INSERT INTO zones (zone_ref, name, current_version) VALUES ('z1', 'Park', 2)",
        )
        .await;
        exec(
            &db,
            "INSERT INTO zone_versions (zone_id, version, geojson, created_by) VALUES \
             (1, 1, '{\"type\":\"Point\",\"coordinates\":[1,2]}', 'admin'), \
             (1, 2, '{\"type\":\"Point\",\"coordinates\":[3,4]}', 'admin')",
        )
        .await;
        let officer = |token_id, role, r: &str, id| Principal {
            token_id,
            role,
            officer_ref: Some(r.to_owned()),
            officer_id: Some(id),
        };
        World {
            db,
            _dir: dir,
            o1: officer(1, Role::Officer, "o1", 1),
            sup: officer(2, Role::Supervisor, "sup", 2),
            o2: officer(3, Role::Officer, "o2", 3),
            sup_id: 2,
        }
    }

    /// An open alert of supervisee `sv` (device `sv` too) in zone 1
    /// version 1, its condition already ended (so a key can have many).
    pub(crate) async fn alert(db: &Db, sv: i64, severity: &str, raised_at: DateTime<Utc>) -> i64 {
        Q::new(
            "INSERT INTO alerts (device_key, supervisee_id, kind, severity, zone_id, \
             zone_version, confidence, started_at, raised_at, last_evidence_at, \
             condition_ended_at, explanation, details) VALUES ($1, $1, 'exclusion_zone_entry', \
             $2, 1, 1, 'confirmed', $3, $3, $3, $3, 'Entered the park', $4) RETURNING alert_id",
        )
        .bind(sv)
        .bind(severity)
        .bind(raised_at)
        .bind(serde_json::json!({ "confirm_fixes": 2 }))
        .scalar(db)
        .await
        .expect("alert")
    }

    fn filters() -> AlertQuery {
        AlertQuery::default()
    }

    async fn walk(db: &Db, who: &Principal, q: &AlertQuery, limit: i64) -> Vec<i64> {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let mut items = list_page(db, who, q, cursor, limit + 1)
                .await
                .expect("page");
            let next = super::super::paginate(&mut items, limit, make_cursor);
            seen.extend(items.iter().map(|a| a.alert_id));
            match next {
                Some(c) => cursor = Some(parse_cursor(&c).expect("own cursor")),
                None => return seen,
            }
        }
    }

    #[test]
    fn cursors_keep_sub_microsecond_times_and_postgres_ones_are_unchanged() {
        let mut a = AlertSummary {
            alert_id: 7,
            supervisee_id: None,
            case_ref: None,
            device_id: "d".into(),
            kind: "k".into(),
            severity: "low".into(),
            confidence: "confirmed".into(),
            status: "open".into(),
            late: false,
            started_at: t0(),
            raised_at: t0(),
            last_evidence_at: t0(),
            evidence_count: 1,
            condition_ended_at: None,
            escalated_at: None,
            explanation: String::new(),
            zone_id: None,
            zone_version: None,
        };
        assert_eq!(make_cursor(&a), "1780000000123456.789_7");
        assert_eq!(parse_cursor(&make_cursor(&a)), Some((t0(), 7)));
        a.raised_at = t0().trunc_subsecs(6);
        assert_eq!(make_cursor(&a), "1780000000123456_7");
        assert_eq!(parse_cursor("1780000000123456_7"), Some((a.raised_at, 7)));
        // Before 1970 the microseconds are floored and the rest positive.
        a.raised_at = DateTime::from_timestamp(-1, 5).expect("valid");
        assert_eq!(parse_cursor(&make_cursor(&a)), Some((a.raised_at, 7)));
        for bad in [
            "",
            "_",
            "1_",
            "x_1",
            "1.5_1",
            "1.1234_1",
            "1.-12_1",
            "1.٣٣٣_1",
            "1_1_1",
        ] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_queue_pages_every_alert_once_newest_first_within_scope_on_sqlite() {
        let w = world().await;
        let mut mine = Vec::new();
        // Three alerts share one nanosecond-precise raise time (one batch):
        // a page boundary inside them must not skip any.
        for (i, dt) in [0, 0, 0, 1, 2, 2, 3].into_iter().enumerate() {
            let sev = if i % 2 == 0 { "high" } else { "low" };
            mine.push((
                t0() + TimeDelta::seconds(dt),
                alert(&w.db, 1, sev, t0() + TimeDelta::seconds(dt)).await,
            ));
        }
        let theirs = alert(&w.db, 2, "high", t0()).await;
        mine.sort_by(|a, b| b.cmp(a));
        let expected: Vec<i64> = mine.iter().map(|m| m.1).collect();
        for limit in [1, 2, 3, 50] {
            assert_eq!(walk(&w.db, &w.o1, &filters(), limit).await, expected);
            // The supervisor sees the team member's caseload, not o2's.
            assert_eq!(walk(&w.db, &w.sup, &filters(), limit).await, expected);
        }
        assert_eq!(walk(&w.db, &w.o2, &filters(), 2).await, vec![theirs]);

        let page = list_page(&w.db, &w.o1, &filters(), None, 1).await.unwrap();
        assert_eq!(page[0].device_id, "dev-1");
        assert_eq!(page[0].case_ref.as_deref(), Some("C-1"));
        assert_eq!(page[0].raised_at, t0() + TimeDelta::seconds(3));
        assert!(!page[0].late);
        assert_eq!(page[0].zone_version, Some(1));

        let q = AlertQuery {
            severity: Some("high".into()),
            ..filters()
        };
        let high: Vec<i64> = mine
            .iter()
            .filter(|m| [0, 2, 4, 6].contains(&(m.1 - 1)))
            .map(|m| m.1)
            .collect();
        assert_eq!(walk(&w.db, &w.o1, &q, 1).await, high);
        // [from, to): from inclusive (t0 exactly, nanoseconds and all), to
        // exclusive.
        let q = AlertQuery {
            from: Some(t0()),
            to: Some(t0() + TimeDelta::seconds(2)),
            ..filters()
        };
        assert_eq!(walk(&w.db, &w.o1, &q, 2).await.len(), 4);
        let q = AlertQuery {
            supervisee_id: Some(2),
            ..filters()
        };
        assert!(walk(&w.db, &w.o1, &q, 2).await.is_empty());
        assert_eq!(walk(&w.db, &w.sup, &q, 2).await, Vec::<i64>::new());
        let q = AlertQuery {
            status: Some("resolved".into()),
            kind: Some("exclusion_zone_entry".into()),
            confidence: Some("confirmed".into()),
            ..filters()
        };
        assert!(walk(&w.db, &w.o1, &q, 2).await.is_empty());
    }

    fn reason() -> AuditReason {
        AuditReason(Some("test".into()))
    }

    async fn decide_lite(
        w: &World,
        who: &Principal,
        alert_id: i64,
        action: OfficerAction,
        audit_action: &'static str,
        now: DateTime<Utc>,
    ) -> Result<AlertDetail, ApiError> {
        let mut tx = w.db.begin().await.unwrap();
        let d = decide_in(
            &mut tx,
            who,
            &reason(),
            alert_id,
            &action,
            audit_action,
            now,
        )
        .await?;
        tx.commit().await.unwrap();
        Ok(d)
    }

    #[tokio::test]
    async fn decisions_write_the_rows_postgres_writes_and_refuse_the_same_on_sqlite() {
        let w = world().await;
        let id = alert(&w.db, 1, "critical", t0()).await;
        Q::new(
            "INSERT INTO alert_evidence (alert_id, ord, fix_time, lat, lon, acc_m, observation, \
             boundary_m) VALUES ($1, 0, $2, 51.5, -0.1, 8.5, 'confirmed', 12.25)",
        )
        .bind(id)
        .bind(t0())
        .execute(&w.db)
        .await
        .unwrap();
        Q::new(
            "INSERT INTO alert_escalations (alert_id, level, at, to_officer_id, reason) \
             VALUES ($1, 1, $2, $3, 'late')",
        )
        .bind(id)
        .bind(t0())
        .bind(w.sup_id)
        .execute(&w.db)
        .await
        .unwrap();
        let t1 = t0() + TimeDelta::seconds(60);

        // Outside the caseload: not found, and nothing written.
        let e = decide_lite(
            &w,
            &w.o2,
            id,
            OfficerAction::Acknowledge,
            "alert.acknowledge",
            t1,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ApiError::NotFound), "{e:?}");

        let d = decide_lite(
            &w,
            &w.o1,
            id,
            OfficerAction::Acknowledge,
            "alert.acknowledge",
            t1,
        )
        .await
        .unwrap();
        assert_eq!(d.alert.status, "acknowledged");
        assert_eq!(d.actions.len(), 1);
        assert_eq!(d.actions[0].action, "acknowledge");
        assert_eq!(d.actions[0].actor, "o1");
        assert_eq!(d.actions[0].at, t1);
        assert_eq!(d.details["confirm_fixes"], 2);
        assert_eq!(d.evidence.len(), 1);
        assert_eq!(d.evidence[0].acc_m, Some(8.5));
        assert_eq!(d.evidence[0].distance_m, Some(12.25));
        assert_eq!(d.evidence[0].at, t0());
        let z = d.zone.as_ref().expect("zone at the alert");
        assert_eq!((z.zone_ref.as_str(), z.version), ("z1", 1));
        assert_eq!(z.geojson["coordinates"], serde_json::json!([1, 2]));
        assert_eq!(d.escalations.len(), 1);
        let e = &d.escalations[0];
        assert_eq!((e.level, e.at, e.reason.as_str()), (1, t0(), "late"));
        assert_eq!(e.to_officer_ref.as_deref(), Some("sup"));
        assert_eq!(e.to_group, None);

        let e = decide_lite(
            &w,
            &w.sup,
            id,
            OfficerAction::Acknowledge,
            "alert.acknowledge",
            t1,
        )
        .await
        .unwrap_err();
        match e {
            ApiError::Conflict(m) => {
                assert_eq!(m, format!("alert {id} is acknowledged; cannot acknowledge"))
            }
            e => panic!("{e:?}"),
        }

        let t2 = t1 + TimeDelta::seconds(60);
        let resolve = OfficerAction::Resolve {
            outcome: ResolutionOutcome::GpsFalseAlarm,
            note: "Checked: drift".into(),
        };
        let d = decide_lite(&w, &w.sup, id, resolve.clone(), "alert.resolve", t2)
            .await
            .unwrap();
        assert_eq!(d.alert.status, "resolved");
        let e = decide_lite(&w, &w.o1, id, resolve, "alert.resolve", t2)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::Conflict(_)), "{e:?}");
        let e = decide_lite(
            &w,
            &w.o1,
            id,
            OfficerAction::Note(" ".into()),
            "alert.note",
            t2,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ApiError::Conflict(_)), "{e:?}");
        let t3 = t2 + TimeDelta::seconds(1);
        let d = decide_lite(
            &w,
            &w.o1,
            id,
            OfficerAction::Note("After".into()),
            "alert.note",
            t3,
        )
        .await
        .unwrap();
        let acts: Vec<(&str, &str, Option<&str>, Option<&str>)> = d
            .actions
            .iter()
            .map(|a| {
                (
                    a.action.as_str(),
                    a.actor.as_str(),
                    a.outcome.as_deref(),
                    a.note.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            acts,
            [
                ("acknowledge", "o1", None, None),
                (
                    "resolve",
                    "sup",
                    Some("gps_false_alarm"),
                    Some("Checked: drift")
                ),
                ("note", "o1", None, Some("After")),
            ]
        );

        // The alert row: acknowledgement kept, resolution recorded.
        let r = Q::new(
            "SELECT acknowledged_at, acknowledged_by, resolved_at, resolved_by, outcome, \
             resolution_note FROM alerts WHERE alert_id = $1",
        )
        .bind(id)
        .fetch_one(&w.db)
        .await
        .unwrap();
        assert_eq!(r.get::<DateTime<Utc>>("acknowledged_at"), t1);
        assert_eq!(r.get::<String>("acknowledged_by"), "o1");
        assert_eq!(r.get::<DateTime<Utc>>("resolved_at"), t2);
        assert_eq!(r.get::<String>("resolved_by"), "sup");
        assert_eq!(r.get::<String>("outcome"), "gps_false_alarm");
        assert_eq!(r.get::<String>("resolution_note"), "Checked: drift");

        // One log entry per decision, in order, each with the alert as it
        // stood after it.
        let log: Vec<(i64, String, DateTime<Utc>, serde_json::Value)> =
            Q::new("SELECT event_id, event_type, at, payload FROM alert_events ORDER BY event_id")
                .fetch_all(&w.db)
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r.get("event_id"),
                        r.get("event_type"),
                        r.get("at"),
                        r.json("payload"),
                    )
                })
                .collect();
        let types: Vec<&str> = log.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(types, ["acknowledged", "resolved", "note"]);
        assert!(log.windows(2).all(|p| p[0].0 < p[1].0));
        assert_eq!(log[0].2, t1);
        assert_eq!(log[0].3["status"], "acknowledged");
        assert_eq!(log[1].3["status"], "resolved");
        assert_eq!(log[1].3["outcome"], "gps_false_alarm");
        assert_eq!(log[2].3["device_id"], "dev-1");

        // Audited with the same actions and detail as on PostgreSQL.
        let audit: Vec<(String, String, serde_json::Value)> = Q::new(
            "SELECT action, actor, detail FROM audit_log WHERE alert_id = $1 ORDER BY audit_id",
        )
        .bind(id)
        .fetch_all(&w.db)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("action"), r.get("actor"), r.json("detail")))
        .collect();
        assert_eq!(
            audit,
            [
                (
                    "alert.acknowledge".into(),
                    "o1".into(),
                    serde_json::json!({})
                ),
                (
                    "alert.resolve".into(),
                    "sup".into(),
                    serde_json::json!({ "outcome": "gps_false_alarm" })
                ),
                ("alert.note".into(), "o1".into(), serde_json::json!({})),
            ]
        );

        let mut tx = w.db.begin().await.unwrap();
        let e = read_detail(&mut tx, &w.o2, id).await.unwrap_err();
        assert!(matches!(e, ApiError::NotFound));
        let e = read_detail(&mut tx, &w.o1, id + 100).await.unwrap_err();
        assert!(matches!(e, ApiError::NotFound));
    }

    #[tokio::test]
    async fn the_sqlite_log_payload_has_every_alerts_column_with_postgres_json_types() {
        let w = world().await;
        let id = alert(&w.db, 1, "low", t0()).await;
        let mut tx = w.db.begin().await.unwrap();
        append_events(&mut tx, &[(id, "raised"), (id, "updated")], t0())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let rows = Q::new("SELECT event_type, payload FROM alert_events ORDER BY event_id")
            .fetch_all(&w.db)
            .await
            .unwrap();
        let types: Vec<String> = rows.iter().map(|r| r.get("event_type")).collect();
        assert_eq!(types, ["raised", "updated"]);
        let p = rows[0].json("payload");
        let mut keys: Vec<String> = p.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        let mut cols: Vec<String> = Q::new("SELECT name FROM pragma_table_info('alerts')")
            .fetch_all(&w.db)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("name"))
            .collect();
        cols.push("device_id".into());
        cols.sort();
        assert_eq!(keys, cols, "to_jsonb(a) has every column of alerts");
        assert_eq!(p["late"], serde_json::json!(false));
        assert_eq!(p["details"], serde_json::json!({ "confirm_fixes": 2 }));
        assert_eq!(p["alert_id"], serde_json::json!(id));
        assert_eq!(p["acknowledged_at"], serde_json::Value::Null);
        let raised: DateTime<Utc> = serde_json::from_value(p["raised_at"].clone()).unwrap();
        assert_eq!(raised, t0());
    }
}
