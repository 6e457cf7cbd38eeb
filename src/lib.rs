//! # Waypoint
//!
//! An electronic-monitoring telemetry server for community supervision:
//! ankle tags and home beacons publish positions and status over MQTT;
//! Waypoint stores them durably and (with the rules engine) raises alerts
//! that supervision officers decide on. Nothing in it acts on a person
//! automatically.
//!
//! ## Data flow
//! ```text
//! device ─MQTT─▶ broker ─▶ ingest ─▶ track (shard per device: decode, validate, batch)
//!                             ▲                 │
//!                             │ PUBACK after    ▼
//!                             └──── acker ◀── store (one transaction per batch)
//! ```
//!
//! ## Module map
//! - [`domain`]: pure types (DeviceId, Fix, Status, Telemetry, RejectReason).
//! - [`decode`]: bytes → domain; JSON v1, binary (protobuf), OwnTracks; validation.
//! - [`ingest`]: MQTT source, topic layout, ordered acker.
//! - [`track`]: shards keyed by device; prepare + batch + commit.
//! - [`store`]: the storage interface and its PostgreSQL implementation.
//! - [`directory`]: in-memory device enrollment, kept fresh by notifications.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`app`]: wiring and shutdown order; [`config`]: flags and env.
//! - [`clock`]: the injectable clock; [`metrics`]: Prometheus registry.
#![deny(missing_docs)]

pub mod app;
pub mod clock;
pub mod config;
pub mod decode;
pub mod directory;
pub mod domain;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod store;
pub mod track;
