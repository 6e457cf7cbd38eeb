//! SVG chart of run reports (placeholder until the benchmark script lands).

use std::path::Path;

/// Draws the reports' time series into an SVG file.
pub fn draw(_inputs: &[String], _out: &Path, _title: &str) -> anyhow::Result<()> {
    anyhow::bail!("chart: not implemented yet")
}
