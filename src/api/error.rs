//! Every API error is an RFC 9457 problem document (`application/problem+json`).
//!
//! Internal causes (SQL, I/O) are logged with a correlation id and never
//! sent: the client gets the id to quote, not the query. Rejections from
//! axum's own extractors (malformed JSON, wrong content type, oversize body,
//! unparseable query) are mapped here so they are problems too, and always
//! 4xx.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON path of the field, e.g. `geometry.coordinates[0]` or `time_zone`.
    pub field: String,
    /// What is wrong, in words.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The RFC 9457 body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// Identifies the problem type (`urn:waypoint:problem:<slug>`).
    #[serde(rename = "type")]
    pub type_: String,
    /// Short, human-readable summary of the type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation specific to this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Invalid fields, for validation problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Correlation id of a logged internal error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_id: Option<String>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Some fields are invalid (422), each named.
    #[error("invalid request")]
    Validation(Vec<FieldError>),
    /// The request cannot be parsed (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No or an unknown/expired credential (401).
    #[error("authentication required")]
    Unauthorized,
    /// The caller's role may not use this endpoint (403).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// Does not exist, or is outside what the caller may see (404): the two
    /// are deliberately indistinguishable.
    #[error("not found")]
    NotFound,
    /// The resource exists but not with this method (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request conflicts with the current state (409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Body larger than the limit (413).
    #[error("payload too large")]
    PayloadTooLarge,
    /// Body is not JSON (415).
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// Too many failed authentication attempts from this client (or from
    /// all clients): retry after this many seconds (429).
    #[error("too many failed authentication attempts")]
    TooManyRequests {
        /// Seconds until an attempt is accepted again.
        retry_after_s: u64,
    },
    /// The database is unreachable; retry (503).
    #[error("service unavailable")]
    Unavailable,
    /// A bug or an unexpected database refusal; logged, not shown (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A single-field validation error.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid request fields",
            ),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Malformed request"),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Not permitted"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed on this resource",
            ),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Request body must be application/json",
            ),
            Self::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many failed authentication attempts",
            ),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service temporarily unavailable",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    /// The problem document sent for this error.
    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.parts();
        let mut p = Problem {
            type_: format!("urn:waypoint:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            errors: Vec::new(),
            error_id: None,
        };
        match self {
            Self::Validation(errors) => {
                p.detail = Some(
                    errors
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                );
                p.errors = errors.clone();
            }
            Self::BadRequest(d) | Self::Conflict(d) => p.detail = Some(d.clone()),
            Self::Forbidden(d) => p.detail = Some((*d).to_owned()),
            Self::Unauthorized => {
                p.detail = Some("send a valid token as `Authorization: Bearer <token>`".into())
            }
            Self::TooManyRequests { retry_after_s } => {
                p.detail = Some(format!(
                    "authentication refused for {retry_after_s} s after repeated failures"
                ))
            }
            Self::NotFound
            | Self::MethodNotAllowed
            | Self::PayloadTooLarge
            | Self::UnsupportedMediaType
            | Self::Unavailable => {}
            Self::Internal(cause) => {
                let id = format!("{:016x}", rand_u64());
                tracing::error!(error_id = %id, %cause, "API internal error");
                p.error_id = Some(id);
            }
        }
        p
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    // An id for log correlation only; a failed OS RNG must not fail the request.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let p = self.problem();
        let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&p).unwrap_or_default();
        let mut r = (status, body).into_response();
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match self {
            Self::Unauthorized => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"waypoint\""),
                );
            }
            Self::Unavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Self::TooManyRequests { retry_after_s } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s.max(1)));
            }
            _ => {}
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Contended(_) => {
                tracing::warn!(error = %e, "API: database unavailable");
                Self::Unavailable
            }
            StoreError::NotFound(_) => Self::NotFound,
            StoreError::AlreadyExists(what) => Self::Conflict(format!("already exists: {what}")),
            StoreError::Invalid(what) => Self::Conflict(what),
            StoreError::Refused(ref cause) if nul_in_text(cause) => nul_refused(),
            StoreError::Refused(_) | StoreError::Migrate(_) => Self::Internal(e.to_string()),
        }
    }
}

