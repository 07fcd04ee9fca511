//! Verification (DESIGN.md "Tokens"), in this order: the token's form and
//! footer `kid` (`malformed`), the key (`unknown_kid`), the signature
//! (`bad_signature`), the key's state (`key_revoked`), the ledger's record
//! (`not_issued`; a token with no record whose `exp` is so far behind the
//! views' now that its record may have been pruned is `expired`),
//! `exp`/`nbf` with leeway (`expired`, `not_yet_valid`),
//! the audience (`audience_mismatch`), the block list (`revoked`), and the
//! required scopes (`insufficient_scope`). Signature first: a forger never
//! learns anything about keys or tokens, and nothing it claims is
//! attributed.

use crate::state::AppState;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokenledger_domain::events::{CutoffMode, CutoffScope, TokenFormat};
use tokenledger_domain::views::{KeyState, TokenRecord};
use tokenledger_tokens::paseto::{OpenError, TimeCheck, TokenClaims, check_times, inspect, open};

/// Why a token is not active; the wire names of DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not a v4 PASETO with a PASERK `kid`, or claims we cannot read.
    Malformed,
    /// Signature or authentication tag does not verify.
    BadSignature,
    /// No key of this tenant or of a trusted issuer has that id.
    UnknownKid,
    /// The signing key was revoked.
    KeyRevoked,
    /// Validly signed, but the ledger has no `TokenIssued` for it.
    NotIssued,
    /// Past `exp` + leeway.
    Expired,
    /// Before `nbf` − leeway.
    NotYetValid,
    /// Not for the audience asked about.
    AudienceMismatch,
    /// Revoked (itself, up its exchange chain, or by selector).
    Revoked,
    /// A minting cutoff covers it (when verify is configured to refuse those).
    Cutoff,
    /// Lacks a scope the caller requires.
    InsufficientScope,
}

impl Reason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownKid => "unknown_kid",
            Reason::KeyRevoked => "key_revoked",
            Reason::NotIssued => "not_issued",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::Revoked => "revoked",
            Reason::Cutoff => "cutoff",
            Reason::InsufficientScope => "insufficient_scope",
        }
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone)]
pub struct Verification {
    /// `None`: active.
    pub reason: Option<Reason>,
    /// Claims of a token whose signature verified (attributable).
    pub verified: Option<TokenClaims>,
    /// The ledger's record of the token, if it has one.
    pub record: Option<TokenRecord>,
    /// Unverified claims read from a `v4.public` payload whose signature did
    /// not verify or whose key is unknown: `(jti, sub, client_id)`, for the
    /// `claimed_*` fields only, never attributed.
    pub claimed: Option<(Option<String>, Option<String>, Option<String>)>,
}

impl Verification {
    fn inactive(reason: Reason) -> Self {
        Self {
            reason: Some(reason),
            verified: None,
            record: None,
            claimed: None,
        }
    }
}

