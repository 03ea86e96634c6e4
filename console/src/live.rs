//! Live updates: one fan-out ([`LiveHub`]) that the backend feeds when
//! data changes (central: the batch apply path; the appliance: its ingest
//! and alert engine), and one server-sent-event stream per open page.
//!
//! * **Deltas only**: an event is one changed device (status), one alert
//!   transition or one command that moved ([`CommandChange`]), serialised once ([`LiveEvent::data`]) and shared by every
//!   subscriber; nobody polls the database per viewer.
//! * **Scoped before sending**: a subscriber gets only the events of its
//!   tenant and customers ([`Scope::sees`]); the page never receives
//!   another customer's names or counts, even to drop them.
//! * **Bounded**: at most `max_subscribers` streams at once (a semaphore);
//!   one more is refused (503, counted). A subscriber that falls behind
//!   the broadcast buffer gets a `reload` event (counted) and its stream
//!   ends: the page reloads and is whole again.
//! * **Keep-alives** every `keep_alive` so proxies keep the stream open.
//! * **No longer than its credential**: a stream opened with a
//!   [`Revalidation`] asks the backend again at every keep-alive interval
//!   whether the viewer's credential still holds with the same scope, and
//!   checks before delivering once a check is due; a logout, an ended or
//!   expired session, a revoked token, a removed user or a narrowed
//!   scope end the stream with a `reload` event (counted), and it ends at
//!   the credential's expiry at the latest. The page reloads: the sign-in
//!   page, or the view of the new scope with a new stream.
//! * **Shutdown**: [`LiveHub::close`] ends every stream, so a server's
//!   graceful shutdown does not wait for open pages.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

/// One change, as every subscriber of its scope receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    pub tenant: String,
    /// The customer the change belongs to (scope filter).
    pub customer: String,
    /// SSE event name: `device`, `alert` or `command`.
    pub kind: &'static str,
    /// The JSON payload (see [`DeviceChange`], [`AlertChange`]).
    pub data: String,
}

/// A device whose status changed (or that appeared).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceChange {
    pub site_id: String,
    pub site_name: String,
    pub customer: String,
    pub device: String,
    pub hostname: String,
    /// The status before (`None` for a device new to the console).
    pub old_status: Option<String>,
    pub status: String,
    pub status_since_ms: u64,
    pub last_seen_ms: u64,
}

/// An alert that moved (a transition, or an acknowledgement).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlertChange {
    pub site_id: String,
    pub site_name: String,
    pub customer: String,
    pub alert_id: u64,
    pub device: Option<String>,
    pub hostname: Option<String>,
    pub rule: String,
    pub severity: String,
    /// The state before (`None` for a new alert).
    pub old_state: Option<String>,
    pub state: String,
    pub at_ms: u64,
    pub message: String,
    pub acked_by: Option<String>,
}

/// A command whose state or output changed (central's or the site's).
/// An empty `id` means "some command changed" (the appliance, whose
/// service only signals that something moved): open command pages and
/// lists read themselves again.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommandChange {
    pub id: String,
    pub site_id: String,
    pub customer: String,
    pub state: String,
    pub finished: bool,
}

impl LiveEvent {
    /// SSE event `command` (see [`CommandChange`]).
    pub fn command(tenant: &str, c: &CommandChange) -> LiveEvent {
        LiveEvent {
            tenant: tenant.to_string(),
            customer: c.customer.clone(),
            kind: "command",
            data: serde_json::to_string(c).unwrap_or_default(),
        }
    }

    pub fn device(tenant: &str, d: &DeviceChange) -> LiveEvent {
        LiveEvent {
            tenant: tenant.to_string(),
            customer: d.customer.clone(),
            kind: "device",
            data: serde_json::to_string(d).unwrap_or_default(),
        }
    }

    pub fn alert(tenant: &str, a: &AlertChange) -> LiveEvent {
        LiveEvent {
            tenant: tenant.to_string(),
            customer: a.customer.clone(),
            kind: "alert",
            data: serde_json::to_string(a).unwrap_or_default(),
        }
    }
}

