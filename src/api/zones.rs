//! Zones (versioned geometry), the rules that apply them to a supervisee,
//! and approved absences (rule exceptions).
//!
//! Zones are written by admins. A zone's geometry is never edited in place:
//! every change is a new version, so an alert keeps pointing at the outline
//! that was in force when it was raised. Geometry is validated by
//! [`Shape::from_geojson`] plus a check that polygon edges do not cross
//! (which the evaluator does not need, but an outline that crosses itself
//! is always a drawing mistake), and is stored in its canonical form, the
//! same form provisioning files store.
//!
//! Exclusion zones can reveal a victim's address, so caseworkers see only
//! zones that a live rule of a supervisee in their scope refers to
//! (directly or through a shared list), and every geometry read is audited.
//!
//! Rules are written by admins. Exceptions (approved absences) may also be
//! approved by the responsible officer or their supervisor; they are never
//! deleted, only cut short ("cancelled").

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{self, AuditReason, Entry};
use super::auth::{Principal, Role, ADMIN};
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, FieldError, StdErrors};
use super::people::{check_text, unique_as, READERS};
use super::{done, id_cursor, limit_of, paginate, ApiState, Page};
use crate::geofence::Shape;
use crate::rules::schedule::Schedule;
use crate::scenario::ROLES;

// ---------------------------------------------------------------------------
// Geometry validation.

/// Validates a zone geometry and returns its canonical form and kind. CPU
/// bound for large outlines, so it runs off the async workers.
async fn canonical_geometry(
    v: Value,
    errs: &mut Vec<FieldError>,
) -> Result<Option<(Value, &'static str)>, ApiError> {
    let r = tokio::task::spawn_blocking(move || {
        let shape = Shape::from_geojson(&v).map_err(|e| e.to_string())?;
        crate::geofence::check_simple(&shape)?;
        Ok::<_, String>((shape.to_geojson(), shape.kind()))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("geometry check failed: {e}")))?;
    Ok(match r {
        Ok(g) => Some(g),
        Err(m) => {
            errs.push(FieldError::new("geojson", m));
            None
        }
    })
}

// ---------------------------------------------------------------------------
// Zones.

/// A zone as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ZoneSummary {
    /// Id (used in zone paths and rules).
    pub zone_id: i64,
    /// Stable reference (provisioning files use it).
    pub zone_ref: String,
    /// Name shown to officers.
    pub name: String,
    /// Shared list it belongs to (rules may target a whole list).
    pub list_ref: Option<String>,
    /// Version in force.
    pub current_version: i32,
    /// Polygon, MultiPolygon, Point (circle) or LineString (corridor).
    pub geometry_type: Option<String>,
    /// When retired (no longer evaluated).
    pub retired_at: Option<DateTime<Utc>>,
}

const ZONE_COLS: &str = "z.zone_id, z.zone_ref, z.name, z.list_ref, z.current_version, \
     z.retired_at, v.geojson->'geometry'->>'type' AS geometry_type";

fn zone_summary(r: &PgRow) -> ZoneSummary {
    ZoneSummary {
        zone_id: r.get("zone_id"),
        zone_ref: r.get("zone_ref"),
        name: r.get("name"),
        list_ref: r.get("list_ref"),
        current_version: r.get("current_version"),
        geometry_type: r.get("geometry_type"),
        retired_at: r.get("retired_at"),
    }
}

/// SQL predicate over zone `z` for the zones the caller may see; uses `$1`
/// ([`Principal::scope_param`]). Caseworkers: zones that a live rule of a
/// supervisee in scope refers to, directly or through its list (a retired
/// rule no longer justifies seeing a zone that may since have moved with a
/// victim).
fn zone_scope(who: &Principal) -> String {
    if who.role == Role::Admin {
        return who.scope_sql().to_owned();
    }
    format!(
        "EXISTS (SELECT 1 FROM rules r JOIN supervisees s ON s.supervisee_id = r.supervisee_id \
         WHERE r.retired_at IS NULL AND (r.zone_id = z.zone_id OR r.list_ref = z.list_ref) \
           AND {})",
        who.scope_sql()
    )
}

/// Properties of a zone Feature.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ZoneProperties {
    /// Zone id.
    pub zone_id: i64,
    /// Stable reference.
    pub zone_ref: String,
    /// Name.
    pub name: String,
    /// Shared list it belongs to.
    pub list_ref: Option<String>,
    /// The version this geometry is.
    pub version: i32,
    /// The version in force now (differs when reading an old version).
    pub current_version: i32,
    /// When this version was created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
    /// When the zone was retired.
    pub retired_at: Option<DateTime<Utc>>,
    /// Circle radius, metres (Point zones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub radius_m: Option<f64>,
    /// Corridor full width, metres (LineString zones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width_m: Option<f64>,
}

/// One version of a zone as a GeoJSON Feature (ready for a map).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ZoneFeature {
    /// Always `Feature`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The zone id.
    pub id: i64,
    /// GeoJSON geometry, `[lon, lat]` positions.
    #[schema(value_type = Object)]
    pub geometry: Value,
    /// What the zone is.
    pub properties: ZoneProperties,
}

const FEATURE_SQL: &str = "SELECT z.zone_id, z.zone_ref, z.name, z.list_ref, z.current_version, \
     z.retired_at, v.version, v.geojson, v.created_at, v.created_by \
     FROM zones z JOIN zone_versions v ON v.zone_id = z.zone_id";

