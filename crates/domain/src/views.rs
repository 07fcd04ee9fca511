//! The live views token enforcement reads, per tenant: issued tokens, the
//! block list (revoked tokens, selectors, revoked keys), the key ring,
//! trusted external issuers and minting cutoffs. Folded from committed
//! events by [`TenantViews::apply`], a pure function of the event, its
//! position and its `recorded_at`, so a replay rebuilds exactly the same
//! views.
//!
//! # Lean storage
//!
//! Tokens are stored compactly: the strings tokens repeat (issuer, subject,
//! client id, audience, scope, kid, parent id) are interned per tenant into
//! `u32` symbols (reference counted, so a string no kept token names is
//! freed), times are Unix seconds (UTC, sub-second parts dropped) and `cnf`
//! is boxed. Readers get resolved, owned [`TokenRecord`]s
//! ([`TenantViews::token`]) or borrowed [`TokenRow`]s
//! ([`TenantViews::token_rows`]); the symbols never leave this module.
//!
//! # Time and pruning
//!
//! A view's "now" is the `recorded_at` of the last event it applied (DESIGN.md
//! "Time"), never the wall clock. A token is pruned (with its direct
//! revocation and its block-list entries) once its `expires_at` +
//! [`PRUNE_AFTER_SECONDS`] is before the view's now and no token exchanged
//! from it is still kept (the parent chain must stay walkable for
//! [`TenantViews::is_revoked`]). Pruning is driven by an expiry-ordered
//! index swept whenever the view's now advances, so it is deterministic: a
//! live view, a view restored from a snapshot and caught up, and a rebuild
//! from position 0 hold the same tokens ([`TenantViews::canonical`] is
//! byte-identical).
//!
//! What pruning forgets, and why it is safe: a pruned token is past its
//! expiry by more than the largest verify leeway, so it verifies as
//! `expired` whatever else is known about it (the verifier asks
//! [`TenantViews::may_have_pruned`]). A revocation of a token id the views
//! do not know (never issued, or pruned) is kept with no expiry, as before.
//! Selector revocations, keys, issuers and cutoffs are few and never pruned.

use crate::anomalies::{Detectors, Facts, KnownToken};
use crate::events::*;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::Arc;

/// The largest verify leeway a server may be configured with, seconds
/// (`verify_leeway_seconds` is at most this).
pub const MAX_VERIFY_LEEWAY_SECONDS: i64 = 300;

/// A token is pruned once its expiry is this many seconds before the view's
/// now (the largest verify leeway plus a margin of 60 s), and none of the
/// tokens exchanged from it is still kept.
pub const PRUNE_AFTER_SECONDS: i64 = MAX_VERIFY_LEEWAY_SECONDS + 60;

/// An issued token, as recorded by its `TokenIssued`, with its strings
/// resolved. Times are whole seconds, UTC (a sub-second part of the event's
/// time is dropped).
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
    /// `iat`, UTC, whole seconds.
    pub issued_at: DateTime<Utc>,
    /// `exp`, UTC, whole seconds.
    pub expires_at: DateTime<Utc>,
    /// `nbf`, UTC, whole seconds.
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

/// One issued token, borrowed from the views (for the SQL layer): every
/// string resolved, times as Unix seconds, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRow<'a> {
    /// The token id (`jti`).
    pub token_id: &'a str,
    /// The issuer.
    pub issuer: &'a str,
    /// `sub`.
    pub subject: &'a str,
    /// The client it was minted for.
    pub client_id: &'a str,
    /// `aud`.
    pub audience: &'a str,
    /// Space-delimited scope.
    pub scope: &'a str,
    /// Signing key id.
    pub kid: Option<&'a str>,
    /// The token it was exchanged from.
    pub parent: Option<&'a str>,
    /// Format.
    pub format: TokenFormat,
    /// `iat`, Unix seconds, UTC.
    pub issued_at: i64,
    /// `exp`, Unix seconds, UTC.
    pub expires_at: i64,
    /// `nbf`, Unix seconds, UTC.
    pub not_before: i64,
    /// Position of the `TokenIssued`.
    pub position: u64,
}

/// The state of a signing key (DESIGN.md "Tokens").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// A direct revocation of a token id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    /// Position of the `TokenRevoked`.
    pub position: u64,
    /// When the entry stops mattering (the token's expiry); `None` when the
    /// token was unknown to the views at the revocation.
    pub expires_at: Option<DateTime<Utc>>,
}

/// One entry of the block-list feed (DESIGN.md "Block list").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// A token id.
    Token,
    /// A selector `scope:key`.
    Selector,
    /// A signing key id.
    Kid,
}

impl BlockKind {
    /// Wire name: `token`, `selector` or `kid`.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockKind::Token => "token",
            BlockKind::Selector => "selector",
            BlockKind::Kid => "kid",
        }
    }
}

/// The event types [`TenantViews::apply`] folds; every other event only
/// moves the views' time ([`TenantViews::advance`]). Followers skip decoding
/// the others.
pub const VIEW_TYPES: &[&str] = &[
    "TokenIssued",
    "TokenRevoked",
    "SigningKeyAdded",
    "SigningKeyActivated",
    "SigningKeyRetired",
    "SigningKeyRevoked",
    "IssuerTrusted",
    "MintingCutoffEngaged",
    "MintingCutoffReleased",
    // The detectors' inputs (see `crate::anomalies`).
    "TokenUsed",
    "TokenExchanged",
    "GrantRefused",
    "DetectorConfigChanged",
    "RiskSignalReceived",
];

/// A minting cutoff, from its `MintingCutoffEngaged` (and
/// `MintingCutoffReleased`, once released).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutoffRecord {
    /// The cutoff's id.
    pub cutoff_id: String,
    /// What it applies to.
    pub scope: CutoffScope,
    /// The subject, client, issuer or tenant name.
    pub key: String,
    /// The rule that engaged it, or `manual`.
    pub rule_id: String,
    /// Enforce or dry run.
    pub mode: CutoffMode,
    /// Why it was engaged.
    pub reason: String,
    /// What it rests on.
    pub evidence: Evidence,
    /// Position of the `MintingCutoffEngaged`.
    pub engaged_position: u64,
    /// `recorded_at` of the `MintingCutoffEngaged`, UTC.
    pub engaged_at: DateTime<Utc>,
    /// When it expires, UTC (the server then appends the release).
    pub until: DateTime<Utc>,
    /// Position of the `MintingCutoffReleased`, once released.
    pub released_position: Option<u64>,
    /// `recorded_at` of the `MintingCutoffReleased`, UTC.
    pub released_at: Option<DateTime<Utc>>,
    /// Who released it (`server` for an expiry).
    pub released_by: Option<String>,
    /// Why it was released (`expired` or a person's reason).
    pub release_reason: Option<String>,
}

