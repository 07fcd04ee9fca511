//! The OAuth endpoints, answering in their RFCs' own shapes (DESIGN.md
//! "Errors"), never `application/problem+json`:
//!
//! * `POST /oauth2/token` — RFC 6749 §4.4 `client_credentials` and RFC 8693
//!   token exchange; errors are RFC 6749 §5.2 JSON.
//! * `POST /oauth2/introspect` — RFC 7662: `{"active": false}` and nothing
//!   else for an inactive token; integer `exp`/`iat`/`nbf`.
//! * `POST /oauth2/revoke` — RFC 7009: 200 with an empty body for a token
//!   that is unknown, malformed or not signed by us.
//!
//! Bodies are `application/x-www-form-urlencoded`, parsed here from the
//! bytes so that a repeated parameter (RFC 6749 §3.1) and every other
//! malformed request answer `invalid_request` in JSON. The caller
//! authenticates with its ledger credential (`Authorization: Bearer tl_…`);
//! a missing or bad one is 401 `invalid_client`. The checks run in
//! DESIGN.md's order: readiness, credential, role, body, then the grant.

use super::tokens::{police_grant, record_use, use_event};
use crate::auth::{Caller, Permission, allowed};
use crate::problem::ApiError;
use crate::state::AppState;
use crate::tokens::{IssueError, IssueSpec, Reason, issue, verify};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Timelike, Utc};
use serde_json::{Map, Value, json};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::{
    GrantPath, GrantRefused, GrantRequest, RefusalReason, TokenExchanged, TokenFormat, TokenRevoked,
};
use tokenledger_domain::ids::{check_identifier, check_scope, token_stream};
use tokenledger_domain::policy::Refusal;
use tokenledger_domain::role::Role;
use tokenledger_store::ExpectedRevision;
use tokenledger_tokens::paseto::TokenClaims;
use uuid::Uuid;

/// `grant_type` of RFC 8693 token exchange.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `grant_type` of RFC 6749 §4.4.
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// The only token type tokenledger takes and issues (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// An RFC 6749 §5.2 error: `{"error", "error_description"}` plus extension
/// members (e.g. `cutoff_id`).
#[derive(Debug, Clone)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    extra: Map<String, Value>,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            extra: Map::new(),
        }
    }

    /// 400 with the given error code.
    fn bad(error: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, description)
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::bad("invalid_request", description)
    }

    fn invalid_grant(description: impl Into<String>) -> Self {
        Self::bad("invalid_grant", description)
    }

    /// 401 `invalid_client`: no credential, or one that is not valid.
    fn invalid_client() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "a valid credential is required: Authorization: Bearer <secret>",
        )
    }

    /// A problem from shared code (issuance, key ring, store) in OAuth's
    /// shape: 5xx stay 5xx (`server_error`, `temporarily_unavailable`), a
    /// refusal by the writer is `invalid_grant`, anything else is
    /// `invalid_request`.
    fn from_api(e: ApiError) -> Self {
        let (status, error) = match e.status {
            StatusCode::SERVICE_UNAVAILABLE => (e.status, "temporarily_unavailable"),
            s if s.is_server_error() => (s, "server_error"),
            StatusCode::PAYLOAD_TOO_LARGE => (e.status, "invalid_request"),
            StatusCode::FORBIDDEN => (StatusCode::BAD_REQUEST, "invalid_grant"),
            _ => (StatusCode::BAD_REQUEST, "invalid_request"),
        };
        Self {
            status,
            error,
            description: e.detail,
            extra: e.extra,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut m = Map::new();
        m.insert("error".into(), Value::from(self.error));
        m.insert("error_description".into(), Value::from(self.description.clone()));
        for (k, v) in &self.extra {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(m)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        let h = resp.headers_mut();
        no_store(h);
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1).
fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A 200 JSON answer that no cache keeps.
fn ok_json(v: Value) -> Response {
    let mut resp = (StatusCode::OK, axum::Json(v)).into_response();
    no_store(resp.headers_mut());
    resp
}

/// 405 for any method but POST, in OAuth's shape.
pub async fn method_not_allowed() -> Response {
    let mut resp = OAuthError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "this endpoint takes POST",
    )
    .into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    resp
}

/// The authenticated caller of an OAuth endpoint, or `invalid_client`; the
/// same check as the [`Caller`] extractor, answered in OAuth's shape.
fn oauth_caller(st: &AppState, headers: &HeaderMap) -> Result<Caller, OAuthError> {
    // Exactly one `Authorization: Bearer`: two would be ambiguous.
    let caller = crate::auth::bearer(headers)
        .ok()
        .and_then(|secret| st.authenticate(secret));
    if caller.is_none() {
        st.metrics.auth_failures.inc();
    }
    caller.ok_or_else(OAuthError::invalid_client)
}

/// Readiness, credential, role and tenant, in that order.
fn admit(st: &AppState, headers: &HeaderMap, perm: Permission) -> Result<(Caller, String), OAuthError> {
    if !st.is_ready() {
        return Err(OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the views are catching up with the log; retry shortly",
        ));
    }
    let caller = oauth_caller(st, headers)?;
    let tenant = match (&caller.tenant, allowed(caller.role, perm)) {
        (Some(t), true) => t.clone(),
        _ => {
            return Err(OAuthError::bad(
                "unauthorized_client",
                format!("role {} may not call this endpoint", caller.role),
            ));
        }
    };
    Ok((caller, tenant))
}

