//! The downlink of commands: central → site on the site's own uplink
//! stream (protocol version 2, [`crate::wire::COMMANDS_PROTOCOL_VERSION`]).
//!
//! This module owns the downlink's wire types and the site's pure plan of
//! what to report ([`plan_update`]). It owns no state: central keeps its
//! command records (`outpost-central`'s `commands` module), the appliance
//! applies commands through its command service (`outpost`'s `downlink`
//! module), and [`DownlinkPort`] (appliance side) only carries frames
//! between the uplink sender and that adapter.
//!
//! The contract, both ends:
//!
//! * **Central's id is the idempotency key.** A [`DownCommand`] carries
//!   central's [`CommandId`]; the site creates its own command under that
//!   same id (durably) before it answers [`CommandAck::accepted`], and a
//!   command delivered again (reconnect, central restart, a resend) is
//!   found by id and never queued twice. The agent dedupes on the same id.
//! * **Central is the source of truth of what is open.** After every
//!   `Welcome` central sends every command of the site it has not closed
//!   (not yet acknowledged, or acknowledged but without its final state
//!   and output), each with the output length central holds. The site
//!   needs no memory of its own across restarts: it reports those from
//!   where central stands.
//! * **Reports are full states, output is appended.** A [`CommandUpdate`]
//!   carries the site's whole state of the command (all transitions) and
//!   output bytes from the offset central acknowledged last; central keeps
//!   the longer history (a stale update never moves a command back) and
//!   appends only at its own length. Output the site had to truncate (head
//!   and tail kept) is sent once, whole, with the final state
//!   (`replace`). One update per command is in flight at a time; the
//!   next goes when [`UpdateAck`] comes back.

use outpost_proto::DeviceId;
use outpost_proto::ids::CommandId;
use serde::{Deserialize, Serialize};

/// Most output bytes in one [`CommandUpdate`] (appended output; a final
/// `replace` of truncated output may be up to the site's cap plus its
/// marker).
pub const MAX_OUTPUT_CHUNK: usize = 256 * 1024;

/// A command central queued for a device of the site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownCommand {
    pub id: CommandId,
    pub device: DeviceId,
    /// `outpost_proto::command::CommandSpec::encode` output (its expiry is
    /// what is left of central's).
    pub spec: Vec<u8>,
    /// A cancel was asked for at central (by whom): the site stops it.
    pub cancel: Option<String>,
    /// Output bytes central holds for it (the site appends from there).
    pub output_len: u64,
    /// Site transitions central holds (the site reports when it has more).
    pub transitions: u32,
}

/// The site's answer to a [`DownCommand`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandAck {
    pub id: CommandId,
    /// `None`: durable at the site (it will run at most once). `Some`: the
    /// site refused it for good (unknown or revoked device, invalid spec).
    pub refused: Option<String>,
}

impl CommandAck {
    pub fn accepted(id: CommandId) -> CommandAck {
        CommandAck { id, refused: None }
    }
}

/// A command's state at the site, as the site's command service names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteCommandState {
    Queued,
    Sent,
    Running,
    Completed,
    Failed,
    TimedOut,
    Cancelled,
    Expired,
    Interrupted,
}

impl SiteCommandState {
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            SiteCommandState::Queued | SiteCommandState::Sent | SiteCommandState::Running
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SiteCommandState::Queued => "queued",
            SiteCommandState::Sent => "sent",
            SiteCommandState::Running => "running",
            SiteCommandState::Completed => "completed",
            SiteCommandState::Failed => "failed",
            SiteCommandState::TimedOut => "timed_out",
            SiteCommandState::Cancelled => "cancelled",
            SiteCommandState::Expired => "expired",
            SiteCommandState::Interrupted => "interrupted",
        }
    }

    pub const ALL: [SiteCommandState; 9] = [
        SiteCommandState::Queued,
        SiteCommandState::Sent,
        SiteCommandState::Running,
        SiteCommandState::Completed,
        SiteCommandState::Failed,
        SiteCommandState::TimedOut,
        SiteCommandState::Cancelled,
        SiteCommandState::Expired,
        SiteCommandState::Interrupted,
    ];

    /// The state named `s` (the site's `CommandState::as_str`).
    pub fn parse(s: &str) -> Option<SiteCommandState> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// Output bytes of an update.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutputChunk {
    /// Replace everything central holds (offset 0) instead of appending.
    pub replace: bool,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// Where a command stands at the site (full state) plus output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandUpdate {
    pub id: CommandId,
    pub state: SiteCommandState,
    /// Every state the command entered at the site, with the site's time.
    pub transitions: Vec<(SiteCommandState, u64)>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    /// Output bytes the command produced (as the agent reported them).
    pub output_total: Option<u64>,
    /// The site's stored output lost its middle (head and tail kept).
    pub output_truncated: bool,
    pub output: OutputChunk,
    /// The state is terminal and this update carries the end of the
    /// output: central closes the command when it stores it.
    pub last: bool,
}

