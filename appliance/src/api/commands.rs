//! `/api/v1/commands`: queue a command for a device (technician), list and
//! show commands with their output (viewer), cancel (technician);
//! `/api/v1/commands/bulk`: bulk runs (create, cancel: technician; read:
//! viewer);
//! `/api/v1/scripts`: the versioned script library (add, edit, run:
//! technician; read: viewer). The
//! command subsystem ([`crate::commands`]) owns the state; this module only
//! translates HTTP.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use outpost_proto::DeviceId;
use outpost_proto::command::{
    BuiltinAction, CommandKind, CommandSpec, DEFAULT_EXPIRY_MS, DEFAULT_TIMEOUT_MS, Interpreter,
};
use outpost_proto::ids::CommandId;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::ApiError;
use crate::commands::bulk::{self, BulkRun, BulkTarget, RunId, Summary};
use crate::commands::model::{CommandRecord, CommandState, Transition};
use crate::commands::scripts::{self, ScriptVersion};
use crate::commands::service::{BulkError, BulkRequest, CancelError, CancelRunError, CreateError};
use crate::commands::store::ListFilter;
use crate::users::auth::Caller;

/// Body of `POST /api/v1/commands`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub device: String,
    /// The command line (or `action`).
    #[serde(default)]
    pub command: Option<String>,
    /// A built-in action instead of a command line:
    /// `{"restart_service": {"unit": "nginx.service"}}` or
    /// `{"reboot": {"delay_s": 60, "confirm": true}}`.
    #[serde(default)]
    pub action: Option<ActionRequest>,
    #[serde(default)]
    pub interpreter: Option<Interpreter>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub run_as: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub expiry_ms: Option<u64>,
}

/// A built-in action as the API takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionRequest {
    RestartService {
        unit: String,
    },
    /// Refused (400) without `"confirm": true`. The delay in seconds
    /// (`delay_s`) or milliseconds (`delay_ms`, the spec's unit).
    Reboot {
        #[serde(default)]
        delay_s: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
        #[serde(default)]
        confirm: bool,
    },
    /// A package scan now (`{"scan_packages": {"full": true}}`); the
    /// command completes when the agent has buffered the scan's record.
    ScanPackages {
        #[serde(default)]
        full: bool,
    },
}

/// Longest reboot delay: one day.
pub const MAX_REBOOT_DELAY_S: u64 = 24 * 3600;

impl ActionRequest {
    /// The spec's action, or why the request is refused.
    pub fn into_builtin(self) -> Result<BuiltinAction, ApiError> {
        match self {
            ActionRequest::RestartService { unit } => Ok(BuiltinAction::RestartService { unit }),
            ActionRequest::Reboot { confirm: false, .. } => Err(ApiError::BadRequest(
                "a reboot needs \"confirm\": true (outpost device reboot ID --confirm)".into(),
            )),
            ActionRequest::Reboot {
                delay_s, delay_ms, ..
            } => {
                let ms = delay_ms.unwrap_or(delay_s.saturating_mul(1000));
                if ms > MAX_REBOOT_DELAY_S * 1000 {
                    return Err(ApiError::BadRequest(format!(
                        "reboot delay {} s is over the limit of {MAX_REBOOT_DELAY_S} s",
                        ms / 1000
                    )));
                }
                Ok(BuiltinAction::Reboot { delay_ms: ms })
            }
            ActionRequest::ScanPackages { full } => Ok(BuiltinAction::ScanPackages { full }),
        }
    }
}

