//! PASETO v4 tokens on a sealed key ring, through `pasetors`: key
//! generation with PASERK ids, sealing of secret keys under the
//! key-encryption key, minting, and the cryptographic half of verification.
//! No I/O; the clock is passed in.
//!
//! ```
//! use tokenledger_tokens::{keys, paseto};
//! use tokenledger_domain::events::KeyPurpose;
//! let k = keys::generate(KeyPurpose::Public).unwrap();
//! let now = chrono::Utc::now();
//! let claims = paseto::TokenClaims::new("tokenledger", "alice", "api://orders", "jti-1",
//!     "orders:read", "client-1", now, now + chrono::Duration::seconds(300));
//! let token = paseto::mint(&k.signing_key().unwrap(), &k.kid, &claims).unwrap();
//! let parsed = paseto::inspect(&token).unwrap();
//! assert_eq!(parsed.kid, k.kid);
//! let opened = paseto::open(&token, &k.verifying_key().unwrap()).unwrap();
//! assert_eq!(opened.sub, "alice");
//! ```

pub mod keys;
pub mod paseto;
pub mod seal;
