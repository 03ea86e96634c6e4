//! The site console's Scripts and bulk-run pages, backed by the command
//! service's script library and bulk runs (the same data as
//! `/api/v1/scripts` and `/api/v1/commands/bulk`): the newest version of
//! each script, a version's body, a run of a script on one device, the
//! bulk runs and one run with each device's state. Roles are the admin
//! API's (reads need a viewer; `POST /api/v1/scripts/{name}/run` needs a
//! technician).
//!
//! This module only maps the console's requests to the command service
//! and the script library's read functions; it must not touch the command
//! tables, the script table's writes or the state machine.

use axum::http::Method;
use outpost_console::backend::{ConsoleError, Viewer};
use outpost_console::scripts::{
    BulkCounts, BulkDetail, BulkMemberRow, BulkRow, ScriptDetail, ScriptRow,
};
use outpost_proto::DeviceId;
use outpost_proto::command::{CommandKind, CommandSpec, DEFAULT_EXPIRY_MS};

use super::commands::hostnames;
use super::index::SiteRef;
use super::{SiteConsole, api_err, caller_of, internal};
use crate::commands::bulk::{BulkRun, RunId, Summary};
use crate::commands::model::CommandState;
use crate::commands::scripts::{self, ScriptVersion};
use crate::commands::service::{CancelRunError, CommandService, CreateError};
use crate::users::auth::required_role;

/// The route whose role running a script needs.
pub const RUN_ROUTE: &str = "/api/v1/scripts/{name}/run";
/// Most bulk runs the list shows.
pub const MAX_BULKS: usize = 200;

fn no_service() -> ConsoleError {
    ConsoleError::NotFound("Scripts are not available on this server.".into())
}

fn script_row(s: &ScriptVersion) -> ScriptRow {
    ScriptRow {
        name: s.name.clone(),
        version: s.version,
        interpreter: s.interpreter.as_str().into(),
        customer: None,
        parameters: s.parameters.clone(),
        default_timeout_ms: s.default_timeout_ms,
        created_ms: s.created_ms,
        created_by: s.created_by.clone(),
    }
}

/// A run's counts from its members' states (`held` is central's: none here).
fn counts(s: &Summary) -> BulkCounts {
    BulkCounts {
        total: s.total,
        held: 0,
        pending: s.pending,
        running: s.running,
        done: s.done,
        failed: s.failed,
        cancelled: s.cancelled,
        expired: s.expired,
        finished: s.finished,
    }
}

/// A run as the console shows it, with its members when `members`.
fn bulk_detail(
    svc: &CommandService,
    site: &SiteRef,
    run: &BulkRun,
    members: bool,
) -> Result<BulkDetail, ConsoleError> {
    let mut states = Vec::with_capacity(run.members.len());
    let mut rows = Vec::new();
    let names = if members {
        hostnames(svc, run.members.iter().map(|(d, _)| *d))
    } else {
        Default::default()
    };
    for (dev, cid) in &run.members {
        let rec = svc.get(*cid).map_err(internal)?;
        let state = rec.as_ref().map_or(CommandState::Queued, |r| r.state);
        states.push(state);
        if members {
            rows.push(BulkMemberRow {
                site_id: site.id.clone(),
                device: dev.to_string(),
                hostname: names.get(dev).cloned().unwrap_or_default(),
                command: cid.to_string(),
                state: state.as_str().into(),
                held: false,
                exit_code: rec.as_ref().and_then(|r| r.exit_code),
            });
        }
    }
    Ok(BulkDetail {
        row: BulkRow {
            id: run.id.to_string(),
            command: run.command.clone(),
            concurrency: run.concurrency,
            sites: 1,
            created_ms: run.created_ms,
            created_by: run.created_by.clone(),
            cancelled_by: run.cancelled.as_ref().map(|c| c.1.clone()),
            counts: counts(&Summary::of(states)),
        },
        members: rows,
    })
}

impl SiteConsole {
    fn script_service(&self) -> Result<CommandService, ConsoleError> {
        self.commands.clone().ok_or_else(no_service)
    }

    pub(super) async fn script_rows(&self) -> Result<Vec<ScriptRow>, ConsoleError> {
        let svc = self.script_service()?;
        tokio::task::spawn_blocking(move || {
            let all = scripts::list(svc.store()).map_err(internal)?;
            Ok(all.iter().map(script_row).collect())
        })
        .await
        .map_err(|e| internal(format!("storage task failed: {e}")))?
    }

