//! Mint and verify over HTTP against the real `tokenledger` binary, each
//! figure measured beside its limit in the same run, at the same
//! concurrency, on the same cores and filesystem (DESIGN.md "Figures to
//! reach"):
//!
//! * **mint**: `POST /v1/tokens` (`v4.public`, durable `TokenIssued`).
//!   Limit: min(bare `pasetors` v4.public sign loop, bare group-commit append
//!   loop).
//! * **verify**: `POST /v1/tokens/verify` of pre-minted tokens (each verify
//!   durably records a `TokenUsed`). Limit: min(bare verify loop, bare
//!   append loop).
//!
//! At 1, 16 and 64 concurrent clients. Each client is a tokio task with its
//! own `reqwest` client, so its own keep-alive HTTP/1.1 connection, sending
//! one request at a time. The bare sign and verify loops run on
//! min(concurrency, cores) OS threads through `tokenledger_tokens::paseto`;
//! the bare append loop is `concurrency` tokio tasks, each appending one
//! `TokenIssued`-shaped event per append to a new stream with `NoStream`, on
//! an embedded `RedbStore` in a temp dir on the same filesystem as the
//! server's data dir.
//!
//! Every measurement runs 0.5 s of warm-up and then `BENCH_SECONDS` (default
//! 3) seconds. A healthz round trip ("HTTP floor") and the CPU time of the
//! server's threads and of this process during each HTTP measurement are
//! printed below the table, to show where the time goes.
//!
//! The server is `TOKENLEDGER_BIN`, or the release `tokenledger` built with
//! `cargo build --release` and found through `cargo metadata`. It listens on
//! a free loopback port with a temp data dir, and is killed at the end.
//!
//! Run: `cargo bench -p tokenledger-benches --bench tokens`
//! (`BENCH_SECONDS=1 cargo bench -p tokenledger-benches --bench tokens` for
//! a quick run). At the default it runs for about 1.5 minutes.

mod common;

use common::{AUDIENCE, Figure, ISSUER, SCOPE, TENANT, figure, print_machine, setup, start_server};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use tokenledger_domain::Metadata;
use tokenledger_domain::events::{CURRENT_SCHEMA_VERSION, DomainEvent, KeyPurpose, TokenFormat, TokenIssued};
use tokenledger_store::{EventStore, ExpectedRevision, NewEvent, RedbOptions, RedbStore, StreamId};
use tokenledger_testkit::{
    Secrets as Creds, Server, Statuses, TOKIO_THREADS, ThreadTime, WRITER_THREAD, fmt_rate, positive_env, request,
    thread_time,
};
use tokenledger_tokens::keys::{self, GeneratedKey};
use tokenledger_tokens::paseto::{self, TokenClaims};
use uuid::Uuid;

/// Client counts measured.
const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// The concurrency the design targets are stated at.
const TARGET_AT: usize = 64;
/// Warm-up before every measurement.
const WARM_UP: Duration = Duration::from_millis(500);
/// Pre-minted tokens the verify clients cycle through.
const POOL: usize = 1024;

