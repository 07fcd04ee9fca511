//! Every name lives inside its tenant: a request never learns that something
//! exists in another tenant, and an issuer never sees another's tokens.

use super::support::*;
use axum::http::StatusCode;
use serde_json::json;

/// `acme` with issuer `iss` and one token; `globex` with issuer `iss` (the
/// same name) and an analyst. Returns (app, acme issuer, globex issuer,
/// globex analyst, the acme token's jti, the acme batch).
async fn two_tenants() -> (TestApp, String, String, String, String, Vec<serde_json::Value>) {
    let app = TestApp::new().await;
    let iss_a = app.issuer("iss", "acme").await;
    let iss_b = app.issuer("iss", "globex").await;
    let ana_b = app.principal("ana", "analyst", "globex").await;
    let jti = jti();
    let batch = vec![app.issued(&jti, "acme", "iss"), revoked(&jti)];
    let (st, _, b) = app
        .append(&stream(&jti), &iss_a, json!("no_stream"), batch.clone())
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    (app, iss_a, iss_b, ana_b, jti, batch)
}

#[tokio::test]
async fn a_principal_of_another_tenant_reading_a_stream_gets_404() {
    let (app, _, iss_b, ana_b, jti, _) = two_tenants().await;
    let admin_b = app.admin("globex").await;
    for who in [&iss_b, &ana_b, &admin_b] {
        let a = app
            .call("GET", &format!("/v1/streams/{}", stream(&jti)), Some(who), None)
            .await;
        assert_problem(&a, StatusCode::NOT_FOUND, "stream-not-found");
    }
    // The admin's own principal stream of the other tenant is just as absent.
    let a = app
        .call("GET", "/v1/streams/principal-admin-acme", Some(&admin_b), None)
        .await;
    assert_problem(&a, StatusCode::NOT_FOUND, "stream-not-found");
}

#[tokio::test]
async fn an_issuer_reading_another_issuers_token_stream_in_its_tenant_gets_404() {
    let (app, iss_a, _, _, jti, _) = two_tenants().await;
    let other = app.issuer("other", "acme").await;
    let path = format!("/v1/streams/{}", stream(&jti));
    let a = app.call("GET", &path, Some(&other), None).await;
    assert_problem(&a, StatusCode::NOT_FOUND, "stream-not-found");
    // Exactly as for a token that does not exist.
    let missing = app
        .call("GET", &format!("/v1/streams/{}", stream("missing")), Some(&other), None)
        .await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "stream-not-found");
    // Nor may it read streams that are not token streams.
    for s in ["principal-iss", "refusals-iss", "tenant", "policy-iss"] {
        let a = app.call("GET", &format!("/v1/streams/{s}"), Some(&other), None).await;
        assert_problem(&a, StatusCode::NOT_FOUND, "stream-not-found");
    }
    let (st, _, b) = app.call("GET", &path, Some(&iss_a), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
}

#[tokio::test]
async fn the_same_event_id_and_stream_name_can_be_used_in_another_tenant() {
    let (app, _, iss_b, _, jti, batch) = two_tenants().await;
    // The very same events, but issued in globex: same event ids, same stream name.
    let mut b_batch = batch.clone();
    b_batch[0]["data"]["tenant"] = json!("globex");
    let (st, _, b) = app.append(&stream(&jti), &iss_b, json!("no_stream"), b_batch).await;
    assert_eq!(st, StatusCode::CREATED, "no 409 may reveal acme's stream or ids: {b}");
    assert_eq!(events(&b)[0]["revision"], 0);
    assert_eq!(events(&b)[0]["event_id"], batch[0]["event_id"]);
    assert_eq!(app.stream_len("acme", &stream(&jti)).await, Some(2));
    assert_eq!(app.stream_len("globex", &stream(&jti)).await, Some(2));
}

