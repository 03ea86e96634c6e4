//! The appliance end of a device session, without I/O.
//!
//! Owns the frame-level protocol the appliance speaks: Hello first, version
//! negotiation, the Welcome, records handed to the host and cumulative acks
//! once the host made them durable, and the command and file flows of
//! protocol 2 (commands queued until the agent opens the command flow and
//! while the command window is full; the receive windows it enforces on
//! output and file chunks). It does not own the writer, the command store
//! or files: the host stores and answers.
//!
//! The host loop: feed received frames to
//! [`ApplianceSession::handle_frame`] (and [`ApplianceSession::handle_open_flow`]
//! for the first frame of each further stream); on [`ApplianceEvent::Hello`]
//! look up the device's stored high-water mark and call
//! [`ApplianceSession::accept`]; hand [`ApplianceEvent::Records`] to the
//! writer and call [`ApplianceSession::records_durable`] as it commits;
//! write every [`Transmit`] on its flow's stream; close the connection with
//! [`ApplianceSession::close_reason`] once it is set.

use std::collections::{HashSet, VecDeque};

use bytes::BytesMut;

use super::flow::ByteWindow;
use super::pressure::StallWatch;
use super::{
    COMMAND_WINDOW, FILE_WINDOW_BYTES, MAX_CHUNK_BYTES, OUTPUT_WINDOW_BYTES, Outbox, SendError,
    Transmit, flow_index,
};
use crate::frame::{FrameError, write_frame};
use crate::ids::{CommandId, TransferId};
use crate::messages::{
    Ack, AgentFrame, ApplianceFrame, CloseReason, Command, CommandDown, CommandOutput,
    CommandResult, CommandUp, FileChunk, FileFrame, Flow, Hello, Pressure, Record, Welcome,
};
use crate::{
    DEFAULT_MAX_FRAME_BYTES, DeviceId, MIN_SESSION_PROTOCOL_VERSION, SESSION_PROTOCOL_VERSION,
};

/// How the appliance runs a session.
#[derive(Debug, Clone)]
pub struct ApplianceConfig {
    /// The device, from its client certificate.
    pub device: DeviceId,
    /// Largest frame the appliance reads (announced in Welcome).
    pub max_frame_bytes: usize,
    /// Deadline for the agent's Hello.
    pub hello_timeout_ms: u64,
}

/// What the host must do.
#[derive(Debug, Clone, PartialEq)]
pub enum ApplianceEvent {
    /// The agent said Hello (its version is acceptable): look up the
    /// device's stored high-water mark and [`ApplianceSession::accept`].
    Hello(Hello),
    /// Records to store (consecutive frames merged); ack them with
    /// [`ApplianceSession::records_durable`] once durable.
    Records(Vec<Record>),
    /// The agent leaves: ack what becomes durable, then end the session.
    Goodbye {
        reason: String,
    },
    /// The agent recorded the command (it will not run it twice).
    CommandAcked {
        id: CommandId,
    },
    CommandStarted {
        id: CommandId,
        started_ms: u64,
    },
    /// A cancelled command had not left this session: it was never sent.
    CommandWithdrawn {
        id: CommandId,
    },
    /// Output at an offset: store the bytes beyond what is stored, then
    /// [`ApplianceSession::ack_output`].
    Output(CommandOutput),
    /// A result, maybe again: store it if the command has none, then
    /// [`ApplianceSession::ack_result`] either way.
    Result(CommandResult),
    /// A chunk of a pulled file: store the bytes beyond what is stored, then
    /// [`ApplianceSession::ack_file`].
    FileChunk(FileChunk),
    /// The agent holds a pushed file's bytes below `up_to`.
    FileAcked {
        transfer: TransferId,
        up_to: u64,
    },
    FileAborted {
        transfer: TransferId,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingHello {
        deadline_ms: u64,
    },
    /// Hello received, Welcome not yet sent.
    AwaitingAccept {
        version: u16,
    },
    Established {
        version: u16,
    },
    Closed,
}

/// One session on the appliance, from the agent's Hello to its close.
#[derive(Debug)]
pub struct ApplianceSession {
    cfg: ApplianceConfig,
    state: State,
    close: Option<(CloseReason, String)>,
    outbox: Outbox,
    /// Frames for a flow the agent has not opened yet.
    held: [BytesMut; 3],
    /// Flows the agent opened.
    open: [bool; 3],
    events: VecDeque<ApplianceEvent>,
    /// Highest sequence number acknowledged to the agent.
    acked: u64,
    /// Highest sequence number handed to the host.
    received: u64,
    /// Commands waiting for the command flow or the window.
    queued: VecDeque<Command>,
    queued_ids: HashSet<CommandId>,
    /// Commands sent and not acknowledged.
    in_flight: HashSet<CommandId>,
    /// Output received and not acknowledged by the host.
    output: ByteWindow<CommandId>,
    /// Pulled-file bytes received and not acknowledged by the host.
    files_up: ByteWindow<TransferId>,
    /// Pushed-file bytes sent and not acknowledged by the agent.
    files_down: ByteWindow<TransferId>,
    /// When records wait too long for durability: `Pressure` frames to
    /// agents of protocol 3 (from the Welcome on).
    stall: Option<StallWatch>,
}

impl ApplianceSession {
    pub fn new(cfg: ApplianceConfig, now: u64) -> ApplianceSession {
        ApplianceSession {
            state: State::AwaitingHello {
                deadline_ms: now.saturating_add(cfg.hello_timeout_ms),
            },
            cfg,
            close: None,
            outbox: Outbox::default(),
            held: Default::default(),
            open: [true, false, false],
            events: VecDeque::new(),
            acked: 0,
            received: 0,
            queued: VecDeque::new(),
            queued_ids: HashSet::new(),
            in_flight: HashSet::new(),
            output: ByteWindow::new(OUTPUT_WINDOW_BYTES),
            files_up: ByteWindow::new(FILE_WINDOW_BYTES),
            files_down: ByteWindow::new(FILE_WINDOW_BYTES),
            stall: None,
        }
    }

