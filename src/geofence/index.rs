//! Many zones behind one R-tree of envelopes, with compact per-zone
//! headers and records laid out in the tree's leaf order.

use std::ops::ControlFlow;
use std::sync::Arc;

use rstar::{RStarInsertionStrategy, RTree, RTreeObject, RTreeParams, AABB};

use super::edges::{Crossing, PackedU16s, PackedVerts};
use super::grid::{Small, SEEN_IN};
use super::{grid_pre, listed_crossing, listed_distance, PreparedZone, Probe, Relation, M_PER_DEG};

/// Node size of the envelope tree: a little larger than rstar's default
/// (6) for a shallower tree. On the shared 2-core bench machine the
/// difference from 6, and from 32, was within run-to-run noise.
struct Params;
impl RTreeParams for Params {
    const MIN_SIZE: usize = 4;
    const MAX_SIZE: usize = 12;
    const REINSERTION_COUNT: usize = 3;
    type DefaultInsertionStrategy = RStarInsertionStrategy;
}

/// A tree leaf: the zone's envelope and its position in the index's
/// arrays. Kept small so that scanning a node touches few cache lines.
struct Entry {
    env: AABB<[f64; 2]>,
    idx: u32,
}

impl RTreeObject for Entry {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        self.env
    }
}

/// What the cheap checks of a polygon candidate need, in two cache lines:
/// the core box, the 16 × 16 inside/outside/edge grid and `core_cos`. Most
/// capped queries are settled here without touching the zone itself.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Hot {
    grid: Small,
    core_cos: f64,
    /// False for circles, corridors and polygons without a grid: the grid
    /// fields are then unused.
    has_grid: bool,
    /// Single polygons with edge buckets: where their record starts in
    /// `ZoneIndex::arena`, in 64-byte units; else [`NO_RECORD`].
    record: u32,
}

const NO_RECORD: u32 = u32::MAX;

/// Many zones (e.g. a shared list of 100k school zones) behind an rstar
/// R-tree over their envelopes. The leaves hold only envelopes and
/// positions; zone headers sit in flat arrays in the tree's leaf order, so
/// zones near each other in space are near each other in memory.
pub struct ZoneIndex<K> {
    tree: RTree<Entry, Params>,
    /// Which coarse cells any envelope meets: most queries far from every
    /// zone stop here, before the tree.
    occupied: Occupancy,
    hot: Vec<Hot>,
    /// Per single polygon, one contiguous record in leaf order: the number
    /// `w` of bucket words, `w` words of edge buckets (`u16`s, four to a
    /// word), then the vertices (two words each). A candidate that the grid
    /// does not settle costs this record only, not the zone's own blocks.
    arena: Vec<u64>,
    /// The zones themselves, for what the compact copies cannot answer.
    zones: Vec<Arc<PreparedZone>>,
    keys: Vec<K>,
    /// Smallest `core_cos` of any zone: bounds the frame-change factor.
    min_cos: f64,
}

