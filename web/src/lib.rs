//! `outpost-web`: the HTTP pieces shared by the appliance's admin listener
//! and `outpost-central` (the web console of a later issue will live here
//! too): the JSON error type ([`ApiError`]), the per-request span and
//! counter ([`observe`], [`RouteLabel`]) and the Prometheus response
//! ([`prometheus_response`]).
//!
//! It knows no Outpost domain: the only Outpost crate it depends on is
//! `outpost-storage`, for the storage error's conversion into an
//! [`ApiError`]. Nothing here may depend on the appliance or central.

use axum::Json;
use axum::extract::{MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing::Instrument;

/// An API error: a status code and `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if let ApiError::Internal(m) = &self {
            tracing::error!(error = %m, "API internal error");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// Validation helpers (`anyhow::bail!` on bad input) answer 400.
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::BadRequest(format!("{e:#}"))
    }
}

impl From<outpost_storage::StorageError> for ApiError {
    fn from(e: outpost_storage::StorageError) -> Self {
        ApiError::Internal(format!("storage: {e}"))
    }
}

/// Label of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// Runs `req` inside the span `make_span(method, route)` and counts it by
/// method, matched route and status in `requests`.
pub async fn observe(
    requests: &Family<RouteLabel, Counter>,
    make_span: impl FnOnce(&str, &str) -> tracing::Span,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let span = make_span(&method, &route);
    let resp = next.run(req).instrument(span).await;
    requests
        .get_or_create(&RouteLabel {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// A `/metrics` response carrying the Prometheus text exposition `body`.
pub fn prometheus_response(body: String) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each error answers its status code and `{"error": message}`.
    #[tokio::test]
    async fn api_errors_answer_their_status_and_a_json_message() {
        let cases = [
            (ApiError::BadRequest("bad".into()), 400),
            (ApiError::Unauthorized("who".into()), 401),
            (ApiError::Forbidden("no".into()), 403),
            (ApiError::NotFound("gone".into()), 404),
            (ApiError::Conflict("twice".into()), 409),
            (ApiError::Internal("oops".into()), 500),
        ];
        for (e, status) in cases {
            let message = e.to_string();
            let resp = e.into_response();
            assert_eq!(resp.status().as_u16(), status, "{message}");
            let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v, serde_json::json!({ "error": message }));
        }
    }

    #[test]
    fn validation_errors_are_bad_requests_with_their_context() {
        let e: ApiError = anyhow::anyhow!("inner").context("outer").into();
        assert!(
            matches!(&e, ApiError::BadRequest(m) if m == "outer: inner"),
            "{e:?}"
        );
    }

    #[test]
    fn the_metrics_response_is_prometheus_text() {
        let resp = prometheus_response("# EOF\n".into());
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }
}