    pub fn device(&self) -> DeviceId {
        self.cfg.device
    }

    /// Why the session is over, once it is: close the connection with it.
    pub fn close_reason(&self) -> Option<(CloseReason, &str)> {
        self.close.as_ref().map(|(r, m)| (*r, m.as_str()))
    }

    pub fn is_closed(&self) -> bool {
        self.close.is_some()
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// The negotiated version (after an acceptable Hello).
    pub fn protocol_version(&self) -> Option<u16> {
        match self.state {
            State::AwaitingAccept { version } | State::Established { version } => Some(version),
            _ => None,
        }
    }

    /// Whether the session carries commands and files (protocol 2 or later).
    pub fn has_remote_flows(&self) -> bool {
        self.protocol_version().is_some_and(|v| v >= 2)
    }

    /// Whether the agent opened `flow`.
    pub fn is_flow_open(&self, flow: Flow) -> bool {
        self.open[flow_index(flow)]
    }

    /// Highest sequence number acknowledged to the agent.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Highest sequence number handed to the host.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Commands sent and not yet acknowledged, and queued behind them.
    pub fn commands_pending(&self) -> (usize, usize) {
        (self.in_flight.len(), self.queued.len())
    }

    /// Ends the session with `reason` (the host closes the connection).
    pub fn close(&mut self, reason: CloseReason, message: impl Into<String>) {
        if self.close.is_none() {
            self.close = Some((reason, message.into()));
            self.state = State::Closed;
            self.outbox.clear();
        }
    }

    fn violation(&mut self, message: String) {
        self.close(CloseReason::ProtocolViolation, message);
    }

    /// The first frame of a further stream named its flow.
    pub fn handle_open_flow(&mut self, flow: Flow, _now: u64) {
        if self.is_closed() {
            return;
        }
        if !self.has_remote_flows() {
            return self.violation(format!(
                "a {} stream needs protocol 2 or later",
                flow.label()
            ));
        }
        let i = flow_index(flow);
        if flow == Flow::Records || self.open[i] {
            return self.violation(format!("the {} stream is already open", flow.label()));
        }
        self.open[i] = true;
        let held = self.held[i].split();
        self.outbox.push_encoded(flow, &held);
        if flow == Flow::Commands {
            self.pump_commands();
        }
    }

    /// A frame from the agent on `flow`'s stream.
    pub fn handle_frame(&mut self, flow: Flow, frame: AgentFrame, now: u64) {
        match (self.state, frame) {
            (State::Closed, _) => {}
            (State::AwaitingHello { .. }, AgentFrame::Hello(h)) if flow == Flow::Records => {
                let v = h.protocol_version;
                if v < MIN_SESSION_PROTOCOL_VERSION {
                    return self.close(
                        CloseReason::UnsupportedVersion,
                        format!(
                            "agent speaks protocol {v}, this appliance speaks {MIN_SESSION_PROTOCOL_VERSION} to {SESSION_PROTOCOL_VERSION}"
                        ),
                    );
                }
                self.state = State::AwaitingAccept {
                    version: v.min(SESSION_PROTOCOL_VERSION),
                };
                self.events.push_back(ApplianceEvent::Hello(h));
            }
            (State::AwaitingHello { .. }, _) => self.violation("first frame must be Hello".into()),
            (_, AgentFrame::Hello(_)) => self.violation("second Hello".into()),
            (_, AgentFrame::Records(rs)) if flow == Flow::Records => {
                if let Some(max) = rs.iter().map(|r| r.seq).max() {
                    self.received = self.received.max(max);
                    if let Some(w) = &mut self.stall {
                        w.received(max, now);
                    }
                }
                match self.events.back_mut() {
                    Some(ApplianceEvent::Records(v)) => v.extend(rs),
                    _ => self.events.push_back(ApplianceEvent::Records(rs)),
                }
            }
            (_, AgentFrame::Goodbye { reason }) if flow == Flow::Records => {
                self.events.push_back(ApplianceEvent::Goodbye { reason })
            }
            (_, AgentFrame::Command(c)) if flow == Flow::Commands && self.open[1] => {
                self.on_command(c)
            }
            (_, AgentFrame::File(f)) if flow == Flow::Files && self.open[2] => self.on_file(f),
            (_, other) => self.violation(format!(
                "{} frame on the {} stream",
                frame_kind(&other),
                flow.label()
            )),
        }
    }

    fn on_command(&mut self, c: CommandUp) {
        let ev = match c {
            CommandUp::Ack { id } => {
                self.in_flight.remove(&id);
                self.pump_commands();
                ApplianceEvent::CommandAcked { id }
            }
            CommandUp::Started { id, started_ms } => {
                ApplianceEvent::CommandStarted { id, started_ms }
            }
            CommandUp::Output(o) => {
                if let Err(e) = self.output.receive(
                    o.id,
                    o.offset,
                    o.bytes.len() as u64,
                    MAX_CHUNK_BYTES as u64,
                ) {
                    return self.violation(format!("output flow: {e}"));
                }
                ApplianceEvent::Output(o)
            }
            CommandUp::Result(r) => ApplianceEvent::Result(r),
        };
        self.events.push_back(ev);
    }

    fn on_file(&mut self, f: FileFrame) {
        if let Err(e) = super::account_file_frame(&mut self.files_up, &mut self.files_down, &f) {
            return self.violation(format!("file flow: {e}"));
        }
        let ev = match f {
            FileFrame::Chunk(chunk) => ApplianceEvent::FileChunk(chunk),
            FileFrame::Ack { transfer, up_to } => ApplianceEvent::FileAcked { transfer, up_to },
            FileFrame::Abort { transfer, reason } => {
                ApplianceEvent::FileAborted { transfer, reason }
            }
        };
        self.events.push_back(ev);
    }

    /// A frame from the agent could not be decoded: the session closes with
    /// the reason (oversize or malformed).
    pub fn handle_malformed(&mut self, _flow: Flow, err: &FrameError) {
        let reason = match err {
            FrameError::Oversize { .. } => CloseReason::OversizeFrame,
            _ => CloseReason::MalformedFrame,
        };
        self.close(reason, err.to_string());
    }

    /// When [`ApplianceSession::handle_timeout`] is due next: the Hello
    /// deadline, then (protocol 3) when a `Pressure` frame may be due.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::AwaitingHello { deadline_ms } => Some(deadline_ms),
            State::Established { .. } => self.stall.as_ref().and_then(StallWatch::next_check),
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: u64) {
        match self.state {
            State::AwaitingHello { deadline_ms } if now >= deadline_ms => {
                self.violation("no Hello received".into());
            }
            State::Established { .. } => {
                let Some(due) = self.stall.as_mut().and_then(|w| w.poll(now)) else {
                    return;
                };
                let pressure = ApplianceFrame::Pressure(Pressure {
                    queue_delay_ms: due.stalled_ms.min(u64::from(u32::MAX)) as u32,
                    ack_timeout_hint_ms: due.ack_timeout_hint_ms.min(u64::from(u32::MAX)) as u32,
                });
                // A few bytes: fits every limit.
                let _ = self
                    .outbox
                    .push(Flow::Records, &pressure, DEFAULT_MAX_FRAME_BYTES);
            }
            _ => {}
        }
    }

