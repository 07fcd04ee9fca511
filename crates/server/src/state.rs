//! What every handler shares: the store, the registry projection, the schema
//! validators, the settings, metrics and readiness.

use crate::auth::{Caller, hash_secret, hashes_equal, split_credential};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::projections::Projections;
use crate::schema::Schemas;
use crate::tokens::views::ViewGuard;
use crate::tokens::{KeyRing, LiveViews};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokenledger_analytics::{Analytics, Limits};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::clock::Clock;
use tokenledger_domain::events::CURRENT_SCHEMA_VERSION;
use tokenledger_domain::registry::Registry;
use tokenledger_domain::role::Role;
use tokenledger_domain::views::{KeyRecord, KeyState};
use tokenledger_store::{CommitHook, EventStore, Position, RecordedEvent, StoreError};
use tokenledger_tokens::seal::Kek;

/// Shared state of the HTTP API. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The event store.
    pub store: Arc<dyn EventStore>,
    /// Tenants, principals, client policies: updated from committed events
    /// before the append is acknowledged.
    pub registry: Arc<RegistryView>,
    /// Compiled JSON Schemas of every event type.
    pub schemas: Arc<Schemas>,
    /// Resolved settings.
    pub settings: Arc<Settings>,
    /// The writer's clock, for skew checks.
    pub clock: Arc<dyn Clock>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// SHA-256 of the bootstrap secret.
    pub bootstrap_hash: [u8; 32],
    /// True once the views have reached the head of the log.
    pub ready: Arc<AtomicBool>,
    /// Serializes principal creation, so two requests cannot both become a
    /// tenant's first admin.
    pub principal_lock: Arc<tokio::sync::Mutex<()>>,
    /// Issued tokens, block list, key ring and trusted issuers of every
    /// tenant: updated before an append is acknowledged.
    pub views: Arc<LiveViews>,
    /// Sealed signing keys.
    pub keyring: Arc<KeyRing>,
    /// Folds the log into `registry` and `views` (the store's commit hook),
    /// with checkpoints and snapshots (see [`crate::projections`]).
    pub projections: Arc<Projections>,
    /// The `events` table and views for SQL: a projection that follows
    /// `$all` on its own (see [`AppState::follow_analytics`]).
    pub analytics: Arc<Analytics>,
    /// Alert webhooks: every tenant's delivery status (see [`crate::webhooks`]).
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// The cutoff rules of `rules_file` (see [`crate::rules`]).
    pub rules: Arc<crate::rules::Rules>,
}

impl AppState {
    /// State over `store`, not yet ready: call [`AppState::catch_up`] before
    /// serving.
    pub fn new(
        store: Arc<dyn EventStore>,
        settings: Arc<Settings>,
        clock: Arc<dyn Clock>,
        bootstrap_secret: &str,
        kek: Kek,
    ) -> Self {
        let settings_sql = (
            settings.sql_memory_mb,
            settings.sql_timeout_seconds,
            settings.sql_max_rows,
            settings.sql_concurrency,
        );
        let registry = Arc::new(RegistryView::default());
        let views: Arc<LiveViews> = Arc::default();
        let metrics = Arc::new(Metrics::default());
        let projections = Arc::new(Projections::new(registry.clone(), views.clone(), metrics.clone()));
        let rules = Arc::new(crate::rules::Rules::load(
            settings.rules_file.as_deref(),
            (settings_sql.0 as usize) << 20,
            std::time::Duration::from_secs(settings_sql.1),
        ));
        Self {
            store,
            registry,
            schemas: Arc::new(Schemas::compile()),
            settings,
            clock,
            metrics,
            bootstrap_hash: hash_secret(bootstrap_secret),
            ready: Arc::new(AtomicBool::new(false)),
            principal_lock: Arc::default(),
            views,
            keyring: Arc::new(KeyRing::new(kek)),
            projections,
            webhooks: Arc::default(),
            analytics: Arc::new(Analytics::new(
                tokenledger_tokens::keys::kid_of_public,
                Limits {
                    memory_bytes: (settings_sql.0 as usize) << 20,
                    timeout: std::time::Duration::from_secs(settings_sql.1),
                    max_rows: settings_sql.2 as usize,
                },
                settings_sql.3 as usize,
            )),
            rules,
        }
    }

    /// [`AppState::catch_up_views`], then [`AppState::mark_ready`]. Call
    /// once, before any append. Returns the head it reached.
    pub async fn catch_up(&self) -> Result<Position, StoreError> {
        let head = self.catch_up_views().await?;
        self.mark_ready();
        self.follow_analytics();
        Ok(head)
    }

    /// Brings the registry and the views to the head of the log (from the
    /// snapshot's checkpoint when snapshots are enabled and the snapshot is
    /// usable, else from position 0; see [`Projections::catch_up`]) and
    /// registers them as the commit hook so they never fall behind an
    /// acknowledged append; does not mark the state ready. Call once, before
    /// any append. Returns the head it reached.
    pub async fn catch_up_views(&self) -> Result<Position, StoreError> {
        let head = self.projections.catch_up(&self.store).await?.head;
        self.store.add_commit_hook(self.projections.clone());
        self.store.set_guard(Arc::new(ViewGuard(self.views.clone())));
        self.store.add_commit_hook(Arc::new(MetricsHook(self.metrics.clone())));
        self.metrics.head_position.set(head.0 as i64);
        Ok(head)
    }

