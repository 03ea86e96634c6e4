//! The seam between the agent's session and remote management (the command
//! executor and file transfers): what a session tells it ([`RemoteHost`])
//! and the handle it answers through ([`RemoteLink`]).
//!
//! This module owns no command state: the executor implements
//! [`RemoteHost`], keeps its ledger durable, and talks through the link. The
//! frame-level protocol (windows, ordering) is
//! `outpost_proto::session::agent`.
//!
//! Delivery contract (at-least-once, deduped by the receiver):
//! * A command may arrive more than once ([`AgentEvent::Command`]). Record
//!   its id durably before anything else, then [`RemoteLink::ack_command`];
//!   start it only if the id was new; for a known id send its stored result
//!   again if it has one. Never start an id twice.
//! * Results, output and pulled-file chunks are re-sent on every
//!   [`RemoteHost::session_up`] until acknowledged
//!   ([`AgentEvent::ResultAcked`], [`AgentEvent::OutputAcked`],
//!   [`AgentEvent::FileAcked`]), output and chunks from the acknowledged
//!   offset.
//! * Pushed-file chunks carry offsets: write the bytes beyond what is
//!   written, then [`RemoteLink::ack_file`] up to what is durable (also on
//!   `session_up` for transfers in progress: the appliance resumes there).

use std::sync::Mutex;

use outpost_proto::ids::{CommandId, TransferId};
use outpost_proto::messages::{CommandOutcome, CommandOutput, CommandResult, FileChunk};
use outpost_proto::session::agent::AgentEvent;
use tokio::sync::mpsc;

/// What remote management learns from the session. Methods are called from
/// the session's task: they must not block (hand work to a task).
pub trait RemoteHost: Send + Sync + 'static {
    /// A session of protocol 2 or later is established: `link` carries
    /// answers until [`RemoteHost::session_down`].
    fn session_up(&self, link: RemoteLink);
    /// One of `Command`, `CancelCommand`, `ResultAcked`, `OutputAcked`,
    /// `FileChunk`, `FileAcked`, `FileAborted`.
    fn event(&self, event: AgentEvent);
    /// The session ended: what was sent and not acknowledged on it must be
    /// sent again on the next one.
    fn session_down(&self);
}

/// What the executor asks of the session.
#[derive(Debug)]
pub(crate) enum LinkInput {
    AckCommand(CommandId),
    Started(CommandId, u64),
    Result(CommandResult),
    AckFile(TransferId, u64),
    AbortFile(TransferId, String),
}

/// The session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session to the appliance is closed")]
pub struct LinkClosed;

/// A handle to the current session (cheap to clone). After the session
/// ends, calls fail with [`LinkClosed`]; the next session brings a new link.
#[derive(Debug, Clone)]
pub struct RemoteLink {
    tx: mpsc::UnboundedSender<LinkInput>,
    output: mpsc::Sender<CommandOutput>,
    files: mpsc::Sender<FileChunk>,
    max_chunk_bytes: usize,
}

/// The session's ends of a link's channels.
#[derive(Debug)]
pub(crate) struct LinkInbox {
    pub(crate) rx: mpsc::UnboundedReceiver<LinkInput>,
    pub(crate) output: mpsc::Receiver<CommandOutput>,
    pub(crate) files: mpsc::Receiver<FileChunk>,
}

impl RemoteLink {
    pub(crate) fn new(max_chunk_bytes: usize) -> (RemoteLink, LinkInbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        // A few chunks queued: the session's windows do the rest.
        let (otx, orx) = mpsc::channel(4);
        let (ftx, frx) = mpsc::channel(4);
        (
            RemoteLink {
                tx,
                output: otx,
                files: ftx,
                max_chunk_bytes,
            },
            LinkInbox {
                rx,
                output: orx,
                files: frx,
            },
        )
    }

    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Largest output or file chunk payload the appliance accepts.
    pub fn max_chunk_bytes(&self) -> usize {
        self.max_chunk_bytes
    }

    fn input(&self, i: LinkInput) -> Result<(), LinkClosed> {
        self.tx.send(i).map_err(|_| LinkClosed)
    }

    /// The command's id is recorded durably (new or known).
    pub fn ack_command(&self, id: CommandId) -> Result<(), LinkClosed> {
        self.input(LinkInput::AckCommand(id))
    }

