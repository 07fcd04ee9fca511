//! The detectors of the `anomalies` projection, fed events directly: each
//! kind fires on what it should and stays quiet on what it should not, a
//! forger cannot get a victim flagged, thresholds follow
//! `DetectorConfigChanged` from its position on, and the fold is the same
//! whether it ran in one go, was restored from a snapshot half way, or ran
//! twice.

use chrono::{DateTime, Duration, TimeZone, Utc};
use std::collections::BTreeMap;
use tokenledger_domain::DomainEvent;
use tokenledger_domain::anomalies::{AnomalyKind, Severity, network_of};
use tokenledger_domain::events::*;
use tokenledger_domain::views::TenantViews;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
}

fn no_kid(_: &str) -> Option<String> {
    None
}

/// A log being written: events with positions 1, 2, … and times from t0.
struct Log {
    events: Vec<(u64, DateTime<Utc>, DomainEvent)>,
    now: DateTime<Utc>,
}

impl Log {
    fn new() -> Log {
        Log {
            events: Vec::new(),
            now: t0(),
        }
    }

    fn tick(&mut self, secs: i64) {
        self.now += Duration::seconds(secs);
    }

    fn push(&mut self, e: DomainEvent) -> u64 {
        let p = self.events.len() as u64 + 1;
        self.events.push((p, self.now, e));
        p
    }

    fn issue(&mut self, id: &str, sub: &str, client: &str, scope: &str, parent: Option<&str>) -> u64 {
        let now = self.now;
        self.push(DomainEvent::TokenIssued(TokenIssued {
            token_id: id.into(),
            tenant: "acme".into(),
            issuer: "tokenledger".into(),
            subject: sub.into(),
            client_id: client.into(),
            audience: "api://orders".into(),
            scope: scope.into(),
            issued_at: now,
            expires_at: now + Duration::hours(1),
            not_before: now,
            format: TokenFormat::V4Public,
            kid: Some("k4.pid.x".into()),
            cnf: None,
            parent_token_id: parent.map(Into::into),
            context: None,
        }))
    }

    /// A use of a token whose signature verified.
    fn used(&mut self, id: &str, outcome: UseOutcome, reason: Option<&str>, ip: &str, device: Option<&str>) -> u64 {
        let now = self.now;
        self.push(DomainEvent::TokenUsed(TokenUsed {
            validator: "gw".into(),
            audience: "api://orders".into(),
            outcome,
            reason: reason.map(Into::into),
            at: now,
            context: Some(RequestContext {
                ip: Some(ip.into()),
                user_agent: Some("agent/1".into()),
                device_id: device.map(Into::into),
            }),
            token_id: Some(id.into()),
            subject: Some("claims-say".into()),
            client_id: Some("claims-say".into()),
            claimed_token_id: None,
            claimed_subject: None,
            claimed_client_id: None,
        }))
    }

    /// A token whose signature did not verify, claiming `id`, `sub`, `client`.
    fn forged(&mut self, id: &str, sub: &str, client: &str, ip: &str) -> u64 {
        let now = self.now;
        self.push(DomainEvent::TokenUsed(TokenUsed {
            validator: "gw".into(),
            audience: "api://orders".into(),
            outcome: UseOutcome::Rejected,
            reason: Some("bad_signature".into()),
            at: now,
            context: Some(RequestContext {
                ip: Some(ip.into()),
                user_agent: None,
                device_id: None,
            }),
            token_id: None,
            subject: None,
            client_id: None,
            claimed_token_id: Some(id.into()),
            claimed_subject: Some(sub.into()),
            claimed_client_id: Some(client.into()),
        }))
    }

    fn revoke(&mut self, id: &str) -> u64 {
        self.push(DomainEvent::TokenRevoked(TokenRevoked {
            token_id: Some(id.into()),
            selector: None,
            reason: "stolen".into(),
            by: None,
        }))
    }

    fn config(&mut self, pairs: &[(&str, f64)]) -> u64 {
        self.push(DomainEvent::DetectorConfigChanged(DetectorConfigChanged {
            tenant: "acme".into(),
            thresholds: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            rules: None,
        }))
    }

