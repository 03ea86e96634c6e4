//! The alert engine: evaluates every stored sample against the matching
//! rules as it arrives (fed by the ingest writer after each group commit),
//! reacts to online/offline transitions, runs the timers that absence and
//! durations need, persists every transition, and decides notifications
//! (maintenance windows, escalation, reminders).
//!
//! It owns the open alerts in memory and on disk; after a restart it loads
//! them back, so pending alerts fire at their original due time and firing
//! alerts are not announced again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use outpost_proto::DeviceId;
use outpost_proto::messages::MetricValue;
use outpost_storage::Batch;
use outpost_storage::error::Result;
use outpost_storage::model::{AuditEntry, DeviceStatus, StatusTransition};
use outpost_storage::{Store, now_ms, registry};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::eval::{self, Step, Threshold};
use super::model::*;
use super::notify::NotifyHandle;
use super::store::{self, ConfigKind};
use super::windows;
use crate::metrics::{KindLabel, Metrics};

/// Control messages (unbounded: rare and must not be lost).
pub enum Control {
    Status(Vec<(DeviceId, StatusTransition)>),
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

/// Handle to the engine task.
#[derive(Clone)]
pub struct EngineHandle {
    samples: mpsc::Sender<SampleBatch>,
    control: mpsc::UnboundedSender<Control>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").finish_non_exhaustive()
    }
}

impl EngineHandle {
    /// Called by the writer after a commit; never blocks it. A full queue
    /// drops the batch and counts it.
    pub fn samples(&self, batch: SampleBatch) {
        if batch.is_empty() {
            return;
        }
        if self.samples.try_send(batch).is_err() {
            self.metrics.alert_inputs_dropped.inc();
        }
    }

    pub fn status(&self, ts: Vec<(DeviceId, StatusTransition)>) {
        let _ = self.control.send(Control::Status(ts));
    }