fn main() {
    let seconds = bench_seconds();
    let measure = Duration::from_secs_f64(seconds);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let server = start_server("tokenledger-bench-server-");
    let creds = rt.block_on(setup(&server.base()));
    let pool = Arc::new(rt.block_on(premint(&server.base(), &creds.issuer)));

    println!("# tokenledger mint / verify benchmark\n");
    print_machine(
        "tokens",
        &std::env::temp_dir(),
        "temp dir (server data dir and bare append store)",
    );
    println!(
        "- server: {} (pid {}), {}",
        server.bin().display(),
        server.pid(),
        server.base()
    );
    println!(
        "- {seconds} s per measurement after {} s warm-up; HTTP/1.1 keep-alive, one connection per client; \
         bare sign/verify on min(concurrency, {cores}) threads\n",
        WARM_UP.as_secs_f64()
    );

    let key = Arc::new(keys::generate(KeyPurpose::Public).expect("generate a v4.public key"));
    let bare_tokens = Arc::new(bare_tokens(&key));
    let event = Arc::new(IssuedShape::new());

    let mut rows = Vec::new();
    for &c in &CONCURRENCY {
        let threads = c.min(cores);
        let sign = bare_loop(threads, measure, {
            let key = key.clone();
            move || sign_loop(&key)
        });
        let verify = bare_loop(threads, measure, {
            let (key, tokens) = (key.clone(), bare_tokens.clone());
            move || verify_loop(&key, &tokens)
        });
        let append = rt.block_on(append_loop(c, measure, event.clone()));
        let floor = rt.block_on(http_run(&server, Kind::Healthz, c, measure, &creds, pool.clone()));
        let mint = rt.block_on(http_run(&server, Kind::Mint, c, measure, &creds, pool.clone()));
        let ver = rt.block_on(http_run(&server, Kind::Verify, c, measure, &creds, pool.clone()));
        rows.push(Row {
            c,
            threads,
            sign,
            verify,
            append,
            floor,
            mint,
            ver,
        });
    }

    println!("| figure | concurrency | ours ops/s | p50 ms | p99 ms | limit ops/s | ratio | target |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let at_target = r.c == TARGET_AT;
        let limit = r.sign.min(r.append.rate());
        let ratio = r.mint.rate() / limit;
        let target = if at_target {
            let met = ratio >= 0.5 && r.mint.pct(0.99) < Duration::from_millis(5);
            figure(&Figure {
                bench: "tokens",
                figure: format!("mint over HTTP (v4.public, durable TokenIssued), {} clients", r.c),
                ours: r.mint.rate(),
                unit: "ops/s",
                limit: Some(limit),
                limit_what: format!(
                    "min(bare sign loop {}, bare group-commit append loop {}) ops/s",
                    fmt_rate(r.sign),
                    fmt_rate(r.append.rate())
                ),
                ratio: Some(ratio),
                target: "≥ 50 %; p99 < 5 ms",
                met: Some(met),
                note: format!(
                    "p50 {} ms, p99 {} ms; {} errors; {seconds} s",
                    ms(r.mint.pct(0.5)),
                    ms(r.mint.pct(0.99)),
                    r.mint.errors
                ),
            });
            format!(">= 50 % with p99 < 5 ms ({})", if met { "met" } else { "MISSED" })
        } else {
            "(at 64)".to_owned()
        };
        println!(
            "| mint over HTTP (v4.public, durable TokenIssued) | {} | {} | {} | {} | {} ({}) | {:.0} % | {target} |",
            r.c,
            fmt_rate(r.mint.rate()),
            ms(r.mint.pct(0.5)),
            ms(r.mint.pct(0.99)),
            fmt_rate(limit),
            if r.sign <= r.append.rate() { "sign" } else { "append" },
            100.0 * ratio,
        );
    }
    for r in &rows {
        let at_target = r.c == TARGET_AT;
        let limit = r.verify.min(r.append.rate());
        let ratio = r.ver.rate() / limit;
        let target = if at_target {
            figure(&Figure {
                bench: "tokens",
                figure: format!("verify over HTTP (block list, durable TokenUsed), {} clients", r.c),
                ours: r.ver.rate(),
                unit: "ops/s",
                limit: Some(limit),
                limit_what: format!(
                    "min(bare verify loop {}, bare append loop {}) ops/s",
                    fmt_rate(r.verify),
                    fmt_rate(r.append.rate())
                ),
                ratio: Some(ratio),
                target: "≥ 50 %",
                met: Some(ratio >= 0.5),
                note: format!(
                    "p50 {} ms, p99 {} ms; {} errors; {seconds} s",
                    ms(r.ver.pct(0.5)),
                    ms(r.ver.pct(0.99)),
                    r.ver.errors
                ),
            });
            format!(">= 50 % ({})", if ratio >= 0.5 { "met" } else { "MISSED" })
        } else {
            "(at 64)".to_owned()
        };
        println!(
            "| verify over HTTP (durable TokenUsed) | {} | {} | {} | {} | {} ({}) | {:.0} % | {target} |",
            r.c,
            fmt_rate(r.ver.rate()),
            ms(r.ver.pct(0.5)),
            ms(r.ver.pct(0.99)),
            fmt_rate(limit),
            if r.verify <= r.append.rate() {
                "verify"
            } else {
                "append"
            },
            100.0 * ratio,
        );
    }

    println!("\n## Limits and the HTTP floor, same run\n");
    println!(
        "| concurrency | bare sign ops/s (threads) | bare verify ops/s | bare append ops/s | append p50 / p99 ms \
         | healthz over HTTP ops/s | healthz p50 / p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} ({}) | {} | {} | {} / {} | {} | {} / {} |",
            r.c,
            fmt_rate(r.sign),
            r.threads,
            fmt_rate(r.verify),
            fmt_rate(r.append.rate()),
            ms(r.append.pct(0.5)),
            ms(r.append.pct(0.99)),
            fmt_rate(r.floor.rate()),
            ms(r.floor.pct(0.5)),
            ms(r.floor.pct(0.99)),
        );
    }

    println!("\n## Where the time goes\n");
    println!("CPU time during each measured window, from /proc/<pid>/task/*/schedstat: per operation (µs), and in");
    println!("cores (1.00 = one core busy for the whole window). 'waiting' is time the server's threads were runnable");
    println!(
        "but not on a CPU. 'machine busy' is every process (from /proc/stat); 'others' is what neither the server"
    );
    println!(
        "nor this process used, i.e. other work on the machine. On one thread a bare sign costs ~{:.0} µs and a",
        1e6 / rows[0].sign
    );
    println!(
        "bare verify ~{:.0} µs (1 s / the single-thread rate); the bare append rows are this process's own store.\n",
        1e6 / rows[0].verify
    );
    let one = &rows[0];
    println!(
        "One client, median latencies: mint {} ms and verify {} ms over HTTP, against a bare durable append {} ms \
         + a bare sign {} ms / verify {} ms + an HTTP round trip (healthz) {} ms.\n",
        ms(one.mint.pct(0.5)),
        ms(one.ver.pct(0.5)),
        ms(one.append.pct(0.5)),
        ms(Duration::from_secs_f64(1.0 / one.sign)),
        ms(Duration::from_secs_f64(1.0 / one.verify)),
        ms(one.floor.pct(0.5)),
    );
    println!(
        "| figure | concurrency | ops/s | server tokio workers µs/op | server store writer µs/op | server other µs/op \
         | server total µs/op (cores) | server waiting (cores) | bench tokio / store writer / all µs/op (cores) \
         | machine busy (others) cores | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        r.append.print_cpu("bare append", r.c, 0);
        for (name, run) in [("healthz", &r.floor), ("mint", &r.mint), ("verify", &r.ver)] {
            run.timed.print_cpu(name, r.c, run.errors);
        }
    }
    for r in &rows {
        for (name, run) in [("healthz", &r.floor), ("mint", &r.mint), ("verify", &r.ver)] {
            if let Some(e) = &run.first_error {
                println!("\n{name} at {}: {} errors; first: {e}", r.c, run.errors);
            }
        }
    }
    drop(server);
}

