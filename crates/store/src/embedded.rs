//! The embedded backend on `redb`: the default, with no server to install.
//!
//! One writer thread owns every write transaction. Concurrent appends queue
//! up while a commit is in flight and are then group-committed in one
//! durable (fsync'd) transaction; each is still checked against its own
//! expected revision, in arrival order, and answered on its own. An append
//! is acknowledged only after its transaction is durable and the commit
//! hooks have seen it, so an acknowledged append survives `kill -9` and
//! power loss.
//!
//! Tables:
//! * `events`: position → the [`RecordedEvent`] as JSON;
//! * `stream_index`: (tenant, stream, revision) → position;
//! * `event_ids`: (tenant, event id) → (position, content hash), the
//!   idempotency index, which survives restarts;
//! * `tenant_log`: (tenant, position) → (), for reading one tenant's `$all`.

use crate::core::{Cursor, IdEntry, LogTables, Parts, apply_append, prepare};
use crate::subscription::{Hub, Subscription};
use crate::types::*;
use crate::{CommitHook, EventStore};
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokenledger_domain::clock::{Clock, SystemClock};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const STREAM_INDEX: TableDefinition<(&str, &str, u64), u64> = TableDefinition::new("stream_index");
const EVENT_IDS: TableDefinition<(&str, u128), (u64, [u8; 32])> = TableDefinition::new("event_ids");
const TENANT_LOG: TableDefinition<(&str, u64), ()> = TableDefinition::new("tenant_log");

/// How to open a [`RedbStore`].
pub struct RedbOptions {
    /// The database file.
    pub path: PathBuf,
    /// Stamps `recorded_at`.
    pub clock: Arc<dyn Clock>,
    /// Most appends committed in one transaction.
    pub max_group: usize,
    /// Appends that may wait for the writer before callers wait to enqueue.
    pub queue: usize,
}

impl RedbOptions {
    /// Defaults for a database at `path`: system clock, groups of up to 1024
    /// appends, a queue of 16384.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            clock: Arc::new(SystemClock),
            max_group: 1024,
            queue: 16384,
        }
    }
}

struct Request {
    stream: StreamId,
    expected: ExpectedRevision,
    events: Vec<NewEvent>,
    parts: Vec<Parts>,
    reply: oneshot::Sender<Result<AppendResult, AppendError>>,
}

enum Msg {
    Append(Request),
    Close(oneshot::Sender<()>),
}

type GuardSlot = Arc<std::sync::RwLock<Option<Arc<dyn crate::AppendGuard>>>>;

struct Inner {
    db: Arc<Database>,
    hub: Arc<Hub>,
    guard: GuardSlot,
    queue: mpsc::Sender<Msg>,
    closed: AtomicBool,
}

/// The embedded event store on `redb`. Cloning gives another handle to the
/// same store.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

fn storage<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Storage(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the database and starts its writer thread.
    ///
    /// Errors: [`StoreError::Storage`] when the file cannot be opened, is
    /// locked by another process, or is corrupt.
    pub fn open(opts: RedbOptions) -> Result<Self, StoreError> {
        let db = Arc::new(Database::create(&opts.path).map_err(storage)?);
        {
            let txn = db.begin_write().map_err(storage)?;
            txn.open_table(EVENTS).map_err(storage)?;
            txn.open_table(STREAM_INDEX).map_err(storage)?;
            txn.open_table(EVENT_IDS).map_err(storage)?;
            txn.open_table(TENANT_LOG).map_err(storage)?;
            txn.commit().map_err(storage)?;
        }
        let cursor = read_cursor(&db)?;
        let hub = Arc::new(Hub::new());
        let guard = GuardSlot::default();
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let writer = Writer {
            db: db.clone(),
            hub: hub.clone(),
            guard: guard.clone(),
            clock: opts.clock,
            cursor,
            max_group: opts.max_group.max(1),
        };
        std::thread::Builder::new()
            .name("tokenledger-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(storage)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                hub,
                guard,
                queue: tx,
                closed: AtomicBool::new(false),
            }),
        })
    }

    fn read_txn(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.inner.db.begin_read().map_err(storage)
    }
}

fn read_cursor(db: &Database) -> Result<Cursor, StoreError> {
    let txn = db.begin_read().map_err(storage)?;
    let events = txn.open_table(EVENTS).map_err(storage)?;
    match events.last().map_err(storage)? {
        None => Ok(Cursor {
            next_position: Position::START.next(),
            last_recorded_at: chrono::DateTime::UNIX_EPOCH,
        }),
        Some((k, v)) => {
            let last = decode(v.value())?;
            Ok(Cursor {
                next_position: Position(k.value()).next(),
                last_recorded_at: last.recorded_at,
            })
        }
    }
}

fn decode(bytes: &[u8]) -> Result<RecordedEvent, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Storage(format!("corrupt event record: {e}")))
}

