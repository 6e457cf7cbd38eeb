//! The message as a device sent it, before validation.

use sha2::{Digest, Sha256};

use crate::domain::MessageKey;

/// One fix as sent; numbers are unchecked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WireFix {
    /// Fix time, Unix epoch milliseconds.
    pub ts_ms: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Accuracy radius, metres.
    pub acc: f64,
    /// Altitude, metres.
    pub alt: Option<f64>,
    /// Speed, m/s.
    pub speed: Option<f64>,
    /// Heading, degrees.
    pub heading: Option<f64>,
    /// Source name (`gnss`, `wifi`, ...); unknown names become `unknown`.
    pub src: Option<String>,
}

/// The status block as sent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WireStatus {
    /// Battery percent.
    pub battery: Option<i64>,
    /// On charger.
    pub charging: Option<bool>,
    /// `open` or `closed`.
    pub strap: Option<String>,
    /// Home beacon in range.
    pub beacon: Option<bool>,
    /// Signal strength, dBm.
    pub rssi: Option<i64>,
    /// Firmware version.
    pub fw: Option<String>,
}

/// One event as sent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WireEvent {
    /// Event time, Unix epoch milliseconds.
    pub ts_ms: i64,
    /// Event kind name.
    pub kind: String,
}

/// A decoded, unvalidated message.
#[derive(Debug, Clone, PartialEq)]
pub struct WireMessage {
    /// Device id claimed in the payload; OwnTracks payloads carry none.
    pub device: Option<String>,
    /// De-duplication key.
    pub key: MessageKey,
    /// Fixes in device order.
    pub fixes: Vec<WireFix>,
    /// Status block.
    pub status: Option<WireStatus>,
    /// Events in device order.
    pub events: Vec<WireEvent>,
}

impl WireMessage {
    /// A digest of the message's content, stored beside its key so that a
    /// later message with the same key can be told apart: same digest is a
    /// redelivery, another digest is a `seq_conflict`. It is computed over a
    /// fixed field order (not the raw bytes) so a device re-serialising the
    /// same content differently is still a duplicate, and it is stable across
    /// releases because it is stored.
    pub fn digest(&self) -> [u8; 16] {
        let mut h = Sha256::new();
        let opt_f = |h: &mut Sha256, v: Option<f64>| match v {
            Some(x) => {
                h.update([1]);
                h.update(x.to_bits().to_le_bytes());
            }
            None => h.update([0]),
        };
        let opt_s = |h: &mut Sha256, v: &Option<String>| match v {
            Some(s) => {
                h.update([1]);
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            None => h.update([0]),
        };
        let opt_b = |h: &mut Sha256, v: Option<bool>| h.update([v.map_or(0, |b| 1 + b as u8)]);
        let opt_i = |h: &mut Sha256, v: Option<i64>| match v {
            Some(x) => {
                h.update([1]);
                h.update(x.to_le_bytes());
            }
            None => h.update([0]),
        };
        opt_s(&mut h, &self.device);
        h.update(self.key.boot.to_le_bytes());
        h.update(self.key.seq.to_le_bytes());
        h.update((self.fixes.len() as u64).to_le_bytes());
        for f in &self.fixes {
            h.update(f.ts_ms.to_le_bytes());
            h.update(f.lat.to_bits().to_le_bytes());
            h.update(f.lon.to_bits().to_le_bytes());
            h.update(f.acc.to_bits().to_le_bytes());
            opt_f(&mut h, f.alt);
            opt_f(&mut h, f.speed);
            opt_f(&mut h, f.heading);
            opt_s(&mut h, &f.src);
        }
        match &self.status {
            Some(s) => {
                h.update([1]);
                opt_i(&mut h, s.battery);
                opt_b(&mut h, s.charging);
                opt_s(&mut h, &s.strap);
                opt_b(&mut h, s.beacon);
                opt_i(&mut h, s.rssi);
                opt_s(&mut h, &s.fw);
            }
            None => h.update([0]),
        }
        h.update((self.events.len() as u64).to_le_bytes());
        for e in &self.events {
            h.update(e.ts_ms.to_le_bytes());
            h.update((e.kind.len() as u64).to_le_bytes());
            h.update(e.kind.as_bytes());
        }
        let full = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> WireMessage {
        WireMessage {
            device: Some("dev-1".into()),
            key: MessageKey { boot: 3, seq: 42 },
            fixes: vec![WireFix {
                ts_ms: 1,
                lat: 51.5,
                lon: -0.12,
                acc: 8.5,
                ..Default::default()
            }],
            status: None,
            events: vec![],
        }
    }

    #[test]
    fn digest_sees_any_content_change() {
        let a = msg();
        assert_eq!(a.digest(), msg().digest());
        let mut b = msg();
        b.fixes[0].lat = 51.500001;
        assert_ne!(a.digest(), b.digest());
        let mut c = msg();
        c.status = Some(WireStatus::default());
        assert_ne!(a.digest(), c.digest());
    }
}
