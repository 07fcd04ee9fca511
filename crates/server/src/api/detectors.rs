//! The tenant's detector configuration and the loaded cutoff rules:
//!
//! * `GET /v1/detector-config` — admin, soc, analyst: `{"thresholds": {name:
//!   value, …}` (every threshold, defaults included), `"rules": [id, …]`
//!   (the rules in force), `"rules_default"` (true while no configuration
//!   chose them: every loaded rule runs), `"config_position"` (of the
//!   `DetectorConfigChanged` in force, null before the first)`}`;
//! * `PUT /v1/detector-config` — admin: `{"thresholds": {name: number},
//!   "rules": [id, …]?}` appends `DetectorConfigChanged` to the tenant's
//!   `detector-config` stream; from its position on the detectors use these
//!   thresholds (a threshold not named takes its default) and the tenant
//!   runs these rules. `rules` absent: every rule of the rules file. 200
//!   with the configuration and its `position`. 422 `invalid-threshold`
//!   naming the threshold (unknown name, not a whole number, out of range),
//!   422 `unknown-rule` naming rule ids the rules file does not have;
//! * `GET /v1/rules` — admin, soc: the rules file's rules with `id`,
//!   `mode`, `duration_seconds`, `description`, `sql`, `tables`, `loaded`
//!   and `error` (why it did not load: TOML fields, SQL plan, columns),
//!   `in_force` (whether this tenant runs it) and `last_error` (of its last
//!   run in this tenant), plus the server's `cutoff_mode`.

use crate::auth::{Caller, Permission};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tokenledger_domain::DomainEvent;
use tokenledger_domain::anomalies::Thresholds;
use tokenledger_domain::events::DetectorConfigChanged;
use tokenledger_store::ExpectedRevision;

/// The stream of a tenant's detector configuration changes.
pub const CONFIG_STREAM: &str = "detector-config";

/// `PUT /v1/detector-config` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfigBody {
    /// Threshold name → value (see `Thresholds::NAMES`); one not named
    /// takes its default.
    pub thresholds: BTreeMap<String, f64>,
    /// Rule ids the tenant runs; absent: every rule of the rules file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<String>>,
}

/// The configuration in force: thresholds (all of them), rules, position.
fn current(st: &AppState, tenant: &str) -> Value {
    let (thresholds, rules, position) = st.views.read(tenant, |v| {
        (v.detect.thresholds, v.detect.rules.clone(), v.detect.config_position)
    });
    json!({
        "thresholds": thresholds.to_map(),
        "rules_default": rules.is_none(),
        "rules": rules.unwrap_or_else(|| st.rules.ids()),
        "config_position": position,
    })
}

/// `GET /v1/detector-config`.
pub async fn get_config(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::ReadAnomalies)?;
    let tenant = caller.tenant()?;
    Ok(Json(current(&st, tenant)))
}

/// `PUT /v1/detector-config` — 200 with the configuration now in force and
/// the `position` of its `DetectorConfigChanged`.
pub async fn put_config(State(st): State<AppState>, caller: Caller, body: JsonBody) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Administer)?;
    let tenant = caller.tenant()?.to_owned();
    let req: DetectorConfigBody = body.parse().await?;
    for (name, value) in &req.thresholds {
        Thresholds::with(&BTreeMap::from([(name.clone(), *value)]))
            .map_err(|e| ApiError::unprocessable("invalid-threshold", e).with("threshold", name.as_str()))?;
    }
    let known = st.rules.ids();
    let rules = match req.rules {
        Some(list) => {
            let unknown: Vec<&String> = list.iter().filter(|r| !known.contains(r)).collect();
            if !unknown.is_empty() {
                return Err(
                    ApiError::unprocessable("unknown-rule", format!("the rules file has no rule {unknown:?}"))
                        .with("rules", json!(unknown)),
                );
            }
            let mut seen = std::collections::BTreeSet::new();
            Some(list.into_iter().filter(|r| seen.insert(r.clone())).collect())
        }
        // Every rule of the file, now and as the file changes.
        None => None,
    };
    let event = DetectorConfigChanged {
        tenant: tenant.clone(),
        thresholds: req.thresholds,
        rules,
    };
    let r = super::append_batch(
        &st,
        &tenant,
        &caller.name,
        CONFIG_STREAM,
        ExpectedRevision::Any,
        vec![DomainEvent::DetectorConfigChanged(event)],
    )
    .await?;
    tracing::info!(tenant = %tenant, by = %caller.name, "detector configuration changed");
    let mut v = current(&st, &tenant);
    v["position"] = json!(r.events.last().map(|e| e.position));
    Ok(Json(v))
}

/// `GET /v1/rules`.
pub async fn rules(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Respond)?;
    let tenant = caller.tenant()?;
    Ok(Json(crate::rules::describe(&st, tenant).await))
}
