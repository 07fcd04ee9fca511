//! The live views (issued tokens, block list, key ring, trusted issuers,
//! cutoffs) of every tenant, updated by the store's commit hook (see
//! [`crate::projections`]) before an append is acknowledged, and the
//! writer's guard that reads them.
//!
//! Each tenant's views sit behind an `Arc`: a snapshot takes the `Arc`s at
//! one position without copying, and the writer copies a tenant's views
//! only if it changes them while a snapshot still holds them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::CURRENT_SCHEMA_VERSION;
use tokenledger_domain::views::TenantViews;
use tokenledger_store::{AppendGuard, CommitHook, NewEvent, RecordedEvent, Rejection, StreamId};

/// Every tenant's [`TenantViews`].
pub struct LiveViews {
    tenants: RwLock<HashMap<String, Arc<TenantViews>>>,
    /// Position of the last event the views have seen.
    head: AtomicU64,
    /// Bumped with the position of every new block-list entry, so a
    /// long-polling validator wakes up.
    blocks: tokio::sync::watch::Sender<u64>,
    /// Bumped with the position of every event that added an anomaly, a
    /// risk signal or a detector configuration, so the alert stream, the
    /// webhooks and the cutoff rules wake up.
    detections: tokio::sync::watch::Sender<u64>,
}

impl Default for LiveViews {
    fn default() -> Self {
        Self {
            tenants: RwLock::default(),
            head: AtomicU64::new(0),
            blocks: tokio::sync::watch::channel(0).0,
            detections: tokio::sync::watch::channel(0).0,
        }
    }
}

pub use tokenledger_domain::views::VIEW_TYPES;

impl LiveViews {
    /// Folds one committed event in.
    pub fn apply(&self, e: &RecordedEvent) {
        let (blocked, detected) = self.fold(e);
        // After the fold: every entry at or before the head is in the views.
        self.head.fetch_max(e.position.0, Ordering::AcqRel);
        if blocked {
            self.blocks.send_replace(e.position.0);
        }
        if detected {
            self.detections.send_replace(e.position.0);
        }
    }

    /// Folds the event; returns whether it added a block-list entry and
    /// whether it added an anomaly, a risk signal or a detector
    /// configuration. An event of
    /// another type advances the tenant's views' now (when they exist and
    /// it moves), so pruning follows every event of the tenant.
    fn fold(&self, e: &RecordedEvent) -> (bool, bool) {
        if !VIEW_TYPES.contains(&e.event_type.as_str()) {
            let at = e.recorded_at.timestamp();
            let behind = {
                let t = self.tenants.read().unwrap_or_else(|p| p.into_inner());
                t.get(&e.tenant)
                    .is_some_and(|v| v.now().is_none_or(|n| n.timestamp() < at))
            };
            if behind {
                let mut t = self.tenants.write().unwrap_or_else(|p| p.into_inner());
                if let Some(v) = t.get_mut(&e.tenant) {
                    Arc::make_mut(v).advance(e.recorded_at);
                }
            }
            return (false, false);
        }
        match DomainEvent::from_parts(&e.event_type, CURRENT_SCHEMA_VERSION, &e.data) {
            Ok(ev) => {
                let mut t = self.tenants.write().unwrap_or_else(|p| p.into_inner());
                let v = Arc::make_mut(t.entry(e.tenant.clone()).or_default());
                let before = v.block_log.len();
                let source = tokenledger_domain::anomalies::source_time(&e.metadata);
                let added = v.apply_timed(
                    e.position.0,
                    e.recorded_at,
                    source,
                    &ev,
                    tokenledger_tokens::keys::kid_of_public,
                );
                let detected = added > 0
                    || matches!(
                        ev,
                        DomainEvent::RiskSignalReceived(_) | DomainEvent::DetectorConfigChanged(_)
                    );
                (v.block_log.len() > before, detected)
            }
            Err(err) => {
                tracing::error!(position = e.position.0, error = %err, "undecodable event skipped by the views");
                (false, false)
            }
        }
    }

    /// Runs `f` on the tenant's views (empty views for an unknown tenant).
    pub fn read<R>(&self, tenant: &str, f: impl FnOnce(&TenantViews) -> R) -> R {
        let t = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        match t.get(tenant) {
            Some(v) => f(v),
            None => f(&TenantViews::default()),
        }
    }

    /// The tenant's views as of now, shared (a cheap `Arc` clone): later
    /// events do not change what the caller holds.
    pub fn tenant(&self, tenant: &str) -> Option<Arc<TenantViews>> {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
    }

