//! Scheduled key rotation: the next key is published a lead time before it
//! signs, then activated by the server, and the previous key retired but
//! still verifying — each step an event the server appends itself.

use super::support::*;
use serde_json::json;
use tokenledger_server::config::ServeArgs;

async fn mint(app: &TestApp, iss: &str) -> serde_json::Value {
    let body = json!({"subject": "alice", "audience": "api://orders", "scope": "orders:read",
                      "ttl_seconds": 3600, "format": "v4.public"});
    let (st, _, m) = app.call("POST", "/v1/tokens", Some(iss), Some(body)).await;
    assert_eq!(st.as_u16(), 201, "{m}");
    m
}

async fn key_states(app: &TestApp, token: &str) -> Vec<(String, String)> {
    let (st, _, k) = app.call("GET", "/v1/keys", Some(token), None).await;
    assert_eq!(st.as_u16(), 200, "{k}");
    k["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_owned(),
                k["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_next_key_is_published_ahead_then_activated_and_the_old_one_still_verifies() {
    let app = TestApp::with_args(ServeArgs {
        key_rotation_seconds: Some(86_400),
        key_publish_lead_seconds: Some(3_600),
        ..ServeArgs::default()
    })
    .await;
    let iss = app.issuer("iss", "default").await;
    app.policy(
        "default",
        "iss",
        json!({"audiences": {"api://orders": {"scopes": ["orders:read"], "max_ttl_seconds": 3600}},
               "formats": ["v4.public"]}),
    )
    .await;
    let gw = app.principal("gw", "validator", "default").await;
    let k1 = mint(&app, &iss).await["kid"].as_str().unwrap().to_owned();
    let tick = || async { app.state.keyring.tick(&app.state).await.unwrap() };

    tick().await;
    assert_eq!(key_states(&app, &gw).await, vec![(k1.clone(), "active".into())]);

    // A day later the scheduler publishes the next key, which signs nothing yet.
    app.clock.set(t0() + chrono::Duration::seconds(86_401));
    tick().await;
    let states = key_states(&app, &gw).await;
    assert_eq!(states.len(), 2, "{states:?}");
    let k2 = states.iter().find(|(k, _)| *k != k1).unwrap().0.clone();
    assert!(states.contains(&(k1.clone(), "active".into())) && states.contains(&(k2.clone(), "pending".into())));
    tick().await;
    assert_eq!(
        key_states(&app, &gw).await.len(),
        2,
        "a second tick publishes nothing more"
    );
    app.clock.set(t0() + chrono::Duration::seconds(86_401 + 3_599));
    let before = mint(&app, &iss).await;
    assert_eq!(before["kid"], k1.as_str(), "a pending key signs nothing");

    // Its time comes: it signs, and the old key is retired but verifies.
    app.clock.set(t0() + chrono::Duration::seconds(86_401 + 3_600));
    tick().await;
    let states = key_states(&app, &gw).await;
    assert!(states.contains(&(k1.clone(), "retired".into())) && states.contains(&(k2.clone(), "active".into())));
    assert_eq!(mint(&app, &iss).await["kid"], k2.as_str());
    let (_, _, v) = app
        .call(
            "POST",
            "/v1/tokens/verify",
            Some(&gw),
            Some(json!({"token": before["token"], "audience": "api://orders"})),
        )
        .await;
    assert_eq!(v["active"], true, "{v}");

    // Every step is an event the server appended.
    let log = app.log("default").await;
    let server_key_events: Vec<&str> = log
        .iter()
        .filter(|e| e.stream == "keys" && e.metadata["actor"] == "server")
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        server_key_events,
        vec![
            "SigningKeyAdded",
            "SigningKeyActivated",
            "SigningKeyAdded",
            "SigningKeyActivated",
            "SigningKeyRetired"
        ]
    );
    assert!(
        log.iter().all(|e| !e.data.to_string().contains("\"secret\"")),
        "no clear secret in any event"
    );
}