fn feature(r: &PgRow) -> ZoneFeature {
    let g: Value = r.get("geojson");
    let prop = |k: &str| {
        g.get("properties")
            .and_then(|p| p.get(k))
            .and_then(Value::as_f64)
    };
    let zone_id: i64 = r.get("zone_id");
    ZoneFeature {
        type_: "Feature".into(),
        id: zone_id,
        geometry: g.get("geometry").cloned().unwrap_or(Value::Null),
        properties: ZoneProperties {
            zone_id,
            zone_ref: r.get("zone_ref"),
            name: r.get("name"),
            list_ref: r.get("list_ref"),
            version: r.get("version"),
            current_version: r.get("current_version"),
            created_at: r.get("created_at"),
            created_by: r.get("created_by"),
            retired_at: r.get("retired_at"),
            radius_m: prop("radius_m"),
            width_m: prop("width_m"),
        },
    }
}

/// A version of a zone the caller may see (`None`: the current one).
async fn read_feature(
    conn: &mut PgConnection,
    who: &Principal,
    zone_id: i64,
    version: Option<i32>,
) -> Result<ZoneFeature, ApiError> {
    let sql = format!(
        "{FEATURE_SQL} WHERE z.zone_id = $2 AND v.version = COALESCE($3, z.current_version) \
           AND {}",
        zone_scope(who)
    );
    let r = sqlx::query(&sql)
        .bind(who.scope_param())
        .bind(zone_id)
        .bind(version)
        .fetch_optional(conn)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(feature(&r))
}

/// Filters of the zone list.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ZoneQuery {
    /// Only zones of this shared list.
    pub list_ref: Option<String>,
    /// Zone references starting with this text.
    pub q: Option<String>,
    /// Only retired (true) or live (false) zones.
    pub retired: Option<bool>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size 1..=500 (default 100).
    pub limit: Option<i64>,
}

/// Zones the caller may see (admins: all; caseworkers: those their
/// supervisees' rules refer to), without geometry.
#[utoipa::path(
    get,
    path = "/zones",
    tag = "zones",
    params(ZoneQuery),
    responses((status = 200, description = "A page of zones", body = Page<ZoneSummary>), StdErrors),
    security(("bearer" = []))
)]
pub async fn list_zones(
    State(st): State<ApiState>,
    who: Principal,
    ApiQuery(q): ApiQuery<ZoneQuery>,
) -> Result<Json<Page<ZoneSummary>>, ApiError> {
    who.require(READERS)?;
    let mut errs = Vec::new();
    let after = id_cursor(&q.cursor, 0, &mut errs);
    let limit = limit_of(q.limit, 100, 500, &mut errs);
    if q.q.as_ref().is_some_and(|p| p.chars().count() > 128) {
        errs.push(FieldError::new("q", "longer than 128 characters"));
    }
    done(errs)?;
    let sql = format!(
        "SELECT {ZONE_COLS} FROM zones z \
         JOIN zone_versions v ON v.zone_id = z.zone_id AND v.version = z.current_version \
         WHERE {} AND z.zone_id > $2 AND ($3::text IS NULL OR z.list_ref = $3) \
           AND ($4::text IS NULL OR starts_with(z.zone_ref, $4)) \
           AND ($5::boolean IS NULL OR (z.retired_at IS NOT NULL) = $5) \
         ORDER BY z.zone_id LIMIT $6",
        zone_scope(&who)
    );
    let mut items: Vec<ZoneSummary> = sqlx::query(&sql)
        .bind(who.scope_param())
        .bind(after)
        .bind(&q.list_ref)
        .bind(&q.q)
        .bind(q.retired)
        .bind(limit + 1)
        .fetch_all(&st.pool)
        .await?
        .iter()
        .map(zone_summary)
        .collect();
    let next_cursor = paginate(&mut items, limit, |z| z.zone_id);
    Ok(Json(Page { items, next_cursor }))
}

/// Reads a zone version and audits the read (exclusion zones can reveal
/// where a victim lives).
async fn audited_feature(
    st: &ApiState,
    who: &Principal,
    reason: &AuditReason,
    zone_id: i64,
    version: Option<i32>,
) -> Result<ZoneFeature, ApiError> {
    let mut tx = st.pool.begin().await?;
    let f = read_feature(&mut tx, who, zone_id, version).await?;
    audit::record_pg(
        &mut *tx,
        who,
        reason,
        st.clock.now(),
        Entry::new(
            "zone.read",
            None,
            json!({"zone_id": zone_id, "version": f.properties.version}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(f)
}

/// The zone's current geometry as a GeoJSON Feature. Audited (`zone.read`).
#[utoipa::path(
    get,
    path = "/zones/{zone_id}",
    tag = "zones",
    params(("zone_id" = i64, Path, description = "Zone id"), ("X-Audit-Reason" = Option<String>, Header, description = "Why you are looking (kept in the audit log)")),
    responses((status = 200, description = "The zone's current version", body = ZoneFeature), StdErrors),
    security(("bearer" = []))
)]
pub async fn get_zone(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(zone_id): ApiPath<i64>,
) -> Result<Json<ZoneFeature>, ApiError> {
    who.require(READERS)?;
    Ok(Json(
        audited_feature(&st, &who, &reason, zone_id, None).await?,
    ))
}

/// A version of a zone, without geometry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ZoneVersion {
    /// Version number (1 = first).
    pub version: i32,
    /// When created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
    /// Whether it is the version in force.
    pub current: bool,
    /// Polygon, MultiPolygon, Point or LineString.
    pub geometry_type: Option<String>,
}

