//! Minting and opening PASETO v4 tokens (PASETO spec, v4; registered claims
//! as in the PASETO "Payload Processing" document: `iss`, `sub`, `aud`,
//! `exp`, `nbf`, `iat`, `jti` with ISO 8601 / RFC 3339 times). The footer is
//! JSON holding the PASERK `kid`; a token without one is `malformed`.
//!
//! Our own claims: `scope` (space-delimited, RFC 8693 §4.2), `client_id`,
//! optional `cnf` (RFC 7800), `act` and `may_act` (RFC 8693 §4.1, §4.4).

use crate::keys::{SigningKey, VerifyingKey};
use chrono::{DateTime, SecondsFormat, Utc};
use pasetors::token::UntrustedToken;
use pasetors::version4::{LocalToken, PublicToken, V4};
use pasetors::{Local, Public};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenledger_domain::events::KeyPurpose;

/// Largest footer we parse, bytes.
const MAX_FOOTER: usize = 1024;
/// Largest token we look at, bytes.
pub const MAX_TOKEN: usize = 16 * 1024;

/// The claims of a token we mint or open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Issuer.
    pub iss: String,
    /// Subject.
    pub sub: String,
    /// The single audience.
    pub aud: String,
    /// Token id.
    pub jti: String,
    /// Issued at, RFC 3339 UTC.
    #[serde(with = "rfc3339")]
    pub iat: DateTime<Utc>,
    /// Not before, RFC 3339 UTC.
    #[serde(with = "rfc3339")]
    pub nbf: DateTime<Utc>,
    /// Expires, RFC 3339 UTC.
    #[serde(with = "rfc3339")]
    pub exp: DateTime<Utc>,
    /// Space-delimited scope.
    pub scope: String,
    /// The client the token was minted for.
    pub client_id: String,
    /// Confirmation (RFC 7800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Map<String, Value>>,
    /// The acting party, for delegation (RFC 8693 §4.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Value>,
    /// Who may act for the subject (RFC 8693 §4.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<Value>,
}

impl TokenClaims {
    /// Claims valid from `iat` until `exp`, both cut to whole seconds (token
    /// times are whole seconds; [`open`] refuses a fractional one as
    /// malformed).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        iss: &str,
        sub: &str,
        aud: &str,
        jti: &str,
        scope: &str,
        client_id: &str,
        iat: DateTime<Utc>,
        exp: DateTime<Utc>,
    ) -> Self {
        use chrono::Timelike;
        let whole = |t: DateTime<Utc>| t.with_nanosecond(0).unwrap_or(t);
        let (iat, exp) = (whole(iat), whole(exp));
        Self {
            iss: iss.into(),
            sub: sub.into(),
            aud: aud.into(),
            jti: jti.into(),
            iat,
            nbf: iat,
            exp,
            scope: scope.into(),
            client_id: client_id.into(),
            cnf: None,
            act: None,
            may_act: None,
        }
    }
}

mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    /// Strictly a string in RFC 3339 form with whole seconds (a number, a
    /// fractional or leap second, or a time chrono can not represent, is
    /// refused: every time we mint is whole seconds, and a fraction would
    /// let a lifetime exceed a whole-second limit unnoticed).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        use chrono::Timelike;
        let s = String::deserialize(d)?;
        let t = DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)?;
        if t.nanosecond() != 0 {
            return Err(serde::de::Error::custom("a time with a fraction of a second"));
        }
        Ok(t)
    }
}

/// Why a token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("minting failed: {0}")]
pub struct MintError(String);

/// Mints a token: `v4.public` for a public key, `v4.local` for a local key,
/// with footer `{"kid": kid}`.
pub fn mint(key: &SigningKey, kid: &str, claims: &TokenClaims) -> Result<String, MintError> {
    let payload = serde_json::to_vec(claims).map_err(|e| MintError(e.to_string()))?;
    let footer = serde_json::to_vec(&serde_json::json!({ "kid": kid })).map_err(|e| MintError(e.to_string()))?;
    match key {
        SigningKey::Public(sk) => PublicToken::sign(sk, &payload, Some(&footer), None),
        SigningKey::Local(k) => LocalToken::encrypt(k, &payload, Some(&footer), None),
    }
    .map_err(|e| MintError(format!("{e:?}")))
}

/// What can be read from a token before any key is involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// `v4.public` → public, `v4.local` → local.
    pub purpose: KeyPurpose,
    /// The footer's PASERK id; its kind matches the purpose.
    pub kid: String,
}

/// Why a token failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not a v4 token, bad encoding, no footer `kid`, or a payload that is
    /// not our claims.
    #[error("malformed")]
    Malformed,
    /// The signature (public) or authentication tag (local) did not verify.
    #[error("bad_signature")]
    BadSignature,
}

