//! Compliance progress: how a supervisee has been doing over recent days,
//! so officers can see and reinforce good progress (streaks, curfews kept,
//! care of the equipment), not only the alerts.
//!
//! It is a summary of alerts already raised and decided; it judges nothing
//! by itself and triggers nothing. Alerts an officer resolved as not the
//! person's doing (GPS noise, faulty equipment, an approved absence) do not
//! count against them. Reading it is audited: it reveals behaviour.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{self, AuditReason, Entry};
use super::auth::{Principal, CASEWORK};
use super::error::{ApiError, ApiPath, ApiQuery, StdErrors};
use super::positions::{subject, Span};
use super::ApiState;
use crate::rules::schedule::{first_instant_at, parse_tz, Schedule};
use crate::store::sql::{Tx, Q};

/// Alert kinds that are the person's conduct.
pub const VIOLATION_KINDS: [&str; 5] = [
    "exclusion_zone_entry",
    "inclusion_zone_exit",
    "curfew_violation",
    "victim_proximity",
    "strap_tamper",
];
/// Alert kinds about looking after the equipment.
pub const EQUIPMENT_KINDS: [&str; 4] = ["battery_low", "battery_critical", "no_signal", "gps_loss"];
/// Resolutions meaning a violation alert was not the person's doing.
pub const VIOLATION_EXCUSED: [&str; 3] = ["gps_false_alarm", "equipment_fault", "approved_absence"];
/// Resolutions meaning an equipment alert was not the person's doing.
pub const EQUIPMENT_EXCUSED: [&str; 2] = ["equipment_fault", "gps_false_alarm"];
/// Bound on alerts summarised in one request (far above any real history).
const MAX_ALERTS: i64 = 200_000;

/// How many days to summarise.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ComplianceQuery {
    /// 1..=365 local days ending today (default 30).
    pub days: Option<i64>,
}

/// One local day.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DayRecord {
    /// Local date in the supervisee's time zone.
    pub date: NaiveDate,
    /// Whether a device was assigned (worn) at some time that day: days
    /// without monitoring prove nothing either way and are not counted.
    pub monitored: bool,
    /// Violation alerts that started that day (excused ones left out).
    pub violations: i64,
    /// Equipment alerts that started that day (excused ones left out).
    pub equipment_alerts: i64,
    /// For a curfew night that started that day: whether it was kept.
    /// Null when no curfew was observed that night.
    pub curfew_kept: Option<bool>,
}

/// Looking after the equipment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EquipmentCare {
    /// Monitored days without any equipment alert.
    pub days_without_equipment_alerts: i64,
    /// battery_low and battery_critical alerts in the period.
    pub battery_alerts: i64,
    /// no_signal alerts in the period.
    pub no_signal_alerts: i64,
}

/// A supervisee's compliance progress.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Compliance {
    /// Whose.
    pub supervisee_id: i64,
    /// The IANA zone the days are counted in.
    pub time_zone: String,
    /// Days summarised (today included, as far as it has gone).
    pub days: i64,
    /// Of those, days with monitoring in place.
    pub monitored_days: i64,
    /// Monitored days without a violation.
    pub days_without_violations: i64,
    /// Consecutive monitored days without a violation, counted back from
    /// today (capped at `days`).
    pub current_streak_days: i64,
    /// Nights on which a home (curfew) rule applied and was monitored.
    pub curfew_nights_observed: i64,
    /// Of those, nights without a curfew violation.
    pub curfew_nights_kept: i64,
    /// Equipment alerts.
    pub equipment_care: EquipmentCare,
    /// Per day, oldest first.
    pub daily: Vec<DayRecord>,
    /// The same in plain words, e.g. "14 days in a row without violations;
    /// 12 of 12 curfews kept."
    pub summary: String,
}

/// A home rule: its schedule (None = always) and when it was in force.
struct HomeRule {
    rule_id: i64,
    windows: Option<Vec<Win>>,
    created_at: DateTime<Utc>,
    retired_at: Option<DateTime<Utc>>,
}

/// A weekly window in wall-clock time (from the schedule's canonical form).
struct Win {
    /// Bit 0 = Monday.
    days: u8,
    start: NaiveTime,
    /// None = 24:00.
    end: Option<NaiveTime>,
}

