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
//! device ─MQTT─▶ broker ─▶ ingest ─▶ track (shard per device: decode, validate, batch,
//!                             ▲           │    rules state + evaluation)
//!                             │ PUBACK    ▼
//!                             └─ acker ◀─ store: fixes + alerts + alert-event log,
//!                                          one transaction per batch
//!                                             │
//!                                             ▼
//!                          alerts::outbox ─▶ MQTT em/v1/alerts/{device}, live views
//! ```
//!
//! ## Module map
//! - [`domain`]: pure types (DeviceId, Fix, Status, Telemetry, RejectReason).
//! - [`decode`]: bytes → domain; JSON v1, binary (protobuf), OwnTracks; validation.
//! - [`ingest`]: MQTT source, topic layout, ordered acker.
//! - [`track`]: shards keyed by device; prepare + batch + rules + commit.
//! - [`geofence`]: zone shapes (GeoJSON), metric distances, R-tree index.
//! - [`rules`]: configuration snapshot, per-device evaluation, schedules,
//!   the no_signal watchdog.
//! - [`alerts`]: alert kinds and lifecycle; the alert-log outbox.
//! - [`broker`]: the embedded MQTT broker (rumqttd) for `--embedded` and the demo.
//! - [`scenario`]: the provisioning file (`waypoint scenario load`).
//! - [`store`]: the storage interface, its PostgreSQL and SQLite
//!   implementations, and [`store::sql`], the SQL both dialects share.
//! - [`embedded`]: the embedded mode (in-process broker + SQLite);
//!   [`demo`]: `waypoint demo`.
//! - [`directory`]: in-memory device enrollment, kept fresh by notifications.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`api`]: the officer API (`/api/v1`): caseloads, zones, alerts and
//!   decisions, live alert stream, audit trail.
//! - [`web`]: the officer dashboard (static files embedded from `web/`).
//! - [`retention`]: deletes raw data past retention, keeping alert evidence.
//! - [`app`]: wiring and shutdown order; [`config`]: flags and env.
//! - [`clock`]: the injectable clock; [`metrics`]: Prometheus registry.
#![deny(missing_docs)]

pub mod alerts;
pub mod api;
pub mod app;
pub mod broker;
pub mod clock;
pub mod config;
pub mod decode;
pub mod demo;
pub mod directory;
pub mod domain;
pub mod embedded;
pub mod geofence;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod retention;
pub mod rules;
pub mod scenario;
pub mod store;
pub mod track;
pub mod web;
