//! `PUT /v1/issuers/{name}` — trust an external issuer (admin).
//!
//! Records `IssuerTrusted` on `issuer-<name>`; a later `PUT` replaces the
//! issuer's keys and lifetime. Verify then accepts a token whose footer
//! `kid` is the `k4.pid` of one of the issuer's keys, whose `iss` is the
//! issuer's name, whose lifetime is within `max_ttl_seconds`, and which the
//! issuer recorded write-ahead (its principal, of the same name, appends
//! `TokenIssued` with format `external`).

use crate::auth::{Caller, Permission};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::IssuerTrusted;
use tokenledger_domain::ids::{check_identifier, check_stream_name};
use tokenledger_store::ExpectedRevision;
use tokenledger_tokens::keys::kid_of_public;

/// Most keys one issuer may have at a time.
pub const MAX_ISSUER_KEYS: usize = 16;

/// `PUT /v1/issuers/{name}` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerBody {
    /// PASERK `k4.public.…` keys, 1 to [`MAX_ISSUER_KEYS`].
    pub keys: Vec<String>,
    /// The longest lifetime accepted from this issuer, seconds.
    pub max_ttl_seconds: u64,
}

/// The stream of an issuer's trust records.
pub fn issuer_stream(name: &str) -> String {
    format!("issuer-{name}")
}

/// `PUT /v1/issuers/{name}` — admin. Answers the issuer's name and the
/// PASERK ids (`k4.pid.…`) its tokens must carry as footer `kid`.
pub async fn trust(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Administer)?;
    let tenant = caller.tenant()?.to_owned();
    let req: IssuerBody = body.parse().await?;
    let invalid = |kind: &'static str, detail: String| ApiError::unprocessable(kind, detail);
    check_identifier("name", &name).map_err(|e| invalid("invalid-identifier", e.to_string()))?;
    let stream = issuer_stream(&name);
    check_stream_name(&stream).map_err(|e| invalid("invalid-identifier", format!("name: {e}")))?;
    if name == st.settings.issuer_name {
        return Err(invalid(
            "invalid-identifier",
            format!("{name:?} is this server's own issuer name"),
        ));
    }
    if req.keys.is_empty() || req.keys.len() > MAX_ISSUER_KEYS {
        return Err(invalid(
            "invalid-issuer-keys",
            format!("an issuer has 1 to {MAX_ISSUER_KEYS} keys"),
        ));
    }
    let max = st.settings.max_token_ttl_seconds;
    if req.max_ttl_seconds == 0 || req.max_ttl_seconds > max {
        return Err(invalid(
            "invalid-max-ttl",
            format!("max_ttl_seconds must be 1 to {max} (the server's longest token lifetime)"),
        ));
    }
    let mut kids: Vec<String> = Vec::with_capacity(req.keys.len());
    for (i, k) in req.keys.iter().enumerate() {
        let kid = kid_of_public(k).ok_or_else(|| {
            invalid(
                "invalid-issuer-keys",
                format!("keys[{i}] is not a PASERK k4.public key"),
            )
        })?;
        if kids.contains(&kid) {
            return Err(invalid("invalid-issuer-keys", format!("keys[{i}] is listed twice")));
        }
        kids.push(kid);
    }
    // A key belongs to one signer: taking another issuer's (or our own) key
    // would silently move its tokens to this issuer.
    let taken = st.views.read(&tenant, |v| {
        kids.iter().find_map(|kid| {
            if v.keys.contains_key(kid) {
                Some((kid.clone(), st.settings.issuer_name.clone()))
            } else {
                v.issuer_kids
                    .get(kid)
                    .filter(|(owner, _)| *owner != name)
                    .map(|(owner, _)| (kid.clone(), owner.clone()))
            }
        })
    });
    if let Some((kid, owner)) = taken {
        return Err(ApiError::conflict(
            "key-in-use",
            format!("key {kid} already belongs to issuer {owner:?}"),
        ));
    }
    let ev = DomainEvent::IssuerTrusted(IssuerTrusted {
        name: name.clone(),
        keys: req.keys,
        max_ttl_seconds: req.max_ttl_seconds,
    });
    let r = super::append_batch(&st, &tenant, &caller.name, &stream, ExpectedRevision::Any, vec![ev]).await?;
    tracing::info!(tenant = %tenant, issuer = %name, by = %caller.name, keys = kids.len(), "issuer trusted");
    Ok(Json(json!({
        "name": name,
        "kids": kids,
        "max_ttl_seconds": req.max_ttl_seconds,
        "position": r.events.last().map(|e| e.position),
    })))
}
