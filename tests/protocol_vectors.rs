//! The test vectors printed in docs/protocol.md decode as documented, and
//! both encodings of the same message give the same domain values, whether
//! the server's own encoder or the device simulator's produced them.

use chrono::DateTime;
use firmware_sim::encode::{self as sim, Encoding};
use waypoint::decode::{self, binary};
use waypoint::domain::{DeviceId, EventKind, FixSource, MessageKey, StrapState};

fn block(doc: &str, tag: &str) -> String {
    let start = doc
        .find(&format!("```{tag}\n"))
        .unwrap_or_else(|| panic!("docs/protocol.md has no ```{tag} block"));
    let body = &doc[start + tag.len() + 4..];
    body[..body.find("```").expect("closed block")]
        .trim()
        .to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn documented_vectors_decode_to_the_same_values() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md"))
        .expect("docs/protocol.md");
    let json = block(&doc, "vector-json");
    let bin_hex = block(&doc, "vector-binary-hex");

    let from_json = decode::decode_native(json.as_bytes()).expect("JSON vector decodes");
    let encoded = hex(&binary::encode(&from_json));
    assert_eq!(
        bin_hex, encoded,
        "the binary vector in docs/protocol.md is not the encoding of the JSON vector"
    );
    let from_bin = decode::decode_native(&unhex(&bin_hex)).expect("binary vector decodes");

    let now = DateTime::from_timestamp_millis(1_764_133_200_000).unwrap();
    let id = DeviceId::parse("dev-1").unwrap();
    let a = decode::validate(from_json, id.clone(), now);
    let b = decode::validate(from_bin, id, now);
    assert!(a.rejections.is_empty() && b.rejections.is_empty());
    assert_eq!(a.telemetry, b.telemetry);

    let t = a.telemetry;
    assert_eq!(t.key, MessageKey { boot: 3, seq: 42 });
    assert_eq!(
        (t.fixes[0].lat, t.fixes[0].lon, t.fixes[0].acc_m),
        (51.5, -0.12, 8.5)
    );
    assert_eq!(t.fixes[0].ts, now);
    let s = t.status.expect("status");
    assert_eq!(s.battery_pct, Some(87));
    assert_eq!(s.strap, Some(StrapState::Closed));
    assert_eq!(s.beacon, Some(true));
    assert_eq!(t.events[0].kind, EventKind::StrapOpen);
}

/// Messages as the simulator builds them: every fix source, optional fields
/// set and unset, values finer than the binary resolution (so rounding is
/// exercised), strap open and closed, every event kind, and a heartbeat.
fn simulator_messages() -> Vec<sim::Telemetry> {
    use sim::{Event, EventKind as K, Fix, FixSource as Src, Status, Telemetry};
    const NOW_MS: i64 = 1_764_133_200_000;
    let event = |ago_ms: i64, kind| Event {
        ts_ms: NOW_MS - ago_ms,
        kind,
    };
    vec![
        Telemetry {
            device: "tag-0001".into(),
            boot: 3,
            seq: 42,
            fixes: vec![
                Fix {
                    ts_ms: NOW_MS - 60_000,
                    lat: 51.501_234_567_89,
                    lon: -0.141_234_567_89,
                    acc_m: 4.27,
                    speed_mps: Some(1.337),
                    heading_deg: Some(359.994),
                    src: Src::Gnss,
                },
                Fix {
                    ts_ms: NOW_MS - 30_000,
                    lat: 51.501_3,
                    lon: -0.141_3,
                    acc_m: 23.04,
                    speed_mps: None,
                    heading_deg: None,
                    src: Src::Wifi,
                },
                Fix {
                    ts_ms: NOW_MS - 1_000,
                    lat: -33.868_819_999,
                    lon: 151.209_295_001,
                    acc_m: 850.0,
                    speed_mps: Some(0.0),
                    heading_deg: None,
                    src: Src::Cell,
                },
            ],
            status: Some(Status {
                battery: 14,
                charging: true,
                strap_open: true,
                beacon: false,
                rssi_dbm: Some(-97),
            }),
            events: vec![
                event(59_000, K::StrapOpen),
                event(40_000, K::BatteryLow),
                event(20_000, K::ChargerConnected),
            ],
        },
        Telemetry {
            device: "phone.7_b".into(),
            boot: 0,
            seq: 1 << 40,
            fixes: vec![Fix {
                ts_ms: NOW_MS,
                lat: 89.999_999_9,
                lon: -179.999_999_96,
                acc_m: 0.0,
                speed_mps: None,
                heading_deg: Some(12.347),
                src: Src::Gnss,
            }],
            status: Some(Status {
                battery: 100,
                charging: false,
                strap_open: false,
                beacon: true,
                rssi_dbm: None,
            }),
            events: vec![
                event(6_000, K::PowerOn),
                event(5_000, K::BeaconEnter),
                event(4_000, K::StrapClosed),
                event(3_000, K::ChargerDisconnected),
                event(2_000, K::BeaconLeave),
                event(1_000, K::PowerOff),
            ],
        },
        // A heartbeat: none of fixes, status, events.
        Telemetry {
            device: "tag-0002".into(),
            boot: 9,
            seq: 0,
            fixes: vec![],
            status: None,
            events: vec![],
        },
    ]
}

