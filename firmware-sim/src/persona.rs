//! Personas: who the simulated supervisees are, mixed by ratio.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a simulated supervisee does during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persona {
    /// Keeps every rule: home for the curfew, routine far from zones, charges the tag.
    Compliant,
    /// Comes home after the curfew has started.
    CurfewViolator,
    /// Visits their exclusion zone.
    ExclusionEntrant,
    /// Travels out of the inclusion zone (the county).
    InclusionLeaver,
    /// Opens the strap, later closes it.
    StrapTamper,
    /// Never charges: battery low, critical, then the tag dies (silence).
    BatteryNeglect,
    /// Loses cellular coverage (buffers fixes, uploads them late and out of
    /// order on reconnect), later loses GNSS in a garage (coarse cell positions only).
    CoverageLoss,
    /// Device clock runs behind by minutes; otherwise compliant.
    ClockSkew,
    /// Comes close to the paired victim's device.
    VictimPair,
}

impl Persona {
    /// Every persona, in the order of the default mix.
    pub const ALL: [Persona; 9] = [
        Persona::Compliant,
        Persona::CurfewViolator,
        Persona::ExclusionEntrant,
        Persona::InclusionLeaver,
        Persona::StrapTamper,
        Persona::BatteryNeglect,
        Persona::CoverageLoss,
        Persona::ClockSkew,
        Persona::VictimPair,
    ];

    /// Name used on the command line and in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Persona::Compliant => "compliant",
            Persona::CurfewViolator => "curfew_violator",
            Persona::ExclusionEntrant => "exclusion_entrant",
            Persona::InclusionLeaver => "inclusion_leaver",
            Persona::StrapTamper => "strap_tamper",
            Persona::BatteryNeglect => "battery_neglect",
            Persona::CoverageLoss => "coverage_loss",
            Persona::ClockSkew => "clock_skew",
            Persona::VictimPair => "victim_pair",
        }
    }
}

impl fmt::Display for Persona {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Relative weights of the personas (`compliant=70,curfew_violator=5,...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mix(pub Vec<(Persona, u32)>);

impl Default for Mix {
    /// Mostly compliant, with every violating persona present in a fleet of
    /// a few hundred.
    fn default() -> Self {
        Mix(vec![
            (Persona::Compliant, 68),
            (Persona::CurfewViolator, 4),
            (Persona::ExclusionEntrant, 4),
            (Persona::InclusionLeaver, 4),
            (Persona::StrapTamper, 4),
            (Persona::BatteryNeglect, 4),
            (Persona::CoverageLoss, 4),
            (Persona::ClockSkew, 4),
            (Persona::VictimPair, 4),
        ])
    }
}

/// A mix that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MixError {
    /// Not `name=weight`.
    #[error("mix entry {0:?}: expected name=weight, e.g. compliant=70")]
    Syntax(String),
    /// Unknown persona name.
    #[error("unknown persona {0:?} (known: {1})")]
    Unknown(String, String),
    /// All weights zero.
    #[error("the mix needs at least one persona with a weight above 0")]
    Empty,
}

impl FromStr for Mix {
    type Err = MixError;
    fn from_str(s: &str) -> Result<Mix, MixError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part
                .split_once('=')
                .ok_or_else(|| MixError::Syntax(part.into()))?;
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| MixError::Syntax(part.into()))?;
            let p = Persona::ALL
                .into_iter()
                .find(|p| p.as_str() == name.trim())
                .ok_or_else(|| {
                    let known: Vec<_> = Persona::ALL.iter().map(|p| p.as_str()).collect();
                    MixError::Unknown(name.trim().into(), known.join(", "))
                })?;
            out.push((p, w));
        }
        if out.iter().all(|(_, w)| *w == 0) {
            return Err(MixError::Empty);
        }
        Ok(Mix(out))
    }
}

impl Mix {
    /// Deterministic assignment of personas to `n` devices: exact
    /// proportions (largest remainder), every persona with a non-zero weight
    /// present at least once when `n` allows, then spread by the caller's
    /// shuffle.
    pub fn assign(&self, n: usize) -> Vec<Persona> {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut counts: Vec<(Persona, usize, u64)> = self
            .0
            .iter()
            .map(|(p, w)| {
                let exact = n as u64 * u64::from(*w);
                (*p, (exact / total) as usize, exact % total)
            })
            .collect();
        // Small fleets: give each weighted persona one device before the
        // remainders are shared out, so a 50-device test still sees every kind.
        for c in counts.iter_mut() {
            let weighted = self.0.iter().any(|(p, w)| *p == c.0 && *w > 0);
            if c.1 == 0 && weighted {
                c.1 = 1;
                c.2 = 0;
            }
        }
        let mut assigned: usize = counts.iter().map(|c| c.1).sum();
        while assigned > n {
            // Take back from the largest group.
            let big = counts.iter_mut().max_by_key(|c| c.1).expect("non-empty");
            big.1 -= 1;
            assigned -= 1;
        }
        let mut order: Vec<usize> = (0..counts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(counts[i].2));
        for &i in order.iter().cycle().take(n - assigned) {
            counts[i].1 += 1;
        }
        counts
            .iter()
            .flat_map(|(p, c, _)| std::iter::repeat_n(*p, *c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_assigns_exact_proportions() {
        let m: Mix = "compliant=3, strap_tamper=1".parse().unwrap();
        let a = m.assign(100);
        assert_eq!(a.len(), 100);
        assert_eq!(a.iter().filter(|p| **p == Persona::StrapTamper).count(), 25);
        let d = Mix::default().assign(20);
        assert_eq!(d.len(), 20);
        for p in Persona::ALL {
            assert!(d.contains(&p), "{p} missing from a 20-device fleet");
        }
        assert!(matches!("x=1".parse::<Mix>(), Err(MixError::Unknown(..))));
        assert_eq!("compliant=0".parse::<Mix>(), Err(MixError::Empty));
        assert!(matches!(
            "compliant".parse::<Mix>(),
            Err(MixError::Syntax(_))
        ));
    }
}
