-- Waypoint schema for the embedded mode: everything in one SQLite file.
--
-- Equivalent to the FINAL state of migrations/postgres/0001..0005: same
-- tables, column names, CHECKs, UNIQUEs and foreign keys. What differs, and
-- why:
--
-- * Types. Identity -> INTEGER PRIMARY KEY, with AUTOINCREMENT wherever an id
--   leaves the database (devices, alerts, alert log, tokens, audit, ...), so
--   an id is never handed out twice even after retention deletes the newest
--   row. jsonb -> TEXT holding JSON (CHECK json_valid), bytea -> BLOB,
--   boolean -> INTEGER 0/1, real/double precision -> REAL.
-- * Times are TEXT in the form sqlx writes chrono DateTime<Utc>
--   (RFC 3339, "+00:00", 0/3/6/9 fraction digits), which sorts correctly as
--   text for UTC values. Bind every time from Rust: SQLite's datetime('now')
--   writes "YYYY-MM-DD HH:MM:SS", which does NOT compare correctly with it.
--   The few DEFAULTs kept (for inserts that omit the column, as PostgreSQL's
--   DEFAULT now() allows) use strftime in the same RFC 3339 shape.
-- * NULLS NOT DISTINCT uniques (rules, rule_exceptions, alerts_one_active)
--   are unique indexes over ifnull(column, sentinel): SQLite treats NULLs as
--   distinct in UNIQUE. Ids are >= 1, so -1 cannot collide.
-- * The device_assignments exclusion constraint (no overlapping ranges per
--   device) is a pair of BEFORE INSERT/UPDATE triggers that abort with
--   'assignment_overlap'. Ranges are [valid_from, valid_to), NULL = open,
--   like tstzrange's default bounds.
-- * audit_log's append-only trigger becomes BEFORE UPDATE/DELETE triggers
--   (SQLite has no TRUNCATE; DELETE without WHERE still fires them).
-- * No LISTEN/NOTIFY. Instead, the one-row config_version table is bumped by
--   triggers on every table the rules snapshot is built from (rules_version)
--   and on devices (devices_version and rules_version, as PostgreSQL notifies
--   'waypoint_rules' for devices too). Servers poll it: one indexed read
--   tells them whether to reload.
-- * The alert log's ids come from AUTOINCREMENT, not alert_event_counter:
--   SQLite runs one write transaction at a time for the whole file, so ids
--   are assigned in commit order and a reader that has seen id N has seen
--   every id below N — the property the counter row buys in PostgreSQL.
--   There is no alert_events NOTIFY either; live views use their poll.
-- * fixes is a WITHOUT ROWID table clustered on its key (device, time, ...),
--   which gives track reads the locality PostgreSQL gets from the key's
--   INCLUDE columns. BRIN indexes become plain B-tree indexes.
-- * TimescaleDB parts (hypertable, compression, retention policy) are dropped.
-- * Data-migration steps (officers created from supervisees.officer_ref) are
--   not needed for a fresh file.

CREATE TABLE devices (
    device_key        INTEGER PRIMARY KEY AUTOINCREMENT,
    -- No regex in SQLite: first char alphanumeric, the rest from [A-Za-z0-9._-],
    -- 1..64 chars; same set as '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'.
    device_id         TEXT NOT NULL UNIQUE
                      CHECK (length(device_id) BETWEEN 1 AND 64
                             AND device_id GLOB '[A-Za-z0-9]*'
                             AND NOT device_id GLOB '*[^A-Za-z0-9._-]*'),
    -- OwnTracks apps publish on owntracks/{user}/{device}; both or neither.
    owntracks_user    TEXT,
    owntracks_device  TEXT,
    enrolled_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    revoked_at        TEXT,
    -- How often a device is expected to report; no_signal is a multiple of it.
    report_interval_s INTEGER NOT NULL DEFAULT 60
                      CHECK (report_interval_s BETWEEN 1 AND 86400),
    CHECK ((owntracks_user IS NULL) = (owntracks_device IS NULL)),
    UNIQUE (owntracks_user, owntracks_device)
);

