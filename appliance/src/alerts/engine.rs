//! The alert engine task: it owns the open alerts (in memory and on disk),
//! the configuration it evaluates (rules resolved into [`RulePlan`]s,
//! maintenance windows), the device scopes it matches, and the last report
//! of every no-data series. It routes each input to the pure decision core
//! and applies what comes back:
//!
//! * stored samples (fed by the ingest writer after each group commit) →
//!   [`eval`] for threshold rules (the alert's timers first when its series
//!   was stale, [`eval::is_stale`]), no-data bookkeeping;
//! * online/offline transitions → [`lifecycle::on_device_status`] for
//!   device-offline rules, [`lifecycle::on_device_offline`] for the
//!   device's threshold alerts;
//! * the clock → [`timers`] (due times, `keep_firing_for`, windows ending,
//!   escalation, reminders, no-data);
//! * a device revoked → its open alerts close quietly
//!   ([`lifecycle::on_device_retired`]) and nothing opens for it again
//!   (also after a restart: at load, open alerts of revoked devices close);
//! * acknowledgements and configuration reloads → [`lifecycle`] (alerts of
//!   a deleted rule are retired with the rule's last plan, so the channels
//!   that heard them fire are told, as when it is disabled).
//!
//! Every alert whose state moved (or that was acknowledged) is handed,
//! once written, to the [`AlertObserver`] if one is set (the console's
//! live updates): a cheap call on the engine's task, no I/O.
//!
//! The writer hands it samples without waiting: a full queue does not
//! block ingest and loses nothing either; the batches it refuses are
//! summarized ([`super::overflow`]) and evaluated once everything queued
//! before them has been (a warning when it starts, a log line when it
//! catches up, `outpost_alert_inputs_dropped_total` counting the batches).
//!
//! It decides nothing itself and writes nothing itself: decisions are the
//! pure modules' ([`eval`], [`lifecycle`], [`timers`]), writes and
//! notifications are [`super::apply`]'s. After a restart it loads the open
//! alerts back, so pending alerts fire at their original due time and
//! firing alerts are not announced again; their series' silence counts
//! from the restart ([`eval::resume`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use outpost_proto::DeviceId;
use outpost_proto::messages::MetricValue;
use outpost_storage::error::Result;
use outpost_storage::model::{DeviceStatus, StatusTransition};
use outpost_storage::{Store, now_ms, registry};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::apply::{Applier, op};
use super::builtin::builtin_rules;
use super::decision::{DeviceWindows, Outcome, RulePlan};
use super::eval::{self, Step};
use super::lifecycle::{self, OfflineDecision};
use super::model::*;
use super::notify::NotifyHandle;
use super::overflow::{Overflow, Summary};
use super::store::{self, ConfigKind};
use super::timers;
use crate::metrics::{AlertStage, Metrics};

/// The engine runs its timers at least this often: maintenance windows can
/// end (or be deleted) and no-data series fall silent without an event.
const POLL_MS: u64 = 1_000;

/// Ticks (each visits every open alert) are at least this far apart; a due
/// time is met this late at most. Inputs no longer tick: with 50,000
/// devices a tick after every sample batch kept the engine, and the runtime
/// thread it ran on, busy scanning.
const MIN_TICK_MS: u64 = 100;

/// When the engine runs its timers next (appliance clock, ms): at the
/// earliest due time it knows of — `wake`, from its last tick, or `hint`,
/// of the alerts that changed since — but not sooner than [`MIN_TICK_MS`]
/// after the last tick.
fn next_tick(last_tick: u64, wake: u64, hint: Option<u64>) -> u64 {
    hint.map_or(wake, |h| wake.min(h))
        .max(last_tick.saturating_add(MIN_TICK_MS))
}

/// Control messages (unbounded: rare and must not be lost).
pub enum Control {
    Status(Vec<(DeviceId, StatusTransition)>),
    /// A device was revoked (sent before the writer marks it offline).
    Retired(DeviceId),
    /// Configuration changed: re-read rules, channels, policies, windows.
    Reload,
    Ack {
        id: u64,
        by: String,
        comment: String,
        reply: oneshot::Sender<std::result::Result<Alert, String>>,
    },
}

/// Metric values of one committed group commit: (device, values).
pub type SampleBatch = Vec<(DeviceId, Vec<MetricValue>)>;

