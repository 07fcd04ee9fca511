//! Durable append throughput of the embedded event store ([`RedbStore`]),
//! each figure measured beside a bare `redb` insert loop in the same run, on
//! the same filesystem, with the same record bytes, and the ratio printed.
//!
//! Figures (totals are multiplied by the env var `BENCH_SCALE`, default 1.0):
//!
//! * **batched**: 64 tokio tasks, each appending batches of 100 `TokenIssued`
//!   events to a new stream `token-<uuid>` with `ExpectedRevision::NoStream`,
//!   200,000 events in all. Limit: a bare `redb` loop inserting the store's
//!   serialized record of the same event, keyed by `u64`, into one table, one
//!   durable (fsync'd) transaction per 100 inserts.
//! * **single**: 64 tokio tasks, each appending one-event batches to a new
//!   stream `token-<uuid>` with `NoStream`, 40,000 events in all. Limit: the
//!   same bare loop with one durable transaction per 64 inserts: what a
//!   perfect group commit of the 64 writers could do.
//!
//! The limits write one table entry per event; the store writes five (events,
//! streams, stream_index, event_ids, tenant_log), hashes and JSON-encodes
//! each event, and answers each append through channels.
//!
//! Besides the table, the bench prints the machine, the filesystem of the
//! temp dir, how the store grouped its commits (seen through a commit hook)
//! and the latency of one bare `redb` commit by size, durable and not, which
//! is where the time of a group commit goes.
//!
//! Run: `cargo bench -p tokenledger-benches --bench append`
//! (`BENCH_SCALE=0.5 cargo bench -p tokenledger-benches --bench append` for
//! half the totals). It takes about 15 s at scale 1 on 2 cores and an SSD.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, TimeZone, Utc};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use tokenledger_domain::Metadata;
use tokenledger_domain::events::{CURRENT_SCHEMA_VERSION, DomainEvent, RequestContext, TokenFormat, TokenIssued};
use tokenledger_store::{
    CommitHook, EventStore, ExpectedRevision, NewEvent, Position, RecordedEvent, RedbOptions, RedbStore, StreamId,
};
use tokio::runtime::Runtime;
use uuid::Uuid;

const TENANT: &str = "acme-eu";
/// Concurrent writer tasks in both store figures.
const WRITERS: usize = 64;
/// Events per append in the batched figure, and per transaction in its limit.
const BATCH: usize = 100;
/// Events of the batched figure at `BENCH_SCALE=1`.
const BATCHED_TOTAL: f64 = 200_000.0;
/// Events of the single-event figure at `BENCH_SCALE=1`.
const SINGLE_TOTAL: f64 = 40_000.0;
/// Design targets, events/s.
const TARGET_BATCHED: f64 = 100_000.0;
const TARGET_SINGLE: f64 = 20_000.0;

/// The one table of the bare `redb` limit loops.
const LIMIT_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

