//! Range checks shared by every encoding. A bad item (one fix, one event, the
//! status block) is refused on its own; its valid siblings are kept.

use chrono::{DateTime, TimeDelta, Utc};

use super::{WireEvent, WireFix, WireMessage, WireStatus, MAX_SHORT_STRING};
use crate::domain::{
    DeviceEvent, DeviceId, EventKind, Fix, FixSource, ItemKind, ItemRejection, RejectReason,
    Status, StrapState, Telemetry,
};

/// How far into the server's future a device timestamp may be before it is
/// refused: device clocks drift, but a fix from the future cannot be trusted.
pub const MAX_FUTURE_SKEW: TimeDelta = TimeDelta::minutes(5);

/// Earliest timestamp accepted (2000-01-01T00:00:00Z): anything older is an
/// unset device clock, not a real observation.
const MIN_TS_MS: i64 = 946_684_800_000;

/// Largest accuracy radius accepted, metres; beyond it a fix locates nothing.
const MAX_ACCURACY_M: f64 = 100_000.0;

/// A message split into what is stored and what is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The valid content.
    pub telemetry: Telemetry,
    /// Refused items, each with a reason.
    pub rejections: Vec<ItemRejection>,
}

/// Validates `wire` for `device` against the server's `now`.
pub fn validate(wire: WireMessage, device: DeviceId, now: DateTime<Utc>) -> Validated {
    let mut rejections = Vec::new();
    let mut reject = |kind, index: usize, reason, detail: String| {
        rejections.push(ItemRejection {
            kind,
            index: index as u32,
            reason,
            detail,
        })
    };
    let mut fixes = Vec::with_capacity(wire.fixes.len());
    for (i, f) in wire.fixes.iter().enumerate() {
        match fix(f, now) {
            Ok(f) => fixes.push(f),
            Err((reason, detail)) => reject(ItemKind::Fix, i, reason, detail),
        }
    }
    let mut events = Vec::with_capacity(wire.events.len());
    for (i, e) in wire.events.iter().enumerate() {
        match event(e, now) {
            Ok(e) => events.push(e),
            Err((reason, detail)) => reject(ItemKind::Event, i, reason, detail),
        }
    }
    let status = match wire.status.as_ref().map(status) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err((reason, detail))) => {
            reject(ItemKind::Status, 0, reason, detail);
            None
        }
    };
    Validated {
        telemetry: Telemetry {
            device,
            key: wire.key,
            fixes,
            status,
            events,
        },
        rejections,
    }
}

type Refusal = (RejectReason, String);

fn timestamp(ts_ms: i64, now: DateTime<Utc>) -> Result<DateTime<Utc>, Refusal> {
    let ts = DateTime::from_timestamp_millis(ts_ms)
        .filter(|_| ts_ms >= MIN_TS_MS)
        .ok_or_else(|| {
            (
                RejectReason::TimestampOutOfRange,
                format!("ts {ts_ms} is before 2000-01-01 or not a valid time"),
            )
        })?;
    if ts > now + MAX_FUTURE_SKEW {
        return Err((
            RejectReason::FutureTimestamp,
            format!(
                "ts is {} s ahead of the server clock (max {} s)",
                (ts - now).num_seconds(),
                MAX_FUTURE_SKEW.num_seconds()
            ),
        ));
    }
    Ok(ts)
}

