//! Wires the stages with bounded channels on one TaskTracker and owns the
//! shutdown order.
//!
//! ```text
//! broker ─▶ ingest::mqtt (poll loop) ──try_send──▶ track shard ×N ──commit──▶ store
//!            │ register ▲ try_ack                       │ committed tickets
//!            ▼          │                               │
//!          AckQueue ────┘ ◀─────────────────────────────┘   (PUBACK in arrival order)
//! ```
//!
//! Channel policies:
//! - source → shard: capacity = Receive Maximum; the broker never has more
//!   unacked publishes in flight, so QoS 1 never finds it full (if a broker
//!   misbehaves we reconnect and let it redeliver); QoS 0 is dropped when
//!   full and counted.
//! - shard → source (committed tickets): capacity = shards × 4 batches;
//!   shards block on it, which is the back-pressure we want (the source
//!   drains it on every turn, so it never stays full).
//!
//! - alert-event log → live views: a broadcast of [`outbox::LIVE_CAPACITY`]; a view
//!   that lags re-reads the durable log (see [`crate::alerts::outbox`]).
//!
//! Beside the pipeline: the rules follower (reloads the configuration
//! snapshot on NOTIFY), the no_signal watchdog, the alert-log readers
//! (MQTT publisher, live feed), and retention ([`crate::retention`]).
//!
//! Shutdown: stop taking publishes → shards drain and commit → final acks →
//! DISCONNECT (the session persists, so anything unacked is redelivered).

use std::net::SocketAddr;
use std::sync::Arc;

use rumqttc::v5::AsyncClient;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::outbox::{self, Outbox};
use crate::api::{self, escalation, ApiState};
use crate::clock::SharedClock;
use crate::config::AppConfig;
use crate::directory::Directory;
use crate::http::{self, OpsState};
use crate::ingest::mqtt::{MqttStatus, Source};
use crate::metrics::Metrics;
use crate::rules::watchdog::{self, Liveness};
use crate::rules::{self, Rules};
use crate::store::{Store, StoreError};
use crate::track::{run_shard, ShardContext, ShardRouter, ShardRules};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The HTTP address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The database failed during start-up.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A started server.
pub struct Running {
    /// The bound HTTP address (useful with port 0).
    pub http_addr: SocketAddr,
    /// Live metrics.
    pub metrics: Arc<Metrics>,
    /// The rules engine (snapshot in force).
    pub rules: Arc<Rules>,
    /// Alert-log readers (live view subscription).
    pub outbox: Arc<Outbox>,
    shutdown: CancellationToken,
    fatal: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    /// Cancelled if a stage failed and the server stopped on its own.
    pub fn fatal_token(&self) -> CancellationToken {
        self.fatal.clone()
    }

    /// Cancelled once the server begins to stop (companion tasks end then).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every task has finished (after a shutdown).
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// Graceful shutdown: stop reading, flush, ack what was committed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.wait().await;
    }
}

