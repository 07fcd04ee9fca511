//! Determinism and robustness across all formats: importing twice gives the
//! same ids; garbage, truncated and mutated lines are counted, never panic;
//! names that cannot be made valid skip the record.

mod support;

use support::*;
use tokenledger_domain::events::DomainEvent;
use tokenledger_importers::{Format, import};

fn inputs() -> Vec<(Format, String)> {
    vec![
        (
            Format::Cloudtrail,
            shared_log("otrf_aws_ec2_proxy_s3_exfiltration_cloudtrail.json"),
        ),
        (Format::ZeekKerberos, shared_log("otrf_apt29_zeek_kerberos.ndjson")),
        (Format::Okta, excerpt("okta_system_log_sample.json")),
        (Format::WindowsSecurity, excerpt("windows_security_sample.ndjson")),
    ]
}

#[test]
fn importing_twice_gives_identical_event_ids() {
    for (format, input) in inputs() {
        let a = import_checked(format, &input);
        let b = import_checked(format, &input);
        assert!(!a.events.is_empty());
        let ids = |r: &tokenledger_importers::Report| r.events.iter().map(|e| e.event_id).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b), "{format:?}");
        assert_eq!(a, b, "{format:?}");
    }
    // Ids differ between formats even for the same record identity text.
    let a = import(Format::Okta, r#"{"uuid":"x","published":"2024-01-01T00:00:00Z","eventType":"user.session.start","outcome":{"result":"FAILURE"},"actor":{"alternateId":"a"}}"#).unwrap();
    let b = import(Format::Okta, r#"{"uuid":"y","published":"2024-01-01T00:00:00Z","eventType":"user.session.start","outcome":{"result":"FAILURE"},"actor":{"alternateId":"a"}}"#).unwrap();
    assert_ne!(a.events[0].event_id, b.events[0].event_id);
}

/// xorshift64*: a fixed, dependency-free pseudo-random sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const NASTY: &[&str] = &[
    "",
    " ",
    "\u{200B}",
    "\u{202E}evil",
    "cafe\u{301}",
    "a b",
    "\t",
    "null",
    "::ffff:999.1.1.1",
    "0x",
    "0xZZ",
    "-1",
    "1e309",
    "9999999999999999999999",
    "Sep 99, 2020, 7:10:27 AM",
    "\u{0}",
    "krbtgt/",
    "/",
    "@",
    "i-",
];

fn nasty_value(rng: &mut Rng) -> serde_json::Value {
    match rng.below(8) {
        0 => serde_json::Value::Null,
        1 => serde_json::json!(rng.next() as i64),
        2 => serde_json::json!(-1.5e300),
        3 => serde_json::json!([NASTY[rng.below(NASTY.len())]]),
        4 => serde_json::json!({"x": NASTY[rng.below(NASTY.len())]}),
        5 => serde_json::json!(true),
        6 => serde_json::json!("x".repeat(300)),
        _ => serde_json::json!(NASTY[rng.below(NASTY.len())]),
    }
}

/// Replaces random leaf values of a record with nasty ones.
fn mutate(v: &mut serde_json::Value, rng: &mut Rng) {
    match v {
        serde_json::Value::Object(o) => {
            for (_, child) in o.iter_mut() {
                if rng.below(4) == 0 {
                    *child = nasty_value(rng);
                } else {
                    mutate(child, rng);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|c| mutate(c, rng)),
        _ => {}
    }
}

#[test]
fn garbage_is_counted_not_panicked() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (format, input) in inputs() {
        let records: Vec<serde_json::Value> = match serde_json::from_str::<serde_json::Value>(&input) {
            Ok(serde_json::Value::Array(a)) => a,
            _ => input.lines().filter_map(|l| serde_json::from_str(l).ok()).collect(),
        };
        let mut lines: Vec<String> = Vec::new();
        for round in 0..400 {
            let base = &records[rng.below(records.len())];
            let line = match round % 5 {
                0 => {
                    // Truncated at a random character boundary.
                    let s = base.to_string();
                    let cut = rng.below(s.len().max(1));
                    let cut = (0..=cut).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
                    s[..cut].to_owned()
                }
                1 => {
                    // Random printable bytes and control characters.
                    (0..rng.below(80))
                        .map(|_| char::from_u32(rng.below(0x250) as u32).unwrap_or('?'))
                        .filter(|c| *c != '\n' && *c != '\r')
                        .collect()
                }
                2 => NASTY[rng.below(NASTY.len())].to_owned(),
                _ => {
                    let mut v = base.clone();
                    mutate(&mut v, &mut rng);
                    v.to_string()
                }
            };
            if !line.trim().is_empty() {
                lines.push(line);
            }
        }
        // One untouched record, so the file is recognizably the format.
        lines.push(records[0].to_string());
        let text = lines.join("\n");
        let report = import_checked(format, &text);
        assert_eq!(report.records_read as usize, lines.len(), "{format:?}");
        assert!(report.skipped.get("not_json").copied().unwrap_or(0) > 0, "{format:?}");
        assert!(
            report
                .skipped
                .keys()
                .all(|k| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
            "{:?}",
            report.skipped
        );
    }
}

#[test]
fn input_that_is_not_the_format_at_all_is_an_error() {
    for format in [
        Format::Cloudtrail,
        Format::ZeekKerberos,
        Format::Okta,
        Format::WindowsSecurity,
    ] {
        assert!(import(format, "").is_err(), "{format:?}");
        assert!(import(format, "\u{feff}\n  \n").is_err(), "{format:?}");
        assert!(import(format, "not json\nat all\n").is_err(), "{format:?}");
        assert!(import(format, "[1, 2, 3]").is_err(), "{format:?}");
        // One garbage line among records is a skipped record, not an error.
        let r = import(format, "{}\nnot json\n").unwrap();
        assert_eq!(r.records_read, 2);
        assert_eq!(r.skipped.get("not_json"), Some(&1));
    }
}

#[test]
fn names_are_normalized_or_the_record_is_skipped() {
    // A decomposed (NFD) user name is normalized to NFC; a zero-width space
    // in a key id cannot be made valid: the record is skipped as a whole.
    let input = concat!(
        r#"{"eventTime":"2024-01-01T00:00:00Z","eventID":"e1","eventSource":"s3.amazonaws.com","userIdentity":{"arn":"arn:aws:iam::1:user/rene\u0301","accessKeyId":"AKIAGOOD","userName":"rene\u0301"}}"#,
        "\n",
        r#"{"eventTime":"2024-01-01T00:00:01Z","eventID":"e2","eventSource":"s3.amazonaws.com","userIdentity":{"arn":"arn:aws:iam::1:user/x","accessKeyId":"AKIA\u200bBAD"}}"#,
        "\n",
        r#"{"eventTime":"2024-01-01T00:00:02Z","eventID":"e3","eventSource":"s3.amazonaws.com","userAgent":"agent\u0007 1.0","userIdentity":{"arn":"arn:aws:iam::1:user/has space","accessKeyId":"AKIAGOOD"}}"#,
    );
    let r = import_checked(Format::Cloudtrail, input);
    assert_eq!((r.records_read, r.records_mapped), (3, 1));
    assert_eq!(skipped(&r), [("invalid_identifier", 2)].into_iter().collect());
    let DomainEvent::TokenUsed(u) = &r.events[0].event else {
        panic!()
    };
    assert_eq!(u.subject.as_deref(), Some("arn:aws:iam::1:user/ren\u{e9}"));
    assert_eq!(u.client_id.as_deref(), Some("ren\u{e9}"));
}
