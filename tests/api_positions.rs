//! Officer API: latest positions, tracks (full, downsampled, clipped to
//! device assignments, validated), evidence exports in GeoJSON, CSV and
//! GPX (digests, structure, audit), compliance progress, and the
//! authorization matrix (caseload scoping indistinguishable from a missing
//! id; admins and auditors refused) for every endpoint that reveals where a
//! person was or how they behaved.
//!
//! Every test runs on both backends, as `name::pg` and `name::sqlite`
//! (see `common::api`).

mod common;

use std::time::Instant;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, TimeDelta, TimeZone, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use common::api::*;
use waypoint::api::ApiConfig;
use waypoint::store::sql::Q;

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// The server's fixed "now" in every test: a Friday, London on GMT.
fn now() -> DateTime<Utc> {
    at(2026, 3, 20, 12, 0)
}

both!(
    latest_positions_for_one_and_for_the_caseload_are_audited,
    track_full_and_downsampled_keeps_the_most_accurate_real_fix,
    track_and_position_are_clipped_to_the_assignment,
    track_parameters_are_validated_naming_the_field,
    a_thirty_day_track_of_43200_fixes,
    exports_in_three_formats_carry_a_digest_of_their_bytes_and_are_audited,
    an_export_whose_audit_record_cannot_be_written_returns_no_data,
    compliance_counts_a_constructed_history,
    outside_the_caseload_is_a_missing_id_and_other_roles_are_refused,
);

struct World {
    db: ApiDb,
    api: ApiServer,
    org: Org,
}

async fn world(backend: Backend) -> World {
    let db = ApiDb::new(backend).await;
    let api = ApiServer::start(&db, ApiConfig::default()).await;
    api.clock.set(now());
    let org = Org::create(&db).await;
    World { db, api, org }
}

/// Audit rows of `action`: (supervisee_id, actor, detail).
async fn audits(db: &ApiDb, action: &str) -> Vec<(Option<i64>, String, Value)> {
    Q::new("SELECT supervisee_id, actor, detail FROM audit_log WHERE action = $1 ORDER BY audit_id")
        .bind(action)
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("supervisee_id"), r.get("actor"), r.json("detail")))
        .collect()
}

