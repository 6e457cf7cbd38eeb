//! The OpenAPI document: served by the running server, valid against the
//! official OpenAPI 3.1 schema (the reference validator), every `$ref`
//! resolving, unique operation ids, documented errors, and in step with the
//! router (every documented operation is
//! routed and guarded; nothing routed is undocumented).

mod common;

use std::collections::HashSet;

use reqwest::Method;
use serde_json::Value;

use common::api::*;
use common::{start_server, ServerOpts, TestDb};
use waypoint::api::ApiConfig;

fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    let path = r.strip_prefix("#/")?;
    path.split('/').try_fold(doc, |v, seg| v.get(seg))
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn document_is_valid_and_matches_the_router() {
    let db = TestDb::new().await;
    let api = ApiServer::start(&db, ApiConfig::default()).await;
    let r = api.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    let doc = r.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // The reference validator (PyPI openapi-spec-validator, installed by
    // .ci/run) checks the document against the official OpenAPI 3.1 schema.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document (or is missing: \
         pip install openapi-spec-validator): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        assert!(resolve(&doc, r).is_some(), "dangling $ref {r}");
    }

    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10, "only {} paths documented", paths.len());
    let mut op_ids = HashSet::new();
    let mut checked = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}"));
            assert!(op_ids.insert(id.to_owned()), "duplicate operationId {id}");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{method} {path}: no success response"
            );
            for code in ["401", "403", "404", "422"] {
                assert!(
                    responses.contains_key(code),
                    "{method} {path}: {code} undocumented"
                );
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" {
                    assert!(
                        path.contains(&format!("{{{}}}", p["name"].as_str().unwrap())),
                        "{method} {path}: path parameter {} not in the path",
                        p["name"]
                    );
                }
            }
            // Routed and guarded: without credentials every documented
            // operation answers 401 (an unrouted path would be 404/405).
            let concrete: String = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "1" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let body = matches!(m, Method::POST | Method::PUT | Method::PATCH)
                .then(|| serde_json::json!({}));
            let reply = api.call(m.clone(), &concrete, None, body).await;
            // Operations that admit anonymous callers (`security: [{}]`:
            // signing in, the stream's ticket) still refuse this request.
            let public = op["security"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x.as_object().is_some_and(|o| o.is_empty()))
            });
            if public {
                assert!(
                    reply.status.is_client_error(),
                    "{method} {path} -> {}",
                    reply.text
                );
            } else {
                assert_eq!(
                    reply.status.as_u16(),
                    401,
                    "{method} {path} -> {} {}",
                    reply.status,
                    reply.text
                );
            }
            assert_eq!(reply.content_type, "application/problem+json");
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} operations");
    // Nothing undocumented answers: an unknown path is a 404 problem.
    assert_problem(
        &api.call(Method::GET, "/undocumented", None, None).await,
        404,
    );
}

#[tokio::test]
async fn the_server_serves_the_api_beside_the_operations_endpoints() {
    let db = TestDb::new().await;
    let srv = start_server(&ServerOpts::new(&db)).await;
    let base = format!("http://{}", srv.http_addr);
    let doc = reqwest::get(format!("{base}/api/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(doc.status(), 200);
    let anon = read(reqwest::get(format!("{base}/api/v1/alerts")).await.unwrap()).await;
    assert_problem(&anon, 401);
    let org = Org::create(&db.pool).await;
    let ok = reqwest::Client::new()
        .get(format!("{base}/api/v1/alerts"))
        .bearer_auth(&org.off_a)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["cache-control"], "no-store");
    // The dashboard is served from the same origin, under a strict policy.
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let cfg: serde_json::Value = reqwest::get(format!("{base}/ui-config.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(cfg["basemap_url"].is_null());
    assert_eq!(
        reqwest::get(format!("{base}/no-such.js"))
            .await
            .unwrap()
            .status(),
        404
    );
    srv.stop().await;
}
