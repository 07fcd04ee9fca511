//! The Windows Security importer on the hand-written excerpt
//! `tests/data/windows_security_sample.ndjson` (see `tests/data/README.md`).

mod support;

use chrono::{DateTime, TimeDelta, Utc};
use support::*;
use tokenledger_domain::events::UseOutcome;
use tokenledger_importers::Format;

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[test]
fn counts_and_events_of_the_excerpt() {
    let r = import_checked(Format::WindowsSecurity, &excerpt("windows_security_sample.ndjson"));
    assert_eq!(r.records_read, 8);
    assert_eq!(r.records_mapped, 6);
    assert_eq!(
        skipped(&r),
        [("not_json", 1), ("unmapped_event_id", 1)].into_iter().collect()
    );
    assert_eq!(r.count_of("TokenIssued"), 2);
    assert_eq!(r.count_of("TokenUsed"), 4);

    let issued = issued(&r);
    let (e, tgt) = issued[0];
    assert_eq!(tgt.issuer, "dc:DC01.contoso.local");
    assert_eq!(tgt.subject, "dadmin@CONTOSO.LOCAL", "NetBIOS CONTOSO expanded");
    assert_eq!(tgt.client_id, tgt.subject);
    assert_eq!(tgt.audience, "krbtgt/CONTOSO.LOCAL");
    assert_eq!(tgt.scope, "krbtgt");
    assert_eq!(tgt.issued_at, utc("2024-03-01T08:00:00Z"));
    assert_eq!(tgt.expires_at - tgt.issued_at, TimeDelta::hours(10));
    assert_eq!(
        tgt.context.as_ref().unwrap().ip.as_deref(),
        Some("10.0.0.12"),
        "::ffff: stripped"
    );
    assert!(tgt.token_id.starts_with("krb-") && tgt.token_id.len() == 28);
    assert_eq!(e.stream, format!("token-{}", tgt.token_id));
    let (_, st) = issued[1];
    assert_eq!(st.subject, "dadmin@CONTOSO.LOCAL");
    assert_eq!(st.audience, "win2008r2$");
    assert_eq!(st.scope, "win2008r2$");
    assert_ne!(st.token_id, tgt.token_id);

    let uses = used(&r);
    let summary: Vec<_> = uses
        .iter()
        .map(|(_, u)| {
            (
                u.reason.as_deref().unwrap(),
                u.claimed_subject.as_deref().unwrap(),
                u.audience.as_str(),
                u.context.as_ref().unwrap().ip.as_deref().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "kdc_err_preauth_failed",
                "dadmin@CONTOSO.LOCAL",
                "krbtgt/CONTOSO.LOCAL",
                "10.0.0.99"
            ),
            (
                "kdc_err_c_principal_unknown",
                "nosuchuser@CONTOSO.LOCAL",
                "krbtgt/CONTOSO.LOCAL",
                "10.0.0.99"
            ),
            (
                "krb_ap_err_skew",
                "jsmith@CONTOSO.LOCAL",
                "krbtgt/CONTOSO.LOCAL",
                "10.0.0.15"
            ),
            (
                "kdc_err_client_revoked",
                "formeremployee@CONTOSO.LOCAL",
                "krbtgt/CONTOSO.LOCAL",
                "10.0.0.21"
            ),
        ]
    );
    for (e, u) in &uses {
        assert_eq!(u.outcome, UseOutcome::Rejected);
        assert_eq!(u.validator, "dc:DC01.contoso.local");
        assert_eq!(
            (u.token_id.as_ref(), u.subject.as_ref(), u.client_id.as_ref()),
            (None, None, None)
        );
        assert_eq!(e.stream, "uses-dc:DC01.contoso.local");
    }
    // TimeCreated.SystemTime with 7 fractional digits.
    assert_eq!(uses[0].0.source_time, utc("2024-03-01T08:02:00.1234567Z"));
}
