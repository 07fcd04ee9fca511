//! `POST /v1/uses` — a validator that verified tokens locally reports the
//! uses (DESIGN.md "Wire shapes": uses reported by a validator).
//!
//! The validator is stamped from the credential. Only an accepted use of a
//! token this tenant recorded is attributed to it (`token_id`, `subject`,
//! `client_id`, taken from the ledger's record, not from the report); a
//! rejected use, or one naming a token the tenant never recorded, keeps the
//! reported id only as `claimed_token_id`, so a report can never get a
//! token or client blamed for what a forger presented. The whole report is
//! refused (422, nothing written) if one `at` is further than the allowed
//! skew from the writer's clock, and is otherwise appended atomically, one
//! batch of `TokenUsed` to `uses-<validator>`.

use crate::auth::{Caller, Permission};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::{RequestContext, TokenUsed, UseOutcome};
use tokenledger_domain::ids::{MAX_IDENTIFIER_BYTES, check_text};
use tokenledger_store::ExpectedRevision;

/// Most uses in one report.
pub const MAX_USES_PER_REPORT: usize = 1000;

/// `POST /v1/uses` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UsesBody {
    /// 1 to [`MAX_USES_PER_REPORT`] uses.
    pub uses: Vec<UseIn>,
}

/// One reported use.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UseIn {
    /// The token id the validator read from the token.
    pub token_id: String,
    /// The audience the token was presented to.
    pub audience: String,
    /// Accepted or rejected.
    pub outcome: UseOutcome,
    /// Why it was rejected (only for `rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When, RFC 3339; within the allowed skew of the writer's clock.
    pub at: String,
    /// The request being authorized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<RequestContext>,
}

fn unprocessable(i: usize, kind: &'static str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::unprocessable(kind, format!("uses[{i}]: {detail}")).with("index", i)
}

/// `POST /v1/uses` — validator and admin. Answers 201 `{"recorded": n,
/// "position": last}`.
pub async fn report(
    State(st): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Permission::ReportUses)?;
    let tenant = caller.tenant()?.to_owned();
    let req: UsesBody = body.parse().await?;
    if req.uses.is_empty() || req.uses.len() > MAX_USES_PER_REPORT {
        return Err(ApiError::bad_request(
            "invalid-body",
            format!("a report holds 1 to {MAX_USES_PER_REPORT} uses"),
        ));
    }
    let now = st.clock.now();
    let skew = chrono::Duration::seconds(i64::from(st.settings.clock_skew_seconds));
    let mut events = Vec::with_capacity(req.uses.len());
    for (i, u) in req.uses.into_iter().enumerate() {
        let at: DateTime<Utc> = DateTime::parse_from_rfc3339(&u.at)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| unprocessable(i, "invalid-time", format!("at {:?} is not an RFC 3339 time: {e}", u.at)))?;
        if (at - now).abs() > skew {
            return Err(unprocessable(
                i,
                "clock-skew",
                format!(
                    "at is {} s away from the server's clock; at most {} s is allowed",
                    (at - now).num_seconds(),
                    skew.num_seconds()
                ),
            ));
        }
        // The id is only a claim until the ledger's record backs it: text, not an identity.
        check_text("token_id", &u.token_id).map_err(|e| unprocessable(i, "invalid-identifier", e))?;
        if u.token_id.is_empty() || u.token_id.len() > MAX_IDENTIFIER_BYTES {
            return Err(unprocessable(
                i,
                "invalid-identifier",
                format!("token_id must be 1 to {MAX_IDENTIFIER_BYTES} bytes"),
            ));
        }
        if u.outcome == UseOutcome::Accepted && u.reason.is_some() {
            return Err(unprocessable(
                i,
                "invalid-use",
                "an accepted use has no reason; reason is for rejected uses",
            ));
        }
        let record = match u.outcome {
            UseOutcome::Accepted => st.views.read(&tenant, |v| v.token(&u.token_id)),
            UseOutcome::Rejected => None,
        };
        let (token_id, subject, client_id, claimed_token_id) = match record {
            Some(r) => (Some(u.token_id), Some(r.subject), Some(r.client_id), None),
            None => (None, None, None, Some(u.token_id)),
        };
        let used = DomainEvent::TokenUsed(TokenUsed {
            validator: caller.name.clone(),
            audience: u.audience,
            outcome: u.outcome,
            reason: u.reason,
            at,
            context: u.context,
            token_id,
            subject,
            client_id,
            claimed_token_id,
            claimed_subject: None,
            claimed_client_id: None,
        });
        used.check_names()
            .map_err(|e| unprocessable(i, "invalid-identifier", e))?;
        events.push(used);
    }
    // Each use's event id is derived from its content, so a retried report
    // is recorded once (the store answers it from its idempotency index)
    // and an identical use repeated inside one report counts once.
    let mut batch = Vec::with_capacity(events.len());
    let mut seen = std::collections::HashSet::new();
    for ev in &events {
        let mut e = super::server_event(&tenant, &caller.name, ev)?;
        let key = format!("tokenledger/use\0{tenant}\0{}\0{}", caller.name, e.data);
        e.event_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes());
        if seen.insert(e.event_id) {
            batch.push(e);
        }
    }
    let n = batch.len();
    let duplicates = events.len() - n;
    let sid = tokenledger_store::StreamId::new(tenant.clone(), format!("uses-{}", caller.name));
    let r = st
        .store
        .append(&sid, ExpectedRevision::Any, batch)
        .await
        .map_err(super::append_error)?;
    let status = if r.written { StatusCode::CREATED } else { StatusCode::OK };
    Ok((
        status,
        Json(json!({
            "recorded": n,
            "duplicates": duplicates,
            "position": r.events.last().map(|e| e.position),
        })),
    ))
}