impl<K: Copy> ZoneIndex<K> {
    /// Bulk-loads the tree.
    pub fn build(zones: Vec<(K, Arc<PreparedZone>)>) -> Self {
        let min_cos = zones.iter().map(|(_, z)| z.core_cos).fold(1.0f64, f64::min);
        let entries = zones
            .iter()
            .enumerate()
            .map(|(i, (_, zone))| {
                let e = zone.envelope();
                Entry {
                    env: AABB::from_corners([e[0], e[1]], [e[2], e[3]]),
                    idx: i as u32,
                }
            })
            .collect();
        let mut tree: RTree<Entry, Params> = RTree::bulk_load_with_params(entries);
        // Renumber in leaf order.
        let mut order = Vec::with_capacity(zones.len());
        for (new, e) in tree.iter_mut().enumerate() {
            order.push(e.idx as usize);
            e.idx = new as u32;
        }
        let mut hot = Vec::with_capacity(order.len());
        let mut prepared = Vec::with_capacity(order.len());
        let mut keys = Vec::with_capacity(order.len());
        let mut arena: Vec<u64> = Vec::new();
        for i in order {
            let (key, zone) = &zones[i];
            let mut record = NO_RECORD;
            if let (Some((_, b, v)), Ok(r)) = (zone.listed_parts(), u32::try_from(arena.len() / 8))
            {
                record = r;
                let w = b.len().div_ceil(4);
                arena.push(w as u64);
                arena.extend(b.chunks(4).map(|c| {
                    c.iter()
                        .enumerate()
                        .fold(0u64, |acc, (j, &x)| acc | u64::from(x) << (16 * j))
                }));
                arena.extend(v.iter().flat_map(|p| [p[0].to_bits(), p[1].to_bits()]));
                // Next record on a 64-byte boundary.
                arena.resize(arena.len().div_ceil(8) * 8, 0);
            }
            hot.push(match zone.grid_header() {
                Some((grid, core_cos)) => Hot {
                    grid,
                    core_cos,
                    has_grid: true,
                    record,
                },
                None => Hot {
                    grid: Small::EMPTY,
                    core_cos: zone.core_cos,
                    has_grid: false,
                    record,
                },
            });
            prepared.push(Arc::clone(zone));
            keys.push(*key);
        }
        let envs: Vec<AABB<[f64; 2]>> = tree.iter().map(|e| e.env).collect();
        let occupied = Occupancy::build(&envs);
        ZoneIndex {
            tree,
            occupied,
            hot,
            arena,
            zones: prepared,
            keys,
            min_cos,
        }
    }

    /// Approximate bytes used by the index itself, beyond the prepared
    /// zones it shares: tree nodes, compact headers, arena records, keys
    /// and the occupancy bitmap.
    pub fn memory_bytes(&self) -> usize {
        self.len()
            * (std::mem::size_of::<rstar::RTreeNode<Entry>>() * 9 / 8
                + std::mem::size_of::<Hot>()
                + std::mem::size_of::<Arc<PreparedZone>>()
                + std::mem::size_of::<K>())
            + self.occupied.bits.len() * 8
            + self.arena.len() * 8
    }

    /// Number of zones.
    pub fn len(&self) -> usize {
        self.tree.size()
    }

    /// True when there are no zones.
    pub fn is_empty(&self) -> bool {
        self.tree.size() == 0
    }

    /// Calls `f` for every zone that contains the point or whose boundary
    /// is within `radius_m` of it, with the exact [`Relation`] — the same
    /// zones and values as calling [`PreparedZone::relate_within`] on every
    /// zone. Order is unspecified.
    pub fn near(&self, lat: f64, lon: f64, radius_m: f64, f: impl FnMut(K, Relation)) {
        self.near_probe(&Probe::new(lat, lon), radius_m, f)
    }

    /// [`ZoneIndex::near`] for a prepared fix.
    pub fn near_probe(&self, p: &Probe, radius_m: f64, f: impl FnMut(K, Relation)) {
        self.visit(p, radius_m, false, f)
    }

    /// Like [`ZoneIndex::near`] with [`PreparedZone::relate_capped`]'s
    /// distances: `boundary_m` is exact up to `radius_m` and `f64::INFINITY`
    /// beyond, which is all a classification against the accuracy disc
    /// needs, and much cheaper for points deep inside zones.
    pub fn near_capped(&self, lat: f64, lon: f64, radius_m: f64, f: impl FnMut(K, Relation)) {
        self.visit(&Probe::new(lat, lon), radius_m, true, f)
    }

    /// [`ZoneIndex::near_capped`] for a prepared fix.
    pub fn near_capped_probe(&self, p: &Probe, radius_m: f64, f: impl FnMut(K, Relation)) {
        self.visit(p, radius_m, true, f)
    }