    fn fold(&self) -> TenantViews {
        let mut v = TenantViews::default();
        for (p, at, e) in &self.events {
            v.apply(*p, *at, e, no_kid);
        }
        v
    }
}

fn kinds(v: &TenantViews) -> Vec<(AnomalyKind, u64)> {
    v.detect.anomalies.iter().map(|a| (a.kind, a.position)).collect()
}

#[test]
fn concurrent_use_from_two_networks_names_the_ledgers_subject() {
    let mut log = Log::new();
    log.issue("t1", "alice", "web", "orders:read", None);
    let first = log.used("t1", UseOutcome::Accepted, None, "198.51.100.7", None);
    log.tick(1);
    // Same /24: not another network.
    log.used("t1", UseOutcome::Accepted, None, "198.51.100.99", None);
    log.tick(1);
    let second = log.used("t1", UseOutcome::Accepted, None, "203.0.113.9", None);
    let v = log.fold();
    let hits: Vec<_> = v.detect.anomalies.iter().collect();
    assert_eq!(hits.len(), 1, "{hits:?}");
    let a = hits[0];
    assert_eq!(a.kind, AnomalyKind::ConcurrentUse);
    assert_eq!(a.severity, Severity::High);
    assert_eq!(a.position, second);
    assert_eq!(a.anomaly_id, format!("a-{second}-concurrent_use-token"));
    // The ledger's record names the subject, not the use's claims.
    assert_eq!(a.subject.as_deref(), Some("alice"));
    assert_eq!(a.client_id.as_deref(), Some("web"));
    assert_eq!(a.token_id.as_deref(), Some("t1"));
    assert!(a.evidence.contains(&first) || a.evidence.len() == 2, "{:?}", a.evidence);
    assert_eq!(*a.evidence.last().unwrap(), second);
}

#[test]
fn uses_from_two_networks_far_apart_are_not_concurrent() {
    let mut log = Log::new();
    log.issue("t1", "alice", "web", "orders:read", None);
    log.used("t1", UseOutcome::Accepted, None, "198.51.100.7", None);
    log.tick(301);
    log.used("t1", UseOutcome::Accepted, None, "203.0.113.9", None);
    assert!(kinds(&log.fold()).is_empty());
}

#[test]
fn concurrent_use_is_reported_once_per_realert_period() {
    let mut log = Log::new();
    log.issue("t1", "alice", "web", "orders:read", None);
    for i in 0..10 {
        log.tick(1);
        log.used(
            "t1",
            UseOutcome::Accepted,
            None,
            if i % 2 == 0 { "10.0.0.1" } else { "10.9.0.1" },
            None,
        );
    }
    assert_eq!(kinds(&log.fold()).len(), 1);
}

#[test]
fn two_devices_at_once_are_concurrent_use_and_a_later_one_is_a_new_device() {
    let mut log = Log::new();
    log.issue("t1", "alice", "web", "orders:read", None);
    log.used("t1", UseOutcome::Accepted, None, "198.51.100.7", Some("phone"));
    log.tick(1);
    let p = log.used("t1", UseOutcome::Accepted, None, "198.51.100.7", Some("laptop"));
    let v = log.fold();
    let k = kinds(&v);
    assert!(k.contains(&(AnomalyKind::ConcurrentUse, p)), "{k:?}");
    assert!(k.contains(&(AnomalyKind::NewDevice, p)), "{k:?}");
    let mut log = Log::new();
    log.issue("t1", "alice", "web", "orders:read", None);
    log.used("t1", UseOutcome::Accepted, None, "198.51.100.7", Some("phone"));
    log.tick(3600);
    let p = log.used("t1", UseOutcome::Accepted, None, "198.51.100.7", Some("laptop"));
    assert_eq!(kinds(&log.fold()), vec![(AnomalyKind::NewDevice, p)]);
}

