//! The simulation without a broker: deterministic for a seed, and every
//! persona produces the violations it stands for (and compliant people none).

use std::collections::BTreeMap;

use firmware_sim::device::DeviceSim;
use firmware_sim::encode::{Encoding, Telemetry};
use firmware_sim::fleet::{place_window, Fleet, FleetParams, ServerRules};
use firmware_sim::persona::{Mix, Persona};
use firmware_sim::world::Frame;

fn params(devices: usize, span_ms: i64, interval_s: u32) -> FleetParams {
    let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let limit = chrono::DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z")
        .unwrap()
        .to_utc();
    FleetParams {
        seed: 42,
        devices,
        mix: Mix::default(),
        interval_s,
        fixes_per_message: 1,
        frame: Frame {
            lat0: 40.70,
            lon0: -73.95,
        },
        time_zone: "America/New_York".into(),
        id_prefix: "p-".into(),
        start_ms: place_window(&tz, limit, span_ms),
        span_ms,
        server: ServerRules::default(),
    }
}

/// What a simulated run produced.
struct Sim {
    msgs: Vec<Telemetry>,
    /// Expected alert kinds per device id.
    expected: BTreeMap<String, Vec<&'static str>>,
    /// Persona per supervisee device id.
    persona: BTreeMap<String, Persona>,
}

/// Runs every device's ticks in simulated-time order at `speed`.
fn simulate(fleet: &Fleet, speed: f64) -> Sim {
    let p = &fleet.params;
    let w0 = 1_900_000_000_000;
    let mut devs = DeviceSim::fleet(fleet, 7, w0);
    let interval = i64::from(p.interval_s) * 1000;
    let mut msgs = Vec::new();
    let mut k = 0;
    loop {
        let mut any = false;
        for d in devs.iter_mut() {
            let t = p.start_ms + d.phase_ms + k * interval;
            if t >= p.start_ms + p.span_ms {
                continue;
            }
            any = true;
            d.tick(t, w0 + ((t - p.start_ms) as f64 / speed) as i64, &mut msgs);
        }
        if !any {
            break;
        }
        k += 1;
    }
    let end = w0 + (p.span_ms as f64 / speed) as i64 + 5_000;
    let persona: BTreeMap<String, Persona> = fleet
        .devices
        .iter()
        .map(|d| (d.device_id.clone(), d.persona))
        .collect();
    let mut expected = BTreeMap::new();
    for d in devs {
        let id = d.id.clone();
        let mut kinds: Vec<&'static str> = d
            .finish(end)
            .into_iter()
            .filter(|e| e.must)
            .map(|e| e.kind)
            .collect();
        kinds.sort();
        kinds.dedup();
        expected.insert(id, kinds);
    }
    Sim {
        msgs,
        expected,
        persona,
    }
}

#[test]
fn same_seed_same_messages() {
    let f = Fleet::generate(params(40, 3 * 3_600_000, 60)).unwrap();
    let a = simulate(&f, 120.0).msgs;
    let b = simulate(&f, 120.0).msgs;
    assert!(a.len() > 40 * 150, "{} messages", a.len());
    let enc = |m: &[Telemetry]| {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for t in m {
            t.encode(Encoding::Binary, &mut buf);
            out.extend_from_slice(&buf);
        }
        out
    };
    assert_eq!(enc(&a), enc(&b));
    // Nobody teleports: consecutive fixes of one device are at most a
    // drive's distance apart.
    let mut last: BTreeMap<&str, (i64, f64, f64)> = BTreeMap::new();
    for m in &a {
        for f in &m.fixes {
            if let Some((t0, la, lo)) = last.get(m.device.as_str()).copied() {
                if f.ts_ms > t0 {
                    let dy = (f.lat - la) * 111_000.0;
                    let dx = (f.lon - lo) * 111_000.0 * 40.7f64.to_radians().cos();
                    let v = dx.hypot(dy) / ((f.ts_ms - t0) as f64 / 1000.0);
                    assert!(
                        v < 20.0 || f.acc_m > 200.0,
                        "{} moved at {v:.0} m/s",
                        m.device
                    );
                }
            }
            if f.acc_m < 200.0 {
                last.insert(m.device.as_str(), (f.ts_ms, f.lat, f.lon));
            }
        }
    }
}

#[test]
fn personas_produce_their_violations() {
    // Four hours around the curfew's start, fast enough that a dying
    // battery's silence does not reach no_signal.
    let f = Fleet::generate(params(90, 4 * 3_600_000, 60)).unwrap();
    let Sim {
        msgs,
        expected,
        persona,
    } = simulate(&f, 240.0);
    let want = |p: Persona| -> &'static [&'static str] {
        match p {
            Persona::CurfewViolator => &["curfew_violation"],
            Persona::ExclusionEntrant => &["exclusion_zone_entry"],
            Persona::InclusionLeaver => &["inclusion_zone_exit"],
            Persona::StrapTamper => &["strap_tamper"],
            Persona::BatteryNeglect => &["battery_critical", "battery_low"],
            Persona::CoverageLoss => &["gps_loss"],
            Persona::VictimPair => &["victim_proximity"],
            Persona::Compliant | Persona::ClockSkew => &[],
        }
    };
    let mut seen = BTreeMap::new();
    for (id, kinds) in &expected {
        let Some(p) = persona.get(id) else {
            assert!(kinds.is_empty(), "victim device {id} expects {kinds:?}");
            continue;
        };
        for k in want(*p) {
            assert!(
                kinds.contains(k),
                "{id} ({p}) should violate {k}, has {kinds:?}"
            );
        }
        // Side effects are allowed only where the window forces them (an
        // incident ending after 21:00 is also a late homecoming).
        for k in kinds {
            assert!(
                want(*p).contains(k) || *k == "curfew_violation",
                "{id} ({p}) unexpectedly expects {k}"
            );
        }
        *seen.entry(*p).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), Persona::ALL.len());
    // Coverage loss: a backlog goes out late and newest first.
    let cov = f
        .devices
        .iter()
        .find(|d| d.persona == Persona::CoverageLoss)
        .unwrap();
    let theirs: Vec<&Telemetry> = msgs.iter().filter(|m| m.device == cov.device_id).collect();
    let backlog = theirs.windows(2).any(|w| {
        let (a, b) = (&w[0].fixes, &w[1].fixes);
        !a.is_empty() && !b.is_empty() && b[0].ts_ms < a[0].ts_ms
    });
    assert!(backlog, "no out-of-order upload");
    // Clock skew: the device clock runs behind true time by a constant.
    let skew = f
        .devices
        .iter()
        .find(|d| d.persona == Persona::ClockSkew)
        .unwrap();
    assert!(skew.skew_ms >= 60_000);
    let last = msgs
        .iter()
        .filter(|m| m.device == skew.device_id)
        .flat_map(|m| m.fixes.iter().map(|x| x.ts_ms))
        .max()
        .unwrap();
    let p = &f.params;
    assert!(last <= p.start_ms + p.span_ms - skew.skew_ms);
    assert!(last > p.start_ms + p.span_ms - skew.skew_ms - i64::from(p.interval_s) * 1000);
}
