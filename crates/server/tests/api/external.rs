//! External issuers (DESIGN.md "Tokens", "Who may write what"): an admin
//! trusts an issuer's PASERK keys with `PUT /v1/issuers/{name}`; the issuer
//! principal of that name records each token write-ahead (`TokenIssued`,
//! format `external`, through the same policy checks as our mint path) and
//! signs it itself. Verify accepts exactly those tokens, and refuses odd
//! claims with the reason the contract names.

use super::support::*;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokenledger_domain::events::KeyPurpose;
use tokenledger_tokens::keys::generate;

/// An app with a trusted issuer `ext-idp` (max ttl 600 s) and a validator.
async fn setup() -> (TestApp, ExternalIssuer, String) {
    let app = TestApp::new().await;
    let ext = app.trusted_issuer("ext-idp", "acme", 600).await;
    let gw = app.principal("gw", "validator", "acme").await;
    (app, ext, gw)
}

/// The claims of [`ExternalIssuer::claims`] as JSON, to be made odd.
fn claims_json(ext: &ExternalIssuer, jti: &str, app: &TestApp) -> Value {
    serde_json::to_value(ext.claims(jti, app.now())).unwrap()
}

#[tokio::test]
async fn a_trusted_issuers_recorded_and_self_signed_token_verifies() {
    let (app, ext, gw) = setup().await;
    let id = jti();
    let token = ext.issue(&app, &id).await;
    assert!(token.starts_with("v4.public."));
    let v = app.verify(&gw, &token, "api://orders").await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["claims"]["iss"], "ext-idp");
    assert_eq!(v["claims"]["jti"], id.as_str());
    assert_eq!(v["claims"]["client_id"], "ext-idp");

    let used = app.data_of("acme", "TokenUsed").await;
    assert_eq!(used.len(), 1);
    assert_eq!(used[0]["token_id"], id.as_str());
    assert_eq!(used[0]["client_id"], "ext-idp");

    let trusted = app.data_of("acme", "IssuerTrusted").await;
    assert_eq!(
        trusted,
        [json!({"name": "ext-idp", "keys": [ext.key.public_key], "max_ttl_seconds": 600})]
    );
    let log = app.log("acme").await;
    assert_eq!(
        log.iter().find(|e| e.event_type == "IssuerTrusted").unwrap().stream,
        "issuer-ext-idp"
    );
}

