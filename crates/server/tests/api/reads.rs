//! `GET /v1/streams/{stream}` and `GET /v1/events`: who reads what, `from`,
//! `limit` clamping, paging with `next`, strict queries.

use super::support::*;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokenledger_server::config::ServeArgs;

/// An app whose reads are clamped to 3 events, with issuer `iss` and one
/// token stream of 5 events (an issuance and 4 revocations).
async fn setup() -> (TestApp, String, String) {
    let app = TestApp::with_args(ServeArgs {
        read_limit_max: Some(3),
        ..ServeArgs::default()
    })
    .await;
    let iss = app.issuer("iss", "acme").await;
    let jti = jti();
    let mut batch = vec![app.issued(&jti, "acme", "iss")];
    batch.extend((0..4).map(|_| revoked(&jti)));
    let (st, _, b) = app.append(&stream(&jti), &iss, json!("no_stream"), batch).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    (app, iss, jti)
}

fn revisions(body: &Value) -> Vec<u64> {
    events(body).iter().map(|e| e["revision"].as_u64().unwrap()).collect()
}

fn positions(body: &Value) -> Vec<u64> {
    events(body).iter().map(|e| e["position"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn an_analyst_reads_any_stream_of_its_tenant_with_the_full_envelope() {
    let (app, _, jti) = setup().await;
    let ana = app.principal("ana", "analyst", "acme").await;
    let (st, _, b) = app
        .call(
            "GET",
            &format!("/v1/streams/{}?limit=2", stream(&jti)),
            Some(&ana),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["stream"], stream(&jti));
    let e = &events(&b)[0];
    for field in [
        "event_id",
        "event_type",
        "stream",
        "revision",
        "position",
        "recorded_at",
        "data",
        "metadata",
    ] {
        assert!(e.get(field).is_some(), "{field} missing in {e}");
    }
    assert_eq!(e["event_type"], "TokenIssued");
    assert_eq!(e["recorded_at"], "2030-05-06T07:08:09.000000Z");
    assert_eq!(e["metadata"]["schema_version"], 1);
    for s in ["principal-iss", "policy-iss", "tenant"] {
        let (st, _, b) = app.call("GET", &format!("/v1/streams/{s}"), Some(&ana), None).await;
        assert_eq!(st, StatusCode::OK, "{s}: {b}");
    }
}

#[tokio::test]
async fn an_issuer_reads_back_its_own_token_stream() {
    let (app, iss, jti) = setup().await;
    let (st, _, b) = app
        .call("GET", &format!("/v1/streams/{}", stream(&jti)), Some(&iss), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(revisions(&b), [0, 1, 2]);
    // …but not $all.
    let a = app.call("GET", "/v1/events", Some(&iss), None).await;
    assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
}

#[tokio::test]
async fn validators_soc_and_bootstrap_may_not_read_the_log() {
    let (app, _, jti) = setup().await;
    let val = app.principal("gw", "validator", "acme").await;
    let soc = app.principal("soc", "soc", "acme").await;
    for who in [val.as_str(), soc.as_str(), BOOT] {
        for path in ["/v1/events".to_owned(), format!("/v1/streams/{}", stream(&jti))] {
            let a = app.call("GET", &path, Some(who), None).await;
            assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
        }
    }
}

#[tokio::test]
async fn limit_is_clamped_to_the_server_maximum() {
    let (app, _, jti) = setup().await;
    let ana = app.principal("ana", "analyst", "acme").await;
    let path = format!("/v1/streams/{}", stream(&jti));
    for (q, n) in [
        ("", 3),
        ("?limit=100", 3),
        ("?limit=2", 2),
        ("?limit=0", 0),
        ("?limit=3", 3),
    ] {
        let (st, _, b) = app.call("GET", &format!("{path}{q}"), Some(&ana), None).await;
        assert_eq!(st, StatusCode::OK, "{b}");
        assert_eq!(events(&b).len(), n, "stream{q}: {b}");
        let (st, _, b) = app.call("GET", &format!("/v1/events{q}"), Some(&ana), None).await;
        assert_eq!(st, StatusCode::OK, "{b}");
        assert_eq!(events(&b).len(), n, "$all{q}: {b}");
    }
    let (_, _, b) = app
        .call("GET", &format!("/v1/events?limit={}", u64::MAX), Some(&ana), None)
        .await;
    assert_eq!(events(&b).len(), 3, "{b}");
}

#[tokio::test]
async fn from_starts_a_stream_read_at_a_revision() {
    let (app, _, jti) = setup().await;
    let ana = app.principal("ana", "analyst", "acme").await;
    let path = format!("/v1/streams/{}", stream(&jti));
    for (from, want) in [
        (0, vec![0, 1, 2]),
        (1, vec![1, 2, 3]),
        (3, vec![3, 4]),
        (4, vec![4]),
        (5, vec![]),
    ] {
        let (st, _, b) = app.call("GET", &format!("{path}?from={from}"), Some(&ana), None).await;
        assert_eq!(st, StatusCode::OK, "{b}");
        assert_eq!(revisions(&b), want, "from={from}");
    }
    let (_, _, b) = app
        .call("GET", &format!("{path}?from=2&limit=1"), Some(&ana), None)
        .await;
    assert_eq!(revisions(&b), [2]);
}

#[tokio::test]
async fn from_starts_an_all_read_at_a_position_inclusive() {
    let (app, _, _) = setup().await;
    let ana = app.principal("ana", "analyst", "acme").await;
    let all: Vec<u64> = app.log("acme").await.iter().map(|e| e.position.0).collect();
    let (st, _, b) = app
        .call("GET", &format!("/v1/events?from={}", all[4]), Some(&ana), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(positions(&b), all[4..7]);
    let (_, _, b) = app.call("GET", "/v1/events?from=0", Some(&ana), None).await;
    assert_eq!(positions(&b), all[..3]);
    let (_, _, b) = app.call("GET", "/v1/events", Some(&ana), None).await;
    assert_eq!(positions(&b), all[..3]);
}

#[tokio::test]
async fn next_continues_all_without_overlap_or_gap() {
    let (app, _, _) = setup().await;
    let ana = app.principal("ana", "analyst", "acme").await;
    let want: Vec<String> = app.log("acme").await.iter().map(|e| e.event_id.to_string()).collect();
    let mut got = Vec::new();
    let mut path = "/v1/events?limit=2".to_owned();
    for _ in 0..100 {
        let (st, _, b) = app.call("GET", &path, Some(&ana), None).await;
        assert_eq!(st, StatusCode::OK, "{b}");
        let page = events(&b);
        if page.is_empty() {
            // At the head, `next` stays where it is.
            let (_, _, again) = app.call("GET", &path, Some(&ana), None).await;
            assert_eq!(again["next"], b["next"]);
            break;
        }
        got.extend(page.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()));
        let next = b["next"].as_u64().unwrap_or_else(|| panic!("next: {b}"));
        assert!(next > page.last().unwrap()["position"].as_u64().unwrap());
        path = format!("/v1/events?limit=2&from={next}");
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn an_unknown_or_malformed_query_parameter_is_400_invalid_query() {
    let (app, _, jti) = setup().await;
    let ana = app.principal("ana", "analyst", "acme").await;
    let path = format!("/v1/streams/{}", stream(&jti));
    for q in [
        "?since=1",
        "?limit=abc",
        "?from=-1",
        "?from=1.5",
        "?Limit=2",
        "?tenant=globex",
    ] {
        for p in [path.as_str(), "/v1/events"] {
            let a = app.call("GET", &format!("{p}{q}"), Some(&ana), None).await;
            assert_problem(&a, StatusCode::BAD_REQUEST, "invalid-query");
        }
    }
}

#[tokio::test]
async fn reading_a_stream_that_does_not_exist_is_404_and_a_bad_name_400() {
    let (app, _, _) = setup().await;
    let ana = app.principal("ana", "analyst", "acme").await;
    let a = app.call("GET", "/v1/streams/token-missing", Some(&ana), None).await;
    assert_problem(&a, StatusCode::NOT_FOUND, "stream-not-found");
    for name in ["%24all", "-x", "a%2Fb"] {
        let a = app.call("GET", &format!("/v1/streams/{name}"), Some(&ana), None).await;
        assert_problem(&a, StatusCode::BAD_REQUEST, "invalid-stream-name");
    }
}

#[tokio::test]
async fn reads_need_a_credential() {
    let (app, _, jti) = setup().await;
    for path in ["/v1/events".to_owned(), format!("/v1/streams/{}", stream(&jti))] {
        assert_unauthenticated(&app.call("GET", &path, None, None).await);
    }
}
