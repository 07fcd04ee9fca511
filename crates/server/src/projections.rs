//! The projection runtime of the enforcement views: the registry
//! (tenants, principals, client policies) and every tenant's
//! [`TenantViews`] (tokens, block list, keys, issuers, cutoffs).
//!
//! * **Live.** [`Projections`] is the store's commit hook: it folds every
//!   committed batch into the registry and the views before the append is
//!   acknowledged (DESIGN.md "Enforcement is serialized with the log").
//! * **Checkpoints.** A snapshot of the registry and every tenant's views,
//!   with the position they reached (the checkpoint), is written to
//!   `<data-dir>/projections/views.snapshot`: every
//!   `snapshot_every_events` events or `snapshot_every_seconds` seconds (a
//!   background thread; the state is captured at one position under the
//!   fold lock, without copying, and serialized off the writer's path), and
//!   at a graceful shutdown, after the store has flushed.
//! * **Start.** [`Projections::catch_up`] restores the snapshot, if there is
//!   a usable one, and follows `$all` from the checkpoint through a catch-up
//!   subscription up to the head; then the server registers the hook.
//!   A snapshot that cannot be read, has an unknown format version, is
//!   beyond the head of the log, or whose checkpoint event is not the log's
//!   (another ledger's snapshot) is ignored with a warning: the views are
//!   then replayed from position 0.
//! * **Rebuild.** `tokenledger rebuild` ([`rebuild`]) folds `$all` from
//!   position 0 offline and writes a fresh snapshot; `--verify` first
//!   compares the rebuild with the snapshot the server wrote, at that
//!   snapshot's checkpoint.
//!
//! # Snapshot format (version 1)
//!
//! One header line of JSON, then the body:
//!
//! ```text
//! {"format":"tokenledger-views-snapshot","version":1,"checkpoint":1234,
//!  "checkpoint_event_id":"…","written_at":"2030-01-01T00:00:00Z",
//!  "body_bytes":5678,"body_sha256":"…"}\n
//! {"registry":{…},"tenants":{"acme":{…}}}
//! ```
//!
//! The body is JSON of [`RegistrySnapshot`] and one [`ViewsSnapshot`] per
//! tenant (tokens as arrays of interned symbols). Its length and SHA-256
//! are checked before it is parsed. The file holds principals' secret
//! hashes and sealed signing keys, so it is created with mode 0600 (the
//! directory 0700); it is written to a temporary file, fsynced, renamed
//! over the old one, and the directory is fsynced.

use crate::metrics::Metrics;
use crate::state::RegistryView;
use crate::tokens::LiveViews;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokenledger_domain::registry::{Registry, RegistrySnapshot};
use tokenledger_domain::views::{TenantViews, ViewsSnapshot, first_difference};
use tokenledger_store::{CommitHook, EventStore, Position, RecordedEvent, StoreError};
use uuid::Uuid;

/// The directory of the snapshot, inside the data directory.
pub const SNAPSHOT_DIR: &str = "projections";
/// The snapshot's file name.
pub const SNAPSHOT_FILE: &str = "views.snapshot";
/// The `format` of the header line.
pub const SNAPSHOT_FORMAT: &str = "tokenledger-views-snapshot";
/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 2;

/// `<data_dir>/projections/views.snapshot`.
pub fn snapshot_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SNAPSHOT_DIR).join(SNAPSHOT_FILE)
}

/// When snapshots are written.
#[derive(Debug, Clone)]
pub struct SnapshotPolicy {
    /// The snapshot file.
    pub path: PathBuf,
    /// Write one after this many events since the last (0: not by count).
    pub every_events: u64,
    /// Write one when this many seconds passed since the last and events
    /// came meanwhile (0: not by time).
    pub every_seconds: u64,
}

/// The header line of a snapshot file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    checkpoint: u64,
    checkpoint_event_id: Option<Uuid>,
    written_at: DateTime<Utc>,
    body_bytes: u64,
    body_sha256: String,
}

