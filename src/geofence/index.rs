//! Many zones behind one R-tree of envelopes.

use std::ops::ControlFlow;
use std::sync::Arc;

use rstar::{RStarInsertionStrategy, RTree, RTreeObject, RTreeParams, AABB};

use super::{PreparedZone, Probe, Relation, M_PER_DEG};

/// Node size of the envelope tree: a little larger than rstar's default
/// (6) for a shallower tree. On the shared 2-core bench machine the
/// difference was within run-to-run noise.
struct Params;
impl RTreeParams for Params {
    const MIN_SIZE: usize = 4;
    const MAX_SIZE: usize = 12;
    const REINSERTION_COUNT: usize = 3;
    type DefaultInsertionStrategy = RStarInsertionStrategy;
}

/// A clone of the zone (header inline, geometry shared) rides in the leaf,
/// so a candidate costs no pointer chase before its geometry.
struct Entry<K> {
    env: AABB<[f64; 2]>,
    key: K,
    zone: PreparedZone,
}

impl<K> RTreeObject for Entry<K> {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        self.env
    }
}

/// Many zones (e.g. a shared list of 100k school zones) behind an rstar
/// R-tree over their envelopes.
pub struct ZoneIndex<K> {
    tree: RTree<Entry<K>, Params>,
    /// Smallest `core_cos` of any zone: bounds the frame-change factor.
    min_cos: f64,
}

impl<K: Copy> ZoneIndex<K> {
    /// Bulk-loads the tree.
    pub fn build(zones: Vec<(K, Arc<PreparedZone>)>) -> Self {
        let min_cos = zones.iter().map(|(_, z)| z.core_cos).fold(1.0f64, f64::min);
        let entries = zones
            .into_iter()
            .map(|(key, zone)| {
                let e = zone.envelope();
                Entry {
                    env: AABB::from_corners([e[0], e[1]], [e[2], e[3]]),
                    key,
                    zone: PreparedZone::clone(&zone),
                }
            })
            .collect();
        ZoneIndex {
            tree: RTree::bulk_load_with_params(entries),
            min_cos,
        }
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
            for e in self.tree.iter() {
                if let Some(rel) = e.zone.within(p, r, capped) {
                    f(e.key, rel);
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
        let pole_cos = (p.lat.abs() + dlat)
            .min(90.0)
            .to_radians()
            .cos()
            .min(self.min_cos)
            .max(super::MIN_COS);
        let dlon = reach / (M_PER_DEG * pole_cos);
        let q = AABB::from_corners([p.lon - dlon, p.lat - dlat], [p.lon + dlon, p.lat + dlat]);
        // Internal iteration: measurably cheaper than rstar's iterator.
        let _ = self
            .tree
            .locate_in_envelope_intersecting_int(&q, |e| -> ControlFlow<()> {
                if let Some(rel) = e.zone.within(p, r, capped) {
                    f(e.key, rel);
                }
                ControlFlow::Continue(())
            });
    }
}