/// A command as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommandView {
    pub id: String,
    pub device: String,
    pub state: CommandState,
    pub command: String,
    pub spec: CommandSpec,
    pub requested_by: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub transitions: Vec<Transition>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    pub acked: bool,
    pub cancel_requested: bool,
    pub output_bytes: u64,
    pub output_truncated: bool,
    /// The stored output (head, truncation marker, tail), lossily UTF-8;
    /// only in `GET /api/v1/commands/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl CommandView {
    pub fn of(r: &CommandRecord) -> CommandView {
        CommandView {
            id: r.id.to_string(),
            device: r.device.to_string(),
            state: r.state,
            command: r.spec.summary(),
            spec: r.spec.clone(),
            requested_by: r.spec.requested_by.clone(),
            created_ms: r.created_ms,
            expires_ms: r.expires_ms,
            transitions: r.transitions.clone(),
            exit_code: r.exit_code,
            signal: r.signal,
            reason: r.reason.clone(),
            acked: r.acked,
            cancel_requested: r.cancel_requested,
            output_bytes: r.output_total.unwrap_or(r.output.received),
            output_truncated: r.output.truncated(),
            output: None,
        }
    }
}

fn parse_command_id(s: &str) -> Result<CommandId, ApiError> {
    s.parse()
        .map_err(|e: outpost_proto::ParseIdError| ApiError::BadRequest(e.to_string()))
}

fn parse_device(s: &str) -> Result<DeviceId, ApiError> {
    s.parse()
        .map_err(|e: outpost_proto::ParseIdError| ApiError::BadRequest(e.to_string()))
}

fn storage(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("reading commands failed: {e}"))
}

/// `POST /api/v1/commands`.
pub async fn run(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(req): Json<RunRequest>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    let device = parse_device(&req.device)?;
    let kind = match (req.command, req.action) {
        (Some(line), None) => CommandKind::Shell { line },
        (None, Some(a)) => CommandKind::Builtin(a.into_builtin()?),
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of \"command\" and \"action\"".into(),
            ));
        }
    };
    let spec = CommandSpec {
        kind,
        interpreter: req.interpreter.unwrap_or_default(),
        args: req.args,
        env: req.env,
        cwd: req.cwd,
        run_as: req.run_as,
        timeout_ms: req.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
        expiry_ms: req.expiry_ms.unwrap_or(DEFAULT_EXPIRY_MS),
        requested_by: caller.actor(&headers),
    };
    let rec = st
        .commands
        .create(device, spec)
        .await
        .map_err(|e| match e {
            CreateError::UnknownDevice(_) => ApiError::NotFound(e.to_string()),
            CreateError::RevokedDevice(_) => ApiError::Conflict(e.to_string()),
            CreateError::Invalid(_) => ApiError::BadRequest(e.to_string()),
            CreateError::Store(_) | CreateError::Stopped => ApiError::Internal(e.to_string()),
        })?;
    Ok((StatusCode::CREATED, Json(CommandView::of(&rec))))
}

/// Query of `GET /api/v1/commands`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub device: Option<String>,
    pub state: Option<String>,
    pub before_ms: Option<u64>,
    /// With `before_ms`: the id of the previous page's last row.
    pub before_id: Option<String>,
    pub limit: Option<usize>,
}

