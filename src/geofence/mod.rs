//! Geofence evaluation: is a GPS fix inside a zone, and how many metres is
//! it from the zone's boundary.
//!
//! A [`Shape`] is parsed and validated from GeoJSON ([`Shape::from_geojson`])
//! and stored back as canonical GeoJSON ([`Shape::to_geojson`]). A
//! [`PreparedZone`] is built once per shape and answers [`Relation`]s for
//! millions of fixes; a [`ZoneIndex`] holds many prepared zones (e.g. a
//! shared list of 100k school zones) behind an R-tree.
//!
//! # Semantics
//! - **Edges** are straight lines in longitude/latitude, as GeoJSON
//!   (RFC 7946 §3.1.1) and `geo` define them. The inside test runs on the
//!   raw degrees with `geo`'s robust orientation predicate, so it agrees
//!   exactly with `geo`'s `Intersects` for valid polygons.
//! - **Boundary rule**: zones are closed sets. A point exactly on an edge or
//!   vertex (of the outer ring or of a hole) is *inside* with
//!   `boundary_m == 0`. A point inside a hole is outside.
//! - **Polygons** are not checked for self-intersection; a point is inside a
//!   polygon when a ray crosses its rings an odd number of times, which is
//!   GeoJSON's meaning for valid polygons. A multipolygon contains a point
//!   when any part does; its parts are assumed disjoint (as RFC 7946 asks).
//! - **Circle**: points within `radius_m` of the centre (spherical distance).
//! - **Corridor**: points within `width_m / 2` of the polyline. For a point
//!   inside, `boundary_m` is `width_m / 2 - distance to the line`, which is
//!   exact unless another part of the line comes within the half-width
//!   (sharp bends, loops), where it is a lower bound.
//!
//! # Metric distances and their error
//! Distances are measured in a local equirectangular frame centred on the
//! *fix* (`x = Δlon·cos(lat_fix)·R`, `y = Δlat·R`, `R` = 6 371 008.8 m), not
//! on the zone: near the fix this frame is exact to first order, so the
//! error grows with the distance `d` itself rather than with the zone's
//! size. Its relative error is at most about `tan|lat|·d / (2R)`, i.e.
//! below 0.02 % for `d <= 1 km` at |lat| <= 60° — the range that matters
//! for classifying a fix against its accuracy radius. When the nearest
//! boundary point is farther than 10 km the search is repeated in a frame
//! at the mid-latitude between fix and that point, which removes the
//! first-order term. Against an independent haversine computation over
//! zones 200–400 km across with points up to 250 km away, the tests measure
//! a worst relative error of 0.03 % at 45°, 0.05 % at 60° and 0.17 % at
//! 82° of latitude. Circles use the mid-latitude formula up to 10 km (error
//! < 1 cm) and haversine beyond. The extent cap of 500 km keeps these
//! figures valid; it is not needed for the inside test, which is exact.
//!
//! # Evaluation cost
//! Each polygon's edges sit in one contiguous block with a small
//! bounding-box hierarchy over runs of 16 consecutive edges, so the exact
//! crossing test and the unbounded nearest-edge search are roughly
//! logarithmic. An inline 16 × 16 grid of inside/outside/edge cells (64
//! bytes; 64 × 64 for polygons of more than 1 024 vertices) settles most
//! queries whose accuracy box misses the boundary without touching the
//! vertices. A single polygon with the fine grid, and each single polygon
//! held in a [`ZoneIndex`], also has its edges bucketed by grid row (keyed
//! by the column of each edge's east end, so the crossing ray visits only
//! edges east of the point) and by grid cell, so the crossing test and a
//! search bounded by the accuracy radius look at a dozen or so edges
//! whatever the vertex count.
//!
//! [`ZoneIndex`] keeps small R-tree leaves (envelope + position), a
//! coarse occupancy bitmap in front of the tree for fixes far from every
//! zone, and per zone, in the tree's leaf order, a 128-byte header (grid,
//! box) and one contiguous record (edge buckets + vertices), so a candidate
//! costs about two cache lines when the grid settles it and one further
//! block when it does not. [`PreparedZone::relate_capped`] and
//! [`ZoneIndex::near_capped`] skip the nearest-boundary search when the
//! boundary is farther than the accuracy radius (which is all
//! classification needs); exact distances from deep inside a zone remain
//! the costliest case.
//!
//! # Limits (validated in [`Shape::from_geojson`])
//! At most [`MAX_VERTICES`] positions per shape; the zone (including a
//! circle's radius or a corridor's half-width) must fit in
//! [`MAX_EXTENT_M`] in both directions, stay within ±[`MAX_ABS_LAT`]° of
//! latitude, and not cross the antimeridian (its longitude span must be
//! below 180°; longitudes are never wrapped, so a fix and a zone on opposite
//! sides of ±180° are far apart).

