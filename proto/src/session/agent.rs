//! The agent end of a device session, without I/O.
//!
//! Owns the frame-level protocol the agent speaks: Hello, the Welcome it
//! expects (version, frame limit), which records to send next and when the
//! window is full, the ack and Welcome deadlines, and the command and file
//! flows of protocol 2 with their windows. It does not own the record
//! buffer, the command ledger or any file: the host reads and deletes
//! records, records command ids durably, runs commands and writes files,
//! and tells the machine what happened.
//!
//! The host loop, in order: feed received frames to
//! [`AgentSession::handle_frame`]; while [`AgentSession::records_wanted`]
//! names a sequence number, read records from it and hand them to
//! [`AgentSession::send_records`]; act on every [`AgentEvent`]; write every
//! [`Transmit`] on its flow's stream; sleep until
//! [`AgentSession::poll_timeout`] and then call
//! [`AgentSession::handle_timeout`]. Stop when [`AgentSession::ended`] is set.

use std::collections::VecDeque;

use bytes::BytesMut;

use super::flow::ByteWindow;
use super::pressure::AckClock;
use super::{
    CHUNK_OVERHEAD_BYTES, FILE_WINDOW_BYTES, MAX_CHUNK_BYTES, MIN_FRAME_BYTES, OUTPUT_WINDOW_BYTES,
    Outbox, SendError, Transmit,
};
use crate::frame::{FrameError, write_frame};
use crate::ids::{CommandId, TransferId};
use crate::messages::{
    AgentFrame, ApplianceFrame, Close, Command, CommandDown, CommandOutput, CommandResult,
    CommandUp, FileChunk, FileFrame, Flow, Hello, Record,
};
use crate::{DEFAULT_MAX_FRAME_BYTES, MIN_SESSION_PROTOCOL_VERSION, SESSION_PROTOCOL_VERSION};

/// What the agent announces and how patient it is.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The protocol version offered in Hello: normally
    /// [`SESSION_PROTOCOL_VERSION`]; 1 to talk to an appliance that refused
    /// the newer one (records only).
    pub protocol_version: u16,
    pub agent_version: String,
    pub heartbeat_interval_ms: u32,
    pub metrics_interval_ms: u32,
    /// Records sent and not acknowledged at most (sequence numbers between
    /// the last ack and the next record to send).
    pub max_in_flight_records: u64,
    /// With records in flight, silence from the appliance this long ends
    /// the session (the connection is dead; reconnecting beats waiting).
    pub ack_timeout_ms: u64,
    /// The longest an appliance's `Pressure` frame (protocol 3) may extend
    /// the ack timeout to: a slow appliance is waited for, up to this.
    pub max_ack_timeout_ms: u64,
    /// How long the appliance has to answer Hello.
    pub welcome_timeout_ms: u64,
}

impl AgentConfig {
    /// Defaults of the real agent (intervals are the caller's).
    pub fn new(agent_version: impl Into<String>) -> AgentConfig {
        AgentConfig {
            protocol_version: SESSION_PROTOCOL_VERSION,
            agent_version: agent_version.into(),
            heartbeat_interval_ms: 30_000,
            metrics_interval_ms: 60_000,
            max_in_flight_records: 4096,
            ack_timeout_ms: 10_000,
            max_ack_timeout_ms: 120_000,
            welcome_timeout_ms: 15_000,
        }
    }
}

