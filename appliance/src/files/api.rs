//! `/api/v1/files` on the admin listener:
//!
//! * `POST /api/v1/files/push?device=ID&path=/remote/path[&mode=0644][&owner=USER]`
//!   with the file as the raw request body (any content type): 201 with the
//!   transfer. The device is checked before the body is read (404 unknown,
//!   409 revoked); a `Content-Length` over the limit is refused with 413
//!   before the body is read, a body that grows over it while streaming
//!   too.
//! * `POST /api/v1/files/pull` `{"device": ID, "path": "/remote/path"}`: 201.
//! * `GET /api/v1/files?device=&state=&limit=` (newest first), `GET
//!   /api/v1/files/{id}`, `GET /api/v1/files/{id}/content` (the verified
//!   content of a completed pull, or of a push; header `x-outpost-sha256`),
//!   `POST /api/v1/files/{id}/cancel`.
//!
//! The admin router authenticates and authorises these like every API route
//! (push, pull, cancel: technician; reads: viewer). Nothing here changes
//! transfer state: [`super::service`] does.

use std::io::Write;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http_body_util::BodyExt;
use outpost_proto::DeviceId;
use outpost_proto::ids::TransferId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::model::{Direction, TransferRecord, TransferState, TransferTransition};
use super::service::{FileError, FileService};
use crate::api::ApiError;
use crate::users::auth::Caller;

/// The file routes, to merge into the admin router (which authenticates
/// them).
pub fn router(svc: FileService) -> Router {
    Router::new()
        .route("/api/v1/files", get(list))
        .route("/api/v1/files/push", post(push))
        .route("/api/v1/files/pull", post(pull))
        .route("/api/v1/files/{id}", get(show))
        .route("/api/v1/files/{id}/content", get(content))
        .route("/api/v1/files/{id}/cancel", post(cancel))
        .with_state(svc)
}

/// A transfer as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransferView {
    pub id: String,
    pub device: String,
    pub direction: Direction,
    pub path: String,
    pub state: TransferState,
    pub size_bytes: Option<u64>,
    pub sha256: Option<String>,
    /// Octal, e.g. `0644`.
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub max_bytes: u64,
    pub requested_by: String,
    pub command: Option<String>,
    pub created_ms: u64,
    pub transitions: Vec<TransferTransition>,
    pub bytes_done: u64,
    pub resumes: u32,
    pub reason: Option<String>,
    /// `GET .../content` answers (a completed pull's verified content).
    pub content_available: bool,
}

impl TransferView {
    pub fn of(r: &TransferRecord, svc: &FileService) -> TransferView {
        TransferView {
            id: r.id.to_string(),
            device: r.device.to_string(),
            direction: r.direction,
            path: r.path.clone(),
            state: r.state,
            size_bytes: r.size_bytes,
            sha256: r.sha256.clone(),
            mode: r.mode.map(|m| format!("{m:04o}")),
            owner: r.owner.clone(),
            max_bytes: r.max_bytes,
            requested_by: r.requested_by.clone(),
            command: r.command.map(|c| c.to_string()),
            created_ms: r.created_ms,
            transitions: r.transitions.clone(),
            bytes_done: r.bytes_done,
            resumes: r.resumes,
            reason: r.reason.clone(),
            content_available: r.state == TransferState::Completed && svc.content_path(r).is_some(),
        }
    }
}

fn api_error(e: FileError) -> ApiError {
    match e {
        FileError::UnknownDevice(_) | FileError::NotFound(_) => ApiError::NotFound(e.to_string()),
        FileError::RevokedDevice(_) | FileError::Finished(..) => ApiError::Conflict(e.to_string()),
        FileError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
        FileError::Invalid(_) => ApiError::BadRequest(e.to_string()),
        FileError::Store(_) | FileError::Stopped => ApiError::Internal(e.to_string()),
    }
}

fn parse_device(s: &str) -> Result<DeviceId, ApiError> {
    s.parse()
        .map_err(|e: outpost_proto::ParseIdError| ApiError::BadRequest(e.to_string()))
}

fn parse_id(s: &str) -> Result<TransferId, ApiError> {
    s.parse()
        .map_err(|e: outpost_proto::ParseIdError| ApiError::BadRequest(e.to_string()))
}

