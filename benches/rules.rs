//! The rules engine per fix, as the shard runs it (`Evaluator::message`:
//! assignment lookup, schedules, per-person zones, the shared list's R-tree,
//! accuracy classification, debounce state), at the realistic shape: a
//! county inclusion polygon, a home curfew, two personal exclusion circles
//! and one shared exclusion list of N star-shaped zones (16–256 vertices).
//! Fixed seeds. `cargo bench --bench rules`; geometry alone and its
//! baselines are in `benches/geofence.rs`.

use std::hint::black_box;

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

use waypoint::domain::{DeviceId, Fix, FixSource, MessageKey, Telemetry};
use waypoint::rules::board::VictimBoard;
use waypoint::rules::engine::{DeviceState, Evaluator, Output, RulesConfig};
use waypoint::rules::snapshot::*;
use waypoint::store::AcceptedMessage;

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

const LAT0: f64 = 51.5;
const LON0: f64 = -0.1;
const M_LAT: f64 = 1.0 / 111_195.0;
const M_LON: f64 = M_LAT / 0.6225; // cos(51.5°)

fn star(rng: &mut Rng, lat: f64, lon: f64) -> serde_json::Value {
    let n = 16 + (rng.f() * 240.0) as usize;
    let r = 50.0 + rng.f() * 250.0;
    let mut ring: Vec<[f64; 2]> = (0..n)
        .map(|i| {
            let a = i as f64 / n as f64 * std::f64::consts::TAU;
            let rr = r * (0.6 + 0.4 * rng.f());
            [lon + rr * a.cos() * M_LON, lat + rr * a.sin() * M_LAT]
        })
        .collect();
    ring.push(ring[0]);
    json!({"type": "Polygon", "coordinates": [ring]})
}

fn circle(lat: f64, lon: f64, r: f64) -> serde_json::Value {
    json!({"type": "Feature", "properties": {"radius_m": r},
           "geometry": {"type": "Point", "coordinates": [lon, lat]}})
}

/// Shared zones spread over a square growing with N at ~1 zone per km²
/// (a realistic density for "all schools"), fixes over the same square.
fn snapshot(n: usize) -> (Snapshot, f64) {
    let half_m = (n as f64).sqrt() * 500.0;
    let mut rng = Rng(0x5eed_0000 + n as u64);
    let mut zones = Vec::with_capacity(n + 4);
    for i in 0..n {
        let lat = LAT0 + (rng.f() * 2.0 - 1.0) * half_m * M_LAT;
        let lon = LON0 + (rng.f() * 2.0 - 1.0) * half_m * M_LON;
        zones.push(ZoneRow {
            id: 1000 + i as i64,
            name: format!("School {i}"),
            list_ref: Some("schools".into()),
            version: 1,
            geojson: Some(star(&mut rng, lat, lon)),
        });
    }
    let (s, w, e) = (LAT0 - 0.5, LON0 - 0.8, LON0 + 0.8);
    zones.push(ZoneRow {
        id: 1,
        name: "County".into(),
        list_ref: None,
        version: 1,
        geojson: Some(json!({"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, LAT0 + 0.5], [w, LAT0 + 0.5], [w, s]]]})),
    });
    for (id, lat) in [(2, LAT0 + 0.01), (3, LAT0 - 0.01), (4, LAT0)] {
        zones.push(ZoneRow {
            id,
            name: format!("Zone {id}"),
            list_ref: None,
            version: 1,
            geojson: Some(circle(lat, LON0 + 0.01, 80.0)),
        });
    }
    let rule = |id, role: &str, zone: Option<i64>, list: Option<&str>, schedule| RuleRow {
        id,
        supervisee_id: 1,
        role: role.into(),
        zone_id: zone,
        list_ref: list.map(String::from),
        schedule,
        confirm_fixes: 2,
        grace_s: 60,
    };
    let data = RulesData {
        supervisees: vec![SuperviseeRow {
            id: 1,
            case_ref: "C-1".into(),
            time_zone: "Europe/London".into(),
        }],
        zones,
        assignments: vec![AssignmentRow {
            device_key: 1,
            supervisee_id: 1,
            from: DateTime::from_timestamp(0, 0).unwrap(),
            to: None,
        }],
        rules: vec![
            rule(1, "inclusion", Some(1), None, None),
            rule(2, "exclusion", Some(2), None, None),
            rule(3, "exclusion", Some(3), None, None),
            rule(
                4,
                "home",
                Some(4),
                None,
                Some(
                    json!({"windows": [{"days": ["mon","tue","wed","thu","fri","sat","sun"],
                    "start": "21:00", "end": "07:00"}]}),
                ),
            ),
            rule(5, "exclusion", None, Some("schools"), None),
        ],
        ..Default::default()
    };
    let data_again = data.clone();
    let started = std::time::Instant::now();
    let snap = Snapshot::build(data);
    eprintln!(
        "snapshot with {n} shared zones built in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert!(snap.problems.is_empty(), "{:?}", snap.problems);
    // What a configuration change costs a running server: the store sends no
    // geometry for versions already held, nothing is re-prepared.
    let mut unchanged = data_again;
    for z in &mut unchanged.zones {
        z.geojson = None;
    }
    let started = std::time::Instant::now();
    let again = Snapshot::rebuild(unchanged, Some(&snap));
    eprintln!(
        "  reload with no zone changed: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert!(again.problems.is_empty());
    (snap, half_m)
}

fn messages(half_m: f64) -> Vec<AcceptedMessage> {
    let mut rng = Rng(42);
    let t0 = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
    (0..4096)
        .map(|i| {
            let ts: DateTime<Utc> = t0 + TimeDelta::seconds(30 * i);
            AcceptedMessage {
                device_key: 1,
                topic: String::new(),
                received_at: ts,
                digest: [0; 16],
                telemetry: Telemetry {
                    device: DeviceId::parse("tag-1").unwrap(),
                    key: MessageKey { boot: 1, seq: i },
                    fixes: vec![Fix {
                        ts,
                        lat: LAT0 + (rng.f() * 2.0 - 1.0) * half_m * M_LAT,
                        lon: LON0 + (rng.f() * 2.0 - 1.0) * half_m * M_LON,
                        acc_m: (5.0 + rng.f() * 45.0) as f32,
                        alt_m: None,
                        speed_mps: None,
                        heading_deg: None,
                        src: FixSource::Gnss,
                    }],
                    status: None,
                    events: vec![],
                },
                item_rejections: vec![],
                payload: Bytes::new(),
                store_fixes: true,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let cfg = RulesConfig::default();
    let board = VictimBoard::default();
    let mut g = c.benchmark_group("rules_per_fix");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    for n in [1_000, 10_000, 100_000] {
        let (snap, half_m) = snapshot(n);
        let msgs = messages(half_m);
        let ev = Evaluator::new(&snap, &cfg, &board);
        let mut st = DeviceState::default();
        let mut i = 0usize;
        g.bench_function(format!("engine/{n}"), |b| {
            b.iter(|| {
                let m = &msgs[i % msgs.len()];
                i += 1;
                let mut out = Output::default();
                // Newest-fix bookkeeping would make the replayed fixes late
                // after one lap: reset it, keep the conditions.
                st.newest_fix = None;
                ev.message(&mut st, m, &mut out);
                black_box(out.ops.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
