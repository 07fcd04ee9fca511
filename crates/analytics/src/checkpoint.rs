//! Checkpoints of the analytics projection, so a restart resumes from where
//! it was instead of replaying the whole log (DESIGN.md "Projections").
//!
//! # Layout (format version 1)
//!
//! ```text
//! <dir>/checkpoint        header line + body (JSON), written last
//! <dir>/seg-<n>.arrow     one Arrow IPC file per batch of one tenant's
//!                         `events` rows, written once, never changed
//! ```
//!
//! The header is
//! `{"format":"tokenledger-analytics-checkpoint","version":1,"position":P,
//! "position_event_id":"…","schema_sha256":"…","written_at":"…",
//! "body_bytes":N,"body_sha256":"…"}`; the body maps each tenant to the
//! segment files holding its `events` rows (in position order, each with
//! its row count and SHA-256) and its views ([`ViewsSnapshot`]). A batch
//! sealed in memory is written once and listed by every later checkpoint;
//! the rows still pending in a tenant's open batch are written to a fresh
//! segment at each checkpoint, which the next checkpoint drops. Files no
//! checkpoint lists are removed after the checkpoint that stopped listing
//! them is in place.
//!
//! Every file is written to a temporary name, fsynced and renamed, and the
//! directory fsynced; files are mode 0600 and the directory 0700 (the
//! views hold signing keys' public halves and sealed private ones).
//!
//! A checkpoint is used only if its header and body check out, every
//! segment's length and SHA-256 match, the `events` schema is this build's
//! (`schema_sha256`), its position is not beyond the head of the log and
//! the event at its position is the one it names. Otherwise it is ignored
//! with a warning and the projection replays the log from position 0.

use crate::events::events_schema;
use chrono::{DateTime, Utc};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokenledger_domain::views::ViewsSnapshot;
use tokenledger_store::files::{create_private_dir, sync_dir, write_private};
use uuid::Uuid;

/// The checkpoint file's name inside the checkpoint directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// The `format` of the header line.
pub const CHECKPOINT_FORMAT: &str = "tokenledger-analytics-checkpoint";
/// The format version this build writes and reads.
pub const CHECKPOINT_VERSION: u32 = 2;

/// When the follower writes a checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointPolicy {
    /// The checkpoint directory (the server uses `<data-dir>/analytics`).
    pub dir: PathBuf,
    /// After this many events folded since the last checkpoint (0: not by
    /// count).
    pub every_events: u64,
    /// After this many seconds since the last checkpoint, if events came
    /// (0: not by time).
    pub every_seconds: u64,
}

/// One segment file as the checkpoint lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SegmentRef {
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    position: u64,
    position_event_id: Option<Uuid>,
    schema_sha256: String,
    written_at: DateTime<Utc>,
    body_bytes: u64,
    body_sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TenantBody {
    pub segments: Vec<SegmentRef>,
    pub views: ViewsSnapshot,
}

#[derive(Debug, Serialize, Deserialize)]
struct Body {
    tenants: BTreeMap<String, TenantBody>,
}

/// A checkpoint as read back, segments decoded.
pub(crate) struct Loaded {
    pub position: u64,
    pub position_event_id: Option<Uuid>,
    pub tenants: BTreeMap<String, (Vec<SegmentRef>, Vec<RecordBatch>, ViewsSnapshot)>,
}

/// Why a checkpoint was not used.
#[derive(Debug, thiserror::Error)]
#[error("analytics checkpoint in {dir} not used: {reason}")]
pub struct CheckpointError {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// SHA-256 of the `events` schema as this build defines it: a checkpoint
/// written under another schema is not read back.
pub(crate) fn schema_sha256() -> String {
    hex::encode(Sha256::digest(format!("{:?}", events_schema()).as_bytes()))
}

/// Writes one batch as the segment file `dir/name` (not yet fsynced into
/// the directory); returns how the checkpoint lists it.
pub(crate) fn write_segment(dir: &Path, name: String, batch: &RecordBatch) -> std::io::Result<SegmentRef> {
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 2 + 1024);
    {
        let mut w = FileWriter::try_new(&mut buf, &batch.schema()).map_err(std::io::Error::other)?;
        w.write(batch).map_err(std::io::Error::other)?;
        w.finish().map_err(std::io::Error::other)?;
    }
    write_private(dir, &name, &[&buf])?;
    Ok(SegmentRef {
        file: name,
        rows: batch.num_rows() as u64,
        bytes: buf.len() as u64,
        sha256: hex::encode(Sha256::digest(&buf)),
    })
}

