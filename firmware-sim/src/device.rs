//! One simulated device: turns the wearer's trajectory into telemetry
//! messages (noisy fixes, battery, strap, beacon, events), with the
//! persona's faults (coverage loss, GNSS loss, clock skew, a dying battery),
//! and keeps the ground truth of what the server should make of them.

use std::collections::HashMap;

use chrono_tz::Tz;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::encode::{Event, EventKind, Fix, FixSource, Status, Telemetry};
use crate::fleet::{
    curfew_active, noise_stream, Fleet, FleetParams, SimDevice, COUNTY_HALF_M, EXCLUSION_R_M,
    HOME_R_M, VICTIM_ENTER_M, VICTIM_EXIT_M,
};
use crate::persona::Persona;
use crate::plan::{PlaceKind, Trajectory, Visit};
use crate::truth::{classify, Class, Episode, Tracker};
use crate::world::{Frame, P};

/// GNSS noise, metres (1 σ per axis before clipping): open sky.
const SIGMA_OUT: f64 = 4.0;
/// Indoors (worse multipath).
const SIGMA_IN: f64 = 10.0;
/// Coarse cell-tower positions while GNSS is lost.
const SIGMA_CELL: f64 = 90.0;
/// Noise is clipped at this many σ, so the ground truth's margins are exact.
const CLIP: f64 = 3.0;
/// GPS errors are correlated from one fix to the next.
const AR: f64 = 0.8;
/// Frame error against the server's geodesic distances at the county edge.
const FRAME_SLACK_M: f64 = 30.0;
/// Fixes buffered offline go out in messages of this many, newest first.
const UPLOAD_CHUNK: usize = 10;

/// The ground truth of one supervisee device.
struct Truth {
    exclusion: Tracker,
    inclusion: Tracker,
    curfew: Tracker,
    victim: Tracker,
    strap: Tracker,
    low: Tracker,
    critical: Tracker,
    gps_loss: Tracker,
    no_signal: Tracker,
    /// First and last message without a usable position (device time).
    dark: Option<(i64, i64)>,
    /// Wall clock of the last message (or of provisioning), ms.
    last_wall: i64,
    /// A message has been sent.
    heard: bool,
}

impl Truth {
    /// Ends a stretch of messages without a usable position: gps_loss
    /// after `need` ms of it (the server counts on the messages' own time,
    /// from the first such message; the first message past the threshold
    /// decides, at most an interval later).
    fn close_dark(&mut self, need: i64, interval: i64) {
        if let Some((a, b)) = self.dark.take() {
            if b - a >= need - interval {
                self.gps_loss.push(Episode {
                    kind: "gps_loss",
                    first_ms: a,
                    last_ms: b,
                    must: b - a >= need + interval,
                    ambiguous: false,
                    decided_ms: Some(a + need + interval),
                });
            }
        }
    }

    /// Silence from the last message until wall clock `until`: no_signal
    /// when it exceeds `threshold`. The watchdog ticks every second and a
    /// message counts as heard once committed: a few seconds either way
    /// are optional, and so is any silence that is not `certain`.
    fn silence(&mut self, until: i64, threshold: i64, certain: bool) {
        let gap = until - self.last_wall;
        if gap >= threshold - 2_000 {
            self.no_signal.push(Episode {
                kind: "no_signal",
                first_ms: self.last_wall,
                last_ms: until,
                must: certain && gap >= threshold + 4_000,
                ambiguous: false,
                decided_ms: None,
            });
        }
    }

    fn new(p: &FleetParams, provisioned_wall_ms: i64) -> Truth {
        let c = p.server.confirm_fixes;
        Truth {
            exclusion: Tracker::new("exclusion_zone_entry", c, 2),
            inclusion: Tracker::new("inclusion_zone_exit", c, 2),
            curfew: Tracker::new("curfew_violation", c, 2),
            // The server raises proximity on the first fix inside, but the
            // victim's position reaches it through another shard: ask for two.
            victim: Tracker::new("victim_proximity", 2, 2),
            strap: Tracker::new("strap_tamper", 1, 1),
            low: Tracker::new("battery_low", 1, 1),
            critical: Tracker::new("battery_critical", 1, 1),
            gps_loss: Tracker::new("gps_loss", 1, 1),
            no_signal: Tracker::new("no_signal", 1, 1),
            dark: None,
            last_wall: provisioned_wall_ms,
            heard: false,
        }
    }
}

