//! The `anomalies` projection: detectors over token use, issuance and
//! exchange (DESIGN.md "Projections"), folded with the other views by
//! [`crate::views::TenantViews::apply_timed`].
//!
//! # Determinism
//!
//! Every detector is a pure function of the events before it, their
//! positions and their event time: `metadata.source_time` for imported data,
//! else the writer's `recorded_at` (DESIGN.md "Time"). Anomaly ids are
//! derived from the triggering position, the kind and what it is about
//! (`a-<position>-<kind>-<by>`), so a replay from position 0, a restore from a
//! snapshot and the live fold produce the same anomalies with the same ids.
//! Thresholds are those in force at the event's position: a
//! `DetectorConfigChanged` changes them from its own position on.
//!
//! # Only verified fields
//!
//! The per-token and per-client detectors (concurrent use, new device,
//! use after revocation, never issued, revoked key use, mint burst, exchange
//! escalation and depth) read only fields the ledger verified: a `TokenUsed`'s
//! `token_id`/`subject`/`client_id` (set only when the token's signature
//! verified) and the ledger's own record of the token; never `claimed_*`. A
//! forged token naming a victim's token id or client counts only towards
//! the per-ip and per-validator verification-failure spike.
//!
//! # Bounded state
//!
//! Windows hold at most threshold + 1 entries per key; per-token use state
//! is forgotten [`USE_MEMORY_SECONDS`] after the token's last use; anomalies
//! are kept `anomaly_retention_seconds`; risk signals until they expire.
//! Forgetting is driven by event time, so it is deterministic too.

use crate::events::*;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;

/// How serious an anomaly is (the same scale as a risk signal's level).
pub use crate::events::RiskLevel as Severity;

/// Per-token use state (networks, devices) is forgotten this many seconds
/// (event time) after the token's last use.
pub const USE_MEMORY_SECONDS: i64 = 86_400;

/// At most this many devices (or agents) are remembered per token and per
/// workload; a token seen on more is reported by `concurrent_use` anyway.
pub const DEVICES_PER_KEY: usize = 32;

/// At most this many evidence positions are kept per anomaly (the newest).
pub const MAX_EVIDENCE: usize = 64;

/// The anomaly kinds of DESIGN.md "Wire shapes" (the `kind` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A revoked token was presented (refused as `revoked`, or accepted by a
    /// validator whose block list lagged).
    UseAfterRevocation,
    /// A validly signed token the ledger has no `TokenIssued` for
    /// (`not_issued`): a stolen signing key or a write-ahead violation.
    NeverIssued,
    /// One token used from distinct networks (IPv4 /24, IPv6 /64) or
    /// devices within `concurrent_use_window_seconds`.
    ConcurrentUse,
    /// First use of a token, or of a workload's tokens, from a device or
    /// agent never seen for it before. A token whose `TokenIssued.context`
    /// names a `device_id` is bound to that device: its first use from any
    /// other device or agent is new (an instance credential used from a
    /// laptop).
    NewDevice,
    /// More than `mint_burst_per_subject` / `mint_burst_per_client` tokens
    /// issued within `mint_burst_window_seconds`.
    MintBurst,
    /// At least `verify_failures_per_ip` / `verify_failures_per_validator`
    /// refused verifications within `verify_failure_window_seconds`.
    VerifyFailureSpike,
    /// A token exchange asked for a scope the subject token does not hold.
    ExchangeEscalation,
    /// An exchange chain deeper than `exchange_max_depth`.
    ExchangeDepth,
    /// A token signed by a revoked key was presented (`key_revoked`).
    RevokedKeyUse,
}

impl AnomalyKind {
    /// Every kind, in wire order.
    pub const ALL: [AnomalyKind; 9] = [
        AnomalyKind::UseAfterRevocation,
        AnomalyKind::NeverIssued,
        AnomalyKind::ConcurrentUse,
        AnomalyKind::NewDevice,
        AnomalyKind::MintBurst,
        AnomalyKind::VerifyFailureSpike,
        AnomalyKind::ExchangeEscalation,
        AnomalyKind::ExchangeDepth,
        AnomalyKind::RevokedKeyUse,
    ];