    /// `Pressure` frames sent on this session (protocol 3).
    pub fn pressure_frames_sent(&self) -> u64 {
        self.stall.as_ref().map_or(0, StallWatch::frames_due)
    }

    /// Answers Hello: everything up to `last_stored_seq` is stored already.
    /// (The stall clock of protocol 3 starts at the first records.)
    pub fn accept(&mut self, last_stored_seq: u64) {
        let State::AwaitingAccept { version } = self.state else {
            return;
        };
        let welcome = ApplianceFrame::Welcome(Welcome {
            protocol_version: version,
            device_id: self.cfg.device,
            last_stored_seq,
            max_frame_bytes: self.cfg.max_frame_bytes.min(u32::MAX as usize) as u32,
        });
        if let Err(e) = self
            .outbox
            .push(Flow::Records, &welcome, DEFAULT_MAX_FRAME_BYTES)
        {
            return self.close(CloseReason::Internal, format!("encoding Welcome: {e}"));
        }
        self.acked = last_stored_seq;
        self.state = State::Established { version };
        if version >= 3 {
            self.stall = Some(StallWatch::new(last_stored_seq, 0));
        }
    }

    /// Records up to `up_to` are durable: a cumulative ack (if it moved).
    pub fn records_durable(&mut self, up_to: u64) {
        if up_to <= self.acked || !self.is_established() {
            return;
        }
        self.acked = up_to;
        if let Some(w) = &mut self.stall {
            w.acked(up_to);
        }
        let ack = ApplianceFrame::Ack(Ack { up_to_seq: up_to });
        // An Ack is a few bytes: it fits every limit.
        let _ = self
            .outbox
            .push(Flow::Records, &ack, DEFAULT_MAX_FRAME_BYTES);
    }

