//! The run's summary: a readable table and JSON (`--json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::run::stats::{Percentiles, Sample};
use crate::truth::{Observed, Verdict};

/// What was simulated.
#[derive(Debug, Clone, Serialize)]
pub struct FleetSummary {
    /// Seed.
    pub seed: u64,
    /// Supervisee devices.
    pub devices: u64,
    /// Victims' devices on top.
    pub victim_devices: u64,
    /// Devices per persona.
    pub personas: BTreeMap<String, u64>,
    /// `json` or `binary`.
    pub encoding: String,
    /// Message interval, simulated seconds.
    pub interval_s: u32,
    /// Fixes per message.
    pub fixes_per_message: u32,
    /// Simulated window.
    pub window_start: String,
    /// See `window_start`.
    pub window_end: String,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Boot number of every device in this run (identifies its messages).
    pub boot: u64,
}

/// What the load did.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    /// Seconds from the first scheduled send to the last send.
    pub duration_s: f64,
    /// Offered rate, messages/s.
    pub target_rate: f64,
    /// Achieved send rate, messages/s.
    pub achieved_rate: f64,
    /// Messages published.
    pub sent: u64,
    /// PUBACKs received.
    pub acked: u64,
    /// Publishes never acknowledged by the broker.
    pub puback_missing: u64,
    /// Messages sent more than 100 ms after their scheduled time.
    pub behind_schedule: u64,
    /// Connection errors (each followed by a reconnect).
    pub connection_errors: u64,
    /// Reconnects on which the broker had lost the session (in-flight publishes dropped).
    pub sessions_lost: u64,
    /// MQTT connections.
    pub connections: u64,
    /// Fixes sent that the server should store.
    pub fixes_sent: u64,
    /// Fixes of this run found in the server's database.
    pub fixes_stored: Option<u64>,
    /// Messages received by the drain subscriber (broker-only baseline).
    pub drained: Option<u64>,
    /// Ctrl-C ended the load early.
    pub stopped_early: bool,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Fleet.
    pub fleet: FleetSummary,
    /// Load.
    pub load: LoadSummary,
    /// PUBACK latency from the scheduled send (measures the broker).
    pub puback_latency: Percentiles,
    /// Alert latency from the scheduled publish of the deciding message.
    pub alert_latency: Percentiles,
    /// Ground-truth comparison, when alerts were checked.
    pub alerts: Option<Verdict>,
    /// Alerts received (first `raised` event of each).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alert_list: Vec<Observed>,
    /// Alert-topic payloads that could not be read.
    pub unreadable_alert_payloads: u64,
    /// Once-a-second time series.
    pub samples: Vec<Sample>,
    /// Why the run failed (empty: it passed).
    pub failures: Vec<String>,
}

