//! `POST /v1/tokens` (mint) and `POST /v1/tokens/verify`.

use crate::auth::{Caller, Permission};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use crate::tokens::{IssueError, IssueSpec, Reason, Verification, issue, verify};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::{
    GrantPath, GrantRefused, RefusalReason, RequestContext, TokenFormat, TokenUsed, UseOutcome,
};
use tokenledger_domain::ids::{check_identifier, check_scope, check_text};
use tokenledger_domain::policy::{Refusal, check_grant, grant_request};
use tokenledger_tokens::paseto::rfc3339;
use uuid::Uuid;

/// `POST /v1/tokens` body (DESIGN.md "Mint").
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MintBody {
    /// `sub`.
    pub subject: String,
    /// The single audience.
    pub audience: String,
    /// Space-delimited scope.
    pub scope: String,
    /// Lifetime, seconds.
    pub ttl_seconds: i64,
    /// `v4.public` or `v4.local`.
    pub format: TokenFormat,
    /// Confirmation claim (RFC 7800), e.g. `{"jkt": "…"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Map<String, Value>>,
    /// The request that asked for the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<RequestContext>,
}

/// Checks the free-text fields of a request context (422).
pub(crate) fn check_context(c: Option<&RequestContext>) -> Result<(), ApiError> {
    let Some(c) = c else { return Ok(()) };
    for (f, v) in [
        ("context.ip", &c.ip),
        ("context.device_id", &c.device_id),
        ("context.user_agent", &c.user_agent),
    ] {
        if let Some(v) = v {
            check_text(f, v).map_err(|e| ApiError::unprocessable("invalid-identifier", e.to_string()))?;
        }
    }
    Ok(())
}

/// Checks identifiers of a grant (422).
pub(crate) fn check_grant_names(subject: &str, audience: &str, scope: &str) -> Result<(), ApiError> {
    check_identifier("subject", subject)
        .and_then(|_| check_identifier("audience", audience))
        .and_then(|_| check_scope("scope", scope))
        .map_err(|e| ApiError::unprocessable("invalid-identifier", e.to_string()))
}

/// Applies the client's policy (and the server's longest lifetime) to a
/// grant — minted here, or an issuer's own `TokenIssued` append
/// ([`GrantPath::Append`], which must be format `external`); a refusal is
/// recorded as `GrantRefused` and returned.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn police_grant(
    st: &AppState,
    tenant: &str,
    client: &str,
    path: GrantPath,
    subject: &str,
    audience: &str,
    scope: &str,
    ttl: i64,
    format: TokenFormat,
) -> Result<(), Refusal> {
    let policy = st.registry.read().policy(tenant, client);
    let mut result = if path == GrantPath::Append && format != TokenFormat::External {
        Err(Refusal {
            reason: RefusalReason::Format,
            detail: format!(
                "format {:?} is minted only by tokenledger; an issuer's own TokenIssued uses format \"external\"",
                format.as_str()
            ),
        })
    } else {
        check_grant(policy.as_deref(), client, audience, scope, ttl, format)
    };
    if result.is_ok() && ttl as u64 > st.settings.max_token_ttl_seconds {
        result = Err(Refusal {
            reason: RefusalReason::Ttl,
            detail: format!(
                "ttl of {ttl} s is over the server's limit of {} s",
                st.settings.max_token_ttl_seconds
            ),
        });
    }
    let Err(refusal) = result else { return Ok(()) };
    let record = GrantRefused {
        path,
        client_id: client.to_owned(),
        subject: Some(subject.to_owned()),
        requested: grant_request(audience, scope, ttl, format),
        reason: refusal.reason,
        detail: refusal.detail.clone(),
        cutoff_id: None,
    };
    record_refusal(st, tenant, record).await;
    Err(refusal)
}

/// Records a refused grant on the client's `refusals-<client>` stream. The
/// refusal stands whether or not its record could be written; a failure is
/// logged.
pub(crate) async fn record_refusal(st: &AppState, tenant: &str, record: GrantRefused) {
    let client = record.client_id.clone();
    let stream = format!("refusals-{client}");
    if let Err(e) = super::record_server_event(st, tenant, &client, &stream, DomainEvent::GrantRefused(record)).await {
        tracing::error!(error = %e, client = %client, "could not record a refused grant");
    }
}

/// The 403 of a refused grant.
pub(crate) fn refused(r: Refusal) -> ApiError {
    ApiError::forbidden("grant-refused", r.detail).with("reason", serde_json::to_value(r.reason).unwrap_or_default())
}

/// Maps an issuance failure to its problem.
pub(crate) fn issue_problem(e: IssueError) -> ApiError {
    match e {
        IssueError::Refused(r) => super::append_error(tokenledger_store::AppendError::Rejected(r)),
        IssueError::Exists => ApiError::conflict("token-exists", "a token with this id is already recorded"),
        IssueError::Failed(e) => e,
    }
}