/// Central stored an update: what it now holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateAck {
    pub id: CommandId,
    pub output_len: u64,
    pub transitions: u32,
    /// Central closed the command: no more updates.
    pub closed: bool,
}

/// What central holds of a command, as the site last heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CentralHolds {
    pub output_len: u64,
    pub transitions: u32,
}

/// The site's view of one command: its full state (`output` empty) and
/// its stored output.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteView {
    pub state: CommandUpdate,
    pub output: Vec<u8>,
}

/// The next update to send for a command central holds `holds` of, or
/// `None` when central is up to date. Pure.
///
/// Untruncated output is appended from `holds.output_len` in chunks of at
/// most [`MAX_OUTPUT_CHUNK`]; output the site truncated is sent whole with
/// the final state only (its tail moves while the command runs).
pub fn plan_update(view: &SiteView, holds: CentralHolds) -> Option<CommandUpdate> {
    let mut u = view.state.clone();
    let terminal = u.state.is_terminal();
    let len = view.output.len() as u64;
    let (chunk, output_complete) = if u.output_truncated {
        if terminal {
            (
                OutputChunk {
                    replace: true,
                    offset: 0,
                    bytes: view.output.clone(),
                },
                true,
            )
        } else {
            (OutputChunk::default(), false)
        }
    } else if holds.output_len > len {
        // Central holds more than the site has (it cannot, unless the
        // site's output was reset): start over.
        (
            OutputChunk {
                replace: true,
                offset: 0,
                bytes: view.output[..view.output.len().min(MAX_OUTPUT_CHUNK)].to_vec(),
            },
            len as usize <= MAX_OUTPUT_CHUNK,
        )
    } else {
        let from = holds.output_len as usize;
        let to = view.output.len().min(from + MAX_OUTPUT_CHUNK);
        (
            OutputChunk {
                replace: false,
                offset: holds.output_len,
                bytes: view.output[from..to].to_vec(),
            },
            to == view.output.len(),
        )
    };
    u.last = terminal && output_complete;
    let new_state = u.transitions.len() as u32 > holds.transitions;
    // A terminal command whose output central holds whole still gets one
    // (empty) `last` update: central closes it on that (idempotently).
    if !new_state && chunk.bytes.is_empty() && !chunk.replace && !u.last {
        return None;
    }
    u.output = chunk;
    Some(u)
}

/// Frames between the uplink sender and the appliance's downlink
/// adapter (appliance side).
#[cfg(feature = "appliance")]
pub use port::{DownEvent, DownlinkPort, SiteEnd};

#[cfg(feature = "appliance")]
mod port {
    use super::*;
    use tokio::sync::mpsc;

    /// What the sender hands the adapter.
    #[derive(Debug, Clone, PartialEq)]
    pub enum DownEvent {
        /// A new uplink stream is up and central speaks `protocol_version`
        /// (the adapter forgets what it tracked for the old one).
        Connected {
            protocol_version: u16,
        },
        Disconnected,
        Commands(Vec<DownCommand>),
        Cancel {
            id: CommandId,
            by: String,
        },
        UpdateAck(UpdateAck),
        /// File frames (protocol 7, [`crate::files`]).
        FileChunk(crate::files::UpFileChunk),
        FileAck(crate::files::UpFileAck),
        FileAbort(crate::files::UpFileAbort),
        /// Deployment orders (protocol 5, [`crate::deploy_link`]).
        DeployOrders(Vec<crate::deploy_link::DeployOrder>),
        DeployProgressAck(crate::deploy_link::DeployProgressAck),
    }

    /// The sender's end: events to the adapter, frames from it.
    #[derive(Debug)]
    pub struct DownlinkPort {
        pub events: mpsc::UnboundedSender<DownEvent>,
        pub frames: tokio::sync::Mutex<mpsc::Receiver<crate::wire::SiteFrame>>,
    }

    /// The adapter's end.
    #[derive(Debug)]
    pub struct SiteEnd {
        pub events: mpsc::UnboundedReceiver<DownEvent>,
        pub frames: mpsc::Sender<crate::wire::SiteFrame>,
    }

