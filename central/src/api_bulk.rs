//! Central's bulk runs over HTTP — `POST/GET /api/v1/commands/bulk`,
//! `GET /api/v1/commands/bulk/{id}`, `POST /api/v1/commands/bulk/{id}/cancel`
//! — and the release pump ([`pump_site`], [`pump_all`]) that hands held
//! members to their site as slots free (after a create, and from the 1-s
//! sweep).
//!
//! The rules (targets, release, summary) are [`crate::bulk`]; each member
//! is an ordinary command of central's ([`crate::commands`]), so delivery,
//! expiry, output and cancel are theirs. Roles: technicians create and
//! cancel, every role reads; a run is visible to a caller who sees every
//! member's customer; targets never reach outside the caller's scope.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use outpost_proto::command::{
    BuiltinAction, CommandKind, CommandSpec, DEFAULT_EXPIRY_MS, DEFAULT_TIMEOUT_MS, Interpreter,
};
use outpost_proto::ids::CommandId;
use outpost_proto::{SiteId, TenantId};
use outpost_web::{Json, Path, Query};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::Central;
use crate::api::{ApiError, one_site, require};
use crate::api_scripts::ScriptRef;
use crate::bulk::{
    self, BulkMember, BulkTarget, CentralBulk, MAX_CONCURRENCY, MAX_MEMBERS, SlotView, Summary,
};
use crate::commands::{AuditRow, CentralCommand, CentralCommandState, Change};
use crate::downlink::Down;
use crate::model::{DeviceRow, Principal, Role};
use crate::store::DeviceFilter;

fn internal(e: impl std::fmt::Display + 'static) -> ApiError {
    crate::api::internal_error(e)
}

/// One pump at a time (the API's and the sweep's), so a slot is never
/// handed out twice.
static PUMP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Body of `POST /api/v1/commands/bulk`: a target, then exactly one of a
/// command line, a script of central's library or a built-in action, with
/// the usual options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRequestBody {
    /// `{"devices": [{"site": S, "device": D}, ...]}`,
    /// `{"customer": C}`, `{"site": S}`, `{"tag": T}` or `"all"`.
    pub target: BulkTarget,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub script: Option<ScriptRef>,
    #[serde(default)]
    pub action: Option<BuiltinAction>,
    /// At most this many of the run's commands released to one site and
    /// unfinished at once (default 50).
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

/// One device of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BulkMemberView {
    pub site: SiteId,
    pub device: String,
    pub hostname: String,
    pub command: String,
    pub state: CentralCommandState,
    /// Waiting at central for a slot of its site.
    pub held: bool,
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
    /// Sites the run spans.
    pub sites: Vec<SiteId>,
    pub summary: Summary,
    /// Every device with its command (only in `GET .../bulk/{id}` and the
    /// answers to create and cancel).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<BulkMemberView>,
}

