//! Analyst SQL over the `events` table (DESIGN.md "Figures to reach":
//! analyst SQL over 10M events ≤ 1.5× DuckDB's time on the same Parquet).
//!
//! 1. Generates `SQL_BENCH_EVENTS` (default 10,000,000) synthetic committed
//!    events, deterministic: five tenants, one of them (`big`) with 90 % of
//!    the events; per step ~23 % `TokenIssued` (50 clients, 5,000 subjects,
//!    20 audiences), ~2.5 % exchanges (a `TokenIssued` with a parent and a
//!    `TokenExchanged`), ~67 % `TokenUsed` (85 % accepted, the rest rejected
//!    with a reason; 2,000 client addresses, a few of them hot; 8
//!    validators), ~3 % `TokenRevoked` (a few by selector), ~2 % `GrantRefused`;
//!    `recorded_at` spread evenly over 30 days from 2026-03-01, non-decreasing
//!    by position.
//! 2. Folds them into [`Analytics`] with `apply` in chunks as the follower
//!    would (reported: events/s of `apply` alone, generation not counted).
//! 3. Takes a snapshot of tenant `big` and writes it with
//!    [`export::write_export`] into a temp dir (`events` partitioned by UTC
//!    date), reported: time and size.
//! 4. Runs six analyst queries through [`Analytics::query`] (a fresh snapshot
//!    per run, its time reported apart; the query time includes planning),
//!    median of 3, and the same queries in DuckDB through `python3` over
//!    `read_parquet('DIR/events/*/*.parquet')`, median of 3 timed inside
//!    Python (planning included), and prints: query, ours ms, DuckDB ms,
//!    ratio, against the target ≤ 1.5×. Both answers are compared row by row;
//!    a mismatch is printed loudly.
//!
//! DuckDB: `pip install duckdb==2.0.1` (the version this was measured with);
//! without it the comparison is skipped and the install line printed.
//!
//! Run: `cargo bench -p tokenledger-benches --bench sql`
//! (`SQL_BENCH_EVENTS=1000000` for a quicker run; `SQL_BENCH_MEMORY_MB` for
//! the per-query memory budget, default the server's 512; `PYTHON` for
//! another interpreter). At 10M events it needs about 8 GB of memory.

mod common;

use common::{Figure, figure, print_machine};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use tokenledger_analytics::encode::to_json;
use tokenledger_analytics::{Analytics, Limits, export};
use tokenledger_domain::events::{
    GrantPath, GrantRefused, GrantRequest, RefusalReason, RequestContext, Selector, SelectorScope, TokenExchanged,
    TokenFormat, TokenIssued, TokenRevoked, TokenUsed, UseOutcome,
};
use tokenledger_store::{Position, RecordedEvent};
use tokenledger_testkit::{fmt_int, fmt_rate, positive_env};

/// The tenant the queries run in.
const BIG: &str = "big";
/// The other tenants (10 % of the events between them).
const SMALL: &[&str] = &["small-a", "small-b", "small-c", "small-d"];
const CLIENTS: u64 = 50;
const SUBJECTS: u64 = 5_000;
const AUDIENCES: u64 = 20;
const VALIDATORS: u64 = 8;
const IPS: u64 = 2_000;
const DAYS: i64 = 30;
/// Events handed to `apply` at once (the follower folds up to 4,096).
const CHUNK: usize = 4_096;
/// Runs per query; the median is reported.
const RUNS: usize = 3;
/// The design's target: our time at most this many times DuckDB's.
const TARGET_RATIO: f64 = 1.5;
/// The DuckDB version the figure was measured with.
const DUCKDB_PIN: &str = "2.0.1";

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
}

/// SplitMix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Skewed towards 0 in `0..n` (a few hot values).
    fn skewed(&mut self, n: u64) -> u64 {
        let u = self.unit();
        ((u * u * u) * n as f64) as u64 % n
    }
}

/// A token a tenant issued, for later uses, exchanges and revocations.
#[derive(Clone)]
struct Recent {
    id: String,
    subject: u64,
    client: u64,
    audience: u64,
}