impl CutoffRecord {
    /// Whether the cutoff is in force at `now` (the time of the question):
    /// engaged, not released, and `until` not reached.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.released_position.is_none() && self.until > now
    }
}

/// Computes the PASERK id of an external issuer's `k4.public` key; supplied
/// by the crypto layer so this crate stays free of it.
pub type KidOf = fn(&str) -> Option<String>;

/// An interned string of a tenant's views: index + 1 into the interner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Sym(NonZeroU32);

impl Sym {
    fn from_index(i: usize) -> Sym {
        let raw = u32::try_from(i + 1).expect("fewer than 2^32 distinct strings in one tenant's views");
        Sym(NonZeroU32::new(raw).expect("index + 1 is not zero"))
    }

    fn index(self) -> usize {
        self.0.get() as usize - 1
    }
}

#[derive(Debug, Clone)]
struct Slot {
    text: Arc<str>,
    refs: u32,
}

/// Reference-counted string interner: a string is freed (and its symbol
/// reused) when nothing refers to it any more.
#[derive(Debug, Default, Clone)]
struct Interner {
    ids: HashMap<Arc<str>, Sym>,
    slots: Vec<Option<Slot>>,
    free: Vec<Sym>,
}

impl Interner {
    /// The symbol of `s`, taking one reference.
    fn intern(&mut self, s: &str) -> Sym {
        if let Some(&sym) = self.ids.get(s) {
            if let Some(slot) = self.slots[sym.index()].as_mut() {
                slot.refs += 1;
            }
            return sym;
        }
        let text: Arc<str> = Arc::from(s);
        let slot = Some(Slot {
            text: text.clone(),
            refs: 1,
        });
        let sym = match self.free.pop() {
            Some(sym) => {
                self.slots[sym.index()] = slot;
                sym
            }
            None => {
                self.slots.push(slot);
                Sym::from_index(self.slots.len() - 1)
            }
        };
        self.ids.insert(text, sym);
        sym
    }

    /// Drops one reference; frees the string at zero.
    fn release(&mut self, sym: Sym) {
        let entry = &mut self.slots[sym.index()];
        if let Some(slot) = entry {
            slot.refs = slot.refs.saturating_sub(1);
            if slot.refs == 0 {
                let text = slot.text.clone();
                *entry = None;
                self.ids.remove(&*text);
                self.free.push(sym);
            }
        }
    }

    fn resolve(&self, sym: Sym) -> &str {
        self.slots
            .get(sym.index())
            .and_then(|s| s.as_ref())
            .map_or("", |s| &s.text)
    }

    fn get(&self, s: &str) -> Option<Sym> {
        self.ids.get(s).copied()
    }
}

/// A kept token, compact. Hashed and compared by id only, so the set of
/// tokens is looked up by `&str`.
#[derive(Debug, Clone)]
struct Tok {
    id: Arc<str>,
    position: u64,
    issued_at: i64,
    expires_at: i64,
    not_before: i64,
    issuer: Sym,
    subject: Sym,
    client_id: Sym,
    audience: Sym,
    scope: Sym,
    kid: Option<Sym>,
    parent: Option<Sym>,
    format: TokenFormat,
    cnf: Option<Box<Map<String, Value>>>,
}

impl Tok {
    /// The view time (Unix seconds) after which the token may be pruned.
    fn prune_at(&self) -> i64 {
        self.expires_at.saturating_add(PRUNE_AFTER_SECONDS)
    }

    fn syms(&self) -> impl Iterator<Item = Sym> {
        [self.issuer, self.subject, self.client_id, self.audience, self.scope]
            .into_iter()
            .chain(self.kid)
            .chain(self.parent)
    }
}

impl PartialEq for Tok {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Tok {}

impl Hash for Tok {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash as the `str` it borrows as.
        (*self.id).hash(state)
    }
}

impl Borrow<str> for Tok {
    fn borrow(&self) -> &str {
        &self.id
    }
}