mod edges;
mod grid;
mod index;
mod parse;
mod simple;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use edges::{Crossing, EdgeSet, Nearest};
pub use index::ZoneIndex;
pub use simple::check_simple;

/// Mean Earth radius (IUGG), metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// Metres per degree of latitude on the mean sphere.
pub(crate) const M_PER_DEG: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
/// Maximum number of positions in one shape (all rings together).
pub const MAX_VERTICES: usize = 100_000;
/// Maximum north-south and east-west extent of a zone, metres.
pub const MAX_EXTENT_M: f64 = 500_000.0;
/// Zones must stay within this latitude (degrees) either side of the equator.
pub const MAX_ABS_LAT: f64 = 85.0;
/// Maximum circle radius, metres (a 500 km diameter).
pub const MAX_RADIUS_M: f64 = 250_000.0;
/// Maximum corridor width, metres.
pub const MAX_WIDTH_M: f64 = 50_000.0;
/// Beyond this distance the nearest-boundary search is repeated in a
/// mid-latitude frame (see the module docs).
const REFINE_ABOVE_M: f64 = 10_000.0;
/// Polygons with more vertices than this get the finer (64 × 64) grid.
const FINE_ABOVE: usize = 1024;

/// A validated zone geometry. Positions are `[lon, lat]` in degrees, as in
/// GeoJSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// One polygon, possibly with holes.
    Polygon(Polygon),
    /// Several disjoint polygons.
    MultiPolygon(Vec<Polygon>),
    /// A disc around a centre.
    Circle(Circle),
    /// A buffer of constant width around a polyline.
    Corridor(Corridor),
}

/// A polygon: an outer ring and holes, each closed (first == last).
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    rings: Vec<Vec<[f64; 2]>>,
}

impl Polygon {
    /// The outer ring, closed, `[lon, lat]` positions.
    pub fn exterior(&self) -> &[[f64; 2]] {
        self.rings.first().map(Vec::as_slice).unwrap_or(&[])
    }
    /// The holes, each closed.
    pub fn holes(&self) -> &[Vec<[f64; 2]>] {
        self.rings.get(1..).unwrap_or(&[])
    }
}

/// A circle zone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Circle {
    lon: f64,
    lat: f64,
    radius_m: f64,
}

impl Circle {
    /// Centre as `[lon, lat]`.
    pub fn center(&self) -> [f64; 2] {
        [self.lon, self.lat]
    }
    /// Radius in metres.
    pub fn radius_m(&self) -> f64 {
        self.radius_m
    }
}

/// A corridor zone: points within `width_m / 2` of a polyline.
#[derive(Debug, Clone, PartialEq)]
pub struct Corridor {
    line: Vec<[f64; 2]>,
    width_m: f64,
}

impl Corridor {
    /// The centre line, `[lon, lat]` positions.
    pub fn line(&self) -> &[[f64; 2]] {
        &self.line
    }
    /// Full width in metres.
    pub fn width_m(&self) -> f64 {
        self.width_m
    }
}