/// Every version of a zone, oldest first.
#[utoipa::path(
    get,
    path = "/zones/{zone_id}/versions",
    tag = "zones",
    params(("zone_id" = i64, Path, description = "Zone id")),
    responses((status = 200, description = "The zone's versions", body = Vec<ZoneVersion>), StdErrors),
    security(("bearer" = []))
)]
pub async fn list_versions(
    State(st): State<ApiState>,
    who: Principal,
    ApiPath(zone_id): ApiPath<i64>,
) -> Result<Json<Vec<ZoneVersion>>, ApiError> {
    who.require(READERS)?;
    let mut conn = st.pool.acquire().await?;
    let visible: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM zones z WHERE z.zone_id = $2 AND {})",
        zone_scope(&who)
    ))
    .bind(who.scope_param())
    .bind(zone_id)
    .fetch_one(&mut *conn)
    .await?;
    if !visible {
        return Err(ApiError::NotFound);
    }
    let items = sqlx::query(
        "SELECT v.version, v.created_at, v.created_by, v.version = z.current_version AS current, \
           v.geojson->'geometry'->>'type' AS geometry_type \
         FROM zone_versions v JOIN zones z ON z.zone_id = v.zone_id \
         WHERE v.zone_id = $1 ORDER BY v.version LIMIT 10000",
    )
    .bind(zone_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| ZoneVersion {
        version: r.get("version"),
        created_at: r.get("created_at"),
        created_by: r.get("created_by"),
        current: r.get("current"),
        geometry_type: r.get("geometry_type"),
    })
    .collect();
    Ok(Json(items))
}

/// One version of a zone as a GeoJSON Feature (e.g. the outline in force
/// when an old alert was raised). Audited (`zone.read`).
#[utoipa::path(
    get,
    path = "/zones/{zone_id}/versions/{version}",
    tag = "zones",
    params(
        ("zone_id" = i64, Path, description = "Zone id"),
        ("version" = i32, Path, description = "Version number"),
        ("X-Audit-Reason" = Option<String>, Header, description = "Why you are looking (kept in the audit log)"),
    ),
    responses((status = 200, description = "That version", body = ZoneFeature), StdErrors),
    security(("bearer" = []))
)]
pub async fn get_version(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath((zone_id, version)): ApiPath<(i64, i32)>,
) -> Result<Json<ZoneFeature>, ApiError> {
    who.require(READERS)?;
    Ok(Json(
        audited_feature(&st, &who, &reason, zone_id, Some(version)).await?,
    ))
}

/// A new zone.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewZone {
    /// Stable reference (unique, 1..=128 characters).
    pub zone_ref: String,
    /// Name shown to officers (1..=200 characters).
    pub name: String,
    /// Shared list to put it in (also accepted as `list`).
    #[serde(alias = "list")]
    pub list_ref: Option<String>,
    /// A GeoJSON Feature or Geometry: Polygon or MultiPolygon (edges must
    /// not cross), Point with property `radius_m` (circle), or LineString
    /// with property `width_m` (corridor). Positions are `[lon, lat]`.
    #[schema(value_type = Object)]
    pub geojson: Value,
}

/// Creates a zone at version 1 (admins).
#[utoipa::path(
    post,
    path = "/zones",
    tag = "zones",
    request_body = NewZone,
    responses((status = 200, description = "The new zone", body = ZoneFeature), StdErrors),
    security(("bearer" = []))
)]
pub async fn create_zone(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiJson(b): ApiJson<NewZone>,
) -> Result<Json<ZoneFeature>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    check_text("zone_ref", &b.zone_ref, 128, &mut errs);
    check_text("name", &b.name, 200, &mut errs);
    if let Some(l) = &b.list_ref {
        check_text("list_ref", l, 128, &mut errs);
    }
    let geo = canonical_geometry(b.geojson, &mut errs).await?;
    done(errs)?;
    let Some((geojson, kind)) = geo else {
        return Err(ApiError::field("geojson", "invalid"));
    };
    let now = st.clock.now();
    let mut tx = st.pool.begin().await?;
    let zone_id: i64 = sqlx::query_scalar(
        "INSERT INTO zones (zone_ref, name, list_ref) VALUES ($1, $2, $3) RETURNING zone_id",
    )
    .bind(&b.zone_ref)
    .bind(&b.name)
    .bind(&b.list_ref)
    .fetch_one(&mut *tx)
    .await
    .map_err(unique_as("a zone with this zone_ref"))?;
    sqlx::query(
        "INSERT INTO zone_versions (zone_id, version, geojson, created_at, created_by) \
         VALUES ($1, 1, $2, $3, $4)",
    )
    .bind(zone_id)
    .bind(&geojson)
    .bind(now)
    .bind(who.actor())
    .execute(&mut *tx)
    .await?;
    audit::record_pg(
        &mut *tx,
        &who,
        &reason,
        now,
        Entry::new(
            "zone.create",
            None,
            json!({"zone_id": zone_id, "zone_ref": b.zone_ref, "list_ref": b.list_ref,
                   "kind": kind, "version": 1}),
        ),
    )
    .await?;
    let f = read_feature(&mut tx, &who, zone_id, None).await?;
    tx.commit().await?;
    Ok(Json(f))
}

