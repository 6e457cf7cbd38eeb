//! Reading back what the server did with the load: fixes stored (counted
//! where it matters, in the database, not in PUBACKs) and, for the lag time
//! series, the server's own count of acknowledged messages.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Read-back failures.
#[derive(Debug, thiserror::Error)]
pub enum ReadbackError {
    /// Database.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Metrics endpoint.
    #[error("metrics endpoint {url}: {reason}")]
    Metrics {
        /// URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// Where to read back from.
#[derive(Clone)]
pub struct Readback {
    pool: Option<PgPool>,
    metrics: Option<(String, String)>,
    base: Arc<std::sync::OnceLock<u64>>,
}

impl Readback {
    /// Connects to the server's database and/or notes its metrics endpoint
    /// (`http://host:port/metrics`).
    pub async fn connect(
        database_url: Option<&str>,
        metrics_url: Option<&str>,
    ) -> Result<Readback, ReadbackError> {
        let pool = match database_url {
            Some(u) => Some(
                PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(u)
                    .await?,
            ),
            None => None,
        };
        let metrics = match metrics_url {
            Some(u) => {
                let rest = u
                    .strip_prefix("http://")
                    .ok_or_else(|| ReadbackError::Metrics {
                        url: u.into(),
                        reason: "only http:// URLs are supported".into(),
                    })?;
                let (host, path) = rest.split_once('/').unwrap_or((rest, "metrics"));
                Some((host.to_string(), format!("/{path}")))
            }
            None => None,
        };
        let rb = Readback {
            pool,
            metrics,
            base: Arc::default(),
        };
        if rb.metrics.is_some() {
            let n = rb.acked_total().await?;
            let _ = rb.base.set(n);
        }
        Ok(rb)
    }

    /// Fixes stored for these devices with this boot (this run's messages).
    pub async fn stored(&self, device_ids: &[String], boot: u64) -> Result<u64, ReadbackError> {
        let Some(pool) = &self.pool else {
            return Ok(0);
        };
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM fixes f JOIN devices d ON d.device_key = f.device_key \
             WHERE d.device_id = ANY($1) AND f.boot = $2",
        )
        .bind(device_ids)
        .bind(boot as i64)
        .fetch_one(pool)
        .await?;
        Ok(n as u64)
    }

    /// Whether stored fixes can be counted (a database URL was given).
    pub fn counts_stored(&self) -> bool {
        self.pool.is_some()
    }

    /// Messages the server acknowledged since this run connected (from
    /// `waypoint_messages_acked_total`), if a metrics endpoint was given.
    pub async fn progress(&self) -> Option<u64> {
        let base = *self.base.get()?;
        self.acked_total()
            .await
            .ok()
            .map(|n| n.saturating_sub(base))
    }

    // A bare HTTP/1.0 GET: one plain-text counter does not justify an HTTP
    // client dependency in a binary the server's demo also links.
    async fn acked_total(&self) -> Result<u64, ReadbackError> {
        let Some((host, path)) = &self.metrics else {
            return Ok(0);
        };
        let err = |reason: String| ReadbackError::Metrics {
            url: format!("http://{host}{path}"),
            reason,
        };
        let io = async {
            let mut s = tokio::net::TcpStream::connect(host.as_str()).await?;
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
                .await?;
            let mut body = String::new();
            s.read_to_string(&mut body).await?;
            Ok::<_, std::io::Error>(body)
        };
        let body = tokio::time::timeout(Duration::from_secs(5), io)
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        body.lines()
            .find_map(|l| l.strip_prefix("waypoint_messages_acked_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .ok_or_else(|| err("no waypoint_messages_acked_total in the response".into()))
    }
}
