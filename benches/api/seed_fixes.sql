-- Waypoint benchmark data: >= 100 million fixes for the track-query check
-- ("one supervisee's 30-day track, 43 200 fixes, from a fixes table holding
-- >= 100 M rows, in <= 200 ms").
--
-- Run against a DEDICATED, migrated database (the script refuses to run in a
-- database whose name does not contain "bench", because it may TRUNCATE fixes):
--
--   psql -h 127.0.0.1 -U postgres -d waypoint_bench -v ON_ERROR_STOP=1 \
--        -f benches/api/seed_fixes.sql
--
-- What it writes:
--   devices: 2 315 rows, device_id 'bench-fix-00001' .. 'bench-fix-02315'
--   fixes:   30 days x 1 440 minutes x 2 315 devices = 100 008 000 rows,
--            one fix per minute per device from 2026-10-01T00:00Z, inserted
--            minute-major / device-minor (as live ingest interleaves them), so
--            one device's 43 200 fixes are spread over the whole heap.
--            boot = 1, seq = minute index (0 .. 43 199), idx = 0,
--            received_at = fix_time + 2 s, lat/lon a smooth deterministic walk
--            around 51.5, -0.1, acc_m 5 .. 30, src 'gnss', the rest NULL.
--
-- Idempotent / resumable: devices are upserted by device_id; each day is one
-- committed INSERT, so an interrupted load leaves whole days. On a rerun the
-- script counts fixes (one sequential scan): complete -> load skipped; whole
-- days 0..k-1 present and nothing else -> resume at day k; anything else ->
-- TRUNCATE fixes and reload. The primary key is dropped for the load and
-- re-added (same name and columns as migrations/postgres/0001_ingest.sql)
-- before VACUUM (ANALYZE). Session settings only; postgresql.conf untouched.

\set ON_ERROR_STOP 1
\timing on
\pset pager off

SET synchronous_commit = off;
SET maintenance_work_mem = '2GB';
SET max_parallel_maintenance_workers = 1;
SET work_mem = '64MB';

SELECT current_database() AS db, clock_timestamp() AS started_at;

DO $$
BEGIN
    IF current_database() !~ 'bench' THEN
        RAISE EXCEPTION 'seed_fixes.sql: refusing to run in database %, which is not a bench database',
            current_database();
    END IF;
END $$;

\echo '== phase 1: devices'
INSERT INTO devices (device_id)
SELECT format('bench-fix-%s', lpad(n::text, 5, '0'))
FROM generate_series(1, 2315) AS n
ORDER BY n
ON CONFLICT (device_id) DO NOTHING;

SELECT count(*) AS bench_devices, min(device_key) AS min_key, max(device_key) AS max_key
FROM devices WHERE device_id ~ '^bench-fix-[0-9]{5}$';

\echo '== phase 2: fixes load (primary key dropped; one committed INSERT per day)'
DO $$
DECLARE
    n_dev    constant integer     := 2315;
    n_days   constant integer     := 30;
    per_day  constant bigint      := 1440 * 2315;          -- 3 333 600
    t0       constant timestamptz := '2026-10-01T00:00:00Z';
    keys     bigint[];
    cnt      bigint;
    tmin     timestamptz;
    tmax     timestamptz;
    first_day integer := 0;
    t_start  timestamptz := clock_timestamp();
    t_day    timestamptz;
    d        integer;
BEGIN
    -- Device ordinal (1-based) -> device_key, captured from the identity column.
    SELECT array_agg(device_key ORDER BY device_id) INTO keys
    FROM devices WHERE device_id ~ '^bench-fix-[0-9]{5}$'
      AND substr(device_id, 11)::integer BETWEEN 1 AND n_dev;
    IF coalesce(cardinality(keys), 0) <> n_dev THEN
        RAISE EXCEPTION 'expected % bench devices, found %', n_dev, coalesce(cardinality(keys), 0);
    END IF;

    -- What is already there?
    SELECT count(*), min(fix_time), max(fix_time) INTO cnt, tmin, tmax FROM fixes;
    IF cnt = 0 THEN
        first_day := 0;
    ELSIF cnt % per_day = 0 AND cnt / per_day <= n_days
          AND tmin = t0
          AND tmax = t0 + make_interval(mins => (cnt / per_day * 1440 - 1)::integer)
          AND NOT EXISTS (SELECT 1 FROM fixes WHERE device_key <> ALL (keys) LIMIT 1) THEN
        first_day := (cnt / per_day)::integer;
        IF first_day < n_days THEN
            RAISE NOTICE 'fixes already holds % whole day(s) (% rows); resuming at day %',
                first_day, cnt, first_day + 1;
        END IF;
    ELSE
        RAISE NOTICE 'fixes holds % rows that are not a clean prefix of the bench set: TRUNCATE', cnt;
        TRUNCATE fixes;
        first_day := 0;
    END IF;

    IF first_day >= n_days THEN
        RAISE NOTICE 'fixes already complete (% rows); load skipped', cnt;
        RETURN;
    END IF;

    ALTER TABLE fixes DROP CONSTRAINT IF EXISTS fixes_pkey;
    COMMIT;

    FOR d IN first_day .. n_days - 1 LOOP
        t_day := clock_timestamp();
        INSERT INTO fixes (device_key, fix_time, boot, seq, idx, received_at,
                           lat, lon, acc_m, alt_m, speed_mps, heading_deg, src)
        SELECT keys[s.n + 1],
               t0 + make_interval(mins => s.m::integer),
               1,
               s.m,
               0,
               t0 + make_interval(mins => s.m::integer, secs => 2),
               51.5 + 0.040 * sin(s.n * 0.37 + s.m * 0.0007) + 0.004 * sin(s.m * 0.011 + s.n * 1.7),
               -0.1 + 0.060 * cos(s.n * 0.53 + s.m * 0.0005) + 0.006 * cos(s.m * 0.013 + s.n * 2.3),
               (5 + (s.n * 7 + s.m * 13) % 26)::real,
               NULL, NULL, NULL,
               'gnss'
        FROM (SELECT d * 1440 + g / n_dev AS m,      -- minute index, outer
                     g % n_dev           AS n        -- device ordinal, inner
              FROM generate_series(0::bigint, per_day - 1) AS g) AS s;
        COMMIT;
        RAISE NOTICE 'day %/% loaded: % rows in % s (load elapsed % s)',
            d + 1, n_days, per_day,
            round(extract(epoch FROM clock_timestamp() - t_day)::numeric, 1),
            round(extract(epoch FROM clock_timestamp() - t_start)::numeric, 1);
    END LOOP;
END $$;

\echo '== phase 3: primary key (device_key, fix_time, boot, seq, idx)'
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'fixes'::regclass AND conname = 'fixes_pkey') THEN
        ALTER TABLE fixes ADD CONSTRAINT fixes_pkey
            PRIMARY KEY (device_key, fix_time, boot, seq, idx);
    ELSE
        RAISE NOTICE 'fixes_pkey already present';
    END IF;
END $$;

\echo '== phase 4: VACUUM (ANALYZE) fixes'
VACUUM (ANALYZE) fixes;

\echo '== summary'
SELECT count(*) AS fixes_rows FROM fixes;
SELECT pg_size_pretty(pg_relation_size('fixes'))             AS heap,
       pg_size_pretty(pg_relation_size('fixes_pkey'))        AS pkey,
       pg_size_pretty(pg_relation_size('fixes_received_at')) AS brin,
       pg_size_pretty(pg_total_relation_size('fixes'))       AS total;
SELECT clock_timestamp() AS finished_at;