    pub fn reload(&self) {
        let _ = self.control.send(Control::Reload);
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

/// Rules shipped with the appliance (created enabled on first start, editable).
pub fn builtin_rules() -> Vec<Rule> {
    let threshold = |metric: &str, t: f64, for_s: u64| Condition::Threshold {
        metric: metric.into(),
        label: None,
        comparison: Comparison::Gt,
        threshold: t,
        for_: Duration::from_secs(for_s),
        keep_firing_for: Duration::ZERO,
    };
    let rule = |id: &str, name: &str, condition: Condition, severity: Severity| Rule {
        id: id.into(),
        name: name.into(),
        condition,
        severity,
        scope: Scope::All,
        enabled: true,
        channels: Vec::new(),
        escalation_policy: None,
        renotify_interval: Duration::ZERO,
        builtin: true,
    };
    vec![
        rule(
            "builtin-device-offline",
            "Device offline",
            Condition::DeviceOffline,
            Severity::Critical,
        ),
        rule(
            "builtin-disk-full",
            "Disk over 90% for 5 minutes",
            threshold("disk_used_percent", 90.0, 300),
            Severity::Warning,
        ),
        rule(
            "builtin-memory-high",
            "Memory over 95% for 10 minutes",
            threshold("memory", 95.0, 600),
            Severity::Warning,
        ),
        rule(
            "builtin-cpu-high",
            "CPU over 95% for 15 minutes",
            threshold("cpu", 95.0, 900),
            Severity::Warning,
        ),
    ]
}

type Key = (String, DeviceId, String);

/// The engine state (see the module docs).
pub struct Engine {
    store: Store,
    metrics: Arc<Metrics>,
    notify: NotifyHandle,
    rules: HashMap<String, Rule>,
    /// Rule ids by the metric they read.
    by_metric: HashMap<String, Vec<String>>,
    policies: HashMap<String, EscalationPolicy>,
    windows: Vec<MaintenanceWindow>,
    open: HashMap<Key, Alert>,
    devices: HashMap<DeviceId, DeviceScope>,
    /// Last time each (metric, device, label) read by a no-data rule reported.
    last_seen: HashMap<Key, u64>,
    next_alert_id: u64,
    next_notification_id: u64,
}

fn threshold_of(rule: &Rule) -> Option<Threshold> {
    match &rule.condition {
        Condition::Threshold {
            comparison,
            threshold,
            for_,
            keep_firing_for,
            ..
        } => Some(Threshold {
            comparison: *comparison,
            threshold: *threshold,
            for_ms: for_.as_millis() as u64,
            keep_firing_for_ms: keep_firing_for.as_millis() as u64,
        }),
        _ => None,
    }
}

impl Engine {
    /// Loads configuration and open alerts; creates the built-in rules on
    /// first start.
    pub fn load(store: Store, metrics: Arc<Metrics>, notify: NotifyHandle) -> Result<Engine> {
        for r in builtin_rules() {
            if store::get_config::<Rule>(&store, ConfigKind::Rule, &r.id)?.is_none() {
                store::put_config(&store, ConfigKind::Rule, &r.id, &r)?;
            }
        }
        let mut e = Engine {
            next_alert_id: store::max_alert_id(&store)? + 1,
            next_notification_id: store::max_notification_id(&store)? + 1,
            store,
            metrics,
            notify,
            rules: HashMap::new(),
            by_metric: HashMap::new(),
            policies: HashMap::new(),
            windows: Vec::new(),
            open: HashMap::new(),
            devices: HashMap::new(),
            last_seen: HashMap::new(),
        };
        e.reload_config()?;
        for a in store::load_open(&e.store)? {
            e.open
                .insert((a.rule_id.clone(), a.device, a.label.clone()), a);
        }
        e.publish_gauges();
        Ok(e)
    }

    fn reload_config(&mut self) -> Result<()> {
        let rules: Vec<Rule> = store::list_config(&self.store, ConfigKind::Rule)?;
        self.by_metric.clear();
        for r in &rules {
            if let Some(m) = r.metric() {
                self.by_metric
                    .entry(m.to_string())
                    .or_default()
                    .push(r.id.clone());
            }
        }
        self.rules = rules.into_iter().map(|r| (r.id.clone(), r)).collect();
        self.policies = store::list_config::<EscalationPolicy>(&self.store, ConfigKind::Policy)?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        self.windows = store::list_config(&self.store, ConfigKind::Window)?;
        self.devices.clear();
        Ok(())
    }

    /// Open alerts, for tests and the API.
    pub fn open_alerts(&self) -> Vec<&Alert> {
        self.open.values().collect()
    }

    fn device(&mut self, d: DeviceId) -> DeviceScope {
        if let Some(s) = self.devices.get(&d) {
            return s.clone();
        }
        let rec = registry::get(&self.store, d).ok().flatten();
        let s = DeviceScope {
            tenant: rec.as_ref().map(|r| r.tenant.clone()).unwrap_or_default(),
            customer: rec.as_ref().map(|r| r.customer.clone()).unwrap_or_default(),
            hostname: rec.as_ref().map(|r| r.hostname.clone()).unwrap_or_default(),
            tags: registry::tags(&self.store, d).unwrap_or_default(),
        };
        self.devices.insert(d, s.clone());
        s
    }

    fn new_alert(
        &mut self,
        rule: &Rule,
        device: DeviceId,
        scope: &DeviceScope,
        label: &str,
        value: Option<f64>,
        now: u64,
    ) -> Alert {
        let id = self.next_alert_id;
        self.next_alert_id += 1;
        let (comparison, threshold, for_ms) = match &rule.condition {
            Condition::Threshold {
                comparison,
                threshold,
                for_,
                ..
            } => (Some(*comparison), Some(*threshold), for_.as_millis() as u64),
            _ => (None, None, 0),
        };
        Alert {
            id,
            rule_id: rule.id.clone(),
            rule_name: rule.name.clone(),
            severity: rule.severity,
            device,
            hostname: scope.hostname.clone(),
            tenant: scope.tenant.clone(),
            customer: scope.customer.clone(),
            metric: rule.metric().unwrap_or("device_status").to_string(),
            label: label.to_string(),
            state: AlertState::Pending,
            started_ms: now,
            due_ms: now + for_ms,
            fired_ms: None,
            resolved_ms: None,
            value,
            threshold,
            comparison,
            clearing_since_ms: None,
            acknowledged_by: None,
            ack_comment: None,
            acknowledged_ms: None,
            silenced_by: None,
            notified: false,
            last_notified_ms: None,
            notify_since_ms: None,
            escalation_step: 0,
            notifications_sent: 0,
        }
    }

    /// Evaluates freshly stored samples.
    pub fn on_samples(&mut self, batch: SampleBatch, now: u64) {
        for (device, values) in batch {
            let scope = self.device(device);
            for v in values {
                let Some(ids) = self.by_metric.get(&v.name).cloned() else {
                    continue;
                };
                for id in ids {
                    let Some(rule) = self.rules.get(&id).cloned() else {
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
                            let Some(t) = threshold_of(&rule) else {
                                continue;
                            };
                            if let Some(mut a) = self.open.remove(&key) {
                                let step = eval::on_sample(&t, &mut a, v.value, now);
                                self.apply(&rule, a, step, now);
                            } else {
                                let step = eval::on_sample_new(&t, v.value);
                                if step == Step::None {
                                    continue;
                                }
                                let mut a = self.new_alert(
                                    &rule,
                                    device,
                                    &scope,
                                    &v.label,
                                    Some(v.value),
                                    now,
                                );
                                if step == Step::StartFiring {
                                    a.state = AlertState::Firing;
                                    a.fired_ms = Some(now);
                                }
                                self.apply(&rule, a, step, now);
                            }
                        }
                        Condition::NoData { .. } => {
                            self.last_seen.insert(key.clone(), now);
                            if let Some(mut a) = self.open.remove(&key) {
                                a.state = AlertState::Resolved;
                                a.resolved_ms = Some(now);
                                a.value = Some(v.value);
                                self.apply(&rule, a, Step::Resolve, now);
                            }
                        }
                        Condition::DeviceOffline => {}
                    }
                }
            }
        }
    }

    /// Reacts to online/offline transitions.
    pub fn on_status(&mut self, ts: Vec<(DeviceId, StatusTransition)>, now: u64) {
        let offline_rules: Vec<Rule> = self
            .rules
            .values()
            .filter(|r| r.enabled && matches!(r.condition, Condition::DeviceOffline))
            .cloned()
            .collect();
        for (device, t) in ts {
            let scope = self.device(device);
            for rule in &offline_rules {
                if !rule.scope.matches(device, &scope) {
                    continue;
                }
                let key = (rule.id.clone(), device, String::new());
                match (t.to, self.open.remove(&key)) {
                    (DeviceStatus::Offline, None) => {
                        let mut a = self.new_alert(rule, device, &scope, "", None, now);
                        a.state = AlertState::Firing;
                        a.fired_ms = Some(now);
                        self.apply(rule, a, Step::StartFiring, now);
                    }
                    (DeviceStatus::Online, Some(mut a)) => {
                        a.state = AlertState::Resolved;
                        a.resolved_ms = Some(now);
                        self.apply(rule, a, Step::Resolve, now);
                    }
                    (_, Some(a)) => {
                        self.open.insert(key, a);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Timers: pending alerts reaching their due time, keep_firing_for
    /// expiring, no-data, silenced alerts whose window ended, escalation
    /// steps and reminders.
    pub fn on_tick(&mut self, now: u64) {
        let keys: Vec<Key> = self.open.keys().cloned().collect();
        for key in keys {
            let Some(rule) = self.rules.get(&key.0).cloned() else {
                continue;
            };
            let Some(mut a) = self.open.remove(&key) else {
                continue;
            };
            if let Some(t) = threshold_of(&rule) {
                let step = eval::on_timer(&t, &mut a, now);
                if step != Step::None {
                    self.apply(&rule, a, step, now);
                    continue;
                }
            }
            if a.state == AlertState::Firing {
                self.notification_timers(&rule, &mut a, now);
            }
            self.open.insert(key, a);
        }
        // No data: series that stopped reporting.
        let nodata: Vec<Rule> = self
            .rules
            .values()
            .filter(|r| r.enabled && matches!(r.condition, Condition::NoData { .. }))
            .cloned()
            .collect();
        for rule in nodata {
            let Condition::NoData { for_, .. } = &rule.condition else {
                continue;
            };
            let stale: Vec<(Key, u64)> = self
                .last_seen
                .iter()
                .filter(|(k, seen)| {
                    k.0 == rule.id
                        && now.saturating_sub(**seen) >= for_.as_millis() as u64
                        && !self.open.contains_key(*k)
                })
                .map(|(k, s)| (k.clone(), *s))
                .collect();
            for ((_, device, label), _) in stale {
                let scope = self.device(device);
                let mut a = self.new_alert(&rule, device, &scope, &label, None, now);
                a.state = AlertState::Firing;
                a.fired_ms = Some(now);
                self.apply(&rule, a, Step::StartFiring, now);
            }
        }
    }

    /// When the engine must next run `on_tick` at the latest.
    pub fn next_wake(&self, now: u64) -> u64 {
        let mut next = now + 1000;
        for a in self.open.values() {
            if let Some(t) = self.rules.get(&a.rule_id).and_then(threshold_of)
                && let Some(d) = eval::next_due(&t, a)
            {
                next = next.min(d);
            }
        }
        next.max(now)
    }

    fn active_window(&mut self, device: DeviceId, now: u64) -> Option<String> {
        let scope = self.device(device);
        windows::active_window(
            self.windows
                .iter()
                .filter(|w| w.scope.matches(device, &scope)),
            WindowEffect::SuppressNotifications,
            now,
        )
        .map(|w| w.id.clone())
    }

    /// (after, channels) steps of a rule: its escalation policy, or one
    /// immediate step with the rule's channels.
    fn steps(&self, rule: &Rule) -> Vec<(u64, Vec<String>)> {
        match rule
            .escalation_policy
            .as_ref()
            .and_then(|p| self.policies.get(p))
        {
            Some(p) => p
                .steps
                .iter()
                .map(|s| (s.after.as_millis() as u64, s.channels.clone()))
                .collect(),
            None => vec![(0, rule.channels.clone())],
        }
    }

    fn notified_channels(&self, rule: &Rule, a: &Alert) -> Vec<String> {
        let mut out: Vec<String> = self
            .steps(rule)
            .into_iter()
            .take(a.escalation_step)
            .flat_map(|(_, c)| c)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Escalation, reminders and the end of silencing windows for a firing alert.
    fn notification_timers(&mut self, rule: &Rule, a: &mut Alert, now: u64) {
        let mut batch = self.store.batch();
        let mut queued = Vec::new();
        let mut changed = false;
        if let Some(win) = &a.silenced_by {
            if self.active_window(a.device, now).is_some() {
                return;
            }
            // The window is over and the alert still fires: announce it now.
            let _ = self.event(
                &mut batch,
                a,
                "unsilenced",
                &format!("maintenance window {win} ended"),
                now,
            );
            a.silenced_by = None;
            a.notify_since_ms = Some(now);
            changed = true;
        }
        if a.acknowledged_by.is_some() {
            if changed {
                self.commit(batch, a, queued);
            }
            return;
        }
        let since = a.notify_since_ms.unwrap_or(a.fired_ms.unwrap_or(now));
        let steps = self.steps(rule);
        while a.escalation_step < steps.len() && since + steps[a.escalation_step].0 <= now {
            let event = if a.escalation_step == 0 {
                NotifyEvent::Firing
            } else {
                NotifyEvent::Escalation
            };
            let channels = steps[a.escalation_step].1.clone();
            a.escalation_step += 1;
            let _ = self.event(
                &mut batch,
                a,
                if event == NotifyEvent::Firing {
                    "notified"
                } else {
                    "escalated"
                },
                &format!("step {} → {}", a.escalation_step, channels.join(",")),
                now,
            );
            self.queue(&mut batch, &mut queued, a, event, &channels, now);
            changed = true;
        }
        if !rule.renotify_interval.is_zero()
            && a.notified
            && let Some(last) = a.last_notified_ms
            && now >= last + rule.renotify_interval.as_millis() as u64
        {
            let channels = self.notified_channels(rule, a);
            self.queue(
                &mut batch,
                &mut queued,
                a,
                NotifyEvent::Reminder,
                &channels,
                now,
            );
            changed = true;
        }
        if changed {
            self.commit(batch, a, queued);
        }
    }

    fn event(&self, b: &mut Batch, a: &Alert, event: &str, detail: &str, now: u64) -> Result<()> {
        store::add_event(
            b,
            &AlertEvent {
                alert_id: a.id,
                at_ms: now,
                event: event.into(),
                value: a.value,
                detail: detail.into(),
            },
        )?;
        // Lifecycle transitions also go up to central (in the same batch, so
        // they are pending for the uplink exactly when they are durable
        // here); a no-op while the site is not joined.
        use outpost_uplink::batch::{AlertState as UpState, AlertTransition};
        let state = match event {
            "pending" => Some(UpState::Pending),
            "firing" => Some(UpState::Firing),
            "resolved" | "cleared" => Some(UpState::Resolved),
            _ => None,
        };
        if let Some(state) = state {
            let t = AlertTransition {
                alert_id: a.id,
                device: Some(a.device),
                rule: a.rule_name.clone(),
                severity: a.severity,
                state,
                at_ms: now,
                message: if detail.is_empty() {
                    format!("{} on {}", a.rule_name, a.hostname)
                } else {
                    format!("{} on {}: {detail}", a.rule_name, a.hostname)
                },
                value: a.value,
            };
            outpost_uplink::outbox::alert_transition_into(&self.store, b, &t).map_err(
                |e| match e {
                    outpost_uplink::outbox::OutboxError::Storage(s) => s,
                    other => outpost_storage::error::StorageError::Invalid(format!(
                        "uplink alert transition: {other}"
                    )),
                },
            )?;
        }
        Ok(())
    }

    fn queue(
        &mut self,
        b: &mut Batch,
        out: &mut Vec<Notification>,
        a: &mut Alert,
        event: NotifyEvent,
        channels: &[String],
        now: u64,
    ) {
        for ch in channels {
            let n = Notification {
                id: self.next_notification_id,
                channel_id: ch.clone(),
                event,
                alert: a.clone(),
                created_ms: now,
                attempts: 0,
                next_attempt_ms: now,
                last_error: None,
            };
            self.next_notification_id += 1;
            if let Err(e) = store::queue_notification(b, &n) {
                warn!(error = %e, "queueing a notification failed");
                continue;
            }
            out.push(n);
        }
        if !channels.is_empty() {
            a.notified = true;
            a.last_notified_ms = Some(now);
            a.notifications_sent += channels.len() as u64;
        }
    }

    fn commit(&mut self, mut batch: Batch, a: &Alert, queued: Vec<Notification>) {
        if let Err(e) = store::save_alert(&mut batch, a).and_then(|_| self.store.write(batch)) {
            self.metrics.write_errors.inc();
            warn!(error = %e, alert = a.id, "persisting an alert transition failed");
            return;
        }
        for n in queued {
            self.notify.submit(n);
        }
    }

    /// Persists a transition and decides its notifications; keeps open alerts.
    fn apply(&mut self, rule: &Rule, mut a: Alert, step: Step, now: u64) {
        let mut batch = self.store.batch();
        let mut queued = Vec::new();
        let label = match step {
            Step::None => {
                self.open
                    .insert((a.rule_id.clone(), a.device, a.label.clone()), a);
                return;
            }
            Step::StartPending => "pending",
            Step::StartFiring | Step::Fire => "firing",
            Step::Clear => "cleared",
            Step::Resolve => "resolved",
            Step::StartClearing => "clearing",
            Step::StopClearing => "flap_suppressed",
        };
        let detail = format!(
            "{} {}",
            rule.name,
            a.value.map(|v| format!("value={v}")).unwrap_or_default()
        );
        let _ = self.event(&mut batch, &a, label, detail.trim(), now);
        self.metrics
            .alert_transitions
            .get_or_create(&KindLabel { kind: label.into() })
            .inc();
        match step {
            Step::StartFiring | Step::Fire => {
                info!(alert = a.id, rule = %rule.id, device = %a.device, label = %a.label, value = ?a.value, "alert firing");
                if let Some(win) = self.active_window(a.device, now) {
                    let _ = self.event(
                        &mut batch,
                        &a,
                        "silenced",
                        &format!("maintenance window {win}"),
                        now,
                    );
                    a.silenced_by = Some(win);
                } else {
                    a.notify_since_ms = Some(now);
                    // Immediate steps now; later steps from the timers.
                    let steps = self.steps(rule);
                    while a.escalation_step < steps.len() && steps[a.escalation_step].0 == 0 {
                        let channels = steps[a.escalation_step].1.clone();
                        let event = if a.escalation_step == 0 {
                            NotifyEvent::Firing
                        } else {
                            NotifyEvent::Escalation
                        };
                        a.escalation_step += 1;
                        self.queue(&mut batch, &mut queued, &mut a, event, &channels, now);
                    }
                }
            }
            Step::Resolve => {
                info!(alert = a.id, rule = %rule.id, device = %a.device, "alert resolved");
                if a.notified {
                    let channels = self.notified_channels(rule, &a);
                    self.queue(
                        &mut batch,
                        &mut queued,
                        &mut a,
                        NotifyEvent::Resolved,
                        &channels,
                        now,
                    );
                }
            }
            _ => {}
        }
        self.commit(batch, &a, queued);
        if a.state.is_open() {
            self.open
                .insert((a.rule_id.clone(), a.device, a.label.clone()), a);
        }
        self.publish_gauges();
    }

    /// Acknowledges an open alert: no more reminders or escalation.
    pub fn ack(
        &mut self,
        id: u64,
        by: &str,
        comment: &str,
        now: u64,
    ) -> std::result::Result<Alert, String> {
        let key = self
            .open
            .iter()
            .find(|(_, a)| a.id == id)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| match store::get_alert(&self.store, id) {
                Ok(Some(a)) => format!(
                    "alert {id} is {} and cannot be acknowledged",
                    a.state.as_str()
                ),
                _ => format!("no alert {id}"),
            })?;
        let Some(mut a) = self.open.remove(&key) else {
            return Err(format!("no alert {id}"));
        };
        a.acknowledged_by = Some(by.to_string());
        a.ack_comment = Some(comment.to_string());
        a.acknowledged_ms = Some(now);
        let mut batch = self.store.batch();
        let _ = self.event(
            &mut batch,
            &a,
            "acknowledged",
            &format!("by {by}: {comment}"),
            now,
        );
        self.commit(batch, &a, Vec::new());
        let _ = registry::audit(
            &self.store,
            &AuditEntry {
                at_ms: now,
                actor: by.into(),
                action: "alert.ack".into(),
                target: id.to_string(),
                detail: comment.into(),
            },
        );
        self.open.insert(key, a.clone());
        Ok(a)
    }

    /// Applies a configuration change; open alerts of deleted or disabled
    /// rules are resolved.
    pub fn on_reload(&mut self, now: u64) {
        if let Err(e) = self.reload_config() {
            warn!(error = %e, "reloading alerting configuration failed");
            return;
        }
        let orphans: Vec<Key> = self
            .open
            .keys()
            .filter(|k| self.rules.get(&k.0).is_none_or(|r| !r.enabled))
            .cloned()
            .collect();
        for key in orphans {
            if let Some(mut a) = self.open.remove(&key) {
                let rule = self.rules.get(&key.0).cloned().unwrap_or_else(|| Rule {
                    id: a.rule_id.clone(),
                    name: a.rule_name.clone(),
                    condition: Condition::DeviceOffline,
                    severity: a.severity,
                    scope: Scope::All,
                    enabled: false,
                    channels: Vec::new(),
                    escalation_policy: None,
                    renotify_interval: Duration::ZERO,
                    builtin: false,
                });
                a.state = if a.state == AlertState::Pending {
                    AlertState::Cleared
                } else {
                    AlertState::Resolved
                };
                a.resolved_ms = Some(now);
                let step = if a.state == AlertState::Cleared {
                    Step::Clear
                } else {
                    Step::Resolve
                };
                self.apply(&rule, a, step, now);
            }
        }
    }

    fn publish_gauges(&self) {
        let firing = self
            .open
            .values()
            .filter(|a| a.state == AlertState::Firing)
            .count();
        self.metrics.alerts_firing.set(firing as i64);
        self.metrics
            .alerts_pending
            .set((self.open.len() - firing) as i64);
    }
}

/// Starts the engine task.
pub fn spawn(
    engine: Engine,
    queue: usize,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> EngineHandle {
    let (stx, srx) = mpsc::channel(queue.max(1));
    let (ctx, crx) = mpsc::unbounded_channel();
    let handle = EngineHandle {
        samples: stx,
        control: ctx,
        metrics: engine.metrics.clone(),
    };
    tracker.spawn(run(engine, srx, crx, shutdown));
    handle
}

async fn run(
    mut e: Engine,
    mut samples: mpsc::Receiver<SampleBatch>,
    mut control: mpsc::UnboundedReceiver<Control>,
    shutdown: CancellationToken,
) {
    // Catch up with what happened while the appliance was down.
    e.on_tick(now_ms());
    loop {
        let now = now_ms();
        let wake = tokio::time::Instant::now()
            + Duration::from_millis(e.next_wake(now).saturating_sub(now));
        tokio::select! {
            Some(batch) = samples.recv() => e.on_samples(batch, now_ms()),
            Some(c) = control.recv() => match c {
                Control::Status(ts) => e.on_status(ts, now_ms()),
                Control::Reload => {
                    debug!("alerting configuration reloaded");
                    e.on_reload(now_ms());
                }
                Control::Ack { id, by, comment, reply } => {
                    let _ = reply.send(e.ack(id, &by, &comment, now_ms()));
                }
            },
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.cancelled() => return,
        }
        e.on_tick(now_ms());
    }
}