fn optional_in(name: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<Option<f32>, Refusal> {
    match v {
        Some(x) if !(x.is_finite() && (lo..=hi).contains(&x)) => Err((
            RejectReason::InvalidField,
            format!("{name} must be a number in [{lo}, {hi}]"),
        )),
        other => Ok(other.map(|x| x as f32)),
    }
}

fn fix(f: &WireFix, now: DateTime<Utc>) -> Result<Fix, Refusal> {
    // Coordinates are never echoed in the detail: it can reach logs.
    // `contains` is false for NaN, so this also refuses NaN and infinities.
    let lat_ok = (-90.0..=90.0).contains(&f.lat);
    let lon_ok = (-180.0..=180.0).contains(&f.lon);
    if !(lat_ok && lon_ok) {
        return Err((
            RejectReason::InvalidCoordinates,
            "lat must be in [-90, 90] and lon in [-180, 180]".into(),
        ));
    }
    if !(f.acc.is_finite() && (0.0..=MAX_ACCURACY_M).contains(&f.acc)) {
        return Err((
            RejectReason::InvalidAccuracy,
            format!("acc must be a number of metres in [0, {MAX_ACCURACY_M}]"),
        ));
    }
    let ts = timestamp(f.ts_ms, now)?;
    Ok(Fix {
        ts,
        lat: f.lat,
        lon: f.lon,
        acc_m: f.acc as f32,
        alt_m: optional_in("alt", f.alt, -1_000.0, 20_000.0)?,
        speed_mps: optional_in("spd", f.speed, 0.0, 500.0)?,
        heading_deg: optional_in("hdg", f.heading, 0.0, 360.0)?,
        src: f
            .src
            .as_deref()
            .and_then(FixSource::parse)
            .unwrap_or(FixSource::Unknown),
    })
}

fn event(e: &WireEvent, now: DateTime<Utc>) -> Result<DeviceEvent, Refusal> {
    let kind = EventKind::parse(&e.kind).ok_or_else(|| {
        (
            RejectReason::UnknownEventKind,
            format!(
                "event kind {:?} is not in the protocol's list",
                super::clip(&e.kind, MAX_SHORT_STRING)
            ),
        )
    })?;
    Ok(DeviceEvent {
        ts: timestamp(e.ts_ms, now)?,
        kind,
    })
}

fn status(s: &WireStatus) -> Result<Status, Refusal> {
    let invalid = |d: &str| (RejectReason::InvalidField, d.to_owned());
    let battery_pct = match s.battery {
        None => None,
        Some(b @ 0..=100) => Some(b as u8),
        Some(_) => return Err(invalid("battery must be 0..=100")),
    };
    let strap = match s.strap.as_deref() {
        None => None,
        Some("closed") => Some(StrapState::Closed),
        Some("open") => Some(StrapState::Open),
        Some(_) => return Err(invalid("strap must be \"open\" or \"closed\"")),
    };
    let rssi_dbm = match s.rssi {
        None => None,
        Some(r @ -200..=0) => Some(r as i16),
        Some(_) => return Err(invalid("rssi must be -200..=0 dBm")),
    };
    if s.fw
        .as_ref()
        .is_some_and(|f| f.len() > MAX_SHORT_STRING || !super::is_printable(f))
    {
        return Err(invalid(
            "fw must be at most 64 bytes without control characters",
        ));
    }
    Ok(Status {
        battery_pct,
        charging: s.charging,
        strap,
        beacon: s.beacon,
        rssi_dbm,
        firmware: s.fw.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MessageKey;

    const NOW_MS: i64 = 1_764_133_200_000;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp_millis(NOW_MS).unwrap()
    }

    fn good_fix() -> WireFix {
        WireFix {
            ts_ms: NOW_MS - 1_000,
            lat: 51.5,
            lon: -0.12,
            acc: 8.5,
            ..Default::default()
        }
    }

    #[test]
    fn bad_fixes_are_refused_alone() {
        let bad = |f: fn(&mut WireFix)| {
            let mut x = good_fix();
            f(&mut x);
            x
        };
        let wire = WireMessage {
            device: Some("d".into()),
            key: MessageKey { boot: 1, seq: 1 },
            fixes: vec![
                good_fix(),
                bad(|f| f.lat = f64::NAN),
                bad(|f| f.lon = 181.0),
                bad(|f| f.lat = f64::INFINITY),
                bad(|f| f.acc = -1.0),
                bad(|f| f.acc = f64::NAN),
                bad(|f| f.ts_ms = NOW_MS + 5 * 60_000 + 1),
                bad(|f| f.ts_ms = 0),
                bad(|f| f.ts_ms = i64::MAX),
                bad(|f| f.speed = Some(-3.0)),
                bad(|f| f.ts_ms = NOW_MS + 5 * 60_000),
            ],
            status: None,
            events: vec![],
        };
        let v = validate(wire, DeviceId::parse("d").unwrap(), now());
        assert_eq!(
            v.telemetry.fixes.len(),
            2,
            "the good fix and the one exactly 5 min ahead"
        );
        let reasons: Vec<_> = v.rejections.iter().map(|r| (r.index, r.reason)).collect();
        use RejectReason::*;
        assert_eq!(
            reasons,
            vec![
                (1, InvalidCoordinates),
                (2, InvalidCoordinates),
                (3, InvalidCoordinates),
                (4, InvalidAccuracy),
                (5, InvalidAccuracy),
                (6, FutureTimestamp),
                (7, TimestampOutOfRange),
                (8, TimestampOutOfRange),
                (9, InvalidField),
            ]
        );
    }

    #[test]
    fn bad_status_and_events_do_not_take_fixes_with_them() {
        let wire = WireMessage {
            device: Some("d".into()),
            key: MessageKey { boot: 1, seq: 1 },
            fixes: vec![good_fix()],
            status: Some(WireStatus {
                battery: Some(250),
                ..Default::default()
            }),
            events: vec![
                WireEvent {
                    ts_ms: NOW_MS,
                    kind: "strap_open".into(),
                },
                WireEvent {
                    ts_ms: NOW_MS,
                    kind: "self_destruct".into(),
                },
                WireEvent {
                    ts_ms: NOW_MS,
                    kind: format!("{}é", "x".repeat(63)),
                },
            ],
        };
        let v = validate(wire, DeviceId::parse("d").unwrap(), now());
        assert_eq!(v.telemetry.fixes.len(), 1);
        assert_eq!(v.telemetry.events.len(), 1);
        assert!(v.telemetry.status.is_none());
        let reasons: Vec<_> = v.rejections.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            vec![
                RejectReason::UnknownEventKind,
                RejectReason::UnknownEventKind,
                RejectReason::InvalidField
            ]
        );
    }
}
