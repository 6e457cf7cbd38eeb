//! Rules configuration: reading it whole for the snapshot, and loading a
//! provisioning file in one transaction (same behaviour as
//! `postgres::rules`).

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::classify;
use crate::geofence::Shape;
use crate::rules::snapshot::{
    AssignmentRow, ExceptionRow, PairingRow, RuleRow, RulesData, SuperviseeRow, ZoneRow,
};
use crate::scenario::{LoadReport, RuleRef, Scenario};
use crate::store::StoreError;

/// Decodes every row of a result with `f`.
fn rows<T>(
    rows: Vec<SqliteRow>,
    f: impl Fn(&SqliteRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(f)
        .collect::<Result<_, _>>()
        .map_err(classify)
}

pub(super) async fn load(pool: &SqlitePool, known: &[(i64, i32)]) -> Result<RulesData, StoreError> {
    // One read transaction: WAL gives it one snapshot of every table, as
    // PostgreSQL's REPEATABLE READ does.
    let mut tx = pool.begin().await.map_err(classify)?;
    let c = &mut *tx;
    let supervisees = rows(
        sqlx::query("SELECT supervisee_id, case_ref, time_zone FROM supervisees")
            .fetch_all(&mut *c)
            .await
            .map_err(classify)?,
        |r| {
            Ok(SuperviseeRow {
                id: r.try_get(0)?,
                case_ref: r.try_get(1)?,
                time_zone: r.try_get(2)?,
            })
        },
    )?;
    // Geometry is the bulk of the configuration: read it only for versions
    // not yet held. The held (zone, version) pairs go as one JSON array;
    // SQLite materialises the IN subquery once as an index.
    let known_json = serde_json::to_string(known).unwrap_or_else(|_| "[]".into());
    let zones = rows(
        sqlx::query(
            "SELECT z.zone_id, z.name, z.list_ref, z.current_version, \
               CASE WHEN (z.zone_id, z.current_version) IN \
                 (SELECT value ->> 0, value ->> 1 FROM json_each($1)) \
               THEN NULL ELSE v.geojson END \
             FROM zones z \
             JOIN zone_versions v ON v.zone_id = z.zone_id AND v.version = z.current_version \
             WHERE z.retired_at IS NULL",
        )
        .bind(known_json)
        .fetch_all(&mut *c)
        .await
        .map_err(classify)?,
        |r| {
            Ok(ZoneRow {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                list_ref: r.try_get(2)?,
                version: r.try_get(3)?,
                geojson: r.try_get(4)?,
            })
        },
    )?;
    let assignments = rows(
        sqlx::query(
            "SELECT device_key, supervisee_id, valid_from, valid_to FROM device_assignments",
        )
        .fetch_all(&mut *c)
        .await
        .map_err(classify)?,
        |r| {
            Ok(AssignmentRow {
                device_key: r.try_get(0)?,
                supervisee_id: r.try_get(1)?,
                from: r.try_get(2)?,
                to: r.try_get(3)?,
            })
        },
    )?;
    let rules = rows(
        sqlx::query(
            "SELECT rule_id, supervisee_id, role, zone_id, list_ref, schedule, confirm_fixes, \
             grace_s FROM rules WHERE retired_at IS NULL",
        )
        .fetch_all(&mut *c)
        .await
        .map_err(classify)?,
        |r| {
            Ok(RuleRow {
                id: r.try_get(0)?,
                supervisee_id: r.try_get(1)?,
                role: r.try_get(2)?,
                zone_id: r.try_get(3)?,
                list_ref: r.try_get(4)?,
                schedule: r.try_get(5)?,
                confirm_fixes: r.try_get(6)?,
                grace_s: r.try_get(7)?,
            })
        },
    )?;
    let exceptions = rows(
        sqlx::query("SELECT supervisee_id, rule_id, starts_at, ends_at FROM rule_exceptions")
            .fetch_all(&mut *c)
            .await
            .map_err(classify)?,
        |r| {
            Ok(ExceptionRow {
                supervisee_id: r.try_get(0)?,
                rule_id: r.try_get(1)?,
                starts_at: r.try_get(2)?,
                ends_at: r.try_get(3)?,
            })
        },
    )?;
    let pairings = rows(
        sqlx::query(
            "SELECT pairing_id, victim_device_key, supervisee_id, enter_m, exit_m \
             FROM victim_pairings WHERE ended_at IS NULL",
        )
        .fetch_all(&mut *c)
        .await
        .map_err(classify)?,
        |r| {
            Ok(PairingRow {
                id: r.try_get(0)?,
                victim_device_key: r.try_get(1)?,
                supervisee_id: r.try_get(2)?,
                enter_m: r.try_get(3)?,
                exit_m: r.try_get(4)?,
            })
        },
    )?;
    let intervals = sqlx::query_as("SELECT device_key, report_interval_s FROM devices")
        .fetch_all(&mut *c)
        .await
        .map_err(classify)?;
    tx.commit().await.map_err(classify)?;
    Ok(RulesData {
        supervisees,
        zones,
        assignments,
        rules,
        exceptions,
        pairings,
        intervals,
    })
}

/// A database refusal during a load, named after the entry being written.
fn refused(entry: String) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match classify(e) {
        StoreError::Refused(e) => StoreError::Invalid(format!("{entry}: {}", db_message(&e))),
        other => other,
    }
}

