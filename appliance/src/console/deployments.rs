//! The site console's Deployments and Approvals pages, backed by the
//! deployment API's own state ([`DeployApi`]: the store, the missing
//! patches and the orchestrator handle). Roles are the admin API's: a
//! viewer reads, a technician pauses, resumes and rolls back (`POST
//! /api/v1/deployments/{id}/pause`), an admin also creates and aborts.
//!
//! This module only maps the console's requests to the orchestrator and
//! the approvals; it must not touch the deployment tables or the rollout
//! state machine.

use std::collections::HashMap;

use axum::http::Method;
use outpost_console::backend::{ConsoleError, DeviceQuery, Viewer};
use outpost_console::deployments::{
    ApprovalsView, DecisionRow, DeploymentAction, DeploymentDetail, DeploymentDevice,
    DeploymentRow, DeviceDecisions, NewDeployment, RollbackTarget, RuleRow, StageView,
};
use outpost_patch::approval::{Outcome, RuleKind, Verdict};
use outpost_patch::rollout::{Input, PauseReason, Phase, RollbackScope};
use outpost_proto::DeviceId;
use outpost_storage::registry;

use super::{SiteConsole, caller_of, internal};
use crate::deploy::api::{self as deploy_api, DeployApi};
use crate::deploy::approvals::{self, ApprovalError};
use crate::deploy::orchestrator::{CreateRequest, DeployError};
use crate::deploy::store::{DeployTarget, StoredDeployment};
use crate::users::auth::required_role;

/// The route whose role pausing, resuming and rolling back need.
pub const MANAGE_ROUTE: &str = "/api/v1/deployments/{id}/pause";
/// The routes whose role creating and aborting need.
pub const CREATE_ROUTE: &str = "/api/v1/deployments";
pub const ABORT_ROUTE: &str = "/api/v1/deployments/{id}/abort";

/// The create form's options as the API's create request takes them
/// ([`outpost_console::deployments::DeploymentOptions::json`]).
#[derive(Debug, Default, serde::Deserialize)]
struct FormOptions {
    #[serde(default)]
    stages: Option<Vec<u8>>,
    #[serde(default)]
    gate: Option<outpost_patch::rollout::GateSpec>,
    #[serde(default)]
    auto_rollback_failed_pct: Option<u8>,
    #[serde(default)]
    install_deadline_ms: Option<u64>,
    #[serde(default)]
    window: Option<outpost_patch::window::InstallWindow>,
    #[serde(flatten)]
    options: crate::deploy::options::DeployOptions,
}

fn no_service() -> ConsoleError {
    ConsoleError::NotFound("Deployments are not available on this server.".into())
}

fn approval_err(e: ApprovalError) -> ConsoleError {
    match e {
        ApprovalError::UnknownDevice(_)
        | ApprovalError::UnknownPatch(_)
        | ApprovalError::UnknownRule(_) => ConsoleError::NotFound(e.to_string()),
        ApprovalError::DuplicateRule(_) | ApprovalError::Invalid(_) => {
            ConsoleError::BadRequest(e.to_string())
        }
        ApprovalError::Store(_) => internal(e),
    }
}

fn deploy_err(e: DeployError) -> ConsoleError {
    match e {
        DeployError::NotFound(_) | DeployError::UnknownDevice(_) => {
            ConsoleError::NotFound(e.to_string())
        }
        DeployError::Conflict(_) | DeployError::Refused(_) | DeployError::Invalid(_) => {
            ConsoleError::BadRequest(e.to_string())
        }
        DeployError::Approvals(a) => approval_err(a),
        DeployError::Store(_) => internal(e),
    }
}

fn stage_view(s: &deploy_api::StageView) -> StageView {
    let f = &s.figures;
    StageView {
        stage: f.stage,
        devices: f.devices,
        counted: f.counted,
        succeeded: f.succeeded,
        failed: f.failed,
        in_flight: f.in_flight,
        waiting: f.waiting,
        gate: s.gate.clone(),
    }
}