    /// Starts the analytics projection on its own task, off the writer's
    /// path: restores its checkpoint if checkpoints are enabled
    /// ([`Analytics::enable_checkpoints`]) and there is a usable one, then
    /// follows `$all` from there through a catch-up subscription (queries
    /// wait for it to reach the head they need).
    pub fn follow_analytics(&self) -> tokio::task::JoinHandle<()> {
        let analytics = self.analytics.clone();
        let store = self.store.clone();
        tokio::spawn(async move {
            let from = match analytics.restore(&store).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "analytics projection could not start");
                    return;
                }
            };
            if let Err(e) = analytics.follow(store, from).await {
                tracing::info!(error = %e, "analytics projection stopped");
            }
        })
    }

    /// The API answers from now on (503 before).
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Opens every signing key of every tenant in the views under the KEK
    /// (the material is cached for use), so a wrong or regenerated KEK stops
    /// the server at start rather than failing every mint. Revoked keys are
    /// skipped: nothing uses their material again, and it is not loaded into
    /// memory. Returns how many keys opened.
    pub fn check_sealed_keys(&self) -> Result<usize, UnopenableKey> {
        let mut tenants = self.views.tenants();
        tenants.sort();
        let mut opened = 0;
        for tenant in tenants {
            let keys: Vec<KeyRecord> = self.views.read(&tenant, |v| {
                v.keys
                    .values()
                    .filter(|k| k.state != KeyState::Revoked)
                    .cloned()
                    .collect()
            });
            for rec in keys {
                // The cause (wrong KEK, tampered or undecodable) is logged by `material`.
                self.keyring.material(&tenant, &rec).map_err(|_| UnopenableKey {
                    tenant: tenant.clone(),
                    kid: rec.kid.clone(),
                })?;
                opened += 1;
            }
        }
        Ok(opened)
    }

    /// Authenticates a bearer secret: a `tl_…` credential of an enabled
    /// principal, or the bootstrap secret. Both comparisons are constant
    /// time, and both run whatever the secret looks like.
    pub fn authenticate(&self, secret: &str) -> Option<Caller> {
        let is_bootstrap = hashes_equal(&hash_secret(secret), &self.bootstrap_hash);
        let principal = split_credential(secret).and_then(|(id, secret)| {
            let reg = self.registry.read();
            let p = reg.by_secret_id(id)?;
            hashes_equal(&hash_secret(secret), &p.secret_hash).then(|| Caller {
                tenant: Some(p.tenant.clone()),
                name: p.name.clone(),
                role: p.role,
            })
        });
        match (is_bootstrap, principal) {
            (true, _) => Some(Caller {
                tenant: None,
                name: "bootstrap".into(),
                role: Role::Bootstrap,
            }),
            (false, p) => p,
        }
    }

    /// Whether the views have caught up with the log.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// A signing key of the log that does not open under the KEK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "signing key {kid} of tenant {tenant} does not open under the key-encryption key: \
     start with the key-encryption key this ledger was sealed with (restore it from your backup)"
)]
pub struct UnopenableKey {
    /// The tenant.
    pub tenant: String,
    /// The key's id.
    pub kid: String,
}

/// The registry behind a lock, fed by the store's commit hook.
#[derive(Default)]
pub struct RegistryView(RwLock<Registry>);

impl RegistryView {
    /// A read guard on the registry.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the registry (a restored snapshot).
    pub fn replace(&self, registry: Registry) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = registry;
    }

    /// Folds one recorded event in (events of other types are skipped
    /// before their payload is decoded).
    pub fn apply(&self, e: &RecordedEvent) {
        if !matches!(
            e.event_type.as_str(),
            "TenantCreated" | "PrincipalCreated" | "PrincipalDisabled" | "PrincipalSecretRotated" | "ClientPolicySet"
        ) {
            return;
        }
        let version = e
            .metadata
            .get("schema_version")
            .and_then(|v| v.as_u64())
            .map_or(CURRENT_SCHEMA_VERSION, |v| v as u32);
        match DomainEvent::from_parts(&e.event_type, version, &e.data) {
            Ok(ev) => self.0.write().unwrap_or_else(|p| p.into_inner()).apply(&e.tenant, &ev),
            Err(err) => tracing::error!(position = e.position.0, error = %err, "undecodable registry event skipped"),
        }
    }
}

impl CommitHook for RegistryView {
    fn committed(&self, events: &[Arc<RecordedEvent>]) {
        for e in events {
            self.apply(e);
        }
    }
}

/// Counts committed events into the metrics.
struct MetricsHook(Arc<Metrics>);

impl CommitHook for MetricsHook {
    fn committed(&self, events: &[Arc<RecordedEvent>]) {
        self.0.events_appended.inc_by(events.len() as u64);
        if let Some(last) = events.last() {
            self.0.head_position.set(last.position.0 as i64);
        }
    }
}
