//! Alerts: what needs a supervision officer's attention, and their lifecycle.
//!
//! An alert is a prompt for a person to decide (call, visit, adjust the
//! plan). Nothing here acts on the person supervised: the only transitions
//! are the condition's own (raised, updated with evidence, condition ended)
//! and an officer's (acknowledge, resolve with an outcome and a note, note).
//!
//! Every change is written, in the same transaction, to the alert-event log
//! (`alert_events`); [`outbox`] publishes that log on MQTT and to live views
//! in commit order.

pub mod outbox;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What kind of situation an alert describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Entered a zone the person must stay out of.
    ExclusionZoneEntry,
    /// Left a zone the person must stay in.
    InclusionZoneExit,
    /// Away from home (zone and beacon) during a curfew window.
    CurfewViolation,
    /// The device reported its strap (or case) opened.
    StrapTamper,
    /// The device reported losing skin contact. Reserved: protocol v1 has no
    /// such report yet.
    BodyContactLost,
    /// Battery at or below the low threshold.
    BatteryLow,
    /// Battery at or below the critical threshold.
    BatteryCritical,
    /// No message for a multiple of the device's reporting interval.
    NoSignal,
    /// Messages arrive, but without a usable position, for too long.
    GpsLoss,
    /// A paired victim's device is within the enter distance.
    VictimProximity,
}

impl AlertKind {
    /// Every kind, in a stable order.
    pub const ALL: [AlertKind; 10] = [
        Self::ExclusionZoneEntry,
        Self::InclusionZoneExit,
        Self::CurfewViolation,
        Self::StrapTamper,
        Self::BodyContactLost,
        Self::BatteryLow,
        Self::BatteryCritical,
        Self::NoSignal,
        Self::GpsLoss,
        Self::VictimProximity,
    ];

    /// Stable wire/database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExclusionZoneEntry => "exclusion_zone_entry",
            Self::InclusionZoneExit => "inclusion_zone_exit",
            Self::CurfewViolation => "curfew_violation",
            Self::StrapTamper => "strap_tamper",
            Self::BodyContactLost => "body_contact_lost",
            Self::BatteryLow => "battery_low",
            Self::BatteryCritical => "battery_critical",
            Self::NoSignal => "no_signal",
            Self::GpsLoss => "gps_loss",
            Self::VictimProximity => "victim_proximity",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Default severity; deployments override it with `--severity kind=level`.
    pub fn default_severity(self) -> Severity {
        match self {
            Self::VictimProximity | Self::StrapTamper | Self::ExclusionZoneEntry => {
                Severity::Critical
            }
            Self::InclusionZoneExit | Self::CurfewViolation | Self::BodyContactLost => {
                Severity::High
            }
            Self::NoSignal | Self::BatteryCritical | Self::GpsLoss => Severity::Medium,
            Self::BatteryLow => Severity::Low,
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Orders officers' queues; `Critical` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Possible danger to someone: act now.
    Critical,
    /// A condition of supervision is being broken.
    High,
    /// Monitoring is impaired.
    Medium,
    /// Equipment care.
    Low,
}

impl Severity {
    /// Stable wire/database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Medium => "medium",
            Self::Low => "low",
        }
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "critical" => Self::Critical,
            "high" => Self::High,
            "medium" => Self::Medium,
            "low" => Self::Low,
            _ => return Err(format!("unknown severity {s:?} (critical|high|medium|low)")),
        })
    }
}

/// Severity per kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Severities([Severity; AlertKind::ALL.len()]);

impl Default for Severities {
    fn default() -> Self {
        Self(AlertKind::ALL.map(AlertKind::default_severity))
    }
}

impl Severities {
    /// The severity of `kind`.
    pub fn of(&self, kind: AlertKind) -> Severity {
        self.0[kind as usize]
    }

    /// Applies an override written `kind=level`.
    pub fn set(&mut self, spec: &str) -> Result<(), String> {
        let (k, v) = spec
            .split_once('=')
            .ok_or_else(|| format!("expected kind=level, got {spec:?}"))?;
        let kind = AlertKind::parse(k).ok_or_else(|| format!("unknown alert kind {k:?}"))?;
        self.0[kind as usize] = v.parse()?;
        Ok(())
    }
}

/// How sure the evidence is, given the fixes' accuracy radius.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// The whole accuracy disc is in violation (or the device reported it).
    Confirmed,
    /// The point is in violation; the disc crosses the boundary.
    Probable,
    /// Only part of the disc is in violation.
    Possible,
}