/// Verifies `token` in `tenant` at `now`. `audience`: the audience the
/// token is presented to (`None`: any, as for introspection). `scopes`:
/// scopes the caller requires.
pub fn verify(
    st: &AppState,
    tenant: &str,
    token: &str,
    audience: Option<&str>,
    scopes: &[String],
    now: DateTime<Utc>,
) -> Verification {
    let Ok(inspected) = inspect(token) else {
        return Verification::inactive(Reason::Malformed);
    };
    let claimed = unverified_claims(token);
    enum Signer {
        Ours(tokenledger_domain::views::KeyRecord),
        External(String, String),
    }
    let signer = st.views.read(tenant, |v| {
        if let Some(k) = v.keys.get(&inspected.kid) {
            Some(Signer::Ours(k.clone()))
        } else {
            v.issuer_kids
                .get(&inspected.kid)
                .map(|(name, paserk)| Signer::External(name.clone(), paserk.clone()))
        }
    });
    let with_claimed = |reason| Verification {
        claimed: claimed.clone(),
        ..Verification::inactive(reason)
    };
    let Some(signer) = signer else {
        return with_claimed(Reason::UnknownKid);
    };
    let key = match &signer {
        Signer::Ours(rec) => match st.keyring.material(tenant, rec) {
            Ok(m) => m.verifying.clone(),
            Err(_) => return with_claimed(Reason::UnknownKid),
        },
        Signer::External(_, paserk) => match st.keyring.public(paserk) {
            Some(k) => k,
            None => return with_claimed(Reason::UnknownKid),
        },
    };
    let claims = match open(token, &key) {
        Ok(c) => c,
        Err(OpenError::BadSignature) => return with_claimed(Reason::BadSignature),
        Err(OpenError::Malformed) => return with_claimed(Reason::Malformed),
    };
    // From here on the signature verified: the claims are attributable.
    let done = |reason: Option<Reason>, record: Option<TokenRecord>| Verification {
        reason,
        verified: Some(claims.clone()),
        record,
        claimed: None,
    };
    match &signer {
        Signer::Ours(rec) => {
            if rec.state == KeyState::Revoked {
                return done(Some(Reason::KeyRevoked), None);
            }
            if claims.iss != st.settings.issuer_name {
                return done(Some(Reason::UnknownKid), None);
            }
        }
        Signer::External(name, _) => {
            if claims.iss != *name {
                return done(Some(Reason::UnknownKid), None);
            }
            let max = st
                .views
                .read(tenant, |v| v.issuers.get(name).map(|i| i.max_ttl_seconds))
                .unwrap_or(0);
            let ttl = (claims.exp - claims.iat).num_seconds();
            if ttl <= 0 || ttl as u64 > max {
                return done(Some(Reason::Malformed), None);
            }
        }
    }
    let (record, revoked, pruned) = st.views.read(tenant, |v| {
        let record = v.token(&claims.jti);
        let pruned = record.is_none() && v.may_have_pruned(claims.exp);
        (record, v.is_revoked(&claims.jti), pruned)
    });
    let Some(record) = record else {
        // The views prune a token once it is past its expiry by more than
        // the largest leeway: one that may have been pruned is expired,
        // whatever else it was.
        if pruned {
            return done(Some(Reason::Expired), None);
        }
        return done(Some(Reason::NotIssued), None);
    };
    let matches = record.subject == claims.sub
        && record.audience == claims.aud
        && record.client_id == claims.client_id
        && record.scope == claims.scope
        && record.expires_at == claims.exp
        && match (&signer, &record.kid) {
            // Our keys sign only what we minted: a record an issuer appended
            // (format external) naming our kid does not make a token ours.
            (Signer::Ours(rec), Some(kid)) => *kid == rec.kid && record.format != TokenFormat::External,
            (Signer::Ours(_), None) => false,
            (Signer::External(name, _), _) => record.issuer == *name && record.format == TokenFormat::External,
        };
    if !matches {
        return done(Some(Reason::NotIssued), Some(record));
    }
    match check_times(&claims, now, st.settings.verify_leeway_seconds) {
        TimeCheck::Expired => return done(Some(Reason::Expired), Some(record)),
        TimeCheck::NotYetValid => return done(Some(Reason::NotYetValid), Some(record)),
        TimeCheck::Valid => {}
    }
    if let Some(aud) = audience
        && aud != claims.aud
    {
        return done(Some(Reason::AudienceMismatch), Some(record));
    }
    if revoked {
        return done(Some(Reason::Revoked), Some(record));
    }
    // Optional (`verify_refuses_cut_off`): a subject under an enforced
    // cutoff has its tokens refused too, not only new ones.
    if st.settings.verify_refuses_cut_off
        && st.views.read(tenant, |v| {
            v.cutoff_matching(CutoffScope::Subject, &record.subject, now)
                .is_some_and(|c| c.mode == CutoffMode::Enforce)
        })
    {
        return done(Some(Reason::Cutoff), Some(record));
    }
    if !scopes.iter().all(|s| claims.scope.split(' ').any(|c| c == s)) {
        return done(Some(Reason::InsufficientScope), Some(record));
    }
    done(None, Some(record))
}

/// The unverified `(jti, sub, client_id)` of a `v4.public` payload, for
/// forensics only (a `v4.local` payload is encrypted).
fn unverified_claims(token: &str) -> Option<(Option<String>, Option<String>, Option<String>)> {
    use pasetors_untrusted::read_public_payload;
    let payload = read_public_payload(token)?;
    let v: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .map(|x| x.chars().take(256).collect::<String>())
    };
    Some((s("jti"), s("sub"), s("client_id")))
}

mod pasetors_untrusted {
    /// The payload bytes of a `v4.public` token (message minus the 64-byte
    /// signature), unverified.
    pub fn read_public_payload(token: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        let body = token.strip_prefix("v4.public.")?.split('.').next()?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).ok()?;
        (raw.len() > 64).then(|| raw[..raw.len() - 64].to_vec())
    }
}
