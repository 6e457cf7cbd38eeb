//! Provisioning file: supervisees, devices, zones, rules, assignments,
//! exceptions and victim pairings in one JSON document, loaded with
//! `waypoint scenario load <file>` (and by the simulator and tests).
//!
//! The format is documented in `docs/scenario.md`. Loading is idempotent:
//! everything is keyed by its reference (case_ref, device_id, zone_ref, the
//! rule's supervisee+role+target), so loading the same file twice changes
//! nothing, and loading an edited file updates in place — except zone
//! geometry, where an edit creates a new zone version and alerts keep
//! pointing at the version that was in force.
//!
//! The whole file is validated before anything is written, and written in
//! one transaction: a bad file changes nothing.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::DeviceId;
use crate::geofence::Shape;
use crate::rules::schedule::{parse_tz, Schedule};

/// The file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// People on supervision.
    #[serde(default)]
    pub supervisees: Vec<SuperviseeSpec>,
    /// Devices to enroll (existing ones are updated).
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    /// Zones.
    #[serde(default)]
    pub zones: Vec<ZoneSpec>,
    /// Rules per supervisee.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Who wears which device when.
    #[serde(default)]
    pub assignments: Vec<AssignmentSpec>,
    /// Approved absences.
    #[serde(default)]
    pub exceptions: Vec<ExceptionSpec>,
    /// Victim devices paired with supervisees.
    #[serde(default)]
    pub pairings: Vec<PairingSpec>,
}

/// A supervisee.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperviseeSpec {
    /// Case reference (key).
    pub case_ref: String,
    /// Display name, optional (prefer the case reference where possible).
    #[serde(default)]
    pub name: Option<String>,
    /// IANA time zone.
    pub time_zone: String,
    /// Responsible officer.
    #[serde(default)]
    pub officer: Option<String>,
}

/// A device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// Device id (key).
    pub device_id: String,
    /// Expected reporting interval, seconds (default 60).
    #[serde(default)]
    pub report_interval_s: Option<i32>,
}

/// A zone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSpec {
    /// Reference (key).
    pub zone_ref: String,
    /// Name for people ("Victim residence").
    pub name: String,
    /// Shared list it belongs to, e.g. "schools".
    #[serde(default)]
    pub list: Option<String>,
    /// GeoJSON Feature or Geometry; circles are a Point with
    /// `properties.radius_m`, corridors a LineString with `properties.width_m`.
    pub geojson: serde_json::Value,
}

/// A rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Whose (case_ref).
    pub supervisee: String,
    /// `inclusion`, `exclusion` or `home` (curfew).
    pub role: String,
    /// Target zone_ref, or
    #[serde(default)]
    pub zone: Option<String>,
    /// a shared list (exclusion only).
    #[serde(default)]
    pub list: Option<String>,
    /// Weekly windows; absent = always (a home rule needs one).
    #[serde(default)]
    pub schedule: Option<serde_json::Value>,
    /// Consecutive violating fixes that raise (default 2).
    #[serde(default)]
    pub confirm_fixes: Option<i32>,
    /// Or seconds in violation (default 60).
    #[serde(default)]
    pub grace_s: Option<i32>,
}

/// An assignment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentSpec {
    /// Device id.
    pub device: String,
    /// Case reference.
    pub supervisee: String,
    /// From (RFC 3339).
    pub from: DateTime<Utc>,
    /// Until (RFC 3339), open-ended if absent.
    #[serde(default)]
    pub to: Option<DateTime<Utc>>,
}

/// Which rule an exception suspends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRef {
    /// Role.
    pub role: String,
    /// Zone, or
    #[serde(default)]
    pub zone: Option<String>,
    /// list.
    #[serde(default)]
    pub list: Option<String>,
}

/// An approved absence.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionSpec {
    /// Case reference.
    pub supervisee: String,
    /// One rule; absent = all of the supervisee's rules.
    #[serde(default)]
    pub rule: Option<RuleRef>,
    /// From (RFC 3339).
    pub from: DateTime<Utc>,
    /// Until (RFC 3339).
    pub to: DateTime<Utc>,
    /// Why ("work shift", "court date").
    pub reason: String,
}

/// A victim pairing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairingSpec {
    /// The victim's device id.
    pub victim_device: String,
    /// Case reference of the supervisee.
    pub supervisee: String,
    /// Raise within (metres; default 500).
    #[serde(default)]
    pub enter_m: Option<f32>,
    /// Clear beyond (metres; default 1.5 × enter).
    #[serde(default)]
    pub exit_m: Option<f32>,
}

