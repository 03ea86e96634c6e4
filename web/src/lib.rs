//! `outpost-web`: the HTTP pieces shared by the appliance's admin listener
//! and `outpost-central` (the web console of a later issue will live here
//! too): the JSON error type ([`ApiError`]), the extractors that answer
//! every rejection with it ([`Json`], [`Query`], [`Path`], [`Form`], in
//! [`extract`]), the router's catch-alls ([`not_found`], [`json_errors`]),
//! the per-request span and counter ([`observe`], [`RouteLabel`]), the
//! Prometheus response ([`prometheus_response`]), and what logins share at
//! both ([`login`]: failed-login limits, password hashing on a bounded
//! pool, the [`login::Role`] of a user).
//!
//! Every error either server answers is `{"error": "message"}`: handlers
//! return [`ApiError`]; the extractors map axum's plain-text rejections
//! (malformed JSON, a missing field, a wrong type, a missing Content-Type,
//! a bad query or path parameter) to it with a message naming the field;
//! [`json_errors`] rewrites whatever else answers an error without a JSON
//! body (a 405 from the router, a layer's plain-text error).
//!
//! It knows no Outpost domain: the only Outpost crate it may depend on is
//! `outpost-storage` (feature `storage`, for the storage error's
//! conversion into an [`ApiError`]); without it the crate links no
//! RocksDB, so the console (`outpost-console`) stays RocksDB-free. Nothing here may depend on the appliance or central.

pub mod extract;
pub mod login;

pub use extract::{Form, Json, Path, Query, limit};

use axum::extract::{MatchedPath, Request};
use axum::http::{StatusCode, Uri, header};
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
    /// 405: the route exists, not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 413: the request body is over the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: the body is not of the content type the route reads.
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Internal(String),
    /// 503: a dependency (central's database) cannot serve for now;
    /// answered with `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
}

/// Seconds an [`ApiError::Unavailable`] answer asks the client to wait.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

impl ApiError {
    /// The status code this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The error of a status code and message (a rejection, a layer's
    /// error): 4xx statuses without a variant of their own (422, 408, ...)
    /// are bad requests.
    pub fn from_status(status: StatusCode, message: String) -> ApiError {
        match status {
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(message),
            StatusCode::FORBIDDEN => ApiError::Forbidden(message),
            StatusCode::NOT_FOUND => ApiError::NotFound(message),
            StatusCode::CONFLICT => ApiError::Conflict(message),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed(message),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(message),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(message),
            s if s.is_client_error() => ApiError::BadRequest(message),
            StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable(message),
            _ => ApiError::Internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(m) = &self {
            tracing::error!(error = %m, "API internal error");
        }
        if let ApiError::Unavailable(m) = &self {
            tracing::warn!(error = %m, "API request answered 503");
        }
        let mut resp = (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if matches!(self, ApiError::Unavailable(_)) {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
            );
        }
        resp
    }
}

/// The router fallback of both servers: a 404 naming the path.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no such route: {}", uri.path()))
}

/// Most bytes of a non-JSON error body [`json_errors`] reads to reuse as
/// the message.
const MAX_ERROR_TEXT_BYTES: usize = 16 * 1024;

/// Middleware (`axum::middleware::from_fn(json_errors)`, outermost layer):
/// an error answered without a JSON body becomes `{"error": ...}` with the
/// same status and headers (a 405 keeps the `Allow` header axum adds).
/// HTML pages (the web view's own error pages)
/// pass unchanged.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/json") || content_type.starts_with("text/html") {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        // axum adds the `Allow` header outside every layer: name it.
        format!(
            "method {method} is not allowed on {path} (the `Allow` header lists those it takes)"
        )
    } else if text.is_empty() {
        format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("error")
        )
    } else {
        extract::message_of(&text)
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let body = serde_json::json!({ "error": message }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Validation helpers (`anyhow::bail!` on bad input) answer 400.
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::BadRequest(format!("{e:#}"))
    }
}

#[cfg(feature = "storage")]
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