/// Why a shape was refused. Messages name the rule that was broken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShapeError {
    /// The value is not a JSON object.
    #[error("zone GeoJSON must be an object (a Feature or a Geometry)")]
    NotAnObject,
    /// No string `type` member.
    #[error("zone GeoJSON has no string \"type\" member")]
    MissingType,
    /// A Feature without a geometry object.
    #[error("Feature has no geometry object")]
    MissingGeometry,
    /// A type other than Feature/Polygon/MultiPolygon/Point/LineString.
    #[error("unsupported GeoJSON type \"{0}\": a zone is a Polygon, a MultiPolygon, a Point with a \"radius_m\" property, or a LineString with a \"width_m\" property")]
    UnsupportedType(String),
    /// Coordinates are not nested arrays of numbers as the type requires.
    #[error("malformed coordinates: {0}")]
    Malformed(&'static str),
    /// A coordinate is NaN or infinite.
    #[error("coordinate is not a finite number")]
    NonFinite,
    /// Longitude outside [-180, 180].
    #[error("longitude {0} is outside [-180, 180]")]
    LongitudeOutOfRange(f64),
    /// Latitude outside [-90, 90].
    #[error("latitude {0} is outside [-90, 90]")]
    LatitudeOutOfRange(f64),
    /// A ring whose first and last positions differ.
    #[error("ring {ring} is not closed: its first and last positions must be equal")]
    RingNotClosed {
        /// Ring index within its polygon (0 = outer ring).
        ring: usize,
    },
    /// A ring with fewer than 4 positions.
    #[error("ring {ring} has {len} positions; a closed ring needs at least 4")]
    RingTooShort {
        /// Ring index within its polygon (0 = outer ring).
        ring: usize,
        /// Number of positions found.
        len: usize,
    },
    /// A polygon without rings or a multipolygon without polygons.
    #[error("{0} has no rings")]
    Empty(&'static str),
    /// A corridor line with fewer than 2 positions.
    #[error("a corridor LineString needs at least 2 positions, got {0}")]
    LineTooShort(usize),
    /// More positions than [`MAX_VERTICES`].
    #[error("shape has {count} positions; the limit is {max}")]
    TooManyVertices {
        /// Positions counted (counting stops shortly after the limit).
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A Point without a numeric `radius_m` property.
    #[error("a Point zone needs a numeric \"radius_m\" property (metres)")]
    MissingRadius,
    /// A radius that is not finite, not positive, or too large.
    #[error("radius_m must be a finite number > 0 and <= {max} m, got {value}")]
    InvalidRadius {
        /// The value given.
        value: f64,
        /// The limit.
        max: f64,
    },
    /// A LineString without a numeric `width_m` property.
    #[error("a LineString zone needs a numeric \"width_m\" property (metres)")]
    MissingWidth,
    /// A width that is not finite, not positive, or too large.
    #[error("width_m must be a finite number > 0 and <= {max} m, got {value}")]
    InvalidWidth {
        /// The value given.
        value: f64,
        /// The limit.
        max: f64,
    },
    /// The zone is larger than [`MAX_EXTENT_M`] in some direction.
    #[error("zone spans {extent_m:.0} m; the limit is {max_m:.0} m so that the local metric frame stays accurate")]
    TooLarge {
        /// The larger of the north-south and east-west extents.
        extent_m: f64,
        /// The limit.
        max_m: f64,
    },
    /// Longitude span of 180° or more: the zone wraps the antimeridian.
    #[error("zone spans 180° of longitude or more (it crosses the antimeridian); such zones are not supported")]
    CrossesAntimeridian,
    /// The zone reaches beyond ±[`MAX_ABS_LAT`].
    #[error("zone reaches latitude {0:.4}°; zones must stay within ±85° because the local metric frame degenerates near the poles")]
    TooCloseToPole(f64),
}

/// How a point relates to a zone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Relation {
    /// The point is inside the zone or on its boundary.
    pub inside: bool,
    /// Metres from the point to the nearest boundary point (>= 0; 0 on the
    /// boundary), whether the point is inside or outside.
    pub boundary_m: f64,
}

impl Shape {
    /// Parses a GeoJSON Feature or bare Geometry.
    ///
    /// - Polygon / MultiPolygon geometry (holes allowed) => polygon zone.
    /// - Point geometry + Feature property `"radius_m": <number > 0>` => circle.
    /// - LineString geometry + Feature property `"width_m": <number > 0>` =>
    ///   corridor (points within `width_m / 2` of the polyline).
    ///
    /// Positions may carry a third (altitude) number, which is ignored. See
    /// the module docs for the limits enforced.
    pub fn from_geojson(v: &serde_json::Value) -> Result<Shape, ShapeError> {
        parse::from_geojson(v)
    }

    /// Canonical GeoJSON Feature for storage; `from_geojson` of it returns
    /// an equal shape.
    pub fn to_geojson(&self) -> serde_json::Value {
        parse::to_geojson(self)
    }

    /// `"polygon"`, `"multipolygon"`, `"circle"` or `"corridor"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Shape::Polygon(_) => "polygon",
            Shape::MultiPolygon(_) => "multipolygon",
            Shape::Circle(_) => "circle",
            Shape::Corridor(_) => "corridor",
        }
    }

    /// A validated polygon from rings of `[lon, lat]` (outer ring first).
    pub fn polygon(rings: Vec<Vec<[f64; 2]>>) -> Result<Shape, ShapeError> {
        let p = parse::check_polygon(rings, &mut 0)?;
        parse::check_extent(p.exterior().iter(), 0.0)?;
        Ok(Shape::Polygon(p))
    }

    /// A validated multipolygon from polygons given as rings.
    pub fn multipolygon(polys: Vec<Vec<Vec<[f64; 2]>>>) -> Result<Shape, ShapeError> {
        if polys.is_empty() {
            return Err(ShapeError::Empty("MultiPolygon"));
        }
        let mut count = 0;
        let polys = polys
            .into_iter()
            .map(|r| parse::check_polygon(r, &mut count))
            .collect::<Result<Vec<_>, _>>()?;
        parse::check_extent(polys.iter().flat_map(|p| p.exterior()), 0.0)?;
        Ok(Shape::MultiPolygon(polys))
    }

    /// A validated circle.
    pub fn circle(lat: f64, lon: f64, radius_m: f64) -> Result<Shape, ShapeError> {
        parse::check_position(lon, lat)?;
        if !(radius_m.is_finite() && radius_m > 0.0 && radius_m <= MAX_RADIUS_M) {
            return Err(ShapeError::InvalidRadius {
                value: radius_m,
                max: MAX_RADIUS_M,
            });
        }
        parse::check_extent([[lon, lat]].iter(), radius_m)?;
        Ok(Shape::Circle(Circle { lon, lat, radius_m }))
    }

    /// A validated corridor from a polyline of `[lon, lat]` and a full width.
    pub fn corridor(line: Vec<[f64; 2]>, width_m: f64) -> Result<Shape, ShapeError> {
        if line.len() > MAX_VERTICES {
            return Err(ShapeError::TooManyVertices {
                count: line.len(),
                max: MAX_VERTICES,
            });
        }
        if line.len() < 2 {
            return Err(ShapeError::LineTooShort(line.len()));
        }
        for p in &line {
            parse::check_position(p[0], p[1])?;
        }
        if !(width_m.is_finite() && width_m > 0.0 && width_m <= MAX_WIDTH_M) {
            return Err(ShapeError::InvalidWidth {
                value: width_m,
                max: MAX_WIDTH_M,
            });
        }
        parse::check_extent(line.iter(), width_m / 2.0)?;
        Ok(Shape::Corridor(Corridor { line, width_m }))
    }
}

