//! The site's end of central's deployment downlink (uplink protocol 5):
//! applies the orders central sends (approve/decline, approval rules,
//! deployments and the actions on them) through the site's own
//! [`super::approvals`] and [`super::orchestrator`], exactly once, and
//! reports every deployment's progress back up, coalesced.
//!
//! Owns the table of applied orders ([`CENTRAL_ORDERS`]) and the adapter
//! task ([`run`]). Must not touch the approval rules or deployments but
//! through their public functions, nor the uplink stream (frames pass
//! through `outpost_uplink::downlink::SiteEnd`'s sender).
//!
//! Exactly once: an order's id is recorded here (with its answer) once it
//! is applied, and a redelivery is answered from the record. A deployment
//! created from central carries central's id, so even an order applied
//! but not yet recorded (a crash in between) cannot create it twice: the
//! orchestrator refuses a second creation of an id, which is taken as
//! done. A pause, resume, abort or rollback goes through
//! [`Orchestrator::input_order`], which writes the order's id in the same
//! write as the step it causes: its redelivery after such a crash steps
//! nothing and is answered `applied`. The deployment runs with the site's
//! orchestrator whatever becomes of the uplink.
//!
//! Progress: once a second, each deployment whose state is newer than
//! what central acknowledged, and that has no report in flight, goes up
//! whole ([`progress_of`]); deployments created at the site too (central
//! shows them read-only). Only the deployments the orchestrator stepped
//! since ([`Orchestrator::take_changed`]) and those not acknowledged yet
//! are read; every deployment is looked at once per stream.

use std::collections::HashMap;
use std::sync::Arc;

use outpost_patch::approval::{ApprovalRule, Verdict};
use outpost_patch::rollout::{Input, RollbackScope};
use outpost_storage::{Codec, Store, Table};
use outpost_uplink::deploy_link::{
    DECISIONS_INTERVAL_MS, DECISIONS_PER_FRAME, DecisionUp, DeployAck, DeployOrder,
    DeployOrderKind, DeployProgress, DeviceDecisions, MAX_DECISION_ROWS, MAX_DEPLOY_JSON_BYTES,
    PROGRESS_INTERVAL_MS,
};
use outpost_uplink::downlink::DownEvent;
use outpost_uplink::metrics::{ReasonLabel, UplinkMetrics};
use outpost_uplink::wire::{DEPLOY_PROTOCOL_VERSION, SiteFrame, TAGS_PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::api::{NoteBody, ResumeBody};
use super::approvals::{self, ApprovalError, MissingPatches};
use super::orchestrator::{CreateRequest, DeployError, Orchestrator, OrderResult};
use super::store::StoredDeployment;

/// Orders from central applied here: order id → [`AppliedOrder`].
pub const CENTRAL_ORDERS: Table = Table::new("central_deploy_orders").codec(Codec::Json);
pub const TABLES: &[Table] = &[CENTRAL_ORDERS];

/// A report in flight longer than this goes again (its answer was lost
/// with a stream that did not close).
const PROGRESS_RESEND_MS: u64 = 30_000;

/// The record of an applied (or refused) order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedOrder {
    pub id: String,
    pub kind: String,
    pub refused: Option<String>,
    pub at_ms: u64,
}

/// What applying an order came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied,
    Refused(String),
    /// Not applied now (a store failure): not answered, central sends it
    /// again.
    Retry(String),
}

/// What the adapter applies orders with.
#[derive(Clone)]
pub struct CentralDeploy {
    pub store: Store,
    pub patches: Arc<dyn MissingPatches>,
    pub orchestrator: Arc<Orchestrator>,
    pub metrics: UplinkMetrics,
    /// Called after a tag order changed tags (the alert engine reloads
    /// its scopes, as after the site API's `PUT /devices/{id}/tags`).
    pub on_tags: Option<Arc<dyn Fn() + Send + Sync>>,
}

fn approval_outcome(e: ApprovalError) -> Outcome {
    match e {
        ApprovalError::Store(e) => Outcome::Retry(e.to_string()),
        e => Outcome::Refused(e.to_string()),
    }
}