#[tokio::test]
async fn trusting_an_issuer_again_replaces_its_keys() {
    let (app, ext, gw) = setup().await;
    let old = ext.issue(&app, &jti()).await;
    let admin = app.admin("acme").await;
    let next = generate(KeyPurpose::Public).unwrap();
    let (st, _, b) = app
        .call(
            "PUT",
            "/v1/issuers/ext-idp",
            Some(&admin),
            Some(json!({"keys": [next.public_key], "max_ttl_seconds": 600})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["name"], "ext-idp");
    assert_eq!(b["kids"], json!([next.kid]));
    assert_eq!(
        app.verify(&gw, &old, "api://orders").await,
        json!({"active": false, "reason": "unknown_kid"}),
        "a key no longer listed verifies nothing"
    );
    let rotated = ExternalIssuer {
        name: ext.name.clone(),
        tenant: ext.tenant.clone(),
        secret: ext.secret.clone(),
        key: next,
    };
    let token = rotated.issue(&app, &jti()).await;
    assert_eq!(app.verify(&gw, &token, "api://orders").await["active"], true);
}

#[tokio::test]
async fn only_an_admin_trusts_an_issuer_and_bad_keys_names_or_lifetimes_are_refused() {
    let (app, ext, gw) = setup().await;
    let admin = app.admin("acme").await;
    let soc = app.principal("soc", "soc", "acme").await;
    let k = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| generate(KeyPurpose::Public).unwrap().public_key.unwrap())
            .collect()
    };
    let good = json!({"keys": k(1), "max_ttl_seconds": 600});
    let before = app.log_len().await;
    for who in [&ext.secret, &gw, &soc, &BOOT.to_owned()] {
        let a = app
            .call("PUT", "/v1/issuers/other-idp", Some(who), Some(good.clone()))
            .await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    for bad in [
        json!({"keys": k(1)}),
        json!({"keys": k(1), "max_ttl_seconds": -1}),
        json!({"keys": "k4.public.x", "max_ttl_seconds": 600}),
        json!({"keys": k(1), "max_ttl_seconds": 600, "name": "other-idp"}),
    ] {
        let a = app.call("PUT", "/v1/issuers/other-idp", Some(&admin), Some(bad)).await;
        assert_problem(&a, StatusCode::BAD_REQUEST, "invalid-body");
    }
    let local = generate(KeyPurpose::Local).unwrap();
    let one = k(1)[0].clone();
    for (name, body, kind) in [
        (
            "other-idp",
            json!({"keys": [], "max_ttl_seconds": 600}),
            "invalid-issuer-keys",
        ),
        (
            "other-idp",
            json!({"keys": k(17), "max_ttl_seconds": 600}),
            "invalid-issuer-keys",
        ),
        (
            "other-idp",
            json!({"keys": ["k4.public.nope"], "max_ttl_seconds": 600}),
            "invalid-issuer-keys",
        ),
        (
            "other-idp",
            json!({"keys": [local.kid], "max_ttl_seconds": 600}),
            "invalid-issuer-keys",
        ),
        (
            "other-idp",
            json!({"keys": [one, one], "max_ttl_seconds": 600}),
            "invalid-issuer-keys",
        ),
        (
            "other-idp",
            json!({"keys": k(1), "max_ttl_seconds": 0}),
            "invalid-max-ttl",
        ),
        (
            "other-idp",
            json!({"keys": k(1), "max_ttl_seconds": 86401}),
            "invalid-max-ttl",
        ),
        ("tokenledger", good.clone(), "invalid-identifier"),
        ("cafe%CC%81", good.clone(), "invalid-identifier"),
        ("ext%20idp", good.clone(), "invalid-identifier"),
        ("%C3%A9-idp", good.clone(), "invalid-identifier"),
    ] {
        let a = app
            .call("PUT", &format!("/v1/issuers/{name}"), Some(&admin), Some(body))
            .await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, kind);
    }
    // A key is one signer's: another issuer cannot take it over.
    let a = app
        .call(
            "PUT",
            "/v1/issuers/other-idp",
            Some(&admin),
            Some(json!({"keys": [ext.key.public_key], "max_ttl_seconds": 600})),
        )
        .await;
    assert_problem(&a, StatusCode::CONFLICT, "key-in-use");
    assert_eq!(app.log_len().await, before, "nothing refused is recorded");

    let (st, _, b) = app.call("PUT", "/v1/issuers/other-idp", Some(&admin), Some(good)).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let max = json!({"keys": k(16), "max_ttl_seconds": 86400});
    let (st, _, b) = app.call("PUT", "/v1/issuers/big-idp", Some(&admin), Some(max)).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["kids"].as_array().unwrap().len(), 16);
}

#[tokio::test]
async fn an_exp_given_as_a_number_is_malformed() {
    let (app, ext, gw) = setup().await;
    let id = jti();
    ext.record(&app, &id, issued_at(&id, "acme", "ext-idp", app.now()))
        .await;
    let mut c = claims_json(&ext, &id, &app);
    c["exp"] = json!((app.now() + chrono::Duration::seconds(300)).timestamp());
    let token = ext.sign_raw(&c, Some(&ext.footer()));
    assert_eq!(
        app.verify(&gw, &token, "api://orders").await,
        json!({"active": false, "reason": "malformed"})
    );
}