/// One concurrency's measurements.
struct Row {
    c: usize,
    threads: usize,
    sign: f64,
    verify: f64,
    append: Timed,
    floor: HttpRun,
    mint: HttpRun,
    ver: HttpRun,
}

/// `BENCH_SECONDS` (default 3).
fn bench_seconds() -> f64 {
    positive_env("BENCH_SECONDS", 3.0)
}

// ---------------------------------------------------------------- the server

/// [`POOL`] tokens minted over HTTP (16 at a time), valid for an hour.
async fn premint(base: &str, issuer: &str) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut out = Vec::with_capacity(POOL);
    for chunk in 0..POOL / 16 {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (http, url, issuer) = (http.clone(), format!("{base}/v1/tokens"), issuer.to_owned());
                let body = json!({
                    "subject": format!("pool-{}", chunk * 16 + i), "audience": AUDIENCE, "scope": SCOPE,
                    "ttl_seconds": 3600, "format": "v4.public",
                });
                tokio::spawn(async move {
                    request(
                        &http,
                        reqwest::Method::POST,
                        &url,
                        &issuer,
                        Some(&body),
                        Statuses::Success,
                    )
                    .await
                })
            })
            .collect();
        for h in handles {
            let v = h.await.expect("mint task");
            out.push(v["token"].as_str().expect("a token").to_owned());
        }
    }
    out
}

// ------------------------------------------------------------ HTTP clients

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Healthz,
    Mint,
    Verify,
}

/// Latencies of the requests completed inside the measured window, errors,
/// and CPU time over the window.
struct HttpRun {
    timed: Timed,
    errors: usize,
    first_error: Option<String>,
}

