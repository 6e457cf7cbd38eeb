//! Who is calling, and what they may see.
//!
//! Callers present `Authorization: Bearer <token>`. A token is 256 random
//! bits; the database keeps only its SHA-256. Each token has one role:
//! - `officer`: their own caseload;
//! - `supervisor`: their team's caseloads (their own included);
//! - `admin`: enrollment and configuration, no location data or alerts;
//! - `auditor`: the audit log, read-only.
//!
//! Caseload scoping is applied inside every query ([`Principal::scope_sql`]),
//! so a supervisee outside the caller's scope is simply not found: the
//! answer is the same as for one that does not exist.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::error::ApiError;
use super::limit::{Client, ClientKey};
use super::ApiState;
use crate::store::sql::{Db, DbRow, Q};

/// Prefix of every token, so a leaked one is recognisable (secret scanners).
pub const TOKEN_PREFIX: &str = "wpt_";
/// Prefix of stream tickets.
pub const TICKET_PREFIX: &str = "wps_";

/// A caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A supervision officer: own caseload.
    Officer,
    /// A team lead: the team's caseloads; receives escalations.
    Supervisor,
    /// Enrollment and configuration.
    Admin,
    /// Reads the audit log; nothing else.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Self::Officer, Self::Supervisor, Self::Admin, Self::Auditor];

    /// Database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Officer => "officer",
            Self::Supervisor => "supervisor",
            Self::Admin => "admin",
            Self::Auditor => "auditor",
        }
    }

    /// Parses the database name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Roles that read supervisees' personal and location data.
pub const CASEWORK: &[Role] = &[Role::Officer, Role::Supervisor];
/// Roles that change configuration.
pub const ADMIN: &[Role] = &[Role::Admin];

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Token used (audit).
    pub token_id: i64,
    /// Role of that token.
    pub role: Role,
    /// The person the token acts for (required for officer/supervisor).
    pub officer_ref: Option<String>,
    /// Their internal id.
    pub officer_id: Option<i64>,
}

impl Principal {
    /// Who, for the audit log and alert actions.
    pub fn actor(&self) -> String {
        match &self.officer_ref {
            Some(r) => r.clone(),
            None => format!("{}-token-{}", self.role.as_str(), self.token_id),
        }
    }

    /// Refuses roles not in `allowed` with 403.
    pub fn require(&self, allowed: &[Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this role may not use this endpoint"))
        }
    }

    /// SQL predicate over a `supervisees` row aliased `s` that holds exactly
    /// for the supervisees this caller may see; its one parameter, always
    /// `$1`, is [`Self::scope_param`]. Admins see every supervisee record
    /// (the endpoints that return location data do not admit them at all);
    /// auditors none.
    pub fn scope_sql(&self) -> &'static str {
        match self.role {
            Role::Officer => "s.officer_ref = $1",
            // Their own caseload, and the caseloads of every officer in a
            // team they belong to or supervise (escalations go to a team's
            // supervisor, who must then see the alert). Written as one IN
            // over a union: an OR here makes the planner scan every alert.
            Role::Supervisor => {
                "s.officer_ref IN (SELECT $1::text UNION SELECT o2.officer_ref FROM officers o2 \
                 WHERE o2.team_id IN (SELECT o3.team_id FROM officers o3 WHERE o3.officer_ref = $1 \
                 UNION SELECT t.team_id FROM teams t JOIN officers o4 \
                 ON o4.officer_id = t.supervisor_id WHERE o4.officer_ref = $1))"
            }
            Role::Admin => "($1::text IS NULL OR $1::text IS NOT NULL)",
            Role::Auditor => "($1::text IS NULL AND false)",
        }
    }

    /// The `$1` of [`Self::scope_sql`].
    pub fn scope_param(&self) -> Option<&str> {
        self.officer_ref.as_deref()
    }

    /// Whether this caller may see `supervisee_id` (one indexed lookup).
    /// Callers answer 404 when not, exactly as for a missing supervisee.
    pub async fn sees(&self, db: &Db, supervisee_id: i64) -> Result<bool, ApiError> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM supervisees s WHERE s.supervisee_id = $2 AND {})",
            self.scope_sql()
        );
        Ok(Q::new(sql)
            .bind(self.scope_param())
            .bind(supervisee_id)
            .scalar(db)
            .await?)
    }

    /// [`Self::sees`], as a 404.
    pub async fn must_see(&self, db: &Db, supervisee_id: i64) -> Result<(), ApiError> {
        if self.sees(db, supervisee_id).await? {
            Ok(())
        } else {
            Err(ApiError::NotFound)
        }
    }
}

