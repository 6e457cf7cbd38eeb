//! Geofence evaluation per GPS fix: Waypoint's `geofence` module against
//! two baselines. Run with `cargo bench --bench geofence`.
//!
//! Scene (fixed seeds): a 100 × 100 km region around lat 51.5, lon -0.1.
//! Shared exclusion list of N ∈ {1k, 10k, 100k} random star-shaped polygons
//! (16–256 vertices, 50–400 m radius). One person's zones: home circle
//! (100 m), inclusion "county" (2 000-vertex polygon ~50 km across, centred
//! on the region), two exclusion polygons (64 vertices, ~200 m) and one
//! exclusion circle (300 m). 4 096 fixes with accuracy 5–50 m: 75 % uniform
//! over the region, 20 % within 1.2 radii of a random shared zone's centre,
//! 5 % within 500 m of a per-person exclusion zone or home.
//!
//! Variants:
//! - `waypoint_full`: per-person zones via `relate_within` + shared list via
//!   `ZoneIndex::near`, with boundary distances (what the rules engine needs).
//! - `waypoint_shared`: the shared list only (`ZoneIndex::near`).
//! - `linear_shared`: baseline 1, every shared zone: envelope check then geo
//!   `Contains` (no distances).
//! - `rstar_shared`: baseline 2, rstar tree of envelopes (default params),
//!   point query then geo `Contains` (no distances).
//! - `rstar_full`: baseline 2 plus the per-person zones with geo `Contains`
//!   (polygons) and a haversine check (circles), no distances.
//!
//! After criterion's own output a summary table is printed: per-fix mean
//! (median over batches) and per-fix median (each fix timed on its own,
//! timer overhead subtracted).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use geo::{BoundingRect, Contains};
use rstar::{RTree, RTreeObject, AABB};
use waypoint::geofence::{haversine_m, PreparedZone, Probe, Shape, ZoneIndex};

const M_PER_DEG: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;
const CLAT: f64 = 51.5;
const CLON: f64 = -0.1;
const HALF_M: f64 = 50_000.0;
const N_FIXES: usize = 4096;

struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    fn usize(&mut self, a: usize, b: usize) -> usize {
        a + (self.next_u64() % (b - a) as u64) as usize
    }
}

fn offset(lat: f64, lon: f64, north_m: f64, east_m: f64) -> (f64, f64) {
    (
        lat + north_m / M_PER_DEG,
        lon + east_m / (M_PER_DEG * lat.to_radians().cos()),
    )
}

fn star(rng: &mut Rng, lat: f64, lon: f64, n: usize, rmin: f64, rmax: f64) -> Vec<[f64; 2]> {
    let mut ring: Vec<[f64; 2]> = (0..n)
        .map(|i| {
            let a = (i as f64 + rng.range(0.0, 0.8)) / n as f64 * std::f64::consts::TAU;
            let r = rng.range(rmin, rmax);
            let (y, x) = offset(lat, lon, r * a.sin(), r * a.cos());
            [x, y]
        })
        .collect();
    ring.push(ring[0]);
    ring
}

fn geo_poly(ring: &[[f64; 2]]) -> geo::Polygon<f64> {
    geo::Polygon::new(
        geo::LineString::from(ring.iter().map(|p| (p[0], p[1])).collect::<Vec<_>>()),
        vec![],
    )
}

struct Fix {
    lat: f64,
    lon: f64,
    acc: f64,
}

struct GeoEntry {
    env: AABB<[f64; 2]>,
    i: u32,
}
impl RTreeObject for GeoEntry {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        self.env
    }
}

struct Person {
    zones: Vec<Arc<PreparedZone>>,
    geo_polys: Vec<geo::Polygon<f64>>,
    circles: Vec<(f64, f64, f64)>,
    anchors: Vec<(f64, f64)>,
}

