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
//! Below the table, "Where the time goes" prints: how the store grouped its
//! commits (seen through a commit hook), its writer thread's CPU time and the
//! bytes written per event; the latency of one bare `redb` commit by size,
//! durable and not; and the store's five tables filled by a bare `redb` loop
//! (same keys, lookups and inserts, no store code), durable and not, which
//! splits the store's cost into `redb` work and its own.
//!
//! Every measurement uses a fresh temp dir under the OS temp dir, whose
//! filesystem is printed with the machine (cores, CPU model, kernel).
//!
//! Run: `cargo bench -p tokenledger-benches --bench append`
//! (`BENCH_SCALE=0.5 cargo bench -p tokenledger-benches --bench append` for
//! half the totals). At scale 1 it runs for about half a minute on 2 cores.

mod common;

use common::{Figure, figure, print_machine};
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
use tokenledger_testkit::{TOKIO_THREADS, ThreadTime, WRITER_THREAD, fmt_int, fmt_rate, positive_env, thread_time};
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

fn main() {
    let scale = bench_scale();
    let batched_total = scaled(BATCHED_TOTAL, scale, BATCH);
    let single_total = scaled(SINGLE_TOTAL, scale, 1);
    let payload = Payload::new();
    let record = payload.record.as_slice();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!("# tokenledger append benchmark\n");
    print_machine("append", &std::env::temp_dir(), "temp dir");
    println!(
        "- BENCH_SCALE {scale}; TokenIssued `data` {} bytes, `metadata` {} bytes, stored record {} bytes (JSON)",
        payload.data_len,
        payload.metadata_len,
        record.len()
    );
    println!(
        "- tokio multi-thread runtime, {WRITERS} writer tasks; redb default durability (Immediate: fsync per commit)\n"
    );

    // Each measurement in its own fresh temp dir; limit and store interleaved
    // so that both see the same disk and load.
    let batched_limit = one_table_loop(BATCH, batched_total, record);
    let batched = run_store(&rt, BATCH, batched_total, &payload);
    let single_limit = one_table_loop(WRITERS, single_total, record);
    let single = run_store(&rt, 1, single_total, &payload);

    println!("| figure | ours (events/s) | limit (events/s) | ratio ours/limit | target |");
    println!("|---|---|---|---|---|");
    let rows = [
        (
            format!("batched: {WRITERS} writers x {BATCH}-event appends, new streams, NoStream"),
            format!("durable append, embedded: batches of {BATCH}, {WRITERS} writers"),
            &batched,
            &batched_limit,
            format!("bare redb, 1 table, 1 durable txn per {BATCH} inserts"),
            TARGET_BATCHED,
            "≥ 100k events/s in batches of 100",
        ),
        (
            format!("single: {WRITERS} writers x 1-event appends, new streams, NoStream"),
            format!("durable append, embedded: single events, {WRITERS} writers"),
            &single,
            &single_limit,
            format!("bare redb, 1 table, 1 durable txn per {WRITERS} inserts: a perfect group commit"),
            TARGET_SINGLE,
            "≥ 20k/s single-event from 64 writers",
        ),
    ];
    for (name, figure_name, store, limit, limit_is, target, design) in rows {
        let (ours, limit) = (store.run.rate(), limit.rate());
        let met = ours >= target;
        println!(
            "| {name} | {} | {} ({limit_is}) | {:.2} | >= {} ({}) |",
            fmt_rate(ours),
            fmt_rate(limit),
            ours / limit,
            fmt_rate(target),
            if met { "met" } else { "MISSED" }
        );
        figure(&Figure {
            bench: "append",
            figure: figure_name,
            ours,
            unit: "events/s",
            limit: Some(limit),
            limit_what: limit_is,
            ratio: Some(ours / limit),
            target: design,
            met: Some(met),
            note: format!("{} events (BENCH_SCALE {scale})", fmt_int(store.run.events)),
        });
    }

    println!("\n## Where the time goes\n");
    println!("The store's commit groups (seen by a commit hook), its writer thread's scheduler time, and the bytes");
    println!("the process passed to write(2)/pwrite(2) per event (from /proc/self/io wchar).\n");
    println!(
        "| figure | events | time (s) | commits | events/commit mean | p10 / p50 / p90 / max | mean time per commit \
         | writer thread on CPU / waiting for a CPU | tokio workers on CPU | written per event |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    batched.print_groups("batched");
    single.print_groups("single");

    println!("\nOne bare redb commit by size (median; 1 table, the same record bytes):\n");
    println!("| inserts per txn | durable (fsync) | non-durable | durable events/s |");
    println!("|---|---|---|---|");
    for (inserts, commits) in [(1, 60), (WRITERS, 60), (BATCH, 60), (640, 20), (6400, 6)] {
        let durable = commit_latency(inserts, commits, Durability::Immediate, record);
        let none = commit_latency(inserts, commits, Durability::None, record);
        println!(
            "| {inserts} | {} | {} | {} |",
            fmt_dur(durable),
            fmt_dur(none),
            fmt_rate(inserts as f64 / durable.as_secs_f64())
        );
    }

    println!("\nThe store's five tables in bare redb: its table work without its code. The same tables, keys and");
    println!("record bytes, the same lookups (one stream per append, one event id per event) and inserts, one txn");
    println!(
        "per group of {WRITERS} appends (the store's groups were full, above); no hashing, no JSON, no channels.\n"
    );
    println!(
        "| shape | events per txn | bare 5 tables, durable (events/s) | non-durable (events/s) \
         | written per event | store (events/s) | store / bare 5 tables durable |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, per_append, total, store) in [
        ("batched", BATCH, batched_total, &batched),
        ("single", 1, single_total, &single),
    ] {
        let durable = five_table_loop(per_append, total, Durability::Immediate, record);
        let none = five_table_loop(per_append, total, Durability::None, record);
        println!(
            "| {name}: {WRITERS} appends x {per_append} events | {} | {} | {} | {} | {} | {:.2} |",
            WRITERS * per_append,
            fmt_rate(durable.rate()),
            fmt_rate(none.rate()),
            fmt_bytes(durable.written_per_event()),
            fmt_rate(store.run.rate()),
            store.run.rate() / durable.rate()
        );
    }
}

/// Events written in a time, and the bytes the process wrote meanwhile.
struct Measured {
    events: usize,
    elapsed: Duration,
    /// Bytes passed to write(2)/pwrite(2) by the whole process.
    written: u64,
}

impl Measured {
    /// Runs `f`, which writes `events` events.
    fn run(events: usize, f: impl FnOnce()) -> Measured {
        let written = written_bytes();
        let start = Instant::now();
        f();
        Measured {
            events,
            elapsed: start.elapsed(),
            written: written_bytes() - written,
        }
    }

    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn written_per_event(&self) -> f64 {
        self.written as f64 / self.events as f64
    }
}

/// Bytes this process has passed to write(2) and friends (`wchar` of
/// `/proc/self/io`; 0 where there is none).
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `BENCH_SCALE` (default 1.0), which multiplies both totals.
fn bench_scale() -> f64 {
    positive_env("BENCH_SCALE", 1.0)
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
    run: Measured,
    /// Events per committed transaction, in commit order.
    groups: Vec<usize>,
    /// Scheduler time of the store's writer thread over the run.
    writer: ThreadTime,
    /// Scheduler time of the tokio workers (the appending tasks) over the run.
    tasks: ThreadTime,
}

impl StoreRun {
    fn print_groups(&self, name: &str) {
        let mut g = self.groups.clone();
        g.sort_unstable();
        let pct = |p: usize| g[(g.len() - 1) * p / 100];
        let elapsed = self.run.elapsed;
        let share = |d: Duration| format!("{:.0}%", 100.0 * d.as_secs_f64() / elapsed.as_secs_f64());
        println!(
            "| {name} | {} | {:.2} | {} | {:.1} | {} / {} / {} / {} | {} | {} / {} | {} | {} |",
            fmt_int(self.run.events),
            elapsed.as_secs_f64(),
            fmt_int(g.len()),
            self.run.events as f64 / g.len() as f64,
            pct(10),
            pct(50),
            pct(90),
            pct(100),
            fmt_dur(elapsed / g.len() as u32),
            share(self.writer.on_cpu),
            share(self.writer.runnable),
            share(self.tasks.on_cpu),
            fmt_bytes(self.run.written_per_event()),
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

    let (writer0, tasks0) = (thread_time(None, WRITER_THREAD), thread_time(None, TOKIO_THREADS));
    let run = Measured::run(total, || {
        rt.block_on(async {
            let writers: Vec<_> = (0..WRITERS)
                .map(|_| {
                    let (store, next, content) = (store.clone(), next.clone(), content.clone());
                    tokio::spawn(async move {
                        while next.fetch_add(1, Ordering::Relaxed) < appends {
                            let stream = StreamId::new(TENANT, format!("token-{}", Uuid::new_v4()));
                            let events = (0..batch)
                                .map(|_| {
                                    NewEvent::new(Uuid::new_v4(), "TokenIssued", content.0.clone(), content.1.clone())
                                })
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
        })
    });
    let (writer, tasks) = (
        thread_time(None, WRITER_THREAD) - writer0,
        thread_time(None, TOKIO_THREADS) - tasks0,
    );
    rt.block_on(store.close());

    let groups = std::mem::take(&mut *log.0.lock().unwrap_or_else(|e| e.into_inner()));
    assert_eq!(groups.iter().sum::<usize>(), total, "every event committed once");
    StoreRun {
        run,
        groups,
        writer,
        tasks,
    }
}

/// The limit: a bare `redb` loop inserting `total` copies of `record`,
/// keyed 1.., into one table of a new database in a fresh temp dir, one
/// durable transaction per `per_txn` inserts.
fn one_table_loop(per_txn: usize, total: usize, record: &[u8]) -> Measured {
    let dir = temp_dir();
    let db = new_one_table_db(&dir.path().join("limit.redb"));
    Measured::run(total, || {
        let mut key = 0u64;
        while (key as usize) < total {
            let n = per_txn.min(total - key as usize);
            commit_inserts(&db, &mut key, n, Durability::Immediate, record);
        }
    })
}

/// The median time of `commits` bare `redb` commits of `inserts` inserts
/// each, at `durability`, into a new database in a fresh temp dir.
fn commit_latency(inserts: usize, commits: usize, durability: Durability, record: &[u8]) -> Duration {
    let dir = temp_dir();
    let db = new_one_table_db(&dir.path().join("latency.redb"));
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

// The store's tables, as crates/store/src/embedded.rs declares them. The
// one-table loops use `EVENTS` alone.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const STREAMS: TableDefinition<(&str, &str), u64> = TableDefinition::new("streams");
const STREAM_INDEX: TableDefinition<(&str, &str, u64), u64> = TableDefinition::new("stream_index");
const EVENT_IDS: TableDefinition<(&str, u128), (u64, [u8; 32])> = TableDefinition::new("event_ids");
const TENANT_LOG: TableDefinition<(&str, u64), ()> = TableDefinition::new("tenant_log");

/// A bare `redb` loop doing the store's table work for `total` events:
/// appends of `per_append` events to new streams, [`WRITERS`] appends per
/// transaction at `durability`; per append one `streams` lookup, per event one
/// `event_ids` lookup and the store's five inserts.
fn five_table_loop(per_append: usize, total: usize, durability: Durability, record: &[u8]) -> Measured {
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
    Measured::run(total, || {
        let mut position = 0u64;
        while (position as usize) < total {
            let mut txn = db.begin_write().expect("begin");
            txn.set_durability(durability).expect("durability");
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
    })
}

/// A new database with the `events` table already created (outside any timing).
fn new_one_table_db(path: &Path) -> Database {
    let db = Database::create(path).expect("create the limit database");
    let txn = db.begin_write().expect("begin");
    txn.open_table(EVENTS).expect("open table");
    txn.commit().expect("commit");
    db
}

/// One transaction inserting `n` copies of `record` at keys after `*key`.
fn commit_inserts(db: &Database, key: &mut u64, n: usize, durability: Durability, record: &[u8]) {
    let mut txn = db.begin_write().expect("begin");
    txn.set_durability(durability).expect("durability");
    {
        let mut table = txn.open_table(EVENTS).expect("open table");
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

fn fmt_bytes(b: f64) -> String {
    if b >= 10_000.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}
