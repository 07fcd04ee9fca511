//! The validator against the real `tokenledger` binary: a token minted by
//! the ledger verifies locally, a revocation reaches the local block list
//! through the feed, uses arrive in the ledger as `TokenUsed`, a new key is
//! fetched on its first unknown kid, and a revoked key refuses its tokens.
//!
//! The binary is `TOKENLEDGER_BIN`, or built with `cargo build` in this
//! test's profile and found through `cargo metadata` (as tests/blackbox
//! does). It listens on a free loopback port with a temp data dir.

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokenledger_testkit::{
    Options, Profile, Secrets as Creds, Server, Statuses, TenantSpec, issuer_and_validator, request,
};
use tokenledger_validator::{LocalVerdict, Reason, RequestContext, Validator, ValidatorOptions};

const BOOTSTRAP: &str = "validator-test-bootstrap-secret-0123456789";
const TENANT: &str = "acme";
const ISSUER: &str = "orders-issuer";
const VALIDATOR: &str = "gw-1";
const AUDIENCE: &str = "api://orders";
/// How long a change may take to show (generous: shared machine, debug build).
const PATIENCE: Duration = Duration::from_secs(10);

/// Starts the binary (built in this test's profile) on a free loopback port
/// with a temp data dir.
async fn start_server() -> Server {
    let profile = Profile::matching(cfg!(debug_assertions));
    Server::start(Options::new(profile, BOOTSTRAP, "tl-validator-")).await
}

/// One request that must answer 2xx; the JSON body.
async fn call(http: &reqwest::Client, method: reqwest::Method, url: String, token: &str, body: Option<Value>) -> Value {
    request(http, method, &url, token, body.as_ref(), Statuses::Success).await
}

async fn setup(base: &str) -> Creds {
    let spec = TenantSpec {
        bootstrap: BOOTSTRAP,
        tenant: TENANT,
        admin: "admin",
        issuer: ISSUER,
        validator: VALIDATOR,
        policy: json!({
            "audiences": {AUDIENCE: {"scopes": ["orders:read"], "max_ttl_seconds": 3600}},
            "formats": ["v4.public", "v4.local"],
        }),
    };
    issuer_and_validator(&reqwest::Client::new(), base, &spec).await
}

/// Mints a token; answers `{"token", "token_id", "kid", …}`.
async fn mint(base: &str, issuer: &str, subject: &str, format: &str) -> Value {
    call(
        &reqwest::Client::new(),
        reqwest::Method::POST,
        format!("{base}/v1/tokens"),
        issuer,
        Some(json!({"subject": subject, "audience": AUDIENCE, "scope": "orders:read",
                    "ttl_seconds": 600, "format": format})),
    )
    .await
}

