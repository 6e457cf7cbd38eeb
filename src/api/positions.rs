//! Where supervisees are: the latest position of each person in the
//! caller's caseload, one person's latest position, and one person's track
//! over a period (optionally downsampled) with the zone versions that were
//! in force.
//!
//! A supervisee's positions are the fixes of each device assigned to them,
//! clipped to that assignment's `[valid_from, valid_to)`: a device's fixes
//! from before (or after) it was worn by this person are never shown as
//! theirs. Victims' devices never have fixes stored, so they cannot appear.
//!
//! Every read here is location data and is audited before it is returned.
//! Downsampling keeps real fixes only (the most accurate of each time
//! bucket), never averaged positions: what is shown may be used as evidence.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{self, AuditReason, Entry};
use super::auth::{Principal, CASEWORK};
use super::error::{ApiError, ApiPath, ApiQuery, FieldError, StdErrors};
use super::{ApiState, Page};
use crate::store::sql::{to_sqlite, DbRow, Tx, Q};

/// Longest period one track request may cover.
pub const TRACK_MAX_DAYS: i64 = 31;
/// Most fixes one track response carries; beyond it the caller must
/// downsample (a browser map cannot usefully draw more).
pub const TRACK_MAX_FIXES: i64 = 100_000;
/// Smallest downsampling bucket (finer is the raw track anyway).
pub const BUCKET_MIN_S: i64 = 10;
/// Largest downsampling bucket.
pub const BUCKET_MAX_S: i64 = 86_400;

/// A supervisee's most recent position (fields absent when no device
/// currently assigned to them has reported a fix).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LatestPosition {
    /// Whose position.
    pub supervisee_id: i64,
    /// Their case reference, so the officer recognises the person.
    pub case_ref: String,
    /// Device that reported the fix (a person may wear more than one).
    pub device_id: Option<String>,
    /// Event time of the fix (device clock).
    pub fix_time: Option<DateTime<Utc>>,
    /// Latitude, WGS 84 degrees.
    pub lat: Option<f64>,
    /// Longitude, WGS 84 degrees.
    pub lon: Option<f64>,
    /// Reported accuracy radius, metres: how far the person may really be.
    pub acc_m: Option<f32>,
    /// Seconds between the fix and the server's now: a stale position must
    /// not be read as a current one (negative if the device clock is ahead).
    pub age_s: Option<i64>,
}

/// Latest position per current assignment, newest across them. The inner
/// LATERAL is one backward index probe on fixes' (device_key, fix_time)
/// primary key per device.
const LATEST_SQL: &str = "SELECT s.supervisee_id, s.case_ref, p.device_id, p.fix_time, p.lat, \
       p.lon, p.acc_m \
     FROM supervisees s \
     LEFT JOIN LATERAL ( \
       SELECT d.device_id, f.fix_time, f.lat, f.lon, f.acc_m \
       FROM device_assignments a \
       JOIN devices d ON d.device_key = a.device_key \
       CROSS JOIN LATERAL ( \
         SELECT f.fix_time, f.lat, f.lon, f.acc_m FROM fixes f \
         WHERE f.device_key = a.device_key AND f.fix_time >= a.valid_from \
           AND f.fix_time < COALESCE(a.valid_to, 'infinity'::timestamptz) \
         ORDER BY f.fix_time DESC LIMIT 1) f \
       WHERE a.supervisee_id = s.supervisee_id AND a.valid_from <= $2 \
         AND (a.valid_to IS NULL OR a.valid_to > $2) \
       ORDER BY f.fix_time DESC LIMIT 1) p ON true";

/// [`LATEST_SQL`] for SQLite, which has no LATERAL. The innermost subquery
/// is the same backward probe on the clustered (device_key, fix_time, ...)
/// key per current assignment; the middle one keeps the newest of those;
/// row values carry the whole key out of each scalar subquery, so the
/// final join is a key lookup. Within a device, equal times are decided by
/// the rest of the key, newest first (where PostgreSQL's backward scan
/// lands too); across devices, by the lower device key (PostgreSQL leaves
/// that tie unspecified).
const LATEST_LITE: &str = "SELECT s.supervisee_id, s.case_ref, d.device_id, f.fix_time, f.lat, \
       f.lon, f.acc_m \
     FROM supervisees s \
     LEFT JOIN fixes f ON (f.device_key, f.fix_time, f.boot, f.seq, f.idx) = ( \
       SELECT g.device_key, g.fix_time, g.boot, g.seq, g.idx \
       FROM device_assignments a \
       JOIN fixes g ON (g.device_key, g.fix_time, g.boot, g.seq, g.idx) = ( \
         SELECT h.device_key, h.fix_time, h.boot, h.seq, h.idx FROM fixes h \
         WHERE h.device_key = a.device_key AND h.fix_time >= a.valid_from \
           AND (a.valid_to IS NULL OR h.fix_time < a.valid_to) \
         ORDER BY h.fix_time DESC, h.boot DESC, h.seq DESC, h.idx DESC LIMIT 1) \
       WHERE a.supervisee_id = s.supervisee_id AND a.valid_from <= $2 \
         AND (a.valid_to IS NULL OR a.valid_to > $2) \
       ORDER BY g.fix_time DESC, g.device_key LIMIT 1) \
     LEFT JOIN devices d ON d.device_key = f.device_key";

/// The latest-position statement for `who`'s scope ($1) at `now` ($2),
/// followed by `tail` (more conditions, order, limit; from $3).
fn latest_q(who: &Principal, now: DateTime<Utc>, tail: &str) -> Q {
    let scope = who.scope_sql();
    let pg = format!("{LATEST_SQL} WHERE {scope} {tail}");
    // The scope predicate is PostgreSQL text (casts) and goes through the
    // same translation as any shared statement.
    let lite = to_sqlite(&format!("{LATEST_LITE} WHERE {scope} {tail}")).into_owned();
    Q::split(pg, lite).bind(who.scope_param()).bind(now)
}

fn latest(r: &DbRow, now: DateTime<Utc>) -> LatestPosition {
    let fix_time: Option<DateTime<Utc>> = r.get("fix_time");
    LatestPosition {
        supervisee_id: r.get("supervisee_id"),
        case_ref: r.get("case_ref"),
        device_id: r.get("device_id"),
        fix_time,
        lat: r.get("lat"),
        lon: r.get("lon"),
        acc_m: r.get("acc_m"),
        age_s: fix_time.map(|t| (now - t).num_seconds()),
    }
}