/// An axis-aligned box in degrees (x = lon, y = lat).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rect {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
}

impl Rect {
    pub(crate) const EMPTY: Rect = Rect {
        x0: f64::INFINITY,
        y0: f64::INFINITY,
        x1: f64::NEG_INFINITY,
        y1: f64::NEG_INFINITY,
    };

    fn of_points(pts: &[[f64; 2]]) -> Rect {
        let mut r = Rect::EMPTY;
        for p in pts {
            r.x0 = r.x0.min(p[0]);
            r.y0 = r.y0.min(p[1]);
            r.x1 = r.x1.max(p[0]);
            r.y1 = r.y1.max(p[1]);
        }
        r
    }

    fn union_all(rs: impl IntoIterator<Item = Rect>) -> Rect {
        rs.into_iter().fold(Rect::EMPTY, |a, b| Rect {
            x0: a.x0.min(b.x0),
            y0: a.y0.min(b.y0),
            x1: a.x1.max(b.x1),
            y1: a.y1.max(b.y1),
        })
    }

    fn contains(&self, lon: f64, lat: f64) -> bool {
        self.x0 <= lon && lon <= self.x1 && self.y0 <= lat && lat <= self.y1
    }

    /// Squared distance (m²) from the probe to the box in the probe's frame.
    fn gap2(&self, p: &Probe, kx: f64) -> f64 {
        let gx = (self.x0 - p.lon).max(p.lon - self.x1).max(0.0) * kx;
        let gy = (self.y0 - p.lat).max(p.lat - self.y1).max(0.0) * M_PER_DEG;
        gx * gx + gy * gy
    }

    /// The box grown by `m` metres (conservatively, using the scale at its
    /// most poleward latitude).
    fn grow_m(&self, m: f64) -> Rect {
        let dlat = m / M_PER_DEG;
        let pole = (self.y0.abs().max(self.y1.abs()) + dlat).min(89.9);
        let dlon = m / (M_PER_DEG * pole.to_radians().cos());
        Rect {
            x0: self.x0 - dlon,
            y0: self.y0 - dlat,
            x1: self.x1 + dlon,
            y1: self.y1 + dlat,
        }
    }

    /// Cosine of the most poleward latitude in the box.
    fn cos_poleward(&self) -> f64 {
        self.y0
            .abs()
            .max(self.y1.abs())
            .min(90.0)
            .to_radians()
            .cos()
            .max(MIN_COS)
    }
}

/// Floor for cos(lat) so frames stay finite at the poles.
const MIN_COS: f64 = 1e-9;

/// A fix prepared for evaluation against many zones: computes the local
/// frame scale once. [`PreparedZone::relate`] builds one internally; pass
/// a `Probe` to the `*_probe` methods to share it across zones.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    lat: f64,
    lon: f64,
    cos_lat: f64,
    /// Metres per degree of longitude at the probe.
    kx: f64,
    finite: bool,
}

impl Probe {
    /// Prepares a fix at `lat`, `lon` (degrees).
    pub fn new(lat: f64, lon: f64) -> Probe {
        let cos_lat = lat.to_radians().cos().abs().max(MIN_COS);
        Probe {
            lat,
            lon,
            cos_lat,
            kx: M_PER_DEG * cos_lat,
            finite: lat.is_finite() && lon.is_finite(),
        }
    }
    /// Latitude, degrees.
    pub fn lat(&self) -> f64 {
        self.lat
    }
    /// Longitude, degrees.
    pub fn lon(&self) -> f64 {
        self.lon
    }