-- Ledger of every accepted message: de-duplication on (device, boot, seq)
-- and the digest that tells a redelivery from a seq_conflict.
CREATE TABLE messages (
    device_key  INTEGER NOT NULL,
    boot        INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    digest      BLOB NOT NULL,
    received_at TEXT NOT NULL,
    fix_count   INTEGER NOT NULL,
    PRIMARY KEY (device_key, boot, seq)
) WITHOUT ROWID;
CREATE INDEX messages_received_at ON messages (received_at);

-- Time series of positions, clustered by (device, time). No foreign key, as
-- in PostgreSQL: bulk ingest avoids them.
CREATE TABLE fixes (
    device_key  INTEGER NOT NULL,
    fix_time    TEXT NOT NULL,
    boot        INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    idx         INTEGER NOT NULL,
    received_at TEXT NOT NULL,
    lat         REAL NOT NULL,
    lon         REAL NOT NULL,
    acc_m       REAL NOT NULL,
    alt_m       REAL,
    speed_mps   REAL,
    heading_deg REAL,
    src         TEXT NOT NULL,
    PRIMARY KEY (device_key, fix_time, boot, seq, idx)
) WITHOUT ROWID;
-- Retention deletes by receive time.
CREATE INDEX fixes_received_at ON fixes (received_at);

CREATE TABLE device_events (
    device_key  INTEGER NOT NULL,
    event_time  TEXT NOT NULL,
    boot        INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    idx         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (device_key, event_time, boot, seq, idx)
) WITHOUT ROWID;

-- Latest status block per device; (boot, seq) guards against an older
-- redelivered message overwriting a newer status.
CREATE TABLE device_status (
    device_key  INTEGER PRIMARY KEY REFERENCES devices (device_key),
    boot        INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    received_at TEXT NOT NULL,
    battery_pct INTEGER,
    charging    INTEGER CHECK (charging IN (0, 1)),
    strap       TEXT,
    beacon      INTEGER CHECK (beacon IN (0, 1)),
    rssi_dbm    INTEGER,
    firmware    TEXT
);

-- Everything refused, with a reason. Holds raw payloads (which may contain
-- positions), so it has its own, shorter retention.
CREATE TABLE rejected_messages (
    id           INTEGER PRIMARY KEY,
    received_at  TEXT NOT NULL,
    topic        TEXT NOT NULL,
    device_key   INTEGER,
    device_claim TEXT,
    boot         INTEGER,
    seq          INTEGER,
    item_kind    TEXT,
    item_index   INTEGER,
    reason       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    payload      BLOB,
    -- Identity of the refusal (see RejectionRow::dedupe_key) so a redelivered
    -- message is recorded once.
    dedupe_key   BLOB NOT NULL UNIQUE
);
CREATE INDEX rejected_messages_received_at ON rejected_messages (received_at);
CREATE INDEX rejected_messages_reason ON rejected_messages (reason, received_at);

-- Officer API tables come before the rules tables that reference them.
CREATE TABLE teams (
    team_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    team_ref      TEXT NOT NULL UNIQUE CHECK (length(team_ref) BETWEEN 1 AND 128),
    name          TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- Receives escalations of the team's unacknowledged alerts. SQLite checks
    -- foreign keys at write time, so the forward reference is fine.
    supervisor_id INTEGER REFERENCES officers (officer_id)
);

CREATE TABLE officers (
    officer_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The agency's staff reference; supervisees.officer_ref points at it.
    officer_ref  TEXT NOT NULL UNIQUE CHECK (length(officer_ref) BETWEEN 1 AND 128),
    display_name TEXT NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    team_id      INTEGER REFERENCES teams (team_id),
    active       INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);
CREATE INDEX officers_team ON officers (team_id);

CREATE TABLE supervisees (
    supervisee_id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The agency's case reference; stable key for provisioning files.
    case_ref      TEXT NOT NULL UNIQUE CHECK (length(case_ref) BETWEEN 1 AND 128),
    display_name  TEXT,
    -- IANA zone name; schedules are evaluated in it.
    time_zone     TEXT NOT NULL,
    -- Responsible officer.
    officer_ref   TEXT REFERENCES officers (officer_ref) ON UPDATE CASCADE,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);