#[test]
fn use_after_revocation_whether_refused_or_accepted_by_a_lagging_validator() {
    let mut log = Log::new();
    log.issue("t1", "alice", "web", "orders:read", None);
    log.issue("t2", "bob", "web", "orders:read", None);
    log.revoke("t1");
    log.revoke("t2");
    let refused = log.used("t1", UseOutcome::Rejected, Some("revoked"), "198.51.100.7", None);
    let accepted = log.used("t2", UseOutcome::Accepted, None, "198.51.100.7", None);
    let v = log.fold();
    let k = kinds(&v);
    assert_eq!(
        k,
        vec![
            (AnomalyKind::UseAfterRevocation, refused),
            (AnomalyKind::UseAfterRevocation, accepted)
        ]
    );
    assert_eq!(v.detect.anomalies[1].subject.as_deref(), Some("bob"));
}

#[test]
fn never_issued_and_revoked_key_use_are_critical() {
    let mut log = Log::new();
    let a = log.used("ghost", UseOutcome::Rejected, Some("not_issued"), "198.51.100.7", None);
    let b = log.used("old", UseOutcome::Rejected, Some("key_revoked"), "198.51.100.7", None);
    let v = log.fold();
    assert_eq!(
        kinds(&v),
        vec![(AnomalyKind::NeverIssued, a), (AnomalyKind::RevokedKeyUse, b)]
    );
    assert!(v.detect.anomalies.iter().all(|a| a.severity == Severity::Critical));
}

#[test]
fn a_flood_of_forged_tokens_flags_the_ip_never_the_victim() {
    let mut log = Log::new();
    log.issue("victim-token", "victim", "victim-app", "orders:read", None);
    for i in 0..200 {
        log.forged("victim-token", "victim", "victim-app", &format!("192.0.2.{}", i % 2));
    }
    let v = log.fold();
    assert!(!v.detect.anomalies.is_empty());
    for a in &v.detect.anomalies {
        assert_eq!(a.kind, AnomalyKind::VerifyFailureSpike, "{a:?}");
        assert_eq!(a.subject, None);
        assert_eq!(a.client_id, None);
        assert_eq!(a.token_id, None);
    }
    let ips: Vec<_> = v.detect.anomalies.iter().filter_map(|a| a.ip.clone()).collect();
    assert_eq!(ips, vec!["192.0.2.0".to_owned(), "192.0.2.1".to_owned()]);
    // 200 failures at one validator: at its threshold of 200.
    assert!(v.detect.anomalies.iter().any(|a| a.validator.as_deref() == Some("gw")));
}

#[test]
fn mint_burst_per_client_and_per_subject_follow_the_thresholds_in_force() {
    let mut log = Log::new();
    // Default per-client threshold is 300: 50 tokens are no burst.
    for i in 0..50 {
        log.issue(&format!("a{i}"), &format!("user-{i}"), "batch", "x", None);
    }
    assert!(kinds(&log.fold()).is_empty());
    log.tick(120);
    log.config(&[("mint_burst_per_client", 10.0)]);
    let mut tenth = 0;
    for i in 0..11 {
        tenth = log.issue(&format!("b{i}"), &format!("user-{i}"), "batch", "x", None);
    }
    let v = log.fold();
    let hits: Vec<_> = v.detect.anomalies.iter().collect();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].kind, AnomalyKind::MintBurst);
    assert_eq!(hits[0].position, tenth);
    assert_eq!(hits[0].client_id.as_deref(), Some("batch"));
    assert_eq!(hits[0].subject, None);
    assert_eq!(hits[0].evidence.len(), 11);
    assert_eq!(v.detect.thresholds.mint_burst_per_client, 10);
    // Per subject (default 30).
    let mut log = Log::new();
    for i in 0..31 {
        log.issue(&format!("c{i}"), "mallory", &format!("app-{i}"), "x", None);
    }
    let v = log.fold();
    assert_eq!(v.detect.anomalies.len(), 1);
    assert_eq!(v.detect.anomalies[0].subject.as_deref(), Some("mallory"));
}