/// A zone's new geometry.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGeometry {
    /// As for creating a zone.
    #[schema(value_type = Object)]
    pub geojson: Value,
}

/// Replaces a zone's geometry with a new version (admins); earlier
/// versions stay readable. An identical geometry creates no version.
#[utoipa::path(
    put,
    path = "/zones/{zone_id}/geometry",
    tag = "zones",
    params(("zone_id" = i64, Path, description = "Zone id")),
    request_body = NewGeometry,
    responses((status = 200, description = "The zone's (new) current version", body = ZoneFeature), StdErrors),
    security(("bearer" = []))
)]
pub async fn put_geometry(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(zone_id): ApiPath<i64>,
    ApiJson(b): ApiJson<NewGeometry>,
) -> Result<Json<ZoneFeature>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    let geo = canonical_geometry(b.geojson, &mut errs).await?;
    done(errs)?;
    let Some((geojson, kind)) = geo else {
        return Err(ApiError::field("geojson", "invalid"));
    };
    let now = st.clock.now();
    let mut tx = st.pool.begin().await?;
    let r = sqlx::query(
        "SELECT z.current_version, z.retired_at, v.geojson = $2 AS same FROM zones z \
         JOIN zone_versions v ON v.zone_id = z.zone_id AND v.version = z.current_version \
         WHERE z.zone_id = $1 FOR UPDATE OF z",
    )
    .bind(zone_id)
    .bind(&geojson)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    // Compared in the database (exact numerics): a round trip through f64
    // text parsing may move a coordinate by one ulp.
    let (current, retired, same): (i32, Option<DateTime<Utc>>, bool) =
        (r.get(0), r.get(1), r.get(2));
    if retired.is_some() {
        return Err(ApiError::Conflict(format!(
            "zone {zone_id} is retired; its geometry can no longer change"
        )));
    }
    if !same {
        let version = current + 1;
        sqlx::query(
            "INSERT INTO zone_versions (zone_id, version, geojson, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(zone_id)
        .bind(version)
        .bind(&geojson)
        .bind(now)
        .bind(who.actor())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE zones SET current_version = $2 WHERE zone_id = $1")
            .bind(zone_id)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        audit::record_pg(
            &mut *tx,
            &who,
            &reason,
            now,
            Entry::new(
                "zone.geometry",
                None,
                json!({"zone_id": zone_id, "version": version, "previous": current,
                       "kind": kind}),
            ),
        )
        .await?;
    }
    let f = read_feature(&mut tx, &who, zone_id, None).await?;
    tx.commit().await?;
    Ok(Json(f))
}

/// Retires a zone (admins): it is no longer evaluated. Refused (409) while
/// live rules refer to it: retire those first, so no rule stops silently.
#[utoipa::path(
    post,
    path = "/zones/{zone_id}/retire",
    tag = "zones",
    params(("zone_id" = i64, Path, description = "Zone id")),
    responses((status = 200, description = "The retired zone", body = ZoneFeature), StdErrors),
    security(("bearer" = []))
)]
pub async fn retire_zone(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(zone_id): ApiPath<i64>,
) -> Result<Json<ZoneFeature>, ApiError> {
    who.require(ADMIN)?;
    let now = st.clock.now();
    let mut tx = st.pool.begin().await?;
    let retired: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT retired_at FROM zones WHERE zone_id = $1 FOR UPDATE")
            .bind(zone_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(ApiError::NotFound)?;
    if let Some(at) = retired {
        return Err(ApiError::Conflict(format!(
            "zone {zone_id} was already retired at {}",
            at.to_rfc3339()
        )));
    }
    let users: Vec<i64> = sqlx::query_scalar(
        "SELECT rule_id FROM rules WHERE zone_id = $1 AND retired_at IS NULL ORDER BY rule_id \
         LIMIT 20",
    )
    .bind(zone_id)
    .fetch_all(&mut *tx)
    .await?;
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "zone {zone_id} is used by live rules {users:?}; retire them first"
        )));
    }
    sqlx::query("UPDATE zones SET retired_at = $2 WHERE zone_id = $1")
        .bind(zone_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    audit::record_pg(
        &mut *tx,
        &who,
        &reason,
        now,
        Entry::new("zone.retire", None, json!({"zone_id": zone_id})),
    )
    .await?;
    let f = read_feature(&mut tx, &who, zone_id, None).await?;
    tx.commit().await?;
    Ok(Json(f))
}

// ---------------------------------------------------------------------------
// Rules.

/// The zone a rule applies.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleZone {
    /// Zone id.
    pub zone_id: i64,
    /// Its reference.
    pub zone_ref: String,
    /// Its name.
    pub name: String,
    /// Version in force.
    pub current_version: i32,
    /// Whether the zone is retired (the rule then cannot be evaluated).
    pub retired: bool,
}