/// The `method` label of a request: one of the methods HTTP defines, or
/// `other`. Clients choose the method freely (any token is valid HTTP), so
/// using it as sent would let them create a metric series per request.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Runs `req` inside the span `make_span(method, route)` and counts it by
/// method ([`method_label`]: unknown methods are `other`), matched route
/// and status in `requests`.
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
    let method = method_label(req.method()).to_string();
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

    /// A router shaped like the servers': extractors from this crate,
    /// [`not_found`] as fallback, [`json_errors`] outermost.
    fn router() -> axum::Router {
        use axum::routing::{get, post};
        #[derive(serde::Deserialize)]
        struct Body {
            #[allow(dead_code)]
            tenant: String,
            #[allow(dead_code)]
            uses: Option<u32>,
        }
        #[derive(serde::Deserialize)]
        struct Page {
            #[allow(dead_code)]
            limit: Option<usize>,
        }
        #[derive(serde::Deserialize)]
        struct Login {
            #[allow(dead_code)]
            username: String,
            #[allow(dead_code)]
            password: String,
        }
        axum::Router::new()
            .route("/json", post(|Json(_): Json<Body>| async { "ok" }))
            .route(
                "/query",
                get(|Query(p): Query<Page>| async move { limit(p.limit, 10, 100).map(Json) }),
            )
            .route(
                "/path/{n}",
                get(|Path(n): Path<u64>| async move { Json(n) }),
            )
            .route("/form", post(|Form(_): Form<Login>| async { "ok" }))
            .fallback(not_found)
            .layer(axum::middleware::from_fn(json_errors))
    }

    /// Sends one request to [`router`]: (status, JSON body, headers).
    async fn send(
        method: &str,
        uri: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> (u16, serde_json::Value, axum::http::HeaderMap) {
        use tower::ServiceExt;
        let mut req = axum::http::Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req.body(axum::body::Body::from(body.to_string())).unwrap();
        let resp = router().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {uri}: {status} body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, v, headers)
    }

    fn error(v: &serde_json::Value) -> &str {
        assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
        v["error"].as_str().unwrap_or_else(|| panic!("{v}"))
    }

    /// Every class of error a client can provoke answers
    /// `{"error": "..."}` with a message saying what is wrong and where.
    #[tokio::test]
    async fn every_class_of_error_is_json_naming_what_is_wrong() {
        const JSON: Option<&str> = Some("application/json");
        // Malformed JSON.
        let (st, v, _) = send("POST", "/json", JSON, "{not json").await;
        assert_eq!(st, 400, "{v}");
        assert!(error(&v).starts_with("malformed JSON body: "), "{v}");
        // A missing field.
        let (st, v, _) = send("POST", "/json", JSON, "{}").await;
        assert_eq!(st, 400, "{v}");
        assert!(error(&v).contains("missing field `tenant`"), "{v}");
        // A wrong type.
        let (st, v, _) = send("POST", "/json", JSON, r#"{"tenant":"a","uses":"x"}"#).await;
        assert_eq!(st, 400, "{v}");
        assert!(
            error(&v).starts_with("invalid JSON body: uses: invalid type"),
            "{v}"
        );
        // No Content-Type, or another one.
        for ct in [None, Some("text/plain")] {
            let (st, v, _) = send("POST", "/json", ct, r#"{"tenant":"a"}"#).await;
            assert_eq!(st, 415, "{v}");
            assert!(error(&v).contains("Content-Type: application/json"), "{v}");
        }
        // A wrong method: 405, the allowed methods in the message and header.
        let (st, v, h) = send("GET", "/json", None, "").await;
        assert_eq!(st, 405, "{v}");
        assert!(
            error(&v).starts_with("method GET is not allowed on /json"),
            "{v}"
        );
        assert_eq!(h[header::ALLOW], "POST");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        // An unknown route.
        let (st, v, _) = send("GET", "/nope", None, "").await;
        assert_eq!(st, 404, "{v}");
        assert_eq!(error(&v), "no such route: /nope");
        // A query parameter of the wrong type, a limit out of range.
        let (st, v, _) = send("GET", "/query?limit=abc", None, "").await;
        assert_eq!(st, 400, "{v}");
        assert!(
            error(&v).starts_with("invalid query string: limit: "),
            "{v}"
        );
        let (st, v, _) = send("GET", "/query?limit=0", None, "").await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(error(&v), "limit must be between 1 and 100, not 0");
        // A path parameter of the wrong type.
        let (st, v, _) = send("GET", "/path/abc", None, "").await;
        assert_eq!(st, 400, "{v}");
        assert!(error(&v).starts_with("invalid path parameter: "), "{v}");
        // Forms: a missing field, a wrong Content-Type.
        const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
        let (st, v, _) = send("POST", "/form", FORM, "username=a").await;
        assert_eq!(st, 400, "{v}");
        assert!(error(&v).contains("missing field `password`"), "{v}");
        let (st, v, _) = send("POST", "/form", JSON, "{}").await;
        assert_eq!(st, 415, "{v}");
        assert!(error(&v).contains("x-www-form-urlencoded"), "{v}");
    }

    #[tokio::test]
    async fn successes_and_html_errors_pass_json_errors_unchanged() {
        use tower::ServiceExt;
        let (st, v, _) = send("GET", "/query?limit=5", None, "").await;
        assert_eq!((st, v), (200, serde_json::json!(5)));
        let html = axum::Router::new()
            .route(
                "/page",
                axum::routing::get(|| async {
                    (StatusCode::NOT_FOUND, axum::response::Html("<p>gone</p>"))
                }),
            )
            .layer(axum::middleware::from_fn(json_errors));
        let req = axum::http::Request::get("/page")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = html.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(&body[..], b"<p>gone</p>");
    }

    /// A client cannot mint metric series with made-up methods: every
    /// method outside HTTP's own is counted as `other`.
    #[tokio::test]
    async fn unknown_methods_are_counted_as_other() {
        use std::sync::Arc;
        use tower::ServiceExt;
        let requests: Arc<Family<RouteLabel, Counter>> = Arc::new(Family::default());
        let r = requests.clone();
        let app = router().layer(axum::middleware::from_fn(move |req, next| {
            let r = r.clone();
            async move { observe(&r, |_, _| tracing::Span::none(), req, next).await }
        }));
        for method in ["GET", "FOO", "XYZZY-1", "post", "PROPFIND", "DELETE"] {
            let req = axum::http::Request::builder()
                .method(method)
                .uri("/json")
                .body(axum::body::Body::empty())
                .unwrap();
            app.clone().oneshot(req).await.unwrap();
        }
        let label = |method: &str| RouteLabel {
            method: method.into(),
            route: "/json".into(),
            status: 405,
        };
        assert_eq!(requests.get_or_create(&label("GET")).get(), 1);
        assert_eq!(requests.get_or_create(&label("DELETE")).get(), 1);
        assert_eq!(requests.get_or_create(&label("other")).get(), 4);
        for method in ["FOO", "XYZZY-1", "post", "PROPFIND"] {
            assert_eq!(
                requests.get_or_create(&label(method)).get(),
                0,
                "{method} has a series of its own"
            );
        }
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
