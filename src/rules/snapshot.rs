//! The configuration the engine evaluates against: an immutable snapshot
//! built from the store's rows, swapped whole when anything changes so
//! evaluation never waits for a reload.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use super::schedule::{parse_tz, Schedule};
use crate::geofence::{PreparedZone, Shape, ZoneIndex};

/// A supervisee row.
#[derive(Debug, Clone)]
pub struct SuperviseeRow {
    /// Key.
    pub id: i64,
    /// Case reference.
    pub case_ref: String,
    /// IANA time zone name.
    pub time_zone: String,
}

/// A zone's version in force.
#[derive(Debug, Clone)]
pub struct ZoneRow {
    /// Key.
    pub id: i64,
    /// Name for people.
    pub name: String,
    /// Shared list, if any.
    pub list_ref: Option<String>,
    /// Version in force.
    pub version: i32,
    /// Geometry (GeoJSON Feature); `None` when the previous snapshot already
    /// holds this version (the store skips reading it again).
    pub geojson: Option<serde_json::Value>,
}

/// A dated device assignment.
#[derive(Debug, Clone)]
pub struct AssignmentRow {
    /// Device.
    pub device_key: i64,
    /// Wearer.
    pub supervisee_id: i64,
    /// From (inclusive).
    pub from: DateTime<Utc>,
    /// Until (exclusive); open-ended if `None`.
    pub to: Option<DateTime<Utc>>,
}

/// A rule row.
#[derive(Debug, Clone)]
pub struct RuleRow {
    /// Key.
    pub id: i64,
    /// Whose rule.
    pub supervisee_id: i64,
    /// `inclusion`, `exclusion` or `home`.
    pub role: String,
    /// Target zone, or
    pub zone_id: Option<i64>,
    /// target list (exclusion only).
    pub list_ref: Option<String>,
    /// Weekly windows; `None` = always.
    pub schedule: Option<serde_json::Value>,
    /// Consecutive violating fixes that raise.
    pub confirm_fixes: i32,
    /// Or this long in violation.
    pub grace_s: i32,
}

/// An approved absence.
#[derive(Debug, Clone)]
pub struct ExceptionRow {
    /// Whose.
    pub supervisee_id: i64,
    /// One rule, or all of the supervisee's rules.
    pub rule_id: Option<i64>,
    /// From (inclusive).
    pub starts_at: DateTime<Utc>,
    /// Until (exclusive).
    pub ends_at: DateTime<Utc>,
}

/// A victim pairing.
#[derive(Debug, Clone)]
pub struct PairingRow {
    /// Key.
    pub id: i64,
    /// The victim's device.
    pub victim_device_key: i64,
    /// The supervisee.
    pub supervisee_id: i64,
    /// Raise within this distance.
    pub enter_m: f32,
    /// Clear beyond this distance.
    pub exit_m: f32,
}

/// Everything the snapshot is built from, as the store reads it.
#[derive(Debug, Clone, Default)]
pub struct RulesData {
    /// Supervisees.
    pub supervisees: Vec<SuperviseeRow>,
    /// Zones (current versions, unretired).
    pub zones: Vec<ZoneRow>,
    /// Assignments.
    pub assignments: Vec<AssignmentRow>,
    /// Rules (unretired).
    pub rules: Vec<RuleRow>,
    /// Exceptions.
    pub exceptions: Vec<ExceptionRow>,
    /// Active pairings.
    pub pairings: Vec<PairingRow>,
    /// Reporting interval per device, seconds.
    pub intervals: Vec<(i64, i32)>,
}

/// A supervisee as the engine needs them.
#[derive(Debug, Clone)]
pub struct Supervisee {
    /// Case reference, for explanations.
    pub case_ref: String,
    /// Schedules are evaluated here.
    pub tz: Tz,
}

/// A zone ready for evaluation.
pub struct ZoneInfo {
    /// Key.
    pub id: i64,
    /// Name for people.
    pub name: String,
    /// Version in force.
    pub version: i32,
    /// Prepared geometry.
    pub geom: Arc<PreparedZone>,
}

