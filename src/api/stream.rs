//! Live alerts: Server-Sent Events from the durable alert-event log.
//!
//! Each connection follows the log from a cursor: first it replays from the
//! database (everything after `Last-Event-ID`), then it follows the
//! in-process broadcast ([`crate::alerts::outbox`]). If it falls behind the
//! broadcast (`Lagged`) or sees a gap, it goes back to the database, so a
//! slow client loses nothing and holds nobody up. Only entries about
//! supervisees the caller may see *now* are sent; the SSE `id` is the log's
//! `event_id`, so a reconnect resumes exactly.
//!
//! Browsers' EventSource cannot send an Authorization header, so it opens
//! the stream with a single-use ticket (`POST /stream/tickets`, valid for
//! seconds; only its hash is stored) — never the long-lived token in a URL.
//! Other clients may send the bearer token as usual.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{self, AuditReason, Entry};
use super::auth::{self, Principal, Role, CASEWORK, TICKET_PREFIX};
use super::error::{ApiError, ApiQuery, StdErrors};
use super::ApiState;
use crate::alerts::AlertEvent;
use crate::store::postgres::alerts::events_after;

/// Log entries read per database round while replaying.
const REPLAY_PAGE: i64 = 256;

/// A single-use ticket that opens one stream.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Ticket {
    /// Pass as `?ticket=` to `/alerts/stream`; works once.
    pub ticket: String,
    /// Unused tickets stop working at this time.
    pub expires_at: DateTime<Utc>,
}

/// Issues a single-use, short-lived stream ticket for the caller.
#[utoipa::path(
    post,
    path = "/stream/tickets",
    tag = "stream",
    responses((status = 201, description = "A ticket", body = Ticket), StdErrors),
    security(("bearer" = []))
)]
pub async fn create_ticket(
    State(st): State<ApiState>,
    who: Principal,
) -> Result<(axum::http::StatusCode, Json<Ticket>), ApiError> {
    who.require(CASEWORK)?;
    let (ticket, hash) = auth::new_secret(TICKET_PREFIX)?;
    let now = st.clock.now();
    let expires_at = now
        + chrono::TimeDelta::from_std(st.cfg.ticket_ttl)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    // Expired tickets are cleared here rather than by a separate job.
    sqlx::query("DELETE FROM stream_tickets WHERE expires_at < $1")
        .bind(now - chrono::TimeDelta::hours(1))
        .execute(&st.pool)
        .await?;
    sqlx::query(
        "INSERT INTO stream_tickets (ticket_hash, token_id, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(&hash)
    .bind(who.token_id)
    .bind(expires_at)
    .execute(&st.pool)
    .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(Ticket { ticket, expires_at }),
    ))
}

/// Query of the stream endpoint.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// A ticket from `POST /stream/tickets` (browsers); otherwise send the
    /// bearer token.
    pub ticket: Option<String>,
    /// Resume after this log entry when the client cannot set the
    /// `Last-Event-ID` header (a new EventSource); the header wins.
    pub last_event_id: Option<i64>,
}

/// The caller of a stream, by ticket or bearer token.
async fn authenticate(
    st: &ApiState,
    headers: &HeaderMap,
    ticket: Option<&str>,
) -> Result<Principal, ApiError> {
    let now = st.clock.now();
    let Some(ticket) = ticket else {
        // Bearer token, or the browser's session cookie.
        return auth::authenticate(st, &axum::http::Method::GET, headers).await;
    };
    if ticket.len() > 256 {
        return Err(ApiError::Unauthorized);
    }
    // Consumed atomically: a ticket opens at most one stream.
    let token_id: Option<i64> = sqlx::query_scalar(
        "UPDATE stream_tickets SET used_at = $2 \
         WHERE ticket_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING token_id",
    )
    .bind(auth::hash_secret(ticket))
    .bind(now)
    .fetch_optional(&st.pool)
    .await?;
    let token_id = token_id.ok_or(ApiError::Unauthorized)?;
    auth::principal_by_id(&st.db, token_id, now)
        .await?
        .ok_or(ApiError::Unauthorized)
}

/// Whom a connection may see. The supervisee's officer and team are read
/// with each log entry, so reassigning a caseload applies at once; the
/// caller's own standing (token live, officer active, teams) is re-read
/// every `ApiConfig::stream_recheck`, so a revoked token or a moved
/// supervisor stops receiving within that time.
#[derive(Debug, Clone)]
struct Viewer {
    token_id: i64,
    role: Role,
    officer_ref: Option<String>,
    /// Teams a supervisor belongs to or supervises.
    team_ids: Vec<i64>,
}

impl Viewer {
    /// The caller's current standing; `None` once the token is revoked or
    /// expired or the officer deactivated.
    async fn load(st: &ApiState, who: &Principal) -> Result<Self, ApiError> {
        let team_ids =
            match (&who.role, &who.officer_ref) {
                (Role::Supervisor, Some(r)) => sqlx::query_scalar(
                    "SELECT team_id FROM officers WHERE officer_ref = $1 AND team_id IS NOT NULL \
                     UNION SELECT t.team_id FROM teams t JOIN officers o \
                     ON o.officer_id = t.supervisor_id WHERE o.officer_ref = $1",
                )
                .bind(r)
                .fetch_all(&st.pool)
                .await?,
                _ => Vec::new(),
            };
        Ok(Self {
            token_id: who.token_id,
            role: who.role,
            officer_ref: who.officer_ref.clone(),
            team_ids,
        })
    }

