-- Waypoint rules and alerts (PostgreSQL 15+: the one-active-alert index uses
-- NULLS NOT DISTINCT).
--
-- Configuration tables (supervisees .. victim_pairings) are small and read
-- whole into memory by every server; a NOTIFY on 'waypoint_rules' after any
-- change makes servers reload within a second. Alert tables are written in
-- the same transaction as the telemetry that caused them.

-- Dated assignments must not overlap per device: a GiST exclusion constraint
-- over (device, time range) needs btree_gist for the equality part. It is a
-- trusted contrib extension, shipped with PostgreSQL's own packages.
CREATE EXTENSION IF NOT EXISTS btree_gist;

-- How often a device is expected to report; no_signal is a multiple of it.
ALTER TABLE devices ADD COLUMN report_interval_s integer NOT NULL DEFAULT 60
    CHECK (report_interval_s BETWEEN 1 AND 86400);

CREATE TABLE supervisees (
    supervisee_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The agency's case reference; stable key for provisioning files.
    case_ref      text NOT NULL UNIQUE CHECK (length(case_ref) BETWEEN 1 AND 128),
    display_name  text,
    -- IANA zone name; schedules are evaluated in it.
    time_zone     text NOT NULL,
    -- Responsible officer (free text until the officer API gives it a table).
    officer_ref   text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE zones (
    zone_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    zone_ref        text NOT NULL UNIQUE CHECK (length(zone_ref) BETWEEN 1 AND 128),
    name            text NOT NULL,
    -- Shared list this zone belongs to (e.g. 'schools'); rules may target a
    -- whole list, evaluated through one R-tree.
    list_ref        text,
    current_version integer NOT NULL DEFAULT 1,
    retired_at      timestamptz
);
CREATE INDEX zones_list ON zones (list_ref) WHERE list_ref IS NOT NULL;

-- Every geometry a zone ever had; alerts point at the version in force.
CREATE TABLE zone_versions (
    zone_id    bigint NOT NULL REFERENCES zones (zone_id),
    version    integer NOT NULL,
    geojson    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    PRIMARY KEY (zone_id, version)
);

CREATE TABLE device_assignments (
    assignment_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_key    bigint NOT NULL REFERENCES devices (device_key),
    supervisee_id bigint NOT NULL REFERENCES supervisees (supervisee_id),
    valid_from    timestamptz NOT NULL,
    valid_to      timestamptz,
    CHECK (valid_to IS NULL OR valid_to > valid_from),
    -- A device is worn by one person at a time.
    EXCLUDE USING gist (device_key WITH =, tstzrange(valid_from, valid_to) WITH &&)
);

CREATE TABLE rules (
    rule_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    supervisee_id bigint NOT NULL REFERENCES supervisees (supervisee_id),
    role          text NOT NULL CHECK (role IN ('inclusion', 'exclusion', 'home')),
    -- One zone, or (exclusion only) a shared list.
    zone_id       bigint REFERENCES zones (zone_id),
    list_ref      text,
    -- NULL: always; else {"windows": [{"days": [...], "start": "HH:MM", "end": "HH:MM"}]}
    -- in the supervisee's time zone.
    schedule      jsonb,
    confirm_fixes integer NOT NULL DEFAULT 2 CHECK (confirm_fixes BETWEEN 1 AND 100),
    grace_s       integer NOT NULL DEFAULT 60 CHECK (grace_s BETWEEN 0 AND 86400),
    retired_at    timestamptz,
    CHECK ((zone_id IS NULL) <> (list_ref IS NULL)),
    CHECK (list_ref IS NULL OR role = 'exclusion'),
    UNIQUE NULLS NOT DISTINCT (supervisee_id, role, zone_id, list_ref)
);

-- Approved absences: suspend one rule (or all of a supervisee's rules).
CREATE TABLE rule_exceptions (
    exception_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    supervisee_id bigint NOT NULL REFERENCES supervisees (supervisee_id),
    rule_id       bigint REFERENCES rules (rule_id),
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL,
    reason        text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at),
    UNIQUE NULLS NOT DISTINCT (supervisee_id, rule_id, starts_at, ends_at)
);

-- A victim's device paired with a supervisee. Its positions are used for
-- the proximity check only and are never stored as fixes.
CREATE TABLE victim_pairings (
    pairing_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    victim_device_key bigint NOT NULL REFERENCES devices (device_key),
    supervisee_id     bigint NOT NULL REFERENCES supervisees (supervisee_id),
    enter_m           real NOT NULL CHECK (enter_m > 0),
    exit_m            real NOT NULL,
    ended_at          timestamptz,
    CHECK (exit_m >= enter_m),
    UNIQUE (victim_device_key, supervisee_id)
);

-- Per-device rules state (zone membership, debounce counters, newest fix),
-- written with the telemetry that changed it so a restart resumes exactly.
-- `version` lets a second instance notice that another moved a device on.
CREATE TABLE device_state (
    device_key bigint PRIMARY KEY,
    version    bigint NOT NULL,
    last_seen  timestamptz,
    state      jsonb NOT NULL
);

CREATE TABLE alerts (
    alert_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_key         bigint NOT NULL,
    supervisee_id      bigint,
    kind               text NOT NULL,
    severity           text NOT NULL CHECK (severity IN ('critical', 'high', 'medium', 'low')),
    zone_id            bigint,
    zone_version       integer,
    pairing_id         bigint,
    rule_id            bigint,
    confidence         text NOT NULL CHECK (confidence IN ('confirmed', 'probable', 'possible')),
    -- Raised from a fix older than the newest evaluated one: a record of the
    -- past that never changed the current state.
    late               boolean NOT NULL DEFAULT false,
    -- Event time of the first evidence, and server time of raising.
    started_at         timestamptz NOT NULL,
    raised_at          timestamptz NOT NULL,
    last_evidence_at   timestamptz NOT NULL,
    evidence_count     integer NOT NULL DEFAULT 1,
    -- Set when the condition ends; the alert stays open for the officer.
    condition_ended_at timestamptz,
    explanation        text NOT NULL,
    details            jsonb NOT NULL DEFAULT '{}',
    status             text NOT NULL DEFAULT 'open'
                       CHECK (status IN ('open', 'acknowledged', 'resolved')),
    acknowledged_at    timestamptz,
    acknowledged_by    text,
    resolved_at        timestamptz,
    resolved_by        text,
    outcome            text,
    resolution_note    text,
    CHECK (status <> 'resolved' OR (outcome IS NOT NULL AND resolution_note IS NOT NULL))
);
-- At most one alert per (device, kind, zone, pairing) while its condition
-- persists; NULL zone/pairing count as equal, so tamper alerts are covered.
CREATE UNIQUE INDEX alerts_one_active ON alerts (device_key, kind, zone_id, pairing_id)
    NULLS NOT DISTINCT WHERE condition_ended_at IS NULL;
CREATE INDEX alerts_queue ON alerts (status, severity, raised_at DESC);
CREATE INDEX alerts_supervisee ON alerts (supervisee_id, raised_at DESC);

-- Copies of the fixes that triggered an alert: raw fixes age out with
-- retention, evidence stays with the alert.
CREATE TABLE alert_evidence (
    alert_id    bigint NOT NULL REFERENCES alerts (alert_id),
    ord         integer NOT NULL,
    fix_time    timestamptz NOT NULL,
    lat         double precision,
    lon         double precision,
    acc_m       real,
    -- confirmed/probable/possible or a device report ('strap_open', ...)
    observation text NOT NULL,
    boundary_m  real,
    detail      text,
    PRIMARY KEY (alert_id, ord)
);

-- Officers' decisions, one row per action, never updated.
CREATE TABLE alert_actions (
    action_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id  bigint NOT NULL REFERENCES alerts (alert_id),
    action    text NOT NULL CHECK (action IN ('acknowledge', 'resolve', 'note')),
    actor     text NOT NULL CHECK (length(actor) BETWEEN 1 AND 128),
    at        timestamptz NOT NULL,
    outcome   text,
    note      text CHECK (note IS NULL OR length(note) <= 10000)
);
CREATE INDEX alert_actions_alert ON alert_actions (alert_id, action_id);

-- The alert-event log (outbox): every alert change, in commit order. Ids
-- come from the single counter row below, locked by the writing
-- transaction until it commits, so a reader that has seen id N has seen
-- every id below N (a sequence would not promise that).
CREATE TABLE alert_events (
    event_id   bigint PRIMARY KEY,
    alert_id   bigint NOT NULL REFERENCES alerts (alert_id),
    event_type text NOT NULL,
    at         timestamptz NOT NULL,
    payload    jsonb NOT NULL
);
CREATE TABLE alert_event_counter (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    last_id bigint NOT NULL
);
INSERT INTO alert_event_counter VALUES (true, 0);

-- How far each consumer of the log (e.g. the MQTT publisher) has got.
CREATE TABLE outbox_cursors (
    consumer      text PRIMARY KEY,
    last_event_id bigint NOT NULL
);

-- 'possible' observations (part of the accuracy disc in violation) are kept
-- on the device's timeline; they raise only if they persist past the grace.
CREATE TABLE device_timeline (
    device_key bigint NOT NULL,
    at         timestamptz NOT NULL,
    kind       text NOT NULL,
    zone_id    bigint,
    detail     text NOT NULL
);
CREATE INDEX device_timeline_device ON device_timeline (device_key, at);

CREATE FUNCTION waypoint_notify_rules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('waypoint_rules', TG_TABLE_NAME);
    RETURN NULL;
END $$;
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['supervisees', 'zones', 'zone_versions', 'device_assignments',
                             'rules', 'rule_exceptions', 'victim_pairings', 'devices'] LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I
                        FOR EACH STATEMENT EXECUTE FUNCTION waypoint_notify_rules()',
                       t || '_notify_rules', t);
    END LOOP;
END $$;
