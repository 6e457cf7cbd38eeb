//! The authorization matrix: every operation in the OpenAPI document, called
//! by every role. The policy below is the specification; the test fails if
//! an operation is missing from it (a new endpoint must declare who may use
//! it), if a role outside the policy gets anything but 403, or if a role
//! inside it is refused.
//!
//! Every test runs on both backends, as `name::pg` and `name::sqlite`
//! (see `common::api`).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{TimeDelta, Utc};
use reqwest::Method;
use serde_json::json;

use common::api::*;
use waypoint::api::ApiConfig;

const O: &str = "officer";
const S: &str = "supervisor";
const A: &str = "admin";
const U: &str = "auditor";

/// Who may call each operation.
fn policy() -> BTreeMap<&'static str, &'static [&'static str]> {
    let casework: &[&str] = &[O, S];
    let readers: &[&str] = &[O, S, A];
    let admin: &[&str] = &[A];
    BTreeMap::from([
        // Alerts and everything that reveals location or behaviour.
        ("list_alerts", casework),
        ("alert_detail", casework),
        ("acknowledge", casework),
        ("resolve", casework),
        ("add_note", casework),
        ("create_ticket", casework),
        ("alert_stream", casework),
        ("list_positions", casework),
        ("supervisee_position", casework),
        ("track", casework),
        ("export", casework),
        ("compliance", casework),
        // Records officers need and admins maintain.
        ("list_supervisees", readers),
        ("get_supervisee", readers),
        ("list_zones", readers),
        ("get_zone", readers),
        ("list_versions", readers),
        ("get_version", readers),
        ("list_rules", readers),
        ("list_exceptions", readers),
        // Officers approve absences for their own supervisees.
        ("create_exception", readers),
        ("cancel_exception", readers),
        ("list_officers", &[A, S]),
        // Configuration.
        ("create_supervisee", admin),
        ("patch_supervisee", admin),
        ("create_officer", admin),
        ("patch_officer", admin),
        ("list_teams", admin),
        ("create_team", admin),
        ("patch_team", admin),
        ("list_devices", admin),
        ("get_device", admin),
        ("create_device", admin),
        ("patch_device", admin),
        ("revoke_device", admin),
        ("assign_device", admin),
        ("end_assignment", admin),
        ("pair_device", admin),
        ("end_pairing", admin),
        ("create_zone", admin),
        ("put_geometry", admin),
        ("retire_zone", admin),
        ("create_rule", admin),
        ("retire_rule", admin),
        ("load_scenario", admin),
        // The trail, for auditors only.
        ("query_audit", &[U]),
        // Signing in and out: everyone.
        ("create_session", &[O, S, A, U]),
        ("get_session", &[O, S, A, U]),
        ("delete_session", &[O, S, A, U]),
    ])
}

both!(every_role_against_every_operation);

async fn every_role_against_every_operation(backend: Backend) {
    let db = ApiDb::new(backend).await;
    let api = ApiServer::start(&db, ApiConfig::default()).await;
    let org = Org::create(&db).await;
    let now = Utc::now();
    let dev = assign_device(&db, "tag-a", org.case_a, now - TimeDelta::days(3)).await;
    let alert = insert_alert(&db, dev, org.case_a, "strap_tamper", "critical", now).await;
    // Path parameters point at things officer off-a may see, so an allowed
    // role meets real data, not only a 404.
    let ids = BTreeMap::from([
        ("id", org.case_a.to_string()),
        ("supervisee_id", org.case_a.to_string()),
        ("alert_id", alert.to_string()),
        ("device_id", "tag-a".to_owned()),
    ]);
    let tokens = [
        (O, org.off_a.as_str()),
        (S, org.sup_n.as_str()),
        (A, org.admin.as_str()),
        (U, org.auditor.as_str()),
    ];

    let doc = api
        .call(Method::GET, "/openapi.json", None, None)
        .await
        .body;
    let policy = policy();
    let mut documented = BTreeSet::new();
    let mut cells = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            documented.insert(id.to_owned());
            let allowed = policy
                .get(id)
                .unwrap_or_else(|| panic!("{id} ({method} {path}) has no entry in the policy"));
            let mut url: String = path
                .split('/')
                .map(
                    |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(name) => ids.get(name).cloned().unwrap_or_else(|| "1".into()),
                        None => seg.to_owned(),
                    },
                )
                .collect::<Vec<_>>()
                .join("/");
            // Required query parameters get plausible values.
            let required: Vec<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query" && p["required"] == true)
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            if !required.is_empty() {
                let q: Vec<String> = required
                    .iter()
                    .map(|n| match *n {
                        "from" => "from=2026-01-01T00:00:00Z".to_owned(),
                        "to" => "to=2026-01-02T00:00:00Z".to_owned(),
                        other => format!("{other}=1"),
                    })
                    .collect();
                url = format!("{url}?{}", q.join("&"));
            }
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = matches!(m, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
            for (role, tok) in tokens {
                let r = if id == "alert_stream" {
                    // A stream stays open: only its status line matters.
                    let resp = api
                        .http
                        .get(format!("{}{url}", api.base))
                        .bearer_auth(tok)
                        .send()
                        .await
                        .unwrap();
                    (resp.status().as_u16(), String::new())
                } else {
                    let r = api.call(m.clone(), &url, Some(tok), body.clone()).await;
                    (r.status.as_u16(), r.text)
                };
                cells += 1;
                if allowed.contains(&role) {
                    assert!(
                        ![401, 403].contains(&r.0) && r.0 < 500,
                        "{role} must be allowed {id} ({method} {url}): {} {}",
                        r.0,
                        r.1
                    );
                } else {
                    assert_eq!(
                        r.0, 403,
                        "{role} must be refused {id} ({method} {url}): {}",
                        r.1
                    );
                }
            }
        }
    }
    let declared: BTreeSet<String> = policy.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        declared, documented,
        "policy and document list different operations"
    );
    println!("authorization matrix ({backend:?}): {cells} role x operation cells");
}
