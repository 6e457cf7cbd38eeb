//! Latest victim-device positions, shared across shards.
//!
//! A victim's device and the supervisee's device may live on different
//! shards. The proximity alert belongs to the supervisee's device, so only
//! its shard decides it (one owner, no cross-shard races); the victim's shard
//! only posts the victim's newest position here. The cost: proximity is
//! re-evaluated when the supervisee's device reports, i.e. within one of its
//! reporting intervals. Positions are kept in memory only, never stored, and
//! only the newest per victim device.

use std::collections::HashMap;
use std::sync::RwLock;

use chrono::{DateTime, Utc};

/// A victim device's newest position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VictimFix {
    /// Fix time.
    pub at: DateTime<Utc>,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Accuracy radius, metres.
    pub acc: f32,
}

/// The board.
#[derive(Debug, Default)]
pub struct VictimBoard {
    newest: RwLock<HashMap<i64, VictimFix>>,
}

impl VictimBoard {
    /// Records `fix` if it is newer than what is there.
    pub fn update(&self, device_key: i64, fix: VictimFix) {
        let mut m = self.newest.write().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(device_key).or_insert(fix);
        if fix.at > e.at {
            *e = fix;
        }
    }

    /// The newest position of a victim device.
    pub fn get(&self, device_key: i64) -> Option<VictimFix> {
        let m = self.newest.read().unwrap_or_else(|p| p.into_inner());
        m.get(&device_key).copied()
    }

    /// Forgets devices no longer paired.
    pub fn retain(&self, keep: impl Fn(i64) -> bool) {
        let mut m = self.newest.write().unwrap_or_else(|p| p.into_inner());
        m.retain(|k, _| keep(*k));
    }
}
