//! Central's `/api/v1/commands` (the appliance's shape, plus `site`):
//! queue a command for a device of any of the tenant's sites (admin,
//! technician), list and show with output (any role), cancel (admin,
//! technician); `/api/v1/audit` (admin). Customer scopes apply; another
//! tenant's (or an unseen customer's) site, device or command is 404.
//!
//! This module only translates HTTP: the rules are [`crate::commands`],
//! the delivery [`crate::downlink`], storage the
//! [`crate::store::CommandStore`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use outpost_proto::command::{
    BuiltinAction, CommandKind, CommandSpec, DEFAULT_EXPIRY_MS, DEFAULT_TIMEOUT_MS, Interpreter,
};
use outpost_proto::ids::CommandId;
use outpost_proto::{CustomerId, SiteId};
use outpost_web::{Json, Path, Query};
use serde::{Deserialize, Serialize};

use crate::Central;
use crate::api::{ApiError, one_site, require};
use crate::commands::{AuditRow, CentralCommand, CentralCommandState, Change, CommandTransition};
use crate::downlink::{Down, UNSUPPORTED};
use crate::model::{Principal, Role};
use crate::store::CommandFilter;

fn internal(e: impl std::fmt::Display + 'static) -> ApiError {
    crate::api::internal_error(e)
}

/// Body of `POST /api/v1/commands`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub site: SiteId,
    pub device: String,
    /// The command line (or `action`).
    #[serde(default)]
    pub command: Option<String>,
    /// A built-in action: `{"restart_service": {"unit": "nginx.service"}}`.
    #[serde(default)]
    pub action: Option<BuiltinAction>,
    /// A script of central's library: `{"name": "cleanup", "version": 2}`
    /// (the newest without `version`).
    #[serde(default)]
    pub script: Option<crate::api_scripts::ScriptRef>,
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

/// A command as central's API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommandView {
    pub id: String,
    pub site: SiteId,
    pub customer: CustomerId,
    pub device: String,
    pub hostname: String,
    pub state: CentralCommandState,
    pub command: String,
    pub spec: CommandSpec,
    pub requested_by: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// Central's transitions (central clock).
    pub transitions: Vec<CommandTransition>,
    /// The site's transitions (site clock).
    pub site_transitions: Vec<CommandTransition>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    pub cancel_requested: bool,
    pub output_bytes: u64,
    pub output_truncated: bool,
    /// Central will send nothing more and expects no news.
    pub closed: bool,
    /// Why it waits, when central knows (the site cannot take commands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The output central holds (lossy UTF-8); only in
    /// `GET /api/v1/commands/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl CommandView {
    pub fn of(c: &CentralCommand, central: &Central) -> CommandView {
        let note = (!c.closed
            && !c.delivered()
            && central
                .downlinks
                .version(&c.tenant, &c.site_id)
                .is_some_and(|v| v < outpost_uplink::wire::COMMANDS_PROTOCOL_VERSION))
        .then(|| UNSUPPORTED.to_string());
        CommandView {
            id: c.id.to_string(),
            site: c.site_id.clone(),
            customer: c.customer.clone(),
            device: c.device.clone(),
            hostname: c.hostname.clone(),
            state: c.state,
            command: c.spec.summary(),
            spec: c.spec.clone(),
            requested_by: c.requested_by.clone(),
            created_ms: c.created_ms,
            expires_ms: c.expires_ms,
            transitions: c.central_transitions.clone(),
            site_transitions: c.site_transitions.clone(),
            exit_code: c.exit_code,
            signal: c.signal,
            reason: c.reason.clone(),
            cancel_requested: c.cancel_requested.is_some(),
            output_bytes: c.output_total.unwrap_or(c.output_len),
            output_truncated: c.output_truncated,
            closed: c.closed,
            note,
            output: None,
        }
    }
}

fn refuse(c: &Central, reason: &str, e: ApiError) -> ApiError {
    c.metrics
        .command_refusals
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: reason.into(),
        })
        .inc();
    e
}