    fn visit(&self, p: &Probe, radius_m: f64, capped: bool, mut f: impl FnMut(K, Relation)) {
        if !p.finite {
            return;
        }
        let r = radius_m;
        if !(0.0..f64::INFINITY).contains(&r) {
            // No envelope shortcut is safe for these; fall back to a scan.
            for (zone, key) in self.zones.iter().zip(&self.keys) {
                if let Some(rel) = zone.within(p, r, capped) {
                    f(*key, rel);
                }
            }
            return;
        }
        // Envelopes already include radii and half-widths; the query box
        // adds `r` with margins for the frame change (rho) and for the
        // poleward side of the box, where a degree of longitude is shorter.
        let rho = p.rho(self.min_cos);
        let reach = ((r * 1.02 + 1.0) / rho) * 1.05 + 1.0;
        let dlat = reach / M_PER_DEG;
        // cos(|lat| + dlat) >= cos(lat) - dlat (in radians): a lower bound
        // on the scale over the box without another cosine.
        let pole_cos = (p.cos_lat - dlat.to_radians())
            .min(self.min_cos)
            .max(super::MIN_COS);
        let dlon = reach / (M_PER_DEG * pole_cos);
        let q = AABB::from_corners([p.lon - dlon, p.lat - dlat], [p.lon + dlon, p.lat + dlat]);
        if !self.occupied.any([q.lower(), q.upper()]) {
            return;
        }
        // Internal iteration: measurably cheaper than rstar's iterator.
        let _ = self
            .tree
            .locate_in_envelope_intersecting_int(&q, |e| -> ControlFlow<()> {
                let i = e.idx as usize;
                if let Some(rel) = self.candidate(i, p, r, capped) {
                    f(self.keys[i], rel);
                }
                ControlFlow::Continue(())
            });
    }

    /// [`PreparedZone::polygon_after_grid`] from the zone's arena record:
    /// `Some(the same answer)`, or `None` when the full search is needed.
    fn record_after_grid(
        &self,
        h: &Hot,
        seen: u8,
        p: &Probe,
        r: f64,
        capped: bool,
    ) -> Option<Option<Relation>> {
        if seen == SEEN_IN {
            // Only an exact (uncapped) query gets here: it needs the
            // unbounded distance.
            return None;
        }
        let base = h.record as usize * 8;
        let w = self.arena[base] as usize;
        let b = PackedU16s(&self.arena[base + 1..base + 1 + w]);
        let v = PackedVerts(&self.arena[base + 1 + w..]);
        let g = &h.grid;
        match listed_crossing(g, &b, &v, p) {
            Crossing::Boundary => Some(Some(Relation {
                inside: true,
                boundary_m: 0.0,
            })),
            Crossing::Inside if capped => {
                let d = listed_distance(g, &b, &v, h.core_cos, p, r)?;
                Some(Some(Relation {
                    inside: true,
                    boundary_m: d.unwrap_or(f64::INFINITY),
                }))
            }
            Crossing::Inside => None,
            Crossing::Outside => {
                let d = listed_distance(g, &b, &v, h.core_cos, p, r)?;
                Some(d.map(|d| Relation {
                    inside: false,
                    boundary_m: d,
                }))
            }
        }
    }

    #[inline]
    fn candidate(&self, i: usize, p: &Probe, r: f64, capped: bool) -> Option<Relation> {
        let h = &self.hot[i];
        if h.has_grid {
            match grid_pre(&h.grid, h.core_cos, p, r, capped) {
                Ok(answer) => answer,
                Err(seen) => {
                    if h.record != NO_RECORD {
                        if let Some(answer) = self.record_after_grid(h, seen, p, r, capped) {
                            return answer;
                        }
                    }
                    self.zones[i].polygon_after_grid(seen, p, r, capped)
                }
            }
        } else {
            self.zones[i].within(p, r, capped)
        }
    }
}

