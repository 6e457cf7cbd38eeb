//! The MQTT source: one persistent MQTT v5 session per server instance, and
//! the only task that talks to rumqttc's event loop.
//!
//! It keeps one `poll()` future alive across loop turns (cancelling it could
//! cut a connect or a write in half) and, beside it, takes committed tickets
//! from the shards and sends the releasable PUBACKs with non-blocking
//! `try_ack`. Acks and connection changes are therefore handled by one task
//! in one order: when the connection drops, the acks of the old connection
//! are forgotten before anything else happens.
//!
//! Back-pressure is applied by withholding acks, never by pausing this loop
//! (keep-alive pings are sent from it): with Receive Maximum set, the broker
//! stops sending once that many publishes are unacknowledged, which is why a
//! shard queue sized to Receive Maximum normally cannot overflow. It can after
//! a reconnect while the database is down: the old connection's messages
//! still sit in the queue when the broker redelivers them. Such a publish is
//! *deferred* ([`AckQueue::defer`]): never dropped, never acked out of order;
//! once the shard queues have drained the source reconnects and the broker
//! delivers it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acker::{AckQueue, AckTicket, ReadyAck};
use super::topic;
use super::Incoming;
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::track::ShardRouter;

/// Broker connection settings.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Username and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// Client id; unique per server instance and stable across restarts so
    /// the broker resumes the session (and its queued messages).
    pub client_id: String,
    /// Topic prefix (empty or ending in `/`).
    pub topic_prefix: String,
    /// Seconds the broker keeps the session (and queues QoS 1 messages)
    /// while the server is away. rumqttc's default, 0, keeps nothing.
    pub session_expiry_secs: u32,
    /// Receive Maximum: unacknowledged publishes the broker may have in
    /// flight to us; bounds every queue downstream.
    pub receive_maximum: u16,
    /// Maximum packet size we accept (advertised to the broker).
    pub max_packet_bytes: u32,
    /// Keep-alive interval.
    pub keep_alive: Duration,
}

/// Broker address parsed from a URL: host, port, optional credentials.
pub type BrokerAddr = (String, u16, Option<(String, String)>);

/// Parses `mqtt://[user:pass@]host[:port]`.
pub fn parse_url(url: &str) -> Result<BrokerAddr, String> {
    let u = url::Url::parse(url).map_err(|e| format!("invalid MQTT URL {url:?}: {e}"))?;
    if !matches!(u.scheme(), "mqtt" | "tcp") {
        return Err(format!(
            "MQTT URL scheme {:?} is not supported; use mqtt://host:port",
            u.scheme()
        ));
    }
    let host = u
        .host_str()
        .ok_or_else(|| format!("MQTT URL {url:?} has no host"))?
        .to_owned();
    let creds = (!u.username().is_empty()).then(|| {
        (
            u.username().to_owned(),
            u.password().unwrap_or_default().to_owned(),
        )
    });
    Ok((host, u.port().unwrap_or(1883), creds))
}

impl MqttConfig {
    /// rumqttc options for the ingest session.
    pub fn options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(&self.client_id, &self.host, self.port);
        o.set_keep_alive(self.keep_alive)
            .set_clean_start(false)
            .set_session_expiry_interval(Some(self.session_expiry_secs))
            .set_receive_maximum(Some(self.receive_maximum))
            .set_max_packet_size(Some(self.max_packet_bytes))
            .set_manual_acks(true);
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u, p);
        }
        o
    }
}

/// Shared connection state for readiness.
#[derive(Debug, Default)]
pub struct MqttStatus {
    /// True between ConnAck and the next connection error.
    pub connected: AtomicBool,
    /// True once the broker granted every subscription on this connection.
    pub subscribed: AtomicBool,
    /// Server-clock time the current subscription was granted: the
    /// no_signal watchdog counts silence only from then.
    pub subscribed_since: std::sync::Mutex<Option<chrono::DateTime<chrono::Utc>>>,
}

impl MqttStatus {
    /// When ingest started hearing devices on the current connection.
    pub fn hearing_since(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        if !self.subscribed.load(Ordering::SeqCst) {
            return None;
        }
        *self
            .subscribed_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn set_subscribed(&self, since: Option<chrono::DateTime<chrono::Utc>>) {
        *self
            .subscribed_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = since;
        self.subscribed.store(since.is_some(), Ordering::SeqCst);
    }
}

/// Why the source stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A shard's queue closed while the source was running: the shard task
    /// ended unexpectedly, and nothing routed to it could be processed.
    #[error("a shard stopped unexpectedly; ingest cannot continue")]
    ShardStopped,
}

