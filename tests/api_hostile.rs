//! The officer API under hostile input (issue 8).
//!
//! 1. Injection and oversize values on every parameter of every operation,
//!    driven by the OpenAPI document: each query, path and header
//!    parameter, and each top-level property of a JSON body, gets every
//!    payload below. Nothing may answer 5xx; refusals are problem+json
//!    without SQL or stack text; an answer that succeeds applies the value
//!    literally (a `%` prefix matches nothing) and shows an officer nothing
//!    of another officer's caseload; afterwards every table is still there
//!    with the rows it had.
//! 2. Brute force on every credential path (bearer token, session cookie,
//!    stream ticket, `POST /session`) is cut off per client address with
//!    429 and `Retry-After`, without slowing other clients or credentials
//!    that already worked (see `waypoint::api::limit`).
//! 3. The authorization matrix belongs to this suite too; it lives in
//!    `tests/api_matrix.rs` (`cargo test --test api_matrix`), which CI
//!    already runs on both backends.
//!
//! Every test runs on both backends, as `name::pg` and `name::sqlite`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use common::api::*;
use waypoint::api::limit::AuthLimits;
use waypoint::api::ApiConfig;
use waypoint::store::sql::Q;

/// One megabyte: over every field limit, under the 2 MB body limit.
const MB: usize = 1 << 20;

/// The values tried on every parameter.
fn payloads() -> Vec<(&'static str, String)> {
    vec![
        ("quote-or", "' OR '1'='1".into()),
        ("stacked-drop", "1; DROP TABLE alerts;--".into()),
        ("comment", "case-a'--".into()),
        // Comments for spaces: a refusal may echo the value, and the leak
        // check looks for `select ` in problems.
        (
            "union",
            "0/**/UNION/**/SELECT/**/secret_hash/**/FROM/**/api_tokens".into(),
        ),
        ("placeholder", "$1".into()),
        ("backslash", "\\".into()),
        ("nul", "a\0b".into()),
        ("unicode", "é😀\u{202e}ﷺ\u{feff}".into()),
        ("percent", "%".into()),
        ("underscore", "_".into()),
        ("glob", "*".into()),
        ("json", "{\"$ne\":null}".into()),
        ("negative", "-1".into()),
        ("i64-overflow", "9223372036854775808".into()),
        ("i64-min", "-9223372036854775808".into()),
        ("huge", "1e400".into()),
        ("nan", "NaN".into()),
        ("bad-date", "2026-13-45T25:61:61Z".into()),
        ("zero-date", "0000-00-00T00:00:00Z".into()),
        ("far-date", "+275760-09-13T00:00:00Z".into()),
        ("megabyte", "a".repeat(MB)),
    ]
}

/// Case and officer references that officer `off-a` must never be shown.
const FOREIGN: [&str; 4] = ["case-b", "case-c", "off-b", "off-c"];

/// Every table and its row count.
async fn census(db: &ApiDb) -> BTreeMap<String, i64> {
    let names: Vec<String> = Q::split(
        "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema()",
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&db.db)
    .await
    .expect("table list")
    .iter()
    .map(|r| r.get("name"))
    .collect();
    let mut out = BTreeMap::new();
    for n in names {
        let c: i64 = Q::new(format!("SELECT count(*) FROM \"{n}\""))
            .scalar(&db.db)
            .await
            .unwrap_or_else(|e| panic!("count {n}: {e}"));
        out.insert(n, c);
    }
    out
}

/// The schema of a request body, `$ref` resolved.
fn body_schema<'a>(doc: &'a Value, op: &'a Value) -> Option<&'a Value> {
    let s = &op["requestBody"]["content"]["application/json"]["schema"];
    match s["$ref"].as_str() {
        Some(r) => r
            .strip_prefix("#/")?
            .split('/')
            .try_fold(doc, |v, seg| v.get(seg)),
        None => s.is_object().then_some(s),
    }
}

/// Where a payload goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Query,
    Path,
    Header,
    Body,
}

/// One operation with the values that make an ordinary request to it.
struct Op {
    id: String,
    method: Method,
    path: String,
    /// Parameters: name, where, and whether it is a free-text filter
    /// (a value nothing matches must return nothing).
    params: Vec<(String, Slot, bool)>,
    required_query: Vec<String>,
}

