//! Cutoff rules in SQL, the risk feed and the detector configuration
//! (DESIGN.md "What it is": SQL rules over the anomaly view drive automatic
//! minting cutoffs; `cutoff_mode`; "Roles": soc posts risk signals, admin
//! changes the detector configuration).
//!
//! The rules are driven with `rules::evaluate_tenant`, one deterministic
//! round at a time; one test starts the evaluator task the server spawns.

use super::support::*;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::path::PathBuf;
use tokenledger_server::config::{CutoffMode, ServeArgs};
use tokenledger_server::rules::{Engaged, evaluate_tenant};

const T: &str = "acme";

/// The shipped example rules.
fn default_rules() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../rules/default.toml"))
}

struct World {
    app: TestApp,
    iss: String,
    gw: String,
    soc: String,
    admin: String,
    analyst: String,
    _dir: Option<tempfile::TempDir>,
}

/// An app with `rules` (a rules file's text; `None`: the shipped
/// `rules/default.toml`) under `mode`, a minting issuer `iss`, a validator
/// `gw`, a soc, an analyst.
async fn world_with(rules: Option<&str>, mode: CutoffMode) -> World {
    let (path, dir) = match rules {
        None => (default_rules(), None),
        Some(text) => {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("rules.toml");
            std::fs::write(&p, text).unwrap();
            (p, Some(dir))
        }
    };
    let app = TestApp::with_args(ServeArgs {
        rules_file: Some(path),
        cutoff_mode: Some(mode),
        ..Default::default()
    })
    .await;
    let iss = app.minter("iss", T).await;
    let gw = app.principal("gw", "validator", T).await;
    let soc = app.principal("soc-1", "soc", T).await;
    let analyst = app.principal("ana", "analyst", T).await;
    let admin = app.admin(T).await;
    World {
        app,
        iss,
        gw,
        soc,
        admin,
        analyst,
        _dir: dir,
    }
}

async fn world() -> World {
    world_with(None, CutoffMode::Enforce).await
}

impl World {
    async fn eval(&self) -> Vec<Engaged> {
        evaluate_tenant(&self.app.state, T).await.expect("evaluation")
    }

