use std::sync::Arc;

use geo::{Intersects, LineString, Point};
use serde_json::json;

use super::*;

/// splitmix64: tiny, deterministic, good enough for test data.
pub(crate) struct Rng(u64);
impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn f(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub(crate) fn range(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.f()
    }
    pub(crate) fn usize(&mut self, a: usize, b: usize) -> usize {
        a + (self.next_u64() % (b - a) as u64) as usize
    }
}

/// Star-shaped closed ring around (lat, lon) with radii in [rmin, rmax] m.
fn star(rng: &mut Rng, lat: f64, lon: f64, n: usize, rmin: f64, rmax: f64) -> Vec<[f64; 2]> {
    let mut ring: Vec<[f64; 2]> = (0..n)
        .map(|i| {
            let a = (i as f64 + rng.range(0.0, 0.8)) / n as f64 * std::f64::consts::TAU;
            let r = rng.range(rmin, rmax);
            let dlat = r * a.sin() / M_PER_DEG;
            let dlon = r * a.cos() / (M_PER_DEG * lat.to_radians().cos());
            [lon + dlon, lat + dlat]
        })
        .collect();
    ring.push(ring[0]);
    ring
}

fn random_shape(rng: &mut Rng, lat: f64, lon: f64, size: f64) -> Shape {
    match rng.usize(0, 5) {
        0 => {
            let n = rng.usize(3, 40);
            Shape::polygon(vec![star(rng, lat, lon, n, size * 0.6, size)]).unwrap()
        }
        1 => {
            let n = rng.usize(6, 40);
            let outer = star(rng, lat, lon, n, size * 0.6, size);
            let m = rng.usize(3, 12);
            let hole = star(rng, lat, lon, m, size * 0.1, size * 0.25);
            Shape::polygon(vec![outer, hole]).unwrap()
        }
        2 => {
            let off = size * 1.5 / M_PER_DEG;
            let (n1, n2) = (rng.usize(3, 20), rng.usize(6, 20));
            let a = star(rng, lat, lon - off, n1, size * 0.4, size * 0.7);
            let b_outer = star(rng, lat, lon + off, n2, size * 0.4, size * 0.7);
            let b_hole = star(rng, lat, lon + off, 5, size * 0.05, size * 0.15);
            Shape::multipolygon(vec![vec![a], vec![b_outer, b_hole]]).unwrap()
        }
        3 => Shape::circle(lat, lon, rng.range(size * 0.1, size)).unwrap(),
        _ => {
            let n = rng.usize(2, 12);
            let mut line = vec![];
            let (mut la, mut lo) = (lat, lon);
            for _ in 0..n {
                line.push([lo, la]);
                la += rng.range(-1.0, 1.0) * size / M_PER_DEG;
                lo += rng.range(-1.0, 1.0) * size / M_PER_DEG;
            }
            Shape::corridor(line, rng.range(size * 0.05, size * 0.5)).unwrap()
        }
    }
}

/// All vertices of a shape, for boundary test points.
fn vertices(s: &Shape) -> Vec<[f64; 2]> {
    match s {
        Shape::Polygon(p) => p.rings.concat(),
        Shape::MultiPolygon(ps) => ps.iter().flat_map(|p| p.rings.concat()).collect(),
        Shape::Circle(c) => vec![[c.lon, c.lat]],
        Shape::Corridor(c) => c.line.clone(),
    }
}

fn to_geo(p: &Polygon) -> geo::Polygon<f64> {
    let ls =
        |r: &Vec<[f64; 2]>| LineString::from(r.iter().map(|p| (p[0], p[1])).collect::<Vec<_>>());
    geo::Polygon::new(ls(&p.rings[0]), p.rings[1..].iter().map(ls).collect())
}