fn field_error(r: &Reply) -> String {
    assert_problem(r, 422);
    r.body["errors"][0]["field"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn t_of(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// A zone with versions created at the given instants, and a rule of
/// `role` for the supervisee on it (retired if asked). The rule's own times
/// come from the wall clock, not the API's manual clock: created long
/// before every test period, retired (if at all) after all of them.
async fn zone_with_rule(
    db: &ApiDb,
    zone_ref: &str,
    versions: &[DateTime<Utc>],
    supervisee_id: i64,
    role: &str,
    schedule: Option<Value>,
    retired: bool,
) -> i64 {
    let zone_id: i64 = Q::new(
        "INSERT INTO zones (zone_ref, name, current_version) VALUES ($1, $1, $2) RETURNING zone_id",
    )
    .bind(zone_ref)
    .bind(versions.len() as i32)
    .scalar(db)
    .await
    .unwrap();
    for (i, created) in versions.iter().enumerate() {
        let v = i as f64 * 0.001;
        let geo = json!({"type": "Polygon", "coordinates": [[[-0.1, 51.5 + v], [-0.09, 51.5 + v],
            [-0.09, 51.51 + v], [-0.1, 51.5 + v]]]});
        Q::new(
            "INSERT INTO zone_versions (zone_id, version, geojson, created_at, created_by) \
             VALUES ($1, $2, $3, $4, 'test')",
        )
        .bind(zone_id)
        .bind(i as i32 + 1)
        .bind(geo)
        .bind(*created)
        .execute(db)
        .await
        .unwrap();
    }
    let real_now = Utc::now();
    Q::new(
        "INSERT INTO rules (supervisee_id, role, zone_id, schedule, retired_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(supervisee_id)
    .bind(role)
    .bind(zone_id)
    .bind(schedule)
    .bind(retired.then_some(real_now))
    .bind(real_now - TimeDelta::days(400))
    .execute(db)
    .await
    .unwrap();
    zone_id
}

async fn latest_positions_for_one_and_for_the_caseload_are_audited(backend: Backend) {
    let w = world(backend).await;
    let db = &w.db;
    let dev_a = assign_device(db, "tag-a", w.org.case_a, now() - TimeDelta::days(10)).await;
    assign_device(db, "tag-b", w.org.case_b, now() - TimeDelta::days(10)).await;
    // 60 fixes one minute apart; the last is 61 minutes old.
    insert_fixes(
        db,
        dev_a,
        now() - TimeDelta::hours(2),
        TimeDelta::minutes(1),
        60,
    )
    .await;

    let p = w
        .api
        .get(
            &format!("/supervisees/{}/position", w.org.case_a),
            &w.org.off_a,
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert_eq!(p.body["supervisee_id"], w.org.case_a);
    assert_eq!(p.body["case_ref"], "case-a");
    assert_eq!(p.body["device_id"], "tag-a");
    assert_eq!(t_of(&p.body["fix_time"]), now() - TimeDelta::minutes(61));
    assert!((p.body["lat"].as_f64().unwrap() - (51.5 + 59e-5)).abs() < 1e-9);
    assert_eq!(p.body["acc_m"], 8.0);
    assert_eq!(p.body["age_s"], 61 * 60);

    // A supervisee whose device has not reported: present, position null.
    let p = w
        .api
        .get(
            &format!("/supervisees/{}/position", w.org.case_b),
            &w.org.off_b,
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert!(p.body["fix_time"].is_null() && p.body["lat"].is_null());

    let reads = audits(db, "position.read").await;
    assert_eq!(reads.len(), 2);
    assert_eq!(reads[0].0, Some(w.org.case_a));
    assert_eq!(reads[0].1, "off-a");

    // The supervisor of team north sees case-a and case-b, not case-c;
    // pages of one by supervisee id.
    let all = w.api.get("/positions", &w.org.sup_n).await;
    assert_eq!(all.status, 200, "{}", all.text);
    let items = all.body["items"].as_array().unwrap();
    let ids: Vec<i64> = items
        .iter()
        .map(|i| i["supervisee_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![w.org.case_a, w.org.case_b]);
    assert_eq!(items[0]["device_id"], "tag-a");
    assert!(items[1]["fix_time"].is_null());
    let page1 = w.api.get("/positions?limit=1", &w.org.sup_n).await;
    assert_eq!(page1.body["items"].as_array().unwrap().len(), 1);
    let cursor = page1.body["next_cursor"].as_str().unwrap().to_owned();
    let page2 = w
        .api
        .get(&format!("/positions?limit=1&cursor={cursor}"), &w.org.sup_n)
        .await;
    assert_eq!(page2.body["items"][0]["supervisee_id"], w.org.case_b);
    assert!(page2.body["next_cursor"].is_null());
    let mine = w.api.get("/positions", &w.org.off_a).await;
    assert_eq!(mine.body["items"].as_array().unwrap().len(), 1);
    let bad = w.api.get("/positions?limit=500", &w.org.off_a).await;
    assert_eq!(field_error(&bad), "limit");

    // Once per request, naming whose positions were seen.
    let lists = audits(db, "positions.read").await;
    assert_eq!(lists.len(), 4);
    assert_eq!(lists[0].1, "sup-n");
    assert_eq!(lists[0].2["count"], 1);
    assert_eq!(lists[0].2["supervisee_ids"], json!([w.org.case_a]));
}

async fn track_full_and_downsampled_keeps_the_most_accurate_real_fix(backend: Backend) {
    let w = world(backend).await;
    let db = &w.db;
    let dev = assign_device(db, "tag-a", w.org.case_a, now() - TimeDelta::days(10)).await;
    let base = at(2026, 3, 19, 10, 0);
    // 120 fixes, 30 s apart, accuracy varying 5..17 m.
    insert_fixes(db, dev, base, TimeDelta::seconds(30), 120).await;
    Q::new("UPDATE fixes SET acc_m = 5 + (seq * 7) % 13, speed_mps = seq WHERE device_key = $1")
        .bind(dev)
        .execute(db)
        .await
        .unwrap();
    // Zone versions: v1 before the period, v2 half-way through; a retired
    // rule's zone is not in force.
    let z = zone_with_rule(
        db,
        "park",
        &[base - TimeDelta::days(5), base + TimeDelta::minutes(30)],
        w.org.case_a,
        "exclusion",
        None,
        false,
    )
    .await;
    zone_with_rule(
        db,
        "old",
        &[base - TimeDelta::days(5)],
        w.org.case_a,
        "exclusion",
        None,
        true,
    )
    .await;

    let path = |q: &str| format!("/supervisees/{}/track?{q}", w.org.case_a);
    let range = format!("from={}&to={}", iso(base), iso(base + TimeDelta::hours(1)));
    let full = w.api.get(&path(&range), &w.org.off_a).await;
    assert_eq!(full.status, 200, "{}", full.text);
    let fixes = full.body["fixes"].as_array().unwrap();
    assert_eq!(fixes.len(), 120);
    assert_eq!(t_of(&fixes[0]["t"]), base);
    assert!(fixes
        .windows(2)
        .all(|p| t_of(&p[0]["t"]) < t_of(&p[1]["t"])));
    assert!(full.body["bucket"].is_null());
    let all = full.body["zones_in_force"].as_array().unwrap();
    // The rule retired since (today) was in force during the period: the
    // track shows the period's rules, not today's.
    assert!(all.iter().any(|x| x["zone_ref"] == "old"), "{all:?}");
    let zones: Vec<&serde_json::Value> = all.iter().filter(|x| x["zone_id"] == z).collect();
    assert_eq!(zones.len(), 2, "{zones:?}");
    assert!(zones.iter().all(|x| x["role"] == "exclusion"));
    assert_eq!(zones[0]["version"], 1);
    assert_eq!(t_of(&zones[0]["valid_to"]), base + TimeDelta::minutes(30));
    assert_eq!(zones[1]["version"], 2);
    assert!(zones[1]["valid_to"].is_null());
    assert_eq!(zones[1]["geojson"]["type"], "Polygon");
    // Only v2 applies to the second half.
    let late = format!(
        "from={}&to={}",
        iso(base + TimeDelta::minutes(40)),
        iso(base + TimeDelta::hours(1))
    );
    let second = w.api.get(&path(&late), &w.org.off_a).await;
    let park: Vec<&serde_json::Value> = second.body["zones_in_force"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["zone_id"] == z)
        .collect();
    assert_eq!(park.len(), 1);
    assert_eq!(park[0]["version"], 2);

    // 5-minute buckets: 12 fixes, each a stored row, the lowest acc_m of
    // its bucket (earliest on a tie).
    let rows: Vec<(DateTime<Utc>, f64, f64, f32)> = Q::new(
        "SELECT fix_time, lat, lon, acc_m FROM fixes WHERE device_key = $1 ORDER BY fix_time",
    )
    .bind(dev)
    .fetch_all(db)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get("fix_time"),
            r.get("lat"),
            r.get("lon"),
            r.get("acc_m"),
        )
    })
    .collect();
    let down = w
        .api
        .get(&path(&format!("{range}&bucket=5m")), &w.org.off_a)
        .await;
    assert_eq!(down.status, 200, "{}", down.text);
    assert_eq!(down.body["bucket"], "5m");
    let kept = down.body["fixes"].as_array().unwrap();
    assert_eq!(kept.len(), 12);
    for (i, k) in kept.iter().enumerate() {
        let lo = base + TimeDelta::minutes(5 * i as i64);
        let bucket: Vec<_> = rows
            .iter()
            .filter(|r| r.0 >= lo && r.0 < lo + TimeDelta::minutes(5))
            .collect();
        let best = bucket
            .iter()
            .min_by(|a, b| a.3.total_cmp(&b.3).then(a.0.cmp(&b.0)))
            .unwrap();
        assert_eq!(t_of(&k["t"]), best.0, "bucket {i}");
        assert_eq!(k["lat"].as_f64().unwrap(), best.1);
        assert_eq!(k["lon"].as_f64().unwrap(), best.2);
        assert_eq!(k["acc_m"].as_f64().unwrap() as f32, best.3);
        assert!(bucket.iter().all(|r| r.3 >= best.3));
    }
    // A bucket larger than the period keeps the single best fix.
    let one = w
        .api
        .get(&path(&format!("{range}&bucket=1d")), &w.org.off_a)
        .await;
    assert_eq!(one.body["fixes"].as_array().unwrap().len(), 1);
    assert_eq!(one.body["fixes"][0]["acc_m"], 5.0);

    let reads = audits(db, "track.read").await;
    assert_eq!(reads.len(), 4);
    assert_eq!(reads[0].0, Some(w.org.case_a));
    assert_eq!(reads[0].2["rows"], 120);
    assert_eq!(reads[0].2["from"], iso(base));
    assert_eq!(reads[2].2["bucket"], "5m");
    assert_eq!(reads[2].2["rows"], 12);
}

async fn track_and_position_are_clipped_to_the_assignment(backend: Backend) {
    let w = world(backend).await;
    let db = &w.db;
    let t0 = at(2026, 3, 18, 0, 0);
    let handover = at(2026, 3, 18, 1, 0);
    // The device was worn by case-b until the handover, then by case-a.
    let dev = assign_device(db, "tag-x", w.org.case_b, t0).await;
    Q::new("UPDATE device_assignments SET valid_to = $1 WHERE device_key = $2")
        .bind(handover)
        .bind(dev)
        .execute(db)
        .await
        .unwrap();
    Q::new(
        "INSERT INTO device_assignments (device_key, supervisee_id, valid_from) VALUES ($1, $2, $3)",
    )
    .bind(dev)
    .bind(w.org.case_a)
    .bind(handover)
    .execute(db)
    .await
    .unwrap();
    // 120 fixes a minute apart: 60 before the handover, 60 after.
    insert_fixes(db, dev, t0, TimeDelta::minutes(1), 120).await;

    let q = format!(
        "from={}&to={}",
        iso(t0 - TimeDelta::hours(1)),
        iso(t0 + TimeDelta::hours(3))
    );
    let a = w
        .api
        .get(
            &format!("/supervisees/{}/track?{q}", w.org.case_a),
            &w.org.off_a,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let fa = a.body["fixes"].as_array().unwrap();
    assert_eq!(fa.len(), 60);
    assert!(fa.iter().all(|f| t_of(&f["t"]) >= handover));
    let b = w
        .api
        .get(
            &format!("/supervisees/{}/track?{q}", w.org.case_b),
            &w.org.off_b,
        )
        .await;
    let fb = b.body["fixes"].as_array().unwrap();
    assert_eq!(fb.len(), 60);
    assert!(fb.iter().all(|f| t_of(&f["t"]) < handover));

    // Exports clip the same way.
    let e = w
        .api
        .get(
            &format!("/supervisees/{}/export?{q}&format=csv", w.org.case_a),
            &w.org.off_a,
        )
        .await;
    assert_eq!(e.text.lines().count(), 61, "{}", e.text);

    // case-b no longer wears a device: no current position.
    let pb = w
        .api
        .get(
            &format!("/supervisees/{}/position", w.org.case_b),
            &w.org.off_b,
        )
        .await;
    assert_eq!(pb.status, 200);
    assert!(pb.body["fix_time"].is_null(), "{}", pb.text);
    let pa = w
        .api
        .get(
            &format!("/supervisees/{}/position", w.org.case_a),
            &w.org.off_a,
        )
        .await;
    assert_eq!(t_of(&pa.body["fix_time"]), t0 + TimeDelta::minutes(119));
}

async fn track_parameters_are_validated_naming_the_field(backend: Backend) {
    let w = world(backend).await;
    let db = &w.db;
    let dev = assign_device(db, "tag-a", w.org.case_a, now() - TimeDelta::days(40)).await;
    let t = at(2026, 3, 10, 0, 0);
    let path = |q: &str| format!("/supervisees/{}/track?{q}", w.org.case_a);
    let cases: Vec<(String, &str)> = vec![
        (format!("from={}&to={}", iso(t), iso(t)), "to"),
        (
            format!("from={}&to={}", iso(t), iso(t - TimeDelta::hours(1))),
            "to",
        ),
        (
            format!("from={}&to={}", iso(t), iso(t + TimeDelta::days(32))),
            "to",
        ),
        (format!("to={}", iso(t)), "from"),
        (format!("from={}", iso(t)), "to"),
        (format!("from=yesterday&to={}", iso(t)), "from"),
        (
            format!(
                "from={}&to={}&bucket=5x",
                iso(t),
                iso(t + TimeDelta::days(1))
            ),
            "bucket",
        ),
        (
            format!(
                "from={}&to={}&bucket=5s",
                iso(t),
                iso(t + TimeDelta::days(1))
            ),
            "bucket",
        ),
        (
            format!(
                "from={}&to={}&bucket=2d",
                iso(t),
                iso(t + TimeDelta::days(1))
            ),
            "bucket",
        ),
        (
            format!("from={}&to={}&bucket=", iso(t), iso(t + TimeDelta::days(1))),
            "bucket",
        ),
    ];
    for (q, field) in &cases {
        let r = w.api.get(&path(q), &w.org.off_a).await;
        assert_eq!(field_error(&r), *field, "{q}: {}", r.text);
    }
    // Exactly 31 days is allowed; 30 s buckets are allowed.
    let ok = w
        .api
        .get(
            &path(&format!(
                "from={}&to={}&bucket=30s",
                iso(t),
                iso(t + TimeDelta::days(31))
            )),
            &w.org.off_a,
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    // An offset whose `+` was not percent-encoded still parses.
    let plus = w
        .api
        .get(
            &path("from=2026-03-10T01:00:00+01:00&to=2026-03-10T02:00:00%2B01:00"),
            &w.org.off_a,
        )
        .await;
    assert_eq!(plus.status, 200, "{}", plus.text);
    assert_eq!(t_of(&plus.body["from"]), t);

    // More than 100 000 fixes must be downsampled.
    insert_fixes(db, dev, t, TimeDelta::seconds(1), 100_001).await;
    let q = format!("from={}&to={}", iso(t), iso(t + TimeDelta::days(2)));
    let big = w.api.get(&path(&q), &w.org.off_a).await;
    assert_eq!(field_error(&big), "bucket", "{}", big.text);
    let down = w
        .api
        .get(&path(&format!("{q}&bucket=1m")), &w.org.off_a)
        .await;
    assert_eq!(down.status, 200, "{}", down.text);
    // ceil(100001 / 60)
    assert_eq!(down.body["fixes"].as_array().unwrap().len(), 1667);
    // Refusals return no data, so they are not audited reads.
    assert_eq!(audits(db, "track.read").await.len(), 3);
}

async fn a_thirty_day_track_of_43200_fixes(backend: Backend) {
    let w = world(backend).await;
    let db = &w.db;
    let dev = assign_device(db, "tag-a", w.org.case_a, now() - TimeDelta::days(40)).await;
    let from = at(2026, 2, 18, 0, 0);
    insert_fixes(db, dev, from, TimeDelta::minutes(1), 43_200).await;
    Q::new("ANALYZE fixes").execute(db).await.unwrap();
    let path = format!(
        "/supervisees/{}/track?from={}&to={}",
        w.org.case_a,
        iso(from),
        iso(from + TimeDelta::days(30))
    );
    // Warm once, then time until the whole body has arrived (the client's
    // JSON parsing excluded).
    w.api.get(&path, &w.org.off_a).await;
    let url = format!("{}{path}", w.api.base);
    let started = Instant::now();
    let resp = w
        .api
        .http
        .get(&url)
        .bearer_auth(&w.org.off_a)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    let took = started.elapsed();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["fixes"].as_array().unwrap().len(), 43_200);
    eprintln!(
        "43200-fix track over HTTP ({backend:?}): {took:?} to the last byte, {} bytes",
        body.len()
    );
}

fn assert_digest(r: &Reply) -> String {
    let digest = Sha256::digest(r.text.as_bytes());
    let hex = hex::encode(digest);
    let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
    assert_eq!(r.headers["x-content-sha256"].to_str().unwrap(), hex);
    assert_eq!(
        r.headers["repr-digest"].to_str().unwrap(),
        format!("sha-256=:{b64}:")
    );
    hex
}

async fn exports_in_three_formats_carry_a_digest_of_their_bytes_and_are_audited(backend: Backend) {
    let w = world(backend).await;
    let db = &w.db;
    let dev = assign_device(db, "tag-a", w.org.case_a, now() - TimeDelta::days(10)).await;
    let base = at(2026, 3, 19, 8, 0);
    insert_fixes(db, dev, base, TimeDelta::minutes(1), 100).await;
    Q::new("UPDATE fixes SET speed_mps = 1.5 WHERE device_key = $1 AND seq = 3")
        .bind(dev)
        .execute(db)
        .await
        .unwrap();
    zone_with_rule(
        db,
        "park",
        &[base - TimeDelta::days(3)],
        w.org.case_a,
        "exclusion",
        None,
        false,
    )
    .await;
    // One alert in the period, resolved with a note that needs escaping;
    // one outside it.
    let alert = insert_alert(
        db,
        dev,
        w.org.case_a,
        "exclusion_zone_entry",
        "critical",
        base + TimeDelta::minutes(30),
    )
    .await;
    Q::new(
        "UPDATE alerts SET status = 'resolved', outcome = 'contacted_supervisee', \
           resolution_note = 'took <the> \"short\" way & left', resolved_at = $2, resolved_by = 'off-a' \
         WHERE alert_id = $1",
    )
    .bind(alert)
    .bind(base + TimeDelta::minutes(50))
    .execute(db)
    .await
    .unwrap();
    Q::new(
        "INSERT INTO alert_actions (alert_id, action, actor, at, outcome, note) VALUES \
         ($1, 'acknowledge', 'off-a', $2, NULL, NULL), \
         ($1, 'resolve', 'off-a', $3, 'contacted_supervisee', 'took <the> \"short\" way & left')",
    )
    .bind(alert)
    .bind(base + TimeDelta::minutes(35))
    .bind(base + TimeDelta::minutes(50))
    .execute(db)
    .await
    .unwrap();
    insert_alert(
        db,
        dev,
        w.org.case_a,
        "battery_low",
        "low",
        base - TimeDelta::days(2),
    )
    .await;

    let range = format!("from={}&to={}", iso(base), iso(base + TimeDelta::hours(2)));
    let path = |f: &str| format!("/supervisees/{}/export?{range}&format={f}", w.org.case_a);

    // GeoJSON: the complete record.
    let g = w.api.get(&path("geojson"), &w.org.off_a).await;
    assert_eq!(g.status, 200, "{}", g.text);
    assert_eq!(g.content_type, "application/geo+json");
    let gsha = assert_digest(&g);
    let disp = g.headers["content-disposition"].to_str().unwrap();
    assert!(
        disp.starts_with("attachment; filename=\"supervisee-"),
        "{disp}"
    );
    assert!(
        disp.contains(&w.org.case_a.to_string()) && !disp.contains("case-a"),
        "{disp}"
    );
    assert_eq!(g.headers["cache-control"], "no-store");
    let doc: Value = serde_json::from_str(&g.text).expect("GeoJSON parses");
    assert_eq!(doc["type"], "FeatureCollection");
    let meta = &doc["waypoint_export"];
    assert_eq!(meta["case_ref"], "case-a");
    assert_eq!(meta["supervisee_id"], w.org.case_a);
    assert_eq!(t_of(&meta["period"]["from"]), base);
    assert_eq!(t_of(&meta["generated_at"]), now());
    assert_eq!(meta["fix_count"], 100);
    assert_eq!(meta["zones_in_force"][0]["zone_ref"], "park");
    let features = doc["features"].as_array().unwrap();
    let fixes: Vec<&Value> = features
        .iter()
        .filter(|f| f["properties"]["record_type"] == "fix")
        .collect();
    let alerts: Vec<&Value> = features
        .iter()
        .filter(|f| f["properties"]["record_type"] == "alert")
        .collect();
    assert_eq!(fixes.len(), 100);
    assert_eq!(alerts.len(), 1);
    assert!(fixes
        .iter()
        .all(|f| f["type"] == "Feature" && f["geometry"]["type"] == "Point"));
    assert_eq!(t_of(&fixes[0]["properties"]["t"]), base);
    assert_eq!(fixes[0]["properties"]["acc_m"], 8.0);
    assert_eq!(fixes[0]["geometry"]["coordinates"], json!([-0.1, 51.5]));
    assert_eq!(fixes[3]["properties"]["speed_mps"], 1.5);
    let a = &alerts[0]["properties"];
    assert_eq!(a["alert_id"], alert);
    assert_eq!(a["kind"], "exclusion_zone_entry");
    assert_eq!(a["status"], "resolved");
    assert_eq!(a["outcome"], "contacted_supervisee");
    assert_eq!(a["resolution_note"], "took <the> \"short\" way & left");
    assert_eq!(a["actions"].as_array().unwrap().len(), 2);
    assert_eq!(a["actions"][1]["action"], "resolve");
    assert_eq!(alerts[0]["geometry"]["coordinates"], json!([-0.1, 51.5]));

    // CSV: fixes only.
    let c = w.api.get(&path("csv"), &w.org.off_a).await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.content_type, "text/csv; charset=utf-8");
    let csha = assert_digest(&c);
    let lines: Vec<&str> = c.text.lines().collect();
    assert_eq!(lines[0], "time,lat,lon,acc_m,speed_mps,device_id");
    assert_eq!(lines.len() - 1, 100);
    assert_eq!(lines[1], format!("{},51.5,-0.1,8,,tag-a", iso(base)));
    assert!(lines[4].ends_with(",1.5,tag-a"), "{}", lines[4]);
    assert!(c.headers["content-disposition"]
        .to_str()
        .unwrap()
        .ends_with(".csv\""));

    // GPX 1.1: well-formed by simple structure checks.
    let x = w.api.get(&path("gpx"), &w.org.off_a).await;
    assert_eq!(x.status, 200, "{}", x.text);
    assert_eq!(x.content_type, "application/gpx+xml");
    let xsha = assert_digest(&x);
    let s = &x.text;
    assert!(s.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<gpx version=\"1.1\""));
    assert!(s.contains("xmlns=\"http://www.topografix.com/GPX/1/1\""));
    assert!(s.trim_end().ends_with("</gpx>"));
    for tag in [
        "gpx",
        "metadata",
        "trk",
        "trkseg",
        "trkpt",
        "wpt",
        "extensions",
        "name",
        "desc",
        "time",
    ] {
        let open = s.matches(&format!("<{tag}>")).count() + s.matches(&format!("<{tag} ")).count();
        let close = s.matches(&format!("</{tag}>")).count();
        assert_eq!(open, close, "<{tag}> balanced");
    }
    assert_eq!(s.matches("<trkpt ").count(), 100);
    assert_eq!(s.matches("<wpt ").count(), 1);
    assert!(s.contains(&format!(
        "<trkpt lat=\"51.5\" lon=\"-0.1\"><time>{}</time>",
        iso(base)
    )));
    assert!(s.contains("took &lt;the&gt; &quot;short&quot; way &amp; left"));
    assert!(!s.contains("<the>") && !s.contains("& left"));
    // Metadata before waypoints before tracks, as GPX 1.1 orders them.
    let (m, wp, tr) = (
        s.find("<metadata>").unwrap(),
        s.find("<wpt ").unwrap(),
        s.find("<trk>").unwrap(),
    );
    assert!(m < wp && wp < tr);

    // Each export audited with its digest and row count.
    for (action, sha) in [
        ("export.geojson", gsha),
        ("export.csv", csha),
        ("export.gpx", xsha),
    ] {
        let rows = audits(db, action).await;
        assert_eq!(rows.len(), 1, "{action}");
        assert_eq!(rows[0].0, Some(w.org.case_a));
        assert_eq!(rows[0].1, "off-a");
        assert_eq!(rows[0].2["sha256"], sha);
        assert_eq!(rows[0].2["rows"], 100);
        assert_eq!(t_of(&rows[0].2["from"]), base);
    }

    // Validation and the size limit.
    let bad = w
        .api
        .get(
            &format!("/supervisees/{}/export?{range}&format=kml", w.org.case_a),
            &w.org.off_a,
        )
        .await;
    assert_eq!(field_error(&bad), "format");
    let long = format!(
        "/supervisees/{}/export?from={}&to={}",
        w.org.case_a,
        iso(base),
        iso(base + TimeDelta::days(401))
    );
    assert_eq!(field_error(&w.api.get(&long, &w.org.off_a).await), "to");
    let small = ApiServer::start(
        &w.db,
        ApiConfig {
            max_export_fixes: 50,
            ..ApiConfig::default()
        },
    )
    .await;
    small.clock.set(now());
    let refused = small.get(&path("csv"), &w.org.off_a).await;
    assert_eq!(field_error(&refused), "to");
    assert_eq!(audits(db, "export.csv").await.len(), 1);
}

async fn an_export_whose_audit_record_cannot_be_written_returns_no_data(backend: Backend) {
    let w = world(backend).await;
    let db = &w.db;
    let dev = assign_device(db, "tag-a", w.org.case_a, now() - TimeDelta::days(10)).await;
    let base = at(2026, 3, 19, 8, 0);
    insert_fixes(db, dev, base, TimeDelta::minutes(1), 20).await;
    // The audit log refuses export records (as a full disk or a lost
    // connection would, after the data has been read and formatted).
    // Each dialect's own trigger language, failing with an error the API
    // does not anticipate. Not SQLite's RAISE: that is
    // SQLITE_CONSTRAINT_TRIGGER, which store::sql reads as a conflict (the
    // schema's overlap triggers use it); a runtime error inside the trigger
    // (malformed JSON) is a plain SQLITE_ERROR, as PostgreSQL's RAISE
    // EXCEPTION is an unclassified P0001.
    if let Some(pg) = db.pg() {
        sqlx::query(
            "CREATE FUNCTION refuse_export_audit() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.action LIKE 'export.%' THEN RAISE EXCEPTION 'audit refused'; END IF; \
             RETURN NEW; END $$",
        )
        .execute(&pg.pool)
        .await
        .unwrap();
    }
    Q::split(
        "CREATE TRIGGER refuse_export_audit BEFORE INSERT ON audit_log \
         FOR EACH ROW EXECUTE FUNCTION refuse_export_audit()",
        "CREATE TRIGGER refuse_export_audit BEFORE INSERT ON audit_log \
         FOR EACH ROW WHEN NEW.action LIKE 'export.%' \
         BEGIN SELECT json('audit refused'); END",
    )
    .execute(db)
    .await
    .unwrap();
    let range = format!("from={}&to={}", iso(base), iso(base + TimeDelta::hours(1)));
    for f in ["geojson", "csv", "gpx"] {
        let r = w
            .api
            .get(
                &format!("/supervisees/{}/export?{range}&format={f}", w.org.case_a),
                &w.org.off_a,
            )
            .await;
        assert_eq!(r.status, 500, "{f}: {}", r.text);
        assert!(!r.headers.contains_key("x-content-sha256"), "{f}");
        assert!(!r.headers.contains_key("repr-digest"), "{f}");
        assert!(
            !r.text.contains("tag-a") && !r.text.contains("51.5"),
            "{f}: {}",
            r.text
        );
    }
    Q::split(
        "DROP TRIGGER refuse_export_audit ON audit_log",
        "DROP TRIGGER refuse_export_audit",
    )
    .execute(db)
    .await
    .unwrap();
    let ok = w
        .api
        .get(
            &format!("/supervisees/{}/export?{range}&format=csv", w.org.case_a),
            &w.org.off_a,
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(audits(db, "export.csv").await.len(), 1);
}

async fn compliance_counts_a_constructed_history(backend: Backend) {
    let w = world(backend).await;
    let db = &w.db;
    // Monitored for 20 days; curfew 21:00-07:00 every night.
    let dev = assign_device(db, "tag-a", w.org.case_a, now() - TimeDelta::days(20)).await;
    zone_with_rule(
        db,
        "home-a",
        &[now() - TimeDelta::days(30)],
        w.org.case_a,
        "home",
        Some(
            json!({"windows": [{"days": ["mon","tue","wed","thu","fri","sat","sun"],
                                 "start": "21:00", "end": "07:00"}]}),
        ),
        false,
    )
    .await;
    // Period: 2026-03-11 .. 2026-03-20 (today, London = UTC in March).
    insert_alert(
        db,
        dev,
        w.org.case_a,
        "exclusion_zone_entry",
        "critical",
        at(2026, 3, 17, 15, 0),
    )
    .await;
    // A curfew violation after midnight belongs to the night of the 13th.
    insert_alert(
        db,
        dev,
        w.org.case_a,
        "curfew_violation",
        "high",
        at(2026, 3, 14, 1, 30),
    )
    .await;
    // A false alarm on the 12th's night counts for nothing.
    let noise = insert_alert(
        db,
        dev,
        w.org.case_a,
        "curfew_violation",
        "high",
        at(2026, 3, 12, 23, 0),
    )
    .await;
    Q::new(
        "UPDATE alerts SET status = 'resolved', outcome = 'gps_false_alarm', \
           resolution_note = 'multipath near flats', resolved_at = $2, resolved_by = 'off-a' \
         WHERE alert_id = $1",
    )
    .bind(noise)
    .bind(at(2026, 3, 13, 9, 0))
    .execute(db)
    .await
    .unwrap();
    insert_alert(
        db,
        dev,
        w.org.case_a,
        "battery_low",
        "low",
        at(2026, 3, 19, 18, 0),
    )
    .await;
    insert_alert(
        db,
        dev,
        w.org.case_a,
        "no_signal",
        "medium",
        at(2026, 3, 18, 3, 0),
    )
    .await;
    // Outside the period, and someone else's: not counted.
    insert_alert(
        db,
        dev,
        w.org.case_a,
        "strap_tamper",
        "critical",
        at(2026, 3, 5, 12, 0),
    )
    .await;
    let dev_b = assign_device(db, "tag-b", w.org.case_b, now() - TimeDelta::days(2)).await;
    insert_alert(
        db,
        dev_b,
        w.org.case_b,
        "strap_tamper",
        "critical",
        at(2026, 3, 19, 12, 0),
    )
    .await;

    let r = w
        .api
        .get(
            &format!("/supervisees/{}/compliance?days=10", w.org.case_a),
            &w.org.off_a,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = &r.body;
    assert_eq!(b["days"], 10);
    assert_eq!(b["time_zone"], "Europe/London");
    assert_eq!(b["monitored_days"], 10);
    assert_eq!(b["days_without_violations"], 8);
    assert_eq!(b["current_streak_days"], 3);
    // Nights starting on the 11th..19th have begun (tonight's has not).
    assert_eq!(b["curfew_nights_observed"], 9);
    assert_eq!(b["curfew_nights_kept"], 8);
    assert_eq!(b["equipment_care"]["battery_alerts"], 1);
    assert_eq!(b["equipment_care"]["no_signal_alerts"], 1);
    assert_eq!(b["equipment_care"]["days_without_equipment_alerts"], 8);
    assert_eq!(
        b["summary"],
        "3 days in a row without violations; 8 of 9 curfews kept."
    );
    let daily = b["daily"].as_array().unwrap();
    assert_eq!(daily.len(), 10);
    assert_eq!(daily[0]["date"], "2026-03-11");
    assert_eq!(daily[9]["date"], "2026-03-20");
    let by_date = |d: &str| daily.iter().find(|x| x["date"] == d).unwrap().clone();
    assert_eq!(by_date("2026-03-17")["violations"], 1);
    assert_eq!(by_date("2026-03-14")["violations"], 1);
    assert_eq!(by_date("2026-03-12")["violations"], 0);
    assert_eq!(by_date("2026-03-13")["curfew_kept"], false);
    assert_eq!(by_date("2026-03-12")["curfew_kept"], true);
    assert_eq!(by_date("2026-03-14")["curfew_kept"], true);
    assert!(by_date("2026-03-20")["curfew_kept"].is_null());
    assert_eq!(by_date("2026-03-19")["equipment_alerts"], 1);

    // Monitoring began two days ago for case-b: only 3 days count; its
    // tamper yesterday breaks nothing today.
    let rb = w
        .api
        .get(
            &format!("/supervisees/{}/compliance?days=10", w.org.case_b),
            &w.org.off_b,
        )
        .await;
    assert_eq!(rb.status, 200, "{}", rb.text);
    assert_eq!(rb.body["monitored_days"], 3);
    assert_eq!(rb.body["days_without_violations"], 2);
    assert_eq!(rb.body["current_streak_days"], 1);
    assert_eq!(rb.body["curfew_nights_observed"], 0);
    assert_eq!(rb.body["summary"], "1 day without violations.");

    for bad in ["days=0", "days=366"] {
        let r = w
            .api
            .get(
                &format!("/supervisees/{}/compliance?{bad}", w.org.case_a),
                &w.org.off_a,
            )
            .await;
        assert_eq!(field_error(&r), "days");
    }
    let reads = audits(db, "compliance.read").await;
    assert_eq!(reads.len(), 2);
    assert_eq!(reads[0].0, Some(w.org.case_a));
    assert_eq!(reads[0].2["days"], 10);
}

async fn outside_the_caseload_is_a_missing_id_and_other_roles_are_refused(backend: Backend) {
    let w = world(backend).await;
    let db = &w.db;
    let dev = assign_device(db, "tag-a", w.org.case_a, now() - TimeDelta::days(10)).await;
    insert_fixes(
        db,
        dev,
        now() - TimeDelta::hours(1),
        TimeDelta::minutes(1),
        10,
    )
    .await;
    let range = format!("from={}&to={}", iso(now() - TimeDelta::days(1)), iso(now()));
    let paths = |id: i64| {
        vec![
            format!("/supervisees/{id}/position"),
            format!("/supervisees/{id}/track?{range}"),
            format!("/supervisees/{id}/track?{range}&bucket=5m"),
            format!("/supervisees/{id}/export?{range}&format=geojson"),
            format!("/supervisees/{id}/export?{range}&format=csv"),
            format!("/supervisees/{id}/export?{range}&format=gpx"),
            format!("/supervisees/{id}/compliance?days=30"),
        ]
    };
    for (theirs, missing) in paths(w.org.case_a).iter().zip(paths(i64::MAX - 7)) {
        let hidden = w.api.get(theirs, &w.org.off_c).await;
        let absent = w.api.get(&missing, &w.org.off_c).await;
        assert_problem(&hidden, 404);
        assert_problem(&absent, 404);
        assert_eq!(hidden.text, absent.text, "{theirs}");
        assert_eq!(hidden.content_type, absent.content_type);
        // The team supervisor may see it.
        let sup = w.api.get(theirs, &w.org.sup_n).await;
        assert_eq!(sup.status, 200, "{theirs}: {}", sup.text);
        for token in [&w.org.admin, &w.org.auditor] {
            assert_problem(&w.api.get(theirs, token).await, 403);
        }
    }
    for token in [&w.org.admin, &w.org.auditor] {
        assert_problem(&w.api.get("/positions", token).await, 403);
    }
    // off-c's list holds only their own supervisee.
    let list = w.api.get("/positions", &w.org.off_c).await;
    let ids: Vec<i64> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["supervisee_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![w.org.case_c]);
    // No token at all: 401.
    let anon = w
        .api
        .call(reqwest::Method::GET, &paths(w.org.case_a)[0], None, None)
        .await;
    assert_problem(&anon, 401);
    // Refused reads wrote no read records; only off-c's own list did.
    let n: i64 = Q::new(
        "SELECT count(*) FROM audit_log WHERE actor <> 'sup-n' AND action <> 'positions.read'",
    )
    .scalar(db)
    .await
    .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn the_openapi_document_describes_these_endpoints() {
    let doc = serde_json::to_value(waypoint::api::openapi()).unwrap();
    let paths = &doc["paths"];
    for p in [
        "/positions",
        "/supervisees/{id}/position",
        "/supervisees/{id}/track",
        "/supervisees/{id}/export",
        "/supervisees/{id}/compliance",
    ] {
        assert!(paths[p]["get"].is_object(), "{p} documented");
        assert!(
            paths[p]["get"]["responses"]["404"].is_object(),
            "{p} errors"
        );
    }
    let params: Vec<&str> = paths["/supervisees/{id}/track"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["id", "from", "to", "bucket"] {
        assert!(params.contains(&name), "{params:?}");
    }
    let content = &paths["/supervisees/{id}/export"]["get"]["responses"]["200"]["content"];
    for ct in ["application/geo+json", "text/csv", "application/gpx+xml"] {
        assert!(content[ct].is_object(), "{ct}: {content}");
    }
}
