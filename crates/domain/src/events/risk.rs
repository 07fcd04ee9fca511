//! Risk signals, detector configuration and minting cutoffs.

use crate::events::token::SelectorScope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Severity of a risk signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    /// Informational.
    Low,
    /// Worth a look.
    Medium,
    /// Act on it.
    High,
    /// Act now.
    Critical,
}

/// `RiskSignalReceived` v1: an external risk feed's signal; at least one of
/// subject, client or ip is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskSignalReceived {
    /// The feed that sent it.
    pub source: String,
    /// Subject concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Client concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Address concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// How serious.
    pub level: RiskLevel,
    /// The feed's own kind, e.g. `leaked_credential`.
    pub kind: String,
    /// When the signal stops mattering, RFC 3339 UTC.
    pub expires_at: DateTime<Utc>,
}

/// `DetectorConfigChanged` v1: the thresholds and rules in force from this
/// event's position on, so a rebuild replays history with the thresholds of
/// the time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfigChanged {
    /// The tenant.
    pub tenant: String,
    /// Threshold name → value.
    pub thresholds: std::collections::BTreeMap<String, f64>,
    /// Rule ids in force; absent (`None`): every rule of the rules file,
    /// including rules added to it later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<String>>,
}

/// What a cutoff applies to: the selector scopes plus the whole tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutoffScope {
    /// One subject.
    Subject,
    /// One client.
    Client,
    /// One issuer.
    Issuer,
    /// The whole tenant.
    Tenant,
}

impl From<SelectorScope> for CutoffScope {
    fn from(s: SelectorScope) -> Self {
        match s {
            SelectorScope::Subject => CutoffScope::Subject,
            SelectorScope::Client => CutoffScope::Client,
            SelectorScope::Issuer => CutoffScope::Issuer,
        }
    }
}

/// Whether a cutoff refuses grants or only records that it would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutoffMode {
    /// Refuse matching grants.
    Enforce,
    /// Record only.
    DryRun,
}

/// Why a cutoff was engaged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Ids of the anomalies behind it.
    #[serde(default)]
    pub anomaly_ids: Vec<String>,
    /// Positions of the events behind it.
    #[serde(default)]
    pub positions: Vec<u64>,
}

/// `MintingCutoffEngaged` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintingCutoffEngaged {
    /// The cutoff's id.
    pub cutoff_id: String,
    /// What it applies to.
    pub scope: CutoffScope,
    /// The subject, client, issuer or tenant name.
    pub key: String,
    /// The rule that engaged it, or `manual`.
    pub rule_id: String,
    /// Why.
    pub reason: String,
    /// What it rests on.
    #[serde(default)]
    pub evidence: Evidence,
    /// When it expires, RFC 3339 UTC; the server appends the release then.
    pub until: DateTime<Utc>,
    /// Enforce or dry run.
    pub mode: CutoffMode,
}

/// `MintingCutoffReleased` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintingCutoffReleased {
    /// The cutoff's id.
    pub cutoff_id: String,
    /// Why: `expired` or a person's reason.
    pub reason: String,
    /// Who released it (`server` for an expiry).
    pub by: String,
}
