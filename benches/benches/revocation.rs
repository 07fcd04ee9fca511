//! Revocation → refused by a validator following the block-list feed
//! (DESIGN.md "Figures to reach": < 1 s).
//!
//! Against the release `tokenledger` binary: a `tokenledger-validator`
//! connects as a `validator` principal and follows the feed (long poll,
//! `wait=25`). Then, `BENCH_N` times (default 50): an issuer mints a
//! `v4.public` token over HTTP, the validator accepts it locally, and after
//! a pause (so the feed's long poll is idle, as in steady state) an admin
//! revokes it with `POST /v1/revocations`. A watcher task wakes on every
//! advance of the validator's feed position and verifies the token locally;
//! the moment that verification answers `revoked` is the refusal.
//!
//! Printed: p50 / p90 / p99 / max, in ms, of
//!
//! * revocation **answered** → refused locally (negative when the feed
//!   brought the entry before the revoking client had read its answer: the
//!   ledger updates its block list before it acknowledges),
//! * revocation **sent** → refused locally,
//! * the revocation request itself (sent → answered),
//!
//! and the goal (< 1 s). A measurement, not a test: nothing is asserted.
//!
//! The server is `TOKENLEDGER_BIN`, or the release `tokenledger` built with
//! `cargo build --release` and found through `cargo metadata`; it listens
//! on a free loopback port with a temp data dir and is killed at the end.
//!
//! Run: `cargo bench -p tokenledger-benches --bench revocation`.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokenledger_validator::{Reason, Validator, ValidatorOptions};

const BOOTSTRAP: &str = "bench-bootstrap-secret-0123456789abcdef0123";
const TENANT: &str = "bench";
const ISSUER: &str = "bench-issuer";
const VALIDATOR: &str = "bench-validator";
const AUDIENCE: &str = "api://orders";
const SCOPE: &str = "orders:read";
/// How long the server may take to become ready.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long one revocation may take to be refused before it counts as missed.
const GIVE_UP: Duration = Duration::from_secs(10);
/// The design's goal.
const GOAL: Duration = Duration::from_secs(1);

fn main() {
    let n = bench_n();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let bin = binary();
    let server = Server::start(&bin);
    let base = server.base();
    println!("# revocation → refused by a validator following the block-list feed\n");
    println!(
        "- server: {} (pid {}), {base}; {n} revocations, one at a time, after a pause of 50-250 ms each",
        bin.display(),
        server.pid()
    );
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("- machine: {cores} cores; the validator runs in this process, on the same cores as the server\n");

    let result = rt.block_on(run(&base, n));
    drop(server);
    let Run {
        from_answer,
        from_send,
        request,
        missed,
    } = result;

    println!("| measure | n | p50 ms | p90 ms | p99 ms | max ms | goal |");
    println!("|---|---|---|---|---|---|---|");
    let row = |name: &str, v: &[f64], goal: bool| {
        let goal = if goal {
            let met = !v.is_empty() && pct(v, 1.0) < GOAL.as_secs_f64() * 1e3 && missed == 0;
            format!("< {} ms ({})", GOAL.as_millis(), if met { "met" } else { "MISSED" })
        } else {
            "–".to_owned()
        };
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {goal} |",
            v.len(),
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            pct(v, 1.0),
        );
    };
    row("revocation answered → refused locally", &from_answer, true);
    row("revocation sent → refused locally", &from_send, true);
    row("revocation request (sent → answered)", &request, false);
    if missed > 0 {
        println!("\n{missed} revocations were not refused locally within {GIVE_UP:?}.");
    }
}

/// `BENCH_N` (default 50).
fn bench_n() -> usize {
    match std::env::var("BENCH_N") {
        Err(_) => 50,
        Ok(s) => match s.trim().parse::<usize>() {
            Ok(v) if v > 0 => v,
            _ => panic!("BENCH_N must be a positive integer, not {s:?}"),
        },
    }
}

/// The measurements, in ms.
struct Run {
    from_answer: Vec<f64>,
    from_send: Vec<f64>,
    request: Vec<f64>,
    missed: usize,
}

