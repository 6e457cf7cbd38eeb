//! Prometheus metrics, one registry per running app (no globals, so several
//! servers in one test process keep separate counts).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::domain::RejectReason;

/// `reason` label of rejection counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A [`RejectReason`] label.
    pub reason: String,
}

/// `stage` label of queue-depth gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Queue name, e.g. `shard-0`, `acks`.
    pub stage: String,
}

/// `kind` label of alert counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// An alert kind name.
    pub kind: String,
}

/// `table` label of the retention counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// `fixes`, `rejected_messages` or `messages`.
    pub table: String,
}

/// Every metric the server exports.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Publishes taken from the broker.
    pub messages_received: Counter,
    /// PUBACKs handed to the MQTT client (only ever after commit).
    pub messages_acked: Counter,
    /// Messages already stored (redeliveries, device retries).
    pub messages_duplicate: Counter,
    /// Fix rows written.
    pub fixes_stored: Counter,
    /// Rejection rows written, by reason.
    pub rejected: Family<ReasonLabels, Counter>,
    /// Wall time of one batch commit.
    pub commit_seconds: Histogram,
    /// Messages per committed batch.
    pub batch_messages: Histogram,
    /// Commit latency in microseconds with exact percentiles, for summaries
    /// (benchmarks, the demo); Prometheus gets the bucketed histogram.
    pub commit_latency_us: Mutex<hdrhistogram::Histogram<u64>>,
    /// Receive time minus fix time: how late fixes arrive (coverage loss, buffering).
    pub fix_lag_seconds: Histogram,
    /// Items waiting in each bounded queue.
    pub queue_depth: Family<StageLabels, Gauge>,
    /// Age of the oldest message received but not yet acknowledged.
    pub oldest_unacked_seconds: Gauge<f64, AtomicU64>,
    /// Commit attempts that failed transiently and were retried.
    pub store_retries: Counter,
    /// 1 while connected to the broker.
    pub mqtt_connected: Gauge,
    /// Connections (re-)established to the broker.
    pub mqtt_connects: Counter,
    /// QoS 1 publishes left unacked (for redelivery after a reconnect)
    /// because their shard queue was full.
    pub deferred: Counter,
    /// QoS 0 publishes dropped because a shard queue was full (QoS 0
    /// carries no delivery promise; QoS 1 is never dropped this way).
    pub qos0_dropped: Counter,
    /// Alerts raised (new rows, not updates), by kind.
    pub alerts_raised: Family<KindLabels, Counter>,
    /// Rules evaluation time per batch (CPU, inside the transaction).
    pub rules_eval_seconds: Histogram,
    /// Rows deleted by retention, by table.
    pub retention_purged: Family<TableLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts what a commit raised.
    pub fn record_alerts(&self, report: &crate::store::CommitReport) {
        for k in &report.alerts_raised {
            self.alerts_raised
                .get_or_create(&KindLabels {
                    kind: k.as_str().to_owned(),
                })
                .inc();
        }
    }

    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("waypoint");
        let m = Self {
            messages_received: Counter::default(),
            messages_acked: Counter::default(),
            messages_duplicate: Counter::default(),
            fixes_stored: Counter::default(),
            rejected: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            batch_messages: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            commit_latency_us: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
                    .expect("static histogram bounds are valid"),
            ),
            fix_lag_seconds: Histogram::new(exponential_buckets(0.1, 4.0, 12)),
            queue_depth: Family::default(),
            oldest_unacked_seconds: Gauge::default(),
            store_retries: Counter::default(),
            mqtt_connected: Gauge::default(),
            mqtt_connects: Counter::default(),
            qos0_dropped: Counter::default(),
            deferred: Counter::default(),
            alerts_raised: Family::default(),
            rules_eval_seconds: Histogram::new(exponential_buckets(0.000_001, 4.0, 12)),
            retention_purged: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_received",
            "MQTT publishes received",
            m.messages_received.clone(),
        );
        registry.register(
            "messages_acked",
            "PUBACKs sent after commit",
            m.messages_acked.clone(),
        );
        registry.register(
            "messages_duplicate",
            "Redelivered or repeated messages already stored",
            m.messages_duplicate.clone(),
        );
        registry.register("fixes_stored", "Fix rows committed", m.fixes_stored.clone());
        registry.register(
            "alerts_raised",
            "Alerts raised, by kind",
            m.alerts_raised.clone(),
        );
        registry.register(
            "rules_eval_seconds",
            "Rules evaluation time per batch",
            m.rules_eval_seconds.clone(),
        );
        registry.register(
            "messages_rejected",
            "Rejections recorded, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "commit_seconds",
            "Batch commit latency",
            m.commit_seconds.clone(),
        );
        registry.register(
            "batch_messages",
            "Messages per committed batch",
            m.batch_messages.clone(),
        );
        registry.register(
            "fix_lag_seconds",
            "Receive time minus fix time",
            m.fix_lag_seconds.clone(),
        );
        registry.register(
            "queue_depth",
            "Items waiting in bounded queues",
            m.queue_depth.clone(),
        );
        registry.register(
            "oldest_unacked_seconds",
            "Age of the oldest unacknowledged message",
            m.oldest_unacked_seconds.clone(),
        );
        registry.register(
            "store_retries",
            "Transient commit failures retried",
            m.store_retries.clone(),
        );
        registry.register(
            "mqtt_connected",
            "1 while connected to the broker",
            m.mqtt_connected.clone(),
        );
        registry.register(
            "mqtt_connects",
            "Broker connections established",
            m.mqtt_connects.clone(),
        );
        registry.register(
            "messages_deferred",
            "QoS 1 publishes left unacked for redelivery because their shard queue was full \
             (a broker exceeding Receive Maximum)",
            m.deferred.clone(),
        );
        registry.register(
            "qos0_dropped",
            "QoS 0 publishes dropped on a full queue",
            m.qos0_dropped.clone(),
        );
        registry.register(
            "retention_purged_rows",
            "Rows deleted by retention (past retention, not alert evidence), by table",
            m.retention_purged.clone(),
        );
        for t in PURGED_TABLES {
            let _ = m.retention_purged.get_or_create(&table(t));
        }
        // Pre-create every reason so dashboards see zeros, not gaps.
        for r in RejectReason::ALL {
            let _ = m.rejected.get_or_create(&reason(r));
        }
        // Every kind shows from the start, at 0, so dashboards see them.
        for k in crate::alerts::AlertKind::ALL {
            let _ = m.alerts_raised.get_or_create(&KindLabels {
                kind: k.as_str().to_owned(),
            });
        }
        Self { registry, ..m }
    }

    /// Records one batch commit's latency.
    pub fn record_commit(&self, d: Duration) {
        self.commit_seconds.observe(d.as_secs_f64());
        let us = (d.as_micros() as u64).clamp(1, 600_000_000);
        if let Ok(mut h) = self.commit_latency_us.lock() {
            let _ = h.record(us);
        }
    }

    /// Counts one rejection row.
    pub fn reject(&self, r: RejectReason, n: u64) {
        self.rejected.get_or_create(&reason(r)).inc_by(n);
    }

    /// Current rejection count for `r` (tests, summaries).
    pub fn rejected_count(&self, r: RejectReason) -> u64 {
        self.rejected.get_or_create(&reason(r)).get()
    }

    /// Counts what one retention batch deleted.
    pub fn record_purge(&self, r: &crate::store::PurgeReport) {
        for (t, n) in PURGED_TABLES
            .into_iter()
            .zip([r.fixes, r.rejections, r.messages])
        {
            self.retention_purged.get_or_create(&table(t)).inc_by(n);
        }
    }

    /// Rows retention has deleted from `t` so far (tests, summaries).
    pub fn purged_count(&self, t: &str) -> u64 {
        self.retention_purged.get_or_create(&table(t)).get()
    }

    /// Sets a queue-depth gauge.
    pub fn set_depth(&self, stage: &str, depth: usize) {
        self.queue_depth
            .get_or_create(&StageLabels {
                stage: stage.to_owned(),
            })
            .set(depth as i64);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Tables retention deletes from, in [`crate::store::PurgeReport`] order.
const PURGED_TABLES: [&str; 3] = ["fixes", "rejected_messages", "messages"];

fn table(t: &str) -> TableLabels {
    TableLabels {
        table: t.to_owned(),
    }
}

fn reason(r: RejectReason) -> ReasonLabels {
    ReasonLabels {
        reason: r.as_str().to_owned(),
    }
}
