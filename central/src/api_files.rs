//! Central's `/api/v1/files` (the appliance's shape, plus `site`):
//!
//! * `POST /api/v1/files/push?site=S&device=D&path=/remote/path[&mode=0644][&owner=U]`
//!   with the file as the raw body: 201 with the transfer. A
//!   `Content-Length` over `--files-max-bytes` is refused with 413 before
//!   the body is read; a body growing over it while it streams too.
//! * `POST /api/v1/files/pull` `{"site": S, "device": D, "path": "/remote/path"}`: 201.
//! * `GET /api/v1/files/{id}`; `GET /api/v1/files/{id}/content`: the
//!   verified content (a stored pull, or a push's upload), header
//!   `x-outpost-sha256`; 409 while central does not hold it.
//!
//! * `GET /api/v1/files?site=&device=&state=&before_ms=&limit=`: the
//!   caller's transfers (its tenant, its customers), newest first, at most
//!   `limit` (default 100, at most 1000); any role.
//! * `POST /api/v1/files/{id}/cancel`: cancels the transfer's command
//!   through central's command cancel ([`crate::api_commands::cancel_command`];
//!   a push still streaming to the site stops there: [`crate::files::SiteFiles::on_cancel`]).
//!
//! Push, pull and cancel: admin and technician (viewer 403), customer scopes
//! apply, another tenant's site, device or transfer is 404, a connected
//! site below uplink protocol 7 is 409 naming the site. This module only
//! translates HTTP: records, content and delivery are [`crate::files`]
//! and [`crate::api_commands::queue`].

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use outpost_proto::command::{BuiltinAction, CommandKind, CommandSpec, DEFAULT_EXPIRY_MS};
use outpost_proto::ids::{CommandId, TransferId};
use outpost_proto::transfer;
use outpost_proto::{CustomerId, SiteId};
use outpost_web::{Json, Path, Query};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Central;
use crate::api::ApiError;
use crate::commands::CentralCommandState;
use crate::files::{CentralFile, Direction};
use crate::model::Principal;

fn internal(e: impl std::fmt::Display + 'static) -> ApiError {
    crate::api::internal_error(e)
}

/// A transfer as central's API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileView {
    pub id: String,
    pub site: SiteId,
    pub customer: CustomerId,
    pub device: String,
    pub direction: Direction,
    pub path: String,
    pub size_bytes: Option<u64>,
    pub sha256: Option<String>,
    /// Octal, e.g. `0644`.
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub max_bytes: u64,
    pub requested_by: String,
    pub created_ms: u64,
    /// The transfer's command (`/api/v1/commands/{id}`).
    pub command: String,
    /// The command's state (`completed`: pushed, or pulled and stored here).
    pub state: Option<CentralCommandState>,
    pub reason: Option<String>,
    /// Why the content stream was given up.
    pub failure: Option<String>,
    /// `GET .../content` answers.
    pub content_available: bool,
}

impl FileView {
    pub fn of(
        f: &CentralFile,
        cmd: Option<&crate::commands::CentralCommand>,
        c: &Central,
    ) -> FileView {
        FileView {
            id: f.id.to_string(),
            site: f.site_id.clone(),
            customer: f.customer.clone(),
            device: f.device.clone(),
            direction: f.direction,
            path: f.path.clone(),
            size_bytes: f.size_bytes,
            sha256: f.sha256.clone(),
            mode: f.mode.map(|m| format!("{m:04o}")),
            owner: f.owner.clone(),
            max_bytes: f.max_bytes,
            requested_by: f.requested_by.clone(),
            created_ms: f.created_ms,
            command: f.command.to_string(),
            state: cmd.map(|c| c.state),
            reason: cmd.and_then(|c| c.reason.clone()),
            failure: f.failure.clone(),
            content_available: f
                .content_sha()
                .is_some_and(|s| crate::files::blobs(c).is_some_and(|b| b.has(&s))),
        }
    }
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
    pub site: SiteId,
    pub device: String,
    pub path: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
}

/// Body of `POST /api/v1/files/pull`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    pub site: SiteId,
    pub device: String,
    pub path: String,
}

fn too_large(c: &Central, size: u64) -> ApiError {
    c.metrics.files.refuse("too_large");
    ApiError::PayloadTooLarge(format!(
        "the file is {size} bytes; the limit is {} bytes (--files-max-bytes)",
        c.limits.files.max_bytes
    ))
}

