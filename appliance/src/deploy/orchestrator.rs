//! The deployment orchestrator: creates deployments (approved patches ×
//! a target), and for every input (start, a tick, a device status, a
//! technician action) loads the deployment, steps the rollout core with
//! `now`, **persists the new state, then applies** the actions: installs,
//! cancels and rollbacks through the [`Installer`] (idempotent on the
//! command key, so re-applying after a crash queues nothing twice),
//! notifications and prefetches through the [`DeployEnv`]. On start,
//! [`Orchestrator::recover`] re-applies what a crash may have cut short.
//!
//! Owns the loop and the mapping between the core's actions and the
//! device link. Must not decide (the core does), nor talk to agents
//! directly (the `Installer` does), nor store anything but through
//! [`super::store`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use outpost_patch::approval::PatchKey;
use outpost_patch::assess::MissingPatch;
use outpost_patch::install::BinaryTarget;
use outpost_patch::install::wire::{
    CANCELLED_REASON_PREFIX, DeviceStatus, InstallRequest, Phase, RebootPolicy, RollbackRequest,
};
use outpost_patch::rollout::{
    Action, Deployment, DeploymentSpec, Event, GateSpec, Input, Report, Target, install_command_id,
};
use outpost_patch::version::DebVersion;
use outpost_patch::window::SiteWindows;
use outpost_proto::DeviceId;
use outpost_storage::model::{AuditEntry, DeviceRecord};
use outpost_storage::{Store, registry};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::approvals::{self, MissingPatches};
use super::store::{self, DeployTarget, StoredDeployment};
use super::{Installer, LinkError, StatusSink};
use crate::metrics::Metrics;

/// Why a deployment request failed (the API maps these to 404/409/422).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("unknown deployment {0:?}")]
    NotFound(String),
    #[error("unknown device {0}")]
    UnknownDevice(String),
    /// The action is not possible in the deployment's state.
    #[error("{0}")]
    Conflict(String),
    /// Nothing to deploy, or a bad spec.
    #[error("{0}")]
    Refused(String),
    /// Bad input, e.g. an unknown script named in the options (400).
    #[error("{0}")]
    Invalid(String),
    #[error("the deployment store failed: {0}")]
    Store(#[from] outpost_storage::StorageError),
    #[error("{0}")]
    Approvals(#[from] approvals::ApprovalError),
}

/// The future a prefetch returns: bytes fetched into the cache. The
/// orchestrator spawns it (`'static`): downloads never hold its lock.
pub type PrefetchFuture = Pin<Box<dyn Future<Output = Result<u64, String>> + Send + 'static>>;

/// What the orchestrator needs from the rest of the site besides the
/// device link: install windows, alert channels, the LAN cache, and
/// the exact binaries of a patch on a device.
pub trait DeployEnv: Send + Sync {
    /// The install windows of the deployment's devices at `now_ms`.
    fn windows(&self, d: &StoredDeployment, now_ms: u64) -> SiteWindows;
    /// A gate failure, pause, rollback, completion… for the alert channels.
    fn notify(&self, d: &StoredDeployment, event: &Event);
    /// Fetch and pin these versions in the site cache (for the
    /// deployment: [`DeployEnv::release`] lets them go).
    fn prefetch(&self, deployment: &str, patches: &[PatchKey]) -> PrefetchFuture;
    /// The deployment ended (completed, aborted, rolled back): release
    /// the cache pins it holds. Idempotent.
    fn release(&self, deployment: &str);
    /// The deployment's alert levels (`deploy_gate_failed`, label = the
    /// deployment id, 1 raised / 0 lowered) for the alert engine: a
    /// built-in rule notifies its channels.
    fn alert_levels(&self, d: &StoredDeployment);
    /// The binaries to install on `device` for `patches`: only patches the
    /// device misses and that are approved for it now (a decline after
    /// creation holds), and the patches it still needs that cannot be
    /// installed as deployed.
    fn targets(&self, device: DeviceId, patches: &[PatchKey], now_ms: u64) -> DeviceTargets;
}

/// How installs are asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallOptions {
    /// The site cache as apt's proxy (`http://HOST:PORT`).
    pub proxy: Option<String>,
    pub reboot: RebootPolicy,
    pub min_free_root_bytes: u64,
    pub snapshot: bool,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            proxy: None,
            reboot: RebootPolicy::IfRequired,
            min_free_root_bytes: 500 * 1024 * 1024,
            snapshot: true,
        }
    }
}

/// `POST /api/v1/deployments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    /// Default: generated (`dep-` + 8 hex digits).
    #[serde(default)]
    pub id: Option<String>,
    pub target: DeployTarget,
    /// Only these (each must be approved on some target device); default:
    /// every patch approved on the target.
    #[serde(default)]
    pub patches: Option<Vec<PatchKey>>,
    /// Only security updates among the approved patches.
    #[serde(default)]
    pub security_only: bool,
    /// Cumulative percentages (default 1, 10, 50, 100).
    #[serde(default)]
    pub stages: Option<Vec<u8>>,
    #[serde(default)]
    pub gate: Option<GateSpec>,
    #[serde(default)]
    pub auto_rollback_failed_pct: Option<u8>,
    #[serde(default)]
    pub install_deadline_ms: Option<u64>,
    #[serde(default)]
    pub window: Option<outpost_patch::window::InstallWindow>,
    /// Reboot policy, pre/post-install scripts, snapshot (flat in the
    /// JSON; unset ones take `[deploy]`'s defaults).
    #[serde(flatten)]
    pub options: super::options::DeployOptions,
    /// Create without starting (`pending`; start with resume… not
    /// exposed: tests use it to cut between persist and apply).
    #[serde(default = "yes")]
    pub start: bool,
}

fn yes() -> bool {
    true
}

/// The orchestrator (share it in an `Arc`).
pub struct Orchestrator {
    store: Store,
    /// The device link: installs, rollbacks, cancels.
    installer: Arc<dyn Installer>,
    /// Windows, notifications, prefetch, per-device binaries.
    env: Arc<dyn DeployEnv>,
    metrics: Arc<Metrics>,
    options: InstallOptions,
    /// One input at a time: load, step, persist, apply.
    lock: tokio::sync::Mutex<()>,
    /// The deployments not finished, as last persisted: a step loads from
    /// here instead of decoding the deployment again, and writes only
    /// what changed against it (filled only from what was written or
    /// read back).
    cache: std::sync::Mutex<std::collections::HashMap<String, Cached>>,
    /// Deployments stepped since [`Orchestrator::take_changed`] last
    /// took them (the progress loop up to central).
    changed: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Every deployment's phase and alert mark count, read from the
    /// headers and state records once (first tick or gauge refresh) and
    /// kept by every write since: a tick steps the running ones and reads
    /// no other.
    index: std::sync::Mutex<Option<std::collections::HashMap<String, Indexed>>>,
}

