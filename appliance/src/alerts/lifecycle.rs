//! Pure lifecycle decisions of one alert: what a new alert looks like, what
//! each transition records and notifies, device online/offline (and what
//! going offline does to threshold alerts), no-data resolution,
//! acknowledgement, and retiring the alerts of removed rules and revoked
//! devices.
//!
//! * A firing alert inside a maintenance window is recorded `silenced` and
//!   not notified ([`super::timers`] announces it when the window ends);
//!   otherwise the escalation steps due at once notify now, later ones from
//!   the timers.
//! * A resolved alert tells the channels that heard it fire, also when it
//!   resolved `stale` (its series stopped reporting, see [`super::eval`]).
//! * Acknowledging is idempotent: the first acknowledgement is recorded; a
//!   repeated one changes nothing, except that a new comment replaces the
//!   comment (recorded `commented`).
//!
//! Everything here takes the time as a parameter and returns an
//! [`Outcome`]; it must not touch the store, the notifier, the metrics or
//! the clock (the engine does, in [`super::apply`]).

use outpost_proto::DeviceId;
use outpost_storage::model::DeviceStatus;

use super::decision::{DeviceWindows, Outcome, RulePlan};
use super::eval::Step;
use super::model::{Alert, AlertState, Condition, DeviceScope, EventKind, NotifyEvent, Rule};

