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
    got: Arc<Mutex<Vec<(u64, String)>>>,
    /// Requests answered, failed ones included.
    hits: Arc<Mutex<u64>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let failing = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(Mutex::new(0u64));
        let (f, g, h) = (failing.clone(), got.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::Json<serde_json::Value>| {
                let (f, g, h) = (f.clone(), g.clone(), h.clone());
                async move {
                    *h.lock().unwrap() += 1;
                    if f.load(Ordering::SeqCst) {
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
            got,
            hits,
        }
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