/// Queues a command (the API's and the console's path).
pub async fn run_command(
    c: &Arc<Central>,
    p: &Principal,
    req: RunRequest,
) -> Result<CentralCommand, ApiError> {
    let (site, dev) = target(c, p, &req.site, &req.device).await?;
    let (kind, interpreter, default_timeout) = match (req.command, req.action, req.script) {
        (Some(line), None, None) => (
            CommandKind::Shell { line },
            req.interpreter.unwrap_or_default(),
            DEFAULT_TIMEOUT_MS,
        ),
        (None, Some(BuiltinAction::Reboot { .. }), None) => {
            return Err(ApiError::BadRequest(
                "reboot is not supported yet (it needs its guard: confirmation, patch installs, boot id)".into(),
            ));
        }
        (None, Some(BuiltinAction::PushFile { .. } | BuiltinAction::PullFile { .. }), None) => {
            return Err(ApiError::BadRequest(
                "file transfers from central go through /api/v1/files/push and /api/v1/files/pull (they carry the content)".into(),
            ));
        }
        (None, Some(a), None) => (
            CommandKind::Builtin(a),
            req.interpreter.unwrap_or_default(),
            DEFAULT_TIMEOUT_MS,
        ),
        (None, None, Some(r)) => {
            let s = crate::api_scripts::runnable(c, p, &r.name, r.version, &site.customer).await?;
            (
                CommandKind::Script {
                    name: s.name,
                    version: s.version,
                    body: s.body,
                },
                s.interpreter,
                s.default_timeout_ms,
            )
        }
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
        requested_by: format!("{}@central", p.name),
    };
    queue(
        c,
        p,
        &site,
        &dev,
        spec,
        CommandId::random(),
        crate::now_ms(),
    )
    .await
}

/// Checks that `p` may run commands on `device` of `site` (role, scope,
/// device known and not revoked, the site speaks the downlink); answers
/// the site and the device.
pub async fn target(
    c: &Arc<Central>,
    p: &Principal,
    site_id: &SiteId,
    device: &str,
) -> Result<(crate::model::SiteRecord, crate::model::DeviceRow), ApiError> {
    if let Err(e) = require(p, Role::Technician) {
        return Err(refuse(c, "forbidden", e));
    }
    let site = one_site(c, p, site_id).await?;
    let dev = c
        .store
        .device(&p.tenant, site_id, device)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            refuse(
                c,
                "unknown_device",
                ApiError::NotFound(format!("no device {device} at site {site_id}")),
            )
        })?;
    if dev.revoked {
        return Err(refuse(
            c,
            "revoked_device",
            ApiError::Conflict(format!("device {device} is revoked: it takes no commands")),
        ));
    }
    if c.downlinks
        .version(&p.tenant, site_id)
        .is_some_and(|v| v < outpost_uplink::wire::COMMANDS_PROTOCOL_VERSION)
    {
        return Err(refuse(
            c,
            "site_unsupported",
            ApiError::Conflict(UNSUPPORTED.to_string()),
        ));
    }
    Ok((site, dev))
}

/// Validates `spec` and stores it as command `id` for `dev` (with its
/// audit entry), then pushes it down if the site is connected.
pub async fn queue(
    c: &Arc<Central>,
    p: &Principal,
    site: &crate::model::SiteRecord,
    dev: &crate::model::DeviceRow,
    spec: CommandSpec,
    id: CommandId,
    now: u64,
) -> Result<CentralCommand, ApiError> {
    if let Err(e) = spec.validate().and_then(|_| spec.encode().map(|_| ())) {
        return Err(refuse(
            c,
            "invalid_spec",
            ApiError::BadRequest(format!("invalid command: {e}")),
        ));
    }
    let cmd = CentralCommand::new(
        id,
        p.tenant.clone(),
        site.site_id.clone(),
        site.customer.clone(),
        dev.device.clone(),
        dev.hostname.clone(),
        spec,
        p.name.clone(),
        now,
    );
    let audit = AuditRow {
        at_ms: now,
        tenant: p.tenant.clone(),
        actor: p.name.clone(),
        action: "command.run".into(),
        target: format!("{}/{}", cmd.site_id, cmd.device),
        detail: format!("{} {}", cmd.id, cmd.spec.summary()),
    };
    c.store
        .create_command(&cmd, &audit)
        .await
        .map_err(internal)?;
    c.metrics.commands_created.inc();
    crate::console::publish_command(&c.live, &cmd);
    // Connected: down at once; otherwise it waits here for the site.
    c.downlinks
        .push(&p.tenant, &cmd.site_id, Down::Command(cmd.id));
    Ok(cmd)
}

