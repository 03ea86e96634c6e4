//! A file transfer as the appliance records it, and its pure transitions
//! ([`step`]: the record, an input and the time in; whether it changed
//! out). No I/O, no clock.

use outpost_proto::DeviceId;
use outpost_proto::ids::{CommandId, TransferId};
use serde::{Deserialize, Serialize};

use crate::commands::model::CommandState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Appliance → device.
    Push,
    /// Device → appliance.
    Pull,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }
}

/// Where a transfer stands. The last four are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// Its command waits for the device (or was sent, not yet started).
    Queued,
    /// The agent started it: bytes move.
    Transferring,
    /// Push: written, verified and renamed on the device. Pull: verified
    /// and stored here.
    Completed,
    Failed,
    Cancelled,
    /// The device did not connect before the expiry.
    Expired,
}

impl TransferState {
    pub const ALL: [TransferState; 6] = [
        TransferState::Queued,
        TransferState::Transferring,
        TransferState::Completed,
        TransferState::Failed,
        TransferState::Cancelled,
        TransferState::Expired,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, TransferState::Queued | TransferState::Transferring)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Queued => "queued",
            TransferState::Transferring => "transferring",
            TransferState::Completed => "completed",
            TransferState::Failed => "failed",
            TransferState::Cancelled => "cancelled",
            TransferState::Expired => "expired",
        }
    }
}

impl std::fmt::Display for TransferState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TransferState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TransferState::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown transfer state {s:?}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferTransition {
    pub state: TransferState,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    pub id: TransferId,
    pub device: DeviceId,
    pub direction: Direction,
    /// The path on the device.
    pub path: String,
    /// Push: the upload's size. Pull: as announced by the agent (once the
    /// header arrived).
    pub size_bytes: Option<u64>,
    /// Lowercase hex; pull: once verified.
    pub sha256: Option<String>,
    pub mode: Option<u32>,
    pub owner: Option<String>,
    /// The size limit in force when it was asked for.
    pub max_bytes: u64,
    pub requested_by: String,
    /// The command that carries it (set right after it is queued).
    pub command: Option<CommandId>,
    pub state: TransferState,
    pub transitions: Vec<TransferTransition>,
    pub created_ms: u64,
    /// Content bytes the receiver holds durably.
    pub bytes_done: u64,
    /// Sessions that resumed it at an offset above zero.
    pub resumes: u32,
    pub reason: Option<String>,
}

impl TransferRecord {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: TransferId,
        device: DeviceId,
        direction: Direction,
        path: String,
        size_bytes: Option<u64>,
        sha256: Option<String>,
        max_bytes: u64,
        requested_by: String,
        now_ms: u64,
    ) -> TransferRecord {
        TransferRecord {
            id,
            device,
            direction,
            path,
            size_bytes,
            sha256,
            mode: None,
            owner: None,
            max_bytes,
            requested_by,
            command: None,
            state: TransferState::Queued,
            transitions: vec![TransferTransition {
                state: TransferState::Queued,
                at_ms: now_ms,
            }],
            created_ms: now_ms,
            bytes_done: 0,
            resumes: 0,
            reason: None,
        }
    }

    fn enter(&mut self, state: TransferState, now_ms: u64) {
        self.state = state;
        self.transitions.push(TransferTransition {
            state,
            at_ms: now_ms,
        });
    }

    /// When it entered `state` (the first time).
    pub fn entered(&self, state: TransferState) -> Option<u64> {
        self.transitions
            .iter()
            .find(|t| t.state == state)
            .map(|t| t.at_ms)
    }
}

/// What happened to a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The receiver holds `bytes_done` content bytes (an agent's first
    /// acknowledgement of a push says 0: it is ready).
    Progress { bytes_done: u64 },
    /// A session started sending from an offset above zero.
    Resumed,
    /// Pull: the content arrived whole and matches the agent's header.
    Verified { size_bytes: u64, sha256: String },
    /// Its command reached a terminal state.
    CommandEnded {
        state: CommandState,
        reason: Option<String>,
    },
    /// The appliance gives it up (hash mismatch, over the limit).
    Failed { reason: String },
}