/// How long to wait for our final DISCONNECT to be written at shutdown.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the source needs.
pub struct Source {
    /// Broker settings.
    pub cfg: MqttConfig,
    /// Client handle (subscribe, ack, disconnect).
    pub client: AsyncClient,
    /// The event loop this task polls.
    pub eventloop: EventLoop,
    /// Shard senders; dropped at shutdown so the shards can drain and finish.
    pub router: ShardRouter,
    /// Committed tickets from the shards; closes when every shard has finished.
    pub completions: mpsc::Receiver<Vec<AckTicket>>,
    /// Receive times.
    pub clock: SharedClock,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness flags.
    pub status: Arc<MqttStatus>,
}

/// One poll of the event loop, after an optional back-off; owning the event
/// loop lets the future live across loop turns.
async fn poll_once(
    mut el: EventLoop,
    delay: Duration,
) -> (EventLoop, Result<Event, ConnectionError>) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let r = el.poll().await;
    (el, r)
}

impl Source {
    /// Runs until shutdown has drained: on `shutdown` it stops taking
    /// publishes and drops the shard senders; shards commit what they hold
    /// and finish; the final acks go out; then it disconnects (the session
    /// persists, so anything unacked is redelivered to the next start).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SourceError> {
        let Source {
            cfg,
            client,
            eventloop,
            router,
            mut completions,
            clock,
            metrics,
            status,
        } = self;
        let mut router = Some(router);
        let filters = [
            topic::native_filter(&cfg.topic_prefix),
            topic::owntracks_filter(&cfg.topic_prefix),
        ];
        let mut acks = AckQueue::default();
        // Acks released but not yet accepted by the request channel.
        let mut outbox: Vec<ReadyAck> = Vec::new();
        let mut connected = false;
        let mut completions_open = true;
        let mut need_subscribe = false;
        // Shutdown: when to give up on flushing, and whether DISCONNECT is queued.
        let mut finish_by: Option<Instant> = None;
        let mut disconnect_requested = false;
        // A resync DISCONNECT is queued; one is enough (a second would stay
        // queued and end the next connection too).
        let mut resync_requested = false;
        let mut backoff = Duration::from_millis(100);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut poll = Box::pin(poll_once(eventloop, Duration::ZERO));
        let lost = |acks: &mut AckQueue, outbox: &mut Vec<ReadyAck>| {
            acks.new_epoch();
            outbox.clear();
            status.connected.store(false, Ordering::SeqCst);
            status.set_subscribed(None);
            metrics.mqtt_connected.set(0);
        };
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if router.is_some() => {
                    // Dropping the senders closes the shard queues once empty.
                    router = None;
                }
                done = completions.recv(), if completions_open => match done {
                    Some(tickets) => {
                        outbox.extend(acks.commit(&tickets));
                        send_acks(&client, &mut outbox, &metrics);
                    }
                    None => {
                        // Every shard has finished: the final acks are released.
                        completions_open = false;
                        if !connected {
                            break;
                        }
                        finish_by = Some(Instant::now() + DISCONNECT_TIMEOUT);
                        disconnect_when_flushed(&client, &outbox, &mut disconnect_requested);
                    }
                },
                _ = tick.tick() => {
                    if finish_by.is_some_and(|d| Instant::now() > d) {
                        tracing::warn!("final acks or DISCONNECT not confirmed in time; stopping anyway");
                        break;
                    }
                    send_acks(&client, &mut outbox, &metrics);
                    if !completions_open {
                        disconnect_when_flushed(&client, &outbox, &mut disconnect_requested);
                    }
                    if need_subscribe {
                        need_subscribe = !subscribe(&client, &filters);
                    }
                    metrics.set_depth("acks", acks.len());
                    metrics.oldest_unacked_seconds.set(
                        acks.oldest().map_or(0.0, |t| t.elapsed().as_secs_f64()),
                    );
                    let queues_drained = router.as_ref().is_some_and(|r| {
                        r.senders().iter().all(|s| s.capacity() == s.max_capacity())
                    });
                    if connected && !resync_requested && acks.blocked_on_deferred() && queues_drained {
                        tracing::info!("reconnecting so the broker redelivers deferred messages");
                        resync_requested = client.try_disconnect().is_ok();
                    }
                }
                (el, ev) = &mut poll => {
                    let mut delay = Duration::ZERO;
                    match ev {
                        Ok(Event::Incoming(Packet::ConnAck(ca))) => {
                            let epoch = acks.new_epoch();
                            outbox.clear();
                            connected = true;
                            resync_requested = false;
                            status.connected.store(true, Ordering::SeqCst);
                            metrics.mqtt_connected.set(1);
                            metrics.mqtt_connects.inc();
                            backoff = Duration::from_millis(100);
                            tracing::info!(session_present = ca.session_present, epoch, "connected to broker");
                            // Subscriptions survive in a resumed session, but
                            // re-subscribing is harmless and covers an expired one.
                            need_subscribe = !subscribe(&client, &filters);
                        }
                        Ok(Event::Incoming(Packet::SubAck(ack))) => {
                            let refused: Vec<_> = ack
                                .return_codes
                                .iter()
                                .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                                .collect();
                            if refused.is_empty() {
                                status.set_subscribed(Some(clock.now()));
                            } else {
                                // Typically the broker ACL: nothing will arrive,
                                // and /readyz says so.
                                tracing::error!(?refused, ?filters, "broker refused a subscription");
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if let Some(router) = &router {
                                let r = route(p, router, &mut acks, &clock, &metrics);
                                if r.is_err() {
                                    return Err(SourceError::ShardStopped);
                                }
                            }
                            // Draining: not registered, never acked; the broker
                            // redelivers it to the next session.
                        }
                        Ok(Event::Incoming(Packet::Disconnect(d))) => {
                            tracing::warn!(reason = ?d.reason_code, "broker sent DISCONNECT");
                        }
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                            // Ours. At shutdown this is the end; otherwise a
                            // resync, and the next poll reconnects.
                            if !completions_open {
                                break;
                            }
                            connected = false;
                            lost(&mut acks, &mut outbox);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            // rumqttc has already dropped the PubAcks still in
                            // its request channel; forget this connection's
                            // tickets before anything can release more.
                            if connected {
                                tracing::warn!(error = %e, "broker connection lost");
                            } else {
                                tracing::debug!(error = %e, "broker connection attempt failed");
                            }
                            connected = false;
                            lost(&mut acks, &mut outbox);
                            if !completions_open {
                                break;
                            }
                            delay = backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                    poll = Box::pin(poll_once(el, delay));
                }
            }
        }
        lost(&mut acks, &mut outbox);
        Ok(())
    }
}

