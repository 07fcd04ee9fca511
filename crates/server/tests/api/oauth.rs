//! `/oauth2/token` (RFC 6749 §4.4 `client_credentials`, RFC 8693 token
//! exchange), `/oauth2/introspect` (RFC 7662) and `/oauth2/revoke` (RFC
//! 7009): answers in the RFCs' own shapes, never problem+json, and exactly
//! one record per operation in `$all`.

use super::support::*;
use axum::http::{StatusCode, header};
use serde_json::{Value, json};
use tokenledger_server::config::ServeArgs;

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const T: &str = "acme";

/// POSTs `params` as `application/x-www-form-urlencoded`.
async fn form(app: &TestApp, path: &str, token: Option<&str>, params: &[(&str, &str)]) -> Answer {
    let body = serde_urlencoded::to_string(params).unwrap();
    app.send("POST", path, token, Some("application/x-www-form-urlencoded"), body)
        .await
}

/// Asserts an RFC 6749 §5.2 error: `status`, JSON (not problem+json),
/// `error` = `code`, a description, `Cache-Control: no-store`.
#[track_caller]
fn assert_oauth_error(a: &Answer, status: StatusCode, code: &str) {
    let (st, h, b) = a;
    assert_eq!(*st, status, "status; body: {b}");
    assert_eq!(
        h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "content type; body: {b}"
    );
    assert_eq!(b["error"], code, "error code; body: {b}");
    assert!(b["error_description"].is_string(), "error_description; body: {b}");
    assert!(b.get("type").is_none(), "not a problem document: {b}");
    assert_eq!(
        h.get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
}

/// The event types appended to `tenant` since position `from` (exclusive),
/// leaving out the signing key the ring creates on first use.
async fn types_since(app: &TestApp, from: usize) -> Vec<String> {
    app.log(T)
        .await
        .iter()
        .filter(|e| e.position.0 as usize > from && !e.event_type.starts_with("SigningKey"))
        .map(|e| e.event_type.clone())
        .collect()
}

/// The recorded events of `tenant` of one type.
async fn of_type(app: &TestApp, ty: &str) -> Vec<Value> {
    app.log(T)
        .await
        .iter()
        .filter(|e| e.event_type == ty)
        .map(|e| json!({"stream": e.stream, "data": e.data}))
        .collect()
}

struct World {
    app: TestApp,
    /// Issuer `iss`: mints for `api://gateway`; may take `api://orders`.
    iss: String,
    /// Issuer `gw`: serves `api://gateway` and `api://orders`, so may
    /// exchange their tokens; its policy allows `api://orders` (read,
    /// write, admin) and `api://billing`.
    gw: String,
    /// Validator `val`.
    val: String,
}

async fn world_with(args: ServeArgs) -> World {
    let app = TestApp::with_args(args).await;
    let iss = app.principal("iss", "issuer", T).await;
    let gw = app.principal("gw", "issuer", T).await;
    let val = app.principal("val", "validator", T).await;
    app.policy(
        T,
        "iss",
        json!({
            "audiences": {
                "api://gateway": {"scopes": ["orders:read", "orders:write"], "max_ttl_seconds": 3600},
                "api://orders": {"scopes": ["orders:read"], "max_ttl_seconds": 600},
            },
            "formats": ["v4.public", "v4.local"],
        }),
    )
    .await;
    app.policy(
        T,
        "gw",
        json!({
            "audiences": {
                "api://orders": {"scopes": ["orders:read", "orders:write", "orders:admin"], "max_ttl_seconds": 3600},
                "api://billing": {"scopes": ["billing:read"], "max_ttl_seconds": 60},
            },
            "formats": ["v4.public", "v4.local"],
            "serves": ["api://gateway", "api://orders"],
        }),
    )
    .await;
    World { app, iss, gw, val }
}

async fn world() -> World {
    world_with(ServeArgs::default()).await
}

impl World {
    /// Mints a token for alice at `api://gateway` with `orders:read orders:write` as `iss`.
    async fn mint(&self) -> (String, String) {
        let (st, _, b) = self
            .app
            .call(
                "POST",
                "/v1/tokens",
                Some(&self.iss),
                Some(json!({"subject": "alice", "audience": "api://gateway",
                            "scope": "orders:read orders:write", "ttl_seconds": 300, "format": "v4.public"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
        (
            b["token"].as_str().unwrap().to_owned(),
            b["token_id"].as_str().unwrap().to_owned(),
        )
    }

    async fn exchange(&self, who: &str, subject: &str, extra: &[(&str, &str)]) -> Answer {
        let mut p = vec![
            ("grant_type", EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", ACCESS),
        ];
        p.extend_from_slice(extra);
        form(&self.app, "/oauth2/token", Some(who), &p).await
    }

    async fn verify(&self, token: &str, audience: &str) -> Value {
        let (st, _, b) = self
            .app
            .call(
                "POST",
                "/v1/tokens/verify",
                Some(&self.val),
                Some(json!({"token": token, "audience": audience})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{b}");
        b
    }
}

/// Asserts an RFC 6749 §5.1 answer and returns the access token.
#[track_caller]
fn assert_token_answer(a: &Answer, scope: &str) -> String {
    let (st, h, b) = a;
    assert_eq!(*st, StatusCode::OK, "{b}");
    assert_eq!(
        h.get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    assert_eq!(b["token_type"], "Bearer", "{b}");
    assert_eq!(b["scope"], scope, "{b}");
    assert_eq!(b["issued_token_type"], ACCESS, "{b}");
    assert!(b["expires_in"].is_i64(), "{b}");
    let t = b["access_token"].as_str().unwrap().to_owned();
    assert!(t.starts_with("v4."), "{t}");
    t
}

#[tokio::test]
async fn client_credentials_within_policy_mints_a_token_for_the_caller() {
    let w = world().await;
    let before = w.app.log_len().await;
    let a = form(
        &w.app,
        "/oauth2/token",
        Some(&w.gw),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "orders:read"),
            ("audience", "api://orders"),
        ],
    )
    .await;
    let tok = assert_token_answer(&a, "orders:read");
    assert_eq!(a.2["expires_in"], 3600, "the policy's max ttl by default: {}", a.2);
    assert_eq!(types_since(&w.app, before).await, ["TokenIssued"]);

    let v = w.verify(&tok, "api://orders").await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["claims"]["sub"], "gw");
    assert_eq!(v["claims"]["client_id"], "gw");

    // RFC 8707 `resource` for the audience, an explicit lifetime and format.
    let a = form(
        &w.app,
        "/oauth2/token",
        Some(&w.gw),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "billing:read"),
            ("resource", "api://billing"),
            ("expires_in", "30"),
            ("token_format", "v4.local"),
        ],
    )
    .await;
    let tok = assert_token_answer(&a, "billing:read");
    assert!(tok.starts_with("v4.local."), "{tok}");
    assert_eq!(a.2["expires_in"], 30);
    assert_eq!(w.verify(&tok, "api://billing").await["active"], true);
}

#[tokio::test]
async fn client_credentials_outside_policy_is_refused_and_recorded() {
    let w = world().await;
    let before = w.app.log_len().await;
    let cc = |scope: &'static str, aud: &'static str, ttl: &'static str| {
        vec![
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("audience", aud),
            ("ttl_seconds", ttl),
        ]
    };
    let a = form(
        &w.app,
        "/oauth2/token",
        Some(&w.iss),
        &cc("orders:admin", "api://gateway", "60"),
    )
    .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_scope");
    let a = form(
        &w.app,
        "/oauth2/token",
        Some(&w.iss),
        &cc("orders:read", "api://billing", "60"),
    )
    .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_target");
    let a = form(
        &w.app,
        "/oauth2/token",
        Some(&w.iss),
        &cc("orders:read", "api://gateway", "3601"),
    )
    .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(
        types_since(&w.app, before).await,
        ["GrantRefused", "GrantRefused", "GrantRefused"]
    );
    let refusals = of_type(&w.app, "GrantRefused").await;
    assert!(
        refusals.iter().all(|r| r["data"]["path"] == "client_credentials"),
        "{refusals:?}"
    );

    // A client with no policy: unauthorized_client.
    let nobody = w.app.principal("nobody", "issuer", T).await;
    let a = form(
        &w.app,
        "/oauth2/token",
        Some(&nobody),
        &cc("orders:read", "api://orders", "60"),
    )
    .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "unauthorized_client");
}

#[tokio::test]
async fn exchange_narrows_and_records_issued_and_exchanged_atomically() {
    let w = world().await;
    let (subject, subject_jti) = w.mint().await;
    // The actor: gw's own token from client_credentials.
    let a = form(
        &w.app,
        "/oauth2/token",
        Some(&w.gw),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "orders:read"),
            ("audience", "api://orders"),
        ],
    )
    .await;
    let actor = assert_token_answer(&a, "orders:read");

    let before = w.app.log_len().await;
    let a = w
        .exchange(
            &w.gw,
            &subject,
            &[
                ("audience", "api://orders"),
                ("scope", "orders:read"),
                ("actor_token", &actor),
                ("actor_token_type", ACCESS),
            ],
        )
        .await;
    let new = assert_token_answer(&a, "orders:read");
    assert!(
        a.2["expires_in"].as_i64().unwrap() <= 300,
        "never outlives the subject token: {}",
        a.2
    );
    let added = w.app.log(T).await;
    let added: Vec<_> = added.iter().filter(|e| e.position.0 as usize > before).collect();
    assert_eq!(
        added.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        ["TokenIssued", "TokenExchanged"]
    );
    assert_eq!(added[0].stream, added[1].stream, "one stream, one append");
    assert_eq!(added[0].data["parent_token_id"], subject_jti);
    assert_eq!(added[0].data["client_id"], "gw");
    assert_eq!(added[0].data["subject"], "alice");
    let new_jti = added[0].data["token_id"].as_str().unwrap().to_owned();
    assert_eq!(added[0].stream, stream(&new_jti));
    assert_eq!(added[1].data["subject_token_id"], subject_jti);
    assert_eq!(added[1].data["new_token_id"], new_jti);
    assert_eq!(added[1].data["granted_scope"], "orders:read");
    assert!(added[1].data["actor_token_id"].is_string());

    let v = w.verify(&new, "api://orders").await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["claims"]["sub"], "alice");
    assert_eq!(v["claims"]["client_id"], "gw");
    assert_eq!(v["claims"]["scope"], "orders:read");
    assert_eq!(v["claims"]["act"], json!({"sub": "gw", "client_id": "gw"}));
    assert_eq!(w.verify(&new, "api://gateway").await["reason"], "audience_mismatch");
    // The subject token is unchanged and still active.
    assert_eq!(w.app.stream_len(T, &stream(&subject_jti)).await, Some(1));
    assert_eq!(w.verify(&subject, "api://gateway").await["active"], true);

    // A second hop with another actor nests the first actor under `act`.
    let (st, _, b) = w
        .app
        .call(
            "POST",
            "/v1/tokens",
            Some(&w.iss),
            Some(
                json!({"subject": "gw", "audience": "api://gateway", "scope": "orders:read",
                        "ttl_seconds": 60, "format": "v4.local"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let a = w
        .exchange(
            &w.gw,
            &new,
            &[
                ("audience", "api://orders"),
                ("actor_token", b["token"].as_str().unwrap()),
                ("actor_token_type", ACCESS),
            ],
        )
        .await;
    let second = assert_token_answer(&a, "orders:read");
    let v = w.verify(&second, "api://orders").await;
    assert_eq!(
        v["claims"]["act"],
        json!({"sub": "gw", "client_id": "iss", "act": {"sub": "gw", "client_id": "gw"}}),
        "{v}"
    );
}

#[tokio::test]
async fn exchange_without_scope_gets_what_the_subject_holds_and_the_policy_allows() {
    let w = world().await;
    let (subject, _) = w.mint().await;
    let a = w.exchange(&w.gw, &subject, &[("audience", "api://orders")]).await;
    assert_token_answer(&a, "orders:read orders:write");
    // Nothing in common: invalid_scope.
    let a = w.exchange(&w.gw, &subject, &[("audience", "api://billing")]).await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_scope");
}

#[tokio::test]
async fn exchange_wider_than_the_subject_token_is_invalid_scope_and_recorded() {
    let w = world().await;
    let (subject, _) = w.mint().await;
    let before = w.app.log_len().await;
    let a = w
        .exchange(
            &w.gw,
            &subject,
            &[("audience", "api://orders"), ("scope", "orders:read orders:admin")],
        )
        .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_scope");
    assert!(
        a.2["error_description"].as_str().unwrap().contains("orders:admin"),
        "{}",
        a.2
    );
    assert_eq!(types_since(&w.app, before).await, ["GrantRefused"]);
    let r = of_type(&w.app, "GrantRefused").await;
    assert_eq!(r[0]["data"]["path"], "exchange");
    assert_eq!(r[0]["data"]["reason"], "scope");
    assert_eq!(r[0]["data"]["client_id"], "gw");
    assert_eq!(r[0]["data"]["subject"], "alice");

    // Within the subject token but outside the caller's policy for the audience.
    let a = w
        .exchange(
            &w.gw,
            &subject,
            &[("audience", "api://billing"), ("scope", "orders:read")],
        )
        .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_scope");
    // An audience outside the caller's policy: invalid_target, recorded.
    let a = w
        .exchange(
            &w.gw,
            &subject,
            &[("audience", "api://payroll"), ("scope", "orders:read")],
        )
        .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_target");
    let r = of_type(&w.app, "GrantRefused").await;
    assert_eq!(r.len(), 3);
    assert_eq!(r[2]["data"]["reason"], "audience");
    assert_eq!(r[2]["data"]["path"], "exchange");
    assert!(of_type(&w.app, "TokenExchanged").await.is_empty());
}

#[tokio::test]
async fn exchange_by_a_caller_that_does_not_serve_the_audience_is_invalid_grant() {
    let w = world().await;
    let (subject, _) = w.mint().await;
    let before = w.app.log_len().await;
    // iss minted it but does not serve api://gateway.
    let a = w
        .exchange(
            &w.iss,
            &subject,
            &[("audience", "api://orders"), ("scope", "orders:read")],
        )
        .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(w.app.log_len().await, before + 1, "only the refusal is recorded");
    let refused = of_type(&w.app, "GrantRefused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["data"]["reason"], "not_served");
    assert_eq!(refused[0]["data"]["path"], "exchange");
    assert_eq!(refused[0]["data"]["client_id"], "iss");
}

#[tokio::test]
async fn exchange_of_an_inactive_subject_token_is_invalid_grant_naming_the_reason() {
    let w = world().await;
    let (subject, jti) = w.mint().await;
    let (st, _, _) = form(&w.app, "/oauth2/revoke", Some(&w.iss), &[("token", &subject)]).await;
    assert_eq!(st, StatusCode::OK);
    let a = w.exchange(&w.gw, &subject, &[("audience", "api://orders")]).await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(
        a.2["error_description"].as_str().unwrap().contains("revoked"),
        "{}",
        a.2
    );

    let a = w
        .exchange(&w.gw, "v4.public.garbage", &[("audience", "api://orders")])
        .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(
        a.2["error_description"].as_str().unwrap().contains("malformed"),
        "{}",
        a.2
    );

    // An actor token must verify too.
    let (fresh, _) = w.mint().await;
    let a = w
        .exchange(
            &w.gw,
            &fresh,
            &[
                ("audience", "api://orders"),
                ("actor_token", &subject),
                ("actor_token_type", ACCESS),
            ],
        )
        .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(
        a.2["error_description"].as_str().unwrap().contains("actor_token"),
        "{}",
        a.2
    );
    assert!(of_type(&w.app, "TokenExchanged").await.is_empty());
    assert_eq!(w.app.stream_len(T, &stream(&jti)).await, Some(2), "issued + revoked");
}

#[tokio::test]
async fn revoking_a_token_revokes_every_token_exchanged_from_it() {
    let w = world().await;
    let (subject, _) = w.mint().await;
    let child = assert_token_answer(
        &w.exchange(
            &w.gw,
            &subject,
            &[("audience", "api://orders"), ("scope", "orders:read orders:write")],
        )
        .await,
        "orders:read orders:write",
    );
    let grandchild = assert_token_answer(
        &w.exchange(&w.gw, &child, &[("audience", "api://orders"), ("scope", "orders:read")])
            .await,
        "orders:read",
    );
    assert_eq!(w.verify(&grandchild, "api://orders").await["active"], true);
    let (st, _, _) = form(&w.app, "/oauth2/revoke", Some(&w.iss), &[("token", &subject)]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(w.verify(&child, "api://orders").await["reason"], "revoked");
    assert_eq!(w.verify(&grandchild, "api://orders").await["reason"], "revoked");
    // And nothing more can be exchanged from the chain.
    let a = w.exchange(&w.gw, &child, &[("audience", "api://orders")]).await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn an_exchange_chain_deeper_than_the_limit_is_invalid_grant() {
    let w = world_with(ServeArgs {
        max_exchange_depth: Some(2),
        ..ServeArgs::default()
    })
    .await;
    let (t0, _) = w.mint().await;
    let t1 = assert_token_answer(
        &w.exchange(&w.gw, &t0, &[("audience", "api://orders"), ("scope", "orders:read")])
            .await,
        "orders:read",
    );
    let t2 = assert_token_answer(
        &w.exchange(&w.gw, &t1, &[("audience", "api://orders"), ("scope", "orders:read")])
            .await,
        "orders:read",
    );
    let before = w.app.log_len().await;
    let a = w
        .exchange(&w.gw, &t2, &[("audience", "api://orders"), ("scope", "orders:read")])
        .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(a.2["error_description"].as_str().unwrap().contains("deep"), "{}", a.2);
    assert_eq!(w.app.log_len().await, before + 1, "only the refusal is recorded");
    let refused = of_type(&w.app, "GrantRefused").await;
    assert_eq!(refused.last().unwrap()["data"]["reason"], "depth");
    // The first hop from the original is still fine.
    let a = w.exchange(&w.gw, &t0, &[("audience", "api://orders")]).await;
    assert_eq!(a.0, StatusCode::OK, "{}", a.2);
}

#[tokio::test]
async fn introspection_answers_rfc_7662_and_records_the_use() {
    let w = world().await;
    let (tok, jti) = w.mint().await;
    let before = w.app.log_len().await;
    let (st, h, b) = form(
        &w.app,
        "/oauth2/introspect",
        Some(&w.val),
        &[("token", &tok), ("token_type_hint", "access_token")],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(
        h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert_eq!(b["active"], true, "{b}");
    for (k, v) in [
        ("scope", json!("orders:read orders:write")),
        ("client_id", json!("iss")),
        ("sub", json!("alice")),
        ("aud", json!("api://gateway")),
        ("iss", json!("tokenledger")),
        ("jti", json!(jti)),
        ("token_type", json!("Bearer")),
    ] {
        assert_eq!(b[k], v, "{k}: {b}");
    }
    let now = w.app.now().timestamp();
    assert!(
        b["exp"].is_i64() && b["iat"].is_i64() && b["nbf"].is_i64(),
        "integer times: {b}"
    );
    assert_eq!(b["exp"].as_i64().unwrap(), b["iat"].as_i64().unwrap() + 300);
    assert!((b["iat"].as_i64().unwrap() - now).abs() <= 1);
    let used = w.app.log(T).await;
    let used: Vec<_> = used.iter().filter(|e| e.position.0 as usize > before).collect();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].event_type, "TokenUsed");
    assert_eq!(used[0].data["audience"], "api://gateway");
    assert_eq!(used[0].data["outcome"], "accepted");
    assert_eq!(used[0].data["token_id"], jti);

    // Inactive: exactly {"active": false}, whatever the reason.
    let before = w.app.log_len().await;
    let (st, _, b) = form(&w.app, "/oauth2/introspect", Some(&w.val), &[("token", "not-a-token")]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(b, json!({"active": false}));
    let used = w.app.log(T).await;
    let last = used.last().unwrap();
    assert_eq!(w.app.log_len().await, before + 1);
    assert_eq!(last.data["audience"], "introspection");
    assert_eq!(last.data["outcome"], "rejected");
    assert_eq!(last.data["reason"], "malformed");

    form(&w.app, "/oauth2/revoke", Some(&w.iss), &[("token", &tok)]).await;
    let (_, _, b) = form(&w.app, "/oauth2/introspect", Some(&w.val), &[("token", &tok)]).await;
    assert_eq!(b, json!({"active": false}));
    let (fresh, _) = w.mint().await;
    w.app.clock.set(w.app.now() + chrono::Duration::seconds(400));
    let (_, _, b) = form(&w.app, "/oauth2/introspect", Some(&w.val), &[("token", &fresh)]).await;
    assert_eq!(b, json!({"active": false}), "expired");

    // Missing token: invalid_request.
    let a = form(&w.app, "/oauth2/introspect", Some(&w.val), &[]).await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn revoking_an_own_token_records_one_revocation() {
    let w = world().await;
    let (tok, jti) = w.mint().await;
    let before = w.app.log_len().await;
    let (st, _, b) = form(
        &w.app,
        "/oauth2/revoke",
        Some(&w.iss),
        &[("token", &tok), ("token_type_hint", "access_token")],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b, json!(""), "empty body");
    assert_eq!(types_since(&w.app, before).await, ["TokenRevoked"]);
    let r = of_type(&w.app, "TokenRevoked").await;
    assert_eq!(r[0]["stream"], stream(&jti));
    assert_eq!(r[0]["data"]["token_id"], jti);
    assert_eq!(r[0]["data"]["by"], "iss");
    assert_eq!(w.verify(&tok, "api://gateway").await["reason"], "revoked");
    // Again: 200, nothing more recorded.
    let (st, _, _) = form(&w.app, "/oauth2/revoke", Some(&w.iss), &[("token", &tok)]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(of_type(&w.app, "TokenRevoked").await.len(), 1);
}

#[tokio::test]
async fn revoking_an_unknown_or_forged_token_is_200_and_changes_nothing() {
    let w = world().await;
    let (tok, _) = w.mint().await;
    let mut parts: Vec<String> = tok.split('.').map(str::to_owned).collect();
    let mid = parts[2].len() / 2;
    let c = if &parts[2][mid..=mid] == "A" { "B" } else { "A" };
    parts[2].replace_range(mid..=mid, c);
    let forged = parts.join(".");
    let before = w.app.log_len().await;
    for t in ["nonsense", "v4.public.AAAA", forged.as_str()] {
        let (st, _, b) = form(&w.app, "/oauth2/revoke", Some(&w.iss), &[("token", t)]).await;
        assert_eq!(st, StatusCode::OK, "{t}: {b}");
    }
    assert_eq!(w.app.log_len().await, before);
    // A token of another tenant is unknown here.
    let other = w.app.principal("iss", "issuer", "globex").await;
    let before = w.app.log_len().await;
    let (st, _, _) = form(&w.app, "/oauth2/revoke", Some(&other), &[("token", &tok)]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(w.app.log_len().await, before);
    assert!(of_type(&w.app, "TokenRevoked").await.is_empty());
    assert_eq!(w.verify(&tok, "api://gateway").await["active"], true);
}

#[tokio::test]
async fn revoking_another_clients_token_is_unauthorized_client_but_an_admin_may() {
    let w = world().await;
    let (tok, _) = w.mint().await;
    let before = w.app.log_len().await;
    let a = form(&w.app, "/oauth2/revoke", Some(&w.gw), &[("token", &tok)]).await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "unauthorized_client");
    assert_eq!(w.app.log_len().await, before);
    let admin = w.app.admin(T).await;
    let (st, _, _) = form(&w.app, "/oauth2/revoke", Some(&admin), &[("token", &tok)]).await;
    assert_eq!(st, StatusCode::OK);
    let r = of_type(&w.app, "TokenRevoked").await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["data"]["by"], format!("admin-{T}"));
    // A validator may not revoke at all.
    let a = form(&w.app, "/oauth2/revoke", Some(&w.val), &[("token", &tok)]).await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "unauthorized_client");
}

#[tokio::test]
async fn a_missing_or_bad_credential_is_401_invalid_client_in_json() {
    let w = world().await;
    let before = w.app.log_len().await;
    for path in ["/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"] {
        for cred in [None, Some("tl_nope_nope"), Some(BOOT.to_owned() + "x").as_deref()] {
            let a = form(
                &w.app,
                path,
                cred,
                &[("grant_type", "client_credentials"), ("token", "x")],
            )
            .await;
            assert_oauth_error(&a, StatusCode::UNAUTHORIZED, "invalid_client");
            assert_eq!(
                a.1.get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()),
                Some("Bearer"),
                "{path}"
            );
        }
    }
    assert_eq!(w.app.log_len().await, before);
}

#[tokio::test]
async fn a_role_that_may_not_call_the_endpoint_is_unauthorized_client() {
    let w = world().await;
    let a = form(
        &w.app,
        "/oauth2/token",
        Some(&w.val),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "orders:read"),
            ("audience", "api://orders"),
        ],
    )
    .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "unauthorized_client");
    let a = form(&w.app, "/oauth2/introspect", Some(&w.iss), &[("token", "x")]).await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "unauthorized_client");
    let a = form(
        &w.app,
        "/oauth2/token",
        Some(BOOT),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "unauthorized_client");
    // The role is checked before the body is read.
    let a = w
        .app
        .send("POST", "/oauth2/token", Some(&w.val), Some("application/json"), "{}")
        .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "unauthorized_client");
}

#[tokio::test]
async fn malformed_requests_are_invalid_request_or_unsupported_grant_type() {
    let w = world().await;
    let (subject, _) = w.mint().await;
    let before = w.app.log_len().await;
    let a = form(&w.app, "/oauth2/token", Some(&w.gw), &[("grant_type", "password")]).await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "unsupported_grant_type");
    let a = form(&w.app, "/oauth2/token", Some(&w.gw), &[("scope", "orders:read")]).await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_request");
    // A repeated parameter (RFC 6749 §3.1).
    let a = form(
        &w.app,
        "/oauth2/token",
        Some(&w.gw),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "orders:read"),
            ("audience", "api://orders"),
            ("audience", "api://billing"),
        ],
    )
    .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_request");
    // JSON is not a form.
    let a = w
        .app
        .send(
            "POST",
            "/oauth2/token",
            Some(&w.gw),
            Some("application/json"),
            r#"{"grant_type": "client_credentials"}"#,
        )
        .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_request");
    let a = w
        .app
        .send("POST", "/oauth2/revoke", Some(&w.iss), None, "token=x")
        .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_request");
    // Missing required parameters.
    let a = form(
        &w.app,
        "/oauth2/token",
        Some(&w.gw),
        &[("grant_type", "client_credentials"), ("audience", "api://orders")],
    )
    .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_request");
    let a = w.exchange(&w.gw, &subject, &[]).await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_request");
    let a = form(
        &w.app,
        "/oauth2/token",
        Some(&w.gw),
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &subject),
            ("audience", "api://orders"),
        ],
    )
    .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_request");
    // Token types other than access tokens.
    let a = form(
        &w.app,
        "/oauth2/token",
        Some(&w.gw),
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &subject),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:id_token"),
            ("audience", "api://orders"),
        ],
    )
    .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_request");
    let a = w
        .exchange(
            &w.gw,
            &subject,
            &[("audience", "api://orders"), ("actor_token", &subject)],
        )
        .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_request");
    // A scope that is not NFC.
    let a = w
        .exchange(
            &w.gw,
            &subject,
            &[("audience", "api://orders"), ("scope", "cafe\u{301}")],
        )
        .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_scope");
    assert_eq!(w.app.log_len().await, before, "bad input changes nothing");

    // Other methods: 405 in the same shape.
    let a = w.app.call("GET", "/oauth2/token", Some(&w.gw), None).await;
    assert_oauth_error(&a, StatusCode::METHOD_NOT_ALLOWED, "invalid_request");
}

#[tokio::test]
async fn before_catching_up_oauth_answers_503_in_its_own_shape() {
    let app = TestApp::unready(ServeArgs::default());
    for path in ["/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"] {
        let a = form(&app, path, Some(BOOT), &[("token", "x")]).await;
        assert_oauth_error(&a, StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable");
    }
}

#[tokio::test]
async fn an_actor_token_must_name_the_caller() {
    let w = world().await;
    let (subject, _) = w.mint().await;
    // A valid token of someone else (alice, minted to iss) as actor_token.
    let (someone_else, _) = w.mint().await;
    let a = w
        .exchange(
            &w.gw,
            &subject,
            &[
                ("audience", "api://orders"),
                ("actor_token", &someone_else),
                ("actor_token_type", ACCESS),
            ],
        )
        .await;
    assert_oauth_error(&a, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(
        a.2["error_description"].as_str().unwrap().contains("not the caller"),
        "{}",
        a.2
    );
    assert!(of_type(&w.app, "TokenExchanged").await.is_empty());
}
