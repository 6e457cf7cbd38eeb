//! OwnTracks compatibility: the `_type: location` JSON that the public
//! OwnTracks apps publish on `owntracks/{user}/{device}`, so a phone can feed
//! the server. OwnTracks has no sequence number; messages are de-duplicated on
//! (device, `tst`).

use serde::Deserialize;

use super::{DecodeError, WireFix, WireMessage, WireStatus};
use crate::domain::{MessageKey, RejectReason};

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "_type")]
    kind: String,
}

#[derive(Deserialize)]
struct Location {
    lat: f64,
    lon: f64,
    /// Epoch seconds of the fix.
    tst: i64,
    #[serde(default)]
    acc: Option<f64>,
    #[serde(default)]
    alt: Option<f64>,
    /// km/h
    #[serde(default)]
    vel: Option<f64>,
    /// Course over ground, degrees.
    #[serde(default)]
    cog: Option<f64>,
    #[serde(default)]
    batt: Option<i64>,
    /// Battery status: 0 unknown, 1 unplugged, 2 charging, 3 full.
    #[serde(default)]
    bs: Option<i64>,
}

/// Accuracy assumed when the app omits `acc`: pessimistic, so the rules engine
/// never treats an unknown-accuracy fix as precise.
pub const DEFAULT_ACCURACY_M: f64 = 100.0;

/// Decodes an OwnTracks payload. Only `_type: location` is accepted; other
/// types (`lwt`, `transition`, `card`, ...) are refused as `unsupported_type`.
pub fn decode(payload: &[u8]) -> Result<WireMessage, DecodeError> {
    let probe: Probe = serde_json::from_slice(payload)
        .map_err(|e| DecodeError::new(RejectReason::MalformedJson, e.to_string()))?;
    if probe.kind != "location" {
        return Err(DecodeError::new(
            RejectReason::UnsupportedType,
            format!(
                "OwnTracks _type {:?}; only \"location\" is accepted",
                super::clip(&probe.kind, 32)
            ),
        ));
    }
    let l: Location = serde_json::from_slice(payload)
        .map_err(|e| DecodeError::new(RejectReason::MalformedJson, e.to_string()))?;
    let ts_ms = l
        .tst
        .checked_mul(1000)
        .ok_or_else(|| DecodeError::new(RejectReason::TimestampOutOfRange, "tst overflows"))?;
    let status = (l.batt.is_some() || l.bs.is_some()).then(|| WireStatus {
        battery: l.batt,
        charging: l.bs.and_then(|bs| match bs {
            1 => Some(false),
            2 | 3 => Some(true),
            _ => None,
        }),
        ..Default::default()
    });
    Ok(WireMessage {
        device: None,
        key: MessageKey::owntracks(l.tst),
        fixes: vec![WireFix {
            ts_ms,
            lat: l.lat,
            lon: l.lon,
            acc: l.acc.unwrap_or(DEFAULT_ACCURACY_M),
            alt: l.alt,
            speed: l.vel.map(|kmh| kmh / 3.6),
            heading: l.cog,
            src: Some("unknown".into()),
        }],
        status,
        events: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_an_app_location() {
        let p = br#"{"_type":"location","tid":"ph","lat":48.8566,"lon":2.3522,"tst":1764133200,"acc":12,"alt":35,"batt":64,"bs":2,"vel":36,"conn":"m"}"#;
        let m = decode(p).unwrap();
        assert_eq!(m.key, MessageKey::owntracks(1_764_133_200));
        assert_eq!(m.fixes[0].ts_ms, 1_764_133_200_000);
        assert_eq!(m.fixes[0].speed, Some(10.0));
        let s = m.status.unwrap();
        assert_eq!((s.battery, s.charging), (Some(64), Some(true)));
    }

    #[test]
    fn other_types_are_refused_with_a_reason() {
        let e = decode(br#"{"_type":"lwt","tst":1}"#).unwrap_err();
        assert_eq!(e.reason, RejectReason::UnsupportedType);
        // A multi-byte character across the quoting limit must not panic.
        let long = format!(r#"{{"_type":"{}é"}}"#, "a".repeat(31));
        let e = decode(long.as_bytes()).unwrap_err();
        assert_eq!(e.reason, RejectReason::UnsupportedType);
        let e = decode(br#"{"_type":"location","lat":"x"}"#).unwrap_err();
        assert_eq!(e.reason, RejectReason::MalformedJson);
        let e = decode(br#"{"_type":"location","lat":1,"lon":1,"tst":9223372036854775807}"#)
            .unwrap_err();
        assert_eq!(e.reason, RejectReason::TimestampOutOfRange);
    }
}
