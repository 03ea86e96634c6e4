//! The site console's bulk actions on selected devices: "Run script…"
//! (one bulk run of the command service, as `POST /api/v1/commands/bulk`
//! makes) and "Tag…" (adds tags as `PUT /api/v1/devices/{id}/tags` sets
//! them: audited, the alert engine told). Roles are the admin API's
//! (both need a technician).
//!
//! This module only maps the console's requests to the command service
//! and the registry; it must not touch the command tables.

use axum::http::Method;
use outpost_console::backend::{ConsoleError, Viewer};
use outpost_console::bulk_actions::{BulkRunRequest, DeviceKey};
use outpost_proto::DeviceId;
use outpost_proto::command::{CommandKind, CommandSpec, DEFAULT_EXPIRY_MS, DEFAULT_TIMEOUT_MS};
use outpost_storage::model::AuditEntry;
use outpost_storage::registry;

use super::{SiteConsole, caller_of, internal};
use crate::commands::bulk::{self, BulkTarget};
use crate::commands::scripts;
use crate::commands::service::{BulkError, BulkRequest};
use crate::users::auth::required_role;

/// The route whose role running a bulk command needs.
pub const BULK_ROUTE: &str = "/api/v1/commands/bulk";
/// The route whose role setting tags needs.
pub const TAGS_ROUTE: &str = "/api/v1/devices/{id}/tags";

fn may(v: &Viewer, method: Method, route: &str) -> Result<(), ConsoleError> {
    let need = required_role(&method, route);
    if caller_of(v).role.allows(need) {
        Ok(())
    } else {
        Err(ConsoleError::Forbidden(format!(
            "Role {} may not do this (needs {}).",
            v.role,
            need.as_str()
        )))
    }
}

impl SiteConsole {
    /// The selected devices, each of this site.
    fn own_devices(&self, devices: &[DeviceKey]) -> Result<Vec<DeviceId>, ConsoleError> {
        devices
            .iter()
            .map(|(site, d)| {
                self.site.check(site)?;
                d.parse::<DeviceId>()
                    .map_err(|_| ConsoleError::NotFound(format!("no device {d}")))
            })
            .collect()
    }

    pub(super) async fn bulk_run_of(
        &self,
        v: &Viewer,
        devices: &[DeviceKey],
        req: &BulkRunRequest,
    ) -> Result<String, ConsoleError> {
        may(v, Method::POST, BULK_ROUTE)?;
        let svc = self
            .commands
            .clone()
            .ok_or_else(|| ConsoleError::NotFound("Commands are not available here.".into()))?;
        let ids = self.own_devices(devices)?;
        let (kind, interpreter, timeout) = match (&req.script, &req.command) {
            (Some(name), None) => {
                let store = svc.store().clone();
                let n = name.clone();
                let s = tokio::task::spawn_blocking(move || scripts::latest(&store, &n))
                    .await
                    .map_err(|e| internal(format!("storage task failed: {e}")))?
                    .map_err(internal)?
                    .ok_or_else(|| ConsoleError::NotFound(format!("no script {name}")))?;
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
            (None, Some(line)) => (
                CommandKind::Shell { line: line.clone() },
                Default::default(),
                DEFAULT_TIMEOUT_MS,
            ),
            _ => {
                return Err(ConsoleError::BadRequest(
                    "Give a script or a command line (one of them).".into(),
                ));
            }
        };
        let spec = CommandSpec {
            kind,
            interpreter,
            args: req.args.clone(),
            env: Vec::new(),
            cwd: None,
            run_as: None,
            timeout_ms: timeout,
            expiry_ms: DEFAULT_EXPIRY_MS,
            requested_by: v.name.clone(),
        };
        let run = svc
            .create_bulk(BulkRequest {
                target: BulkTarget::Devices(ids.iter().map(|d| d.to_string()).collect()),
                spec,
                concurrency: bulk::DEFAULT_CONCURRENCY,
            })
            .await
            .map_err(|e| match e {
                BulkError::UnknownDevice(_) | BulkError::NoDevice(_) => {
                    ConsoleError::NotFound(e.to_string())
                }
                BulkError::RevokedDevice(_) | BulkError::Invalid(_) => {
                    ConsoleError::BadRequest(e.to_string())
                }
                BulkError::Store(_) | BulkError::Stopped => internal(e),
            })?;
        Ok(run.id.to_string())
    }

    pub(super) async fn tag_devices_of(
        &self,
        v: &Viewer,
        devices: &[DeviceKey],
        tags: &[String],
    ) -> Result<(), ConsoleError> {
        may(v, Method::PUT, TAGS_ROUTE)?;
        let ids = self.own_devices(devices)?;
        let store = self.site.store.clone();
        let tags = tags.to_vec();
        let actor = v.name.clone();
        tokio::task::spawn_blocking(move || {
            let now = outpost_storage::now_ms();
            for id in ids {
                registry::get(&store, id)
                    .map_err(internal)?
                    .ok_or_else(|| ConsoleError::NotFound(format!("no device {id}")))?;
                let mut have = registry::tags(&store, id).map_err(internal)?;
                for t in &tags {
                    if !have.contains(t) {
                        have.push(t.clone());
                    }
                }
                if have.len() > 64 {
                    return Err(ConsoleError::BadRequest(format!(
                        "device {id} would have more than 64 tags"
                    )));
                }
                registry::set_tags(&store, id, &have).map_err(internal)?;
                registry::audit(
                    &store,
                    &AuditEntry {
                        at_ms: now,
                        actor: actor.clone(),
                        action: "device.tags".into(),
                        target: id.to_string(),
                        detail: have.join(","),
                    },
                )
                .map_err(internal)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| internal(format!("storage task failed: {e}")))??;
        self.alerts.reload();
        // The list shows the new tags at once.
        let site = self.site.clone();
        tokio::task::spawn_blocking(move || site.merge_now(false))
            .await
            .map_err(|e| internal(format!("index merge task failed: {e}")))?
            .map_err(internal)?;
        Ok(())
    }
}
