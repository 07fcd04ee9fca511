//! The local block list, fed by `GET /v1/blocklist` (DESIGN.md "Wire
//! shapes": block list).
//!
//! An answer is `{"entries": [...], "position": POS}` where each entry is one
//! of
//!
//! * `{"token_id": "…", "position": P, "expires_at": "RFC 3339" | null}` —
//!   a revoked token (the feed lists every token exchanged from a revoked one
//!   too); it matters until the token expires;
//! * `{"selector": {"scope": "subject" | "client" | "issuer", "key": "…"},
//!   "revoked_at": "RFC 3339", "position": P, "expires_at": null}` — every
//!   token of that subject, client or issuer issued at or before
//!   `revoked_at` (compared with the token's `iat`);
//! * `{"kid": "k4.pid.…", "position": P, "expires_at": null}` — a revoked
//!   signing key.
//!
//! Anything else in an answer is ignored (and counted), never a panic.

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use tokenledger_tokens::paseto::TokenClaims;

/// One entry of the feed, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A revoked token and when it stops mattering (`None`: unknown, kept).
    Token {
        id: String,
        expires_at: Option<DateTime<Utc>>,
    },
    /// A selector revocation: tokens whose `scope` claim equals `key` and
    /// whose `iat` ≤ `revoked_at` are revoked.
    Selector {
        scope: String,
        key: String,
        revoked_at: DateTime<Utc>,
    },
    /// A revoked signing key.
    Kid(String),
}

