//! Measurements shared by the publishing connections, the alert listener
//! and the progress display.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, up to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// A histogram for the whole run and one for the current second (the
/// progress display and the chart read and reset the latter).
pub struct Hists {
    /// Whole run.
    pub total: Histogram<u64>,
    /// Since the last sample.
    pub recent: Histogram<u64>,
}

impl Hists {
    fn new() -> Hists {
        Hists {
            total: histogram(),
            recent: histogram(),
        }
    }
    /// Records one latency.
    pub fn record(&mut self, us: u64) {
        let v = us.clamp(1, 3_600_000_000);
        let _ = self.total.record(v);
        let _ = self.recent.record(v);
    }
}

/// Counters and histograms of a run.
pub struct Stats {
    /// Messages handed to the MQTT client.
    pub sent: AtomicU64,
    /// Fixes in them that the server should store.
    pub fixes: AtomicU64,
    /// PUBACKs received from the broker.
    pub acked: AtomicU64,
    /// Messages the generator could not send on time (sent late, behind schedule).
    pub behind: AtomicU64,
    /// Connection errors seen (the client reconnects).
    pub conn_errors: AtomicU64,
    /// Reconnects on which the broker had lost our session: the client
    /// dropped the publishes in flight, which then count as unacknowledged.
    pub sessions_lost: AtomicU64,
    /// Messages delivered to the drain subscriber (broker-only runs).
    pub drained: AtomicU64,
    /// Distinct alerts received for this fleet.
    pub alerts: AtomicU64,
    /// PUBACK latency from the scheduled send time.
    pub puback: Mutex<Hists>,
    /// Alert latency from the scheduled send of the deciding message.
    pub alert: Mutex<Hists>,
}

impl Stats {
    /// Empty stats.
    pub fn new() -> Stats {
        Stats {
            sent: AtomicU64::new(0),
            fixes: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            behind: AtomicU64::new(0),
            conn_errors: AtomicU64::new(0),
            sessions_lost: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            puback: Mutex::new(Hists::new()),
            alert: Mutex::new(Hists::new()),
        }
    }
    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// One point of the time series (once a second), for the chart.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// Messages sent per second over the last interval.
    pub sent_per_s: f64,
    /// PUBACKs per second.
    pub acked_per_s: f64,
    /// Messages drained (broker-only run) or acknowledged by Waypoint (from
    /// its metrics) per second, if measured.
    pub delivered_per_s: Option<f64>,
    /// Sent but not yet delivered/stored, if measured.
    pub lag: Option<i64>,
    /// PUBACK latency p50 / p99 over the interval, ms.
    pub puback_p50_ms: Option<f64>,
    /// See `puback_p50_ms`.
    pub puback_p99_ms: Option<f64>,
    /// Alert latency p99 over the interval, ms.
    pub alert_p99_ms: Option<f64>,
}

/// Percentile summary of a histogram, in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th.
    pub p90_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// 99.9th.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// From a microsecond histogram.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

/// The last messages a device sent, so an alert can be traced back to the
/// publish of the message holding the fix (or report) that decided it.
#[derive(Debug, Default)]
pub struct Sent {
    ring: [(i64, i64, Option<Instant>); 8],
    next: usize,
}

impl Sent {
    /// Remembers a message covering device times `[min_ts, max_ts]`,
    /// scheduled for `at`.
    pub fn push(&mut self, min_ts: i64, max_ts: i64, at: Instant) {
        self.ring[self.next] = (min_ts, max_ts, Some(at));
        self.next = (self.next + 1) % self.ring.len();
    }
    /// When the message holding device time `ts` was scheduled, if recent.
    pub fn find(&self, ts: i64) -> Option<Instant> {
        self.ring
            .iter()
            .filter(|(a, b, _)| *a <= ts && ts <= *b)
            .find_map(|(_, _, at)| *at)
    }
}
