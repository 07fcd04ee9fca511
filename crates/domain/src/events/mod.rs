//! The event catalogue of DESIGN.md, version 1 of every event.
//!
//! Each event is a typed struct; [`DomainEvent`] is their sum, tagged by
//! `event_type` with the payload under `data`, exactly as the log's envelope
//! carries them. [`Metadata`] is the envelope's `metadata`.

mod admin;
mod risk;
mod token;

pub use admin::*;
pub use risk::*;
pub use token::*;

use crate::ids::{NameError, check_identifier, check_scope, check_tenant, check_text};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The schema version every event of this build is written with.
pub const CURRENT_SCHEMA_VERSION: u32 = 1;

macro_rules! catalogue {
    ($($name:ident),+ $(,)?) => {
        /// Every event type of the catalogue.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum EventType { $(#[doc = concat!("`", stringify!($name), "`")] $name),+ }

        impl EventType {
            /// All event types, in catalogue order.
            pub const ALL: &'static [EventType] = &[$(EventType::$name),+];

            /// The wire name, e.g. `TokenIssued`.
            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$name => stringify!($name)),+ }
            }

            /// Parses a wire name.
            pub fn parse(s: &str) -> Option<EventType> {
                match s { $(stringify!($name) => Some(EventType::$name),)+ _ => None }
            }
        }

        /// One event of the catalogue with its typed payload.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "event_type", content = "data")]
        pub enum DomainEvent { $(#[doc = concat!("`", stringify!($name), "` v1")] $name($name)),+ }

        impl DomainEvent {
            /// The event's type.
            pub fn event_type(&self) -> EventType {
                match self { $(DomainEvent::$name(_) => EventType::$name),+ }
            }
        }
    };
}

catalogue!(
    TokenIssued,
    TokenUsed,
    TokenExchanged,
    TokenRevoked,
    GrantRefused,
    SigningKeyAdded,
    SigningKeyActivated,
    SigningKeyRetired,
    SigningKeyRevoked,
    TenantCreated,
    PrincipalCreated,
    PrincipalDisabled,
    PrincipalSecretRotated,
    IssuerTrusted,
    WebhookSet,
    ClientPolicySet,
    RiskSignalReceived,
    DetectorConfigChanged,
    MintingCutoffEngaged,
    MintingCutoffReleased,
);

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an envelope's `(event_type, version, data)` could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not an event type of the catalogue.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// A schema version this build cannot read.
    #[error("{event_type} has no schema version {version}")]
    UnknownVersion {
        /// The type.
        event_type: String,
        /// The version asked for.
        version: u32,
    },
    /// The payload does not fit the type.
    #[error("{0}")]
    Shape(String),
}

impl DomainEvent {
    /// Decodes `data` of the given type and schema version, upcasting older
    /// versions to the current one (there is only v1 so far).
    pub fn from_parts(event_type: &str, version: u32, data: &serde_json::Value) -> Result<Self, DecodeError> {
        if EventType::parse(event_type).is_none() {
            return Err(DecodeError::UnknownType(event_type.to_owned()));
        }
        if version != CURRENT_SCHEMA_VERSION {
            return Err(DecodeError::UnknownVersion {
                event_type: event_type.to_owned(),
                version,
            });
        }
        let tagged = serde_json::json!({ "event_type": event_type, "data": data });
        serde_json::from_value(tagged).map_err(|e| DecodeError::Shape(e.to_string()))
    }

    /// The `(event_type, data)` pair as the envelope carries it.
    pub fn to_parts(&self) -> Result<(&'static str, serde_json::Value), DecodeError> {
        let mut v = serde_json::to_value(self).map_err(|e| DecodeError::Shape(e.to_string()))?;
        let data = v
            .get_mut("data")
            .map(serde_json::Value::take)
            .unwrap_or(serde_json::Value::Object(Default::default()));
        Ok((self.event_type().as_str(), data))
    }

