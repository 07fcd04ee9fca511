//! Tenants, principals, keys, issuers, webhooks and client policies.

use crate::events::token::TokenFormat;
use crate::role::Role;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `TenantCreated` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantCreated {
    /// The tenant's name.
    pub tenant: String,
    /// Who created it (`bootstrap` or an operator command).
    pub by: String,
}

/// `PrincipalCreated` v1. `secret_hash` is the hex SHA-256 of the random part
/// of the credential; it is redacted from every read of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalCreated {
    /// The principal's name; for an issuer also its `client_id`.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its tenant.
    pub tenant: String,
    /// The credential id (`tl_<secret_id>_…`).
    pub secret_id: String,
    /// Hex SHA-256 of the credential's random part. Never in a response.
    pub secret_hash: String,
    /// Who created it.
    pub by: String,
}

/// `PrincipalDisabled` v1: the principal's credentials stop working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalDisabled {
    /// The principal's name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Who disabled it.
    pub by: String,
}

/// `PrincipalSecretRotated` v1: a new secret replaces the old one at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSecretRotated {
    /// The principal's name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// The new credential id.
    pub secret_id: String,
    /// Hex SHA-256 of the new random part. Never in a response.
    pub secret_hash: String,
    /// Who rotated it.
    pub by: String,
}

/// What a signing key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPurpose {
    /// `v4.public`: Ed25519 signing; the public half is published.
    Public,
    /// `v4.local`: symmetric; never published.
    Local,
}

/// `SigningKeyAdded` v1: a key joins the ring in state *pending*. The secret
/// part exists only sealed (AEAD under the key-encryption key, tenant and kid
/// as associated data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyAdded {
    /// PASERK id: `k4.pid.…` or `k4.lid.…`.
    pub kid: String,
    /// Public or local.
    pub purpose: KeyPurpose,
    /// `Ed25519` or `XChaCha20-BLAKE2b`.
    pub algorithm: String,
    /// The key signs nothing before this time.
    pub not_before: DateTime<Utc>,
    /// The key signs nothing after this time.
    pub not_after: DateTime<Utc>,
    /// PASERK `k4.public.…`, for public keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The sealed secret key, base64url; never in a response.
    pub sealed_secret: String,
}

/// `SigningKeyActivated` v1: the key now signs new tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyActivated {
    /// PASERK id.
    pub kid: String,
    /// Public or local.
    pub purpose: KeyPurpose,
}

/// `SigningKeyRetired` v1: verify-only until its last token expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyRetired {
    /// PASERK id.
    pub kid: String,
    /// Public or local.
    pub purpose: KeyPurpose,
    /// Tokens it signed verify until this time, RFC 3339 UTC.
    pub verify_until: DateTime<Utc>,
}

/// `SigningKeyRevoked` v1: every token the key signed fails at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyRevoked {
    /// PASERK id.
    pub kid: String,
    /// Public or local.
    pub purpose: KeyPurpose,
    /// Why.
    pub reason: String,
}

/// `IssuerTrusted` v1: an external issuer whose tokens verify here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerTrusted {
    /// The issuer's name (the `iss` of its tokens).
    pub name: String,
    /// PASERK `k4.public.…` keys.
    pub keys: Vec<String>,
    /// The longest token lifetime accepted from it, seconds.
    pub max_ttl_seconds: u64,
}

/// `WebhookSet` v1: the tenant's alert webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSet {
    /// The tenant.
    pub tenant: String,
    /// `https://` target URL.
    pub url: String,
    /// Id of the HMAC signing key.
    pub signing_key_id: String,
    /// The HMAC key, sealed; never in a response.
    pub sealed_signing_key: String,
}

/// What a client may mint for one audience.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudiencePolicy {
    /// Scopes it may ask for this audience.
    pub scopes: Vec<String>,
    /// Longest lifetime, seconds.
    pub max_ttl_seconds: u64,
}

/// `ClientPolicySet` v1: what a client may mint. A client with no policy can
/// mint nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPolicySet {
    /// The client (the issuer principal's name).
    pub client_id: String,
    /// Audience → what it may ask of it.
    pub audiences: BTreeMap<String, AudiencePolicy>,
    /// Formats it may mint or record.
    pub formats: Vec<TokenFormat>,
    /// Audiences whose tokens this client receives, and so may exchange (RFC 8693 §2.1).
    #[serde(default)]
    pub serves: Vec<String>,
}