/// What the orchestrator's tick and gauge need of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Indexed {
    phase: outpost_patch::rollout::Phase,
    /// Alert marks held (`None`: unknown, an old-layout record).
    marks: Option<u32>,
}

/// A deployment in the orchestrator's memory, with what is on disk of it
/// (a step writes the difference).
struct Cached {
    sd: Arc<StoredDeployment>,
    state: store::DeploymentState,
    /// The device records as written.
    written: std::collections::BTreeMap<String, outpost_patch::rollout::DeviceRecord>,
    /// The alert marks as written.
    marks: std::collections::BTreeMap<String, store::AlertMark>,
    /// The header's changing part as written.
    head: HeadMark,
    /// Read from the old layout: the next write writes it whole.
    legacy: bool,
}

/// What of a deployment's header the rollout core changes after creation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeadMark {
    phase: outpost_patch::rollout::Phase,
    forced: std::collections::BTreeSet<u32>,
    patches: Vec<PatchKey>,
}

impl HeadMark {
    fn of(sd: &StoredDeployment) -> HeadMark {
        HeadMark {
            phase: sd.deployment.phase.clone(),
            forced: sd.deployment.forced.clone(),
            patches: sd.deployment.spec.patches.clone(),
        }
    }
}

impl Cached {
    fn new(l: store::Loaded) -> Cached {
        Cached {
            written: l.sd.deployment.devices.clone(),
            marks: l.sd.alert_marks.clone(),
            head: HeadMark::of(&l.sd),
            legacy: l.legacy,
            sd: Arc::new(l.sd),
            state: l.state,
        }
    }

    /// What a step changed against what is written (and marks it
    /// written: the caller drops this entry if the write fails).
    fn diff(&mut self, touched: Option<&str>) -> store::Dirty {
        let sd = &self.sd;
        let mut dirty = store::Dirty::default();
        if self.legacy {
            dirty.header = true;
            dirty.devices = sd.deployment.devices.keys().cloned().collect();
            self.written = sd.deployment.devices.clone();
            self.marks = sd.alert_marks.clone();
            self.head = HeadMark::of(sd);
            self.legacy = false;
            return dirty;
        }
        let d = &sd.deployment;
        if d.phase != self.head.phase
            || d.forced != self.head.forced
            || d.spec.patches != self.head.patches
        {
            dirty.header = true;
            self.head = HeadMark::of(sd);
        }
        for (dev, r) in &d.devices {
            match self.written.get_mut(dev) {
                Some(w) if w == r => {}
                Some(w) => {
                    *w = r.clone();
                    dirty.devices.insert(dev.clone());
                }
                None => {
                    self.written.insert(dev.clone(), r.clone());
                    dirty.devices.insert(dev.clone());
                }
            }
        }
        if sd.alert_marks != self.marks {
            for (dev, m) in &sd.alert_marks {
                if self.marks.get(dev) != Some(m) {
                    dirty.devices.insert(dev.clone());
                }
            }
            for dev in self.marks.keys() {
                if !sd.alert_marks.contains_key(dev) {
                    dirty.devices.insert(dev.clone());
                }
            }
            self.marks = sd.alert_marks.clone();
        }
        if let Some(dev) = touched {
            dirty.devices.insert(dev.to_string());
        }
        dirty
    }
}

/// One step as persisted.
struct Stepped {
    sd: Arc<StoredDeployment>,
    actions: Vec<Action>,
    /// The order was applied before (nothing stepped): its outcome.
    replayed: Option<store::OrderMark>,
}

/// What an order from central came to ([`Orchestrator::input_order`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderResult {
    /// Stepped now.
    Applied,
    /// Stepped before (the same order id was written with its step):
    /// nothing done again; `refused` is what the state machine said then.
    AlreadyApplied { refused: Option<String> },
}

/// A device status mapped to the core's report (`None`: nothing to
/// report, e.g. an intermediate rollback phase).
pub fn report_of(s: &DeviceStatus) -> Report {
    let reason = || s.reason.clone().unwrap_or_else(|| "no reason given".into());
    match (s.phase, s.rollback) {
        (Phase::Downloading, _) => Report::Downloading,
        (Phase::Installing, _) => Report::Installing,
        (Phase::RebootPending, _) => Report::RebootPending,
        (Phase::Succeeded, false) => Report::Succeeded,
        (Phase::Succeeded, true) | (Phase::RolledBack, _) => Report::RolledBack,
        // A withdrawn command: the device link's synthesized status, or the
        // agent's when cancelled before apt ran.
        (Phase::Failed, false) if reason().starts_with(CANCELLED_REASON_PREFIX) => {
            Report::Cancelled
        }
        (Phase::Failed, false) => Report::Failed { reason: reason() },
        (Phase::Failed, true) | (Phase::RollbackFailed, _) => {
            Report::RollbackFailed { reason: reason() }
        }
    }
}

impl Orchestrator {
    pub fn new(
        store: Store,
        installer: Arc<dyn Installer>,
        env: Arc<dyn DeployEnv>,
        metrics: Arc<Metrics>,
        options: InstallOptions,
    ) -> Orchestrator {
        Orchestrator {
            store,
            installer,
            env,
            metrics,
            options,
            lock: tokio::sync::Mutex::new(()),
            cache: Default::default(),
            changed: Default::default(),
            index: Default::default(),
        }
    }