/// Told of every written alert change: the alert as written and its state
/// before (`None`: a new alert). Called on the engine's task: must not
/// block.
pub type AlertObserver = Arc<dyn Fn(&Alert, Option<AlertState>) + Send + Sync>;

/// Handle to the engine task.
#[derive(Clone)]
pub struct EngineHandle {
    /// Each batch with when the writer handed it over.
    samples: mpsc::Sender<(Instant, SampleBatch)>,
    /// What the queue refused, until the engine catches up (shared with it).
    overflow: Arc<Mutex<Overflow>>,
    control: mpsc::UnboundedSender<Control>,
    metrics: Arc<Metrics>,
}

fn lock(o: &Mutex<Overflow>) -> MutexGuard<'_, Overflow> {
    // The summary is plain data, consistent after any panic of a holder.
    o.lock().unwrap_or_else(|e| e.into_inner())
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").finish_non_exhaustive()
    }
}

impl EngineHandle {
    /// Called by the writer after a commit; never blocks it (beyond a
    /// short lock). A batch the full queue refuses — and every batch after
    /// it until the engine catches up — is summarized for a later
    /// evaluation ([`super::overflow`]) and counted.
    pub fn samples(&self, batch: SampleBatch) {
        if batch.is_empty() {
            return;
        }
        let mut o = lock(&self.overflow);
        let batch = if o.is_active() {
            batch
        } else {
            match self.samples.try_send((Instant::now(), batch)) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.metrics.alert_inputs_dropped.inc();
                    debug!("alert engine stopped: samples not evaluated");
                    return;
                }
                Err(mpsc::error::TrySendError::Full((_, batch))) => {
                    warn!(
                        queue = self.samples.max_capacity(),
                        "alert evaluation is behind ingest: its queue is full; until it catches \
                         up, samples are summarized per series (first, lowest, highest, last value) \
                         and evaluated then (outpost_alert_inputs_dropped_total counts the batches)"
                    );
                    o.begin(now_ms());
                    batch
                }
            }
        };
        self.metrics.alert_inputs_dropped.inc();
        let lost = o.fold(batch);
        if lost > 0 {
            self.metrics.alert_inputs_lost.inc_by(lost);
        }
    }

    /// Device online/offline transitions. Only refused once the engine
    /// has stopped (shutdown), when there is nobody left to tell.
    pub fn status(&self, ts: Vec<(DeviceId, StatusTransition)>) {
        if self.control.send(Control::Status(ts)).is_err() {
            debug!("alert engine stopped: status transitions not evaluated");
        }
    }

    /// A device was revoked: its open alerts close quietly and none open
    /// for it again. Send it before the writer retires the device, so the
    /// offline transition that follows finds the device retired.
    pub fn retired(&self, device: DeviceId) {
        if self.control.send(Control::Retired(device)).is_err() {
            debug!(%device, "alert engine stopped: revoked device not retired");
        }
    }

    /// The alerting configuration changed.
    pub fn reload(&self) {
        if self.control.send(Control::Reload).is_err() {
            debug!("alert engine stopped: configuration not reloaded");
        }
    }

    pub async fn ack(
        &self,
        id: u64,
        by: String,
        comment: String,
    ) -> std::result::Result<Alert, String> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Ack {
                id,
                by,
                comment,
                reply,
            })
            .map_err(|_| "the alert engine has stopped".to_string())?;
        rx.await
            .map_err(|_| "the alert engine dropped the request".to_string())?
    }
}

/// (rule id, device, label): one open alert per key.
type Key = (String, DeviceId, String);

mod open;
use open::OpenAlerts;

fn key_of(a: &Alert) -> Key {
    (a.rule_id.clone(), a.device, a.label.clone())
}

/// What the registry says about devices, to match scopes; read once per
/// device until the next configuration reload.
struct DeviceScopes {
    store: Store,
    /// Shared with the evaluation of each batch: a device's scope is read
    /// for every sample batch of it, and its strings are not copied.
    cache: HashMap<DeviceId, Arc<DeviceScope>>,
}

