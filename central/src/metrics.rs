//! Central's own metrics (`outpost_central_*` at `/metrics`).
//!
//! `/metrics` needs no credentials, so what it shows to anyone names no
//! tenant and no site: the per-site series (`site_lag_seconds{tenant,site}`)
//! are in a registry of their own, encoded only for a request bearing the
//! operator token ([`CentralMetrics::encode`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabel {
    pub tenant: String,
    pub site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

pub use outpost_web::RouteLabel;

#[derive(Debug)]
pub struct CentralMetrics {
    pub batches_received: Counter,
    pub batches_applied: Counter,
    pub batches_duplicate: Counter,
    pub batch_rejects: Family<ReasonLabel, Counter>,
    pub rollups_applied: Counter,
    pub rollups_replaced: Counter,
    pub apply_seconds: Histogram,
    /// Seconds between a batch's creation (appliance clock) and its apply.
    pub site_lag_seconds: Family<SiteLabel, Gauge>,
    pub connections_active: Gauge,
    pub connection_rejects: Family<ReasonLabel, Counter>,
    /// API requests refused before their handler, by reason
    /// (`api_cross_origin`: a session-cookie write from another origin;
    /// `token_revoked`, `token_expired`: an API token no longer valid).
    pub api_rejects: Family<ReasonLabel, Counter>,
    pub joins: Counter,
    pub api_requests: Family<RouteLabel, Counter>,
    pub logins_failed: Counter,
    /// Devices sites reported enrolled under a tenant other than the
    /// site's (each counted once, when first reported).
    pub tenant_mismatches: Counter,
    /// Device snapshots claiming a customer other than their site's (not
    /// believed).
    pub customer_mismatches: Counter,
    /// IP and tag entries of batches for devices without a snapshot in
    /// the batch (ignored).
    pub device_facts_ignored: Counter,
    /// Batches refused for good and recorded on their site.
    pub batches_dead_lettered: Counter,
    /// Gaps of sites' applied sets that expired (their batches count as
    /// lost) to keep the sets bounded.
    pub sequence_gaps_expired: Counter,
    /// Logins answered 429 (too many failures for the user or address).
    pub logins_throttled: Counter,
    /// Logins answered 503 (every password slot busy for the whole wait).
    pub password_checks_busy: Counter,
    /// Commands queued at central (API).
    pub commands_created: Counter,
    /// Commands refused at central, by reason.
    pub command_refusals: Family<ReasonLabel, Counter>,
    /// Commands sent down to sites (first sends and on reconnects).
    pub commands_sent: Counter,
    /// Commands sent again because the site did not acknowledge in time.
    pub commands_resent: Counter,
    /// Commands that entered a state at central, by state.
    pub commands_entered: Family<StateLabel, Counter>,
    /// Commands expired at central (their site stayed offline).
    pub commands_expired: Counter,
    /// Output bytes sites reported for central's commands.
    pub command_output_bytes: Counter,
    /// Output bytes dropped at central's cap.
    pub command_output_dropped: Counter,
    /// Command acknowledgements or reports naming a command that is not
    /// the site's (ignored).
    pub command_frames_unknown: Counter,
    /// Deployment orders sent down to sites (first sends and on reconnects).
    pub deploy_orders_sent: Counter,
    /// Deployment orders sent again for want of an acknowledgement.
    pub deploy_orders_resent: Counter,
    /// Deployment orders a site acknowledged as applied.
    pub deploy_orders_acked: Counter,
    /// Deployment orders a site refused for good.
    pub deploy_orders_site_refused: Counter,
    /// Deployment requests refused at central, by reason.
    pub deploy_refusals: Family<ReasonLabel, Counter>,
    /// Tag requests refused at central (`POST /api/v1/devices/tags`), by reason.
    pub tag_refusals: Family<ReasonLabel, Counter>,
    /// Tag orders stored for sites (one per site of a request).
    pub tag_orders: Counter,
    /// Devices' approval decisions stored (protocol 9).
    pub decisions_stored: Counter,
    /// Devices' approval decisions not stored (older than held, or a bad
    /// device id).
    pub decisions_ignored: Counter,
    /// Deployment progress reports stored (newer than the one held).
    pub deploy_progress_stored: Counter,
    /// Deployment progress reports not stored (stale, repeated, or not
    /// the site's to report).
    pub deploy_progress_ignored: Counter,
    /// Failed-login state the shared store could not record (logged).
    pub login_limit_errors: Counter,
    /// Cross-instance downlink notices (PostgreSQL), by event: `sent`,
    /// `received`, `send_failed`, `undecodable`, `listen_lost`, `reopened`
    /// (site streams asked to resend their open work after a reconnect).
    pub downlink_notices: Family<ReasonLabel, Counter>,
    /// PostgreSQL maintenance (partitions, applied_batches pruning).
    pub pg_maintenance: crate::pg::maintenance::MaintenanceMetrics,
    /// Files from central (`outpost_central_files_*`).
    pub files: crate::files::FileMetrics,
    registry: Registry,
    /// Series labelled with tenant and site ids (operator token only).
    site_registry: Registry,
}

