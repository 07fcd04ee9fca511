//! What the benches share: the release `tokenledger` the HTTP benches
//! (`tokens`, `revocation`, `cutoff`) start and the tenant they set up in it,
//! the latency tables, and the machine-readable figures `scripts/bench-results`
//! renders into `benches/RESULTS.md`.

// Each bench includes this module and uses only part of it.
#![allow(dead_code)]

use serde_json::json;
use tokenledger_testkit::{Options, Profile, Secrets, Server, TenantSpec, issuer_and_validator};

/// The bootstrap secret the server starts with (≥ 32 bytes).
pub const BOOTSTRAP: &str = "bench-bootstrap-secret-0123456789abcdef0123";
/// The tenant the benches use.
pub const TENANT: &str = "bench";
/// The issuer principal, allowed `v4.public` for [`AUDIENCE`].
pub const ISSUER: &str = "bench-issuer";
/// The validator principal.
pub const VALIDATOR: &str = "bench-validator";
/// The audience tokens are minted for.
pub const AUDIENCE: &str = "api://orders";
/// The scope tokens are minted with.
pub const SCOPE: &str = "orders:read";

/// Starts the release `tokenledger` (`TOKENLEDGER_BIN`, or built with
/// `cargo build --release` and found through `cargo metadata`) on a free
/// loopback port, with a temp data dir named `tmp_prefix…`.
pub fn start_server(tmp_prefix: &str) -> Server {
    Server::start_blocking(Options::new(Profile::Release, BOOTSTRAP, tmp_prefix))
}

/// Tenant `bench`: its admin, an issuer allowed `v4.public` for
/// `api://orders` (`orders:read`, ≤ 3600 s), and a validator.
pub async fn setup(base: &str) -> Secrets {
    let spec = TenantSpec {
        bootstrap: BOOTSTRAP,
        tenant: TENANT,
        admin: "bench-admin",
        issuer: ISSUER,
        validator: VALIDATOR,
        policy: json!({
            "audiences": {AUDIENCE: {"scopes": [SCOPE], "max_ttl_seconds": 3600}},
            "formats": ["v4.public"],
        }),
    };
    issuer_and_validator(&reqwest::Client::new(), base, &spec).await
}

/// Nearest-rank percentile of `v` (unsorted), `p` in 0..=1; NaN when empty.
pub fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Prints the header of a latency table: measure, n, p50/p90/p99/max in ms, goal.
pub fn latency_header() {
    println!("| measure | n | p50 ms | p90 ms | p99 ms | max ms | goal |");
    println!("|---|---|---|---|---|---|---|");
}

/// Prints one row of a latency table: `v` in ms, `goal` the goal column.
pub fn latency_row(name: &str, v: &[f64], goal: &str) {
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {goal} |",
        v.len(),
        pct(v, 0.5),
        pct(v, 0.9),
        pct(v, 0.99),
        pct(v, 1.0)
    );
}

/// The env var naming the file [`figure`] appends its JSON line to (set by
/// `scripts/bench-results`); unset, nothing is written.
pub const JSON_ENV: &str = "TOKENLEDGER_BENCH_JSON";

/// One figure of DESIGN.md "Figures to reach" as a bench measured it, for
/// `scripts/bench-results`, which renders `benches/RESULTS.md` from them.
pub struct Figure<'a> {
    /// The bench (`append`, `tokens`, …).
    pub bench: &'a str,
    /// What was measured, as the RESULTS.md row names it.
    pub figure: String,
    /// Our figure, in `unit`.
    pub ours: f64,
    /// The unit of `ours` and `limit` (`events/s`, `ms`, …).
    pub unit: &'a str,
    /// The limit measured in the same run, in `unit`; `None` for a figure
    /// held against a goal alone.
    pub limit: Option<f64>,
    /// What the limit is (or, without one, what `ratio` is taken against).
    pub limit_what: String,
    /// `ours / limit` (or `ours / goal` without a limit); `None` when it
    /// could not be measured.
    pub ratio: Option<f64>,
    /// The target, as DESIGN.md states it.
    pub target: &'a str,
    /// Whether the target was met; `None` when it could not be judged.
    pub met: Option<bool>,
    /// Anything else a reader of the row needs (percentiles, why skipped).
    pub note: String,
}

/// Appends `f` as one JSON line `{"bench", "figure", "ours", "unit",
/// "limit", "limit_what", "ratio", "target", "met", "note"}` to the file
/// in [`JSON_ENV`], if set. Non-finite numbers are written as `null`.
pub fn figure(f: &Figure) {
    emit(&json!({
        "bench": f.bench,
        "figure": f.figure,
        "ours": f.ours,
        "unit": f.unit,
        "limit": f.limit,
        "limit_what": f.limit_what,
        "ratio": f.ratio,
        "target": f.target,
        "met": f.met,
        "note": f.note,
    }));
}

/// Appends `{"bench", "machine"}` (the text [`tokenledger_testkit::machine`]
/// gives) to the file in [`JSON_ENV`], if set, and prints it.
pub fn print_machine(bench: &str, dir: &std::path::Path, dir_label: &str) {
    let text = tokenledger_testkit::machine(dir, dir_label);
    println!("{text}");
    emit(&json!({"bench": bench, "machine": text}));
}

fn emit(record: &serde_json::Value) {
    use std::io::Write;
    let Some(path) = std::env::var_os(JSON_ENV) else {
        return;
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{record}"));
    if let Err(e) = written {
        eprintln!("{JSON_ENV}={}: cannot append a record: {e}", path.to_string_lossy());
    }
}
