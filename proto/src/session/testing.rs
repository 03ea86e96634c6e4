//! A test harness: both ends of a device session wired together with no
//! sockets and an explicit clock ([`Pair`]), and in-memory hosts that keep
//! a "durable" side which survives crashes ([`MemAgent`], [`MemAppliance`]).
//!
//! The network is one FIFO queue of whole frames per flow and direction:
//! QUIC streams are reliable and ordered, so within a flow frames keep their
//! order; across flows they are delivered in any order the test chooses.
//! A connection cut loses every frame in flight. Available to other crates'
//! tests with the `testing` feature.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};

use super::agent::{AgentConfig, AgentEvent, AgentSession};
use super::appliance::{ApplianceConfig, ApplianceEvent, ApplianceSession};
use super::{Flow, SendError, flow_index};
use crate::frame::{decode_payload, split_frame};
use crate::ids::{CommandId, TransferId};
use crate::messages::{
    AgentFrame, ApplianceFrame, Close, CloseReason, Command, CommandOutcome, CommandResult,
    FileChunk, Heartbeat, Record, RecordBody,
};
use crate::{DEFAULT_MAX_FRAME_BYTES, DeviceId};

/// The agent's side of a test: its buffer and command ledger.
pub trait AgentHost {
    /// Buffered records from `from` on (at most `max`).
    fn records_from(&mut self, from: u64, max: usize) -> Vec<Record>;
    fn on_event(&mut self, s: &mut AgentSession, ev: AgentEvent, now: u64);
    /// Called after events: offer what waits (output, results, chunks).
    fn pump(&mut self, _s: &mut AgentSession, _now: u64) {}
}

/// The appliance's side of a test: its store and command queue.
pub trait ApplianceHost {
    fn on_event(&mut self, s: &mut ApplianceSession, ev: ApplianceEvent, now: u64);
    /// Called after events: commit, offer what waits.
    fn pump(&mut self, _s: &mut ApplianceSession, _now: u64) {}
}

/// Both ends of one connection, the frames between them and the clock.
#[derive(Debug)]
pub struct Pair {
    pub agent: AgentSession,
    pub appliance: ApplianceSession,
    /// Milliseconds of the test's monotonic clock.
    pub clock: u64,
    /// Frames in flight from the agent, per flow.
    pub up: [VecDeque<Bytes>; 3],
    /// Frames in flight from the appliance, per flow.
    pub down: [VecDeque<Bytes>; 3],
    /// Flows whose frames are not delivered (a receiver that stopped reading).
    pub stalled: BTreeSet<Flow>,
    agent_cfg: AgentConfig,
    appliance_cfg: ApplianceConfig,
    /// The agent saw the appliance's close.
    close_propagated: bool,
}

/// A device id for tests.
pub const TEST_DEVICE: DeviceId = DeviceId(0x00d0_0d00_0000_0001);

/// An agent configuration for tests (the newest protocol, small windows).
pub fn agent_config() -> AgentConfig {
    AgentConfig {
        max_in_flight_records: 64,
        ..AgentConfig::new("test")
    }
}

/// An appliance configuration for tests.
pub fn appliance_config() -> ApplianceConfig {
    ApplianceConfig {
        device: TEST_DEVICE,
        max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        hello_timeout_ms: 10_000,
    }
}

fn split_into(queue: &mut VecDeque<Bytes>, data: Bytes) {
    let mut buf = BytesMut::from(&data[..]);
    while let Ok(Some(payload)) = split_frame(&mut buf, usize::MAX >> 1) {
        queue.push_back(payload.freeze());
    }
}

impl Pair {
    /// Both ends at clock 0; the agent's Hello is in flight.
    pub fn new(agent_cfg: AgentConfig, appliance_cfg: ApplianceConfig) -> Pair {
        let mut p = Pair {
            agent: AgentSession::new(agent_cfg.clone(), 0),
            appliance: ApplianceSession::new(appliance_cfg.clone(), 0),
            clock: 0,
            up: Default::default(),
            down: Default::default(),
            stalled: BTreeSet::new(),
            agent_cfg,
            appliance_cfg,
            close_propagated: false,
        };
        p.transmit();
        p
    }

    /// The default test configurations.
    pub fn default_pair() -> Pair {
        Pair::new(agent_config(), appliance_config())
    }

