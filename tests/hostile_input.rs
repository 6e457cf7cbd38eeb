//! Hostile and malformed input to the decoders and zone parsing, on the
//! stable toolchain (the libFuzzer targets live in fuzz/, outside the
//! workspace). Three parts:
//! 1. every file of the committed fuzz corpus is replayed through the same
//!    checks the fuzz targets run (`fuzz/src/harness.rs`);
//! 2. fixed-seed generated inputs: mutations of that corpus and structured
//!    messages and zones built from hostile values;
//! 3. explicit cases the issue names that the module tests do not already
//!    cover.
//!
//! The checks: no panic; each input is accepted (and what is kept is in
//! range) or refused with a typed reason and a short message; memory
//! allocated while decoding one input stays within a fixed multiple of its
//! size; work on huge zones is bounded. Each test prints how many inputs it
//! tried (`cargo test --test hostile_input -- --nocapture`).

#[path = "../fuzz/src/harness.rs"]
mod harness;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{Outcome, ZoneOutcome, NOW_MS};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use waypoint::decode::binary::{EventPb, FixPb, TelemetryPb};
use waypoint::decode::{self, WireFix, WireMessage, MAX_EVENTS_PER_MESSAGE};
use waypoint::decode::{MAX_FIXES_PER_MESSAGE, MAX_FUTURE_SKEW};
use waypoint::domain::{DeviceId, MessageKey, RejectReason};
use waypoint::geofence::{check_simple, PreparedZone, Shape, ShapeError, MAX_VERTICES};
use waypoint::ingest::topic::{self, Route};

