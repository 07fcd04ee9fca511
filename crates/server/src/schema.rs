//! The JSON Schemas of `schemas/`, compiled once at start-up. Every appended
//! `data` is validated against the schema of its type and version.

use std::collections::HashMap;
use tokenledger_domain::EventType;
use tokenledger_domain::events::CURRENT_SCHEMA_VERSION;
use tokenledger_domain::schemas::schema;

/// Compiled validators by event type (current schema version).
pub struct Schemas {
    validators: HashMap<EventType, jsonschema::Validator>,
}

/// One schema violation: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// JSON Pointer into `data` (RFC 6901).
    pub pointer: String,
    /// What is wrong there.
    pub message: String,
}

impl Schemas {
    /// Compiles every schema. Panics only if a committed schema is broken,
    /// which the domain crate's golden tests rule out.
    pub fn compile() -> Self {
        let validators = EventType::ALL
            .iter()
            .map(|t| {
                let text = schema(*t, CURRENT_SCHEMA_VERSION).expect("every event type has a schema");
                let value: serde_json::Value = serde_json::from_str(text).expect("schemas are JSON");
                let v = jsonschema::validator_for(&value).expect("schemas compile");
                (*t, v)
            })
            .collect();
        Self { validators }
    }

    /// Validates `data` of `event_type`; the violations, at most 20.
    pub fn validate(&self, event_type: EventType, data: &serde_json::Value) -> Result<(), Vec<Violation>> {
        let v = &self.validators[&event_type];
        let errors: Vec<Violation> = v
            .iter_errors(data)
            .take(20)
            .map(|e| Violation {
                pointer: e.instance_path.as_str().to_owned(),
                message: e.to_string(),
            })
            .collect();
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}
