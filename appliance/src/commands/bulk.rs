//! Bulk runs: one command spec for many devices under one run id, with a
//! per-run concurrency limit.
//!
//! A run creates one ordinary command per target device at once (each has
//! its id, its states and its output, see [`super::model`]); the run only
//! adds a gate on dispatch: at most `concurrency` of its commands are
//! `sent` or `running` at a time. A queued command of a run whose device
//! is online waits for a slot; when one of the run's commands ends, the
//! next queued one (in target order) whose device is online goes out. A
//! command for an offline device waits in the queue without holding a
//! slot, and expires like any queued command.
//!
//! * [`BulkRun`]: the stored run (target, spec summary, members);
//! * [`RunSlots`]: the pure scheduling state of one run (unit-tested);
//! * [`Summary`]: counts of the members' states;
//! * tables `bulk_runs` (`run id` → [`BulkRun`], bincode) and
//!   `command_runs` (`command id` → `run id`, raw), written in the same
//!   batch as the run's commands.
//!
//! This module must not touch the device session: the service
//! ([`super::service`]) owns dispatching.

use std::collections::{BTreeSet, HashMap};

use outpost_proto::DeviceId;
use outpost_proto::ids::CommandId;
use outpost_storage::error::Result;
use outpost_storage::{Batch, Codec, Store, Table};
use serde::{Deserialize, Serialize};

use super::model::CommandState;

/// A run's id: the same format as a command id (16 random bytes, hex).
pub type RunId = CommandId;

/// Default number of a run's commands sent or running at once.
pub const DEFAULT_CONCURRENCY: u32 = 50;

/// Largest concurrency a run may ask for.
pub const MAX_CONCURRENCY: u32 = 100_000;

pub const BULK_RUNS: Table = Table::new("bulk_runs");
pub const COMMAND_RUNS: Table = Table::new("command_runs").codec(Codec::Raw);

/// Which devices a run targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkTarget {
    /// These devices (each must be enrolled and not revoked).
    Devices(Vec<String>),
    /// Every non-revoked device with this tag.
    Tag(String),
    /// Every non-revoked device of this customer.
    Customer(String),
    /// Every non-revoked device.
    All,
}

impl std::fmt::Display for BulkTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BulkTarget::Devices(d) => write!(f, "devices {}", d.join(",")),
            BulkTarget::Tag(t) => write!(f, "tag {t}"),
            BulkTarget::Customer(c) => write!(f, "customer {c}"),
            BulkTarget::All => f.write_str("all devices"),
        }
    }
}

/// A bulk run as stored (written at creation and at cancel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkRun {
    pub id: RunId,
    pub target: BulkTarget,
    /// The command line or script (and version) every member runs.
    pub command: String,
    pub concurrency: u32,
    pub created_ms: u64,
    pub created_by: String,
    /// When it was cancelled, and by whom.
    pub cancelled: Option<(u64, String)>,
    /// Every target device and its command, in target order.
    pub members: Vec<(DeviceId, CommandId)>,
}

/// What a run's members have come to. `pending` = queued (offline device
/// or waiting for a slot), `running` = sent or running, `done` =
/// completed, `failed` = failed, timed out or interrupted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub total: u64,
    pub pending: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Every member is in a terminal state.
    pub finished: bool,
}

impl Summary {
    pub fn of(states: impl IntoIterator<Item = CommandState>) -> Summary {
        let mut s = Summary::default();
        for st in states {
            s.total += 1;
            match st {
                CommandState::Queued => s.pending += 1,
                CommandState::Sent | CommandState::Running => s.running += 1,
                CommandState::Completed => s.done += 1,
                CommandState::Failed | CommandState::TimedOut | CommandState::Interrupted => {
                    s.failed += 1
                }
                CommandState::Cancelled => s.cancelled += 1,
                CommandState::Expired => s.expired += 1,
            }
        }
        s.finished = s.pending == 0 && s.running == 0;
        s
    }
}