/// What the host must do.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// The appliance welcomed the session. The host deletes its buffered
    /// records up to `last_stored_seq` (stored before; their acks were lost)
    /// and numbers new records above it. With `protocol_version >= 2` the
    /// command and file flows are open: the host re-sends what the appliance
    /// has not acknowledged (results, output and file bytes from the
    /// acknowledged offsets).
    Established {
        protocol_version: u16,
        last_stored_seq: u64,
        /// The appliance's frame limit (records frames follow it).
        max_frame_bytes: usize,
    },
    /// Every record up to `up_to` is durable on the appliance: delete them.
    RecordsAcked { up_to: u64 },
    /// This record alone exceeds the appliance's frame limit and can never
    /// be delivered: drop it from the buffer and count it.
    RecordUndeliverable { seq: u64, len: usize, max: usize },
    /// The appliance is slow (protocol 3): its oldest record of this
    /// session has waited `queue_delay_ms`; the session now waits up to
    /// `patience_ms` for an ack instead of reconnecting. For logs and
    /// status; the machine already applied it.
    Pressure {
        queue_delay_ms: u64,
        patience_ms: u64,
    },
    /// A command (new, or delivered again). Record its id durably, then call
    /// [`AgentSession::ack_command`]; run it only if the id was new. For a
    /// known id, send its stored result again if it has one.
    Command(Command),
    /// Stop the command if it runs (it ends `Cancelled`).
    CancelCommand { id: CommandId },
    /// The appliance stored the command's result: forget it.
    ResultAcked { id: CommandId },
    /// The appliance stored the command's output below `up_to`.
    OutputAcked { id: CommandId, up_to: u64 },
    /// A chunk of a pushed file. Write it, then [`AgentSession::ack_file`]
    /// up to what is durable. A chunk below what is already written is a
    /// re-send: skip its bytes, ack again.
    FileChunk(FileChunk),
    /// The appliance holds a pulled file's bytes below `up_to`.
    FileAcked { transfer: TransferId, up_to: u64 },
    /// The appliance gave the transfer up.
    FileAborted {
        transfer: TransferId,
        reason: String,
    },
}

/// Why the session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// The appliance closed it, with its reason (retry unless permanent).
    Closed(Close),
    /// The appliance broke the protocol, went silent, or the stream ended:
    /// reconnect after backoff.
    Failed(String),
    /// The agent said Goodbye.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingWelcome { deadline_ms: u64 },
    Established { version: u16 },
    Ended,
}

/// One session of an agent, from Hello to its end.
#[derive(Debug)]
pub struct AgentSession {
    cfg: AgentConfig,
    state: State,
    ended: Option<Ended>,
    outbox: Outbox,
    events: VecDeque<AgentEvent>,
    /// The appliance's frame limit (records frames follow it).
    max_frame: usize,
    /// Highest sequence number acknowledged (or stored before, per Welcome).
    acked: u64,
    /// Next sequence number to send.
    cursor: u64,
    /// Highest sequence number sent.
    sent_up_to: u64,
    /// When the appliance was last heard and how patient to be (the ack
    /// clock; `Pressure` frames extend it).
    ack_clock: AckClock,
    /// Output sent and not acknowledged, per command.
    output: ByteWindow<CommandId>,
    /// Pulled-file bytes sent and not acknowledged, per transfer.
    files_up: ByteWindow<TransferId>,
    /// Pushed-file bytes received and not acknowledged by the host.
    files_down: ByteWindow<TransferId>,
}

/// What [`encode_records`] made of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodedRecords {
    /// A `Records` frame with the first `count` records, up to `last_seq`.
    Frame { last_seq: u64, count: usize },
    /// The first record alone exceeds the limit: it can never be sent.
    Undeliverable { seq: u64, len: usize, max: usize },
}

/// Appends to `out` one `Records` frame holding as many of `records` (from
/// the first) as fit in `max_frame` bytes, halving the batch until it fits.
/// Returns `None` for an empty batch. `out` is untouched unless a frame was
/// written.
pub fn encode_records(
    records: Vec<Record>,
    max_frame: usize,
    out: &mut BytesMut,
) -> Result<Option<EncodedRecords>, FrameError> {
    let Some(first) = records.first().map(|r| r.seq) else {
        return Ok(None);
    };
    let mut frame = AgentFrame::Records(records);
    loop {
        let AgentFrame::Records(records) = &mut frame else {
            unreachable!("the frame is built as Records above")
        };
        let n = records.len();
        let last_seq = records.last().map(|r| r.seq).unwrap_or(first);
        match write_frame(&frame, out, max_frame) {
            Ok(()) => return Ok(Some(EncodedRecords::Frame { last_seq, count: n })),
            // The stored sizes bound the frame, so this is rare; halving
            // keeps the sender going if the encoding ever differs.
            Err(FrameError::Oversize { .. }) if n > 1 => {
                if let AgentFrame::Records(records) = &mut frame {
                    records.truncate(n / 2);
                }
            }
            Err(FrameError::Oversize { len, max }) => {
                return Ok(Some(EncodedRecords::Undeliverable {
                    seq: first,
                    len,
                    max,
                }));
            }
            Err(e) => return Err(e),
        }
    }
}

