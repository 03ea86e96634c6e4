//! The device link: the [`Installer`] the orchestrator reaches devices
//! through, over the command service (an install or rollback is the
//! built-in command `InstallPatches` / `RollbackPatches` under the id
//! [`command_id`] of its key, so queueing a key twice queues one
//! command), and the way back: the agents' `PatchStatus` records
//! (`patch_status_in`, stored by ingest) assembled from their parts,
//! decoded, kept (the latest status per command, table
//! `deploy_device_commands`) and handed to the [`StatusSink`]. A command
//! that ends without a final status (refused, expired, timed out,
//! interrupted, failed to start, cancelled, or an agent that never said)
//! gets a synthesized final `failed` status with the reason, after a
//! grace period for a status still on its way ([`synthesize`], pure).
//!
//! Statuses reach the sink at least once (the sink is called before the
//! inbox entries are deleted): the orchestrator treats a repeated status
//! of a command as one. Owns `deploy_device_commands` and the drain of
//! `patch_status_in`; must not touch deployments or approvals (the
//! orchestrator's) nor the command service's tables.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_patch::install::wire::{
    CANCELLED_REASON_PREFIX, DeviceStatus, InstallRequest, MAX_PLAIN_BYTES, Phase, REQUEST_FORMAT,
    RollbackRequest, STATUS_FORMAT,
};
use outpost_proto::codec;
use outpost_proto::command::{BuiltinAction, CommandKind, CommandSpec, Interpreter};
use outpost_proto::ids::{CommandId, DeviceId};
use outpost_proto::messages::{PartsGroup, PatchStatusRecord, next_parts_group};
use outpost_storage::ingest::PATCH_STATUS_IN;
use outpost_storage::{Store, Table};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Installer, LinkError, LinkFuture, StatusSink, command_id};
use crate::commands::model::{CommandRecord, CommandState};
use crate::commands::service::{CancelError, CommandService, CreateError};
use crate::metrics::labels::ReasonLabel;

/// `command id` → [`LinkedCommand`]: every install and rollback queued
/// through the link, with the latest status of its device.
pub const DEPLOY_DEVICE_COMMANDS: Table = Table::new("deploy_device_commands");

/// The device link's tables.
pub const TABLES: &[Table] = &[DEPLOY_DEVICE_COMMANDS];

/// Longest an install or rollback command may run on the agent (apt, a
/// reboot's scheduling, scripts).
pub const COMMAND_TIMEOUT_MS: u64 = 3 * 3600 * 1000;
/// How long a queued install waits for its offline device.
pub const COMMAND_EXPIRY_MS: u64 = 24 * 3600 * 1000;
/// How long after its command ended a final status may still arrive
/// before one is synthesized.
pub const DEFAULT_GRACE_MS: u64 = 120_000;

/// One command of the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedCommand {
    /// The rollout's key (`DEP/DEVICE/install/N`); empty when unknown.
    pub key: String,
    pub device: DeviceId,
    pub deployment: String,
    pub attempt: u32,
    pub rollback: bool,
    /// The device's latest status (or the synthesized final one).
    pub latest: Option<DeviceStatus>,
    /// When the link first saw the command ended (appliance clock, ms).
    pub ended_seen_ms: Option<u64>,
    /// The final status was synthesized by the link.
    pub synthesized: bool,
}

