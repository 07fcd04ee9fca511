//! 422s of an append: schema, identifiers (NFC, invisible characters), clock
//! skew, token times, issuance order. None of them writes anything.

use super::support::*;
use axum::http::StatusCode;
use chrono::Duration;
use serde_json::{Value, json};

/// Appends `events` to `token-<jti>` as a fresh issuer; asserts 422 `kind`,
/// no token stream and an untouched log (no `GrantRefused` either).
async fn refused_422(app: &TestApp, iss: &str, jti: &str, events: Vec<Value>, kind: &str) -> Answer {
    let before = app.log_len().await;
    let a = app.append(&stream(jti), iss, json!("any"), events).await;
    assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, kind);
    assert_eq!(app.log_len().await, before, "a 422 wrote something");
    assert_eq!(app.stream_len("acme", &stream(jti)).await, None);
    a
}

async fn setup() -> (TestApp, String) {
    let app = TestApp::new().await;
    let iss = app.issuer("iss", "acme").await;
    (app, iss)
}

#[tokio::test]
async fn data_breaking_its_schema_is_422_schema_violation_listing_the_errors() {
    let (app, iss) = setup().await;
    let jti = jti();
    let mut ev = app.issued(&jti, "acme", "iss");
    ev["data"].as_object_mut().unwrap().remove("audience");
    ev["data"]["scope"] = json!(" orders:read");
    ev["data"]["format"] = json!("v5.public");
    let a = refused_422(&app, &iss, &jti, vec![ev], "schema-violation").await;
    let errors = a.2["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("errors array: {}", a.2));
    assert!(errors.len() >= 3, "each violation is listed: {}", a.2);
    for e in errors {
        assert!(e["pointer"].is_string() && e["message"].is_string(), "{e}");
    }
    let pointers: Vec<&str> = errors.iter().filter_map(|e| e["pointer"].as_str()).collect();
    assert!(pointers.contains(&"/scope"), "{pointers:?}");
    assert!(pointers.contains(&"/format"), "{pointers:?}");
}

#[tokio::test]
async fn other_schema_breaches_are_422_schema_violation() {
    let (app, iss) = setup().await;
    let jti = jti();
    let mut extra = app.issued(&jti, "acme", "iss");
    extra["data"]["surprise"] = json!(true);
    let mut bad_time = app.issued(&jti, "acme", "iss");
    bad_time["data"]["issued_at"] = json!("yesterday");
    let mut numeric_id = revoked(&jti);
    numeric_id["data"]["token_id"] = json!(12345);
    let mut no_reason = revoked(&jti);
    no_reason["data"].as_object_mut().unwrap().remove("reason");
    let mut not_object = revoked(&jti);
    not_object["data"] = json!("revoke it");
    for ev in [extra, bad_time] {
        refused_422(&app, &iss, &jti, vec![ev], "schema-violation").await;
    }
    // A revocation of a token that exists, so the schema is what refuses it.
    let (st, _, b) = app
        .append(
            &stream(&jti),
            &iss,
            json!("no_stream"),
            vec![app.issued(&jti, "acme", "iss")],
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    for ev in [numeric_id, no_reason, not_object] {
        let before = app.log_len().await;
        let a = app.append(&stream(&jti), &iss, json!("any"), vec![ev]).await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "schema-violation");
        assert!(a.2["errors"].is_array(), "{}", a.2);
        assert_eq!(app.log_len().await, before);
    }
}

#[tokio::test]
async fn a_subject_not_in_nfc_is_422_invalid_identifier() {
    let (app, iss) = setup().await;
    let jti = jti();
    let mut ev = app.issued(&jti, "acme", "iss");
    ev["data"]["subject"] = json!("cafe\u{301}");
    refused_422(&app, &iss, &jti, vec![ev], "invalid-identifier").await;
    // The NFC spelling of the same name is accepted.
    let mut ev = app.issued(&jti, "acme", "iss");
    ev["data"]["subject"] = json!("caf\u{e9}");
    let (st, _, b) = app.append(&stream(&jti), &iss, json!("no_stream"), vec![ev]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn invisible_or_control_characters_in_identifiers_are_422_invalid_identifier() {
    let (app, iss) = setup().await;
    let jti = jti();
    for (field, bad) in [
        ("subject", "al\u{200B}ice"),
        ("subject", "alice\u{202E}"),
        ("subject", "\u{FEFF}alice"),
        ("subject", "ali ce"),
        ("audience", "api://ord\u{200D}ers"),
        ("audience", "api://orde\u{301}rs"),
        ("scope", "orders:re\u{200B}ad"),
    ] {
        let mut ev = app.issued(&jti, "acme", "iss");
        ev["data"][field] = json!(bad);
        refused_422(&app, &iss, &jti, vec![ev], "invalid-identifier").await;
    }
    let mut ev = app.issued(&jti, "acme", "iss");
    ev["metadata"] = json!({"correlation_id": "corr\u{200B}1"});
    refused_422(&app, &iss, &jti, vec![ev], "invalid-identifier").await;
}

#[tokio::test]
async fn issued_at_or_not_before_five_minutes_off_the_writers_clock_is_422_clock_skew() {
    let (app, iss) = setup().await;
    let jti = jti();
    let now = app.now();
    for t in [now - Duration::minutes(5), now + Duration::minutes(5)] {
        let ev = issued_at(&jti, "acme", "iss", t);
        refused_422(&app, &iss, &jti, vec![ev], "clock-skew").await;
    }
    let mut ev = app.issued(&jti, "acme", "iss");
    ev["data"]["not_before"] = json!(iso(now + Duration::minutes(5)));
    ev["data"]["expires_at"] = json!(iso(now + Duration::minutes(10)));
    refused_422(&app, &iss, &jti, vec![ev], "clock-skew").await;
    // Within the allowed 60 s, both ways, is accepted.
    let ev = issued_at(&jti, "acme", "iss", now - Duration::seconds(59));
    let (st, _, b) = app.append(&stream(&jti), &iss, json!("no_stream"), vec![ev]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let other = super::support::jti();
    let ev = issued_at(&other, "acme", "iss", now + Duration::seconds(59));
    let (st, _, b) = app.append(&stream(&other), &iss, json!("no_stream"), vec![ev]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn skew_is_measured_against_the_writers_clock_not_the_clients() {
    let (app, iss) = setup().await;
    let jti = jti();
    let ev = app.issued(&jti, "acme", "iss");
    app.clock.set(app.now() + Duration::minutes(5));
    refused_422(&app, &iss, &jti, vec![ev.clone()], "clock-skew").await;
    app.clock.set(t0());
    let (st, _, b) = app.append(&stream(&jti), &iss, json!("no_stream"), vec![ev]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn expires_at_not_after_issued_at_is_422_invalid_token_times() {
    let (app, iss) = setup().await;
    let jti = jti();
    let now = app.now();
    for exp in [now - Duration::seconds(10), now] {
        let mut ev = app.issued(&jti, "acme", "iss");
        ev["data"]["expires_at"] = json!(iso(exp));
        refused_422(&app, &iss, &jti, vec![ev], "invalid-token-times").await;
    }
    // expires_at before not_before.
    let mut ev = app.issued(&jti, "acme", "iss");
    ev["data"]["not_before"] = json!(iso(now + Duration::seconds(30)));
    ev["data"]["expires_at"] = json!(iso(now + Duration::seconds(20)));
    refused_422(&app, &iss, &jti, vec![ev], "invalid-token-times").await;
}

#[tokio::test]
async fn token_issued_anywhere_but_first_in_the_batch_is_422_issuance_not_first() {
    let (app, iss) = setup().await;
    let jti = jti();
    let batch = vec![revoked(&jti), app.issued(&jti, "acme", "iss")];
    refused_422(&app, &iss, &jti, batch, "issuance-not-first").await;
    let mut second = app.issued(&jti, "acme", "iss");
    second["data"]["subject"] = json!("bob");
    let batch = vec![app.issued(&jti, "acme", "iss"), second];
    refused_422(&app, &iss, &jti, batch, "issuance-not-first").await;
}

#[tokio::test]
async fn an_unknown_schema_version_is_422() {
    let (app, iss) = setup().await;
    let jti = jti();
    let mut ev = app.issued(&jti, "acme", "iss");
    ev["metadata"] = json!({"schema_version": 2});
    refused_422(&app, &iss, &jti, vec![ev], "unknown-schema-version").await;
}

#[tokio::test]
async fn the_optional_fields_of_an_issuance_are_accepted_and_kept() {
    let (app, iss) = setup().await;
    let jti = jti();
    let mut ev = app.issued(&jti, "acme", "iss");
    ev["data"]["kid"] = json!("k4.pid.abc");
    ev["data"]["cnf"] = json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"});
    ev["data"]["parent_token_id"] = json!("parent-1");
    ev["data"]["context"] = json!({"ip": "203.0.113.9", "user_agent": "curl/8.0 (x86_64)", "device_id": "dev-1"});
    ev["metadata"] = json!({"correlation_id": "corr-1", "causation_id": "cause-1", "schema_version": 1});
    let (st, _, b) = app
        .append(&stream(&jti), &iss, json!("no_stream"), vec![ev.clone()])
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let (_, _, b) = app
        .call("GET", &format!("/v1/streams/{}", stream(&jti)), Some(&iss), None)
        .await;
    let got = &events(&b)[0];
    for f in ["kid", "cnf", "parent_token_id", "context"] {
        assert_eq!(got["data"][f], ev["data"][f], "{f}");
    }
    assert_eq!(got["metadata"]["correlation_id"], "corr-1");
    assert_eq!(got["metadata"]["causation_id"], "cause-1");

    // The context has a fixed shape.
    let other = super::support::jti();
    let mut ev = app.issued(&other, "acme", "iss");
    ev["data"]["context"] = json!({"ip": "203.0.113.9", "mac": "00:11"});
    refused_422(&app, &iss, &other, vec![ev], "schema-violation").await;
    let mut ev = app.issued(&other, "acme", "iss");
    ev["data"]["context"] = json!({"user_agent": "agent\u{202E}"});
    refused_422(&app, &iss, &other, vec![ev], "invalid-identifier").await;
}
