//! A tiny occupancy grid per polygon zone (8 × 8 cells, 2 bits each, kept
//! inline in the zone header): each cell is known to be wholly outside,
//! wholly inside, or touched by an edge. Most candidates of an index query
//! are settled from it without touching the zone's vertices, which for a
//! large shared list are the cache misses that dominate the cost.

use super::edges::{Crossing, EdgeSet};
use super::Rect;

const G: usize = 8;
const OUT: u8 = 0;
const IN: u8 = 1;
const EDGE: u8 = 2;

/// Classes seen by [`Grid::classes`]: bit `1 << class`.
pub(crate) const SEEN_OUT: u8 = 1 << OUT;
/// See [`SEEN_OUT`].
pub(crate) const SEEN_IN: u8 = 1 << IN;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    r: Rect,
    sx: f64,
    sy: f64,
    cells: u128,
}

impl Grid {
    /// `inside(lon, lat)` is the zone's exact point test.
    pub(crate) fn build(
        r: Rect,
        parts: &[EdgeSet],
        inside: impl Fn(f64, f64) -> Crossing,
    ) -> Option<Grid> {
        let (w, h) = (r.x1 - r.x0, r.y1 - r.y0);
        if !(w > 0.0 && h > 0.0 && w.is_finite() && h.is_finite()) {
            return None;
        }
        let mut g = Grid {
            r,
            sx: G as f64 / w,
            sy: G as f64 / h,
            cells: 0,
        };
        let mut touched = [false; G * G];
        // Any point of an edge lies in its box, so in the cells of the
        // box's corners and between (cell() is monotone).
        for e in parts {
            e.for_each_edge(|a, b| {
                let (ix0, ix1) = (g.cx(a[0].min(b[0])), g.cx(a[0].max(b[0])));
                let (iy0, iy1) = (g.cy(a[1].min(b[1])), g.cy(a[1].max(b[1])));
                for iy in iy0..=iy1 {
                    for ix in ix0..=ix1 {
                        touched[iy * G + ix] = true;
                    }
                }
            });
        }
        for iy in 0..G {
            for ix in 0..G {
                let class = if touched[iy * G + ix] {
                    EDGE
                } else {
                    // No edge point maps to this cell, and the set of points
                    // that do is a rectangle: all of it is on one side.
                    let lon = r.x0 + (ix as f64 + 0.5) / g.sx;
                    let lat = r.y0 + (iy as f64 + 0.5) / g.sy;
                    if g.cx(lon) != ix || g.cy(lat) != iy {
                        EDGE
                    } else {
                        match inside(lon, lat) {
                            Crossing::Inside => IN,
                            Crossing::Outside => OUT,
                            Crossing::Boundary => EDGE,
                        }
                    }
                };
                g.cells |= u128::from(class) << (2 * (iy * G + ix));
            }
        }
        Some(g)
    }

    fn cx(&self, lon: f64) -> usize {
        cell((lon - self.r.x0) * self.sx)
    }

    fn cy(&self, lat: f64) -> usize {
        cell((lat - self.r.y0) * self.sy)
    }

    /// Which classes the box `lon ± dlon`, `lat ± dlat` meets (a mask of
    /// `1 << class`); the area beyond the grid's box counts as outside.
    pub(crate) fn classes(&self, lon: f64, lat: f64, dlon: f64, dlat: f64) -> u8 {
        let (x0, x1, y0, y1) = (lon - dlon, lon + dlon, lat - dlat, lat + dlat);
        let mut seen = 0u8;
        if !(x0 >= self.r.x0 && x1 <= self.r.x1 && y0 >= self.r.y0 && y1 <= self.r.y1) {
            seen |= SEEN_OUT;
        }
        for iy in self.cy(y0)..=self.cy(y1) {
            for ix in self.cx(x0)..=self.cx(x1) {
                seen |= 1 << ((self.cells >> (2 * (iy * G + ix))) & 3) as u8;
            }
        }
        seen
    }
}

fn cell(f: f64) -> usize {
    let f = f.floor();
    if f >= (G - 1) as f64 {
        G - 1
    } else if f >= 0.0 {
        f as usize
    } else {
        // Also NaN.
        0
    }
}