impl HttpRun {
    fn rate(&self) -> f64 {
        self.timed.rate()
    }

    fn pct(&self, p: f64) -> Duration {
        self.timed.pct(p)
    }
}

/// Runs `c` clients for warm-up plus `measure`, each with its own
/// connection, sending `kind` requests back to back.
async fn http_run(
    server: &Server,
    kind: Kind,
    c: usize,
    measure: Duration,
    creds: &Creds,
    pool: Arc<Vec<String>>,
) -> HttpRun {
    let base = server.base();
    let pid = server.pid();
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (warm_end, end) = (start + WARM_UP, start + WARM_UP + measure);
    let tasks: Vec<_> = (0..c)
        .map(|task| {
            let (url, token) = match kind {
                Kind::Healthz => (format!("{base}/healthz"), String::new()),
                Kind::Mint => (format!("{base}/v1/tokens"), creds.issuer.clone()),
                Kind::Verify => (format!("{base}/v1/tokens/verify"), creds.validator.clone()),
            };
            let (counter, pool) = (counter.clone(), pool.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .http1_only()
                    .pool_max_idle_per_host(1)
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("http client");
                let mut lat = Vec::with_capacity(1 << 14);
                let (mut errors, mut first_error) = (0usize, None);
                let mut i = task;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let req = match kind {
                        Kind::Healthz => http.get(&url),
                        Kind::Mint => {
                            let n = counter.fetch_add(1, Ordering::Relaxed);
                            http.post(&url).bearer_auth(&token).body(mint_body(n))
                        }
                        Kind::Verify => {
                            i = (i + 1) % pool.len();
                            http.post(&url).bearer_auth(&token).body(verify_body(&pool[i]))
                        }
                    }
                    .header(reqwest::header::CONTENT_TYPE, "application/json");
                    let outcome = match req.send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            match resp.bytes().await {
                                Ok(body) => check(kind, status, &body),
                                Err(e) => Err(e.to_string()),
                            }
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    let t1 = Instant::now();
                    match outcome {
                        Ok(()) => {
                            if t0 >= warm_end && t1 <= end {
                                lat.push(t1 - t0);
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                (lat, errors, first_error)
            })
        })
        .collect();
    // CPU accounting over the measured window only.
    tokio::time::sleep_until(warm_end.into()).await;
    let cpu0 = Cpu::now(Some(pid));
    tokio::time::sleep_until(end.into()).await;
    let cpu = Cpu::now(Some(pid)) - cpu0;
    let mut latencies = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for t in tasks {
        let (lat, e, fe) = t.await.expect("client task");
        latencies.extend(lat);
        errors += e;
        if first_error.is_none() {
            first_error = fe;
        }
    }
    HttpRun {
        timed: Timed::new(latencies, measure, cpu),
        errors,
        first_error,
    }
}

fn mint_body(n: u64) -> Vec<u8> {
    format!(
        r#"{{"subject":"bench-{n}","audience":"{AUDIENCE}","scope":"{SCOPE}","ttl_seconds":300,"format":"v4.public"}}"#
    )
    .into_bytes()
}

fn verify_body(token: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"token": token, "audience": AUDIENCE})).expect("verify body")
}

/// A correct answer: healthz 200, mint 201 with a token, verify 200 active.
fn check(kind: Kind, status: u16, body: &[u8]) -> Result<(), String> {
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    let ok = match kind {
        Kind::Healthz => status == 200,
        Kind::Mint => status == 201 && contains(b"\"token\":\"v4.public."),
        Kind::Verify => status == 200 && contains(b"\"active\":true"),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{status} {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ))
    }
}

// ------------------------------------------------------------- bare loops

/// Operations in a measured window, their latencies, and the CPU time spent
/// meanwhile.
struct Timed {
    latencies: Vec<Duration>,
    window: Duration,
    cpu: Cpu,
}

impl Timed {
    fn new(mut latencies: Vec<Duration>, window: Duration, cpu: Cpu) -> Timed {
        latencies.sort_unstable();
        Timed { latencies, window, cpu }
    }

