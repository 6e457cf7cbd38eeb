//! A load run: provisioned fleet in, report out.
//!
//! ```text
//! Fleet ─▶ DeviceSim × N ─▶ connections (open-loop pacing, QoS 1) ─▶ broker ─▶ Waypoint
//!                │                  └─ PUBACK latency (from the scheduled time)
//!                └─ ground truth ─────────────┐
//! alert topic ─▶ listener (latency from the deciding publish) ─▶ check ─▶ report
//! ```

pub mod listen;
pub mod publish;
pub mod stats;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rumqttc::MqttOptions;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::device::DeviceSim;
use crate::encode::Encoding;
use crate::fleet::Fleet;
use crate::readback::Readback;
use crate::report::{FleetSummary, LoadSummary, Report};
use crate::truth;
use publish::{ConnSpec, Pacing, Slot};
use stats::{Percentiles, Sample, Sent, Stats};

/// Where the broker is and how to log in.
#[derive(Debug, Clone)]
pub struct Broker {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Username for the publishing connections (all of them), if any.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Log each connection in as its first device (a device's own identity,
    /// as the broker ACL expects of real devices), with `password`.
    pub device_usernames: bool,
    /// Credentials for the alert listener, if different.
    pub listener: Option<(String, String)>,
}

/// How to run the load.
#[derive(Clone)]
pub struct RunOptions {
    /// Broker.
    pub broker: Broker,
    /// MQTT connections the devices are spread over.
    pub connections: usize,
    /// Payload encoding.
    pub encoding: Encoding,
    /// Deployment topic prefix.
    pub prefix: String,
    /// Client id prefix (unique per simulator instance).
    pub client_id: String,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Longest wait after the load for PUBACKs, stored fixes and alerts.
    pub settle: Duration,
    /// Listen for alerts and check them against the ground truth.
    pub check_alerts: bool,
    /// Broker-only baseline: subscribe to the telemetry and drain it.
    pub drain: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Unacknowledged publishes per connection.
    pub inflight: u16,
    /// Reads back what the server stored.
    pub readback: Option<Readback>,
}

fn mqtt_options(b: &Broker, client_id: String, user: Option<&str>, inflight: u16) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, b.host.clone(), b.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(inflight.max(1));
    // Persistent session: after a reconnect the client re-sends what was
    // in flight instead of dropping it (the broker still knows our session).
    o.set_clean_session(false);
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    if let Some(u) = user.or(b.username.as_deref()) {
        o.set_credentials(u, b.password.clone().unwrap_or_default());
    }
    o
}

