//! `POST /v1/streams/{stream}/events`, `GET /v1/streams/{stream}`,
//! `GET /v1/events`: the log itself, inside the caller's tenant.
//!
//! Appends from outside are limited by DESIGN.md "Who may write what": an
//! issuer (or admin) appends `TokenIssued` and `TokenRevoked` for its own
//! client into `token-<jti>`; every other event is written by the server.
//! Checks run in the order of DESIGN.md "Errors": credential (401) → role
//! (403) → JSON syntax and shape (400) → event type and stream (403) →
//! schema, NFC, clock skew (422) → stamped fields (403) → policy (403) →
//! expected revision (409).

use super::{query, render_event};
use crate::auth::{Caller, Permission};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenledger_domain::events::{CURRENT_SCHEMA_VERSION, GrantPath, Metadata, TokenIssued, TokenRevoked};
use tokenledger_domain::ids::{TOKEN_STREAM_PREFIX, check_identifier, check_stream_name};
use tokenledger_domain::{DomainEvent, EventType};
use tokenledger_store::{AppendError, AppendResult, ExpectedRevision, NewEvent, Position, StreamId};
use uuid::Uuid;

/// The append request (DESIGN.md "Append").
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppendBody {
    /// `"any"`, `"no_stream"`, `"stream_exists"` or an integer.
    pub expected_revision: ExpectedRevision,
    /// The events, in order.
    pub events: Vec<EventIn>,
}

/// One event of an append.
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// The idempotency key, a UUID.
    pub event_id: Uuid,
    /// A catalogue event type.
    pub event_type: String,
    /// The payload, validated against the type's schema.
    pub data: Value,
    /// Client metadata; `tenant` and `actor`, if given, must agree with the credential.
    #[serde(default)]
    pub metadata: MetadataIn,
}

/// The metadata a client may send.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataIn {
    tenant: Option<String>,
    actor: Option<String>,
    schema_version: Option<u32>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
}

