//! The site console's command pages, backed by the command service
//! ([`CommandService`]): the same pages central shows, for this site's
//! devices. Roles are the admin API's (`POST /api/v1/commands` needs a
//! technician).
//!
//! This module only maps the console's requests to the command service;
//! it must not touch the command tables or the state machine.

use std::collections::HashMap;

use axum::http::Method;
use outpost_console::backend::{ConsoleError, Viewer};
use outpost_console::commands::{CommandDetail, CommandQuery, CommandRow, CommandStep, RunCommand};
use outpost_proto::DeviceId;
use outpost_proto::command::{CommandKind, CommandSpec, DEFAULT_EXPIRY_MS};
use outpost_proto::ids::CommandId;
use outpost_storage::registry;

use super::index::SiteRef;
use super::{SiteConsole, api_err, caller_of, internal};
use crate::commands::model::{CommandRecord, CommandState};
use crate::commands::service::{CancelError, CommandService, CreateError};
use crate::commands::store::ListFilter;
use crate::users::auth::required_role;

/// The route whose role running a command needs.
pub const COMMANDS_ROUTE: &str = "/api/v1/commands";

fn no_service() -> ConsoleError {
    ConsoleError::NotFound("Commands are not available on this server.".into())
}

fn row(r: &CommandRecord, site: &SiteRef, hostnames: &HashMap<DeviceId, String>) -> CommandRow {
    CommandRow {
        id: r.id.to_string(),
        site_id: site.id.clone(),
        site_name: site.name.clone(),
        device: r.device.to_string(),
        hostname: hostnames.get(&r.device).cloned().unwrap_or_default(),
        state: r.state.as_str().into(),
        command: r.spec.summary(),
        requested_by: r.spec.requested_by.clone(),
        created_ms: r.created_ms,
        exit_code: r.exit_code,
        finished: r.state.is_terminal(),
    }
}

pub(super) fn hostnames(
    svc: &CommandService,
    ids: impl Iterator<Item = DeviceId>,
) -> HashMap<DeviceId, String> {
    let mut m = HashMap::new();
    for id in ids {
        if let std::collections::hash_map::Entry::Vacant(e) = m.entry(id)
            && let Ok(Some(r)) = registry::get(svc.store(), id)
        {
            e.insert(r.hostname);
        }
    }
    m
}

impl SiteConsole {
    fn service(&self) -> Result<&CommandService, ConsoleError> {
        self.commands.as_ref().ok_or_else(no_service)
    }

    pub(super) async fn command_rows(
        &self,
        q: &CommandQuery,
    ) -> Result<Vec<CommandRow>, ConsoleError> {
        let svc = self.service()?.clone();
        let site = match &q.site {
            Some(s) => self.site.check(s)?,
            None => self.site.identity(),
        };
        let device = match &q.device {
            Some(d) => Some(
                d.parse::<DeviceId>()
                    .map_err(|_| ConsoleError::NotFound(format!("no device {d}")))?,
            ),
            None => None,
        };
        let state = match &q.state {
            // Central's own states never occur here.
            Some(s) => match s.parse::<CommandState>() {
                Ok(st) => Some(st),
                Err(_) => return Ok(Vec::new()),
            },
            None => None,
        };
        let f = ListFilter {
            device,
            state,
            before_ms: q.before_ms,
            // A malformed id (an edited URL) pages by time alone.
            before_id: q.before_id.as_deref().and_then(|s| s.parse().ok()),
            limit: q.limit.clamp(1, 1000),
        };
        tokio::task::spawn_blocking(move || {
            let rows = svc.list(&f).map_err(internal)?;
            let names = hostnames(&svc, rows.iter().map(|r| r.device));
            Ok(rows.iter().map(|r| row(r, &site, &names)).collect())
        })
        .await
        .map_err(|e| internal(format!("storage task failed: {e}")))?
    }

    pub(super) async fn command_detail(&self, id: &str) -> Result<CommandDetail, ConsoleError> {
        let svc = self.service()?.clone();
        let site = self.site.identity();
        let cid: CommandId = id
            .parse()
            .map_err(|_| ConsoleError::NotFound(format!("no command {id}")))?;
        tokio::task::spawn_blocking(move || {
            let r = svc
                .get(cid)
                .map_err(internal)?
                .ok_or_else(|| ConsoleError::NotFound(format!("no command {cid}")))?;
            let out = svc.output(&r).map_err(internal)?;
            let names = hostnames(&svc, std::iter::once(r.device));
            Ok(CommandDetail {
                row: row(&r, &site, &names),
                steps: r
                    .transitions
                    .iter()
                    .map(|t| CommandStep {
                        state: t.state.as_str().into(),
                        at_ms: t.at_ms,
                        source: "site".into(),
                    })
                    .collect(),
                signal: r.signal,
                reason: r.reason.clone(),
                timeout_ms: r.spec.timeout_ms,
                run_as: r.spec.run_as.clone(),
                interpreter: r.spec.interpreter.as_str().into(),
                cancel_requested: r.cancel_requested,
                note: None,
                output: String::from_utf8_lossy(&out).into_owned(),
                output_truncated: r.output.truncated(),
            })
        })
        .await
        .map_err(|e| internal(format!("storage task failed: {e}")))?
    }

    pub(super) async fn command_run(
        &self,
        v: &Viewer,
        site: &str,
        device: &str,
        req: &RunCommand,
    ) -> Result<String, ConsoleError> {
        self.site.check(site)?;
        let caller = caller_of(v);
        caller
            .require(required_role(&Method::POST, COMMANDS_ROUTE))
            .map_err(api_err)?;
        let svc = self.service()?;
        let id: DeviceId = device
            .parse()
            .map_err(|_| ConsoleError::NotFound(format!("no device {device}")))?;
        let spec = CommandSpec {
            kind: CommandKind::Shell {
                line: req.command.clone(),
            },
            interpreter: req.interpreter.parse().map_err(ConsoleError::BadRequest)?,
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            run_as: req.run_as.clone(),
            timeout_ms: req.timeout_secs.saturating_mul(1000),
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

    pub(super) async fn command_cancel(&self, v: &Viewer, id: &str) -> Result<(), ConsoleError> {
        let caller = caller_of(v);
        caller
            .require(required_role(&Method::POST, "/api/v1/commands/{id}/cancel"))
            .map_err(api_err)?;
        let svc = self.service()?;
        let cid: CommandId = id
            .parse()
            .map_err(|_| ConsoleError::NotFound(format!("no command {id}")))?;
        svc.cancel(cid, &caller.user)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                CancelError::NotFound(_) => ConsoleError::NotFound(e.to_string()),
                CancelError::Finished(..) => ConsoleError::BadRequest(e.to_string()),
                e => internal(e.to_string()),
            })
    }
}

/// Tells open command pages and lists that commands moved: after each
/// stored change of the command service (its counter; bumps that come
/// while one event is out coalesce), one live event without an id, at
/// most every `min_gap`. Runs until `shutdown`.
pub async fn live_loop(
    svc: CommandService,
    site: std::sync::Arc<super::Site>,
    min_gap: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut changes = svc.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
        site.hub.publish(outpost_console::live::LiveEvent::command(
            super::LIVE_TENANT,
            &outpost_console::live::CommandChange {
                id: String::new(),
                site_id: String::new(),
                customer: String::new(),
                state: String::new(),
                finished: false,
            },
        ));
        tokio::time::sleep(min_gap).await;
    }
}
