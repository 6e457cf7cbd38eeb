//! Supervisees, officers, teams and devices: who is supervised, by whom, and
//! wearing what.
//!
//! Supervisee records are caseload-scoped like everything personal
//! (officers: their caseload; supervisors: their team's; admins: all;
//! auditors: none); one outside the caller's scope is answered exactly like
//! one that does not exist. Everything else here is configuration, changed
//! by admins only, and every change is audited in the transaction that
//! makes it. Running servers learn of changes through the schema's own
//! triggers (PostgreSQL: configuration NOTIFYs, migrations 0001/0002;
//! SQLite: the polled config_version counters), so nothing here talks to
//! them.
//!
//! Statements run on PostgreSQL or SQLite through [`crate::store::sql`];
//! the few that differ (LATERAL, starts_with, range overlap, FOR UPDATE OF)
//! carry both texts.
//!
//! Victims are never identified here: a supervisee's record says only how
//! many victim devices are paired with them.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{self, AuditReason, Entry};
use super::auth::{Principal, Role, ADMIN};
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, FieldError, StdErrors};
use super::{done, id_cursor, limit_of, paginate, ApiState, Page};
use crate::domain::DeviceId;
use crate::rules::schedule::parse_tz;
use crate::store::sql::{self, Db, DbRow, On, Tx, Violation, Q};

// ---------------------------------------------------------------------------
// Helpers shared with `zones`.

/// Roles that may read supervisee records: caseworkers within their scope,
/// admins all of them (admins never get location data from these records).
pub(super) const READERS: &[Role] = &[Role::Officer, Role::Supervisor, Role::Admin];

/// A required text field: not blank, at most `max` characters, no control
/// characters.
pub(super) fn check_text(field: &str, v: &str, max: usize, errs: &mut Vec<FieldError>) {
    if v.trim().is_empty() {
        errs.push(FieldError::new(field, "is required and must not be blank"));
    } else if v.chars().count() > max {
        errs.push(FieldError::new(
            field,
            format!("longer than {max} characters"),
        ));
    } else if v.chars().any(char::is_control) {
        errs.push(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
}

/// Maps a unique violation to a 409 that says what clashed; other errors as
/// usual.
pub(super) fn unique_as(what: &str) -> impl FnOnce(sqlx::Error) -> ApiError + '_ {
    move |e| {
        if sql::violation(&e) == Some(Violation::Unique) {
            ApiError::Conflict(format!("{what} already exists"))
        } else {
            e.into()
        }
    }
}

/// PATCH fields that may be set to null: absent = keep, `null` = clear.
pub(super) fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `(exists, active)` of an officer reference.
async fn officer_active(tx: &mut Tx, officer_ref: &str) -> Result<Option<bool>, sqlx::Error> {
    Q::new("SELECT active FROM officers WHERE officer_ref = $1")
        .bind(officer_ref)
        .scalar_opt(tx)
        .await
}

/// Checks that `officer_ref` names an active officer, as field `field`.
async fn check_officer(
    tx: &mut Tx,
    field: &str,
    officer_ref: &str,
    errs: &mut Vec<FieldError>,
) -> Result<(), ApiError> {
    match officer_active(tx, officer_ref).await? {
        Some(true) => {}
        Some(false) => errs.push(FieldError::new(field, "this officer is not active")),
        None => errs.push(FieldError::new(field, "no officer has this reference")),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Supervisees.

/// A supervisee as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SuperviseeSummary {
    /// Id (used in every supervisee path).
    pub supervisee_id: i64,
    /// The agency's case reference.
    pub case_ref: String,
    /// Name shown to officers.
    pub display_name: Option<String>,
    /// IANA zone in which schedules are evaluated.
    pub time_zone: String,
    /// Responsible officer.
    pub officer_ref: Option<String>,
    /// When the record was created.
    pub created_at: DateTime<Utc>,
}

const SUP_COLS: &str =
    "s.supervisee_id, s.case_ref, s.display_name, s.time_zone, s.officer_ref, s.created_at";

fn sup_summary(r: &DbRow) -> SuperviseeSummary {
    SuperviseeSummary {
        supervisee_id: r.get("supervisee_id"),
        case_ref: r.get("case_ref"),
        display_name: r.get("display_name"),
        time_zone: r.get("time_zone"),
        officer_ref: r.get("officer_ref"),
        created_at: r.get("created_at"),
    }
}

/// A device worn by a supervisee over a dated period.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WornDevice {
    /// Assignment id (to end it).
    pub assignment_id: i64,
    /// The device.
    pub device_id: String,
    /// From (inclusive).
    pub valid_from: DateTime<Utc>,
    /// Until (exclusive); absent while open-ended.
    pub valid_to: Option<DateTime<Utc>>,
}

/// A supervisee with the devices they wear now or are due to wear.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SuperviseeDetail {
    /// The record.
    #[serde(flatten)]
    pub supervisee: SuperviseeSummary,
    /// Current and upcoming device assignments, earliest first (ended ones
    /// are left out).
    pub devices: Vec<WornDevice>,
    /// Victim devices paired with this person (proximity alerts); the
    /// victims themselves are never identified to officers.
    pub victim_pairings: i64,
}

/// The supervisee with their devices, as `who` may see them (not found
/// outside their scope).
async fn read_supervisee(
    on: impl Into<On<'_>>,
    who: &Principal,
    id: i64,
    now: DateTime<Utc>,
) -> Result<SuperviseeDetail, ApiError> {
    let mut on = on.into();
    let sql = format!(
        "SELECT {SUP_COLS} FROM supervisees s WHERE s.supervisee_id = $2 AND {}",
        who.scope_sql()
    );
    let r = Q::new(sql)
        .bind(who.scope_param())
        .bind(id)
        .fetch_optional(on.reborrow())
        .await?
        .ok_or(ApiError::NotFound)?;
    let devices = Q::new(
        "SELECT a.assignment_id, d.device_id, a.valid_from, a.valid_to \
         FROM device_assignments a JOIN devices d ON d.device_key = a.device_key \
         WHERE a.supervisee_id = $1 AND (a.valid_to IS NULL OR a.valid_to > $2) \
         ORDER BY a.valid_from, a.assignment_id LIMIT 100",
    )
    .bind(id)
    .bind(now)
    .fetch_all(on.reborrow())
    .await?
    .iter()
    .map(|r| WornDevice {
        assignment_id: r.get("assignment_id"),
        device_id: r.get("device_id"),
        valid_from: r.get("valid_from"),
        valid_to: r.get("valid_to"),
    })
    .collect();
    let victim_pairings: i64 = Q::new(
        "SELECT count(*) FROM victim_pairings WHERE supervisee_id = $1 AND ended_at IS NULL",
    )
    .bind(id)
    .scalar(on)
    .await?;
    Ok(SuperviseeDetail {
        supervisee: sup_summary(&r),
        devices,
        victim_pairings,
    })
}

/// Filters of the supervisee list.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SuperviseeQuery {
    /// Only this officer's caseload.
    pub officer_ref: Option<String>,
    /// Case references starting with this text.
    pub q: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size 1..=500 (default 100).
    pub limit: Option<i64>,
}

/// Up to `limit` supervisees in `who`'s scope with ids after `after`,
/// filtered by `q`.
async fn supervisee_page(
    db: &Db,
    who: &Principal,
    after: i64,
    q: &SuperviseeQuery,
    limit: i64,
) -> Result<Vec<SuperviseeSummary>, sqlx::Error> {
    let scope = who.scope_sql();
    // SQLite has no starts_with; PostgreSQL keeps it.
    let pg = format!(
        "SELECT {SUP_COLS} FROM supervisees s WHERE {scope} AND s.supervisee_id > $2 \
           AND ($3::text IS NULL OR s.officer_ref = $3) \
           AND ($4::text IS NULL OR starts_with(s.case_ref, $4)) \
         ORDER BY s.supervisee_id LIMIT $5"
    );
    let lite = format!(
        "SELECT {SUP_COLS} FROM supervisees s WHERE {} AND s.supervisee_id > $2 \
           AND ($3 IS NULL OR s.officer_ref = $3) \
           AND ($4 IS NULL OR substr(s.case_ref, 1, length($4)) = $4) \
         ORDER BY s.supervisee_id LIMIT $5",
        sql::to_sqlite(scope)
    );
    Ok(Q::split(pg, lite)
        .bind(who.scope_param())
        .bind(after)
        .bind(&q.officer_ref)
        .bind(&q.q)
        .bind(limit)
        .fetch_all(db)
        .await?
        .iter()
        .map(sup_summary)
        .collect())
}

/// Supervisees the caller may see, by id.
#[utoipa::path(
    get,
    path = "/supervisees",
    tag = "supervisees",
    params(SuperviseeQuery),
    responses((status = 200, description = "A page of supervisees", body = Page<SuperviseeSummary>), StdErrors),
    security(("bearer" = []))
)]
pub async fn list_supervisees(
    State(st): State<ApiState>,
    who: Principal,
    ApiQuery(q): ApiQuery<SuperviseeQuery>,
) -> Result<Json<Page<SuperviseeSummary>>, ApiError> {
    who.require(READERS)?;
    let mut errs = Vec::new();
    let after = id_cursor(&q.cursor, 0, &mut errs);
    let limit = limit_of(q.limit, 100, 500, &mut errs);
    if q.q.as_ref().is_some_and(|p| p.chars().count() > 128) {
        errs.push(FieldError::new("q", "longer than 128 characters"));
    }
    done(errs)?;
    let mut items = supervisee_page(&st.db, &who, after, &q, limit + 1).await?;
    let next_cursor = paginate(&mut items, limit, |s| s.supervisee_id);
    Ok(Json(Page { items, next_cursor }))
}

