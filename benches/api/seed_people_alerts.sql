-- Officer-API benchmark data, after seed_fixes.sql (same database, migrated
-- by `waypoint migrate`):
--   100 teams x 20 officers (2,000 officers; officer 1 of each team is its
--   supervisor), 100,000 supervisees (50 per officer), one device each (the
--   first 2,315 wear the devices that have 30 days of fixes), and
--   1,000,000 alerts (10 per supervisee over 90 days; 5 % open, 15 %
--   acknowledged, 80 % resolved), with one evidence row each.
-- Run: psql -v ON_ERROR_STOP=1 -d waypoint_bench -f benches/api/seed_people_alerts.sql
\timing on
SET synchronous_commit = off;

BEGIN;
INSERT INTO teams (team_ref, name)
SELECT format('bench-t-%s', t), format('Bench team %s', t) FROM generate_series(1, 100) t
ON CONFLICT DO NOTHING;
INSERT INTO officers (officer_ref, display_name, team_id)
SELECT format('bench-o-%s', o), format('Officer %s', o),
       (SELECT team_id FROM teams WHERE team_ref = format('bench-t-%s', (o - 1) / 20 + 1))
FROM generate_series(1, 2000) o
ON CONFLICT DO NOTHING;
UPDATE teams t SET supervisor_id = o.officer_id
FROM officers o
WHERE t.team_ref LIKE 'bench-t-%' AND o.officer_ref = format('bench-o-%s', (split_part(t.team_ref, '-', 3)::int - 1) * 20 + 1);
COMMIT;

BEGIN;
INSERT INTO supervisees (case_ref, display_name, time_zone, officer_ref)
SELECT format('bench-s-%s', s), NULL, 'Europe/London', format('bench-o-%s', (s - 1) % 2000 + 1)
FROM generate_series(1, 100000) s
ON CONFLICT DO NOTHING;
INSERT INTO devices (device_id)
SELECT format('bench-d-%s', s) FROM generate_series(2316, 100000) s
ON CONFLICT DO NOTHING;
INSERT INTO device_assignments (device_key, supervisee_id, valid_from)
SELECT d.device_key, sv.supervisee_id, '2026-09-01T00:00Z'
FROM generate_series(1, 100000) s
JOIN supervisees sv ON sv.case_ref = format('bench-s-%s', s)
JOIN devices d ON d.device_id = CASE WHEN s <= 2315 THEN format('bench-fix-%s', lpad(s::text, 5, '0'))
                                     ELSE format('bench-d-%s', s) END
WHERE NOT EXISTS (SELECT 1 FROM device_assignments a WHERE a.device_key = d.device_key);
COMMIT;

-- Alerts: condition ended (the one-active index is per device and kind).
BEGIN;
WITH src AS (
    SELECT a.supervisee_id, a.device_key, g,
           (ARRAY['exclusion_zone_entry','inclusion_zone_exit','curfew_violation','strap_tamper',
                  'battery_low','battery_critical','no_signal','gps_loss'])[1 + (a.supervisee_id * 7 + g) % 8] AS kind,
           timestamptz '2026-11-26T00:00Z' - make_interval(mins => ((a.supervisee_id * 7919 + g * 104729) % 129600)::int) AS raised,
           (a.supervisee_id + g) % 20 AS bucket
    FROM device_assignments a
    JOIN supervisees s ON s.supervisee_id = a.supervisee_id AND s.case_ref LIKE 'bench-s-%'
    CROSS JOIN generate_series(1, 10) g
)
INSERT INTO alerts (device_key, supervisee_id, kind, severity, confidence, started_at, raised_at,
                    last_evidence_at, condition_ended_at, explanation, status, acknowledged_at,
                    acknowledged_by, resolved_at, resolved_by, outcome, resolution_note)
SELECT device_key, supervisee_id, kind,
       CASE WHEN kind IN ('exclusion_zone_entry','strap_tamper') THEN 'critical'
            WHEN kind IN ('inclusion_zone_exit','curfew_violation') THEN 'high'
            WHEN kind = 'battery_low' THEN 'low' ELSE 'medium' END,
       (ARRAY['confirmed','probable','possible'])[1 + bucket % 3],
       raised - interval '2 minutes', raised, raised, raised + interval '10 minutes',
       'Benchmark alert: ' || kind,
       CASE WHEN bucket = 0 THEN 'open' WHEN bucket <= 3 THEN 'acknowledged' ELSE 'resolved' END,
       CASE WHEN bucket > 0 THEN raised + interval '5 minutes' END,
       CASE WHEN bucket > 0 THEN 'bench' END,
       CASE WHEN bucket > 3 THEN raised + interval '1 hour' END,
       CASE WHEN bucket > 3 THEN 'bench' END,
       CASE WHEN bucket > 3 THEN 'no_action_needed' END,
       CASE WHEN bucket > 3 THEN 'benchmark data' END
FROM src;
COMMIT;

INSERT INTO alert_evidence (alert_id, ord, fix_time, lat, lon, acc_m, observation)
SELECT alert_id, 0, started_at, 51.5, -0.1, 10, confidence FROM alerts
WHERE explanation LIKE 'Benchmark alert:%'
ON CONFLICT DO NOTHING;

VACUUM (ANALYZE) teams, officers, supervisees, devices, device_assignments, alerts, alert_evidence;
SELECT (SELECT count(*) FROM supervisees) AS supervisees, (SELECT count(*) FROM officers) AS officers,
       (SELECT count(*) FROM alerts) AS alerts;
