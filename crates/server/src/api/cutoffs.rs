//! Minting cutoffs by hand (DESIGN.md "HTTP surface", "Enforcement is
//! serialized with the log"):
//!
//! * `GET /v1/cutoffs` — analyst, soc, admin: the tenant's cutoffs, engaged
//!   and released, in the order they were engaged;
//! * `POST /v1/cutoffs` — soc, admin: `{"scope", "key", "reason",
//!   "duration_seconds"}` appends `MintingCutoffEngaged` (rule `manual`,
//!   always enforced) to the cutoff's own stream `cutoff-<id>` and answers
//!   201 with the `cutoff_id`;
//! * `POST /v1/cutoffs/{id}/release` — soc, admin: `{"reason"}` (optional) appends
//!   `MintingCutoffReleased` with expected revision 0, so of two releases
//!   one wins and the other gets 409.
//!
//! From the commit of the engage on, the writer refuses every `TokenIssued`
//! the cutoff matches, whatever path it comes by (see
//! `crate::tokens::views::ViewGuard`). Expiry is the server's decision,
//! appended as a release by [`expire_due`].

use super::revocations::check_reason;
use crate::auth::{Caller, Permission};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::{CutoffMode, CutoffScope, Evidence, MintingCutoffEngaged, MintingCutoffReleased};
use tokenledger_domain::ids::check_identifier;
use tokenledger_domain::views::CutoffRecord;
use tokenledger_store::{AppendError, ExpectedRevision};

/// Longest cutoff, seconds (30 days).
pub const MAX_DURATION_SECONDS: i64 = 30 * 24 * 3600;

/// The stream of one cutoff: its engage, then at most one release.
pub fn cutoff_stream(cutoff_id: &str) -> String {
    format!("cutoff-{cutoff_id}")
}

/// `POST /v1/cutoffs` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngageBody {
    /// `subject`, `client`, `issuer` or `tenant`.
    pub scope: CutoffScope,
    /// The subject, client or issuer name; for `tenant`, the tenant's name.
    pub key: String,
    /// Why (free text, NFC).
    pub reason: String,
    /// How long, seconds (1 to 30 days); the server appends the release then.
    pub duration_seconds: i64,
}

/// `POST /v1/cutoffs/{id}/release` body (may be `{}` or empty).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    /// Why (free text, NFC); `released by hand` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A cutoff as the API shows it: the record, plus whether it is in force
/// at the time of the question.
fn render(c: &CutoffRecord, now: chrono::DateTime<chrono::Utc>) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or_default();
    v["active"] = Value::Bool(c.is_active(now));
    v
}

/// `GET /v1/cutoffs` — `{"cutoffs": [...]}` in engage order, each with
/// `active` at the time of the question.
pub async fn list(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::ReadAnomalies)?;
    let tenant = caller.tenant()?;
    let now = st.clock.now();
    let mut all: Vec<CutoffRecord> = st.views.read(tenant, |v| v.cutoffs.values().cloned().collect());
    all.sort_by_key(|c| c.engaged_position);
    Ok(Json(
        json!({ "cutoffs": all.iter().map(|c| render(c, now)).collect::<Vec<_>>() }),
    ))
}

/// `POST /v1/cutoffs` — 201 `{"cutoff_id", "position", "until"}`.
pub async fn engage(
    State(st): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Permission::Respond)?;
    let tenant = caller.tenant()?.to_owned();
    let req: EngageBody = body.parse().await?;
    check_identifier("key", &req.key).map_err(|e| ApiError::unprocessable("invalid-identifier", e.to_string()))?;
    check_reason(&req.reason)?;
    if !(1..=MAX_DURATION_SECONDS).contains(&req.duration_seconds) {
        return Err(ApiError::unprocessable(
            "invalid-duration",
            format!("duration_seconds must be 1 to {MAX_DURATION_SECONDS}"),
        ));
    }
    if req.scope == CutoffScope::Tenant && req.key != tenant {
        return Err(ApiError::unprocessable(
            "invalid-identifier",
            "a tenant cutoff's key is the caller's tenant",
        ));
    }
    let cutoff_id = format!("cut-{}", uuid::Uuid::new_v4().simple());
    let until = st.clock.now() + chrono::Duration::seconds(req.duration_seconds);
    let event = MintingCutoffEngaged {
        cutoff_id: cutoff_id.clone(),
        scope: req.scope,
        key: req.key.clone(),
        rule_id: "manual".into(),
        reason: req.reason,
        evidence: Evidence::default(),
        until,
        mode: CutoffMode::Enforce,
    };
    let r = super::append_batch(
        &st,
        &tenant,
        &caller.name,
        &cutoff_stream(&cutoff_id),
        ExpectedRevision::NoStream,
        vec![DomainEvent::MintingCutoffEngaged(event)],
    )
    .await?;
    tracing::warn!(tenant = %tenant, by = %caller.name, cutoff_id = %cutoff_id, scope = ?req.scope, key = %req.key, "minting cutoff engaged by hand");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "cutoff_id": cutoff_id,
            "position": r.events.last().map(|e| e.position),
            "until": until,
        })),
    ))
}