impl AgentSession {
    /// Starts a session: Hello is the first transmit.
    pub fn new(cfg: AgentConfig, now: u64) -> AgentSession {
        let mut outbox = Outbox::default();
        let hello = AgentFrame::Hello(Hello {
            protocol_version: cfg.protocol_version,
            agent_version: cfg.agent_version.clone(),
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
            metrics_interval_ms: cfg.metrics_interval_ms,
        });
        let mut ended = None;
        let ack_clock = AckClock::new(cfg.ack_timeout_ms, cfg.max_ack_timeout_ms, now);
        if let Err(e) = outbox.push(Flow::Records, &hello, DEFAULT_MAX_FRAME_BYTES) {
            ended = Some(Ended::Failed(format!("encoding Hello: {e}")));
        }
        AgentSession {
            state: if ended.is_some() {
                State::Ended
            } else {
                State::AwaitingWelcome {
                    deadline_ms: now.saturating_add(cfg.welcome_timeout_ms),
                }
            },
            cfg,
            ended,
            outbox,
            events: VecDeque::new(),
            max_frame: DEFAULT_MAX_FRAME_BYTES,
            acked: 0,
            cursor: 0,
            sent_up_to: 0,
            ack_clock,
            output: ByteWindow::new(OUTPUT_WINDOW_BYTES),
            files_up: ByteWindow::new(FILE_WINDOW_BYTES),
            files_down: ByteWindow::new(FILE_WINDOW_BYTES),
        }
    }

    /// Why the session ended, once it has.
    pub fn ended(&self) -> Option<&Ended> {
        self.ended.as_ref()
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// The protocol version both ends speak, once welcomed.
    pub fn protocol_version(&self) -> Option<u16> {
        match self.state {
            State::Established { version } => Some(version),
            _ => None,
        }
    }

    /// Whether the command and file flows are available.
    pub fn has_remote_flows(&self) -> bool {
        self.protocol_version().is_some_and(|v| v >= 2)
    }

    /// Highest sequence number the appliance acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Highest sequence number sent on this session.
    pub fn sent_up_to(&self) -> u64 {
        self.sent_up_to
    }

    /// The appliance's frame limit (after Welcome).
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame
    }

    /// Largest output or file chunk payload the appliance accepts.
    pub fn max_chunk_bytes(&self) -> usize {
        MAX_CHUNK_BYTES.min(self.max_frame.saturating_sub(CHUNK_OVERHEAD_BYTES))
    }

    fn fail(&mut self, message: String) {
        self.end(Ended::Failed(message));
    }

    fn end(&mut self, why: Ended) {
        if self.ended.is_none() {
            self.ended = Some(why);
            self.state = State::Ended;
            self.outbox.clear();
        }
    }

