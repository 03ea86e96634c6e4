//! The engine's wiring, driven with an explicit clock over a real store:
//! what the pure core decides is written, notified, counted and loaded
//! back after a restart. (The decisions themselves are tested in
//! `lifecycle` and `timers`.)

use std::time::Duration;

use outpost_storage::StoreOptions;
use outpost_storage::model::DeviceStatus;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use super::*;
use crate::metrics::KindLabel;

/// Appliance clock at the start of each test (ms).
const T: u64 = 1_800_000_000_000;
const DEV: DeviceId = DeviceId(1);

struct Rig {
    dir: tempfile::TempDir,
    store: Store,
    metrics: Arc<Metrics>,
    engine: Engine,
    /// What the engine handed to the notification dispatcher.
    sent: UnboundedReceiver<Notification>,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        Self::open(dir)
    }

    fn open(dir: tempfile::TempDir) -> Rig {
        Self::open_at(dir, T)
    }

    /// The engine starts (listening) at `now`.
    fn open_at(dir: tempfile::TempDir, now: u64) -> Rig {
        let store = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (notify, sent) = NotifyHandle::for_tests();
        let engine = Engine::load(store.clone(), metrics.clone(), notify, now).unwrap();
        Rig {
            dir,
            store,
            metrics,
            engine,
            sent,
        }
    }

    /// The appliance stops and starts again on the same data.
    fn restart(self) -> Rig {
        self.restart_at(T)
    }

    /// [`Rig::restart`], the engine starting at `now`.
    fn restart_at(self, now: u64) -> Rig {
        let Rig {
            dir, store, engine, ..
        } = self;
        // RocksDB's lock goes with the last handle.
        drop(engine);
        drop(store);
        Self::open_at(dir, now)
    }

    fn put<V: Serialize>(&mut self, kind: ConfigKind, id: &str, v: &V, now: u64) {
        store::put_config(&self.store, kind, id, v).unwrap();
        self.engine.on_reload(now);
    }

    fn delete(&mut self, kind: ConfigKind, id: &str, now: u64) {
        assert!(store::delete_config(&self.store, kind, id).unwrap());
        self.engine.on_reload(now);
    }

    fn sample(&mut self, name: &str, value: f64, now: u64) {
        self.engine.on_samples(
            vec![(
                DEV,
                vec![MetricValue {
                    name: name.into(),
                    label: String::new(),
                    value,
                }],
            )],
            now,
        );
    }

    /// Notifications handed over since the last call: (event, channel).
    fn sent(&mut self) -> Vec<(NotifyEvent, String)> {
        let mut out = Vec::new();
        while let Ok(n) = self.sent.try_recv() {
            out.push((n.event, n.channel_id));
        }
        out
    }

    fn sent_full(&mut self) -> Vec<Notification> {
        let mut out = Vec::new();
        while let Ok(n) = self.sent.try_recv() {
            out.push(n);
        }
        out
    }

    fn alert(&self, rule: &str) -> Alert {
        let all = store::list_alerts(&self.store, |a| a.rule_id == rule, 100).unwrap();
        assert_eq!(all.len(), 1, "one alert of {rule}: {all:?}");
        all.into_iter().next().unwrap()
    }

    fn events(&self, alert: u64) -> Vec<EventKind> {
        store::events(&self.store, alert)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect()
    }

    fn transitions(&self, kind: &str) -> u64 {
        self.metrics
            .alert_transitions
            .get_or_create(&KindLabel { kind: kind.into() })
            .get()
    }
}

fn cpu_rule(id: &str, for_s: u64, extra: impl FnOnce(&mut Rule)) -> Rule {
    let mut r = Rule {
        id: id.into(),
        name: format!("cpu high ({id})"),
        condition: Condition::Threshold {
            metric: "cpu".into(),
            label: None,
            comparison: Comparison::Gt,
            threshold: 90.0,
            for_: Duration::from_secs(for_s),
            keep_firing_for: Duration::ZERO,
            stale_after: None,
        },
        severity: Severity::Critical,
        scope: Scope::All,
        enabled: true,
        channels: vec!["ops".into()],
        escalation_policy: None,
        renotify_interval: Duration::ZERO,
        builtin: false,
    };
    extra(&mut r);
    r
}

fn ops(event: NotifyEvent) -> (NotifyEvent, String) {
    (event, "ops".to_string())
}