/// Independent distance to a lon/lat-straight edge: ternary search on the
/// haversine distance along the edge.
fn hav_edge(lat: f64, lon: f64, a: [f64; 2], b: [f64; 2]) -> f64 {
    let at = |t: f64| haversine_m(lat, lon, a[1] + t * (b[1] - a[1]), a[0] + t * (b[0] - a[0]));
    let (mut lo, mut hi) = (0.0, 1.0);
    for _ in 0..100 {
        let m1 = lo + (hi - lo) / 3.0;
        let m2 = hi - (hi - lo) / 3.0;
        if at(m1) < at(m2) {
            hi = m2;
        } else {
            lo = m1;
        }
    }
    at(0.5 * (lo + hi)).min(at(0.0)).min(at(1.0))
}

fn hav_chains(lat: f64, lon: f64, chains: &[&[[f64; 2]]]) -> f64 {
    chains
        .iter()
        .flat_map(|c| c.windows(2))
        .map(|w| hav_edge(lat, lon, w[0], w[1]))
        .fold(f64::INFINITY, f64::min)
}

/// Independent relation: geo for inside-ness, haversine for distances.
fn reference(s: &Shape, lat: f64, lon: f64) -> Relation {
    let pt = Point::new(lon, lat);
    match s {
        Shape::Polygon(_) | Shape::MultiPolygon(_) => {
            let polys: Vec<&Polygon> = match s {
                Shape::Polygon(p) => vec![p],
                Shape::MultiPolygon(ps) => ps.iter().collect(),
                _ => unreachable!(),
            };
            let inside = polys.iter().any(|p| to_geo(p).intersects(&pt));
            let chains: Vec<&[[f64; 2]]> = polys
                .iter()
                .flat_map(|p| p.rings.iter().map(Vec::as_slice))
                .collect();
            Relation {
                inside,
                boundary_m: hav_chains(lat, lon, &chains),
            }
        }
        Shape::Circle(c) => {
            let d = haversine_m(lat, lon, c.lat, c.lon);
            Relation {
                inside: d <= c.radius_m,
                boundary_m: (d - c.radius_m).abs(),
            }
        }
        Shape::Corridor(c) => {
            let d = hav_chains(lat, lon, &[&c.line]);
            let h = c.width_m / 2.0;
            Relation {
                inside: d <= h,
                boundary_m: (d - h).abs(),
            }
        }
    }
}

/// Points around a zone: uniform in a box, vertices, edge midpoints,
/// points just off vertices.
fn probe_points(
    rng: &mut Rng,
    s: &Shape,
    lat: f64,
    lon: f64,
    spread: f64,
    n: usize,
) -> Vec<(f64, f64)> {
    let mut out = vec![];
    let dl = spread / M_PER_DEG;
    for _ in 0..n {
        out.push((
            lat + rng.range(-dl, dl),
            lon + rng.range(-dl, dl) / lat.to_radians().cos(),
        ));
    }
    let vs = vertices(s);
    for v in vs.iter().take(30) {
        out.push((v[1], v[0]));
        out.push((v[1] + rng.range(-1e-5, 1e-5), v[0] + rng.range(-1e-5, 1e-5)));
    }
    for w in vs.windows(2).take(30) {
        out.push((0.5 * (w[0][1] + w[1][1]), 0.5 * (w[0][0] + w[1][0])));
    }
    out
}

