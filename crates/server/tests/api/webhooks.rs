//! Alert webhooks (DESIGN.md `WebhookSet`, "Webhook targets in private,
//! loopback or link-local ranges are refused unless allow-listed"; issue 5
//! "SOC alerting"): `PUT /v1/webhooks` refuses internal targets unless
//! allow-listed and shows the HMAC secret once; `GET /v1/webhooks` shows the
//! webhook and its delivery status, never the secret; the delivery worker
//! POSTs every anomaly, signed the Standard Webhooks way, retries a receiver
//! that is down until it is back, and delivers each anomaly once.

use super::support::*;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokenledger_server::config::ServeArgs;

const T: &str = "acme";

/// Waits for `cond` (polled every 20 ms); panics with `what` only if it has
/// not come true after a generous guard against a hang (this is not a
/// timing assertion).
async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond().await {
        assert!(t0.elapsed() < Duration::from_secs(300), "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn allowing(list: &str) -> ServeArgs {
    ServeArgs {
        webhook_allow: Some(list.parse().unwrap()),
        ..ServeArgs::default()
    }
}

struct World {
    app: TestApp,
    iss: String,
    gw: String,
    soc: String,
}

async fn world(args: ServeArgs) -> World {
    let app = TestApp::with_args(args).await;
    let iss = app.minter("iss", T).await;
    let gw = app.principal("gw", "validator", T).await;
    let soc = app.principal("soc-1", "soc", T).await;
    World { app, iss, gw, soc }
}

impl World {
    async fn put(&self, who: &str, url: &str) -> Answer {
        self.app
            .call("PUT", "/v1/webhooks", Some(who), Some(json!({"url": url})))
            .await
    }

    async fn status(&self) -> Value {
        let (st, _, b) = self.app.call("GET", "/v1/webhooks", Some(&self.soc), None).await;
        assert_eq!(st, StatusCode::OK, "{b}");
        b
    }

    async fn verify_from(&self, token: &str, ip: &str) -> Value {
        let (st, _, b) = self
            .app
            .call(
                "POST",
                "/v1/tokens/verify",
                Some(&self.gw),
                Some(json!({"token": token, "audience": "api://orders", "context": {"ip": ip}})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{b}");
        b
    }

    /// A token of `subject` used from two networks: `concurrent_use`.
    async fn concurrent_use(&self, subject: &str) {
        let m = self.app.mint_ok(&self.iss, subject).await;
        let tok = m["token"].as_str().unwrap();
        self.verify_from(tok, "198.51.100.7").await;
        self.verify_from(tok, "203.0.113.9").await;
    }

    /// A revoked token of `subject` presented: `use_after_revocation`.
    async fn revoked_use(&self, subject: &str) {
        let m = self.app.mint_ok(&self.iss, subject).await;
        let (st, _, b) = self
            .app
            .call(
                "POST",
                "/v1/revocations",
                Some(&self.soc),
                Some(json!({"token_id": m["token_id"], "reason": "stolen"})),
            )
            .await;
        assert!(st.is_success(), "{b}");
        self.verify_from(m["token"].as_str().unwrap(), "198.51.100.7").await;
    }

    /// The anomalies of the tenant's view after `position`, as delivered.
    fn anomalies_after(&self, position: u64) -> Vec<Value> {
        self.app
            .state
            .views
            .tenant(T)
            .map(|v| v.detect.anomalies_after(position).map(|a| a.to_json(T)).collect())
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// Targets.

#[tokio::test]
async fn internal_targets_are_refused_unless_allow_listed() {
    let w = world(ServeArgs::default()).await;
    for url in [
        "https://127.0.0.1/hook",
        "https://127.0.0.1:8443/hook",
        "https://10.1.2.3/hook",
        "https://172.16.0.1/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/hook",
        "https://0.0.0.0/hook",
        "https://[::1]/hook",
        "https://[fc00::1]/hook",
        "https://[fe80::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[::ffff:169.254.169.254]/hook",
        "https://0x7f.1/hook",
        "https://2130706433/hook",
        "https://localhost/hook",
        "https://localhost./hook",
        // Plain HTTP, even to a public address, unless allow-listed.
        "http://93.184.215.14/hook",
    ] {
        let a = w.put(&w.soc, url).await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "webhook-target-refused");
    }
    for url in [
        "https://user:pw@93.184.215.14/hook",
        "https://user@93.184.215.14/hook",
        "ftp://93.184.215.14/hook",
        "not a url",
        "/relative/hook",
        "https://93.184.215.14:0/hook",
        "https://93.184.215.14/x\r\nHost: evil",
        "https://93.184.215.14/x\tY",
    ] {
        let a = w.put(&w.soc, url).await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid-webhook-url");
    }
    // Nothing was recorded, so there is no webhook.
    assert_eq!(w.app.stream_len(T, "webhook-acme").await, None);
    let a = w.app.call("GET", "/v1/webhooks", Some(&w.soc), None).await;
    assert_problem(&a, StatusCode::NOT_FOUND, "webhook-not-set");
    // A public https target is taken (nothing is contacted when it is set).
    let (st, _, b) = w.put(&w.soc, "https://93.184.215.14/alerts").await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["url"], "https://93.184.215.14/alerts");
}

#[tokio::test]
async fn allow_listed_hosts_and_networks_are_taken_and_may_be_plain_http() {
    let w = world(allowing("127.0.0.1,localhost,10.20.0.0/16,fc00::/7")).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "https://127.0.0.1/hook",
        "http://localhost:9/hook",
        "https://10.20.3.4/hook",
        "http://[fc00::1]:8080/hook",
    ] {
        let (st, _, b) = w.put(&w.soc, url).await;
        assert_eq!(st, StatusCode::OK, "{url}: {b}");
    }
    // Outside what is listed: still refused.
    for url in [
        "http://127.0.0.2:9/hook",
        "https://10.21.0.1/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/",
    ] {
        let a = w.put(&w.soc, url).await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "webhook-target-refused");
    }
    // Userinfo is refused even for a listed host.
    let a = w.put(&w.soc, "http://u:p@127.0.0.1:9/hook").await;
    assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid-webhook-url");
}

#[tokio::test]
async fn only_soc_and_admin_manage_webhooks() {
    let w = world(ServeArgs::default()).await;
    let analyst = w.app.principal("ana", "analyst", T).await;
    for who in [&w.iss, &w.gw, &analyst] {
        let a = w.put(who, "https://93.184.215.14/hook").await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
        let a = w.app.call("GET", "/v1/webhooks", Some(who), None).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    // The role check comes before the body and the target.
    let a = w.put(&w.gw, "https://127.0.0.1/hook").await;
    assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    let a = w
        .app
        .call(
            "PUT",
            "/v1/webhooks",
            None,
            Some(json!({"url": "https://93.184.215.14/"})),
        )
        .await;
    assert_unauthenticated(&a);
    let admin = w.app.admin(T).await;
    let (st, _, b) = w.put(&admin, "https://93.184.215.14/hook").await;
    assert_eq!(st, StatusCode::OK, "{b}");
    // Unknown fields are refused like everywhere else.
    let a = w
        .app
        .call(
            "PUT",
            "/v1/webhooks",
            Some(&w.soc),
            Some(json!({"url": "https://93.184.215.14/", "secret": "mine"})),
        )
        .await;
    assert_problem(&a, StatusCode::BAD_REQUEST, "invalid-body");
    // Another tenant sees no webhook.
    let other = w.app.principal("soc-2", "soc", "globex").await;
    let a = w.app.call("GET", "/v1/webhooks", Some(&other), None).await;
    assert_problem(&a, StatusCode::NOT_FOUND, "webhook-not-set");
}

#[tokio::test]
async fn the_secret_is_shown_once_and_stored_only_sealed() {
    let w = world(ServeArgs::default()).await;
    let (st, _, b) = w.put(&w.soc, "https://93.184.215.14/hook").await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let secret = b["secret"].as_str().unwrap().to_owned();
    let key = STANDARD.decode(&secret).unwrap();
    assert_eq!(key.len(), 32, "a 256-bit key");
    let kid = b["signing_key_id"].as_str().unwrap().to_owned();
    let position = b["position"].as_u64().unwrap();

    // GET shows the webhook without the secret.
    let g = w.status().await;
    assert_eq!(g["webhook"]["url"], "https://93.184.215.14/hook");
    assert_eq!(g["webhook"]["signing_key_id"], kid.as_str());
    assert_eq!(g["webhook"]["set_at"], position);
    assert_eq!(g["webhook"]["set_by"], "soc-1");
    assert_eq!(g["delivery"]["pending"], 0);
    let text = g.to_string();
    assert!(!text.contains(&secret) && !text.contains("sealed"), "{text}");

    // The event holds the key only sealed: neither its base64, nor its hex,
    // nor its bytes.
    let data = w.app.data_of(T, "WebhookSet").await;
    assert_eq!(data.len(), 1);
    let stored = data[0].to_string();
    assert!(!stored.contains(&secret), "{stored}");
    assert!(!stored.contains(&hex::encode(&key)), "{stored}");
    assert!(!stored.contains(&STANDARD.encode(&key).trim_end_matches('=').to_owned()));
    assert_eq!(data[0]["signing_key_id"], kid.as_str());
    assert!(data[0]["sealed_signing_key"].as_str().is_some_and(|s| s.len() > 40));
    // Reading the stream through the API drops even the sealed key.
    let admin = w.app.admin(T).await;
    let (st, _, r) = w.app.call("GET", "/v1/streams/webhook-acme", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let rendered = r.to_string();
    assert!(
        !rendered.contains("sealed_signing_key") && !rendered.contains(&secret),
        "{rendered}"
    );

    // A second PUT replaces the key: a new id, a new secret.
    let (_, _, b2) = w.put(&w.soc, "https://93.184.215.14/hook").await;
    assert_ne!(b2["signing_key_id"], kid.as_str());
    assert_ne!(b2["secret"], secret.as_str());
    let g = w.status().await;
    assert_eq!(g["webhook"]["signing_key_id"], b2["signing_key_id"]);
}

// ---------------------------------------------------------------------------
// Delivery.

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A webhook receiver on 127.0.0.1: records every POST and answers 200.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Serves on `port` (bound now) until the returned task is aborted.
    async fn serve(&self, port: u16) -> tokio::task::JoinHandle<()> {
        let got = self.got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let got = got.clone();
                async move {
                    got.lock().unwrap().push(Received {
                        headers,
                        body: body.to_vec(),
                    });
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        })
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// A loopback port nothing listens on (for now).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// Checks the Standard Webhooks signature of `r` under `secret` (base64),
/// computed here independently of the server's code.
fn assert_signed(r: &Received, secret: &str) {
    let key = STANDARD.decode(secret).unwrap();
    let id = header(r, "webhook-id");
    let ts = header(r, "webhook-timestamp");
    assert!(!id.is_empty() && ts.parse::<i64>().is_ok(), "headers: {:?}", r.headers);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let sig = header(r, "webhook-signature");
    assert!(
        sig.split(' ').any(|s| s == expected),
        "signature {sig:?} does not verify (expected {expected:?})"
    );
    assert_eq!(header(r, "content-type"), "application/json");
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_every_alert_once_it_is_back() {
    let w = world(allowing("127.0.0.1")).await;
    w.app
        .state
        .webhooks
        .set_retry(Duration::from_millis(50), Duration::from_millis(400));
    let _worker = AbortOnDrop(tokenledger_server::webhooks::spawn(w.app.state.clone()));
    // An anomaly before the webhook exists is not delivered.
    w.concurrent_use("before").await;

    let port = free_port();
    let (st, _, set) = w.put(&w.soc, &format!("http://127.0.0.1:{port}/hook")).await;
    assert_eq!(st, StatusCode::OK, "{set}");
    let secret = set["secret"].as_str().unwrap().to_owned();
    let set_at = set["position"].as_u64().unwrap();

    // The receiver is down: alerts pile up and are retried.
    w.concurrent_use("mallory").await;
    w.revoked_use("eve").await;
    w.concurrent_use("trudy").await;
    let expected = w.anomalies_after(set_at);
    assert!(expected.len() >= 3, "{expected:?}");
    wait_for("two failed attempts", async || {
        w.status().await["delivery"]["attempts"].as_u64() >= Some(2)
    })
    .await;
    let g = w.status().await;
    assert_eq!(g["delivery"]["pending"], expected.len(), "{g}");
    assert!(
        g["delivery"]["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{g}"
    );
    assert!(g["delivery"]["next_retry_at"].is_string(), "{g}");
    assert_eq!(g["delivery"]["delivered_anomaly_id"], Value::Null, "{g}");

    // Back up: every alert arrives, in position order, once.
    let rx = Receiver::default();
    let _server = AbortOnDrop(rx.serve(port).await);
    wait_for("every alert delivered", async || rx.got().len() >= expected.len()).await;
    wait_for("the status caught up", async || {
        w.status().await["delivery"]["pending"] == 0
    })
    .await;
    // One more round of the worker would show a duplicate, if any.
    w.concurrent_use("oscar").await;
    let expected = w.anomalies_after(set_at);
    wait_for("the next alert delivered", async || rx.got().len() >= expected.len()).await;
    wait_for("the status caught up again", async || {
        w.status().await["delivery"]["pending"] == 0
    })
    .await;

    let got = rx.got();
    let ids: Vec<&str> = got.iter().map(|r| header(r, "webhook-id")).collect();
    let want: Vec<&str> = expected.iter().map(|a| a["anomaly_id"].as_str().unwrap()).collect();
    assert_eq!(ids, want, "each anomaly once, in position order");
    for (r, a) in got.iter().zip(&expected) {
        assert_signed(r, &secret);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(&body, a, "the body is the anomaly as the view has it");
        assert_eq!(body["tenant"], T);
    }
    assert!(
        !got.iter().any(|r| String::from_utf8_lossy(&r.body).contains("before")),
        "an anomaly from before the webhook was set was delivered"
    );
    let g = w.status().await;
    let last = expected.last().unwrap();
    assert_eq!(g["delivery"]["delivered_anomaly_id"], last["anomaly_id"], "{g}");
    assert_eq!(g["delivery"]["delivered_position"], last["position"], "{g}");
    assert_eq!(g["delivery"]["attempts"], 0, "{g}");
    assert_eq!(g["delivery"]["last_error"], Value::Null, "{g}");
    // The secret never shows in the status.
    assert!(!g.to_string().contains(&secret));
}

#[tokio::test]
async fn a_new_webhook_starts_after_it_was_set_and_signs_with_its_new_key() {
    let w = world(allowing("127.0.0.1")).await;
    w.app
        .state
        .webhooks
        .set_retry(Duration::from_millis(50), Duration::from_millis(400));
    let _worker = AbortOnDrop(tokenledger_server::webhooks::spawn(w.app.state.clone()));
    let rx = Receiver::default();
    let port = free_port();
    let _server = AbortOnDrop(rx.serve(port).await);
    let url = format!("http://127.0.0.1:{port}/hook");

    let (_, _, first) = w.put(&w.soc, &url).await;
    w.concurrent_use("mallory").await;
    let one = w.anomalies_after(first["position"].as_u64().unwrap());
    assert!(!one.is_empty());
    wait_for("the first webhook's alert", async || rx.got().len() >= one.len()).await;

    // A new webhook: an anomaly between the two is not the new one's.
    w.revoked_use("eve").await;
    let (_, _, second) = w.put(&w.soc, &url).await;
    wait_for("the worker took the new webhook", async || {
        let g = w.status().await;
        g["webhook"]["signing_key_id"] == second["signing_key_id"]
    })
    .await;
    w.concurrent_use("trudy").await;
    let two = w.anomalies_after(second["position"].as_u64().unwrap());
    assert!(!two.is_empty());
    wait_for("the second webhook's alerts", async || {
        rx.got()
            .iter()
            .any(|r| header(r, "webhook-id") == two.last().unwrap()["anomaly_id"].as_str().unwrap())
    })
    .await;
    wait_for("the status caught up", async || {
        w.status().await["delivery"]["pending"] == 0
    })
    .await;

    let got = rx.got();
    let first_secret = first["secret"].as_str().unwrap();
    let second_secret = second["secret"].as_str().unwrap();
    // Before the change, signed with the first key; after, with the second.
    let (a, b) = got.split_at(one.len());
    for r in a {
        assert_signed(r, first_secret);
    }
    let ids_b: Vec<&str> = b.iter().map(|r| header(r, "webhook-id")).collect();
    let want_b: Vec<&str> = two.iter().map(|a| a["anomaly_id"].as_str().unwrap()).collect();
    // The anomaly raised between the two webhooks may have reached the
    // first one before it was replaced, but never comes signed by the
    // second.
    let tail: Vec<&str> = ids_b.iter().copied().filter(|id| want_b.contains(id)).collect();
    assert_eq!(
        tail, want_b,
        "the new webhook gets exactly the anomalies after it, once"
    );
    for r in b.iter().filter(|r| want_b.contains(&header(r, "webhook-id"))) {
        assert_signed(r, second_secret);
    }
}

/// Aborts a task when the test ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
