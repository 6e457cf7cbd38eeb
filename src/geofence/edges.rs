//! Edge sets: a flat vertex list plus a small bounding-box hierarchy over
//! runs of consecutive edges, shared by polygons (crossing test + distance)
//! and corridors (distance only).
//!
//! Consecutive boundary edges are spatially coherent, so grouping them in
//! ring order gives a good hierarchy without any sorting and keeps the build
//! linear. Both queries are then roughly logarithmic in the vertex count.

use std::sync::Arc;

use geo::kernels::{Kernel, Orientation, RobustKernel};
use geo::Coord;

use super::{Probe, Rect, M_PER_DEG};

/// Edges per leaf chunk. Small enough that a leaf is a couple of cache
/// lines of vertices, large enough that the hierarchy stays shallow.
const CHUNK: usize = 16;
/// Children per inner node.
const FANOUT: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Node {
    r: Rect,
    start: u32,
    end: u32,
}

const EMPTY_NODE: Node = Node {
    r: Rect::EMPTY,
    start: 0,
    end: 0,
};

/// Result of the point-in-rings test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Crossing {
    /// Even number of ring crossings.
    Outside,
    /// Odd number of ring crossings.
    Inside,
    /// The point lies exactly on an edge or vertex.
    Boundary,
}

/// Best candidate of a nearest-edge search.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Nearest {
    /// Squared distance in the probe's local frame (m²).
    pub d2: f64,
    /// Latitude of the foot point, used to pick the refinement frame.
    pub foot_lat: f64,
    /// Whether anything within the bound was found yet.
    pub found: bool,
}

impl Nearest {
    pub(crate) fn with_bound(bound_m: f64) -> Self {
        Nearest {
            d2: bound_m * bound_m,
            foot_lat: 0.0,
            found: false,
        }
    }
}

/// Vertices (lon, lat degrees) and the hierarchy over their edges.
#[derive(Debug, Clone)]
pub(crate) struct EdgeSet {
    /// One allocation, so a query touches one contiguous block: first the
    /// nodes of all levels, top level first (3 entries per node: min
    /// corner, max corner, packed `start..end`), then the vertices.
    /// Leaf nodes' `start..end` are edge indices (edge `i` joins vertex `i`
    /// and `i + 1`); inner nodes' are indices of their children.
    data: Arc<[[f64; 2]]>,
    /// Offset of vertex 0 in `data`.
    vbase: u32,
    /// Number of nodes in the top level (they are `nodes[..top_len]`).
    top_len: u32,
    /// Levels above the leaves (0 when the top level is the leaves).
    height: u32,
    /// Index of the first leaf node (leaves are the last level).
    leaf_start: u32,
    pub bbox: Rect,
}

