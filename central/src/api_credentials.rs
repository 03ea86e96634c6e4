//! The lifecycle of a tenant's credentials after their creation: API
//! tokens listed (never their secret: central only holds its SHA-256) and
//! revoked, users removed (their sessions end), and the refusal of a
//! revoked or expired token ([`refused`]). Tenant admins act within their
//! scope (a credential they could have granted, [`Principal::may_grant`]),
//! the operator (`/api/v1/admin/*`, the CLI) on any tenant. Every
//! revocation and removal is audited in the write that makes it.
//!
//! It decides who may do what; the stores do the writes
//! ([`crate::store::AuthStore::revoke_api_token`],
//! [`crate::store::AuthStore::remove_user`]).

use std::sync::Arc;

use axum::extract::State;
use outpost_web::{Json, Path};

use crate::Central;
use crate::api::{ApiError, internal_error as internal, require};
use crate::model::{ApiTokenRecord, Principal, Role, TokenRefusal};
use crate::ops::{self, TokenInfo, TokenRevoked, UserRemoved};

/// Whether `p` may act on a credential of `role` over `customers`: one it
/// could have granted. 403 naming the credential and the caller's scope.
fn within_scope(
    p: &Principal,
    what: &str,
    role: Role,
    customers: &[outpost_proto::CustomerId],
) -> Result<(), ApiError> {
    p.may_grant(role, customers).map_err(|why| {
        let scope = match p.customers.is_empty() {
            true => "the whole tenant".to_string(),
            false => format!(
                "customers {}",
                p.customers
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        ApiError::Forbidden(format!(
            "{what} is outside your scope ({scope}): {why}; ask an admin of the whole tenant"
        ))
    })
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// The answer to a request bearing token `t`, refused for `why`: 401
/// naming the token and why, counted in
/// `outpost_central_api_rejects_total{reason="token_revoked"|"token_expired"}`.
pub fn refused(c: &Central, t: &ApiTokenRecord, why: &TokenRefusal) -> ApiError {
    c.metrics
        .api_rejects
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: why.reason().into(),
        })
        .inc();
    let what = match why {
        TokenRefusal::Revoked { at_ms, by } => format!(
            "was revoked at {}{}",
            rfc3339(*at_ms),
            by.as_deref()
                .map(|b| format!(" by {b}"))
                .unwrap_or_default()
        ),
        TokenRefusal::Expired { at_ms } => format!("expired at {}", rfc3339(*at_ms)),
    };
    ApiError::Unauthorized(format!(
        "API token {} {what}: use another token (an admin creates one: outpost-central token create, POST /api/v1/tokens)",
        t.name()
    ))
}

/// `GET /api/v1/tokens` (admin): the tenant's tokens within the caller's
/// scope, oldest first, with their state (`active`, `expired`,
/// `revoked`); never a secret.
pub async fn list(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    require(&p, Role::Admin)?;
    let now = crate::now_ms();
    let v = c.store.api_tokens(&p.tenant).await.map_err(internal)?;
    Ok(Json(
        v.iter()
            .filter(|t| {
                p.may_grant(t.principal.role, &t.principal.customers)
                    .is_ok()
            })
            .map(|t| TokenInfo::of(t, now))
            .collect(),
    ))
}

/// `POST /api/v1/tokens/{id}/revoke` (admin, within its scope): the token
/// is refused from now on (401 naming the revocation), audited
/// `token.revoke`. Revoking a revoked token changes nothing
/// (`revoked_now: false`).
pub async fn revoke(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(given): Path<String>,
) -> Result<Json<TokenRevoked>, ApiError> {
    require(&p, Role::Admin)?;
    let id = ops::token_id(&given)?;
    let tokens = c.store.api_tokens(&p.tenant).await.map_err(internal)?;
    let no_such = || ApiError::NotFound(format!("no token token:{id} (see GET /api/v1/tokens)"));
    let t = tokens.iter().find(|t| t.id == id).ok_or_else(no_such)?;
    within_scope(&p, &t.name(), t.principal.role, &t.principal.customers)?;
    let r = ops::revoke_token(c.store.as_ref(), &p.tenant, id, &p.name, crate::now_ms())
        .await
        .map_err(internal)?
        .ok_or_else(no_such)?;
    if r.revoked_now {
        tracing::info!(tenant = %p.tenant, token = %r.token.id, by = %p.name, "API token revoked");
    }
    Ok(Json(r))
}

/// `DELETE /api/v1/users/{name}` (admin, within its scope): the user can
/// no longer log in and its sessions end, audited `user.remove`.
pub async fn remove_user(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<UserRemoved>, ApiError> {
    require(&p, Role::Admin)?;
    let no_such = || ApiError::NotFound(format!("no user {name}"));
    let u = c
        .store
        .user(&p.tenant, &name)
        .await
        .map_err(internal)?
        .ok_or_else(no_such)?;
    within_scope(&p, &format!("user {name}"), u.role, &u.customers)?;
    let r = ops::remove_user(c.store.as_ref(), &p.tenant, &name, &p.name, crate::now_ms())
        .await
        .map_err(internal)?
        .ok_or_else(no_such)?;
    tracing::info!(tenant = %p.tenant, user = %name, by = %p.name, sessions_ended = r.sessions_ended, "user removed");
    Ok(Json(r))
}

/// `POST /api/v1/admin/tokens/list` `{"tenant"}` (operator).
pub async fn admin_list(
    State(c): State<Arc<Central>>,
    Json(r): Json<ops::ListTokens>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(
        ops::list_tokens(c.store.as_ref(), &r.tenant, crate::now_ms()).await?,
    ))
}

/// `POST /api/v1/admin/tokens/revoke` `{"tenant","id"}` (operator).
pub async fn admin_revoke(
    State(c): State<Arc<Central>>,
    Json(r): Json<ops::RevokeToken>,
) -> Result<Json<TokenRevoked>, ApiError> {
    let id = ops::token_id(&r.id)?;
    ops::revoke_token(
        c.store.as_ref(),
        &r.tenant,
        id,
        ops::OPERATOR,
        crate::now_ms(),
    )
    .await
    .map_err(internal)?
    .map(Json)
    .ok_or_else(|| ApiError::NotFound(format!("tenant {} has no token token:{id}", r.tenant)))
}

/// `POST /api/v1/admin/users/remove` `{"tenant","name"}` (operator).
pub async fn admin_remove_user(
    State(c): State<Arc<Central>>,
    Json(r): Json<ops::RemoveUser>,
) -> Result<Json<UserRemoved>, ApiError> {
    ops::remove_user(
        c.store.as_ref(),
        &r.tenant,
        &r.name,
        ops::OPERATOR,
        crate::now_ms(),
    )
    .await
    .map_err(internal)?
    .map(Json)
    .ok_or_else(|| ApiError::NotFound(format!("tenant {} has no user {}", r.tenant, r.name)))
}
