//! The analytics projection and the SQL engine over it.
//!
//! [`Analytics`] follows `$all` (a catch-up subscription, see
//! [`Analytics::follow`]) and keeps, per tenant, the `events` table as Arrow
//! batches and its own copy of the views, all at one position. A query takes
//! a [`TenantSnapshot`] of the caller's tenant — Arrow batches of that tenant
//! only, at one position — and runs it in a fresh DataFusion
//! `SessionContext` whose tables hold nothing else: the tenant boundary is
//! drawn below SQL, before any query text is parsed.

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
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::CURRENT_SCHEMA_VERSION;
use tokenledger_domain::views::{KidOf, TenantViews};
use tokenledger_store::{EventStore, Position, RecordedEvent, StoreError};

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
    tenants: HashMap<String, TenantData>,
}

/// Event types the views fold (others are skipped before decoding).
const VIEW_TYPES: &[&str] = &[
    "TokenIssued",
    "TokenRevoked",
    "SigningKeyAdded",
    "SigningKeyActivated",
    "SigningKeyRetired",
    "SigningKeyRevoked",
    "IssuerTrusted",
    "MintingCutoffEngaged",
    "MintingCutoffReleased",
];

/// The analytics projection: every tenant's `events` table and views, at
/// one position. Cheap to share behind an `Arc`.
pub struct Analytics {
    state: RwLock<State>,
    position: tokio::sync::watch::Sender<u64>,
    kid_of: KidOf,
    limits: Limits,
    /// Bounds how many queries run at once (each has its own memory budget).
    permits: tokio::sync::Semaphore,
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
        }
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
                    Ok(ev) => t.views.apply(e.position.0, e.recorded_at, &ev, self.kid_of),
                    Err(err) => {
                        tracing::error!(position = e.position.0, error = %err, "undecodable event skipped by analytics")
                    }
                }
            } else {
                // Time moves with every event of the tenant, so pruning does too.
                t.views.advance(e.recorded_at);
            }
            st.position = e.position.0;
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
    /// forever (until the store closes). Spawn it.
    pub async fn follow(self: Arc<Self>, store: Arc<dyn EventStore>, from: Position) -> Result<(), StoreError> {
        let mut sub = store.subscribe_all(from).await?;
        let mut batch = Vec::with_capacity(1024);
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
            batch.clear();
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

/// Splits batches into two contiguous partitions, so both cores scan.
fn partitions(mut batches: Vec<RecordBatch>) -> Vec<Vec<RecordBatch>> {
    if batches.len() < 2 {
        return vec![batches];
    }
    let second = batches.split_off(batches.len() / 2);
    vec![batches, second]
}