-- Caseload lookups (every officer request) go through this.
CREATE INDEX supervisees_officer ON supervisees (officer_ref);

CREATE TABLE zones (
    zone_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    zone_ref        TEXT NOT NULL UNIQUE CHECK (length(zone_ref) BETWEEN 1 AND 128),
    name            TEXT NOT NULL,
    -- Shared list this zone belongs to (e.g. 'schools').
    list_ref        TEXT,
    current_version INTEGER NOT NULL DEFAULT 1,
    retired_at      TEXT
);
CREATE INDEX zones_list ON zones (list_ref) WHERE list_ref IS NOT NULL;

-- Every geometry a zone ever had; alerts point at the version in force.
CREATE TABLE zone_versions (
    zone_id    INTEGER NOT NULL REFERENCES zones (zone_id),
    version    INTEGER NOT NULL,
    geojson    TEXT NOT NULL CHECK (json_valid(geojson)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    created_by TEXT NOT NULL,
    PRIMARY KEY (zone_id, version)
);

CREATE TABLE device_assignments (
    assignment_id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_key    INTEGER NOT NULL REFERENCES devices (device_key),
    supervisee_id INTEGER NOT NULL REFERENCES supervisees (supervisee_id),
    valid_from    TEXT NOT NULL,
    valid_to      TEXT,
    CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE INDEX device_assignments_device ON device_assignments (device_key, valid_from);
-- Track and position reads find a person's devices by supervisee.
CREATE INDEX device_assignments_supervisee ON device_assignments (supervisee_id, valid_from);

-- A device is worn by one person at a time: [from, to) ranges of one device
-- must not overlap (PostgreSQL: EXCLUDE USING gist). The message starts with
-- 'assignment_overlap' so callers can tell it from other aborts.
CREATE TRIGGER device_assignments_no_overlap_insert
BEFORE INSERT ON device_assignments
WHEN EXISTS (
    SELECT 1 FROM device_assignments a
    WHERE a.device_key = NEW.device_key
      AND (a.valid_to IS NULL OR NEW.valid_from < a.valid_to)
      AND (NEW.valid_to IS NULL OR a.valid_from < NEW.valid_to)
)
BEGIN
    SELECT RAISE(ABORT, 'assignment_overlap: device already assigned in this period');
END;

CREATE TRIGGER device_assignments_no_overlap_update
BEFORE UPDATE OF device_key, valid_from, valid_to ON device_assignments
WHEN EXISTS (
    SELECT 1 FROM device_assignments a
    WHERE a.device_key = NEW.device_key
      AND a.assignment_id <> OLD.assignment_id
      AND (a.valid_to IS NULL OR NEW.valid_from < a.valid_to)
      AND (NEW.valid_to IS NULL OR a.valid_from < NEW.valid_to)
)
BEGIN
    SELECT RAISE(ABORT, 'assignment_overlap: device already assigned in this period');
END;

CREATE TABLE rules (
    rule_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    supervisee_id INTEGER NOT NULL REFERENCES supervisees (supervisee_id),
    role          TEXT NOT NULL CHECK (role IN ('inclusion', 'exclusion', 'home')),
    -- One zone, or (exclusion only) a shared list.
    zone_id       INTEGER REFERENCES zones (zone_id),
    list_ref      TEXT,
    -- NULL: always; else {"windows": [{"days": [...], "start": "HH:MM", "end": "HH:MM"}]}
    -- in the supervisee's time zone.
    schedule      TEXT CHECK (schedule IS NULL OR json_valid(schedule)),
    confirm_fixes INTEGER NOT NULL DEFAULT 2 CHECK (confirm_fixes BETWEEN 1 AND 100),
    grace_s       INTEGER NOT NULL DEFAULT 60 CHECK (grace_s BETWEEN 0 AND 86400),
    retired_at    TEXT,
    -- Compliance progress counts a curfew night only while its home rule was
    -- in force.
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    CHECK ((zone_id IS NULL) <> (list_ref IS NULL)),
    CHECK (list_ref IS NULL OR role = 'exclusion')
);
-- UNIQUE NULLS NOT DISTINCT (supervisee_id, role, zone_id, list_ref).
CREATE UNIQUE INDEX rules_unique
    ON rules (supervisee_id, role, ifnull(zone_id, -1), ifnull(list_ref, char(0)));

-- Approved absences: suspend one rule (or all of a supervisee's rules).
-- Cancelled, never deleted.
CREATE TABLE rule_exceptions (
    exception_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    supervisee_id INTEGER NOT NULL REFERENCES supervisees (supervisee_id),
    rule_id       INTEGER REFERENCES rules (rule_id),
    starts_at     TEXT NOT NULL,
    ends_at       TEXT NOT NULL,
    reason        TEXT NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    created_by    TEXT NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    cancelled_at  TEXT,
    cancelled_by  TEXT,
    CHECK (ends_at > starts_at)
);
-- UNIQUE NULLS NOT DISTINCT (supervisee_id, rule_id, starts_at, ends_at).
CREATE UNIQUE INDEX rule_exceptions_unique
    ON rule_exceptions (supervisee_id, ifnull(rule_id, -1), starts_at, ends_at);

-- A victim's device paired with a supervisee. Its positions are used for
-- the proximity check only and are never stored as fixes.
CREATE TABLE victim_pairings (
    pairing_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    victim_device_key INTEGER NOT NULL REFERENCES devices (device_key),
    supervisee_id     INTEGER NOT NULL REFERENCES supervisees (supervisee_id),
    enter_m           REAL NOT NULL CHECK (enter_m > 0),
    exit_m            REAL NOT NULL,
    ended_at          TEXT,
    CHECK (exit_m >= enter_m),
    UNIQUE (victim_device_key, supervisee_id)
);

-- Per-device rules state, written with the telemetry that changed it so a
-- restart resumes exactly. `version` lets a second writer notice that
-- another moved a device on.
CREATE TABLE device_state (
    device_key INTEGER PRIMARY KEY,
    version    INTEGER NOT NULL,
    last_seen  TEXT,
    state      TEXT NOT NULL CHECK (json_valid(state))
);

CREATE TABLE alerts (
    alert_id           INTEGER PRIMARY KEY AUTOINCREMENT,
    device_key         INTEGER NOT NULL,
    supervisee_id      INTEGER,
    kind               TEXT NOT NULL,
    severity           TEXT NOT NULL CHECK (severity IN ('critical', 'high', 'medium', 'low')),
    zone_id            INTEGER,
    zone_version       INTEGER,
    pairing_id         INTEGER,
    rule_id            INTEGER,
    confidence         TEXT NOT NULL CHECK (confidence IN ('confirmed', 'probable', 'possible')),
    -- Raised from a fix older than the newest evaluated one.
    late               INTEGER NOT NULL DEFAULT 0 CHECK (late IN (0, 1)),
    -- Event time of the first evidence, and server time of raising.
    started_at         TEXT NOT NULL,
    raised_at          TEXT NOT NULL,
    last_evidence_at   TEXT NOT NULL,
    evidence_count     INTEGER NOT NULL DEFAULT 1,
    -- Set when the condition ends; the alert stays open for the officer.
    condition_ended_at TEXT,
    explanation        TEXT NOT NULL,
    details            TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(details)),
    status             TEXT NOT NULL DEFAULT 'open'
                       CHECK (status IN ('open', 'acknowledged', 'resolved')),
    acknowledged_at    TEXT,
    acknowledged_by    TEXT,
    resolved_at        TEXT,
    resolved_by        TEXT,
    outcome            TEXT,
    resolution_note    TEXT,
    escalated_at       TEXT,
    CHECK (status <> 'resolved' OR (outcome IS NOT NULL AND resolution_note IS NOT NULL))
);
-- At most one alert per (device, kind, zone, pairing) while its condition
-- persists; NULL zone/pairing count as equal, so tamper alerts are covered.
CREATE UNIQUE INDEX alerts_one_active
    ON alerts (device_key, kind, ifnull(zone_id, -1), ifnull(pairing_id, -1))
    WHERE condition_ended_at IS NULL;
CREATE INDEX alerts_queue ON alerts (status, severity, raised_at DESC);
-- Alert lists page by (raised_at, alert_id) within a caseload.
CREATE INDEX alerts_supervisee_page ON alerts (supervisee_id, raised_at DESC, alert_id DESC);

-- Copies of the fixes that triggered an alert: raw fixes age out with
-- retention, evidence stays with the alert.
CREATE TABLE alert_evidence (
    alert_id    INTEGER NOT NULL REFERENCES alerts (alert_id),
    ord         INTEGER NOT NULL,
    fix_time    TEXT NOT NULL,
    lat         REAL,
    lon         REAL,
    acc_m       REAL,
    -- confirmed/probable/possible or a device report ('strap_open', ...)
    observation TEXT NOT NULL,
    boundary_m  REAL,
    detail      TEXT,
    PRIMARY KEY (alert_id, ord)
) WITHOUT ROWID;

-- Officers' decisions, one row per action, never updated.
CREATE TABLE alert_actions (
    action_id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id  INTEGER NOT NULL REFERENCES alerts (alert_id),
    action    TEXT NOT NULL CHECK (action IN ('acknowledge', 'resolve', 'note')),
    actor     TEXT NOT NULL CHECK (length(actor) BETWEEN 1 AND 128),
    at        TEXT NOT NULL,
    outcome   TEXT,
    note      TEXT CHECK (note IS NULL OR length(note) <= 10000)
);
CREATE INDEX alert_actions_alert ON alert_actions (alert_id, action_id);

-- The alert-event log (outbox): every alert change, in commit order (see the
-- header for why AUTOINCREMENT is enough here).
CREATE TABLE alert_events (
    event_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id   INTEGER NOT NULL REFERENCES alerts (alert_id),
    event_type TEXT NOT NULL,
    at         TEXT NOT NULL,
    payload    TEXT NOT NULL CHECK (json_valid(payload))
);

-- How far each consumer of the log (e.g. the MQTT publisher) has got.
CREATE TABLE outbox_cursors (
    consumer      TEXT PRIMARY KEY,
    last_event_id INTEGER NOT NULL
);

-- 'possible' observations kept on the device's timeline.
CREATE TABLE device_timeline (
    device_key INTEGER NOT NULL,
    at         TEXT NOT NULL,
    kind       TEXT NOT NULL,
    zone_id    INTEGER,
    detail     TEXT NOT NULL
);
CREATE INDEX device_timeline_device ON device_timeline (device_key, at);

-- Bearer tokens. Only a SHA-256 of the secret is kept.
CREATE TABLE api_tokens (
    token_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    secret_hash BLOB NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    role        TEXT NOT NULL CHECK (role IN ('officer', 'supervisor', 'admin', 'auditor')),
    officer_id  INTEGER REFERENCES officers (officer_id),
    label       TEXT CHECK (label IS NULL OR length(label) <= 200),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    expires_at  TEXT,
    revoked_at  TEXT,
    CHECK (role NOT IN ('officer', 'supervisor') OR officer_id IS NOT NULL)
);

-- Single-use stream tickets (EventSource cannot send an Authorization header).
CREATE TABLE stream_tickets (
    ticket_hash BLOB PRIMARY KEY CHECK (length(ticket_hash) = 32),
    token_id    INTEGER NOT NULL REFERENCES api_tokens (token_id),
    expires_at  TEXT NOT NULL,
    used_at     TEXT
);

-- Browser sessions: a bearer token exchanged once for an HttpOnly cookie.
CREATE TABLE api_sessions (
    session_hash BLOB PRIMARY KEY CHECK (length(session_hash) = 32),
    token_id     INTEGER NOT NULL REFERENCES api_tokens (token_id),
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    ended_at     TEXT
);
CREATE INDEX api_sessions_expiry ON api_sessions (expires_at);

-- Every read of location data and every decision about an alert. Rows are
-- never changed or removed by the application (enforced below).
CREATE TABLE audit_log (
    audit_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    token_id      INTEGER,
    actor         TEXT NOT NULL,
    role          TEXT NOT NULL,
    action        TEXT NOT NULL,
    supervisee_id INTEGER,
    alert_id      INTEGER,
    -- The optional X-Audit-Reason header: why the caller looked.
    reason        TEXT CHECK (reason IS NULL OR length(reason) <= 500),
    detail        TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail))
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_supervisee ON audit_log (supervisee_id, at) WHERE supervisee_id IS NOT NULL;
CREATE INDEX audit_log_actor ON audit_log (actor, at);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (UPDATE refused)');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (DELETE refused)');
END;

