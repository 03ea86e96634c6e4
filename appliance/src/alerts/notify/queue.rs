//! The delivery queue's decisions, with the time passed in and no network:
//! which notifications are due, what a failed attempt leads to (a retry at
//! the doubling, capped delay, until the retry period is over: then a dead
//! letter), and recording each outcome in the store and the counters. The
//! task in [`super`] only hands due notifications to the senders and their
//! results back; it must not decide anything itself.
//!
//! **Order.** The notifications of one alert to one channel (a *lane*) go
//! out strictly in the order they were decided (by id): a later one waits
//! while an earlier one is being sent or waits for a retry, so a receiver
//! never gets an alert's resolution before its firing (a PSA would keep a
//! ticket open for a resolved alert). Lanes do not wait for each other. A
//! lane moves on when its head is delivered or becomes a dead letter.
//!
//! **Superseding.** A resolution queued behind undelivered reminders of the
//! same lane drops them (`result="superseded"`): "still firing" is stale
//! once the alert resolved. The firing and escalations are kept and go
//! first, so the receiver still sees the alert open, then closed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use outpost_storage::Store;
use tracing::{debug, warn};

use super::{RetryPolicy, backoff};
use crate::alerts::model::{Channel, ChannelKind, Notification, NotifyEvent};
use crate::alerts::store::{self, ConfigKind};
use crate::metrics::{Metrics, NotifyLabel};

/// What one delivery attempt gave: the channel type (`webhook`, `email`)
/// on success; on failure the error and the channel type (`missing`: the
/// channel does not exist, retrying cannot help).
pub type AttemptResult = Result<&'static str, (String, &'static str)>;

/// What became of a notification after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Delivered,
    /// Failed; the next attempt is at this time.
    Retry {
        at_ms: u64,
    },
    /// Failed for good: a dead letter (`GET /api/v1/notifications/dead-letters`).
    Dead,
}

/// When the current delivery period of `n` ends: `retry_for` after its
/// creation or the re-send of its dead letter.
pub fn deadline_ms(p: &RetryPolicy, n: &Notification) -> u64 {
    let since = if n.retry_since_ms == 0 {
        n.created_ms
    } else {
        n.retry_since_ms
    };
    since.saturating_add(u64::try_from(p.retry_for.as_millis()).unwrap_or(u64::MAX))
}

/// After the `n.attempts`-th attempt failed at `now_ms`: retried at the
/// doubling, capped delay, the last attempt exactly at the end of the
/// period; a failure at or after it makes a dead letter.
pub fn after_failure(p: &RetryPolicy, n: &Notification, now_ms: u64) -> Finished {
    let deadline = deadline_ms(p, n);
    if now_ms >= deadline {
        return Finished::Dead;
    }
    let delay = u64::try_from(backoff(p, n.attempts).as_millis()).unwrap_or(u64::MAX);
    Finished::Retry {
        at_ms: now_ms.saturating_add(delay).min(deadline),
    }
}

/// The notifications of one alert to one channel, delivered in order.
type Lane = (u64, String);

fn lane(n: &Notification) -> Lane {
    (n.alert.id, n.channel_id.clone())
}

/// The queued notifications and what is being sent.
pub struct Queue {
    /// Where queued notifications and dead letters are persisted.
    store: Store,
    /// `outpost_notifications_total{channel_type,event,result}`.
    metrics: Arc<Metrics>,
    /// How failed attempts are retried and when they stop.
    policy: RetryPolicy,
    /// Notifications waiting for their next attempt, by id.
    waiting: BTreeMap<u64, Notification>,
    /// Ids handed to a sender and not finished yet: one submitted again
    /// meanwhile (a dead letter re-sent twice) is not queued twice.
    in_flight: BTreeSet<u64>,
    /// Lanes with a notification being sent: the rest of the lane waits.
    busy: BTreeSet<Lane>,
}

impl Queue {
    /// The queue with what was persisted before a restart.
    pub fn load(
        store: Store,
        metrics: Arc<Metrics>,
        policy: RetryPolicy,
    ) -> outpost_storage::error::Result<Queue> {
        let mut q = Queue {
            waiting: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            busy: BTreeSet::new(),
            store,
            metrics,
            policy,
        };
        for n in store::queued(&q.store)? {
            q.submit(n);
        }
        Ok(q)
    }