/// Verifies `token` every 20 ms until `want` holds (at most [`PATIENCE`]).
async fn until(v: &Validator, token: &str, what: &str, want: impl Fn(&LocalVerdict) -> bool) -> LocalVerdict {
    let t0 = Instant::now();
    loop {
        let got = v.verify(token, None);
        if want(&got) {
            return got;
        }
        assert!(
            t0.elapsed() < PATIENCE,
            "no {what} within {PATIENCE:?}: last verdict {got:?}, {:?}",
            v.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `data` of every `TokenUsed` in the tenant's `$all`.
async fn uses(base: &str, admin: &str) -> Vec<Value> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let page = call(
            &http,
            reqwest::Method::GET,
            format!("{base}/v1/events?from={from}&limit=1000"),
            admin,
            None,
        )
        .await;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            return out;
        }
        from = page["next"].as_u64().expect("next");
        out.extend(
            events
                .into_iter()
                .filter(|e| e["event_type"] == "TokenUsed")
                .map(|e| e["data"].clone()),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_the_local_block_list_and_uses_reach_the_ledger() {
    let server = start_server().await;
    let base = server.base();
    let creds = setup(&base).await;
    let a = mint(&base, &creds.issuer, "alice", "v4.public").await;
    let b = mint(&base, &creds.issuer, "bob", "v4.public").await;
    let carol = mint(&base, &creds.issuer, "carol", "v4.public").await;
    let local = mint(&base, &creds.issuer, "dave", "v4.local").await;
    let (token_a, id_a) = (a["token"].as_str().unwrap(), a["token_id"].as_str().unwrap());
    let token_b = b["token"].as_str().unwrap();
    let kid = a["kid"].as_str().unwrap().to_owned();

    // A wrong role is refused at connect: an issuer may read keys but not the block list.
    let wrong = Validator::connect(&base, &creds.issuer, AUDIENCE, ValidatorOptions::default()).await;
    assert!(
        matches!(
            wrong,
            Err(tokenledger_validator::ConnectError::Refused { status: 403, .. })
        ),
        "{wrong:?}"
    );

    let opts = ValidatorOptions {
        report_interval: Duration::from_millis(100),
        unknown_kid_refresh_interval: Duration::from_millis(100),
        ..ValidatorOptions::default()
    };
    let v = Validator::connect(&format!("{base}/"), &creds.validator, AUDIENCE, opts)
        .await
        .expect("connect");
    assert!(v.feed_position().is_some());

    // Active locally, with the verified claims.
    let ctx = RequestContext {
        ip: Some("203.0.113.9".into()),
        user_agent: Some("orders-cli/1.0".into()),
        device_id: Some("device-1".into()),
    };
    let got = v.verify(token_a, Some(&ctx));
    let claims = got.claims().unwrap_or_else(|| panic!("active: {got:?}"));
    assert_eq!(claims.jti, id_a);
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.client_id, ISSUER);
    assert!(v.verify(token_b, None).is_active());
    assert_eq!(
        v.verify_for(token_a, "api://billing", None),
        LocalVerdict::Rejected(Reason::AudienceMismatch)
    );
    assert_eq!(v.verify("not a token", None), LocalVerdict::Rejected(Reason::Malformed));
    assert_eq!(
        v.verify(local["token"].as_str().unwrap(), None),
        LocalVerdict::Unverifiable
    );

    // Revoke A as admin; the feed brings it here.
    let http = reqwest::Client::new();
    let revoked = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/revocations"),
        &creds.admin,
        Some(json!({"token_id": id_a, "reason": "validator test"})),
    )
    .await;
    let position = revoked["position"].as_u64().expect("position of the revocation");
    until(&v, token_a, "revoked", |g| g.reason() == Some(Reason::Revoked)).await;
    assert!(v.feed_position().unwrap() >= position);
    tokio::time::timeout(PATIENCE, v.wait_for_position(position))
        .await
        .expect("the feed reached the revocation");
    assert!(v.verify(token_b, None).is_active(), "only A is revoked");

    // A selector revocation covers tokens issued before it.
    call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/revocations"),
        &creds.admin,
        Some(json!({"selector": {"scope": "subject", "key": "carol"}, "reason": "validator test"})),
    )
    .await;
    until(&v, carol["token"].as_str().unwrap(), "revoked by selector", |g| {
        g.reason() == Some(Reason::Revoked)
    })
    .await;

    // Accepted uses arrive in the ledger as TokenUsed, attributed to A.
    let t0 = Instant::now();
    loop {
        let used = uses(&base, &creds.admin).await;
        let accepted = used
            .iter()
            .any(|u| u["token_id"] == id_a && u["outcome"] == "accepted" && u["validator"] == VALIDATOR);
        let refused = used
            .iter()
            .any(|u| u["claimed_token_id"] == id_a && u["outcome"] == "rejected" && u["reason"] == "revoked");
        if accepted && refused {
            let with_ctx = used
                .iter()
                .find(|u| u["token_id"] == id_a && u["context"]["ip"] == "203.0.113.9")
                .expect("the accepted use with its context");
            assert_eq!(with_ctx["context"]["device_id"], "device-1");
            assert_eq!(with_ctx["subject"], "alice");
            break;
        }
        assert!(
            t0.elapsed() < PATIENCE,
            "uses not in the ledger within {PATIENCE:?}: accepted {accepted}, refused {refused}; {:?}",
            v.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A new key: its first token is unknown here until the refresh it asks for.
    call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/keys/rotate"),
        &creds.admin,
        Some(json!({})),
    )
    .await;
    let e = mint(&base, &creds.issuer, "erin", "v4.public").await;
    assert_ne!(e["kid"].as_str().unwrap(), kid, "signed by the new key");
    let token_e = e["token"].as_str().unwrap();
    until(&v, token_e, "active after the key refresh", LocalVerdict::is_active).await;

    // Revoking the old key refuses B (and A, key before block list) as key_revoked.
    call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/keys/{kid}/revoke"),
        &creds.admin,
        Some(json!({"reason": "validator test"})),
    )
    .await;
    until(&v, token_b, "key_revoked", |g| g.reason() == Some(Reason::KeyRevoked)).await;
    assert_eq!(v.verify(token_a, None), LocalVerdict::Rejected(Reason::KeyRevoked));
    assert!(v.verify(token_e, None).is_active(), "the new key still verifies");

    let stats = v.stats();
    assert!(stats.verified >= 4, "{stats:?}");
    assert!(stats.rejected[&Reason::Revoked] >= 1, "{stats:?}");
    assert!(stats.rejected[&Reason::KeyRevoked] >= 2, "{stats:?}");
    assert_eq!(stats.unverifiable, 1);
    assert!(stats.revoked_kids >= 1 && stats.blocked_tokens >= 1 && stats.blocked_selectors == 1);
    assert_eq!(stats.feed_lag, Duration::ZERO, "{stats:?}");
    v.shutdown().await;
    let after = v.stats();
    assert_eq!(after.queued, 0, "{after:?}");
    assert!(after.reported > 0, "{after:?}");
    assert_eq!(after.dropped, 0, "{after:?}");
    drop(server);
}

