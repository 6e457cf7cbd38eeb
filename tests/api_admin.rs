//! Officer API: configuration through HTTP against real databases (each
//! test on PostgreSQL and on SQLite) — officers, teams, supervisees, devices and assignments, zones and their
//! versions, rules, approved absences — with validation that names the bad
//! field, caseload scoping (outside = nonexistent) and the role matrix.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::Method;
use serde_json::{json, Value};

use common::api::*;
use waypoint::api::audit;
use waypoint::api::ApiConfig;
use waypoint::clock::Clock;
use waypoint::store::sql::Q;

both!(
    admin_builds_configuration_and_reads_it_back,
    zone_geometry_update_creates_a_version_and_keeps_the_old_one,
    bad_inputs_are_refused_naming_the_field,
    outside_the_caseload_is_indistinguishable_from_nonexistent,
    roles_are_enforced,
    recorded_history_cannot_be_moved_to_another_caseload,
    officers_approve_bounded_absences_only,
    a_whole_provisioning_document_loads_through_the_api,
);

struct World {
    db: ApiDb,
    api: ApiServer,
    org: Org,
}

async fn world(backend: Backend) -> World {
    let db = ApiDb::new(backend).await;
    let api = ApiServer::start(&db, ApiConfig::default()).await;
    let org = Org::create(&db).await;
    World { db, api, org }
}

impl World {
    async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.api
            .call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    async fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        self.api
            .call(Method::PUT, path, Some(token), Some(body))
            .await
    }

    /// POST with a raw body and content type.
    async fn raw(&self, path: &str, token: &str, ct: &str, body: &'static str) -> Reply {
        let r = self
            .api
            .http
            .post(format!("{}{path}", self.api.base))
            .bearer_auth(token)
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        read(r).await
    }

    fn now(&self) -> DateTime<Utc> {
        self.api.clock.now()
    }
}

