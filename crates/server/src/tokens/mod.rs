//! The token service: live views and the writer's guard, the sealed key
//! ring, issuance and verification. Handlers in `api::tokens`, `api::keys`
//! and `api::oauth` call into here.

pub mod issue;
pub mod keyring;
pub mod verify;
pub mod views;

pub use issue::{IssueError, IssueSpec, Issued, issue};
pub use keyring::KeyRing;
pub use verify::{Reason, Verification, verify};
pub use views::LiveViews;
