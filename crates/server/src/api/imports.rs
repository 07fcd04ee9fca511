//! `POST /v1/imports` — records of another identity system, already mapped
//! to ledger events by `tokenledger import` (crate `tokenledger-importers`),
//! appended with their original time (DESIGN.md "Rules the contract rests
//! on", Time: "Importers (admin only) write into a tenant of their own and
//! keep the original time in `metadata.source_time`"). Admin only, into the
//! admin's own tenant; give imports a tenant of their own (created through
//! the bootstrap principal): the views of a tenant run on the imported
//! records' time, which live events would overtake.
//!
//! Body: `{"format": "cloudtrail" | "zeek-kerberos" | "okta" |
//! "windows-security", "events": [{"event_id": UUID, "event_type":
//! "TokenIssued" | "TokenUsed" | "TokenRevoked", "data": {…}, "source_time":
//! RFC 3339}]}`, 1 to `max_events_per_append` events, in record order.
//!
//! The server chooses the streams: `token-<token_id>` for issuance and
//! revocation (by token id only: no selector), `import-<format>-uses` for
//! uses. `TokenIssued.tenant` is stamped (empty or the caller's tenant; any
//! other is 403); `issuer`, `client_id`, `validator` and `by` are the foreign
//! system's and are kept. Times are not checked against the clock skew (they
//! are history), except that a `source_time` may not lie in the future. A
//! cutoff does not refuse an imported issuance: it happened elsewhere.
//! Each event is idempotent by its `event_id`: importing a file twice
//! writes nothing the second time.
//!
//! Answer 200 `{"format", "appended", "duplicates", "first_position",
//! "last_position"}` (positions of the batch's events, written or not).
//! Errors (problem+json): 400 `invalid-body`, `empty-import`,
//! `too-many-events`, `duplicate-event-id`, `unknown-format`; 403
//! `event-not-allowed`, `stamped-field-mismatch`; 422 `schema-violation`,
//! `invalid-identifier`, `source-time-in-future`; 409
//! `idempotency-conflict` (an event id already recorded with other content).
//! The whole batch is checked before anything is appended; appends then
//! run in order, and a failure part way leaves the events before it
//! recorded (a retry of the same batch completes it).

use super::streams::{append_error, checked_event};
use crate::auth::{Caller, Permission};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenledger_domain::events::{CURRENT_SCHEMA_VERSION, Metadata};
use tokenledger_domain::ids::token_stream;
use tokenledger_domain::{DomainEvent, EventType};
use tokenledger_store::{ExpectedRevision, NewEvent, StreamId};
use uuid::Uuid;

/// The import formats (`tokenledger import --format`).
pub const FORMATS: &[&str] = &["cloudtrail", "zeek-kerberos", "okta", "windows-security"];

/// `POST /v1/imports` body.
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// One of [`FORMATS`].
    pub format: String,
    /// The mapped events, in record order.
    pub events: Vec<ImportedIn>,
}

/// One mapped event.
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImportedIn {
    /// Deterministic id of the event (the importer derives it from the record).
    pub event_id: Uuid,
    /// `TokenIssued`, `TokenUsed` or `TokenRevoked`.
    pub event_type: String,
    /// The payload, validated against the type's schema.
    pub data: Value,
    /// The record's own time (RFC 3339).
    pub source_time: DateTime<Utc>,
}

