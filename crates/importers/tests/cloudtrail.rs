//! The CloudTrail importer on the real OTRF EC2-proxy S3-exfiltration
//! capture: 5 instance-profile issuances, 87 console uses of pedro's key,
//! 11 uses of the stolen instance key from a laptop — and the detectors
//! flag the stolen key as used from a new device.

mod support;

use chrono::{DateTime, Utc};
use support::*;
use tokenledger_domain::anomalies::AnomalyKind;
use tokenledger_domain::events::{DomainEvent, UseOutcome};
use tokenledger_domain::views::TenantViews;
use tokenledger_importers::{Format, import};

const SAMPLE: &str = "otrf_aws_ec2_proxy_s3_exfiltration_cloudtrail.json";
const STOLEN: &str = "ASIA5FLZVX4OPVKKVBMX";
const PEDRO: &str = "ASIA5FLZVX4OI4ZDQJOL";
const ROLE: &str = "MordorNginxStack-BankingWAFRole-9S3E0UAE1MM0";
const CLI: &str = "aws-cli/1.18.136 Python/3.8.5 Darwin/19.5.0 botocore/1.17.59";

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[test]
fn counts_of_the_real_sample() {
    let r = import_checked(Format::Cloudtrail, &shared_log(SAMPLE));
    assert_eq!(r.records_read, 103);
    assert_eq!(r.records_mapped, 103);
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    assert_eq!(r.events.len(), 103);
    assert_eq!(r.count_of("TokenIssued"), 5);
    assert_eq!(r.count_of("TokenUsed"), 98);
    assert_eq!(r.count_of("TokenRevoked"), 0);
    let uses = used(&r);
    let by_key = tally(uses.iter().map(|(_, u)| u.token_id.as_deref().unwrap()));
    assert_eq!(by_key, [(PEDRO, 87), (STOLEN, 11)].into_iter().collect());
    assert!(
        uses.iter()
            .all(|(_, u)| u.outcome == UseOutcome::Accepted && u.reason.is_none())
    );
    assert!(uses.iter().all(|(_, u)| u.validator == "aws-cloudtrail"));
    assert!(uses.iter().all(|(_, u)| u.audience == "aws:123456789123"));
    // CloudTrail does not record the calling device.
    assert!(
        uses.iter()
            .all(|(_, u)| u.context.as_ref().unwrap().device_id.is_none())
    );
    // pedro: console user, no issuance in the log.
    let pedro: Vec<_> = uses
        .iter()
        .filter(|(_, u)| u.token_id.as_deref() == Some(PEDRO))
        .collect();
    assert!(pedro.iter().all(|(e, u)| {
        u.subject.as_deref() == Some("arn:aws:iam::123456789123:user/pedro")
            && u.client_id.as_deref() == Some("pedro")
            && e.stream == format!("token-{PEDRO}")
    }));
    assert_eq!(
        tally(
            pedro
                .iter()
                .map(|(_, u)| u.context.as_ref().unwrap().user_agent.as_deref().unwrap())
        )
        .get("console.ec2.amazonaws.com"),
        Some(&85)
    );
    // Issuances: 3 to the WAF proxy instance, 2 to the log collector.
    let issued = issued(&r);
    let devices = tally(
        issued
            .iter()
            .map(|(_, t)| t.context.as_ref().unwrap().device_id.as_deref().unwrap()),
    );
    assert_eq!(
        devices,
        [("i-0317f6c6b66ae9c40", 3), ("i-044b1baf4c96e1b62", 2)]
            .into_iter()
            .collect()
    );
}

