//! The alert state machine, without I/O or a clock of its own: the engine
//! feeds it samples and the current time and applies what it returns.
//!
//! Threshold rules: the condition must hold for `for` before the alert
//! fires (checked on every sample and by a timer at the due time, so a
//! pending alert fires on time even if the next sample is late);
//! `keep_firing_for` keeps a firing alert firing that long after the
//! condition stops holding, which suppresses flapping.
//!
//! **Stale series.** A threshold alert is only as good as the samples
//! behind it. Its series is *stale* once it has been silent for the rule's
//! `stale_after` ([`DEFAULT_STALE_AFTER`]), counted from when it was last
//! heard ([`Alert::heard_ms`]: its last sample, or the appliance's start if
//! later, since silence counts only while the appliance listens):
//!
//! * a pending alert fires at its due time only if its series was not
//!   stale then; a pending alert whose series goes stale first is
//!   **cleared** `stale` (it never fires from an old value);
//! * a firing alert whose series goes stale is **resolved** `stale` (it
//!   does not stay firing forever on one old sample);
//! * both are dated when the series went stale, whether the timer or a
//!   late sample notices (the timer runs first, [`is_stale`]); that late
//!   sample then counts as the first of a new alert;
//! * a device going offline clears its pending threshold alerts at once
//!   ([`super::lifecycle::on_device_offline`]); its firing ones are held
//!   (the device-offline alert covers the device) until their series is
//!   stale, so a short disconnection does not resolve and re-fire them.
//!
//! Each decision is a function of the alert (its state, due time, the time
//! its series was last heard), the rule's parameters and `now`.

use std::time::Duration;

use super::model::{Alert, AlertState, Comparison, Condition, DEFAULT_STALE_AFTER, Rule};

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
    /// pending → cleared: its series stopped reporting ([`Alert::stale`]
    /// says why).
    ClearStale,
    /// firing → resolved: its series stopped reporting.
    ResolveStale,
}

impl Step {
    /// The alert closed because its series stopped reporting.
    pub fn is_stale(self) -> bool {
        matches!(self, Step::ClearStale | Step::ResolveStale)
    }
}

/// Threshold parameters of a rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub comparison: Comparison,
    pub threshold: f64,
    pub for_ms: u64,
    pub keep_firing_for_ms: u64,
    /// Silence after which the series is stale (`stale_after`).
    pub stale_ms: u64,
}

/// The threshold parameters of a threshold rule (`None` for other rules).
pub fn threshold_of(rule: &Rule) -> Option<Threshold> {
    match &rule.condition {
        Condition::Threshold {
            comparison,
            threshold,
            for_,
            keep_firing_for,
            stale_after,
            ..
        } => Some(Threshold {
            comparison: *comparison,
            threshold: *threshold,
            for_ms: for_.as_millis() as u64,
            keep_firing_for_ms: keep_firing_for.as_millis() as u64,
            stale_ms: stale_after.unwrap_or(DEFAULT_STALE_AFTER).as_millis() as u64,
        }),
        _ => None,
    }
}

/// When the alert's series was last heard from (its last sample, or the
/// appliance's start if later; `started_ms` for alerts stored without it).
pub fn heard_ms(a: &Alert) -> u64 {
    a.heard_ms.unwrap_or(a.started_ms)
}

/// When the alert's series is stale if it stays silent.
pub fn stale_at(t: &Threshold, a: &Alert) -> u64 {
    heard_ms(a).saturating_add(t.stale_ms)
}