/// The command `id` if the caller may see it, else 404.
pub async fn visible_command(
    c: &Arc<Central>,
    p: &Principal,
    id: &str,
) -> Result<CentralCommand, ApiError> {
    let not_found = || ApiError::NotFound(format!("no command {id}"));
    let cid: CommandId = id.parse().map_err(|_| not_found())?;
    c.store
        .command(&p.tenant, cid)
        .await
        .map_err(internal)?
        .filter(|cmd| p.sees_customer(&cmd.customer))
        .ok_or_else(not_found)
}

/// Cancels a command (the API's and the console's path).
pub async fn cancel_command(
    c: &Arc<Central>,
    p: &Principal,
    id: &str,
) -> Result<CentralCommand, ApiError> {
    let cmd = visible_command(c, p, id).await?;
    require(p, Role::Technician)?;
    if cmd.closed || cmd.state.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "command {} already finished ({})",
            cmd.id, cmd.state
        )));
    }
    let now = crate::now_ms();
    let audit = AuditRow {
        at_ms: now,
        tenant: p.tenant.clone(),
        actor: p.name.clone(),
        action: "command.cancel".into(),
        target: format!("{}/{}", cmd.site_id, cmd.device),
        detail: cmd.id.to_string(),
    };
    let (rec, o) = c
        .store
        .change_command(
            &p.tenant,
            cmd.id,
            Change::Cancel { by: p.name.clone() },
            now,
            Some(audit),
        )
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no command {id}")))?;
    if o.changed {
        crate::console::publish_command(&c.live, &rec);
    }
    if o.send_cancel {
        c.downlinks.push(
            &p.tenant,
            &rec.site_id,
            Down::Cancel {
                id: rec.id,
                by: format!("{}@central", p.name),
            },
        );
    }
    Ok(rec)
}

/// Query of `GET /api/v1/commands`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub site: Option<SiteId>,
    pub device: Option<String>,
    pub state: Option<String>,
    pub before_ms: Option<u64>,
    /// With `before_ms`: the id of the previous page's last row.
    pub before_id: Option<String>,
    pub limit: Option<usize>,
}

/// The commands the caller sees, newest first.
pub async fn list_commands(
    c: &Arc<Central>,
    p: &Principal,
    q: ListQuery,
) -> Result<Vec<CentralCommand>, ApiError> {
    if let Some(s) = &q.site {
        one_site(c, p, s).await?;
    }
    let f = CommandFilter {
        site_id: q.site,
        device: q.device,
        state: q
            .state
            .as_deref()
            .map(|s| {
                s.parse::<CentralCommandState>()
                    .map_err(ApiError::BadRequest)
            })
            .transpose()?,
        customers_allowed: p.customers.clone(),
        before_ms: q.before_ms,
        before_id: q
            .before_id
            .as_deref()
            .map(|s| {
                s.parse::<outpost_proto::ids::CommandId>()
                    .map_err(|e| ApiError::BadRequest(format!("before_id {s:?}: {e}")))
            })
            .transpose()?,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    c.store.commands(&p.tenant, &f).await.map_err(internal)
}

pub async fn run(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Json(req): Json<RunRequest>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    let cmd = run_command(&c, &p, req).await?;
    Ok((StatusCode::CREATED, Json(CommandView::of(&cmd, &c))))
}

pub async fn list(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<CommandView>>, ApiError> {
    let v = list_commands(&c, &p, q).await?;
    Ok(Json(v.iter().map(|x| CommandView::of(x, &c)).collect()))
}

pub async fn show(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<CommandView>, ApiError> {
    let cmd = visible_command(&c, &p, &id).await?;
    let out = c
        .store
        .command_output(&p.tenant, cmd.id)
        .await
        .map_err(internal)?;
    let mut v = CommandView::of(&cmd, &c);
    v.output = Some(String::from_utf8_lossy(&out).into_owned());
    Ok(Json(v))
}

pub async fn cancel(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<CommandView>, ApiError> {
    let rec = cancel_command(&c, &p, &id).await?;
    Ok(Json(CommandView::of(&rec, &c)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub limit: Option<usize>,
}

/// `GET /api/v1/audit`: the tenant's audit log, newest first (admin).
pub async fn audit(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditRow>>, ApiError> {
    require(&p, Role::Admin)?;
    if !p.is_tenant_wide() {
        return Err(ApiError::Forbidden(
            "the audit log spans every customer: it needs a tenant-wide admin".into(),
        ));
    }
    let v = c
        .store
        .audit(&p.tenant, q.limit.unwrap_or(100).clamp(1, 1000))
        .await
        .map_err(internal)?;
    Ok(Json(v))
}