#[test]
fn a_threshold_alert_is_stored_notified_and_resolved() {
    let mut rig = Rig::new();
    rig.put(ConfigKind::Rule, "cpu", &cpu_rule("cpu", 0, |_| {}), T);
    rig.sample("cpu", 50.0, T);
    assert!(rig.sent().is_empty());
    rig.sample("cpu", 95.0, T + 1_000);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Firing)]);
    let a = rig.alert("cpu");
    assert_eq!((a.state, a.fired_ms), (AlertState::Firing, Some(T + 1_000)));
    assert_eq!((a.notified, a.notifications_sent), (true, 1));
    assert_eq!(rig.engine.open_alerts().len(), 1);
    assert_eq!(rig.metrics.alerts_firing.get(), 1);

    rig.sample("cpu", 40.0, T + 2_000);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Resolved)]);
    let a = rig.alert("cpu");
    assert_eq!((a.state, a.value), (AlertState::Resolved, Some(40.0)));
    assert_eq!(
        rig.events(a.id),
        vec![EventKind::Firing, EventKind::Resolved]
    );
    assert!(rig.engine.open_alerts().is_empty());
    assert_eq!(rig.metrics.alerts_firing.get(), 0);
    assert_eq!(
        (rig.transitions("firing"), rig.transitions("resolved")),
        (1, 1)
    );
    // Both notifications are queued on disk before they are handed over.
    assert_eq!(store::queued(&rig.store).unwrap().len(), 2);
    // One timed durable write per transition, none for the quiet sample.
    assert!(
        rig.metrics
            .encode()
            .contains("outpost_alert_stage_seconds_count{stage=\"persist\"} 2\n"),
        "{}",
        rig.metrics.encode()
    );
}

#[test]
fn pending_alerts_fire_at_their_original_due_time_after_a_restart_and_firing_ones_are_not_announced_again()
 {
    let mut rig = Rig::new();
    rig.put(ConfigKind::Rule, "now", &cpu_rule("now", 0, |_| {}), T);
    rig.put(ConfigKind::Rule, "later", &cpu_rule("later", 12, |_| {}), T);
    rig.sample("cpu", 95.0, T);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Firing)]);
    assert_eq!(rig.alert("later").state, AlertState::Pending);

    let mut rig = rig.restart();
    assert_eq!(rig.engine.open_alerts().len(), 2);
    assert_eq!(rig.metrics.alerts_pending.get(), 1);
    rig.engine.on_tick(T + 2_000);
    assert!(rig.sent().is_empty(), "nothing is announced again");
    assert_eq!(rig.engine.next_wake(T + 11_500), T + 12_000);
    rig.engine.on_tick(T + 12_300);
    let sent = rig.sent_full();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].alert.rule_id, "later");
    let later = rig.alert("later");
    assert_eq!((later.started_ms, later.fired_ms), (T, Some(T + 12_000)));
    assert_eq!(
        rig.events(later.id),
        vec![EventKind::Pending, EventKind::Firing]
    );
    assert_eq!(rig.alert("now").notifications_sent, 1);
}

#[test]
fn escalation_steps_go_out_on_time_until_the_alert_is_acknowledged() {
    let mut rig = Rig::new();
    let step = |s: u64, ch: &str| EscalationStep {
        after: Duration::from_secs(s),
        channels: vec![ch.into()],
    };
    let policy = EscalationPolicy {
        id: "oncall".into(),
        name: "on-call".into(),
        steps: vec![step(0, "first"), step(2, "second"), step(8, "third")],
    };
    rig.put(ConfigKind::Policy, "oncall", &policy, T);
    let rule = cpu_rule("cpu", 0, |r| {
        r.channels.clear();
        r.escalation_policy = Some("oncall".into());
    });
    rig.put(ConfigKind::Rule, "cpu", &rule, T);
    rig.sample("cpu", 95.0, T);
    assert_eq!(rig.sent(), vec![(NotifyEvent::Firing, "first".into())]);
    // The engine wakes for the next step, not only on its poll.
    assert_eq!(rig.engine.next_wake(T + 100), T + 1_100);
    assert_eq!(rig.engine.next_wake(T + 1_500), T + 2_000);
    rig.engine.on_tick(T + 1_999);
    assert!(rig.sent().is_empty());
    rig.engine.on_tick(T + 2_000);
    assert_eq!(rig.sent(), vec![(NotifyEvent::Escalation, "second".into())]);

    let id = rig.alert("cpu").id;
    let acked = rig
        .engine
        .ack(id, "alice", "looking into it", T + 3_000)
        .unwrap();
    assert_eq!(acked.acknowledged_by.as_deref(), Some("alice"));
    // The device keeps reporting (a silent series would resolve stale).
    let later = (1..=10).map(|m| T + m * 60_000);
    for now in [T + 8_000, T + 9_000].into_iter().chain(later) {
        rig.sample("cpu", 95.0, now);
        rig.engine.on_tick(now);
    }
    assert!(rig.sent().is_empty(), "acknowledged alerts do not escalate");
    let a = rig.alert("cpu");
    assert_eq!((a.escalation_step, a.acknowledged_ms), (2, Some(T + 3_000)));
    assert_eq!(
        rig.events(id),
        vec![
            EventKind::Firing,
            EventKind::Escalated,
            EventKind::Acknowledged
        ]
    );
    let audit = registry::audit_log(&rig.store, 0, u64::MAX, 10).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "alert.ack" && e.actor == "alice" && e.target == id.to_string()),
        "{audit:?}"
    );
    assert_eq!(
        rig.engine.ack(999, "bob", "", T + 4_000).unwrap_err(),
        "no alert 999"
    );
    rig.sample("cpu", 10.0, T + 5_000);
    assert_eq!(
        rig.engine.ack(id, "bob", "", T + 6_000).unwrap_err(),
        format!("alert {id} is resolved and cannot be acknowledged")
    );
}