/// `GET /api/v1/commands`: newest first.
pub async fn list(
    State(st): State<Arc<ApiState>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<CommandView>>, ApiError> {
    let f = ListFilter {
        device: q.device.as_deref().map(parse_device).transpose()?,
        state: q
            .state
            .as_deref()
            .map(|s| s.parse::<CommandState>().map_err(ApiError::BadRequest))
            .transpose()?,
        before_ms: q.before_ms,
        before_id: q.before_id.as_deref().map(parse_command_id).transpose()?,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    let svc = st.commands.clone();
    let rows = tokio::task::spawn_blocking(move || svc.list(&f))
        .await
        .map_err(storage)?
        .map_err(storage)?;
    Ok(Json(rows.iter().map(CommandView::of).collect()))
}

/// `GET /api/v1/commands/{id}`: the command with its output.
pub async fn show(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<CommandView>, ApiError> {
    let id = parse_command_id(&id)?;
    let svc = st.commands.clone();
    let view = tokio::task::spawn_blocking(move || -> Result<CommandView, ApiError> {
        let rec = svc
            .get(id)
            .map_err(storage)?
            .ok_or_else(|| ApiError::NotFound(format!("no command {id}")))?;
        let out = svc.output(&rec).map_err(storage)?;
        let mut v = CommandView::of(&rec);
        v.output = Some(String::from_utf8_lossy(&out).into_owned());
        Ok(v)
    })
    .await
    .map_err(storage)??;
    Ok(Json(view))
}

/// `POST /api/v1/commands/{id}/cancel`.
pub async fn cancel(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<CommandView>, ApiError> {
    let id = parse_command_id(&id)?;
    let rec = st
        .commands
        .cancel(id, &caller.actor(&headers))
        .await
        .map_err(|e| match e {
            CancelError::NotFound(_) => ApiError::NotFound(e.to_string()),
            CancelError::Finished(..) => ApiError::Conflict(e.to_string()),
            CancelError::Store(_) | CancelError::Stopped => ApiError::Internal(e.to_string()),
        })?;
    Ok(Json(CommandView::of(&rec)))
}

/// Body of `POST /api/v1/scripts` and `PUT /api/v1/scripts/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRequest {
    /// Only in `POST` (the path names it in `PUT`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub interpreter: Option<Interpreter>,
    pub body: String,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub parameters: Vec<String>,
}

fn script_version(name: String, req: ScriptRequest, by: String) -> Result<ScriptVersion, ApiError> {
    let timeout = req.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    scripts::validate(&name, &req.body, timeout).map_err(ApiError::BadRequest)?;
    Ok(ScriptVersion {
        name,
        version: 0,
        interpreter: req.interpreter.unwrap_or_default(),
        body: req.body,
        default_timeout_ms: timeout,
        parameters: req.parameters,
        created_ms: outpost_storage::now_ms(),
        created_by: by,
    })
}

/// `POST /api/v1/scripts`: a new script (version 1).
pub async fn script_add(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(req): Json<ScriptRequest>,
) -> Result<(StatusCode, Json<ScriptVersion>), ApiError> {
    let name = req
        .name
        .clone()
        .ok_or_else(|| ApiError::BadRequest("\"name\" is required".into()))?;
    let v = script_version(name.clone(), req, caller.actor(&headers))?;
    let svc = st.commands.clone();
    let r = tokio::task::spawn_blocking(move || svc.put_script(v, true))
        .await
        .map_err(storage)?
        .map_err(storage)?;
    match r {
        Ok(v) => Ok((StatusCode::CREATED, Json(v))),
        Err(_) => Err(ApiError::Conflict(format!(
            "script {name} exists: edit it with PUT /api/v1/scripts/{name}"
        ))),
    }
}

/// `PUT /api/v1/scripts/{name}`: a new version.
pub async fn script_edit(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(req): Json<ScriptRequest>,
) -> Result<Json<ScriptVersion>, ApiError> {
    if req.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::BadRequest(
            "a script is not renamed: \"name\" must match the path".into(),
        ));
    }
    let v = script_version(name.clone(), req, caller.actor(&headers))?;
    let svc = st.commands.clone();
    let r = tokio::task::spawn_blocking(move || svc.put_script(v, false))
        .await
        .map_err(storage)?
        .map_err(storage)?;
    r.map(Json)
        .map_err(|_| ApiError::NotFound(format!("no script {name}")))
}

/// `GET /api/v1/scripts`: the newest version of each.
pub async fn script_list(
    State(st): State<Arc<ApiState>>,
) -> Result<Json<Vec<ScriptVersion>>, ApiError> {
    let store = st.commands.store().clone();
    let v = tokio::task::spawn_blocking(move || scripts::list(&store))
        .await
        .map_err(storage)?
        .map_err(storage)?;
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    pub version: Option<u32>,
}

/// `GET /api/v1/scripts/{name}[?version=N]`: one version (the newest by
/// default).
pub async fn script_show(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<ScriptVersion>, ApiError> {
    let store = st.commands.store().clone();
    let n = name.clone();
    let v = tokio::task::spawn_blocking(move || match q.version {
        Some(ver) => scripts::get(&store, &n, ver),
        None => scripts::latest(&store, &n),
    })
    .await
    .map_err(storage)?
    .map_err(storage)?;
    v.map(Json).ok_or_else(|| match q.version {
        Some(ver) => ApiError::NotFound(format!("no version {ver} of script {name}")),
        None => ApiError::NotFound(format!("no script {name}")),
    })
}

/// Body of `POST /api/v1/scripts/{name}/run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRunRequest {
    pub device: String,
    /// The version to run (the newest by default).
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub run_as: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub expiry_ms: Option<u64>,
}

/// `POST /api/v1/scripts/{name}/run`: queues a run of the script on a
/// device; the command records the version (and carries its body).
pub async fn script_run(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(req): Json<ScriptRunRequest>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    let device = parse_device(&req.device)?;
    let store = st.commands.store().clone();
    let n = name.clone();
    let ver = req.version;
    let script = tokio::task::spawn_blocking(move || match ver {
        Some(v) => scripts::get(&store, &n, v),
        None => scripts::latest(&store, &n),
    })
    .await
    .map_err(storage)?
    .map_err(storage)?
    .ok_or_else(|| match ver {
        Some(v) => ApiError::NotFound(format!("no version {v} of script {name}")),
        None => ApiError::NotFound(format!("no script {name}")),
    })?;
    let spec = CommandSpec {
        kind: CommandKind::Script {
            name: script.name,
            version: script.version,
            body: script.body,
        },
        interpreter: script.interpreter,
        args: req.args,
        env: req.env,
        cwd: req.cwd,
        run_as: req.run_as,
        timeout_ms: req.timeout_ms.unwrap_or(script.default_timeout_ms),
        expiry_ms: req.expiry_ms.unwrap_or(DEFAULT_EXPIRY_MS),
        requested_by: caller.actor(&headers),
    };
    let rec = st
        .commands
        .create(device, spec)
        .await
        .map_err(create_error)?;
    Ok((StatusCode::CREATED, Json(CommandView::of(&rec))))
}

fn create_error(e: CreateError) -> ApiError {
    match e {
        CreateError::UnknownDevice(_) => ApiError::NotFound(e.to_string()),
        CreateError::RevokedDevice(_) => ApiError::Conflict(e.to_string()),
        CreateError::Invalid(_) => ApiError::BadRequest(e.to_string()),
        CreateError::Store(_) | CreateError::Stopped => ApiError::Internal(e.to_string()),
    }
}

/// Body of `POST /api/v1/commands/bulk`: a target, then either a command
/// line, a script of the library or a built-in action, with the usual
/// options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRequestBody {
    /// `{"devices": ["ID", ...]}`, `{"tag": "web"}`,
    /// `{"customer": "dental"}` or `"all"`.
    pub target: BulkTarget,
    #[serde(default)]
    pub command: Option<String>,
    /// `{"name": "cleanup", "version": 2}` (the newest without `version`).
    #[serde(default)]
    pub script: Option<ScriptRef>,
    /// A built-in action, as `POST /api/v1/commands` takes it (reboots
    /// are refused in bulk).
    #[serde(default)]
    pub action: Option<ActionRequest>,
    /// At most this many of the run's commands sent or running at once
    /// (default 50).
    #[serde(default)]
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub interpreter: Option<Interpreter>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub run_as: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub expiry_ms: Option<u64>,
}