    /// A frame from the appliance on `flow`'s stream.
    pub fn handle_frame(&mut self, flow: Flow, frame: ApplianceFrame, now: u64) {
        if self.ended.is_some() {
            return;
        }
        self.ack_clock.heard(now);
        match (self.state, frame) {
            (_, ApplianceFrame::Close(c)) => self.end(Ended::Closed(c)),
            (State::AwaitingWelcome { .. }, ApplianceFrame::Welcome(w))
                if flow == Flow::Records =>
            {
                let version = w.protocol_version;
                if version > self.cfg.protocol_version || version < MIN_SESSION_PROTOCOL_VERSION {
                    return self.fail(format!(
                        "the appliance answered with protocol {version}; this agent offered {}",
                        self.cfg.protocol_version
                    ));
                }
                let max_frame = w.max_frame_bytes as usize;
                if max_frame < MIN_FRAME_BYTES {
                    return self.fail(format!(
                        "the appliance announced a frame limit of {max_frame} bytes, below the \
                         {MIN_FRAME_BYTES} bytes every appliance accepts; not sending (check its max_frame_bytes)"
                    ));
                }
                self.max_frame = max_frame.min(DEFAULT_MAX_FRAME_BYTES);
                self.acked = w.last_stored_seq;
                self.sent_up_to = w.last_stored_seq;
                self.cursor = w.last_stored_seq.saturating_add(1);
                self.state = State::Established { version };
                if version >= 2 {
                    for flow in [Flow::Commands, Flow::Files] {
                        // A three-byte frame: cannot exceed any limit.
                        let _ = self
                            .outbox
                            .push(flow, &AgentFrame::OpenFlow(flow), self.max_frame);
                    }
                }
                self.events.push_back(AgentEvent::Established {
                    protocol_version: version,
                    last_stored_seq: w.last_stored_seq,
                    max_frame_bytes: self.max_frame,
                });
            }
            (State::AwaitingWelcome { .. }, other) => {
                self.fail(format!("expected Welcome, got {}", frame_kind(&other)))
            }
            (State::Established { .. }, ApplianceFrame::Welcome(_)) => {
                self.fail("protocol violation: second Welcome".into())
            }
            (State::Established { .. }, ApplianceFrame::Ack(a)) if flow == Flow::Records => {
                if a.up_to_seq > self.acked {
                    self.acked = a.up_to_seq;
                    self.events
                        .push_back(AgentEvent::RecordsAcked { up_to: a.up_to_seq });
                }
            }
            (State::Established { version }, ApplianceFrame::Pressure(p))
                if flow == Flow::Records && version >= 3 =>
            {
                self.ack_clock
                    .pressure(u64::from(p.ack_timeout_hint_ms), now);
                self.events.push_back(AgentEvent::Pressure {
                    queue_delay_ms: u64::from(p.queue_delay_ms),
                    patience_ms: self.ack_clock.deadline().saturating_sub(now),
                });
            }
            (State::Established { version }, ApplianceFrame::Command(c))
                if flow == Flow::Commands && version >= 2 =>
            {
                self.on_command(c)
            }
            (State::Established { version }, ApplianceFrame::File(f))
                if flow == Flow::Files && version >= 2 =>
            {
                self.on_file(f)
            }
            (State::Established { .. }, other) => self.fail(format!(
                "protocol violation: {} frame on the {} stream",
                frame_kind(&other),
                flow.label()
            )),
            (State::Ended, _) => {}
        }
    }

    fn on_command(&mut self, c: CommandDown) {
        let ev = match c {
            CommandDown::Command(cmd) => AgentEvent::Command(cmd),
            CommandDown::Cancel { id } => AgentEvent::CancelCommand { id },
            CommandDown::ResultAck { id } => {
                self.output.release(id);
                AgentEvent::ResultAcked { id }
            }
            CommandDown::OutputAck { id, up_to } => {
                self.output.ack(id, up_to);
                AgentEvent::OutputAcked { id, up_to }
            }
        };
        self.events.push_back(ev);
    }

    fn on_file(&mut self, f: FileFrame) {
        if let Err(e) = super::account_file_frame(&mut self.files_down, &mut self.files_up, &f) {
            return self.fail(format!("protocol violation: file flow: {e}"));
        }
        let ev = match f {
            FileFrame::Chunk(chunk) => AgentEvent::FileChunk(chunk),
            FileFrame::Ack { transfer, up_to } => AgentEvent::FileAcked { transfer, up_to },
            FileFrame::Abort { transfer, reason } => AgentEvent::FileAborted { transfer, reason },
        };
        self.events.push_back(ev);
    }

    /// The appliance closed the connection (its QUIC close code and reason).
    pub fn handle_peer_close(&mut self, close: Close) {
        self.end(Ended::Closed(close));
    }

    /// A stream ended or failed without a close from the appliance.
    pub fn handle_stream_end(&mut self, flow: Flow, detail: &str) {
        let msg = match flow {
            Flow::Records if matches!(self.state, State::AwaitingWelcome { .. }) => {
                "session stream ended before Welcome".to_string()
            }
            Flow::Records => "session stream ended".to_string(),
            other => format!("the {} stream ended", other.label()),
        };
        if detail.is_empty() {
            self.fail(msg)
        } else {
            self.fail(format!("{msg}: {detail}"))
        }
    }

