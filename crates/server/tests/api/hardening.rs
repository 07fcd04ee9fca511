//! Findings of the penetration test, over the in-process API: idempotent
//! mints whose ids another issuer cannot predict (F1), and a request with
//! more than one `Authorization` header (F11).

use super::support::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use uuid::Uuid;

/// Mints with an `Idempotency-Key`.
async fn mint_with_key(app: &TestApp, iss: &str, key: &str, body: &Value) -> Answer {
    let req = Request::builder()
        .method("POST")
        .uri("/v1/tokens")
        .header(header::AUTHORIZATION, format!("Bearer {iss}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", key)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    app.send_request(req).await
}

/// The token id and `TokenIssued` event id an idempotent mint had before
/// the fix: public name-based UUIDs anyone in the tenant could compute.
fn old_predictable_ids(tenant: &str, client: &str, key: &str) -> (String, Uuid) {
    let jti = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("tokenledger/mint\0{tenant}\0{client}\0{key}").as_bytes(),
    )
    .to_string();
    let eid = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("tokenledger/issued\0{tenant}\0{jti}").as_bytes(),
    );
    (jti, eid)
}

#[tokio::test]
async fn another_issuer_cannot_predict_or_occupy_an_idempotent_mints_token_id() {
    let app = TestApp::new().await;
    let a = app.minter("iss-a", "acme").await;
    // B may record its own `external` tokens (the pre-append path).
    let b = app.issuer("iss-b", "acme").await;
    let body = mint_request("alice", "orders:read", 300, "v4.public");

    // B computes what A's ids used to be and occupies them first: the token
    // stream, and the event id of its TokenIssued.
    let (old_jti, old_eid) = old_predictable_ids("acme", "iss-a", "order-42");
    let mut squat = app.issued(&old_jti, "acme", "iss-b");
    squat["event_id"] = json!(old_eid.to_string());
    let (st, _, r) = app.append(&stream(&old_jti), &b, json!("no_stream"), vec![squat]).await;
    assert_eq!(
        st,
        StatusCode::CREATED,
        "the squat itself is a legal append of B's: {r}"
    );
    let squatted_len = app.stream_len("acme", &stream(&old_jti)).await;

    // A's mint is not affected.
    let (st, _, first) = mint_with_key(&app, &a, "order-42", &body).await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    let jti = first["token_id"].as_str().unwrap().to_owned();
    assert_ne!(jti, old_jti, "the token id is no longer the public uuid5");
    let parsed = Uuid::parse_str(&jti).unwrap();
    assert_eq!(
        parsed.get_version_num(),
        4,
        "built from MAC bytes with version bits set"
    );
    assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);

    // Its TokenIssued sits in its own stream under an unpredictable event id.
    let issued = app.log("acme").await;
    let ev = issued
        .iter()
        .find(|e| e.event_type == "TokenIssued" && e.data["token_id"] == jti.as_str())
        .expect("A's TokenIssued");
    assert_eq!(ev.stream, stream(&jti));
    assert_ne!(ev.event_id, old_eid);
    assert_eq!(ev.event_id.get_version_num(), 4);
    assert_eq!(
        app.stream_len("acme", &stream(&old_jti)).await,
        squatted_len,
        "B's stream untouched"
    );

    // A's retry still answers the same token, B's squat notwithstanding.
    app.clock.set(app.now() + chrono::Duration::seconds(5));
    let (st, _, again) = mint_with_key(&app, &a, "order-42", &body).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(again, first);

    // The same key under B's name is another token (ids are bound to the
    // client), and B still cannot derive A's from its own.
    app.policy("acme", "iss-b", mint_policy()).await;
    let (st, _, of_b) = mint_with_key(&app, &b, "order-42", &body).await;
    assert_eq!(st, StatusCode::CREATED, "{of_b}");
    assert_ne!(of_b["token_id"], first["token_id"]);

    // The id depends on the server's secret: another server (another KEK)
    // with the same tenant, client and key derives another id.
    let other = TestApp::new().await;
    let a2 = other.minter("iss-a", "acme").await;
    let (st, _, elsewhere) = mint_with_key(&other, &a2, "order-42", &body).await;
    assert_eq!(st, StatusCode::CREATED, "{elsewhere}");
    assert_ne!(elsewhere["token_id"], first["token_id"]);
}

/// A request to `POST /v1/tokens` carrying each of `auth` as an
/// `Authorization` header, in order.
async fn mint_with_headers(app: &TestApp, auth: &[String]) -> Answer {
    let mut req = Request::builder()
        .method("POST")
        .uri("/v1/tokens")
        .header(header::CONTENT_TYPE, "application/json");
    for a in auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let body = mint_request("alice", "orders:read", 300, "v4.public");
    app.send_request(req.body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap())
        .await
}

#[tokio::test]
async fn more_than_one_authorization_header_is_401() {
    let app = TestApp::new().await;
    let iss = app.minter("iss", "acme").await;
    let gw = app.principal("gw", "validator", "acme").await;
    let bearer = |s: &str| format!("Bearer {s}");

    // One header: minted.
    let (st, _, b) = mint_with_headers(&app, &[bearer(&iss)]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let minted = app.data_of("acme", "TokenIssued").await.len();

    // Two: refused whichever order, whether they agree or not.
    for pair in [
        [bearer(&iss), bearer(&iss)],
        [bearer(&iss), bearer(&gw)],
        [bearer(&gw), bearer(&iss)],
        [bearer(&iss), "Bearer not-a-credential".to_owned()],
        ["Basic Zm9vOmJhcg==".to_owned(), bearer(&iss)],
    ] {
        let a = mint_with_headers(&app, &pair).await;
        assert_unauthenticated(&a);
        assert!(
            a.2["detail"]
                .as_str()
                .unwrap()
                .contains("more than one Authorization header"),
            "{}",
            a.2
        );
    }
    assert_eq!(app.data_of("acme", "TokenIssued").await.len(), minted, "nothing minted");

    // A read endpoint the same way.
    let admin = app.admin("acme").await;
    let req = Request::builder()
        .method("GET")
        .uri("/v1/keys")
        .header(header::AUTHORIZATION, bearer(&admin))
        .header(header::AUTHORIZATION, bearer(&gw))
        .body(Body::empty())
        .unwrap();
    let a = app.send_request(req).await;
    assert_unauthenticated(&a);
}
