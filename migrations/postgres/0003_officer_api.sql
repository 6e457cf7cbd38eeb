-- Waypoint officer API: who may see what (officers, teams, tokens), the
-- append-only audit trail, single-use stream tickets and escalations.

CREATE TABLE teams (
    team_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    team_ref      text NOT NULL UNIQUE CHECK (length(team_ref) BETWEEN 1 AND 128),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- Receives escalations of the team's unacknowledged alerts; set below
    -- once officers exist.
    supervisor_id bigint
);

CREATE TABLE officers (
    officer_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The agency's staff reference; supervisees.officer_ref points at it.
    officer_ref  text NOT NULL UNIQUE CHECK (length(officer_ref) BETWEEN 1 AND 128),
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    team_id      bigint REFERENCES teams (team_id),
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX officers_team ON officers (team_id);
ALTER TABLE teams ADD FOREIGN KEY (supervisor_id) REFERENCES officers (officer_id);

-- The free-text officer reference of earlier versions becomes a real
-- reference: every officer named so far gets a row.
INSERT INTO officers (officer_ref, display_name)
SELECT DISTINCT officer_ref, officer_ref FROM supervisees WHERE officer_ref IS NOT NULL;
ALTER TABLE supervisees ADD FOREIGN KEY (officer_ref) REFERENCES officers (officer_ref)
    ON UPDATE CASCADE;
-- Caseload lookups (every officer request) go through this.
CREATE INDEX supervisees_officer ON supervisees (officer_ref);
-- Alert lists page by (raised_at, alert_id) within a caseload.
CREATE INDEX alerts_supervisee_page ON alerts (supervisee_id, raised_at DESC, alert_id DESC);
DROP INDEX alerts_supervisee;
-- Track and position reads find a person's devices by supervisee.
CREATE INDEX device_assignments_supervisee ON device_assignments (supervisee_id, valid_from);

-- Bearer tokens. Only a SHA-256 of the secret is kept (secrets are 256-bit
-- random, so a fast hash is enough: there is nothing to brute-force).
CREATE TABLE api_tokens (
    token_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    secret_hash bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    role        text NOT NULL CHECK (role IN ('officer', 'supervisor', 'admin', 'auditor')),
    -- Officers and supervisors act as a person, whose caseload (or team)
    -- bounds what they see; admins and auditors may be tied to a person.
    officer_id  bigint REFERENCES officers (officer_id),
    label       text CHECK (label IS NULL OR length(label) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    CHECK (role NOT IN ('officer', 'supervisor') OR officer_id IS NOT NULL)
);

-- Browsers' EventSource cannot send an Authorization header: a client
-- trades its token for a ticket that opens one stream, once, within
-- seconds. Hash only, like tokens.
CREATE TABLE stream_tickets (
    ticket_hash bytea PRIMARY KEY CHECK (length(ticket_hash) = 32),
    token_id    bigint NOT NULL REFERENCES api_tokens (token_id),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);

-- Every read of location data and every decision about an alert. Rows are
-- never changed or removed by the application (enforced below).
CREATE TABLE audit_log (
    audit_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL,
    token_id      bigint,
    actor         text NOT NULL,
    role          text NOT NULL,
    action        text NOT NULL,
    supervisee_id bigint,
    alert_id      bigint,
    -- The optional X-Audit-Reason header: why the caller looked.
    reason        text CHECK (reason IS NULL OR length(reason) <= 500),
    detail        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_supervisee ON audit_log (supervisee_id, at) WHERE supervisee_id IS NOT NULL;
CREATE INDEX audit_log_actor ON audit_log (actor, at);

CREATE FUNCTION waypoint_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION waypoint_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION waypoint_audit_append_only();

-- An alert left unacknowledged past its severity's limit is escalated to
-- the responsible officer's supervisor (or, without one, to the on-call
-- group). Escalation notifies people; it never acts on the supervisee.
CREATE TABLE alert_escalations (
    alert_id      bigint NOT NULL REFERENCES alerts (alert_id),
    level         smallint NOT NULL CHECK (level >= 1),
    at            timestamptz NOT NULL,
    to_officer_id bigint REFERENCES officers (officer_id),
    to_group      text,
    reason        text NOT NULL,
    PRIMARY KEY (alert_id, level),
    CHECK ((to_officer_id IS NULL) <> (to_group IS NULL))
);
ALTER TABLE alerts ADD COLUMN escalated_at timestamptz;

-- Live views in every instance learn of new log entries within
-- milliseconds (the 1 s poll remains the fallback).
CREATE FUNCTION waypoint_notify_alert_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('waypoint_alert_events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER alert_events_notify AFTER INSERT ON alert_events
    FOR EACH STATEMENT EXECUTE FUNCTION waypoint_notify_alert_events();
