//! The dispatcher's queue driven with an explicit clock over a real store,
//! delivering through the real webhook sender to a real HTTP receiver on
//! 127.0.0.1 (no sleeping: the clock jumps from one due time to the next).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use outpost_storage::StoreOptions;

use super::queue::{Finished, Queue};
use super::*;
use crate::alerts::AlertsConfig;
use crate::alerts::eval::tests::alert;
use crate::alerts::model::{AlertState, NotifyEvent, WebhookFormat};
use crate::metrics::NotifyLabel;

/// Appliance clock at the start of each test (ms).
const T: u64 = 1_800_000_000_000;
const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;

/// A webhook receiver on 127.0.0.1: answers 500 while failing, else 200
/// and records each body's `event` (with the alert id).
struct Receiver {
    url: String,
    failing: Arc<AtomicBool>,
    /// Requests still to answer with 500 (then 200), besides `failing`.
    fail_next: Arc<Mutex<u64>>,
    got: Arc<Mutex<Vec<(u64, String)>>>,
    /// Requests answered, failed ones included.
    hits: Arc<Mutex<u64>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let failing = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(Mutex::new(0u64));
        let fail_next = Arc::new(Mutex::new(0u64));
        let (f, g, h, n) = (
            failing.clone(),
            got.clone(),
            hits.clone(),
            fail_next.clone(),
        );
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::Json<serde_json::Value>| {
                let (f, g, h, n) = (f.clone(), g.clone(), h.clone(), n.clone());
                async move {
                    *h.lock().unwrap() += 1;
                    let fail_now = {
                        let mut n = n.lock().unwrap();
                        let fail = *n > 0;
                        *n = n.saturating_sub(1);
                        fail
                    };
                    if fail_now || f.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let id = body["alert"]["id"].as_u64().unwrap_or(0);
                    let ev = body["event"].as_str().unwrap_or("?").to_string();
                    g.lock().unwrap().push((id, ev));
                    axum::http::StatusCode::OK
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        Receiver {
            url,
            failing,
            fail_next,
            got,
            hits,
        }
    }

    /// The next `n` requests are answered 500.
    fn fail_next(&self, n: u64) {
        *self.fail_next.lock().unwrap() = n;
    }

    fn set_failing(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// What was received: (alert id, event).
    fn got(&self) -> Vec<(u64, String)> {
        self.got.lock().unwrap().clone()
    }

    fn hits(&self) -> u64 {
        *self.hits.lock().unwrap()
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    metrics: Arc<Metrics>,
    queue: Queue,
    client: webhook::HttpsClient,
    hook: Receiver,
    next_id: u64,
}

impl Rig {
    /// A queue with the default retry policy and one webhook channel `psa`.
    async fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let hook = Receiver::start().await;
        store::put_config(
            &store,
            ConfigKind::Channel,
            "psa",
            &Channel {
                id: "psa".into(),
                name: "psa".into(),
                kind: ChannelKind::Webhook {
                    url: hook.url.clone(),
                    format: WebhookFormat::Json,
                },
            },
        )
        .unwrap();
        let policy = AlertsConfig::default().retry_policy();
        let queue = Queue::load(store.clone(), metrics.clone(), policy).unwrap();
        Rig {
            _dir: dir,
            store,
            metrics,
            queue,
            client: webhook::client().unwrap(),
            hook,
            next_id: 1,
        }
    }

    /// What the engine and the applier do: persist the alert (firing, or
    /// resolved for a resolution) and a notification about it to `psa`,
    /// then hand the notification to the dispatcher.
    fn notify(&mut self, alert_id: u64, event: NotifyEvent, now: u64) -> u64 {
        let mut a = alert(AlertState::Firing, now, now);
        a.id = alert_id;
        if event == NotifyEvent::Resolved {
            a.state = AlertState::Resolved;
        }
        let n = Notification {
            id: self.next_id,
            channel_id: "psa".into(),
            event,
            alert: a,
            created_ms: now,
            attempts: 0,
            next_attempt_ms: now,
            last_error: None,
            retry_since_ms: now,
        };
        self.next_id += 1;
        let mut b = self.store.batch();
        // The alert as the engine leaves it (re-sending looks it up).
        store::save_alert(&mut b, &n.alert).unwrap();
        store::queue_notification(&mut b, &n).unwrap();
        self.store.write(b).unwrap();
        self.queue.submit(n);
        self.next_id - 1
    }

    /// Delivers what is due at `now`, one after the other, as the task
    /// would; returns what became of each.
    async fn step(&mut self, now: u64) -> Vec<(u64, Finished)> {
        let mut out = Vec::new();
        for n in self.queue.take_due(now) {
            let id = n.id;
            let r = deliver(&self.store, &self.client, &n, Duration::from_secs(5)).await;
            out.push((id, self.queue.finish(n, r, now)));
        }
        out
    }

    /// Steps from one due time to the next until nothing waits or the
    /// clock passes `until`; the channel answers 500 until `ok_from`.
    /// Returns the clock at the end.
    async fn run(&mut self, mut now: u64, ok_from: u64, until: u64) -> u64 {
        loop {
            self.hook.set_failing(now < ok_from);
            self.step(now).await;
            match self.queue.next_due_ms() {
                Some(t) if t <= until => now = t.max(now),
                _ => return now,
            }
        }
    }

    fn count(&self, event: &str, result: &str) -> u64 {
        self.metrics
            .notifications
            .get_or_create(&NotifyLabel {
                channel_type: "webhook".into(),
                event: event.into(),
                result: result.into(),
            })
            .get()
    }
}

#[tokio::test]
async fn a_channel_down_for_ten_minutes_still_gets_the_firing_notification() {
    let mut r = Rig::new().await;
    r.notify(7, NotifyEvent::Firing, T);
    // Down for 10 minutes (the old policy gave up after ~254 s), then up.
    r.run(T, T + 10 * MIN, T + 2 * HOUR).await;
    assert_eq!(r.hook.got(), vec![(7, "firing".to_string())]);
    assert!(r.queue.is_idle());
    assert!(store::queued(&r.store).unwrap().is_empty());
    assert!(store::dead_letters(&r.store).unwrap().is_empty());
    assert_eq!(r.count("firing", "delivered"), 1);
    assert_eq!(r.count("firing", "dead_letter"), 0);
    // Every failed attempt was counted as a retry.
    assert_eq!(r.count("firing", "retry"), r.hook.hits() - 1);
    assert!(
        r.count("firing", "retry") >= 8,
        "retried at the capped delay"
    );
}

#[tokio::test]
async fn a_channel_down_beyond_the_retry_period_dead_letters_then_a_resend_delivers() {
    let mut r = Rig::new().await;
    r.notify(7, NotifyEvent::Firing, T);
    let end = r.run(T, u64::MAX, T + 48 * HOUR).await;
    assert!(r.hook.got().is_empty());
    assert!(r.queue.is_idle());
    // The last attempt is exactly at the end of the period (24 h).
    assert_eq!(end, T + 24 * HOUR);
    let dead = store::dead_letters(&r.store).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].last_error.as_deref().unwrap_or("").contains("500"));
    assert_eq!(dead[0].attempts as u64, r.hook.hits());
    assert_eq!(r.count("firing", "dead_letter"), 1);
    assert_eq!(r.count("firing", "retry"), r.hook.hits() - 1);
    // Attempts went on every 5 minutes (the cap) for the day, no faster.
    assert!((280..=300).contains(&r.hook.hits()), "{}", r.hook.hits());

