//! The token service over HTTP (DESIGN.md "Tokens", "Wire shapes": mint,
//! verify, revocations, keys, uses): what a minted token verifies as, and
//! every reason verify gives for refusing one, each with the `TokenUsed` it
//! leaves and the events each operation records in `$all`.

use super::support::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use serde_json::{Value, json};
use tokenledger_domain::events::KeyPurpose;
use tokenledger_tokens::keys::generate;
use tokenledger_tokens::paseto::{TokenClaims, mint};

/// An app with a minting issuer `iss` (policy [`mint_policy`]), a validator
/// `gw`, a soc `soc`, all in tenant `acme`.
async fn setup() -> (TestApp, String, String) {
    let app = TestApp::new().await;
    let iss = app.minter("iss", "acme").await;
    let gw = app.principal("gw", "validator", "acme").await;
    (app, iss, gw)
}

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

/// The footer of a PASETO token, decoded.
fn footer(token: &str) -> Value {
    let f = token.split('.').nth(3).expect("a footer");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(f).unwrap()).unwrap()
}

/// The token with one character of its signed part changed.
fn flip_signature(token: &str) -> String {
    let mut p: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mid = p[2].len() / 2;
    let c = if &p[2][mid..mid + 1] == "A" { "B" } else { "A" };
    p[2].replace_range(mid..mid + 1, c);
    p.join(".")
}

/// Asserts an inactive verify answer with `reason`.
#[track_caller]
fn assert_inactive(v: &Value, reason: &str) {
    assert_eq!(v, &json!({"active": false, "reason": reason}), "verify answer");
}

/// The event types of `$all` (read over HTTP as the admin) after `from`.
async fn types_after(app: &TestApp, from: usize) -> Vec<String> {
    let admin = app.admin("acme").await;
    let (st, _, b) = app
        .call("GET", &format!("/v1/events?from={}", from + 1), Some(&admin), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    events(&b)
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_minted_token_verifies_active_with_the_claims_it_was_minted_with() {
    let (app, iss, gw) = setup().await;
    let now = app.now();
    let (st, _, m) = app
        .mint(
            &iss,
            mint_request("alice", "orders:read orders:write", 300, "v4.public"),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    let token = m["token"].as_str().unwrap();
    assert!(token.starts_with("v4.public."), "{m}");
    assert_eq!(m["expires_at"], iso(now + chrono::Duration::seconds(300)));
    assert_eq!(m["format"], "v4.public");
    assert!(m["kid"].as_str().unwrap().starts_with("k4.pid."), "{m}");

    let v = app.verify(&gw, token, "api://orders").await;
    assert_eq!(v["active"], true, "{v}");
    let c = &v["claims"];
    assert_eq!(c["iss"], "tokenledger");
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["aud"], "api://orders");
    assert_eq!(c["scope"], "orders:read orders:write");
    assert_eq!(c["client_id"], "iss");
    assert_eq!(c["jti"], m["token_id"]);
    assert_eq!(c["exp"], m["expires_at"]);
    assert_eq!(c["iat"], iso(now));

    let issued = app.data_of("acme", "TokenIssued").await;
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["token_id"], m["token_id"]);
    assert_eq!(issued[0]["kid"], m["kid"]);
    assert_eq!(issued[0]["format"], "v4.public");
}

#[tokio::test]
async fn a_client_without_a_policy_mints_nothing_403_grant_refused() {
    let app = TestApp::new().await;
    let nopol = app.principal("nopol", "issuer", "acme").await;
    let a = app
        .mint(&nopol, mint_request("alice", "orders:read", 300, "v4.public"))
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "grant-refused");
    assert_eq!(a.2["reason"], "no_policy");
    assert!(app.data_of("acme", "TokenIssued").await.is_empty());
    let refused = app.data_of("acme", "GrantRefused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["path"], "mint");
    assert_eq!(refused[0]["reason"], "no_policy");
}

#[tokio::test]
async fn a_mint_wider_than_the_policy_is_403_naming_the_refused_scope_and_recorded_as_grant_refused() {
    let (app, iss, _) = setup().await;
    let before = app.log_len().await;
    let a = app
        .mint(
            &iss,
            mint_request("alice", "orders:read orders:admin", 300, "v4.public"),
        )
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "grant-refused");
    assert_eq!(a.2["reason"], "scope");
    let detail = a.2["detail"].as_str().unwrap();
    assert!(
        detail.contains("orders:admin") && !detail.contains("orders:read"),
        "the refusal names exactly the refused scope: {detail}"
    );
    assert_eq!(types_after(&app, before).await, ["GrantRefused"]);
    let g = &app.data_of("acme", "GrantRefused").await[0];
    assert_eq!(g["path"], "mint");
    assert_eq!(g["client_id"], "iss");
    assert_eq!(g["subject"], "alice");
    assert_eq!(g["reason"], "scope");
    assert_eq!(g["requested"]["scope"], "orders:read orders:admin");
    assert_eq!(g["requested"]["audience"], "api://orders");

    // An audience, a lifetime and a format outside the policy are refused the same way.
    for (body, reason) in [
        (
            json!({"subject": "alice", "audience": "api://billing", "scope": "orders:read", "ttl_seconds": 300, "format": "v4.public"}),
            "audience",
        ),
        (mint_request("alice", "orders:read", 3601, "v4.public"), "ttl"),
    ] {
        let a = app.mint(&iss, body).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "grant-refused");
        assert_eq!(a.2["reason"], reason);
    }
    assert!(app.data_of("acme", "TokenIssued").await.is_empty());
    assert_eq!(app.data_of("acme", "GrantRefused").await.len(), 3);
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_returns_the_identical_token_and_another_body_is_409() {
    let (app, iss, gw) = setup().await;
    let body = mint_request("alice", "orders:read", 300, "v4.public");
    let (st, _, first) = mint_with_key(&app, &iss, "order-42", &body).await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    let before = app.log_len().await;

    app.clock.set(app.now() + chrono::Duration::seconds(5));
    let (st, _, again) = mint_with_key(&app, &iss, "order-42", &body).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(again, first, "a retry returns the identical token");
    assert_eq!(app.log_len().await, before, "a retry records nothing");
    assert_eq!(app.data_of("acme", "TokenIssued").await.len(), 1);
    assert_eq!(
        app.verify(&gw, first["token"].as_str().unwrap(), "api://orders").await["active"],
        true
    );

    let other = mint_request("alice", "orders:write", 300, "v4.public");
    let before = app.log_len().await;
    let a = mint_with_key(&app, &iss, "order-42", &other).await;
    assert_problem(&a, StatusCode::CONFLICT, "idempotency-key-reused");
    assert_eq!(app.log_len().await, before);

    // Another key is another token.
    let (st, _, fresh) = mint_with_key(&app, &iss, "order-43", &body).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_ne!(fresh["token_id"], first["token_id"]);
}

