//! `outpost_commands_*` Prometheus metrics: commands entering each state,
//! open commands, dispatch latency, output bytes, truncations, expiries
//! and refusals by reason.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::metrics::labels::{ReasonLabel, StateLabel};

/// Counters of the command subsystem.
#[derive(Debug)]
pub struct CommandMetrics {
    /// Commands entering each state (`queued` counts creations).
    pub transitions: Family<StateLabel, Counter>,
    /// Commands not yet terminal (queued, sent or running).
    pub open: Gauge,
    /// Seconds from the API call to the agent starting the process.
    pub dispatch_latency_seconds: Histogram,
    /// Output bytes stored (after the cap) and received.
    pub output_bytes_stored: Counter,
    pub output_bytes_received: Counter,
    /// Output bytes received again (re-sends after reconnects).
    pub output_bytes_duplicate: Counter,
    /// Commands whose output hit the cap (counted once each).
    pub truncations: Counter,
    /// Queued commands that expired before their device connected.
    pub expiries: Counter,
    /// `sent`/`running` commands ended by a deadline: `interrupted`
    /// because their offline device did not report within timeout + 10
    /// min, or reboots `failed` because the device did not come back.
    pub no_report_deadlines: Counter,
    /// Bulk runs created.
    pub bulk_runs: Counter,
    /// Commands refused, by reason: at the appliance (`unknown_device`,
    /// `revoked_device`, `invalid_spec`) and by agents (`agent_policy`,
    /// `agent_failed_to_start`).
    pub refusals: Family<ReasonLabel, Counter>,
    /// Results received again for a finished command (acked, not stored).
    pub duplicate_results: Counter,
    /// Events for command ids this appliance does not know (acked, dropped).
    pub unknown_events: Counter,
    /// Storage failures (the event is not acked: the agent re-sends).
    pub store_errors: Counter,
}

impl Default for CommandMetrics {
    fn default() -> Self {
        CommandMetrics {
            transitions: Family::default(),
            open: Gauge::default(),
            dispatch_latency_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 20)),
            output_bytes_stored: Counter::default(),
            output_bytes_received: Counter::default(),
            output_bytes_duplicate: Counter::default(),
            truncations: Counter::default(),
            expiries: Counter::default(),
            no_report_deadlines: Counter::default(),
            bulk_runs: Counter::default(),
            refusals: Family::default(),
            duplicate_results: Counter::default(),
            unknown_events: Counter::default(),
            store_errors: Counter::default(),
        }
    }
}

impl CommandMetrics {
    pub fn refuse(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn entered(&self, state: &str) {
        self.transitions
            .get_or_create(&StateLabel {
                state: state.to_string(),
            })
            .inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("commands");
        r.register(
            "transitions",
            "Commands entering each state",
            self.transitions.clone(),
        );
        r.register(
            "open",
            "Commands queued, sent or running",
            self.open.clone(),
        );
        r.register(
            "dispatch_latency_seconds",
            "Time from the API call to the agent starting the process",
            self.dispatch_latency_seconds.clone(),
        );
        r.register(
            "output_bytes_stored",
            "Command output bytes stored (after the cap)",
            self.output_bytes_stored.clone(),
        );
        r.register(
            "output_bytes_received",
            "Command output bytes received from agents",
            self.output_bytes_received.clone(),
        );
        r.register(
            "output_bytes_duplicate",
            "Command output bytes received again (re-sends)",
            self.output_bytes_duplicate.clone(),
        );
        r.register(
            "truncations",
            "Commands whose output exceeded the cap",
            self.truncations.clone(),
        );
        r.register(
            "expiries",
            "Queued commands that expired before their device connected",
            self.expiries.clone(),
        );
        r.register(
            "no_report_deadlines",
            "Commands ended by a deadline (offline device silent, reboot not back)",
            self.no_report_deadlines.clone(),
        );
        r.register("bulk_runs", "Bulk runs created", self.bulk_runs.clone());
        r.register(
            "refusals",
            "Commands refused, by reason",
            self.refusals.clone(),
        );
        r.register(
            "duplicate_results",
            "Results received again for finished commands",
            self.duplicate_results.clone(),
        );
        r.register(
            "unknown_events",
            "Command events for unknown command ids",
            self.unknown_events.clone(),
        );
        r.register(
            "store_errors",
            "Command state writes that failed",
            self.store_errors.clone(),
        );
    }
}