    /// The probe's frame scale relative to that at the zone's most poleward
    /// point, capped at 1: any frame centred between the probe and the zone
    /// measures at least `rho` times what the probe's frame measures.
    fn rho(&self, cos_poleward: f64) -> f64 {
        (cos_poleward / self.cos_lat).min(1.0)
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Polygon(EdgeSet),
    MultiPolygon(Arc<[EdgeSet]>),
    Circle { lon: f64, lat: f64, radius_m: f64 },
    Corridor { edges: EdgeSet, half_w: f64 },
}

/// A zone prepared for fast repeated evaluation. Built once per shape;
/// `Send + Sync`; cloning is cheap (the geometry is shared).
#[derive(Debug, Clone)]
pub struct PreparedZone {
    kind: Kind,
    /// Bounding box of the geometry itself (vertices, or a circle's centre).
    core: Rect,
    /// Metres the zone extends beyond `core`: radius or half-width, else 0.
    pad_m: f64,
    /// Cosine of the most poleward latitude of `core`.
    core_cos: f64,
    /// Polygons only: coarse inside/outside/edge cells over `core`.
    grid: Option<grid::Small>,
    /// Polygons with more than [`FINE_ABOVE`] vertices: a finer grid, used
    /// instead of `grid` (which is then `None`).
    fine: Option<Box<grid::Fine>>,
    /// Single polygons with the fine grid: edges bucketed by its rows and
    /// cells.
    buckets: Option<Arc<[u16]>>,
}

impl PreparedZone {
    /// Prepares a shape: flattens vertices and builds the edge hierarchy.
    pub fn new(shape: &Shape) -> PreparedZone {
        let (kind, core, pad_m) = match shape {
            Shape::Polygon(p) => {
                let e = EdgeSet::new(p.rings.iter().map(Vec::as_slice));
                let core = e.bbox;
                (Kind::Polygon(e), core, 0.0)
            }
            Shape::MultiPolygon(ps) => {
                let parts: Arc<[EdgeSet]> = ps
                    .iter()
                    .map(|p| EdgeSet::new(p.rings.iter().map(Vec::as_slice)))
                    .collect();
                let core = Rect::union_all(parts.iter().map(|e| e.bbox));
                (Kind::MultiPolygon(parts), core, 0.0)
            }
            Shape::Circle(c) => (
                Kind::Circle {
                    lon: c.lon,
                    lat: c.lat,
                    radius_m: c.radius_m,
                },
                Rect::of_points(&[[c.lon, c.lat]]),
                c.radius_m,
            ),
            Shape::Corridor(c) => {
                let e = EdgeSet::new([c.line.as_slice()]);
                let core = e.bbox;
                let half_w = c.width_m / 2.0;
                (Kind::Corridor { edges: e, half_w }, core, half_w)
            }
        };
        let mut z = PreparedZone {
            kind,
            core,
            pad_m,
            core_cos: core.cos_poleward(),
            grid: None,
            fine: None,
            buckets: None,
        };
        if let Kind::Polygon(_) | Kind::MultiPolygon(_) = z.kind {
            let parts = z.parts();
            let inside = |lon, lat| polygons_crossing(parts, &Probe::new(lat, lon));
            let n_vertices: usize = parts.iter().map(|e| e.vertices().len()).sum();
            if n_vertices > FINE_ABOVE {
                z.fine = grid::Fine::build(core, parts, inside).map(Box::new);
                if let (Some(g), Kind::Polygon(e)) = (&z.fine, &z.kind) {
                    z.buckets = g.buckets(e);
                }
            } else {
                // Small polygons keep no buckets of their own (their edge
                // hierarchy is a few blocks); a ZoneIndex builds its own.
                z.grid = grid::Small::build(core, parts, inside);
            }
        }
        z
    }

    /// Envelope `[min_lon, min_lat, max_lon, max_lat]` containing every
    /// point of the zone.
    pub fn envelope(&self) -> [f64; 4] {
        let e = if self.pad_m > 0.0 {
            // 2 % + 1 m covers the differences between the frames.
            self.core.grow_m(self.pad_m * 1.02 + 1.0)
        } else {
            self.core
        };
        [e.x0, e.y0, e.x1, e.y1]
    }

