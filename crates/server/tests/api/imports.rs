//! `POST /v1/imports` (DESIGN.md "Time": importers, admin only, keep the
//! original time in `metadata.source_time`): imported records land with
//! their own time, drive the views and detectors on it, are idempotent by
//! event id, are not refused by cutoffs (they are history), and every bad
//! batch is refused whole with nothing written.

use super::support::*;
use axum::http::StatusCode;
use serde_json::{Value, json};

const T: &str = "imports-aws";

fn issued(id: &str, device: &str) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4(),
        "event_type": "TokenIssued",
        "source_time": "2020-09-14T00:48:30Z",
        "data": {
            "token_id": id, "tenant": "", "issuer": "sts.amazonaws.com",
            "subject": "arn:aws:sts::123456789123:assumed-role/web/i-1", "client_id": "web",
            "audience": "aws", "scope": "web", "issued_at": "2020-09-14T00:48:30Z",
            "expires_at": "2020-09-14T07:10:27Z", "not_before": "2020-09-14T00:48:30Z",
            "format": "external", "context": {"device_id": device},
        },
    })
}

fn used(id: &str, agent: &str, at: &str) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4(),
        "event_type": "TokenUsed",
        "source_time": at,
        "data": {
            "validator": "aws-cloudtrail", "audience": "aws", "outcome": "accepted",
            "at": at, "token_id": id, "subject": "arn:aws:sts::123456789123:assumed-role/web/i-1",
            "client_id": "web", "context": {"ip": "1.2.3.4", "user_agent": agent},
        },
    })
}

async fn import(app: &TestApp, token: &str, events: Vec<Value>) -> Answer {
    app.call(
        "POST",
        "/v1/imports",
        Some(token),
        Some(json!({"format": "cloudtrail", "events": events})),
    )
    .await
}

