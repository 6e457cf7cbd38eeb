//! The test vectors printed in docs/protocol.md decode as documented, and
//! both encodings of the same message give the same domain values.

use chrono::DateTime;
use waypoint::decode::{self, binary};
use waypoint::domain::{DeviceId, EventKind, MessageKey, StrapState};

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
