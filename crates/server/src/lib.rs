//! tokenledger's server: the HTTP API on axum, Zero-Trust principals and
//! roles, settings, and `tokenledger serve`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let args = tokenledger_server::config::ServeArgs {
//!     data_dir: Some("/tmp/tl".into()),
//!     ..Default::default()
//! };
//! let settings = tokenledger_server::config::Settings::resolve(args)?;
//! tokenledger_server::serve::serve(settings).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod problem;
pub mod projections;
pub mod rules;
pub mod schema;
pub mod serve;
pub mod state;
pub mod tokens;
pub mod webhooks;

pub use api::app;