fn from_unix(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

fn scope_index(s: SelectorScope) -> usize {
    match s {
        SelectorScope::Subject => 0,
        SelectorScope::Client => 1,
        SelectorScope::Issuer => 2,
    }
}

const SCOPES: [SelectorScope; 3] = [SelectorScope::Subject, SelectorScope::Client, SelectorScope::Issuer];

fn format_code(f: TokenFormat) -> u8 {
    match f {
        TokenFormat::V4Public => 0,
        TokenFormat::V4Local => 1,
        TokenFormat::External => 2,
    }
}

fn format_from_code(c: u8) -> Option<TokenFormat> {
    match c {
        0 => Some(TokenFormat::V4Public),
        1 => Some(TokenFormat::V4Local),
        2 => Some(TokenFormat::External),
        _ => None,
    }
}

/// One tenant's views.
#[derive(Debug, Clone)]
pub struct TenantViews {
    strings: Interner,
    tokens: HashSet<Tok>,
    /// (prune_at, position) → token id: tokens in the order they may be pruned.
    expiry: BTreeMap<(i64, u64), Arc<str>>,
    /// Parent id → kept tokens exchanged from it, in position order.
    children: HashMap<Sym, Vec<Arc<str>>>,
    revoked_tokens: HashMap<Box<str>, BlockEntry>,
    /// Per selector scope (subject, client, issuer): key → position of the
    /// latest revocation. Tokens issued at an earlier position are revoked.
    selectors: [HashMap<Box<str>, u64>; 3],
    /// Token ids with a block-log entry (a token is listed once).
    listed: HashSet<Box<str>>,
    /// The view's now: `recorded_at` of the last event applied, Unix seconds.
    now: i64,
    /// The key ring by kid.
    pub keys: BTreeMap<String, KeyRecord>,
    /// Trusted external issuers by name.
    pub issuers: HashMap<String, IssuerTrusted>,
    /// kid (`k4.pid.…`) of a trusted issuer's key → (issuer name, PASERK public key).
    pub issuer_kids: HashMap<String, (String, String)>,
    /// Every block-list entry in position order, for deltas. Entries of
    /// pruned tokens are removed.
    pub block_log: Vec<BlockLogEntry>,
    /// Minting cutoffs by id, engaged and released.
    pub cutoffs: BTreeMap<String, CutoffRecord>,
    /// The anomaly detectors, their thresholds, the `anomalies` and
    /// `risk_signals` views.
    pub detect: Detectors,
}

impl Default for TenantViews {
    fn default() -> Self {
        Self {
            strings: Interner::default(),
            tokens: HashSet::new(),
            expiry: BTreeMap::new(),
            children: HashMap::new(),
            revoked_tokens: HashMap::new(),
            selectors: Default::default(),
            listed: HashSet::new(),
            now: i64::MIN,
            keys: BTreeMap::new(),
            issuers: HashMap::new(),
            issuer_kids: HashMap::new(),
            block_log: Vec::new(),
            cutoffs: BTreeMap::new(),
            detect: Detectors::default(),
        }
    }
}

impl TenantViews {
    /// Folds one committed event at `position`, recorded at `recorded_at`:
    /// first the view's now advances to `recorded_at` (pruning what fell
    /// behind the horizon), then the event applies.
    pub fn apply(&mut self, position: u64, recorded_at: DateTime<Utc>, event: &DomainEvent, kid_of: KidOf) -> usize {
        self.apply_timed(position, recorded_at, None, event, kid_of)
    }

    /// [`TenantViews::apply`] for an event that may carry a
    /// `metadata.source_time` (imported data): that time is then the event
    /// time, for the views (their now, expiry and pruning) and for the
    /// detectors, so an imported token from 2020 is still known when an
    /// imported use of it from 2020 follows. Imports go into a tenant of
    /// their own (DESIGN.md "Time"): mixed with live events, the live
    /// `recorded_at` would move the view's now past imported tokens'
    /// expiry. Returns how many anomalies the event added.
    pub fn apply_timed(
        &mut self,
        position: u64,
        recorded_at: DateTime<Utc>,
        source_time: Option<DateTime<Utc>>,
        event: &DomainEvent,
        kid_of: KidOf,
    ) -> usize {
        let event_time = source_time.unwrap_or(recorded_at);
        self.fold(position, event_time, event, kid_of);
        let facts = self.facts(event);
        self.detect
            .apply(position, event_time.timestamp(), recorded_at, event, &facts)
    }

    /// What the detectors need from the views about `event`, after it applied.
    fn facts(&self, event: &DomainEvent) -> Facts {
        let known = |id: &str| {
            self.tokens.get(id).map(|t| KnownToken {
                subject: self.strings.resolve(t.subject).to_owned(),
                client_id: self.strings.resolve(t.client_id).to_owned(),
                audience: self.strings.resolve(t.audience).to_owned(),
                scope: self.strings.resolve(t.scope).to_owned(),
                revoked: self.is_revoked(id),
            })
        };
        match event {
            DomainEvent::TokenUsed(u) => Facts {
                token: u.token_id.as_deref().and_then(known),
                depth: 0,
            },
            DomainEvent::TokenExchanged(x) => Facts {
                token: known(&x.subject_token_id),
                depth: 0,
            },
            DomainEvent::TokenIssued(t) if t.parent_token_id.is_some() => Facts {
                token: None,
                depth: self.chain_depth(&t.token_id),
            },
            _ => Facts::default(),
        }
    }

    fn fold(&mut self, position: u64, recorded_at: DateTime<Utc>, event: &DomainEvent, kid_of: KidOf) {
        self.advance(recorded_at);
        match event {
            DomainEvent::TokenIssued(t) => self.issue(position, t),
            DomainEvent::TokenRevoked(r) => self.revoke(position, recorded_at, r),
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
            DomainEvent::MintingCutoffEngaged(c) => {
                // An id engages once; a repeat changes nothing.
                self.cutoffs.entry(c.cutoff_id.clone()).or_insert_with(|| CutoffRecord {
                    cutoff_id: c.cutoff_id.clone(),
                    scope: c.scope,
                    key: c.key.clone(),
                    rule_id: c.rule_id.clone(),
                    mode: c.mode,
                    reason: c.reason.clone(),
                    evidence: c.evidence.clone(),
                    engaged_position: position,
                    engaged_at: recorded_at,
                    until: c.until,
                    released_position: None,
                    released_at: None,
                    released_by: None,
                    release_reason: None,
                });
            }
            DomainEvent::MintingCutoffReleased(r) => {
                if let Some(c) = self.cutoffs.get_mut(&r.cutoff_id)
                    && c.released_position.is_none()
                {
                    c.released_position = Some(position);
                    c.released_at = Some(recorded_at);
                    c.released_by = Some(r.by.clone());
                    c.release_reason = Some(r.reason.clone());
                }
            }
            _ => {}
        }
    }

    /// Moves the view's now to `recorded_at` (never backwards) and prunes
    /// every token whose horizon it passed. Called by [`TenantViews::apply`];
    /// a caller may also call it for the tenant's events the views do not
    /// fold, so time advances with every event of the tenant.
    pub fn advance(&mut self, recorded_at: DateTime<Utc>) {
        let t = recorded_at.timestamp();
        if t <= self.now {
            return;
        }
        self.now = t;
        self.sweep();
    }

    /// The view's now: `recorded_at` of the last event applied, whole
    /// seconds, UTC; `None` before the first event.
    pub fn now(&self) -> Option<DateTime<Utc>> {
        (self.now != i64::MIN).then(|| from_unix(self.now))
    }

    /// Whether a token expiring at `expires_at` may have been pruned from
    /// these views: its expiry plus [`PRUNE_AFTER_SECONDS`] is before the
    /// view's now. A validly signed token that is not in the views but may
    /// have been pruned is expired, not unknown.
    pub fn may_have_pruned(&self, expires_at: DateTime<Utc>) -> bool {
        expires_at.timestamp().saturating_add(PRUNE_AFTER_SECONDS) < self.now
    }

    fn issue(&mut self, position: u64, t: &TokenIssued) {
        if self.tokens.contains(t.token_id.as_str()) {
            return; // the first issuance of an id holds
        }
        let id: Arc<str> = Arc::from(t.token_id.as_str());
        let parent = t.parent_token_id.as_deref().map(|p| self.strings.intern(p));
        if let Some(p) = parent {
            self.children.entry(p).or_default().push(id.clone());
        }
        let s = &mut self.strings;
        let tok = Tok {
            id: id.clone(),
            position,
            issued_at: t.issued_at.timestamp(),
            expires_at: t.expires_at.timestamp(),
            not_before: t.not_before.timestamp(),
            issuer: s.intern(&t.issuer),
            subject: s.intern(&t.subject),
            client_id: s.intern(&t.client_id),
            audience: s.intern(&t.audience),
            scope: s.intern(&t.scope),
            kid: t.kid.as_deref().map(|k| s.intern(k)),
            parent,
            format: t.format,
            cnf: t.cnf.clone().map(Box::new),
        };
        self.expiry.insert((tok.prune_at(), position), id);
        self.tokens.insert(tok);
    }

    fn revoke(&mut self, position: u64, recorded_at: DateTime<Utc>, r: &TokenRevoked) {
        if let Some(id) = &r.token_id {
            let expires_at = self.tokens.get(id.as_str()).map(|t| from_unix(t.expires_at));
            if !self.revoked_tokens.contains_key(id.as_str()) {
                self.revoked_tokens
                    .insert(id.as_str().into(), BlockEntry { position, expires_at });
            }
            // The feed lists the token and every token exchanged from it, so
            // a validator needs no chain to refuse them. `seen` stops a walk
            // through ids that name each other as parents.
            let mut seen: HashSet<Arc<str>> = HashSet::new();
            let mut todo: Vec<Arc<str>> = vec![Arc::from(id.as_str())];
            while let Some(t) = todo.pop() {
                if !seen.insert(t.clone()) {
                    continue;
                }
                if self.listed.insert(t.as_ref().into()) {
                    let expires_at = self.tokens.get(t.as_ref()).map(|x| from_unix(x.expires_at));
                    self.block_log.push(BlockLogEntry {
                        position,
                        kind: BlockKind::Token,
                        key: t.to_string(),
                        expires_at,
                        revoked_at: recorded_at,
                    });
                }
                if let Some(sym) = self.strings.get(&t)
                    && let Some(c) = self.children.get(&sym)
                {
                    // Reversed: the stack then visits children in position order.
                    todo.extend(c.iter().rev().cloned());
                }
            }
        }
        if let Some(sel) = &r.selector {
            self.selectors[scope_index(sel.scope)].insert(sel.key.as_str().into(), position);
            self.block_log.push(BlockLogEntry {
                position,
                kind: BlockKind::Selector,
                key: format!("{}:{}", selector_name(sel.scope), sel.key),
                expires_at: None,
                revoked_at: recorded_at,
            });
        }
    }

    /// Prunes every token whose horizon is before the view's now and that no
    /// kept token was exchanged from. A token with kept children is taken
    /// off the index; it goes when its last child does.
    fn sweep(&mut self) {
        let mut unlisted: HashSet<Box<str>> = HashSet::new();
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 >= self.now {
                break;
            }
            let id = entry.remove();
            if !self.has_children(&id) {
                self.prune(id, &mut unlisted);
            }
        }
        if !unlisted.is_empty() {
            self.block_log
                .retain(|e| e.kind != BlockKind::Token || !unlisted.contains(e.key.as_str()));
        }
    }

    fn has_children(&self, id: &str) -> bool {
        self.strings.get(id).is_some_and(|s| self.children.contains_key(&s))
    }

    /// Removes the token and everything that is only about it; then its
    /// parent, if that was only kept for it and is past its own horizon.
    fn prune(&mut self, id: Arc<str>, unlisted: &mut HashSet<Box<str>>) {
        let mut todo = vec![id];
        while let Some(id) = todo.pop() {
            let Some(tok) = self.tokens.take(id.as_ref()) else {
                continue;
            };
            self.expiry.remove(&(tok.prune_at(), tok.position));
            self.revoked_tokens.remove(id.as_ref());
            if let Some(l) = self.listed.take(id.as_ref()) {
                unlisted.insert(l);
            }
            if let Some(p) = tok.parent
                && let Some(list) = self.children.get_mut(&p)
            {
                list.retain(|c| *c != id);
                if list.is_empty() {
                    self.children.remove(&p);
                    let parent = self.strings.resolve(p);
                    if let Some(pt) = self.tokens.get(parent)
                        && pt.prune_at() < self.now
                    {
                        todo.push(pt.id.clone());
                    }
                }
            }
            for s in tok.syms() {
                self.strings.release(s);
            }
        }
    }

    fn record(&self, t: &Tok) -> TokenRecord {
        let s = &self.strings;
        TokenRecord {
            position: t.position,
            issuer: s.resolve(t.issuer).to_owned(),
            subject: s.resolve(t.subject).to_owned(),
            client_id: s.resolve(t.client_id).to_owned(),
            audience: s.resolve(t.audience).to_owned(),
            scope: s.resolve(t.scope).to_owned(),
            issued_at: from_unix(t.issued_at),
            expires_at: from_unix(t.expires_at),
            not_before: from_unix(t.not_before),
            format: t.format,
            kid: t.kid.map(|k| s.resolve(k).to_owned()),
            parent: t.parent.map(|p| s.resolve(p).to_owned()),
            cnf: t.cnf.as_deref().cloned(),
        }
    }

    fn row<'a>(&'a self, t: &'a Tok) -> TokenRow<'a> {
        let s = &self.strings;
        TokenRow {
            token_id: &t.id,
            issuer: s.resolve(t.issuer),
            subject: s.resolve(t.subject),
            client_id: s.resolve(t.client_id),
            audience: s.resolve(t.audience),
            scope: s.resolve(t.scope),
            kid: t.kid.map(|k| s.resolve(k)),
            parent: t.parent.map(|p| s.resolve(p)),
            format: t.format,
            issued_at: t.issued_at,
            expires_at: t.expires_at,
            not_before: t.not_before,
            position: t.position,
        }
    }

    /// The token's record, resolved and owned; `None` if it was never
    /// issued in this tenant or has been pruned.
    pub fn token(&self, token_id: &str) -> Option<TokenRecord> {
        self.tokens.get(token_id).map(|t| self.record(t))
    }

    /// The token, borrowed; `None` if it was never issued or was pruned.
    pub fn token_row(&self, token_id: &str) -> Option<TokenRow<'_>> {
        self.tokens.get(token_id).map(|t| self.row(t))
    }

    /// Whether the views hold the token (issued and not pruned).
    pub fn contains_token(&self, token_id: &str) -> bool {
        self.tokens.contains(token_id)
    }

    /// How many tokens the views hold (expired ones not yet pruned included).
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Every token the views hold, in no particular order (sort by
    /// `position` for a stable order).
    pub fn token_rows(&self) -> impl Iterator<Item = TokenRow<'_>> {
        self.tokens.iter().map(|t| self.row(t))
    }

    /// Position of the direct revocation of this token id, if any (not by
    /// selector, not through its parent: see [`TenantViews::is_revoked`]).
    pub fn revoked_position(&self, token_id: &str) -> Option<u64> {
        self.revoked_tokens.get(token_id).map(|e| e.position)
    }

    /// Whether this token id was revoked directly (RFC 7009: a repeat
    /// revocation changes nothing).
    pub fn is_revoked_directly(&self, token_id: &str) -> bool {
        self.revoked_tokens.contains_key(token_id)
    }

    /// Every direct revocation: token id and its entry, in no particular order.
    pub fn revoked_tokens(&self) -> impl Iterator<Item = (&str, &BlockEntry)> {
        self.revoked_tokens.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// Every selector revocation: scope, key and the position of the latest
    /// revocation, in no particular order.
    pub fn revoked_selectors(&self) -> impl Iterator<Item = (SelectorScope, &str, u64)> {
        SCOPES
            .iter()
            .zip(&self.selectors)
            .flat_map(|(scope, m)| m.iter().map(|(k, p)| (*scope, k.as_ref(), *p)))
    }

    /// Whether the token is revoked: directly, through any token it was
    /// exchanged from (down the whole chain), or by a selector revocation
    /// committed after it was issued. An unknown (or pruned) token is not
    /// revoked unless its id was revoked directly.
    pub fn is_revoked(&self, token_id: &str) -> bool {
        let mut current = Some(token_id);
        let mut hops = 0;
        while let Some(id) = current {
            if self.revoked_tokens.contains_key(id) {
                return true;
            }
            let Some(t) = self.tokens.get(id) else { return false };
            for (scope, key) in [(0, t.subject), (1, t.client_id), (2, t.issuer)] {
                if let Some(&p) = self.selectors[scope].get(self.strings.resolve(key))
                    && p > t.position
                {
                    return true;
                }
            }
            hops += 1;
            if hops > 64 {
                return true; // a cycle cannot be issued; refuse rather than loop
            }
            current = t.parent.map(|p| self.strings.resolve(p));
        }
        false
    }

    /// How many exchanges lie between the token and its original (as far
    /// as the views know the chain).
    pub fn chain_depth(&self, token_id: &str) -> usize {
        let mut depth = 0;
        let mut current = self.tokens.get(token_id).and_then(|t| t.parent);
        while let Some(p) = current {
            depth += 1;
            if depth > 64 {
                break;
            }
            current = self.tokens.get(self.strings.resolve(p)).and_then(|t| t.parent);
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

    /// The cutoffs in force at `now` (the time of the question, UTC): engaged,
    /// not released, `until` not reached; by id.
    pub fn active_cutoffs(&self, now: DateTime<Utc>) -> impl Iterator<Item = &CutoffRecord> {
        self.cutoffs.values().filter(move |c| c.is_active(now))
    }

    /// The cutoff in force at `now` on `scope`/`key` (for
    /// [`CutoffScope::Tenant`] the key is the tenant's name): the earliest
    /// engaged one in `enforce` mode, else the earliest in `dry_run` mode.
    pub fn cutoff_matching(&self, scope: CutoffScope, key: &str, now: DateTime<Utc>) -> Option<&CutoffRecord> {
        let mut matching: Vec<&CutoffRecord> = self
            .active_cutoffs(now)
            .filter(|c| c.scope == scope && c.key == key)
            .collect();
        matching.sort_by_key(|c| (c.mode != CutoffMode::Enforce, c.engaged_position));
        matching.first().copied()
    }

    /// The views as one JSON value with resolved strings and sorted keys,
    /// free of anything that depends on how they were built (interner
    /// symbols, hash order): a live view, a restored one and a rebuilt one
    /// at the same position give the same value. Times are Unix seconds for
    /// tokens and RFC 3339 UTC elsewhere. Sealed key secrets are left out
    /// (a dump can be shared); the kid and the key's state are compared.
    pub fn canonical(&self) -> Value {
        let tokens: BTreeMap<&str, Value> = self
            .tokens
            .iter()
            .map(|t| {
                let r = self.row(t);
                let v = json!({
                    "position": r.position,
                    "issuer": r.issuer,
                    "subject": r.subject,
                    "client_id": r.client_id,
                    "audience": r.audience,
                    "scope": r.scope,
                    "issued_at": r.issued_at,
                    "expires_at": r.expires_at,
                    "not_before": r.not_before,
                    "format": r.format.as_str(),
                    "kid": r.kid,
                    "parent": r.parent,
                    "cnf": t.cnf.as_deref().map(|m| canonical_json(&Value::Object(m.clone()))),
                });
                (r.token_id, v)
            })
            .collect();
        let revoked: BTreeMap<&str, Value> = self
            .revoked_tokens
            .iter()
            .map(|(k, e)| {
                (
                    k.as_ref(),
                    json!({"position": e.position, "expires_at": e.expires_at.map(time)}),
                )
            })
            .collect();
        let selectors: BTreeMap<String, u64> = self
            .revoked_selectors()
            .map(|(s, k, p)| (format!("{}:{k}", selector_name(s)), p))
            .collect();
        let children: BTreeMap<&str, Vec<&str>> = self
            .children
            .iter()
            .map(|(p, c)| (self.strings.resolve(*p), c.iter().map(|x| x.as_ref()).collect()))
            .collect();
        let listed: std::collections::BTreeSet<&str> = self.listed.iter().map(|x| x.as_ref()).collect();
        let keys: BTreeMap<&str, Value> = self
            .keys
            .iter()
            .map(|(kid, k)| {
                (
                    kid.as_str(),
                    json!({
                        "purpose": k.purpose,
                        "state": k.state.as_str(),
                        "not_before": time(k.not_before),
                        "not_after": time(k.not_after),
                        "public_key": k.public_key,
                        "verify_until": k.verify_until.map(time),
                        "position": k.position,
                    }),
                )
            })
            .collect();
        let issuers: BTreeMap<&str, Value> = self
            .issuers
            .iter()
            .map(|(n, i)| {
                (
                    n.as_str(),
                    json!({"keys": i.keys, "max_ttl_seconds": i.max_ttl_seconds}),
                )
            })
            .collect();
        let issuer_kids: BTreeMap<&str, Value> = self
            .issuer_kids
            .iter()
            .map(|(kid, (n, k))| (kid.as_str(), json!([n, k])))
            .collect();
        let block_log: Vec<Value> = self
            .block_log
            .iter()
            .map(|e| {
                json!({
                    "position": e.position,
                    "kind": e.kind.as_str(),
                    "key": e.key,
                    "expires_at": e.expires_at.map(time),
                    "revoked_at": time(e.revoked_at),
                })
            })
            .collect();
        let cutoffs: BTreeMap<&str, Value> = self
            .cutoffs
            .iter()
            .map(|(id, c)| {
                (
                    id.as_str(),
                    json!({
                        "scope": c.scope,
                        "key": c.key,
                        "rule_id": c.rule_id,
                        "mode": c.mode,
                        "reason": c.reason,
                        "evidence": c.evidence,
                        "engaged_position": c.engaged_position,
                        "engaged_at": time(c.engaged_at),
                        "until": time(c.until),
                        "released_position": c.released_position,
                        "released_at": c.released_at.map(time),
                        "released_by": c.released_by,
                        "release_reason": c.release_reason,
                    }),
                )
            })
            .collect();
        canonical_json(&json!({
            "now": self.now().map(time),
            "tokens": tokens,
            "revoked_tokens": revoked,
            "revoked_selectors": selectors,
            "children": children,
            "listed": listed,
            "keys": keys,
            "issuers": issuers,
            "issuer_kids": issuer_kids,
            "block_log": block_log,
            "cutoffs": cutoffs,
            "detect": self.detect.canonical(),
        }))
    }

    /// The views in their serialized form (see [`ViewsSnapshot`]).
    pub fn to_snapshot(&self) -> ViewsSnapshot {
        let mut tokens: Vec<&Tok> = self.tokens.iter().collect();
        tokens.sort_unstable_by_key(|t| t.position);
        let raw = |s: Option<Sym>| s.map_or(0, |s| s.0.get());
        let mut revoked_tokens: Vec<(String, u64, Option<DateTime<Utc>>)> = self
            .revoked_tokens
            .iter()
            .map(|(k, e)| (k.to_string(), e.position, e.expires_at))
            .collect();
        revoked_tokens.sort();
        let mut selectors: Vec<(SelectorScope, String, u64)> =
            self.revoked_selectors().map(|(s, k, p)| (s, k.to_owned(), p)).collect();
        selectors.sort_by(|a, b| (scope_index(a.0), &a.1).cmp(&(scope_index(b.0), &b.1)));
        let mut listed: Vec<String> = self.listed.iter().map(|x| x.to_string()).collect();
        listed.sort();
        let mut issuers: Vec<IssuerTrusted> = self.issuers.values().cloned().collect();
        issuers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut issuer_kids: Vec<(String, String, String)> = self
            .issuer_kids
            .iter()
            .map(|(kid, (n, k))| (kid.clone(), n.clone(), k.clone()))
            .collect();
        issuer_kids.sort();
        ViewsSnapshot {
            now: self.now,
            strings: self
                .strings
                .slots
                .iter()
                .map(|s| s.as_ref().map(|s| s.text.to_string()))
                .collect(),
            free: self.strings.free.iter().map(|s| s.0.get()).collect(),
            tokens: tokens
                .into_iter()
                .map(|t| {
                    TokenSnap(
                        t.id.to_string(),
                        t.position,
                        [t.issued_at, t.expires_at, t.not_before],
                        [
                            t.issuer.0.get(),
                            t.subject.0.get(),
                            t.client_id.0.get(),
                            t.audience.0.get(),
                            t.scope.0.get(),
                            raw(t.kid),
                            raw(t.parent),
                        ],
                        format_code(t.format),
                        t.cnf.as_deref().cloned(),
                    )
                })
                .collect(),
            revoked_tokens,
            selectors,
            listed,
            block_log: self.block_log.clone(),
            keys: self.keys.values().cloned().collect(),
            issuers,
            issuer_kids,
            cutoffs: self.cutoffs.values().cloned().collect(),
            detect: self.detect.clone(),
        }
    }

    /// Restores views from [`TenantViews::to_snapshot`]: the same state,
    /// behaving exactly as the views it was taken from.
    ///
    /// Errors: [`SnapshotError`] when the snapshot is inconsistent (a
    /// symbol naming no string, a string nothing refers to, a repeated
    /// token id, an unknown format code).
    pub fn from_snapshot(s: ViewsSnapshot) -> Result<TenantViews, SnapshotError> {
        let bad = |m: String| Err(SnapshotError(m));
        let mut v = TenantViews {
            now: s.now,
            ..TenantViews::default()
        };
        let mut refs = vec![0u32; s.strings.len()];
        v.strings.slots = s
            .strings
            .into_iter()
            .map(|t| {
                t.map(|t| Slot {
                    text: Arc::from(t.as_str()),
                    refs: 0,
                })
            })
            .collect();
        for (i, slot) in v.strings.slots.iter().enumerate() {
            if let Some(slot) = slot
                && v.strings.ids.insert(slot.text.clone(), Sym::from_index(i)).is_some()
            {
                return bad(format!("string {:?} is interned twice", slot.text));
            }
        }
        let mut free = Vec::with_capacity(s.free.len());
        for raw in s.free {
            let Some(sym) = NonZeroU32::new(raw).map(Sym) else {
                return bad("symbol 0 in the free list".into());
            };
            if v.strings.slots.get(sym.index()).is_none_or(|x| x.is_some()) {
                return bad(format!("free symbol {raw} is not a free slot"));
            }
            free.push(sym);
        }
        if free.len() != v.strings.slots.iter().filter(|x| x.is_none()).count() {
            return bad("the free list does not name every free slot".into());
        }
        v.strings.free = free;
        let sym = |raw: u32, refs: &mut Vec<u32>, slots: &Vec<Option<Slot>>| -> Result<Sym, SnapshotError> {
            let sym = NonZeroU32::new(raw)
                .map(Sym)
                .ok_or_else(|| SnapshotError("symbol 0 where a string is required".into()))?;
            match slots.get(sym.index()) {
                Some(Some(_)) => {
                    refs[sym.index()] += 1;
                    Ok(sym)
                }
                _ => Err(SnapshotError(format!("symbol {raw} names no string"))),
            }
        };
        let mut tokens = s.tokens;
        tokens.sort_by_key(|t| t.1);
        for TokenSnap(id, position, times, syms, format, cnf) in tokens {
            let slots = &v.strings.slots;
            let opt = |raw: u32, refs: &mut Vec<u32>| -> Result<Option<Sym>, SnapshotError> {
                if raw == 0 {
                    Ok(None)
                } else {
                    sym(raw, refs, slots).map(Some)
                }
            };
            let [issuer, subject, client_id, audience, scope, kid, parent] = syms;
            let Some(format) = format_from_code(format) else {
                return bad(format!("token {id:?}: unknown format code {format}"));
            };
            let tok = Tok {
                id: Arc::from(id.as_str()),
                position,
                issued_at: times[0],
                expires_at: times[1],
                not_before: times[2],
                issuer: sym(issuer, &mut refs, slots)?,
                subject: sym(subject, &mut refs, slots)?,
                client_id: sym(client_id, &mut refs, slots)?,
                audience: sym(audience, &mut refs, slots)?,
                scope: sym(scope, &mut refs, slots)?,
                kid: opt(kid, &mut refs)?,
                parent: opt(parent, &mut refs)?,
                format,
                cnf: cnf.map(Box::new),
            };
            if let Some(p) = tok.parent {
                v.children.entry(p).or_default().push(tok.id.clone());
            }
            v.expiry.insert((tok.prune_at(), tok.position), tok.id.clone());
            if !v.tokens.insert(tok) {
                return bad(format!("token {id:?} appears twice"));
            }
        }
        for (i, slot) in v.strings.slots.iter_mut().enumerate() {
            if let Some(slot) = slot {
                if refs[i] == 0 {
                    return bad(format!("string {:?} is interned but unused", slot.text));
                }
                slot.refs = refs[i];
            }
        }
        v.revoked_tokens = s
            .revoked_tokens
            .into_iter()
            .map(|(k, position, expires_at)| (k.into(), BlockEntry { position, expires_at }))
            .collect();
        for (scope, key, p) in s.selectors {
            v.selectors[scope_index(scope)].insert(key.into(), p);
        }
        v.listed = s.listed.into_iter().map(Into::into).collect();
        v.block_log = s.block_log;
        v.keys = s.keys.into_iter().map(|k| (k.kid.clone(), k)).collect();
        v.issuers = s.issuers.into_iter().map(|i| (i.name.clone(), i)).collect();
        v.issuer_kids = s.issuer_kids.into_iter().map(|(kid, n, k)| (kid, (n, k))).collect();
        v.cutoffs = s.cutoffs.into_iter().map(|c| (c.cutoff_id.clone(), c)).collect();
        v.detect = s.detect;
        Ok(v)
    }
}

/// RFC 3339 UTC with the sub-second part the time has.
fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `v` with every object's keys in sorted order at any depth, whichever
/// map type `serde_json` is built with, so its text is canonical.
pub fn canonical_json(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, canonical_json(v))).collect();
            let mut out = Map::new();
            for (k, v) in sorted {
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical_json).collect()),
        other => other.clone(),
    }
}