    pub fn get(&self, id: &str) -> Result<StoredDeployment, DeployError> {
        if let Some(c) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(StoredDeployment::clone(&c.sd));
        }
        store::get(&self.store, id)?.ok_or_else(|| DeployError::NotFound(id.to_string()))
    }

    /// The deployments stepped (or created) since the last call, and
    /// forgets them: the progress loop up to central reads only these.
    pub fn take_changed(&self) -> std::collections::BTreeSet<String> {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn mark_changed(&self, id: &str) {
        self.changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
    }

    pub fn list(&self) -> Result<Vec<StoredDeployment>, DeployError> {
        Ok(store::list(&self.store)?)
    }

    /// The enrolled, not revoked devices a target names.
    fn resolve(&self, target: &DeployTarget) -> Result<Vec<DeviceId>, DeployError> {
        if let DeployTarget::Devices { devices } = target {
            let mut out = Vec::new();
            for d in devices {
                let id = d
                    .parse::<DeviceId>()
                    .map_err(|_| DeployError::UnknownDevice(d.clone()))?;
                match registry::get(&self.store, id)? {
                    Some(r) if r.revoked_at_ms.is_none() => out.push(id),
                    _ => return Err(DeployError::UnknownDevice(d.clone())),
                }
            }
            return Ok(out);
        }
        let mut all = Vec::new();
        self.store
            .scan::<DeviceRecord>(registry::DEVICES, &[], None, |_, r| {
                all.push(r);
                true
            })?;
        let mut out = Vec::new();
        for r in all {
            if r.revoked_at_ms.is_some() {
                continue;
            }
            let keep = match target {
                DeployTarget::Tag { tag } => {
                    registry::tags(&self.store, r.id)?.iter().any(|t| t == tag)
                }
                DeployTarget::Customer { customer } => r.customer.as_str() == customer,
                _ => true,
            };
            if keep {
                out.push(r.id);
            }
        }
        Ok(out)
    }

    /// Creates a deployment of the patches approved on `req.target` (and
    /// starts it unless `req.start` is false). Refused with the reason
    /// when nothing is approved there.
    pub async fn create(
        &self,
        req: CreateRequest,
        patches: &dyn MissingPatches,
        actor: &str,
        now_ms: u64,
    ) -> Result<StoredDeployment, DeployError> {
        let devices = self.resolve(&req.target)?;
        if devices.is_empty() {
            return Err(DeployError::Refused(format!(
                "no enrolled device matches {}",
                req.target
            )));
        }
        if let Some(w) = &req.window {
            w.compile(None)
                .map_err(|e| DeployError::Refused(format!("install window: {e}")))?;
        }
        let options = self.resolve_options(&req.options)?;
        let rules = approvals::list(&self.store)?;
        let mut keys = std::collections::BTreeSet::new();
        let mut targets = Vec::new();
        for dev in devices {
            let a = approvals::decisions_with(&self.store, patches, &rules, dev, now_ms)?;
            let security: std::collections::BTreeSet<PatchKey> = if req.security_only {
                patches
                    .missing(dev)
                    .unwrap_or_default()
                    .iter()
                    .filter(|p| p.is_security())
                    .filter_map(|p| {
                        let c = p.candidate.as_ref()?;
                        Some(PatchKey::new(p.source.as_str(), c.as_str()))
                    })
                    .collect()
            } else {
                Default::default()
            };
            let mine: Vec<PatchKey> = a
                .approved()
                .into_iter()
                .filter(|k| req.patches.as_ref().is_none_or(|only| only.contains(k)))
                .filter(|k| !req.security_only || security.contains(k))
                .collect();
            if mine.is_empty() {
                continue;
            }
            keys.extend(mine);
            targets.push(Target {
                device: dev.to_string(),
                pilot: a.scopes.tags.iter().any(|t| t == "pilot"),
            });
        }
        if let Some(only) = &req.patches
            && let Some(missing) = only.iter().find(|k| !keys.contains(*k))
        {
            return Err(DeployError::Refused(format!(
                "patch {missing} is not approved on any device of {}",
                req.target
            )));
        }
        if targets.is_empty() {
            return Err(DeployError::Refused(format!(
                "no patch is approved for {}: approve patches first (outpost patches approve, outpost approval-rules add)",
                req.target
            )));
        }
        let id = req.id.clone().unwrap_or_else(|| {
            let r: u32 = rand::random();
            format!("dep-{r:08x}")
        });
        let mut spec = DeploymentSpec::new(&id, keys.into_iter().collect(), targets);
        if let Some(s) = req.stages.clone() {
            spec.stages = s;
        }
        if let Some(g) = req.gate.clone() {
            spec.gate = g;
        }
        spec.auto_rollback_failed_pct = req.auto_rollback_failed_pct;
        if let Some(d) = req.install_deadline_ms {
            spec.install_deadline_ms = d;
        }
        let deployment = Deployment::new(spec).map_err(|e| DeployError::Refused(e.to_string()))?;
        let sd = StoredDeployment {
            deployment,
            target: req.target.clone(),
            created_at_ms: now_ms,
            created_by: actor.to_string(),
            window: req.window.clone(),
            installs: Default::default(),
            alert_marks: Default::default(),
            updated_at_ms: now_ms,
            options: Some(options),
        };
        {
            let _g = self.lock.lock().await;
            // Checked under the lock: two creations of one id store one.
            if store::exists(&self.store, &id)? {
                return Err(DeployError::Conflict(format!(
                    "deployment {id} exists already"
                )));
            }
            let state = store::DeploymentState {
                updated_at_ms: now_ms,
                ..Default::default()
            };
            store::put(&self.store, &sd, &state)?;
            self.indexed(&id, &sd.deployment.phase, 0);
            self.keep(
                &id,
                Cached::new(store::Loaded {
                    sd: sd.clone(),
                    state,
                    legacy: false,
                }),
            );
        }
        self.mark_changed(&id);
        self.audit(
            actor,
            "deployment.create",
            &sd,
            format!(
                "{} patches to {} devices ({}), options {}",
                sd.deployment.spec.patches.len(),
                sd.deployment.devices.len(),
                sd.target,
                serde_json::to_string(&sd.options).unwrap_or_default()
            ),
            now_ms,
        );
        if req.start {
            self.input(&id, Input::Start, actor, now_ms).await?;
        }
        self.refresh_gauge();
        self.get(&id)
    }

    /// `[deploy]`'s defaults of the per-deployment options.
    pub fn option_defaults(&self) -> super::options::Defaults {
        super::options::Defaults {
            reboot: self.options.reboot,
            snapshot: self.options.snapshot,
        }
    }

    /// Asked options resolved against the defaults and the script library
    /// (an unknown script: [`DeployError::Invalid`], naming it).
    pub fn resolve_options(
        &self,
        asked: &super::options::DeployOptions,
    ) -> Result<super::options::StoredOptions, DeployError> {
        use super::options::OptionsError;
        super::options::resolve(&self.store, asked, self.option_defaults()).map_err(|e| match e {
            OptionsError::Invalid(m) => DeployError::Invalid(m),
            OptionsError::Store(e) => DeployError::Store(e),
        })
    }

    /// The deployment's options into one install request.
    fn apply_options(&self, sd: &StoredDeployment, req: &mut InstallRequest) -> Result<(), String> {
        let o = sd
            .options
            .clone()
            .unwrap_or_else(|| super::options::StoredOptions::defaults(self.option_defaults()));
        o.apply(req, |p| super::options::lookup(&self.store, p))
    }

    fn audit(&self, actor: &str, action: &str, sd: &StoredDeployment, detail: String, now_ms: u64) {
        let e = AuditEntry {
            at_ms: now_ms,
            actor: actor.to_string(),
            action: action.to_string(),
            target: sd.id().to_string(),
            detail,
        };
        if let Err(e) = registry::audit(&self.store, &e) {
            warn!(error = %e, "writing the audit log failed");
        }
    }

    /// Steps the deployment with `input` at `now_ms` and persists the new
    /// state; returns it and the actions still to apply. `before` may
    /// change the stored record first (in the same write; it must not
    /// change a device's install record: see [`Orchestrator::report`]).
    pub fn step_persist(
        &self,
        id: &str,
        input: Input,
        now_ms: u64,
        before: impl FnOnce(&mut StoredDeployment),
    ) -> Result<(Arc<StoredDeployment>, Vec<Action>), DeployError> {
        let s = self.step_inner(id, input, now_ms, before, None, None)?;
        Ok((s.sd, s.actions))
    }

    /// The cached deployment, or read from the store.
    fn take_cached(&self, id: &str) -> Result<Cached, DeployError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        match cached {
            Some(c) => Ok(c),
            None => store::load(&self.store, id)?
                .map(Cached::new)
                .ok_or_else(|| DeployError::NotFound(id.to_string())),
        }
    }

    /// Steps and persists in one write: the devices whose record changed
    /// (and `touched`, whose install record `before` changed), the header
    /// if its phase, forced gates or patches changed, the state record,
    /// and `order` (an order from central) with what came of it. An
    /// order already written is not stepped again.
    fn step_inner(
        &self,
        id: &str,
        input: Input,
        now_ms: u64,
        before: impl FnOnce(&mut StoredDeployment),
        touched: Option<&str>,
        order: Option<&str>,
    ) -> Result<Stepped, DeployError> {
        let mut c = self.take_cached(id)?;
        if let Some(o) = order
            && let Some(mark) = c.state.order(o).cloned()
        {
            let sd = c.sd.clone();
            self.keep(id, c);
            return Ok(Stepped {
                sd,
                actions: Vec::new(),
                replayed: Some(mark),
            });
        }
        let sd = Arc::make_mut(&mut c.sd);
        before(sd);
        let windows = self.env.windows(sd, now_ms);
        let actions = sd.deployment.step(input, &windows, now_ms);
        sd.updated_at_ms = now_ms;
        mark_alerts(sd, &actions, now_ms);
        c.state.updated_at_ms = now_ms;
        c.state.marks = sd.alert_marks.len() as u32;
        if let Some(o) = order {
            let refused = actions.iter().find_map(|a| match a {
                Action::Rejected { reason } => Some(reason.clone()),
                _ => None,
            });
            c.state.remember(store::OrderMark {
                order: o.to_string(),
                refused,
            });
        }
        let dirty = c.diff(touched);
        // On failure the entry is dropped: the next step reads the store.
        let bytes = store::write(&self.store, &c.sd, &c.state, &dirty)?;
        let m = &self.metrics.deploy;
        m.store_write_bytes.inc_by(bytes as u64);
        m.store_device_records.inc_by(dirty.devices.len() as u64);
        if dirty.header {
            m.store_header_writes.inc();
        }
        let sd = c.sd.clone();
        self.indexed(id, &sd.deployment.phase, c.state.marks);
        self.keep(id, c);
        self.mark_changed(id);
        Ok(Stepped {
            sd,
            actions,
            replayed: None,
        })
    }

    /// Records a deployment's phase and marks as written (if the index
    /// was read already).
    fn indexed(&self, id: &str, phase: &outpost_patch::rollout::Phase, marks: u32) {
        if let Some(ix) = self
            .index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            ix.insert(
                id.to_string(),
                Indexed {
                    phase: phase.clone(),
                    marks: Some(marks),
                },
            );
        }
    }

    /// `f` of the index (read from the store the first time).
    fn with_index<R>(
        &self,
        f: impl FnOnce(&std::collections::HashMap<String, Indexed>) -> R,
    ) -> Result<R, DeployError> {
        let mut g = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ix) = g.as_ref() {
            return Ok(f(ix));
        }
        let ix: std::collections::HashMap<String, Indexed> = store::summaries(&self.store)?
            .into_iter()
            .map(|(id, phase, state)| {
                (
                    id,
                    Indexed {
                        phase,
                        marks: state.map(|s| s.marks),
                    },
                )
            })
            .collect();
        let r = f(&ix);
        *g = Some(ix);
        Ok(r)
    }

    /// Keeps a deployment in memory unless it ended (a late report on it
    /// reads it back).
    fn keep(&self, id: &str, c: Cached) {
        if c.sd.deployment.is_terminal() {
            return;
        }
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), c);
    }

    /// Steps again inside [`Orchestrator::apply`] (hands its copy back so
    /// the cached one is not cloned).
    fn restep(
        &self,
        sd: Arc<StoredDeployment>,
        input: Input,
        now_ms: u64,
    ) -> Result<(Arc<StoredDeployment>, Vec<Action>), DeployError> {
        let id = sd.id().to_string();
        drop(sd);
        self.step_persist(&id, input, now_ms, |_| {})
    }

    /// A technician's (or the system's) input: step, persist, apply.
    /// A refusal in the deployment's state is [`DeployError::Conflict`].
    pub async fn input(
        &self,
        id: &str,
        input: Input,
        actor: &str,
        now_ms: u64,
    ) -> Result<StoredDeployment, DeployError> {
        let (sd, _) = self.input_inner(id, input, actor, now_ms, None).await?;
        Ok(Arc::unwrap_or_clone(sd))
    }

    /// An order from central (`order`: its id): like
    /// [`Orchestrator::input`], with the order's id written in the same
    /// write as the step it causes, so a redelivery (the site died between
    /// applying and acknowledging) steps nothing and answers
    /// [`OrderResult::AlreadyApplied`].
    pub async fn input_order(
        &self,
        id: &str,
        input: Input,
        actor: &str,
        now_ms: u64,
        order: &str,
    ) -> Result<OrderResult, DeployError> {
        let (_, r) = self
            .input_inner(id, input, actor, now_ms, Some(order))
            .await?;
        Ok(r)
    }

    async fn input_inner(
        &self,
        id: &str,
        input: Input,
        actor: &str,
        now_ms: u64,
        order: Option<&str>,
    ) -> Result<(Arc<StoredDeployment>, OrderResult), DeployError> {
        let what = match &input {
            Input::Start => Some("deployment.start"),
            Input::Pause { .. } => Some("deployment.pause"),
            Input::Resume { .. } => Some("deployment.resume"),
            Input::Abort { .. } => Some("deployment.abort"),
            Input::Rollback(_) => Some("deployment.rollback"),
            _ => None,
        };
        let detail = serde_json::to_string(&input).unwrap_or_default();
        let sd = {
            let _g = self.lock.lock().await;
            let s = self.step_inner(id, input, now_ms, |_| {}, None, order)?;
            if let Some(mark) = s.replayed {
                info!(deployment = id, order = ?order, "order from central applied before: not applied again");
                return Ok((
                    s.sd,
                    OrderResult::AlreadyApplied {
                        refused: mark.refused,
                    },
                ));
            }
            let (sd, actions) = (s.sd, s.actions);
            let rejected = actions.iter().find_map(|a| match a {
                Action::Rejected { reason } => Some(reason.clone()),
                _ => None,
            });
            // Audited right after the step is stored (before its actions
            // are applied), so the progress sent to central with this
            // state carries it.
            if let (Some(what), None) = (what, &rejected) {
                self.audit(actor, what, &sd, detail, now_ms);
            }
            // A refused input still advanced the deployment (time passed):
            // what that decided is persisted, so it is applied too.
            let sd = self.apply(sd, actions, actor, now_ms).await?;
            if let Some(reason) = rejected {
                return Err(DeployError::Conflict(reason));
            }
            sd
        };
        self.refresh_gauge();
        Ok((sd, OrderResult::Applied))
    }

    /// A device's status (from the device link): recorded for its
    /// rollback, stepped as a report.
    pub async fn report(
        &self,
        device: DeviceId,
        status: &DeviceStatus,
        now_ms: u64,
    ) -> Result<(), DeployError> {
        let _g = self.lock.lock().await;
        let dev = device.to_string();
        let input = Input::Report {
            device: dev.clone(),
            attempt: status.attempt,
            report: report_of(status),
        };
        let before = |sd: &mut StoredDeployment| {
            if !status.rollback {
                sd.installs.entry(dev.clone()).or_default().report(status);
            } else if let Some(r) = sd.installs.get_mut(&dev) {
                r.phase = status.phase.as_str().to_string();
                r.reason = status.reason.clone();
            }
        };
        let s = self.step_inner(&status.deployment, input, now_ms, before, Some(&dev), None)?;
        let (sd, actions) = (s.sd, s.actions);
        let ignored = actions.iter().any(|a| matches!(a, Action::Ignored { .. }));
        if status.phase.is_final() && !ignored {
            let result = if status.rollback && status.phase == Phase::Failed {
                "rollback_failed"
            } else if status.rollback && status.phase == Phase::Succeeded {
                "rolled_back"
            } else {
                status.phase.as_str()
            };
            self.metrics.deploy.install_result(result);
        }
        self.apply(sd, actions, "agent", now_ms).await?;
        Ok(())
    }

    /// Time passed: every deployment not finished is stepped (windows,
    /// deadlines, soak times).
    pub async fn tick(&self, now_ms: u64) -> Result<(), DeployError> {
        let mut ix: Vec<(String, Indexed)> = self.with_index(|ix| {
            ix.iter()
                .filter(|(_, i)| !store::ended(&i.phase) || i.marks.is_none_or(|m| m > 0))
                .map(|(id, i)| (id.clone(), i.clone()))
                .collect()
        })?;
        ix.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, Indexed { phase, marks }) in ix {
            if store::ended(&phase) {
                // Only ended deployments with alert marks are read whole.
                if marks.is_none_or(|m| m > 0)
                    && let Some(sd) = store::get(&self.store, &id)?
                    && !sd.alert_marks.is_empty()
                {
                    self.env.alert_levels(&sd);
                }
                continue;
            }
            let _g = self.lock.lock().await;
            let (sd, actions) = self.step_persist(&id, Input::Tick, now_ms, |_| {})?;
            self.apply(sd, actions, "scheduler", now_ms).await?;
        }
        self.refresh_gauge();
        Ok(())
    }

    /// After a start: re-applies the commands of every deployment that
    /// were dispatched without a report yet (same command keys: the
    /// installer queues each once), then ticks.
    pub async fn recover(&self, now_ms: u64) -> Result<(), DeployError> {
        for l in store::list_loaded(&self.store)? {
            if l.sd.deployment.is_terminal() {
                // Ended before this start (its release may have been cut
                // short): its pins go.
                self.env.release(l.sd.id());
            }
            if l.legacy {
                // Migrated on read: rewritten in the per-device layout.
                info!(
                    deployment = l.sd.id(),
                    "rewriting a deployment in the per-device layout"
                );
                store::put(&self.store, &l.sd, &l.state)?;
            }
            let sd = Arc::new(l.sd);
            let actions = sd.deployment.recover();
            if actions.is_empty() {
                continue;
            }
            info!(
                deployment = sd.id(),
                actions = actions.len(),
                "re-applying after a restart"
            );
            let _g = self.lock.lock().await;
            self.apply(sd, actions, "recovery", now_ms).await?;
        }
        self.tick(now_ms).await
    }

    /// Applies actions in order. An install the device link refuses for
    /// good (unknown device, refused) is reported failed with the reason
    /// (stepped and persisted before its own actions are applied); a
    /// stopped link leaves it queued (re-applied by the next recovery).
    async fn apply(
        &self,
        mut sd: Arc<StoredDeployment>,
        actions: Vec<Action>,
        actor: &str,
        now_ms: u64,
    ) -> Result<Arc<StoredDeployment>, DeployError> {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            let mut failed: Option<(String, u32, String)> = None;
            match action {
                Action::Prefetch { patches } => {
                    // Spawned: device reports and ticks do not wait for
                    // the downloads (an install that comes first fetches
                    // through the cache, which joins the download).
                    let fut = self.env.prefetch(sd.id(), &patches);
                    let metrics = self.metrics.clone();
                    let id = sd.id().to_string();
                    tokio::spawn(async move {
                        match fut.await {
                            Ok(bytes) => {
                                metrics.deploy.prefetch_bytes.inc_by(bytes);
                            }
                            Err(e) => {
                                metrics.deploy.dispatch_error("prefetch");
                                warn!(deployment = %id, error = %e, "prefetch failed; installs fetch through the cache");
                            }
                        }
                    });
                }
                Action::DispatchInstall {
                    device,
                    command_id,
                    attempt,
                    patches,
                } => {
                    let Ok(dev) = device.parse::<DeviceId>() else {
                        failed =
                            Some((device.clone(), attempt, format!("bad device id {device:?}")));
                        sd = self.fail_later(&mut queue, sd, failed.take(), now_ms)?;
                        continue;
                    };
                    let DeviceTargets {
                        install: targets,
                        unmet,
                    } = self.env.targets(dev, &patches, now_ms);
                    if !unmet.is_empty() {
                        // It still needs a patch it cannot get as deployed:
                        // a failure naming why, never a success.
                        failed = Some((device, attempt, unmet.join("; ")));
                        sd = self.fail_later(&mut queue, sd, failed.take(), now_ms)?;
                        continue;
                    }
                    if targets.is_empty() {
                        // Nothing of it is missing there now.
                        let (s, a) = self.restep(
                            sd,
                            Input::Report {
                                device: device.clone(),
                                attempt,
                                report: Report::Succeeded,
                            },
                            now_ms,
                        )?;
                        sd = s;
                        queue.extend(a);
                        continue;
                    }
                    let mut request = InstallRequest {
                        deployment: sd.id().to_string(),
                        attempt,
                        targets,
                        proxy: self.options.proxy.clone(),
                        reboot: self.options.reboot,
                        min_free_root_bytes: self.options.min_free_root_bytes,
                        keep_previous_debs: true,
                        pre_script: None,
                        post_script: None,
                        snapshot: self.options.snapshot,
                    };
                    if let Err(why) = self.apply_options(&sd, &mut request) {
                        failed = Some((device, attempt, why));
                    } else if let Err(e) = self
                        .installer
                        .install(dev, &command_id, &request, actor)
                        .await
                    {
                        failed = self.link_error(&e, device, attempt);
                    }
                }
                Action::CancelInstall { command_id, .. } => {
                    if let Err(e) = self.installer.cancel(&command_id, actor).await {
                        self.metrics.deploy.dispatch_error("cancel");
                        warn!(command = %command_id, error = %e, "cancelling an install failed");
                    }
                }
                Action::DispatchRollback { device, command_id } => {
                    let Ok(dev) = device.parse::<DeviceId>() else {
                        continue;
                    };
                    let attempt = sd.deployment.devices.get(&device).map_or(0, |r| r.attempt);
                    let rec = sd.installs.get(&device).cloned().unwrap_or_default();
                    let request = RollbackRequest {
                        deployment: sd.id().to_string(),
                        attempt,
                        // The id the agent ran the install under (and keeps
                        // its record by).
                        install_command: super::command_id(&install_command_id(
                            sd.id(),
                            &device,
                            attempt,
                        ))
                        .to_string(),
                        changes: rec.all_changes(),
                        kept: rec.all_kept(),
                        proxy: self.options.proxy.clone(),
                    };
                    self.metrics.deploy.rollbacks.inc();
                    if let Err(e) = self
                        .installer
                        .rollback(dev, &command_id, &request, actor)
                        .await
                    {
                        self.metrics.deploy.dispatch_error("rollback");
                        warn!(command = %command_id, error = %e, "dispatching a rollback failed");
                    }
                }
                Action::StartStage { stage, devices } => {
                    info!(deployment = sd.id(), stage, devices, "stage started");
                }
                Action::PromoteStage { from, to, .. } => {
                    info!(deployment = sd.id(), from, to, "stage promoted");
                }
                Action::Notify(event) => {
                    if matches!(event, Event::GateFailed { .. }) {
                        self.metrics.deploy.gate_failures.inc();
                    }
                    self.env.notify(&sd, &event);
                    if ends(&event) {
                        self.env.release(sd.id());
                    }
                }
                Action::Rejected { reason } => {
                    self.metrics.deploy.rejected.inc();
                    warn!(deployment = sd.id(), %reason, "action rejected");
                }
                Action::Ignored { device, reason } => {
                    self.metrics.deploy.ignored_reports.inc();
                    tracing::debug!(deployment = sd.id(), %device, %reason, "report ignored");
                }
            }
            sd = self.fail_later(&mut queue, sd, failed, now_ms)?;
        }
        if !sd.alert_marks.is_empty() {
            self.env.alert_levels(&sd);
        }
        Ok(sd)
    }

    /// A link error: `Some` (device, attempt, reason) when the install can
    /// never be queued (reported failed), `None` when it may be re-applied.
    fn link_error(
        &self,
        e: &LinkError,
        device: String,
        attempt: u32,
    ) -> Option<(String, u32, String)> {
        match e {
            LinkError::Stopped => {
                self.metrics.deploy.dispatch_error("stopped");
                None
            }
            LinkError::UnknownDevice(_) => {
                self.metrics.deploy.dispatch_error("unknown_device");
                Some((device, attempt, e.to_string()))
            }
            LinkError::Encode(_) => {
                self.metrics.deploy.dispatch_error("encode");
                Some((device, attempt, e.to_string()))
            }
            LinkError::Refused(_) => {
                self.metrics.deploy.dispatch_error("refused");
                Some((device, attempt, e.to_string()))
            }
        }
    }

    fn fail_later(
        &self,
        queue: &mut std::collections::VecDeque<Action>,
        sd: Arc<StoredDeployment>,
        failed: Option<(String, u32, String)>,
        now_ms: u64,
    ) -> Result<Arc<StoredDeployment>, DeployError> {
        let Some((device, attempt, reason)) = failed else {
            return Ok(sd);
        };
        warn!(deployment = sd.id(), %device, %reason, "install could not be queued");
        self.metrics.deploy.install_result("failed");
        let (s, a) = self.restep(
            sd,
            Input::Report {
                device,
                attempt,
                report: Report::Failed { reason },
            },
            now_ms,
        )?;
        queue.extend(a);
        Ok(s)
    }

    /// Sets `outpost_deployments{state}` from the stored deployments
    /// (the in-memory index of their phases).
    pub fn refresh_gauge(&self) {
        let Ok(counts) = self.with_index(|ix| {
            let mut counts = std::collections::BTreeMap::new();
            for i in ix.values() {
                *counts.entry(i.phase.name()).or_insert(0i64) += 1;
            }
            counts
        }) else {
            return;
        };
        self.metrics.deploy.set_states(&counts);
    }
}

