//! The device session as I/O-free state machines, in the style of
//! `quinn-proto`: [`agent::AgentSession`] and [`appliance::ApplianceSession`]
//! take decoded frames, host decisions and the time (`now`, milliseconds of
//! a monotonic clock the caller chooses), and hand back what to send
//! ([`Transmit`], already framed), what the host must do (events) and when
//! to call them again (`poll_timeout`). They never read a clock, open a
//! socket, touch storage or spawn a task: the async shells in the agent
//! (`agent/src/session.rs`) and the appliance
//! (`appliance/src/ingest/session.rs`) move bytes and call them, and the
//! [`testing`] harness drives both ends with no sockets at all.
//!
//! This module owns the frame-level protocol of every flow: ordering rules,
//! version negotiation, acknowledgements and flow-control windows. It does
//! not own durability: the hosts store records, command ids, results and
//! file bytes, and tell the machine when something is durable.
//!
//! # Flows and streams
//!
//! | flow | QUIC stream | up (agent → appliance) | down (appliance → agent) | window |
//! |---|---|---|---|---|
//! | [`Flow::Records`] | the session stream (first bidirectional stream; Hello/Welcome/Close) | `Records` | cumulative `Ack` | `max_in_flight_records` records (agent setting) |
//! | [`Flow::Commands`] | second bidirectional stream, opened by the agent | `Ack`, `Started`, `Output`, `Result` | `Command`, `Cancel`, `OutputAck`, `ResultAck` | [`COMMAND_WINDOW`] unacked commands down; [`OUTPUT_WINDOW_BYTES`] unacked output up |
//! | [`Flow::Files`] | third bidirectional stream, opened by the agent | chunks of pulled files, acks of pushed ones | chunks of pushed files, acks of pulled ones | [`FILE_WINDOW_BYTES`] unacked bytes per direction |
//!
//! Each flow has its own QUIC stream, so QUIC's per-stream flow control
//! keeps a stalled flow (a file nobody reads, an agent whose records wait
//! for the writer) from holding up the others: a large file never delays a
//! heartbeat's ack. On top of it, each flow has a window counted in its own
//! unit and enforced by the receiver (a sender that exceeds it is closed
//! with `ProtocolViolation`), which bounds the memory a peer can make the
//! other side hold for unacknowledged data.
//!
//! # Versions
//!
//! Protocol 1 is the records flow alone. Protocol 2 adds the command and
//! file flows. Protocol 3 adds back-pressure: an appliance slow to make a
//! session's records durable says so with a `Pressure` frame on the
//! session stream, and the agent waits longer for its ack instead of
//! reconnecting ([`pressure`]); the frame is never sent to an agent
//! welcomed with protocol 2 or 1, which would not know it. An agent offers its highest version in `Hello`; the
//! appliance answers in `Welcome` with the version both speak
//! (`min(offered, SESSION_PROTOCOL_VERSION)`), refusing with
//! `UnsupportedVersion` only below [`crate::MIN_SESSION_PROTOCOL_VERSION`].
//! So agents of protocol 1 keep working with a newer appliance (without
//! commands). An appliance of protocol 1 refuses a newer agent's Hello; the
//! agent then reconnects at once offering protocol 1 (see
//! [`agent::AgentConfig::protocol_version`]).
//!
//! # Delivery
//!
//! Within one session every stream is reliable and ordered. Across
//! sessions (a connection cut, a crash of either side) everything is
//! at-least-once: the hosts re-offer what the peer did not acknowledge, and
//! every receiver dedupes — records by sequence number (the writer's
//! high-water mark), commands by [`crate::ids::CommandId`] (the agent's
//! ledger), results by command id (the appliance's command state), output
//! and file bytes by offset.

pub mod agent;
pub mod appliance;
pub mod flow;
#[cfg(test)]
mod model;
pub mod pressure;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use crate::frame::{FrameError, write_frame};
pub use crate::messages::Flow;

/// Commands the appliance keeps sent and unacknowledged per session; more
/// wait in the session until acks free the window.
pub const COMMAND_WINDOW: usize = 64;