-- Escalations of unacknowledged alerts to people; never acts on the supervisee.
CREATE TABLE alert_escalations (
    alert_id      INTEGER NOT NULL REFERENCES alerts (alert_id),
    level         INTEGER NOT NULL CHECK (level >= 1),
    at            TEXT NOT NULL,
    to_officer_id INTEGER REFERENCES officers (officer_id),
    to_group      TEXT,
    reason        TEXT NOT NULL,
    PRIMARY KEY (alert_id, level),
    CHECK ((to_officer_id IS NULL) <> (to_group IS NULL))
);

-- Change counters polled instead of LISTEN/NOTIFY (see the header).
-- rules_version: anything the rules snapshot is built from changed.
-- devices_version: enrollment changed (the device directory reloads).
CREATE TABLE config_version (
    one             INTEGER PRIMARY KEY CHECK (one = 1),
    rules_version   INTEGER NOT NULL,
    devices_version INTEGER NOT NULL
);
INSERT INTO config_version (one, rules_version, devices_version) VALUES (1, 0, 0);

-- SQLite has row triggers only; configuration changes are small and rare, so
-- one counter bump per row is cheap.
CREATE TRIGGER devices_version_insert AFTER INSERT ON devices
BEGIN UPDATE config_version SET devices_version = devices_version + 1, rules_version = rules_version + 1; END;
CREATE TRIGGER devices_version_update AFTER UPDATE ON devices
BEGIN UPDATE config_version SET devices_version = devices_version + 1, rules_version = rules_version + 1; END;
CREATE TRIGGER devices_version_delete AFTER DELETE ON devices
BEGIN UPDATE config_version SET devices_version = devices_version + 1, rules_version = rules_version + 1; END;

