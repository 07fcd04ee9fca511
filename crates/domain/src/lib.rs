//! tokenledger's domain: the event catalogue and the pure rules over it.
//!
//! This crate does no I/O: no tokio, axum, redb or arrow can be imported here.
//! Time and randomness are passed in (see [`clock::Clock`]), so every decision
//! is reproducible on replay.
//!
//! ```
//! use tokenledger_domain::events::{DomainEvent, TokenRevoked};
//! let ev = DomainEvent::TokenRevoked(TokenRevoked {
//!     token_id: Some("t-1".into()),
//!     selector: None,
//!     reason: "user logged out".into(),
//!     by: None,
//! });
//! let (ty, data) = ev.to_parts().unwrap();
//! assert_eq!(ty, "TokenRevoked");
//! assert_eq!(DomainEvent::from_parts(ty, 1, &data).unwrap(), ev);
//! ```

pub mod anomalies;
pub mod clock;
pub mod events;
pub mod ids;
pub mod json;
pub mod policy;
pub mod registry;
pub mod role;
pub mod schemas;
pub mod views;

pub use events::{DomainEvent, EventType, Metadata};
