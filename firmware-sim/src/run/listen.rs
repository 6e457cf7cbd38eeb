//! Listeners: the alert topic (ground-truth check and alert latency) and,
//! for broker-only baselines, a subscriber that only drains telemetry.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::stats::{Sent, Stats};
use crate::truth::Observed;

/// The part of an alert event (docs/rules.md) the simulator reads.
#[derive(Debug, Deserialize)]
struct AlertEvent {
    alert_id: i64,
    event_type: String,
    device_id: String,
    alert: AlertBody,
}

#[derive(Debug, Deserialize)]
struct AlertBody {
    kind: String,
    started_at: DateTime<Utc>,
    #[serde(default)]
    last_evidence_at: Option<DateTime<Utc>>,
    #[serde(default)]
    late: bool,
}

/// Connects and disconnects once: a clear error up front when the broker
/// is unreachable or refuses the credentials, instead of a load that
/// blocks on a dead connection.
pub async fn probe(options: MqttOptions) -> anyhow::Result<()> {
    let addr = format!(
        "{}:{}",
        options.broker_address().0,
        options.broker_address().1
    );
    let (client, mut el) = AsyncClient::new(options, 4);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Err(_) => anyhow::bail!("no answer from the broker at {addr} within 10 s"),
            Ok(Err(e)) => anyhow::bail!("cannot connect to the broker at {addr}: {e}"),
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => {}
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
    Ok(())
}

/// Connects with a persistent session (so a reconnect during the run
/// loses no alert: the broker keeps the subscription and queues for us),
/// subscribes, and returns once the broker granted the subscription, with
/// the task that keeps receiving until `stop` fires. The task ends by
/// removing the session from the broker, so nothing piles up for a
/// listener that is gone.
pub async fn subscribe(
    mut options: MqttOptions,
    filter: String,
    stop: CancellationToken,
    mut on_publish: impl FnMut(&[u8], &str) + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    options.set_clean_session(false);
    let forget = options.clone();
    let (client, mut el) = AsyncClient::new(options, 64);
    client.subscribe(filter.clone(), QoS::AtLeastOnce).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Err(_) => anyhow::bail!("no SUBACK for {filter} within 10 s"),
            Ok(Err(e)) => anyhow::bail!("cannot subscribe to {filter}: {e}"),
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    anyhow::bail!("the broker refused the subscription to {filter} (ACL?)");
                }
                break;
            }
            Ok(Ok(_)) => {}
        }
    }
    Ok(tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => break,
                ev = el.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p.payload, &p.topic),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "listener connection error; reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let _ = client.disconnect().await;
        forget_session(forget).await;
    }))
}

/// Ends a persistent session: a clean-session connect under the same
/// client id makes the broker discard it.
async fn forget_session(mut options: MqttOptions) {
    options.set_clean_session(true);
    let (client, mut el) = AsyncClient::new(options, 4);
    let wipe = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(_) => return,
            }
        }
        let _ = client.disconnect().await;
        let _ = el.poll().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), wipe).await;
}

/// Alerts received for this fleet, de-duplicated per alert (first `raised`).
#[derive(Default)]
pub struct Alerts {
    seen: HashSet<i64>,
    /// In arrival order.
    pub list: Vec<Observed>,
    /// Payloads that were not alert events (counted, never fatal).
    pub unreadable: u64,
}

/// Builds the alert handler: keeps alerts of the fleet's devices, and traces
/// each back to the publish of the message that decided it.
pub fn alert_handler(
    devices: Arc<HashMap<String, usize>>,
    rings: Arc<Vec<Mutex<Sent>>>,
    stats: Arc<Stats>,
    into: Arc<Mutex<Alerts>>,
) -> impl FnMut(&[u8], &str) + Send + 'static {
    move |payload, _topic| {
        let arrived = Instant::now();
        let Ok(ev) = serde_json::from_slice::<AlertEvent>(payload) else {
            if let Ok(mut a) = into.lock() {
                a.unreadable += 1;
            }
            return;
        };
        let Some(&ring) = devices.get(&ev.device_id) else {
            return; // another fleet's or a real device's alert
        };
        let Ok(mut a) = into.lock() else { return };
        if ev.event_type != "raised" || !a.seen.insert(ev.alert_id) {
            return;
        }
        // no_signal is decided by silence, not by a message: no latency.
        let latency_ms = ev
            .alert
            .last_evidence_at
            .filter(|_| ev.alert.kind != "no_signal")
            .and_then(|t| rings[ring].lock().ok()?.find(t.timestamp_millis()))
            .map(|at| arrived.saturating_duration_since(at).as_secs_f64() * 1000.0);
        if let Some(ms) = latency_ms {
            if let Ok(mut h) = stats.alert.lock() {
                h.record((ms * 1000.0) as u64);
            }
        }
        stats.alerts.fetch_add(1, Ordering::Relaxed);
        a.list.push(Observed {
            device_id: ev.device_id,
            kind: ev.alert.kind,
            alert_id: ev.alert_id,
            started_ms: ev.alert.started_at.timestamp_millis(),
            late: ev.alert.late,
            evidence_ms: ev.alert.last_evidence_at.map(|t| t.timestamp_millis()),
            latency_ms,
        });
    }
}

/// Handler for the broker-only baseline: counts what it drains.
pub fn drain_handler(stats: Arc<Stats>) -> impl FnMut(&[u8], &str) + Send + 'static {
    move |_, _| {
        stats.drained.fetch_add(1, Ordering::Relaxed);
    }
}