/// Why a scenario file was refused; names the entry.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not JSON of the documented shape.
    #[error("scenario file: {0}")]
    Parse(#[from] serde_json::Error),
    /// An entry is invalid.
    #[error("{entry}: {problem}")]
    Invalid {
        /// Which entry, e.g. `zones[3] (school-17)`.
        entry: String,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(entry: String, problem: impl ToString) -> ScenarioError {
    ScenarioError::Invalid {
        entry,
        problem: problem.to_string(),
    }
}

fn check_ref(entry: &str, what: &str, s: &str) -> Result<(), ScenarioError> {
    if s.is_empty() || s.chars().count() > 128 {
        return Err(invalid(
            entry.into(),
            format!("{what} must be 1..=128 characters"),
        ));
    }
    Ok(())
}

/// Roles a rule may have.
pub const ROLES: [&str; 3] = ["inclusion", "exclusion", "home"];

impl Scenario {
    /// Parses and validates a file's contents.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = serde_json::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    /// Checks everything that can be checked without the database. References
    /// to things not in the file are resolved against the database on load.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let mut cases = HashSet::new();
        for (i, p) in self.supervisees.iter().enumerate() {
            let e = format!(
                "supervisees[{i}] ({})",
                crate::decode::clip(&p.case_ref, 40)
            );
            check_ref(&e, "case_ref", &p.case_ref)?;
            parse_tz(&p.time_zone).map_err(|x| invalid(e.clone(), x))?;
            if !cases.insert(&p.case_ref) {
                return Err(invalid(e, "duplicate case_ref"));
            }
        }
        for (i, d) in self.devices.iter().enumerate() {
            let e = format!("devices[{i}]");
            DeviceId::parse(&d.device_id).map_err(|x| invalid(e.clone(), x))?;
            if d.report_interval_s
                .is_some_and(|s| !(1..=86_400).contains(&s))
            {
                return Err(invalid(e, "report_interval_s must be 1..=86400"));
            }
        }
        let mut zones = HashSet::new();
        for (i, z) in self.zones.iter().enumerate() {
            let e = format!("zones[{i}] ({})", crate::decode::clip(&z.zone_ref, 40));
            check_ref(&e, "zone_ref", &z.zone_ref)?;
            check_ref(&e, "name", &z.name)?;
            if let Some(l) = &z.list {
                check_ref(&e, "list", l)?;
            }
            let shape = Shape::from_geojson(&z.geojson).map_err(|x| invalid(e.clone(), x))?;
            crate::geofence::check_simple(&shape).map_err(|x| invalid(e.clone(), x))?;
            if !zones.insert(&z.zone_ref) {
                return Err(invalid(e, "duplicate zone_ref"));
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let e = format!("rules[{i}]");
            check_target(&e, &r.role, &r.zone, &r.list)?;
            if let Some(s) = &r.schedule {
                Schedule::from_json(s).map_err(|x| invalid(e.clone(), x))?;
            } else if r.role == "home" {
                return Err(invalid(e, "a home (curfew) rule needs a schedule"));
            }
            if r.confirm_fixes.is_some_and(|n| !(1..=100).contains(&n)) {
                return Err(invalid(e, "confirm_fixes must be 1..=100"));
            }
            if r.grace_s.is_some_and(|n| !(0..=86_400).contains(&n)) {
                return Err(invalid(e, "grace_s must be 0..=86400"));
            }
        }
        for (i, a) in self.assignments.iter().enumerate() {
            let e = format!("assignments[{i}]");
            DeviceId::parse(&a.device).map_err(|x| invalid(e.clone(), x))?;
            if a.to.is_some_and(|to| to <= a.from) {
                return Err(invalid(e, "`to` must be after `from`"));
            }
        }
        for (i, x) in self.exceptions.iter().enumerate() {
            let e = format!("exceptions[{i}]");
            if x.to <= x.from {
                return Err(invalid(e, "`to` must be after `from`"));
            }
            if x.reason.trim().is_empty() || x.reason.chars().count() > 500 {
                return Err(invalid(e, "reason must be 1..=500 characters"));
            }
            if let Some(r) = &x.rule {
                check_target(&e, &r.role, &r.zone, &r.list)?;
            }
        }
        for (i, p) in self.pairings.iter().enumerate() {
            let e = format!("pairings[{i}]");
            DeviceId::parse(&p.victim_device).map_err(|x| invalid(e.clone(), x))?;
            let (enter, exit) = p.distances();
            if !(enter.is_finite() && enter > 0.0 && enter <= 100_000.0) {
                return Err(invalid(e, "enter_m must be in (0, 100000]"));
            }
            if !(exit.is_finite() && exit >= enter) {
                return Err(invalid(e, "exit_m must be at least enter_m"));
            }
        }
        Ok(())
    }
}

impl PairingSpec {
    /// (enter, exit) with defaults applied.
    pub fn distances(&self) -> (f32, f32) {
        let enter = self.enter_m.unwrap_or(500.0);
        (enter, self.exit_m.unwrap_or(enter * 1.5))
    }
}

fn check_target(
    e: &str,
    role: &str,
    zone: &Option<String>,
    list: &Option<String>,
) -> Result<(), ScenarioError> {
    if !ROLES.contains(&role) {
        return Err(invalid(
            e.into(),
            format!("role {role:?} is not one of inclusion, exclusion, home"),
        ));
    }
    match (zone, list) {
        (Some(_), None) => Ok(()),
        (None, Some(_)) if role == "exclusion" => Ok(()),
        (None, Some(_)) => Err(invalid(e.into(), "only exclusion rules may target a list")),
        _ => Err(invalid(e.into(), "give exactly one of `zone` or `list`")),
    }
}

/// What a load changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LoadReport {
    /// Supervisees created.
    pub supervisees_created: u64,
    /// Devices enrolled.
    pub devices_created: u64,
    /// Zones created.
    pub zones_created: u64,
    /// Zones whose geometry changed (new version).
    pub zone_versions_added: u64,
    /// Rules created or updated.
    pub rules_upserted: u64,
    /// Assignments created.
    pub assignments_created: u64,
    /// Exceptions created.
    pub exceptions_created: u64,
    /// Pairings created or updated.
    pub pairings_upserted: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "supervisees": [{"case_ref": "C-1", "time_zone": "Europe/London"}],
            "devices": [{"device_id": "tag-1", "report_interval_s": 30}],
            "zones": [{"zone_ref": "home-1", "name": "Home", "geojson": {
                "type": "Feature", "properties": {"radius_m": 50},
                "geometry": {"type": "Point", "coordinates": [-0.1, 51.5]}}}],
            "rules": [{"supervisee": "C-1", "role": "home", "zone": "home-1",
                "schedule": {"windows": [{"days": ["mon"], "start": "21:00", "end": "07:00"}]}}],
            "assignments": [{"device": "tag-1", "supervisee": "C-1", "from": "2026-01-01T00:00:00Z"}]
        })
    }

    #[test]
    fn the_documented_example_is_valid() {
        let doc = include_str!("../docs/scenario.md");
        let json = doc
            .split("```json")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("docs/scenario.md has a JSON example");
        let s = Scenario::parse(json).unwrap();
        assert_eq!(s.zones.len(), 5);
        assert_eq!(s.pairings[0].distances(), (500.0, 750.0));
        Scenario::parse(include_str!("../docs/examples/quickstart.json")).unwrap();
    }

    #[test]
    fn a_valid_file_parses() {
        Scenario::parse(&base().to_string()).unwrap();
    }

    #[test]
    fn refusals_name_the_entry() {
        let bad = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = base();
            edit(&mut v);
            Scenario::parse(&v.to_string()).unwrap_err().to_string()
        };
        assert!(
            bad(&|v| v["supervisees"][0]["time_zone"] = "Nowhere/City".into())
                .contains("supervisees[0]")
        );
        assert!(
            bad(&|v| v["zones"][0]["geojson"]["properties"]["radius_m"] = (-5).into())
                .contains("zones[0] (home-1)")
        );
        assert!(
            bad(&|v| v["rules"][0]["schedule"] = serde_json::Value::Null)
                .contains("needs a schedule")
        );
        // A bow-tie outline: provisioning refuses it as the API does.
        let bowtie = bad(&|v| {
            v["zones"][0]["geojson"] = serde_json::json!({"type": "Polygon", "coordinates":
                [[[0.0, 51.0], [0.01, 51.01], [0.01, 51.0], [0.0, 51.01], [0.0, 51.0]]]})
        });
        assert!(
            bowtie.contains("zones[0] (home-1)") && bowtie.contains("self-intersection"),
            "{bowtie}"
        );
        assert!(bad(&|v| v["rules"][0]["role"] = "banish".into()).contains("role"));
        assert!(bad(&|v| v["devices"][0]["device_id"] = "a/b".into()).contains("devices[0]"));
        assert!(bad(&|v| v["surprise"] = 1.into()).contains("unknown field"));
        assert!(
            bad(&|v| v["assignments"][0]["to"] = "2025-01-01T00:00:00Z".into()).contains("after")
        );
    }
}
