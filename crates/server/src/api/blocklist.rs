//! `GET /v1/blocklist?since=POS&wait=SECONDS` — the block-list feed for
//! validators (DESIGN.md "Wire shapes": block list).
//!
//! Without `since`: a snapshot of every entry that still matters (token
//! entries until their token expired more than the largest allowed leeway,
//! 300 s, ago; selectors and keys always). With
//! `since` (exclusive): every entry created after that position. The
//! answer's `position` is the one to ask from next. A revoked token is
//! listed together with every token exchanged from it. With `wait` (at most
//! 30 s) an empty delta waits for the next entry. `ETag` names the answer;
//! `If-None-Match` with it gives 304.

use super::query;
use crate::auth::{Caller, Permission};
use crate::problem::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenledger_domain::views::{BlockKind, BlockLogEntry};
use tokenledger_tokens::paseto::rfc3339;

/// A token entry stays in snapshots this long after its token expires: a
/// validator may accept an expired token for its leeway, at most 300 s.
const MAX_LEEWAY: chrono::Duration = chrono::Duration::seconds(300);

/// Query of the feed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlocklistQuery {
    /// Entries after this position (exclusive); absent: a snapshot.
    pub since: Option<u64>,
    /// Seconds to wait for a new entry when there is none (long poll), ≤ 30.
    pub wait: Option<u64>,
}

fn entry(e: &BlockLogEntry) -> Value {
    let mut v = match e.kind {
        BlockKind::Token => json!({"token_id": e.key}),
        BlockKind::Kid => json!({"kid": e.key}),
        BlockKind::Selector => {
            let (scope, key) = e.key.split_once(':').unwrap_or(("", &e.key));
            json!({"selector": {"scope": scope, "key": key}, "revoked_at": rfc3339(e.revoked_at)})
        }
    };
    v["position"] = json!(e.position);
    v["expires_at"] = e.expires_at.map_or(Value::Null, |t| json!(rfc3339(t)));
    v
}

/// `GET /v1/blocklist` — validator, admin.
pub async fn feed(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    caller.require(Permission::ReadKeysAndBlocklist)?;
    let tenant = caller.tenant()?.to_owned();
    let q: BlocklistQuery = query(&uri)?;
    let wait = std::time::Duration::from_secs(q.wait.unwrap_or(0).min(30));
    let mut woken = st.views.watch_blocks();
    let deadline = tokio::time::Instant::now() + wait;
    let (entries, position) = loop {
        // Read the head first: every entry at or before it is in the views.
        let position = st.views.head();
        let now = st.clock.now();
        let entries: Vec<Value> = st.views.read(&tenant, |v| {
            let start = match q.since {
                Some(s) => v.block_log.partition_point(|e| e.position <= s),
                None => 0,
            };
            v.block_log[start..]
                .iter()
                .filter(|e| e.position <= position)
                .filter(|e| q.since.is_some() || e.expires_at.is_none_or(|x| x + MAX_LEEWAY > now))
                .map(entry)
                .collect()
        });
        if !entries.is_empty() || q.since.is_none() || tokio::time::Instant::now() >= deadline {
            break (entries, position);
        }
        if tokio::time::timeout_at(deadline, woken.changed()).await.is_err() {
            continue; // timed out: one last read, then answer
        }
    };
    let position = q.since.map_or(position, |s| position.max(s));
    let body = json!({"entries": entries, "position": position});
    let text = serde_json::to_string(&body).map_err(ApiError::internal)?;
    let etag = format!(
        "\"bl-{}-{}-{}\"",
        q.since.map_or("all".into(), |s| s.to_string()),
        position,
        entries.len()
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], text).into_response();
    resp.headers_mut()
        .insert(header::ETAG, HeaderValue::from_str(&etag).map_err(ApiError::internal)?);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}
