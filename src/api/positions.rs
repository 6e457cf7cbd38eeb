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
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{self, AuditReason, Entry};
use super::auth::{Principal, CASEWORK};
use super::error::{ApiError, ApiPath, ApiQuery, FieldError, StdErrors};
use super::{ApiState, Page};

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

fn latest(r: &PgRow, now: DateTime<Utc>) -> LatestPosition {
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
    let sql = format!(
        "{LATEST_SQL} WHERE {} AND s.supervisee_id > $3 ORDER BY s.supervisee_id LIMIT $4",
        who.scope_sql()
    );
    let mut tx = st.pool.begin().await?;
    let rows = sqlx::query(&sql)
        .bind(who.scope_param())
        .bind(now)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&mut *tx)
        .await?;
    let mut items: Vec<LatestPosition> = rows.iter().map(|r| latest(r, now)).collect();
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
    audit::record_pg(&mut *tx, &who, &reason, now, entry).await?;
    tx.commit().await?;
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
    let sql = format!(
        "{LATEST_SQL} WHERE {} AND s.supervisee_id = $3",
        who.scope_sql()
    );
    let mut tx = st.pool.begin().await?;
    let row = sqlx::query(&sql)
        .bind(who.scope_param())
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ApiError::NotFound)?;
    let p = latest(&row, now);
    audit::record_pg(
        &mut *tx,
        &who,
        &reason,
        now,
        Entry::supervisee("position.read", id).with(json!({ "fix_time": p.fix_time })),
    )
    .await?;
    tx.commit().await?;
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
    conn: &mut PgConnection,
    who: &Principal,
    id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Subject, ApiError> {
    let sql = format!(
        "SELECT s.case_ref, s.time_zone, a.device_key, d.device_id, \
           greatest(a.valid_from, $3) AS lo, \
           least(COALESCE(a.valid_to, 'infinity'::timestamptz), $4) AS hi \
         FROM supervisees s \
         LEFT JOIN device_assignments a ON a.supervisee_id = s.supervisee_id \
           AND a.valid_from < $4 AND (a.valid_to IS NULL OR a.valid_to > $3) \
         LEFT JOIN devices d ON d.device_key = a.device_key \
         WHERE s.supervisee_id = $2 AND {} \
         ORDER BY a.valid_from, a.assignment_id",
        who.scope_sql()
    );
    let rows = sqlx::query(&sql)
        .bind(who.scope_param())
        .bind(id)
        .bind(from)
        .bind(to)
        .fetch_all(&mut *conn)
        .await?;
    let first = rows.first().ok_or(ApiError::NotFound)?;
    let mut subject = Subject {
        case_ref: first.get("case_ref"),
        time_zone: first.get("time_zone"),
        spans: Vec::with_capacity(rows.len()),
    };
    for r in &rows {
        let (Some(device_key), Some(device_id), Some(lo), Some(hi)) = (
            r.get::<Option<i64>, _>("device_key"),
            r.get::<Option<String>, _>("device_id"),
            r.get::<Option<DateTime<Utc>>, _>("lo"),
            r.get::<Option<DateTime<Utc>>, _>("hi"),
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
    conn: &mut PgConnection,
    supervisee_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<ZoneInForce>, ApiError> {
    let rows = sqlx::query(
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
                WHEN rz.retired_at IS NULL THEN v.next_at \
                ELSE least(v.next_at, rz.retired_at) END AS valid_to \
         FROM rz JOIN v ON v.zone_id = rz.zone_id \
         WHERE v.valid_from < $3 \
           AND (v.next_at IS NULL OR v.next_at > $2) \
           AND (rz.retired_at IS NULL OR rz.retired_at > $2) \
         ORDER BY rz.zone_id, rz.role, v.version",
    )
    .bind(supervisee_id)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| ZoneInForce {
            zone_id: r.get("zone_id"),
            zone_ref: r.get("zone_ref"),
            name: r.get("name"),
            role: r.get("role"),
            version: r.get("version"),
            geojson: r.get("geojson"),
            valid_from: r.get("valid_from"),
            valid_to: r.get("valid_to"),
        })
        .collect())
}

/// A fix row as fetched: (time, lat, lon, acc_m, speed_mps). Tuples decode
/// by position, the cheapest way through tens of thousands of rows.
pub(crate) type FixRow = (DateTime<Utc>, f64, f64, f32, Option<f32>);

/// Every fix of one device in `[lo, hi)`, in time order, at most `limit`.
/// An index range scan on the (device_key, fix_time) primary key.
pub(crate) const FIXES_SQL: &str = "SELECT fix_time, lat, lon, acc_m, speed_mps FROM fixes \
     WHERE device_key = $1 AND fix_time >= $2 AND fix_time < $3 \
     ORDER BY fix_time LIMIT $4";

/// Per bucket of `$5`, the real fix with the lowest accuracy radius
/// (earliest on a tie), in time order.
const BUCKETED_SQL: &str = "SELECT fix_time, lat, lon, acc_m, speed_mps FROM ( \
       SELECT DISTINCT ON (date_bin($5, fix_time, TIMESTAMPTZ '2000-01-01 00:00:00+00')) \
         fix_time, lat, lon, acc_m, speed_mps FROM fixes \
       WHERE device_key = $1 AND fix_time >= $2 AND fix_time < $3 \
       ORDER BY date_bin($5, fix_time, TIMESTAMPTZ '2000-01-01 00:00:00+00'), acc_m, fix_time \
     ) b ORDER BY fix_time LIMIT $4";

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
    let mut tx = st.pool.begin().await?;
    let subj = subject(&mut tx, &who, id, from, to).await?;
    let mut fixes: Vec<TrackFix> = Vec::new();
    for span in &subj.spans {
        let room = TRACK_MAX_FIXES - fixes.len() as i64;
        let sql = if bucket_s.is_some() {
            BUCKETED_SQL
        } else {
            FIXES_SQL
        };
        let mut fetch = sqlx::query_as::<_, FixRow>(sql)
            .bind(span.device_key)
            .bind(span.lo)
            .bind(span.hi)
            .bind(room + 1);
        if let Some(s) = bucket_s {
            fetch = fetch.bind(TimeDelta::seconds(s));
        }
        let rows = fetch.fetch_all(&mut *tx).await?;
        if rows.len() as i64 > room {
            return Err(too_many(q.bucket.as_deref()));
        }
        fixes.reserve(rows.len());
        fixes.extend(
            rows.into_iter()
                .map(|(t, lat, lon, acc_m, speed_mps)| TrackFix {
                    t,
                    lat,
                    lon,
                    acc_m,
                    speed_mps,
                }),
        );
    }
    // Two devices worn at once interleave; one device (the usual case)
    // arrives already ordered.
    if !fixes.is_sorted_by_key(|f| f.t) {
        fixes.sort_by_key(|f| f.t);
    }
    let zones = zones_in_force(&mut tx, id, from, to).await?;
    audit::record_pg(
        &mut *tx,
        &who,
        &reason,
        st.clock.now(),
        Entry::supervisee("track.read", id).with(json!({
            "from": from, "to": to, "bucket": q.bucket, "rows": fixes.len(),
        })),
    )
    .await?;
    tx.commit().await?;
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
mod tests {
    use super::parse_bucket;

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
}
