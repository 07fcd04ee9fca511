//! `POST /v1/principals`, `POST /v1/principals/{name}/disable`,
//! `POST /v1/principals/{name}/rotate`.
//!
//! The bootstrap principal creates a tenant and its first admin, and nothing
//! else; an admin manages the principals of its own tenant. The secret is
//! shown once, in the answer that creates or rotates it.

use super::append_server_event;
use crate::auth::{Caller, Permission, new_credential};
use crate::problem::{ApiError, JsonBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tokenledger_domain::DomainEvent;
use tokenledger_domain::events::{PrincipalCreated, PrincipalDisabled, PrincipalSecretRotated, TenantCreated};
use tokenledger_domain::ids::{check_identifier, check_stream_name, check_tenant};
use tokenledger_domain::role::Role;
use tokenledger_store::{AppendError, ExpectedRevision};

/// `POST /v1/principals` body.
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePrincipal {
    /// The principal's name, unique in its tenant; an issuer's `client_id`.
    pub name: String,
    /// Its role (not `bootstrap`).
    pub role: Role,
    /// Its tenant: required from bootstrap; from an admin, its own or absent.
    pub tenant: Option<String>,
}

fn principal_stream(name: &str) -> String {
    format!("principal-{name}")
}

/// Names the audit trail uses for the server and the bootstrap secret.
const RESERVED_NAMES: &[&str] = &["bootstrap", "server", "tokenledger"];

/// A principal name is lower-case ASCII letters and digits with `. _ : @ -`
/// inside, starting with a letter or digit, at most 128 bytes — so
/// `IDP-1` and `idp-1` can never be two principals, nothing looks like
/// something else, and the name is a valid stream suffix — and is not a
/// name the audit trail reserves.
fn check_name(name: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        Err(ApiError::unprocessable(
            "invalid-identifier",
            format!("principal name {name:?}: {why}; use lower-case ASCII letters, digits and . _ : @ - (at most 128)"),
        ))
    };
    let ok_char = |(i, c): (usize, char)| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || (i > 0 && matches!(c, '.' | '_' | ':' | '@' | '-'))
    };
    if name.is_empty() || name.len() > 128 || !name.chars().enumerate().all(ok_char) {
        return bad("not allowed");
    }
    if RESERVED_NAMES.contains(&name) {
        return bad("reserved");
    }
    check_identifier("name", name)
        .and_then(|_| check_stream_name(&principal_stream(name)))
        .or_else(|e| bad(&e.to_string()))
}

