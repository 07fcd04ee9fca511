//! Issue 5's scenario from the outside, with the real binary and the rules
//! file the repository ships (`rules/default.toml`):
//!
//! a workload's token is replayed from a second network → a
//! `concurrent_use` anomaly → the rule `subject-token-misuse` engages a
//! cutoff on that subject → the next mint, `client_credentials` grant and
//! exchange for it are refused, and so is an external `TokenIssued` the
//! issuer appends for it; a release lets minting work again. Then, with the
//! server stopped, `tokenledger rebuild` folds the log from position 0 and
//! the restarted server answers exactly the anomalies and cutoffs it
//! answered live.

use crate::harness::{Api, BOOTSTRAP, PATIENCE, start_server};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokenledger_testkit::{Server, Statuses, admin_via_bootstrap, create_principal, set_policy};
use uuid::Uuid;

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The workload: an issuer whose `client_credentials` tokens name it as subject.
const SVC: &str = "svc-a";

fn rules_file() -> String {
    format!("{}/../rules/default.toml", env!("CARGO_MANIFEST_DIR"))
}

struct World {
    api: Api,
    svc: String,
    gw: String,
    soc: String,
}

impl World {
    async fn oauth(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .api
            .http
            .post(format!("{}/oauth2/token", self.api.base))
            .bearer_auth(&self.svc)
            .form(form)
            .send()
            .await
            .expect("/oauth2/token answered");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("OAuth JSON"))
    }

    async fn client_credentials(&self) -> (u16, Value) {
        self.oauth(&[
            ("grant_type", "client_credentials"),
            ("audience", "api://orders"),
            ("scope", "orders:read"),
        ])
        .await
    }

    async fn mint(&self, subject: &str) -> (u16, Value) {
        let a = self
            .api
            .call(
                Method::POST,
                "/v1/tokens",
                &self.svc,
                Some(
                    &json!({"subject": subject, "audience": "api://orders", "scope": "orders:read",
                    "ttl_seconds": 300, "format": "v4.public"}),
                ),
            )
            .await
            .expect("mint answered");
        (a.status, a.body)
    }

    async fn verify_from(&self, token: &str, ip: &str) -> Value {
        self.api
            .expect(
                Method::POST,
                "/v1/tokens/verify",
                &self.gw,
                Some(&json!({"token": token, "audience": "api://orders",
                    "context": {"ip": ip, "user_agent": "scenario/1"}})),
                &[200],
            )
            .await
    }

    async fn get(&self, path: &str) -> Value {
        self.api.expect(Method::GET, path, &self.soc, None, &[200]).await
    }
}

async fn world(server: &Server) -> World {
    let api = Api::new(server.base());
    let ok = Statuses::OneOf(&[200, 201]);
    let admin = admin_via_bootstrap(&api.http, &api.base, BOOTSTRAP, "admin", "default", ok).await;
    let mut secrets = Vec::new();
    for (name, role) in [(SVC, "issuer"), ("gw", "validator"), ("soc", "soc")] {
        let p = json!({"name": name, "role": role});
        secrets.push(create_principal(&api.http, &api.base, &admin, &p, ok).await);
    }
    let policy = json!({
        "audiences": {"api://orders": {"scopes": ["orders:read"], "max_ttl_seconds": 3600}},
        "formats": ["v4.public", "external"],
        "serves": ["api://orders"],
    });
    set_policy(
        &api.http,
        &api.base,
        &admin,
        SVC,
        &policy,
        Statuses::OneOf(&[200, 201, 204]),
    )
    .await;
    let mut s = secrets.into_iter();
    World {
        api,
        svc: s.next().unwrap(),
        gw: s.next().unwrap(),
        soc: s.next().unwrap(),
    }
}

