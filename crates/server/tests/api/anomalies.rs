//! The anomaly view for the SOC: `GET /v1/anomalies` with its filters and
//! roles, and the live alert stream `GET /v1/anomalies/stream` (SSE) that a
//! client resumes with `Last-Event-ID` without missing or repeating an
//! alert.

use super::support::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

const T: &str = "acme";

struct World {
    app: TestApp,
    iss: String,
    gw: String,
    soc: String,
}

async fn world() -> World {
    let app = TestApp::new().await;
    let iss = app.minter("iss", T).await;
    let gw = app.principal("gw", "validator", T).await;
    let soc = app.principal("soc-1", "soc", T).await;
    World { app, iss, gw, soc }
}

impl World {
    async fn verify_from(&self, token: &str, ip: &str) -> Value {
        let (st, _, b) = self
            .app
            .call(
                "POST",
                "/v1/tokens/verify",
                Some(&self.gw),
                Some(json!({"token": token, "audience": "api://orders", "context": {"ip": ip, "user_agent": "t/1"}})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{b}");
        b
    }

    /// Mints a token for `subject`, revokes it, presents it: one
    /// `use_after_revocation`.
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
        let v = self.verify_from(m["token"].as_str().unwrap(), "198.51.100.7").await;
        assert_eq!(v["reason"], "revoked");
    }

    async fn anomalies(&self, query: &str) -> Value {
        let (st, _, b) = self
            .app
            .call("GET", &format!("/v1/anomalies{query}"), Some(&self.soc), None)
            .await;
        assert_eq!(st, StatusCode::OK, "{query}: {b}");
        b
    }
}

#[tokio::test]
async fn two_networks_make_a_concurrent_use_anomaly_with_its_evidence() {
    let w = world().await;
    let m = w.app.mint_ok(&w.iss, "mallory").await;
    let tok = m["token"].as_str().unwrap();
    w.verify_from(tok, "198.51.100.7").await;
    w.verify_from(tok, "203.0.113.9").await;
    let b = w.anomalies("?subject=mallory&kind=concurrent_use").await;
    let list = b["anomalies"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{b}");
    let a = &list[0];
    assert_eq!(a["kind"], "concurrent_use");
    assert_eq!(a["severity"], "high");
    assert_eq!(a["tenant"], T);
    assert_eq!(a["subject"], "mallory");
    assert_eq!(a["client_id"], "iss");
    assert_eq!(a["token_id"], m["token_id"]);
    assert_eq!(a["ip"], "203.0.113.9");
    // The evidence are the two TokenUsed events, the triggering one last.
    let log = w.app.log(T).await;
    let uses: Vec<u64> = log
        .iter()
        .filter(|e| e.event_type == "TokenUsed")
        .map(|e| e.position.0)
        .collect();
    assert_eq!(a["evidence"], json!(uses));
    assert_eq!(a["position"], json!(uses[1]));
    assert_eq!(a["anomaly_id"], format!("a-{}-concurrent_use-token", uses[1]));
    assert_eq!(b["position"], json!(log.last().unwrap().position.0));

    // Filters.
    for (q, n) in [
        ("?kind=concurrent_use", 1),
        ("?kind=mint_burst", 0),
        ("?severity=high", 1),
        ("?severity=low", 0),
        ("?min_severity=medium", 1),
        ("?min_severity=critical", 0),
        ("?subject=alice", 0),
        ("?client_id=iss", 1),
        ("?ip=203.0.113.9", 1),
        (&format!("?since={}", uses[1] - 1), 1),
        (&format!("?since={}", uses[1]), 0),
        ("?since=2000-01-01T00:00:00Z", 1),
        ("?since=2100-01-01T00:00:00Z", 0),
    ] {
        let got = w.anomalies(q).await;
        assert_eq!(got["anomalies"].as_array().unwrap().len(), n, "{q}: {got}");
    }
    for q in [
        "?kind=nope",
        "?severity=urgent",
        "?since=yesterday",
        "?limit=x",
        "?colour=red",
        "?subject=e%CC%81ve",
        "?subject=al%E2%80%8Bice",
        "?client_id=a%20b",
    ] {
        let ans = w
            .app
            .call("GET", &format!("/v1/anomalies{q}"), Some(&w.soc), None)
            .await;
        assert_problem(&ans, StatusCode::BAD_REQUEST, "invalid-query");
    }
}

#[tokio::test]
async fn roles_and_tenants() {
    let w = world().await;
    let m = w.app.mint_ok(&w.iss, "mallory").await;
    let tok = m["token"].as_str().unwrap();
    w.verify_from(tok, "198.51.100.7").await;
    w.verify_from(tok, "203.0.113.9").await;
    let analyst = w.app.principal("ana", "analyst", T).await;
    let (st, _, b) = w.app.call("GET", "/v1/anomalies", Some(&analyst), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(b["anomalies"].as_array().unwrap().len(), 1);
    for who in [&w.iss, &w.gw] {
        let ans = w.app.call("GET", "/v1/anomalies", Some(who), None).await;
        assert_problem(&ans, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    // Streaming alerts is the SOC's: an analyst may read, not stream.
    let ans = w.app.call("GET", "/v1/anomalies/stream", Some(&analyst), None).await;
    assert_problem(&ans, StatusCode::FORBIDDEN, "role-not-allowed");
    assert_unauthenticated(&w.app.call("GET", "/v1/anomalies", None, None).await);
    // Another tenant's SOC sees none of it.
    let other = w.app.principal("soc-2", "soc", "globex").await;
    let (st, _, b) = w.app.call("GET", "/v1/anomalies", Some(&other), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(b["anomalies"], json!([]));
}

#[tokio::test]
async fn limit_pages_through_in_position_order() {
    let w = world().await;
    for i in 0..5 {
        w.revoked_use(&format!("user-{i}")).await;
    }
    let all = w.anomalies("?kind=use_after_revocation").await;
    let all = all["anomalies"].as_array().unwrap().clone();
    assert_eq!(all.len(), 5);
    let mut got = Vec::new();
    let mut since = 0u64;
    loop {
        let page = w
            .anomalies(&format!("?kind=use_after_revocation&limit=2&since={since}"))
            .await;
        let list = page["anomalies"].as_array().unwrap();
        if list.is_empty() {
            break;
        }
        assert!(list.len() <= 2);
        got.extend(list.iter().cloned());
        since = page["position"].as_u64().unwrap();
    }
    assert_eq!(got, all);
}

/// Reads SSE events from `body` until `n` came (each `(id, data)`), or
/// until the stream is quiet for a while.
async fn read_events(body: &mut Body, n: usize) -> Vec<(String, Value)> {
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let frame = match tokio::time::timeout(Duration::from_secs(20), body.frame()).await {
            Ok(Some(Ok(f))) => f,
            _ => break,
        };
        let Ok(data) = frame.into_data() else { continue };
        text.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut id = None;
            let mut data = String::new();
            let mut event = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                }
            }
            if let (Some(id), Some("anomaly")) = (id, event.as_deref()) {
                out.push((id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

async fn open_stream(w: &World, last_event_id: Option<&str>, query: &str) -> Body {
    let mut b = Request::builder()
        .method("GET")
        .uri(format!("/v1/anomalies/stream{query}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", w.soc));
    if let Some(id) = last_event_id {
        b = b.header("last-event-id", id);
    }
    let resp = w
        .app
        .router
        .clone()
        .oneshot(b.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    resp.into_body()
}

#[tokio::test]
async fn a_stream_resumed_with_last_event_id_misses_nothing_and_repeats_nothing() {
    let w = world().await;
    // Before the client connects.
    for i in 0..3 {
        w.revoked_use(&format!("early-{i}")).await;
    }
    let mut body = open_stream(&w, None, "?since=0").await;
    let first = read_events(&mut body, 3).await;
    assert_eq!(first.len(), 3, "{first:?}");
    // Live, while connected.
    w.revoked_use("live-0").await;
    let live = read_events(&mut body, 1).await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].1["subject"], "live-0");
    // The client goes away; alerts keep coming.
    drop(body);
    for i in 0..4 {
        w.revoked_use(&format!("late-{i}")).await;
    }
    let last_id = live[0].0.clone();
    let mut body = open_stream(&w, Some(&last_id), "").await;
    let resumed = read_events(&mut body, 4).await;
    assert_eq!(resumed.len(), 4, "{resumed:?}");
    drop(body);

    let mut seen: Vec<Value> = Vec::new();
    for (id, a) in first.iter().chain(&live).chain(&resumed) {
        assert_eq!(id, &a["position"].to_string(), "the id is the triggering position");
        seen.push(a.clone());
    }
    let all = w.anomalies("").await;
    assert_eq!(
        &seen,
        all["anomalies"].as_array().unwrap(),
        "every alert exactly once, in order"
    );

    // Without Last-Event-ID or since, a stream starts at the head.
    let mut body = open_stream(&w, None, "").await;
    w.revoked_use("after-head").await;
    let fresh = read_events(&mut body, 1).await;
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0].1["subject"], "after-head");

    let ans = w
        .app
        .send_request(
            Request::builder()
                .uri("/v1/anomalies/stream")
                .header(header::AUTHORIZATION, format!("Bearer {}", w.soc))
                .header("last-event-id", "not-a-position")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_problem(&ans, StatusCode::BAD_REQUEST, "invalid-last-event-id");
}

/// With `verify_refuses_cut_off`, a subject under an enforced cutoff has
/// its existing tokens refused as `cutoff` until the release; by default
/// only new grants are refused.
#[tokio::test]
async fn verify_may_refuse_the_tokens_of_a_cut_off_subject() {
    for refuse in [false, true] {
        let app = TestApp::with_args(tokenledger_server::config::ServeArgs {
            verify_refuses_cut_off: Some(refuse),
            ..Default::default()
        })
        .await;
        let iss = app.minter("iss", T).await;
        let gw = app.principal("gw", "validator", T).await;
        let soc = app.principal("soc-1", "soc", T).await;
        let m = app.mint_ok(&iss, "mallory").await;
        let tok = m["token"].as_str().unwrap();
        let other = app.mint_ok(&iss, "alice").await;
        assert_eq!(app.verify(&gw, tok, "api://orders").await["active"], true);
        let (st, _, c) = app
            .call(
                "POST",
                "/v1/cutoffs",
                Some(&soc),
                Some(json!({"scope": "subject", "key": "mallory", "reason": "bars", "duration_seconds": 600})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{c}");
        let v = app.verify(&gw, tok, "api://orders").await;
        if refuse {
            assert_eq!(v["active"], false, "{v}");
            assert_eq!(v["reason"], "cutoff");
        } else {
            assert_eq!(v["active"], true, "{v}");
        }
        // Someone else's token is not concerned.
        let v = app.verify(&gw, other["token"].as_str().unwrap(), "api://orders").await;
        assert_eq!(v["active"], true);
        let cid = c["cutoff_id"].as_str().unwrap();
        let (st, _, _) = app
            .call(
                "POST",
                &format!("/v1/cutoffs/{cid}/release"),
                Some(&soc),
                Some(json!({})),
            )
            .await;
        assert!(st.is_success());
        assert_eq!(app.verify(&gw, tok, "api://orders").await["active"], true);
    }
}

/// An exchange asking for more scope than the subject token holds is
/// refused (`invalid_scope`) and is an `exchange_escalation` anomaly about
/// the token's subject and the caller.
#[tokio::test]
async fn an_exchange_asking_for_a_wider_scope_is_an_anomaly() {
    let w = world().await;
    let svc = w.app.principal("svc", "issuer", T).await;
    w.app
        .policy(
            T,
            "svc",
            json!({
                "audiences": {"api://billing": {"scopes": ["orders:read", "orders:write"], "max_ttl_seconds": 600}},
                "formats": ["v4.public"],
                "serves": ["api://orders"],
            }),
        )
        .await;
    let m = w.app.mint_ok(&w.iss, "alice").await;
    let body = serde_urlencoded::to_string([
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", m["token"].as_str().unwrap()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
        ("audience", "api://billing"),
        ("scope", "orders:read orders:write"),
    ])
    .unwrap();
    let (st, _, b) = w
        .app
        .send(
            "POST",
            "/oauth2/token",
            Some(&svc),
            Some("application/x-www-form-urlencoded"),
            body,
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["error"], "invalid_scope");
    let got = w.anomalies("?kind=exchange_escalation").await;
    let list = got["anomalies"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{got}");
    assert_eq!(list[0]["subject"], "alice");
    assert_eq!(list[0]["client_id"], "svc");
    assert_eq!(list[0]["severity"], "high");
}

/// A flood of forged tokens — a real token's payload with a broken
/// signature, so they claim the victim's token id, subject and client —
/// from a few addresses: the addresses are reported, the victim never.
#[tokio::test]
async fn a_flood_of_forged_tokens_never_points_at_the_victim() {
    let w = world().await;
    let m = w.app.mint_ok(&w.iss, "victim").await;
    let real = m["token"].as_str().unwrap().to_owned();
    // Flip a bit of the signature (the last 64 bytes of the body); the
    // payload and the footer (with our kid) stay intact.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = real.split('.').collect();
    let mut body = b64.decode(parts[2]).unwrap();
    *body.last_mut().unwrap() ^= 1;
    let forged = format!("v4.public.{}.{}", b64.encode(&body), parts[3]);
    for i in 0..60 {
        let v = w.verify_from(&forged, &format!("192.0.2.{}", i % 3)).await;
        assert_eq!(v["active"], false);
        assert_eq!(v["reason"], "bad_signature", "{v}");
    }
    // The forged uses claimed the victim; they were recorded as claims only.
    let used = w.app.data_of(T, "TokenUsed").await;
    assert!(
        used.iter()
            .all(|u| u.get("token_id").is_none() && u["claimed_subject"] == "victim")
    );
    let all = w.anomalies("").await;
    let list = all["anomalies"].as_array().unwrap();
    assert_eq!(list.len(), 3, "one spike per address: {all}");
    for a in list {
        assert_eq!(a["kind"], "verify_failure_spike");
        assert!(a["ip"].as_str().unwrap().starts_with("192.0.2."));
        for f in ["subject", "client_id", "token_id"] {
            assert!(a[f].is_null(), "{f} in {a}");
        }
    }
    assert_eq!(w.anomalies("?subject=victim").await["anomalies"], json!([]));
    assert_eq!(w.anomalies("?client_id=iss").await["anomalies"], json!([]));
    // The victim's own token still works, and the victim may still be minted for.
    assert_eq!(w.verify_from(&real, "198.51.100.7").await["active"], true);
    w.app.mint_ok(&w.iss, "victim").await;
}

/// Reads `body` until the stream ends (true) or an anomaly or a long
/// silence comes first (false).
async fn ends_without_alerts(body: &mut Body) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), body.frame()).await {
            Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data()
                    && std::str::from_utf8(&d).unwrap_or_default().contains("event: anomaly")
                {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn a_stream_ends_when_its_credential_is_disabled_or_rotated_or_the_server_stops() {
    let w = world().await;
    let admin = w.app.admin(T).await;
    for action in ["disable", "rotate"] {
        let name = format!("soc-{action}");
        let secret = w.app.principal(&name, "soc", T).await;
        let req = Request::builder()
            .uri("/v1/anomalies/stream")
            .header(header::AUTHORIZATION, format!("Bearer {secret}"))
            .body(Body::empty())
            .unwrap();
        let resp = w.app.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let (st, _, b) = w
            .app
            .call(
                "POST",
                &format!("/v1/principals/{name}/{action}"),
                Some(&admin),
                Some(json!({})),
            )
            .await;
        assert!(st.is_success(), "{action}: {b}");
        w.revoked_use(&format!("after-{action}")).await;
        assert!(ends_without_alerts(&mut body).await, "the stream outlived {action}");
    }
    // A shutdown ends open streams (it drains requests; a stream never
    // finishes by itself).
    let req = Request::builder()
        .uri("/v1/anomalies/stream")
        .header(header::AUTHORIZATION, format!("Bearer {}", w.soc))
        .body(Body::empty())
        .unwrap();
    let resp = w.app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    w.app.state.ready.store(false, std::sync::atomic::Ordering::Release);
    assert!(ends_without_alerts(&mut body).await, "the stream outlived the shutdown");
    w.app.state.ready.store(true, std::sync::atomic::Ordering::Release);
    // Beyond the head: refused, not a silent wait.
    let req = Request::builder()
        .uri("/v1/anomalies/stream")
        .header(header::AUTHORIZATION, format!("Bearer {}", w.soc))
        .header("last-event-id", "999999")
        .body(Body::empty())
        .unwrap();
    assert_problem(
        &w.app.send_request(req).await,
        StatusCode::BAD_REQUEST,
        "invalid-last-event-id",
    );
    let ans = w
        .app
        .call("GET", "/v1/anomalies/stream?since=999999", Some(&w.soc), None)
        .await;
    assert_problem(&ans, StatusCode::BAD_REQUEST, "invalid-query");
}

/// A validator's report naming a token id is the token's use only for the
/// token's own audience: a report for another audience does not make the
/// token's subject a suspect.
#[tokio::test]
async fn a_use_report_for_another_audience_is_not_the_tokens() {
    let w = world().await;
    let m = w.app.mint_ok(&w.iss, "alice").await;
    let at = iso(w.app.now());
    let report = |ip: &str, aud: &str| {
        json!({"token_id": m["token_id"], "audience": aud, "outcome": "accepted", "at": at,
               "context": {"ip": ip, "device_id": format!("d-{ip}")}})
    };
    let (st, _, b) = w
        .app
        .call(
            "POST",
            "/v1/uses",
            Some(&w.gw),
            Some(json!({"uses": [report("192.0.2.1", "api://other"), report("203.0.113.200", "api://other")]})),
        )
        .await;
    assert!(st.is_success(), "{b}");
    assert_eq!(w.anomalies("?subject=alice").await["anomalies"], json!([]));
    // The same reports for the token's audience are its uses.
    let (st, _, b) = w
        .app
        .call(
            "POST",
            "/v1/uses",
            Some(&w.gw),
            Some(json!({"uses": [report("192.0.2.1", "api://orders"), report("203.0.113.200", "api://orders")]})),
        )
        .await;
    assert!(st.is_success(), "{b}");
    let got = w.anomalies("?subject=alice&kind=concurrent_use").await;
    assert_eq!(got["anomalies"].as_array().unwrap().len(), 1, "{got}");
}