#[test]
fn reminders_go_out_at_the_renotify_interval() {
    let mut rig = Rig::new();
    let rule = cpu_rule("cpu", 0, |r| r.renotify_interval = Duration::from_secs(10));
    rig.put(ConfigKind::Rule, "cpu", &rule, T);
    rig.sample("cpu", 95.0, T);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Firing)]);
    assert_eq!(rig.engine.next_wake(T + 9_500), T + 10_000);
    rig.engine.on_tick(T + 9_999);
    assert!(rig.sent().is_empty());
    rig.engine.on_tick(T + 10_000);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Reminder)]);
    assert_eq!(rig.alert("cpu").last_notified_ms, Some(T + 10_000));
}

fn rfc3339(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .unwrap()
        .to_string()
}

#[test]
fn a_maintenance_window_silences_until_it_is_deleted() {
    let mut rig = Rig::new();
    rig.put(ConfigKind::Rule, "cpu", &cpu_rule("cpu", 0, |_| {}), T);
    let window = MaintenanceWindow {
        id: "patch-night".into(),
        name: "patch night".into(),
        scope: Scope::Device { device: DEV },
        schedule: Schedule::OneOff {
            start: rfc3339(T - 60_000),
            end: rfc3339(T + 3_600_000),
        },
        effects: vec![WindowEffect::SuppressNotifications],
    };
    rig.put(ConfigKind::Window, "patch-night", &window, T);
    rig.sample("cpu", 95.0, T);
    let a = rig.alert("cpu");
    assert_eq!(a.silenced_by.as_deref(), Some("patch-night"));
    assert_eq!((a.notified, a.notifications_sent), (false, 0));
    rig.engine.on_tick(T + 5_000);
    assert!(rig.sent().is_empty(), "silenced: no notification");

    rig.delete(ConfigKind::Window, "patch-night", T + 6_000);
    rig.engine.on_tick(T + 6_000);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Firing)]);
    assert_eq!(
        rig.events(a.id),
        vec![
            EventKind::Firing,
            EventKind::Silenced,
            EventKind::Unsilenced,
            EventKind::Notified
        ]
    );
}

#[test]
fn no_data_fires_when_a_series_stops_and_resolves_when_it_reports_again() {
    let mut rig = Rig::new();
    let mut rule = cpu_rule("quiet", 0, |_| {});
    rule.condition = Condition::NoData {
        metric: "cpu".into(),
        label: None,
        for_: Duration::from_secs(5),
    };
    rig.put(ConfigKind::Rule, "quiet", &rule, T);
    rig.sample("cpu", 12.0, T);
    rig.engine.on_tick(T + 4_999);
    assert!(rig.sent().is_empty());
    rig.engine.on_tick(T + 5_000);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Firing)]);
    let a = rig.alert("quiet");
    assert_eq!(
        (a.state, a.fired_ms, a.metric.as_str()),
        (AlertState::Firing, Some(T + 5_000), "cpu")
    );
    rig.engine.on_tick(T + 6_000);
    assert!(rig.sent().is_empty(), "one alert while silent");
    rig.sample("cpu", 3.0, T + 7_000);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Resolved)]);
    let a = rig.alert("quiet");
    assert_eq!((a.state, a.value), (AlertState::Resolved, Some(3.0)));
}

#[test]
fn device_offline_fires_once_and_resolves_when_the_device_is_back() {
    let mut rig = Rig::new();
    let mut rule: Rule = store::get_config(&rig.store, ConfigKind::Rule, "builtin-device-offline")
        .unwrap()
        .expect("built-in rule created on first start");
    rule.channels = vec!["ops".into()];
    rig.put(ConfigKind::Rule, "builtin-device-offline", &rule, T);
    let to = |to: DeviceStatus, from: DeviceStatus| {
        vec![(
            DEV,
            StatusTransition {
                at_ms: T,
                from,
                to,
                last_seen_ms: T - 3_000,
            },
        )]
    };
    rig.engine
        .on_status(to(DeviceStatus::Offline, DeviceStatus::Online), T);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Firing)]);
    rig.engine
        .on_status(to(DeviceStatus::Offline, DeviceStatus::Online), T + 1_000);
    assert!(rig.sent().is_empty(), "already firing");
    rig.engine
        .on_status(to(DeviceStatus::Online, DeviceStatus::Offline), T + 9_000);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Resolved)]);
    let a = rig.alert("builtin-device-offline");
    assert_eq!((a.fired_ms, a.resolved_ms), (Some(T), Some(T + 9_000)));
}

