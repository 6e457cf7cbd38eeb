//! Rules configuration: reading it whole for the snapshot, and loading a
//! provisioning file in one transaction.

use sqlx::{PgConnection, PgPool, Row};

use super::classify;
use crate::geofence::Shape;
use crate::rules::snapshot::{
    AssignmentRow, ExceptionRow, PairingRow, RuleRow, RulesData, SuperviseeRow, ZoneRow,
};
use crate::scenario::{LoadReport, RuleRef, Scenario};
use crate::store::StoreError;

/// NOTIFY channel of the configuration triggers (see the migration).
pub(super) const CHANNEL: &str = "waypoint_rules";

pub(super) async fn load(pool: &PgPool, known: &[(i64, i32)]) -> Result<RulesData, StoreError> {
    // One snapshot-consistent read of every table.
    let mut tx = pool.begin().await.map_err(classify)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
    let c = &mut *tx;
    let supervisees = sqlx::query("SELECT supervisee_id, case_ref, time_zone FROM supervisees")
        .fetch_all(&mut *c)
        .await
        .map_err(classify)?
        .iter()
        .map(|r| SuperviseeRow {
            id: r.get(0),
            case_ref: r.get(1),
            time_zone: r.get(2),
        })
        .collect();
    // Geometry is the bulk of the configuration (100k school zones are
    // hundreds of MB of GeoJSON): read it only for versions not yet held.
    let (known_ids, known_versions): (Vec<i64>, Vec<i32>) = known.iter().copied().unzip();
    let zones = sqlx::query(
        "SELECT z.zone_id, z.name, z.list_ref, z.current_version, \
           CASE WHEN k.zone_id IS NULL THEN v.geojson END \
         FROM zones z \
         JOIN zone_versions v ON v.zone_id = z.zone_id AND v.version = z.current_version \
         LEFT JOIN UNNEST($1::int8[], $2::int4[]) AS k(zone_id, version) \
           ON k.zone_id = z.zone_id AND k.version = z.current_version \
         WHERE z.retired_at IS NULL",
    )
    .bind(&known_ids)
    .bind(&known_versions)
    .fetch_all(&mut *c)
    .await
    .map_err(classify)?
    .iter()
    .map(|r| ZoneRow {
        id: r.get(0),
        name: r.get(1),
        list_ref: r.get(2),
        version: r.get(3),
        geojson: r.get(4),
    })
    .collect();
    let assignments = sqlx::query(
        "SELECT device_key, supervisee_id, valid_from, valid_to FROM device_assignments",
    )
    .fetch_all(&mut *c)
    .await
    .map_err(classify)?
    .iter()
    .map(|r| AssignmentRow {
        device_key: r.get(0),
        supervisee_id: r.get(1),
        from: r.get(2),
        to: r.get(3),
    })
    .collect();
    let rules = sqlx::query(
        "SELECT rule_id, supervisee_id, role, zone_id, list_ref, schedule, confirm_fixes, grace_s \
         FROM rules WHERE retired_at IS NULL",
    )
    .fetch_all(&mut *c)
    .await
    .map_err(classify)?
    .iter()
    .map(|r| RuleRow {
        id: r.get(0),
        supervisee_id: r.get(1),
        role: r.get(2),
        zone_id: r.get(3),
        list_ref: r.get(4),
        schedule: r.get(5),
        confirm_fixes: r.get(6),
        grace_s: r.get(7),
    })
    .collect();
    let exceptions =
        sqlx::query("SELECT supervisee_id, rule_id, starts_at, ends_at FROM rule_exceptions")
            .fetch_all(&mut *c)
            .await
            .map_err(classify)?
            .iter()
            .map(|r| ExceptionRow {
                supervisee_id: r.get(0),
                rule_id: r.get(1),
                starts_at: r.get(2),
                ends_at: r.get(3),
            })
            .collect();
    let pairings = sqlx::query(
        "SELECT pairing_id, victim_device_key, supervisee_id, enter_m, exit_m \
         FROM victim_pairings WHERE ended_at IS NULL",
    )
    .fetch_all(&mut *c)
    .await
    .map_err(classify)?
    .iter()
    .map(|r| PairingRow {
        id: r.get(0),
        victim_device_key: r.get(1),
        supervisee_id: r.get(2),
        enter_m: r.get(3),
        exit_m: r.get(4),
    })
    .collect();
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
        sqlx::Error::Database(db) if db.constraint().is_some_and(|c| c.contains("excl")) => {
            "overlaps an existing assignment of this device".into()
        }
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

async fn id_of(
    c: &mut PgConnection,
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

async fn rule_id(
    c: &mut PgConnection,
    supervisee: i64,
    r: &RuleRef,
    entry: &str,
) -> Result<i64, StoreError> {
    let zone = match &r.zone {
        Some(z) => Some(id_of(c, ZONE, z, entry, "zone").await?),
        None => None,
    };
    sqlx::query_scalar(
        "SELECT rule_id FROM rules WHERE supervisee_id = $1 AND role = $2 \
         AND zone_id IS NOT DISTINCT FROM $3 AND list_ref IS NOT DISTINCT FROM $4",
    )
    .bind(supervisee)
    .bind(&r.role)
    .bind(zone)
    .bind(&r.list)
    .fetch_optional(c)
    .await
    .map_err(classify)?
    .ok_or_else(|| StoreError::Invalid(format!("{entry}: no such rule for this supervisee")))
}

pub(super) async fn apply_scenario(
    pool: &PgPool,
    s: &Scenario,
    actor: &str,
) -> Result<LoadReport, StoreError> {
    let mut rep = LoadReport::default();
    let mut tx = pool.begin().await.map_err(classify)?;
    let c = &mut *tx;
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
        let inserted: bool = sqlx::query_scalar(
            "INSERT INTO supervisees AS s (case_ref, display_name, time_zone, officer_ref) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (case_ref) DO UPDATE SET \
             display_name = EXCLUDED.display_name, time_zone = EXCLUDED.time_zone, \
             officer_ref = EXCLUDED.officer_ref RETURNING (xmax = 0)",
        )
        .bind(&p.case_ref)
        .bind(&p.name)
        .bind(&p.time_zone)
        .bind(&p.officer)
        .fetch_one(&mut *c)
        .await
        .map_err(refused(format!("supervisees[{i}]")))?;
        rep.supervisees_created += u64::from(inserted);
    }
    for (i, d) in s.devices.iter().enumerate() {
        let inserted: bool = sqlx::query_scalar(
            "INSERT INTO devices (device_id, report_interval_s) VALUES ($1, COALESCE($2, 60)) \
             ON CONFLICT (device_id) DO UPDATE SET report_interval_s = \
             COALESCE($2, devices.report_interval_s) RETURNING (xmax = 0)",
        )
        .bind(&d.device_id)
        .bind(d.report_interval_s)
        .fetch_one(&mut *c)
        .await
        .map_err(refused(format!("devices[{i}]")))?;
        rep.devices_created += u64::from(inserted);
    }
    for (i, z) in s.zones.iter().enumerate() {
        let entry = format!("zones[{i}]");
        // Store the canonical form, so an equal geometry written differently
        // is not a new version.
        let shape = Shape::from_geojson(&z.geojson)
            .map_err(|e| StoreError::Invalid(format!("{entry}: {e}")))?;
        let geojson = shape.to_geojson();
        let row = sqlx::query(
            "INSERT INTO zones AS z (zone_ref, name, list_ref) VALUES ($1, $2, $3) \
             ON CONFLICT (zone_ref) DO UPDATE SET name = EXCLUDED.name, \
             list_ref = EXCLUDED.list_ref, retired_at = NULL \
             RETURNING zone_id, current_version, (xmax = 0) AS inserted",
        )
        .bind(&z.zone_ref)
        .bind(&z.name)
        .bind(&z.list)
        .fetch_one(&mut *c)
        .await
        .map_err(refused(entry.clone()))?;
        let (zone_id, version, inserted): (i64, i32, bool) = (row.get(0), row.get(1), row.get(2));
        if inserted {
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
        sqlx::query(
            "INSERT INTO rules (supervisee_id, role, zone_id, list_ref, schedule, confirm_fixes, \
             grace_s) VALUES ($1, $2, $3, $4, $5, COALESCE($6, 2), COALESCE($7, 60)) \
             ON CONFLICT (supervisee_id, role, zone_id, list_ref) DO UPDATE SET \
             schedule = EXCLUDED.schedule, confirm_fixes = EXCLUDED.confirm_fixes, \
             grace_s = EXCLUDED.grace_s, retired_at = NULL",
        )
        .bind(sup)
        .bind(&r.role)
        .bind(zone)
        .bind(&r.list)
        .bind(&r.schedule)
        .bind(r.confirm_fixes)
        .bind(r.grace_s)
        .execute(&mut *c)
        .await
        .map_err(refused(entry))?;
        rep.rules_upserted += 1;
    }
    for (i, a) in s.assignments.iter().enumerate() {
        let entry = format!("assignments[{i}]");
        let dev = id_of(c, DEVICE, &a.device, &entry, "device").await?;
        let sup = id_of(c, SUPERVISEE, &a.supervisee, &entry, "supervisee").await?;
        // Keyed on (device, supervisee, from): a load that adds or moves
        // `to` (the device is handed back) updates the assignment in place.
        let created: Option<i32> = sqlx::query_scalar(
            "WITH u AS (UPDATE device_assignments SET valid_to = $4 WHERE device_key = $1 \
               AND supervisee_id = $2 AND valid_from = $3 RETURNING 1) \
             INSERT INTO device_assignments (device_key, supervisee_id, valid_from, valid_to) \
             SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM u) RETURNING 1",
        )
        .bind(dev)
        .bind(sup)
        .bind(a.from)
        .bind(a.to)
        .fetch_optional(&mut *c)
        .await
        .map_err(refused(entry))?;
        rep.assignments_created += u64::from(created.is_some());
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
             SET enter_m = EXCLUDED.enter_m, exit_m = EXCLUDED.exit_m, ended_at = NULL",
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
    tx.commit().await.map_err(classify)?;
    Ok(rep)
}