/// One supervisee with their current and upcoming devices.
#[utoipa::path(
    get,
    path = "/supervisees/{id}",
    tag = "supervisees",
    params(("id" = i64, Path, description = "Supervisee id")),
    responses((status = 200, description = "The supervisee", body = SuperviseeDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn get_supervisee(
    State(st): State<ApiState>,
    who: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<SuperviseeDetail>, ApiError> {
    who.require(READERS)?;
    Ok(Json(
        read_supervisee(&st.db, &who, id, st.clock.now()).await?,
    ))
}

/// A new supervisee.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSupervisee {
    /// The agency's case reference (unique, 1..=128 characters).
    pub case_ref: String,
    /// Name shown to officers (≤ 200 characters).
    pub display_name: Option<String>,
    /// IANA zone name, e.g. `Europe/London` (schedules use it).
    pub time_zone: String,
    /// Responsible officer (must exist and be active).
    pub officer_ref: String,
}

/// Creates a supervisee (admins).
#[utoipa::path(
    post,
    path = "/supervisees",
    tag = "supervisees",
    request_body = NewSupervisee,
    responses((status = 200, description = "The new supervisee", body = SuperviseeDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn create_supervisee(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiJson(b): ApiJson<NewSupervisee>,
) -> Result<Json<SuperviseeDetail>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    check_text("case_ref", &b.case_ref, 128, &mut errs);
    if let Some(n) = &b.display_name {
        check_text("display_name", n, 200, &mut errs);
    }
    if let Err(e) = parse_tz(&b.time_zone) {
        errs.push(FieldError::new("time_zone", e.to_string()));
    }
    let now = st.clock.now();
    let mut tx = st.db.begin().await?;
    check_officer(&mut tx, "officer_ref", &b.officer_ref, &mut errs).await?;
    done(errs)?;
    let id = insert_supervisee(&mut tx, &b)
        .await
        .map_err(unique_as("a supervisee with this case_ref"))?;
    audit::record(
        &mut tx,
        &who,
        &reason,
        now,
        Entry::supervisee("supervisee.create", id).with(json!({
            "case_ref": b.case_ref, "officer_ref": b.officer_ref, "time_zone": b.time_zone,
        })),
    )
    .await?;
    let d = read_supervisee(&mut tx, &who, id, now).await?;
    tx.commit().await?;
    Ok(Json(d))
}

/// Changes to a supervisee; absent fields are kept.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuperviseePatch {
    /// New display name; `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub display_name: Option<Option<String>>,
    /// New IANA time zone.
    pub time_zone: Option<String>,
    /// New responsible officer: moves the person to that caseload (the
    /// previous officer loses access at once).
    pub officer_ref: Option<String>,
}

/// Updates a supervisee, e.g. reassigns them to another officer (admins).
#[utoipa::path(
    patch,
    path = "/supervisees/{id}",
    tag = "supervisees",
    params(("id" = i64, Path, description = "Supervisee id")),
    request_body = SuperviseePatch,
    responses((status = 200, description = "The supervisee after the change", body = SuperviseeDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn patch_supervisee(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(id): ApiPath<i64>,
    ApiJson(b): ApiJson<SuperviseePatch>,
) -> Result<Json<SuperviseeDetail>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    if b.display_name.is_none() && b.time_zone.is_none() && b.officer_ref.is_none() {
        errs.push(FieldError::new("body", "names no field to change"));
    }
    if let Some(Some(n)) = &b.display_name {
        check_text("display_name", n, 200, &mut errs);
    }
    if let Some(tz) = &b.time_zone {
        if let Err(e) = parse_tz(tz) {
            errs.push(FieldError::new("time_zone", e.to_string()));
        }
    }
    let now = st.clock.now();
    let mut tx = st.db.begin().await?;
    if let Some(o) = &b.officer_ref {
        check_officer(&mut tx, "officer_ref", o, &mut errs).await?;
    }
    done(errs)?;
    let before = lock_supervisee(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    update_supervisee(&mut tx, id, &b).await?;
    let mut changed = Vec::new();
    if b.display_name.is_some() {
        changed.push("display_name");
    }
    if b.time_zone.is_some() {
        changed.push("time_zone");
    }
    if b.officer_ref.is_some() {
        changed.push("officer_ref");
    }
    audit::record(
        &mut tx,
        &who,
        &reason,
        now,
        Entry::supervisee("supervisee.update", id).with(json!({
            "changed": changed,
            "time_zone": b.time_zone,
            "officer_ref": b.officer_ref.as_ref().map(|to| json!({"from": before, "to": to})),
        })),
    )
    .await?;
    let d = read_supervisee(&mut tx, &who, id, now).await?;
    tx.commit().await?;
    Ok(Json(d))
}

/// Inserts a supervisee; the new id.
async fn insert_supervisee(tx: &mut Tx, b: &NewSupervisee) -> Result<i64, sqlx::Error> {
    Q::new(
        "INSERT INTO supervisees (case_ref, display_name, time_zone, officer_ref) \
         VALUES ($1, $2, $3, $4) RETURNING supervisee_id",
    )
    .bind(&b.case_ref)
    .bind(&b.display_name)
    .bind(&b.time_zone)
    .bind(&b.officer_ref)
    .scalar(tx)
    .await
}

/// The supervisee's officer, the row locked until the transaction ends;
/// `None` when there is no such supervisee.
async fn lock_supervisee(tx: &mut Tx, id: i64) -> Result<Option<Option<String>>, sqlx::Error> {
    Q::new("SELECT officer_ref FROM supervisees WHERE supervisee_id = $1 FOR UPDATE")
        .bind(id)
        .scalar_opt(tx)
        .await
}

/// Applies a patch (absent fields kept).
async fn update_supervisee(tx: &mut Tx, id: i64, b: &SuperviseePatch) -> Result<(), sqlx::Error> {
    Q::new(
        "UPDATE supervisees SET \
           display_name = CASE WHEN $2 THEN $3 ELSE display_name END, \
           time_zone = COALESCE($4, time_zone), officer_ref = COALESCE($5, officer_ref) \
         WHERE supervisee_id = $1",
    )
    .bind(id)
    .bind(b.display_name.is_some())
    .bind(b.display_name.clone().flatten())
    .bind(&b.time_zone)
    .bind(&b.officer_ref)
    .execute(tx)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Officers.

/// An officer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Officer {
    /// Id (used in the officer path).
    pub officer_id: i64,
    /// The agency's staff reference (supervisees name their officer by it).
    pub officer_ref: String,
    /// Name.
    pub display_name: String,
    /// Team, if any.
    pub team_ref: Option<String>,
    /// Inactive officers' tokens stop working.
    pub active: bool,
    /// When created.
    pub created_at: DateTime<Utc>,
    /// Number of supervisees assigned to this officer.
    pub caseload: i64,
}

const OFFICER_SQL: &str = "SELECT o.officer_id, o.officer_ref, o.display_name, t.team_ref, \
     o.active, o.created_at, \
     (SELECT count(*) FROM supervisees s WHERE s.officer_ref = o.officer_ref) AS caseload \
     FROM officers o LEFT JOIN teams t ON t.team_id = o.team_id";

fn officer_row(r: &DbRow) -> Officer {
    Officer {
        officer_id: r.get("officer_id"),
        officer_ref: r.get("officer_ref"),
        display_name: r.get("display_name"),
        team_ref: r.get("team_ref"),
        active: r.get("active"),
        created_at: r.get("created_at"),
        caseload: r.get("caseload"),
    }
}

async fn read_officer(tx: &mut Tx, id: i64) -> Result<Officer, ApiError> {
    let r = Q::new(format!("{OFFICER_SQL} WHERE o.officer_id = $1"))
        .bind(id)
        .fetch_optional(tx)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(officer_row(&r))
}

/// Filters of the officer list.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OfficerQuery {
    /// Only this team.
    pub team_ref: Option<String>,
    /// Only active (true) or inactive (false) officers.
    pub active: Option<bool>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size 1..=500 (default 100).
    pub limit: Option<i64>,
}

/// Up to `limit` officers with ids after `after`, filtered by `q`; with
/// `supervisor`, only that officer and their team.
async fn officer_page(
    db: &Db,
    after: i64,
    supervisor: Option<i64>,
    q: &OfficerQuery,
    limit: i64,
) -> Result<Vec<Officer>, sqlx::Error> {
    let sql = format!(
        "{OFFICER_SQL} WHERE o.officer_id > $1 \
           AND ($2::bigint IS NULL OR o.officer_id = $2 OR o.team_id = \
                (SELECT o3.team_id FROM officers o3 WHERE o3.officer_id = $2)) \
           AND ($3::text IS NULL OR t.team_ref = $3) \
           AND ($4::boolean IS NULL OR o.active = $4) \
         ORDER BY o.officer_id LIMIT $5"
    );
    Ok(Q::new(sql)
        .bind(after)
        .bind(supervisor)
        .bind(&q.team_ref)
        .bind(q.active)
        .bind(limit)
        .fetch_all(db)
        .await?
        .iter()
        .map(officer_row)
        .collect())
}

/// Officers: all of them for admins; a supervisor's own team (and
/// themselves) for supervisors.
#[utoipa::path(
    get,
    path = "/officers",
    tag = "officers",
    params(OfficerQuery),
    responses((status = 200, description = "A page of officers", body = Page<Officer>), StdErrors),
    security(("bearer" = []))
)]
pub async fn list_officers(
    State(st): State<ApiState>,
    who: Principal,
    ApiQuery(q): ApiQuery<OfficerQuery>,
) -> Result<Json<Page<Officer>>, ApiError> {
    who.require(&[Role::Admin, Role::Supervisor])?;
    let mut errs = Vec::new();
    let after = id_cursor(&q.cursor, 0, &mut errs);
    let limit = limit_of(q.limit, 100, 500, &mut errs);
    done(errs)?;
    // Supervisors: their team's officers; NULL (admins) means everyone.
    let supervisor = match who.role {
        Role::Admin => None,
        _ => Some(who.officer_id.ok_or(ApiError::Forbidden(
            "this token does not act for an officer",
        ))?),
    };
    let mut items = officer_page(&st.db, after, supervisor, &q, limit + 1).await?;
    let next_cursor = paginate(&mut items, limit, |o| o.officer_id);
    Ok(Json(Page { items, next_cursor }))
}

/// A new officer.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOfficer {
    /// The agency's staff reference (unique, 1..=128 characters).
    pub officer_ref: String,
    /// Name (1..=200 characters).
    pub display_name: String,
    /// Team (must exist).
    pub team_ref: Option<String>,
    /// Default true.
    pub active: Option<bool>,
}

async fn team_id_of(
    tx: &mut Tx,
    field: &str,
    team_ref: &str,
    errs: &mut Vec<FieldError>,
) -> Result<Option<i64>, ApiError> {
    let id: Option<i64> = Q::new("SELECT team_id FROM teams WHERE team_ref = $1")
        .bind(team_ref)
        .scalar_opt(tx)
        .await?;
    if id.is_none() {
        errs.push(FieldError::new(field, "no team has this reference"));
    }
    Ok(id)
}

/// Creates an officer (admins). Tokens for them are issued with the CLI.
#[utoipa::path(
    post,
    path = "/officers",
    tag = "officers",
    request_body = NewOfficer,
    responses((status = 200, description = "The new officer", body = Officer), StdErrors),
    security(("bearer" = []))
)]
pub async fn create_officer(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiJson(b): ApiJson<NewOfficer>,
) -> Result<Json<Officer>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    check_text("officer_ref", &b.officer_ref, 128, &mut errs);
    check_text("display_name", &b.display_name, 200, &mut errs);
    let mut tx = st.db.begin().await?;
    let team = match &b.team_ref {
        Some(t) => team_id_of(&mut tx, "team_ref", t, &mut errs).await?,
        None => None,
    };
    done(errs)?;
    let id = insert_officer(&mut tx, &b, team)
        .await
        .map_err(unique_as("an officer with this officer_ref"))?;
    audit::record(
        &mut tx,
        &who,
        &reason,
        st.clock.now(),
        Entry::new(
            "officer.create",
            None,
            json!({"officer_id": id, "officer_ref": b.officer_ref, "team_ref": b.team_ref}),
        ),
    )
    .await?;
    let o = read_officer(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(o))
}

/// Changes to an officer; absent fields are kept.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfficerPatch {
    /// New staff reference (their supervisees follow it).
    pub officer_ref: Option<String>,
    /// New name.
    pub display_name: Option<String>,
    /// New team; `null` takes the officer out of any team.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub team_ref: Option<Option<String>>,
    /// false: deactivate (their tokens stop working at once).
    pub active: Option<bool>,
}