fn person(rng: &mut Rng) -> Person {
    let county = star(rng, CLAT, CLON, 2000, 22_000.0, 25_000.0);
    let (hlat, hlon) = offset(CLAT, CLON, rng.range(-8e3, 8e3), rng.range(-8e3, 8e3));
    let (e1lat, e1lon) = offset(CLAT, CLON, rng.range(-8e3, 8e3), rng.range(-8e3, 8e3));
    let (e2lat, e2lon) = offset(CLAT, CLON, rng.range(-8e3, 8e3), rng.range(-8e3, 8e3));
    let (e3lat, e3lon) = offset(CLAT, CLON, rng.range(-8e3, 8e3), rng.range(-8e3, 8e3));
    let ex1 = star(rng, e1lat, e1lon, 64, 150.0, 250.0);
    let ex2 = star(rng, e2lat, e2lon, 64, 150.0, 250.0);
    let shapes = [
        Shape::circle(hlat, hlon, 100.0),
        Shape::polygon(vec![county.clone()]),
        Shape::polygon(vec![ex1.clone()]),
        Shape::polygon(vec![ex2.clone()]),
        Shape::circle(e3lat, e3lon, 300.0),
    ];
    let zones = shapes
        .iter()
        .map(|s| Arc::new(PreparedZone::new(s.as_ref().expect("valid bench shape"))))
        .collect();
    Person {
        zones,
        geo_polys: vec![geo_poly(&county), geo_poly(&ex1), geo_poly(&ex2)],
        circles: vec![(hlat, hlon, 100.0), (e3lat, e3lon, 300.0)],
        anchors: vec![(hlat, hlon), (e1lat, e1lon), (e2lat, e2lon), (e3lat, e3lon)],
    }
}

struct Shared {
    /// Half the side of the square the zones and uniform fixes cover, m.
    half_m: f64,
    centers: Vec<(f64, f64, f64)>,
    index: ZoneIndex<u32>,
    geo: Vec<geo::Polygon<f64>>,
    envs: Vec<[f64; 4]>,
    tree: RTree<GeoEntry>,
    bytes: usize,
    vertices: usize,
}

fn shared(n: usize, seed: u64, half_m: f64) -> Shared {
    let mut rng = Rng(seed);
    let mut centers = Vec::with_capacity(n);
    let mut zones = Vec::with_capacity(n);
    let mut geo = Vec::with_capacity(n);
    let mut bytes = 0;
    let mut vertices = 0;
    for i in 0..n {
        let (lat, lon) = offset(
            CLAT,
            CLON,
            rng.range(-half_m, half_m),
            rng.range(-half_m, half_m),
        );
        let r = rng.range(50.0, 400.0);
        let nv = rng.usize(16, 257);
        let ring = star(&mut rng, lat, lon, nv, r * 0.6, r);
        vertices += ring.len();
        let shape = Shape::polygon(vec![ring.clone()]).expect("valid bench shape");
        let z = PreparedZone::new(&shape);
        bytes += z.memory_bytes();
        zones.push((i as u32, Arc::new(z)));
        geo.push(geo_poly(&ring));
        centers.push((lat, lon, r));
    }
    let envs: Vec<[f64; 4]> = geo
        .iter()
        .map(|p| {
            let r = p.bounding_rect().expect("non-empty polygon");
            [r.min().x, r.min().y, r.max().x, r.max().y]
        })
        .collect();
    let tree = RTree::bulk_load(
        envs.iter()
            .enumerate()
            .map(|(i, e)| GeoEntry {
                env: AABB::from_corners([e[0], e[1]], [e[2], e[3]]),
                i: i as u32,
            })
            .collect(),
    );
    Shared {
        half_m,
        centers,
        index: ZoneIndex::build(zones),
        geo,
        envs,
        tree,
        bytes,
        vertices,
    }
}