impl CentralMetrics {
    pub fn new() -> CentralMetrics {
        let mut m = CentralMetrics {
            batches_received: Counter::default(),
            batches_applied: Counter::default(),
            batches_duplicate: Counter::default(),
            batch_rejects: Family::default(),
            rollups_applied: Counter::default(),
            rollups_replaced: Counter::default(),
            apply_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            site_lag_seconds: Family::default(),
            connections_active: Gauge::default(),
            connection_rejects: Family::default(),
            api_rejects: Family::default(),
            joins: Counter::default(),
            api_requests: Family::default(),
            logins_failed: Counter::default(),
            tenant_mismatches: Counter::default(),
            customer_mismatches: Counter::default(),
            device_facts_ignored: Counter::default(),
            batches_dead_lettered: Counter::default(),
            sequence_gaps_expired: Counter::default(),
            logins_throttled: Counter::default(),
            password_checks_busy: Counter::default(),
            commands_created: Counter::default(),
            command_refusals: Family::default(),
            commands_sent: Counter::default(),
            commands_resent: Counter::default(),
            commands_entered: Family::default(),
            commands_expired: Counter::default(),
            command_output_bytes: Counter::default(),
            command_output_dropped: Counter::default(),
            command_frames_unknown: Counter::default(),
            deploy_orders_sent: Counter::default(),
            deploy_orders_resent: Counter::default(),
            deploy_orders_acked: Counter::default(),
            deploy_orders_site_refused: Counter::default(),
            deploy_refusals: Family::default(),
            tag_refusals: Family::default(),
            tag_orders: Counter::default(),
            decisions_stored: Counter::default(),
            decisions_ignored: Counter::default(),
            deploy_progress_stored: Counter::default(),
            deploy_progress_ignored: Counter::default(),
            login_limit_errors: Counter::default(),
            downlink_notices: Family::default(),
            pg_maintenance: Default::default(),
            files: crate::files::FileMetrics::default(),
            registry: Registry::with_prefix("outpost_central"),
            site_registry: Registry::with_prefix("outpost_central"),
        };
        m.files.register(&mut m.registry);
        m.pg_maintenance.register(&mut m.registry);
        let r = &mut m.registry;
        r.register(
            "batches_received",
            "Uplink batches received (including duplicates)",
            m.batches_received.clone(),
        );
        r.register(
            "batches_applied",
            "Batches applied (first delivery)",
            m.batches_applied.clone(),
        );
        r.register(
            "batches_duplicate",
            "Batches acknowledged as already applied",
            m.batches_duplicate.clone(),
        );
        r.register(
            "batch_rejects",
            "Batches refused, by reason",
            m.batch_rejects.clone(),
        );
        r.register(
            "rollups_applied",
            "New rollups stored",
            m.rollups_applied.clone(),
        );
        r.register(
            "rollups_replaced",
            "Rollups replaced by a later computation",
            m.rollups_replaced.clone(),
        );
        r.register(
            "apply_seconds",
            "Time to apply one batch durably",
            m.apply_seconds.clone(),
        );
        r.register(
            "connections_active",
            "Open uplink connections",
            m.connections_active.clone(),
        );
        r.register(
            "connection_rejects",
            "Uplink connections refused, by reason",
            m.connection_rejects.clone(),
        );
        r.register(
            "api_rejects",
            "API requests refused before their handler, by reason",
            m.api_rejects.clone(),
        );
        r.register("joins", "Sites joined", m.joins.clone());
        r.register(
            "commands_created",
            "Commands queued at central",
            m.commands_created.clone(),
        );
        r.register(
            "command_refusals",
            "Commands refused at central, by reason",
            m.command_refusals.clone(),
        );
        r.register(
            "deploy_orders_sent",
            "Deployment orders sent down to sites",
            m.deploy_orders_sent.clone(),
        );
        r.register(
            "deploy_orders_resent",
            "Deployment orders sent again for want of an acknowledgement",
            m.deploy_orders_resent.clone(),
        );
        r.register(
            "deploy_orders_acked",
            "Deployment orders sites acknowledged as applied",
            m.deploy_orders_acked.clone(),
        );
        r.register(
            "deploy_orders_site_refused",
            "Deployment orders sites refused for good",
            m.deploy_orders_site_refused.clone(),
        );
        r.register(
            "deploy_refusals",
            "Deployment requests refused at central, by reason",
            m.deploy_refusals.clone(),
        );
        r.register(
            "tag_refusals",
            "Tag requests refused at central, by reason",
            m.tag_refusals.clone(),
        );
        r.register(
            "tag_orders",
            "Tag orders stored for sites",
            m.tag_orders.clone(),
        );
        r.register(
            "decisions_stored",
            "Devices' approval decisions stored",
            m.decisions_stored.clone(),
        );
        r.register(
            "decisions_ignored",
            "Devices' approval decisions not stored (stale or bad device id)",
            m.decisions_ignored.clone(),
        );
        r.register(
            "deploy_progress_stored",
            "Deployment progress reports stored",
            m.deploy_progress_stored.clone(),
        );
        r.register(
            "deploy_progress_ignored",
            "Deployment progress reports not stored (stale or repeated)",
            m.deploy_progress_ignored.clone(),
        );
        r.register(
            "commands_sent",
            "Commands sent down to sites",
            m.commands_sent.clone(),
        );
        r.register(
            "commands_resent",
            "Commands sent again for want of an acknowledgement",
            m.commands_resent.clone(),
        );
        r.register(
            "commands_entered",
            "Command state changes reported by sites, by state",
            m.commands_entered.clone(),
        );
        r.register(
            "commands_expired",
            "Commands expired at central (site offline)",
            m.commands_expired.clone(),
        );
        r.register(
            "command_output_bytes",
            "Command output bytes received from sites",
            m.command_output_bytes.clone(),
        );
        r.register(
            "command_output_dropped_bytes",
            "Command output bytes dropped at central's cap",
            m.command_output_dropped.clone(),
        );
        r.register(
            "command_frames_unknown",
            "Command acknowledgements or reports for commands not the site's",
            m.command_frames_unknown.clone(),
        );
        r.register(
            "api_requests",
            "HTTP requests by route and status",
            m.api_requests.clone(),
        );
        r.register(
            "logins_failed",
            "Failed web logins",
            m.logins_failed.clone(),
        );
        r.register(
            "tenant_mismatches",
            "Devices a site reported enrolled under a tenant other than the site's (listed under the site's)",
            m.tenant_mismatches.clone(),
        );
        r.register(
            "customer_mismatches",
            "Device snapshots claiming a customer other than their site's (the site's is kept)",
            m.customer_mismatches.clone(),
        );
        r.register(
            "device_facts_ignored",
            "IP and tag entries of batches for devices without a snapshot in the batch (ignored)",
            m.device_facts_ignored.clone(),
        );
        r.register(
            "batches_dead_lettered",
            "Batches refused for good, recorded on their site (the sequence closes over them)",
            m.batches_dead_lettered.clone(),
        );
        r.register(
            "sequence_gaps_expired",
            "Gaps of a site's applied sequence numbers given up (their batches count as lost) to keep the set bounded",
            m.sequence_gaps_expired.clone(),
        );
        r.register(
            "logins_throttled",
            "Logins refused with 429: too many failures for the user name or the address",
            m.logins_throttled.clone(),
        );
        r.register(
            "password_checks_busy",
            "Logins refused with 503: every password-hashing slot stayed busy",
            m.password_checks_busy.clone(),
        );
        r.register(
            "login_limit_errors",
            "Failed logins the shared store (PostgreSQL) could not record",
            m.login_limit_errors.clone(),
        );
        r.register(
            "downlink_notices",
            "Downlink work handed between instances over PostgreSQL NOTIFY, by event",
            m.downlink_notices.clone(),
        );
        r.register(
            "store_errors",
            "Store errors by kind: unavailable (database down, failing over, timed out; \
             retried later) or other",
            crate::store::STORE_ERRORS.clone(),
        );
        crate::startup::register(r);
        m.site_registry.register(
            "site_lag_seconds",
            "Age of the newest applied batch of a site when applied",
            m.site_lag_seconds.clone(),
        );
        m
    }

    pub fn reject(&self, reason: &str) {
        self.batch_rejects
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn conn_reject(&self, reason: &str) {
        self.connection_rejects
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// The text exposition; the per-site series only with `per_site`
    /// (the operator's scrape).
    /// Registers the console's counters (`console_*`) in the open
    /// registry (they name no tenant or site).
    pub fn register_console(
        &mut self,
        console: &outpost_console::ConsoleMetrics,
        live: &outpost_console::live::LiveMetrics,
    ) {
        self.registry.register(
            "console_refused",
            "Console requests refused (bad CSRF token, cross-origin, role), by reason",
            console.refused.clone(),
        );
        live.register(&mut self.registry);
    }

    pub fn encode(&self, per_site: bool) -> String {
        let mut s = String::new();
        if per_site {
            let _ = prometheus_client::encoding::text::encode_registry(&mut s, &self.registry);
            let _ = prometheus_client::encoding::text::encode(&mut s, &self.site_registry);
        } else {
            let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        }
        s
    }
}

impl Default for CentralMetrics {
    fn default() -> Self {
        Self::new()
    }
}
