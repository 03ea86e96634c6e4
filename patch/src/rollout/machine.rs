//! The deployment state machine: [`Deployment::step`] (state, input, the
//! devices' install windows, now → actions) and [`Deployment::recover`].
//! See the parent module for the rules.

use std::collections::{BTreeMap, BTreeSet};

use super::{DeploymentSpec, PlanError, plan_stages};
use crate::approval::PatchKey;

/// Where one device is in the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Its stage has not started.
    Pending,
    /// Its stage started; its install window (or a maintenance pause)
    /// holds it.
    WaitingForWindow,
    /// The install command was dispatched; no report yet.
    Queued,
    Downloading,
    Installing,
    RebootPending,
    Succeeded,
    Failed,
    /// The rollback command was dispatched.
    RollingBack,
    RolledBack,
    RollbackFailed,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::WaitingForWindow => "waiting_for_window",
            DeviceState::Queued => "queued",
            DeviceState::Downloading => "downloading",
            DeviceState::Installing => "installing",
            DeviceState::RebootPending => "reboot_pending",
            DeviceState::Succeeded => "succeeded",
            DeviceState::Failed => "failed",
            DeviceState::RollingBack => "rolling_back",
            DeviceState::RolledBack => "rolled_back",
            DeviceState::RollbackFailed => "rollback_failed",
        }
    }

    /// Not dispatched yet.
    pub fn is_undispatched(self) -> bool {
        matches!(self, DeviceState::Pending | DeviceState::WaitingForWindow)
    }

    /// An install is under way.
    pub fn is_installing(self) -> bool {
        matches!(
            self,
            DeviceState::Queued
                | DeviceState::Downloading
                | DeviceState::Installing
                | DeviceState::RebootPending
        )
    }

    /// Has a final result of its install (possibly rolled back since).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            DeviceState::Succeeded
                | DeviceState::Failed
                | DeviceState::RollingBack
                | DeviceState::RolledBack
                | DeviceState::RollbackFailed
        )
    }
}

/// One device of the deployment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceRecord {
    pub stage: u32,
    pub state: DeviceState,
    /// Install attempts dispatched (the command id's last part).
    pub attempt: u32,
    pub dispatched_at_ms: Option<u64>,
    /// When it reported `reboot_pending`.
    pub reboot_at_ms: Option<u64>,
    /// When its install got a final result.
    pub finished_at_ms: Option<u64>,
    /// Rollback attempts dispatched.
    pub rollbacks: u32,
    pub rollback_at_ms: Option<u64>,
    /// A rollback was asked for while its install was under way: it is
    /// dispatched when the install ends.
    pub rollback_requested: bool,
    /// Failed by a deadline (a late success is still accepted).
    pub timed_out: bool,
    /// Why it failed, or what the technician said.
    pub reason: Option<String>,
}

impl DeviceRecord {
    fn new(stage: u32) -> DeviceRecord {
        DeviceRecord {
            stage,
            state: DeviceState::Pending,
            attempt: 0,
            dispatched_at_ms: None,
            reboot_at_ms: None,
            finished_at_ms: None,
            rollbacks: 0,
            rollback_at_ms: None,
            rollback_requested: false,
            timed_out: false,
            reason: None,
        }
    }
}

/// What a rollback covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum RollbackScope {
    Device { device: String },
    Stage { stage: u32 },
    Deployment,
}

/// Why a deployment is paused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum PauseReason {
    Technician {
        note: String,
    },
    GateFailed {
        figures: GateFigures,
        /// Why, in one line (`1 of 1 devices failed: …`).
        why: String,
    },
    /// The stage was rolled back (automatically or by a technician).
    StageRolledBack,
}

/// A deployment's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Running {
        stage: u32,
    },
    Paused {
        stage: u32,
        reason: PauseReason,
    },
    Completed,
    Aborted {
        note: String,
    },
    /// `stage`: the stage rolled back (then the deployment pauses at
    /// `at`, the stage it had reached); `None`: the deployment's rollback,
    /// which ends in `rolled_back`.
    RollingBack {
        stage: Option<u32>,
        at: u32,
    },
    RolledBack,
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Running { .. } => "running",
            Phase::Paused { .. } => "paused",
            Phase::Completed => "completed",
            Phase::Aborted { .. } => "aborted",
            Phase::RollingBack { .. } => "rolling_back",
            Phase::RolledBack => "rolled_back",
        }
    }
}