#[test]
fn deleting_a_rule_resolves_its_alerts_and_tells_the_channels_like_disabling_it() {
    let mut rig = Rig::new();
    for id in ["cpu", "off", "slow"] {
        let for_s = if id == "slow" { 60 } else { 0 };
        rig.put(ConfigKind::Rule, id, &cpu_rule(id, for_s, |_| {}), T);
    }
    rig.sample("cpu", 95.0, T);
    assert_eq!(rig.sent().len(), 2, "cpu and off fired");
    rig.delete(ConfigKind::Rule, "cpu", T + 1_000);
    let sent = rig.sent_full();
    assert_eq!(
        sent.iter()
            .map(|n| (n.event, n.channel_id.as_str(), n.alert.rule_id.as_str()))
            .collect::<Vec<_>>(),
        vec![(NotifyEvent::Resolved, "ops", "cpu")]
    );
    assert_eq!(sent[0].alert.state, AlertState::Resolved);
    // Disabling does the same.
    rig.put(
        ConfigKind::Rule,
        "off",
        &cpu_rule("off", 0, |r| r.enabled = false),
        T + 2_000,
    );
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Resolved)]);
    // A pending alert of a deleted rule clears: nobody heard of it.
    rig.delete(ConfigKind::Rule, "slow", T + 3_000);
    assert!(rig.sent().is_empty());
    assert_eq!(rig.alert("cpu").state, AlertState::Resolved);
    assert_eq!(rig.alert("off").state, AlertState::Resolved);
    assert_eq!(rig.alert("slow").state, AlertState::Cleared);
    assert_eq!(
        rig.events(rig.alert("cpu").id),
        vec![EventKind::Firing, EventKind::Resolved]
    );
    assert!(rig.engine.open_alerts().is_empty());
}

#[test]
fn alerts_of_a_rule_deleted_while_the_appliance_was_down_are_retired_at_start() {
    let mut rig = Rig::new();
    rig.put(ConfigKind::Rule, "cpu", &cpu_rule("cpu", 0, |_| {}), T);
    rig.sample("cpu", 95.0, T);
    rig.sent();
    // Deleted in the store without the engine hearing of it.
    assert!(store::delete_config(&rig.store, ConfigKind::Rule, "cpu").unwrap());
    let rig = rig.restart();
    assert!(rig.engine.open_alerts().is_empty());
    assert_eq!(rig.alert("cpu").state, AlertState::Resolved);
}

fn offline(at_ms: u64) -> Vec<(DeviceId, StatusTransition)> {
    vec![(
        DEV,
        StatusTransition {
            at_ms,
            from: DeviceStatus::Online,
            to: DeviceStatus::Offline,
            last_seen_ms: at_ms - 3_000,
        },
    )]
}

/// Issue 10: "CPU > 95 % for 15 m" pending on a busy device, then
/// `kill -9` of the agent: the alert must not fire 15 minutes later from
/// the last value.
#[test]
fn a_pending_threshold_alert_of_a_device_that_goes_offline_is_cleared_and_never_fires() {
    let mut rig = Rig::new();
    rig.put(ConfigKind::Rule, "cpu", &cpu_rule("cpu", 900, |_| {}), T);
    rig.store.set_uplink_tracking(true);
    // (Under the built-in CPU rule's 95, which would go pending too.)
    rig.sample("cpu", 93.79, T);
    let id = rig.alert("cpu").id;
    assert_eq!(rig.metrics.alerts_pending.get(), 1);
    rig.engine.on_status(offline(T + 70_000), T + 70_000);
    let a = rig.alert("cpu");
    assert_eq!(
        (a.state, a.resolved_ms, a.stale.as_deref()),
        (
            AlertState::Cleared,
            Some(T + 70_000),
            Some("device offline")
        )
    );
    for now in [T + 900_000, T + 901_000, T + 3_600_000] {
        rig.engine.on_tick(now);
    }
    assert!(rig.sent().is_empty(), "it never fires");
    assert_eq!(rig.alert("cpu").fired_ms, None);
    assert_eq!(rig.events(id), vec![EventKind::Pending, EventKind::Cleared]);
    assert_eq!(rig.metrics.alerts_pending.get(), 0);
    // Central hears `cleared`, not `resolved`.
    let mut up = Vec::new();
    rig.store
        .scan::<outpost_uplink::batch::AlertTransition>(
            outpost_storage::rollup::UPLINK_PENDING,
            b"a",
            Some(b"b"),
            |_, t| {
                up.push((t.rule.clone(), t.state, t.message.clone()));
                true
            },
        )
        .unwrap();
    use outpost_uplink::batch::AlertState as Up;
    let states = |rule: &str| -> Vec<Up> {
        up.iter()
            .filter(|(r, ..)| r == rule)
            .map(|(_, s, _)| *s)
            .collect()
    };
    assert_eq!(states("cpu high (cpu)"), vec![Up::Pending, Up::Cleared]);
    assert!(
        up.iter()
            .any(|(_, s, m)| *s == Up::Cleared && m.contains("stale: device offline")),
        "{up:?}"
    );
    // The device-offline alert covers the device.
    assert_eq!(states("Device offline"), vec![Up::Firing]);
}