#[test]
fn simulator_encodings_decode_to_the_same_values_as_sent() {
    let now = DateTime::from_timestamp_millis(1_764_133_200_000).unwrap();
    for t in simulator_messages() {
        let id = DeviceId::parse(&t.device).unwrap();
        let decode = |enc: Encoding| {
            let mut buf = Vec::new();
            t.encode(enc, &mut buf);
            let wire = decode::decode_native(&buf)
                .unwrap_or_else(|e| panic!("{enc} from the simulator decodes: {e}"));
            assert_eq!(wire.device.as_deref(), Some(t.device.as_str()));
            let digest = wire.digest();
            let v = decode::validate(wire, id.clone(), now);
            assert!(v.rejections.is_empty(), "{enc}: {:?}", v.rejections);
            (v.telemetry, digest)
        };
        let (a, a_digest) = decode(Encoding::Json);
        let (b, b_digest) = decode(Encoding::Binary);
        assert_eq!(a, b, "{}: JSON and binary decode differently", t.device);
        // De-duplication compares this digest, so a retry in the other
        // encoding must be a duplicate, not a seq_conflict.
        assert_eq!(a_digest, b_digest, "{}: content digests differ", t.device);

        assert_eq!(
            a.key,
            MessageKey {
                boot: t.boot as i64,
                seq: t.seq as i64
            }
        );
        assert_eq!(a.fixes.len(), t.fixes.len());
        for (got, sent) in a.fixes.iter().zip(&t.fixes) {
            assert_eq!(got.ts.timestamp_millis(), sent.ts_ms);
            assert!(
                (got.lat - sent.lat).abs() <= 1e-7,
                "{} vs {}",
                got.lat,
                sent.lat
            );
            assert!(
                (got.lon - sent.lon).abs() <= 1e-7,
                "{} vs {}",
                got.lon,
                sent.lon
            );
            assert!(
                (got.acc_m - sent.acc_m).abs() <= 0.05,
                "{} vs {}",
                got.acc_m,
                sent.acc_m
            );
            let close = |g: Option<f32>, s: Option<f32>| match (g, s) {
                (Some(g), Some(s)) => (g - s).abs() <= 0.005,
                (g, s) => g.is_none() && s.is_none(),
            };
            assert!(close(got.speed_mps, sent.speed_mps), "{got:?} vs {sent:?}");
            assert!(
                close(got.heading_deg, sent.heading_deg),
                "{got:?} vs {sent:?}"
            );
            assert_eq!(got.alt_m, None);
            let src = match sent.src {
                sim::FixSource::Gnss => FixSource::Gnss,
                sim::FixSource::Wifi => FixSource::Wifi,
                sim::FixSource::Cell => FixSource::Cell,
            };
            assert_eq!(got.src, src);
        }
        match (&a.status, &t.status) {
            (None, None) => {}
            (Some(got), Some(sent)) => {
                assert_eq!(got.battery_pct, Some(sent.battery));
                assert_eq!(got.charging, Some(sent.charging));
                let strap = if sent.strap_open {
                    StrapState::Open
                } else {
                    StrapState::Closed
                };
                assert_eq!(got.strap, Some(strap));
                assert_eq!(got.beacon, Some(sent.beacon));
                assert_eq!(got.rssi_dbm, sent.rssi_dbm);
                assert_eq!(got.firmware, None);
            }
            other => panic!("{}: status {other:?}", t.device),
        }
        let events: Vec<_> = a
            .events
            .iter()
            .map(|e| (e.ts.timestamp_millis(), e.kind.as_str()))
            .collect();
        let sent: Vec<_> = t
            .events
            .iter()
            .map(|e| (e.ts_ms, e.kind.as_str()))
            .collect();
        assert_eq!(events, sent);
    }
}
