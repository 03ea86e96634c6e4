//! The seam between device sessions and remote management (commands,
//! their output and results, file transfers): what a session tells the
//! command subsystem ([`RemoteHost`]) and the handle that subsystem uses to
//! talk to a connected device ([`RemoteLink`]).
//!
//! This module owns no command state and no storage: the command subsystem
//! implements [`RemoteHost`], stores what it must, and answers through the
//! link. The frame-level protocol (windows, ordering, dedupe within a
//! session) is `outpost_proto::session::appliance`.
//!
//! Delivery contract (at-least-once, deduped by the receiver):
//! * Commands: offer every command the device has not acknowledged on each
//!   [`RemoteHost::session_up`] (and new ones with
//!   [`RemoteLink::send_command`] at once); the agent records the id before
//!   acking ([`ApplianceEvent::CommandAcked`]) and never runs an id twice.
//! * Results: store a result if the command has none, then
//!   [`RemoteLink::ack_result`] either way (the agent re-sends until acked).
//! * Output and file chunks carry offsets: store the bytes beyond what is
//!   stored, then ack up to what is stored.

use std::sync::atomic::{AtomicU64, Ordering};

use outpost_proto::DeviceId;
use outpost_proto::ids::{CommandId, TransferId};
use outpost_proto::messages::{Command, FileChunk};
use outpost_proto::session::appliance::{ApplianceEvent, check_command};
use outpost_proto::session::{MAX_CHUNK_BYTES, SendError};
use tokio::sync::mpsc;

/// What the command subsystem learns from device sessions. Methods are
/// called from the session's task: they must not block (hand work to a
/// task or a channel).
pub trait RemoteHost: Send + Sync + 'static {
    /// A session of protocol 2 or later is established: the device takes
    /// commands through `link` until [`RemoteHost::session_down`].
    fn session_up(&self, device: DeviceId, link: RemoteLink);
    /// Something happened on the command or file flow: one of
    /// `CommandAcked`, `CommandStarted`, `CommandWithdrawn`, `Output`,
    /// `Result`, `FileChunk`, `FileAcked`, `FileAborted`.
    fn event(&self, device: DeviceId, event: ApplianceEvent);
    /// The session ended: what was sent and not acknowledged on it must be
    /// offered again on the next one.
    fn session_down(&self, device: DeviceId, link: &RemoteLink);
}

/// The host of an appliance without remote management: sessions carry
/// records only in effect.
#[derive(Debug, Default)]
pub struct NoRemote;

impl RemoteHost for NoRemote {
    fn session_up(&self, _device: DeviceId, _link: RemoteLink) {}
    fn event(&self, _device: DeviceId, _event: ApplianceEvent) {}
    fn session_down(&self, _device: DeviceId, _link: &RemoteLink) {}
}

/// What the command subsystem asks of a session.
#[derive(Debug)]
pub(crate) enum LinkInput {
    SendCommand(Command),
    CancelCommand(CommandId),
    AckResult(CommandId),
    AckOutput(CommandId, u64),
    AckFile(TransferId, u64),
    AbortFile(TransferId, String),
}

/// The session of a device closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the device's session is closed")]
pub struct LinkClosed;

