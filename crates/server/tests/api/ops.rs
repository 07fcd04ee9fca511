//! `/healthz`, `/readyz`, `/metrics`, readiness gating, unknown paths and
//! methods.

use super::support::*;
use axum::http::{StatusCode, header};
use serde_json::json;
use tokenledger_server::config::ServeArgs;

#[tokio::test]
async fn health_and_readiness_answer_without_a_credential() {
    let app = TestApp::new().await;
    let (st, _, b) = app.call("GET", "/healthz", None, None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b, json!({"status": "ok"}));
    let (st, _, b) = app.call("GET", "/readyz", None, None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b, json!({"status": "ready"}));
}

#[tokio::test]
async fn before_catching_up_the_api_answers_503_and_readyz_says_so() {
    let app = TestApp::unready(ServeArgs::default());
    let (st, _, _) = app.call("GET", "/healthz", None, None).await;
    assert_eq!(st, StatusCode::OK);
    let a = app.call("GET", "/readyz", None, None).await;
    assert_problem(&a, StatusCode::SERVICE_UNAVAILABLE, "not-ready");
    let jti = jti();
    let calls = [
        ("GET", "/v1/events".to_owned(), None),
        ("GET", format!("/v1/streams/{}", stream(&jti)), None),
        (
            "POST",
            format!("/v1/streams/{}/events", stream(&jti)),
            Some(json!({"expected_revision": "any", "events": [revoked(&jti)]})),
        ),
        (
            "POST",
            "/v1/principals".to_owned(),
            Some(json!({"name": "root", "role": "admin", "tenant": "acme"})),
        ),
        ("POST", "/v1/principals/root/rotate".to_owned(), None),
        ("POST", "/v1/principals/root/disable".to_owned(), None),
        ("PUT", "/v1/clients/iss/policy".to_owned(), Some(default_policy())),
    ];
    for (method, path, body) in calls {
        let a = app.call(method, &path, Some(BOOT), body).await;
        assert_problem(&a, StatusCode::SERVICE_UNAVAILABLE, "not-ready");
    }
    assert_eq!(app.log_len().await, 0, "nothing was written before catching up");

    app.state.catch_up().await.unwrap();
    let (st, _, _) = app.call("GET", "/readyz", None, None).await;
    assert_eq!(st, StatusCode::OK);
    app.admin("acme").await;
}

#[tokio::test]
async fn metrics_need_an_admin() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    let iss = app.issuer("iss", "acme").await;
    let jti = jti();
    let (st, _, b) = app
        .append(
            &stream(&jti),
            &iss,
            json!("no_stream"),
            vec![app.issued(&jti, "acme", "iss")],
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");

    assert_unauthenticated(&app.call("GET", "/metrics", None, None).await);
    assert_unauthenticated(&app.call("GET", "/metrics", Some("tl_x_y"), None).await);
    for role in ["analyst", "issuer", "validator", "soc"] {
        let who = app.principal(&format!("m-{role}"), role, "acme").await;
        let a = app.call("GET", "/metrics", Some(&who), None).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }

    let (st, h, b) = app.call("GET", "/metrics", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let ct = h.get(header::CONTENT_TYPE).unwrap().to_str().unwrap();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = b.as_str().unwrap_or_else(|| panic!("metrics are text: {b}"));
    assert!(text.contains("tokenledger_events_appended_total"), "{text}");
    assert!(text.contains("tokenledger_http_requests_total"), "{text}");
    assert!(
        text.contains(r#"route="/v1/streams/{stream}/events""#),
        "requests are labelled by route: {text}"
    );
    assert!(!text.contains(&iss), "no credential in the metrics");
}

#[tokio::test]
async fn an_unknown_path_is_404_problem_json() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/v1/streams"),
        ("GET", "/v1/streams/a/b/c"),
        ("POST", "/v2/streams/x/events"),
        ("GET", "/"),
    ] {
        for token in [None, Some(admin.as_str())] {
            let a = app.call(method, path, token, None).await;
            assert_problem(&a, StatusCode::NOT_FOUND, "no-such-endpoint");
        }
    }
}

#[tokio::test]
async fn a_wrong_method_is_405_problem_json() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    for (method, path) in [
        ("GET", "/v1/streams/token-x/events"),
        ("DELETE", "/v1/streams/token-x"),
        ("PUT", "/v1/events"),
        ("GET", "/v1/principals"),
        ("DELETE", "/v1/principals/x/disable"),
        ("GET", "/v1/clients/x/policy"),
        ("POST", "/healthz"),
        ("POST", "/readyz"),
        ("POST", "/metrics"),
    ] {
        let a = app.call(method, path, Some(&admin), None).await;
        assert_problem(&a, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
    }
}

/// RFC 9110 §15.5.6: a 405 answer MUST carry an `Allow` header listing the
/// methods the resource supports.
#[tokio::test]
async fn a_405_names_the_allowed_methods() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    for (method, path, allowed) in [
        ("GET", "/v1/streams/token-x/events", "POST"),
        ("PUT", "/v1/events", "GET"),
        ("POST", "/healthz", "GET"),
    ] {
        let (st, h, b) = app.call(method, path, Some(&admin), None).await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED, "{b}");
        let allow = h.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(allow.contains(allowed), "{method} {path}: Allow is {allow:?}");
    }
}