#[tokio::test]
async fn a_fractional_second_time_is_malformed() {
    let (app, ext, gw) = setup().await;
    let id = jti();
    let now = app.now();
    // Recorded with the same fractional expiry, so only the claim's form is at fault.
    let exp = "2030-05-06T07:13:09.5Z";
    let mut rec = issued_at(&id, "acme", "ext-idp", now);
    rec["data"]["expires_at"] = json!(exp);
    ext.record(&app, &id, rec).await;
    let mut c = claims_json(&ext, &id, &app);
    c["exp"] = json!(exp);
    let token = ext.sign_raw(&c, Some(&ext.footer()));
    assert_eq!(
        app.verify(&gw, &token, "api://orders").await,
        json!({"active": false, "reason": "malformed"})
    );
}

#[tokio::test]
async fn a_time_out_of_range_is_malformed() {
    let (app, ext, gw) = setup().await;
    let id = jti();
    ext.record(&app, &id, issued_at(&id, "acme", "ext-idp", app.now()))
        .await;
    for field in ["exp", "nbf", "iat"] {
        let mut c = claims_json(&ext, &id, &app);
        c[field] = json!("99999-01-01T00:00:00Z");
        let token = ext.sign_raw(&c, Some(&ext.footer()));
        assert_eq!(
            app.verify(&gw, &token, "api://orders").await,
            json!({"active": false, "reason": "malformed"}),
            "{field}"
        );
    }
}

#[tokio::test]
async fn a_token_without_a_kid_in_its_footer_is_malformed() {
    let (app, ext, gw) = setup().await;
    let id = jti();
    ext.record(&app, &id, issued_at(&id, "acme", "ext-idp", app.now()))
        .await;
    let c = claims_json(&ext, &id, &app);
    let pid = ext.key.kid.clone();
    for footer in [
        None,
        Some("{}".to_owned()),
        Some(pid.clone()),
        Some(json!({"kid": pid.replace("k4.pid.", "k4.lid.")}).to_string()),
        Some(json!({"kid": 7}).to_string()),
        Some(json!({"key_id": pid}).to_string()),
    ] {
        let token = ext.sign_raw(&c, footer.as_deref());
        assert_eq!(
            app.verify(&gw, &token, "api://orders").await,
            json!({"active": false, "reason": "malformed"}),
            "footer {footer:?}"
        );
    }
    // The same claims with the kid verify: only the footer was at fault.
    let token = ext.sign_raw(&c, Some(&ext.footer()));
    assert_eq!(app.verify(&gw, &token, "api://orders").await["active"], true);
}

#[tokio::test]
async fn a_token_signed_with_one_issuers_key_but_naming_another_issuer_is_unknown_kid() {
    let (app, ext, gw) = setup().await;
    let other = app.trusted_issuer("other-idp", "acme", 600).await;
    // Recorded by other-idp, claiming other-idp, but signed with ext-idp's key and kid.
    let id = jti();
    other
        .record(&app, &id, issued_at(&id, "acme", "other-idp", app.now()))
        .await;
    let token = ext.sign(&other.claims(&id, app.now()));
    assert_eq!(
        app.verify(&gw, &token, "api://orders").await,
        json!({"active": false, "reason": "unknown_kid"})
    );
    // Nor does our own name under an external key pass.
    let mut c = ext.claims(&id, app.now());
    c.iss = "tokenledger".into();
    assert_eq!(
        app.verify(&gw, &ext.sign(&c), "api://orders").await["reason"],
        "unknown_kid"
    );
}

#[tokio::test]
async fn a_lifetime_over_the_issuers_max_ttl_is_malformed() {
    let (app, ext, gw) = setup().await;
    // The client policy allows an hour; the trust allows 600 s.
    let id = jti();
    let now = app.now();
    let mut rec = issued_at(&id, "acme", "ext-idp", now);
    rec["data"]["expires_at"] = json!(iso(now + chrono::Duration::seconds(601)));
    ext.record(&app, &id, rec).await;
    let mut c = ext.claims(&id, now);
    c.exp = now + chrono::Duration::seconds(601);
    assert_eq!(
        app.verify(&gw, &ext.sign(&c), "api://orders").await,
        json!({"active": false, "reason": "malformed"})
    );
}

