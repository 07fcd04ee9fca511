//! Local verification: the server's order (crates/server `tokens/verify.rs`)
//! less what only the ledger knows. Pure: keys, block list and clock are
//! passed in.

use crate::blocklist::BlockList;
use crate::keyset::KeySet;
use crate::verdict::{LocalVerdict, Reason};
use base64::Engine;
use chrono::{DateTime, Utc};
use std::sync::{PoisonError, RwLock};
use tokenledger_domain::events::KeyPurpose;
use tokenledger_tokens::paseto::{MAX_TOKEN, OpenError, TimeCheck, check_times, inspect, open};

/// What the token is checked against, besides keys and block list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect<'a> {
    /// The audience the token is presented to.
    pub audience: &'a str,
    /// The `iss` a token signed by a published key must carry (`None`: any).
    pub issuer: Option<&'a str>,
    /// Leeway for `exp` / `nbf`, seconds.
    pub leeway_seconds: u32,
}

/// A verdict and what to report about it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Checked {
    /// The verdict.
    pub verdict: LocalVerdict,
    /// The token id a use report names: the verified `jti` once the
    /// signature verified, else the unverified one if it can be read and
    /// is acceptable text; `None`: nothing to report.
    pub report_id: Option<String>,
    /// The footer's `kid` is not in the key set (ask for a refresh).
    pub unknown_kid: bool,
}

impl Checked {
    fn rejected(reason: Reason, report_id: Option<String>) -> Self {
        Checked {
            verdict: LocalVerdict::Rejected(reason),
            report_id,
            unknown_kid: false,
        }
    }
}

/// A token id the ledger takes in a use report: 1 to 256 bytes of NFC text
/// without control or invisible characters.
pub(crate) fn reportable_id(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id.len() <= tokenledger_domain::ids::MAX_IDENTIFIER_BYTES
        && tokenledger_domain::ids::check_text("token_id", id).is_ok();
    ok.then(|| id.to_owned())
}