impl EdgeSet {
    /// Builds from chains of vertices; edges join consecutive vertices of a
    /// chain (a closed ring repeats its first vertex at the end).
    pub(crate) fn new<'a>(chains: impl IntoIterator<Item = &'a [[f64; 2]]>) -> Self {
        let mut verts = Vec::new();
        let mut leaves = Vec::new();
        for chain in chains {
            let base = verts.len();
            verts.extend_from_slice(chain);
            if chain.len() < 2 {
                continue;
            }
            let n_edges = chain.len() - 1;
            let mut e = 0;
            while e < n_edges {
                let end = (e + CHUNK).min(n_edges);
                let r = Rect::of_points(&chain[e..=end]);
                leaves.push(Node {
                    r,
                    start: (base + e) as u32,
                    end: (base + end) as u32,
                });
                e = end;
            }
        }
        let bbox = Rect::union_all(leaves.iter().map(|n| n.r));
        // Build bottom-up with level-relative child indices, then lay the
        // levels out top-first and make the indices absolute.
        let mut levels = vec![leaves];
        while levels.last().map_or(0, Vec::len) > FANOUT {
            let below = levels.last().map(Vec::as_slice).unwrap_or(&[]);
            let up = below
                .chunks(FANOUT)
                .enumerate()
                .map(|(i, group)| Node {
                    r: Rect::union_all(group.iter().map(|n| n.r)),
                    start: (i * FANOUT) as u32,
                    end: (i * FANOUT + group.len()) as u32,
                })
                .collect();
            levels.push(up);
        }
        let height = levels.len() - 1;
        let top_len = levels.last().map_or(0, Vec::len);
        let mut offsets = vec![0usize; levels.len()];
        let mut off = 0;
        for (k, l) in levels.iter().enumerate().rev() {
            offsets[k] = off;
            off += l.len();
        }
        let mut data = Vec::with_capacity(off * 3 + verts.len());
        for k in (0..levels.len()).rev() {
            let child_off = if k > 0 { offsets[k - 1] as u32 } else { 0 };
            for n in &levels[k] {
                let packed = u64::from(n.start + child_off) | (u64::from(n.end + child_off) << 32);
                data.push([n.r.x0, n.r.y0]);
                data.push([n.r.x1, n.r.y1]);
                data.push([f64::from_bits(packed), 0.0]);
            }
        }
        let vbase = data.len() as u32;
        let leaf_start = (off - levels[0].len()) as u32;
        data.extend_from_slice(&verts);
        EdgeSet {
            data: data.into(),
            vbase,
            leaf_start,
            top_len: top_len as u32,
            height: height as u32,
            bbox,
        }
    }

    /// Approximate heap bytes, for memory estimates.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.data.len() * 16
    }

    fn node(&self, i: u32) -> Node {
        let i = i as usize * 3;
        let (a, b, c) = (self.data[i], self.data[i + 1], self.data[i + 2]);
        let packed = c[0].to_bits();
        Node {
            r: Rect {
                x0: a[0],
                y0: a[1],
                x1: b[0],
                y1: b[1],
            },
            start: packed as u32,
            end: (packed >> 32) as u32,
        }
    }

    /// Calls `f` with the endpoints of every edge.
    pub(crate) fn for_each_edge(&self, mut f: impl FnMut([f64; 2], [f64; 2])) {
        for leaf in self.leaf_start..self.vbase / 3 {
            let n = self.node(leaf);
            for i in n.start..n.end {
                f(self.vert(i), self.vert(i + 1));
            }
        }
    }

    fn vert(&self, i: u32) -> [f64; 2] {
        self.data[(self.vbase + i) as usize]
    }

    /// Even-odd crossing test of a ray towards +lon, in raw degrees so the
    /// result is exactly GeoJSON's planar semantics. Orientation uses
    /// geo's robust predicate, so on-edge points are found exactly.
    pub(crate) fn crossing(&self, p: &Probe) -> Crossing {
        let mut odd = false;
        for i in 0..self.top_len {
            if self.cross_node(self.height, &self.node(i), p, &mut odd) {
                return Crossing::Boundary;
            }
        }
        if odd {
            Crossing::Inside
        } else {
            Crossing::Outside
        }
    }

    /// Returns true when the point is on the boundary.
    fn cross_node(&self, level: u32, n: &Node, p: &Probe, odd: &mut bool) -> bool {
        // An edge can only be crossed by the ray, or contain the point, if
        // its box spans the point's latitude and reaches east of it.
        if !(n.r.y0 <= p.lat && p.lat <= n.r.y1 && p.lon <= n.r.x1) {
            return false;
        }
        if level == 0 {
            (n.start..n.end).any(|i| cross_edge(self.vert(i), self.vert(i + 1), p, odd))
        } else {
            (n.start..n.end).any(|c| self.cross_node(level - 1, &self.node(c), p, odd))
        }
    }

    /// The vertices, `[lon, lat]` (edge `i` joins vertices `i` and `i + 1`).
    pub(crate) fn vertices(&self) -> &[[f64; 2]] {
        &self.data[self.vbase as usize..]
    }

    /// Calls `f` with the index and endpoints of every edge (edge `i`
    /// joins vertices `i` and `i + 1`).
    pub(crate) fn for_each_edge_index(&self, mut f: impl FnMut(u32, [f64; 2], [f64; 2])) {
        for leaf in self.leaf_start..self.vbase / 3 {
            let n = self.node(leaf);
            for i in n.start..n.end {
                f(i, self.vert(i), self.vert(i + 1));
            }
        }
    }

    /// Nearest edge in the local frame `x = Δlon·kx, y = Δlat·M_PER_DEG`
    /// centred on the probe. Only candidates with distance <= the current
    /// bound in `best` are considered; ties keep the first edge in a fixed
    /// traversal order so bounded and unbounded searches agree exactly.
    pub(crate) fn nearest(&self, p: &Probe, kx: f64, best: &mut Nearest) {
        self.near_nodes(self.height, 0..self.top_len, p, kx, best);
    }

    fn near_nodes(
        &self,
        level: u32,
        nodes: std::ops::Range<u32>,
        p: &Probe,
        kx: f64,
        best: &mut Nearest,
    ) {
        // Visit children nearest-first so the bound shrinks quickly.
        let mut order = [(0.0f64, 0u32, EMPTY_NODE); FANOUT];
        let k = (nodes.len()).min(FANOUT);
        for (i, id) in nodes.take(k).enumerate() {
            let n = self.node(id);
            let lb = n.r.gap2(p, kx);
            let mut j = i;
            while j > 0 && order[j - 1].0 > lb {
                order[j] = order[j - 1];
                j -= 1;
            }
            order[j] = (lb, i as u32, n);
        }
        for (lb, _, n) in &order[..k] {
            let lb = *lb;
            // The slack keeps a rounding difference between the box bound
            // and the edge distance from pruning the true nearest edge.
            if lb * (1.0 - 1e-9) > best.d2 {
                break;
            }
            if level == 0 {
                self.near_edges(n, p, kx, best);
            } else {
                self.near_nodes(level - 1, n.start..n.end, p, kx, best);
            }
        }
    }

    fn near_edges(&self, n: &Node, p: &Probe, kx: f64, best: &mut Nearest) {
        let ky = M_PER_DEG;
        let a = self.vert(n.start);
        let mut ax = (a[0] - p.lon) * kx;
        let mut ay = (a[1] - p.lat) * ky;
        for i in n.start + 1..=n.end {
            let b = self.vert(i);
            let bx = (b[0] - p.lon) * kx;
            let by = (b[1] - p.lat) * ky;
            let (d2, py) = seg_d2_py(ax, ay, bx, by);
            if d2 < best.d2 || (!best.found && d2 <= best.d2) {
                best.d2 = d2;
                best.foot_lat = p.lat + py / ky;
                best.found = true;
            }
            ax = bx;
            ay = by;
        }
    }
}