    /// Approximate heap + inline bytes used by this zone.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + match &self.kind {
                Kind::Polygon(e) => e.heap_bytes(),
                Kind::MultiPolygon(parts) => parts
                    .iter()
                    .map(|e| e.heap_bytes() + std::mem::size_of::<EdgeSet>())
                    .sum(),
                Kind::Circle { .. } => 0,
                Kind::Corridor { edges, .. } => edges.heap_bytes(),
            }
            + self.buckets.as_ref().map_or(0, |b| b.len() * 2)
            + self
                .fine
                .as_ref()
                .map_or(0, |_| std::mem::size_of::<grid::Fine>())
    }

    /// Relation of the point `lat`, `lon` (degrees) to the zone. A
    /// non-finite point is outside at infinite distance.
    pub fn relate(&self, lat: f64, lon: f64) -> Relation {
        self.relate_probe(&Probe::new(lat, lon))
    }

    /// [`PreparedZone::relate`] for a prepared fix.
    pub fn relate_probe(&self, p: &Probe) -> Relation {
        let far = Relation {
            inside: false,
            boundary_m: f64::INFINITY,
        };
        if !p.finite {
            return far;
        }
        match &self.kind {
            Kind::Circle { lon, lat, radius_m } => circle_relation(p, *lon, *lat, *radius_m),
            Kind::Polygon(_) | Kind::MultiPolygon(_) => {
                let parts = self.parts();
                let inside = match polygons_crossing(parts, p) {
                    Crossing::Boundary => {
                        return Relation {
                            inside: true,
                            boundary_m: 0.0,
                        }
                    }
                    c => c == Crossing::Inside,
                };
                match self.boundary_distance(parts, p, f64::INFINITY) {
                    Some(d) => Relation {
                        inside,
                        boundary_m: d,
                    },
                    None => far,
                }
            }
            Kind::Corridor { edges, half_w } => {
                match self.boundary_distance(std::slice::from_ref(edges), p, f64::INFINITY) {
                    Some(d) => corridor_relation(d, *half_w),
                    None => far,
                }
            }
        }
    }

    /// Hot-path variant: `None` when the point is outside the zone and its
    /// boundary is farther than `radius_m`; otherwise the exact
    /// [`Relation`] (identical to [`PreparedZone::relate`]).
    pub fn relate_within(&self, lat: f64, lon: f64, radius_m: f64) -> Option<Relation> {
        self.relate_within_probe(&Probe::new(lat, lon), radius_m)
    }

    /// [`PreparedZone::relate_within`] for a prepared fix.
    pub fn relate_within_probe(&self, p: &Probe, radius_m: f64) -> Option<Relation> {
        self.within(p, radius_m, false)
    }

    /// Like [`PreparedZone::relate_within`], but only as exact as
    /// classifying against an accuracy disc of `radius_m` needs: the same
    /// zones and `inside` values, and the same `boundary_m` when it is at
    /// most `radius_m`; when the boundary is farther than `radius_m`,
    /// `boundary_m` is `f64::INFINITY`. This skips the nearest-boundary
    /// search for points deep inside a zone, the costliest case.
    pub fn relate_capped(&self, lat: f64, lon: f64, radius_m: f64) -> Option<Relation> {
        self.within(&Probe::new(lat, lon), radius_m, true)
    }

    /// [`PreparedZone::relate_capped`] for a prepared fix.
    pub fn relate_capped_probe(&self, p: &Probe, radius_m: f64) -> Option<Relation> {
        self.within(p, radius_m, true)
    }

    pub(crate) fn within(&self, p: &Probe, radius_m: f64, capped: bool) -> Option<Relation> {
        if !p.finite {
            return None;
        }
        let r = radius_m;
        if !(0.0..f64::INFINITY).contains(&r) {
            // NaN, negative or infinite radius: no shortcut is safe, and
            // the definition below gives the answer.
            return filter(self.relate_probe(p), r).map(|rel| cap(rel, r, capped));
        }
        let rho = p.rho(self.core_cos);
        // Cheap reject on the core box: anything farther than this in the
        // probe's frame is farther than `r` (+ pad) in every frame used.
        let reach = ((r + self.pad_m) * 1.02 + 1.0) / rho;
        if self.core.gap2(p, p.kx) > reach * reach {
            return None;
        }
        match &self.kind {
            Kind::Circle { lon, lat, radius_m } => {
                filter(circle_relation(p, *lon, *lat, *radius_m), r).map(|rel| cap(rel, r, capped))
            }
            Kind::Polygon(_) | Kind::MultiPolygon(_) => {
                let pre = match (&self.grid, &self.fine) {
                    (Some(g), _) => grid_pre(g, self.core_cos, p, r, capped),
                    (_, Some(g)) => grid_pre(g, self.core_cos, p, r, capped),
                    _ => Err(0),
                };
                let seen = match pre {
                    Ok(answer) => return answer,
                    Err(seen) => seen,
                };
                self.polygon_after_grid(seen, p, r, capped)
            }
            Kind::Corridor { edges, half_w } => {
                // Slack for rounding in `d - half_w`; `filter` decides exactly.
                let bound = (r + half_w) * (1.0 + 1e-12) + 1e-9;
                let d = self.boundary_distance(std::slice::from_ref(edges), p, bound)?;
                filter(corridor_relation(d, *half_w), r).map(|rel| cap(rel, r, capped))
            }
        }
    }

    /// The rest of [`PreparedZone::within`] for a polygon once the grid
    /// checks ([`grid_pre`]) did not settle it; `seen` is what they saw
    /// (0 when there is no grid). Finite probe and finite `r >= 0` only.
    pub(crate) fn polygon_after_grid(
        &self,
        seen: u8,
        p: &Probe,
        r: f64,
        capped: bool,
    ) -> Option<Relation> {
        let c = if seen == grid::SEEN_IN {
            Crossing::Inside
        } else {
            match (&self.kind, &self.grid, &self.fine, &self.buckets) {
                (Kind::Polygon(e), Some(g), _, Some(b)) => {
                    listed_crossing(g, &b[..], e.vertices(), p)
                }
                (Kind::Polygon(e), _, Some(g), Some(b)) => {
                    listed_crossing(&**g, &b[..], e.vertices(), p)
                }
                _ => polygons_crossing(self.parts(), p),
            }
        };
        match c {
            Crossing::Boundary => Some(Relation {
                inside: true,
                boundary_m: 0.0,
            }),
            Crossing::Inside if capped => Some(Relation {
                inside: true,
                boundary_m: self
                    .boundary_distance(self.parts(), p, r)
                    .unwrap_or(f64::INFINITY),
            }),
            Crossing::Inside => self
                .boundary_distance(self.parts(), p, f64::INFINITY)
                .map(|d| Relation {
                    inside: true,
                    boundary_m: d,
                }),
            Crossing::Outside => self
                .boundary_distance(self.parts(), p, r)
                .map(|d| Relation {
                    inside: false,
                    boundary_m: d,
                }),
        }
    }

    /// The polygon grid and `core_cos`, for [`ZoneIndex`]'s compact copy.
    pub(crate) fn grid_header(&self) -> Option<(grid::Small, f64)> {
        match self.kind {
            Kind::Polygon(_) | Kind::MultiPolygon(_) => self.grid.map(|g| (g, self.core_cos)),
            _ => None,
        }
    }

    fn parts(&self) -> &[EdgeSet] {
        match &self.kind {
            Kind::Polygon(e) => std::slice::from_ref(e),
            Kind::MultiPolygon(v) => &v[..],
            Kind::Corridor { edges, .. } => std::slice::from_ref(edges),
            Kind::Circle { .. } => &[],
        }
    }

    /// Single polygons with the ordinary grid: the grid, edge buckets built
    /// for it and the vertices, for [`ZoneIndex`]'s compact copy (`None`
    /// when the buckets do not fit in `u16`).
    pub(crate) fn listed_parts(&self) -> Option<Listed<'_>> {
        match (&self.kind, &self.grid) {
            (Kind::Polygon(e), Some(g)) => Some((g, g.buckets(e)?, e.vertices())),
            _ => None,
        }
    }

    /// Distance from the probe to the nearest edge, if it is <= `bound`
    /// (`None` means it is farther, or there are no edges). The result is
    /// the same number whatever the bound, so bounded and unbounded calls
    /// agree exactly.
    fn boundary_distance(&self, sets: &[EdgeSet], p: &Probe, bound: f64) -> Option<f64> {
        let rho = p.rho(self.core_cos);
        // The refined distance is at least rho times the first one, so a
        // first-frame distance above bound/rho can never come back under.
        let b1 = if bound.is_finite() {
            bound / rho * (1.0 + 1e-9) + 1e-9
        } else {
            f64::INFINITY
        };
        let listed = match (&self.kind, &self.grid, &self.fine, &self.buckets, sets) {
            (Kind::Polygon(e), Some(g), _, Some(b), [_]) => {
                listed_distance(g, &b[..], e.vertices(), self.core_cos, p, bound)
            }
            (Kind::Polygon(e), _, Some(g), Some(b), [_]) => {
                listed_distance(&**g, &b[..], e.vertices(), self.core_cos, p, bound)
            }
            _ => None,
        };
        if let Some(d) = listed {
            return d;
        }
        let mut best = Nearest::with_bound(b1);
        for e in sets {
            if e.bbox.gap2(p, p.kx) * (1.0 - 1e-9) <= best.d2 {
                e.nearest(p, p.kx, &mut best);
            }
        }
        if !best.found {
            return None;
        }
        let mut d = best.d2.sqrt();
        if d > REFINE_ABOVE_M {
            let mid = (0.5 * (p.lat + best.foot_lat)).to_radians().cos().abs();
            let kx2 = M_PER_DEG * mid.max(MIN_COS);
            let mut b2 = Nearest::with_bound(f64::INFINITY);
            for e in sets {
                if e.bbox.gap2(p, kx2) * (1.0 - 1e-9) <= b2.d2 {
                    e.nearest(p, kx2, &mut b2);
                }
            }
            d = b2.d2.sqrt();
        }
        (d <= bound).then_some(d)
    }
}