    /// Loses the connection: every frame in flight is gone, both ends start
    /// a new session at the current clock (the hosts keep their state).
    pub fn reconnect(&mut self) {
        self.agent = AgentSession::new(self.agent_cfg.clone(), self.clock);
        self.appliance = ApplianceSession::new(self.appliance_cfg.clone(), self.clock);
        for q in self.up.iter_mut().chain(self.down.iter_mut()) {
            q.clear();
        }
        self.close_propagated = false;
        self.transmit();
    }

    /// Changes the configurations used from the next [`Pair::reconnect`].
    pub fn set_configs(&mut self, agent: AgentConfig, appliance: ApplianceConfig) {
        self.agent_cfg = agent;
        self.appliance_cfg = appliance;
    }

    /// Moves everything both ends want to send into the network; passes an
    /// appliance close to the agent (as QUIC's close code would).
    pub fn transmit(&mut self) {
        while let Some(t) = self.agent.poll_transmit() {
            split_into(&mut self.up[flow_index(t.flow)], t.data);
        }
        while let Some(t) = self.appliance.poll_transmit() {
            split_into(&mut self.down[flow_index(t.flow)], t.data);
        }
        if let Some((reason, message)) = self.appliance.close_reason()
            && !self.close_propagated
        {
            self.close_propagated = true;
            let close = Close {
                reason,
                message: message.to_string(),
            };
            self.agent.handle_peer_close(close);
        }
    }

    /// Delivers the next frame the agent sent on `flow`; returns it.
    pub fn deliver_up(&mut self, flow: Flow) -> Option<AgentFrame> {
        let payload = self.up[flow_index(flow)].pop_front()?;
        Some(self.handle_up(flow, &payload))
    }

    fn handle_up(&mut self, flow: Flow, payload: &[u8]) -> AgentFrame {
        let frame: AgentFrame = decode_payload(payload).expect("the agent sends valid frames");
        match &frame {
            AgentFrame::OpenFlow(f) if *f == flow && flow != Flow::Records => {
                self.appliance.handle_open_flow(*f, self.clock)
            }
            _ => self.appliance.handle_frame(flow, frame.clone(), self.clock),
        }
        frame
    }

    /// Delivers the next frame the appliance sent on `flow`; returns it.
    pub fn deliver_down(&mut self, flow: Flow) -> Option<ApplianceFrame> {
        let payload = self.down[flow_index(flow)].pop_front()?;
        let frame: ApplianceFrame =
            decode_payload(&payload).expect("the appliance sends valid frames");
        self.agent.handle_frame(flow, frame.clone(), self.clock);
        Some(frame)
    }

    /// Delivers the next frame on `flow` in direction `up` twice.
    pub fn duplicate(&mut self, up: bool, flow: Flow) {
        let q = if up {
            &mut self.up[flow_index(flow)]
        } else {
            &mut self.down[flow_index(flow)]
        };
        if let Some(f) = q.front().cloned() {
            q.push_front(f);
        }
    }

    /// Frames in flight, both directions.
    pub fn frames_in_flight(&self) -> usize {
        self.up
            .iter()
            .chain(self.down.iter())
            .map(VecDeque::len)
            .sum()
    }

    /// Moves the clock and lets both ends act on their deadlines.
    pub fn advance(&mut self, ms: u64) {
        self.clock += ms;
        self.agent.handle_timeout(self.clock);
        self.appliance.handle_timeout(self.clock);
        self.transmit();
    }

    /// Whether either end is over (the connection would close).
    pub fn is_over(&self) -> bool {
        self.agent.ended().is_some() || self.appliance.is_closed()
    }

    /// Lets both hosts act on their events and offers, and sends the result.
    pub fn pump(&mut self, a: &mut dyn AgentHost, b: &mut dyn ApplianceHost) {
        loop {
            while let Some(ev) = self.agent.poll_event() {
                a.on_event(&mut self.agent, ev, self.clock);
            }
            while let Some(from) = self.agent.records_wanted() {
                let batch = a.records_from(from, 512);
                if batch.is_empty() {
                    break;
                }
                self.agent.send_records(batch, self.clock);
                while let Some(ev) = self.agent.poll_event() {
                    a.on_event(&mut self.agent, ev, self.clock);
                }
            }
            a.pump(&mut self.agent, self.clock);
            while let Some(ev) = self.appliance.poll_event() {
                b.on_event(&mut self.appliance, ev, self.clock);
            }
            b.pump(&mut self.appliance, self.clock);
            if !self.agent.events_pending() && !self.appliance.events_pending() {
                break;
            }
        }
        self.transmit();
    }

