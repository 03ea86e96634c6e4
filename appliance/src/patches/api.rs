//! `/api/v1/advisories` and `/api/v1/patches/...`: the catalog's status and
//! imports (admin), and the assessment views (viewer and up). Merged into
//! the admin router behind the same authentication and roles
//! (`crate::users::auth::required_role`).

use axum::Extension;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use outpost_patch::catalog::FeedFormat;
use outpost_proto::DeviceId;
use serde::Deserialize;

use super::service::{ImportFailure, PatchService};
use crate::api::commands::CommandView;
use crate::commands::service::CreateError;
use crate::users::auth::Caller;

/// Largest feed accepted in one import (the whole Debian tracker JSON is
/// ~80 MB).
pub const MAX_FEED_BYTES: usize = 512 * 1024 * 1024;
/// Longest a feed download may take.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

pub fn router(service: PatchService) -> Router {
    Router::new()
        .route("/api/v1/advisories", get(status))
        .route(
            "/api/v1/advisories/import",
            post(import).layer(DefaultBodyLimit::max(MAX_FEED_BYTES)),
        )
        .route("/api/v1/patches", get(patches))
        .route("/api/v1/patches/summary", get(summary))
        .route("/api/v1/patches/devices/{id}", get(device))
        .route("/api/v1/patches/devices/{id}/scan", post(scan))
        .route("/api/v1/patches/cves/{id}", get(cve))
        .route("/api/v1/patches/report", get(report))
        .with_state(service)
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn status(State(s): State<PatchService>) -> Response {
    match s.advisories_status(outpost_storage::now_ms()) {
        Ok(v) => Json(v).into_response(),
        Err(e) => internal(format!("{e:#}")),
    }
}

#[derive(Debug, Deserialize)]
pub struct ImportQuery {
    /// `debian-tracker` or `osv`.
    pub format: String,
    /// The source's name (default: the format's name).
    pub name: Option<String>,
    /// Where the feed came from (file or URL), for the status.
    pub location: Option<String>,
    /// Fetch the feed from this URL (HTTP or HTTPS) instead of the body.
    pub url: Option<String>,
}

async fn import(
    State(s): State<PatchService>,
    Query(q): Query<ImportQuery>,
    body: Bytes,
) -> Response {
    let Some(format) = FeedFormat::parse(&q.format) else {
        return err(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown feed format {:?}: expected debian-tracker or osv",
                q.format
            ),
        );
    };
    let body = match &q.url {
        Some(url) => match super::feed::fetch(url, MAX_FEED_BYTES, FETCH_TIMEOUT).await {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                s.note_import_failure();
                return err(
                    StatusCode::BAD_GATEWAY,
                    format!("{e:#}; the previous catalog stays in service"),
                );
            }
        },
        None => body,
    };
    let location = q
        .location
        .or(q.url.clone())
        .unwrap_or_else(|| "upload".into());
    let r =
        tokio::task::spawn_blocking(move || s.import(format, q.name.as_deref(), &location, &body))
            .await;
    match r {
        Ok(Ok(outcome)) => Json(outcome).into_response(),
        Ok(Err(ImportFailure::Feed(m))) => err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{m}; the previous catalog stays in service"),
        ),
        Ok(Err(ImportFailure::Invalid(m))) => err(StatusCode::BAD_REQUEST, m),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn patches(State(s): State<PatchService>) -> Response {
    Json(s.patches()).into_response()
}

#[derive(Debug, Deserialize)]
pub struct SummaryQuery {
    /// Only this customer's devices.
    pub customer: Option<String>,
}

async fn summary(State(s): State<PatchService>, Query(q): Query<SummaryQuery>) -> Response {
    let customer = q.customer.as_deref().filter(|c| !c.is_empty());
    match s.summary_for(outpost_storage::now_ms(), customer) {
        Ok(v) => Json(v).into_response(),
        Err(e) => internal(format!("{e:#}")),
    }
}

async fn device(State(s): State<PatchService>, Path(id): Path<String>) -> Response {
    let Ok(dev) = id.parse::<DeviceId>() else {
        return err(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a device id"),
        );
    };
    match s.device(dev) {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => err(
            StatusCode::NOT_FOUND,
            format!("no package scan from device {dev} yet"),
        ),
        Err(e) => internal(format!("{e:#}")),
    }
}

#[derive(Debug, Deserialize)]
pub struct ScanQuery {
    /// Whole scan (the default) or a delta against the agent's last one.
    pub full: Option<bool>,
}

/// `POST /api/v1/patches/devices/{id}/scan[?full=false]` (technician):
/// queues a `ScanPackages` command, or returns the device's open one
/// (201 when queued now, 200 when one was already open).
async fn scan(
    State(s): State<PatchService>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ScanQuery>,
) -> Response {
    let Ok(dev) = id.parse::<DeviceId>() else {
        return err(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a device id"),
        );
    };
    let Some(requester) = s.scan_requester() else {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "package scan requests are not available on this appliance",
        );
    };
    match requester
        .request(dev, q.full.unwrap_or(true), &caller.actor(&headers))
        .await
    {
        Ok((rec, created)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(CommandView::of(&rec))).into_response()
        }
        Err(e @ CreateError::UnknownDevice(_)) => err(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ CreateError::RevokedDevice(_)) => err(StatusCode::CONFLICT, e.to_string()),
        Err(e @ CreateError::Invalid(_)) => err(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    /// `csv` (the default: one line per missing patch), `json` or `pdf`
    /// (the compliance report: summary, devices, top patches and CVEs).
    pub format: Option<String>,
    pub customer: Option<String>,
}

async fn report(State(s): State<PatchService>, Query(q): Query<ReportQuery>) -> Response {
    let format = q.format.unwrap_or_else(|| "csv".to_string());
    if !["csv", "json", "pdf"].contains(&format.as_str()) {
        return err(
            StatusCode::BAD_REQUEST,
            format!("report format {format:?}: csv, json or pdf"),
        );
    }
    let customer = q.customer;
    let now = outpost_storage::now_ms();
    let r = tokio::task::spawn_blocking(move || -> anyhow::Result<Response> {
        let customer = customer.as_deref();
        Ok(match format.as_str() {
            "csv" => (
                [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                s.report_csv(customer)?,
            )
                .into_response(),
            "json" => Json(s.report_document(customer, now)?).into_response(),
            _ => (
                [(axum::http::header::CONTENT_TYPE, "application/pdf")],
                outpost_patch::report::pdf::render(&s.report_document(customer, now)?),
            )
                .into_response(),
        })
    })
    .await;
    match r {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => internal(format!("{e:#}")),
        Err(e) => internal(e),
    }
}

async fn cve(State(s): State<PatchService>, Path(id): Path<String>) -> Response {
    Json(s.cve(id.trim())).into_response()
}
