//! The anomaly view for the SOC (DESIGN.md "Projections", "HTTP surface"):
//!
//! * `GET /v1/anomalies?kind=&severity=&min_severity=&subject=&client_id=&token_id=&ip=&since=&limit=`
//!   — analyst, soc, admin: the tenant's anomalies in position order,
//!   filtered; `since` is a position (exclusive) or an RFC 3339 time
//!   (`detected_at` at or after it). Answer `{"anomalies": [...],
//!   "position": P}`: every anomaly up to `P` that matches is in the answer
//!   (unless `limit` cut it, then `P` is the last one's position; the
//!   anomalies of one position are never split across answers), so
//!   `since=P` asks for the next ones.
//! * `GET /v1/anomalies/stream` — soc, admin ("stream alerts"): Server-Sent
//!   Events (WHATWG HTML "Server-sent events"), one `event: anomaly` per
//!   anomaly with `data` its JSON and `id` the triggering event's position
//!   (see [`Cursor`] for the rare event that triggers several).
//!   A client that reconnects with `Last-Event-ID: P` (or `?since=P`) gets
//!   every anomaly after the one it last saw, each once.
//!   Without either, the stream starts at the head: only new anomalies.
//!   An id or `since` beyond the head is refused (400). The credential is
//!   checked again before every read (at least every 5 s): the stream ends
//!   when the principal is disabled or its secret rotated, and when the
//!   server starts shutting down (the client resumes elsewhere).
//!   A comment line every 15 s keeps idle connections open.
//!
//! Anomalies are folded with the views before an append is acknowledged, so
//! both read the live views: no anomaly at or before the views' head is
//! missing.

use super::query;
use crate::auth::{Caller, Permission};
use crate::problem::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::time::Duration;
use tokenledger_domain::anomalies::{Anomaly, AnomalyKind, Severity};
use tokenledger_domain::ids::check_identifier;
use tokenledger_domain::views::TenantViews;

/// Most anomalies one `GET /v1/anomalies` answers with.
pub const MAX_LIMIT: usize = 10_000;

/// Query of `GET /v1/anomalies`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyQuery {
    /// Only this kind (`concurrent_use`, …).
    pub kind: Option<String>,
    /// Only this severity (`low`, `medium`, `high`, `critical`).
    pub severity: Option<String>,
    /// Only this severity or a more serious one.
    pub min_severity: Option<String>,
    /// Only about this subject.
    pub subject: Option<String>,
    /// Only about this client.
    pub client_id: Option<String>,
    /// Only about this token.
    pub token_id: Option<String>,
    /// Only about this address.
    pub ip: Option<String>,
    /// A position (exclusive) or an RFC 3339 time (inclusive).
    pub since: Option<String>,
    /// At most this many (default and maximum [`MAX_LIMIT`]).
    pub limit: Option<usize>,
}

fn severity(s: &str) -> Result<Severity, ApiError> {
    serde_json::from_value(Value::from(s)).map_err(|_| {
        ApiError::bad_request(
            "invalid-query",
            format!("severity {s:?} is not one of low, medium, high, critical"),
        )
    })
}

enum Since {
    Position(u64),
    Time(DateTime<Utc>),
}

fn since(s: &str) -> Result<Since, ApiError> {
    if let Ok(p) = s.parse::<u64>() {
        return Ok(Since::Position(p));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| Since::Time(t.with_timezone(&Utc)))
        .map_err(|_| {
            ApiError::bad_request(
                "invalid-query",
                format!("since {s:?} is neither a position nor an RFC 3339 time"),
            )
        })
}

/// `GET /v1/anomalies` — analyst, soc, admin.
pub async fn list(State(st): State<AppState>, caller: Caller, uri: Uri) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::ReadAnomalies)?;
    let tenant = caller.tenant()?.to_owned();
    let q: AnomalyQuery = query(&uri)?;
    let kind = match &q.kind {
        Some(k) => Some(AnomalyKind::parse(k).ok_or_else(|| {
            let all: Vec<&str> = AnomalyKind::ALL.iter().map(|k| k.as_str()).collect();
            ApiError::bad_request("invalid-query", format!("kind {k:?} is not one of {}", all.join(", ")))
        })?),
        None => None,
    };
    let exact = q.severity.as_deref().map(severity).transpose()?;
    let min = q.min_severity.as_deref().map(severity).transpose()?;
    // Names are checked as everywhere else (NFC, no invisible or control
    // characters): a filter that can match nothing is an error, not an
    // empty answer.
    for (field, value) in [
        ("subject", &q.subject),
        ("client_id", &q.client_id),
        ("token_id", &q.token_id),
        ("ip", &q.ip),
    ] {
        if let Some(v) = value {
            check_identifier(field, v).map_err(|e| ApiError::bad_request("invalid-query", e.to_string()))?;
        }
    }
    let since = q.since.as_deref().map(since).transpose()?;
    let limit = q.limit.unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT);
    let head = st.views.head();
    let (anomalies, position) = st.views.read(&tenant, |v| {
        let after = match since {
            Some(Since::Position(p)) => p,
            _ => 0,
        };
        let mut out = Vec::new();
        let mut position = head.max(after);
        for a in v.detect.anomalies_after(after) {
            if a.position > head {
                break;
            }
            let keep = kind.is_none_or(|k| a.kind == k)
                && exact.is_none_or(|s| a.severity == s)
                && min.is_none_or(|s| a.severity >= s)
                && q.subject.as_ref().is_none_or(|s| a.subject.as_ref() == Some(s))
                && q.client_id.as_ref().is_none_or(|s| a.client_id.as_ref() == Some(s))
                && q.token_id.as_ref().is_none_or(|s| a.token_id.as_ref() == Some(s))
                && q.ip.as_ref().is_none_or(|s| a.ip.as_ref() == Some(s))
                && match since {
                    Some(Since::Time(t)) => a.detected_at >= t,
                    _ => true,
                };
            if !keep {
                continue;
            }
            if out.len() >= limit && out.last().is_none_or(|(p, _)| *p != a.position) {
                // Full: cut at a position boundary (a position's anomalies
                // are never split), the next page starts after it.
                position = out.last().map_or(after, |(p, _)| *p);
                break;
            }
            out.push((a.position, a.to_json(&tenant)));
        }
        (out, position)
    });
    let anomalies: Vec<Value> = anomalies.into_iter().map(|(_, v)| v).collect();
    Ok(Json(json!({"anomalies": anomalies, "position": position})))
}