    /// Delivers every frame on unstalled flows (in flow order, one frame
    /// per flow per round) and pumps both hosts, until nothing moves.
    pub fn run(&mut self, a: &mut dyn AgentHost, b: &mut dyn ApplianceHost) {
        for _ in 0..100_000 {
            self.pump(a, b);
            let mut delivered = false;
            for flow in Flow::ALL {
                if self.stalled.contains(&flow) {
                    continue;
                }
                if self.deliver_up(flow).is_some() {
                    delivered = true;
                }
                if self.deliver_down(flow).is_some() {
                    delivered = true;
                }
            }
            if !delivered {
                self.pump(a, b);
                if (0..3).all(|i| {
                    self.stalled.contains(&Flow::ALL[i])
                        || (self.up[i].is_empty() && self.down[i].is_empty())
                }) {
                    return;
                }
            }
        }
        panic!("the pair did not settle in 100,000 rounds");
    }
}

// ---------------------------------------------------------------------------
// In-memory hosts with a durable side.

/// A heartbeat record.
pub fn heartbeat(seq: u64) -> Record {
    Record {
        seq,
        ts_ms: 1_700_000_000_000 + seq,
        body: RecordBody::Heartbeat(Heartbeat {
            uptime_s: seq,
            buffered_records: 0,
            dropped_records: 0,
        }),
    }
}

/// A command as the in-memory agent keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCommandState {
    /// Recorded, not started.
    Received,
    Running,
    Done,
}

/// The agent's ledger entry (durable).
#[derive(Debug, Clone)]
pub struct AgentCommand {
    pub spec: Vec<u8>,
    pub state: AgentCommandState,
    /// Output produced so far (durable: a real agent spools it).
    pub output: Vec<u8>,
    /// Output the appliance acknowledged.
    pub output_acked: u64,
    pub result: Option<CommandResult>,
    /// The appliance acknowledged the result.
    pub reported: bool,
}

/// An incoming (pushed) file on the agent (durable).
#[derive(Debug, Clone, Default)]
pub struct IncomingFile {
    pub bytes: Vec<u8>,
    pub complete: bool,
}

/// The agent's host: a record buffer, a command ledger that survives
/// crashes, and commands that run until [`MemAgent::finish_all`].
#[derive(Debug, Default)]
pub struct MemAgent {
    // --- durable ---
    pub buffer: BTreeMap<u64, Record>,
    pub next_seq: u64,
    /// Highest sequence number the appliance acknowledged (deleted up to).
    pub acked: u64,
    /// Records dropped as undeliverable.
    pub dropped: BTreeSet<u64>,
    pub ledger: BTreeMap<CommandId, AgentCommand>,
    /// How many times each command's process was started (the side effect).
    pub executions: BTreeMap<CommandId, u32>,
    pub incoming: BTreeMap<TransferId, IncomingFile>,
    /// Acks of pushed files are held back (a writer that stopped).
    pub hold_file_acks: bool,
    // --- volatile (per session) ---
    /// Output offset sent per command on this session.
    sent_output: BTreeMap<CommandId, u64>,
    /// Results sent on this session.
    sent_results: BTreeSet<CommandId>,
    /// Cancels received for commands not finished yet.
    cancelled: BTreeSet<CommandId>,
}

impl MemAgent {
    pub fn new() -> MemAgent {
        MemAgent {
            next_seq: 1,
            ..MemAgent::default()
        }
    }

    /// Buffers a heartbeat; returns its sequence number.
    pub fn record(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.buffer.insert(seq, heartbeat(seq));
        seq
    }

