//! The analytics projection and the SQL engine over it.
//!
//! [`Analytics`] follows `$all` (a catch-up subscription, see
//! [`Analytics::follow`]) and keeps, per tenant, the `events` table as Arrow
//! batches and its own copy of the views, all at one position. A query takes
//! a [`TenantSnapshot`] of the caller's tenant — Arrow batches of that tenant
//! only, at one position — and runs it in a fresh DataFusion
//! `SessionContext` whose tables hold nothing else: the tenant boundary is
//! drawn below SQL, before any query text is parsed.

use crate::checkpoint::{self, CheckpointPolicy, SegmentRef, TenantBody};
use crate::events::{BATCH_ROWS, EventsBuilder, events_schema};
use crate::tables;
use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
pub use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::CURRENT_SCHEMA_VERSION;
use tokenledger_domain::views::{KidOf, TenantViews, VIEW_TYPES};
use tokenledger_store::{EventStore, Position, RecordedEvent, StoreError};
use uuid::Uuid;

/// Bounds on one query.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Memory DataFusion may reserve for one query (sorts, joins,
    /// aggregations), bytes.
    pub memory_bytes: usize,
    /// Wall-clock time for planning and executing one query.
    pub timeout: Duration,
    /// Rows one answer may hold; a query producing more is refused.
    pub max_rows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 512 << 20,
            timeout: Duration::from_secs(30),
            max_rows: 100_000,
        }
    }
}

/// Why a query did not answer.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The SQL did not parse or plan, names an unknown table or column, or
    /// is not a query (DDL, DML and statements are refused). Carries
    /// DataFusion's message.
    #[error("{0}")]
    Invalid(String),
    /// The query ran out of its memory or row budget.
    #[error("{0}")]
    Limit(String),
    /// The query did not finish in time.
    #[error("the query did not finish within {0:?}")]
    Timeout(Duration),
    /// Execution failed for another reason.
    #[error("{0}")]
    Execution(String),
}

impl From<datafusion::error::DataFusionError> for SqlError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as E;
        match e.find_root() {
            E::ResourcesExhausted(m) => SqlError::Limit(format!("resources exhausted: {m}")),
            E::SQL(..) | E::Plan(..) | E::SchemaError(..) | E::NotImplemented(..) | E::Configuration(..) => {
                SqlError::Invalid(e.strip_backtrace())
            }
            _ => SqlError::Execution(e.strip_backtrace()),
        }
    }
}

#[derive(Default)]
struct TenantData {
    sealed: Vec<RecordBatch>,
    tail: EventsBuilder,
    views: TenantViews,
}

#[derive(Default)]
struct State {
    position: u64,
    /// The id of the event at `position` (`None` before the first).
    position_event_id: Option<Uuid>,
    tenants: HashMap<String, TenantData>,
}

/// What has been checkpointed, and when the next checkpoint is due.
struct Checkpoints {
    policy: CheckpointPolicy,
    /// Per tenant, the segment files of its sealed batches already written
    /// (the first `len()` of `TenantData::sealed`).
    written: HashMap<String, Vec<SegmentRef>>,
    /// The position of the last checkpoint written or restored.
    position: u64,
    last_at: Instant,
}

/// The analytics projection: every tenant's `events` table and views, at
/// one position. Cheap to share behind an `Arc`.
pub struct Analytics {
    state: RwLock<State>,
    position: tokio::sync::watch::Sender<u64>,
    kid_of: KidOf,
    limits: Limits,
    /// Bounds how many queries run at once (each has its own memory budget).
    permits: tokio::sync::Semaphore,
    /// Checkpointing, when enabled ([`Analytics::enable_checkpoints`]).
    policy: OnceLock<CheckpointPolicy>,
    checkpoints: Mutex<Option<Checkpoints>>,
    /// A checkpoint is being written on a blocking thread.
    writing: Arc<AtomicBool>,
}