/// A new alert for `rule` on (`device`, `label`), pending until its `for`
/// elapses (see [`fire_now`] for alerts that fire at once).
pub fn new_alert(
    rule: &Rule,
    id: u64,
    device: DeviceId,
    scope: &DeviceScope,
    label: &str,
    value: Option<f64>,
    now_ms: u64,
) -> Alert {
    let (comparison, threshold, for_ms, heard_ms) = match &rule.condition {
        Condition::Threshold {
            comparison,
            threshold,
            for_,
            ..
        } => (
            Some(*comparison),
            Some(*threshold),
            for_.as_millis() as u64,
            Some(now_ms),
        ),
        _ => (None, None, 0, None),
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
        started_ms: now_ms,
        due_ms: now_ms + for_ms,
        fired_ms: None,
        resolved_ms: None,
        value,
        threshold,
        comparison,
        clearing_since_ms: None,
        heard_ms,
        stale: None,
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

/// A new alert fires at once (`for` = 0, device offline, no data): the
/// caller then applies [`Step::StartFiring`].
pub fn fire_now(a: &mut Alert, now_ms: u64) {
    a.state = AlertState::Firing;
    a.fired_ms = Some(now_ms);
}

/// The history event of a lifecycle step (`None`: nothing happened).
pub fn transition_kind(step: Step) -> Option<EventKind> {
    match step {
        Step::None => None,
        Step::StartPending => Some(EventKind::Pending),
        Step::StartFiring | Step::Fire => Some(EventKind::Firing),
        Step::Clear | Step::ClearStale => Some(EventKind::Cleared),
        Step::Resolve | Step::ResolveStale => Some(EventKind::Resolved),
        Step::StartClearing => Some(EventKind::Clearing),
        Step::StopClearing => Some(EventKind::FlapSuppressed),
    }
}

/// Records a step the state machine took (`a` already shows its result)
/// and decides its notifications.
pub fn transition(
    a: &mut Alert,
    step: Step,
    plan: &RulePlan,
    windows: &DeviceWindows<'_>,
    now_ms: u64,
) -> Outcome {
    let Some(kind) = transition_kind(step) else {
        return Outcome::default();
    };
    let mut out = Outcome {
        transition: Some(kind),
        save: true,
        ..Outcome::default()
    };
    let mut detail = format!(
        "{} {}",
        plan.name,
        a.value.map(|v| format!("value={v}")).unwrap_or_default()
    )
    .trim()
    .to_string();
    if step.is_stale()
        && let Some(why) = &a.stale
    {
        detail.push_str(&format!(" (stale: {why})"));
    }
    out.record(kind, detail);
    match step {
        Step::StartFiring | Step::Fire => {
            if let Some(win) = windows.silencing(a.device, now_ms) {
                out.record(EventKind::Silenced, format!("maintenance window {win}"));
                a.silenced_by = Some(win);
            } else {
                a.notify_since_ms = Some(now_ms);
                // The steps due at once notify now (no `notified` event:
                // the `firing` event says it); later steps from the timers.
                while let Some(s) = plan.steps.get(a.escalation_step)
                    && s.after_ms == 0
                {
                    let event = if a.escalation_step == 0 {
                        NotifyEvent::Firing
                    } else {
                        NotifyEvent::Escalation
                    };
                    a.escalation_step += 1;
                    out.notify(a, event, s.channels.clone(), now_ms);
                }
            }
        }
        Step::Resolve | Step::ResolveStale if a.notified => {
            let channels = plan.notified_channels(a.escalation_step);
            out.notify(a, NotifyEvent::Resolved, channels, now_ms);
        }
        _ => {}
    }
    out
}

/// The alert resolves now (its device came back, its series reported
/// again); `value`, if any, is the value that resolved it.
pub fn resolve_now(a: &mut Alert, value: Option<f64>, now_ms: u64) -> Step {
    a.state = AlertState::Resolved;
    a.resolved_ms = Some(now_ms);
    if value.is_some() {
        a.value = value;
    }
    Step::Resolve
}

/// Its rule was deleted or disabled: a pending alert clears, a firing one
/// resolves.
pub fn retire(a: &mut Alert, now_ms: u64) -> Step {
    a.resolved_ms = Some(now_ms);
    if a.state == AlertState::Pending {
        a.state = AlertState::Cleared;
        Step::Clear
    } else {
        a.state = AlertState::Resolved;
        Step::Resolve
    }
}

/// Why the alerts of a revoked device closed ([`Alert::stale`]).
pub const DEVICE_REVOKED: &str = "device revoked";

/// Its device was revoked: the alert closes for good, quietly — a pending
/// one clears, a firing one resolves, both `stale` with
/// [`DEVICE_REVOKED`] — recorded (and sent up to central) but notified to
/// nobody: the device did not recover, it is gone, and the engine opens
/// nothing for it again.
pub fn on_device_retired(
    a: &mut Alert,
    plan: &RulePlan,
    windows: &DeviceWindows<'_>,
    now_ms: u64,
) -> Outcome {
    a.resolved_ms = Some(now_ms);
    a.stale = Some(DEVICE_REVOKED.into());
    let step = if a.state == AlertState::Pending {
        a.state = AlertState::Cleared;
        Step::ClearStale
    } else {
        a.state = AlertState::Resolved;
        Step::ResolveStale
    };
    let mut out = transition(a, step, plan, windows, now_ms);
    out.actions
        .retain(|x| !matches!(x, super::decision::Action::Notify { .. }));
    out
}

/// The stand-in for a rule that no longer exists, to retire its alerts
/// (no channels: nobody is told).
pub fn removed_rule(a: &Alert) -> Rule {
    Rule {
        id: a.rule_id.clone(),
        name: a.rule_name.clone(),
        condition: Condition::DeviceOffline,
        severity: a.severity,
        scope: Default::default(),
        enabled: false,
        channels: Vec::new(),
        escalation_policy: None,
        renotify_interval: std::time::Duration::ZERO,
        builtin: false,
    }
}

/// Acknowledges an open alert: from now on it neither escalates nor
/// reminds (see [`super::timers`]).
///
/// Idempotent: acknowledging an acknowledged alert keeps the first
/// acknowledgement (who, when, and its comment when the new one has none)
/// and records nothing (an empty outcome: nothing to write or audit). Only
/// a new, different comment changes it: the comment is replaced and
/// recorded as `commented` by whoever sent it.
pub fn acknowledge(a: &mut Alert, by: &str, comment: &str, now_ms: u64) -> Outcome {
    let mut out = Outcome::default();
    if a.acknowledged_by.is_some() {
        let comment = comment.trim();
        if !comment.is_empty() && a.ack_comment.as_deref() != Some(comment) {
            a.ack_comment = Some(comment.to_string());
            out.record(EventKind::Commented, format!("by {by}: {comment}"));
        }
        return out;
    }
    a.acknowledged_by = Some(by.to_string());
    a.ack_comment = Some(comment.to_string());
    a.acknowledged_ms = Some(now_ms);
    out.record(EventKind::Acknowledged, format!("by {by}: {comment}"));
    out
}

/// Its device went offline: a pending threshold alert clears `stale` at
/// once (its `for` can no longer be satisfied by samples received during
/// the window); a firing one is held (the device-offline alert covers the
/// device) until its series is stale ([`super::eval::on_timer`]), so a
/// short disconnection neither resolves nor re-fires it. Other alerts are
/// not concerned.
pub fn on_device_offline(a: &mut Alert, plan: &RulePlan, now_ms: u64) -> Step {
    if plan.threshold.is_none() || a.state != AlertState::Pending {
        return Step::None;
    }
    a.state = AlertState::Cleared;
    a.resolved_ms = Some(now_ms);
    a.stale = Some("device offline".into());
    Step::ClearStale
}

/// What a device-offline rule does when a device changes status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineDecision {
    /// Open a new alert, firing at once.
    Fire,
    /// Resolve the open alert.
    Resolve,
    /// Nothing (already firing, or nothing open).
    Nothing,
}

/// A device-offline rule sees `device` go `to`; `open`: it has an open
/// alert for the device.
pub fn on_device_status(to: DeviceStatus, open: bool) -> OfflineDecision {
    match (to, open) {
        (DeviceStatus::Offline, false) => OfflineDecision::Fire,
        (DeviceStatus::Online, true) => OfflineDecision::Resolve,
        _ => OfflineDecision::Nothing,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::alerts::decision::PlanStep;
    use crate::alerts::model::{
        Comparison, MaintenanceWindow, Schedule, Scope, Severity, WindowEffect,
    };

    pub(crate) fn rule(condition: Condition, channels: &[&str]) -> Rule {
        Rule {
            id: "r".into(),
            name: "cpu high".into(),
            condition,
            severity: Severity::Critical,
            scope: Scope::All,
            enabled: true,
            channels: channels.iter().map(|c| c.to_string()).collect(),
            escalation_policy: None,
            renotify_interval: Duration::ZERO,
            builtin: false,
        }
    }

    pub(crate) fn cpu_over_90_for(for_s: u64) -> Condition {
        Condition::Threshold {
            metric: "cpu".into(),
            label: None,
            comparison: Comparison::Gt,
            threshold: 90.0,
            for_: Duration::from_secs(for_s),
            keep_firing_for: Duration::ZERO,
            stale_after: None,
        }
    }

    pub(crate) fn plan(steps: &[(u64, &[&str])], renotify_ms: u64) -> RulePlan {
        RulePlan {
            name: "cpu high".into(),
            threshold: None,
            steps: steps
                .iter()
                .map(|(after_ms, ch)| PlanStep {
                    after_ms: *after_ms,
                    channels: ch.iter().map(|c| c.to_string()).collect(),
                })
                .collect(),
            renotify_ms,
        }
    }

    fn rfc3339(ms: u64) -> String {
        jiff::Timestamp::from_millisecond(ms as i64)
            .unwrap()
            .to_string()
    }

    /// A one-off window over `device` from `start_ms` to `end_ms`.
    pub(crate) fn window(id: &str, device: u64, start_ms: u64, end_ms: u64) -> MaintenanceWindow {
        MaintenanceWindow {
            id: id.into(),
            name: id.into(),
            scope: Scope::Device {
                device: DeviceId(device),
            },
            schedule: Schedule::OneOff {
                start: rfc3339(start_ms),
                end: rfc3339(end_ms),
            },
            effects: vec![WindowEffect::SuppressNotifications],
        }
    }

    const T: u64 = 1_800_000_000_000;

    fn new_firing(r: &Rule, now: u64) -> Alert {
        let mut a = new_alert(
            r,
            1,
            DeviceId(1),
            &DeviceScope::default(),
            "",
            Some(99.0),
            now,
        );
        fire_now(&mut a, now);
        a
    }

    #[test]
    fn a_new_alert_waits_for_its_rule_s_for_duration() {
        let r = rule(cpu_over_90_for(300), &[]);
        let scope = DeviceScope {
            tenant: "acme".into(),
            customer: "dental".into(),
            hostname: "web-1".into(),
            tags: vec![],
        };
        let a = new_alert(&r, 9, DeviceId(4), &scope, "/", Some(95.0), T);
        assert_eq!(a.state, AlertState::Pending);
        assert_eq!((a.started_ms, a.due_ms), (T, T + 300_000));
        assert_eq!(
            (a.comparison, a.threshold),
            (Some(Comparison::Gt), Some(90.0))
        );
        assert_eq!((a.tenant.as_str(), a.hostname.as_str()), ("acme", "web-1"));
        assert_eq!(a.metric, "cpu");
        let offline = new_alert(
            &rule(Condition::DeviceOffline, &[]),
            10,
            DeviceId(4),
            &scope,
            "",
            None,
            T,
        );
        assert_eq!(
            (offline.metric.as_str(), offline.due_ms),
            ("device_status", T)
        );
    }

    #[test]
    fn firing_notifies_the_immediate_steps_and_records_only_the_transition() {
        let r = rule(cpu_over_90_for(0), &["ops"]);
        let mut a = new_firing(&r, T);
        let p = plan(&[(0, &["ops"]), (0, &["lead"]), (60_000, &["boss"])], 0);
        let out = transition(&mut a, Step::StartFiring, &p, &DeviceWindows::none(), T);
        assert_eq!(out.transition, Some(EventKind::Firing));
        assert_eq!(out.records(), vec![EventKind::Firing]);
        assert_eq!(
            out.notifications(),
            vec![
                (NotifyEvent::Firing, vec!["ops".to_string()]),
                (NotifyEvent::Escalation, vec!["lead".to_string()]),
            ]
        );
        assert!(out.save);
        assert_eq!(
            a.escalation_step, 2,
            "the delayed step waits for the timers"
        );
        assert_eq!(a.notify_since_ms, Some(T));
        assert_eq!((a.notified, a.last_notified_ms), (true, Some(T)));
        assert_eq!(a.notifications_sent, 2);
    }

    #[test]
    fn each_notification_carries_the_alert_as_it_was_when_sent() {
        let r = rule(cpu_over_90_for(0), &["ops"]);
        let mut a = new_firing(&r, T);
        let p = plan(&[(0, &["ops", "mail"])], 0);
        let out = transition(&mut a, Step::StartFiring, &p, &DeviceWindows::none(), T);
        let [
            crate::alerts::decision::Action::Record { detail, .. },
            crate::alerts::decision::Action::Notify {
                alert, channels, ..
            },
        ] = out.actions.as_slice()
        else {
            panic!("{out:?}");
        };
        assert_eq!(detail, "cpu high value=99");
        assert_eq!(channels.len(), 2);
        // The step is counted, the notification itself not yet (as stored before).
        assert_eq!(alert.escalation_step, 1);
        assert!(!alert.notified);
        assert_eq!(alert.notifications_sent, 0);
        assert_eq!(a.notifications_sent, 2);
    }

    #[test]
    fn a_transition_without_value_has_a_bare_detail() {
        let r = rule(Condition::DeviceOffline, &[]);
        let mut a = new_alert(&r, 1, DeviceId(1), &DeviceScope::default(), "", None, T);
        fire_now(&mut a, T);
        let out = transition(
            &mut a,
            Step::StartFiring,
            &plan(&[(0, &[])], 0),
            &DeviceWindows::none(),
            T,
        );
        assert_eq!(
            out.actions[0],
            crate::alerts::decision::Action::Record {
                kind: EventKind::Firing,
                detail: "cpu high".into()
            }
        );
        assert!(out.notifications().is_empty(), "no channels, nobody told");
        assert!(!a.notified);
    }

    #[test]
    fn firing_inside_a_window_is_recorded_silenced_and_not_notified() {
        let r = rule(cpu_over_90_for(0), &["ops"]);
        let mut a = new_firing(&r, T);
        let wins = [window("patch-night", 1, T - 60_000, T + 600_000)];
        let scope = DeviceScope::default();
        let w = DeviceWindows {
            windows: &wins,
            scope: &scope,
        };
        let out = transition(&mut a, Step::StartFiring, &plan(&[(0, &["ops"])], 0), &w, T);
        assert_eq!(out.records(), vec![EventKind::Firing, EventKind::Silenced]);
        assert!(out.notifications().is_empty());
        assert_eq!(a.silenced_by.as_deref(), Some("patch-night"));
        assert_eq!(
            (a.notified, a.escalation_step, a.notify_since_ms),
            (false, 0, None)
        );
    }

    #[test]
    fn a_window_over_another_device_or_without_the_effect_does_not_silence() {
        let r = rule(cpu_over_90_for(0), &["ops"]);
        let mut other = window("other", 2, T - 60_000, T + 600_000);
        let scope = DeviceScope::default();
        let wins = [other.clone()];
        let w = DeviceWindows {
            windows: &wins,
            scope: &scope,
        };
        let mut a = new_firing(&r, T);
        let out = transition(&mut a, Step::StartFiring, &plan(&[(0, &["ops"])], 0), &w, T);
        assert_eq!(out.notifications().len(), 1);
        other.scope = Scope::All;
        other.effects = vec![WindowEffect::PausePatchInstalls];
        let wins = [other];
        let w = DeviceWindows {
            windows: &wins,
            scope: &scope,
        };
        let mut b = new_firing(&r, T);
        let out = transition(&mut b, Step::StartFiring, &plan(&[(0, &["ops"])], 0), &w, T);
        assert_eq!(out.notifications().len(), 1);
        assert_eq!(b.silenced_by, None);
    }

    #[test]
    fn resolving_tells_every_channel_that_heard_it_fire_once() {
        let r = rule(cpu_over_90_for(0), &["ops"]);
        let p = plan(
            &[
                (0, &["ops"]),
                (60_000, &["lead", "ops"]),
                (120_000, &["boss"]),
            ],
            0,
        );
        let mut a = new_firing(&r, T);
        transition(&mut a, Step::StartFiring, &p, &DeviceWindows::none(), T);
        a.escalation_step = 2; // the second step went out too
        let step = resolve_now(&mut a, Some(10.0), T + 90_000);
        let out = transition(&mut a, step, &p, &DeviceWindows::none(), T + 90_000);
        assert_eq!(out.records(), vec![EventKind::Resolved]);
        assert_eq!(
            out.notifications(),
            vec![(
                NotifyEvent::Resolved,
                vec!["lead".to_string(), "ops".to_string()]
            )]
        );
        assert_eq!(
            (a.state, a.resolved_ms, a.value),
            (AlertState::Resolved, Some(T + 90_000), Some(10.0))
        );
    }

    #[test]
    fn resolving_an_alert_nobody_heard_of_notifies_nobody() {
        let r = rule(cpu_over_90_for(0), &["ops"]);
        let mut a = new_firing(&r, T);
        let step = resolve_now(&mut a, None, T + 1);
        let out = transition(
            &mut a,
            step,
            &plan(&[(0, &["ops"])], 0),
            &DeviceWindows::none(),
            T + 1,
        );
        assert_eq!(out.records(), vec![EventKind::Resolved]);
        assert!(out.notifications().is_empty());
        assert_eq!(
            a.value,
            Some(99.0),
            "no resolving value: the last one stays"
        );
    }

    #[test]
    fn every_step_records_its_event_kind() {
        let cases = [
            (Step::StartPending, Some(EventKind::Pending)),
            (Step::StartFiring, Some(EventKind::Firing)),
            (Step::Fire, Some(EventKind::Firing)),
            (Step::Clear, Some(EventKind::Cleared)),
            (Step::Resolve, Some(EventKind::Resolved)),
            (Step::StartClearing, Some(EventKind::Clearing)),
            (Step::StopClearing, Some(EventKind::FlapSuppressed)),
            (Step::ClearStale, Some(EventKind::Cleared)),
            (Step::ResolveStale, Some(EventKind::Resolved)),
            (Step::None, None),
        ];
        for (step, kind) in cases {
            assert_eq!(transition_kind(step), kind, "{step:?}");
        }
        let mut a = new_firing(&rule(cpu_over_90_for(0), &[]), T);
        let out = transition(&mut a, Step::None, &plan(&[], 0), &DeviceWindows::none(), T);
        assert!(out.is_empty());
    }

    #[test]
    fn re_acknowledging_without_a_comment_keeps_the_first_and_records_nothing() {
        let mut a = new_firing(&rule(cpu_over_90_for(0), &[]), T);
        acknowledge(&mut a, "alice", "looking into it", T + 5);
        let first = a.clone();
        for (by, comment) in [("alice", ""), ("bob", ""), ("alice", "looking into it")] {
            let out = acknowledge(&mut a, by, comment, T + 60);
            assert!(out.is_empty(), "{by} {comment:?}: {out:?}");
            assert_eq!(a, first, "{by} {comment:?}");
        }
        assert_eq!(a.ack_comment.as_deref(), Some("looking into it"));
    }

    #[test]
    fn a_new_comment_on_an_acknowledged_alert_replaces_the_comment_and_is_recorded_once() {
        let mut a = new_firing(&rule(cpu_over_90_for(0), &[]), T);
        acknowledge(&mut a, "alice", "", T + 5);
        let out = acknowledge(&mut a, "bob", "disk replaced", T + 60);
        assert_eq!(
            out.actions,
            vec![crate::alerts::decision::Action::Record {
                kind: EventKind::Commented,
                detail: "by bob: disk replaced".into()
            }]
        );
        assert_eq!(out.transition, None);
        assert_eq!(a.ack_comment.as_deref(), Some("disk replaced"));
        assert_eq!(
            (a.acknowledged_by.as_deref(), a.acknowledged_ms),
            (Some("alice"), Some(T + 5)),
            "still the first acknowledgement"
        );
        assert!(acknowledge(&mut a, "bob", "disk replaced", T + 70).is_empty());
    }

    #[test]
    fn a_device_going_offline_clears_its_pending_threshold_alerts_stale() {
        let r = rule(cpu_over_90_for(900), &["ops"]);
        let p = RulePlan::of(&r, &HashMap::new());
        let mut a = new_alert(
            &r,
            1,
            DeviceId(1),
            &DeviceScope::default(),
            "",
            Some(97.79),
            T,
        );
        assert_eq!(a.heard_ms, Some(T), "heard at its first sample");
        assert_eq!(on_device_offline(&mut a, &p, T + 70_000), Step::ClearStale);
        assert_eq!(
            (a.state, a.resolved_ms, a.fired_ms),
            (AlertState::Cleared, Some(T + 70_000), None)
        );
        assert_eq!(a.stale.as_deref(), Some("device offline"));
        let out = transition(
            &mut a,
            Step::ClearStale,
            &p,
            &DeviceWindows::none(),
            T + 70_000,
        );
        assert_eq!(out.transition, Some(EventKind::Cleared));
        assert_eq!(
            out.actions,
            vec![crate::alerts::decision::Action::Record {
                kind: EventKind::Cleared,
                detail: "cpu high value=97.79 (stale: device offline)".into()
            }]
        );
        assert!(out.notifications().is_empty(), "it never fired");
    }

    #[test]
    fn a_device_going_offline_holds_firing_and_leaves_other_alerts_alone() {
        let r = rule(cpu_over_90_for(0), &["ops"]);
        let p = RulePlan::of(&r, &HashMap::new());
        let mut firing = new_firing(&r, T);
        let before = firing.clone();
        assert_eq!(on_device_offline(&mut firing, &p, T + 1), Step::None);
        assert_eq!(firing, before);
        let off = rule(Condition::DeviceOffline, &["ops"]);
        let op = RulePlan::of(&off, &HashMap::new());
        let mut a = new_alert(&off, 2, DeviceId(1), &DeviceScope::default(), "", None, T);
        assert_eq!(a.heard_ms, None, "only threshold alerts listen to a series");
        assert_eq!(on_device_offline(&mut a, &op, T + 1), Step::None);
        assert_eq!(a.state, AlertState::Pending);
    }

    #[test]
    fn a_stale_resolution_tells_the_channels_that_heard_it_fire_and_says_why() {
        let r = rule(cpu_over_90_for(0), &["ops"]);
        let p = RulePlan::of(&r, &HashMap::new());
        let mut a = new_firing(&r, T);
        transition(&mut a, Step::StartFiring, &p, &DeviceWindows::none(), T);
        let t = p.threshold.unwrap();
        let step = crate::alerts::eval::on_timer(&t, &mut a, T + t.stale_ms);
        assert_eq!(step, Step::ResolveStale);
        let out = transition(&mut a, step, &p, &DeviceWindows::none(), T + t.stale_ms);
        assert_eq!(out.transition, Some(EventKind::Resolved));
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Resolved, vec!["ops".to_string()])]
        );
        let crate::alerts::decision::Action::Record { detail, .. } = &out.actions[0] else {
            panic!("{out:?}");
        };
        assert_eq!(detail, "cpu high value=99 (stale: no sample for 5m)");
    }

    #[test]
    fn acknowledging_records_who_and_why() {
        let mut a = new_firing(&rule(cpu_over_90_for(0), &[]), T);
        let out = acknowledge(&mut a, "alice", "looking into it", T + 5);
        assert_eq!(
            out.actions,
            vec![crate::alerts::decision::Action::Record {
                kind: EventKind::Acknowledged,
                detail: "by alice: looking into it".into()
            }]
        );
        assert!(out.save);
        assert_eq!(out.transition, None, "not a lifecycle transition");
        assert_eq!(a.acknowledged_by.as_deref(), Some("alice"));
        assert_eq!(a.acknowledged_ms, Some(T + 5));
    }

    #[test]
    fn removing_a_rule_clears_pending_and_resolves_firing_alerts() {
        let r = rule(cpu_over_90_for(60), &[]);
        let mut p = new_alert(
            &r,
            1,
            DeviceId(1),
            &DeviceScope::default(),
            "",
            Some(95.0),
            T,
        );
        assert_eq!(retire(&mut p, T + 1), Step::Clear);
        assert_eq!((p.state, p.resolved_ms), (AlertState::Cleared, Some(T + 1)));
        let mut f = new_firing(&r, T);
        assert_eq!(retire(&mut f, T + 2), Step::Resolve);
        assert_eq!(
            (f.state, f.resolved_ms),
            (AlertState::Resolved, Some(T + 2))
        );
        let gone = removed_rule(&f);
        assert!(
            RulePlan::of(&gone, &HashMap::new())
                .notified_channels(5)
                .is_empty()
        );
    }

    #[test]
    fn device_offline_fires_once_and_resolves_when_back_online() {
        use OfflineDecision::*;
        assert_eq!(on_device_status(DeviceStatus::Offline, false), Fire);
        assert_eq!(
            on_device_status(DeviceStatus::Offline, true),
            Nothing,
            "already firing"
        );
        assert_eq!(on_device_status(DeviceStatus::Online, true), Resolve);
        assert_eq!(on_device_status(DeviceStatus::Online, false), Nothing);
        assert_eq!(on_device_status(DeviceStatus::Pending, true), Nothing);
        assert_eq!(on_device_status(DeviceStatus::Pending, false), Nothing);
        // Fire: a new alert firing at once, notified at once.
        let r = rule(Condition::DeviceOffline, &["ops"]);
        let mut a = new_alert(&r, 3, DeviceId(1), &DeviceScope::default(), "", None, T);
        fire_now(&mut a, T);
        let p = RulePlan::of(&r, &HashMap::new());
        let out = transition(&mut a, Step::StartFiring, &p, &DeviceWindows::none(), T);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Firing, vec!["ops".to_string()])]
        );
        assert_eq!(a.fired_ms, Some(T));
        // Back online: resolved, the channel is told.
        let step = resolve_now(&mut a, None, T + 30_000);
        let out = transition(&mut a, step, &p, &DeviceWindows::none(), T + 30_000);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Resolved, vec!["ops".to_string()])]
        );
    }

    #[test]
    fn a_rule_plan_uses_its_policy_or_else_its_own_channels() {
        use crate::alerts::model::{EscalationPolicy, EscalationStep};
        let mut r = rule(cpu_over_90_for(0), &["ops"]);
        r.renotify_interval = Duration::from_secs(600);
        let own = RulePlan::of(&r, &HashMap::new());
        assert_eq!(
            own.steps,
            vec![PlanStep {
                after_ms: 0,
                channels: vec!["ops".into()]
            }]
        );
        assert_eq!(own.renotify_ms, 600_000);
        assert_eq!(own.threshold.map(|t| t.threshold), Some(90.0));
        r.escalation_policy = Some("oncall".into());
        let missing = RulePlan::of(&r, &HashMap::new());
        assert_eq!(
            missing.steps, own.steps,
            "a missing policy falls back to the channels"
        );
        let policies = HashMap::from([(
            "oncall".to_string(),
            EscalationPolicy {
                id: "oncall".into(),
                name: "on-call".into(),
                steps: vec![
                    EscalationStep {
                        after: Duration::ZERO,
                        channels: vec!["b".into(), "a".into()],
                    },
                    EscalationStep {
                        after: Duration::from_secs(120),
                        channels: vec!["a".into(), "c".into()],
                    },
                ],
            },
        )]);
        let p = RulePlan::of(&r, &policies);
        assert_eq!(
            p.steps[1],
            PlanStep {
                after_ms: 120_000,
                channels: vec!["a".into(), "c".into()]
            }
        );
        assert_eq!(p.notified_channels(0), Vec::<String>::new());
        assert_eq!(p.notified_channels(1), vec!["a", "b"]);
        assert_eq!(p.notified_channels(2), vec!["a", "b", "c"]);
    }
}