/// What a rule requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Must stay inside.
    Inclusion,
    /// Must stay outside.
    Exclusion,
    /// Curfew: inside (or beacon present) during the schedule.
    Home,
}

/// What a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One zone.
    Zone(i64),
    /// A shared list, evaluated through its R-tree.
    List(String),
}

/// A rule ready for evaluation.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Key.
    pub id: i64,
    /// What it requires.
    pub role: Role,
    /// Where.
    pub target: Target,
    /// When; `None` = always.
    pub schedule: Option<Schedule>,
    /// Consecutive violating fixes that raise.
    pub confirm_fixes: u32,
    /// Or this long in violation (also the clearing time).
    pub grace: TimeDelta,
}

/// A victim pairing ready for evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Pairing {
    /// Key.
    pub id: i64,
    /// Victim's device.
    pub victim_device_key: i64,
    /// Supervisee.
    pub supervisee_id: i64,
    /// Raise within.
    pub enter_m: f64,
    /// Clear beyond.
    pub exit_m: f64,
}

struct Span {
    supervisee_id: i64,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
}

/// The immutable configuration snapshot.
#[derive(Default)]
pub struct Snapshot {
    supervisees: HashMap<i64, Supervisee>,
    assignments: HashMap<i64, Vec<Span>>,
    rules: HashMap<i64, Vec<Rule>>,
    exceptions: HashMap<i64, Vec<ExceptionRow>>,
    zones: HashMap<i64, Arc<ZoneInfo>>,
    lists: HashMap<String, Arc<ZoneIndex<i64>>>,
    /// Members (zone, version) of each list's index, to reuse it when
    /// nothing in the list changed.
    list_members: HashMap<String, Vec<(i64, i32)>>,
    victim_of: HashMap<i64, Vec<Pairing>>,
    pairings_of: HashMap<i64, Vec<Pairing>>,
    intervals: HashMap<i64, u32>,
    /// Rows that could not be used, in plain words (logged on reload).
    pub problems: Vec<String>,
}

impl Snapshot {
    /// Builds the snapshot. Bad rows are skipped and described in
    /// `problems`: a broken zone must not stop every other rule.
    pub fn build(data: RulesData) -> Self {
        Self::rebuild(data, None)
    }

