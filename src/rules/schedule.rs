//! Weekly schedules in the supervisee's own time zone.
//!
//! A window is wall-clock time ("21:00 to 07:00, Monday to Friday"),
//! evaluated in the supervisee's IANA zone. Each window occurrence is turned
//! into one contiguous interval of real instants:
//! - start: the first instant whose local time reaches the start time (in a
//!   spring-forward gap, the moment the clocks jump; in an autumn overlap,
//!   the first occurrence);
//! - end: likewise, the first instant that reaches the end time.
//!
//! So a 21:00–07:00 curfew lasts 9 hours on the spring-forward night and 11
//! on the autumn one, as the wall clock says, and it never switches off and
//! on again inside the repeated hour. Non-existent and ambiguous local times
//! are resolved, never unwrapped.

use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use chrono::{LocalResult, TimeZone, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Not the documented JSON shape.
    #[error("schedule: {0}")]
    Shape(String),
    /// A day name other than mon..sun.
    #[error("schedule: unknown day {0:?} (mon, tue, wed, thu, fri, sat, sun)")]
    Day(String),
    /// A time other than HH:MM (00:00–24:00).
    #[error("schedule: bad time {0:?} (HH:MM, 00:00 to 24:00)")]
    Time(String),
    /// Start and end are equal.
    #[error("schedule: window {0} starts and ends at the same time")]
    Empty(usize),
    /// Not an IANA time-zone name.
    #[error("unknown time zone {0:?} (use an IANA name such as Europe/London)")]
    TimeZone(String),
}

/// Parses an IANA zone name.
pub fn parse_tz(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::TimeZone(name.to_owned()))
}

/// One weekly window; it may cross midnight (end before start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Days on which the window starts; bit 0 = Monday.
    days: u8,
    start: NaiveTime,
    /// `None` means 24:00 (the end of the start day).
    end: Option<NaiveTime>,
}

/// A weekly schedule; an empty list of windows is never active.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schedule {
    windows: Vec<Window>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSchedule {
    windows: Vec<WireWindow>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireWindow {
    days: Vec<String>,
    start: String,
    end: String,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// Enough for any real plan; bounds hostile input.
const MAX_WINDOWS: usize = 64;

fn parse_time(s: &str) -> Result<Option<NaiveTime>, ScheduleError> {
    if s == "24:00" {
        return Ok(None);
    }
    let bad = || ScheduleError::Time(crate::decode::clip(s, 16).to_owned());
    if s.len() != 5 {
        return Err(bad());
    }
    NaiveTime::parse_from_str(s, "%H:%M")
        .map(Some)
        .map_err(|_| bad())
}

fn fmt_time(t: Option<NaiveTime>) -> String {
    t.map_or_else(|| "24:00".to_owned(), |t| t.format("%H:%M").to_string())
}

impl Schedule {
    /// Parses `{"windows": [{"days": ["mon", ...], "start": "HH:MM", "end": "HH:MM"}]}`.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, ScheduleError> {
        let wire: WireSchedule =
            serde_json::from_value(v.clone()).map_err(|e| ScheduleError::Shape(e.to_string()))?;
        if wire.windows.len() > MAX_WINDOWS {
            return Err(ScheduleError::Shape(format!(
                "at most {MAX_WINDOWS} windows"
            )));
        }
        let mut windows = Vec::with_capacity(wire.windows.len());
        for (i, w) in wire.windows.iter().enumerate() {
            let mut days = 0u8;
            if w.days.is_empty() || w.days.len() > 7 {
                return Err(ScheduleError::Shape(format!(
                    "window {i}: days must list 1 to 7 days"
                )));
            }
            for d in &w.days {
                let i = DAY_NAMES
                    .iter()
                    .position(|n| n == d)
                    .ok_or_else(|| ScheduleError::Day(crate::decode::clip(d, 16).to_owned()))?;
                days |= 1 << i;
            }
            let start =
                parse_time(&w.start)?.ok_or_else(|| ScheduleError::Time(w.start.clone()))?;
            let end = parse_time(&w.end)?;
            if end == Some(start) {
                return Err(ScheduleError::Empty(i));
            }
            windows.push(Window { days, start, end });
        }
        Ok(Self { windows })
    }

    /// The canonical JSON form.
    pub fn to_json(&self) -> serde_json::Value {
        let windows = self
            .windows
            .iter()
            .map(|w| WireWindow {
                days: (0..7)
                    .filter(|i| w.days & (1 << i) != 0)
                    .map(|i| DAY_NAMES[i].to_owned())
                    .collect(),
                start: fmt_time(Some(w.start)),
                end: fmt_time(w.end),
            })
            .collect();
        serde_json::to_value(WireSchedule { windows }).unwrap_or_default()
    }

    /// The window occurrence containing `t`, as real instants `[start, end)`.
    pub fn occurrence_at(
        &self,
        t: DateTime<Utc>,
        tz: Tz,
    ) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let today = t.with_timezone(&tz).date_naive();
        // A window lasts at most 24 h, so only occurrences that started
        // today or yesterday (local) can contain t.
        for day in [today.pred_opt(), Some(today)].into_iter().flatten() {
            let bit = 1u8 << day.weekday().num_days_from_monday();
            for w in self.windows.iter().filter(|w| w.days & bit != 0) {
                let (start, end) = w.occurrence(day, tz);
                if start <= t && t < end {
                    return Some((start, end));
                }
            }
        }
        None
    }

    /// Whether `t` falls in a window.
    ///
    /// Hot path (every fix, every scheduled rule): away from window edges
    /// the wall-clock comparison gives the same answer as the exact one, so
    /// the exact instants (two to four local→UTC resolutions) are computed
    /// only within [`EDGE_MARGIN`] of an edge, where a DST change could
    /// matter.
    pub fn is_active(&self, t: DateTime<Utc>, tz: Tz) -> bool {
        let local = t.with_timezone(&tz).naive_local();
        let today = local.date();
        let mut near_edge = false;
        for day in [today.pred_opt(), Some(today)].into_iter().flatten() {
            let bit = 1u8 << day.weekday().num_days_from_monday();
            for w in self.windows.iter().filter(|w| w.days & bit != 0) {
                let (start, end) = w.wall_clock(day);
                if (local - start).abs() < EDGE_MARGIN || (local - end).abs() < EDGE_MARGIN {
                    near_edge = true;
                } else if start <= local && local < end {
                    return true;
                }
            }
        }
        near_edge && self.occurrence_at(t, tz).is_some()
    }
}