/// A device in the simulation.
pub struct DeviceSim {
    /// Device id.
    pub id: String,
    /// Index of the supervisee it belongs to (a victim's device shares its pair's).
    pub idx: usize,
    /// A victim's device (positions feed proximity only and are not stored).
    pub is_victim: bool,
    persona: Persona,
    traj: Trajectory,
    frame: Frame,
    tz: Tz,
    rng: ChaCha8Rng,
    noise: (f64, f64),
    boot: u64,
    seq: u64,
    battery: f64,
    drain: f64,
    charging: bool,
    dead: bool,
    strap_open: bool,
    beacon: Option<bool>,
    last_ms: Option<i64>,
    skew_ms: i64,
    fix_ms: i64,
    fixes_per_msg: u32,
    offline: Option<(i64, i64)>,
    garage: Option<(i64, i64)>,
    strap: Option<(i64, i64)>,
    buffer: Vec<Fix>,
    home: P,
    exclusion: P,
    victim_home: Option<P>,
    server: crate::fleet::ServerRules,
    interval_ms: i64,
    truth: Option<Truth>,
    /// Offset of this device's messages within the interval, ms.
    pub phase_ms: i64,
    /// Events that happened while out of coverage, sent with the backlog.
    buffered_events: Vec<Event>,
}

/// What one tick's fix looked like, for the ground truth.
struct FixTruth {
    ts: i64,
    pos: P,
    noise: f64,
    acc: f64,
}

impl DeviceSim {
    /// The devices of a fleet: one per supervisee, plus victims' devices.
    /// `boot` identifies this run to the server (a new boot per run means a
    /// re-run never collides with the previous run's sequence numbers).
    pub fn fleet(fleet: &Fleet, boot: u64, provisioned_wall_ms: i64) -> Vec<DeviceSim> {
        let mut out = Vec::with_capacity(fleet.devices.len());
        for d in &fleet.devices {
            out.push(DeviceSim::supervisee(
                &fleet.params,
                d,
                boot,
                provisioned_wall_ms,
            ));
            if let Some((vid, vhome)) = &d.victim {
                out.push(DeviceSim::victim(&fleet.params, d, vid, *vhome, boot));
            }
        }
        out
    }

    fn base(
        p: &FleetParams,
        d: &SimDevice,
        id: String,
        traj: Trajectory,
        boot: u64,
        victim: bool,
    ) -> DeviceSim {
        let mut rng = noise_stream(p.seed, d.idx, victim);
        let noise = (rng.sample(StandardNormal), rng.sample(StandardNormal));
        DeviceSim {
            id,
            idx: d.idx,
            is_victim: false,
            persona: d.persona,
            traj,
            frame: p.frame,
            tz: p.tz(),
            rng,
            noise,
            boot,
            seq: 0,
            battery: d.battery0,
            drain: d.drain_pct_h,
            charging: false,
            dead: false,
            strap_open: false,
            beacon: None,
            last_ms: None,
            skew_ms: d.skew_ms,
            fix_ms: p.fix_interval_ms(),
            fixes_per_msg: p.fixes_per_message,
            offline: d.offline(p),
            garage: d.garage_visit(p),
            strap: d.strap_open(p),
            buffer: Vec::new(),
            home: d.home,
            exclusion: d.exclusion,
            victim_home: d.victim.as_ref().map(|v| v.1),
            server: p.server.clone(),
            interval_ms: i64::from(p.interval_s) * 1000,
            truth: None,
            phase_ms: d.phase_ms,
            buffered_events: Vec::new(),
        }
    }

    fn supervisee(
        p: &FleetParams,
        d: &SimDevice,
        boot: u64,
        provisioned_wall_ms: i64,
    ) -> DeviceSim {
        let mut s = DeviceSim::base(
            p,
            d,
            d.device_id.clone(),
            Trajectory::build(d.visits(p)),
            boot,
            false,
        );
        s.truth = Some(Truth::new(p, provisioned_wall_ms));
        s
    }