/// The parameters of a form body, each at most once.
#[derive(Debug)]
struct Form(Vec<(String, String)>);

impl Form {
    /// Reads and parses the body: `application/x-www-form-urlencoded`,
    /// within the body limit, no parameter repeated.
    async fn read(st: &AppState, req: Request) -> Result<Self, OAuthError> {
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
        if !is_form {
            return Err(OAuthError::invalid_request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let limit = st.settings.max_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit).await.map_err(|_| {
            OAuthError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "the body is over the size limit",
            )
        })?;
        let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| OAuthError::invalid_request(format!("the body is not a valid form: {e}")))?;
        let mut seen = std::collections::HashSet::new();
        for (k, _) in &params {
            if !seen.insert(k.as_str()) {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {k:?} appears more than once (RFC 6749 §3.1)"
                )));
            }
        }
        Ok(Form(params))
    }

    /// A parameter; one sent without a value counts as omitted (RFC 6749 §3.1).
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("parameter {name:?} is required")))
    }

    /// The one audience: `audience` (RFC 8693) or its synonym `resource`
    /// (RFC 8707); both may be sent only if they agree.
    fn audience(&self) -> Result<&str, OAuthError> {
        let aud = match (self.get("audience"), self.get("resource")) {
            (Some(a), Some(r)) if a != r => {
                return Err(OAuthError::bad(
                    "invalid_target",
                    "a token has one audience: audience and resource disagree",
                ));
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => return Err(OAuthError::invalid_request("parameter \"audience\" is required")),
        };
        check_identifier("audience", aud).map_err(|e| OAuthError::bad("invalid_target", e.to_string()))?;
        Ok(aud)
    }

    /// The requested lifetime: `ttl_seconds` or `expires_in`, a positive
    /// integer.
    fn ttl(&self) -> Result<Option<i64>, OAuthError> {
        let raw = match (self.get("ttl_seconds"), self.get("expires_in")) {
            (Some(a), Some(b)) if a != b => {
                return Err(OAuthError::invalid_request("ttl_seconds and expires_in disagree"));
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => return Ok(None),
        };
        match raw.parse::<i64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(OAuthError::invalid_request(format!(
                "the lifetime must be a positive number of seconds, not {raw:?}"
            ))),
        }
    }

    /// `token_format`: `v4.public` (the default) or `v4.local`.
    fn format(&self) -> Result<TokenFormat, OAuthError> {
        match self.get("token_format") {
            None | Some("v4.public") => Ok(TokenFormat::V4Public),
            Some("v4.local") => Ok(TokenFormat::V4Local),
            Some(f) => Err(OAuthError::invalid_request(format!(
                "token_format {f:?} is not one tokenledger mints (v4.public, v4.local)"
            ))),
        }
    }

    /// An optional space-delimited scope, checked (RFC 6749 §3.3).
    fn scope(&self) -> Result<Option<&str>, OAuthError> {
        let Some(s) = self.get("scope") else { return Ok(None) };
        check_scope("scope", s).map_err(|e| OAuthError::bad("invalid_scope", e.to_string()))?;
        Ok(Some(s))
    }
}