/// The view of `run` (members' records read now).
pub async fn bulk_view(
    c: &Central,
    run: &CentralBulk,
    members: bool,
) -> Result<BulkView, ApiError> {
    let ids: Vec<CommandId> = run.members.iter().map(|m| m.command).collect();
    let recs = c
        .store
        .commands_by_id(&run.tenant, &ids)
        .await
        .map_err(internal)?;
    let held: HashSet<CommandId> = if run.members.is_empty() {
        HashSet::new()
    } else {
        let sites: BTreeSet<&SiteId> = run.members.iter().map(|m| &m.site_id).collect();
        let mut h = HashSet::new();
        for s in sites {
            for (_, _, r, cmd) in c
                .store
                .held(Some((&run.tenant, s)))
                .await
                .map_err(internal)?
            {
                if r == run.id {
                    h.insert(cmd);
                }
            }
        }
        h
    };
    let mut devices = Vec::new();
    let mut states = Vec::with_capacity(run.members.len());
    for (m, rec) in run.members.iter().zip(&recs) {
        let state = rec
            .as_ref()
            .map_or(CentralCommandState::QueuedAtCentral, |r| r.state);
        let is_held = held.contains(&m.command);
        states.push((state, is_held));
        if members {
            devices.push(BulkMemberView {
                site: m.site_id.clone(),
                device: m.device.clone(),
                hostname: m.hostname.clone(),
                command: m.command.to_string(),
                state,
                held: is_held,
                exit_code: rec.as_ref().and_then(|r| r.exit_code),
                signal: rec.as_ref().and_then(|r| r.signal),
                reason: rec.as_ref().and_then(|r| r.reason.clone()),
            });
        }
    }
    let sites: BTreeSet<SiteId> = run.members.iter().map(|m| m.site_id.clone()).collect();
    Ok(BulkView {
        id: run.id.to_string(),
        target: run.target.clone(),
        command: run.command.clone(),
        concurrency: run.concurrency,
        created_ms: run.created_ms,
        created_by: run.created_by.clone(),
        cancelled_ms: run.cancelled.as_ref().map(|c| c.0),
        cancelled_by: run.cancelled.as_ref().map(|c| c.1.clone()),
        sites: sites.into_iter().collect(),
        summary: Summary::of(states),
        devices,
    })
}

/// Every device of the tenant matching `f` (all pages).
async fn all_devices(
    c: &Central,
    tenant: &TenantId,
    mut f: DeviceFilter,
) -> Result<Vec<DeviceRow>, ApiError> {
    let mut out = Vec::new();
    f.limit = 1000;
    loop {
        let page = c.store.devices(tenant, &f).await.map_err(internal)?;
        out.extend(page.items);
        if out.len() > MAX_MEMBERS {
            return Err(ApiError::BadRequest(format!(
                "the target has more than {MAX_MEMBERS} devices: split the run"
            )));
        }
        match page.next {
            Some(n) => f.after = Some(n),
            None => return Ok(out),
        }
    }
}

/// The devices `target` names, within `p`'s scope.
async fn resolve(
    c: &Arc<Central>,
    p: &Principal,
    target: &BulkTarget,
) -> Result<Vec<DeviceRow>, ApiError> {
    let scoped = DeviceFilter {
        customers_allowed: p.customers.clone(),
        ..Default::default()
    };
    let devices = match target {
        BulkTarget::Devices(list) => {
            if list.len() > MAX_MEMBERS {
                return Err(ApiError::BadRequest(format!(
                    "the target has more than {MAX_MEMBERS} devices: split the run"
                )));
            }
            let mut v = Vec::with_capacity(list.len());
            let mut seen = HashSet::new();
            for d in list {
                if !seen.insert((d.site.clone(), d.device.clone())) {
                    continue;
                }
                one_site(c, p, &d.site).await?;
                let dev = c
                    .store
                    .device(&p.tenant, &d.site, &d.device)
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| {
                        ApiError::NotFound(format!("no device {} at site {}", d.device, d.site))
                    })?;
                if dev.revoked {
                    return Err(ApiError::Conflict(format!(
                        "device {} of site {} is revoked: it takes no commands",
                        d.device, d.site
                    )));
                }
                v.push(dev);
            }
            return Ok(v);
        }
        BulkTarget::Customer(cu) => {
            if !p.sees_customer(cu) {
                return Err(ApiError::NotFound(format!("no customer {cu}")));
            }
            all_devices(
                c,
                &p.tenant,
                DeviceFilter {
                    customer: Some(cu.clone()),
                    ..scoped
                },
            )
            .await?
        }
        BulkTarget::Site(s) => {
            one_site(c, p, s).await?;
            all_devices(
                c,
                &p.tenant,
                DeviceFilter {
                    site_id: Some(s.clone()),
                    ..scoped
                },
            )
            .await?
        }
        BulkTarget::All => all_devices(c, &p.tenant, scoped).await?,
        BulkTarget::Tag(t) => {
            let t = t.trim();
            if t.is_empty() {
                return Err(ApiError::BadRequest("the tag target needs a tag".into()));
            }
            // The store's tag filter (the fleet index's tags) within the
            // caller's customers: a device of another customer with the
            // same tag is never a member.
            all_devices(
                c,
                &p.tenant,
                DeviceFilter {
                    tag: Some(t.to_string()),
                    ..scoped
                },
            )
            .await?
        }
    };
    Ok(devices.into_iter().filter(|d| !d.revoked).collect())
}

