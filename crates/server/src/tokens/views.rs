//! The live views (issued tokens, block list, key ring, trusted issuers) of
//! every tenant, updated by the store's commit hook before an append is
//! acknowledged, and the writer's guard that reads them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::CURRENT_SCHEMA_VERSION;
use tokenledger_domain::views::TenantViews;
use tokenledger_store::{AppendGuard, CommitHook, NewEvent, RecordedEvent, Rejection, StreamId};

/// Every tenant's [`TenantViews`].
pub struct LiveViews {
    tenants: RwLock<HashMap<String, TenantViews>>,
    /// Position of the last event the views have seen.
    head: AtomicU64,
    /// Bumped with the position of every new block-list entry, so a
    /// long-polling validator wakes up.
    blocks: tokio::sync::watch::Sender<u64>,
}

impl Default for LiveViews {
    fn default() -> Self {
        Self {
            tenants: RwLock::default(),
            head: AtomicU64::new(0),
            blocks: tokio::sync::watch::channel(0).0,
        }
    }
}

const VIEW_TYPES: &[&str] = &[
    "TokenIssued",
    "TokenRevoked",
    "SigningKeyAdded",
    "SigningKeyActivated",
    "SigningKeyRetired",
    "SigningKeyRevoked",
    "IssuerTrusted",
];

impl LiveViews {
    /// Folds one committed event in.
    pub fn apply(&self, e: &RecordedEvent) {
        let blocked = self.fold(e);
        // After the fold: every entry at or before the head is in the views.
        self.head.fetch_max(e.position.0, Ordering::AcqRel);
        if blocked {
            self.blocks.send_replace(e.position.0);
        }
    }

    /// Folds the event; true if it added a block-list entry.
    fn fold(&self, e: &RecordedEvent) -> bool {
        if !VIEW_TYPES.contains(&e.event_type.as_str()) {
            return false;
        }
        match DomainEvent::from_parts(&e.event_type, CURRENT_SCHEMA_VERSION, &e.data) {
            Ok(ev) => {
                let mut t = self.tenants.write().unwrap_or_else(|p| p.into_inner());
                let v = t.entry(e.tenant.clone()).or_default();
                let before = v.block_log.len();
                v.apply(
                    e.position.0,
                    e.recorded_at,
                    &ev,
                    tokenledger_tokens::keys::kid_of_public,
                );
                v.block_log.len() > before
            }
            Err(err) => {
                tracing::error!(position = e.position.0, error = %err, "undecodable event skipped by the views");
                false
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

    /// Position of the last event the views have seen.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// A receiver woken by every new block-list entry.
    pub fn watch_blocks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.blocks.subscribe()
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

/// The writer's guard over the views: refuses a `TokenIssued` exchanged
/// from a token revoked at an earlier position (DESIGN.md "Enforcement is
/// serialized with the log"). Revocations are barriers.
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
            if e.event_type != "TokenIssued" {
                continue;
            }
            let Some(parent) = e.data.get("parent_token_id").and_then(|v| v.as_str()) else {
                continue;
            };
            if self.0.read(&stream.tenant, |v| v.is_revoked(parent)) {
                return Err(Rejection {
                    kind: "parent-revoked".into(),
                    detail: format!("token {parent:?} was revoked; nothing can be exchanged from it"),
                    extra: Default::default(),
                });
            }
        }
        Ok(())
    }
}