/// The latest positions of the supervisees in `who`'s scope with an id
/// above `after`, by id, at most `limit`.
pub(crate) async fn latest_positions(
    tx: &mut Tx,
    who: &Principal,
    now: DateTime<Utc>,
    after: i64,
    limit: i64,
) -> Result<Vec<LatestPosition>, sqlx::Error> {
    let rows = latest_q(
        who,
        now,
        "AND s.supervisee_id > $3 ORDER BY s.supervisee_id LIMIT $4",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(tx)
    .await?;
    Ok(rows.iter().map(|r| latest(r, now)).collect())
}

/// One supervisee's latest position; `None` if they are not in `who`'s
/// scope (or do not exist).
pub(crate) async fn latest_position(
    tx: &mut Tx,
    who: &Principal,
    now: DateTime<Utc>,
    id: i64,
) -> Result<Option<LatestPosition>, sqlx::Error> {
    let row = latest_q(who, now, "AND s.supervisee_id = $3")
        .bind(id)
        .fetch_optional(tx)
        .await?;
    Ok(row.map(|r| latest(&r, now)))
}

/// Paging of the caseload's latest positions.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PositionsQuery {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size 1..=200 (default 100).
    pub limit: Option<i64>,
}

/// The latest position of every supervisee in the caller's caseload, by
/// supervisee id. Audited once per request (`positions.read`), naming whose
/// positions were returned.
#[utoipa::path(
    get,
    path = "/positions",
    tag = "positions",
    params(PositionsQuery, ("X-Audit-Reason" = Option<String>, Header, description = "Why you are looking (kept in the audit log)")),
    responses((status = 200, description = "A page of latest positions", body = Page<LatestPosition>), StdErrors),
    security(("bearer" = []))
)]
pub async fn list_positions(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiQuery(q): ApiQuery<PositionsQuery>,
) -> Result<Json<Page<LatestPosition>>, ApiError> {
    who.require(CASEWORK)?;
    let mut errs = Vec::new();
    let after = super::id_cursor(&q.cursor, 0, &mut errs);
    let limit = super::limit_of(q.limit, 100, 200, &mut errs);
    super::done(errs)?;
    let now = st.clock.now();
    let mut tx = st.db.begin_read().await?;
    let mut items = latest_positions(&mut tx, &who, now, after, limit + 1).await?;
    tx.commit().await?;
    let next_cursor = super::paginate(&mut items, limit, |p| p.supervisee_id);
    let seen: Vec<i64> = items
        .iter()
        .filter(|p| p.fix_time.is_some())
        .map(|p| p.supervisee_id)
        .collect();
    let entry = Entry::new(
        "positions.read",
        None,
        json!({ "count": seen.len(), "supervisee_ids": seen }),
    );
    audit::record_read(&st.db, &who, &reason, now, entry).await?;
    Ok(Json(Page { items, next_cursor }))
}

/// One supervisee's latest position (from a currently assigned device).
/// Audited (`position.read`).
#[utoipa::path(
    get,
    path = "/supervisees/{id}/position",
    tag = "positions",
    params(("id" = i64, Path, description = "Supervisee id"), ("X-Audit-Reason" = Option<String>, Header, description = "Why you are looking (kept in the audit log)")),
    responses((status = 200, description = "The latest position (fields null if none)", body = LatestPosition), StdErrors),
    security(("bearer" = []))
)]
pub async fn supervisee_position(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<LatestPosition>, ApiError> {
    who.require(CASEWORK)?;
    let now = st.clock.now();
    let mut tx = st.db.begin_read().await?;
    let p = latest_position(&mut tx, &who, now, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    audit::record_read(
        &st.db,
        &who,
        &reason,
        now,
        Entry::supervisee("position.read", id).with(json!({ "fix_time": p.fix_time })),
    )
    .await?;
    Ok(Json(p))
}

/// Parameters of a track request.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrackQuery {
    /// Start (inclusive), RFC 3339, e.g. `2026-10-01T00:00:00Z`. Required.
    #[param(value_type = String, format = DateTime)]
    pub from: Option<String>,
    /// End (exclusive), RFC 3339; after `from`, at most 31 days later. Required.
    #[param(value_type = String, format = DateTime)]
    pub to: Option<String>,
    /// Downsample to the most accurate real fix per bucket: `30s`, `5m`,
    /// `1h`, `1d` (10 s to 1 day). Absent: every fix.
    pub bucket: Option<String>,
}

/// One fix of a track: a stored position, never an interpolated one.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrackFix {
    /// Event time.
    pub t: DateTime<Utc>,
    /// Latitude, WGS 84 degrees.
    pub lat: f64,
    /// Longitude, WGS 84 degrees.
    pub lon: f64,
    /// Reported accuracy radius, metres.
    pub acc_m: f32,
    /// Ground speed when the device reported one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed_mps: Option<f32>,
}

/// A zone version that applied to the supervisee during the period, so the
/// track is read against the boundaries of the time, not today's.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ZoneInForce {
    /// Zone id.
    pub zone_id: i64,
    /// Its reference.
    pub zone_ref: String,
    /// Its name.
    pub name: String,
    /// How the supervisee's rule uses it: inclusion, exclusion or home.
    pub role: String,
    /// The version.
    pub version: i32,
    /// That version's GeoJSON geometry.
    #[schema(value_type = Object)]
    pub geojson: serde_json::Value,
    /// When this version came into force.
    pub valid_from: DateTime<Utc>,
    /// When the next version (or the zone's retirement) replaced it; null
    /// while it is still in force.
    pub valid_to: Option<DateTime<Utc>>,
}

/// A supervisee's track over a period.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Track {
    /// Whose track.
    pub supervisee_id: i64,
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
    /// The downsampling bucket used, if any.
    pub bucket: Option<String>,
    /// Fixes in time order.
    pub fixes: Vec<TrackFix>,
    /// Zone versions of the supervisee's rules in force during the period.
    pub zones_in_force: Vec<ZoneInForce>,
}

/// Parses an RFC 3339 instant named `field`, recording an error if absent
/// or malformed.
pub(crate) fn parse_instant(
    field: &str,
    v: &Option<String>,
    errs: &mut Vec<FieldError>,
) -> Option<DateTime<Utc>> {
    match v.as_deref() {
        None => {
            errs.push(FieldError::new(field, "required (RFC 3339 date-time)"));
            None
        }
        Some(s) => match DateTime::parse_from_rfc3339(s.trim()).or_else(|e| {
            // An unencoded `+01:00` offset arrives as ` 01:00`.
            match s.trim().rsplit_once(' ') {
                Some((a, b)) if a.len() >= 19 => DateTime::parse_from_rfc3339(&format!("{a}+{b}")),
                _ => Err(e),
            }
        }) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                errs.push(FieldError::new(
                    field,
                    "not an RFC 3339 date-time (e.g. 2026-10-01T00:00:00Z)",
                ));
                None
            }
        },
    }
}