struct Writer {
    db: Arc<Database>,
    hub: Arc<Hub>,
    guard: GuardSlot,
    clock: Arc<dyn Clock>,
    cursor: Cursor,
    max_group: usize,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut closing = None;
        while closing.is_none() {
            let Some(first) = rx.blocking_recv() else { break };
            let mut group = Vec::new();
            match first {
                Msg::Append(r) => group.push(r),
                Msg::Close(done) => closing = Some(done),
            }
            while closing.is_none() && group.len() < self.max_group {
                match rx.try_recv() {
                    Ok(Msg::Append(r)) => group.push(r),
                    Ok(Msg::Close(done)) => closing = Some(done),
                    Err(_) => break,
                }
            }
            self.commit_segments(group);
        }
        rx.close();
        // Anything that raced the close is refused, not dropped silently.
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Append(r) => {
                    let _ = r.reply.send(Err(AppendError::Closed));
                }
                Msg::Close(done) => {
                    let _ = done.send(());
                }
            }
        }
        let Writer { db, hub, .. } = self;
        hub.close();
        // Release the database file before saying so, so it can be reopened at once.
        drop(db);
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    /// Commits a group in segments: a segment ends after an append that the
    /// guard calls a barrier, so the hooks have seen it before the next
    /// append is checked.
    fn commit_segments(&mut self, group: Vec<Request>) {
        let guard = self.guard.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut segment = Vec::new();
        for req in group {
            let barrier = guard
                .as_ref()
                .is_some_and(|g| req.events.iter().any(|e| g.is_barrier(&e.event_type)));
            segment.push(req);
            if barrier {
                self.commit_group(std::mem::take(&mut segment), guard.as_deref());
            }
        }
        if !segment.is_empty() {
            self.commit_group(segment, guard.as_deref());
        }
    }

    fn commit_group(&mut self, mut group: Vec<Request>, guard: Option<&dyn crate::AppendGuard>) {
        let before = self.cursor;
        match self.write_group(&mut group, guard) {
            Ok(outcomes) => {
                let mut committed: Vec<Arc<RecordedEvent>> = Vec::new();
                let mut replies = Vec::with_capacity(group.len());
                for (req, outcome) in group.into_iter().zip(outcomes) {
                    replies.push((
                        req.reply,
                        outcome.map(|(r, recs)| {
                            committed.extend(recs.into_iter().map(Arc::new));
                            r
                        }),
                    ));
                }
                self.hub.publish(&committed);
                for (reply, outcome) in replies {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, appends = group.len(), "group commit failed; nothing of it was written");
                self.cursor = before;
                for req in group {
                    let _ = req.reply.send(Err(AppendError::Storage(e.to_string())));
                }
            }
        }
    }

    /// Writes every append of the group that passes its checks in one
    /// transaction. `Err` means the transaction was not committed.
    #[allow(clippy::type_complexity)]
    fn write_group(
        &mut self,
        group: &mut [Request],
        guard: Option<&dyn crate::AppendGuard>,
    ) -> Result<Vec<Result<(AppendResult, Vec<RecordedEvent>), AppendError>>, StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let mut outcomes = Vec::with_capacity(group.len());
        {
            let mut tables = TxnTables {
                events: txn.open_table(EVENTS).map_err(storage)?,
                stream_index: txn.open_table(STREAM_INDEX).map_err(storage)?,
                event_ids: txn.open_table(EVENT_IDS).map_err(storage)?,
                tenant_log: txn.open_table(TENANT_LOG).map_err(storage)?,
            };
            let now = self.clock.now();
            for req in group.iter_mut() {
                let outcome = apply_append(
                    &mut tables,
                    &mut self.cursor,
                    now,
                    guard,
                    &req.stream,
                    req.expected,
                    std::mem::take(&mut req.events),
                    &req.parts,
                );
                if let Err(AppendError::Storage(e)) = outcome {
                    return Err(StoreError::Storage(e));
                }
                outcomes.push(outcome);
            }
        }
        if outcomes.iter().any(|o| matches!(o, Ok((r, _)) if r.written)) {
            txn.commit().map_err(storage)?;
        } else {
            txn.abort().map_err(storage)?;
        }
        Ok(outcomes)
    }
}

/// The stored form of a [`RecordedEvent`], with `data` and `metadata`
/// encoded before the writer saw them.
#[derive(serde::Serialize)]
struct RecordOut<'a> {
    event_id: Uuid,
    event_type: &'a str,
    tenant: &'a str,
    stream: &'a str,
    revision: u64,
    position: Position,
    recorded_at: chrono::DateTime<chrono::Utc>,
    data: &'a serde_json::value::RawValue,
    metadata: &'a serde_json::value::RawValue,
}

struct TxnTables<'t> {
    events: Table<'t, u64, &'static [u8]>,
    stream_index: Table<'t, (&'static str, &'static str, u64), u64>,
    event_ids: Table<'t, (&'static str, u128), (u64, [u8; 32])>,
    tenant_log: Table<'t, (&'static str, u64), ()>,
}