    fn push_down(&mut self, flow: Flow, frame: &ApplianceFrame) -> Result<(), SendError> {
        if !self.has_remote_flows() || self.is_closed() {
            return Err(SendError::FlowUnavailable(flow));
        }
        let i = flow_index(flow);
        let r = if self.open[i] {
            self.outbox.push(flow, frame, DEFAULT_MAX_FRAME_BYTES)
        } else {
            write_frame(frame, &mut self.held[i], DEFAULT_MAX_FRAME_BYTES)
        };
        r.map_err(|e| match e {
            FrameError::Oversize { len, max } => SendError::TooLarge { len, max },
            _ => SendError::TooLarge {
                len: 0,
                max: DEFAULT_MAX_FRAME_BYTES,
            },
        })
    }

    fn pump_commands(&mut self) {
        while self.open[1] && self.in_flight.len() < COMMAND_WINDOW {
            let Some(cmd) = self.queued.pop_front() else {
                break;
            };
            self.queued_ids.remove(&cmd.id);
            let id = cmd.id;
            let frame = ApplianceFrame::Command(CommandDown::Command(cmd));
            // Checked against the limit when it was queued.
            if self.push_down(Flow::Commands, &frame).is_ok() {
                self.in_flight.insert(id);
            }
        }
    }

    /// Sends a command (now, or when the agent opens the command flow and
    /// the window has room). A command already pending on this session is
    /// not sent twice. Refused on sessions of protocol 1 and when its frame
    /// exceeds the agent's limit.
    pub fn send_command(&mut self, cmd: Command) -> Result<(), SendError> {
        if !self.has_remote_flows() || self.is_closed() {
            return Err(SendError::FlowUnavailable(Flow::Commands));
        }
        if self.in_flight.contains(&cmd.id) || self.queued_ids.contains(&cmd.id) {
            return Ok(());
        }
        check_command(&cmd)?;
        self.queued_ids.insert(cmd.id);
        self.queued.push_back(cmd);
        self.pump_commands();
        Ok(())
    }

    /// Cancels a command. Returns `true` if it was still queued here: it is
    /// never sent, and [`ApplianceEvent::CommandWithdrawn`] tells the host.
    /// Otherwise a `Cancel` goes to the agent.
    pub fn cancel_command(&mut self, id: CommandId) -> Result<bool, SendError> {
        if self.queued_ids.remove(&id) {
            self.queued.retain(|c| c.id != id);
            self.events
                .push_back(ApplianceEvent::CommandWithdrawn { id });
            return Ok(true);
        }
        self.push_down(
            Flow::Commands,
            &ApplianceFrame::Command(CommandDown::Cancel { id }),
        )?;
        Ok(false)
    }

