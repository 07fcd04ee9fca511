//! The live views token enforcement reads, per tenant: issued tokens, the
//! block list (revoked tokens, selectors, revoked keys), the key ring and
//! trusted external issuers. Folded from committed events by [`TenantViews::apply`],
//! a pure function of the event, its position and its `recorded_at`, so a
//! replay rebuilds exactly the same views.

use crate::events::*;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};

/// An issued token, as recorded by its `TokenIssued`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    /// Position of the `TokenIssued`.
    pub position: u64,
    /// The issuer (`tokenledger` for ours).
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// The client it was minted for.
    pub client_id: String,
    /// `aud`.
    pub audience: String,
    /// Space-delimited scope.
    pub scope: String,
    /// `iat`, UTC.
    pub issued_at: DateTime<Utc>,
    /// `exp`, UTC.
    pub expires_at: DateTime<Utc>,
    /// `nbf`, UTC.
    pub not_before: DateTime<Utc>,
    /// Format.
    pub format: TokenFormat,
    /// Signing key id.
    pub kid: Option<String>,
    /// The token it was exchanged from.
    pub parent: Option<String>,
    /// Confirmation claim.
    pub cnf: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The state of a signing key (DESIGN.md "Tokens").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published ahead of use; signs nothing yet.
    Pending,
    /// Signs new tokens.
    Active,
    /// Verify-only until `verify_until`.
    Retired,
    /// Every token it signed fails.
    Revoked,
}

impl KeyState {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
        }
    }
}

/// A key of the tenant's ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// PASERK id.
    pub kid: String,
    /// Public or local.
    pub purpose: KeyPurpose,
    /// Its state.
    pub state: KeyState,
    /// Signs nothing before this.
    pub not_before: DateTime<Utc>,
    /// Signs nothing after this.
    pub not_after: DateTime<Utc>,
    /// PASERK `k4.public.…` for public keys.
    pub public_key: Option<String>,
    /// The sealed secret.
    pub sealed_secret: String,
    /// For a retired key: tokens it signed verify until then.
    pub verify_until: Option<DateTime<Utc>>,
    /// Position of its `SigningKeyAdded`.
    pub position: u64,
}

/// A revocation in the block list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEntry {
    /// Position of the `TokenRevoked` / `SigningKeyRevoked`.
    pub position: u64,
    /// When the entry stops mattering (the token's expiry); `None` for
    /// selectors and keys, which matter as long as tokens they cover may live.
    pub expires_at: Option<DateTime<Utc>>,
}

/// One tenant's views.
#[derive(Debug, Default, Clone)]
pub struct TenantViews {
    /// Issued tokens by id.
    pub tokens: HashMap<String, TokenRecord>,
    /// Revoked token ids.
    pub revoked_tokens: HashMap<String, BlockEntry>,
    /// Selector revocations: (scope, key) → the latest revocation. Tokens
    /// issued at an earlier position are revoked.
    pub revoked_selectors: HashMap<(SelectorScope, String), BlockEntry>,
    /// The key ring by kid.
    pub keys: BTreeMap<String, KeyRecord>,
    /// Trusted external issuers by name.
    pub issuers: HashMap<String, IssuerTrusted>,
    /// kid (`k4.pid.…`) of a trusted issuer's key → (issuer name, PASERK public key).
    pub issuer_kids: HashMap<String, (String, String)>,
    /// Every block-list entry in position order, for deltas.
    pub block_log: Vec<BlockLogEntry>,
    /// Tokens exchanged from each token.
    pub children: HashMap<String, Vec<String>>,
    listed: std::collections::HashSet<String>,
}

/// One entry of the block-list feed (DESIGN.md "Block list").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockLogEntry {
    /// Position of the event that created it.
    pub position: u64,
    /// Token, selector or key.
    pub kind: BlockKind,
    /// The token id, `scope:key` of the selector, or the kid.
    pub key: String,
    /// After this the entry no longer matters (the token's expiry); `None`
    /// for selectors and keys.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was recorded: a selector covers tokens issued at or before it.
    pub revoked_at: DateTime<Utc>,
}

/// What a block-list entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockKind {
    /// A token id.
    Token,
    /// A selector `scope:key`.
    Selector,
    /// A signing key id.
    Kid,
}

/// Computes the PASERK id of an external issuer's `k4.public` key; supplied
/// by the crypto layer so this crate stays free of it.
pub type KidOf = fn(&str) -> Option<String>;

