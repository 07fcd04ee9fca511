//! `POST /v1/principals`, `…/disable`, `…/rotate`: bootstrap, admins,
//! secrets shown once and never their hash.

use super::support::*;
use axum::http::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokenledger_server::config::ServeArgs;

/// The hex SHA-256 the server stores for a credential.
fn stored_hash(credential: &str) -> String {
    let secret = credential.rsplit('_').next().unwrap();
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[track_caller]
fn assert_no_secret_hash(body: &Value, hashes: &[String]) {
    let text = body.to_string();
    assert!(!text.contains("secret_hash"), "secret_hash in an answer: {text}");
    for h in hashes {
        assert!(!text.contains(h.as_str()), "a stored hash in an answer: {text}");
    }
}

#[tokio::test]
async fn bootstrap_creates_a_tenants_first_admin_and_the_log_shows_it_without_its_hash() {
    let app = TestApp::new().await;
    let (st, _, b) = app
        .call(
            "POST",
            "/v1/principals",
            Some(BOOT),
            Some(json!({"name": "root", "role": "admin", "tenant": "acme"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert_eq!(b["name"], "root");
    let admin = b["secret"].as_str().unwrap().to_owned();
    assert!(admin.starts_with("tl_"), "{admin}");
    assert_eq!(admin.rsplit('_').next().unwrap().len(), 64, "256 random bits in hex");
    let mut hashes = vec![stored_hash(&admin)];
    assert_no_secret_hash(&b, &hashes);

    // The admin works at once; the log shows the tenant and the principal.
    let (st, _, all) = app.call("GET", "/v1/events", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK, "{all}");
    let types: Vec<&str> = events(&all).iter().filter_map(|e| e["event_type"].as_str()).collect();
    assert_eq!(types, ["TenantCreated", "PrincipalCreated"], "{all}");
    let created = &events(&all)[1];
    assert_eq!(created["data"]["name"], "root");
    assert_eq!(created["data"]["role"], "admin");
    assert_eq!(created["data"]["tenant"], "acme");
    assert_eq!(created["data"]["by"], "bootstrap");
    assert_eq!(events(&all)[0]["data"]["tenant"], "acme");
    assert_no_secret_hash(&all, &hashes);
    let (st, _, s) = app.call("GET", "/v1/streams/principal-root", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK, "{s}");
    assert_no_secret_hash(&s, &hashes);

    // Nor after a rotation, nor for principals the admin creates.
    let (st, _, r) = app.call("POST", "/v1/principals/root/rotate", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let admin = r["secret"].as_str().unwrap().to_owned();
    hashes.push(stored_hash(&admin));
    let ana = app.create(&admin, "ana", "analyst", "acme").await;
    hashes.push(stored_hash(&ana));
    for who in [&admin, &ana] {
        let (st, _, all) = app.call("GET", "/v1/events", Some(who), None).await;
        assert_eq!(st, StatusCode::OK, "{all}");
        assert_eq!(events(&all).len(), 4, "{all}");
        assert_no_secret_hash(&all, &hashes);
    }
    let (_, _, s) = app.call("GET", "/v1/streams/principal-root", Some(&ana), None).await;
    assert_eq!(events(&s).len(), 2, "{s}");
    assert_no_secret_hash(&s, &hashes);
    // The store itself does keep the hash (it is only redacted on the way out).
    assert!(
        app.log("acme")
            .await
            .iter()
            .any(|e| e.data.get("secret_hash").is_some())
    );
}

#[tokio::test]
async fn bootstrap_cannot_create_a_second_admin_for_a_tenant() {
    let app = TestApp::new().await;
    app.admin("acme").await;
    let before = app.log_len().await;
    let a = app
        .call(
            "POST",
            "/v1/principals",
            Some(BOOT),
            Some(json!({"name": "root2", "role": "admin", "tenant": "acme"})),
        )
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "tenant-has-admin");
    assert!(a.2.get("secret").is_none());
    assert_eq!(app.log_len().await, before);
}

#[tokio::test]
async fn bootstrap_cannot_create_anything_but_an_admin() {
    let app = TestApp::new().await;
    app.admin("acme").await;
    let before = app.log_len().await;
    for tenant in ["acme", "fresh"] {
        for role in ["issuer", "validator", "analyst", "soc"] {
            let a = app
                .call(
                    "POST",
                    "/v1/principals",
                    Some(BOOT),
                    Some(json!({"name": format!("x-{role}"), "role": role, "tenant": tenant})),
                )
                .await;
            assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
        }
    }
    assert_eq!(app.log_len().await, before);
}

#[tokio::test]
async fn bootstrap_can_do_nothing_else() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
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
    let calls: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/v1/events".into(), None),
        ("GET", format!("/v1/streams/{}", stream(&jti)), None),
        (
            "POST",
            format!("/v1/streams/{}/events", stream(&jti)),
            Some(json!({"expected_revision": "any", "events": [revoked(&jti)]})),
        ),
        ("PUT", "/v1/clients/iss/policy".into(), Some(default_policy())),
        ("POST", "/v1/principals/iss/disable".into(), None),
        ("POST", "/v1/principals/iss/rotate".into(), None),
        ("POST", "/v1/principals/admin-acme/rotate".into(), None),
        ("GET", "/metrics".into(), None),
    ];
    for (method, path, body) in calls {
        let a = app.call(method, &path, Some(BOOT), body).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    assert_eq!(app.log_len().await, before);
    let (st, _, _) = app.call("GET", "/v1/events?limit=1", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn bootstrap_must_name_a_valid_tenant() {
    let app = TestApp::new().await;
    let a = app
        .call(
            "POST",
            "/v1/principals",
            Some(BOOT),
            Some(json!({"name": "root", "role": "admin"})),
        )
        .await;
    assert_problem(&a, StatusCode::BAD_REQUEST, "invalid-body");
    for tenant in ["Acme", "-acme", "ac me", "caf\u{e9}"] {
        let a = app
            .call(
                "POST",
                "/v1/principals",
                Some(BOOT),
                Some(json!({"name": "root", "role": "admin", "tenant": tenant})),
            )
            .await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid-identifier");
    }
    assert_eq!(app.log_len().await, 0);
}

#[tokio::test]
async fn an_admin_creates_principals_in_its_own_tenant() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    for (name, role, tenant) in [
        ("gw-1", "validator", Some("acme")),
        ("ana", "analyst", None),
        ("soc-1", "soc", Some("acme")),
        ("iss", "issuer", None),
        ("admin-2", "admin", Some("acme")),
    ] {
        let mut body = json!({"name": name, "role": role});
        if let Some(t) = tenant {
            body["tenant"] = json!(t);
        }
        let (st, _, b) = app.call("POST", "/v1/principals", Some(&admin), Some(body)).await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
        assert_eq!(b["name"], name);
        assert_eq!(b["role"], role);
        assert_eq!(b["tenant"], "acme");
        assert!(b["secret"].as_str().unwrap().starts_with("tl_"));
        let reg = app.state.registry.read();
        let p = reg.principal("acme", name).unwrap();
        assert_eq!(p.role.as_str(), role);
        assert!(!p.disabled);
    }
}

#[tokio::test]
async fn only_admins_create_principals() {
    let app = TestApp::new().await;
    let before = app.log_len().await;
    for role in ["issuer", "validator", "analyst", "soc"] {
        let who = app.principal(&format!("p-{role}"), role, "acme").await;
        let before = app.log_len().await;
        let a = app
            .call(
                "POST",
                "/v1/principals",
                Some(&who),
                Some(json!({"name": format!("child-{role}"), "role": "analyst"})),
            )
            .await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
        for action in ["disable", "rotate"] {
            let a = app
                .call("POST", &format!("/v1/principals/admin-acme/{action}"), Some(&who), None)
                .await;
            assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
        }
        assert_eq!(app.log_len().await, before);
    }
    assert!(app.log_len().await > before);
}

#[tokio::test]
async fn a_duplicate_principal_name_is_409_principal_exists() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    app.create(&admin, "gw-1", "validator", "acme").await;
    let before = app.log_len().await;
    for role in ["validator", "admin"] {
        let a = app
            .call(
                "POST",
                "/v1/principals",
                Some(&admin),
                Some(json!({"name": "gw-1", "role": role})),
            )
            .await;
        assert_problem(&a, StatusCode::CONFLICT, "principal-exists");
        assert!(a.2.get("secret").is_none());
    }
    assert_eq!(app.log_len().await, before);
    // The same name in another tenant is another principal.
    let admin_b = app.admin("globex").await;
    app.create(&admin_b, "gw-1", "validator", "globex").await;
}

#[tokio::test]
async fn the_bootstrap_role_cannot_be_given_to_a_principal() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    let before = app.log_len().await;
    for creator in [admin.as_str(), BOOT] {
        for tenant in ["acme", "fresh"] {
            let a = app
                .call(
                    "POST",
                    "/v1/principals",
                    Some(creator),
                    Some(json!({"name": "boot2", "role": "bootstrap", "tenant": tenant})),
                )
                .await;
            assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
        }
    }
    assert_eq!(app.log_len().await, before);
}

#[tokio::test]
async fn an_unknown_role_or_a_bad_name_is_refused() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    let before = app.log_len().await;
    for body in [
        json!({"name": "x", "role": "superuser"}),
        json!({"name": "x", "role": "Admin"}),
        json!({"name": "x"}),
        json!({"name": "x", "role": "analyst", "extra": 1}),
        json!({"name": 7, "role": "analyst"}),
    ] {
        let a = app.call("POST", "/v1/principals", Some(&admin), Some(body)).await;
        assert_problem(&a, StatusCode::BAD_REQUEST, "invalid-body");
    }
    for name in ["cafe\u{301}", "gw\u{200B}1", "gw 1", "", "gw/1", "caf\u{e9}"] {
        let a = app
            .call(
                "POST",
                "/v1/principals",
                Some(&admin),
                Some(json!({"name": name, "role": "analyst"})),
            )
            .await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid-identifier");
    }
    assert_eq!(app.log_len().await, before);
}

#[tokio::test]
async fn rotation_returns_a_new_secret_and_the_old_one_stops_working() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    let old = app.create(&admin, "ana", "analyst", "acme").await;
    let (st, _, b) = app.call("POST", "/v1/principals/ana/rotate", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["name"], "ana");
    let new = b["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(new.starts_with("tl_"));
    assert_unauthenticated(&app.call("GET", "/v1/events", Some(&old), None).await);
    let (st, _, b) = app.call("GET", "/v1/events", Some(&new), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let last = events(&b).last().unwrap();
    assert_eq!(last["event_type"], "PrincipalSecretRotated");
    assert_eq!(last["data"]["by"], "admin-acme");
    assert_eq!(
        app.call("POST", "/v1/principals/nobody/rotate", Some(&admin), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_principal_may_rotate_its_own_secret() {
    let app = TestApp::new().await;
    let val = app.principal("gw-1", "validator", "acme").await;
    let ana = app.principal("ana", "analyst", "acme").await;
    let (st, _, b) = app.call("POST", "/v1/principals/gw-1/rotate", Some(&val), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let new = b["secret"].as_str().unwrap().to_owned();
    // The old one no longer authenticates, the new one does.
    assert_unauthenticated(&app.call("POST", "/v1/principals/gw-1/rotate", Some(&val), None).await);
    let (st, _, b) = app.call("POST", "/v1/principals/gw-1/rotate", Some(&new), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    // But not someone else's.
    let newest = b["secret"].as_str().unwrap().to_owned();
    let a = app.call("POST", "/v1/principals/ana/rotate", Some(&newest), None).await;
    assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    let (st, _, _) = app.call("GET", "/v1/events?limit=1", Some(&ana), None).await;
    assert_eq!(st, StatusCode::OK, "ana's secret is untouched");
}

#[tokio::test]
async fn disabling_a_principal_stops_its_credential() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    let ana = app.create(&admin, "ana", "analyst", "acme").await;
    let (st, _, b) = app.call("POST", "/v1/principals/ana/disable", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b, json!({"name": "ana", "disabled": true}));
    assert_unauthenticated(&app.call("GET", "/v1/events", Some(&ana), None).await);
    // Disabling twice is not an error and records nothing more.
    let before = app.log_len().await;
    let (st, _, _) = app.call("POST", "/v1/principals/ana/disable", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(app.log_len().await, before);
    // A disabled principal's secret cannot be rotated back to life.
    let a = app.call("POST", "/v1/principals/ana/rotate", Some(&admin), None).await;
    assert_problem(&a, StatusCode::CONFLICT, "principal-disabled");
    assert_unauthenticated(&app.call("GET", "/v1/events", Some(&ana), None).await);
    // Nor re-created under the same name.
    let a = app
        .call(
            "POST",
            "/v1/principals",
            Some(&admin),
            Some(json!({"name": "ana", "role": "admin"})),
        )
        .await;
    assert_problem(&a, StatusCode::CONFLICT, "principal-exists");
    let a = app
        .call("POST", "/v1/principals/nobody/disable", Some(&admin), None)
        .await;
    assert_problem(&a, StatusCode::NOT_FOUND, "principal-not-found");
}

#[tokio::test]
async fn principals_rotations_and_disables_survive_a_restart() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    let kept = app.create(&admin, "kept", "analyst", "acme").await;
    let gone = app.create(&admin, "gone", "analyst", "acme").await;
    let rotated = app.create(&admin, "rot", "analyst", "acme").await;
    app.call("POST", "/v1/principals/gone/disable", Some(&admin), None)
        .await;
    let (_, _, b) = app.call("POST", "/v1/principals/rot/rotate", Some(&admin), None).await;
    let rotated_new = b["secret"].as_str().unwrap().to_owned();

    let restarted = TestApp::over(app.store.restarted(), app.clock.clone(), ServeArgs::default());
    let a = restarted.call("GET", "/v1/events", Some(&kept), None).await;
    assert_problem(&a, StatusCode::SERVICE_UNAVAILABLE, "not-ready");
    restarted.state.catch_up().await.unwrap();
    for ok in [&admin, &kept, &rotated_new] {
        let (st, _, b) = restarted.call("GET", "/v1/events?limit=1", Some(ok), None).await;
        assert_eq!(st, StatusCode::OK, "{b}");
    }
    for bad in [&gone, &rotated] {
        assert_unauthenticated(&restarted.call("GET", "/v1/events?limit=1", Some(bad), None).await);
    }
    // The bootstrap principal still sees the tenant's admin.
    let a = restarted
        .call(
            "POST",
            "/v1/principals",
            Some(BOOT),
            Some(json!({"name": "root2", "role": "admin", "tenant": "acme"})),
        )
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "tenant-has-admin");
}

/// DESIGN.md "Roles": bootstrap creates a tenant and its *first* admin ("for
/// a tenant that has no admin yet"). Once a tenant has had an admin, the
/// bootstrap secret must not mint a new admin for it — not even after the
/// tenant's admins were disabled (e.g. because one was compromised).
#[tokio::test]
async fn bootstrap_cannot_take_over_a_tenant_whose_admins_were_disabled() {
    let app = TestApp::new().await;
    let admin = app.admin("acme").await;
    let other = app.create(&admin, "admin-2", "admin", "acme").await;
    let (st, _, _) = app
        .call("POST", "/v1/principals/admin-acme/disable", Some(&other), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = app
        .call("POST", "/v1/principals/admin-2/disable", Some(&other), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let before = app.log_len().await;
    let a = app
        .call(
            "POST",
            "/v1/principals",
            Some(BOOT),
            Some(json!({"name": "root2", "role": "admin", "tenant": "acme"})),
        )
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "tenant-has-admin");
    assert!(a.2.get("secret").is_none(), "{}", a.2);
    assert_eq!(app.log_len().await, before);
}
