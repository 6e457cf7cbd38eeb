//! A person walking into an exclusion zone: the provisioning and the
//! fixes shared by the rules, workflow and dashboard tests.

use chrono::{DateTime, Utc};
use serde_json::json;
use waypoint::scenario::Scenario;

/// Zone centre.
pub const LAT: f64 = 51.5;
/// Zone centre.
pub const LON: f64 = -0.12;
/// Metres to degrees of latitude.
pub const M: f64 = 1.0 / 111_195.0;

/// Supervisee C-100 (officer pc-1) wearing `device`, with a 100 m
/// exclusion zone ("Victim residence") around (LAT, LON).
pub fn scenario(device: &str) -> Scenario {
    Scenario::parse(
        &json!({
            "supervisees": [{"case_ref": "C-100", "time_zone": "Europe/London",
                             "officer": "pc-1"}],
            "devices": [{"device_id": device, "report_interval_s": 10}],
            "zones": [{"zone_ref": "victim-home", "name": "Victim residence", "geojson": {
                "type": "Feature", "properties": {"radius_m": 100},
                "geometry": {"type": "Point", "coordinates": [LON, LAT]}}}],
            "rules": [{"supervisee": "C-100", "role": "exclusion", "zone": "victim-home"}],
            "assignments": [{"device": device, "supervisee": "C-100",
                             "from": "2020-01-01T00:00:00Z"}]
        })
        .to_string(),
    )
    .unwrap()
}

/// A one-fix JSON message `north_m` metres north of the zone centre.
pub fn at(device: &str, seq: u64, ts: DateTime<Utc>, north_m: f64) -> String {
    json!({"v": 1, "device": device, "boot": 1, "seq": seq, "fixes": [{
        "ts": ts.timestamp_millis(), "lat": LAT + north_m * M, "lon": LON, "acc": 8}]})
    .to_string()
}
