//! `/api/v1/cache/*` on the admin listener: `GET stats`, `POST prefetch`,
//! `POST verify`, `GET|POST pins`, `POST unpin`, `POST reset-suite`. The
//! admin listener's router authenticates and authorises these like every
//! API route (`crate::api::admin_router`); nothing here checks credentials.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use outpost_web::Json;
use serde::Deserialize;

use super::Cache;
use super::ops::{PinRequest, PrefetchRequest};

#[derive(Clone)]
struct ApiCtx {
    cache: Arc<Cache>,
}

/// The cache routes, to merge into the admin router (which authenticates
/// them).
pub fn router(cache: Arc<Cache>) -> Router {
    let ctx = ApiCtx { cache };
    Router::new()
        .route("/api/v1/cache/stats", get(stats))
        .route("/api/v1/cache/prefetch", post(prefetch))
        .route("/api/v1/cache/verify", post(verify))
        .route("/api/v1/cache/pins", get(pins).post(pin))
        .route("/api/v1/cache/unpin", post(unpin))
        .route("/api/v1/cache/reset-suite", post(reset_suite))
        .route("/api/v1/agent-package", get(agent_package))
        .with_state(ctx)
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// `GET /api/v1/agent-package`: the agent packages the cache port serves
/// (`deb` and `tarball`: file, SHA-256, size, path), for
/// `outpost agent-installer`.
async fn agent_package(State(ctx): State<ApiCtx>) -> Response {
    let dir = ctx.cache.cfg.agent_package_dir.clone();
    let shown = dir.display().to_string();
    match tokio::task::spawn_blocking(move || crate::installer::describe_all(&dir)).await {
        Ok(Ok(p)) if p.deb.is_some() || p.tarball.is_some() => Json(p).into_response(),
        Ok(Ok(_)) => err(
            StatusCode::NOT_FOUND,
            format!(
                "no outpost-agent_*.deb or .tar.gz in {shown}: install the outpost package (it ships one) \
                 or set [cache] agent_package_dir"
            ),
        ),
        Ok(Err(e)) => err(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn stats(State(ctx): State<ApiCtx>) -> Response {
    Json(ctx.cache.stats()).into_response()
}

async fn prefetch(State(ctx): State<ApiCtx>, Json(req): Json<PrefetchRequest>) -> Response {
    if req.urls.is_empty() && req.index.is_none() {
        return err(StatusCode::BAD_REQUEST, "give `urls` or `index`");
    }
    Json(ctx.cache.prefetch(req).await).into_response()
}

async fn verify(State(ctx): State<ApiCtx>) -> Response {
    Json(ctx.cache.verify_all().await).into_response()
}

async fn pins(State(ctx): State<ApiCtx>) -> Response {
    match ctx.cache.pins() {
        Ok(p) => Json(p).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn pin(State(ctx): State<ApiCtx>, Json(req): Json<PinRequest>) -> Response {
    match ctx.cache.pin(&req).await {
        Ok(p) => Json(p).into_response(),
        Err(e) => err(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Debug, Deserialize)]
struct UrlQuery {
    url: String,
}

async fn unpin(State(ctx): State<ApiCtx>, Json(q): Json<UrlQuery>) -> Response {
    match ctx.cache.unpin(&q.url) {
        Ok(true) => Json(serde_json::json!({ "unpinned": q.url })).into_response(),
        Ok(false) => err(StatusCode::NOT_FOUND, format!("{} is not pinned", q.url)),
        Err(e) => err(StatusCode::BAD_REQUEST, e),
    }
}

async fn reset_suite(State(ctx): State<ApiCtx>, Json(q): Json<UrlQuery>) -> Response {
    match ctx.cache.reset_suite(&q.url) {
        Ok(r) => Json(r).into_response(),
        Err(e) => err(StatusCode::BAD_REQUEST, e),
    }
}