#[test]
fn relate_matches_geo_and_haversine() {
    let mut rng = Rng(1);
    let mut checked = 0;
    for z in 0..300 {
        let lat = rng.range(-60.0, 60.0);
        let lon = rng.range(-170.0, 170.0);
        let size = if z % 10 == 0 {
            rng.range(5_000.0, 20_000.0)
        } else {
            rng.range(50.0, 2_000.0)
        };
        let shape = random_shape(&mut rng, lat, lon, size);
        let zone = PreparedZone::new(&shape);
        for (plat, plon) in probe_points(&mut rng, &shape, lat, lon, size * 3.0, 40) {
            let got = zone.relate(plat, plon);
            let want = reference(&shape, plat, plon);
            let tol = want.boundary_m * 0.005 + 1e-6;
            // Circles and corridors are metric shapes: a point within the
            // distance tolerance of the boundary may fall either way.
            let metric = matches!(shape, Shape::Circle(_) | Shape::Corridor(_));
            if !(metric && want.boundary_m < tol) {
                assert_eq!(
                    got.inside, want.inside,
                    "{shape:?} at {plat},{plon}: {got:?} vs {want:?}"
                );
            }
            assert!(
                (got.boundary_m - want.boundary_m).abs() <= tol,
                "{} at {plat},{plon}: {got:?} vs {want:?}",
                shape.kind()
            );
            if got.boundary_m == 0.0 {
                assert!(got.inside);
            }
            checked += 1;
        }
    }
    assert!(checked > 10_000);
}

#[test]
fn vertices_and_edges_are_inside() {
    let sq = Shape::polygon(vec![
        vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]],
        vec![
            [0.25, 0.25],
            [0.75, 0.25],
            [0.75, 0.75],
            [0.25, 0.75],
            [0.25, 0.25],
        ],
    ])
    .unwrap();
    let z = PreparedZone::new(&sq);
    let g = match &sq {
        Shape::Polygon(p) => to_geo(p),
        _ => unreachable!(),
    };
    for (lat, lon, inside, on) in [
        (0.0, 0.5, true, true),   // bottom edge
        (0.0, 0.0, true, true),   // vertex
        (1.0, 1.0, true, true),   // vertex
        (0.5, 1.0, true, true),   // right edge
        (0.25, 0.5, true, true),  // hole edge
        (0.75, 0.75, true, true), // hole vertex
        (0.5, 0.5, false, false), // in the hole
        (0.1, 0.1, true, false),  // in the ring
        (0.0, 1.5, false, false), // on the edge's line, beyond it
        (-0.000001, 0.5, false, false),
    ] {
        let r = z.relate(lat, lon);
        assert_eq!(r.inside, inside, "{lat},{lon}");
        assert_eq!(
            r.inside,
            g.intersects(&Point::new(lon, lat)),
            "geo {lat},{lon}"
        );
        assert_eq!(r.boundary_m == 0.0, on, "{lat},{lon}: {r:?}");
        if !on {
            assert_eq!(r.inside, geo::Contains::contains(&g, &Point::new(lon, lat)));
        }
    }
    // Hole boundary distance: centre of hole is 0.25° of latitude away.
    let r = z.relate(0.5, 0.5);
    assert!(
        (r.boundary_m - 0.25 * M_PER_DEG).abs() < 0.25 * M_PER_DEG * 0.001,
        "{r:?}"
    );
}

#[test]
fn big_zones_far_points_and_high_latitudes() {
    // The refinement frame keeps far distances accurate on big zones.
    let mut rng = Rng(7);
    for &lat in &[0.0, 45.0, 60.0, 75.0, 82.0] {
        let shape =
            Shape::polygon(vec![star(&mut rng, lat, 10.0, 200, 100_000.0, 200_000.0)]).unwrap();
        let z = PreparedZone::new(&shape);
        let mut worst = 0.0f64;
        for (plat, plon) in probe_points(&mut rng, &shape, lat, 10.0, 250_000.0, 60) {
            if plat.abs() > 89.0 {
                continue;
            }
            let got = z.relate(plat, plon);
            let want = reference(&shape, plat, plon);
            assert_eq!(got.inside, want.inside);
            let err = (got.boundary_m - want.boundary_m).abs();
            assert!(
                err <= want.boundary_m * 0.005 + 1e-6,
                "lat {lat}: {got:?} vs {want:?} at {plat},{plon}"
            );
            if want.boundary_m > 1_000.0 {
                worst = worst.max(err / want.boundary_m);
            }
        }
        // Measured: 3e-4 at 45°, 5e-4 at 60°, 1.7e-3 at 82° (module docs).
        assert!(worst < 0.002, "lat {lat}: worst relative error {worst:.2e}");
    }
}

