//! Per-device processing, sharded by device id.
//!
//! Every message of a device goes to the same shard, so one device's messages
//! are handled in arrival order while devices spread over shards (and
//! database connections). A shard decodes, validates and batches, keeps its
//! devices' rules state ([`ShardRules`]) and commits each batch with the
//! alert changes it caused in one transaction.

mod prepare;
mod rules;
mod shard;

pub use prepare::{prepare, PrepareConfig};
pub use rules::ShardRules;
pub use shard::{run_shard, ShardConfig, ShardContext};

use std::hash::{DefaultHasher, Hash, Hasher};

use tokio::sync::mpsc;

use crate::ingest::topic;
use crate::ingest::Incoming;

/// Sends each message to the shard that owns its device.
#[derive(Clone, Debug)]
pub struct ShardRouter {
    senders: Vec<mpsc::Sender<Incoming>>,
    prefix: String,
}

impl ShardRouter {
    /// Wraps one bounded sender per shard.
    pub fn new(senders: Vec<mpsc::Sender<Incoming>>, prefix: String) -> Self {
        assert!(!senders.is_empty(), "at least one shard");
        Self { senders, prefix }
    }

    /// The shard index for `topic`. Topics that name no device go to shard 0,
    /// which records them as refused.
    pub fn shard_of(&self, topic: &str) -> usize {
        match topic::shard_key(&topic::route(topic, &self.prefix)) {
            None => 0,
            Some(k) => {
                let mut h = DefaultHasher::new();
                k.hash(&mut h);
                (h.finish() % self.senders.len() as u64) as usize
            }
        }
    }

    /// The sender of `topic`'s shard.
    pub fn sender_for(&self, topic: &str) -> &mpsc::Sender<Incoming> {
        &self.senders[self.shard_of(topic)]
    }

    /// All senders (for queue-depth sampling).
    pub fn senders(&self) -> &[mpsc::Sender<Incoming>] {
        &self.senders
    }
}
