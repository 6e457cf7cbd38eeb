//! Why input was refused. Every refusal is stored with one of these reasons and
//! counted in `waypoint_messages_rejected_total{reason}`, so the labels are a
//! closed, documented set (docs/protocol.md lists them).

use std::fmt;

/// The reason a message, or one item inside it, was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Payload larger than the application cap.
    Oversize,
    /// Not parseable as JSON v1 (syntax or field types).
    MalformedJson,
    /// Not parseable as the binary encoding.
    MalformedBinary,
    /// `v` is not a version this server speaks.
    UnsupportedVersion,
    /// OwnTracks `_type` other than `location`.
    UnsupportedType,
    /// Topic does not match any subscribed pattern.
    UnknownTopic,
    /// Device id in topic or payload is not a valid id.
    InvalidDeviceId,
    /// Device id in the payload differs from the topic's.
    DeviceMismatch,
    /// Device (or OwnTracks user/device pair) is not enrolled.
    UnknownDevice,
    /// Device enrollment was revoked.
    DeviceRevoked,
    /// Same (device, boot, seq) already stored with different content.
    SeqConflict,
    /// Latitude/longitude NaN, infinite or out of range.
    InvalidCoordinates,
    /// Accuracy negative, NaN or infinite.
    InvalidAccuracy,
    /// Timestamp more than the allowed skew in the server's future.
    FutureTimestamp,
    /// Timestamp before 2000-01-01 or not representable.
    TimestampOutOfRange,
    /// Another field is out of its documented range (battery > 100, ...).
    InvalidField,
    /// Event `kind` not in the documented list.
    UnknownEventKind,
    /// The database refused the row for a reason other than availability;
    /// the message is kept here so it is not retried forever.
    StorageRejected,
}

impl RejectReason {
    /// Every reason, for metrics pre-registration and docs.
    pub const ALL: [RejectReason; 18] = [
        Self::Oversize,
        Self::MalformedJson,
        Self::MalformedBinary,
        Self::UnsupportedVersion,
        Self::UnsupportedType,
        Self::UnknownTopic,
        Self::InvalidDeviceId,
        Self::DeviceMismatch,
        Self::UnknownDevice,
        Self::DeviceRevoked,
        Self::SeqConflict,
        Self::InvalidCoordinates,
        Self::InvalidAccuracy,
        Self::FutureTimestamp,
        Self::TimestampOutOfRange,
        Self::InvalidField,
        Self::UnknownEventKind,
        Self::StorageRejected,
    ];

    /// Stable snake_case label used in the database and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oversize => "oversize",
            Self::MalformedJson => "malformed_json",
            Self::MalformedBinary => "malformed_binary",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnsupportedType => "unsupported_type",
            Self::UnknownTopic => "unknown_topic",
            Self::InvalidDeviceId => "invalid_device_id",
            Self::DeviceMismatch => "device_mismatch",
            Self::UnknownDevice => "unknown_device",
            Self::DeviceRevoked => "device_revoked",
            Self::SeqConflict => "seq_conflict",
            Self::InvalidCoordinates => "invalid_coordinates",
            Self::InvalidAccuracy => "invalid_accuracy",
            Self::FutureTimestamp => "future_timestamp",
            Self::TimestampOutOfRange => "timestamp_out_of_range",
            Self::InvalidField => "invalid_field",
            Self::UnknownEventKind => "unknown_event_kind",
            Self::StorageRejected => "storage_rejected",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of a message an item rejection refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// An entry of `fixes`.
    Fix,
    /// An entry of `events`.
    Event,
    /// The `status` block.
    Status,
}

impl ItemKind {
    /// Stable database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fix => "fix",
            Self::Event => "event",
            Self::Status => "status",
        }
    }
}

/// One refused item inside an otherwise accepted message: its siblings are
/// stored, it is recorded with a reason.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRejection {
    /// Fix, event or status.
    pub kind: ItemKind,
    /// Index in the message's array (0 for status).
    pub index: u32,
    /// Why.
    pub reason: RejectReason,
    /// Human-readable detail; never contains coordinates (it may be logged).
    pub detail: String,
}