/// Validates `from`/`to`: both present, `to` after `from`, at most
/// `max_days` apart (errors name `to`).
pub(crate) fn parse_range(
    from: &Option<String>,
    to: &Option<String>,
    max_days: i64,
    errs: &mut Vec<FieldError>,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let f = parse_instant("from", from, errs);
    let t = parse_instant("to", to, errs);
    let (f, t) = (f?, t?);
    if t <= f {
        errs.push(FieldError::new("to", "must be after from"));
        return None;
    }
    if t - f > TimeDelta::days(max_days) {
        errs.push(FieldError::new(
            "to",
            format!("at most {max_days} days after from"),
        ));
        return None;
    }
    Some((f, t))
}

/// Parses a bucket such as `30s`, `5m`, `1h`, `1d` into seconds.
pub fn parse_bucket(s: &str) -> Result<i64, String> {
    let bad = || "a number followed by s, m, h or d (e.g. 30s, 5m, 1h)".to_owned();
    // ASCII only: the split below is by byte, and a multi-byte last
    // character must be refused, not split inside.
    if s.is_empty() || s.len() > 8 || !s.is_ascii() {
        return Err(bad());
    }
    let (num, unit) = s.split_at(s.len() - 1);
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = n.saturating_mul(mult);
    if !(BUCKET_MIN_S..=BUCKET_MAX_S).contains(&secs) {
        return Err(format!("must be between {BUCKET_MIN_S}s and 1d (86400s)"));
    }
    Ok(secs)
}

/// One device assignment of a supervisee, clipped to a requested period.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    /// The device.
    pub device_key: i64,
    /// Its public id.
    pub device_id: String,
    /// Start of the clipped period (inclusive).
    pub lo: DateTime<Utc>,
    /// End of the clipped period (exclusive).
    pub hi: DateTime<Utc>,
}

/// A supervisee the caller may see, with their assignments over a period.
#[derive(Debug, Clone)]
pub(crate) struct Subject {
    /// Case reference.
    pub case_ref: String,
    /// IANA time zone.
    pub time_zone: String,
    /// Assignments overlapping the period, clipped to it, by start.
    pub spans: Vec<Span>,
}