fn main() {
    let scale = bench_scale();
    let batched_total = scaled(BATCHED_TOTAL, scale, BATCH);
    let single_total = scaled(SINGLE_TOTAL, scale, 1);
    let payload = Payload::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!("# tokenledger append benchmark\n");
    println!("{}", machine(&std::env::temp_dir()));
    println!(
        "- BENCH_SCALE {scale}; TokenIssued `data` {} bytes, `metadata` {} bytes, stored record {} bytes (JSON)",
        payload.data_len,
        payload.metadata_len,
        payload.record.len()
    );
    println!(
        "- tokio multi-thread runtime, {WRITERS} writer tasks; redb default durability (Immediate: fsync per commit)\n"
    );

    // Each measurement in its own fresh temp dir; limit and store interleaved
    // so that both see the same disk state.
    let batched_limit = timed_limit(BATCH, batched_total, &payload.record);
    let batched = run_store(&rt, BATCH, batched_total, &payload);
    let single_limit = timed_limit(WRITERS, single_total, &payload.record);
    let single = run_store(&rt, 1, single_total, &payload);

    let rows = [
        Row {
            figure: format!("batched: {WRITERS} writers x {BATCH}-event appends, new streams, NoStream"),
            ours: batched.events_per_s(),
            limit: batched_limit,
            limit_is: format!("bare redb, 1 table, 1 durable txn per {BATCH} inserts"),
            target: TARGET_BATCHED,
        },
        Row {
            figure: format!("single: {WRITERS} writers x 1-event appends, new streams, NoStream"),
            ours: single.events_per_s(),
            limit: single_limit,
            limit_is: format!("bare redb, 1 table, 1 durable txn per {WRITERS} inserts (perfect group commit)"),
            target: TARGET_SINGLE,
        },
    ];
    print_table(&rows);

    println!("\n## How the store grouped its commits (commit hook)\n");
    println!(
        "| figure | events | time (s) | commits | events/commit mean | p10 / p50 / p90 / max \
         | mean time per commit | writer thread on CPU / waiting for a CPU | tokio workers on CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, run) in [("batched", &batched), ("single", &single)] {
        run.print_groups(name);
    }

    println!("\n## One bare redb commit by size (median, 1 table, same record bytes)\n");
    println!("| inserts per txn | durable (fsync) | non-durable | durable events/s |");
    println!("|---|---|---|---|");
    for (inserts, commits) in [(1, 60), (WRITERS, 60), (BATCH, 60), (640, 20), (6400, 6)] {
        let durable = commit_latency(inserts, commits, Durability::Immediate, &payload.record);
        let none = commit_latency(inserts, commits, Durability::None, &payload.record);
        println!(
            "| {inserts} | {} | {} | {} |",
            fmt_dur(durable),
            fmt_dur(none),
            fmt_rate(inserts as f64 / durable.as_secs_f64())
        );
    }

    println!("\n## The store's five tables in bare redb: its table work without its code\n");
    println!(
        "Same tables, keys and record bytes as the store, the same lookups (one stream, one event id per event), "
    );
    println!("one durable txn per group of {WRITERS} appends; no hashing, no JSON, no channels, no hooks.\n");
    println!("| shape | events per txn | bare 5 tables (events/s) | store (events/s) | store / bare 5 tables |");
    println!("|---|---|---|---|---|");
    for (name, per_append, total, store) in [
        ("batched", BATCH, batched_total, &batched),
        ("single", 1, single_total, &single),
    ] {
        let bare = schema_loop(per_append, total, &payload.record);
        println!(
            "| {name}: {WRITERS} appends x {per_append} events | {} | {} | {} | {:.2} |",
            WRITERS * per_append,
            fmt_rate(bare),
            fmt_rate(store.events_per_s()),
            store.events_per_s() / bare
        );
    }
}

/// `BENCH_SCALE` (default 1.0), which multiplies both totals.
fn bench_scale() -> f64 {
    match std::env::var("BENCH_SCALE") {
        Err(_) => 1.0,
        Ok(s) => match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => v,
            _ => panic!("BENCH_SCALE must be a positive number, not {s:?}"),
        },
    }
}

/// `base * scale` events rounded to whole appends of `batch`, at least one
/// append per writer.
fn scaled(base: f64, scale: f64, batch: usize) -> usize {
    let appends = ((base * scale) / batch as f64).round() as usize;
    appends.max(WRITERS) * batch
}

/// One realistic `TokenIssued` (a non-DPoP token with its request context),
/// its envelope metadata, and the record the store writes for it, which is
/// what the limit loops insert.
struct Payload {
    data: serde_json::Value,
    metadata: serde_json::Value,
    data_len: usize,
    metadata_len: usize,
    record: Vec<u8>,
}

