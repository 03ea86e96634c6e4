//! `outpost_patches_*` Prometheus metrics: package reports received and
//! refused, delta base misses, unparsable versions skipped, catalog
//! imports and their failures, assessment time.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::metrics::labels::{KindLabel, ReasonLabel};

/// Counters of the patch subsystem.
#[derive(Debug)]
pub struct PatchMetrics {
    /// Package reports applied, by kind (`full`, `delta`).
    pub scans_received: Family<KindLabel, Counter>,
    /// Deltas whose base is not the stored scan (a full scan is needed).
    pub delta_base_misses: Counter,
    /// `ScanPackages` commands queued (a base miss, or a technician's
    /// request): `outpost_patches_full_scan_requests_total`.
    pub full_scan_requests: Counter,
    /// Reports refused, by reason (`unknown_format`, `malformed`).
    pub reports_rejected: Family<ReasonLabel, Counter>,
    /// Tool-output lines the agents skipped (unparsable versions...), as
    /// reported in their scans.
    pub unparsable_versions_skipped: Counter,
    /// Catalog imports that succeeded, and that were refused.
    pub imports: Counter,
    pub import_failures: Counter,
    /// Seconds to assess one device.
    pub assessment_seconds: Histogram,
    /// Devices with a stored scan, and advisories in the catalog.
    pub devices: Gauge,
    pub catalog_advisories: Gauge,
}

impl Default for PatchMetrics {
    fn default() -> Self {
        PatchMetrics {
            scans_received: Family::default(),
            delta_base_misses: Counter::default(),
            full_scan_requests: Counter::default(),
            reports_rejected: Family::default(),
            unparsable_versions_skipped: Counter::default(),
            imports: Counter::default(),
            import_failures: Counter::default(),
            assessment_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 20)),
            devices: Gauge::default(),
            catalog_advisories: Gauge::default(),
        }
    }
}

impl PatchMetrics {
    pub fn received(&self, kind: &str) {
        self.scans_received
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.reports_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("patches");
        r.register(
            "scans_received",
            "Package reports applied, by kind (full, delta)",
            self.scans_received.clone(),
        );
        r.register(
            "delta_base_misses",
            "Package deltas against a scan the appliance does not hold (a full scan is needed)",
            self.delta_base_misses.clone(),
        );
        r.register(
            "full_scan_requests",
            "Package scan commands queued (a delta base miss or a technician's request)",
            self.full_scan_requests.clone(),
        );
        r.register(
            "reports_rejected",
            "Package reports refused, by reason",
            self.reports_rejected.clone(),
        );
        r.register(
            "unparsable_versions_skipped",
            "Package tool output lines the agents skipped (unparsable versions...)",
            self.unparsable_versions_skipped.clone(),
        );
        r.register(
            "imports",
            "Advisory catalog imports that succeeded",
            self.imports.clone(),
        );
        r.register(
            "import_failures",
            "Advisory catalog imports refused (malformed or unreadable feed)",
            self.import_failures.clone(),
        );
        r.register(
            "assessment_seconds",
            "Time to assess one device",
            self.assessment_seconds.clone(),
        );
        r.register(
            "devices",
            "Devices with a stored package scan",
            self.devices.clone(),
        );
        r.register(
            "catalog_advisories",
            "Advisories in the catalog in service",
            self.catalog_advisories.clone(),
        );
    }
}
