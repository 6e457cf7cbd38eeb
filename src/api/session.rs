//! Browser sessions. A person signs in once with their token; the server
//! answers with an HttpOnly, Secure, SameSite=Strict cookie holding a fresh
//! session secret (only its hash is stored). Page scripts never see a
//! secret, the live stream's EventSource sends the cookie by itself, and
//! signing out ends the session at once. A session lives at most
//! `ApiConfig::session_ttl` and never outlives its token.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{self, AuditReason, Entry};
use super::auth::{self, Principal, Role};
use super::error::{ApiError, ApiJson, StdErrors};
use super::limit::Client;
use super::ApiState;
use crate::store::sql::{Db, Q};

/// Name of the session cookie.
pub const COOKIE: &str = "wp_session";
/// Header a cookie-authenticated change must carry (any value).
pub const CSRF_HEADER: &str = "x-requested-with";
/// Prefix of session secrets.
const SESSION_PREFIX: &str = "wpc_";

/// The session secret from the `Cookie` header, if any. Parsed by hand: one
/// name in a `name=value; name=value` list needs no cookie crate.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty() && v.len() <= 256)
}

/// The principal of a live session (its token live too), by the hash of
/// the session secret ([`auth::hash_secret`]).
pub async fn principal(
    db: &Db,
    hash: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<Principal>, ApiError> {
    let token_id: Option<i64> = Q::new(
        "SELECT token_id FROM api_sessions \
         WHERE session_hash = $1 AND ended_at IS NULL AND expires_at > $2",
    )
    .bind(hash)
    .bind(now)
    .scalar_opt(db)
    .await?;
    match token_id {
        None => Ok(None),
        Some(id) => auth::principal_by_id(db, id, now).await,
    }
}

/// Sign-in body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// The person's API token (`wpt_...`).
    pub token: String,
}

/// Who is signed in.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionInfo {
    /// Role of the token signed in with.
    pub role: Role,
    /// The officer, if the token acts for one.
    pub officer_ref: Option<String>,
    /// When the session ends at the latest.
    pub expires_at: DateTime<Utc>,
}

fn set_cookie(value: &str, max_age_s: i64) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/api/v1; Max-Age={max_age_s}; HttpOnly; Secure; SameSite=Strict"
    ))
    .map_err(|e| ApiError::Internal(format!("cookie header: {e}")))
}

/// Signs in: exchanges a token for a session cookie (the token itself is
/// not kept by the browser). Audited (`session.create`).
#[utoipa::path(
    post,
    path = "/session",
    tag = "session",
    request_body = SignIn,
    responses((status = 201, description = "Signed in; the cookie is set", body = SessionInfo), StdErrors),
    security(())
)]
pub async fn create_session(
    State(st): State<ApiState>,
    Client(client): Client,
    reason: AuditReason,
    ApiJson(body): ApiJson<SignIn>,
) -> Result<Response, ApiError> {
    let body = body?;
    let now = st.clock.now();
    let secret = body.token.trim();
    if secret.is_empty() || secret.len() > 256 {
        return Err(ApiError::Unauthorized);
    }
    // A wrong token here is a guess like any other.
    let db = &st.db;
    let who = auth::checked(&st, client, secret, true, |h| async move {
        auth::principal_for_hash(db, &h, now).await
    })
    .await?;
    let expires_at = now
        + chrono::TimeDelta::from_std(st.cfg.session_ttl)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (session, hash) = auth::new_secret(SESSION_PREFIX)?;
    let mut tx = st.db.begin().await?;
    Q::new(
        "INSERT INTO api_sessions (session_hash, token_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(hash)
    .bind(who.token_id)
    .bind(now)
    .bind(expires_at)
    .execute(&mut tx)
    .await?;
    // Ended and expired sessions are cleared here rather than by a job.
    Q::new("DELETE FROM api_sessions WHERE expires_at < $1")
        .bind(now - chrono::TimeDelta::days(1))
        .execute(&mut tx)
        .await?;
    audit::record(
        &mut tx,
        &who,
        &reason,
        now,
        Entry::new(
            "session.create",
            None,
            serde_json::json!({ "expires_at": expires_at }),
        ),
    )
    .await?;
    tx.commit().await?;
    let info = SessionInfo {
        role: who.role,
        officer_ref: who.officer_ref,
        expires_at,
    };
    let mut r = (StatusCode::CREATED, Json(info)).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&session, st.cfg.session_ttl.as_secs() as i64)?,
    );
    Ok(r)
}

/// Who is signed in with this cookie (or token).
#[utoipa::path(
    get,
    path = "/session",
    tag = "session",
    responses((status = 200, description = "The caller", body = SessionInfo), StdErrors),
    security(("bearer" = []))
)]
pub async fn get_session(
    State(st): State<ApiState>,
    headers: HeaderMap,
    who: Principal,
) -> Result<Json<SessionInfo>, ApiError> {
    let expires_at = match cookie(&headers) {
        Some(secret) if auth::bearer(&headers)?.is_none() => {
            Q::new("SELECT expires_at FROM api_sessions WHERE session_hash = $1")
                .bind(auth::hash_secret(secret))
                .scalar(&st.db)
                .await?
        }
        _ => Q::new("SELECT expires_at FROM api_tokens WHERE token_id = $1")
            .bind(who.token_id)
            .scalar::<Option<DateTime<Utc>>>(&st.db)
            .await?
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    };
    Ok(Json(SessionInfo {
        role: who.role,
        officer_ref: who.officer_ref,
        expires_at,
    }))
}

/// Signs out: ends the cookie's session and clears the cookie.
#[utoipa::path(
    delete,
    path = "/session",
    tag = "session",
    responses((status = 204, description = "Signed out"), StdErrors),
    security(("bearer" = []))
)]
pub async fn delete_session(
    State(st): State<ApiState>,
    headers: HeaderMap,
    _who: Principal,
) -> Result<Response, ApiError> {
    if let Some(secret) = cookie(&headers) {
        Q::new(
            "UPDATE api_sessions SET ended_at = $2 WHERE session_hash = $1 AND ended_at IS NULL",
        )
        .bind(auth::hash_secret(secret))
        .bind(st.clock.now())
        .execute(&st.db)
        .await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, set_cookie("", 0)?);
    Ok(r)
}

/// Routes of this module.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(create_session, get_session, delete_session))
}