/// Writes the checkpoint file listing `tenants` at `position`, fsyncs the
/// directory, then removes segment files it does not list. Returns the
/// checkpoint file's size in bytes.
pub(crate) fn write_checkpoint(
    dir: &Path,
    position: u64,
    position_event_id: Option<Uuid>,
    tenants: BTreeMap<String, TenantBody>,
) -> std::io::Result<u64> {
    let listed: std::collections::HashSet<String> = tenants
        .values()
        .flat_map(|t| t.segments.iter().map(|s| s.file.clone()))
        .collect();
    let body = serde_json::to_vec(&Body { tenants }).map_err(std::io::Error::other)?;
    let header = Header {
        format: CHECKPOINT_FORMAT.into(),
        version: CHECKPOINT_VERSION,
        position,
        position_event_id,
        schema_sha256: schema_sha256(),
        written_at: Utc::now(),
        body_bytes: body.len() as u64,
        body_sha256: hex::encode(Sha256::digest(&body)),
    };
    let mut header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    header.push(b'\n');
    write_private(dir, CHECKPOINT_FILE, &[&header, &body])?;
    sync_dir(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("seg-") && (name.ends_with(".arrow") || name.ends_with(".arrow.tmp"));
        if ours && !listed.contains(&name) {
            let _ = std::fs::remove_file(dir.join(&name));
        }
    }
    Ok((header.len() + body.len()) as u64)
}

/// Prepares `dir` for writing (creates it).
pub(crate) fn prepare(dir: &Path) -> std::io::Result<()> {
    create_private_dir(dir)
}

/// Reads the checkpoint in `dir`; `Ok(None)` when there is none.
///
/// Errors: a [`CheckpointError`] naming what does not check out (another
/// format, version or schema; a length or SHA-256 mismatch; an unreadable
/// segment).
pub(crate) fn read_checkpoint(dir: &Path) -> Result<Option<Loaded>, CheckpointError> {
    let bad = |reason: String| CheckpointError {
        dir: dir.to_owned(),
        reason,
    };
    let bytes = match std::fs::read(dir.join(CHECKPOINT_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(format!("cannot read it: {e}"))),
    };
    let split = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| bad("no header line".into()))?;
    let header: Header = serde_json::from_slice(&bytes[..split]).map_err(|e| bad(format!("header: {e}")))?;
    if header.format != CHECKPOINT_FORMAT || header.version != CHECKPOINT_VERSION {
        return Err(bad(format!(
            "format {:?} version {} (this build reads {CHECKPOINT_FORMAT:?} version {CHECKPOINT_VERSION})",
            header.format, header.version
        )));
    }
    if header.schema_sha256 != schema_sha256() {
        return Err(bad("written under another `events` schema".into()));
    }
    let body = &bytes[split + 1..];
    if body.len() as u64 != header.body_bytes || hex::encode(Sha256::digest(body)) != header.body_sha256 {
        return Err(bad("body length or checksum mismatch (truncated or corrupt)".into()));
    }
    let body: Body = serde_json::from_slice(body).map_err(|e| bad(format!("body: {e}")))?;
    let schema = events_schema();
    let mut tenants = BTreeMap::new();
    for (tenant, t) in body.tenants {
        let mut batches = Vec::with_capacity(t.segments.len());
        for s in &t.segments {
            if s.file.contains(['/', '\\']) || !s.file.starts_with("seg-") {
                return Err(bad(format!("segment name {:?}", s.file)));
            }
            let data = std::fs::read(dir.join(&s.file)).map_err(|e| bad(format!("segment {}: {e}", s.file)))?;
            if data.len() as u64 != s.bytes || hex::encode(Sha256::digest(&data)) != s.sha256 {
                return Err(bad(format!("segment {}: length or checksum mismatch", s.file)));
            }
            let reader = FileReader::try_new(std::io::Cursor::new(data), None)
                .map_err(|e| bad(format!("segment {}: {e}", s.file)))?;
            let mut rows = 0u64;
            for b in reader {
                let b = b.map_err(|e| bad(format!("segment {}: {e}", s.file)))?;
                if b.schema() != schema {
                    return Err(bad(format!("segment {}: another schema", s.file)));
                }
                rows += b.num_rows() as u64;
                batches.push(b);
            }
            if rows != s.rows {
                return Err(bad(format!(
                    "segment {}: {rows} rows, the checkpoint says {}",
                    s.file, s.rows
                )));
            }
        }
        tenants.insert(tenant, (t.segments, batches, t.views));
    }
    Ok(Some(Loaded {
        position: header.position,
        position_event_id: header.position_event_id,
        tenants,
    }))
}
