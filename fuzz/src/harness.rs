//! What every fuzz target and `tests/hostile_input.rs` check about one
//! input: it does not panic, and it is either accepted (and then meets the
//! protocol's ranges) or refused with a typed reason and a short,
//! non-empty message. Shared by both so a corpus file found by the fuzzer
//! is replayed in CI through the very same code.

use chrono::{DateTime, Utc};
use serde_json::Value;
use waypoint::decode::{self, DecodeError, WireMessage};
use waypoint::decode::{MAX_EVENTS_PER_MESSAGE, MAX_FIXES_PER_MESSAGE, MAX_FUTURE_SKEW};
use waypoint::domain::{DeviceId, ItemKind, RejectReason};
use waypoint::geofence::{check_simple, PreparedZone, Shape};

/// Server clock used for validation: the protocol vectors' time, so the
/// seeds from docs/protocol.md are accepted.
pub const NOW_MS: i64 = 1_764_133_200_000;

/// Longest refusal message accepted from a decoder or validator: details
/// are stored per refusal and can reach logs, so they must not grow with
/// the input.
pub const MAX_DETAIL: usize = 512;

/// What became of one telemetry payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The whole message was refused.
    Refused(RejectReason),
    /// The message was read; some items may still have been refused.
    Accepted {
        /// Fixes kept.
        fixes: usize,
        /// Events kept.
        events: usize,
        /// Items refused on their own (fix, event, status).
        item_rejections: usize,
    },
}

/// What became of one zone document.
#[derive(Debug, Clone, PartialEq)]
pub enum ZoneOutcome {
    /// Not JSON at all (the API's JSON extractor refuses it first).
    NotJson,
    /// Refused by `Shape::from_geojson` or `check_simple`, with its message.
    Refused(String),
    /// Accepted as this kind of zone.
    Accepted(&'static str),
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(NOW_MS).expect("valid clock")
}

fn check_refusal(e: &DecodeError) -> Outcome {
    assert!(!e.detail.is_empty(), "refusal without detail: {e:?}");
    assert!(
        e.detail.len() <= MAX_DETAIL,
        "refusal detail of {} bytes",
        e.detail.len()
    );
    assert!(!e.to_string().is_empty());
    assert!(
        !matches!(
            e.reason,
            RejectReason::InvalidCoordinates
                | RejectReason::InvalidAccuracy
                | RejectReason::FutureTimestamp
                | RejectReason::UnknownEventKind
                | RejectReason::StorageRejected
        ),
        "item-scope reason {:?} refused a whole message",
        e.reason
    );
    Outcome::Refused(e.reason)
}

/// Validates a decoded message the way the ingest pipeline does and checks
/// that every item is either kept within range or refused with a reason.
pub fn message(wire: WireMessage) -> Outcome {
    assert!(wire.fixes.len() <= MAX_FIXES_PER_MESSAGE);
    assert!(wire.events.len() <= MAX_EVENTS_PER_MESSAGE);
    // The claimed id is checked against the topic's; it must never panic.
    if let Some(d) = &wire.device {
        let _ = DeviceId::parse(d);
    }
    let _ = wire.digest();
    let (n_fixes, n_events, had_status) =
        (wire.fixes.len(), wire.events.len(), wire.status.is_some());
    let id = DeviceId::parse("fuzz-dev").expect("valid id");
    let v = decode::validate(wire, id, now());
    let t = &v.telemetry;
    let earliest = DateTime::from_timestamp_millis(946_684_800_000).expect("2000-01-01");
    let latest = now() + MAX_FUTURE_SKEW;
    for f in &t.fixes {
        assert!((-90.0..=90.0).contains(&f.lat) && (-180.0..=180.0).contains(&f.lon));
        assert!(f.acc_m.is_finite() && f.acc_m >= 0.0);
        assert!(f.ts >= earliest && f.ts <= latest, "fix time {}", f.ts);
        for x in [f.alt_m, f.speed_mps, f.heading_deg].into_iter().flatten() {
            assert!(x.is_finite());
        }
    }
    for e in &t.events {
        assert!(e.ts >= earliest && e.ts <= latest);
    }
    let count = |k: ItemKind| v.rejections.iter().filter(|r| r.kind == k).count();
    assert_eq!(
        t.fixes.len() + count(ItemKind::Fix),
        n_fixes,
        "each fix kept or refused once"
    );
    assert_eq!(t.events.len() + count(ItemKind::Event), n_events);
    assert_eq!(
        usize::from(t.status.is_some()) + count(ItemKind::Status),
        usize::from(had_status)
    );
    for r in &v.rejections {
        assert!(
            !r.detail.is_empty() && r.detail.len() <= MAX_DETAIL,
            "{r:?}"
        );
        let limit = match r.kind {
            ItemKind::Fix => n_fixes,
            ItemKind::Event => n_events,
            _ => 1,
        };
        assert!((r.index as usize) < limit.max(1));
    }
    Outcome::Accepted {
        fixes: t.fixes.len(),
        events: t.events.len(),
        item_rejections: v.rejections.len(),
    }
}

fn run(r: Result<WireMessage, DecodeError>) -> Outcome {
    match r {
        Ok(w) => message(w),
        Err(e) => check_refusal(&e),
    }
}

/// JSON v1, through the decoder and through the native-topic dispatcher.
pub fn json(data: &[u8]) -> Outcome {
    let direct = run(decode::json::decode(data));
    let native = run(decode::decode_native(data));
    if data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        assert_eq!(direct, native, "decode_native routes `{{` to JSON");
    }
    direct
}

