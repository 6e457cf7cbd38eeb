//! Browser sessions: a token is exchanged for an HttpOnly, SameSite=Strict
//! cookie; the cookie authenticates reads, changes (with the CSRF header)
//! and the live stream; signing out or revoking the token ends it.
//!
//! Every test runs on both backends, as `name::pg` and `name::sqlite`
//! (see `common::api`).

mod common;

use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::json;

use common::api::*;
use waypoint::api::ApiConfig;
use waypoint::clock::Clock;
use waypoint::store::sql::Q;

both!(
    a_token_becomes_an_httponly_cookie_that_works_until_sign_out,
    a_session_ends_with_its_token_and_its_lifetime,
);

async fn a_token_becomes_an_httponly_cookie_that_works_until_sign_out(backend: Backend) {
    let db = ApiDb::new(backend).await;
    let api = ApiServer::start(&db, ApiConfig::default()).await;
    let org = Org::create(&db).await;
    let now = api.clock.now();
    let dev = assign_device(&db, "tag-a", org.case_a, now - chrono::TimeDelta::days(1)).await;
    let alert = insert_alert(&db, dev, org.case_a, "strap_tamper", "critical", now).await;

    // Wrong token: no cookie.
    let bad = api
        .call(
            reqwest::Method::POST,
            "/session",
            None,
            Some(json!({"token": "wpt_nope"})),
        )
        .await;
    assert_problem(&bad, 401);
    assert!(bad.headers.get(SET_COOKIE).is_none());

    let r = api
        .call(
            reqwest::Method::POST,
            "/session",
            None,
            Some(json!({"token": org.off_a})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["role"], "officer");
    assert_eq!(r.body["officer_ref"], "off-a");
    let set = r.headers[SET_COOKIE].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/api/v1"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(
        !r.text.contains("wpc_"),
        "the session secret is never in the body"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    // Only the hash is stored.
    let stored: Vec<u8> = Q::new("SELECT session_hash FROM api_sessions")
        .scalar(&db)
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);

    let get = |path: &str| {
        api.http
            .get(format!("{}{path}", api.base))
            .header(COOKIE, &cookie)
            .send()
    };
    let list = read(get("/alerts").await.unwrap()).await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.body["items"][0]["alert_id"], alert);
    let me = read(get("/session").await.unwrap()).await;
    assert_eq!(me.body["officer_ref"], "off-a");

    // A change on the cookie alone needs the CSRF header.
    let ack = |csrf: bool| {
        let mut rb = api
            .http
            .post(format!("{}/alerts/{alert}/acknowledge", api.base))
            .header(COOKIE, &cookie);
        if csrf {
            rb = rb.header("X-Requested-With", "waypoint");
        }
        rb.send()
    };
    assert_problem(&read(ack(false).await.unwrap()).await, 403);
    let ok = read(ack(true).await.unwrap()).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["actions"][0]["actor"], "off-a");

    // The live stream accepts the cookie (what EventSource sends).
    let stream = get("/alerts/stream").await.unwrap();
    assert_eq!(stream.status(), 200);
    drop(stream);

    // Signing out ends it at once and clears the cookie.
    let out = read(
        api.http
            .delete(format!("{}/session", api.base))
            .header(COOKIE, &cookie)
            .header("X-Requested-With", "waypoint")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(out.status, 204, "{}", out.text);
    assert!(out.headers[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_problem(&read(get("/alerts").await.unwrap()).await, 401);
    assert_eq!(
        waypoint::api::audit::count(&db, "session.create")
            .await
            .unwrap(),
        1
    );
}

async fn a_session_ends_with_its_token_and_its_lifetime(backend: Backend) {
    let db = ApiDb::new(backend).await;
    let api = ApiServer::start(&db, ApiConfig::default()).await;
    let org = Org::create(&db).await;
    let sign_in = |token: String| {
        let api = &api;
        async move {
            let r = api
                .call(
                    reqwest::Method::POST,
                    "/session",
                    None,
                    Some(json!({"token": token})),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.text);
            r.headers[SET_COOKIE]
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned()
        }
    };
    let get = |cookie: String| {
        let api = &api;
        async move {
            read(
                api.http
                    .get(format!("{}/alerts", api.base))
                    .header(COOKIE, cookie)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let c = sign_in(org.off_b.clone()).await;
    assert_eq!(get(c.clone()).await.status, 200);
    api.clock.advance(chrono::TimeDelta::hours(13));
    assert_problem(&get(c).await, 401);

    let c = sign_in(org.off_b.clone()).await;
    Q::new("UPDATE api_tokens SET revoked_at = now()")
        .execute(&db)
        .await
        .unwrap();
    assert_problem(&get(c).await, 401);
}
