//! Model-based test of the whole session: random sequences of traffic and
//! faults (frames dropped by connection cuts, duplicated, delivered across
//! flows in any order, crashes of either end that keep only the durable
//! side, clock jumps that fire timeouts, a stalled file flow) against the
//! two machines and the in-memory hosts of [`super::testing`].
//!
//! Checked after every step: no record is stored twice; every record the
//! agent saw acknowledged is stored; no command is started twice; no result
//! is stored twice. Checked once the faults stop and the pair settles: every
//! record is stored once, every command ran once and its result is stored
//! exactly once, every pushed file arrived whole. And while the file flow is
//! stalled, records are still acknowledged.

use proptest::prelude::*;

use super::testing::*;
use super::{FILE_WINDOW_BYTES, Flow};
use crate::ids::{CommandId, TransferId};

#[derive(Debug, Clone)]
enum Action {
    /// The agent buffers `n` records.
    Records(u8),
    /// The appliance queues a command.
    QueueCommand,
    /// The appliance pushes a file of this many KiB.
    PushFile(u16),
    /// One frame of one flow arrives (flows interleave in any order).
    Deliver {
        up: bool,
        flow: usize,
    },
    /// The next frame of a flow arrives twice.
    Duplicate {
        up: bool,
        flow: usize,
    },
    /// Both hosts act on what they have.
    Pump,
    /// The appliance's writer commits.
    Commit,
    /// The agent's running commands finish.
    Finish,
    /// The clock jumps (timeouts may fire).
    Advance(u32),
    /// The connection is cut: frames in flight are lost.
    Cut,
    CrashAgent,
    CrashAppliance,
    /// The agent stops (or resumes) reading its file stream.
    StallFiles(bool),
    /// While the file flow is stalled, a new record is acknowledged.
    ProbeRecordsWhileFilesStall,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (1u8..20).prop_map(Action::Records),
        2 => Just(Action::QueueCommand),
        1 => (1u16..1200).prop_map(Action::PushFile),
        12 => (any::<bool>(), 0usize..3).prop_map(|(up, flow)| Action::Deliver { up, flow }),
        1 => (any::<bool>(), 0usize..3).prop_map(|(up, flow)| Action::Duplicate { up, flow }),
        6 => Just(Action::Pump),
        3 => Just(Action::Commit),
        2 => Just(Action::Finish),
        1 => (0u32..20_000).prop_map(Action::Advance),
        1 => Just(Action::Cut),
        1 => Just(Action::CrashAgent),
        1 => Just(Action::CrashAppliance),
        1 => any::<bool>().prop_map(Action::StallFiles),
        1 => Just(Action::ProbeRecordsWhileFilesStall),
    ]
}

struct World {
    p: Pair,
    a: MemAgent,
    b: MemAppliance,
    next_command: u64,
    /// Pushed files and their content.
    files: Vec<(TransferId, Vec<u8>)>,
}

impl World {
    fn new() -> World {
        let mut b = MemAppliance::new();
        b.auto_commit = false;
        World {
            p: Pair::default_pair(),
            a: MemAgent::new(),
            b,
            next_command: 0,
            files: Vec::new(),
        }
    }

    fn reconnect(&mut self) {
        self.a.session_down();
        self.b.session_down();
        self.p.reconnect();
    }