/// The appliance starts listening at `now_ms` (after a restart): it
/// witnessed no silence while it was down, so an open threshold alert's
/// series counts as heard now unless it was heard later.
pub fn resume(a: &mut Alert, now_ms: u64) {
    if a.state.is_open() && a.threshold.is_some() {
        a.heard_ms = Some(heard_ms(a).max(now_ms));
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

/// Whether the alert's series is stale at `now_ms`: [`on_timer`] must run
/// before a sample is applied to it (see [`on_sample`]).
pub fn is_stale(t: &Threshold, a: &Alert, now_ms: u64) -> bool {
    a.state.is_open() && now_ms >= stale_at(t, a)
}

/// A sample arrives for an open alert; mutates it and says what happened.
///
/// The clock comes first: if the series is stale at `now_ms`
/// ([`is_stale`]), the caller runs [`on_timer`] before (the alert fires at
/// a due time that came first, or closes stale) and evaluates the sample
/// against what is still open, or as the first of a new alert. A sample
/// never revives a stale alert.
pub fn on_sample(t: &Threshold, a: &mut Alert, value: f64, now_ms: u64) -> Step {
    if a.state.is_open() {
        a.heard_ms = Some(now_ms);
    }
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
    let stale = stale_at(t, a);
    match a.state {
        // Fires at its due time only if its series was still heard then.
        AlertState::Pending if now_ms >= a.due_ms && a.due_ms < stale => {
            let v = a.value.unwrap_or(t.threshold);
            let at = a.due_ms;
            fire(a, v, at);
            Step::Fire
        }
        AlertState::Firing => match a.clearing_since_ms {
            Some(since)
                if now_ms >= since + t.keep_firing_for_ms
                    && since + t.keep_firing_for_ms <= stale =>
            {
                let v = a.value;
                resolve(a, v, since + t.keep_firing_for_ms);
                Step::Resolve
            }
            _ => close_if_stale(t, a, now_ms),
        },
        AlertState::Pending => close_if_stale(t, a, now_ms),
        _ => Step::None,
    }
}

/// The next time `on_timer` could change this alert.
pub fn next_due(t: &Threshold, a: &Alert) -> Option<u64> {
    let stale = stale_at(t, a);
    match a.state {
        AlertState::Pending => Some(a.due_ms.min(stale)),
        AlertState::Firing => Some(
            a.clearing_since_ms
                .map_or(stale, |s| (s + t.keep_firing_for_ms).min(stale)),
        ),
        _ => None,
    }
}

/// Closes an open alert whose series is stale at `now_ms` (pending:
/// cleared, firing: resolved), dated when it became stale.
fn close_if_stale(t: &Threshold, a: &mut Alert, now_ms: u64) -> Step {
    let at = stale_at(t, a);
    if now_ms < at {
        return Step::None;
    }
    let why = format!(
        "no sample for {}",
        humantime::format_duration(Duration::from_millis(t.stale_ms))
    );
    match a.state {
        AlertState::Pending => {
            a.state = AlertState::Cleared;
            a.resolved_ms = Some(at);
            a.stale = Some(why);
            Step::ClearStale
        }
        AlertState::Firing => {
            resolve(a, None, at);
            a.stale = Some(why);
            Step::ResolveStale
        }
        AlertState::Resolved | AlertState::Cleared => Step::None,
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
            heard_ms: None,
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

    const T: Threshold = Threshold {
        comparison: Comparison::Gt,
        threshold: 90.0,
        for_ms: 60_000,
        keep_firing_for_ms: 0,
        stale_ms: 300_000,
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

    const MIN: u64 = 60_000;

    /// CPU > 90 for 15 min, stale after 5 min of silence (the built-in
    /// CPU rule's shape).
    const CPU: Threshold = Threshold {
        comparison: Comparison::Gt,
        threshold: 90.0,
        for_ms: 15 * MIN,
        keep_firing_for_ms: 0,
        stale_ms: 5 * MIN,
    };

    #[test]
    fn a_pending_alert_whose_series_falls_silent_clears_stale_and_never_fires() {
        // The issue's case: pending on a busy device, then the agent dies.
        let mut a = alert(AlertState::Pending, 0, 15 * MIN);
        a.value = Some(97.79);
        assert_eq!(heard_ms(&a), 0, "heard at its first sample");
        assert_eq!(next_due(&CPU, &a), Some(5 * MIN), "stale before due");
        assert_eq!(on_timer(&CPU, &mut a, 5 * MIN - 1), Step::None);
        assert_eq!(on_timer(&CPU, &mut a, 5 * MIN), Step::ClearStale);
        assert_eq!(
            (a.state, a.resolved_ms, a.fired_ms),
            (AlertState::Cleared, Some(5 * MIN), None)
        );
        assert_eq!(a.stale.as_deref(), Some("no sample for 5m"));
        assert_eq!(a.value, Some(97.79), "the last value stays for the record");
        // Its due time passes: nothing more happens.
        assert_eq!(on_timer(&CPU, &mut a, 15 * MIN), Step::None);
        assert_eq!(next_due(&CPU, &a), None);
    }

    #[test]
    fn a_late_timer_still_clears_a_pending_alert_whose_series_was_stale_at_its_due_time() {
        let mut a = alert(AlertState::Pending, 0, 15 * MIN);
        assert!(is_stale(&CPU, &a, 20 * MIN));
        assert_eq!(on_timer(&CPU, &mut a, 20 * MIN), Step::ClearStale);
        assert_eq!(
            a.resolved_ms,
            Some(5 * MIN),
            "dated when the series went stale"
        );
    }

    #[test]
    fn samples_through_the_window_keep_a_pending_alert_alive_until_it_fires() {
        let mut a = alert(AlertState::Pending, 0, 15 * MIN);
        for at in [4 * MIN, 8 * MIN, 12 * MIN] {
            assert!(!is_stale(&CPU, &a, at));
            assert_eq!(on_sample(&CPU, &mut a, 96.0, at), Step::None);
            assert_eq!(a.heard_ms, Some(at));
        }
        assert_eq!(next_due(&CPU, &a), Some(15 * MIN));
        assert_eq!(on_timer(&CPU, &mut a, 15 * MIN), Step::Fire);
        assert_eq!((a.state, a.fired_ms), (AlertState::Firing, Some(15 * MIN)));
        assert_eq!(a.stale, None);
    }

    #[test]
    fn a_pending_alert_heard_shortly_before_its_due_time_fires_at_it_even_if_the_timer_is_late() {
        // Last sample at 12 min (stale at 17), due at 15: the series was
        // alive at the due time, so it fires then, dated then.
        let mut a = alert(AlertState::Pending, 0, 15 * MIN);
        on_sample(&CPU, &mut a, 96.0, 12 * MIN);
        assert_eq!(on_timer(&CPU, &mut a, 18 * MIN), Step::Fire);
        assert_eq!(a.fired_ms, Some(15 * MIN));
        // Still silent: the firing alert then resolves stale.
        assert!(is_stale(&CPU, &a, 18 * MIN));
        assert_eq!(on_timer(&CPU, &mut a, 18 * MIN), Step::ResolveStale);
        assert_eq!(a.resolved_ms, Some(17 * MIN));
    }

    #[test]
    fn a_firing_alert_resolves_stale_when_its_series_stops_instead_of_firing_forever() {
        let mut a = alert(AlertState::Firing, 0, 0);
        on_sample(&CPU, &mut a, 97.0, MIN);
        assert_eq!(next_due(&CPU, &a), Some(6 * MIN));
        assert_eq!(on_timer(&CPU, &mut a, 6 * MIN - 1), Step::None);
        assert_eq!(on_timer(&CPU, &mut a, 6 * MIN), Step::ResolveStale);
        assert_eq!(
            (a.state, a.resolved_ms, a.value),
            (AlertState::Resolved, Some(6 * MIN), Some(99.0)),
            "the value that fired it stays"
        );
        assert_eq!(a.stale.as_deref(), Some("no sample for 5m"));
        assert!(Step::ResolveStale.is_stale() && Step::ClearStale.is_stale());
        assert!(!Step::Resolve.is_stale() && !Step::Clear.is_stale());
    }

    #[test]
    fn keep_firing_for_ending_before_the_series_goes_stale_resolves_normally() {
        let t = Threshold {
            keep_firing_for_ms: 2 * MIN,
            ..CPU
        };
        let mut a = alert(AlertState::Firing, 0, 0);
        assert_eq!(on_sample(&t, &mut a, 50.0, MIN), Step::StartClearing);
        assert_eq!(next_due(&t, &a), Some(3 * MIN));
        // A late timer: keep_firing_for ended (3 min) before stale (6 min).
        assert_eq!(on_timer(&t, &mut a, 10 * MIN), Step::Resolve);
        assert_eq!((a.resolved_ms, a.stale.as_deref()), (Some(3 * MIN), None));
        // keep_firing_for longer than stale_after: stale comes first.
        let long = Threshold {
            keep_firing_for_ms: 10 * MIN,
            ..CPU
        };
        let mut b = alert(AlertState::Firing, 0, 0);
        on_sample(&long, &mut b, 50.0, MIN);
        assert_eq!(next_due(&long, &b), Some(6 * MIN));
        assert_eq!(on_timer(&long, &mut b, 20 * MIN), Step::ResolveStale);
        assert_eq!(b.resolved_ms, Some(6 * MIN));
    }

    #[test]
    fn silence_counts_from_the_last_sample_or_the_alert_s_start() {
        let mut a = alert(AlertState::Pending, 7, 15 * MIN);
        assert_eq!(heard_ms(&a), 7, "stored before `heard_ms`: its start");
        a.heard_ms = Some(9);
        assert_eq!((heard_ms(&a), stale_at(&CPU, &a)), (9, 9 + 5 * MIN));
        assert!(!is_stale(&CPU, &a, 9 + 5 * MIN - 1));
        assert!(is_stale(&CPU, &a, 9 + 5 * MIN));
        // Closed alerts are never stale and samples no longer touch them.
        let mut c = alert(AlertState::Cleared, 0, 0);
        assert!(!is_stale(&CPU, &c, u64::MAX));
        assert_eq!(on_sample(&CPU, &mut c, 99.0, MIN), Step::None);
        assert_eq!(c.heard_ms, None);
    }

    #[test]
    fn stale_after_comes_from_the_rule_or_defaults_to_five_minutes() {
        use std::time::Duration;
        let mut r = crate::alerts::lifecycle::tests::rule(
            crate::alerts::lifecycle::tests::cpu_over_90_for(60),
            &[],
        );
        assert_eq!(threshold_of(&r).unwrap().stale_ms, 5 * MIN);
        if let Condition::Threshold { stale_after, .. } = &mut r.condition {
            *stale_after = Some(Duration::from_secs(90));
        }
        assert_eq!(threshold_of(&r).unwrap().stale_ms, 90_000);
        assert!(r.validate().is_ok());
        if let Condition::Threshold { stale_after, .. } = &mut r.condition {
            *stale_after = Some(Duration::ZERO);
        }
        assert!(r.validate().unwrap_err().contains("stale_after"));
    }

    #[test]
    fn after_a_restart_silence_counts_from_when_the_appliance_listens_again() {
        let mut a = alert(AlertState::Firing, 0, 0);
        a.heard_ms = Some(MIN);
        // Down for an hour: its series is not stale for what nobody heard.
        resume(&mut a, 60 * MIN);
        assert_eq!(a.heard_ms, Some(60 * MIN));
        assert_eq!(next_due(&CPU, &a), Some(65 * MIN));
        assert_eq!(on_timer(&CPU, &mut a, 61 * MIN), Step::None);
        // An appliance clock behind the last sample keeps the later time.
        resume(&mut a, 30 * MIN);
        assert_eq!(a.heard_ms, Some(60 * MIN));
        // Only open threshold alerts listen.
        let mut offline = alert(AlertState::Firing, 0, 0);
        offline.threshold = None;
        resume(&mut offline, 60 * MIN);
        assert_eq!(offline.heard_ms, None);
        let mut closed = alert(AlertState::Resolved, 0, 0);
        resume(&mut closed, 60 * MIN);
        assert_eq!(closed.heard_ms, None);
    }
}