#[test]
fn a_pending_threshold_alert_whose_series_stops_is_cleared_by_the_timer() {
    let mut rig = Rig::new();
    rig.put(ConfigKind::Rule, "cpu", &cpu_rule("cpu", 900, |_| {}), T);
    rig.sample("cpu", 97.0, T);
    rig.sample("cpu", 97.0, T + 60_000);
    assert_eq!(rig.engine.next_wake(T + 60_000), T + 61_000, "polls");
    rig.engine.on_tick(T + 360_000 - 1);
    assert_eq!(rig.alert("cpu").state, AlertState::Pending);
    rig.engine.on_tick(T + 360_000);
    let a = rig.alert("cpu");
    assert_eq!(
        (a.state, a.resolved_ms, a.stale.as_deref()),
        (
            AlertState::Cleared,
            Some(T + 360_000),
            Some("no sample for 5m")
        )
    );
    rig.engine.on_tick(T + 900_000);
    assert!(rig.sent().is_empty());
}

#[test]
fn a_firing_threshold_alert_is_held_while_offline_and_resolves_stale_when_its_series_stays_silent()
{
    let mut rig = Rig::new();
    rig.put(ConfigKind::Rule, "cpu", &cpu_rule("cpu", 0, |_| {}), T);
    rig.sample("cpu", 97.0, T);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Firing)]);
    rig.engine.on_status(offline(T + 70_000), T + 70_000);
    assert_eq!(rig.alert("cpu").state, AlertState::Firing, "held");
    assert_eq!(rig.engine.next_wake(T + 299_500), T + 300_000);
    rig.engine.on_tick(T + 299_999);
    assert!(rig.sent().is_empty());
    rig.engine.on_tick(T + 300_200);
    let sent = rig.sent_full();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].event, NotifyEvent::Resolved);
    assert_eq!(sent[0].alert.stale.as_deref(), Some("no sample for 5m"));
    let a = rig.alert("cpu");
    assert_eq!(
        (a.state, a.resolved_ms, a.value),
        (AlertState::Resolved, Some(T + 300_000), Some(97.0))
    );
    assert_eq!(rig.transitions("resolved"), 1);
}

#[test]
fn a_sample_after_a_long_silence_closes_the_stale_alert_and_opens_a_new_one() {
    let mut rig = Rig::new();
    rig.put(ConfigKind::Rule, "cpu", &cpu_rule("cpu", 900, |_| {}), T);
    rig.sample("cpu", 97.0, T);
    // No tick in between (a busy engine): the timers catch up first.
    rig.sample("cpu", 98.0, T + 600_000);
    let all = store::list_alerts(&rig.store, |a| a.rule_id == "cpu", 10).unwrap();
    let states: Vec<(AlertState, u64)> = all.iter().map(|a| (a.state, a.started_ms)).collect();
    assert!(
        states.contains(&(AlertState::Cleared, T))
            && states.contains(&(AlertState::Pending, T + 600_000)),
        "{states:?}"
    );
    let new = rig.engine.open_alerts()[0].clone();
    assert_eq!(new.due_ms, T + 600_000 + 900_000, "a new window");
    assert!(rig.sent().is_empty());
}

#[test]
fn after_a_restart_a_firing_alert_s_silence_counts_from_the_restart() {
    let mut rig = Rig::new();
    rig.put(ConfigKind::Rule, "cpu", &cpu_rule("cpu", 0, |_| {}), T);
    rig.sample("cpu", 97.0, T);
    rig.sent();
    // Down for an hour; back at T + 1 h.
    let Rig {
        dir, store, engine, ..
    } = rig;
    drop(engine);
    drop(store);
    let mut rig = Rig::open_at(dir, T + 3_600_000);
    rig.engine.on_tick(T + 3_600_000 + 1_000);
    assert_eq!(rig.alert("cpu").state, AlertState::Firing, "not stale yet");
    assert!(rig.sent().is_empty());
    rig.engine.on_tick(T + 3_600_000 + 300_000);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Resolved)]);
}

#[test]
fn acknowledging_again_keeps_the_first_comment_and_records_one_acknowledgement() {
    let mut rig = Rig::new();
    rig.put(ConfigKind::Rule, "cpu", &cpu_rule("cpu", 0, |_| {}), T);
    rig.sample("cpu", 95.0, T);
    let id = rig.alert("cpu").id;
    rig.engine
        .ack(id, "alice", "looking into it", T + 1_000)
        .unwrap();
    let again = rig.engine.ack(id, "alice", "", T + 2_000).unwrap();
    assert_eq!(again.ack_comment.as_deref(), Some("looking into it"));
    assert_eq!(again.acknowledged_ms, Some(T + 1_000));
    assert_eq!(
        rig.alert("cpu").ack_comment.as_deref(),
        Some("looking into it")
    );
    assert_eq!(
        rig.events(id),
        vec![EventKind::Firing, EventKind::Acknowledged]
    );
    let audit = registry::audit_log(&rig.store, 0, u64::MAX, 10).unwrap();
    assert_eq!(
        audit.iter().filter(|e| e.action == "alert.ack").count(),
        1,
        "{audit:?}"
    );
}