    /// The command's process started.
    pub fn command_started(&self, id: CommandId, started_ms: u64) -> Result<(), LinkClosed> {
        self.input(LinkInput::Started(id, started_ms))
    }

    /// The command's result (send again after reconnects until acked).
    pub fn send_result(&self, result: CommandResult) -> Result<(), LinkClosed> {
        self.input(LinkInput::Result(result))
    }

    /// A piece of output (at most [`RemoteLink::max_chunk_bytes`]); waits
    /// while the output window is full.
    pub async fn send_output(&self, output: CommandOutput) -> Result<(), LinkClosed> {
        self.output.send(output).await.map_err(|_| LinkClosed)
    }

    /// A chunk of a pulled file (at most [`RemoteLink::max_chunk_bytes`]);
    /// waits while the file window is full.
    pub async fn send_file_chunk(&self, chunk: FileChunk) -> Result<(), LinkClosed> {
        self.files.send(chunk).await.map_err(|_| LinkClosed)
    }

    /// A pushed file's bytes below `up_to` are durable here.
    pub fn ack_file(&self, transfer: TransferId, up_to: u64) -> Result<(), LinkClosed> {
        self.input(LinkInput::AckFile(transfer, up_to))
    }

    /// Gives a transfer up.
    pub fn abort_file(&self, transfer: TransferId, reason: &str) -> Result<(), LinkClosed> {
        self.input(LinkInput::AbortFile(transfer, reason.to_string()))
    }
}

/// The host of an agent without a command executor: every command is
/// acknowledged and refused with a reason (never silence), every pushed
/// file aborted. It runs nothing, so it needs no ledger.
#[derive(Debug, Default)]
pub struct RefuseRemote {
    link: Mutex<Option<RemoteLink>>,
}

/// Why [`RefuseRemote`] refuses.
pub const NO_EXECUTOR: &str = "this agent does not run remote commands";

impl RemoteHost for RefuseRemote {
    fn session_up(&self, link: RemoteLink) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(link);
    }

    fn event(&self, event: AgentEvent) {
        let Some(link) = self.link.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        match event {
            AgentEvent::Command(cmd) => {
                let _ = link.ack_command(cmd.id);
                let _ = link.send_result(CommandResult {
                    id: cmd.id,
                    outcome: CommandOutcome::Refused {
                        reason: NO_EXECUTOR.to_string(),
                    },
                    output_bytes: 0,
                    finished_ms: crate::session::now_ms(),
                });
            }
            AgentEvent::FileChunk(chunk) => {
                let _ = link.abort_file(chunk.transfer, NO_EXECUTOR);
            }
            _ => {}
        }
    }

    fn session_down(&self) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use outpost_proto::messages::Command;

    use super::*;

    #[test]
    fn without_an_executor_a_command_is_acknowledged_and_refused_with_a_reason() {
        let host = RefuseRemote::default();
        let (link, mut inbox) = RemoteLink::new(1024);
        let id = CommandId([7; 16]);
        // Before a session is up there is no one to answer.
        host.event(AgentEvent::Command(Command { id, spec: vec![] }));
        host.session_up(link.clone());
        host.event(AgentEvent::Command(Command {
            id,
            spec: b"reboot".to_vec(),
        }));
        assert!(matches!(inbox.rx.try_recv(), Ok(LinkInput::AckCommand(i)) if i == id));
        match inbox.rx.try_recv() {
            Ok(LinkInput::Result(r)) => {
                assert_eq!(r.id, id);
                assert_eq!(
                    r.outcome,
                    CommandOutcome::Refused {
                        reason: NO_EXECUTOR.into()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        host.event(AgentEvent::FileChunk(FileChunk {
            transfer: TransferId([1; 16]),
            offset: 0,
            bytes: vec![1],
            last: true,
        }));
        assert!(matches!(inbox.rx.try_recv(), Ok(LinkInput::AbortFile(_, r)) if r == NO_EXECUTOR));
        assert!(inbox.rx.try_recv().is_err(), "nothing else");
        host.session_down();
        drop(inbox);
        assert!(!link.is_open());
        assert_eq!(link.ack_command(id), Err(LinkClosed));
    }
}
