//! Officer API: the alert workflow from queue to resolution, decisions and
//! the audit trail, the live stream (delivery, scoping, resumption,
//! tickets), escalation, and the authorization matrix for alert endpoints.
//!
//! Every test runs on both backends, as `name::pg` and `name::sqlite`
//! (see `common::api`).

mod common;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use common::api::*;
use waypoint::api::escalation::escalate_due;
use waypoint::api::ApiConfig;
use waypoint::clock::Clock;
use waypoint::store::sql::Q;

both!(
    workflow_from_alert_to_resolution_is_recorded_and_audited,
    outside_the_caseload_is_indistinguishable_from_nonexistent,
    supervisor_sees_the_team_and_roles_are_enforced,
    list_filters_and_cursor_pagination_walk_every_alert_once,
    live_stream_delivers_scoped_events_and_resumes_without_loss,
    expired_tickets_do_not_open_streams,
    unacknowledged_alerts_escalate_once_to_the_supervisor_and_are_recorded,
    malformed_and_oversize_requests_get_4xx_problems,
    an_open_stream_stops_when_its_token_is_revoked,
    a_team_supervisor_who_is_not_a_member_sees_the_team_and_its_escalations,
    out_of_range_values_are_4xx_never_5xx,
);

struct World {
    db: ApiDb,
    api: ApiServer,
    org: Org,
    dev_a: i64,
    dev_c: i64,
}

async fn world(backend: Backend) -> World {
    let db = ApiDb::new(backend).await;
    let api = ApiServer::start(&db, ApiConfig::default()).await;
    let org = Org::create(&db).await;
    let from = Utc::now() - TimeDelta::days(10);
    let dev_a = assign_device(&db, "tag-a", org.case_a, from).await;
    let dev_c = assign_device(&db, "tag-c", org.case_c, from).await;
    World {
        db,
        api,
        org,
        dev_a,
        dev_c,
    }
}