#[test]
fn the_observer_hears_each_written_change_with_the_state_before() {
    let mut rig = Rig::new();
    type Heard = Vec<(u64, Option<AlertState>, AlertState, bool)>;
    let heard: Arc<std::sync::Mutex<Heard>> = Arc::default();
    let h = heard.clone();
    rig.engine.set_observer(Arc::new(move |a, before| {
        h.lock()
            .unwrap()
            .push((a.id, before, a.state, a.acknowledged_by.is_some()));
    }));
    rig.put(ConfigKind::Rule, "slow", &cpu_rule("slow", 60, |_| {}), T);
    rig.put(ConfigKind::Rule, "fast", &cpu_rule("fast", 0, |_| {}), T);
    rig.sample("cpu", 95.0, T);
    let slow = rig.alert("slow").id;
    let fast = rig.alert("fast").id;
    rig.sample("cpu", 96.0, T + 30_000);
    rig.engine.on_tick(T + 61_000);
    rig.engine.ack(fast, "tess", "on it", T + 62_000).unwrap();
    rig.engine.ack(fast, "tess", "", T + 63_000).unwrap();
    rig.sample("cpu", 10.0, T + 64_000);
    // (The built-in CPU rule's alerts are heard too: not this test's.)
    let mut got: Vec<_> = heard
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.0 == slow || h.0 == fast)
        .cloned()
        .collect();
    got.sort_by_key(|(id, ..)| *id);
    let mut want = vec![
        (slow, None, AlertState::Pending, false),
        (slow, Some(AlertState::Pending), AlertState::Firing, false),
        (slow, Some(AlertState::Firing), AlertState::Resolved, false),
        (fast, None, AlertState::Firing, false),
        (fast, Some(AlertState::Firing), AlertState::Firing, true),
        (fast, Some(AlertState::Firing), AlertState::Resolved, true),
    ];
    want.sort_by_key(|(id, ..)| *id);
    assert_eq!(
        got, want,
        "a repeated acknowledgement changes nothing: not heard"
    );
}

#[test]
fn a_failed_deployment_gate_fires_the_builtin_rule_and_resuming_resolves_it() {
    let mut rig = Rig::new();
    let mut rule: Rule = store::get_config(&rig.store, ConfigKind::Rule, "builtin-deploy-gate")
        .unwrap()
        .expect("built-in rule created on first start");
    rule.channels = vec!["ops".into()];
    rig.put(ConfigKind::Rule, "builtin-deploy-gate", &rule, T);
    let level = |v: f64| {
        vec![(
            DEV,
            vec![MetricValue {
                name: crate::deploy::orchestrator::GATE_FAILED_METRIC.into(),
                label: "dep-1".into(),
                value: v,
            }],
        )]
    };
    rig.engine.on_samples(level(1.0), T);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Firing)]);
    rig.engine.on_samples(level(1.0), T + 15_000);
    assert!(rig.sent().is_empty(), "re-sent levels do not notify again");
    rig.engine.on_samples(level(0.0), T + 30_000);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Resolved)]);
    assert_eq!(rig.alert("builtin-deploy-gate").label, "dep-1");
}

fn cpu(value: f64) -> SampleBatch {
    vec![(
        DEV,
        vec![MetricValue {
            name: "cpu".into(),
            label: String::new(),
            value,
        }],
    )]
}

