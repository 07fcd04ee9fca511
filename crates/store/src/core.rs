//! The append decision shared by every backend that writes its own log:
//! idempotency, the expected-revision check, position and `recorded_at`
//! stamping. Backends supply the tables through [`LogTables`].

use crate::types::*;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use uuid::Uuid;

/// SHA-256 of an event's content (type, data, metadata) in a canonical JSON
/// form (object keys sorted), so a retry is recognised whatever its key
/// order.
pub(crate) type ContentHash = [u8; 32];

/// What the idempotency index holds per `(tenant, event_id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdEntry {
    pub position: Position,
    pub hash: ContentHash,
}

/// The tables an append reads and writes, inside one write transaction.
pub(crate) trait LogTables {
    /// The last revision of a stream, `None` if it does not exist.
    fn stream_revision(&mut self, stream: &StreamId) -> Result<Option<u64>, StoreError>;
    /// The idempotency entry of an event id in a tenant.
    fn event_id(&mut self, tenant: &str, id: Uuid) -> Result<Option<IdEntry>, StoreError>;
    /// The event at a position (it must exist).
    fn event_at(&mut self, position: Position) -> Result<RecordedEvent, StoreError>;
    /// Writes one event and its index entries. `parts` holds its content
    /// hash and its `data` and `metadata` already encoded.
    fn insert(&mut self, event: &RecordedEvent, parts: &Parts) -> Result<(), StoreError>;
}

/// What can be computed about an event before the writer sees it (in the
/// appending task, off the writer's thread): its content hash and its
/// `data` and `metadata` encoded as JSON.
pub(crate) struct Parts {
    pub hash: ContentHash,
    pub data: Box<serde_json::value::RawValue>,
    pub metadata: Box<serde_json::value::RawValue>,
}

/// Computes the [`Parts`] of each event.
pub(crate) fn prepare(events: &[NewEvent]) -> Result<Vec<Parts>, AppendError> {
    let raw = |v: &serde_json::Value| {
        serde_json::value::to_raw_value(v).map_err(|e| AppendError::Storage(format!("cannot encode an event: {e}")))
    };
    events
        .iter()
        .map(|e| {
            Ok(Parts {
                hash: content_hash(e),
                data: raw(&e.data)?,
                metadata: raw(&e.metadata)?,
            })
        })
        .collect()
}

/// The writer's running state: where the next event goes and the last
/// `recorded_at` handed out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor {
    pub next_position: Position,
    pub last_recorded_at: DateTime<Utc>,
}

/// Decides and performs one append against `tables`. On `Err` nothing was
/// inserted, except for [`AppendError::Storage`], after which the caller must
/// abort the whole transaction.
#[allow(clippy::too_many_arguments)] // the writer's state, then one request's parts
pub(crate) fn apply_append(
    tables: &mut impl LogTables,
    cursor: &mut Cursor,
    now: DateTime<Utc>,
    guard: Option<&dyn crate::AppendGuard>,
    stream: &StreamId,
    expected: ExpectedRevision,
    events: Vec<NewEvent>,
    parts: &[Parts],
) -> Result<(AppendResult, Vec<RecordedEvent>), AppendError> {
    if events.is_empty() {
        return Err(AppendError::Empty);
    }
    debug_assert_eq!(events.len(), parts.len());
    let mut seen = HashSet::with_capacity(events.len());
    for e in &events {
        if !seen.insert(e.event_id) {
            return Err(AppendError::DuplicateEventId { event_id: e.event_id });
        }
    }
    let hashes: Vec<ContentHash> = parts.iter().map(|p| p.hash).collect();

    // Idempotency first: a retry of a committed append succeeds whatever the
    // expected revision now says.
    let mut known = Vec::with_capacity(events.len());
    for e in &events {
        known.push(tables.event_id(&stream.tenant, e.event_id)?);
    }
    if known.iter().any(Option::is_some) {
        return replay_result(tables, stream, &events, &hashes, &known).map(|r| (r, Vec::new()));
    }

    if let Some(g) = guard {
        g.check(stream, &events).map_err(AppendError::Rejected)?;
    }

    let actual = tables.stream_revision(stream)?;
    let ok = match expected {
        ExpectedRevision::Any => true,
        ExpectedRevision::NoStream => actual.is_none(),
        ExpectedRevision::StreamExists => actual.is_some(),
        ExpectedRevision::Exact(n) => actual == Some(n),
    };
    if !ok {
        return Err(AppendError::WrongExpectedRevision { expected, actual });
    }

    let recorded_at = now.max(cursor.last_recorded_at);
    let mut revision = actual.map_or(0, |r| r + 1);
    let mut position = cursor.next_position;
    let mut recorded = Vec::with_capacity(events.len());
    let mut appended = Vec::with_capacity(events.len());
    for (e, part) in events.into_iter().zip(parts) {
        let rec = RecordedEvent {
            event_id: e.event_id,
            event_type: e.event_type,
            tenant: stream.tenant.clone(),
            stream: stream.name.clone(),
            revision,
            position,
            recorded_at,
            data: e.data,
            metadata: e.metadata,
        };
        tables.insert(&rec, part)?;
        appended.push(AppendedEvent {
            event_id: rec.event_id,
            revision,
            position,
        });
        recorded.push(rec);
        revision += 1;
        position = position.next();
    }
    cursor.next_position = position;
    cursor.last_recorded_at = recorded_at;
    let result = AppendResult {
        next_expected_revision: revision - 1,
        events: appended,
        written: true,
    };
    Ok((result, recorded))
}