impl DeviceScopes {
    /// The device's scope. A registry error is logged and counted; the
    /// device then matches only scopes that need nothing from the registry
    /// (until the next reload).
    fn get(&mut self, d: DeviceId, out: &Applier) -> &Arc<DeviceScope> {
        let store = &self.store;
        self.cache.entry(d).or_insert_with(|| {
            let rec = registry::get(store, d).unwrap_or_else(|e| {
                out.error(op::DEVICE_LOOKUP, None, &format!("device {d}: {e}"));
                None
            });
            let tags = registry::tags(store, d).unwrap_or_else(|e| {
                out.error(op::DEVICE_LOOKUP, None, &format!("tags of {d}: {e}"));
                Vec::new()
            });
            Arc::new(DeviceScope {
                tenant: rec.as_ref().map(|r| r.tenant.clone()).unwrap_or_default(),
                customer: rec.as_ref().map(|r| r.customer.clone()).unwrap_or_default(),
                hostname: rec.as_ref().map(|r| r.hostname.clone()).unwrap_or_default(),
                tags,
            })
        })
    }
}

/// The engine state (see the module docs).
pub struct Engine {
    store: Store,
    metrics: Arc<Metrics>,
    /// Writes outcomes and submits notifications.
    out: Applier,
    rules: HashMap<String, Arc<Rule>>,
    /// Every rule resolved for the decisions (by rule id).
    plans: HashMap<String, Arc<RulePlan>>,
    /// Rule ids by the metric they read (shared: each sample value takes
    /// its list without copying it).
    by_metric: HashMap<String, Arc<[String]>>,
    windows: Vec<MaintenanceWindow>,
    open: OpenAlerts,
    scopes: DeviceScopes,
    /// Last time each (metric, device, label) read by a no-data rule reported.
    last_seen: HashMap<Key, u64>,
    /// Revoked devices: their inputs are ignored, no alert opens for them.
    retired: HashSet<DeviceId>,
    /// The earliest due time of the alerts that changed since the last
    /// tick ([`Engine::next_wake`] knows the rest).
    due_hint: Option<u64>,
    next_alert_id: u64,
    /// Told of written changes (the console's live updates), if set.
    observer: Option<AlertObserver>,
}

impl Engine {
    /// Loads configuration and open alerts at `now` (the engine listens
    /// from then on); creates the built-in rules on first start, and
    /// retires open alerts whose rule was deleted or disabled while the
    /// engine was not told.
    pub fn load(
        store: Store,
        metrics: Arc<Metrics>,
        notify: NotifyHandle,
        now: u64,
    ) -> Result<Engine> {
        for r in builtin_rules()
            .into_iter()
            .chain(super::builtin::builtin_patch_rules())
        {
            if store::get_config::<Rule>(&store, ConfigKind::Rule, &r.id)?.is_none() {
                store::put_config(&store, ConfigKind::Rule, &r.id, &r)?;
            }
        }
        let next_notification_id = store::max_notification_id(&store)? + 1;
        let mut e = Engine {
            next_alert_id: store::max_alert_id(&store)? + 1,
            out: Applier::new(store.clone(), metrics.clone(), notify, next_notification_id),
            scopes: DeviceScopes {
                store: store.clone(),
                cache: HashMap::new(),
            },
            store,
            metrics,
            rules: HashMap::new(),
            plans: HashMap::new(),
            by_metric: HashMap::new(),
            windows: Vec::new(),
            open: OpenAlerts::default(),
            last_seen: HashMap::new(),
            retired: HashSet::new(),
            due_hint: None,
            observer: None,
        };
        e.reload_config()?;
        for mut a in store::load_open(&e.store)? {
            eval::resume(&mut a, now);
            e.open.insert(key_of(&a), a);
        }
        let plans = e.plans.clone();
        e.retire_orphans(&plans, now);
        e.retire_revoked(now);
        e.seed_no_data(now)?;
        e.publish_gauges();
        Ok(e)
    }