    /// A row of the "where the time goes" table.
    fn print_cpu(&self, name: &str, c: usize, errors: usize) {
        let ops = self.latencies.len().max(1) as f64;
        let window = self.window.as_secs_f64();
        let per_op = |t: ThreadTime| format!("{:.0}", t.on_cpu.as_secs_f64() * 1e6 / ops);
        let cores = |d: Duration| format!("{:.2}", d.as_secs_f64() / window);
        let cpu = &self.cpu;
        let server = cpu.server_workers + cpu.server_writer + cpu.server_other;
        let ours = server.on_cpu + cpu.bench_all.on_cpu;
        println!(
            "| {name} | {c} | {} | {} | {} | {} | {} ({}) | {} | {} / {} / {} ({}) | {} ({}) | {} |",
            fmt_rate(self.rate()),
            per_op(cpu.server_workers),
            per_op(cpu.server_writer),
            per_op(cpu.server_other),
            per_op(server),
            cores(server.on_cpu),
            cores(server.runnable),
            per_op(cpu.bench_workers),
            per_op(cpu.bench_writer),
            per_op(cpu.bench_all),
            cores(cpu.bench_all.on_cpu),
            cores(cpu.machine_busy),
            cores(cpu.machine_busy.saturating_sub(ours)),
            errors,
        );
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.window.as_secs_f64()
    }

    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[i]
    }
}