/// Updates an officer (admins).
#[utoipa::path(
    patch,
    path = "/officers/{id}",
    tag = "officers",
    params(("id" = i64, Path, description = "Officer id")),
    request_body = OfficerPatch,
    responses((status = 200, description = "The officer after the change", body = Officer), StdErrors),
    security(("bearer" = []))
)]
pub async fn patch_officer(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(id): ApiPath<i64>,
    ApiJson(b): ApiJson<OfficerPatch>,
) -> Result<Json<Officer>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    if b.officer_ref.is_none()
        && b.display_name.is_none()
        && b.team_ref.is_none()
        && b.active.is_none()
    {
        errs.push(FieldError::new("body", "names no field to change"));
    }
    if let Some(r) = &b.officer_ref {
        check_text("officer_ref", r, 128, &mut errs);
    }
    if let Some(n) = &b.display_name {
        check_text("display_name", n, 200, &mut errs);
    }
    let mut tx = st.db.begin().await?;
    let team = match &b.team_ref {
        Some(Some(t)) => team_id_of(&mut tx, "team_ref", t, &mut errs).await?,
        _ => None,
    };
    done(errs)?;
    let n = update_officer(&mut tx, id, &b, team)
        .await
        .map_err(unique_as("an officer with this officer_ref"))?;
    if n == 0 {
        return Err(ApiError::NotFound);
    }
    audit::record(
        &mut tx,
        &who,
        &reason,
        st.clock.now(),
        Entry::new(
            "officer.update",
            None,
            json!({"officer_id": id, "officer_ref": b.officer_ref, "team_ref": b.team_ref,
                   "active": b.active, "display_name_changed": b.display_name.is_some()}),
        ),
    )
    .await?;
    let o = read_officer(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(o))
}

/// Inserts an officer in `team`; the new id.
async fn insert_officer(
    tx: &mut Tx,
    b: &NewOfficer,
    team: Option<i64>,
) -> Result<i64, sqlx::Error> {
    Q::new(
        "INSERT INTO officers (officer_ref, display_name, team_id, active) \
         VALUES ($1, $2, $3, COALESCE($4, true)) RETURNING officer_id",
    )
    .bind(&b.officer_ref)
    .bind(&b.display_name)
    .bind(team)
    .bind(b.active)
    .scalar(tx)
    .await
}

/// Applies a patch (`team`: the id of the patch's new team); rows changed
/// (0: no such officer).
async fn update_officer(
    tx: &mut Tx,
    id: i64,
    b: &OfficerPatch,
    team: Option<i64>,
) -> Result<u64, sqlx::Error> {
    Q::new(
        "UPDATE officers SET officer_ref = COALESCE($2, officer_ref), \
           display_name = COALESCE($3, display_name), \
           team_id = CASE WHEN $4 THEN $5 ELSE team_id END, active = COALESCE($6, active) \
         WHERE officer_id = $1",
    )
    .bind(id)
    .bind(&b.officer_ref)
    .bind(&b.display_name)
    .bind(b.team_ref.is_some())
    .bind(team)
    .bind(b.active)
    .execute(tx)
    .await
}

// ---------------------------------------------------------------------------
// Teams.

/// A team of officers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Team {
    /// Id (used in the team path).
    pub team_id: i64,
    /// The agency's team reference.
    pub team_ref: String,
    /// Name.
    pub name: String,
    /// Receives escalations of the team's unacknowledged alerts.
    pub supervisor_ref: Option<String>,
    /// Number of officers in the team.
    pub officers: i64,
}

const TEAM_SQL: &str = "SELECT t.team_id, t.team_ref, t.name, o.officer_ref AS supervisor_ref, \
     (SELECT count(*) FROM officers m WHERE m.team_id = t.team_id) AS officers \
     FROM teams t LEFT JOIN officers o ON o.officer_id = t.supervisor_id";

fn team_row(r: &DbRow) -> Team {
    Team {
        team_id: r.get("team_id"),
        team_ref: r.get("team_ref"),
        name: r.get("name"),
        supervisor_ref: r.get("supervisor_ref"),
        officers: r.get("officers"),
    }
}

async fn read_team(tx: &mut Tx, id: i64) -> Result<Team, ApiError> {
    let r = Q::new(format!("{TEAM_SQL} WHERE t.team_id = $1"))
        .bind(id)
        .fetch_optional(tx)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(team_row(&r))
}

/// Page parameters.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size 1..=500 (default 100).
    pub limit: Option<i64>,
}

/// Up to `limit` teams with ids after `after`.
async fn team_page(db: &Db, after: i64, limit: i64) -> Result<Vec<Team>, sqlx::Error> {
    Ok(Q::new(format!(
        "{TEAM_SQL} WHERE t.team_id > $1 ORDER BY t.team_id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?
    .iter()
    .map(team_row)
    .collect())
}

/// Teams (admins).
#[utoipa::path(
    get,
    path = "/teams",
    tag = "teams",
    params(PageQuery),
    responses((status = 200, description = "A page of teams", body = Page<Team>), StdErrors),
    security(("bearer" = []))
)]
pub async fn list_teams(
    State(st): State<ApiState>,
    who: Principal,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<Team>>, ApiError> {
    who.require(ADMIN)?;
    let mut errs = Vec::new();
    let after = id_cursor(&q.cursor, 0, &mut errs);
    let limit = limit_of(q.limit, 100, 500, &mut errs);
    done(errs)?;
    let mut items = team_page(&st.db, after, limit + 1).await?;
    let next_cursor = paginate(&mut items, limit, |t| t.team_id);
    Ok(Json(Page { items, next_cursor }))
}

/// A new team.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTeam {
    /// The agency's team reference (unique, 1..=128 characters).
    pub team_ref: String,
    /// Name (1..=200 characters).
    pub name: String,
    /// Officer who receives the team's escalations (must exist and be
    /// active).
    pub supervisor_ref: Option<String>,
}

async fn officer_id_of(
    tx: &mut Tx,
    field: &str,
    officer_ref: &str,
    errs: &mut Vec<FieldError>,
) -> Result<Option<i64>, ApiError> {
    let row = Q::new("SELECT officer_id, active FROM officers WHERE officer_ref = $1")
        .bind(officer_ref)
        .fetch_optional(tx)
        .await?;
    Ok(match row {
        None => {
            errs.push(FieldError::new(field, "no officer has this reference"));
            None
        }
        Some(r) if !r.get::<bool>("active") => {
            errs.push(FieldError::new(field, "this officer is not active"));
            None
        }
        Some(r) => Some(r.get("officer_id")),
    })
}

/// Creates a team (admins).
#[utoipa::path(
    post,
    path = "/teams",
    tag = "teams",
    request_body = NewTeam,
    responses((status = 200, description = "The new team", body = Team), StdErrors),
    security(("bearer" = []))
)]
pub async fn create_team(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiJson(b): ApiJson<NewTeam>,
) -> Result<Json<Team>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    check_text("team_ref", &b.team_ref, 128, &mut errs);
    check_text("name", &b.name, 200, &mut errs);
    let mut tx = st.db.begin().await?;
    let sup = match &b.supervisor_ref {
        Some(r) => officer_id_of(&mut tx, "supervisor_ref", r, &mut errs).await?,
        None => None,
    };
    done(errs)?;
    let id = insert_team(&mut tx, &b, sup)
        .await
        .map_err(unique_as("a team with this team_ref"))?;
    audit::record(
        &mut tx,
        &who,
        &reason,
        st.clock.now(),
        Entry::new(
            "team.create",
            None,
            json!({"team_id": id, "team_ref": b.team_ref, "supervisor_ref": b.supervisor_ref}),
        ),
    )
    .await?;
    let t = read_team(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(t))
}

/// Changes to a team; absent fields are kept.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamPatch {
    /// New team reference.
    pub team_ref: Option<String>,
    /// New name.
    pub name: Option<String>,
    /// New supervisor; `null`: none (escalations go to the on-call group).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub supervisor_ref: Option<Option<String>>,
}

/// Updates a team (admins).
#[utoipa::path(
    patch,
    path = "/teams/{id}",
    tag = "teams",
    params(("id" = i64, Path, description = "Team id")),
    request_body = TeamPatch,
    responses((status = 200, description = "The team after the change", body = Team), StdErrors),
    security(("bearer" = []))
)]
pub async fn patch_team(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(id): ApiPath<i64>,
    ApiJson(b): ApiJson<TeamPatch>,
) -> Result<Json<Team>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    if b.team_ref.is_none() && b.name.is_none() && b.supervisor_ref.is_none() {
        errs.push(FieldError::new("body", "names no field to change"));
    }
    if let Some(r) = &b.team_ref {
        check_text("team_ref", r, 128, &mut errs);
    }
    if let Some(n) = &b.name {
        check_text("name", n, 200, &mut errs);
    }
    let mut tx = st.db.begin().await?;
    let sup = match &b.supervisor_ref {
        Some(Some(r)) => officer_id_of(&mut tx, "supervisor_ref", r, &mut errs).await?,
        _ => None,
    };
    done(errs)?;
    let n = update_team(&mut tx, id, &b, sup)
        .await
        .map_err(unique_as("a team with this team_ref"))?;
    if n == 0 {
        return Err(ApiError::NotFound);
    }
    audit::record(
        &mut tx,
        &who,
        &reason,
        st.clock.now(),
        Entry::new(
            "team.update",
            None,
            json!({"team_id": id, "team_ref": b.team_ref, "name": b.name,
                   "supervisor_ref": b.supervisor_ref}),
        ),
    )
    .await?;
    let t = read_team(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(t))
}

/// Inserts a team led by `supervisor`; the new id.
async fn insert_team(
    tx: &mut Tx,
    b: &NewTeam,
    supervisor: Option<i64>,
) -> Result<i64, sqlx::Error> {
    Q::new(
        "INSERT INTO teams (team_ref, name, supervisor_id) VALUES ($1, $2, $3) RETURNING team_id",
    )
    .bind(&b.team_ref)
    .bind(&b.name)
    .bind(supervisor)
    .scalar(tx)
    .await
}

/// Applies a patch (`supervisor`: the id of the patch's new supervisor);
/// rows changed (0: no such team).
async fn update_team(
    tx: &mut Tx,
    id: i64,
    b: &TeamPatch,
    supervisor: Option<i64>,
) -> Result<u64, sqlx::Error> {
    Q::new(
        "UPDATE teams SET team_ref = COALESCE($2, team_ref), name = COALESCE($3, name), \
           supervisor_id = CASE WHEN $4 THEN $5 ELSE supervisor_id END WHERE team_id = $1",
    )
    .bind(id)
    .bind(&b.team_ref)
    .bind(&b.name)
    .bind(b.supervisor_ref.is_some())
    .bind(supervisor)
    .execute(tx)
    .await
}

// ---------------------------------------------------------------------------
// Devices.

/// A dated assignment of a device to a supervisee.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Assignment {
    /// Id (to end it).
    pub assignment_id: i64,
    /// Who wears the device.
    pub supervisee_id: i64,
    /// Their case reference.
    pub case_ref: String,
    /// From (inclusive).
    pub valid_from: DateTime<Utc>,
    /// Until (exclusive); absent while open-ended.
    pub valid_to: Option<DateTime<Utc>>,
}

/// A device, as admins see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Device {
    /// The device's own id (as in its MQTT topic).
    pub device_id: String,
    /// When enrolled.
    pub enrolled_at: DateTime<Utc>,
    /// When revoked (its messages are refused from then on).
    pub revoked_at: Option<DateTime<Utc>>,
    /// Expected reporting interval; no-signal alerts are a multiple of it.
    pub report_interval_s: i32,
    /// Last status message received (no position).
    pub last_status_at: Option<DateTime<Utc>>,
    /// Battery level in that status.
    pub battery_pct: Option<i16>,
    /// Firmware in that status.
    pub firmware: Option<String>,
    /// The assignment in force now, if any.
    pub current_assignment: Option<Assignment>,
}