fn brute<K: Copy>(
    zones: &[(K, Arc<PreparedZone>)],
    lat: f64,
    lon: f64,
    r: f64,
) -> Vec<(K, Relation)> {
    zones
        .iter()
        .filter_map(|(k, z)| z.relate_within(lat, lon, r).map(|rel| (*k, rel)))
        .collect()
}

#[test]
fn relate_within_is_relate_filtered() {
    let mut rng = Rng(3);
    for _ in 0..300 {
        let lat = rng.range(-70.0, 70.0);
        let lon = rng.range(-170.0, 170.0);
        let size = rng.range(30.0, 20_000.0);
        let shape = random_shape(&mut rng, lat, lon, size);
        let z = PreparedZone::new(&shape);
        for (plat, plon) in probe_points(&mut rng, &shape, lat, lon, size * 4.0, 30) {
            let full = z.relate(plat, plon);
            for r in [
                0.0,
                1.0,
                rng.range(0.0, size),
                rng.range(0.0, 3.0 * size),
                20_000.0,
                -1.0,
                f64::NAN,
                f64::INFINITY,
            ] {
                let want = if !full.inside && full.boundary_m > r {
                    None
                } else {
                    Some(full)
                };
                assert_eq!(
                    z.relate_within(plat, plon, r),
                    want,
                    "{} r={r}",
                    shape.kind()
                );
            }
            // Exactly at the boundary distance.
            let r = full.boundary_m;
            assert_eq!(z.relate_within(plat, plon, r), Some(full));
        }
    }
}

#[test]
fn index_agrees_with_brute_force() {
    let mut rng = Rng(11);
    for round in 0..4 {
        let (clat, clon) = [(51.5, -0.1), (-33.9, 151.2), (64.1, -21.9), (0.0, 179.0)][round];
        let mut shapes = vec![];
        for i in 0..400u32 {
            let lat = clat + rng.range(-0.1, 0.1);
            let lon = clon + rng.range(-0.15, 0.15);
            let size = if i % 50 == 0 {
                rng.range(2_000.0, 8_000.0)
            } else {
                rng.range(30.0, 400.0)
            };
            shapes.push((i, random_shape(&mut rng, lat, lon, size)));
        }
        let zones: Vec<(u32, Arc<PreparedZone>)> = shapes
            .iter()
            .map(|(k, s)| (*k, Arc::new(PreparedZone::new(s))))
            .collect();
        let idx = ZoneIndex::build(zones.clone());
        assert_eq!(idx.len(), 400);
        let mut pts = vec![];
        for _ in 0..1_000 {
            pts.push((clat + rng.range(-0.12, 0.12), clon + rng.range(-0.18, 0.18)));
        }
        for (_, s) in shapes.iter().step_by(7) {
            for v in vertices(s).iter().take(6) {
                pts.push((v[1], v[0]));
            }
            if let Shape::Polygon(p) = s {
                if let Some(h) = p.holes().first() {
                    // Roughly the hole's centre: inside the hole.
                    let n = (h.len() - 1) as f64;
                    let c = h[..h.len() - 1]
                        .iter()
                        .fold([0.0, 0.0], |a, b| [a[0] + b[0] / n, a[1] + b[1] / n]);
                    pts.push((c[1], c[0]));
                }
            }
        }
        let mut nonempty = 0;
        for (lat, lon) in pts {
            for r in [0.0, rng.range(0.0, 50.0), rng.range(0.0, 2_000.0), 30_000.0] {
                let mut got = vec![];
                idx.near(lat, lon, r, |k, rel| got.push((k, rel)));
                got.sort_by_key(|g| g.0);
                let want = brute(&zones, lat, lon, r);
                assert_eq!(got, want, "{lat},{lon} r={r}");
                nonempty += usize::from(!got.is_empty());
            }
        }
        assert!(nonempty > 500, "{nonempty}");
    }
    let empty: ZoneIndex<u8> = ZoneIndex::build(vec![]);
    assert!(empty.is_empty());
    empty.near(0.0, 0.0, 10.0, |_, _| panic!("empty index"));
}