impl Confidence {
    /// Stable wire/database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Probable => "probable",
            Self::Possible => "possible",
        }
    }
}

/// What an officer concluded when resolving an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolutionOutcome {
    /// Spoke to the person; situation explained or addressed.
    ContactedSupervisee,
    /// The equipment was at fault.
    EquipmentFault,
    /// Position noise, not a real movement.
    GpsFalseAlarm,
    /// The absence had been approved.
    ApprovedAbsence,
    /// Passed on for a careful review; no decision taken here.
    ReferredForReview,
    /// Looked at; nothing needed.
    NoActionNeeded,
}

impl ResolutionOutcome {
    /// Every outcome.
    pub const ALL: [ResolutionOutcome; 6] = [
        Self::ContactedSupervisee,
        Self::EquipmentFault,
        Self::GpsFalseAlarm,
        Self::ApprovedAbsence,
        Self::ReferredForReview,
        Self::NoActionNeeded,
    ];

    /// Stable wire/database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContactedSupervisee => "contacted_supervisee",
            Self::EquipmentFault => "equipment_fault",
            Self::GpsFalseAlarm => "gps_false_alarm",
            Self::ApprovedAbsence => "approved_absence",
            Self::ReferredForReview => "referred_for_review",
            Self::NoActionNeeded => "no_action_needed",
        }
    }
}

impl FromStr for ResolutionOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|o| o.as_str()).collect();
                format!("unknown outcome {s:?}; one of {}", names.join(", "))
            })
    }
}

/// The identity of an active condition: at most one open-condition alert
/// per key (enforced by a unique index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AlertKey {
    /// Device whose data showed it.
    pub device_key: i64,
    /// Kind.
    pub kind: AlertKind,
    /// Zone, for zone and curfew alerts.
    pub zone_id: Option<i64>,
    /// Victim pairing, for proximity alerts.
    pub pairing_id: Option<i64>,
}

impl AlertKey {
    /// The key of a device-level condition (tamper, battery, signal).
    pub fn device(device_key: i64, kind: AlertKind) -> Self {
        Self {
            device_key,
            kind,
            zone_id: None,
            pairing_id: None,
        }
    }
}

/// One piece of evidence copied into the alert (raw fixes age out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Event time (the fix's or report's own timestamp).
    pub at: DateTime<Utc>,
    /// Position, when the evidence is a fix.
    pub lat: Option<f64>,
    /// Position, when the evidence is a fix.
    pub lon: Option<f64>,
    /// Accuracy radius in metres.
    pub acc_m: Option<f32>,
    /// `confirmed`/`probable`/`possible`, or the device report's name
    /// (borrowed in the hot path, owned once read back).
    pub observation: std::borrow::Cow<'static, str>,
    /// Metres to the zone boundary (or to the victim, for proximity).
    pub distance_m: Option<f32>,
    /// Short detail for people.
    pub detail: Option<String>,
}

/// A new alert as the rules engine raises it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    /// Identity.
    pub key: AlertKey,
    /// Who wore the device at the evidence's time.
    pub supervisee_id: Option<i64>,
    /// Queue order.
    pub severity: Severity,
    /// Zone version in force.
    pub zone_version: Option<i32>,
    /// Rule that fired, if any.
    pub rule_id: Option<i64>,
    /// Strength of the evidence.
    pub confidence: Confidence,
    /// Raised from a fix older than the newest evaluated one.
    pub late: bool,
    /// Event time of the first evidence.
    pub started_at: DateTime<Utc>,
    /// Event time of the last evidence.
    pub last_evidence_at: DateTime<Utc>,
    /// Set for late alerts: a record of a past, finished episode.
    pub ended_at: Option<DateTime<Utc>>,
    /// Plain words, e.g. "Entered exclusion zone 'Victim residence' at 21:14 ...".
    pub explanation: String,
    /// Structured detail for the API (distances, thresholds).
    pub details: serde_json::Value,
    /// Evidence copied into the alert.
    pub evidence: Vec<Evidence>,
}

/// Most evidence rows one alert keeps; later evidence only counts.
pub const MAX_EVIDENCE: usize = 20;

/// A change the rules engine wants committed with the telemetry.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertOp {
    /// The condition started (or, late, happened in the past).
    Raise(Box<NewAlert>),
    /// The condition persists: count it, keep the evidence (while under the cap).
    Evidence {
        /// Which active alert.
        key: AlertKey,
        /// Event time.
        at: DateTime<Utc>,
        /// A copy to keep, if any.
        evidence: Option<Evidence>,
    },
    /// The condition ended at `at`; the alert stays open for the officer.
    End {
        /// Which active alert.
        key: AlertKey,
        /// Event time the condition ended.
        at: DateTime<Utc>,
        /// Why, in plain words.
        reason: String,
    },
}

