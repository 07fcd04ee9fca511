//! `POST /v1/risk-signals` — the external risk feed (DESIGN.md "HTTP
//! surface", "Wire shapes": risk signal). soc and admin, own tenant.
//!
//! Body: `{"source", "subject"?, "client_id"?, "ip"?, "level", "kind",
//! "ttl_seconds"}` — at least one of subject, client_id and ip; `level` is
//! `low`, `medium`, `high` or `critical`; `ttl_seconds` 1 s to 30 days. The
//! server appends `RiskSignalReceived` with `expires_at` = its clock +
//! ttl to the source's stream `risk-<source>` and answers 201 `{"position",
//! "stream", "expires_at"}`. The signal is in the `risk_signals` view (and
//! SQL table) until it expires, where the cutoff rules read it.
//!
//! Errors (problem+json): 400 `invalid-body` (unknown fields, wrong types,
//! a level that is not one of the four); 422 `invalid-risk-signal` (none of
//! subject, client_id, ip), `invalid-ttl`, `invalid-identifier` (a name that
//! is not an NFC identifier, a source that cannot name a stream, an ip that
//! is not an address).

use super::revocations::invalid;
use crate::auth::{Caller, Permission};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::{RiskLevel, RiskSignalReceived};
use tokenledger_domain::ids::{check_identifier, check_stream_name};
use tokenledger_store::ExpectedRevision;

/// Longest time a risk signal stays in force, seconds (30 days).
pub const MAX_TTL_SECONDS: i64 = 30 * 24 * 3600;

/// The stream of one risk source's signals.
pub fn risk_stream(source: &str) -> String {
    format!("risk-{source}")
}

/// `POST /v1/risk-signals` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RiskSignalBody {
    /// The feed that sends it (an identifier of ASCII letters, digits and
    /// `. _ ~ : @ -`; it names the stream `risk-<source>`).
    pub source: String,
    /// Subject concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Client concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Address concerned (IPv4 or IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// `low`, `medium`, `high` or `critical`.
    pub level: RiskLevel,
    /// The feed's own kind, e.g. `leaked_credential` (an identifier).
    pub kind: String,
    /// How long it stays in force, seconds (1 to 30 days).
    pub ttl_seconds: i64,
}

/// `POST /v1/risk-signals` — 201 `{"position", "stream", "expires_at"}`.
pub async fn receive(
    State(st): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Permission::Respond)?;
    let tenant = caller.tenant()?.to_owned();
    let req: RiskSignalBody = body.parse().await?;
    if req.subject.is_none() && req.client_id.is_none() && req.ip.is_none() {
        return Err(ApiError::unprocessable(
            "invalid-risk-signal",
            "a risk signal names at least one of subject, client_id and ip",
        ));
    }
    check_identifier("source", &req.source).map_err(invalid)?;
    let stream = risk_stream(&req.source);
    check_stream_name(&stream).map_err(|_| {
        invalid("source must be ASCII letters, digits and . _ ~ : @ - (it names the stream risk-<source>)")
    })?;
    for (field, v) in [("subject", &req.subject), ("client_id", &req.client_id)] {
        if let Some(v) = v {
            check_identifier(field, v).map_err(invalid)?;
        }
    }
    if let Some(ip) = &req.ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err(invalid("ip must be an IPv4 or IPv6 address"));
    }
    check_identifier("kind", &req.kind).map_err(invalid)?;
    if !(1..=MAX_TTL_SECONDS).contains(&req.ttl_seconds) {
        return Err(ApiError::unprocessable(
            "invalid-ttl",
            format!("ttl_seconds must be 1 to {MAX_TTL_SECONDS}"),
        ));
    }
    let expires_at = st.clock.now() + chrono::Duration::seconds(req.ttl_seconds);
    let event = RiskSignalReceived {
        source: req.source.clone(),
        subject: req.subject,
        client_id: req.client_id,
        ip: req.ip,
        level: req.level,
        kind: req.kind,
        expires_at,
    };
    let r = super::append_batch(
        &st,
        &tenant,
        &caller.name,
        &stream,
        ExpectedRevision::Any,
        vec![DomainEvent::RiskSignalReceived(event)],
    )
    .await?;
    tracing::info!(tenant = %tenant, by = %caller.name, source = %req.source, level = ?req.level, "risk signal received");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "position": r.events.last().map(|e| e.position),
            "stream": stream,
            "expires_at": expires_at,
        })),
    ))
}
