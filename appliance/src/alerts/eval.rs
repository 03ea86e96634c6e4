//! The alert state machine, without I/O or a clock of its own: the engine
//! feeds it samples and the current time and applies what it returns.
//!
//! Threshold rules: the condition must hold for `for` before the alert
//! fires (checked on every sample and by a timer at the due time, so a
//! pending alert fires on time even if the next sample is late);
//! `keep_firing_for` keeps a firing alert firing that long after the
//! condition stops holding, which suppresses flapping.

use super::model::{Alert, AlertState, Comparison, Condition, Rule};

/// What a step of the state machine did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to record.
    None,
    /// A new alert starts pending (the caller creates the record).
    StartPending,
    /// A new alert fires at once (`for` = 0).
    StartFiring,
    /// pending → firing
    Fire,
    /// pending → cleared (condition stopped before `for`)
    Clear,
    /// firing → resolved
    Resolve,
    /// firing: the condition stopped; resolution waits for keep_firing_for.
    StartClearing,
    /// firing: the condition holds again during keep_firing_for (flap suppressed).
    StopClearing,
}

/// Threshold parameters of a rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub comparison: Comparison,
    pub threshold: f64,
    pub for_ms: u64,
    pub keep_firing_for_ms: u64,
}

/// The threshold parameters of a threshold rule (`None` for other rules).
pub fn threshold_of(rule: &Rule) -> Option<Threshold> {
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

/// A sample arrives for a (rule, device, label) with no open alert.
pub fn on_sample_new(t: &Threshold, value: f64) -> Step {
    if !t.comparison.holds(value, t.threshold) {
        Step::None
    } else if t.for_ms == 0 {
        Step::StartFiring
    } else {
        Step::StartPending
    }
}

/// A sample arrives for an open alert; mutates it and says what happened.
pub fn on_sample(t: &Threshold, a: &mut Alert, value: f64, now_ms: u64) -> Step {
    let holds = t.comparison.holds(value, t.threshold);
    match a.state {
        AlertState::Pending if holds => {
            if now_ms >= a.due_ms {
                fire(a, value, now_ms);
                Step::Fire
            } else {
                Step::None
            }
        }
        AlertState::Pending => {
            a.state = AlertState::Cleared;
            a.resolved_ms = Some(now_ms);
            a.value = Some(value);
            Step::Clear
        }
        AlertState::Firing if holds => {
            if a.clearing_since_ms.take().is_some() {
                Step::StopClearing
            } else {
                Step::None
            }
        }
        AlertState::Firing => {
            if t.keep_firing_for_ms == 0 {
                resolve(a, Some(value), now_ms);
                return Step::Resolve;
            }
            match a.clearing_since_ms {
                None => {
                    a.clearing_since_ms = Some(now_ms);
                    a.value = Some(value);
                    Step::StartClearing
                }
                Some(since) if now_ms >= since + t.keep_firing_for_ms => {
                    resolve(a, Some(value), now_ms);
                    Step::Resolve
                }
                Some(_) => Step::None,
            }
        }
        AlertState::Resolved | AlertState::Cleared => Step::None,
    }
}

/// The clock reached `now_ms` with no new sample.
pub fn on_timer(t: &Threshold, a: &mut Alert, now_ms: u64) -> Step {
    match a.state {
        AlertState::Pending if now_ms >= a.due_ms => {
            let v = a.value.unwrap_or(t.threshold);
            let at = a.due_ms;
            fire(a, v, at);
            Step::Fire
        }
        AlertState::Firing => match a.clearing_since_ms {
            Some(since) if now_ms >= since + t.keep_firing_for_ms => {
                let v = a.value;
                resolve(a, v, since + t.keep_firing_for_ms);
                Step::Resolve
            }
            _ => Step::None,
        },
        _ => Step::None,
    }
}

/// The next time `on_timer` could change this alert.
pub fn next_due(t: &Threshold, a: &Alert) -> Option<u64> {
    match a.state {
        AlertState::Pending => Some(a.due_ms),
        AlertState::Firing => a.clearing_since_ms.map(|s| s + t.keep_firing_for_ms),
        _ => None,
    }
}

fn fire(a: &mut Alert, value: f64, at_ms: u64) {
    a.state = AlertState::Firing;
    a.fired_ms = Some(at_ms);
    a.value = Some(value);
    a.clearing_since_ms = None;
}

fn resolve(a: &mut Alert, value: Option<f64>, at_ms: u64) {
    a.state = AlertState::Resolved;
    a.resolved_ms = Some(at_ms);
    if value.is_some() {
        a.value = value;
    }
    a.clearing_since_ms = None;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::alerts::model::Severity;
    use outpost_proto::DeviceId;

    pub(crate) fn alert(state: AlertState, started: u64, due: u64) -> Alert {
        Alert {
            id: 1,
            rule_id: "r".into(),
            rule_name: "r".into(),
            severity: Severity::Warning,
            device: DeviceId(1),
            hostname: "h".into(),
            tenant: "t".into(),
            customer: Default::default(),
            metric: "cpu".into(),
            label: String::new(),
            state,
            started_ms: started,
            due_ms: due,
            fired_ms: None,
            resolved_ms: None,
            value: Some(99.0),
            threshold: Some(90.0),
            comparison: Some(Comparison::Gt),
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

    const T: Threshold = Threshold {
        comparison: Comparison::Gt,
        threshold: 90.0,
        for_ms: 60_000,
        keep_firing_for_ms: 0,
    };

    #[test]
    fn for_duration_is_honoured_to_the_sample() {
        assert_eq!(on_sample_new(&T, 95.0), Step::StartPending);
        assert_eq!(on_sample_new(&T, 90.0), Step::None, "90 is not > 90");
        let mut a = alert(AlertState::Pending, 1_000, 61_000);
        // Samples over the threshold before the due time keep it pending.
        assert_eq!(on_sample(&T, &mut a, 95.0, 60_999), Step::None);
        assert_eq!(a.state, AlertState::Pending);
        // The first sample at the due time fires it.
        assert_eq!(on_sample(&T, &mut a, 96.0, 61_000), Step::Fire);
        assert_eq!(a.state, AlertState::Firing);
        assert_eq!(a.fired_ms, Some(61_000));
        assert_eq!(a.value, Some(96.0));
    }

    #[test]
    fn timer_fires_a_pending_alert_at_its_due_time() {
        let mut a = alert(AlertState::Pending, 1_000, 61_000);
        assert_eq!(on_timer(&T, &mut a, 60_999), Step::None);
        assert_eq!(next_due(&T, &a), Some(61_000));
        // Even if the timer runs late, the alert fires "at" its due time.
        assert_eq!(on_timer(&T, &mut a, 61_250), Step::Fire);
        assert_eq!(a.fired_ms, Some(61_000));
    }

    #[test]
    fn a_dip_below_the_threshold_clears_a_pending_alert() {
        let mut a = alert(AlertState::Pending, 1_000, 61_000);
        assert_eq!(on_sample(&T, &mut a, 80.0, 30_000), Step::Clear);
        assert_eq!(a.state, AlertState::Cleared);
        assert_eq!(
            on_timer(&T, &mut a, 100_000),
            Step::None,
            "a cleared alert never fires"
        );
    }

    #[test]
    fn without_keep_firing_for_a_firing_alert_resolves_on_the_first_good_sample() {
        let mut a = alert(AlertState::Firing, 0, 0);
        assert_eq!(on_sample(&T, &mut a, 95.0, 10), Step::None);
        assert_eq!(on_sample(&T, &mut a, 50.0, 20), Step::Resolve);
        assert_eq!((a.state, a.resolved_ms), (AlertState::Resolved, Some(20)));
    }

    #[test]
    fn keep_firing_for_suppresses_flapping() {
        let t = Threshold {
            keep_firing_for_ms: 30_000,
            ..T
        };
        let mut a = alert(AlertState::Firing, 0, 0);
        // Flaps: below, above, below within the window: still firing.
        assert_eq!(on_sample(&t, &mut a, 50.0, 1_000), Step::StartClearing);
        assert_eq!(on_sample(&t, &mut a, 95.0, 2_000), Step::StopClearing);
        assert_eq!(on_sample(&t, &mut a, 50.0, 3_000), Step::StartClearing);
        assert_eq!(on_sample(&t, &mut a, 50.0, 32_999), Step::None);
        assert_eq!(a.state, AlertState::Firing);
        // Below for the whole keep_firing_for: resolved.
        assert_eq!(on_sample(&t, &mut a, 50.0, 33_000), Step::Resolve);
        // Or by the timer when samples stop.
        let mut b = alert(AlertState::Firing, 0, 0);
        on_sample(&t, &mut b, 50.0, 1_000);
        assert_eq!(next_due(&t, &b), Some(31_000));
        assert_eq!(on_timer(&t, &mut b, 40_000), Step::Resolve);
        assert_eq!(b.resolved_ms, Some(31_000));
    }

    #[test]
    fn comparisons() {
        use Comparison::*;
        let cases = [
            (Gt, 2.0, true),
            (Ge, 1.0, true),
            (Lt, 0.5, true),
            (Le, 1.0, true),
            (Eq, 1.0, true),
            (Ne, 1.0, false),
        ];
        for (c, v, want) in cases {
            assert_eq!(c.holds(v, 1.0), want, "{v} {} 1", c.symbol());
        }
    }
}