fn ok(r: &Reply) {
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Asserts a 422 whose `errors` name `field` (and whose message contains
/// `needle`).
fn assert_field(r: &Reply, field: &str, needle: &str) {
    assert_problem(r, 422);
    let errs = r.body["errors"].as_array().expect("errors array");
    assert!(
        errs.iter().any(|e| e["field"] == field
            && e["message"]
                .as_str()
                .is_some_and(|m| m.to_lowercase().contains(&needle.to_lowercase()))),
        "expected field {field:?} with {needle:?}: {}",
        r.text
    );
}

/// A square with its south-west corner at (lon, lat), `d` degrees a side.
/// Tests pass binary fractions so coordinates survive JSON round trips
/// exactly.
fn square(lon: f64, lat: f64, d: f64) -> Value {
    json!({"type": "Polygon", "coordinates": [[
        [lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]
    ]]})
}

fn items(r: &Reply) -> &Vec<Value> {
    r.body["items"].as_array().expect("items")
}

async fn admin_builds_configuration_and_reads_it_back(backend: Backend) {
    let w = world(backend).await;
    let admin = &w.org.admin;
    let now = w.now();

    // Team, officer, supervisee.
    let t = w
        .api
        .post(
            "/teams",
            admin,
            json!({"team_ref": "east", "name": "East", "supervisor_ref": "sup-n"}),
        )
        .await;
    ok(&t);
    assert_eq!(t.body["supervisor_ref"], "sup-n");
    let team_id = t.body["team_id"].as_i64().unwrap();
    let o = w
        .api
        .post(
            "/officers",
            admin,
            json!({"officer_ref": "off-e", "display_name": "Officer E", "team_ref": "east"}),
        )
        .await;
    ok(&o);
    assert_eq!(o.body["team_ref"], "east");
    assert_eq!(o.body["active"], true);
    assert_eq!(o.body["caseload"], 0);
    let s = w
        .api
        .post(
            "/supervisees",
            admin,
            json!({"case_ref": "case-e", "display_name": "E. Example",
                   "time_zone": "America/New_York", "officer_ref": "off-e"}),
        )
        .await;
    ok(&s);
    let sid = s.body["supervisee_id"].as_i64().unwrap();
    assert_eq!(s.body["time_zone"], "America/New_York");
    assert_eq!(s.body["officer_ref"], "off-e");
    assert_eq!(s.body["devices"], json!([]));
    assert_eq!(s.body["victim_pairings"], 0);

    // Device, dated assignment, victim pairing, interval change.
    ok(&w
        .api
        .post(
            "/devices",
            admin,
            json!({"device_id": "tag-e1", "report_interval_s": 30}),
        )
        .await);
    let from = now - TimeDelta::hours(1);
    let a = w
        .api
        .post(
            "/devices/tag-e1/assignments",
            admin,
            json!({"supervisee_id": sid, "valid_from": from}),
        )
        .await;
    ok(&a);
    assert_eq!(a.body["current_assignment"]["supervisee_id"], sid);
    assert_eq!(a.body["current_assignment"]["case_ref"], "case-e");
    assert_eq!(a.body["report_interval_s"], 30);
    ok(&w
        .api
        .post("/devices", admin, json!({"device_id": "victim-1"}))
        .await);
    let p = w
        .api
        .post(
            "/devices/victim-1/pairing",
            admin,
            json!({"supervisee_id": sid, "enter_m": 500.0, "exit_m": 750.0}),
        )
        .await;
    ok(&p);
    assert_eq!(p.body["pairings"][0]["supervisee_id"], sid);
    // A paired victim device cannot also be worn by a supervisee.
    let worn = w
        .api
        .post(
            "/devices/victim-1/assignments",
            admin,
            json!({"supervisee_id": w.org.case_a, "valid_from": now}),
        )
        .await;
    assert_problem(&worn, 409);
    let d = w
        .patch("/devices/tag-e1", admin, json!({"report_interval_s": 120}))
        .await;
    ok(&d);
    assert_eq!(d.body["report_interval_s"], 120);

    // The supervisee record shows the device and the pairing count only.
    let r = w.api.get(&format!("/supervisees/{sid}"), admin).await;
    ok(&r);
    assert_eq!(r.body["devices"][0]["device_id"], "tag-e1");
    assert_eq!(r.body["victim_pairings"], 1);
    assert!(
        !r.text.contains("victim-1"),
        "victim device leaked: {}",
        r.text
    );

    // A zone and a curfew rule on it.
    let z = w
        .api
        .post(
            "/zones",
            admin,
            json!({"zone_ref": "home-e", "name": "Home E",
                   "geojson": {"type": "Feature", "properties": {"radius_m": 80.0},
                               "geometry": {"type": "Point", "coordinates": [-73.99, 40.73]}}}),
        )
        .await;
    ok(&z);
    let zone_id = z.body["id"].as_i64().unwrap();
    assert_eq!(z.body["type"], "Feature");
    assert_eq!(z.body["geometry"]["type"], "Point");
    assert_eq!(z.body["properties"]["version"], 1);
    assert_eq!(z.body["properties"]["radius_m"], 80.0);
    assert_eq!(z.body["properties"]["zone_ref"], "home-e");
    let rule = w
        .api
        .post(
            &format!("/supervisees/{sid}/rules"),
            admin,
            json!({"role": "home", "zone_id": zone_id, "grace_s": 120,
                   "schedule": {"windows": [{"days": ["fri", "mon"], "start": "21:00", "end": "07:00"}]}}),
        )
        .await;
    ok(&rule);
    let rule_id = rule.body["rule_id"].as_i64().unwrap();
    assert_eq!(rule.body["zone"]["zone_ref"], "home-e");
    assert_eq!(rule.body["grace_s"], 120);
    assert_eq!(rule.body["confirm_fixes"], 2);
    // Stored in canonical form (days in week order).
    assert_eq!(
        rule.body["schedule"]["windows"][0]["days"],
        json!(["mon", "fri"])
    );
    // The same role and target twice is a conflict.
    let dup = w
        .api
        .post(
            &format!("/supervisees/{sid}/rules"),
            admin,
            json!({"role": "home", "zone_id": zone_id,
                   "schedule": {"windows": [{"days": ["sat"], "start": "22:00", "end": "06:00"}]}}),
        )
        .await;
    assert_problem(&dup, 409);

    // An approved absence from that rule, then read back.
    let x = w
        .api
        .post(
            &format!("/supervisees/{sid}/exceptions"),
            admin,
            json!({"rule_id": rule_id, "starts_at": now + TimeDelta::hours(2),
                   "ends_at": now + TimeDelta::hours(5), "reason": "hospital appointment"}),
        )
        .await;
    ok(&x);
    assert_eq!(x.body["status"], "scheduled");
    assert_eq!(x.body["rule_id"], rule_id);
    let rules = w.api.get(&format!("/supervisees/{sid}/rules"), admin).await;
    ok(&rules);
    assert_eq!(rules.body.as_array().unwrap().len(), 1);
    assert_eq!(rules.body[0]["role"], "home");
    assert_eq!(rules.body[0]["retired"], false);
    let xs = w
        .api
        .get(&format!("/supervisees/{sid}/exceptions"), admin)
        .await;
    ok(&xs);
    assert_eq!(items(&xs).len(), 1);
    assert_eq!(items(&xs)[0]["reason"], "hospital appointment");

    // Lists.
    let officers = w.api.get("/officers?team_ref=east", admin).await;
    ok(&officers);
    assert_eq!(items(&officers).len(), 1);
    assert_eq!(items(&officers)[0]["caseload"], 1);
    let teams = w.api.get("/teams", admin).await;
    ok(&teams);
    assert!(items(&teams)
        .iter()
        .any(|t| t["team_id"] == team_id && t["officers"] == 1));
    let sups = w.api.get("/supervisees?q=case-", admin).await;
    ok(&sups);
    assert_eq!(items(&sups).len(), 4);
    let page = w.api.get("/supervisees?limit=3", admin).await;
    ok(&page);
    assert_eq!(items(&page).len(), 3);
    let cursor = page.body["next_cursor"].as_str().expect("a next page");
    let rest = w
        .api
        .get(&format!("/supervisees?limit=3&cursor={cursor}"), admin)
        .await;
    ok(&rest);
    assert_eq!(items(&rest).len(), 1);
    assert_eq!(items(&rest)[0]["case_ref"], "case-e");
    assert!(rest.body["next_cursor"].is_null());
    let devs = w.api.get("/devices?q=tag-", admin).await;
    ok(&devs);
    assert_eq!(items(&devs).len(), 1);
    let dev = w.api.get("/devices/tag-e1", admin).await;
    ok(&dev);
    assert_eq!(dev.body["assignments"].as_array().unwrap().len(), 1);

    // Ending the assignment: the supervisee no longer shows the device.
    let aid = dev.body["assignments"][0]["assignment_id"]
        .as_i64()
        .unwrap();
    let end = w
        .api
        .post(
            &format!("/devices/tag-e1/assignments/{aid}/end"),
            admin,
            json!({"at": now - TimeDelta::minutes(1)}),
        )
        .await;
    ok(&end);
    assert!(end.body["current_assignment"].is_null());
    let again = w
        .api
        .post(
            &format!("/devices/tag-e1/assignments/{aid}/end"),
            admin,
            json!({"at": now}),
        )
        .await;
    assert_problem(&again, 409);
    let r = w.api.get(&format!("/supervisees/{sid}"), admin).await;
    assert_eq!(r.body["devices"], json!([]));

    // Revocation is once only.
    ok(&w.api.post("/devices/tag-e1/revoke", admin, json!({})).await);
    assert_problem(
        &w.api.post("/devices/tag-e1/revoke", admin, json!({})).await,
        409,
    );

    // Reassigning the caseload moves access from one officer to another.
    let off_e = token(&w.db, waypoint::api::auth::Role::Officer, Some("off-e")).await;
    ok(&w.api.get(&format!("/supervisees/{sid}"), &off_e).await);
    let m = w
        .patch(
            &format!("/supervisees/{sid}"),
            admin,
            json!({"officer_ref": "off-a", "display_name": null}),
        )
        .await;
    ok(&m);
    assert_eq!(m.body["officer_ref"], "off-a");
    assert!(m.body["display_name"].is_null());
    assert_problem(
        &w.api.get(&format!("/supervisees/{sid}"), &off_e).await,
        404,
    );
    ok(&w
        .api
        .get(&format!("/supervisees/{sid}"), &w.org.off_a)
        .await);

    // Officer and team edits.
    let oid = o.body["officer_id"].as_i64().unwrap();
    let oe = w
        .patch(
            &format!("/officers/{oid}"),
            admin,
            json!({"team_ref": null}),
        )
        .await;
    ok(&oe);
    assert!(oe.body["team_ref"].is_null());
    let te = w
        .patch(
            &format!("/teams/{team_id}"),
            admin,
            json!({"name": "East team", "supervisor_ref": null}),
        )
        .await;
    ok(&te);
    assert_eq!(te.body["name"], "East team");
    assert!(te.body["supervisor_ref"].is_null());

    // Every change was audited.
    for action in [
        "team.create",
        "officer.create",
        "supervisee.create",
        "device.create",
        "device.assign",
        "device.pair",
        "device.update",
        "device.unassign",
        "device.revoke",
        "zone.create",
        "rule.create",
        "exception.create",
        "supervisee.update",
        "officer.update",
        "team.update",
    ] {
        assert!(
            audit::count(&w.db, action).await.unwrap() >= 1,
            "no audit record for {action}"
        );
    }
    let who: String =
        Q::new("SELECT created_by FROM zone_versions WHERE zone_id = $1 AND version = 1")
            .bind(zone_id)
            .scalar(&w.db)
            .await
            .unwrap();
    assert!(who.starts_with("admin-token-"), "{who}");
}

async fn zone_geometry_update_creates_a_version_and_keeps_the_old_one(backend: Backend) {
    let w = world(backend).await;
    let admin = &w.org.admin;
    let v1 = square(-0.125, 51.5, 0.0078125);
    let z = w
        .api
        .post(
            "/zones",
            admin,
            json!({"zone_ref": "park", "name": "Park", "list": "parks", "geojson": v1}),
        )
        .await;
    ok(&z);
    let id = z.body["id"].as_i64().unwrap();
    assert_eq!(z.body["properties"]["list_ref"], "parks");
    // Stored canonical: a Feature wrapping the geometry.
    let stored: Value =
        Q::new("SELECT geojson FROM zone_versions WHERE zone_id = $1 AND version = 1")
            .bind(id)
            .fetch_one(&w.db)
            .await
            .unwrap()
            .json("geojson");
    assert_eq!(stored["type"], "Feature");
    assert_eq!(stored["geometry"], v1);

    let v2 = square(-0.125, 51.5, 0.015625);
    let u = w
        .put(
            &format!("/zones/{id}/geometry"),
            admin,
            json!({"geojson": v2}),
        )
        .await;
    ok(&u);
    assert_eq!(u.body["properties"]["version"], 2);
    assert_eq!(u.body["geometry"], v2);
    // The same geometry again is not a new version.
    let same = w
        .put(
            &format!("/zones/{id}/geometry"),
            admin,
            json!({"geojson": v2}),
        )
        .await;
    ok(&same);
    assert_eq!(same.body["properties"]["version"], 2);

    let cur = w.api.get(&format!("/zones/{id}"), admin).await;
    ok(&cur);
    assert_eq!(cur.body["properties"]["version"], 2);
    assert_eq!(cur.body["properties"]["current_version"], 2);
    let old = w.api.get(&format!("/zones/{id}/versions/1"), admin).await;
    ok(&old);
    assert_eq!(old.body["properties"]["version"], 1);
    assert_eq!(old.body["properties"]["current_version"], 2);
    assert_eq!(old.body["geometry"], v1);
    let vs = w.api.get(&format!("/zones/{id}/versions"), admin).await;
    ok(&vs);
    let vs = vs.body.as_array().unwrap();
    assert_eq!(vs.len(), 2);
    assert_eq!(vs[0]["current"], false);
    assert_eq!(vs[1]["current"], true);
    assert_problem(
        &w.api.get(&format!("/zones/{id}/versions/3"), admin).await,
        404,
    );
    assert_eq!(audit::count(&w.db, "zone.geometry").await.unwrap(), 1);
    assert!(audit::count(&w.db, "zone.read").await.unwrap() >= 2);

    // Retiring: refused while a live rule uses the zone.
    let rule = w
        .api
        .post(
            &format!("/supervisees/{}/rules", w.org.case_a),
            admin,
            json!({"role": "exclusion", "zone_id": id}),
        )
        .await;
    ok(&rule);
    let rid = rule.body["rule_id"].as_i64().unwrap();
    assert_problem(
        &w.api
            .post(&format!("/zones/{id}/retire"), admin, json!({}))
            .await,
        409,
    );
    ok(&w
        .api
        .post(
            &format!("/supervisees/{}/rules/{rid}/retire", w.org.case_a),
            admin,
            json!({}),
        )
        .await);
    let r = w
        .api
        .post(&format!("/zones/{id}/retire"), admin, json!({}))
        .await;
    ok(&r);
    assert!(r.body["properties"]["retired_at"].is_string());
    assert_problem(
        &w.put(
            &format!("/zones/{id}/geometry"),
            admin,
            json!({"geojson": v1}),
        )
        .await,
        409,
    );
}

async fn bad_inputs_are_refused_naming_the_field(backend: Backend) {
    let w = world(backend).await;
    let admin = &w.org.admin;
    let now = w.now();
    let zone = |geojson: Value| json!({"zone_ref": "z", "name": "Z", "geojson": geojson});

    // Unclosed polygon ring.
    let r = w
        .api
        .post(
            "/zones",
            admin,
            zone(json!({"type": "Polygon", "coordinates": [[
                [-0.12, 51.5], [-0.11, 51.5], [-0.11, 51.51], [-0.12, 51.51]
            ]]})),
        )
        .await;
    assert_field(&r, "geojson", "not closed");
    // Self-intersecting polygon (a bow tie).
    let r = w
        .api
        .post(
            "/zones",
            admin,
            zone(json!({"type": "Polygon", "coordinates": [[
                [-0.12, 51.5], [-0.11, 51.51], [-0.11, 51.5], [-0.12, 51.51], [-0.12, 51.5]
            ]]})),
        )
        .await;
    assert_field(&r, "geojson", "self-intersection");
    // Circle with radius <= 0.
    for radius in [0.0, -5.0] {
        let r = w
            .api
            .post(
                "/zones",
                admin,
                zone(
                    json!({"type": "Feature", "properties": {"radius_m": radius},
                            "geometry": {"type": "Point", "coordinates": [-0.12, 51.5]}}),
                ),
            )
            .await;
        assert_field(&r, "geojson", "radius_m");
    }
    // Out-of-range coordinates.
    let r = w
        .api
        .post("/zones", admin, zone(square(-0.12, 95.0, 0.01)))
        .await;
    assert_field(&r, "geojson", "latitude");
    // Nothing was created by the refusals.
    assert_eq!(w.db.count("SELECT count(*) FROM zones").await, 0);

    // Unknown time zone; unknown officer (both named at once).
    let r = w
        .api
        .post(
            "/supervisees",
            admin,
            json!({"case_ref": "case-x", "time_zone": "Mars/Olympus_Mons", "officer_ref": "nobody"}),
        )
        .await;
    assert_field(&r, "time_zone", "unknown time zone");
    assert_field(&r, "officer_ref", "no officer");
    let r = w
        .patch(
            &format!("/supervisees/{}", w.org.case_a),
            admin,
            json!({"time_zone": "Europe/Londres"}),
        )
        .await;
    assert_field(&r, "time_zone", "unknown time zone");
    let r = w
        .api
        .post(
            "/officers",
            admin,
            json!({"officer_ref": "o", "display_name": "O", "team_ref": "nowhere"}),
        )
        .await;
    assert_field(&r, "team_ref", "no team");
    // Duplicate case reference.
    assert_problem(
        &w.api
            .post(
                "/supervisees",
                admin,
                json!({"case_ref": "case-a", "time_zone": "Europe/London", "officer_ref": "off-a"}),
            )
            .await,
        409,
    );

    // Devices.
    let r = w
        .api
        .post("/devices", admin, json!({"device_id": "-bad id"}))
        .await;
    assert_field(&r, "device_id", "device id");
    let r = w
        .api
        .post(
            "/devices",
            admin,
            json!({"device_id": "tag-1", "report_interval_s": 0}),
        )
        .await;
    assert_field(&r, "report_interval_s", "1..=86400");
    ok(&w
        .api
        .post("/devices", admin, json!({"device_id": "tag-1"}))
        .await);
    assert_problem(
        &w.api
            .post("/devices", admin, json!({"device_id": "tag-1"}))
            .await,
        409,
    );
    let r = w
        .api
        .post(
            "/devices/tag-1/assignments",
            admin,
            json!({"supervisee_id": w.org.case_a, "valid_from": now, "valid_to": now}),
        )
        .await;
    assert_field(&r, "valid_to", "after valid_from");
    ok(&w
        .api
        .post(
            "/devices/tag-1/assignments",
            admin,
            json!({"supervisee_id": w.org.case_a, "valid_from": now - TimeDelta::days(2),
                   "valid_to": now + TimeDelta::days(2)}),
        )
        .await);
    // Overlapping assignment (another person, period overlapping the end).
    let r = w
        .api
        .post(
            "/devices/tag-1/assignments",
            admin,
            json!({"supervisee_id": w.org.case_b, "valid_from": now + TimeDelta::days(1)}),
        )
        .await;
    assert_problem(&r, 409);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("already assigned") && detail.contains("overlap"),
        "{detail}"
    );
    // Back-to-back is fine.
    ok(&w
        .api
        .post(
            "/devices/tag-1/assignments",
            admin,
            json!({"supervisee_id": w.org.case_b, "valid_from": now + TimeDelta::days(2)}),
        )
        .await);
    let r = w
        .api
        .post(
            "/devices/tag-1/pairing",
            admin,
            json!({"supervisee_id": w.org.case_c, "enter_m": 0.0, "exit_m": 10.0}),
        )
        .await;
    assert_field(&r, "enter_m", "> 0");
    let r = w
        .api
        .post(
            "/devices/nope/assignments",
            admin,
            json!({"supervisee_id": w.org.case_a, "valid_from": now}),
        )
        .await;
    assert_problem(&r, 404);

    // Rules: schedule, role/list constraints.
    ok(&w
        .api
        .post("/zones", admin, zone(square(-0.12, 51.5, 0.01)))
        .await);
    let zid: i64 = Q::new("SELECT zone_id FROM zones WHERE zone_ref = 'z'")
        .scalar(&w.db)
        .await
        .unwrap();
    let rules = format!("/supervisees/{}/rules", w.org.case_a);
    let r = w
        .api
        .post(
            &rules,
            admin,
            json!({"role": "inclusion", "zone_id": zid,
                   "schedule": {"windows": [{"days": ["funday"], "start": "09:00", "end": "17:00"}]}}),
        )
        .await;
    assert_field(&r, "schedule", "unknown day");
    let r = w
        .api
        .post(
            &rules,
            admin,
            json!({"role": "inclusion", "list_ref": "parks"}),
        )
        .await;
    assert_field(&r, "list_ref", "only exclusion");
    let r = w
        .api
        .post(&rules, admin, json!({"role": "home", "zone_id": zid}))
        .await;
    assert_field(&r, "schedule", "needs a schedule");
    let r = w
        .api
        .post(
            &rules,
            admin,
            json!({"role": "curfew", "zone_id": zid, "zone_id_x": 1}),
        )
        .await;
    assert_problem(&r, 422);
    let r = w
        .api
        .post(
            &rules,
            admin,
            json!({"role": "exclusion", "zone_id": 999999}),
        )
        .await;
    assert_field(&r, "zone_id", "no zone");

    // Exceptions.
    let ex = format!("/supervisees/{}/exceptions", w.org.case_a);
    let r = w
        .api
        .post(
            &ex,
            &w.org.off_a,
            json!({"starts_at": now, "ends_at": now - TimeDelta::hours(1), "reason": " "}),
        )
        .await;
    assert_field(&r, "ends_at", "after starts_at");
    assert_field(&r, "reason", "required");

    // Malformed JSON, wrong content type, unknown field.
    assert_problem(
        &w.raw("/devices", admin, "application/json", "{\"device_id\": ")
            .await,
        400,
    );
    assert_problem(
        &w.raw("/devices", admin, "text/plain", "{\"device_id\": \"t\"}")
            .await,
        415,
    );
    let r = w
        .api
        .post(
            "/devices",
            admin,
            json!({"device_id": "tag-2", "colour": "red"}),
        )
        .await;
    assert_problem(&r, 422);
    assert!(r.text.contains("colour"), "{}", r.text);
    assert_eq!(
        w.db.count("SELECT count(*) FROM devices WHERE device_id = 'tag-2'")
            .await,
        0
    );
}

async fn outside_the_caseload_is_indistinguishable_from_nonexistent(backend: Backend) {
    let w = world(backend).await;
    let now = w.now();
    let (a, missing) = (w.org.case_a, 987_654_321_i64);
    let exception = json!({"starts_at": now + TimeDelta::hours(1),
                           "ends_at": now + TimeDelta::hours(2), "reason": "dentist"});

    for (path, body) in [
        ("/supervisees/{}", None),
        ("/supervisees/{}/rules", None),
        ("/supervisees/{}/exceptions", None),
        ("/supervisees/{}/exceptions", Some(exception.clone())),
    ] {
        let mut replies = Vec::new();
        for id in [a, missing] {
            let p = path.replace("{}", &id.to_string());
            replies.push(match &body {
                Some(b) => w.api.post(&p, &w.org.off_c, b.clone()).await,
                None => w.api.get(&p, &w.org.off_c).await,
            });
        }
        let (outside, nonexistent) = (&replies[0], &replies[1]);
        assert_problem(outside, 404);
        assert_problem(nonexistent, 404);
        assert_eq!(outside.text, nonexistent.text, "{path}");
        assert_eq!(outside.content_type, nonexistent.content_type, "{path}");
    }
    // Nothing was written for the refused exception.
    assert_eq!(w.db.count("SELECT count(*) FROM rule_exceptions").await, 0);

    // In scope: the officer, and the team's supervisor.
    ok(&w.api.get(&format!("/supervisees/{a}"), &w.org.off_a).await);
    ok(&w
        .api
        .get(&format!("/supervisees/{a}/rules"), &w.org.sup_n)
        .await);
    let mine = w.api.get("/supervisees", &w.org.off_a).await;
    ok(&mine);
    assert_eq!(items(&mine).len(), 1);
    assert_eq!(items(&mine)[0]["case_ref"], "case-a");
    let team = w.api.get("/supervisees", &w.org.sup_n).await;
    let refs: Vec<&str> = items(&team)
        .iter()
        .map(|s| s["case_ref"].as_str().unwrap())
        .collect();
    assert_eq!(refs, ["case-a", "case-b"]);
    // Filtering by another caseload's officer gives nothing, not their people.
    let other = w
        .api
        .get("/supervisees?officer_ref=off-c", &w.org.off_a)
        .await;
    ok(&other);
    assert!(items(&other).is_empty());

    // The responsible officer approves an absence, then cancels it.
    let x = w
        .api
        .post(
            &format!("/supervisees/{a}/exceptions"),
            &w.org.off_a,
            exception,
        )
        .await;
    ok(&x);
    assert_eq!(x.body["created_by"], "off-a");
    let xid = x.body["exception_id"].as_i64().unwrap();
    // Another officer cannot cancel it, and gets the plain 404.
    let c = w
        .api
        .post(
            &format!("/supervisees/{a}/exceptions/{xid}/cancel"),
            &w.org.off_c,
            json!({}),
        )
        .await;
    assert_problem(&c, 404);
    let c = w
        .api
        .post(
            &format!("/supervisees/{a}/exceptions/{xid}/cancel"),
            &w.org.off_a,
            json!({}),
        )
        .await;
    ok(&c);
    assert_eq!(c.body["status"], "cancelled");
    assert_eq!(c.body["cancelled_by"], "off-a");
    let ends: DateTime<Utc> = serde_json::from_value(c.body["ends_at"].clone()).unwrap();
    let starts: DateTime<Utc> = serde_json::from_value(c.body["starts_at"].clone()).unwrap();
    assert!(ends > starts && ends - starts <= TimeDelta::milliseconds(1));
    assert_problem(
        &w.api
            .post(
                &format!("/supervisees/{a}/exceptions/{xid}/cancel"),
                &w.org.off_a,
                json!({}),
            )
            .await,
        409,
    );
    assert_eq!(audit::count(&w.db, "exception.cancel").await.unwrap(), 1);

    // Zones: an officer sees only zones their supervisees' rules use.
    let admin = &w.org.admin;
    let z = w
        .api
        .post(
            "/zones",
            admin,
            json!({"zone_ref": "victim-home", "name": "Exclusion V",
                   "geojson": square(-0.12, 51.5, 0.01)}),
        )
        .await;
    ok(&z);
    let zid = z.body["id"].as_i64().unwrap();
    let path = format!("/zones/{zid}");
    let before = w.api.get(&path, &w.org.off_a).await;
    assert_problem(&before, 404);
    assert_eq!(
        before.text,
        w.api.get("/zones/987654321", &w.org.off_a).await.text
    );
    let rule = w
        .api
        .post(
            &format!("/supervisees/{a}/rules"),
            admin,
            json!({"role": "exclusion", "zone_id": zid}),
        )
        .await;
    ok(&rule);
    let rid = rule.body["rule_id"].as_i64().unwrap();
    ok(&w.api.get(&path, &w.org.off_a).await);
    ok(&w.api.get(&format!("{path}/versions"), &w.org.sup_n).await);
    assert_problem(&w.api.get(&path, &w.org.off_c).await, 404);
    assert_problem(
        &w.api.get(&format!("{path}/versions/1"), &w.org.off_c).await,
        404,
    );
    let listed = w.api.get("/zones", &w.org.off_c).await;
    ok(&listed);
    assert!(items(&listed).is_empty());
    let listed = w.api.get("/zones", &w.org.off_a).await;
    assert_eq!(items(&listed).len(), 1);
    // Once the rule is retired the zone is out of sight again.
    ok(&w
        .api
        .post(
            &format!("/supervisees/{a}/rules/{rid}/retire"),
            admin,
            json!({}),
        )
        .await);
    assert_problem(&w.api.get(&path, &w.org.off_a).await, 404);
}

async fn roles_are_enforced(backend: Backend) {
    let w = world(backend).await;
    let org = &w.org;
    let zone = json!({"zone_ref": "z", "name": "Z", "geojson": square(-0.12, 51.5, 0.01)});

    // Officers and supervisors do not configure.
    for t in [&org.off_a, &org.sup_n] {
        assert_problem(&w.api.post("/zones", t, zone.clone()).await, 403);
        assert_problem(
            &w.api
                .post(
                    "/supervisees",
                    t,
                    json!({"case_ref": "x", "time_zone": "UTC", "officer_ref": "off-a"}),
                )
                .await,
            403,
        );
        assert_problem(
            &w.api.post("/devices", t, json!({"device_id": "d"})).await,
            403,
        );
        assert_problem(
            &w.api
                .post(
                    &format!("/supervisees/{}/rules", org.case_a),
                    t,
                    json!({"role": "exclusion", "list_ref": "schools"}),
                )
                .await,
            403,
        );
        assert_problem(&w.api.get("/devices", t).await, 403);
        assert_problem(&w.api.get("/teams", t).await, 403);
    }
    assert_eq!(w.db.count("SELECT count(*) FROM zones").await, 0);

    // Auditors read the audit log, not people or zones.
    for path in [
        "/supervisees".to_owned(),
        format!("/supervisees/{}", org.case_a),
        format!("/supervisees/{}/rules", org.case_a),
        format!("/supervisees/{}/exceptions", org.case_a),
        "/zones".to_owned(),
        "/officers".to_owned(),
    ] {
        assert_problem(&w.api.get(&path, &org.auditor).await, 403);
    }

    // Officers list: supervisors see their own team, officers nothing.
    assert_problem(&w.api.get("/officers", &org.off_a).await, 403);
    let team = w.api.get("/officers", &org.sup_n).await;
    ok(&team);
    let mut refs: Vec<&str> = items(&team)
        .iter()
        .map(|o| o["officer_ref"].as_str().unwrap())
        .collect();
    refs.sort();
    assert_eq!(refs, ["off-a", "off-b", "sup-n"]);
    let all = w.api.get("/officers", &org.admin).await;
    assert_eq!(items(&all).len(), 4);

    // Without a token: 401.
    let r = w.api.call(Method::GET, "/supervisees", None, None).await;
    assert_problem(&r, 401);
}

async fn recorded_history_cannot_be_moved_to_another_caseload(backend: Backend) {
    let db = ApiDb::new(backend).await;
    let api = ApiServer::start(&db, ApiConfig::default()).await;
    let org = Org::create(&db).await;
    let now = api.clock.now();
    let start = now - TimeDelta::days(2);
    let key = assign_device(&db, "tag-h", org.case_a, start).await;
    insert_fixes(
        &db,
        key,
        start + TimeDelta::hours(1),
        TimeDelta::minutes(1),
        60,
    )
    .await;
    let aid: i64 = Q::new("SELECT assignment_id FROM device_assignments WHERE device_key = $1")
        .bind(key)
        .scalar(&db)
        .await
        .unwrap();
    // Ending A's assignment before the fixes, to hand them to B: refused.
    let back = api
        .post(
            &format!("/devices/tag-h/assignments/{aid}/end"),
            &org.admin,
            json!({"at": (start + TimeDelta::minutes(30)).to_rfc3339()}),
        )
        .await;
    assert_problem(&back, 422);
    assert_eq!(back.body["errors"][0]["field"], "at");
    // Ending it now is fine; assigning B from before the fixes is not.
    let ok = api
        .post(
            &format!("/devices/tag-h/assignments/{aid}/end"),
            &org.admin,
            json!({"at": now.to_rfc3339()}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let steal = api
        .post(
            "/devices/tag-h/assignments",
            &org.admin,
            json!({"supervisee_id": org.case_b, "valid_from": start.to_rfc3339()}),
        )
        .await;
    assert!(steal.status.is_client_error(), "{}", steal.text);
    // A's officer still has the whole recorded track; B's has none of it.
    let q = format!(
        "from={}&to={}",
        start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let a = api
        .get(
            &format!("/supervisees/{}/track?{q}", org.case_a),
            &org.off_a,
        )
        .await;
    assert_eq!(a.body["fixes"].as_array().unwrap().len(), 60, "{}", a.text);
    let b = api
        .get(
            &format!("/supervisees/{}/track?{q}", org.case_b),
            &org.off_b,
        )
        .await;
    assert_eq!(
        b.body["fixes"].as_array().map_or(0, |f| f.len()),
        0,
        "{}",
        b.text
    );
}

async fn officers_approve_bounded_absences_only(backend: Backend) {
    let db = ApiDb::new(backend).await;
    let api = ApiServer::start(&db, ApiConfig::default()).await;
    let org = Org::create(&db).await;
    let now = api.clock.now();
    let path = format!("/supervisees/{}/exceptions", org.case_a);
    let body = |from: chrono::DateTime<chrono::Utc>, days: i64| {
        json!({"starts_at": from.to_rfc3339(), "ends_at": (from + TimeDelta::days(days)).to_rfc3339(),
               "reason": "hospital"})
    };
    let ok = api
        .post(&path, &org.off_a, body(now + TimeDelta::hours(1), 2))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let forever = api.post(&path, &org.off_a, body(now, 3650)).await;
    assert_problem(&forever, 422);
    assert_eq!(forever.body["errors"][0]["field"], "ends_at");
    let retro = api
        .post(&path, &org.off_a, body(now - TimeDelta::days(10), 2))
        .await;
    assert_problem(&retro, 422);
    assert_eq!(retro.body["errors"][0]["field"], "starts_at");
    // An administrator may set a longer one.
    let long = api
        .post(&path, &org.admin, body(now + TimeDelta::days(1), 60))
        .await;
    assert_eq!(long.status, 200, "{}", long.text);
    // Cancelling records who and when on the exception itself.
    let id = ok.body["exception_id"].as_i64().unwrap();
    let c = api
        .post(&format!("{path}/{id}/cancel"), &org.off_a, json!({}))
        .await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.body["cancelled_by"], "off-a");
    assert_eq!(c.body["status"], "cancelled");
}

async fn a_whole_provisioning_document_loads_through_the_api(backend: Backend) {
    let db = ApiDb::new(backend).await;
    let api = ApiServer::start(&db, ApiConfig::default()).await;
    let org = Org::create(&db).await;
    let doc = |geometry: Value| {
        json!({
            "supervisees": [{"case_ref": "P-1", "time_zone": "Europe/London", "officer": "off-a"}],
            "devices": [{"device_id": "prov-1", "report_interval_s": 30}],
            "zones": [{"zone_ref": "z1", "name": "Park", "geojson": geometry}],
            "rules": [{"supervisee": "P-1", "role": "exclusion", "zone": "z1"}],
            "assignments": [{"device": "prov-1", "supervisee": "P-1", "from": "2026-01-01T00:00:00Z"}]
        })
    };
    let circle = json!({"type": "Feature", "properties": {"radius_m": 150},
                        "geometry": {"type": "Point", "coordinates": [-0.1, 51.5]}});
    // Padding stands in for a large fleet: the route takes more than the
    // API's usual 2 MiB.
    let mut body = doc(circle.clone()).to_string().into_bytes();
    body.extend(std::iter::repeat_n(b' ', 3 * 1024 * 1024));
    let r = read(
        api.http
            .post(format!("{}/scenario", api.base))
            .bearer_auth(&org.admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["supervisees_created"], 1);
    assert_eq!(r.body["zones_created"], 1);
    // The officer named in the document now sees the person.
    let mine = api.get("/supervisees?q=P-", &org.off_a).await;
    assert_eq!(mine.body["items"][0]["case_ref"], "P-1", "{}", mine.text);
    assert_eq!(audit::count(&db, "scenario.load").await.unwrap(), 1);

    let bowtie = json!({"type": "Polygon", "coordinates":
        [[[0.0, 51.0], [0.01, 51.01], [0.01, 51.0], [0.0, 51.01], [0.0, 51.0]]]});
    let r = api.post("/scenario", &org.admin, doc(bowtie)).await;
    assert_problem(&r, 422);
    assert_eq!(r.body["errors"][0]["field"], "zones[0] (z1)", "{}", r.text);
    assert_problem(
        &api.post("/scenario", &org.off_a, doc(circle.clone())).await,
        403,
    );
    let text = read(
        api.http
            .post(format!("{}/scenario", api.base))
            .bearer_auth(&org.admin)
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_problem(&text, 415);
    let broken = read(
        api.http
            .post(format!("{}/scenario", api.base))
            .bearer_auth(&org.admin)
            .header("content-type", "application/json")
            .body("{\"supervisees\": [")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_problem(&broken, 400);
}
