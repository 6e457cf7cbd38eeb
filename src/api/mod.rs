//! The officer API: JSON over HTTP under `/api/v1`.
//!
//! ```text
//! request ─▶ auth (bearer token → Principal: role + caseload scope)
//!         ─▶ handler (validate → one scoped query → audit record) ─▶ JSON
//!                                                         └─ or problem+json (error)
//! alert_events log ─▶ alerts::outbox live broadcast ─▶ stream (SSE, per-caller filter)
//! escalation timer ─▶ alert_escalations + alert_events ('escalated')
//! ```
//!
//! Module map: [`error`] (RFC 9457 problems, extractors), [`auth`] (tokens,
//! roles, scoping), [`audit`] (the trail and its query), [`alerts`] (list,
//! detail, decisions), [`stream`] (SSE and tickets), [`escalation`],
//! [`people`] (supervisees, officers, teams, devices), [`zones`] (zones,
//! rules, exceptions), [`positions`] (latest, track), [`export`],
//! [`compliance`], [`provision`] (whole provisioning documents), [`session`] (browser sign-in with an HttpOnly cookie), [`limit`] (brute-force limits on authentication).
//!
//! The OpenAPI document is assembled from the handlers' own annotations by
//! `utoipa-axum` as the router is built, so the two cannot drift.

pub mod alerts;
pub mod audit;
pub mod auth;
pub mod compliance;
pub mod error;
pub mod escalation;
pub mod export;
pub mod limit;
pub mod people;
pub mod positions;
pub mod provision;
pub mod session;
pub mod stream;
pub mod zones;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::PgPool;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use crate::alerts::outbox::Outbox;
use crate::alerts::Severity;
use crate::clock::SharedClock;
use crate::store::sql::Db;
use error::{ApiError, FieldError};

/// Largest request body accepted (zones with detailed outlines fit easily).
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// Tunables of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// An open alert not acknowledged after this long (by severity:
    /// critical, high, medium, low) is escalated. `None`: never.
    pub escalate_after: [Option<Duration>; 4],
    /// Group named on escalations of alerts whose officer has no supervisor.
    pub on_call_group: String,
    /// How long a stream ticket may wait before it is used.
    pub ticket_ttl: Duration,
    /// SSE keep-alive comment interval (proxies drop idle connections).
    pub keep_alive: Duration,
    /// How often an open stream re-checks its caller (token still live,
    /// officer active, teams): a revoked token stops receiving within this.
    pub stream_recheck: Duration,
    /// Longest life of a browser session (it also ends with its token).
    pub session_ttl: Duration,
    /// Most fixes in one export (larger periods must be split): a year at
    /// one fix a minute fits; the export is built in memory (its digest
    /// header precedes the body), about 170 bytes per fix as GeoJSON.
    pub max_export_fixes: i64,
    /// Brute-force limits on failed authentication ([`limit`]).
    pub auth_limits: limit::AuthLimits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            escalate_after: [
                Some(Duration::from_secs(5 * 60)),
                Some(Duration::from_secs(15 * 60)),
                Some(Duration::from_secs(60 * 60)),
                Some(Duration::from_secs(4 * 60 * 60)),
            ],
            on_call_group: "on-call".into(),
            ticket_ttl: Duration::from_secs(30),
            keep_alive: Duration::from_secs(15),
            stream_recheck: Duration::from_secs(30),
            session_ttl: Duration::from_secs(12 * 3600),
            max_export_fixes: 600_000,
            auth_limits: limit::AuthLimits::default(),
        }
    }
}

impl ApiConfig {
    /// The escalation limit of a severity.
    pub fn escalation_limit(&self, s: Severity) -> Option<Duration> {
        self.escalate_after[s as usize]
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct ApiState {
    /// The database, PostgreSQL or SQLite ([`crate::store::sql`]).
    pub db: Db,
    /// Alert-log live feed (SSE) and wake-ups after officer actions.
    pub outbox: Arc<Outbox>,
    /// Server time (injectable for tests: tickets, escalation, audit).
    pub clock: SharedClock,
    /// Tunables.
    pub cfg: Arc<ApiConfig>,
    /// Exports in progress (each holds its whole body in memory).
    pub exports: Arc<tokio::sync::Semaphore>,
    /// Failed-authentication limits, shared by every credential path.
    pub limiter: Arc<limit::AuthLimiter>,
}

/// Exports built at the same time.
pub const CONCURRENT_EXPORTS: usize = 2;

impl ApiState {
    /// State for the handlers.
    pub fn new(db: Db, outbox: Arc<Outbox>, clock: SharedClock, cfg: ApiConfig) -> Self {
        let limiter = Arc::new(limit::AuthLimiter::new(
            cfg.auth_limits.clone(),
            clock.now(),
        ));
        Self {
            db,
            outbox,
            clock,
            limiter,
            cfg: Arc::new(cfg),
            exports: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_EXPORTS)),
        }
    }
}