/// `POST /v1/streams/{stream}/events` — issuer or admin.
pub async fn append(
    State(st): State<AppState>,
    caller: Caller,
    Path(stream): Path<String>,
    body: JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Permission::AppendIssuance)?;
    let tenant = caller.tenant()?.to_owned();
    let req: AppendBody = body.parse().await?;
    check_stream_name(&stream).map_err(|e| ApiError::bad_request("invalid-stream-name", e.to_string()))?;
    if req.events.is_empty() {
        return Err(ApiError::bad_request(
            "empty-append",
            "an append needs at least one event",
        ));
    }
    if req.events.len() > st.settings.max_events_per_append {
        return Err(ApiError::bad_request(
            "too-many-events",
            format!("at most {} events per append", st.settings.max_events_per_append),
        ));
    }
    let mut ids = std::collections::HashSet::new();
    if let Some(e) = req.events.iter().find(|e| !ids.insert(e.event_id)) {
        return Err(ApiError::bad_request(
            "duplicate-event-id",
            format!("event id {} appears twice in the batch", e.event_id),
        ));
    }

    // May this principal append this event type to this stream? (403)
    let jti = stream.strip_prefix(TOKEN_STREAM_PREFIX).unwrap_or_default();
    for (i, e) in req.events.iter().enumerate() {
        let allowed = matches!(e.event_type.as_str(), "TokenIssued" | "TokenRevoked");
        if !allowed || jti.is_empty() {
            return Err(ApiError::forbidden(
                "event-not-allowed",
                format!(
                    "events[{i}]: {} may append only TokenIssued and TokenRevoked into token-<jti>; {:?} to {stream:?} is written by the server",
                    caller.role, e.event_type
                ),
            ));
        }
        if let Some(id) = e.data.get("token_id").and_then(Value::as_str)
            && id != jti
        {
            return Err(ApiError::forbidden(
                "event-not-allowed",
                format!("events[{i}]: token_id {id:?} does not belong in stream {stream:?}"),
            ));
        }
        if e.event_type == "TokenRevoked" && e.data.get("selector").is_some() {
            return Err(ApiError::forbidden(
                "event-not-allowed",
                format!("events[{i}]: revocation by selector goes through POST /v1/revocations"),
            ));
        }
    }

    // A retry of an append that was already recorded is answered with the
    // original result by the store, whatever the clock or the policy says
    // now; only the content comparison there decides.
    let sid = StreamId::new(tenant.clone(), stream.clone());
    let retry = is_retry(&st, &sid, &req.events).await?;

    // Schema, names, times (422); stamped fields (403).
    let now = st.clock.now();
    let skew = chrono::Duration::seconds(i64::from(st.settings.clock_skew_seconds));
    let mut typed = Vec::with_capacity(req.events.len());
    for (i, e) in req.events.iter().enumerate() {
        let ty = EventType::parse(&e.event_type).expect("checked above");
        let mut data = e.data.clone();
        stamp_defaults(ty, &mut data, &tenant, &caller.name);
        let ev = checked_event(&st, i, ty, &data)?;
        if let Some(v) = e.metadata.schema_version
            && v != CURRENT_SCHEMA_VERSION
        {
            return Err(ApiError::unprocessable(
                "unknown-schema-version",
                format!("events[{i}]: schema_version {v} is not accepted; this server writes {CURRENT_SCHEMA_VERSION}"),
            ));
        }
        for (field, v) in [
            ("correlation_id", &e.metadata.correlation_id),
            ("causation_id", &e.metadata.causation_id),
        ] {
            if let Some(v) = v {
                check_identifier(field, v).map_err(|err| {
                    ApiError::unprocessable("invalid-identifier", format!("events[{i}].metadata: {err}"))
                })?;
            }
        }
        if let DomainEvent::TokenIssued(t) = &ev {
            if !retry {
                check_times(i, t, now, skew)?;
            }
            if i != 0 {
                return Err(ApiError::unprocessable(
                    "issuance-not-first",
                    format!("events[{i}]: TokenIssued must be the first event of its stream"),
                ));
            }
        }
        typed.push((data, ev));
    }
    for (i, (e, (_, ev))) in req.events.iter().zip(&typed).enumerate() {
        check_stamped(i, ev, &e.metadata, &tenant, &caller.name)?;
    }

    // Ownership of revocations: the token must be this client's.
    let issued_here = match &typed[0].1 {
        DomainEvent::TokenIssued(t) => Some(t.clone()),
        _ => None,
    };
    if issued_here.is_none() {
        let owner = token_owner(&st, &sid).await?;
        match owner {
            None => {
                return Err(ApiError::not_found(
                    "stream-not-found",
                    format!("no token stream {stream:?}"),
                ));
            }
            Some(o) if o != caller.name => {
                return Err(ApiError::forbidden(
                    "not-token-owner",
                    format!("token {jti:?} was issued to another client"),
                ));
            }
            Some(_) => {}
        }
    }

    // Policy (403 grant-refused, recorded as GrantRefused).
    if let Some(t) = &issued_here
        && !retry
    {
        check_policy(&st, &tenant, &caller.name, t).await?;
    }

    // A TokenIssued opens its stream: it can only be appended as no_stream.
    let expected = match (&issued_here, req.expected_revision) {
        (Some(_), ExpectedRevision::Any | ExpectedRevision::NoStream) => ExpectedRevision::NoStream,
        (Some(_), other) => {
            let actual = st
                .store
                .read_stream(&sid, 0, usize::MAX)
                .await
                .map_err(ApiError::internal)?
                .map(|evs| evs.len() as u64 - 1);
            return Err(wrong_revision(other, actual));
        }
        (None, other) => other,
    };

    let events: Vec<NewEvent> = req
        .events
        .iter()
        .zip(typed)
        .map(|(e, (data, _))| {
            let md = Metadata {
                tenant: tenant.clone(),
                actor: caller.name.clone(),
                schema_version: CURRENT_SCHEMA_VERSION,
                correlation_id: e.metadata.correlation_id.clone(),
                causation_id: e.metadata.causation_id.clone(),
                source_time: None,
            };
            NewEvent::new(
                e.event_id,
                e.event_type.clone(),
                data,
                serde_json::to_value(md).unwrap_or_default(),
            )
        })
        .collect();
    // The issued tokens of the batch, for the record of a cutoff's refusal.
    let issued: Vec<TokenIssued> = events
        .iter()
        .filter(|e| e.event_type == "TokenIssued")
        .filter_map(|e| serde_json::from_value(e.data.clone()).ok())
        .collect();
    let result = match st.store.append(&sid, expected, events).await {
        Ok(r) => r,
        Err(AppendError::Rejected(r)) if r.kind == "minting-cutoff" => {
            for t in &issued {
                let record = tokenledger_domain::events::GrantRefused {
                    path: GrantPath::Append,
                    client_id: t.client_id.clone(),
                    subject: Some(t.subject.clone()),
                    requested: tokenledger_domain::events::GrantRequest {
                        audience: Some(t.audience.clone()),
                        scope: Some(t.scope.clone()),
                        ttl_seconds: Some((t.expires_at - t.issued_at).num_seconds()),
                        format: Some(t.format),
                    },
                    reason: tokenledger_domain::events::RefusalReason::Cutoff,
                    detail: r.detail.clone(),
                    cutoff_id: r.extra.get("cutoff_id").and_then(|v| v.as_str()).map(str::to_owned),
                };
                super::tokens::record_refusal(&st, &tenant, record).await;
            }
            return Err(append_error(AppendError::Rejected(r)));
        }
        Err(e) => return Err(append_error(e)),
    };
    if !result.written {
        st.metrics.idempotent_replays.inc();
    }
    let status = if result.written {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(append_response(&result))))
}