/// The first path (`/a/b/0`) at which two JSON values differ, `None` when
/// they are equal.
pub fn first_difference(a: &Value, b: &Value) -> Option<String> {
    fn walk(a: &Value, b: &Value, path: &mut String) -> bool {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    match (x.get(k), y.get(k)) {
                        (Some(p), Some(q)) => {
                            if walk(p, q, path) {
                                return true;
                            }
                        }
                        _ => return true,
                    }
                    path.truncate(len);
                }
                false
            }
            (Value::Array(x), Value::Array(y)) => {
                for i in 0..x.len().max(y.len()) {
                    let len = path.len();
                    path.push_str(&format!("/{i}"));
                    match (x.get(i), y.get(i)) {
                        (Some(p), Some(q)) => {
                            if walk(p, q, path) {
                                return true;
                            }
                        }
                        _ => return true,
                    }
                    path.truncate(len);
                }
                false
            }
            (x, y) => x != y,
        }
    }
    let mut path = String::new();
    walk(a, b, &mut path).then(|| if path.is_empty() { "/".into() } else { path })
}

/// A [`TenantViews`] as it is written into a snapshot: the interner's
/// string table and the tokens by symbol (compact), every other part as is,
/// in a deterministic order. Derived indexes (the expiry order, children,
/// the interner's reverse map and reference counts) are rebuilt on restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewsSnapshot {
    now: i64,
    strings: Vec<Option<String>>,
    free: Vec<u32>,
    tokens: Vec<TokenSnap>,
    revoked_tokens: Vec<(String, u64, Option<DateTime<Utc>>)>,
    selectors: Vec<(SelectorScope, String, u64)>,
    listed: Vec<String>,
    block_log: Vec<BlockLogEntry>,
    keys: Vec<KeyRecord>,
    issuers: Vec<IssuerTrusted>,
    issuer_kids: Vec<(String, String, String)>,
    cutoffs: Vec<CutoffRecord>,
    detect: Detectors,
}

