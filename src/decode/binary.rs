//! The compact binary encoding: protobuf, with the schema written as
//! hand-derived prost messages (no `protoc` needed at build time). The
//! messages live in the `waypoint-protocol` crate, shared with the device
//! simulator so the schema exists once; they are re-exported here so
//! `decode::binary::TelemetryPb` and friends keep their paths. The same
//! schema is printed as a `.proto` in docs/protocol.md for device vendors.
//!
//! Coordinates travel as 1e-7 degree integers (≈1 cm), accuracy and altitude
//! as decimetres, so a typical fix is ~20 bytes against ~80 in JSON.

use prost::Message;

use super::{check_counts, json, DecodeError, WireEvent, WireFix, WireMessage, WireStatus};
use crate::domain::{FixSource, RejectReason};

pub use waypoint_protocol::{EventPb, FixPb, StatusPb, TelemetryPb};

const SRC_NAMES: [&str; 5] = ["gnss", "gnss", "wifi", "cell", "fused"];

fn src_code(src: Option<&str>) -> u32 {
    match src.and_then(FixSource::parse) {
        Some(FixSource::Wifi) => 2,
        Some(FixSource::Cell) => 3,
        Some(FixSource::Fused) => 4,
        _ => 1,
    }
}

/// Decodes a binary telemetry payload.
pub fn decode(payload: &[u8]) -> Result<WireMessage, DecodeError> {
    let m = TelemetryPb::decode(payload)
        .map_err(|e| DecodeError::new(RejectReason::MalformedBinary, e.to_string()))?;
    if m.v != json::VERSION as u32 {
        return Err(DecodeError::new(
            RejectReason::UnsupportedVersion,
            format!("version {} is not supported; this server speaks v1", m.v),
        ));
    }
    check_counts(m.fixes.len(), m.events.len())?;
    let key = json::key(m.boot, m.seq)?;
    Ok(WireMessage {
        device: Some(m.device),
        key,
        fixes: m
            .fixes
            .into_iter()
            .map(|f| WireFix {
                ts_ms: f.ts_ms,
                lat: f64::from(f.lat_e7) / 1e7,
                lon: f64::from(f.lon_e7) / 1e7,
                acc: f64::from(f.acc_dm) / 10.0,
                alt: f.alt_dm.map(|x| f64::from(x) / 10.0),
                speed: f.speed_cms.map(|x| f64::from(x) / 100.0),
                heading: f.heading_cdeg.map(|x| f64::from(x) / 100.0),
                src: Some(
                    SRC_NAMES
                        .get(f.src as usize)
                        .copied()
                        .unwrap_or("unknown")
                        .to_owned(),
                ),
            })
            .collect(),
        status: m.status.map(|s| WireStatus {
            battery: s.battery.map(i64::from),
            charging: s.charging,
            strap: s.strap.map(|c| {
                match c {
                    1 => "closed",
                    2 => "open",
                    _ => "invalid",
                }
                .to_owned()
            }),
            beacon: s.beacon,
            rssi: s.rssi.map(i64::from),
            fw: s.fw,
        }),
        events: m
            .events
            .into_iter()
            .map(|e| WireEvent {
                ts_ms: e.ts_ms,
                kind: e.kind,
            })
            .collect(),
    })
}

/// Encodes a wire message in the binary format (used by the simulator, the
/// benchmarks and the test vectors). Values are rounded to the binary
/// resolution; out-of-range numbers saturate, which validation then refuses.
pub fn encode(m: &WireMessage) -> Vec<u8> {
    let sat_i32 = |x: f64| x.round().clamp(i32::MIN as f64, i32::MAX as f64) as i32;
    let sat_u32 = |x: f64| x.round().clamp(0.0, u32::MAX as f64) as u32;
    let pb = TelemetryPb {
        v: json::VERSION as u32,
        device: m.device.clone().unwrap_or_default(),
        boot: m.key.boot.max(0) as u64,
        seq: m.key.seq.max(0) as u64,
        fixes: m
            .fixes
            .iter()
            .map(|f| FixPb {
                ts_ms: f.ts_ms,
                lat_e7: sat_i32(f.lat * 1e7),
                lon_e7: sat_i32(f.lon * 1e7),
                acc_dm: sat_u32(f.acc * 10.0),
                alt_dm: f.alt.map(|x| sat_i32(x * 10.0)),
                speed_cms: f.speed.map(|x| sat_u32(x * 100.0)),
                heading_cdeg: f.heading.map(|x| sat_u32(x * 100.0)),
                src: src_code(f.src.as_deref()),
            })
            .collect(),
        status: m.status.as_ref().map(|s| StatusPb {
            battery: s.battery.map(|b| b.clamp(0, u32::MAX as i64) as u32),
            charging: s.charging,
            strap: s.strap.as_deref().map(|x| if x == "open" { 2 } else { 1 }),
            beacon: s.beacon,
            rssi: s
                .rssi
                .map(|r| r.clamp(i32::MIN as i64, i32::MAX as i64) as i32),
            fw: s.fw.clone(),
        }),
        events: m
            .events
            .iter()
            .map(|e| EventPb {
                ts_ms: e.ts_ms,
                kind: e.kind.clone(),
            })
            .collect(),
    };
    pb.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MessageKey;

    #[test]
    fn round_trips_at_binary_resolution() {
        let m = WireMessage {
            device: Some("dev-1".into()),
            key: MessageKey { boot: 3, seq: 42 },
            fixes: vec![WireFix {
                ts_ms: 1_764_133_200_000,
                lat: 51.5,
                lon: -0.12,
                acc: 8.5,
                alt: Some(12.3),
                speed: None,
                heading: None,
                src: Some("gnss".into()),
            }],
            status: Some(WireStatus {
                battery: Some(87),
                charging: Some(false),
                strap: Some("closed".into()),
                beacon: Some(true),
                rssi: None,
                fw: None,
            }),
            events: vec![WireEvent {
                ts_ms: 1_764_133_200_000,
                kind: "strap_open".into(),
            }],
        };
        let bytes = encode(&m);
        assert_eq!(bytes[0], 0x08, "first byte is the tag of `v`");
        let back = decode(&bytes).unwrap();
        assert_eq!(back.key, m.key);
        assert!((back.fixes[0].lat - 51.5).abs() < 1e-7);
        assert!((back.fixes[0].lon + 0.12).abs() < 1e-7);
        assert_eq!(back.fixes[0].acc, 8.5);
        assert_eq!(back.status, m.status);
        assert_eq!(back.events, m.events);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for p in [
            &[0xffu8, 0xff, 0xff][..],
            &[0x0a, 0xff, 0x01],
            &[0x2a, 0x80],
        ] {
            assert_eq!(decode(p).unwrap_err().reason, RejectReason::MalformedBinary);
        }
        // A valid protobuf with another version.
        let v2 = TelemetryPb {
            v: 2,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            decode(&v2).unwrap_err().reason,
            RejectReason::UnsupportedVersion
        );
    }
}