/// A script of the library, by name and (optionally) version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRef {
    pub name: String,
    #[serde(default)]
    pub version: Option<u32>,
}

/// One device of a bulk run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BulkMemberView {
    pub device: String,
    pub command: String,
    pub state: CommandState,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
}

/// A bulk run as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BulkView {
    pub id: String,
    pub target: BulkTarget,
    pub command: String,
    pub concurrency: u32,
    pub created_ms: u64,
    pub created_by: String,
    pub cancelled_ms: Option<u64>,
    pub cancelled_by: Option<String>,
    pub summary: Summary,
    /// Every device with its command (only in `GET .../bulk/{id}` and the
    /// answers to create and cancel).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<BulkMemberView>,
}

fn bulk_view(
    svc: &crate::commands::service::CommandService,
    run: &BulkRun,
    members: bool,
) -> Result<BulkView, ApiError> {
    let mut devices = Vec::with_capacity(run.members.len());
    let mut states = Vec::with_capacity(run.members.len());
    for (dev, cid) in &run.members {
        let rec = svc.get(*cid).map_err(storage)?;
        let state = rec.as_ref().map_or(CommandState::Queued, |r| r.state);
        states.push(state);
        if members {
            devices.push(BulkMemberView {
                device: dev.to_string(),
                command: cid.to_string(),
                state,
                exit_code: rec.as_ref().and_then(|r| r.exit_code),
                signal: rec.as_ref().and_then(|r| r.signal),
                reason: rec.as_ref().and_then(|r| r.reason.clone()),
            });
        }
    }
    Ok(BulkView {
        id: run.id.to_string(),
        target: run.target.clone(),
        command: run.command.clone(),
        concurrency: run.concurrency,
        created_ms: run.created_ms,
        created_by: run.created_by.clone(),
        cancelled_ms: run.cancelled.as_ref().map(|c| c.0),
        cancelled_by: run.cancelled.as_ref().map(|c| c.1.clone()),
        summary: Summary::of(states),
        devices,
    })
}