/// What a subscriber may see: its tenant, and its customers (empty = all
/// of the tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub tenant: String,
    pub customers: Vec<String>,
}

impl Scope {
    pub fn sees(&self, e: &LiveEvent) -> bool {
        e.tenant == self.tenant
            && (self.customers.is_empty() || self.customers.contains(&e.customer))
    }
}

/// Bounds of the hub (every default works on a laptop).
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Events buffered for the slowest subscriber before it lags.
    pub buffer: usize,
    /// Streams open at once.
    pub max_subscribers: usize,
    pub keep_alive: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            buffer: 4096,
            max_subscribers: 1000,
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// Counters of the hub (registered by the host under its prefix:
/// `console_live_*`).
#[derive(Debug, Clone, Default)]
pub struct LiveMetrics {
    /// Streams open now.
    pub subscribers: Gauge,
    /// Events the backend published.
    pub published: Counter,
    /// Events written to subscribers (one per subscriber that saw it).
    pub sent: Counter,
    /// Subscribers that fell behind (told to reload).
    pub lagged: Counter,
    /// Events a lagging subscriber missed.
    pub dropped: Counter,
    /// Streams refused because `max_subscribers` were open.
    pub refused: Counter,
    /// Streams ended because the viewer's credential ended (logout,
    /// expiry, revocation, removal) or its scope changed.
    pub credential_ended: Counter,
}

impl LiveMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "console_live_subscribers",
            "Live-update streams open",
            self.subscribers.clone(),
        );
        r.register(
            "console_live_events_published",
            "Changes published to the console's live hub",
            self.published.clone(),
        );
        r.register(
            "console_live_events_sent",
            "Live events written to subscribers (after scope filtering)",
            self.sent.clone(),
        );
        r.register(
            "console_live_lagged",
            "Subscribers that fell behind and were told to reload",
            self.lagged.clone(),
        );
        r.register(
            "console_live_events_dropped",
            "Live events lagging subscribers missed",
            self.dropped.clone(),
        );
        r.register(
            "console_live_refused",
            "Live-update streams refused (too many open)",
            self.refused.clone(),
        );
        r.register(
            "console_live_credential_ended",
            "Live-update streams ended because the viewer's credential ended or its scope changed",
            self.credential_ended.clone(),
        );
    }
}

/// The fan-out (see the module docs).
#[derive(Debug)]
pub struct LiveHub {
    /// One broadcast channel: publishing costs the same for 1 or 500 viewers.
    tx: broadcast::Sender<Arc<LiveEvent>>,
    /// Permits of open streams.
    slots: Arc<Semaphore>,
    /// Set once by [`LiveHub::close`]: every stream ends.
    closed: tokio::sync::watch::Sender<bool>,
    pub metrics: LiveMetrics,
    pub config: LiveConfig,
    /// Where published changes also go (central's other instances,
    /// [`LiveHub::set_forward`]); set once.
    forward: std::sync::OnceLock<Forward>,
}

/// A hook every [`LiveHub::publish`] calls (not
/// [`LiveHub::publish_local`]).
pub struct Forward(pub Box<dyn Fn(&LiveEvent) + Send + Sync>);

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forward")
    }
}

/// The hub refused a subscriber: too many streams open.
#[derive(Debug, thiserror::Error)]
#[error("too many live-update streams open ({0}); the page works without live updates")]
pub struct Full(pub usize);

impl LiveHub {
    pub fn new(config: LiveConfig) -> LiveHub {
        let (tx, _) = broadcast::channel(config.buffer.max(1));
        LiveHub {
            tx,
            slots: Arc::new(Semaphore::new(config.max_subscribers)),
            closed: tokio::sync::watch::Sender::new(false),
            metrics: LiveMetrics::default(),
            config,
            forward: std::sync::OnceLock::new(),
        }
    }