/// A device with its status and the assignment in force at `$1`
/// (PostgreSQL).
const DEVICE_SQL: &str = "SELECT d.device_key, d.device_id, d.enrolled_at, d.revoked_at, \
     d.report_interval_s, st.received_at AS last_status_at, st.battery_pct, st.firmware, \
     a.assignment_id, a.supervisee_id, s.case_ref, a.valid_from, a.valid_to \
     FROM devices d LEFT JOIN device_status st ON st.device_key = d.device_key \
     LEFT JOIN LATERAL (SELECT * FROM device_assignments x WHERE x.device_key = d.device_key \
       AND x.valid_from <= $1 AND (x.valid_to IS NULL OR x.valid_to > $1) \
       ORDER BY x.valid_from DESC LIMIT 1) a ON true \
     LEFT JOIN supervisees s ON s.supervisee_id = a.supervisee_id";

/// [`DEVICE_SQL`] for SQLite, which has no LATERAL: the assignment in force
/// is found by a correlated subquery on its id (the same row: assignments
/// of a device do not overlap).
const DEVICE_SQL_LITE: &str = "SELECT d.device_key, d.device_id, d.enrolled_at, d.revoked_at, \
     d.report_interval_s, st.received_at AS last_status_at, st.battery_pct, st.firmware, \
     a.assignment_id, a.supervisee_id, s.case_ref, a.valid_from, a.valid_to \
     FROM devices d LEFT JOIN device_status st ON st.device_key = d.device_key \
     LEFT JOIN device_assignments a ON a.assignment_id = (SELECT x.assignment_id \
       FROM device_assignments x WHERE x.device_key = d.device_key \
       AND x.valid_from <= $1 AND (x.valid_to IS NULL OR x.valid_to > $1) \
       ORDER BY x.valid_from DESC LIMIT 1) \
     LEFT JOIN supervisees s ON s.supervisee_id = a.supervisee_id";

fn device_row(r: &DbRow) -> Device {
    let current_assignment =
        r.get::<Option<i64>>("assignment_id")
            .map(|assignment_id| Assignment {
                assignment_id,
                supervisee_id: r.get("supervisee_id"),
                case_ref: r.get("case_ref"),
                valid_from: r.get("valid_from"),
                valid_to: r.get("valid_to"),
            });
    Device {
        device_id: r.get("device_id"),
        enrolled_at: r.get("enrolled_at"),
        revoked_at: r.get("revoked_at"),
        report_interval_s: r.get("report_interval_s"),
        last_status_at: r.get("last_status_at"),
        battery_pct: r.get("battery_pct"),
        firmware: r.get("firmware"),
        current_assignment,
    }
}

/// A victim device's pairing with a supervisee (proximity alerts).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Pairing {
    /// Id (to end it).
    pub pairing_id: i64,
    /// The supervisee kept away from this device.
    pub supervisee_id: i64,
    /// Their case reference.
    pub case_ref: String,
    /// Alert when closer than this, metres.
    pub enter_m: f32,
    /// Condition ends when farther than this, metres.
    pub exit_m: f32,
    /// When the pairing ended.
    pub ended_at: Option<DateTime<Utc>>,
}

/// A device with its assignment history and pairings.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeviceDetail {
    /// The device.
    #[serde(flatten)]
    pub device: Device,
    /// Assignments, newest first (at most 200).
    pub assignments: Vec<Assignment>,
    /// Pairings in which this is the victim's device.
    pub pairings: Vec<Pairing>,
}

/// The device row's key and revocation, locked for the transaction.
async fn lock_device(
    tx: &mut Tx,
    device_id: &str,
) -> Result<(i64, Option<DateTime<Utc>>), ApiError> {
    let r = Q::new("SELECT device_key, revoked_at FROM devices WHERE device_id = $1 FOR UPDATE")
        .bind(device_id)
        .fetch_optional(tx)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok((r.get("device_key"), r.get("revoked_at")))
}

/// The device with its assignment in force at `now`, its assignment
/// history and its pairings.
async fn read_device(
    on: impl Into<On<'_>>,
    device_id: &str,
    now: DateTime<Utc>,
) -> Result<DeviceDetail, ApiError> {
    let mut on = on.into();
    let r = Q::split(
        format!("{DEVICE_SQL} WHERE d.device_id = $2"),
        format!("{DEVICE_SQL_LITE} WHERE d.device_id = $2"),
    )
    .bind(now)
    .bind(device_id)
    .fetch_optional(on.reborrow())
    .await?
    .ok_or(ApiError::NotFound)?;
    let key: i64 = r.get("device_key");
    let device = device_row(&r);
    let assignments = Q::new(
        "SELECT a.assignment_id, a.supervisee_id, s.case_ref, a.valid_from, a.valid_to \
         FROM device_assignments a JOIN supervisees s ON s.supervisee_id = a.supervisee_id \
         WHERE a.device_key = $1 ORDER BY a.valid_from DESC, a.assignment_id DESC LIMIT 200",
    )
    .bind(key)
    .fetch_all(on.reborrow())
    .await?
    .iter()
    .map(|r| Assignment {
        assignment_id: r.get("assignment_id"),
        supervisee_id: r.get("supervisee_id"),
        case_ref: r.get("case_ref"),
        valid_from: r.get("valid_from"),
        valid_to: r.get("valid_to"),
    })
    .collect();
    let pairings = Q::new(
        "SELECT p.pairing_id, p.supervisee_id, s.case_ref, p.enter_m, p.exit_m, p.ended_at \
         FROM victim_pairings p JOIN supervisees s ON s.supervisee_id = p.supervisee_id \
         WHERE p.victim_device_key = $1 ORDER BY p.pairing_id LIMIT 200",
    )
    .bind(key)
    .fetch_all(on)
    .await?
    .iter()
    .map(|r| Pairing {
        pairing_id: r.get("pairing_id"),
        supervisee_id: r.get("supervisee_id"),
        case_ref: r.get("case_ref"),
        enter_m: r.get("enter_m"),
        exit_m: r.get("exit_m"),
        ended_at: r.get("ended_at"),
    })
    .collect();
    Ok(DeviceDetail {
        device,
        assignments,
        pairings,
    })
}

/// Filters of the device list.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// Device ids starting with this text.
    pub q: Option<String>,
    /// Only revoked (true) or enrolled (false) devices.
    pub revoked: Option<bool>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size 1..=500 (default 100).
    pub limit: Option<i64>,
}

/// Up to `limit` devices (with their keys, the page cursor) enrolled after
/// the one with key `after`, filtered by `q`, with their assignments in
/// force at `now`.
async fn device_page(
    db: &Db,
    now: DateTime<Utc>,
    after: i64,
    q: &DeviceQuery,
    limit: i64,
) -> Result<Vec<(i64, Device)>, sqlx::Error> {
    let rows = Q::split(
        format!(
            "{DEVICE_SQL} WHERE d.device_key > $2 \
               AND ($3::text IS NULL OR starts_with(d.device_id, $3)) \
               AND ($4::boolean IS NULL OR (d.revoked_at IS NOT NULL) = $4) \
             ORDER BY d.device_key LIMIT $5"
        ),
        // No starts_with in SQLite.
        format!(
            "{DEVICE_SQL_LITE} WHERE d.device_key > $2 \
               AND ($3 IS NULL OR substr(d.device_id, 1, length($3)) = $3) \
               AND ($4 IS NULL OR (d.revoked_at IS NOT NULL) = $4) \
             ORDER BY d.device_key LIMIT $5"
        ),
    )
    .bind(now)
    .bind(after)
    .bind(&q.q)
    .bind(q.revoked)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get("device_key"), device_row(r)))
        .collect())
}

/// Devices, in enrollment order (admins).
#[utoipa::path(
    get,
    path = "/devices",
    tag = "devices",
    params(DeviceQuery),
    responses((status = 200, description = "A page of devices", body = Page<Device>), StdErrors),
    security(("bearer" = []))
)]
pub async fn list_devices(
    State(st): State<ApiState>,
    who: Principal,
    ApiQuery(q): ApiQuery<DeviceQuery>,
) -> Result<Json<Page<Device>>, ApiError> {
    who.require(ADMIN)?;
    let mut errs = Vec::new();
    let after = id_cursor(&q.cursor, 0, &mut errs);
    let limit = limit_of(q.limit, 100, 500, &mut errs);
    if q.q.as_ref().is_some_and(|p| p.len() > 64) {
        errs.push(FieldError::new("q", "longer than 64 characters"));
    }
    done(errs)?;
    let mut keyed = device_page(&st.db, st.clock.now(), after, &q, limit + 1).await?;
    let next_cursor = paginate(&mut keyed, limit, |(k, _)| *k);
    Ok(Json(Page {
        items: keyed.into_iter().map(|(_, d)| d).collect(),
        next_cursor,
    }))
}