/// The writer's time, to the second (token times are whole seconds).
fn now_secs(st: &AppState) -> DateTime<Utc> {
    let now = st.clock.now();
    now.with_nanosecond(0).unwrap_or(now)
}

/// A refused grant in OAuth's shape.
fn refusal_error(r: Refusal) -> OAuthError {
    let error = match r.reason {
        RefusalReason::NoPolicy => "unauthorized_client",
        RefusalReason::Audience => "invalid_target",
        RefusalReason::Scope => "invalid_scope",
        RefusalReason::Ttl | RefusalReason::Format => "invalid_request",
        RefusalReason::Cutoff | RefusalReason::Depth | RefusalReason::NotServed => "invalid_grant",
    };
    let mut e = OAuthError::bad(error, r.detail);
    e.extra
        .insert("reason".into(), serde_json::to_value(r.reason).unwrap_or_default());
    e
}

/// An issuance failure in OAuth's shape: the writer's refusal
/// (`parent-revoked`, `minting-cutoff`) is `invalid_grant` with its detail
/// and members (e.g. `cutoff_id`).
fn issue_error(e: IssueError) -> OAuthError {
    match e {
        IssueError::Refused(r) => {
            let mut err = OAuthError::invalid_grant(r.detail);
            err.extra.extend(r.extra);
            err.extra.insert("reason".into(), Value::from(r.kind));
            err
        }
        IssueError::Exists => OAuthError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "a token with this id is already recorded",
        ),
        IssueError::Failed(e) => OAuthError::from_api(e),
    }
}

/// The longest lifetime the caller's policy allows for `audience`, within
/// the server's limit; `None` when the audience is not in its policy.
fn policy_max_ttl(st: &AppState, tenant: &str, client: &str, audience: &str) -> Option<i64> {
    let policy = st.registry.read().policy(tenant, client)?;
    let max = policy.audiences.get(audience)?.max_ttl_seconds;
    Some(max.min(st.settings.max_token_ttl_seconds).min(i64::MAX as u64) as i64)
}

/// A lifetime as a duration (a policy's lifetimes are far below chrono's
/// limits; anything else is refused rather than overflowing).
fn seconds(n: i64) -> Result<chrono::Duration, OAuthError> {
    chrono::Duration::try_seconds(n)
        .ok_or_else(|| OAuthError::invalid_request(format!("a lifetime of {n} s is out of range")))
}

/// The RFC 6749 §5.1 answer.
fn token_answer(token: &str, expires_in: i64, scope: &str) -> Response {
    ok_json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": scope,
        "issued_token_type": ACCESS_TOKEN_TYPE,
    }))
}

/// A fresh token id and the id of its `TokenIssued` (derived like mint's).
fn new_ids(tenant: &str) -> (String, Uuid) {
    let jti = Uuid::new_v4().to_string();
    let eid = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("tokenledger/issued\0{tenant}\0{jti}").as_bytes(),
    );
    (jti, eid)
}

/// `POST /oauth2/token` — issuer or admin (`Permission::Mint`).
pub async fn token(State(st): State<AppState>, req: Request) -> Result<Response, OAuthError> {
    let (caller, tenant) = admit(&st, req.headers(), Permission::Mint)?;
    let form = Form::read(&st, req).await?;
    match form.required("grant_type")? {
        GRANT_CLIENT_CREDENTIALS => client_credentials(&st, &caller, &tenant, &form).await,
        GRANT_TOKEN_EXCHANGE => exchange(&st, &caller, &tenant, &form).await,
        other => Err(OAuthError::bad(
            "unsupported_grant_type",
            format!("grant_type {other:?} is not supported (client_credentials, {GRANT_TOKEN_EXCHANGE})"),
        )),
    }
}

