//! `GET /v1/keys`, `POST /v1/keys/rotate`, `POST /v1/keys/{kid}/revoke`.

use crate::auth::{Caller, Permission};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;
use tokenledger_domain::events::KeyPurpose;
use tokenledger_domain::views::KeyState;
use tokenledger_tokens::paseto::rfc3339;

/// `GET /v1/keys` — validator, issuer or admin: the tenant's PASERK
/// `k4.public` keys with state and validity window (local keys are never
/// published). `ETag` over the body, `If-None-Match` → 304, `Cache-Control:
/// max-age=60`.
pub async fn list(State(st): State<AppState>, caller: Caller, headers: HeaderMap) -> Result<Response, ApiError> {
    caller.require_any(&[Permission::ReadKeysAndBlocklist, Permission::Mint])?;
    let tenant = caller.tenant()?.to_owned();
    let now = st.clock.now();
    let keys: Vec<Value> = st.views.read(&tenant, |v| {
        v.keys
            .values()
            .filter(|k| k.purpose == KeyPurpose::Public)
            .filter(|k| !(k.state == KeyState::Retired && k.verify_until.is_some_and(|u| u < now)))
            .map(|k| {
                json!({
                    "kid": k.kid,
                    "public_key": k.public_key,
                    "state": k.state.as_str(),
                    "not_before": rfc3339(k.not_before),
                    "not_after": rfc3339(k.not_after),
                    "verify_until": k.verify_until.map(rfc3339),
                })
            })
            .collect()
    });
    let body = json!({ "keys": keys });
    let text = serde_json::to_string(&body).map_err(ApiError::internal)?;
    let etag = format!("\"{}\"", hex::encode(&sha2::Sha256::digest(text.as_bytes())[..16]));
    let cache = HeaderValue::from_static("max-age=60, must-revalidate");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, cache.to_str().unwrap_or_default().to_owned()),
            ],
        )
            .into_response());
    }
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], text).into_response();
    resp.headers_mut()
        .insert(header::ETAG, HeaderValue::from_str(&etag).map_err(ApiError::internal)?);
    resp.headers_mut().insert(header::CACHE_CONTROL, cache);
    Ok(resp)
}

/// `POST /v1/keys/rotate` body; every field optional.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// `public` (default), `local`, or both when absent… see `purposes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<KeyPurpose>,
    /// Seconds the new key is published before it signs; 0 (default):
    /// it signs at once and the previous key is retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_seconds: Option<u64>,
}

/// `POST /v1/keys/rotate` — admin. Rotates the public key (and the local
/// key when `purpose` is absent). Answers the new kids.
pub async fn rotate(
    State(st): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Permission::Administer)?;
    let tenant = caller.tenant()?.to_owned();
    let req: RotateBody = body.parse().await.or_else(|e| {
        if e.kind == "malformed-json" || e.kind == "unsupported-media-type" {
            Ok(RotateBody::default())
        } else {
            Err(e)
        }
    })?;
    let purposes = match req.purpose {
        Some(p) => vec![p],
        None => vec![KeyPurpose::Public, KeyPurpose::Local],
    };
    let lead = req.lead_seconds.unwrap_or(0).min(30 * 86400);
    let mut kids = Vec::new();
    for p in purposes {
        let kid = st.keyring.rotate(&st, &tenant, p, lead, &caller.name).await?;
        kids.push(json!({"kid": kid, "purpose": p}));
    }
    Ok((StatusCode::CREATED, Json(json!({ "keys": kids, "lead_seconds": lead }))))
}

/// `POST /v1/keys/{kid}/revoke` body.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeyBody {
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/keys/{kid}/revoke` — admin. Every token the key signed fails
/// at once with `key_revoked`.
pub async fn revoke(
    State(st): State<AppState>,
    caller: Caller,
    Path(kid): Path<String>,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Administer)?;
    let tenant = caller.tenant()?.to_owned();
    let req: RevokeKeyBody = body.parse().await.or_else(|e| {
        if e.kind == "malformed-json" || e.kind == "unsupported-media-type" {
            Ok(RevokeKeyBody::default())
        } else {
            Err(e)
        }
    })?;
    let reason = req.reason.unwrap_or_else(|| "revoked by an admin".into());
    tokenledger_domain::ids::check_text("reason", &reason)
        .map_err(|e| ApiError::unprocessable("invalid-identifier", e.to_string()))?;
    st.keyring.revoke(&st, &tenant, &kid, &reason, &caller.name).await?;
    Ok(Json(json!({"kid": kid, "state": "revoked"})))
}
