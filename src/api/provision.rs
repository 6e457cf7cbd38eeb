//! Provisioning through the API: an administrator (or the device simulator)
//! posts a whole provisioning document (docs/scenario.md) and it is
//! validated and applied in one transaction, exactly as `waypoint scenario
//! load` does. Refusals name the entry (`zones[3] (school-17)`).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{self, AuditReason, Entry};
use super::auth::{Principal, ADMIN};
use super::error::{ApiError, StdErrors};
use super::ApiState;
use crate::scenario::{LoadReport, Scenario, ScenarioError};
use crate::store::postgres::PgStore;
use crate::store::sql::Db;
use crate::store::Store;

/// Largest provisioning document: a 100,000-person fleet is ~40 MB.
pub const MAX_SCENARIO: usize = 128 * 1024 * 1024;

/// Loads a provisioning document (supervisees, devices, zones, rules,
/// assignments, pairings, exceptions) in one transaction; idempotent, and
/// an edited zone geometry becomes a new version. Admins only; audited.
#[utoipa::path(
    post,
    path = "/scenario",
    tag = "provisioning",
    request_body(content = Object, content_type = "application/json",
                 description = "A provisioning document (docs/scenario.md)"),
    responses((status = 200, description = "What was created or updated", body = LoadReport), StdErrors),
    security(("bearer" = []))
)]
pub async fn load_scenario(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<LoadReport>), ApiError> {
    who.require(ADMIN)?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    // Parsing and validating a large document is CPU work: off the workers.
    let scenario = tokio::task::spawn_blocking(move || {
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::BadRequest("body is not UTF-8".into()))?;
        Scenario::parse(text).map_err(|e| match e {
            ScenarioError::Parse(e) if e.is_syntax() || e.is_eof() => {
                ApiError::BadRequest(e.to_string())
            }
            ScenarioError::Parse(e) => ApiError::field("body", e.to_string()),
            ScenarioError::Invalid { entry, problem } => ApiError::field(entry, problem),
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("scenario check failed: {e}")))??;
    let report = apply(&st.db, &scenario, &who.actor()).await?;
    // After the load's own transaction, as before: the loader is the
    // store's (shared with `waypoint scenario load`) and commits itself.
    let mut tx = st.db.begin().await?;
    audit::record(
        &mut tx,
        &who,
        &reason,
        st.clock.now(),
        Entry::new(
            "scenario.load",
            None,
            serde_json::to_value(&report).unwrap_or_default(),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::OK, Json(report)))
}

/// Applies a validated document with the backend's own loader
/// ([`Store::apply_scenario`]), the one the CLI uses, so both paths load
/// files identically.
async fn apply(db: &Db, scenario: &Scenario, actor: &str) -> Result<LoadReport, ApiError> {
    match db {
        Db::Pg(pool) => Ok(PgStore::from_pool(pool.clone())
            .apply_scenario(scenario, actor)
            .await?),
        Db::Lite(pools) => Ok(crate::store::sqlite::SqliteStore::from_pools(pools)
            .apply_scenario(scenario, actor)
            .await?),
    }
}

/// Routes of this module (with their own, larger body limit).
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(load_scenario))
        .layer(DefaultBodyLimit::max(MAX_SCENARIO))
}
