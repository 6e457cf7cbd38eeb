//! The fleet: who wears which device, where they live and work, which
//! zones and schedules apply to them, and when each persona's incident
//! happens. Generated from a seed (each device from its own random stream,
//! so device 17 is the same person in a fleet of 50 or 50,000), saved to and
//! loaded from a file, and rendered as a Waypoint scenario for provisioning.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::persona::{Mix, Persona};
use crate::plan::{PlaceKind, Visit};
use crate::world::{Frame, P};

/// Half-side of the inclusion zone (the county), metres.
pub const COUNTY_HALF_M: f64 = 25_000.0;
/// Homes lie within this half-side of the centre, well inside the county.
pub const HOMES_HALF_M: f64 = 15_000.0;
/// Routine places (work, shops, garage, bar) lie within this half-side of home.
pub const ROUTINE_HALF_M: f64 = 3_000.0;
/// Exclusion zones and victims' homes sit this far (on both axes) from home:
/// outside the routine square, so a routine route never comes near them.
pub const FAR_OFFSET_M: f64 = 4_500.0;
/// Exclusion zone radius, metres.
pub const EXCLUSION_R_M: f64 = 300.0;
/// Home zone radius, metres.
pub const HOME_R_M: f64 = 100.0;
/// Victim proximity: raise within, clear beyond (metres).
pub const VICTIM_ENTER_M: f64 = 500.0;
/// See [`VICTIM_ENTER_M`].
pub const VICTIM_EXIT_M: f64 = 750.0;
/// Curfew, local wall clock, every day.
pub const CURFEW: (u32, u32) = (21, 7);
/// Longest simulated window.
pub const MAX_SPAN_MS: i64 = 366 * 86_400_000;
/// Assignments start here: fixed, so re-running a fleet re-uses the same
/// assignment rows instead of overlapping them (the server forbids overlaps).
pub const ASSIGNED_FROM: &str = "2020-01-01T00:00:00Z";

/// Server settings the ground truth must mirror (the server's defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerRules {
    /// Consecutive violating fixes before a zone alert (`confirm_fixes`).
    pub confirm_fixes: u32,
    /// `--gps-loss-secs`.
    pub gps_loss_s: u32,
    /// `--no-signal-intervals`.
    pub no_signal_intervals: u32,
    /// Battery low threshold, percent.
    pub battery_low_pct: u8,
    /// Battery critical threshold, percent.
    pub battery_critical_pct: u8,
    /// Battery hysteresis, percent.
    pub battery_hysteresis_pct: u8,
}

impl Default for ServerRules {
    fn default() -> Self {
        ServerRules {
            confirm_fixes: 2,
            gps_loss_s: 300,
            no_signal_intervals: 3,
            battery_low_pct: 20,
            battery_critical_pct: 10,
            battery_hysteresis_pct: 5,
        }
    }
}

/// Everything a fleet is generated from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetParams {
    /// Random seed: same seed and parameters, same fleet and messages.
    pub seed: u64,
    /// Supervisee devices (victims' devices come on top).
    pub devices: usize,
    /// Persona weights.
    pub mix: Mix,
    /// Seconds between a device's messages (simulated time).
    pub interval_s: u32,
    /// Fixes per message, evenly spaced over the interval.
    pub fixes_per_message: u32,
    /// City centre.
    pub frame: Frame,
    /// IANA time zone of every supervisee.
    pub time_zone: String,
    /// Prefix of every id the fleet provisions (devices, cases, zones).
    pub id_prefix: String,
    /// Start of the simulated window, epoch ms.
    pub start_ms: i64,
    /// Length of the simulated window, ms.
    pub span_ms: i64,
    /// Server settings the ground truth mirrors.
    pub server: ServerRules,
}

