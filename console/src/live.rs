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
//! * **Shutdown**: [`LiveHub::close`] ends every stream, so a server's
//!   graceful shutdown does not wait for open pages.

use std::convert::Infallible;
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
            // Events already buffered first, then the end.
            let r = tokio::select! {
                biased;
                r = self.rx.recv() => r,
                _ = self.closed.wait_for(|c| *c) => return None,
            };
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
