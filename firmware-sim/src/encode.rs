//! Device telemetry in the two native wire encodings the server accepts,
//! JSON v1 and binary v1 (protobuf), as specified in docs/protocol.md.
//!
//! The simulator keeps its own small model of a message instead of using the
//! server's types: it must not depend on the server crate (the server depends
//! on the simulator for its demo), and a device only ever says what this model
//! can hold. The protobuf schema itself comes from `waypoint-protocol`, which
//! the server decodes with, so the binary side cannot drift from the server.
//!
//! Numbers are rounded to the binary encoding's resolution in both encodings
//! (1e-7 degree, decimetre, cm/s, centidegree). The protocol promises that
//! both encodings of a message decode to the same values, and the server's
//! de-duplication compares decoded values; rounding JSON the same way keeps
//! that true for any input, and it also keeps JSON numbers short and within
//! what serde_json parses exactly. The resolution is far below any fix's
//! accuracy, so nothing observable is lost.

use std::fmt;
use std::str::FromStr;

use prost::Message;
use serde::{Serialize, Serializer};
use waypoint_protocol::{EventPb, FixPb, StatusPb, TelemetryPb};

/// The only protocol version this simulator speaks.
const VERSION: u32 = 1;

/// Binary resolutions (units per degree, metre, m/s, degree).
const LAT_LON_SCALE: f64 = 1e7;
const ACC_SCALE: f64 = 10.0;
const SPEED_SCALE: f64 = 100.0;
const HEADING_SCALE: f64 = 100.0;

/// Which wire encoding a simulated device publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON v1: readable, what most integrations and debugging use.
    Json,
    /// Binary v1 (protobuf): what cellular fleets use to save airtime.
    Binary,
}

impl FromStr for Encoding {
    // A plain message is enough for a command-line flag, and keeps the public
    // surface to the two names.
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "binary" => Ok(Self::Binary),
            other => Err(format!(
                "unknown encoding {other:?}; expected \"json\" or \"binary\""
            )),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The same names FromStr accepts, so a printed setting can be pasted back.
        f.write_str(match self {
            Self::Json => "json",
            Self::Binary => "binary",
        })
    }
}

/// How a simulated fix was obtained; the server weighs alerts by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixSource {
    /// Satellite positioning: metres of accuracy.
    Gnss,
    /// Wi-Fi lookup: tens of metres, typically indoors.
    Wifi,
    /// Cell-tower lookup: hundreds of metres, the fallback with no sky view.
    Cell,
}

impl FixSource {
    /// JSON name of the source.
    fn as_str(self) -> &'static str {
        match self {
            Self::Gnss => "gnss",
            Self::Wifi => "wifi",
            Self::Cell => "cell",
        }
    }

    /// Binary code of the source; 1 rather than 0 for GNSS so the field is
    /// explicit on the wire instead of relying on the protobuf default.
    fn code(self) -> u32 {
        match self {
            Self::Gnss => 1,
            Self::Wifi => 2,
            Self::Cell => 3,
        }
    }
}

/// One position as the device measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fix {
    /// Fix time, Unix epoch milliseconds (device clock, which may drift).
    pub ts_ms: i64,
    /// WGS84 latitude, degrees; sent at 1e-7 degree resolution.
    pub lat: f64,
    /// WGS84 longitude, degrees; sent at 1e-7 degree resolution.
    pub lon: f64,
    /// Horizontal accuracy radius, metres; sent at decimetre resolution.
    pub acc_m: f32,
    /// Ground speed, m/s, when the receiver reports it; sent in cm/s.
    pub speed_mps: Option<f32>,
    /// Course over ground, degrees from north, when moving; sent in centidegrees.
    pub heading_deg: Option<f32>,
    /// How the position was obtained.
    pub src: FixSource,
}

/// Device health when the message was built. A real tag always measures all
/// of these except the signal, which it lacks while out of coverage.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Battery charge, percent (the server accepts 0–100).
    pub battery: u8,
    /// On the charger.
    pub charging: bool,
    /// Strap circuit broken: the tamper signal.
    pub strap_open: bool,
    /// Home beacon in range: presence during curfew.
    pub beacon: bool,
    /// Cellular signal, dBm (the server accepts −200–0), when attached.
    pub rssi_dbm: Option<i16>,
}

/// Discrete things a simulated device reports happening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Strap circuit broken.
    StrapOpen,
    /// Strap circuit restored.
    StrapClosed,
    /// Charger connected.
    ChargerConnected,
    /// Charger disconnected.
    ChargerDisconnected,
    /// Home beacon came into range.
    BeaconEnter,
    /// Home beacon went out of range.
    BeaconLeave,
    /// Device powered on.
    PowerOn,
    /// Device powering off in an orderly way.
    PowerOff,
    /// Battery fell below the device's low threshold.
    BatteryLow,
}

