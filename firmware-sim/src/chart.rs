//! SVG chart of run reports (`firmware-sim chart`): two stacked panels on
//! one time axis, the achieved rate on top (sent and delivered/stored per
//! second) and the latency below (PUBACK p50/p99 and alert p99, log scale),
//! one colour per input.
//!
//! Only the reports' `samples` are read, so a report from an older or newer
//! simulator still draws as long as its time series has these fields.

use std::path::Path;

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Deserialize;

/// One point of a report's time series (the fields the chart draws).
#[derive(Debug, Clone, Deserialize)]
struct Point {
    t_s: f64,
    #[serde(default)]
    sent_per_s: Option<f64>,
    #[serde(default)]
    delivered_per_s: Option<f64>,
    #[serde(default)]
    puback_p50_ms: Option<f64>,
    #[serde(default)]
    puback_p99_ms: Option<f64>,
    #[serde(default)]
    alert_p99_ms: Option<f64>,
}

/// The part of a report the chart reads.
#[derive(Debug, Deserialize)]
struct ReportSeries {
    samples: Vec<Point>,
}

/// A report to draw, with its legend label.
struct Input {
    label: String,
    samples: Vec<Point>,
}

/// Colours of the inputs, in order (repeats after the last).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Splits `path=label` at the last `=` (the label defaults to the file
/// stem; a path that contains `=` needs an explicit label).
fn parse_input(spec: &str) -> (String, String) {
    match spec.rsplit_once('=') {
        Some((p, l)) if !p.is_empty() && !l.is_empty() => (p.to_string(), l.to_string()),
        _ => {
            let p = spec.trim_end_matches('=').to_string();
            let label = Path::new(&p)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.clone());
            (p, label)
        }
    }
}

fn read_input(spec: &str) -> anyhow::Result<Input> {
    let (path, label) = parse_input(spec);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read report {path:?}"))?;
    let r: ReportSeries = serde_json::from_slice(&bytes).with_context(|| {
        format!("{path:?} is not a firmware-sim report (run --report FILE) with a `samples` series")
    })?;
    Ok(Input {
        label,
        samples: r.samples,
    })
}