/// Whether the event ends the deployment (its cache pins go).
fn ends(event: &Event) -> bool {
    matches!(
        event,
        Event::Completed
            | Event::Aborted
            | Event::RolledBack {
                scope: outpost_patch::rollout::RollbackScope::Deployment
            }
    )
}

/// Updates the deployment's alert marks from the notices of one step: a
/// failed gate (or an automatic rollback) raises the failed devices of
/// that stage; a resume, completion, abort or rollback lowers every
/// raised one; lowered marks older than [`store::LOWERED_MARK_MS`] go.
fn mark_alerts(sd: &mut StoredDeployment, actions: &[Action], now_ms: u64) {
    use outpost_patch::rollout::DeviceState;
    for a in actions {
        let Action::Notify(event) = a else { continue };
        match event {
            Event::GateFailed { stage, .. } | Event::AutoRollback { stage, .. } => {
                let devs = sd
                    .deployment
                    .stages
                    .get(*stage as usize)
                    .cloned()
                    .unwrap_or_default();
                for d in devs {
                    let failed = sd.deployment.devices.get(&d).is_some_and(|r| {
                        matches!(
                            r.state,
                            DeviceState::Failed
                                | DeviceState::RollingBack
                                | DeviceState::RolledBack
                                | DeviceState::RollbackFailed
                        )
                    });
                    if failed {
                        sd.alert_marks.insert(
                            d,
                            store::AlertMark {
                                raised: true,
                                since_ms: now_ms,
                            },
                        );
                    }
                }
            }
            Event::Resumed { .. }
            | Event::Completed
            | Event::Aborted
            | Event::RolledBack { .. } => {
                for m in sd.alert_marks.values_mut() {
                    if m.raised {
                        *m = store::AlertMark {
                            raised: false,
                            since_ms: now_ms,
                        };
                    }
                }
            }
            _ => {}
        }
    }
    sd.alert_marks
        .retain(|_, m| m.raised || now_ms.saturating_sub(m.since_ms) < store::LOWERED_MARK_MS);
}