/// What the generator remembers per tenant.
#[derive(Default)]
struct TenantGen {
    /// The most recently issued tokens (a ring of [`RECENT`]).
    recent: Vec<Recent>,
    next_slot: usize,
    issued: u64,
}

const RECENT: usize = 50_000;

impl TenantGen {
    fn remember(&mut self, r: Recent) {
        if self.recent.len() < RECENT {
            self.recent.push(r);
        } else {
            self.recent[self.next_slot] = r;
            self.next_slot = (self.next_slot + 1) % RECENT;
        }
    }
}

/// The synthetic log, generated lazily chunk by chunk.
struct Generator {
    rng: Rng,
    total: u64,
    made: u64,
    tenants: Vec<(&'static str, TenantGen)>,
    /// Microseconds between two events' `recorded_at`.
    step_us: i64,
}

fn uuid_of(n: u64, salt: u64) -> String {
    uuid::Uuid::from_u64_pair(n ^ 0x5eed_0000_0000_0000, salt).to_string()
}

fn client(c: u64) -> String {
    format!("svc-{c:02}")
}
fn subject(s: u64) -> String {
    format!("user-{s:04}")
}
fn audience(a: u64) -> String {
    format!("api://aud-{a:02}")
}
fn ip(rng: &mut Rng) -> String {
    let n = rng.skewed(IPS);
    format!("10.{}.{}.{}", n / 65_536, (n / 256) % 256, n % 256)
}

impl Generator {
    fn new(total: u64) -> Self {
        let mut tenants = vec![(BIG, TenantGen::default())];
        tenants.extend(SMALL.iter().map(|t| (*t, TenantGen::default())));
        Self {
            rng: Rng(0x7e57_ab1e),
            total,
            made: 0,
            tenants,
            step_us: DAYS * 86_400_000_000 / total.max(1) as i64,
        }
    }

    fn done(&self) -> bool {
        self.made >= self.total
    }

    /// The next chunk of at most `n` events (an exchange may end a chunk one
    /// event early; never past `total`).
    fn chunk(&mut self, n: usize) -> Vec<Arc<RecordedEvent>> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n && !self.done() {
            self.step_once(&mut out);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        out: &mut Vec<Arc<RecordedEvent>>,
        tenant: &str,
        stream: String,
        revision: u64,
        event_type: &str,
        data: Value,
        actor: &str,
    ) {
        self.made += 1;
        let recorded_at = start() + chrono::Duration::microseconds(self.step_us * (self.made as i64 - 1));
        out.push(Arc::new(RecordedEvent {
            event_id: uuid::Uuid::from_u64_pair(0xe7e7, self.made),
            event_type: event_type.to_owned(),
            tenant: tenant.to_owned(),
            stream,
            revision,
            position: Position(self.made),
            recorded_at,
            data,
            metadata: json!({"tenant": tenant, "actor": actor, "schema_version": 1}),
        }));
    }

    fn now(&self) -> DateTime<Utc> {
        start() + chrono::Duration::microseconds(self.step_us * self.made as i64)
    }

    fn issue(
        &mut self,
        out: &mut Vec<Arc<RecordedEvent>>,
        t: usize,
        parent: Option<&Recent>,
        client_ix: u64,
    ) -> Recent {
        let tenant = self.tenants[t].0;
        let g = &mut self.tenants[t].1;
        g.issued += 1;
        let id = uuid_of(g.issued, t as u64);
        let (subj, aud) = match parent {
            Some(p) => (p.subject, (p.audience + 1 + self.rng.below(AUDIENCES - 1)) % AUDIENCES),
            None => (self.rng.skewed(SUBJECTS), self.rng.skewed(AUDIENCES)),
        };
        let now = self.now();
        let ev = TokenIssued {
            token_id: id.clone(),
            tenant: tenant.to_owned(),
            issuer: "tokenledger".into(),
            subject: subject(subj),
            client_id: client(client_ix),
            audience: audience(aud),
            scope: if self.rng.below(3) == 0 {
                "read write".into()
            } else {
                "read".into()
            },
            issued_at: now,
            expires_at: now + chrono::Duration::seconds(3_600),
            not_before: now,
            format: TokenFormat::V4Public,
            kid: Some(format!("k4.pid.{tenant}-1")),
            cnf: None,
            parent_token_id: parent.map(|p| p.id.clone()),
            context: None,
        };
        let data = serde_json::to_value(ev).unwrap();
        self.event(
            out,
            tenant,
            format!("token-{id}"),
            0,
            "TokenIssued",
            data,
            &client(client_ix),
        );
        Recent {
            id,
            subject: subj,
            client: client_ix,
            audience: aud,
        }
    }