    /// The wire name (`use_after_revocation`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::UseAfterRevocation => "use_after_revocation",
            AnomalyKind::NeverIssued => "never_issued",
            AnomalyKind::ConcurrentUse => "concurrent_use",
            AnomalyKind::NewDevice => "new_device",
            AnomalyKind::MintBurst => "mint_burst",
            AnomalyKind::VerifyFailureSpike => "verify_failure_spike",
            AnomalyKind::ExchangeEscalation => "exchange_escalation",
            AnomalyKind::ExchangeDepth => "exchange_depth",
            AnomalyKind::RevokedKeyUse => "revoked_key_use",
        }
    }

    /// The kind named `s` on the wire.
    pub fn parse(s: &str) -> Option<AnomalyKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The severity a hit of this kind has.
    pub fn severity(self) -> Severity {
        match self {
            AnomalyKind::NeverIssued | AnomalyKind::RevokedKeyUse => Severity::Critical,
            AnomalyKind::UseAfterRevocation | AnomalyKind::ConcurrentUse | AnomalyKind::ExchangeEscalation => {
                Severity::High
            }
            AnomalyKind::MintBurst | AnomalyKind::VerifyFailureSpike | AnomalyKind::ExchangeDepth => Severity::Medium,
            AnomalyKind::NewDevice => Severity::Low,
        }
    }
}

/// The wire name of a severity (`low`, `medium`, `high`, `critical`).
pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// One detector hit: a row of the `anomalies` view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Stable id: `a-<position>-<kind>-<by>` (`by`: what the detector keyed
    /// on: `token`, `subject`, `client`, `ip`, `validator`, `device`).
    pub anomaly_id: String,
    /// What was detected.
    pub kind: AnomalyKind,
    /// How serious.
    pub severity: Severity,
    /// Position of the triggering event in `$all`.
    pub position: u64,
    /// Event time of the triggering event, UTC.
    pub detected_at: DateTime<Utc>,
    /// The subject concerned (verified), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The client concerned (verified), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The token concerned (verified), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// The address concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The validator concerned (for a verification-failure spike per
    /// validator), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator: Option<String>,
    /// Positions of the events it rests on, ascending; the triggering one
    /// last. At most [`MAX_EVIDENCE`].
    pub evidence: Vec<u64>,
    /// What was seen, for a person.
    pub detail: String,
}

impl Anomaly {
    /// The anomaly as JSON for the API, with `tenant` added; times RFC 3339 UTC.
    pub fn to_json(&self, tenant: &str) -> Value {
        json!({
            "anomaly_id": self.anomaly_id,
            "tenant": tenant,
            "kind": self.kind.as_str(),
            "severity": severity_name(self.severity),
            "position": self.position,
            "detected_at": self.detected_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            "subject": self.subject,
            "client_id": self.client_id,
            "token_id": self.token_id,
            "ip": self.ip,
            "validator": self.validator,
            "evidence": self.evidence,
            "detail": self.detail,
        })
    }
}

/// A risk signal in force: a row of the `risk_signals` view, from its
/// `RiskSignalReceived`; dropped once the view's now passes `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskSignal {
    /// Position of the `RiskSignalReceived`.
    pub position: u64,
    /// When it was recorded, UTC.
    pub received_at: DateTime<Utc>,
    /// The feed that sent it.
    pub source: String,
    /// Subject concerned.
    pub subject: Option<String>,
    /// Client concerned.
    pub client_id: Option<String>,
    /// Address concerned.
    pub ip: Option<String>,
    /// How serious.
    pub level: RiskLevel,
    /// The feed's own kind.
    pub kind: String,
    /// When it stops mattering, UTC.
    pub expires_at: DateTime<Utc>,
}