fn operations(doc: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let mut params = Vec::new();
            let mut required_query = Vec::new();
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap().to_owned();
                let slot = match p["in"].as_str().unwrap() {
                    "query" => Slot::Query,
                    "path" => Slot::Path,
                    "header" => Slot::Header,
                    other => panic!("parameter in {other}"),
                };
                if slot == Slot::Query && p["required"] == true {
                    required_query.push(name.clone());
                }
                let filter = slot == Slot::Query
                    && p["schema"]["type"] == "string"
                    && p["schema"]["format"].is_null()
                    && !["cursor", "ticket", "format", "bucket"].contains(&name.as_str());
                params.push((name, slot, filter));
            }
            if let Some(props) = body_schema(doc, op)
                .and_then(|s| s["properties"].as_object())
                .filter(|_| path != "/scenario")
            {
                for name in props.keys() {
                    params.push((name.clone(), Slot::Body, false));
                }
            }
            ops.push(Op {
                id: op["operationId"].as_str().unwrap().to_owned(),
                method: Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                path: path.clone(),
                params,
                required_query,
            });
        }
    }
    ops
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Tally of what came back.
#[derive(Default)]
struct Tally {
    sent: usize,
    by_status: BTreeMap<u16, usize>,
    /// Refused by the HTTP layer before the API (request line or headers
    /// over hyper's limits): connection closed or a bare 4xx.
    http_layer: usize,
    /// Changes accepted with a payload stored literally, per operation
    /// parameter.
    stored: BTreeMap<String, usize>,
}

both!(injection_and_oversize_on_every_parameter);