    fn pick(&mut self, t: usize) -> Option<Recent> {
        let g = &self.tenants[t].1;
        if g.recent.is_empty() {
            return None;
        }
        let n = g.recent.len() as u64;
        Some(g.recent[self.rng.below(n) as usize].clone())
    }

    fn step_once(&mut self, out: &mut Vec<Arc<RecordedEvent>>) {
        let t = if self.rng.below(10) == 0 {
            1 + self.rng.below(SMALL.len() as u64) as usize
        } else {
            0
        };
        let tenant = self.tenants[t].0;
        let r = self.rng.unit();
        let picked = if r >= 0.23 { self.pick(t) } else { None };
        let now = self.now();
        match (r, picked) {
            (r, Some(parent)) if r < 0.255 && self.total - self.made >= 2 => {
                // An exchange: the child's issuance, then the edge.
                let c = self.rng.skewed(CLIENTS);
                let child = self.issue(out, t, Some(&parent), c);
                let ev = TokenExchanged {
                    subject_token_id: parent.id.clone(),
                    actor_token_id: None,
                    new_token_id: child.id.clone(),
                    client_id: client(c),
                    requested_audience: audience(child.audience),
                    requested_scope: Some("read".into()),
                    granted_audience: audience(child.audience),
                    granted_scope: "read".into(),
                };
                let data = serde_json::to_value(ev).unwrap();
                self.event(
                    out,
                    tenant,
                    format!("token-{}", child.id),
                    1,
                    "TokenExchanged",
                    data,
                    &client(c),
                );
                self.tenants[t].1.remember(child);
            }
            (r, Some(tok)) if (0.255..0.925).contains(&r) => {
                let v = self.rng.below(VALIDATORS);
                let accepted = self.rng.below(100) < 85;
                let ctx = Some(RequestContext {
                    ip: Some(ip(&mut self.rng)),
                    user_agent: Some(format!("agent/{}", self.rng.below(5))),
                    device_id: Some(format!("dev-{}", self.rng.below(20_000))),
                });
                let ev = if accepted {
                    TokenUsed {
                        validator: format!("gw-{v}"),
                        audience: audience(tok.audience),
                        outcome: UseOutcome::Accepted,
                        reason: None,
                        at: now,
                        context: ctx,
                        token_id: Some(tok.id.clone()),
                        subject: Some(subject(tok.subject)),
                        client_id: Some(client(tok.client)),
                        claimed_token_id: None,
                        claimed_subject: None,
                        claimed_client_id: None,
                    }
                } else {
                    let reasons = ["expired", "bad_signature", "revoked", "audience_mismatch", "not_issued"];
                    TokenUsed {
                        validator: format!("gw-{v}"),
                        audience: audience(self.rng.skewed(AUDIENCES)),
                        outcome: UseOutcome::Rejected,
                        reason: Some(reasons[self.rng.below(reasons.len() as u64) as usize].into()),
                        at: now,
                        context: ctx,
                        token_id: None,
                        subject: None,
                        client_id: None,
                        claimed_token_id: Some(tok.id.clone()),
                        claimed_subject: None,
                        claimed_client_id: None,
                    }
                };
                let data = serde_json::to_value(ev).unwrap();
                self.event(
                    out,
                    tenant,
                    format!("uses-gw-{v}"),
                    0,
                    "TokenUsed",
                    data,
                    &format!("gw-{v}"),
                );
            }
            (r, Some(tok)) if (0.925..0.955).contains(&r) => {
                let by_selector = self.rng.below(2_000) == 0;
                let ev = TokenRevoked {
                    token_id: (!by_selector).then(|| tok.id.clone()),
                    selector: by_selector.then(|| Selector {
                        scope: SelectorScope::Subject,
                        key: subject(tok.subject),
                    }),
                    reason: "compromised".into(),
                    by: Some("soc-1".into()),
                };
                let data = serde_json::to_value(ev).unwrap();
                let stream = if by_selector {
                    format!("revocations-{tenant}")
                } else {
                    format!("token-{}", tok.id)
                };
                self.event(out, tenant, stream, 1, "TokenRevoked", data, "soc-1");
            }
            (r, Some(tok)) if (0.955..0.975).contains(&r) => {
                let c = self.rng.skewed(CLIENTS);
                let ev = GrantRefused {
                    path: GrantPath::Mint,
                    client_id: client(c),
                    subject: Some(subject(tok.subject)),
                    requested: GrantRequest {
                        audience: Some(audience(self.rng.below(AUDIENCES))),
                        scope: Some("admin".into()),
                        ttl_seconds: Some(300),
                        format: Some(TokenFormat::V4Public),
                    },
                    reason: RefusalReason::Scope,
                    detail: "scope admin is not allowed".into(),
                    cutoff_id: None,
                };
                let data = serde_json::to_value(ev).unwrap();
                self.event(
                    out,
                    tenant,
                    format!("grants-{}", client(c)),
                    0,
                    "GrantRefused",
                    data,
                    &client(c),
                );
            }
            _ => {
                let c = self.rng.skewed(CLIENTS);
                let tok = self.issue(out, t, None, c);
                self.tenants[t].1.remember(tok);
            }
        }
    }
}

/// One analyst query: DataFusion's text and DuckDB's (they differ only in
/// how a zoned timestamp literal is written).
struct Query {
    name: &'static str,
    ours: String,
    duckdb: String,
}

fn queries() -> Vec<Query> {
    let same = |name, q: &str| Query {
        name,
        ours: q.to_owned(),
        duckdb: q.to_owned(),
    };
    let window = |lit: &str| {
        format!(
            "SELECT ip, count(*) AS rejected FROM events \
             WHERE event_type = 'TokenUsed' AND outcome = 'rejected' \
             AND recorded_at >= {lit} AND recorded_at < {lit} + INTERVAL '24 hours' \
             GROUP BY ip ORDER BY rejected DESC, ip LIMIT 20"
        )
    };
    vec![
        same(
            "daily issuance per client",
            "SELECT CAST(recorded_at AS DATE) AS day, client_id, count(*) AS issued FROM events \
             WHERE event_type = 'TokenIssued' GROUP BY 1, 2 ORDER BY 1, 2",
        ),
        same(
            "top audiences by accepted use",
            "SELECT audience, count(*) AS uses FROM events \
             WHERE event_type = 'TokenUsed' AND outcome = 'accepted' \
             GROUP BY audience ORDER BY uses DESC, audience LIMIT 10",
        ),
        Query {
            name: "rejected uses per ip, 24 h",
            ours: window("TIMESTAMP '2026-03-11T00:00:00Z'"),
            duckdb: window("TIMESTAMPTZ '2026-03-11 00:00:00+00'"),
        },
        same(
            "issued, never used (anti-join)",
            "SELECT i.client_id, count(*) AS never_used FROM events i \
             WHERE i.event_type = 'TokenIssued' AND NOT EXISTS \
             (SELECT 1 FROM events u WHERE u.event_type = 'TokenUsed' AND u.token_id = i.token_id) \
             GROUP BY i.client_id ORDER BY i.client_id",
        ),
        same(
            "exchange edges per client/audience",
            "SELECT p.client_id AS from_client, x.client_id AS to_client, x.audience, count(*) AS edges \
             FROM events x JOIN events p ON p.token_id = x.parent_token_id AND p.event_type = 'TokenIssued' \
             WHERE x.event_type = 'TokenExchanged' GROUP BY 1, 2, 3 ORDER BY edges DESC, 1, 2, 3 LIMIT 50",
        ),
        same(
            "distinct subjects per day",
            "SELECT CAST(recorded_at AS DATE) AS day, count(DISTINCT subject) AS subjects FROM events \
             WHERE event_type = 'TokenIssued' GROUP BY 1 ORDER BY 1",
        ),
    ]
}

/// Runs the queries in DuckDB over the export in `dir`: median of [`RUNS`]
/// per query, timed inside Python; prints one JSON object.
const DUCKDB_SCRIPT: &str = r#"
import json, statistics, sys, time
try:
    import duckdb
except ImportError:
    print(json.dumps({"error": "no duckdb"}))
    sys.exit(3)
d, qfile, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
qs = json.load(open(qfile))
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute("SET threads = 2")
con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{d}/events/*/*.parquet')")
def cell(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)
out = []
for q in qs:
    times, rows = [], None
    for _ in range(runs):
        t = time.perf_counter()
        rows = con.execute(q).fetchall()
        times.append((time.perf_counter() - t) * 1000.0)
    out.append({"ms": statistics.median(times), "rows": [[cell(v) for v in r] for r in rows]})
print(json.dumps({"version": duckdb.__version__, "threads": con.execute("SELECT current_setting('threads')").fetchone()[0], "results": out}))
"#;

struct Duck {
    version: String,
    threads: Value,
    results: Vec<(f64, Vec<Value>)>,
}

enum DuckOutcome {
    Ran(Duck),
    Missing,
    Failed(String),
}

fn run_duckdb(dir: &Path, queries: &[Query]) -> DuckOutcome {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = dir.join("duckdb_bench.py");
    let qfile = dir.join("queries.json");
    std::fs::write(&script, DUCKDB_SCRIPT).unwrap();
    let qs: Vec<&str> = queries.iter().map(|q| q.duckdb.as_str()).collect();
    std::fs::write(&qfile, serde_json::to_vec(&qs).unwrap()).unwrap();
    let out = match Command::new(&python)
        .arg(&script)
        .arg(dir)
        .arg(&qfile)
        .arg(RUNS.to_string())
        .output()
    {
        Ok(o) => o,
        Err(e) => return DuckOutcome::Failed(format!("{python}: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = match stdout.lines().last().map(serde_json::from_str) {
        Some(Ok(v)) => v,
        _ => {
            return DuckOutcome::Failed(format!(
                "{python} exited {}: {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    };
    if v["error"] == "no duckdb" {
        return DuckOutcome::Missing;
    }
    let results = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["ms"].as_f64().unwrap(), r["rows"].as_array().unwrap().clone()))
        .collect();
    DuckOutcome::Ran(Duck {
        version: v["version"].as_str().unwrap_or("?").to_owned(),
        threads: v["threads"].clone(),
        results,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() { dir_size(&e.path()) } else { m.len() };
    }
    total
}

/// Rows as JSON values the two engines print alike (numbers compared as
/// numbers).
fn same_rows(a: &[Value], b: &[Value]) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!("{} rows vs {} rows", a.len(), b.len()));
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let (x, y) = (x.as_array().unwrap(), y.as_array().unwrap());
        let eq = x.len() == y.len()
            && x.iter().zip(y).all(|(p, q)| match (p.as_f64(), q.as_f64()) {
                (Some(p), Some(q)) => p == q,
                _ => p == q,
            });
        if !eq {
            return Some(format!("row {i}: ours {x:?} vs DuckDB {y:?}"));
        }
    }
    None
}

fn no_kid(_: &str) -> Option<String> {
    None
}

fn main() {
    let total = positive_env("SQL_BENCH_EVENTS", 10_000_000.0) as u64;
    let memory_mb = positive_env("SQL_BENCH_MEMORY_MB", 512.0) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tmp = tempfile::Builder::new()
        .prefix("tokenledger-sql-bench-")
        .tempdir()
        .unwrap();

    println!("# tokenledger analyst SQL benchmark\n");
    print_machine("sql", tmp.path(), "temp dir");
    println!(
        "- {} events, 5 tenants ({BIG}: ~90 %), 30 days; per-query memory {memory_mb} MiB; median of {RUNS} runs\n",
        fmt_int(total as usize)
    );

    // 1-2. Generate and fold.
    let limits = Limits {
        memory_bytes: memory_mb << 20,
        timeout: Duration::from_secs(600),
        max_rows: 1_000_000,
    };
    let analytics = Analytics::new(no_kid, limits, 1);
    let mut generator = Generator::new(total);
    let (mut folding, mut generating) = (Duration::ZERO, Duration::ZERO);
    let mut types: std::collections::BTreeMap<String, usize> = Default::default();
    while !generator.done() {
        let t = Instant::now();
        let chunk = generator.chunk(CHUNK);
        generating += t.elapsed();
        for e in &chunk {
            *types.entry(e.event_type.clone()).or_default() += 1;
        }
        let t = Instant::now();
        analytics.apply(&chunk);
        folding += t.elapsed();
    }
    let mix: Vec<String> = types
        .iter()
        .map(|(k, v)| format!("{k} {:.1} %", *v as f64 * 100.0 / total as f64))
        .collect();
    println!("- mix: {}", mix.join(", "));
    println!(
        "- fold (`Analytics::apply`, chunks of {CHUNK}): {} events/s ({:.1} s; generating took {:.1} s more)",
        fmt_rate(total as f64 / folding.as_secs_f64()),
        folding.as_secs_f64(),
        generating.as_secs_f64()
    );
    let now = generator.now() + chrono::Duration::seconds(1);

    // 3. Export.
    let t = Instant::now();
    let snap = analytics.snapshot(BIG, now);
    let snapshot_time = t.elapsed();
    let events_rows: usize = snap.tables[0].2.iter().map(|b| b.num_rows()).sum();
    let events_bytes: usize = snap.tables[0].2.iter().map(|b| b.get_array_memory_size()).sum();
    let dir = tmp.path().join("export");
    let t = Instant::now();
    let written = export::write_export(&dir, snap.tables).expect("export");
    let export_time = t.elapsed();
    println!(
        "- tenant {BIG}: {} events, {:.0} MiB of Arrow in memory ({:.0} B/event); snapshot {:.0} ms",
        fmt_int(events_rows),
        events_bytes as f64 / (1 << 20) as f64,
        events_bytes as f64 / events_rows.max(1) as f64,
        ms(snapshot_time)
    );
    println!(
        "- export (`write_export`, Parquet/Snappy, events by date): {:.1} s, {:.0} MiB on disk; rows {:?}\n",
        export_time.as_secs_f64(),
        dir_size(&dir) as f64 / (1 << 20) as f64,
        written
    );

    // 4. Queries.
    let qs = queries();
    let mut ours = Vec::new();
    let mut snapshot_ms = Vec::new();
    for q in &qs {
        let mut times = Vec::new();
        let mut rows = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            let snap = analytics.snapshot(BIG, now);
            snapshot_ms.push(ms(t.elapsed()));
            let t = Instant::now();
            let answer = rt.block_on(analytics.query(snap, &q.ours));
            times.push(ms(t.elapsed()));
            match answer {
                Ok((schema, batches)) => {
                    rows = to_json(&schema, &batches)["rows"].as_array().unwrap().clone();
                }
                Err(e) => {
                    println!("!!! {}: our query failed: {e}", q.name);
                    rows.clear();
                }
            }
        }
        ours.push((median(times), rows));
    }

    let duck = run_duckdb(&dir, &qs);
    println!(
        "Snapshot per query (taken before each run, not in the times below): median {:.1} ms\n",
        median(snapshot_ms)
    );
    match &duck {
        DuckOutcome::Ran(d) => println!(
            "DuckDB {} (threads {}), same Parquet, `SET TimeZone = 'UTC'`\n",
            d.version, d.threads
        ),
        DuckOutcome::Missing => {
            println!("DuckDB is not installed for python3: `pip install duckdb=={DUCKDB_PIN}`; comparison skipped\n")
        }
        DuckOutcome::Failed(e) => println!("!!! DuckDB run failed; comparison skipped: {e}\n"),
    }
    println!("| query | rows | ours ms | DuckDB ms | ratio | ≤ {TARGET_RATIO}× |");
    println!("|---|---:|---:|---:|---:|---|");
    let mut mismatches = Vec::new();
    let mut ratios = Vec::new();
    for (i, q) in qs.iter().enumerate() {
        let (our_ms, our_rows) = &ours[i];
        match &duck {
            DuckOutcome::Ran(d) => {
                let (duck_ms, duck_rows) = &d.results[i];
                if let Some(why) = same_rows(our_rows, duck_rows) {
                    mismatches.push(format!("{}: {why}", q.name));
                }
                let ratio = our_ms / duck_ms;
                ratios.push(ratio);
                println!(
                    "| {} | {} | {our_ms:.1} | {duck_ms:.1} | {ratio:.2} | {} |",
                    q.name,
                    our_rows.len(),
                    if ratio <= TARGET_RATIO { "yes" } else { "**no**" }
                );
            }
            _ => println!("| {} | {} | {our_ms:.1} | – | – | – |", q.name, our_rows.len()),
        }
    }
    let sum_ours: f64 = ours.iter().map(|o| o.0).sum();
    let figure_name = format!(
        "analyst SQL over {} events: six queries, tenant {BIG} (sum of medians)",
        fmt_int(total as usize)
    );
    let target = "≤ 1.5× DuckDB's time";
    match &duck {
        DuckOutcome::Ran(d) => {
            let sum_duck: f64 = d.results.iter().map(|r| r.0).sum();
            let ratio = sum_ours / sum_duck;
            let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
            let (worst_i, worst) = ratios
                .iter()
                .copied()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or((0, f64::NAN));
            let over = ratios.iter().filter(|r| **r > TARGET_RATIO).count();
            let mut note = format!(
                "geometric mean of ratios {geo:.2}; {over} of {} queries over {TARGET_RATIO}×, worst: {} {worst:.2}×",
                ratios.len(),
                qs[worst_i].name
            );
            if !mismatches.is_empty() {
                note = format!("ANSWERS DIFFER in {} queries; {note}", mismatches.len());
            }
            figure(&Figure {
                bench: "sql",
                figure: figure_name,
                ours: sum_ours,
                unit: "ms",
                limit: Some(sum_duck),
                limit_what: format!("DuckDB {} (threads {}) on the same Parquet", d.version, d.threads),
                ratio: Some(ratio),
                target,
                met: Some(ratio <= TARGET_RATIO && mismatches.is_empty()),
                note,
            });
        }
        DuckOutcome::Missing => figure(&Figure {
            bench: "sql",
            figure: figure_name,
            ours: sum_ours,
            unit: "ms",
            limit: None,
            limit_what: "DuckDB: not measured".into(),
            ratio: None,
            target,
            met: None,
            note: format!("skipped: DuckDB is not installed for python3 (`pip install duckdb=={DUCKDB_PIN}`)"),
        }),
        DuckOutcome::Failed(e) => figure(&Figure {
            bench: "sql",
            figure: figure_name,
            ours: sum_ours,
            unit: "ms",
            limit: None,
            limit_what: "DuckDB: not measured".into(),
            ratio: None,
            target,
            met: None,
            note: format!(
                "skipped: the DuckDB run failed: {}",
                e.lines().next().unwrap_or_default()
            ),
        }),
    }
    if !ratios.is_empty() {
        let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
        let sum_duck: f64 = match &duck {
            DuckOutcome::Ran(d) => d.results.iter().map(|r| r.0).sum(),
            _ => f64::NAN,
        };
        println!(
            "\nAll six: ours {sum_ours:.0} ms, DuckDB {sum_duck:.0} ms, ratio of sums {:.2}, geometric mean of ratios {geo:.2} (target ≤ {TARGET_RATIO})",
            sum_ours / sum_duck
        );
    }
    if mismatches.is_empty() {
        if matches!(duck, DuckOutcome::Ran(_)) {
            println!("\nAnswers agree: every query gave the same rows in both engines.");
        }
    } else {
        println!("\n!!!!!!!! ANSWERS DIFFER between tokenledger and DuckDB !!!!!!!!");
        for m in &mismatches {
            println!("!!! {m}");
        }
    }
}