    /// Buffers a record of the given body size (bytes of hostname).
    pub fn record_sized(&mut self, bytes: usize) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.buffer.insert(
            seq,
            Record {
                seq,
                ts_ms: 1,
                body: RecordBody::Inventory(Box::new(crate::messages::Inventory {
                    hostname: "h".repeat(bytes),
                    ..Default::default()
                })),
            },
        );
        seq
    }

    /// The process died: what only lived in memory is gone, and a command
    /// that was running is `Interrupted` (never re-run).
    pub fn crash(&mut self) {
        self.session_down();
        for c in self.ledger.values_mut() {
            if c.state != AgentCommandState::Done {
                c.state = AgentCommandState::Done;
                c.result = Some(CommandResult {
                    id: CommandId([0; 16]),
                    outcome: CommandOutcome::Interrupted,
                    output_bytes: c.output.len() as u64,
                    finished_ms: 0,
                });
            }
        }
        for (id, c) in self.ledger.iter_mut() {
            if let Some(r) = &mut c.result {
                r.id = *id;
            }
        }
    }

    /// The session is gone (what was sent on it may be lost).
    pub fn session_down(&mut self) {
        self.sent_output.clear();
        self.sent_results.clear();
        self.cancelled.clear();
    }

    /// Every running command finishes (exit 0, or `Cancelled`).
    pub fn finish_all(&mut self, now: u64) {
        for (id, c) in self.ledger.iter_mut() {
            if c.state == AgentCommandState::Running {
                c.output.extend_from_slice(b" done");
                c.state = AgentCommandState::Done;
                let outcome = if self.cancelled.contains(id) {
                    CommandOutcome::Cancelled
                } else {
                    CommandOutcome::Exited { code: 0 }
                };
                c.result = Some(CommandResult {
                    id: *id,
                    outcome,
                    output_bytes: c.output.len() as u64,
                    finished_ms: now,
                });
            }
        }
    }

    /// Ids whose process started more than once (must stay empty).
    pub fn executed_twice(&self) -> Vec<CommandId> {
        self.executions
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| *id)
            .collect()
    }
}

