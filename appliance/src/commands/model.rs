//! The appliance's record of a remote command: its spec, its state with
//! the time of every transition, what the agent reported, and where its
//! stored output stands. Plain data (serde): the pure transitions are in
//! [`super::machine`], output capping in [`super::output`], storage in
//! [`super::store`].

use outpost_proto::DeviceId;
use outpost_proto::command::CommandSpec;
use outpost_proto::ids::CommandId;
use serde::{Deserialize, Serialize};

use super::output::OutputState;

/// Where a command stands. The last six are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Waiting for the device to be online (or for its session's window).
    Queued,
    /// Pushed to the device's session; the agent may not have it yet
    /// (`acked` says when it recorded it).
    Sent,
    /// The agent started its process.
    Running,
    /// Exited with code 0.
    Completed,
    /// Exited non-zero, killed by an unexpected signal, refused by the
    /// agent's policy, or could not start (`reason` says which).
    Failed,
    /// Killed by the agent at its timeout.
    TimedOut,
    /// Cancelled: before it was sent (never reached the device) or killed
    /// while running.
    Cancelled,
    /// Waited for an offline device past its expiry; never sent.
    Expired,
    /// It was running when the agent or its host died; never re-run.
    Interrupted,
}

impl CommandState {
    pub const ALL: [CommandState; 9] = [
        CommandState::Queued,
        CommandState::Sent,
        CommandState::Running,
        CommandState::Completed,
        CommandState::Failed,
        CommandState::TimedOut,
        CommandState::Cancelled,
        CommandState::Expired,
        CommandState::Interrupted,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            CommandState::Queued | CommandState::Sent | CommandState::Running
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Queued => "queued",
            CommandState::Sent => "sent",
            CommandState::Running => "running",
            CommandState::Completed => "completed",
            CommandState::Failed => "failed",
            CommandState::TimedOut => "timed_out",
            CommandState::Cancelled => "cancelled",
            CommandState::Expired => "expired",
            CommandState::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for CommandState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CommandState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CommandState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown command state {s:?}: expected one of {}",
                    CommandState::ALL.map(|s| s.as_str()).join(", ")
                )
            })
    }
}

/// One state change, with the appliance's wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub state: CommandState,
    pub at_ms: u64,
}

/// A command as the appliance stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub id: CommandId,
    pub device: DeviceId,
    pub spec: CommandSpec,
    pub created_ms: u64,
    /// A command still queued at this time expires.
    pub expires_ms: u64,
    pub state: CommandState,
    /// Every state the command entered, oldest first (the first is
    /// `queued` at `created_ms`).
    pub transitions: Vec<Transition>,
    /// The agent recorded the command id (it will never run it twice): no
    /// more re-sends.
    pub acked: bool,
    /// A cancel was asked for after the command left the queue: the agent
    /// is told (again on each reconnect) until the command ends.
    pub cancel_requested: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why it failed without an exit code (refusal, start failure), or
    /// who cancelled it.
    pub reason: Option<String>,
    /// When the agent started the process (agent clock, milliseconds).
    pub started_agent_ms: Option<u64>,
    /// When the agent reported the end (agent clock).
    pub finished_agent_ms: Option<u64>,
    /// Output bytes the command produced, as the agent reported them.
    pub output_total: Option<u64>,
    pub output: OutputState,
}

impl CommandRecord {
    /// A new command, queued at `now_ms`.
    pub fn new(id: CommandId, device: DeviceId, spec: CommandSpec, now_ms: u64) -> CommandRecord {
        let expires_ms = now_ms.saturating_add(spec.expiry_ms);
        CommandRecord {
            id,
            device,
            spec,
            created_ms: now_ms,
            expires_ms,
            state: CommandState::Queued,
            transitions: vec![Transition {
                state: CommandState::Queued,
                at_ms: now_ms,
            }],
            acked: false,
            cancel_requested: false,
            exit_code: None,
            signal: None,
            reason: None,
            started_agent_ms: None,
            finished_agent_ms: None,
            output_total: None,
            output: OutputState::default(),
        }
    }

    /// When the command entered `state` (the last time).
    pub fn entered(&self, state: CommandState) -> Option<u64> {
        self.transitions
            .iter()
            .rev()
            .find(|t| t.state == state)
            .map(|t| t.at_ms)
    }

    pub(crate) fn enter(&mut self, state: CommandState, now_ms: u64) {
        self.state = state;
        self.transitions.push(Transition {
            state,
            at_ms: now_ms,
        });
    }
}