fn windows_of(s: &Schedule) -> Option<Vec<Win>> {
    #[derive(Deserialize)]
    struct Wire {
        windows: Vec<WireWin>,
    }
    #[derive(Deserialize)]
    struct WireWin {
        days: Vec<String>,
        start: String,
        end: String,
    }
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let w: Wire = serde_json::from_value(s.to_json()).ok()?;
    let time = |t: &str| NaiveTime::parse_from_str(t, "%H:%M").ok();
    w.windows
        .iter()
        .map(|x| {
            let mut days = 0u8;
            for d in &x.days {
                days |= 1 << NAMES.iter().position(|n| n == d)?;
            }
            let end = if x.end == "24:00" {
                None
            } else {
                Some(time(&x.end)?)
            };
            Some(Win {
                days,
                start: time(&x.start)?,
                end,
            })
        })
        .collect()
}

fn next_day(d: NaiveDate) -> NaiveDate {
    d.checked_add_days(Days::new(1)).unwrap_or(d)
}

fn day_start(d: NaiveDate, tz: Tz) -> DateTime<Utc> {
    first_instant_at(d.and_time(NaiveTime::MIN), tz)
}

/// The curfew occurrences of `rule` that start on local day `d`.
fn occurrences(rule: &HomeRule, d: NaiveDate, tz: Tz) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    match &rule.windows {
        None => vec![(day_start(d, tz), day_start(next_day(d), tz))],
        Some(ws) => {
            let bit = 1u8 << d.weekday().num_days_from_monday();
            ws.iter()
                .filter(|w| w.days & bit != 0)
                .map(|w| {
                    let end = match w.end {
                        Some(e) if e > w.start => d.and_time(e),
                        Some(e) => next_day(d).and_time(e),
                        None => next_day(d).and_time(NaiveTime::MIN),
                    };
                    (
                        first_instant_at(d.and_time(w.start), tz),
                        first_instant_at(end, tz),
                    )
                })
                .collect()
        }
    }
}

fn overlaps(spans: &[Span], lo: DateTime<Utc>, hi: DateTime<Utc>) -> bool {
    lo < hi && spans.iter().any(|s| s.lo < hi && lo < s.hi)
}

