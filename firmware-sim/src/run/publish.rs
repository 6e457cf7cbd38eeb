//! Publishing connections: each one owns a share of the devices and sends
//! their messages on schedule (open loop), QoS 1, while a second task polls
//! the connection's event loop and matches PUBACKs to publishes.
//!
//! Open loop: a message's send time is fixed by the simulated clock, not by
//! when the previous message was acknowledged. When the broker or the server
//! falls behind, the generator sends late rather than later-and-slower, and
//! every latency is measured from the *scheduled* time, so a stall shows up
//! in the percentiles instead of being hidden (no coordinated omission).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::stats::{Sent, Stats};
use crate::device::DeviceSim;
use crate::encode::{telemetry_topic, Encoding};

/// The mapping from simulated to real time.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Real instant of simulated `s0_ms`.
    pub r0: Instant,
    /// Start of the simulated window, epoch ms.
    pub s0_ms: i64,
    /// Length of the simulated window, ms.
    pub span_ms: i64,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Message interval (simulated), ms.
    pub interval_ms: i64,
}

impl Pacing {
    /// Real instant at which simulated time `t_ms` is due.
    pub fn due(&self, t_ms: i64) -> Instant {
        self.r0
            + Duration::from_secs_f64(((t_ms - self.s0_ms) as f64 / self.speed / 1000.0).max(0.0))
    }
}

/// What a connection needs besides its devices.
pub struct ConnSpec {
    /// MQTT options (client id, credentials, keep-alive, inflight).
    pub options: MqttOptions,
    /// Topic prefix of the deployment.
    pub prefix: String,
    /// Payload encoding.
    pub encoding: Encoding,
}

/// A device with its place in the fleet-wide tables.
pub struct Slot {
    /// The device.
    pub dev: DeviceSim,
    /// Offset of its messages within the interval, ms.
    pub phase_ms: i64,
    /// Index into the fleet-wide [`Sent`] rings.
    pub ring: usize,
}

/// Sends the devices' messages until the window ends or `stop` fires;
/// returns the devices (for their ground truth) and the client, whose event
/// loop keeps running until `done` fires so late PUBACKs are still counted.
pub async fn run(
    spec: ConnSpec,
    mut slots: Vec<Slot>,
    pacing: Pacing,
    stats: Arc<Stats>,
    rings: Arc<Vec<Mutex<Sent>>>,
    stop: CancellationToken,
    done: CancellationToken,
) -> (Vec<Slot>, tokio::task::JoinHandle<()>) {
    let (client, eventloop) = AsyncClient::new(spec.options, 4096);
    let scheduled: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let poller = tokio::spawn(poll(eventloop, scheduled.clone(), stats.clone(), done));
    slots.sort_by_key(|s| s.phase_ms);
    let end = pacing.s0_ms + pacing.span_ms;
    let mut buf = Vec::with_capacity(512);
    let mut out = Vec::new();
    let topics: Vec<String> = slots
        .iter()
        .map(|s| telemetry_topic(&spec.prefix, &s.dev.id))
        .collect();
    'rounds: for k in 0.. {
        let mut any = false;
        for (i, slot) in slots.iter_mut().enumerate() {
            let t = pacing.s0_ms + slot.phase_ms + k * pacing.interval_ms;
            if t >= end {
                continue;
            }
            any = true;
            let due = pacing.due(t);
            let now = Instant::now();
            if due > now + Duration::from_micros(300) {
                tokio::select! {
                    _ = stop.cancelled() => break 'rounds,
                    _ = tokio::time::sleep_until(due) => {}
                }
            } else if now.duration_since(due) > Duration::from_millis(100) {
                stats.behind.fetch_add(1, Ordering::Relaxed);
            }
            if stop.is_cancelled() {
                break 'rounds;
            }
            slot.dev
                .tick(t, chrono::Utc::now().timestamp_millis(), &mut out);
            for m in out.drain(..) {
                m.encode(spec.encoding, &mut buf);
                let span = m
                    .fixes
                    .iter()
                    .map(|f| f.ts_ms)
                    .chain(m.events.iter().map(|e| e.ts_ms))
                    .fold((i64::MAX, i64::MIN), |(a, b), t| (a.min(t), b.max(t)));
                if let Ok(mut r) = rings[slot.ring].lock() {
                    r.push(span.0, span.1, due.into_std());
                }
                if let Ok(mut q) = scheduled.lock() {
                    q.push_back(due);
                }
                let publish = client.publish_bytes(
                    topics[i].clone(),
                    QoS::AtLeastOnce,
                    false,
                    Bytes::copy_from_slice(&buf),
                );
                // A publish waits when the client's queue is full (a stalled
                // broker): Ctrl-C must still end the run.
                let res = tokio::select! {
                    _ = stop.cancelled() => break 'rounds,
                    r = publish => r,
                };
                if res.is_err() {
                    // The event loop is gone (shutdown): nothing more can be sent.
                    break 'rounds;
                }
                stats.sent.fetch_add(1, Ordering::Relaxed);
                if !slot.dev.is_victim {
                    stats
                        .fixes
                        .fetch_add(m.fixes.len() as u64, Ordering::Relaxed);
                }
            }
        }
        if !any {
            break;
        }
    }
    let c = client.clone();
    let handle = tokio::spawn(async move {
        // Keep the client (and so the event loop's request channel) alive
        // until the poller is told to stop.
        let _c = c;
        poller.await.ok();
    });
    (slots, handle)
}

/// Polls the event loop: matches each outgoing publish to its scheduled
/// time (publishes leave in request order) and each PUBACK to its publish.
async fn poll(
    mut el: EventLoop,
    scheduled: Arc<Mutex<VecDeque<Instant>>>,
    stats: Arc<Stats>,
    done: CancellationToken,
) {
    let mut inflight: HashMap<u16, Instant> = HashMap::new();
    let mut connected = false;
    loop {
        let ev = tokio::select! {
            _ = done.cancelled() => return,
            ev = el.poll() => ev,
        };
        match ev {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                // A retransmission after a reconnect (persistent session)
                // reuses its packet id and was already matched.
                if inflight.contains_key(&pkid) {
                    continue;
                }
                if let Some(at) = scheduled.lock().ok().and_then(|mut q| q.pop_front()) {
                    inflight.insert(pkid, at);
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                // With our persistent session the client re-sends what was
                // in flight; if the broker lost the session, the client
                // dropped it instead, and those publishes stay unacknowledged.
                if connected && !ack.session_present {
                    stats.sessions_lost.fetch_add(1, Ordering::Relaxed);
                    inflight.clear();
                }
                connected = true;
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(at) = inflight.remove(&ack.pkid) {
                    let us = Instant::now().saturating_duration_since(at).as_micros() as u64;
                    if let Ok(mut h) = stats.puback.lock() {
                        h.record(us);
                    }
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.conn_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "MQTT connection error; reconnecting");
                tokio::select! {
                    _ = done.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}