/// `POST /v1/principals` — bootstrap (a tenant's first admin) or admin (its
/// own tenant). Answers 201 `{"name", "role", "tenant", "secret"}`.
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_any(&[Permission::Administer, Permission::Bootstrap])?;
    let req: CreatePrincipal = body.parse().await?;
    if req.role == Role::Bootstrap {
        return Err(ApiError::forbidden(
            "role-not-allowed",
            "the bootstrap role is held only by the bootstrap secret",
        ));
    }
    // One principal creation at a time: two requests cannot both become a
    // tenant's first admin.
    let _guard = st.principal_lock.lock().await;
    let tenant = if caller.role == Role::Bootstrap {
        let tenant = req
            .tenant
            .clone()
            .ok_or_else(|| ApiError::bad_request("invalid-body", "tenant is required"))?;
        if req.role != Role::Admin {
            return Err(ApiError::forbidden(
                "role-not-allowed",
                "the bootstrap principal creates only a tenant's first admin",
            ));
        }
        check_tenant(&tenant).map_err(|e| ApiError::unprocessable("invalid-identifier", e.to_string()))?;
        check_name(&req.name)?;
        if st.registry.read().tenant_ever_had_admin(&tenant) {
            return Err(ApiError::forbidden(
                "tenant-has-admin",
                "this tenant already has (or had) an admin; its admins create further principals",
            ));
        }
        if !st.registry.read().tenant_exists(&tenant) {
            let ev = DomainEvent::TenantCreated(TenantCreated {
                tenant: tenant.clone(),
                by: caller.name.clone(),
            });
            match append_server_event(&st, &tenant, &caller.name, "tenant", ExpectedRevision::NoStream, ev).await {
                Ok(_) | Err(AppendError::WrongExpectedRevision { .. }) => {}
                Err(e) => return Err(super::streams::append_error(e)),
            }
        }
        tenant
    } else {
        let own = caller.tenant()?.to_owned();
        if let Some(t) = &req.tenant
            && *t != own
        {
            return Err(ApiError::forbidden(
                "stamped-field-mismatch",
                format!("tenant is {t:?} but the credential's tenant is {own:?}"),
            ));
        }
        check_name(&req.name)?;
        own
    };
    let (secret_id, secret, secret_hash) = new_credential(&mut rand::rng());
    let ev = DomainEvent::PrincipalCreated(PrincipalCreated {
        name: req.name.clone(),
        role: req.role,
        tenant: tenant.clone(),
        secret_id,
        secret_hash,
        by: caller.name.clone(),
    });
    match append_server_event(
        &st,
        &tenant,
        &caller.name,
        &principal_stream(&req.name),
        ExpectedRevision::NoStream,
        ev,
    )
    .await
    {
        Ok(_) => {}
        Err(AppendError::WrongExpectedRevision { .. }) => {
            return Err(ApiError::conflict(
                "principal-exists",
                format!("a principal named {:?} already exists in this tenant", req.name),
            ));
        }
        Err(e) => return Err(super::streams::append_error(e)),
    }
    tracing::info!(tenant = %tenant, name = %req.name, role = %req.role, by = %caller.name, "principal created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": req.name, "role": req.role, "tenant": tenant, "secret": secret})),
    ))
}

/// `POST /v1/principals/{name}/disable` — admin of the principal's tenant.
/// Disabling twice is not an error.
pub async fn disable(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Administer)?;
    let tenant = caller.tenant()?.to_owned();
    let Some(p) = st.registry.read().principal(&tenant, &name).cloned() else {
        return Err(ApiError::not_found(
            "principal-not-found",
            format!("no principal {name:?}"),
        ));
    };
    if !p.disabled {
        let ev = DomainEvent::PrincipalDisabled(PrincipalDisabled {
            name: name.clone(),
            tenant: tenant.clone(),
            by: caller.name.clone(),
        });
        super::record_server_event(&st, &tenant, &caller.name, &principal_stream(&name), ev).await?;
        tracing::info!(tenant = %tenant, name = %name, by = %caller.name, "principal disabled");
    }
    Ok(Json(json!({"name": name, "disabled": true})))
}

/// `POST /v1/principals/{name}/rotate` — an admin of its tenant, or the
/// principal itself. The old secret stops working at once.
pub async fn rotate(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?.to_owned();
    if caller.name != name {
        caller.require(Permission::Administer)?;
    }
    let Some(p) = st.registry.read().principal(&tenant, &name).cloned() else {
        return Err(ApiError::not_found(
            "principal-not-found",
            format!("no principal {name:?}"),
        ));
    };
    if p.disabled {
        return Err(ApiError::conflict(
            "principal-disabled",
            format!("principal {name:?} is disabled"),
        ));
    }
    let (secret_id, secret, secret_hash) = new_credential(&mut rand::rng());
    let ev = DomainEvent::PrincipalSecretRotated(PrincipalSecretRotated {
        name: name.clone(),
        tenant: tenant.clone(),
        secret_id,
        secret_hash,
        by: caller.name.clone(),
    });
    super::record_server_event(&st, &tenant, &caller.name, &principal_stream(&name), ev).await?;
    tracing::info!(tenant = %tenant, name = %name, by = %caller.name, "principal secret rotated");
    Ok(Json(json!({"name": name, "secret": secret})))
}