impl Payload {
    fn new() -> Self {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().expect("valid time");
        let token_id = Uuid::new_v4();
        let issued = DomainEvent::TokenIssued(TokenIssued {
            token_id: token_id.to_string(),
            tenant: TENANT.into(),
            issuer: "tokenledger".into(),
            subject: "user-42".into(),
            client_id: "orders-web".into(),
            audience: "orders-api".into(),
            scope: "orders:read orders:write".into(),
            issued_at: t,
            expires_at: t + TimeDelta::minutes(15),
            not_before: t,
            format: TokenFormat::V4Public,
            kid: Some("k4.pid.eAPfKw2DqBVIX2G1ZCZDpFdKVCZmMxfTYhTPCC2gL8ws".into()),
            cnf: None,
            parent_token_id: None,
            context: Some(RequestContext {
                ip: Some("203.0.113.7".into()),
                user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) orders-web/4.2".into()),
                device_id: None,
            }),
        });
        let (event_type, data) = issued.to_parts().expect("TokenIssued encodes");
        assert_eq!(
            DomainEvent::from_parts(event_type, CURRENT_SCHEMA_VERSION, &data).as_ref(),
            Ok(&issued),
            "the payload must be a valid TokenIssued"
        );
        let metadata = serde_json::to_value(Metadata {
            tenant: TENANT.into(),
            actor: "issuer-orders".into(),
            schema_version: CURRENT_SCHEMA_VERSION,
            correlation_id: Some(Uuid::new_v4().to_string()),
            causation_id: None,
            source_time: None,
        })
        .expect("metadata encodes");
        let record = serde_json::to_vec(&RecordedEvent {
            event_id: Uuid::new_v4(),
            event_type: event_type.into(),
            tenant: TENANT.into(),
            stream: format!("token-{token_id}"),
            revision: 0,
            position: Position(100_000),
            recorded_at: Utc::now(),
            data: data.clone(),
            metadata: metadata.clone(),
        })
        .expect("record encodes");
        Self {
            data_len: data.to_string().len(),
            metadata_len: metadata.to_string().len(),
            data,
            metadata,
            record,
        }
    }
}

/// Records the number of events of every committed group.
#[derive(Default)]
struct GroupLog(Mutex<Vec<usize>>);

impl CommitHook for GroupLog {
    fn committed(&self, events: &[Arc<RecordedEvent>]) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(events.len());
    }
}

/// The outcome of one store measurement.
struct StoreRun {
    events: usize,
    elapsed: Duration,
    /// Events per committed transaction, in commit order.
    groups: Vec<usize>,
    /// CPU time of the store's writer thread over the run.
    writer: ThreadTime,
    /// CPU time of the tokio workers (the 64 appending tasks) over the run.
    tasks: ThreadTime,
}

impl StoreRun {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn print_groups(&self, name: &str) {
        let mut g = self.groups.clone();
        g.sort_unstable();
        let pct = |p: usize| g[(g.len() - 1) * p / 100];
        let share = |d: Duration| format!("{:.0}%", 100.0 * d.as_secs_f64() / self.elapsed.as_secs_f64());
        println!(
            "| {name} | {} | {:.2} | {} | {:.1} | {} / {} / {} / {} | {} | {} / {} | {} |",
            fmt_int(self.events),
            self.elapsed.as_secs_f64(),
            fmt_int(g.len()),
            self.events as f64 / g.len() as f64,
            pct(10),
            pct(50),
            pct(90),
            pct(100),
            fmt_dur(self.elapsed / g.len() as u32),
            share(self.writer.on_cpu),
            share(self.writer.runnable),
            share(self.tasks.on_cpu),
        );
    }
}

