//! Simple polygons: rings that neither cross nor touch themselves, nor
//! cross one another. `Shape::from_geojson` checks structure and ranges;
//! this is the (costlier) topology check that zone intake — the API and
//! provisioning files alike — runs before a shape is stored.

use geo::coordinate_position::{CoordPos, CoordinatePosition};
use geo::line_intersection::{line_intersection, LineIntersection};
use geo::{Coord, Line, LineString};

use super::{Polygon, Shape};

/// One polygon edge, for the crossing check.
struct Seg {
    a: [f64; 2],
    b: [f64; 2],
    poly: usize,
    ring: usize,
    /// Index within its ring, and the ring's edge count (adjacency).
    k: usize,
    n: usize,
}

impl Seg {
    fn x0(&self) -> f64 {
        self.a[0].min(self.b[0])
    }
    fn x1(&self) -> f64 {
        self.a[0].max(self.b[0])
    }
    fn y0(&self) -> f64 {
        self.a[1].min(self.b[1])
    }
    fn y1(&self) -> f64 {
        self.a[1].max(self.b[1])
    }
    fn line(&self) -> Line<f64> {
        Line::new(
            Coord {
                x: self.a[0],
                y: self.a[1],
            },
            Coord {
                x: self.b[0],
                y: self.b[1],
            },
        )
    }
}

/// Upper bound on edge-pair comparisons, so a hostile outline (many long
/// overlapping edges) cannot tie up a worker: ordinary outlines of 100 000
/// vertices need a few million.
const CROSSING_BUDGET: u64 = 50_000_000;

fn ring_name(multi: bool, poly: usize, ring: usize) -> String {
    let r = if ring == 0 {
        "ring 0 (outer ring)".to_owned()
    } else {
        format!("ring {ring} (hole)")
    };
    if multi {
        format!("polygon {poly} {r}")
    } else {
        r
    }
}

/// Why two edges may not meet as they do, if they may not.
fn edge_conflict(multi: bool, s: &Seg, t: &Seg) -> Option<String> {
    let hit = line_intersection(s.line(), t.line())?;
    let same_ring = s.poly == t.poly && s.ring == t.ring;
    let adjacent = same_ring && {
        let d = s.k.abs_diff(t.k);
        d == 1 || d + 1 == s.n
    };
    let at = |c: Coord<f64>| format!("[{:.7}, {:.7}]", c.x, c.y);
    let (rs, rt) = (
        ring_name(multi, s.poly, s.ring),
        ring_name(multi, t.poly, t.ring),
    );
    match hit {
        // Neighbours meet at their shared vertex; rings may touch at a point.
        LineIntersection::SinglePoint { .. } if adjacent => None,
        LineIntersection::SinglePoint {
            is_proper: false, ..
        } if !same_ring => None,
        LineIntersection::SinglePoint { intersection, .. } if same_ring => Some(format!(
            "self-intersection: {rs} crosses or touches itself at {}",
            at(intersection)
        )),
        LineIntersection::SinglePoint { intersection, .. } => Some(format!(
            "self-intersection: {rs} crosses {rt} at {}",
            at(intersection)
        )),
        LineIntersection::Collinear { intersection } => {
            if intersection.start == intersection.end && (adjacent || !same_ring) {
                None
            } else if same_ring {
                Some(format!(
                    "self-intersection: {rs} runs back over itself near {}",
                    at(intersection.start)
                ))
            } else {
                Some(format!(
                    "self-intersection: {rs} and {rt} share an edge near {}",
                    at(intersection.start)
                ))
            }
        }
    }
}

const TOO_INTRICATE: &str = "outline too intricate to check for self-intersection; \
                            simplify it or split it into several zones";

