//! The ledger's published key set, from `GET /v1/keys`:
//! `{"keys": [{"kid": "k4.pid.…", "public_key": "k4.public.…", "state":
//! "pending" | "active" | "retired" | "revoked", "not_before": …,
//! "not_after": …, "verify_until": …}]}`.
//!
//! A key is taken only when its `kid` is the PASERK id of its `public_key`,
//! so an answer cannot file a key under another key's id. As on the server,
//! a listed key verifies the tokens it signed whatever its state, except
//! `revoked` (`key_revoked`); the ledger stops listing a retired key once
//! its `verify_until` has passed.

use serde_json::Value;
use std::collections::HashMap;
use tokenledger_tokens::keys::{VerifyingKey, kid_of_public, public_key};

/// One published key.
#[derive(Clone)]
pub(crate) struct KeyEntry {
    /// The Ed25519 public key.
    pub key: VerifyingKey,
    /// `state` is `revoked`.
    pub revoked: bool,
}

/// The keys by kid.
#[derive(Clone, Default)]
pub(crate) struct KeySet {
    keys: HashMap<String, KeyEntry>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.keys.keys()).finish()
    }
}

impl KeySet {
    /// Parses an answer of `GET /v1/keys`; `Err` if it has no `keys` array.
    /// Returns the set and how many listed keys were not taken.
    pub fn parse(v: &Value) -> Result<(KeySet, usize), String> {
        let raw = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| "the answer has no `keys` array".to_owned())?;
        let mut keys = HashMap::with_capacity(raw.len());
        let mut ignored = 0;
        for k in raw {
            let kid = k.get("kid").and_then(Value::as_str);
            let paserk = k.get("public_key").and_then(Value::as_str);
            let (Some(kid), Some(paserk)) = (kid, paserk) else {
                ignored += 1;
                continue;
            };
            if kid_of_public(paserk).as_deref() != Some(kid) {
                ignored += 1;
                continue;
            }
            let Ok(key) = public_key(paserk) else {
                ignored += 1;
                continue;
            };
            let revoked = k.get("state").and_then(Value::as_str) == Some("revoked");
            keys.insert(kid.to_owned(), KeyEntry { key, revoked });
        }
        Ok((KeySet { keys }, ignored))
    }

    /// The key with this id.
    pub fn get(&self, kid: &str) -> Option<&KeyEntry> {
        self.keys.get(kid)
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Adds a key directly (tests).
    #[cfg(test)]
    pub fn insert(&mut self, kid: &str, key: VerifyingKey, revoked: bool) {
        self.keys.insert(kid.to_owned(), KeyEntry { key, revoked });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokenledger_domain::events::KeyPurpose;
    use tokenledger_tokens::keys::generate;

    #[test]
    fn keys_are_taken_only_under_their_own_id() {
        let a = generate(KeyPurpose::Public).unwrap();
        let b = generate(KeyPurpose::Public).unwrap();
        let (set, ignored) = KeySet::parse(&json!({"keys": [
            {"kid": a.kid, "public_key": a.public_key, "state": "active"},
            {"kid": b.kid, "public_key": b.public_key, "state": "revoked"},
            {"kid": "k4.pid.forged", "public_key": a.public_key, "state": "active"},
            {"kid": a.kid, "public_key": "k4.public.garbage"},
            {"kid": 1, "public_key": null},
            "junk",
        ]}))
        .unwrap();
        assert_eq!(ignored, 4);
        assert_eq!(set.len(), 2);
        assert!(!set.get(&a.kid).unwrap().revoked);
        assert!(set.get(&b.kid).unwrap().revoked);
        assert!(set.get("k4.pid.forged").is_none());
        assert!(KeySet::parse(&json!({"nokeys": []})).is_err());
        assert!(KeySet::parse(&json!(null)).is_err());
    }
}
