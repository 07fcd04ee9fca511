//! The `events` table: every committed event of one tenant as Arrow rows,
//! envelope columns plus typed columns lifted out of `data` and `metadata`.
//!
//! Only named fields are lifted; `data` itself is not a column, so sealed
//! signing keys (`SigningKeyAdded.sealed_secret`) and credential hashes
//! (`PrincipalCreated.secret_hash`, …) never reach SQL.

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{ArrayRef, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::Value;
use std::sync::{Arc, LazyLock};
use tokenledger_store::RecordedEvent;

/// Rows per sealed batch of the `events` table.
pub const BATCH_ROWS: usize = 8192;

/// The Arrow type of every time column: microseconds since the Unix epoch,
/// zoned UTC, so a session time zone never shifts which rows a literal matches.
pub fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Where a text column's value comes from: the first present key path, in
/// `data` unless the path starts with `@` (then `metadata`).
const TEXT_COLUMNS: &[(&str, &[&str])] = &[
    ("stream", &[]),
    ("event_id", &[]),
    ("event_type", &[]),
    ("token_id", &["token_id", "new_token_id"]),
    ("parent_token_id", &["parent_token_id", "subject_token_id"]),
    ("subject", &["subject"]),
    ("client_id", &["client_id"]),
    ("issuer", &["issuer"]),
    ("audience", &["audience", "granted_audience", "requested.audience"]),
    ("scope", &["scope", "granted_scope", "requested.scope"]),
    ("format", &["format"]),
    ("kid", &["kid"]),
    ("validator", &["validator"]),
    ("outcome", &["outcome"]),
    ("reason", &["reason"]),
    ("ip", &["context.ip", "ip"]),
    ("user_agent", &["context.user_agent"]),
    ("device_id", &["context.device_id"]),
    ("claimed_token_id", &["claimed_token_id"]),
    ("claimed_subject", &["claimed_subject"]),
    ("claimed_client_id", &["claimed_client_id"]),
    ("selector_scope", &["selector.scope"]),
    ("selector_key", &["selector.key"]),
    ("cutoff_id", &["cutoff_id"]),
    ("rule_id", &["rule_id"]),
    ("mode", &["mode"]),
    ("by", &["by"]),
    ("grant_path", &["path"]),
    ("name", &["name"]),
    ("role", &["role"]),
    ("level", &["level"]),
    ("kind", &["kind"]),
    ("actor", &["@actor"]),
];

/// Where a time column's value comes from (RFC 3339 strings in the payload).
const TIME_COLUMNS: &[(&str, &[&str])] = &[
    ("issued_at", &["issued_at"]),
    ("expires_at", &["expires_at", "until"]),
    ("used_at", &["at"]),
    ("source_time", &["@source_time"]),
];

/// The `events` table's schema: `position` (UInt64), `recorded_at`
/// (UTC microseconds), `revision` (UInt64), then the text columns of
/// [`TEXT_COLUMNS`] and the time columns of [`TIME_COLUMNS`], all nullable
/// except the envelope.
pub fn events_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let mut fields = vec![
            Field::new("position", DataType::UInt64, false),
            Field::new("recorded_at", utc_micros(), false),
            Field::new("revision", DataType::UInt64, false),
        ];
        for (name, paths) in TEXT_COLUMNS {
            fields.push(Field::new(*name, DataType::Utf8, !paths.is_empty()));
        }
        for (name, _) in TIME_COLUMNS {
            fields.push(Field::new(*name, utc_micros(), true));
        }
        Arc::new(Schema::new(fields))
    });
    SCHEMA.clone()
}

fn lookup<'a>(e: &'a RecordedEvent, path: &str) -> Option<&'a Value> {
    let (root, path) = match path.strip_prefix('@') {
        Some(p) => (&e.metadata, p),
        None => (&e.data, path),
    };
    let mut v = root;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    Some(v)
}

fn text<'a>(e: &'a RecordedEvent, paths: &[&str]) -> Option<&'a str> {
    paths.iter().find_map(|p| lookup(e, p).and_then(Value::as_str))
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(e: &RecordedEvent, paths: &[&str]) -> Option<i64> {
    let s = text(e, paths)?;
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| micros(t.with_timezone(&Utc)))
}

/// Accumulates rows of the `events` table until a batch is full.
pub struct EventsBuilder {
    position: UInt64Builder,
    recorded_at: TimestampMicrosecondBuilder,
    revision: UInt64Builder,
    text: Vec<StringBuilder>,
    times: Vec<TimestampMicrosecondBuilder>,
    rows: usize,
}

impl Default for EventsBuilder {
    fn default() -> Self {
        Self {
            position: UInt64Builder::with_capacity(BATCH_ROWS),
            recorded_at: TimestampMicrosecondBuilder::with_capacity(BATCH_ROWS).with_timezone("UTC"),
            revision: UInt64Builder::with_capacity(BATCH_ROWS),
            text: TEXT_COLUMNS.iter().map(|_| StringBuilder::new()).collect(),
            times: TIME_COLUMNS
                .iter()
                .map(|_| TimestampMicrosecondBuilder::new().with_timezone("UTC"))
                .collect(),
            rows: 0,
        }
    }
}

impl EventsBuilder {
    /// Appends one event as a row.
    pub fn push(&mut self, e: &RecordedEvent) {
        self.position.append_value(e.position.0);
        self.recorded_at.append_value(micros(e.recorded_at));
        self.revision.append_value(e.revision);
        let event_id = e.event_id.to_string();
        let cutoff = e.event_type == "MintingCutoffEngaged";
        for ((name, paths), b) in TEXT_COLUMNS.iter().zip(&mut self.text) {
            let v = match *name {
                "stream" => Some(e.stream.as_str()),
                "event_id" => Some(event_id.as_str()),
                "event_type" => Some(e.event_type.as_str()),
                // A cutoff's scope and key name what it covers, like a selector.
                "scope" if cutoff => None,
                "selector_scope" if cutoff => text(e, &["scope"]),
                "selector_key" if cutoff => text(e, &["key"]),
                _ => text(e, paths),
            };
            b.append_option(v);
        }
        for ((_, paths), b) in TIME_COLUMNS.iter().zip(&mut self.times) {
            b.append_option(time(e, paths));
        }
        self.rows += 1;
    }

    /// Rows not yet sealed into a batch.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row is pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The pending rows as a batch, leaving the builder empty.
    pub fn finish(&mut self) -> RecordBatch {
        self.rows = 0;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.position.finish()),
            Arc::new(self.recorded_at.finish()),
            Arc::new(self.revision.finish()),
        ];
        cols.extend(self.text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        cols.extend(self.times.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        RecordBatch::try_new(events_schema(), cols).expect("the builders follow the schema")
    }

    /// The pending rows as a batch, leaving them pending.
    pub fn snapshot(&self) -> RecordBatch {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.position.finish_cloned()),
            Arc::new(self.recorded_at.finish_cloned()),
            Arc::new(self.revision.finish_cloned()),
        ];
        cols.extend(self.text.iter().map(|b| Arc::new(b.finish_cloned()) as ArrayRef));
        cols.extend(self.times.iter().map(|b| Arc::new(b.finish_cloned()) as ArrayRef));
        RecordBatch::try_new(events_schema(), cols).expect("the builders follow the schema")
    }
}