/// The API's own connection pool, apart from ingest's so that heavy reads
/// (tracks, exports) can never starve the ingest shards; each statement
/// is cut off after 30 s.
pub fn pool_for_api(ingest: &PgPool) -> Db {
    let opts = (*ingest.connect_options())
        .clone()
        .options([("statement_timeout", "30s")]);
    Db::Pg(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(opts),
    )
}

/// A page of a cursor-paginated list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page<T> {
    /// The items, in the endpoint's order.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Validates a `limit` query parameter.
pub fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match limit {
        None => Ok(default),
        Some(l) if (1..=max).contains(&l) => Ok(l),
        Some(_) => Err(ApiError::field("limit", format!("must be 1..={max}"))),
    }
}

/// Turns collected field errors into a 422, or nothing.
pub fn done(errs: Vec<FieldError>) -> Result<(), ApiError> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errs))
    }
}

/// An id cursor (the previous page's `next_cursor`); `default` when absent.
pub fn id_cursor(c: &Option<String>, default: i64, errs: &mut Vec<FieldError>) -> i64 {
    match c.as_deref().map(str::parse::<i64>) {
        None => default,
        Some(Ok(v)) => v,
        Some(Err(_)) => {
            errs.push(FieldError::new("cursor", "not a cursor from this endpoint"));
            default
        }
    }
}

/// [`page_limit`] that collects its error instead of returning it.
pub fn limit_of(limit: Option<i64>, default: i64, max: i64, errs: &mut Vec<FieldError>) -> i64 {
    match page_limit(limit, default, max) {
        Ok(l) => l,
        Err(ApiError::Validation(mut e)) => {
            errs.append(&mut e);
            default
        }
        Err(_) => default,
    }
}

/// Cuts the extra row fetched to detect a next page; the cursor names the
/// last row kept.
pub fn paginate<T, C: ToString>(
    items: &mut Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> C,
) -> Option<String> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if items.len() > limit {
        items.truncate(limit);
        items.last().map(|t| cursor(t).to_string())
    } else {
        None
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Waypoint officer API",
        description = "Caseloads, zones, schedules, alerts and decisions for supervision officers. \
                       Alerts are prompts for a person to decide; no endpoint acts on the person supervised. \
                       Errors are RFC 9457 problem documents.",
        license(name = "Apache-2.0")
    ),
    servers((url = "/api/v1")),
    modifiers(&BearerAuth),
    components(schemas(error::Problem, error::FieldError))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes and their OpenAPI document, before state is attached.
pub fn api_parts() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(alerts::routes())
        .merge(stream::routes())
        .merge(audit::routes())
        .merge(people::routes())
        .merge(zones::routes())
        .merge(positions::routes())
        .merge(export::routes())
        .merge(compliance::routes())
        .merge(session::routes())
        .merge(provision::routes())
        .split_for_parts()
}

/// The OpenAPI document (also served at `/api/v1/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_parts().1
}

/// `/api/v1/...`, ready to merge beside the operations endpoints.
pub fn router(state: ApiState) -> Router {
    let (routes, doc) = api_parts();
    let doc = Arc::new(doc);
    let v1 = routes
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // Personal data: never kept by browsers or proxies.
        .layer(axum::middleware::map_response(
            |mut r: axum::response::Response| async move {
                r.headers_mut().insert(
                    axum::http::header::CACHE_CONTROL,
                    axum::http::HeaderValue::from_static("no-store"),
                );
                r
            },
        ))
        // Defence in depth: a handler that panics despite validation
        // answers a 500 problem (logged with an id) instead of dropping the
        // connection.
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::Internal("handler panicked".into()).into_response()
            },
        ))
        .with_state(state);
    Router::new().nest("/api/v1", v1)
}
