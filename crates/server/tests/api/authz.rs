//! 401 and 403 of an append: credentials, roles, who may write what into
//! which stream, stamped fields, token ownership and client policy.

use super::support::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

async fn setup() -> (TestApp, String) {
    let app = TestApp::new().await;
    let iss = app.issuer("iss", "acme").await;
    (app, iss)
}

#[tokio::test]
async fn an_append_without_a_valid_credential_is_401_with_www_authenticate_bearer() {
    let (app, iss) = setup().await;
    let jti = jti();
    let body = json!({"expected_revision": "no_stream", "events": [app.issued(&jti, "acme", "iss")]});
    let path = format!("/v1/streams/{}/events", stream(&jti));
    let before = app.log_len().await;

    // No credential at all.
    assert_unauthenticated(&app.call("POST", &path, None, Some(body.clone())).await);
    // Malformed ones.
    let (_, id_and_secret) = iss.split_once('_').unwrap();
    let (id, secret) = id_and_secret.split_once('_').unwrap();
    let flipped = format!(
        "tl_{id}_{}{}",
        if secret.starts_with('0') { '1' } else { '0' },
        &secret[1..]
    );
    for bad in [
        "tl_abc",
        "tl__",
        "garbage",
        &format!("tl_{id}_{}", &secret[..63]),
        &format!("tl_{id}_{secret}0"),
        &format!("tl_ffffffffffffffffffffffff_{secret}"),
        &flipped,
        &BOOT[..BOOT.len() - 1],
    ] {
        assert_unauthenticated(&app.call("POST", &path, Some(bad), Some(body.clone())).await);
    }
    // Not the Bearer scheme, or no secret after it.
    for auth in [
        format!("Basic {iss}"),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        iss.clone(),
    ] {
        let req = Request::builder()
            .method("POST")
            .uri(&path)
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        assert_unauthenticated(&app.send_request(req).await);
    }
    assert_eq!(app.log_len().await, before);
    assert_eq!(app.stream_len("acme", &stream(&jti)).await, None);
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let req = Request::builder()
        .method("POST")
        .uri(&path)
        .header(header::AUTHORIZATION, format!("bearer {iss}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (st, _, b) = app.send_request(req).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn a_rotated_away_or_disabled_credential_is_401() {
    let (app, iss) = setup().await;
    let admin = app.admin("acme").await;
    let jti = jti();
    let body = json!({"expected_revision": "no_stream", "events": [app.issued(&jti, "acme", "iss")]});
    let path = format!("/v1/streams/{}/events", stream(&jti));

    let (st, _, b) = app.call("POST", "/v1/principals/iss/rotate", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let new = b["secret"].as_str().unwrap().to_owned();
    assert_unauthenticated(&app.call("POST", &path, Some(&iss), Some(body.clone())).await);

    let (st, _, b) = app.call("POST", "/v1/principals/iss/disable", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_unauthenticated(&app.call("POST", &path, Some(&new), Some(body)).await);
    assert_eq!(app.stream_len("acme", &stream(&jti)).await, None);
}

#[tokio::test]
async fn validators_analysts_and_soc_may_not_append_403_role_not_allowed() {
    let (app, iss) = setup().await;
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
    for role in ["validator", "analyst", "soc"] {
        let who = app.principal(&format!("p-{role}"), role, "acme").await;
        let before = app.log_len().await;
        let a = app.append(&stream(&jti), &who, json!("any"), vec![revoked(&jti)]).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
        // Even a well-formed issuance of its own.
        let own = super::support::jti();
        let name = format!("p-{role}");
        let a = app
            .append(
                &stream(&own),
                &who,
                json!("no_stream"),
                vec![app.issued(&own, "acme", &name)],
            )
            .await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
        // The role is checked before the body is parsed.
        let a = app.append_raw(&stream(&jti), &who, "{not json").await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
        assert_eq!(app.log_len().await, before);
    }
    let before = app.log_len().await;
    let a = app.append(&stream(&jti), BOOT, json!("any"), vec![revoked(&jti)]).await;
    assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    assert_eq!(app.log_len().await, before);
}

/// DESIGN.md "Errors": credential (401) → may this role call this endpoint
/// (403) → JSON syntax and shape (400). A caller whose role may not call the
/// endpoint is told so whatever its body looks like — including a body that
/// is not declared JSON.
#[tokio::test]
async fn the_role_is_checked_before_the_content_type() {
    let app = TestApp::new().await;
    let val = app.principal("gw", "validator", "acme").await;
    let path = format!("/v1/streams/{}/events", stream(&jti()));
    let a = app.send("POST", &path, Some(&val), Some("text/plain"), "hello").await;
    assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
}

/// As above, for a body over the size limit.
#[tokio::test]
async fn the_role_is_checked_before_the_body_size() {
    let app = TestApp::with_args(tokenledger_server::config::ServeArgs {
        max_body_bytes: Some(4096),
        ..Default::default()
    })
    .await;
    let val = app.principal("gw", "validator", "acme").await;
    let path = format!("/v1/streams/{}/events", stream(&jti()));
    let a = app
        .send("POST", &path, Some(&val), Some("application/json"), vec![b' '; 8192])
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
}

#[tokio::test]
async fn an_issuer_may_not_append_server_written_event_types_403_event_not_allowed() {
    let (app, iss) = setup().await;
    let before = app.log_len().await;
    let cases: Vec<(&str, Value)> = vec![
        (
            "keys-acme",
            json!({"event_id": eid(), "event_type": "SigningKeyRevoked", "data": {"kid": "k4.pid.x", "reason": "r"}, "metadata": {}}),
        ),
        (
            "policy-iss",
            json!({"event_id": eid(), "event_type": "ClientPolicySet", "data": {"client_id": "iss", "audiences": {}, "formats": ["external"]}, "metadata": {}}),
        ),
        (
            "token-abc",
            json!({"event_id": eid(), "event_type": "ClientPolicySet", "data": {"client_id": "iss", "audiences": {}, "formats": ["external"]}, "metadata": {}}),
        ),
        (
            "token-abc",
            json!({"event_id": eid(), "event_type": "GrantRefused", "data": {}, "metadata": {}}),
        ),
        (
            "principal-iss",
            json!({"event_id": eid(), "event_type": "PrincipalDisabled", "data": {"name": "iss", "tenant": "acme", "by": "iss"}, "metadata": {}}),
        ),
        (
            "token-abc",
            json!({"event_id": eid(), "event_type": "NoSuchEvent", "data": {}, "metadata": {}}),
        ),
    ];
    for (stream, ev) in cases {
        let a = app.append(stream, &iss, json!("any"), vec![ev]).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "event-not-allowed");
    }
    assert_eq!(app.log_len().await, before);
}

#[tokio::test]
async fn an_issuer_may_not_append_into_a_stream_that_is_not_a_token_stream() {
    let (app, iss) = setup().await;
    let before = app.log_len().await;
    let jti = jti();
    for s in [
        "orders-1",
        "refusals-iss",
        "principal-iss",
        "tenant",
        "token-",
        "tokens-x",
        "Token-x",
    ] {
        let a = app.append(s, &iss, json!("any"), vec![revoked(&jti)]).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "event-not-allowed");
        let a = app
            .append(s, &iss, json!("no_stream"), vec![app.issued(&jti, "acme", "iss")])
            .await;
        assert_problem(&a, StatusCode::FORBIDDEN, "event-not-allowed");
    }
    assert_eq!(app.log_len().await, before);
}

#[tokio::test]
async fn a_token_id_that_does_not_match_the_stream_is_403() {
    let (app, iss) = setup().await;
    let jti = jti();
    let before = app.log_len().await;
    let a = app
        .append(
            &stream(&jti),
            &iss,
            json!("no_stream"),
            vec![app.issued("another", "acme", "iss")],
        )
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "event-not-allowed");
    let batch = vec![app.issued(&jti, "acme", "iss"), revoked("another")];
    let a = app.append(&stream(&jti), &iss, json!("no_stream"), batch).await;
    assert_problem(&a, StatusCode::FORBIDDEN, "event-not-allowed");
    assert_eq!(app.log_len().await, before);
    assert_eq!(app.stream_len("acme", &stream(&jti)).await, None);
}

#[tokio::test]
async fn a_revocation_by_selector_is_not_an_append_403() {
    let (app, iss) = setup().await;
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
    let before = app.log_len().await;
    for data in [
        json!({"selector": {"scope": "subject", "key": "alice"}, "reason": "r"}),
        json!({"token_id": jti, "selector": {"scope": "client", "key": "iss"}, "reason": "r"}),
    ] {
        let ev = json!({"event_id": eid(), "event_type": "TokenRevoked", "data": data, "metadata": {}});
        let a = app.append(&stream(&jti), &iss, json!("any"), vec![ev]).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "event-not-allowed");
    }
    assert_eq!(app.log_len().await, before);
}

