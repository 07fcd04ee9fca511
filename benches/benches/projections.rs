//! Projection rebuild throughput and the memory of `active_tokens`
//! (DESIGN.md "Figures to reach": projection rebuild ≥ 1M events/s against
//! a bare read + decode loop; ≤ 256 bytes per active token).
//!
//! For each size in `PROJ_EVENTS` (default `1000000`; e.g.
//! `1000000,10000000`): writes that many events (a realistic mix: issuance,
//! uses, exchanges, revocations, refused grants, over 3 tenants and 30 days)
//! into a fresh embedded redb ledger, then measures in the same run
//! 1. the limit: a bare loop reading `$all` in pages and decoding each
//!    event's payload into its typed event;
//! 2. `tokenledger rebuild` itself (`projections::rebuild_on`: read +
//!    decode + fold into registry and views, from position 0).
//!
//! Then folds `PROJ_FOLD_EVENTS` (default 1,000,000) events of the same
//! mix, decoded in memory beforehand, through the views and the anomaly
//! detectors alone (the detectors' throughput without the store), and
//! reports how many anomalies they found (one `concurrent_use` per token by
//! design).
//!
//! Then folds `PROJ_TOKENS` (default 1,000,000) unexpired `TokenIssued`
//! into fresh views under a counting allocator and reports bytes per
//! active token.
//!
//! Run: `cargo bench -p tokenledger-benches --bench projections`
//! (`PROJ_EVENTS=100000 PROJ_TOKENS=100000 PROJ_FOLD_EVENTS=100000` for a
//! quick run).