/// Bytes of command output the agent keeps sent and unacknowledged per
/// session (all commands together).
pub const OUTPUT_WINDOW_BYTES: u64 = 256 * 1024;

/// Bytes of file chunks a side keeps sent and unacknowledged per session
/// (all transfers in that direction together).
pub const FILE_WINDOW_BYTES: u64 = 1024 * 1024;

/// Largest payload of one output or file chunk (less when the peer's frame
/// limit is smaller: see `max_chunk_bytes` on the machines).
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Accounts a file frame received from the peer on the two file windows
/// both ends keep: a chunk against `incoming` (at most one chunk beyond the
/// window), an ack against `outgoing`; an abort releases the transfer in
/// both directions. An error is a protocol violation by the peer.
fn account_file_frame(
    incoming: &mut flow::ByteWindow<crate::ids::TransferId>,
    outgoing: &mut flow::ByteWindow<crate::ids::TransferId>,
    f: &crate::messages::FileFrame,
) -> Result<(), flow::WindowError> {
    use crate::messages::FileFrame;
    match f {
        FileFrame::Chunk(chunk) => incoming.receive(
            chunk.transfer,
            chunk.offset,
            chunk.bytes.len() as u64,
            MAX_CHUNK_BYTES as u64,
        ),
        FileFrame::Ack { transfer, up_to } => {
            outgoing.ack(*transfer, *up_to);
            Ok(())
        }
        FileFrame::Abort { transfer, .. } => {
            incoming.release(*transfer);
            outgoing.release(*transfer);
            Ok(())
        }
    }
}

/// Frame bytes around a chunk's payload (variant tags, id, offset, length).
pub const CHUNK_OVERHEAD_BYTES: usize = 64;

/// The smallest frame limit an appliance may announce (its configuration
/// refuses less); an agent refuses to send anything to one announcing less.
pub const MIN_FRAME_BYTES: usize = 1024;

/// Something to write on one flow's stream: one or more whole frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub flow: Flow,
    pub data: Bytes,
}

/// Why a host request was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The flow's window is full: wait for an acknowledgement (an event)
    /// and offer it again.
    #[error("the {0:?} flow's window is full")]
    WindowFull(Flow),
    /// The session does not carry this flow (protocol 1, not yet
    /// established, or closed).
    #[error("the session does not carry the {0:?} flow")]
    FlowUnavailable(Flow),
    /// The frame would exceed the peer's frame limit.
    #[error("{len} bytes exceed the frame limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// Encoded frames waiting to be written, one buffer per flow.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pending: [BytesMut; 3],
}

pub(crate) fn flow_index(flow: Flow) -> usize {
    match flow {
        Flow::Records => 0,
        Flow::Commands => 1,
        Flow::Files => 2,
    }
}

impl Outbox {
    /// Appends one frame to `flow`'s buffer; on error nothing is appended.
    pub(crate) fn push<T: Serialize + ?Sized>(
        &mut self,
        flow: Flow,
        frame: &T,
        max: usize,
    ) -> Result<(), FrameError> {
        write_frame(frame, &mut self.pending[flow_index(flow)], max)
    }

    /// Appends already framed bytes.
    pub(crate) fn push_encoded(&mut self, flow: Flow, bytes: &[u8]) {
        self.pending[flow_index(flow)].extend_from_slice(bytes);
    }

    /// Everything pending on the first flow that has something, records
    /// first (acks before anything else).
    pub(crate) fn poll(&mut self) -> Option<Transmit> {
        for flow in Flow::ALL {
            let buf = &mut self.pending[flow_index(flow)];
            if !buf.is_empty() {
                return Some(Transmit {
                    flow,
                    data: buf.split().freeze(),
                });
            }
        }
        None
    }

    /// Everything pending on `flow`.
    pub(crate) fn poll_flow(&mut self, flow: Flow) -> Option<Transmit> {
        let buf = &mut self.pending[flow_index(flow)];
        (!buf.is_empty()).then(|| Transmit {
            flow,
            data: buf.split().freeze(),
        })
    }

    pub(crate) fn clear(&mut self) {
        for b in &mut self.pending {
            b.clear();
        }
    }
}
