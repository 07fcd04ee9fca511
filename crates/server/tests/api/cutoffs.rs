//! Minting cutoffs (DESIGN.md "Enforcement is serialized with the log"): a
//! cutoff engaged by hand stops every grant path — our mint,
//! `client_credentials`, token exchange (on the subject token's subject and
//! original client too) and an external issuer's `TokenIssued` append — each
//! refusal recorded as a `GrantRefused` naming it; a release, by hand or by
//! the server at expiry, lets minting resume.

use super::support::*;
use axum::http::StatusCode;
use serde_json::{Value, json};

const T: &str = "acme";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

async fn form(app: &TestApp, token: &str, params: &[(&str, &str)]) -> Answer {
    let body = serde_urlencoded::to_string(params).unwrap();
    app.send(
        "POST",
        "/oauth2/token",
        Some(token),
        Some("application/x-www-form-urlencoded"),
        body,
    )
    .await
}

struct World {
    app: TestApp,
    /// Issuer `iss`: mints for `api://gateway`, may `client_credentials`.
    iss: String,
    /// Issuer `gw`: serves `api://gateway`, so may exchange its tokens.
    gw: String,
    soc: String,
    analyst: String,
}

async fn world() -> World {
    let app = TestApp::new().await;
    let iss = app.principal("iss", "issuer", T).await;
    let gw = app.principal("gw", "issuer", T).await;
    let soc = app.principal("soc-1", "soc", T).await;
    let analyst = app.principal("ana", "analyst", T).await;
    app.policy(
        T,
        "iss",
        json!({
            "audiences": {"api://gateway": {"scopes": ["orders:read", "orders:write"], "max_ttl_seconds": 3600}},
            "formats": ["v4.public", "v4.local"],
        }),
    )
    .await;
    app.policy(
        T,
        "gw",
        json!({
            "audiences": {"api://orders": {"scopes": ["orders:read"], "max_ttl_seconds": 3600}},
            "formats": ["v4.public"],
            "serves": ["api://gateway"],
        }),
    )
    .await;
    World {
        app,
        iss,
        gw,
        soc,
        analyst,
    }
}

impl World {
    async fn mint(&self, subject: &str) -> Answer {
        self.app
            .call(
                "POST",
                "/v1/tokens",
                Some(&self.iss),
                Some(
                    json!({"subject": subject, "audience": "api://gateway", "scope": "orders:read",
                            "ttl_seconds": 300, "format": "v4.public"}),
                ),
            )
            .await
    }

    async fn client_credentials(&self) -> Answer {
        form(
            &self.app,
            &self.iss,
            &[
                ("grant_type", "client_credentials"),
                ("audience", "api://gateway"),
                ("scope", "orders:read"),
            ],
        )
        .await
    }

