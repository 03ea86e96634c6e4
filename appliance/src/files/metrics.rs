//! `outpost_files_*` Prometheus metrics: transfers entering each state,
//! bytes moved, refusals by reason, hash mismatches and resumes.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::metrics::labels::{ReasonLabel, StateLabel};

#[derive(Debug, Default)]
pub struct FileMetrics {
    /// Transfers entering each state (`queued` counts creations).
    pub transitions: Family<StateLabel, Counter>,
    /// Push bytes sent to agents (re-sends after a resume included).
    pub push_bytes_sent: Counter,
    /// Push bytes agents acknowledged as durable.
    pub push_bytes_acked: Counter,
    /// Pull bytes written here (the header excluded; re-sends not counted).
    pub pull_bytes_stored: Counter,
    /// Pull bytes received again (already held: re-sends after a resume).
    pub pull_bytes_duplicate: Counter,
    /// Refused transfers by reason: at the appliance (`too_large`,
    /// `unknown_device`, `revoked_device`, `invalid`) and by agents
    /// (`agent_policy`).
    pub refusals: Family<ReasonLabel, Counter>,
    /// Content whose SHA-256 did not match the announced one.
    pub hash_mismatches: Counter,
    /// Transfers continued from an offset above zero on a new session.
    pub resumes: Counter,
    /// Storage or file system failures.
    pub store_errors: Counter,
    /// Blobs deleted by the daily collector (no live transfer names them).
    pub blobs_collected: Counter,
    /// Bytes of central's pushes written here (re-sends not counted).
    pub central_bytes_received: Counter,
    /// Bytes of pulled files sent up to central (re-sends included).
    pub central_bytes_sent: Counter,
}

impl FileMetrics {
    pub fn entered(&self, state: &str) {
        self.transitions
            .get_or_create(&StateLabel {
                state: state.into(),
            })
            .inc();
    }

    pub fn refuse(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("files");
        r.register(
            "transitions",
            "File transfers entering each state",
            self.transitions.clone(),
        );
        r.register(
            "push_bytes_sent",
            "Bytes of pushed files sent to agents",
            self.push_bytes_sent.clone(),
        );
        r.register(
            "push_bytes_acked",
            "Bytes of pushed files agents acknowledged as durable",
            self.push_bytes_acked.clone(),
        );
        r.register(
            "pull_bytes_stored",
            "Bytes of pulled files written on the appliance",
            self.pull_bytes_stored.clone(),
        );
        r.register(
            "pull_bytes_duplicate",
            "Bytes of pulled files received again",
            self.pull_bytes_duplicate.clone(),
        );
        r.register(
            "refusals",
            "File transfers refused, by reason",
            self.refusals.clone(),
        );
        r.register(
            "hash_mismatches",
            "File contents whose SHA-256 did not match",
            self.hash_mismatches.clone(),
        );
        r.register(
            "resumes",
            "File transfers resumed from an offset above zero",
            self.resumes.clone(),
        );
        r.register(
            "store_errors",
            "File transfer storage failures",
            self.store_errors.clone(),
        );
        r.register(
            "blobs_collected",
            "File blobs deleted because no live transfer names them",
            self.blobs_collected.clone(),
        );
        r.register(
            "central_bytes_received",
            "Bytes of files pushed from central written on the appliance",
            self.central_bytes_received.clone(),
        );
        r.register(
            "central_bytes_sent",
            "Bytes of pulled files sent up to central",
            self.central_bytes_sent.clone(),
        );
    }
}
