//! `outpost_deployments` and `outpost_deploy_*` Prometheus metrics:
//! deployments by state, device installs by result, gate failures,
//! rollbacks, prefetched bytes, and what the orchestrator dropped or
//! refused (ignored reports, rejected technician actions, failed
//! installer calls).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::labels::{ReasonLabel, ResultLabel, StateLabel};

/// Counters of the deployment orchestrator.
#[derive(Debug, Default)]
pub struct DeployMetrics {
    /// Deployments by phase (`pending`, `running`, `paused`, …), set
    /// after every change.
    pub deployments: Family<StateLabel, Gauge>,
    /// Device installs by final result (`succeeded`, `failed`,
    /// `rolled_back`, `rollback_failed`).
    pub installs: Family<ResultLabel, Counter>,
    pub gate_failures: Counter,
    /// Rollbacks dispatched to devices.
    pub rollbacks: Counter,
    /// Bytes fetched into the site cache ahead of deployments.
    pub prefetch_bytes: Counter,
    /// Device reports that changed nothing (stale attempt, unknown device).
    pub ignored_reports: Counter,
    /// Technician actions refused in the deployment's state (409).
    pub rejected: Counter,
    /// Installer calls that failed (by reason); the action is retried on
    /// the next start (`recover`).
    pub dispatch_errors: Family<ReasonLabel, Counter>,
    /// Bytes of the deployment store's writes (one per step).
    pub store_write_bytes: Counter,
    /// Device records written (the devices a step changed).
    pub store_device_records: Counter,
    /// Deployment headers written (creation, phase or patch changes).
    pub store_header_writes: Counter,
}

impl DeployMetrics {
    pub fn install_result(&self, result: &str) {
        self.installs
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn dispatch_error(&self, reason: &str) {
        self.dispatch_errors
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Sets the gauge of every phase from the counts (phases absent are 0).
    pub fn set_states(&self, counts: &std::collections::BTreeMap<&'static str, i64>) {
        for phase in [
            "pending",
            "running",
            "paused",
            "completed",
            "aborted",
            "rolling_back",
            "rolled_back",
        ] {
            self.deployments
                .get_or_create(&StateLabel {
                    state: phase.to_string(),
                })
                .set(counts.get(phase).copied().unwrap_or(0));
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "deployments",
            "Patch deployments by state",
            self.deployments.clone(),
        );
        let r = registry.sub_registry_with_prefix("deploy");
        r.register(
            "installs",
            "Device installs by final result",
            self.installs.clone(),
        );
        r.register(
            "gate_failures",
            "Stage gates that failed (the deployment paused)",
            self.gate_failures.clone(),
        );
        r.register(
            "rollbacks",
            "Rollbacks dispatched to devices",
            self.rollbacks.clone(),
        );
        r.register(
            "prefetch_bytes",
            "Bytes fetched into the site cache ahead of deployments",
            self.prefetch_bytes.clone(),
        );
        r.register(
            "ignored_reports",
            "Device reports that changed no deployment (stale or unknown)",
            self.ignored_reports.clone(),
        );
        r.register(
            "rejected",
            "Technician actions refused in the deployment's state",
            self.rejected.clone(),
        );
        r.register(
            "dispatch_errors",
            "Installer calls that failed, by reason (re-applied at the next start)",
            self.dispatch_errors.clone(),
        );
        r.register(
            "store_write_bytes",
            "Bytes of the deployment store's writes (one per step)",
            self.store_write_bytes.clone(),
        );
        r.register(
            "store_device_records",
            "Per-device deployment records written (the devices a step changed)",
            self.store_device_records.clone(),
        );
        r.register(
            "store_header_writes",
            "Deployment headers written (creation, phase or patch changes)",
            self.store_header_writes.clone(),
        );
    }
}