impl EventKind {
    /// The protocol's name for the kind, identical in both encodings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StrapOpen => "strap_open",
            Self::StrapClosed => "strap_closed",
            Self::ChargerConnected => "charger_connected",
            Self::ChargerDisconnected => "charger_disconnected",
            Self::BeaconEnter => "beacon_enter",
            Self::BeaconLeave => "beacon_leave",
            Self::PowerOn => "power_on",
            Self::PowerOff => "power_off",
            Self::BatteryLow => "battery_low",
        }
    }
}

/// One discrete event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Event time, Unix epoch milliseconds (device clock).
    pub ts_ms: i64,
    /// What happened.
    pub kind: EventKind,
}

/// One telemetry message. `(device, boot, seq)` is its identity on the
/// server, so a retry must reuse all three with the same content.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// Device id; must equal the id in the topic.
    pub device: String,
    /// Restart counter.
    pub boot: u64,
    /// Sequence within the boot.
    pub seq: u64,
    /// Fixes, oldest first; many after a spell out of coverage.
    pub fixes: Vec<Fix>,
    /// Health block; devices may leave it out of catch-up messages.
    pub status: Option<Status>,
    /// Events, oldest first.
    pub events: Vec<Event>,
}

impl Telemetry {
    /// Appends the encoded payload to `buf` (cleared first), no allocation
    /// beyond buf growth where reasonably possible.
    ///
    /// The caller owns `buf` so one buffer can be reused per publisher at
    /// load-test rates. JSON is written straight into it; binary fills the
    /// shared prost structs first, which own their strings, so it costs a few
    /// small allocations per message in exchange for one schema definition.
    pub fn encode(&self, enc: Encoding, buf: &mut Vec<u8>) {
        buf.clear();
        match enc {
            Encoding::Json => self.encode_json(buf),
            Encoding::Binary => self.encode_binary(buf),
        }
    }

    fn encode_json(&self, buf: &mut Vec<u8>) {
        let msg = JsonMessage {
            v: VERSION,
            device: &self.device,
            boot: self.boot,
            seq: self.seq,
            fixes: JsonFixes(&self.fixes),
            status: self.status.as_ref().map(JsonStatus::from),
            events: JsonEvents(&self.events),
        };
        // Writing to a Vec cannot fail and every map key here is a string,
        // so an error would be a bug in this module, not a runtime condition.
        serde_json::to_writer(buf, &msg).expect("JSON telemetry serialises into a Vec");
    }

    fn encode_binary(&self, buf: &mut Vec<u8>) {
        let pb = TelemetryPb {
            v: VERSION,
            device: self.device.clone(),
            boot: self.boot,
            seq: self.seq,
            fixes: self
                .fixes
                .iter()
                .map(|f| FixPb {
                    ts_ms: f.ts_ms,
                    lat_e7: sat_i32(f.lat * LAT_LON_SCALE),
                    lon_e7: sat_i32(f.lon * LAT_LON_SCALE),
                    acc_dm: sat_u32(f64::from(f.acc_m) * ACC_SCALE),
                    alt_dm: None,
                    speed_cms: f.speed_mps.map(|s| sat_u32(f64::from(s) * SPEED_SCALE)),
                    heading_cdeg: f.heading_deg.map(|h| sat_u32(f64::from(h) * HEADING_SCALE)),
                    src: f.src.code(),
                })
                .collect(),
            status: self.status.as_ref().map(|s| StatusPb {
                battery: Some(u32::from(s.battery)),
                charging: Some(s.charging),
                strap: Some(if s.strap_open { 2 } else { 1 }),
                beacon: Some(s.beacon),
                rssi: s.rssi_dbm.map(i32::from),
                fw: None,
            }),
            events: self
                .events
                .iter()
                .map(|e| EventPb {
                    ts_ms: e.ts_ms,
                    kind: e.kind.as_str().to_owned(),
                })
                .collect(),
        };
        // A Vec grows on demand, so prost's capacity check cannot refuse it.
        pb.encode(buf)
            .expect("binary telemetry encodes into a growable Vec");
    }
}

/// `{prefix}em/v1/devices/{device}/telemetry`
///
/// The prefix is pasted as given (it normally ends in `/`) because that is
/// how the server's `--topic-prefix` composes topics.
pub fn telemetry_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}em/v1/devices/{device}/telemetry")
}

// Out-of-range values saturate rather than wrap, so a nonsense input stays
// nonsense on the wire and the server refuses it instead of storing a
// plausible wrong value; this mirrors the server's own encoder.
fn sat_i32(x: f64) -> i32 {
    x.round().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
}