    fn victim(p: &FleetParams, d: &SimDevice, id: &str, home: P, boot: u64) -> DeviceSim {
        let stay = vec![Visit {
            at_ms: p.start_ms - 2 * 86_400_000,
            place: home,
            kind: PlaceKind::Home,
        }];
        let mut s = DeviceSim::base(p, d, id.to_string(), Trajectory::build(stay), boot, true);
        s.is_victim = true;
        // Reports just before its pair (whose phase is at least 1 s), so the
        // server holds a fresh victim position when the supervisee's fix
        // is evaluated.
        s.phase_ms = (d.phase_ms - 1000).max(0);
        s.persona = Persona::Compliant;
        s.skew_ms = 0;
        s.offline = None;
        s.garage = None;
        s.strap = None;
        s.battery = 90.0;
        s.drain = 1.0;
        s
    }

    /// The tick at true time `t_ms`, sent at wall clock `wall_ms` (the
    /// actual send time: the server's no_signal counts from when it hears a
    /// device): appends the messages to publish now — none while offline or
    /// dead, several when reconnecting with a backlog.
    pub fn tick(&mut self, t_ms: i64, wall_ms: i64, out: &mut Vec<Telemetry>) {
        if self.dead {
            return;
        }
        let within = |w: Option<(i64, i64)>| w.is_some_and(|(a, b)| t_ms >= a && t_ms < b);
        let now = self.traj.at(t_ms);
        let at_home = now.place == Some(PlaceKind::Home);
        let mut events = Vec::new();
        let dev_t = t_ms - self.skew_ms;

        // Battery: drain, charge at home unless neglected, die at zero.
        if let Some(last) = self.last_ms {
            let h = (t_ms - last) as f64 / 3_600_000.0;
            if self.charging {
                self.battery = (self.battery + 25.0 * h).min(100.0);
            } else {
                self.battery -= self.drain * h;
            }
        }
        self.last_ms = Some(t_ms);
        let neglect = self.persona == Persona::BatteryNeglect;
        if !neglect && !self.charging && at_home && self.battery < 70.0 {
            self.charging = true;
            events.push(Event {
                ts_ms: dev_t,
                kind: EventKind::ChargerConnected,
            });
        } else if self.charging && (!at_home || self.battery >= 98.0) {
            self.charging = false;
            events.push(Event {
                ts_ms: dev_t,
                kind: EventKind::ChargerDisconnected,
            });
        }
        if self.battery <= 0.0 {
            self.battery = 0.0;
            self.dead = true;
            events.push(Event {
                ts_ms: dev_t,
                kind: EventKind::PowerOff,
            });
        }
        let strap_open = within(self.strap);
        if strap_open != self.strap_open {
            self.strap_open = strap_open;
            let kind = if strap_open {
                EventKind::StrapOpen
            } else {
                EventKind::StrapClosed
            };
            events.push(Event { ts_ms: dev_t, kind });
        }
        if self.beacon.is_some_and(|b| b != at_home) {
            let kind = if at_home {
                EventKind::BeaconEnter
            } else {
                EventKind::BeaconLeave
            };
            events.push(Event { ts_ms: dev_t, kind });
        }
        let prev_beacon = self.beacon.replace(at_home);

        // Fixes over the interval ending now.
        let gnss_lost = within(self.garage) && now.place == Some(PlaceKind::Garage);
        let mut fixes = Vec::with_capacity(self.fixes_per_msg as usize);
        let mut truths = Vec::with_capacity(self.fixes_per_msg as usize);
        for k in (0..i64::from(self.fixes_per_msg)).rev() {
            let ft = t_ms - k * self.fix_ms;
            let w = self.traj.at(ft);
            let (sigma, src) = match w.place {
                _ if gnss_lost => (SIGMA_CELL, FixSource::Cell),
                Some(pk) if pk.indoor() => {
                    let src = if self.rng.random_bool(0.3) {
                        FixSource::Wifi
                    } else {
                        FixSource::Gnss
                    };
                    (SIGMA_IN, src)
                }
                _ => (SIGMA_OUT, FixSource::Gnss),
            };
            // Correlated noise, clipped so the truth's margins hold exactly.
            let z: (f64, f64) = (
                self.rng.sample(StandardNormal),
                self.rng.sample(StandardNormal),
            );
            let k2 = (1.0 - AR * AR).sqrt();
            self.noise = (AR * self.noise.0 + k2 * z.0, AR * self.noise.1 + k2 * z.1);
            let mag = self.noise.0.hypot(self.noise.1);
            let scale = if mag > CLIP { CLIP / mag } else { 1.0 };
            let e = P::new(self.noise.0 * scale * sigma, self.noise.1 * scale * sigma);
            let acc = if gnss_lost {
                self.rng.random_range(250.0..400.0)
            } else {
                sigma * self.rng.random_range(2.0..3.5)
            };
            let (lat, lon) = self.frame.to_latlon(w.pos.offset(e.x, e.y));
            fixes.push(Fix {
                ts_ms: ft - self.skew_ms,
                lat,
                lon,
                acc_m: acc as f32,
                speed_mps: (w.place.is_none()).then_some(w.speed as f32),
                heading_deg: (w.place.is_none()).then_some(w.heading as f32),
                src,
            });
            truths.push(FixTruth {
                ts: ft - self.skew_ms,
                pos: w.pos,
                noise: CLIP * sigma,
                acc,
            });
        }
        let status = Status {
            battery: self.battery.round().clamp(0.0, 100.0) as u8,
            charging: self.charging,
            strap_open: self.strap_open,
            beacon: at_home,
            rssi_dbm: Some(self.rng.random_range(-105..-65)),
        };

        // The ground truth sees everything in true-time order, whether or
        // not it is sent now.
        let offline = within(self.offline);
        self.observe(
            &truths,
            &status,
            (prev_beacon, at_home),
            dev_t,
            gnss_lost,
            offline,
        );

        if offline {
            self.buffer.extend(fixes);
            self.buffered_events.extend(events);
            return;
        }
        self.observe_send(wall_ms);
        out.push(self.message(fixes, Some(status), events));
        if !self.buffer.is_empty() {
            // Reconnected: the backlog goes out newest chunk first, so it
            // arrives both late and out of order; the events of the outage
            // ride with the oldest fixes.
            let backlog = std::mem::take(&mut self.buffer);
            let mut events = std::mem::take(&mut self.buffered_events);
            let chunks: Vec<&[Fix]> = backlog.chunks(UPLOAD_CHUNK).collect();
            for (i, chunk) in chunks.iter().enumerate().rev() {
                let ev = if i == 0 {
                    std::mem::take(&mut events)
                } else {
                    Vec::new()
                };
                out.push(self.message(chunk.to_vec(), None, ev));
            }
        }
    }