/// The checks of [`PreparedZone::within`] that need only a polygon's grid
/// (whose box is the polygon's core box) and `core_cos`, for a finite probe
/// and a finite `r >= 0`: `Ok(answer)` when they settle the query, else
/// `Err(classes seen)` for [`PreparedZone::polygon_after_grid`].
#[inline]
pub(crate) fn grid_pre<const G: usize, const W: usize>(
    g: &grid::Grid<G, W>,
    core_cos: f64,
    p: &Probe,
    r: f64,
    capped: bool,
) -> Result<Option<Relation>, u8> {
    let rho = p.rho(core_cos);
    // Anything farther than this in the probe's frame is farther than `r`
    // in every frame used (a polygon has no pad).
    let reach = (r * 1.02 + 1.0) / rho;
    if g.rect().gap2(p, p.kx) > reach * reach {
        return Ok(None);
    }
    let seen = g.classes(p.lon, p.lat, reach / p.kx, reach / M_PER_DEG);
    if seen == grid::SEEN_OUT {
        // No edge within `reach` and outside.
        return Ok(None);
    }
    if seen == grid::SEEN_IN && capped {
        // No edge within `reach`, so the boundary is farther than `r`.
        return Ok(Some(Relation {
            inside: true,
            boundary_m: f64::INFINITY,
        }));
    }
    Err(seen)
}

