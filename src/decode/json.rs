//! JSON v1, the readable encoding (docs/protocol.md).

use serde::Deserialize;

use super::{check_counts, DecodeError, WireEvent, WireFix, WireMessage, WireStatus};
use crate::domain::{MessageKey, RejectReason};

/// The only JSON version this server speaks.
pub const VERSION: u64 = 1;

// Unknown fields are ignored on purpose: newer firmware may add fields, and
// `v` is what signals an incompatible change.
#[derive(Deserialize)]
struct JsonMessage {
    v: u64,
    device: String,
    boot: u64,
    seq: u64,
    #[serde(default)]
    fixes: Vec<JsonFix>,
    #[serde(default)]
    status: Option<JsonStatus>,
    #[serde(default)]
    events: Vec<JsonEvent>,
}

#[derive(Deserialize)]
struct JsonFix {
    ts: i64,
    lat: f64,
    lon: f64,
    acc: f64,
    #[serde(default)]
    alt: Option<f64>,
    #[serde(default)]
    spd: Option<f64>,
    #[serde(default)]
    hdg: Option<f64>,
    #[serde(default)]
    src: Option<String>,
}

#[derive(Deserialize)]
struct JsonStatus {
    #[serde(default)]
    battery: Option<i64>,
    #[serde(default)]
    charging: Option<bool>,
    #[serde(default)]
    strap: Option<String>,
    #[serde(default)]
    beacon: Option<bool>,
    #[serde(default)]
    rssi: Option<i64>,
    #[serde(default)]
    fw: Option<String>,
}

#[derive(Deserialize)]
struct JsonEvent {
    ts: i64,
    kind: String,
}

/// Only `v`, read when the full parse fails, to tell "a version we do not
/// speak" from "broken v1".
#[derive(Deserialize)]
struct VersionProbe {
    v: u64,
}

/// Decodes a JSON v1 telemetry payload.
pub fn decode(payload: &[u8]) -> Result<WireMessage, DecodeError> {
    let m: JsonMessage = match serde_json::from_slice(payload) {
        Ok(m) => m,
        Err(e) => {
            return Err(match serde_json::from_slice::<VersionProbe>(payload) {
                Ok(p) if p.v != VERSION => unsupported(p.v),
                _ => DecodeError::new(RejectReason::MalformedJson, e.to_string()),
            })
        }
    };
    if m.v != VERSION {
        return Err(unsupported(m.v));
    }
    check_counts(m.fixes.len(), m.events.len())?;
    let key = key(m.boot, m.seq)?;
    Ok(WireMessage {
        device: Some(m.device),
        key,
        fixes: m
            .fixes
            .into_iter()
            .map(|f| WireFix {
                ts_ms: f.ts,
                lat: f.lat,
                lon: f.lon,
                acc: f.acc,
                alt: f.alt,
                speed: f.spd,
                heading: f.hdg,
                src: f.src,
            })
            .collect(),
        status: m.status.map(|s| WireStatus {
            battery: s.battery,
            charging: s.charging,
            strap: s.strap,
            beacon: s.beacon,
            rssi: s.rssi,
            fw: s.fw,
        }),
        events: m
            .events
            .into_iter()
            .map(|e| WireEvent {
                ts_ms: e.ts,
                kind: e.kind,
            })
            .collect(),
    })
}

fn unsupported(v: u64) -> DecodeError {
    DecodeError::new(
        RejectReason::UnsupportedVersion,
        format!("version {v} is not supported; this server speaks v{VERSION}"),
    )
}

/// `boot` and `seq` are unsigned on the wire and stored as signed 64-bit.
pub(crate) fn key(boot: u64, seq: u64) -> Result<MessageKey, DecodeError> {
    let conv = |name: &str, x: u64| {
        i64::try_from(x).map_err(|_| {
            DecodeError::new(
                RejectReason::InvalidField,
                format!("{name} {x} exceeds {}", i64::MAX),
            )
        })
    };
    Ok(MessageKey {
        boot: conv("boot", boot)?,
        seq: conv("seq", seq)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_issue_example() {
        let p = br#"{"v":1,"device":"dev-1","boot":3,"seq":42,"fixes":[{"ts":1764133200000,"lat":51.5,"lon":-0.12,"acc":8.5,"src":"gnss"}],"status":{"battery":87,"charging":false,"strap":"closed","beacon":true},"events":[{"ts":1764133200000,"kind":"strap_open"}]}"#;
        let m = decode(p).unwrap();
        assert_eq!(m.device.as_deref(), Some("dev-1"));
        assert_eq!(m.key, MessageKey { boot: 3, seq: 42 });
        assert_eq!(m.fixes.len(), 1);
        assert_eq!(m.fixes[0].lat, 51.5);
        assert_eq!(m.status.as_ref().unwrap().battery, Some(87));
        assert_eq!(m.events[0].kind, "strap_open");
    }

    #[test]
    fn optional_blocks_may_be_missing() {
        let m = decode(br#"{"v":1,"device":"d","boot":0,"seq":0}"#).unwrap();
        assert!(m.fixes.is_empty() && m.status.is_none() && m.events.is_empty());
    }

    #[test]
    fn refusals_have_reasons() {
        let r = |p: &[u8]| decode(p).unwrap_err().reason;
        assert_eq!(r(b"{not json"), RejectReason::MalformedJson);
        assert_eq!(
            r(br#"{"v":2,"whatever":true}"#),
            RejectReason::UnsupportedVersion
        );
        assert_eq!(
            r(br#"{"v":2,"device":"d","boot":0,"seq":0}"#),
            RejectReason::UnsupportedVersion
        );
        assert_eq!(
            r(br#"{"v":1,"device":"d","boot":0,"seq":"x"}"#),
            RejectReason::MalformedJson
        );
        assert_eq!(
            r(br#"{"v":1,"device":"d","boot":0,"seq":18446744073709551615}"#),
            RejectReason::InvalidField
        );
        // NaN is not JSON; huge exponents overflow f64.
        assert_eq!(
            r(br#"{"v":1,"device":"d","boot":0,"seq":1,"fixes":[{"ts":1,"lat":NaN,"lon":0,"acc":1}]}"#),
            RejectReason::MalformedJson
        );
        assert_eq!(r(&[0xff, 0xfe, b'{']), RejectReason::MalformedJson);
        let deep = "[".repeat(10_000);
        assert_eq!(
            r(format!(r#"{{"v":1,"device":"d","boot":0,"seq":1,"x":{deep}}}"#).as_bytes()),
            RejectReason::MalformedJson
        );
    }
}