    /// Verifies `token` from `ip`; expects it active.
    async fn use_from(&self, token: &str, ip: &str) {
        let (st, _, b) = self
            .app
            .call(
                "POST",
                "/v1/tokens/verify",
                Some(&self.gw),
                Some(json!({"token": token, "audience": "api://orders", "context": {"ip": ip}})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "verify: {b}");
        assert_eq!(b["active"], true, "verify: {b}");
    }

    /// Mints a token for `subject` and uses it from two networks.
    async fn concurrent_use(&self, subject: &str) {
        let t = self.app.mint_ok(&self.iss, subject).await;
        let token = t["token"].as_str().unwrap();
        self.use_from(token, "203.0.113.9").await;
        self.use_from(token, "198.51.100.7").await;
    }

    async fn mint(&self, subject: &str) -> Answer {
        self.app
            .mint(&self.iss, mint_request(subject, "orders:read", 300, "v4.public"))
            .await
    }

    async fn risk(&self, who: &str, body: Value) -> Answer {
        self.app.call("POST", "/v1/risk-signals", Some(who), Some(body)).await
    }

    async fn cutoffs(&self) -> Vec<Value> {
        let (st, _, b) = self.app.call("GET", "/v1/cutoffs", Some(&self.soc), None).await;
        assert_eq!(st, StatusCode::OK, "{b}");
        b["cutoffs"].as_array().unwrap().clone()
    }

    async fn engaged_events(&self) -> Vec<Value> {
        self.app.data_of(T, "MintingCutoffEngaged").await
    }
}

#[tokio::test]
async fn shipped_rules_all_load() {
    let w = world().await;
    let (st, _, b) = w.app.call("GET", "/v1/rules", Some(&w.soc), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let rules = b["rules"].as_array().unwrap();
    assert!(rules.len() >= 4, "{b}");
    for r in rules {
        assert_eq!(r["loaded"], true, "rule {r}");
        assert_eq!(r["error"], Value::Null, "rule {r}");
        assert_eq!(r["in_force"], true, "rule {r}");
    }
    assert_eq!(b["cutoff_mode"], "enforce");
    // No shipped rule keys on verification failures (forgers could name victims).
    for r in rules {
        assert!(!r["sql"].as_str().unwrap().contains("verify_failure_spike"), "{r}");
    }
}

#[tokio::test]
async fn concurrent_use_cuts_off_the_subject_once() {
    let w = world().await;
    w.concurrent_use("alice").await;
    let engaged = w.eval().await;
    assert_eq!(engaged.len(), 1, "{engaged:?}");
    let e = &engaged[0];
    assert_eq!(e.rule_id, "subject-token-misuse");
    assert_eq!(e.key, "alice");
    assert_eq!(serde_json::to_value(e.scope).unwrap(), "subject", "{e:?}");
    assert_eq!(serde_json::to_value(e.mode).unwrap(), "enforce");

    // The cutoff stops the next mint for alice, naming it; bob still mints.
    let refused = w.mint("alice").await;
    assert_problem(&refused, StatusCode::FORBIDDEN, "minting-cutoff");
    assert_eq!(refused.2["cutoff_id"], e.cutoff_id.as_str(), "{}", refused.2);
    w.app.mint_ok(&w.iss, "bob").await;

    // Evidence in the event: the anomaly and its position.
    let events = w.engaged_events().await;
    assert_eq!(events.len(), 1);
    let ev = &events[0];
    assert_eq!(ev["rule_id"], "subject-token-misuse");
    assert_eq!(ev["evidence"]["positions"], json!([e.evidence_position]));
    let ids = ev["evidence"]["anomaly_ids"].as_array().unwrap();
    assert!(
        ids.iter().any(|i| i.as_str().unwrap().contains("concurrent_use")),
        "{ev}"
    );
    assert!(ev["reason"].as_str().unwrap().starts_with("concurrent_use"), "{ev}");

    // Re-evaluating engages nothing more.
    assert!(w.eval().await.is_empty());
    assert!(w.eval().await.is_empty());
    assert_eq!(w.engaged_events().await.len(), 1);
}

#[tokio::test]
async fn after_release_only_newer_evidence_engages_again() {
    let w = world().await;
    w.concurrent_use("alice").await;
    let first = w.eval().await;
    assert_eq!(first.len(), 1);
    let (st, _, b) = w
        .app
        .call(
            "POST",
            &format!("/v1/cutoffs/{}/release", first[0].cutoff_id),
            Some(&w.soc),
            Some(json!({"reason": "false positive: VPN"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let released_at = b["position"].as_u64().unwrap();

    // The same evidence does not engage again.
    assert!(w.eval().await.is_empty());
    w.app.mint_ok(&w.iss, "alice").await;

    // New evidence after the release does.
    w.concurrent_use("alice").await;
    let second = w.eval().await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(second[0].evidence_position > released_at);
    assert_ne!(second[0].cutoff_id, first[0].cutoff_id);
    assert_problem(&w.mint("alice").await, StatusCode::FORBIDDEN, "minting-cutoff");
    assert!(w.eval().await.is_empty());
}

#[tokio::test]
async fn expiry_then_newer_evidence_engages_again() {
    let w = world().await;
    w.concurrent_use("carol").await;
    assert_eq!(w.eval().await.len(), 1);
    // The rule's duration passes: the server releases it.
    w.app.clock.set(w.app.now() + chrono::Duration::seconds(901));
    assert_eq!(tokenledger_server::api::cutoffs::expire_due(&w.app.state).await, 1);
    w.app.mint_ok(&w.iss, "carol").await;
    assert!(w.eval().await.is_empty(), "old evidence engaged again");
    w.concurrent_use("carol").await;
    assert_eq!(w.eval().await.len(), 1);
}

#[tokio::test]
async fn dry_run_mode_records_without_refusing() {
    let w = world_with(None, CutoffMode::DryRun).await;
    w.concurrent_use("alice").await;
    let engaged = w.eval().await;
    assert_eq!(engaged.len(), 1);
    assert_eq!(serde_json::to_value(engaged[0].mode).unwrap(), "dry_run");
    let cutoffs = w.cutoffs().await;
    assert_eq!(cutoffs.len(), 1);
    assert_eq!(cutoffs[0]["mode"], "dry_run");
    assert_eq!(cutoffs[0]["rule_id"], "subject-token-misuse");
    // Recorded, not enforced.
    w.app.mint_ok(&w.iss, "alice").await;
    assert!(w.eval().await.is_empty());
}

#[tokio::test]
async fn a_rule_in_dry_run_mode_does_not_refuse_under_enforce() {
    let rules = r#"
[[rule]]
id = "watch-alice"
mode = "dry_run"
duration_seconds = 60
sql = """
SELECT 'subject' AS scope, subject AS key, 'watch' AS reason,
       CAST(max(position) AS BIGINT) AS position, array_agg(anomaly_id) AS anomaly_ids
FROM anomalies WHERE kind = 'concurrent_use' GROUP BY subject
"""
"#;
    let w = world_with(Some(rules), CutoffMode::Enforce).await;
    w.concurrent_use("alice").await;
    let engaged = w.eval().await;
    assert_eq!(engaged.len(), 1);
    assert_eq!(serde_json::to_value(engaged[0].mode).unwrap(), "dry_run");
    // A list of anomaly ids (array_agg) and a BIGINT position are taken too.
    let events = w.engaged_events().await;
    let ids = events[0]["evidence"]["anomaly_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 1, "{}", events[0]);
    assert!(ids[0].as_str().unwrap().contains("concurrent_use"));
    w.app.mint_ok(&w.iss, "alice").await;
}

#[tokio::test]
async fn cutoff_mode_off_engages_nothing() {
    let w = world_with(None, CutoffMode::Off).await;
    w.concurrent_use("alice").await;
    let (st, _, b) = w
        .risk(
            &w.soc,
            json!({"source": "idp", "subject": "bob", "level": "critical", "kind": "leaked", "ttl_seconds": 600}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert!(w.eval().await.is_empty());
    assert!(w.engaged_events().await.is_empty());
    w.app.mint_ok(&w.iss, "alice").await;
    w.app.mint_ok(&w.iss, "bob").await;
}

#[tokio::test]
async fn a_broken_rule_is_reported_and_the_others_run() {
    let rules = r#"
[[rule]]
id = "no-such-table"
mode = "enforce"
duration_seconds = 60
sql = "SELECT 'subject' AS scope, subject AS key, 'x' AS reason, position FROM nowhere"

[[rule]]
id = "missing-columns"
mode = "enforce"
duration_seconds = 60
sql = "SELECT subject FROM anomalies"

[[rule]]
id = "bad-duration"
mode = "enforce"
duration_seconds = 0
sql = "SELECT 'subject' AS scope, subject AS key, 'x' AS reason, position FROM anomalies"

[[rule]]
id = "not-a-query"
mode = "enforce"
duration_seconds = 60
sql = "DROP TABLE anomalies"

[[rule]]
id = "no-mode"
duration_seconds = 60
sql = "SELECT 'subject' AS scope, subject AS key, 'x' AS reason, position FROM anomalies"

[[rule]]
id = "risky-subjects"
mode = "enforce"
duration_seconds = 600
description = "high risk"
sql = """
SELECT 'subject' AS scope, subject AS key, concat('signal ', kind) AS reason, position
FROM risk_signals WHERE level IN ('high', 'critical') AND subject IS NOT NULL
"""
"#;
    let w = world_with(Some(rules), CutoffMode::Enforce).await;
    let (st, _, b) = w.app.call("GET", "/v1/rules", Some(&w.admin), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let by_id = |id: &str| {
        b["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no rule {id} in {b}"))
            .clone()
    };
    let table = by_id("no-such-table");
    assert_eq!(table["loaded"], false);
    assert!(table["error"].as_str().unwrap().contains("nowhere"), "{table}");
    let cols = by_id("missing-columns");
    assert!(cols["error"].as_str().unwrap().contains("scope"), "{cols}");
    assert!(
        by_id("bad-duration")["error"]
            .as_str()
            .unwrap()
            .contains("duration_seconds")
    );
    assert_eq!(by_id("not-a-query")["loaded"], false);
    assert!(by_id("no-mode")["error"].as_str().unwrap().contains("mode"), "{b}");
    let good = by_id("risky-subjects");
    assert_eq!(good["loaded"], true, "{good}");
    assert_eq!(good["mode"], "enforce");
    assert_eq!(good["tables"], json!(["risk_signals"]));

    let (st, _, b) = w
        .risk(
            &w.soc,
            json!({"source": "idp", "subject": "mallory", "level": "high", "kind": "leaked_credential", "ttl_seconds": 3600}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let engaged = w.eval().await;
    assert_eq!(engaged.len(), 1, "{engaged:?}");
    assert_eq!(engaged[0].rule_id, "risky-subjects");
    assert_eq!(engaged[0].key, "mallory");
    assert_eq!(engaged[0].evidence_position, b["position"].as_u64().unwrap());
    assert_problem(&w.mint("mallory").await, StatusCode::FORBIDDEN, "minting-cutoff");
}

#[tokio::test]
async fn a_rules_file_that_is_not_toml_leaves_no_rules() {
    let w = world_with(Some("[[rule]\nid = "), CutoffMode::Enforce).await;
    assert!(w.app.state.rules.file_error().is_some());
    assert!(w.eval().await.is_empty());
}

#[tokio::test]
async fn risk_signal_cuts_off_the_subject() {
    let w = world().await;
    let (st, _, b) = w
        .risk(
            &w.soc,
            json!({"source": "idp-feed", "subject": "alice", "level": "high", "kind": "leaked_credential", "ttl_seconds": 3600}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert_eq!(b["stream"], "risk-idp-feed");
    let position = b["position"].as_u64().unwrap();
    // A low signal about bob cuts nothing.
    let (st, _, b) = w
        .risk(
            &w.admin,
            json!({"source": "idp-feed", "subject": "bob", "level": "low", "kind": "odd_hours", "ttl_seconds": 3600}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert_eq!(w.app.stream_len(T, "risk-idp-feed").await, Some(2));

    let engaged = w.eval().await;
    assert_eq!(engaged.len(), 1, "{engaged:?}");
    assert_eq!(engaged[0].rule_id, "subject-high-risk-signal");
    assert_eq!(engaged[0].key, "alice");
    assert_eq!(engaged[0].evidence_position, position);
    assert_problem(&w.mint("alice").await, StatusCode::FORBIDDEN, "minting-cutoff");
    w.app.mint_ok(&w.iss, "bob").await;

    // The signals are in SQL too.
    let (st, _, b) = w
        .app
        .call(
            "POST",
            "/v1/sql",
            Some(&w.analyst),
            Some(json!({"sql": "SELECT source, subject, level, kind, position FROM risk_signals ORDER BY position"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(
        b["rows"],
        json!([
            ["idp-feed", "alice", "high", "leaked_credential", position],
            ["idp-feed", "bob", "low", "odd_hours", position + 1]
        ])
    );
}

#[tokio::test]
async fn risk_signals_expire() {
    let w = world().await;
    let (st, _, b) = w
        .risk(
            &w.soc,
            json!({"source": "idp", "subject": "dave", "level": "critical", "kind": "leak", "ttl_seconds": 60}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    w.app.clock.set(w.app.now() + chrono::Duration::seconds(61));
    assert!(w.eval().await.is_empty(), "an expired signal engaged a cutoff");
}

#[tokio::test]
async fn anomalies_are_a_sql_table() {
    let w = world().await;
    w.concurrent_use("alice").await;
    let (st, _, b) = w
        .app
        .call(
            "POST",
            "/v1/sql",
            Some(&w.analyst),
            Some(json!({"sql": "SELECT kind, severity, subject, client_id, ip FROM anomalies WHERE kind = 'concurrent_use'"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(
        b["rows"],
        json!([["concurrent_use", "high", "alice", "iss", "198.51.100.7"]])
    );
    let (st, _, b) = w
        .app
        .call(
            "POST",
            "/v1/sql",
            Some(&w.analyst),
            Some(json!({"sql": "SELECT anomaly_id, position, detected_at, evidence, detail FROM anomalies WHERE kind = 'concurrent_use'"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let row = &b["rows"][0];
    assert!(row[0].as_str().unwrap().starts_with("a-"), "{row}");
    assert!(row[3].as_str().unwrap().ends_with(&row[1].to_string()), "{row}");
}

#[tokio::test]
async fn risk_signal_validation() {
    let w = world().await;
    let ok = json!({"source": "idp", "subject": "alice", "level": "high", "kind": "leak", "ttl_seconds": 60});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = ok.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let cases = [
        (
            without("subject"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-risk-signal",
        ),
        (
            with("ttl_seconds", json!(0)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-ttl",
        ),
        (
            with("ttl_seconds", json!(30 * 86400 + 1)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-ttl",
        ),
        (
            with("ip", json!("not-an-ip")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-identifier",
        ),
        (
            with("subject", json!("a\u{0301}lice")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-identifier",
        ),
        (
            with("source", json!("feed/1")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-identifier",
        ),
        (
            with("kind", json!("")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-identifier",
        ),
        (with("level", json!("severe")), StatusCode::BAD_REQUEST, "invalid-body"),
        (with("tenant", json!("globex")), StatusCode::BAD_REQUEST, "invalid-body"),
        (with("extra", json!(1)), StatusCode::BAD_REQUEST, "invalid-body"),
        (without("ttl_seconds"), StatusCode::BAD_REQUEST, "invalid-body"),
        (without("source"), StatusCode::BAD_REQUEST, "invalid-body"),
    ];
    let before = w.app.log_len().await;
    for (body, status, kind) in cases {
        let a = w.risk(&w.soc, body).await;
        assert_problem(&a, status, kind);
    }
    assert_eq!(w.app.log_len().await, before, "a refused signal changed the log");
    // Only an ip, or only a client, is enough.
    let only_ip =
        json!({"source": "idp", "ip": "2001:db8::1", "level": "medium", "kind": "scanner", "ttl_seconds": 60});
    assert_eq!(w.risk(&w.soc, only_ip).await.0, StatusCode::CREATED);
    let only_client =
        json!({"source": "idp", "client_id": "svc", "level": "medium", "kind": "scanner", "ttl_seconds": 60});
    assert_eq!(w.risk(&w.soc, only_client).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn detector_config_validation_and_read_back() {
    let w = world().await;
    let (st, _, b) = w.app.call("GET", "/v1/detector-config", Some(&w.analyst), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["thresholds"]["mint_burst_per_client"], 300);
    assert_eq!(b["thresholds"].as_object().unwrap().len(), 10, "{b}");
    assert_eq!(b["rules_default"], true);
    assert_eq!(b["config_position"], Value::Null);
    assert!(b["rules"].as_array().unwrap().contains(&json!("client-mint-burst")));

    let wr = &w;
    let put = |body: Value| async move {
        wr.app
            .call("PUT", "/v1/detector-config", Some(&wr.admin), Some(body))
            .await
    };
    let before = w.app.log_len().await;
    let a = put(json!({"thresholds": {"mint_burst_per_clients": 3}})).await;
    assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid-threshold");
    assert_eq!(a.2["threshold"], "mint_burst_per_clients");
    let a = put(json!({"thresholds": {"mint_burst_per_client": 2.5}})).await;
    assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid-threshold");
    assert_eq!(a.2["threshold"], "mint_burst_per_client");
    let a = put(json!({"thresholds": {"exchange_max_depth": 0}})).await;
    assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid-threshold");
    let a = put(json!({"thresholds": {}, "rules": ["client-mint-burst", "no-such-rule"]})).await;
    assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "unknown-rule");
    assert_eq!(a.2["rules"], json!(["no-such-rule"]));
    assert_problem(
        &put(json!({"thresholds": {}, "extra": true})).await,
        StatusCode::BAD_REQUEST,
        "invalid-body",
    );
    assert_problem(
        &put(json!({"rules": []})).await,
        StatusCode::BAD_REQUEST,
        "invalid-body",
    );
    assert_problem(
        &put(json!({"thresholds": {"realert_seconds": "10"}})).await,
        StatusCode::BAD_REQUEST,
        "invalid-body",
    );
    assert_eq!(w.app.log_len().await, before, "a refused config changed the log");

    let (st, _, b) = put(json!({"thresholds": {"mint_burst_per_client": 3}, "rules": ["client-mint-burst"]})).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let position = b["position"].as_u64().unwrap();
    let (st, _, b) = w.app.call("GET", "/v1/detector-config", Some(&w.soc), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["thresholds"]["mint_burst_per_client"], 3);
    assert_eq!(b["thresholds"]["mint_burst_per_subject"], 30);
    assert_eq!(b["rules"], json!(["client-mint-burst"]));
    assert_eq!(b["rules_default"], false);
    assert_eq!(b["config_position"], position);
    assert_eq!(w.app.stream_len(T, "detector-config").await, Some(1));

    // Only the listed rules run: a concurrent use engages nothing now.
    w.concurrent_use("alice").await;
    assert!(w.eval().await.is_empty());
    let (_, _, b) = w.app.call("GET", "/v1/rules", Some(&w.soc), None).await;
    let misuse = b["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "subject-token-misuse")
        .unwrap()
        .clone();
    assert_eq!(misuse["in_force"], false, "{misuse}");
}

#[tokio::test]
async fn a_mint_burst_cuts_off_the_client() {
    let w = world().await;
    let (st, _, b) = w
        .app
        .call(
            "PUT",
            "/v1/detector-config",
            Some(&w.admin),
            Some(json!({"thresholds": {"mint_burst_per_client": 3}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    // Every rule of the file stays in force when `rules` is absent, also
    // rules added to the file later: the event records no list.
    assert!(b["rules"].as_array().unwrap().len() >= 4, "{b}");
    assert_eq!(b["rules_default"], true, "{b}");
    let recorded = w.app.data_of(T, "DetectorConfigChanged").await;
    assert!(recorded[0].get("rules").is_none(), "{recorded:?}");
    let other = w.app.minter("iss-2", T).await;
    for i in 0..4 {
        w.app.mint_ok(&w.iss, &format!("user-{i}")).await;
    }
    w.app.mint_ok(&other, "user-0").await;
    let engaged = w.eval().await;
    assert_eq!(engaged.len(), 1, "{engaged:?}");
    assert_eq!(engaged[0].rule_id, "client-mint-burst");
    assert_eq!(serde_json::to_value(engaged[0].scope).unwrap(), "client");
    assert_eq!(engaged[0].key, "iss");
    let refused = w.mint("someone-new").await;
    assert_problem(&refused, StatusCode::FORBIDDEN, "minting-cutoff");
    // Another client is not concerned.
    w.app.mint_ok(&other, "someone-new").await;
}

#[tokio::test]
async fn roles() {
    let w = world().await;
    let issuer = w.iss.clone();
    let validator = w.gw.clone();
    let signal = json!({"source": "idp", "subject": "alice", "level": "high", "kind": "leak", "ttl_seconds": 60});
    let config = json!({"thresholds": {}});
    for who in [&issuer, &validator, &w.analyst] {
        let a = w.risk(who, signal.clone()).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
        let a = w.app.call("GET", "/v1/rules", Some(who), None).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    for who in [&issuer, &validator, &w.analyst, &w.soc] {
        let a = w
            .app
            .call("PUT", "/v1/detector-config", Some(who), Some(config.clone()))
            .await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    for who in [&issuer, &validator] {
        let a = w.app.call("GET", "/v1/detector-config", Some(who), None).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    }
    // Role before body: a malformed body from a validator is still 403.
    let a = w.risk(&validator, json!({"nonsense": true})).await;
    assert_problem(&a, StatusCode::FORBIDDEN, "role-not-allowed");
    assert_unauthenticated(&w.app.call("POST", "/v1/risk-signals", None, Some(signal)).await);
    assert_eq!(
        w.app.call("GET", "/v1/rules", Some(&w.soc), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        w.app.call("GET", "/v1/detector-config", Some(&w.analyst), None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_tenant_sees_and_cuts_only_its_own() {
    let w = world().await;
    let other_soc = w.app.principal("soc-g", "soc", "globex").await;
    let (st, _, b) = w
        .risk(
            &other_soc,
            json!({"source": "idp", "subject": "alice", "level": "critical", "kind": "leak", "ttl_seconds": 600}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    // globex's signal about "alice" cuts off globex's alice, not acme's.
    assert!(w.eval().await.is_empty());
    let g = evaluate_tenant(&w.app.state, "globex").await.unwrap();
    assert_eq!(g.len(), 1);
    w.app.mint_ok(&w.iss, "alice").await;
}

#[tokio::test]
async fn the_evaluator_task_engages_on_a_new_anomaly() {
    let w = world().await;
    let task = tokenledger_server::rules::spawn(w.app.state.clone());
    w.concurrent_use("erin").await;
    // Wait (bounded) for the task to engage; nothing is timed.
    let mut found = false;
    for _ in 0..200 {
        if !w.engaged_events().await.is_empty() {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    task.abort();
    assert!(found, "the evaluator did not engage a cutoff");
    assert_problem(&w.mint("erin").await, StatusCode::FORBIDDEN, "minting-cutoff");
    let events = w.engaged_events().await;
    assert_eq!(events.len(), 1, "{events:?}");
}
