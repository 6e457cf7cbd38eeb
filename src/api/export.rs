//! Evidence export: a supervisee's complete location history over a period
//! as GeoJSON, CSV or GPX 1.1, for court bundles, case reviews and GIS.
//!
//! - Every stored fix of the period is exported (each device assignment
//!   clipped to its own validity); nothing is downsampled, interpolated or
//!   averaged.
//! - The body is built whole, then hashed: the SHA-256 of the exact bytes
//!   sent is returned as `Repr-Digest: sha-256=:<base64>:` (RFC 9530) and
//!   `X-Content-SHA256: <hex>`, and written to the audit record (before the
//!   body is returned), so a file produced in court can be matched to the
//!   export that made it.
//! - GeoJSON is the complete record: one Point feature per fix, one feature
//!   per alert raised in the period (with the officers' decisions and any
//!   escalations), and a top-level `waypoint_export` member with the case
//!   reference, period, devices and the zone versions in force.
//! - CSV carries the fixes only (`time,lat,lon,acc_m,speed_mps,device_id`),
//!   for spreadsheets: alerts, decisions and zone versions travel in the
//!   GeoJSON (and GPX) exports, because a second table inside one CSV file
//!   breaks the tools CSV is chosen for.
//! - GPX carries the fixes as tracks (one `<trk>` per device assignment,
//!   accuracy in a `wp:` extension), alerts with a position as `<wpt>`, and
//!   alerts without one plus the zone versions in the root `<extensions>`.
//!
//! The file name holds the numeric supervisee id and the period only: no
//! name or case reference, which would leak through download folders.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::alerts::{ActionItem, EscalationItem};
use super::audit::{self, AuditReason, Entry};
use super::auth::{Principal, CASEWORK};
use super::error::{ApiError, ApiPath, ApiQuery, FieldError, StdErrors};
use super::positions::{parse_range, span_fixes, subject, zones_in_force, Span, ZoneInForce};
use super::ApiState;
use crate::store::sql::{Db, Tx, Q};

/// Longest period one export may cover.
pub const EXPORT_MAX_DAYS: i64 = 400;
/// Most alerts one export carries (far beyond any real period).
pub const EXPORT_MAX_ALERTS: i64 = 100_000;

/// Parameters of an export.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Start (inclusive), RFC 3339. Required.
    #[param(value_type = String, format = DateTime)]
    pub from: Option<String>,
    /// End (exclusive), RFC 3339; after `from`, at most 400 days later. Required.
    #[param(value_type = String, format = DateTime)]
    pub to: Option<String>,
    /// `geojson` (default; the complete record), `csv` (fixes only) or `gpx`.
    pub format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    GeoJson,
    Csv,
    Gpx,
}

impl Format {
    fn parse(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("geojson") => Some(Self::GeoJson),
            Some("csv") => Some(Self::Csv),
            Some("gpx") => Some(Self::Gpx),
            Some(_) => None,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::GeoJson => "application/geo+json",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Gpx => "application/gpx+xml",
        }
    }

    fn ext(self) -> &'static str {
        match self {
            Self::GeoJson => "geojson",
            Self::Csv => "csv",
            Self::Gpx => "gpx",
        }
    }

    fn audit_action(self) -> &'static str {
        match self {
            Self::GeoJson => "export.geojson",
            Self::Csv => "export.csv",
            Self::Gpx => "export.gpx",
        }
    }
}

/// One exported fix; `span` indexes the device assignment it came from.
struct Fix {
    t: DateTime<Utc>,
    lat: f64,
    lon: f64,
    acc_m: f32,
    speed_mps: Option<f32>,
    span: usize,
}

/// An alert raised in the period, as exported.
#[derive(Debug, Clone, Serialize)]
struct ExportAlert {
    record_type: &'static str,
    alert_id: i64,
    kind: String,
    severity: String,
    confidence: String,
    device_id: String,
    started_at: DateTime<Utc>,
    raised_at: DateTime<Utc>,
    status: String,
    outcome: Option<String>,
    resolution_note: Option<String>,
    explanation: String,
    late: bool,
    zone_id: Option<i64>,
    zone_version: Option<i32>,
    /// Position of the first positioned evidence (none for device reports).
    #[serde(skip)]
    pos: Option<(f64, f64)>,
    actions: Vec<ActionItem>,
    escalations: Vec<EscalationItem>,
}

/// Everything one export holds, before formatting.
struct Bundle {
    supervisee_id: i64,
    case_ref: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    generated_at: DateTime<Utc>,
    generated_by: String,
    spans: Vec<Span>,
    fixes: Vec<Fix>,
    alerts: Vec<ExportAlert>,
    zones: Vec<ZoneInForce>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("export formatting: {e}"))
}