async fn injection_and_oversize_on_every_parameter(backend: Backend) {
    let db = ApiDb::new(backend).await;
    // Wrong credentials are among the payloads (the sign-in token, the
    // stream ticket): the brute-force limit is tested on its own below.
    let cfg = ApiConfig {
        auth_limits: AuthLimits {
            per_client_burst: u32::MAX,
            global_burst: u32::MAX,
            ..AuthLimits::default()
        },
        ..ApiConfig::default()
    };
    let api = ApiServer::start(&db, cfg).await;
    let org = Org::create(&db).await;
    let now = Utc::now();
    let dev = assign_device(&db, "tag-a", org.case_a, now - TimeDelta::days(3)).await;
    insert_fixes(
        &db,
        dev,
        now - TimeDelta::hours(2),
        TimeDelta::minutes(1),
        60,
    )
    .await;
    let alert = insert_alert(&db, dev, org.case_a, "strap_tamper", "critical", now).await;
    let dev_b = assign_device(&db, "tag-b", org.case_b, now - TimeDelta::days(3)).await;
    insert_alert(&db, dev_b, org.case_b, "strap_tamper", "critical", now).await;
    let ids = BTreeMap::from([
        ("id", org.case_a.to_string()),
        ("supervisee_id", org.case_a.to_string()),
        ("alert_id", alert.to_string()),
        ("device_id", "tag-a".to_owned()),
    ]);
    let before = census(&db).await;

    let doc = api
        .call(Method::GET, "/openapi.json", None, None)
        .await
        .body;
    // Reads first: a change that succeeds (a PATCH storing a payload
    // literally, as it should) must not make a later filter match.
    let mut ops = operations(&doc);
    ops.sort_by_key(|o| o.method != Method::GET);
    assert!(ops.len() >= 40, "only {} operations documented", ops.len());
    // Tried in this order; the first the operation does not refuse with
    // 403 is kept for it (`off-a` first, so caseload leaks show).
    let tokens = [
        org.off_a.clone(),
        org.admin.clone(),
        org.auditor.clone(),
        org.sup_n.clone(),
    ];
    let mut caller: BTreeMap<String, usize> = BTreeMap::new();
    let payloads = payloads();
    let mut t = Tally::default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut slots_tried = BTreeSet::new();

    for op in &ops {
        for (param, slot, filter) in &op.params {
            slots_tried.insert(format!("{} {param}", op.id));
            for (label, payload) in &payloads {
                let mut path = String::new();
                for seg in op.path.split('/').filter(|s| !s.is_empty()) {
                    path.push('/');
                    match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(name) if *slot == Slot::Path && name == param => {
                            // A path segment cannot hold `/`: encode it all.
                            path.push_str(&enc(payload).replace('+', "%20"))
                        }
                        Some(name) => path.push_str(ids.get(name).map_or("1", |v| v.as_str())),
                        None => path.push_str(seg),
                    }
                }
                let mut query: Vec<String> = op
                    .required_query
                    .iter()
                    .filter(|n| !(*slot == Slot::Query && *n == param))
                    .map(|n| match n.as_str() {
                        "from" => format!("from={}", enc(&(now - TimeDelta::days(1)).to_rfc3339())),
                        "to" => format!("to={}", enc(&now.to_rfc3339())),
                        other => format!("{other}=1"),
                    })
                    .collect();
                if *slot == Slot::Query {
                    query.push(format!("{param}={}", enc(payload)));
                }
                let url = if query.is_empty() {
                    format!("{}{path}", api.base)
                } else {
                    format!("{}{path}?{}", api.base, query.join("&"))
                };
                let body = if *slot == Slot::Body {
                    // As a string, and where it parses as a number, as one.
                    Some(json!({ param: payload }))
                } else {
                    matches!(op.method, Method::POST | Method::PUT | Method::PATCH)
                        .then(|| json!({}))
                };
                let start = caller.get(&op.id).copied().unwrap_or(0);
                for (ti, tok) in tokens.iter().enumerate().skip(start) {
                    let mut rb = client.request(op.method.clone(), &url).bearer_auth(tok);
                    if *slot == Slot::Header {
                        match reqwest::header::HeaderValue::from_bytes(payload.as_bytes()) {
                            Ok(v) => rb = rb.header(param.as_str(), v),
                            // Not sendable as a header (NUL, line breaks).
                            Err(_) => break,
                        }
                    }
                    if let Some(b) = &body {
                        rb = rb.json(b);
                    }
                    t.sent += 1;
                    let what = format!("{} {param}={label} ({} {url:.200})", op.id, op.method);
                    let resp = match rb.send().await {
                        Ok(r) => r,
                        Err(e) => {
                            // Only a request too big for the HTTP layer may
                            // be cut off without an answer.
                            assert!(
                                payload.len() >= MB && *slot != Slot::Body,
                                "{what}: no answer: {e}"
                            );
                            t.http_layer += 1;
                            break;
                        }
                    };
                    let status = resp.status();
                    *t.by_status.entry(status.as_u16()).or_default() += 1;
                    assert!(
                        !status.is_server_error(),
                        "{what}: {status} {}",
                        resp.text().await.unwrap_or_default()
                    );
                    if status == StatusCode::FORBIDDEN && ti + 1 < tokens.len() {
                        continue;
                    }
                    caller.insert(op.id.clone(), ti);
                    if op.id == "alert_stream" && status.is_success() {
                        // An open stream: its status line is the answer.
                        break;
                    }
                    let r = read(resp).await;
                    if r.content_type == "application/problem+json" {
                        assert_problem(&r, status.as_u16());
                    } else if status.is_client_error() {
                        // Only hyper answers without a problem: a request
                        // line or header over its size limit.
                        assert!(payload.len() >= MB, "{what}: {status} {}", r.text);
                        t.http_layer += 1;
                    } else {
                        assert!(status.is_success(), "{what}: {status} {}", r.text);
                        if op.method != Method::GET {
                            *t.stored.entry(format!("{} {param}", op.id)).or_default() += 1;
                        }
                        if ti == 0 {
                            for f in FOREIGN {
                                assert!(!r.text.contains(f), "{what}: shows {f}: {}", r.text);
                            }
                        }
                        if *filter {
                            assert_eq!(
                                r.body["items"],
                                json!([]),
                                "{what}: a filter no record matches returned records"
                            );
                        }
                    }
                    break;
                }
            }
        }
    }

    // The database is intact: every table still there and none lost a
    // row. Rows were added only by changes accepted with a payload stored
    // literally (a note, a device named `$1`: counted in `stored`) and by
    // audited reads; the fixtures no single-field body can create are
    // exactly as they were.
    let after = census(&db).await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "tables appeared or vanished"
    );
    let mut grown = BTreeMap::new();
    for (table, n) in &before {
        assert!(
            after[table] >= *n,
            "{table} lost rows: {n} -> {}",
            after[table]
        );
        if after[table] > *n {
            grown.insert(table.clone(), after[table] - n);
        }
    }
    for table in [
        "alerts",
        "fixes",
        "supervisees",
        "officers",
        "teams",
        "api_tokens",
    ] {
        assert_eq!(after[table], before[table], "rows of {table} changed");
    }
    // And still answers as before.
    let mine = api.get("/alerts", &org.off_a).await;
    assert_eq!(mine.status, 200, "{}", mine.text);
    assert_eq!(mine.body["items"].as_array().unwrap().len(), 1);
    println!(
        "hostile inputs ({backend:?}): {} requests over {} operation parameters x {} payloads; \
         statuses {:?}; {} refused by the HTTP layer; tables {}; changes accepted {:?}; rows added {:?}",
        t.sent,
        slots_tried.len(),
        payloads.len(),
        t.by_status,
        t.http_layer,
        after.len(),
        t.stored,
        grown
    );
}

/// A client bound to another loopback address: the server sees another
/// peer (Linux routes all of 127/8 to the loopback interface).
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .build()
        .unwrap()
}

async fn send(rb: reqwest::RequestBuilder) -> Reply {
    read(rb.send().await.expect("request sent")).await
}

fn assert_locked(r: &Reply) {
    assert_problem(r, 429);
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
}

both!(brute_force_is_cut_off_per_client);

