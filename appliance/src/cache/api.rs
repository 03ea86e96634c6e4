//! `/api/v1/cache/*` on the admin listener (bearer token):
//! `GET stats`, `POST prefetch`, `POST verify`, `GET|POST pins`, `POST unpin`,
//! `POST reset-suite`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use outpost_web::Json;
use serde::Deserialize;

use super::Cache;
use super::ops::{PinRequest, PrefetchRequest};

#[derive(Clone)]
struct ApiCtx {
    cache: Arc<Cache>,
    token: Arc<str>,
}

/// The cache routes, to merge into the admin router.
pub fn router(cache: Arc<Cache>, admin_token: &str) -> Router {
    let ctx = ApiCtx {
        cache,
        token: admin_token.into(),
    };
    Router::new()
        .route("/api/v1/cache/stats", get(stats))
        .route("/api/v1/cache/prefetch", post(prefetch))
        .route("/api/v1/cache/verify", post(verify))
        .route("/api/v1/cache/pins", get(pins).post(pin))
        .route("/api/v1/cache/unpin", post(unpin))
        .route("/api/v1/cache/reset-suite", post(reset_suite))
        .route_layer(middleware::from_fn_with_state(ctx.clone(), require_token))
        .with_state(ctx)
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

async fn require_token(State(ctx): State<ApiCtx>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = presented.is_some_and(|t| {
        let (a, b) = (t.as_bytes(), ctx.token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    });
    if ok {
        next.run(req).await
    } else {
        ctx.cache.metrics.reject(if presented.is_some() {
            "api_bad_token"
        } else {
            "api_missing_token"
        });
        err(
            StatusCode::UNAUTHORIZED,
            "missing or invalid bearer token: send `Authorization: Bearer <DATA/admin.token>`",
        )
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