async fn run(base: &str, n: usize) -> Run {
    let creds = setup(base).await;
    let validator = Validator::connect(base, &creds.validator, AUDIENCE, ValidatorOptions::default())
        .await
        .expect("the validator connects");
    let http = reqwest::Client::new();
    let mut out = Run {
        from_answer: Vec::with_capacity(n),
        from_send: Vec::with_capacity(n),
        request: Vec::with_capacity(n),
        missed: 0,
    };
    for i in 0..n {
        let minted = call(
            &http,
            reqwest::Method::POST,
            format!("{base}/v1/tokens"),
            &creds.issuer,
            &json!({"subject": format!("user-{i}"), "audience": AUDIENCE, "scope": SCOPE,
                    "ttl_seconds": 600, "format": "v4.public"}),
        )
        .await;
        let token = minted["token"].as_str().expect("a token").to_owned();
        let token_id = minted["token_id"].as_str().expect("a token id").to_owned();
        // The first token of a key the validator has not fetched yet is
        // `unknown_kid` until the refresh that verdict asks for.
        let t0 = Instant::now();
        loop {
            let verdict = validator.verify(&token, None);
            if verdict.is_active() {
                break;
            }
            assert!(
                t0.elapsed() < GIVE_UP,
                "a fresh token does not verify locally: {verdict:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Steady state: the feed's long poll is waiting when the revocation comes.
        tokio::time::sleep(Duration::from_millis(50 + (i as u64 * 37) % 200)).await;

        // The watcher: wakes on every advance of the feed position and checks the token.
        // The position is read before the revocation is sent, and before each
        // verification, so no advance can slip between a check and the next wait.
        let watcher = {
            let (v, token) = (validator.clone(), token.clone());
            let mut next = v.feed_position().unwrap_or(0) + 1;
            tokio::spawn(async move {
                loop {
                    v.wait_for_position(next).await;
                    let seen = v.feed_position().unwrap_or(0);
                    if v.verify(&token, None).reason() == Some(Reason::Revoked) {
                        return Instant::now();
                    }
                    next = seen + 1;
                }
            })
        };
        let sent = Instant::now();
        call(
            &http,
            reqwest::Method::POST,
            format!("{base}/v1/revocations"),
            &creds.admin,
            &json!({"token_id": token_id, "reason": "revocation bench"}),
        )
        .await;
        let answered = Instant::now();
        match tokio::time::timeout(GIVE_UP, watcher).await {
            Ok(Ok(refused)) => {
                let signed_ms = |from: Instant| {
                    if refused >= from {
                        (refused - from).as_secs_f64() * 1e3
                    } else {
                        -(from - refused).as_secs_f64() * 1e3
                    }
                };
                out.from_answer.push(signed_ms(answered));
                out.from_send.push(signed_ms(sent));
                out.request.push((answered - sent).as_secs_f64() * 1e3);
            }
            _ => out.missed += 1,
        }
    }
    validator.shutdown().await;
    let stats = validator.stats();
    let refused: Vec<String> = stats
        .rejected
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{n} {r}"))
        .collect();
    println!(
        "- validator after the run: {} verified, refused [{}] (unknown_kid: the first token of the tenant's \
         first key, until the refresh it asks for), {} uses reported, {} dropped, {} feed errors\n",
        stats.verified,
        refused.join(", "),
        stats.reported,
        stats.dropped,
        stats.feed_errors
    );
    out
}

/// Nearest-rank percentile of `v` (unsorted), `p` in 0..=1.
fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

// ---------------------------------------------------------------- the server

/// The `tokenledger` binary: `TOKENLEDGER_BIN`, or a release build.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TOKENLEDGER_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "TOKENLEDGER_BIN={} is not a file", p.display());
        return p;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let workspace = env!("CARGO_MANIFEST_DIR");
    let status = Command::new(&cargo)
        .current_dir(workspace)
        .args([
            "build",
            "-q",
            "--release",
            "-p",
            "tokenledger-server",
            "--bin",
            "tokenledger",
        ])
        .status()
        .expect("running cargo build");
    assert!(status.success(), "cargo build of tokenledger failed: {status}");
    let meta = Command::new(&cargo)
        .current_dir(workspace)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .expect("running cargo metadata");
    assert!(meta.status.success(), "cargo metadata failed: {}", meta.status);
    let meta: Value = serde_json::from_slice(&meta.stdout).expect("cargo metadata JSON");
    let target = meta["target_directory"]
        .as_str()
        .expect("target_directory in cargo metadata");
    let exe = Path::new(target)
        .join("release")
        .join(format!("tokenledger{}", std::env::consts::EXE_SUFFIX));
    assert!(exe.is_file(), "no binary at {}", exe.display());
    exe
}

/// A `tokenledger serve` process on a loopback port with a temp data dir;
/// dropping it kills the process.
struct Server {
    tmp: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Server {
    fn start(bin: &Path) -> Server {
        let tmp = tempfile::Builder::new()
            .prefix("tokenledger-bench-revocation-")
            .tempdir()
            .expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let log = std::fs::File::create(tmp.path().join("server.log")).expect("server log file");
        let child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("TOKENLEDGER_BOOTSTRAP_TOKEN", BOOTSTRAP)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning tokenledger");
        let mut s = Server { tmp, child, port };
        s.wait_ready();
        s
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self) {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tokenledger exited with {status} before it was ready:\n{}", self.log());
            }
            if raw_get_status(self.port, "/readyz") == Some(200) {
                return;
            }
            assert!(
                t0.elapsed() < PATIENCE,
                "/readyz not 200 within {PATIENCE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of a plain `GET path` on the loopback port (no async runtime).
fn raw_get_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// One request that must answer 2xx; the JSON body.
async fn call(http: &reqwest::Client, method: reqwest::Method, url: String, token: &str, body: &Value) -> Value {
    let resp = http
        .request(method.clone(), &url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert!((200..300).contains(&status), "{method} {url} -> {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// The secrets of the principals the bench uses.
struct Creds {
    admin: String,
    issuer: String,
    validator: String,
}

/// Tenant `bench`: its admin, an issuer allowed `v4.public` for
/// `api://orders`, and a validator.
async fn setup(base: &str) -> Creds {
    let http = reqwest::Client::new();
    let post = reqwest::Method::POST;
    let principals = format!("{base}/v1/principals");
    let secret = |v: Value| v["secret"].as_str().expect("a secret").to_owned();
    let admin = secret(
        call(
            &http,
            post.clone(),
            principals.clone(),
            BOOTSTRAP,
            &json!({"name": "bench-admin", "role": "admin", "tenant": TENANT}),
        )
        .await,
    );
    let issuer = secret(
        call(
            &http,
            post.clone(),
            principals.clone(),
            &admin,
            &json!({"name": ISSUER, "role": "issuer"}),
        )
        .await,
    );
    let validator = secret(
        call(
            &http,
            post,
            principals,
            &admin,
            &json!({"name": VALIDATOR, "role": "validator"}),
        )
        .await,
    );
    call(
        &http,
        reqwest::Method::PUT,
        format!("{base}/v1/clients/{ISSUER}/policy"),
        &admin,
        &json!({
            "audiences": {AUDIENCE: {"scopes": [SCOPE], "max_ttl_seconds": 3600}},
            "formats": ["v4.public"],
        }),
    )
    .await;
    Creds {
        admin,
        issuer,
        validator,
    }
}