    // The channel is back; the admin re-sends the dead letter: a new
    // period, attempts from zero, delivered.
    let now = end + HOUR;
    let (queued, out) = resend::resend(&r.store, None, now).unwrap();
    assert_eq!(out.resent, vec![dead[0].id]);
    assert!(store::dead_letters(&r.store).unwrap().is_empty());
    assert_eq!(queued[0].attempts, 0);
    assert_eq!(queued[0].retry_since_ms, now);
    for n in queued {
        r.queue.submit(n);
    }
    r.run(now, now, now + HOUR).await;
    assert_eq!(r.hook.got(), vec![(7, "firing".to_string())]);
    assert!(store::queued(&r.store).unwrap().is_empty());
    assert_eq!(r.count("firing", "delivered"), 1);
    assert_eq!(r.count("firing", "dead_letter"), 1);
}

#[tokio::test]
async fn a_dead_letter_resent_twice_is_queued_once() {
    let mut r = Rig::new().await;
    r.notify(7, NotifyEvent::Firing, T);
    r.run(T, u64::MAX, T + 48 * HOUR).await;
    let now = T + 30 * HOUR;
    let (q1, _) = resend::resend(&r.store, None, now).unwrap();
    let id = q1[0].id;
    // The second call finds no dead letter any more.
    let (q2, out) = resend::resend(&r.store, Some(&BTreeSet::from([id])), now).unwrap();
    assert!(q2.is_empty());
    assert_eq!(out.not_found, vec![id]);
    // The same notification submitted twice (two racing re-sends) is
    // delivered once.
    r.queue.submit(q1[0].clone());
    r.queue.submit(q1[0].clone());
    r.run(now, now, now + HOUR).await;
    assert_eq!(r.hook.got().len(), 1);
}