#[derive(Serialize)]
struct BodyOut<'a> {
    registry: RegistrySnapshot,
    tenants: BTreeMap<&'a str, ViewsSnapshot>,
}

#[derive(Deserialize)]
struct BodyIn {
    registry: RegistrySnapshot,
    tenants: BTreeMap<String, ViewsSnapshot>,
}

/// A snapshot as read from its file.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The position the state reached.
    pub checkpoint: u64,
    /// The id of the event at the checkpoint (`None` for an empty log).
    pub checkpoint_event_id: Option<Uuid>,
    /// When it was written, UTC.
    pub written_at: DateTime<Utc>,
    /// The registry.
    pub registry: Registry,
    /// Every tenant's views, sorted by tenant.
    pub tenants: Vec<(String, TenantViews)>,
}

impl Snapshot {
    /// The canonical JSON of the snapshot's state (see [`canonical`]).
    pub fn canonical(&self, tenant: Option<&str>) -> Value {
        canonical(
            self.checkpoint,
            &self.registry,
            self.tenants.iter().map(|(t, v)| (t.as_str(), v)),
            tenant,
        )
    }
}

/// Why a snapshot file was not used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotLoadError {
    /// It could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// It is not a snapshot of a format version this build reads, or is
    /// truncated or corrupt.
    #[error("{path} is not a usable snapshot: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Everything needed to write a snapshot at one position, taken without
/// copying the views.
struct Captured {
    checkpoint: u64,
    event_id: Option<Uuid>,
    registry: Registry,
    tenants: Vec<(String, Arc<TenantViews>)>,
}

/// The canonical JSON of a state at `checkpoint`: `{"checkpoint", "registry",
/// "tenants": {name: views}}`, every string resolved and every key sorted
/// ([`TenantViews::canonical`], [`Registry::canonical`]); restricted to one
/// tenant when `tenant` is given. A live state and a rebuilt one at the same
/// position give byte-identical text.
pub fn canonical<'a>(
    checkpoint: u64,
    registry: &Registry,
    tenants: impl IntoIterator<Item = (&'a str, &'a TenantViews)>,
    tenant: Option<&str>,
) -> Value {
    let views: BTreeMap<&str, Value> = tenants
        .into_iter()
        .filter(|(t, _)| tenant.is_none_or(|x| x == *t))
        .map(|(t, v)| (t, v.canonical()))
        .collect();
    tokenledger_domain::views::canonical_json(&json!({
        "checkpoint": checkpoint,
        "registry": registry.canonical(tenant),
        "tenants": views,
    }))
}

/// Writes a snapshot of `c` to `path`: a temporary file (mode 0600) is
/// written and fsynced, renamed over `path`, and the directory (created
/// with mode 0700 if absent) is fsynced. Returns the file's size in bytes.
fn write_file(path: &Path, c: &Captured) -> std::io::Result<u64> {
    let body = BodyOut {
        registry: c.registry.to_snapshot(),
        tenants: c.tenants.iter().map(|(t, v)| (t.as_str(), v.to_snapshot())).collect(),
    };
    let body = serde_json::to_vec(&body).map_err(std::io::Error::other)?;
    let header = Header {
        format: SNAPSHOT_FORMAT.into(),
        version: SNAPSHOT_VERSION,
        checkpoint: c.checkpoint,
        checkpoint_event_id: c.event_id,
        written_at: Utc::now(),
        body_bytes: body.len() as u64,
        body_sha256: hex::encode(Sha256::digest(&body)),
    };
    let mut header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    header.push(b'\n');
    tokenledger_store::files::write_private_file(path, &[&header, &body])?;
    Ok((header.len() + body.len()) as u64)
}