impl FleetParams {
    /// Checks every parameter, so a bad flag or a hand-edited fleet file
    /// gets a clear error instead of a hang or an overflow.
    pub fn validate(&self) -> Result<(), FleetError> {
        let bad = |m: String| Err(FleetError::Invalid(m));
        if !(1..=1_000_000).contains(&self.devices) {
            return bad("--devices must be 1..=1000000".into());
        }
        if self.time_zone.parse::<Tz>().is_err() {
            return bad(format!(
                "unknown time zone {:?} (an IANA name such as America/New_York)",
                self.time_zone
            ));
        }
        if !(1..=86_400).contains(&self.interval_s) {
            return bad("--interval must be 1..=86400 s".into());
        }
        // A fix at most every second, and a message well under the
        // broker's 128 KiB packet limit (JSON is ~100 bytes per fix).
        if !(1..=1000).contains(&self.fixes_per_message) || self.fixes_per_message > self.interval_s
        {
            return bad(
                "--fixes-per-message must be 1..=1000 and at most --interval (one fix per second)"
                    .into(),
            );
        }
        if !(1..=MAX_SPAN_MS).contains(&self.span_ms) {
            return bad(format!(
                "the simulated window must last between 1 ms and 366 days (duration × speed), not {} s",
                self.span_ms / 1000
            ));
        }
        if !(946_684_800_000..=4_102_444_800_000).contains(&self.start_ms) {
            return bad("the simulated window must start between 2000 and 2100".into());
        }
        let f = &self.frame;
        if !(f.lat0.abs() <= 80.0 && f.lon0.abs() <= 179.0) {
            return bad("the centre must be within |lat| ≤ 80, |lon| ≤ 179".into());
        }
        let p = &self.id_prefix;
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if p.is_empty()
            || p.len() > 40
            || !p.chars().all(ok_char)
            || !p.starts_with(|c: char| c.is_ascii_alphanumeric())
        {
            return bad(format!(
                "--id-prefix {p:?}: 1–40 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit \
                 (device ids are MQTT topic segments)"
            ));
        }
        Ok(())
    }

    /// The time zone (validated when the fleet is generated).
    pub fn tz(&self) -> Tz {
        self.time_zone.parse().unwrap_or(chrono_tz::UTC)
    }
    /// Fix interval, ms.
    pub fn fix_interval_ms(&self) -> i64 {
        i64::from(self.interval_s) * 1000 / i64::from(self.fixes_per_message.max(1))
    }
}

/// One simulated supervisee and their device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimDevice {
    /// Index in the fleet.
    pub idx: usize,
    /// Device id (MQTT topic segment).
    pub device_id: String,
    /// Supervisee case reference.
    pub case_ref: String,
    /// What they do.
    pub persona: Persona,
    /// Home.
    pub home: P,
    /// Workplace, when employed.
    pub work: Option<P>,
    /// Two errand places.
    pub shops: [P; 2],
    /// Evening venue.
    pub bar: P,
    /// Underground garage (no GNSS).
    pub garage: P,
    /// Centre of their exclusion zone.
    pub exclusion: P,
    /// A point beyond the county line.
    pub outside: P,
    /// Paired victim's device id and home, for the victim-pair persona.
    pub victim: Option<(String, P)>,
    /// Device clock offset (device time = true time − skew), ms.
    pub skew_ms: i64,
    /// Offset of this device's messages within the interval, ms.
    pub phase_ms: i64,
    /// Battery at the window start, percent.
    pub battery0: f64,
    /// Battery drain, percent per hour.
    pub drain_pct_h: f64,
    /// The persona's incident, epoch ms (true time).
    pub incident_ms: i64,
}

/// A generated (or loaded) fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fleet {
    /// What it was generated from.
    pub params: FleetParams,
    /// The devices.
    pub devices: Vec<SimDevice>,
}

/// Parameters that cannot make a fleet.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Bad value.
    #[error("{0}")]
    Invalid(String),
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// File content.
    #[error("{path}: not a firmware-sim fleet file: {source}")]
    Parse {
        /// File.
        path: String,
        /// Cause.
        source: serde_json::Error,
    },
}