#[test]
fn a_firing_of_a_closed_alert_is_resent_only_followed_by_its_resolution() {
    let n = |id: u64, event: NotifyEvent| Notification {
        id,
        channel_id: "psa".into(),
        event,
        alert: alert(AlertState::Firing, 0, 0),
        created_ms: 0,
        attempts: 3,
        next_attempt_ms: 0,
        last_error: None,
        retry_since_ms: 0,
    };
    let dead = [n(1, NotifyEvent::Firing), n(2, NotifyEvent::Resolved)];
    // Both: the firing goes first, then the resolution.
    let (go, out) = resend::plan(&dead, None, &[], |_| false);
    assert_eq!(go.iter().map(|n| n.id).collect::<Vec<_>>(), vec![1, 2]);
    assert!(out.skipped.is_empty());
    // The firing alone, for an alert that is resolved: skipped, with why.
    let (go, out) = resend::plan(&dead, Some(&BTreeSet::from([1, 9])), &[], |_| false);
    assert!(go.is_empty());
    assert_eq!(out.skipped.len(), 1);
    assert!(out.skipped[0].reason.contains("no longer open"));
    assert_eq!(out.not_found, vec![9]);
    // ... unless the alert is still open.
    let (go, _) = resend::plan(&dead, Some(&BTreeSet::from([1])), &[], |_| true);
    assert_eq!(go.len(), 1);
}

#[tokio::test]
async fn a_resolution_never_reaches_the_receiver_before_its_firing() {
    let mut r = Rig::new().await;
    // The PSA answers 500 once: the firing goes to backoff (2 s).
    r.hook.fail_next(1);
    r.notify(7, NotifyEvent::Firing, T);
    assert_eq!(r.step(T).await[0].1, Finished::Retry { at_ms: T + 2_000 });
    // The alert resolves meanwhile; its resolution waits for the firing.
    r.notify(7, NotifyEvent::Resolved, T + 1_000);
    assert!(
        r.step(T + 1_000).await.is_empty(),
        "nothing jumps the queue"
    );
    assert_eq!(r.queue.next_due_ms(), Some(T + 2_000), "no busy loop");
    r.run(T + 2_000, 0, T + HOUR).await;
    assert_eq!(
        r.hook.got(),
        vec![(7, "firing".to_string()), (7, "resolved".to_string())]
    );
    assert!(r.queue.is_idle());
    assert!(store::queued(&r.store).unwrap().is_empty());
}

#[tokio::test]
async fn a_retrying_alert_holds_back_only_its_own_later_notifications() {
    let mut r = Rig::new().await;
    r.hook.fail_next(1);
    r.notify(7, NotifyEvent::Firing, T);
    r.step(T).await;
    // Another alert on the same channel is not held back.
    r.notify(8, NotifyEvent::Firing, T + 500);
    r.step(T + 500).await;
    assert_eq!(r.hook.got(), vec![(8, "firing".to_string())]);
    r.run(T + 2_000, 0, T + HOUR).await;
    assert_eq!(
        r.hook.got(),
        vec![(8, "firing".to_string()), (7, "firing".to_string())]
    );
}

#[tokio::test]
async fn a_resolution_supersedes_undelivered_reminders_but_keeps_the_firing() {
    let mut r = Rig::new().await;
    r.hook.set_failing(true);
    r.notify(7, NotifyEvent::Firing, T);
    r.step(T).await;
    r.notify(7, NotifyEvent::Reminder, T + MIN);
    r.notify(7, NotifyEvent::Reminder, T + 2 * MIN);
    r.notify(7, NotifyEvent::Resolved, T + 3 * MIN);
    // The reminders are gone from the queue (persisted: not after a
    // restart either) and counted.
    assert_eq!(r.count("reminder", "superseded"), 2);
    let q: Vec<NotifyEvent> = store::queued(&r.store)
        .unwrap()
        .iter()
        .map(|n| n.event)
        .collect();
    assert_eq!(q, vec![NotifyEvent::Firing, NotifyEvent::Resolved]);
    r.run(T + 3 * MIN, T + 20 * MIN, T + 2 * HOUR).await;
    assert_eq!(
        r.hook.got(),
        vec![(7, "firing".to_string()), (7, "resolved".to_string())]
    );
}

#[tokio::test]
async fn the_order_holds_across_a_restart() {
    let mut r = Rig::new().await;
    r.hook.fail_next(1);
    r.notify(7, NotifyEvent::Firing, T);
    r.step(T).await;
    r.notify(7, NotifyEvent::Resolved, T + 1_000);
    // Restart: the queue is loaded from the store, the resolution is due
    // at once, the firing in 1 s.
    let policy = AlertsConfig::default().retry_policy();
    r.queue = Queue::load(r.store.clone(), r.metrics.clone(), policy).unwrap();
    assert!(r.step(T + 1_500).await.is_empty());
    r.run(T + 2_000, 0, T + HOUR).await;
    assert_eq!(
        r.hook.got(),
        vec![(7, "firing".to_string()), (7, "resolved".to_string())]
    );
}