    /// The command's result is durable here (or was already): the agent
    /// may forget it.
    pub fn ack_result(&mut self, id: CommandId) -> Result<(), SendError> {
        self.output.release(id);
        self.push_down(
            Flow::Commands,
            &ApplianceFrame::Command(CommandDown::ResultAck { id }),
        )
    }

    /// The command's output below `up_to` is durable here.
    pub fn ack_output(&mut self, id: CommandId, up_to: u64) -> Result<(), SendError> {
        self.output.ack(id, up_to);
        self.push_down(
            Flow::Commands,
            &ApplianceFrame::Command(CommandDown::OutputAck { id, up_to }),
        )
    }

    /// Bytes of pushed-file chunks the window takes before it is full.
    pub fn file_room(&self) -> u64 {
        if self.has_remote_flows() && self.open[2] {
            self.files_down.room()
        } else {
            0
        }
    }

    /// Largest file chunk payload the agent accepts.
    pub fn max_chunk_bytes(&self) -> usize {
        MAX_CHUNK_BYTES
    }

    /// A chunk of a pushed file. Refused until the agent opened the file
    /// flow and while the window is full.
    pub fn send_file_chunk(&mut self, chunk: FileChunk) -> Result<(), SendError> {
        if !self.has_remote_flows() || !self.open[2] || self.is_closed() {
            return Err(SendError::FlowUnavailable(Flow::Files));
        }
        if !self.files_down.has_room() {
            return Err(SendError::WindowFull(Flow::Files));
        }
        if chunk.bytes.len() > MAX_CHUNK_BYTES {
            return Err(SendError::TooLarge {
                len: chunk.bytes.len(),
                max: MAX_CHUNK_BYTES,
            });
        }
        let (t, off, len) = (chunk.transfer, chunk.offset, chunk.bytes.len() as u64);
        self.push_down(Flow::Files, &ApplianceFrame::File(FileFrame::Chunk(chunk)))?;
        let _ = self.files_down.note(t, off, len);
        Ok(())
    }

    /// A pulled file's bytes below `up_to` are durable here.
    pub fn ack_file(&mut self, transfer: TransferId, up_to: u64) -> Result<(), SendError> {
        self.files_up.ack(transfer, up_to);
        self.push_down(
            Flow::Files,
            &ApplianceFrame::File(FileFrame::Ack { transfer, up_to }),
        )
    }

    /// Gives a transfer up (either direction).
    pub fn abort_file(&mut self, transfer: TransferId, reason: &str) -> Result<(), SendError> {
        self.files_up.release(transfer);
        self.files_down.release(transfer);
        self.push_down(
            Flow::Files,
            &ApplianceFrame::File(FileFrame::Abort {
                transfer,
                reason: reason.to_string(),
            }),
        )
    }

    /// Framed bytes to write, one flow at a time (records first).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.poll()
    }

    /// Framed bytes to write on `flow` only.
    pub fn poll_transmit_flow(&mut self, flow: Flow) -> Option<Transmit> {
        self.outbox.poll_flow(flow)
    }

    /// Whether events wait for [`Self::poll_event`].
    pub fn events_pending(&self) -> bool {
        !self.events.is_empty()
    }

    pub fn poll_event(&mut self) -> Option<ApplianceEvent> {
        self.events.pop_front()
    }
}

/// Whether a command fits the frame limit every agent reads.
pub fn check_command(cmd: &Command) -> Result<(), SendError> {
    let len = crate::codec::encode(&ApplianceFrame::Command(CommandDown::Command(cmd.clone())))
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if len > DEFAULT_MAX_FRAME_BYTES {
        return Err(SendError::TooLarge {
            len,
            max: DEFAULT_MAX_FRAME_BYTES,
        });
    }
    Ok(())
}

/// A frame's kind, for messages (never its content).
pub(crate) fn frame_kind(f: &AgentFrame) -> &'static str {
    match f {
        AgentFrame::Hello(_) => "Hello",
        AgentFrame::Records(_) => "Records",
        AgentFrame::Goodbye { .. } => "Goodbye",
        AgentFrame::OpenFlow(_) => "OpenFlow",
        AgentFrame::Command(_) => "Command",
        AgentFrame::File(_) => "File",
    }
}
