//! `POST /v1/sql` and `GET /v1/export/{table}` — analysts' SQL over the
//! `events` table and the views (DESIGN.md "HTTP surface", "Wire shapes":
//! SQL), through DataFusion, for the caller's tenant only.
//!
//! The query sees the tenant's tables at one position, at or after the head
//! of the log when the request arrived (read your writes); the answer names
//! it in `Tokenledger-Position`. Errors are problem+json: `sql-error` (400,
//! DataFusion's message: syntax, unknown table or column, or DDL, DML and
//! statements, which are refused), `sql-limit` (422: memory or row cap),
//! `sql-timeout` (503).

use crate::auth::{Caller, Permission};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokenledger_analytics::arrow::error::ArrowError;
use tokenledger_analytics::arrow::ipc::writer::StreamWriter;
use tokenledger_analytics::encode::{ARROW_STREAM, to_ipc, to_json};
use tokenledger_analytics::{SqlError, TenantSnapshot};

/// How long a query waits for the analytics projection to reach the head.
const CATCH_UP: Duration = Duration::from_secs(10);

/// Body of `POST /v1/sql`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// One SQL query (DataFusion's dialect).
    pub sql: String,
}

fn problem(e: SqlError) -> ApiError {
    match e {
        SqlError::Invalid(m) => ApiError::bad_request("sql-error", m),
        SqlError::Limit(m) => ApiError::unprocessable("sql-limit", m),
        SqlError::Timeout(_) => ApiError::unavailable("sql-timeout", e.to_string()),
        SqlError::Execution(m) => ApiError::bad_request("sql-error", m),
    }
}

fn wants_arrow(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.split(';').next().is_some_and(|t| t.trim() == ARROW_STREAM))
        })
}

/// The caller's tenant's tables at or after the head of the log now.
async fn snapshot(st: &AppState, tenant: &str) -> Result<TenantSnapshot, ApiError> {
    let head = st.store.head().await.map_err(ApiError::internal)?;
    if !st.analytics.wait_for(head.0, CATCH_UP).await {
        return Err(ApiError::unavailable(
            "not-ready",
            "the SQL tables have not caught up with the log yet; retry",
        ));
    }
    Ok(st.analytics.snapshot(tenant, st.clock.now()))
}

/// `POST /v1/sql` — analyst, admin. `{"sql": "SELECT …"}` → `{"columns",
/// "rows"}`, or an Arrow IPC stream for `Accept:
/// application/vnd.apache.arrow.stream`.
pub async fn query(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    caller.require(Permission::Sql)?;
    let tenant = caller.tenant()?.to_owned();
    let req: SqlRequest = body.parse().await?;
    let snap = snapshot(&st, &tenant).await?;
    let position = snap.position;
    let (schema, batches) = st.analytics.query(snap, &req.sql).await.map_err(problem)?;
    let pos = [("tokenledger-position", position.to_string())];
    if wants_arrow(&headers) {
        let bytes = to_ipc(&schema, &batches).map_err(ApiError::internal)?;
        return Ok((StatusCode::OK, [(header::CONTENT_TYPE, ARROW_STREAM)], pos, bytes).into_response());
    }
    let body = serde_json::to_vec(&to_json(&schema, &batches)).map_err(ApiError::internal)?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], pos, body).into_response())
}

/// `GET /v1/export/{table}` — analyst, admin: every row of one table
/// (`events`, `active_tokens`, `block_list`, `keys`, `cutoffs`) at one
/// position, as an Arrow IPC stream written batch by batch (no row cap; the
/// schema is the SQL table's). `tokenledger export` turns it into Parquet.
pub async fn export(
    State(st): State<AppState>,
    caller: Caller,
    Path(table): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Permission::Sql)?;
    let tenant = caller.tenant()?.to_owned();
    let snap = snapshot(&st, &tenant).await?;
    let position = snap.position;
    let Some((_, schema, batches)) = snap.tables.into_iter().find(|(n, ..)| *n == table) else {
        return Err(ApiError::not_found(
            "unknown-table",
            format!("there is no table {table:?}"),
        ));
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter { tx, buf: Vec::new() };
        let written = (|| {
            let mut w = StreamWriter::try_new(out, &schema)?;
            for b in &batches {
                w.write(b)?;
            }
            w.finish()?;
            w.into_inner()?.flush_rest()
        })();
        if let Err(e) = written {
            tracing::debug!(error = %e, "export stream ended early");
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let body = Body::from_stream(stream);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, ARROW_STREAM)],
        [("tokenledger-position", position.to_string())],
        body,
    )
        .into_response())
}

/// Sends what an IPC writer writes to the response body in chunks of about
/// 1 MiB; a closed receiver (the client went away) ends the export.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }

    fn flush_rest(mut self) -> Result<(), ArrowError> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 20 {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
