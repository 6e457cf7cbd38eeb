//! Provisioning a fleet through the server's own admin interfaces, the
//! paths an operator uses, so a load test needs nothing set up by hand:
//! the officer API's `POST /api/v1/scenario` with an admin token, or
//! `waypoint scenario load` (docs/scenario.md) where no API is reachable.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a running server may take to apply a loaded scenario.
pub const APPLY_WAIT: Duration = Duration::from_secs(2);

/// Provisioning failures.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The scenario file could not be written.
    #[error("cannot write the scenario to {path}: {source}")]
    Write {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The `waypoint` binary could not be started.
    #[error("cannot run {bin}: {source} (give --waypoint-bin)")]
    Spawn {
        /// Binary.
        bin: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The load was refused.
    #[error("`waypoint scenario load` failed: {0}")]
    Refused(String),
    /// The API could not be reached.
    #[error("cannot reach the officer API at {url}: {source}")]
    Unreachable {
        /// Endpoint.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The API refused the document (its problem+json body, capped).
    #[error("the officer API refused the scenario ({status}): {body}")]
    ApiRefused {
        /// HTTP status.
        status: u16,
        /// Problem document.
        body: String,
    },
}

/// Where the officer API is, and an admin token for it.
#[derive(Debug, Clone)]
pub struct ApiTarget {
    /// Base URL of the server, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// An admin token (`waypoint tokens create --role admin`).
    pub token: String,
}

/// Runs `waypoint scenario load`.
#[derive(Debug, Clone)]
pub struct Provisioner {
    /// The `waypoint` binary.
    pub bin: PathBuf,
    /// Database URL for it (else its own WAYPOINT_DATABASE_URL).
    pub database_url: Option<String>,
    /// Provision through the officer API instead of the binary.
    pub api: Option<ApiTarget>,
}

impl Provisioner {
    /// The `waypoint` binary next to this executable if there is one (a
    /// cargo build puts both in the same directory), else from `PATH`.
    pub fn default_bin() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("waypoint")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("waypoint"))
    }

    /// Writes `scenario` to a temporary file and loads it, then gives running
    /// servers [`APPLY_WAIT`] to apply it; returns how long it all took.
    pub async fn load(&self, scenario: &Value) -> Result<Duration, ProvisionError> {
        if let Some(api) = &self.api {
            let t = Instant::now();
            post(api, scenario).await?;
            tokio::time::sleep(APPLY_WAIT).await;
            return Ok(t.elapsed());
        }
        let path = std::env::temp_dir().join(format!(
            "firmware-sim-{}-{}.json",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        let write = |p: &Path| -> std::io::Result<()> {
            let f = std::io::BufWriter::new(std::fs::File::create(p)?);
            serde_json::to_writer(f, scenario).map_err(std::io::Error::other)
        };
        write(&path).map_err(|source| ProvisionError::Write {
            path: path.display().to_string(),
            source,
        })?;
        let t = Instant::now();
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("scenario").arg("load").arg(&path);
        if let Some(u) = &self.database_url {
            cmd.env("WAYPOINT_DATABASE_URL", u);
        }
        let out = cmd.output().await;
        let _ = std::fs::remove_file(&path);
        let out = out.map_err(|source| ProvisionError::Spawn {
            bin: self.bin.display().to_string(),
            source,
        })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(ProvisionError::Refused(
                err.trim().chars().take(2000).collect(),
            ));
        }
        // Running servers apply a committed scenario within a second
        // (LISTEN/NOTIFY, docs/scenario.md). Publishing before that would
        // have, e.g., victims' fixes stored as a supervisee's.
        tokio::time::sleep(APPLY_WAIT).await;
        Ok(t.elapsed())
    }
}

/// `POST {url}/api/v1/scenario` with the admin token; the server validates
/// and applies it in one transaction (no timeout: a 100k-person fleet
/// takes minutes).
async fn post(api: &ApiTarget, scenario: &Value) -> Result<(), ProvisionError> {
    let url = format!("{}/api/v1/scenario", api.url.trim_end_matches('/'));
    let unreachable = |source| ProvisionError::Unreachable {
        url: url.clone(),
        source,
    };
    let r = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&api.token)
        .json(scenario)
        .send()
        .await
        .map_err(unreachable)?;
    let status = r.status();
    if status.is_success() {
        return Ok(());
    }
    let body = r.text().await.unwrap_or_default();
    Err(ProvisionError::ApiRefused {
        status: status.as_u16(),
        body: body.chars().take(2000).collect(),
    })
}