async fn workflow_from_alert_to_resolution_is_recorded_and_audited(backend: Backend) {
    let w = world(backend).await;
    let now = w.api.clock.now();
    let id = insert_alert(
        &w.db,
        w.dev_a,
        w.org.case_a,
        "exclusion_zone_entry",
        "critical",
        now,
    )
    .await;

    // The officer's queue shows it; another team's officer's does not.
    let q = w.api.get("/alerts?status=open", &w.org.off_a).await;
    assert_eq!(q.status, 200, "{}", q.text);
    let items = q.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["alert_id"], id);
    assert_eq!(items[0]["case_ref"], "case-a");
    let other = w.api.get("/alerts", &w.org.off_c).await;
    assert_eq!(other.body["items"].as_array().unwrap().len(), 0);

    // Detail explains itself with evidence; reading it is audited with the reason.
    let d = w
        .api
        .http
        .get(format!("{}/alerts/{id}", w.api.base))
        .bearer_auth(&w.org.off_a)
        .header("X-Audit-Reason", "morning review")
        .send()
        .await
        .unwrap();
    let d = read(d).await;
    assert_eq!(d.status, 200, "{}", d.text);
    assert_eq!(d.body["explanation"], "test alert");
    assert_eq!(d.body["evidence"][0]["observation"], "confirmed");
    let row =
        Q::new("SELECT actor, reason FROM audit_log WHERE action = 'alert.read' AND alert_id = $1")
            .bind(id)
            .fetch_one(&w.db)
            .await
            .unwrap();
    assert_eq!(
        (
            row.get::<String>("actor"),
            row.get::<Option<String>>("reason")
        ),
        ("off-a".to_owned(), Some("morning review".to_owned()))
    );

    // Acknowledge, then resolving needs a known outcome and a note.
    let ack = w
        .api
        .post(
            &format!("/alerts/{id}/acknowledge"),
            &w.org.off_a,
            json!({}),
        )
        .await;
    assert_eq!(ack.status, 200, "{}", ack.text);
    assert_eq!(ack.body["status"], "acknowledged");
    let again = w
        .api
        .post(
            &format!("/alerts/{id}/acknowledge"),
            &w.org.off_a,
            json!({}),
        )
        .await;
    assert_problem(&again, 409);

    let no_note = w
        .api
        .post(
            &format!("/alerts/{id}/resolve"),
            &w.org.off_a,
            json!({"outcome": "contacted_supervisee", "note": "  "}),
        )
        .await;
    assert_problem(&no_note, 422);
    assert_eq!(no_note.body["errors"][0]["field"], "note");
    let bad_outcome = w
        .api
        .post(
            &format!("/alerts/{id}/resolve"),
            &w.org.off_a,
            json!({"outcome": "arrest", "note": "x"}),
        )
        .await;
    assert_problem(&bad_outcome, 422);
    assert_eq!(bad_outcome.body["errors"][0]["field"], "outcome");

    let note = w
        .api
        .post(
            &format!("/alerts/{id}/notes"),
            &w.org.off_a,
            json!({"note": "called, no answer"}),
        )
        .await;
    assert_eq!(note.status, 200, "{}", note.text);
    let done = w
        .api
        .post(
            &format!("/alerts/{id}/resolve"),
            &w.org.off_a,
            json!({"outcome": "contacted_supervisee", "note": "spoke to them; was collecting a parcel"}),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["status"], "resolved");
    let actions: Vec<&str> = done.body["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["acknowledge", "note", "resolve"]);
    assert_eq!(done.body["actions"][2]["actor"], "off-a");

    // Every decision is in the audit log, and the log refuses edits.
    for action in ["alert.acknowledge", "alert.note", "alert.resolve"] {
        assert_eq!(
            waypoint::api::audit::count(&w.db, action).await.unwrap(),
            1,
            "{action}"
        );
    }
    // Both schemas refuse these with a trigger.
    let tamper = Q::new("DELETE FROM audit_log").execute(&w.db).await;
    assert!(tamper.is_err(), "audit_log must be append-only");
    let tamper = Q::new("UPDATE audit_log SET actor = 'x'")
        .execute(&w.db)
        .await;
    assert!(tamper.is_err(), "audit_log must be append-only");
    // TRUNCATE bypasses row triggers; PostgreSQL has a statement trigger
    // for it. SQLite has no TRUNCATE (its DELETE without WHERE, refused
    // above, is the equivalent).
    if let Some(pg) = w.db.pg() {
        let tamper = sqlx::query("TRUNCATE audit_log").execute(&pg.pool).await;
        assert!(tamper.is_err(), "audit_log must refuse TRUNCATE");
    }

    // The auditor sees the trail; nobody else may.
    let trail = w
        .api
        .get("/audit?supervisee_id=".to_owned().as_str(), &w.org.auditor)
        .await;
    assert_problem(&trail, 422);
    let trail = w
        .api
        .get(
            &format!("/audit?supervisee_id={}", w.org.case_a),
            &w.org.auditor,
        )
        .await;
    assert_eq!(trail.status, 200, "{}", trail.text);
    let names: Vec<&str> = trail.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "alert.read",
            "alert.acknowledge",
            "alert.note",
            "alert.resolve"
        ]
    );
    assert_problem(&w.api.get("/audit", &w.org.off_a).await, 403);
    assert_problem(&w.api.get("/audit", &w.org.admin).await, 403);
}

async fn outside_the_caseload_is_indistinguishable_from_nonexistent(backend: Backend) {
    let w = world(backend).await;
    let now = w.api.clock.now();
    let id = insert_alert(
        &w.db,
        w.dev_c,
        w.org.case_c,
        "strap_tamper",
        "critical",
        now,
    )
    .await;
    let missing = id + 1000;
    let calls: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/alerts/{}".into(), None),
        (
            Method::POST,
            "/alerts/{}/acknowledge".into(),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/alerts/{}/resolve".into(),
            Some(json!({"outcome": "no_action_needed", "note": "n"})),
        ),
        (
            Method::POST,
            "/alerts/{}/notes".into(),
            Some(json!({"note": "n"})),
        ),
    ];
    for (m, path, body) in calls {
        let theirs = w
            .api
            .call(
                m.clone(),
                &path.replace("{}", &id.to_string()),
                Some(&w.org.off_a),
                body.clone(),
            )
            .await;
        let none = w
            .api
            .call(
                m.clone(),
                &path.replace("{}", &missing.to_string()),
                Some(&w.org.off_a),
                body.clone(),
            )
            .await;
        assert_problem(&theirs, 404);
        assert_eq!(theirs.text, none.text, "{m} {path}");
        // The supervisor of the *other* team cannot see it either...
        let sup = w
            .api
            .call(
                m.clone(),
                &path.replace("{}", &id.to_string()),
                Some(&w.org.sup_n),
                body.clone(),
            )
            .await;
        assert_eq!(sup.text, none.text, "{m} {path}");
    }
    // ...and nothing was changed or audited by those attempts.
    let status: String = Q::new("SELECT status FROM alerts WHERE alert_id = $1")
        .bind(id)
        .scalar(&w.db)
        .await
        .unwrap();
    assert_eq!(status, "open");
    assert_eq!(w.db.count("SELECT count(*) FROM audit_log").await, 0);
}