/// The metric of a deployment's alert samples (the built-in rule
/// `builtin-deploy-gate` watches it).
pub const GATE_FAILED_METRIC: &str = "deploy_gate_failed";

/// The alert samples of a deployment's marks.
pub fn alert_samples(
    d: &StoredDeployment,
) -> Vec<(DeviceId, Vec<outpost_proto::messages::MetricValue>)> {
    d.alert_marks
        .iter()
        .filter_map(|(dev, m)| {
            let id = dev.parse::<DeviceId>().ok()?;
            Some((
                id,
                vec![outpost_proto::messages::MetricValue {
                    name: GATE_FAILED_METRIC.to_string(),
                    label: d.id().to_string(),
                    value: if m.raised { 1.0 } else { 0.0 },
                }],
            ))
        })
        .collect()
}

/// Where a deployment's alert samples go (the alert engine's input).
pub type AlertSink =
    Box<dyn Fn(Vec<(DeviceId, Vec<outpost_proto::messages::MetricValue>)>) + Send + Sync>;

/// The [`StatusSink`] the device link calls: statuses go to the
/// orchestrator's loop ([`run`]) through a bounded queue (a full queue
/// is counted and dropped: the device link re-sends the final status of
/// a command after a restart, and the install deadline covers the rest).
pub struct StatusPort {
    tx: tokio::sync::mpsc::Sender<(DeviceId, DeviceStatus)>,
    metrics: Arc<Metrics>,
}

