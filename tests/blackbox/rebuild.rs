//! Checkpoints and `tokenledger rebuild` from the outside: a history of
//! mints, exchanges through `/oauth2/token`, revocations by id and by
//! selector and a key rotation; SIGTERM (the server writes its views
//! snapshot); a restart resumes from the checkpoint instead of replaying
//! the log (the `projection_*` metrics say so) and answers as before; more
//! history; SIGTERM; then `tokenledger rebuild --verify --dump` with the
//! server stopped must find the live snapshot equal to a rebuild from
//! position 0 (exit 0), and its dump must hold the revoked and the active
//! tokens; a server started on the rebuilt snapshot answers the same.

use crate::harness::{Api, BOOTSTRAP, PATIENCE, heavy, start_server};
use reqwest::Method;
use serde_json::{Value, json};
use tokenledger_testkit::{Secrets, Server, Statuses, TenantSpec, create_principal, issuer_and_validator, set_policy};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

struct World {
    api: Api,
    secrets: Secrets,
    gw: String,
}

async fn setup(server: &Server) -> World {
    let api = Api::new(server.base());
    let spec = TenantSpec {
        bootstrap: BOOTSTRAP,
        tenant: "default",
        admin: "admin-default",
        issuer: "iss",
        validator: "val",
        policy: json!({
            "audiences": {"api://gateway": {"scopes": ["orders:read", "orders:write"], "max_ttl_seconds": 3600}},
            "formats": ["v4.public", "v4.local"],
        }),
    };
    let secrets = issuer_and_validator(&api.http, &api.base, &spec).await;
    let gw = create_principal(
        &api.http,
        &api.base,
        &secrets.admin,
        &json!({"name": "gw", "role": "issuer"}),
        Statuses::Success,
    )
    .await;
    set_policy(
        &api.http,
        &api.base,
        &secrets.admin,
        "gw",
        &json!({
            "audiences": {"api://orders": {"scopes": ["orders:read", "orders:write"], "max_ttl_seconds": 3600}},
            "formats": ["v4.public", "v4.local"],
            "serves": ["api://gateway", "api://orders"],
        }),
        Statuses::Success,
    )
    .await;
    World { api, secrets, gw }
}

impl World {
    /// Mints for `subject` at `api://gateway`; (token, token_id).
    async fn mint(&self, subject: &str) -> (String, String) {
        let b = self
            .api
            .expect(
                Method::POST,
                "/v1/tokens",
                &self.secrets.issuer,
                Some(&json!({"subject": subject, "audience": "api://gateway",
                    "scope": "orders:read orders:write", "ttl_seconds": 1800, "format": "v4.public"})),
                &[201],
            )
            .await;
        (
            b["token"].as_str().unwrap().to_owned(),
            b["token_id"].as_str().unwrap().to_owned(),
        )
    }

    /// Exchanges `subject_token` as `gw` for `api://orders`; (token, token_id).
    async fn exchange(&self, subject_token: &str) -> (String, String) {
        let resp = self
            .api
            .http
            .post(format!("{}/oauth2/token", self.api.base))
            .bearer_auth(&self.gw)
            .form(&[
                ("grant_type", EXCHANGE),
                ("subject_token", subject_token),
                ("subject_token_type", ACCESS),
                ("audience", "api://orders"),
                ("scope", "orders:read"),
            ])
            .send()
            .await
            .expect("exchange answered");
        let status = resp.status().as_u16();
        let b: Value = resp.json().await.expect("exchange JSON");
        assert_eq!(status, 200, "exchange: {b}");
        let token = b["access_token"].as_str().unwrap().to_owned();
        let id = self.verify(&token, "api://orders").await["claims"]["jti"]
            .as_str()
            .expect("an active exchanged token")
            .to_owned();
        (token, id)
    }

    async fn verify(&self, token: &str, audience: &str) -> Value {
        self.api
            .expect(
                Method::POST,
                "/v1/tokens/verify",
                &self.secrets.validator,
                Some(&json!({"token": token, "audience": audience})),
                &[200],
            )
            .await
    }

    async fn revoke(&self, body: Value) {
        self.api
            .expect(
                Method::POST,
                "/v1/revocations",
                &self.secrets.admin,
                Some(&body),
                &[200, 201],
            )
            .await;
    }

