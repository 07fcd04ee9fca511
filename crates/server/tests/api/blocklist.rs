//! The block-list feed: snapshots, deltas from a position, long polling,
//! ETags, and what each entry names.

use super::support::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

async fn setup() -> (TestApp, String, String, String) {
    let app = TestApp::new().await;
    let iss = app.minter("iss", "acme").await;
    let gw = app.principal("gw", "validator", "acme").await;
    let admin = app.admin("acme").await;
    (app, iss, gw, admin)
}

async fn feed(app: &TestApp, gw: &str, query: &str) -> Value {
    let (st, h, b) = app.call("GET", &format!("/v1/blocklist{query}"), Some(gw), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert!(h.get(header::ETAG).is_some());
    b
}

async fn revoke(app: &TestApp, who: &str, body: Value) -> u64 {
    let (st, _, b) = app.call("POST", "/v1/revocations", Some(who), Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    b["position"].as_u64().unwrap()
}

#[tokio::test]
async fn a_snapshot_lists_revoked_tokens_and_a_delta_only_what_came_after() {
    let (app, iss, gw, admin) = setup().await;
    let a = app.mint_ok(&iss, "alice").await;
    let b = app.mint_ok(&iss, "bob").await;
    let empty = feed(&app, &gw, "").await;
    assert_eq!(empty["entries"], json!([]));
    let p1 = revoke(
        &app,
        &admin,
        json!({"token_id": a["token_id"], "reason": "lost laptop"}),
    )
    .await;

    let snap = feed(&app, &gw, "").await;
    let entries = snap["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["token_id"], a["token_id"]);
    assert_eq!(entries[0]["position"], p1);
    assert_eq!(entries[0]["expires_at"], a["expires_at"]);
    let pos = snap["position"].as_u64().unwrap();
    assert!(pos >= p1);

    assert_eq!(feed(&app, &gw, &format!("?since={pos}")).await["entries"], json!([]));
    let p2 = revoke(&app, &admin, json!({"token_id": b["token_id"], "reason": "x"})).await;
    let delta = feed(&app, &gw, &format!("?since={pos}")).await;
    let got: Vec<&Value> = delta["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["token_id"])
        .collect();
    assert_eq!(got, vec![&b["token_id"]], "since is exclusive");
    assert_eq!(delta["entries"][0]["position"], p2);
}

#[tokio::test]
async fn selectors_and_revoked_keys_are_entries_too() {
    let (app, iss, gw, admin) = setup().await;
    let t = app.mint_ok(&iss, "alice").await;
    revoke(
        &app,
        &admin,
        json!({"selector": {"scope": "subject", "key": "mallory"}, "reason": "phished"}),
    )
    .await;
    let kid = t["kid"].as_str().unwrap();
    let (st, _, b) = app
        .call("POST", &format!("/v1/keys/{kid}/revoke"), Some(&admin), Some(json!({})))
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let entries = feed(&app, &gw, "").await["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["selector"], json!({"scope": "subject", "key": "mallory"}));
    assert_eq!(entries[0]["revoked_at"], iso(app.now()));
    assert_eq!(entries[0]["expires_at"], Value::Null);
    assert_eq!(entries[1]["kid"], kid);
}

#[tokio::test]
async fn a_snapshot_drops_entries_of_expired_tokens_but_a_delta_keeps_them() {
    let (app, iss, gw, admin) = setup().await;
    let t = app.mint_ok(&iss, "alice").await;
    revoke(&app, &admin, json!({"token_id": t["token_id"], "reason": "x"})).await;
    // Within the largest leeway after expiry a validator may still accept
    // the token: the entry stays in snapshots until then.
    app.clock.set(app.now() + chrono::Duration::seconds(300 + 299));
    assert_eq!(feed(&app, &gw, "").await["entries"].as_array().unwrap().len(), 1);
    app.clock.set(app.now() + chrono::Duration::hours(2));
    assert_eq!(feed(&app, &gw, "").await["entries"], json!([]));
    assert_eq!(
        feed(&app, &gw, "?since=0").await["entries"].as_array().unwrap().len(),
        1
    );
}

#[tokio::test]
async fn a_long_poll_answers_with_the_next_entry() {
    let (app, iss, gw, admin) = setup().await;
    let t = app.mint_ok(&iss, "alice").await;
    let pos = feed(&app, &gw, "").await["position"].as_u64().unwrap();
    let waiting = {
        let router = app.router.clone();
        let gw = gw.clone();
        tokio::spawn(async move {
            use tower::ServiceExt;
            let req = Request::builder()
                .uri(format!("/v1/blocklist?since={pos}&wait=30"))
                .header(header::AUTHORIZATION, format!("Bearer {gw}"))
                .body(Body::empty())
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        })
    };
    tokio::task::yield_now().await;
    revoke(&app, &admin, json!({"token_id": t["token_id"], "reason": "x"})).await;
    let got = waiting.await.unwrap();
    assert_eq!(got["entries"][0]["token_id"], t["token_id"], "{got}");
}

#[tokio::test]
async fn the_etag_names_the_answer_and_the_feed_is_for_validators_of_the_tenant() {
    let (app, iss, gw, admin) = setup().await;
    let t = app.mint_ok(&iss, "alice").await;
    revoke(&app, &admin, json!({"token_id": t["token_id"], "reason": "x"})).await;
    let (_, h, _) = app.call("GET", "/v1/blocklist", Some(&gw), None).await;
    let etag = h[header::ETAG].to_str().unwrap().to_owned();
    let req = Request::builder()
        .uri("/v1/blocklist")
        .header(header::AUTHORIZATION, format!("Bearer {gw}"))
        .header(header::IF_NONE_MATCH, &etag)
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send_request(req).await.0, StatusCode::NOT_MODIFIED);

    let analyst = app.principal("an", "analyst", "acme").await;
    assert_eq!(
        app.call("GET", "/v1/blocklist", Some(&analyst), None).await.0,
        StatusCode::FORBIDDEN
    );
    let other = app.principal("gw-b", "validator", "other").await;
    assert_eq!(
        feed(&app, &other, "").await["entries"],
        json!([]),
        "another tenant sees nothing"
    );
    let (st, _, b) = app.call("GET", "/v1/blocklist?since=x", Some(&gw), None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
}