/// One token of a [`ViewsSnapshot`], written as a JSON array for
/// compactness: `[id, position, [iat, exp, nbf], [issuer, subject, client,
/// audience, scope, kid, parent], format, cnf]`, times in Unix seconds,
/// symbols as interner indexes + 1 (0: none), format 0 `v4.public`, 1
/// `v4.local`, 2 `external`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TokenSnap(String, u64, [i64; 3], [u32; 7], u8, Option<Map<String, Value>>);

/// A snapshot that does not describe consistent views.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inconsistent views snapshot: {0}")]
pub struct SnapshotError(pub String);

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

    fn secs(s: i64) -> DateTime<Utc> {
        t0() + chrono::Duration::seconds(s)
    }

    fn issued_for(id: &str, subject: &str, parent: Option<&str>, ttl: i64) -> DomainEvent {
        DomainEvent::TokenIssued(TokenIssued {
            token_id: id.into(),
            tenant: "t".into(),
            issuer: "tokenledger".into(),
            subject: subject.into(),
            client_id: "c".into(),
            audience: "a".into(),
            scope: "s".into(),
            issued_at: t0(),
            expires_at: t0() + chrono::Duration::seconds(ttl),
            not_before: t0(),
            format: TokenFormat::V4Public,
            kid: Some("k4.pid.k1".into()),
            cnf: None,
            parent_token_id: parent.map(Into::into),
            context: None,
        })
    }

    fn issued(id: &str, subject: &str, parent: Option<&str>) -> DomainEvent {
        issued_for(id, subject, parent, 3600)
    }

    fn revoked(id: Option<&str>, selector: Option<(SelectorScope, &str)>) -> DomainEvent {
        DomainEvent::TokenRevoked(TokenRevoked {
            token_id: id.map(Into::into),
            selector: selector.map(|(scope, key)| Selector { scope, key: key.into() }),
            reason: "r".into(),
            by: None,
        })
    }

    fn used() -> DomainEvent {
        DomainEvent::RiskSignalReceived(RiskSignalReceived {
            source: "x".into(),
            subject: Some("alice".into()),
            client_id: None,
            ip: None,
            level: RiskLevel::Low,
            kind: "k".into(),
            expires_at: t0(),
        })
    }

    fn no_kid(_: &str) -> Option<String> {
        None
    }

    fn restored(v: &TenantViews) -> TenantViews {
        let text = serde_json::to_string(&v.to_snapshot()).unwrap();
        TenantViews::from_snapshot(serde_json::from_str(&text).unwrap()).unwrap()
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
        assert_eq!(v.revoked_position("b"), Some(4));
        assert!(v.is_revoked_directly("c") && !v.is_revoked_directly("a"));
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
    fn ids_that_name_each_other_as_parents_do_not_hang_a_revocation() {
        let mut v = TenantViews::default();
        v.apply(1, t0(), &issued("x", "alice", Some("y")), no_kid);
        v.apply(2, t0(), &issued("y", "alice", Some("x")), no_kid);
        v.apply(3, t0(), &revoked(Some("x"), None), no_kid);
        assert!(v.is_revoked("x") && v.is_revoked("y"));
        assert_eq!(v.block_log.len(), 2);
    }

    #[test]
    fn a_record_resolves_every_interned_string() {
        let mut v = TenantViews::default();
        v.apply(7, t0(), &issued("a", "alice", Some("p")), no_kid);
        let r = v.token("a").unwrap();
        assert_eq!(
            (
                r.subject.as_str(),
                r.client_id.as_str(),
                r.kid.as_deref(),
                r.parent.as_deref()
            ),
            ("alice", "c", Some("k4.pid.k1"), Some("p"))
        );
        assert_eq!((r.position, r.expires_at), (7, secs(3600)));
        let row = v.token_rows().next().unwrap();
        assert_eq!((row.token_id, row.expires_at), ("a", secs(3600).timestamp()));
        assert!(v.contains_token("a") && !v.contains_token("p"));
    }

    #[test]
    fn an_expired_token_is_pruned_after_the_horizon_by_event_time() {
        let mut v = TenantViews::default();
        v.apply(1, t0(), &issued_for("a", "alice", None, 60), no_kid);
        v.apply(2, t0(), &revoked(Some("a"), None), no_kid);
        v.apply(3, t0(), &issued_for("long", "bob", None, 86400), no_kid);
        // Exactly at the horizon: kept.
        v.apply(4, secs(60 + PRUNE_AFTER_SECONDS), &used(), no_kid);
        assert!(v.contains_token("a"));
        assert!(!v.may_have_pruned(secs(60)));
        v.apply(5, secs(61 + PRUNE_AFTER_SECONDS), &used(), no_kid);
        assert!(!v.contains_token("a"), "pruned one second after the horizon");
        assert!(v.may_have_pruned(secs(60)));
        assert!(!v.is_revoked_directly("a"));
        assert!(v.block_log.is_empty(), "the block-list entry goes with the token");
        assert!(v.contains_token("long"));
        assert!(
            v.strings.get("alice").is_none(),
            "a string no kept token names is freed"
        );
        assert!(v.strings.get("bob").is_some());
    }

    #[test]
    fn a_parent_is_kept_while_a_token_exchanged_from_it_is() {
        let mut v = TenantViews::default();
        v.apply(1, t0(), &issued_for("p", "alice", None, 60), no_kid);
        v.apply(2, t0(), &issued_for("c", "alice", Some("p"), 600), no_kid);
        v.apply(3, t0(), &revoked(Some("p"), None), no_kid);
        v.apply(4, secs(500), &used(), no_kid);
        assert!(
            v.may_have_pruned(secs(60)) && v.contains_token("p"),
            "the chain stays walkable"
        );
        assert!(v.is_revoked("c"));
        v.apply(5, secs(600 + PRUNE_AFTER_SECONDS + 1), &used(), no_kid);
        assert!(!v.contains_token("c") && !v.contains_token("p"), "both go together");
        assert!(v.block_log.is_empty());
        assert!(v.children.is_empty() && v.strings.ids.is_empty());
    }

    #[test]
    fn a_snapshot_restores_views_that_behave_the_same() {
        let mut live = TenantViews::default();
        let history = [
            issued_for("a", "alice", None, 60),
            issued_for("b", "alice", Some("a"), 900),
            issued_for("c", "bob", None, 30),
            revoked(Some("a"), None),
            revoked(None, Some((SelectorScope::Client, "c"))),
            issued_for("d", "carol", Some("b"), 2000),
            used(),
            issued_for("e", "dave", None, 100),
            used(),
        ];
        let mut restarted: Option<TenantViews> = None;
        for (i, e) in history.iter().enumerate() {
            let at = secs(i as i64 * 300);
            live.apply(i as u64 + 1, at, e, no_kid);
            if let Some(r) = restarted.as_mut() {
                r.apply(i as u64 + 1, at, e, no_kid);
            }
            if i == 3 {
                restarted = Some(restored(&live));
            }
            assert_eq!(restored(&live).canonical(), live.canonical(), "after event {i}");
        }
        let restarted = restarted.unwrap();
        assert_eq!(restarted.canonical(), live.canonical());
        assert!(!live.contains_token("c"), "something was pruned on the way");
        assert_eq!(
            serde_json::to_string(&restarted.to_snapshot()).unwrap(),
            serde_json::to_string(&live.to_snapshot()).unwrap()
        );
    }

    #[test]
    fn an_inconsistent_snapshot_is_refused() {
        let mut v = TenantViews::default();
        v.apply(1, t0(), &issued("a", "alice", None), no_kid);
        let mut s = serde_json::to_value(v.to_snapshot()).unwrap();
        s["tokens"][0][3][0] = json!(99);
        let err = TenantViews::from_snapshot(serde_json::from_value(s).unwrap()).unwrap_err();
        assert!(err.0.contains("names no string"), "{err}");
    }

    #[test]
    fn cutoffs_are_engaged_and_released_by_their_events() {
        let mut v = TenantViews::default();
        let engage = |id: &str, scope: CutoffScope, key: &str, mode: CutoffMode| {
            DomainEvent::MintingCutoffEngaged(MintingCutoffEngaged {
                cutoff_id: id.into(),
                scope,
                key: key.into(),
                rule_id: "manual".into(),
                reason: "r".into(),
                evidence: Evidence::default(),
                until: secs(3600),
                mode,
            })
        };
        v.apply(
            1,
            secs(10),
            &engage("c1", CutoffScope::Subject, "alice", CutoffMode::DryRun),
            no_kid,
        );
        v.apply(
            2,
            secs(20),
            &engage("c2", CutoffScope::Subject, "alice", CutoffMode::Enforce),
            no_kid,
        );
        v.apply(
            3,
            secs(30),
            &engage("c3", CutoffScope::Tenant, "t", CutoffMode::Enforce),
            no_kid,
        );
        let c = v.cutoff_matching(CutoffScope::Subject, "alice", secs(40)).unwrap();
        assert_eq!(c.cutoff_id, "c2", "enforced before dry run");
        assert_eq!((c.engaged_position, c.engaged_at), (2, secs(20)));
        assert!(v.cutoff_matching(CutoffScope::Subject, "bob", secs(40)).is_none());
        assert!(
            v.cutoff_matching(CutoffScope::Tenant, "t", secs(3600)).is_none(),
            "until passed"
        );
        v.apply(
            4,
            secs(50),
            &DomainEvent::MintingCutoffReleased(MintingCutoffReleased {
                cutoff_id: "c2".into(),
                reason: "ok".into(),
                by: "soc".into(),
            }),
            no_kid,
        );
        assert_eq!(
            v.cutoff_matching(CutoffScope::Subject, "alice", secs(60))
                .unwrap()
                .cutoff_id,
            "c1"
        );
        assert_eq!(v.cutoffs["c2"].released_position, Some(4));
        let ids: Vec<&str> = v.active_cutoffs(secs(60)).map(|c| c.cutoff_id.as_str()).collect();
        assert_eq!(ids, ["c1", "c3"]);
    }

    #[test]
    fn the_first_difference_names_its_path() {
        let a = json!({"t": {"x": [1, 2], "y": 1}});
        let b = json!({"t": {"x": [1, 3], "y": 1}});
        assert_eq!(first_difference(&a, &b).as_deref(), Some("/t/x/1"));
        assert_eq!(first_difference(&a, &a), None);
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