/// `POST /v1/cutoffs/{id}/release` — 200 `{"cutoff_id", "position"}`; 404
/// for a cutoff the tenant does not have, 409 for one already released.
pub async fn release(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Respond)?;
    let tenant = caller.tenant()?.to_owned();
    let req: ReleaseBody = body.parse_or_default().await?;
    let reason = req.reason.unwrap_or_else(|| "released by hand".to_owned());
    check_reason(&reason)?;
    let Some(c) = st.views.read(&tenant, |v| v.cutoffs.get(&id).cloned()) else {
        return Err(ApiError::not_found("cutoff-not-found", format!("no cutoff {id:?}")));
    };
    let event = MintingCutoffReleased {
        cutoff_id: c.cutoff_id.clone(),
        reason,
        by: caller.name.clone(),
    };
    let r = append_release(&st, &tenant, &caller.name, event).await?;
    tracing::warn!(tenant = %tenant, by = %caller.name, cutoff_id = %id, "minting cutoff released by hand");
    Ok(Json(
        json!({ "cutoff_id": id, "position": r.events.last().map(|e| e.position) }),
    ))
}

/// Appends a release as the second event of the cutoff's stream (expected
/// revision 0): 409 `cutoff-released` when it is released already.
async fn append_release(
    st: &AppState,
    tenant: &str,
    actor: &str,
    event: MintingCutoffReleased,
) -> Result<tokenledger_store::AppendResult, ApiError> {
    let stream = cutoff_stream(&event.cutoff_id);
    let batch = vec![super::server_event(
        tenant,
        actor,
        &DomainEvent::MintingCutoffReleased(event),
    )?];
    match st
        .store
        .append(
            &tokenledger_store::StreamId::new(tenant, &stream),
            ExpectedRevision::Exact(0),
            batch,
        )
        .await
    {
        Ok(r) => Ok(r),
        Err(AppendError::WrongExpectedRevision { .. }) => {
            Err(ApiError::conflict("cutoff-released", "the cutoff is released already"))
        }
        Err(e) => Err(super::streams::append_error(e)),
    }
}

/// Appends `MintingCutoffReleased` (`reason` `expired`, `by` `server`) for
/// every cutoff of every tenant whose `until` has passed by the server's
/// clock (DESIGN.md "Time": the server decides and appends, so a replay
/// reproduces it). Returns how many were released; a failure is logged and
/// retried at the next call.
pub async fn expire_due(st: &AppState) -> usize {
    let now = st.clock.now();
    let mut released = 0;
    for tenant in st.views.tenants() {
        let due: Vec<String> = st.views.read(&tenant, |v| {
            v.cutoffs
                .values()
                .filter(|c| c.released_position.is_none() && c.until <= now)
                .map(|c| c.cutoff_id.clone())
                .collect()
        });
        for id in due {
            let event = MintingCutoffReleased {
                cutoff_id: id.clone(),
                reason: "expired".into(),
                by: "server".into(),
            };
            match append_release(st, &tenant, "server", event).await {
                Ok(_) => {
                    released += 1;
                    tracing::info!(tenant = %tenant, cutoff_id = %id, "minting cutoff expired");
                }
                Err(e) if e.status == StatusCode::CONFLICT => {}
                Err(e) => tracing::error!(tenant = %tenant, cutoff_id = %id, error = ?e, "could not expire a cutoff"),
            }
        }
    }
    released
}