// Independent random streams per device and purpose, so adding a use of
// randomness in one place does not shift every other draw.
const SALT_PERSONAS: u64 = 1;
const SALT_LAYOUT: u64 = 2;
const SALT_DAYS: u64 = 3;
const SALT_NOISE: u64 = 4;
const SALT_VICTIM_NOISE: u64 = 5;

fn stream(seed: u64, idx: usize, salt: u64) -> ChaCha8Rng {
    // SplitMix-style mixing so neighbouring indices get unrelated streams.
    let mut z = seed ^ (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

/// Random stream for a device's position noise (used by the device model);
/// a victim's device has its own, so its errors are not its pair's.
pub fn noise_stream(seed: u64, idx: usize, victim: bool) -> ChaCha8Rng {
    stream(
        seed,
        idx,
        if victim {
            SALT_VICTIM_NOISE
        } else {
            SALT_NOISE
        },
    )
}

fn around(rng: &mut ChaCha8Rng, c: P, half: f64) -> P {
    c.offset(rng.random_range(-half..half), rng.random_range(-half..half))
}

impl Fleet {
    /// Generates the fleet.
    pub fn generate(params: FleetParams) -> Result<Fleet, FleetError> {
        params.validate()?;
        let mut personas = params.mix.assign(params.devices);
        personas.shuffle(&mut stream(params.seed, usize::MAX, SALT_PERSONAS));
        let devices = personas
            .into_iter()
            .enumerate()
            .map(|(idx, persona)| SimDevice::generate(&params, idx, persona))
            .collect();
        Ok(Fleet { params, devices })
    }

    /// Writes the fleet to `path` (JSON).
    pub fn save(&self, path: &str) -> Result<(), FleetError> {
        let io = |source| FleetError::Io {
            path: path.into(),
            source,
        };
        let f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        serde_json::to_writer(f, self).map_err(|e| io(e.into()))
    }

    /// Reads a fleet written by [`Fleet::save`].
    pub fn load(path: &str) -> Result<Fleet, FleetError> {
        let f = std::fs::File::open(path).map_err(|source| FleetError::Io {
            path: path.into(),
            source,
        })?;
        let fleet: Fleet =
            serde_json::from_reader(std::io::BufReader::new(f)).map_err(|source| {
                FleetError::Parse {
                    path: path.into(),
                    source,
                }
            })?;
        fleet.params.validate()?;
        if fleet.devices.len() != fleet.params.devices
            || fleet.devices.iter().enumerate().any(|(i, d)| d.idx != i)
        {
            return Err(FleetError::Invalid(format!(
                "{path}: the device list does not match the fleet's parameters"
            )));
        }
        Ok(fleet)
    }

    /// The scenario that ends every assignment of the fleet at `at`:
    /// loaded after a run, so a fleet that stops reporting does not leave
    /// officers a flood of no_signal alerts. Loading [`Fleet::scenario`]
    /// again re-opens the same assignments.
    pub fn teardown(&self, at: DateTime<Utc>) -> Value {
        let to = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let assignments: Vec<Value> = self
            .devices
            .iter()
            .map(|d| json!({"device": d.device_id, "supervisee": d.case_ref, "from": ASSIGNED_FROM, "to": to}))
            .collect();
        json!({ "assignments": assignments })
    }

    /// The Waypoint scenario (docs/scenario.md) that provisions this fleet.
    pub fn scenario(&self) -> Value {
        let p = &self.params;
        let f = &p.frame;
        let ll = |q: P| {
            let (lat, lon) = f.to_latlon(q);
            json!([round7(lon), round7(lat)])
        };
        let circle = |q: P, r: f64| {
            json!({"type": "Feature", "properties": {"radius_m": r},
                   "geometry": {"type": "Point", "coordinates": ll(q)}})
        };
        let h = COUNTY_HALF_M;
        let county_ref = format!("{}county", p.id_prefix);
        let mut zones = vec![json!({
            "zone_ref": county_ref, "name": "Simulated county",
            "geojson": {"type": "Polygon", "coordinates": [[
                ll(P::new(-h, -h)), ll(P::new(h, -h)), ll(P::new(h, h)), ll(P::new(-h, h)), ll(P::new(-h, -h))
            ]]}
        })];
        let (mut supervisees, mut devices, mut rules, mut assignments, mut pairings) =
            (vec![], vec![], vec![], vec![], vec![]);
        let curfew = json!({"windows": [{"days": ["mon","tue","wed","thu","fri","sat","sun"],
            "start": format!("{:02}:00", CURFEW.0), "end": format!("{:02}:00", CURFEW.1)}]});
        for d in &self.devices {
            supervisees.push(json!({"case_ref": d.case_ref, "time_zone": p.time_zone,
                "officer": format!("{}officer-{}", p.id_prefix, d.idx % 40)}));
            devices.push(json!({"device_id": d.device_id, "report_interval_s": p.interval_s}));
            let home_ref = format!("{}home-{}", p.id_prefix, d.idx);
            let excl_ref = format!("{}excl-{}", p.id_prefix, d.idx);
            zones.push(
                json!({"zone_ref": home_ref, "name": "Home", "geojson": circle(d.home, HOME_R_M)}),
            );
            zones.push(json!({"zone_ref": excl_ref, "name": "Exclusion zone",
                "geojson": circle(d.exclusion, EXCLUSION_R_M)}));
            rules.push(json!({"supervisee": d.case_ref, "role": "inclusion", "zone": county_ref}));
            rules.push(json!({"supervisee": d.case_ref, "role": "exclusion", "zone": excl_ref}));
            rules.push(
                json!({"supervisee": d.case_ref, "role": "home", "zone": home_ref,
                "schedule": curfew}),
            );
            assignments.push(
                json!({"device": d.device_id, "supervisee": d.case_ref, "from": ASSIGNED_FROM}),
            );
            if let Some((vid, _)) = &d.victim {
                devices.push(json!({"device_id": vid, "report_interval_s": p.interval_s}));
                pairings.push(json!({"victim_device": vid, "supervisee": d.case_ref,
                    "enter_m": VICTIM_ENTER_M, "exit_m": VICTIM_EXIT_M}));
            }
        }
        json!({"supervisees": supervisees, "devices": devices, "zones": zones, "rules": rules,
               "assignments": assignments, "pairings": pairings})
    }
}

fn round7(v: f64) -> f64 {
    (v * 1e7).round() / 1e7
}

impl SimDevice {
    fn generate(p: &FleetParams, idx: usize, persona: Persona) -> SimDevice {
        let mut rng = stream(p.seed, idx, SALT_LAYOUT);
        let home = around(&mut rng, P::new(0.0, 0.0), HOMES_HALF_M);
        let work = rng
            .random_bool(0.8)
            .then(|| around(&mut rng, home, ROUTINE_HALF_M));
        let shops = [
            around(&mut rng, home, ROUTINE_HALF_M),
            around(&mut rng, home, ROUTINE_HALF_M),
        ];
        let bar = around(&mut rng, home, ROUTINE_HALF_M);
        let garage = around(&mut rng, home, ROUTINE_HALF_M);
        // Exclusion zone and victim's home in two different diagonal
        // quadrants, FAR_OFFSET_M away on both axes.
        let quadrants = [(1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, -1.0)];
        let q = rng.random_range(0..4);
        let (ex, ey) = quadrants[q];
        let exclusion = home.offset(ex * FAR_OFFSET_M, ey * FAR_OFFSET_M);
        let (vx, vy) = quadrants[(q + 2) % 4];
        let victim = (persona == Persona::VictimPair).then(|| {
            (
                format!("{}v{:06}", p.id_prefix, idx),
                home.offset(vx * FAR_OFFSET_M, vy * FAR_OFFSET_M),
            )
        });
        // Beyond the county line on home's nearest side, 3 km out.
        let outside = if home.x.abs() >= home.y.abs() {
            P::new(home.x.signum() * (COUNTY_HALF_M + 3_000.0), home.y)
        } else {
            P::new(home.x, home.y.signum() * (COUNTY_HALF_M + 3_000.0))
        };
        let span = p.span_ms as f64;
        let incident_ms = p.start_ms + (span * rng.random_range(0.08..0.40)) as i64;
        let skew_ms = if persona == Persona::ClockSkew {
            rng.random_range(60_000..15 * 60_000)
        } else {
            0
        };
        let (battery0, drain_pct_h) = if persona == Persona::BatteryNeglect {
            // Reaches the low threshold at the incident and empties over
            // about a third of the window (never slower than a worn-out
            // battery, 4 %/h).
            let hours = |ms: f64| ms / 3_600_000.0;
            let rate = (f64::from(p.server.battery_low_pct) / hours(0.3 * span)).max(4.0);
            let b0 = f64::from(p.server.battery_low_pct)
                + rate * hours((incident_ms - p.start_ms) as f64)
                + 0.5;
            (b0.min(100.0), rate)
        } else {
            (rng.random_range(75.0..100.0), rng.random_range(1.0..1.8))
        };
        SimDevice {
            idx,
            device_id: format!("{}{:06}", p.id_prefix, idx),
            case_ref: format!("{}case-{:06}", p.id_prefix, idx),
            persona,
            home,
            work,
            shops,
            bar,
            garage,
            exclusion,
            outside,
            victim,
            skew_ms,
            // At least 1 s into the interval: the paired victim's device reports
            // 1 s ahead of its supervisee, so the server has a fresh victim
            // position when the supervisee's fix arrives.
            phase_ms: rng.random_range(
                1000.min(i64::from(p.interval_s) * 500)..i64::from(p.interval_s) * 1000,
            ),
            battery0,
            drain_pct_h,
            incident_ms,
        }
    }

    /// Dwell at an incident site: long enough for the server's debounce
    /// (several fixes) whatever the interval.
    pub fn dwell_ms(p: &FleetParams) -> i64 {
        (6 * i64::from(p.interval_s) * 1000).max(12 * 60_000)
    }

    /// Cellular outage of the coverage-loss persona, `[from, to)` true time.
    pub fn offline(&self, p: &FleetParams) -> Option<(i64, i64)> {
        (self.persona == Persona::CoverageLoss).then(|| {
            let len = (8 * i64::from(p.interval_s) * 1000).max(p.span_ms / 12);
            (self.incident_ms, self.incident_ms + len)
        })
    }

    /// Garage visit of the coverage-loss persona (GNSS lost), `[from, to)`.
    pub fn garage_visit(&self, p: &FleetParams) -> Option<(i64, i64)> {
        let (_, back) = self.offline(p)?;
        let at = back + (4 * i64::from(p.interval_s) * 1000).max(p.span_ms / 20);
        let stay = i64::from(p.server.gps_loss_s) * 1000 + 6 * i64::from(p.interval_s) * 1000;
        Some((at, at + stay))
    }

    /// Strap open `[from, to)` of the tamper persona.
    pub fn strap_open(&self, p: &FleetParams) -> Option<(i64, i64)> {
        (self.persona == Persona::StrapTamper).then(|| {
            let len = (6 * i64::from(p.interval_s) * 1000).max(p.span_ms / 10);
            (self.incident_ms, self.incident_ms + len)
        })
    }

    /// The curfew violator's late night: the first curfew start after the
    /// window has begun (none if the window holds none).
    pub fn curfew_night(&self, p: &FleetParams) -> Option<i64> {
        if self.persona != Persona::CurfewViolator {
            return None;
        }
        let tz = p.tz();
        let from = p.start_ms + p.span_ms / 50;
        let day0 = DateTime::from_timestamp_millis(from)?
            .with_timezone(&tz)
            .date_naive();
        (0..400)
            .filter_map(|i| local_ms(&tz, day0 + Duration::days(i), CURFEW.0, 0))
            .find(|t| *t >= from)
            .filter(|t| *t < p.start_ms + p.span_ms)
    }

    /// The visits of this person over the window (and a day either side,
    /// so the window may open mid-journey).
    pub fn visits(&self, p: &FleetParams) -> Vec<Visit> {
        let tz = p.tz();
        let mut rng = stream(p.seed, self.idx, SALT_DAYS);
        let v = |at_ms, place, kind| Visit { at_ms, place, kind };
        let first = p.start_ms - 86_400_000;
        let last = p.start_ms + p.span_ms + 86_400_000;
        let mut out = vec![v(first - 86_400_000, self.home, PlaceKind::Home)];
        let Some(d0) = DateTime::from_timestamp_millis(first) else {
            return out;
        };
        let mut day = d0.with_timezone(&tz).date_naive();
        while local_ms(&tz, day, 0, 0).is_some_and(|t| t <= last) {
            let at = |h: u32, m0: u32, m1: u32, rng: &mut ChaCha8Rng| {
                local_ms(&tz, day, h, 0).map(|t| t + rng.random_range(m0..m1) as i64 * 60_000)
            };
            let weekday = !matches!(day.weekday(), Weekday::Sat | Weekday::Sun);
            let mut push = |t: Option<i64>, place, kind| {
                if let Some(t) = t {
                    out.push(v(t, place, kind));
                }
            };
            match self.work {
                Some(work) if weekday => {
                    push(at(8, 15, 55, &mut rng), work, PlaceKind::Work);
                    push(at(17, 5, 40, &mut rng), self.shops[0], PlaceKind::Shop);
                    push(at(18, 10, 40, &mut rng), self.home, PlaceKind::Home);
                    if rng.random_bool(0.4) {
                        push(at(19, 0, 20, &mut rng), self.shops[1], PlaceKind::Shop);
                        push(at(19, 45, 60, &mut rng), self.home, PlaceKind::Home);
                    }
                }
                _ => {
                    push(at(10, 0, 60, &mut rng), self.shops[0], PlaceKind::Shop);
                    push(at(12, 0, 60, &mut rng), self.home, PlaceKind::Home);
                    push(at(15, 0, 60, &mut rng), self.shops[1], PlaceKind::Shop);
                    push(at(17, 0, 60, &mut rng), self.home, PlaceKind::Home);
                }
            }
            day = day.succ_opt().unwrap_or(day);
            if day == NaiveDate::MAX {
                break;
            }
        }
        let dwell = Self::dwell_ms(p);
        let travel_home = |from: P| {
            let r = crate::world::route(from, self.home);
            let len = crate::world::length(&r);
            (len / crate::world::speed_for(len) * 1000.0) as i64
        };
        let replace = |out: &mut Vec<Visit>, from: i64, to: i64, new: &[Visit]| {
            out.retain(|x| x.at_ms < from || x.at_ms > to);
            out.extend_from_slice(new);
        };
        let t = self.incident_ms;
        let site = match self.persona {
            Persona::ExclusionEntrant => {
                Some((self.exclusion.offset(25.0, -15.0), PlaceKind::ExclusionSite))
            }
            Persona::InclusionLeaver => Some((self.outside, PlaceKind::OutsideCounty)),
            Persona::VictimPair => self
                .victim
                .as_ref()
                .map(|(_, vh)| (vh.offset(120.0, 0.0), PlaceKind::NearVictim)),
            _ => None,
        };
        if let Some((place, kind)) = site {
            let back = t + dwell + travel_home(place) + 5 * 60_000;
            replace(
                &mut out,
                t - 3_600_000,
                back + 5_400_000,
                &[v(t, place, kind), v(back, self.home, PlaceKind::Home)],
            );
        }
        if let Some((g0, g1)) = self.garage_visit(p) {
            let back = g1 + travel_home(self.garage) + 5 * 60_000;
            replace(
                &mut out,
                g0 - 3_600_000,
                back + 5_400_000,
                &[
                    v(g0, self.garage, PlaceKind::Garage),
                    v(back, self.home, PlaceKind::Home),
                ],
            );
        }
        if let Some(night) = self.curfew_night(p) {
            let late = (6 * i64::from(p.interval_s) * 1000).max(30 * 60_000);
            replace(
                &mut out,
                night - 7_200_000,
                night + 10_800_000,
                &[
                    v(night - 40 * 60_000, self.bar, PlaceKind::Bar),
                    v(night + late, self.home, PlaceKind::Home),
                ],
            );
        }
        // Keep memory per device small (100k devices): the visit in
        // progress six hours before the window, and nothing long after it.
        out.sort_by_key(|x| x.at_ms);
        let keep_from = out
            .iter()
            .rposition(|x| x.at_ms <= p.start_ms - 6 * 3_600_000)
            .unwrap_or(0);
        out.drain(..keep_from);
        out.retain(|x| x.at_ms <= p.start_ms + p.span_ms + 6 * 3_600_000);
        out
    }
}

/// Epoch ms of a local wall-clock time (the earliest, in a DST overlap;
/// `None` in a DST gap).
pub fn local_ms(tz: &Tz, day: NaiveDate, h: u32, m: u32) -> Option<i64> {
    let t = day.and_time(NaiveTime::from_hms_opt(h, m, 0)?);
    tz.from_local_datetime(&t)
        .earliest()
        .map(|d| d.timestamp_millis())
}

/// Whether the curfew is in force at `ts_ms` (local wall clock).
pub fn curfew_active(tz: &Tz, ts_ms: i64) -> bool {
    let Some(t) = DateTime::from_timestamp_millis(ts_ms) else {
        return false;
    };
    let local = t.with_timezone(tz);
    let h = chrono::Timelike::hour(&local);
    h >= CURFEW.0 || h < CURFEW.1
}

/// The simulated window `(start_ms, span_ms)` of a run lasting
/// `duration_s` real seconds at `speed` simulated seconds per second,
/// starting about now. Real time (speed ≤ 1) starts now. An accelerated run
/// replays a window that ends no later than the run does: simulated time
/// `start + speed × r` must stay behind the wall clock `now + r` for every
/// `r` up to the duration, which holds when the window *ends* by
/// `now + duration` (10 s spare for start-up) — see [`place_window`].
pub fn window(tz: &Tz, now: DateTime<Utc>, speed: f64, duration_s: f64) -> (i64, i64) {
    let span_ms = (duration_s * speed * 1000.0) as i64;
    if speed <= 1.0 {
        return (now.timestamp_millis(), span_ms);
    }
    let latest_end = now + Duration::milliseconds((duration_s * 1000.0) as i64 - 10_000);
    (place_window(tz, latest_end, span_ms), span_ms)
}

/// Chooses the start of an accelerated run's window, which must end no
/// later than `latest_end`. A window shorter than a day is placed so the
/// curfew's 21:00 start falls at 60 % of it — that is where the curfew
/// persona has something to break; a longer one starts at noon local.
pub fn place_window(tz: &Tz, latest_end: DateTime<Utc>, span_ms: i64) -> i64 {
    let (h, offset) = if span_ms < 86_400_000 {
        (CURFEW.0, (span_ms as f64 * 0.6) as i64)
    } else {
        (12, 0)
    };
    let latest_start = latest_end.timestamp_millis() - span_ms;
    let mut day = latest_end.with_timezone(tz).date_naive();
    for _ in 0..4 {
        if let Some(a) = local_ms(tz, day, h, 0) {
            let s = a - offset;
            if s <= latest_start {
                return s;
            }
        }
        day = day.pred_opt().unwrap_or(day);
    }
    latest_start
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn params(devices: usize, span_ms: i64) -> FleetParams {
        FleetParams {
            seed: 7,
            devices,
            mix: Mix::default(),
            interval_s: 60,
            fixes_per_message: 1,
            frame: Frame {
                lat0: 40.70,
                lon0: -73.95,
            },
            time_zone: "America/New_York".into(),
            id_prefix: "t-".into(),
            start_ms: 1_764_000_000_000,
            span_ms,
            server: ServerRules::default(),
        }
    }

    #[test]
    fn same_seed_same_fleet_and_devices_independent_of_size() {
        let a = Fleet::generate(params(50, 3_600_000)).unwrap();
        let b = Fleet::generate(params(50, 3_600_000)).unwrap();
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        let big = Fleet::generate(params(500, 3_600_000)).unwrap();
        assert_eq!(a.devices[3].home, big.devices[3].home);
    }

    #[test]
    fn layout_keeps_routine_away_from_zones() {
        let f = Fleet::generate(params(300, 86_400_000)).unwrap();
        for d in &f.devices {
            assert!(d.home.linf(P::new(0.0, 0.0)) <= HOMES_HALF_M);
            for q in [d.shops[0], d.shops[1], d.bar, d.garage]
                .into_iter()
                .chain(d.work)
            {
                assert!(q.linf(d.home) <= ROUTINE_HALF_M);
                assert!(q.dist(d.exclusion) > EXCLUSION_R_M + 1_000.0);
            }
            assert!(d.outside.linf(P::new(0.0, 0.0)) > COUNTY_HALF_M + 2_000.0);
        }
    }

    #[test]
    fn window_ends_before_the_limit_with_curfew_inside() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let limit = Utc.with_ymd_and_hms(2026, 11, 26, 15, 0, 0).unwrap();
        let span = 3 * 3_600_000;
        let s = place_window(&tz, limit, span);
        assert!(s + span <= limit.timestamp_millis());
        let at60 = DateTime::from_timestamp_millis(s + span * 6 / 10)
            .unwrap()
            .with_timezone(&tz);
        assert_eq!(chrono::Timelike::hour(&at60), 21);
    }

    #[test]
    fn accelerated_windows_never_run_ahead_of_the_wall_clock() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 15, 0, 0).unwrap();
        for (speed, dur) in [(1.0, 600.0), (60.0, 60.0), (240.0, 30.0), (2000.0, 100.0)] {
            let (s, span) = window(&tz, now, speed, dur);
            assert_eq!(span, (speed * dur * 1000.0) as i64);
            // Simulated time at real second r is s + speed·r; the wall clock is now + r.
            for i in 0..=100 {
                let r = dur * 1000.0 * f64::from(i) / 100.0;
                assert!(s as f64 + speed * r <= now.timestamp_millis() as f64 + r + 1.0);
            }
        }
    }

    #[test]
    fn scenario_has_every_section() {
        let f = Fleet::generate(params(20, 3_600_000)).unwrap();
        let s = f.scenario();
        assert_eq!(s["supervisees"].as_array().unwrap().len(), 20);
        assert_eq!(s["zones"].as_array().unwrap().len(), 41);
        assert_eq!(s["rules"].as_array().unwrap().len(), 60);
        let pairs = f.devices.iter().filter(|d| d.victim.is_some()).count();
        assert_eq!(s["pairings"].as_array().unwrap().len(), pairs);
        assert!(s["assignments"][0].get("to").is_none());
        let closed = f.teardown(Utc::now());
        assert!(closed["assignments"][0]["to"].is_string());
        assert_eq!(closed["assignments"].as_array().unwrap().len(), 20);
    }
}