/// The detectors' thresholds, all in whole units (seconds or counts).
/// Names on the wire (`DetectorConfigChanged.thresholds`) are the field
/// names; a threshold not named keeps its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Window of `concurrent_use`, seconds (default 300).
    pub concurrent_use_window_seconds: i64,
    /// Window of `mint_burst`, seconds (default 60).
    pub mint_burst_window_seconds: i64,
    /// Tokens per subject within the window that make a burst: more than
    /// this (default 30).
    pub mint_burst_per_subject: i64,
    /// Tokens per client within the window that make a burst: more than
    /// this (default 300).
    pub mint_burst_per_client: i64,
    /// Window of `verify_failure_spike`, seconds (default 60).
    pub verify_failure_window_seconds: i64,
    /// Refused verifications per ip within the window that make a spike:
    /// at least this (default 20).
    pub verify_failures_per_ip: i64,
    /// Refused verifications per validator within the window that make a
    /// spike: at least this (default 200).
    pub verify_failures_per_validator: i64,
    /// Exchange chains deeper than this are reported (default 2).
    pub exchange_max_depth: i64,
    /// The same kind about the same key is reported at most once per this
    /// many seconds (default 300).
    pub realert_seconds: i64,
    /// Anomalies older than this are dropped from the view, seconds
    /// (default 30 days).
    pub anomaly_retention_seconds: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            concurrent_use_window_seconds: 300,
            mint_burst_window_seconds: 60,
            mint_burst_per_subject: 30,
            mint_burst_per_client: 300,
            verify_failure_window_seconds: 60,
            verify_failures_per_ip: 20,
            verify_failures_per_validator: 200,
            exchange_max_depth: 2,
            realert_seconds: 300,
            anomaly_retention_seconds: 30 * 86_400,
        }
    }
}

impl Thresholds {
    /// Every threshold name with its (min, max).
    pub const NAMES: [(&'static str, i64, i64); 10] = [
        ("concurrent_use_window_seconds", 1, 86_400),
        ("mint_burst_window_seconds", 1, 86_400),
        ("mint_burst_per_subject", 1, 1_000_000_000),
        ("mint_burst_per_client", 1, 1_000_000_000),
        ("verify_failure_window_seconds", 1, 86_400),
        ("verify_failures_per_ip", 1, 1_000_000_000),
        ("verify_failures_per_validator", 1, 1_000_000_000),
        ("exchange_max_depth", 1, 64),
        ("realert_seconds", 0, 86_400),
        ("anomaly_retention_seconds", 3_600, 366 * 86_400),
    ];

    fn slot(&mut self, name: &str) -> Option<&mut i64> {
        Some(match name {
            "concurrent_use_window_seconds" => &mut self.concurrent_use_window_seconds,
            "mint_burst_window_seconds" => &mut self.mint_burst_window_seconds,
            "mint_burst_per_subject" => &mut self.mint_burst_per_subject,
            "mint_burst_per_client" => &mut self.mint_burst_per_client,
            "verify_failure_window_seconds" => &mut self.verify_failure_window_seconds,
            "verify_failures_per_ip" => &mut self.verify_failures_per_ip,
            "verify_failures_per_validator" => &mut self.verify_failures_per_validator,
            "exchange_max_depth" => &mut self.exchange_max_depth,
            "realert_seconds" => &mut self.realert_seconds,
            "anomaly_retention_seconds" => &mut self.anomaly_retention_seconds,
            _ => return None,
        })
    }

    /// The defaults overridden by `named`.
    ///
    /// Errors: a name that is not a threshold, a value that is not a whole
    /// number or is out of its range (see [`Thresholds::NAMES`]); the message
    /// names it.
    pub fn with(named: &BTreeMap<String, f64>) -> Result<Thresholds, String> {
        let mut t = Thresholds::default();
        for (name, value) in named {
            let Some(&(_, min, max)) = Self::NAMES.iter().find(|(n, _, _)| n == name) else {
                return Err(format!("unknown threshold {name:?}"));
            };
            if value.fract() != 0.0 || !value.is_finite() || *value < min as f64 || *value > max as f64 {
                return Err(format!("threshold {name:?} must be a whole number from {min} to {max}"));
            }
            *t.slot(name).expect("named") = *value as i64;
        }
        Ok(t)
    }

    /// The thresholds as a name → value map.
    pub fn to_map(&self) -> BTreeMap<String, i64> {
        let mut t = *self;
        Self::NAMES
            .iter()
            .map(|(n, _, _)| (n.to_string(), *t.slot(n).expect("named")))
            .collect()
    }
}

/// Timestamps (event time, seconds) and positions within a window.
type Window = VecDeque<(i64, u64)>;

/// What a token's accepted uses showed so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct TokenUses {
    /// Network → (last use, its position).
    nets: Vec<(String, i64, u64)>,
    /// Device id → (last use, its position).
    devices: Vec<(String, i64, u64)>,
    /// Devices or agents ever seen (bounded).
    seen: Vec<String>,
    last: i64,
}

