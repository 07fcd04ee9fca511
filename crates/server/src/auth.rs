//! Zero Trust at the door: who is calling, in which role, for which tenant.
//!
//! Credentials look like `tl_<id>_<secret>` where `<secret>` is 256 random
//! bits in hex; only SHA-256 of the secret is stored (in the
//! `PrincipalCreated` / `PrincipalSecretRotated` event, redacted from every
//! read), looked up by `<id>` and compared in constant time. The bootstrap
//! secret is any string of at least 32 bytes and holds only the bootstrap
//! role.
//!
//! [`allowed`] is the role table of DESIGN.md "Roles", the one place in code
//! that says which role may do what; the README carries the same table.

use crate::problem::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokenledger_domain::role::Role;

/// Something a caller may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Append `TokenIssued` / `TokenRevoked` for its own client (`POST /v1/streams/{s}/events`).
    AppendIssuance,
    /// Read back its own token streams (`GET /v1/streams/token-…`).
    ReadOwnTokenStreams,
    /// Read any stream and `$all` of its tenant (`GET /v1/streams/{s}`, `GET /v1/events`).
    ReadLog,
    /// Mint, exchange, `client_credentials` (`POST /v1/tokens`, `/oauth2/token`).
    Mint,
    /// Revoke its own tokens (`POST /oauth2/revoke`).
    RevokeOwn,
    /// Verify and introspect (`POST /v1/tokens/verify`, `/oauth2/introspect`).
    Verify,
    /// Read the key set and the block list (`GET /v1/keys`, `GET /v1/blocklist`).
    ReadKeysAndBlocklist,
    /// Report uses (`POST /v1/uses`).
    ReportUses,
    /// SQL and Parquet export (`POST /v1/sql`).
    Sql,
    /// Read anomalies and cutoffs (`GET /v1/anomalies`, `GET /v1/cutoffs`).
    ReadAnomalies,
    /// Stream alerts, engage/release cutoffs, revoke by selector, risk
    /// signals, webhooks.
    Respond,
    /// Manage principals, client policies, keys, issuers, detector config, metrics.
    Administer,
    /// Create a tenant and its first admin.
    Bootstrap,
}

/// The role table: whether `role` may do `perm`. Admins may do everything
/// but bootstrap, in their own tenant; bootstrap may do nothing else.
pub fn allowed(role: Role, perm: Permission) -> bool {
    use Permission as P;
    match role {
        Role::Bootstrap => perm == P::Bootstrap,
        Role::Admin => perm != P::Bootstrap,
        Role::Issuer => matches!(
            perm,
            P::AppendIssuance | P::ReadOwnTokenStreams | P::Mint | P::RevokeOwn
        ),
        Role::Validator => matches!(perm, P::Verify | P::ReadKeysAndBlocklist | P::ReportUses),
        Role::Analyst => matches!(perm, P::ReadLog | P::Sql | P::ReadAnomalies),
        Role::Soc => matches!(perm, P::ReadAnomalies | P::Respond),
    }
}

/// An authenticated caller. Stamped fields (`tenant`, `issuer`, `client_id`,
/// `actor`) come from here, never from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant; `None` only for the bootstrap principal.
    pub tenant: Option<String>,
    /// The principal's name (`bootstrap` for the bootstrap secret).
    pub name: String,
    /// The role.
    pub role: Role,
}

impl Caller {
    /// Refuses with 403 unless the caller's role may do `perm`.
    pub fn require(&self, perm: Permission) -> Result<(), ApiError> {
        if allowed(self.role, perm) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "role-not-allowed",
                format!("role {} may not call this endpoint", self.role),
            ))
        }
    }

    /// Refuses with 403 unless the caller may do any of `perms`.
    pub fn require_any(&self, perms: &[Permission]) -> Result<(), ApiError> {
        match perms.iter().find(|p| allowed(self.role, **p)) {
            Some(_) => Ok(()),
            None => self.require(perms[0]),
        }
    }

    /// The caller's tenant; every role but bootstrap has one.
    pub fn tenant(&self) -> Result<&str, ApiError> {
        self.tenant
            .as_deref()
            .ok_or_else(|| ApiError::forbidden("role-not-allowed", "the bootstrap principal has no tenant"))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = match bearer(&parts.headers) {
            Ok(s) => s,
            Err(Credential::Ambiguous) => {
                state.metrics.auth_failures.inc();
                return Err(ApiError {
                    detail: "more than one Authorization header: the credential is ambiguous".into(),
                    ..ApiError::unauthenticated()
                });
            }
            Err(Credential::Missing) => return Err(ApiError::unauthenticated()),
        };
        let caller = state.authenticate(secret);
        if caller.is_none() {
            state.metrics.auth_failures.inc();
        }
        caller.ok_or_else(ApiError::unauthenticated)
    }
}