/// Creates a bulk run (the API's path).
pub async fn create_bulk(
    c: &Arc<Central>,
    p: &Principal,
    req: BulkRequestBody,
) -> Result<CentralBulk, ApiError> {
    require(p, Role::Technician)?;
    let concurrency = req.concurrency.unwrap_or(bulk::DEFAULT_CONCURRENCY);
    if concurrency == 0 || concurrency > MAX_CONCURRENCY {
        return Err(ApiError::BadRequest(format!(
            "concurrency {concurrency} is out of range (1 to {MAX_CONCURRENCY})"
        )));
    }
    let mut script = None;
    let (kind, interpreter, default_timeout) = match (req.command, req.script, req.action) {
        (Some(line), None, None) => (
            CommandKind::Shell { line },
            req.interpreter.unwrap_or_default(),
            DEFAULT_TIMEOUT_MS,
        ),
        (None, Some(r), None) => {
            let s = crate::api_scripts::visible_script(c, p, &r.name, r.version).await?;
            let out = (
                CommandKind::Script {
                    name: s.name.clone(),
                    version: s.version,
                    body: s.body.clone(),
                },
                s.interpreter,
                s.default_timeout_ms,
            );
            script = Some(s);
            out
        }
        (None, None, Some(BuiltinAction::RestartService { unit })) => (
            CommandKind::Builtin(BuiltinAction::RestartService { unit }),
            req.interpreter.unwrap_or_default(),
            DEFAULT_TIMEOUT_MS,
        ),
        (None, None, Some(_)) => {
            return Err(ApiError::BadRequest(
                "a bulk run from central takes a command, a script or restart_service".into(),
            ));
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
    if let Err(e) = spec.validate().and_then(|_| spec.encode().map(|_| ())) {
        return Err(ApiError::BadRequest(format!("invalid command: {e}")));
    }
    let devices = resolve(c, p, &req.target).await?;
    if devices.is_empty() {
        return Err(ApiError::NotFound(
            "no device matches the target (revoked devices are left out)".into(),
        ));
    }
    if let Some(s) = &script {
        for d in &devices {
            crate::scripts::runs_on(s, &d.customer).map_err(ApiError::BadRequest)?;
        }
    }
    let now = crate::now_ms();
    let id = CommandId::random();
    let mut cmds = Vec::with_capacity(devices.len());
    let mut members = Vec::with_capacity(devices.len());
    for d in &devices {
        let cmd = CentralCommand::new(
            CommandId::random(),
            p.tenant.clone(),
            d.site_id.clone(),
            d.customer.clone(),
            d.device.clone(),
            d.hostname.clone(),
            spec.clone(),
            p.name.clone(),
            now,
        );
        members.push(BulkMember {
            site_id: d.site_id.clone(),
            customer: d.customer.clone(),
            device: d.device.clone(),
            hostname: d.hostname.clone(),
            command: cmd.id,
        });
        cmds.push(cmd);
    }
    let run = CentralBulk {
        id,
        tenant: p.tenant.clone(),
        target: req.target,
        command: spec.summary(),
        concurrency,
        created_ms: now,
        created_by: p.name.clone(),
        cancelled: None,
        members,
    };
    let audit = AuditRow {
        at_ms: now,
        tenant: p.tenant.clone(),
        actor: p.name.clone(),
        action: "command.bulk".into(),
        target: format!("{} devices", cmds.len()),
        detail: format!("{} {}", run.id, run.command),
    };
    // Every member starts held; the pump releases each site's first slots.
    let held: Vec<CommandId> = cmds.iter().map(|x| x.id).collect();
    c.store
        .create_bulk(&run, &cmds, &held, &audit)
        .await
        .map_err(internal)?;
    c.metrics.commands_created.inc_by(cmds.len() as u64);
    info!(run = %run.id, devices = cmds.len(), "bulk run created at central");
    publish_run(c, &run);
    let sites: BTreeSet<SiteId> = run.members.iter().map(|m| m.site_id.clone()).collect();
    for s in sites {
        pump_site(c, &p.tenant, &s).await;
    }
    Ok(run)
}

/// Releases what slots allow of one site's held members (every run).
pub async fn pump_site(c: &Central, tenant: &TenantId, site: &SiteId) {
    let _g = PUMP.lock().await;
    pump_site_locked(c, tenant, site).await;
}

async fn pump_site_locked(c: &Central, tenant: &TenantId, site: &SiteId) {
    let held = match c.store.held(Some((tenant, site))).await {
        Ok(v) => v,
        Err(e) => {
            warn!(%site, error = %e, "reading held bulk members failed; the next sweep retries");
            return;
        }
    };
    let mut by_run: BTreeMap<CommandId, HashSet<CommandId>> = BTreeMap::new();
    for (_, _, r, cmd) in held {
        by_run.entry(r).or_default().insert(cmd);
    }
    for (run_id, held) in by_run {
        let run = match c.store.bulk(tenant, run_id).await {
            Ok(r) => r,
            Err(e) => {
                warn!(run = %run_id, error = %e, "reading a bulk run failed");
                continue;
            }
        };
        let (concurrency, cancelled, ids): (u32, bool, Vec<CommandId>) = match &run {
            Some(r) => (
                r.concurrency,
                r.cancelled.is_some(),
                r.members
                    .iter()
                    .filter(|m| m.site_id == *site)
                    .map(|m| m.command)
                    .collect(),
            ),
            // The run is gone: forget its holds.
            None => (0, true, held.iter().copied().collect()),
        };
        let recs = match c.store.commands_by_id(tenant, &ids).await {
            Ok(v) => v,
            Err(e) => {
                warn!(run = %run_id, error = %e, "reading bulk members failed");
                continue;
            }
        };
        let views: Vec<SlotView> = ids
            .iter()
            .zip(&recs)
            .map(|(id, rec)| SlotView::of(*id, held.contains(id), rec.as_ref()))
            .collect();
        let r = bulk::release(concurrency, cancelled, &views);
        if r.release.is_empty() && r.forget.is_empty() {
            continue;
        }
        let done: Vec<CommandId> = r.release.iter().chain(&r.forget).copied().collect();
        if let Err(e) = c.store.unhold(tenant, site, run_id, &done).await {
            warn!(run = %run_id, error = %e, "releasing bulk members failed; the next sweep retries");
            continue;
        }
        for id in &r.release {
            // Connected: down at once; otherwise it waits here like any
            // command (the next Welcome sends it).
            c.downlinks.push(tenant, site, Down::Command(*id));
        }
    }
}

/// Releases what slots allow at every site with held members (the 1-s
/// sweep).
pub async fn pump_all(c: &Central) {
    let held = match c.store.held(None).await {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "reading held bulk members failed");
            return;
        }
    };
    let sites: BTreeSet<(TenantId, SiteId)> = held.into_iter().map(|(t, s, _, _)| (t, s)).collect();
    let _g = PUMP.lock().await;
    for (t, s) in sites {
        pump_site_locked(c, &t, &s).await;
    }
}