/// The detectors' state of one tenant; part of its views and of their
/// snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Detectors {
    /// Thresholds in force.
    pub thresholds: Thresholds,
    /// Rule ids in force for the tenant (`None`: every loaded rule).
    pub rules: Option<Vec<String>>,
    /// Position of the `DetectorConfigChanged` in force, if any.
    pub config_position: Option<u64>,
    /// Detected anomalies, in position order (the view).
    pub anomalies: VecDeque<Anomaly>,
    /// Risk signals in force, in position order (the view).
    pub risk_signals: Vec<RiskSignal>,
    uses: HashMap<String, TokenUses>,
    workloads: HashMap<String, Vec<String>>,
    mints_by_subject: HashMap<String, Window>,
    mints_by_client: HashMap<String, Window>,
    failures_by_ip: HashMap<String, Window>,
    failures_by_validator: HashMap<String, Window>,
    /// `kind/by/key` → event time it was last reported.
    reported: HashMap<String, i64>,
    next_sweep: i64,
}

/// What the detectors need to know of a token from the views.
#[derive(Debug, Clone)]
pub struct KnownToken {
    /// Verified subject.
    pub subject: String,
    /// Verified client.
    pub client_id: String,
    /// Its audience.
    pub audience: String,
    /// Granted scope, space-delimited.
    pub scope: String,
    /// Whether it is revoked (directly, by its chain or by selector).
    pub revoked: bool,
}

/// The facts about the views an event needs, read before the detectors run.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The token a `TokenUsed` names (verified `token_id`), or the subject
    /// token of a `TokenExchanged`.
    pub token: Option<KnownToken>,
    /// Exchange depth of an issued token with a parent.
    pub depth: usize,
}