/// One device with its assignments and pairings (admins).
#[utoipa::path(
    get,
    path = "/devices/{device_id}",
    tag = "devices",
    params(("device_id" = String, Path, description = "Device id")),
    responses((status = 200, description = "The device", body = DeviceDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn get_device(
    State(st): State<ApiState>,
    who: Principal,
    ApiPath(device_id): ApiPath<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    who.require(ADMIN)?;
    Ok(Json(read_device(&st.db, &device_id, st.clock.now()).await?))
}

/// A device to enroll.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// 1..=64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
    pub device_id: String,
    /// Expected reporting interval, 1..=86400 s (default 60).
    pub report_interval_s: Option<i32>,
}

fn check_interval(v: i32, errs: &mut Vec<FieldError>) {
    if !(1..=86_400).contains(&v) {
        errs.push(FieldError::new("report_interval_s", "must be 1..=86400"));
    }
}

/// Enrolls a device (admins); running servers accept its messages within
/// moments.
#[utoipa::path(
    post,
    path = "/devices",
    tag = "devices",
    request_body = NewDevice,
    responses((status = 200, description = "The enrolled device", body = DeviceDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn create_device(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiJson(b): ApiJson<NewDevice>,
) -> Result<Json<DeviceDetail>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    if let Err(e) = DeviceId::parse(&b.device_id) {
        errs.push(FieldError::new("device_id", e.to_string()));
    }
    if let Some(i) = b.report_interval_s {
        check_interval(i, &mut errs);
    }
    done(errs)?;
    let now = st.clock.now();
    let mut tx = st.db.begin().await?;
    insert_device(&mut tx, &b, now)
        .await
        .map_err(unique_as("a device with this device_id"))?;
    audit::record(
        &mut tx,
        &who,
        &reason,
        now,
        Entry::new(
            "device.create",
            None,
            json!({"device_id": b.device_id, "report_interval_s": b.report_interval_s}),
        ),
    )
    .await?;
    let d = read_device(&mut tx, &b.device_id, now).await?;
    tx.commit().await?;
    Ok(Json(d))
}

/// Enrolls a device at `now`.
async fn insert_device(tx: &mut Tx, b: &NewDevice, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    Q::new(
        "INSERT INTO devices (device_id, enrolled_at, report_interval_s) \
         VALUES ($1, $2, COALESCE($3, 60))",
    )
    .bind(&b.device_id)
    .bind(now)
    .bind(b.report_interval_s)
    .execute(tx)
    .await?;
    Ok(())
}

/// Sets a device's reporting interval; rows changed (0: no such device).
async fn set_interval(tx: &mut Tx, device_id: &str, secs: i32) -> Result<u64, sqlx::Error> {
    Q::new("UPDATE devices SET report_interval_s = $2 WHERE device_id = $1")
        .bind(device_id)
        .bind(secs)
        .execute(tx)
        .await
}

/// Marks a device revoked from `at`.
async fn set_revoked(tx: &mut Tx, device_key: i64, at: DateTime<Utc>) -> Result<(), sqlx::Error> {
    Q::new("UPDATE devices SET revoked_at = $2 WHERE device_key = $1")
        .bind(device_key)
        .bind(at)
        .execute(tx)
        .await?;
    Ok(())
}

/// Changes to a device.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// Expected reporting interval, 1..=86400 s.
    pub report_interval_s: i32,
}

/// Changes a device's reporting interval (admins).
#[utoipa::path(
    patch,
    path = "/devices/{device_id}",
    tag = "devices",
    params(("device_id" = String, Path, description = "Device id")),
    request_body = DevicePatch,
    responses((status = 200, description = "The device after the change", body = DeviceDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn patch_device(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(device_id): ApiPath<String>,
    ApiJson(b): ApiJson<DevicePatch>,
) -> Result<Json<DeviceDetail>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    check_interval(b.report_interval_s, &mut errs);
    done(errs)?;
    let now = st.clock.now();
    let mut tx = st.db.begin().await?;
    let n = set_interval(&mut tx, &device_id, b.report_interval_s).await?;
    if n == 0 {
        return Err(ApiError::NotFound);
    }
    audit::record(
        &mut tx,
        &who,
        &reason,
        now,
        Entry::new(
            "device.update",
            None,
            json!({"device_id": device_id, "report_interval_s": b.report_interval_s}),
        ),
    )
    .await?;
    let d = read_device(&mut tx, &device_id, now).await?;
    tx.commit().await?;
    Ok(Json(d))
}

/// Revokes a device (admins): its messages are refused from now on. A
/// device already revoked is a 409 (the first revocation time is kept).
#[utoipa::path(
    post,
    path = "/devices/{device_id}/revoke",
    tag = "devices",
    params(("device_id" = String, Path, description = "Device id")),
    responses((status = 200, description = "The revoked device", body = DeviceDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn revoke_device(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(device_id): ApiPath<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    who.require(ADMIN)?;
    let now = st.clock.now();
    let mut tx = st.db.begin().await?;
    let (key, revoked) = lock_device(&mut tx, &device_id).await?;
    if let Some(at) = revoked {
        return Err(ApiError::Conflict(format!(
            "device {device_id} was already revoked at {}",
            at.to_rfc3339()
        )));
    }
    set_revoked(&mut tx, key, now).await?;
    audit::record(
        &mut tx,
        &who,
        &reason,
        now,
        Entry::new("device.revoke", None, json!({"device_id": device_id})),
    )
    .await?;
    let d = read_device(&mut tx, &device_id, now).await?;
    tx.commit().await?;
    Ok(Json(d))
}

/// A dated assignment to make.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAssignment {
    /// Who will wear the device.
    pub supervisee_id: i64,
    /// From (inclusive).
    pub valid_from: DateTime<Utc>,
    /// Until (exclusive); absent: until ended.
    pub valid_to: Option<DateTime<Utc>>,
}

fn fmt_period(from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> String {
    match to {
        Some(t) => format!("from {} to {}", from.to_rfc3339(), t.to_rfc3339()),
        None => format!("from {} with no end", from.to_rfc3339()),
    }
}

/// Assigns a device to a supervisee for a dated period (admins). A device
/// is worn by one person at a time: an overlapping assignment is a 409
/// naming the one in the way.
#[utoipa::path(
    post,
    path = "/devices/{device_id}/assignments",
    tag = "devices",
    params(("device_id" = String, Path, description = "Device id")),
    request_body = NewAssignment,
    responses((status = 200, description = "The device with the new assignment", body = DeviceDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn assign_device(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(device_id): ApiPath<String>,
    ApiJson(b): ApiJson<NewAssignment>,
) -> Result<Json<DeviceDetail>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    if b.valid_to.is_some_and(|t| t <= b.valid_from) {
        errs.push(FieldError::new("valid_to", "must be after valid_from"));
    }
    let now = st.clock.now();
    let mut tx = st.db.begin().await?;
    // The row lock serialises assignments of one device (the exclusion
    // constraint stays the last word).
    let (key, revoked) = lock_device(&mut tx, &device_id).await?;
    if !supervisee_exists(&mut tx, b.supervisee_id).await? {
        errs.push(FieldError::new(
            "supervisee_id",
            "no supervisee has this id",
        ));
    }
    done(errs)?;
    if revoked.is_some() {
        return Err(ApiError::Conflict(format!(
            "device {device_id} is revoked; it cannot be assigned"
        )));
    }
    keep_history(&mut tx, key, b.valid_from, "valid_from").await?;
    let paired = open_pairing_of(&mut tx, key).await?;
    if let Some(p) = paired {
        return Err(ApiError::Conflict(format!(
            "device {device_id} is a victim's device (pairing {p}); end the pairing before \
             assigning it to a supervisee"
        )));
    }
    let clash = assignment_clash(&mut tx, key, b.valid_from, b.valid_to).await?;
    let overlap = |aid: Option<i64>, sid: Option<i64>, period: String| {
        ApiError::Conflict(format!(
            "device {device_id} is already assigned {period}{}{}: a device is worn by one \
             person at a time; end that assignment or choose dates that do not overlap",
            aid.map_or(String::new(), |a| format!(" (assignment {a}")),
            sid.map_or(String::new(), |s| format!(", supervisee {s})")),
        ))
    };
    if let Some(c) = clash {
        return Err(overlap(
            Some(c.assignment_id),
            Some(c.supervisee_id),
            fmt_period(c.valid_from, c.valid_to),
        ));
    }
    let aid = insert_assignment(&mut tx, key, &b).await.map_err(|e| {
        // The schema's last word on overlaps (exclusion constraint,
        // SQLite trigger): a concurrent assignment got in first.
        if sql::violation(&e) == Some(Violation::Unique) {
            overlap(None, None, "for part of this period".into())
        } else {
            e.into()
        }
    })?;
    audit::record(
        &mut tx,
        &who,
        &reason,
        now,
        Entry::supervisee("device.assign", b.supervisee_id).with(json!({
            "device_id": device_id, "assignment_id": aid,
            "valid_from": b.valid_from, "valid_to": b.valid_to,
        })),
    )
    .await?;
    let d = read_device(&mut tx, &device_id, now).await?;
    tx.commit().await?;
    Ok(Json(d))
}

/// When an assignment ends.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndAssignment {
    /// End (exclusive): after the assignment's start, and before its
    /// current end if it has one.
    pub at: DateTime<Utc>,
}

/// Ends (or brings forward the end of) an assignment (admins), e.g. when
/// the device is handed back.
#[utoipa::path(
    post,
    path = "/devices/{device_id}/assignments/{assignment_id}/end",
    tag = "devices",
    params(
        ("device_id" = String, Path, description = "Device id"),
        ("assignment_id" = i64, Path, description = "Assignment id"),
    ),
    request_body = EndAssignment,
    responses((status = 200, description = "The device after the change", body = DeviceDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn end_assignment(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath((device_id, assignment_id)): ApiPath<(String, i64)>,
    ApiJson(b): ApiJson<EndAssignment>,
) -> Result<Json<DeviceDetail>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let now = st.clock.now();
    let mut tx = st.db.begin().await?;
    let (sid, from, to, device_key) = lock_assignment(&mut tx, &device_id, assignment_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if b.at <= from {
        return Err(ApiError::field(
            "at",
            format!(
                "must be after the assignment's valid_from ({})",
                from.to_rfc3339()
            ),
        ));
    }
    if let Some(t) = to.filter(|t| b.at >= *t) {
        return Err(ApiError::Conflict(format!(
            "assignment {assignment_id} already ends at {}",
            t.to_rfc3339()
        )));
    }
    keep_history(&mut tx, device_key, b.at, "at").await?;
    set_assignment_end(&mut tx, assignment_id, b.at).await?;
    audit::record(
        &mut tx,
        &who,
        &reason,
        now,
        Entry::supervisee("device.unassign", sid).with(json!({
            "device_id": device_id, "assignment_id": assignment_id,
            "valid_to": b.at, "previous_valid_to": to,
        })),
    )
    .await?;
    let d = read_device(&mut tx, &device_id, now).await?;
    tx.commit().await?;
    Ok(Json(d))
}

/// A victim device to pair with a supervisee.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPairing {
    /// The supervisee to be kept away from this device.
    pub supervisee_id: i64,
    /// Alert when closer than this, metres (0 < enter_m <= 100000).
    pub enter_m: f64,
    /// The condition ends beyond this, metres (>= enter_m; hysteresis).
    pub exit_m: f64,
}

/// Pairs this (victim's) device with a supervisee for proximity alerts
/// (admins). Pairing the same two again updates the distances and reopens
/// an ended pairing.
#[utoipa::path(
    post,
    path = "/devices/{device_id}/pairing",
    tag = "devices",
    params(("device_id" = String, Path, description = "The victim's device id")),
    request_body = NewPairing,
    responses((status = 200, description = "The device with its pairings", body = DeviceDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn pair_device(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(device_id): ApiPath<String>,
    ApiJson(b): ApiJson<NewPairing>,
) -> Result<Json<DeviceDetail>, ApiError> {
    who.require(ADMIN)?;
    // Authorization before validation: a forbidden caller learns nothing
    // from the body's errors.
    let b = b?;
    let mut errs = Vec::new();
    if !(b.enter_m.is_finite() && b.enter_m > 0.0 && b.enter_m <= 100_000.0) {
        errs.push(FieldError::new("enter_m", "must be > 0 and <= 100000"));
    } else if !(b.exit_m.is_finite() && b.exit_m >= b.enter_m && b.exit_m <= 200_000.0) {
        errs.push(FieldError::new(
            "exit_m",
            "must be at least enter_m and <= 200000",
        ));
    }
    let now = st.clock.now();
    let mut tx = st.db.begin().await?;
    let (key, revoked) = lock_device(&mut tx, &device_id).await?;
    if !supervisee_exists(&mut tx, b.supervisee_id).await? {
        errs.push(FieldError::new(
            "supervisee_id",
            "no supervisee has this id",
        ));
    }
    done(errs)?;
    if revoked.is_some() {
        return Err(ApiError::Conflict(format!(
            "device {device_id} is revoked; it cannot be paired"
        )));
    }
    let worn = worn_assignment(&mut tx, key, now).await?;
    if let Some(a) = worn {
        return Err(ApiError::Conflict(format!(
            "device {device_id} is assigned to a supervisee (assignment {a}); a victim's \
             device must not also be a supervisee's"
        )));
    }
    let pid = upsert_pairing(&mut tx, key, &b).await?;
    audit::record(
        &mut tx,
        &who,
        &reason,
        now,
        Entry::supervisee("device.pair", b.supervisee_id).with(json!({
            "device_id": device_id, "pairing_id": pid, "enter_m": b.enter_m, "exit_m": b.exit_m,
        })),
    )
    .await?;
    let d = read_device(&mut tx, &device_id, now).await?;
    tx.commit().await?;
    Ok(Json(d))
}

/// Ends a victim-device pairing now (admins); proximity alerts for it stop.
#[utoipa::path(
    post,
    path = "/devices/{device_id}/pairings/{pairing_id}/end",
    tag = "devices",
    params(
        ("device_id" = String, Path, description = "The victim's device id"),
        ("pairing_id" = i64, Path, description = "Pairing id"),
    ),
    responses((status = 200, description = "The device with its pairings", body = DeviceDetail), StdErrors),
    security(("bearer" = []))
)]
pub async fn end_pairing(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath((device_id, pairing_id)): ApiPath<(String, i64)>,
) -> Result<Json<DeviceDetail>, ApiError> {
    who.require(ADMIN)?;
    let now = st.clock.now();
    let mut tx = st.db.begin().await?;
    let (sid, ended) = lock_pairing(&mut tx, &device_id, pairing_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if let Some(at) = ended {
        return Err(ApiError::Conflict(format!(
            "pairing {pairing_id} already ended at {}",
            at.to_rfc3339()
        )));
    }
    set_pairing_end(&mut tx, pairing_id, now).await?;
    audit::record(
        &mut tx,
        &who,
        &reason,
        now,
        Entry::supervisee("device.unpair", sid)
            .with(json!({"device_id": device_id, "pairing_id": pairing_id})),
    )
    .await?;
    let d = read_device(&mut tx, &device_id, now).await?;
    tx.commit().await?;
    Ok(Json(d))
}

/// Routes of this module.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_supervisees, create_supervisee))
        .routes(routes!(get_supervisee, patch_supervisee))
        .routes(routes!(list_officers, create_officer))
        .routes(routes!(patch_officer))
        .routes(routes!(list_teams, create_team))
        .routes(routes!(patch_team))
        .routes(routes!(list_devices, create_device))
        .routes(routes!(get_device, patch_device))
        .routes(routes!(revoke_device))
        .routes(routes!(assign_device))
        .routes(routes!(end_assignment))
        .routes(routes!(pair_device))
        .routes(routes!(end_pairing))
}

/// Recorded positions stay with the person they were recorded for: an
/// assignment may not start, nor end, before the device's newest stored
/// fix. Otherwise re-dating assignments would move a person's history into
/// another caseload (readable by that officer, exported under that name).
async fn keep_history(
    tx: &mut Tx,
    device_key: i64,
    at: DateTime<Utc>,
    field: &str,
) -> Result<(), ApiError> {
    match newest_fix_from(tx, device_key, at).await? {
        None => Ok(()),
        Some(t) => Err(ApiError::field(
            field,
            format!(
                "the device has stored fixes up to {}; an assignment cannot be re-dated over \
                 recorded history (choose a time after it)",
                t.to_rfc3339()
            ),
        )),
    }
}

/// The device's newest stored fix time at or after `at`.
async fn newest_fix_from(
    tx: &mut Tx,
    device_key: i64,
    at: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    Q::new("SELECT max(fix_time) FROM fixes WHERE device_key = $1 AND fix_time >= $2")
        .bind(device_key)
        .bind(at)
        .scalar(tx)
        .await
}

// ---------------------------------------------------------------------------
// Assignment and pairing statements.

async fn supervisee_exists(tx: &mut Tx, id: i64) -> Result<bool, sqlx::Error> {
    Q::new("SELECT EXISTS (SELECT 1 FROM supervisees WHERE supervisee_id = $1)")
        .bind(id)
        .scalar(tx)
        .await
}

/// An open pairing in which this device is the victim's, if any.
async fn open_pairing_of(tx: &mut Tx, device_key: i64) -> Result<Option<i64>, sqlx::Error> {
    Q::new(
        "SELECT pairing_id FROM victim_pairings WHERE victim_device_key = $1 AND ended_at IS NULL \
         LIMIT 1",
    )
    .bind(device_key)
    .scalar_opt(tx)
    .await
}

/// An existing assignment of the device whose period overlaps
/// `[from, to)` (`to` = `None`: open-ended).
struct Clash {
    assignment_id: i64,
    supervisee_id: i64,
    valid_from: DateTime<Utc>,
    valid_to: Option<DateTime<Utc>>,
}

/// The earliest assignment of the device overlapping `[from, to)`.
async fn assignment_clash(
    tx: &mut Tx,
    device_key: i64,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
) -> Result<Option<Clash>, sqlx::Error> {
    // PostgreSQL: the range test the exclusion constraint's index answers.
    // SQLite: the same half-open test spelt out (NULL = no end), as in the
    // schema's overlap triggers.
    let r = Q::split(
        "SELECT assignment_id, supervisee_id, valid_from, valid_to FROM device_assignments \
         WHERE device_key = $1 AND tstzrange(valid_from, valid_to) && tstzrange($2, $3) \
         ORDER BY valid_from LIMIT 1",
        "SELECT assignment_id, supervisee_id, valid_from, valid_to FROM device_assignments \
         WHERE device_key = $1 AND (valid_to IS NULL OR $2 < valid_to) \
           AND ($3 IS NULL OR valid_from < $3) \
         ORDER BY valid_from LIMIT 1",
    )
    .bind(device_key)
    .bind(from)
    .bind(to)
    .fetch_optional(tx)
    .await?;
    Ok(r.map(|c| Clash {
        assignment_id: c.get("assignment_id"),
        supervisee_id: c.get("supervisee_id"),
        valid_from: c.get("valid_from"),
        valid_to: c.get("valid_to"),
    }))
}

/// Inserts an assignment of the device; its id.
async fn insert_assignment(
    tx: &mut Tx,
    device_key: i64,
    b: &NewAssignment,
) -> Result<i64, sqlx::Error> {
    Q::new(
        "INSERT INTO device_assignments (device_key, supervisee_id, valid_from, valid_to) \
         VALUES ($1, $2, $3, $4) RETURNING assignment_id",
    )
    .bind(device_key)
    .bind(b.supervisee_id)
    .bind(b.valid_from)
    .bind(b.valid_to)
    .scalar(tx)
    .await
}

/// `(supervisee_id, valid_from, valid_to, device_key)` of the device's
/// assignment, locked until the transaction ends.
async fn lock_assignment(
    tx: &mut Tx,
    device_id: &str,
    assignment_id: i64,
) -> Result<Option<(i64, DateTime<Utc>, Option<DateTime<Utc>>, i64)>, sqlx::Error> {
    // `FOR UPDATE OF` has no SQLite form (nor need: one writer at a time).
    const SELECT: &str = "SELECT a.supervisee_id, a.valid_from, a.valid_to, a.device_key \
         FROM device_assignments a JOIN devices d ON d.device_key = a.device_key \
         WHERE d.device_id = $1 AND a.assignment_id = $2";
    let r = Q::split(format!("{SELECT} FOR UPDATE OF a"), SELECT)
        .bind(device_id)
        .bind(assignment_id)
        .fetch_optional(tx)
        .await?;
    Ok(r.map(|r| {
        (
            r.get("supervisee_id"),
            r.get("valid_from"),
            r.get("valid_to"),
            r.get("device_key"),
        )
    }))
}

async fn set_assignment_end(
    tx: &mut Tx,
    assignment_id: i64,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    Q::new("UPDATE device_assignments SET valid_to = $2 WHERE assignment_id = $1")
        .bind(assignment_id)
        .bind(at)
        .execute(tx)
        .await?;
    Ok(())
}

/// An assignment of the device in force at `now` or later, if any.
async fn worn_assignment(
    tx: &mut Tx,
    device_key: i64,
    now: DateTime<Utc>,
) -> Result<Option<i64>, sqlx::Error> {
    Q::new(
        "SELECT assignment_id FROM device_assignments WHERE device_key = $1 \
         AND (valid_to IS NULL OR valid_to > $2) LIMIT 1",
    )
    .bind(device_key)
    .bind(now)
    .scalar_opt(tx)
    .await
}

/// Pairs the victim's device with the supervisee, or updates and reopens
/// their pairing; its id.
async fn upsert_pairing(tx: &mut Tx, device_key: i64, b: &NewPairing) -> Result<i64, sqlx::Error> {
    Q::new(
        "INSERT INTO victim_pairings (victim_device_key, supervisee_id, enter_m, exit_m) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (victim_device_key, supervisee_id) DO UPDATE \
         SET enter_m = EXCLUDED.enter_m, exit_m = EXCLUDED.exit_m, ended_at = NULL \
         RETURNING pairing_id",
    )
    .bind(device_key)
    .bind(b.supervisee_id)
    .bind(b.enter_m as f32)
    .bind(b.exit_m as f32)
    .scalar(tx)
    .await
}

/// `(supervisee_id, ended_at)` of the device's pairing, locked until the
/// transaction ends.
async fn lock_pairing(
    tx: &mut Tx,
    device_id: &str,
    pairing_id: i64,
) -> Result<Option<(i64, Option<DateTime<Utc>>)>, sqlx::Error> {
    // `FOR UPDATE OF` has no SQLite form (nor need: one writer at a time).
    const SELECT: &str = "SELECT p.supervisee_id, p.ended_at FROM victim_pairings p \
         JOIN devices d ON d.device_key = p.victim_device_key \
         WHERE d.device_id = $1 AND p.pairing_id = $2";
    let r = Q::split(format!("{SELECT} FOR UPDATE OF p"), SELECT)
        .bind(device_id)
        .bind(pairing_id)
        .fetch_optional(tx)
        .await?;
    Ok(r.map(|r| (r.get("supervisee_id"), r.get("ended_at"))))
}

async fn set_pairing_end(
    tx: &mut Tx,
    pairing_id: i64,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    Q::new("UPDATE victim_pairings SET ended_at = $2 WHERE pairing_id = $1")
        .bind(pairing_id)
        .bind(at)
        .execute(tx)
        .await?;
    Ok(())
}

/// The statements above on a real SQLite database built from
/// migrations/sqlite (PostgreSQL is covered by tests/api_*.rs).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::LitePools;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    /// A fresh database file with the embedded mode's pools: one writer,
    /// read-only readers.
    async fn lite() -> (Db, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("waypoint.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true);
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
        (Db::Lite(LitePools { write, read }), dir)
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn admin() -> Principal {
        Principal {
            token_id: 1,
            role: Role::Admin,
            officer_ref: None,
            officer_id: None,
        }
    }

    fn caseworker(role: Role, officer_ref: &str, officer_id: i64) -> Principal {
        Principal {
            token_id: 2,
            role,
            officer_ref: Some(officer_ref.into()),
            officer_id: Some(officer_id),
        }
    }

    fn new_officer(r: &str) -> NewOfficer {
        NewOfficer {
            officer_ref: r.into(),
            display_name: format!("Officer {r}"),
            team_ref: None,
            active: None,
        }
    }

    fn new_sup(case_ref: &str, officer_ref: &str) -> NewSupervisee {
        NewSupervisee {
            case_ref: case_ref.into(),
            display_name: None,
            time_zone: "Europe/London".into(),
            officer_ref: officer_ref.into(),
        }
    }

    fn new_device(id: &str) -> NewDevice {
        NewDevice {
            device_id: id.into(),
            report_interval_s: None,
        }
    }

    fn assignment(sid: i64, from: &str, to: Option<&str>) -> NewAssignment {
        NewAssignment {
            supervisee_id: sid,
            valid_from: t(from),
            valid_to: to.map(t),
        }
    }

    /// Two teams: alpha (officers a1 and a2, supervised by s1, who is in no
    /// team) and beta (b1); one supervisee per officer. Ids: team alpha 1,
    /// beta 2; officers a1 1, a2 2, s1 3, b1 4.
    async fn people(db: &Db) {
        let mut tx = db.begin().await.unwrap();
        let alpha = insert_team(
            &mut tx,
            &NewTeam {
                team_ref: "alpha".into(),
                name: "Alpha".into(),
                supervisor_ref: None,
            },
            None,
        )
        .await
        .unwrap();
        let beta = insert_team(
            &mut tx,
            &NewTeam {
                team_ref: "beta".into(),
                name: "Beta".into(),
                supervisor_ref: None,
            },
            None,
        )
        .await
        .unwrap();
        insert_officer(&mut tx, &new_officer("a1"), Some(alpha))
            .await
            .unwrap();
        insert_officer(&mut tx, &new_officer("a2"), Some(alpha))
            .await
            .unwrap();
        let s1 = insert_officer(&mut tx, &new_officer("s1"), None)
            .await
            .unwrap();
        insert_officer(&mut tx, &new_officer("b1"), Some(beta))
            .await
            .unwrap();
        let patch = TeamPatch {
            supervisor_ref: Some(Some("s1".into())),
            ..Default::default()
        };
        assert_eq!(
            update_team(&mut tx, alpha, &patch, Some(s1)).await.unwrap(),
            1
        );
        for (case, officer) in [
            ("AB-1", "a1"),
            ("ab-2", "a2"),
            ("AB-3", "s1"),
            ("X-4", "b1"),
        ] {
            insert_supervisee(&mut tx, &new_sup(case, officer))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }

    fn cases(page: &[SuperviseeSummary]) -> Vec<&str> {
        page.iter().map(|s| s.case_ref.as_str()).collect()
    }

    #[tokio::test]
    async fn supervisee_pages_follow_scope_filters_and_prefix() {
        let (db, _dir) = lite().await;
        people(&db).await;
        let all = SuperviseeQuery::default();
        let page = supervisee_page(&db, &admin(), 0, &all, 10).await.unwrap();
        assert_eq!(cases(&page), ["AB-1", "ab-2", "AB-3", "X-4"]);
        assert_eq!(page[0].time_zone, "Europe/London");
        // Cursor and limit.
        let page = supervisee_page(&db, &admin(), page[1].supervisee_id, &all, 1)
            .await
            .unwrap();
        assert_eq!(cases(&page), ["AB-3"]);
        // Prefix match is case-sensitive, like starts_with.
        let q = SuperviseeQuery {
            q: Some("AB".into()),
            ..Default::default()
        };
        let page = supervisee_page(&db, &admin(), 0, &q, 10).await.unwrap();
        assert_eq!(cases(&page), ["AB-1", "AB-3"]);
        let q = SuperviseeQuery {
            officer_ref: Some("a2".into()),
            ..Default::default()
        };
        let page = supervisee_page(&db, &admin(), 0, &q, 10).await.unwrap();
        assert_eq!(cases(&page), ["ab-2"]);
        // An officer: their caseload; the supervisor of alpha: alpha's and
        // their own; an auditor: nothing.
        let who = caseworker(Role::Officer, "a1", 1);
        let page = supervisee_page(&db, &who, 0, &all, 10).await.unwrap();
        assert_eq!(cases(&page), ["AB-1"]);
        let who = caseworker(Role::Supervisor, "s1", 3);
        let page = supervisee_page(&db, &who, 0, &all, 10).await.unwrap();
        assert_eq!(cases(&page), ["AB-1", "ab-2", "AB-3"]);
        let auditor = Principal {
            role: Role::Auditor,
            ..admin()
        };
        assert!(supervisee_page(&db, &auditor, 0, &all, 10)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn supervisee_detail_and_patch() {
        let (db, _dir) = lite().await;
        people(&db).await;
        let now = t("2026-03-01T12:00:00Z");
        let mut tx = db.begin().await.unwrap();
        let dev = |id: &'static str| new_device(id);
        insert_device(&mut tx, &dev("tag-1"), now).await.unwrap();
        insert_device(&mut tx, &dev("tag-2"), now).await.unwrap();
        insert_device(&mut tx, &dev("victim-1"), now).await.unwrap();
        // Ended, current and upcoming assignments of supervisee 1.
        let past = assignment(1, "2026-01-01T00:00:00Z", Some("2026-02-01T00:00:00Z"));
        insert_assignment(&mut tx, 1, &past).await.unwrap();
        let current = assignment(1, "2026-02-01T00:00:00Z", Some("2026-03-01T12:00:00.5Z"));
        insert_assignment(&mut tx, 1, &current).await.unwrap();
        let later = assignment(1, "2026-04-01T00:00:00Z", None);
        insert_assignment(&mut tx, 2, &later).await.unwrap();
        let pairing = NewPairing {
            supervisee_id: 1,
            enter_m: 500.0,
            exit_m: 750.0,
        };
        upsert_pairing(&mut tx, 3, &pairing).await.unwrap();
        // Read inside the transaction that wrote (the single writer must
        // not be asked twice).
        let d = read_supervisee(&mut tx, &admin(), 1, now).await.unwrap();
        tx.commit().await.unwrap();
        let ids: Vec<_> = d.devices.iter().map(|w| w.device_id.as_str()).collect();
        assert_eq!(ids, ["tag-1", "tag-2"]);
        assert_eq!(d.devices[0].valid_to, Some(t("2026-03-01T12:00:00.5Z")));
        assert_eq!(d.devices[1].valid_to, None);
        assert_eq!(d.victim_pairings, 1);
        // Outside the caller's scope: not found.
        let other = caseworker(Role::Officer, "b1", 4);
        assert!(matches!(
            read_supervisee(&db, &other, 1, now).await,
            Err(ApiError::NotFound)
        ));

        let mut tx = db.begin().await.unwrap();
        assert_eq!(
            lock_supervisee(&mut tx, 1).await.unwrap(),
            Some(Some("a1".into()))
        );
        assert_eq!(lock_supervisee(&mut tx, 99).await.unwrap(), None);
        let patch = SuperviseePatch {
            display_name: Some(Some("Pat".into())),
            officer_ref: Some("b1".into()),
            ..Default::default()
        };
        update_supervisee(&mut tx, 1, &patch).await.unwrap();
        tx.commit().await.unwrap();
        let d = read_supervisee(&db, &other, 1, now).await.unwrap();
        assert_eq!(d.supervisee.display_name.as_deref(), Some("Pat"));
        assert_eq!(d.supervisee.time_zone, "Europe/London");
        // Absent keeps, null clears.
        let mut tx = db.begin().await.unwrap();
        let keep = SuperviseePatch {
            time_zone: Some("Europe/Paris".into()),
            ..Default::default()
        };
        update_supervisee(&mut tx, 1, &keep).await.unwrap();
        let clear = SuperviseePatch {
            display_name: Some(None),
            ..Default::default()
        };
        let d = read_supervisee(&mut tx, &admin(), 1, now).await.unwrap();
        assert_eq!(d.supervisee.display_name.as_deref(), Some("Pat"));
        update_supervisee(&mut tx, 1, &clear).await.unwrap();
        let d = read_supervisee(&mut tx, &admin(), 1, now).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(d.supervisee.display_name, None);
        assert_eq!(d.supervisee.time_zone, "Europe/Paris");
    }

    #[tokio::test]
    async fn officers_teams_and_unique_refs() {
        let (db, _dir) = lite().await;
        people(&db).await;
        let all = OfficerQuery::default();
        let refs = |p: Vec<Officer>| p.into_iter().map(|o| o.officer_ref).collect::<Vec<_>>();
        assert_eq!(
            refs(officer_page(&db, 0, None, &all, 10).await.unwrap()),
            ["a1", "a2", "s1", "b1"]
        );
        // A supervisor: themselves and the team they are in (none for s1).
        assert_eq!(
            refs(officer_page(&db, 0, Some(3), &all, 10).await.unwrap()),
            ["s1"]
        );
        assert_eq!(
            refs(officer_page(&db, 0, Some(1), &all, 10).await.unwrap()),
            ["a1", "a2"]
        );
        let q = OfficerQuery {
            team_ref: Some("beta".into()),
            ..Default::default()
        };
        assert_eq!(
            refs(officer_page(&db, 0, None, &q, 10).await.unwrap()),
            ["b1"]
        );

        let mut tx = db.begin().await.unwrap();
        let o = read_officer(&mut tx, 1).await.unwrap();
        assert_eq!(
            (o.caseload, o.team_ref.as_deref(), o.active),
            (1, Some("alpha"), true)
        );
        // created_at comes from the schema's DEFAULT; it must decode.
        assert!(o.created_at.timestamp() > 0);
        // Renaming an officer carries their caseload along (ON UPDATE CASCADE).
        let patch = OfficerPatch {
            officer_ref: Some("a1x".into()),
            team_ref: Some(None),
            active: Some(false),
            ..Default::default()
        };
        assert_eq!(update_officer(&mut tx, 1, &patch, None).await.unwrap(), 1);
        assert_eq!(update_officer(&mut tx, 99, &patch, None).await.unwrap(), 0);
        let o = read_officer(&mut tx, 1).await.unwrap();
        assert_eq!(
            (o.officer_ref.as_str(), o.caseload, o.team_ref, o.active),
            ("a1x", 1, None, false)
        );
        assert_eq!(officer_active(&mut tx, "a1x").await.unwrap(), Some(false));
        assert_eq!(officer_active(&mut tx, "a1").await.unwrap(), None);
        let mut errs = Vec::new();
        assert_eq!(
            officer_id_of(&mut tx, "f", "s1", &mut errs).await.unwrap(),
            Some(3)
        );
        assert_eq!(
            officer_id_of(&mut tx, "f", "a1x", &mut errs).await.unwrap(),
            None
        );
        assert_eq!(
            team_id_of(&mut tx, "f", "beta", &mut errs).await.unwrap(),
            Some(2)
        );
        assert_eq!(
            team_id_of(&mut tx, "f", "gamma", &mut errs).await.unwrap(),
            None
        );
        assert_eq!(errs.len(), 2);
        // Duplicates are 409s.
        let e = insert_officer(&mut tx, &new_officer("s1"), None)
            .await
            .unwrap_err();
        assert!(matches!(unique_as("an officer")(e), ApiError::Conflict(_)));
        let e = update_team(
            &mut tx,
            2,
            &TeamPatch {
                team_ref: Some("alpha".into()),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(unique_as("a team")(e), ApiError::Conflict(_)));
        let e = insert_supervisee(&mut tx, &new_sup("X-4", "b1"))
            .await
            .unwrap_err();
        assert!(matches!(unique_as("a case")(e), ApiError::Conflict(_)));
        let e = insert_device(&mut tx, &new_device("tag-1"), t("2026-01-01T00:00:00Z")).await;
        assert!(e.is_ok());
        let e = insert_device(&mut tx, &new_device("tag-1"), t("2026-01-01T00:00:00Z"))
            .await
            .unwrap_err();
        assert!(matches!(unique_as("a device")(e), ApiError::Conflict(_)));
        let t1 = read_team(&mut tx, 1).await.unwrap();
        assert_eq!(
            (
                t1.team_ref.as_str(),
                t1.supervisor_ref.as_deref(),
                t1.officers
            ),
            ("alpha", Some("s1"), 1)
        );
        tx.commit().await.unwrap();
        let teams = team_page(&db, 0, 10).await.unwrap();
        assert_eq!(teams.len(), 2);
        assert_eq!(team_page(&db, 1, 10).await.unwrap()[0].team_ref, "beta");
    }

    #[tokio::test]
    async fn devices_list_current_assignment_status_and_revocation() {
        let (db, _dir) = lite().await;
        people(&db).await;
        let now = t("2026-03-01T12:00:00Z");
        let mut tx = db.begin().await.unwrap();
        for id in ["tag-1", "tag-2", "Tag-3"] {
            insert_device(&mut tx, &new_device(id), t("2026-01-01T00:00:00Z"))
                .await
                .unwrap();
        }
        // tag-1: an ended, the current (from a fractional second) and an
        // upcoming assignment.
        for (sid, from, to) in [
            (1, "2026-01-01T00:00:00Z", Some("2026-02-01T00:00:00Z")),
            (2, "2026-02-01T00:00:00Z", Some("2026-03-01T12:00:00.25Z")),
            (3, "2026-03-01T12:00:00.25Z", None),
        ] {
            insert_assignment(&mut tx, 1, &assignment(sid, from, to))
                .await
                .unwrap();
        }
        Q::new(
            "INSERT INTO device_status (device_key, boot, seq, received_at, battery_pct, firmware) \
             VALUES ($1, 1, 7, $2, 81, '1.2.3')",
        )
        .bind(1_i64)
        .bind(t("2026-03-01T11:59:00Z"))
        .execute(&mut tx)
        .await
        .unwrap();
        assert_eq!(set_interval(&mut tx, "tag-2", 30).await.unwrap(), 1);
        assert_eq!(set_interval(&mut tx, "nope", 30).await.unwrap(), 0);
        let (key, revoked) = lock_device(&mut tx, "Tag-3").await.unwrap();
        assert_eq!((key, revoked), (3, None));
        set_revoked(&mut tx, key, now).await.unwrap();
        assert!(matches!(
            lock_device(&mut tx, "nope").await,
            Err(ApiError::NotFound)
        ));
        tx.commit().await.unwrap();

        let all = DeviceQuery::default();
        let page = device_page(&db, now, 0, &all, 10).await.unwrap();
        let keys: Vec<i64> = page.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [1, 2, 3]);
        let d1 = &page[0].1;
        let a = d1.current_assignment.as_ref().unwrap();
        assert_eq!((a.supervisee_id, a.case_ref.as_str()), (2, "ab-2"));
        assert_eq!(d1.battery_pct, Some(81));
        assert_eq!(d1.firmware.as_deref(), Some("1.2.3"));
        assert_eq!(d1.last_status_at, Some(t("2026-03-01T11:59:00Z")));
        assert_eq!(page[1].1.report_interval_s, 30);
        assert!(page[1].1.current_assignment.is_none());
        assert_eq!(page[2].1.revoked_at, Some(now));
        // A quarter second later the next assignment is in force.
        let later = t("2026-03-01T12:00:00.25Z");
        let page = device_page(&db, later, 0, &all, 1).await.unwrap();
        let a = page[0].1.current_assignment.as_ref().unwrap();
        assert_eq!((a.supervisee_id, a.valid_to), (3, None));
        // Filters: case-sensitive prefix; revoked or not.
        let q = DeviceQuery {
            q: Some("tag".into()),
            ..Default::default()
        };
        let page = device_page(&db, now, 0, &q, 10).await.unwrap();
        assert_eq!(page.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1, 2]);
        let q = DeviceQuery {
            revoked: Some(true),
            ..Default::default()
        };
        let page = device_page(&db, now, 0, &q, 10).await.unwrap();
        assert_eq!(page.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [3]);
        let q = DeviceQuery {
            revoked: Some(false),
            ..Default::default()
        };
        let page = device_page(&db, now, 1, &q, 10).await.unwrap();
        assert_eq!(page.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [2]);

        let d = read_device(&db, "tag-1", now).await.unwrap();
        let order: Vec<i64> = d.assignments.iter().map(|a| a.supervisee_id).collect();
        assert_eq!(order, [3, 2, 1]);
        assert_eq!(d.device.current_assignment.unwrap().supervisee_id, 2);
        assert!(matches!(
            read_device(&db, "nope", now).await,
            Err(ApiError::NotFound)
        ));
    }

    #[tokio::test]
    async fn assignments_clash_end_and_keep_history() {
        let (db, _dir) = lite().await;
        people(&db).await;
        let mut tx = db.begin().await.unwrap();
        insert_device(&mut tx, &new_device("tag-1"), t("2026-01-01T00:00:00Z"))
            .await
            .unwrap();
        assert!(supervisee_exists(&mut tx, 1).await.unwrap());
        assert!(!supervisee_exists(&mut tx, 99).await.unwrap());
        let first = assignment(1, "2026-01-01T00:00:00Z", Some("2026-02-01T00:00:00Z"));
        let aid = insert_assignment(&mut tx, 1, &first).await.unwrap();
        let clash = |from: &'static str, to: Option<&'static str>| (from, to);
        // Half-open periods: touching ends do not clash; NULL is no end.
        for ((from, to), hit) in [
            (clash("2026-02-01T00:00:00Z", None), false),
            (
                clash("2025-12-01T00:00:00Z", Some("2026-01-01T00:00:00Z")),
                false,
            ),
            (clash("2026-01-31T23:59:59.5Z", None), true),
            (
                clash("2025-12-01T00:00:00Z", Some("2026-01-01T00:00:00.001Z")),
                true,
            ),
            (clash("2025-12-01T00:00:00Z", None), true),
            (
                clash("2026-01-10T00:00:00Z", Some("2026-01-11T00:00:00Z")),
                true,
            ),
        ] {
            let c = assignment_clash(&mut tx, 1, t(from), to.map(t))
                .await
                .unwrap();
            assert_eq!(c.is_some(), hit, "{from} {to:?}");
            if let Some(c) = c {
                assert_eq!((c.assignment_id, c.supervisee_id), (aid, 1));
                assert_eq!(c.valid_from, t("2026-01-01T00:00:00Z"));
                assert_eq!(c.valid_to, Some(t("2026-02-01T00:00:00Z")));
            }
        }
        // The schema's own overlap check is what assign_device maps to 409.
        let e = insert_assignment(&mut tx, 1, &assignment(2, "2026-01-15T00:00:00Z", None))
            .await
            .unwrap_err();
        assert_eq!(sql::violation(&e), Some(Violation::Unique));
        let second = assignment(2, "2026-02-01T00:00:00Z", None);
        let aid2 = insert_assignment(&mut tx, 1, &second).await.unwrap();
        assert_eq!(
            worn_assignment(&mut tx, 1, t("2026-03-01T00:00:00Z"))
                .await
                .unwrap(),
            Some(aid2)
        );

        let locked = lock_assignment(&mut tx, "tag-1", aid2).await.unwrap();
        assert_eq!(locked, Some((2, t("2026-02-01T00:00:00Z"), None, 1)));
        assert_eq!(lock_assignment(&mut tx, "other", aid2).await.unwrap(), None);
        set_assignment_end(&mut tx, aid2, t("2026-03-01T00:00:00Z"))
            .await
            .unwrap();
        assert_eq!(
            worn_assignment(&mut tx, 1, t("2026-03-01T00:00:00Z"))
                .await
                .unwrap(),
            None
        );

        // A fix stored with a fractional second, as ingest writes it.
        Q::new(
            "INSERT INTO fixes (device_key, fix_time, boot, seq, idx, received_at, lat, lon, \
             acc_m, src) VALUES ($1, $2, 1, 1, 0, $2, 51.5, -0.1, 5, 'gnss')",
        )
        .bind(1_i64)
        .bind(t("2026-02-20T10:00:00.123456Z"))
        .execute(&mut tx)
        .await
        .unwrap();
        let fix = t("2026-02-20T10:00:00.123456Z");
        assert_eq!(
            newest_fix_from(&mut tx, 1, t("2026-02-20T10:00:00Z"))
                .await
                .unwrap(),
            Some(fix)
        );
        assert_eq!(newest_fix_from(&mut tx, 1, fix).await.unwrap(), Some(fix));
        assert_eq!(
            newest_fix_from(&mut tx, 1, t("2026-02-20T10:00:00.124Z"))
                .await
                .unwrap(),
            None
        );
        assert!(matches!(
            keep_history(&mut tx, 1, t("2026-02-01T00:00:00Z"), "at").await,
            Err(ApiError::Validation(_))
        ));
        keep_history(&mut tx, 1, t("2026-02-21T00:00:00Z"), "at")
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn pairings_upsert_reopen_and_end() {
        let (db, _dir) = lite().await;
        people(&db).await;
        let now = t("2026-03-01T12:00:00Z");
        let mut tx = db.begin().await.unwrap();
        insert_device(&mut tx, &new_device("victim-1"), now)
            .await
            .unwrap();
        let p = NewPairing {
            supervisee_id: 1,
            enter_m: 500.0,
            exit_m: 750.0,
        };
        let pid = upsert_pairing(&mut tx, 1, &p).await.unwrap();
        assert_eq!(open_pairing_of(&mut tx, 1).await.unwrap(), Some(pid));
        assert_eq!(
            lock_pairing(&mut tx, "victim-1", pid).await.unwrap(),
            Some((1, None))
        );
        assert_eq!(lock_pairing(&mut tx, "other", pid).await.unwrap(), None);
        set_pairing_end(&mut tx, pid, now).await.unwrap();
        assert_eq!(open_pairing_of(&mut tx, 1).await.unwrap(), None);
        assert_eq!(
            lock_pairing(&mut tx, "victim-1", pid).await.unwrap(),
            Some((1, Some(now)))
        );
        // Pairing the same two again: same pairing, new distances, reopened.
        let again = NewPairing {
            enter_m: 100.0,
            exit_m: 150.5,
            ..p
        };
        assert_eq!(upsert_pairing(&mut tx, 1, &again).await.unwrap(), pid);
        let other = NewPairing {
            supervisee_id: 2,
            ..p
        };
        let pid2 = upsert_pairing(&mut tx, 1, &other).await.unwrap();
        assert_ne!(pid2, pid);
        tx.commit().await.unwrap();
        let d = read_device(&db, "victim-1", now).await.unwrap();
        let got: Vec<_> = d
            .pairings
            .iter()
            .map(|p| {
                (
                    p.pairing_id,
                    p.supervisee_id,
                    p.case_ref.as_str(),
                    p.enter_m,
                    p.exit_m,
                    p.ended_at,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (pid, 1, "AB-1", 100.0, 150.5, None),
                (pid2, 2, "ab-2", 500.0, 750.0, None)
            ]
        );
    }

    #[tokio::test]
    async fn audit_record_commits_with_the_change() {
        let (db, _dir) = lite().await;
        people(&db).await;
        let now = t("2026-03-01T12:00:00Z");
        let mut tx = db.begin().await.unwrap();
        let id = insert_supervisee(&mut tx, &new_sup("C-9", "a1"))
            .await
            .unwrap();
        audit::record(
            &mut tx,
            &admin(),
            &AuditReason(None),
            now,
            Entry::supervisee("supervisee.create", id).with(json!({"case_ref": "C-9"})),
        )
        .await
        .unwrap();
        let d = read_supervisee(&mut tx, &admin(), id, now).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(d.supervisee.case_ref, "C-9");
        assert_eq!(audit::count(&db, "supervisee.create").await.unwrap(), 1);
    }
}