/// Reads the purpose and the footer `kid` of a token, unverified. A token
/// with no footer, a footer that is not a JSON object with a string `kid`,
/// or a `kid` of the wrong kind (`k4.lid` on a public token) is malformed.
pub fn inspect(token: &str) -> Result<Inspected, OpenError> {
    if token.len() > MAX_TOKEN {
        return Err(OpenError::Malformed);
    }
    let (purpose, footer) = if token.starts_with(PublicToken::HEADER) {
        let t = UntrustedToken::<Public, V4>::try_from(token).map_err(|_| OpenError::Malformed)?;
        (KeyPurpose::Public, t.untrusted_footer().to_vec())
    } else if token.starts_with(LocalToken::HEADER) {
        let t = UntrustedToken::<Local, V4>::try_from(token).map_err(|_| OpenError::Malformed)?;
        (KeyPurpose::Local, t.untrusted_footer().to_vec())
    } else {
        return Err(OpenError::Malformed);
    };
    if footer.is_empty() || footer.len() > MAX_FOOTER {
        return Err(OpenError::Malformed);
    }
    // Strict: a footer with two `kid`s means two things to two parsers.
    let footer = tokenledger_domain::json::from_slice_strict(&footer).map_err(|_| OpenError::Malformed)?;
    let Value::Object(footer) = footer else {
        return Err(OpenError::Malformed);
    };
    let kid = footer.get("kid").and_then(Value::as_str).ok_or(OpenError::Malformed)?;
    let want = match purpose {
        KeyPurpose::Public => "k4.pid.",
        KeyPurpose::Local => "k4.lid.",
    };
    if !kid.starts_with(want) || kid.len() > 128 {
        return Err(OpenError::Malformed);
    }
    Ok(Inspected {
        purpose,
        kid: kid.to_owned(),
    })
}

/// Verifies (public) or decrypts (local) a token with `key` and parses its
/// claims. The key's purpose must match the token's.
pub fn open(token: &str, key: &VerifyingKey) -> Result<TokenClaims, OpenError> {
    let payload = open_raw(token, key)?;
    // Strict: duplicate keys anywhere in the claims make the token malformed.
    let value = tokenledger_domain::json::from_slice_strict(&payload).map_err(|_| OpenError::Malformed)?;
    serde_json::from_value(value).map_err(|_| OpenError::Malformed)
}

/// Verifies or decrypts, returning the raw payload bytes.
pub fn open_raw(token: &str, key: &VerifyingKey) -> Result<Vec<u8>, OpenError> {
    if token.len() > MAX_TOKEN {
        return Err(OpenError::Malformed);
    }
    match key {
        VerifyingKey::Public(pk) => {
            let t = UntrustedToken::<Public, V4>::try_from(token).map_err(|_| OpenError::Malformed)?;
            let trusted = PublicToken::verify(pk, &t, None, None).map_err(|_| OpenError::BadSignature)?;
            Ok(trusted.payload().as_bytes().to_vec())
        }
        VerifyingKey::Local(k) => {
            let t = UntrustedToken::<Local, V4>::try_from(token).map_err(|_| OpenError::Malformed)?;
            let trusted = LocalToken::decrypt(k, &t, None, None).map_err(|_| OpenError::BadSignature)?;
            Ok(trusted.payload().as_bytes().to_vec())
        }
    }
}

/// The outcome of the time checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeCheck {
    /// Within `nbf - leeway ..= exp + leeway`.
    Valid,
    /// Past `exp + leeway`.
    Expired,
    /// Before `nbf - leeway`.
    NotYetValid,
}

/// Checks `exp` and `nbf` against `now` with `leeway_seconds` of slack,
/// without overflow: times at the edge of the representable range compare
/// as far past / far future rather than wrapping.
pub fn check_times(claims: &TokenClaims, now: DateTime<Utc>, leeway_seconds: u32) -> TimeCheck {
    let leeway = chrono::Duration::seconds(i64::from(leeway_seconds));
    let exp_limit = claims
        .exp
        .checked_add_signed(leeway)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let nbf_limit = claims
        .nbf
        .checked_sub_signed(leeway)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    if now > exp_limit {
        TimeCheck::Expired
    } else if now < nbf_limit {
        TimeCheck::NotYetValid
    } else {
        TimeCheck::Valid
    }
}