/// Applies `input` at `now_ms`; `true` when the record changed (store it).
/// A terminal transfer changes no more.
pub fn step(rec: &mut TransferRecord, input: Input, now_ms: u64) -> bool {
    if rec.state.is_terminal() {
        return false;
    }
    match input {
        Input::Progress { bytes_done } => {
            let mut changed = false;
            if bytes_done > rec.bytes_done {
                rec.bytes_done = bytes_done;
                changed = true;
            }
            if rec.state == TransferState::Queued {
                rec.enter(TransferState::Transferring, now_ms);
                changed = true;
            }
            changed
        }
        Input::Resumed => {
            rec.resumes += 1;
            true
        }
        Input::Verified { size_bytes, sha256 } => {
            rec.size_bytes = Some(size_bytes);
            rec.sha256 = Some(sha256);
            rec.bytes_done = size_bytes;
            true
        }
        Input::CommandEnded { state, reason } => {
            let verified = rec.direction == Direction::Push || rec.sha256.is_some();
            let (next, why) = match state {
                CommandState::Queued | CommandState::Sent | CommandState::Running => {
                    return false;
                }
                CommandState::Completed if verified => (TransferState::Completed, None),
                CommandState::Completed => (
                    TransferState::Failed,
                    Some(
                        "the agent reported the pull complete but no verified content arrived"
                            .to_string(),
                    ),
                ),
                CommandState::Cancelled => (TransferState::Cancelled, reason),
                CommandState::Expired => (
                    TransferState::Expired,
                    Some("the device did not connect before the expiry".to_string()),
                ),
                CommandState::Failed | CommandState::TimedOut | CommandState::Interrupted => (
                    TransferState::Failed,
                    Some(reason.unwrap_or_else(|| format!("the agent's command ended {state}"))),
                ),
            };
            if next == TransferState::Completed
                && let Some(s) = rec.size_bytes
            {
                rec.bytes_done = s;
            }
            if why.is_some() {
                rec.reason = why;
            }
            rec.enter(next, now_ms);
            true
        }
        Input::Failed { reason } => {
            rec.reason = Some(reason);
            rec.enter(TransferState::Failed, now_ms);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000;

    fn rec(direction: Direction) -> TransferRecord {
        let (size, sha) = match direction {
            Direction::Push => (Some(10), Some("ab".repeat(32))),
            Direction::Pull => (None, None),
        };
        TransferRecord::new(
            TransferId([1; 16]),
            DeviceId(7),
            direction,
            "/etc/x".into(),
            size,
            sha,
            100,
            "alice".into(),
            T0,
        )
    }

    fn states(r: &TransferRecord) -> Vec<(TransferState, u64)> {
        r.transitions.iter().map(|t| (t.state, t.at_ms)).collect()
    }

    fn ended(state: CommandState, reason: Option<&str>) -> Input {
        Input::CommandEnded {
            state,
            reason: reason.map(str::to_string),
        }
    }

    #[test]
    fn a_push_goes_queued_transferring_completed_with_the_time_of_each_step() {
        let mut r = rec(Direction::Push);
        assert!(step(&mut r, Input::Progress { bytes_done: 0 }, T0 + 1));
        assert!(step(&mut r, Input::Progress { bytes_done: 4 }, T0 + 2));
        assert!(
            !step(&mut r, Input::Progress { bytes_done: 3 }, T0 + 3),
            "an older acknowledgement moves nothing"
        );
        assert!(!step(&mut r, ended(CommandState::Running, None), T0 + 4));
        assert!(step(&mut r, ended(CommandState::Completed, None), T0 + 5));
        assert_eq!(
            states(&r),
            vec![
                (TransferState::Queued, T0),
                (TransferState::Transferring, T0 + 1),
                (TransferState::Completed, T0 + 5)
            ]
        );
        assert_eq!(r.bytes_done, 10);
        assert!(!step(&mut r, Input::Failed { reason: "x".into() }, T0 + 6));
        assert_eq!(r.state, TransferState::Completed, "terminal stays");
    }

    #[test]
    fn a_pull_completes_only_once_its_content_is_verified() {
        let mut r = rec(Direction::Pull);
        step(&mut r, Input::Progress { bytes_done: 5 }, T0 + 1);
        let mut unverified = r.clone();
        assert!(step(
            &mut unverified,
            ended(CommandState::Completed, None),
            T0 + 2
        ));
        assert_eq!(unverified.state, TransferState::Failed);
        assert!(step(
            &mut r,
            Input::Verified {
                size_bytes: 9,
                sha256: "cd".repeat(32)
            },
            T0 + 2
        ));
        step(&mut r, ended(CommandState::Completed, None), T0 + 3);
        assert_eq!(r.state, TransferState::Completed);
        assert_eq!((r.size_bytes, r.bytes_done), (Some(9), 9));
    }

    #[test]
    fn the_command_end_decides_failed_cancelled_and_expired_with_a_reason() {
        for (cs, want) in [
            (CommandState::Failed, TransferState::Failed),
            (CommandState::TimedOut, TransferState::Failed),
            (CommandState::Interrupted, TransferState::Failed),
            (CommandState::Cancelled, TransferState::Cancelled),
            (CommandState::Expired, TransferState::Expired),
        ] {
            let mut r = rec(Direction::Push);
            assert!(step(
                &mut r,
                ended(cs, Some("refused by the agent: outside")),
                T0 + 9
            ));
            assert_eq!(r.state, want, "{cs}");
            assert_eq!(r.entered(want), Some(T0 + 9));
            assert!(r.reason.is_some(), "{cs} has a reason");
        }
        let mut r = rec(Direction::Push);
        step(&mut r, ended(CommandState::Failed, None), T0);
        assert_eq!(
            r.reason.as_deref(),
            Some("the agent's command ended failed")
        );
    }

    #[test]
    fn resumes_are_counted_and_a_failure_here_keeps_its_reason() {
        let mut r = rec(Direction::Pull);
        step(&mut r, Input::Resumed, T0);
        step(&mut r, Input::Resumed, T0);
        assert_eq!(r.resumes, 2);
        step(
            &mut r,
            Input::Failed {
                reason: "sha256 mismatch".into(),
            },
            T0 + 1,
        );
        assert_eq!(r.state, TransferState::Failed);
        assert_eq!(r.reason.as_deref(), Some("sha256 mismatch"));
        assert!("transferring".parse::<TransferState>().is_ok());
        assert!("nope".parse::<TransferState>().is_err());
    }
}