#[tokio::test]
async fn revoking_by_token_id_makes_verify_answer_revoked_from_the_next_request_on() {
    let (app, iss, gw) = setup().await;
    let soc = app.principal("soc", "soc", "acme").await;
    let m = app.mint_ok(&iss, "alice").await;
    let token = m["token"].as_str().unwrap();
    let jti = m["token_id"].as_str().unwrap();
    assert_eq!(app.verify(&gw, token, "api://orders").await["active"], true);

    let (st, _, r) = app
        .call(
            "POST",
            "/v1/revocations",
            Some(&soc),
            Some(json!({"token_id": jti, "reason": "laptop stolen"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    assert!(r["position"].is_u64(), "{r}");
    assert_eq!(r["revoked"], json!({"token_id": jti}));
    assert_inactive(&app.verify(&gw, token, "api://orders").await, "revoked");

    let log = app.log("acme").await;
    let ev = log.iter().find(|e| e.event_type == "TokenRevoked").unwrap();
    assert_eq!(ev.stream, stream(jti));
    assert_eq!(ev.position.0, r["position"].as_u64().unwrap());
    assert_eq!(
        ev.data,
        json!({"token_id": jti, "reason": "laptop stolen", "by": "soc"})
    );
    assert_eq!(ev.metadata["actor"], "soc");
}

#[tokio::test]
async fn revocations_are_for_soc_and_admin_of_the_tokens_tenant_and_bad_requests_change_nothing() {
    let (app, iss, gw) = setup().await;
    let m = app.mint_ok(&iss, "alice").await;
    let id = m["token_id"].as_str().unwrap();
    let body = json!({"token_id": id, "reason": "r"});
    let analyst = app.principal("an", "analyst", "acme").await;
    let before = app.log_len().await;
    for who in [&iss, &gw, &analyst, &BOOT.to_owned()] {
        let a = app.call("POST", "/v1/revocations", Some(who), Some(body.clone())).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    assert_unauthenticated(&app.call("POST", "/v1/revocations", None, Some(body.clone())).await);

    let soc = app.principal("soc", "soc", "acme").await;
    let before_bad = app.log_len().await;
    assert!(before_bad > before);
    for bad in [
        json!({"reason": "neither"}),
        json!({"token_id": id, "selector": {"scope": "subject", "key": "alice"}, "reason": "both"}),
        json!({"token_id": id}),
        json!({"token_id": id, "reason": "r", "by": "someone-else"}),
        json!({"selector": {"scope": "tenant", "key": "acme"}, "reason": "no such scope"}),
        json!({"selector": {"scope": "subject"}, "reason": "no key"}),
    ] {
        let a = app.call("POST", "/v1/revocations", Some(&soc), Some(bad.clone())).await;
        assert_problem(&a, StatusCode::BAD_REQUEST, "invalid-body");
    }
    for bad in [
        json!({"token_id": id, "reason": "cafe\u{301}"}),
        json!({"token_id": id, "reason": ""}),
        json!({"selector": {"scope": "subject", "key": "ali ce"}, "reason": "r"}),
        json!({"selector": {"scope": "subject", "key": "cafe\u{301}"}, "reason": "r"}),
    ] {
        let a = app.call("POST", "/v1/revocations", Some(&soc), Some(bad.clone())).await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid-identifier");
    }
    // A token the tenant never recorded, and one of another tenant, are equally unknown.
    let other = app.minter("iss", "other").await;
    let theirs = app.mint_ok(&other, "alice").await;
    for id in [jti().as_str(), theirs["token_id"].as_str().unwrap()] {
        let a = app
            .call(
                "POST",
                "/v1/revocations",
                Some(&soc),
                Some(json!({"token_id": id, "reason": "r"})),
            )
            .await;
        assert_problem(&a, StatusCode::NOT_FOUND, "token-not-found");
    }
    let other_val = app.principal("gw", "validator", "other").await;
    assert_eq!(
        app.verify(&other_val, theirs["token"].as_str().unwrap(), "api://orders")
            .await["active"],
        true
    );
    assert!(app.data_of("acme", "TokenRevoked").await.is_empty());

    // The tenant's admin may revoke too.
    let admin = app.admin("acme").await;
    let (st, _, r) = app.call("POST", "/v1/revocations", Some(&admin), Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
}

#[tokio::test]
async fn a_selector_revocation_revokes_earlier_tokens_of_that_subject_but_not_one_minted_after_it() {
    let (app, iss, gw) = setup().await;
    let soc = app.principal("soc", "soc", "acme").await;
    let alice1 = app.mint_ok(&iss, "alice").await;
    let bob = app.mint_ok(&iss, "bob").await;
    let (st, _, r) = app
        .call(
            "POST",
            "/v1/revocations",
            Some(&soc),
            Some(json!({"selector": {"scope": "subject", "key": "alice"}, "reason": "account takeover"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    assert_eq!(r["revoked"], json!({"selector": {"scope": "subject", "key": "alice"}}));
    let alice2 = app.mint_ok(&iss, "alice").await;

    let verify = |m: &Value| {
        let t = m["token"].as_str().unwrap().to_owned();
        let app = &app;
        let gw = &gw;
        async move { app.verify(gw, &t, "api://orders").await }
    };
    assert_inactive(&verify(&alice1).await, "revoked");
    assert_eq!(verify(&bob).await["active"], true);
    assert_eq!(verify(&alice2).await["active"], true, "minted after the selector");

    let log = app.log("acme").await;
    let ev = log.iter().find(|e| e.event_type == "TokenRevoked").unwrap();
    assert_eq!(ev.stream, "revocations");
    assert_eq!(ev.position.0, r["position"].as_u64().unwrap());
    assert_eq!(
        ev.data,
        json!({"selector": {"scope": "subject", "key": "alice"}, "reason": "account takeover", "by": "soc"})
    );

    // A client selector covers every earlier token of the client, whatever its subject.
    let (st, _, _) = app
        .call(
            "POST",
            "/v1/revocations",
            Some(&soc),
            Some(json!({"selector": {"scope": "client", "key": "iss"}, "reason": "client compromised"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_inactive(&verify(&bob).await, "revoked");
    assert_inactive(&verify(&alice2).await, "revoked");
    assert_eq!(verify(&app.mint_ok(&iss, "bob").await).await["active"], true);
}

#[tokio::test]
async fn after_rotation_an_earlier_token_still_verifies_and_new_mints_carry_the_new_kid() {
    let (app, iss, gw) = setup().await;
    let admin = app.admin("acme").await;
    let old = app.mint_ok(&iss, "alice").await;
    let old_kid = old["kid"].as_str().unwrap().to_owned();
    assert_eq!(footer(old["token"].as_str().unwrap()), json!({"kid": old_kid}));

    let (st, _, rot) = app
        .call(
            "POST",
            "/v1/keys/rotate",
            Some(&admin),
            Some(json!({"purpose": "public"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{rot}");
    let new_kid = rot["keys"][0]["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);

    assert_eq!(
        app.verify(&gw, old["token"].as_str().unwrap(), "api://orders").await["active"],
        true,
        "a token signed before the rotation still verifies"
    );
    let new = app.mint_ok(&iss, "alice").await;
    assert_eq!(new["kid"], new_kid.as_str());
    assert_eq!(footer(new["token"].as_str().unwrap()), json!({"kid": new_kid}));
    assert_eq!(
        app.verify(&gw, new["token"].as_str().unwrap(), "api://orders").await["active"],
        true
    );

    let (st, h, keys) = app.call("GET", "/v1/keys", Some(&gw), None).await;
    assert_eq!(st, StatusCode::OK, "{keys}");
    let state_of = |kid: &str| {
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap_or_else(|| panic!("{kid} not in {keys}"))
            .clone()
    };
    assert_eq!(state_of(&old_kid)["state"], "retired");
    assert_eq!(state_of(&new_kid)["state"], "active");
    for k in keys["keys"].as_array().unwrap() {
        let paserk = k["public_key"].as_str().unwrap();
        assert!(paserk.starts_with("k4.public."), "{k}");
        assert_eq!(
            tokenledger_tokens::keys::kid_of_public(paserk).as_deref(),
            k["kid"].as_str(),
            "the kid is the PASERK id of the published key"
        );
    }
    let etag = h.get(header::ETAG).expect("an ETag").to_str().unwrap().to_owned();
    let req = Request::builder()
        .uri("/v1/keys")
        .header(header::AUTHORIZATION, format!("Bearer {gw}"))
        .header(header::IF_NONE_MATCH, &etag)
        .body(Body::empty())
        .unwrap();
    let (st, h, _) = app.send_request(req).await;
    assert_eq!(st, StatusCode::NOT_MODIFIED);
    assert_eq!(h.get(header::ETAG).unwrap().to_str().unwrap(), etag);
}

#[tokio::test]
async fn revoking_a_key_fails_its_tokens_as_key_revoked_and_the_next_mint_signs_with_a_fresh_key() {
    let (app, iss, gw) = setup().await;
    let admin = app.admin("acme").await;
    let old = app.mint_ok(&iss, "alice").await;
    let old_kid = old["kid"].as_str().unwrap();
    let (st, _, r) = app
        .call(
            "POST",
            &format!("/v1/keys/{old_kid}/revoke"),
            Some(&admin),
            Some(json!({"reason": "leaked"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_inactive(
        &app.verify(&gw, old["token"].as_str().unwrap(), "api://orders").await,
        "key_revoked",
    );

    let new = app.mint_ok(&iss, "alice").await;
    assert_ne!(new["kid"], old["kid"]);
    assert_eq!(
        app.verify(&gw, new["token"].as_str().unwrap(), "api://orders").await["active"],
        true
    );
    let (_, _, keys) = app.call("GET", "/v1/keys", Some(&gw), None).await;
    let states: Vec<(Value, Value)> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["kid"].clone(), k["state"].clone()))
        .collect();
    assert!(states.contains(&(json!(old_kid), json!("revoked"))), "{keys}");
    assert!(states.contains(&(new["kid"].clone(), json!("active"))), "{keys}");
}

#[tokio::test]
async fn a_flipped_signature_byte_is_bad_signature() {
    let (app, iss, gw) = setup().await;
    let m = app.mint_ok(&iss, "alice").await;
    let forged = flip_signature(m["token"].as_str().unwrap());
    assert_inactive(&app.verify(&gw, &forged, "api://orders").await, "bad_signature");
}

#[tokio::test]
async fn a_token_without_a_paserk_kid_is_malformed_and_no_paseto_test_vector_is_ever_accepted() {
    let (app, _, gw) = setup().await;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/vectors/paseto/v4.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "the PASETO v4 test vectors are missing at {path} ({e}); they live in shared/data/vectors beside the checkout"
        )
    });
    let vectors: Value = serde_json::from_str(&text).unwrap();
    let tests = vectors["tests"].as_array().unwrap();
    assert!(tests.len() >= 10, "too few vectors in {path}");
    for t in tests {
        let Some(token) = t["token"].as_str() else { continue };
        let v = app.verify(&gw, token, "api://orders").await;
        assert_inactive(&v, "malformed");
    }
    for junk in ["", "v4.public.", "not a token", "v4.local.AAAA.AAAA", "v2.public.eyJ9"] {
        assert_inactive(&app.verify(&gw, junk, "api://orders").await, "malformed");
    }
}

#[tokio::test]
async fn a_kid_nobody_has_is_unknown_kid() {
    let (app, _, gw) = setup().await;
    let k = generate(KeyPurpose::Public).unwrap();
    let now = app.now();
    let c = TokenClaims::new(
        "tokenledger",
        "alice",
        "api://orders",
        &jti(),
        "orders:read",
        "iss",
        now,
        now + chrono::Duration::seconds(300),
    );
    let token = mint(&k.signing_key().unwrap(), &k.kid, &c).unwrap();
    assert_inactive(&app.verify(&gw, &token, "api://orders").await, "unknown_kid");
}

#[tokio::test]
async fn a_token_past_exp_and_the_leeway_is_expired() {
    let (app, iss, gw) = setup().await;
    let (st, _, m) = app
        .mint(&iss, mint_request("alice", "orders:read", 60, "v4.public"))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let token = m["token"].as_str().unwrap();
    let t0 = app.now();
    // Leeway is 30 s by default: valid up to and including exp + 30 s.
    app.clock.set(t0 + chrono::Duration::seconds(60 + 30));
    assert_eq!(app.verify(&gw, token, "api://orders").await["active"], true);
    app.clock.set(t0 + chrono::Duration::seconds(60 + 31));
    assert_inactive(&app.verify(&gw, token, "api://orders").await, "expired");
}

#[tokio::test]
async fn a_token_pruned_from_the_views_is_expired_not_unknown() {
    let (app, iss, gw) = setup().await;
    let m = app.mint_ok(&iss, "alice").await; // 300 s
    let (token, id) = (m["token"].as_str().unwrap(), m["token_id"].as_str().unwrap());
    let t0 = app.now();
    // Past exp + the prune horizon (largest leeway + margin); the next
    // event moves the views' now there and the record goes.
    let horizon = tokenledger_domain::views::PRUNE_AFTER_SECONDS;
    app.clock.set(t0 + chrono::Duration::seconds(300 + horizon + 1));
    app.mint_ok(&iss, "bob").await;
    assert!(!app.state.views.read("acme", |v| v.contains_token(id)), "pruned");
    assert_inactive(&app.verify(&gw, token, "api://orders").await, "expired");
}

#[tokio::test]
async fn a_token_whose_nbf_is_beyond_now_and_the_leeway_is_not_yet_valid() {
    let (app, _, gw) = setup().await;
    let ext = app.trusted_issuer("ext-idp", "acme", 3600).await;
    let id = jti();
    let now = app.now();
    let nbf = now + chrono::Duration::seconds(50);
    let mut rec = issued_at(&id, "acme", "ext-idp", now);
    rec["data"]["not_before"] = json!(iso(nbf));
    ext.record(&app, &id, rec).await;
    let mut c = ext.claims(&id, now);
    c.nbf = nbf;
    let token = ext.sign(&c);
    assert_inactive(&app.verify(&gw, &token, "api://orders").await, "not_yet_valid");
    app.clock.set(now + chrono::Duration::seconds(20));
    assert_eq!(
        app.verify(&gw, &token, "api://orders").await["active"],
        true,
        "within the leeway of nbf"
    );
}

#[tokio::test]
async fn a_token_presented_to_another_audience_is_audience_mismatch() {
    let (app, iss, gw) = setup().await;
    let m = app.mint_ok(&iss, "alice").await;
    assert_inactive(
        &app.verify(&gw, m["token"].as_str().unwrap(), "api://billing").await,
        "audience_mismatch",
    );
}

#[tokio::test]
async fn a_v4_local_token_verifies_active() {
    let (app, iss, gw) = setup().await;
    let (st, _, m) = app
        .mint(&iss, mint_request("alice", "orders:read", 300, "v4.local"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    let token = m["token"].as_str().unwrap();
    assert!(token.starts_with("v4.local."), "{m}");
    assert!(m["kid"].as_str().unwrap().starts_with("k4.lid."), "{m}");
    assert_eq!(footer(token), json!({"kid": m["kid"]}));
    let v = app.verify(&gw, token, "api://orders").await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["claims"]["jti"], m["token_id"]);
    assert_eq!(v["claims"]["sub"], "alice");
    assert_inactive(
        &app.verify(&gw, &flip_signature(token), "api://orders").await,
        "bad_signature",
    );
}

#[tokio::test]
async fn every_verify_leaves_one_token_used_attributed_only_when_the_signature_verified() {
    let (app, iss, gw) = setup().await;
    let m = app.mint_ok(&iss, "alice").await;
    let token = m["token"].as_str().unwrap();
    let id = m["token_id"].as_str().unwrap();
    let kid = m["kid"].as_str().unwrap();

    // A forger's token claiming the victim's id, subject and client, under
    // our kid (bad_signature) and under a kid of its own (unknown_kid).
    let forger = generate(KeyPurpose::Public).unwrap();
    let now = app.now();
    let c = TokenClaims::new(
        "tokenledger",
        "alice",
        "api://orders",
        id,
        "orders:read",
        "iss",
        now,
        now + chrono::Duration::seconds(300),
    );
    let forged_our_kid = mint(&forger.signing_key().unwrap(), kid, &c).unwrap();
    let forged_own_kid = mint(&forger.signing_key().unwrap(), &forger.kid, &c).unwrap();

    let context = json!({"ip": "203.0.113.9", "user_agent": "curl/8", "device_id": "dev-1"});
    let cases = [
        (token.to_owned(), "api://orders", None),
        (token.to_owned(), "api://billing", Some("audience_mismatch")),
        (forged_our_kid, "api://orders", Some("bad_signature")),
        (forged_own_kid, "api://orders", Some("unknown_kid")),
        ("v4.public.junk".to_owned(), "api://orders", Some("malformed")),
    ];
    for (tok, aud, reason) in cases {
        let before = app.data_of("acme", "TokenUsed").await.len();
        let (st, _, v) = app
            .call(
                "POST",
                "/v1/tokens/verify",
                Some(&gw),
                Some(json!({"token": tok, "audience": aud, "context": context})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["reason"].as_str(), reason, "{v}");
        let uses = app.data_of("acme", "TokenUsed").await;
        assert_eq!(uses.len(), before + 1, "exactly one TokenUsed per verify");
        let u = uses.last().unwrap();
        assert_eq!(u["validator"], "gw");
        assert_eq!(u["audience"], aud);
        assert_eq!(u["context"], context);
        assert_eq!(u["at"], iso(now));
        assert_eq!(u["outcome"], if reason.is_none() { "accepted" } else { "rejected" });
        assert_eq!(u["reason"].as_str(), reason);
        let signed = matches!(reason, None | Some("audience_mismatch"));
        if signed {
            assert_eq!(u["token_id"], id, "{u}");
            assert_eq!(u["subject"], "alice", "{u}");
            assert_eq!(u["client_id"], "iss", "{u}");
            for f in ["claimed_token_id", "claimed_subject", "claimed_client_id"] {
                assert!(u.get(f).is_none(), "{f} on a verified use: {u}");
            }
        } else {
            for f in ["token_id", "subject", "client_id"] {
                assert!(u.get(f).is_none(), "{f} attributed for an unverified token: {u}");
            }
        }
        if matches!(reason, Some("bad_signature" | "unknown_kid")) {
            assert_eq!(u["claimed_token_id"], id, "{u}");
            assert_eq!(u["claimed_subject"], "alice", "{u}");
            assert_eq!(u["claimed_client_id"], "iss", "{u}");
        }
    }
    let log = app.log("acme").await;
    assert!(
        log.iter()
            .filter(|e| e.event_type == "TokenUsed")
            .all(|e| e.stream == "uses-gw" && e.metadata["actor"] == "gw")
    );
}

#[tokio::test]
async fn reported_uses_are_attributed_only_when_accepted_for_a_recorded_token() {
    let (app, iss, gw) = setup().await;
    let m = app.mint_ok(&iss, "alice").await;
    let id = m["token_id"].as_str().unwrap();
    let unknown = jti();
    let now = app.now();
    let ctx = json!({"ip": "198.51.100.7", "device_id": "dev-2"});
    let body = json!({"uses": [
        {"token_id": id, "audience": "api://orders", "outcome": "accepted", "at": iso(now), "context": ctx},
        {"token_id": id, "audience": "api://orders", "outcome": "rejected", "reason": "expired",
         "at": iso(now - chrono::Duration::seconds(60))},
        {"token_id": unknown, "audience": "api://orders", "outcome": "accepted",
         "at": iso(now + chrono::Duration::seconds(60))},
    ]});
    let (st, _, r) = app.call("POST", "/v1/uses", Some(&gw), Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    assert_eq!(r["recorded"], 3);

    let log = app.log("acme").await;
    let uses: Vec<_> = log.iter().filter(|e| e.event_type == "TokenUsed").collect();
    assert_eq!(uses.len(), 3);
    assert!(uses.iter().all(|e| e.stream == "uses-gw"));
    assert_eq!(
        uses.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [0, 1, 2],
        "one atomic batch"
    );
    assert_eq!(
        uses.iter().map(|e| e.position.0).collect::<Vec<_>>(),
        (0..3).map(|i| uses[0].position.0 + i).collect::<Vec<_>>()
    );
    assert_eq!(r["position"].as_u64(), Some(uses[2].position.0));

    assert_eq!(
        uses[0].data,
        json!({"validator": "gw", "audience": "api://orders", "outcome": "accepted", "at": iso(now),
               "context": ctx, "token_id": id, "subject": "alice", "client_id": "iss"})
    );
    assert_eq!(
        uses[1].data,
        json!({"validator": "gw", "audience": "api://orders", "outcome": "rejected", "reason": "expired",
               "at": iso(now - chrono::Duration::seconds(60)), "claimed_token_id": id})
    );
    assert_eq!(
        uses[2].data,
        json!({"validator": "gw", "audience": "api://orders", "outcome": "accepted",
               "at": iso(now + chrono::Duration::seconds(60)), "claimed_token_id": unknown})
    );
}

#[tokio::test]
async fn a_reported_use_further_than_the_skew_refuses_the_whole_report() {
    let (app, iss, gw) = setup().await;
    let m = app.mint_ok(&iss, "alice").await;
    let id = m["token_id"].as_str().unwrap();
    let now = app.now();
    let before = app.log_len().await;
    for off in [-61, 61, 3600 * 24 * 365] {
        let body = json!({"uses": [
            {"token_id": id, "audience": "api://orders", "outcome": "accepted", "at": iso(now)},
            {"token_id": id, "audience": "api://orders", "outcome": "accepted",
             "at": iso(now + chrono::Duration::seconds(off))},
        ]});
        let a = app.call("POST", "/v1/uses", Some(&gw), Some(body)).await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "clock-skew");
        assert_eq!(a.2["index"], 1);
    }
    assert_eq!(app.log_len().await, before, "nothing of a refused report is written");
    assert_eq!(app.stream_len("acme", "uses-gw").await, None);
}

#[tokio::test]
async fn use_reports_are_for_validators_and_admins_and_malformed_reports_change_nothing() {
    let (app, iss, gw) = setup().await;
    let m = app.mint_ok(&iss, "alice").await;
    let id = m["token_id"].as_str().unwrap();
    let soc = app.principal("soc", "soc", "acme").await;
    let analyst = app.principal("an", "analyst", "acme").await;
    let now = iso(app.now());
    let one = |extra: Value| {
        let mut u = json!({"token_id": id, "audience": "api://orders", "outcome": "accepted", "at": now});
        for (k, v) in extra.as_object().unwrap() {
            u[k] = v.clone();
        }
        u
    };
    let before = app.log_len().await;
    for who in [&iss, &soc, &analyst] {
        let a = app
            .call("POST", "/v1/uses", Some(who), Some(json!({"uses": [one(json!({}))]})))
            .await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    let too_many: Vec<Value> = (0..1001).map(|_| one(json!({}))).collect();
    for bad in [
        json!({"uses": []}),
        json!({"uses": too_many}),
        json!({"uses": [one(json!({"validator": "someone-else"}))]}),
        json!({"uses": [one(json!({"outcome": "maybe"}))]}),
        json!({"uses": [one(json!({"at": 1_900_000_000}))]}),
        json!({"uses": [one(json!({}))], "validator": "gw"}),
    ] {
        let a = app.call("POST", "/v1/uses", Some(&gw), Some(bad)).await;
        assert_problem(&a, StatusCode::BAD_REQUEST, "invalid-body");
    }
    for (bad, kind) in [
        (one(json!({"at": "yesterday"})), "invalid-time"),
        (one(json!({"audience": "api://cafe\u{301}"})), "invalid-identifier"),
        (one(json!({"token_id": "a\u{202E}b"})), "invalid-identifier"),
        (one(json!({"reason": "expired"})), "invalid-use"),
    ] {
        let a = app
            .call(
                "POST",
                "/v1/uses",
                Some(&gw),
                Some(json!({"uses": [one(json!({})), bad]})),
            )
            .await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, kind);
    }
    assert_eq!(app.log_len().await, before);

    let admin = app.admin("acme").await;
    let (st, _, r) = app
        .call(
            "POST",
            "/v1/uses",
            Some(&admin),
            Some(json!({"uses": [one(json!({}))]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    assert_eq!(app.data_of("acme", "TokenUsed").await[0]["validator"], "admin-acme");
}

#[tokio::test]
async fn verify_is_for_validators_and_admins_not_for_an_issuer() {
    let (app, iss, _) = setup().await;
    let m = app.mint_ok(&iss, "alice").await;
    let soc = app.principal("soc", "soc", "acme").await;
    let before = app.log_len().await;
    let body = json!({"token": m["token"], "audience": "api://orders"});
    for who in [&iss, &soc] {
        let a = app
            .call("POST", "/v1/tokens/verify", Some(who), Some(body.clone()))
            .await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    assert_eq!(app.log_len().await, before, "a refused verify records no use");
    let admin = app.admin("acme").await;
    assert_eq!(
        app.verify(&admin, m["token"].as_str().unwrap(), "api://orders").await["active"],
        true
    );
}

#[tokio::test]
async fn each_operation_appears_exactly_once_in_all_with_its_event_type() {
    let (app, iss, gw) = setup().await;
    let admin = app.admin("acme").await;
    let soc = app.principal("soc", "soc", "acme").await;
    // The tenant's first mint creates and activates its signing key.
    let mut head = app.log_len().await;
    let m = app.mint_ok(&iss, "alice").await;
    assert_eq!(
        types_after(&app, head).await,
        ["SigningKeyAdded", "SigningKeyActivated", "TokenIssued"]
    );
    let token = m["token"].as_str().unwrap().to_owned();
    let id = m["token_id"].as_str().unwrap().to_owned();

    macro_rules! step {
        ($op:expr, $types:expr) => {{
            head = app.log_len().await;
            let out = $op;
            let want: &[&str] = &$types;
            assert_eq!(types_after(&app, head).await, want, "after {}", stringify!($op));
            out
        }};
    }
    step!(app.mint_ok(&iss, "bob").await, ["TokenIssued"]);
    step!(app.verify(&gw, &token, "api://orders").await, ["TokenUsed"]);
    step!(
        app.mint(&iss, mint_request("alice", "orders:admin", 300, "v4.public"))
            .await,
        ["GrantRefused"]
    );
    step!(
        app.call(
            "POST",
            "/v1/uses",
            Some(&gw),
            Some(json!({"uses": [
                {"token_id": id, "audience": "api://orders", "outcome": "accepted", "at": iso(app.now())},
                {"token_id": id, "audience": "api://orders", "outcome": "accepted",
                 "at": iso(app.now() + chrono::Duration::seconds(1))},
            ]}))
        )
        .await,
        ["TokenUsed", "TokenUsed"]
    );
    step!(
        app.call(
            "POST",
            "/v1/revocations",
            Some(&soc),
            Some(json!({"token_id": id, "reason": "r"}))
        )
        .await,
        ["TokenRevoked"]
    );
    step!(
        app.call(
            "POST",
            "/v1/revocations",
            Some(&soc),
            Some(json!({"selector": {"scope": "subject", "key": "bob"}, "reason": "r"}))
        )
        .await,
        ["TokenRevoked"]
    );
    let rot = step!(
        app.call(
            "POST",
            "/v1/keys/rotate",
            Some(&admin),
            Some(json!({"purpose": "public"}))
        )
        .await,
        ["SigningKeyAdded", "SigningKeyActivated", "SigningKeyRetired"]
    );
    let kid = rot.2["keys"][0]["kid"].as_str().unwrap().to_owned();
    step!(
        app.call("POST", &format!("/v1/keys/{kid}/revoke"), Some(&admin), Some(json!({})))
            .await,
        ["SigningKeyRevoked"]
    );
    let key = generate(KeyPurpose::Public).unwrap();
    step!(
        app.call(
            "PUT",
            "/v1/issuers/ext-idp",
            Some(&admin),
            Some(json!({"keys": [key.public_key], "max_ttl_seconds": 600}))
        )
        .await,
        ["IssuerTrusted"]
    );
}

#[tokio::test]
async fn a_retried_use_report_is_recorded_once_and_a_repeated_use_counts_once() {
    let (app, iss, gw) = setup().await;
    let m = app.mint_ok(&iss, "alice").await;
    let id = m["token_id"].as_str().unwrap();
    let one = json!({"token_id": id, "audience": "api://orders", "outcome": "accepted", "at": iso(app.now())});
    let body = json!({"uses": [one.clone(), one.clone()]});
    let (st, _, first) = app.call("POST", "/v1/uses", Some(&gw), Some(body.clone())).await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    assert_eq!(
        (first["recorded"].as_u64(), first["duplicates"].as_u64()),
        (Some(1), Some(1))
    );
    let before = app.log_len().await;
    let (st, _, again) = app.call("POST", "/v1/uses", Some(&gw), Some(body)).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(again["position"], first["position"]);
    assert_eq!(app.log_len().await, before, "a retried report writes nothing");
}
