//! The registry projection: tenants, principals and client policies, folded
//! from the log. The server authenticates every request against it, so it
//! is updated from committed events before their append is acknowledged.
//!
//! `apply` is pure: the same events in the same order give the same state.

use crate::events::{ClientPolicySet, DomainEvent};
use crate::role::Role;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A principal as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRecord {
    /// Its tenant.
    pub tenant: String,
    /// Its name (its `client_id`).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The current credential id.
    pub secret_id: String,
    /// SHA-256 of the current credential's random part.
    #[serde(with = "hex32")]
    pub secret_hash: [u8; 32],
    /// Disabled principals authenticate as nobody.
    pub disabled: bool,
}

/// Tenants, principals and client policies.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    tenants: HashMap<String, TenantRecord>,
    principals: HashMap<(String, String), PrincipalRecord>,
    by_secret_id: HashMap<String, (String, String)>,
    policies: HashMap<(String, String), Arc<ClientPolicySet>>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TenantRecord {
    admins: usize,
    had_admin: bool,
}

/// A [`Registry`] as it is written into a snapshot: every map as a list in
/// sorted order. It holds the principals' secret hashes, so a snapshot file
/// is as private as the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrySnapshot {
    tenants: Vec<(String, TenantRecord)>,
    principals: Vec<PrincipalRecord>,
    by_secret_id: Vec<(String, String, String)>,
    policies: Vec<(String, ClientPolicySet)>,
}

/// `[u8; 32]` as 64 hex digits.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_hex(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(D::Error::custom("expected 64 hex digits"));
        }
        Ok(super::parse_hash(&text))
    }
}