mod common;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::{Figure, figure, print_machine};
use serde_json::{Value, json};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::sync::Arc;
use std::time::Instant;
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::CURRENT_SCHEMA_VERSION;
use tokenledger_domain::views::TenantViews;
use tokenledger_store::{EventStore, ExpectedRevision, NewEvent, Position, RedbOptions, RedbStore, StreamId};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
/// The design's goals: rebuild events/s, and bytes per active token.
const GOAL_RATE: f64 = 1_000_000.0;
const GOAL_BYTES: f64 = 256.0;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn issued(tenant: &str, i: u64, at: DateTime<Utc>, parent: Option<u64>) -> (String, Value) {
    let mut d = json!({
        "token_id": format!("tok-{i:012}"),
        "tenant": tenant,
        "issuer": "tokenledger",
        "subject": format!("user-{}", i % 5000),
        "client_id": format!("svc-{}", i % 50),
        "audience": format!("api://service-{}", i % 20),
        "scope": format!("read:{} write:{}", i % 10, i % 7),
        "issued_at": rfc(at),
        "expires_at": rfc(at + Duration::seconds(3600)),
        "not_before": rfc(at),
        "format": "v4.public",
        "kid": "k4.pid.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    });
    if let Some(p) = parent {
        d["parent_token_id"] = json!(format!("tok-{p:012}"));
    }
    ("TokenIssued".into(), d)
}

/// The i-th event of the synthetic history.
fn event(tenant: &str, i: u64, at: DateTime<Utc>) -> (String, Value) {
    match i % 20 {
        0..=4 => issued(tenant, i, at, None),
        5 => issued(tenant, i, at, Some(i - 1)),
        6 => (
            "TokenExchanged".into(),
            json!({"subject_token_id": format!("tok-{:012}", i - 2), "new_token_id": format!("tok-{:012}", i - 1),
                   "client_id": "gw", "requested_audience": "api://service-1", "granted_audience": "api://service-1",
                   "granted_scope": "read:1"}),
        ),
        7 => (
            "TokenRevoked".into(),
            json!({"token_id": format!("tok-{:012}", i - 4), "reason": "rotation", "by": "soc-1"}),
        ),
        8 => (
            "GrantRefused".into(),
            json!({"path": "mint", "client_id": format!("svc-{}", i % 50), "subject": format!("user-{}", i % 5000),
                   "requested": {"audience": "api://admin", "scope": "admin"}, "reason": "audience",
                   "detail": "audience api://admin is not allowed"}),
        ),
        _ => (
            "TokenUsed".into(),
            json!({"validator": format!("gw-{}", i % 8), "audience": format!("api://service-{}", i % 20),
                   "outcome": "accepted", "at": rfc(at), "token_id": format!("tok-{:012}", i - i % 20),
                   "subject": format!("user-{}", (i - i % 20) % 5000), "client_id": format!("svc-{}", (i - i % 20) % 50),
                   // The last use of each token comes from another network: a
                   // `concurrent_use` anomaly per token for the detectors.
                   "context": {"ip": if i % 20 == 19 { format!("203.0.113.{}", i % 250) } else { format!("198.51.100.{}", i % 250) },
                               "user_agent": "curl/8.5"}}),
        ),
    }
}

async fn fill(store: &Arc<dyn EventStore>, n: u64) {
    let span = 30 * 86_400;
    let mut i = 0;
    let mut batch_no = 0u64;
    while i < n {
        let tenant = TENANTS[(batch_no % 3) as usize];
        let at = t0() + Duration::seconds((i * span / n.max(1)) as i64);
        let events: Vec<NewEvent> = (i..(i + 1000).min(n))
            .map(|k| {
                let (ty, data) = event(tenant, k, at);
                NewEvent::new(uuid::Uuid::new_v4(), ty, data, json!({}))
            })
            .collect();
        i += events.len() as u64;
        store
            .append(
                &StreamId::new(tenant, format!("bench-{batch_no}")),
                ExpectedRevision::Any,
                events,
            )
            .await
            .expect("append");
        batch_no += 1;
    }
}

async fn bare_read_decode(store: &Arc<dyn EventStore>) -> (u64, f64) {
    let start = Instant::now();
    let mut from = Position::START.next();
    let mut n = 0u64;
    let mut decoded = 0u64;
    loop {
        let page = store.read_all(from, 4096, None).await.expect("read");
        let Some(last) = page.last() else { break };
        from = last.position.next();
        for e in &page {
            n += 1;
            if DomainEvent::from_parts(&e.event_type, CURRENT_SCHEMA_VERSION, &e.data).is_ok() {
                decoded += 1;
            }
        }
    }
    assert_eq!(n, decoded, "every synthetic event decodes");
    (n, start.elapsed().as_secs_f64())
}

fn no_kid(_: &str) -> Option<String> {
    None
}

/// The fold alone — views and anomaly detectors — over `n` events of the
/// same mix, decoded in memory beforehand: (events, seconds, anomalies).
fn fold_only(n: u64) -> (u64, f64, usize) {
    let span = 30 * 86_400;
    let events: Vec<(DateTime<Utc>, DomainEvent)> = (0..n)
        .map(|i| {
            let at = t0() + Duration::seconds((i * span / n.max(1)) as i64);
            let (ty, d) = event("acme", i, at);
            (at, DomainEvent::from_parts(&ty, CURRENT_SCHEMA_VERSION, &d).unwrap())
        })
        .collect();
    let mut views = TenantViews::default();
    let start = Instant::now();
    for (i, (at, e)) in events.iter().enumerate() {
        views.apply(i as u64 + 1, *at, e, no_kid);
    }
    let seconds = start.elapsed().as_secs_f64();
    (n, seconds, views.detect.anomalies.len())
}

fn bytes_per_active_token(m: u64) -> f64 {
    let at = Utc::now();
    let events: Vec<DomainEvent> = (0..m)
        .map(|i| {
            let (ty, d) = issued("acme", i, at, None);
            DomainEvent::from_parts(&ty, CURRENT_SCHEMA_VERSION, &d).unwrap()
        })
        .collect();
    let region = Region::new(GLOBAL);
    let mut views = TenantViews::default();
    for (i, e) in events.iter().enumerate() {
        views.apply(i as u64 + 1, at, e, no_kid);
    }
    let change = region.change();
    assert_eq!(views.token_count() as u64, m);
    let live = change.bytes_allocated as f64 - change.bytes_deallocated as f64;
    drop(views);
    live / m as f64
}

fn main() {
    let sizes: Vec<u64> = std::env::var("PROJ_EVENTS")
        .unwrap_or_else(|_| "1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("PROJ_EVENTS: comma-separated counts"))
        .collect();
    let tokens: u64 = std::env::var("PROJ_TOKENS").map_or(1_000_000, |s| s.parse().expect("PROJ_TOKENS"));
    let fold: u64 = std::env::var("PROJ_FOLD_EVENTS").map_or(1_000_000, |s| s.parse().expect("PROJ_FOLD_EVENTS"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("# tokenledger projection rebuild and active_tokens memory benchmark\n");
    print_machine("projections", &std::env::temp_dir(), "temp dir");
    println!("- PROJ_EVENTS {sizes:?}, PROJ_FOLD_EVENTS {fold}, PROJ_TOKENS {tokens}\n");
    println!("| events | bare read + decode (limit) | rebuild (read + decode + fold) | ratio | goal |");
    println!("|---|---|---|---|---|");
    for n in sizes {
        let dir = tempfile::Builder::new().prefix("tl-bench-proj").tempdir().unwrap();
        let ledger = dir.path().join(tokenledger_server::serve::LEDGER_FILE);
        let fill_start = Instant::now();
        let (bare, rebuild) = rt.block_on(async {
            let store: Arc<dyn EventStore> = Arc::new(RedbStore::open(RedbOptions::new(ledger)).unwrap());
            fill(&store, n).await;
            eprintln!("wrote {n} events in {:.1} s", fill_start.elapsed().as_secs_f64());
            let bare = bare_read_decode(&store).await;
            let args = tokenledger_server::projections::RebuildArgs {
                data_dir: dir.path().to_owned(),
                verify: false,
                dump: None,
                tenant: None,
            };
            let snapshot = tokenledger_server::projections::snapshot_path(dir.path());
            let report = tokenledger_server::projections::rebuild_on(&store, &snapshot, &args)
                .await
                .expect("rebuild");
            store.close().await;
            (bare, report)
        });
        assert_eq!(rebuild.events, bare.0);
        let bare_rate = bare.0 as f64 / bare.1;
        let rate = rebuild.events as f64 / rebuild.seconds;
        println!(
            "| {n} | {:.0} ev/s ({:.2} s) | {:.0} ev/s ({:.2} s) | {:.2} | ≥ 1,000,000 ev/s |",
            bare_rate,
            bare.1,
            rate,
            rebuild.seconds,
            rate / bare_rate
        );
        figure(&Figure {
            bench: "projections",
            figure: format!("projection rebuild, {n} events (read + decode + fold)"),
            ours: rate,
            unit: "events/s",
            limit: Some(bare_rate),
            limit_what: "bare read + decode loop".into(),
            ratio: Some(rate / bare_rate),
            target: "≥ 1M events/s",
            met: Some(rate >= GOAL_RATE),
            note: format!("rebuild {:.2} s, bare loop {:.2} s", rebuild.seconds, bare.1),
        });
    }
    println!();
    println!("| events | fold only: views + anomaly detectors, decoded in memory | anomalies found |");
    println!("|---|---|---|");
    let (n, secs, found) = fold_only(fold);
    println!("| {n} | {:.0} ev/s ({secs:.2} s) | {found} |", n as f64 / secs);
    let b = bytes_per_active_token(tokens);
    println!();
    println!("| active tokens | bytes per active token (views, counting allocator) | goal |");
    println!("|---|---|---|");
    println!("| {tokens} | {b:.0} | ≤ 256 |");
    figure(&Figure {
        bench: "projections",
        figure: format!("memory of `active_tokens`, {tokens} active tokens"),
        ours: b,
        unit: "B/token",
        limit: None,
        limit_what: format!("none: ratio to the goal, {GOAL_BYTES:.0} B"),
        ratio: Some(b / GOAL_BYTES),
        target: "≤ 256 bytes per active token",
        met: Some(b <= GOAL_BYTES),
        note: "live bytes of the views (counting allocator) / tokens".into(),
    });
}