    async fn exchange(&self, subject_token: &str) -> Answer {
        form(
            &self.app,
            &self.gw,
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", subject_token),
                ("subject_token_type", ACCESS),
                ("audience", "api://orders"),
                ("scope", "orders:read"),
            ],
        )
        .await
    }

    async fn engage(&self, scope: &str, key: &str) -> String {
        let (st, _, b) = self
            .app
            .call(
                "POST",
                "/v1/cutoffs",
                Some(&self.soc),
                Some(json!({"scope": scope, "key": key, "reason": "replayed token", "duration_seconds": 600})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
        b["cutoff_id"].as_str().unwrap().to_owned()
    }

    async fn refusals(&self) -> Vec<Value> {
        self.app.data_of(T, "GrantRefused").await
    }
}

#[track_caller]
fn assert_cut_off(a: &Answer, cutoff: &str) {
    assert_problem(a, StatusCode::FORBIDDEN, "minting-cutoff");
    assert_eq!(a.2["cutoff_id"], cutoff, "{}", a.2);
}

#[track_caller]
fn assert_oauth_cut_off(a: &Answer, cutoff: &str) {
    assert_eq!(a.0, StatusCode::BAD_REQUEST, "{}", a.2);
    assert_eq!(a.2["error"], "invalid_grant", "{}", a.2);
    assert_eq!(a.2["cutoff_id"], cutoff, "{}", a.2);
}

#[tokio::test]
async fn a_subject_cutoff_stops_every_grant_path_and_a_release_lets_minting_resume() {
    let w = world().await;
    // A token of alice's, minted before the cutoff, to exchange later.
    let before = w.mint("alice").await;
    assert_eq!(before.0, StatusCode::CREATED, "{}", before.2);
    let alice_token = before.2["token"].as_str().unwrap().to_owned();

    let cut = w.engage("subject", "alice").await;

    assert_cut_off(&w.mint("alice").await, &cut);
    // Another subject is not affected.
    assert_eq!(w.mint("bob").await.0, StatusCode::CREATED);
    // Exchange: the subject token's subject is cut off.
    assert_oauth_cut_off(&w.exchange(&alice_token).await, &cut);

    // An external issuer's own TokenIssued for alice.
    let ext = w.app.trusted_issuer("ext-idp", T, 600).await;
    let id = jti();
    let a = w
        .app
        .append(
            &stream(&id),
            &ext.secret,
            json!("no_stream"),
            vec![issued_at(&id, T, "ext-idp", w.app.now())],
        )
        .await;
    assert_cut_off(&a, &cut);
    assert_eq!(w.app.stream_len(T, &stream(&id)).await, None, "nothing recorded");

    // Each refusal is recorded, naming the cutoff and the path.
    let refusals = w.refusals().await;
    let paths: Vec<&str> = refusals.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["mint", "exchange", "append"], "{refusals:?}");
    assert!(
        refusals
            .iter()
            .all(|r| r["reason"] == "cutoff" && r["cutoff_id"] == cut.as_str())
    );
    assert!(refusals.iter().all(|r| r["subject"] == "alice"));

    // The SOC and analysts see it.
    let (st, _, b) = w.app.call("GET", "/v1/cutoffs", Some(&w.analyst), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["cutoffs"][0]["cutoff_id"], cut.as_str());
    assert_eq!(b["cutoffs"][0]["active"], true);
    assert_eq!(b["cutoffs"][0]["rule_id"], "manual");

    // Release; a second release is a conflict.
    let rel = |who: String| {
        let app = &w.app;
        let path = format!("/v1/cutoffs/{cut}/release");
        async move {
            app.call("POST", &path, Some(&who), Some(json!({"reason": "false positive"})))
                .await
        }
    };
    // An empty body is a release "by hand".
    let (st, _, b) = w
        .app
        .call(
            "POST",
            &format!("/v1/cutoffs/{cut}/release"),
            Some(&w.soc),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let released = w.app.data_of(T, "MintingCutoffReleased").await;
    assert_eq!(
        released,
        [json!({"cutoff_id": cut, "reason": "released by hand", "by": "soc-1"})]
    );
    assert_problem(&rel(w.soc.clone()).await, StatusCode::CONFLICT, "cutoff-released");
    assert_eq!(w.mint("alice").await.0, StatusCode::CREATED);
    let ex = w.exchange(&alice_token).await;
    assert_eq!(ex.0, StatusCode::OK, "{}", ex.2);
}

#[tokio::test]
async fn a_client_cutoff_stops_client_credentials_and_exchanges_from_its_tokens() {
    let w = world().await;
    let before = w.mint("carol").await;
    let carol_token = before.2["token"].as_str().unwrap().to_owned();
    let cut = w.engage("client", "iss").await;
    assert_cut_off(&w.mint("dave").await, &cut);
    assert_oauth_cut_off(&w.client_credentials().await, &cut);
    // gw is not cut off, but the token it exchanges was minted for iss: the
    // original client is checked too.
    assert_oauth_cut_off(&w.exchange(&carol_token).await, &cut);
    let paths: Vec<String> = w
        .refusals()
        .await
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["mint", "client_credentials", "exchange"]);
}

#[tokio::test]
async fn the_server_releases_a_cutoff_at_its_expiry() {
    let w = world().await;
    let cut = w.engage("subject", "erin").await;
    assert_cut_off(&w.mint("erin").await, &cut);
    // Not yet due: nothing released.
    w.app.clock.set(w.app.now() + chrono::Duration::seconds(599));
    assert_eq!(tokenledger_server::api::cutoffs::expire_due(&w.app.state).await, 0);
    assert_cut_off(&w.mint("erin").await, &cut);
    w.app.clock.set(w.app.now() + chrono::Duration::seconds(1));
    assert_eq!(tokenledger_server::api::cutoffs::expire_due(&w.app.state).await, 1);
    assert_eq!(w.mint("erin").await.0, StatusCode::CREATED);
    let released = w.app.data_of(T, "MintingCutoffReleased").await;
    assert_eq!(
        released,
        [json!({"cutoff_id": cut, "reason": "expired", "by": "server"})]
    );
    assert_eq!(tokenledger_server::api::cutoffs::expire_due(&w.app.state).await, 0);
}