/// Reads the snapshot at `path`; `Ok(None)` when there is none.
///
/// Errors: [`SnapshotLoadError::Io`] when it cannot be read,
/// [`SnapshotLoadError::Invalid`] for another format or version, a
/// length or checksum mismatch (truncated or corrupt), or an inconsistent
/// state.
pub fn read_snapshot(path: &Path) -> Result<Option<Snapshot>, SnapshotLoadError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(SnapshotLoadError::Io {
                path: path.to_owned(),
                error,
            });
        }
    };
    let invalid = |reason: String| SnapshotLoadError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let split = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| invalid("no header line".into()))?;
    let header: Header = serde_json::from_slice(&bytes[..split]).map_err(|e| invalid(format!("header: {e}")))?;
    if header.format != SNAPSHOT_FORMAT {
        return Err(invalid(format!("format {:?}", header.format)));
    }
    if header.version != SNAPSHOT_VERSION {
        return Err(invalid(format!(
            "format version {} (this build reads version {SNAPSHOT_VERSION})",
            header.version
        )));
    }
    let body = &bytes[split + 1..];
    if body.len() as u64 != header.body_bytes {
        return Err(invalid(format!(
            "body is {} bytes, the header says {} (truncated?)",
            body.len(),
            header.body_bytes
        )));
    }
    if hex::encode(Sha256::digest(body)) != header.body_sha256 {
        return Err(invalid("body checksum mismatch (corrupt)".into()));
    }
    let body: BodyIn = serde_json::from_slice(body).map_err(|e| invalid(format!("body: {e}")))?;
    let mut tenants = Vec::with_capacity(body.tenants.len());
    for (t, v) in body.tenants {
        let v = TenantViews::from_snapshot(v).map_err(|e| invalid(format!("tenant {t:?}: {e}")))?;
        tenants.push((t, v));
    }
    Ok(Some(Snapshot {
        checkpoint: header.checkpoint,
        checkpoint_event_id: header.checkpoint_event_id,
        written_at: header.written_at,
        registry: Registry::from_snapshot(body.registry),
        tenants,
    }))
}

/// Where the fold is: the last event folded and how much came since the
/// last snapshot.
struct FoldState {
    last: u64,
    last_event_id: Option<Uuid>,
    since_snapshot: u64,
    last_snapshot: Instant,
}

struct Snapshots {
    policy: SnapshotPolicy,
    /// To the background writer; taken at shutdown.
    tx: Mutex<Option<SyncSender<Captured>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Serializes file writes; the checkpoint last written.
    written: Mutex<Option<u64>>,
}

/// What [`Projections::catch_up`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// The checkpoint of the snapshot the state was restored from, if any.
    pub restored_from: Option<u64>,
    /// Events folded from the log after it.
    pub replayed: u64,
    /// The head reached.
    pub head: Position,
}

/// The registry and the views of every tenant, folded together from the
/// log under one lock, with their checkpoint; optionally snapshotted.
pub struct Projections {
    registry: Arc<RegistryView>,
    views: Arc<LiveViews>,
    metrics: Arc<Metrics>,
    fold: Mutex<FoldState>,
    snapshots: OnceLock<Snapshots>,
}

impl Projections {
    /// Projections over `registry` and `views` (both empty), without
    /// snapshots.
    pub fn new(registry: Arc<RegistryView>, views: Arc<LiveViews>, metrics: Arc<Metrics>) -> Self {
        Self {
            registry,
            views,
            metrics,
            fold: Mutex::new(FoldState {
                last: 0,
                last_event_id: None,
                since_snapshot: 0,
                last_snapshot: Instant::now(),
            }),
            snapshots: OnceLock::new(),
        }
    }