/// RFC 6749 §4.4: a token for the caller itself, within its policy.
async fn client_credentials(st: &AppState, caller: &Caller, tenant: &str, form: &Form) -> Result<Response, OAuthError> {
    let scope = form
        .scope()?
        .ok_or_else(|| OAuthError::invalid_request("parameter \"scope\" is required"))?;
    let audience = form.audience()?;
    let format = form.format()?;
    let ttl = match form.ttl()? {
        Some(t) => t,
        None => policy_max_ttl(st, tenant, &caller.name, audience).unwrap_or(0),
    };
    police_grant(
        st,
        tenant,
        &caller.name,
        GrantPath::ClientCredentials,
        &caller.name,
        audience,
        scope,
        ttl,
        format,
    )
    .await
    .map_err(refusal_error)?;
    let now = now_secs(st);
    let (jti, event_id) = new_ids(tenant);
    let spec = IssueSpec {
        jti,
        event_id,
        subject: caller.name.clone(),
        client_id: caller.name.clone(),
        audience: audience.to_owned(),
        scope: scope.to_owned(),
        issued_at: now,
        expires_at: now + seconds(ttl)?,
        format,
        cnf: None,
        parent: None,
        act: None,
        context: None,
        path: GrantPath::ClientCredentials,
    };
    let t = issue(st, tenant, &caller.name, &spec, vec![])
        .await
        .map_err(issue_error)?;
    Ok(token_answer(&t.token, ttl, scope))
}

/// Whether `may_act` (RFC 8693 §4.4) names the caller.
fn may_act_names(may_act: Option<&Value>, caller: &str) -> bool {
    may_act.is_some_and(|m| {
        m.get("client_id").and_then(Value::as_str) == Some(caller)
            || m.get("sub").and_then(Value::as_str) == Some(caller)
    })
}

/// Verifies a token presented to the exchange; any reason is `invalid_grant`.
fn verified(
    st: &AppState,
    tenant: &str,
    which: &str,
    token: &str,
    now: DateTime<Utc>,
) -> Result<TokenClaims, OAuthError> {
    let v = verify(st, tenant, token, None, &[], now);
    match (v.reason, v.verified) {
        (None, Some(c)) => Ok(c),
        (r, _) => Err(OAuthError::invalid_grant(format!(
            "the {which} is not active: {}",
            r.unwrap_or(Reason::Malformed).as_str()
        ))),
    }
}

/// Records the `GrantRefused` of an exchange refused for a reason of its
/// own — asking for more than the subject token holds, a chain too deep, a
/// caller the subject token is not for (the policy's refusals are recorded
/// by `police_grant`).
async fn record_exchange_refusal(
    st: &AppState,
    tenant: &str,
    client: &str,
    subject: &str,
    requested: GrantRequest,
    reason: RefusalReason,
    detail: &str,
) {
    let record = GrantRefused {
        path: GrantPath::Exchange,
        client_id: client.to_owned(),
        subject: Some(subject.to_owned()),
        requested,
        reason,
        detail: detail.to_owned(),
        cutoff_id: None,
    };
    super::tokens::record_refusal(st, tenant, record).await;
}