#[tokio::test]
async fn cutoffs_by_hand_check_role_tenant_and_body() {
    let w = world().await;
    let body = json!({"scope": "subject", "key": "alice", "reason": "r", "duration_seconds": 60});
    // Issuers and analysts may not engage; validators may not list.
    for who in [&w.iss, &w.analyst] {
        let a = w.app.call("POST", "/v1/cutoffs", Some(who), Some(body.clone())).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    let val = w.app.principal("val", "validator", T).await;
    assert_problem(
        &w.app.call("GET", "/v1/cutoffs", Some(&val), None).await,
        StatusCode::FORBIDDEN,
        "role-not-allowed",
    );
    assert_unauthenticated(&w.app.call("POST", "/v1/cutoffs", None, Some(body.clone())).await);
    for bad in [
        json!({"scope": "subject", "key": "alice", "reason": "r", "duration_seconds": 0}),
        json!({"scope": "subject", "key": "alice", "reason": "", "duration_seconds": 60}),
        json!({"scope": "subject", "key": "al ice", "reason": "r", "duration_seconds": 60}),
        json!({"scope": "tenant", "key": "globex", "reason": "r", "duration_seconds": 60}),
    ] {
        let a = w.app.call("POST", "/v1/cutoffs", Some(&w.soc), Some(bad.clone())).await;
        assert_eq!(a.0, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", a.2);
    }
    for bad in [
        json!({"scope": "planet", "key": "alice", "reason": "r", "duration_seconds": 60}),
        json!({"scope": "subject", "key": "alice", "reason": "r", "duration_seconds": 60, "mode": "dry_run"}),
    ] {
        let a = w.app.call("POST", "/v1/cutoffs", Some(&w.soc), Some(bad.clone())).await;
        assert!(a.0.is_client_error(), "{bad}: {}", a.2);
    }
    assert!(
        w.app.data_of(T, "MintingCutoffEngaged").await.is_empty(),
        "nothing engaged"
    );

    // Another tenant's SOC can neither see nor release acme's cutoff.
    let cut = w.engage("subject", "alice").await;
    let other = w.app.principal("soc-g", "soc", "globex").await;
    let (st, _, b) = w.app.call("GET", "/v1/cutoffs", Some(&other), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(b["cutoffs"], json!([]));
    let a = w
        .app
        .call(
            "POST",
            &format!("/v1/cutoffs/{cut}/release"),
            Some(&other),
            Some(json!({"reason": "mine now"})),
        )
        .await;
    assert_problem(&a, StatusCode::NOT_FOUND, "cutoff-not-found");
    assert_cut_off(&w.mint("alice").await, &cut);
}

#[tokio::test]
async fn a_tenant_cutoff_stops_all_minting_in_that_tenant_only() {
    let w = world().await;
    let (st, _, b) = w
        .app
        .call(
            "POST",
            "/v1/cutoffs",
            Some(&w.soc),
            Some(json!({"scope": "tenant", "key": T, "reason": "incident", "duration_seconds": 60})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let cut = b["cutoff_id"].as_str().unwrap();
    assert_cut_off(&w.mint("anyone").await, cut);
    // globex mints on.
    let g = w.app.principal("iss-g", "issuer", "globex").await;
    w.app
        .policy(
            "globex",
            "iss-g",
            json!({
                "audiences": {"api://gateway": {"scopes": ["orders:read"], "max_ttl_seconds": 3600}},
                "formats": ["v4.public"],
            }),
        )
        .await;
    let a = w
        .app
        .call(
            "POST",
            "/v1/tokens",
            Some(&g),
            Some(
                json!({"subject": "anyone", "audience": "api://gateway", "scope": "orders:read",
                        "ttl_seconds": 300, "format": "v4.public"}),
            ),
        )
        .await;
    assert_eq!(a.0, StatusCode::CREATED, "{}", a.2);
}

/// A release's reason is optional: an empty body (no content type) or `{}`.
#[tokio::test]
async fn a_release_may_come_without_a_body() {
    let w = world().await;
    for empty in [true, false] {
        let cut = w.engage("subject", &format!("mallory-{empty}")).await;
        let path = format!("/v1/cutoffs/{cut}/release");
        let (st, _, b) = if empty {
            w.app
                .send("POST", &path, Some(&w.soc), None, axum::body::Body::empty())
                .await
        } else {
            w.app.call("POST", &path, Some(&w.soc), Some(json!({}))).await
        };
        assert_eq!(st, StatusCode::OK, "{b}");
    }
    let released = w.app.data_of(T, "MintingCutoffReleased").await;
    assert_eq!(released.len(), 2);
    assert!(released.iter().all(|r| r["reason"] == "released by hand"));
}