/// Appends `total` events in appends of `batch` from [`WRITERS`] tasks, each
/// append to a new stream with `NoStream`, into a new store in a fresh temp
/// dir. Times from the first append to the last acknowledgement.
fn run_store(rt: &Runtime, batch: usize, total: usize, payload: &Payload) -> StoreRun {
    let dir = temp_dir();
    let store = RedbStore::open(RedbOptions::new(dir.path().join("store.redb"))).expect("open the store");
    let log = Arc::new(GroupLog::default());
    store.add_commit_hook(log.clone());
    let appends = total / batch;
    let next = Arc::new(AtomicUsize::new(0));
    let content = Arc::new((payload.data.clone(), payload.metadata.clone()));

    let (writer0, tasks0) = (thread_time(WRITER_THREAD), thread_time(TOKIO_THREADS));
    let start = Instant::now();
    rt.block_on(async {
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (store, next, content) = (store.clone(), next.clone(), content.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < appends {
                        let stream = StreamId::new(TENANT, format!("token-{}", Uuid::new_v4()));
                        let events = (0..batch)
                            .map(|_| NewEvent::new(Uuid::new_v4(), "TokenIssued", content.0.clone(), content.1.clone()))
                            .collect();
                        let res = store
                            .append(&stream, ExpectedRevision::NoStream, events)
                            .await
                            .expect("append");
                        assert!(res.written);
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.expect("writer task");
        }
    });
    let elapsed = start.elapsed();
    let (writer, tasks) = (
        thread_time(WRITER_THREAD) - writer0,
        thread_time(TOKIO_THREADS) - tasks0,
    );
    rt.block_on(store.close());

    let groups = std::mem::take(&mut *log.0.lock().unwrap_or_else(|e| e.into_inner()));
    assert_eq!(groups.iter().sum::<usize>(), total, "every event committed once");
    StoreRun {
        events: total,
        elapsed,
        groups,
        writer,
        tasks,
    }
}

/// The store's writer thread, by its name as `/proc` shows it (15 bytes).
const WRITER_THREAD: &str = "tokenledger-wri";
/// tokio's worker threads.
const TOKIO_THREADS: &str = "tokio-";

/// Scheduler time of a set of threads, from `/proc/self/task/*/schedstat`.
#[derive(Debug, Clone, Copy, Default)]
struct ThreadTime {
    /// Time running on a CPU.
    on_cpu: Duration,
    /// Time runnable but waiting for a CPU.
    runnable: Duration,
}

impl std::ops::Sub for ThreadTime {
    type Output = ThreadTime;
    fn sub(self, rhs: ThreadTime) -> ThreadTime {
        ThreadTime {
            on_cpu: self.on_cpu.saturating_sub(rhs.on_cpu),
            runnable: self.runnable.saturating_sub(rhs.runnable),
        }
    }
}

/// The summed scheduler time of this process's threads whose name starts
/// with `prefix` (zero where `/proc` has no schedstat).
fn thread_time(prefix: &str) -> ThreadTime {
    let mut sum = ThreadTime::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return sum;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0));
        sum.on_cpu += Duration::from_nanos(fields.next().unwrap_or(0));
        sum.runnable += Duration::from_nanos(fields.next().unwrap_or(0));
    }
    sum
}