/// RFC 3339 UTC with seconds, as the wire shows times.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate;
    use chrono::TimeZone;

    fn claims() -> TokenClaims {
        let t = Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap();
        TokenClaims::new(
            "tokenledger",
            "alice",
            "api://orders",
            "j1",
            "orders:read",
            "c1",
            t,
            t + chrono::Duration::seconds(300),
        )
    }

    #[test]
    fn public_and_local_round_trip_and_detect_tampering() {
        for purpose in [KeyPurpose::Public, KeyPurpose::Local] {
            let k = generate(purpose).unwrap();
            let tok = mint(&k.signing_key().unwrap(), &k.kid, &claims()).unwrap();
            assert_eq!(
                inspect(&tok).unwrap(),
                Inspected {
                    purpose,
                    kid: k.kid.clone()
                }
            );
            assert_eq!(open(&tok, &k.verifying_key().unwrap()).unwrap(), claims());
            let mut parts: Vec<String> = tok.split('.').map(str::to_owned).collect();
            let mid = parts[2].len() / 2;
            let c = if &parts[2][mid..mid + 1] == "A" { "B" } else { "A" };
            parts[2].replace_range(mid..mid + 1, c);
            assert_eq!(
                open(&parts.join("."), &k.verifying_key().unwrap()),
                Err(OpenError::BadSignature)
            );
            let other = generate(purpose).unwrap();
            assert_eq!(
                open(&tok, &other.verifying_key().unwrap()),
                Err(OpenError::BadSignature)
            );
        }
    }

    #[test]
    fn tokens_without_a_paserk_kid_are_malformed() {
        let k = generate(KeyPurpose::Public).unwrap();
        let crate::keys::SigningKey::Public(sk) = k.signing_key().unwrap() else {
            unreachable!()
        };
        let payload = serde_json::to_vec(&claims()).unwrap();
        let bare = PublicToken::sign(&sk, &payload, None, None).unwrap();
        assert_eq!(inspect(&bare), Err(OpenError::Malformed));
        let wrong = PublicToken::sign(&sk, &payload, Some(br#"{"kid":"k4.lid.x"}"#), None).unwrap();
        assert_eq!(inspect(&wrong), Err(OpenError::Malformed));
        let twice = format!(r#"{{"kid":"{}","kid":"{}"}}"#, k.kid, k.kid);
        let dup = PublicToken::sign(&sk, &payload, Some(twice.as_bytes()), None).unwrap();
        assert_eq!(inspect(&dup), Err(OpenError::Malformed), "a footer with two kids");
        let not_json = PublicToken::sign(&sk, &payload, Some(b"k4.pid.x"), None).unwrap();
        assert_eq!(inspect(&not_json), Err(OpenError::Malformed));
        for junk in ["", "v4.public.", "v3.public.abc", "v4.public.!!!", "v4.local.AAAA.AAAA"] {
            assert_eq!(inspect(junk), Err(OpenError::Malformed), "{junk:?}");
        }
    }

    #[test]
    fn numeric_or_unrepresentable_times_are_malformed() {
        let k = generate(KeyPurpose::Public).unwrap();
        let crate::keys::SigningKey::Public(sk) = k.signing_key().unwrap() else {
            unreachable!()
        };
        let mut v = serde_json::to_value(claims()).unwrap();
        v["exp"] = serde_json::json!(1_900_000_000);
        let tok = PublicToken::sign(
            &sk,
            &serde_json::to_vec(&v).unwrap(),
            Some(format!(r#"{{"kid":"{}"}}"#, k.kid).as_bytes()),
            None,
        )
        .unwrap();
        assert_eq!(open(&tok, &k.verifying_key().unwrap()), Err(OpenError::Malformed));
        v["exp"] = serde_json::json!("2026-03-04T05:11:07.5Z");
        let tok = PublicToken::sign(
            &sk,
            &serde_json::to_vec(&v).unwrap(),
            Some(format!(r#"{{"kid":"{}"}}"#, k.kid).as_bytes()),
            None,
        )
        .unwrap();
        assert_eq!(open(&tok, &k.verifying_key().unwrap()), Err(OpenError::Malformed));
        v["exp"] = serde_json::json!("99999-01-01T00:00:00Z");
        let tok = PublicToken::sign(
            &sk,
            &serde_json::to_vec(&v).unwrap(),
            Some(format!(r#"{{"kid":"{}"}}"#, k.kid).as_bytes()),
            None,
        )
        .unwrap();
        assert_eq!(open(&tok, &k.verifying_key().unwrap()), Err(OpenError::Malformed));
    }

    #[test]
    fn time_checks_use_leeway_and_do_not_overflow() {
        let c = claims();
        assert_eq!(check_times(&c, c.iat, 30), TimeCheck::Valid);
        assert_eq!(
            check_times(&c, c.exp + chrono::Duration::seconds(30), 30),
            TimeCheck::Valid
        );
        assert_eq!(
            check_times(&c, c.exp + chrono::Duration::seconds(31), 30),
            TimeCheck::Expired
        );
        assert_eq!(
            check_times(&c, c.nbf - chrono::Duration::seconds(31), 30),
            TimeCheck::NotYetValid
        );
        let mut edge = c.clone();
        edge.exp = DateTime::<Utc>::MAX_UTC;
        edge.nbf = DateTime::<Utc>::MIN_UTC;
        assert_eq!(check_times(&edge, c.iat, 300), TimeCheck::Valid);
    }
}
