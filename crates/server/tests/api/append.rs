//! `POST /v1/streams/{stream}/events`: the happy path, idempotency, optimistic
//! concurrency, and every 400 / 413 / 415 leaving the log untouched.

use super::support::*;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokenledger_server::config::ServeArgs;

/// An app with issuer `iss` of `acme`, and a token stream holding
/// `TokenIssued` + `TokenRevoked`; returns (app, issuer secret, jti, the
/// two events, the append's answer body).
async fn with_token() -> (TestApp, String, String, Vec<Value>, Value) {
    let app = TestApp::new().await;
    let iss = app.issuer("iss", "acme").await;
    let jti = jti();
    let batch = vec![app.issued(&jti, "acme", "iss"), revoked(&jti)];
    let (st, _, body) = app.append(&stream(&jti), &iss, json!("no_stream"), batch.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    (app, iss, jti, batch, body)
}

#[tokio::test]
async fn appending_issuance_and_revocation_to_a_new_token_stream_answers_201_with_revisions_0_and_1() {
    let (app, _iss, jti, batch, body) = with_token().await;
    let evs = events(&body);
    assert_eq!(evs.len(), 2, "{body}");
    assert_eq!(evs[0]["event_id"], batch[0]["event_id"]);
    assert_eq!(evs[1]["event_id"], batch[1]["event_id"]);
    assert_eq!(evs[0]["revision"], 0);
    assert_eq!(evs[1]["revision"], 1);
    assert!(
        evs[0]["position"].as_u64().unwrap() < evs[1]["position"].as_u64().unwrap(),
        "positions are ordered: {body}"
    );
    assert_eq!(body["next_expected_revision"], 1);
    assert_eq!(app.stream_len("acme", &stream(&jti)).await, Some(2));
}

#[tokio::test]
async fn the_server_stamps_tenant_issuer_client_and_actor_from_the_credential() {
    let app = TestApp::new().await;
    let iss = app.issuer("iss", "acme").await;
    let jti = jti();
    let mut ev = app.issued(&jti, "acme", "iss");
    let data = ev["data"].as_object_mut().unwrap();
    data.remove("tenant");
    data.remove("issuer");
    data.remove("client_id");
    let (st, _, b) = app.append(&stream(&jti), &iss, json!("no_stream"), vec![ev]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let (st, _, b) = app
        .call("GET", &format!("/v1/streams/{}", stream(&jti)), Some(&iss), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let e = &events(&b)[0];
    assert_eq!(e["data"]["tenant"], "acme");
    assert_eq!(e["data"]["issuer"], "iss");
    assert_eq!(e["data"]["client_id"], "iss");
    assert_eq!(e["metadata"]["tenant"], "acme");
    assert_eq!(e["metadata"]["actor"], "iss");
    assert_eq!(e["stream"], stream(&jti));
    assert_eq!(e["event_type"], "TokenIssued");
}

#[tokio::test]
async fn repeating_an_append_answers_200_with_the_identical_body_and_writes_nothing() {
    let (app, iss, jti, batch, first) = with_token().await;
    let before = app.log_len().await;
    let (st, _, again) = app.append(&stream(&jti), &iss, json!("no_stream"), batch).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(again, first);
    assert_eq!(app.stream_len("acme", &stream(&jti)).await, Some(2));
    assert_eq!(app.log_len().await, before);
}

#[tokio::test]
async fn a_stale_expected_revision_is_409_naming_the_actual_revision() {
    let (app, iss, jti, _, _) = with_token().await;
    let before = app.log_len().await;
    let a = app.append(&stream(&jti), &iss, json!(0), vec![revoked(&jti)]).await;
    assert_problem(&a, StatusCode::CONFLICT, "wrong-expected-revision");
    assert_eq!(a.2["actual_revision"], 1);
    assert_eq!(a.2["expected_revision"], 0);
    let a = app
        .append(&stream(&jti), &iss, json!("no_stream"), vec![revoked(&jti)])
        .await;
    assert_problem(&a, StatusCode::CONFLICT, "wrong-expected-revision");
    assert_eq!(a.2["actual_revision"], 1);
    assert_eq!(app.log_len().await, before);
    // The right revision goes through.
    let (st, _, b) = app.append(&stream(&jti), &iss, json!(1), vec![revoked(&jti)]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert_eq!(events(&b)[0]["revision"], 2);
    assert_eq!(b["next_expected_revision"], 2);
}

#[tokio::test]
async fn a_second_issuance_into_an_existing_token_stream_is_409() {
    let (app, iss, jti, _, _) = with_token().await;
    let before = app.log_len().await;
    let a = app
        .append(&stream(&jti), &iss, json!("any"), vec![app.issued(&jti, "acme", "iss")])
        .await;
    assert_problem(&a, StatusCode::CONFLICT, "wrong-expected-revision");
    assert_eq!(a.2["actual_revision"], 1);
    assert_eq!(app.log_len().await, before);
}

#[tokio::test]
async fn an_event_id_reused_with_other_content_is_409_idempotency_conflict() {
    let (app, iss, jti, batch, _) = with_token().await;
    let before = app.log_len().await;
    // Same id, other reason.
    let mut ev = batch[1].clone();
    ev["data"]["reason"] = json!("another reason");
    let a = app.append(&stream(&jti), &iss, json!("any"), vec![ev]).await;
    assert_problem(&a, StatusCode::CONFLICT, "idempotency-conflict");
    assert_eq!(a.2["event_id"], batch[1]["event_id"]);
    // Same id, another token stream.
    let other = super::support::jti();
    let mut ev = app.issued(&other, "acme", "iss");
    ev["event_id"] = batch[0]["event_id"].clone();
    let a = app.append(&stream(&other), &iss, json!("no_stream"), vec![ev]).await;
    assert_problem(&a, StatusCode::CONFLICT, "idempotency-conflict");
    assert_eq!(app.log_len().await, before);
    assert_eq!(app.stream_len("acme", &stream(&other)).await, None);
}

/// Sends `text` as the append body; asserts 400 `kind` and an untouched log.
async fn refused_400(app: &TestApp, iss: &str, jti: &str, text: &str, kind: &str) {
    let before = app.log_len().await;
    let a = app.append_raw(&stream(jti), iss, text).await;
    assert_problem(&a, StatusCode::BAD_REQUEST, kind);
    assert_eq!(app.log_len().await, before, "a 400 wrote something: {text}");
    assert_eq!(app.stream_len("acme", &stream(jti)).await, Some(2));
}

fn body_text(expected: Value, events: Vec<Value>) -> String {
    json!({"expected_revision": expected, "events": events}).to_string()
}

#[tokio::test]
async fn malformed_json_is_400_malformed_json() {
    let (app, iss, jti, _, _) = with_token().await;
    for text in [
        "{not json",
        "",
        "[",
        r#"{"expected_revision": "any", "events": []} trailing"#,
    ] {
        refused_400(&app, &iss, &jti, text, "malformed-json").await;
    }
}

#[tokio::test]
async fn a_duplicate_json_key_anywhere_is_400_malformed_json() {
    let (app, iss, jti, _, _) = with_token().await;
    let ev = revoked(&jti).to_string();
    let eid = eid();
    let texts = [
        // top level
        format!(r#"{{"expected_revision": "any", "expected_revision": 1, "events": [{ev}]}}"#),
        // in an event
        format!(
            r#"{{"expected_revision": "any", "events": [{{"event_id": "{eid}", "event_id": "{eid}", "event_type": "TokenRevoked", "data": {{"token_id": "{jti}", "reason": "r"}}}}]}}"#
        ),
        // in data
        format!(
            r#"{{"expected_revision": "any", "events": [{{"event_id": "{eid}", "event_type": "TokenRevoked", "data": {{"token_id": "{jti}", "reason": "a", "reason": "b"}}}}]}}"#
        ),
        // in metadata
        format!(
            r#"{{"expected_revision": "any", "events": [{{"event_id": "{eid}", "event_type": "TokenRevoked", "data": {{"token_id": "{jti}", "reason": "a"}}, "metadata": {{"actor": "iss", "actor": "x"}}}}]}}"#
        ),
        // the same key spelled with an escape
        format!(
            r#"{{"expected_revision": "any", "events": [{{"event_id": "{eid}", "event_type": "TokenRevoked", "data": {{"token_id": "{jti}", "reason": "a", "\u0072eason": "b"}}}}]}}"#
        ),
        // deep inside data
        format!(
            r#"{{"expected_revision": "any", "events": [{{"event_id": "{eid}", "event_type": "TokenRevoked", "data": {{"token_id": "{jti}", "reason": "a", "x": [{{"y": {{"z": 1, "z": 2}}}}]}}}}]}}"#
        ),
    ];
    for text in texts {
        refused_400(&app, &iss, &jti, &text, "malformed-json").await;
    }
}

#[tokio::test]
async fn json_nested_beyond_the_parsers_depth_is_400_malformed_json() {
    let (app, iss, jti, _, _) = with_token().await;
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let text = format!(
        r#"{{"expected_revision": "any", "events": [{{"event_id": "{}", "event_type": "TokenRevoked", "data": {{"token_id": "{jti}", "reason": "a", "x": {deep}}}}}]}}"#,
        eid()
    );
    refused_400(&app, &iss, &jti, &text, "malformed-json").await;
}

#[tokio::test]
async fn unknown_fields_and_wrong_types_are_400_invalid_body() {
    let (app, iss, jti, _, _) = with_token().await;
    let mut with_meta = revoked(&jti);
    with_meta["metadata"] = json!({"surprise": 1});
    let mut with_event_field = revoked(&jti);
    with_event_field["surprise"] = json!(1);
    let mut bad_id = revoked(&jti);
    bad_id["event_id"] = json!("not-a-uuid");
    let mut bad_meta_type = revoked(&jti);
    bad_meta_type["metadata"] = json!({"schema_version": "1"});
    let texts = [
        json!({"expected_revision": "any", "events": [revoked(&jti)], "surprise": 1}).to_string(),
        body_text(json!("any"), vec![with_meta]),
        body_text(json!("any"), vec![with_event_field]),
        body_text(json!("any"), vec![bad_id]),
        body_text(json!("any"), vec![bad_meta_type]),
        // expected_revision of the wrong type or value
        body_text(json!("1"), vec![revoked(&jti)]),
        body_text(json!(-1), vec![revoked(&jti)]),
        body_text(json!(1.5), vec![revoked(&jti)]),
        body_text(json!("latest"), vec![revoked(&jti)]),
        body_text(json!(null), vec![revoked(&jti)]),
        body_text(json!(true), vec![revoked(&jti)]),
        // missing members
        json!({"events": [revoked(&jti)]}).to_string(),
        json!({"expected_revision": "any"}).to_string(),
        json!({"expected_revision": "any", "events": {}}).to_string(),
        json!([]).to_string(),
    ];
    for text in texts {
        refused_400(&app, &iss, &jti, &text, "invalid-body").await;
    }
}

#[tokio::test]
async fn an_empty_batch_is_400_empty_append() {
    let (app, iss, jti, _, _) = with_token().await;
    refused_400(&app, &iss, &jti, &body_text(json!("any"), vec![]), "empty-append").await;
}

#[tokio::test]
async fn a_batch_repeating_an_event_id_is_400_duplicate_event_id() {
    let (app, iss, jti, _, _) = with_token().await;
    let a = revoked(&jti);
    let mut b = revoked(&jti);
    b["event_id"] = a["event_id"].clone();
    b["data"]["reason"] = json!("other");
    refused_400(
        &app,
        &iss,
        &jti,
        &body_text(json!("any"), vec![a.clone(), b]),
        "duplicate-event-id",
    )
    .await;
    refused_400(
        &app,
        &iss,
        &jti,
        &body_text(json!("any"), vec![a.clone(), a]),
        "duplicate-event-id",
    )
    .await;
}

#[tokio::test]
async fn more_events_than_the_limit_is_400_too_many_events() {
    let app = TestApp::with_args(ServeArgs {
        max_events_per_append: Some(2),
        ..ServeArgs::default()
    })
    .await;
    let iss = app.issuer("iss", "acme").await;
    let jti = jti();
    let before = app.log_len().await;
    let batch = vec![app.issued(&jti, "acme", "iss"), revoked(&jti), revoked(&jti)];
    let a = app.append(&stream(&jti), &iss, json!("no_stream"), batch).await;
    assert_problem(&a, StatusCode::BAD_REQUEST, "too-many-events");
    assert_eq!(app.log_len().await, before);
}

#[tokio::test]
async fn an_invalid_stream_name_is_400_invalid_stream_name() {
    let (app, iss, jti, _, _) = with_token().await;
    let before = app.log_len().await;
    for name in [
        "-token-x",
        "token-a%2Fb",
        "token-%24x",
        "%24all",
        "token-caf%C3%A9",
        &"a".repeat(201),
    ] {
        let a = app
            .call(
                "POST",
                &format!("/v1/streams/{name}/events"),
                Some(&iss),
                Some(json!({"expected_revision": "any", "events": [revoked(&jti)]})),
            )
            .await;
        assert_problem(&a, StatusCode::BAD_REQUEST, "invalid-stream-name");
    }
    assert_eq!(app.log_len().await, before);
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_415() {
    let (app, iss, jti, _, _) = with_token().await;
    let before = app.log_len().await;
    let text = body_text(json!("any"), vec![revoked(&jti)]);
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("jsonish"),
    ] {
        let a = app
            .send(
                "POST",
                &format!("/v1/streams/{}/events", stream(&jti)),
                Some(&iss),
                ct,
                text.clone(),
            )
            .await;
        assert_problem(&a, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");
    }
    assert_eq!(app.log_len().await, before);
    assert_eq!(app.stream_len("acme", &stream(&jti)).await, Some(2));
    // A charset parameter is still JSON.
    let (st, _, b) = app
        .send(
            "POST",
            &format!("/v1/streams/{}/events", stream(&jti)),
            Some(&iss),
            Some("application/json; charset=utf-8"),
            text,
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_body_too_large() {
    let app = TestApp::with_args(ServeArgs {
        max_body_bytes: Some(4096),
        ..ServeArgs::default()
    })
    .await;
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
    let before = app.log_len().await;
    let mut big = revoked(&jti);
    big["data"]["reason"] = json!("a".repeat(5000));
    let a = app.append(&stream(&jti), &iss, json!("any"), vec![big]).await;
    assert_problem(&a, StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    assert_eq!(app.log_len().await, before);
    assert_eq!(app.stream_len("acme", &stream(&jti)).await, Some(1));
    // Just under the limit is fine.
    let mut small = revoked(&jti);
    small["data"]["reason"] = json!("a".repeat(3000));
    let (st, _, b) = app.append(&stream(&jti), &iss, json!("any"), vec![small]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
}

/// The wire shape of an append is a JSON object (DESIGN.md "Append"); the
/// strict parser must not accept the same members positionally, as an array.
#[tokio::test]
async fn an_append_body_or_event_given_as_an_array_is_400_invalid_body() {
    let (app, iss, jti, _, _) = with_token().await;
    let ev = revoked(&jti);
    let positional_event = json!([ev["event_id"], "TokenRevoked", ev["data"], {}]);
    let texts = [
        json!(["any", [revoked(&jti)]]).to_string(),
        json!({"expected_revision": "any", "events": [positional_event]}).to_string(),
    ];
    for text in texts {
        refused_400(&app, &iss, &jti, &text, "invalid-body").await;
    }
    // The same parser reads every body, e.g. a principal's.
    let admin = app.admin("acme").await;
    let a = app
        .call(
            "POST",
            "/v1/principals",
            Some(&admin),
            Some(json!(["gw-9", "analyst", "acme"])),
        )
        .await;
    assert_problem(&a, StatusCode::BAD_REQUEST, "invalid-body");
    assert!(app.state.registry.read().principal("acme", "gw-9").is_none());
}

/// A retry of a recorded append answers its original result (DESIGN.md: the
/// issuer surface is idempotent; the event id is the idempotency key). An
/// issuer whose answer was lost and who retries two minutes later must learn
/// that its token *is* recorded, not get a 422 that reads as "not recorded".
#[tokio::test]
async fn a_retry_of_a_recorded_issuance_is_200_even_after_the_writers_clock_moved_on() {
    let (app, iss, jti, batch, first) = with_token().await;
    let before = app.log_len().await;
    app.clock.set(app.now() + chrono::Duration::minutes(2));
    let (st, _, again) = app.append(&stream(&jti), &iss, json!("no_stream"), batch).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(again, first);
    assert_eq!(app.log_len().await, before);
}

/// As above after the client's policy was narrowed: the token is in the
/// ledger, so the retry must not answer "do not mint" nor record a
/// `GrantRefused` for a token the ledger says was issued.
#[tokio::test]
async fn a_retry_of_a_recorded_issuance_is_200_after_its_policy_was_narrowed_and_records_no_refusal() {
    let (app, iss, jti, batch, first) = with_token().await;
    let mut narrow = default_policy();
    narrow["formats"] = json!(["v4.public"]);
    app.policy("acme", "iss", narrow).await;
    let before = app.log_len().await;
    let (st, _, again) = app.append(&stream(&jti), &iss, json!("no_stream"), batch).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(again, first);
    assert_eq!(
        app.log_len().await,
        before,
        "a GrantRefused was recorded for a recorded token"
    );
}