/// Exports a supervisee's complete location history over `[from, to)`
/// with the alerts raised in it, the officers' decisions on them and the
/// zone versions in force; see the module documentation for what each
/// format carries (CSV: fixes only). More than the configured maximum of
/// fixes (default 600 000) is refused with 422 naming `to`: split the
/// period. The response carries `Repr-Digest` and `X-Content-SHA256` of
/// the body; the export and its digest are audited (`export.<format>`).
#[utoipa::path(
    get,
    path = "/supervisees/{id}/export",
    tag = "positions",
    params(("id" = i64, Path, description = "Supervisee id"), ExportQuery, ("X-Audit-Reason" = Option<String>, Header, description = "Why you are exporting (kept in the audit log)")),
    responses(
        (status = 200, description = "The export, as an attachment",
            content(
                (Object = "application/geo+json"),
                (String = "text/csv"),
                (String = "application/gpx+xml"),
            ),
            headers(
                ("Repr-Digest" = String, description = "RFC 9530 digest of the body: sha-256=:<base64>:"),
                ("X-Content-SHA256" = String, description = "SHA-256 of the body, hex"),
                ("Content-Disposition" = String, description = "attachment; file name with the numeric id and period only"),
            )),
        StdErrors,
    ),
    security(("bearer" = []))
)]
pub async fn export(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    who.require(CASEWORK)?;
    let mut errs = Vec::new();
    let range = parse_range(&q.from, &q.to, EXPORT_MAX_DAYS, &mut errs);
    let format = Format::parse(q.format.as_deref());
    if format.is_none() {
        errs.push(FieldError::new(
            "format",
            "must be one of geojson, csv, gpx",
        ));
    }
    let (Some((from, to)), Some(format), true) = (range, format, errs.is_empty()) else {
        return Err(ApiError::Validation(errs));
    };
    let max_fixes = st.cfg.max_export_fixes.max(0);
    // Exports are built in memory: a few at a time, the rest wait briefly
    // and are then told to retry rather than exhausting memory.
    let permit = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        st.exports.clone().acquire_owned(),
    )
    .await
    .map_err(|_| ApiError::Unavailable)?
    .map_err(|_| ApiError::Unavailable)?;

    let mut tx = snapshot(&st.db).await?;
    let subj = subject(&mut tx, &who, id, from, to).await?;

    let mut fixes: Vec<Fix> = Vec::new();
    for (i, span) in subj.spans.iter().enumerate() {
        let room = max_fixes - fixes.len() as i64;
        let rows = span_fixes(&mut tx, span, None, room + 1).await?;
        if rows.len() as i64 > room {
            return Err(ApiError::field(
                "to",
                format!(
                    "more than {max_fixes} fixes in this period: split it into shorter periods"
                ),
            ));
        }
        fixes.reserve(rows.len());
        fixes.extend(rows.into_iter().map(|x| Fix {
            t: x.t,
            lat: x.lat,
            lon: x.lon,
            acc_m: x.acc_m,
            speed_mps: x.speed_mps,
            span: i,
        }));
    }

    let alerts = read_alerts(&mut tx, id, from, to).await?;
    let zones = zones_in_force(&mut tx, id, from, to).await?;
    // The snapshot is read: give the connection back before the (long,
    // CPU-bound) formatting rather than idling in a transaction.
    tx.commit().await?;

    let now = st.clock.now();
    let bundle = Bundle {
        supervisee_id: id,
        case_ref: subj.case_ref,
        from,
        to,
        generated_at: now,
        generated_by: who.actor(),
        spans: subj.spans,
        fixes,
        alerts,
        zones,
    };
    // Sorting, formatting and hashing up to `max_export_fixes` fixes is
    // seconds of CPU: off the async workers, which serve the other
    // requests (and ingest). The permit travels with the work, so that an
    // export whose client went away still counts until its memory is freed.
    let (built, permit) = tokio::task::spawn_blocking(move || (build(bundle, format), permit))
        .await
        .map_err(|e| ApiError::Internal(format!("export formatting task: {e}")))?;
    let Built {
        body,
        hex,
        b64,
        rows,
        alerts,
    } = built?;

    // No audit record, no data: the record (with the digest) is written,
    // in a transaction of its own, before the body is returned; if it
    // fails, the export fails.
    audit::record_read(
        &st.db,
        &who,
        &reason,
        now,
        Entry::supervisee(format.audit_action(), id).with(json!({
            "from": from, "to": to, "rows": rows,
            "alerts": alerts, "bytes": body.len(), "sha256": hex,
        })),
    )
    .await?;

    let filename = format!(
        "supervisee-{id}-{}-{}.{}",
        from.format("%Y%m%dT%H%M%SZ"),
        to.format("%Y%m%dT%H%M%SZ"),
        format.ext()
    );
    let hv = |s: String| HeaderValue::from_str(&s).map_err(internal);
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        ),
        (
            header::CONTENT_DISPOSITION,
            hv(format!("attachment; filename=\"{filename}\""))?,
        ),
        (
            HeaderName::from_static("repr-digest"),
            hv(format!("sha-256=:{b64}:"))?,
        ),
        (HeaderName::from_static("x-content-sha256"), hv(hex)?),
        // Personal data: no shared or browser cache may keep a copy.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    drop(permit);
    Ok((StatusCode::OK, headers, body).into_response())
}