impl AgentHost for MemAgent {
    fn records_from(&mut self, from: u64, max: usize) -> Vec<Record> {
        self.buffer
            .range(from..)
            .take(max)
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn on_event(&mut self, s: &mut AgentSession, ev: AgentEvent, now: u64) {
        match ev {
            AgentEvent::Established {
                last_stored_seq,
                protocol_version,
                ..
            } => {
                self.session_down();
                self.acked = self.acked.max(last_stored_seq);
                self.buffer = self.buffer.split_off(&(self.acked + 1));
                self.next_seq = self.next_seq.max(last_stored_seq + 1);
                if protocol_version >= 2 {
                    // Resume pushed files where they stand.
                    for (t, f) in &self.incoming {
                        if !f.complete && !self.hold_file_acks {
                            let _ = s.ack_file(*t, f.bytes.len() as u64);
                        }
                    }
                }
            }
            AgentEvent::RecordsAcked { up_to } => {
                self.acked = self.acked.max(up_to);
                self.buffer = self.buffer.split_off(&(self.acked + 1));
            }
            AgentEvent::RecordUndeliverable { seq, .. } => {
                self.buffer.remove(&seq);
                self.dropped.insert(seq);
            }
            AgentEvent::Command(cmd) => {
                let known = self.ledger.contains_key(&cmd.id);
                if !known {
                    // Durable before anything else.
                    self.ledger.insert(
                        cmd.id,
                        AgentCommand {
                            spec: cmd.spec.clone(),
                            state: AgentCommandState::Received,
                            output: Vec::new(),
                            output_acked: 0,
                            result: None,
                            reported: false,
                        },
                    );
                }
                let _ = s.ack_command(cmd.id);
                if !known {
                    let c = self.ledger.get_mut(&cmd.id).expect("just inserted");
                    c.state = AgentCommandState::Running;
                    *self.executions.entry(cmd.id).or_default() += 1;
                    c.output.extend_from_slice(&cmd.spec);
                    let _ = s.command_started(cmd.id, now);
                }
            }
            AgentEvent::CancelCommand { id } => {
                if self
                    .ledger
                    .get(&id)
                    .is_some_and(|c| c.state != AgentCommandState::Done)
                {
                    self.cancelled.insert(id);
                }
            }
            AgentEvent::ResultAcked { id } => {
                if let Some(c) = self.ledger.get_mut(&id) {
                    c.reported = true;
                }
            }
            AgentEvent::OutputAcked { id, up_to } => {
                if let Some(c) = self.ledger.get_mut(&id) {
                    c.output_acked = c.output_acked.max(up_to);
                }
            }
            AgentEvent::FileChunk(chunk) => {
                let f = self.incoming.entry(chunk.transfer).or_default();
                let have = f.bytes.len() as u64;
                let end = chunk.offset + chunk.bytes.len() as u64;
                if chunk.offset <= have && end > have {
                    f.bytes
                        .extend_from_slice(&chunk.bytes[(have - chunk.offset) as usize..]);
                }
                if chunk.last && end <= f.bytes.len() as u64 {
                    f.complete = true;
                }
                if !self.hold_file_acks {
                    let _ = s.ack_file(chunk.transfer, f.bytes.len() as u64);
                }
            }
            AgentEvent::FileAcked { .. }
            | AgentEvent::FileAborted { .. }
            | AgentEvent::Pressure { .. } => {}
        }
    }

    fn pump(&mut self, s: &mut AgentSession, _now: u64) {
        if !s.has_remote_flows() {
            return;
        }
        let max = s.max_chunk_bytes().max(1);
        for (id, c) in self.ledger.iter() {
            if c.reported {
                continue;
            }
            let sent = self.sent_output.entry(*id).or_insert(c.output_acked);
            while (*sent as usize) < c.output.len() && s.output_room() > 0 {
                let end = (*sent as usize + max).min(c.output.len());
                match s.send_output(*id, *sent, c.output[*sent as usize..end].to_vec()) {
                    Ok(()) => *sent = end as u64,
                    Err(_) => break,
                }
            }
            let all_sent = *sent as usize >= c.output.len();
            if let Some(r) = &c.result
                && all_sent
                && !self.sent_results.contains(id)
                && s.send_result(r.clone()).is_ok()
            {
                self.sent_results.insert(*id);
            }
        }
    }
}

/// A command as the in-memory appliance keeps it (durable).
#[derive(Debug, Clone)]
pub struct ApplianceCommand {
    pub spec: Vec<u8>,
    /// The agent acknowledged it (recorded it).
    pub acked: bool,
    pub started: bool,
    pub result: Option<CommandResult>,
    /// How many times a result was stored for it (must end at exactly 1).
    pub result_stores: u32,
    pub output: Vec<u8>,
    /// Cancel requested.
    pub cancel: bool,
}

/// An outgoing (pushed) file on the appliance.
#[derive(Debug, Clone)]
pub struct OutgoingFile {
    pub bytes: Vec<u8>,
    /// The agent acknowledged up to here (durable).
    pub acked: u64,
    /// Sent up to here on this session (volatile).
    pub sent: u64,
}

/// The appliance's host: a record store deduping by sequence number, a
/// writer that commits when told (or at once with `auto_commit`), and a
/// command queue re-sent on every session until acknowledged.
#[derive(Debug, Default)]
pub struct MemAppliance {
    // --- durable ---
    /// Stored records and how many times each was stored.
    pub stored: BTreeMap<u64, (Record, u32)>,
    pub hwm: u64,
    pub commands: BTreeMap<CommandId, ApplianceCommand>,
    pub outgoing: BTreeMap<TransferId, OutgoingFile>,
    // --- volatile ---
    /// Records handed to the writer and not committed.
    pub pending: Vec<Record>,
    /// Commit as soon as records arrive.
    pub auto_commit: bool,
    /// Frames the session refused (the host's view of `SendError`s).
    pub refused: Vec<SendError>,
}

impl MemAppliance {
    pub fn new() -> MemAppliance {
        MemAppliance {
            auto_commit: true,
            ..MemAppliance::default()
        }
    }

    /// The writer commits what it holds and acks the session.
    pub fn commit(&mut self, s: &mut ApplianceSession) {
        for r in self.pending.drain(..) {
            if r.seq > self.hwm {
                self.hwm = r.seq;
                self.stored.entry(r.seq).or_insert((r, 0)).1 += 1;
            }
        }
        s.records_durable(self.hwm);
    }

    /// The process died: uncommitted records are gone.
    pub fn crash(&mut self) {
        self.pending.clear();
        self.session_down();
    }

