//! The Zeek `kerberos.log` importer on the real OTRF APT29 capture.

mod support;

use chrono::{DateTime, TimeDelta, Utc};
use support::*;
use tokenledger_domain::events::{DomainEvent, UseOutcome};
use tokenledger_importers::{Format, import};

const SAMPLE: &str = "otrf_apt29_zeek_kerberos.ndjson";

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[test]
fn counts_of_the_real_sample() {
    let r = import_checked(Format::ZeekKerberos, &shared_log(SAMPLE));
    assert_eq!(r.records_read, 121);
    assert_eq!(r.records_mapped, 74);
    assert_eq!(
        skipped(&r),
        [("no_kerberos_fields", 32), ("preauth_required_protocol_step", 15)]
            .into_iter()
            .collect()
    );
    assert_eq!(r.count_of("TokenIssued"), 56);
    assert_eq!(r.count_of("TokenUsed"), 18);
    assert_eq!(r.count_of("TokenRevoked"), 0);
    let issued = issued(&r);
    // AS ok 15 (TGTs) + TGS ok 41, of which 8 are TGTs again (krbtgt service).
    assert_eq!(issued.iter().filter(|(_, t)| t.scope == "krbtgt").count(), 23);
    assert!(
        issued
            .iter()
            .filter(|(_, t)| t.scope == "krbtgt")
            .all(|(_, t)| t.audience == "krbtgt/DMEVALS.LOCAL")
    );
    assert!(issued.iter().all(|(_, t)| t.issuer == "kdc:DMEVALS.LOCAL"));
    assert!(issued.iter().all(|(_, t)| t.subject == t.client_id));
    // Realm spellings pbeesly/dmevals, pbeesly/DMEVALS.LOCAL, dschrute/DMEVALS,
    // UTICA$/… all become one principal each.
    assert_eq!(
        tally(issued.iter().map(|(_, t)| t.subject.as_str())),
        [
            ("dschrute@DMEVALS.LOCAL", 9),
            ("kmalone@DMEVALS.LOCAL", 4),
            ("mscott@DMEVALS.LOCAL", 6),
            ("pbeesly@DMEVALS.LOCAL", 18),
            ("utica$@DMEVALS.LOCAL", 19),
        ]
        .into_iter()
        .collect()
    );
    // Requested `till` of 2037 is capped at 10 h; three S4U tickets ask for 15 min.
    let ten_hours = issued
        .iter()
        .filter(|(_, t)| t.expires_at - t.issued_at == TimeDelta::hours(10))
        .count();
    assert_eq!(ten_hours, 53);
    assert_eq!(
        issued
            .iter()
            .filter(|(_, t)| t.expires_at - t.issued_at < TimeDelta::minutes(15))
            .count(),
        3
    );
    // Failures: rejected, unattributed, reason = lower-case error name.
    let uses = used(&r);
    assert!(uses.iter().all(|(_, u)| u.outcome == UseOutcome::Rejected
        && u.token_id.is_none()
        && u.subject.is_none()
        && u.client_id.is_none()
        && u.validator == "zeek:test-nsm"));
    assert_eq!(
        tally(uses.iter().map(|(_, u)| u.reason.as_deref().unwrap())),
        [("kdc_err_c_principal_unknown", 16), ("kdc_err_s_principal_unknown", 2)]
            .into_iter()
            .collect()
    );
    assert!(uses.iter().all(|(e, _)| e.stream == "uses-zeek:test-nsm"));
    assert_eq!(
        tally(uses.iter().map(|(_, u)| u.audience.as_str())),
        [
            ("scranton$", 16),
            ("dns/prisoner.iana.org", 1),
            ("cifs/dmevals.local", 1)
        ]
        .into_iter()
        .collect()
    );
}