/// Looks the supervisee up within the caller's scope (404 otherwise, the
/// same as a missing id) with the device assignments overlapping
/// `[from, to)`, each clipped to that period.
pub(crate) async fn subject(
    tx: &mut Tx,
    who: &Principal,
    id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Subject, ApiError> {
    // The clipping is written as CASE rather than greatest/least (which
    // SQLite spells max/min, and which treat NULL differently): one text
    // for both databases.
    let sql = format!(
        "SELECT s.case_ref, s.time_zone, a.device_key, d.device_id, \
           CASE WHEN a.valid_from > $3 THEN a.valid_from ELSE $3 END AS lo, \
           CASE WHEN a.valid_to IS NULL OR a.valid_to > $4 THEN $4 ELSE a.valid_to END AS hi \
         FROM supervisees s \
         LEFT JOIN device_assignments a ON a.supervisee_id = s.supervisee_id \
           AND a.valid_from < $4 AND (a.valid_to IS NULL OR a.valid_to > $3) \
         LEFT JOIN devices d ON d.device_key = a.device_key \
         WHERE s.supervisee_id = $2 AND {} \
         ORDER BY a.valid_from, a.assignment_id",
        who.scope_sql()
    );
    let rows = Q::new(sql)
        .bind(who.scope_param())
        .bind(id)
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?;
    let first = rows.first().ok_or(ApiError::NotFound)?;
    let mut subject = Subject {
        case_ref: first.get("case_ref"),
        time_zone: first.get("time_zone"),
        spans: Vec::with_capacity(rows.len()),
    };
    for r in &rows {
        let (Some(device_key), Some(device_id), Some(lo), Some(hi)) = (
            r.get::<Option<i64>>("device_key"),
            r.get::<Option<String>>("device_id"),
            r.get::<Option<DateTime<Utc>>>("lo"),
            r.get::<Option<DateTime<Utc>>>("hi"),
        ) else {
            continue;
        };
        if lo < hi {
            subject.spans.push(Span {
                device_key,
                device_id,
                lo,
                hi,
            });
        }
    }
    Ok(subject)
}

/// The zone versions of the supervisee's rules in force during `[from,
/// to)` (single zones and shared lists): rules created before `to` and not
/// retired before `from` — a court export shows the rules of the period,
/// not today's — whose validity `[created_at, next version's created_at or
/// the zone's retirement)` overlaps the period.
pub(crate) async fn zones_in_force(
    tx: &mut Tx,
    supervisee_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<ZoneInForce>, ApiError> {
    // The earlier of the next version and the retirement is a CASE, not
    // least() (SQLite's min()), so one text serves both databases.
    let rows = Q::new(
        "WITH rz AS ( \
           SELECT DISTINCT z.zone_id, z.zone_ref, z.name, z.retired_at, r.role \
           FROM rules r JOIN zones z \
             ON z.zone_id = r.zone_id OR (r.list_ref IS NOT NULL AND z.list_ref = r.list_ref) \
           WHERE r.supervisee_id = $1 AND r.created_at < $3 \
             AND (r.retired_at IS NULL OR r.retired_at > $2)), \
         v AS ( \
           SELECT zv.zone_id, zv.version, zv.geojson, zv.created_at AS valid_from, \
             lead(zv.created_at) OVER (PARTITION BY zv.zone_id ORDER BY zv.version) AS next_at \
           FROM zone_versions zv WHERE zv.zone_id IN (SELECT zone_id FROM rz)) \
         SELECT rz.zone_id, rz.zone_ref, rz.name, rz.role, v.version, v.geojson, v.valid_from, \
           CASE WHEN v.next_at IS NULL THEN rz.retired_at \
                WHEN rz.retired_at IS NULL OR v.next_at < rz.retired_at THEN v.next_at \
                ELSE rz.retired_at END AS valid_to \
         FROM rz JOIN v ON v.zone_id = rz.zone_id \
         WHERE v.valid_from < $3 \
           AND (v.next_at IS NULL OR v.next_at > $2) \
           AND (rz.retired_at IS NULL OR rz.retired_at > $2) \
         ORDER BY rz.zone_id, rz.role, v.version",
    )
    .bind(supervisee_id)
    .bind(from)
    .bind(to)
    .fetch_all(tx)
    .await?;
    Ok(rows
        .iter()
        .map(|r| ZoneInForce {
            zone_id: r.get("zone_id"),
            zone_ref: r.get("zone_ref"),
            name: r.get("name"),
            role: r.get("role"),
            version: r.get("version"),
            geojson: r.json("geojson"),
            valid_from: r.get("valid_from"),
            valid_to: r.get("valid_to"),
        })
        .collect())
}

/// Every fix of one device in `[lo, hi)`, in time order, at most `limit`.
/// An index range scan on the (device_key, fix_time) primary key (on
/// PostgreSQL index-only: the key INCLUDEs these columns; on SQLite the
/// table is clustered on it).
const FIXES_SQL: &str = "SELECT fix_time, lat, lon, acc_m, speed_mps FROM fixes \
     WHERE device_key = $1 AND fix_time >= $2 AND fix_time < $3 \
     ORDER BY fix_time LIMIT $4";

/// Per bucket of `$5` seconds, the real fix with the lowest accuracy
/// radius (earliest on a tie), in time order. Buckets are aligned on
/// 2000-01-01T00:00:00Z, not on the period's start. (The bucket is bound
/// as seconds and made an interval here because the shared binding has no
/// interval type; the plan is the same index-only scan and sort.)
const BUCKETED_SQL: &str = "SELECT fix_time, lat, lon, acc_m, speed_mps FROM ( \
       SELECT DISTINCT ON (date_bin(make_interval(secs => $5), fix_time, TIMESTAMPTZ '2000-01-01 00:00:00+00')) \
         fix_time, lat, lon, acc_m, speed_mps FROM fixes \
       WHERE device_key = $1 AND fix_time >= $2 AND fix_time < $3 \
       ORDER BY date_bin(make_interval(secs => $5), fix_time, TIMESTAMPTZ '2000-01-01 00:00:00+00'), acc_m, fix_time \
     ) b ORDER BY fix_time LIMIT $4";

/// [`BUCKETED_SQL`] for SQLite (no DISTINCT ON, no date_bin). `e` is whole
/// seconds since date_bin's origin (946684800 = 2000-01-01T00:00:00Z),
/// taken from the stored text without its fraction (and its `+00:00`:
/// stored times are UTC): unixepoch() of the full text rounds to the
/// millisecond, which would move a fix from xx:04:59.9996 into the next
/// 5-minute bucket, where date_bin keeps it in this one. Buckets are whole
/// seconds, so the floored second decides the bucket exactly. The
/// partition key is `e` floored to a multiple of the bucket (written to
/// floor before 2000 too, where `%` truncates). Within a bucket the pick is PostgreSQL's order — accuracy,
/// then time — and then the rest of the key, where PostgreSQL's choice
/// among rows equal in both is unspecified.
const BUCKETED_LITE: &str = "SELECT fix_time, lat, lon, acc_m, speed_mps FROM ( \
       SELECT fix_time, lat, lon, acc_m, speed_mps, row_number() OVER ( \
           PARTITION BY e - ((e % $5) + $5) % $5 \
           ORDER BY acc_m, fix_time, boot, seq, idx) AS pick \
       FROM (SELECT fix_time, lat, lon, acc_m, speed_mps, boot, seq, idx, \
               unixepoch(substr(fix_time, 1, 19)) - 946684800 AS e \
             FROM fixes WHERE device_key = $1 AND fix_time >= $2 AND fix_time < $3) \
     ) WHERE pick = 1 ORDER BY fix_time LIMIT $4";

/// One device's fixes in `span`, in time order, at most `limit`: every
/// stored fix, or with `bucket_s` the most accurate one per bucket of that
/// many seconds.
pub(crate) async fn span_fixes(
    tx: &mut Tx,
    span: &Span,
    bucket_s: Option<i64>,
    limit: i64,
) -> Result<Vec<TrackFix>, sqlx::Error> {
    let q = match bucket_s {
        None => Q::new(FIXES_SQL),
        Some(_) => Q::split(BUCKETED_SQL, BUCKETED_LITE),
    }
    .bind(span.device_key)
    .bind(span.lo)
    .bind(span.hi)
    .bind(limit);
    let q = match bucket_s {
        Some(s) => q.bind(s),
        None => q,
    };
    q.fetch_all(tx).await?.iter().map(track_fix).collect()
}

/// A fix row, decoded by position: a track is tens of thousands of rows
/// and an export hundreds of thousands, where a by-name lookup per column
/// adds up.
fn track_fix(r: &DbRow) -> Result<TrackFix, sqlx::Error> {
    macro_rules! by_position {
        ($r:expr) => {
            TrackFix {
                t: $r.try_get(0)?,
                lat: $r.try_get(1)?,
                lon: $r.try_get(2)?,
                acc_m: $r.try_get(3)?,
                speed_mps: $r.try_get(4)?,
            }
        };
    }
    Ok(match r {
        DbRow::Pg(r) => by_position!(r),
        DbRow::Lite(r) => by_position!(r),
    })
}

fn too_many(bucket: Option<&str>) -> ApiError {
    let msg = match bucket {
        None => format!(
            "more than {TRACK_MAX_FIXES} fixes in this period: pass a bucket (e.g. 1m) to \
             downsample, or shorten the period"
        ),
        Some(_) => format!(
            "more than {TRACK_MAX_FIXES} fixes even downsampled: use a larger bucket or a \
             shorter period"
        ),
    };
    ApiError::field("bucket", msg)
}

/// A supervisee's fixes in `[from, to)` in time order, optionally
/// downsampled, with the zone versions in force. Each device assignment is
/// clipped to its own `[valid_from, valid_to)`; with a bucket, each
/// assignment is downsampled on its own (a bucket that spans a device
/// change may keep one fix from each device). More than 100 000 fixes is
/// refused (422 naming `bucket`). Audited (`track.read`).
#[utoipa::path(
    get,
    path = "/supervisees/{id}/track",
    tag = "positions",
    params(("id" = i64, Path, description = "Supervisee id"), TrackQuery, ("X-Audit-Reason" = Option<String>, Header, description = "Why you are looking (kept in the audit log)")),
    responses((status = 200, description = "The track", body = Track), StdErrors),
    security(("bearer" = []))
)]
pub async fn track(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<TrackQuery>,
) -> Result<Json<Track>, ApiError> {
    who.require(CASEWORK)?;
    let mut errs = Vec::new();
    let range = parse_range(&q.from, &q.to, TRACK_MAX_DAYS, &mut errs);
    let bucket_s = match q.bucket.as_deref().map(parse_bucket) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(m)) => {
            errs.push(FieldError::new("bucket", m));
            None
        }
    };
    let (Some((from, to)), true) = (range, errs.is_empty()) else {
        return Err(ApiError::Validation(errs));
    };
    let mut tx = st.db.begin_read().await?;
    let subj = subject(&mut tx, &who, id, from, to).await?;
    let mut fixes: Vec<TrackFix> = Vec::new();
    for span in &subj.spans {
        let room = TRACK_MAX_FIXES - fixes.len() as i64;
        let rows = span_fixes(&mut tx, span, bucket_s, room + 1).await?;
        if rows.len() as i64 > room {
            return Err(too_many(q.bucket.as_deref()));
        }
        fixes.extend(rows);
    }
    // Two devices worn at once interleave; one device (the usual case)
    // arrives already ordered.
    if !fixes.is_sorted_by_key(|f| f.t) {
        fixes.sort_by_key(|f| f.t);
    }
    let zones = zones_in_force(&mut tx, id, from, to).await?;
    tx.commit().await?;
    audit::record_read(
        &st.db,
        &who,
        &reason,
        st.clock.now(),
        Entry::supervisee("track.read", id).with(json!({
            "from": from, "to": to, "bucket": q.bucket, "rows": fixes.len(),
        })),
    )
    .await?;
    Ok(Json(Track {
        supervisee_id: id,
        from,
        to,
        bucket: q.bucket,
        fixes,
        zones_in_force: zones,
    }))
}

