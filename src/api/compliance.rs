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
    let mut tx = st.db.begin_read().await?;
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

    tx.commit().await?;
    audit::record_read(
        &st.db,
        &who,
        &reason,
        now,
        Entry::supervisee("compliance.read", id).with(json!({ "days": days })),
    )
    .await?;
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

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::api::positions::tests::{
        add_device, add_officer, add_supervisee, assign, at, audits, lite_db, lite_state, officer,
    };
    use crate::store::sql::Db;

    async fn add_alert(
        db: &Db,
        device_key: i64,
        supervisee_id: i64,
        kind: &str,
        started: DateTime<Utc>,
        outcome: Option<&str>,
    ) {
        Q::new(
            "INSERT INTO alerts (device_key, supervisee_id, kind, severity, confidence, \
               started_at, raised_at, last_evidence_at, explanation, condition_ended_at, \
               status, outcome, resolution_note) \
             VALUES ($1, $2, $3, 'high', 'confirmed', $4, $4, $4, 'x', $4, \
               CASE WHEN $5 IS NULL THEN 'open' ELSE 'resolved' END, $5, \
               CASE WHEN $5 IS NULL THEN NULL ELSE 'checked' END)",
        )
        .bind(device_key)
        .bind(supervisee_id)
        .bind(kind)
        .bind(started)
        .bind(outcome)
        .execute(db)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn counted_alerts_filter_kinds_and_period_on_sqlite() {
        let db = lite_db().await;
        add_officer(&db, "o1", None).await;
        let alice = add_supervisee(&db, "alice", "o1").await;
        let bob = add_supervisee(&db, "bob", "o1").await;
        let dev = add_device(&db, "d1").await;
        let t0 = at(2026, 10, 1, 0, 0, 0);
        let now = t0 + TimeDelta::days(3);
        add_alert(
            &db,
            dev,
            alice,
            "curfew_violation",
            t0 + TimeDelta::days(2),
            None,
        )
        .await;
        add_alert(
            &db,
            dev,
            alice,
            "battery_low",
            t0 + TimeDelta::hours(1),
            Some("equipment_fault"),
        )
        .await;
        // Not a counted kind, before the period, after now, someone else's.
        add_alert(
            &db,
            dev,
            alice,
            "victim_proximity_lost",
            t0 + TimeDelta::hours(2),
            None,
        )
        .await;
        add_alert(
            &db,
            dev,
            alice,
            "no_signal",
            t0 - TimeDelta::seconds(1),
            None,
        )
        .await;
        add_alert(
            &db,
            dev,
            alice,
            "no_signal",
            now + TimeDelta::milliseconds(1),
            None,
        )
        .await;
        add_alert(&db, dev, bob, "no_signal", t0 + TimeDelta::hours(3), None).await;
        // Exactly at `now` counts (the period's end is inclusive).
        add_alert(&db, dev, alice, "strap_tamper", now, None).await;

        let mut tx = db.begin().await.unwrap();
        let rows = counted_alerts(&mut tx, alice, t0, now).await.unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.kind.as_str(),
                    r.started_at,
                    r.status.as_str(),
                    r.outcome.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "battery_low",
                    t0 + TimeDelta::hours(1),
                    "resolved",
                    Some("equipment_fault")
                ),
                ("curfew_violation", t0 + TimeDelta::days(2), "open", None),
                ("strap_tamper", now, "open", None),
            ]
        );
    }

    #[tokio::test]
    async fn home_rules_and_absences_read_on_sqlite() {
        let db = lite_db().await;
        add_officer(&db, "o1", None).await;
        let alice = add_supervisee(&db, "alice", "o1").await;
        let t0 = at(2026, 10, 1, 0, 0, 0);
        let mut zone_ids = Vec::new();
        for z in ["home1", "home2", "home3", "home4", "park"] {
            zone_ids.push(
                Q::new("INSERT INTO zones (zone_ref, name) VALUES ($1, $1) RETURNING zone_id")
                    .bind(z)
                    .scalar::<i64>(&db)
                    .await
                    .unwrap(),
            );
        }
        let night = serde_json::json!({"windows": [{"days": ["mon", "tue"], "start": "21:00", "end": "07:00"}]});
        let rules = [
            // Scheduled; always; unreadable (skipped); retired before the
            // period; not a home rule.
            ("home", zone_ids[0], Some(night), None),
            ("home", zone_ids[1], None, None),
            (
                "home",
                zone_ids[2],
                Some(serde_json::json!({"windows": "nightly"})),
                None,
            ),
            ("home", zone_ids[3], None, Some(t0 - TimeDelta::days(1))),
            ("inclusion", zone_ids[4], None, None),
        ];
        let mut ids = Vec::new();
        for (role, zone_id, schedule, retired) in rules {
            ids.push(
                Q::new(
                    "INSERT INTO rules (supervisee_id, role, zone_id, schedule, retired_at, \
                       created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING rule_id",
                )
                .bind(alice)
                .bind(role)
                .bind(zone_id)
                .bind(schedule)
                .bind(retired)
                .bind(t0 - TimeDelta::days(10))
                .scalar::<i64>(&db)
                .await
                .unwrap(),
            );
        }
        for (rule_id, start, end) in [
            (
                Some(ids[0]),
                t0 + TimeDelta::hours(20),
                t0 + TimeDelta::hours(32),
            ),
            (None, t0 - TimeDelta::days(3), t0 - TimeDelta::days(2)),
            (
                None,
                t0 - TimeDelta::days(1),
                t0 + TimeDelta::milliseconds(1),
            ),
        ] {
            Q::new(
                "INSERT INTO rule_exceptions (supervisee_id, rule_id, starts_at, ends_at, reason, \
                   created_by) VALUES ($1, $2, $3, $4, 'approved', 'o1')",
            )
            .bind(alice)
            .bind(rule_id)
            .bind(start)
            .bind(end)
            .execute(&db)
            .await
            .unwrap();
        }

        let mut tx = db.begin().await.unwrap();
        // Neither read is ordered (the summary does not depend on order).
        let mut home = home_rules(&mut tx, alice, t0).await.unwrap();
        home.sort_by_key(|r| r.rule_id);
        assert_eq!(
            home.iter().map(|r| r.rule_id).collect::<Vec<_>>(),
            vec![ids[0], ids[1]]
        );
        let windows = home[0].windows.as_ref().expect("scheduled");
        assert_eq!(windows.len(), 1);
        assert_eq!(windows[0].days, 0b11);
        assert_eq!(windows[0].start, NaiveTime::from_hms_opt(21, 0, 0).unwrap());
        assert_eq!(windows[0].end, NaiveTime::from_hms_opt(7, 0, 0));
        assert!(home[1].windows.is_none());
        assert_eq!(home[0].created_at, t0 - TimeDelta::days(10));
        assert_eq!(home[0].retired_at, None);

        let mut away = absences(&mut tx, alice, t0).await.unwrap();
        away.sort_by_key(|a| a.1);
        assert_eq!(
            away,
            vec![
                (
                    None,
                    t0 - TimeDelta::days(1),
                    t0 + TimeDelta::milliseconds(1)
                ),
                (
                    Some(ids[0]),
                    t0 + TimeDelta::hours(20),
                    t0 + TimeDelta::hours(32)
                ),
            ]
        );
    }

    #[tokio::test]
    async fn the_summary_on_sqlite() {
        // Server time 2026-10-02T12:00:00.250Z; London is on BST (+1).
        let (st, _dir) = lite_state().await;
        let db = st.db.clone();
        add_officer(&db, "o1", None).await;
        let alice = add_supervisee(&db, "alice", "o1").await;
        let dev = add_device(&db, "d1").await;
        assign(&db, dev, alice, at(2026, 9, 25, 0, 0, 0), None).await;
        let zone: i64 =
            Q::new("INSERT INTO zones (zone_ref, name) VALUES ('h', 'h') RETURNING zone_id")
                .scalar(&db)
                .await
                .unwrap();
        Q::new(
            "INSERT INTO rules (supervisee_id, role, zone_id, created_at) \
             VALUES ($1, 'home', $2, $3)",
        )
        .bind(alice)
        .bind(zone)
        .bind(at(2026, 9, 20, 0, 0, 0))
        .execute(&db)
        .await
        .unwrap();
        add_alert(
            &db,
            dev,
            alice,
            "curfew_violation",
            at(2026, 10, 1, 10, 0, 0),
            None,
        )
        .await;
        add_alert(
            &db,
            dev,
            alice,
            "exclusion_zone_entry",
            at(2026, 10, 2, 9, 0, 0),
            Some("gps_false_alarm"),
        )
        .await;
        // 23:30 UTC on 29 Sep is 00:30 on the 30th in London.
        add_alert(
            &db,
            dev,
            alice,
            "battery_low",
            at(2026, 9, 29, 23, 30, 0),
            None,
        )
        .await;

        let Json(c) = compliance(
            State(st.clone()),
            officer("o1"),
            AuditReason(None),
            ApiPath(alice),
            ApiQuery(ComplianceQuery { days: Some(3) }),
        )
        .await
        .unwrap();
        let days: Vec<_> = c
            .daily
            .iter()
            .map(|d| {
                (
                    d.date.to_string(),
                    d.monitored,
                    d.violations,
                    d.equipment_alerts,
                    d.curfew_kept,
                )
            })
            .collect();
        assert_eq!(
            days,
            vec![
                ("2026-09-30".to_owned(), true, 0, 1, Some(true)),
                ("2026-10-01".to_owned(), true, 1, 0, Some(false)),
                ("2026-10-02".to_owned(), true, 0, 0, Some(true)),
            ]
        );
        assert_eq!(
            (
                c.monitored_days,
                c.days_without_violations,
                c.current_streak_days
            ),
            (3, 2, 1)
        );
        assert_eq!((c.curfew_nights_observed, c.curfew_nights_kept), (3, 2));
        assert_eq!(c.equipment_care.battery_alerts, 1);
        assert_eq!(c.summary, "1 day without violations; 2 of 3 curfews kept.");
        let audit = audits(&db, "compliance.read").await;
        assert_eq!(audit, vec![(Some(alice), serde_json::json!({"days": 3}))]);
        assert!(matches!(
            compliance(
                State(st.clone()),
                officer("o2"),
                AuditReason(None),
                ApiPath(alice),
                ApiQuery(ComplianceQuery { days: Some(3) }),
            )
            .await,
            Err(ApiError::NotFound)
        ));
    }
}