/// The payload `data` of `events[i]` as a typed event: valid against the
/// JSON Schema of `ty` (422 `schema-violation`, with every violation in
/// `errors`), decodable (422 `schema-violation`), and with valid names
/// (422 `invalid-identifier`). The one check of client-written payloads,
/// for appends and imports alike.
pub(super) fn checked_event(st: &AppState, i: usize, ty: EventType, data: &Value) -> Result<DomainEvent, ApiError> {
    if let Err(violations) = st.schemas.validate(ty, data) {
        return Err(ApiError::unprocessable(
            "schema-violation",
            format!(
                "events[{i}].data does not match the {} schema: {}",
                ty, violations[0].message
            ),
        )
        .with("errors", serde_json::to_value(violations).unwrap_or_default()));
    }
    let ev = DomainEvent::from_parts(ty.as_str(), CURRENT_SCHEMA_VERSION, data)
        .map_err(|err| ApiError::unprocessable("schema-violation", format!("events[{i}].data: {err}")))?;
    ev.check_names()
        .map_err(|err| ApiError::unprocessable("invalid-identifier", format!("events[{i}].data: {err}")))?;
    Ok(ev)
}

/// The answer to an append: each event's revision and position, and the
/// stream's next expected revision.
pub fn append_response(r: &AppendResult) -> Value {
    json!({
        "events": r.events.iter().map(|e| json!({
            "event_id": e.event_id, "revision": e.revision, "position": e.position,
        })).collect::<Vec<_>>(),
        "next_expected_revision": r.next_expected_revision,
    })
}

/// Maps a store error to its problem.
pub fn append_error(e: AppendError) -> ApiError {
    match e {
        AppendError::WrongExpectedRevision { expected, actual } => wrong_revision(expected, actual),
        AppendError::IdempotencyConflict { event_id } => ApiError::conflict(
            "idempotency-conflict",
            format!("event id {event_id} is already recorded with other content or in another stream"),
        )
        .with("event_id", event_id.to_string()),
        AppendError::DuplicateEventId { event_id } => ApiError::bad_request(
            "duplicate-event-id",
            format!("event id {event_id} appears twice in the batch"),
        ),
        AppendError::Empty => ApiError::bad_request("empty-append", "an append needs at least one event"),
        AppendError::Rejected(r) => {
            let kind = match r.kind.as_str() {
                "minting-cutoff" => "minting-cutoff",
                "parent-revoked" => "parent-revoked",
                _ => "append-refused",
            };
            let mut e = ApiError::forbidden(kind, r.detail);
            e.extra.extend(r.extra);
            e
        }
        AppendError::Closed => ApiError::unavailable("shutting-down", "the server is shutting down"),
        AppendError::Storage(e) => ApiError::internal(e),
    }
}