#[test]
fn large_polygon_hierarchy_matches_reference() {
    // Enough vertices for several hierarchy levels.
    let mut rng = Rng(5);
    let outer = star(&mut rng, 51.5, -0.1, 5_000, 20_000.0, 25_000.0);
    let hole = star(&mut rng, 51.5, -0.1, 700, 2_000.0, 5_000.0);
    let shape = Shape::polygon(vec![outer, hole]).unwrap();
    let z = PreparedZone::new(&shape);
    for (lat, lon) in probe_points(&mut rng, &shape, 51.5, -0.1, 30_000.0, 300) {
        let got = z.relate(lat, lon);
        let want = reference(&shape, lat, lon);
        assert_eq!(got.inside, want.inside);
        assert!((got.boundary_m - want.boundary_m).abs() <= want.boundary_m * 0.005 + 1e-6);
    }
}

#[test]
fn non_finite_queries_do_not_panic() {
    let z = PreparedZone::new(&Shape::circle(51.5, -0.1, 100.0).unwrap());
    for (lat, lon) in [
        (f64::NAN, 0.0),
        (0.0, f64::INFINITY),
        (f64::NEG_INFINITY, f64::NAN),
    ] {
        assert!(!z.relate(lat, lon).inside);
        assert_eq!(z.relate_within(lat, lon, 10.0), None);
    }
    // Out-of-range and polar queries just give far-away answers.
    assert!(!z.relate(90.0, 0.0).inside);
    assert!(!z.relate(-90.0, 500.0).inside);
    let idx = ZoneIndex::build(vec![((), Arc::new(z))]);
    idx.near(f64::NAN, 0.0, 10.0, |_, _| panic!());
    idx.near(90.0, 0.0, 1e12, |_, _| {});
}

// ---- parsing ----

fn feature(geom: serde_json::Value, props: serde_json::Value) -> serde_json::Value {
    json!({"type": "Feature", "geometry": geom, "properties": props})
}

#[test]
fn parses_each_kind_and_round_trips() {
    let poly = json!({"type": "Polygon", "coordinates": [
        [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]],
        [[0.2, 0.2], [0.4, 0.2], [0.4, 0.4], [0.2, 0.2]]]});
    let multi = json!({"type": "MultiPolygon", "coordinates": [
        [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]],
        [[[2.0, 0.0], [3.0, 0.0, 12.5], [3.0, 1.0], [2.0, 0.0]]]]});
    let cases = [
        (poly.clone(), "polygon"),
        (feature(poly, json!({"name": "county"})), "polygon"),
        (feature(multi.clone(), json!(null)), "multipolygon"),
        (multi, "multipolygon"),
        (
            feature(
                json!({"type": "Point", "coordinates": [-0.1, 51.5]}),
                json!({"radius_m": 150}),
            ),
            "circle",
        ),
        (
            feature(
                json!({"type": "LineString", "coordinates": [[-0.1, 51.5], [-0.09, 51.51], [-0.05, 51.5]]}),
                json!({"width_m": 40.5}),
            ),
            "corridor",
        ),
    ];
    for (v, kind) in cases {
        let s = Shape::from_geojson(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(s.kind(), kind);
        let g = s.to_geojson();
        assert_eq!(g["type"], "Feature");
        assert_eq!(Shape::from_geojson(&g).unwrap(), s);
        // Through text too (serde_json prints shortest round-trip floats).
        let text = serde_json::to_string(&g).unwrap();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(Shape::from_geojson(&back).unwrap(), s);
    }
    let c = Shape::from_geojson(&feature(
        json!({"type": "Point", "coordinates": [-0.1, 51.5]}),
        json!({"radius_m": 150}),
    ))
    .unwrap();
    match c {
        Shape::Circle(c) => {
            assert_eq!(c.center(), [-0.1, 51.5]);
            assert_eq!(c.radius_m(), 150.0);
        }
        _ => panic!(),
    }
}

