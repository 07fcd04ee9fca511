//! `/healthz`, `/readyz`, `/metrics`.

use crate::auth::{Caller, Permission};
use crate::problem::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

/// `GET /healthz`: the process is up. No credential; reveals nothing else.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 once the views have reached the head of the log, 503
/// before. No credential.
pub async fn readyz(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    if st.is_ready() {
        Ok(Json(json!({"status": "ready"})))
    } else {
        Err(ApiError::unavailable(
            "not-ready",
            "the views are catching up with the log",
        ))
    }
}

/// `GET /metrics` on the main listener: admin only.
pub async fn metrics(State(st): State<AppState>, caller: Caller) -> Result<impl IntoResponse, ApiError> {
    caller.require(Permission::Administer)?;
    Ok(metrics_text(&st))
}

/// `GET /metrics` on `--metrics-listen`: no credential.
pub async fn metrics_open(State(st): State<AppState>) -> impl IntoResponse {
    metrics_text(&st)
}

fn metrics_text(st: &AppState) -> impl IntoResponse + use<> {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        st.metrics.render(),
    )
}