fn problem_type(b: &Value) -> String {
    b["type"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_replayed_token_cuts_off_its_subject_on_every_grant_path_until_released() {
    let _heavy = crate::harness::heavy().await;
    let rules = rules_file();
    let mut server = start_server(&["--rules-file", &rules]).await;
    let w = world(&server).await;

    // Before: the workload gets tokens every way.
    let (st, cc) = w.client_credentials().await;
    assert_eq!(st, 200, "{cc}");
    let token = cc["access_token"].as_str().unwrap().to_owned();
    let (st, early) = w.mint(SVC).await;
    assert_eq!(st, 201, "{early}");
    let early = early["token"].as_str().unwrap().to_owned();

    // The replay: the same token from two networks.
    assert_eq!(w.verify_from(&token, "198.51.100.7").await["active"], true);
    assert_eq!(w.verify_from(&token, "203.0.113.9").await["active"], true);

    // The anomaly, and the cutoff the rule engages on it.
    let anomalies = w.get(&format!("/v1/anomalies?kind=concurrent_use&subject={SVC}")).await;
    let list = anomalies["anomalies"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{anomalies}");
    let anomaly_id = list[0]["anomaly_id"].as_str().unwrap().to_owned();
    let since = Instant::now();
    let cutoff = loop {
        let all = w.get("/v1/cutoffs").await;
        let found = all["cutoffs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["key"] == SVC && c["active"] == true)
            .cloned();
        if let Some(c) = found {
            break c;
        }
        assert!(since.elapsed() < PATIENCE, "no cutoff engaged: {all}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(cutoff["rule_id"], "subject-token-misuse", "{cutoff}");
    assert_eq!(cutoff["scope"], "subject");
    assert_eq!(cutoff["mode"], "enforce");
    assert_eq!(cutoff["evidence"]["anomaly_ids"], json!([anomaly_id]), "{cutoff}");
    let cid = cutoff["cutoff_id"].as_str().unwrap().to_owned();

    // Every grant path is refused, naming the cutoff.
    let (st, b) = w.mint(SVC).await;
    assert_eq!(st, 403, "mint: {b}");
    assert!(
        problem_type(&b).ends_with("/minting-cutoff") && b.to_string().contains(&cid),
        "{b}"
    );
    let (st, b) = w.client_credentials().await;
    assert_eq!(
        (st, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "client_credentials: {b}"
    );
    assert!(b.to_string().contains(&cid), "{b}");
    let (st, b) = w
        .oauth(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &early),
            ("subject_token_type", ACCESS),
            ("audience", "api://orders"),
            ("scope", "orders:read"),
        ])
        .await;
    assert_eq!((st, b["error"].as_str()), (400, Some("invalid_grant")), "exchange: {b}");
    let jti = Uuid::new_v4().to_string();
    let now = chrono::Utc::now();
    let rfc = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let external = json!({"expected_revision": "no_stream", "events": [{
        "event_id": Uuid::new_v4().to_string(), "event_type": "TokenIssued",
        "data": {"token_id": jti, "subject": SVC, "audience": "api://orders", "scope": "orders:read",
            "issued_at": rfc(now), "expires_at": rfc(now + chrono::Duration::seconds(300)),
            "not_before": rfc(now), "format": "external"},
        "metadata": {}}]});
    let a = w
        .api
        .call(
            Method::POST,
            &format!("/v1/streams/token-{jti}/events"),
            &w.svc,
            Some(&external),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 403, "external TokenIssued: {}", a.body);
    assert!(problem_type(&a.body).ends_with("/minting-cutoff"), "{}", a.body);
    // Someone else is not concerned.
    assert_eq!(w.mint("alice").await.0, 201);

    // Release: minting works again, and the rule does not engage again on
    // the same evidence.
    w.api
        .expect(
            Method::POST,
            &format!("/v1/cutoffs/{cid}/release"),
            &w.soc,
            Some(&json!({"reason": "investigated"})),
            &[200],
        )
        .await;
    assert_eq!(w.mint(SVC).await.0, 201);
    assert_eq!(w.client_credentials().await.0, 200);

    // What the server answers live…
    let anomalies_live = w.get("/v1/anomalies").await;
    let cutoffs_live = w.get("/v1/cutoffs").await;
    assert_eq!(
        cutoffs_live["cutoffs"].as_array().unwrap().len(),
        1,
        "engaged once: {cutoffs_live}"
    );
    // …and after a rebuild from position 0 with the server stopped.
    server.sigterm();
    assert!(server.wait_exit(PATIENCE).await.is_some_and(|s| s.success()));
    let out = std::process::Command::new(server.bin())
        .arg("rebuild")
        .arg("--data-dir")
        .arg(server.data_dir())
        .arg("--verify")
        .output()
        .expect("running tokenledger rebuild");
    assert!(
        out.status.success(),
        "rebuild --verify: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.restart_on_same_port().await;
    let mut anomalies_rebuilt = w.get("/v1/anomalies").await;
    let cutoffs_rebuilt = w.get("/v1/cutoffs").await;
    // `position` is the head, which the restart does not move; compare all.
    anomalies_rebuilt["position"] = anomalies_live["position"].clone();
    assert_eq!(anomalies_rebuilt, anomalies_live);
    // `active` is computed at the time of the question: the same here.
    assert_eq!(cutoffs_rebuilt, cutoffs_live);
    server.kill();
}
