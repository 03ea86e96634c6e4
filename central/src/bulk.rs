//! Bulk runs from central: one request over many devices of several
//! sites (a list, a customer, a site or all within the caller's scope),
//! one command of central's per device grouped under a bulk id, at most
//! `concurrency` of them released to each site at once, and the run's
//! summary. Pure: time and states are parameters; nothing here does I/O.
//!
//! A member waits *held* at central (state `queued_at_central`, not sent
//! down) until a slot of its site frees: [`release`] decides which. A
//! released member is an ordinary command of central's (pushed at once to
//! a connected site, queued here for an offline one until it expires); a
//! held one expires alike, so an offline site's share stays queued at
//! central until expiry. Storage is the store's bulk methods, HTTP and the
//! release pump [`crate::api_bulk`].

use std::collections::BTreeMap;

use outpost_proto::ids::CommandId;
use outpost_proto::{CustomerId, SiteId, TenantId};
use serde::{Deserialize, Serialize};

use crate::commands::{CentralCommand, CentralCommandState};

/// Members of a run released to one site at once, unless the request
/// says otherwise.
pub const DEFAULT_CONCURRENCY: u32 = 50;
/// Largest per-site concurrency a run may ask for.
pub const MAX_CONCURRENCY: u32 = 100_000;
/// Most devices one run targets.
pub const MAX_MEMBERS: usize = 20_000;

/// Which devices a run targets (always within the caller's scope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkTarget {
    /// These devices (each must exist, be visible and not revoked).
    Devices(Vec<DeviceRef>),
    /// Every non-revoked device of this customer's sites.
    Customer(CustomerId),
    /// Every non-revoked device of this site.
    Site(SiteId),
    /// Every non-revoked device the caller sees.
    All,
    /// Every non-revoked device the caller sees with this tag (exact), as
    /// its site last sent it (`{"tag": T}`; `tag:T` in the CLI).
    Tag(String),
}

/// A device of one site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRef {
    pub site: SiteId,
    pub device: String,
}

/// One device of a run and its command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkMember {
    pub site_id: SiteId,
    /// The site's customer (for customer scopes).
    pub customer: CustomerId,
    pub device: String,
    pub hostname: String,
    pub command: CommandId,
}

/// A bulk run, as central stores it (members never change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CentralBulk {
    pub id: CommandId,
    pub tenant: TenantId,
    pub target: BulkTarget,
    /// What runs (the command's summary).
    pub command: String,
    /// Members released to one site at once.
    pub concurrency: u32,
    pub created_ms: u64,
    pub created_by: String,
    /// (when, by whom).
    pub cancelled: Option<(u64, String)>,
    pub members: Vec<BulkMember>,
}

/// What a run's members have come to (the site's shape, plus counts by
/// state and `held`). `pending` = not yet at a device (held, queued at
/// central or at the site), `running` = sent or running, `done` =
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
    /// Waiting at central for a slot of their site.
    pub held: u64,
    /// Members by state.
    pub by_state: BTreeMap<String, u64>,
    /// Every member is in a terminal state.
    pub finished: bool,
}

impl Summary {
    /// Of `(state, held)` per member (a missing record counts as queued at
    /// central).
    pub fn of(members: impl IntoIterator<Item = (CentralCommandState, bool)>) -> Summary {
        use CentralCommandState as S;
        let mut s = Summary::default();
        for (st, held) in members {
            s.total += 1;
            *s.by_state.entry(st.as_str().to_string()).or_default() += 1;
            if held && !st.is_terminal() {
                s.held += 1;
            }
            match st {
                S::QueuedAtCentral | S::DeliveredToSite | S::Queued => s.pending += 1,
                S::Sent | S::Running => s.running += 1,
                S::Completed => s.done += 1,
                S::Failed | S::TimedOut | S::Interrupted => s.failed += 1,
                S::Cancelled => s.cancelled += 1,
                S::Expired => s.expired += 1,
            }
        }
        s.finished = s.pending == 0 && s.running == 0;
        s
    }
}

/// A member of one site as [`release`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView {
    pub command: CommandId,
    /// Still held at central.
    pub held: bool,
    /// Terminal (or closed, or its record is gone): holds no slot.
    pub finished: bool,
}

impl SlotView {
    pub fn of(command: CommandId, held: bool, rec: Option<&CentralCommand>) -> SlotView {
        SlotView {
            command,
            held,
            finished: rec.is_none_or(|r| r.closed || r.state.is_terminal()),
        }
    }
}

/// What to do with a site's held members of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    /// Send these now (in target order).
    pub release: Vec<CommandId>,
    /// Held members that finished while held (expired, cancelled): just
    /// forget they were held.
    pub forget: Vec<CommandId>,
}

/// Which held members of one run at one site to release: as many as keep
/// the site's released, unfinished members at `concurrency`, in target
/// order. A cancelled run releases nothing more. Pure.
pub fn release(concurrency: u32, cancelled: bool, members: &[SlotView]) -> Release {
    let in_flight = members.iter().filter(|m| !m.held && !m.finished).count();
    let mut free = if cancelled {
        0
    } else {
        (concurrency.max(1) as usize).saturating_sub(in_flight)
    };
    let mut r = Release::default();
    for m in members.iter().filter(|m| m.held) {
        if m.finished {
            r.forget.push(m.command);
        } else if free > 0 {
            r.release.push(m.command);
            free -= 1;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> CommandId {
        CommandId([n; 16])
    }

    fn m(n: u8, held: bool, finished: bool) -> SlotView {
        SlotView {
            command: id(n),
            held,
            finished,
        }
    }

    #[test]
    fn a_site_gets_at_most_concurrency_unfinished_members_in_target_order() {
        let all_held: Vec<SlotView> = (1..=5).map(|n| m(n, true, false)).collect();
        assert_eq!(release(2, false, &all_held).release, vec![id(1), id(2)]);
        // Two in flight: nothing more until one finishes.
        let v = [
            m(1, false, false),
            m(2, false, false),
            m(3, true, false),
            m(4, true, false),
        ];
        assert!(release(2, false, &v).release.is_empty());
        let v = [
            m(1, false, true),
            m(2, false, false),
            m(3, true, false),
            m(4, true, false),
        ];
        assert_eq!(release(2, false, &v).release, vec![id(3)]);
        // A concurrency of 0 is taken as 1.
        assert_eq!(release(0, false, &all_held).release, vec![id(1)]);
    }

    #[test]
    fn held_members_that_finished_are_forgotten_and_a_cancelled_run_releases_nothing() {
        let v = [m(1, true, true), m(2, true, false)];
        let r = release(5, false, &v);
        assert_eq!(r.forget, vec![id(1)]);
        assert_eq!(r.release, vec![id(2)]);
        let r = release(5, true, &v);
        assert!(r.release.is_empty());
        assert_eq!(r.forget, vec![id(1)]);
    }

    #[test]
    fn the_summary_counts_members_by_state_and_says_when_all_finished() {
        use CentralCommandState as S;
        let s = Summary::of([
            (S::QueuedAtCentral, true),
            (S::Running, false),
            (S::Completed, false),
            (S::TimedOut, false),
            (S::Expired, true),
        ]);
        assert_eq!(
            (
                s.total, s.pending, s.running, s.done, s.failed, s.expired, s.held
            ),
            (5, 1, 1, 1, 1, 1, 1)
        );
        assert_eq!(s.by_state["queued_at_central"], 1);
        assert!(!s.finished);
        assert!(Summary::of([(S::Completed, false), (S::Cancelled, false)]).finished);
    }
}