impl TenantViews {
    /// Folds one committed event at `position`, recorded at `recorded_at`.
    pub fn apply(&mut self, position: u64, recorded_at: DateTime<Utc>, event: &DomainEvent, kid_of: KidOf) {
        match event {
            DomainEvent::TokenIssued(t) => {
                if let Some(p) = &t.parent_token_id
                    && !self.tokens.contains_key(&t.token_id)
                {
                    self.children.entry(p.clone()).or_default().push(t.token_id.clone());
                }
                self.tokens.entry(t.token_id.clone()).or_insert_with(|| TokenRecord {
                    position,
                    issuer: t.issuer.clone(),
                    subject: t.subject.clone(),
                    client_id: t.client_id.clone(),
                    audience: t.audience.clone(),
                    scope: t.scope.clone(),
                    issued_at: t.issued_at,
                    expires_at: t.expires_at,
                    not_before: t.not_before,
                    format: t.format,
                    kid: t.kid.clone(),
                    parent: t.parent_token_id.clone(),
                    cnf: t.cnf.clone(),
                });
            }
            DomainEvent::TokenRevoked(r) => {
                if let Some(id) = &r.token_id {
                    let expires_at = self.tokens.get(id).map(|t| t.expires_at);
                    if !self.revoked_tokens.contains_key(id) {
                        self.revoked_tokens
                            .insert(id.clone(), BlockEntry { position, expires_at });
                    }
                    // The feed lists the token and every token exchanged
                    // from it, so a validator needs no chain to refuse them.
                    let mut todo = vec![id.clone()];
                    while let Some(t) = todo.pop() {
                        if self.listed.insert(t.clone()) {
                            let expires_at = self.tokens.get(&t).map(|x| x.expires_at);
                            self.block_log.push(BlockLogEntry {
                                position,
                                kind: BlockKind::Token,
                                key: t.clone(),
                                expires_at,
                                revoked_at: recorded_at,
                            });
                        }
                        if let Some(c) = self.children.get(&t) {
                            todo.extend(c.iter().cloned());
                        }
                    }
                }
                if let Some(sel) = &r.selector {
                    self.revoked_selectors.insert(
                        (sel.scope, sel.key.clone()),
                        BlockEntry {
                            position,
                            expires_at: None,
                        },
                    );
                    let name = format!("{}:{}", selector_name(sel.scope), sel.key);
                    self.block_log.push(BlockLogEntry {
                        position,
                        kind: BlockKind::Selector,
                        key: name,
                        expires_at: None,
                        revoked_at: recorded_at,
                    });
                }
            }
            DomainEvent::SigningKeyAdded(k) => {
                self.keys.entry(k.kid.clone()).or_insert_with(|| KeyRecord {
                    kid: k.kid.clone(),
                    purpose: k.purpose,
                    state: KeyState::Pending,
                    not_before: k.not_before,
                    not_after: k.not_after,
                    public_key: k.public_key.clone(),
                    sealed_secret: k.sealed_secret.clone(),
                    verify_until: None,
                    position,
                });
            }
            DomainEvent::SigningKeyActivated(k) => {
                // Activating a key retires the active key of the same purpose.
                let purpose = k.purpose;
                if self.keys.get(&k.kid).is_some_and(|r| r.state == KeyState::Pending) {
                    for r in self.keys.values_mut() {
                        if r.purpose == purpose && r.state == KeyState::Active {
                            r.state = KeyState::Retired;
                        }
                    }
                    if let Some(r) = self.keys.get_mut(&k.kid) {
                        r.state = KeyState::Active;
                    }
                }
            }
            DomainEvent::SigningKeyRetired(k) => {
                if let Some(r) = self.keys.get_mut(&k.kid)
                    && r.state != KeyState::Revoked
                {
                    r.state = KeyState::Retired;
                    r.verify_until = Some(k.verify_until);
                }
            }
            DomainEvent::SigningKeyRevoked(k) => {
                if let Some(r) = self.keys.get_mut(&k.kid)
                    && r.state != KeyState::Revoked
                {
                    r.state = KeyState::Revoked;
                    self.block_log.push(BlockLogEntry {
                        position,
                        kind: BlockKind::Kid,
                        key: k.kid.clone(),
                        expires_at: None,
                        revoked_at: recorded_at,
                    });
                }
            }
            DomainEvent::IssuerTrusted(i) => {
                if let Some(old) = self.issuers.get(&i.name) {
                    for k in &old.keys {
                        if let Some(kid) = kid_of(k) {
                            self.issuer_kids.remove(&kid);
                        }
                    }
                }
                for k in &i.keys {
                    if let Some(kid) = kid_of(k) {
                        self.issuer_kids.insert(kid, (i.name.clone(), k.clone()));
                    }
                }
                self.issuers.insert(i.name.clone(), i.clone());
            }
            _ => {}
        }
    }

    /// Whether the token is revoked: directly, through any token it was
    /// exchanged from (down the whole chain), or by a selector revocation
    /// committed after it was issued.
    pub fn is_revoked(&self, token_id: &str) -> bool {
        let mut current = Some(token_id.to_owned());
        let mut hops = 0;
        while let Some(id) = current {
            if self.revoked_tokens.contains_key(&id) {
                return true;
            }
            let Some(t) = self.tokens.get(&id) else { return false };
            for (scope, key) in [
                (SelectorScope::Subject, &t.subject),
                (SelectorScope::Client, &t.client_id),
                (SelectorScope::Issuer, &t.issuer),
            ] {
                if let Some(e) = self.revoked_selectors.get(&(scope, key.clone()))
                    && e.position > t.position
                {
                    return true;
                }
            }
            hops += 1;
            if hops > 64 {
                return true; // a cycle cannot be issued; refuse rather than loop
            }
            current = t.parent.clone();
        }
        false
    }