/// Where `pts` lie relative to `ring`, from the first of its vertices (or
/// edge midpoints) not on the ring itself; `None` if all are on it. Only
/// meaningful when the two rings do not cross, so one point decides.
fn side(
    ring: &geo::Polygon<f64>,
    pts: &[[f64; 2]],
    budget: &mut u64,
    cost: u64,
) -> Option<CoordPos> {
    let mids = pts
        .windows(2)
        .map(|w| [(w[0][0] + w[1][0]) / 2.0, (w[0][1] + w[1][1]) / 2.0]);
    for p in pts.iter().copied().chain(mids) {
        *budget = budget.saturating_sub(cost);
        if *budget == 0 {
            return None;
        }
        match ring.coordinate_position(&Coord { x: p[0], y: p[1] }) {
            CoordPos::OnBoundary => continue,
            pos => return Some(pos),
        }
    }
    None
}

/// Refuses holes outside their shell or inside another hole. Runs after the
/// crossing sweep: rings that neither cross nor overlap are either nested
/// or apart, so one point of a hole tells which. Without this a stray hole
/// would, by the even-odd rule the evaluator uses, add its own area to the
/// zone instead of cutting it out.
fn check_holes(multi: bool, polys: &[&Polygon], budget: &mut u64) -> Result<(), String> {
    let as_geo = |r: &[[f64; 2]]| {
        geo::Polygon::new(
            LineString::from(r.iter().map(|c| (c[0], c[1])).collect::<Vec<_>>()),
            vec![],
        )
    };
    for (pi, p) in polys.iter().enumerate() {
        let holes = p.holes();
        if holes.is_empty() {
            continue;
        }
        let shell = as_geo(p.exterior());
        let hole_rings: Vec<_> = holes.iter().map(|h| as_geo(h)).collect();
        for (hi, h) in holes.iter().enumerate() {
            let pos = side(&shell, h, budget, p.exterior().len() as u64);
            if *budget == 0 {
                return Err(TOO_INTRICATE.into());
            }
            if pos == Some(CoordPos::Outside) {
                return Err(format!(
                    "{} lies outside {}; a hole must be inside its outer ring",
                    ring_name(multi, pi, hi + 1),
                    ring_name(multi, pi, 0)
                ));
            }
            for (oi, o) in hole_rings.iter().enumerate() {
                if oi == hi {
                    continue;
                }
                let pos = side(o, h, budget, holes[oi].len() as u64);
                if *budget == 0 {
                    return Err(TOO_INTRICATE.into());
                }
                if pos == Some(CoordPos::Inside) {
                    return Err(format!(
                        "{} lies inside {}; holes may not be nested",
                        ring_name(multi, pi, hi + 1),
                        ring_name(multi, pi, oi + 1)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Refuses polygons whose rings cross or touch themselves, or cross one
/// another (a sweep over edges sorted by longitude), and holes that are not
/// inside their outer ring or that sit inside another hole; the message
/// names the ring and the place. Circles and corridors pass.
pub fn check_simple(shape: &Shape) -> Result<(), String> {
    let (polys, multi): (Vec<&Polygon>, bool) = match shape {
        Shape::Polygon(p) => (vec![p], false),
        Shape::MultiPolygon(ps) => (ps.iter().collect(), true),
        Shape::Circle(_) | Shape::Corridor(_) => return Ok(()),
    };
    let mut segs = Vec::new();
    for (pi, p) in polys.iter().enumerate() {
        let rings = std::iter::once(p.exterior()).chain(p.holes().iter().map(Vec::as_slice));
        for (ri, ring) in rings.enumerate() {
            let mut pts: Vec<[f64; 2]> = Vec::with_capacity(ring.len());
            for q in ring {
                if pts.last() != Some(q) {
                    pts.push(*q);
                }
            }
            let n = pts.len().saturating_sub(1);
            if n < 3 {
                return Err(format!(
                    "{} has fewer than 3 distinct positions",
                    ring_name(multi, pi, ri)
                ));
            }
            segs.extend(pts.windows(2).enumerate().map(|(k, w)| Seg {
                a: w[0],
                b: w[1],
                poly: pi,
                ring: ri,
                k,
                n,
            }));
        }
    }
    segs.sort_by(|s, t| s.x0().total_cmp(&t.x0()));
    let mut active: Vec<usize> = Vec::new();
    let mut budget = CROSSING_BUDGET;
    for (i, s) in segs.iter().enumerate() {
        let x = s.x0();
        active.retain(|&j| segs[j].x1() >= x);
        budget = budget.saturating_sub(active.len() as u64 + 1);
        if budget == 0 {
            return Err(TOO_INTRICATE.into());
        }
        for &j in &active {
            let t = &segs[j];
            if t.y0() > s.y1() || t.y1() < s.y0() {
                continue;
            }
            if let Some(m) = edge_conflict(multi, t, s) {
                return Err(m);
            }
        }
        active.push(i);
    }
    check_holes(multi, &polys, &mut budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poly(rings: Vec<Vec<[f64; 2]>>) -> Shape {
        Shape::polygon(rings).expect("valid shape")
    }

    #[test]
    fn simple_polygons_pass() {
        let sq = vec![
            [0.0, 51.0],
            [0.01, 51.0],
            [0.01, 51.01],
            [0.0, 51.01],
            [0.0, 51.0],
        ];
        assert_eq!(check_simple(&poly(vec![sq.clone()])), Ok(()));
        // A hole touching nothing, and a repeated vertex.
        let hole = vec![
            [0.002, 51.002],
            [0.004, 51.002],
            [0.004, 51.004],
            [0.002, 51.002],
        ];
        assert_eq!(check_simple(&poly(vec![sq, hole])), Ok(()));
        let dup = vec![
            [0.0, 51.0],
            [0.01, 51.0],
            [0.01, 51.0],
            [0.0, 51.01],
            [0.0, 51.0],
        ];
        assert_eq!(check_simple(&poly(vec![dup])), Ok(()));
    }

    #[test]
    fn crossings_are_named() {
        let bowtie = vec![
            [0.0, 51.0],
            [0.01, 51.01],
            [0.01, 51.0],
            [0.0, 51.01],
            [0.0, 51.0],
        ];
        let e = check_simple(&poly(vec![bowtie])).unwrap_err();
        assert!(
            e.contains("self-intersection") && e.contains("ring 0"),
            "{e}"
        );
        // A spike: the ring runs back along an edge.
        let spike = vec![
            [0.0, 51.0],
            [0.01, 51.0],
            [0.02, 51.0],
            [0.01, 51.0],
            [0.01, 51.01],
            [0.0, 51.0],
        ];
        assert!(check_simple(&poly(vec![spike])).is_err());
        // A hole crossing the outer ring.
        let sq = vec![
            [0.0, 51.0],
            [0.01, 51.0],
            [0.01, 51.01],
            [0.0, 51.01],
            [0.0, 51.0],
        ];
        let out = vec![
            [0.005, 51.005],
            [0.02, 51.005],
            [0.02, 51.006],
            [0.005, 51.005],
        ];
        let e = check_simple(&poly(vec![sq, out])).unwrap_err();
        assert!(e.contains("crosses ring"), "{e}");
    }

    #[test]
    fn large_outlines_are_checked_quickly() {
        // A 50 000-vertex circle-like ring about 10 km across.
        let n = 50_000;
        let mut ring: Vec<[f64; 2]> = (0..n)
            .map(|i| {
                let a = i as f64 / n as f64 * std::f64::consts::TAU;
                [-0.1 + 0.07 * a.cos(), 51.5 + 0.045 * a.sin()]
            })
            .collect();
        ring.push(ring[0]);
        let t = std::time::Instant::now();
        assert_eq!(check_simple(&poly(vec![ring.clone()])), Ok(()));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
        // Swap two far-apart vertices: the ring now crosses itself.
        ring.swap(10, n / 2);
        assert!(check_simple(&poly(vec![ring])).is_err());
    }
}
