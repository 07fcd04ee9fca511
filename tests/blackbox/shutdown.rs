//! SIGTERM drains (`serve`: "on SIGTERM drain in-flight requests and flush
//! pending commits before exiting"): under load, the process exits 0, every
//! acknowledged append is there after a restart, and requests that meet the
//! shutdown get a connection error or 503, never another 5xx.

use crate::harness::{Api, PATIENCE, heavy, setup, start_server};
use crate::load::{Load, Outcome, check_log, tally};
use std::time::{Duration, Instant};

const CLIENTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_appends_and_exits_zero() {
    let _heavy = heavy().await;
    let mut server = start_server(&[]).await;
    let tenant = setup(&server).await;
    let load = Load::start(server.base(), &tenant.issuer, CLIENTS, 1);
    load.run_for(Duration::from_millis(1500), CLIENTS).await;

    let term_at = Instant::now();
    server.sigterm();
    // The default grace for in-flight requests is 30 s; wait well beyond it.
    let status = server.wait_exit(PATIENCE * 2).await;
    let records = load.stop().await;
    let Some(status) = status else {
        panic!(
            "tokenledger did not exit after SIGTERM\n--- server log ---\n{}",
            server.log_tail(40)
        );
    };
    assert!(
        status.success(),
        "tokenledger exited with {status} after SIGTERM\n--- server log ---\n{}",
        server.log_tail(40)
    );

    // Answers other than 200/201: only 503 (problem+json), and only once
    // the shutdown has begun.
    let mut first_503: Option<Instant> = None;
    for r in &records {
        if let Outcome::Refused(a) = &r.outcome {
            assert!(
                a.status == 503,
                "an append met the shutdown with {} {} (only a connection error or 503 is allowed)",
                a.status,
                a.body
            );
            assert!(r.finished > term_at, "a 503 before SIGTERM was sent: {}", a.body);
            assert!(
                a.content_type.starts_with("application/problem+json") && a.body["type"].is_string(),
                "a 503 that is not problem+json: {} {}",
                a.content_type,
                a.body
            );
            first_503 = Some(first_503.map_or(r.finished, |f| f.min(r.finished)));
        }
    }
    // Once the server said 503 it never acknowledges a request sent later.
    if let Some(first) = first_503 {
        let late: Vec<_> = records
            .iter()
            .filter(|r| r.positions().is_some() && r.started > first)
            .collect();
        assert!(
            late.is_empty(),
            "{} appends sent after a 503 was received were still acknowledged, e.g. {}",
            late.len(),
            late[0].sent.stream
        );
    }

    let before = tally(records.iter().filter(|r| r.started <= term_at));
    let in_flight = tally(records.iter().filter(|r| r.started <= term_at && r.finished > term_at));
    let after = tally(records.iter().filter(|r| r.started > term_at));

    if let Some(e) = records.iter().find_map(|r| match &r.outcome {
        Outcome::Unknown(e) => Some(e),
        _ => None,
    }) {
        eprintln!("shutdown: an append without answer: {e}");
    }

    server.restart().await;
    let log = Api::new(server.base()).read_all(&tenant.admin).await;
    let check = check_log(&log, &records);
    eprintln!(
        "shutdown: exit {status}; sent before SIGTERM: {} ({} acked); in flight at SIGTERM: {} ({} acked, {} 503, {} without answer); \
         sent after SIGTERM: {} ({} acked, {} 503, {} without answer, {} never connected); \
         after restart $all holds {} events, {} acknowledged events all present; \
         of the appends without answer {} were committed, {} not",
        before.requests,
        before.acked,
        in_flight.requests,
        in_flight.acked,
        in_flight.refused,
        in_flight.unknown,
        after.requests,
        after.acked,
        after.refused,
        after.unknown,
        after.not_sent,
        check.events,
        check.acked_events,
        check.unknown_committed,
        check.unknown_absent
    );
    assert!(before.acked > 0, "no append was acknowledged before SIGTERM");
}