    async fn reload(&self, st: &ApiState) -> Result<Option<Self>, ApiError> {
        match auth::principal_by_id(&st.db, self.token_id, st.clock.now()).await? {
            Some(who) if CASEWORK.contains(&who.role) => Ok(Some(Self::load(st, &who).await?)),
            _ => Ok(None),
        }
    }

    fn sees(&self, e: &AlertEvent) -> bool {
        let mine = e.audience.officer_ref.is_some() && e.audience.officer_ref == self.officer_ref;
        match self.role {
            Role::Officer => mine,
            Role::Supervisor => {
                mine || e
                    .audience
                    .team_id
                    .is_some_and(|t| self.team_ids.contains(&t))
            }
            Role::Admin | Role::Auditor => false,
        }
    }
}

/// What a stream event carries: the log entry and the alert's summary
/// fields (no evidence positions: those are read, and audited, per alert).
fn event_data(e: &AlertEvent) -> serde_json::Value {
    let mut alert = e.alert.clone();
    if let Some(o) = alert.as_object_mut() {
        o.remove("details");
        o.remove("device_key");
        o.insert("case_ref".into(), e.audience.case_ref.clone().into());
    }
    serde_json::json!({
        "event_id": e.event_id,
        "alert_id": e.alert_id,
        "event_type": e.event_type,
        "at": e.at,
        "alert": alert,
    })
}

struct Feed {
    st: ApiState,
    viewer: Viewer,
    /// Last log entry dealt with (sent or filtered out).
    cursor: i64,
    rx: broadcast::Receiver<AlertEvent>,
    backlog: VecDeque<AlertEvent>,
    /// Reading from the database rather than the broadcast.
    replaying: bool,
    /// When to re-check the caller next.
    recheck_at: tokio::time::Instant,
}

impl Feed {
    /// The next event this viewer may see; `None` ends the stream (the
    /// client reconnects with `Last-Event-ID` and loses nothing).
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if tokio::time::Instant::now() >= self.recheck_at {
                match self.viewer.reload(&self.st).await {
                    Ok(Some(v)) => self.viewer = v,
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::warn!(error = %e, "alert stream: re-check failed; closing");
                        return None;
                    }
                }
                self.recheck_at = tokio::time::Instant::now() + self.st.cfg.stream_recheck;
            }
            if let Some(e) = self.backlog.pop_front() {
                if e.event_id <= self.cursor {
                    continue;
                }
                self.cursor = e.event_id;
                if self.viewer.sees(&e) {
                    let ev = Event::default()
                        .id(e.event_id.to_string())
                        .event(e.event_type.clone())
                        .json_data(event_data(&e))
                        .unwrap_or_else(|_| Event::default().comment("unserialisable entry"));
                    return Some((Ok(ev), self));
                }
                continue;
            }
            if self.replaying {
                match events_after(&self.st.pool, self.cursor, REPLAY_PAGE).await {
                    Ok(page) => {
                        self.replaying = page.len() as i64 == REPLAY_PAGE;
                        self.backlog.extend(page);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "alert stream: replay failed; closing");
                        return None;
                    }
                }
                continue;
            }
            let next = tokio::select! {
                r = self.rx.recv() => r,
                // An idle stream is re-checked too.
                _ = tokio::time::sleep_until(self.recheck_at) => continue,
            };
            match next {
                Ok(e) if e.event_id <= self.cursor => {}
                // A gap (entries committed before this feed subscribed):
                // the database has them.
                Ok(e) if e.event_id > self.cursor + 1 => self.replaying = true,
                Ok(e) => self.backlog.push_back(e),
                Err(RecvError::Lagged(_)) => self.replaying = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// Live alerts (Server-Sent Events): `raised`, `updated`, `condition_ended`,
/// `acknowledged`, `resolved`, `note`, `escalated`; each with `id` = log
/// position. Resumes after `Last-Event-ID`; keep-alive comments every 15 s.
#[utoipa::path(
    get,
    path = "/alerts/stream",
    tag = "stream",
    params(StreamQuery, ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this entry")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String), StdErrors),
    security(("bearer" = []), ())
)]
pub async fn alert_stream(
    State(st): State<ApiState>,
    headers: HeaderMap,
    reason: AuditReason,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let who = authenticate(&st, &headers, q.ticket.as_deref()).await?;
    who.require(CASEWORK)?;
    let resume = match last_event_id(&headers)? {
        Some(id) => Some(id),
        None => q.last_event_id,
    };
    // Subscribe before reading the head so nothing falls between them.
    let rx = st.outbox.subscribe();
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(max(event_id), 0) FROM alert_events")
        .fetch_one(&st.pool)
        .await?;
    // A resume point beyond the head (a client that saw a log since
    // restored from backup) would wait forever: it starts at the head.
    let cursor = resume.map_or(head, |id| id.clamp(0, head));
    let viewer = Viewer::load(&st, &who).await?;
    audit::record_pg(
        &st.pool,
        &who,
        &reason,
        st.clock.now(),
        Entry::new(
            "alerts.stream",
            None,
            serde_json::json!({ "after": cursor }),
        ),
    )
    .await?;
    let feed = Feed {
        viewer,
        recheck_at: tokio::time::Instant::now() + st.cfg.stream_recheck,
        cursor,
        rx,
        backlog: VecDeque::new(),
        replaying: true,
        st: st.clone(),
    };
    let events = futures_util::stream::unfold(feed, Feed::next);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(st.cfg.keep_alive)))
}

fn last_event_id(h: &HeaderMap) -> Result<Option<i64>, ApiError> {
    match h.get("last-event-id") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::field("Last-Event-ID", "must be an event id from this stream")
            }),
    }
}

/// Routes of this module.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create_ticket))
        .routes(routes!(alert_stream))
}