impl StatusSink for StatusPort {
    /// Waits while the orchestrator's queue is full (the device link calls
    /// this from its blocking worker thread, before it deletes the status
    /// from its durable inbox): back-pressure, never a lost status.
    fn status(&self, device: DeviceId, status: &DeviceStatus) {
        use tokio::sync::mpsc::error::TrySendError;
        match self.tx.try_send((device, status.clone())) {
            Ok(()) => {}
            Err(TrySendError::Full(item)) => {
                self.metrics
                    .deploy
                    .dispatch_error("status_queue_full_waited");
                if self.tx.blocking_send(item).is_err() {
                    self.metrics.deploy.dispatch_error("status_queue_closed");
                }
            }
            Err(TrySendError::Closed(_)) => {
                self.metrics.deploy.dispatch_error("status_queue_closed");
            }
        }
    }
}

/// The receiving end of a [`StatusPort`], for [`spawn`].
pub type StatusReceiver = tokio::sync::mpsc::Receiver<(DeviceId, DeviceStatus)>;

/// Device statuses waiting for the orchestrator's loop.
pub const STATUS_QUEUE: usize = 4096;

/// The [`StatusSink`] to hand to the device link, and its receiving end.
pub fn status_channel(metrics: Arc<Metrics>) -> (Arc<StatusPort>, StatusReceiver) {
    let (tx, rx) = tokio::sync::mpsc::channel(STATUS_QUEUE);
    (Arc::new(StatusPort { tx, metrics }), rx)
}