/// RFC 8693 token exchange: a narrower token for the subject of
/// `subject_token`, minted for the caller, recorded with its parent.
async fn exchange(st: &AppState, caller: &Caller, tenant: &str, form: &Form) -> Result<Response, OAuthError> {
    let subject_token = form.required("subject_token")?;
    let subject_type = form.required("subject_token_type")?;
    if subject_type != ACCESS_TOKEN_TYPE {
        return Err(OAuthError::invalid_request(format!(
            "subject_token_type {subject_type:?} is not supported; use {ACCESS_TOKEN_TYPE}"
        )));
    }
    let actor_token = form.get("actor_token");
    match (actor_token, form.get("actor_token_type")) {
        (Some(_), None) => {
            return Err(OAuthError::invalid_request(
                "actor_token_type is required with actor_token",
            ));
        }
        (None, Some(_)) => {
            return Err(OAuthError::invalid_request(
                "actor_token_type is sent only with actor_token",
            ));
        }
        (Some(_), Some(t)) if t != ACCESS_TOKEN_TYPE => {
            return Err(OAuthError::invalid_request(format!(
                "actor_token_type {t:?} is not supported; use {ACCESS_TOKEN_TYPE}"
            )));
        }
        _ => {}
    }
    if let Some(t) = form.get("requested_token_type")
        && t != ACCESS_TOKEN_TYPE
    {
        return Err(OAuthError::invalid_request(format!(
            "requested_token_type {t:?} is not supported; tokenledger issues {ACCESS_TOKEN_TYPE}"
        )));
    }
    let audience = form.audience()?;
    let requested_scope = form.scope()?;
    let format = form.format()?;
    let now = now_secs(st);

    let subject = verified(st, tenant, "subject_token", subject_token, now)?;
    let asked = || GrantRequest {
        audience: Some(audience.to_owned()),
        scope: requested_scope.map(str::to_owned),
        ttl_seconds: None,
        format: Some(format),
    };
    let depth = st.views.read(tenant, |v| v.chain_depth(&subject.jti)) + 1;
    if depth > st.settings.max_exchange_depth as usize {
        let detail = format!(
            "the exchange chain would be {depth} deep; at most {} exchanges are allowed",
            st.settings.max_exchange_depth
        );
        record_exchange_refusal(
            st,
            tenant,
            &caller.name,
            &subject.sub,
            asked(),
            RefusalReason::Depth,
            &detail,
        )
        .await;
        return Err(OAuthError::invalid_grant(detail));
    }
    let policy = st.registry.read().policy(tenant, &caller.name);
    let serves = policy.as_ref().is_some_and(|p| p.serves.contains(&subject.aud));
    if !serves && !may_act_names(subject.may_act.as_ref(), &caller.name) {
        let detail = format!(
            "client {:?} is not an audience of the subject_token ({:?}) and is not named in its may_act",
            caller.name, subject.aud
        );
        record_exchange_refusal(
            st,
            tenant,
            &caller.name,
            &subject.sub,
            asked(),
            RefusalReason::NotServed,
            &detail,
        )
        .await;
        return Err(OAuthError::invalid_grant(detail));
    }
    let actor = actor_token
        .map(|t| verified(st, tenant, "actor_token", t, now))
        .transpose()?;
    // The actor token identifies the party acting (RFC 8693 §4.1): the
    // caller itself, so a caller cannot write someone else into `act`.
    if let Some(a) = &actor
        && a.sub != caller.name
        && a.client_id != caller.name
    {
        return Err(OAuthError::invalid_grant(format!(
            "the actor_token names {:?} (client {:?}), not the caller {:?}",
            a.sub, a.client_id, caller.name
        )));
    }

    // Scope: what was asked, or what the subject token holds that the
    // caller's policy allows for the new audience.
    let policy_scopes: Option<Vec<String>> = policy
        .as_ref()
        .and_then(|p| p.audiences.get(audience))
        .map(|a| a.scopes.clone());
    let scope = match requested_scope {
        Some(s) => s.to_owned(),
        None => match &policy_scopes {
            Some(allowed) => {
                let s = subject
                    .scope
                    .split(' ')
                    .filter(|s| allowed.iter().any(|a| a == s))
                    .collect::<Vec<_>>()
                    .join(" ");
                if s.is_empty() {
                    return Err(OAuthError::bad(
                        "invalid_scope",
                        format!(
                            "the subject_token holds no scope that client {:?} may have for {audience:?}",
                            caller.name
                        ),
                    ));
                }
                s
            }
            // Not in the policy: police_grant refuses the audience.
            None => subject.scope.clone(),
        },
    };
    // Not in the policy: the subject token's own lifetime (police_grant
    // refuses the audience).
    let exp = match policy_max_ttl(st, tenant, &caller.name, audience) {
        Some(cap) => std::cmp::min(now + seconds(cap)?, subject.exp),
        None => subject.exp,
    };
    let ttl = (exp - now).num_seconds();
    if ttl <= 0 {
        return Err(OAuthError::invalid_grant("the subject_token expires now"));
    }
    let wider: Vec<&str> = scope
        .split(' ')
        .filter(|s| !subject.scope.split(' ').any(|h| h == *s))
        .collect();
    if !wider.is_empty() {
        let detail = format!(
            "scope {:?} is not held by the subject_token; an exchange only narrows",
            wider.join(" ")
        );
        let requested = GrantRequest {
            audience: Some(audience.to_owned()),
            scope: Some(scope.clone()),
            ttl_seconds: Some(ttl),
            format: Some(format),
        };
        record_exchange_refusal(
            st,
            tenant,
            &caller.name,
            &subject.sub,
            requested,
            RefusalReason::Scope,
            &detail,
        )
        .await;
        let mut e = OAuthError::bad("invalid_scope", detail);
        e.extra.insert("reason".into(), Value::from("scope"));
        return Err(e);
    }
    police_grant(
        st,
        tenant,
        &caller.name,
        GrantPath::Exchange,
        &subject.sub,
        audience,
        &scope,
        ttl,
        format,
    )
    .await
    .map_err(refusal_error)?;

    // Delegation (RFC 8693 §4.1): the actor is the current actor; a prior
    // actor nests under it. Without an actor token, the subject token's
    // own `act` carries over.
    let act = match &actor {
        Some(a) => {
            let mut act = json!({"sub": a.sub, "client_id": a.client_id});
            if let Some(prev) = &subject.act {
                act["act"] = prev.clone();
            }
            Some(act)
        }
        None => subject.act.clone(),
    };
    let (jti, event_id) = new_ids(tenant);
    let spec = IssueSpec {
        jti: jti.clone(),
        event_id,
        subject: subject.sub.clone(),
        client_id: caller.name.clone(),
        audience: audience.to_owned(),
        scope: scope.clone(),
        issued_at: now,
        expires_at: exp,
        format,
        cnf: subject.cnf.clone(),
        parent: Some(subject.jti.clone()),
        act,
        context: None,
        path: GrantPath::Exchange,
    };
    let exchanged = DomainEvent::TokenExchanged(TokenExchanged {
        subject_token_id: subject.jti.clone(),
        actor_token_id: actor.as_ref().map(|a| a.jti.clone()),
        new_token_id: jti,
        client_id: caller.name.clone(),
        requested_audience: audience.to_owned(),
        requested_scope: requested_scope.map(str::to_owned),
        granted_audience: audience.to_owned(),
        granted_scope: scope.clone(),
    });
    let t = issue(st, tenant, &caller.name, &spec, vec![exchanged])
        .await
        .map_err(issue_error)?;
    Ok(token_answer(&t.token, ttl, &scope))
}

