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

mod common;

use common::{AUDIENCE, Figure, SCOPE, figure, latency_header, latency_row, pct, print_machine, setup, start_server};
use std::time::{Duration, Instant};

use serde_json::json;
use tokenledger_testkit::{Statuses, request};
use tokenledger_validator::{Reason, Validator, ValidatorOptions};

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
    let server = start_server("tokenledger-bench-revocation-");
    let base = server.base();
    println!("# revocation → refused by a validator following the block-list feed\n");
    println!(
        "- server: {} (pid {}), {base}; {n} revocations, one at a time, after a pause of 50-250 ms each",
        server.bin().display(),
        server.pid()
    );
    print_machine("revocation", &std::env::temp_dir(), "temp dir (server data dir)");
    println!("- the validator runs in this process, on the same cores as the server\n");

    let result = rt.block_on(run(&base, n));
    drop(server);
    let Run {
        from_answer,
        from_send,
        request,
        missed,
    } = result;

    latency_header();
    let row = |name: &str, v: &[f64], goal: bool| {
        let goal = if goal {
            let met = !v.is_empty() && pct(v, 1.0) < GOAL.as_secs_f64() * 1e3 && missed == 0;
            format!("< {} ms ({})", GOAL.as_millis(), if met { "met" } else { "MISSED" })
        } else {
            "–".to_owned()
        };
        latency_row(name, v, &goal);
    };
    row("revocation answered → refused locally", &from_answer, true);
    row("revocation sent → refused locally", &from_send, true);
    row("revocation request (sent → answered)", &request, false);
    if missed > 0 {
        println!("\n{missed} revocations were not refused locally within {GIVE_UP:?}.");
    }
    // The figure from the revocation's sending: the longer of the two.
    let goal_ms = GOAL.as_secs_f64() * 1e3;
    let worst = pct(&from_send, 1.0);
    figure(&Figure {
        bench: "revocation",
        figure: "revocation → refused by a validator following the block-list feed (sent → refused, max)".into(),
        ours: worst,
        unit: "ms",
        limit: None,
        limit_what: format!("none: ratio to the goal, {goal_ms:.0} ms"),
        ratio: Some(worst / goal_ms),
        target: "< 1 s",
        met: Some(!from_send.is_empty() && worst < goal_ms && missed == 0),
        note: format!(
            "{} revocations, {missed} missed; sent → refused p50 {:.1} / p99 {:.1} ms; answered → refused max {:.1} ms",
            from_send.len() + missed,
            pct(&from_send, 0.5),
            pct(&from_send, 0.99),
            pct(&from_answer, 1.0)
        ),
    });
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
        let minted = request(
            &http,
            reqwest::Method::POST,
            &format!("{base}/v1/tokens"),
            &creds.issuer,
            Some(
                &json!({"subject": format!("user-{i}"), "audience": AUDIENCE, "scope": SCOPE,
                    "ttl_seconds": 600, "format": "v4.public"}),
            ),
            Statuses::Success,
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
        request(
            &http,
            reqwest::Method::POST,
            &format!("{base}/v1/revocations"),
            &creds.admin,
            Some(&json!({"token_id": token_id, "reason": "revocation bench"})),
            Statuses::Success,
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

// ---------------------------------------------------------------- the server
