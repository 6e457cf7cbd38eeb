//! Durable storage behind one interface.
//!
//! The pipeline only sees [`Store`]; PostgreSQL ([`postgres::PgStore`]) is the
//! production implementation and SQLite ([`sqlite::SqliteStore`]) the
//! embedded one, behind the same trait. Everything one batch produces is committed in one
//! transaction, so an ack after [`Store::commit`] returns covers all of it;
//! the rules engine's alert changes and per-device state are written in the
//! same transaction (through a [`CommitHook`]), so a message is acked only
//! once everything it caused is durable.

pub mod postgres;
pub mod sql;
pub mod sqlite;

use std::collections::BTreeMap;
use std::future::Future;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alerts::{AlertEvent, AlertKind, AlertOp, OfficerAction};
use crate::directory::DirectoryEvent;
use crate::domain::{DeviceId, ItemKind, ItemRejection, MessageKey, RejectReason, Telemetry};
use crate::rules::engine::TimelineEntry;
use crate::rules::snapshot::RulesData;
use crate::scenario::{LoadReport, Scenario};

/// An enrolled device as the pipeline needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Internal key used by every time-series row.
    pub key: i64,
    /// Public id (topic segment).
    pub id: DeviceId,
    /// OwnTracks `(user, device)` this device also accepts, if any.
    pub owntracks: Option<(String, String)>,
    /// Revoked devices are refused as `device_revoked`.
    pub revoked: bool,
}

/// A message that passed decoding, enrollment and validation.
#[derive(Debug, Clone)]
pub struct AcceptedMessage {
    /// Internal device key.
    pub device_key: i64,
    /// Topic it arrived on (stored with item rejections).
    pub topic: String,
    /// Server receive time (from the injectable clock).
    pub received_at: DateTime<Utc>,
    /// Content digest; see [`crate::decode::WireMessage::digest`].
    pub digest: [u8; 16],
    /// The valid content.
    pub telemetry: Telemetry,
    /// Items refused inside it; stored only the first time the message is.
    pub item_rejections: Vec<ItemRejection>,
    /// The raw payload (shared, not copied); kept with a `seq_conflict`
    /// record so the two versions can be compared.
    pub payload: Bytes,
    /// False for a victim's device: its positions serve the proximity check
    /// only and are not stored as fixes.
    pub store_fixes: bool,
}

/// A whole message (or, for conflicts, a message's identity) refused.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Server receive time.
    pub received_at: DateTime<Utc>,
    /// Topic it arrived on.
    pub topic: String,
    /// Internal device key, when the device is known.
    pub device_key: Option<i64>,
    /// Device id as claimed by topic or payload (possibly invalid), capped.
    pub device_claim: Option<String>,
    /// Message key, when decoding got that far.
    pub key: Option<MessageKey>,
    /// Why.
    pub reason: RejectReason,
    /// Detail for people; never coordinates.
    pub detail: String,
    /// Raw payload (capped) for investigation; subject to retention.
    pub payload: Option<Bytes>,
}

/// Most bytes of a refused payload kept for investigation.
pub const MAX_STORED_PAYLOAD: usize = 4096;

impl Rejection {
    /// Caps the stored payload and claim so hostile input cannot bloat the table.
    pub fn capped(mut self) -> Self {
        if let Some(p) = &self.payload {
            if p.len() > MAX_STORED_PAYLOAD {
                self.payload = Some(p.slice(..MAX_STORED_PAYLOAD));
            }
        }
        if let Some(c) = &mut self.device_claim {
            let end = crate::decode::clip(c, 128).len();
            c.truncate(end);
        }
        self
    }
}

/// One unit of work for the store, in arrival order.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// Store it (unless it is a duplicate).
    Accepted(Box<AcceptedMessage>),
    /// Record the refusal.
    Rejected(Box<Rejection>),
}

/// What happened to one [`Prepared`] item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// New message; its valid content is stored.
    Stored,
    /// Same key and content already stored: nothing written.
    Duplicate,
    /// Same key, different content: recorded as `seq_conflict`.
    Conflict,
    /// A refusal was recorded.
    Rejected,
}

/// Result of committing one batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommitReport {
    /// One outcome per input item, same order.
    pub outcomes: Vec<Outcome>,
    /// Fix rows written.
    pub fixes_stored: u64,
    /// Rejection rows written, by reason (item and whole-message).
    pub rejections: BTreeMap<RejectReason, u64>,
    /// Alerts newly raised, by kind.
    pub alerts_raised: Vec<AlertKind>,
    /// Entries appended to the alert-event log.
    pub alert_events: u64,
}

