//! Edge alerting: rules evaluated as samples are stored, a persisted alert
//! lifecycle (pending → firing → resolved, acknowledged, silenced),
//! maintenance windows, escalation policies, and webhook / e-mail
//! notifications delivered off the ingest path with retries and dead
//! letters.
//!
//! * [`model`]: rules, channels, policies, windows, alerts (API bodies too;
//!   from the RocksDB-free `outpost-alerting` crate, re-exported here);
//! * the pure decision core, with the time passed in and no I/O:
//!   [`eval`] (the threshold state machine), [`lifecycle`] (what each
//!   transition records and notifies), [`timers`] (due times, windows
//!   ending, escalation, reminders, no-data), [`windows`] (maintenance
//!   window schedules, time zones; from `outpost-alerting`), and
//!   [`decision`] (their vocabulary: rule plans, outcomes);
//! * [`engine`]: the task that owns open alerts and routes inputs to the
//!   core; [`apply`]: writes outcomes and submits their notifications;
//! * [`builtin`]: the rules shipped with the appliance;
//! * [`references`]: whether a rule's channels, escalation policy and
//!   metric resolve (API validation, `outpost alerts rules --check`);
//! * [`notify`]: the delivery queue and the webhook and SMTP senders;
//! * [`store`]: RocksDB persistence.
//!
//! This module must not block the ingest writer: the writer hands it
//! committed samples through a bounded queue; what overflows it is
//! summarized per series and evaluated once the engine catches up
//! ([`overflow`]), counted and logged.

pub mod apply;
pub mod builtin;
pub mod decision;
pub mod engine;
pub mod eval;
pub mod lifecycle;
pub mod notify;
pub mod overflow;
pub mod references;
pub mod store;
pub mod timers;

pub use outpost_alerting::{model, windows};

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[alerts]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Sample batches waiting for evaluation; beyond it batches are
    /// summarized per series and evaluated when the engine catches up, and
    /// counted (`outpost_alert_inputs_dropped_total`).
    pub eval_queue: usize,
    /// Delivery attempts before a notification becomes a dead letter.
    pub notify_max_attempts: u32,
    /// First retry delay (doubles each attempt) and the longest delay.
    #[serde(with = "humantime_serde")]
    pub notify_retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub notify_retry_max: Duration,
    /// Per-attempt timeout of a webhook or SMTP delivery.
    #[serde(with = "humantime_serde")]
    pub notify_timeout: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            eval_queue: 4096,
            notify_max_attempts: 8,
            notify_retry_base: Duration::from_secs(2),
            notify_retry_max: Duration::from_secs(300),
            notify_timeout: Duration::from_secs(10),
        }
    }
}

impl AlertsConfig {
    pub fn retry_policy(&self) -> notify::RetryPolicy {
        notify::RetryPolicy {
            max_attempts: self.notify_max_attempts.max(1),
            base: self.notify_retry_base,
            max: self.notify_retry_max.max(self.notify_retry_base),
            timeout: self.notify_timeout,
        }
    }
}
