//! Cutoff latency: the append of the event that triggers an anomaly → the
//! first mint refused by the cutoff a SQL rule engaged on it (DESIGN.md
//! "Figures to reach": p99 < 100 ms), under background load.
//!
//! Against the release `tokenledger` binary, started with a rules file of
//! one rule (a subject whose token is used from two networks at once is cut
//! off). `BENCH_LOAD` background workers (default 8) mint and verify tokens
//! for other subjects in a loop the whole time. Then, `BENCH_N` times
//! (default 50): an issuer mints a token for a fresh subject, a validator
//! verifies it from 198.51.100.7, and after a pause a prober starts minting
//! for that subject back to back while the validator verifies the token
//! from 203.0.113.9 — the triggering `TokenUsed`. The first mint answered
//! 403 `minting-cutoff` is the refusal.
//!
//! Printed: p50 / p90 / p99 / max, in ms, of
//!
//! * triggering verify **answered** (its `TokenUsed` is durable and folded)
//!   → first refused mint answered,
//! * triggering verify **sent** → first refused mint answered,
//! * a background mint (sent → answered), for the load's own latency,
//!
//! and the goal. A measurement, not a test: nothing is asserted.
//!
//! Run: `cargo bench -p tokenledger-benches --bench cutoff`
//! (`TOKENLEDGER_BIN` to use a given binary).

mod common;

use common::{AUDIENCE, Figure, SCOPE, figure, latency_header, latency_row, pct, print_machine, setup};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokenledger_testkit::{Options, Profile, Server, Statuses, request};

/// The design's goal for p99.
const GOAL: Duration = Duration::from_millis(100);
/// A trial that is not refused within this counts as missed.
const GIVE_UP: Duration = Duration::from_secs(10);

const RULES: &str = r#"
[[rule]]
id = "bench-concurrent-use"
mode = "enforce"
duration_seconds = 3600
sql = """
SELECT 'subject' AS scope, subject AS key, 'token used from two networks' AS reason,
       max(position) AS position
FROM anomalies WHERE kind = 'concurrent_use' AND subject LIKE 'victim-%'
GROUP BY subject
"""
"#;

fn env_n(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a non-negative integer, not {s:?}")),
    }
}

fn main() {
    let n = env_n("BENCH_N", 50);
    let load = env_n("BENCH_LOAD", 8);
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES).expect("rules file");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rules_arg = rules.to_string_lossy().into_owned();
    let server = Server::start_blocking(
        Options::new(Profile::Release, common::BOOTSTRAP, "tokenledger-bench-cutoff-")
            .with_args(&["--rules-file", &rules_arg]),
    );
    let base = server.base();
    println!("# cutoff latency: triggering event appended → mint refused\n");
    println!(
        "- server: {} (pid {}), {base}; {n} trials, {load} background workers minting and verifying",
        server.bin().display(),
        server.pid()
    );
    print_machine("cutoff", &std::env::temp_dir(), "temp dir (server data dir)");
    println!("- the load and the probes run in this process, on the same cores as the server\n");
    let r = rt.block_on(run(&base, n, load));
    drop(server);
    latency_header();
    let row = |name: &str, v: &[f64], goal: bool| {
        let goal = if goal {
            let met = !v.is_empty() && pct(v, 0.99) < GOAL.as_secs_f64() * 1e3 && r.missed == 0;
            format!("p99 < {} ms ({})", GOAL.as_millis(), if met { "met" } else { "MISSED" })
        } else {
            "–".to_owned()
        };
        latency_row(name, v, &goal);
    };
    row("trigger answered → mint refused", &r.from_answer, true);
    row("trigger sent → mint refused", &r.from_send, true);
    row("background mint (sent → answered)", &r.background, false);
    println!(
        "\nbackground load: {} mints + verifies in {:.1} s ({:.0} requests/s); {} probe mints answered 201 before the refusal",
        r.load_requests,
        r.seconds,
        r.load_requests as f64 / r.seconds,
        r.probe_successes
    );
    if r.missed > 0 {
        println!("\n{} trials were not refused within {GIVE_UP:?}.", r.missed);
    }
    // The figure from the trigger's sending: its event is appended between
    // the sending and the answer, so this is the longer bound.
    let goal_ms = GOAL.as_secs_f64() * 1e3;
    let p99 = pct(&r.from_send, 0.99);
    figure(&Figure {
        bench: "cutoff",
        figure: format!(
            "cutoff latency (triggering event → mint refused), {load} background workers (sent → refused, p99)"
        ),
        ours: p99,
        unit: "ms",
        limit: None,
        limit_what: format!("none: ratio to the goal, {goal_ms:.0} ms"),
        ratio: Some(p99 / goal_ms),
        target: "p99 < 100 ms",
        met: Some(!r.from_send.is_empty() && p99 < goal_ms && r.missed == 0),
        note: format!(
            "{} trials, {} missed; sent → refused p50 {:.1} / max {:.1} ms; answered → refused p99 {:.1} ms",
            r.from_send.len() + r.missed,
            r.missed,
            pct(&r.from_send, 0.5),
            pct(&r.from_send, 1.0),
            pct(&r.from_answer, 0.99)
        ),
    });
}