/// Wider than any DST shift (at most 2 h, historically), so outside it a
/// wall-clock comparison cannot be fooled by a gap or an overlap.
const EDGE_MARGIN: chrono::TimeDelta = chrono::TimeDelta::hours(3);

impl Window {
    /// The occurrence starting on `day` in wall-clock time.
    fn wall_clock(&self, day: NaiveDate) -> (NaiveDateTime, NaiveDateTime) {
        let end = match self.end {
            Some(e) if e > self.start => day.and_time(e),
            Some(e) => next_day(day).and_time(e),
            None => next_day(day).and_time(NaiveTime::MIN),
        };
        (day.and_time(self.start), end)
    }

    fn occurrence(&self, day: NaiveDate, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
        let (start, end) = self.wall_clock(day);
        (first_instant_at(start, tz), first_instant_at(end, tz))
    }
}

fn next_day(d: NaiveDate) -> NaiveDate {
    d.checked_add_days(Days::new(1)).unwrap_or(d)
}

/// The first instant at which the local clock in `tz` reads `local` or later.
pub fn first_instant_at(local: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => a.min(b).with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: the clocks jumped over `local`. Offsets lie within
            // ±14 h, so the jump is inside this range; local time increases
            // through it, so bisect for the first instant at or past `local`.
            // Transitions fall on whole seconds, so bisect over seconds.
            let guess = local.and_utc().timestamp();
            let (mut lo, mut hi) = (guess - 15 * 3600, guess + 15 * 3600);
            let reaches = |secs: i64| {
                DateTime::from_timestamp(secs, 0)
                    .is_some_and(|t| t.with_timezone(&tz).naive_local() >= local)
            };
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if reaches(mid) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            DateTime::from_timestamp(hi, 0).unwrap_or_else(|| local.and_utc())
        }
    }
}