fn plural(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A supervisee's progress over the last `days` local days (today
/// included), in their own time zone.
///
/// Definitions:
/// - A **day** is a calendar day in the supervisee's time zone. It is
///   **monitored** if a device was assigned to them at some time that day;
///   unmonitored days prove nothing and count neither way.
/// - **Violations** are alerts of kind exclusion_zone_entry,
///   inclusion_zone_exit, curfew_violation, victim_proximity or
///   strap_tamper, counted on the local day their first evidence occurred
///   (`started_at`), except those resolved as `gps_false_alarm`,
///   `equipment_fault` or `approved_absence` (not the person's doing).
///   Open and acknowledged alerts count.
/// - **Equipment alerts** are battery_low, battery_critical, no_signal and
///   gps_loss, except those resolved as `equipment_fault` or
///   `gps_false_alarm` (the device, not the wearer's care, was at fault).
/// - `days_without_violations`: monitored days with no violation.
///   `current_streak_days`: consecutive monitored days without a violation
///   counted back from today, stopping at a violation or an unmonitored day.
/// - A **curfew night** is observed on day D when a home rule of the
///   supervisee (not retired before the night began) has a schedule window
///   starting on D (a home rule without a schedule: every day), the night
///   has begun, a device was assigned during it, and no approved absence
///   covered it entirely. It is **kept** unless a counted curfew_violation
///   started within it (or, outside any window, on D).
///
/// Audited (`compliance.read`).
#[utoipa::path(
    get,
    path = "/supervisees/{id}/compliance",
    tag = "positions",
    params(("id" = i64, Path, description = "Supervisee id"), ComplianceQuery, ("X-Audit-Reason" = Option<String>, Header, description = "Why you are looking (kept in the audit log)")),
    responses((status = 200, description = "Compliance progress", body = Compliance), StdErrors),
    security(("bearer" = []))
)]
pub async fn compliance(
    State(st): State<ApiState>,
    who: Principal,
    reason: AuditReason,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<ComplianceQuery>,
) -> Result<Json<Compliance>, ApiError> {
    who.require(CASEWORK)?;
    let days = q.days.unwrap_or(30);
    if !(1..=365).contains(&days) {
        return Err(ApiError::field("days", "must be 1..=365"));
    }
    let now = st.clock.now();
    let mut tx = st.db.begin().await?;
    // Wide enough for any offset (±14 h); clipped to local days below.
    let wide_from = now - chrono::TimeDelta::days(days + 1);
    let subj = subject(&mut tx, &who, id, wide_from, now).await?;
    let tz = parse_tz(&subj.time_zone).map_err(|e| ApiError::Internal(e.to_string()))?;
    let today = now.with_timezone(&tz).date_naive();
    let first = today
        .checked_sub_days(Days::new((days - 1) as u64))
        .unwrap_or(today);
    let period_start = day_start(first, tz);

    let alert_rows = counted_alerts(&mut tx, id, period_start, now).await?;
    let rules = home_rules(&mut tx, id, period_start).await?;
    let exceptions = absences(&mut tx, id, period_start).await?;

    // Days, oldest first; index by offset from `first`.
    let n = days as usize;
    let mut daily: Vec<DayRecord> = Vec::with_capacity(n);
    // Per day: the observed curfew occurrences starting that day.
    let mut nights: Vec<Vec<(DateTime<Utc>, DateTime<Utc>)>> = Vec::with_capacity(n);
    let mut d = first;
    for _ in 0..n {
        let lo = day_start(d, tz);
        let hi = day_start(next_day(d), tz).min(now);
        let mut night = Vec::new();
        for rule in &rules {
            for (s, e) in occurrences(rule, d, tz) {
                let begun = s <= now;
                let in_force = rule.created_at <= s && rule.retired_at.is_none_or(|r| r > s);
                let watched = overlaps(&subj.spans, s, e.min(now));
                let excused = exceptions.iter().any(|(rid, es, ee)| {
                    rid.is_none_or(|r| r == rule.rule_id) && *es <= s && *ee >= e
                });
                if begun && in_force && watched && !excused {
                    night.push((s, e));
                }
            }
        }
        daily.push(DayRecord {
            date: d,
            monitored: overlaps(&subj.spans, lo, hi),
            violations: 0,
            equipment_alerts: 0,
            curfew_kept: (!night.is_empty()).then_some(true),
        });
        nights.push(night);
        d = next_day(d);
    }
    let slot = |t: DateTime<Utc>| -> Option<usize> {
        let local = t.with_timezone(&tz).date_naive();
        let i = (local - first).num_days();
        (0..days).contains(&i).then_some(i as usize)
    };

    let (mut battery_alerts, mut no_signal_alerts) = (0i64, 0i64);
    for r in &alert_rows {
        let kind = r.kind.as_str();
        let t = r.started_at;
        let resolved = r.status == "resolved";
        let outcome = r.outcome.as_deref();
        let excused_by = |list: &[&str]| resolved && outcome.is_some_and(|o| list.contains(&o));
        if VIOLATION_KINDS.contains(&kind) {
            if excused_by(&VIOLATION_EXCUSED) {
                continue;
            }
            if let Some(i) = slot(t) {
                daily[i].violations += 1;
            }
            if kind == "curfew_violation" {
                let night = nights
                    .iter()
                    .position(|ns| ns.iter().any(|(s, e)| *s <= t && t < *e))
                    .or_else(|| slot(t).filter(|&i| !nights[i].is_empty()));
                if let Some(i) = night {
                    daily[i].curfew_kept = Some(false);
                }
            }
        } else {
            if excused_by(&EQUIPMENT_EXCUSED) {
                continue;
            }
            if let Some(i) = slot(t) {
                daily[i].equipment_alerts += 1;
                match kind {
                    "battery_low" | "battery_critical" => battery_alerts += 1,
                    "no_signal" => no_signal_alerts += 1,
                    _ => {}
                }
            }
        }
    }

    let monitored_days = daily.iter().filter(|d| d.monitored).count() as i64;
    let days_without_violations = daily
        .iter()
        .filter(|d| d.monitored && d.violations == 0)
        .count() as i64;
    let current_streak_days = daily
        .iter()
        .rev()
        .take_while(|d| d.monitored && d.violations == 0)
        .count() as i64;
    let curfew_nights_observed = daily.iter().filter(|d| d.curfew_kept.is_some()).count() as i64;
    let curfew_nights_kept = daily.iter().filter(|d| d.curfew_kept == Some(true)).count() as i64;
    let days_without_equipment_alerts = daily
        .iter()
        .filter(|d| d.monitored && d.equipment_alerts == 0)
        .count() as i64;

    let mut summary = if monitored_days == 0 {
        format!(
            "No monitored days in the last {}",
            plural(days, "day", "days")
        )
    } else if current_streak_days > 0 {
        if current_streak_days == 1 {
            "1 day without violations".to_owned()
        } else {
            format!("{current_streak_days} days in a row without violations")
        }
    } else {
        format!(
            "{days_without_violations} of {} without violations",
            plural(monitored_days, "monitored day", "monitored days")
        )
    };
    if curfew_nights_observed > 0 {
        summary.push_str(&format!(
            "; {curfew_nights_kept} of {curfew_nights_observed} {} kept",
            if curfew_nights_observed == 1 {
                "curfew"
            } else {
                "curfews"
            }
        ));
    }
    summary.push('.');

    audit::record(
        &mut tx,
        &who,
        &reason,
        now,
        Entry::supervisee("compliance.read", id).with(json!({ "days": days })),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(Compliance {
        supervisee_id: id,
        time_zone: subj.time_zone,
        days,
        monitored_days,
        days_without_violations,
        current_streak_days,
        curfew_nights_observed,
        curfew_nights_kept,
        equipment_care: EquipmentCare {
            days_without_equipment_alerts,
            battery_alerts,
            no_signal_alerts,
        },
        daily,
        summary,
    }))
}