    fn message(
        &mut self,
        fixes: Vec<Fix>,
        status: Option<Status>,
        events: Vec<Event>,
    ) -> Telemetry {
        self.seq += 1;
        Telemetry {
            device: self.id.clone(),
            boot: self.boot,
            seq: self.seq,
            fixes,
            status,
            events,
        }
    }

    fn observe(
        &mut self,
        fixes: &[FixTruth],
        status: &Status,
        (prev_beacon, at_home): (Option<bool>, bool),
        dev_t: i64,
        gnss_lost: bool,
        offline: bool,
    ) {
        let proximity_reliable = self.interval_ms <= 240_000;
        // Fixes taken out of coverage reach the server late, in chunks it
        // judges on their own (one late alert per chunk that passes the
        // debounce), or never if the run ends first: optional.
        let seen = |c: Class| {
            if offline && c == Class::Bad {
                Class::Unsure
            } else {
                c
            }
        };
        let (home, excl, victim, tz) = (self.home, self.exclusion, self.victim_home, self.tz);
        let usable_acc = 200.0;
        let Some(t) = self.truth.as_mut() else {
            return;
        };
        for f in fixes {
            t.exclusion.observe(
                f.ts,
                seen(classify(EXCLUSION_R_M - f.pos.dist(excl), f.noise, f.acc)),
            );
            let out_depth = f.pos.linf(P::new(0.0, 0.0)) - COUNTY_HALF_M;
            t.inclusion.observe(
                f.ts,
                seen(classify(out_depth, f.noise + FRAME_SLACK_M, f.acc)),
            );
            // The server learns of the beacon from this message's events,
            // dated now: the fixes taken earlier in the interval are judged
            // with the beacon it knew before.
            let beacon = if f.ts < dev_t {
                prev_beacon.unwrap_or(at_home)
            } else {
                at_home
            };
            let curfew = if !curfew_active(&tz, f.ts) || beacon {
                Class::Good
            } else {
                classify(f.pos.dist(home) - HOME_R_M, f.noise, f.acc)
            };
            t.curfew.observe(f.ts, seen(curfew));
            if let Some(v) = victim {
                // The victim's own fix is noisy too (indoor, clipped).
                let margin = f.noise + CLIP * SIGMA_IN + 5.0;
                let d = f.pos.dist(v);
                let c = if d < VICTIM_ENTER_M - margin {
                    // The server compares with a victim position at most
                    // 5 min old: with longer intervals that is luck.
                    if proximity_reliable {
                        Class::Bad
                    } else {
                        Class::Unsure
                    }
                } else if d > VICTIM_EXIT_M + margin {
                    Class::Good
                } else if d < VICTIM_ENTER_M + margin {
                    Class::Unsure
                } else {
                    // Between the enter and exit distances the server holds
                    // whatever state it has: no observation.
                    continue;
                };
                t.victim.observe(f.ts, seen(c));
            }
        }
        if offline {
            // No status or message reaches the server meanwhile.
            return;
        }
        let s = &self.server;
        t.strap.observe(
            dev_t,
            if status.strap_open {
                Class::Bad
            } else {
                Class::Good
            },
        );
        for (tr, thr) in [
            (&mut t.low, s.battery_low_pct),
            (&mut t.critical, s.battery_critical_pct),
        ] {
            if status.battery <= thr && !status.charging {
                tr.observe(dev_t, Class::Bad);
            } else if status.charging
                || status.battery >= thr.saturating_add(s.battery_hysteresis_pct)
            {
                tr.observe(dev_t, Class::Good);
            }
        }
        // gps_loss: counted on the messages' own time from the first one
        // without a usable position; the beacon at home excuses it.
        let usable = at_home || fixes.iter().any(|f| f.acc <= usable_acc) && !gnss_lost;
        let ts = fixes.last().map_or(dev_t, |f| f.ts);
        let need = i64::from(s.gps_loss_s) * 1000;
        if usable {
            t.close_dark(need, self.interval_ms);
        } else {
            let d = t.dark.get_or_insert((ts, ts));
            d.1 = ts;
        }
    }

