//! firmware-sim: a device-fleet simulator for Waypoint.
//!
//! ```text
//! fleet (seed, personas, places, zones) ──▶ scenario ──▶ `waypoint scenario load`
//!   │
//!   └▶ device (trajectory ▶ noisy fixes, battery, strap, beacon, faults)
//!        ├▶ encode (JSON v1 / binary v1) ▶ run::publish (open loop, QoS 1) ▶ broker ▶ Waypoint
//!        └▶ truth (what the server must, may and must not raise)
//! broker alert topic ▶ run::listen ▶ truth::check ▶ report (table / JSON) ▶ chart
//! ```
//!
//! | module | role |
//! |---|---|
//! | [`world`] | local metric frame, street-grid routes |
//! | [`persona`] | personas and their mix |
//! | [`fleet`] | generate/save/load a fleet; its Waypoint scenario; window placement |
//! | [`plan`] | a person's continuous trajectory through timed visits |
//! | [`device`] | one device's telemetry and ground truth |
//! | [`truth`] | expected/optional/unexpected alerts and the comparison |
//! | [`encode`] | wire encodings (docs/protocol.md) |
//! | [`run`] | connections, pacing, PUBACK and alert latency, listeners |
//! | [`readback`] | fixes stored, server-acked messages |
//! | [`provision`] | `waypoint scenario load` |
//! | [`report`] | summary table and JSON |
//! | [`chart`] | SVG chart of reports |
#![warn(missing_docs)]

pub mod chart;
pub mod device;
pub mod encode;
pub mod fleet;
pub mod persona;
pub mod plan;
pub mod provision;
pub mod readback;
pub mod report;
pub mod run;
pub mod truth;
pub mod world;