/// Starts every stage. Migrations are the caller's job (`serve` runs them).
pub async fn start<S: Store>(
    cfg: AppConfig,
    store: S,
    clock: SharedClock,
) -> Result<Running, AppError> {
    let metrics = Arc::new(Metrics::new());
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    // Everything that must stop only after the final acks (directory
    // follower, HTTP) listens to `stopped`.
    let stopped = CancellationToken::new();
    let abandon = CancellationToken::new();
    let fatal = CancellationToken::new();

    let directory = Directory::load(store.clone()).await?;
    let (dir_tx, dir_rx) = mpsc::channel(1024);
    tracker.spawn({
        let store = store.clone();
        let stopped = stopped.clone();
        async move { store.watch_devices(dir_tx, stopped).await }
    });
    tracker.spawn(directory.clone().follow(dir_rx, stopped.clone()));

    let rules = Rules::load(&store, cfg.rules.clone()).await?;
    tracker.spawn(rules::follow(rules.clone(), store.clone(), stopped.clone()));
    let liveness = Arc::new(Liveness::default());
    let outbox = Outbox::new();
    tracker.spawn(outbox::run_live(
        store.clone(),
        outbox.clone(),
        stopped.clone(),
    ));
    if cfg.publish_alerts {
        tracker.spawn(outbox::run_mqtt(
            store.clone(),
            outbox.clone(),
            cfg.mqtt.clone(),
            stopped.clone(),
        ));
    }

    tracker.spawn(crate::retention::run(
        store.clone(),
        cfg.retention.clone(),
        clock.clone(),
        metrics.clone(),
        stopped.clone(),
    ));

    let listener = TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|source| AppError::Bind {
            addr: cfg.http_addr,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| AppError::Bind {
        addr: cfg.http_addr,
        source,
    })?;
    let mqtt_status = Arc::new(MqttStatus::default());
    let mut ops = http::router(OpsState {
        metrics: metrics.clone(),
        store: store.clone(),
        mqtt: mqtt_status.clone(),
    });
    if let Some(api_cfg) = cfg.api.clone() {
        let state = ApiState::new(store.api_db(), outbox.clone(), clock.clone(), api_cfg);
        tracker.spawn(escalation::run(state.clone(), stopped.clone()));
        // Officer decisions made by other processes (the CLI, other
        // instances) wake the live views: PostgreSQL notifies; SQLite has no
        // notifications, so its log is looked at every second instead.
        match state.db.pg() {
            Some(pool) => {
                tracker.spawn(crate::store::postgres::watch_alert_log(
                    pool.clone(),
                    outbox.clone(),
                    stopped.clone(),
                ));
            }
            None => {
                tracker.spawn(outbox::poll_wake(
                    outbox.clone(),
                    std::time::Duration::from_secs(1),
                    stopped.clone(),
                ));
            }
        }
        ops = ops
            .merge(api::router(state))
            .merge(crate::web::router(cfg.web.clone()));
    }
    tracker.spawn({
        let stopped = stopped.clone();
        async move {
            // Peer addresses, for the API's per-client authentication limits.
            let app = ops.into_make_service_with_connect_info::<SocketAddr>();
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }
    });

    let receive_max = usize::from(cfg.mqtt.receive_maximum);
    // The request channel carries acks; sized so acks rarely wait on it.
    let (client, eventloop) = AsyncClient::new(cfg.mqtt.options(), receive_max + 64);
    let (done_tx, done_rx) = mpsc::channel(cfg.shards * 4);

    tracker.spawn(watchdog::run(
        store.clone(),
        rules.clone(),
        liveness.clone(),
        mqtt_status.clone(),
        clock.clone(),
        {
            let (metrics, outbox) = (metrics.clone(), outbox.clone());
            move |report: &crate::store::CommitReport| {
                metrics.record_alerts(report);
                outbox.wake();
            }
        },
        stopped.clone(),
    ));
    let ctx = Arc::new(ShardContext {
        store,
        directory,
        metrics: metrics.clone(),
        completions: done_tx,
        abandon: abandon.clone(),
        liveness,
        outbox: outbox.clone(),
    });
    let mut senders = Vec::with_capacity(cfg.shards);
    for i in 0..cfg.shards {
        let (tx, rx) = mpsc::channel(receive_max);
        senders.push(tx);
        metrics.set_depth(&format!("shard-{i}"), 0);
        tracker.spawn(run_shard(
            format!("shard-{i}"),
            rx,
            ctx.clone(),
            cfg.shard.clone(),
            ShardRules::new(rules.clone(), clock.clone(), metrics.clone()),
        ));
    }
    // Shards own the only completion senders now: the channel closes when
    // the last shard finishes, which tells the source the drain is done.
    drop(ctx);
    let router = ShardRouter::new(senders, cfg.mqtt.topic_prefix.clone());

    let source = Source {
        cfg: cfg.mqtt.clone(),
        client,
        eventloop,
        router,
        completions: done_rx,
        clock,
        metrics: metrics.clone(),
        status: mqtt_status,
    };
    tracker.spawn({
        let (shutdown, stopped, fatal) = (shutdown.clone(), stopped.clone(), fatal.clone());
        async move {
            if let Err(e) = source.run(shutdown.clone()).await {
                tracing::error!(error = %e, "ingest stopped");
                fatal.cancel();
                // Let the shards finish what they hold.
                shutdown.cancel();
            }
            stopped.cancel();
        }
    });

    // Bound shutdown when the database is down: after the grace period the
    // shards stop retrying and leave unacked messages to the broker.
    tracker.spawn({
        let (shutdown, abandon, stopped, grace) = (
            shutdown.clone(),
            abandon.clone(),
            stopped.clone(),
            cfg.shutdown_grace,
        );
        async move {
            tokio::select! {
                _ = stopped.cancelled() => return,
                _ = shutdown.cancelled() => {}
            }
            tokio::select! {
                _ = stopped.cancelled() => {}
                _ = tokio::time::sleep(grace) => {
                    tracing::warn!("shutdown grace elapsed; unacked messages stay with the broker");
                    abandon.cancel();
                }
            }
        }
    });
    tracker.close();
    tracing::info!(%http_addr, shards = cfg.shards, "waypoint started");
    Ok(Running {
        http_addr,
        metrics,
        rules,
        outbox,
        shutdown,
        fatal,
        tracker,
    })
}