    /// A frame from the appliance could not be decoded.
    pub fn handle_malformed(&mut self, flow: Flow, err: &FrameError) {
        self.fail(format!(
            "malformed frame on the {} stream: {err}",
            flow.label()
        ));
    }

    /// When [`AgentSession::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::AwaitingWelcome { deadline_ms } => Some(deadline_ms),
            State::Established { .. } if self.sent_up_to > self.acked => {
                Some(self.ack_clock.deadline())
            }
            _ => None,
        }
    }

    /// Ends the session if a deadline passed.
    pub fn handle_timeout(&mut self, now: u64) {
        match self.state {
            State::AwaitingWelcome { deadline_ms } if now >= deadline_ms => self.fail(format!(
                "no Welcome within {:?}",
                std::time::Duration::from_millis(self.cfg.welcome_timeout_ms)
            )),
            State::Established { .. }
                if self.sent_up_to > self.acked && self.ack_clock.expired(now) =>
            {
                let silent_ms = self.ack_clock.silent_ms(now);
                self.fail(format!(
                    "no acknowledgement for {:.1}s with records in flight; reconnecting",
                    silent_ms as f64 / 1000.0
                ));
            }
            _ => {}
        }
    }

    /// The sequence number to read records from, when the window has room.
    pub fn records_wanted(&self) -> Option<u64> {
        if !self.is_established() {
            return None;
        }
        let in_flight = self.cursor.saturating_sub(self.acked.saturating_add(1));
        (in_flight < self.cfg.max_in_flight_records)
            .then(|| self.cursor.max(self.acked.saturating_add(1)))
    }

    /// Sends the buffered records read from [`AgentSession::records_wanted`]
    /// on: as many as fit one frame (the rest are asked for again). Returns
    /// the last sequence number sent, or `None` (nothing to send, or the
    /// first record is undeliverable: see [`AgentEvent::RecordUndeliverable`]).
    pub fn send_records(&mut self, records: Vec<Record>, now: u64) -> Option<u64> {
        if !self.is_established() {
            return None;
        }
        let mut out = BytesMut::new();
        match encode_records(records, self.max_frame, &mut out) {
            Ok(None) => None,
            Ok(Some(EncodedRecords::Frame { last_seq, .. })) => {
                if self.sent_up_to <= self.acked {
                    // Nothing was in flight: the ack clock starts now.
                    self.ack_clock.started_waiting(now);
                }
                self.sent_up_to = self.sent_up_to.max(last_seq);
                self.cursor = last_seq.saturating_add(1);
                self.outbox.push_encoded(Flow::Records, &out);
                Some(last_seq)
            }
            Ok(Some(EncodedRecords::Undeliverable { seq, len, max })) => {
                self.cursor = seq.saturating_add(1).max(self.cursor);
                self.events
                    .push_back(AgentEvent::RecordUndeliverable { seq, len, max });
                None
            }
            Err(e) => {
                self.fail(format!("encoding records: {e}"));
                None
            }
        }
    }

    /// Says Goodbye: the session ends ([`Ended::Shutdown`]) once the
    /// Goodbye is written.
    pub fn goodbye(&mut self, reason: &str) {
        if self.ended.is_some() {
            return;
        }
        let _ = self.outbox.push(
            Flow::Records,
            &AgentFrame::Goodbye {
                reason: reason.to_string(),
            },
            self.max_frame,
        );
        self.ended = Some(Ended::Shutdown);
        self.state = State::Ended;
    }

    fn command_frame(&mut self, up: CommandUp) -> Result<(), SendError> {
        if !self.has_remote_flows() {
            return Err(SendError::FlowUnavailable(Flow::Commands));
        }
        self.outbox
            .push(Flow::Commands, &AgentFrame::Command(up), self.max_frame)
            .map_err(|e| too_large(e, self.max_frame))
    }

    /// The command's id is recorded durably (new or known): the appliance
    /// stops re-sending it.
    pub fn ack_command(&mut self, id: CommandId) -> Result<(), SendError> {
        self.command_frame(CommandUp::Ack { id })
    }

    /// The command's process started.
    pub fn command_started(&mut self, id: CommandId, started_ms: u64) -> Result<(), SendError> {
        self.command_frame(CommandUp::Started { id, started_ms })
    }

    /// Bytes of output the window takes before it is full.
    pub fn output_room(&self) -> u64 {
        if self.has_remote_flows() {
            self.output.room()
        } else {
            0
        }
    }

    /// A piece of a command's output at `offset` (at most
    /// [`AgentSession::max_chunk_bytes`]). Refused while the output window is
    /// full: offer it again after an [`AgentEvent::OutputAcked`].
    pub fn send_output(
        &mut self,
        id: CommandId,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<(), SendError> {
        if !self.has_remote_flows() {
            return Err(SendError::FlowUnavailable(Flow::Commands));
        }
        if !self.output.has_room() {
            return Err(SendError::WindowFull(Flow::Commands));
        }
        let max = self.max_chunk_bytes();
        if bytes.len() > max {
            return Err(SendError::TooLarge {
                len: bytes.len(),
                max,
            });
        }
        let len = bytes.len() as u64;
        self.command_frame(CommandUp::Output(CommandOutput { id, offset, bytes }))?;
        // Cannot fail: a send-side window has no key limit worth refusing on.
        let _ = self.output.note(id, offset, len);
        Ok(())
    }

    /// The command's result: sent until [`AgentEvent::ResultAcked`] (the
    /// host re-sends it after reconnects).
    pub fn send_result(&mut self, result: CommandResult) -> Result<(), SendError> {
        self.command_frame(CommandUp::Result(result))
    }

    fn file_frame(&mut self, f: FileFrame) -> Result<(), SendError> {
        if !self.has_remote_flows() {
            return Err(SendError::FlowUnavailable(Flow::Files));
        }
        self.outbox
            .push(Flow::Files, &AgentFrame::File(f), self.max_frame)
            .map_err(|e| too_large(e, self.max_frame))
    }

    /// Bytes of pulled-file chunks the window takes before it is full.
    pub fn file_room(&self) -> u64 {
        if self.has_remote_flows() {
            self.files_up.room()
        } else {
            0
        }
    }

    /// A chunk of a pulled file (at most [`AgentSession::max_chunk_bytes`]).
    /// Refused while the file window is full.
    pub fn send_file_chunk(&mut self, chunk: FileChunk) -> Result<(), SendError> {
        if !self.has_remote_flows() {
            return Err(SendError::FlowUnavailable(Flow::Files));
        }
        if !self.files_up.has_room() {
            return Err(SendError::WindowFull(Flow::Files));
        }
        let max = self.max_chunk_bytes();
        if chunk.bytes.len() > max {
            return Err(SendError::TooLarge {
                len: chunk.bytes.len(),
                max,
            });
        }
        let (t, off, len) = (chunk.transfer, chunk.offset, chunk.bytes.len() as u64);
        self.file_frame(FileFrame::Chunk(chunk))?;
        let _ = self.files_up.note(t, off, len);
        Ok(())
    }

    /// A pushed file's bytes below `up_to` are durable here.
    pub fn ack_file(&mut self, transfer: TransferId, up_to: u64) -> Result<(), SendError> {
        self.files_down.ack(transfer, up_to);
        self.file_frame(FileFrame::Ack { transfer, up_to })
    }

    /// Gives a transfer up (either direction).
    pub fn abort_file(&mut self, transfer: TransferId, reason: &str) -> Result<(), SendError> {
        self.files_up.release(transfer);
        self.files_down.release(transfer);
        self.file_frame(FileFrame::Abort {
            transfer,
            reason: reason.to_string(),
        })
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

    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }
}

fn too_large(e: FrameError, max: usize) -> SendError {
    match e {
        FrameError::Oversize { len, max } => SendError::TooLarge { len, max },
        _ => SendError::TooLarge { len: 0, max },
    }
}

/// A frame's kind, for messages (never its content).
pub(crate) fn frame_kind(f: &ApplianceFrame) -> &'static str {
    match f {
        ApplianceFrame::Welcome(_) => "Welcome",
        ApplianceFrame::Ack(_) => "Ack",
        ApplianceFrame::Close(_) => "Close",
        ApplianceFrame::Command(_) => "Command",
        ApplianceFrame::File(_) => "File",
        ApplianceFrame::Pressure(_) => "Pressure",
    }
}