/// Routes of this module.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_positions))
        .routes(routes!(supervisee_position))
        .routes(routes!(track))
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::{DateTime, TimeDelta, TimeZone, Utc};

    use super::*;
    use crate::api::auth::{Principal, Role};
    use crate::store::sql::{Db, LitePools, Tx, Q};

    #[test]
    fn buckets_parse_and_hostile_ones_are_refused_without_panicking() {
        assert_eq!(parse_bucket("30s"), Ok(30));
        assert_eq!(parse_bucket("15m"), Ok(900));
        assert_eq!(parse_bucket("1d"), Ok(86_400));
        for bad in [
            "", "é", "1é", "5", "m", "-5m", "1.5h", "99999999", "5s", "2d", "٣m",
        ] {
            assert!(parse_bucket(bad).is_err(), "{bad:?}");
        }
    }

    /// A fresh SQLite database with the embedded schema (one connection
    /// serves as writer and reader: `:memory:` is per connection).
    pub(crate) async fn lite_db() -> Db {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .expect("schema");
        Db::Lite(LitePools {
            write: pool.clone(),
            read: pool,
        })
    }

    pub(crate) fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid test time")
    }

    pub(crate) fn officer(r: &str) -> Principal {
        Principal {
            token_id: 1,
            role: Role::Officer,
            officer_ref: Some(r.to_owned()),
            officer_id: None,
        }
    }

    pub(crate) async fn add_officer(db: &Db, r: &str, team_id: Option<i64>) {
        Q::new("INSERT INTO officers (officer_ref, display_name, team_id) VALUES ($1, $1, $2)")
            .bind(r)
            .bind(team_id)
            .execute(db)
            .await
            .expect("officer");
    }

    pub(crate) async fn add_supervisee(db: &Db, case_ref: &str, officer: &str) -> i64 {
        Q::new(
            "INSERT INTO supervisees (case_ref, time_zone, officer_ref) \
             VALUES ($1, 'Europe/London', $2) RETURNING supervisee_id",
        )
        .bind(case_ref)
        .bind(officer)
        .scalar(db)
        .await
        .expect("supervisee")
    }

    pub(crate) async fn add_device(db: &Db, device_id: &str) -> i64 {
        Q::new("INSERT INTO devices (device_id) VALUES ($1) RETURNING device_key")
            .bind(device_id)
            .scalar(db)
            .await
            .expect("device")
    }

    pub(crate) async fn assign(
        db: &Db,
        device_key: i64,
        supervisee_id: i64,
        from: DateTime<Utc>,
        to: Option<DateTime<Utc>>,
    ) {
        Q::new(
            "INSERT INTO device_assignments (device_key, supervisee_id, valid_from, valid_to) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(device_key)
        .bind(supervisee_id)
        .bind(from)
        .bind(to)
        .execute(db)
        .await
        .expect("assignment");
    }

    /// A fix; `seq` also sets the position, so a fix is recognisable.
    pub(crate) async fn add_fix(db: &Db, device_key: i64, t: DateTime<Utc>, seq: i64, acc_m: f32) {
        Q::new(
            "INSERT INTO fixes (device_key, fix_time, boot, seq, idx, received_at, lat, lon, \
               acc_m, speed_mps, src) VALUES ($1, $2, 1, $3, 0, $2, $4, $5, $6, NULL, 'gnss')",
        )
        .bind(device_key)
        .bind(t)
        .bind(seq)
        .bind(51.0 + seq as f64 / 1e4)
        .bind(-0.1)
        .bind(acc_m)
        .execute(db)
        .await
        .expect("fix");
    }

    /// Handler state over a SQLite file as the server opens it: WAL, one
    /// writer, separate read-only readers. The clock carries a fraction of
    /// a second, so stored times carry one.
    pub(crate) async fn lite_state() -> (ApiState, tempfile::TempDir) {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("waypoint.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .expect("writer");
        sqlx::migrate!("./migrations/sqlite")
            .run(&write)
            .await
            .expect("schema");
        let read = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts.read_only(true))
            .await
            .expect("readers");
        let clock = std::sync::Arc::new(crate::clock::ManualClock::new(
            at(2026, 10, 2, 12, 0, 0) + TimeDelta::milliseconds(250),
        ));
        let st = ApiState::new(
            Db::Lite(LitePools { write, read }),
            crate::alerts::outbox::Outbox::new(),
            clock,
            crate::api::ApiConfig::default(),
        );
        (st, dir)
    }

    /// The audit records of `action`: (supervisee, detail).
    pub(crate) async fn audits(db: &Db, action: &str) -> Vec<(Option<i64>, serde_json::Value)> {
        Q::new("SELECT supervisee_id, detail FROM audit_log WHERE action = $1 ORDER BY audit_id")
            .bind(action)
            .fetch_all(db)
            .await
            .expect("audit read")
            .iter()
            .map(|r| (r.get("supervisee_id"), r.json("detail")))
            .collect()
    }

    #[tokio::test]
    async fn handlers_read_and_audit_on_sqlite() {
        use crate::api::audit::AuditReason;
        let (st, _dir) = lite_state().await;
        let db = st.db.clone();
        add_officer(&db, "o1", None).await;
        let alice = add_supervisee(&db, "alice", "o1").await;
        let bob = add_supervisee(&db, "bob", "o1").await;
        let dev = add_device(&db, "d1").await;
        let t0 = at(2026, 10, 1, 0, 0, 0);
        assign(&db, dev, alice, t0, None).await;
        for i in 0..120i64 {
            let acc = 5.0 + ((i * 7) % 13) as f32;
            add_fix(
                &db,
                dev,
                t0 + TimeDelta::seconds(30 * i) + TimeDelta::milliseconds(125),
                i,
                acc,
            )
            .await;
        }
        let reason = || AuditReason(Some("review".into()));

        let Json(page) = list_positions(
            State(st.clone()),
            officer("o1"),
            reason(),
            ApiQuery(PositionsQuery {
                cursor: None,
                limit: Some(1),
            }),
        )
        .await
        .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].supervisee_id, alice);
        assert_eq!(page.items[0].lat, Some(51.0119));
        assert!(page.next_cursor.is_some());
        let Json(next) = list_positions(
            State(st.clone()),
            officer("o1"),
            reason(),
            ApiQuery(PositionsQuery {
                cursor: page.next_cursor.clone(),
                limit: Some(1),
            }),
        )
        .await
        .unwrap();
        assert_eq!(next.items[0].supervisee_id, bob);
        assert!(next.items[0].fix_time.is_none());
        let read = audits(&db, "positions.read").await;
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].1["supervisee_ids"], serde_json::json!([alice]));
        assert_eq!(read[1].1["count"], 0);

        let Json(p) =
            supervisee_position(State(st.clone()), officer("o1"), reason(), ApiPath(alice))
                .await
                .unwrap();
        assert_eq!(
            p.fix_time,
            Some(t0 + TimeDelta::seconds(30 * 119) + TimeDelta::milliseconds(125))
        );
        assert!(matches!(
            supervisee_position(State(st.clone()), officer("o2"), reason(), ApiPath(alice)).await,
            Err(ApiError::NotFound)
        ));
        assert_eq!(audits(&db, "position.read").await.len(), 1);

        let range = |bucket: Option<&str>| TrackQuery {
            from: Some("2026-10-01T00:00:00Z".into()),
            to: Some("2026-10-02T00:00:00Z".into()),
            bucket: bucket.map(str::to_owned),
        };
        let Json(full) = track(
            State(st.clone()),
            officer("o1"),
            reason(),
            ApiPath(alice),
            ApiQuery(range(None)),
        )
        .await
        .unwrap();
        assert_eq!(full.fixes.len(), 120);
        let Json(down) = track(
            State(st.clone()),
            officer("o1"),
            reason(),
            ApiPath(alice),
            ApiQuery(range(Some("5m"))),
        )
        .await
        .unwrap();
        assert_eq!(down.fixes.len(), 12);
        for (i, k) in down.fixes.iter().enumerate() {
            let bucket = &full.fixes[i * 10..i * 10 + 10];
            let best = bucket
                .iter()
                .min_by(|a, b| a.acc_m.total_cmp(&b.acc_m).then(a.t.cmp(&b.t)))
                .unwrap();
            assert_eq!(
                (k.t, k.acc_m, k.lat),
                (best.t, best.acc_m, best.lat),
                "bucket {i}"
            );
        }
        let reads = audits(&db, "track.read").await;
        assert_eq!(reads.len(), 2);
        assert_eq!(reads[1].0, Some(alice));
        assert_eq!(reads[1].1["bucket"], "5m");
        assert_eq!(reads[1].1["rows"], 12);
    }

    async fn tx(db: &Db) -> Tx {
        db.begin().await.expect("begin")
    }

    #[tokio::test]
    async fn stored_times_give_their_whole_second_to_unixepoch() {
        let db = lite_db().await;
        let dev = add_device(&db, "d1").await;
        let times = [
            at(2026, 10, 1, 0, 0, 0),
            at(2026, 10, 1, 0, 0, 59) + TimeDelta::microseconds(999_999),
            at(2026, 10, 1, 0, 1, 0) + TimeDelta::milliseconds(500),
            at(2026, 10, 1, 0, 1, 1) + TimeDelta::microseconds(123_456),
            at(1999, 12, 31, 23, 59, 59) + TimeDelta::milliseconds(500),
            at(1969, 12, 31, 23, 59, 59) + TimeDelta::milliseconds(250),
        ];
        for (i, t) in times.iter().enumerate() {
            add_fix(&db, dev, *t, i as i64, 5.0).await;
        }
        let rows = Q::new(
            "SELECT fix_time, unixepoch(fix_time) AS rounded, \
               unixepoch(substr(fix_time, 1, 19)) AS e FROM fixes WHERE device_key = $1 \
             ORDER BY fix_time",
        )
        .bind(dev)
        .fetch_all(&db)
        .await
        .unwrap();
        let mut sorted = times.to_vec();
        sorted.sort();
        assert_eq!(rows.len(), sorted.len());
        for (r, t) in rows.iter().zip(&sorted) {
            // Stored text sorts as time and reads back exactly...
            assert_eq!(r.get::<DateTime<Utc>>("fix_time"), *t);
            // ...its whole second is the floor, as date_bin bins it...
            assert_eq!(r.get::<i64>("e"), t.timestamp(), "{t}");
            // ...while unixepoch() of the whole text (which it does parse,
            // fraction and "+00:00" included) rounds to the millisecond.
            let ms = (t.timestamp_subsec_nanos() as i64 + 500_000) / 1_000_000;
            assert_eq!(r.get::<i64>("rounded"), t.timestamp() + ms / 1000, "{t}");
        }
    }

    #[tokio::test]
    async fn latest_positions_take_current_assignments_only_clipped_and_scoped() {
        let db = lite_db().await;
        add_officer(&db, "o1", None).await;
        add_officer(&db, "o2", None).await;
        let alice = add_supervisee(&db, "alice", "o1").await;
        let bob = add_supervisee(&db, "bob", "o1").await;
        let carol = add_supervisee(&db, "carol", "o2").await;
        let (d1, d2, d3, d4) = (
            add_device(&db, "d1").await,
            add_device(&db, "d2").await,
            add_device(&db, "d3").await,
            add_device(&db, "d4").await,
        );
        let t0 = at(2026, 10, 1, 8, 0, 0);
        let now = at(2026, 10, 2, 12, 0, 0);
        // alice: d1 worn 08:00-10:00 (its 13:00 fix is not hers, and is
        // newer than anything else), d2 worn from 09:00 (its 08:30 fix is
        // not hers), d3 worn from 09:00 too with an older fix.
        assign(&db, d1, alice, t0, Some(t0 + TimeDelta::hours(2))).await;
        assign(&db, d2, alice, t0 + TimeDelta::hours(1), None).await;
        assign(&db, d3, alice, t0 + TimeDelta::hours(1), None).await;
        add_fix(&db, d1, t0 + TimeDelta::minutes(20), 7, 3.0).await;
        add_fix(&db, d1, t0 + TimeDelta::hours(5), 1, 3.0).await;
        add_fix(&db, d2, t0 + TimeDelta::minutes(30), 2, 3.0).await;
        add_fix(&db, d2, t0 + TimeDelta::hours(3), 3, 7.5).await;
        add_fix(
            &db,
            d2,
            t0 + TimeDelta::hours(4) + TimeDelta::milliseconds(250),
            4,
            8.0,
        )
        .await;
        add_fix(&db, d3, t0 + TimeDelta::hours(2), 5, 3.0).await;
        // carol (another caseload) has a fix; bob none.
        assign(&db, d4, carol, t0, None).await;
        add_fix(&db, d4, t0 + TimeDelta::hours(1), 6, 3.0).await;

        let mut tx = tx(&db).await;
        let all = latest_positions(&mut tx, &officer("o1"), now, 0, 10)
            .await
            .unwrap();
        assert_eq!(
            all.iter().map(|p| p.supervisee_id).collect::<Vec<_>>(),
            vec![alice, bob]
        );
        let a = &all[0];
        assert_eq!(a.case_ref, "alice");
        assert_eq!(a.device_id.as_deref(), Some("d2"));
        assert_eq!(
            a.fix_time,
            Some(t0 + TimeDelta::hours(4) + TimeDelta::milliseconds(250))
        );
        assert_eq!(a.lat, Some(51.0004));
        assert_eq!(a.acc_m, Some(8.0));
        assert_eq!(a.age_s, Some((now - a.fix_time.unwrap()).num_seconds()));
        let b = &all[1];
        assert!(b.device_id.is_none() && b.fix_time.is_none() && b.age_s.is_none());

        // Paging: after alice, limit 1.
        let page = latest_positions(&mut tx, &officer("o1"), now, alice, 1)
            .await
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].supervisee_id, bob);

        // At 09:30 all three are worn: the newest fix of each within its
        // assignment decides (fixes are not capped at `now`).
        let early = latest_position(&mut tx, &officer("o1"), t0 + TimeDelta::minutes(90), alice)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(early.device_id.as_deref(), Some("d2"));
        let d1_only = latest_position(&mut tx, &officer("o1"), t0 + TimeDelta::minutes(30), alice)
            .await
            .unwrap()
            .unwrap();
        // At 08:30 only d1 is worn; its 13:00 fix is after its assignment.
        assert_eq!(d1_only.device_id.as_deref(), Some("d1"));
        assert_eq!(d1_only.fix_time, Some(t0 + TimeDelta::minutes(20)));

        // Out of scope reads as missing.
        assert!(latest_position(&mut tx, &officer("o1"), now, carol)
            .await
            .unwrap()
            .is_none());
        assert!(latest_position(&mut tx, &officer("o1"), now, 999)
            .await
            .unwrap()
            .is_none());
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn supervisor_scope_is_translated_and_sees_the_team() {
        let db = lite_db().await;
        let team: i64 =
            Q::new("INSERT INTO teams (team_ref, name) VALUES ('t', 'T') RETURNING team_id")
                .scalar(&db)
                .await
                .unwrap();
        add_officer(&db, "boss", None).await;
        add_officer(&db, "o1", Some(team)).await;
        add_officer(&db, "o2", None).await;
        Q::new("UPDATE teams SET supervisor_id = (SELECT officer_id FROM officers WHERE officer_ref = 'boss')")
            .execute(&db)
            .await
            .unwrap();
        let alice = add_supervisee(&db, "alice", "o1").await;
        let carol = add_supervisee(&db, "carol", "o2").await;
        let boss = Principal {
            role: Role::Supervisor,
            ..officer("boss")
        };
        let now = at(2026, 10, 2, 12, 0, 0);
        let mut tx = tx(&db).await;
        let seen = latest_positions(&mut tx, &boss, now, 0, 10).await.unwrap();
        assert_eq!(
            seen.iter().map(|p| p.supervisee_id).collect::<Vec<_>>(),
            vec![alice]
        );
        assert!(latest_position(&mut tx, &boss, now, carol)
            .await
            .unwrap()
            .is_none());
        let subj = subject(&mut tx, &boss, alice, now - TimeDelta::days(1), now)
            .await
            .unwrap();
        assert_eq!(subj.case_ref, "alice");
        assert!(subj.spans.is_empty());
        assert!(matches!(
            subject(&mut tx, &boss, carol, now - TimeDelta::days(1), now).await,
            Err(ApiError::NotFound)
        ));
    }

    #[tokio::test]
    async fn subject_clips_assignments_and_fixes_respect_half_open_spans() {
        let db = lite_db().await;
        add_officer(&db, "o1", None).await;
        let alice = add_supervisee(&db, "alice", "o1").await;
        let (d1, d2) = (add_device(&db, "d1").await, add_device(&db, "d2").await);
        let t0 = at(2026, 10, 1, 0, 0, 0);
        let swap = t0 + TimeDelta::hours(6) + TimeDelta::milliseconds(500);
        assign(&db, d1, alice, t0 - TimeDelta::days(3), Some(swap)).await;
        assign(&db, d2, alice, swap, None).await;
        for (i, m) in [0i64, 359, 360, 361, 720].into_iter().enumerate() {
            let t = t0 + TimeDelta::minutes(m) + TimeDelta::milliseconds(500);
            add_fix(&db, d1, t, i as i64, 5.0).await;
            add_fix(&db, d2, t, 10 + i as i64, 5.0).await;
        }
        let (from, to) = (t0, t0 + TimeDelta::hours(12));
        let mut tx = tx(&db).await;
        let subj = subject(&mut tx, &officer("o1"), alice, from, to)
            .await
            .unwrap();
        assert_eq!(subj.time_zone, "Europe/London");
        let spans: Vec<_> = subj
            .spans
            .iter()
            .map(|s| (s.device_id.as_str(), s.lo, s.hi))
            .collect();
        assert_eq!(spans, vec![("d1", from, swap), ("d2", swap, to)]);
        let one = span_fixes(&mut tx, &subj.spans[0], None, 100)
            .await
            .unwrap();
        let two = span_fixes(&mut tx, &subj.spans[1], None, 100)
            .await
            .unwrap();
        // d1 up to and including 05:59:00.5 (06:00:00.5 is the swap, not
        // d1's); d2 from the swap on, 12:00:00.5 is past `to`.
        assert_eq!(
            one.iter().map(|f| f.lat).collect::<Vec<_>>(),
            vec![51.0, 51.0001]
        );
        assert_eq!(
            two.iter().map(|f| f.t).collect::<Vec<_>>(),
            vec![swap, swap + TimeDelta::minutes(1)]
        );
        assert_eq!(two[0].acc_m, 5.0);
        assert_eq!(two[0].speed_mps, None);
        // The limit applies.
        assert_eq!(
            span_fixes(&mut tx, &subj.spans[1], None, 1)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    /// The rule PostgreSQL applies (date_bin from 2000-01-01, then the
    /// lowest accuracy, then the earliest), written out.
    fn reference(fixes: &[(DateTime<Utc>, f32)], bucket_s: i64) -> Vec<DateTime<Utc>> {
        let origin = at(2000, 1, 1, 0, 0, 0);
        let mut best: std::collections::BTreeMap<i64, (f32, DateTime<Utc>)> = Default::default();
        for &(t, acc) in fixes {
            let us = (t - origin).num_microseconds().unwrap();
            let b = us.div_euclid(bucket_s * 1_000_000);
            let e = best.entry(b).or_insert((acc, t));
            if (acc, t) < *e {
                *e = (acc, t);
            }
        }
        let mut out: Vec<_> = best.into_values().map(|(_, t)| t).collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn buckets_keep_the_fix_postgresql_keeps() {
        let db = lite_db().await;
        add_officer(&db, "o1", None).await;
        let alice = add_supervisee(&db, "alice", "o1").await;
        let dev = add_device(&db, "d1").await;
        // Starts off any bucket boundary and before 2000 (where buckets
        // must floor, not truncate), with fractional times, ties in
        // accuracy, and fixes on bucket boundaries.
        let start = at(1999, 12, 31, 23, 50, 7) + TimeDelta::milliseconds(300);
        assign(&db, dev, alice, start - TimeDelta::days(1), None).await;
        let mut fixes = Vec::new();
        let mut t = start;
        for i in 0..400i64 {
            let acc = [5.0f32, 3.0, 3.0, 9.5, 3.0, 12.0, 4.25][(i * 5 % 7) as usize];
            fixes.push((t, acc));
            add_fix(&db, dev, t, i, acc).await;
            t += TimeDelta::milliseconds(if i % 3 == 0 { 7_700 } else { 10_000 - i * 3 });
        }
        // Exactly on boundaries (after 2000), both better and worse, and a
        // hair before one (a millisecond rounding would move it across).
        for (k, acc, before) in [
            (1i64, 1.0f32, 0i64),
            (2, 50.0, 0),
            (3, 0.5, 100),
            (4, 0.5, 0),
        ] {
            let on = at(2000, 1, 1, 0, 0, 0) + TimeDelta::seconds(60 * k)
                - TimeDelta::microseconds(before);
            fixes.push((on, acc));
            add_fix(&db, dev, on, 1000 + k, acc).await;
        }
        let (from, to) = (start - TimeDelta::hours(1), t + TimeDelta::hours(1));
        let mut tx = tx(&db).await;
        let subj = subject(&mut tx, &officer("o1"), alice, from, to)
            .await
            .unwrap();
        for bucket_s in [10, 30, 60, 300, 3_600, 86_400] {
            let got = span_fixes(&mut tx, &subj.spans[0], Some(bucket_s), 10_000)
                .await
                .unwrap();
            let want = reference(&fixes, bucket_s);
            assert_eq!(
                got.iter().map(|f| f.t).collect::<Vec<_>>(),
                want,
                "bucket {bucket_s}s"
            );
            // Each kept fix is a stored row, not a blend.
            for f in &got {
                let stored = fixes.iter().find(|(t, _)| *t == f.t).unwrap();
                assert_eq!(f.acc_m, stored.1);
            }
        }
        // The limit counts buckets kept.
        assert_eq!(
            span_fixes(&mut tx, &subj.spans[0], Some(60), 3)
                .await
                .unwrap()
                .len(),
            3
        );
    }

    #[tokio::test]
    async fn zones_in_force_follow_versions_retirement_and_lists() {
        let db = lite_db().await;
        add_officer(&db, "o1", None).await;
        let alice = add_supervisee(&db, "alice", "o1").await;
        let t0 = at(2026, 10, 1, 0, 0, 0);
        let zone = |r: &'static str, list: Option<&'static str>, retired: Option<DateTime<Utc>>| {
            let db = db.clone();
            async move {
                Q::new(
                    "INSERT INTO zones (zone_ref, name, list_ref, retired_at) \
                     VALUES ($1, $1, $2, $3) RETURNING zone_id",
                )
                .bind(r)
                .bind(list)
                .bind(retired)
                .scalar::<i64>(&db)
                .await
                .unwrap()
            }
        };
        let version = |zone_id: i64, v: i32, at: DateTime<Utc>| {
            let db = db.clone();
            async move {
                Q::new(
                    "INSERT INTO zone_versions (zone_id, version, geojson, created_at, created_by) \
                     VALUES ($1, $2, $3, $4, 'test')",
                )
                .bind(zone_id)
                .bind(v)
                .bind(serde_json::json!({"type": "Point", "coordinates": [0, v]}))
                .bind(at)
                .execute(&db)
                .await
                .unwrap();
            }
        };
        let park = zone("park", None, None).await;
        version(park, 1, t0 - TimeDelta::days(10)).await;
        version(park, 2, t0 + TimeDelta::days(2)).await;
        let school = zone("school", Some("schools"), Some(t0 + TimeDelta::days(1))).await;
        version(school, 1, t0 - TimeDelta::days(10)).await;
        version(school, 2, t0 + TimeDelta::hours(12)).await;
        let other = zone("other", Some("pubs"), None).await;
        version(other, 1, t0 - TimeDelta::days(10)).await;
        for (role, zone_id, list) in [
            ("home", Some(park), None),
            ("exclusion", None, Some("schools")),
        ] {
            Q::new(
                "INSERT INTO rules (supervisee_id, role, zone_id, list_ref, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(alice)
            .bind(role)
            .bind(zone_id)
            .bind(list)
            .bind(t0 - TimeDelta::days(5))
            .execute(&db)
            .await
            .unwrap();
        }
        let mut tx = tx(&db).await;
        let z = zones_in_force(&mut tx, alice, t0, t0 + TimeDelta::days(4))
            .await
            .unwrap();
        let got: Vec<_> = z
            .iter()
            .map(|z| {
                (
                    z.zone_ref.as_str(),
                    z.role.as_str(),
                    z.version,
                    z.valid_from,
                    z.valid_to,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "park",
                    "home",
                    1,
                    t0 - TimeDelta::days(10),
                    Some(t0 + TimeDelta::days(2))
                ),
                ("park", "home", 2, t0 + TimeDelta::days(2), None),
                (
                    "school",
                    "exclusion",
                    1,
                    t0 - TimeDelta::days(10),
                    Some(t0 + TimeDelta::hours(12))
                ),
                // Its retirement ends the last version.
                (
                    "school",
                    "exclusion",
                    2,
                    t0 + TimeDelta::hours(12),
                    Some(t0 + TimeDelta::days(1))
                ),
            ]
        );
        assert_eq!(z[1].geojson["coordinates"][1], 2);
        // A period after the school's retirement has the park only.
        let later = zones_in_force(
            &mut tx,
            alice,
            t0 + TimeDelta::days(2),
            t0 + TimeDelta::days(4),
        )
        .await
        .unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].version, 2);
    }
}