/// One answer of the feed, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FeedAnswer {
    /// The entries understood, in the order given.
    pub entries: Vec<Entry>,
    /// The position to ask from next.
    pub position: u64,
    /// Entries that could not be understood.
    pub ignored: usize,
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn text(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Parses one entry; `None` if it is not one of the three shapes. A
/// selector without a readable `revoked_at` is taken as revoked at `now`
/// (the revocation cannot be later than the answer), which errs on the side
/// of refusing.
pub(crate) fn parse_entry(e: &Value, now: DateTime<Utc>) -> Option<Entry> {
    if let Some(id) = e.get("token_id") {
        return Some(Entry::Token {
            id: text(id)?,
            expires_at: e.get("expires_at").and_then(time),
        });
    }
    if let Some(sel) = e.get("selector") {
        return Some(Entry::Selector {
            scope: text(sel.get("scope")?)?,
            key: text(sel.get("key")?)?,
            revoked_at: e.get("revoked_at").and_then(time).unwrap_or(now),
        });
    }
    if let Some(kid) = e.get("kid") {
        return Some(Entry::Kid(text(kid)?));
    }
    None
}

/// Parses a feed answer; `Err` if it has no `position` or no `entries`
/// array (then nothing of it is applied).
pub(crate) fn parse_answer(v: &Value, now: DateTime<Utc>) -> Result<FeedAnswer, String> {
    let position = v
        .get("position")
        .and_then(Value::as_u64)
        .ok_or_else(|| "the answer has no integer `position`".to_owned())?;
    let raw = v
        .get("entries")
        .and_then(Value::as_array)
        .ok_or_else(|| "the answer has no `entries` array".to_owned())?;
    let mut entries = Vec::with_capacity(raw.len());
    let mut ignored = 0;
    for e in raw {
        match parse_entry(e, now) {
            Some(x) => entries.push(x),
            None => ignored += 1,
        }
    }
    Ok(FeedAnswer {
        entries,
        position,
        ignored,
    })
}

/// The local block list: revoked token ids, selector revocations and revoked
/// key ids, and the feed position it is complete up to.
#[derive(Debug, Clone, Default)]
pub(crate) struct BlockList {
    tokens: HashMap<String, Option<DateTime<Utc>>>,
    selectors: HashMap<(String, String), DateTime<Utc>>,
    kids: HashSet<String>,
    position: Option<u64>,
}

impl BlockList {
    /// The position to ask the feed from next; `None` before a snapshot.
    pub fn position(&self) -> Option<u64> {
        self.position
    }

    /// Forgets the position, so the next poll takes a new snapshot.
    pub fn reset_position(&mut self) {
        self.position = None;
    }

    /// Replaces everything with a snapshot (`GET /v1/blocklist` without
    /// `since`).
    pub fn replace(&mut self, snapshot: FeedAnswer) {
        *self = BlockList::default();
        self.apply_delta(snapshot);
    }

    /// Applies a delta (`since=POS`) and moves to its position.
    pub fn apply_delta(&mut self, delta: FeedAnswer) {
        for e in delta.entries {
            self.apply(e);
        }
        // The position never moves back: a delta answers at least `since`.
        self.position = Some(self.position.map_or(delta.position, |p| p.max(delta.position)));
    }

    /// Applies one entry.
    pub fn apply(&mut self, e: Entry) {
        match e {
            Entry::Token { id, expires_at } => {
                // Listed twice (it should not be): keep the later expiry.
                let slot = self.tokens.entry(id).or_insert(expires_at);
                *slot = match (*slot, expires_at) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            Entry::Selector { scope, key, revoked_at } => {
                let slot = self.selectors.entry((scope, key)).or_insert(revoked_at);
                *slot = (*slot).max(revoked_at);
            }
            Entry::Kid(kid) => {
                self.kids.insert(kid);
            }
        }
    }

    /// Drops token entries whose token expired more than `grace` before
    /// `now` (a token that old is refused as `expired` anyway, provided
    /// `grace` is at least the verification leeway). Selectors and keys are
    /// kept. Returns how many entries were dropped.
    pub fn prune(&mut self, now: DateTime<Utc>, grace: chrono::Duration) -> usize {
        let before = self.tokens.len();
        self.tokens.retain(|_, exp| match exp {
            Some(t) => t.checked_add_signed(grace).is_none_or(|limit| limit >= now),
            None => true,
        });
        before - self.tokens.len()
    }

    /// Whether the key is revoked.
    pub fn kid_revoked(&self, kid: &str) -> bool {
        self.kids.contains(kid)
    }

    /// Whether verified `claims` are revoked: by token id, or by a selector
    /// on its subject, client or issuer revoked at or after its `iat`.
    pub fn covers(&self, claims: &TokenClaims) -> bool {
        if self.tokens.contains_key(&claims.jti) {
            return true;
        }
        if self.selectors.is_empty() {
            return false;
        }
        [
            ("subject", &claims.sub),
            ("client", &claims.client_id),
            ("issuer", &claims.iss),
        ]
        .into_iter()
        .any(|(scope, key)| {
            self.selectors
                .get(&(scope.to_owned(), key.clone()))
                .is_some_and(|revoked_at| claims.iat <= *revoked_at)
        })
    }

    /// Sizes: (token entries, selectors, revoked kids).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.tokens.len(), self.selectors.len(), self.kids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 4, h, m, s).unwrap()
    }

    fn claims(jti: &str, sub: &str, client: &str, iat: DateTime<Utc>) -> TokenClaims {
        TokenClaims::new(
            "tokenledger",
            sub,
            "api://orders",
            jti,
            "orders:read",
            client,
            iat,
            iat + chrono::Duration::seconds(300),
        )
    }

    fn answer(v: Value) -> FeedAnswer {
        parse_answer(&v, t(12, 0, 0)).unwrap()
    }

    #[test]
    fn token_entries_revoke_by_id_and_move_the_position() {
        let mut bl = BlockList::default();
        assert_eq!(bl.position(), None);
        bl.replace(answer(json!({"entries": [], "position": 7})));
        assert_eq!(bl.position(), Some(7));
        let c = claims("j1", "alice", "c1", t(11, 0, 0));
        assert!(!bl.covers(&c));
        bl.apply_delta(answer(json!({
            "entries": [{"token_id": "j1", "position": 9, "expires_at": "2026-03-04T11:05:00Z"}],
            "position": 12
        })));
        assert!(bl.covers(&c));
        assert!(!bl.covers(&claims("j2", "alice", "c1", t(11, 0, 0))));
        assert_eq!(bl.position(), Some(12));
        // A delta never moves the position back.
        bl.apply_delta(answer(json!({"entries": [], "position": 3})));
        assert_eq!(bl.position(), Some(12));
    }

    #[test]
    fn a_selector_covers_tokens_issued_at_or_before_it() {
        let mut bl = BlockList::default();
        bl.apply_delta(answer(json!({
            "entries": [{"selector": {"scope": "subject", "key": "alice"}, "revoked_at": "2026-03-04T11:00:00Z",
                         "position": 5, "expires_at": null}],
            "position": 5
        })));
        assert!(bl.covers(&claims("a", "alice", "c1", t(10, 59, 59))));
        assert!(
            bl.covers(&claims("b", "alice", "c1", t(11, 0, 0))),
            "iat == revoked_at is covered"
        );
        assert!(
            !bl.covers(&claims("c", "alice", "c1", t(11, 0, 1))),
            "issued after the revocation"
        );
        assert!(!bl.covers(&claims("d", "bob", "c1", t(10, 0, 0))), "another subject");

        // Client and issuer selectors match client_id and iss.
        bl.apply(Entry::Selector {
            scope: "client".into(),
            key: "c2".into(),
            revoked_at: t(11, 0, 0),
        });
        assert!(bl.covers(&claims("e", "bob", "c2", t(10, 0, 0))));
        bl.apply(Entry::Selector {
            scope: "issuer".into(),
            key: "tokenledger".into(),
            revoked_at: t(9, 0, 0),
        });
        assert!(bl.covers(&claims("f", "carol", "c3", t(8, 0, 0))));
        assert!(!bl.covers(&claims("g", "carol", "c3", t(10, 0, 0))));

        // A later revocation of the same selector extends it; an earlier one does not shrink it.
        bl.apply(Entry::Selector {
            scope: "subject".into(),
            key: "alice".into(),
            revoked_at: t(12, 0, 0),
        });
        assert!(bl.covers(&claims("h", "alice", "c1", t(11, 30, 0))));
        bl.apply(Entry::Selector {
            scope: "subject".into(),
            key: "alice".into(),
            revoked_at: t(1, 0, 0),
        });
        assert!(bl.covers(&claims("h", "alice", "c1", t(11, 30, 0))));

        // A scope we do not know matches nothing.
        bl.apply(Entry::Selector {
            scope: "tenant".into(),
            key: "zed".into(),
            revoked_at: t(12, 0, 0),
        });
        assert!(!bl.covers(&claims("i", "zed", "zed", t(10, 0, 0))));
    }

    #[test]
    fn a_selector_without_revoked_at_is_taken_as_revoked_now() {
        let e = parse_entry(&json!({"selector": {"scope": "client", "key": "c9"}}), t(12, 0, 0)).unwrap();
        assert_eq!(
            e,
            Entry::Selector {
                scope: "client".into(),
                key: "c9".into(),
                revoked_at: t(12, 0, 0)
            }
        );
    }

    #[test]
    fn kid_entries_revoke_keys() {
        let mut bl = BlockList::default();
        bl.apply_delta(answer(json!({
            "entries": [{"kid": "k4.pid.abc", "position": 3, "expires_at": null}],
            "position": 3
        })));
        assert!(bl.kid_revoked("k4.pid.abc"));
        assert!(!bl.kid_revoked("k4.pid.other"));
        assert_eq!(bl.sizes(), (0, 0, 1));
    }

    #[test]
    fn token_entries_are_pruned_after_expiry_plus_grace_and_others_are_kept() {
        let mut bl = BlockList::default();
        bl.apply_delta(answer(json!({
            "entries": [
                {"token_id": "old", "expires_at": "2026-03-04T11:00:00Z", "position": 1},
                {"token_id": "new", "expires_at": "2026-03-04T13:00:00Z", "position": 2},
                {"token_id": "unknown-expiry", "expires_at": null, "position": 3},
                {"token_id": "edge", "expires_at": "+262143-12-31T23:59:59Z", "position": 4},
                {"selector": {"scope": "subject", "key": "alice"}, "revoked_at": "2026-03-04T10:00:00Z", "position": 5},
                {"kid": "k4.pid.x", "position": 6}
            ],
            "position": 6
        })));
        let grace = chrono::Duration::seconds(90);
        // Within the grace period the entry stays: the token may still pass the leeway.
        assert_eq!(bl.prune(t(11, 1, 30), grace), 0);
        assert!(bl.covers(&claims("old", "x", "y", t(10, 0, 0))));
        assert_eq!(bl.prune(t(11, 1, 31), grace), 1);
        assert!(!bl.covers(&claims("old", "x", "y", t(10, 0, 0))));
        assert!(bl.covers(&claims("new", "x", "y", t(10, 0, 0))));
        assert!(bl.covers(&claims("unknown-expiry", "x", "y", t(10, 0, 0))));
        // Pruning far in the future keeps entries without an expiry, and does not overflow.
        bl.apply(Entry::Token {
            id: "max".into(),
            expires_at: Some(DateTime::<Utc>::MAX_UTC),
        });
        assert_eq!(bl.prune(DateTime::<Utc>::MAX_UTC, chrono::Duration::seconds(300)), 1);
        assert_eq!(bl.sizes(), (3, 1, 1));
        assert!(bl.kid_revoked("k4.pid.x"));
        assert!(bl.covers(&claims("z", "alice", "y", t(9, 0, 0))));
    }

    #[test]
    fn a_snapshot_replaces_everything() {
        let mut bl = BlockList::default();
        bl.apply(Entry::Kid("k4.pid.gone".into()));
        bl.replace(answer(json!({"entries": [{"token_id": "j"}], "position": 40})));
        assert!(!bl.kid_revoked("k4.pid.gone"));
        assert_eq!(bl.sizes(), (1, 0, 0));
        assert_eq!(bl.position(), Some(40));
        bl.reset_position();
        assert_eq!(bl.position(), None);
    }

    #[test]
    fn bad_answers_and_entries_never_panic() {
        let now = t(12, 0, 0);
        for bad in [
            json!(null),
            json!([]),
            json!({"entries": []}),
            json!({"entries": {}, "position": 1}),
            json!({"entries": [], "position": -1}),
            json!({"entries": [], "position": "7"}),
        ] {
            assert!(parse_answer(&bad, now).is_err(), "{bad}");
        }
        let a = parse_answer(
            &json!({"entries": [
                1, "x", null, {}, {"token_id": 5}, {"token_id": ""}, {"selector": "subject:alice"},
                {"selector": {"scope": "subject"}}, {"kid": ["k"]},
                {"token_id": "ok", "expires_at": "not a time"}
            ], "position": 2}),
            now,
        )
        .unwrap();
        assert_eq!(a.ignored, 9);
        assert_eq!(
            a.entries,
            vec![Entry::Token {
                id: "ok".into(),
                expires_at: None
            }]
        );
    }
}
