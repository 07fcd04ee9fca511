//! The roles of DESIGN.md "Roles". What each role may call is written once, in
//! the server's `auth::Permission` table; this is only the vocabulary.

use serde::{Deserialize, Serialize};

/// A principal's role. `bootstrap` is held only by the bootstrap secret and is
/// never given to a stored principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Mints, exchanges, revokes its own tokens, appends issuance/revocation.
    Issuer,
    /// Verifies, introspects, reads keys and the block list, reports uses.
    Validator,
    /// SQL, export, reads `$all`, streams, anomalies and cutoffs.
    Analyst,
    /// Security operations: anomalies, alerts, cutoffs, selector revocations.
    Soc,
    /// Everything above in its own tenant, plus principals, policies, keys.
    Admin,
    /// Creates a tenant and its first admin; nothing else.
    Bootstrap,
}

impl Role {
    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Issuer => "issuer",
            Role::Validator => "validator",
            Role::Analyst => "analyst",
            Role::Soc => "soc",
            Role::Admin => "admin",
            Role::Bootstrap => "bootstrap",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