struct Run {
    from_answer: Vec<f64>,
    from_send: Vec<f64>,
    background: Vec<f64>,
    missed: usize,
    load_requests: usize,
    seconds: f64,
    probe_successes: usize,
}

fn mint_body(subject: &str) -> serde_json::Value {
    json!({"subject": subject, "audience": AUDIENCE, "scope": SCOPE, "ttl_seconds": 600, "format": "v4.public"})
}

async fn run(base: &str, n: usize, load: usize) -> Run {
    let creds = setup(base).await;
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // Background load: mint, then verify from one address, for other subjects.
    let workers: Vec<_> = (0..load)
        .map(|w| {
            let (http, base, creds, stop) = (http.clone(), base.to_owned(), creds.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut lat, mut count, mut i) = (Vec::new(), 0usize, 0usize);
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let r = http
                        .post(format!("{base}/v1/tokens"))
                        .bearer_auth(&creds.issuer)
                        .json(&mint_body(&format!("load-{w}-{}", i % 1000)))
                        .send()
                        .await;
                    let Ok(r) = r else { continue };
                    let ok = r.status().is_success();
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    lat.push(sent.elapsed().as_secs_f64() * 1e3);
                    count += 1;
                    if ok && let Some(t) = v["token"].as_str() {
                        let _ = http
                            .post(format!("{base}/v1/tokens/verify"))
                            .bearer_auth(&creds.validator)
                            .json(&json!({"token": t, "audience": AUDIENCE, "context": {"ip": "192.0.2.10"}}))
                            .send()
                            .await;
                        count += 1;
                    }
                    i += 1;
                }
                (lat, count)
            })
        })
        .collect();
    let mut out = Run {
        from_answer: Vec::new(),
        from_send: Vec::new(),
        background: Vec::new(),
        missed: 0,
        load_requests: 0,
        seconds: 0.0,
        probe_successes: 0,
    };
    let verify = |token: String, ip: &'static str| {
        let (http, base, v) = (http.clone(), base.to_owned(), creds.validator.clone());
        async move {
            request(
                &http,
                reqwest::Method::POST,
                &format!("{base}/v1/tokens/verify"),
                &v,
                Some(&json!({"token": token, "audience": AUDIENCE, "context": {"ip": ip}})),
                Statuses::Success,
            )
            .await
        }
    };
    for i in 0..n {
        let subject = format!("victim-{i}");
        let minted = request(
            &http,
            reqwest::Method::POST,
            &format!("{base}/v1/tokens"),
            &creds.issuer,
            Some(&mint_body(&subject)),
            Statuses::Success,
        )
        .await;
        let token = minted["token"].as_str().expect("a token").to_owned();
        let first = verify(token.clone(), "198.51.100.7").await;
        assert_eq!(first["active"], true, "{first}");
        tokio::time::sleep(Duration::from_millis(50 + (i as u64 * 37) % 200)).await;
        // The prober mints for the subject back to back until refused.
        let prober = {
            let (http, base, issuer, subject) = (http.clone(), base.to_owned(), creds.issuer.clone(), subject.clone());
            tokio::spawn(async move {
                let mut successes = 0;
                let t0 = Instant::now();
                while t0.elapsed() < GIVE_UP {
                    let r = http
                        .post(format!("{base}/v1/tokens"))
                        .bearer_auth(&issuer)
                        .json(&mint_body(&subject))
                        .send()
                        .await
                        .expect("mint");
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    if status == 403 && text.contains("minting-cutoff") {
                        return (Some(Instant::now()), successes);
                    }
                    successes += 1;
                }
                (None, successes)
            })
        };
        let sent = Instant::now();
        verify(token, "203.0.113.9").await;
        let answered = Instant::now();
        let (refused, successes) = prober.await.expect("prober");
        out.probe_successes += successes;
        match refused {
            Some(t) => {
                let ms = |from: Instant| {
                    if t >= from {
                        (t - from).as_secs_f64() * 1e3
                    } else {
                        -(from - t).as_secs_f64() * 1e3
                    }
                };
                out.from_answer.push(ms(answered));
                out.from_send.push(ms(sent));
            }
            None => out.missed += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let (lat, count) = w.await.expect("worker");
        out.background.extend(lat);
        out.load_requests += count;
    }
    out.seconds = started.elapsed().as_secs_f64();
    out
}