/// Random access to a list of `u16` (edge buckets), stored plainly or
/// packed four to a `u64`.
pub(crate) trait U16s {
    fn at(&self, k: usize) -> u16;
}

impl U16s for [u16] {
    #[inline(always)]
    fn at(&self, k: usize) -> u16 {
        self[k]
    }
}

/// `u16`s packed four to a word, little end first.
pub(crate) struct PackedU16s<'a>(pub &'a [u64]);

impl U16s for PackedU16s<'_> {
    #[inline(always)]
    fn at(&self, k: usize) -> u16 {
        (self.0[k / 4] >> (16 * (k % 4))) as u16
    }
}

/// Random access to vertices `[lon, lat]`.
pub(crate) trait Verts {
    fn vert(&self, i: usize) -> [f64; 2];
}

impl Verts for [[f64; 2]] {
    #[inline(always)]
    fn vert(&self, i: usize) -> [f64; 2] {
        self[i]
    }
}

/// Vertices stored as the bits of two `u64` words each.
pub(crate) struct PackedVerts<'a>(pub &'a [u64]);

impl Verts for PackedVerts<'_> {
    #[inline(always)]
    fn vert(&self, i: usize) -> [f64; 2] {
        [
            f64::from_bits(self.0[2 * i]),
            f64::from_bits(self.0[2 * i + 1]),
        ]
    }
}

