-- Waypoint ingest schema (PostgreSQL 14+; TimescaleDB used when present).
-- Runs unchanged on plain PostgreSQL: the hypertable block below only acts
-- where the extension is installed AND preloaded.

CREATE TABLE devices (
    device_key       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id        text NOT NULL UNIQUE
                     CHECK (device_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    -- OwnTracks apps publish on owntracks/{user}/{device}; both or neither.
    owntracks_user   text,
    owntracks_device text,
    enrolled_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz,
    CHECK ((owntracks_user IS NULL) = (owntracks_device IS NULL)),
    UNIQUE (owntracks_user, owntracks_device)
);

-- Ledger of every accepted message: de-duplication on (device, boot, seq)
-- and the digest that tells a redelivery from a seq_conflict.
CREATE TABLE messages (
    device_key  bigint NOT NULL,
    boot        bigint NOT NULL,
    seq         bigint NOT NULL,
    digest      bytea NOT NULL,
    received_at timestamptz NOT NULL,
    fix_count   integer NOT NULL,
    PRIMARY KEY (device_key, boot, seq)
);
CREATE INDEX messages_received_at ON messages USING brin (received_at);

-- Time series of positions. The primary key includes the time column so the
-- table can become a hypertable; it is also the (device, time) index that
-- track queries use. No foreign key: hypertables and bulk ingest avoid them.
CREATE TABLE fixes (
    device_key  bigint NOT NULL,
    fix_time    timestamptz NOT NULL,
    boot        bigint NOT NULL,
    seq         bigint NOT NULL,
    idx         smallint NOT NULL,
    received_at timestamptz NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    acc_m       real NOT NULL,
    alt_m       real,
    speed_mps   real,
    heading_deg real,
    src         text NOT NULL,
    PRIMARY KEY (device_key, fix_time, boot, seq, idx)
);
-- Retention deletes by receive time; BRIN is tiny and fits append-mostly data.
CREATE INDEX fixes_received_at ON fixes USING brin (received_at);

CREATE TABLE device_events (
    device_key  bigint NOT NULL,
    event_time  timestamptz NOT NULL,
    boot        bigint NOT NULL,
    seq         bigint NOT NULL,
    idx         smallint NOT NULL,
    kind        text NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (device_key, event_time, boot, seq, idx)
);

-- Latest status block per device; (boot, seq) guards against an older
-- redelivered message overwriting a newer status.
CREATE TABLE device_status (
    device_key   bigint PRIMARY KEY REFERENCES devices (device_key),
    boot         bigint NOT NULL,
    seq          bigint NOT NULL,
    received_at  timestamptz NOT NULL,
    battery_pct  smallint,
    charging     boolean,
    strap        text,
    beacon       boolean,
    rssi_dbm     smallint,
    firmware     text
);

-- Everything refused, with a reason. Holds raw payloads (which may contain
-- positions), so it has its own, shorter retention.
CREATE TABLE rejected_messages (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    topic        text NOT NULL,
    device_key   bigint,
    device_claim text,
    boot         bigint,
    seq          bigint,
    item_kind    text,
    item_index   integer,
    reason       text NOT NULL,
    detail       text NOT NULL,
    payload      bytea,
    -- Identity of the refusal (see RejectionRow::dedupe_key) so a redelivered
    -- message is recorded once.
    dedupe_key   bytea NOT NULL UNIQUE
);
CREATE INDEX rejected_messages_received_at ON rejected_messages (received_at);
CREATE INDEX rejected_messages_reason ON rejected_messages (reason, received_at);

-- Running servers keep an in-memory device directory; any change to
-- enrollment reaches them within milliseconds through this channel.
CREATE FUNCTION waypoint_notify_device() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('waypoint_devices', COALESCE(NEW.device_id, OLD.device_id));
    RETURN NULL;
END $$;
CREATE TRIGGER devices_notify AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION waypoint_notify_device();

-- TimescaleDB path: hypertable with compression and retention. Skipped (and
-- the plain tables above used as they are) when the extension is absent or
-- not in shared_preload_libraries, as on a stock PostgreSQL.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('shared_preload_libraries') LIKE '%timescaledb%' THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('fixes', 'fix_time',
                                  chunk_time_interval => interval '1 day',
                                  migrate_data => true);
        EXECUTE 'ALTER TABLE fixes SET (timescaledb.compress,
                 timescaledb.compress_segmentby = ''device_key'',
                 timescaledb.compress_orderby = ''fix_time DESC'')';
        PERFORM add_compression_policy('fixes', interval '7 days');
        PERFORM add_retention_policy('fixes', interval '90 days');
        RAISE NOTICE 'waypoint: fixes is a TimescaleDB hypertable';
    ELSE
        RAISE NOTICE 'waypoint: TimescaleDB not available; fixes is a plain table';
    END IF;
END $$;
