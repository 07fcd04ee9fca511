//! The tenant's alert webhook (DESIGN.md "HTTP surface"; delivery in
//! [`crate::webhooks`]):
//!
//! * `PUT /v1/webhooks` — soc, admin: `{"url": "https://…"}`. The target is
//!   checked ([`crate::webhooks::check_target`]: `https` only, no userinfo,
//!   no private, loopback, link-local, … address unless allow-listed by
//!   `webhook_allow`; 422 `invalid-webhook-url` or `webhook-target-refused`),
//!   a random 32-byte HMAC key and its `signing_key_id` are generated, and
//!   `WebhookSet` is appended to `webhook-<tenant>` with the key sealed
//!   under the key-encryption key. The answer, 200 `{"url",
//!   "signing_key_id", "secret", "position"}`, is the only place the key
//!   (`secret`, standard base64) ever appears: the receiver needs it to
//!   verify signatures. A new PUT replaces the webhook and its key; delivery
//!   then starts with the anomalies after it.
//! * `GET /v1/webhooks` — soc, admin: `{"webhook": {"url",
//!   "signing_key_id", "set_at" (position), "recorded_at", "set_by"},
//!   "delivery": {"delivered_anomaly_id", "delivered_position", "pending",
//!   "attempts", "last_error", "last_attempt_at", "last_delivered_at",
//!   "next_retry_at"}}`; 404 `webhook-not-set` when the tenant has none.

use crate::auth::{Caller, Permission};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use crate::webhooks::{TargetError, check_target, webhook_stream};
use axum::Json;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::WebhookSet;
use tokenledger_store::ExpectedRevision;

/// `PUT /v1/webhooks` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SetBody {
    /// The target: `https://…` (plain `http://` only for an allow-listed host).
    pub url: String,
}

fn refused(e: TargetError) -> ApiError {
    match e {
        TargetError::Invalid(d) => ApiError::unprocessable("invalid-webhook-url", d),
        TargetError::Refused(d) => ApiError::unprocessable("webhook-target-refused", d),
    }
}

/// `PUT /v1/webhooks` — 200 `{"url", "signing_key_id", "secret", "position"}`.
pub async fn set(State(st): State<AppState>, caller: Caller, body: JsonBody) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Respond)?;
    let tenant = caller.tenant()?.to_owned();
    let req: SetBody = body.parse().await?;
    let url = check_target(&req.url, &st.settings.webhook_allow)
        .await
        .map_err(refused)?
        .to_string();
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let signing_key_id = format!("whk-{}", uuid::Uuid::new_v4().simple());
    let sealed = st.keyring.seal_secret(&tenant, &signing_key_id, &key)?;
    let event = WebhookSet {
        tenant: tenant.clone(),
        url: url.clone(),
        signing_key_id: signing_key_id.clone(),
        sealed_signing_key: sealed,
    };
    let r = super::append_batch(
        &st,
        &tenant,
        &caller.name,
        &webhook_stream(&tenant),
        ExpectedRevision::Any,
        vec![DomainEvent::WebhookSet(event)],
    )
    .await?;
    tracing::info!(tenant = %tenant, by = %caller.name, url = %url, signing_key_id = %signing_key_id, "alert webhook set");
    Ok(Json(json!({
        "url": url,
        "signing_key_id": signing_key_id,
        "secret": STANDARD.encode(key),
        "position": r.events.last().map(|e| e.position),
    })))
}

/// `GET /v1/webhooks` — the webhook and its delivery status.
pub async fn get(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Respond)?;
    let tenant = caller.tenant()?.to_owned();
    let Some(crate::webhooks::SetRecord {
        set,
        position,
        recorded_at,
        actor: set_by,
    }) = crate::webhooks::current(&st, &tenant)
        .await
        .map_err(ApiError::internal)?
    else {
        return Err(ApiError::not_found(
            "webhook-not-set",
            "the tenant has no webhook: PUT /v1/webhooks",
        ));
    };
    // The worker's status for this webhook, or (not started yet, or the
    // webhook just changed) a cursor at the webhook's start.
    let status = st
        .webhooks
        .status(&tenant)
        .filter(|s| s.cursor.signing_key_id == set.signing_key_id)
        .unwrap_or_else(|| crate::webhooks::DeliveryStatus {
            cursor: crate::webhooks::Cursor {
                signing_key_id: set.signing_key_id.clone(),
                after: position,
                ..Default::default()
            },
            ..Default::default()
        });
    let pending = st.views.tenant(&tenant).map_or(0, |v| status.pending(&v));
    Ok(Json(json!({
        "webhook": {
            "url": set.url,
            "signing_key_id": set.signing_key_id,
            "set_at": position,
            "recorded_at": recorded_at,
            "set_by": set_by,
        },
        "delivery": {
            "delivered_anomaly_id": status.cursor.last_delivered_id,
            "delivered_position": status.cursor.last_delivered_position,
            "pending": pending,
            "attempts": status.attempts,
            "last_error": status.last_error,
            "last_attempt_at": status.last_attempt_at,
            "last_delivered_at": status.last_delivered_at,
            "next_retry_at": status.next_retry_at,
        },
    })))
}
