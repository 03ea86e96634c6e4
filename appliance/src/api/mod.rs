//! Admin JSON API under `/api/v1/`, plus `/metrics` (Prometheus text) and
//! `/healthz`, served on the admin listener. Every `/api/v1/` route but
//! `login` and `logout` is authenticated (the admin bearer token, or a
//! local user's session cookie) and authorised by role
//! ([`crate::users::auth::authorize`]), the patch cache's routes merged in
//! by [`admin_router`] included. The site console ([`crate::console`]) is
//! merged beside them: its pages authenticate through the same
//! [`crate::users::auth::Auth`] and check roles with the same table.

mod alerts;
pub mod commands;
mod devices;
mod error;
mod tokens;
mod uplink;
mod users;

/// Request body of `/api/v1/uplink/join`.
pub mod uplink_types {
    pub use super::uplink::JoinRequest;
    pub use outpost_uplink::service::UplinkStatus;
}

/// Request and answer bodies, for clients of the API (the CLI, tests).
pub mod devices_types {
    pub use super::devices::{DeviceDetail, DeviceSummary, MetricsAnswer, PointOut, RevokeAnswer};
}
/// Request and answer bodies of the alerting routes.
pub mod alerts_types {
    pub use super::alerts::{AckBody, AlertDetail, ResendBody};
    pub use crate::alerts::notify::resend::Resent;
    pub use crate::alerts::references::RuleProblems;
}
/// Request and answer bodies of the login and user routes.
pub mod users_types {
    pub use super::users::{LoginAnswer, LoginBody, NewPassword, NewUser};
    pub use crate::users::auth::{Caller, Credential, SessionsEnded, UserOut};
}
/// Request and answer bodies of `/api/v1/tokens`.
pub mod tokens_types {
    pub use super::tokens::{CreateToken, TokenCreated};
}
pub mod timeparse;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use outpost_storage::Store;
use tracing::info_span;

pub use error::ApiError;

use crate::ingest::live::LiveSessions;
use crate::ingest::writer::WriterHandle;
use crate::metrics::Metrics;

/// Shared state of the API handlers.
pub struct ApiState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Who a request is and what it may do (admin token, local users'
    /// sessions, logins).
    pub auth: Arc<crate::users::auth::Auth>,
    pub writer: WriterHandle,
    pub live: Arc<LiveSessions>,
    /// The alert engine (configuration reloads, acknowledgements).
    pub alerts: crate::alerts::engine::EngineHandle,
    /// The notification dispatcher (re-sent dead letters).
    pub notify: crate::alerts::notify::NotifyHandle,
    pub started: Instant,
    pub uplink: Arc<outpost_uplink::service::Uplink>,
    /// Remote commands: queue, cancel, read.
    pub commands: crate::commands::service::CommandService,
    /// Told a device's tags after `PUT /api/v1/devices/{id}/tags` stored
    /// them (the console's device index takes them at once).
    pub on_tags: Option<TagsHook>,
}

/// See [`ApiState::on_tags`].
pub type TagsHook = Arc<dyn Fn(outpost_proto::DeviceId, &[String]) + Send + Sync>;

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

/// The admin listener's router: the API, plus `extra` routes served beside
/// it (the patch cache's) behind the same authentication and roles, every
/// error answered as `{"error": ...}` ([`outpost_web::json_errors`]
/// outermost, so it covers both; the console's HTML error pages pass), and
/// the `console` at `/` (its pages counted like API requests).
pub fn admin_router(
    state: Arc<ApiState>,
    extra: Option<Router>,
    console: Option<Arc<outpost_console::Console>>,
) -> Router {
    let auth = state.auth.clone();
    let mut r = router_with(state, console);
    if let Some(extra) = extra {
        r = r.merge(extra.route_layer(middleware::from_fn_with_state(
            auth,
            crate::users::auth::authorize,
        )));
    }
    r.layer(middleware::from_fn(outpost_web::json_errors))
}

/// Builds the router of the API routes (see [`admin_router`]).
pub fn router(state: Arc<ApiState>) -> Router {
    router_with(state, None)
}

fn router_with(state: Arc<ApiState>, console: Option<Arc<outpost_console::Console>>) -> Router {
    let api = Router::new()
        .route("/devices", get(devices::list))
        .route("/devices/{id}", get(devices::show))
        .route("/devices/{id}/metrics", get(devices::metrics))
        .route("/devices/{id}/heartbeats", get(devices::heartbeats))
        .route("/devices/{id}/status-log", get(devices::status_log))
        .route("/devices/{id}/revoke", post(devices::revoke))
        .route("/tokens", post(tokens::create))
        .route("/audit", get(tokens::audit))
        .merge(alerts::routes())
        .route("/commands", get(commands::list).post(commands::run))
        .route(
            "/commands/bulk",
            get(commands::bulk_list).post(commands::bulk_create),
        )
        .route("/commands/bulk/{id}", get(commands::bulk_show))
        .route("/commands/bulk/{id}/cancel", post(commands::bulk_cancel))
        .route("/commands/{id}", get(commands::show))
        .route("/commands/{id}/cancel", post(commands::cancel))
        .route(
            "/scripts",
            get(commands::script_list).post(commands::script_add),
        )
        .route(
            "/scripts/{name}",
            get(commands::script_show).put(commands::script_edit),
        )
        .route("/scripts/{name}/run", post(commands::script_run))
        .route("/uplink/join", post(uplink::join))
        .route("/uplink/status", get(uplink::status))
        .route("/me", get(users::me))
        .route("/users", get(users::list).post(users::create))
        .route("/users/{name}", axum::routing::delete(users::remove))
        .route("/users/{name}/password", put(users::password))
        .route_layer(middleware::from_fn_with_state(
            state.auth.clone(),
            crate::users::auth::authorize,
        ));
    let mut r = Router::new()
        .route("/api/v1/login", post(users::login))
        .route("/api/v1/logout", post(users::logout))
        .nest("/api/v1", api)
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz));
    if let Some(c) = console {
        r = r.merge(outpost_console::router(c));
    }
    r.fallback(outpost_web::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// A span per request and a request counter by route and status.
async fn observe(State(st): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let span = |method: &str, route: &str| info_span!("api", %method, %route);
    outpost_web::observe(&st.metrics.api_requests, span, req, next).await
}

/// `ok`, or 503 saying why the appliance cannot take records.
async fn healthz(State(st): State<Arc<ApiState>>) -> Response {
    health_response(st.writer.health())
}

fn health_response(health: &crate::ingest::writer::WriterHealth) -> Response {
    match health.failure() {
        None => "ok\n".into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: the writer failed ({why}); sessions are refused until the appliance is restarted\n"),
        )
            .into_response(),
    }
}

async fn prometheus(State(st): State<Arc<ApiState>>) -> Response {
    outpost_web::prometheus_response(st.metrics.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn healthz_says_why_once_the_writer_failed() {
        let health = crate::ingest::writer::WriterHealth::default();
        let ok = health_response(&health);
        assert_eq!(ok.status(), StatusCode::OK);
        health.fail("the writer thread panicked: boom".into());
        let resp = health_response(&health);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("panicked: boom"), "{text}");
    }
}