/// A device's report (from the agent, or the appliance for reboots).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum Report {
    /// The queued install command was withdrawn before it started: after
    /// an abort's [`Action::CancelInstall`] the device is back to pending;
    /// otherwise (cancelled by hand) it failed.
    Cancelled,
    Downloading,
    Installing,
    RebootPending,
    Succeeded,
    Failed {
        reason: String,
    },
    RolledBack,
    RollbackFailed {
        reason: String,
    },
}

/// What [`Deployment::step`] reacts to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    Start,
    /// Time passed (windows, deadlines, soak).
    Tick,
    /// `attempt`: the install attempt the report is about (the install
    /// command id's last part; rollback reports carry the device's current
    /// install attempt too); a report of an older attempt is ignored.
    Report {
        device: String,
        attempt: u32,
        report: Report,
    },
    Pause {
        note: String,
    },
    /// `retry_failed`: failed and rolled-back devices of the started
    /// stages get a new attempt; `patches`: replaces the versions to
    /// install (a fixed version); `force`: the current stage's gate is
    /// overridden (promotion once nothing is in flight).
    Resume {
        retry_failed: bool,
        force: bool,
        patches: Option<Vec<PatchKey>>,
    },
    Abort {
        note: String,
    },
    Rollback(RollbackScope),
}

/// Notices for the audit trail and the alert channels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    GateFailed {
        stage: u32,
        figures: GateFigures,
        why: String,
    },
    AutoRollback {
        stage: u32,
        figures: GateFigures,
    },
    Paused {
        stage: u32,
    },
    Resumed {
        stage: u32,
        retried: u32,
        forced: bool,
    },
    Completed,
    Aborted,
    RolledBack {
        scope: RollbackScope,
    },
    DeviceFailed {
        device: String,
        reason: String,
    },
}

/// What the orchestrator must do, in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Fetch and pin these exact versions in the site cache (before any
    /// install of them is dispatched: at start, and when a resume
    /// replaces the versions).
    Prefetch {
        patches: Vec<PatchKey>,
    },
    DispatchInstall {
        device: String,
        command_id: String,
        attempt: u32,
        patches: Vec<PatchKey>,
    },
    /// Withdraw a queued install the agent has not reported on (abort).
    CancelInstall {
        device: String,
        command_id: String,
    },
    DispatchRollback {
        device: String,
        command_id: String,
    },
    /// Stage `stage` starts (the first, or after a promotion).
    StartStage {
        stage: u32,
        devices: u32,
    },
    /// `figures`: the gate figures of `from` that allowed it.
    PromoteStage {
        from: u32,
        to: u32,
        figures: GateFigures,
    },
    Notify(Event),
    /// A technician action refused in this state (the API answers 409).
    Rejected {
        reason: String,
    },
    /// A device report that changed nothing (stale, unknown device, out of
    /// order): counted by the orchestrator.
    Ignored {
        device: String,
        reason: String,
    },
}

/// A stage's gate figures (shown by `deployments show` and central).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GateFigures {
    pub stage: u32,
    /// Devices in the stage.
    pub devices: u32,
    /// Devices that have had their window (dispatched).
    pub counted: u32,
    pub succeeded: u32,
    /// Failed, rolled back, rollback failed or rolling back.
    pub failed: u32,
    pub in_flight: u32,
    /// Not dispatched yet (waiting for their window).
    pub waiting: u32,
    /// When the stage's last result came.
    pub last_result_ms: Option<u64>,
}

impl GateFigures {
    pub fn finished(&self) -> u32 {
        self.succeeded + self.failed
    }

    /// Succeeded / finished in percent (floor); `None` with nothing
    /// finished.
    pub fn success_pct(&self) -> Option<u32> {
        let f = u64::from(self.finished());
        (f > 0).then(|| (u64::from(self.succeeded) * 100 / f) as u32)
    }
}