#[test]
fn the_stolen_instance_credential_is_issued_bound_to_its_instance() {
    let r = import_checked(Format::Cloudtrail, &shared_log(SAMPLE));
    let issued = issued(&r);
    let (e, t) = issued
        .iter()
        .find(|(_, t)| t.token_id == STOLEN)
        .expect("issuance of the stolen key");
    assert_eq!(e.stream, format!("token-{STOLEN}"));
    assert_eq!(e.source_time, utc("2020-09-14T00:48:30Z"));
    assert_eq!(t.issuer, "sts.amazonaws.com");
    assert_eq!(
        t.subject,
        format!("arn:aws:sts::123456789123:assumed-role/{ROLE}/i-0317f6c6b66ae9c40")
    );
    assert_eq!(t.client_id, ROLE);
    assert_eq!(t.audience, "aws:123456789123");
    assert_eq!(t.scope, format!("role:{ROLE}"));
    assert_eq!(t.issued_at, utc("2020-09-14T00:48:30Z"));
    assert_eq!(t.not_before, utc("2020-09-14T00:48:30Z"));
    assert_eq!(t.expires_at, utc("2020-09-14T07:10:27Z"));
    assert_eq!(t.tenant, "");
    assert_eq!(t.format.as_str(), "external");
    let ctx = t.context.as_ref().unwrap();
    assert_eq!(ctx.device_id.as_deref(), Some("i-0317f6c6b66ae9c40"));
    assert_eq!(ctx.ip, None, "ec2.amazonaws.com is not an address");
    assert_eq!(ctx.user_agent.as_deref(), Some("ec2.amazonaws.com"));
    // The 11 uses: from aws-cli on a laptop, attributed to the same role session.
    let uses = used(&r);
    let stolen: Vec<_> = uses
        .iter()
        .filter(|(_, u)| u.token_id.as_deref() == Some(STOLEN))
        .collect();
    assert_eq!(stolen.len(), 11);
    for (e, u) in &stolen {
        assert_eq!(e.stream, format!("token-{STOLEN}"));
        assert_eq!(u.subject.as_deref(), Some(t.subject.as_str()));
        assert_eq!(u.client_id.as_deref(), Some(ROLE));
        assert_eq!(
            u.audience, t.audience,
            "same audience, so the detectors attribute the use"
        );
        let c = u.context.as_ref().unwrap();
        assert_eq!(c.user_agent.as_deref(), Some(CLI));
        assert_eq!(c.ip.as_deref(), Some("1.2.3.4"));
        assert!(u.at >= utc("2020-09-14T00:48:30Z") && u.at < t.expires_at);
    }
    assert_eq!(stolen[0].1.at, utc("2020-09-14T01:00:33Z"));
}

#[test]
fn the_detectors_flag_the_stolen_credential_as_a_new_device() {
    let r = import_checked(Format::Cloudtrail, &shared_log(SAMPLE));
    let mut views = TenantViews::default();
    let recorded = utc("2030-01-01T00:00:00Z");
    let mut position_of_first_cli_use = None;
    for (i, e) in r.events.iter().enumerate() {
        let mut event = e.event.clone();
        if let DomainEvent::TokenIssued(t) = &mut event {
            t.tenant = "import".into(); // as the server stamps it
        }
        let p = i as u64 + 1;
        if let DomainEvent::TokenUsed(u) = &event
            && u.token_id.as_deref() == Some(STOLEN)
            && position_of_first_cli_use.is_none()
        {
            position_of_first_cli_use = Some(p);
        }
        views.apply_timed(p, recorded, Some(e.source_time), &event, |_| None);
    }
    let new_device: Vec<_> = views
        .detect
        .anomalies
        .iter()
        .filter(|a| a.kind == AnomalyKind::NewDevice)
        .collect();
    assert_eq!(new_device.len(), 1, "{:?}", views.detect.anomalies);
    let a = new_device[0];
    assert_eq!(a.token_id.as_deref(), Some(STOLEN));
    assert_eq!(Some(a.position), position_of_first_cli_use);
    assert_eq!(a.client_id.as_deref(), Some(ROLE));
    assert!(a.detail.contains("aws-cli/1.18.136"), "{}", a.detail);
}

