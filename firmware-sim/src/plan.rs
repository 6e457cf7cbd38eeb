//! A person's trajectory: a chain of visits joined by street routes.
//!
//! Each visit has a desired arrival time; the person leaves the previous
//! place just in time to arrive then (or as soon as a short minimum stay
//! allows), so the trajectory is continuous — nobody teleports, including
//! across the start of the simulated window, which may begin mid-journey.

use crate::world::{along, length, route, speed_for, P};

/// What kind of place a visit is; decides GNSS conditions and the home beacon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceKind {
    /// The supervisee's home: indoors, home beacon in range, charger.
    Home,
    /// Workplace: indoors.
    Work,
    /// Shop or errand: indoors.
    Shop,
    /// Evening venue of the curfew violator: indoors.
    Bar,
    /// Underground garage: no GNSS, coarse cell positions only.
    Garage,
    /// Inside the person's exclusion zone: outdoors.
    ExclusionSite,
    /// Beyond the county line: outdoors.
    OutsideCounty,
    /// Close to the paired victim: outdoors.
    NearVictim,
}

impl PlaceKind {
    /// Whether GNSS reception there is indoor-grade (worse accuracy).
    pub fn indoor(self) -> bool {
        matches!(
            self,
            PlaceKind::Home
                | PlaceKind::Work
                | PlaceKind::Shop
                | PlaceKind::Bar
                | PlaceKind::Garage
        )
    }
}

/// A planned visit.
#[derive(Debug, Clone, Copy)]
pub struct Visit {
    /// Desired arrival, epoch ms (true time).
    pub at_ms: i64,
    /// Where.
    pub place: P,
    /// What it is.
    pub kind: PlaceKind,
}

#[derive(Debug, Clone)]
enum Seg {
    Stay {
        t0: i64,
        place: P,
        kind: PlaceKind,
    },
    Move {
        t0: i64,
        path: Vec<P>,
        len: f64,
        speed: f64,
    },
}

impl Seg {
    fn t0(&self) -> i64 {
        match self {
            Seg::Stay { t0, .. } | Seg::Move { t0, .. } => *t0,
        }
    }
}

/// Where a person is at an instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Whereabouts {
    /// True position.
    pub pos: P,
    /// Ground speed, m/s (0 when staying).
    pub speed: f64,
    /// Course, degrees from north.
    pub heading: f64,
    /// The place, when staying somewhere; `None` on the move (outdoors).
    pub place: Option<PlaceKind>,
}

/// Shortest stay at a place before leaving for the next one.
const MIN_STAY_MS: i64 = 5 * 60_000;

/// A continuous trajectory.
#[derive(Debug, Clone)]
pub struct Trajectory {
    segs: Vec<Seg>,
}

impl Trajectory {
    /// Builds the trajectory through `visits` (sorted here by desired
    /// arrival); the first visit is where the person is at its time.
    pub fn build(mut visits: Vec<Visit>) -> Trajectory {
        visits.sort_by_key(|v| v.at_ms);
        let mut segs = Vec::with_capacity(visits.len() * 2);
        let Some(first) = visits.first() else {
            return Trajectory { segs };
        };
        let (mut here, mut arrived) = (*first, first.at_ms);
        segs.push(Seg::Stay {
            t0: arrived,
            place: here.place,
            kind: here.kind,
        });
        for v in visits.iter().skip(1) {
            if v.place.dist(here.place) < 1.0 {
                continue;
            }
            let path = route(here.place, v.place);
            let len = length(&path);
            let speed = speed_for(len);
            let travel_ms = (len / speed * 1000.0).ceil() as i64;
            let depart = (v.at_ms - travel_ms).max(arrived + MIN_STAY_MS);
            segs.push(Seg::Move {
                t0: depart,
                path,
                len,
                speed,
            });
            arrived = depart + travel_ms;
            here = *v;
            segs.push(Seg::Stay {
                t0: arrived,
                place: v.place,
                kind: v.kind,
            });
        }
        Trajectory { segs }
    }

    /// Whereabouts at `t_ms` (before the first visit: at the first place).
    pub fn at(&self, t_ms: i64) -> Whereabouts {
        let i = self
            .segs
            .partition_point(|s| s.t0() <= t_ms)
            .saturating_sub(1);
        match &self.segs[i] {
            Seg::Stay { place, kind, .. } => Whereabouts {
                pos: *place,
                speed: 0.0,
                heading: 0.0,
                place: Some(*kind),
            },
            Seg::Move {
                t0,
                path,
                len,
                speed,
                ..
            } => {
                let d = ((t_ms - t0) as f64 / 1000.0 * speed).min(*len);
                let (pos, heading) = along(path, d);
                Whereabouts {
                    pos,
                    speed: *speed,
                    heading,
                    place: None,
                }
            }
        }
    }

    /// When the person arrives at the first visit of `kind` at or after
    /// `from_ms`.
    pub fn arrival(&self, kind: PlaceKind, from_ms: i64) -> Option<i64> {
        self.segs.iter().find_map(|s| match s {
            Seg::Stay { t0, kind: k, .. } if *k == kind && *t0 >= from_ms => Some(*t0),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_continuously_between_visits() {
        let home = P::new(0.0, 0.0);
        let work = P::new(2_600.0, 1_400.0);
        let t = Trajectory::build(vec![
            Visit {
                at_ms: 0,
                place: home,
                kind: PlaceKind::Home,
            },
            Visit {
                at_ms: 3_600_000,
                place: work,
                kind: PlaceKind::Work,
            },
            Visit {
                at_ms: 7_200_000,
                place: home,
                kind: PlaceKind::Home,
            },
        ]);
        assert_eq!(t.at(1_000).place, Some(PlaceKind::Home));
        assert_eq!(t.at(3_600_000).place, Some(PlaceKind::Work));
        assert_eq!(t.at(3_600_000).pos, work);
        // Never faster than the driving speed between samples a second apart.
        let mut prev = t.at(0).pos;
        for s in 1..9_000 {
            let p = t.at(s * 1000).pos;
            assert!(
                p.dist(prev) <= 11.0 + 0.01,
                "jump at {s}s: {prev:?} -> {p:?}"
            );
            prev = p;
        }
        assert_eq!(
            t.arrival(PlaceKind::Home, 1),
            Some(t.arrival(PlaceKind::Home, 4_000_000).unwrap())
        );
    }
}
