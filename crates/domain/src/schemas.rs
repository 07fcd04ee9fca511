//! The JSON Schema (draft 2020-12) of every event type and version, as
//! committed under `schemas/` at the repository root and embedded here at
//! compile time. The server validates every appended `data` against them.

use crate::events::EventType;

macro_rules! schema_files {
    ($($name:ident),+ $(,)?) => {
        /// The schema text of `event_type` at `version`, if there is one.
        pub fn schema(event_type: EventType, version: u32) -> Option<&'static str> {
            match (event_type, version) {
                $((EventType::$name, 1) => Some(include_str!(concat!("../../../schemas/", stringify!($name), ".v1.json"))),)+
                _ => None,
            }
        }
    };
}

schema_files!(
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
