//! The event store: one [`EventStore`] trait with KurrentDB semantics, the
//! embedded [`RedbStore`] (the default, no server to install), the
//! [`MemoryStore`] used by tests and as the model in property tests, and the
//! [`conformance`] suite every backend runs unchanged.
//!
//! Semantics follow KurrentDB: an append names the stream and an
//! [`ExpectedRevision`]; `event_id` is the idempotency key (the same ids to
//! the same stream return the original result and write nothing); `$all`
//! orders every event by an opaque, increasing [`Position`]; a catch-up
//! subscription delivers history and then live events pushed by the writer.
//!
//! Every stream and event id lives inside a tenant: the same stream name or
//! event id in two tenants are two unrelated things.
//!
//! ```
//! # tokio_test_block(async {
//! use tokenledger_store::{EventStore, ExpectedRevision, MemoryStore, NewEvent, StreamId};
//! let store = MemoryStore::new();
//! let stream = StreamId::new("acme", "token-1");
//! let ev = NewEvent::new(uuid::Uuid::new_v4(), "TokenRevoked",
//!     serde_json::json!({"token_id": "1", "reason": "test"}), serde_json::json!({}));
//! let res = store.append(&stream, ExpectedRevision::NoStream, vec![ev]).await.unwrap();
//! assert_eq!(res.next_expected_revision, 0);
//! # });
//! # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

pub mod conformance;
mod core;
mod embedded;
pub mod files;
mod memory;
mod subscription;
mod types;

pub use embedded::{RedbOptions, RedbStore};
pub use memory::MemoryStore;
pub use subscription::Subscription;
pub use types::*;

use std::sync::Arc;

/// An event store with KurrentDB semantics. Backends: [`RedbStore`],
/// [`MemoryStore`]; all pass [`conformance`].
#[async_trait::async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if its revision matches `expected`.
    ///
    /// The writer stamps `recorded_at` (UTC, non-decreasing by position) and
    /// the positions. Returns once the events are durable (for a durable
    /// backend) and every [`CommitHook`] has seen them. If every event id is
    /// already in the tenant, in this stream, with the same content, returns
    /// the original result and writes nothing (`written: false`).
    ///
    /// Errors: [`AppendError::WrongExpectedRevision`] naming the actual
    /// revision; [`AppendError::IdempotencyConflict`] when a known id comes
    /// with other content or stream; [`AppendError::DuplicateEventId`] for a
    /// batch that repeats an id; [`AppendError::Storage`] /
    /// [`AppendError::Closed`] when nothing could be written.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError>;

    /// Reads a stream forwards from revision `from`, at most `limit` events.
    /// `Ok(None)` when the stream does not exist.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Option<Vec<Arc<RecordedEvent>>>, StoreError>;

    /// Reads `$all` forwards from `from` (inclusive), at most `limit` events,
    /// only the events of `tenant` when one is given.
    async fn read_all(
        &self,
        from: Position,
        limit: usize,
        tenant: Option<&str>,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError>;

    /// The position of the last committed event ([`Position::START`] when
    /// the log is empty).
    async fn head(&self) -> Result<Position, StoreError>;

    /// A catch-up subscription to `$all` delivering every event after
    /// `after` (exclusive; [`Position::START`] for everything), first from
    /// the log, then live as the writer commits, in position order, with no
    /// gap and no duplicate at the hand-over.
    async fn subscribe_all(&self, after: Position) -> Result<Subscription, StoreError>;

    /// Registers a hook that sees every committed batch before its appends
    /// are acknowledged. In-memory views that must never be behind an
    /// acknowledged write (principals, block list, cutoffs) use it.
    fn add_commit_hook(&self, hook: Arc<dyn CommitHook>);

    /// Sets the guard the writer consults before each append (DESIGN.md
    /// "Enforcement is serialized with the log"). At most one; a second
    /// call replaces the first.
    fn set_guard(&self, guard: Arc<dyn AppendGuard>);

    /// Stops accepting appends, commits everything already queued and waits
    /// for the writer to finish. Appends after this fail with
    /// [`AppendError::Closed`].
    async fn close(&self);
}

/// Refuses appends inside the writer, serialized with the log: a guard sees
/// the state the commit hooks built from every event committed before the
/// append, and nothing committed after it.
pub trait AppendGuard: Send + Sync + 'static {
    /// Whether committing an event of this type can change what `check`
    /// answers. The writer commits (and runs the hooks for) such an append
    /// before it checks the next one, so a group commit never lets an append
    /// slip past a refusal that an earlier append in the same group caused.
    fn is_barrier(&self, event_type: &str) -> bool;

    /// Refuses an append with a reason; called after the idempotency check
    /// (a retry of a committed append is never refused) and before the
    /// expected-revision check.
    fn check(&self, stream: &StreamId, events: &[NewEvent]) -> Result<(), Rejection>;
}

/// Why a guard refused an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// A stable kind, e.g. `parent-revoked` or `minting-cutoff`.
    pub kind: String,
    /// What was refused and why.
    pub detail: String,
    /// Extra members for the answer, e.g. the cutoff id.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Sees committed events, in position order, before their appends are
/// acknowledged. Must be fast and must not call back into the store.
pub trait CommitHook: Send + Sync + 'static {
    /// Called once per committed group of events.
    fn committed(&self, events: &[Arc<RecordedEvent>]);
}