    /// Position of the last event the views have seen.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// A receiver woken by every new block-list entry.
    pub fn watch_blocks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.blocks.subscribe()
    }

    /// A receiver woken (with its position) by every event that added an
    /// anomaly or a risk signal or changed a tenant's detector
    /// configuration.
    pub fn watch_detections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.detections.subscribe()
    }

    /// Every tenant's views at the current head, without copying them:
    /// `(head, [(tenant, views)])`, tenants sorted. Consistent only when no
    /// fold runs meanwhile (the caller holds the fold lock, or runs in the
    /// commit hook).
    pub fn capture(&self) -> (u64, Vec<(String, Arc<TenantViews>)>) {
        let t = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(String, Arc<TenantViews>)> = t.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        (self.head(), all)
    }

    /// Replaces every tenant's views and the head (a restored snapshot).
    /// Call before any event is folded.
    pub fn restore(&self, head: u64, tenants: impl IntoIterator<Item = (String, TenantViews)>) {
        let mut t = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        *t = tenants.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        self.head.store(head, Ordering::Release);
    }

    /// The tenants that have views.
    pub fn tenants(&self) -> Vec<String> {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

impl CommitHook for LiveViews {
    fn committed(&self, events: &[Arc<RecordedEvent>]) {
        for e in events {
            self.apply(e);
        }
    }
}

/// The writer's guard over the views (DESIGN.md "Enforcement is serialized
/// with the log"): refuses a `TokenIssued` exchanged from a token revoked at
/// an earlier position (`parent-revoked`), and one that an enforced cutoff
/// committed at an earlier position and not released matches
/// (`minting-cutoff`, with the `cutoff_id` as an extra member), whichever
/// path it comes by. Revocations and cutoff engages are barriers.
pub struct ViewGuard(pub Arc<LiveViews>);

impl AppendGuard for ViewGuard {
    fn is_barrier(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            "TokenRevoked" | "SigningKeyRevoked" | "MintingCutoffEngaged"
        )
    }

    fn check(&self, stream: &StreamId, events: &[NewEvent]) -> Result<(), Rejection> {
        for e in events {
            // An imported issuance (`metadata.source_time`) is history from
            // another system: a cutoff here cannot have stopped it.
            if e.event_type != "TokenIssued" || e.metadata.get("source_time").is_some_and(|t| !t.is_null()) {
                continue;
            }
            let parent = e.data.get("parent_token_id").and_then(|v| v.as_str());
            if let Some(parent) = parent.filter(|p| self.0.read(&stream.tenant, |v| v.is_revoked(p))) {
                return Err(Rejection {
                    kind: "parent-revoked".into(),
                    detail: format!("token {parent:?} was revoked; nothing can be exchanged from it"),
                    extra: Default::default(),
                });
            }
            // An exchange names its actor token in the same batch.
            let actor = events
                .iter()
                .filter(|x| x.event_type == "TokenExchanged")
                .find_map(|x| x.data.get("actor_token_id").and_then(|v| v.as_str()));
            if let Some(c) = self
                .0
                .read(&stream.tenant, |v| cutoff_for(v, &stream.tenant, &e.data, actor))
            {
                let mut extra = serde_json::Map::new();
                extra.insert("cutoff_id".into(), c.0.clone().into());
                return Err(Rejection {
                    kind: "minting-cutoff".into(),
                    detail: format!("minting is cut off for {} {:?} (cutoff {})", c.1, c.2, c.0),
                    extra,
                });
            }
        }
        Ok(())
    }
}

/// Longest exchange chain walked for cutoffs (the exchange depth limit is
/// far below it; this only bounds a corrupt chain).
const MAX_CHAIN: usize = 64;

/// The enforced cutoff, committed and not released, that a `TokenIssued`
/// with payload `data` runs into: on its tenant, issuer, client or subject,
/// and for an exchange on the subject and client of every token up its
/// chain (the subject token, the original client) and of the actor token.
/// DESIGN.md "Enforcement is serialized with the log": the cutoff's expiry
/// is decided by the server and appended as a release, so this depends on
/// committed events only. Returns (cutoff id, scope name, key).
fn cutoff_for(
    v: &TenantViews,
    tenant: &str,
    data: &serde_json::Value,
    actor: Option<&str>,
) -> Option<(String, &'static str, String)> {
    use tokenledger_domain::events::{CutoffMode, CutoffScope};
    let mut keys: Vec<(CutoffScope, String)> = vec![(CutoffScope::Tenant, tenant.to_owned())];
    let text = |k: &str| data.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    if let Some(i) = text("issuer") {
        keys.push((CutoffScope::Issuer, i));
    }
    if let Some(c) = text("client_id") {
        keys.push((CutoffScope::Client, c));
    }
    if let Some(s) = text("subject") {
        keys.push((CutoffScope::Subject, s));
    }
    let mut next: Vec<String> = text("parent_token_id")
        .into_iter()
        .chain(actor.map(str::to_owned))
        .collect();
    let mut walked = 0;
    while let Some(id) = next.pop() {
        walked += 1;
        if walked > MAX_CHAIN {
            break;
        }
        if let Some(row) = v.token_row(&id) {
            keys.push((CutoffScope::Subject, row.subject.to_owned()));
            keys.push((CutoffScope::Client, row.client_id.to_owned()));
            keys.push((CutoffScope::Issuer, row.issuer.to_owned()));
            if let Some(p) = row.parent {
                next.push(p.to_owned());
            }
        }
    }
    v.cutoffs
        .values()
        .filter(|c| c.mode == CutoffMode::Enforce && c.released_position.is_none())
        .filter(|c| keys.iter().any(|(scope, key)| c.scope == *scope && c.key == *key))
        .min_by_key(|c| c.engaged_position)
        .map(|c| {
            let scope = match c.scope {
                CutoffScope::Subject => "subject",
                CutoffScope::Client => "client",
                CutoffScope::Issuer => "issuer",
                CutoffScope::Tenant => "tenant",
            };
            (c.cutoff_id.clone(), scope, c.key.clone())
        })
}