impl LogTables for TxnTables<'_> {
    fn stream_revision(&mut self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        let (t, s) = (stream.tenant.as_str(), stream.name.as_str());
        let last = self
            .stream_index
            .range((t, s, 0)..=(t, s, u64::MAX))
            .map_err(storage)?
            .next_back()
            .transpose()
            .map_err(storage)?;
        Ok(last.map(|(k, _)| k.value().2))
    }

    fn event_id(&mut self, tenant: &str, id: Uuid) -> Result<Option<IdEntry>, StoreError> {
        Ok(self.event_ids.get((tenant, id.as_u128())).map_err(storage)?.map(|g| {
            let (position, hash) = g.value();
            IdEntry {
                position: Position(position),
                hash,
            }
        }))
    }

    fn event_at(&mut self, position: Position) -> Result<RecordedEvent, StoreError> {
        let g = self
            .events
            .get(position.0)
            .map_err(storage)?
            .ok_or_else(|| StoreError::Storage(format!("no event at position {position}")))?;
        decode(g.value())
    }

    fn insert(&mut self, e: &RecordedEvent, parts: &Parts) -> Result<(), StoreError> {
        let record = RecordOut {
            event_id: e.event_id,
            event_type: &e.event_type,
            tenant: &e.tenant,
            stream: &e.stream,
            revision: e.revision,
            position: e.position,
            recorded_at: e.recorded_at,
            data: &parts.data,
            metadata: &parts.metadata,
        };
        let bytes = serde_json::to_vec(&record).map_err(storage)?;
        let (t, s) = (e.tenant.as_str(), e.stream.as_str());
        self.events.insert(e.position.0, bytes.as_slice()).map_err(storage)?;
        self.stream_index
            .insert((t, s, e.revision), e.position.0)
            .map_err(storage)?;
        self.event_ids
            .insert((t, e.event_id.as_u128()), (e.position.0, parts.hash))
            .map_err(storage)?;
        self.tenant_log.insert((t, e.position.0), ()).map_err(storage)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl EventStore for RedbStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(AppendError::Closed);
        }
        // Hashing and encoding happen here, in the appending task, so the
        // single writer thread does only what must be serialized.
        let parts = prepare(&events)?;
        let (reply, answer) = oneshot::channel();
        let req = Request {
            stream: stream.clone(),
            expected,
            events,
            parts,
            reply,
        };
        self.inner
            .queue
            .send(Msg::Append(req))
            .await
            .map_err(|_| AppendError::Closed)?;
        answer.await.map_err(|_| AppendError::Closed)?
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Option<Vec<Arc<RecordedEvent>>>, StoreError> {
        let txn = self.read_txn()?;
        let (t, s) = (stream.tenant.as_str(), stream.name.as_str());
        let index = txn.open_table(STREAM_INDEX).map_err(storage)?;
        if index
            .range((t, s, 0)..=(t, s, u64::MAX))
            .map_err(storage)?
            .next()
            .is_none()
        {
            return Ok(None);
        }
        let events = txn.open_table(EVENTS).map_err(storage)?;
        let mut out = Vec::new();
        for item in index
            .range((t, s, from)..=(t, s, u64::MAX))
            .map_err(storage)?
            .take(limit)
        {
            let (_, pos) = item.map_err(storage)?;
            let g = events
                .get(pos.value())
                .map_err(storage)?
                .ok_or_else(|| StoreError::Storage("stream index points at no event".into()))?;
            out.push(Arc::new(decode(g.value())?));
        }
        Ok(Some(out))
    }

    async fn read_all(
        &self,
        from: Position,
        limit: usize,
        tenant: Option<&str>,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        let txn = self.read_txn()?;
        let events = txn.open_table(EVENTS).map_err(storage)?;
        let mut out = Vec::new();
        match tenant {
            None => {
                for item in events.range(from.0..).map_err(storage)?.take(limit) {
                    let (_, v) = item.map_err(storage)?;
                    out.push(Arc::new(decode(v.value())?));
                }
            }
            Some(t) => {
                let log = txn.open_table(TENANT_LOG).map_err(storage)?;
                for item in log.range((t, from.0)..=(t, u64::MAX)).map_err(storage)?.take(limit) {
                    let (k, _) = item.map_err(storage)?;
                    let g = events
                        .get(k.value().1)
                        .map_err(storage)?
                        .ok_or_else(|| StoreError::Storage("tenant log points at no event".into()))?;
                    out.push(Arc::new(decode(g.value())?));
                }
            }
        }
        Ok(out)
    }

    async fn head(&self) -> Result<Position, StoreError> {
        let txn = self.read_txn()?;
        let events = txn.open_table(EVENTS).map_err(storage)?;
        Ok(events
            .last()
            .map_err(storage)?
            .map_or(Position::START, |(k, _)| Position(k.value())))
    }

    async fn subscribe_all(&self, after: Position) -> Result<Subscription, StoreError> {
        let live = self.inner.hub.receiver()?;
        Ok(Subscription::new(Arc::new(self.clone()), live, after))
    }

    fn add_commit_hook(&self, hook: Arc<dyn CommitHook>) {
        self.inner.hub.add_hook(hook);
    }

    fn set_guard(&self, guard: Arc<dyn crate::AppendGuard>) {
        *self.inner.guard.write().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    }

    async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let (done, wait) = oneshot::channel();
        if self.inner.queue.send(Msg::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}
