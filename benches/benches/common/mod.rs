//! What the HTTP benches (`tokens`, `revocation`) share: the release
//! `tokenledger` they start and the tenant they set up in it.

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
