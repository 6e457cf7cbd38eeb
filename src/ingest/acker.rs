//! Ordered acknowledgement: a PUBACK goes out only after everything the
//! message produced is committed, and acks leave in the order the publishes
//! arrived (MQTT 5 §4.6), although shards commit in any order.
//!
//! The MQTT source registers each QoS 1 publish here as it arrives (a short
//! synchronous lock: the source never awaits). Shards report committed
//! tickets; the acker task releases the longest committed prefix. A
//! reconnect starts a new epoch: tickets of the old connection are dropped,
//! their messages come back as redeliveries (storage is idempotent), and no
//! ack of an old connection is ever sent on a new one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Identifies one registered publish; handed back after commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckTicket {
    epoch: u64,
    idx: u64,
}

#[derive(Debug)]
struct Pending {
    pkid: u16,
    qos: QoS,
    received: Instant,
    committed: bool,
}

/// Arrival-ordered record of unacknowledged publishes.
#[derive(Debug, Default)]
pub struct AckQueue {
    epoch: u64,
    /// Index of `pending[0]`.
    base: u64,
    pending: VecDeque<Pending>,
}

/// A PUBACK ready to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyAck {
    /// Packet id on the current connection.
    pub pkid: u16,
    /// QoS of the publish (1, or 2 which is answered with PUBREC).
    pub qos: QoS,
    /// Connection epoch it belongs to.
    pub epoch: u64,
}

impl AckQueue {
    /// Starts a new connection epoch, forgetting the old one's publishes.
    pub fn new_epoch(&mut self) -> u64 {
        self.epoch += 1;
        self.base = 0;
        self.pending.clear();
        self.epoch
    }

    /// Current connection epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Registers an arrived publish.
    pub fn register(&mut self, pkid: u16, qos: QoS, now: Instant) -> AckTicket {
        let idx = self.base + self.pending.len() as u64;
        self.pending.push_back(Pending {
            pkid,
            qos,
            received: now,
            committed: false,
        });
        AckTicket {
            epoch: self.epoch,
            idx,
        }
    }

    /// Withdraws the most recent registration (its publish could not be
    /// queued): it will not be acked on this connection, and the broker
    /// redelivers it after the next reconnect. Returns false if `t` is not
    /// the most recent registration.
    pub fn withdraw_last(&mut self, t: AckTicket) -> bool {
        let last = self.base + self.pending.len() as u64;
        if t.epoch == self.epoch && last > 0 && t.idx == last - 1 && !self.pending.is_empty() {
            self.pending.pop_back();
            true
        } else {
            false
        }
    }

    /// Marks tickets committed and returns the acks now releasable, in
    /// arrival order. Tickets from another epoch are ignored.
    pub fn commit(&mut self, tickets: &[AckTicket]) -> Vec<ReadyAck> {
        for t in tickets.iter().filter(|t| t.epoch == self.epoch) {
            if let Some(p) = t
                .idx
                .checked_sub(self.base)
                .and_then(|i| self.pending.get_mut(i as usize))
            {
                p.committed = true;
            }
        }
        let mut ready = Vec::new();
        while self.pending.front().is_some_and(|p| p.committed) {
            let p = self.pending.pop_front().expect("front checked");
            self.base += 1;
            ready.push(ReadyAck {
                pkid: p.pkid,
                qos: p.qos,
                epoch: self.epoch,
            });
        }
        ready
    }

    /// Unacknowledged publishes.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing awaits an ack.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the oldest unacknowledged publish arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.pending.front().map(|p| p.received)
    }
}

/// The queue shared by the source (register) and the acker (release).
pub type SharedAckQueue = Arc<Mutex<AckQueue>>;

/// Releases acks until every completion sender is gone, then returns.
pub async fn run_acker(
    queue: SharedAckQueue,
    mut completions: mpsc::Receiver<Vec<AckTicket>>,
    client: AsyncClient,
    metrics: Arc<Metrics>,
    abandon: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let tickets = tokio::select! {
            t = completions.recv() => match t { Some(t) => t, None => break },
            _ = tick.tick() => Vec::new(),
        };
        let (ready, oldest, depth) = {
            let mut q = queue.lock().expect("ack queue poisoned");
            let ready = q.commit(&tickets);
            (ready, q.oldest(), q.len())
        };
        metrics
            .oldest_unacked_seconds
            .set(oldest.map_or(0.0, |t| t.elapsed().as_secs_f64()));
        metrics.set_depth("acks", depth);
        for a in ready {
            // A reconnect between release and send: rumqttc drops queued
            // PubAcks when a connection dies, and we skip those that are
            // visibly stale here.
            if queue.lock().expect("ack queue poisoned").epoch() != a.epoch {
                continue;
            }
            let mut p = Publish::new("", a.qos, Vec::new(), None);
            p.pkid = a.pkid;
            let sent = tokio::select! {
                r = client.ack(&p) => r.is_ok(),
                // Shutdown with no broker: the request channel may never drain.
                _ = abandon.cancelled() => false,
            };
            if !sent {
                // The event loop is gone: nothing more can be acked; the
                // broker redelivers the rest.
                return;
            }
            metrics.messages_acked.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_leave_in_arrival_order_only() {
        let now = Instant::now();
        let mut q = AckQueue::default();
        q.new_epoch();
        let t: Vec<_> = (1..=4)
            .map(|p| q.register(p, QoS::AtLeastOnce, now))
            .collect();
        // Later messages committed first: nothing may be released yet.
        assert!(q.commit(&[t[2], t[1]]).is_empty());
        let ready: Vec<u16> = q.commit(&[t[0]]).iter().map(|a| a.pkid).collect();
        assert_eq!(ready, vec![1, 2, 3]);
        assert_eq!(q.len(), 1);
        let ready: Vec<u16> = q.commit(&[t[3]]).iter().map(|a| a.pkid).collect();
        assert_eq!(ready, vec![4]);
        assert!(q.is_empty());
        // Double commit is harmless.
        assert!(q.commit(&[t[3]]).is_empty());
    }

    #[test]
    fn a_withdrawn_publish_does_not_block_the_ones_after_it() {
        let now = Instant::now();
        let mut q = AckQueue::default();
        q.new_epoch();
        let a = q.register(1, QoS::AtLeastOnce, now);
        let b = q.register(2, QoS::AtLeastOnce, now);
        assert!(
            !q.withdraw_last(a),
            "only the newest registration can be withdrawn"
        );
        assert!(q.withdraw_last(b));
        let c = q.register(3, QoS::AtLeastOnce, now);
        let ready: Vec<u16> = q.commit(&[c, a]).iter().map(|r| r.pkid).collect();
        assert_eq!(ready, vec![1, 3]);
    }

    #[test]
    fn old_connection_tickets_are_never_acked() {
        let now = Instant::now();
        let mut q = AckQueue::default();
        q.new_epoch();
        let old = q.register(7, QoS::AtLeastOnce, now);
        q.new_epoch();
        let new = q.register(7, QoS::AtLeastOnce, now);
        assert!(q.commit(&[old]).is_empty(), "stale ticket released");
        assert_eq!(q.commit(&[new]).len(), 1);
    }
}