/// A rule of a supervisee.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleOut {
    /// Id (exceptions may name it).
    pub rule_id: i64,
    /// Whose rule.
    pub supervisee_id: i64,
    /// inclusion (must stay inside), exclusion (must stay out) or home
    /// (must be inside during the schedule: curfew).
    pub role: String,
    /// The zone, for single-zone rules.
    pub zone: Option<RuleZone>,
    /// The shared list, for list rules (exclusion only).
    pub list_ref: Option<String>,
    /// `{"windows": [{"days": [...], "start": "HH:MM", "end": "HH:MM"}]}` in
    /// the supervisee's time zone; absent: always.
    #[schema(value_type = Option<Object>)]
    pub schedule: Option<Value>,
    /// Consecutive fixes needed to confirm a violation.
    pub confirm_fixes: i32,
    /// Seconds a violation must persist before an alert.
    pub grace_s: i32,
    /// Whether retired.
    pub retired: bool,
    /// When retired.
    pub retired_at: Option<DateTime<Utc>>,
}

const RULE_SQL: &str = "SELECT r.rule_id, r.supervisee_id, r.role, r.list_ref, r.schedule, \
     r.confirm_fixes, r.grace_s, r.retired_at, z.zone_id, z.zone_ref, z.name, \
     z.current_version, z.retired_at AS zone_retired_at \
     FROM rules r LEFT JOIN zones z ON z.zone_id = r.zone_id";

fn rule_row(r: &PgRow) -> RuleOut {
    let retired_at: Option<DateTime<Utc>> = r.get("retired_at");
    let zone = r.get::<Option<i64>, _>("zone_id").map(|zone_id| RuleZone {
        zone_id,
        zone_ref: r.get("zone_ref"),
        name: r.get("name"),
        current_version: r.get("current_version"),
        retired: r
            .get::<Option<DateTime<Utc>>, _>("zone_retired_at")
            .is_some(),
    });
    RuleOut {
        rule_id: r.get("rule_id"),
        supervisee_id: r.get("supervisee_id"),
        role: r.get("role"),
        zone,
        list_ref: r.get("list_ref"),
        schedule: r.get("schedule"),
        confirm_fixes: r.get("confirm_fixes"),
        grace_s: r.get("grace_s"),
        retired: retired_at.is_some(),
        retired_at,
    }
}

async fn read_rule(conn: &mut PgConnection, rule_id: i64) -> Result<RuleOut, ApiError> {
    let r = sqlx::query(&format!("{RULE_SQL} WHERE r.rule_id = $1"))
        .bind(rule_id)
        .fetch_optional(conn)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(rule_row(&r))
}

/// A supervisee's rules, live ones first.
#[utoipa::path(
    get,
    path = "/supervisees/{id}/rules",
    tag = "rules",
    params(("id" = i64, Path, description = "Supervisee id")),
    responses((status = 200, description = "The rules", body = Vec<RuleOut>), StdErrors),
    security(("bearer" = []))
)]
pub async fn list_rules(
    State(st): State<ApiState>,
    who: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Vec<RuleOut>>, ApiError> {
    who.require(READERS)?;
    who.must_see(&st.db, id).await?;
    let items = sqlx::query(&format!(
        "{RULE_SQL} WHERE r.supervisee_id = $1 \
         ORDER BY r.retired_at IS NOT NULL, r.rule_id LIMIT 1000"
    ))
    .bind(id)
    .fetch_all(&st.pool)
    .await?
    .iter()
    .map(rule_row)
    .collect();
    Ok(Json(items))
}

/// A new rule.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    /// inclusion, exclusion or home.
    pub role: String,
    /// The zone (give this or `list_ref`).
    pub zone_id: Option<i64>,
    /// A shared list of zones (exclusion rules only).
    pub list_ref: Option<String>,
    /// `{"windows": [{"days": ["mon", ...], "start": "HH:MM", "end": "HH:MM"}]}`
    /// in the supervisee's time zone; absent: always. Required for home.
    #[schema(value_type = Option<Object>)]
    pub schedule: Option<Value>,
    /// Consecutive fixes to confirm a violation, 1..=100 (default 2).
    pub confirm_fixes: Option<i32>,
    /// Seconds a violation must last before an alert, 0..=86400 (default 60).
    pub grace_s: Option<i32>,
}

