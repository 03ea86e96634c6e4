//! `/api/v1/login`, `/api/v1/logout`, `/api/v1/me` and the local users
//! (`/api/v1/users`, admins only; a password also by its user). The
//! decisions are [`crate::users::auth::Auth`]'s; these only translate.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use outpost_web::login::Role;
use outpost_web::{Json, Path};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};
use crate::users::auth::{Caller, PeerAddr, SessionsEnded, UserOut, same_origin};

/// Body of `POST /api/v1/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginBody {
    pub user: String,
    pub password: String,
}

/// Answer of a login: who is logged in (the session is the cookie).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginAnswer {
    pub user: String,
    pub role: Role,
}

/// Body of `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewUser {
    pub name: String,
    pub role: Role,
    pub password: String,
}

/// Body of `PUT /api/v1/users/{name}/password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewPassword {
    pub password: String,
    /// The password now: required when users change their own.
    #[serde(default)]
    pub current_password: Option<String>,
}

/// `POST /api/v1/login`: 200 with the session cookie, 401, 429 with
/// `Retry-After`, or 503 (password checks busy).
pub async fn login(
    State(st): State<Arc<ApiState>>,
    PeerAddr(addr): PeerAddr,
    headers: HeaderMap,
    Json(b): Json<LoginBody>,
) -> Response {
    if !same_origin(&headers) {
        st.metrics.reject("api_cross_origin");
        return ApiError::Forbidden("cross-origin login refused".into()).into_response();
    }
    match st
        .auth
        .login(&b.user, b.password, addr, outpost_storage::now_ms())
        .await
    {
        Ok(ok) => (
            StatusCode::OK,
            [(
                header::SET_COOKIE,
                st.auth.session_set_cookie(&ok, &headers),
            )],
            Json(LoginAnswer {
                user: ok.caller.user,
                role: ok.caller.role,
            }),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /api/v1/logout`: ends the cookie's session (if any) and clears
/// the cookie.
pub async fn logout(State(st): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        st.metrics.reject("api_cross_origin");
        return ApiError::Forbidden("cross-origin logout refused".into()).into_response();
    }
    match st.auth.logout(&headers).await {
        Ok(ended) => (
            StatusCode::OK,
            [(header::SET_COOKIE, st.auth.clear_set_cookie(&headers))],
            Json(serde_json::json!({ "ok": true, "session_ended": ended })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v1/me`.
pub async fn me(Extension(caller): Extension<Caller>) -> Json<Caller> {
    Json(caller)
}

/// `GET /api/v1/users`.
pub async fn list(State(st): State<Arc<ApiState>>) -> Result<Json<Vec<UserOut>>, ApiError> {
    Ok(Json(st.auth.list_users().await?))
}

/// `POST /api/v1/users`: 201, 400 or 409 (the name is taken).
pub async fn create(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(u): Json<NewUser>,
) -> Result<(StatusCode, Json<UserOut>), ApiError> {
    let by = caller.actor(&headers);
    let out = st.auth.add_user(&by, &u.name, u.role, u.password).await?;
    Ok((StatusCode::CREATED, Json(out)))
}

/// `DELETE /api/v1/users/{name}`: the user and its sessions.
pub async fn remove(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<SessionsEnded>, ApiError> {
    let by = caller.actor(&headers);
    Ok(Json(st.auth.remove_user(&by, &name).await?))
}

/// `PUT /api/v1/users/{name}/password`: the user itself (with its current
/// password) or an admin; every session of the user ends.
pub async fn password(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    PeerAddr(addr): PeerAddr,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(p): Json<NewPassword>,
) -> Result<Json<SessionsEnded>, ApiError> {
    let by = caller.actor(&headers);
    Ok(Json(
        st.auth
            .set_password(&caller, &by, &name, p.password, p.current_password, addr)
            .await?,
    ))
}