/// Run `id` if `p` sees every member's customer, else 404.
pub async fn visible_bulk(
    c: &Arc<Central>,
    p: &Principal,
    id: &str,
) -> Result<CentralBulk, ApiError> {
    let not_found = || ApiError::NotFound(format!("no bulk run {id}"));
    let rid: CommandId = id.parse().map_err(|_| not_found())?;
    c.store
        .bulk(&p.tenant, rid)
        .await
        .map_err(internal)?
        .filter(|r| r.members.iter().all(|m| p.sees_customer(&m.customer)))
        .ok_or_else(not_found)
}

/// Cancels a run: nothing more is released, and every unfinished member
/// is cancelled (at central if not yet delivered, at its site otherwise).
pub async fn cancel_bulk(
    c: &Arc<Central>,
    p: &Principal,
    id: &str,
) -> Result<CentralBulk, ApiError> {
    let run = visible_bulk(c, p, id).await?;
    require(p, Role::Technician)?;
    let now = crate::now_ms();
    let audit = AuditRow {
        at_ms: now,
        tenant: p.tenant.clone(),
        actor: p.name.clone(),
        action: "command.bulk_cancel".into(),
        target: format!("{} devices", run.members.len()),
        detail: run.id.to_string(),
    };
    let run = c
        .store
        .cancel_bulk(&p.tenant, run.id, &p.name, now, audit)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no bulk run {id}")))?;
    for m in &run.members {
        match c
            .store
            .change_command(
                &p.tenant,
                m.command,
                Change::Cancel { by: p.name.clone() },
                now,
                None,
            )
            .await
        {
            Ok(Some((rec, o))) if o.send_cancel => {
                c.downlinks.push(
                    &p.tenant,
                    &rec.site_id,
                    Down::Cancel {
                        id: rec.id,
                        by: format!("{}@central", p.name),
                    },
                );
            }
            Ok(_) => {}
            Err(e) => warn!(command = %m.command, error = %e, "cancelling a bulk member failed"),
        }
    }
    publish_run(c, &run);
    let sites: BTreeSet<SiteId> = run.members.iter().map(|m| m.site_id.clone()).collect();
    for s in sites {
        pump_site(c, &p.tenant, &s).await;
    }
    Ok(run)
}