/// Creates a rule for a supervisee (admins). A retired rule with the same
/// role and target is brought back with the new settings (same id).
#[utoipa::path(
    post,
    path = "/supervisees/{id}/rules",
    tag = "rules",
    params(("id" = i64, Path, description = "Supervisee id")),
    request_body = NewRule,
    responses((status = 200, description = "The rule", body = RuleOut), StdErrors),
    security(("bearer" = []))
)]
pub async fn create_rule(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(id): ApiPath<i64>,
    ApiJson(b): ApiJson<NewRule>,
) -> Result<Json<RuleOut>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    if !ROLES.contains(&b.role.as_str()) {
        errs.push(FieldError::new(
            "role",
            "must be one of inclusion, exclusion, home",
        ));
    }
    match (&b.zone_id, &b.list_ref) {
        (Some(_), None) => {}
        (None, Some(l)) => {
            check_text("list_ref", l, 128, &mut errs);
            if b.role != "exclusion" {
                errs.push(FieldError::new(
                    "list_ref",
                    "only exclusion rules may target a list",
                ));
            }
        }
        _ => errs.push(FieldError::new(
            "zone_id",
            "give exactly one of zone_id or list_ref",
        )),
    }
    let schedule = match &b.schedule {
        Some(v) => match Schedule::from_json(v) {
            Ok(s) => Some(s.to_json()),
            Err(e) => {
                errs.push(FieldError::new("schedule", e.to_string()));
                None
            }
        },
        None => {
            if b.role == "home" {
                errs.push(FieldError::new(
                    "schedule",
                    "a home (curfew) rule needs a schedule",
                ));
            }
            None
        }
    };
    if b.confirm_fixes.is_some_and(|n| !(1..=100).contains(&n)) {
        errs.push(FieldError::new("confirm_fixes", "must be 1..=100"));
    }
    if b.grace_s.is_some_and(|n| !(0..=86_400).contains(&n)) {
        errs.push(FieldError::new("grace_s", "must be 0..=86400"));
    }
    let now = st.clock.now();
    let mut tx = st.pool.begin().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM supervisees WHERE supervisee_id = $1)")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if !exists {
        return Err(ApiError::NotFound);
    }
    if let Some(z) = b.zone_id {
        let retired: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT retired_at FROM zones WHERE zone_id = $1")
                .bind(z)
                .fetch_optional(&mut *tx)
                .await?;
        match retired {
            None => errs.push(FieldError::new("zone_id", "no zone has this id")),
            Some(Some(_)) => errs.push(FieldError::new("zone_id", "this zone is retired")),
            Some(None) => {}
        }
    }
    if let (None, Some(l)) = (b.zone_id, &b.list_ref) {
        let any: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM zones WHERE list_ref = $1 AND retired_at IS NULL)",
        )
        .bind(l)
        .fetch_one(&mut *tx)
        .await?;
        if !any {
            errs.push(FieldError::new(
                "list_ref",
                "no live zone belongs to this list",
            ));
        }
    }
    done(errs)?;
    // One rule per (supervisee, role, target) by schema: reuse a retired one.
    let existing = sqlx::query(
        "SELECT rule_id, retired_at FROM rules WHERE supervisee_id = $1 AND role = $2 \
         AND zone_id IS NOT DISTINCT FROM $3 AND list_ref IS NOT DISTINCT FROM $4 FOR UPDATE",
    )
    .bind(id)
    .bind(&b.role)
    .bind(b.zone_id)
    .bind(&b.list_ref)
    .fetch_optional(&mut *tx)
    .await?;
    let (rule_id, revived) = match existing {
        Some(r) if r.get::<Option<DateTime<Utc>>, _>("retired_at").is_none() => {
            return Err(ApiError::Conflict(format!(
                "rule {} already applies this role and target to the supervisee; \
                 retire it first to replace it",
                r.get::<i64, _>("rule_id")
            )));
        }
        Some(r) => {
            let rid: i64 = r.get("rule_id");
            sqlx::query(
                "UPDATE rules SET schedule = $2, confirm_fixes = COALESCE($3, 2), \
                   grace_s = COALESCE($4, 60), retired_at = NULL, created_at = now() \
                 WHERE rule_id = $1",
            )
            .bind(rid)
            .bind(&schedule)
            .bind(b.confirm_fixes)
            .bind(b.grace_s)
            .execute(&mut *tx)
            .await?;
            (rid, true)
        }
        None => {
            let rid: i64 = sqlx::query_scalar(
                "INSERT INTO rules (supervisee_id, role, zone_id, list_ref, schedule, \
                   confirm_fixes, grace_s) \
                 VALUES ($1, $2, $3, $4, $5, COALESCE($6, 2), COALESCE($7, 60)) RETURNING rule_id",
            )
            .bind(id)
            .bind(&b.role)
            .bind(b.zone_id)
            .bind(&b.list_ref)
            .bind(&schedule)
            .bind(b.confirm_fixes)
            .bind(b.grace_s)
            .fetch_one(&mut *tx)
            .await
            .map_err(unique_as("a rule with this role and target"))?;
            (rid, false)
        }
    };
    audit::record_pg(
        &mut *tx,
        &who,
        &reason,
        now,
        Entry::supervisee("rule.create", id).with(json!({
            "rule_id": rule_id, "role": b.role, "zone_id": b.zone_id, "list_ref": b.list_ref,
            "schedule": schedule, "confirm_fixes": b.confirm_fixes, "grace_s": b.grace_s,
            "revived": revived,
        })),
    )
    .await?;
    let r = read_rule(&mut tx, rule_id).await?;
    tx.commit().await?;
    Ok(Json(r))
}

/// Retires a rule (admins): it stops being evaluated; it stays on record.
#[utoipa::path(
    post,
    path = "/supervisees/{id}/rules/{rule_id}/retire",
    tag = "rules",
    params(
        ("id" = i64, Path, description = "Supervisee id"),
        ("rule_id" = i64, Path, description = "Rule id"),
    ),
    responses((status = 200, description = "The retired rule", body = RuleOut), StdErrors),
    security(("bearer" = []))
)]
pub async fn retire_rule(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath((id, rule_id)): ApiPath<(i64, i64)>,
) -> Result<Json<RuleOut>, ApiError> {
    who.require(ADMIN)?;
    let now = st.clock.now();
    let mut tx = st.pool.begin().await?;
    let retired: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT retired_at FROM rules WHERE rule_id = $1 AND supervisee_id = $2 FOR UPDATE",
    )
    .bind(rule_id)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    if let Some(at) = retired {
        return Err(ApiError::Conflict(format!(
            "rule {rule_id} was already retired at {}",
            at.to_rfc3339()
        )));
    }
    sqlx::query("UPDATE rules SET retired_at = $2 WHERE rule_id = $1")
        .bind(rule_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    audit::record_pg(
        &mut *tx,
        &who,
        &reason,
        now,
        Entry::supervisee("rule.retire", id).with(json!({"rule_id": rule_id})),
    )
    .await?;
    let r = read_rule(&mut tx, rule_id).await?;
    tx.commit().await?;
    Ok(Json(r))
}