impl LinkedCommand {
    /// A final status (the device's or a synthesized one) is known.
    pub fn is_final(&self) -> bool {
        self.latest.as_ref().is_some_and(|s| s.phase.is_final())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

/// `outpost_deploy_device_statuses_total{phase}` and
/// `outpost_deploy_status_rejected_total{reason}`.
#[derive(Debug, Default)]
pub struct DeviceLinkMetrics {
    /// Statuses handed to the orchestrator, by phase (synthesized ones
    /// included).
    pub statuses: Family<PhaseLabel, Counter>,
    /// Status records refused, by reason (`unknown_format`, `malformed`,
    /// `incomplete`, `unknown_command`, `wrong_device`).
    pub rejected: Family<ReasonLabel, Counter>,
}

impl DeviceLinkMetrics {
    pub fn status(&self, phase: Phase) {
        self.statuses
            .get_or_create(&PhaseLabel {
                phase: phase.as_str().into(),
            })
            .inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Under `outpost_deploy_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("deploy");
        r.register(
            "device_statuses",
            "Device statuses of installs and rollbacks handed to the orchestrator, by phase",
            self.statuses.clone(),
        );
        r.register(
            "status_rejected",
            "Patch status records refused, by reason",
            self.rejected.clone(),
        );
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn delete_one(store: &Store, key: &[u8]) -> outpost_storage::error::Result<()> {
    let mut b = store.batch();
    b.delete(PATCH_STATUS_IN, key)?;
    store.write(b)
}

fn id_key(id: CommandId) -> [u8; 16] {
    id.0
}

/// The final status of a command that ended without one, if it is due:
/// the command is terminal, no final status is known, and either the
/// agent never recorded it or `grace_ms` passed since the link saw it
/// end (`ended_seen_ms`). An install whose command completed after its
/// `reboot_pending` status is not ended: the device reports again when
/// it is back (the orchestrator owns the reboot deadline). Pure.
pub fn synthesize(
    linked: &LinkedCommand,
    cmd: &CommandRecord,
    ended_seen_ms: u64,
    now_ms: u64,
    grace_ms: u64,
) -> Option<DeviceStatus> {
    if linked.is_final() || !cmd.state.is_terminal() {
        return None;
    }
    // An install that scheduled its reboot completes its command and waits
    // for the device's next start: its deadline is the orchestrator's.
    if cmd.state == CommandState::Completed
        && linked
            .latest
            .as_ref()
            .is_some_and(|s| s.phase == Phase::RebootPending)
    {
        return None;
    }
    if cmd.acked && now_ms < ended_seen_ms.saturating_add(grace_ms) {
        return None;
    }
    let what = if linked.rollback {
        "rollback"
    } else {
        "install"
    };
    let detail = match cmd.state {
        CommandState::Completed => "the agent reported no final status".to_string(),
        CommandState::Expired => "the device did not come online before it expired".into(),
        s => s.as_str().to_string(),
    };
    let reason = match &cmd.reason {
        // The orchestrator reads this prefix as a withdrawn command
        // (`rollout::Report::Cancelled`).
        _ if cmd.state == CommandState::Cancelled => format!(
            "{CANCELLED_REASON_PREFIX}: the {what} command was withdrawn before the device ran it"
        ),
        Some(r) => format!("the {what} command ended {detail}: {r}"),
        None => match cmd.exit_code {
            Some(c) if cmd.state != CommandState::Completed => {
                format!("the {what} command ended {detail} (exit {c}) without a final status")
            }
            _ => format!("the {what} command ended {detail} without a final status"),
        },
    };
    let mut status = linked.latest.clone().unwrap_or(DeviceStatus {
        command: cmd.id.to_string(),
        deployment: linked.deployment.clone(),
        attempt: linked.attempt,
        rollback: linked.rollback,
        phase: Phase::Failed,
        reason: None,
        changes: Vec::new(),
        kept: Vec::new(),
        skipped: Vec::new(),
        snapshot: None,
        boot_id: None,
        reboot_required: false,
        log_tail: String::new(),
        at_ms: now_ms,
    });
    status.phase = if linked.rollback {
        Phase::RollbackFailed
    } else {
        Phase::Failed
    };
    status.reason = Some(reason);
    status.at_ms = now_ms;
    Some(status)
}

/// The device link (cheap to clone).
#[derive(Clone)]
pub struct DeviceLink {
    inner: Arc<Inner>,
}

struct Inner {
    commands: CommandService,
    store: Store,
    metrics: Arc<crate::metrics::Metrics>,
    /// The orchestrator, once wired ([`DeviceLink::set_sink`]); statuses
    /// wait in the inbox until then.
    sink: Mutex<Option<Arc<dyn StatusSink>>>,
    /// Commands without a final status (loaded at start).
    open: Mutex<BTreeSet<CommandId>>,
    grace_ms: u64,
}

impl std::fmt::Debug for DeviceLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLink").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DeviceLink {
    /// Loads the commands still without a final status.
    pub fn open(
        commands: CommandService,
        store: Store,
        metrics: Arc<crate::metrics::Metrics>,
        grace_ms: u64,
    ) -> anyhow::Result<DeviceLink> {
        let mut open = BTreeSet::new();
        store.scan::<LinkedCommand>(DEPLOY_DEVICE_COMMANDS, &[], None, |k, v| {
            if !v.is_final()
                && let Ok(id) = <[u8; 16]>::try_from(k)
            {
                open.insert(CommandId(id));
            }
            true
        })?;
        Ok(DeviceLink {
            inner: Arc::new(Inner {
                commands,
                store,
                metrics,
                sink: Mutex::new(None),
                open: Mutex::new(open),
                grace_ms,
            }),
        })
    }

    /// What `outpost serve` wires: the link opened, its sink set, its
    /// worker started (polling every `poll`, and on every command change)
    /// until `stop`.
    pub fn start(
        commands: CommandService,
        store: Store,
        metrics: Arc<crate::metrics::Metrics>,
        sink: Arc<dyn StatusSink>,
        poll: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<(DeviceLink, tokio::task::JoinHandle<()>)> {
        let link = DeviceLink::open(commands, store, metrics, DEFAULT_GRACE_MS)?;
        link.set_sink(sink);
        let worker = link.spawn(poll, stop);
        Ok((link, worker))
    }

    pub fn set_sink(&self, sink: Arc<dyn StatusSink>) {
        *lock(&self.inner.sink) = Some(sink);
    }

    pub fn metrics(&self) -> &DeviceLinkMetrics {
        &self.inner.metrics.deploy_device
    }

    /// The stored state of a command key's command.
    pub fn get(&self, key: &str) -> outpost_storage::error::Result<Option<LinkedCommand>> {
        self.inner
            .store
            .get(DEPLOY_DEVICE_COMMANDS, &id_key(command_id(key)))
    }

    async fn queue(
        &self,
        device: DeviceId,
        key: &str,
        linked: LinkedCommand,
        action: BuiltinAction,
        requested_by: &str,
    ) -> Result<(), LinkError> {
        let id = command_id(key);
        let store = &self.inner.store;
        let known: Option<LinkedCommand> = store
            .get(DEPLOY_DEVICE_COMMANDS, &id_key(id))
            .map_err(|e| LinkError::Refused(format!("reading the link's table: {e}")))?;
        if known.is_none() {
            store
                .put(DEPLOY_DEVICE_COMMANDS, &id_key(id), &linked)
                .map_err(|e| LinkError::Refused(format!("storing the link's command: {e}")))?;
            lock(&self.inner.open).insert(id);
        }
        let spec = CommandSpec {
            kind: CommandKind::Builtin(action),
            interpreter: Interpreter::Sh,
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            run_as: None,
            timeout_ms: COMMAND_TIMEOUT_MS,
            expiry_ms: COMMAND_EXPIRY_MS,
            requested_by: requested_by.to_string(),
        };
        match self.inner.commands.create_with_id(id, device, spec).await {
            Ok(_) => Ok(()),
            Err(CreateError::UnknownDevice(d)) => Err(LinkError::UnknownDevice(d)),
            Err(CreateError::Stopped) => Err(LinkError::Stopped),
            Err(e) => Err(LinkError::Refused(e.to_string())),
        }
    }

    /// Drains `patch_status_in`: every device's complete statuses, oldest
    /// first, to the sink and the table. Returns the records consumed.
    /// Without a sink nothing is consumed.
    pub fn process_inbox(&self) -> anyhow::Result<usize> {
        let Some(sink) = lock(&self.inner.sink).clone() else {
            return Ok(0);
        };
        let store = &self.inner.store;
        let mut total = 0;
        let mut cursor: Vec<u8> = Vec::new();
        loop {
            let mut next = None;
            store.scan_raw(PATCH_STATUS_IN, &cursor, None, |k, _| {
                next = k
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(|b| DeviceId(u64::from_be_bytes(b)));
                Ok(false)
            })?;
            let Some(dev) = next else { break };
            let upper = dev.0.checked_add(1).map(|n| n.to_be_bytes().to_vec());
            let mut entries: Vec<(Vec<u8>, PatchStatusRecord)> = Vec::new();
            let mut undecodable: Vec<Vec<u8>> = Vec::new();
            store.scan_raw(
                PATCH_STATUS_IN,
                &dev.0.to_be_bytes(),
                upper.as_deref(),
                |k, v| {
                    match codec::decode::<PatchStatusRecord>(v) {
                        Ok(r) => entries.push((k.to_vec(), r)),
                        Err(_) => undecodable.push(k.to_vec()),
                    }
                    Ok(true)
                },
            )?;
            for k in undecodable {
                self.reject(dev, "malformed", "an undecodable patch status record");
                delete_one(store, &k)?;
                total += 1;
            }
            total += self.process_device(dev, &entries, sink.as_ref())?;
            match upper {
                Some(u) => cursor = u,
                None => break,
            }
        }
        Ok(total)
    }

    fn reject(&self, dev: DeviceId, reason: &str, what: &str) {
        self.inner.metrics.deploy_device.rejected(reason);
        warn!(device = %dev, reason, "patch status refused: {what}");
    }

    fn process_device(
        &self,
        dev: DeviceId,
        entries: &[(Vec<u8>, PatchStatusRecord)],
        sink: &dyn StatusSink,
    ) -> anyhow::Result<usize> {
        let store = &self.inner.store;
        let mut consumed = 0;
        let mut i = 0;
        while i < entries.len() {
            let first = &entries[i].1;
            let parts = match next_parts_group(&entries[i..], |(_, r)| (r.part, r.parts, r.format))
            {
                PartsGroup::Complete(n) => n,
                PartsGroup::Waiting => break, // The rest has not arrived yet.
                PartsGroup::Broken => {
                    self.reject(dev, "incomplete", "a part without the rest of its status");
                    delete_one(store, &entries[i].0)?;
                    consumed += 1;
                    i += 1;
                    continue;
                }
            };
            let group = &entries[i..i + parts];
            let payload: Vec<u8> = group
                .iter()
                .flat_map(|(_, r)| r.payload.iter().copied())
                .collect();
            let mut b = store.batch();
            if let Some((id, mut linked, status)) = self.accept(dev, first.format, &payload)? {
                self.inner.metrics.deploy_device.status(status.phase);
                sink.status(dev, &status);
                if status.phase.is_final() {
                    lock(&self.inner.open).remove(&id);
                }
                linked.latest = Some(status);
                linked.synthesized = false;
                b.put(DEPLOY_DEVICE_COMMANDS, &id_key(id), &linked)?;
            }
            for (k, _) in group {
                b.delete(PATCH_STATUS_IN, k)?;
            }
            store.write(b)?;
            consumed += parts;
            i += parts;
        }
        Ok(consumed)
    }

    /// A joined status, checked: its format, its encoding, and that its
    /// command is an install or rollback queued for this very device.
    fn accept(
        &self,
        dev: DeviceId,
        format: u16,
        payload: &[u8],
    ) -> anyhow::Result<Option<(CommandId, LinkedCommand, DeviceStatus)>> {
        if format != STATUS_FORMAT {
            self.reject(
                dev,
                "unknown_format",
                &format!("status format {format}, this appliance reads {STATUS_FORMAT}"),
            );
            return Ok(None);
        }
        let status: DeviceStatus = match codec::decode_compressed(payload, MAX_PLAIN_BYTES) {
            Ok(s) => s,
            Err(e) => {
                self.reject(dev, "malformed", &format!("undecodable status: {e}"));
                return Ok(None);
            }
        };
        let Ok(id) = status.command.parse::<CommandId>() else {
            self.reject(dev, "unknown_command", "a status naming no command id");
            return Ok(None);
        };
        let cmd = self.inner.commands.get(id)?;
        let is_patch = cmd.as_ref().is_some_and(|c| {
            matches!(
                c.spec.kind,
                CommandKind::Builtin(
                    BuiltinAction::InstallPatches { .. } | BuiltinAction::RollbackPatches { .. }
                )
            )
        });
        match &cmd {
            Some(c) if c.device != dev => {
                self.reject(dev, "wrong_device", "a status of another device's command");
                return Ok(None);
            }
            Some(_) if is_patch => {}
            _ => {
                self.reject(
                    dev,
                    "unknown_command",
                    "a status of no install or rollback command",
                );
                return Ok(None);
            }
        }
        let linked = self
            .inner
            .store
            .get::<LinkedCommand>(DEPLOY_DEVICE_COMMANDS, &id_key(id))?
            .unwrap_or(LinkedCommand {
                key: String::new(),
                device: dev,
                deployment: status.deployment.clone(),
                attempt: status.attempt,
                rollback: status.rollback,
                latest: None,
                ended_seen_ms: None,
                synthesized: false,
            });
        Ok(Some((id, linked, status)))
    }

    /// Synthesizes the final status of every open command that ended
    /// without one (see [`synthesize`]). Returns how many.
    pub fn check_commands(&self, now: u64) -> anyhow::Result<usize> {
        let Some(sink) = lock(&self.inner.sink).clone() else {
            return Ok(0);
        };
        let open: Vec<CommandId> = lock(&self.inner.open).iter().copied().collect();
        let store = &self.inner.store;
        let mut n = 0;
        for id in open {
            let Some(mut linked) =
                store.get::<LinkedCommand>(DEPLOY_DEVICE_COMMANDS, &id_key(id))?
            else {
                lock(&self.inner.open).remove(&id);
                continue;
            };
            if linked.is_final() {
                lock(&self.inner.open).remove(&id);
                continue;
            }
            let Some(cmd) = self.inner.commands.get(id)? else {
                continue; // Not queued yet (or the queueing failed).
            };
            if !cmd.state.is_terminal() {
                continue;
            }
            let seen = match linked.ended_seen_ms {
                Some(t) => t,
                None => {
                    linked.ended_seen_ms = Some(now);
                    store.put(DEPLOY_DEVICE_COMMANDS, &id_key(id), &linked)?;
                    now
                }
            };
            if let Some(status) = synthesize(&linked, &cmd, seen, now, self.inner.grace_ms) {
                info!(command = %id, reason = ?status.reason, "final status synthesized");
                self.inner.metrics.deploy_device.status(status.phase);
                sink.status(linked.device, &status);
                linked.latest = Some(status);
                linked.synthesized = true;
                store.put(DEPLOY_DEVICE_COMMANDS, &id_key(id), &linked)?;
                lock(&self.inner.open).remove(&id);
                n += 1;
            }
        }
        Ok(n)
    }

    /// The worker: drains the inbox and checks ended commands every
    /// `poll` and on every change of a command, until `stop`.
    pub fn spawn(
        &self,
        poll: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let link = self.clone();
        let mut changes = self.inner.commands.subscribe();
        tokio::spawn(async move {
            loop {
                let l = link.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let now = now_ms();
                    l.process_inbox()?;
                    l.check_commands(now)
                })
                .await;
                match r {
                    Ok(Err(e)) => warn!(error = %format!("{e:#}"), "device link pass failed"),
                    Err(e) => warn!(error = %e, "device link pass panicked"),
                    Ok(Ok(_)) => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = changes.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        })
    }
}

impl Installer for DeviceLink {
    fn install<'a>(
        &'a self,
        device: DeviceId,
        key: &'a str,
        request: &'a InstallRequest,
        requested_by: &'a str,
    ) -> LinkFuture<'a> {
        Box::pin(async move {
            let bytes =
                codec::encode_compressed(request).map_err(|e| LinkError::Encode(e.to_string()))?;
            let linked = LinkedCommand {
                key: key.to_string(),
                device,
                deployment: request.deployment.clone(),
                attempt: request.attempt,
                rollback: false,
                latest: None,
                ended_seen_ms: None,
                synthesized: false,
            };
            let action = BuiltinAction::InstallPatches {
                format: REQUEST_FORMAT,
                request: bytes,
            };
            self.queue(device, key, linked, action, requested_by).await
        })
    }

    fn rollback<'a>(
        &'a self,
        device: DeviceId,
        key: &'a str,
        request: &'a RollbackRequest,
        requested_by: &'a str,
    ) -> LinkFuture<'a> {
        Box::pin(async move {
            let bytes =
                codec::encode_compressed(request).map_err(|e| LinkError::Encode(e.to_string()))?;
            let linked = LinkedCommand {
                key: key.to_string(),
                device,
                deployment: request.deployment.clone(),
                attempt: request.attempt,
                rollback: true,
                latest: None,
                ended_seen_ms: None,
                synthesized: false,
            };
            let action = BuiltinAction::RollbackPatches {
                format: REQUEST_FORMAT,
                request: bytes,
            };
            self.queue(device, key, linked, action, requested_by).await
        })
    }

    fn cancel<'a>(&'a self, key: &'a str, requested_by: &'a str) -> LinkFuture<'a> {
        Box::pin(async move {
            match self
                .inner
                .commands
                .cancel(command_id(key), requested_by)
                .await
            {
                Ok(_) | Err(CancelError::NotFound(_)) | Err(CancelError::Finished(..)) => Ok(()),
                Err(CancelError::Stopped) => Err(LinkError::Stopped),
                Err(e) => Err(LinkError::Refused(e.to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests;