#[test]
fn a_tgs_ticket_and_its_stable_synthesized_id() {
    let input = shared_log(SAMPLE);
    let r = import_checked(Format::ZeekKerberos, &input);
    let issued = issued(&r);
    // The first TGS of the file: uid CAG1Rc22yRMLn0xFpl.
    let (e, tk) = issued
        .iter()
        .find(|(_, t)| t.audience == "host/nashua.dmevals.local")
        .unwrap();
    // krb- + sha256("CAG1Rc22yRMLn0xFpl|1588206998.97299|pbeesly/DMEVALS.LOCAL|host/nashua.dmevals.local")[..24]
    assert_eq!(tk.token_id, "krb-04c92926b693ae2fad72e26b");
    assert_eq!(e.stream, "token-krb-04c92926b693ae2fad72e26b");
    assert_eq!(tk.subject, "pbeesly@DMEVALS.LOCAL");
    assert_eq!(tk.scope, "host");
    assert_eq!(tk.issued_at, utc("2020-04-30T00:36:38.972990Z"));
    assert_eq!(tk.expires_at, utc("2020-04-30T10:36:38.972990Z"));
    assert_eq!(tk.context.as_ref().unwrap().ip.as_deref(), Some("10.0.1.6"));
    assert_eq!(e.source_time, tk.issued_at);
    // The AS just before it: a TGT of pbeesly/dmevals for krbtgt/DMEVALS.LOCAL.
    let (_, tgt) = issued
        .iter()
        .find(|(_, t)| t.issued_at == utc("2020-04-30T00:36:38.970628Z"))
        .unwrap();
    assert_eq!(tgt.audience, "krbtgt/DMEVALS.LOCAL");
    assert_eq!(tgt.scope, "krbtgt");
    assert_eq!(tgt.subject, "pbeesly@DMEVALS.LOCAL");
    // Same ids on a second import, and the same synthesized token id when
    // the record is imported alone.
    let again = import(Format::ZeekKerberos, &input).unwrap();
    assert_eq!(r, again);
    let line = input.lines().find(|l| l.contains("CAG1Rc22yRMLn0xFpl")).unwrap();
    let alone = import(Format::ZeekKerberos, line).unwrap();
    let DomainEvent::TokenIssued(a) = &alone.events[0].event else {
        panic!()
    };
    assert_eq!(a.token_id, tk.token_id);
    assert_eq!(alone.events[0].event_id, e.event_id);
}

#[test]
fn failures_claim_the_normalized_client_only() {
    let input = r#"{"@system":"sensor-1","ts":1588317882.5,"uid":"Cx1","id_orig_h":"10.0.1.5","id_orig_p":1,"id_resp_h":"10.0.0.4","id_resp_p":88,"request_type":"AS","client":"Mallory/dmevals","service":"krbtgt/DMEVALS.LOCAL","success":false,"error_msg":"KDC_ERR_PREAUTH_FAILED","till":2136422885.0}
{"@system":"sensor-1","ts":1588317883.5,"uid":"Cx2","id_orig_h":"10.0.1.5","id_resp_h":"10.0.0.4","request_type":"AS","client":"mallory/dmevals","service":"krbtgt/dmevals","success":false,"error_msg":"KDC_ERR_PREAUTH_REQUIRED"}
{"@system":"sensor-1","ts":1588317884.5,"uid":"Cx3","request_type":"TGS","service":"cifs/x","success":true}
{"@system":"sensor-1","uid":"Cx4","request_type":"TGS","service":"cifs/x","success":true,"client":"a/B"}
{"@system":"sensor-1","ts":1588317885.5,"uid":"Cx5","request_type":"AP","service":"cifs/x","success":true,"client":"a/B"}
"#;
    let r = import_checked(Format::ZeekKerberos, input);
    assert_eq!((r.records_read, r.records_mapped), (5, 1));
    assert_eq!(
        skipped(&r),
        [
            ("no_client", 1),
            ("no_time", 1),
            ("preauth_required_protocol_step", 1),
            ("unmapped_request_type", 1)
        ]
        .into_iter()
        .collect()
    );
    let DomainEvent::TokenUsed(u) = &r.events[0].event else {
        panic!()
    };
    assert_eq!(u.reason.as_deref(), Some("kdc_err_preauth_failed"));
    assert_eq!(u.claimed_subject.as_deref(), Some("mallory@DMEVALS.LOCAL"));
    assert_eq!(u.audience, "krbtgt/DMEVALS.LOCAL");
    assert_eq!(u.validator, "zeek:sensor-1");
    assert_eq!(u.subject, None);
}