/// A coarse bitmap over the box of all envelopes: a bit per cell that some
/// envelope meets.
struct Occupancy {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
    /// Cells per degree.
    sx: f64,
    sy: f64,
    nx: usize,
    ny: usize,
    bits: Vec<u64>,
}

impl Occupancy {
    fn build(envs: &[AABB<[f64; 2]>]) -> Self {
        let n = envs.len();
        let (mut x0, mut y0) = (f64::INFINITY, f64::INFINITY);
        let (mut x1, mut y1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
        for e in envs {
            x0 = x0.min(e.lower()[0]);
            y0 = y0.min(e.lower()[1]);
            x1 = x1.max(e.upper()[0]);
            y1 = y1.max(e.upper()[1]);
        }
        let (w, h) = (x1 - x0, y1 - y0);
        let mut o = Occupancy {
            x0,
            y0,
            x1,
            y1,
            sx: 0.0,
            sy: 0.0,
            nx: 1,
            ny: 1,
            bits: vec![u64::MAX],
        };
        if n == 0 || !(w.is_finite() && h.is_finite()) {
            // Empty (nothing ever matches the box) or unusable: one full cell.
            return o;
        }
        // About 256 cells per zone (for a list spread over a region, cells
        // several times smaller than a zone, so that few fixes away from
        // the zones hit a marked cell), square in degrees, within 2^24
        // (2 MB).
        let target = (256 * n).clamp(1, 1 << 24) as f64;
        let cell = ((w.max(1e-9) * h.max(1e-9)) / target).sqrt();
        o.nx = ((w / cell).ceil() as usize).clamp(1, 1 << 13);
        o.ny = ((h / cell).ceil() as usize).clamp(1, 1 << 13);
        o.sx = if w > 0.0 { o.nx as f64 / w } else { 0.0 };
        o.sy = if h > 0.0 { o.ny as f64 / h } else { 0.0 };
        o.bits = vec![0; (o.nx * o.ny).div_ceil(64)];
        for e in envs {
            let (ix0, ix1) = (o.cx(e.lower()[0]), o.cx(e.upper()[0]));
            let (iy0, iy1) = (o.cy(e.lower()[1]), o.cy(e.upper()[1]));
            for iy in iy0..=iy1 {
                for ix in ix0..=ix1 {
                    let i = iy * o.nx + ix;
                    o.bits[i / 64] |= 1 << (i % 64);
                }
            }
        }
        o
    }

    /// Monotone cell of a longitude (clamped to the grid).
    fn cx(&self, x: f64) -> usize {
        cell((x - self.x0) * self.sx, self.nx)
    }

    fn cy(&self, y: f64) -> usize {
        cell((y - self.y0) * self.sy, self.ny)
    }

    /// False when no envelope can meet the box `[lower, upper]`: a point
    /// of both would be in a cell of the box's range with its bit set.
    #[inline]
    fn any(&self, [lo, hi]: [[f64; 2]; 2]) -> bool {
        if lo[0] > self.x1 || hi[0] < self.x0 || lo[1] > self.y1 || hi[1] < self.y0 {
            return false;
        }
        let (ix0, ix1) = (self.cx(lo[0]), self.cx(hi[0]));
        let (iy0, iy1) = (self.cy(lo[1]), self.cy(hi[1]));
        if (ix1 - ix0 + 1) * (iy1 - iy0 + 1) > 64 {
            return true;
        }
        for iy in iy0..=iy1 {
            for ix in ix0..=ix1 {
                let i = iy * self.nx + ix;
                if self.bits[i / 64] & (1 << (i % 64)) != 0 {
                    return true;
                }
            }
        }
        false
    }
}

fn cell(f: f64, n: usize) -> usize {
    let f = f.floor();
    if f >= (n - 1) as f64 {
        n - 1
    } else if f >= 0.0 {
        f as usize
    } else {
        // Also NaN.
        0
    }
}
