//! Appliance-side uplink metrics. The appliance registers them into its own
//! registry (`outpost_uplink_*`); every drop, retry and rejection is counted.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Counters and gauges of the outbox and the sender.
#[derive(Debug, Default, Clone)]
pub struct UplinkMetrics {
    pub batches_created: Counter,
    /// Compressed bytes of created batches.
    pub batch_bytes_created: Counter,
    pub rollups_enqueued: Counter,
    pub device_updates_enqueued: Counter,
    pub alert_transitions_enqueued: Counter,
    pub batches_sent: Counter,
    /// Batches re-encoded without what central does not read (patch
    /// findings or details for a central that announced an older
    /// protocol), each time one was sent.
    pub batches_downgraded: Counter,
    pub bytes_sent: Counter,
    pub batches_acked: Counter,
    /// Rollups removed from the outbox because it hit its bound.
    pub rollups_dropped: Counter,
    /// Compactions that left the outbox above its bound (only device status
    /// and alert transitions left: kept, never dropped).
    pub outbox_over_limit: Counter,
    pub rejects: Family<ReasonLabel, Counter>,
    pub connect_attempts: Counter,
    pub connect_failures: Counter,
    pub compaction_errors: Counter,
    /// Welcomes in which central had applied sequence numbers this outbox
    /// never handed out (the appliance was restored from an older backup
    /// or snapshot): numbering raised above them.
    pub sequence_raised: Counter,
    /// Stored batches given new numbers above central's mark then.
    pub batches_renumbered: Counter,
    pub backlog_batches: Gauge,
    pub backlog_bytes: Gauge,
    /// 1 while the uplink stream is open.
    pub connected: Gauge,
    /// Commands central sent down (deliveries, redeliveries included).
    pub downlink_commands: Counter,
    /// Central's commands the site refused, by reason (`unknown_device`,
    /// `revoked_device`, `invalid_spec`, `unreadable_spec`).
    pub downlink_refusals: Family<ReasonLabel, Counter>,
    /// Central's commands not acknowledged because storing them failed
    /// (central sends them again).
    pub downlink_store_failures: Counter,
    /// State and output reports sent up to central.
    pub downlink_updates_sent: Counter,
    /// Output bytes in those reports.
    pub downlink_output_bytes_sent: Counter,
    /// Deployment orders central sent down (redeliveries included).
    pub deploy_orders: Counter,
    /// Deployment orders applied here (first deliveries only).
    pub deploy_orders_applied: Counter,
    /// Deployment orders answered from the site's record of them (a
    /// redelivery: not applied again).
    pub deploy_orders_redelivered: Counter,
    /// Deployment orders the site refused, by reason (`invalid`,
    /// `refused`, `unknown`).
    pub deploy_order_refusals: Family<ReasonLabel, Counter>,
    /// Deployment orders not acknowledged because storing failed
    /// (central sends them again).
    pub deploy_order_store_failures: Counter,
    /// Deployment progress reports sent up to central.
    pub deploy_progress_sent: Counter,
    /// Devices' approval decisions sent up to central (protocol 9).
    pub decisions_sent: Counter,
}

impl UplinkMetrics {
    /// Registers everything under `uplink_*` in `r`.
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("uplink");
        r.register(
            "batches_created",
            "Uplink batches compacted into the outbox",
            self.batches_created.clone(),
        );
        r.register(
            "batch_bytes_created",
            "Compressed bytes of batches compacted",
            self.batch_bytes_created.clone(),
        );
        r.register(
            "rollups_enqueued",
            "Series rollups put into batches",
            self.rollups_enqueued.clone(),
        );
        r.register(
            "device_updates_enqueued",
            "Device snapshots put into batches",
            self.device_updates_enqueued.clone(),
        );
        r.register(
            "alert_transitions_enqueued",
            "Alert transitions put into batches",
            self.alert_transitions_enqueued.clone(),
        );
        r.register(
            "batches_sent",
            "Batches sent to central (including resends)",
            self.batches_sent.clone(),
        );
        r.register(
            "batches_downgraded",
            "Batches sent without patch findings or details central does not read (an older central)",
            self.batches_downgraded.clone(),
        );
        r.register(
            "bytes_sent",
            "Batch payload bytes sent to central",
            self.bytes_sent.clone(),
        );
        r.register(
            "batches_acked",
            "Batches acknowledged by central as durable",
            self.batches_acked.clone(),
        );
        r.register(
            "rollups_dropped",
            "Rollups dropped because the outbox was full",
            self.rollups_dropped.clone(),
        );
        r.register(
            "outbox_over_limit",
            "Compactions leaving the outbox above its bound",
            self.outbox_over_limit.clone(),
        );
        r.register(
            "rejects",
            "Batches central refused, by reason",
            self.rejects.clone(),
        );
        r.register(
            "connect_attempts",
            "Connection attempts to central",
            self.connect_attempts.clone(),
        );
        r.register(
            "connect_failures",
            "Failed connections or lost streams",
            self.connect_failures.clone(),
        );
        r.register(
            "compaction_errors",
            "Failed compactions",
            self.compaction_errors.clone(),
        );
        r.register(
            "sequence_raised",
            "Times central had applied batch numbers the outbox never handed out (restored from an older backup): numbering raised above them",
            self.sequence_raised.clone(),
        );
        r.register(
            "batches_renumbered",
            "Stored batches renumbered above central's mark after a restore (sent, not taken for duplicates)",
            self.batches_renumbered.clone(),
        );
        r.register(
            "backlog_batches",
            "Batches in the outbox",
            self.backlog_batches.clone(),
        );
        r.register(
            "backlog_bytes",
            "Bytes in the outbox",
            self.backlog_bytes.clone(),
        );
        r.register(
            "connected",
            "1 while the uplink stream to central is open",
            self.connected.clone(),
        );
        r.register(
            "downlink_commands",
            "Commands central sent down (redeliveries included)",
            self.downlink_commands.clone(),
        );
        r.register(
            "downlink_refusals",
            "Central's commands refused by the site, by reason",
            self.downlink_refusals.clone(),
        );
        r.register(
            "downlink_store_failures",
            "Central's commands not acknowledged because storing them failed",
            self.downlink_store_failures.clone(),
        );
        r.register(
            "deploy_orders",
            "Deployment orders central sent down",
            self.deploy_orders.clone(),
        );
        r.register(
            "deploy_orders_applied",
            "Deployment orders from central applied at the site",
            self.deploy_orders_applied.clone(),
        );
        r.register(
            "deploy_orders_redelivered",
            "Deployment orders delivered again and answered from the site's record",
            self.deploy_orders_redelivered.clone(),
        );
        r.register(
            "deploy_order_refusals",
            "Deployment orders from central the site refused, by reason",
            self.deploy_order_refusals.clone(),
        );
        r.register(
            "deploy_order_store_failures",
            "Deployment orders not acknowledged because storing failed",
            self.deploy_order_store_failures.clone(),
        );
        r.register(
            "deploy_progress_sent",
            "Deployment progress reports sent to central",
            self.deploy_progress_sent.clone(),
        );
        r.register(
            "decisions_sent",
            "Devices' approval decisions sent to central",
            self.decisions_sent.clone(),
        );
        r.register(
            "downlink_updates_sent",
            "Command state and output reports sent to central",
            self.downlink_updates_sent.clone(),
        );
        r.register(
            "downlink_output_bytes_sent",
            "Command output bytes reported to central",
            self.downlink_output_bytes_sent.clone(),
        );
    }
}