#[tokio::test]
async fn an_event_id_reused_in_another_tenant_with_other_content_is_not_a_conflict() {
    let (app, _, iss_b, _, _, batch) = two_tenants().await;
    let other = jti();
    let mut ev = app.issued(&other, "globex", "iss");
    ev["event_id"] = batch[0]["event_id"].clone();
    let (st, _, b) = app.append(&stream(&other), &iss_b, json!("no_stream"), vec![ev]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn reading_all_events_shows_only_the_callers_tenant() {
    let (app, _, _, ana_b, jti, batch) = two_tenants().await;
    let (st, _, b) = app.call("GET", "/v1/events", Some(&ana_b), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let evs = events(&b);
    assert!(!evs.is_empty(), "globex has its own events: {b}");
    for e in evs {
        assert_eq!(e["metadata"]["tenant"], "globex", "{e}");
        assert_ne!(e["stream"], stream(&jti), "{e}");
        assert_ne!(e["event_id"], batch[0]["event_id"], "{e}");
        assert_ne!(e["event_id"], batch[1]["event_id"], "{e}");
    }
    assert!(
        !b.to_string().contains("acme"),
        "nothing of acme leaks into globex's $all: {b}"
    );
    // Paging from any position never reaches acme's events either.
    let acme_pos = app.log("acme").await.last().unwrap().position.0;
    let (st, _, b) = app
        .call("GET", &format!("/v1/events?from={acme_pos}"), Some(&ana_b), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert!(!b.to_string().contains("acme"), "{b}");
}

#[tokio::test]
async fn an_admin_cannot_create_principals_in_another_tenant() {
    let (app, _, _, _, _, _) = two_tenants().await;
    let admin_b = app.admin("globex").await;
    let before = app.log("acme").await.len();
    for role in ["admin", "issuer", "analyst"] {
        let a = app
            .call(
                "POST",
                "/v1/principals",
                Some(&admin_b),
                Some(json!({"name": format!("intruder-{role}"), "role": role, "tenant": "acme"})),
            )
            .await;
        assert_problem(&a, StatusCode::FORBIDDEN, "stamped-field-mismatch");
        assert!(
            !a.2.to_string().contains("secret\":"),
            "no secret is handed out: {}",
            a.2
        );
    }
    assert_eq!(app.log("acme").await.len(), before);
    assert!(app.state.registry.read().principal("acme", "intruder-admin").is_none());
}

#[tokio::test]
async fn an_admin_cannot_disable_or_rotate_principals_of_another_tenant() {
    let (app, iss_a, _, _, _, _) = two_tenants().await;
    let only_a = app.principal("only-acme", "analyst", "acme").await;
    let admin_b = app.admin("globex").await;
    let before = app.log("acme").await.len();
    for name in ["admin-acme", "only-acme"] {
        for action in ["disable", "rotate"] {
            let a = app
                .call("POST", &format!("/v1/principals/{name}/{action}"), Some(&admin_b), None)
                .await;
            assert_problem(&a, StatusCode::NOT_FOUND, "principal-not-found");
        }
    }
    let (st, _, b) = app.call("GET", "/v1/events?limit=1", Some(&only_a), None).await;
    assert_eq!(st, StatusCode::OK, "acme's analyst still works: {b}");
    // Disabling "iss" from globex disables globex's iss, never acme's.
    let (st, _, b) = app
        .call("POST", "/v1/principals/iss/disable", Some(&admin_b), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(app.log("acme").await.len(), before);
    let (st, _, b) = app
        .call("GET", &format!("/v1/streams/{}", stream("missing")), Some(&iss_a), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "acme's iss still authenticates: {b}");
    let admin_a = app.admin("acme").await;
    let (st, _, b) = app.call("GET", "/v1/events?limit=1", Some(&admin_a), None).await;
    assert_eq!(st, StatusCode::OK, "acme's admin still works: {b}");
}

#[tokio::test]
async fn a_policy_set_in_one_tenant_does_not_apply_in_another() {
    let app = TestApp::new().await;
    app.issuer("iss", "acme").await;
    let iss_b = app.principal("iss", "issuer", "globex").await;
    let jti = jti();
    let a = app
        .append(
            &stream(&jti),
            &iss_b,
            json!("no_stream"),
            vec![app.issued(&jti, "globex", "iss")],
        )
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "grant-refused");
    assert_eq!(a.2["reason"], "no_policy");
}