/// Weekday names, for explanations.
pub fn weekday_name(w: Weekday) -> &'static str {
    DAY_NAMES[w.num_days_from_monday() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn nightly(start: &str, end: &str) -> Schedule {
        Schedule::from_json(&json!({"windows": [{
            "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "start": start, "end": end}]}))
        .unwrap()
    }

    const NY: Tz = chrono_tz::America::New_York;

    #[test]
    fn overnight_window_in_local_time() {
        let s = nightly("21:00", "07:00");
        // 2026-07-01 is EDT (UTC-4): 21:00 local = 01:00Z next day.
        assert!(!s.is_active(utc("2026-07-02T00:59:00Z"), NY));
        assert!(s.is_active(utc("2026-07-02T01:00:00Z"), NY));
        assert!(s.is_active(utc("2026-07-02T10:59:00Z"), NY));
        assert!(!s.is_active(utc("2026-07-02T11:00:00Z"), NY));
    }

    #[test]
    fn spring_forward_gap_shortens_the_night() {
        // 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z).
        let s = nightly("21:00", "07:00");
        let (start, end) = s.occurrence_at(utc("2026-03-08T06:00:00Z"), NY).unwrap();
        assert_eq!(start, utc("2026-03-08T02:00:00Z")); // 21:00 EST on the 7th
        assert_eq!(end, utc("2026-03-08T11:00:00Z")); // 07:00 EDT
        assert_eq!(end - start, TimeDelta::hours(9));
        // A window that starts inside the gap starts when the clocks jump.
        let gap = nightly("02:30", "05:00");
        let (start, _) = gap.occurrence_at(utc("2026-03-08T07:30:00Z"), NY).unwrap();
        assert_eq!(start, utc("2026-03-08T07:00:00Z"));
        assert!(!gap.is_active(utc("2026-03-08T06:59:59Z"), NY));
        // And one that ends inside the gap ends there too.
        let ends_in_gap = nightly("01:00", "02:30");
        assert!(ends_in_gap.is_active(utc("2026-03-08T06:59:59Z"), NY));
        assert!(!ends_in_gap.is_active(utc("2026-03-08T07:00:00Z"), NY));
    }

    #[test]
    fn autumn_overlap_lengthens_the_night_without_flicker() {
        // 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z); 01:xx happens twice.
        let s = nightly("21:00", "07:00");
        let (start, end) = s.occurrence_at(utc("2026-11-01T05:30:00Z"), NY).unwrap();
        assert_eq!(end - start, TimeDelta::hours(11));
        // A window ending at 01:30 ends at the first 01:30 and does not come
        // back on during the repeated hour.
        let e = nightly("22:00", "01:30");
        assert!(e.is_active(utc("2026-11-01T05:29:00Z"), NY)); // 01:29 EDT
        assert!(!e.is_active(utc("2026-11-01T05:31:00Z"), NY)); // 01:31 EDT
        assert!(!e.is_active(utc("2026-11-01T06:10:00Z"), NY)); // 01:10 EST
                                                                // An ambiguous start takes its first occurrence.
        let a = nightly("01:30", "03:00");
        let (start, end) = a.occurrence_at(utc("2026-11-01T07:00:00Z"), NY).unwrap();
        assert_eq!(start, utc("2026-11-01T05:30:00Z"));
        assert_eq!(end, utc("2026-11-01T08:00:00Z"));
    }

    #[test]
    fn every_minute_of_a_dst_year_is_answered_without_panic() {
        let s = Schedule::from_json(&json!({"windows": [
            {"days": ["sun"], "start": "01:30", "end": "02:30"},
            {"days": ["sat", "sun"], "start": "23:00", "end": "24:00"},
            {"days": ["mon", "wed", "fri"], "start": "21:00", "end": "07:00"}]}))
        .unwrap();
        for tz in [
            NY,
            chrono_tz::Europe::London,
            chrono_tz::Australia::Lord_Howe,
        ] {
            let mut t = utc("2026-01-01T00:00:00Z");
            while t < utc("2027-01-01T00:00:00Z") {
                let _ = s.is_active(t, tz);
                t += TimeDelta::minutes(7);
            }
        }
    }

    #[test]
    fn days_select_the_start_day() {
        let s = Schedule::from_json(&json!({"windows": [
            {"days": ["fri"], "start": "22:00", "end": "06:00"}]}))
        .unwrap();
        let london = chrono_tz::Europe::London;
        // Fri 2026-07-03 22:30 BST = 21:30Z; Sat 05:00 BST = 04:00Z (still Friday's window).
        assert!(s.is_active(utc("2026-07-03T21:30:00Z"), london));
        assert!(s.is_active(utc("2026-07-04T04:00:00Z"), london));
        assert!(!s.is_active(utc("2026-07-04T21:30:00Z"), london));
    }

    #[test]
    fn refusals_are_clear() {
        let bad = |v: serde_json::Value| Schedule::from_json(&v).unwrap_err();
        assert_eq!(
            bad(json!({"windows": [{"days": ["xyz"], "start": "01:00", "end": "02:00"}]})),
            ScheduleError::Day("xyz".into())
        );
        assert_eq!(
            bad(json!({"windows": [{"days": ["mon"], "start": "25:00", "end": "02:00"}]})),
            ScheduleError::Time("25:00".into())
        );
        assert_eq!(
            bad(json!({"windows": [{"days": ["mon"], "start": "02:00", "end": "02:00"}]})),
            ScheduleError::Empty(0)
        );
        assert!(matches!(
            bad(json!({"windows": 3})),
            ScheduleError::Shape(_)
        ));
        assert!(parse_tz("Mars/Olympus").is_err());
        assert!(parse_tz("Europe/London").is_ok());
        let s = nightly("21:00", "24:00");
        assert_eq!(Schedule::from_json(&s.to_json()).unwrap(), s);
    }
}
