//! `outpost_cache_*` Prometheus metrics. Every refusal, failure and
//! eviction is counted here.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::labels::{ReasonLabel, ResultLabel};

/// Counters and gauges of the LAN patch cache.
#[derive(Debug, Default)]
pub struct CacheMetrics {
    /// Client requests by result (`hit`, `miss`, `coalesced`, `passthrough`,
    /// `not_modified`, `stale`, `refused`, `error`).
    pub requests: Family<ResultLabel, Counter>,
    /// Requests answered from a complete cached file.
    pub hits: Counter,
    /// Requests that needed an upstream download (the first of a group).
    pub misses: Counter,
    /// Requests that joined a download already in flight (no new upstream fetch).
    pub coalesced: Counter,
    /// Requests to upstream servers.
    pub upstream_requests: Counter,
    /// Body bytes received from upstream servers.
    pub upstream_bytes: Counter,
    /// Failed upstream requests (connect, timeout, bad status, short body).
    pub upstream_errors: Counter,
    /// Body bytes sent to clients from complete cached files.
    pub served_cache_bytes: Counter,
    /// Body bytes sent to clients from in-flight downloads or pass-through.
    pub served_upstream_bytes: Counter,
    /// Files that failed verification, by reason (`signature`, `rollback`,
    /// `suite_mismatch`, `future_date`, `expired`, `index_hash`,
    /// `package_hash`, `size_cap`, `rehash`, `parse`).
    pub verify_failures: Family<ReasonLabel, Counter>,
    /// Requests refused, by reason (`forbidden_host`, `method`, `bad_target`,
    /// `unverified`, `bad_range`, `downloads_busy`, `client_downloads`,
    /// `cache_full`, `disk_reserve`, `too_large_for_cache`,
    /// `agent_package_not_found`).
    pub refused: Family<ReasonLabel, Counter>,
    /// Cached indexes served while upstream was unreachable.
    pub stale_served: Counter,
    pub evictions: Counter,
    pub evicted_bytes: Counter,
    pub stored_bytes: Gauge,
    pub stored_files: Gauge,
    pub pinned_files: Gauge,
    pub connections_active: Gauge,
    /// Sizes of the downloads in flight (their `tmp/` files count against `max_bytes`).
    pub reserved_bytes: Gauge,
    /// Upstream downloads running.
    pub downloads_active: Gauge,
    /// Downloads stopped because no client wanted them any more.
    pub downloads_cancelled: Counter,
    /// Client connections closed because the client stopped reading.
    pub write_timeouts: Counter,
    /// InRelease requests answered from a remembered upstream failure.
    pub release_negative_hits: Counter,
}

impl CacheMetrics {
    /// Registers every metric under `outpost_cache_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("cache");
        r.register(
            "requests",
            "Cache client requests by result",
            self.requests.clone(),
        );
        r.register(
            "hits",
            "Requests served from a complete cached file",
            self.hits.clone(),
        );
        r.register(
            "misses",
            "Requests that started an upstream download",
            self.misses.clone(),
        );
        r.register(
            "coalesced",
            "Requests that joined a download already in flight",
            self.coalesced.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent to upstream servers",
            self.upstream_requests.clone(),
        );
        r.register(
            "upstream_bytes",
            "Body bytes received from upstream",
            self.upstream_bytes.clone(),
        );
        r.register(
            "upstream_errors",
            "Failed upstream requests",
            self.upstream_errors.clone(),
        );
        r.register(
            "served_cache_bytes",
            "Body bytes sent to clients from complete cached files",
            self.served_cache_bytes.clone(),
        );
        r.register(
            "served_upstream_bytes",
            "Body bytes sent to clients while downloading or passing through",
            self.served_upstream_bytes.clone(),
        );
        r.register(
            "verify_failures",
            "Files that failed verification (quarantined, never served), by reason",
            self.verify_failures.clone(),
        );
        r.register(
            "refused",
            "Requests refused, by reason",
            self.refused.clone(),
        );
        r.register(
            "stale_served",
            "Cached indexes served while upstream was unreachable",
            self.stale_served.clone(),
        );
        r.register(
            "evictions",
            "Cached files evicted by the size cap",
            self.evictions.clone(),
        );
        r.register(
            "evicted_bytes",
            "Bytes evicted by the size cap",
            self.evicted_bytes.clone(),
        );
        r.register(
            "stored_bytes",
            "Bytes of complete cached files",
            self.stored_bytes.clone(),
        );
        r.register(
            "stored_files",
            "Complete cached files",
            self.stored_files.clone(),
        );
        r.register(
            "pinned_files",
            "Cached files pinned against eviction",
            self.pinned_files.clone(),
        );
        r.register(
            "connections_active",
            "Open client connections",
            self.connections_active.clone(),
        );
        r.register(
            "reserved_bytes",
            "Sizes of the downloads in flight, counted against max_bytes",
            self.reserved_bytes.clone(),
        );
        r.register(
            "downloads_active",
            "Upstream downloads running",
            self.downloads_active.clone(),
        );
        r.register(
            "downloads_cancelled",
            "Downloads stopped because no client wanted them any more",
            self.downloads_cancelled.clone(),
        );
        r.register(
            "write_timeouts",
            "Client connections closed because the client stopped reading",
            self.write_timeouts.clone(),
        );
        r.register(
            "release_negative_hits",
            "InRelease requests answered from a remembered upstream failure",
            self.release_negative_hits.clone(),
        );
    }

    pub fn request(&self, result: &str) {
        self.requests
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn verify_failure(&self, reason: &str) {
        self.verify_failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
        self.request("refused");
    }

    /// Sum of verification failures over all reasons.
    pub fn verify_failures_total(&self) -> u64 {
        [
            "signature",
            "rollback",
            "index_hash",
            "package_hash",
            "size_cap",
            "rehash",
            "parse",
            "expired",
            "suite_mismatch",
            "future_date",
        ]
        .iter()
        .map(|r| {
            self.verify_failures
                .get_or_create(&ReasonLabel {
                    reason: r.to_string(),
                })
                .get()
        })
        .sum()
    }
}