/// The scheduling state of one run that still has open commands: which of
/// its commands hold a slot (sent or running) and which wait (queued), in
/// target order. Pure: the service feeds it every state change of the
/// run's commands and asks it which to dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSlots {
    pub concurrency: u32,
    /// Queued members: (position in the run, command, device).
    waiting: BTreeSet<(u32, CommandId, DeviceId)>,
    position: HashMap<CommandId, (u32, DeviceId)>,
    in_flight: BTreeSet<CommandId>,
}

impl RunSlots {
    pub fn new(concurrency: u32) -> RunSlots {
        RunSlots {
            concurrency: concurrency.max(1),
            waiting: BTreeSet::new(),
            position: HashMap::new(),
            in_flight: BTreeSet::new(),
        }
    }

    /// Records where a member stands (at load, creation, or any change).
    pub fn update(&mut self, pos: u32, id: CommandId, device: DeviceId, state: CommandState) {
        self.position.insert(id, (pos, device));
        self.waiting.remove(&(pos, id, device));
        self.in_flight.remove(&id);
        match state {
            CommandState::Queued => {
                self.waiting.insert((pos, id, device));
            }
            CommandState::Sent | CommandState::Running => {
                self.in_flight.insert(id);
            }
            _ => {
                self.position.remove(&id);
            }
        }
    }