fn fixes(rng: &mut Rng, sh: &Shared, p: &Person) -> Vec<Fix> {
    (0..N_FIXES)
        .map(|i| {
            let acc = rng.range(5.0, 50.0);
            let (lat, lon) = match i % 20 {
                0..=14 => offset(
                    CLAT,
                    CLON,
                    rng.range(-sh.half_m, sh.half_m),
                    rng.range(-sh.half_m, sh.half_m),
                ),
                15..=18 => {
                    let (la, lo, r) = sh.centers[rng.usize(0, sh.centers.len())];
                    offset(la, lo, rng.range(-1.2, 1.2) * r, rng.range(-1.2, 1.2) * r)
                }
                _ => {
                    let (la, lo) = p.anchors[rng.usize(0, p.anchors.len())];
                    offset(la, lo, rng.range(-500.0, 500.0), rng.range(-500.0, 500.0))
                }
            };
            Fix { lat, lon, acc }
        })
        .collect()
}

/// Per-fix work of each variant; returns a checksum so nothing is elided.
fn waypoint_full(p: &Person, sh: &Shared, f: &Fix) -> f64 {
    let probe = Probe::new(f.lat, f.lon);
    let mut s = 0.0;
    for z in &p.zones {
        if let Some(rel) = z.relate_within_probe(&probe, f.acc) {
            s += rel.boundary_m + f64::from(u8::from(rel.inside));
        }
    }
    sh.index.near_probe(&probe, f.acc, |k, rel| {
        s += rel.boundary_m + f64::from(k & 1);
    });
    s
}

fn waypoint_full_capped(p: &Person, sh: &Shared, f: &Fix) -> f64 {
    let probe = Probe::new(f.lat, f.lon);
    let mut s = 0.0;
    for z in &p.zones {
        if let Some(rel) = z.relate_capped_probe(&probe, f.acc) {
            s += rel.boundary_m.min(1e9) + f64::from(u8::from(rel.inside));
        }
    }
    sh.index.near_capped_probe(&probe, f.acc, |k, rel| {
        s += rel.boundary_m.min(1e9) + f64::from(k & 1);
    });
    s
}

fn waypoint_shared_capped(_: &Person, sh: &Shared, f: &Fix) -> f64 {
    let mut s = 0.0;
    sh.index.near_capped(f.lat, f.lon, f.acc, |k, rel| {
        s += rel.boundary_m.min(1e9) + f64::from(k & 1);
    });
    s
}

fn waypoint_shared(_: &Person, sh: &Shared, f: &Fix) -> f64 {
    let mut s = 0.0;
    sh.index.near(f.lat, f.lon, f.acc, |k, rel| {
        s += rel.boundary_m + f64::from(k & 1);
    });
    s
}

fn linear_shared(_: &Person, sh: &Shared, f: &Fix) -> f64 {
    let pt = geo::Point::new(f.lon, f.lat);
    let mut s = 0.0;
    for (i, e) in sh.envs.iter().enumerate() {
        if e[0] <= f.lon
            && f.lon <= e[2]
            && e[1] <= f.lat
            && f.lat <= e[3]
            && sh.geo[i].contains(&pt)
        {
            s += 1.0;
        }
    }
    s
}

fn rstar_shared(_: &Person, sh: &Shared, f: &Fix) -> f64 {
    let pt = geo::Point::new(f.lon, f.lat);
    let mut s = 0.0;
    for e in sh
        .tree
        .locate_in_envelope_intersecting(&AABB::from_point([f.lon, f.lat]))
    {
        if sh.geo[e.i as usize].contains(&pt) {
            s += 1.0;
        }
    }
    s
}

fn rstar_full(p: &Person, sh: &Shared, f: &Fix) -> f64 {
    let pt = geo::Point::new(f.lon, f.lat);
    let mut s = rstar_shared(p, sh, f);
    for g in &p.geo_polys {
        if g.contains(&pt) {
            s += 1.0;
        }
    }
    for &(la, lo, r) in &p.circles {
        if haversine_m(f.lat, f.lon, la, lo) <= r {
            s += 1.0;
        }
    }
    s
}

