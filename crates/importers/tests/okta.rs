//! The Okta System Log importer on the hand-written excerpt
//! `tests/data/okta_system_log_sample.json` (see `tests/data/README.md`).

mod support;

use chrono::{DateTime, Utc};
use support::*;
use tokenledger_domain::events::UseOutcome;
use tokenledger_importers::{Format, import};

const SESSION: &str = "102AbCdEfGhIjKlMnOpQrStUv";
const ACCESS: &str = "AT.q1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6";
const CLIENT: &str = "0oa9z8y7x6w5v4u3t2s1";

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[test]
fn counts_and_events_of_the_excerpt() {
    let r = import_checked(Format::Okta, &excerpt("okta_system_log_sample.json"));
    assert_eq!(r.records_read, 10);
    assert_eq!(r.records_mapped, 8);
    assert_eq!(
        skipped(&r),
        [("no_session_id", 1), ("unmapped_event_type", 1)].into_iter().collect()
    );
    assert_eq!(r.count_of("TokenIssued"), 3);
    assert_eq!(r.count_of("TokenUsed"), 3);
    assert_eq!(r.count_of("TokenRevoked"), 2);

    let issued = issued(&r);
    let (e, s) = issued[0];
    assert_eq!(s.token_id, SESSION);
    assert_eq!(e.stream, format!("token-{SESSION}"));
    assert_eq!(
        (s.issuer.as_str(), s.audience.as_str(), s.client_id.as_str()),
        ("okta", "okta", "okta")
    );
    assert_eq!(s.subject, "alice@example.com");
    assert_eq!(s.scope, "session");
    assert_eq!(s.issued_at, utc("2024-03-01T09:00:00Z"));
    assert_eq!(s.expires_at, utc("2024-03-01T11:00:00Z"));
    let ctx = s.context.as_ref().unwrap();
    assert_eq!(ctx.ip.as_deref(), Some("203.0.113.10"));
    assert!(
        ctx.user_agent
            .as_deref()
            .unwrap()
            .starts_with("Mozilla/5.0 (Macintosh;")
    );
    assert_eq!(ctx.device_id, None, "client.device is a device type, not an id");

    let (_, at) = issued[1];
    assert_eq!(at.token_id, ACCESS);
    assert_eq!(at.issuer, "https://example.okta.com/oauth2/default");
    assert_eq!(at.audience, "api://expenses");
    assert_eq!(at.client_id, CLIENT);
    assert_eq!(at.subject, "alice@example.com");
    assert_eq!(at.scope, "openid profile expenses:read");
    assert_eq!(at.expires_at, utc("2024-03-01T10:01:00Z"));
    let (_, id) = issued[2];
    assert_eq!(id.token_id, "ID.z9x8c7v6b5n4m3l2k1j0h9g8f7d6s5a4");
    assert_eq!(id.audience, CLIENT, "an ID token's audience is the client");

    let uses = used(&r);
    let (e, sso) = uses[0];
    assert_eq!(sso.outcome, UseOutcome::Accepted);
    assert_eq!(sso.token_id.as_deref(), Some(SESSION));
    assert_eq!(sso.subject.as_deref(), Some("alice@example.com"));
    assert_eq!(
        sso.audience, s.audience,
        "the session's audience, so the use is attributed"
    );
    assert_eq!(e.stream, format!("token-{SESSION}"));
    let (e, fail) = uses[1];
    assert_eq!(fail.outcome, UseOutcome::Rejected);
    assert_eq!(fail.reason.as_deref(), Some("invalid_credentials"));
    assert_eq!(fail.claimed_subject.as_deref(), Some("bob@example.com"));
    assert_eq!((fail.token_id.as_ref(), fail.subject.as_ref()), (None, None));
    assert_eq!(e.stream, "uses-okta");
    let (_, deny) = uses[2];
    assert_eq!(
        deny.reason.as_deref(),
        Some("sign_on_policy_evaluation_resulted_in_deny")
    );
    assert_eq!(deny.context.as_ref().unwrap().ip.as_deref(), Some("198.51.100.77"));

    let revoked = revoked(&r);
    assert_eq!(revoked[0].1.token_id.as_deref(), Some(ACCESS));
    assert_eq!(revoked[0].1.reason, "okta_token_revoke");
    assert_eq!(revoked[0].0.stream, format!("token-{ACCESS}"));
    assert_eq!(revoked[1].1.token_id.as_deref(), Some(SESSION));
    assert_eq!(revoked[1].1.reason, "okta_session_end");
}

#[test]
fn ndjson_gives_the_same_events_as_the_array() {
    let text = excerpt("okta_system_log_sample.json");
    let array: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let ndjson: String = array.iter().map(|v| format!("{v}\n")).collect();
    let a = import(Format::Okta, &text).unwrap();
    let b = import(Format::Okta, &ndjson).unwrap();
    assert_eq!(a.events, b.events);
    assert_eq!(a.skipped, b.skipped);
}