fn db_message(e: &sqlx::Error) -> String {
    match e {
        // The overlap trigger (PostgreSQL: the exclusion constraint).
        sqlx::Error::Database(db) if db.message().starts_with("assignment_overlap") => {
            "overlaps an existing assignment of this device".into()
        }
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

async fn id_of(
    c: &mut SqliteConnection,
    sql: &str,
    key: &str,
    entry: &str,
    what: &str,
) -> Result<i64, StoreError> {
    sqlx::query_scalar(sql)
        .bind(key)
        .fetch_optional(c)
        .await
        .map_err(classify)?
        .ok_or_else(|| StoreError::Invalid(format!("{entry}: unknown {what} {key:?}")))
}

const SUPERVISEE: &str = "SELECT supervisee_id FROM supervisees WHERE case_ref = $1";
const DEVICE: &str = "SELECT device_key FROM devices WHERE device_id = $1";
const ZONE: &str = "SELECT zone_id FROM zones WHERE zone_ref = $1";
/// A rule by its natural key; `IS` is SQLite's IS NOT DISTINCT FROM.
const RULE_BY_KEY: &str = "SELECT rule_id FROM rules WHERE supervisee_id = $1 AND role = $2 \
     AND zone_id IS $3 AND list_ref IS $4";

async fn rule_id(
    c: &mut SqliteConnection,
    supervisee: i64,
    r: &RuleRef,
    entry: &str,
) -> Result<i64, StoreError> {
    let zone = match &r.zone {
        Some(z) => Some(id_of(c, ZONE, z, entry, "zone").await?),
        None => None,
    };
    sqlx::query_scalar(RULE_BY_KEY)
        .bind(supervisee)
        .bind(&r.role)
        .bind(zone)
        .bind(&r.list)
        .fetch_optional(c)
        .await
        .map_err(classify)?
        .ok_or_else(|| StoreError::Invalid(format!("{entry}: no such rule for this supervisee")))
}

/// Whether a row with this key exists; the writer holds the write lock, so
/// the answer stays true until the following upsert (PostgreSQL reads the
/// same fact from `xmax = 0` after its upsert).
async fn exists(c: &mut SqliteConnection, sql: &str, key: &str) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar(sql)
        .bind(key)
        .fetch_optional(c)
        .await
        .map_err(classify)?;
    Ok(found.is_some())
}

/// Loads a provisioning file inside the caller's write transaction.
pub(super) async fn apply_scenario(
    c: &mut SqliteConnection,
    s: &Scenario,
    actor: &str,
) -> Result<LoadReport, StoreError> {
    let mut rep = LoadReport::default();
    for (i, p) in s.supervisees.iter().enumerate() {
        // A provisioning file names officers by reference; one not yet known
        // gets a row (named by its reference until an admin renames it).
        if let Some(officer) = &p.officer {
            sqlx::query(
                "INSERT INTO officers (officer_ref, display_name) VALUES ($1, $1) \
                 ON CONFLICT (officer_ref) DO NOTHING",
            )
            .bind(officer)
            .execute(&mut *c)
            .await
            .map_err(refused(format!("supervisees[{i}].officer")))?;
        }
        let existed = exists(c, SUPERVISEE, &p.case_ref).await?;
        sqlx::query(
            "INSERT INTO supervisees (case_ref, display_name, time_zone, officer_ref) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (case_ref) DO UPDATE SET \
             display_name = excluded.display_name, time_zone = excluded.time_zone, \
             officer_ref = excluded.officer_ref",
        )
        .bind(&p.case_ref)
        .bind(&p.name)
        .bind(&p.time_zone)
        .bind(&p.officer)
        .execute(&mut *c)
        .await
        .map_err(refused(format!("supervisees[{i}]")))?;
        rep.supervisees_created += u64::from(!existed);
    }
    for (i, d) in s.devices.iter().enumerate() {
        let existed = exists(c, DEVICE, &d.device_id).await?;
        sqlx::query(
            "INSERT INTO devices (device_id, report_interval_s) VALUES ($1, coalesce($2, 60)) \
             ON CONFLICT (device_id) DO UPDATE SET report_interval_s = \
             coalesce($2, devices.report_interval_s)",
        )
        .bind(&d.device_id)
        .bind(d.report_interval_s)
        .execute(&mut *c)
        .await
        .map_err(refused(format!("devices[{i}]")))?;
        rep.devices_created += u64::from(!existed);
    }
    for (i, z) in s.zones.iter().enumerate() {
        let entry = format!("zones[{i}]");
        // Store the canonical form, so an equal geometry written differently
        // is not a new version.
        let shape = Shape::from_geojson(&z.geojson)
            .map_err(|e| StoreError::Invalid(format!("{entry}: {e}")))?;
        let geojson = shape.to_geojson();
        let existed = exists(c, ZONE, &z.zone_ref).await?;
        let row = sqlx::query(
            "INSERT INTO zones (zone_ref, name, list_ref) VALUES ($1, $2, $3) \
             ON CONFLICT (zone_ref) DO UPDATE SET name = excluded.name, \
             list_ref = excluded.list_ref, retired_at = NULL \
             RETURNING zone_id, current_version",
        )
        .bind(&z.zone_ref)
        .bind(&z.name)
        .bind(&z.list)
        .fetch_one(&mut *c)
        .await
        .map_err(refused(entry.clone()))?;
        let zone_id: i64 = row.try_get(0).map_err(classify)?;
        let version: i32 = row.try_get(1).map_err(classify)?;
        if !existed {
            rep.zones_created += 1;
            sqlx::query(
                "INSERT INTO zone_versions (zone_id, version, geojson, created_by) \
                 VALUES ($1, 1, $2, $3)",
            )
            .bind(zone_id)
            .bind(&geojson)
            .bind(actor)
            .execute(&mut *c)
            .await
            .map_err(refused(entry))?;
            continue;
        }
        let current: Option<serde_json::Value> = sqlx::query_scalar(
            "SELECT geojson FROM zone_versions WHERE zone_id = $1 AND version = $2",
        )
        .bind(zone_id)
        .bind(version)
        .fetch_optional(&mut *c)
        .await
        .map_err(classify)?;
        if current.as_ref() != Some(&geojson) {
            rep.zone_versions_added += 1;
            sqlx::query(
                "INSERT INTO zone_versions (zone_id, version, geojson, created_by) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(zone_id)
            .bind(version + 1)
            .bind(&geojson)
            .bind(actor)
            .execute(&mut *c)
            .await
            .map_err(refused(entry.clone()))?;
            sqlx::query("UPDATE zones SET current_version = $2 WHERE zone_id = $1")
                .bind(zone_id)
                .bind(version + 1)
                .execute(&mut *c)
                .await
                .map_err(refused(entry))?;
        }
    }
    for (i, r) in s.rules.iter().enumerate() {
        let entry = format!("rules[{i}]");
        let sup = id_of(c, SUPERVISEE, &r.supervisee, &entry, "supervisee").await?;
        let zone = match &r.zone {
            Some(z) => Some(id_of(c, ZONE, z, &entry, "zone").await?),
            None => None,
        };
        // The natural key is a NULLS NOT DISTINCT unique in PostgreSQL and
        // an expression index here; look the rule up rather than spell the
        // index's expressions in an ON CONFLICT target.
        let existing: Option<i64> = sqlx::query_scalar(RULE_BY_KEY)
            .bind(sup)
            .bind(&r.role)
            .bind(zone)
            .bind(&r.list)
            .fetch_optional(&mut *c)
            .await
            .map_err(classify)?;
        let q = match existing {
            Some(id) => sqlx::query(
                "UPDATE rules SET schedule = $2, confirm_fixes = coalesce($3, 2), \
                 grace_s = coalesce($4, 60), retired_at = NULL WHERE rule_id = $1",
            )
            .bind(id)
            .bind(&r.schedule)
            .bind(r.confirm_fixes)
            .bind(r.grace_s),
            None => sqlx::query(
                "INSERT INTO rules (supervisee_id, role, zone_id, list_ref, schedule, \
                 confirm_fixes, grace_s) VALUES ($1, $2, $3, $4, $5, coalesce($6, 2), \
                 coalesce($7, 60))",
            )
            .bind(sup)
            .bind(&r.role)
            .bind(zone)
            .bind(&r.list)
            .bind(&r.schedule)
            .bind(r.confirm_fixes)
            .bind(r.grace_s),
        };
        q.execute(&mut *c).await.map_err(refused(entry))?;
        rep.rules_upserted += 1;
    }
    for (i, a) in s.assignments.iter().enumerate() {
        let entry = format!("assignments[{i}]");
        let dev = id_of(c, DEVICE, &a.device, &entry, "device").await?;
        let sup = id_of(c, SUPERVISEE, &a.supervisee, &entry, "supervisee").await?;
        // Keyed on (device, supervisee, from): a load that adds or moves
        // `to` (the device is handed back) updates the assignment in place.
        let updated = sqlx::query(
            "UPDATE device_assignments SET valid_to = $4 WHERE device_key = $1 \
             AND supervisee_id = $2 AND valid_from = $3",
        )
        .bind(dev)
        .bind(sup)
        .bind(a.from)
        .bind(a.to)
        .execute(&mut *c)
        .await
        .map_err(refused(entry.clone()))?
        .rows_affected();
        if updated == 0 {
            sqlx::query(
                "INSERT INTO device_assignments (device_key, supervisee_id, valid_from, \
                 valid_to) VALUES ($1, $2, $3, $4)",
            )
            .bind(dev)
            .bind(sup)
            .bind(a.from)
            .bind(a.to)
            .execute(&mut *c)
            .await
            .map_err(refused(entry))?;
            rep.assignments_created += 1;
        }
    }
    for (i, x) in s.exceptions.iter().enumerate() {
        let entry = format!("exceptions[{i}]");
        let sup = id_of(c, SUPERVISEE, &x.supervisee, &entry, "supervisee").await?;
        let rule = match &x.rule {
            Some(r) => Some(rule_id(c, sup, r, &entry).await?),
            None => None,
        };
        let r = sqlx::query(
            "INSERT INTO rule_exceptions (supervisee_id, rule_id, starts_at, ends_at, reason, \
             created_by) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(sup)
        .bind(rule)
        .bind(x.from)
        .bind(x.to)
        .bind(&x.reason)
        .bind(actor)
        .execute(&mut *c)
        .await
        .map_err(refused(entry))?;
        rep.exceptions_created += r.rows_affected();
    }
    for (i, p) in s.pairings.iter().enumerate() {
        let entry = format!("pairings[{i}]");
        let dev = id_of(c, DEVICE, &p.victim_device, &entry, "device").await?;
        let sup = id_of(c, SUPERVISEE, &p.supervisee, &entry, "supervisee").await?;
        let (enter, exit) = p.distances();
        sqlx::query(
            "INSERT INTO victim_pairings (victim_device_key, supervisee_id, enter_m, exit_m) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (victim_device_key, supervisee_id) DO UPDATE \
             SET enter_m = excluded.enter_m, exit_m = excluded.exit_m, ended_at = NULL",
        )
        .bind(dev)
        .bind(sup)
        .bind(enter)
        .bind(exit)
        .execute(&mut *c)
        .await
        .map_err(refused(entry))?;
        rep.pairings_upserted += 1;
    }
    Ok(rep)
}