/// One tenant's tables at one position: what a query sees.
pub struct TenantSnapshot {
    /// The last position folded in.
    pub position: u64,
    /// Table name → schema and batches.
    pub tables: Vec<(&'static str, SchemaRef, Vec<RecordBatch>)>,
}

impl Analytics {
    /// An empty projection; `kid_of` computes the PASERK id of an external
    /// issuer's key for the views. At most `concurrency` queries run at once.
    pub fn new(kid_of: KidOf, limits: Limits, concurrency: usize) -> Self {
        Self {
            state: RwLock::default(),
            position: tokio::sync::watch::channel(0).0,
            kid_of,
            limits,
            permits: tokio::sync::Semaphore::new(concurrency.max(1)),
            policy: OnceLock::new(),
            checkpoints: Mutex::new(None),
            writing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Enables checkpoints (see [`crate::checkpoint`]): [`Analytics::restore`]
    /// reads them and [`Analytics::follow`] writes them per `policy`. Call
    /// once, before `restore`; a second call is ignored.
    pub fn enable_checkpoints(&self, policy: CheckpointPolicy) {
        let _ = self.policy.set(policy);
    }

    /// Restores the checkpoint, if checkpoints are enabled and there is a
    /// usable one (see [`crate::checkpoint`] for what is checked), and
    /// returns the position to follow `$all` from: the checkpoint's, or
    /// [`Position::START`]. An unusable checkpoint is ignored with a
    /// warning. Call before [`Analytics::follow`], on an empty projection.
    ///
    /// Errors: the store's, when reading the head or the checkpoint's event
    /// fails.
    pub async fn restore(&self, store: &Arc<dyn EventStore>) -> Result<Position, StoreError> {
        let Some(policy) = self.policy.get().cloned() else {
            return Ok(Position::START);
        };
        let dir = policy.dir.clone();
        let read = tokio::task::spawn_blocking(move || checkpoint::read_checkpoint(&dir))
            .await
            .unwrap_or_else(|e| {
                Err(checkpoint::CheckpointError {
                    dir: policy.dir.clone(),
                    reason: format!("reading it failed: {e}"),
                })
            });
        let fresh = |policy: CheckpointPolicy| Checkpoints {
            policy,
            written: HashMap::new(),
            position: 0,
            last_at: Instant::now(),
        };
        let loaded = match read {
            Ok(Some(l)) => l,
            Ok(None) => {
                tracing::info!(dir = %policy.dir.display(), "no analytics checkpoint; folding the log from position 0");
                *self.checkpoints.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh(policy));
                return Ok(Position::START);
            }
            Err(e) => {
                tracing::warn!(error = %e, "folding the log from position 0");
                *self.checkpoints.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh(policy));
                return Ok(Position::START);
            }
        };
        let head = store.head().await?;
        let matches = if loaded.position == 0 {
            true
        } else if loaded.position > head.0 {
            false
        } else {
            let at = store.read_all(Position(loaded.position), 1, None).await?;
            at.first()
                .is_some_and(|e| e.position.0 == loaded.position && Some(e.event_id) == loaded.position_event_id)
        };
        if !matches {
            tracing::warn!(
                dir = %policy.dir.display(),
                checkpoint = loaded.position,
                head = head.0,
                "analytics checkpoint does not match this log (beyond its head, or another event at its position); folding the log from position 0"
            );
            *self.checkpoints.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh(policy));
            return Ok(Position::START);
        }
        let mut tenants = HashMap::new();
        let mut written = HashMap::new();
        for (name, (refs, batches, views)) in loaded.tenants {
            let views = match TenantViews::from_snapshot(views) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(dir = %policy.dir.display(), tenant = %name, error = %e, "analytics checkpoint not used; folding the log from position 0");
                    *self.checkpoints.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh(policy));
                    return Ok(Position::START);
                }
            };
            tenants.insert(
                name.clone(),
                TenantData {
                    sealed: batches,
                    tail: EventsBuilder::default(),
                    views,
                },
            );
            written.insert(name, refs);
        }
        {
            let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
            st.position = loaded.position;
            st.position_event_id = loaded.position_event_id;
            st.tenants = tenants;
        }
        *self.checkpoints.lock().unwrap_or_else(|p| p.into_inner()) = Some(Checkpoints {
            policy,
            written,
            position: loaded.position,
            last_at: Instant::now(),
        });
        self.position.send_if_modified(|p| {
            let moved = loaded.position > *p;
            *p = (*p).max(loaded.position);
            moved
        });
        tracing::info!(checkpoint = loaded.position, "analytics restored from its checkpoint");
        Ok(Position(loaded.position))
    }

    /// Writes a checkpoint of the current state, if checkpoints are enabled
    /// and restored (see [`Analytics::restore`]) and the state moved since
    /// the last one. Blocking (file I/O); holds the state's read lock only
    /// while it takes the batches (shared, not copied) and the views'
    /// snapshot. Returns the position written, `None` when nothing was.
    ///
    /// Errors: the I/O error of a write; the previous checkpoint stays.
    pub fn write_checkpoint(&self) -> std::io::Result<Option<u64>> {
        let mut guard = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cp) = guard.as_mut() else { return Ok(None) };
        let dir = cp.policy.dir.clone();
        // Taken at one position: new sealed batches, the open batch, views.
        let (position, event_id, captured) = {
            let st = self.state.read().unwrap_or_else(|p| p.into_inner());
            if st.position == cp.position {
                return Ok(None);
            }
            let mut captured = Vec::with_capacity(st.tenants.len());
            for (name, t) in &st.tenants {
                let done = cp.written.get(name).map_or(0, Vec::len);
                let new: Vec<RecordBatch> = t.sealed[done.min(t.sealed.len())..].to_vec();
                let tail = (!t.tail.is_empty()).then(|| t.tail.snapshot());
                captured.push((name.clone(), new, tail, t.views.to_snapshot()));
            }
            (st.position, st.position_event_id, captured)
        };
        checkpoint::prepare(&dir)?;
        let mut body = BTreeMap::new();
        for (name, new, tail, views) in captured {
            let written = cp.written.entry(name.clone()).or_default();
            for b in &new {
                written.push(checkpoint::write_segment(&dir, segment_name(b), b)?);
            }
            let mut segments = written.clone();
            if let Some(b) = &tail {
                segments.push(checkpoint::write_segment(&dir, segment_name(b), b)?);
            }
            body.insert(name, TenantBody { segments, views });
        }
        let bytes = checkpoint::write_checkpoint(&dir, position, event_id, body)?;
        cp.position = position;
        cp.last_at = Instant::now();
        tracing::debug!(position, bytes, "analytics checkpoint written");
        Ok(Some(position))
    }

    /// Whether a checkpoint is due after `folded` more events.
    fn checkpoint_due(&self, folded: u64, since: &mut u64) -> bool {
        *since += folded;
        let guard = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cp) = guard.as_ref() else { return false };
        let by_count = cp.policy.every_events > 0 && *since >= cp.policy.every_events;
        let by_time =
            cp.policy.every_seconds > 0 && cp.last_at.elapsed() >= Duration::from_secs(cp.policy.every_seconds);
        by_count || by_time
    }

    /// The query limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Folds committed events in position order (events at or before the
    /// current position are ignored, so a replay cannot apply twice).
    pub fn apply(&self, events: &[Arc<RecordedEvent>]) {
        let Some(last) = events.last() else { return };
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if e.position.0 <= st.position {
                continue;
            }
            let t = st.tenants.entry(e.tenant.clone()).or_default();
            t.tail.push(e);
            if t.tail.len() >= BATCH_ROWS {
                let b = t.tail.finish();
                t.sealed.push(b);
            }
            if VIEW_TYPES.contains(&e.event_type.as_str()) {
                match DomainEvent::from_parts(&e.event_type, CURRENT_SCHEMA_VERSION, &e.data) {
                    Ok(ev) => {
                        let source = tokenledger_domain::anomalies::source_time(&e.metadata);
                        t.views
                            .apply_timed(e.position.0, e.recorded_at, source, &ev, self.kid_of);
                    }
                    Err(err) => {
                        tracing::error!(position = e.position.0, error = %err, "undecodable event skipped by analytics")
                    }
                }
            } else {
                // Time moves with every event of the tenant, so pruning does too.
                t.views.advance(e.recorded_at);
            }
            st.position = e.position.0;
            st.position_event_id = Some(e.event_id);
        }
        drop(st);
        let reached = last.position.0;
        self.position.send_if_modified(|p| {
            let moved = reached > *p;
            *p = (*p).max(reached);
            moved
        });
    }

    /// The last position folded in.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// Waits until the projection has folded `position` in; false after
    /// `timeout`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut rx = self.position.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Follows `$all` from after `from` through a catch-up subscription,
    /// forever (until the store closes). Spawn it. With checkpoints enabled
    /// and restored, writes one on a blocking thread whenever the policy
    /// says it is due (never two at once; a failed write is logged and
    /// retried when next due).
    pub async fn follow(self: Arc<Self>, store: Arc<dyn EventStore>, from: Position) -> Result<(), StoreError> {
        let mut sub = store.subscribe_all(from).await?;
        let mut batch = Vec::with_capacity(1024);
        let mut since = 0u64;
        loop {
            let e = sub.next().await?;
            batch.push(e);
            // Take what is already there without waiting, then fold it under one lock.
            while batch.len() < 4096 {
                match futures::FutureExt::now_or_never(sub.next()) {
                    Some(Ok(e)) => batch.push(e),
                    Some(Err(err)) => return Err(err),
                    None => break,
                }
            }
            self.apply(&batch);
            let folded = batch.len() as u64;
            batch.clear();
            if self.checkpoint_due(folded, &mut since) && !self.writing.swap(true, Ordering::AcqRel) {
                since = 0;
                let me = self.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = me.write_checkpoint() {
                        tracing::error!(error = %e, "analytics checkpoint failed; the previous one stays");
                    }
                    me.writing.store(false, Ordering::Release);
                });
            }
        }
    }

    /// The tenant's tables at the current position; `now` is the time of
    /// the question (what "active" is measured against). A tenant with no
    /// events gets empty tables.
    pub fn snapshot(&self, tenant: &str, now: DateTime<Utc>) -> TenantSnapshot {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let empty = TenantData::default();
        let t = st.tenants.get(tenant).unwrap_or(&empty);
        let mut events = t.sealed.clone();
        if !t.tail.is_empty() {
            events.push(t.tail.snapshot());
        }
        let mut tables = vec![("events", events_schema(), events)];
        tables.extend(tables::views(&t.views, now));
        TenantSnapshot {
            position: st.position,
            tables,
        }
    }

    /// Runs one read-only query over a snapshot: DDL, DML and statements
    /// are refused, the query gets [`Limits::memory_bytes`], must finish in
    /// [`Limits::timeout`] and may produce at most [`Limits::max_rows`]
    /// rows. Runs on the current runtime.
    pub async fn query(&self, snapshot: TenantSnapshot, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), SqlError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| SqlError::Execution(e.to_string()))?;
        let limits = self.limits;
        check_operators(sql)?;
        let run = async {
            let ctx = context(snapshot, limits.memory_bytes)?;
            let df = ctx.sql_with_options(sql, read_only()).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await?;
            let mut batches = Vec::new();
            let mut rows = 0usize;
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows();
                if rows > limits.max_rows {
                    return Err(SqlError::Limit(format!(
                        "the answer has more than {} rows: add a LIMIT or aggregate",
                        limits.max_rows
                    )));
                }
                batches.push(b);
            }
            Ok((schema, batches))
        };
        tokio::time::timeout(limits.timeout, run)
            .await
            .unwrap_or(Err(SqlError::Timeout(limits.timeout)))
    }
}