// ---------------------------------------------------------------------------
// Allocation accounting: a per-thread high-water mark, so that tests running
// in parallel do not see each other's allocations.

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // `try_with`: allocations during thread teardown must not panic.
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only const-initialised thread-locals.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            track(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            track(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        track(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            track(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the most bytes it had allocated at
/// any moment on this thread.
fn peak_alloc<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    (r, (PEAK.with(Cell::get) - base).max(0) as usize)
}

/// Allocation allowed for decoding `len` bytes. The worst case is protobuf:
/// an empty repeated sub-message is 2 bytes on the wire and a 48-byte
/// struct in memory, in a Vec that may have doubled; the payload cap
/// (256 KiB) bounds the input, so this bounds the memory (~25 MiB).
fn alloc_budget(len: usize) -> usize {
    100 * len + (1 << 20)
}

// ---------------------------------------------------------------------------
// Shared plumbing.

#[derive(Clone, Copy, Debug)]
enum Target {
    Json,
    Binary,
    OwnTracks,
    Zone,
}

const TARGETS: [(Target, &str); 4] = [
    (Target::Json, "decode_json"),
    (Target::Binary, "decode_binary"),
    (Target::OwnTracks, "decode_owntracks"),
    (Target::Zone, "zone_geojson"),
];

/// Tally of outcomes, printed by each test.
#[derive(Default, Debug)]
struct Tally {
    tried: usize,
    accepted: usize,
    refused: usize,
}

impl Tally {
    fn add(&mut self, accepted: bool) {
        self.tried += 1;
        if accepted {
            self.accepted += 1;
        } else {
            self.refused += 1;
        }
    }
}

/// One input through one target's checks, within the allocation budget;
/// `true` when accepted.
fn feed(t: Target, data: &[u8]) -> bool {
    let (accepted, peak) = peak_alloc(|| match t {
        Target::Json => matches!(harness::json(data), Outcome::Accepted { .. }),
        Target::Binary => matches!(harness::binary(data), Outcome::Accepted { .. }),
        Target::OwnTracks => matches!(harness::owntracks(data), Outcome::Accepted { .. }),
        Target::Zone => matches!(harness::zone(data), ZoneOutcome::Accepted(_)),
    });
    // Zones build a prepared index proportional to the vertex count, which
    // the vertex cap bounds; decoders are bounded by the payload size.
    let budget = match t {
        Target::Zone => alloc_budget(data.len()) * 4,
        _ => alloc_budget(data.len()),
    };
    assert!(
        peak <= budget,
        "{t:?}: {peak} bytes allocated for a {}-byte input",
        data.len()
    );
    accepted
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("corpus file"))
        .collect()
}

fn now_ms() -> i64 {
    NOW_MS
}

fn refused(o: Outcome) -> RejectReason {
    match o {
        Outcome::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn accepted(o: Outcome) -> (usize, usize, usize) {
    match o {
        Outcome::Accepted {
            fixes,
            events,
            item_rejections,
        } => (fixes, events, item_rejections),
        other => panic!("expected acceptance, got {other:?}"),
    }
}

fn json_msg(fixes: &[String], extra: &str) -> Vec<u8> {
    format!(
        r#"{{"v":1,"device":"dev-1","boot":1,"seq":1,"fixes":[{}]{extra}}}"#,
        fixes.join(",")
    )
    .into_bytes()
}

fn json_fix(ts: i64, lat: &str, lon: &str) -> String {
    format!(r#"{{"ts":{ts},"lat":{lat},"lon":{lon},"acc":5}}"#)
}

fn pb(fixes: Vec<FixPb>, events: Vec<EventPb>) -> Vec<u8> {
    TelemetryPb {
        v: 1,
        device: "dev-1".into(),
        boot: 1,
        seq: 1,
        fixes,
        status: None,
        events,
    }
    .encode_to_vec()
}

fn pb_fix(ts_ms: i64, lat_e7: i32, lon_e7: i32) -> FixPb {
    FixPb {
        ts_ms,
        lat_e7,
        lon_e7,
        acc_dm: 50,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// 1. The committed corpus.

#[test]
fn the_committed_fuzz_corpus_replays_cleanly() {
    let mut total = 0;
    for (t, name) in TARGETS {
        let files = corpus(name);
        assert!(files.len() >= 5, "corpus {name} has {} files", files.len());
        let mut tally = Tally::default();
        for f in &files {
            tally.add(feed(t, f));
        }
        // Seeds include valid protocol examples and refusals of each kind.
        assert!(tally.accepted > 0 && tally.refused > 0, "{name}: {tally:?}");
        println!("corpus {name}: {tally:?}");
        total += tally.tried;
    }
    assert!(
        total <= 250,
        "keep the committed corpus small ({total} files)"
    );
    println!("corpus total: {total} inputs");
}

// ---------------------------------------------------------------------------
// 2. Fixed-seed generated inputs.

/// Byte-level mutations of the corpus, the same kinds libFuzzer applies:
/// flips, inserted interesting bytes, deletions, truncation, duplicated and
/// spliced chunks.
fn mutate(rng: &mut StdRng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    const INTERESTING: &[&[u8]] = &[
        b"NaN",
        b"1e999",
        b"-0",
        b"null",
        b"[",
        b"{",
        b"\"",
        b"\\u0000",
        b"\xff",
        b"\x80",
        b"18446744073709551616",
        b"-9223372036854775809",
        b"9223372036854775807",
        b"\x00",
        b"\x2a\x00",
        b"\x3a\x00",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        b"+/#",
        b"../",
        b"\"location\"",
        b"\"Polygon\"",
        b"[[[",
        b"]]]",
    ];
    let mut d = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = if d.is_empty() {
            0
        } else {
            rng.random_range(0..=d.len())
        };
        match rng.random_range(0..6) {
            0 if !d.is_empty() => {
                let i = at.min(d.len() - 1);
                d[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let s = INTERESTING[rng.random_range(0..INTERESTING.len())];
                d.splice(at..at, s.iter().copied());
            }
            2 if !d.is_empty() => {
                let end = (at + rng.random_range(1..=8)).min(d.len());
                d.drain(at.min(end)..end);
            }
            3 => d.truncate(at),
            4 if !d.is_empty() => {
                let a = rng.random_range(0..d.len());
                let b = (a + rng.random_range(1..=32)).min(d.len());
                let chunk = d[a..b].to_vec();
                for _ in 0..rng.random_range(1..=50) {
                    d.splice(at..at, chunk.iter().copied());
                }
            }
            _ if !other.is_empty() => {
                let a = rng.random_range(0..other.len());
                d.truncate(at);
                d.extend_from_slice(&other[a..]);
            }
            _ => {}
        }
    }
    d
}

#[test]
fn mutated_corpus_inputs_are_accepted_or_refused_with_a_reason() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0008);
    let mut total = 0;
    for (t, name) in TARGETS {
        let seeds = corpus(name);
        let mut tally = Tally::default();
        for _ in 0..4_000 {
            let a = &seeds[rng.random_range(0..seeds.len())];
            let b = &seeds[rng.random_range(0..seeds.len())];
            tally.add(feed(t, &mutate(&mut rng, a, b)));
        }
        println!("mutations {name}: {tally:?}");
        total += tally.tried;
    }
    println!("mutations total: {total} inputs");
}

/// A hostile number for a JSON field: in range, at the edges, out of
/// range, not representable, or the wrong type.
fn hostile_number(rng: &mut StdRng) -> String {
    const ATOMS: &[&str] = &[
        "0",
        "-0",
        "90",
        "-90.0000001",
        "180",
        "180.0000001",
        "1e308",
        "-1e308",
        "1e999",
        "NaN",
        "Infinity",
        "null",
        "\"51.5\"",
        "true",
        "[]",
        "{}",
        "5e-324",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551616",
        "1764133200000",
        "1764133500001",
        "946684799999",
    ];
    if rng.random_bool(0.5) {
        ATOMS[rng.random_range(0..ATOMS.len())].to_owned()
    } else {
        format!("{}", rng.random_range(-400.0..400.0f64))
    }
}

fn hostile_string(rng: &mut StdRng) -> String {
    const ATOMS: &[&str] = &[
        "dev-1",
        "+",
        "#",
        "a/b",
        "..",
        "../etc",
        "dev\\u0000",
        "\\ud800",
        "é",
        "gnss",
        "strap_open",
        "",
        "em/v1/devices/+/telemetry",
    ];
    let s = ATOMS[rng.random_range(0..ATOMS.len())];
    if rng.random_bool(0.1) {
        s.repeat(rng.random_range(10..2_000))
    } else {
        s.to_owned()
    }
}

/// Mostly a plausible `boot`/`seq`, so that the rest of the message is
/// reached; sometimes a hostile number.
fn key_number(rng: &mut StdRng) -> String {
    if rng.random_bool(0.2) {
        hostile_number(rng)
    } else {
        rng.random_range(0..1_000_000u32).to_string()
    }
}

fn structured_json(rng: &mut StdRng) -> String {
    let mut fields = vec![
        format!(
            r#""v":{}"#,
            ["1", "1", "1", "2", "0", "-1", "1.0"][rng.random_range(0..7)]
        ),
        format!(r#""device":"{}""#, hostile_string(rng)),
        format!(r#""boot":{}"#, key_number(rng)),
        format!(r#""seq":{}"#, key_number(rng)),
    ];
    let n = [0, 1, 3, 50][rng.random_range(0..4)];
    let fixes: Vec<String> = (0..n)
        .map(|_| {
            let mut f = vec![];
            for k in ["ts", "lat", "lon", "acc", "alt", "spd", "hdg"] {
                if rng.random_bool(0.9) {
                    let v = if k == "ts" && rng.random_bool(0.6) {
                        (now_ms() - rng.random_range(-600_000..86_400_000)).to_string()
                    } else if rng.random_bool(0.5) {
                        format!("{}", rng.random_range(-10.0..10.0f64))
                    } else {
                        hostile_number(rng)
                    };
                    f.push(format!(r#""{k}":{v}"#));
                }
            }
            if rng.random_bool(0.3) {
                f.push(format!(r#""src":"{}""#, hostile_string(rng)));
            }
            format!("{{{}}}", f.join(","))
        })
        .collect();
    fields.push(format!(r#""fixes":[{}]"#, fixes.join(",")));
    if rng.random_bool(0.5) {
        fields.push(format!(
            r#""status":{{"battery":{},"rssi":{},"strap":"{}","fw":"{}"}}"#,
            hostile_number(rng),
            hostile_number(rng),
            hostile_string(rng),
            hostile_string(rng)
        ));
    }
    if rng.random_bool(0.5) {
        fields.push(format!(
            r#""events":[{{"ts":{},"kind":"{}"}}]"#,
            hostile_number(rng),
            hostile_string(rng)
        ));
    }
    // Field order must not matter.
    for i in (1..fields.len()).rev() {
        fields.swap(i, rng.random_range(0..=i));
    }
    format!("{{{}}}", fields.join(","))
}

fn hostile_f64(rng: &mut StdRng) -> f64 {
    const ATOMS: [f64; 10] = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        f64::MIN_POSITIVE,
        -0.0,
        90.0,
        -180.0,
        180.000_000_1,
        1e-300,
    ];
    if rng.random_bool(0.4) {
        ATOMS[rng.random_range(0..ATOMS.len())]
    } else {
        rng.random_range(-200.0..200.0)
    }
}

#[test]
fn generated_messages_are_accepted_or_refused_with_a_reason() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0108);
    let (mut json_t, mut bin_t, mut wire_t, mut ot_t) = Default::default();
    for _ in 0..3_000 {
        let j = structured_json(&mut rng);
        Tally::add(&mut json_t, feed(Target::Json, j.as_bytes()));

        // Values the JSON grammar cannot carry (NaN, infinities), straight
        // into validation, then through the binary encoder and decoder.
        let n = rng.random_range(0..20);
        let w = WireMessage {
            device: Some(hostile_string(&mut rng)),
            key: MessageKey {
                boot: rng.random_range(0..3),
                seq: rng.random(),
            },
            fixes: (0..n)
                .map(|_| WireFix {
                    ts_ms: if rng.random_bool(0.7) {
                        now_ms() - rng.random_range(-600_000..86_400_000)
                    } else {
                        rng.random()
                    },
                    lat: hostile_f64(&mut rng),
                    lon: hostile_f64(&mut rng),
                    acc: hostile_f64(&mut rng).abs(),
                    alt: rng.random_bool(0.5).then(|| hostile_f64(&mut rng)),
                    speed: rng.random_bool(0.5).then(|| hostile_f64(&mut rng)),
                    heading: rng.random_bool(0.5).then(|| hostile_f64(&mut rng)),
                    src: rng.random_bool(0.5).then(|| hostile_string(&mut rng)),
                })
                .collect(),
            status: None,
            events: vec![],
        };
        let bytes = decode::binary::encode(&w);
        Tally::add(
            &mut wire_t,
            matches!(harness::message(w), Outcome::Accepted { .. }),
        );
        Tally::add(&mut bin_t, feed(Target::Binary, &bytes));

        let ot = format!(
            r#"{{"_type":"{}","lat":{},"lon":{},"tst":{},"acc":{},"vel":{},"batt":{},"bs":{}}}"#,
            ["location", "location", "lwt", ""][rng.random_range(0..4)],
            hostile_number(&mut rng),
            hostile_number(&mut rng),
            if rng.random_bool(0.6) {
                (now_ms() / 1000 - rng.random_range(-600..86_400)).to_string()
            } else {
                hostile_number(&mut rng)
            },
            hostile_number(&mut rng),
            hostile_number(&mut rng),
            hostile_number(&mut rng),
            hostile_number(&mut rng),
        );
        Tally::add(&mut ot_t, feed(Target::OwnTracks, ot.as_bytes()));
    }
    for (name, t) in [
        ("json", &json_t),
        ("binary", &bin_t),
        ("wire", &wire_t),
        ("owntracks", &ot_t),
    ] {
        println!("generated {name}: {t:?}");
        assert!(t.accepted > 0, "{name}: {t:?}");
    }
    // The encoder writes only valid protobuf, so binary refusals are per
    // item (counted in `message`); JSON and OwnTracks see both outcomes.
    for t in [&json_t, &ot_t] {
        assert!(t.refused > 0, "{t:?}");
    }
}

/// A ring around (lon, lat): `n` points at random radii (a star shape, so
/// simple), or with two vertices swapped (usually crossing itself).
fn star_ring(rng: &mut StdRng, lon: f64, lat: f64, r: f64, n: usize, scramble: bool) -> Value {
    let mut pts: Vec<[f64; 2]> = (0..n)
        .map(|i| {
            let a = i as f64 / n as f64 * std::f64::consts::TAU;
            let k = rng.random_range(0.3..1.0) * r;
            [lon + k * a.cos(), lat + k * a.sin()]
        })
        .collect();
    if scramble && n > 4 {
        let (i, j) = (rng.random_range(0..n), rng.random_range(0..n));
        pts.swap(i, j);
    }
    pts.push(pts[0]);
    json!(pts)
}

#[test]
fn generated_zones_are_accepted_or_refused_with_a_reason() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0208);
    let mut tally = Tally::default();
    for i in 0..2_000 {
        let (lon, lat) = (
            rng.random_range(-179.0..179.0),
            rng.random_range(-84.0..84.0),
        );
        let r = [0.001, 0.01, 1.0, 10.0][rng.random_range(0..4)];
        let scramble = i % 3 == 0;
        let n = rng.random_range(3..60);
        let outer = star_ring(&mut rng, lon, lat, r, n, scramble);
        let mut rings = vec![outer];
        for _ in 0..rng.random_range(0..3) {
            // Holes near the centre, sometimes large enough to cross the
            // outer ring, sometimes off to the side (outside the shell).
            let (dx, dy) = if rng.random_bool(0.2) {
                (3.0 * r, 0.0)
            } else {
                (0.0, 0.0)
            };
            let hr = r * rng.random_range(0.05..0.6);
            rings.push(star_ring(&mut rng, lon + dx, lat + dy, hr, 8, false));
        }
        let geom = match i % 4 {
            0 => json!({"type": "Polygon", "coordinates": rings}),
            1 => {
                json!({"type": "MultiPolygon", "coordinates": [rings.clone(), [star_ring(&mut rng, lon + 2.5 * r, lat, r, 6, false)]]})
            }
            2 => {
                json!({"type": "Feature", "properties": {"radius_m": hostile_f64(&mut rng).abs() * 1000.0}, "geometry": {"type": "Point", "coordinates": [lon, lat]}})
            }
            _ => {
                json!({"type": "Feature", "properties": {"width_m": rng.random_range(-10.0..60_000.0)}, "geometry": {"type": "LineString", "coordinates": rings[0]}})
            }
        };
        let (accepted, _) =
            peak_alloc(|| matches!(harness::zone_value(&geom), ZoneOutcome::Accepted(_)));
        tally.add(accepted);
    }
    println!("generated zones: {tally:?}");
    assert!(tally.accepted > 100 && tally.refused > 100, "{tally:?}");
}

// ---------------------------------------------------------------------------
// 3. Explicit cases.

#[test]
fn out_of_range_coordinates_from_every_decoder_are_refused_per_fix() {
    let ts = now_ms() - 1_000;
    let mut tried = 0;
    // JSON cannot spell NaN or infinity; `1e999` overflows f64.
    for (lat, lon) in [
        ("91", "0"),
        ("0", "-180.0000001"),
        ("-90.0000001", "0"),
        ("1e308", "1e308"),
    ] {
        let m = json_msg(&[json_fix(ts, "51.5", "-0.12"), json_fix(ts, lat, lon)], "");
        assert_eq!(accepted(harness::json(&m)), (1, 0, 1), "{lat},{lon}");
        tried += 1;
    }
    for lat in ["NaN", "Infinity", "1e999", "-1e999"] {
        let m = json_msg(&[json_fix(ts, lat, "0")], "");
        assert_eq!(refused(harness::json(&m)), RejectReason::MalformedJson);
        tried += 1;
    }
    // Binary: 1e-7° integers reach ±214.7°.
    for (lat, lon) in [
        (i32::MAX, 0),
        (i32::MIN, 0),
        (0, 1_800_000_001),
        (900_000_001, 0),
    ] {
        let m = pb(
            vec![pb_fix(ts, 515_000_000, 0), pb_fix(ts, lat, lon)],
            vec![],
        );
        assert_eq!(accepted(harness::binary(&m)), (1, 0, 1));
        tried += 1;
    }
    for (lat, lon) in [("91", "0"), ("0", "181"), ("1e999", "0")] {
        let m = format!(
            r#"{{"_type":"location","lat":{lat},"lon":{lon},"tst":{}}}"#,
            ts / 1000
        );
        let o = harness::owntracks(m.as_bytes());
        assert!(
            o == Outcome::Accepted {
                fixes: 0,
                events: 0,
                item_rejections: 1
            } || o == Outcome::Refused(RejectReason::MalformedJson),
            "{m}: {o:?}"
        );
        tried += 1;
    }
    println!("coordinate cases: {tried}");
}

#[test]
fn batches_over_the_protocol_limit_are_refused_whole_with_bounded_memory() {
    let ts = now_ms() - 1_000;
    let fix = json_fix(ts, "51.5", "-0.12");
    let at_limit = json_msg(&vec![fix.clone(); MAX_FIXES_PER_MESSAGE], "");
    assert_eq!(accepted(harness::json(&at_limit)).0, MAX_FIXES_PER_MESSAGE);
    let over = json_msg(&vec![fix; MAX_FIXES_PER_MESSAGE + 1], "");
    assert_eq!(refused(harness::json(&over)), RejectReason::Oversize);
    let events = vec![r#"{"ts":1764133200000,"kind":"strap_open"}"#; MAX_EVENTS_PER_MESSAGE + 1];
    let m = json_msg(&[], &format!(r#","events":[{}]"#, events.join(",")));
    assert_eq!(refused(harness::json(&m)), RejectReason::Oversize);

    let over = pb(vec![pb_fix(ts, 1, 1); MAX_FIXES_PER_MESSAGE + 1], vec![]);
    assert_eq!(refused(harness::binary(&over)), RejectReason::Oversize);
    let over = pb(vec![], vec![EventPb::default(); MAX_EVENTS_PER_MESSAGE + 1]);
    assert_eq!(refused(harness::binary(&over)), RejectReason::Oversize);

    // The densest hostile batch: a payload at the default 256 KiB cap made
    // of empty fixes (2 bytes each on the wire), 131 072 of them.
    let mut dense = pb(vec![], vec![]);
    while dense.len() + 2 <= 256 * 1024 {
        dense.extend_from_slice(&[0x2a, 0x00]);
    }
    let (r, peak) = peak_alloc(|| decode::decode_native(&dense));
    assert_eq!(r.unwrap_err().reason, RejectReason::Oversize);
    assert!(peak <= alloc_budget(dense.len()), "{peak} bytes");
    println!(
        "densest binary batch: {} bytes, {peak} bytes allocated",
        dense.len()
    );
    // Same for JSON: `{}` fixes would be refused by type, so use minimal ones.
    let mut j = br#"{"v":1,"device":"d","boot":0,"seq":0,"fixes":["#.to_vec();
    while j.len() < 256 * 1024 {
        j.extend_from_slice(br#"{"ts":0,"lat":0,"lon":0,"acc":0},"#);
    }
    j.extend_from_slice(br#"{"ts":0,"lat":0,"lon":0,"acc":0}]}"#);
    let (r, peak) = peak_alloc(|| decode::decode_native(&j));
    assert_eq!(r.unwrap_err().reason, RejectReason::Oversize);
    assert!(peak <= alloc_budget(j.len()), "{peak} bytes");
    println!(
        "densest JSON batch: {} bytes, {peak} bytes allocated",
        j.len()
    );
}

#[test]
fn deep_nesting_is_refused_without_exhausting_the_stack() {
    let deep = "[".repeat(100_000);
    let deep_obj = r#"{"a":"#.repeat(100_000);
    let mut tried = 0;
    for inner in [&deep, &deep_obj] {
        let m = format!(r#"{{"v":1,"device":"d","boot":0,"seq":1,"x":{inner}}}"#);
        assert_eq!(
            refused(harness::json(m.as_bytes())),
            RejectReason::MalformedJson
        );
        let m = format!(r#"{{"_type":"location","x":{inner}}}"#);
        assert_eq!(
            refused(harness::owntracks(m.as_bytes())),
            RejectReason::MalformedJson
        );
        assert_eq!(harness::zone(inner.as_bytes()), ZoneOutcome::NotJson);
        assert_eq!(
            refused(harness::json(inner.as_bytes())),
            RejectReason::MalformedJson
        );
        tried += 4;
    }
    // Protobuf: 100 000 nested groups in an unknown field (prost's
    // recursion limit), and sub-messages nested inside a fix.
    let groups = [0x7bu8].repeat(100_000);
    assert_eq!(
        refused(harness::binary(&groups)),
        RejectReason::MalformedBinary
    );
    let mut nested = vec![];
    for _ in 0..10_000 {
        let mut outer = vec![0x2a];
        prost::encoding::encode_varint(nested.len() as u64, &mut outer);
        outer.extend_from_slice(&nested);
        nested = outer;
    }
    let _ = harness::binary(&nested);
    tried += 2;
    println!("deep nesting cases: {tried}");
}

#[test]
fn huge_strings_and_invalid_utf8_are_refused_with_short_details() {
    let huge = "x".repeat(200_000);
    let ts = now_ms() - 1_000;
    // A huge device id decodes but can never match a topic's id.
    let m = format!(r#"{{"v":1,"device":"{huge}","boot":0,"seq":1}}"#);
    let w = decode::json::decode(m.as_bytes()).expect("decodes");
    assert!(DeviceId::parse(w.device.as_deref().unwrap()).is_err());
    // A huge firmware version or event kind is refused as an item.
    let m = json_msg(
        &[json_fix(ts, "1", "1")],
        &format!(r#","status":{{"fw":"{huge}"}},"events":[{{"ts":{ts},"kind":"{huge}"}}]"#),
    );
    assert_eq!(accepted(harness::json(&m)), (1, 0, 2));
    // A huge value of the wrong type: serde quotes it; the detail is capped.
    let m = format!(r#"{{"v":1,"device":"d","boot":0,"seq":"{huge}"}}"#);
    let e = decode::json::decode(m.as_bytes()).unwrap_err();
    assert!(
        e.detail.len() <= decode::MAX_DETAIL + 3,
        "{}",
        e.detail.len()
    );
    let m = format!(r#"{{"_type":"{huge}"}}"#);
    assert_eq!(
        refused(harness::owntracks(m.as_bytes())),
        RejectReason::UnsupportedType
    );
    let m = TelemetryPb {
        v: 1,
        device: huge.clone(),
        events: vec![EventPb {
            ts_ms: ts,
            kind: huge.clone(),
        }],
        ..Default::default()
    };
    assert_eq!(accepted(harness::binary(&m.encode_to_vec())), (0, 0, 1));

    // Invalid UTF-8 inside strings, in every decoder.
    let bad = b"{\"v\":1,\"device\":\"\xc3\x28\",\"boot\":0,\"seq\":1}";
    assert_eq!(refused(harness::json(bad)), RejectReason::MalformedJson);
    let bad = b"{\"_type\":\"locati\xffon\",\"lat\":1,\"lon\":1,\"tst\":1}";
    assert_eq!(
        refused(harness::owntracks(bad)),
        RejectReason::MalformedJson
    );
    let mut bad = TelemetryPb {
        v: 1,
        device: "dev-\u{e9}".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let i = bad.iter().position(|&b| b == 0xc3).expect("é");
    bad[i] = 0xff;
    assert_eq!(
        refused(harness::binary(&bad)),
        RejectReason::MalformedBinary
    );
    // Lone surrogates in JSON escapes are not valid strings either.
    let m = br#"{"v":1,"device":"\ud800","boot":0,"seq":1}"#;
    assert_eq!(refused(harness::json(m)), RejectReason::MalformedJson);
    assert_eq!(harness::zone(b"{\"type\":\"\xff\"}"), ZoneOutcome::NotJson);
}

#[test]
fn timestamps_at_and_beyond_every_limit() {
    let skew = MAX_FUTURE_SKEW.num_milliseconds();
    let mut tried = 0;
    // (ts ms, kept?) — the edges of the accepted window and overflow.
    let cases = [
        (946_684_800_000, true),
        (946_684_799_999, false),
        (now_ms() + skew, true),
        (now_ms() + skew + 1, false),
        (0, false),
        (-1, false),
        (i64::MIN, false),
        (i64::MAX, false),
        (253_402_300_800_000, false), // year 10000
        (-62_135_596_800_001, false), // before year 1
    ];
    for (ts, kept) in cases {
        let j = json_msg(&[json_fix(ts, "1", "1")], "");
        let b = pb(
            vec![pb_fix(ts, 10_000_000, 10_000_000)],
            vec![EventPb {
                ts_ms: ts,
                kind: "strap_open".into(),
            }],
        );
        let want = usize::from(kept);
        assert_eq!(accepted(harness::json(&j)).0, want, "json ts {ts}");
        assert_eq!(accepted(harness::binary(&b)).0, want, "binary ts {ts}");
        assert_eq!(accepted(harness::binary(&b)).1, want, "event ts {ts}");
        tried += 3;
    }
    // Past i64 in JSON; OwnTracks seconds that overflow milliseconds.
    let j = json_msg(
        &[json_fix(0, "1", "1").replace(r#""ts":0"#, r#""ts":9223372036854775808"#)],
        "",
    );
    assert_eq!(refused(harness::json(&j)), RejectReason::MalformedJson);
    for tst in [i64::MAX, i64::MIN, i64::MAX / 1000 + 1, i64::MIN / 1000 - 1] {
        let m = format!(r#"{{"_type":"location","lat":1,"lon":1,"tst":{tst}}}"#);
        assert_eq!(
            refused(harness::owntracks(m.as_bytes())),
            RejectReason::TimestampOutOfRange
        );
        tried += 1;
    }
    let m = format!(
        r#"{{"_type":"location","lat":1,"lon":1,"tst":{}}}"#,
        i64::MAX / 1000
    );
    assert_eq!(accepted(harness::owntracks(m.as_bytes())), (0, 0, 1));
    println!("timestamp cases: {}", tried + 2);
}

#[test]
fn sequence_numbers_duplicated_or_reordered_are_the_store_s_business_not_the_decoder_s() {
    // The decoder is stateless: it reads any key in range and refuses only
    // what does not fit the stored signed 64-bit columns.
    let key = |boot: &str, seq: &str| {
        let m = format!(r#"{{"v":1,"device":"d","boot":{boot},"seq":{seq}}}"#);
        decode::json::decode(m.as_bytes()).map(|w| w.key)
    };
    assert_eq!(key("0", "0").unwrap(), MessageKey { boot: 0, seq: 0 });
    assert_eq!(
        key("9223372036854775807", "9223372036854775807")
            .unwrap()
            .seq,
        i64::MAX
    );
    for (b, s) in [("9223372036854775808", "0"), ("0", "9223372036854775808")] {
        assert_eq!(key(b, s).unwrap_err().reason, RejectReason::InvalidField);
    }
    assert_eq!(
        key("-1", "0").unwrap_err().reason,
        RejectReason::MalformedJson
    );
    // The content digest is what tells a redelivery (same digest) from a
    // seq_conflict (other digest): it ignores serialisation, sees order.
    let ts = now_ms() - 1_000;
    let (a, b) = (
        json_fix(ts, "51.5", "-0.12"),
        json_fix(ts - 1_000, "51.6", "-0.12"),
    );
    let d = |m: &[u8]| decode::json::decode(m).unwrap().digest();
    let ab = json_msg(&[a.clone(), b.clone()], "");
    let spaced = String::from_utf8(ab.clone()).unwrap().replace(',', " , ");
    let reordered_keys = String::from_utf8(ab.clone())
        .unwrap()
        .replace(r#""v":1,"device":"dev-1""#, r#""device":"dev-1","v":1"#);
    assert_eq!(d(&ab), d(spaced.as_bytes()));
    assert_eq!(d(&ab), d(reordered_keys.as_bytes()));
    assert_ne!(d(&ab), d(&json_msg(&[b.clone(), a.clone()], "")));
    assert_ne!(d(&ab), d(&json_msg(&[a.clone(), a.clone()], "")));
    // Duplicate fixes inside one message are all read (they are distinct
    // observations as far as the decoder can tell).
    assert_eq!(
        accepted(harness::json(&json_msg(&[a.clone(), a.clone(), a], ""))).0,
        3
    );
    // Binary and JSON key fields agree.
    let w = decode::binary::decode(
        &TelemetryPb {
            v: 1,
            boot: u64::MAX,
            ..Default::default()
        }
        .encode_to_vec(),
    );
    assert_eq!(w.unwrap_err().reason, RejectReason::InvalidField);
}

#[test]
fn device_ids_with_wildcards_path_characters_or_nul_never_pass() {
    let long = "a".repeat(10_000);
    let ids = [
        "+",
        "#",
        "a+",
        "a#",
        "a/b",
        "..",
        "../a",
        "a\0",
        "\0",
        "a b",
        &long,
        "\u{202e}a",
    ];
    for id in ids {
        assert!(DeviceId::parse(id).is_err(), "{id:?}");
        // As the topic's id: either not routed at all or routed and refused.
        let t = format!("em/v1/devices/{id}/telemetry");
        match topic::route(&t, "") {
            Route::Native(d) => assert!(DeviceId::parse(d).is_err()),
            Route::Unknown => {}
            Route::OwnTracks(..) => panic!("{t} routed as OwnTracks"),
        }
        // As the payload's claim: it decodes (the claim is compared with the
        // topic's valid id, so it can never match one).
        let m = format!(r#"{{"v":1,"device":{},"boot":0,"seq":1}}"#, json!(id));
        let w = decode::json::decode(m.as_bytes()).expect("decodes");
        assert!(DeviceId::parse(w.device.as_deref().unwrap()).is_err());
    }
    assert!(
        DeviceId::parse("a..b").is_ok(),
        "dots inside an id are no path step"
    );
    assert!(DeviceId::parse(&"a".repeat(64)).is_ok());
    // Topic spellings that try to smuggle another device.
    for t in [
        "em/v1/devices/dev-1/telemetry/extra",
        "em/v1/devices//telemetry",
        "em/v1/devices/dev-1/../dev-2/telemetry",
        "owntracks/alice",
        "owntracks//dev",
        "owntracks/a/b/c",
    ] {
        match topic::route(t, "") {
            Route::Native(d) => assert!(DeviceId::parse(d).is_err(), "{t}"),
            Route::OwnTracks(u, d) => panic!("{t} routed as {u}/{d}"),
            Route::Unknown => {}
        }
    }
    println!("device id cases: {}", ids.len() * 3 + 6);
}

fn square(lon: f64, lat: f64, d: f64) -> Vec<[f64; 2]> {
    vec![
        [lon, lat],
        [lon + d, lat],
        [lon + d, lat + d],
        [lon, lat + d],
        [lon, lat],
    ]
}

#[test]
fn hostile_zones_are_refused_with_bounded_work() {
    // A million vertices: refused by counting, before anything is built.
    let ring: Vec<[f64; 2]> = (0..1_000_000)
        .map(|i| [(i % 1000) as f64 * 1e-5, (i / 1000) as f64 * 1e-5])
        .collect();
    let v = json!({"type": "Polygon", "coordinates": [ring]});
    let t = Instant::now();
    let (r, peak) = peak_alloc(|| Shape::from_geojson(&v));
    assert!(
        matches!(r, Err(ShapeError::TooManyVertices { .. })),
        "{r:?}"
    );
    assert!(
        peak < 1 << 20,
        "{peak} bytes allocated refusing 1M vertices"
    );
    let v = json!({"type": "MultiPolygon", "coordinates": vec![vec![square(0.0, 0.0, 0.001)]; 200_000]});
    assert!(matches!(
        Shape::from_geojson(&v),
        Err(ShapeError::TooManyVertices { .. })
    ));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // At the vertex cap, an outline built to defeat the sweep;
    // check_simple's work budget refuses it in bounded time.
    // A comb: every edge spans the whole width, so every edge overlaps
    // every other in longitude. It is simple, but too costly to prove so.
    let n = MAX_VERTICES - 3;
    let mut zig: Vec<[f64; 2]> = (0..n)
        .map(|i| [(i % 2) as f64 * 0.1, i as f64 * 1e-6])
        .collect();
    let top = zig[n - 1][1];
    zig.extend([[-0.001, top], [-0.001, 0.0], [0.0, 0.0]]);
    let s = Shape::polygon(vec![zig]).expect("structurally valid");
    let t = Instant::now();
    let r = check_simple(&s);
    assert!(r.is_err(), "zigzag accepted");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    println!(
        "zigzag of {} vertices: {:?} in {:?}",
        n + 2,
        r.unwrap_err(),
        t.elapsed()
    );

    // NaN cannot be written in JSON (serde reads `NaN` as an error and
    // turns a non-finite Value into null); through the constructors:
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut ring = square(0.0, 51.0, 0.01);
        ring[2][1] = bad;
        assert_eq!(Shape::polygon(vec![ring]), Err(ShapeError::NonFinite));
        assert!(Shape::circle(bad, 0.0, 10.0).is_err());
        assert!(Shape::circle(51.0, 0.0, bad).is_err());
        assert!(Shape::corridor(vec![[0.0, 51.0], [bad, 51.0]], 10.0).is_err());
    }
    assert_eq!(
        harness::zone(br#"{"type":"Polygon","coordinates":[[[0,51],[NaN,51],[0,52],[0,51]]]}"#),
        ZoneOutcome::NotJson
    );
    // Wrong nesting for the type.
    let sq = square(0.0, 51.0, 0.01);
    for v in [
        json!({"type": "Polygon", "coordinates": sq}),
        json!({"type": "Polygon", "coordinates": [[sq]]}),
        json!({"type": "MultiPolygon", "coordinates": [sq]}),
        json!({"type": "LineString", "coordinates": [sq]}),
        json!({"type": "Point", "coordinates": [[0.0, 51.0]]}),
        json!({"type": "Polygon", "coordinates": [[[0.0, 51.0, 1.0, 2.0]]]}),
        json!({"type": "Feature", "geometry": {"type": "Feature", "geometry": {}}}),
    ] {
        assert!(
            matches!(harness::zone_value(&v), ZoneOutcome::Refused(_)),
            "{v}"
        );
    }
}

#[test]
fn holes_must_lie_inside_their_shell() {
    let shell = square(0.0, 51.0, 0.01);
    let inside = square(0.002, 51.002, 0.002);
    let outside = square(0.02, 51.002, 0.002);
    let ok = Shape::polygon(vec![shell.clone(), inside.clone()]).unwrap();
    assert_eq!(check_simple(&ok), Ok(()));
    // A hole that crosses nothing but lies outside the shell would, by the
    // even-odd rule, make its own area part of the zone.
    let bad = Shape::polygon(vec![shell.clone(), outside]).unwrap();
    let z = PreparedZone::new(&bad);
    println!("point in an outside hole: {:?}", z.relate(51.003, 0.021));
    let e = check_simple(&bad).unwrap_err();
    assert!(e.contains("ring 1 (hole)") && e.contains("outside"), "{e}");
    // A hole inside another hole likewise.
    let nested = Shape::polygon(vec![shell, inside, square(0.0025, 51.0025, 0.001)]).unwrap();
    let e = check_simple(&nested).unwrap_err();
    assert!(
        e.contains("ring 2 (hole)") && e.contains("inside ring 1"),
        "{e}"
    );
}