#[tokio::test]
async fn a_token_signed_but_never_recorded_is_not_issued() {
    let (app, ext, gw) = setup().await;
    let id = jti();
    let token = ext.sign(&ext.claims(&id, app.now()));
    assert_eq!(
        app.verify(&gw, &token, "api://orders").await,
        json!({"active": false, "reason": "not_issued"})
    );
    // Signed tokens are attributable even when refused.
    let used = app.data_of("acme", "TokenUsed").await;
    assert_eq!(used[0]["token_id"], id.as_str());
    assert_eq!(used[0]["client_id"], "ext-idp");
}

#[tokio::test]
async fn a_token_recorded_by_another_principal_is_not_issued_for_the_trusted_issuer() {
    let (app, ext, gw) = setup().await;
    let other = app.issuer("other-iss", "acme").await;
    let id = jti();
    let (st, _, b) = app
        .append(
            &stream(&id),
            &other,
            json!("no_stream"),
            vec![issued_at(&id, "acme", "other-iss", app.now())],
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let mut c = ext.claims(&id, app.now());
    c.client_id = "other-iss".into();
    assert_eq!(
        app.verify(&gw, &ext.sign(&c), "api://orders").await,
        json!({"active": false, "reason": "not_issued"})
    );
}

#[tokio::test]
async fn a_token_whose_nbf_lies_beyond_the_leeway_is_not_yet_valid() {
    let (app, ext, gw) = setup().await;
    let id = jti();
    let now = app.now();
    let nbf = now + chrono::Duration::seconds(45);
    let mut rec = issued_at(&id, "acme", "ext-idp", now);
    rec["data"]["not_before"] = json!(iso(nbf));
    ext.record(&app, &id, rec).await;
    let mut c = ext.claims(&id, now);
    c.nbf = nbf;
    let token = ext.sign(&c);
    assert_eq!(
        app.verify(&gw, &token, "api://orders").await,
        json!({"active": false, "reason": "not_yet_valid"})
    );
    app.clock.set(nbf);
    assert_eq!(app.verify(&gw, &token, "api://orders").await["active"], true);
}

#[tokio::test]
async fn an_issuers_own_issuance_is_capped_by_the_servers_longest_lifetime_like_a_mint() {
    let (app, ext, _) = setup().await;
    // A policy longer than the server allows (86400 s by default) is refused…
    let mut p = default_policy();
    p["audiences"]["api://orders"]["max_ttl_seconds"] = json!(2 * 86400);
    let admin = app.admin("acme").await;
    let a = app
        .call("PUT", "/v1/clients/ext-idp/policy", Some(&admin), Some(p))
        .await;
    assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid-policy");
    // …and at the limit, one second more is refused on the append path.
    let mut p = default_policy();
    p["audiences"]["api://orders"]["max_ttl_seconds"] = json!(86400);
    app.policy("acme", "ext-idp", p).await;
    let id = jti();
    let now = app.now();
    let mut rec = issued_at(&id, "acme", "ext-idp", now);
    rec["data"]["expires_at"] = json!(iso(now + chrono::Duration::seconds(86401)));
    let before = app.log_len().await;
    let a = app
        .append(&stream(&id), &ext.secret, json!("no_stream"), vec![rec])
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "grant-refused");
    assert_eq!(a.2["reason"], "ttl");
    assert_eq!(app.log_len().await, before + 1, "only the GrantRefused");
    let g = app.data_of("acme", "GrantRefused").await;
    assert_eq!(g.len(), 1);
    assert_eq!(g[0]["path"], "append");
    assert_eq!(g[0]["reason"], "ttl");
    assert_eq!(g[0]["requested"]["ttl_seconds"], 86401);
    assert_eq!(g[0]["requested"]["format"], "external");
    assert_eq!(app.stream_len("acme", &stream(&id)).await, None);

    // Up to the server's limit it is recorded.
    let mut rec = issued_at(&id, "acme", "ext-idp", now);
    rec["data"]["expires_at"] = json!(iso(now + chrono::Duration::seconds(86400)));
    ext.record(&app, &id, rec).await;
}