/// Registers a publish and hands it to its shard. `Err` only if the shard is gone.
fn route(
    p: Publish,
    router: &ShardRouter,
    acks: &mut AckQueue,
    clock: &SharedClock,
    metrics: &Metrics,
) -> Result<(), ()> {
    metrics.messages_received.inc();
    let now = Instant::now();
    let topic = String::from_utf8_lossy(&p.topic).into_owned();
    let permit = match router.sender_for(&topic).try_reserve() {
        Ok(permit) => permit,
        Err(TrySendError::Closed(())) => return Err(()),
        Err(TrySendError::Full(())) => {
            if p.qos == QoS::AtMostOnce {
                metrics.qos0_dropped.inc();
            } else {
                if metrics.deferred.get() == 0 {
                    tracing::warn!("shard queue full; deferring publishes until a reconnect");
                }
                acks.defer(p.pkid, p.qos, now);
                metrics.deferred.inc();
            }
            return Ok(());
        }
    };
    let ticket = (p.qos != QoS::AtMostOnce).then(|| acks.register(p.pkid, p.qos, now));
    permit.send(Incoming {
        topic,
        payload: p.payload,
        received_at: clock.now(),
        ticket,
    });
    Ok(())
}

/// At shutdown, queues DISCONNECT once every final ack is in the request
/// channel ahead of it (the channel is FIFO, so they are written first).
fn disconnect_when_flushed(client: &AsyncClient, outbox: &[ReadyAck], requested: &mut bool) {
    if !*requested && outbox.is_empty() {
        *requested = client.try_disconnect().is_ok();
    }
}

/// Hands released acks to the request channel, in order, without waiting;
/// whatever does not fit stays in `outbox` for the next turn.
fn send_acks(client: &AsyncClient, outbox: &mut Vec<ReadyAck>, metrics: &Metrics) {
    let mut sent = 0;
    for a in outbox.iter() {
        let mut p = Publish::new("", a.qos, Vec::new(), None);
        p.pkid = a.pkid;
        if client.try_ack(&p).is_err() {
            break;
        }
        sent += 1;
    }
    outbox.drain(..sent);
    metrics.messages_acked.inc_by(sent as u64);
}

/// Queues one SUBSCRIBE for all filters; false if the request channel was full.
fn subscribe(client: &AsyncClient, filters: &[String]) -> bool {
    let f = filters
        .iter()
        .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce));
    match client.try_subscribe_many(f) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "subscribe request not queued; retrying");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884, None)
        );
        assert_eq!(
            parse_url("mqtt://u:p@broker").unwrap(),
            ("broker".into(), 1883, Some(("u".into(), "p".into())))
        );
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("nonsense").is_err());
    }
}