/// Consecutive runs of defined values (a missing value breaks the line).
fn segments(samples: &[Point], f: impl Fn(&Point) -> Option<f64>) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut cur = Vec::new();
    for p in samples {
        match f(p).filter(|v| v.is_finite()) {
            Some(v) => cur.push((p.t_s, v)),
            None if !cur.is_empty() => out.push(std::mem::take(&mut cur)),
            None => {}
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A line style of the chart: how a metric is drawn.
#[derive(Clone, Copy)]
enum Stroke {
    Solid(u32),
    Dashed(u32),
}

/// Draws one metric of one input, split at its gaps; the first segment
/// carries the legend entry.
#[allow(clippy::too_many_arguments)]
fn line<DB: DrawingBackend, X, Y>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<X, Y>>,
    samples: &[Point],
    f: impl Fn(&Point) -> Option<f64>,
    keep: impl Fn(f64) -> bool,
    color: RGBColor,
    stroke: Stroke,
    label: String,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
    DB::ErrorType: 'static,
{
    let segs = segments(samples, |p| f(p).filter(|v| keep(*v)));
    for (i, seg) in segs.into_iter().enumerate() {
        let style = match stroke {
            Stroke::Solid(w) | Stroke::Dashed(w) => color.stroke_width(w),
        };
        let anno = if seg.len() == 1 {
            chart.draw_series(std::iter::once(Circle::new(seg[0], 2, style.filled())))
        } else {
            match stroke {
                Stroke::Solid(_) => chart.draw_series(LineSeries::new(seg, style)),
                Stroke::Dashed(_) => chart.draw_series(DashedLineSeries::new(seg, 6, 4, style)),
            }
        }
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        if i == 0 {
            anno.label(label.clone())
                .legend(move |(x, y)| match stroke {
                    Stroke::Solid(_) => PathElement::new(vec![(x, y), (x + 18, y)], style),
                    Stroke::Dashed(_) => PathElement::new(vec![(x, y), (x + 7, y)], style),
                });
        }
    }
    Ok(())
}

/// Line width of input `k` of `n`: the first of several is drawn wider, so
/// a later input that runs on top of it (same rate) leaves it visible.
fn width(k: usize, n: usize) -> u32 {
    if k == 0 && n > 1 {
        4
    } else {
        2
    }
}

fn panel_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("chart: {e:?}")
}

fn draw_panels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    inputs: &[Input],
    title: &str,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(panel_err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(panel_err)?;
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);

    let all = || inputs.iter().flat_map(|i| i.samples.iter());
    let t_max = all().map(|p| p.t_s).fold(1.0f64, f64::max);
    let rate_max = all()
        .flat_map(|p| [p.sent_per_s, p.delivered_per_s])
        .flatten()
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max);

    // Top: achieved rate.
    let mut rate = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .caption(
            "achieved rate (solid: sent, dashed: delivered/stored)",
            ("sans-serif", 15),
        )
        .build_cartesian_2d(0.0..t_max, 0.0..rate_max * 1.1)
        .map_err(panel_err)?;
    rate.configure_mesh()
        .light_line_style(BLACK.mix(0.03))
        .x_desc("time since load start (s)")
        .y_desc("messages/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(panel_err)?;
    for (k, inp) in inputs.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        let s = &inp.samples;
        let any = |v: f64| v >= 0.0;
        let w = width(k, inputs.len());
        line(
            &mut rate,
            s,
            |p| p.sent_per_s,
            any,
            c,
            Stroke::Solid(w),
            format!("{} sent", inp.label),
        )?;
        line(
            &mut rate,
            s,
            |p| p.delivered_per_s,
            any,
            c,
            Stroke::Dashed(w),
            format!("{} delivered", inp.label),
        )?;
    }
    rate.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 11))
        .draw()
        .map_err(panel_err)?;

    // Bottom: latency, log scale over the positive values.
    let lat = || {
        all()
            .flat_map(|p| [p.puback_p50_ms, p.puback_p99_ms, p.alert_p99_ms])
            .flatten()
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let lo = lat().fold(f64::INFINITY, f64::min);
    let hi = lat().fold(0.0f64, f64::max);
    let has_latency = lo.is_finite() && hi > 0.0;
    let (lo, hi) = if has_latency {
        ((lo / 2.0).max(0.01), (hi * 2.0).max(lo * 10.0))
    } else {
        (0.1, 1000.0)
    };
    let mut latency = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .caption(
            if has_latency {
                "latency per second (solid: PUBACK p99, thin: PUBACK p50, dashed: alert p99)"
            } else {
                "latency per second: no latency samples in these reports"
            },
            ("sans-serif", 15),
        )
        .build_cartesian_2d(0.0..t_max, (lo..hi).log_scale())
        .map_err(panel_err)?;
    latency
        .configure_mesh()
        .light_line_style(BLACK.mix(0.03))
        .x_desc("time since load start (s)")
        .y_desc("ms (log)")
        .y_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .draw()
        .map_err(panel_err)?;
    if !has_latency {
        return Ok(());
    }
    for (k, inp) in inputs.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        let s = &inp.samples;
        let pos = |v: f64| v > 0.0;
        let w = width(k, inputs.len());
        line(
            &mut latency,
            s,
            |p| p.puback_p99_ms,
            pos,
            c,
            Stroke::Solid(w),
            format!("{} PUBACK p99", inp.label),
        )?;
        line(
            &mut latency,
            s,
            |p| p.puback_p50_ms,
            pos,
            c,
            Stroke::Solid(1),
            format!("{} PUBACK p50", inp.label),
        )?;
        line(
            &mut latency,
            s,
            |p| p.alert_p99_ms,
            pos,
            c,
            Stroke::Dashed(w),
            format!("{} alert p99", inp.label),
        )?;
    }
    latency
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 11))
        .draw()
        .map_err(panel_err)?;
    Ok(())
}