/// `POST /v1/imports` — admin.
pub async fn import(State(st): State<AppState>, caller: Caller, body: JsonBody) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Administer)?;
    let tenant = caller.tenant()?.to_owned();
    let req: ImportBody = body.parse().await?;
    if !FORMATS.contains(&req.format.as_str()) {
        return Err(ApiError::bad_request(
            "unknown-format",
            format!("format {:?} is not one of {}", req.format, FORMATS.join(", ")),
        ));
    }
    if req.events.is_empty() {
        return Err(ApiError::bad_request(
            "empty-import",
            "an import needs at least one event",
        ));
    }
    if req.events.len() > st.settings.max_events_per_append {
        return Err(ApiError::bad_request(
            "too-many-events",
            format!(
                "at most {} events per import request",
                st.settings.max_events_per_append
            ),
        ));
    }
    let mut ids = std::collections::HashSet::new();
    if let Some(e) = req.events.iter().find(|e| !ids.insert(e.event_id)) {
        return Err(ApiError::bad_request(
            "duplicate-event-id",
            format!("event id {} appears twice in the batch", e.event_id),
        ));
    }
    let future = st.clock.now() + chrono::Duration::seconds(i64::from(st.settings.clock_skew_seconds));
    let uses_stream = format!("import-{}-uses", req.format);
    let mut checked = Vec::with_capacity(req.events.len());
    for (i, e) in req.events.iter().enumerate() {
        let ty = match EventType::parse(&e.event_type) {
            Some(t @ (EventType::TokenIssued | EventType::TokenUsed | EventType::TokenRevoked)) => t,
            _ => {
                return Err(ApiError::forbidden(
                    "event-not-allowed",
                    format!(
                        "events[{i}]: an import carries TokenIssued, TokenUsed and TokenRevoked only, not {:?}",
                        e.event_type
                    ),
                ));
            }
        };
        if e.source_time > future {
            return Err(ApiError::unprocessable(
                "source-time-in-future",
                format!(
                    "events[{i}]: source_time {} is in the future",
                    e.source_time.to_rfc3339()
                ),
            ));
        }
        let mut data = e.data.clone();
        if let (EventType::TokenIssued, Value::Object(m)) = (ty, &mut data) {
            match m.get("tenant").and_then(Value::as_str) {
                None | Some("") => {
                    m.insert("tenant".into(), Value::String(tenant.clone()));
                }
                Some(t) if t == tenant => {}
                Some(t) => {
                    return Err(ApiError::forbidden(
                        "stamped-field-mismatch",
                        format!("events[{i}]: tenant is {t:?} but the credential says {tenant:?}"),
                    ));
                }
            }
        }
        if let (EventType::TokenRevoked, Value::Object(m)) = (ty, &mut data) {
            m.entry("by").or_insert_with(|| Value::String(caller.name.clone()));
        }
        let ev = checked_event(&st, i, ty, &data)?;
        let stream = match &ev {
            DomainEvent::TokenIssued(t) => token_stream(&t.token_id),
            DomainEvent::TokenRevoked(r) => match (&r.token_id, &r.selector) {
                (Some(id), None) => token_stream(id),
                _ => {
                    return Err(ApiError::forbidden(
                        "event-not-allowed",
                        format!("events[{i}]: an imported revocation names one token_id and no selector"),
                    ));
                }
            },
            _ => uses_stream.clone(),
        };
        let md = Metadata {
            tenant: tenant.clone(),
            actor: caller.name.clone(),
            schema_version: CURRENT_SCHEMA_VERSION,
            correlation_id: Some(format!("import-{}", req.format)),
            causation_id: None,
            source_time: Some(e.source_time),
        };
        let new = NewEvent::new(
            e.event_id,
            e.event_type.clone(),
            data,
            serde_json::to_value(md).unwrap_or_default(),
        );
        checked.push((stream, new));
    }

    // In record order; consecutive events of one stream in one append.
    let (mut appended, mut duplicates, mut first_position, mut last_position) = (0u64, 0u64, None, None);
    let mut rest = checked.into_iter().peekable();
    while let Some((stream, first)) = rest.next() {
        let mut batch = vec![first];
        while let Some((_, next)) = rest.next_if(|(s, _)| *s == stream) {
            batch.push(next);
        }
        let n = batch.len() as u64;
        let sid = StreamId::new(tenant.clone(), stream);
        let result = st
            .store
            .append(&sid, ExpectedRevision::Any, batch)
            .await
            .map_err(append_error)?;
        if result.written {
            appended += n;
        } else {
            duplicates += n;
        }
        first_position = first_position.or(result.events.first().map(|e| e.position));
        last_position = result.events.last().map(|e| e.position).or(last_position);
    }
    Ok(Json(json!({
        "format": req.format,
        "appended": appended,
        "duplicates": duplicates,
        "first_position": first_position,
        "last_position": last_position,
    })))
}
