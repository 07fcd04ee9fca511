//! Shared helpers of the importer tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use tokenledger_domain::events::{DomainEvent, TokenIssued, TokenRevoked, TokenUsed};
use tokenledger_importers::{Format, ImportedEvent, Report, import};

/// A real sample from `shared/data/logs/` beside the checkout; fails clearly
/// when the folder is missing.
pub fn shared_log(name: &str) -> String {
    let path = format!("{}/../../../shared/data/logs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot read the real sample {path}: {e} — the `shared` folder must sit beside the checkout")
    })
}

/// An excerpt of `tests/data/`.
pub fn excerpt(name: &str) -> String {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Imports and checks the invariants every report keeps.
pub fn import_checked(format: Format, input: &str) -> Report {
    let report = import(format, input).expect("import");
    assert_eq!(report.format, format);
    assert_eq!(
        report.records_read,
        report.records_mapped + report.skipped.values().sum::<u64>(),
        "records_read == records_mapped + skipped: {report:?}"
    );
    let mut ids = std::collections::HashSet::new();
    for e in &report.events {
        assert!(ids.insert(e.event_id), "repeated event id {}", e.event_id);
        assert_eq!(e.event_id.get_version_num(), 5, "UUID v5");
        let mut checked = e.event.clone();
        if let DomainEvent::TokenIssued(t) = &mut checked {
            assert_eq!(t.tenant, "", "tenant is left for the server to stamp");
            assert!(t.expires_at > t.issued_at, "{t:?}");
            assert_eq!(t.not_before, t.issued_at);
            assert_eq!(t.issued_at, e.source_time);
            t.tenant = "import".into();
        }
        if let DomainEvent::TokenUsed(u) = &e.event {
            assert_eq!(u.at, e.source_time);
            let attributed = u.token_id.is_some() || u.subject.is_some() || u.client_id.is_some();
            let claimed = u.claimed_token_id.is_some() || u.claimed_subject.is_some() || u.claimed_client_id.is_some();
            assert!(!(attributed && claimed), "attributed and claimed at once: {u:?}");
        }
        checked.check_names().unwrap_or_else(|err| panic!("{err}: {e:?}"));
        tokenledger_domain::ids::check_stream_name(&e.stream).expect("stream name");
    }
    report
}

/// Skip counts as a map of `&str`.
pub fn skipped(report: &Report) -> BTreeMap<&str, u64> {
    report.skipped.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

/// The issuances.
pub fn issued(report: &Report) -> Vec<(&ImportedEvent, &TokenIssued)> {
    report
        .events
        .iter()
        .filter_map(|e| match &e.event {
            DomainEvent::TokenIssued(t) => Some((e, t)),
            _ => None,
        })
        .collect()
}

/// The uses.
pub fn used(report: &Report) -> Vec<(&ImportedEvent, &TokenUsed)> {
    report
        .events
        .iter()
        .filter_map(|e| match &e.event {
            DomainEvent::TokenUsed(u) => Some((e, u)),
            _ => None,
        })
        .collect()
}

/// The revocations.
pub fn revoked(report: &Report) -> Vec<(&ImportedEvent, &TokenRevoked)> {
    report
        .events
        .iter()
        .filter_map(|e| match &e.event {
            DomainEvent::TokenRevoked(r) => Some((e, r)),
            _ => None,
        })
        .collect()
}

/// Counts of values.
pub fn tally<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}