/// Query of `GET /v1/anomalies/stream`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Resume after this position (as `Last-Event-ID`, which wins).
    pub since: Option<u64>,
}

/// Where an alert stream stands: after every anomaly up to `position`, or,
/// with `index` k, after the anomalies 0..=k of `position` (in view order).
///
/// As an SSE `id`: the last anomaly of a position has the position itself
/// as its id; when one event triggered several, the ones before the last
/// have `position.k`. Most positions trigger one anomaly, so the id is
/// the triggering position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The position.
    pub position: u64,
    /// Index within the position's anomalies, if not past all of them.
    pub index: Option<usize>,
}

impl Cursor {
    /// Parses `P` or `P.k`.
    pub fn parse(s: &str) -> Option<Cursor> {
        let s = s.trim();
        match s.split_once('.') {
            None => Some(Cursor {
                position: s.parse().ok()?,
                index: None,
            }),
            Some((p, k)) => Some(Cursor {
                position: p.parse().ok()?,
                index: Some(k.parse().ok()?),
            }),
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            None => write!(f, "{}", self.position),
            Some(k) => write!(f, "{}.{k}", self.position),
        }
    }
}

/// The anomalies after `after` up to `head`, each with its cursor and JSON.
fn pending(v: &TenantViews, tenant: &str, after: Cursor, head: u64) -> Vec<(Cursor, String)> {
    let base = match after.index {
        Some(_) => after.position.saturating_sub(1),
        None => after.position,
    };
    let list: Vec<&Anomaly> = v
        .detect
        .anomalies_after(base)
        .take_while(|a| a.position <= head)
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < list.len() {
        let p = list[i].position;
        let n = list[i..].iter().take_while(|a| a.position == p).count();
        for (k, a) in list[i..i + n].iter().enumerate() {
            if after.index.is_some_and(|j| p == after.position && k <= j) {
                continue;
            }
            let cursor = Cursor {
                position: p,
                index: (k + 1 < n).then_some(k),
            };
            out.push((cursor, a.to_json(tenant).to_string()));
        }
        i += n;
    }
    out
}

/// `GET /v1/anomalies/stream` — soc, admin.
pub async fn stream(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require(Permission::Respond)?;
    let tenant = caller.tenant()?.to_owned();
    let q: StreamQuery = query(&uri)?;
    let last_id = match headers.get("last-event-id") {
        Some(h) => Some(h.to_str().ok().and_then(Cursor::parse).ok_or_else(|| {
            ApiError::bad_request(
                "invalid-last-event-id",
                "Last-Event-ID must be an event id this stream sent: a position, or position.index",
            )
        })?),
        None => None,
    };
    // Subscribe before reading the head, so nothing committed after the
    // read can be missed.
    let woken = st.views.watch_detections();
    let from = match last_id {
        Some(c) => c,
        None => Cursor {
            position: q.since.unwrap_or_else(|| st.views.head()),
            index: None,
        },
    };
    if last_id.is_some_and(|c| c.position > st.views.head()) {
        return Err(ApiError::bad_request(
            "invalid-last-event-id",
            "Last-Event-ID is beyond the head of the log: not an id this server sent",
        ));
    }
    if q.since.is_some_and(|p| p > st.views.head()) {
        return Err(ApiError::bad_request(
            "invalid-query",
            "since is beyond the head of the log",
        ));
    }
    // The credential is checked again before every read: a stream ends when
    // its principal is disabled or its secret rotated.
    let secret = crate::auth::bearer(&headers).unwrap_or_default().to_owned();
    let state = (st, tenant, from, woken);
    let events = futures::stream::unfold(state, move |(st, tenant, after, mut woken)| {
        let (secret, caller) = (secret.clone(), caller.clone());
        async move {
            loop {
                if st.authenticate(&secret).as_ref() != Some(&caller) {
                    tracing::info!(principal = %caller.name, "alert stream closed: the credential is no longer valid");
                    return None;
                }
                // A shutdown drains requests: an open stream ends rather than
                // holding the server for the whole grace period. The client
                // resumes from its last id on the next server.
                if !st.is_ready() {
                    return None;
                }
                let head = st.views.head();
                let batch = st.views.read(&tenant, |v| pending(v, &tenant, after, head));
                if let Some((cursor, _)) = batch.last() {
                    let next = *cursor;
                    let events: Vec<Result<Event, Infallible>> = batch
                        .into_iter()
                        .map(|(c, data)| Ok(Event::default().event("anomaly").id(c.to_string()).data(data)))
                        .collect();
                    return Some((futures::stream::iter(events), (st, tenant, next, woken)));
                }
                // Nothing new up to the head: wait for the next detection (or
                // poll now and then, in case a wake-up raced the read).
                let _ = tokio::time::timeout(Duration::from_secs(5), woken.changed()).await;
            }
        }
    });
    use futures::StreamExt;
    Ok(Sse::new(events.flatten()).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