    fn step(&mut self, act: &Action) {
        let World { p, a, b, .. } = self;
        match act {
            Action::Records(n) => {
                for _ in 0..*n {
                    a.record();
                }
            }
            Action::QueueCommand => {
                self.next_command += 1;
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&self.next_command.to_be_bytes());
                let spec = format!("cmd {}", self.next_command);
                b.queue_command(&mut p.appliance, CommandId(id), spec.as_bytes());
            }
            Action::PushFile(kib) => {
                let t = TransferId([self.files.len() as u8 + 1; 16]);
                let data: Vec<u8> = (0..*kib as usize * 1024).map(|i| (i % 251) as u8).collect();
                b.push_file(t, data.clone());
                self.files.push((t, data));
            }
            Action::Deliver { up, flow } => {
                let flow = Flow::ALL[*flow];
                if !p.stalled.contains(&flow) || *up {
                    if *up {
                        p.deliver_up(flow);
                    } else {
                        p.deliver_down(flow);
                    }
                }
            }
            Action::Duplicate { up, flow } => p.duplicate(*up, Flow::ALL[*flow]),
            Action::Pump => p.pump(a, b),
            Action::Commit => {
                b.commit(&mut p.appliance);
                p.transmit();
            }
            Action::Finish => a.finish_all(p.clock),
            Action::Advance(ms) => p.advance(u64::from(*ms)),
            Action::Cut => self.reconnect(),
            Action::CrashAgent => {
                a.crash();
                self.reconnect();
            }
            Action::CrashAppliance => {
                b.crash();
                self.reconnect();
            }
            Action::StallFiles(on) => {
                if *on {
                    p.stalled.insert(Flow::Files);
                } else {
                    p.stalled.remove(&Flow::Files);
                }
            }
            Action::ProbeRecordsWhileFilesStall => self.probe(),
        }
        self.p.transmit();
        if self.p.is_over() {
            self.reconnect();
        }
    }

    /// With the file flow stalled (and a file filling it), a new record is
    /// still acknowledged.
    fn probe(&mut self) {
        let stalled_before = self.p.stalled.contains(&Flow::Files);
        self.p.stalled.insert(Flow::Files);
        if self.files.is_empty() {
            let t = TransferId([0xee; 16]);
            let data = vec![1u8; FILE_WINDOW_BYTES as usize + 64 * 1024];
            self.b.push_file(t, data.clone());
            self.files.push((t, data));
        }
        let seq = self.a.record();
        for _ in 0..50 {
            if self.p.is_over() {
                self.reconnect();
            }
            self.p.run(&mut self.a, &mut self.b);
            self.b.commit(&mut self.p.appliance);
            self.p.transmit();
            if self.a.acked >= seq {
                break;
            }
        }
        assert!(
            self.a.acked >= seq,
            "record {seq} not acknowledged while the file flow is stalled (acked {})",
            self.a.acked
        );
        if !stalled_before {
            self.p.stalled.remove(&Flow::Files);
        }
    }

    fn check_invariants(&self) {
        for (seq, (_, n)) in &self.b.stored {
            assert_eq!(*n, 1, "record {seq} stored {n} times");
        }
        for seq in 1..=self.a.acked {
            assert!(
                self.b.stored.contains_key(&seq) || self.a.dropped.contains(&seq),
                "record {seq} acknowledged but not stored"
            );
        }
        assert!(
            self.a.executed_twice().is_empty(),
            "commands started twice: {:?}",
            self.a.executed_twice()
        );
        for (id, c) in &self.b.commands {
            assert!(
                c.result_stores <= 1,
                "{id}: result stored {} times",
                c.result_stores
            );
        }
    }

    /// Faults stop: the pair runs (reconnecting when a session ended) until
    /// everything is delivered.
    fn settle(&mut self) {
        self.p.stalled.clear();
        for _ in 0..200 {
            if self.p.is_over() {
                self.reconnect();
            }
            self.p.run(&mut self.a, &mut self.b);
            self.b.commit(&mut self.p.appliance);
            self.a.finish_all(self.p.clock);
            self.p.transmit();
            self.p.run(&mut self.a, &mut self.b);
            let done = !self.p.is_over()
                && self.a.buffer.is_empty()
                && self.b.pending.is_empty()
                && self.b.commands.values().all(|c| c.result.is_some())
                && self.a.ledger.values().all(|c| c.reported)
                && self
                    .files
                    .iter()
                    .all(|(t, _)| self.a.incoming.get(t).is_some_and(|f| f.complete));
            if done {
                return;
            }
        }
        panic!(
            "the pair did not settle: buffer {}, pending {}, commands without result {}, unreported {}",
            self.a.buffer.len(),
            self.b.pending.len(),
            self.b
                .commands
                .values()
                .filter(|c| c.result.is_none())
                .count(),
            self.a.ledger.values().filter(|c| !c.reported).count()
        );
    }

    fn check_final(&self) {
        self.check_invariants();
        let generated = self.a.next_seq - 1;
        for seq in 1..=generated {
            assert!(
                self.b.stored.contains_key(&seq) || self.a.dropped.contains(&seq),
                "record {seq} never stored"
            );
        }
        for (id, c) in &self.b.commands {
            assert_eq!(
                c.result_stores, 1,
                "{id}: result stored {} times",
                c.result_stores
            );
            assert!(
                self.a.executions.get(id).copied().unwrap_or(0) <= 1,
                "{id} started twice"
            );
        }
        for (t, data) in &self.files {
            let f = &self.a.incoming[t];
            assert!(f.complete);
            assert_eq!(&f.bytes, data, "pushed file {t} arrived different");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn faults_never_lose_an_acked_record_nor_run_a_command_twice_and_every_result_is_reported_once(
        actions in proptest::collection::vec(action(), 0..120)
    ) {
        let mut w = World::new();
        for act in &actions {
            w.step(act);
            w.check_invariants();
        }
        w.settle();
        w.check_final();
    }
}

#[test]
fn the_model_settles_a_busy_history_without_faults() {
    let mut w = World::new();
    for _ in 0..5 {
        w.step(&Action::Records(19));
        w.step(&Action::QueueCommand);
    }
    w.step(&Action::PushFile(2000));
    w.settle();
    w.check_final();
    assert_eq!(w.b.stored.len(), 95);
    assert_eq!(w.a.executions.len(), 5);
}