/// Role (403), the site in scope (404), its protocol (409), then the
/// device (404 unknown, 409 revoked).
async fn target(
    c: &Arc<Central>,
    p: &Principal,
    site: &SiteId,
    device: &str,
) -> Result<(crate::model::SiteRecord, crate::model::DeviceRow), ApiError> {
    if let Err(e) = crate::api::require(p, crate::model::Role::Technician) {
        c.metrics.files.refuse("forbidden");
        return Err(e);
    }
    crate::api::one_site(c, p, site).await?;
    if let Some(v) = c
        .downlinks
        .version(&p.tenant, site)
        .filter(|v| *v < outpost_uplink::wire::FILES_PROTOCOL_VERSION)
    {
        c.metrics.files.refuse("site_unsupported");
        return Err(ApiError::Conflict(format!(
            "site {site} does not take files from central (its appliance speaks uplink protocol {v}, files need {}; upgrade it)",
            outpost_uplink::wire::FILES_PROTOCOL_VERSION
        )));
    }
    crate::api_commands::target(c, p, site, device).await
}

/// The command fields of a transfer (no process runs: the longest
/// timeout, the usual expiry).
fn file_spec(kind: BuiltinAction, p: &Principal) -> CommandSpec {
    CommandSpec {
        kind: CommandKind::Builtin(kind),
        timeout_ms: outpost_proto::command::MAX_TIMEOUT_MS,
        expiry_ms: DEFAULT_EXPIRY_MS,
        ..CommandSpec::shell("-", format!("{}@central", p.name))
    }
}

/// Stores the record, then queues its command.
async fn queue(
    c: &Arc<Central>,
    p: &Principal,
    site: &crate::model::SiteRecord,
    dev: &crate::model::DeviceRow,
    f: CentralFile,
    spec: CommandSpec,
) -> Result<(StatusCode, Json<FileView>), ApiError> {
    if let Err(e) = spec.validate() {
        c.metrics.files.refuse("invalid");
        return Err(ApiError::BadRequest(format!("invalid transfer: {e}")));
    }
    c.store.put_file(&f).await.map_err(internal)?;
    let cmd = crate::api_commands::queue(c, p, site, dev, spec, f.command, crate::now_ms()).await?;
    c.metrics
        .files
        .created
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: match f.direction {
                Direction::Push => "push".into(),
                Direction::Pull => "pull".into(),
            },
        })
        .inc();
    Ok((StatusCode::CREATED, Json(FileView::of(&f, Some(&cmd), c))))
}

pub async fn push(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    headers: HeaderMap,
    Query(q): Query<PushQuery>,
    body: Body,
) -> Result<(StatusCode, Json<FileView>), ApiError> {
    let mode = q
        .mode
        .as_deref()
        .map(parse_mode)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let (site, dev) = target(&c, &p, &q.site, &q.device).await?;
    let max = c.limits.files.max_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max
    {
        return Err(too_large(&c, len));
    }
    let blobs = crate::files::blobs(&c)
        .cloned()
        .ok_or_else(|| ApiError::Internal("central has no file store".into()))?;
    let (tmp, mut file) = blobs
        .temp()
        .map_err(|e| internal(format!("storing the upload failed: {e}")))?;
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
                    return Err(too_large(&c, size));
                }
                hasher.update(&data);
                file.write_all(&data)
                    .map_err(|e| internal(format!("storing the upload failed: {e}")))?;
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
    {
        let (b, t) = (blobs.clone(), tmp.clone());
        tokio::task::spawn_blocking(move || b.adopt(&t, &sha))
            .await
            .map_err(internal)?
            .map_err(|e| internal(format!("storing the upload failed: {e}")))?;
    }
    let id = TransferId::random();
    let sha_hex = transfer::hex_sha(&sha);
    let f = CentralFile {
        id,
        tenant: p.tenant.clone(),
        site_id: site.site_id.clone(),
        customer: site.customer.clone(),
        device: dev.device.clone(),
        command: CommandId::random(),
        direction: Direction::Push,
        path: q.path.clone(),
        size_bytes: Some(size),
        sha256: Some(sha_hex.clone()),
        mode,
        owner: q.owner.clone(),
        max_bytes: max,
        requested_by: p.name.clone(),
        created_ms: crate::now_ms(),
        stored_ms: None,
        failure: None,
    };
    let spec = file_spec(
        BuiltinAction::PushFile {
            transfer: id,
            path: q.path,
            size_bytes: size,
            sha256: sha_hex,
            mode,
            owner: q.owner,
        },
        &p,
    );
    queue(&c, &p, &site, &dev, f, spec).await
}