async fn bulk_view_blocking(
    st: &ApiState,
    run: BulkRun,
    members: bool,
) -> Result<BulkView, ApiError> {
    let svc = st.commands.clone();
    tokio::task::spawn_blocking(move || bulk_view(&svc, &run, members))
        .await
        .map_err(storage)?
}

/// `POST /api/v1/commands/bulk`: one command per target device under one
/// run id (201 with the run).
pub async fn bulk_create(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(req): Json<BulkRequestBody>,
) -> Result<(StatusCode, Json<BulkView>), ApiError> {
    let (kind, interpreter, default_timeout) = match (req.command, req.script, req.action) {
        (Some(line), None, None) => (
            CommandKind::Shell { line },
            req.interpreter.unwrap_or_default(),
            DEFAULT_TIMEOUT_MS,
        ),
        (None, Some(sref), None) => {
            let store = st.commands.store().clone();
            let n = sref.name.clone();
            let ver = sref.version;
            let script = tokio::task::spawn_blocking(move || match ver {
                Some(v) => scripts::get(&store, &n, v),
                None => scripts::latest(&store, &n),
            })
            .await
            .map_err(storage)?
            .map_err(storage)?
            .ok_or_else(|| match ver {
                Some(v) => ApiError::NotFound(format!("no version {v} of script {}", sref.name)),
                None => ApiError::NotFound(format!("no script {}", sref.name)),
            })?;
            (
                CommandKind::Script {
                    name: script.name,
                    version: script.version,
                    body: script.body,
                },
                script.interpreter,
                script.default_timeout_ms,
            )
        }
        (None, None, Some(ActionRequest::Reboot { .. })) => {
            return Err(ApiError::BadRequest(
                "reboot is not available in bulk runs".into(),
            ));
        }
        (None, None, Some(a)) => (
            CommandKind::Builtin(a.into_builtin()?),
            req.interpreter.unwrap_or_default(),
            DEFAULT_TIMEOUT_MS,
        ),
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of \"command\", \"script\" and \"action\"".into(),
            ));
        }
    };
    let spec = CommandSpec {
        kind,
        interpreter,
        args: req.args,
        env: req.env,
        cwd: req.cwd,
        run_as: req.run_as,
        timeout_ms: req.timeout_ms.unwrap_or(default_timeout),
        expiry_ms: req.expiry_ms.unwrap_or(DEFAULT_EXPIRY_MS),
        requested_by: caller.actor(&headers),
    };
    let run = st
        .commands
        .create_bulk(BulkRequest {
            target: req.target,
            spec,
            concurrency: req.concurrency.unwrap_or(bulk::DEFAULT_CONCURRENCY),
        })
        .await
        .map_err(|e| match e {
            BulkError::UnknownDevice(_) | BulkError::NoDevice(_) => {
                ApiError::NotFound(e.to_string())
            }
            BulkError::RevokedDevice(_) => ApiError::Conflict(e.to_string()),
            BulkError::Invalid(_) => ApiError::BadRequest(e.to_string()),
            BulkError::Store(_) | BulkError::Stopped => ApiError::Internal(e.to_string()),
        })?;
    let view = bulk_view_blocking(&st, run, true).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkListQuery {
    pub limit: Option<usize>,
}