/// Draws the reports' time series into an SVG file. Each input is a
/// report written by `run --report`, optionally `path=label`.
pub fn draw(inputs: &[String], out: &Path, title: &str) -> anyhow::Result<()> {
    anyhow::ensure!(!inputs.is_empty(), "chart: no input report given");
    let inputs = inputs
        .iter()
        .map(|s| read_input(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        anyhow::ensure!(
            dir.is_dir(),
            "chart: the output directory {} does not exist",
            dir.display()
        );
    }
    // Legends grow with the inputs: give them room.
    let height = 760 + 40 * inputs.len().saturating_sub(2) as u32;
    {
        let root = SVGBackend::new(out, (1100, height)).into_drawing_area();
        draw_panels(&root, &inputs, title)?;
        root.present()
            .with_context(|| format!("cannot write the chart to {}", out.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n: usize, scale: f64) -> String {
        let samples: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                let t = i as f64 + 1.0;
                serde_json::json!({
                    "t_s": t,
                    "sent_per_s": 1000.0 * scale,
                    "acked_per_s": 990.0 * scale,
                    // A gap in the middle: the line breaks there.
                    "delivered_per_s": if i == n / 2 { None } else { Some(980.0 * scale) },
                    "lag": 20,
                    "puback_p50_ms": 1.5 * scale,
                    "puback_p99_ms": 8.0 * scale,
                    "alert_p99_ms": if i % 3 == 0 { Some(40.0) } else { None },
                })
            })
            .collect();
        serde_json::json!({ "load": { "sent": 1 }, "samples": samples }).to_string()
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "firmware-sim-chart-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn draws_an_svg_from_reports() {
        let d = tempdir();
        let (a, b) = (d.join("a.json"), d.join("b.json"));
        std::fs::write(&a, report(10, 1.0)).unwrap();
        std::fs::write(&b, report(12, 2.0)).unwrap();
        let out = d.join("chart.svg");
        draw(
            &[
                format!("{}=broker only", a.display()),
                b.display().to_string(),
            ],
            &out,
            "test chart",
        )
        .unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.contains("test chart"));
        assert!(svg.contains("broker only sent"));
        assert!(
            svg.contains("b alert p99"),
            "the label defaults to the file stem"
        );
        assert!(svg.matches("<polyline").count() >= 8, "lines drawn");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_series_without_latency_still_draws() {
        // What benches/loadtest.sh writes for the recovery: rates and lag only.
        let d = tempdir();
        let a = d.join("recovery.json");
        let samples: Vec<serde_json::Value> = (0..5)
            .map(|i| serde_json::json!({"t_s": i as f64, "delivered_per_s": 100.0, "lag": 10}))
            .collect();
        std::fs::write(&a, serde_json::json!({ "samples": samples }).to_string()).unwrap();
        let out = d.join("r.svg");
        draw(&[a.display().to_string()], &out, "recovery").unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.contains("no latency samples"));
        assert!(svg.contains("recovery delivered"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unreadable_inputs_are_named() {
        let d = tempdir();
        let out = d.join("x.svg");
        let e = draw(&[d.join("missing.json").display().to_string()], &out, "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.json"), "{e}");
        let bad = d.join("bad.json");
        std::fs::write(&bad, "{\"load\": {}}").unwrap();
        let e = format!(
            "{:#}",
            draw(&[format!("{}=x", bad.display())], &out, "t").unwrap_err()
        );
        assert!(e.contains("bad.json") && e.contains("samples"), "{e}");
        assert!(!out.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn input_labels() {
        assert_eq!(
            parse_input("r/a.json=broker 5k"),
            ("r/a.json".into(), "broker 5k".into())
        );
        assert_eq!(parse_input("r/a.json"), ("r/a.json".into(), "a".into()));
    }
}