    /// Enables snapshots at `policy.path` (call once, before
    /// [`Projections::catch_up`]; a second call is ignored). A background
    /// thread writes the periodic ones when either period is set.
    pub fn enable_snapshots(self: &Arc<Self>, policy: SnapshotPolicy) {
        let periodic = policy.every_events > 0 || policy.every_seconds > 0;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Captured>(1);
        let snapshots = Snapshots {
            policy,
            tx: Mutex::new(periodic.then_some(tx)),
            thread: Mutex::new(None),
            written: Mutex::new(None),
        };
        if self.snapshots.set(snapshots).is_err() {
            return;
        }
        if periodic {
            let me = Arc::downgrade(self);
            match std::thread::Builder::new()
                .name("tokenledger-snapshots".into())
                .spawn(move || snapshot_thread(me, rx))
            {
                Ok(h) => *lock(&self.snapshots.get().expect("just set").thread) = Some(h),
                Err(e) => {
                    tracing::error!(error = %e, "could not start the snapshot thread; snapshots only at shutdown")
                }
            }
        }
    }

    /// The snapshot file, when snapshots are enabled.
    pub fn snapshot_path(&self) -> Option<&Path> {
        self.snapshots.get().map(|s| s.policy.path.as_path())
    }

    /// The position of the last event folded.
    pub fn checkpoint(&self) -> u64 {
        lock(&self.fold).last
    }

    /// Folds one event into the registry and the views.
    pub fn fold_one(&self, e: &RecordedEvent) {
        let mut st = lock(&self.fold);
        self.fold_locked(&mut st, e);
    }

    fn fold_locked(&self, st: &mut FoldState, e: &RecordedEvent) {
        self.registry.apply(e);
        self.views.apply(e);
        st.last = e.position.0;
        st.last_event_id = Some(e.event_id);
        st.since_snapshot += 1;
    }

    fn capture_locked(&self, st: &FoldState) -> Captured {
        let (_, tenants) = self.views.capture();
        Captured {
            checkpoint: st.last,
            event_id: st.last_event_id,
            registry: self.registry.read().clone(),
            tenants,
        }
    }

    /// The canonical JSON of the current state (see [`canonical`]).
    pub fn canonical(&self, tenant: Option<&str>) -> Value {
        let c = {
            let st = lock(&self.fold);
            self.capture_locked(&st)
        };
        canonical(
            c.checkpoint,
            &c.registry,
            c.tenants.iter().map(|(t, v)| (t.as_str(), &**v)),
            tenant,
        )
    }

    /// Restores the snapshot, if snapshots are enabled and it is usable
    /// (see the module docs), then folds `$all` after its checkpoint (from
    /// position 0 without one) through a catch-up subscription up to the
    /// head. Call once, before the hook is registered and before any append.
    ///
    /// Errors: [`StoreError`] when the log cannot be read.
    pub async fn catch_up(&self, store: &Arc<dyn EventStore>) -> Result<CatchUp, StoreError> {
        let t0 = Instant::now();
        let head = store.head().await?;
        let restored_from = match self.snapshots.get() {
            Some(s) => self.restore(store, &s.policy.path, head).await?,
            None => None,
        };
        let from = Position(restored_from.unwrap_or(0));
        let mut replayed = 0u64;
        if head > from {
            let mut sub = store.subscribe_all(from).await?;
            loop {
                let e = sub.next().await?;
                self.fold_one(&e);
                replayed += 1;
                if e.position >= head {
                    break;
                }
            }
        }
        if let Some(s) = self.snapshots.get() {
            // What the snapshot holds is not owed to the next one.
            let mut st = lock(&self.fold);
            st.since_snapshot = replayed;
            st.last_snapshot = Instant::now();
            let mut written = lock(&s.written);
            *written = (*written).max(restored_from);
        }
        self.metrics
            .projection_restored_checkpoint
            .set(restored_from.unwrap_or(0) as i64);
        self.metrics.projection_replayed_events.set(replayed as i64);
        let secs = t0.elapsed().as_secs_f64();
        match restored_from {
            Some(cp) => tracing::info!(
                checkpoint = cp,
                replayed,
                head = head.0,
                seconds = secs,
                "views restored from the snapshot at checkpoint {cp} and caught up: {replayed} events replayed"
            ),
            None => tracing::info!(
                replayed,
                head = head.0,
                seconds = secs,
                "views replayed from position 0: {replayed} events"
            ),
        }
        Ok(CatchUp {
            restored_from,
            replayed,
            head,
        })
    }