// ---------------------------------------------------------------------------
// Exceptions (approved absences).

/// An approved absence: suspends one rule, or all of the supervisee's rules,
/// for a period.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExceptionOut {
    /// Id (to cancel it).
    pub exception_id: i64,
    /// Whose.
    pub supervisee_id: i64,
    /// The rule suspended; absent: all of the supervisee's rules.
    pub rule_id: Option<i64>,
    /// From (inclusive).
    pub starts_at: DateTime<Utc>,
    /// Until (exclusive); moved forward when cancelled.
    pub ends_at: DateTime<Utc>,
    /// Why it was approved.
    pub reason: String,
    /// Who approved it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it was cancelled through the API.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Who cancelled it.
    pub cancelled_by: Option<String>,
    /// scheduled, active, over or cancelled (at the time of the request).
    pub status: String,
}

const EXCEPTION_SQL: &str = "SELECT e.exception_id, e.supervisee_id, e.rule_id, e.starts_at, \
     e.ends_at, e.reason, e.created_by, e.created_at, e.cancelled_at, e.cancelled_by \
     FROM rule_exceptions e";

fn exception_row(r: &PgRow, now: DateTime<Utc>) -> ExceptionOut {
    let starts_at: DateTime<Utc> = r.get("starts_at");
    let ends_at: DateTime<Utc> = r.get("ends_at");
    let cancelled_at: Option<DateTime<Utc>> = r.get("cancelled_at");
    let status = if cancelled_at.is_some() {
        "cancelled"
    } else if now < starts_at {
        "scheduled"
    } else if now < ends_at {
        "active"
    } else {
        "over"
    };
    ExceptionOut {
        exception_id: r.get("exception_id"),
        supervisee_id: r.get("supervisee_id"),
        rule_id: r.get("rule_id"),
        starts_at,
        ends_at,
        reason: r.get("reason"),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
        cancelled_at,
        cancelled_by: r.get("cancelled_by"),
        status: status.into(),
    }
}

async fn read_exception(
    conn: &mut PgConnection,
    exception_id: i64,
    now: DateTime<Utc>,
) -> Result<ExceptionOut, ApiError> {
    let r = sqlx::query(&format!("{EXCEPTION_SQL} WHERE e.exception_id = $1"))
        .bind(exception_id)
        .fetch_optional(conn)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(exception_row(&r, now))
}

/// Page parameters of the exception list.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExceptionQuery {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size 1..=500 (default 100).
    pub limit: Option<i64>,
}

/// A supervisee's approved absences, newest first.
#[utoipa::path(
    get,
    path = "/supervisees/{id}/exceptions",
    tag = "exceptions",
    params(("id" = i64, Path, description = "Supervisee id"), ExceptionQuery),
    responses((status = 200, description = "A page of exceptions", body = Page<ExceptionOut>), StdErrors),
    security(("bearer" = []))
)]
pub async fn list_exceptions(
    State(st): State<ApiState>,
    who: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<ExceptionQuery>,
) -> Result<Json<Page<ExceptionOut>>, ApiError> {
    who.require(READERS)?;
    let mut errs = Vec::new();
    let before = id_cursor(&q.cursor, i64::MAX, &mut errs);
    let limit = limit_of(q.limit, 100, 500, &mut errs);
    done(errs)?;
    who.must_see(&st.db, id).await?;
    let now = st.clock.now();
    let mut items: Vec<ExceptionOut> = sqlx::query(&format!(
        "{EXCEPTION_SQL} WHERE e.supervisee_id = $1 AND e.exception_id < $2 \
         ORDER BY e.exception_id DESC LIMIT $3"
    ))
    .bind(id)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&st.pool)
    .await?
    .iter()
    .map(|r| exception_row(r, now))
    .collect();
    let next_cursor = paginate(&mut items, limit, |e| e.exception_id);
    Ok(Json(Page { items, next_cursor }))
}

/// An absence to approve.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewException {
    /// The rule to suspend; absent: all of the supervisee's rules.
    pub rule_id: Option<i64>,
    /// From (inclusive).
    pub starts_at: DateTime<Utc>,
    /// Until (exclusive); after `starts_at`.
    pub ends_at: DateTime<Utc>,
    /// Why (1..=500 characters), e.g. the appointment it covers.
    pub reason: String,
}