#[test]
fn a_crossing_in_batches_the_full_queue_refused_is_evaluated_once_the_engine_catches_up() {
    let mut rig = Rig::new();
    rig.put(ConfigKind::Rule, "cpu", &cpu_rule("cpu", 0, |_| {}), T);
    let (handle, mut inputs) = channels(1, rig.metrics.clone());
    // The queue holds one batch; the next ones overflow, including a
    // crossing up and back down that no queued batch shows.
    handle.samples(cpu(10.0));
    handle.samples(cpu(95.0));
    handle.samples(cpu(20.0));
    handle.samples(cpu(30.0));
    assert_eq!(rig.metrics.alert_inputs_dropped.get(), 3);
    // Not caught up while older batches wait in the queue.
    assert!(inputs.caught_up().is_none());
    let (_, queued) = inputs.samples.try_recv().unwrap();
    rig.engine.on_samples(queued, T + 1_000);
    assert!(rig.sent().is_empty());
    // While the summary is pending, a new batch joins it (it is newer
    // than everything queued), so the queue stays empty.
    handle.samples(cpu(40.0));
    assert!(inputs.samples.try_recv().is_err());
    let summary = inputs.caught_up().expect("caught up");
    assert_eq!((summary.batches, summary.values, summary.lost), (4, 4, 0));
    rig.engine.on_summary(summary, T + 2_000);
    // The crossing was not missed: fired and resolved, in order.
    assert_eq!(
        rig.sent(),
        vec![ops(NotifyEvent::Firing), ops(NotifyEvent::Resolved)]
    );
    let a = rig.alert("cpu");
    assert_eq!((a.state, a.value), (AlertState::Resolved, Some(20.0)));
    // Caught up: batches go through the queue again.
    assert!(inputs.caught_up().is_none());
    handle.samples(cpu(50.0));
    assert!(inputs.samples.try_recv().is_ok());
    assert_eq!(rig.metrics.alert_inputs_dropped.get(), 4);
    assert_eq!(rig.metrics.alert_inputs_lost.get(), 0);
}

#[test]
fn ticks_come_at_the_earliest_due_time_but_never_closer_than_the_minimum_spacing() {
    // Nothing changed since the last tick: its own wake time.
    assert_eq!(next_tick(T, T + 1_000, None), T + 1_000);
    // An alert that changed since is due sooner: that time.
    assert_eq!(next_tick(T, T + 1_000, Some(T + 400)), T + 400);
    assert_eq!(next_tick(T, T + 300, Some(T + 400)), T + 300);
    // Due at once (or overdue): still MIN_TICK_MS after the last tick, so
    // a stream of inputs cannot make the engine scan its alerts each time.
    assert_eq!(next_tick(T, T, None), T + MIN_TICK_MS);
    assert_eq!(next_tick(T, T + 5, Some(T - 1)), T + MIN_TICK_MS);
    assert_eq!(next_tick(u64::MAX, u64::MAX, None), u64::MAX);
}

#[test]
fn a_changed_alert_leaves_its_due_time_as_a_hint_for_the_next_tick() {
    let mut rig = Rig::new();
    rig.put(ConfigKind::Rule, "later", &cpu_rule("later", 12, |_| {}), T);
    assert_eq!(rig.engine.due_hint, None);
    // Over the threshold: pending, due 12 s later; the run loop ticks then
    // without a scan of every open alert after each input.
    rig.sample("cpu", 95.0, T + 1_000);
    assert_eq!(rig.alert("later").state, AlertState::Pending);
    assert_eq!(rig.engine.due_hint, Some(T + 13_000));
    assert_eq!(
        rig.engine.next_wake(T + 1_000),
        T + 2_000,
        "POLL_MS bounds the wake"
    );
    assert_eq!(
        next_tick(
            T + 1_000,
            rig.engine.next_wake(T + 12_500),
            rig.engine.due_hint
        ),
        T + 13_000
    );
}

fn enroll(store: &Store, d: DeviceId) {
    registry::register(
        store,
        &outpost_storage::model::DeviceRecord {
            id: d,
            tenant: "acme".into(),
            customer: "dental".into(),
            hostname: "web-1".into(),
            os: "linux".into(),
            kernel: "6.1".into(),
            arch: "x86_64".into(),
            agent_version: "1".into(),
            enrolled_at_ms: T - 60_000,
            cert_serial: "01".into(),
            revoked_at_ms: None,
        },
    )
    .unwrap();
}

/// The built-in device-offline rule, telling `ops`.
fn offline_rule_to_ops(rig: &mut Rig) {
    let mut rule: Rule = store::get_config(&rig.store, ConfigKind::Rule, "builtin-device-offline")
        .unwrap()
        .unwrap();
    rule.channels = vec!["ops".into()];
    rig.put(ConfigKind::Rule, "builtin-device-offline", &rule, T);
}