/// The limit: events/s of a bare `redb` loop inserting `total` copies of
/// `record`, keyed 1.., into one table of a new database in a fresh temp dir,
/// one durable transaction per `per_txn` inserts.
fn timed_limit(per_txn: usize, total: usize, record: &[u8]) -> f64 {
    let dir = temp_dir();
    let db = new_limit_db(&dir.path().join("limit.redb"));
    let start = Instant::now();
    let mut key = 0u64;
    while (key as usize) < total {
        let n = per_txn.min(total - key as usize);
        commit_inserts(&db, &mut key, n, Durability::Immediate, record);
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// The median time of `commits` bare `redb` commits of `inserts` inserts
/// each, at `durability`, into a new database in a fresh temp dir.
fn commit_latency(inserts: usize, commits: usize, durability: Durability, record: &[u8]) -> Duration {
    let dir = temp_dir();
    let db = new_limit_db(&dir.path().join("latency.redb"));
    let mut key = 0u64;
    let mut times: Vec<Duration> = (0..commits)
        .map(|_| {
            let start = Instant::now();
            commit_inserts(&db, &mut key, inserts, durability, record);
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

// The store's tables, as crates/store/src/embedded.rs declares them.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const STREAMS: TableDefinition<(&str, &str), u64> = TableDefinition::new("streams");
const STREAM_INDEX: TableDefinition<(&str, &str, u64), u64> = TableDefinition::new("stream_index");
const EVENT_IDS: TableDefinition<(&str, u128), (u64, [u8; 32])> = TableDefinition::new("event_ids");
const TENANT_LOG: TableDefinition<(&str, u64), ()> = TableDefinition::new("tenant_log");

/// Events/s of a bare `redb` loop doing the store's table work for `total`
/// events: appends of `per_append` events to new streams, [`WRITERS`]
/// appends per durable transaction; per append one `streams` lookup, per
/// event one `event_ids` lookup and the five inserts of the store.
fn schema_loop(per_append: usize, total: usize, record: &[u8]) -> f64 {
    let dir = temp_dir();
    let db = Database::create(dir.path().join("schema.redb")).expect("create the schema database");
    {
        let txn = db.begin_write().expect("begin");
        txn.open_table(EVENTS).expect("open table");
        txn.open_table(STREAMS).expect("open table");
        txn.open_table(STREAM_INDEX).expect("open table");
        txn.open_table(EVENT_IDS).expect("open table");
        txn.open_table(TENANT_LOG).expect("open table");
        txn.commit().expect("commit");
    }
    let start = Instant::now();
    let mut position = 0u64;
    while (position as usize) < total {
        let txn = db.begin_write().expect("begin");
        {
            let mut events = txn.open_table(EVENTS).expect("open table");
            let mut streams = txn.open_table(STREAMS).expect("open table");
            let mut stream_index = txn.open_table(STREAM_INDEX).expect("open table");
            let mut event_ids = txn.open_table(EVENT_IDS).expect("open table");
            let mut tenant_log = txn.open_table(TENANT_LOG).expect("open table");
            for _ in 0..WRITERS {
                if position as usize >= total {
                    break;
                }
                let stream = format!("token-{}", Uuid::new_v4());
                let s = stream.as_str();
                assert!(streams.get((TENANT, s)).expect("get").is_none());
                for revision in 0..per_append as u64 {
                    position += 1;
                    let id = Uuid::new_v4().as_u128();
                    assert!(event_ids.get((TENANT, id)).expect("get").is_none());
                    events.insert(position, record).expect("insert");
                    streams.insert((TENANT, s), revision).expect("insert");
                    stream_index.insert((TENANT, s, revision), position).expect("insert");
                    event_ids.insert((TENANT, id), (position, [0u8; 32])).expect("insert");
                    tenant_log.insert((TENANT, position), ()).expect("insert");
                }
            }
        }
        txn.commit().expect("commit");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// A new database with the limit table already created (outside any timing).
fn new_limit_db(path: &Path) -> Database {
    let db = Database::create(path).expect("create the limit database");
    let txn = db.begin_write().expect("begin");
    txn.open_table(LIMIT_TABLE).expect("open table");
    txn.commit().expect("commit");
    db
}

/// One transaction inserting `n` copies of `record` at keys after `*key`.
fn commit_inserts(db: &Database, key: &mut u64, n: usize, durability: Durability, record: &[u8]) {
    let mut txn = db.begin_write().expect("begin");
    txn.set_durability(durability).expect("durability");
    {
        let mut table = txn.open_table(LIMIT_TABLE).expect("open table");
        for _ in 0..n {
            *key += 1;
            table.insert(*key, record).expect("insert");
        }
    }
    txn.commit().expect("commit");
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tokenledger-bench-")
        .tempdir()
        .expect("create a temp dir")
}

struct Row {
    figure: String,
    ours: f64,
    limit: f64,
    limit_is: String,
    target: f64,
}

fn print_table(rows: &[Row]) {
    println!("| figure | ours (events/s) | limit (events/s) | ratio ours/limit | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let met = if r.ours >= r.target { "met" } else { "MISSED" };
        println!(
            "| {} | {} | {} ({}) | {:.2} | >= {} ({met}) |",
            r.figure,
            fmt_rate(r.ours),
            fmt_rate(r.limit),
            r.limit_is,
            r.ours / r.limit,
            fmt_rate(r.target)
        );
    }
}

/// The machine: cores, CPU model, kernel, and the filesystem holding `dir`.
fn machine(dir: &Path) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned());
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    // The mount with the longest mount point that contains `dir`.
    let mount = std::fs::read_to_string("/proc/mounts").ok().and_then(|mounts| {
        mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 4 && dir.starts_with(f[1]))
                    .then(|| (f[1].len(), format!("{} on {} type {} ({})", f[0], f[1], f[2], f[3])))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, m)| m)
    });
    format!(
        "- machine: {cores} cores (available_parallelism), CPU {cpu}, Linux {kernel}\n- temp dir {} on {}",
        dir.display(),
        mount.unwrap_or_else(|| "an unknown filesystem".into())
    )
}

fn fmt_int(n: usize) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).expect("ASCII digits"))
        .collect();
    groups.join(",")
}

fn fmt_rate(r: f64) -> String {
    fmt_int(r.round() as usize)
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}