/// PostgreSQL refuses a NUL character in text (SQLSTATE 22021, "invalid
/// byte sequence"); only a request puts one there (SQLite stores it as
/// sent).
fn nul_in_text(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("22021"))
}

fn nul_refused() -> ApiError {
    ApiError::field("body", "a text value contains a NUL character")
}

impl From<sqlx::Error> for ApiError {
    /// Constraint violations the API did not anticipate become 409/422
    /// without the constraint text; connection trouble 503; the rest 500.
    fn from(e: sqlx::Error) -> Self {
        use crate::store::sql::{violation, Violation};
        match violation(&e) {
            Some(Violation::Unique) => {
                return Self::Conflict("conflicts with an existing record".into())
            }
            Some(Violation::ForeignKey) => {
                return Self::Conflict("refers to a record that does not exist".into())
            }
            Some(Violation::Check) => {
                return Self::Validation(vec![FieldError::new(
                    "body",
                    "a value is out of the allowed range",
                )])
            }
            None => {}
        }
        if nul_in_text(&e) {
            return nul_refused();
        }
        // A value the driver cannot encode (e.g. a year outside PostgreSQL's
        // range) came from the request.
        if let sqlx::Error::Encode(_) = &e {
            return Self::Validation(vec![FieldError::new(
                "body",
                "a value is out of the allowed range",
            )]);
        }
        crate::store::sql::classify(e).into()
    }
}

/// A JSON body whose rejections are problems: syntax 400, wrong shape 422,
/// missing content type 415, oversize 413. The outcome is handed to the
/// handler rather than failing the request, so handlers check the caller's
/// role first (`let body = body?;` after `require`): a caller who may not
/// use an endpoint gets 403 whatever the body, never validation details.
#[derive(Debug)]
pub struct ApiJson<T>(pub Result<T, ApiError>);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            axum::Json::<T>::from_request(req, state)
                .await
                .map(|axum::Json(v)| v)
                .map_err(json_rejection),
        ))
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => ApiError::field("body", e.body_text()),
        JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::BytesRejection(e) => {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest(e.body_text())
            }
        }
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// `Query<T>` whose rejections are problems: a value of the wrong type 422
/// (naming the parameter), anything else 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::field("query", e.body_text()))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// `Path<T>` whose rejections are problems: a value of the wrong type (a
/// non-numeric id) 422, not a missing resource; anything else 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                Err(ApiError::field("path", e.body_text()))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// The error responses every endpoint may give, for the OpenAPI document
/// (`responses(..., StdErrors)` in each handler's annotation).
pub struct StdErrors;

impl utoipa::IntoResponses for StdErrors {
    fn responses() -> std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    > {
        use utoipa::openapi::content::ContentBuilder;
        use utoipa::openapi::response::ResponseBuilder;
        use utoipa::openapi::{Ref, RefOr};
        [
            ("400", "Malformed request (syntax, parameter types)"),
            ("401", "No valid bearer token"),
            ("403", "The caller's role may not use this endpoint"),
            (
                "404",
                "Not found, or outside the caller's caseload (indistinguishable)",
            ),
            ("409", "Conflicts with the current state"),
            ("413", "Request body too large"),
            ("415", "Request body is not application/json"),
            ("422", "Invalid fields; each is named in `errors`"),
            (
                "429",
                "Too many failed authentication attempts; see `Retry-After`",
            ),
            ("503", "Database unavailable; retry later"),
        ]
        .into_iter()
        .map(|(code, desc)| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build();
            (
                code.to_owned(),
                RefOr::T(
                    ResponseBuilder::new()
                        .description(desc)
                        .content(PROBLEM_JSON, content)
                        .build(),
                ),
            )
        })
        .collect()
    }
}