/// Why [`RemoteLink::send_command`] refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Closed(#[from] LinkClosed),
    #[error(transparent)]
    Refused(#[from] SendError),
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// A handle to one established session of a device (cheap to clone).
/// Everything sent through it goes out on that session only: after it
/// closes, calls fail with [`LinkClosed`] and the next session brings a
/// new link.
#[derive(Debug, Clone)]
pub struct RemoteLink {
    id: u64,
    device: DeviceId,
    tx: mpsc::UnboundedSender<Box<LinkInput>>,
    files: mpsc::Sender<Box<FileChunk>>,
}

/// The session's ends of a link's channels.
///
/// Items are boxed: a tokio channel allocates its first block of 32 slots
/// when it is created, and every connected device has both channels
/// whether or not a command ever comes. Boxed, a block is 32 pointers
/// (256 B) instead of 32 inputs (1.5 KB) or chunks (1.8 KB).
#[derive(Debug)]
pub(crate) struct LinkInbox {
    pub(crate) rx: mpsc::UnboundedReceiver<Box<LinkInput>>,
    pub(crate) files: mpsc::Receiver<Box<FileChunk>>,
}

impl RemoteLink {
    pub(crate) fn new(device: DeviceId) -> (RemoteLink, LinkInbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        // A few chunks queued: the session's file window does the rest.
        let (ftx, frx) = mpsc::channel(4);
        (
            RemoteLink {
                id: NEXT_LINK.fetch_add(1, Ordering::Relaxed),
                device,
                tx,
                files: ftx,
            },
            LinkInbox { rx, files: frx },
        )
    }

    /// Tells links of different sessions apart.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Whether the session is still open.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    fn input(&self, i: LinkInput) -> Result<(), LinkClosed> {
        self.tx.send(Box::new(i)).map_err(|_| LinkClosed)
    }

    /// Pushes a command to the device now (or as soon as its command flow
    /// and window allow). Refused when its frame exceeds the agent's limit.
    pub fn send_command(&self, cmd: Command) -> Result<(), LinkError> {
        check_command(&cmd)?;
        Ok(self.input(LinkInput::SendCommand(cmd))?)
    }

    /// Cancels a command: withdrawn if it was still waiting in the session
    /// ([`ApplianceEvent::CommandWithdrawn`]), otherwise a cancel goes to
    /// the agent.
    pub fn cancel_command(&self, id: CommandId) -> Result<(), LinkClosed> {
        self.input(LinkInput::CancelCommand(id))
    }

    /// The command's result is durable here.
    pub fn ack_result(&self, id: CommandId) -> Result<(), LinkClosed> {
        self.input(LinkInput::AckResult(id))
    }

    /// The command's output below `up_to` is durable here.
    pub fn ack_output(&self, id: CommandId, up_to: u64) -> Result<(), LinkClosed> {
        self.input(LinkInput::AckOutput(id, up_to))
    }

    /// A pulled file's bytes below `up_to` are durable here.
    pub fn ack_file(&self, transfer: TransferId, up_to: u64) -> Result<(), LinkClosed> {
        self.input(LinkInput::AckFile(transfer, up_to))
    }

    /// Gives a transfer up.
    pub fn abort_file(&self, transfer: TransferId, reason: &str) -> Result<(), LinkClosed> {
        self.input(LinkInput::AbortFile(transfer, reason.to_string()))
    }

    /// Sends a chunk of a pushed file (at most
    /// [`outpost_proto::session::MAX_CHUNK_BYTES`]); waits while the file
    /// window is full.
    pub async fn send_file_chunk(&self, chunk: FileChunk) -> Result<(), LinkError> {
        if chunk.bytes.len() > MAX_CHUNK_BYTES {
            return Err(SendError::TooLarge {
                len: chunk.bytes.len(),
                max: MAX_CHUNK_BYTES,
            }
            .into());
        }
        self.files
            .send(Box::new(chunk))
            .await
            .map_err(|_| LinkClosed)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_link_forwards_to_its_session_and_fails_once_the_session_is_gone() {
        let (link, mut inbox) = RemoteLink::new(DeviceId(5));
        let (other, _inbox2) = RemoteLink::new(DeviceId(5));
        assert_ne!(link.id(), other.id(), "each session's link is told apart");
        assert_eq!(link.device(), DeviceId(5));
        let id = CommandId([1; 16]);
        link.send_command(Command {
            id,
            spec: b"uptime".to_vec(),
        })
        .unwrap();
        link.cancel_command(id).unwrap();
        assert!(
            matches!(inbox.rx.try_recv(), Ok(i) if matches!(&*i, LinkInput::SendCommand(c) if c.id == id))
        );
        assert!(
            matches!(inbox.rx.try_recv(), Ok(i) if matches!(*i, LinkInput::CancelCommand(c) if c == id))
        );
        // A command no agent could read is refused here, not sent.
        let big = Command {
            id,
            spec: vec![0; outpost_proto::DEFAULT_MAX_FRAME_BYTES],
        };
        assert!(matches!(
            link.send_command(big),
            Err(LinkError::Refused(SendError::TooLarge { .. }))
        ));
        let chunk = FileChunk {
            transfer: TransferId([2; 16]),
            offset: 0,
            bytes: vec![0; MAX_CHUNK_BYTES + 1],
            last: false,
        };
        assert!(matches!(
            link.send_file_chunk(chunk).await,
            Err(LinkError::Refused(SendError::TooLarge { .. }))
        ));
        drop(inbox);
        assert!(!link.is_open());
        assert_eq!(link.ack_result(id), Err(LinkClosed));
        assert!(matches!(
            link.send_command(Command { id, spec: vec![] }),
            Err(LinkError::Closed(LinkClosed))
        ));
    }
}