fn sat_u32(x: f64) -> u32 {
    x.round().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// `x` at the binary resolution `1/scale`, computed exactly as the server
/// computes a decoded binary value, so JSON and binary decode bit-identically.
/// NaN and infinities stay non-finite (serde_json then writes `null`, which
/// the server refuses) rather than becoming a valid-looking zero.
fn quantize(x: f64, scale: f64) -> f64 {
    (x * scale).round() / scale
}

// Borrowing views in the JSON field names, so serialising allocates nothing
// and the public structs stay free of wire naming.

#[derive(Serialize)]
struct JsonMessage<'a> {
    v: u32,
    device: &'a str,
    boot: u64,
    seq: u64,
    #[serde(skip_serializing_if = "JsonFixes::is_empty")]
    fixes: JsonFixes<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<JsonStatus>,
    #[serde(skip_serializing_if = "JsonEvents::is_empty")]
    events: JsonEvents<'a>,
}

// Serialised by mapping each item on the fly, so no Vec of views is built.
struct JsonFixes<'a>(&'a [Fix]);

impl JsonFixes<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for JsonFixes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(JsonFix::from))
    }
}

struct JsonEvents<'a>(&'a [Event]);

impl JsonEvents<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for JsonEvents<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|e| JsonEvent {
            ts: e.ts_ms,
            kind: e.kind.as_str(),
        }))
    }
}

#[derive(Serialize)]
struct JsonFix {
    ts: i64,
    lat: f64,
    lon: f64,
    acc: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    spd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hdg: Option<f64>,
    src: &'static str,
}

impl From<&Fix> for JsonFix {
    fn from(f: &Fix) -> Self {
        Self {
            ts: f.ts_ms,
            lat: quantize(f.lat, LAT_LON_SCALE),
            lon: quantize(f.lon, LAT_LON_SCALE),
            acc: quantize(f64::from(f.acc_m), ACC_SCALE),
            spd: f.speed_mps.map(|s| quantize(f64::from(s), SPEED_SCALE)),
            hdg: f.heading_deg.map(|h| quantize(f64::from(h), HEADING_SCALE)),
            src: f.src.as_str(),
        }
    }
}

#[derive(Serialize)]
struct JsonStatus {
    battery: u8,
    charging: bool,
    strap: &'static str,
    beacon: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    rssi: Option<i16>,
}

impl From<&Status> for JsonStatus {
    fn from(s: &Status) -> Self {
        Self {
            battery: s.battery,
            charging: s.charging,
            strap: if s.strap_open { "open" } else { "closed" },
            beacon: s.beacon,
            rssi: s.rssi_dbm,
        }
    }
}

#[derive(Serialize)]
struct JsonEvent {
    ts: i64,
    kind: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const TS: i64 = 1_764_133_200_000;

    fn typical() -> Telemetry {
        Telemetry {
            device: "tag-0001".into(),
            boot: 3,
            seq: 42,
            fixes: vec![Fix {
                ts_ms: TS,
                lat: 51.501_234_56,
                lon: -0.141_234_56,
                acc_m: 4.2,
                speed_mps: Some(1.3),
                heading_deg: Some(87.5),
                src: FixSource::Gnss,
            }],
            status: Some(Status {
                battery: 87,
                charging: false,
                strap_open: false,
                beacon: true,
                rssi_dbm: Some(-71),
            }),
            events: vec![],
        }
    }

    fn json_of(t: &Telemetry) -> Value {
        let mut buf = Vec::new();
        t.encode(Encoding::Json, &mut buf);
        serde_json::from_slice(&buf).expect("valid JSON")
    }

    #[test]
    fn json_uses_the_protocol_field_names() {
        let mut t = typical();
        t.events.push(Event {
            ts_ms: TS,
            kind: EventKind::StrapOpen,
        });
        t.status.as_mut().unwrap().strap_open = true;
        let v = json_of(&t);
        assert_eq!(v["v"], 1);
        assert_eq!(v["device"], "tag-0001");
        assert_eq!((v["boot"].as_u64(), v["seq"].as_u64()), (Some(3), Some(42)));
        let f = &v["fixes"][0];
        assert_eq!(f["ts"], TS);
        assert_eq!(f["lat"], 51.501_234_6, "rounded to 1e-7 degree");
        assert_eq!(f["lon"], -0.141_234_6);
        assert_eq!(f["acc"], 4.2, "decimetres, without f32 noise");
        assert_eq!(f["spd"], 1.3);
        assert_eq!(f["hdg"], 87.5);
        assert_eq!(f["src"], "gnss");
        let s = &v["status"];
        assert_eq!(s["battery"], 87);
        assert_eq!(s["charging"], false);
        assert_eq!(s["strap"], "open");
        assert_eq!(s["beacon"], true);
        assert_eq!(s["rssi"], -71);
        assert_eq!(v["events"][0]["ts"], TS);
        assert_eq!(v["events"][0]["kind"], "strap_open");
    }

