//! `PUT /v1/clients/{client_id}/policy`: what a client may mint (DESIGN.md
//! "Client policy"), recorded as `ClientPolicySet`.

use crate::auth::{Caller, Permission};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tokenledger_domain::events::{AudiencePolicy, ClientPolicySet, TokenFormat};
use tokenledger_domain::{DomainEvent, EventType};

/// The policy body.
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// Audience → scopes and max ttl.
    pub audiences: BTreeMap<String, AudiencePolicy>,
    /// Formats the client may mint or record.
    pub formats: Vec<TokenFormat>,
    /// Audiences whose tokens the client receives (and so may exchange).
    #[serde(default)]
    pub serves: Vec<String>,
}

/// `PUT /v1/clients/{client_id}/policy` — admin. Replaces the client's
/// policy from the next request on.
pub async fn set_policy(
    State(st): State<AppState>,
    caller: Caller,
    Path(client_id): Path<String>,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Administer)?;
    let tenant = caller.tenant()?.to_owned();
    let req: PolicyBody = body.parse().await?;
    let max = st.settings.max_token_ttl_seconds;
    if let Some((aud, p)) = req
        .audiences
        .iter()
        .find(|(_, p)| p.max_ttl_seconds == 0 || p.max_ttl_seconds > max)
    {
        return Err(ApiError::unprocessable(
            "invalid-policy",
            format!(
                "max_ttl_seconds of {aud:?} is {}; it must be 1..={max} (max_token_ttl_seconds)",
                p.max_ttl_seconds
            ),
        ));
    }
    let policy = ClientPolicySet {
        client_id: client_id.clone(),
        audiences: req.audiences,
        formats: req.formats,
        serves: req.serves,
    };
    let ev = DomainEvent::ClientPolicySet(policy);
    let (_, data) = ev.to_parts().map_err(ApiError::internal)?;
    if let Err(v) = st.schemas.validate(EventType::ClientPolicySet, &data) {
        return Err(ApiError::unprocessable("schema-violation", v[0].message.clone())
            .with("errors", serde_json::to_value(v).unwrap_or_default()));
    }
    ev.check_names()
        .map_err(|e| ApiError::unprocessable("invalid-identifier", e.to_string()))?;
    tokenledger_domain::ids::check_stream_name(&format!("policy-{client_id}"))
        .map_err(|e| ApiError::unprocessable("invalid-identifier", format!("client_id: {e}")))?;
    let r = super::record_server_event(&st, &tenant, &caller.name, &format!("policy-{client_id}"), ev).await?;
    tracing::info!(tenant = %tenant, client_id = %client_id, by = %caller.name, "client policy set");
    Ok(Json(json!({
        "client_id": client_id,
        "policy": data,
        "position": r.events.last().map(|e| e.position),
    })))
}