async fn supervisor_sees_the_team_and_roles_are_enforced(backend: Backend) {
    let w = world(backend).await;
    let now = w.api.clock.now();
    let dev_b = assign_device(&w.db, "tag-b", w.org.case_b, now - TimeDelta::days(1)).await;
    insert_alert(
        &w.db,
        w.dev_a,
        w.org.case_a,
        "curfew_violation",
        "high",
        now,
    )
    .await;
    insert_alert(&w.db, dev_b, w.org.case_b, "no_signal", "medium", now).await;
    insert_alert(&w.db, w.dev_c, w.org.case_c, "no_signal", "medium", now).await;
    let cases = |r: &Reply| -> Vec<String> {
        let mut v: Vec<String> = r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["case_ref"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        cases(&w.api.get("/alerts", &w.org.sup_n).await),
        ["case-a", "case-b"]
    );
    assert_eq!(cases(&w.api.get("/alerts", &w.org.off_a).await), ["case-a"]);
    assert_eq!(cases(&w.api.get("/alerts", &w.org.off_c).await), ["case-c"]);
    // Admins configure; they do not read alerts. Auditors read only the trail.
    assert_problem(&w.api.get("/alerts", &w.org.admin).await, 403);
    assert_problem(&w.api.get("/alerts", &w.org.auditor).await, 403);
    // No token, a wrong token, a malformed header.
    let anon = w.api.call(Method::GET, "/alerts", None, None).await;
    assert_problem(&anon, 401);
    assert!(anon.headers.get("www-authenticate").is_some());
    assert_problem(&w.api.get("/alerts", "wpt_not-a-token").await, 401);
    // A revoked token stops at once.
    let t = token(&w.db, waypoint::api::auth::Role::Officer, Some("off-a")).await;
    assert_eq!(w.api.get("/alerts", &t).await.status, 200);
    Q::new("UPDATE api_tokens SET revoked_at = now() WHERE secret_hash = $1")
        .bind(waypoint::api::auth::hash_secret(&t))
        .execute(&w.db)
        .await
        .unwrap();
    assert_problem(&w.api.get("/alerts", &t).await, 401);
}

async fn list_filters_and_cursor_pagination_walk_every_alert_once(backend: Backend) {
    let w = world(backend).await;
    let t0 = w.api.clock.now() - TimeDelta::hours(2);
    let mut ids = Vec::new();
    for i in 0..25 {
        let (kind, sev) = if i % 5 == 0 {
            ("strap_tamper", "critical")
        } else {
            ("battery_low", "low")
        };
        // Same raised_at for pairs: the cursor must break ties by id.
        let at = t0 + TimeDelta::minutes(i / 2);
        ids.push(insert_alert(&w.db, w.dev_a, w.org.case_a, kind, sev, at).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/alerts?limit=7".to_owned(),
            Some(c) => format!("/alerts?limit=7&cursor={c}"),
        };
        let r = w.api.get(&path, &w.org.off_a).await;
        assert_eq!(r.status, 200, "{}", r.text);
        for a in r.body["items"].as_array().unwrap() {
            seen.push(a["alert_id"].as_i64().unwrap());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, each exactly once");

    let crit = w
        .api
        .get("/alerts?severity=critical&kind=strap_tamper", &w.org.off_a)
        .await;
    assert_eq!(crit.body["items"].as_array().unwrap().len(), 5);
    let window = w
        .api
        .get(
            &format!(
                "/alerts?from={}&to={}",
                (t0 + TimeDelta::minutes(3)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                (t0 + TimeDelta::minutes(5)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
            .replace('+', "%2B"),
            &w.org.off_a,
        )
        .await;
    assert_eq!(window.status, 200, "{}", window.text);
    assert_eq!(window.body["items"].as_array().unwrap().len(), 4);

    // Bad filters name the parameter; none is a 5xx.
    for (q, field) in [
        ("status=closed", "status"),
        ("kind=teleport", "kind"),
        ("confidence=sure", "confidence"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("cursor=zzz", "cursor"),
    ] {
        let r = w.api.get(&format!("/alerts?{q}"), &w.org.off_a).await;
        assert_problem(&r, 422);
        assert_eq!(r.body["errors"][0]["field"], field, "{q}");
    }
    for q in [
        "supervisee_id=abc",
        "from=yesterday",
        "bogus=1",
        "status='%20OR%201=1--",
    ] {
        let r = w.api.get(&format!("/alerts?{q}"), &w.org.off_a).await;
        assert!(r.status.is_client_error(), "{q}: {}", r.text);
        assert_eq!(r.content_type, "application/problem+json");
    }
}

async fn ticket(api: &ApiServer, token: &str) -> String {
    let r = api.post("/stream/tickets", token, json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["ticket"].as_str().unwrap().to_owned()
}

async fn live_stream_delivers_scoped_events_and_resumes_without_loss(backend: Backend) {
    let w = world(backend).await;
    let now = w.api.clock.now();
    // Opened with a ticket (as a browser's EventSource would).
    let t = ticket(&w.api, &w.org.off_a).await;
    let resp = w
        .api
        .http
        .get(format!("{}/alerts/stream?ticket={t}", w.api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // The ticket worked once; it cannot open a second stream.
    let reuse = read(
        w.api
            .http
            .get(format!("{}/alerts/stream?ticket={t}", w.api.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_problem(&reuse, 401);

    // Another caseload's alert is not delivered; ours are, in order.
    insert_alert(
        &w.db,
        w.dev_c,
        w.org.case_c,
        "strap_tamper",
        "critical",
        now,
    )
    .await;
    let a1 = insert_alert(
        &w.db,
        w.dev_a,
        w.org.case_a,
        "strap_tamper",
        "critical",
        now,
    )
    .await;
    // No wake-up call: PostgreSQL's NOTIFY (SQLite: the feed's poll)
    // reaches the live feed.
    let first = sse_events(resp, 1).await;
    assert_eq!(first[0].1, "raised");
    assert_eq!(first[0].2["alert_id"], a1);
    assert!(first[0].2["alert"].get("details").is_none());
    assert_eq!(first[0].2["alert"]["case_ref"], "case-a");
    let last_id: i64 = first[0].0.parse().unwrap();

    // While disconnected: an acknowledgement and a new alert. A reconnect
    // with Last-Event-ID replays both from the log.
    let ack = w
        .api
        .post(
            &format!("/alerts/{a1}/acknowledge"),
            &w.org.off_a,
            json!({}),
        )
        .await;
    assert_eq!(ack.status, 200);
    let a2 = insert_alert(&w.db, w.dev_a, w.org.case_a, "battery_low", "low", now).await;
    let resumed = w
        .api
        .http
        .get(format!("{}/alerts/stream", w.api.base))
        .bearer_auth(&w.org.off_a)
        .header("Last-Event-ID", last_id.to_string())
        .send()
        .await
        .unwrap();
    let ev = sse_events(resumed, 2).await;
    assert_eq!(
        (ev[0].1.as_str(), &ev[0].2["alert_id"]),
        ("acknowledged", &json!(a1))
    );
    assert_eq!(
        (ev[1].1.as_str(), &ev[1].2["alert_id"]),
        ("raised", &json!(a2))
    );
    assert!(ev[0].0.parse::<i64>().unwrap() > last_id);

    // The supervisor of the team gets the team's live events too.
    let sup = w
        .api
        .http
        .get(format!(
            "{}/alerts/stream?last_event_id={last_id}",
            w.api.base
        ))
        .bearer_auth(&w.org.sup_n)
        .send()
        .await
        .unwrap();
    assert_eq!(sse_events(sup, 2).await.len(), 2);

    // Auth failures are problems, not streams.
    let bad = read(
        w.api
            .http
            .get(format!("{}/alerts/stream?ticket=wps_forged", w.api.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_problem(&bad, 401);
    let admin_t = w.api.post("/stream/tickets", &w.org.admin, json!({})).await;
    assert_problem(&admin_t, 403);
}

async fn expired_tickets_do_not_open_streams(backend: Backend) {
    let w = world(backend).await;
    let t = ticket(&w.api, &w.org.off_a).await;
    w.api.clock.advance(TimeDelta::seconds(31));
    let r = read(
        w.api
            .http
            .get(format!("{}/alerts/stream?ticket={t}", w.api.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_problem(&r, 401);
}

async fn unacknowledged_alerts_escalate_once_to_the_supervisor_and_are_recorded(backend: Backend) {
    let w = world(backend).await;
    let now = w.api.clock.now();
    let a = insert_alert(
        &w.db,
        w.dev_a,
        w.org.case_a,
        "exclusion_zone_entry",
        "critical",
        now,
    )
    .await;
    let c = insert_alert(
        &w.db,
        w.dev_c,
        w.org.case_c,
        "strap_tamper",
        "critical",
        now,
    )
    .await;
    let low = insert_alert(&w.db, w.dev_a, w.org.case_a, "battery_low", "low", now).await;
    let acked = insert_alert(&w.db, w.dev_a, w.org.case_a, "gps_loss", "critical", now).await;
    let r = w
        .api
        .post(
            &format!("/alerts/{acked}/acknowledge"),
            &w.org.off_a,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200);

    // Not yet due.
    w.api.clock.advance(TimeDelta::minutes(4));
    assert_eq!(escalate_due(&w.api.state).await.unwrap(), 0);
    // Critical limit (5 min) passed: the two open critical alerts escalate.
    w.api.clock.advance(TimeDelta::minutes(2));
    assert_eq!(escalate_due(&w.api.state).await.unwrap(), 2);
    assert_eq!(escalate_due(&w.api.state).await.unwrap(), 0, "once only");

    let d = w.api.get(&format!("/alerts/{a}"), &w.org.sup_n).await;
    assert_eq!(d.status, 200, "{}", d.text);
    assert_eq!(d.body["escalations"][0]["to_officer_ref"], "sup-n");
    assert!(d.body["escalated_at"].is_string());
    // Team south has no supervisor: the on-call group is named.
    let d = w.api.get(&format!("/alerts/{c}"), &w.org.off_c).await;
    assert_eq!(d.body["escalations"][0]["to_group"], "on-call");
    // Escalation notified people; it did not touch the alert's status.
    assert_eq!(d.body["status"], "open");
    let low_d = w.api.get(&format!("/alerts/{low}"), &w.org.off_a).await;
    assert!(low_d.body["escalations"].as_array().unwrap().is_empty());
    // The escalation is in the alert-event log (the stream and MQTT carry it).
    assert_eq!(
        w.db.count("SELECT count(*) FROM alert_events WHERE event_type = 'escalated'")
            .await,
        2
    );
}

async fn malformed_and_oversize_requests_get_4xx_problems(backend: Backend) {
    let w = world(backend).await;
    let now = w.api.clock.now();
    let id = insert_alert(
        &w.db,
        w.dev_a,
        w.org.case_a,
        "strap_tamper",
        "critical",
        now,
    )
    .await;
    let url = format!("{}/alerts/{id}/notes", w.api.base);
    let send = |body: Vec<u8>, ct: &'static str| {
        w.api
            .http
            .post(&url)
            .bearer_auth(&w.org.off_a)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    assert_problem(
        &read(
            send(b"{\"note\":".to_vec(), "application/json")
                .await
                .unwrap(),
        )
        .await,
        400,
    );
    assert_problem(
        &read(send(b"note=x".to_vec(), "text/plain").await.unwrap()).await,
        415,
    );
    assert_problem(
        &read(
            send(b"{\"note\": 5}".to_vec(), "application/json")
                .await
                .unwrap(),
        )
        .await,
        422,
    );
    assert_problem(
        &read(
            send(b"{\"note\":\"x\",\"extra\":1}".to_vec(), "application/json")
                .await
                .unwrap(),
        )
        .await,
        422,
    );
    let mut big = b"{\"note\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 3 * 1024 * 1024));
    big.extend(b"\"}");
    assert_problem(
        &read(send(big, "application/json").await.unwrap()).await,
        413,
    );
    let long = "x".repeat(10_001);
    let r = w
        .api
        .post(
            &format!("/alerts/{id}/notes"),
            &w.org.off_a,
            json!({"note": long}),
        )
        .await;
    assert_problem(&r, 422);
    assert_problem(&w.api.get("/alerts/not-a-number", &w.org.off_a).await, 422);
    assert_problem(&w.api.get("/no/such/route", &w.org.off_a).await, 404);
    let huge_reason = read(
        w.api
            .http
            .get(format!("{}/alerts/{id}", w.api.base))
            .bearer_auth(&w.org.off_a)
            .header("X-Audit-Reason", "r".repeat(501))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_problem(&huge_reason, 422);
    assert_eq!(huge_reason.body["errors"][0]["field"], "X-Audit-Reason");
}

async fn an_open_stream_stops_when_its_token_is_revoked(backend: Backend) {
    let db = ApiDb::new(backend).await;
    let api = ApiServer::start(
        &db,
        ApiConfig {
            stream_recheck: Duration::from_millis(300),
            ..ApiConfig::default()
        },
    )
    .await;
    let org = Org::create(&db).await;
    let t = token(&db, waypoint::api::auth::Role::Officer, Some("off-a")).await;
    let resp = api
        .http
        .get(format!("{}/alerts/stream", api.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    Q::new("UPDATE api_tokens SET revoked_at = now() WHERE secret_hash = $1")
        .bind(waypoint::api::auth::hash_secret(&t))
        .execute(&db)
        .await
        .unwrap();
    // The server ends the stream at its next re-check; an alert raised
    // after that never reaches the revoked caller.
    let mut body = resp.bytes_stream();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "stream still open after its token was revoked"
    );
    drop(org);
}

async fn a_team_supervisor_who_is_not_a_member_sees_the_team_and_its_escalations(backend: Backend) {
    let w = world(backend).await;
    // sup-s supervises team south without being a member of it.
    let sup: i64 = Q::new(
        "INSERT INTO officers (officer_ref, display_name) VALUES ('sup-s', 'S') RETURNING officer_id",
    )
    .scalar(&w.db)
    .await
    .unwrap();
    Q::new("UPDATE teams SET supervisor_id = $1 WHERE team_id = $2")
        .bind(sup)
        .bind(w.org.team_south)
        .execute(&w.db)
        .await
        .unwrap();
    let sup_s = token(&w.db, waypoint::api::auth::Role::Supervisor, Some("sup-s")).await;
    let now = w.api.clock.now();
    let c = insert_alert(
        &w.db,
        w.dev_c,
        w.org.case_c,
        "strap_tamper",
        "critical",
        now,
    )
    .await;
    w.api.clock.advance(TimeDelta::minutes(6));
    assert_eq!(escalate_due(&w.api.state).await.unwrap(), 1);
    let d = w.api.get(&format!("/alerts/{c}"), &sup_s).await;
    assert_eq!(d.status, 200, "{}", d.text);
    assert_eq!(d.body["escalations"][0]["to_officer_ref"], "sup-s");
    // ...and nothing of team north.
    let a = insert_alert(
        &w.db,
        w.dev_a,
        w.org.case_a,
        "strap_tamper",
        "critical",
        now,
    )
    .await;
    assert_problem(&w.api.get(&format!("/alerts/{a}"), &sup_s).await, 404);
}

async fn out_of_range_values_are_4xx_never_5xx(backend: Backend) {
    let w = world(backend).await;
    for q in [
        "from=-5000-01-01T00:00:00Z",
        "to=+200000-01-01T00:00:00Z",
        "cursor=-8000000000000000000_1",
        "cursor=9223372036854775807_9223372036854775807",
        "supervisee_id=9223372036854775807",
    ] {
        let r = w
            .api
            .get(&format!("/alerts?{}", q.replace('+', "%2B")), &w.org.off_a)
            .await;
        assert!(
            r.status.is_client_error() || r.status == 200,
            "{q}: {}",
            r.text
        );
        assert_eq!(r.status == 200, r.content_type == "application/json", "{q}");
    }
    // Refused on both backends: a time PostgreSQL cannot hold must not
    // become an empty page where the database (SQLite, times as text)
    // happens to accept it.
    let r = w
        .api
        .get("/audit?from=-5000-01-01T00:00:00Z", &w.org.auditor)
        .await;
    assert!(r.status.is_client_error(), "{backend:?}: {}", r.text);
}