    /// Sets where every published change also goes (once; false if set
    /// already): central's instances over one database hand their
    /// changes to each other, which [`LiveHub::publish_local`] them.
    pub fn set_forward(&self, f: Forward) -> bool {
        self.forward.set(f).is_ok()
    }

    /// Publishes one change to every current subscriber (none: nothing),
    /// and hands it to the forward hook if set.
    pub fn publish(&self, e: LiveEvent) {
        if let Some(f) = self.forward.get() {
            (f.0)(&e);
        }
        self.publish_local(e);
    }

    /// [`LiveHub::publish`] to this hub's subscribers only (a change that
    /// came from another instance).
    pub fn publish_local(&self, e: LiveEvent) {
        self.metrics.published.inc();
        let _ = self.tx.send(Arc::new(e));
    }

    /// A stream of the events `scope` sees, or [`Full`].
    pub fn subscribe(&self, scope: Scope) -> Result<Subscription, Full> {
        self.subscribe_checked(scope, None)
    }

    /// [`LiveHub::subscribe`] for a viewer whose credential is checked
    /// again while the stream is open (see [`Revalidation`]).
    pub fn subscribe_checked(
        &self,
        scope: Scope,
        revalidation: Option<Revalidation>,
    ) -> Result<Subscription, Full> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.metrics.refused.inc();
                return Err(Full(self.config.max_subscribers));
            }
        };
        self.metrics.subscribers.inc();
        Ok(Subscription {
            rx: self.tx.subscribe(),
            closed: self.closed.subscribe(),
            scope,
            metrics: self.metrics.clone(),
            _permit: permit,
            done: false,
            guard: revalidation.map(Guard::new),
        })
    }

    /// Ends every stream, now and for later subscribers (server shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Subscribers open now.
    pub fn subscribers(&self) -> i64 {
        self.metrics.subscribers.get()
    }
}

/// What a subscriber receives next.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Event(Arc<LiveEvent>),
    /// It fell behind: reload the page (the stream ends after this).
    Reload,
    /// The viewer's credential ended or its scope changed: reload the
    /// page (the stream ends after this; sent as a `reload` event).
    CredentialEnded,
}

/// What a check of the viewer found: the scope its credential has now,
/// `None` when it has none (signed out, session ended or expired, token
/// revoked or expired, user removed) or it could not be checked (the
/// stream fails closed: the page reloads and asks again).
pub type CheckFuture = Pin<Box<dyn Future<Output = Option<Scope>> + Send>>;

/// How an open stream checks its viewer again (see the module docs).
pub struct Revalidation {
    /// Asks the backend for the viewer's scope now (the same credential
    /// the stream was opened with).
    pub check: Box<dyn FnMut() -> CheckFuture + Send>,
    /// Time between checks (the keep-alive interval).
    pub every: Duration,
    /// Time left until the credential's fixed end (a session's expiry),
    /// if it has one: the stream ends then whatever the checks say.
    pub ends_in: Option<Duration>,
}

impl std::fmt::Debug for Revalidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revalidation")
            .field("every", &self.every)
            .field("ends_in", &self.ends_in)
            .finish_non_exhaustive()
    }
}

/// Whether a stream opened for `opened` may go on, given the scope the
/// viewer's credential has now: only with the very same scope (a wider
/// one is a new page too).
pub fn may_continue(opened: &Scope, now: Option<&Scope>) -> bool {
    now == Some(opened)
}

/// A [`Revalidation`] in progress.
#[derive(Debug)]
struct Guard {
    r: Revalidation,
    /// When the next check is due.
    next_check: tokio::time::Instant,
    /// The credential's end, if fixed.
    deadline: Option<tokio::time::Instant>,
}

impl Guard {
    fn new(r: Revalidation) -> Guard {
        let now = tokio::time::Instant::now();
        // A zero interval would check in a loop.
        let every = r.every.max(Duration::from_millis(10));
        Guard {
            next_check: now + every,
            deadline: r.ends_in.map(|d| now + d),
            r: Revalidation { every, ..r },
        }
    }