    /// Silence between messages on the server's wall clock: no_signal.
    fn observe_send(&mut self, wall_ms: i64) {
        let threshold = self.interval_ms * i64::from(self.server.no_signal_intervals);
        let Some(t) = self.truth.as_mut() else {
            return;
        };
        // Before the first message, silence counts from when the server
        // first saw the assignment, which the simulator only brackets.
        let certain = t.heard;
        t.silence(wall_ms, threshold, certain);
        t.last_wall = wall_ms;
        t.heard = true;
    }

    /// Ends the run at wall clock `end_wall_ms` (when the simulator stopped
    /// listening) and returns the ground truth (empty for victims).
    pub fn finish(mut self, end_wall_ms: i64) -> Vec<Episode> {
        if self.truth.is_none() {
            return Vec::new();
        }
        let interval = self.interval_ms;
        let need = i64::from(self.server.gps_loss_s) * 1000;
        let Some(mut t) = self.truth.take() else {
            return Vec::new();
        };
        t.close_dark(need, interval);
        // Every device falls silent when the load ends; only a tag that died
        // mid-run must have been reported by the time we stop listening (a
        // server still catching up hears the others later than scheduled).
        let threshold = interval * i64::from(self.server.no_signal_intervals);
        t.silence(end_wall_ms, threshold, self.dead);
        let mut out = Vec::new();
        for tr in [
            t.exclusion,
            t.inclusion,
            t.curfew,
            t.victim,
            t.strap,
            t.low,
            t.critical,
            t.gps_loss,
            t.no_signal,
        ] {
            out.extend(tr.finish());
        }
        out
    }
}

/// Ground truth of every device, by device id.
pub type TruthMap = HashMap<String, Vec<Episode>>;