#[test]
fn refusals_name_the_rule() {
    let ring = |r: serde_json::Value| json!({"type": "Polygon", "coordinates": [r]});
    let big: Vec<[f64; 2]> = (0..=MAX_VERTICES).map(|i| [i as f64 * 1e-6, 0.0]).collect();
    let cases: Vec<(serde_json::Value, ShapeError)> = vec![
        (json!([1, 2]), ShapeError::NotAnObject),
        (json!({"coordinates": []}), ShapeError::MissingType),
        (
            json!({"type": "Feature", "geometry": null}),
            ShapeError::MissingGeometry,
        ),
        (
            json!({"type": "FeatureCollection", "features": []}),
            ShapeError::UnsupportedType("FeatureCollection".into()),
        ),
        (
            json!({"type": "MultiLineString", "coordinates": []}),
            ShapeError::UnsupportedType("MultiLineString".into()),
        ),
        (
            ring(json!([[0.0, 0.0], [1.0, 0.0], [f64::NAN, 1.0], [0.0, 0.0]])),
            ShapeError::NonFinite,
        ),
        (
            ring(json!([[0.0, 0.0], [1.0, 0.0], ["x", 1.0], [0.0, 0.0]])),
            ShapeError::Malformed("a position must be an array of 2 or 3 numbers"),
        ),
        (
            ring(json!([[0.0, 0.0], [1.0], [1.0, 1.0], [0.0, 0.0]])),
            ShapeError::Malformed("a position must be an array of 2 or 3 numbers"),
        ),
        (
            json!({"type": "Polygon", "coordinates": 5}),
            ShapeError::Malformed(
                "coordinates are not nested arrays as the geometry type requires",
            ),
        ),
        (
            json!({"type": "Polygon"}),
            ShapeError::Malformed("geometry has no \"coordinates\""),
        ),
        (
            ring(json!([[0.0, 0.0], [181.0, 0.0], [1.0, 1.0], [0.0, 0.0]])),
            ShapeError::LongitudeOutOfRange(181.0),
        ),
        (
            ring(json!([[0.0, 0.0], [1.0, -91.0], [1.0, 1.0], [0.0, 0.0]])),
            ShapeError::LatitudeOutOfRange(-91.0),
        ),
        (
            ring(json!([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.5]])),
            ShapeError::RingNotClosed { ring: 0 },
        ),
        (
            ring(json!([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])),
            ShapeError::RingTooShort { ring: 0, len: 3 },
        ),
        (
            json!({"type": "Polygon", "coordinates": []}),
            ShapeError::Empty("Polygon"),
        ),
        (
            json!({"type": "MultiPolygon", "coordinates": []}),
            ShapeError::Empty("MultiPolygon"),
        ),
        (
            ring(json!(big)),
            ShapeError::TooManyVertices {
                count: MAX_VERTICES + 1,
                max: MAX_VERTICES,
            },
        ),
        (
            ring(json!([[0.0, 0.0], [5.0, 0.0], [5.0, 1.0], [0.0, 0.0]])),
            ShapeError::TooLarge {
                extent_m: 5.0 * M_PER_DEG,
                max_m: MAX_EXTENT_M,
            },
        ),
        (
            ring(json!([
                [-179.9, 0.0],
                [179.9, 0.0],
                [179.9, 0.1],
                [-179.9, 0.0]
            ])),
            ShapeError::CrossesAntimeridian,
        ),
        (
            ring(json!([[0.0, 86.0], [0.1, 86.0], [0.1, 86.1], [0.0, 86.0]])),
            ShapeError::TooCloseToPole(86.1),
        ),
        (
            json!({"type": "Point", "coordinates": [0.0, 0.0]}),
            ShapeError::MissingRadius,
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0.0, 0.0]}),
                json!({"radius_m": "50"}),
            ),
            ShapeError::MissingRadius,
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0.0, 0.0]}),
                json!({"radius_m": 0}),
            ),
            ShapeError::InvalidRadius {
                value: 0.0,
                max: MAX_RADIUS_M,
            },
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0.0, 0.0]}),
                json!({"radius_m": -5.0}),
            ),
            ShapeError::InvalidRadius {
                value: -5.0,
                max: MAX_RADIUS_M,
            },
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0.0, 0.0]}),
                json!({"radius_m": 1e9}),
            ),
            ShapeError::InvalidRadius {
                value: 1e9,
                max: MAX_RADIUS_M,
            },
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0.0]}),
                json!({"radius_m": 5}),
            ),
            ShapeError::Malformed("a position must be an array of 2 or 3 numbers"),
        ),
        (
            feature(
                json!({"type": "LineString", "coordinates": [[0.0, 0.0], [0.01, 0.0]]}),
                json!({}),
            ),
            ShapeError::MissingWidth,
        ),
        (
            feature(
                json!({"type": "LineString", "coordinates": [[0.0, 0.0]]}),
                json!({"width_m": 5}),
            ),
            ShapeError::LineTooShort(1),
        ),
        (
            feature(
                json!({"type": "LineString", "coordinates": [[0.0, 0.0], [0.01, 0.0]]}),
                json!({"width_m": -1}),
            ),
            ShapeError::InvalidWidth {
                value: -1.0,
                max: MAX_WIDTH_M,
            },
        ),
    ];
    for (v, want) in cases {
        let got = Shape::from_geojson(&v);
        match (&got, &want) {
            (
                Err(ShapeError::TooLarge { extent_m, .. }),
                ShapeError::TooLarge { extent_m: w, .. },
            ) => {
                assert!((extent_m - w).abs() < 1.0, "{v}: {got:?}")
            }
            (Err(ShapeError::TooCloseToPole(a)), ShapeError::TooCloseToPole(b)) => {
                assert!((a - b).abs() < 1e-9)
            }
            _ => assert_eq!(got.as_ref().err(), Some(&want), "{v}"),
        }
        // Every refusal has a human message.
        assert!(!want.to_string().is_empty());
    }
    assert!(Shape::circle(84.0, 0.0, 250_000.0).is_err());
    assert!(Shape::circle(0.0, 0.0, 250_000.0).is_ok());
}

