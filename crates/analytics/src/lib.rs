//! tokenledger's SQL layer (DESIGN.md "Projections", `POST /v1/sql`).
//!
//! * [`events`] — the `events` table: envelope plus typed columns, never
//!   sealed keys or secret hashes;
//! * [`tables`] — the views `active_tokens`, `block_list`, `keys`, `cutoffs`,
//!   `anomalies`, `risk_signals` as Arrow tables;
//! * [`engine`] — [`Analytics`], the projection that follows `$all` and
//!   answers read-only queries per tenant with DataFusion;
//! * [`checkpoint`] — the projection's checkpoints, so a restart resumes
//!   without a full replay;
//! * [`encode`] — answers as JSON rows or an Arrow IPC stream.

pub mod checkpoint;
pub mod encode;
pub mod engine;
pub mod events;
pub mod export;
pub mod tables;

pub use checkpoint::CheckpointPolicy;
pub use datafusion::arrow;
pub use engine::{Analytics, Limits, SqlError, TenantSnapshot};