    /// Builds the snapshot reusing `prev`'s prepared zones (same id and
    /// version) and list indexes (same members), so a change to one
    /// exception or one zone does not re-prepare 100 000 school zones.
    pub fn rebuild(data: RulesData, prev: Option<&Snapshot>) -> Self {
        let mut s = Snapshot::default();
        for r in data.supervisees {
            match parse_tz(&r.time_zone) {
                Ok(tz) => {
                    s.supervisees.insert(
                        r.id,
                        Supervisee {
                            case_ref: r.case_ref,
                            tz,
                        },
                    );
                }
                Err(e) => match prev.and_then(|p| p.supervisees.get(&r.id)) {
                    // Keep the last good time zone rather than switch their
                    // scheduled rules off.
                    Some(old) => {
                        s.problems.push(format!(
                            "supervisee {}: {e}; previous zone kept",
                            r.case_ref
                        ));
                        s.supervisees.insert(r.id, old.clone());
                    }
                    None => s.problems.push(format!("supervisee {}: {e}", r.case_ref)),
                },
            }
        }
        let mut list_members: HashMap<String, Vec<(i64, Arc<PreparedZone>, i32)>> = HashMap::new();
        let prepared = prepare_all(&data.zones, prev);
        for (z, geom) in data.zones.into_iter().zip(prepared) {
            let (geom, version) = match (geom, prev.and_then(|p| p.zones.get(&z.id))) {
                (Ok(g), _) => (g, z.version),
                // Fail safe, not open: a broken new version must not end
                // the alerts of every rule on this zone; keep the last good.
                (Err(problem), Some(old)) => {
                    s.problems.push(format!(
                        "zone {:?}: {problem}; version {} kept in force",
                        z.name, old.version
                    ));
                    (old.geom.clone(), old.version)
                }
                (Err(problem), None) => {
                    s.problems.push(format!("zone {:?}: {problem}", z.name));
                    continue;
                }
            };
            if let Some(l) = &z.list_ref {
                list_members
                    .entry(l.clone())
                    .or_default()
                    .push((z.id, geom.clone(), version));
            }
            s.zones.insert(
                z.id,
                Arc::new(ZoneInfo {
                    id: z.id,
                    name: z.name,
                    version,
                    geom,
                }),
            );
        }
        for (list, mut members) in list_members {
            members.sort_by_key(|m| m.0);
            let sig: Vec<(i64, i32)> = members.iter().map(|m| (m.0, m.2)).collect();
            let unchanged = prev
                .filter(|p| p.list_members.get(&list) == Some(&sig))
                .and_then(|p| p.lists.get(&list).cloned());
            let index = unchanged.unwrap_or_else(|| {
                Arc::new(ZoneIndex::build(
                    members.into_iter().map(|(id, g, _)| (id, g)).collect(),
                ))
            });
            s.lists.insert(list.clone(), index);
            s.list_members.insert(list, sig);
        }
        for a in data.assignments {
            s.assignments.entry(a.device_key).or_default().push(Span {
                supervisee_id: a.supervisee_id,
                from: a.from,
                to: a.to,
            });
        }
        for v in s.assignments.values_mut() {
            v.sort_by_key(|a| a.from);
        }
        for r in data.rules {
            match rule_from_row(&r, &s) {
                Ok(rule) => s.rules.entry(r.supervisee_id).or_default().push(rule),
                Err(e) => s.problems.push(format!("rule {}: {e}", r.id)),
            }
        }
        for e in data.exceptions {
            s.exceptions.entry(e.supervisee_id).or_default().push(e);
        }
        for p in data.pairings {
            let p = Pairing {
                id: p.id,
                victim_device_key: p.victim_device_key,
                supervisee_id: p.supervisee_id,
                enter_m: f64::from(p.enter_m),
                exit_m: f64::from(p.exit_m),
            };
            s.victim_of.entry(p.victim_device_key).or_default().push(p);
            s.pairings_of.entry(p.supervisee_id).or_default().push(p);
        }
        s.intervals = data
            .intervals
            .into_iter()
            .map(|(k, v)| (k, v.max(1) as u32))
            .collect();
        s
    }

    /// Who wore `device` at `t` (dated assignments; a late fix belongs to
    /// whoever wore the device then).
    pub fn wearer(&self, device_key: i64, t: DateTime<Utc>) -> Option<i64> {
        self.assignments
            .get(&device_key)?
            .iter()
            .find(|a| a.from <= t && a.to.is_none_or(|to| t < to))
            .map(|a| a.supervisee_id)
    }