#[tokio::test]
async fn connect_refuses_bad_arguments_and_unreachable_ledgers() {
    use tokenledger_validator::ConnectError;
    let opts = ValidatorOptions::default;
    for (url, cred, aud) in [
        ("ftp://x", "tl_x", AUDIENCE),
        ("not a url", "tl_x", AUDIENCE),
        ("http://127.0.0.1:9/?q=1", "tl_x", AUDIENCE),
        ("http://127.0.0.1:9", "", AUDIENCE),
        ("http://127.0.0.1:9", "line\nbreak", AUDIENCE),
        ("http://127.0.0.1:9", "tl_x", "has space"),
    ] {
        let r = Validator::connect(url, cred, aud, opts()).await;
        assert!(matches!(r, Err(ConnectError::InvalidArgument(_))), "{url} {aud}: {r:?}");
    }
    let too_lax = ValidatorOptions {
        leeway_seconds: 301,
        ..opts()
    };
    assert!(matches!(
        Validator::connect("http://127.0.0.1:9", "tl_x", AUDIENCE, too_lax).await,
        Err(ConnectError::InvalidArgument(_))
    ));
    // Nothing listens on the discard port of loopback.
    let quick = ValidatorOptions {
        request_timeout: Duration::from_secs(2),
        ..opts()
    };
    let r = Validator::connect("http://127.0.0.1:9", "tl_x", AUDIENCE, quick).await;
    assert!(matches!(r, Err(ConnectError::Unreachable { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_reconnects_after_the_ledger_restarts() {
    let mut server = start_server().await;
    let base = server.base();
    let creds = setup(&base).await;
    let a = mint(&base, &creds.issuer, "alice", "v4.public").await;
    let (token_a, id_a) = (a["token"].as_str().unwrap(), a["token_id"].as_str().unwrap());
    let opts = ValidatorOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        ..ValidatorOptions::default()
    };
    let v = Validator::connect(&base, &creds.validator, AUDIENCE, opts)
        .await
        .expect("connect");
    assert!(v.verify(token_a, None).is_active());

    // The ledger goes away: local verification goes on, the feed reports its lag.
    server.kill();
    let t0 = Instant::now();
    while v.stats().feed_errors == 0 {
        assert!(t0.elapsed() < PATIENCE, "no feed error noticed: {:?}", v.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(v.verify(token_a, None).is_active(), "verification needs no ledger");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(v.stats().feed_lag > Duration::ZERO, "{:?}", v.stats());

    // Back on the same port and data dir: the feed resumes where it was.
    server.restart_on_same_port().await;
    call(
        &reqwest::Client::new(),
        reqwest::Method::POST,
        format!("{base}/v1/revocations"),
        &creds.admin,
        Some(json!({"token_id": id_a, "reason": "after the restart"})),
    )
    .await;
    until(&v, token_a, "revoked after the restart", |g| {
        g.reason() == Some(Reason::Revoked)
    })
    .await;
    assert_eq!(v.stats().feed_lag, Duration::ZERO, "{:?}", v.stats());
    v.shutdown().await;
}