#[tokio::test]
async fn fields_stamped_from_the_credential_must_agree_403_stamped_field_mismatch() {
    let (app, iss) = setup().await;
    // Another issuer of the same tenant, with a policy, exists.
    app.issuer("other", "acme").await;
    let jti = jti();
    let before = app.log_len().await;
    let mut cases = Vec::new();
    for (field, value) in [("client_id", "other"), ("issuer", "other"), ("tenant", "globex")] {
        let mut ev = app.issued(&jti, "acme", "iss");
        ev["data"][field] = json!(value);
        cases.push(ev);
    }
    for (field, value) in [("tenant", "globex"), ("actor", "other")] {
        let mut ev = app.issued(&jti, "acme", "iss");
        ev["metadata"][field] = json!(value);
        cases.push(ev);
    }
    for ev in cases {
        let a = app
            .append(&stream(&jti), &iss, json!("no_stream"), vec![ev.clone()])
            .await;
        assert_problem(&a, StatusCode::FORBIDDEN, "stamped-field-mismatch");
    }
    assert_eq!(app.log_len().await, before, "a stamped-field refusal wrote something");
    assert_eq!(app.stream_len("acme", &stream(&jti)).await, None);

    // Matching values are fine, and so is a revocation's `by`.
    let mut ev = app.issued(&jti, "acme", "iss");
    ev["metadata"] = json!({"tenant": "acme", "actor": "iss"});
    let (st, _, b) = app.append(&stream(&jti), &iss, json!("no_stream"), vec![ev]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let mut ev = revoked(&jti);
    ev["data"]["by"] = json!("other");
    let a = app.append(&stream(&jti), &iss, json!("any"), vec![ev]).await;
    assert_problem(&a, StatusCode::FORBIDDEN, "stamped-field-mismatch");
    let mut ev = revoked(&jti);
    ev["data"]["by"] = json!("iss");
    let (st, _, b) = app.append(&stream(&jti), &iss, json!("any"), vec![ev]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn revoking_another_clients_token_is_403_not_token_owner() {
    let (app, iss) = setup().await;
    let other = app.issuer("other", "acme").await;
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
    let before = app.log_len().await;
    let a = app
        .append(&stream(&jti), &other, json!("any"), vec![revoked(&jti)])
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "not-token-owner");
    assert_eq!(app.log_len().await, before);
    assert_eq!(app.stream_len("acme", &stream(&jti)).await, Some(1));
}

#[tokio::test]
async fn revoking_a_token_that_was_never_issued_is_404() {
    let (app, iss) = setup().await;
    let jti = jti();
    let before = app.log_len().await;
    let a = app.append(&stream(&jti), &iss, json!("any"), vec![revoked(&jti)]).await;
    assert_problem(&a, StatusCode::NOT_FOUND, "stream-not-found");
    assert_eq!(app.log_len().await, before);
}

/// Appends `ev` as `who` (client `client`); asserts 403 `grant-refused` with
/// `reason`, one `GrantRefused` recorded in `$all` (read as admin), and no
/// token stream.
async fn refused_grant(app: &TestApp, who: &str, client: &str, jti: &str, ev: Value, reason: &str) {
    let admin = app.admin("acme").await;
    let (_, _, all) = app.call("GET", "/v1/events", Some(&admin), None).await;
    let before = events(&all).len();
    let a = app.append(&stream(jti), who, json!("no_stream"), vec![ev]).await;
    assert_problem(&a, StatusCode::FORBIDDEN, "grant-refused");
    assert_eq!(a.2["reason"], reason, "{}", a.2);

    let (st, _, all) = app.call("GET", "/v1/events", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK);
    let all = events(&all);
    assert_eq!(all.len(), before + 1, "exactly the GrantRefused is recorded");
    let g = all.last().unwrap();
    assert_eq!(g["event_type"], "GrantRefused", "{g}");
    assert_eq!(g["data"]["path"], "append", "{g}");
    assert_eq!(g["data"]["client_id"], client, "{g}");
    assert_eq!(g["data"]["subject"], "alice", "{g}");
    assert_eq!(g["data"]["reason"], reason, "{g}");
    assert_eq!(g["metadata"]["tenant"], "acme", "{g}");
    assert!(g["data"]["requested"].is_object(), "{g}");

    assert_eq!(app.stream_len("acme", &stream(jti)).await, None);
    let a = app
        .call("GET", &format!("/v1/streams/{}", stream(jti)), Some(&admin), None)
        .await;
    assert_problem(&a, StatusCode::NOT_FOUND, "stream-not-found");
}

#[tokio::test]
async fn an_issuance_outside_the_clients_policy_is_403_grant_refused_and_recorded() {
    let (app, iss) = setup().await;
    let jti = jti();
    let mut ev = app.issued(&jti, "acme", "iss");
    ev["data"]["audience"] = json!("api://billing");
    refused_grant(&app, &iss, "iss", &jti, ev, "audience").await;

    let mut ev = app.issued(&jti, "acme", "iss");
    ev["data"]["scope"] = json!("orders:read orders:admin");
    refused_grant(&app, &iss, "iss", &jti, ev, "scope").await;

    let mut ev = app.issued(&jti, "acme", "iss");
    ev["data"]["expires_at"] = json!(iso(app.now() + chrono::Duration::seconds(3601)));
    refused_grant(&app, &iss, "iss", &jti, ev, "ttl").await;

    for format in ["v4.public", "v4.local"] {
        let mut ev = app.issued(&jti, "acme", "iss");
        ev["data"]["format"] = json!(format);
        refused_grant(&app, &iss, "iss", &jti, ev, "format").await;
    }
}

#[tokio::test]
async fn a_policy_that_does_not_allow_format_external_refuses_an_issuers_append() {
    let (app, iss) = setup().await;
    let mut p = default_policy();
    p["formats"] = json!(["v4.public"]);
    app.policy("acme", "iss", p).await;
    let jti = jti();
    let ev = app.issued(&jti, "acme", "iss");
    refused_grant(&app, &iss, "iss", &jti, ev, "format").await;
}

#[tokio::test]
async fn an_issuer_without_a_policy_can_record_nothing_403_grant_refused() {
    let app = TestApp::new().await;
    let nopol = app.principal("nopol", "issuer", "acme").await;
    let jti = jti();
    let ev = app.issued(&jti, "acme", "nopol");
    refused_grant(&app, &nopol, "nopol", &jti, ev, "no_policy").await;
}

#[tokio::test]
async fn within_policy_the_full_ttl_is_granted() {
    let (app, iss) = setup().await;
    let jti = jti();
    let mut ev = app.issued(&jti, "acme", "iss");
    ev["data"]["scope"] = json!("orders:read orders:write");
    ev["data"]["expires_at"] = json!(iso(app.now() + chrono::Duration::seconds(3600)));
    let (st, _, b) = app.append(&stream(&jti), &iss, json!("no_stream"), vec![ev]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
}
