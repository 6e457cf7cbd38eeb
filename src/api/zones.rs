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
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{self, AuditReason, Entry};
use super::auth::{Principal, Role, ADMIN};
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, FieldError, StdErrors};
use super::people::{check_text, READERS};
use super::{done, id_cursor, limit_of, paginate, ApiState, Page};
use crate::geofence::Shape;
use crate::rules::schedule::Schedule;
use crate::scenario::ROLES;
use crate::store::sql::{self, Db, DbRow, On, Tx, Violation, Q};

/// A unique-key refusal as a 409 naming `what`, on either backend (the
/// other refusals keep [`ApiError`]'s generic mapping).
fn unique_as(what: &str) -> impl FnOnce(sqlx::Error) -> ApiError + '_ {
    move |e| match sql::violation(&e) {
        Some(Violation::Unique) => ApiError::Conflict(format!("{what} already exists")),
        _ => e.into(),
    }
}

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

fn zone_summary(r: &DbRow) -> ZoneSummary {
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

fn feature(r: &DbRow) -> ZoneFeature {
    let g = r.json("geojson");
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
async fn read_feature<'e>(
    on: impl Into<On<'e>>,
    who: &Principal,
    zone_id: i64,
    version: Option<i32>,
) -> Result<ZoneFeature, ApiError> {
    let sql = format!(
        "{FEATURE_SQL} WHERE z.zone_id = $2 AND v.version = COALESCE($3, z.current_version) \
           AND {}",
        zone_scope(who)
    );
    let r = Q::new(sql)
        .bind(who.scope_param())
        .bind(zone_id)
        .bind(version)
        .fetch_optional(on)
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
    let mut items = zone_page(&st.db, &who, after, &q, limit + 1).await?;
    let next_cursor = paginate(&mut items, limit, |z| z.zone_id);
    Ok(Json(Page { items, next_cursor }))
}

/// Up to `limit` zones after id `after` that `who` may see, filtered by `q`.
async fn zone_page(
    db: &Db,
    who: &Principal,
    after: i64,
    q: &ZoneQuery,
    limit: i64,
) -> Result<Vec<ZoneSummary>, ApiError> {
    let text = |prefix_match: &str| {
        format!(
            "SELECT {ZONE_COLS} FROM zones z \
             JOIN zone_versions v ON v.zone_id = z.zone_id AND v.version = z.current_version \
             WHERE {} AND z.zone_id > $2 AND ($3::text IS NULL OR z.list_ref = $3) \
               AND ($4::text IS NULL OR {prefix_match}) \
               AND ($5::boolean IS NULL OR (z.retired_at IS NOT NULL) = $5) \
             ORDER BY z.zone_id LIMIT $6",
            zone_scope(who)
        )
    };
    // SQLite has no starts_with; comparing the leading characters keeps it
    // case-sensitive and free of LIKE/GLOB wildcards in the prefix.
    let lite = sql::to_sqlite(&text("substr(z.zone_ref, 1, length($4)) = $4")).into_owned();
    Ok(Q::split(text("starts_with(z.zone_ref, $4)"), lite)
        .bind(who.scope_param())
        .bind(after)
        .bind(&q.list_ref)
        .bind(&q.q)
        .bind(q.retired)
        .bind(limit)
        .fetch_all(db)
        .await?
        .iter()
        .map(zone_summary)
        .collect())
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
    let mut tx = st.db.begin_read().await?;
    let f = read_feature(&mut tx, who, zone_id, version).await?;
    tx.commit().await?;
    audit::record_read(
        &st.db,
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
    Ok(Json(zone_versions(&st.db, &who, zone_id).await?))
}

/// The versions of a zone `who` may see (404 otherwise).
async fn zone_versions(
    db: &Db,
    who: &Principal,
    zone_id: i64,
) -> Result<Vec<ZoneVersion>, ApiError> {
    let visible: bool = Q::new(format!(
        "SELECT EXISTS (SELECT 1 FROM zones z WHERE z.zone_id = $2 AND {})",
        zone_scope(who)
    ))
    .bind(who.scope_param())
    .bind(zone_id)
    .scalar(db)
    .await?;
    if !visible {
        return Err(ApiError::NotFound);
    }
    Ok(Q::new(
        "SELECT v.version, v.created_at, v.created_by, v.version = z.current_version AS current, \
           v.geojson->'geometry'->>'type' AS geometry_type \
         FROM zone_versions v JOIN zones z ON z.zone_id = v.zone_id \
         WHERE v.zone_id = $1 ORDER BY v.version LIMIT 10000",
    )
    .bind(zone_id)
    .fetch_all(db)
    .await?
    .iter()
    .map(|r| ZoneVersion {
        version: r.get("version"),
        created_at: r.get("created_at"),
        created_by: r.get("created_by"),
        current: r.get("current"),
        geometry_type: r.get("geometry_type"),
    })
    .collect())
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
    let mut tx = st.db.begin().await?;
    let zone_id = insert_zone(
        &mut tx,
        &b.zone_ref,
        &b.name,
        b.list_ref.as_deref(),
        geojson,
        now,
        &who.actor(),
    )
    .await?;
    audit::record(
        &mut tx,
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

/// Writes a new zone and its version 1.
async fn insert_zone(
    tx: &mut Tx,
    zone_ref: &str,
    name: &str,
    list_ref: Option<&str>,
    geojson: Value,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<i64, ApiError> {
    let zone_id: i64 = Q::new(
        "INSERT INTO zones (zone_ref, name, list_ref) VALUES ($1, $2, $3) RETURNING zone_id",
    )
    .bind(zone_ref)
    .bind(name)
    .bind(list_ref)
    .scalar(&mut *tx)
    .await
    .map_err(unique_as("a zone with this zone_ref"))?;
    Q::new(
        "INSERT INTO zone_versions (zone_id, version, geojson, created_at, created_by) \
         VALUES ($1, 1, $2, $3, $4)",
    )
    .bind(zone_id)
    .bind(geojson)
    .bind(now)
    .bind(actor)
    .execute(tx)
    .await?;
    Ok(zone_id)
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
    let mut tx = st.db.begin().await?;
    let (current, retired, same) = current_geometry(&mut tx, zone_id, &geojson)
        .await?
        .ok_or(ApiError::NotFound)?;
    if retired.is_some() {
        return Err(ApiError::Conflict(format!(
            "zone {zone_id} is retired; its geometry can no longer change"
        )));
    }
    if !same {
        let version = current + 1;
        Q::new(
            "INSERT INTO zone_versions (zone_id, version, geojson, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(zone_id)
        .bind(version)
        .bind(geojson)
        .bind(now)
        .bind(who.actor())
        .execute(&mut tx)
        .await?;
        Q::new("UPDATE zones SET current_version = $2 WHERE zone_id = $1")
            .bind(zone_id)
            .bind(version)
            .execute(&mut tx)
            .await?;
        audit::record(
            &mut tx,
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

/// A zone's current version, retirement, and whether `geojson` equals the
/// current geometry; the zone row is locked for the new version (SQLite's
/// single writer serialises the transaction already).
async fn current_geometry(
    tx: &mut Tx,
    zone_id: i64,
    geojson: &Value,
) -> Result<Option<(i32, Option<DateTime<Utc>>, bool)>, ApiError> {
    // Compared in the database (exact numerics): a round trip through f64
    // text parsing may move a coordinate by one ulp. SQLite keeps JSON as
    // text; json() on both sides makes the comparison independent of the
    // whitespace the row was written with (serde_json sorts keys, so equal
    // canonical geometries have equal text).
    let r = Q::split(
        "SELECT z.current_version, z.retired_at, v.geojson = $2 AS same FROM zones z \
         JOIN zone_versions v ON v.zone_id = z.zone_id AND v.version = z.current_version \
         WHERE z.zone_id = $1 FOR UPDATE OF z",
        "SELECT z.current_version, z.retired_at, json(v.geojson) = json($2) AS same FROM zones z \
         JOIN zone_versions v ON v.zone_id = z.zone_id AND v.version = z.current_version \
         WHERE z.zone_id = $1",
    )
    .bind(zone_id)
    .bind(geojson.clone())
    .fetch_optional(tx)
    .await?;
    Ok(r.map(|r| (r.get("current_version"), r.get("retired_at"), r.get("same"))))
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
    let mut tx = st.db.begin().await?;
    let retired: Option<DateTime<Utc>> =
        Q::new("SELECT retired_at FROM zones WHERE zone_id = $1 FOR UPDATE")
            .bind(zone_id)
            .scalar_opt(&mut tx)
            .await?
            .ok_or(ApiError::NotFound)?;
    if let Some(at) = retired {
        return Err(ApiError::Conflict(format!(
            "zone {zone_id} was already retired at {}",
            at.to_rfc3339()
        )));
    }
    let users: Vec<i64> = Q::new(
        "SELECT rule_id FROM rules WHERE zone_id = $1 AND retired_at IS NULL ORDER BY rule_id \
         LIMIT 20",
    )
    .bind(zone_id)
    .fetch_all(&mut tx)
    .await?
    .iter()
    .map(|r| r.get("rule_id"))
    .collect();
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "zone {zone_id} is used by live rules {users:?}; retire them first"
        )));
    }
    Q::new("UPDATE zones SET retired_at = $2 WHERE zone_id = $1")
        .bind(zone_id)
        .bind(now)
        .execute(&mut tx)
        .await?;
    audit::record(
        &mut tx,
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

fn rule_row(r: &DbRow) -> RuleOut {
    let retired_at: Option<DateTime<Utc>> = r.get("retired_at");
    let zone = r.get::<Option<i64>>("zone_id").map(|zone_id| RuleZone {
        zone_id,
        zone_ref: r.get("zone_ref"),
        name: r.get("name"),
        current_version: r.get("current_version"),
        retired: r.get::<Option<DateTime<Utc>>>("zone_retired_at").is_some(),
    });
    RuleOut {
        rule_id: r.get("rule_id"),
        supervisee_id: r.get("supervisee_id"),
        role: r.get("role"),
        zone,
        list_ref: r.get("list_ref"),
        schedule: r.json_opt("schedule"),
        confirm_fixes: r.get("confirm_fixes"),
        grace_s: r.get("grace_s"),
        retired: retired_at.is_some(),
        retired_at,
    }
}

async fn read_rule<'e>(on: impl Into<On<'e>>, rule_id: i64) -> Result<RuleOut, ApiError> {
    let r = Q::new(format!("{RULE_SQL} WHERE r.rule_id = $1"))
        .bind(rule_id)
        .fetch_optional(on)
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
    Ok(Json(rules_of(&st.db, id).await?))
}

/// A supervisee's rules, live ones first.
async fn rules_of(db: &Db, supervisee_id: i64) -> Result<Vec<RuleOut>, ApiError> {
    Ok(Q::new(format!(
        "{RULE_SQL} WHERE r.supervisee_id = $1 \
         ORDER BY r.retired_at IS NOT NULL, r.rule_id LIMIT 1000"
    ))
    .bind(supervisee_id)
    .fetch_all(db)
    .await?
    .iter()
    .map(rule_row)
    .collect())
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
    let mut tx = st.db.begin().await?;
    let exists: bool = Q::new("SELECT EXISTS (SELECT 1 FROM supervisees WHERE supervisee_id = $1)")
        .bind(id)
        .scalar(&mut tx)
        .await?;
    if !exists {
        return Err(ApiError::NotFound);
    }
    if let Some(z) = b.zone_id {
        let retired: Option<Option<DateTime<Utc>>> =
            Q::new("SELECT retired_at FROM zones WHERE zone_id = $1")
                .bind(z)
                .scalar_opt(&mut tx)
                .await?;
        match retired {
            None => errs.push(FieldError::new("zone_id", "no zone has this id")),
            Some(Some(_)) => errs.push(FieldError::new("zone_id", "this zone is retired")),
            Some(None) => {}
        }
    }
    if let (None, Some(l)) = (b.zone_id, &b.list_ref) {
        let any: bool = Q::new(
            "SELECT EXISTS (SELECT 1 FROM zones WHERE list_ref = $1 AND retired_at IS NULL)",
        )
        .bind(l)
        .scalar(&mut tx)
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
    // IS NOT DISTINCT FROM: SQLite has it since 3.39 (the bundled one is 3.46).
    let existing = Q::new(
        "SELECT rule_id, retired_at FROM rules WHERE supervisee_id = $1 AND role = $2 \
         AND zone_id IS NOT DISTINCT FROM $3 AND list_ref IS NOT DISTINCT FROM $4 FOR UPDATE",
    )
    .bind(id)
    .bind(&b.role)
    .bind(b.zone_id)
    .bind(&b.list_ref)
    .fetch_optional(&mut tx)
    .await?;
    let (rule_id, revived) = match existing {
        Some(r) if r.get::<Option<DateTime<Utc>>>("retired_at").is_none() => {
            return Err(ApiError::Conflict(format!(
                "rule {} already applies this role and target to the supervisee; \
                 retire it first to replace it",
                r.get::<i64>("rule_id")
            )));
        }
        Some(r) => {
            let rid: i64 = r.get("rule_id");
            // now(): the same clock as the column's default on insert.
            Q::new(
                "UPDATE rules SET schedule = $2, confirm_fixes = COALESCE($3, 2), \
                   grace_s = COALESCE($4, 60), retired_at = NULL, created_at = now() \
                 WHERE rule_id = $1",
            )
            .bind(rid)
            .bind(schedule.clone())
            .bind(b.confirm_fixes)
            .bind(b.grace_s)
            .execute(&mut tx)
            .await?;
            (rid, true)
        }
        None => {
            let rid: i64 = Q::new(
                "INSERT INTO rules (supervisee_id, role, zone_id, list_ref, schedule, \
                   confirm_fixes, grace_s) \
                 VALUES ($1, $2, $3, $4, $5, COALESCE($6, 2), COALESCE($7, 60)) RETURNING rule_id",
            )
            .bind(id)
            .bind(&b.role)
            .bind(b.zone_id)
            .bind(&b.list_ref)
            .bind(schedule.clone())
            .bind(b.confirm_fixes)
            .bind(b.grace_s)
            .scalar(&mut tx)
            .await
            .map_err(unique_as("a rule with this role and target"))?;
            (rid, false)
        }
    };
    audit::record(
        &mut tx,
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
    let mut tx = st.db.begin().await?;
    let retired: Option<DateTime<Utc>> =
        Q::new("SELECT retired_at FROM rules WHERE rule_id = $1 AND supervisee_id = $2 FOR UPDATE")
            .bind(rule_id)
            .bind(id)
            .scalar_opt(&mut tx)
            .await?
            .ok_or(ApiError::NotFound)?;
    if let Some(at) = retired {
        return Err(ApiError::Conflict(format!(
            "rule {rule_id} was already retired at {}",
            at.to_rfc3339()
        )));
    }
    Q::new("UPDATE rules SET retired_at = $2 WHERE rule_id = $1")
        .bind(rule_id)
        .bind(now)
        .execute(&mut tx)
        .await?;
    audit::record(
        &mut tx,
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

fn exception_row(r: &DbRow, now: DateTime<Utc>) -> ExceptionOut {
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

async fn read_exception<'e>(
    on: impl Into<On<'e>>,
    exception_id: i64,
    now: DateTime<Utc>,
) -> Result<ExceptionOut, ApiError> {
    let r = Q::new(format!("{EXCEPTION_SQL} WHERE e.exception_id = $1"))
        .bind(exception_id)
        .fetch_optional(on)
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
    let mut items = exceptions_of(&st.db, id, before, limit + 1, st.clock.now()).await?;
    let next_cursor = paginate(&mut items, limit, |e| e.exception_id);
    Ok(Json(Page { items, next_cursor }))
}

/// Up to `limit` of a supervisee's exceptions with ids below `before`,
/// newest first, with their status at `now`.
async fn exceptions_of(
    db: &Db,
    supervisee_id: i64,
    before: i64,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<Vec<ExceptionOut>, ApiError> {
    Ok(Q::new(format!(
        "{EXCEPTION_SQL} WHERE e.supervisee_id = $1 AND e.exception_id < $2 \
         ORDER BY e.exception_id DESC LIMIT $3"
    ))
    .bind(supervisee_id)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await?
    .iter()
    .map(|r| exception_row(r, now))
    .collect())
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
    let mut tx = st.db.begin().await?;
    if let Some(rid) = b.rule_id {
        let retired: Option<Option<DateTime<Utc>>> =
            Q::new("SELECT retired_at FROM rules WHERE rule_id = $1 AND supervisee_id = $2")
                .bind(rid)
                .bind(id)
                .scalar_opt(&mut tx)
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
    let eid: i64 = Q::new(
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
    .scalar(&mut tx)
    .await
    .map_err(unique_as("an identical exception"))?;
    audit::record(
        &mut tx,
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
    let mut tx = st.db.begin().await?;
    let r = Q::new(
        "SELECT starts_at, ends_at FROM rule_exceptions \
         WHERE exception_id = $1 AND supervisee_id = $2 FOR UPDATE",
    )
    .bind(exception_id)
    .bind(id)
    .fetch_optional(&mut tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    let (starts_at, ends_at): (DateTime<Utc>, DateTime<Utc>) =
        (r.get("starts_at"), r.get("ends_at"));
    let new_end = now.max(starts_at + TimeDelta::microseconds(1));
    if ends_at <= new_end {
        return Err(ApiError::Conflict(format!(
            "exception {exception_id} is already over or cancelled (ends {})",
            ends_at.to_rfc3339()
        )));
    }
    Q::new(
        "UPDATE rule_exceptions SET ends_at = $2, cancelled_at = $3, cancelled_by = $4 \
         WHERE exception_id = $1",
    )
    .bind(exception_id)
    .bind(new_end)
    .bind(now)
    .bind(who.actor())
    .execute(&mut tx)
    .await
    .map_err(unique_as("an identical exception"))?;
    audit::record(
        &mut tx,
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

#[cfg(test)]
mod tests {
    //! The handlers run against a real SQLite file built from
    //! migrations/sqlite, with production's pool shape (one writer, separate
    //! readers): a statement that waited for the writer while a transaction
    //! held it would hang the test, and a read that should have run in the
    //! transaction would miss its writes. The PostgreSQL side is covered by
    //! tests/api_admin.rs and tests/api_matrix.rs.

    use std::sync::Arc;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    use super::*;
    use crate::alerts::outbox::Outbox;
    use crate::api::ApiConfig;
    use crate::clock::{Clock, ManualClock};
    use crate::store::sql::LitePools;

    struct Lite {
        st: ApiState,
        clock: Arc<ManualClock>,
        _dir: tempfile::TempDir,
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// A migrated SQLite file with two officers in one team (off-a, its
    /// supervisor sup-s), one outside it (off-b), and a supervisee each for
    /// off-a (id 1) and off-b (id 2).
    async fn lite() -> Lite {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("waypoint.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .unwrap();
        sqlx::migrate!("./migrations/sqlite")
            .run(&write)
            .await
            .unwrap();
        let read = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts.read_only(true))
            .await
            .unwrap();
        let db = Db::Lite(LitePools { write, read });
        for s in [
            "INSERT INTO officers (officer_ref, display_name) VALUES ('sup-s', 'S')",
            "INSERT INTO teams (team_ref, name, supervisor_id) VALUES ('t1', 'T', 1)",
            "INSERT INTO officers (officer_ref, display_name, team_id) VALUES ('off-a', 'A', 1)",
            "INSERT INTO officers (officer_ref, display_name) VALUES ('off-b', 'B')",
            "INSERT INTO supervisees (case_ref, time_zone, officer_ref) \
             VALUES ('case-a', 'Europe/London', 'off-a')",
            "INSERT INTO supervisees (case_ref, time_zone, officer_ref) \
             VALUES ('case-b', 'Europe/London', 'off-b')",
        ] {
            Q::new(s).execute(&db).await.unwrap();
        }
        // A fraction of a second, so stored times carry one.
        let clock = Arc::new(ManualClock::new(t("2026-03-02T10:00:00.250Z")));
        let st = ApiState::new(db, Outbox::new(), clock.clone(), ApiConfig::default());
        Lite {
            st,
            clock,
            _dir: dir,
        }
    }

    fn admin() -> Principal {
        Principal {
            token_id: 1,
            role: Role::Admin,
            officer_ref: None,
            officer_id: None,
        }
    }

    fn officer(r: &str, role: Role) -> Principal {
        Principal {
            token_id: 2,
            role,
            officer_ref: Some(r.into()),
            officer_id: None,
        }
    }

    fn square(lon: f64, lat: f64) -> Value {
        json!({"type": "Polygon", "coordinates": [[
            [lon, lat], [lon + 0.01, lat], [lon + 0.01, lat + 0.01], [lon, lat + 0.01], [lon, lat]
        ]]})
    }

    fn no_reason() -> AuditReason {
        AuditReason(None)
    }

    async fn new_zone(st: &ApiState, zone_ref: &str, list: Option<&str>, g: Value) -> ZoneFeature {
        create_zone(
            State(st.clone()),
            admin(),
            no_reason(),
            ApiJson(Ok(NewZone {
                zone_ref: zone_ref.into(),
                name: format!("Zone {zone_ref}"),
                list_ref: list.map(Into::into),
                geojson: g,
            })),
        )
        .await
        .unwrap()
        .0
    }

    async fn zones(st: &ApiState, who: Principal, q: ZoneQuery) -> Page<ZoneSummary> {
        list_zones(State(st.clone()), who, ApiQuery(q))
            .await
            .unwrap()
            .0
    }

    fn refs(p: &Page<ZoneSummary>) -> Vec<&str> {
        p.items.iter().map(|z| z.zone_ref.as_str()).collect()
    }

    async fn audit_count(db: &Db, action: &str) -> i64 {
        Q::new("SELECT count(*) FROM audit_log WHERE action = $1")
            .bind(action)
            .scalar(db)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn zone_versions_and_list_filters_on_sqlite() {
        let l = lite().await;
        let st = &l.st;
        let z = new_zone(st, "school-1", Some("schools"), square(-0.12, 51.5)).await;
        assert_eq!(z.properties.version, 1);
        assert_eq!(z.properties.created_at, l.clock.now());
        assert_eq!(z.geometry["type"], "Polygon");
        new_zone(st, "school-2", Some("schools"), square(-0.10, 51.5)).await;
        new_zone(
            st,
            "home-1",
            None,
            json!({"type": "Feature", "properties": {"radius_m": 150.0},
                   "geometry": {"type": "Point", "coordinates": [-0.2, 51.4]}}),
        )
        .await;

        // The zone_ref is unique on SQLite too, answered as a 409.
        let dup = create_zone(
            State(st.clone()),
            admin(),
            no_reason(),
            ApiJson(Ok(NewZone {
                zone_ref: "school-1".into(),
                name: "again".into(),
                list_ref: None,
                geojson: square(1.0, 1.0),
            })),
        )
        .await;
        assert!(matches!(dup, Err(ApiError::Conflict(m)) if m.contains("zone_ref")));

        // geometry_type comes from ->/->> on the JSON text.
        let all = zones(st, admin(), ZoneQuery::default()).await;
        assert_eq!(refs(&all), ["school-1", "school-2", "home-1"]);
        let kinds: Vec<_> = all.items.iter().map(|z| z.geometry_type.clone()).collect();
        assert_eq!(
            kinds,
            [
                Some("Polygon".into()),
                Some("Polygon".into()),
                Some("Point".into())
            ]
        );
        // The SQLite prefix match: case-sensitive, wildcards are literal.
        let q = |p: &str| ZoneQuery {
            q: Some(p.into()),
            ..Default::default()
        };
        assert_eq!(
            refs(&zones(st, admin(), q("school-")).await),
            ["school-1", "school-2"]
        );
        assert!(zones(st, admin(), q("SCHOOL")).await.items.is_empty());
        assert!(zones(st, admin(), q("%")).await.items.is_empty());
        assert!(zones(st, admin(), q("_chool")).await.items.is_empty());
        let list = ZoneQuery {
            list_ref: Some("schools".into()),
            limit: Some(1),
            ..Default::default()
        };
        let page = zones(st, admin(), list.clone()).await;
        assert_eq!(refs(&page), ["school-1"]);
        let page = zones(
            st,
            admin(),
            ZoneQuery {
                cursor: page.next_cursor,
                ..list
            },
        )
        .await;
        assert_eq!(refs(&page), ["school-2"]);
        assert_eq!(page.next_cursor, None);

        // The same geometry is no new version, even when the stored text
        // is laid out differently (json() on both sides).
        let id = z.properties.zone_id;
        Q::new("UPDATE zone_versions SET geojson = $2 WHERE zone_id = $1")
            .bind(id)
            .bind(
                serde_json::to_string_pretty(
                    &Shape::from_geojson(&square(-0.12, 51.5))
                        .unwrap()
                        .to_geojson(),
                )
                .unwrap(),
            )
            .execute(&st.db)
            .await
            .unwrap();
        let put = |g: Value| {
            put_geometry(
                State(st.clone()),
                admin(),
                no_reason(),
                ApiPath(id),
                ApiJson(Ok(NewGeometry { geojson: g })),
            )
        };
        let same = put(square(-0.12, 51.5)).await.unwrap().0;
        assert_eq!(same.properties.version, 1);
        assert_eq!(audit_count(&st.db, "zone.geometry").await, 0);
        l.clock.advance(TimeDelta::seconds(1));
        let moved = put(square(-0.13, 51.5)).await.unwrap().0;
        assert_eq!(moved.properties.version, 2);
        assert_eq!(moved.properties.current_version, 2);
        assert_eq!(audit_count(&st.db, "zone.geometry").await, 1);

        let vs = list_versions(State(st.clone()), admin(), ApiPath(id))
            .await
            .unwrap()
            .0;
        let shape: Vec<_> = vs
            .iter()
            .map(|v| (v.version, v.current, v.geometry_type.as_deref()))
            .collect();
        assert_eq!(
            shape,
            [(1, false, Some("Polygon")), (2, true, Some("Polygon"))]
        );
        assert!(vs[0].created_at < vs[1].created_at);

        let old = get_version(State(st.clone()), admin(), no_reason(), ApiPath((id, 1)))
            .await
            .unwrap()
            .0;
        assert_eq!(old.geometry["coordinates"][0][0][0], -0.12);
        assert_eq!(old.properties.current_version, 2);
        let missing = get_version(State(st.clone()), admin(), no_reason(), ApiPath((id, 3))).await;
        assert!(matches!(missing, Err(ApiError::NotFound)));
        let cur = get_zone(State(st.clone()), admin(), no_reason(), ApiPath(id))
            .await
            .unwrap();
        assert_eq!(cur.properties.version, 2);
        assert_eq!(audit_count(&st.db, "zone.read").await, 2);

        // A circle keeps its radius through the canonical form.
        let circle = get_zone(State(st.clone()), admin(), no_reason(), ApiPath(3))
            .await
            .unwrap()
            .0;
        assert_eq!(circle.properties.radius_m, Some(150.0));
    }

    async fn new_rule(st: &ApiState, sid: i64, body: Value) -> Result<RuleOut, ApiError> {
        create_rule(
            State(st.clone()),
            admin(),
            no_reason(),
            ApiPath(sid),
            ApiJson(Ok(serde_json::from_value(body).unwrap())),
        )
        .await
        .map(|j| j.0)
    }

    #[tokio::test]
    async fn rules_scope_zones_and_come_back_when_revived() {
        let l = lite().await;
        let st = &l.st;
        let school = new_zone(st, "school-1", Some("schools"), square(-0.12, 51.5)).await;
        let home = new_zone(st, "home-a", None, square(-0.2, 51.4)).await;
        let (school, home) = (school.properties.zone_id, home.properties.zone_id);
        let (off_a, sup, off_b) = (
            officer("off-a", Role::Officer),
            officer("sup-s", Role::Supervisor),
            officer("off-b", Role::Officer),
        );
        // No rule refers to a zone yet: caseworkers see none of them.
        assert!(zones(st, off_a.clone(), ZoneQuery::default())
            .await
            .items
            .is_empty());

        let curfew =
            json!({"windows": [{"days": ["mon", "fri"], "start": "21:00", "end": "07:00"}]});
        let r = new_rule(
            st,
            1,
            json!({"role": "home", "zone_id": home, "schedule": curfew}),
        )
        .await
        .unwrap();
        assert_eq!(r.role, "home");
        assert_eq!(r.zone.as_ref().map(|z| z.zone_id), Some(home));
        assert_eq!(r.schedule.as_ref().unwrap()["windows"][0]["start"], "21:00");
        assert_eq!((r.confirm_fixes, r.grace_s, r.retired), (2, 60, false));
        let list = new_rule(st, 1, json!({"role": "exclusion", "list_ref": "schools"}))
            .await
            .unwrap();
        assert_eq!(list.zone.map(|z| z.zone_id), None);
        // The same role and target again (NULL zone_id matched with IS NOT
        // DISTINCT FROM) is a conflict while the first is live.
        let again = new_rule(st, 1, json!({"role": "exclusion", "list_ref": "schools"})).await;
        assert!(matches!(again, Err(ApiError::Conflict(m)) if m.contains("already applies")));
        let bad = new_rule(st, 1, json!({"role": "exclusion", "zone_id": 999})).await;
        assert!(matches!(bad, Err(ApiError::Validation(e)) if e[0].field == "zone_id"));
        let bad = new_rule(st, 1, json!({"role": "exclusion", "list_ref": "parks"})).await;
        assert!(matches!(bad, Err(ApiError::Validation(e)) if e[0].field == "list_ref"));
        assert!(matches!(
            new_rule(st, 99, json!({"role": "exclusion", "zone_id": school})).await,
            Err(ApiError::NotFound)
        ));

        // Scope: off-a and their supervisor see both zones (one directly,
        // one through its list); off-b sees none.
        for who in [off_a.clone(), sup.clone()] {
            assert_eq!(
                refs(&zones(st, who, ZoneQuery::default()).await),
                ["school-1", "home-a"]
            );
        }
        assert!(zones(st, off_b.clone(), ZoneQuery::default())
            .await
            .items
            .is_empty());
        assert!(matches!(
            get_zone(
                State(st.clone()),
                off_b.clone(),
                no_reason(),
                ApiPath(school)
            )
            .await,
            Err(ApiError::NotFound)
        ));
        assert!(matches!(
            list_versions(State(st.clone()), off_b, ApiPath(school)).await,
            Err(ApiError::NotFound)
        ));
        let seen = list_versions(State(st.clone()), sup, ApiPath(school))
            .await
            .unwrap()
            .0;
        assert_eq!(seen.len(), 1);

        // A zone in use is not retired; retire the rule first.
        let retire = |z: i64| retire_zone(State(st.clone()), admin(), no_reason(), ApiPath(z));
        assert!(
            matches!(retire(home).await, Err(ApiError::Conflict(m)) if m.contains(&r.rule_id.to_string()))
        );
        l.clock.advance(TimeDelta::minutes(1));
        let gone = retire_rule(
            State(st.clone()),
            admin(),
            no_reason(),
            ApiPath((1, r.rule_id)),
        )
        .await
        .unwrap()
        .0;
        assert_eq!(gone.retired_at, Some(l.clock.now()));
        assert!(matches!(
            retire_rule(
                State(st.clone()),
                admin(),
                no_reason(),
                ApiPath((1, r.rule_id))
            )
            .await,
            Err(ApiError::Conflict(_))
        ));
        assert!(matches!(
            retire_rule(
                State(st.clone()),
                admin(),
                no_reason(),
                ApiPath((2, r.rule_id))
            )
            .await,
            Err(ApiError::NotFound)
        ));
        // Live rules first, then retired ones.
        let ids: Vec<_> = rules_of(&st.db, 1)
            .await
            .unwrap()
            .iter()
            .map(|r| r.rule_id)
            .collect();
        assert_eq!(ids, [list.rule_id, r.rule_id]);
        // The home zone no longer justifies off-a seeing it.
        assert_eq!(
            refs(&zones(st, off_a, ZoneQuery::default()).await),
            ["school-1"]
        );

        // Brought back with new settings, same id; created_at restarts
        // (written by the database, in the stored time format).
        let before: DateTime<Utc> = Q::new("SELECT created_at FROM rules WHERE rule_id = $1")
            .bind(r.rule_id)
            .scalar(&st.db)
            .await
            .unwrap();
        let back = new_rule(
            st,
            1,
            json!({"role": "home", "zone_id": home, "schedule": curfew, "grace_s": 30}),
        )
        .await
        .unwrap();
        assert_eq!(
            (back.rule_id, back.grace_s, back.retired),
            (r.rule_id, 30, false)
        );
        let after: DateTime<Utc> = Q::new("SELECT created_at FROM rules WHERE rule_id = $1")
            .bind(r.rule_id)
            .scalar(&st.db)
            .await
            .unwrap();
        assert!(after >= before);

        // Retire the rule again, then the zone: it leaves the live list.
        let again = retire_rule(
            State(st.clone()),
            admin(),
            no_reason(),
            ApiPath((1, r.rule_id)),
        )
        .await
        .unwrap();
        assert!(again.retired);
        let z = retire(home).await.unwrap().0;
        assert_eq!(z.properties.retired_at, Some(l.clock.now()));
        assert!(matches!(retire(home).await, Err(ApiError::Conflict(_))));
        let retired = |b: bool| ZoneQuery {
            retired: Some(b),
            ..Default::default()
        };
        assert_eq!(refs(&zones(st, admin(), retired(true)).await), ["home-a"]);
        assert_eq!(
            refs(&zones(st, admin(), retired(false)).await),
            ["school-1"]
        );
        let frozen = put_geometry(
            State(st.clone()),
            admin(),
            no_reason(),
            ApiPath(home),
            ApiJson(Ok(NewGeometry {
                geojson: square(0.0, 0.0),
            })),
        )
        .await;
        assert!(matches!(frozen, Err(ApiError::Conflict(_))));
        assert!(matches!(
            new_rule(st, 1, json!({"role": "inclusion", "zone_id": home})).await,
            Err(ApiError::Validation(e)) if e[0].message.contains("retired")
        ));
        assert_eq!(audit_count(&st.db, "rule.create").await, 3);
        assert_eq!(audit_count(&st.db, "rule.retire").await, 2);
        assert_eq!(audit_count(&st.db, "zone.retire").await, 1);
    }

    #[tokio::test]
    async fn exceptions_are_approved_listed_and_cancelled_on_sqlite() {
        let l = lite().await;
        let st = &l.st;
        let zone = new_zone(st, "home-a", None, square(-0.2, 51.4)).await;
        let rule = new_rule(
            st,
            1,
            json!({"role": "inclusion", "zone_id": zone.properties.zone_id}),
        )
        .await
        .unwrap();
        let off_a = officer("off-a", Role::Officer);
        let now = l.clock.now();
        let approve = |who: Principal, sid: i64, rule_id: Option<i64>, from, to| {
            create_exception(
                State(st.clone()),
                who,
                no_reason(),
                ApiPath(sid),
                ApiJson(Ok(NewException {
                    rule_id,
                    starts_at: from,
                    ends_at: to,
                    reason: "clinic".into(),
                })),
            )
        };
        let h = TimeDelta::hours(1);
        let active = approve(off_a.clone(), 1, Some(rule.rule_id), now - h, now + h)
            .await
            .unwrap()
            .0;
        assert_eq!(active.status, "active");
        assert_eq!(active.created_by, "off-a");
        assert_eq!(active.created_at, now);
        let later = approve(off_a.clone(), 1, None, now + h * 2, now + h * 3)
            .await
            .unwrap()
            .0;
        assert_eq!((later.status.as_str(), later.rule_id), ("scheduled", None));
        // Identical (with a NULL rule) is refused by the unique index.
        let dup = approve(off_a.clone(), 1, None, now + h * 2, now + h * 3).await;
        assert!(matches!(dup, Err(ApiError::Conflict(m)) if m.contains("identical")));
        // Someone else's supervisee, or a rule that is not theirs.
        assert!(matches!(
            approve(off_a.clone(), 2, None, now, now + h).await,
            Err(ApiError::NotFound)
        ));
        let wrong = approve(admin(), 2, Some(rule.rule_id), now, now + h).await;
        assert!(matches!(wrong, Err(ApiError::Validation(e)) if e[0].field == "rule_id"));

        // Newest first, one page at a time.
        let page = |cursor: Option<String>| {
            list_exceptions(
                State(st.clone()),
                off_a.clone(),
                ApiPath(1),
                ApiQuery(ExceptionQuery {
                    cursor,
                    limit: Some(1),
                }),
            )
        };
        let p1 = page(None).await.unwrap().0;
        assert_eq!(p1.items[0].exception_id, later.exception_id);
        let p2 = page(p1.next_cursor).await.unwrap().0;
        assert_eq!(p2.items[0].exception_id, active.exception_id);
        assert_eq!(p2.next_cursor, None);

        // Cancelling: an active one ends now; a future one is cut to one
        // microsecond, which must survive the round trip through TEXT.
        l.clock.advance(TimeDelta::minutes(5));
        let cancel = |eid: i64| {
            cancel_exception(
                State(st.clone()),
                off_a.clone(),
                no_reason(),
                ApiPath((1, eid)),
            )
        };
        let c = cancel(active.exception_id).await.unwrap().0;
        assert_eq!((c.status.as_str(), c.ends_at), ("cancelled", l.clock.now()));
        assert_eq!(c.cancelled_by.as_deref(), Some("off-a"));
        let c = cancel(later.exception_id).await.unwrap().0;
        assert_eq!(c.ends_at, later.starts_at + TimeDelta::microseconds(1));
        assert!(matches!(
            cancel(later.exception_id).await,
            Err(ApiError::Conflict(_))
        ));
        assert!(matches!(
            cancel_exception(
                State(st.clone()),
                admin(),
                no_reason(),
                ApiPath((2, later.exception_id))
            )
            .await,
            Err(ApiError::NotFound)
        ));
        let rows = exceptions_of(&st.db, 1, i64::MAX, 10, l.clock.now())
            .await
            .unwrap();
        assert!(rows.iter().all(|e| e.status == "cancelled"));
        assert_eq!(audit_count(&st.db, "exception.create").await, 2);
        assert_eq!(audit_count(&st.db, "exception.cancel").await, 2);
    }
}