type Variant = (&'static str, fn(&Person, &Shared, &Fix) -> f64);
const VARIANTS: [Variant; 7] = [
    ("waypoint_full", waypoint_full),
    ("waypoint_full_capped", waypoint_full_capped),
    ("waypoint_shared", waypoint_shared),
    ("waypoint_shared_capped", waypoint_shared_capped),
    ("linear_shared", linear_shared),
    ("rstar_shared", rstar_shared),
    ("rstar_full", rstar_full),
];

/// (numerator, denominator) indices into VARIANTS for the summary.
const RATIOS: [(usize, usize); 5] = [(0, 6), (1, 6), (2, 5), (3, 5), (2, 4)];

/// Fixes per timed batch: the linear scan is ~N times slower per fix.
fn batch_len(name: &str, n: usize) -> usize {
    if name == "linear_shared" {
        (N_FIXES * 1000 / n).clamp(64, N_FIXES)
    } else {
        N_FIXES
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (median over batches of mean ns/fix, median of individually timed ns/fix)
fn summary(
    p: &Person,
    sh: &Shared,
    fx: &[Fix],
    run: fn(&Person, &Shared, &Fix) -> f64,
    len: usize,
) -> (f64, f64) {
    let fx = &fx[..len];
    let mut batch = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        for f in fx {
            black_box(run(p, sh, black_box(f)));
        }
        batch.push(t.elapsed().as_nanos() as f64 / len as f64);
    }
    // Per-fix timing with the cost of the two `Instant::now` calls removed.
    let mut empty = Vec::with_capacity(len);
    for _ in 0..len {
        let t = Instant::now();
        black_box(0);
        empty.push(t.elapsed().as_nanos() as f64);
    }
    let overhead = median(&mut empty);
    let mut each = Vec::with_capacity(len * 3);
    for _ in 0..3 {
        for f in fx {
            let t = Instant::now();
            black_box(run(p, sh, black_box(f)));
            each.push(t.elapsed().as_nanos() as f64 - overhead);
        }
    }
    (median(&mut batch), median(&mut each).max(0.0))
}

/// Half side of the realistic-density square: one zone per km².
fn spread_half_m(n: usize) -> f64 {
    (n as f64).sqrt() * 500.0
}

/// The two scenes: `metro` (the dense 100 × 100 km setting) and
/// `spread` (one zone per km², the square growing with N).
/// A scene: name and half side of the square (m) for N zones.
type Config = (&'static str, fn(usize) -> f64);
const CONFIGS: [Config; 2] = [("metro", |_| HALF_M), ("spread", spread_half_m)];

fn bench(c: &mut Criterion) {
    let mut rng = Rng(0x5EED);
    let p = person(&mut rng);
    let mut tables = Vec::new();
    for (config, half) in CONFIGS {
        let mut table = Vec::new();
        for (n, seed) in [(1_000usize, 1u64), (10_000, 2), (100_000, 3)] {
            let t = Instant::now();
            let sh = shared(n, seed, half(n));
            let build = t.elapsed();
            let fx = fixes(&mut rng, &sh, &p);
            let mut hits = 0usize;
            for f in &fx {
                sh.index.near(f.lat, f.lon, f.acc, |_, _| hits += 1);
            }
            eprintln!(
                "{config} N={n}: {:.0} km square, built in {:.1} s, {} vertices, ~{} B per prepared zone + {} B per zone in the index, {:.2} shared-zone relations per fix",
                half(n) / 500.0,
                build.as_secs_f64(),
                sh.vertices,
                sh.bytes / n,
                sh.index.memory_bytes() / n,
                hits as f64 / fx.len() as f64
            );
            let mut g = c.benchmark_group(format!("geofence_{config}_n{n}"));
            g.sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_millis(1200));
            for (name, run) in VARIANTS {
                let len = batch_len(name, n);
                g.throughput(Throughput::Elements(len as u64));
                g.bench_function(name, |b| {
                    b.iter(|| {
                        let mut s = 0.0;
                        for f in &fx[..len] {
                            s += run(&p, &sh, f);
                        }
                        s
                    })
                });
            }
            g.finish();
            let row: Vec<(f64, f64)> = VARIANTS
                .iter()
                .map(|(name, run)| summary(&p, &sh, &fx, *run, batch_len(name, n)))
                .collect();
            table.push((n, row));
        }
        tables.push((config, table));
    }
    for (config, table) in tables {
        println!(
            "\nSummary, {config}, ns per fix: mean (median of 15 batches) / median (fixes timed one by one)"
        );
        print!("| N |");
        for (name, _) in VARIANTS {
            print!(" {name} |");
        }
        println!(" full ÷ rstar_full | full_capped ÷ rstar_full | shared ÷ rstar_shared | shared_capped ÷ rstar_shared | shared ÷ linear_shared |");
        print!("|---|");
        for _ in 0..VARIANTS.len() + RATIOS.len() {
            print!("---|");
        }
        println!();
        for (n, row) in &table {
            print!("| {n} |");
            for (mean, med) in row {
                print!(" {mean:.0} / {med:.0} |");
            }
            let ratio = |a: usize, b: usize| (row[a].0 / row[b].0, row[a].1 / row[b].1);
            for (a, b) in RATIOS {
                let (m, d) = ratio(a, b);
                print!(" {m:.2} / {d:.2} |");
            }
            println!();
        }
    }
}

criterion_group!(benches, bench);

/// `GEOFENCE_PROFILE=variant[,variant...]:N` loops the variants in turn
/// (for `perf` and quick comparisons).
fn profile(spec: &str) {
    let (name, n) = spec.split_once(':').unwrap_or((spec, "100000"));
    let n: usize = n.parse().unwrap_or(100_000);
    let mut rng = Rng(0x5EED);
    let p = person(&mut rng);
    let half_m = if std::env::var("GEOFENCE_SPREAD").is_ok() {
        spread_half_m(n)
    } else {
        HALF_M
    };
    let sh = shared(n, 3, half_m);
    let fx = fixes(&mut rng, &sh, &p);
    fn tree_only(_: &Person, sh: &Shared, f: &Fix) -> f64 {
        sh.tree
            .locate_in_envelope_intersecting(&AABB::from_point([f.lon, f.lat]))
            .count() as f64
    }
    fn tree_int(_: &Person, sh: &Shared, f: &Fix) -> f64 {
        let mut n = 0.0;
        let _ = sh.tree.locate_in_envelope_intersecting_int(
            &AABB::from_point([f.lon, f.lat]),
            |_| -> std::ops::ControlFlow<()> {
                n += 1.0;
                std::ops::ControlFlow::Continue(())
            },
        );
        n
    }
    fn person_capped(p: &Person, _: &Shared, f: &Fix) -> f64 {
        let probe = Probe::new(f.lat, f.lon);
        let mut s = 0.0;
        for z in &p.zones {
            if let Some(rel) = z.relate_capped_probe(&probe, f.acc) {
                s += rel.boundary_m.min(1e9) + f64::from(u8::from(rel.inside));
            }
        }
        s
    }
    let extra: [Variant; 3] = [
        ("tree_only", tree_only),
        ("tree_int", tree_int),
        ("person_capped", person_capped),
    ];
    let mut runs = Vec::new();
    for name in name.split(',') {
        let Some(v) = VARIANTS.iter().chain(extra.iter()).find(|v| v.0 == name) else {
            eprintln!("unknown variant {name}");
            return;
        };
        runs.push(*v);
    }
    // Variants alternate batch by batch so load changes on the shared
    // machine hit them alike; the fastest and the median batch are shown.
    let mut times = vec![Vec::new(); runs.len()];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(6 * runs.len() as u64) {
        for ((_, run), times) in runs.iter().zip(&mut times) {
            let t = Instant::now();
            for f in &fx {
                black_box(run(&p, &sh, f));
            }
            times.push(t.elapsed().as_nanos() as f64 / fx.len() as f64);
        }
    }
    for ((name, _), times) in runs.iter().zip(&mut times) {
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        eprintln!(
            "{name} N={n}: min {min:.0} / median {:.0} ns/fix",
            median(times)
        );
    }
}

fn main() {
    if let Ok(spec) = std::env::var("GEOFENCE_PROFILE") {
        profile(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