    /// A gauge of `/metrics` (admin).
    /// The SQL tables as the admin sees them: the tenant's events, how many
    /// of them were folded twice, the active tokens and the block list (read-your-writes:
    /// the answer is at the head of the log).
    async fn sql_state(&self) -> Value {
        let q = "SELECT (SELECT count(*) FROM events) AS events, \
                 (SELECT count(*) - count(DISTINCT position) FROM events) AS duplicates, \
                 (SELECT string_agg(token_id, ',' ORDER BY token_id) FROM active_tokens) AS active, \
                 (SELECT count(*) FROM block_list) AS blocked";
        self.api
            .expect(
                Method::POST,
                "/v1/sql",
                &self.secrets.admin,
                Some(&json!({"sql": q})),
                &[200],
            )
            .await
    }

    async fn metric(&self, name: &str) -> i64 {
        let a = self
            .api
            .call(Method::GET, "/metrics", &self.secrets.admin, None)
            .await
            .expect("metrics answered");
        assert_eq!(a.status, 200, "{}", a.body);
        let text = a.body.as_str().expect("metrics text").to_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("tokenledger_{name} ")))
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }
}

async fn stop(server: &mut Server) {
    server.sigterm();
    let status = server.wait_exit(PATIENCE * 2).await.expect("exited after SIGTERM");
    assert!(status.success(), "exit {status}\n{}", server.log_tail(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_checkpoint_and_rebuild_verifies_the_live_views() {
    let _heavy = heavy().await;
    let mut server = start_server(&[]).await;
    let w = setup(&server).await;

    // Phase 1: mints, an exchange chain, revocations by id and selector, a rotation.
    let (t_alice, alice) = w.mint("alice").await;
    let (t_bob, bob) = w.mint("bob").await;
    let (_, carol1) = w.mint("carol").await;
    let (_, carol2) = w.mint("carol").await;
    let (t_dave, dave) = w.mint("dave").await;
    let (t_x1, x1) = w.exchange(&t_dave).await;
    let (t_x2, x2) = w.exchange(&t_x1).await;
    w.revoke(json!({"token_id": bob, "reason": "lost laptop"})).await;
    w.revoke(json!({"selector": {"scope": "subject", "key": "carol"}, "reason": "compromised"}))
        .await;
    w.api
        .expect(
            Method::POST,
            "/v1/keys/rotate",
            &w.secrets.admin,
            Some(&json!({})),
            &[201],
        )
        .await;
    let (t_erin, erin) = w.mint("erin").await;
    assert_eq!(w.verify(&t_x2, "api://orders").await["active"], true);
    let sql_before = w.sql_state().await;

    stop(&mut server).await;
    let snapshot = server.data_dir().join("projections").join("views.snapshot");
    assert!(snapshot.is_file(), "SIGTERM wrote the views snapshot");
    let analytics = server.data_dir().join("analytics").join("checkpoint");
    assert!(analytics.is_file(), "SIGTERM wrote the analytics checkpoint");

    // The restart resumes from the checkpoint: nothing to replay.
    server.restart().await;
    let w = World {
        api: Api::new(server.base()),
        ..w
    };
    let restored = w.metric("projection_restored_checkpoint").await;
    assert!(restored > 0, "restored from a checkpoint");
    assert_eq!(w.metric("projection_replayed_events").await, 0, "nothing replayed");
    assert_eq!(w.verify(&t_alice, "api://gateway").await["active"], true);
    assert_eq!(w.verify(&t_bob, "api://gateway").await["reason"], "revoked");
    assert_eq!(
        w.verify(&t_erin, "api://gateway").await["active"],
        true,
        "a token of the new key"
    );
    assert_eq!(w.verify(&t_x2, "api://orders").await["active"], true);
    // The SQL tables resumed from their checkpoint: the same answer (the
    // verifies above appended TokenUsed events, so the log grew by them).
    let sql_after = w.sql_state().await;
    assert_eq!(sql_after["rows"][0][2], sql_before["rows"][0][2], "active tokens");
    assert_eq!(sql_after["rows"][0][3], sql_before["rows"][0][3], "block list");
    assert_eq!(sql_after["rows"][0][1], 0, "no event folded twice: {sql_after}");
    assert!(sql_after["rows"][0][0].as_i64() >= sql_before["rows"][0][0].as_i64());

    // Phase 2: more history, then the chain is revoked at its middle.
    let (t_frank, frank) = w.mint("frank").await;
    let (_, frank_x) = w.exchange(&t_frank).await;
    w.revoke(json!({"token_id": x1, "reason": "stolen"})).await;
    w.revoke(json!({"selector": {"scope": "client", "key": "gw"}, "reason": "rotate gw"}))
        .await;
    assert_eq!(
        w.verify(&t_x2, "api://orders").await["reason"],
        "revoked",
        "down the chain"
    );
    assert_eq!(w.verify(&t_x1, "api://orders").await["reason"], "revoked");
    let sql_live = w.sql_state().await;
    stop(&mut server).await;

    // The operator's rebuild, server stopped.
    let dump = server.data_dir().join("views.json");
    let out = std::process::Command::new(server.bin())
        .arg("rebuild")
        .arg("--data-dir")
        .arg(server.data_dir())
        .arg("--verify")
        .arg("--dump")
        .arg(&dump)
        .output()
        .expect("running tokenledger rebuild");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "rebuild --verify failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("verified"), "{stdout}");
    assert!(stdout.contains("events/s"), "{stdout}");
    assert!(!analytics.exists(), "the rebuild discarded the analytics checkpoint");
    eprintln!("rebuild: {}", stdout.trim());

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    let t = &v["tenants"]["default"];
    let tokens = t["tokens"].as_object().expect("tokens in the dump");
    for id in [&alice, &bob, &carol1, &carol2, &dave, &x1, &x2, &erin, &frank, &frank_x] {
        assert!(tokens.contains_key(id.as_str()), "token {id} in the dump");
    }
    assert_eq!(t["tokens"][&x2]["parent"], json!(x1));
    assert_eq!(t["tokens"][&x1]["parent"], json!(dave));
    let revoked = t["revoked_tokens"].as_object().unwrap();
    assert!(revoked.contains_key(&bob) && revoked.contains_key(&x1));
    assert!(!revoked.contains_key(&alice) && !revoked.contains_key(&erin));
    assert!(t["revoked_selectors"]["subject:carol"].is_u64());
    assert!(t["revoked_selectors"]["client:gw"].is_u64());
    let listed: Vec<&str> = t["block_log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "token")
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [bob.as_str(), x1.as_str(), x2.as_str()],
        "x1 listed with its chain"
    );
    let states: Vec<&str> = t["keys"]
        .as_object()
        .unwrap()
        .values()
        .filter(|k| k["purpose"] == "public")
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"active") && states.contains(&"retired"), "{states:?}");
    assert!(v["registry"]["principals"]["default/gw"].is_object());
    assert!(!std::fs::read_to_string(&dump).unwrap().contains("secret_hash"));

    // The rebuilt snapshot serves the same data.
    server.restart().await;
    let w = World {
        api: Api::new(server.base()),
        ..w
    };
    assert_eq!(w.metric("projection_replayed_events").await, 0);
    assert_eq!(w.verify(&t_alice, "api://gateway").await["active"], true);
    assert_eq!(w.verify(&t_bob, "api://gateway").await["reason"], "revoked");
    assert_eq!(w.verify(&t_x2, "api://orders").await["reason"], "revoked");
    assert_eq!(w.verify(&t_erin, "api://gateway").await["active"], true);
    // The SQL tables, refolded from position 0, answer as they did live.
    let sql_rebuilt = w.sql_state().await;
    assert_eq!(sql_rebuilt["rows"][0][2], sql_live["rows"][0][2], "active tokens");
    assert_eq!(sql_rebuilt["rows"][0][3], sql_live["rows"][0][3], "block list");
    assert_eq!(sql_rebuilt["rows"][0][1], 0, "no event folded twice");
    stop(&mut server).await;
}

/// The rebuild refuses to run while the server holds the ledger, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_refuses_a_ledger_in_use() {
    let _heavy = heavy().await;
    let mut server = start_server(&[]).await;
    let out = std::process::Command::new(server.bin())
        .arg("rebuild")
        .arg("--data-dir")
        .arg(server.data_dir())
        .output()
        .expect("running tokenledger rebuild");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rebuild ran beside the server");
    assert!(stderr.contains("stop it"), "{stderr}");
    stop(&mut server).await;
}