#[test]
fn hostile_values_never_panic() {
    let mut rng = Rng(99);
    let atoms = [
        json!(null),
        json!(1.5),
        json!(-200),
        json!("Polygon"),
        json!([]),
        json!({}),
        json!(true),
        json!(1e308),
    ];
    fn build(rng: &mut Rng, atoms: &[serde_json::Value], depth: usize) -> serde_json::Value {
        if depth == 0 || rng.usize(0, 3) == 0 {
            return atoms[rng.usize(0, atoms.len())].clone();
        }
        let n = rng.usize(0, 6);
        serde_json::Value::Array((0..n).map(|_| build(rng, atoms, depth - 1)).collect())
    }
    for i in 0..5_000 {
        let ty = [
            "Polygon",
            "MultiPolygon",
            "Point",
            "LineString",
            "Feature",
            "Nope",
        ][i % 6];
        let coords = build(&mut rng, &atoms, 5);
        let v = json!({"type": "Feature", "geometry": {"type": ty, "coordinates": coords}, "properties": {"radius_m": 10, "width_m": 5}});
        if let Ok(s) = Shape::from_geojson(&v) {
            let z = PreparedZone::new(&s);
            let _ = z.relate(0.0, 0.0);
            assert_eq!(Shape::from_geojson(&s.to_geojson()).unwrap(), s);
        }
        let _ =
            Shape::from_geojson(&json!({"type": ty, "coordinates": build(&mut rng, &atoms, 5)}));
    }
}

