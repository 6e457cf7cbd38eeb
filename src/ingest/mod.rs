//! From the broker to the shards, and acks back.
//!
//! [`mqtt`] polls the broker and hands each publish, as an [`Incoming`], to
//! the shard that owns its device; [`acker`] sends PUBACKs in arrival order
//! once the shards report the commit.

pub mod acker;
pub mod mqtt;
pub mod topic;

use bytes::Bytes;
use chrono::{DateTime, Utc};

pub use acker::AckTicket;

/// One received publish on its way to a shard.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Topic it was published on.
    pub topic: String,
    /// Raw payload (shared with the MQTT buffer, not copied).
    pub payload: Bytes,
    /// Server receive time (injectable clock).
    pub received_at: DateTime<Utc>,
    /// Present for QoS ≥ 1: returned to the acker after commit.
    pub ticket: Option<AckTicket>,
}
