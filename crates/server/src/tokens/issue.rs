//! Issuance shared by every grant path (mint, `client_credentials`,
//! exchange): the token is recorded write-ahead — its `TokenIssued` is
//! appended with expected revision `no_stream` on `token-<jti>` — and
//! leaves the service only once that append is durable. If the append
//! fails, no token is returned.

use crate::api::server_event;
use crate::problem::ApiError;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::{
    GrantPath, GrantRefused, GrantRequest, KeyPurpose, RefusalReason, RequestContext, TokenFormat, TokenIssued,
};
use tokenledger_domain::ids::token_stream;
use tokenledger_store::{AppendError, ExpectedRevision, StreamId};
use tokenledger_tokens::paseto::{TokenClaims, mint};
use uuid::Uuid;

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueSpec {
    /// The token id (`jti`).
    pub jti: String,
    /// The idempotency key of the `TokenIssued` event.
    pub event_id: Uuid,
    /// `sub`.
    pub subject: String,
    /// The client the token is for (stamped from the credential).
    pub client_id: String,
    /// `aud`.
    pub audience: String,
    /// Space-delimited scope.
    pub scope: String,
    /// `iat` (and `nbf`), UTC.
    pub issued_at: DateTime<Utc>,
    /// `exp`, UTC.
    pub expires_at: DateTime<Utc>,
    /// `v4.public` or `v4.local`.
    pub format: TokenFormat,
    /// Confirmation claim, carried into the token.
    pub cnf: Option<Map<String, Value>>,
    /// The token this one is exchanged from.
    pub parent: Option<String>,
    /// `act` claim (delegation).
    pub act: Option<Value>,
    /// The request that obtained the token.
    pub context: Option<RequestContext>,
    /// The grant path, for the `GrantRefused` of a refusal by the writer.
    pub path: GrantPath,
}

/// An issued token.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The token.
    pub token: String,
    /// Its id.
    pub token_id: String,
    /// `exp`.
    pub expires_at: DateTime<Utc>,
    /// The signing key's PASERK id.
    pub kid: String,
    /// Position of its `TokenIssued`.
    pub position: u64,
}

/// Why issuance failed: the writer refused it (a guard), or something broke.
#[derive(Debug)]
pub enum IssueError {
    /// The store's guard refused the `TokenIssued` (e.g. `parent-revoked`,
    /// `minting-cutoff`).
    Refused(tokenledger_store::Rejection),
    /// The token id already exists (only a retried idempotency key can hit it).
    Exists,
    /// Anything else.
    Failed(ApiError),
}

impl From<ApiError> for IssueError {
    fn from(e: ApiError) -> Self {
        IssueError::Failed(e)
    }
}

/// The signed claims of a spec.
pub fn claims(st: &AppState, spec: &IssueSpec) -> TokenClaims {
    let mut c = TokenClaims::new(
        &st.settings.issuer_name,
        &spec.subject,
        &spec.audience,
        &spec.jti,
        &spec.scope,
        &spec.client_id,
        spec.issued_at,
        spec.expires_at,
    );
    c.cnf = spec.cnf.clone();
    c.act = spec.act.clone();
    c
}

/// Records `TokenIssued` (plus `extra` events of the same stream, e.g.
/// `TokenExchanged`, in the same atomic append) and then mints the token.
pub async fn issue(
    st: &AppState,
    tenant: &str,
    actor: &str,
    spec: &IssueSpec,
    extra: Vec<DomainEvent>,
) -> Result<Issued, IssueError> {
    let purpose = match spec.format {
        TokenFormat::V4Public => KeyPurpose::Public,
        TokenFormat::V4Local => KeyPurpose::Local,
        TokenFormat::External => {
            return Err(IssueError::Failed(ApiError::unprocessable(
                "invalid-format",
                "tokenledger mints v4.public or v4.local",
            )));
        }
    };
    let (kid, key) = st.keyring.active(st, tenant, purpose).await?;
    let c = claims(st, spec);
    // Mint before recording, so a key that cannot sign fails before the
    // ledger says a token exists; the token leaves only after the append.
    let token = mint(&key.signing, &kid, &c).map_err(ApiError::internal)?;
    let issued = DomainEvent::TokenIssued(TokenIssued {
        token_id: spec.jti.clone(),
        tenant: tenant.to_owned(),
        issuer: st.settings.issuer_name.clone(),
        subject: spec.subject.clone(),
        client_id: spec.client_id.clone(),
        audience: spec.audience.clone(),
        scope: spec.scope.clone(),
        issued_at: spec.issued_at,
        expires_at: spec.expires_at,
        not_before: spec.issued_at,
        format: spec.format,
        kid: Some(kid.clone()),
        cnf: spec.cnf.clone(),
        parent_token_id: spec.parent.clone(),
        context: spec.context.clone(),
    });
    let mut first = server_event(tenant, actor, &issued)?;
    first.event_id = spec.event_id;
    let mut batch = vec![first];
    for e in &extra {
        batch.push(server_event(tenant, actor, e)?);
    }
    let sid = StreamId::new(tenant, token_stream(&spec.jti));
    match st.store.append(&sid, ExpectedRevision::NoStream, batch).await {
        Ok(r) => Ok(Issued {
            token,
            token_id: spec.jti.clone(),
            expires_at: spec.expires_at,
            kid,
            position: r.events[0].position.0,
        }),
        Err(AppendError::Rejected(r)) => {
            // A cutoff's refusal is recorded as a GrantRefused naming it (a
            // revoked parent is recorded by the exchange, which checks it first).
            if r.kind == "minting-cutoff" {
                let record = GrantRefused {
                    path: spec.path,
                    client_id: spec.client_id.clone(),
                    subject: Some(spec.subject.clone()),
                    requested: GrantRequest {
                        audience: Some(spec.audience.clone()),
                        scope: Some(spec.scope.clone()),
                        ttl_seconds: Some((spec.expires_at - spec.issued_at).num_seconds()),
                        format: Some(spec.format),
                    },
                    reason: RefusalReason::Cutoff,
                    detail: r.detail.clone(),
                    cutoff_id: r.extra.get("cutoff_id").and_then(|v| v.as_str()).map(str::to_owned),
                };
                crate::api::tokens::record_refusal(st, tenant, record).await;
            }
            Err(IssueError::Refused(r))
        }
        Err(AppendError::WrongExpectedRevision { .. } | AppendError::IdempotencyConflict { .. }) => {
            Err(IssueError::Exists)
        }
        Err(e) => Err(IssueError::Failed(crate::api::append_error(e))),
    }
}