#[tokio::test]
async fn imported_records_keep_their_time_raise_anomalies_and_are_idempotent() {
    let app = TestApp::new().await;
    let admin = app.admin(T).await;
    // A tenant-wide cutoff does not refuse history from another system.
    let c = app
        .call(
            "POST",
            "/v1/cutoffs",
            Some(&admin),
            Some(json!({"scope": "tenant", "key": T, "reason": "drill", "duration_seconds": 600})),
        )
        .await;
    assert_eq!(c.0, StatusCode::CREATED, "{}", c.2);
    let batch = vec![
        issued("ASIAKEY1", "i-1"),
        used(
            "ASIAKEY1",
            "aws-cli/1.18.136 Python/3.8.5 Darwin/19.5.0",
            "2020-09-14T01:00:33Z",
        ),
        used(
            "ASIAKEY1",
            "aws-cli/1.18.136 Python/3.8.5 Darwin/19.5.0",
            "2020-09-14T01:00:40Z",
        ),
    ];
    let a = import(&app, &admin, batch.clone()).await;
    assert_eq!(a.0, StatusCode::OK, "{}", a.2);
    assert_eq!(a.2["appended"], 3);
    assert_eq!(a.2["duplicates"], 0);
    let first = a.2["first_position"].as_u64().unwrap();
    assert_eq!(a.2["last_position"].as_u64().unwrap(), first + 2);

    // Recorded now, with the source's time in the metadata; the tenant is
    // stamped; the uses go to the import's own stream.
    let log = app.log(T).await;
    let n = log.len();
    let issue = log.iter().find(|e| e.event_type == "TokenIssued").unwrap();
    assert_eq!(issue.stream, "token-ASIAKEY1");
    assert_eq!(issue.data["tenant"], T);
    assert_eq!(issue.metadata["source_time"], "2020-09-14T00:48:30Z");
    assert_eq!(issue.metadata["actor"], "admin-imports-aws");
    let uses: Vec<_> = log.iter().filter(|e| e.event_type == "TokenUsed").collect();
    assert_eq!(uses.len(), 2);
    assert!(uses.iter().all(|e| e.stream == "import-cloudtrail-uses"));

    // The token was issued to device i-1 and used from a laptop's CLI: one
    // new_device, detected at the source's time.
    let an = app.call("GET", "/v1/anomalies", Some(&admin), None).await;
    let list = an.2["anomalies"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{}", an.2);
    assert_eq!(list[0]["kind"], "new_device");
    assert_eq!(list[0]["token_id"], "ASIAKEY1");
    assert_eq!(list[0]["position"].as_u64().unwrap(), first + 1);
    assert_eq!(list[0]["detected_at"], "2020-09-14T01:00:33Z");

    // The same file again writes nothing.
    let again = import(&app, &admin, batch).await;
    assert_eq!(again.0, StatusCode::OK, "{}", again.2);
    assert_eq!(again.2["appended"], 0);
    assert_eq!(again.2["duplicates"], 3);
    assert_eq!(again.2["first_position"].as_u64().unwrap(), first);
    assert_eq!(app.log(T).await.len(), n);
}

#[tokio::test]
async fn only_an_admin_imports() {
    let app = TestApp::new().await;
    let admin = app.admin(T).await;
    for role in ["issuer", "validator", "analyst", "soc"] {
        let who = app.principal(&format!("p-{role}"), role, T).await;
        let a = import(&app, &who, vec![issued("K1", "i-1")]).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    let a = app
        .call(
            "POST",
            "/v1/imports",
            None,
            Some(json!({"format": "cloudtrail", "events": [issued("K1", "i-1")]})),
        )
        .await;
    assert_unauthenticated(&a);
    let before = app.log(T).await.len();
    assert!(before > 0);
    let ok = import(&app, &admin, vec![issued("K1", "i-1")]).await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.2);
    assert_eq!(app.log(T).await.len(), before + 1);
}

#[tokio::test]
async fn a_bad_batch_is_refused_whole_and_writes_nothing() {
    let app = TestApp::new().await;
    let admin = app.admin(T).await;
    let good = issued("K1", "i-1");
    let mut refused = issued("K2", "i-1");
    refused["event_type"] = json!("GrantRefused");
    let mut other_tenant = issued("K3", "i-1");
    other_tenant["data"]["tenant"] = json!("acme");
    let mut future = issued("K4", "i-1");
    future["source_time"] = json!("2999-01-01T00:00:00Z");
    let selector = json!({
        "event_id": uuid::Uuid::new_v4(), "event_type": "TokenRevoked", "source_time": "2020-09-14T00:48:30Z",
        "data": {"selector": {"scope": "subject", "key": "alice"}, "reason": "x"},
    });
    let mut bad_schema = issued("K5", "i-1");
    bad_schema["data"]["expires_at"] = json!("soon");
    let mut bad_name = issued("K6", "i-1");
    bad_name["data"]["subject"] = json!("al ice");
    let mut unknown_field = issued("K7", "i-1");
    unknown_field["extra"] = json!(1);
    let before = app.log(T).await.len();
    let cases: Vec<(Vec<Value>, StatusCode, &str)> = vec![
        (vec![], StatusCode::BAD_REQUEST, "empty-import"),
        (vec![good.clone(), refused], StatusCode::FORBIDDEN, "event-not-allowed"),
        (
            vec![good.clone(), other_tenant],
            StatusCode::FORBIDDEN,
            "stamped-field-mismatch",
        ),
        (
            vec![good.clone(), future],
            StatusCode::UNPROCESSABLE_ENTITY,
            "source-time-in-future",
        ),
        (vec![good.clone(), selector], StatusCode::FORBIDDEN, "event-not-allowed"),
        (
            vec![good.clone(), bad_schema],
            StatusCode::UNPROCESSABLE_ENTITY,
            "schema-violation",
        ),
        (
            vec![good.clone(), bad_name],
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-identifier",
        ),
        (
            vec![good.clone(), unknown_field],
            StatusCode::BAD_REQUEST,
            "invalid-body",
        ),
        (
            vec![good.clone(), good.clone()],
            StatusCode::BAD_REQUEST,
            "duplicate-event-id",
        ),
    ];
    for (events, status, kind) in cases {
        let a = import(&app, &admin, events).await;
        assert_problem(&a, status, kind);
    }
    let a = app
        .call(
            "POST",
            "/v1/imports",
            Some(&admin),
            Some(json!({"format": "syslog", "events": [good]})),
        )
        .await;
    assert_problem(&a, StatusCode::BAD_REQUEST, "unknown-format");
    assert_eq!(app.log(T).await.len(), before);
}