/// One consistent snapshot to read an export from, so that fixes, alerts
/// and decisions agree with each other. PostgreSQL: a REPEATABLE READ
/// transaction. SQLite: a transaction on a reader connection, which (WAL)
/// reads one snapshot from its first statement to its end; the writer
/// would serialise just as well, but would hold up ingest and every
/// officer's decision while hundreds of thousands of fixes are read.
async fn snapshot(db: &Db) -> Result<Tx, sqlx::Error> {
    match db {
        Db::Pg(_) => {
            let mut tx = db.begin().await?;
            Q::new("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut tx)
                .await?;
            Ok(tx)
        }
        Db::Lite(_) => db.begin_read().await,
    }
}

/// An export body with its SHA-256 and what the audit record counts.
struct Built {
    body: Vec<u8>,
    /// Digest, lowercase hex.
    hex: String,
    /// Digest, standard base64.
    b64: String,
    rows: usize,
    alerts: usize,
}

/// Formats and hashes a bundle (CPU-bound: run it on a blocking thread).
fn build(mut bundle: Bundle, format: Format) -> Result<Built, ApiError> {
    if !bundle.fixes.is_sorted_by_key(|f| f.t) {
        bundle.fixes.sort_by_key(|f| f.t);
    }
    let body = match format {
        Format::GeoJson => geojson(&bundle)?,
        Format::Csv => csv(&bundle),
        Format::Gpx => gpx(&bundle).into_bytes(),
    };
    let digest = Sha256::digest(&body);
    Ok(Built {
        hex: hex::encode(digest),
        b64: base64::engine::general_purpose::STANDARD.encode(digest),
        rows: bundle.fixes.len(),
        alerts: bundle.alerts.len(),
        body,
    })
}

/// The alerts of one export with the position of their first positioned
/// evidence. PostgreSQL: a LATERAL probe per alert.
const ALERTS_SQL: &str =
    "SELECT a.alert_id, a.kind, a.severity, a.confidence, d.device_id, a.started_at, \
       a.raised_at, a.status, a.outcome, a.resolution_note, a.explanation, a.late, \
       a.zone_id, a.zone_version, ev.lat, ev.lon \
     FROM alerts a JOIN devices d ON d.device_key = a.device_key \
     LEFT JOIN LATERAL (SELECT e.lat, e.lon FROM alert_evidence e \
       WHERE e.alert_id = a.alert_id AND e.lat IS NOT NULL AND e.lon IS NOT NULL \
       ORDER BY e.ord LIMIT 1) ev ON true \
     WHERE a.supervisee_id = $1 AND a.raised_at >= $2 AND a.raised_at < $3 \
     ORDER BY a.raised_at, a.alert_id LIMIT $4";

/// [`ALERTS_SQL`] for SQLite (no LATERAL): the same evidence row, found as
/// the lowest positioned `ord` of the alert and joined on the
/// (alert_id, ord) key.
const ALERTS_LITE: &str =
    "SELECT a.alert_id, a.kind, a.severity, a.confidence, d.device_id, a.started_at, \
       a.raised_at, a.status, a.outcome, a.resolution_note, a.explanation, a.late, \
       a.zone_id, a.zone_version, ev.lat, ev.lon \
     FROM alerts a JOIN devices d ON d.device_key = a.device_key \
     LEFT JOIN alert_evidence ev ON ev.alert_id = a.alert_id AND ev.ord = ( \
       SELECT min(e.ord) FROM alert_evidence e \
       WHERE e.alert_id = a.alert_id AND e.lat IS NOT NULL AND e.lon IS NOT NULL) \
     WHERE a.supervisee_id = $1 AND a.raised_at >= $2 AND a.raised_at < $3 \
     ORDER BY a.raised_at, a.alert_id LIMIT $4";

/// The supervisee's alerts raised in `[from, to)`, with decisions and
/// escalations, oldest first.
async fn read_alerts(
    tx: &mut Tx,
    supervisee_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<ExportAlert>, ApiError> {
    let rows = Q::split(ALERTS_SQL, ALERTS_LITE)
        .bind(supervisee_id)
        .bind(from)
        .bind(to)
        .bind(EXPORT_MAX_ALERTS + 1)
        .fetch_all(&mut *tx)
        .await?;
    if rows.len() as i64 > EXPORT_MAX_ALERTS {
        return Err(ApiError::field(
            "to",
            format!(
                "more than {EXPORT_MAX_ALERTS} alerts in this period: split it into shorter periods"
            ),
        ));
    }
    let mut alerts: Vec<ExportAlert> = rows
        .iter()
        .map(|r| {
            let lat: Option<f64> = r.get("lat");
            let lon: Option<f64> = r.get("lon");
            ExportAlert {
                record_type: "alert",
                alert_id: r.get("alert_id"),
                kind: r.get("kind"),
                severity: r.get("severity"),
                confidence: r.get("confidence"),
                device_id: r.get("device_id"),
                started_at: r.get("started_at"),
                raised_at: r.get("raised_at"),
                status: r.get("status"),
                outcome: r.get("outcome"),
                resolution_note: r.get("resolution_note"),
                explanation: r.get("explanation"),
                late: r.get("late"),
                zone_id: r.get("zone_id"),
                zone_version: r.get("zone_version"),
                pos: lat.zip(lon),
                actions: Vec::new(),
                escalations: Vec::new(),
            }
        })
        .collect();
    if alerts.is_empty() {
        return Ok(alerts);
    }
    let ids: Vec<i64> = alerts.iter().map(|a| a.alert_id).collect();
    let index: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    // The id lists are arrays on PostgreSQL and JSON text on SQLite.
    for r in Q::split(
        "SELECT alert_id, action, actor, at, outcome, note FROM alert_actions \
         WHERE alert_id = ANY($1) ORDER BY alert_id, action_id",
        "SELECT alert_id, action, actor, at, outcome, note FROM alert_actions \
         WHERE alert_id IN (SELECT value FROM json_each($1)) ORDER BY alert_id, action_id",
    )
    .bind(ids.clone())
    .fetch_all(&mut *tx)
    .await?
    {
        if let Some(&i) = index.get(&r.get::<i64>("alert_id")) {
            alerts[i].actions.push(ActionItem {
                action: r.get("action"),
                actor: r.get("actor"),
                at: r.get("at"),
                outcome: r.get("outcome"),
                note: r.get("note"),
            });
        }
    }
    for r in Q::split(
        "SELECT e.alert_id, e.level, e.at, o.officer_ref, e.to_group, e.reason \
         FROM alert_escalations e LEFT JOIN officers o ON o.officer_id = e.to_officer_id \
         WHERE e.alert_id = ANY($1) ORDER BY e.alert_id, e.level",
        "SELECT e.alert_id, e.level, e.at, o.officer_ref, e.to_group, e.reason \
         FROM alert_escalations e LEFT JOIN officers o ON o.officer_id = e.to_officer_id \
         WHERE e.alert_id IN (SELECT value FROM json_each($1)) ORDER BY e.alert_id, e.level",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?
    {
        if let Some(&i) = index.get(&r.get::<i64>("alert_id")) {
            alerts[i].escalations.push(EscalationItem {
                level: r.get("level"),
                at: r.get("at"),
                to_officer_ref: r.get("officer_ref"),
                to_group: r.get("to_group"),
                reason: r.get("reason"),
            });
        }
    }
    Ok(alerts)
}

// ---------------------------------------------------------------- GeoJSON

#[derive(Serialize)]
struct Point {
    #[serde(rename = "type")]
    type_: &'static str,
    coordinates: [f64; 2],
}

impl Point {
    fn new(lat: f64, lon: f64) -> Self {
        Self {
            type_: "Point",
            coordinates: [lon, lat],
        }
    }
}

#[derive(Serialize)]
struct Feature<P: Serialize> {
    #[serde(rename = "type")]
    type_: &'static str,
    geometry: Option<Point>,
    properties: P,
}

#[derive(Serialize)]
struct FixProps<'a> {
    record_type: &'static str,
    t: DateTime<Utc>,
    acc_m: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed_mps: Option<f32>,
    device_id: &'a str,
}

#[derive(Serialize)]
struct DeviceSpan<'a> {
    device_id: &'a str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

fn metadata(b: &Bundle) -> serde_json::Value {
    let devices: Vec<DeviceSpan> = b
        .spans
        .iter()
        .map(|s| DeviceSpan {
            device_id: &s.device_id,
            from: s.lo,
            to: s.hi,
        })
        .collect();
    json!({
        "format": "waypoint-export/1",
        "supervisee_id": b.supervisee_id,
        "case_ref": b.case_ref,
        "period": { "from": b.from, "to": b.to },
        "generated_at": b.generated_at,
        "generated_by": b.generated_by,
        "fix_count": b.fixes.len(),
        "alert_count": b.alerts.len(),
        "devices": devices,
        "zones_in_force": b.zones,
        "note": "Every fix stored for the period, each as recorded by the device: none is \
                 interpolated, averaged or removed. acc_m is the device's accuracy radius.",
    })
}

fn geojson(b: &Bundle) -> Result<Vec<u8>, ApiError> {
    let mut out: Vec<u8> = Vec::with_capacity(256 + b.fixes.len() * 170);
    out.extend_from_slice(b"{\"type\":\"FeatureCollection\",\"waypoint_export\":");
    serde_json::to_writer(&mut out, &metadata(b)).map_err(internal)?;
    out.extend_from_slice(b",\"features\":[");
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.push(b'\n');
    };
    for a in &b.alerts {
        sep(&mut out);
        let f = Feature {
            type_: "Feature",
            geometry: a.pos.map(|(lat, lon)| Point::new(lat, lon)),
            properties: a,
        };
        serde_json::to_writer(&mut out, &f).map_err(internal)?;
    }
    for x in &b.fixes {
        sep(&mut out);
        let f = Feature {
            type_: "Feature",
            geometry: Some(Point::new(x.lat, x.lon)),
            properties: FixProps {
                record_type: "fix",
                t: x.t,
                acc_m: x.acc_m,
                speed_mps: x.speed_mps,
                device_id: &b.spans[x.span].device_id,
            },
        };
        serde_json::to_writer(&mut out, &f).map_err(internal)?;
    }
    out.extend_from_slice(b"\n]}\n");
    Ok(out)
}

// ---------------------------------------------------------------- CSV

/// RFC 4180 field: quoted when it holds a separator, quote or line break;
/// a leading formula character is neutralised for spreadsheets.
fn csv_field(out: &mut String, s: &str) {
    let formula = s.starts_with(['=', '+', '-', '@']) && s.parse::<f64>().is_err();
    if formula || s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        if formula {
            out.push('\'');
        }
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

fn csv(b: &Bundle) -> Vec<u8> {
    let mut out = String::with_capacity(64 + b.fixes.len() * 72);
    out.push_str("time,lat,lon,acc_m,speed_mps,device_id\r\n");
    for x in &b.fixes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{},{},{},{},", ts(x.t), x.lat, x.lon, x.acc_m);
        if let Some(s) = x.speed_mps {
            let _ = write!(out, "{s}");
        }
        out.push(',');
        csv_field(&mut out, &b.spans[x.span].device_id);
        out.push_str("\r\n");
    }
    out.into_bytes()
}

// ---------------------------------------------------------------- GPX

/// XML text/attribute escaping. The GPX writer is hand-written (the format
/// is small and fixed; no XML crate is needed): every value from the
/// database goes through here, which escapes the five special characters
/// and replaces characters XML 1.0 cannot carry at all (C0 controls other
/// than tab, LF, CR) with U+FFFD.
fn xml(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// The alert in plain words, for a waypoint's description.
fn alert_desc(a: &ExportAlert) -> String {
    let mut d = format!(
        "{} {} ({} confidence) on device {}, started {}, raised {}{}. {} Status: {}",
        a.severity,
        a.kind,
        a.confidence,
        a.device_id,
        ts(a.started_at),
        ts(a.raised_at),
        if a.late { " (late data)" } else { "" },
        a.explanation,
        a.status,
    );
    if let Some(o) = &a.outcome {
        let _ = write!(d, ", outcome {o}");
    }
    if let Some(n) = &a.resolution_note {
        let _ = write!(d, ", resolution note: {n}");
    }
    d.push('.');
    for x in &a.actions {
        let _ = write!(d, " Decision {} by {} at {}", x.action, x.actor, ts(x.at));
        if let Some(o) = &x.outcome {
            let _ = write!(d, " ({o})");
        }
        if let Some(n) = &x.note {
            let _ = write!(d, ": {n}");
        }
        d.push('.');
    }
    for e in &a.escalations {
        let to = e
            .to_officer_ref
            .as_deref()
            .or(e.to_group.as_deref())
            .unwrap_or("");
        let _ = write!(
            d,
            " Escalated (level {}) to {} at {}: {}.",
            e.level,
            to,
            ts(e.at),
            e.reason
        );
    }
    d
}

fn gpx(b: &Bundle) -> String {
    let mut o = String::with_capacity(1024 + b.fixes.len() * 150);
    o.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <gpx version=\"1.1\" creator=\"Waypoint\" xmlns=\"http://www.topografix.com/GPX/1/1\" \
         xmlns:wp=\"urn:waypoint:export:1\">\n<metadata><name>Waypoint location history: \
         supervisee ",
    );
    let _ = write!(o, "{}</name><desc>", b.supervisee_id);
    xml(
        &mut o,
        &format!(
            "Case {}; period {} to {} (end exclusive); {} fixes, every one stored for the \
             period, none interpolated or averaged; {} alerts. Generated by {}.",
            b.case_ref,
            ts(b.from),
            ts(b.to),
            b.fixes.len(),
            b.alerts.len(),
            b.generated_by
        ),
    );
    let _ = writeln!(o, "</desc><time>{}</time></metadata>", ts(b.generated_at));

    for a in b.alerts.iter() {
        let Some((lat, lon)) = a.pos else { continue };
        let _ = write!(
            o,
            "<wpt lat=\"{lat}\" lon=\"{lon}\"><time>{}</time><name>",
            ts(a.started_at)
        );
        xml(&mut o, &format!("Alert {}: {}", a.alert_id, a.kind));
        o.push_str("</name><desc>");
        xml(&mut o, &alert_desc(a));
        let _ = writeln!(
            o,
            "</desc><type>alert</type><extensions><wp:alert_id>{}</wp:alert_id>\
             </extensions></wpt>",
            a.alert_id
        );
    }

    for (i, span) in b.spans.iter().enumerate() {
        o.push_str("<trk><name>");
        xml(&mut o, &span.device_id);
        o.push_str("</name><desc>");
        xml(
            &mut o,
            &format!(
                "Device {} from {} to {}",
                span.device_id,
                ts(span.lo),
                ts(span.hi)
            ),
        );
        o.push_str("</desc><trkseg>\n");
        for x in b.fixes.iter().filter(|x| x.span == i) {
            let _ = write!(
                o,
                "<trkpt lat=\"{}\" lon=\"{}\"><time>{}</time><extensions><wp:acc_m>{}</wp:acc_m>",
                x.lat,
                x.lon,
                ts(x.t),
                x.acc_m
            );
            if let Some(s) = x.speed_mps {
                let _ = write!(o, "<wp:speed_mps>{s}</wp:speed_mps>");
            }
            o.push_str("</extensions></trkpt>\n");
        }
        o.push_str("</trkseg></trk>\n");
    }

    o.push_str("<extensions>\n");
    for a in b.alerts.iter().filter(|a| a.pos.is_none()) {
        let _ = write!(o, "<wp:alert id=\"{}\" kind=\"", a.alert_id);
        xml(&mut o, &a.kind);
        let _ = write!(o, "\" time=\"{}\">", ts(a.started_at));
        xml(&mut o, &alert_desc(a));
        o.push_str("</wp:alert>\n");
    }
    for z in &b.zones {
        let _ = write!(
            o,
            "<wp:zone zone_id=\"{}\" version=\"{}\" valid_from=\"{}\"",
            z.zone_id,
            z.version,
            ts(z.valid_from)
        );
        if let Some(t) = z.valid_to {
            let _ = write!(o, " valid_to=\"{}\"", ts(t));
        }
        o.push_str(" ref=\"");
        xml(&mut o, &z.zone_ref);
        o.push_str("\" name=\"");
        xml(&mut o, &z.name);
        o.push_str("\" role=\"");
        xml(&mut o, &z.role);
        o.push_str("\">");
        xml(&mut o, &z.geojson.to_string());
        o.push_str("</wp:zone>\n");
    }
    o.push_str("</extensions>\n</gpx>\n");
    o
}

/// Routes of this module.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(export))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escapes_specials_and_drops_forbidden_controls() {
        let mut s = String::new();
        xml(&mut s, "a<b>&\"c'\u{1}\td");
        assert_eq!(s, "a&lt;b&gt;&amp;&quot;c&apos;\u{FFFD}\td");
    }

    #[test]
    fn csv_quotes_and_neutralises_formulas() {
        let mut s = String::new();
        csv_field(&mut s, "a,\"b\"");
        s.push('|');
        csv_field(&mut s, "=cmd()");
        s.push('|');
        csv_field(&mut s, "-0.5");
        assert_eq!(s, "\"a,\"\"b\"\"\"|\"'=cmd()\"|-0.5");
    }

    use crate::api::positions::tests::{
        add_device, add_fix, add_officer, add_supervisee, assign, at, audits, lite_db, lite_state,
        officer,
    };
    use chrono::TimeDelta;

    async fn add_alert(db: &Db, device_key: i64, supervisee_id: i64, raised: DateTime<Utc>) -> i64 {
        Q::new(
            "INSERT INTO alerts (device_key, supervisee_id, kind, severity, confidence, late, \
               started_at, raised_at, last_evidence_at, explanation, condition_ended_at) \
             VALUES ($1, $2, 'exclusion_zone_entry', 'high', 'confirmed', $3, $4, $4, $4, \
               'entered', $4) RETURNING alert_id",
        )
        .bind(device_key)
        .bind(supervisee_id)
        .bind(raised.timestamp() % 2 == 0)
        .bind(raised)
        .scalar(db)
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn alerts_carry_first_positioned_evidence_decisions_and_escalations_on_sqlite() {
        let db = lite_db().await;
        add_officer(&db, "o1", None).await;
        add_officer(&db, "boss", None).await;
        let alice = add_supervisee(&db, "alice", "o1").await;
        let bob = add_supervisee(&db, "bob", "o1").await;
        let dev = add_device(&db, "d1").await;
        let t0 = at(2026, 10, 1, 0, 0, 0);
        let a1 = add_alert(&db, dev, alice, t0 + TimeDelta::hours(2)).await;
        let a2 = add_alert(&db, dev, alice, t0 + TimeDelta::hours(1)).await;
        let _outside = add_alert(&db, dev, alice, t0 + TimeDelta::days(2)).await;
        let _bobs = add_alert(&db, dev, bob, t0 + TimeDelta::hours(1)).await;
        // a1: a device report first (no position), then two positions.
        for (ord, lat) in [(0i64, None), (1, Some(51.5)), (2, Some(52.0))] {
            Q::new(
                "INSERT INTO alert_evidence (alert_id, ord, fix_time, lat, lon, observation) \
                 VALUES ($1, $2, $3, $4, $5, 'confirmed')",
            )
            .bind(a1)
            .bind(ord)
            .bind(t0)
            .bind(lat)
            .bind(lat.map(|_| -0.25))
            .execute(&db)
            .await
            .unwrap();
        }
        for (action, note) in [("acknowledge", None), ("note", Some("called"))] {
            Q::new(
                "INSERT INTO alert_actions (alert_id, action, actor, at, note) \
                 VALUES ($1, $2, 'o1', $3, $4)",
            )
            .bind(a1)
            .bind(action)
            .bind(t0 + TimeDelta::hours(3))
            .bind(note)
            .execute(&db)
            .await
            .unwrap();
        }
        Q::new(
            "INSERT INTO alert_escalations (alert_id, level, at, to_officer_id, reason) \
             VALUES ($1, 1, $2, (SELECT officer_id FROM officers WHERE officer_ref = 'boss'), \
               'unacknowledged')",
        )
        .bind(a2)
        .bind(t0 + TimeDelta::hours(4))
        .execute(&db)
        .await
        .unwrap();

        let mut tx = snapshot(&db).await.unwrap();
        let subj = subject(&mut tx, &officer("o1"), alice, t0, t0 + TimeDelta::days(1))
            .await
            .unwrap();
        assert_eq!(subj.case_ref, "alice");
        let alerts = read_alerts(&mut tx, alice, t0, t0 + TimeDelta::days(1))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            alerts.iter().map(|a| a.alert_id).collect::<Vec<_>>(),
            vec![a2, a1]
        );
        let (first, second) = (&alerts[0], &alerts[1]);
        assert_eq!(first.pos, None);
        assert!(first.actions.is_empty());
        assert_eq!(first.escalations.len(), 1);
        assert_eq!(first.escalations[0].level, 1);
        assert_eq!(first.escalations[0].to_officer_ref.as_deref(), Some("boss"));
        assert_eq!(first.late, (t0 + TimeDelta::hours(1)).timestamp() % 2 == 0);
        assert_eq!(second.pos, Some((51.5, -0.25)));
        assert_eq!(second.device_id, "d1");
        assert_eq!(second.raised_at, t0 + TimeDelta::hours(2));
        assert_eq!(
            second
                .actions
                .iter()
                .map(|x| (x.action.as_str(), x.note.as_deref()))
                .collect::<Vec<_>>(),
            vec![("acknowledge", None), ("note", Some("called"))]
        );
        assert!(second.escalations.is_empty());
    }

    #[tokio::test]
    async fn the_sqlite_snapshot_is_consistent_and_leaves_the_writer_free() {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("w.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .unwrap();
        sqlx::migrate!("./migrations/sqlite")
            .run(&write)
            .await
            .unwrap();
        let read = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts.read_only(true))
            .await
            .unwrap();
        let db = Db::Lite(crate::store::sql::LitePools { write, read });
        add_officer(&db, "o1", None).await;
        let alice = add_supervisee(&db, "alice", "o1").await;
        let dev = add_device(&db, "d1").await;
        let t0 = at(2026, 10, 1, 0, 0, 0);
        add_alert(&db, dev, alice, t0).await;

        let mut snap = snapshot(&db).await.unwrap();
        let before = read_alerts(&mut snap, alice, t0, t0 + TimeDelta::days(1))
            .await
            .unwrap();
        // A write (ingest raising an alert) goes ahead while the export
        // reads...
        tokio::time::timeout(
            Duration::from_secs(5),
            add_alert(&db, dev, alice, t0 + TimeDelta::hours(1)),
        )
        .await
        .expect("the writer is not held by an export");
        // ...and the export keeps reading the state it started from.
        let after = read_alerts(&mut snap, alice, t0, t0 + TimeDelta::days(1))
            .await
            .unwrap();
        snap.commit().await.unwrap();
        assert_eq!((before.len(), after.len()), (1, 1));
        let mut tx = db.begin().await.unwrap();
        let now = read_alerts(&mut tx, alice, t0, t0 + TimeDelta::days(1))
            .await
            .unwrap();
        assert_eq!(now.len(), 2);
    }

    #[tokio::test]
    async fn exports_in_three_formats_on_sqlite_carry_the_digest_of_their_bytes() {
        let (st, _dir) = lite_state().await;
        let db = st.db.clone();
        add_officer(&db, "o1", None).await;
        let alice = add_supervisee(&db, "alice", "o1").await;
        let (d1, d2) = (add_device(&db, "d1").await, add_device(&db, "d2").await);
        let t0 = at(2026, 10, 1, 0, 0, 0);
        let swap = t0 + TimeDelta::hours(1);
        assign(&db, d1, alice, t0 - TimeDelta::days(1), Some(swap)).await;
        assign(&db, d2, alice, swap, None).await;
        for i in 0..10i64 {
            let t = t0 + TimeDelta::minutes(15 * i) + TimeDelta::milliseconds(500);
            add_fix(&db, d1, t, i, 8.0).await;
            add_fix(&db, d2, t, 100 + i, 4.0).await;
        }
        add_alert(&db, d1, alice, t0 + TimeDelta::minutes(20)).await;
        let mut digests = Vec::new();
        for (format, rows) in [("geojson", 10), ("csv", 10), ("gpx", 10)] {
            let resp = export(
                State(st.clone()),
                officer("o1"),
                AuditReason(None),
                ApiPath(alice),
                ApiQuery(ExportQuery {
                    from: Some("2026-10-01T00:00:00Z".into()),
                    to: Some("2026-10-02T00:00:00Z".into()),
                    format: Some(format.into()),
                }),
            )
            .await
            .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let hex_header = resp.headers()["x-content-sha256"]
                .to_str()
                .unwrap()
                .to_owned();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            assert_eq!(hex::encode(Sha256::digest(&body)), hex_header);
            let text = String::from_utf8(body.to_vec()).unwrap();
            match format {
                "geojson" => {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let features = v["features"].as_array().unwrap();
                    assert_eq!(features.len(), rows + 1);
                    assert_eq!(features[0]["properties"]["record_type"], "alert");
                    // d1 until the swap (4 fixes at :00, :15, :30, :45), d2 after.
                    let devices: Vec<_> = features[1..]
                        .iter()
                        .map(|f| f["properties"]["device_id"].as_str().unwrap())
                        .collect();
                    assert_eq!(devices, [["d1"; 4].as_slice(), &["d2"; 6]].concat());
                    assert_eq!(v["waypoint_export"]["devices"].as_array().unwrap().len(), 2);
                }
                "csv" => {
                    let lines: Vec<_> = text.lines().collect();
                    assert_eq!(lines.len(), rows + 1);
                    assert_eq!(lines[1], "2026-10-01T00:00:00.500Z,51,-0.1,8,,d1");
                }
                _ => assert_eq!(text.matches("<trkpt ").count(), rows),
            }
            let audit = audits(&db, &format!("export.{format}")).await;
            assert_eq!(audit.len(), 1);
            assert_eq!(audit[0].1["sha256"], hex_header);
            assert_eq!(audit[0].1["rows"], rows);
            digests.push(hex_header);
        }
        digests.dedup();
        assert_eq!(digests.len(), 3);
    }
}
