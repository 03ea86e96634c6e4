//! Prometheus metrics of the appliance, served as text at `/metrics`.
//!
//! Names are stable (dashboards and alerts depend on them); each counter gets
//! the `_total` suffix from the encoder.
//!
//! This module aggregates every subsystem's metrics into one registry, so it
//! imports them; they must not import it back. Label types live in the leaf
//! [`labels`], the kernel's UDP drop counter is read by
//! [`crate::net::udp_drops`].

use outpost_proto::messages::RecordBody;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::net::udp_drops;

pub mod labels;

pub use labels::{
    AlertStage, BudgetLabel, KindLabel, NotifyLabel, OpLabel, ReasonLabel, ResultLabel, StageLabel,
};
pub use outpost_web::RouteLabel;

/// Every metric the appliance exports. Cheap to share (`Arc<Metrics>`);
/// each metric is an atomic.
pub struct Metrics {
    registry: Registry,
    /// The uplink's counters (`outpost_uplink_*`).
    pub uplink: outpost_uplink::metrics::UplinkMetrics,
    /// Open QUIC connections (all ALPNs).
    pub connections_active: Gauge,
    /// Accepted connections by kind (`session`, `enroll`).
    pub connections: Family<KindLabel, Counter>,
    pub frames_received: Counter,
    pub bytes_received: Counter,
    /// Records received by kind (`RecordBody::KINDS`).
    pub records_received: Family<KindLabel, Counter>,
    /// `records_received`'s counter of each kind, by `RecordBody::kind_index`
    /// (resolved once: the session path counts every frame).
    pub records_received_by_kind: [Counter; RecordBody::KINDS.len()],
    /// Records newly stored (not duplicates).
    pub records_stored: Counter,
    /// Metric samples stored.
    pub samples_stored: Counter,
    pub acks_sent: Counter,
    /// Time from reading a records frame to acking it (the appliance's part
    /// of an agent's ack round trip: queue, commit window, commit).
    pub ack_delay_seconds: Histogram,
    /// Replayed records acknowledged but not stored again.
    pub duplicates_dropped: Counter,
    /// Metric values dropped as invalid (non-finite, bad names).
    pub values_rejected: Counter,
    /// Connections or requests refused, by reason.
    pub rejects: Family<ReasonLabel, Counter>,
    /// Records per group commit.
    pub write_batch_records: Histogram,
    /// Duration of a group commit (RocksDB write incl. fsync).
    pub write_latency_seconds: Histogram,
    pub write_errors: Counter,
    /// Groups waiting for the writer.
    pub writer_queue_depth: Gauge,
    /// Memory held by the records waiting for the writer.
    pub writer_queue_bytes: Gauge,
    /// Niceness the writer thread runs at (`[ingest] writer_nice`).
    pub writer_nice: Gauge,
    /// Seconds after this start before a device online before it, not
    /// heard from since, starts counting towards offline (see
    /// `ingest::writer::restart_grace`); 0 when none was online.
    pub restart_grace_seconds: Gauge,
    /// Times a session had to wait for a byte budget before queueing more
    /// records (and so stopped reading its stream), by budget (`session`,
    /// `queue`).
    pub ingest_budget_waits: Family<BudgetLabel, Counter>,
    /// The writer thread died (a panic); the appliance then refuses sessions.
    pub writer_failures: Counter,
    pub enrollments: Family<ResultLabel, Counter>,
    pub devices_online: Gauge,
    pub status_transitions: Family<KindLabel, Counter>,
    pub rollups_computed: Counter,
    /// Time the writer thread spends on work other than group commits, by
    /// kind (`session`, `sweep`, `retire`, and the `rollup` and `seal`
    /// slices run between commits): commits wait meanwhile.
    pub writer_task_seconds: Family<KindLabel, Histogram, fn() -> Histogram>,
    /// (device, 2-hour window) pairs sealed into compressed chunks.
    pub chunks_sealed: Counter,
    pub retention_runs: Family<ResultLabel, Counter>,
    pub api_requests: Family<RouteLabel, Counter>,
    /// Logins of local users on the admin listener by result (`ok`,
    /// `failed`, `throttled`, `busy`).
    pub logins: Family<ResultLabel, Counter>,
    /// LAN patch cache (`outpost_cache_*`).
    pub cache: crate::cache::metrics::CacheMetrics,
    /// Remote commands (`outpost_commands_*`).
    pub commands: crate::commands::metrics::CommandMetrics,
    /// Patch deployments (`outpost_deployments`, `outpost_deploy_*`).
    pub deploy: crate::deploy::metrics::DeployMetrics,
    /// File transfers (`outpost_files_*`).
    pub files: crate::files::metrics::FileMetrics,
    /// Patch assessment (`outpost_patches_*`).
    pub patches: crate::patches::metrics::PatchMetrics,
    /// Alert transitions by kind (pending, firing, resolved, cleared, ...).
    pub alert_transitions: Family<KindLabel, Counter>,
    pub alerts_firing: Gauge,
    pub alerts_pending: Gauge,
    /// Sample batches the alert engine's queue could not take (queue full):
    /// summarized per series and evaluated when it catches up.
    pub alert_inputs_dropped: Counter,
    /// Metric values of those batches lost because the summary was full too.
    pub alert_inputs_lost: Counter,
    /// Failed operations of the alert engine, by operation (record_event,
    /// queue_notification, persist, audit, device_lookup, reload_config).
    pub alert_errors: Family<OpLabel, Counter>,
    /// Time spent in each stage from a group commit to the alert's
    /// notification (`outpost_alert_stage_seconds{stage}`): the histogram of
    /// each [`AlertStage`], resolved once (indexed by `AlertStage as usize`).
    alert_stages: [Histogram; AlertStage::ALL.len()],
    /// Notification delivery outcomes (delivered, retry, dead_letter;
    /// superseded: a reminder dropped for its alert's resolution; resent: a
    /// dead letter queued again).
    pub notifications: Family<NotifyLabel, Counter>,
    /// The QUIC listener's sockets: datagrams the kernel dropped on them
    /// (receive buffer full; all sockets and per socket, read from the
    /// kernel at each scrape) and connection attempts per socket.
    pub quic_sockets: udp_drops::QuicSocketMetrics,
    /// The deployment device link (`outpost_deploy_device_statuses_total`,
    /// `outpost_deploy_status_rejected_total`).
    pub deploy_device: crate::deploy::device::DeviceLinkMetrics,
    /// The site console's refusals (`outpost_console_refused_total{reason}`).
    pub console: outpost_console::ConsoleMetrics,
    /// The site console's live hub (`outpost_console_live_*`): the hub
    /// counts into these.
    pub console_live: outpost_console::live::LiveMetrics,
    /// Handshake admission and back-pressure (`outpost_quic_handshakes_*`,
    /// `outpost_session_pressure_frames_total`).
    pub admission: crate::ingest::admission::AdmissionMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// 50 µs to ~1.6 s: a group commit, an ack's delay, a writer task or
/// slice, an alert stage.
fn short_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Metrics {
    /// Records `d` as time spent in `stage` of the alert path
    /// (`outpost_alert_stage_seconds`).
    pub fn alert_stage(&self, stage: AlertStage, d: std::time::Duration) {
        self.alert_stages[stage as usize].observe(d.as_secs_f64());
    }

    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("outpost");
        let records_received = Family::<KindLabel, Counter>::default();
        let alert_stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(short_latency_histogram);
        let m = Metrics {
            connections_active: Gauge::default(),
            connections: Family::default(),
            frames_received: Counter::default(),
            bytes_received: Counter::default(),
            records_received_by_kind: std::array::from_fn(|i| {
                records_received
                    .get_or_create(&KindLabel {
                        kind: RecordBody::KINDS[i].to_string(),
                    })
                    .clone()
            }),
            records_received,
            records_stored: Counter::default(),
            samples_stored: Counter::default(),
            acks_sent: Counter::default(),
            ack_delay_seconds: short_latency_histogram(),
            duplicates_dropped: Counter::default(),
            values_rejected: Counter::default(),
            rejects: Family::default(),
            write_batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            write_latency_seconds: short_latency_histogram(),
            write_errors: Counter::default(),
            writer_queue_depth: Gauge::default(),
            writer_queue_bytes: Gauge::default(),
            writer_nice: Gauge::default(),
            restart_grace_seconds: Gauge::default(),
            ingest_budget_waits: Family::default(),
            writer_failures: Counter::default(),
            enrollments: Family::default(),
            devices_online: Gauge::default(),
            status_transitions: Family::default(),
            rollups_computed: Counter::default(),
            writer_task_seconds: Family::new_with_constructor(short_latency_histogram),
            chunks_sealed: Counter::default(),
            retention_runs: Family::default(),
            api_requests: Family::default(),
            logins: Family::default(),
            cache: Default::default(),
            commands: Default::default(),
            deploy: Default::default(),
            files: Default::default(),
            patches: Default::default(),
            alert_transitions: Family::default(),
            alerts_firing: Gauge::default(),
            alerts_pending: Gauge::default(),
            alert_inputs_dropped: Counter::default(),
            alert_inputs_lost: Counter::default(),
            alert_errors: Family::default(),
            alert_stages: AlertStage::ALL.map(|stage| {
                alert_stage_seconds
                    .get_or_create(&StageLabel {
                        stage: stage.label().to_string(),
                    })
                    .clone()
            }),
            notifications: Family::default(),
            quic_sockets: Default::default(),
            deploy_device: Default::default(),
            console: Default::default(),
            console_live: Default::default(),
            admission: Default::default(),
            registry: Registry::default(),
            uplink: outpost_uplink::metrics::UplinkMetrics::default(),
        };
        let r = &mut registry;
        r.register(
            "connections_active",
            "Open QUIC connections",
            m.connections_active.clone(),
        );
        r.register(
            "connections",
            "Accepted QUIC connections by kind",
            m.connections.clone(),
        );
        r.register(
            "frames_received",
            "Frames received from agents",
            m.frames_received.clone(),
        );
        r.register(
            "bytes_received",
            "Bytes received on agent session streams",
            m.bytes_received.clone(),
        );
        r.register(
            "records_received",
            "Records received by kind",
            m.records_received.clone(),
        );
        r.register(
            "records_stored",
            "Records durably stored",
            m.records_stored.clone(),
        );
        r.register(
            "samples_stored",
            "Metric samples durably stored",
            m.samples_stored.clone(),
        );
        r.register(
            "acks_sent",
            "Cumulative acks sent to agents",
            m.acks_sent.clone(),
        );
        r.register(
            "ack_delay_seconds",
            "Time from reading a records frame to acking it, on the appliance",
            m.ack_delay_seconds.clone(),
        );
        r.register(
            "duplicates_dropped",
            "Replayed records acknowledged without storing again",
            m.duplicates_dropped.clone(),
        );
        r.register(
            "values_rejected",
            "Metric values dropped as invalid",
            m.values_rejected.clone(),
        );
        r.register(
            "rejects",
            "Connections, frames and requests refused, by reason",
            m.rejects.clone(),
        );
        r.register(
            "write_batch_records",
            "Records per group commit",
            m.write_batch_records.clone(),
        );
        r.register(
            "write_latency_seconds",
            "Group commit duration including fsync",
            m.write_latency_seconds.clone(),
        );
        r.register(
            "write_errors",
            "Failed group commits (nothing acked)",
            m.write_errors.clone(),
        );
        r.register(
            "writer_queue_depth",
            "Record groups waiting for the writer",
            m.writer_queue_depth.clone(),
        );
        r.register(
            "writer_nice",
            "Niceness the ingest writer thread runs at (ingest.writer_nice; higher when refused)",
            m.writer_nice.clone(),
        );
        r.register(
            "restart_grace_seconds",
            "Seconds after this start the devices online before it get to reconnect before \
             offline detection counts their silence (online / admission.handshake_rate + \
             admission.agent_reconnect_max)",
            m.restart_grace_seconds.clone(),
        );
        r.register(
            "writer_queue_bytes",
            "Memory held by the records waiting for the writer",
            m.writer_queue_bytes.clone(),
        );
        r.register(
            "ingest_budget_waits",
            "Times a session waited for a byte budget (and stopped reading its stream), by budget",
            m.ingest_budget_waits.clone(),
        );
        r.register(
            "writer_failures",
            "Writer thread failures (the appliance then refuses sessions until restarted)",
            m.writer_failures.clone(),
        );
        r.register(
            "enrollments",
            "Enrollment attempts by result",
            m.enrollments.clone(),
        );
        r.register(
            "devices_online",
            "Devices currently online",
            m.devices_online.clone(),
        );
        r.register(
            "status_transitions",
            "Device status transitions by new status",
            m.status_transitions.clone(),
        );
        r.register(
            "rollups_computed",
            "5-minute rollups computed",
            m.rollups_computed.clone(),
        );
        r.register(
            "writer_task_seconds",
            "Writer thread time on work other than group commits, by kind",
            m.writer_task_seconds.clone(),
        );
        r.register(
            "chunks_sealed",
            "Device windows of raw samples sealed into compressed chunks",
            m.chunks_sealed.clone(),
        );
        r.register(
            "retention_runs",
            "Retention passes by result",
            m.retention_runs.clone(),
        );
        r.register("api_requests", "Admin API requests", m.api_requests.clone());
        r.register(
            "logins",
            "Logins of local users on the admin listener by result (ok, failed, throttled, busy)",
            m.logins.clone(),
        );
        m.cache.register(r);
        m.commands.register(r);
        m.deploy.register(r);
        m.files.register(r);
        m.admission.register(r);
        m.patches.register(r);
        r.register(
            "alert_transitions",
            "Alert transitions by kind",
            m.alert_transitions.clone(),
        );
        r.register(
            "alerts_firing",
            "Alerts currently firing",
            m.alerts_firing.clone(),
        );
        r.register(
            "alerts_pending",
            "Alerts currently pending",
            m.alerts_pending.clone(),
        );
        r.register(
            "alert_inputs_dropped",
            "Sample batches the alert engine queue could not take (summarized per series, evaluated when it catches up)",
            m.alert_inputs_dropped.clone(),
        );
        r.register(
            "alert_inputs_lost",
            "Metric values the alert engine never evaluated (queue full and overflow summary full)",
            m.alert_inputs_lost.clone(),
        );
        r.register(
            "alert_errors",
            "Failed alert engine operations (logged), by operation",
            m.alert_errors.clone(),
        );
        r.register(
            "alert_stage_seconds",
            "Time from a group commit to an alert's notification, by stage (queued, evaluate, persist, send)",
            alert_stage_seconds,
        );
        r.register(
            "notifications",
            "Notification delivery outcomes by channel type, event and result",
            m.notifications.clone(),
        );
        m.quic_sockets.register(r);
        m.deploy_device.register(r);
        r.register(
            "console_refused",
            "Site console requests refused (bad CSRF token, cross-origin, role), by reason",
            m.console.refused.clone(),
        );
        m.console_live.register(r);
        m.uplink.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Counts a refusal.
    pub fn reject(&self, reason: &str) {
        self.reject_n(reason, 1);
    }

    /// Counts `n` refusals of one reason (none if `n` is 0).
    pub fn reject_n(&self, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.rejects
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        // Counters the kernel keeps (UDP receive drops).
        self.quic_sockets.refresh();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_stable_names() {
        let m = Metrics::new();
        m.reject("oversize_frame");
        m.duplicates_dropped.inc_by(3);
        m.write_latency_seconds.observe(0.001);
        m.alert_errors
            .get_or_create(&OpLabel {
                op: "record_event".into(),
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains("outpost_rejects_total{reason=\"oversize_frame\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("outpost_quic_udp_receive_drops_total 0"),
            "{text}"
        );
        assert!(text.contains("outpost_duplicates_dropped_total 3"));
        assert!(text.contains("outpost_write_latency_seconds_bucket"));
        assert!(text.contains("outpost_connections_active 0"));
        assert!(
            text.contains("outpost_alert_errors_total{op=\"record_event\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn each_alert_stage_is_exported_from_the_start_and_times_only_its_own_series() {
        let m = Metrics::new();
        let text = m.encode();
        for stage in AlertStage::ALL {
            let series = format!(
                "outpost_alert_stage_seconds_count{{stage=\"{}\"}} 0\n",
                stage.label()
            );
            assert!(text.contains(&series), "{series} missing from:\n{text}");
        }
        m.alert_stage(AlertStage::Persist, std::time::Duration::from_millis(2));
        m.alert_stage(AlertStage::Persist, std::time::Duration::from_millis(3));
        m.alert_stage(AlertStage::Send, std::time::Duration::from_millis(1));
        let text = m.encode();
        for (stage, n) in [("queued", 0), ("evaluate", 0), ("persist", 2), ("send", 1)] {
            let series = format!("outpost_alert_stage_seconds_count{{stage=\"{stage}\"}} {n}\n");
            assert!(text.contains(&series), "{series} missing from:\n{text}");
        }
    }
}
