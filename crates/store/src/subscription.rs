//! Catch-up subscriptions to `$all`, and the hub through which a writer
//! pushes committed events to hooks and live subscribers.

use crate::types::*;
use crate::{CommitHook, EventStore};
use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use tokio::sync::broadcast;

/// Live events a slow subscriber may fall behind by before it goes back to
/// reading the log.
const LIVE_BUFFER: usize = 8192;
/// Events per catch-up read.
const CATCH_UP_PAGE: usize = 1024;

/// Where a writer publishes what it committed.
pub(crate) struct Hub {
    live: RwLock<Option<broadcast::Sender<Arc<RecordedEvent>>>>,
    hooks: RwLock<Vec<Arc<dyn CommitHook>>>,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Self {
            live: RwLock::new(Some(broadcast::channel(LIVE_BUFFER).0)),
            hooks: RwLock::new(Vec::new()),
        }
    }

    pub(crate) fn add_hook(&self, hook: Arc<dyn CommitHook>) {
        self.hooks.write().unwrap_or_else(|e| e.into_inner()).push(hook);
    }

    /// Hands committed events to the hooks, then to live subscribers. Called
    /// by the writer after the commit and before the appends are answered.
    pub(crate) fn publish(&self, events: &[Arc<RecordedEvent>]) {
        if events.is_empty() {
            return;
        }
        for h in self.hooks.read().unwrap_or_else(|e| e.into_inner()).iter() {
            h.committed(events);
        }
        if let Some(live) = &*self.live.read().unwrap_or_else(|e| e.into_inner()) {
            for e in events {
                // No receiver is not an error: nobody is subscribed.
                let _ = live.send(e.clone());
            }
        }
    }

    /// A receiver of live events, or `Closed` once the store is closed.
    pub(crate) fn receiver(&self) -> Result<broadcast::Receiver<Arc<RecordedEvent>>, StoreError> {
        match &*self.live.read().unwrap_or_else(|e| e.into_inner()) {
            Some(live) => Ok(live.subscribe()),
            None => Err(StoreError::Closed),
        }
    }

    /// Ends every live subscription once it has drained what was published.
    pub(crate) fn close(&self) {
        self.live.write().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// A catch-up subscription to `$all`: history from the log, then live
/// events pushed by the writer. Never skips and never repeats a position.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    live: broadcast::Receiver<Arc<RecordedEvent>>,
    last: Position,
    buffer: VecDeque<Arc<RecordedEvent>>,
    caught_up: bool,
}

impl Subscription {
    /// A subscription delivering events after `after`. `live` must be
    /// subscribed before the first catch-up read so nothing committed in
    /// between is missed.
    pub(crate) fn new(
        store: Arc<dyn EventStore>,
        live: broadcast::Receiver<Arc<RecordedEvent>>,
        after: Position,
    ) -> Self {
        Self {
            store,
            live,
            last: after,
            buffer: VecDeque::new(),
            caught_up: false,
        }
    }

    /// The position of the last event delivered (the checkpoint to resume from).
    pub fn checkpoint(&self) -> Position {
        self.last
    }

    /// Whether the subscription has reached the head of the log and is
    /// receiving live events.
    pub fn is_live(&self) -> bool {
        self.caught_up && self.buffer.is_empty()
    }

    /// The next event. Waits for the writer when caught up.
    ///
    /// Errors: [`StoreError::Closed`] when the store has shut down,
    /// [`StoreError::Storage`] when a catch-up read fails.
    pub async fn next(&mut self) -> Result<Arc<RecordedEvent>, StoreError> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.last = e.position;
                return Ok(e);
            }
            if !self.caught_up {
                let page = self.store.read_all(self.last.next(), CATCH_UP_PAGE, None).await?;
                if page.is_empty() {
                    self.caught_up = true;
                } else {
                    self.buffer.extend(page);
                }
                continue;
            }
            match self.live.recv().await {
                // Already delivered from the log during catch-up.
                Ok(e) if e.position <= self.last => continue,
                Ok(e) => {
                    self.last = e.position;
                    return Ok(e);
                }
                // Fell behind the live buffer: read the missed part from the log.
                Err(broadcast::error::RecvError::Lagged(_)) => self.caught_up = false,
                Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }
}