    #[test]
    fn json_omits_empty_arrays_and_absent_fields() {
        let mut t = typical();
        t.fixes[0].speed_mps = None;
        t.fixes[0].heading_deg = None;
        t.status.as_mut().unwrap().rssi_dbm = None;
        let v = json_of(&t);
        let fix = v["fixes"][0].as_object().unwrap();
        assert!(!fix.contains_key("spd") && !fix.contains_key("hdg"));
        assert!(!v["status"].as_object().unwrap().contains_key("rssi"));
        assert!(!v.as_object().unwrap().contains_key("events"));

        let heartbeat = Telemetry {
            fixes: vec![],
            status: None,
            ..typical()
        };
        let mut buf = Vec::new();
        heartbeat.encode(Encoding::Json, &mut buf);
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            r#"{"v":1,"device":"tag-0001","boot":3,"seq":42}"#
        );
    }

    #[test]
    fn binary_is_smaller_and_starts_with_the_version_tag() {
        let t = typical();
        let (mut json, mut bin) = (Vec::new(), Vec::new());
        t.encode(Encoding::Json, &mut json);
        t.encode(Encoding::Binary, &mut bin);
        assert_eq!(bin[0], 0x08, "the server sniffs binary by this tag");
        assert!(
            bin.len() * 2 < json.len(),
            "binary {} bytes vs JSON {}",
            bin.len(),
            json.len()
        );
    }

    #[test]
    fn binary_round_trips_through_the_shared_schema() {
        let mut t = typical();
        t.fixes.push(Fix {
            ts_ms: TS + 1_000,
            lat: -33.868_8,
            lon: 151.209_3,
            acc_m: 350.0,
            speed_mps: None,
            heading_deg: None,
            src: FixSource::Cell,
        });
        t.status.as_mut().unwrap().strap_open = true;
        t.events = vec![
            Event {
                ts_ms: TS,
                kind: EventKind::StrapOpen,
            },
            Event {
                ts_ms: TS + 5,
                kind: EventKind::BatteryLow,
            },
        ];
        let mut buf = Vec::new();
        t.encode(Encoding::Binary, &mut buf);
        let pb = TelemetryPb::decode(buf.as_slice()).expect("decodes");
        assert_eq!(
            (pb.v, pb.device.as_str(), pb.boot, pb.seq),
            (1, "tag-0001", 3, 42)
        );
        let f = &pb.fixes[0];
        assert_eq!((f.ts_ms, f.lat_e7, f.lon_e7), (TS, 515_012_346, -1_412_346));
        assert_eq!(
            (f.acc_dm, f.speed_cms, f.heading_cdeg),
            (42, Some(130), Some(8750))
        );
        assert_eq!((f.alt_dm, f.src), (None, 1));
        let c = &pb.fixes[1];
        assert_eq!(
            (c.lat_e7, c.lon_e7, c.acc_dm),
            (-338_688_000, 1_512_093_000, 3500)
        );
        assert_eq!((c.speed_cms, c.heading_cdeg, c.src), (None, None, 3));
        let s = pb.status.expect("status");
        assert_eq!(s.battery, Some(87));
        assert_eq!(s.charging, Some(false));
        assert_eq!(s.strap, Some(2));
        assert_eq!(s.beacon, Some(true));
        assert_eq!(s.rssi, Some(-71));
        assert_eq!(s.fw, None);
        let kinds: Vec<_> = pb
            .events
            .iter()
            .map(|e| (e.ts_ms, e.kind.as_str()))
            .collect();
        assert_eq!(kinds, [(TS, "strap_open"), (TS + 5, "battery_low")]);
    }

    #[test]
    fn encode_replaces_the_buffer_contents() {
        let t = typical();
        let mut buf = b"stale bytes".to_vec();
        t.encode(Encoding::Binary, &mut buf);
        let mut fresh = Vec::new();
        t.encode(Encoding::Binary, &mut fresh);
        assert_eq!(buf, fresh);
    }

    #[test]
    fn encoding_names_round_trip() {
        for e in [Encoding::Json, Encoding::Binary] {
            assert_eq!(e.to_string().parse::<Encoding>(), Ok(e));
        }
        assert!("protobuf".parse::<Encoding>().is_err());
    }

    #[test]
    fn topic_follows_the_protocol_layout() {
        assert_eq!(
            telemetry_topic("", "tag-1"),
            "em/v1/devices/tag-1/telemetry"
        );
        assert_eq!(
            telemetry_topic("tenant-a/", "tag-1"),
            "tenant-a/em/v1/devices/tag-1/telemetry"
        );
    }
}