/// The original result of an append whose ids are all known, if the retry
/// matches it: same stream, same content, consecutive revisions in order.
fn replay_result(
    tables: &mut impl LogTables,
    stream: &StreamId,
    events: &[NewEvent],
    hashes: &[ContentHash],
    known: &[Option<IdEntry>],
) -> Result<AppendResult, AppendError> {
    let mut appended = Vec::with_capacity(events.len());
    for ((e, hash), entry) in events.iter().zip(hashes).zip(known) {
        let conflict = AppendError::IdempotencyConflict { event_id: e.event_id };
        let Some(entry) = entry else { return Err(conflict) };
        if entry.hash != *hash {
            return Err(conflict);
        }
        let rec = tables.event_at(entry.position)?;
        if rec.stream != stream.name {
            return Err(conflict);
        }
        if let Some(prev) = appended.last().map(|a: &AppendedEvent| a.revision)
            && rec.revision != prev + 1
        {
            return Err(conflict);
        }
        appended.push(AppendedEvent {
            event_id: e.event_id,
            revision: rec.revision,
            position: rec.position,
        });
    }
    let last = appended.last().map_or(0, |a| a.revision);
    Ok(AppendResult {
        events: appended,
        next_expected_revision: last,
        written: false,
    })
}

/// SHA-256 over the event type, data and metadata in canonical JSON
/// (object keys sorted), without building intermediate strings.
pub(crate) fn content_hash(e: &NewEvent) -> ContentHash {
    let mut h = HashWriter(Sha256::new());
    h.0.update(e.event_type.as_bytes());
    h.0.update([0]);
    canonical(&e.data, &mut h);
    h.0.update([0]);
    canonical(&e.metadata, &mut h);
    h.0.finalize().into()
}

struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn canonical(v: &serde_json::Value, h: &mut HashWriter) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            h.0.update(b"{");
            for k in keys {
                // Writing into a hasher cannot fail.
                let _ = serde_json::to_writer(&mut *h, k);
                h.0.update(b":");
                canonical(&m[k], h);
                h.0.update(b",");
            }
            h.0.update(b"}");
        }
        Value::Array(a) => {
            h.0.update(b"[");
            for x in a {
                canonical(x, h);
                h.0.update(b",");
            }
            h.0.update(b"]");
        }
        other => {
            let _ = serde_json::to_writer(&mut *h, other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ignores_key_order_but_not_values() {
        let a = NewEvent::new(
            Uuid::nil(),
            "T",
            serde_json::json!({"a": 1, "b": [1, {"x": 2, "y": 3}]}),
            serde_json::json!({}),
        );
        let b: serde_json::Value = serde_json::from_str(r#"{"b": [1, {"y": 3, "x": 2}], "a": 1}"#).unwrap();
        let b = NewEvent::new(Uuid::nil(), "T", b, serde_json::json!({}));
        assert_eq!(content_hash(&a), content_hash(&b));
        let c = NewEvent::new(
            Uuid::nil(),
            "T",
            serde_json::json!({"a": 2, "b": [1, {"x": 2, "y": 3}]}),
            serde_json::json!({}),
        );
        assert_ne!(content_hash(&a), content_hash(&c));
        let d = NewEvent::new(Uuid::nil(), "U", a.data.clone(), serde_json::json!({}));
        assert_ne!(content_hash(&a), content_hash(&d));
    }
}
