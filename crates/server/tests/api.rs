//! The HTTP API in-process: the contract of DESIGN.md ("Rules the contract
//! rests on", "Errors", "Wire shapes") checked through `tokenledger_server::app`
//! over an in-memory store, with `oneshot` requests.
//!
//! One test binary; the modules live in `tests/api/`.

#[path = "api/support.rs"]
mod support;

#[path = "api/anomalies.rs"]
mod anomalies;
#[path = "api/append.rs"]
mod append;
#[path = "api/authz.rs"]
mod authz;
#[path = "api/blocklist.rs"]
mod blocklist;
#[path = "api/clients.rs"]
mod clients;
#[path = "api/cutoffs.rs"]
mod cutoffs;
#[path = "api/external.rs"]
mod external;
#[path = "api/hardening.rs"]
mod hardening;
#[path = "api/imports.rs"]
mod imports;
#[path = "api/oauth.rs"]
mod oauth;
#[path = "api/ops.rs"]
mod ops;
#[path = "api/principals.rs"]
mod principals;
#[path = "api/reads.rs"]
mod reads;
#[path = "api/regressions.rs"]
mod regressions;
#[path = "api/rules.rs"]
mod rules;
#[path = "api/schedule.rs"]
mod schedule;
#[path = "api/sql.rs"]
mod sql;
#[path = "api/tenancy.rs"]
mod tenancy;
#[path = "api/tokens.rs"]
mod tokens;
#[path = "api/validation.rs"]
mod validation;
#[path = "api/webhooks.rs"]
mod webhooks;