async fn brute_force_is_cut_off_per_client(backend: Backend) {
    let db = ApiDb::new(backend).await;
    let api = ApiServer::start(&db, ApiConfig::default()).await;
    let burst = AuthLimits::default().per_client_burst as usize;
    let org = Org::create(&db).await;
    let attacker = client_from(1);
    // off-a worked from here before the attack; off-b never did.
    let r = send(
        attacker
            .get(format!("{}/session", api.base))
            .bearer_auth(&org.off_a),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let mut outcomes = BTreeMap::<u16, usize>::new();
    for i in 0..50 {
        let r = send(
            attacker
                .get(format!("{}/alerts", api.base))
                .bearer_auth(format!("wpt_guess{i:040}")),
        )
        .await;
        *outcomes.entry(r.status.as_u16()).or_default() += 1;
        if i < burst {
            assert_problem(&r, 401);
        } else {
            assert_locked(&r);
        }
    }
    assert_eq!(outcomes, BTreeMap::from([(401, burst), (429, 50 - burst)]));

    // Locked out: every other credential path refuses unknown secrets too.
    let base = &api.base;
    assert_locked(
        &send(
            attacker
                .get(format!("{base}/alerts"))
                .header("cookie", "wp_session=wpc_guess"),
        )
        .await,
    );
    assert_locked(&send(attacker.get(format!("{base}/alerts/stream?ticket=wps_guess"))).await);
    assert_locked(
        &send(
            attacker
                .post(format!("{base}/session"))
                .json(&json!({ "token": "wpt_guess" })),
        )
        .await,
    );
    // A real token never seen to work waits like a guess would (if it were
    // checked, a lockout would not stop guessing)...
    assert_locked(
        &send(
            attacker
                .get(format!("{base}/alerts"))
                .bearer_auth(&org.off_b),
        )
        .await,
    );
    // ...but one that worked before carries on: an attacker behind the same
    // address cannot lock an officer out of their work.
    let r = send(
        attacker
            .get(format!("{base}/alerts"))
            .bearer_auth(&org.off_a),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Other clients are not slowed down, right or wrong.
    let other = client_from(2);
    let r = send(other.get(format!("{base}/alerts")).bearer_auth(&org.off_b)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_problem(
        &send(other.get(format!("{base}/alerts")).bearer_auth("wpt_typo")).await,
        401,
    );

    let s = api.state.limiter.stats();
    assert_eq!(s.lockouts, 1, "{s:?}");
    assert_eq!(s.failures as usize, burst + 1, "{s:?}");
    // The 40 guesses, then cookie, ticket, sign-in and the unseen token.
    assert_eq!(s.refused as usize, 50 - burst + 4, "{s:?}");

    // The lockout lifts as failures are forgiven (one per 6 s by default).
    api.clock.advance(TimeDelta::seconds(60));
    let r = send(
        attacker
            .get(format!("{base}/alerts"))
            .bearer_auth(&org.off_b),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_problem(
        &send(
            attacker
                .get(format!("{base}/alerts"))
                .bearer_auth("wpt_guess"),
        )
        .await,
        401,
    );
    println!(
        "brute force ({backend:?}): 50 wrong tokens from one client -> {outcomes:?}; \
         limiter {:?}",
        api.state.limiter.stats()
    );
}

both!(each_credential_path_counts_failures);

/// Cookie, ticket and sign-in failures are counted on their own, not only
/// refused once a bearer-token brute force has locked the client.
async fn each_credential_path_counts_failures(backend: Backend) {
    let db = ApiDb::new(backend).await;
    let limits = AuthLimits {
        per_client_burst: 3,
        ..AuthLimits::default()
    };
    let api = ApiServer::start(
        &db,
        ApiConfig {
            auth_limits: limits,
            ..ApiConfig::default()
        },
    )
    .await;
    let base = api.base.clone();
    type Attempt = Box<dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder>;
    let paths: Vec<(&str, Attempt)> = vec![
        ("session cookie", {
            let b = base.clone();
            Box::new(move |c| {
                c.get(format!("{b}/alerts"))
                    .header("cookie", "wp_session=wpc_guess")
            })
        }),
        ("stream ticket", {
            let b = base.clone();
            Box::new(move |c| c.get(format!("{b}/alerts/stream?ticket=wps_guess")))
        }),
        ("sign-in", {
            let b = base.clone();
            Box::new(move |c| {
                c.post(format!("{b}/session"))
                    .json(&json!({ "token": "wpt_guess" }))
            })
        }),
    ];
    for (i, (name, attempt)) in paths.iter().enumerate() {
        let c = client_from(10 + i as u8);
        for n in 0..3 {
            let r = send(attempt(&c)).await;
            assert_eq!(r.status, 401, "{name} attempt {n}: {}", r.text);
        }
        assert_locked(&send(attempt(&c)).await);
    }
}