fn deploy_outcome(e: DeployError) -> Outcome {
    match e {
        DeployError::Store(e) => Outcome::Retry(e.to_string()),
        DeployError::Approvals(a) => approval_outcome(a),
        e => Outcome::Refused(e.to_string()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, Outcome> {
    serde_json::from_str(s).map_err(|e| Outcome::Refused(format!("{what}: {e}")))
}

impl CentralDeploy {
    /// Applies `o` once: a redelivery is answered from the record. `None`
    /// when it could not be applied now (no answer; central resends).
    pub async fn take(&self, o: &DeployOrder, now_ms: u64) -> Option<DeployAck> {
        self.metrics.deploy_orders.inc();
        match self
            .store
            .get::<AppliedOrder>(CENTRAL_ORDERS, o.id.as_bytes())
        {
            Ok(Some(rec)) => {
                self.metrics.deploy_orders_redelivered.inc();
                debug!(order = %o.id, "a deployment order delivered again: answered from its record");
                return Some(DeployAck {
                    id: o.id.clone(),
                    refused: rec.refused,
                });
            }
            Ok(None) => {}
            Err(e) => {
                self.metrics.deploy_order_store_failures.inc();
                warn!(order = %o.id, error = %e, "reading the applied deployment orders failed; central sends it again");
                return None;
            }
        }
        if let DeployOrderKind::SetTags {
            devices,
            add,
            remove,
        } = &o.kind
        {
            return self.set_tags(o, devices, add, remove, now_ms).await;
        }
        let outcome = self.apply(o, now_ms).await;
        let refused = match outcome {
            Outcome::Applied => None,
            Outcome::Refused(r) => Some(r),
            Outcome::Retry(e) => {
                self.metrics.deploy_order_store_failures.inc();
                warn!(order = %o.id, error = %e, "a deployment order could not be applied now; central sends it again");
                return None;
            }
        };
        let rec = AppliedOrder {
            id: o.id.clone(),
            kind: o.kind.label().into(),
            refused: refused.clone(),
            at_ms: now_ms,
        };
        if let Err(e) = self.store.put(CENTRAL_ORDERS, o.id.as_bytes(), &rec) {
            // Applied but not recorded: the redelivery applies it again
            // (a deployment's creation is then found by its id).
            self.metrics.deploy_order_store_failures.inc();
            warn!(order = %o.id, error = %e, "recording an applied deployment order failed");
            return None;
        }
        match &refused {
            None => {
                self.metrics.deploy_orders_applied.inc();
                info!(order = %o.id, kind = o.kind.label(), "deployment order from central applied");
            }
            Some(r) => {
                self.metrics
                    .deploy_order_refusals
                    .get_or_create(&ReasonLabel {
                        reason: o.kind.label().into(),
                    })
                    .inc();
                info!(order = %o.id, kind = o.kind.label(), reason = %r, "deployment order from central refused");
            }
        }
        Some(DeployAck {
            id: o.id.clone(),
            refused,
        })
    }

    /// Applies a tag order to all its devices or to none, writing the
    /// tags, one audit entry per device (actor `NAME@central`) and the
    /// order's record in one write: a redelivery finds the record (never
    /// applied twice). A refusal names each device that failed (unknown at
    /// the site, over the tag limit) or the bad tag, and is recorded too.
    async fn set_tags(
        &self,
        o: &DeployOrder,
        devices: &[String],
        add: &[String],
        remove: &[String],
        now_ms: u64,
    ) -> Option<DeployAck> {
        let store = self.store.clone();
        let (id, actor) = (o.id.clone(), o.actor.clone());
        let (devices, add, remove) = (devices.to_vec(), add.to_vec(), remove.to_vec());
        let res = tokio::task::spawn_blocking(move || {
            tag_write(&store, &id, &actor, &devices, &add, &remove, now_ms)
        })
        .await;
        let refused = match res {
            Ok(Ok(refused)) => refused,
            Ok(Err(e)) => {
                self.metrics.deploy_order_store_failures.inc();
                warn!(order = %o.id, error = %e, "a tag order could not be applied now; central sends it again");
                return None;
            }
            Err(e) => {
                warn!(order = %o.id, error = %e, "the tag order task failed; central sends it again");
                return None;
            }
        };
        match &refused {
            None => {
                self.metrics.deploy_orders_applied.inc();
                info!(order = %o.id, "tag order from central applied");
                if let Some(f) = &self.on_tags {
                    f();
                }
            }
            Some(r) => {
                self.metrics
                    .deploy_order_refusals
                    .get_or_create(&ReasonLabel {
                        reason: o.kind.label().into(),
                    })
                    .inc();
                info!(order = %o.id, reason = %r, "tag order from central refused");
            }
        }
        Some(DeployAck {
            id: o.id.clone(),
            refused,
        })
    }

    async fn apply(&self, o: &DeployOrder, now_ms: u64) -> Outcome {
        match self.apply_inner(o, now_ms).await {
            Ok(()) => Outcome::Applied,
            Err(out) => out,
        }
    }

    async fn apply_inner(&self, o: &DeployOrder, now_ms: u64) -> Result<(), Outcome> {
        let actor = o.actor.as_str();
        match &o.kind {
            DeployOrderKind::Verdict {
                patch,
                scope,
                verdict,
            } => {
                let patch = approvals::parse_patch(patch).map_err(Outcome::Refused)?;
                let verdict: Verdict = parse("verdict", &format!("{verdict:?}"))?;
                let tenant = approvals::site_tenant(&self.store).map_err(approval_outcome)?;
                let scope =
                    approvals::parse_scope(scope, tenant.as_deref()).map_err(Outcome::Refused)?;
                approvals::set_manual(
                    &self.store,
                    self.patches.as_ref(),
                    patch,
                    scope,
                    verdict,
                    actor,
                    now_ms,
                )
                .map(|_| ())
                .map_err(approval_outcome)
            }
            DeployOrderKind::AddRule { rule_json } => {
                let rule: ApprovalRule = parse("approval rule", rule_json)?;
                match approvals::add_rule(&self.store, &rule, actor, now_ms) {
                    Ok(()) => Ok(()),
                    // Added before (this order applied but not recorded):
                    // the same rule is done.
                    Err(ApprovalError::DuplicateRule(id))
                        if approvals::list(&self.store)
                            .map_err(approval_outcome)?
                            .contains(&rule) =>
                    {
                        debug!(rule = %id, "approval rule from central exists already");
                        Ok(())
                    }
                    Err(e) => Err(approval_outcome(e)),
                }
            }
            DeployOrderKind::RemoveRule { id } => {
                match approvals::remove_rule(&self.store, id, actor, now_ms) {
                    Ok(_) | Err(ApprovalError::UnknownRule(_)) => Ok(()),
                    Err(e) => Err(approval_outcome(e)),
                }
            }
            DeployOrderKind::CreateDeployment { request_json } => {
                let mut req: CreateRequest = parse("deployment request", request_json)?;
                req.start = true;
                let Some(id) = req.id.clone() else {
                    return Err(Outcome::Refused(
                        "a deployment from central needs its id".into(),
                    ));
                };
                if self.orchestrator.get(&id).is_ok() {
                    // Created before (applied, not recorded): never twice.
                    return Ok(());
                }
                self.orchestrator
                    .create(req, self.patches.as_ref(), actor, now_ms)
                    .await
                    .map(|_| ())
                    .map_err(deploy_outcome)
            }
            DeployOrderKind::Act {
                deployment,
                action,
                body_json,
            } => {
                let input = match action.as_str() {
                    "pause" => Input::Pause {
                        note: parse::<NoteBody>("pause", body_json)?.note,
                    },
                    "abort" => Input::Abort {
                        note: parse::<NoteBody>("abort", body_json)?.note,
                    },
                    "resume" => {
                        let b: ResumeBody = parse("resume", body_json)?;
                        Input::Resume {
                            retry_failed: b.retry_failed,
                            force: b.force,
                            patches: b.patches,
                        }
                    }
                    "rollback" => Input::Rollback(parse::<RollbackScope>("rollback", body_json)?),
                    a => return Err(Outcome::Refused(format!("unknown action {a:?}"))),
                };
                match self
                    .orchestrator
                    .input_order(deployment, input, actor, now_ms, &o.id)
                    .await
                {
                    Ok(OrderResult::Applied) => Ok(()),
                    Ok(OrderResult::AlreadyApplied { refused: None }) => {
                        self.metrics.deploy_orders_redelivered.inc();
                        Ok(())
                    }
                    Ok(OrderResult::AlreadyApplied { refused: Some(r) }) => {
                        self.metrics.deploy_orders_redelivered.inc();
                        Err(Outcome::Refused(r))
                    }
                    Err(e) => Err(deploy_outcome(e)),
                }
            }
            // Taken before (`CentralDeploy::set_tags`: one write with its record).
            DeployOrderKind::SetTags { .. } => {
                Err(Outcome::Retry("a tag order goes through set_tags".into()))
            }
        }
    }
}

/// Checks and writes a tag order in one write (tags, audit, the order's
/// record): `Ok(None)` applied, `Ok(Some(reason))` refused (recorded; the
/// reason names each failing device), `Err` not written (central resends).
pub fn tag_write(
    store: &Store,
    order: &str,
    actor: &str,
    devices: &[String],
    add: &[String],
    remove: &[String],
    now_ms: u64,
) -> Result<Option<String>, outpost_storage::StorageError> {
    use outpost_storage::registry::{self, AUDIT, DEVICE_TAGS};
    use outpost_uplink::deploy_link::{MAX_TAGS_PER_DEVICE, apply_tags, check_tag};
    let mut problems: Vec<String> = Vec::new();
    for t in add.iter().chain(remove) {
        if let Err(e) = check_tag(t) {
            problems.push(e);
        }
    }
    let mut changes: Vec<(outpost_proto::DeviceId, Vec<String>)> = Vec::new();
    if problems.is_empty() {
        for d in devices {
            let Ok(id) = d.parse::<outpost_proto::DeviceId>() else {
                problems.push(format!("device {d}: not a device id"));
                continue;
            };
            if registry::get(store, id)?.is_none() {
                problems.push(format!("device {d}: unknown at the site"));
                continue;
            }
            let tags = apply_tags(&registry::tags(store, id)?, add, remove);
            if tags.len() > MAX_TAGS_PER_DEVICE {
                problems.push(format!(
                    "device {d}: would have {} tags (at most {MAX_TAGS_PER_DEVICE})",
                    tags.len()
                ));
                continue;
            }
            changes.push((id, tags));
        }
    }
    let refused = (!problems.is_empty()).then(|| problems.join("; "));
    let mut b = store.batch();
    if refused.is_none() {
        for (id, tags) in &changes {
            b.put(DEVICE_TAGS, &outpost_storage::keys::device_key(*id), tags)?;
            b.put(
                AUDIT,
                &outpost_storage::keys::time_counter_key::<4>(&[], now_ms),
                &outpost_storage::model::AuditEntry {
                    at_ms: now_ms,
                    actor: actor.to_string(),
                    action: "device.tags".into(),
                    target: id.to_string(),
                    detail: format!("{} (order {order})", tags.join(",")),
                },
            )?;
        }
    }
    b.put(
        CENTRAL_ORDERS,
        order.as_bytes(),
        &AppliedOrder {
            id: order.to_string(),
            kind: "tags".into(),
            refused: refused.clone(),
            at_ms: now_ms,
        },
    )?;
    store.write(b)?;
    Ok(refused)
}

/// A device's approval decisions as central receives them (protocol 9):
/// rows that decline, defer or leave a patch unapproved first, so a cut
/// at [`MAX_DECISION_ROWS`] keeps what a technician looks for. Pure.
pub fn decisions_up(a: &approvals::DeviceApprovals, now_ms: u64) -> DeviceDecisions {
    use outpost_patch::approval::Outcome;
    let mut rows: Vec<DecisionUp> = a
        .decisions
        .iter()
        .map(|p| DecisionUp {
            patch: p.patch.to_string(),
            outcome: match &p.decision.outcome {
                Outcome::Approved => "approved",
                Outcome::Declined => "declined",
                Outcome::Deferred { .. } => "deferred",
                Outcome::Unapproved => "unapproved",
            }
            .into(),
            rule: p
                .decision
                .rule
                .as_ref()
                .map(|r| format!("{} ({})", r.id, r.scope)),
            explanation: p.decision.explanation.clone(),
        })
        .collect();
    rows.sort_by_key(|r| r.outcome == "approved");
    let truncated = rows.len().saturating_sub(MAX_DECISION_ROWS) as u32;
    rows.truncate(MAX_DECISION_ROWS);
    DeviceDecisions {
        device: a.device.clone(),
        computed_ms: now_ms,
        assessed: a.assessed,
        rows,
        unnamed: a.unnamed.clone(),
        truncated,
    }
}

/// Every non-revoked device's decisions at `now_ms` (rules read once).
pub fn all_decisions(
    store: &Store,
    patches: &dyn MissingPatches,
    now_ms: u64,
) -> Result<Vec<DeviceDecisions>, ApprovalError> {
    let rules = approvals::list(store)?;
    let mut ids = Vec::new();
    store
        .scan::<outpost_storage::model::DeviceRecord>(
            outpost_storage::registry::DEVICES,
            &[],
            None,
            |_, r| {
                if r.revoked_at_ms.is_none() {
                    ids.push(r.id);
                }
                true
            },
        )
        .map_err(ApprovalError::Store)?;
    ids.into_iter()
        .map(|id| {
            approvals::decisions_with(store, patches, &rules, id, now_ms)
                .map(|a| decisions_up(&a, now_ms))
        })
        .collect()
}

/// What went up of the devices' decisions on the current stream: the
/// hash of each device's last sent ([`DeviceDecisions::content_hash`]).
#[derive(Debug, Default)]
pub struct DecisionsTracker {
    sent: HashMap<String, u64>,
    last_ms: Option<u64>,
}

impl DecisionsTracker {
    /// A new stream: every device's decisions go up again at once.
    pub fn connected(&mut self) {
        self.sent.clear();
        self.last_ms = None;
    }

    /// Whether it is time to look again. Pure.
    pub fn due(&self, now_ms: u64) -> bool {
        self.last_ms
            .is_none_or(|l| now_ms.saturating_sub(l) >= DECISIONS_INTERVAL_MS)
    }

    /// The decisions that changed since sent (they count as sent now).
    pub fn changed(&mut self, all: Vec<DeviceDecisions>, now_ms: u64) -> Vec<DeviceDecisions> {
        self.last_ms = Some(now_ms);
        let mut out = Vec::new();
        for d in all {
            let h = d.content_hash();
            if self.sent.get(&d.device) != Some(&h) {
                self.sent.insert(d.device.clone(), h);
                out.push(d);
            }
        }
        out
    }
}

/// Sends the devices' decisions that changed (protocol 9 only).
async fn report_decisions(
    cd: &CentralDeploy,
    tracker: &mut DecisionsTracker,
    frames: &mpsc::Sender<SiteFrame>,
) -> Result<(), ()> {
    let now = outpost_storage::now_ms();
    if !tracker.due(now) {
        return Ok(());
    }
    let (store, patches) = (cd.store.clone(), cd.patches.clone());
    let all =
        match tokio::task::spawn_blocking(move || all_decisions(&store, patches.as_ref(), now))
            .await
        {
            Ok(Ok(all)) => all,
            Ok(Err(e)) => {
                warn!(error = %e, "reading the devices' approval decisions for central failed");
                tracker.last_ms = Some(now);
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
    let changed = tracker.changed(all, now);
    for chunk in changed.chunks(DECISIONS_PER_FRAME) {
        cd.metrics.decisions_sent.inc_by(chunk.len() as u64);
        frames
            .send(SiteFrame::ApprovalDecisions(chunk.to_vec()))
            .await
            .map_err(|_| ())?;
    }
    Ok(())
}

/// One device of a progress report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceProgress {
    pub device: String,
    pub stage: u32,
    pub state: String,
    pub attempt: u32,
    pub reason: Option<String>,
}

/// The progress view sent to central (JSON in [`DeployProgress`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgressView {
    pub summary: super::api::DeploymentSummary,
    pub stages: Vec<super::api::StageView>,
    pub devices: Vec<DeviceProgress>,
    /// Who did what to it at the site (`NAME@central` for central's
    /// orders): `super::api::deployment_audit`.
    #[serde(default)]
    pub audit: Vec<outpost_storage::model::AuditEntry>,
}

/// The report of `sd` at `now_ms` (devices beyond the size bound are left
/// out, failed ones kept first).
pub fn progress_of(sd: &StoredDeployment, now_ms: u64) -> DeployProgress {
    progress_with_audit(sd, Vec::new(), now_ms)
}

/// [`progress_of`] with the deployment's audit trail at the site.
pub fn progress_with_audit(
    sd: &StoredDeployment,
    audit: Vec<outpost_storage::model::AuditEntry>,
    now_ms: u64,
) -> DeployProgress {
    let view = super::api::view(sd.clone(), now_ms);
    let mut devices: Vec<DeviceProgress> = sd
        .deployment
        .devices
        .iter()
        .map(|(id, r)| DeviceProgress {
            device: id.clone(),
            stage: r.stage,
            state: r.state.as_str().to_string(),
            attempt: r.attempt,
            reason: r.reason.clone(),
        })
        .collect();
    let mut p = ProgressView {
        summary: view.summary,
        stages: view.stages,
        devices: Vec::new(),
        audit,
    };
    // Failures first, so a bound cuts the quiet ones.
    devices.sort_by_key(|d| d.reason.is_none());
    p.devices = devices;
    let mut json = serde_json::to_string(&p).unwrap_or_default();
    while json.len() > MAX_DEPLOY_JSON_BYTES && !p.devices.is_empty() {
        let keep = p.devices.len() / 2;
        p.devices.truncate(keep);
        json = serde_json::to_string(&p).unwrap_or_default();
    }
    DeployProgress {
        deployment: sd.id().to_string(),
        updated_at_ms: sd.updated_at_ms,
        from_central: sd.created_by.ends_with("@central"),
        view_json: json,
    }
}

/// What the adapter tracks of progress on the current stream.
#[derive(Debug, Default)]
pub struct ProgressTracker {
    /// The newest state central acknowledged per deployment (kept across
    /// streams: central stored it durably).
    acked: HashMap<String, u64>,
    /// Reports in flight on this stream: (state time, sent at).
    in_flight: HashMap<String, (u64, u64)>,
    /// Deployments to look at: changed since, or not acknowledged yet.
    pending: std::collections::BTreeSet<String>,
    /// Look at every stored deployment at the next report (a new stream).
    rescan: bool,
    /// Deployments read whole by the reports (a figure for tests).
    pub reads: u64,
}

impl ProgressTracker {
    /// A new stream: nothing is in flight; every deployment is looked at
    /// once.
    pub fn connected(&mut self) {
        self.in_flight.clear();
        self.rescan = true;
    }

    /// Whether a deployment at state time `updated_at_ms` is due at `now_ms`. Pure.
    pub fn due(&self, id: &str, updated_at_ms: u64, now_ms: u64) -> bool {
        if self.acked.get(id).is_some_and(|a| *a >= updated_at_ms) {
            return false;
        }
        match self.in_flight.get(id) {
            Some((_, sent)) => now_ms.saturating_sub(*sent) >= PROGRESS_RESEND_MS,
            None => true,
        }
    }

    pub fn sent(&mut self, id: &str, updated_at_ms: u64, now_ms: u64) {
        self.in_flight
            .insert(id.to_string(), (updated_at_ms, now_ms));
    }

    pub fn acked(&mut self, id: &str, updated_at_ms: u64) {
        let a = self.acked.entry(id.to_string()).or_insert(0);
        *a = (*a).max(updated_at_ms);
        if self
            .in_flight
            .get(id)
            .is_some_and(|(u, _)| *u <= updated_at_ms)
        {
            self.in_flight.remove(id);
        }
    }
}

/// Runs the adapter until `shutdown`: orders from `events` (the command
/// adapter forwards deployment events here), frames up through `frames`.
pub async fn run(
    cd: CentralDeploy,
    mut events: mpsc::UnboundedReceiver<DownEvent>,
    frames: mpsc::Sender<SiteFrame>,
    shutdown: CancellationToken,
) {
    let mut on = false;
    let mut decisions_on = false;
    let mut decisions = DecisionsTracker::default();
    let mut progress = ProgressTracker::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(PROGRESS_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.recv() => {
                let Some(ev) = ev else { return };
                match ev {
                    DownEvent::Connected { protocol_version } => {
                        on = protocol_version >= DEPLOY_PROTOCOL_VERSION;
                        decisions_on = protocol_version >= TAGS_PROTOCOL_VERSION;
                        progress.connected();
                        decisions.connected();
                    }
                    DownEvent::Disconnected => {
                        on = false;
                        decisions_on = false;
                    }
                    DownEvent::DeployOrders(v) => {
                        for o in v {
                            if let Some(ack) = cd.take(&o, outpost_storage::now_ms()).await
                                && frames.send(SiteFrame::DeployAck(ack)).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                    DownEvent::DeployProgressAck(a) => progress.acked(&a.deployment, a.updated_at_ms),
                    _ => {}
                }
            }
            _ = tick.tick() => {
                if on && report(&cd, &mut progress, &frames).await.is_err() {
                    return;
                }
                if decisions_on && report_decisions(&cd, &mut decisions, &frames).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Sends the due progress reports: of the deployments the orchestrator
/// stepped since the last report and those still waiting for central's
/// acknowledgement (all of them once per stream).
async fn report(
    cd: &CentralDeploy,
    progress: &mut ProgressTracker,
    frames: &mpsc::Sender<SiteFrame>,
) -> Result<(), ()> {
    let now = outpost_storage::now_ms();
    let orch = cd.orchestrator.clone();
    let rescan = std::mem::take(&mut progress.rescan);
    let store = cd.store.clone();
    let found = tokio::task::spawn_blocking(move || {
        let changed = orch.take_changed();
        let all = if rescan {
            Some(super::store::summaries(&store)?)
        } else {
            None
        };
        Ok::<_, outpost_storage::StorageError>((changed, all))
    })
    .await;
    match found {
        Ok(Ok((changed, all))) => {
            progress.pending.extend(changed);
            if let Some(all) = all {
                progress
                    .pending
                    .extend(all.into_iter().map(|(id, _, _)| id));
            }
        }
        Ok(Err(e)) => {
            progress.rescan |= rescan;
            warn!(error = %e, "reading deployments for central failed");
            return Ok(());
        }
        Err(_) => {
            progress.rescan |= rescan;
            return Ok(());
        }
    }
    for p in progress_due(cd, progress, now).await {
        progress.sent(&p.deployment, p.updated_at_ms, now);
        cd.metrics.deploy_progress_sent.inc();
        frames
            .send(SiteFrame::DeployProgress(p))
            .await
            .map_err(|_| ())?;
    }
    Ok(())
}

/// The reports due among the pending deployments; drops from the pending
/// set those central holds (or that no longer exist).
async fn progress_due(
    cd: &CentralDeploy,
    progress: &mut ProgressTracker,
    now: u64,
) -> Vec<DeployProgress> {
    let ids: Vec<String> = progress.pending.iter().cloned().collect();
    let mut out = Vec::new();
    for id in ids {
        if progress
            .in_flight
            .get(&id)
            .is_some_and(|(_, sent)| now.saturating_sub(*sent) < PROGRESS_RESEND_MS)
        {
            // Waits for its answer.
            continue;
        }
        if let Some(a) = progress.acked.get(&id).copied() {
            // The cheap check of its state's time first (no device read).
            let state: Option<super::store::DeploymentState> = cd
                .store
                .get(super::store::DEPLOYMENT_STATE, id.as_bytes())
                .ok()
                .flatten();
            if state.is_some_and(|st| st.updated_at_ms <= a) {
                progress.pending.remove(&id);
                continue;
            }
        }
        let orch = cd.orchestrator.clone();
        let id2 = id.clone();
        let sd = match tokio::task::spawn_blocking(move || orch.get(&id2)).await {
            Ok(Ok(sd)) => sd,
            Ok(Err(DeployError::NotFound(_))) => {
                progress.pending.remove(&id);
                continue;
            }
            Ok(Err(e)) => {
                warn!(deployment = %id, error = %e, "reading a deployment for central failed");
                continue;
            }
            Err(_) => continue,
        };
        progress.reads += 1;
        if progress
            .acked
            .get(&id)
            .is_some_and(|a| *a >= sd.updated_at_ms)
        {
            progress.pending.remove(&id);
            continue;
        }
        if progress.due(&id, sd.updated_at_ms, now) {
            let (store, d) = (cd.store.clone(), sd.clone());
            let audit = match tokio::task::spawn_blocking(move || {
                super::api::deployment_audit(&store, &d)
            })
            .await
            {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    warn!(deployment = %id, error = %e, "reading a deployment's audit trail for central failed");
                    Vec::new()
                }
                Err(_) => Vec::new(),
            };
            out.push(progress_with_audit(&sd, audit, now));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::approvals::tests::{FakePatches, enroll, missing, open_store};
    use crate::deploy::orchestrator::{InstallOptions, SiteEnv};

    fn central_deploy(dir: &std::path::Path) -> CentralDeploy {
        let store = open_store(dir);
        let d = enroll(&store, 1, "dental", &[]);
        let fake = Arc::new(FakePatches::default());
        fake.0
            .lock()
            .unwrap()
            .insert(d, vec![missing("openssl", "3.0.1-1", "3.0.2-1", true)]);
        let patches: Arc<dyn MissingPatches> = fake;
        let orchestrator = Arc::new(Orchestrator::new(
            store.clone(),
            Arc::new(crate::deploy::NoDeviceLink),
            Arc::new(SiteEnv {
                store: store.clone(),
                patches: patches.clone(),
                alerts: None,
                cache: Default::default(),
            }),
            Arc::new(crate::metrics::Metrics::new()),
            InstallOptions::default(),
        ));
        CentralDeploy {
            store,
            patches,
            orchestrator,
            metrics: UplinkMetrics::default(),
            on_tags: None,
        }
    }

    fn order(id: &str, kind: DeployOrderKind) -> DeployOrder {
        DeployOrder {
            id: id.into(),
            actor: "ann@central".into(),
            kind,
        }
    }

    /// A tag order from central is applied to all its devices in one
    /// write with its id (audited per device as `NAME@central`), and a
    /// redelivery is answered from the record without touching the tags
    /// again (a change made at the site since stays). An unknown device or
    /// a bad tag refuses the whole order, naming each, and changes nothing.
    #[tokio::test]
    async fn a_tag_order_is_applied_once_to_all_its_devices_or_refused_naming_each_device() {
        let dir = tempfile::tempdir().unwrap();
        let mut cd = central_deploy(dir.path());
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        cd.on_tags = Some({
            let calls = calls.clone();
            Arc::new(move || {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
        });
        let d1 = outpost_proto::DeviceId(1);
        let d2 = enroll(&cd.store, 2, "dental", &["db", "x"]);
        let tags = |id: &str, devices: &[outpost_proto::DeviceId], add: &[&str]| {
            order(
                id,
                DeployOrderKind::SetTags {
                    devices: devices.iter().map(|d| d.to_string()).collect(),
                    add: add.iter().map(|t| t.to_string()).collect(),
                    remove: vec!["x".into()],
                },
            )
        };
        let audit = |store: &Store| {
            outpost_storage::registry::audit_log(store, 0, u64::MAX, 100)
                .unwrap()
                .into_iter()
                .filter(|e| e.action == "device.tags")
                .collect::<Vec<_>>()
        };
        let t1 = tags("ord-t1", &[d1, d2], &["pci"]);
        assert_eq!(cd.take(&t1, 10).await.unwrap().refused, None);
        let reg = |d| outpost_storage::registry::tags(&cd.store, d).unwrap();
        assert_eq!(reg(d1), vec!["pci".to_string()]);
        assert_eq!(reg(d2), vec!["db".to_string(), "pci".to_string()]);
        let a = audit(&cd.store);
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|e| e.actor == "ann@central"), "{a:?}");
        assert!(a[0].detail.contains("order ord-t1"), "{a:?}");
        // Changed at the site since; the redelivery must not undo it.
        outpost_storage::registry::set_tags(&cd.store, d1, &[]).unwrap();
        assert_eq!(cd.take(&t1, 20).await.unwrap().refused, None);
        assert!(reg(d1).is_empty(), "applied twice");
        assert_eq!(audit(&cd.store).len(), 2);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);

        let unknown = outpost_proto::DeviceId(0xff);
        let t2 = tags("ord-t2", &[d1, unknown], &["y"]);
        for at in [30, 40] {
            let r = cd.take(&t2, at).await.unwrap().refused.unwrap();
            assert_eq!(r, "device 00000000000000ff: unknown at the site");
        }
        assert!(reg(d1).is_empty(), "a refused order changes nothing");
        let bad = cd
            .take(&tags("ord-t3", &[d1], &["a,b"]), 50)
            .await
            .unwrap()
            .refused
            .unwrap();
        assert!(bad.contains("no commas"), "{bad}");
        assert_eq!(audit(&cd.store).len(), 2);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// The devices' decisions go up with the rule that decided each
    /// patch, once per stream and then only when they change.
    #[test]
    fn decisions_go_up_with_the_deciding_rule_once_per_stream_and_again_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let cd = central_deploy(dir.path());
        let all = all_decisions(&cd.store, cd.patches.as_ref(), 10).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].rows[0].patch, "openssl=3.0.2-1");
        assert_eq!(all[0].rows[0].outcome, "unapproved");
        let mut t = DecisionsTracker::default();
        assert!(t.due(10));
        assert_eq!(t.changed(all.clone(), 10).len(), 1);
        assert!(!t.due(10 + DECISIONS_INTERVAL_MS - 1));
        assert!(t.due(10 + DECISIONS_INTERVAL_MS));
        assert!(t.changed(all, 20).is_empty(), "unchanged: not sent again");
        approvals::set_manual(
            &cd.store,
            cd.patches.as_ref(),
            outpost_patch::approval::PatchKey::new("openssl", "3.0.2-1"),
            outpost_patch::approval::ApprovalScope::Tenant {
                tenant: "msp".into(),
            },
            outpost_patch::approval::Verdict::Approve,
            "ann",
            30,
        )
        .unwrap();
        let all = all_decisions(&cd.store, cd.patches.as_ref(), 40).unwrap();
        let sent = t.changed(all.clone(), 40);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].rows[0].outcome, "approved");
        let rule = sent[0].rows[0].rule.clone().unwrap();
        assert!(rule.contains("tenant"), "{rule}");
        t.connected();
        assert_eq!(t.changed(all, 50).len(), 1, "a new stream gets them all");
    }

    /// Central's approval and deployment are applied once: delivered
    /// again (a reconnect, a restart of either side) they are answered
    /// from the record; even a second order creating the same deployment
    /// id (its record lost) creates nothing; refusals carry the reason.
    #[tokio::test]
    async fn orders_delivered_again_are_applied_once_and_a_deployment_id_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let cd = central_deploy(dir.path());
        let approve = order(
            "ord-1",
            DeployOrderKind::Verdict {
                patch: "openssl=3.0.2-1".into(),
                scope: "tenant".into(),
                verdict: "approve".into(),
            },
        );
        for _ in 0..2 {
            let a = cd.take(&approve, 10).await.unwrap();
            assert_eq!(a.refused, None);
        }
        assert_eq!(approvals::list(&cd.store).unwrap().len(), 1);
        let create = |id: &str| {
            order(
                id,
                DeployOrderKind::CreateDeployment {
                    request_json: r#"{"id":"cdep-1","target":{"type":"all"}}"#.into(),
                },
            )
        };
        assert_eq!(cd.take(&create("ord-2"), 20).await.unwrap().refused, None);
        assert_eq!(cd.take(&create("ord-2"), 21).await.unwrap().refused, None);
        assert_eq!(cd.take(&create("ord-2b"), 22).await.unwrap().refused, None);
        let all = cd.orchestrator.list().unwrap();
        assert_eq!(all.len(), 1, "created once");
        assert_eq!(all[0].created_by, "ann@central");
        assert_eq!(cd.metrics.deploy_orders_redelivered.get(), 2);
        assert_eq!(cd.metrics.deploy_orders_applied.get(), 3);
        // An action on an unknown deployment: refused with the reason, and
        // the same answer on a redelivery.
        let pause = order(
            "ord-3",
            DeployOrderKind::Act {
                deployment: "cdep-nope".into(),
                action: "pause".into(),
                body_json: "{}".into(),
            },
        );
        let a = cd.take(&pause, 30).await.unwrap();
        assert!(a.refused.as_deref().unwrap().contains("cdep-nope"), "{a:?}");
        assert_eq!(cd.take(&pause, 31).await.unwrap(), a);
        // Nothing approved for a patch no device misses: refused.
        let a = cd
            .take(
                &order(
                    "ord-4",
                    DeployOrderKind::Verdict {
                        patch: "nope=1".into(),
                        scope: "tenant".into(),
                        verdict: "approve".into(),
                    },
                ),
                40,
            )
            .await
            .unwrap();
        assert!(a.refused.is_some());
        // Progress of the deployment: central's, with its devices.
        let p = progress_of(&all[0], 50);
        assert!(p.from_central);
        assert_eq!(p.deployment, "cdep-1");
        let v: serde_json::Value = serde_json::from_str(&p.view_json).unwrap();
        assert_eq!(v["summary"]["id"], "cdep-1");
        assert_eq!(v["devices"].as_array().unwrap().len(), 1);
    }

    fn act(id: &str, action: &str) -> DeployOrder {
        order(
            id,
            DeployOrderKind::Act {
                deployment: "cdep-1".into(),
                action: action.into(),
                body_json: "{}".into(),
            },
        )
    }

    /// The pause audited (one per step the order caused).
    fn pauses(store: &Store) -> usize {
        outpost_storage::registry::audit_log(store, 0, u64::MAX, 1000)
            .unwrap()
            .iter()
            .filter(|e| e.action == "deployment.pause")
            .count()
    }

    /// A pause applied at the site whose acknowledgement (and record) was
    /// lost in a crash is delivered again: it is recognised by its id,
    /// written with the step, so nothing is stepped twice and central is
    /// told `applied` (before: `refused`, "deployment is paused").
    #[tokio::test]
    async fn an_action_applied_but_not_acknowledged_before_a_crash_is_applied_once_and_acked_applied()
     {
        let dir = tempfile::tempdir().unwrap();
        let cd = central_deploy(dir.path());
        let approve = order(
            "ord-1",
            DeployOrderKind::Verdict {
                patch: "openssl=3.0.2-1".into(),
                scope: "tenant".into(),
                verdict: "approve".into(),
            },
        );
        assert_eq!(cd.take(&approve, 10).await.unwrap().refused, None);
        let create = order(
            "ord-2",
            DeployOrderKind::CreateDeployment {
                // The window stays closed (1970 starts on a Thursday):
                // nothing is dispatched, the deployment stays running.
                request_json: r#"{"id":"cdep-1","target":{"type":"all"},"window":{"days":["mon"],"start":"00:00","duration_minutes":1,"timezone":"UTC"}}"#
                    .into(),
            },
        );
        assert_eq!(cd.take(&create, 20).await.unwrap().refused, None);
        let pause = act("ord-3", "pause");
        assert_eq!(cd.take(&pause, 30).await.unwrap().refused, None);
        assert_eq!(pauses(&cd.store), 1);
        // The crash: the ack never left and the order's record is gone
        // (the site died between the step and recording the order).
        let mut b = cd.store.batch();
        b.delete(CENTRAL_ORDERS, b"ord-3").unwrap();
        cd.store.write(b).unwrap();
        // A restarted site (a new orchestrator over the same database).
        let restarted = CentralDeploy {
            orchestrator: Arc::new(Orchestrator::new(
                cd.store.clone(),
                Arc::new(crate::deploy::NoDeviceLink),
                Arc::new(SiteEnv {
                    store: cd.store.clone(),
                    patches: cd.patches.clone(),
                    alerts: None,
                    cache: Default::default(),
                }),
                Arc::new(crate::metrics::Metrics::new()),
                InstallOptions::default(),
            )),
            ..cd.clone()
        };
        let a = restarted.take(&pause, 40).await.unwrap();
        assert_eq!(a.refused, None, "acked applied");
        assert_eq!(pauses(&restarted.store), 1, "one step");
        // A new pause order is a new step: refused in the paused state.
        let again = restarted.take(&act("ord-4", "pause"), 50).await.unwrap();
        assert!(again.refused.unwrap().contains("not running"));
        // That refusal, redelivered after the same crash, keeps its answer.
        let mut b = cd.store.batch();
        b.delete(CENTRAL_ORDERS, b"ord-4").unwrap();
        cd.store.write(b).unwrap();
        let again2 = restarted.take(&act("ord-4", "pause"), 60).await.unwrap();
        assert!(again2.refused.unwrap().contains("not running"));
        // A resume goes through once.
        let resume = act("ord-5", "resume");
        assert_eq!(restarted.take(&resume, 70).await.unwrap().refused, None);
        let mut b = cd.store.batch();
        b.delete(CENTRAL_ORDERS, b"ord-5").unwrap();
        cd.store.write(b).unwrap();
        assert_eq!(restarted.take(&resume, 80).await.unwrap().refused, None);
        assert!(matches!(
            restarted
                .orchestrator
                .get("cdep-1")
                .unwrap()
                .deployment
                .phase,
            outpost_patch::rollout::Phase::Running { .. }
        ));
    }

    fn progress_frames(rx: &mut mpsc::Receiver<SiteFrame>) -> Vec<DeployProgress> {
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            if let SiteFrame::DeployProgress(p) = f {
                out.push(p);
            }
        }
        out
    }

    /// The progress loop reads every deployment once per stream, then only
    /// those the orchestrator stepped since (and those not acknowledged):
    /// an idle second reads none.
    #[tokio::test]
    async fn progress_reads_only_the_deployments_changed_since_the_last_report() {
        let dir = tempfile::tempdir().unwrap();
        let cd = central_deploy(dir.path());
        let approve = order(
            "ord-1",
            DeployOrderKind::Verdict {
                patch: "openssl=3.0.2-1".into(),
                scope: "tenant".into(),
                verdict: "approve".into(),
            },
        );
        assert_eq!(cd.take(&approve, 10).await.unwrap().refused, None);
        for (i, id) in ["cdep-1", "cdep-2", "cdep-3"].iter().enumerate() {
            let create = order(
                &format!("ord-c{i}"),
                DeployOrderKind::CreateDeployment {
                    request_json: format!(
                        r#"{{"id":"{id}","target":{{"type":"all"}},"window":{{"days":["mon"],"start":"00:00","duration_minutes":1,"timezone":"UTC"}}}}"#
                    ),
                },
            );
            assert_eq!(cd.take(&create, 20).await.unwrap().refused, None);
        }
        let (tx, mut rx) = mpsc::channel(64);
        let mut p = ProgressTracker::default();
        p.connected();
        report(&cd, &mut p, &tx).await.unwrap();
        let sent = progress_frames(&mut rx);
        assert_eq!(sent.len(), 3, "a new stream: every deployment goes up");
        assert_eq!(p.reads, 3);
        for f in &sent {
            p.acked(&f.deployment, f.updated_at_ms);
        }
        report(&cd, &mut p, &tx).await.unwrap();
        report(&cd, &mut p, &tx).await.unwrap();
        assert!(progress_frames(&mut rx).is_empty());
        assert_eq!(p.reads, 3, "idle seconds read no deployment");
        // One deployment is stepped: only it is read and sent.
        cd.orchestrator
            .input("cdep-2", Input::Pause { note: "x".into() }, "tech", 100)
            .await
            .unwrap();
        report(&cd, &mut p, &tx).await.unwrap();
        let sent = progress_frames(&mut rx);
        assert_eq!(
            sent.iter()
                .map(|f| f.deployment.as_str())
                .collect::<Vec<_>>(),
            vec!["cdep-2"]
        );
        assert_eq!(sent[0].updated_at_ms, 100);
        assert_eq!(p.reads, 4);
        // In flight: not read again until answered (or 30 s pass).
        report(&cd, &mut p, &tx).await.unwrap();
        assert_eq!(p.reads, 4);
        p.acked("cdep-2", 100);
        report(&cd, &mut p, &tx).await.unwrap();
        assert!(progress_frames(&mut rx).is_empty());
        assert_eq!(p.reads, 4);
        // A new stream looks at all again (central may have lost nothing:
        // the acknowledged ones are not sent).
        p.connected();
        report(&cd, &mut p, &tx).await.unwrap();
        assert!(progress_frames(&mut rx).is_empty());
    }

    #[test]
    fn progress_goes_up_when_newer_than_acknowledged_one_in_flight_and_again_after_30_s() {
        let mut t = ProgressTracker::default();
        assert!(t.due("d", 5, 0));
        t.sent("d", 5, 0);
        assert!(!t.due("d", 6, 1_000), "one in flight");
        assert!(t.due("d", 6, PROGRESS_RESEND_MS), "its answer was lost");
        t.acked("d", 5);
        assert!(t.due("d", 6, 1_000));
        assert!(!t.due("d", 5, 1_000), "central holds it");
        t.sent("d", 6, 1_000);
        t.connected();
        assert!(t.due("d", 6, 1_001), "a new stream: sent again");
        t.acked("d", 6);
        assert!(!t.due("d", 6, 2_000));
    }
}