/// The orchestrator's loop: recovers, then steps device statuses as they
/// come, and every `tick` creates the deployments of due schedules
/// ([`super::schedules`]) and ticks.
pub fn spawn(
    orch: Arc<Orchestrator>,
    patches: Arc<dyn MissingPatches>,
    mut rx: StatusReceiver,
    tick: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    tracker.spawn(async move {
        if let Err(e) = orch.recover(outpost_storage::now_ms()).await {
            warn!(error = %e, "recovering deployments failed");
        }
        let mut timer = tokio::time::interval(tick);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = timer.tick() => {
                    let now = outpost_storage::now_ms();
                    if let Err(e) = super::schedules::run_due(&orch.store, &orch, patches.as_ref(), now).await {
                        warn!(error = %e, "running deployment schedules failed");
                    }
                    if let Err(e) = orch.tick(now).await {
                        warn!(error = %e, "deployment tick failed");
                    }
                }
                Some((dev, status)) = rx.recv() => {
                    if let Err(e) = orch.report(dev, &status, outpost_storage::now_ms()).await {
                        orch.metrics.deploy.ignored_reports.inc();
                        warn!(device = %dev, deployment = %status.deployment, error = %e, "device status not applied");
                    }
                }
            }
        }
    });
}

/// The environment of a running appliance: windows from the deployment's
/// window, notifications to the log and audit trail, binaries from the
/// patch service's assessments and the approvals.
pub struct SiteEnv {
    pub store: Store,
    pub patches: Arc<dyn MissingPatches>,
    /// The alert engine's sample input (`None`: no alerts, e.g. tests).
    pub alerts: Option<AlertSink>,
    /// The site's LAN cache, set once it listens (empty: the cache is
    /// off, or tests; nothing is prefetched).
    pub cache: Arc<std::sync::OnceLock<Arc<crate::cache::Cache>>>,
}

impl DeployEnv for SiteEnv {
    fn windows(&self, d: &StoredDeployment, now_ms: u64) -> SiteWindows {
        let mut w = SiteWindows {
            default: d.window.as_ref().and_then(|w| w.compile(None).ok()),
            ..Default::default()
        };
        w.pauses = maintenance_pauses(&self.store, d, now_ms);
        w
    }

    fn notify(&self, d: &StoredDeployment, event: &Event) {
        warn!(deployment = d.id(), event = ?event, "deployment notice");
        let e = AuditEntry {
            at_ms: outpost_storage::now_ms(),
            actor: "orchestrator".into(),
            action: "deployment.notify".into(),
            target: d.id().to_string(),
            detail: serde_json::to_string(event).unwrap_or_default(),
        };
        if let Err(e) = registry::audit(&self.store, &e) {
            warn!(error = %e, "writing the audit log failed");
        }
    }

    fn alert_levels(&self, d: &StoredDeployment) {
        if let Some(sink) = &self.alerts {
            sink(alert_samples(d));
        }
    }