fn wrong_revision(expected: ExpectedRevision, actual: Option<u64>) -> ApiError {
    ApiError::conflict(
        "wrong-expected-revision",
        format!(
            "expected revision {} but the stream is {}",
            serde_json::to_string(&expected).unwrap_or_default(),
            actual.map_or("absent".to_owned(), |a| format!("at revision {a}"))
        ),
    )
    .with("expected_revision", serde_json::to_value(expected).unwrap_or_default())
    .with("actual_revision", actual.map_or(Value::Null, Value::from))
}

/// Fills fields stamped from the credential when the client left them out.
fn stamp_defaults(ty: EventType, data: &mut Value, tenant: &str, name: &str) {
    let Value::Object(m) = data else { return };
    let mut put = |k: &str, v: &str| {
        m.entry(k.to_owned()).or_insert_with(|| Value::String(v.to_owned()));
    };
    match ty {
        EventType::TokenIssued => {
            put("tenant", tenant);
            put("issuer", name);
            put("client_id", name);
        }
        EventType::TokenRevoked => put("by", name),
        _ => {}
    }
}

/// Refuses (403) a field that disagrees with the credential.
fn check_stamped(i: usize, ev: &DomainEvent, md: &MetadataIn, tenant: &str, name: &str) -> Result<(), ApiError> {
    let mismatch = |field: &str, got: &str, want: &str| {
        Err(ApiError::forbidden(
            "stamped-field-mismatch",
            format!("events[{i}]: {field} is {got:?} but the credential says {want:?}"),
        ))
    };
    if let Some(t) = &md.tenant
        && t != tenant
    {
        return mismatch("metadata.tenant", t, tenant);
    }
    if let Some(a) = &md.actor
        && a != name
    {
        return mismatch("metadata.actor", a, name);
    }
    match ev {
        DomainEvent::TokenIssued(t) => {
            if t.tenant != tenant {
                return mismatch("tenant", &t.tenant, tenant);
            }
            if t.issuer != name {
                return mismatch("issuer", &t.issuer, name);
            }
            if t.client_id != name {
                return mismatch("client_id", &t.client_id, name);
            }
        }
        DomainEvent::TokenRevoked(TokenRevoked { by: Some(by), .. }) if by != name => {
            return mismatch("by", by, name);
        }
        _ => {}
    }
    Ok(())
}

/// `issued_at` and `not_before` within the allowed skew of the writer's
/// clock; `expires_at` after both (422).
fn check_times(i: usize, t: &TokenIssued, now: DateTime<Utc>, skew: chrono::Duration) -> Result<(), ApiError> {
    for (field, v) in [("issued_at", t.issued_at), ("not_before", t.not_before)] {
        if (v - now).abs() > skew {
            return Err(ApiError::unprocessable(
                "clock-skew",
                format!(
                    "events[{i}].data.{field} is {} s away from the server's clock; at most {} s is allowed",
                    (v - now).num_seconds(),
                    skew.num_seconds()
                ),
            ));
        }
    }
    if t.expires_at <= t.issued_at || t.expires_at <= t.not_before {
        return Err(ApiError::unprocessable(
            "invalid-token-times",
            format!("events[{i}].data.expires_at must be after issued_at and not_before"),
        ));
    }
    Ok(())
}

/// Whether every event id of the batch is already in the stream: a retry.
async fn is_retry(st: &AppState, sid: &StreamId, events: &[EventIn]) -> Result<bool, ApiError> {
    let Some(existing) = st.store.read_stream(sid, 0, 4096).await.map_err(ApiError::internal)? else {
        return Ok(false);
    };
    Ok(events.iter().all(|e| existing.iter().any(|x| x.event_id == e.event_id)))
}

