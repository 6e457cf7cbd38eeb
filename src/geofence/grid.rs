//! A small occupancy grid per polygon zone (16 × 16 cells, 2 bits each,
//! one 64-byte block kept inline in the zone header): each cell is known to
//! be wholly outside, wholly inside, or touched by an edge. Most candidates
//! of an index query are settled from it without touching the zone's
//! vertices, which for a large shared list are the cache misses that
//! dominate the cost. The same cells bucket a single polygon's edges
//! ([`Grid::buckets`]) for the crossing test and bounded distance search.

use std::sync::Arc;

use std::ops::Range;

use super::edges::{Crossing, EdgeSet, U16s};
use super::Rect;

/// 2-bit cells per `u64` word.
const PER_WORD: usize = 32;
const OUT: u8 = 0;
const IN: u8 = 1;
const EDGE: u8 = 2;

/// Classes seen by [`Grid::classes`]: bit `1 << class`.
pub(crate) const SEEN_OUT: u8 = 1 << OUT;
/// See [`SEEN_OUT`].
pub(crate) const SEEN_IN: u8 = 1 << IN;

/// `G` × `G` cells in `W = G * G / 32` words.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid<const G: usize, const W: usize> {
    r: Rect,
    sx: f64,
    sy: f64,
    cells: [u64; W],
}

/// The grid of ordinary polygons, kept inline (64 bytes of cells).
pub(crate) type Small = Grid<16, 8>;
/// The grid of polygons with many vertices (1 KB of cells, boxed).
pub(crate) type Fine = Grid<64, 128>;

impl<const G: usize, const W: usize> Grid<G, W> {
    /// A placeholder (never queried).
    pub(crate) const EMPTY: Self = Grid {
        r: Rect::EMPTY,
        sx: 0.0,
        sy: 0.0,
        cells: [0; W],
    };

    /// `inside(lon, lat)` is the zone's exact point test.
    pub(crate) fn build(
        r: Rect,
        parts: &[EdgeSet],
        inside: impl Fn(f64, f64) -> Crossing,
    ) -> Option<Self> {
        debug_assert_eq!(G * G, W * PER_WORD);
        let (w, h) = (r.x1 - r.x0, r.y1 - r.y0);
        if !(w > 0.0 && h > 0.0 && w.is_finite() && h.is_finite()) {
            return None;
        }
        let mut g = Grid {
            r,
            sx: G as f64 / w,
            sy: G as f64 / h,
            cells: [0; W],
        };
        let mut touched = vec![false; G * G];
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
                g.set(iy * G + ix, class);
            }
        }
        Some(g)
    }

    fn set(&mut self, i: usize, class: u8) {
        self.cells[i / PER_WORD] |= u64::from(class) << (2 * (i % PER_WORD));
    }

    fn get(&self, i: usize) -> u8 {
        ((self.cells[i / PER_WORD] >> (2 * (i % PER_WORD))) & 3) as u8
    }

    /// Edge buckets for [`Grid::row_range`] and [`Grid::cell_ranges`],
    /// for a single edge set whose box is the grid's. Two tables of G × G
    /// lists: by (row, column of the edge's east end) the edges whose
    /// latitude range meets the row, and by cell the edges whose box meets
    /// the cell. Each table starts with its `G * G + 1` list offsets.
    /// `None` when the indices do not fit in `u16`.
    pub(crate) fn buckets(&self, e: &EdgeSet) -> Option<Arc<[u16]>> {
        let mut rows: Vec<Vec<u16>> = vec![Vec::new(); G * G];
        let mut cells: Vec<Vec<u16>> = vec![Vec::new(); G * G];
        let mut ok = true;
        e.for_each_edge_index(|i, a, b| {
            let Ok(i) = u16::try_from(i) else {
                ok = false;
                return;
            };
            let (ix0, ix1) = (self.cx(a[0].min(b[0])), self.cx(a[0].max(b[0])));
            let (iy0, iy1) = (self.cy(a[1].min(b[1])), self.cy(a[1].max(b[1])));
            for iy in iy0..=iy1 {
                rows[iy * G + ix1].push(i);
                for ix in ix0..=ix1 {
                    cells[iy * G + ix].push(i);
                }
            }
        });
        let head = 2 * (G * G + 1);
        let total = head
            + rows.iter().map(Vec::len).sum::<usize>()
            + cells.iter().map(Vec::len).sum::<usize>();
        if !ok || total > usize::from(u16::MAX) {
            return None;
        }
        let mut out = vec![0u16; head];
        for (k, list) in rows.iter().chain(cells.iter()).enumerate() {
            // Rows' offsets at 0..=G*G, cells' at G*G+1..=2*G*G+1; each
            // list's start at its slot, its end at the next one.
            let slot = if k < G * G { k } else { k + 1 };
            out[slot] = out.len() as u16;
            out.extend_from_slice(list);
            out[slot + 1] = out.len() as u16;
        }
        Some(out.into())
    }

    /// Where in `b` (from [`Grid::buckets`]) the edges are listed that may
    /// stop a ray from (`lon`, `lat`) towards +lon: every edge whose
    /// latitude range contains `lat` and whose east end is at `lon` or
    /// east of it is listed.
    #[inline]
    pub(crate) fn row_range<B: U16s + ?Sized>(&self, b: &B, lon: f64, lat: f64) -> Range<usize> {
        let row = self.cy(lat) * G;
        usize::from(b.at(row + self.cx(lon)))..usize::from(b.at(row + G))
    }

    /// Calls `f` with where in `b` the edges of the cells meeting the box
    /// `lon0..=lon1`, `lat0..=lat1` are listed: every edge with a point in
    /// the box is listed (some more than once). Returns false without
    /// calling `f` when the box covers more than `max_cells` cells.
    #[inline]
    pub(crate) fn cell_ranges<B: U16s + ?Sized>(
        &self,
        b: &B,
        [lon0, lat0, lon1, lat1]: [f64; 4],
        max_cells: usize,
        mut f: impl FnMut(Range<usize>),
    ) -> bool {
        let (ix0, ix1) = (self.cx(lon0), self.cx(lon1));
        let (iy0, iy1) = (self.cy(lat0), self.cy(lat1));
        if (ix1 - ix0 + 1) * (iy1 - iy0 + 1) > max_cells {
            return false;
        }
        for iy in iy0..=iy1 {
            let row = G * G + 1 + iy * G;
            // Cells of a row are consecutive, so their lists are one run.
            f(usize::from(b.at(row + ix0))..usize::from(b.at(row + ix1 + 1)));
        }
        true
    }

    /// The grid's box (the zone's core box).
    pub(crate) fn rect(&self) -> &Rect {
        &self.r
    }

    fn cx(&self, lon: f64) -> usize {
        cell((lon - self.r.x0) * self.sx, G)
    }

    fn cy(&self, lat: f64) -> usize {
        cell((lat - self.r.y0) * self.sy, G)
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
                seen |= 1 << self.get(iy * G + ix);
            }
            if seen.count_ones() > 1 {
                // Mixed: nothing more can be settled.
                return seen;
            }
        }
        seen
    }
}

fn cell(f: f64, g: usize) -> usize {
    let f = f.floor();
    if f >= (g - 1) as f64 {
        g - 1
    } else if f >= 0.0 {
        f as usize
    } else {
        // Also NaN.
        0
    }
}
