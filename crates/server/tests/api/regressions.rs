//! Regressions from a penetration test of the product: each test is one
//! finding, fixed.

use super::support::*;
use axum::http::StatusCode;
use serde_json::json;
use tokenledger_tokens::paseto::{TokenClaims, mint};

#[tokio::test]
async fn a_record_appended_by_an_issuer_naming_our_kid_does_not_make_a_token_ours() {
    let app = TestApp::new().await;
    let iss = app.minter("iss", "acme").await;
    let gw = app.principal("gw", "validator", "acme").await;
    let m = app.mint_ok(&iss, "alice").await;
    let kid = m["kid"].as_str().unwrap().to_owned();
    // Suppose our signing key leaked: sign a token for a jti that only an
    // issuer's external record names, with our kid in that record.
    let rec = app.state.views.read("acme", |v| v.keys.get(&kid).cloned()).unwrap();
    let key = app.state.keyring.material("acme", &rec).unwrap();
    let id = jti();
    let now = app.now();
    let mut record = issued_at(&id, "acme", "iss", now);
    record["data"]["kid"] = json!(kid);
    app.policy(
        "acme",
        "iss",
        json!({"audiences": {"api://orders": {"scopes": ["orders:read"], "max_ttl_seconds": 3600}},
                                      "formats": ["v4.public", "external"]}),
    )
    .await;
    let (st, _, b) = app
        .append(&format!("token-{id}"), &iss, json!("no_stream"), vec![record])
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let claims = TokenClaims::new(
        "tokenledger",
        "alice",
        "api://orders",
        &id,
        "orders:read",
        "iss",
        now,
        now + chrono::Duration::seconds(300),
    );
    let forged = mint(&key.signing, &kid, &claims).unwrap();
    let v = app.verify(&gw, &forged, "api://orders").await;
    assert_eq!(v["reason"], "not_issued", "{v}");
}

#[tokio::test]
async fn principal_names_are_lower_case_and_not_reserved() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    app.principal("idp-1", "issuer", "acme").await;
    for name in [
        "IDP-1",
        "bootstrap",
        "server",
        "tokenledger",
        "..",
        "-x",
        "ａlice",
        "a b",
    ] {
        let a = app
            .call(
                "POST",
                "/v1/principals",
                Some(&admin),
                Some(json!({"name": name, "role": "issuer"})),
            )
            .await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid-identifier");
    }
}

#[tokio::test]
async fn a_repeated_scope_is_named_as_repeated() {
    let app = TestApp::new().await;
    let iss = app.minter("iss", "acme").await;
    let a = app
        .mint(&iss, mint_request("alice", "orders:read orders:read", 300, "v4.public"))
        .await;
    assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid-identifier");
    assert!(
        a.2["detail"].as_str().unwrap().contains("repeats \"orders:read\""),
        "{}",
        a.2
    );
}
