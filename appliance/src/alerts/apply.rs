//! Applying decisions: turns an [`Outcome`] of the pure core into one
//! RocksDB write batch (history events, the lifecycle transition for
//! central's outbox, queued notifications, the alert record), writes it,
//! then hands the queued notifications to the dispatcher and counts.
//!
//! It decides nothing: what to record and whom to notify comes from
//! [`super::lifecycle`] and [`super::timers`]. An error is logged with its
//! context and counted in `outpost_alert_errors_total{op}`, never dropped.

use std::sync::Arc;

use outpost_storage::Batch;
use outpost_storage::Store;
use outpost_storage::model::AuditEntry;
use outpost_storage::registry;
use tracing::{info, warn};

use super::decision::{Action, Outcome};
use super::model::{Alert, AlertEvent, EventKind, Notification};
use super::notify::NotifyHandle;
use super::store;
use crate::metrics::{AlertStage, KindLabel, Metrics, OpLabel};

/// The operations whose failures `outpost_alert_errors_total{op}` counts.
pub mod op {
    /// Adding an event to an alert's history (or its uplink transition).
    pub const RECORD_EVENT: &str = "record_event";
    /// Queueing one notification.
    pub const QUEUE_NOTIFICATION: &str = "queue_notification";
    /// Writing the batch with the alert record (nothing of it is kept).
    pub const PERSIST: &str = "persist";
    /// Writing the audit entry of an acknowledgement.
    pub const AUDIT: &str = "audit";
    /// Reading a device's tenant, customer, hostname or tags.
    pub const DEVICE_LOOKUP: &str = "device_lookup";
    /// Re-reading rules, channels, policies and windows.
    pub const RELOAD_CONFIG: &str = "reload_config";
    /// Reading a closed alert (to say why it cannot be acknowledged).
    pub const READ_ALERT: &str = "read_alert";
}

/// Writes outcomes and submits their notifications.
pub struct Applier {
    store: Store,
    metrics: Arc<Metrics>,
    notify: NotifyHandle,
    /// The id of the next notification (ids are never reused).
    next_notification_id: u64,
}

impl Applier {
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        notify: NotifyHandle,
        next_notification_id: u64,
    ) -> Applier {
        Applier {
            store,
            metrics,
            notify,
            next_notification_id,
        }
    }

    /// Logs and counts a failed operation.
    pub fn error(&self, op: &'static str, alert: Option<u64>, e: &dyn std::fmt::Display) {
        self.metrics
            .alert_errors
            .get_or_create(&OpLabel { op: op.into() })
            .inc();
        warn!(op, alert, error = %e, "alert engine: {op} failed");
    }

    /// Applies `out` for `a` (the alert after the decision) at `now_ms`.
    /// Nothing to do: nothing is written. Whether the alert record was
    /// written (false: nothing to do, or the write failed).
    pub fn apply(&mut self, a: &Alert, out: Outcome, now_ms: u64) -> bool {
        if out.is_empty() {
            return false;
        }
        if let Some(kind) = out.transition {
            self.metrics
                .alert_transitions
                .get_or_create(&KindLabel {
                    kind: kind.as_str().into(),
                })
                .inc();
            match kind {
                EventKind::Firing => {
                    info!(alert = a.id, rule = %a.rule_id, device = %a.device, label = %a.label, value = ?a.value, "alert firing");
                }
                EventKind::Resolved => {
                    info!(alert = a.id, rule = %a.rule_id, device = %a.device, "alert resolved");
                }
                _ => {}
            }
        }
        let mut batch = self.store.batch();
        let mut queued = Vec::new();
        for action in out.actions {
            match action {
                Action::Record { kind, detail } => {
                    if let Err(e) = self.record(&mut batch, a, kind, &detail, now_ms) {
                        self.error(op::RECORD_EVENT, Some(a.id), &format!("{kind}: {e}"));
                    }
                }
                Action::Notify {
                    event,
                    channels,
                    alert,
                } => {
                    for channel_id in channels {
                        let n = Notification {
                            id: self.next_notification_id,
                            channel_id,
                            event,
                            alert: (*alert).clone(),
                            created_ms: now_ms,
                            attempts: 0,
                            next_attempt_ms: now_ms,
                            last_error: None,
                            retry_since_ms: now_ms,
                        };
                        self.next_notification_id += 1;
                        match store::queue_notification(&mut batch, &n) {
                            Ok(()) => queued.push(n),
                            Err(e) => self.error(
                                op::QUEUE_NOTIFICATION,
                                Some(a.id),
                                &format!("{} to {}: {e}", event.as_str(), n.channel_id),
                            ),
                        }
                    }
                }
            }
        }
        let started = std::time::Instant::now();
        let written = store::save_alert(&mut batch, a).and_then(|_| self.store.write(batch));
        self.metrics
            .alert_stage(AlertStage::Persist, started.elapsed());
        if let Err(e) = written {
            self.metrics.write_errors.inc();
            self.error(op::PERSIST, Some(a.id), &e);
            return false;
        }
        for n in queued {
            self.notify.submit(n);
        }
        true
    }

    /// Adds one history event to `b`; lifecycle transitions also go up to
    /// central in the same batch, so they are pending for the uplink
    /// exactly when they are durable here (a no-op while the site is not
    /// joined).
    fn record(
        &self,
        b: &mut Batch,
        a: &Alert,
        kind: EventKind,
        detail: &str,
        now_ms: u64,
    ) -> outpost_storage::error::Result<()> {
        store::add_event(
            b,
            &AlertEvent {
                alert_id: a.id,
                at_ms: now_ms,
                event: kind,
                value: a.value,
                detail: detail.into(),
            },
        )?;
        use outpost_uplink::batch::{AlertState as UpState, AlertTransition};
        let state = match kind {
            EventKind::Pending => UpState::Pending,
            EventKind::Firing => UpState::Firing,
            EventKind::Resolved => UpState::Resolved,
            // A pending alert that never fired: central must not show it
            // resolved (batch format 3).
            EventKind::Cleared => UpState::Cleared,
            _ => return Ok(()),
        };
        let t = AlertTransition {
            alert_id: a.id,
            device: Some(a.device),
            rule: a.rule_name.clone(),
            severity: a.severity,
            state,
            at_ms: now_ms,
            message: if detail.is_empty() {
                format!("{} on {}", a.rule_name, a.hostname)
            } else {
                format!("{} on {}: {detail}", a.rule_name, a.hostname)
            },
            value: a.value,
        };
        outpost_uplink::outbox::alert_transition_into(&self.store, b, &t).map_err(|e| match e {
            outpost_uplink::outbox::OutboxError::Storage(s) => s,
            other => outpost_storage::error::StorageError::Invalid(format!(
                "uplink alert transition: {other}"
            )),
        })?;
        Ok(())
    }

    /// Writes the audit entry of an acknowledgement.
    pub fn audit_ack(&self, id: u64, by: &str, comment: &str, now_ms: u64) {
        if let Err(e) = registry::audit(
            &self.store,
            &AuditEntry {
                at_ms: now_ms,
                actor: by.into(),
                action: "alert.ack".into(),
                target: id.to_string(),
                detail: comment.into(),
            },
        ) {
            self.error(op::AUDIT, Some(id), &e);
        }
    }
}