/// A stored deployment as the console's list shows it.
pub fn row(d: &StoredDeployment, now_ms: u64) -> DeploymentRow {
    let v = deploy_api::view(d.clone(), now_ms);
    let s = &v.summary;
    DeploymentRow {
        id: s.id.clone(),
        phase: s.phase.clone(),
        stage: s.stage,
        stages: s.stages,
        target: s.target.clone(),
        patches: s.patches.iter().map(|p| p.to_string()).collect(),
        devices: s.devices,
        succeeded: s.succeeded,
        failed: s.failed,
        current: s
            .stage
            .and_then(|k| v.stages.get(k as usize))
            .map(stage_view),
        created_ms: s.created_at_ms,
        created_by: s.created_by.clone(),
        updated_ms: s.updated_at_ms,
        ..Default::default()
    }
}

/// Why it is paused, or the abort's note.
fn note(p: &Phase) -> Option<String> {
    match p {
        Phase::Paused { reason, .. } => Some(match reason {
            PauseReason::Technician { note } if note.is_empty() => "paused by a technician".into(),
            PauseReason::Technician { note } => format!("paused: {note}"),
            PauseReason::GateFailed { why, .. } => format!("gate failed: {why}"),
            PauseReason::StageRolledBack => "the stage was rolled back".into(),
        }),
        Phase::Aborted { note } if !note.is_empty() => Some(format!("aborted: {note}")),
        _ => None,
    }
}

/// A stored deployment with its stages and devices.
pub fn detail(
    d: &StoredDeployment,
    site_id: &str,
    hostnames: &HashMap<String, String>,
    now_ms: u64,
) -> DeploymentDetail {
    let v = deploy_api::view(d.clone(), now_ms);
    let devices = d
        .deployment
        .devices
        .iter()
        .map(|(id, r)| {
            let install = d.installs.get(id);
            DeploymentDevice {
                site_id: site_id.to_string(),
                device: id.clone(),
                hostname: hostnames.get(id).cloned().unwrap_or_default(),
                stage: r.stage,
                state: serde_json::to_value(r.state)
                    .ok()
                    .and_then(|s| s.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{:?}", r.state)),
                attempt: r.attempt,
                reason: r
                    .reason
                    .clone()
                    .or_else(|| install.and_then(|i| i.reason.clone())),
                at_ms: r
                    .finished_at_ms
                    .or(r.dispatched_at_ms)
                    .or(install.map(|i| i.at_ms))
                    .unwrap_or(0),
            }
        })
        .collect();
    DeploymentDetail {
        row: row(d, now_ms),
        note: note(&d.deployment.phase),
        stages: v.stages.iter().map(stage_view).collect(),
        devices,
        ..Default::default()
    }
}

/// `all`, `tag:T`, `customer:C`, `device:ID`.
pub fn parse_target(s: &str) -> Result<DeployTarget, ConsoleError> {
    let bad = || ConsoleError::BadRequest(format!("unknown target {s:?}"));
    match s.split_once(':') {
        None if s == "all" || s.is_empty() => Ok(DeployTarget::All),
        Some(("tag", t)) if !t.trim().is_empty() => Ok(DeployTarget::Tag {
            tag: t.trim().into(),
        }),
        Some(("customer", c)) if !c.trim().is_empty() => Ok(DeployTarget::Customer {
            customer: c.trim().into(),
        }),
        Some(("device", d)) if !d.trim().is_empty() => Ok(DeployTarget::Devices {
            devices: vec![d.trim().into()],
        }),
        _ => Err(bad()),
    }
}

fn rule_row(r: &outpost_patch::approval::ApprovalRule) -> RuleRow {
    let (kind, patch, detail) = match &r.rule {
        RuleKind::Manual { patch, verdict } => (
            match verdict {
                Verdict::Approve => "approve",
                Verdict::Decline => "decline",
            },
            Some(patch.to_string()),
            String::new(),
        ),
        RuleKind::Auto(a) => {
            let mut parts = Vec::new();
            parts.push(match a.min_severity {
                Some(s) => format!(
                    "severity ≥ {}",
                    serde_json::to_value(s)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_else(|| format!("{s:?}"))
                ),
                None => "any severity".into(),
            });
            if a.security_only {
                parts.push("security updates only".into());
            }
            if a.delay_days > 0 {
                parts.push(format!("after {} days", a.delay_days));
            }
            if !a.allow.is_empty() {
                parts.push(format!("only {}", a.allow.join(", ")));
            }
            if !a.deny.is_empty() {
                parts.push(format!("never {}", a.deny.join(", ")));
            }
            ("auto", None, parts.join("; "))
        }
    };
    RuleRow {
        id: r.id.clone(),
        scope: r.scope.to_string(),
        kind: kind.into(),
        patch,
        detail,
    }
}

fn outcome(o: &Outcome) -> &'static str {
    match o {
        Outcome::Approved => "approved",
        Outcome::Declined => "declined",
        Outcome::Deferred { .. } => "deferred",
        Outcome::Unapproved => "unapproved",
    }
}

