//! The sealed key ring of every tenant: key material decoded on first use
//! and cached by kid, a key created on demand when a tenant has none,
//! rotation on demand and on a schedule (the next key published a lead time
//! before it signs), and revocation. Every change is an event on the
//! tenant's `keys` stream; secret key material exists in the log only
//! sealed under the key-encryption key, with tenant and kid as associated
//! data.

use crate::api::append_batch;
use crate::problem::ApiError;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::{
    KeyPurpose, SigningKeyActivated, SigningKeyAdded, SigningKeyRetired, SigningKeyRevoked,
};
use tokenledger_domain::views::{KeyRecord, KeyState};
use tokenledger_store::ExpectedRevision;
use tokenledger_tokens::keys::{SigningKey, VerifyingKey, generate, local_key, public_key, signing_key};
use tokenledger_tokens::seal::Kek;

/// The stream of a tenant's key changes.
pub const KEYS_STREAM: &str = "keys";

/// Decoded key material of one key.
pub struct KeyMaterial {
    /// Signs (public) or encrypts (local).
    pub signing: SigningKey,
    /// Verifies (public) or decrypts (local).
    pub verifying: VerifyingKey,
}

/// The key ring service.
pub struct KeyRing {
    kek: Kek,
    cache: RwLock<HashMap<(String, String), Arc<KeyMaterial>>>,
    public_cache: RwLock<HashMap<String, VerifyingKey>>,
    changes: tokio::sync::Mutex<()>,
}

impl KeyRing {
    /// A key ring sealing under `kek`.
    pub fn new(kek: Kek) -> Self {
        Self {
            kek,
            cache: RwLock::default(),
            public_cache: RwLock::default(),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// The decoded material of a key of the tenant's ring (unsealed once,
    /// then cached). Errors are 500s: a sealed key that does not open means
    /// the wrong KEK or a tampered log.
    pub fn material(&self, tenant: &str, rec: &KeyRecord) -> Result<Arc<KeyMaterial>, ApiError> {
        let key = (tenant.to_owned(), rec.kid.clone());
        if let Some(m) = self.cache.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(m.clone());
        }
        let secret = self
            .kek
            .open(tenant, &rec.kid, &rec.sealed_secret)
            .map_err(|e| ApiError::internal(format!("key {}: {e}", rec.kid)))?;
        let signing = signing_key(rec.purpose, &secret).map_err(ApiError::internal)?;
        let verifying = match rec.purpose {
            KeyPurpose::Public => public_key(rec.public_key.as_deref().unwrap_or_default()),
            KeyPurpose::Local => local_key(&secret),
        }
        .map_err(ApiError::internal)?;
        let m = Arc::new(KeyMaterial { signing, verifying });
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, m.clone());
        Ok(m)
    }

    /// An identifier derived from `data` under `label` that only this server
    /// can compute: a UUID (version 4 bits set) from HMAC-SHA256 under a
    /// subkey of the KEK ([`Kek::derive_id`]). The same inputs give the same
    /// id across restarts with the same KEK; a caller cannot predict it.
    pub fn idempotent_id(&self, label: &str, data: &[u8]) -> uuid::Uuid {
        let mac = self.kek.derive_id(label, data);
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&mac[..16]);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// Seals another secret of the tenant (a webhook's HMAC key) under the
    /// KEK, with the tenant and `id` as associated data (see
    /// [`Kek::seal`]); `id` must not be a kid.
    pub fn seal_secret(&self, tenant: &str, id: &str, secret: &[u8]) -> Result<String, ApiError> {
        self.kek
            .seal(tenant, id, secret, &mut rand::rng())
            .map_err(ApiError::internal)
    }

    /// Opens a secret sealed by [`KeyRing::seal_secret`] for `tenant` and `id`.
    pub fn open_secret(
        &self,
        tenant: &str,
        id: &str,
        sealed: &str,
    ) -> Result<Vec<u8>, tokenledger_tokens::seal::SealError> {
        self.kek.open(tenant, id, sealed)
    }

    /// The verifying key of a PASERK `k4.public` key (trusted issuers), cached.
    pub fn public(&self, paserk: &str) -> Option<VerifyingKey> {
        if let Some(k) = self.public_cache.read().unwrap_or_else(|p| p.into_inner()).get(paserk) {
            return Some(k.clone());
        }
        let k = public_key(paserk).ok()?;
        self.public_cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(paserk.to_owned(), k.clone());
        Some(k)
    }

    /// The active key of `purpose` in the tenant, creating and activating
    /// one if the tenant has none (a tenant's first mint, or after its active
    /// key was revoked).
    pub async fn active(
        &self,
        st: &AppState,
        tenant: &str,
        purpose: KeyPurpose,
    ) -> Result<(String, Arc<KeyMaterial>), ApiError> {
        if let Some(rec) = st.views.read(tenant, |v| v.active_key(purpose).cloned()) {
            return Ok((rec.kid.clone(), self.material(tenant, &rec)?));
        }
        let _one = self.changes.lock().await;
        if let Some(rec) = st.views.read(tenant, |v| v.active_key(purpose).cloned()) {
            return Ok((rec.kid.clone(), self.material(tenant, &rec)?));
        }
        self.add_key(st, tenant, purpose, 0, "server").await?;
        let rec = st
            .views
            .read(tenant, |v| v.active_key(purpose).cloned())
            .ok_or_else(|| ApiError::internal("a new key did not become active"))?;
        Ok((rec.kid.clone(), self.material(tenant, &rec)?))
    }

