//! The analytics projection's checkpoints: a restart resumes from the
//! checkpoint (not from position 0) and ends in exactly the state of a fold
//! of the whole log; a checkpoint that does not check out is ignored and
//! the log folded from position 0.

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokenledger_analytics::arrow::compute::concat_batches;
use tokenledger_analytics::{Analytics, CheckpointPolicy, Limits};
use tokenledger_domain::clock::ManualClock;
use tokenledger_store::{EventStore, ExpectedRevision, MemoryStore, NewEvent, Position, StreamId};

const NOW: &str = "2026-03-03T09:45:00Z";

fn no_kid(_: &str) -> Option<String> {
    None
}

/// The SQL fixture's events as lines: (tenant, stream, type, data, metadata, recorded_at).
fn fixture() -> Vec<(String, String, String, Value, Value, DateTime<Utc>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixture/events.jsonl");
    std::fs::read_to_string(path)
        .expect("fixture")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("fixture line");
            let s = |k: &str| v[k].as_str().expect(k).to_owned();
            (
                s("tenant"),
                s("stream"),
                s("event_type"),
                v["data"].clone(),
                v["metadata"].clone(),
                s("recorded_at").parse().expect("recorded_at"),
            )
        })
        .collect()
}

/// A store and its clock; events are appended at their fixture times.
struct Log {
    store: Arc<dyn EventStore>,
    clock: Arc<ManualClock>,
}

impl Log {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new("2026-03-01T00:00:00Z".parse().unwrap()));
        Self {
            store: Arc::new(MemoryStore::with_clock(clock.clone())),
            clock,
        }
    }

    /// Appends fixture lines `from..to` (event ids derived from `salt`).
    async fn append(&self, from: usize, to: usize, salt: u128) {
        for (i, (tenant, stream, ty, data, meta, at)) in fixture().into_iter().enumerate().take(to).skip(from) {
            self.clock.set(at);
            let e = NewEvent::new(uuid::Uuid::from_u128(salt + i as u128), ty, data, meta);
            self.store
                .append(&StreamId::new(tenant, stream), ExpectedRevision::Any, vec![e])
                .await
                .expect("append");
        }
    }
}

fn policy(dir: &Path) -> CheckpointPolicy {
    CheckpointPolicy {
        dir: dir.to_owned(),
        every_events: 0,
        every_seconds: 0,
    }
}

/// A projection over `log` with checkpoints in `dir`: restored, then
/// following; returns it with the position it restored from.
async fn start(log: &Log, dir: Option<&Path>) -> (Arc<Analytics>, Position) {
    let a = Arc::new(Analytics::new(no_kid, Limits::default(), 2));
    if let Some(d) = dir {
        a.enable_checkpoints(policy(d));
    }
    let from = a.restore(&log.store).await.expect("restore");
    tokio::spawn(a.clone().follow(log.store.clone(), from));
    let head = log.store.head().await.unwrap();
    assert!(a.wait_for(head.0, Duration::from_secs(20)).await, "caught up");
    (a, from)
}

/// Every table of `tenant`, each concatenated into one batch (batch
/// boundaries differ between a restored and a fresh projection).
fn tables(a: &Analytics, tenant: &str) -> Vec<(&'static str, tokenledger_analytics::arrow::record_batch::RecordBatch)> {
    let snap = a.snapshot(tenant, NOW.parse().unwrap());
    snap.tables
        .into_iter()
        .map(|(name, schema, batches)| (name, concat_batches(&schema, &batches).expect("concat")))
        .collect()
}

fn assert_same(a: &Analytics, b: &Analytics) {
    assert_eq!(a.position(), b.position());
    for tenant in ["acme", "globex", "nobody"] {
        let (x, y) = (tables(a, tenant), tables(b, tenant));
        assert_eq!(x.len(), y.len());
        for ((n, bx), (_, by)) in x.iter().zip(&y) {
            assert_eq!(bx, by, "tenant {tenant}, table {n}");
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_restart_resumes_from_the_checkpoint_and_equals_a_fold_of_the_whole_log() {
    let n = fixture().len();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new();
    log.append(0, n / 2, 0x1000).await;

    let (first, from) = start(&log, Some(dir.path())).await;
    assert_eq!(from, Position::START, "no checkpoint yet");
    let cp = first.write_checkpoint().unwrap().expect("a checkpoint");
    assert_eq!(cp, (n / 2) as u64);
    assert_eq!(first.write_checkpoint().unwrap(), None, "nothing new since");

    // The rest of the history comes while the first projection is gone.
    log.append(n / 2, n, 0x1000).await;
    let (second, from) = start(&log, Some(dir.path())).await;
    assert_eq!(from, Position(cp), "resumed from the checkpoint, not from 0");
    let (full, _) = start(&log, None).await;
    assert_same(&second, &full);

    // A second checkpoint and restart: still equal, and the directory holds
    // the checkpoint and the segments it lists, nothing else.
    let cp2 = second.write_checkpoint().unwrap().expect("a second checkpoint");
    assert_eq!(cp2, n as u64);
    let (third, from) = start(&log, Some(dir.path())).await;
    assert_eq!(from, Position(cp2));
    assert_same(&third, &full);
    let body = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
    for f in files(dir.path()) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name == "checkpoint" || body.contains(&format!("\"{name}\"")),
            "{name} is not listed by the checkpoint"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
    }
}

#[tokio::test]
async fn a_corrupt_segment_is_ignored_and_the_log_folded_from_position_0() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new();
    log.append(0, fixture().len(), 0x1000).await;
    let (a, _) = start(&log, Some(dir.path())).await;
    a.write_checkpoint().unwrap().expect("a checkpoint");
    let seg = files(dir.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "arrow"))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&seg, bytes).unwrap();

    let (b, from) = start(&log, Some(dir.path())).await;
    assert_eq!(from, Position::START);
    let (full, _) = start(&log, None).await;
    assert_same(&b, &full);
}

#[tokio::test]
async fn a_truncated_checkpoint_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new();
    log.append(0, fixture().len(), 0x1000).await;
    let (a, _) = start(&log, Some(dir.path())).await;
    a.write_checkpoint().unwrap().expect("a checkpoint");
    let path = dir.path().join("checkpoint");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let (b, from) = start(&log, Some(dir.path())).await;
    assert_eq!(from, Position::START);
    let (full, _) = start(&log, None).await;
    assert_same(&b, &full);
}

#[tokio::test]
async fn another_logs_checkpoint_is_ignored() {
    let n = fixture().len();
    let dir = tempfile::tempdir().unwrap();
    // The checkpoint of a log whose events have other ids.
    let other = Log::new();
    other.append(0, n, 0x9000).await;
    let (a, _) = start(&other, Some(dir.path())).await;
    a.write_checkpoint().unwrap().expect("a checkpoint");

    let log = Log::new();
    log.append(0, n, 0x1000).await;
    let (b, from) = start(&log, Some(dir.path())).await;
    assert_eq!(from, Position::START, "checkpoint of another log");
    let (full, _) = start(&log, None).await;
    assert_same(&b, &full);

    // And one beyond the head of a shorter log (a restored older ledger).
    let short = Log::new();
    short.append(0, n / 3, 0x9000).await;
    let (c, from) = start(&short, Some(dir.path())).await;
    assert_eq!(from, Position::START, "checkpoint beyond the head");
    assert_eq!(c.position(), (n / 3) as u64);
}