    /// How many exchanges lie between the token and its original.
    pub fn chain_depth(&self, token_id: &str) -> usize {
        let mut depth = 0;
        let mut current = self.tokens.get(token_id).and_then(|t| t.parent.clone());
        while let Some(id) = current {
            depth += 1;
            if depth > 64 {
                break;
            }
            current = self.tokens.get(&id).and_then(|t| t.parent.clone());
        }
        depth
    }

    /// The active key of a purpose, if any.
    pub fn active_key(&self, purpose: KeyPurpose) -> Option<&KeyRecord> {
        self.keys
            .values()
            .filter(|k| k.purpose == purpose && k.state == KeyState::Active)
            .max_by_key(|k| k.position)
    }
}

/// The wire name of a selector scope.
pub fn selector_name(s: SelectorScope) -> &'static str {
    match s {
        SelectorScope::Subject => "subject",
        SelectorScope::Client => "client",
        SelectorScope::Issuer => "issuer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    fn issued(id: &str, subject: &str, parent: Option<&str>) -> DomainEvent {
        DomainEvent::TokenIssued(TokenIssued {
            token_id: id.into(),
            tenant: "t".into(),
            issuer: "tokenledger".into(),
            subject: subject.into(),
            client_id: "c".into(),
            audience: "a".into(),
            scope: "s".into(),
            issued_at: t0(),
            expires_at: t0() + chrono::Duration::hours(1),
            not_before: t0(),
            format: TokenFormat::V4Public,
            kid: None,
            cnf: None,
            parent_token_id: parent.map(Into::into),
            context: None,
        })
    }

    fn revoked(id: Option<&str>, selector: Option<(SelectorScope, &str)>) -> DomainEvent {
        DomainEvent::TokenRevoked(TokenRevoked {
            token_id: id.map(Into::into),
            selector: selector.map(|(scope, key)| Selector { scope, key: key.into() }),
            reason: "r".into(),
            by: None,
        })
    }

    fn no_kid(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn revoking_a_token_revokes_its_whole_exchange_chain_but_not_its_parent() {
        let mut v = TenantViews::default();
        v.apply(1, t0(), &issued("a", "alice", None), no_kid);
        v.apply(2, t0(), &issued("b", "alice", Some("a")), no_kid);
        v.apply(3, t0(), &issued("c", "alice", Some("b")), no_kid);
        assert_eq!(v.chain_depth("c"), 2);
        v.apply(4, t0(), &revoked(Some("b"), None), no_kid);
        assert!(!v.is_revoked("a"));
        assert!(v.is_revoked("b") && v.is_revoked("c"));
        let listed: Vec<&str> = v.block_log.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            listed,
            ["b", "c"],
            "the feed lists the revoked token and its descendants"
        );
        v.apply(5, t0(), &revoked(Some("c"), None), no_kid);
        assert_eq!(v.block_log.len(), 2, "a token is listed once");
    }

    #[test]
    fn a_selector_revokes_only_tokens_issued_before_it() {
        let mut v = TenantViews::default();
        v.apply(1, t0(), &issued("a", "alice", None), no_kid);
        v.apply(2, t0(), &revoked(None, Some((SelectorScope::Subject, "alice"))), no_kid);
        v.apply(3, t0(), &issued("b", "alice", None), no_kid);
        assert!(v.is_revoked("a"));
        assert!(!v.is_revoked("b"));
        assert_eq!(v.block_log.len(), 1);
    }

    #[test]
    fn activation_retires_the_previous_key() {
        let mut v = TenantViews::default();
        let add = |kid: &str| {
            DomainEvent::SigningKeyAdded(SigningKeyAdded {
                kid: kid.into(),
                purpose: KeyPurpose::Public,
                algorithm: "Ed25519".into(),
                not_before: t0(),
                not_after: t0() + chrono::Duration::days(30),
                public_key: Some("k4.public.x".into()),
                sealed_secret: "s".into(),
            })
        };
        let act = |kid: &str| {
            DomainEvent::SigningKeyActivated(SigningKeyActivated {
                kid: kid.into(),
                purpose: KeyPurpose::Public,
            })
        };
        v.apply(1, t0(), &add("k1"), no_kid);
        v.apply(2, t0(), &act("k1"), no_kid);
        v.apply(3, t0(), &add("k2"), no_kid);
        assert_eq!(v.keys["k2"].state, KeyState::Pending);
        v.apply(4, t0(), &act("k2"), no_kid);
        assert_eq!(v.keys["k1"].state, KeyState::Retired);
        assert_eq!(v.active_key(KeyPurpose::Public).unwrap().kid, "k2");
        v.apply(
            5,
            t0(),
            &DomainEvent::SigningKeyRevoked(SigningKeyRevoked {
                kid: "k1".into(),
                purpose: KeyPurpose::Public,
                reason: "x".into(),
            }),
            no_kid,
        );
        assert_eq!(v.keys["k1"].state, KeyState::Revoked);
    }
}