/// `POST /v1/tokens` — issuer (for itself) or admin. With an
/// `Idempotency-Key` header a retry returns the same token (`v4.public`
/// signatures are deterministic; a retried `v4.local` token carries the same
/// claims under a fresh nonce); the same key with another request is 409.
pub async fn mint(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Permission::Mint)?;
    let tenant = caller.tenant()?.to_owned();
    let req: MintBody = body.parse().await?;
    check_grant_names(&req.subject, &req.audience, &req.scope)?;
    check_context(req.context.as_ref())?;
    if !matches!(req.format, TokenFormat::V4Public | TokenFormat::V4Local) {
        return Err(ApiError::unprocessable(
            "invalid-format",
            "tokenledger mints v4.public or v4.local",
        ));
    }
    let idem = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .map(str::to_owned)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid-idempotency-key",
                        "Idempotency-Key must be 1-255 visible ASCII characters",
                    )
                })
        })
        .transpose()?;
    // The token id of an idempotent mint is keyed under a server secret: a
    // caller (another issuer of the tenant included) cannot compute it and
    // occupy `token-<jti>` or the event id before the mint.
    let jti = match &idem {
        Some(k) => st
            .keyring
            .idempotent_id(MINT_JTI_LABEL, &id_input(&[&tenant, &caller.name, k])),
        None => Uuid::new_v4(),
    }
    .to_string();
    if idem.is_some()
        && let Some(answer) = replay_mint(&st, &tenant, &caller.name, &jti, &req).await?
    {
        return Ok((StatusCode::OK, Json(answer)));
    }
    if let Err(r) = police_grant(
        &st,
        &tenant,
        &caller.name,
        GrantPath::Mint,
        &req.subject,
        &req.audience,
        &req.scope,
        req.ttl_seconds,
        req.format,
    )
    .await
    {
        return Err(refused(r));
    }
    let now = st.clock.now().with_nanosecond(0).unwrap_or_else(|| st.clock.now());
    let spec = IssueSpec {
        jti: jti.clone(),
        event_id: st
            .keyring
            .idempotent_id(ISSUED_EVENT_ID_LABEL, &id_input(&[&tenant, &jti])),
        subject: req.subject.clone(),
        client_id: caller.name.clone(),
        audience: req.audience.clone(),
        scope: req.scope.clone(),
        issued_at: now,
        expires_at: now + chrono::Duration::seconds(req.ttl_seconds),
        format: req.format,
        cnf: req.cnf.clone(),
        parent: None,
        act: None,
        context: req.context.clone(),
        path: GrantPath::Mint,
    };
    match issue(&st, &tenant, &caller.name, &spec, vec![]).await {
        Ok(t) => Ok((
            StatusCode::CREATED,
            Json(mint_answer(&t.token, &t.token_id, t.expires_at, &t.kid, req.format)),
        )),
        // A concurrent retry with the same Idempotency-Key won the race.
        Err(IssueError::Exists) if idem.is_some() => replay_mint(&st, &tenant, &caller.name, &jti, &req)
            .await?
            .map(|a| (StatusCode::OK, Json(a)))
            .ok_or_else(|| ApiError::conflict("token-exists", "a token with this id is already recorded")),
        Err(e) => Err(issue_problem(e)),
    }
}

use chrono::Timelike;

/// The label of an idempotent mint's token id ([`crate::tokens::KeyRing::idempotent_id`]).
const MINT_JTI_LABEL: &str = "tokenledger/mint/jti/v1";
/// The label of a mint's `TokenIssued` event id.
const ISSUED_EVENT_ID_LABEL: &str = "tokenledger/mint/issued-event-id/v1";

/// An unambiguous encoding of the parts of a derived id: each part
/// length-prefixed (8 bytes, big-endian).
fn id_input(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_be_bytes());
        out.extend_from_slice(p.as_bytes());
    }
    out
}

fn mint_answer(
    token: &str,
    token_id: &str,
    expires_at: chrono::DateTime<chrono::Utc>,
    kid: &str,
    format: TokenFormat,
) -> Value {
    json!({
        "token": token,
        "token_id": token_id,
        "expires_at": rfc3339(expires_at),
        "kid": kid,
        "format": format.as_str(),
    })
}