impl SiteConsole {
    fn deploy(&self) -> Result<&DeployApi, ConsoleError> {
        self.deployments.as_ref().ok_or_else(no_service)
    }

    /// Checks the viewer's role (as read at this request) for `route`.
    fn may(v: &Viewer, route: &str) -> Result<(), ConsoleError> {
        let c = caller_of(v);
        let need = required_role(&Method::POST, route);
        if c.role.allows(need) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(format!(
                "Role {} may not do this (needs {}).",
                v.role,
                need.as_str()
            )))
        }
    }

    pub(super) async fn deployment_rows(&self) -> Result<Vec<DeploymentRow>, ConsoleError> {
        let api = self.deploy()?.clone();
        tokio::task::spawn_blocking(move || {
            let now = outpost_storage::now_ms();
            let mut all = api.orchestrator.list().map_err(deploy_err)?;
            all.sort_by(|a, b| {
                b.created_at_ms
                    .cmp(&a.created_at_ms)
                    .then_with(|| b.id().cmp(a.id()))
            });
            Ok(all.iter().map(|d| row(d, now)).collect())
        })
        .await
        .map_err(|e| internal(format!("storage task failed: {e}")))?
    }

    pub(super) async fn deployment_detail(
        &self,
        id: &str,
    ) -> Result<DeploymentDetail, ConsoleError> {
        let api = self.deploy()?.clone();
        let site = self.site.identity();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            let d = api.orchestrator.get(&id).map_err(deploy_err)?;
            let mut names = HashMap::new();
            for dev in d.deployment.devices.keys() {
                if let Ok(did) = dev.parse::<DeviceId>()
                    && let Ok(Some(r)) = registry::get(&api.store, did)
                {
                    names.insert(dev.clone(), r.hostname);
                }
            }
            Ok(detail(&d, &site.id, &names, outpost_storage::now_ms()))
        })
        .await
        .map_err(|e| internal(format!("storage task failed: {e}")))?
    }

    pub(super) async fn deployment_act(
        &self,
        v: &Viewer,
        id: &str,
        a: &DeploymentAction,
    ) -> Result<(), ConsoleError> {
        let api = self.deploy()?;
        let (route, input) = match a {
            DeploymentAction::Pause { note } => (MANAGE_ROUTE, Input::Pause { note: note.clone() }),
            DeploymentAction::Resume {
                retry_failed,
                force,
                patches,
            } => (
                MANAGE_ROUTE,
                Input::Resume {
                    retry_failed: *retry_failed,
                    force: *force,
                    patches: if patches.is_empty() {
                        None
                    } else {
                        Some(
                            patches
                                .iter()
                                .map(|p| {
                                    approvals::parse_patch(p).map_err(ConsoleError::BadRequest)
                                })
                                .collect::<Result<Vec<_>, _>>()?,
                        )
                    },
                },
            ),
            DeploymentAction::Abort { note } => (ABORT_ROUTE, Input::Abort { note: note.clone() }),
            DeploymentAction::Rollback { scope } => (
                MANAGE_ROUTE,
                Input::Rollback(match scope {
                    RollbackTarget::Deployment => RollbackScope::Deployment,
                    RollbackTarget::Stage(stage) => RollbackScope::Stage { stage: *stage },
                    RollbackTarget::Device(device) => RollbackScope::Device {
                        device: device.clone(),
                    },
                }),
            ),
        };
        Self::may(v, route)?;
        api.orchestrator
            .input(id, input, &v.name, outpost_storage::now_ms())
            .await
            .map_err(deploy_err)?;
        Ok(())
    }

    pub(super) async fn deployment_create(
        &self,
        v: &Viewer,
        req: &NewDeployment,
    ) -> Result<String, ConsoleError> {
        let api = self.deploy()?;
        Self::may(v, CREATE_ROUTE)?;
        let target = parse_target(&req.target)?;
        let patches = if req.patches.is_empty() {
            None
        } else {
            Some(
                req.patches
                    .iter()
                    .map(|p| approvals::parse_patch(p).map_err(ConsoleError::BadRequest))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let o: FormOptions = serde_json::from_value(serde_json::Value::Object(req.options.json()))
            .map_err(|e| ConsoleError::BadRequest(format!("deployment options: {e}")))?;
        let create = CreateRequest {
            id: None,
            target,
            patches,
            security_only: req.security_only,
            stages: o.stages,
            gate: o.gate,
            auto_rollback_failed_pct: o.auto_rollback_failed_pct,
            install_deadline_ms: o.install_deadline_ms,
            window: o.window,
            options: o.options,
            start: true,
        };
        let d = api
            .orchestrator
            .create(
                create,
                api.patches.as_ref(),
                &v.name,
                outpost_storage::now_ms(),
            )
            .await
            .map_err(deploy_err)?;
        Ok(d.id().to_string())
    }

    pub(super) async fn approvals_view(
        &self,
        device: Option<&str>,
    ) -> Result<ApprovalsView, ConsoleError> {
        let api = self.deploy()?.clone();
        let site = self.site.identity();
        self.site.fresh().await?;
        let page = self
            .site
            .index
            .query(
                &DeviceQuery {
                    limit: 1000,
                    ..Default::default()
                },
                &site,
            )
            .map_err(|e| internal(e.to_string()))?;
        let devices: Vec<(String, String)> = page
            .rows
            .iter()
            .map(|r| (r.device.clone(), r.hostname.clone()))
            .collect();
        let (customers, tags) = self.site.index.facets();
        let mut targets = vec![("all".to_string(), "all devices".to_string())];
        targets.extend(
            customers
                .iter()
                .map(|c| (format!("customer:{c}"), format!("customer {c}"))),
        );
        targets.extend(
            tags.iter()
                .map(|t| (format!("tag:{t}"), format!("tag {t}"))),
        );
        let chosen = match device {
            Some(d) => Some(
                d.parse::<DeviceId>()
                    .map_err(|_| ConsoleError::NotFound(format!("no device {d}")))?,
            ),
            None => None,
        };
        let hostname = chosen.and_then(|id| {
            let s = id.to_string();
            devices
                .iter()
                .find(|(d, _)| *d == s)
                .map(|(_, h)| h.clone())
        });
        tokio::task::spawn_blocking(move || {
            let rules = approvals::list(&api.store).map_err(approval_err)?;
            let device = match chosen {
                Some(id) => {
                    let d = approvals::decisions_with(
                        &api.store,
                        api.patches.as_ref(),
                        &rules,
                        id,
                        outpost_storage::now_ms(),
                    )
                    .map_err(approval_err)?;
                    Some(DeviceDecisions {
                        site_id: site.id.clone(),
                        device: d.device.clone(),
                        hostname: hostname.unwrap_or_else(|| d.device.clone()),
                        assessed: d.assessed,
                        rows: d
                            .decisions
                            .iter()
                            .map(|p| DecisionRow {
                                patch: p.patch.to_string(),
                                outcome: outcome(&p.decision.outcome).into(),
                                rule: p
                                    .decision
                                    .rule
                                    .as_ref()
                                    .map(|r| format!("{} ({})", r.id, r.scope)),
                                explanation: p.decision.explanation.clone(),
                            })
                            .collect(),
                        unnamed: d.unnamed,
                    })
                }
                None => None,
            };
            Ok(ApprovalsView {
                rules: rules.iter().map(rule_row).collect(),
                devices,
                device,
                targets,
                ..Default::default()
            })
        })
        .await
        .map_err(|e| internal(format!("storage task failed: {e}")))?
    }
}