/// Approves an absence (admins, or the supervisee's officer or their
/// supervisor): the rule(s) raise no alerts during the period.
#[utoipa::path(
    post,
    path = "/supervisees/{id}/exceptions",
    tag = "exceptions",
    params(("id" = i64, Path, description = "Supervisee id")),
    request_body = NewException,
    responses((status = 200, description = "The exception", body = ExceptionOut), StdErrors),
    security(("bearer" = []))
)]
pub async fn create_exception(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(id): ApiPath<i64>,
    ApiJson(b): ApiJson<NewException>,
) -> Result<Json<ExceptionOut>, ApiError> {
    who.require(READERS)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    let now = st.clock.now();
    if b.ends_at <= b.starts_at {
        errs.push(FieldError::new("ends_at", "must be after starts_at"));
    }
    // An officer approves a bounded absence for their own supervisee;
    // longer suspensions are an administrator's (and so a second person's)
    // decision. Nobody approves retroactively beyond a day.
    let max_days = if who.role == Role::Admin { 366 } else { 14 };
    if b.ends_at - b.starts_at > TimeDelta::days(max_days) {
        errs.push(FieldError::new(
            "ends_at",
            format!("an absence approved by this role lasts at most {max_days} days"),
        ));
    }
    if b.starts_at < now - TimeDelta::hours(24) {
        errs.push(FieldError::new(
            "starts_at",
            "may not start more than 24 hours before now",
        ));
    }
    check_text("reason", &b.reason, 500, &mut errs);
    // Out of scope answers 404 before anything about the person's rules.
    who.must_see(&st.db, id).await?;
    let mut tx = st.pool.begin().await?;
    if let Some(rid) = b.rule_id {
        let retired: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
            "SELECT retired_at FROM rules WHERE rule_id = $1 AND supervisee_id = $2",
        )
        .bind(rid)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        match retired {
            None => errs.push(FieldError::new(
                "rule_id",
                "no such rule for this supervisee",
            )),
            Some(Some(_)) => errs.push(FieldError::new("rule_id", "this rule is retired")),
            Some(None) => {}
        }
    }
    done(errs)?;
    let eid: i64 = sqlx::query_scalar(
        "INSERT INTO rule_exceptions (supervisee_id, rule_id, starts_at, ends_at, reason, \
           created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING exception_id",
    )
    .bind(id)
    .bind(b.rule_id)
    .bind(b.starts_at)
    .bind(b.ends_at)
    .bind(&b.reason)
    .bind(who.actor())
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(unique_as("an identical exception"))?;
    audit::record_pg(
        &mut *tx,
        &who,
        &reason,
        now,
        Entry::supervisee("exception.create", id).with(json!({
            "exception_id": eid, "rule_id": b.rule_id,
            "starts_at": b.starts_at, "ends_at": b.ends_at,
        })),
    )
    .await?;
    let e = read_exception(&mut tx, eid, now).await?;
    tx.commit().await?;
    Ok(Json(e))
}

/// Cancels an approved absence (same callers as approving it): it ends now,
/// or, if it has not started, is cut to nothing (one microsecond, which the
/// schema's `ends_at > starts_at` requires). The record stays.
#[utoipa::path(
    post,
    path = "/supervisees/{id}/exceptions/{exception_id}/cancel",
    tag = "exceptions",
    params(
        ("id" = i64, Path, description = "Supervisee id"),
        ("exception_id" = i64, Path, description = "Exception id"),
    ),
    responses((status = 200, description = "The exception after cancelling", body = ExceptionOut), StdErrors),
    security(("bearer" = []))
)]
pub async fn cancel_exception(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath((id, exception_id)): ApiPath<(i64, i64)>,
) -> Result<Json<ExceptionOut>, ApiError> {
    who.require(READERS)?;
    who.must_see(&st.db, id).await?;
    let now = st.clock.now();
    let mut tx = st.pool.begin().await?;
    let r = sqlx::query(
        "SELECT starts_at, ends_at FROM rule_exceptions \
         WHERE exception_id = $1 AND supervisee_id = $2 FOR UPDATE",
    )
    .bind(exception_id)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    let (starts_at, ends_at): (DateTime<Utc>, DateTime<Utc>) = (r.get(0), r.get(1));
    let new_end = now.max(starts_at + TimeDelta::microseconds(1));
    if ends_at <= new_end {
        return Err(ApiError::Conflict(format!(
            "exception {exception_id} is already over or cancelled (ends {})",
            ends_at.to_rfc3339()
        )));
    }
    sqlx::query(
        "UPDATE rule_exceptions SET ends_at = $2, cancelled_at = $3, cancelled_by = $4 \
         WHERE exception_id = $1",
    )
    .bind(exception_id)
    .bind(new_end)
    .bind(now)
    .bind(who.actor())
    .execute(&mut *tx)
    .await
    .map_err(unique_as("an identical exception"))?;
    audit::record_pg(
        &mut *tx,
        &who,
        &reason,
        now,
        Entry::supervisee("exception.cancel", id).with(json!({
            "exception_id": exception_id, "previous_ends_at": ends_at, "ends_at": new_end,
        })),
    )
    .await?;
    let e = read_exception(&mut tx, exception_id, now).await?;
    tx.commit().await?;
    Ok(Json(e))
}

/// Routes of this module.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_zones, create_zone))
        .routes(routes!(get_zone))
        .routes(routes!(list_versions))
        .routes(routes!(get_version))
        .routes(routes!(put_geometry))
        .routes(routes!(retire_zone))
        .routes(routes!(list_rules, create_rule))
        .routes(routes!(retire_rule))
        .routes(routes!(list_exceptions, create_exception))
        .routes(routes!(cancel_exception))
}