    /// The session is gone.
    pub fn session_down(&mut self) {
        for f in self.outgoing.values_mut() {
            f.sent = f.acked;
        }
    }

    /// Queues a command (durably) and offers it to the session.
    pub fn queue_command(&mut self, s: &mut ApplianceSession, id: CommandId, spec: &[u8]) {
        self.commands.insert(
            id,
            ApplianceCommand {
                spec: spec.to_vec(),
                acked: false,
                started: false,
                result: None,
                result_stores: 0,
                output: Vec::new(),
                cancel: false,
            },
        );
        if let Err(e) = s.send_command(Command {
            id,
            spec: spec.to_vec(),
        }) && s.has_remote_flows()
        {
            self.refused.push(e);
        }
    }

    /// Queues a file to push.
    pub fn push_file(&mut self, transfer: TransferId, bytes: Vec<u8>) {
        self.outgoing.insert(
            transfer,
            OutgoingFile {
                bytes,
                acked: 0,
                sent: 0,
            },
        );
    }
}

impl ApplianceHost for MemAppliance {
    fn on_event(&mut self, s: &mut ApplianceSession, ev: ApplianceEvent, _now: u64) {
        match ev {
            ApplianceEvent::Hello(_) => {
                s.accept(self.hwm);
                self.session_down();
                for (id, c) in &self.commands {
                    if !c.acked {
                        let _ = s.send_command(Command {
                            id: *id,
                            spec: c.spec.clone(),
                        });
                    }
                }
            }
            ApplianceEvent::Records(rs) => self.pending.extend(rs),
            ApplianceEvent::Goodbye { .. } => {}
            ApplianceEvent::CommandAcked { id } => {
                if let Some(c) = self.commands.get_mut(&id) {
                    c.acked = true;
                }
            }
            ApplianceEvent::CommandStarted { id, .. } => {
                if let Some(c) = self.commands.get_mut(&id) {
                    c.started = true;
                }
            }
            ApplianceEvent::Output(o) => {
                if let Some(c) = self.commands.get_mut(&o.id) {
                    let have = c.output.len() as u64;
                    let end = o.offset + o.bytes.len() as u64;
                    if o.offset <= have && end > have {
                        c.output
                            .extend_from_slice(&o.bytes[(have - o.offset) as usize..]);
                    }
                    let up_to = c.output.len() as u64;
                    let _ = s.ack_output(o.id, up_to);
                }
            }
            ApplianceEvent::Result(r) => {
                if let Some(c) = self.commands.get_mut(&r.id) {
                    if c.result.is_none() {
                        c.result = Some(r.clone());
                        c.result_stores += 1;
                    }
                    let _ = s.ack_result(r.id);
                }
            }
            ApplianceEvent::FileChunk(_) | ApplianceEvent::CommandWithdrawn { .. } => {}
            ApplianceEvent::FileAcked { transfer, up_to } => {
                if let Some(f) = self.outgoing.get_mut(&transfer) {
                    // After a reconnect the agent's ack says where to resume.
                    f.acked = f.acked.max(up_to.min(f.bytes.len() as u64));
                    f.sent = f.sent.max(f.acked);
                }
            }
            ApplianceEvent::FileAborted { .. } => {}
        }
    }

    fn pump(&mut self, s: &mut ApplianceSession, _now: u64) {
        if self.auto_commit && !self.pending.is_empty() {
            self.commit(s);
        }
        let max = s.max_chunk_bytes().min(16 * 1024);
        for (t, f) in self.outgoing.iter_mut() {
            while f.sent < f.bytes.len() as u64 && s.file_room() > 0 {
                let start = f.sent as usize;
                let end = (start + max).min(f.bytes.len());
                let chunk = FileChunk {
                    transfer: *t,
                    offset: f.sent,
                    bytes: f.bytes[start..end].to_vec(),
                    last: end == f.bytes.len(),
                };
                match s.send_file_chunk(chunk) {
                    Ok(()) => f.sent = end as u64,
                    Err(_) => break,
                }
            }
        }
    }
}

/// The close an appliance sent, as the agent sees it.
pub fn close_of(p: &Pair) -> Option<(CloseReason, String)> {
    p.appliance.close_reason().map(|(r, m)| (r, m.to_string()))
}