/// Runs `work` on `threads` OS threads for warm-up plus `measure`; `work`
/// gives a closure doing one operation. Returns operations per second in the
/// measured window.
fn bare_loop<W, F>(threads: usize, measure: Duration, work: W) -> f64
where
    W: Fn() -> F + Clone + Send + 'static,
    F: FnMut(),
{
    let start = Instant::now();
    let (warm_end, end) = (start + WARM_UP, start + WARM_UP + measure);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let work = work.clone();
            std::thread::spawn(move || {
                let mut op = work();
                let mut n = 0u64;
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    op();
                    if now >= warm_end && Instant::now() <= end {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let ops: u64 = handles.into_iter().map(|h| h.join().expect("bare loop thread")).sum();
    ops as f64 / measure.as_secs_f64()
}

/// Claims as the server signs them for a mint request.
fn claims(n: u64) -> TokenClaims {
    let now = Utc::now();
    TokenClaims::new(
        "tokenledger",
        &format!("bench-{n}"),
        AUDIENCE,
        &Uuid::new_v4().to_string(),
        SCOPE,
        ISSUER,
        now,
        now + chrono::Duration::seconds(300),
    )
}

/// One bare sign per call: claims, JSON, v4.public signature.
fn sign_loop(key: &GeneratedKey) -> impl FnMut() + use<> {
    let sk = key.signing_key().expect("signing key");
    let kid = key.kid.clone();
    let mut n = 0u64;
    move || {
        n += 1;
        let t = paseto::mint(&sk, &kid, &claims(n)).expect("mint");
        std::hint::black_box(t);
    }
}

/// One bare verify per call: signature and claims of a pre-minted token.
fn verify_loop(key: &GeneratedKey, tokens: &Arc<Vec<String>>) -> impl FnMut() + use<> {
    let vk = key.verifying_key().expect("verifying key");
    let tokens = tokens.clone();
    let mut i = 0usize;
    move || {
        i = (i + 1) % tokens.len();
        let c = paseto::open(&tokens[i], &vk).expect("open");
        std::hint::black_box(c);
    }
}

fn bare_tokens(key: &GeneratedKey) -> Vec<String> {
    let sk = key.signing_key().expect("signing key");
    (0..256)
        .map(|n| paseto::mint(&sk, &key.kid, &claims(n)).expect("mint"))
        .collect()
}

/// The `data` and `metadata` of a `TokenIssued` as the server appends it.
struct IssuedShape {
    data: Value,
    metadata: Value,
}

impl IssuedShape {
    fn new() -> Self {
        let now = Utc::now();
        let key = keys::generate(KeyPurpose::Public).expect("key");
        let issued = DomainEvent::TokenIssued(TokenIssued {
            token_id: Uuid::new_v4().to_string(),
            tenant: TENANT.into(),
            issuer: "tokenledger".into(),
            subject: "bench-0".into(),
            client_id: ISSUER.into(),
            audience: AUDIENCE.into(),
            scope: SCOPE.into(),
            issued_at: now,
            expires_at: now + chrono::Duration::seconds(300),
            not_before: now,
            format: TokenFormat::V4Public,
            kid: Some(key.kid),
            cnf: None,
            parent_token_id: None,
            context: None,
        });
        let (_, data) = issued.to_parts().expect("TokenIssued encodes");
        let metadata = serde_json::to_value(Metadata {
            tenant: TENANT.into(),
            actor: ISSUER.into(),
            schema_version: CURRENT_SCHEMA_VERSION,
            correlation_id: None,
            causation_id: None,
            source_time: None,
        })
        .expect("metadata encodes");
        Self { data, metadata }
    }
}

/// `c` tokio tasks appending one event per append to a new stream with
/// `NoStream`, on a new store in a fresh temp dir (the OS temp dir, where
/// the server's data dir also is).
async fn append_loop(c: usize, measure: Duration, shape: Arc<IssuedShape>) -> Timed {
    let dir = tempfile::Builder::new()
        .prefix("tokenledger-bench-append-")
        .tempdir()
        .expect("temp dir");
    let store = RedbStore::open(RedbOptions::new(dir.path().join("store.redb"))).expect("open the store");
    let start = Instant::now();
    let (warm_end, end) = (start + WARM_UP, start + WARM_UP + measure);
    let tasks: Vec<_> = (0..c)
        .map(|_| {
            let (store, shape) = (store.clone(), shape.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 14);
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let stream = StreamId::new(TENANT, format!("token-{}", Uuid::new_v4()));
                    let ev = NewEvent::new(
                        Uuid::new_v4(),
                        "TokenIssued",
                        shape.data.clone(),
                        shape.metadata.clone(),
                    );
                    store
                        .append(&stream, ExpectedRevision::NoStream, vec![ev])
                        .await
                        .expect("append");
                    let t1 = Instant::now();
                    if t0 >= warm_end && t1 <= end {
                        lat.push(t1 - t0);
                    }
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep_until(warm_end.into()).await;
    let cpu0 = Cpu::now(None);
    tokio::time::sleep_until(end.into()).await;
    let cpu = Cpu::now(None) - cpu0;
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("append task"));
    }
    store.close().await;
    Timed::new(latencies, measure, cpu)
}

// ------------------------------------------------------------ CPU accounting

/// CPU time so far: the server's tokio workers, its store writer and its
/// other threads; this process's tokio workers, store writer (the bare
/// append loop) and all its threads; and the whole machine's busy time.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    server_workers: ThreadTime,
    server_writer: ThreadTime,
    server_other: ThreadTime,
    bench_workers: ThreadTime,
    bench_writer: ThreadTime,
    bench_all: ThreadTime,
    /// Non-idle time of all cores, from `/proc/stat`.
    machine_busy: Duration,
}

impl Cpu {
    fn now(server: Option<u32>) -> Cpu {
        let mut cpu = Cpu {
            bench_workers: thread_time(None, TOKIO_THREADS),
            bench_writer: thread_time(None, WRITER_THREAD),
            bench_all: thread_time(None, ""),
            machine_busy: machine_busy(),
            ..Cpu::default()
        };
        if let Some(pid) = server {
            let all = thread_time(Some(pid), "");
            cpu.server_workers = thread_time(Some(pid), TOKIO_THREADS);
            cpu.server_writer = thread_time(Some(pid), WRITER_THREAD);
            cpu.server_other = all - cpu.server_workers - cpu.server_writer;
        }
        cpu
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, rhs: Cpu) -> Cpu {
        Cpu {
            server_workers: self.server_workers - rhs.server_workers,
            server_writer: self.server_writer - rhs.server_writer,
            server_other: self.server_other - rhs.server_other,
            bench_workers: self.bench_workers - rhs.bench_workers,
            bench_writer: self.bench_writer - rhs.bench_writer,
            bench_all: self.bench_all - rhs.bench_all,
            machine_busy: self.machine_busy.saturating_sub(rhs.machine_busy),
        }
    }
}

/// Busy time of all cores (user, nice, system, irq, softirq, steal) from
/// the first line of `/proc/stat`, in USER_HZ = 100 ticks.
fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 5 | 6 | 7))
        .map(|(_, v)| v.parse::<u64>().unwrap_or(0))
        .sum();
    Duration::from_millis(ticks * 10)
}

// -------------------------------------------------------------- formatting

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}
