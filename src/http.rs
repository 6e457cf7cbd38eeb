//! Operations endpoints: `/metrics`, `/healthz`, `/readyz`. The officer API
//! will mount beside these.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::ingest::mqtt::MqttStatus;
use crate::metrics::Metrics;
use crate::store::Store;

/// Shared state of the operations endpoints.
#[derive(Clone)]
pub struct OpsState<S> {
    /// Metrics to export.
    pub metrics: Arc<Metrics>,
    /// Store to ping for readiness.
    pub store: S,
    /// Broker connection flag.
    pub mqtt: Arc<MqttStatus>,
}

/// The router; built apart from the server so tests can call it directly.
pub fn router<S: Store>(state: OpsState<S>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<S>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready::<S>))
        .with_state(state)
}

async fn metrics<S: Store>(State(s): State<OpsState<S>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Ready means: connected and subscribed to the broker, and the database answers.
async fn ready<S: Store>(State(s): State<OpsState<S>>) -> impl IntoResponse {
    let broker = s.mqtt.connected.load(Ordering::SeqCst);
    let subscribed = s.mqtt.subscribed.load(Ordering::SeqCst);
    let database = matches!(
        tokio::time::timeout(Duration::from_secs(2), s.store.ping()).await,
        Ok(Ok(()))
    );
    let code = if broker && subscribed && database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({
            "broker_connected": broker,
            "subscribed": subscribed,
            "database_reachable": database,
        })),
    )
}