    impl DownlinkPort {
        /// A connected pair; `frames` bounds the frames waiting to go up.
        pub fn pair(frames: usize) -> (DownlinkPort, SiteEnd) {
            let (etx, erx) = mpsc::unbounded_channel();
            let (ftx, frx) = mpsc::channel(frames.max(1));
            (
                DownlinkPort {
                    events: etx,
                    frames: tokio::sync::Mutex::new(frx),
                },
                SiteEnd {
                    events: erx,
                    frames: ftx,
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: SiteCommandState, n_transitions: usize, output: &[u8], trunc: bool) -> SiteView {
        SiteView {
            state: CommandUpdate {
                id: CommandId([1; 16]),
                state,
                transitions: (0..n_transitions)
                    .map(|i| (SiteCommandState::Queued, i as u64))
                    .collect(),
                exit_code: None,
                signal: None,
                reason: None,
                output_total: Some(output.len() as u64),
                output_truncated: trunc,
                output: OutputChunk::default(),
                last: false,
            },
            output: output.to_vec(),
        }
    }

    fn holds(output_len: u64, transitions: u32) -> CentralHolds {
        CentralHolds {
            output_len,
            transitions,
        }
    }

    #[test]
    fn nothing_is_sent_when_central_holds_everything_of_an_open_command() {
        let v = view(SiteCommandState::Running, 3, b"abc", false);
        assert_eq!(plan_update(&v, holds(3, 3)), None);
    }

    #[test]
    fn a_new_transition_is_sent_without_output_bytes() {
        let v = view(SiteCommandState::Running, 3, b"abc", false);
        let u = plan_update(&v, holds(3, 2)).unwrap();
        assert!(u.output.bytes.is_empty() && !u.last);
        assert_eq!(u.transitions.len(), 3);
    }

    #[test]
    fn output_is_appended_from_what_central_holds_in_bounded_chunks() {
        let big = vec![b'x'; MAX_OUTPUT_CHUNK + 10];
        let v = view(SiteCommandState::Completed, 4, &big, false);
        let u = plan_update(&v, holds(0, 4)).unwrap();
        assert_eq!(
            (u.output.offset, u.output.bytes.len(), u.output.replace),
            (0, MAX_OUTPUT_CHUNK, false)
        );
        assert!(!u.last, "more output follows");
        let u = plan_update(&v, holds(MAX_OUTPUT_CHUNK as u64, 4)).unwrap();
        assert_eq!(
            (u.output.offset, u.output.bytes.len()),
            (MAX_OUTPUT_CHUNK as u64, 10)
        );
        assert!(u.last, "terminal and the end of the output");
    }

    #[test]
    fn truncated_output_goes_whole_with_the_final_state_only() {
        let v = view(SiteCommandState::Running, 3, b"head..tail", true);
        let u = plan_update(&v, holds(0, 2)).unwrap();
        assert!(u.output.bytes.is_empty(), "not while running");
        let v = view(SiteCommandState::Completed, 4, b"head..tail", true);
        let u = plan_update(&v, holds(0, 3)).unwrap();
        assert!(u.output.replace && u.last);
        assert_eq!(u.output.bytes, b"head..tail");
    }

    #[test]
    fn a_terminal_command_central_holds_whole_is_closed_with_an_empty_last_update() {
        let v = view(SiteCommandState::Failed, 4, b"oops", false);
        let u = plan_update(&v, holds(4, 4)).unwrap();
        assert!(u.last && u.output.bytes.is_empty());
    }

    #[test]
    fn central_holding_more_than_the_site_gets_the_output_again_from_zero() {
        let v = view(SiteCommandState::Completed, 4, b"ab", false);
        let u = plan_update(&v, holds(9, 4)).unwrap();
        assert!(u.output.replace && u.last);
        assert_eq!(u.output.bytes, b"ab");
    }

    #[test]
    fn downlink_frames_round_trip_through_the_codec() {
        use crate::wire::{CentralFrame, SiteFrame};
        let f = CentralFrame::Commands(vec![DownCommand {
            id: CommandId([7; 16]),
            device: DeviceId(42),
            spec: vec![1, 2, 3],
            cancel: Some("ann".into()),
            output_len: 5,
            transitions: 2,
        }]);
        let b = outpost_proto::codec::encode(&f).unwrap();
        assert_eq!(outpost_proto::codec::decode::<CentralFrame>(&b).unwrap(), f);
        let v = view(SiteCommandState::Completed, 2, b"x", false);
        let s = SiteFrame::CommandUpdate(plan_update(&v, holds(0, 0)).unwrap());
        let b = outpost_proto::codec::encode(&s).unwrap();
        assert_eq!(outpost_proto::codec::decode::<SiteFrame>(&b).unwrap(), s);
    }
}