#[test]
fn exchange_escalation_and_depth() {
    let mut log = Log::new();
    log.issue("root", "alice", "web", "orders:read", None);
    let esc = log.push(DomainEvent::TokenExchanged(TokenExchanged {
        subject_token_id: "root".into(),
        actor_token_id: None,
        new_token_id: "n1".into(),
        client_id: "svc".into(),
        requested_audience: "api://billing".into(),
        requested_scope: Some("orders:read orders:admin".into()),
        granted_audience: "api://billing".into(),
        granted_scope: "orders:read".into(),
    }));
    let refused = log.push(DomainEvent::GrantRefused(GrantRefused {
        path: GrantPath::Exchange,
        client_id: "svc2".into(),
        subject: Some("carol".into()),
        requested: GrantRequest::default(),
        reason: RefusalReason::Scope,
        detail: "scope orders:admin is not held".into(),
        cutoff_id: None,
    }));
    // A chain root → c1 → c2 → c3: depth 3 > default 2.
    log.issue("c1", "alice", "svc", "orders:read", Some("root"));
    log.issue("c2", "alice", "svc", "orders:read", Some("c1"));
    let deep = log.issue("c3", "alice", "svc", "orders:read", Some("c2"));
    let v = log.fold();
    assert_eq!(
        kinds(&v),
        vec![
            (AnomalyKind::ExchangeEscalation, esc),
            (AnomalyKind::ExchangeEscalation, refused),
            (AnomalyKind::ExchangeDepth, deep)
        ]
    );
    assert_eq!(v.detect.anomalies[0].subject.as_deref(), Some("alice"));
    assert_eq!(v.detect.anomalies[1].subject.as_deref(), Some("carol"));
}

#[test]
fn thresholds_are_validated() {
    let ok = BTreeMap::from([("mint_burst_per_client".to_owned(), 5.0)]);
    assert!(tokenledger_domain::anomalies::Thresholds::with(&ok).is_ok());
    for (k, v) in [
        ("nope", 1.0),
        ("mint_burst_per_client", 0.5),
        ("mint_burst_per_client", -1.0),
        ("exchange_max_depth", 1e9),
    ] {
        let bad = BTreeMap::from([(k.to_owned(), v)]);
        assert!(
            tokenledger_domain::anomalies::Thresholds::with(&bad).is_err(),
            "{k}={v}"
        );
    }
}

#[test]
fn networks() {
    assert_eq!(network_of("198.51.100.7"), "198.51.100.0/24");
    assert_eq!(network_of("::ffff:198.51.100.7"), "198.51.100.0/24");
    assert_eq!(network_of("2001:db8:1:2:3::1"), "2001:db8:1:2::/64");
    assert_eq!(network_of("not an ip"), "not an ip");
}

/// A busy log with every kind, spread over hours so windows and pruning
/// matter.
fn busy_log() -> Log {
    let mut log = Log::new();
    log.config(&[("mint_burst_per_client", 20.0), ("realert_seconds", 30.0)]);
    for round in 0..40 {
        let id = format!("t{round}");
        log.issue(
            &id,
            &format!("user-{}", round % 7),
            &format!("app-{}", round % 3),
            "a b",
            None,
        );
        log.used(
            &id,
            UseOutcome::Accepted,
            None,
            &format!("10.{}.0.1", round % 4),
            Some("d1"),
        );
        log.tick(7);
        log.used(
            &id,
            UseOutcome::Accepted,
            None,
            &format!("10.{}.0.1", (round + 1) % 4),
            Some("d2"),
        );
        if round % 5 == 0 {
            log.revoke(&id);
            log.used(&id, UseOutcome::Rejected, Some("revoked"), "10.0.0.1", None);
        }
        for i in 0..25 {
            log.forged(&id, "victim", "victim-app", &format!("192.0.2.{}", i % 3));
        }
        log.tick(600);
    }
    log
}

#[test]
fn restored_half_way_from_a_snapshot_the_fold_ends_the_same() {
    let log = busy_log();
    let whole = log.fold();
    assert!(whole.detect.anomalies.len() > 20, "{}", whole.detect.anomalies.len());
    let half = log.events.len() / 2;
    let mut v = TenantViews::default();
    for (p, at, e) in &log.events[..half] {
        v.apply(*p, *at, e, no_kid);
    }
    let text = serde_json::to_string(&v.to_snapshot()).unwrap();
    let mut v = TenantViews::from_snapshot(serde_json::from_str(&text).unwrap()).unwrap();
    for (p, at, e) in &log.events[half..] {
        v.apply(*p, *at, e, no_kid);
    }
    assert_eq!(v.canonical(), whole.canonical());
    assert_eq!(v.detect, whole.detect);
    // And a second fold from scratch is the same again.
    assert_eq!(log.fold().detect, whole.detect);
}