/// A gate's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateStatus {
    Holds,
    /// Not decided yet (why).
    Waiting(String),
    Fails(String),
}

/// The devices' install windows (their weekly window and the maintenance
/// pauses, see [`crate::window::can_install`]): the orchestrator's
/// implementation resolves them per device.
pub trait Windows {
    fn can_install(&self, device: &str, now_ms: u64) -> bool;
}

impl<F: Fn(&str, u64) -> bool> Windows for F {
    fn can_install(&self, device: &str, now_ms: u64) -> bool {
        self(device, now_ms)
    }
}

/// Every device may install at any time.
pub struct AlwaysOpen;

impl Windows for AlwaysOpen {
    fn can_install(&self, _: &str, _: u64) -> bool {
        true
    }
}

/// A deployment's full state: what the orchestrator stores.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deployment {
    pub spec: DeploymentSpec,
    /// The stage plan, computed once at creation.
    pub stages: Vec<Vec<String>>,
    pub phase: Phase,
    pub devices: BTreeMap<String, DeviceRecord>,
    /// Stages whose gate a technician forced.
    pub forced: BTreeSet<u32>,
}

/// `deployment/device/install/attempt`.
pub fn install_command_id(deployment: &str, device: &str, attempt: u32) -> String {
    format!("{deployment}/{device}/install/{attempt}")
}

/// `deployment/device/rollback/n`.
pub fn rollback_command_id(deployment: &str, device: &str, n: u32) -> String {
    format!("{deployment}/{device}/rollback/{n}")
}

fn reject(out: &mut Vec<Action>, reason: impl Into<String>) {
    out.push(Action::Rejected {
        reason: reason.into(),
    });
}

impl Deployment {
    /// A new deployment in `pending` (validates the spec and plans the
    /// stages).
    pub fn new(spec: DeploymentSpec) -> Result<Deployment, PlanError> {
        let stages = plan_stages(&spec)?;
        let mut devices = BTreeMap::new();
        for (k, stage) in stages.iter().enumerate() {
            for d in stage {
                devices.insert(d.clone(), DeviceRecord::new(k as u32));
            }
        }
        Ok(Deployment {
            spec,
            stages,
            phase: Phase::Pending,
            devices,
            forced: BTreeSet::new(),
        })
    }

    /// The stage the deployment is at (running, paused or rolling back a
    /// stage).
    pub fn current_stage(&self) -> Option<u32> {
        match &self.phase {
            Phase::Running { stage } | Phase::Paused { stage, .. } => Some(*stage),
            Phase::RollingBack { at, .. } => Some(*at),
            _ => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self.phase,
            Phase::Completed | Phase::Aborted { .. } | Phase::RolledBack
        )
    }

    /// Figures of stage `k`.
    pub fn figures(&self, k: u32) -> GateFigures {
        let mut f = GateFigures {
            stage: k,
            ..Default::default()
        };
        let Some(stage) = self.stages.get(k as usize) else {
            return f;
        };
        for d in stage {
            let Some(r) = self.devices.get(d) else {
                continue;
            };
            f.devices += 1;
            if r.state.is_undispatched() {
                f.waiting += 1;
                continue;
            }
            f.counted += 1;
            if r.state.is_installing() {
                f.in_flight += 1;
            } else if r.state == DeviceState::Succeeded {
                f.succeeded += 1;
            } else {
                f.failed += 1;
            }
            if let Some(t) = r.finished_at_ms {
                f.last_result_ms = Some(f.last_result_ms.map_or(t, |l| l.max(t)));
            }
        }
        f
    }