/// The client a token stream's `TokenIssued` names, `None` when the stream
/// does not exist.
async fn token_owner(st: &AppState, sid: &StreamId) -> Result<Option<String>, ApiError> {
    let first = st.store.read_stream(sid, 0, 1).await.map_err(ApiError::internal)?;
    Ok(first.and_then(|evs| {
        evs.first()
            .filter(|e| e.event_type == "TokenIssued")
            .and_then(|e| e.data.get("client_id").and_then(Value::as_str).map(str::to_owned))
    }))
}

/// An external issuer's `TokenIssued` goes through the same checks as our
/// mint path (format `external`, the client policy, the server's longest
/// lifetime); a refusal is recorded as `GrantRefused`.
async fn check_policy(st: &AppState, tenant: &str, client: &str, t: &TokenIssued) -> Result<(), ApiError> {
    let ttl = (t.expires_at - t.issued_at).num_seconds();
    super::tokens::police_grant(
        st,
        tenant,
        client,
        GrantPath::Append,
        &t.subject,
        &t.audience,
        &t.scope,
        ttl,
        t.format,
    )
    .await
    .map_err(super::tokens::refused)
}

/// Query of the read endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// Stream revision (`GET /v1/streams/…`) or `$all` position
    /// (`GET /v1/events`) to start from, inclusive.
    pub from: Option<u64>,
    /// Most events to return; clamped to `read_limit_max`.
    pub limit: Option<usize>,
}

/// `GET /v1/streams/{stream}` — analyst and admin read any stream of their
/// tenant; an issuer only its own token streams. A stream the caller may not
/// see is as absent as one that does not exist (404).
pub async fn read_stream(
    State(st): State<AppState>,
    caller: Caller,
    Path(stream): Path<String>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    caller.require_any(&[Permission::ReadLog, Permission::ReadOwnTokenStreams])?;
    let tenant = caller.tenant()?.to_owned();
    let q: ReadQuery = query(&uri)?;
    check_stream_name(&stream).map_err(|e| ApiError::bad_request("invalid-stream-name", e.to_string()))?;
    let not_found = || ApiError::not_found("stream-not-found", format!("no stream {stream:?}"));
    let sid = StreamId::new(tenant, stream.clone());
    if !crate::auth::allowed(caller.role, Permission::ReadLog) {
        if !stream.starts_with(TOKEN_STREAM_PREFIX) {
            return Err(not_found());
        }
        if token_owner(&st, &sid).await?.as_deref() != Some(caller.name.as_str()) {
            return Err(not_found());
        }
    }
    let limit = q
        .limit
        .unwrap_or(st.settings.read_limit_max)
        .min(st.settings.read_limit_max);
    let from = q.from.unwrap_or(0);
    let events = st
        .store
        .read_stream(&sid, from, limit)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(not_found)?;
    Ok(Json(json!({
        "stream": stream,
        "events": events.iter().map(|e| render_event(e)).collect::<Vec<_>>(),
    })))
}

/// `GET /v1/events?from=POS&limit=N` — `$all` of the caller's tenant, from
/// `from` (inclusive; the start without it). The answer's `next` is the
/// position to ask from next.
pub async fn read_all(State(st): State<AppState>, caller: Caller, uri: Uri) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::ReadLog)?;
    let tenant = caller.tenant()?.to_owned();
    let q: ReadQuery = query(&uri)?;
    let limit = q
        .limit
        .unwrap_or(st.settings.read_limit_max)
        .min(st.settings.read_limit_max);
    let from = Position(q.from.unwrap_or(0));
    let events = st
        .store
        .read_all(from, limit, Some(&tenant))
        .await
        .map_err(ApiError::internal)?;
    let next = events.last().map_or(from, |e| e.position.next());
    Ok(Json(json!({
        "events": events.iter().map(|e| render_event(e)).collect::<Vec<_>>(),
        "next": next,
    })))
}