/// Runs the fleet's window against the broker and returns the report.
/// `stop` ends the load early (Ctrl-C); the summary still covers what was sent.
pub async fn run(
    fleet: &Fleet,
    opts: &RunOptions,
    stop: CancellationToken,
) -> anyhow::Result<Report> {
    let p = &fleet.params;
    // Simulated time must never run ahead of the wall clock: the server
    // refuses fixes from its future. Checked before anything starts.
    let start_delay = Duration::from_millis(300);
    let w0_ms = Utc::now().timestamp_millis() + start_delay.as_millis() as i64;
    let real_ms = p.span_ms as f64 / opts.speed;
    if !(opts.speed > 0.0 && real_ms.is_finite()) {
        anyhow::bail!(
            "the acceleration must be a positive number, not {}",
            opts.speed
        );
    }
    if p.start_ms > w0_ms || p.start_ms as f64 + p.span_ms as f64 > w0_ms as f64 + real_ms + 1.0 {
        anyhow::bail!(
            "the simulated window {} → {} would run ahead of the wall clock during a run \
             from {} to {}: choose an earlier --start or a lower --speed",
            fmt_ms(p.start_ms),
            fmt_ms(p.start_ms + p.span_ms),
            fmt_ms(w0_ms),
            fmt_ms(w0_ms + real_ms as i64)
        );
    }
    listen::probe(mqtt_options(
        &opts.broker,
        format!("{}-probe", opts.client_id),
        None,
        10,
    ))
    .await?;
    let provisioned_ms = Utc::now().timestamp_millis();
    let boot = (provisioned_ms / 1000) as u64;
    let devices = DeviceSim::fleet(fleet, boot, provisioned_ms);
    let ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    let by_id: Arc<HashMap<String, usize>> = Arc::new(
        ids.iter()
            .enumerate()
            .map(|(i, d)| (d.clone(), i))
            .collect(),
    );
    let rings: Arc<Vec<Mutex<Sent>>> = Arc::new(ids.iter().map(|_| Mutex::default()).collect());
    let stats = Arc::new(Stats::new());
    // Dropped on every return path, so no listener or connection task
    // outlives the run (the server's demo runs fleets in-process).
    let listen_stop = CancellationToken::new();
    let _listen_guard = listen_stop.clone().drop_guard();
    let done = CancellationToken::new();
    let _done_guard = done.clone().drop_guard();

    let alerts = Arc::new(Mutex::new(listen::Alerts::default()));
    let handler =
        listen::alert_handler(by_id.clone(), rings.clone(), stats.clone(), alerts.clone());
    let listeners = start_listeners(opts, handler, stats.clone(), listen_stop.clone()).await?;

    let pacing = Pacing {
        r0: Instant::now() + start_delay,
        s0_ms: p.start_ms,
        span_ms: p.span_ms,
        speed: opts.speed,
        interval_ms: i64::from(p.interval_s) * 1000,
    };

    // Spread devices over the connections round-robin: with as many
    // connections as devices, each device has its own (and may log in as
    // itself, as a per-device broker ACL expects, which it must then do).
    let n_conn = if opts.broker.device_usernames {
        devices.len()
    } else {
        opts.connections.clamp(1, devices.len().max(1))
    };
    // A device needs only a few publishes in flight: keep the client's
    // per-connection state small when there are thousands of connections.
    let inflight = opts
        .inflight
        .min((200_000 / n_conn.max(1)).clamp(10, 65_535) as u16);
    let mut shares: Vec<Vec<Slot>> = (0..n_conn).map(|_| Vec::new()).collect();
    for (ring, dev) in devices.into_iter().enumerate() {
        let phase_ms = dev.phase_ms;
        shares[ring % n_conn].push(Slot {
            dev,
            phase_ms,
            ring,
        });
    }
    let mut conns = Vec::new();
    for (c, share) in shares.into_iter().enumerate() {
        if share.is_empty() {
            continue;
        }
        let user = opts
            .broker
            .device_usernames
            .then(|| share[0].dev.id.clone());
        let spec = ConnSpec {
            options: mqtt_options(
                &opts.broker,
                format!("{}-{c}", opts.client_id),
                user.as_deref(),
                inflight,
            ),
            prefix: opts.prefix.clone(),
            encoding: opts.encoding,
        };
        conns.push(tokio::spawn(publish::run(
            spec,
            share,
            pacing,
            stats.clone(),
            rings.clone(),
            stop.clone(),
            done.clone(),
        )));
    }

    let sampler_stop = CancellationToken::new();
    let target_rate = ids.len() as f64 * opts.speed / f64::from(p.interval_s);
    let sampler = tokio::spawn(sample(
        stats.clone(),
        opts.readback.clone(),
        opts.drain,
        opts.progress,
        real_ms / 1000.0,
        target_rate,
        pacing.r0,
        sampler_stop.clone(),
    ));

    let mut slots = Vec::new();
    let mut pollers = Vec::new();
    for c in conns {
        let (s, h) = c.await?;
        slots.extend(s);
        pollers.push(h);
    }
    let load_s = Instant::now()
        .saturating_duration_since(pacing.r0)
        .as_secs_f64()
        .max(1e-3);
    let sent = Stats::get(&stats.sent);
    let fixes_sent = Stats::get(&stats.fixes);

    let stored = settle(opts, &stats, &ids, boot, sent, fixes_sent).await;
    let end_wall = Utc::now().timestamp_millis();
    done.cancel();
    listen_stop.cancel();
    sampler_stop.cancel();
    for h in pollers.into_iter().chain(listeners) {
        let _ = h.await;
    }
    let samples = sampler.await.unwrap_or_default();

    let mut episodes: crate::device::TruthMap = HashMap::new();
    for s in slots {
        let id = s.dev.id.clone();
        let eps = s.dev.finish(end_wall);
        if !eps.is_empty() {
            episodes.insert(id, eps);
        }
    }
    let alerts = std::mem::take(&mut *alerts.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let interval_ms = i64::from(p.interval_s) * 1000;
    let verdict = opts.check_alerts.then(|| {
        let fix_ms = p.fix_interval_ms();
        truth::check(
            &episodes,
            &alerts.list,
            2 * interval_ms + 5_000,
            10_000,
            fix_ms + 1_000,
        )
    });

    let acked = Stats::get(&stats.acked);
    let puback = stats
        .puback
        .lock()
        .map(|h| Percentiles::of(&h.total))
        .unwrap_or_default();
    let alert_latency = stats
        .alert
        .lock()
        .map(|h| Percentiles::of(&h.total))
        .unwrap_or_default();
    let mut personas = std::collections::BTreeMap::new();
    for d in &fleet.devices {
        *personas.entry(d.persona.to_string()).or_insert(0u64) += 1;
    }
    Ok(Report::new(
        FleetSummary {
            seed: p.seed,
            devices: fleet.devices.len() as u64,
            victim_devices: fleet.devices.iter().filter(|d| d.victim.is_some()).count() as u64,
            personas,
            encoding: opts.encoding.to_string(),
            interval_s: p.interval_s,
            fixes_per_message: p.fixes_per_message,
            window_start: fmt_ms(p.start_ms),
            window_end: fmt_ms(p.start_ms + p.span_ms),
            speed: opts.speed,
            boot,
        },
        LoadSummary {
            duration_s: load_s,
            target_rate,
            achieved_rate: sent as f64 / load_s,
            sent,
            acked,
            puback_missing: sent.saturating_sub(acked),
            behind_schedule: Stats::get(&stats.behind),
            connection_errors: Stats::get(&stats.conn_errors),
            sessions_lost: Stats::get(&stats.sessions_lost),
            connections: n_conn as u64,
            fixes_sent,
            fixes_stored: stored,
            drained: opts.drain.then(|| Stats::get(&stats.drained)),
            stopped_early: stop.is_cancelled(),
        },
        puback,
        alert_latency,
        verdict,
        alerts.list,
        alerts.unreadable,
        samples,
    ))
}

/// Subscribes the alert listener and/or the drain subscriber; returns once
/// the broker granted them, so nothing published afterwards is missed.
async fn start_listeners(
    opts: &RunOptions,
    alert_handler: impl FnMut(&[u8], &str) + Send + 'static,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut listeners = Vec::new();
    if opts.check_alerts {
        let b = &opts.broker;
        let mut o = mqtt_options(b, format!("{}-alerts", opts.client_id), None, 100);
        if let Some((u, pw)) = &b.listener {
            o.set_credentials(u.clone(), pw.clone());
        }
        let filter = format!("{}em/v1/alerts/+", opts.prefix);
        listeners.push(listen::subscribe(o, filter, stop.clone(), alert_handler).await?);
    }
    if opts.drain {
        let o = mqtt_options(&opts.broker, format!("{}-drain", opts.client_id), None, 100);
        let filter = format!("{}em/v1/devices/+/telemetry", opts.prefix);
        listeners.push(listen::subscribe(o, filter, stop, listen::drain_handler(stats)).await?);
    }
    Ok(listeners)
}

/// After the load: waits (at most `opts.settle`) for the PUBACKs, then for
/// the fixes to be stored (or drained), then a moment for the last alerts.
/// Returns the fixes found stored, when the database is read back.
async fn settle(
    opts: &RunOptions,
    stats: &Stats,
    ids: &[String],
    boot: u64,
    sent: u64,
    fixes_sent: u64,
) -> Option<u64> {
    let deadline = Instant::now() + opts.settle;
    let pause = || tokio::time::sleep(Duration::from_millis(100));
    while Stats::get(&stats.acked) < sent && Instant::now() < deadline {
        pause().await;
    }
    let mut stored = None;
    if let Some(rb) = opts.readback.as_ref().filter(|r| r.counts_stored()) {
        loop {
            match rb.stored(ids, boot).await {
                Ok(n) => stored = Some(n),
                Err(e) => tracing::warn!(error = %e, "cannot read back stored fixes"),
            }
            if stored.is_some_and(|n| n >= fixes_sent) || Instant::now() >= deadline {
                break;
            }
            // A count over this run's fixes is not free: once a second.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    if opts.drain {
        while Stats::get(&stats.drained) < sent && Instant::now() < deadline {
            pause().await;
        }
    }
    if opts.check_alerts {
        tokio::time::sleep(Duration::from_secs(3).min(opts.settle)).await;
    }
    stored
}

/// RFC 3339, seconds.
pub fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Once a second: a time-series sample and the progress line.
#[allow(clippy::too_many_arguments)]
async fn sample(
    stats: Arc<Stats>,
    readback: Option<Readback>,
    drain: bool,
    progress: bool,
    total_s: f64,
    target_rate: f64,
    r0: Instant,
    stop: CancellationToken,
) -> Vec<Sample> {
    let bar = if progress {
        let b = indicatif::ProgressBar::new((total_s * 10.0).max(1.0) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_sent, mut last_acked, mut last_delivered) = (0u64, 0u64, None::<u64>);
    let mut last_t = 0.0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let t = Instant::now().saturating_duration_since(r0).as_secs_f64();
        let dt = (t - last_t).max(1e-3);
        let sent = Stats::get(&stats.sent);
        let acked = Stats::get(&stats.acked);
        let delivered = if drain {
            Some(Stats::get(&stats.drained))
        } else if let Some(rb) = &readback {
            rb.progress().await
        } else {
            None
        };
        let (p50, p99) = stats
            .puback
            .lock()
            .map(|mut h| {
                let r = (!h.recent.is_empty()).then(|| {
                    (
                        h.recent.value_at_quantile(0.5) as f64 / 1000.0,
                        h.recent.value_at_quantile(0.99) as f64 / 1000.0,
                    )
                });
                h.recent.reset();
                r
            })
            .ok()
            .flatten()
            .unzip();
        let alert_p99 = stats
            .alert
            .lock()
            .map(|mut h| {
                let r = (!h.recent.is_empty())
                    .then(|| h.recent.value_at_quantile(0.99) as f64 / 1000.0);
                h.recent.reset();
                r
            })
            .ok()
            .flatten();
        let lag = delivered.map(|d| sent as i64 - d as i64);
        let s = Sample {
            t_s: t,
            sent_per_s: (sent - last_sent) as f64 / dt,
            acked_per_s: (acked - last_acked) as f64 / dt,
            delivered_per_s: delivered
                .zip(last_delivered)
                .map(|(d, l)| d.saturating_sub(l) as f64 / dt),
            lag,
            puback_p50_ms: p50,
            puback_p99_ms: p99,
            alert_p99_ms: alert_p99,
        };
        bar.set_position((t * 10.0) as u64);
        bar.set_message(format!(
            "{:>7.0}/s of {:.0}/s · PUBACK p99 {} · alerts {}{}",
            s.sent_per_s,
            target_rate,
            p99.map_or("-".into(), |v| format!("{v:.1} ms")),
            Stats::get(&stats.alerts),
            lag.map_or(String::new(), |l| format!(" · lag {l}")),
        ));
        out.push(s);
        (last_sent, last_acked, last_delivered, last_t) = (sent, acked, delivered, t);
    }
    bar.finish_and_clear();
    out
}