    /// Rotates: adds a new key of `purpose` that signs from `lead_seconds`
    /// on (activated at once for 0, else by the scheduler when its time
    /// comes). Returns the new kid.
    pub async fn rotate(
        &self,
        st: &AppState,
        tenant: &str,
        purpose: KeyPurpose,
        lead_seconds: u64,
        by: &str,
    ) -> Result<String, ApiError> {
        let _one = self.changes.lock().await;
        self.add_key(st, tenant, purpose, lead_seconds, by).await
    }

    /// Revokes a key: every token it signed fails at once with `key_revoked`.
    pub async fn revoke(&self, st: &AppState, tenant: &str, kid: &str, reason: &str, by: &str) -> Result<(), ApiError> {
        let _one = self.changes.lock().await;
        let Some(rec) = st.views.read(tenant, |v| v.keys.get(kid).cloned()) else {
            return Err(ApiError::not_found("key-not-found", format!("no key {kid:?}")));
        };
        if rec.state == KeyState::Revoked {
            return Ok(());
        }
        let ev = DomainEvent::SigningKeyRevoked(SigningKeyRevoked {
            kid: kid.to_owned(),
            purpose: rec.purpose,
            reason: reason.to_owned(),
        });
        append_batch(st, tenant, by, KEYS_STREAM, ExpectedRevision::Any, vec![ev]).await?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(tenant.to_owned(), kid.to_owned()));
        tracing::warn!(tenant, kid, by, "signing key revoked");
        Ok(())
    }

    async fn add_key(
        &self,
        st: &AppState,
        tenant: &str,
        purpose: KeyPurpose,
        lead_seconds: u64,
        by: &str,
    ) -> Result<String, ApiError> {
        let now = st.clock.now();
        let g = generate(purpose).map_err(ApiError::internal)?;
        let sealed = self
            .kek
            .seal(tenant, &g.kid, &g.secret, &mut rand::rng())
            .map_err(ApiError::internal)?;
        let lead = chrono::Duration::seconds(lead_seconds.min(365 * 86400) as i64);
        let rotation = chrono::Duration::seconds(st.settings.key_rotation_seconds.max(86400) as i64);
        let not_before = now + lead;
        let mut events = vec![DomainEvent::SigningKeyAdded(SigningKeyAdded {
            kid: g.kid.clone(),
            purpose,
            algorithm: match purpose {
                KeyPurpose::Public => "Ed25519".into(),
                KeyPurpose::Local => "XChaCha20-BLAKE2b".into(),
            },
            not_before,
            not_after: not_before + rotation,
            public_key: g.public_key.clone(),
            sealed_secret: sealed,
        })];
        if lead_seconds == 0 {
            events.extend(self.activation(st, tenant, purpose, &g.kid, now));
        }
        append_batch(st, tenant, by, KEYS_STREAM, ExpectedRevision::Any, events).await?;
        tracing::info!(tenant, kid = %g.kid, ?purpose, lead_seconds, by, "signing key added");
        Ok(g.kid)
    }

    /// `SigningKeyActivated` for `kid`, and `SigningKeyRetired` for the
    /// previous active key, which verifies for the longest token lifetime.
    fn activation(
        &self,
        st: &AppState,
        tenant: &str,
        purpose: KeyPurpose,
        kid: &str,
        now: DateTime<Utc>,
    ) -> Vec<DomainEvent> {
        let mut events = vec![DomainEvent::SigningKeyActivated(SigningKeyActivated {
            kid: kid.to_owned(),
            purpose,
        })];
        if let Some(prev) = st.views.read(tenant, |v| v.active_key(purpose).cloned()) {
            events.push(DomainEvent::SigningKeyRetired(SigningKeyRetired {
                kid: prev.kid,
                purpose,
                verify_until: now + chrono::Duration::seconds(st.settings.max_token_ttl_seconds as i64),
            }));
        }
        events
    }

    /// The scheduler's step, taken by the server and recorded as events so a
    /// replay reproduces it: activates pending keys whose time has come, and
    /// publishes the next key `key_publish_lead_seconds` ahead when an
    /// active key has signed for `key_rotation_seconds`.
    pub async fn tick(&self, st: &AppState) -> Result<(), ApiError> {
        let now = st.clock.now();
        for tenant in st.views.tenants() {
            for purpose in [KeyPurpose::Public, KeyPurpose::Local] {
                let _one = self.changes.lock().await;
                let (pending, active) = st.views.read(&tenant, |v| {
                    let pending = v
                        .keys
                        .values()
                        .filter(|k| k.purpose == purpose && k.state == KeyState::Pending)
                        .min_by_key(|k| k.not_before)
                        .cloned();
                    (pending, v.active_key(purpose).cloned())
                });
                match (pending, active) {
                    (Some(p), _) if p.not_before <= now => {
                        let events = self.activation(st, &tenant, purpose, &p.kid, now);
                        append_batch(st, &tenant, "server", KEYS_STREAM, ExpectedRevision::Any, events).await?;
                        tracing::info!(tenant = %tenant, kid = %p.kid, "scheduled key activated");
                    }
                    (None, Some(a)) if st.settings.key_rotation_seconds > 0 => {
                        let due = a.not_before + chrono::Duration::seconds(st.settings.key_rotation_seconds as i64);
                        if due <= now {
                            drop(_one);
                            self.rotate(st, &tenant, purpose, st.settings.key_publish_lead_seconds, "server")
                                .await?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}
