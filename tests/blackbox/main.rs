//! Black-box tests: they start the real `tokenledger` binary, talk to it over
//! HTTP on a free loopback port, kill it, restart it on the same data dir and
//! check what the ledger promises (DESIGN.md) from the outside, the way the
//! contract checks in `../shared/contract-checks` do.
//!
//! # Which binary is tested
//!
//! A test target can name a binary with `env!("CARGO_BIN_EXE_…")` only in the
//! binary's own package, and `tokenledger` lives in `tokenledger-server`. So
//! [`tokenledger_testkit::binary`] finds it at run time, once per test
//! process:
//!
//! 1. `TOKENLEDGER_BIN`, if set, is the path of the binary to test (nothing
//!    is built);
//! 2. otherwise it runs `cargo build -q -p tokenledger-server --bin
//!    tokenledger` in the workspace, with `--release` when the tests
//!    themselves are built without debug assertions (`cargo test --release`),
//!    so both use the same profile, and takes the binary from
//!    `<target_directory>/{debug|release}/tokenledger`, where
//!    `target_directory` comes from `cargo metadata --format-version 1
//!    --no-deps` (so `CARGO_TARGET_DIR` is honoured).
//!
//! # What is here
//!
//! * [`harness`]: the [`harness::Server`] of `tokenledger-testkit` (start on
//!   a free port with a temporary data dir, wait for `/readyz`, `kill -9`,
//!   SIGTERM, restart on the same data dir), the tenant setup, an HTTP
//!   client and the event builders;
//! * [`load`]: concurrent appending clients that record what the server
//!   acknowledged, and the check of `$all` against those records;
//! * [`crash`]: acknowledged appends survive `kill -9` under load;
//! * [`shutdown`]: SIGTERM drains in-flight requests and exits 0;
//! * [`webhooks`]: a webhook receiver that is down across a server restart
//!   (`kill -9`) gets every alert once it is back, and nothing twice;
//! * [`scenarios`]: a replayed token cuts its subject off on every grant
//!   path through the shipped rules, until released; a rebuild from
//!   position 0 answers the same anomalies and cutoffs;
//! * [`rebuild`]: a restart resumes the views from the checkpoint SIGTERM
//!   wrote, and `tokenledger rebuild --verify` finds them equal to a
//!   rebuild from position 0.
//!
//! None of the tests asserts on wall-clock time: they only wait (for
//! readiness, for an exit) with generous limits.

mod crash;
mod demo;
mod harness;
mod imports;
mod load;
mod rebuild;
mod scenarios;
mod shutdown;
mod webhooks;