/// Why a request carries no usable bearer credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// No `Authorization` header, not `Bearer <secret>`, or not visible ASCII.
    Missing,
    /// More than one `Authorization` header: which one counts is ambiguous
    /// (a proxy and the server could disagree), so neither does.
    Ambiguous,
}

/// The secret of the request's single `Authorization: Bearer <secret>`
/// header (scheme case-insensitive, secret trimmed). Every endpoint that
/// authenticates reads the credential through here.
pub fn bearer(headers: &HeaderMap) -> Result<&str, Credential> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let value = all.next().ok_or(Credential::Missing)?;
    if all.next().is_some() {
        return Err(Credential::Ambiguous);
    }
    let (scheme, secret) = value
        .to_str()
        .ok()
        .and_then(|h| h.split_once(' '))
        .ok_or(Credential::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Credential::Missing);
    }
    Ok(secret.trim())
}

/// A credential's parts: `tl_<id>_<secret>`.
pub fn split_credential(credential: &str) -> Option<(&str, &str)> {
    let rest = credential.strip_prefix("tl_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit())).then_some((id, secret))
}

/// SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time equality of two hashes.
pub fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// A new credential: `(secret_id, full credential, hex SHA-256 of the secret)`.
pub fn new_credential(rng: &mut impl RngCore) -> (String, String, String) {
    let mut id = [0u8; 12];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret = hex::encode(secret);
    let hash = hex::encode(hash_secret(&secret));
    (id.clone(), format!("tl_{id}_{secret}"), hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_table() {
        use Permission as P;
        assert!(allowed(Role::Issuer, P::AppendIssuance));
        assert!(!allowed(Role::Validator, P::AppendIssuance));
        assert!(!allowed(Role::Analyst, P::AppendIssuance));
        assert!(allowed(Role::Analyst, P::ReadLog));
        assert!(!allowed(Role::Issuer, P::ReadLog));
        assert!(allowed(Role::Admin, P::Administer));
        assert!(!allowed(Role::Admin, P::Bootstrap));
        assert!(allowed(Role::Bootstrap, P::Bootstrap));
        for p in [P::AppendIssuance, P::ReadLog, P::Administer, P::Verify, P::Sql] {
            assert!(!allowed(Role::Bootstrap, p));
        }
        assert!(allowed(Role::Soc, P::Respond) && !allowed(Role::Soc, P::Administer));
    }

    #[test]
    fn credentials_round_trip() {
        let (id, cred, hash) = new_credential(&mut rand::rng());
        let (got_id, secret) = split_credential(&cred).unwrap();
        assert_eq!(got_id, id);
        assert!(hashes_equal(
            &hash_secret(secret),
            &hex::decode(hash).unwrap().try_into().unwrap()
        ));
        assert!(split_credential("tl_abc_short").is_none());
        assert!(split_credential("bearer-token").is_none());
    }

    #[test]
    fn exactly_one_bearer_header_counts() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Err(Credential::Missing));
        h.insert(header::AUTHORIZATION, "Bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Ok("abc"));
        h.insert(header::AUTHORIZATION, "bEaReR abc".parse().unwrap());
        assert_eq!(bearer(&h), Ok("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), Err(Credential::Missing));
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        h.append(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Err(Credential::Ambiguous), "even two equal headers");
        let mut h = HeaderMap::new();
        h.append(header::AUTHORIZATION, "Basic x".parse().unwrap());
        h.append(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Err(Credential::Ambiguous));
    }
}