CREATE TRIGGER supervisees_version_insert AFTER INSERT ON supervisees
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER supervisees_version_update AFTER UPDATE ON supervisees
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER supervisees_version_delete AFTER DELETE ON supervisees
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;

CREATE TRIGGER zones_version_insert AFTER INSERT ON zones
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER zones_version_update AFTER UPDATE ON zones
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER zones_version_delete AFTER DELETE ON zones
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;

CREATE TRIGGER zone_versions_version_insert AFTER INSERT ON zone_versions
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER zone_versions_version_update AFTER UPDATE ON zone_versions
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER zone_versions_version_delete AFTER DELETE ON zone_versions
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;

CREATE TRIGGER device_assignments_version_insert AFTER INSERT ON device_assignments
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER device_assignments_version_update AFTER UPDATE ON device_assignments
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER device_assignments_version_delete AFTER DELETE ON device_assignments
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;

CREATE TRIGGER rules_version_insert AFTER INSERT ON rules
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER rules_version_update AFTER UPDATE ON rules
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER rules_version_delete AFTER DELETE ON rules
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;

CREATE TRIGGER rule_exceptions_version_insert AFTER INSERT ON rule_exceptions
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER rule_exceptions_version_update AFTER UPDATE ON rule_exceptions
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER rule_exceptions_version_delete AFTER DELETE ON rule_exceptions
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;

CREATE TRIGGER victim_pairings_version_insert AFTER INSERT ON victim_pairings
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER victim_pairings_version_update AFTER UPDATE ON victim_pairings
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
CREATE TRIGGER victim_pairings_version_delete AFTER DELETE ON victim_pairings
BEGIN UPDATE config_version SET rules_version = rules_version + 1; END;