/// An alert of a counted kind, as far as the summary needs it.
struct AlertRow {
    kind: String,
    started_at: DateTime<Utc>,
    status: String,
    outcome: Option<String>,
}

/// The supervisee's violation and equipment alerts that started in
/// `[from, until]`, oldest first (422 naming `days` beyond [`MAX_ALERTS`]).
async fn counted_alerts(
    tx: &mut Tx,
    supervisee_id: i64,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<AlertRow>, ApiError> {
    let kinds: Vec<String> = VIOLATION_KINDS
        .iter()
        .chain(EQUIPMENT_KINDS.iter())
        .map(|k| (*k).to_owned())
        .collect();
    // The kind list is an array on PostgreSQL and JSON text on SQLite.
    let rows = Q::split(
        "SELECT kind, started_at, status, outcome FROM alerts \
         WHERE supervisee_id = $1 AND started_at >= $2 AND started_at <= $3 \
           AND kind = ANY($4) ORDER BY started_at LIMIT $5",
        "SELECT kind, started_at, status, outcome FROM alerts \
         WHERE supervisee_id = $1 AND started_at >= $2 AND started_at <= $3 \
           AND kind IN (SELECT value FROM json_each($4)) ORDER BY started_at LIMIT $5",
    )
    .bind(supervisee_id)
    .bind(from)
    .bind(until)
    .bind(kinds)
    .bind(MAX_ALERTS + 1)
    .fetch_all(tx)
    .await?;
    if rows.len() as i64 > MAX_ALERTS {
        return Err(ApiError::field(
            "days",
            "too many alerts to summarise: ask for fewer days",
        ));
    }
    Ok(rows
        .iter()
        .map(|r| AlertRow {
            kind: r.get("kind"),
            started_at: r.get("started_at"),
            status: r.get("status"),
            outcome: r.get("outcome"),
        })
        .collect())
}

/// The supervisee's home rules not retired before `from`; a rule whose
/// schedule cannot be read is skipped (and logged) rather than failing the
/// whole summary.
async fn home_rules(
    tx: &mut Tx,
    supervisee_id: i64,
    from: DateTime<Utc>,
) -> Result<Vec<HomeRule>, ApiError> {
    let rows = Q::new(
        "SELECT rule_id, schedule, created_at, retired_at FROM rules \
         WHERE supervisee_id = $1 AND role = 'home' \
           AND (retired_at IS NULL OR retired_at > $2)",
    )
    .bind(supervisee_id)
    .bind(from)
    .fetch_all(tx)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let rule_id: i64 = r.get("rule_id");
            let windows = match r.json_opt("schedule") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => match Schedule::from_json(&v).ok().and_then(|s| windows_of(&s)) {
                    Some(w) => Some(w),
                    None => {
                        tracing::warn!(rule_id, "compliance: unreadable schedule skipped");
                        return None;
                    }
                },
            };
            Some(HomeRule {
                rule_id,
                windows,
                created_at: r.get("created_at"),
                retired_at: r.get("retired_at"),
            })
        })
        .collect())
}

/// Approved absences of the supervisee ending after `from`: (rule, or all
/// rules when none; start; end).
async fn absences(
    tx: &mut Tx,
    supervisee_id: i64,
    from: DateTime<Utc>,
) -> Result<Vec<(Option<i64>, DateTime<Utc>, DateTime<Utc>)>, ApiError> {
    let rows = Q::new(
        "SELECT rule_id, starts_at, ends_at FROM rule_exceptions \
         WHERE supervisee_id = $1 AND ends_at > $2",
    )
    .bind(supervisee_id)
    .bind(from)
    .fetch_all(tx)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get("rule_id"), r.get("starts_at"), r.get("ends_at")))
        .collect())
}

/// Routes of this module.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(compliance))
}