/// `0644`, `644` or `0o644`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim_start_matches("0o");
    u32::from_str_radix(t, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("mode {s:?} is not an octal file mode (e.g. 0644)"))
}

/// Query of `POST /api/v1/files/push`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushQuery {
    pub device: String,
    pub path: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
}

async fn push(
    State(svc): State<FileService>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(q): Query<PushQuery>,
    body: Body,
) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    let device = parse_device(&q.device)?;
    let mode = q
        .mode
        .as_deref()
        .map(parse_mode)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    svc.check_device(device).map_err(api_error)?;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        svc.check_size(len).map_err(api_error)?;
    }
    let max = svc.config().max_bytes;
    let (tmp, mut file) = svc
        .blobs()
        .temp()
        .map_err(|e| ApiError::Internal(format!("storing the upload failed: {e}")))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut body = body;
    let r: Result<(), ApiError> = async {
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::BadRequest(format!("reading the upload: {e}")))?;
            if let Ok(data) = frame.into_data() {
                size += data.len() as u64;
                if size > max {
                    svc.check_size(size).map_err(api_error)?;
                }
                hasher.update(&data);
                file.write_all(&data)
                    .map_err(|e| ApiError::Internal(format!("storing the upload failed: {e}")))?;
            }
        }
        Ok(())
    }
    .await;
    drop(file);
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let sha: [u8; 32] = hasher.finalize().into();
    svc.blobs()
        .adopt(&tmp, &sha)
        .map_err(|e| ApiError::Internal(format!("storing the upload failed: {e}")))?;
    let rec = svc
        .push(
            device,
            q.path,
            sha,
            size,
            mode,
            q.owner,
            caller.actor(&headers),
        )
        .await
        .map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(TransferView::of(&rec, &svc))))
}

/// Body of `POST /api/v1/files/pull`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    pub device: String,
    pub path: String,
}

async fn pull(
    State(svc): State<FileService>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(req): Json<PullRequest>,
) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    let device = parse_device(&req.device)?;
    let rec = svc
        .pull(device, req.path, caller.actor(&headers))
        .await
        .map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(TransferView::of(&rec, &svc))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list(
    State(svc): State<FileService>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<TransferView>>, ApiError> {
    let device = q.device.as_deref().map(parse_device).transpose()?;
    let state = q
        .state
        .as_deref()
        .map(str::parse::<TransferState>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let rs = svc
        .list(device, state, q.limit.unwrap_or(100).min(1000))
        .map_err(|e| ApiError::Internal(format!("reading transfers failed: {e}")))?;
    Ok(Json(rs.iter().map(|r| TransferView::of(r, &svc)).collect()))
}

fn find(svc: &FileService, id: &str) -> Result<TransferRecord, ApiError> {
    let id = parse_id(id)?;
    svc.get(id)
        .map_err(|e| ApiError::Internal(format!("reading transfers failed: {e}")))?
        .ok_or_else(|| ApiError::NotFound(format!("transfer {id} not found")))
}

async fn show(
    State(svc): State<FileService>,
    Path(id): Path<String>,
) -> Result<Json<TransferView>, ApiError> {
    let r = find(&svc, &id)?;
    Ok(Json(TransferView::of(&r, &svc)))
}

async fn content(
    State(svc): State<FileService>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = find(&svc, &id)?;
    let available = r.direction == Direction::Push || r.state == TransferState::Completed;
    let path = svc.content_path(&r).filter(|_| available).ok_or_else(|| {
        ApiError::Conflict(format!(
            "transfer {} has no content to download (it is {})",
            r.id, r.state
        ))
    })?;
    let f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("reading the content failed: {e}")))?;
    let len = f
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("reading the content failed: {e}")))?
        .len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::HeaderName::from_static("x-outpost-sha256"),
                r.sha256.clone().unwrap_or_default(),
            ),
        ],
        body,
    )
        .into_response())
}

async fn cancel(
    State(svc): State<FileService>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TransferView>, ApiError> {
    let id = parse_id(&id)?;
    let r = svc
        .cancel(id, &caller.actor(&headers))
        .await
        .map_err(api_error)?;
    Ok(Json(TransferView::of(&r, &svc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_read_as_octal_and_bad_ones_refused() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("77777").is_err());
        assert!(parse_mode("rw").is_err());
    }
}
