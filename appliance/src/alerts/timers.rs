//! Pure timer decisions: what the passing of time alone does to an open
//! alert, and when it next will.
//!
//! * pending alerts reaching their due time fire (at that due time, even
//!   when the timer runs late or after a restart), `keep_firing_for`
//!   expiring resolves, and a threshold alert whose series fell silent for
//!   `stale_after` closes `stale` (all from [`super::eval::on_timer`]);
//! * a silenced alert whose maintenance window has ended while it still
//!   fires is announced now (`unsilenced`, then the escalation from the
//!   start);
//! * escalation steps notify when their delay since notifications started
//!   has passed (`notified` for the first step, `escalated` after it),
//!   several at once if the timer is late;
//! * an unacknowledged firing alert is reminded every `renotify_interval`
//!   after its last notification, to the channels notified so far;
//! * acknowledged alerts neither escalate nor remind;
//! * a no-data series fires once it has not reported for `for`.
//!
//! Only windows that were active when the alert fired silence it: a window
//! that starts later does not stop its escalation or reminders.
//!
//! Everything takes the time as a parameter and returns an [`Outcome`]; it
//! must not touch the store, the notifier, the metrics or the clock.

use super::decision::{DeviceWindows, Outcome, RulePlan};
use super::eval::{self, Step};
use super::lifecycle;
use super::model::{Alert, AlertState, EventKind, NotifyEvent};

/// The clock reached `now_ms`: what happens to the open alert `a`.
pub fn on_tick(
    a: &mut Alert,
    plan: &RulePlan,
    windows: &DeviceWindows<'_>,
    now_ms: u64,
) -> Outcome {
    if let Some(t) = &plan.threshold {
        let step = eval::on_timer(t, a, now_ms);
        if step != Step::None {
            return lifecycle::transition(a, step, plan, windows, now_ms);
        }
    }
    if a.state == AlertState::Firing {
        return notification_timers(a, plan, windows, now_ms);
    }
    Outcome::default()
}

/// The end of a silencing window, escalation steps and reminders of a
/// firing alert.
pub fn notification_timers(
    a: &mut Alert,
    plan: &RulePlan,
    windows: &DeviceWindows<'_>,
    now_ms: u64,
) -> Outcome {
    let mut out = Outcome::default();
    if let Some(win) = a.silenced_by.clone() {
        if windows.silencing(a.device, now_ms).is_some() {
            return out;
        }
        // The window is over and the alert still fires: announce it now.
        out.record(
            EventKind::Unsilenced,
            format!("maintenance window {win} ended"),
        );
        a.silenced_by = None;
        a.notify_since_ms = Some(now_ms);
    }
    if a.acknowledged_by.is_some() {
        return out;
    }
    let since = a.notify_since_ms.unwrap_or(a.fired_ms.unwrap_or(now_ms));
    while let Some(s) = plan.steps.get(a.escalation_step)
        && since + s.after_ms <= now_ms
    {
        let (event, kind) = if a.escalation_step == 0 {
            (NotifyEvent::Firing, EventKind::Notified)
        } else {
            (NotifyEvent::Escalation, EventKind::Escalated)
        };
        a.escalation_step += 1;
        out.record(
            kind,
            format!("step {} → {}", a.escalation_step, s.channels.join(",")),
        );
        out.notify(a, event, s.channels.clone(), now_ms);
    }
    if reminder_due(a, plan).is_some_and(|due| now_ms >= due) {
        let channels = plan.notified_channels(a.escalation_step);
        out.notify(a, NotifyEvent::Reminder, channels, now_ms);
    }
    out
}

/// When an unacknowledged, notified alert is next reminded (no renotify
/// interval: never).
fn reminder_due(a: &Alert, plan: &RulePlan) -> Option<u64> {
    if plan.renotify_ms == 0 || !a.notified {
        return None;
    }
    a.last_notified_ms.map(|last| last + plan.renotify_ms)
}