pub async fn pull(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Json(req): Json<PullRequest>,
) -> Result<(StatusCode, Json<FileView>), ApiError> {
    let (site, dev) = target(&c, &p, &req.site, &req.device).await?;
    let max = c.limits.files.max_bytes;
    let id = TransferId::random();
    let f = CentralFile {
        id,
        tenant: p.tenant.clone(),
        site_id: site.site_id.clone(),
        customer: site.customer.clone(),
        device: dev.device.clone(),
        command: CommandId::random(),
        direction: Direction::Pull,
        path: req.path.clone(),
        size_bytes: None,
        sha256: None,
        mode: None,
        owner: None,
        max_bytes: max,
        requested_by: p.name.clone(),
        created_ms: crate::now_ms(),
        stored_ms: None,
        failure: None,
    };
    let spec = file_spec(
        BuiltinAction::PullFile {
            transfer: id,
            path: req.path,
            max_bytes: max,
        },
        &p,
    );
    queue(&c, &p, &site, &dev, f, spec).await
}

/// The transfer `id` if the caller may see it, else 404.
pub(crate) async fn visible(
    c: &Arc<Central>,
    p: &Principal,
    id: &str,
) -> Result<CentralFile, ApiError> {
    let not_found = || ApiError::NotFound(format!("no transfer {id}"));
    let t: TransferId = id.parse().map_err(|_| not_found())?;
    c.store
        .file(&p.tenant, t)
        .await
        .map_err(internal)?
        .filter(|f| p.sees_customer(&f.customer))
        .ok_or_else(not_found)
}

pub async fn show(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<FileView>, ApiError> {
    let f = visible(&c, &p, &id).await?;
    let cmd = c
        .store
        .command(&p.tenant, f.command)
        .await
        .map_err(internal)?;
    Ok(Json(FileView::of(&f, cmd.as_ref(), &c)))
}

pub async fn content(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // A file from a customer's machine: who may not pull it may not read it.
    crate::api::require(&p, crate::model::Role::Technician)?;
    let f = visible(&c, &p, &id).await?;
    let path = f
        .content_sha()
        .and_then(|s| crate::files::blobs(&c).map(|b| b.path(&s)))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            ApiError::Conflict(format!("transfer {} has no content at central (yet)", f.id))
        })?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| internal(format!("reading the content failed: {e}")))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| internal(format!("reading the content failed: {e}")))?
        .len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::HeaderName::from_static("x-outpost-sha256"),
                f.sha256.clone().unwrap_or_default(),
            ),
        ],
        body,
    )
        .into_response())
}

/// Query of `GET /api/v1/files`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub site: Option<SiteId>,
    pub device: Option<String>,
    /// The command's state (`queued_at_central`, `completed`, ...).
    pub state: Option<String>,
    pub before_ms: Option<u64>,
    pub limit: Option<usize>,
}

/// Records read at most for one state-filtered list (the state is the
/// command's, not a column of the transfer).
const STATE_SCAN_MAX: usize = 10_000;

/// The transfers the caller sees, newest first, with their commands.
pub async fn list_files(
    c: &Arc<Central>,
    p: &Principal,
    q: ListQuery,
) -> Result<Vec<FileView>, ApiError> {
    if let Some(s) = &q.site {
        crate::api::one_site(c, p, s).await?;
    }
    let state = q
        .state
        .as_deref()
        .map(|s| {
            s.parse::<CentralCommandState>()
                .map_err(ApiError::BadRequest)
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let f = crate::store::FileFilter {
        site_id: q.site,
        device: q.device,
        customers_allowed: p.customers.clone(),
        before_ms: q.before_ms,
        limit: if state.is_some() {
            STATE_SCAN_MAX
        } else {
            limit
        },
    };
    let files = c.store.files(&p.tenant, &f).await.map_err(internal)?;
    let mut v = Vec::new();
    for rec in files.iter().filter(|r| p.sees_customer(&r.customer)) {
        let cmd = c
            .store
            .command(&p.tenant, rec.command)
            .await
            .map_err(internal)?;
        if state.is_some_and(|s| cmd.as_ref().map(|c| c.state) != Some(s)) {
            continue;
        }
        v.push(FileView::of(rec, cmd.as_ref(), c));
        if v.len() >= limit {
            break;
        }
    }
    Ok(v)
}

pub async fn list(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<FileView>>, ApiError> {
    Ok(Json(list_files(&c, &p, q).await?))
}

/// Cancels a transfer: its command, through central's command cancel
/// (404 before 403, as there: another tenant learns nothing).
pub async fn cancel(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<FileView>, ApiError> {
    Ok(Json(cancel_on(&c, &p, &id).await?))
}

/// Cancels a transfer (the API's and the console's path).
pub(crate) async fn cancel_on(
    c: &Arc<Central>,
    p: &Principal,
    id: &str,
) -> Result<FileView, ApiError> {
    let f = visible(c, p, id).await?;
    if let Err(e) = crate::api::require(p, crate::model::Role::Technician) {
        c.metrics.files.refuse("forbidden");
        return Err(e);
    }
    let cmd = crate::api_commands::cancel_command(c, p, &f.command.to_string()).await?;
    Ok(FileView::of(&f, Some(&cmd), c))
}
