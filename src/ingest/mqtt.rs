//! The MQTT source: one persistent MQTT v5 session per server instance.
//!
//! The task that polls rumqttc's event loop never awaits anything else (keep-
//! alive pings are sent from that loop): it registers each publish with the
//! acker and `try_send`s it to its shard. Back-pressure is applied by
//! withholding acks, never by pausing this loop: with Receive Maximum set,
//! the broker stops sending once that many publishes are unacknowledged,
//! which is also why a shard queue sized to Receive Maximum normally cannot
//! overflow. It can after a reconnect while the database is down: the old
//! connection's messages still sit in the queue when the broker redelivers
//! them. A publish that finds its shard queue full is then *deferred*: not
//! registered, not acked; once everything else is acked the source
//! reconnects so the broker delivers it again. Nothing is dropped and the
//! poll loop never waits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Filter, Packet, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use super::acker::SharedAckQueue;
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
}

/// Everything the source needs.
pub struct Source {
    /// Broker settings.
    pub cfg: MqttConfig,
    /// Client handle (subscribe, disconnect).
    pub client: AsyncClient,
    /// The event loop this task polls.
    pub eventloop: EventLoop,
    /// Registration side of the ordered acker.
    pub acks: SharedAckQueue,
    /// Shard senders; dropped when draining so the shards can finish.
    pub router: ShardRouter,
    /// Receive times.
    pub clock: SharedClock,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness flag.
    pub status: Arc<MqttStatus>,
}

impl Source {
    /// Polls until `shutdown`; then stops taking publishes, lets the shards
    /// drain, keeps polling until `acks_done` so the final acks go out, and
    /// disconnects (the session persists; unacked messages are redelivered).
    pub async fn run(self, shutdown: CancellationToken, acks_done: CancellationToken) {
        let Source {
            cfg,
            client,
            mut eventloop,
            acks,
            router,
            clock,
            metrics,
            status,
        } = self;
        let mut router = Some(router);
        let filters = [
            topic::native_filter(&cfg.topic_prefix),
            topic::owntracks_filter(&cfg.topic_prefix),
        ];
        let mut backoff = Duration::from_millis(100);
        let mut disconnect_sent = false;
        // Publishes of this connection left unacked because their shard
        // queue was full; they come back after a reconnect.
        let mut deferred = 0u64;
        // Set on every ConnAck; cleared once the SUBSCRIBE request is queued
        // (the request channel may be momentarily full of acks).
        let mut need_subscribe = false;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let ev = tokio::select! {
                biased;
                _ = shutdown.cancelled(), if router.is_some() => {
                    // Dropping the senders closes the shard queues once empty.
                    router = None;
                    continue;
                }
                _ = acks_done.cancelled(), if router.is_none() && !disconnect_sent => {
                    disconnect_sent = true;
                    if client.try_disconnect().is_err() { break }
                    continue;
                }
                _ = tick.tick() => {
                    if need_subscribe {
                        need_subscribe = !subscribe(&client, &filters);
                    }
                    if deferred > 0
                        && router.is_some()
                        && acks.lock().expect("ack queue poisoned").is_empty()
                    {
                        tracing::info!(deferred, "reconnecting so the broker redelivers deferred messages");
                        deferred = 0;
                        let _ = client.try_disconnect();
                    }
                    continue;
                }
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ca))) => {
                    let epoch = acks.lock().expect("ack queue poisoned").new_epoch();
                    deferred = 0;
                    status.connected.store(true, Ordering::SeqCst);
                    metrics.mqtt_connected.set(1);
                    metrics.mqtt_connects.inc();
                    backoff = Duration::from_millis(100);
                    tracing::info!(
                        session_present = ca.session_present,
                        epoch,
                        "connected to broker"
                    );
                    // Subscriptions survive in a resumed session, but
                    // re-subscribing is harmless and covers an expired one.
                    status.subscribed.store(false, Ordering::SeqCst);
                    need_subscribe = !subscribe(&client, &filters);
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused: Vec<_> = ack
                        .return_codes
                        .iter()
                        .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                        .collect();
                    if refused.is_empty() {
                        status.subscribed.store(true, Ordering::SeqCst);
                    } else {
                        // Typically the broker ACL: nothing will arrive, and
                        // /readyz says so.
                        tracing::error!(?refused, ?filters, "broker refused a subscription");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Some(router) = &router else {
                        // Draining: not registered, never acked; the broker
                        // redelivers it to the next session.
                        continue;
                    };
                    metrics.messages_received.inc();
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let ticket = (p.qos != QoS::AtMostOnce).then(|| {
                        acks.lock().expect("ack queue poisoned").register(
                            p.pkid,
                            p.qos,
                            tokio::time::Instant::now(),
                        )
                    });
                    let inc = Incoming {
                        topic,
                        payload: p.payload,
                        received_at: clock.now(),
                        ticket,
                    };
                    match router.sender_for(&inc.topic).try_send(inc) {
                        Ok(()) => {}
                        Err(TrySendError::Full(inc)) => {
                            match inc.ticket {
                                None => {
                                    metrics.qos0_dropped.inc();
                                }
                                Some(t) => {
                                    acks.lock().expect("ack queue poisoned").withdraw_last(t);
                                    if deferred == 0 {
                                        tracing::warn!("shard queue full; deferring publishes until a reconnect");
                                    }
                                    deferred += 1;
                                    metrics.deferred.inc();
                                }
                            }
                        }
                        Err(TrySendError::Closed(_)) => break,
                    }
                }
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    tracing::warn!(reason = ?d.reason_code, "broker sent DISCONNECT");
                }
                // Our own DISCONNECT: the end at shutdown; otherwise a
                // resync, and the next poll reconnects.
                Ok(Event::Outgoing(Outgoing::Disconnect)) if disconnect_sent => break,
                Ok(_) => {}
                Err(e) => {
                    status.subscribed.store(false, Ordering::SeqCst);
                    if status.connected.swap(false, Ordering::SeqCst) {
                        tracing::warn!(error = %e, "broker connection lost");
                    } else {
                        tracing::debug!(error = %e, "broker connection attempt failed");
                    }
                    metrics.mqtt_connected.set(0);
                    if disconnect_sent || (router.is_none() && acks_done.is_cancelled()) {
                        break;
                    }
                    // Waiting here is safe: with no connection there is no
                    // keep-alive to send.
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = acks_done.cancelled(), if router.is_none() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        status.connected.store(false, Ordering::SeqCst);
        status.subscribed.store(false, Ordering::SeqCst);
        metrics.mqtt_connected.set(0);
    }
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
