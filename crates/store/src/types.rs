//! The store's vocabulary: positions, revisions, envelopes, errors.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A place in `$all`: opaque and ordered. `Position::START` is before the
/// first event; the first event is at a position greater than it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// Before the first event.
    pub const START: Position = Position(0);

    /// The smallest position after this one.
    pub fn next(self) -> Position {
        Position(self.0.saturating_add(1))
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A stream, inside its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// The tenant the stream lives in.
    pub tenant: String,
    /// The stream's name, e.g. `token-<jti>`.
    pub name: String,
}

impl StreamId {
    /// The stream `name` in `tenant`.
    pub fn new(tenant: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            name: name.into(),
        }
    }
}

/// The optimistic-concurrency condition of an append (KurrentDB's
/// `StreamState`). On the wire: `"any"`, `"no_stream"`, `"stream_exists"` or
/// an integer revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedRevision {
    /// No condition.
    Any,
    /// The stream must not exist.
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream's last event must have this revision.
    Exact(u64),
}

impl Serialize for ExpectedRevision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ExpectedRevision::Any => s.serialize_str("any"),
            ExpectedRevision::NoStream => s.serialize_str("no_stream"),
            ExpectedRevision::StreamExists => s.serialize_str("stream_exists"),
            ExpectedRevision::Exact(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedRevision {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ExpectedRevision;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#""any", "no_stream", "stream_exists" or a non-negative integer"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "any" => Ok(ExpectedRevision::Any),
                    "no_stream" => Ok(ExpectedRevision::NoStream),
                    "stream_exists" => Ok(ExpectedRevision::StreamExists),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ExpectedRevision::Exact(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ExpectedRevision::Exact)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// An event to append. `data` and `metadata` are JSON; the store does not
/// interpret them (the server validates them first).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The idempotency key, unique within the tenant.
    pub event_id: Uuid,
    /// The event type, e.g. `TokenIssued`.
    pub event_type: String,
    /// The payload.
    pub data: serde_json::Value,
    /// The envelope metadata.
    pub metadata: serde_json::Value,
}

impl NewEvent {
    /// An event to append.
    pub fn new(
        event_id: Uuid,
        event_type: impl Into<String>,
        data: serde_json::Value,
        metadata: serde_json::Value,
    ) -> Self {
        Self {
            event_id,
            event_type: event_type.into(),
            data,
            metadata,
        }
    }
}

/// An event as committed: the envelope of DESIGN.md "Events".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The idempotency key.
    pub event_id: Uuid,
    /// The event type.
    pub event_type: String,
    /// The tenant the stream lives in.
    pub tenant: String,
    /// The stream's name.
    pub stream: String,
    /// The revision within the stream, from 0.
    pub revision: u64,
    /// The position in `$all`.
    pub position: Position,
    /// When the writer committed it, UTC; non-decreasing by position.
    pub recorded_at: DateTime<Utc>,
    /// The payload.
    pub data: serde_json::Value,
    /// The envelope metadata.
    pub metadata: serde_json::Value,
}

/// Where one appended event landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendedEvent {
    /// The event's id.
    pub event_id: Uuid,
    /// Its revision in the stream.
    pub revision: u64,
    /// Its position in `$all`.
    pub position: Position,
}

/// The answer to an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// Each event, in order.
    pub events: Vec<AppendedEvent>,
    /// The revision of the stream's last event after the append (KurrentDB's
    /// next expected version).
    pub next_expected_revision: u64,
    /// False when every id was already recorded and nothing was written.
    pub written: bool,
}

/// Why an append wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The stream's revision did not match; `actual` is `None` when the
    /// stream does not exist.
    #[error("expected revision {expected:?} but the stream is at {actual:?}")]
    WrongExpectedRevision {
        /// What the append expected.
        expected: ExpectedRevision,
        /// The stream's actual last revision.
        actual: Option<u64>,
    },
    /// A known event id came with other content, another stream, or mixed
    /// with new ids.
    #[error("event id {event_id} is already recorded with other content")]
    IdempotencyConflict {
        /// The id.
        event_id: Uuid,
    },
    /// The batch repeats an event id.
    #[error("event id {event_id} appears twice in the batch")]
    DuplicateEventId {
        /// The id.
        event_id: Uuid,
    },
    /// The batch is empty.
    #[error("an append needs at least one event")]
    Empty,
    /// The [`AppendGuard`](crate::AppendGuard) refused the append.
    #[error("refused: {}", .0.detail)]
    Rejected(crate::Rejection),
    /// The store failed; nothing of this append was written.
    #[error("storage error: {0}")]
    Storage(String),
    /// The store is closed.
    #[error("the event store is closed")]
    Closed,
}

/// A read or subscription failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// The store is closed.
    #[error("the event store is closed")]
    Closed,
}

impl From<StoreError> for AppendError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Storage(s) => AppendError::Storage(s),
            StoreError::Closed => AppendError::Closed,
        }
    }
}
