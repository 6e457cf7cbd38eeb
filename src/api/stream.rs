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
use super::limit::{Client, ClientKey};
use super::ApiState;
use crate::alerts::{AlertEvent, Audience};
use crate::store::sql::{Db, Q};

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
    issue_ticket(&st.db, &hash, who.token_id, expires_at, now).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(Ticket { ticket, expires_at }),
    ))
}

/// Stores a ticket's hash for `token_id`, clearing tickets expired for an
/// hour (here rather than by a separate job).
async fn issue_ticket(
    db: &Db,
    hash: &[u8],
    token_id: i64,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    Q::new("DELETE FROM stream_tickets WHERE expires_at < $1")
        .bind(now - chrono::TimeDelta::hours(1))
        .execute(db)
        .await?;
    Q::new("INSERT INTO stream_tickets (ticket_hash, token_id, expires_at) VALUES ($1, $2, $3)")
        .bind(hash)
        .bind(token_id)
        .bind(expires_at)
        .execute(db)
        .await?;
    Ok(())
}

/// Consumes a live ticket in one statement, so a ticket opens at most one
/// stream; the token it was issued for.
async fn redeem_ticket(
    db: &Db,
    hash: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<i64>, sqlx::Error> {
    Q::new(
        "UPDATE stream_tickets SET used_at = $2 \
         WHERE ticket_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING token_id",
    )
    .bind(hash)
    .bind(now)
    .scalar_opt(db)
    .await
}

/// The newest log entry's id (0 for an empty log).
async fn log_head(db: &Db) -> Result<i64, sqlx::Error> {
    Q::new("SELECT COALESCE(max(event_id), 0) FROM alert_events")
        .scalar(db)
        .await
}

/// Teams a supervisor belongs to or supervises.
async fn supervisor_teams(db: &Db, officer_ref: &str) -> Result<Vec<i64>, sqlx::Error> {
    Ok(Q::new(
        "SELECT team_id FROM officers WHERE officer_ref = $1 AND team_id IS NOT NULL \
         UNION SELECT t.team_id FROM teams t JOIN officers o \
         ON o.officer_id = t.supervisor_id WHERE o.officer_ref = $1",
    )
    .bind(officer_ref)
    .fetch_all(db)
    .await?
    .iter()
    .map(|r| r.get("team_id"))
    .collect())
}

/// Log entries after `after`, oldest first, each with its current audience
/// (the supervisee's officer and team as they are now, not as logged).
async fn events_after(db: &Db, after: i64, limit: i64) -> Result<Vec<AlertEvent>, sqlx::Error> {
    Ok(Q::new(
        "SELECT e.event_id, e.alert_id, e.event_type, e.at, e.payload, s.officer_ref, o.team_id, \
           s.case_ref \
         FROM alert_events e JOIN alerts a ON a.alert_id = e.alert_id \
         LEFT JOIN supervisees s ON s.supervisee_id = a.supervisee_id \
         LEFT JOIN officers o ON o.officer_ref = s.officer_ref \
         WHERE e.event_id > $1 ORDER BY e.event_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?
    .iter()
    .map(|r| {
        let alert = r.json("payload");
        AlertEvent {
            event_id: r.get("event_id"),
            alert_id: r.get("alert_id"),
            event_type: r.get("event_type"),
            at: r.get("at"),
            device_id: alert["device_id"].as_str().unwrap_or_default().to_owned(),
            alert,
            audience: Audience {
                officer_ref: r.get("officer_ref"),
                team_id: r.get("team_id"),
                case_ref: r.get("case_ref"),
            },
        }
    })
    .collect())
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
/// A wrong ticket counts as a failed attempt ([`super::limit`]).
async fn authenticate(
    st: &ApiState,
    headers: &HeaderMap,
    ticket: Option<&str>,
    client: ClientKey,
) -> Result<Principal, ApiError> {
    let now = st.clock.now();
    let Some(ticket) = ticket else {
        // Bearer token, or the browser's session cookie.
        return auth::authenticate(st, &axum::http::Method::GET, headers, client).await;
    };
    if ticket.len() > 256 {
        return Err(ApiError::Unauthorized);
    }
    auth::checked(st, client, ticket, false, |h| async move {
        match redeem_ticket(&st.db, &h, now).await? {
            Some(token_id) => auth::principal_by_id(&st.db, token_id, now).await,
            None => Ok(None),
        }
    })
    .await
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
    async fn load(db: &Db, who: &Principal) -> Result<Self, ApiError> {
        let team_ids = match (&who.role, &who.officer_ref) {
            (Role::Supervisor, Some(r)) => supervisor_teams(db, r).await?,
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
            Some(who) if CASEWORK.contains(&who.role) => Ok(Some(Self::load(&st.db, &who).await?)),
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
                match events_after(&self.st.db, self.cursor, REPLAY_PAGE).await {
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
    Client(client): Client,
    headers: HeaderMap,
    reason: AuditReason,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let who = authenticate(&st, &headers, q.ticket.as_deref(), client).await?;
    who.require(CASEWORK)?;
    let resume = match last_event_id(&headers)? {
        Some(id) => Some(id),
        None => q.last_event_id,
    };
    // Subscribe before reading the head so nothing falls between them.
    let rx = st.outbox.subscribe();
    let head = log_head(&st.db).await?;
    // A resume point beyond the head (a client that saw a log since
    // restored from backup) would wait forever: it starts at the head.
    let cursor = resume.map_or(head, |id| id.clamp(0, head));
    let viewer = Viewer::load(&st.db, &who).await?;
    let mut tx = st.db.begin().await?;
    audit::record(
        &mut tx,
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
    tx.commit().await?;
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

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::api::alerts::append_events;
    use crate::api::alerts::tests::{alert, t0, world};

    #[tokio::test]
    async fn tickets_open_one_stream_before_they_expire_on_sqlite() {
        let w = world().await;
        Q::new("INSERT INTO api_tokens (secret_hash, role, officer_id) VALUES ($1, 'officer', 1)")
            .bind(auth::hash_secret("wpt_x"))
            .execute(&w.db)
            .await
            .unwrap();
        let now = t0();
        let (a, b, old) = (
            auth::hash_secret("a"),
            auth::hash_secret("b"),
            auth::hash_secret("old"),
        );
        issue_ticket(
            &w.db,
            &old,
            1,
            now - TimeDelta::hours(2),
            now - TimeDelta::hours(3),
        )
        .await
        .unwrap();
        issue_ticket(&w.db, &a, 1, now + TimeDelta::seconds(30), now)
            .await
            .unwrap();
        issue_ticket(&w.db, &b, 1, now + TimeDelta::seconds(30), now)
            .await
            .unwrap();
        let left: i64 = Q::new("SELECT count(*) FROM stream_tickets")
            .scalar(&w.db)
            .await
            .unwrap();
        assert_eq!(left, 2, "tickets expired an hour ago are cleared");
        assert_eq!(redeem_ticket(&w.db, &a, now).await.unwrap(), Some(1));
        assert_eq!(redeem_ticket(&w.db, &a, now).await.unwrap(), None, "once");
        let expiry = now + TimeDelta::seconds(30);
        assert_eq!(redeem_ticket(&w.db, &b, expiry).await.unwrap(), None);
        assert_eq!(
            redeem_ticket(&w.db, &b, expiry - TimeDelta::microseconds(1))
                .await
                .unwrap(),
            Some(1)
        );
        assert_eq!(redeem_ticket(&w.db, &old, now).await.unwrap(), None);
    }

    #[tokio::test]
    async fn replay_reads_the_log_in_order_with_the_current_audience_on_sqlite() {
        let w = world().await;
        assert_eq!(log_head(&w.db).await.unwrap(), 0);
        let mine = alert(&w.db, 1, "high", t0()).await;
        let theirs = alert(&w.db, 2, "low", t0()).await;
        let mut tx = w.db.begin().await.unwrap();
        append_events(
            &mut tx,
            &[(mine, "raised"), (theirs, "raised"), (mine, "updated")],
            t0(),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let head = log_head(&w.db).await.unwrap();
        assert_eq!(head, 3);

        let all = events_after(&w.db, 0, 10).await.unwrap();
        let got: Vec<(i64, i64, &str)> = all
            .iter()
            .map(|e| (e.event_id, e.alert_id, e.event_type.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, mine, "raised"),
                (2, theirs, "raised"),
                (3, mine, "updated")
            ]
        );
        let e = &all[0];
        assert_eq!(e.at, t0());
        assert_eq!(e.device_id, "dev-1");
        assert_eq!(e.alert["severity"], "high");
        assert_eq!(e.audience.officer_ref.as_deref(), Some("o1"));
        assert_eq!(e.audience.team_id, Some(1));
        assert_eq!(e.audience.case_ref.as_deref(), Some("C-1"));
        assert_eq!(all[1].audience.team_id, None);
        let data = event_data(e);
        assert_eq!(data["alert"]["case_ref"], "C-1");
        assert!(data["alert"].get("details").is_none());

        let page = events_after(&w.db, 1, 1).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].event_id, 2);
        assert!(events_after(&w.db, head, 10).await.unwrap().is_empty());

        // Reassigning the caseload changes who sees past entries at once.
        Q::new("UPDATE supervisees SET officer_ref = 'o2' WHERE supervisee_id = 1")
            .execute(&w.db)
            .await
            .unwrap();
        let e = &events_after(&w.db, 0, 1).await.unwrap()[0];
        assert_eq!(e.audience.officer_ref.as_deref(), Some("o2"));
        assert_eq!(e.audience.team_id, None);
    }

    #[tokio::test]
    async fn a_supervisor_follows_the_teams_they_belong_to_or_supervise_on_sqlite() {
        let w = world().await;
        assert_eq!(supervisor_teams(&w.db, "sup").await.unwrap(), [1]);
        assert_eq!(supervisor_teams(&w.db, "o1").await.unwrap(), [1]);
        assert!(supervisor_teams(&w.db, "o2").await.unwrap().is_empty());
        let v = Viewer::load(&w.db, &w.sup).await.unwrap();
        assert_eq!(v.team_ids, [1]);
        // An officer's own teams are not read: they see their caseload only.
        let v = Viewer::load(&w.db, &w.o1).await.unwrap();
        assert!(v.team_ids.is_empty());
    }
}