#[test]
fn records_wrapper_eventtime_errors_and_unattributed_failures() {
    let input = r#"{"Records": [
      {"eventVersion":"1.08","eventTime":"2024-01-02T03:04:05Z","eventSource":"sts.amazonaws.com","eventName":"AssumeRole",
       "eventID":"11111111-1111-1111-1111-111111111111","sourceIPAddress":"203.0.113.5","userAgent":"aws-sdk-go/1.44",
       "userIdentity":{"type":"IAMUser","arn":"arn:aws:iam::111122223333:user/ci","accountId":"111122223333","accessKeyId":"AKIAEXAMPLEKEY000001","userName":"ci","principalId":"AIDAEXAMPLE"},
       "requestParameters":{"roleArn":"arn:aws:iam::111122223333:role/deploy","roleSessionName":"ci-run-42"},
       "responseElements":{"credentials":{"accessKeyId":"ASIAEXAMPLEKEY000002","expiration":"Jan 2, 2024, 4:04:05 AM"},
                           "assumedRoleUser":{"arn":"arn:aws:sts::111122223333:assumed-role/deploy/ci-run-42","assumedRoleId":"AROAEX:ci-run-42"}}},
      {"eventTime":"2024-01-02T03:05:00Z","eventSource":"s3.amazonaws.com","eventName":"GetObject","eventID":"22222222-2222-2222-2222-222222222222",
       "errorCode":"AccessDenied","sourceIPAddress":"203.0.113.5","userAgent":"[aws-sdk-go/1.44]",
       "userIdentity":{"type":"AssumedRole","arn":"arn:aws:sts::111122223333:assumed-role/deploy/ci-run-42","accountId":"111122223333","accessKeyId":"ASIAEXAMPLEKEY000002",
         "sessionContext":{"sessionIssuer":{"userName":"deploy","type":"Role"}}}},
      {"eventTime":"2024-01-02T03:06:00Z","eventSource":"sts.amazonaws.com","eventName":"GetCallerIdentity","eventID":"33333333-3333-3333-3333-333333333333",
       "errorCode":"InvalidClientTokenId","sourceIPAddress":"198.51.100.9",
       "userIdentity":{"type":"IAMUser","accountId":"111122223333","accessKeyId":"AKIAFORGEDKEY0000003","principalId":"AIDAFORGED"}},
      {"eventTime":"2024-01-02T03:07:00Z","eventSource":"kms.amazonaws.com","eventName":"GenerateDataKey","eventID":"44444444-4444-4444-4444-444444444444",
       "userIdentity":{"type":"AWSService","invokedBy":"s3.amazonaws.com"}},
      {"eventSource":"kms.amazonaws.com","eventName":"Decrypt","eventID":"55555555-5555-5555-5555-555555555555"},
      "just a string"
    ]}"#;
    let r = import_checked(Format::Cloudtrail, input);
    assert_eq!(r.records_read, 6);
    assert_eq!(r.records_mapped, 3);
    assert_eq!(
        skipped(&r),
        [("no_access_key", 1), ("no_time", 1), ("not_object", 1)]
            .into_iter()
            .collect()
    );
    // Record 1: the caller's key is used (index 0), then the new key issued (index 1).
    assert_eq!(r.events.len(), 4);
    let DomainEvent::TokenUsed(u0) = &r.events[0].event else {
        panic!()
    };
    assert_eq!(u0.token_id.as_deref(), Some("AKIAEXAMPLEKEY000001"));
    assert_eq!(u0.client_id.as_deref(), Some("ci"));
    let DomainEvent::TokenIssued(t1) = &r.events[1].event else {
        panic!()
    };
    assert_eq!(t1.token_id, "ASIAEXAMPLEKEY000002");
    assert_eq!(t1.subject, "arn:aws:sts::111122223333:assumed-role/deploy/ci-run-42");
    assert_eq!(t1.client_id, "deploy");
    assert_eq!(t1.expires_at, utc("2024-01-02T04:04:05Z"));
    let ctx = t1.context.as_ref().unwrap();
    assert_eq!(ctx.device_id, None, "not an instance profile");
    assert_eq!(ctx.ip.as_deref(), Some("203.0.113.5"));
    assert_ne!(r.events[0].event_id, r.events[1].event_id);
    // Record 2: AccessDenied after authentication stays attributed.
    let DomainEvent::TokenUsed(u2) = &r.events[2].event else {
        panic!()
    };
    assert_eq!(u2.outcome, UseOutcome::Rejected);
    assert_eq!(u2.reason.as_deref(), Some("accessdenied"));
    assert_eq!(u2.token_id.as_deref(), Some("ASIAEXAMPLEKEY000002"));
    assert_eq!(
        u2.context.as_ref().unwrap().user_agent.as_deref(),
        Some("aws-sdk-go/1.44")
    );
    // Record 3: the key was not authenticated: claimed only.
    let DomainEvent::TokenUsed(u3) = &r.events[3].event else {
        panic!()
    };
    assert_eq!(u3.reason.as_deref(), Some("invalidclienttokenid"));
    assert_eq!(u3.token_id, None);
    assert_eq!(u3.subject, None);
    assert_eq!(u3.claimed_token_id.as_deref(), Some("AKIAFORGEDKEY0000003"));
    assert_eq!(u3.claimed_client_id.as_deref(), Some("AIDAFORGED"));
    assert_eq!(r.events[3].stream, "uses-aws-cloudtrail");
}

#[test]
fn a_record_repeated_in_the_file_is_skipped_once() {
    let sample = shared_log(SAMPLE);
    let first = sample.lines().next().unwrap();
    let doubled = format!("{first}\n{first}\n");
    let r = import_checked(Format::Cloudtrail, &doubled);
    assert_eq!((r.records_read, r.records_mapped), (2, 1));
    assert_eq!(skipped(&r), [("duplicate_record", 1)].into_iter().collect());
}

#[test]
fn not_cloudtrail_at_all_is_an_error() {
    assert!(import(Format::Cloudtrail, "").is_err());
    assert!(import(Format::Cloudtrail, "  \n\n").is_err());
    assert!(import(Format::Cloudtrail, "a,b,c\n1,2,3\n").is_err());
    assert!(import(Format::Cloudtrail, r#"{"Records": 5}"#).is_err());
}