/// Rules-engine output to commit with a batch.
#[derive(Debug, Clone, Default)]
pub struct AlertWrites {
    /// Server time of the evaluation (alerts' `raised_at`, events' `at`).
    pub now: DateTime<Utc>,
    /// Alert changes, in order.
    pub ops: Vec<AlertOp>,
    /// Per-device state rows to upsert.
    pub states: Vec<StateRow>,
    /// 'possible' observations for the device timeline.
    pub timeline: Vec<TimelineEntry>,
}

impl AlertWrites {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.states.is_empty() && self.timeline.is_empty()
    }
}

/// One device's persisted rules state.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRow {
    /// Device.
    pub device_key: i64,
    /// Monotonic per device.
    pub version: i64,
    /// Server time of the newest message.
    pub last_seen: Option<DateTime<Utc>>,
    /// The state document.
    pub state: serde_json::Value,
}

/// Runs inside a batch's transaction, after the store has found which
/// messages are new: rules are evaluated exactly once per message, even when
/// the broker redelivers it.
pub trait CommitHook: Send + Sync {
    /// Evaluates the new messages (in batch order) and returns what to write
    /// with them. May be called again for the same messages if the
    /// transaction fails and is retried; implementations keep their effects
    /// staged until told the commit succeeded.
    fn evaluate(&self, fresh: &[&AcceptedMessage]) -> AlertWrites;
}

/// A hook that evaluates nothing (benchmark baselines, tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRules;

impl CommitHook for NoRules {
    fn evaluate(&self, _fresh: &[&AcceptedMessage]) -> AlertWrites {
        AlertWrites::default()
    }
}

/// Filter for listing alerts.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// `open`, `acknowledged` or `resolved`.
    pub status: Option<String>,
    /// Only this kind.
    pub kind: Option<AlertKind>,
    /// Only this device.
    pub device_id: Option<String>,
    /// Most rows.
    pub limit: i64,
}

/// An alert as listed for officers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AlertRecord {
    /// Id.
    pub alert_id: i64,
    /// Device id.
    pub device_id: String,
    /// Supervisee case reference.
    pub case_ref: Option<String>,
    /// Kind.
    pub kind: String,
    /// Severity.
    pub severity: String,
    /// Confidence.
    pub confidence: String,
    /// Zone and version in force.
    pub zone_id: Option<i64>,
    /// Version of the zone when raised.
    pub zone_version: Option<i32>,
    /// Retrospective.
    pub late: bool,
    /// Officer status.
    pub status: String,
    /// Event time of first evidence.
    pub started_at: DateTime<Utc>,
    /// Server time raised.
    pub raised_at: DateTime<Utc>,
    /// Event time of last evidence.
    pub last_evidence_at: DateTime<Utc>,
    /// Evidence count.
    pub evidence_count: i32,
    /// When the condition ended.
    pub condition_ended_at: Option<DateTime<Utc>>,
    /// Plain words.
    pub explanation: String,
    /// Evidence rows kept.
    pub evidence: Vec<crate::alerts::Evidence>,
    /// Officer actions: (action, actor, at, outcome, note).
    pub actions: Vec<ActionRecord>,
}

/// One officer action on record.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ActionRecord {
    /// `acknowledge`, `resolve`, `note`.
    pub action: String,
    /// Who.
    pub actor: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Outcome (resolve).
    pub outcome: Option<String>,
    /// Note.
    pub note: Option<String>,
}

/// Raw fixes this close (in event time) to an alert's evidence are kept with
/// the alert: the officer's alert view draws the device's track from
/// `started_at` minus this to `last_evidence_at` plus this, and the decision
/// an officer made on that view must stay reviewable (docs/storage.md,
/// "Retention").
pub const EVIDENCE_MARGIN: chrono::TimeDelta = chrono::TimeDelta::minutes(30);

/// Rows one retention batch may delete: received before `before` (and, when
/// `after` is set, not before `after`: an earlier pass already went
/// through those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeWindow {
    /// Rows received at or after this were handled by an earlier pass.
    pub after: Option<DateTime<Utc>>,
    /// Rows received before this are past retention.
    pub before: DateTime<Utc>,
}

/// Rows a retention pass (or one batch of it) deleted, by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Raw fixes (`fixes`).
    pub fixes: u64,
    /// Refusals (`rejected_messages`).
    pub rejections: u64,
    /// De-duplication ledger rows (`messages`).
    pub messages: u64,
}