    fn prefetch(&self, deployment: &str, patches: &[PatchKey]) -> PrefetchFuture {
        let store = self.store.clone();
        let missing = self.patches.clone();
        let cache = self.cache.get().cloned();
        let deployment = deployment.to_string();
        let patches = patches.to_vec();
        Box::pin(async move {
            let Some(cache) = cache else {
                return Ok(0);
            };
            let sd = store::get(&store, &deployment)
                .map_err(|e| format!("reading deployment {deployment}: {e}"))?
                .ok_or_else(|| format!("unknown deployment {deployment}"))?;
            let want = prefetch_wanted(&store, missing.as_ref(), &sd, &patches);
            let owner = pin_owner(&deployment);
            let r = cache.prefetch_pin_packages(&want, &owner).await;
            info!(
                deployment,
                pinned = r.pinned.len(),
                bytes = r.fetched_bytes,
                unknown = ?r.unknown,
                "prefetched and pinned in the site cache"
            );
            // Ended while the files came (aborted at once): let them go.
            if store::get(&store, &deployment)
                .ok()
                .flatten()
                .is_some_and(|d| d.deployment.is_terminal())
            {
                release_pins(&cache, &deployment);
            }
            if let Some((url, e)) = r.errors.first() {
                return Err(format!(
                    "{} of {} files failed, first {url}: {e}",
                    r.errors.len(),
                    r.errors.len() + r.pinned.len()
                ));
            }
            Ok(r.fetched_bytes)
        })
    }

    fn release(&self, deployment: &str) {
        if let Some(cache) = self.cache.get() {
            release_pins(cache, deployment);
        }
    }

    fn targets(&self, device: DeviceId, patches: &[PatchKey], now_ms: u64) -> DeviceTargets {
        targets_for(&self.store, self.patches.as_ref(), device, patches, now_ms)
    }
}

/// The owner of a deployment's pins in the site cache (the pins' reason).
pub fn pin_owner(deployment: &str) -> String {
    format!("deployment {deployment}")
}

/// Releases a deployment's pins in the site cache (logged, never fatal:
/// the next start releases those of every ended deployment again).
pub fn release_pins(cache: &crate::cache::Cache, deployment: &str) {
    match cache.release_owner(&pin_owner(deployment)) {
        Ok(r) if r.unpinned.is_empty() && r.kept.is_empty() => {}
        Ok(r) => info!(
            deployment,
            unpinned = r.unpinned.len(),
            kept = r.kept.len(),
            "released the deployment's pins in the site cache"
        ),
        Err(e) => warn!(deployment, error = %e, "releasing the deployment's cache pins failed"),
    }
}

/// The target devices that a maintenance window with
/// `pause_patch_installs` covers at `now_ms`, each with a pause interval
/// covering `now_ms` (the state machine asks only "may it install now";
/// the windows are resolved again at every step). Reads the registry only
/// when such a window is active.
pub fn maintenance_pauses(
    store: &Store,
    d: &StoredDeployment,
    now_ms: u64,
) -> std::collections::HashMap<String, Vec<outpost_patch::window::Pause>> {
    use crate::alerts::model::{DeviceScope, MaintenanceWindow, WindowEffect};
    let mut out = std::collections::HashMap::new();
    let windows: Vec<MaintenanceWindow> =
        match crate::alerts::store::list_config(store, crate::alerts::store::ConfigKind::Window) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "reading maintenance windows");
                return out;
            }
        };
    let active: Vec<&MaintenanceWindow> = windows
        .iter()
        .filter(|w| {
            w.effects.contains(&WindowEffect::PausePatchInstalls)
                && crate::alerts::windows::active(&w.schedule, now_ms)
        })
        .collect();
    if active.is_empty() {
        return out;
    }
    for dev in d.deployment.devices.keys() {
        let Ok(id) = dev.parse::<DeviceId>() else {
            continue;
        };
        let Ok(Some(rec)) = registry::get(store, id) else {
            continue;
        };
        let scope = DeviceScope {
            tenant: rec.tenant.clone(),
            customer: rec.customer.clone(),
            tags: registry::tags(store, id).unwrap_or_default(),
            hostname: rec.hostname.clone(),
        };
        if active.iter().any(|w| w.scope.matches(id, &scope)) {
            out.insert(dev.clone(), vec![(now_ms, now_ms.saturating_add(1))]);
        }
    }
    out
}

/// The binary package versions a deployment of `keys` installs on its
/// devices now (what the site cache prefetches and pins).
pub fn prefetch_wanted(
    store: &Store,
    patches: &dyn MissingPatches,
    sd: &StoredDeployment,
    keys: &[PatchKey],
) -> Vec<crate::cache::ops::PackageWanted> {
    let now = outpost_storage::now_ms();
    let mut want = std::collections::BTreeSet::new();
    for dev in sd.deployment.devices.keys() {
        let Ok(id) = dev.parse::<DeviceId>() else {
            continue;
        };
        for t in targets_for(store, patches, id, keys, now).install {
            want.insert((t.name, t.version, t.arch));
        }
    }
    want.into_iter()
        .map(|(name, version, arch)| crate::cache::ops::PackageWanted {
            name,
            version,
            arch,
        })
        .collect()
}

/// What a deployment installs on one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceTargets {
    /// The binaries of the deployment's patches the device misses and that
    /// are approved for it now.
    pub install: Vec<BinaryTarget>,
    /// Why a patch the device still needs (its installed version is below
    /// the deployed one) cannot be installed as deployed: its approval was
    /// withdrawn, or a newer version superseded it. The device fails with
    /// these reasons rather than count as done.
    pub unmet: Vec<String>,
}

/// What `device` gets of the deployment's patches `keys` at `now_ms`.
pub fn targets_for(
    store: &Store,
    patches: &dyn MissingPatches,
    device: DeviceId,
    keys: &[PatchKey],
    now_ms: u64,
) -> DeviceTargets {
    let mut out = DeviceTargets::default();
    let a = match approvals::device_decisions(store, patches, device, now_ms) {
        Ok(a) => a,
        Err(e) => {
            out.unmet
                .push(format!("its approvals could not be read: {e}"));
            return out;
        }
    };
    let approved = a.approved();
    let missing = patches.missing(device).unwrap_or_default();
    for key in keys {
        let offered: Vec<&MissingPatch> = missing
            .iter()
            .filter(|p| p.source.as_str() == key.package)
            .collect();
        if let Some(p) = offered.iter().find(|p| {
            p.candidate
                .as_ref()
                .is_some_and(|c| c.as_str() == key.version)
        }) {
            if approved.contains(key) {
                out.install.extend(BinaryTarget::from_missing(p));
            } else {
                out.unmet.push(format!(
                    "{}={} is no longer approved for this device (declined, or its approval removed)",
                    key.package, key.version
                ));
            }
            continue;
        }
        // Not offered as deployed: done if what is installed is already
        // at or past the deployed version (or nothing of it is missing).
        let needs = offered.iter().find(|p| {
            DebVersion::parse_lenient(&key.version).map_or(true, |deployed| p.installed < deployed)
        });
        if let Some(p) = needs {
            out.unmet.push(match &p.candidate {
                Some(c) => format!(
                    "{} is at {}; the deployment installs {} but the device's repositories offer {} now: resume the deployment with that version, or deploy it on its own",
                    key.package, p.installed, key.version, c
                ),
                None => format!(
                    "{} is at {}, below the deployment's {}, and its update cannot be named by version",
                    key.package, p.installed, key.version
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
