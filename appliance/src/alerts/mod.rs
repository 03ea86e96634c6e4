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
    /// How long a failing notification is retried (at `notify_retry_max`
    /// once the delay has grown to it) before it becomes a dead letter:
    /// longer than any maintenance of a mail relay or PSA.
    #[serde(with = "humantime_serde")]
    pub notify_retry_for: Duration,
    /// No longer used (giving up is time-based: `notify_retry_for`); still
    /// accepted so that configurations which set it keep loading, with a
    /// warning at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify_max_attempts: Option<u32>,
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
            notify_retry_for: Duration::from_secs(24 * 3600),
            notify_max_attempts: None,
            notify_retry_base: Duration::from_secs(2),
            notify_retry_max: Duration::from_secs(300),
            notify_timeout: Duration::from_secs(10),
        }
    }
}

/// Bounds of `notify_retry_for`.
pub const NOTIFY_RETRY_FOR_MIN: Duration = Duration::from_secs(1);
pub const NOTIFY_RETRY_FOR_MAX: Duration = Duration::from_secs(30 * 86400);

impl AlertsConfig {
    /// Refuses values outside their bounds, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.eval_queue == 0 {
            return Err("alerts.eval_queue must be positive".into());
        }
        if !(NOTIFY_RETRY_FOR_MIN..=NOTIFY_RETRY_FOR_MAX).contains(&self.notify_retry_for) {
            return Err(
                "alerts.notify_retry_for must be between 1s and 30days (default 24h)".into(),
            );
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(3600))
            .contains(&self.notify_retry_base)
            || !(self.notify_retry_base..=Duration::from_secs(3600))
                .contains(&self.notify_retry_max)
        {
            return Err("alerts.notify_retry_base must be between 10ms and 1h, and \
                 alerts.notify_retry_max between notify_retry_base and 1h"
                .into());
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.notify_timeout) {
            return Err("alerts.notify_timeout must be between 100ms and 5m".into());
        }
        Ok(())
    }

    pub fn retry_policy(&self) -> notify::RetryPolicy {
        if let Some(n) = self.notify_max_attempts {
            tracing::warn!(
                notify_max_attempts = n,
                retry_for = ?self.notify_retry_for,
                "alerts.notify_max_attempts is no longer used: a failing notification is \
                 retried for alerts.notify_retry_for; remove the key"
            );
        }
        notify::RetryPolicy {
            retry_for: self.notify_retry_for,
            base: self.notify_retry_base,
            max: self.notify_retry_max.max(self.notify_retry_base),
            timeout: self.notify_timeout,
        }
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn notifications_are_retried_for_a_day_by_default_within_bounds() {
        let c = AlertsConfig::default();
        assert_eq!(c.notify_retry_for, Duration::from_secs(86400));
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.retry_policy().retry_for, Duration::from_secs(86400));
        let t = |s: &str| toml::from_str::<AlertsConfig>(s);
        let c = t("notify_retry_for = \"2h\"\nnotify_max_attempts = 8\n").unwrap();
        assert_eq!(c.notify_retry_for, Duration::from_secs(7200));
        assert_eq!(c.validate(), Ok(()), "the old key still loads");
        for bad in [
            "notify_retry_for = \"0s\"",
            "notify_retry_for = \"31days\"",
            "notify_retry_base = \"0s\"",
            "notify_retry_base = \"10s\"\nnotify_retry_max = \"5s\"",
            "notify_timeout = \"0s\"",
        ] {
            let c = t(bad).unwrap();
            assert!(c.validate().is_err(), "{bad} passed");
        }
    }
}