    /// A member's new state (members it does not know are ignored).
    pub fn changed(&mut self, id: CommandId, state: CommandState) {
        if let Some(&(pos, dev)) = self.position.get(&id) {
            self.update(pos, id, dev, state);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn free_slots(&self) -> usize {
        (self.concurrency as usize).saturating_sub(self.in_flight.len())
    }

    /// May this queued member go out now? Only if a slot is free.
    pub fn may_dispatch(&self, id: CommandId) -> bool {
        !self.position.contains_key(&id) || self.in_flight.contains(&id) || self.free_slots() > 0
    }

    /// The queued members to dispatch now, in target order: as many as
    /// there are free slots, skipping members whose device is offline.
    pub fn next(&self, online: impl Fn(DeviceId) -> bool) -> Vec<CommandId> {
        let free = self.free_slots();
        if free == 0 {
            return Vec::new();
        }
        self.waiting
            .iter()
            .filter(|(_, _, d)| online(*d))
            .take(free)
            .map(|(_, id, _)| *id)
            .collect()
    }

    /// No member is queued, sent or running any more.
    pub fn is_finished(&self) -> bool {
        self.position.is_empty()
    }
}

pub fn put_run(b: &mut Batch, run: &BulkRun, new: bool) -> Result<()> {
    b.put(BULK_RUNS, &run.id.0, run)?;
    if new {
        for (_, cid) in &run.members {
            b.put_raw(COMMAND_RUNS, &cid.0, &run.id.0)?;
        }
    }
    Ok(())
}

pub fn get_run(store: &Store, id: RunId) -> Result<Option<BulkRun>> {
    store.get(BULK_RUNS, &id.0)
}

/// The run a command belongs to, if any.
pub fn run_of(store: &Store, id: CommandId) -> Result<Option<RunId>> {
    let v = store.get_raw(COMMAND_RUNS, &id.0)?;
    Ok(v.and_then(|v| <[u8; 16]>::try_from(v.as_slice()).ok().map(CommandId)))
}

/// Runs, newest first (at most `limit`).
pub fn list_runs(store: &Store, limit: usize) -> Result<Vec<BulkRun>> {
    let mut out = Vec::new();
    store.scan::<BulkRun>(BULK_RUNS, &[], None, |_, r| {
        out.push(r);
        true
    })?;
    out.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
    out.truncate(limit);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> CommandId {
        CommandId([n; 16])
    }

    fn slots(n: u8, conc: u32) -> RunSlots {
        let mut s = RunSlots::new(conc);
        for i in 0..n {
            s.update(i as u32, id(i), DeviceId(i as u64), CommandState::Queued);
        }
        s
    }

    #[test]
    fn a_run_dispatches_no_more_than_its_concurrency_in_target_order() {
        let s = slots(5, 2);
        assert_eq!(s.next(|_| true), vec![id(0), id(1)]);
        assert!(s.may_dispatch(id(3)), "nothing in flight yet");
    }

    #[test]
    fn a_slot_frees_when_a_member_ends_and_the_next_queued_one_goes() {
        let mut s = slots(4, 2);
        s.changed(id(0), CommandState::Sent);
        s.changed(id(1), CommandState::Sent);
        assert_eq!(s.free_slots(), 0);
        assert!(s.next(|_| true).is_empty());
        assert!(!s.may_dispatch(id(2)), "full: it waits");
        assert!(s.may_dispatch(id(0)), "a member in flight may be re-sent");
        s.changed(id(1), CommandState::Running);
        assert!(s.next(|_| true).is_empty(), "running still holds its slot");
        s.changed(id(0), CommandState::Completed);
        assert_eq!(s.next(|_| true), vec![id(2)]);
        s.changed(id(2), CommandState::Sent);
        s.changed(id(1), CommandState::Failed);
        s.changed(id(2), CommandState::TimedOut);
        assert_eq!(s.next(|_| true), vec![id(3)]);
        s.changed(id(3), CommandState::Sent);
        s.changed(id(3), CommandState::Completed);
        assert!(s.is_finished());
    }

    #[test]
    fn an_offline_member_does_not_hold_a_slot_or_block_the_others() {
        let s = slots(4, 2);
        // Devices 0 and 2 are offline.
        assert_eq!(s.next(|d| d.0 % 2 == 1), vec![id(1), id(3)]);
        assert!(s.next(|_| false).is_empty());
    }

    #[test]
    fn expired_and_cancelled_members_leave_the_run_and_unknown_ids_are_ignored() {
        let mut s = slots(2, 1);
        s.changed(id(0), CommandState::Expired);
        s.changed(id(9), CommandState::Sent);
        assert_eq!(s.in_flight(), 0);
        s.changed(id(1), CommandState::Cancelled);
        assert!(s.is_finished());
        assert!(s.next(|_| true).is_empty());
    }

    #[test]
    fn a_zero_concurrency_is_taken_as_one() {
        let s = slots(3, 0);
        assert_eq!(s.next(|_| true).len(), 1);
    }

    #[test]
    fn the_summary_counts_pending_running_done_and_failed() {
        use CommandState::*;
        let s = Summary::of([
            Queued,
            Sent,
            Running,
            Completed,
            Completed,
            Failed,
            TimedOut,
            Interrupted,
            Cancelled,
            Expired,
        ]);
        assert_eq!(
            (s.total, s.pending, s.running, s.done, s.failed),
            (10, 1, 2, 2, 3)
        );
        assert_eq!((s.cancelled, s.expired, s.finished), (1, 1, false));
        assert!(Summary::of([Completed, Expired]).finished);
    }

    #[test]
    fn a_run_and_its_member_index_round_trip_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::db::open(dir.path(), &outpost_storage::StoreOptions::default()).unwrap();
        let run = BulkRun {
            id: id(100),
            target: BulkTarget::Tag("web".into()),
            command: "uptime".into(),
            concurrency: 50,
            created_ms: 5,
            created_by: "alice".into(),
            cancelled: None,
            members: vec![(DeviceId(1), id(1)), (DeviceId(2), id(2))],
        };
        let mut b = s.batch();
        put_run(&mut b, &run, true).unwrap();
        s.write(b).unwrap();
        assert_eq!(get_run(&s, run.id).unwrap(), Some(run.clone()));
        assert_eq!(run_of(&s, id(2)).unwrap(), Some(run.id));
        assert_eq!(run_of(&s, id(3)).unwrap(), None);
        assert_eq!(list_runs(&s, 10).unwrap(), vec![run]);
    }
}