    /// Loads and checks the snapshot; restores it and returns its
    /// checkpoint, or `None` (with a warning) when it is absent or unusable.
    async fn restore(
        &self,
        store: &Arc<dyn EventStore>,
        path: &Path,
        head: Position,
    ) -> Result<Option<u64>, StoreError> {
        let owned = path.to_owned();
        let read = tokio::task::spawn_blocking(move || read_snapshot(&owned))
            .await
            .unwrap_or_else(|e| {
                Err(SnapshotLoadError::Invalid {
                    path: path.to_owned(),
                    reason: format!("reading it failed: {e}"),
                })
            });
        let snap = match read {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::info!(path = %path.display(), "no views snapshot; replaying the log from position 0");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(error = %e, "views snapshot ignored; replaying the log from position 0");
                return Ok(None);
            }
        };
        if snap.checkpoint > head.0 {
            tracing::warn!(
                path = %path.display(),
                checkpoint = snap.checkpoint,
                head = head.0,
                "views snapshot is beyond the head of the log (a restored older ledger?); ignored, replaying the log from position 0"
            );
            return Ok(None);
        }
        if snap.checkpoint > 0 {
            let at = store.read_all(Position(snap.checkpoint), 1, None).await?;
            let matches = at
                .first()
                .is_some_and(|e| e.position.0 == snap.checkpoint && Some(e.event_id) == snap.checkpoint_event_id);
            if !matches {
                tracing::warn!(
                    path = %path.display(),
                    checkpoint = snap.checkpoint,
                    "views snapshot does not match this log (its checkpoint event differs); ignored, replaying the log from position 0"
                );
                return Ok(None);
            }
        }
        self.registry.replace(snap.registry);
        self.views.restore(snap.checkpoint, snap.tenants);
        let mut st = lock(&self.fold);
        st.last = snap.checkpoint;
        st.last_event_id = snap.checkpoint_event_id;
        Ok(Some(snap.checkpoint))
    }

    /// Captures the state now and writes it, if snapshots are enabled and
    /// it is newer than the last snapshot written. Blocking. Returns the
    /// checkpoint written, `None` when nothing was written.
    ///
    /// Errors: the I/O error of the write (also counted and logged).
    pub fn write_snapshot_now(&self) -> std::io::Result<Option<u64>> {
        let Some(s) = self.snapshots.get() else { return Ok(None) };
        let c = {
            let mut st = lock(&self.fold);
            st.since_snapshot = 0;
            st.last_snapshot = Instant::now();
            self.capture_locked(&st)
        };
        self.write(s, c)
    }

    fn write(&self, s: &Snapshots, c: Captured) -> std::io::Result<Option<u64>> {
        let mut written = lock(&s.written);
        if written.is_some_and(|w| w >= c.checkpoint) {
            return Ok(None);
        }
        let t0 = Instant::now();
        match write_file(&s.policy.path, &c) {
            Ok(bytes) => {
                *written = Some(c.checkpoint);
                self.metrics.projection_checkpoint.set(c.checkpoint as i64);
                tracing::info!(
                    checkpoint = c.checkpoint,
                    bytes,
                    seconds = t0.elapsed().as_secs_f64(),
                    path = %s.policy.path.display(),
                    "views snapshot written"
                );
                Ok(Some(c.checkpoint))
            }
            Err(e) => {
                self.metrics.projection_snapshot_failures.inc();
                tracing::warn!(error = %e, path = %s.policy.path.display(), "views snapshot not written");
                Err(e)
            }
        }
    }

    /// At a graceful shutdown, after the store has flushed (no fold runs any
    /// more): stops the background writer and writes the final snapshot.
    /// Blocking; a failure is logged.
    pub fn shutdown(&self) {
        let Some(s) = self.snapshots.get() else { return };
        drop(lock(&s.tx).take());
        if let Some(h) = lock(&s.thread).take() {
            let _ = h.join();
        }
        let _ = self.write_snapshot_now();
    }

    /// Sends a capture to the background writer when a period is due.
    /// Called with the fold lock held, after a batch.
    fn maybe_snapshot(&self, st: &mut FoldState) {
        let Some(s) = self.snapshots.get() else { return };
        if st.since_snapshot == 0 {
            return;
        }
        let p = &s.policy;
        let by_count = p.every_events > 0 && st.since_snapshot >= p.every_events;
        let by_time = p.every_seconds > 0 && st.last_snapshot.elapsed() >= Duration::from_secs(p.every_seconds);
        if !by_count && !by_time {
            return;
        }
        let tx = lock(&s.tx);
        let Some(tx) = tx.as_ref() else { return };
        match tx.try_send(self.capture_locked(st)) {
            Ok(()) => {
                st.since_snapshot = 0;
                st.last_snapshot = Instant::now();
            }
            // A write is in progress: the next batch tries again.
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl CommitHook for Projections {
    fn committed(&self, events: &[Arc<RecordedEvent>]) {
        let mut st = lock(&self.fold);
        for e in events {
            self.fold_locked(&mut st, e);
        }
        self.maybe_snapshot(&mut st);
    }
}

/// The background writer: writes what the hook sends, and every second
/// checks the time period. Ends when the projections are dropped or shut
/// down.
fn snapshot_thread(me: Weak<Projections>, rx: Receiver<Captured>) {
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(c) => {
                let Some(p) = me.upgrade() else { return };
                if let Some(s) = p.snapshots.get() {
                    let _ = p.write(s, c);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let Some(p) = me.upgrade() else { return };
                let Some(s) = p.snapshots.get() else { return };
                let c = {
                    let mut st = lock(&p.fold);
                    let due = s.policy.every_seconds > 0
                        && st.since_snapshot > 0
                        && st.last_snapshot.elapsed() >= Duration::from_secs(s.policy.every_seconds);
                    if !due {
                        continue;
                    }
                    st.since_snapshot = 0;
                    st.last_snapshot = Instant::now();
                    p.capture_locked(&st)
                };
                let _ = p.write(s, c);
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Arguments of `tokenledger rebuild`: an operator command, run with the
/// server stopped.
#[derive(Debug, Clone, clap::Args)]
pub struct RebuildArgs {
    /// The data directory of the stopped server (its ledger.redb).
    #[arg(long, env = "TOKENLEDGER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// First load the snapshot the server wrote and compare it with the
    /// rebuild at the snapshot's checkpoint; exit 1 at the first difference.
    #[arg(long)]
    pub verify: bool,
    /// Write the canonical JSON of the rebuilt views (at the head) to FILE.
    #[arg(long, value_name = "FILE")]
    pub dump: Option<PathBuf>,
    /// Restrict --verify and --dump to one tenant.
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
}

/// The outcome of `--verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The snapshot's state equals the rebuild at its checkpoint.
    Equal {
        /// The snapshot's checkpoint.
        checkpoint: u64,
    },
    /// They differ; `path` is the first differing JSON path of the
    /// canonical forms (`/tenants/acme/tokens/…`).
    Differs {
        /// The snapshot's checkpoint.
        checkpoint: u64,
        /// The first difference.
        path: String,
    },
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    /// Events folded, from position 0 to the head.
    pub events: u64,
    /// Seconds the fold took (reading and folding, not the snapshot write).
    pub seconds: f64,
    /// The head reached: the new snapshot's checkpoint.
    pub head: u64,
    /// The outcome of `--verify`, if asked.
    pub verified: Option<Verified>,
    /// The snapshot written.
    pub snapshot: PathBuf,
}

/// Why a rebuild failed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// There is no ledger in the data directory.
    #[error("no ledger at {0}: give the data directory of a tokenledger server (--data-dir)")]
    NoLedger(PathBuf),
    /// The ledger could not be opened: in use by a running server, or unreadable.
    #[error("cannot open the ledger {path}: {error} (is the server still running? stop it before a rebuild)")]
    Open {
        /// The ledger file.
        path: PathBuf,
        /// The store's error.
        error: StoreError,
    },
    /// Reading the log failed.
    #[error("reading the log: {0}")]
    Store(#[from] StoreError),
    /// `--verify` found no snapshot, or an unusable one.
    #[error("--verify: {0}")]
    Snapshot(String),
    /// The analytics checkpoint could not be removed after the rebuild.
    #[error("{0}")]
    Analytics(String),
    /// Writing the snapshot or the dump failed.
    #[error("{0}")]
    Io(String),
}

/// `tokenledger rebuild`: opens the ledger of the stopped server at
/// `args.data_dir`, folds `$all` from position 0 into fresh views, and
/// writes a fresh snapshot; `--verify` and `--dump` as in [`RebuildArgs`].
/// The analytics projection's checkpoint (`<data-dir>/analytics`) is
/// removed, so the SQL tables are refolded from position 0 at the next
/// start.
/// A verification that finds a difference still writes the rebuilt
/// snapshot (the log is the truth) and keeps the differing one as
/// `views.snapshot.mismatch`.
///
/// Errors: [`RebuildError`].
pub async fn rebuild(args: &RebuildArgs) -> Result<RebuildReport, RebuildError> {
    let ledger = args.data_dir.join(crate::serve::LEDGER_FILE);
    if !ledger.is_file() {
        return Err(RebuildError::NoLedger(ledger));
    }
    let store = tokenledger_store::RedbStore::open(tokenledger_store::RedbOptions::new(ledger.clone()))
        .map_err(|error| RebuildError::Open { path: ledger, error })?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    let result = rebuild_on(&store, &snapshot_path(&args.data_dir), args).await;
    store.close().await;
    if result.is_ok() {
        // The analytics projection refolds from position 0 at the next
        // start too: a rebuild leaves no derived state behind.
        let analytics = args.data_dir.join(crate::serve::ANALYTICS_DIR);
        match std::fs::remove_dir_all(&analytics) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RebuildError::Analytics(format!(
                    "cannot remove the analytics checkpoint {}: {e}",
                    analytics.display()
                )));
            }
        }
    }
    result
}

/// [`rebuild`] over an open store, with the snapshot at `snapshot`.
///
/// Errors: [`RebuildError`].
pub async fn rebuild_on(
    store: &Arc<dyn EventStore>,
    snapshot: &Path,
    args: &RebuildArgs,
) -> Result<RebuildReport, RebuildError> {
    let tenant = args.tenant.as_deref();
    let existing = if args.verify {
        match read_snapshot(snapshot) {
            Ok(Some(s)) => Some(s),
            Ok(None) => {
                return Err(RebuildError::Snapshot(format!(
                    "there is no snapshot at {} to verify",
                    snapshot.display()
                )));
            }
            Err(e) => return Err(RebuildError::Snapshot(e.to_string())),
        }
    } else {
        None
    };
    let proj = Arc::new(Projections::new(
        Arc::default(),
        Arc::default(),
        Arc::new(Metrics::default()),
    ));
    proj.enable_snapshots(SnapshotPolicy {
        path: snapshot.to_owned(),
        every_events: 0,
        every_seconds: 0,
    });
    let mut verified: Option<Verified> = None;
    let compare = |proj: &Projections, s: &Snapshot| -> Verified {
        let rebuilt = proj.canonical(tenant);
        let mut path = first_difference(&s.canonical(tenant), &rebuilt);
        if path.is_none() && lock(&proj.fold).last_event_id != s.checkpoint_event_id {
            path = Some("/checkpoint (the event at the checkpoint differs)".into());
        }
        match path {
            None => Verified::Equal {
                checkpoint: s.checkpoint,
            },
            Some(path) => Verified::Differs {
                checkpoint: s.checkpoint,
                path,
            },
        }
    };
    if let Some(s) = &existing
        && s.checkpoint == 0
    {
        verified = Some(compare(&proj, s));
    }
    let t0 = Instant::now();
    let mut events = 0u64;
    let mut from = Position::START.next();
    loop {
        let page = store.read_all(from, 8192, None).await?;
        let Some(last) = page.last() else { break };
        from = last.position.next();
        for e in &page {
            proj.fold_one(e);
            events += 1;
            if let Some(s) = &existing
                && e.position.0 == s.checkpoint
            {
                verified = Some(compare(&proj, s));
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let head = proj.checkpoint();
    if let Some(s) = &existing
        && verified.is_none()
    {
        verified = Some(Verified::Differs {
            checkpoint: s.checkpoint,
            path: format!(
                "/checkpoint (the snapshot's checkpoint {} is beyond the head {head})",
                s.checkpoint
            ),
        });
    }
    if matches!(verified, Some(Verified::Differs { .. })) {
        let mut aside = snapshot.as_os_str().to_owned();
        aside.push(".mismatch");
        std::fs::rename(snapshot, &aside)
            .map_err(|e| RebuildError::Io(format!("keeping the differing snapshot aside: {e}")))?;
    }
    // Not skipped even when the old snapshot is at the same checkpoint:
    // the rebuild replaces it.
    *lock(&proj.snapshots.get().expect("enabled above").written) = None;
    proj.write_snapshot_now()
        .map_err(|e| RebuildError::Io(format!("writing the snapshot {}: {e}", snapshot.display())))?;
    if let Some(dump) = &args.dump {
        let text =
            serde_json::to_string_pretty(&proj.canonical(tenant)).map_err(|e| RebuildError::Io(e.to_string()))?;
        std::fs::write(dump, text + "\n")
            .map_err(|e| RebuildError::Io(format!("writing the dump {}: {e}", dump.display())))?;
    }
    Ok(RebuildReport {
        events,
        seconds,
        head,
        verified,
        snapshot: snapshot.to_owned(),
    })
}

/// The `tokenledger rebuild` command: runs [`rebuild`], prints what it did
/// (events, seconds, events/s) and exits 0; 1 when it failed or `--verify`
/// found a difference (the first differing path is printed).
pub fn rebuild_command(args: RebuildArgs) -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokenledger rebuild: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(rebuild(&args)) {
        Ok(r) => {
            let rate = if r.seconds > 0.0 {
                r.events as f64 / r.seconds
            } else {
                0.0
            };
            println!(
                "rebuilt the views from {} events in {:.3} s ({:.0} events/s); checkpoint {}; snapshot {}",
                r.events,
                r.seconds,
                rate,
                r.head,
                r.snapshot.display()
            );
            if let Some(d) = &args.dump {
                println!("canonical views written to {}", d.display());
            }
            match r.verified {
                Some(Verified::Equal { checkpoint }) => {
                    println!("verified: the server's snapshot at checkpoint {checkpoint} equals the rebuild");
                    std::process::ExitCode::SUCCESS
                }
                Some(Verified::Differs { checkpoint, path }) => {
                    println!(
                        "MISMATCH: the server's snapshot at checkpoint {checkpoint} differs from the rebuild; \
                         first difference at {path} (the old snapshot is kept as {}.mismatch)",
                        r.snapshot.display()
                    );
                    std::process::ExitCode::FAILURE
                }
                None => std::process::ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("tokenledger rebuild: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
