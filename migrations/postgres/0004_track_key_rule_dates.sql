-- One supervisee's month of track is 43,200 fixes spread over the whole
-- heap (ingest interleaves every device's rows by arrival). Read through the
-- plain key that is 43,200 random heap-page reads: ~150 ms from the page
-- cache, ~3 s cold, on a 100M-row table (BENCHMARKS.md). Carrying the
-- columns track reads need in the key itself makes the same read an
-- index-only scan of ~300 contiguous pages (~5 ms warm, ~15-40 ms cold),
-- without a second B-tree for ingest to maintain.
--
-- TimescaleDB hypertables keep their plain key: compression segments by
-- device, which gives the same locality.
DO $$
DECLARE
    hyper boolean := false;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                                WHERE hypertable_name = ''fixes'')' INTO hyper;
    END IF;
    IF NOT hyper THEN
        ALTER TABLE fixes DROP CONSTRAINT fixes_pkey;
        ALTER TABLE fixes ADD CONSTRAINT fixes_pkey
            PRIMARY KEY (device_key, fix_time, boot, seq, idx) INCLUDE (lat, lon, acc_m, speed_mps);
    END IF;
END $$;

-- Compliance progress counts a curfew night only while its home rule was
-- in force. Rules that existed before this migration get the migration's
-- time: their earlier nights are not counted (conservative, never inflated).
ALTER TABLE rules ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();

-- Approved absences are cancelled, never deleted: who cut one short, when.
ALTER TABLE rule_exceptions ADD COLUMN cancelled_at timestamptz,
                            ADD COLUMN cancelled_by text;