impl Report {
    /// Assembles the report and decides pass/fail.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fleet: FleetSummary,
        load: LoadSummary,
        puback_latency: Percentiles,
        alert_latency: Percentiles,
        alerts: Option<Verdict>,
        alert_list: Vec<Observed>,
        unreadable: u64,
        samples: Vec<Sample>,
    ) -> Report {
        let mut failures = Vec::new();
        if load.puback_missing > 0 {
            failures.push(format!(
                "{} publishes were never acknowledged by the broker",
                load.puback_missing
            ));
        }
        if let Some(stored) = load.fixes_stored {
            if stored < load.fixes_sent {
                failures.push(format!(
                    "{} of {} fixes sent are not stored",
                    load.fixes_sent - stored,
                    load.fixes_sent
                ));
            }
        }
        if let Some(d) = load.drained {
            if d < load.sent {
                failures.push(format!(
                    "the drain subscriber received {d} of {} messages",
                    load.sent
                ));
            }
        }
        if let Some(v) = &alerts {
            if v.total_missed() > 0 {
                failures.push(format!(
                    "{} expected alerts were not raised",
                    v.total_missed()
                ));
            }
            if v.total_slow() > 0 {
                failures.push(format!(
                    "{} alerts were decided later than their rule's debounce allows",
                    v.total_slow()
                ));
            }
            if v.total_unexpected() > 0 {
                failures.push(format!(
                    "{} alerts were raised that the ground truth does not explain",
                    v.total_unexpected()
                ));
            }
        }
        Report {
            fleet,
            load,
            puback_latency,
            alert_latency,
            alerts,
            alert_list,
            unreadable_alert_payloads: unreadable,
            samples,
            failures,
        }
    }

    /// Whether the run passed.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        let (f, l) = (&self.fleet, &self.load);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "fleet     {} devices (+{} victims' devices), seed {}, {} encoding, every {} s × {} fix(es)",
            f.devices, f.victim_devices, f.seed, f.encoding, f.interval_s, f.fixes_per_message
        );
        let personas: Vec<String> = f.personas.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "personas  {}", personas.join(", "));
        let _ = writeln!(
            s,
            "window    {} → {} at {:.1}× real time",
            f.window_start, f.window_end, f.speed
        );
        let _ = writeln!(
            s,
            "load      {:.1} s, {} messages over {} connection(s): {:.0}/s achieved of {:.0}/s offered ({} sent >100 ms late)",
            l.duration_s, l.sent, l.connections, l.achieved_rate, l.target_rate, l.behind_schedule
        );
        let _ = writeln!(
            s,
            "broker    {} PUBACKs, {} missing, {} connection errors, {} sessions lost",
            l.acked, l.puback_missing, l.connection_errors, l.sessions_lost
        );
        match (l.fixes_stored, l.drained) {
            (Some(st), _) => {
                let _ = writeln!(
                    s,
                    "stored    {st} of {} fixes sent ({} lost)",
                    l.fixes_sent,
                    l.fixes_sent.saturating_sub(st)
                );
            }
            (None, Some(d)) => {
                let _ = writeln!(s, "drained   {d} of {} messages", l.sent);
            }
            _ => {
                let _ = writeln!(
                    s,
                    "stored    not checked ({} fixes sent; give --database-url)",
                    l.fixes_sent
                );
            }
        }
        let lat = |p: &Percentiles| {
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} ms  (n={})",
                p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.count
            )
        };
        let _ = writeln!(s, "PUBACK    {}", lat(&self.puback_latency));
        if let Some(v) = &self.alerts {
            let _ = writeln!(s, "alerts    {}", lat(&self.alert_latency));
            let _ = writeln!(
                s,
                "\n{:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>5}",
                "kind",
                "expected",
                "optional",
                "raised",
                "detected",
                "missed",
                "unexpected",
                "slow"
            );
            for (k, kv) in &v.kinds {
                let _ = writeln!(
                    s,
                    "{:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>5}",
                    k,
                    kv.expected,
                    kv.optional,
                    kv.raised,
                    kv.detected,
                    kv.missed,
                    kv.unexpected,
                    kv.slow
                );
            }
            for (d, e) in &v.missed {
                let _ = writeln!(
                    s,
                    "missed      {d} {} {}..{}",
                    e.kind,
                    crate::run::fmt_ms(e.first_ms),
                    crate::run::fmt_ms(e.last_ms)
                );
            }
            for a in &v.unexpected {
                let _ = writeln!(
                    s,
                    "unexpected  {} {} alert {} started {}",
                    a.device_id,
                    a.kind,
                    a.alert_id,
                    crate::run::fmt_ms(a.started_ms)
                );
            }
            for a in &v.slow {
                let _ = writeln!(
                    s,
                    "slow        {} {} alert {} decided by evidence at {}",
                    a.device_id,
                    a.kind,
                    a.alert_id,
                    a.evidence_ms.map(crate::run::fmt_ms).unwrap_or_default()
                );
            }
        }
        if self.unreadable_alert_payloads > 0 {
            let _ = writeln!(
                s,
                "({} unreadable alert payloads)",
                self.unreadable_alert_payloads
            );
        }
        let _ = writeln!(
            s,
            "\n{}",
            if self.ok() {
                "PASS".to_string()
            } else {
                format!("FAIL: {}", self.failures.join("; "))
            }
        );
        s
    }
}