    /// Devices worn by someone at `t`: (device, supervisee, assigned since).
    pub fn worn_at(
        &self,
        t: DateTime<Utc>,
    ) -> impl Iterator<Item = (i64, i64, DateTime<Utc>)> + '_ {
        self.assignments.iter().filter_map(move |(d, spans)| {
            spans
                .iter()
                .find(|a| a.from <= t && a.to.is_none_or(|to| t < to))
                .map(|a| (*d, a.supervisee_id, a.from))
        })
    }

    /// Whether `device` has any assignment (past, present or future).
    pub fn is_supervised_device(&self, device_key: i64) -> bool {
        self.assignments.contains_key(&device_key)
    }

    /// The supervisee.
    pub fn supervisee(&self, id: i64) -> Option<&Supervisee> {
        self.supervisees.get(&id)
    }

    /// A supervisee's rules.
    pub fn rules_of(&self, supervisee_id: i64) -> &[Rule] {
        self.rules.get(&supervisee_id).map_or(&[], Vec::as_slice)
    }

    /// Whether the rule applies at `t`: its schedule is on and no approved
    /// absence suspends it.
    pub fn applies(&self, supervisee_id: i64, rule: &Rule, t: DateTime<Utc>) -> bool {
        if let Some(s) = &rule.schedule {
            let Some(sup) = self.supervisees.get(&supervisee_id) else {
                return false;
            };
            if !s.is_active(t, sup.tz) {
                return false;
            }
        }
        !self.exceptions.get(&supervisee_id).is_some_and(|ex| {
            ex.iter().any(|e| {
                e.rule_id.is_none_or(|r| r == rule.id) && e.starts_at <= t && t < e.ends_at
            })
        })
    }

    /// A zone.
    pub fn zone(&self, id: i64) -> Option<&Arc<ZoneInfo>> {
        self.zones.get(&id)
    }

    /// A shared list's index.
    pub fn list(&self, list_ref: &str) -> Option<&ZoneIndex<i64>> {
        self.lists.get(list_ref).map(|v| &**v)
    }

    /// Pairings in which `device` is the victim's device.
    pub fn victim_pairings(&self, device_key: i64) -> &[Pairing] {
        self.victim_of.get(&device_key).map_or(&[], Vec::as_slice)
    }

    /// Pairings protecting someone from `supervisee_id`.
    pub fn pairings_of(&self, supervisee_id: i64) -> &[Pairing] {
        self.pairings_of
            .get(&supervisee_id)
            .map_or(&[], Vec::as_slice)
    }

    /// The device's reporting interval.
    pub fn report_interval(&self, device_key: i64) -> TimeDelta {
        TimeDelta::seconds(i64::from(*self.intervals.get(&device_key).unwrap_or(&60)))
    }

    /// (zone, version) of every prepared zone: what a reload need not read.
    pub fn zone_versions(&self) -> Vec<(i64, i32)> {
        self.zones.values().map(|z| (z.id, z.version)).collect()
    }

    /// Number of zones and rules, for logs.
    pub fn counts(&self) -> (usize, usize) {
        (self.zones.len(), self.rules.values().map(Vec::len).sum())
    }
}

/// Prepared geometry for every zone row, in order: reused from `prev` when
/// the version is unchanged, else parsed and prepared on all cores (100 000
/// zones take seconds on one).
fn prepare_all(
    zones: &[ZoneRow],
    prev: Option<&Snapshot>,
) -> Vec<Result<Arc<PreparedZone>, String>> {
    let one = |z: &ZoneRow| -> Result<Arc<PreparedZone>, String> {
        let reused = prev
            .and_then(|p| p.zones.get(&z.id))
            .filter(|old| old.version == z.version)
            .map(|old| old.geom.clone());
        match (reused, &z.geojson) {
            (Some(g), _) => Ok(g),
            (None, Some(json)) => Shape::from_geojson(json)
                .map(|shape| Arc::new(PreparedZone::new(&shape)))
                .map_err(|e| e.to_string()),
            (None, None) => Err("geometry not loaded".into()),
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || zones.len() < 1_000 {
        return zones.iter().map(one).collect();
    }
    let chunk = zones.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = zones
            .chunks(chunk)
            .map(|part| {
                let n = part.len();
                (
                    n,
                    scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()),
                )
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|(n, w)| {
                // A panic would be a bug; keep rows and results aligned anyway.
                w.join()
                    .unwrap_or_else(|_| vec![Err("zone preparation failed".into()); n])
            })
            .collect()
    })
}

fn rule_from_row(r: &RuleRow, s: &Snapshot) -> Result<Rule, String> {
    let role = match r.role.as_str() {
        "inclusion" => Role::Inclusion,
        "exclusion" => Role::Exclusion,
        "home" => Role::Home,
        other => return Err(format!("unknown role {other:?}")),
    };
    let target = match (&r.zone_id, &r.list_ref) {
        (Some(z), None) if s.zones.contains_key(z) => Target::Zone(*z),
        (Some(z), None) => return Err(format!("zone {z} is missing or unusable")),
        (None, Some(l)) if role == Role::Exclusion => Target::List(l.clone()),
        _ => return Err("needs one zone, or a list for exclusion rules".into()),
    };
    let schedule = r
        .schedule
        .as_ref()
        .map(Schedule::from_json)
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(Rule {
        id: r.id,
        role,
        target,
        schedule,
        confirm_fixes: r.confirm_fixes.max(1) as u32,
        grace: TimeDelta::seconds(i64::from(r.grace_s.max(0))),
    })
}
