//! Notification delivery, off the ingest path: a queue persisted in RocksDB
//! (a notification decided by the engine survives a restart), delivered by
//! this dispatcher with retries: the delay doubles up to a cap and attempts
//! go on at that cap for `notify_retry_for` (24 h by default), so an outage
//! of a mail relay or a PSA loses nothing. A notification still failing
//! after that becomes a dead letter, visible in the API and counted, never
//! silently dropped, and re-sent on request ([`resend`]).
//!
//! [`queue`] decides (time passed in); this module's task only moves
//! notifications to the senders ([`webhook`], [`email`]) and back.

pub mod email;
pub mod queue;
pub mod resend;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use outpost_storage::{Store, now_ms};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use super::model::{Channel, ChannelKind, Notification};
use super::store::{self, ConfigKind};
use crate::metrics::{AlertStage, Metrics};
use queue::{AttemptResult, Queue};

/// How failed deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// How long a notification is retried, from its creation (or the
    /// re-send of its dead letter), before it becomes a dead letter.
    pub retry_for: Duration,
    /// Delay before the second attempt; doubles each attempt.
    pub base: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

/// Delay after the `attempts`-th failed attempt.
pub fn backoff(p: &RetryPolicy, attempts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    p.base.saturating_mul(factor).min(p.max)
}

/// Handle to hand freshly queued notifications to the dispatcher.
#[derive(Clone, Debug)]
pub struct NotifyHandle {
    tx: mpsc::UnboundedSender<Notification>,
}

impl NotifyHandle {
    /// The notification must already be persisted in the queue.
    pub fn submit(&self, n: Notification) {
        if let Err(e) = self.tx.send(n) {
            // Only after shutdown: it stays queued on disk and is delivered
            // after the next start.
            debug!(
                id = e.0.id,
                "notification dispatcher stopped; delivery after restart"
            );
        }
    }

    /// A handle whose notifications land in the returned receiver, for the
    /// engine's tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> (NotifyHandle, mpsc::UnboundedReceiver<Notification>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (NotifyHandle { tx }, rx)
    }
}

/// Starts the dispatcher; it first re-loads what was queued before a restart.
pub fn spawn(
    store: Store,
    metrics: Arc<Metrics>,
    policy: RetryPolicy,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> anyhow::Result<NotifyHandle> {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = webhook::client()?;
    let queue = Queue::load(store.clone(), metrics.clone(), policy)?;
    tracker.spawn(run(store, metrics, policy, client, queue, rx, shutdown));
    Ok(NotifyHandle { tx })
}

/// Delivers one notification through its channel.
pub(crate) async fn deliver(
    store: &Store,
    client: &webhook::HttpsClient,
    n: &Notification,
    timeout: Duration,
) -> AttemptResult {
    let channel: Channel = match store::get_config(store, ConfigKind::Channel, &n.channel_id) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err((
                format!("channel {:?} does not exist", n.channel_id),
                "missing",
            ));
        }
        Err(e) => return Err((format!("reading channel: {e}"), "unknown")),
    };
    match &channel.kind {
        ChannelKind::Webhook { url, format } => {
            let body = webhook::body(*format, n.event, &n.alert);
            webhook::send(client, url, &body, timeout)
                .await
                .map(|_| "webhook")
                .map_err(|e| (format!("{e:#}"), "webhook"))
        }
        kind @ ChannelKind::Email { .. } => email::send(kind, n.event, &n.alert, timeout)
            .await
            .map(|_| "email")
            .map_err(|e| (format!("{e:#}"), "email")),
    }
}

async fn run(
    store: Store,
    metrics: Arc<Metrics>,
    policy: RetryPolicy,
    client: webhook::HttpsClient,
    mut queue: Queue,
    mut rx: mpsc::UnboundedReceiver<Notification>,
    shutdown: CancellationToken,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Notification, AttemptResult)>();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        for n in queue.take_due(now_ms()) {
            let (store, client, done, sem, metrics) = (
                store.clone(),
                client.clone(),
                done_tx.clone(),
                in_flight.clone(),
                metrics.clone(),
            );
            let span = info_span!("notify", id = n.id, channel = %n.channel_id, event = n.event.as_str(), alert = n.alert.id);
            tokio::spawn(
                async move {
                    let _permit = sem.acquire_owned().await;
                    let started = std::time::Instant::now();
                    let r = deliver(&store, &client, &n, policy.timeout).await;
                    metrics.alert_stage(AlertStage::Send, started.elapsed());
                    let _ = done.send((n, r));
                }
                .instrument(span),
            );
        }
        let sleep = queue
            .next_due_ms()
            .map(|t| Duration::from_millis(t.saturating_sub(now_ms())))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        tokio::select! {
            Some(n) = rx.recv() => queue.submit(n),
            Some((n, r)) = done_rx.recv() => { queue.finish(n, r, now_ms()); }
            _ = tokio::time::sleep(sleep) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        let p = RetryPolicy {
            retry_for: Duration::from_secs(60),
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
        };
        let d: Vec<u64> = (1..=6).map(|a| backoff(&p, a).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 10, 10]);
    }
}
