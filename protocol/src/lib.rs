//! The binary v1 (protobuf) schema of the Waypoint device protocol, as
//! hand-derived prost messages so that no `protoc` is needed at build time.
//!
//! It lives in its own crate so the server (which decodes it) and the device
//! simulator (which encodes it) share one definition instead of two copies
//! that could drift. The same schema is printed as a `.proto` in
//! docs/protocol.md for device vendors; the server's
//! `tests/protocol_vectors.rs` checks the printed test vector against it.
//!
//! Coordinates travel as 1e-7 degree integers (≈1 cm), accuracy and altitude
//! as decimetres, so a typical fix is ~20 bytes against ~80 in JSON.
#![deny(missing_docs)]

use prost::Message;

/// Top-level message (`waypoint.v1.Telemetry`).
#[derive(Clone, PartialEq, Message)]
pub struct TelemetryPb {
    /// Protocol version, 1.
    #[prost(uint32, tag = "1")]
    pub v: u32,
    /// Device id.
    #[prost(string, tag = "2")]
    pub device: String,
    /// Restart counter.
    #[prost(uint64, tag = "3")]
    pub boot: u64,
    /// Per-boot sequence.
    #[prost(uint64, tag = "4")]
    pub seq: u64,
    /// Fixes.
    #[prost(message, repeated, tag = "5")]
    pub fixes: Vec<FixPb>,
    /// Status block.
    #[prost(message, optional, tag = "6")]
    pub status: Option<StatusPb>,
    /// Events.
    #[prost(message, repeated, tag = "7")]
    pub events: Vec<EventPb>,
}

/// One fix (`waypoint.v1.Fix`).
#[derive(Clone, PartialEq, Message)]
pub struct FixPb {
    /// Unix epoch milliseconds.
    #[prost(int64, tag = "1")]
    pub ts_ms: i64,
    /// Latitude × 1e7.
    #[prost(sint32, tag = "2")]
    pub lat_e7: i32,
    /// Longitude × 1e7.
    #[prost(sint32, tag = "3")]
    pub lon_e7: i32,
    /// Accuracy in decimetres.
    #[prost(uint32, tag = "4")]
    pub acc_dm: u32,
    /// Altitude in decimetres.
    #[prost(sint32, optional, tag = "5")]
    pub alt_dm: Option<i32>,
    /// Speed in cm/s.
    #[prost(uint32, optional, tag = "6")]
    pub speed_cms: Option<u32>,
    /// Heading in centidegrees.
    #[prost(uint32, optional, tag = "7")]
    pub heading_cdeg: Option<u32>,
    /// 0 unspecified (gnss), 1 gnss, 2 wifi, 3 cell, 4 fused.
    #[prost(uint32, tag = "8")]
    pub src: u32,
}

/// Status block (`waypoint.v1.Status`).
#[derive(Clone, PartialEq, Message)]
pub struct StatusPb {
    /// Battery percent.
    #[prost(uint32, optional, tag = "1")]
    pub battery: Option<u32>,
    /// On charger.
    #[prost(bool, optional, tag = "2")]
    pub charging: Option<bool>,
    /// 1 closed, 2 open.
    #[prost(uint32, optional, tag = "3")]
    pub strap: Option<u32>,
    /// Home beacon in range.
    #[prost(bool, optional, tag = "4")]
    pub beacon: Option<bool>,
    /// Signal, dBm.
    #[prost(sint32, optional, tag = "5")]
    pub rssi: Option<i32>,
    /// Firmware version.
    #[prost(string, optional, tag = "6")]
    pub fw: Option<String>,
}

/// One event (`waypoint.v1.Event`).
#[derive(Clone, PartialEq, Message)]
pub struct EventPb {
    /// Unix epoch milliseconds.
    #[prost(int64, tag = "1")]
    pub ts_ms: i64,
    /// Event kind name, as in JSON.
    #[prost(string, tag = "2")]
    pub kind: String,
}