/// Binary v1 (protobuf). A payload that decodes is re-encoded and decoded
/// again: what the server's own encoder writes it must read back.
pub fn binary(data: &[u8]) -> Outcome {
    let r = decode::binary::decode(data);
    if let Ok(w) = &r {
        let again = decode::binary::decode(&decode::binary::encode(w));
        let again = again.expect("re-encoded message decodes");
        assert_eq!((again.key, again.fixes.len()), (w.key, w.fixes.len()));
    }
    run(r)
}

/// OwnTracks `_type: location` JSON.
pub fn owntracks(data: &[u8]) -> Outcome {
    run(decode::owntracks::decode(data))
}

/// A zone document as the API and provisioning files read it: JSON, then
/// `Shape::from_geojson`, then the topology check; an accepted shape is
/// prepared for evaluation, related to a few points and round-tripped.
pub fn zone(data: &[u8]) -> ZoneOutcome {
    match serde_json::from_slice::<Value>(data) {
        Ok(v) => zone_value(&v),
        Err(_) => ZoneOutcome::NotJson,
    }
}

/// [`zone`] for an already parsed document.
pub fn zone_value(v: &Value) -> ZoneOutcome {
    let refused = |m: String| {
        assert!(
            !m.is_empty() && m.len() <= MAX_DETAIL,
            "zone refusal: {m:?}"
        );
        ZoneOutcome::Refused(m)
    };
    let shape = match Shape::from_geojson(v) {
        Ok(s) => s,
        Err(e) => return refused(e.to_string()),
    };
    if let Err(m) = check_simple(&shape) {
        return refused(m);
    }
    assert_eq!(
        Shape::from_geojson(&shape.to_geojson()).as_ref(),
        Ok(&shape),
        "canonical form reads back"
    );
    let z = PreparedZone::new(&shape);
    let [x0, y0, x1, y1] = z.envelope();
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    for (lon, lat) in [
        (cx, cy),
        (x0, y0),
        (x1, y1),
        (x0 - 0.01, cy),
        (cx, y1 + 0.01),
    ] {
        let (lon, lat) = (lon.clamp(-180.0, 180.0), lat.clamp(-89.0, 89.0));
        let r = z.relate(lat, lon);
        assert!(r.boundary_m.is_finite() && r.boundary_m >= 0.0, "{r:?}");
        let _ = z.relate_capped(lat, lon, 50.0);
    }
    ZoneOutcome::Accepted(shape.kind())
}