/// A single polygon's grid, edge buckets and vertices.
pub(crate) type Listed<'a> = (&'a grid::Small, Arc<[u16]>, &'a [[f64; 2]]);

/// [`PreparedZone::boundary_distance`] for a single polygon from its edge
/// buckets `b` and vertices `v`, when the bound is small and finite:
/// `Some(the same result)` when that applies, `None` when the full search
/// is needed.
#[inline]
pub(crate) fn listed_distance<
    const G: usize,
    const W: usize,
    V: edges::Verts + ?Sized,
    B: edges::U16s + ?Sized,
>(
    g: &grid::Grid<G, W>,
    b: &B,
    v: &V,
    core_cos: f64,
    p: &Probe,
    bound: f64,
) -> Option<Option<f64>> {
    // As in `boundary_distance`: the first-frame bound.
    let b1 = bound / p.rho(core_cos) * (1.0 + 1e-9) + 1e-9;
    if b1.is_nan() || b1 > REFINE_ABOVE_M / 2.0 {
        return None;
    }
    // Every point within `b1` of the probe (in its frame) is in this box;
    // the slack covers rounding.
    let dlon = b1 / p.kx * (1.0 + 1e-6);
    let dlat = b1 / M_PER_DEG * (1.0 + 1e-6);
    let q = [p.lon - dlon, p.lat - dlat, p.lon + dlon, p.lat + dlat];
    let mut best = Nearest::with_bound(b1);
    if !g.cell_ranges(b, q, 64, |k| {
        edges::nearest_listed(v, b, k, p, p.kx, &mut best)
    }) {
        return None;
    }
    // Below the refinement threshold, so the first frame is final.
    let d = if best.found {
        best.d2.sqrt()
    } else {
        f64::INFINITY
    };
    Some((d <= bound).then_some(d))
}

/// The crossing test of a single polygon from its edge buckets `b` and
/// vertices `v` (the grid's box is the polygon's box).
#[inline]
pub(crate) fn listed_crossing<
    const G: usize,
    const W: usize,
    V: edges::Verts + ?Sized,
    B: edges::U16s + ?Sized,
>(
    g: &grid::Grid<G, W>,
    b: &B,
    v: &V,
    p: &Probe,
) -> Crossing {
    if g.rect().contains(p.lon, p.lat) {
        edges::crossing_listed(v, b, g.row_range(b, p.lon, p.lat), p)
    } else {
        Crossing::Outside
    }
}

fn cap(rel: Relation, r: f64, capped: bool) -> Relation {
    let within = rel.boundary_m <= r;
    if capped && !within {
        Relation {
            inside: rel.inside,
            boundary_m: f64::INFINITY,
        }
    } else {
        rel
    }
}

fn filter(rel: Relation, r: f64) -> Option<Relation> {
    if !rel.inside && rel.boundary_m > r {
        None
    } else {
        Some(rel)
    }
}

fn polygons_crossing(parts: &[EdgeSet], p: &Probe) -> Crossing {
    let mut inside = false;
    for e in parts {
        if e.bbox.contains(p.lon, p.lat) {
            match e.crossing(p) {
                Crossing::Boundary => return Crossing::Boundary,
                Crossing::Inside => inside = true,
                Crossing::Outside => {}
            }
        }
    }
    if inside {
        Crossing::Inside
    } else {
        Crossing::Outside
    }
}

fn corridor_relation(d: f64, half_w: f64) -> Relation {
    Relation {
        inside: d <= half_w,
        boundary_m: (d - half_w).abs(),
    }
}

fn circle_relation(p: &Probe, lon: f64, lat: f64, radius_m: f64) -> Relation {
    let d = point_distance_m(p.lat, p.lon, lat, lon);
    Relation {
        inside: d <= radius_m,
        boundary_m: (d - radius_m).abs(),
    }
}

/// Distance between two points: mid-latitude equirectangular up to 10 km
/// (error < 1 cm there), haversine beyond.
pub(crate) fn point_distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let mid = (0.5 * (lat1 + lat2)).to_radians().cos();
    let dx = (lon1 - lon2) * M_PER_DEG * mid;
    let dy = (lat1 - lat2) * M_PER_DEG;
    let d = (dx * dx + dy * dy).sqrt();
    if d <= REFINE_ABOVE_M {
        d
    } else {
        haversine_m(lat1, lon1, lat2, lon2)
    }
}

/// Great-circle distance on the mean sphere.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.clamp(0.0, 1.0).sqrt().asin()
}
