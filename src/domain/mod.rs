//! Pure domain types: no I/O, no wire formats. Every decoder produces these and
//! every later stage (rules, store, API) consumes them.

mod reject;

pub use reject::{ItemKind, ItemRejection, RejectReason};

use std::fmt;

use chrono::{DateTime, Utc};

/// Longest device id accepted; ids travel in topics, logs and URLs.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// A validated device identifier: 1–64 characters of `[A-Za-z0-9._-]`,
/// starting with a letter or digit. The restriction keeps ids safe in MQTT
/// topics (no `/`, `+`, `#`), file paths (no `..` prefix) and URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

/// Why a device id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// Empty or longer than [`MAX_DEVICE_ID_LEN`].
    #[error("device id must be 1..={MAX_DEVICE_ID_LEN} characters")]
    Length,
    /// Contains a character outside `[A-Za-z0-9._-]` or starts with `.`, `_` or `-`.
    #[error("device id may contain only A-Z a-z 0-9 . _ - and must start with a letter or digit")]
    Charset,
}

impl DeviceId {
    /// Validates and wraps `s`.
    pub fn parse(s: &str) -> Result<Self, DeviceIdError> {
        if s.is_empty() || s.len() > MAX_DEVICE_ID_LEN {
            return Err(DeviceIdError::Length);
        }
        let ok_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
        if !s.as_bytes()[0].is_ascii_alphanumeric() || !s.bytes().all(ok_char) {
            return Err(DeviceIdError::Charset);
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a position was obtained; affects how much an officer should trust it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixSource {
    /// Satellite positioning (GPS/Galileo/...).
    Gnss,
    /// Wi-Fi access-point lookup.
    Wifi,
    /// Cell-tower lookup; typically hundreds of metres.
    Cell,
    /// Device-side fusion of several sources.
    Fused,
    /// Phone apps (OwnTracks) that do not say.
    Unknown,
}

impl FixSource {
    /// Stable wire/database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gnss => "gnss",
            Self::Wifi => "wifi",
            Self::Cell => "cell",
            Self::Fused => "fused",
            Self::Unknown => "unknown",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "gnss" => Self::Gnss,
            "wifi" => Self::Wifi,
            "cell" => Self::Cell,
            "fused" => Self::Fused,
            "unknown" => Self::Unknown,
            _ => return None,
        })
    }
}

/// One validated position.
#[derive(Debug, Clone, PartialEq)]
pub struct Fix {
    /// When the device took the fix (device clock).
    pub ts: DateTime<Utc>,
    /// WGS84 latitude in degrees, within [-90, 90].
    pub lat: f64,
    /// WGS84 longitude in degrees, within [-180, 180].
    pub lon: f64,
    /// Horizontal accuracy radius in metres (68 % confidence); the rules
    /// engine classifies violations by it.
    pub acc_m: f32,
    /// Altitude above the ellipsoid in metres, when known.
    pub alt_m: Option<f32>,
    /// Ground speed in m/s, when known.
    pub speed_mps: Option<f32>,
    /// Course over ground in degrees from north, when known.
    pub heading_deg: Option<f32>,
    /// How the fix was obtained.
    pub src: FixSource,
}

/// State of the strap that holds an ankle tag on; an open strap is a tamper signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrapState {
    /// Strap intact.
    Closed,
    /// Strap circuit broken.
    Open,
}

impl StrapState {
    /// Stable wire/database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
        }
    }
}

/// Device health at the time of a message. Every field is optional because
/// devices report what they measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// Battery charge, 0–100 %.
    pub battery_pct: Option<u8>,
    /// Whether the device is on its charger.
    pub charging: Option<bool>,
    /// Strap circuit state.
    pub strap: Option<StrapState>,
    /// Whether the home beacon is in range (curfew presence).
    pub beacon: Option<bool>,
    /// Cellular signal in dBm, when known.
    pub rssi_dbm: Option<i16>,
    /// Firmware version string, when reported.
    pub firmware: Option<String>,
}

/// Discrete things a device reports happening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Strap circuit broken.
    StrapOpen,
    /// Strap circuit restored.
    StrapClosed,
    /// Case opened or device body tampered with.
    CaseTamper,
    /// Battery below the device's low threshold.
    BatteryLow,
    /// Charger connected.
    ChargerConnected,
    /// Charger disconnected.
    ChargerDisconnected,
    /// Home beacon came into range.
    BeaconEnter,
    /// Home beacon went out of range.
    BeaconLeave,
    /// Device powered on (also implied by a new `boot`).
    PowerOn,
    /// Device powering off (orderly).
    PowerOff,
    /// GNSS jamming or spoofing suspected by the receiver.
    GnssJamming,
}

impl EventKind {
    /// Every kind, for docs and tests.
    pub const ALL: [EventKind; 11] = [
        Self::StrapOpen,
        Self::StrapClosed,
        Self::CaseTamper,
        Self::BatteryLow,
        Self::ChargerConnected,
        Self::ChargerDisconnected,
        Self::BeaconEnter,
        Self::BeaconLeave,
        Self::PowerOn,
        Self::PowerOff,
        Self::GnssJamming,
    ];

    /// Stable wire/database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StrapOpen => "strap_open",
            Self::StrapClosed => "strap_closed",
            Self::CaseTamper => "case_tamper",
            Self::BatteryLow => "battery_low",
            Self::ChargerConnected => "charger_connected",
            Self::ChargerDisconnected => "charger_disconnected",
            Self::BeaconEnter => "beacon_enter",
            Self::BeaconLeave => "beacon_leave",
            Self::PowerOn => "power_on",
            Self::PowerOff => "power_off",
            Self::GnssJamming => "gnss_jamming",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One validated device event.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEvent {
    /// When it happened (device clock).
    pub ts: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
}

/// Identity of a message for de-duplication: a device's `boot` counter and
/// its per-boot `seq`. OwnTracks messages have no sequence; they use
/// [`MessageKey::owntracks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey {
    /// Device restart counter; `-1` marks the OwnTracks stream.
    pub boot: i64,
    /// Monotonic per boot; for OwnTracks, the `tst` (epoch seconds).
    pub seq: i64,
}

impl MessageKey {
    /// Boot value reserved for OwnTracks messages, which carry no boot counter;
    /// native boots are unsigned so they can never collide with it.
    pub const OWNTRACKS_BOOT: i64 = -1;

    /// The key of an OwnTracks message: de-duplicated on its `tst`.
    pub fn owntracks(tst: i64) -> Self {
        Self {
            boot: Self::OWNTRACKS_BOOT,
            seq: tst,
        }
    }
}

/// A validated telemetry message, ready for the rules engine and the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// The device that sent it (checked against the topic and enrollment).
    pub device: DeviceId,
    /// De-duplication key.
    pub key: MessageKey,
    /// Valid fixes in device order; invalid siblings are in the rejections.
    pub fixes: Vec<Fix>,
    /// Device status block, if sent and valid.
    pub status: Option<Status>,
    /// Valid events in device order.
    pub events: Vec<DeviceEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_refuse_topic_and_path_characters() {
        assert!(DeviceId::parse("dev-1").is_ok());
        assert!(DeviceId::parse("A.b_c-9").is_ok());
        for bad in [
            "", "+", "#", "a/b", "../x", ".x", "-x", "dev 1", "dév", "a+b",
        ] {
            assert!(DeviceId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(DeviceId::parse(&"a".repeat(65)), Err(DeviceIdError::Length));
    }

    #[test]
    fn event_kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("explode"), None);
    }
}