/// One live event per customer of the run (not one per member).
fn publish_run(c: &Central, run: &CentralBulk) {
    let customers: BTreeSet<&outpost_proto::CustomerId> =
        run.members.iter().map(|m| &m.customer).collect();
    for cu in customers {
        crate::console::publish_commands(&c.live, &run.tenant, cu);
    }
}

/// `POST /api/v1/commands/bulk` (201 with the run and its devices).
pub async fn create(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Json(req): Json<BulkRequestBody>,
) -> Result<(StatusCode, Json<BulkView>), ApiError> {
    let run = create_bulk(&c, &p, req).await?;
    Ok((StatusCode::CREATED, Json(bulk_view(&c, &run, true).await?)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkListQuery {
    pub limit: Option<usize>,
}

/// The runs `p` sees, newest first.
pub async fn list_bulks(
    c: &Arc<Central>,
    p: &Principal,
    limit: usize,
) -> Result<Vec<CentralBulk>, ApiError> {
    Ok(c.store
        .bulks(&p.tenant, 1000)
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|r| r.members.iter().all(|m| p.sees_customer(&m.customer)))
        .take(limit)
        .collect())
}

/// `GET /api/v1/commands/bulk`: runs newest first, with their summaries.
pub async fn list(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<BulkListQuery>,
) -> Result<Json<Vec<BulkView>>, ApiError> {
    let runs = list_bulks(&c, &p, q.limit.unwrap_or(50).clamp(1, 1000)).await?;
    let mut v = Vec::with_capacity(runs.len());
    for r in &runs {
        v.push(bulk_view(&c, r, false).await?);
    }
    Ok(Json(v))
}

/// `GET /api/v1/commands/bulk/{id}`: the run, its summary and devices.
pub async fn show(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<BulkView>, ApiError> {
    let run = visible_bulk(&c, &p, &id).await?;
    Ok(Json(bulk_view(&c, &run, true).await?))
}

/// `POST /api/v1/commands/bulk/{id}/cancel`.
pub async fn cancel(
    State(c): State<Arc<Central>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<BulkView>, ApiError> {
    let run = cancel_bulk(&c, &p, &id).await?;
    Ok(Json(bulk_view(&c, &run, true).await?))
}
