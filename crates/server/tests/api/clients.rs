//! `PUT /v1/clients/{client_id}/policy`: only an admin sets what a client may
//! mint, and the policy applies from the next request on.

use super::support::*;
use axum::http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn only_an_admin_sets_a_client_policy() {
    let app = TestApp::new().await;
    let iss = app.principal("iss", "issuer", "acme").await;
    let before = app.log_len().await;
    let mut callers = vec![iss.clone(), BOOT.to_owned()];
    for role in ["validator", "analyst", "soc"] {
        callers.push(app.principal(&format!("p-{role}"), role, "acme").await);
    }
    let before_roles = app.log_len().await;
    assert!(before_roles > before);
    for who in &callers {
        // Not even an issuer for itself.
        let a = app
            .call("PUT", "/v1/clients/iss/policy", Some(who), Some(default_policy()))
            .await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    assert_eq!(app.log_len().await, before_roles);
    assert!(app.state.registry.read().policy("acme", "iss").is_none());
    assert_unauthenticated(
        &app.call("PUT", "/v1/clients/iss/policy", None, Some(default_policy()))
            .await,
    );
}

#[tokio::test]
async fn an_admin_sets_a_policy_recorded_as_client_policy_set() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    let (st, _, b) = app
        .call("PUT", "/v1/clients/iss/policy", Some(&admin), Some(default_policy()))
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["client_id"], "iss");
    assert_eq!(b["policy"]["formats"], json!(["external"]));
    let (st, _, s) = app.call("GET", "/v1/streams/policy-iss", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK, "{s}");
    let e = &events(&s)[0];
    assert_eq!(e["event_type"], "ClientPolicySet");
    assert_eq!(e["data"]["client_id"], "iss");
    assert_eq!(e["metadata"]["actor"], "admin-acme");
    assert_eq!(e["position"], b["position"]);
}

#[tokio::test]
async fn a_malformed_policy_is_refused_and_changes_nothing() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    let before = app.log_len().await;
    for body in [
        json!({"audiences": {}, "formats": ["v5.public"]}),
        json!({"audiences": {}, "formats": ["external"], "surprise": 1}),
        json!({"audiences": {"api://orders": {"scopes": ["a"], "max_ttl_seconds": -1}}, "formats": ["external"]}),
        json!({"audiences": {"api://orders": {"scopes": "a"}}, "formats": ["external"]}),
        json!({"formats": ["external"]}),
    ] {
        let a = app
            .call("PUT", "/v1/clients/iss/policy", Some(&admin), Some(body))
            .await;
        assert_problem(&a, StatusCode::BAD_REQUEST, "invalid-body");
    }
    for body in [
        json!({"audiences": {"api://orde\u{301}rs": {"scopes": ["a"], "max_ttl_seconds": 60}}, "formats": ["external"]}),
        json!({"audiences": {"api://orders": {"scopes": ["re\u{200B}ad"], "max_ttl_seconds": 60}}, "formats": ["external"]}),
    ] {
        let a = app
            .call("PUT", "/v1/clients/iss/policy", Some(&admin), Some(body))
            .await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid-identifier");
    }
    let a = app
        .call(
            "PUT",
            "/v1/clients/cafe\u{301}/policy",
            Some(&admin),
            Some(default_policy()),
        )
        .await;
    assert_eq!(a.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.2);
    assert_eq!(app.log_len().await, before);
}

#[tokio::test]
async fn a_narrowed_policy_applies_to_the_next_append() {
    let app = TestApp::new().await;
    let iss = app.issuer("iss", "acme").await;
    let jti1 = jti();
    let (st, _, b) = app
        .append(
            &stream(&jti1),
            &iss,
            json!("no_stream"),
            vec![app.issued(&jti1, "acme", "iss")],
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let mut narrow = default_policy();
    narrow["audiences"]["api://orders"]["scopes"] = json!(["orders:write"]);
    app.policy("acme", "iss", narrow).await;
    let jti2 = jti();
    let a = app
        .append(
            &stream(&jti2),
            &iss,
            json!("no_stream"),
            vec![app.issued(&jti2, "acme", "iss")],
        )
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "grant-refused");
    assert_eq!(a.2["reason"], "scope");
}