/// Revoking an online device: the API tells the engine, then the writer
/// marks the device offline. Before, that offline transition opened a
/// "device offline" alert that fired, notified and stayed firing for
/// good (across restarts). Now the device's open alerts close quietly
/// (firing → resolved, pending → cleared, `stale: device revoked`, no
/// notification), the offline transition opens nothing, nor do later
/// inputs, before or after a restart.
#[test]
fn revoking_an_online_device_opens_no_offline_alert_and_closes_its_alerts_quietly() {
    let mut rig = Rig::new();
    enroll(&rig.store, DEV);
    offline_rule_to_ops(&mut rig);
    rig.put(ConfigKind::Rule, "cpu", &cpu_rule("cpu", 0, |_| {}), T);
    rig.put(ConfigKind::Rule, "slow", &cpu_rule("slow", 60, |_| {}), T);
    rig.sample("cpu", 95.0, T);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Firing)]);

    let at = T + 1_000;
    registry::revoke(&rig.store, DEV, at).unwrap();
    rig.engine.on_retired(DEV, at);
    rig.engine.on_status(offline(at), at);
    assert!(rig.sent().is_empty(), "nobody is told");
    assert!(rig.engine.open_alerts().is_empty());
    assert!(
        store::list_alerts(&rig.store, |a| a.rule_id == "builtin-device-offline", 10)
            .unwrap()
            .is_empty(),
        "no device-offline alert for a revoked device"
    );
    let cpu = rig.alert("cpu");
    assert_eq!(
        (cpu.state, cpu.resolved_ms, cpu.stale.as_deref()),
        (
            AlertState::Resolved,
            Some(at),
            Some(lifecycle::DEVICE_REVOKED)
        )
    );
    assert_eq!(
        rig.events(cpu.id),
        vec![EventKind::Firing, EventKind::Resolved]
    );
    let slow = rig.alert("slow");
    assert_eq!(
        (slow.state, slow.stale.as_deref()),
        (AlertState::Cleared, Some(lifecycle::DEVICE_REVOKED))
    );
    assert_eq!(rig.metrics.alerts_firing.get(), 0);
    assert_eq!(rig.metrics.alerts_pending.get(), 0);
    // Late samples (queued before the revocation) and timers open nothing.
    rig.sample("cpu", 99.0, at + 1);
    rig.engine.on_tick(at + 3_600_000);
    assert!(rig.sent().is_empty());
    assert!(rig.engine.open_alerts().is_empty());

    let mut rig = rig.restart();
    rig.engine.on_tick(T + 7_200_000);
    assert!(rig.engine.open_alerts().is_empty());
    assert!(rig.sent().is_empty());
    assert_eq!(rig.metrics.alerts_firing.get(), 0);
}

/// The state the bug left behind (or a revocation the engine did not
/// hear of): a device-offline alert firing for a revoked device. At load
/// it closes quietly, and no reminder goes out.
#[test]
fn open_alerts_of_a_device_already_revoked_are_closed_at_load() {
    let mut rig = Rig::new();
    enroll(&rig.store, DEV);
    offline_rule_to_ops(&mut rig);
    rig.engine.on_status(offline(T), T);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Firing)]);
    registry::revoke(&rig.store, DEV, T + 1_000).unwrap();

    let mut rig = rig.restart();
    assert!(rig.engine.open_alerts().is_empty());
    let a = rig.alert("builtin-device-offline");
    assert_eq!(
        (a.state, a.stale.as_deref()),
        (AlertState::Resolved, Some(lifecycle::DEVICE_REVOKED))
    );
    rig.engine.on_tick(T + 86_400_000);
    assert!(rig.sent().is_empty());
    assert_eq!(rig.metrics.alerts_firing.get(), 0);
}

/// A series in the ingest's series dictionary, as the writer records it
/// with the series' first sample.
fn stored_series(store: &Store, d: DeviceId, name: &str, label: &str) {
    let mut b = store.batch();
    b.put_raw(
        outpost_storage::samples::SERIES,
        &outpost_storage::keys::series_name_key(d, name, label),
        &0u32.to_be_bytes(),
    )
    .unwrap();
    store.write(b).unwrap();
}

/// A series that reports at T and stops, the appliance restarting at
/// T + 1 s. Before, `last_seen` started empty after the restart and the
/// series never raised its no-data alert. Now every stored series a
/// no-data rule reads is seen at the restart: the alert fires `for`
/// after it (silence counts while the appliance runs). A revoked
/// device's series stays out.
#[test]
fn a_series_that_goes_silent_across_a_restart_raises_its_no_data_alert() {
    let mut rig = Rig::new();
    let mut rule = cpu_rule("quiet", 0, |_| {});
    rule.condition = Condition::NoData {
        metric: "cpu".into(),
        label: None,
        for_: Duration::from_secs(5),
    };
    rig.put(ConfigKind::Rule, "quiet", &rule, T);
    stored_series(&rig.store, DEV, "cpu", "");
    rig.sample("cpu", 12.0, T);
    let gone = DeviceId(2);
    enroll(&rig.store, gone);
    registry::revoke(&rig.store, gone, T).unwrap();
    stored_series(&rig.store, gone, "cpu", "");
    stored_series(&rig.store, DEV, "memory", "");

    let restart = T + 1_000;
    let mut rig = rig.restart_at(restart);
    rig.engine.on_tick(restart + 4_999);
    assert!(rig.sent().is_empty());
    rig.engine.on_tick(restart + 5_000);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Firing)]);
    let a = rig.alert("quiet");
    assert_eq!(
        (a.state, a.device, a.fired_ms),
        (AlertState::Firing, DEV, Some(restart + 5_000))
    );
    assert_eq!(
        rig.engine.open_alerts().len(),
        1,
        "not for the revoked device"
    );
    // It resolves when the series reports again, as before.
    rig.sample("cpu", 3.0, restart + 9_000);
    assert_eq!(rig.sent(), vec![ops(NotifyEvent::Resolved)]);
}