#[test]
fn prepared_zone_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<PreparedZone>();
    check::<ZoneIndex<u64>>();
    check::<Shape>();
}

#[test]
fn capped_agrees_with_exact() {
    let mut rng = Rng(21);
    let mut shapes = vec![];
    for i in 0..300u32 {
        let lat = 51.5 + rng.range(-0.05, 0.05);
        let lon = -0.1 + rng.range(-0.08, 0.08);
        let size = if i % 30 == 0 {
            rng.range(2_000.0, 6_000.0)
        } else {
            rng.range(30.0, 400.0)
        };
        shapes.push((i, random_shape(&mut rng, lat, lon, size)));
    }
    let zones: Vec<(u32, Arc<PreparedZone>)> = shapes
        .iter()
        .map(|(k, s)| (*k, Arc::new(PreparedZone::new(s))))
        .collect();
    let idx = ZoneIndex::build(zones.clone());
    for _ in 0..1_500 {
        let (lat, lon) = (51.5 + rng.range(-0.06, 0.06), -0.1 + rng.range(-0.1, 0.1));
        for r in [0.0, rng.range(0.0, 60.0), rng.range(0.0, 3_000.0)] {
            let mut want = vec![];
            for (k, z) in &zones {
                let exact = z.relate_within(lat, lon, r);
                let capped = z.relate_capped(lat, lon, r);
                match (exact, capped) {
                    (None, None) => {}
                    (Some(e), Some(c)) => {
                        assert_eq!(e.inside, c.inside);
                        if e.boundary_m <= r {
                            assert_eq!(e.boundary_m, c.boundary_m);
                        } else {
                            assert_eq!(c.boundary_m, f64::INFINITY);
                        }
                        want.push((*k, c));
                    }
                    other => panic!("{other:?}"),
                }
            }
            let mut got = vec![];
            idx.near_capped(lat, lon, r, |k, rel| got.push((k, rel)));
            got.sort_by_key(|g| g.0);
            assert_eq!(got, want);
        }
    }
}

#[test]
fn fine_grid_and_buckets_agree_with_exact() {
    // Enough vertices for the fine grid; points crowd the boundary band.
    let mut rng = Rng(8);
    let outer = star(&mut rng, 51.5, -0.1, 3_000, 20_000.0, 25_000.0);
    let hole = star(&mut rng, 51.5, -0.1, 300, 2_000.0, 5_000.0);
    let shape = Shape::polygon(vec![outer, hole]).unwrap();
    let z = PreparedZone::new(&shape);
    let idx = ZoneIndex::build(vec![(0u32, Arc::new(z.clone()))]);
    let mut pts = probe_points(&mut rng, &shape, 51.5, -0.1, 30_000.0, 500);
    let vs = vertices(&shape);
    for _ in 0..1_500 {
        let v = vs[rng.usize(0, vs.len())];
        let d = 300.0 / M_PER_DEG;
        pts.push((v[1] + rng.range(-d, d), v[0] + rng.range(-d, d)));
    }
    for (i, (lat, lon)) in pts.into_iter().enumerate() {
        let exact = z.relate(lat, lon);
        if i % 10 == 0 {
            let want = reference(&shape, lat, lon);
            assert_eq!(exact.inside, want.inside);
        }
        for r in [0.0, 20.0, 150.0, 3_000.0] {
            let within = (exact.inside || exact.boundary_m <= r).then_some(exact);
            assert_eq!(z.relate_within(lat, lon, r), within);
            let capped = within.map(|e| Relation {
                inside: e.inside,
                boundary_m: if e.boundary_m <= r {
                    e.boundary_m
                } else {
                    f64::INFINITY
                },
            });
            assert_eq!(z.relate_capped(lat, lon, r), capped);
            let mut got = vec![];
            idx.near_capped(lat, lon, r, |_, rel| got.push(rel));
            assert_eq!(got, capped.into_iter().collect::<Vec<_>>());
        }
    }
}