    /// Whether the viewer may still receive events now: past the
    /// deadline no; when a check is due, the check's answer (and the next
    /// one is scheduled).
    async fn still_valid(&mut self, opened: &Scope) -> bool {
        let now = tokio::time::Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            return false;
        }
        if now < self.next_check {
            return true;
        }
        let scope = (self.r.check)().await;
        self.next_check = tokio::time::Instant::now() + self.r.every;
        may_continue(opened, scope.as_ref())
    }

    /// When the next check or the deadline is due.
    fn due_at(&self) -> tokio::time::Instant {
        match self.deadline {
            Some(d) => d.min(self.next_check),
            None => self.next_check,
        }
    }
}

/// One open stream (holds its slot until dropped).
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<LiveEvent>>,
    closed: tokio::sync::watch::Receiver<bool>,
    scope: Scope,
    metrics: LiveMetrics,
    _permit: OwnedSemaphorePermit,
    done: bool,
    /// Checks of the viewer's credential (none: the stream lasts until
    /// the hub closes, it lags or the client leaves).
    guard: Option<Guard>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.metrics.subscribers.dec();
    }
}

impl Subscription {
    /// The next event in scope; `None` once the stream is over (the hub is
    /// gone, or after a [`Delivery::Reload`]).
    pub async fn next(&mut self) -> Option<Delivery> {
        if self.done {
            return None;
        }
        loop {
            // A due check (or the credential's end) before anything else,
            // so no event goes out after a check that would have failed;
            // then events already buffered, then the end.
            let r = {
                let due_at = self.guard.as_ref().map(Guard::due_at);
                let due = async move {
                    match due_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = due => None,
                    r = self.rx.recv() => Some(r),
                    _ = self.closed.wait_for(|c| *c) => return None,
                }
            };
            let valid = match &mut self.guard {
                Some(g) => g.still_valid(&self.scope).await,
                None => true,
            };
            if !valid {
                self.metrics.credential_ended.inc();
                self.done = true;
                return Some(Delivery::CredentialEnded);
            }
            let Some(r) = r else { continue };
            match r {
                Ok(e) if self.scope.sees(&e) => {
                    self.metrics.sent.inc();
                    return Some(Delivery::Event(e));
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.metrics.lagged.inc();
                    self.metrics.dropped.inc_by(n);
                    self.done = true;
                    return Some(Delivery::Reload);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The subscription as an SSE response (`event: device|alert|reload`).
    pub fn into_response(self, keep_alive: Duration) -> Response {
        let stream = futures_util::stream::unfold(self, |mut sub| async move {
            let d = sub.next().await?;
            let ev = match d {
                Delivery::Event(e) => Event::default().event(e.kind).data(e.data.as_str()),
                Delivery::Reload => Event::default().event("reload").data("{}"),
                Delivery::CredentialEnded => Event::default()
                    .event("reload")
                    .data(r#"{"reason":"credential"}"#),
            };
            Some((Ok::<_, Infallible>(ev), sub))
        });
        Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(keep_alive))
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(tenant: &str, customer: &str, n: u64) -> LiveEvent {
        LiveEvent {
            tenant: tenant.into(),
            customer: customer.into(),
            kind: "device",
            data: format!("{{\"n\":{n}}}"),
        }
    }

    fn scope(tenant: &str, customers: &[&str]) -> Scope {
        Scope {
            tenant: tenant.into(),
            customers: customers.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn subscribers_get_only_their_tenants_and_customers_events() {
        let hub = LiveHub::new(LiveConfig::default());
        let mut all = hub.subscribe(scope("msp", &[])).unwrap();
        let mut dental = hub.subscribe(scope("msp", &["dental"])).unwrap();
        hub.publish(ev("other", "dental", 1));
        hub.publish(ev("msp", "vet", 2));
        hub.publish(ev("msp", "dental", 3));
        let got = |d: Option<Delivery>| match d {
            Some(Delivery::Event(e)) => e.data.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(got(all.next().await), "{\"n\":2}");
        assert_eq!(got(all.next().await), "{\"n\":3}");
        assert_eq!(
            got(dental.next().await),
            "{\"n\":3}",
            "vet's and other tenant's skipped"
        );
        assert_eq!(hub.metrics.published.get(), 3);
        assert_eq!(hub.metrics.sent.get(), 3);
    }

    #[tokio::test]
    async fn subscribers_beyond_the_cap_are_refused_and_counted_until_one_leaves() {
        let hub = LiveHub::new(LiveConfig {
            max_subscribers: 2,
            ..Default::default()
        });
        let a = hub.subscribe(scope("msp", &[])).unwrap();
        let _b = hub.subscribe(scope("msp", &[])).unwrap();
        assert!(hub.subscribe(scope("msp", &[])).is_err());
        assert_eq!(hub.metrics.refused.get(), 1);
        assert_eq!(hub.subscribers(), 2);
        drop(a);
        assert_eq!(hub.subscribers(), 1);
        assert!(hub.subscribe(scope("msp", &[])).is_ok());
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_to_reload_and_its_stream_ends() {
        let hub = LiveHub::new(LiveConfig {
            buffer: 4,
            ..Default::default()
        });
        let mut slow = hub.subscribe(scope("msp", &[])).unwrap();
        for n in 0..10 {
            hub.publish(ev("msp", "dental", n));
        }
        assert_eq!(slow.next().await, Some(Delivery::Reload));
        assert_eq!(slow.next().await, None, "ended");
        assert_eq!(hub.metrics.lagged.get(), 1);
        assert_eq!(hub.metrics.dropped.get(), 6);
    }

    #[tokio::test]
    async fn closing_the_hub_ends_every_stream() {
        let hub = LiveHub::new(LiveConfig::default());
        let mut open = hub.subscribe(scope("msp", &[])).unwrap();
        let waiting = tokio::spawn(async move { open.next().await });
        tokio::task::yield_now().await;
        hub.close();
        assert_eq!(waiting.await.unwrap(), None);
        let mut late = hub.subscribe(scope("msp", &[])).unwrap();
        assert_eq!(late.next().await, None, "closed before it subscribed");
    }

    /// A check that answers what `now` holds, counting its calls.
    fn checked(
        hub: &LiveHub,
        opened: Scope,
        now: &Arc<std::sync::Mutex<Option<Scope>>>,
        calls: &Arc<std::sync::atomic::AtomicU32>,
        ends_in: Option<Duration>,
    ) -> Subscription {
        let (now, calls) = (now.clone(), calls.clone());
        let check = move || -> CheckFuture {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let s = now.lock().unwrap().clone();
            Box::pin(async move { s })
        };
        hub.subscribe_checked(
            opened,
            Some(Revalidation {
                check: Box::new(check),
                every: Duration::from_secs(15),
                ends_in,
            }),
        )
        .unwrap()
    }

    fn n_of(d: Option<Delivery>) -> String {
        match d {
            Some(Delivery::Event(e)) => e.data.clone(),
            other => panic!("{other:?}"),
        }
    }

    /// The credential is checked again once per interval (not per event);
    /// once it ended (here: the backend answers no viewer), the next due
    /// check ends the stream before an in-scope event published after it
    /// is delivered. Explicit clock: tokio's paused time.
    #[tokio::test(start_paused = true)]
    async fn a_checked_stream_ends_before_delivering_once_its_credential_ended() {
        let hub = LiveHub::new(LiveConfig::default());
        let dental = scope("msp", &["dental"]);
        let now = Arc::new(std::sync::Mutex::new(Some(dental.clone())));
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut sub = checked(&hub, dental, &now, &calls, None);
        hub.publish(ev("msp", "dental", 1));
        hub.publish(ev("msp", "dental", 2));
        assert_eq!(n_of(sub.next().await), "{\"n\":1}");
        assert_eq!(n_of(sub.next().await), "{\"n\":2}");
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "none due"
        );
        tokio::time::advance(Duration::from_secs(15)).await;
        hub.publish(ev("msp", "dental", 3));
        assert_eq!(n_of(sub.next().await), "{\"n\":3}", "still valid");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The session ends (logout, password change, expiry, removal).
        *now.lock().unwrap() = None;
        tokio::time::advance(Duration::from_secs(15)).await;
        hub.publish(ev("msp", "dental", 4));
        assert_eq!(sub.next().await, Some(Delivery::CredentialEnded));
        assert_eq!(sub.next().await, None, "ended");
        assert_eq!(hub.metrics.sent.get(), 3, "event 4 not delivered");
        assert_eq!(hub.metrics.credential_ended.get(), 1);
        drop(sub);
        assert_eq!(hub.subscribers(), 0, "its slot is free");
    }

    /// A narrowed scope ends the stream (the page reloads with the new
    /// one); a credential with a fixed end ends it then, however valid the
    /// checks found it, without waiting for the next check.
    #[tokio::test(start_paused = true)]
    async fn a_checked_stream_ends_when_its_scope_narrows_or_at_its_credentials_end() {
        assert!(may_continue(&scope("msp", &[]), Some(&scope("msp", &[]))));
        assert!(!may_continue(
            &scope("msp", &[]),
            Some(&scope("msp", &["a"]))
        ));
        assert!(!may_continue(
            &scope("msp", &["a"]),
            Some(&scope("msp", &[]))
        ));
        assert!(!may_continue(&scope("msp", &[]), None));

        let hub = LiveHub::new(LiveConfig::default());
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let both = scope("msp", &["dental", "vet"]);
        let now = Arc::new(std::sync::Mutex::new(Some(both.clone())));
        let mut sub = checked(&hub, both, &now, &calls, None);
        *now.lock().unwrap() = Some(scope("msp", &["dental"]));
        tokio::time::advance(Duration::from_secs(15)).await;
        hub.publish(ev("msp", "dental", 1));
        assert_eq!(sub.next().await, Some(Delivery::CredentialEnded));

        let all = scope("msp", &[]);
        let valid = Arc::new(std::sync::Mutex::new(Some(all.clone())));
        let mut sub = checked(&hub, all, &valid, &calls, Some(Duration::from_secs(100)));
        let start = tokio::time::Instant::now();
        // Nothing published: the clock runs on to the credential's end.
        assert_eq!(sub.next().await, Some(Delivery::CredentialEnded));
        assert_eq!(start.elapsed(), Duration::from_secs(100));
        assert_eq!(hub.metrics.credential_ended.get(), 2);
    }

    #[tokio::test]
    async fn the_sse_response_streams_named_events() {
        let hub = LiveHub::new(LiveConfig::default());
        let sub = hub.subscribe(scope("msp", &[])).unwrap();
        let resp = sub.into_response(Duration::from_secs(15));
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        hub.publish(ev("msp", "dental", 7));
        drop(hub);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("event: device\ndata: {\"n\":7}\n\n"),
            "{text}"
        );
    }

    #[test]
    fn changes_serialise_once_with_their_scope() {
        let d = DeviceChange {
            site_id: "s-1".into(),
            site_name: "Harbour".into(),
            customer: "dental".into(),
            device: "2a".into(),
            hostname: "web-1".into(),
            old_status: Some("online".into()),
            status: "offline".into(),
            status_since_ms: 5,
            last_seen_ms: 4,
        };
        let e = LiveEvent::device("msp", &d);
        assert_eq!(
            (e.tenant.as_str(), e.customer.as_str(), e.kind),
            ("msp", "dental", "device")
        );
        let back: DeviceChange = serde_json::from_str(&e.data).unwrap();
        assert_eq!(back, d);
    }
}