/// An integer epoch time (RFC 7662 §2.2).
fn epoch(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

/// `POST /oauth2/introspect` — validator or admin (`Permission::Verify`).
/// The use is recorded like a verification's, before the answer.
pub async fn introspect(State(st): State<AppState>, req: Request) -> Result<Response, OAuthError> {
    let (caller, tenant) = admit(&st, req.headers(), Permission::Verify)?;
    let form = Form::read(&st, req).await?;
    let token = form.required("token")?;
    let now = st.clock.now();
    let v = verify(&st, &tenant, token, None, &[], now);
    let audience = v
        .verified
        .as_ref()
        .map_or_else(|| "introspection".to_owned(), |c| c.aud.clone());
    record_use(
        &st,
        &tenant,
        &caller.name,
        use_event(&caller.name, &audience, &v, None, now),
    )
    .await
    .map_err(OAuthError::from_api)?;
    let answer = match (v.reason, &v.verified) {
        (None, Some(c)) => {
            let mut a = json!({
                "active": true,
                "scope": c.scope,
                "client_id": c.client_id,
                "sub": c.sub,
                "aud": c.aud,
                "iss": c.iss,
                "exp": epoch(c.exp),
                "iat": epoch(c.iat),
                "nbf": epoch(c.nbf),
                "jti": c.jti,
                "token_type": "Bearer",
            });
            if let Some(act) = &c.act {
                a["act"] = act.clone();
            }
            if let Some(cnf) = &c.cnf {
                a["cnf"] = Value::Object(cnf.clone());
            }
            a
        }
        _ => json!({"active": false}),
    };
    Ok(ok_json(answer))
}

/// `POST /oauth2/revoke` — an issuer revokes its own tokens, an admin any
/// token of its tenant (`Permission::RevokeOwn`). A token that is not a
/// validly signed token of the ledger is answered 200 and left alone
/// (RFC 7009 §2.2); revoking a revoked token again records nothing.
pub async fn revoke(State(st): State<AppState>, req: Request) -> Result<Response, OAuthError> {
    let (caller, tenant) = admit(&st, req.headers(), Permission::RevokeOwn)?;
    let form = Form::read(&st, req).await?;
    let token = form.required("token")?;
    let v = verify(&st, &tenant, token, None, &[], st.clock.now());
    // Only a validly signed token whose claims match the ledger's record:
    // expired or revoked is fine, a forgery (not_issued) is unknown.
    let (Some(claims), Some(record)) = (&v.verified, &v.record) else {
        return Ok(empty_ok());
    };
    if v.reason == Some(Reason::NotIssued) {
        return Ok(empty_ok());
    }
    if record.client_id != caller.name && caller.role != Role::Admin {
        return Err(OAuthError::bad(
            "unauthorized_client",
            "the token was not issued to this client",
        ));
    }
    let jti = claims.jti.clone();
    if st.views.read(&tenant, |v| v.is_revoked_directly(&jti)) {
        return Ok(empty_ok());
    }
    let event = DomainEvent::TokenRevoked(TokenRevoked {
        token_id: Some(jti.clone()),
        selector: None,
        reason: "revoked by the client (RFC 7009)".into(),
        by: Some(caller.name.clone()),
    });
    super::append_batch(
        &st,
        &tenant,
        &caller.name,
        &token_stream(&jti),
        ExpectedRevision::Any,
        vec![event],
    )
    .await
    .map_err(OAuthError::from_api)?;
    Ok(empty_ok())
}

/// RFC 7009 §2.2: 200, no content to speak of.
fn empty_ok() -> Response {
    let mut resp = StatusCode::OK.into_response();
    no_store(resp.headers_mut());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn may_act_names_the_caller_by_client_id_or_sub() {
        assert!(may_act_names(Some(&json!({"client_id": "gw"})), "gw"));
        assert!(may_act_names(Some(&json!({"sub": "gw"})), "gw"));
        assert!(!may_act_names(
            Some(&json!({"sub": "other", "client_id": "other"})),
            "gw"
        ));
        assert!(!may_act_names(Some(&json!("gw")), "gw"));
        assert!(!may_act_names(None, "gw"));
    }

    #[test]
    fn shared_problems_keep_their_members_in_oauth_shape() {
        let e = OAuthError::from_api(ApiError::forbidden("minting-cutoff", "cut off").with("cutoff_id", "c-1"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body(),
            json!({"error": "invalid_grant", "error_description": "cut off", "cutoff_id": "c-1"})
        );
        let e = OAuthError::from_api(ApiError::unavailable("shutting-down", "bye"));
        assert_eq!(
            (e.status, e.error),
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        );
        let e = issue_error(IssueError::Refused(tokenledger_store::Rejection {
            kind: "parent-revoked".into(),
            detail: "revoked".into(),
            extra: Map::new(),
        }));
        assert_eq!(e.body()["error"], "invalid_grant");
        assert_eq!(e.body()["reason"], "parent-revoked");
    }
}
