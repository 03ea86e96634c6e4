//! The vocabulary between the alert engine and its pure decision core
//! ([`super::lifecycle`], [`super::timers`], [`super::eval`]): what a rule
//! means to the decisions ([`RulePlan`]), which maintenance windows may
//! silence a device ([`DeviceWindows`]), and what a decision asks the engine
//! to do ([`Outcome`]).
//!
//! No I/O and no clock here: the engine builds these from its state, passes
//! the time in, and applies the outcome ([`super::apply`]). Nothing in this
//! module may touch the store, the notifier or the metrics.

use std::collections::HashMap;

use outpost_proto::{CustomerId, TenantId};

use outpost_proto::DeviceId;

use super::eval::Threshold;
use super::model::{
    Alert, DeviceScope, EscalationPolicy, EventKind, MaintenanceWindow, NotifyEvent, Rule,
    WindowEffect,
};
use super::windows;

/// One escalation step, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanStep {
    /// Time after notifications started (firing, or the end of the
    /// silencing window) before this step notifies.
    pub after_ms: u64,
    pub channels: Vec<String>,
}

/// A rule as the decisions need it: resolved once per configuration load.
#[derive(Debug, Clone, PartialEq)]
pub struct RulePlan {
    /// The rule's current name (transition details quote it).
    pub name: String,
    /// Threshold parameters (threshold rules only).
    pub threshold: Option<Threshold>,
    /// Its escalation policy's steps, or one immediate step with the rule's
    /// own channels (also when the policy it names does not exist).
    pub steps: Vec<PlanStep>,
    /// Re-notify an unacknowledged firing alert this often (0 = never).
    pub renotify_ms: u64,
}

impl RulePlan {
    pub fn of(rule: &Rule, policies: &HashMap<String, EscalationPolicy>) -> RulePlan {
        let steps = match rule
            .escalation_policy
            .as_ref()
            .and_then(|p| policies.get(p))
        {
            Some(p) => p
                .steps
                .iter()
                .map(|s| PlanStep {
                    after_ms: s.after.as_millis() as u64,
                    channels: s.channels.clone(),
                })
                .collect(),
            None => vec![PlanStep {
                after_ms: 0,
                channels: rule.channels.clone(),
            }],
        };
        RulePlan {
            name: rule.name.clone(),
            threshold: super::eval::threshold_of(rule),
            steps,
            renotify_ms: rule.renotify_interval.as_millis() as u64,
        }
    }

    /// The channels the first `steps_taken` steps notified (reminders and
    /// the resolved notification go to them), sorted, without duplicates.
    pub fn notified_channels(&self, steps_taken: usize) -> Vec<String> {
        let mut out: Vec<String> = self
            .steps
            .iter()
            .take(steps_taken)
            .flat_map(|s| s.channels.iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// The maintenance windows that may silence one device's alerts.
#[derive(Debug, Clone, Copy)]
pub struct DeviceWindows<'a> {
    /// Every configured window (each is matched against `scope`).
    pub windows: &'a [MaintenanceWindow],
    /// What is known about the device to match the windows' scopes.
    pub scope: &'a DeviceScope,
}

static NO_SCOPE: DeviceScope = DeviceScope {
    tenant: TenantId::empty(),
    customer: CustomerId::empty(),
    tags: Vec::new(),
    hostname: String::new(),
};

impl DeviceWindows<'static> {
    /// No window at all.
    pub fn none() -> DeviceWindows<'static> {
        DeviceWindows {
            windows: &[],
            scope: &NO_SCOPE,
        }
    }
}

impl DeviceWindows<'_> {
    /// The id of the first window that covers `device` at `at_ms` and
    /// suppresses notifications.
    pub fn silencing(&self, device: DeviceId, at_ms: u64) -> Option<String> {
        windows::active_window(
            self.windows
                .iter()
                .filter(|w| w.scope.matches(device, self.scope)),
            WindowEffect::SuppressNotifications,
            at_ms,
        )
        .map(|w| w.id.clone())
    }
}

/// One thing a decision asks the engine to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Add an event to the alert's history (and, for lifecycle transitions,
    /// send it up to central), with the alert's final value.
    Record { kind: EventKind, detail: String },
    /// Queue one notification per channel carrying `alert`: the alert as it
    /// was when the decision notified (webhook and e-mail bodies show it).
    Notify {
        event: NotifyEvent,
        channels: Vec<String>,
        alert: Box<Alert>,
    },
}

/// What one decision about one alert amounts to. Empty: nothing to do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The lifecycle transition, if any (counted in
    /// `outpost_alert_transitions_total{kind}` and logged).
    pub transition: Option<EventKind>,
    /// Events to record and notifications to queue, in order.
    pub actions: Vec<Action>,
    /// The alert record changed and must be written.
    pub save: bool,
}

impl Outcome {
    /// Nothing to write, record or notify.
    pub fn is_empty(&self) -> bool {
        !self.save && self.actions.is_empty()
    }

    pub(super) fn record(&mut self, kind: EventKind, detail: impl Into<String>) {
        self.actions.push(Action::Record {
            kind,
            detail: detail.into(),
        });
        self.save = true;
    }

    /// Notifies `channels` with the alert as it is now, then counts the
    /// notification in the alert (the snapshot does not include its own
    /// count). No channels: nothing happens.
    pub(super) fn notify(
        &mut self,
        a: &mut Alert,
        event: NotifyEvent,
        channels: Vec<String>,
        now_ms: u64,
    ) {
        if channels.is_empty() {
            return;
        }
        let n = channels.len() as u64;
        self.actions.push(Action::Notify {
            event,
            channels,
            alert: Box::new(a.clone()),
        });
        a.notified = true;
        a.last_notified_ms = Some(now_ms);
        a.notifications_sent += n;
        self.save = true;
    }

    /// The kinds of the events to record, in order.
    pub fn records(&self) -> Vec<EventKind> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Record { kind, .. } => Some(*kind),
                Action::Notify { .. } => None,
            })
            .collect()
    }

    /// The notifications to queue: (event, channels), in order.
    pub fn notifications(&self) -> Vec<(NotifyEvent, Vec<String>)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Notify {
                    event, channels, ..
                } => Some((*event, channels.clone())),
                Action::Record { .. } => None,
            })
            .collect()
    }
}