    /// At load: every stored series a no-data rule reads (the ingest's
    /// series dictionary: one key per device, metric and label) is seen
    /// at `now`, so a series that fell silent shortly before or during
    /// the restart alerts once it has been silent for the rule's `for`
    /// counted from the restart (like a stale threshold series, silence
    /// counts only while the appliance runs). Without it `last_seen`
    /// started empty and such a series never alerted. Series of revoked
    /// devices are left out.
    fn seed_no_data(&mut self, now: u64) -> Result<()> {
        let rules: Vec<Arc<Rule>> = self
            .rules
            .values()
            .filter(|r| r.enabled && matches!(r.condition, Condition::NoData { .. }))
            .cloned()
            .collect();
        if rules.is_empty() {
            return Ok(());
        }
        let mut series: Vec<(DeviceId, String, String)> = Vec::new();
        self.store
            .scan_raw(outpost_storage::samples::SERIES, &[], None, |k, _| {
                if let Some((d, name, label)) = outpost_storage::keys::parse_series_name_key(k)
                    && rules.iter().any(|r| r.metric() == Some(name.as_str()))
                {
                    series.push((d, name, label));
                }
                Ok(true)
            })?;
        let mut revoked: HashMap<DeviceId, bool> = HashMap::new();
        for (device, name, label) in series {
            if self.retired.contains(&device) {
                continue;
            }
            let is_revoked = *revoked.entry(device).or_insert_with(|| {
                registry::get(&self.store, device)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.revoked_at_ms.is_some())
            });
            if is_revoked {
                self.retired.insert(device);
                continue;
            }
            let scope = self.scope(device);
            for rule in &rules {
                if rule.metric() != Some(name.as_str())
                    || rule.label_filter().is_some_and(|l| l != label)
                    || !rule.scope.matches(device, &scope)
                {
                    continue;
                }
                self.last_seen
                    .entry((rule.id.clone(), device, label.clone()))
                    .or_insert(now);
            }
        }
        Ok(())
    }

    /// At load: the open alerts of devices revoked meanwhile (or before
    /// this build closed them) close as [`Engine::on_retired`] does. A
    /// registry error is counted and the alert kept (tried at next load).
    fn retire_revoked(&mut self, now: u64) {
        let devices: HashSet<DeviceId> = self.open.values().map(|a| a.device).collect();
        for d in devices {
            match registry::get(&self.store, d) {
                Ok(Some(rec)) if rec.revoked_at_ms.is_some() => self.on_retired(d, now),
                Ok(_) => {}
                Err(e) => self
                    .out
                    .error(op::DEVICE_LOOKUP, None, &format!("device {d}: {e}")),
            }
        }
    }

    /// A device was revoked: its open alerts close quietly
    /// ([`lifecycle::on_device_retired`]: cleared or resolved, `stale:
    /// device revoked`, recorded and sent to central, notified to nobody),
    /// its no-data series are forgotten, and from now on its samples and
    /// status transitions (the offline one the revocation causes first of
    /// all) open nothing.
    pub fn on_retired(&mut self, device: DeviceId, now: u64) {
        self.retired.insert(device);
        self.last_seen.retain(|k, _| k.1 != device);
        for key in self.open.keys_of(device) {
            let Some(a) = self.open.remove(&key) else {
                continue;
            };
            let plan = self.plans.get(&key.0).cloned().unwrap_or_else(|| {
                Arc::new(RulePlan::of(&lifecycle::removed_rule(&a), &HashMap::new()))
            });
            self.settle(a, &plan, now, |a, p, w| {
                lifecycle::on_device_retired(a, p, w, now)
            });
        }
    }

    fn reload_config(&mut self) -> Result<()> {
        let rules: Vec<Rule> = store::list_config(&self.store, ConfigKind::Rule)?;
        let policies: HashMap<String, EscalationPolicy> =
            store::list_config::<EscalationPolicy>(&self.store, ConfigKind::Policy)?
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect();
        self.windows = store::list_config(&self.store, ConfigKind::Window)?;
        let mut by_metric: HashMap<String, Vec<String>> = HashMap::new();
        for r in &rules {
            if let Some(m) = r.metric() {
                by_metric
                    .entry(m.to_string())
                    .or_default()
                    .push(r.id.clone());
            }
        }
        self.by_metric = by_metric
            .into_iter()
            .map(|(m, ids)| (m, Arc::from(ids)))
            .collect();
        self.plans = rules
            .iter()
            .map(|r| (r.id.clone(), Arc::new(RulePlan::of(r, &policies))))
            .collect();
        self.rules = rules
            .into_iter()
            .map(|r| (r.id.clone(), Arc::new(r)))
            .collect();
        self.scopes.cache.clear();
        Ok(())
    }

    /// Sets who is told of written alert changes.
    pub fn set_observer(&mut self, observer: AlertObserver) {
        self.observer = Some(observer);
    }

    /// Open alerts, for tests and the API.
    pub fn open_alerts(&self) -> Vec<&Alert> {
        self.open.values().collect()
    }

    fn take_alert_id(&mut self) -> u64 {
        let id = self.next_alert_id;
        self.next_alert_id += 1;
        id
    }

    fn scope(&mut self, d: DeviceId) -> Arc<DeviceScope> {
        self.scopes.get(d, &self.out).clone()
    }

    /// Runs one decision about `a` (taken out of `open`) with the windows
    /// of its device, applies the outcome and keeps the alert if still open.
    fn settle(
        &mut self,
        a: Alert,
        plan: &RulePlan,
        now: u64,
        decide: impl FnOnce(&mut Alert, &RulePlan, &DeviceWindows<'_>) -> Outcome,
    ) {
        let before = Some(a.state);
        self.settle_from(a, before, plan, now, decide);
    }

    /// [`Engine::settle`] of an alert that was in state `before` (`None`:
    /// a new alert).
    fn settle_from(
        &mut self,
        mut a: Alert,
        before: Option<AlertState>,
        plan: &RulePlan,
        now: u64,
        decide: impl FnOnce(&mut Alert, &RulePlan, &DeviceWindows<'_>) -> Outcome,
    ) {
        let scope = self.scopes.get(a.device, &self.out);
        let windows = DeviceWindows {
            windows: &self.windows,
            scope,
        };
        let outcome = decide(&mut a, plan, &windows);
        let transition = outcome.transition.is_some();
        let written = self.out.apply(&a, outcome, now);
        if written
            && (transition || before != Some(a.state))
            && let Some(o) = &self.observer
        {
            o(&a, before);
        }
        if a.state.is_open() {
            if let Some(d) = timers::next_due(&a, plan) {
                self.due_hint = Some(self.due_hint.map_or(d, |h| h.min(d)));
            }
            self.open.insert(key_of(&a), a);
        }
        if transition {
            self.publish_gauges();
        }
    }

    /// Records a step the state machine took for `a` (in state `before`
    /// until the step was decided).
    fn transition(&mut self, a: Alert, before: AlertState, step: Step, plan: &RulePlan, now: u64) {
        self.settle_from(a, Some(before), plan, now, |a, p, w| {
            lifecycle::transition(a, step, p, w, now)
        });
    }

    /// Records the first step of a new alert `a`.
    fn transition_new(&mut self, a: Alert, step: Step, plan: &RulePlan, now: u64) {
        self.settle_from(a, None, plan, now, |a, p, w| {
            lifecycle::transition(a, step, p, w, now)
        });
    }

    /// Opens a new alert that fires at once.
    fn open_firing(
        &mut self,
        rule: &Rule,
        plan: &RulePlan,
        device: DeviceId,
        label: &str,
        value: Option<f64>,
        now: u64,
    ) {
        let scope = self.scope(device);
        let id = self.take_alert_id();
        let mut a = lifecycle::new_alert(rule, id, device, &scope, label, value, now);
        lifecycle::fire_now(&mut a, now);
        self.transition_new(a, Step::StartFiring, plan, now);
    }

    /// Evaluates freshly stored samples.
    pub fn on_samples(&mut self, batch: SampleBatch, now: u64) {
        for (device, values) in batch {
            if self.retired.contains(&device) {
                continue;
            }
            let scope = self.scope(device);
            for v in values {
                let Some(ids) = self.by_metric.get(&v.name).cloned() else {
                    continue;
                };
                for id in ids.iter() {
                    let (Some(rule), Some(plan)) =
                        (self.rules.get(id).cloned(), self.plans.get(id).cloned())
                    else {
                        continue;
                    };
                    if !rule.enabled
                        || rule.label_filter().is_some_and(|l| l != v.label)
                        || !rule.scope.matches(device, &scope)
                    {
                        continue;
                    }
                    let key = (rule.id.clone(), device, v.label.clone());
                    match &rule.condition {
                        Condition::Threshold { .. } => {
                            let Some(t) = plan.threshold else {
                                continue;
                            };
                            // The clock first: a series silent for longer
                            // than `stale_after` closes its alert (after a
                            // due time that came first) before this sample
                            // counts; it then opens a new one. At most two
                            // steps (fire, then close).
                            for _ in 0..2 {
                                match self.open.remove(&key) {
                                    Some(a) if eval::is_stale(&t, &a, now) => {
                                        self.settle(a, &plan, now, |a, p, w| {
                                            timers::on_tick(a, p, w, now)
                                        });
                                    }
                                    Some(a) => {
                                        self.open.insert(key.clone(), a);
                                        break;
                                    }
                                    None => break,
                                }
                            }
                            if let Some(mut a) = self.open.remove(&key) {
                                let before = a.state;
                                let step = eval::on_sample(&t, &mut a, v.value, now);
                                self.transition(a, before, step, &plan, now);
                            } else {
                                let step = eval::on_sample_new(&t, v.value);
                                if step == Step::None {
                                    continue;
                                }
                                if step == Step::StartFiring {
                                    self.open_firing(
                                        &rule,
                                        &plan,
                                        device,
                                        &v.label,
                                        Some(v.value),
                                        now,
                                    );
                                } else {
                                    let id = self.take_alert_id();
                                    let a = lifecycle::new_alert(
                                        &rule,
                                        id,
                                        device,
                                        &scope,
                                        &v.label,
                                        Some(v.value),
                                        now,
                                    );
                                    self.transition_new(a, step, &plan, now);
                                }
                            }
                        }
                        Condition::NoData { .. } => {
                            self.last_seen.insert(key.clone(), now);
                            if let Some(mut a) = self.open.remove(&key) {
                                let before = a.state;
                                let step = lifecycle::resolve_now(&mut a, Some(v.value), now);
                                self.transition(a, before, step, &plan, now);
                            }
                        }
                        Condition::DeviceOffline => {}
                    }
                }
            }
        }
    }

    /// Reacts to online/offline transitions: device-offline rules, and the
    /// threshold alerts of a device that went offline
    /// ([`lifecycle::on_device_offline`]).
    pub fn on_status(&mut self, ts: Vec<(DeviceId, StatusTransition)>, now: u64) {
        let offline_rules: Vec<Arc<Rule>> = self
            .rules
            .values()
            .filter(|r| r.enabled && matches!(r.condition, Condition::DeviceOffline))
            .cloned()
            .collect();
        for (device, t) in ts {
            if self.retired.contains(&device) {
                continue;
            }
            let scope = self.scope(device);
            for rule in &offline_rules {
                let Some(plan) = self.plans.get(&rule.id).cloned() else {
                    continue;
                };
                if !rule.scope.matches(device, &scope) {
                    continue;
                }
                let key = (rule.id.clone(), device, String::new());
                match lifecycle::on_device_status(t.to, self.open.contains_key(&key)) {
                    OfflineDecision::Fire => {
                        self.open_firing(rule, &plan, device, "", None, now);
                    }
                    OfflineDecision::Resolve => {
                        if let Some(mut a) = self.open.remove(&key) {
                            let before = a.state;
                            let step = lifecycle::resolve_now(&mut a, None, now);
                            self.transition(a, before, step, &plan, now);
                        }
                    }
                    OfflineDecision::Nothing => {}
                }
            }
            if t.to == DeviceStatus::Offline {
                for key in self.open.keys_of(device) {
                    let Some(plan) = self.plans.get(&key.0).cloned() else {
                        continue;
                    };
                    if let Some(mut a) = self.open.remove(&key) {
                        let before = a.state;
                        let step = lifecycle::on_device_offline(&mut a, &plan, now);
                        self.transition(a, before, step, &plan, now);
                    }
                }
            }
        }
    }

    /// Timers: pending alerts reaching their due time, keep_firing_for
    /// expiring, silenced alerts whose window ended, escalation steps and
    /// reminders ([`timers::on_tick`]); no-data series that fell silent.
    pub fn on_tick(&mut self, now: u64) {
        let keys: Vec<Key> = self.open.keys().cloned().collect();
        for key in keys {
            let Some(plan) = self.plans.get(&key.0).cloned() else {
                continue;
            };
            let Some(a) = self.open.remove(&key) else {
                continue;
            };
            self.settle(a, &plan, now, |a, p, w| timers::on_tick(a, p, w, now));
        }
        // No data: series that stopped reporting.
        let nodata: Vec<(Arc<Rule>, u64)> = self
            .rules
            .values()
            .filter(|r| r.enabled)
            .filter_map(|r| match &r.condition {
                Condition::NoData { for_, .. } => Some((r.clone(), for_.as_millis() as u64)),
                _ => None,
            })
            .collect();
        for (rule, for_ms) in nodata {
            let Some(plan) = self.plans.get(&rule.id).cloned() else {
                continue;
            };
            let stale: Vec<Key> = self
                .last_seen
                .iter()
                .filter(|(k, seen)| {
                    k.0 == rule.id
                        && timers::no_data_due(**seen, for_ms, now)
                        && !self.open.contains_key(k)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for (_, device, label) in stale {
                self.open_firing(&rule, &plan, device, &label, None, now);
            }
        }
    }

    /// When the engine must next run `on_tick` at the latest: the earliest
    /// [`timers::next_due`] of the open alerts, and at least every
    /// [`POLL_MS`].
    pub fn next_wake(&self, now: u64) -> u64 {
        let mut next = now + POLL_MS;
        for a in self.open.values() {
            if let Some(p) = self.plans.get(&a.rule_id)
                && let Some(d) = timers::next_due(a, p)
            {
                next = next.min(d);
            }
        }
        next.max(now)
    }

    /// Acknowledges an open alert: no more reminders or escalation.
    pub fn ack(
        &mut self,
        id: u64,
        by: &str,
        comment: &str,
        now: u64,
    ) -> std::result::Result<Alert, String> {
        let Some(key) = self
            .open
            .iter()
            .find(|(_, a)| a.id == id)
            .map(|(k, _)| k.clone())
        else {
            return Err(match store::get_alert(&self.store, id) {
                Ok(Some(a)) => format!(
                    "alert {id} is {} and cannot be acknowledged",
                    a.state.as_str()
                ),
                Ok(None) => format!("no alert {id}"),
                Err(e) => {
                    self.out.error(op::READ_ALERT, Some(id), &e);
                    format!("no alert {id}")
                }
            });
        };
        let Some(mut a) = self.open.remove(&key) else {
            return Err(format!("no alert {id}"));
        };
        // A repeated acknowledgement changes nothing: nothing is written
        // or audited.
        let outcome = lifecycle::acknowledge(&mut a, by, comment, now);
        if !outcome.is_empty() {
            let written = self.out.apply(&a, outcome, now);
            self.out.audit_ack(id, by, comment, now);
            if written && let Some(o) = &self.observer {
                o(&a, Some(a.state));
            }
        }
        self.open.insert(key, a.clone());
        Ok(a)
    }

    /// Applies a configuration change; open alerts of deleted or disabled
    /// rules are retired (pending ones cleared, firing ones resolved and
    /// the channels that heard them fire told).
    pub fn on_reload(&mut self, now: u64) {
        let previous = self.plans.clone();
        if let Err(e) = self.reload_config() {
            self.out.error(op::RELOAD_CONFIG, None, &e);
            return;
        }
        self.retire_orphans(&previous, now);
    }

    /// Retires the open alerts of rules that no longer exist or are
    /// disabled. A deleted rule's alerts use its plan from before the
    /// change (`previous`), so its channels hear the resolution as they
    /// would have after disabling it; with no plan known at all (deleted
    /// while the appliance was down) nobody is told.
    fn retire_orphans(&mut self, previous: &HashMap<String, Arc<RulePlan>>, now: u64) {
        let orphans: Vec<Key> = self
            .open
            .keys()
            .filter(|k| self.rules.get(&k.0).is_none_or(|r| !r.enabled))
            .cloned()
            .collect();
        for key in orphans {
            if let Some(mut a) = self.open.remove(&key) {
                let plan = self
                    .plans
                    .get(&key.0)
                    .or_else(|| previous.get(&key.0))
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(RulePlan::of(&lifecycle::removed_rule(&a), &HashMap::new()))
                    });
                let before = a.state;
                let step = lifecycle::retire(&mut a, now);
                self.transition(a, before, step, &plan, now);
            }
        }
    }

    fn publish_gauges(&self) {
        let firing = self.open.firing();
        self.metrics.alerts_firing.set(firing as i64);
        self.metrics
            .alerts_pending
            .set((self.open.len() - firing) as i64);
    }
}

/// The engine's end of its inputs.
pub struct EngineInputs {
    samples: mpsc::Receiver<(Instant, SampleBatch)>,
    overflow: Arc<Mutex<Overflow>>,
    control: mpsc::UnboundedReceiver<Control>,
}

impl EngineInputs {
    /// Tells the overflow summary which metrics the rules read.
    pub fn watch(&self, e: &Engine) {
        lock(&self.overflow).watch(e.by_metric.keys().cloned().collect());
    }

    /// The summary of what the queue refused, once every batch queued
    /// before it has been taken (the summary is newer than all of them).
    pub fn caught_up(&mut self) -> Option<Summary> {
        let taken = {
            let mut o = lock(&self.overflow);
            if o.is_active() && self.samples.is_empty() {
                o.take()
            } else {
                None
            }
        };
        // Built outside the lock the writer may be waiting on.
        taken.map(Overflow::into_summary)
    }
}

/// The engine's input channels: samples through a queue of `queue`
/// batches (and the overflow summary beyond it), control messages.
pub fn channels(queue: usize, metrics: Arc<Metrics>) -> (EngineHandle, EngineInputs) {
    let (stx, srx) = mpsc::channel(queue.max(1));
    let (ctx, crx) = mpsc::unbounded_channel();
    let overflow = Arc::new(Mutex::new(Overflow::default()));
    (
        EngineHandle {
            samples: stx,
            overflow: overflow.clone(),
            control: ctx,
            metrics,
        },
        EngineInputs {
            samples: srx,
            overflow,
            control: crx,
        },
    )
}

/// Starts the engine on its own thread (`outpost-alerts`, a single-thread
/// runtime for its timers and channels): evaluation does not queue behind
/// the ingest sessions on the shared runtime's workers, and its durable
/// writes (an fsync each) block no other task. `tracker` waits for it to
/// stop after `shutdown`.
pub fn spawn(
    engine: Engine,
    queue: usize,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> anyhow::Result<EngineHandle> {
    let (handle, inputs) = channels(queue, engine.metrics.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("building the alert engine's runtime")?;
    let (done_tx, done_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("outpost-alerts".into())
        .spawn(move || {
            rt.block_on(run(engine, inputs, shutdown));
            let _ = done_tx.send(());
        })
        .context("starting the alert engine's thread")?;
    tracker.spawn(async move {
        // An error: the thread ended without saying so (a panic).
        if done_rx.await.is_err() {
            warn!("the alert engine's thread ended abnormally");
        }
    });
    Ok(handle)
}

impl Engine {
    /// Evaluates the summary of what the queue refused (see
    /// [`super::overflow`]), at `now`.
    pub fn on_summary(&mut self, s: Summary, now: u64) {
        info!(
            batches = s.batches,
            values = s.values,
            series = s.series,
            behind_ms = now.saturating_sub(s.since_ms),
            "alert evaluation caught up with ingest: evaluating the summarized samples"
        );
        if s.lost > 0 {
            warn!(
                lost = s.lost,
                "alert evaluation: values of series beyond the summary's bound were not \
                 evaluated (outpost_alert_inputs_lost_total)"
            );
        }
        self.on_samples(s.batch, now);
    }
}

async fn run(mut e: Engine, mut inputs: EngineInputs, shutdown: CancellationToken) {
    inputs.watch(&e);
    let mut reloaded = false;
    // Catch up with what happened while the appliance was down.
    let mut last_tick = now_ms();
    e.on_tick(last_tick);
    let mut wake_ms = e.next_wake(last_tick);
    e.due_hint = None;
    loop {
        let now = now_ms();
        let due = next_tick(last_tick, wake_ms, e.due_hint);
        let wake = tokio::time::Instant::now() + Duration::from_millis(due.saturating_sub(now));
        tokio::select! {
            Some((handed, batch)) = inputs.samples.recv() => {
                let started = Instant::now();
                e.metrics.alert_stage(AlertStage::Queued, started - handed);
                e.on_samples(batch, now_ms());
                e.metrics.alert_stage(AlertStage::Evaluate, started.elapsed());
            }
            Some(c) = inputs.control.recv() => match c {
                Control::Status(ts) => e.on_status(ts, now_ms()),
                Control::Retired(d) => e.on_retired(d, now_ms()),
                Control::Reload => {
                    debug!("alerting configuration reloaded");
                    e.on_reload(now_ms());
                    reloaded = true;
                }
                Control::Ack { id, by, comment, reply } => {
                    if reply.send(e.ack(id, &by, &comment, now_ms())).is_err() {
                        debug!(alert = id, "the acknowledging request went away before the answer");
                    }
                }
            },
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.cancelled() => return,
        }
        let reload = std::mem::take(&mut reloaded);
        if reload {
            inputs.watch(&e);
        }
        if let Some(summary) = inputs.caught_up() {
            e.on_summary(summary, now_ms());
        }
        // A new configuration can move every due time: tick at once.
        let now = now_ms();
        if reload || now >= next_tick(last_tick, wake_ms, e.due_hint) {
            e.on_tick(now);
            e.due_hint = None;
            last_tick = now;
            wake_ms = e.next_wake(now);
        }
    }
}

#[cfg(test)]
mod tests;