/// `GET /api/v1/commands/bulk`: runs newest first, with their summaries.
pub async fn bulk_list(
    State(st): State<Arc<ApiState>>,
    Query(q): Query<BulkListQuery>,
) -> Result<Json<Vec<BulkView>>, ApiError> {
    let svc = st.commands.clone();
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let views = tokio::task::spawn_blocking(move || -> Result<Vec<BulkView>, ApiError> {
        svc.list_runs(limit)
            .map_err(storage)?
            .iter()
            .map(|r| bulk_view(&svc, r, false))
            .collect()
    })
    .await
    .map_err(storage)??;
    Ok(Json(views))
}

fn parse_run_id(s: &str) -> Result<RunId, ApiError> {
    s.parse()
        .map_err(|e: outpost_proto::ParseIdError| ApiError::BadRequest(e.to_string()))
}

/// `GET /api/v1/commands/bulk/{id}`: the run, its summary and every
/// device's command.
pub async fn bulk_show(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<BulkView>, ApiError> {
    let id = parse_run_id(&id)?;
    let run = st
        .commands
        .get_run(id)
        .map_err(storage)?
        .ok_or_else(|| ApiError::NotFound(format!("no bulk run {id}")))?;
    Ok(Json(bulk_view_blocking(&st, run, true).await?))
}

/// `POST /api/v1/commands/bulk/{id}/cancel`: cancels what is queued and
/// stops what runs.
pub async fn bulk_cancel(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BulkView>, ApiError> {
    let id = parse_run_id(&id)?;
    let run = st
        .commands
        .cancel_run(id, &caller.actor(&headers))
        .await
        .map_err(|e| match e {
            CancelRunError::NotFound(_) => ApiError::NotFound(e.to_string()),
            CancelRunError::Store(_) | CancelRunError::Stopped => ApiError::Internal(e.to_string()),
        })?;
    Ok(Json(bulk_view_blocking(&st, run, true).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bulk run takes the same actions as a single command: a file
    /// transfer (which needs the file service's content and limits) is
    /// not one of them.
    #[test]
    fn a_bulk_body_takes_the_api_actions_and_not_a_raw_file_transfer() {
        let ok: BulkRequestBody = serde_json::from_value(serde_json::json!({
            "target": "all",
            "action": {"restart_service": {"unit": "nginx.service"}},
        }))
        .unwrap();
        assert!(matches!(
            ok.action,
            Some(ActionRequest::RestartService { ref unit }) if unit == "nginx.service"
        ));
        let action = serde_json::to_value(BuiltinAction::PushFile {
            transfer: outpost_proto::ids::TransferId::random(),
            path: "/etc/x".into(),
            size_bytes: 1,
            sha256: "00".repeat(32),
            mode: None,
            owner: None,
        })
        .unwrap();
        // A well-formed spec action (what the old body type accepted)...
        serde_json::from_value::<BuiltinAction>(action.clone()).unwrap();
        // ...is refused in a bulk body.
        let push = serde_json::from_value::<BulkRequestBody>(serde_json::json!({
            "target": "all",
            "action": action,
        }));
        assert!(push.is_err(), "a raw file action was accepted");
    }
}