    /// Stage `k`'s gate at `now_ms` (see the module documentation).
    pub fn gate(&self, k: u32, now_ms: u64) -> GateStatus {
        let f = self.figures(k);
        let g = &self.spec.gate;
        let min_pct = u64::from(g.min_success_pct);
        let rate_ok = |succ: u32, fin: u32| u64::from(succ) * 100 >= min_pct * u64::from(fin);
        // Best case: every device not failed yet succeeds.
        if f.failed > 0 && !rate_ok(f.devices - f.failed, f.devices) {
            return GateStatus::Fails(format!(
                "{} of {} devices failed: the success rate cannot reach {}%",
                f.failed, f.devices, g.min_success_pct
            ));
        }
        if f.in_flight > 0 {
            return GateStatus::Waiting(format!("{} installs in flight", f.in_flight));
        }
        let min_finished = g.min_finished.min(f.devices);
        if f.finished() < min_finished {
            return GateStatus::Waiting(format!(
                "{} of at least {} devices finished ({} waiting for their window)",
                f.finished(),
                min_finished,
                f.waiting
            ));
        }
        if !rate_ok(f.succeeded, f.finished()) {
            if f.waiting == 0 {
                return GateStatus::Fails(format!(
                    "success rate {}% below {}%",
                    f.success_pct().unwrap_or(0),
                    g.min_success_pct
                ));
            }
            return GateStatus::Waiting(format!(
                "success rate {}% below {}% with {} devices still waiting for their window",
                f.success_pct().unwrap_or(0),
                g.min_success_pct,
                f.waiting
            ));
        }
        if let Some(last) = f.last_result_ms {
            let until = last.saturating_add(g.soak_ms);
            if now_ms < until {
                return GateStatus::Waiting(format!("soaking until {until}"));
            }
        }
        GateStatus::Holds
    }

    /// The actions to re-apply after a restart from the stored state:
    /// the install (and rollback) commands dispatched without any report
    /// yet, with their original ids.
    pub fn recover(&self) -> Vec<Action> {
        let mut out = Vec::new();
        for (d, r) in &self.devices {
            match r.state {
                DeviceState::Queued => out.push(Action::DispatchInstall {
                    device: d.clone(),
                    command_id: install_command_id(&self.spec.id, d, r.attempt),
                    attempt: r.attempt,
                    patches: self.spec.patches.clone(),
                }),
                DeviceState::RollingBack => out.push(Action::DispatchRollback {
                    device: d.clone(),
                    command_id: rollback_command_id(&self.spec.id, d, r.rollbacks),
                }),
                _ => {}
            }
        }
        out
    }