#[test]
fn source_time_drives_the_windows_of_imported_data() {
    // Imported uses recorded a second apart but 10 minutes apart at the
    // source are not concurrent.
    let mut log = Log::new();
    log.issue("t1", "alice", "web", "orders:read", None);
    log.used("t1", UseOutcome::Accepted, None, "198.51.100.7", None);
    log.used("t1", UseOutcome::Accepted, None, "203.0.113.9", None);
    let mut v = TenantViews::default();
    for (i, (p, at, e)) in log.events.iter().enumerate() {
        let source = t0() + Duration::minutes(10 * i as i64);
        v.apply_timed(*p, *at, Some(source), e, no_kid);
    }
    assert!(v.detect.anomalies.is_empty(), "{:?}", v.detect.anomalies);
    // Without source times they are.
    assert_eq!(log.fold().detect.anomalies.len(), 1);
}

#[test]
fn imported_tokens_stay_known_for_imported_uses_recorded_years_later() {
    // Issued and used in 2020 (source time), recorded in 2030: the use is
    // still attributed to the token, so a second network is concurrent use.
    let mut log = Log::new();
    log.issue("t1", "alice", "web", "orders:read", None);
    log.tick(30);
    log.used("t1", UseOutcome::Accepted, None, "198.51.100.7", None);
    log.tick(30);
    let p = log.used("t1", UseOutcome::Accepted, None, "203.0.113.9", None);
    let source = Utc.with_ymd_and_hms(2020, 9, 14, 0, 48, 30).unwrap();
    let mut v = TenantViews::default();
    for (i, (p, at, e)) in log.events.iter().enumerate() {
        v.apply_timed(*p, *at, Some(source + Duration::seconds(i as i64)), e, no_kid);
    }
    assert_eq!(kinds(&v), vec![(AnomalyKind::ConcurrentUse, p)]);
    assert_eq!(v.detect.anomalies[0].subject.as_deref(), Some("alice"));
    assert_eq!(v.now(), Some(source + Duration::seconds(2)));
}

#[test]
fn a_token_issued_to_a_device_is_new_on_any_other_device_or_agent() {
    let issue_to = |log: &mut Log, id: &str, device: &str| {
        let now = log.now;
        log.push(DomainEvent::TokenIssued(TokenIssued {
            token_id: id.into(),
            tenant: "acme".into(),
            issuer: "sts".into(),
            subject: "role/web".into(),
            client_id: "role-web".into(),
            audience: "api://orders".into(),
            scope: "orders:read".into(),
            issued_at: now,
            expires_at: now + Duration::hours(1),
            not_before: now,
            format: TokenFormat::External,
            kid: None,
            cnf: None,
            parent_token_id: None,
            context: Some(RequestContext {
                ip: None,
                user_agent: None,
                device_id: Some(device.into()),
            }),
        }))
    };
    let mut log = Log::new();
    issue_to(&mut log, "home", "i-1");
    issue_to(&mut log, "stolen", "i-2");
    log.tick(10);
    // Its own device: nothing, however often.
    log.used("home", UseOutcome::Accepted, None, "198.51.100.7", Some("i-1"));
    log.used("home", UseOutcome::Accepted, None, "198.51.100.7", Some("i-1"));
    // The first use at all, but from an agent that is not the device.
    let p = log.used("stolen", UseOutcome::Accepted, None, "198.51.100.7", None);
    let v = log.fold();
    assert_eq!(kinds(&v), vec![(AnomalyKind::NewDevice, p)]);
    let a = &v.detect.anomalies[0];
    assert_eq!(a.token_id.as_deref(), Some("stolen"));
    assert_eq!(a.detail, "first use of the token from agent:agent/1");
}
