//! The append-only audit trail: every read of location data and every
//! decision on an alert, with who, when and (optionally) why.
//!
//! Reads are recorded *before* the data is returned: if the record cannot
//! be written, the caller gets 503 and no data. Decisions are recorded in
//! the same transaction as the decision. The table refuses UPDATE, DELETE
//! and TRUNCATE (migration 0003).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Principal, Role};
use super::error::{ApiError, ApiQuery, StdErrors};
use super::{ApiState, Page};
use crate::store::sql::{Db, Tx, Q};

/// Request header carrying the caller's reason for looking.
pub const REASON_HEADER: &str = "x-audit-reason";

/// The optional `X-Audit-Reason` header (≤ 500 characters, no control
/// characters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReason(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for AuditReason {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(v) = parts.headers.get(REASON_HEADER) else {
            return Ok(Self(None));
        };
        let s = v
            .to_str()
            .map_err(|_| ApiError::field("X-Audit-Reason", "must be visible ASCII"))?
            .trim();
        if s.chars().count() > 500 {
            return Err(ApiError::field(
                "X-Audit-Reason",
                "longer than 500 characters",
            ));
        }
        Ok(Self((!s.is_empty()).then(|| s.to_owned())))
    }
}

/// One audit record to write.
#[derive(Debug, Clone)]
pub struct Entry {
    /// What was done, e.g. `track.read`, `alert.resolve`, `export.geojson`.
    pub action: &'static str,
    /// Whose data.
    pub supervisee_id: Option<i64>,
    /// Which alert.
    pub alert_id: Option<i64>,
    /// Parameters worth keeping (time range, digest, row counts).
    pub detail: serde_json::Value,
}

impl Entry {
    /// An entry with no alert: about a supervisee's data or configuration
    /// when `supervisee_id` is given, else about the caller's own session
    /// or the deployment as a whole.
    pub fn new(
        action: &'static str,
        supervisee_id: Option<i64>,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            action,
            supervisee_id,
            alert_id: None,
            detail,
        }
    }

    /// An entry about a supervisee's data.
    pub fn supervisee(action: &'static str, supervisee_id: i64) -> Self {
        Self {
            action,
            supervisee_id: Some(supervisee_id),
            alert_id: None,
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    /// An entry about an alert.
    pub fn alert(action: &'static str, alert_id: i64, supervisee_id: Option<i64>) -> Self {
        Self {
            action,
            supervisee_id,
            alert_id: Some(alert_id),
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    /// Adds parameters.
    pub fn with(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

const INSERT: &str = "INSERT INTO audit_log (at, token_id, actor, role, action, supervisee_id, \
     alert_id, reason, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// Writes one record inside the caller's transaction, so the record and
/// what it records commit together.
pub async fn record(
    tx: &mut Tx,
    who: &Principal,
    reason: &AuditReason,
    at: DateTime<Utc>,
    e: Entry,
) -> Result<(), ApiError> {
    Q::new(INSERT)
        .bind(at)
        .bind(who.token_id)
        .bind(who.actor())
        .bind(who.role.as_str())
        .bind(e.action)
        .bind(e.supervisee_id)
        .bind(e.alert_id)
        .bind(&reason.0)
        .bind(e.detail)
        .execute(tx)
        .await?;
    Ok(())
}

/// One audit record as auditors see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditRecord {
    /// Position in the log.
    pub audit_id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who (officer reference, or `<role>-token-<id>`).
    pub actor: String,
    /// Their role.
    pub role: String,
    /// Token used.
    pub token_id: Option<i64>,
    /// What.
    pub action: String,
    /// Whose data.
    pub supervisee_id: Option<i64>,
    /// Which alert.
    pub alert_id: Option<i64>,
    /// Why, as the caller gave it.
    pub reason: Option<String>,
    /// Parameters.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// Filters of the audit query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only records about this supervisee.
    pub supervisee_id: Option<i64>,
    /// Only this action.
    pub action: Option<String>,
    /// From (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// To (exclusive).
    pub to: Option<DateTime<Utc>>,
    /// Records after this id (the previous page's `next_cursor`).
    pub cursor: Option<String>,
    /// Page size, 1..=500 (default 100).
    pub limit: Option<i64>,
}

/// Queries the audit log, oldest first (auditors only).
#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of audit records", body = Page<AuditRecord>),
        StdErrors,
    ),
    security(("bearer" = []))
)]
pub async fn query_audit(
    axum::extract::State(st): axum::extract::State<ApiState>,
    who: Principal,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<axum::Json<Page<AuditRecord>>, ApiError> {
    who.require(&[Role::Auditor])?;
    let mut errs = Vec::new();
    let limit = super::limit_of(q.limit, 100, 500, &mut errs);
    let after = super::id_cursor(&q.cursor, 0, &mut errs);
    super::done(errs)?;
    let rows = Q::new(
        "SELECT audit_id, at, actor, role, token_id, action, supervisee_id, alert_id, reason, \
           detail FROM audit_log \
         WHERE audit_id > $1 AND ($2::text IS NULL OR actor = $2) \
           AND ($3::bigint IS NULL OR supervisee_id = $3) AND ($4::text IS NULL OR action = $4) \
           AND ($5::timestamptz IS NULL OR at >= $5) AND ($6::timestamptz IS NULL OR at < $6) \
         ORDER BY audit_id LIMIT $7",
    )
    .bind(after)
    .bind(&q.actor)
    .bind(q.supervisee_id)
    .bind(&q.action)
    .bind(q.from)
    .bind(q.to)
    .bind(limit + 1)
    .fetch_all(&st.db)
    .await?;
    let mut items: Vec<AuditRecord> = rows
        .iter()
        .map(|r| AuditRecord {
            audit_id: r.get("audit_id"),
            at: r.get("at"),
            actor: r.get("actor"),
            role: r.get("role"),
            token_id: r.get("token_id"),
            action: r.get("action"),
            supervisee_id: r.get("supervisee_id"),
            alert_id: r.get("alert_id"),
            reason: r.get("reason"),
            detail: r.json("detail"),
        })
        .collect();
    let next_cursor = super::paginate(&mut items, limit, |r| r.audit_id);
    Ok(axum::Json(Page { items, next_cursor }))
}

/// Routes of this module.
pub fn routes() -> utoipa_axum::router::OpenApiRouter<ApiState> {
    utoipa_axum::router::OpenApiRouter::new().routes(utoipa_axum::routes!(query_audit))
}

/// Used by tests and tools: how many records name this action.
pub async fn count(db: &Db, action: &str) -> Result<i64, sqlx::Error> {
    Q::new("SELECT count(*) FROM audit_log WHERE action = $1")
        .bind(action)
        .scalar(db)
        .await
}
