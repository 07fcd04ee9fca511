//! Token lifecycle events: issuance, use, exchange, revocation, refusal.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How a token was minted. `external` is a token minted by an external issuer
/// that recorded it write-ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TokenFormat {
    /// PASETO v4.public (Ed25519 signature).
    #[serde(rename = "v4.public")]
    V4Public,
    /// PASETO v4.local (XChaCha20 + BLAKE2b, symmetric).
    #[serde(rename = "v4.local")]
    V4Local,
    /// Minted by an external issuer; we only hold the record.
    #[serde(rename = "external")]
    External,
}

impl TokenFormat {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFormat::V4Public => "v4.public",
            TokenFormat::V4Local => "v4.local",
            TokenFormat::External => "external",
        }
    }
}

/// What the request being authorized looked like: the end user's address and
/// agent, not the validator's own connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestContext {
    /// IPv4 or IPv6 address, textual form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The HTTP `User-Agent` or the agent's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// A stable device identifier, if the caller has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

/// `TokenIssued` v1: a token was (or is about to be) handed out. Recorded
/// write-ahead: the token leaves the issuer only after this commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIssued {
    /// The token id (`jti`); the stream is `token-<jti>`.
    pub token_id: String,
    /// Tenant, stamped from the credential.
    pub tenant: String,
    /// Issuer name (ours: `tokenledger`; external: the issuer principal).
    pub issuer: String,
    /// The subject (`sub`).
    pub subject: String,
    /// The client the token was minted for, stamped from the credential.
    pub client_id: String,
    /// The single audience (`aud`).
    pub audience: String,
    /// Space-delimited scope (RFC 8693 §4.2).
    pub scope: String,
    /// `iat`, RFC 3339 UTC.
    pub issued_at: DateTime<Utc>,
    /// `exp`, RFC 3339 UTC.
    pub expires_at: DateTime<Utc>,
    /// `nbf`, RFC 3339 UTC.
    pub not_before: DateTime<Utc>,
    /// Token format.
    pub format: TokenFormat,
    /// PASERK id (`k4.pid.…` / `k4.lid.…`) of the signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Confirmation claim (RFC 7800), e.g. `{"jkt": "…"}` for DPoP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<serde_json::Map<String, serde_json::Value>>,
    /// The token this one was exchanged from (RFC 8693).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_token_id: Option<String>,
    /// The request that obtained the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<RequestContext>,
}

/// Whether a validator accepted a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UseOutcome {
    /// The token was accepted.
    Accepted,
    /// The token was refused; `reason` says why.
    Rejected,
}

/// `TokenUsed` v1: a validator verified a token. Only a token whose signature
/// verified is attributed (`token_id`, `subject`, `client_id`); otherwise only
/// the `claimed_*` fields are set and no detector attributes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenUsed {
    /// The validator principal, stamped from the credential.
    pub validator: String,
    /// The audience the token was presented to.
    pub audience: String,
    /// Accepted or rejected.
    pub outcome: UseOutcome,
    /// Why it was rejected: a verify reason of DESIGN.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the use happened, RFC 3339 UTC (reported by the validator, within the allowed skew).
    pub at: DateTime<Utc>,
    /// The request being authorized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<RequestContext>,
    /// Verified token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Verified subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Verified client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Token id claimed by a token whose signature did not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_token_id: Option<String>,
    /// Subject claimed by a token whose signature did not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_subject: Option<String>,
    /// Client claimed by a token whose signature did not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_client_id: Option<String>,
}

/// `TokenExchanged` v1: an RFC 8693 token exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenExchanged {
    /// The `subject_token`'s id.
    pub subject_token_id: String,
    /// The `actor_token`'s id, for delegation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_token_id: Option<String>,
    /// The id of the token minted by the exchange.
    pub new_token_id: String,
    /// The client that asked for the exchange.
    pub client_id: String,
    /// Requested `audience` (RFC 8693 §2.1).
    pub requested_audience: String,
    /// Requested `scope`, space-delimited; absent when none was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_scope: Option<String>,
    /// Granted audience.
    pub granted_audience: String,
    /// Granted scope, space-delimited.
    pub granted_scope: String,
}

/// What a selector revocation or a cutoff applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectorScope {
    /// Every token of one subject.
    Subject,
    /// Every token minted for one client.
    Client,
    /// Every token of one issuer.
    Issuer,
}

/// A revocation by selector: every token of a subject, client or issuer
/// issued at an earlier position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// What the key names.
    pub scope: SelectorScope,
    /// The subject, client id or issuer name.
    pub key: String,
}

/// `TokenRevoked` v1: by token id or by selector, exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRevoked {
    /// The revoked token (and every token exchanged from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// The selector, for a revocation of many tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Why.
    pub reason: String,
    /// Who revoked, stamped from the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The grant path a refusal happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantPath {
    /// `POST /v1/tokens`.
    Mint,
    /// RFC 8693 exchange at `POST /oauth2/token`.
    Exchange,
    /// RFC 6749 `client_credentials` at `POST /oauth2/token`.
    ClientCredentials,
    /// An external issuer's `TokenIssued` append.
    Append,
}

/// What a refused grant asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Requested audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Requested scope, space-delimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Requested lifetime, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// Requested format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TokenFormat>,
}

/// Why a grant was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The client has no policy.
    NoPolicy,
    /// The audience is not in the client's policy.
    Audience,
    /// A scope is not allowed for the audience.
    Scope,
    /// The lifetime exceeds the policy's `max_ttl_seconds`.
    Ttl,
    /// The format is not in the policy's `formats`.
    Format,
    /// A minting cutoff matches; `cutoff_id` names it.
    Cutoff,
    /// An exchange would make the chain deeper than allowed.
    Depth,
    /// An exchange by a caller that is not an audience of the subject token
    /// (its policy does not serve it) and is not named in its `may_act`.
    NotServed,
}

/// `GrantRefused` v1: a mint, exchange, grant or append was refused by policy
/// or by a cutoff. The only record a refused request leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRefused {
    /// Where the grant was asked.
    pub path: GrantPath,
    /// The client that asked.
    pub client_id: String,
    /// The subject the token was for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// What was asked.
    pub requested: GrantRequest,
    /// Why it was refused.
    pub reason: RefusalReason,
    /// Human-readable detail naming what was refused.
    pub detail: String,
    /// The cutoff that refused it, for `reason: cutoff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutoff_id: Option<String>,
}