/// [`EdgeSet::crossing`] over the edges listed at `list[range]`, which must
/// include every edge whose latitude range contains the point's; the result
/// is then the same.
pub(crate) fn crossing_listed<V: Verts + ?Sized, L: U16s + ?Sized>(
    v: &V,
    list: &L,
    range: std::ops::Range<usize>,
    p: &Probe,
) -> Crossing {
    let mut odd = false;
    for k in range {
        let i = usize::from(list.at(k));
        if cross_edge(v.vert(i), v.vert(i + 1), p, &mut odd) {
            return Crossing::Boundary;
        }
    }
    if odd {
        Crossing::Inside
    } else {
        Crossing::Outside
    }
}

/// [`EdgeSet::nearest`] over the edges listed at `list[range]` (repeats
/// allowed): the same squared distance whenever they include every edge
/// within the bound. `foot_lat` is not set.
pub(crate) fn nearest_listed<V: Verts + ?Sized, L: U16s + ?Sized>(
    v: &V,
    list: &L,
    range: std::ops::Range<usize>,
    p: &Probe,
    kx: f64,
    best: &mut Nearest,
) {
    let ky = M_PER_DEG;
    for k in range {
        let i = usize::from(list.at(k));
        let (a, b) = (v.vert(i), v.vert(i + 1));
        let ax = (a[0] - p.lon) * kx;
        let ay = (a[1] - p.lat) * ky;
        let bx = (b[0] - p.lon) * kx;
        let by = (b[1] - p.lat) * ky;
        let d2 = seg_d2(ax, ay, bx, by);
        if d2 <= best.d2 {
            best.d2 = d2;
            best.found = true;
        }
    }
}

/// Squared distance from the origin to the segment `a`–`b`, and the foot
/// point's `y`.
#[inline(always)]
fn seg_d2_py(ax: f64, ay: f64, bx: f64, by: f64) -> (f64, f64) {
    let dx = bx - ax;
    let dy = by - ay;
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (-(ax * dx + ay * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let px = ax + t * dx;
    let py = ay + t * dy;
    (px * px + py * py, py)
}

#[inline(always)]
fn seg_d2(ax: f64, ay: f64, bx: f64, by: f64) -> f64 {
    seg_d2_py(ax, ay, bx, by).0
}

/// One edge's part of the even-odd test: flips `odd` when the ray towards
/// +lon crosses it; true when the point is on it. Edges whose latitude
/// range excludes the point's never do either.
#[inline]
fn cross_edge(a: [f64; 2], b: [f64; 2], p: &Probe, odd: &mut bool) -> bool {
    let (qx, qy) = (p.lon, p.lat);
    let (minx, maxx) = minmax(a[0], b[0]);
    if qx > maxx {
        return false;
    }
    let a_up = a[1] > qy;
    let b_up = b[1] > qy;
    if a_up != b_up {
        if qx < minx {
            *odd = !*odd;
            return false;
        }
        match orient(a, b, qx, qy) {
            Orientation::Collinear => return true,
            Orientation::CounterClockwise => {
                if b_up {
                    *odd = !*odd;
                }
            }
            Orientation::Clockwise => {
                if a_up {
                    *odd = !*odd;
                }
            }
        }
        false
    } else {
        let (miny, maxy) = minmax(a[1], b[1]);
        qx >= minx && qy >= miny && qy <= maxy && orient(a, b, qx, qy) == Orientation::Collinear
    }
}

fn minmax(a: f64, b: f64) -> (f64, f64) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

fn orient(a: [f64; 2], b: [f64; 2], qx: f64, qy: f64) -> Orientation {
    RobustKernel::orient2d(
        Coord { x: a[0], y: a[1] },
        Coord { x: b[0], y: b[1] },
        Coord { x: qx, y: qy },
    )
}