/// A new random secret with `prefix`, and the hash to store.
pub fn new_secret(prefix: &str) -> Result<(String, Vec<u8>), ApiError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("OS RNG: {e}")))?;
    let s = format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    );
    let h = hash_secret(&s);
    Ok((s, h))
}

/// What the database stores for a secret.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A token as created (the secret is shown once).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IssuedToken {
    /// Token id (for revocation and the audit log).
    pub token_id: i64,
    /// The bearer secret; not stored, cannot be shown again.
    pub token: String,
    /// Role.
    pub role: Role,
    /// The person it acts for.
    pub officer_ref: Option<String>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Officers and supervisors act as a person.
    #[error("role {0} needs --officer")]
    OfficerRequired(&'static str),
    /// The named officer is unknown or inactive.
    #[error("no active officer {0:?} (create it through the API or a scenario file first)")]
    UnknownOfficer(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The OS RNG failed.
    #[error("cannot generate a secret: {0}")]
    Random(String),
}

/// Creates a token (the CLI's `waypoint tokens create`).
pub async fn create_token(
    db: &Db,
    role: Role,
    officer_ref: Option<&str>,
    label: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<IssuedToken, TokenError> {
    if matches!(role, Role::Officer | Role::Supervisor) && officer_ref.is_none() {
        return Err(TokenError::OfficerRequired(role.as_str()));
    }
    let officer_id: Option<i64> = match officer_ref {
        None => None,
        Some(r) => Some(
            Q::new("SELECT officer_id FROM officers WHERE officer_ref = $1 AND active")
                .bind(r)
                .scalar_opt(db)
                .await?
                .ok_or_else(|| TokenError::UnknownOfficer(r.to_owned()))?,
        ),
    };
    let (token, hash) = new_secret(TOKEN_PREFIX).map_err(|e| TokenError::Random(e.to_string()))?;
    let token_id: i64 = Q::new(
        "INSERT INTO api_tokens (secret_hash, role, officer_id, label, expires_at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING token_id",
    )
    .bind(hash)
    .bind(role.as_str())
    .bind(officer_id)
    .bind(label)
    .bind(expires_at)
    .scalar(db)
    .await?;
    Ok(IssuedToken {
        token_id,
        token,
        role,
        officer_ref: officer_ref.map(str::to_owned),
        expires_at,
    })
}

/// Revokes a token; false if there was no such live token.
pub async fn revoke_token(db: &Db, token_id: i64) -> Result<bool, sqlx::Error> {
    let n = Q::new(
        "UPDATE api_tokens SET revoked_at = now() WHERE token_id = $1 AND revoked_at IS NULL",
    )
    .bind(token_id)
    .execute(db)
    .await?;
    Ok(n == 1)
}

const PRINCIPAL_SQL: &str = "SELECT t.token_id, t.role, o.officer_ref, o.officer_id, o.active \
     FROM api_tokens t LEFT JOIN officers o USING (officer_id) \
     WHERE t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2) AND ";

/// Looks a presented secret up: live token, active officer (if any).
pub async fn principal_for(
    db: &Db,
    secret: &str,
    now: DateTime<Utc>,
) -> Result<Option<Principal>, ApiError> {
    principal_for_hash(db, &hash_secret(secret), now).await
}

/// [`principal_for`] of a secret already hashed ([`hash_secret`]).
pub async fn principal_for_hash(
    db: &Db,
    hash: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<Principal>, ApiError> {
    let row = Q::new(format!("{PRINCIPAL_SQL} t.secret_hash = $1"))
        .bind(hash)
        .bind(now)
        .fetch_optional(db)
        .await?;
    principal_from(row)
}

/// Looks a presented credential up under the brute-force limits
/// ([`super::limit`]): refused with 429 while `client` is locked out
/// (unless the credential worked before), and a miss counts as a failure.
/// A hit costs no more than the lookup itself (two in-memory map updates)
/// and, if `reusable`, lets the credential pass later lockouts (not for
/// single-use stream tickets, which would only crowd out real ones).
pub async fn checked<F, Fut>(
    st: &ApiState,
    client: ClientKey,
    secret: &str,
    reusable: bool,
    lookup: F,
) -> Result<Principal, ApiError>
where
    F: FnOnce(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Principal>, ApiError>>,
{
    let now = st.clock.now();
    let hash = hash_secret(secret);
    st.limiter.admit(client, &hash, now)?;
    match lookup(hash.clone()).await? {
        Some(who) => {
            if reusable {
                st.limiter.succeeded(&hash);
            }
            Ok(who)
        }
        None => {
            st.limiter.failed(client, Some(&hash), now);
            Err(ApiError::Unauthorized)
        }
    }
}

/// The principal of a live token by id (a stream ticket names its token).
pub async fn principal_by_id(
    db: &Db,
    token_id: i64,
    now: DateTime<Utc>,
) -> Result<Option<Principal>, ApiError> {
    let row = Q::new(format!("{PRINCIPAL_SQL} t.token_id = $1"))
        .bind(token_id)
        .bind(now)
        .fetch_optional(db)
        .await?;
    principal_from(row)
}

fn principal_from(row: Option<DbRow>) -> Result<Option<Principal>, ApiError> {
    let Some(r) = row else { return Ok(None) };
    let role = Role::parse(&r.get::<String>("role"))
        .ok_or_else(|| ApiError::Internal("unknown role in api_tokens".into()))?;
    // A deactivated officer's tokens stop working at once.
    if r.get::<Option<bool>>("active") == Some(false) {
        return Ok(None);
    }
    Ok(Some(Principal {
        token_id: r.get("token_id"),
        role,
        officer_ref: r.get("officer_ref"),
        officer_id: r.get("officer_id"),
    }))
}

/// The bearer secret of a request, if one was sent.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ApiError::Unauthorized)?;
    let (scheme, secret) = v.split_once(' ').ok_or(ApiError::Unauthorized)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthorized);
    }
    let secret = secret.trim();
    // Bounded before hashing or querying: a 1 MB header is not a token.
    if secret.is_empty() || secret.len() > 256 {
        return Err(ApiError::Unauthorized);
    }
    Ok(Some(secret))
}

/// Who is calling: the bearer token if one is sent, otherwise the session
/// cookie (see [`super::session`]). A request that changes something on
/// the strength of a cookie alone must carry `X-Requested-With` (a header
/// no cross-site form can send and no cross-origin script may send without
/// a CORS grant, which this server never gives): cross-site request
/// forgery defence on top of SameSite=Strict.
///
/// Failed lookups count against `client` ([`super::limit`]).
pub async fn authenticate(
    state: &ApiState,
    method: &axum::http::Method,
    headers: &HeaderMap,
    client: ClientKey,
) -> Result<Principal, ApiError> {
    let now = state.clock.now();
    if let Some(secret) = bearer(headers)? {
        return checked(state, client, secret, true, |h| async move {
            principal_for_hash(&state.db, &h, now).await
        })
        .await;
    }
    let secret = super::session::cookie(headers).ok_or(ApiError::Unauthorized)?;
    let safe = matches!(
        *method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !safe && !headers.contains_key(super::session::CSRF_HEADER) {
        return Err(ApiError::Forbidden(
            "a change made with a session cookie needs the X-Requested-With header",
        ));
    }
    checked(state, client, secret, true, |h| async move {
        super::session::principal(&state.db, &h, now).await
    })
    .await
}

impl FromRequestParts<ApiState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let client = Client::from_parts(parts).0;
        authenticate(state, &parts.method, &parts.headers, client).await
    }
}