/// Whether a no-data series last seen at `last_seen_ms` has been silent
/// for `for_ms` at `now_ms` (the caller opens an alert firing at once).
pub fn no_data_due(last_seen_ms: u64, for_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(last_seen_ms) >= for_ms
}

/// The next time [`on_tick`] will change `a` by itself, when it can be
/// known: the due time of a pending alert, the end of `keep_firing_for`,
/// the next escalation step, the next reminder. Not known here: the end of
/// a silencing window (schedules may be edited; the engine polls).
///
/// After `on_tick(a, .., now)` this is `None` or later than `now`, so the
/// engine never spins.
pub fn next_due(a: &Alert, plan: &RulePlan) -> Option<u64> {
    let mut due = plan.threshold.as_ref().and_then(|t| eval::next_due(t, a));
    let mut earliest = |d: u64| due = Some(due.map_or(d, |x| x.min(d)));
    if a.state != AlertState::Firing || a.silenced_by.is_some() || a.acknowledged_by.is_some() {
        return due;
    }
    if let Some(since) = a.notify_since_ms.or(a.fired_ms)
        && let Some(s) = plan.steps.get(a.escalation_step)
    {
        earliest(since + s.after_ms);
    }
    if let Some(r) = reminder_due(a, plan)
        && !plan.notified_channels(a.escalation_step).is_empty()
    {
        earliest(r);
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::decision::Action;
    use crate::alerts::eval::Threshold;
    use crate::alerts::lifecycle::tests::{plan, window};
    use crate::alerts::model::{Comparison, DeviceScope, MaintenanceWindow};

    /// Appliance clock at the start of each test (ms).
    const T: u64 = 1_800_000_000_000;
    const MIN: u64 = 60_000;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|c| c.to_string()).collect()
    }

    /// An alert of `p`'s rule that fired at `at` (with no window).
    fn fired(p: &RulePlan, at: u64) -> Alert {
        fired_in(p, at, &[])
    }

    fn fired_in(p: &RulePlan, at: u64, wins: &[MaintenanceWindow]) -> Alert {
        let mut a = crate::alerts::eval::tests::alert(AlertState::Firing, at, at);
        a.fired_ms = Some(at);
        let scope = DeviceScope::default();
        let w = DeviceWindows {
            windows: wins,
            scope: &scope,
        };
        lifecycle::transition(&mut a, Step::StartFiring, p, &w, at);
        a
    }

    fn tick(a: &mut Alert, p: &RulePlan, now: u64) -> Outcome {
        let out = on_tick(a, p, &DeviceWindows::none(), now);
        assert_never_spins(a, p, now);
        out
    }

    fn tick_in(a: &mut Alert, p: &RulePlan, wins: &[MaintenanceWindow], now: u64) -> Outcome {
        let scope = DeviceScope::default();
        let w = DeviceWindows {
            windows: wins,
            scope: &scope,
        };
        let out = on_tick(a, p, &w, now);
        assert_never_spins(a, p, now);
        out
    }

    fn assert_never_spins(a: &Alert, p: &RulePlan, now: u64) {
        if a.state.is_open()
            && let Some(d) = next_due(a, p)
        {
            assert!(d > now, "next due {d} not after the tick at {now}: {a:?}");
        }
    }

    fn oncall() -> RulePlan {
        plan(
            &[
                (0, &["first"]),
                (2 * MIN, &["second"]),
                (10 * MIN, &["third"]),
            ],
            0,
        )
    }

    #[test]
    fn escalation_notifies_each_step_when_its_delay_has_passed() {
        let p = oncall();
        let mut a = fired(&p, T);
        assert_eq!(
            a.escalation_step, 1,
            "the immediate step went out on firing"
        );
        assert_eq!(next_due(&a, &p), Some(T + 2 * MIN));
        assert!(tick(&mut a, &p, T + 2 * MIN - 1).is_empty());

        let out = tick(&mut a, &p, T + 2 * MIN);
        assert_eq!(out.records(), vec![EventKind::Escalated]);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Escalation, s(&["second"]))]
        );
        assert_eq!(
            out.actions[0],
            Action::Record {
                kind: EventKind::Escalated,
                detail: "step 2 → second".into()
            }
        );
        assert!(out.save);
        assert_eq!(out.transition, None);
        assert_eq!(
            (a.escalation_step, a.last_notified_ms),
            (2, Some(T + 2 * MIN))
        );
        assert_eq!(
            next_due(&a, &p),
            Some(T + 10 * MIN),
            "counted from firing, not from step 2"
        );

        assert!(tick(&mut a, &p, T + 10 * MIN - 1).is_empty());
        let out = tick(&mut a, &p, T + 10 * MIN);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Escalation, s(&["third"]))]
        );
        assert_eq!(a.escalation_step, 3);
        assert_eq!(next_due(&a, &p), None, "no step left");
        assert!(tick(&mut a, &p, T + 100 * MIN).is_empty());
        assert_eq!(a.notifications_sent, 3);
    }

    #[test]
    fn a_late_timer_takes_every_overdue_step_in_order() {
        let p = oncall();
        let mut a = fired(&p, T);
        let out = tick(&mut a, &p, T + 11 * MIN);
        assert_eq!(
            out.records(),
            vec![EventKind::Escalated, EventKind::Escalated]
        );
        assert_eq!(
            out.notifications(),
            vec![
                (NotifyEvent::Escalation, s(&["second"])),
                (NotifyEvent::Escalation, s(&["third"]))
            ]
        );
        // Each notification shows the step it belongs to.
        let steps: Vec<usize> = out
            .actions
            .iter()
            .filter_map(|x| match x {
                Action::Notify { alert, .. } => Some(alert.escalation_step),
                _ => None,
            })
            .collect();
        assert_eq!(steps, vec![2, 3]);
    }

    #[test]
    fn a_policy_whose_first_step_waits_notifies_it_from_the_timer() {
        let p = plan(&[(MIN, &["first"]), (3 * MIN, &["second"])], 0);
        let mut a = fired(&p, T);
        assert_eq!((a.escalation_step, a.notified), (0, false));
        assert_eq!(next_due(&a, &p), Some(T + MIN));
        let out = tick(&mut a, &p, T + MIN);
        assert_eq!(
            out.actions[0],
            Action::Record {
                kind: EventKind::Notified,
                detail: "step 1 → first".into()
            }
        );
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Firing, s(&["first"]))]
        );
        let out = tick(&mut a, &p, T + 3 * MIN);
        assert_eq!(out.records(), vec![EventKind::Escalated]);
    }

    #[test]
    fn acknowledged_alerts_never_escalate_nor_remind() {
        let p = plan(
            &[
                (0, &["first"]),
                (2 * MIN, &["second"]),
                (10 * MIN, &["third"]),
            ],
            5 * MIN,
        );
        let mut a = fired(&p, T);
        tick(&mut a, &p, T + 2 * MIN);
        assert_eq!(a.escalation_step, 2);
        let out = lifecycle::acknowledge(&mut a, "alice", "on it", T + 3 * MIN);
        assert_eq!(out.records(), vec![EventKind::Acknowledged]);
        assert_eq!(next_due(&a, &p), None);
        for now in [T + 7 * MIN, T + 10 * MIN, T + 60 * MIN, T + 1_000 * MIN] {
            assert!(tick(&mut a, &p, now).is_empty(), "at {now}");
        }
        assert_eq!(a.escalation_step, 2);
        assert_eq!(a.last_notified_ms, Some(T + 2 * MIN));
    }

    #[test]
    fn an_alert_acknowledged_before_its_first_delayed_step_is_never_notified() {
        let p = plan(&[(5 * MIN, &["first"])], MIN);
        let mut a = fired(&p, T);
        lifecycle::acknowledge(&mut a, "bob", "", T + MIN);
        assert!(tick(&mut a, &p, T + 60 * MIN).is_empty());
        assert!(!a.notified);
    }

    #[test]
    fn reminders_repeat_at_the_renotify_interval_to_the_channels_notified_so_far() {
        let p = plan(&[(0, &["ops"]), (5 * MIN, &["lead", "ops"])], 10 * MIN);
        let mut a = fired(&p, T);
        assert_eq!(
            next_due(&a, &p),
            Some(T + 5 * MIN),
            "the escalation comes first"
        );
        tick(&mut a, &p, T + 5 * MIN);
        // The escalation was a notification: the reminder counts from it.
        assert_eq!(next_due(&a, &p), Some(T + 15 * MIN));
        assert!(tick(&mut a, &p, T + 15 * MIN - 1).is_empty());
        let out = tick(&mut a, &p, T + 15 * MIN);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Reminder, s(&["lead", "ops"]))]
        );
        assert!(out.records().is_empty(), "reminders are not history events");
        assert!(out.save, "the alert counts its notifications");
        assert_eq!(a.last_notified_ms, Some(T + 15 * MIN));
        // A late tick reminds once and counts the next interval from then.
        let out = tick(&mut a, &p, T + 40 * MIN);
        assert_eq!(out.notifications().len(), 1);
        assert_eq!(next_due(&a, &p), Some(T + 50 * MIN));
        assert_eq!(a.notifications_sent, 1 + 2 + 2 + 2);
    }

    #[test]
    fn no_reminder_without_an_interval_or_before_anything_was_notified() {
        let never = plan(&[(0, &["ops"])], 0);
        let mut a = fired(&never, T);
        assert!(tick(&mut a, &never, T + 1_000 * MIN).is_empty());
        assert_eq!(next_due(&a, &never), None);

        let delayed = plan(&[(30 * MIN, &["ops"])], MIN);
        let mut b = fired(&delayed, T);
        assert!(
            tick(&mut b, &delayed, T + 2 * MIN).is_empty(),
            "nothing was sent yet"
        );
        assert_eq!(next_due(&b, &delayed), Some(T + 30 * MIN));

        // Notified once, but its channels are gone from the rule: no
        // reminder, and no timer waiting for one.
        let mut c = fired(&never, T);
        let gone = plan(&[(0, &[])], MIN);
        assert!(tick(&mut c, &gone, T + 5 * MIN).is_empty());
        assert_eq!(next_due(&c, &gone), None);
    }

    #[test]
    fn silenced_inside_a_window_and_announced_when_it_ends_if_still_firing() {
        let p = plan(&[(0, &["ops"]), (5 * MIN, &["lead"])], 0);
        let wins = [window("patch-night", 1, T - MIN, T + 60 * MIN)];
        let mut a = fired_in(&p, T, &wins);
        assert_eq!(a.silenced_by.as_deref(), Some("patch-night"));
        assert_eq!(
            next_due(&a, &p),
            None,
            "the engine polls for the window's end"
        );
        // Inside the window: nothing, not even the escalation.
        for now in [T + 1, T + 5 * MIN, T + 60 * MIN - 1] {
            assert!(tick_in(&mut a, &p, &wins, now).is_empty(), "at {now}");
        }
        // The window ends (its end is exclusive): announced now, the
        // escalation counts from now.
        let end = T + 60 * MIN;
        let out = tick_in(&mut a, &p, &wins, end);
        assert_eq!(
            out.records(),
            vec![EventKind::Unsilenced, EventKind::Notified]
        );
        assert_eq!(
            out.actions[0],
            Action::Record {
                kind: EventKind::Unsilenced,
                detail: "maintenance window patch-night ended".into()
            }
        );
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Firing, s(&["ops"]))]
        );
        assert_eq!(a.silenced_by, None);
        assert_eq!(a.notify_since_ms, Some(end));
        assert_eq!(next_due(&a, &p), Some(end + 5 * MIN));
    }

    #[test]
    fn a_deleted_window_announces_the_alert_at_the_next_tick() {
        let p = plan(&[(0, &["ops"])], 0);
        let wins = [window("patch-night", 1, T - MIN, T + 60 * MIN)];
        let mut a = fired_in(&p, T, &wins);
        let out = tick_in(&mut a, &p, &[], T + 3_000);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Firing, s(&["ops"]))]
        );
    }

    #[test]
    fn not_announced_if_resolved_inside_the_window() {
        let p = plan(&[(0, &["ops"])], MIN);
        let wins = [window("patch-night", 1, T - MIN, T + 60 * MIN)];
        let mut a = fired_in(&p, T, &wins);
        let step = lifecycle::resolve_now(&mut a, Some(0.0), T + 10 * MIN);
        let scope = DeviceScope::default();
        let w = DeviceWindows {
            windows: &wins,
            scope: &scope,
        };
        let out = lifecycle::transition(&mut a, step, &p, &w, T + 10 * MIN);
        assert_eq!(out.records(), vec![EventKind::Resolved]);
        assert!(out.notifications().is_empty(), "nobody heard it fire");
        // Closed: the timers have nothing to say about it any more.
        assert!(tick_in(&mut a, &p, &wins, T + 61 * MIN).is_empty());
        assert_eq!(next_due(&a, &p), None);
    }

    #[test]
    fn an_acknowledged_silenced_alert_is_unsilenced_but_not_announced() {
        let p = plan(&[(0, &["ops"])], 0);
        let wins = [window("patch-night", 1, T - MIN, T + 60 * MIN)];
        let mut a = fired_in(&p, T, &wins);
        lifecycle::acknowledge(&mut a, "alice", "known", T + MIN);
        let out = tick_in(&mut a, &p, &wins, T + 60 * MIN);
        assert_eq!(out.records(), vec![EventKind::Unsilenced]);
        assert!(out.notifications().is_empty());
        assert!(out.save);
    }

    #[test]
    fn a_window_starting_after_the_alert_fired_does_not_silence_it() {
        let p = plan(&[(0, &["ops"]), (5 * MIN, &["lead"])], 0);
        let mut a = fired(&p, T);
        let later = [window("late", 1, T + MIN, T + 60 * MIN)];
        let out = tick_in(&mut a, &p, &later, T + 5 * MIN);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Escalation, s(&["lead"]))]
        );
    }

    fn threshold_plan(for_ms: u64, keep_firing_for_ms: u64) -> RulePlan {
        RulePlan {
            threshold: Some(Threshold {
                comparison: Comparison::Gt,
                threshold: 90.0,
                for_ms,
                keep_firing_for_ms,
                stale_ms: 5 * MIN,
            }),
            ..plan(&[(0, &["ops"])], 0)
        }
    }

    #[test]
    fn a_pending_alert_fires_at_its_due_time_and_is_notified_then() {
        let p = threshold_plan(MIN, 0);
        let mut a = crate::alerts::eval::tests::alert(AlertState::Pending, T, T + MIN);
        assert_eq!(next_due(&a, &p), Some(T + MIN));
        assert!(tick(&mut a, &p, T + MIN - 1).is_empty());
        assert_eq!(a.state, AlertState::Pending);
        // The timer runs 300 ms late: the alert fired at its due time.
        let out = tick(&mut a, &p, T + MIN + 300);
        assert_eq!(out.transition, Some(EventKind::Firing));
        assert_eq!(out.records(), vec![EventKind::Firing]);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Firing, s(&["ops"]))]
        );
        assert_eq!(a.state, AlertState::Firing);
        assert_eq!(a.fired_ms, Some(T + MIN));
        assert_eq!(a.notify_since_ms, Some(T + MIN + 300));
    }

    #[test]
    fn a_pending_alert_whose_series_stops_is_cleared_by_the_timer_and_never_notified() {
        let p = threshold_plan(15 * MIN, 0);
        let mut a = crate::alerts::eval::tests::alert(AlertState::Pending, T, T + 15 * MIN);
        assert_eq!(next_due(&a, &p), Some(T + 5 * MIN), "stale comes first");
        assert!(tick(&mut a, &p, T + 5 * MIN - 1).is_empty());
        let out = tick(&mut a, &p, T + 5 * MIN);
        assert_eq!(out.transition, Some(EventKind::Cleared));
        assert!(out.notifications().is_empty());
        assert!(tick(&mut a, &p, T + 15 * MIN).is_empty(), "never fires");
        assert_eq!((a.state, a.fired_ms), (AlertState::Cleared, None));
    }

    #[test]
    fn a_pending_alert_cleared_by_a_sample_never_fires() {
        let p = threshold_plan(MIN, 0);
        let t = p.threshold.unwrap();
        let mut a = crate::alerts::eval::tests::alert(AlertState::Pending, T, T + MIN);
        let step = eval::on_sample(&t, &mut a, 50.0, T + 10_000);
        assert_eq!(step, Step::Clear);
        let out = lifecycle::transition(&mut a, step, &p, &DeviceWindows::none(), T + 10_000);
        assert_eq!(out.records(), vec![EventKind::Cleared]);
        assert!(out.notifications().is_empty());
        assert!(tick(&mut a, &p, T + 2 * MIN).is_empty());
        assert_eq!(a.state, AlertState::Cleared);
    }

    #[test]
    fn keep_firing_for_resolves_when_it_expires_without_a_sample() {
        let p = threshold_plan(0, 30_000);
        let t = p.threshold.unwrap();
        let mut a = fired(&p, T);
        let step = eval::on_sample(&t, &mut a, 50.0, T + 10_000);
        let out = lifecycle::transition(&mut a, step, &p, &DeviceWindows::none(), T + 10_000);
        assert_eq!(out.records(), vec![EventKind::Clearing]);
        assert!(out.notifications().is_empty());
        assert_eq!(next_due(&a, &p), Some(T + 40_000));
        assert!(tick(&mut a, &p, T + 39_999).is_empty());
        let out = tick(&mut a, &p, T + 45_000);
        assert_eq!(out.transition, Some(EventKind::Resolved));
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Resolved, s(&["ops"]))]
        );
        assert_eq!(
            a.resolved_ms,
            Some(T + 40_000),
            "resolved when keep_firing_for ended"
        );
    }

    #[test]
    fn keep_firing_for_suppresses_a_flap_and_keeps_notifications_going() {
        let p = RulePlan {
            renotify_ms: MIN,
            ..threshold_plan(0, 30_000)
        };
        let t = p.threshold.unwrap();
        let mut a = fired(&p, T);
        eval::on_sample(&t, &mut a, 50.0, T + 10_000);
        let step = eval::on_sample(&t, &mut a, 95.0, T + 20_000);
        let out = lifecycle::transition(&mut a, step, &p, &DeviceWindows::none(), T + 20_000);
        assert_eq!(out.records(), vec![EventKind::FlapSuppressed]);
        assert_eq!(a.clearing_since_ms, None);
        assert!(tick(&mut a, &p, T + 50_000).is_empty(), "still firing");
        let out = tick(&mut a, &p, T + MIN);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Reminder, s(&["ops"]))]
        );
    }

    /// What the store keeps is what the engine loads after a restart (even
    /// a `kill -9`): decisions continue from it.
    fn restarted(a: &Alert) -> Alert {
        serde_json::from_str(&serde_json::to_string(a).unwrap()).unwrap()
    }

    #[test]
    fn after_a_restart_a_pending_alert_fires_at_its_original_due_time() {
        let p = threshold_plan(12_000, 0);
        let a = crate::alerts::eval::tests::alert(AlertState::Pending, T, T + 12_000);
        // Down for 2 s, back before the due time: the timer waits for it.
        let mut back = restarted(&a);
        assert!(tick(&mut back, &p, T + 5_000).is_empty());
        assert_eq!(next_due(&back, &p), Some(T + 12_000));
        let out = tick(&mut back, &p, T + 12_000);
        assert_eq!(out.transition, Some(EventKind::Firing));
        assert_eq!((back.started_ms, back.fired_ms), (T, Some(T + 12_000)));
        // Down past the due time: it fires at once on the first tick, dated
        // at its due time.
        let mut late = restarted(&a);
        let out = tick(&mut late, &p, T + 60_000);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Firing, s(&["ops"]))]
        );
        assert_eq!(late.fired_ms, Some(T + 12_000));
    }

    #[test]
    fn after_a_restart_a_firing_alert_is_not_announced_again() {
        let p = plan(&[(0, &["ops"]), (10 * MIN, &["lead"])], 0);
        let a = fired(&p, T);
        let mut back = restarted(&a);
        assert!(tick(&mut back, &p, T + 2_000).is_empty());
        assert_eq!(back, a);
        // It goes on where it was: the next step at its original time.
        let out = tick(&mut back, &p, T + 10 * MIN);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Escalation, s(&["lead"]))]
        );
    }

    #[test]
    fn after_a_restart_a_silenced_alert_stays_silenced_until_its_window_ends() {
        let p = plan(&[(0, &["ops"])], 0);
        let wins = [window("patch-night", 1, T - MIN, T + 60 * MIN)];
        let a = fired_in(&p, T, &wins);
        let mut back = restarted(&a);
        assert!(tick_in(&mut back, &p, &wins, T + 30 * MIN).is_empty());
        let out = tick_in(&mut back, &p, &wins, T + 61 * MIN);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Firing, s(&["ops"]))]
        );
    }

    #[test]
    fn pending_and_closed_alerts_have_no_notification_timers() {
        let p = plan(&[(0, &["ops"])], MIN);
        let mut pending = crate::alerts::eval::tests::alert(AlertState::Pending, T, T + MIN);
        assert!(
            tick(&mut pending, &p, T + 10 * MIN).is_empty(),
            "no threshold: no timer"
        );
        let mut resolved = fired(&p, T);
        lifecycle::resolve_now(&mut resolved, None, T + 1);
        assert!(tick(&mut resolved, &p, T + 10 * MIN).is_empty());
    }

    #[test]
    fn no_data_is_due_once_the_series_has_been_silent_for_its_for() {
        assert!(!no_data_due(T, 5 * MIN, T));
        assert!(!no_data_due(T, 5 * MIN, T + 5 * MIN - 1));
        assert!(no_data_due(T, 5 * MIN, T + 5 * MIN));
        assert!(no_data_due(T, 5 * MIN, T + 50 * MIN));
        assert!(
            !no_data_due(T + 10, 5 * MIN, T),
            "a clock step back is not silence"
        );
    }

    #[test]
    fn a_no_data_alert_fires_at_once_and_resolves_when_the_series_reports() {
        use crate::alerts::lifecycle::tests::rule;
        use crate::alerts::model::Condition;
        let r = rule(
            Condition::NoData {
                metric: "cpu".into(),
                label: None,
                for_: std::time::Duration::from_secs(300),
            },
            &["ops"],
        );
        let p = RulePlan::of(&r, &Default::default());
        let mut a = lifecycle::new_alert(
            &r,
            5,
            outpost_proto::DeviceId(1),
            &DeviceScope::default(),
            "",
            None,
            T + 5 * MIN,
        );
        lifecycle::fire_now(&mut a, T + 5 * MIN);
        let out = lifecycle::transition(
            &mut a,
            Step::StartFiring,
            &p,
            &DeviceWindows::none(),
            T + 5 * MIN,
        );
        assert_eq!(out.records(), vec![EventKind::Firing]);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Firing, s(&["ops"]))]
        );
        assert_eq!((a.metric.as_str(), a.value), ("cpu", None));
        let step = lifecycle::resolve_now(&mut a, Some(12.5), T + 7 * MIN);
        let out = lifecycle::transition(&mut a, step, &p, &DeviceWindows::none(), T + 7 * MIN);
        assert_eq!(
            out.notifications(),
            vec![(NotifyEvent::Resolved, s(&["ops"]))]
        );
        assert_eq!(a.value, Some(12.5));
    }
}
