//! What a local verification says: [`LocalVerdict`] and the [`Reason`] of a
//! refusal, named as the ledger's `POST /v1/tokens/verify` names them.

use tokenledger_tokens::paseto::TokenClaims;

/// Why a token was refused locally. The wire names ([`Reason::as_str`]) are
/// the ones `POST /v1/tokens/verify` answers and `POST /v1/uses` records,
/// and the variants are listed in the order the checks run (the server's
/// order, less what only the ledger can check: `not_issued`, `cutoff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    /// `malformed`: not a `v4` PASETO, no PASERK `kid` in its footer, or a
    /// payload that is not the ledger's claims (e.g. a fractional time).
    Malformed,
    /// `unknown_kid`: no key of the key set has the footer's `kid` (after a
    /// refresh has been asked for), or the token's `iss` is not the expected
    /// issuer.
    UnknownKid,
    /// `bad_signature`: the Ed25519 signature does not verify.
    BadSignature,
    /// `key_revoked`: validly signed by a key that was revoked (from the key
    /// set's `state` or a `kid` entry of the block list).
    KeyRevoked,
    /// `expired`: past `exp` plus the leeway.
    Expired,
    /// `not_yet_valid`: before `nbf` minus the leeway.
    NotYetValid,
    /// `audience_mismatch`: the token's `aud` is not the audience it was
    /// presented to.
    AudienceMismatch,
    /// `revoked`: on the local block list — by token id (the feed also lists
    /// every token exchanged from a revoked one), or by a selector (subject,
    /// client or issuer) revoked at or after the token's `iat`.
    Revoked,
}

impl Reason {
    /// Every reason, in check order.
    pub const ALL: [Reason; 8] = [
        Reason::Malformed,
        Reason::UnknownKid,
        Reason::BadSignature,
        Reason::KeyRevoked,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::AudienceMismatch,
        Reason::Revoked,
    ];

    /// The wire name (`"malformed"`, `"unknown_kid"`, …), as the ledger's
    /// verify answers it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnknownKid => "unknown_kid",
            Reason::BadSignature => "bad_signature",
            Reason::KeyRevoked => "key_revoked",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::Revoked => "revoked",
        }
    }

    /// Index into [`Reason::ALL`].
    pub(crate) fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of [`Validator::verify`](crate::Validator::verify).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LocalVerdict {
    /// The token verified locally: signed by a published, unrevoked key, for
    /// the expected issuer, within its validity (with leeway), for this
    /// audience, and not on the local block list. The claims are verified.
    ///
    /// Not checked here: whether the ledger recorded the token
    /// (`not_issued`) and minting cutoffs — see the crate docs.
    Active(Box<TokenClaims>),
    /// Refused locally, for this reason.
    Rejected(Reason),
    /// A `v4.local` token: its key is never published, so it cannot be
    /// verified here. Ask the ledger instead (`POST /v1/tokens/verify`, which
    /// also records the use); nothing is reported for it.
    Unverifiable,
}

impl LocalVerdict {
    /// Whether the token is active.
    pub fn is_active(&self) -> bool {
        matches!(self, LocalVerdict::Active(_))
    }

    /// The verified claims of an active token.
    pub fn claims(&self) -> Option<&TokenClaims> {
        match self {
            LocalVerdict::Active(c) => Some(c),
            _ => None,
        }
    }

    /// Why the token was refused, if it was.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            LocalVerdict::Rejected(r) => Some(*r),
            _ => None,
        }
    }
}
