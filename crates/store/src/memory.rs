//! The in-memory backend: for tests, and the model the durable backends are
//! checked against in property tests. Nothing survives the process.

use crate::core::{Cursor, IdEntry, LogTables, Parts, apply_append, prepare};
use crate::subscription::{Hub, Subscription};
use crate::types::*;
use crate::{CommitHook, EventStore};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokenledger_domain::clock::{Clock, SystemClock};
use uuid::Uuid;

#[derive(Default)]
struct State {
    /// `events[i]` is at position `i + 1`.
    events: Vec<Arc<RecordedEvent>>,
    /// Per stream, the positions of its events by revision.
    streams: HashMap<StreamId, Vec<Position>>,
    ids: HashMap<(String, Uuid), IdEntry>,
    closed: bool,
}

impl State {
    fn cursor(&self) -> Cursor {
        Cursor {
            next_position: Position(self.events.len() as u64 + 1),
            last_recorded_at: self
                .events
                .last()
                .map_or(chrono::DateTime::UNIX_EPOCH, |e| e.recorded_at),
        }
    }
}

impl LogTables for State {
    fn stream_revision(&mut self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        Ok(self.streams.get(stream).map(|v| v.len() as u64 - 1))
    }

    fn event_id(&mut self, tenant: &str, id: Uuid) -> Result<Option<IdEntry>, StoreError> {
        Ok(self.ids.get(&(tenant.to_owned(), id)).copied())
    }

    fn event_at(&mut self, position: Position) -> Result<RecordedEvent, StoreError> {
        self.events
            .get((position.0 as usize).wrapping_sub(1))
            .map(|e| (**e).clone())
            .ok_or_else(|| StoreError::Storage(format!("no event at position {position}")))
    }

    fn insert(&mut self, e: &RecordedEvent, parts: &Parts) -> Result<(), StoreError> {
        let hash = parts.hash;
        debug_assert_eq!(e.position.0, self.events.len() as u64 + 1);
        self.streams
            .entry(StreamId::new(e.tenant.clone(), e.stream.clone()))
            .or_default()
            .push(e.position);
        self.ids.insert(
            (e.tenant.clone(), e.event_id),
            IdEntry {
                position: e.position,
                hash,
            },
        );
        self.events.push(Arc::new(e.clone()));
        Ok(())
    }
}

/// The in-memory event store. Cloning gives another handle to the same log.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    hub: Arc<Hub>,
    clock: Arc<dyn Clock>,
    guard: Arc<std::sync::RwLock<Option<Arc<dyn crate::AppendGuard>>>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store stamping `recorded_at` from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Arc::default(),
            hub: Arc::new(Hub::new()),
            clock,
            guard: Arc::default(),
        }
    }

    /// A new store over the same log, as a restarted process would see it:
    /// no hooks and no subscribers carried over, and open for appends again.
    pub fn restarted(&self) -> Self {
        self.lock().closed = false;
        Self {
            state: self.state.clone(),
            hub: Arc::new(Hub::new()),
            clock: self.clock.clone(),
            guard: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl EventStore for MemoryStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError> {
        let parts = prepare(&events)?;
        let mut state = self.lock();
        if state.closed {
            return Err(AppendError::Closed);
        }
        let mut cursor = state.cursor();
        let now = self.clock.now();
        let guard = self.guard.read().unwrap_or_else(|e| e.into_inner()).clone();
        let (result, recorded) = apply_append(
            &mut *state,
            &mut cursor,
            now,
            guard.as_deref(),
            stream,
            expected,
            events,
            &parts,
        )?;
        let start = state.events.len() - recorded.len();
        // Published under the lock so hooks and subscribers see position order.
        self.hub.publish(&state.events[start..]);
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Option<Vec<Arc<RecordedEvent>>>, StoreError> {
        let state = self.lock();
        Ok(state.streams.get(stream).map(|positions| {
            positions
                .iter()
                .skip(from.min(usize::MAX as u64) as usize)
                .take(limit)
                .map(|p| state.events[p.0 as usize - 1].clone())
                .collect()
        }))
    }

    async fn read_all(
        &self,
        from: Position,
        limit: usize,
        tenant: Option<&str>,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        let state = self.lock();
        let skip = from.0.saturating_sub(1).min(usize::MAX as u64) as usize;
        Ok(state
            .events
            .iter()
            .skip(skip)
            .filter(|e| tenant.is_none_or(|t| e.tenant == t))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn head(&self) -> Result<Position, StoreError> {
        Ok(Position(self.lock().events.len() as u64))
    }

    async fn subscribe_all(&self, after: Position) -> Result<Subscription, StoreError> {
        let live = self.hub.receiver()?;
        Ok(Subscription::new(Arc::new(self.clone()), live, after))
    }

    fn add_commit_hook(&self, hook: Arc<dyn CommitHook>) {
        self.hub.add_hook(hook);
    }

    fn set_guard(&self, guard: Arc<dyn crate::AppendGuard>) {
        *self.guard.write().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    }

    async fn close(&self) {
        self.lock().closed = true;
        self.hub.close();
    }
}