    pub(super) async fn script_detail(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<ScriptDetail, ConsoleError> {
        let svc = self.script_service()?;
        let n = name.to_string();
        let found = tokio::task::spawn_blocking(move || match version {
            Some(v) => scripts::get(svc.store(), &n, v),
            None => scripts::latest(svc.store(), &n),
        })
        .await
        .map_err(|e| internal(format!("storage task failed: {e}")))?
        .map_err(internal)?;
        let s = found.ok_or_else(|| match version {
            Some(v) => ConsoleError::NotFound(format!("no version {v} of script {name}")),
            None => ConsoleError::NotFound(format!("no script {name}")),
        })?;
        Ok(ScriptDetail {
            row: script_row(&s),
            body: s.body,
        })
    }

    /// Queues the newest version of `name` on `device`, as
    /// `POST /api/v1/scripts/{name}/run` does with the script's defaults.
    pub(super) async fn script_run(
        &self,
        v: &Viewer,
        site: &str,
        device: &str,
        name: &str,
        args: &[String],
    ) -> Result<String, ConsoleError> {
        let caller = caller_of(v);
        caller
            .require(required_role(&Method::POST, RUN_ROUTE))
            .map_err(api_err)?;
        self.site.check(site)?;
        let svc = self.script_service()?;
        let id: DeviceId = device
            .parse()
            .map_err(|_| ConsoleError::NotFound(format!("no device {device}")))?;
        let store = svc.store().clone();
        let n = name.to_string();
        let s = tokio::task::spawn_blocking(move || scripts::latest(&store, &n))
            .await
            .map_err(|e| internal(format!("storage task failed: {e}")))?
            .map_err(internal)?
            .ok_or_else(|| ConsoleError::NotFound(format!("no script {name}")))?;
        let spec = CommandSpec {
            kind: CommandKind::Script {
                name: s.name,
                version: s.version,
                body: s.body,
            },
            interpreter: s.interpreter,
            args: args.to_vec(),
            env: Vec::new(),
            cwd: None,
            run_as: None,
            timeout_ms: s.default_timeout_ms,
            expiry_ms: DEFAULT_EXPIRY_MS,
            requested_by: caller.user.clone(),
        };
        let r = svc.create(id, spec).await.map_err(|e| match e {
            CreateError::UnknownDevice(_) => ConsoleError::NotFound(e.to_string()),
            CreateError::RevokedDevice(_) | CreateError::Invalid(_) => {
                ConsoleError::BadRequest(e.to_string())
            }
            e => internal(e.to_string()),
        })?;
        Ok(r.id.to_string())
    }

    pub(super) async fn bulk_rows(&self) -> Result<Vec<BulkRow>, ConsoleError> {
        let svc = self.script_service()?;
        let site = self.site.identity();
        tokio::task::spawn_blocking(move || {
            let runs = svc.list_runs(MAX_BULKS).map_err(internal)?;
            runs.iter()
                .map(|r| bulk_detail(&svc, &site, r, false).map(|d| d.row))
                .collect()
        })
        .await
        .map_err(|e| internal(format!("storage task failed: {e}")))?
    }

    pub(super) async fn bulk_cancel(&self, v: &Viewer, id: &str) -> Result<(), ConsoleError> {
        let caller = caller_of(v);
        caller
            .require(required_role(
                &Method::POST,
                "/api/v1/commands/bulk/{id}/cancel",
            ))
            .map_err(api_err)?;
        let svc = self.script_service()?;
        let rid: RunId = id
            .parse()
            .map_err(|_| ConsoleError::NotFound(format!("no bulk run {id}")))?;
        svc.cancel_run(rid, &caller.user)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                CancelRunError::NotFound(_) => ConsoleError::NotFound(e.to_string()),
                e => internal(e.to_string()),
            })
    }

    pub(super) async fn bulk_of(&self, id: &str) -> Result<BulkDetail, ConsoleError> {
        let svc = self.script_service()?;
        let site = self.site.identity();
        let rid: RunId = id
            .parse()
            .map_err(|_| ConsoleError::NotFound(format!("no bulk run {id}")))?;
        tokio::task::spawn_blocking(move || {
            let run = svc
                .get_run(rid)
                .map_err(internal)?
                .ok_or_else(|| ConsoleError::NotFound(format!("no bulk run {rid}")))?;
            bulk_detail(&svc, &site, &run, true)
        })
        .await
        .map_err(|e| internal(format!("storage task failed: {e}")))?
    }
}
