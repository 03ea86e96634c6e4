//! Staged rollouts, pure: a deployment's stage plan (deterministic device
//! selection) and the state machine that turns device results, technician
//! actions and ticks into actions for the orchestrator
//! ([`Deployment::step`]).
//!
//! Owns the deployment model (stored by the appliance, sent down from
//! central) and every decision of a rollout: which devices form each
//! stage, when a device is dispatched, when a stage's gate holds or fails,
//! when to roll back. Must not touch storage, sockets or the clock (`now`
//! is a parameter, Unix ms): the orchestrator persists the state after
//! each step, then applies the actions, and calls [`Deployment::recover`]
//! after a restart.
//!
//! # Stages
//!
//! Stages are cumulative percentages of the target (default 1 → 10 → 50 →
//! 100). The target devices are ordered once, devices tagged `pilot` first,
//! then by a stable hash of (deployment id, device id) — a pure function
//! of the id and the device set, so the same deployment always picks the
//! same devices ([`plan_stages`]). Stage k holds the devices from
//! ⌈p(k−1)·n/100⌉ to ⌈p(k)·n/100⌉ in that order; the first stage holds at
//! least one device. A stage can be empty (3 devices, 10 %): its gate holds
//! at once. The plan is computed at creation and stored with the state.
//!
//! # Gates
//!
//! A stage's gate counts only its devices that have had their install
//! window (they were dispatched); devices still waiting for theirs neither
//! count nor block promotion (they install when their window opens, in
//! whatever stage the deployment is then). With `finished` = counted
//! devices with a final result (failed, rolled back or timed out count as
//! failures), the gate **holds** when none is in flight, `finished` ≥
//! min(min_finished, stage size), succeeded·100 ≥ min_success_pct·finished,
//! and `soak_ms` has passed since the stage's last result. It **fails**
//! when even if every device of the stage not failed yet succeeded the
//! rate would stay below the minimum, or when nothing is in flight or
//! waiting and the rate is below it. A failed gate pauses the deployment
//! and notifies ([`Event::GateFailed`]); with `auto_rollback_failed_pct`
//! set, a stage whose failures reach that share of its finished devices
//! is rolled back (each dispatched device of the stage) and the deployment
//! pauses. Devices dispatched after their stage was promoted still count
//! for it: install failures among them that make an earlier stage's rate
//! unreachable pause the deployment too. Resume (optionally retrying
//! failed devices, optionally with new patch versions, optionally forcing
//! the gates of every stage reached) continues.
//!
//! # Crash safety
//!
//! Install commands are named `deployment/device/install/attempt`; an
//! attempt is dispatched by [`Deployment::step`] only from the pending or
//! waiting states, so a device that has a result is never sent a new
//! attempt unless a technician asks for a retry. [`Deployment::recover`]
//! re-emits the commands of devices dispatched but without any report yet
//! (the same ids: the agent runs a command id once).
//!
//! The patch versions are announced for prefetching ([`Action::Prefetch`])
//! before the first install of them is dispatched, so the site cache
//! fetches and pins them once, ahead of the windows.

mod machine;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use machine::*;

use crate::approval::PatchKey;

/// One target device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub device: String,
    /// Tagged `pilot`: picked first for the first stage.
    #[serde(default)]
    pub pilot: bool,
}

/// When a stage may be promoted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GateSpec {
    /// Minimum share of succeeded among finished devices, in percent
    /// (default 95).
    pub min_success_pct: u8,
    /// Minimum number of finished devices (default 1; capped at the
    /// stage's size).
    pub min_finished: u32,
    /// Time after the stage's last result before promotion (default 1 h).
    pub soak_ms: u64,
}

impl Default for GateSpec {
    fn default() -> GateSpec {
        GateSpec {
            min_success_pct: 95,
            min_finished: 1,
            soak_ms: 3_600_000,
        }
    }
}

/// The default stages (cumulative percentages).
pub const DEFAULT_STAGES: [u8; 4] = [1, 10, 50, 100];

/// A deployment as created by hand, by a schedule or by central.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeploymentSpec {
    /// Unique; seeds the device selection and names the commands.
    pub id: String,
    /// Exact versions to install.
    pub patches: Vec<PatchKey>,
    /// The resolved target devices.
    pub targets: Vec<Target>,
    /// Cumulative percentages, strictly increasing, ending at 100.
    #[serde(default = "default_stages")]
    pub stages: Vec<u8>,
    #[serde(default)]
    pub gate: GateSpec,
    /// Roll a stage back automatically once its failures reach this share
    /// (percent) of its finished devices; `None` (default): never, a
    /// failed gate only pauses.
    #[serde(default)]
    pub auto_rollback_failed_pct: Option<u8>,
    /// From dispatch to a final result (default 4 h): past it the device
    /// is failed ("no result").
    #[serde(default = "default_install_deadline")]
    pub install_deadline_ms: u64,
    /// From `reboot_pending` to the device's return (default 30 min).
    #[serde(default = "default_reboot_deadline")]
    pub reboot_deadline_ms: u64,
}