fn to_hex(v: &[u8; 32]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

impl Registry {
    /// Folds one committed event of `tenant` into the registry. Events of
    /// other types are ignored; a malformed hash is ignored (the principal
    /// then cannot authenticate).
    pub fn apply(&mut self, tenant: &str, event: &DomainEvent) {
        match event {
            DomainEvent::TenantCreated(e) => {
                self.tenants.entry(e.tenant.clone()).or_default();
            }
            DomainEvent::PrincipalCreated(e) => {
                let key = (e.tenant.clone(), e.name.clone());
                if self.principals.contains_key(&key) {
                    return;
                }
                let rec = PrincipalRecord {
                    tenant: e.tenant.clone(),
                    name: e.name.clone(),
                    role: e.role,
                    secret_id: e.secret_id.clone(),
                    secret_hash: parse_hash(&e.secret_hash),
                    disabled: false,
                };
                if e.role == Role::Admin {
                    let t = self.tenants.entry(e.tenant.clone()).or_default();
                    t.admins += 1;
                    t.had_admin = true;
                }
                self.by_secret_id.insert(e.secret_id.clone(), key.clone());
                self.principals.insert(key, rec);
            }
            DomainEvent::PrincipalDisabled(e) => {
                if let Some(p) = self.principals.get_mut(&(e.tenant.clone(), e.name.clone()))
                    && !p.disabled
                {
                    p.disabled = true;
                    self.by_secret_id.remove(&p.secret_id);
                    if p.role == Role::Admin
                        && let Some(t) = self.tenants.get_mut(&p.tenant)
                    {
                        t.admins = t.admins.saturating_sub(1);
                    }
                }
            }
            DomainEvent::PrincipalSecretRotated(e) => {
                let key = (e.tenant.clone(), e.name.clone());
                if let Some(p) = self.principals.get_mut(&key)
                    && !p.disabled
                {
                    self.by_secret_id.remove(&p.secret_id);
                    p.secret_id = e.secret_id.clone();
                    p.secret_hash = parse_hash(&e.secret_hash);
                    self.by_secret_id.insert(e.secret_id.clone(), key);
                }
            }
            DomainEvent::ClientPolicySet(e) => {
                self.policies
                    .insert((tenant.to_owned(), e.client_id.clone()), Arc::new(e.clone()));
            }
            _ => {}
        }
    }

    /// The enabled principal holding credential id `secret_id`.
    pub fn by_secret_id(&self, secret_id: &str) -> Option<&PrincipalRecord> {
        self.by_secret_id
            .get(secret_id)
            .and_then(|k| self.principals.get(k))
            .filter(|p| !p.disabled)
    }

    /// A principal by tenant and name, enabled or not.
    pub fn principal(&self, tenant: &str, name: &str) -> Option<&PrincipalRecord> {
        self.principals.get(&(tenant.to_owned(), name.to_owned()))
    }

    /// Whether the tenant exists.
    pub fn tenant_exists(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// Whether the tenant has an enabled admin.
    pub fn tenant_has_admin(&self, tenant: &str) -> bool {
        self.tenants.get(tenant).is_some_and(|t| t.admins > 0)
    }

    /// Whether the tenant has ever had an admin (disabled ones count): the
    /// bootstrap principal creates only a tenant's first admin, so it cannot
    /// take over a tenant whose admins were disabled.
    pub fn tenant_ever_had_admin(&self, tenant: &str) -> bool {
        self.tenants.get(tenant).is_some_and(|t| t.had_admin)
    }

    /// The client's policy in the tenant, if one was set.
    pub fn policy(&self, tenant: &str, client_id: &str) -> Option<Arc<ClientPolicySet>> {
        self.policies.get(&(tenant.to_owned(), client_id.to_owned())).cloned()
    }

    /// The registry as one JSON value with sorted keys, free of hash order,
    /// restricted to one tenant when `tenant` is given: a live registry and
    /// a rebuilt one at the same position give the same value. Secret
    /// hashes are left out (a dump can be shared); a rotation shows as a
    /// new `secret_id`.
    pub fn canonical(&self, tenant: Option<&str>) -> Value {
        let mine = |t: &str| tenant.is_none_or(|x| x == t);
        let tenants: BTreeMap<&str, Value> = self
            .tenants
            .iter()
            .filter(|(t, _)| mine(t))
            .map(|(t, r)| (t.as_str(), json!({"admins": r.admins, "had_admin": r.had_admin})))
            .collect();
        let principals: BTreeMap<String, Value> = self
            .principals
            .values()
            .filter(|p| mine(&p.tenant))
            .map(|p| {
                (
                    format!("{}/{}", p.tenant, p.name),
                    json!({"role": p.role, "secret_id": p.secret_id, "disabled": p.disabled}),
                )
            })
            .collect();
        let by_secret_id: BTreeMap<&str, String> = self
            .by_secret_id
            .iter()
            .filter(|(_, (t, _))| mine(t))
            .map(|(id, (t, n))| (id.as_str(), format!("{t}/{n}")))
            .collect();
        let policies: BTreeMap<String, Value> = self
            .policies
            .iter()
            .filter(|((t, _), _)| mine(t))
            .map(|((t, c), p)| (format!("{t}/{c}"), serde_json::to_value(&**p).unwrap_or(Value::Null)))
            .collect();
        crate::views::canonical_json(&json!({
            "tenants": tenants,
            "principals": principals,
            "by_secret_id": by_secret_id,
            "policies": policies,
        }))
    }

    /// The registry in its serialized form.
    pub fn to_snapshot(&self) -> RegistrySnapshot {
        let mut tenants: Vec<(String, TenantRecord)> =
            self.tenants.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        tenants.sort_by(|a, b| a.0.cmp(&b.0));
        let mut principals: Vec<PrincipalRecord> = self.principals.values().cloned().collect();
        principals.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
        let mut by_secret_id: Vec<(String, String, String)> = self
            .by_secret_id
            .iter()
            .map(|(id, (t, n))| (id.clone(), t.clone(), n.clone()))
            .collect();
        by_secret_id.sort();
        let mut policies: Vec<(String, ClientPolicySet)> = self
            .policies
            .iter()
            .map(|((t, _), p)| (t.clone(), (**p).clone()))
            .collect();
        policies.sort_by(|a, b| (&a.0, &a.1.client_id).cmp(&(&b.0, &b.1.client_id)));
        RegistrySnapshot {
            tenants,
            principals,
            by_secret_id,
            policies,
        }
    }

    /// Restores a registry from [`Registry::to_snapshot`].
    pub fn from_snapshot(s: RegistrySnapshot) -> Registry {
        Registry {
            tenants: s.tenants.into_iter().collect(),
            principals: s
                .principals
                .into_iter()
                .map(|p| ((p.tenant.clone(), p.name.clone()), p))
                .collect(),
            by_secret_id: s.by_secret_id.into_iter().map(|(id, t, n)| (id, (t, n))).collect(),
            policies: s
                .policies
                .into_iter()
                .map(|(t, p)| ((t, p.client_id.clone()), Arc::new(p)))
                .collect(),
        }
    }
}

fn parse_hash(hex_str: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    if hex_str.len() == 64 {
        for (i, chunk) in hex_str.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).unwrap_or("zz");
            match u8::from_str_radix(s, 16) {
                Ok(b) => out[i] = b,
                Err(_) => return [0u8; 32],
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::*;

    fn created(name: &str, role: Role, secret_id: &str) -> DomainEvent {
        DomainEvent::PrincipalCreated(PrincipalCreated {
            name: name.into(),
            role,
            tenant: "acme".into(),
            secret_id: secret_id.into(),
            secret_hash: "ab".repeat(32),
            by: "bootstrap".into(),
        })
    }

    #[test]
    fn given_principal_events_then_lookup_follows_rotation_and_disable() {
        let mut r = Registry::default();
        r.apply(
            "acme",
            &DomainEvent::TenantCreated(TenantCreated {
                tenant: "acme".into(),
                by: "bootstrap".into(),
            }),
        );
        assert!(r.tenant_exists("acme") && !r.tenant_has_admin("acme"));
        r.apply("acme", &created("root", Role::Admin, "s1"));
        assert!(r.tenant_has_admin("acme"));
        assert_eq!(r.by_secret_id("s1").unwrap().secret_hash, [0xab; 32]);
        r.apply(
            "acme",
            &DomainEvent::PrincipalSecretRotated(PrincipalSecretRotated {
                name: "root".into(),
                tenant: "acme".into(),
                secret_id: "s2".into(),
                secret_hash: "cd".repeat(32),
                by: "root".into(),
            }),
        );
        assert!(r.by_secret_id("s1").is_none());
        assert_eq!(r.by_secret_id("s2").unwrap().secret_hash, [0xcd; 32]);
        r.apply(
            "acme",
            &DomainEvent::PrincipalDisabled(PrincipalDisabled {
                name: "root".into(),
                tenant: "acme".into(),
                by: "x".into(),
            }),
        );
        assert!(r.by_secret_id("s2").is_none());
        assert!(!r.tenant_has_admin("acme"));
        assert!(r.tenant_ever_had_admin("acme"));
        assert!(r.principal("acme", "root").unwrap().disabled);
    }

    #[test]
    fn a_snapshot_restores_the_same_registry() {
        let mut r = Registry::default();
        r.apply(
            "acme",
            &DomainEvent::TenantCreated(TenantCreated {
                tenant: "acme".into(),
                by: "bootstrap".into(),
            }),
        );
        r.apply("acme", &created("root", Role::Admin, "s1"));
        r.apply("acme", &created("v", Role::Validator, "s2"));
        let text = serde_json::to_string(&r.to_snapshot()).unwrap();
        let back = Registry::from_snapshot(serde_json::from_str(&text).unwrap());
        assert_eq!(back.canonical(None), r.canonical(None));
        assert_eq!(back.by_secret_id("s1").unwrap().secret_hash, [0xab; 32]);
        assert!(back.tenant_has_admin("acme"));
        assert!(
            !r.canonical(None).to_string().contains(&"ab".repeat(32)),
            "no secret hash"
        );
        assert_eq!(r.canonical(Some("other"))["principals"], serde_json::json!({}));
    }

    #[test]
    fn a_repeated_name_does_not_replace_the_first() {
        let mut r = Registry::default();
        r.apply("acme", &created("p", Role::Validator, "s1"));
        r.apply("acme", &created("p", Role::Admin, "s2"));
        assert_eq!(r.principal("acme", "p").unwrap().role, Role::Validator);
        assert!(r.by_secret_id("s2").is_none());
    }
}