impl PurgeReport {
    /// Adds another batch's counts.
    pub fn add(&mut self, other: PurgeReport) {
        self.fixes += other.fixes;
        self.rejections += other.rejections;
        self.messages += other.messages;
    }

    /// Whether some table still had a full batch to delete (so another
    /// batch may find more).
    pub fn was_full(&self, batch: usize) -> bool {
        let b = batch as u64;
        self.fixes >= b || self.rejections >= b || self.messages >= b
    }
}

/// Storage errors, split by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable or asked us to retry (connection loss,
    /// shutdown, deadlock, serialization failure). Retry later; nothing is acked.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Another writer raced us on the same rows; retry.
    #[error("concurrent write: {0}")]
    Contended(String),
    /// The database refused the data itself. Retrying the same rows would
    /// fail again; the caller isolates the offending message.
    #[error("database refused the batch: {0}")]
    Refused(#[source] sqlx::Error),
    /// Schema migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// An admin operation named something that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An admin operation would violate uniqueness.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// An admin operation is not allowed (bad reference, bad transition).
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// Whether retrying the same operation later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Contended(_))
    }
}

/// The storage interface every backend implements.
pub trait Store: Clone + Send + Sync + 'static {
    /// Applies pending schema migrations.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Commits one batch atomically and reports each item's outcome;
    /// `hook` evaluates the new messages inside the transaction.
    fn commit(
        &self,
        batch: &[Prepared],
        hook: &dyn CommitHook,
    ) -> impl Future<Output = Result<CommitReport, StoreError>> + Send;

    /// Commits alert changes that no message caused (timers: no_signal).
    fn commit_alerts(
        &self,
        writes: &AlertWrites,
    ) -> impl Future<Output = Result<CommitReport, StoreError>> + Send;

    /// The persisted rules state of these devices.
    fn load_device_states(
        &self,
        device_keys: &[i64],
    ) -> impl Future<Output = Result<Vec<StateRow>, StoreError>> + Send;

    /// Newest message time of every device with state (for no_signal).
    fn last_seen_all(
        &self,
    ) -> impl Future<Output = Result<Vec<(i64, DateTime<Utc>)>, StoreError>> + Send;

    /// Device keys with an active (condition not ended) alert of `kind`.
    fn active_alert_devices(
        &self,
        kind: AlertKind,
    ) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send;

    /// Everything the rules snapshot is built from. Zone geometry is read
    /// only for zones not in `known` (zone, version): the caller already
    /// holds those prepared.
    fn load_rules(
        &self,
        known: &[(i64, i32)],
    ) -> impl Future<Output = Result<RulesData, StoreError>> + Send;

    /// Sends `()` whenever rules configuration may have changed (and after
    /// every reconnect), until cancelled.
    fn watch_rules(
        &self,
        tx: mpsc::Sender<()>,
        cancel: CancellationToken,
    ) -> impl Future<Output = ()> + Send;

    /// Loads a provisioning file in one transaction.
    fn apply_scenario(
        &self,
        scenario: &Scenario,
        actor: &str,
    ) -> impl Future<Output = Result<LoadReport, StoreError>> + Send;

    /// Alert-log entries after `after`, oldest first.
    fn alert_events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<AlertEvent>, StoreError>> + Send;

    /// The newest alert-log id (0 when empty).
    fn alert_event_head(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// How far `consumer` has got in the alert log.
    fn outbox_cursor(&self, consumer: &str)
        -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Records `consumer`'s progress.
    fn set_outbox_cursor(
        &self,
        consumer: &str,
        last_event_id: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Applies an officer's action (with its alert-log entry).
    fn alert_action(
        &self,
        alert_id: i64,
        actor: &str,
        action: &OfficerAction,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Lists alerts, most severe and newest first.
    fn alerts(
        &self,
        filter: &AlertFilter,
    ) -> impl Future<Output = Result<Vec<AlertRecord>, StoreError>> + Send;

    /// Every enrolled device (for the in-memory directory).
    fn devices(&self) -> impl Future<Output = Result<Vec<DeviceRecord>, StoreError>> + Send;

    /// One device by id, revoked or not.
    fn device(
        &self,
        id: &DeviceId,
    ) -> impl Future<Output = Result<Option<DeviceRecord>, StoreError>> + Send;

    /// One device by its OwnTracks pair.
    fn device_by_owntracks(
        &self,
        user: &str,
        device: &str,
    ) -> impl Future<Output = Result<Option<DeviceRecord>, StoreError>> + Send;

    /// Enrolls a device.
    fn add_device(
        &self,
        id: &DeviceId,
        owntracks: Option<(&str, &str)>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<DeviceRecord, StoreError>> + Send;

    /// Revokes a device: its later messages are refused.
    fn revoke_device(
        &self,
        id: &DeviceId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Streams enrollment changes into `tx` until cancelled (PostgreSQL:
    /// LISTEN/NOTIFY), sending [`DirectoryEvent::Resync`] after every
    /// (re)connect since notifications sent meanwhile are lost.
    fn watch_devices(
        &self,
        tx: mpsc::Sender<DirectoryEvent>,
        cancel: CancellationToken,
    ) -> impl Future<Output = ()> + Send;

    /// Deletes at most `batch` rows from each of `fixes`, `rejected_messages`
    /// and `messages` received inside `window`, each table in its own short
    /// transaction, and reports how many went. Fixes of an alert's device
    /// within [`EVIDENCE_MARGIN`] of its evidence are never deleted. The
    /// caller repeats while [`PurgeReport::was_full`], pausing between
    /// batches so ingest (on SQLite, the one writer) is never held up long.
    fn purge_expired(
        &self,
        window: PurgeWindow,
        batch: usize,
    ) -> impl Future<Output = Result<PurgeReport, StoreError>> + Send;

    /// Cheap reachability check for readiness.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The database the officer API ([`crate::api`]) and the CLI query,
    /// through the backend-neutral [`sql`] interface. PostgreSQL gives the
    /// API a pool of its own (heavy reads never starve ingest); SQLite
    /// shares its one writer.
    fn api_db(&self) -> sql::Db;
}

/// Item rejections and whole-message rejections share one table; this is the
/// row shape both become.
#[derive(Debug, Clone)]
pub(crate) struct RejectionRow {
    pub received_at: DateTime<Utc>,
    pub topic: String,
    pub device_key: Option<i64>,
    pub device_claim: Option<String>,
    pub key: Option<MessageKey>,
    pub item: Option<(ItemKind, u32)>,
    pub reason: RejectReason,
    pub detail: String,
    pub payload: Option<Bytes>,
}

impl RejectionRow {
    /// Identity of a refusal, so a redelivered message (same topic, same
    /// bytes) is recorded once, while a different message, even one with the
    /// same key (a second conflicting version), gets its own record.
    pub(crate) fn dedupe_key(&self) -> [u8; 16] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let field = |h: &mut Sha256, b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(&mut h, self.reason.as_str().as_bytes());
        field(&mut h, self.topic.as_bytes());
        h.update(self.device_key.unwrap_or(-1).to_le_bytes());
        if let Some(k) = self.key {
            h.update(k.boot.to_le_bytes());
            h.update(k.seq.to_le_bytes());
        }
        if let Some((kind, i)) = self.item {
            field(&mut h, kind.as_str().as_bytes());
            h.update(i.to_le_bytes());
        }
        field(&mut h, self.payload.as_deref().unwrap_or_default());
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize()[..16]);
        out
    }

    pub(crate) fn whole(r: &Rejection) -> Self {
        Self {
            received_at: r.received_at,
            topic: r.topic.clone(),
            device_key: r.device_key,
            device_claim: r.device_claim.clone(),
            key: r.key,
            item: None,
            reason: r.reason,
            detail: r.detail.clone(),
            payload: r.payload.clone(),
        }
    }

    /// A row about an accepted message (one of its items, or the message).
    fn about(
        m: &AcceptedMessage,
        item: Option<(ItemKind, u32)>,
        reason: RejectReason,
        detail: String,
        payload: Option<Bytes>,
    ) -> Self {
        Self {
            received_at: m.received_at,
            topic: m.topic.clone(),
            device_key: Some(m.device_key),
            device_claim: Some(m.telemetry.device.to_string()),
            key: Some(m.telemetry.key),
            item,
            reason,
            detail,
            payload,
        }
    }

    pub(crate) fn item(m: &AcceptedMessage, i: &ItemRejection) -> Self {
        Self::about(m, Some((i.kind, i.index)), i.reason, i.detail.clone(), None)
    }

    pub(crate) fn conflict(m: &AcceptedMessage, detail: &str) -> Self {
        let payload = m.payload.slice(..m.payload.len().min(MAX_STORED_PAYLOAD));
        Self::about(
            m,
            None,
            RejectReason::SeqConflict,
            detail.to_owned(),
            Some(payload),
        )
    }
}