/// The most operators one query may hold (see [`check_operators`]).
pub const MAX_OPERATORS: usize = 1_000;

/// Refuses a query with more than [`MAX_OPERATORS`] operators before it is
/// parsed. A chain of `n` binary operators (`a OR b OR …`, `x + x + …`,
/// `… UNION ALL …`, `… JOIN …`) parses into a tree `n` deep, and
/// DataFusion walks (clones, drops, rewrites) its trees recursively, not
/// all of it under its `recursive_protection`: a few thousand terms
/// overflow a thread's stack and abort the whole process. The parser's own
/// recursion limit bounds nesting (parentheses, subqueries, function
/// calls); this bounds chains. Counted, from the tokenizer (which is not
/// recursive): every operator symbol (`=`, `<`, `+`, `||`, `::`, …) and the
/// keywords `AND`, `OR`, `NOT`, `IS`, `IN`, `LIKE`, `ILIKE`, `SIMILAR`,
/// `BETWEEN`, `UNION`, `INTERSECT`, `EXCEPT`, `JOIN`; not identifiers,
/// literals, commas or brackets, so a long `IN (…)` list is fine.
///
/// Errors: [`SqlError::Limit`] above the bound; [`SqlError::Invalid`] when
/// the text does not tokenize.
pub fn check_operators(sql: &str) -> Result<(), SqlError> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| SqlError::Invalid(format!("SQL error: {e}")))?;
    let operators = tokens
        .iter()
        .filter(|t| match t {
            Token::Word(w) => matches!(
                w.keyword,
                Keyword::AND
                    | Keyword::OR
                    | Keyword::NOT
                    | Keyword::IS
                    | Keyword::IN
                    | Keyword::LIKE
                    | Keyword::ILIKE
                    | Keyword::SIMILAR
                    | Keyword::BETWEEN
                    | Keyword::UNION
                    | Keyword::INTERSECT
                    | Keyword::EXCEPT
                    | Keyword::JOIN
            ),
            Token::EOF
            | Token::Number(..)
            | Token::Char(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Comma
            | Token::Whitespace(_)
            | Token::LParen
            | Token::RParen
            | Token::Period
            | Token::SemiColon
            | Token::LBracket
            | Token::RBracket
            | Token::LBrace
            | Token::RBrace
            | Token::Placeholder(_) => false,
            _ => true,
        })
        .count();
    if operators > MAX_OPERATORS {
        return Err(SqlError::Limit(format!(
            "the query has {operators} operators; at most {MAX_OPERATORS} are allowed (split it, or use IN (…) instead of a chain of ORs)"
        )));
    }
    Ok(())
}