/// The answer to a retried mint, if `jti` was already issued for the same
/// request; 409 if the Idempotency-Key was used for another request.
async fn replay_mint(
    st: &AppState,
    tenant: &str,
    client: &str,
    jti: &str,
    req: &MintBody,
) -> Result<Option<Value>, ApiError> {
    let Some(rec) = st.views.read(tenant, |v| v.token(jti)) else {
        return Ok(None);
    };
    let same = rec.client_id == client
        && rec.subject == req.subject
        && rec.audience == req.audience
        && rec.scope == req.scope
        && rec.format == req.format
        && rec.cnf == req.cnf
        && (rec.expires_at - rec.issued_at).num_seconds() == req.ttl_seconds;
    if !same {
        return Err(ApiError::conflict(
            "idempotency-key-reused",
            "this Idempotency-Key was used for a different mint request",
        ));
    }
    let Some(kid) = rec.kid.clone() else { return Ok(None) };
    let Some(key) = st.views.read(tenant, |v| v.keys.get(&kid).cloned()) else {
        return Ok(None);
    };
    let material = st.keyring.material(tenant, &key)?;
    let spec = IssueSpec {
        jti: jti.to_owned(),
        event_id: Uuid::nil(),
        subject: rec.subject.clone(),
        client_id: rec.client_id.clone(),
        audience: rec.audience.clone(),
        scope: rec.scope.clone(),
        issued_at: rec.issued_at,
        expires_at: rec.expires_at,
        format: rec.format,
        cnf: rec.cnf.clone(),
        parent: rec.parent.clone(),
        act: None,
        context: None,
        path: GrantPath::Mint,
    };
    let claims = crate::tokens::issue::claims(st, &spec);
    let token = tokenledger_tokens::paseto::mint(&material.signing, &kid, &claims).map_err(ApiError::internal)?;
    Ok(Some(mint_answer(&token, jti, rec.expires_at, &kid, rec.format)))
}

/// `POST /v1/tokens/verify` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// The token.
    pub token: String,
    /// The audience it is presented to.
    pub audience: String,
    /// Scopes the caller requires, space-delimited or as a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// The request being authorized (the end user's address and agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<RequestContext>,
}

/// The `TokenUsed` a verification leaves: attributed to the token only if
/// its signature verified.
pub(crate) fn use_event(
    validator: &str,
    audience: &str,
    v: &Verification,
    context: Option<RequestContext>,
    at: chrono::DateTime<chrono::Utc>,
) -> TokenUsed {
    let clip = |s: &str| s.chars().filter(|c| !c.is_control()).take(256).collect::<String>();
    let (claimed_token_id, claimed_subject, claimed_client_id) = v
        .claimed
        .clone()
        .map(|(a, b, c)| (a.map(|x| clip(&x)), b.map(|x| clip(&x)), c.map(|x| clip(&x))))
        .unwrap_or_default();
    TokenUsed {
        validator: validator.to_owned(),
        audience: audience.to_owned(),
        outcome: if v.reason.is_none() {
            UseOutcome::Accepted
        } else {
            UseOutcome::Rejected
        },
        reason: v.reason.map(|r| r.as_str().to_owned()),
        at,
        context,
        token_id: v.verified.as_ref().map(|c| c.jti.clone()),
        subject: v.verified.as_ref().map(|c| c.sub.clone()),
        client_id: v.verified.as_ref().map(|c| c.client_id.clone()),
        claimed_token_id,
        claimed_subject,
        claimed_client_id,
    }
}

/// Records a `TokenUsed` durably (group-committed with concurrent ones) on
/// the validator's `uses-<validator>` stream.
pub(crate) async fn record_use(st: &AppState, tenant: &str, validator: &str, used: TokenUsed) -> Result<(), ApiError> {
    let ev = DomainEvent::TokenUsed(used);
    super::record_server_event(st, tenant, validator, &format!("uses-{validator}"), ev).await?;
    Ok(())
}

/// `POST /v1/tokens/verify` — validator or admin. Always 200 for a token
/// that was looked at: `{"active": true, "claims": …}` or `{"active":
/// false, "reason": …}`; the use is recorded before the answer.
pub async fn verify_token(State(st): State<AppState>, caller: Caller, body: JsonBody) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Verify)?;
    let tenant = caller.tenant()?.to_owned();
    let req: VerifyBody = body.parse().await?;
    check_identifier("audience", &req.audience)
        .map_err(|e| ApiError::unprocessable("invalid-identifier", e.to_string()))?;
    check_context(req.context.as_ref())?;
    let scopes: Vec<String> = req
        .scopes
        .unwrap_or_default()
        .iter()
        .flat_map(|s| s.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let now = st.clock.now();
    let v = verify(&st, &tenant, &req.token, Some(&req.audience), &scopes, now);
    record_use(
        &st,
        &tenant,
        &caller.name,
        use_event(&caller.name, &req.audience, &v, req.context, now),
    )
    .await?;
    Ok(Json(verify_answer(&v)))
}

fn verify_answer(v: &Verification) -> Value {
    match (v.reason, &v.verified) {
        (None, Some(c)) => json!({"active": true, "claims": c}),
        (Some(r), _) => json!({"active": false, "reason": r.as_str()}),
        (None, None) => json!({"active": false, "reason": Reason::Malformed.as_str()}),
    }
}