/// The unverified `jti` of a `v4.public` payload (message minus the 64-byte
/// signature), if readable and reportable; never trusted for anything else.
pub(crate) fn unverified_jti(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN {
        return None;
    }
    let body = token.strip_prefix("v4.public.")?.split('.').next()?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).ok()?;
    let payload = raw.get(..raw.len().checked_sub(64)?)?;
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    reportable_id(v.get("jti")?.as_str()?)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Verifies `token` at `now`, in the server's order: form and `kid`
/// (`malformed`), key (`unknown_kid`), signature (`bad_signature`), key
/// state (`key_revoked`), issuer (`unknown_kid`), times (`expired`,
/// `not_yet_valid`), audience (`audience_mismatch`), block list
/// (`revoked`). A well-formed `v4.local` token is [`LocalVerdict::Unverifiable`].
pub(crate) fn check(
    keys: &RwLock<KeySet>,
    blocks: &RwLock<BlockList>,
    token: &str,
    expect: Expect<'_>,
    now: DateTime<Utc>,
) -> Checked {
    let Ok(inspected) = inspect(token) else {
        return Checked::rejected(Reason::Malformed, unverified_jti(token));
    };
    if inspected.purpose == KeyPurpose::Local {
        return Checked {
            verdict: LocalVerdict::Unverifiable,
            report_id: None,
            unknown_kid: false,
        };
    }
    // Clone the key (32 bytes) so the lock is not held during the signature check.
    let Some(entry) = read(keys).get(&inspected.kid).cloned() else {
        return Checked {
            unknown_kid: true,
            ..Checked::rejected(Reason::UnknownKid, unverified_jti(token))
        };
    };
    let claims = match open(token, &entry.key) {
        Ok(c) => c,
        Err(OpenError::BadSignature) => return Checked::rejected(Reason::BadSignature, unverified_jti(token)),
        Err(OpenError::Malformed) => return Checked::rejected(Reason::Malformed, unverified_jti(token)),
    };
    // From here on the claims are verified.
    let id = reportable_id(&claims.jti);
    let refuse = |reason| Checked::rejected(reason, id.clone());
    let blocks = read(blocks);
    if entry.revoked || blocks.kid_revoked(&inspected.kid) {
        return refuse(Reason::KeyRevoked);
    }
    if expect.issuer.is_some_and(|iss| iss != claims.iss) {
        return refuse(Reason::UnknownKid);
    }
    match check_times(&claims, now, expect.leeway_seconds) {
        TimeCheck::Expired => return refuse(Reason::Expired),
        TimeCheck::NotYetValid => return refuse(Reason::NotYetValid),
        TimeCheck::Valid => {}
    }
    if claims.aud != expect.audience {
        return refuse(Reason::AudienceMismatch);
    }
    if blocks.covers(&claims) {
        return refuse(Reason::Revoked);
    }
    drop(blocks);
    Checked {
        verdict: LocalVerdict::Active(Box::new(claims)),
        report_id: id,
        unknown_kid: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocklist::Entry;
    use chrono::TimeZone;
    use tokenledger_tokens::keys::{GeneratedKey, generate};
    use tokenledger_tokens::paseto::{TokenClaims, mint};

    const AUD: &str = "api://orders";

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 4, 12, 0, 0).unwrap()
    }

    fn claims(jti: &str) -> TokenClaims {
        TokenClaims::new(
            "tokenledger",
            "alice",
            AUD,
            jti,
            "orders:read",
            "client-1",
            t0(),
            t0() + chrono::Duration::seconds(300),
        )
    }

    struct Fixture {
        key: GeneratedKey,
        keys: RwLock<KeySet>,
        blocks: RwLock<BlockList>,
    }

    impl Fixture {
        fn new() -> Self {
            let key = generate(KeyPurpose::Public).unwrap();
            let mut ks = KeySet::default();
            ks.insert(&key.kid, key.verifying_key().unwrap(), false);
            Fixture {
                key,
                keys: RwLock::new(ks),
                blocks: RwLock::new(BlockList::default()),
            }
        }

        fn sign(&self, c: &TokenClaims) -> String {
            mint(&self.key.signing_key().unwrap(), &self.key.kid, c).unwrap()
        }

        fn check_at(&self, token: &str, now: DateTime<Utc>) -> Checked {
            let expect = Expect {
                audience: AUD,
                issuer: Some("tokenledger"),
                leeway_seconds: 30,
            };
            check(&self.keys, &self.blocks, token, expect, now)
        }

        fn verdict(&self, token: &str) -> LocalVerdict {
            self.check_at(token, t0()).verdict
        }
    }

    #[test]
    fn a_good_token_is_active_with_its_claims_and_reported_by_jti() {
        let f = Fixture::new();
        let c = f.check_at(&f.sign(&claims("j1")), t0());
        assert_eq!(c.verdict, LocalVerdict::Active(Box::new(claims("j1"))));
        assert_eq!(c.report_id.as_deref(), Some("j1"));
        assert!(!c.unknown_kid);
    }

    #[test]
    fn malformed_tokens() {
        let f = Fixture::new();
        for junk in [
            "",
            "v4.public.",
            "v3.public.abc",
            "v4.public.!!!",
            "bearer xyz",
            "v4.local.AAAA.AAAA",
        ] {
            let c = f.check_at(junk, t0());
            assert_eq!(c.verdict, LocalVerdict::Rejected(Reason::Malformed), "{junk:?}");
            assert_eq!(c.report_id, None);
        }
        let huge = format!("v4.public.{}", "A".repeat(MAX_TOKEN));
        assert_eq!(f.verdict(&huge), LocalVerdict::Rejected(Reason::Malformed));
        // Signed without a footer kid: malformed, but its (unverified) jti is readable.
        let tokenledger_tokens::keys::SigningKey::Public(sk) = f.key.signing_key().unwrap() else {
            unreachable!()
        };
        let payload = serde_json::to_vec(&claims("no-kid")).unwrap();
        let bare = pasetors_sign(&sk, &payload, None);
        let c = f.check_at(&bare, t0());
        assert_eq!(c.verdict, LocalVerdict::Rejected(Reason::Malformed));
        assert_eq!(c.report_id.as_deref(), Some("no-kid"));
        // Validly signed, but the payload is not our claims.
        let footer = format!(r#"{{"kid":"{}"}}"#, f.key.kid);
        let odd = pasetors_sign(&sk, br#"{"jti":"odd","exp":1}"#, Some(footer.as_bytes()));
        let c = f.check_at(&odd, t0());
        assert_eq!(c.verdict, LocalVerdict::Rejected(Reason::Malformed));
        assert_eq!(c.report_id.as_deref(), Some("odd"));
    }

    fn pasetors_sign(
        sk: &pasetors::keys::AsymmetricSecretKey<pasetors::version4::V4>,
        payload: &[u8],
        footer: Option<&[u8]>,
    ) -> String {
        pasetors::version4::PublicToken::sign(sk, payload, footer, None).unwrap()
    }

    #[test]
    fn unknown_kid_asks_for_a_refresh_and_reports_the_claimed_id() {
        let f = Fixture::new();
        let other = generate(KeyPurpose::Public).unwrap();
        let tok = mint(&other.signing_key().unwrap(), &other.kid, &claims("j2")).unwrap();
        let c = f.check_at(&tok, t0());
        assert_eq!(c.verdict, LocalVerdict::Rejected(Reason::UnknownKid));
        assert!(c.unknown_kid);
        assert_eq!(c.report_id.as_deref(), Some("j2"));
    }

    #[test]
    fn bad_signature_from_a_forger_using_our_kid() {
        let f = Fixture::new();
        let forger = generate(KeyPurpose::Public).unwrap();
        // Signed by another key, but naming ours in the footer.
        let tok = mint(&forger.signing_key().unwrap(), &f.key.kid, &claims("j3")).unwrap();
        let c = f.check_at(&tok, t0());
        assert_eq!(c.verdict, LocalVerdict::Rejected(Reason::BadSignature));
        assert_eq!(c.report_id.as_deref(), Some("j3"));
        // A bit flipped in a genuine token.
        let good = f.sign(&claims("j4"));
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mid = parts[2].len() / 2;
        let ch = if &parts[2][mid..mid + 1] == "A" { "B" } else { "A" };
        parts[2].replace_range(mid..mid + 1, ch);
        assert_eq!(
            f.verdict(&parts.join(".")),
            LocalVerdict::Rejected(Reason::BadSignature)
        );
    }

    #[test]
    fn key_revoked_by_key_set_state_or_block_list_comes_before_everything_else() {
        let f = Fixture::new();
        // Expired, wrong audience and revoked too: key_revoked wins.
        let mut c = claims("j5");
        c.aud = "api://other".into();
        let tok = f.sign(&c);
        f.blocks.write().unwrap().apply(Entry::Token {
            id: "j5".into(),
            expires_at: None,
        });
        f.blocks.write().unwrap().apply(Entry::Kid(f.key.kid.clone()));
        let checked = f.check_at(&tok, t0() + chrono::Duration::days(1));
        assert_eq!(checked.verdict, LocalVerdict::Rejected(Reason::KeyRevoked));
        assert_eq!(checked.report_id.as_deref(), Some("j5"));

        let g = Fixture::new();
        g.keys
            .write()
            .unwrap()
            .insert(&g.key.kid, g.key.verifying_key().unwrap(), true);
        assert_eq!(
            g.verdict(&g.sign(&claims("j6"))),
            LocalVerdict::Rejected(Reason::KeyRevoked)
        );
    }

    #[test]
    fn a_foreign_issuer_on_our_key_is_unknown_kid() {
        let f = Fixture::new();
        let mut c = claims("j7");
        c.iss = "someone-else".into();
        let checked = f.check_at(&f.sign(&c), t0());
        assert_eq!(checked.verdict, LocalVerdict::Rejected(Reason::UnknownKid));
        assert!(!checked.unknown_kid, "the kid is known: no refresh");
        // Without an expected issuer it is accepted.
        let any = Expect {
            audience: AUD,
            issuer: None,
            leeway_seconds: 30,
        };
        assert!(check(&f.keys, &f.blocks, &f.sign(&c), any, t0()).verdict.is_active());
    }

    #[test]
    fn times_with_leeway_then_audience_then_block_list() {
        let f = Fixture::new();
        let tok = f.sign(&claims("j8"));
        let exp = t0() + chrono::Duration::seconds(300);
        let s = chrono::Duration::seconds;
        assert!(f.check_at(&tok, exp + s(30)).verdict.is_active());
        assert_eq!(
            f.check_at(&tok, exp + s(31)).verdict,
            LocalVerdict::Rejected(Reason::Expired)
        );
        assert!(f.check_at(&tok, t0() - s(30)).verdict.is_active());
        assert_eq!(
            f.check_at(&tok, t0() - s(31)).verdict,
            LocalVerdict::Rejected(Reason::NotYetValid)
        );
        // Overflow-safe at the edges of time.
        assert_eq!(
            f.check_at(&tok, DateTime::<Utc>::MAX_UTC).verdict,
            LocalVerdict::Rejected(Reason::Expired)
        );
        assert_eq!(
            f.check_at(&tok, DateTime::<Utc>::MIN_UTC).verdict,
            LocalVerdict::Rejected(Reason::NotYetValid)
        );

        // Expired beats audience mismatch, which beats revoked.
        let mut other_aud = claims("j9");
        other_aud.aud = "api://billing".into();
        let tok9 = f.sign(&other_aud);
        f.blocks.write().unwrap().apply(Entry::Token {
            id: "j9".into(),
            expires_at: Some(exp),
        });
        assert_eq!(
            f.check_at(&tok9, exp + s(60)).verdict,
            LocalVerdict::Rejected(Reason::Expired)
        );
        assert_eq!(f.verdict(&tok9), LocalVerdict::Rejected(Reason::AudienceMismatch));
        let mut revoked = claims("j9");
        revoked.sub = "bob".into();
        assert_eq!(f.verdict(&f.sign(&revoked)), LocalVerdict::Rejected(Reason::Revoked));
    }

    #[test]
    fn selectors_revoke_by_iat() {
        let f = Fixture::new();
        f.blocks.write().unwrap().apply(Entry::Selector {
            scope: "subject".into(),
            key: "alice".into(),
            revoked_at: t0(),
        });
        assert_eq!(
            f.verdict(&f.sign(&claims("before"))),
            LocalVerdict::Rejected(Reason::Revoked)
        );
        let mut later = claims("after");
        later.iat = t0() + chrono::Duration::seconds(1);
        later.nbf = later.iat;
        assert!(f.verdict(&f.sign(&later)).is_active());
    }

    #[test]
    fn local_tokens_are_unverifiable_and_not_reported() {
        let f = Fixture::new();
        let lk = generate(KeyPurpose::Local).unwrap();
        let tok = mint(&lk.signing_key().unwrap(), &lk.kid, &claims("secret")).unwrap();
        let c = f.check_at(&tok, t0());
        assert_eq!(c.verdict, LocalVerdict::Unverifiable);
        assert_eq!(c.report_id, None);
    }

    #[test]
    fn only_acceptable_ids_are_reported() {
        assert_eq!(reportable_id("ok-1").as_deref(), Some("ok-1"));
        assert_eq!(reportable_id("with space").as_deref(), Some("with space"));
        assert_eq!(reportable_id(""), None);
        assert_eq!(reportable_id(&"x".repeat(257)), None);
        assert_eq!(reportable_id("bell\u{7}"), None);
        assert_eq!(reportable_id("e\u{301}"), None, "not NFC");
        assert_eq!(unverified_jti("v4.public.AAAA"), None);
        assert_eq!(unverified_jti("v4.local.AAAA"), None);
    }
}
