//! The HTTP API: `fn app(state) -> Router`, testable in-process with
//! `oneshot`. Handlers are thin: each first takes the authenticated
//! [`Caller`](crate::auth::Caller) and checks its role and tenant.

mod anomalies;
mod blocklist;
mod clients;
pub mod cutoffs;
mod detectors;
mod imports;
mod issuers;
mod keys;
mod oauth;
mod ops;
mod principals;
mod revocations;
mod risk;
mod sql;
mod streams;
pub(crate) mod tokens;
mod uses;
mod webhooks;

pub use streams::{AppendBody, EventIn, MetadataIn, ReadQuery, append_error};

use crate::problem::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::Uri;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::time::Instant;
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::{CURRENT_SCHEMA_VERSION, Metadata, secret_fields};
use tokenledger_store::{ExpectedRevision, NewEvent, RecordedEvent, StreamId};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

/// The whole API on one router.
pub fn app(state: AppState) -> Router {
    let gated = Router::new()
        .route("/v1/streams/{stream}/events", post(streams::append))
        .route("/v1/streams/{stream}", get(streams::read_stream))
        .route("/v1/events", get(streams::read_all))
        .route("/v1/principals", post(principals::create))
        .route("/v1/principals/{name}/disable", post(principals::disable))
        .route("/v1/principals/{name}/rotate", post(principals::rotate))
        .route("/v1/clients/{client_id}/policy", put(clients::set_policy))
        .route("/v1/tokens", post(tokens::mint))
        .route("/v1/tokens/verify", post(tokens::verify_token))
        .route("/v1/keys", get(keys::list))
        .route("/v1/blocklist", get(blocklist::feed))
        .route("/v1/keys/rotate", post(keys::rotate))
        .route("/v1/keys/{kid}/revoke", post(keys::revoke))
        .route("/v1/revocations", post(revocations::revoke))
        .route("/v1/uses", post(uses::report))
        .route("/v1/issuers/{name}", put(issuers::trust))
        .route("/v1/anomalies", get(anomalies::list))
        .route("/v1/anomalies/stream", get(anomalies::stream))
        .route("/v1/cutoffs", get(cutoffs::list).post(cutoffs::engage))
        .route("/v1/cutoffs/{id}/release", post(cutoffs::release))
        .route("/v1/webhooks", get(webhooks::get).put(webhooks::set))
        .route("/v1/risk-signals", post(risk::receive))
        .route("/v1/imports", post(imports::import))
        .route(
            "/v1/detector-config",
            get(detectors::get_config).put(detectors::put_config),
        )
        .route("/v1/rules", get(detectors::rules))
        .route("/v1/sql", post(sql::query))
        .route("/v1/export/{table}", get(sql::export))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_ready));
    Router::new()
        .merge(gated)
        // The OAuth endpoints check readiness themselves, so that even a 503
        // or a 405 answers in the RFCs' shape rather than problem+json.
        .route("/oauth2/token", post(oauth::token).fallback(oauth::method_not_allowed))
        .route(
            "/oauth2/introspect",
            post(oauth::introspect).fallback(oauth::method_not_allowed),
        )
        .route(
            "/oauth2/revoke",
            post(oauth::revoke).fallback(oauth::method_not_allowed),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("a request handler panicked").into_response()
        }))
        .with_state(state)
}

/// A router with only `/metrics`, unauthenticated, for `--metrics-listen`.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics_open))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no-such-endpoint", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this endpoint does not take that method",
    )
}

/// Until the views have reached the head of the log, the API answers 503
/// (DESIGN.md "Enforcement is serialized with the log").
async fn require_ready(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.is_ready() {
        next.run(req).await
    } else {
        ApiError::unavailable("not-ready", "the views are catching up with the log; retry shortly").into_response()
    }
}

async fn record_metrics(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let t0 = Instant::now();
    let resp = next.run(req).await;
    let labels = crate::metrics::RequestLabels {
        route: route.clone(),
        method,
        status: resp.status().as_u16(),
    };
    st.metrics.requests.get_or_create(&labels).inc();
    st.metrics
        .latency
        .get_or_create(&crate::metrics::RouteLabels { route })
        .observe(t0.elapsed().as_secs_f64());
    resp
}

/// Parses the query string strictly (unknown parameters and wrong types are
/// 400 `invalid-query`).
pub(crate) fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request("invalid-query", e.body_text()))
}

/// An event as the API shows it: the envelope, with secret fields (hashes,
/// sealed keys) removed from `data`.
pub(crate) fn render_event(e: &RecordedEvent) -> Value {
    let mut data = e.data.clone();
    if let Value::Object(m) = &mut data {
        for f in secret_fields(&e.event_type) {
            m.remove(*f);
        }
    }
    json!({
        "event_id": e.event_id,
        "event_type": e.event_type,
        "stream": e.stream,
        "revision": e.revision,
        "position": e.position,
        "recorded_at": e.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "data": data,
        "metadata": e.metadata,
    })
}

/// Appends an event the server writes itself (as the outcome of `actor`'s
/// call), with `expected` on `stream`.
pub(crate) async fn append_server_event(
    st: &AppState,
    tenant: &str,
    actor: &str,
    stream: &str,
    expected: ExpectedRevision,
    event: DomainEvent,
) -> Result<tokenledger_store::AppendResult, tokenledger_store::AppendError> {
    let ev = server_event(tenant, actor, &event).map_err(|e| tokenledger_store::AppendError::Storage(e.to_string()))?;
    st.store
        .append(&StreamId::new(tenant, stream), expected, vec![ev])
        .await
}

/// A server-written event ready to append: stamped metadata, a fresh id.
pub(crate) fn server_event(tenant: &str, actor: &str, event: &DomainEvent) -> Result<NewEvent, ApiError> {
    let (ty, data) = event.to_parts().map_err(ApiError::internal)?;
    let md = Metadata {
        tenant: tenant.to_owned(),
        actor: actor.to_owned(),
        schema_version: CURRENT_SCHEMA_VERSION,
        correlation_id: None,
        causation_id: None,
        source_time: None,
    };
    Ok(NewEvent::new(
        uuid::Uuid::new_v4(),
        ty,
        data,
        serde_json::to_value(md).unwrap_or_default(),
    ))
}

/// Appends server-written events to one stream atomically; store errors
/// become problems.
pub(crate) async fn append_batch(
    st: &AppState,
    tenant: &str,
    actor: &str,
    stream: &str,
    expected: ExpectedRevision,
    events: Vec<DomainEvent>,
) -> Result<tokenledger_store::AppendResult, ApiError> {
    let batch = events
        .iter()
        .map(|e| server_event(tenant, actor, e))
        .collect::<Result<Vec<_>, _>>()?;
    st.store
        .append(&StreamId::new(tenant, stream), expected, batch)
        .await
        .map_err(streams::append_error)
}

/// Records a server-written event to a stream with `any`; a failure is a 5xx.
pub(crate) async fn record_server_event(
    st: &AppState,
    tenant: &str,
    actor: &str,
    stream: &str,
    event: DomainEvent,
) -> Result<tokenledger_store::AppendResult, ApiError> {
    append_server_event(st, tenant, actor, stream, ExpectedRevision::Any, event)
        .await
        .map_err(streams::append_error)
}
