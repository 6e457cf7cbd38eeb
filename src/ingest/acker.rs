//! Ordered acknowledgement: a PUBACK goes out only after everything the
//! message produced is committed, and acks leave in the order the publishes
//! arrived (MQTT 5 §4.6), although shards commit in any order.
//!
//! [`AckQueue`] is owned by the MQTT source task, the only task that talks to
//! the event loop: it registers each QoS ≥ 1 publish as it arrives, marks
//! tickets committed as the shards report them, and sends the releasable
//! prefix with non-blocking `try_ack`. A connection loss starts a new epoch
//! at once: tickets of the old connection are forgotten (their messages come
//! back as redeliveries, which storage absorbs), so no ack of an old
//! connection can be queued for a new one.

use std::collections::VecDeque;

use rumqttc::v5::mqttbytes::QoS;
use tokio::time::Instant;

/// Identifies one registered publish; handed back after commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckTicket {
    epoch: u64,
    idx: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Handed to a shard, not yet committed.
    Waiting,
    /// Committed; releasable once everything before it is.
    Committed,
    /// Could not be queued (shard queue full): never acked on this
    /// connection, so everything after it waits for the next one.
    Deferred,
}

#[derive(Debug)]
struct Pending {
    pkid: u16,
    qos: QoS,
    received: Instant,
    state: State,
}

/// Arrival-ordered record of unacknowledged publishes on one connection.
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
    /// QoS of the publish.
    pub qos: QoS,
}

impl AckQueue {
    /// Starts a new connection epoch, forgetting the old one's publishes.
    pub fn new_epoch(&mut self) -> u64 {
        self.epoch += 1;
        self.base = 0;
        self.pending.clear();
        self.epoch
    }

    /// Registers an arrived publish.
    pub fn register(&mut self, pkid: u16, qos: QoS, now: Instant) -> AckTicket {
        self.push(pkid, qos, now, State::Waiting)
    }

    /// Registers an arrived publish that could not be queued. It holds back
    /// every later ack on this connection, which keeps acks in order; the
    /// source reconnects once that is all that is left, and the broker then
    /// redelivers it (and anything behind it not yet acked).
    pub fn defer(&mut self, pkid: u16, qos: QoS, now: Instant) {
        self.push(pkid, qos, now, State::Deferred);
    }

    fn push(&mut self, pkid: u16, qos: QoS, received: Instant, state: State) -> AckTicket {
        let idx = self.base + self.pending.len() as u64;
        self.pending.push_back(Pending {
            pkid,
            qos,
            received,
            state,
        });
        AckTicket {
            epoch: self.epoch,
            idx,
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
                if p.state == State::Waiting {
                    p.state = State::Committed;
                }
            }
        }
        let mut ready = Vec::new();
        while self
            .pending
            .front()
            .is_some_and(|p| p.state == State::Committed)
        {
            let p = self.pending.pop_front().expect("front checked");
            self.base += 1;
            ready.push(ReadyAck {
                pkid: p.pkid,
                qos: p.qos,
            });
        }
        ready
    }

    /// Whether the oldest unacknowledged publish is a deferred one: nothing
    /// more can be acked on this connection.
    pub fn blocked_on_deferred(&self) -> bool {
        self.pending
            .front()
            .is_some_and(|p| p.state == State::Deferred)
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
    fn a_deferred_publish_holds_back_everything_after_it() {
        let now = Instant::now();
        let mut q = AckQueue::default();
        q.new_epoch();
        let a = q.register(1, QoS::AtLeastOnce, now);
        q.defer(2, QoS::AtLeastOnce, now);
        let c = q.register(3, QoS::AtLeastOnce, now);
        let ready: Vec<u16> = q.commit(&[c, a]).iter().map(|r| r.pkid).collect();
        assert_eq!(ready, vec![1], "3 must not overtake the deferred 2");
        assert!(q.blocked_on_deferred());
        q.new_epoch();
        assert!(q.is_empty() && !q.blocked_on_deferred());
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