    /// Applies one input at `now_ms` and returns what to do.
    pub fn step(&mut self, input: Input, windows: &dyn Windows, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Start => match self.phase {
                Phase::Pending => {
                    out.push(Action::Prefetch {
                        patches: self.spec.patches.clone(),
                    });
                    self.start_stage(0, &mut out)
                }
                _ => reject(
                    &mut out,
                    format!("deployment is {}, not pending", self.phase.name()),
                ),
            },
            Input::Tick => {}
            Input::Report {
                device,
                attempt,
                report,
            } => self.apply_report(&device, attempt, report, now_ms, &mut out),
            Input::Pause { note } => match self.phase {
                Phase::Running { stage } => {
                    self.phase = Phase::Paused {
                        stage,
                        reason: PauseReason::Technician { note },
                    };
                    out.push(Action::Notify(Event::Paused { stage }));
                }
                _ => reject(
                    &mut out,
                    format!("deployment is {}, not running", self.phase.name()),
                ),
            },
            Input::Resume {
                retry_failed,
                force,
                patches,
            } => self.resume(retry_failed, force, patches, &mut out),
            Input::Abort { note } => {
                if self.is_terminal() {
                    reject(
                        &mut out,
                        format!("deployment is already {}", self.phase.name()),
                    );
                } else {
                    for (d, r) in self.devices.iter_mut() {
                        if r.state == DeviceState::Queued {
                            // Stays queued until the agent confirms the
                            // withdrawal (`cancelled`) or reports that it
                            // had started after all.
                            out.push(Action::CancelInstall {
                                device: d.clone(),
                                command_id: install_command_id(&self.spec.id, d, r.attempt),
                            });
                        } else if r.state == DeviceState::WaitingForWindow {
                            r.state = DeviceState::Pending;
                        }
                    }
                    self.phase = Phase::Aborted { note };
                    out.push(Action::Notify(Event::Aborted));
                }
            }
            Input::Rollback(scope) => self.rollback(scope, now_ms, &mut out),
        }
        self.advance(windows, now_ms, &mut out);
        out
    }

    fn start_stage(&mut self, k: u32, out: &mut Vec<Action>) {
        self.phase = Phase::Running { stage: k };
        let devices = self.stages.get(k as usize).map_or(0, |s| s.len() as u32);
        out.push(Action::StartStage { stage: k, devices });
    }

    fn resume(
        &mut self,
        retry_failed: bool,
        force: bool,
        patches: Option<Vec<PatchKey>>,
        out: &mut Vec<Action>,
    ) {
        let Phase::Paused { stage, .. } = self.phase else {
            return reject(
                out,
                format!("deployment is {}, not paused", self.phase.name()),
            );
        };
        if let Some(p) = patches {
            if p.is_empty() {
                return reject(out, "resume with an empty patch list");
            }
            if p != self.spec.patches {
                out.push(Action::Prefetch { patches: p.clone() });
            }
            self.spec.patches = p;
        }
        let mut retried = 0;
        if retry_failed {
            for r in self.devices.values_mut() {
                let retry = matches!(r.state, DeviceState::Failed | DeviceState::RolledBack);
                if r.stage <= stage && retry && !r.rollback_requested {
                    r.state = DeviceState::Pending;
                    r.dispatched_at_ms = None;
                    r.reboot_at_ms = None;
                    r.finished_at_ms = None;
                    r.timed_out = false;
                    r.reason = None;
                    retried += 1;
                }
            }
        }
        if force {
            // The figures of every stage reached are accepted as they are
            // (a failure among an earlier stage's late devices paused it).
            self.forced.extend(0..=stage);
        }
        self.phase = Phase::Running { stage };
        out.push(Action::Notify(Event::Resumed {
            stage,
            retried,
            forced: force,
        }));
    }

    fn apply_report(
        &mut self,
        device: &str,
        attempt: u32,
        report: Report,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let ignore = |out: &mut Vec<Action>, reason: String| {
            out.push(Action::Ignored {
                device: device.to_string(),
                reason,
            })
        };
        let id = self.spec.id.clone();
        let aborted = matches!(self.phase, Phase::Aborted { .. });
        let Some(r) = self.devices.get_mut(device) else {
            return ignore(out, "not a target of this deployment".into());
        };
        if attempt != r.attempt || r.attempt == 0 {
            return ignore(
                out,
                format!(
                    "report for attempt {attempt}, current attempt {}",
                    r.attempt
                ),
            );
        }
        use DeviceState as S;
        let from = r.state;
        let next = match (&report, from) {
            // Withdrawn after an abort: never installed. Cancelled
            // otherwise (by hand): a failure, not re-sent by itself.
            (Report::Cancelled, S::Queued) if aborted => S::Pending,
            (Report::Cancelled, S::Queued) => S::Failed,
            (Report::Downloading, S::Queued) => S::Downloading,
            (Report::Installing, S::Queued | S::Downloading) => S::Installing,
            (Report::RebootPending, S::Queued | S::Downloading | S::Installing) => S::RebootPending,
            (Report::Succeeded, s) if s.is_installing() => S::Succeeded,
            // A device failed by a deadline that reports success after all.
            (Report::Succeeded, S::Failed) if r.timed_out => S::Succeeded,
            (Report::Failed { .. }, s) if s.is_installing() => S::Failed,
            (Report::RolledBack, S::RollingBack) => S::RolledBack,
            (Report::RollbackFailed { .. }, S::RollingBack) => S::RollbackFailed,
            _ => {
                return ignore(
                    out,
                    format!("{} report while {}", report_name(&report), from.as_str()),
                );
            }
        };
        r.state = next;
        match &report {
            Report::RebootPending => r.reboot_at_ms = Some(now_ms),
            Report::Cancelled if next == S::Pending => {
                r.dispatched_at_ms = None;
                r.rollback_requested = false;
                r.reason = Some("install cancelled before it started".into());
            }
            Report::Cancelled => {
                let reason = "install command cancelled before it started".to_string();
                r.finished_at_ms = Some(now_ms);
                r.reason = Some(reason.clone());
                out.push(Action::Notify(Event::DeviceFailed {
                    device: device.to_string(),
                    reason,
                }));
            }
            Report::Succeeded => {
                r.finished_at_ms = Some(now_ms);
                r.timed_out = false;
                r.reason = None;
            }
            Report::Failed { reason } => {
                r.finished_at_ms = Some(now_ms);
                r.reason = Some(reason.clone());
                out.push(Action::Notify(Event::DeviceFailed {
                    device: device.to_string(),
                    reason: reason.clone(),
                }));
            }
            Report::RollbackFailed { reason } => {
                r.reason = Some(format!("rollback failed: {reason}"))
            }
            _ => {}
        }
        if next.is_finished() && r.rollback_requested {
            dispatch_rollback(&id, device, r, now_ms, out);
        }
    }

    fn rollback(&mut self, scope: RollbackScope, now_ms: u64, out: &mut Vec<Action>) {
        if self.phase == Phase::RolledBack {
            return reject(out, "deployment is already rolled back");
        }
        let whole = !matches!(scope, RollbackScope::Device { .. });
        if whole && matches!(self.phase, Phase::RollingBack { .. }) {
            return reject(out, "a rollback is already under way");
        }
        let id = self.spec.id.clone();
        match &scope {
            RollbackScope::Device { device } => {
                let Some(r) = self.devices.get_mut(device) else {
                    return reject(
                        out,
                        format!("device {device} is not a target of this deployment"),
                    );
                };
                match r.state {
                    s if s.is_undispatched() => {
                        reject(out, format!("nothing was installed on {device}"))
                    }
                    DeviceState::RollingBack | DeviceState::RolledBack => {
                        reject(out, format!("{device} is already {}", r.state.as_str()))
                    }
                    _ => {
                        request_rollback(&id, device, r, now_ms, out);
                    }
                }
            }
            RollbackScope::Stage { stage } => {
                let Some(devs) = self.stages.get(*stage as usize) else {
                    return reject(out, format!("no stage {stage}"));
                };
                if self.is_terminal() {
                    return reject(
                        out,
                        format!(
                            "deployment is {}: roll back the whole deployment",
                            self.phase.name()
                        ),
                    );
                }
                let at = self.current_stage().unwrap_or(0);
                if *stage > at || self.phase == Phase::Pending {
                    return reject(out, format!("stage {stage} has not started"));
                }
                for d in devs.clone() {
                    if let Some(r) = self.devices.get_mut(&d) {
                        request_rollback(&id, &d, r, now_ms, out);
                    }
                }
                self.phase = Phase::RollingBack {
                    stage: Some(*stage),
                    at,
                };
            }
            RollbackScope::Deployment => {
                if self.phase == Phase::Pending {
                    return reject(out, "deployment has not started");
                }
                for (d, r) in self.devices.iter_mut() {
                    if r.state == DeviceState::WaitingForWindow {
                        r.state = DeviceState::Pending;
                    }
                    request_rollback(&id, d, r, now_ms, out);
                }
                let at = self.current_stage().unwrap_or(0);
                self.phase = Phase::RollingBack { stage: None, at };
            }
        }
    }

    /// Deadlines, dispatches, gates, promotions and the end of rollbacks.
    fn advance(&mut self, windows: &dyn Windows, now_ms: u64, out: &mut Vec<Action>) {
        self.deadlines(now_ms, out);
        // Promotions may chain through empty stages; bounded by the stages.
        for _ in 0..=self.stages.len() {
            match self.phase.clone() {
                Phase::Running { stage } => {
                    self.dispatch(stage, windows, now_ms, out);
                    if self.check_auto_rollback(stage, now_ms, out) {
                        continue;
                    }
                    if let Some((k, figures, why)) = self.earlier_stage_failing(stage) {
                        let why = format!("stage {}: {why}", k + 1);
                        self.phase = Phase::Paused {
                            stage,
                            reason: PauseReason::GateFailed {
                                figures: figures.clone(),
                                why: why.clone(),
                            },
                        };
                        out.push(Action::Notify(Event::GateFailed {
                            stage: k,
                            figures,
                            why,
                        }));
                        break;
                    }
                    let status = if self.forced.contains(&stage) {
                        if self.figures(stage).in_flight == 0 {
                            GateStatus::Holds
                        } else {
                            GateStatus::Waiting("in flight".into())
                        }
                    } else {
                        self.gate(stage, now_ms)
                    };
                    match status {
                        GateStatus::Fails(why) => {
                            let figures = self.figures(stage);
                            self.phase = Phase::Paused {
                                stage,
                                reason: PauseReason::GateFailed {
                                    figures: figures.clone(),
                                    why: why.clone(),
                                },
                            };
                            out.push(Action::Notify(Event::GateFailed {
                                stage,
                                figures,
                                why,
                            }));
                        }
                        GateStatus::Waiting(_) => {}
                        GateStatus::Holds => {
                            let next = stage + 1;
                            if (next as usize) < self.stages.len() {
                                out.push(Action::PromoteStage {
                                    from: stage,
                                    to: next,
                                    figures: self.figures(stage),
                                });
                                self.start_stage(next, out);
                                continue;
                            }
                            let all_done = self.devices.values().all(|r| r.state.is_finished());
                            if all_done {
                                self.phase = Phase::Completed;
                                out.push(Action::Notify(Event::Completed));
                            }
                        }
                    }
                }
                // Results keep coming while paused: the threshold still
                // rolls the stage back.
                Phase::Paused {
                    stage,
                    reason: PauseReason::GateFailed { .. } | PauseReason::Technician { .. },
                } if self.check_auto_rollback(stage, now_ms, out) => continue,
                Phase::RollingBack { stage, at } => {
                    let busy = self.devices.values().any(|r| {
                        let in_scope = stage.is_none_or(|k| r.stage == k);
                        in_scope
                            && (r.state == DeviceState::RollingBack
                                || (r.rollback_requested && r.state.is_installing()))
                    });
                    if !busy {
                        match stage {
                            Some(k) => {
                                self.phase = Phase::Paused {
                                    stage: at,
                                    reason: PauseReason::StageRolledBack,
                                };
                                out.push(Action::Notify(Event::RolledBack {
                                    scope: RollbackScope::Stage { stage: k },
                                }));
                            }
                            None => {
                                self.phase = Phase::RolledBack;
                                out.push(Action::Notify(Event::RolledBack {
                                    scope: RollbackScope::Deployment,
                                }));
                            }
                        }
                    }
                }
                _ => {}
            }
            break;
        }
    }

    fn deadlines(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let (install, reboot) = (self.spec.install_deadline_ms, self.spec.reboot_deadline_ms);
        let id = self.spec.id.clone();
        for (d, r) in self.devices.iter_mut() {
            let reason = match r.state {
                DeviceState::Queued | DeviceState::Downloading | DeviceState::Installing => r
                    .dispatched_at_ms
                    .filter(|t| now_ms >= t.saturating_add(install))
                    .map(|_| "no result within the install deadline".to_string()),
                DeviceState::RebootPending => r
                    .reboot_at_ms
                    .filter(|t| now_ms >= t.saturating_add(reboot))
                    .map(|_| "did not come back from its reboot within the deadline".to_string()),
                DeviceState::RollingBack => {
                    if r.rollback_at_ms
                        .is_some_and(|t| now_ms >= t.saturating_add(install))
                    {
                        r.state = DeviceState::RollbackFailed;
                        r.reason = Some("rollback: no result within the install deadline".into());
                    }
                    None
                }
                _ => None,
            };
            if let Some(reason) = reason {
                r.state = DeviceState::Failed;
                r.timed_out = true;
                r.finished_at_ms = Some(now_ms);
                r.reason = Some(reason.clone());
                out.push(Action::Notify(Event::DeviceFailed {
                    device: d.clone(),
                    reason,
                }));
                if r.rollback_requested {
                    dispatch_rollback(&id, d, r, now_ms, out);
                }
            }
        }
    }

    /// Dispatches every undispatched device of the started stages whose
    /// window is open.
    fn dispatch(&mut self, stage: u32, windows: &dyn Windows, now_ms: u64, out: &mut Vec<Action>) {
        for k in 0..=stage {
            let Some(devs) = self.stages.get(k as usize) else {
                continue;
            };
            for d in devs {
                let Some(r) = self.devices.get_mut(d) else {
                    continue;
                };
                if !r.state.is_undispatched() {
                    continue;
                }
                if windows.can_install(d, now_ms) {
                    r.attempt += 1;
                    r.state = DeviceState::Queued;
                    r.dispatched_at_ms = Some(now_ms);
                    out.push(Action::DispatchInstall {
                        device: d.clone(),
                        command_id: install_command_id(&self.spec.id, d, r.attempt),
                        attempt: r.attempt,
                        patches: self.spec.patches.clone(),
                    });
                } else {
                    r.state = DeviceState::WaitingForWindow;
                }
            }
        }
    }

    /// Starts the stage's automatic rollback when its failures reach the
    /// threshold; true when it did.
    /// An earlier stage (not forced) whose install failures — of devices
    /// dispatched after it was promoted, when their window opened — make
    /// its success rate unreachable: the gate it passed would fail now.
    /// Only install failures count here (a device rolled back by hand
    /// afterwards does not pause the deployment).
    fn earlier_stage_failing(&self, stage: u32) -> Option<(u32, GateFigures, String)> {
        let min_pct = u64::from(self.spec.gate.min_success_pct);
        for k in 0..stage {
            if self.forced.contains(&k) {
                continue;
            }
            let failed = self.stages.get(k as usize).map_or(0, |devs| {
                devs.iter()
                    .filter(|d| {
                        self.devices
                            .get(*d)
                            .is_some_and(|r| r.state == DeviceState::Failed)
                    })
                    .count() as u32
            });
            let f = self.figures(k);
            if failed > 0 && u64::from(f.devices - failed) * 100 < min_pct * u64::from(f.devices) {
                let why = format!(
                    "{failed} of {} devices failed, counting those dispatched after it was promoted: the success rate cannot reach {}%",
                    f.devices, self.spec.gate.min_success_pct
                );
                return Some((k, f, why));
            }
        }
        None
    }

    fn check_auto_rollback(&mut self, stage: u32, now_ms: u64, out: &mut Vec<Action>) -> bool {
        let Some(pct) = self.spec.auto_rollback_failed_pct else {
            return false;
        };
        if self.forced.contains(&stage) {
            return false;
        }
        let f = self.figures(stage);
        let min_finished = self.spec.gate.min_finished.min(f.devices).max(1);
        if f.failed == 0
            || f.finished() < min_finished
            || u64::from(f.failed) * 100 < u64::from(pct) * u64::from(f.finished())
        {
            return false;
        }
        out.push(Action::Notify(Event::AutoRollback { stage, figures: f }));
        self.rollback(RollbackScope::Stage { stage }, now_ms, out);
        true
    }
}