    /// Checks every identifier and free-text field of the event (DESIGN.md
    /// "Identifiers"): NFC, no control or invisible characters.
    pub fn check_names(&self) -> Result<(), NameError> {
        use DomainEvent as E;
        let id = check_identifier;
        let opt = |f: &'static str, v: &Option<String>| v.as_deref().map_or(Ok(()), |s| check_identifier(f, s));
        let ctx = |c: &Option<RequestContext>| -> Result<(), NameError> {
            if let Some(c) = c {
                opt("context.ip", &c.ip)?;
                if let Some(ua) = &c.user_agent {
                    check_text("context.user_agent", ua)?;
                }
                opt("context.device_id", &c.device_id)?;
            }
            Ok(())
        };
        match self {
            E::TokenIssued(e) => {
                id("token_id", &e.token_id)?;
                check_tenant(&e.tenant)?;
                id("issuer", &e.issuer)?;
                id("subject", &e.subject)?;
                id("client_id", &e.client_id)?;
                id("audience", &e.audience)?;
                check_scope("scope", &e.scope)?;
                opt("kid", &e.kid)?;
                opt("parent_token_id", &e.parent_token_id)?;
                ctx(&e.context)
            }
            E::TokenUsed(e) => {
                id("validator", &e.validator)?;
                id("audience", &e.audience)?;
                opt("reason", &e.reason)?;
                ctx(&e.context)?;
                opt("token_id", &e.token_id)?;
                opt("subject", &e.subject)?;
                opt("client_id", &e.client_id)?;
                // claimed_* come from unverified tokens: stored as text, never as identities.
                for c in [&e.claimed_token_id, &e.claimed_subject, &e.claimed_client_id]
                    .into_iter()
                    .flatten()
                {
                    check_text("claimed", c)?;
                }
                Ok(())
            }
            E::TokenExchanged(e) => {
                id("subject_token_id", &e.subject_token_id)?;
                opt("actor_token_id", &e.actor_token_id)?;
                id("new_token_id", &e.new_token_id)?;
                id("client_id", &e.client_id)?;
                id("requested_audience", &e.requested_audience)?;
                if let Some(s) = &e.requested_scope {
                    check_scope("requested_scope", s)?;
                }
                id("granted_audience", &e.granted_audience)?;
                check_scope("granted_scope", &e.granted_scope)
            }
            E::TokenRevoked(e) => {
                opt("token_id", &e.token_id)?;
                if let Some(s) = &e.selector {
                    id("selector.key", &s.key)?;
                }
                check_text("reason", &e.reason)?;
                opt("by", &e.by)
            }
            E::GrantRefused(e) => {
                id("client_id", &e.client_id)?;
                opt("subject", &e.subject)?;
                check_text("detail", &e.detail)
            }
            E::SigningKeyAdded(e) => id("kid", &e.kid),
            E::SigningKeyActivated(e) => id("kid", &e.kid),
            E::SigningKeyRetired(e) => id("kid", &e.kid),
            E::SigningKeyRevoked(e) => {
                id("kid", &e.kid)?;
                check_text("reason", &e.reason)
            }
            E::TenantCreated(e) => check_tenant(&e.tenant),
            E::PrincipalCreated(e) => {
                id("name", &e.name)?;
                check_tenant(&e.tenant)
            }
            E::PrincipalDisabled(e) => {
                id("name", &e.name)?;
                check_tenant(&e.tenant)
            }
            E::PrincipalSecretRotated(e) => {
                id("name", &e.name)?;
                check_tenant(&e.tenant)
            }
            E::IssuerTrusted(e) => id("name", &e.name),
            E::WebhookSet(e) => check_tenant(&e.tenant),
            E::ClientPolicySet(e) => {
                id("client_id", &e.client_id)?;
                for (aud, p) in &e.audiences {
                    id("audience", aud)?;
                    for s in &p.scopes {
                        id("scope", s)?;
                    }
                }
                e.serves.iter().try_for_each(|a| id("serves", a))
            }
            E::RiskSignalReceived(e) => {
                id("source", &e.source)?;
                opt("subject", &e.subject)?;
                opt("client_id", &e.client_id)?;
                opt("ip", &e.ip)?;
                id("kind", &e.kind)
            }
            E::DetectorConfigChanged(e) => check_tenant(&e.tenant),
            E::MintingCutoffEngaged(e) => {
                id("cutoff_id", &e.cutoff_id)?;
                id("key", &e.key)?;
                id("rule_id", &e.rule_id)?;
                check_text("reason", &e.reason)
            }
            E::MintingCutoffReleased(e) => {
                id("cutoff_id", &e.cutoff_id)?;
                check_text("reason", &e.reason)
            }
        }
    }
}

/// Fields of an event's `data` that hold secrets (hashes, sealed keys). They
/// stay in the log, so a rebuild can restore credentials and keys, and are
/// removed from every response and SQL table.
pub fn secret_fields(event_type: &str) -> &'static [&'static str] {
    match event_type {
        "PrincipalCreated" | "PrincipalSecretRotated" => &["secret_hash"],
        "SigningKeyAdded" => &["sealed_secret"],
        "WebhookSet" => &["sealed_signing_key"],
        _ => &[],
    }
}

/// The envelope's `metadata`: who wrote the event, in which tenant, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The tenant, stamped from the credential.
    pub tenant: String,
    /// The principal that caused the write, stamped from the credential
    /// (`server` for the server's own decisions).
    pub actor: String,
    /// The schema version of `data`.
    pub schema_version: u32,
    /// Correlation id chosen by the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the event or request that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// For imported records: the original time, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_time: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_its_name() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(*t));
        }
        assert_eq!(EventType::ALL.len(), 20);
    }

    #[test]
    fn unknown_types_and_versions_are_refused() {
        let d = serde_json::json!({});
        assert_eq!(
            DomainEvent::from_parts("Nope", 1, &d),
            Err(DecodeError::UnknownType("Nope".into()))
        );
        assert!(matches!(
            DomainEvent::from_parts("TokenRevoked", 2, &d),
            Err(DecodeError::UnknownVersion { .. })
        ));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let d = serde_json::json!({"token_id": "t", "reason": "r", "extra": 1});
        assert!(matches!(
            DomainEvent::from_parts("TokenRevoked", 1, &d),
            Err(DecodeError::Shape(_))
        ));
    }
}
