//! Agent-facing QUIC service: the accept loop ([`server`]) and its
//! handshake admission ([`admission`]), enrollment
//! ([`enroll`]), device sessions ([`session`]), the registry of open
//! sessions ([`live`]), the seam to remote management ([`remote`]) and the
//! group-commit writer thread ([`writer`]).

pub mod admission;
pub mod enroll;
pub mod live;
pub mod remote;
pub mod server;
pub mod session;
pub mod writer;

use std::sync::Arc;

use outpost_proto::pki::CertAuthority;
use outpost_storage::Store;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Everything a connection handler needs, shared by all of them.
pub struct IngestCtx {
    pub store: Store,
    /// Signs device certificates at enrollment.
    pub ca: CertAuthority,
    pub writer: writer::WriterHandle,
    pub metrics: Arc<Metrics>,
    /// Open sessions by device (revocation closes them, a newer session of
    /// the same device supersedes an older one).
    pub live: Arc<live::LiveSessions>,
    pub max_frame_bytes: usize,
    /// Memory one session's records may hold in the writer queue before the
    /// session stops reading (see [`writer::SessionBudget`]).
    pub session_max_bytes: u64,
    /// Cancelled when the appliance shuts down.
    pub shutdown: CancellationToken,
    /// Remote management: told of sessions that carry commands and of
    /// their command and file events (the command service,
    /// [`crate::commands::service::CommandService`]; [`remote::NoRemote`] in
    /// tests that need none).
    pub remote: Arc<dyn remote::RemoteHost>,
}

impl std::fmt::Debug for IngestCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestCtx").finish_non_exhaustive()
    }
}
