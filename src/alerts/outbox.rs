//! Consumers of the alert-event log.
//!
//! The log (`alert_events`) is the source of truth and is never dropped
//! from. Two readers follow it, each at its own pace:
//! - [`run_mqtt`] publishes every entry on `em/v1/alerts/{device_id}`, QoS 1,
//!   on its own client (never the ingest session), and records its progress
//!   in the database after the broker acknowledged; delivery is
//!   at-least-once, and `event_id` lets integrations drop repeats.
//! - [`run_live`] feeds a bounded broadcast channel for live views. Policy: a
//!   live view that falls more than [`LIVE_CAPACITY`] entries behind gets
//!   `Lagged` and must re-read from the log (the API replays from
//!   `Last-Event-ID`), so a slow browser never holds anything up.
//!
//! Shards wake both after committing alert changes; a 1 s poll covers
//! changes committed by other instances or tools (officer actions).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::AlertEvent;
use crate::ingest::mqtt::MqttConfig;
use crate::store::Store;

/// Live-view buffer; beyond it a view lags and replays from the log.
pub const LIVE_CAPACITY: usize = 1024;
/// Log entries read per round.
const PAGE: i64 = 256;
/// Cursor name of the MQTT publisher.
pub const MQTT_CONSUMER: &str = "mqtt";

/// Wake-ups and the live channel.
#[derive(Debug)]
pub struct Outbox {
    wake_mqtt: Notify,
    wake_live: Notify,
    live: broadcast::Sender<AlertEvent>,
}

impl Outbox {
    /// A new outbox.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            wake_mqtt: Notify::new(),
            wake_live: Notify::new(),
            live: broadcast::channel(LIVE_CAPACITY).0,
        })
    }

    /// New log entries were committed.
    pub fn wake(&self) {
        self.wake_mqtt.notify_one();
        self.wake_live.notify_one();
    }

    /// Subscribes a live view.
    pub fn subscribe(&self) -> broadcast::Receiver<AlertEvent> {
        self.live.subscribe()
    }
}

async fn wait(n: &Notify, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = n.notified() => true,
        _ = tokio::time::sleep(Duration::from_secs(1)) => true,
    }
}

/// Wakes the log readers every `every`, for a database that cannot notify
/// (SQLite) of entries other processes append (`waypoint alerts` decisions).
/// A wake with nothing new costs one indexed read of the log's head.
pub async fn poll_wake(outbox: Arc<Outbox>, every: std::time::Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => outbox.wake(),
        }
    }
}

/// Feeds live views from the log's head onwards.
pub async fn run_live<S: Store>(store: S, outbox: Arc<Outbox>, cancel: CancellationToken) {
    let mut cursor = loop {
        match store.alert_event_head().await {
            Ok(h) => break h,
            Err(e) => {
                tracing::warn!(error = %e, "live alert feed waiting for the database");
                if !wait(&outbox.wake_live, &cancel).await {
                    return;
                }
            }
        }
    };
    while wait(&outbox.wake_live, &cancel).await {
        loop {
            match store.alert_events_after(cursor, PAGE).await {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    for e in events {
                        cursor = e.event_id;
                        // No receivers is fine: nobody is watching.
                        let _ = outbox.live.send(e);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "live alert feed read failed");
                    break;
                }
            }
        }
    }
}

/// Publishes the log on MQTT until cancelled.
pub async fn run_mqtt<S: Store>(
    store: S,
    outbox: Arc<Outbox>,
    mqtt: MqttConfig,
    cancel: CancellationToken,
) {
    let mut o = MqttOptions::new(format!("{}-alerts", mqtt.client_id), &mqtt.host, mqtt.port);
    o.set_keep_alive(mqtt.keep_alive).set_clean_start(true);
    if let Some((u, p)) = &mqtt.credentials {
        o.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(o, PAGE as usize + 16);
    // The event loop is polled by its own task (never awaited from the
    // publishing side, which could deadlock on a full request channel);
    // PUBACKs come back through a channel bounded like the request channel.
    let (acks_tx, mut acks) = mpsc::channel::<()>(PAGE as usize + 16);
    let poller = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            loop {
                let ev = tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = eventloop.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if !matches!(
                            ack.reason,
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                        ) {
                            // Retrying cannot fix a refusal (typically the
                            // broker ACL); the log keeps the event either way.
                            tracing::warn!(reason = ?ack.reason, "broker refused an alert publish");
                        }
                        let _ = acks_tx.try_send(());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "alert publisher: broker connection failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    });
    let mut cursor: Option<i64> = None;
    while wait(&outbox.wake_mqtt, &cancel).await {
        let from = match cursor {
            Some(c) => c,
            None => match store.outbox_cursor(MQTT_CONSUMER).await {
                Ok(c) => *cursor.insert(c),
                Err(_) => continue,
            },
        };
        let events = match store.alert_events_after(from, PAGE).await {
            Ok(e) if e.is_empty() => continue,
            Ok(e) => e,
            Err(_) => continue,
        };
        while acks.try_recv().is_ok() {}
        let mut sent = 0;
        for e in &events {
            let topic = format!("{}em/v1/alerts/{}", mqtt.topic_prefix, e.device_id);
            let payload = serde_json::to_vec(e).unwrap_or_default();
            if client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        let mut acked = 0;
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        while acked < sent {
            tokio::select! {
                _ = &mut deadline => break,
                a = acks.recv() => if a.is_none() { break } else { acked += 1 },
            }
        }
        if acked < events.len() {
            // Not all confirmed: publish the page again later (at least once).
            tracing::warn!(
                acked,
                pending = events.len(),
                "alert publisher: broker did not confirm; will retry"
            );
            continue;
        }
        let last = events.last().map_or(from, |e| e.event_id);
        if store.set_outbox_cursor(MQTT_CONSUMER, last).await.is_ok() {
            cursor = Some(last);
        }
        if events.len() as i64 == PAGE {
            outbox.wake_mqtt.notify_one();
        }
    }
    let _ = client.disconnect().await;
    poller.abort();
}
