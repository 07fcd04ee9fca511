//! `POST /v1/revocations` — revoke one token by id, or many by selector
//! (soc, admin).
//!
//! By id: the token must be recorded in the caller's tenant (404
//! otherwise, so nothing of another tenant shows), and the `TokenRevoked`
//! goes to its own `token-<jti>` stream. By selector: the `TokenRevoked`
//! goes to the tenant's `revocations` stream and covers every token of that
//! subject, client or issuer recorded at an earlier position; tokens minted
//! after it are not covered. The block list changes from the committed
//! event, before the answer, so the next verify refuses the token.

use crate::auth::{Caller, Permission};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::{Selector, TokenRevoked};
use tokenledger_domain::ids::{check_identifier, check_text, token_stream};
use tokenledger_store::ExpectedRevision;

/// The stream of a tenant's selector revocations.
pub const REVOCATIONS_STREAM: &str = "revocations";

/// Longest revocation reason, bytes.
const MAX_REASON_BYTES: usize = 1024;

/// `POST /v1/revocations` body: exactly one of `token_id` and `selector`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationBody {
    /// One token (and every token exchanged from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Every token of a subject, client or issuer issued before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Why (free text, NFC).
    pub reason: String,
}

/// Checks a person's reason (a revocation's, a cutoff's): 1 to
/// [`MAX_REASON_BYTES`] bytes of NFC text without control or invisible
/// characters; 422 `invalid-identifier` otherwise.
pub(crate) fn check_reason(reason: &str) -> Result<(), ApiError> {
    check_text("reason", reason).map_err(invalid)?;
    if reason.trim().is_empty() || reason.len() > MAX_REASON_BYTES {
        return Err(ApiError::unprocessable(
            "invalid-identifier",
            format!("reason must be 1 to {MAX_REASON_BYTES} bytes of text"),
        ));
    }
    Ok(())
}

/// 422 `invalid-identifier` with the name check's message.
pub(crate) fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::unprocessable("invalid-identifier", e.to_string())
}

/// `POST /v1/revocations` — soc and admin. Answers 201 with the position
/// of the `TokenRevoked` and what it revoked.
pub async fn revoke(
    State(st): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Permission::Respond)?;
    let tenant = caller.tenant()?.to_owned();
    let req: RevocationBody = body.parse().await?;
    enum Target {
        Token(String),
        Selector(Selector),
    }
    let target = match (req.token_id, req.selector) {
        (Some(id), None) => Target::Token(id),
        (None, Some(sel)) => Target::Selector(sel),
        _ => {
            return Err(ApiError::bad_request(
                "invalid-body",
                "give exactly one of token_id and selector",
            ));
        }
    };
    check_reason(&req.reason)?;
    let by = Some(caller.name.clone());
    let (stream, event, revoked) = match target {
        Target::Token(id) => {
            check_identifier("token_id", &id).map_err(invalid)?;
            if !st.views.read(&tenant, |v| v.contains_token(&id)) {
                return Err(ApiError::not_found("token-not-found", format!("no token {id:?}")));
            }
            let revoked = json!({ "token_id": id });
            let ev = TokenRevoked {
                token_id: Some(id.clone()),
                selector: None,
                reason: req.reason,
                by,
            };
            (token_stream(&id), ev, revoked)
        }
        Target::Selector(sel) => {
            check_identifier("selector.key", &sel.key).map_err(invalid)?;
            let revoked = json!({ "selector": sel });
            let ev = TokenRevoked {
                token_id: None,
                selector: Some(sel),
                reason: req.reason,
                by,
            };
            (REVOCATIONS_STREAM.to_owned(), ev, revoked)
        }
    };
    let r = super::append_batch(
        &st,
        &tenant,
        &caller.name,
        &stream,
        ExpectedRevision::Any,
        vec![DomainEvent::TokenRevoked(event)],
    )
    .await?;
    tracing::info!(tenant = %tenant, by = %caller.name, revoked = %revoked, "revoked");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "position": r.events.last().map(|e| e.position),
            "revoked": revoked,
        })),
    ))
}