/// An officer's action on an alert.
#[derive(Debug, Clone, PartialEq)]
pub enum OfficerAction {
    /// Seen; being handled.
    Acknowledge,
    /// Decided, with an outcome and a mandatory note.
    Resolve {
        /// Conclusion.
        outcome: ResolutionOutcome,
        /// Why; required.
        note: String,
    },
    /// A note without a state change.
    Note(String),
}

/// Why an officer action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// Resolving needs a note that says why.
    #[error("a note is required")]
    NoteRequired,
    /// Notes are capped.
    #[error("note longer than 10000 characters")]
    NoteTooLong,
    /// The actor must be named.
    #[error("actor must be 1..=128 characters")]
    Actor,
    /// No such alert.
    #[error("no alert {0}")]
    NotFound(i64),
    /// The transition is not allowed from the alert's status.
    #[error("alert {id} is {status}; cannot {action}")]
    InvalidTransition {
        /// Alert id.
        id: i64,
        /// Current status.
        status: String,
        /// What was asked.
        action: &'static str,
    },
}

impl OfficerAction {
    /// Checks the parts that do not need the database.
    pub fn validate(&self, actor: &str) -> Result<(), ActionError> {
        if actor.trim().is_empty() || actor.chars().count() > 128 {
            return Err(ActionError::Actor);
        }
        let note = match self {
            Self::Acknowledge => return Ok(()),
            Self::Resolve { note, .. } | Self::Note(note) => note,
        };
        if note.trim().is_empty() {
            return Err(ActionError::NoteRequired);
        }
        if note.chars().count() > 10_000 {
            return Err(ActionError::NoteTooLong);
        }
        Ok(())
    }

    /// Database name of the action.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Acknowledge => "acknowledge",
            Self::Resolve { .. } => "resolve",
            Self::Note(_) => "note",
        }
    }
}

/// One entry of the alert-event log, as consumers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Position in the log; consumers resume after the last one they saw.
    pub event_id: i64,
    /// The alert.
    pub alert_id: i64,
    /// `raised`, `updated`, `condition_ended`, `acknowledged`, `resolved`, `note`,
    /// `escalated`.
    pub event_type: String,
    /// Server time of the change.
    pub at: DateTime<Utc>,
    /// Device id (topic segment).
    pub device_id: String,
    /// The alert as it stood after the change.
    pub alert: serde_json::Value,
    /// Who may see it now: the supervisee's officer and that officer's
    /// team (read with the entry; used by the live stream, never sent).
    #[serde(skip)]
    pub audience: Audience,
}

/// The officer responsible for an alert's supervisee, and their team.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    /// Officer reference.
    pub officer_ref: Option<String>,
    /// That officer's team.
    pub team_id: Option<i64>,
    /// The supervisee's case reference, as live views label the alert.
    pub case_ref: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_severities_override() {
        for k in AlertKind::ALL {
            assert_eq!(AlertKind::parse(k.as_str()), Some(k));
            assert_eq!(AlertKind::ALL[k as usize], k);
        }
        let mut s = Severities::default();
        assert_eq!(s.of(AlertKind::StrapTamper), Severity::Critical);
        s.set("battery_low=medium").unwrap();
        assert_eq!(s.of(AlertKind::BatteryLow), Severity::Medium);
        assert!(s.set("nonsense=low").is_err());
        assert!(s.set("battery_low=urgent").is_err());
        assert!(s.set("battery_low").is_err());
    }

    #[test]
    fn officer_actions_need_actor_and_note() {
        let resolve = |note: &str| OfficerAction::Resolve {
            outcome: ResolutionOutcome::GpsFalseAlarm,
            note: note.into(),
        };
        assert_eq!(
            resolve(" ").validate("pc-1"),
            Err(ActionError::NoteRequired)
        );
        assert_eq!(resolve("ok").validate(""), Err(ActionError::Actor));
        assert!(resolve("drift near the boundary").validate("pc-1").is_ok());
        assert!(OfficerAction::Acknowledge.validate("pc-1").is_ok());
        assert!("gps_false_alarm".parse::<ResolutionOutcome>().is_ok());
        assert!("sanction".parse::<ResolutionOutcome>().is_err());
    }
}