fn default_stages() -> Vec<u8> {
    DEFAULT_STAGES.to_vec()
}
fn default_install_deadline() -> u64 {
    4 * 3_600_000
}
fn default_reboot_deadline() -> u64 {
    30 * 60_000
}

impl DeploymentSpec {
    /// A spec with the defaults.
    pub fn new(id: &str, patches: Vec<PatchKey>, targets: Vec<Target>) -> DeploymentSpec {
        DeploymentSpec {
            id: id.to_string(),
            patches,
            targets,
            stages: default_stages(),
            gate: GateSpec::default(),
            auto_rollback_failed_pct: None,
            install_deadline_ms: default_install_deadline(),
            reboot_deadline_ms: default_reboot_deadline(),
        }
    }
}

/// Why a deployment cannot be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("deployment id must not be empty")]
    EmptyId,
    #[error("a deployment needs at least one approved patch")]
    NoPatches,
    #[error("a deployment needs at least one target device")]
    NoTargets,
    #[error("device {0:?} is targeted twice")]
    DuplicateDevice(String),
    #[error(
        "stages must be strictly increasing percentages from 1 to 100 ending at 100, got {0:?}"
    )]
    BadStages(Vec<u8>),
    #[error("min_success_pct must be at most 100, got {0}")]
    BadSuccessPct(u8),
    #[error("auto_rollback_failed_pct must be between 1 and 100, got {0}")]
    BadRollbackPct(u8),
    #[error("more than {max} target devices ({0})", max = MAX_TARGETS)]
    TooManyTargets(usize),
}

/// Bound on the target of one deployment.
pub const MAX_TARGETS: usize = 100_000;

/// FNV-1a 64 of (deployment id, 0xff, device id): the stable selection
/// order. Part of the stored semantics: changing it changes which devices
/// a re-planned deployment picks.
fn selection_hash(id: &str, device: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain([0xff]).chain(device.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The devices of each stage, in dispatch order. Validates the spec.
pub fn plan_stages(spec: &DeploymentSpec) -> Result<Vec<Vec<String>>, PlanError> {
    if spec.id.trim().is_empty() {
        return Err(PlanError::EmptyId);
    }
    if spec.patches.is_empty() {
        return Err(PlanError::NoPatches);
    }
    if spec.targets.is_empty() {
        return Err(PlanError::NoTargets);
    }
    if spec.targets.len() > MAX_TARGETS {
        return Err(PlanError::TooManyTargets(spec.targets.len()));
    }
    let s = &spec.stages;
    let increasing = s.windows(2).all(|w| w[0] < w[1]);
    if s.is_empty() || !increasing || s[0] == 0 || s.last() != Some(&100) {
        return Err(PlanError::BadStages(s.clone()));
    }
    if spec.gate.min_success_pct > 100 {
        return Err(PlanError::BadSuccessPct(spec.gate.min_success_pct));
    }
    if let Some(p) = spec.auto_rollback_failed_pct
        && (p == 0 || p > 100)
    {
        return Err(PlanError::BadRollbackPct(p));
    }
    let mut order: Vec<(bool, u64, &str)> = spec
        .targets
        .iter()
        .map(|t| {
            (
                !t.pilot,
                selection_hash(&spec.id, &t.device),
                t.device.as_str(),
            )
        })
        .collect();
    order.sort_unstable();
    let mut seen = std::collections::HashSet::with_capacity(order.len());
    for (_, _, d) in &order {
        if !seen.insert(*d) {
            return Err(PlanError::DuplicateDevice((*d).to_string()));
        }
    }
    let n = order.len();
    let mut stages = Vec::with_capacity(s.len());
    let mut from = 0usize;
    for (k, &pct) in s.iter().enumerate() {
        let mut to = (n * usize::from(pct)).div_ceil(100);
        if k == 0 {
            to = to.max(1);
        }
        let to = to.max(from).min(n);
        stages.push(
            order[from..to]
                .iter()
                .map(|(_, _, d)| (*d).to_string())
                .collect(),
        );
        from = to;
    }
    Ok(stages)
}
