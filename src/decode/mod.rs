//! Bytes → domain, pure and synchronous.
//!
//! Decoding has two steps so that every encoding shares one set of rules:
//! 1. a format decoder ([`json`], [`binary`], [`owntracks`]) turns bytes into a
//!    [`WireMessage`]: the message as the device said it, unvalidated;
//! 2. [`validate`] checks ranges against the server's clock and splits the
//!    message into accepted items and per-item rejections.

pub mod binary;
pub mod json;
pub mod owntracks;
mod validate;
mod wire;

pub use validate::{validate, Validated, MAX_FUTURE_SKEW};
pub use wire::{WireEvent, WireFix, WireMessage, WireStatus};

use crate::domain::RejectReason;

/// Most fixes one message may carry; a device with a larger backlog splits it.
pub const MAX_FIXES_PER_MESSAGE: usize = 2_000;
/// Most events one message may carry.
pub const MAX_EVENTS_PER_MESSAGE: usize = 256;
/// Longest free-text field (firmware version, event kind) accepted.
pub const MAX_SHORT_STRING: usize = 64;
/// Longest refusal detail kept. serde's messages quote the offending value
/// (`invalid type: string "…"`), which a hostile payload can make as large
/// as the payload cap; the detail is stored with every refusal and logged.
pub const MAX_DETAIL: usize = 200;

/// A whole-message refusal from a decoder.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DecodeError {
    /// Closed-set reason, stored and counted.
    pub reason: RejectReason,
    /// Human-readable detail for the rejected-messages row; never holds coordinates.
    pub detail: String,
}

impl DecodeError {
    pub(crate) fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > MAX_DETAIL {
            let end = clip(&detail, MAX_DETAIL).len();
            detail.truncate(end);
            detail.push('…');
        }
        Self { reason, detail }
    }
}

/// Decodes a payload published on a native `em/v1/devices/{id}/telemetry`
/// topic. JSON documents start with `{` (after optional whitespace); any other
/// first byte is the binary encoding, whose first byte is always a protobuf
/// tag (0x08 for `v`), never `{`.
pub fn decode_native(payload: &[u8]) -> Result<WireMessage, DecodeError> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'{') => json::decode(payload),
        Some(_) => binary::decode(payload),
        None => Err(DecodeError::new(
            RejectReason::MalformedJson,
            "empty payload",
        )),
    }
}

/// At most `max` bytes of `s`, cut on a character boundary, for quoting
/// device-supplied text in a refusal's detail.
pub(crate) fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether `s` is safe to store as text: PostgreSQL refuses NUL in `text`,
/// and control characters in a firmware version or kind are a device bug.
pub(crate) fn is_printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Checks shared by all decoders on the sizes of a decoded message.
pub(crate) fn check_counts(fixes: usize, events: usize) -> Result<(), DecodeError> {
    if fixes > MAX_FIXES_PER_MESSAGE {
        return Err(DecodeError::new(
            RejectReason::Oversize,
            format!("{fixes} fixes in one message; at most {MAX_FIXES_PER_MESSAGE}"),
        ));
    }
    if events > MAX_EVENTS_PER_MESSAGE {
        return Err(DecodeError::new(
            RejectReason::Oversize,
            format!("{events} events in one message; at most {MAX_EVENTS_PER_MESSAGE}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_never_splits_a_character() {
        let s = format!("{}é", "a".repeat(31));
        assert_eq!(clip(&s, 32), "a".repeat(31));
        assert_eq!(clip("abc", 2), "ab");
        assert_eq!(clip("é", 1), "");
        assert!(!is_printable("fw\u{0}1") && is_printable("1.2.3-é"));
    }

    #[test]
    fn refusal_details_do_not_grow_with_the_payload() {
        // serde quotes the wrong-typed value; a 100 KiB string must not
        // become a 100 KiB detail row.
        let big = format!(
            r#"{{"v":1,"device":"d","boot":0,"seq":"{}"}}"#,
            "é".repeat(50_000)
        );
        let e = decode_native(big.as_bytes()).unwrap_err();
        assert_eq!(e.reason, RejectReason::MalformedJson);
        assert!(
            e.detail.len() <= MAX_DETAIL + '…'.len_utf8(),
            "{}",
            e.detail.len()
        );
        assert!(e.detail.ends_with('…'));
        let e = owntracks::decode(format!(r#"{{"_type":{}}}"#, "1".repeat(100_000)).as_bytes());
        assert!(e.unwrap_err().detail.len() <= MAX_DETAIL + 3);
    }
}
