//! The simulated city: a local metric frame around a centre and a street
//! grid, so people move along streets at walking or driving speed instead of
//! teleporting between places.
//!
//! The frame is equirectangular around the centre: over the ±30 km a fleet
//! spans, its error against the server's haversine distances is under 0.1 %
//! (≈ 25 m at the county edge), far inside the margins the ground truth keeps.

use serde::{Deserialize, Serialize};

/// Mean Earth radius (IUGG), metres — the radius the server's haversine uses.
const EARTH_R: f64 = 6_371_008.8;

/// A point in the local frame, metres east (`x`) and north (`y`) of the centre.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct P {
    /// Metres east of the centre.
    pub x: f64,
    /// Metres north of the centre.
    pub y: f64,
}

impl P {
    /// A point from its coordinates.
    pub const fn new(x: f64, y: f64) -> P {
        P { x, y }
    }
    /// Euclidean distance, metres.
    pub fn dist(self, o: P) -> f64 {
        (self.x - o.x).hypot(self.y - o.y)
    }
    /// Chebyshev (L∞) distance: the half-side of the square centred on
    /// `self` that reaches `o`. Places are laid out in squares so that
    /// street routes (which stay inside the bounding box of their ends)
    /// provably keep their distance from zones.
    pub fn linf(self, o: P) -> f64 {
        (self.x - o.x).abs().max((self.y - o.y).abs())
    }
    /// `self + (dx, dy)`.
    pub fn offset(self, dx: f64, dy: f64) -> P {
        P::new(self.x + dx, self.y + dy)
    }
}

/// Local tangent frame at the city centre.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Frame {
    /// Centre latitude, degrees.
    pub lat0: f64,
    /// Centre longitude, degrees.
    pub lon0: f64,
}

impl Frame {
    /// WGS84 `(lat, lon)` degrees of a local point.
    pub fn to_latlon(&self, p: P) -> (f64, f64) {
        let lat = self.lat0 + (p.y / EARTH_R).to_degrees();
        let lon = self.lon0 + (p.x / (EARTH_R * self.lat0.to_radians().cos())).to_degrees();
        (lat, lon)
    }
}

/// Street spacing, metres (a city block).
pub const BLOCK_M: f64 = 200.0;

fn snap(v: f64) -> f64 {
    (v / BLOCK_M).round() * BLOCK_M
}

/// A street route from `a` to `b`: out to the nearest north–south street,
/// along it to the east–west street nearest `b`, along that to `b`'s
/// column, then in to `b`. Every vertex lies inside the bounding box of
/// `a` and `b` widened by half a block, which is what keeps routes between
/// routine places away from zones placed outside that box.
pub fn route(a: P, b: P) -> Vec<P> {
    let sx = snap(a.x);
    let sy = snap(b.y);
    let mut v = vec![a, P::new(sx, a.y), P::new(sx, sy), P::new(b.x, sy), b];
    v.dedup_by(|q, p| q.dist(*p) < 0.01);
    v
}

/// Length of a polyline, metres.
pub fn length(path: &[P]) -> f64 {
    path.windows(2).map(|w| w[0].dist(w[1])).sum()
}

/// Travel speed for a trip of `len` metres: walk short hops, drive the rest.
pub fn speed_for(len: f64) -> f64 {
    if len < 1_200.0 {
        1.4
    } else {
        11.0
    }
}

/// Position and heading (degrees from north) at `d` metres along `path`.
pub fn along(path: &[P], d: f64) -> (P, f64) {
    let mut left = d.max(0.0);
    for w in path.windows(2) {
        let seg = w[0].dist(w[1]);
        if left <= seg && seg > 0.0 {
            let f = left / seg;
            let p = P::new(
                w[0].x + (w[1].x - w[0].x) * f,
                w[0].y + (w[1].y - w[0].y) * f,
            );
            return (p, heading(w[0], w[1]));
        }
        left -= seg;
    }
    let n = path.len();
    let hdg = if n >= 2 {
        heading(path[n - 2], path[n - 1])
    } else {
        0.0
    };
    (path[n - 1], hdg)
}

fn heading(a: P, b: P) -> f64 {
    let h = (b.x - a.x).atan2(b.y - a.y).to_degrees();
    if h < 0.0 {
        h + 360.0
    } else {
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_streets_and_stay_in_the_box() {
        let a = P::new(130.0, -2_470.0);
        let b = P::new(2_950.0, 1_020.0);
        let r = route(a, b);
        assert_eq!(r.first(), Some(&a));
        assert_eq!(r.last(), Some(&b));
        // Every leg runs along one axis (a street), except the short
        // hops into and out of buildings, which are shorter than a block.
        for w in r.windows(2) {
            let axis = (w[0].x - w[1].x).abs() < 1e-9 || (w[0].y - w[1].y).abs() < 1e-9;
            assert!(axis || w[0].dist(w[1]) < BLOCK_M, "{w:?}");
        }
        for p in &r {
            assert!(p.x >= a.x.min(b.x) - BLOCK_M / 2.0 && p.x <= a.x.max(b.x) + BLOCK_M / 2.0);
            assert!(p.y >= a.y.min(b.y) - BLOCK_M / 2.0 && p.y <= a.y.max(b.y) + BLOCK_M / 2.0);
        }
        let (mid, _) = along(&r, length(&r) / 2.0);
        assert!(mid.dist(a) > 100.0 && mid.dist(b) > 100.0);
    }

    #[test]
    fn frame_distances_match_haversine() {
        let f = Frame {
            lat0: 40.7,
            lon0: -74.0,
        };
        let (la, lo) = f.to_latlon(P::new(20_000.0, 15_000.0));
        let (la0, lo0) = f.to_latlon(P::new(0.0, 0.0));
        let h = {
            let (p1, p2) = (la0.to_radians(), la.to_radians());
            let dp = p2 - p1;
            let dl = (lo - lo0).to_radians();
            let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
            2.0 * EARTH_R * a.sqrt().asin()
        };
        assert!((h - 25_000.0).abs() < 25.0, "{h}");
    }
}