    /// Adds a notification already persisted in the queue. A resolution
    /// supersedes the undelivered reminders queued before it in its lane.
    pub fn submit(&mut self, n: Notification) {
        if self.in_flight.contains(&n.id) || self.waiting.contains_key(&n.id) {
            debug!(id = n.id, "notification already queued");
            return;
        }
        if n.event == NotifyEvent::Resolved {
            let l = lane(&n);
            let stale: Vec<u64> = self
                .waiting
                .range(..n.id)
                .filter(|(_, w)| w.event == NotifyEvent::Reminder && lane(w) == l)
                .map(|(id, _)| *id)
                .collect();
            for id in stale {
                let Some(w) = self.waiting.remove(&id) else {
                    continue;
                };
                let kind = self.channel_type(&w.channel_id);
                self.count(kind, &w, "superseded");
                debug!(id, alert = w.alert.id, channel = %w.channel_id, "reminder superseded by the alert's resolution");
                if let Err(e) = store::unqueue_notification(&self.store, w.id) {
                    warn!(error = %e, id, "removing a superseded reminder from the queue failed (it is dropped again after a restart)");
                }
            }
        }
        self.waiting.insert(n.id, n);
    }

    /// The first waiting notification of each lane that is not busy, in
    /// id order: the only ones that may be sent.
    fn heads(&self) -> impl Iterator<Item = &Notification> {
        let mut seen = BTreeSet::new();
        self.waiting.values().filter(move |n| {
            let l = lane(n);
            !self.busy.contains(&l) && seen.insert(l)
        })
    }

    /// The notifications due at `now_ms`, now in flight: each must come
    /// back through [`Queue::finish`]. At most one per lane.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<Notification> {
        let due: Vec<u64> = self
            .heads()
            .filter(|n| n.next_attempt_ms <= now_ms)
            .map(|n| n.id)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for id in due {
            if let Some(n) = self.waiting.remove(&id) {
                self.in_flight.insert(id);
                self.busy.insert(lane(&n));
                out.push(n);
            }
        }
        out
    }

    /// When the next notification that may be sent is due (a later one of
    /// a busy lane does not count: it waits for the lane, not the clock).
    pub fn next_due_ms(&self) -> Option<u64> {
        self.heads().map(|n| n.next_attempt_ms).min()
    }

    /// The channel's type for the counters (`missing` when it is gone).
    fn channel_type(&self, id: &str) -> &'static str {
        match store::get_config::<Channel>(&self.store, ConfigKind::Channel, id) {
            Ok(Some(c)) => match c.kind {
                ChannelKind::Webhook { .. } => "webhook",
                ChannelKind::Email { .. } => "email",
            },
            Ok(None) => "missing",
            Err(_) => "unknown",
        }
    }

    /// Nothing waits and nothing is being sent.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.in_flight.is_empty()
    }

    fn count(&self, channel_type: &str, n: &Notification, result: &str) {
        self.metrics
            .notifications
            .get_or_create(&NotifyLabel {
                channel_type: channel_type.to_string(),
                event: n.event.as_str().to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Records the result of an attempt on `n` (taken from
    /// [`Queue::take_due`]) made at `now_ms`: persisted, counted, and
    /// queued again for a retry.
    pub fn finish(&mut self, mut n: Notification, r: AttemptResult, now_ms: u64) -> Finished {
        self.in_flight.remove(&n.id);
        self.busy.remove(&lane(&n));
        n.attempts = n.attempts.saturating_add(1);
        let (finished, kind) = match r {
            Ok(kind) => (Finished::Delivered, kind),
            Err((err, kind)) => {
                let f = if kind == "missing" {
                    Finished::Dead
                } else {
                    after_failure(&self.policy, &n, now_ms)
                };
                match f {
                    Finished::Retry { at_ms } => {
                        n.next_attempt_ms = at_ms;
                        warn!(id = n.id, channel = %n.channel_id, attempts = n.attempts, retry_in_ms = at_ms - now_ms, error = %err, "notification failed; will retry");
                    }
                    _ => {
                        warn!(id = n.id, channel = %n.channel_id, attempts = n.attempts, error = %err, "notification failed for good: dead letter");
                    }
                }
                n.last_error = Some(err);
                (f, kind)
            }
        };
        let result = match finished {
            Finished::Delivered => "delivered",
            Finished::Retry { .. } => "retry",
            Finished::Dead => "dead_letter",
        };
        self.count(kind, &n, result);
        let (dead, delivered) = (finished == Finished::Dead, finished == Finished::Delivered);
        if let Err(e) = store::finish_notification(&self.store, &n, dead, delivered) {
            warn!(error = %e, id = n.id, "recording a notification's {result} failed");
        }
        if let Finished::Retry { .. } = finished {
            self.waiting.insert(n.id, n);
        }
        finished
    }
}