/// DDL, DML (`INSERT`, `COPY … TO`, `DELETE`) and statements (`SET`,
/// transactions) are refused: analysts read.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A fresh session over one tenant's snapshot: its tables are registered
/// and nothing else (no `information_schema`, no URL tables), event times
/// are UTC whatever the host's zone.
pub fn context(snapshot: TenantSnapshot, memory_bytes: usize) -> Result<SessionContext, SqlError> {
    context_in_zone(snapshot, memory_bytes, "+00:00")
}

/// [`context`] with another session time zone (`+05:30`,
/// `America/New_York`): event times are stored zoned UTC, so the zone
/// changes how `now()` and zone-less values render, never which rows a
/// query over event times matches. The SQL tests run in several zones.
pub fn context_in_zone(snapshot: TenantSnapshot, memory_bytes: usize, zone: &str) -> Result<SessionContext, SqlError> {
    let config = SessionConfig::new()
        .with_information_schema(false)
        .with_target_partitions(2)
        .with_batch_size(BATCH_ROWS)
        .set_str("datafusion.execution.time_zone", zone);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(memory_bytes, 1.0)
        .build_arc()?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    for (name, schema, batches) in snapshot.tables {
        let table = MemTable::try_new(schema, partitions(batches))?;
        ctx.register_table(name, Arc::new(table))?;
    }
    Ok(ctx)
}

/// The segment file name of a batch of one tenant: its first and last
/// positions (a tenant's batches never overlap, and positions are unique
/// across tenants).
fn segment_name(b: &RecordBatch) -> String {
    use datafusion::arrow::array::{Array, UInt64Array};
    let pos = b.column(0).as_any().downcast_ref::<UInt64Array>();
    let (first, last) = pos
        .filter(|p| !p.is_empty())
        .map_or((0, 0), |p| (p.value(0), p.value(p.len() - 1)));
    format!("seg-{first:020}-{last:020}.arrow")
}

/// Splits batches into two contiguous partitions, so both cores scan.
fn partitions(mut batches: Vec<RecordBatch>) -> Vec<Vec<RecordBatch>> {
    if batches.len() < 2 {
        return vec![batches];
    }
    let second = batches.split_off(batches.len() / 2);
    vec![batches, second]
}