fn report_name(r: &Report) -> &'static str {
    match r {
        Report::Cancelled => "cancelled",
        Report::Downloading => "downloading",
        Report::Installing => "installing",
        Report::RebootPending => "reboot_pending",
        Report::Succeeded => "succeeded",
        Report::Failed { .. } => "failed",
        Report::RolledBack => "rolled_back",
        Report::RollbackFailed { .. } => "rollback_failed",
    }
}

/// Rolls a device back now if its install has ended, or once it ends.
fn request_rollback(
    id: &str,
    device: &str,
    r: &mut DeviceRecord,
    now_ms: u64,
    out: &mut Vec<Action>,
) {
    match r.state {
        DeviceState::Succeeded | DeviceState::Failed | DeviceState::RollbackFailed => {
            dispatch_rollback(id, device, r, now_ms, out)
        }
        s if s.is_installing() => r.rollback_requested = true,
        _ => {}
    }
}

fn dispatch_rollback(
    id: &str,
    device: &str,
    r: &mut DeviceRecord,
    now_ms: u64,
    out: &mut Vec<Action>,
) {
    r.rollback_requested = false;
    r.rollbacks += 1;
    r.rollback_at_ms = Some(now_ms);
    r.state = DeviceState::RollingBack;
    out.push(Action::DispatchRollback {
        device: device.to_string(),
        command_id: rollback_command_id(id, device, r.rollbacks),
    });
}
