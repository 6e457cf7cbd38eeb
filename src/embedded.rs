//! The embedded mode (`waypoint serve --embedded`, `waypoint demo`): the
//! whole server on one machine with nothing installed.
//!
//! ```text
//! devices ──MQTT 3.1.1──▶ broker (rumqttd, in-process) ──MQTT v5, loopback──▶ ingest ─▶ … ─▶ SqliteStore
//!                                                                                          (data dir)
//! ```
//!
//! The pipeline is the same as in production ([`crate::app::start`]); only
//! the broker ([`crate::broker`]) and the store ([`SqliteStore`]) are
//! embedded. Start order matters: the store first (a bad data directory
//! fails before anything listens), then the broker, then the server, which
//! subscribes before any device is told to connect.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::{AppError, Running};
use crate::broker::{BrokerError, BrokerOptions, EmbeddedBroker};
use crate::clock::SharedClock;
use crate::config::AppConfig;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// Why the embedded server could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The data directory or its database.
    #[error("data directory {dir}: {source}")]
    Store {
        /// The directory asked for.
        dir: PathBuf,
        /// What went wrong.
        source: StoreError,
    },
    /// The broker's port.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The server itself (HTTP port, start-up reads).
    #[error(transparent)]
    App(#[from] AppError),
}

/// A running embedded server.
pub struct Embedded {
    /// The server.
    pub running: Running,
    /// Its broker; devices connect to [`EmbeddedBroker::local_addr`].
    pub broker: EmbeddedBroker,
    /// Its database.
    pub store: SqliteStore,
    /// Where the database lives.
    pub data_dir: PathBuf,
}

/// How often the device listener is checked, and how many checks in a row
/// must fail before the server gives up on it.
const BROKER_CHECK_EVERY: Duration = Duration::from_secs(10);
const BROKER_CHECK_FAILURES: u32 = 3;

/// Stops the server (as a fatal failure: `serve` exits non-zero, so a
/// supervisor restarts it) once devices can no longer connect to the
/// embedded broker. rumqttd can lose its device listener while the process
/// lives on and has no way to restart it; a server that silently receives
/// nothing would be worse than one that restarts.
async fn watch_broker(addr: SocketAddr, fatal: CancellationToken, stopping: CancellationToken) {
    let mut failures = 0;
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tokio::time::sleep(BROKER_CHECK_EVERY) => {}
        }
        let ok = tokio::task::spawn_blocking(move || crate::broker::devices_can_connect(addr))
            .await
            .unwrap_or(false);
        failures = if ok { 0 } else { failures + 1 };
        if failures >= BROKER_CHECK_FAILURES {
            tracing::error!(
                %addr,
                "the embedded MQTT broker no longer accepts devices (a known rumqttd failure); \
                 stopping so the server can be restarted"
            );
            fatal.cancel();
            return;
        }
    }
}

/// Opens (and migrates) the database in `data_dir`, starts the broker with
/// its device listener on `mqtt`, and starts the server on them; `cfg`'s
/// broker address is replaced by the embedded broker's.
pub async fn start(
    mut cfg: AppConfig,
    data_dir: &Path,
    mqtt: SocketAddr,
    clock: SharedClock,
) -> Result<Embedded, EmbeddedError> {
    let store_err = |source| EmbeddedError::Store {
        dir: data_dir.to_path_buf(),
        source,
    };
    let store = SqliteStore::open(data_dir).await.map_err(store_err)?;
    store.migrate().await.map_err(store_err)?;

    let opts = BrokerOptions::for_ingest(&cfg.mqtt);
    // rumqttd binds in threads of its own; start() waits for them.
    let broker = tokio::task::spawn_blocking(move || EmbeddedBroker::start(mqtt, opts))
        .await
        .map_err(|e| BrokerError::Start(format!("start-up thread failed: {e}")))??;
    // rumqttd drops what matches no subscription: the server's session
    // must exist before the first device's publish, not when the server
    // gets round to connecting.
    broker.prepare_ingest_session(&cfg.mqtt)?;
    let ingest = broker.ingest_addr();
    cfg.mqtt.host = ingest.ip().to_string();
    cfg.mqtt.port = ingest.port();
    cfg.mqtt.credentials = None;

    let running = crate::app::start(cfg, store.clone(), clock).await?;
    tokio::spawn(watch_broker(
        broker.local_addr(),
        running.fatal_token(),
        running.shutdown_token(),
    ));
    Ok(Embedded {
        running,
        broker,
        store,
        data_dir: data_dir.to_path_buf(),
    })
}