/// The network an address belongs to for `concurrent_use`: IPv4 /24, IPv6
/// /64 (an IPv4-mapped IPv6 address counts as IPv4); text that is not an
/// address is its own network.
pub fn network_of(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => {
            let o = a.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        Ok(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
            Some(v4) => network_of(&v4.to_string()),
            None => {
                let s = a.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Err(_) => ip.to_owned(),
    }
}

fn trim(w: &mut Window, from: i64) {
    while w.front().is_some_and(|(t, _)| *t < from) {
        w.pop_front();
    }
}

/// Event-time seconds to a UTC time.
fn utc(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

/// One hit before it becomes an [`Anomaly`].
struct Hit {
    kind: AnomalyKind,
    by: &'static str,
    key: String,
    subject: Option<String>,
    client_id: Option<String>,
    token_id: Option<String>,
    ip: Option<String>,
    validator: Option<String>,
    evidence: Vec<u64>,
    detail: String,
}

impl Hit {
    fn new(kind: AnomalyKind, by: &'static str, key: &str, detail: String) -> Hit {
        Hit {
            kind,
            by,
            key: key.to_owned(),
            subject: None,
            client_id: None,
            token_id: None,
            ip: None,
            validator: None,
            evidence: Vec::new(),
            detail,
        }
    }
}

impl Detectors {
    /// Runs the detectors on one event at `position`, event time `at` (Unix
    /// seconds, UTC), with `facts` read from the views (after the views
    /// applied the event). Returns how many anomalies it added.
    pub fn apply(
        &mut self,
        position: u64,
        at: i64,
        recorded_at: DateTime<Utc>,
        event: &DomainEvent,
        facts: &Facts,
    ) -> usize {
        if at >= self.next_sweep {
            self.sweep(at);
        }
        let mut hits: Vec<Hit> = Vec::new();
        match event {
            DomainEvent::TokenUsed(u) => self.used(position, at, u, facts, &mut hits),
            DomainEvent::TokenIssued(t) => self.issued(position, at, t, facts, &mut hits),
            DomainEvent::TokenExchanged(x) => {
                if let (Some(tok), Some(asked)) = (&facts.token, &x.requested_scope) {
                    let held: Vec<&str> = tok.scope.split(' ').collect();
                    let wider: Vec<&str> = asked
                        .split(' ')
                        .filter(|s| !s.is_empty() && !held.contains(s))
                        .collect();
                    if !wider.is_empty() {
                        let mut h = Hit::new(
                            AnomalyKind::ExchangeEscalation,
                            "token",
                            &x.subject_token_id,
                            format!(
                                "exchange asked for scope {:?} the subject token does not hold",
                                wider.join(" ")
                            ),
                        );
                        h.subject = Some(tok.subject.clone());
                        h.client_id = Some(x.client_id.clone());
                        h.token_id = Some(x.subject_token_id.clone());
                        h.evidence = vec![position];
                        hits.push(h);
                    }
                }
            }
            DomainEvent::GrantRefused(g) if g.path == GrantPath::Exchange => {
                let kind = match g.reason {
                    RefusalReason::Scope => AnomalyKind::ExchangeEscalation,
                    RefusalReason::Depth => AnomalyKind::ExchangeDepth,
                    _ => return 0,
                };
                // The subject of a refused exchange comes from the subject
                // token the server verified; the client is the caller.
                let key = g.subject.clone().unwrap_or_else(|| g.client_id.clone());
                let mut h = Hit::new(kind, "subject", &key, format!("exchange refused: {}", g.detail));
                h.subject = g.subject.clone();
                h.client_id = Some(g.client_id.clone());
                h.evidence = vec![position];
                hits.push(h);
            }
            DomainEvent::DetectorConfigChanged(c) => {
                // Validated by the server before it was appended; a name this
                // build does not know is ignored rather than failing a replay.
                let known: BTreeMap<String, f64> = c
                    .thresholds
                    .iter()
                    .filter(|(k, v)| Thresholds::with(&BTreeMap::from([((*k).clone(), **v)])).is_ok())
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                self.thresholds = Thresholds::with(&known).unwrap_or_default();
                self.rules = c.rules.clone();
                self.config_position = Some(position);
            }
            DomainEvent::RiskSignalReceived(r) if r.expires_at.timestamp() > at => {
                self.risk_signals.push(RiskSignal {
                    position,
                    received_at: recorded_at,
                    source: r.source.clone(),
                    subject: r.subject.clone(),
                    client_id: r.client_id.clone(),
                    ip: r.ip.clone(),
                    level: r.level,
                    kind: r.kind.clone(),
                    expires_at: r.expires_at,
                });
            }
            _ => {}
        }
        let mut added = 0;
        for h in hits {
            let mark = format!("{}/{}/{}", h.kind.as_str(), h.by, h.key);
            if let Some(last) = self.reported.get(&mark)
                && at < last.saturating_add(self.thresholds.realert_seconds)
            {
                continue;
            }
            self.reported.insert(mark, at);
            let mut evidence = h.evidence;
            evidence.sort_unstable();
            evidence.dedup();
            if evidence.len() > MAX_EVIDENCE {
                evidence.drain(..evidence.len() - MAX_EVIDENCE);
            }
            self.anomalies.push_back(Anomaly {
                anomaly_id: format!("a-{position}-{}-{}", h.kind.as_str(), h.by),
                kind: h.kind,
                severity: h.kind.severity(),
                position,
                detected_at: utc(at),
                subject: h.subject,
                client_id: h.client_id,
                token_id: h.token_id,
                ip: h.ip,
                validator: h.validator,
                evidence,
                detail: h.detail,
            });
            added += 1;
        }
        added
    }

    fn used(&mut self, position: u64, at: i64, u: &TokenUsed, facts: &Facts, hits: &mut Vec<Hit>) {
        let th = self.thresholds;
        let ip = u.context.as_ref().and_then(|c| c.ip.clone());
        if u.outcome == UseOutcome::Rejected {
            // Failures count per ip and per validator only: a forged token's
            // claims never make anyone a suspect.
            let from = at - th.verify_failure_window_seconds;
            if let Some(ip) = &ip {
                let w = self.failures_by_ip.entry(ip.clone()).or_default();
                trim(w, from);
                w.push_back((at, position));
                while w.len() as i64 > th.verify_failures_per_ip {
                    w.pop_front();
                }
                if w.len() as i64 >= th.verify_failures_per_ip {
                    let mut h = Hit::new(
                        AnomalyKind::VerifyFailureSpike,
                        "ip",
                        ip,
                        format!(
                            "{} refused verifications from {ip} within {} s",
                            w.len(),
                            th.verify_failure_window_seconds
                        ),
                    );
                    h.ip = Some(ip.clone());
                    h.evidence = w.iter().map(|(_, p)| *p).collect();
                    hits.push(h);
                }
            }
            let w = self.failures_by_validator.entry(u.validator.clone()).or_default();
            trim(w, from);
            w.push_back((at, position));
            while w.len() as i64 > th.verify_failures_per_validator {
                w.pop_front();
            }
            if w.len() as i64 >= th.verify_failures_per_validator {
                let mut h = Hit::new(
                    AnomalyKind::VerifyFailureSpike,
                    "validator",
                    &u.validator,
                    format!(
                        "{} refused verifications at validator {} within {} s",
                        w.len(),
                        u.validator,
                        th.verify_failure_window_seconds
                    ),
                );
                h.validator = Some(u.validator.clone());
                h.evidence = w.iter().map(|(_, p)| *p).collect();
                hits.push(h);
            }
        }
        // Everything below is about a token whose signature verified.
        let Some(token_id) = &u.token_id else { return };
        // A use is the token's only for its own audience: a report naming a
        // token id with another audience (a validator cannot accept a token
        // not meant for it) is not attributed to the token, so naming
        // someone's token id does not make its subject a suspect.
        let token = facts.token.as_ref().filter(|t| t.audience == u.audience);
        let kind = match (u.outcome, u.reason.as_deref()) {
            (UseOutcome::Rejected, Some("revoked")) => Some(AnomalyKind::UseAfterRevocation),
            (UseOutcome::Rejected, Some("not_issued")) => Some(AnomalyKind::NeverIssued),
            (UseOutcome::Rejected, Some("key_revoked")) => Some(AnomalyKind::RevokedKeyUse),
            (UseOutcome::Accepted, _) if token.is_some_and(|t| t.revoked) => Some(AnomalyKind::UseAfterRevocation),
            _ => None,
        };
        // The ledger's record names the subject and client when it has one;
        // else the verified claims do.
        let subject = token.map(|t| t.subject.clone()).or_else(|| u.subject.clone());
        let client = token.map(|t| t.client_id.clone()).or_else(|| u.client_id.clone());
        if let Some(kind) = kind {
            let detail = match kind {
                AnomalyKind::UseAfterRevocation => {
                    format!("revoked token presented to {} at {}", u.audience, u.validator)
                }
                AnomalyKind::NeverIssued => "validly signed token with no matching TokenIssued".to_owned(),
                _ => "token signed by a revoked key presented".to_owned(),
            };
            let mut h = Hit::new(kind, "token", token_id, detail);
            h.subject = subject.clone();
            h.client_id = client.clone();
            h.token_id = Some(token_id.clone());
            h.ip = ip.clone();
            h.evidence = vec![position];
            hits.push(h);
        }
        if u.outcome != UseOutcome::Accepted || token.is_none() {
            return;
        }
        let none = RequestContext::default();
        let ctx = u.context.as_ref().unwrap_or(&none);
        let state = self.uses.entry(token_id.clone()).or_default();
        state.last = at;
        let from = at - th.concurrent_use_window_seconds;
        state.nets.retain(|(_, t, _)| *t >= from);
        state.devices.retain(|(_, t, _)| *t >= from);
        let mut concurrent: Option<(String, Vec<u64>)> = None;
        if let Some(ip) = &ctx.ip {
            let net = network_of(ip);
            let others: Vec<&(String, i64, u64)> = state.nets.iter().filter(|(n, _, _)| *n != net).collect();
            if !others.is_empty() {
                let mut ev: Vec<u64> = others.iter().map(|(_, _, p)| *p).collect();
                ev.push(position);
                let nets: Vec<&str> = others.iter().map(|(n, _, _)| n.as_str()).collect();
                concurrent = Some((
                    format!(
                        "used from {net} and {} within {} s",
                        nets.join(", "),
                        th.concurrent_use_window_seconds
                    ),
                    ev,
                ));
            }
            state.nets.retain(|(n, _, _)| *n != net);
            state.nets.push((net, at, position));
        }
        if let Some(dev) = &ctx.device_id {
            let others: Vec<&(String, i64, u64)> = state.devices.iter().filter(|(d, _, _)| d != dev).collect();
            if concurrent.is_none() && !others.is_empty() {
                let mut ev: Vec<u64> = others.iter().map(|(_, _, p)| *p).collect();
                ev.push(position);
                concurrent = Some((
                    format!(
                        "used from {} devices within {} s",
                        others.len() + 1,
                        th.concurrent_use_window_seconds
                    ),
                    ev,
                ));
            }
            state.devices.retain(|(d, _, _)| d != dev);
            state.devices.push((dev.clone(), at, position));
            if state.devices.len() > DEVICES_PER_KEY {
                state.devices.remove(0);
            }
        }
        if let Some((detail, evidence)) = concurrent {
            let mut h = Hit::new(AnomalyKind::ConcurrentUse, "token", token_id, detail);
            h.subject = subject.clone();
            h.client_id = client.clone();
            h.token_id = Some(token_id.clone());
            h.ip = ctx.ip.clone();
            h.evidence = evidence;
            hits.push(h);
        }
        // New device or agent: for the token, and for a workload (a token
        // whose subject is its own client) across its tokens.
        let agent = ctx.device_id.as_ref().map(|d| format!("device:{d}")).or_else(|| {
            ctx.user_agent
                .as_ref()
                .map(|a| format!("agent:{}", a.chars().take(256).collect::<String>()))
        });
        if let Some(agent) = agent {
            let mut fresh = false;
            if !state.seen.contains(&agent) {
                fresh = !state.seen.is_empty();
                if state.seen.len() < DEVICES_PER_KEY {
                    state.seen.push(agent.clone());
                }
            }
            let workload = subject.is_some() && subject == client;
            let mut fresh_workload = false;
            if workload && let Some(c) = &client {
                let seen = self.workloads.entry(c.clone()).or_default();
                if !seen.contains(&agent) {
                    fresh_workload = !seen.is_empty();
                    if seen.len() < DEVICES_PER_KEY {
                        seen.push(agent.clone());
                    }
                }
            }
            if fresh || fresh_workload {
                let (by, key) = if fresh {
                    ("token", token_id.clone())
                } else {
                    ("client", client.clone().unwrap_or_default())
                };
                let whose = if fresh { "token" } else { "workload" };
                let mut h = Hit::new(
                    AnomalyKind::NewDevice,
                    by,
                    &key,
                    format!("first use of the {whose} from {agent}"),
                );
                h.subject = subject;
                h.client_id = client;
                h.token_id = Some(token_id.clone());
                h.ip = ctx.ip.clone();
                h.evidence = vec![position];
                hits.push(h);
            }
        }
    }

    fn issued(&mut self, position: u64, at: i64, t: &TokenIssued, facts: &Facts, hits: &mut Vec<Hit>) {
        let th = self.thresholds;
        // Issued to a device: that device is the token's first one seen, so
        // its first use from anywhere else is a new device.
        if let Some(dev) = t.context.as_ref().and_then(|c| c.device_id.as_ref()) {
            let state = self.uses.entry(t.token_id.clone()).or_default();
            if state.seen.is_empty() {
                state.seen.push(format!("device:{dev}"));
                state.last = at;
            }
        }
        let from = at - th.mint_burst_window_seconds;
        for (by, key, max) in [
            ("subject", &t.subject, th.mint_burst_per_subject),
            ("client", &t.client_id, th.mint_burst_per_client),
        ] {
            let map = if by == "subject" {
                &mut self.mints_by_subject
            } else {
                &mut self.mints_by_client
            };
            let w = map.entry(key.clone()).or_default();
            trim(w, from);
            w.push_back((at, position));
            while w.len() as i64 > max + 1 {
                w.pop_front();
            }
            if w.len() as i64 > max {
                let mut h = Hit::new(
                    AnomalyKind::MintBurst,
                    by,
                    key,
                    format!(
                        "more than {max} tokens for {by} {key} within {} s",
                        th.mint_burst_window_seconds
                    ),
                );
                h.subject = Some(t.subject.clone());
                h.client_id = Some(t.client_id.clone());
                if by == "client" {
                    h.subject = None;
                }
                h.evidence = w.iter().map(|(_, p)| *p).collect();
                hits.push(h);
            }
        }
        if t.parent_token_id.is_some() && facts.depth as i64 > th.exchange_max_depth {
            let mut h = Hit::new(
                AnomalyKind::ExchangeDepth,
                "token",
                &t.token_id,
                format!(
                    "exchange chain {} deep (more than {})",
                    facts.depth, th.exchange_max_depth
                ),
            );
            h.subject = Some(t.subject.clone());
            h.client_id = Some(t.client_id.clone());
            h.token_id = Some(t.token_id.clone());
            h.evidence = vec![position];
            hits.push(h);
        }
    }

    /// Forgets what fell out of every window and the retention; runs at most
    /// once per 60 s of event time.
    fn sweep(&mut self, at: i64) {
        self.next_sweep = at.saturating_add(60);
        let th = self.thresholds;
        let keep = |w: &Window, span: i64| w.back().is_some_and(|(t, _)| *t >= at - span);
        self.mints_by_subject
            .retain(|_, w| keep(w, th.mint_burst_window_seconds));
        self.mints_by_client
            .retain(|_, w| keep(w, th.mint_burst_window_seconds));
        self.failures_by_ip
            .retain(|_, w| keep(w, th.verify_failure_window_seconds));
        self.failures_by_validator
            .retain(|_, w| keep(w, th.verify_failure_window_seconds));
        self.uses.retain(|_, u| u.last >= at - USE_MEMORY_SECONDS);
        self.reported.retain(|_, t| *t >= at - th.realert_seconds);
        self.risk_signals.retain(|r| r.expires_at.timestamp() > at);
        while self
            .anomalies
            .front()
            .is_some_and(|a| a.detected_at.timestamp() < at - th.anomaly_retention_seconds)
        {
            self.anomalies.pop_front();
        }
    }

    /// The anomalies after position `after` (exclusive), in position order.
    pub fn anomalies_after(&self, after: u64) -> impl Iterator<Item = &Anomaly> {
        let start = self.anomalies.partition_point(|a| a.position <= after);
        self.anomalies.range(start..)
    }

    /// The views' part for [`crate::views::TenantViews::canonical`]: the
    /// anomalies, the risk signals in force and the configuration.
    pub fn canonical(&self) -> Value {
        json!({
            "thresholds": self.thresholds.to_map(),
            "rules": self.rules,
            "config_position": self.config_position,
            "anomalies": self.anomalies.iter().map(|a| a.to_json("")).collect::<Vec<_>>(),
            "risk_signals": self.risk_signals,
        })
    }
}

/// `metadata.source_time` of an envelope (RFC 3339; importers keep the
/// original time there), if present and valid: the detectors' event time
/// for imported data.
pub fn source_time(metadata: &Value) -> Option<DateTime<Utc>> {
    metadata
        .get("source_time")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}
