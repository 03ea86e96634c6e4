//! The pure command state machine: each input with the time (`now_ms`,
//! the appliance's wall clock) changes a [`CommandRecord`] and says what
//! the host must do. No I/O, no clock: the host ([`super::host`]) stores
//! the record durably before doing what the step says (sending, acking).
//!
//! ```text
//! queued ──dispatch──▶ sent ──started──▶ running ──result──▶ completed | failed
//!   │  │                 │ (re-sent on each          │        | timed_out | cancelled
//!   │  └─expire─▶ expired│  reconnect until acked)   │        | interrupted
//!   └─cancel─▶ cancelled └─result / withdrawn────────┘
//! ```
//!
//! A result for a command that is already terminal changes nothing (it is
//! acknowledged again: the agent re-sends until acked), so a result
//! reported twice is stored once.
//!
//! **No-report deadline.** A `sent` or `running` command whose device has
//! no session is `interrupted` with the reason [`NO_REPORT_REASON`] once
//! `now ≥ deadline_ms(rec)`: the time it entered that state plus its
//! timeout plus [`NO_REPORT_MARGIN_MS`] (10 minutes, which covers the
//! agent's kill grace and a reconnect). While the device is online the agent enforces
//! the timeout itself and the deadline does nothing. If the agent comes
//! back later and reports the real end, that result replaces the deadline's
//! verdict (a new transition; the agent knows the truth); it is the only
//! case where a terminal state changes.
//!
//! **Reboot deadline.** A reboot (built-in action) stays `running` while
//! the host reboots; the agent reports it completed when it starts again
//! on a new boot id. If that has not happened by the time it entered
//! `sent`/`running` plus its delay plus [`REBOOT_DEADLINE_MS`] (15
//! minutes), it is `failed` with the reason [`REBOOT_REASON`], online or
//! not (an agent that is online with the old boot id did not reboot). A
//! later report from the agent replaces this verdict as above.

use outpost_proto::command::{BuiltinAction, CommandKind};
use outpost_proto::messages::CommandOutcome;

use super::model::{CommandRecord, CommandState};

/// What happened to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The device has a session: may the command go out on it?
    Dispatch,
    /// The agent recorded the id.
    Acked,
    /// The agent started the process (agent clock).
    Started { agent_ms: u64 },
    /// The agent reports the end (maybe again).
    Result {
        outcome: CommandOutcome,
        output_bytes: u64,
        agent_ms: u64,
    },
    /// The command was cancelled before it left the device's session.
    Withdrawn,
    /// A technician cancels it.
    Cancel { by: String },
    /// Time passes (expiry of queued commands).
    Tick,
    /// Time passes for a `sent`/`running` command: is its device online?
    /// (the no-report deadline, see the module's documentation).
    NoReportCheck { online: bool },
    /// The agent answered a cancel of a scheduled reboot that it came too
    /// late (the reboot was due and runs).
    CancelTooLate,
}

/// The reason recorded when a reboot's cancel came too late.
pub const CANCEL_TOO_LATE_REASON: &str =
    "the cancel came too late: the reboot was due and went ahead";

/// Whether output `bytes` of `rec` is the agent's answer that a cancel of
/// its scheduled reboot came too late.
pub fn is_cancel_too_late(rec: &CommandRecord, bytes: &[u8]) -> bool {
    rec.cancel_requested
        && reboot_delay_ms(rec).is_some()
        && String::from_utf8_lossy(bytes)
            .lines()
            .any(|l| l.starts_with(outpost_proto::command::REBOOT_CANCEL_TOO_LATE))
}

/// Margin after a command's timeout before an offline device's `sent` or
/// `running` command is given up as `interrupted`: 10 minutes.
pub const NO_REPORT_MARGIN_MS: u64 = 10 * 60 * 1000;

/// The reason recorded when the no-report deadline passes (a result the
/// agent reports afterwards replaces this verdict).
pub const NO_REPORT_REASON: &str = "device did not report";

/// How long a reboot may take (after its delay) before it is `failed`.
pub const REBOOT_DEADLINE_MS: u64 = 15 * 60 * 1000;

/// The reason recorded when a reboot's deadline passes.
pub const REBOOT_REASON: &str = "the device did not come back with a new boot id";

/// The reboot's delay if the command is the reboot action.
pub fn reboot_delay_ms(rec: &CommandRecord) -> Option<u64> {
    match rec.spec.kind {
        CommandKind::Builtin(BuiltinAction::Reboot { delay_ms }) => Some(delay_ms),
        _ => None,
    }
}

/// When a `sent` or `running` command is given up if its device is
/// offline: entering that state + timeout + [`NO_REPORT_MARGIN_MS`].
/// `None` for other states.
pub fn deadline_ms(rec: &CommandRecord) -> Option<u64> {
    match rec.state {
        CommandState::Sent | CommandState::Running => {
            let from = rec.entered(rec.state).unwrap_or(rec.created_ms);
            Some(match reboot_delay_ms(rec) {
                Some(delay) => from
                    .saturating_add(delay)
                    .saturating_add(REBOOT_DEADLINE_MS),
                None => from
                    .saturating_add(rec.spec.timeout_ms)
                    .saturating_add(NO_REPORT_MARGIN_MS),
            })
        }
        _ => None,
    }
}

/// The command was ended by a deadline (no report, or a reboot that did
/// not come back), not by its agent.
pub fn ended_by_deadline(rec: &CommandRecord) -> bool {
    let reason = |p: &str| rec.reason.as_deref().is_some_and(|r| r.starts_with(p));
    (rec.state == CommandState::Interrupted && reason(NO_REPORT_REASON))
        || (rec.state == CommandState::Failed && reason(REBOOT_REASON))
}

/// What the host must do after storing the record (if `changed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Step {
    /// The record changed: store it before anything else.
    pub changed: bool,
    /// Push the command on the device's session.
    pub send: bool,
    /// Tell the agent to stop it.
    pub send_cancel: bool,
    /// Acknowledge the result to the agent (after storing).
    pub ack_result: bool,
    /// The input was a repeat with nothing new (counted).
    pub duplicate: bool,
    /// The input was refused: the command is already finished.
    pub already_finished: bool,
}

/// The terminal state an outcome maps to, and its details.
fn outcome_state(outcome: &CommandOutcome) -> CommandState {
    match outcome {
        CommandOutcome::Exited { code: 0 } => CommandState::Completed,
        CommandOutcome::Exited { .. }
        | CommandOutcome::Signaled { .. }
        | CommandOutcome::Refused { .. }
        | CommandOutcome::FailedToStart { .. } => CommandState::Failed,
        CommandOutcome::TimedOut => CommandState::TimedOut,
        CommandOutcome::Cancelled => CommandState::Cancelled,
        CommandOutcome::Interrupted => CommandState::Interrupted,
    }
}

/// Applies `input` at `now_ms`.
pub fn step(rec: &mut CommandRecord, input: Input, now_ms: u64) -> Step {
    let mut s = Step::default();
    match input {
        Input::Dispatch => match rec.state {
            CommandState::Queued => {
                if now_ms >= rec.expires_ms {
                    rec.enter(CommandState::Expired, now_ms);
                    s.changed = true;
                } else {
                    rec.enter(CommandState::Sent, now_ms);
                    s.changed = true;
                    s.send = true;
                }
            }
            // Sent on a session that ended before the agent acked: the
            // agent may or may not have it; it dedupes by id.
            CommandState::Sent if !rec.acked => {
                if rec.cancel_requested {
                    s.send_cancel = true;
                } else {
                    s.send = true;
                }
            }
            CommandState::Sent | CommandState::Running => {
                s.send_cancel = rec.cancel_requested;
            }
            _ => {}
        },
        Input::Acked => {
            if !rec.acked {
                rec.acked = true;
                s.changed = true;
            } else {
                s.duplicate = true;
            }
        }
        Input::Started { agent_ms } => match rec.state {
            CommandState::Queued | CommandState::Sent => {
                rec.acked = true;
                rec.started_agent_ms = Some(agent_ms);
                rec.enter(CommandState::Running, now_ms);
                s.changed = true;
            }
            _ => s.duplicate = true,
        },
        Input::Result {
            outcome,
            output_bytes,
            agent_ms,
        } => {
            s.ack_result = true;
            if rec.state.is_terminal() && !ended_by_deadline(rec) {
                s.duplicate = true;
            } else {
                if ended_by_deadline(rec) {
                    // The agent knows what really happened.
                    rec.reason = None;
                }
                let state = outcome_state(&outcome);
                match &outcome {
                    CommandOutcome::Exited { code } => rec.exit_code = Some(*code),
                    CommandOutcome::Signaled { signal } => rec.signal = Some(*signal),
                    CommandOutcome::Refused { reason } => {
                        rec.reason = Some(format!("refused by the agent: {reason}"))
                    }
                    CommandOutcome::FailedToStart { message } => {
                        rec.reason = Some(format!("could not start: {message}"))
                    }
                    _ => {}
                }
                rec.acked = true;
                rec.output_total = Some(output_bytes);
                rec.finished_agent_ms = Some(agent_ms);
                rec.enter(state, now_ms);
                s.changed = true;
            }
        }
        Input::Withdrawn => {
            if rec.state == CommandState::Sent && !rec.acked {
                rec.enter(CommandState::Cancelled, now_ms);
                s.changed = true;
            } else {
                s.duplicate = true;
            }
        }
        Input::Cancel { by } => match rec.state {
            CommandState::Queued => {
                rec.reason = Some(format!("cancelled by {by} before it was sent"));
                rec.enter(CommandState::Cancelled, now_ms);
                s.changed = true;
            }
            CommandState::Sent | CommandState::Running => {
                if !rec.cancel_requested {
                    rec.cancel_requested = true;
                    rec.reason = Some(format!("cancelled by {by}"));
                    s.changed = true;
                }
                s.send_cancel = true;
            }
            _ => s.already_finished = true,
        },
        Input::Tick => {
            if rec.state == CommandState::Queued && now_ms >= rec.expires_ms {
                rec.enter(CommandState::Expired, now_ms);
                s.changed = true;
            }
        }
        Input::CancelTooLate => {
            // The reboot goes ahead: stop asking (the cancel would be sent
            // again on every reconnect) and say why it was not stopped.
            if rec.cancel_requested && !rec.state.is_terminal() {
                rec.cancel_requested = false;
                rec.reason = Some(CANCEL_TOO_LATE_REASON.into());
                s.changed = true;
            } else {
                s.duplicate = true;
            }
        }
        Input::NoReportCheck { online } => {
            let due = deadline_ms(rec).is_some_and(|d| now_ms >= d);
            if due && let Some(delay) = reboot_delay_ms(rec) {
                rec.reason = Some(format!(
                    "{REBOOT_REASON} within {} s of the reboot",
                    (delay + REBOOT_DEADLINE_MS) / 1000
                ));
                rec.enter(CommandState::Failed, now_ms);
                s.changed = true;
            } else if !online && due {
                let secs = (rec.spec.timeout_ms + NO_REPORT_MARGIN_MS) / 1000;
                rec.reason = Some(format!(
                    "{NO_REPORT_REASON} within its timeout + 10 min ({secs} s) while offline"
                ));
                rec.enter(CommandState::Interrupted, now_ms);
                s.changed = true;
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use outpost_proto::DeviceId;
    use outpost_proto::command::CommandSpec;
    use outpost_proto::ids::CommandId;

    use super::*;

    const T0: u64 = 1_000_000;

    fn rec() -> CommandRecord {
        CommandRecord::new(
            CommandId([1; 16]),
            DeviceId(7),
            CommandSpec::shell("uptime", "alice"),
            T0,
        )
    }

    fn result(outcome: CommandOutcome) -> Input {
        Input::Result {
            outcome,
            output_bytes: 3,
            agent_ms: 5,
        }
    }

    fn states(r: &CommandRecord) -> Vec<(CommandState, u64)> {
        r.transitions.iter().map(|t| (t.state, t.at_ms)).collect()
    }

    #[test]
    fn a_new_command_is_queued_at_its_creation_time_with_the_default_expiry() {
        let r = rec();
        assert_eq!(states(&r), vec![(CommandState::Queued, T0)]);
        assert_eq!(r.expires_ms, T0 + 24 * 3600 * 1000);
    }

    #[test]
    fn dispatch_sends_a_queued_command_and_records_the_time() {
        let mut r = rec();
        let s = step(&mut r, Input::Dispatch, T0 + 5);
        assert!(s.changed && s.send);
        assert_eq!(r.state, CommandState::Sent);
        assert_eq!(r.entered(CommandState::Sent), Some(T0 + 5));
    }

    #[test]
    fn an_unacked_command_is_sent_again_after_a_reconnect_until_acked() {
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 1);
        // The session ended before the ack: the next session sends again,
        // without a new transition.
        let s = step(&mut r, Input::Dispatch, T0 + 100);
        assert!(s.send && !s.changed);
        assert_eq!(r.transitions.len(), 2);
        let s = step(&mut r, Input::Acked, T0 + 101);
        assert!(s.changed && r.acked);
        let s = step(&mut r, Input::Dispatch, T0 + 200);
        assert!(!s.send, "acked: the agent has it");
        assert!(step(&mut r, Input::Acked, T0 + 201).duplicate);
    }

    #[test]
    fn started_moves_a_sent_command_to_running() {
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 1);
        let s = step(&mut r, Input::Started { agent_ms: 42 }, T0 + 2);
        assert!(s.changed);
        assert_eq!(r.state, CommandState::Running);
        assert_eq!(r.started_agent_ms, Some(42));
        assert!(r.acked, "a start implies the agent recorded it");
        assert!(step(&mut r, Input::Started { agent_ms: 42 }, T0 + 3).duplicate);
    }

    #[test]
    fn exit_zero_completes_and_nonzero_fails_with_the_code() {
        for (code, want) in [(0, CommandState::Completed), (3, CommandState::Failed)] {
            let mut r = rec();
            step(&mut r, Input::Dispatch, T0 + 1);
            step(&mut r, Input::Started { agent_ms: 1 }, T0 + 2);
            let s = step(&mut r, result(CommandOutcome::Exited { code }), T0 + 3);
            assert!(s.changed && s.ack_result);
            assert_eq!(r.state, want);
            assert_eq!(r.exit_code, Some(code));
            assert_eq!(r.output_total, Some(3));
            assert_eq!(
                states(&r),
                vec![
                    (CommandState::Queued, T0),
                    (CommandState::Sent, T0 + 1),
                    (CommandState::Running, T0 + 2),
                    (want, T0 + 3)
                ]
            );
        }
    }

    #[test]
    fn every_outcome_maps_to_its_terminal_state() {
        let cases = [
            (CommandOutcome::Signaled { signal: 9 }, CommandState::Failed),
            (CommandOutcome::TimedOut, CommandState::TimedOut),
            (CommandOutcome::Cancelled, CommandState::Cancelled),
            (CommandOutcome::Interrupted, CommandState::Interrupted),
            (
                CommandOutcome::Refused {
                    reason: "remote_commands = false".into(),
                },
                CommandState::Failed,
            ),
            (
                CommandOutcome::FailedToStart {
                    message: "no python3".into(),
                },
                CommandState::Failed,
            ),
        ];
        for (outcome, want) in cases {
            let mut r = rec();
            step(&mut r, Input::Dispatch, T0 + 1);
            step(&mut r, result(outcome.clone()), T0 + 2);
            assert_eq!(r.state, want, "{outcome:?}");
            assert_eq!(r.entered(want), Some(T0 + 2));
        }
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 1);
        step(
            &mut r,
            result(CommandOutcome::Refused {
                reason: "run-as root not allowed".into(),
            }),
            T0 + 2,
        );
        assert!(
            r.reason
                .as_deref()
                .unwrap()
                .contains("run-as root not allowed")
        );
    }

    #[test]
    fn a_result_reported_twice_is_stored_once_and_acked_both_times() {
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 1);
        step(&mut r, result(CommandOutcome::Exited { code: 0 }), T0 + 2);
        let before = r.clone();
        let s = step(&mut r, result(CommandOutcome::Exited { code: 1 }), T0 + 9);
        assert!(s.ack_result && s.duplicate && !s.changed);
        assert_eq!(r, before, "the first result stands");
    }

    #[test]
    fn a_queued_command_for_an_offline_device_expires_at_its_expiry() {
        let mut r = rec();
        let exp = r.expires_ms;
        assert!(!step(&mut r, Input::Tick, exp - 1).changed);
        assert_eq!(r.state, CommandState::Queued);
        assert!(step(&mut r, Input::Tick, exp).changed);
        assert_eq!(r.state, CommandState::Expired);
        assert_eq!(r.entered(CommandState::Expired), Some(exp));
        // An expired command is never sent.
        assert!(!step(&mut r, Input::Dispatch, exp + 1).send);
    }

    #[test]
    fn a_device_that_connects_after_the_expiry_does_not_get_the_command() {
        let mut r = rec();
        let at = r.expires_ms + 10;
        let s = step(&mut r, Input::Dispatch, at);
        assert!(s.changed && !s.send);
        assert_eq!(r.state, CommandState::Expired);
    }

    #[test]
    fn a_sent_command_does_not_expire() {
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 1);
        let at = r.expires_ms + 1;
        assert!(!step(&mut r, Input::Tick, at).changed);
        assert_eq!(r.state, CommandState::Sent);
    }

    #[test]
    fn cancelling_a_queued_command_removes_it_before_it_is_sent() {
        let mut r = rec();
        let s = step(&mut r, Input::Cancel { by: "bob".into() }, T0 + 3);
        assert!(s.changed && !s.send_cancel, "nothing to tell the agent");
        assert_eq!(r.state, CommandState::Cancelled);
        assert!(!step(&mut r, Input::Dispatch, T0 + 4).send);
        assert!(r.reason.as_deref().unwrap().contains("bob"));
    }

    #[test]
    fn cancelling_a_running_command_tells_the_agent_and_waits_for_its_result() {
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 1);
        step(&mut r, Input::Started { agent_ms: 1 }, T0 + 2);
        let s = step(&mut r, Input::Cancel { by: "bob".into() }, T0 + 3);
        assert!(s.changed && s.send_cancel);
        assert_eq!(r.state, CommandState::Running, "until the agent reports");
        // After a reconnect, the cancel is repeated.
        assert!(step(&mut r, Input::Dispatch, T0 + 4).send_cancel);
        step(&mut r, result(CommandOutcome::Cancelled), T0 + 5);
        assert_eq!(r.state, CommandState::Cancelled);
        let s = step(&mut r, Input::Cancel { by: "bob".into() }, T0 + 6);
        assert!(s.already_finished && !s.changed);
    }

    #[test]
    fn a_cancelled_unacked_command_is_not_sent_again_but_cancelled_on_the_agent() {
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 1);
        step(&mut r, Input::Cancel { by: "bob".into() }, T0 + 2);
        let s = step(&mut r, Input::Dispatch, T0 + 3);
        assert!(!s.send && s.send_cancel);
    }

    #[test]
    fn a_command_withdrawn_from_the_session_is_cancelled() {
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 1);
        step(&mut r, Input::Cancel { by: "bob".into() }, T0 + 2);
        assert!(step(&mut r, Input::Withdrawn, T0 + 3).changed);
        assert_eq!(r.state, CommandState::Cancelled);
        assert!(step(&mut r, Input::Withdrawn, T0 + 4).duplicate);
    }

    #[test]
    fn an_agent_restart_reports_a_running_command_interrupted() {
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 1);
        step(&mut r, Input::Started { agent_ms: 1 }, T0 + 2);
        step(&mut r, Input::Dispatch, T0 + 50); // reconnect: nothing to send
        step(&mut r, result(CommandOutcome::Interrupted), T0 + 51);
        assert_eq!(r.state, CommandState::Interrupted);
    }

    #[test]
    fn an_offline_running_command_is_interrupted_at_timeout_plus_ten_minutes() {
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 1);
        step(&mut r, Input::Started { agent_ms: 1 }, T0 + 2);
        let d = T0 + 2 + r.spec.timeout_ms + NO_REPORT_MARGIN_MS;
        assert_eq!(deadline_ms(&r), Some(d));
        let off = Input::NoReportCheck { online: false };
        assert!(!step(&mut r, off.clone(), d - 1).changed);
        assert_eq!(r.state, CommandState::Running);
        let s = step(&mut r, off.clone(), d);
        assert!(s.changed && !s.send && !s.send_cancel);
        assert_eq!(r.state, CommandState::Interrupted);
        assert_eq!(r.entered(CommandState::Interrupted), Some(d));
        assert!(r.reason.as_deref().unwrap().starts_with(NO_REPORT_REASON));
        assert!(ended_by_deadline(&r));
        assert_eq!(deadline_ms(&r), None);
        assert!(!step(&mut r, off, d + 1).changed, "once");
    }

    #[test]
    fn an_online_device_keeps_its_running_command_past_the_deadline() {
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 1);
        step(&mut r, Input::Started { agent_ms: 1 }, T0 + 2);
        let late = deadline_ms(&r).unwrap() + 3_600_000;
        let s = step(&mut r, Input::NoReportCheck { online: true }, late);
        assert!(!s.changed);
        assert_eq!(r.state, CommandState::Running);
    }

    #[test]
    fn an_offline_sent_command_counts_its_deadline_from_the_send() {
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 100);
        let d = T0 + 100 + r.spec.timeout_ms + NO_REPORT_MARGIN_MS;
        assert_eq!(deadline_ms(&r), Some(d));
        step(&mut r, Input::NoReportCheck { online: false }, d);
        assert_eq!(r.state, CommandState::Interrupted);
        // Not re-sent when the device returns: the verdict is terminal.
        let s = step(&mut r, Input::Dispatch, d + 5);
        assert!(!s.send && !s.changed);
    }

    #[test]
    fn queued_and_finished_commands_have_no_report_deadline() {
        let mut r = rec();
        assert_eq!(deadline_ms(&r), None);
        assert!(
            !step(&mut r, Input::NoReportCheck { online: false }, u64::MAX).changed,
            "queued commands only expire"
        );
        step(&mut r, Input::Dispatch, T0 + 1);
        step(&mut r, result(CommandOutcome::Exited { code: 0 }), T0 + 2);
        assert_eq!(deadline_ms(&r), None);
        assert!(!step(&mut r, Input::NoReportCheck { online: false }, u64::MAX).changed);
    }

    #[test]
    fn a_late_result_replaces_the_deadline_verdict_once() {
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 1);
        step(&mut r, Input::Started { agent_ms: 1 }, T0 + 2);
        let d = deadline_ms(&r).unwrap();
        step(&mut r, Input::NoReportCheck { online: false }, d);
        let s = step(&mut r, result(CommandOutcome::Exited { code: 0 }), d + 50);
        assert!(s.changed && s.ack_result && !s.duplicate);
        assert_eq!(r.state, CommandState::Completed);
        assert_eq!(r.reason, None);
        assert_eq!(
            states(&r).into_iter().map(|(s, _)| s).collect::<Vec<_>>(),
            vec![
                CommandState::Queued,
                CommandState::Sent,
                CommandState::Running,
                CommandState::Interrupted,
                CommandState::Completed
            ]
        );
        let s = step(&mut r, result(CommandOutcome::Exited { code: 1 }), d + 60);
        assert!(s.duplicate && !s.changed, "then terminal as usual");
        // A real `interrupted` from the agent is final.
        let mut r = rec();
        step(&mut r, Input::Dispatch, T0 + 1);
        step(&mut r, result(CommandOutcome::Interrupted), T0 + 2);
        assert!(!ended_by_deadline(&r));
        assert!(step(&mut r, result(CommandOutcome::Exited { code: 0 }), T0 + 3).duplicate);
    }

    fn reboot(delay_ms: u64) -> CommandRecord {
        let mut r = rec();
        r.spec.kind = CommandKind::Builtin(BuiltinAction::Reboot { delay_ms });
        r
    }

    #[test]
    fn a_reboot_that_does_not_come_back_fails_after_its_delay_plus_fifteen_minutes() {
        for online in [false, true] {
            let mut r = reboot(60_000);
            step(&mut r, Input::Dispatch, T0 + 1);
            step(&mut r, Input::Started { agent_ms: 1 }, T0 + 2);
            let d = T0 + 2 + 60_000 + REBOOT_DEADLINE_MS;
            assert_eq!(deadline_ms(&r), Some(d));
            assert!(!step(&mut r, Input::NoReportCheck { online }, d - 1).changed);
            let s = step(&mut r, Input::NoReportCheck { online }, d);
            assert!(s.changed);
            assert_eq!(r.state, CommandState::Failed, "online={online}");
            assert!(r.reason.as_deref().unwrap().starts_with(REBOOT_REASON));
            assert!(ended_by_deadline(&r));
        }
    }

    #[test]
    fn a_reboot_that_comes_back_in_time_completes_and_a_late_one_replaces_the_failure() {
        let mut r = reboot(0);
        step(&mut r, Input::Dispatch, T0 + 1);
        step(&mut r, Input::Started { agent_ms: 1 }, T0 + 2);
        step(
            &mut r,
            result(CommandOutcome::Exited { code: 0 }),
            T0 + 60_000,
        );
        assert_eq!(r.state, CommandState::Completed);
        assert_eq!(deadline_ms(&r), None);
        let mut r = reboot(0);
        step(&mut r, Input::Dispatch, T0 + 1);
        let d = deadline_ms(&r).unwrap();
        step(&mut r, Input::NoReportCheck { online: false }, d);
        assert_eq!(r.state, CommandState::Failed);
        step(&mut r, result(CommandOutcome::Exited { code: 0 }), d + 1);
        assert_eq!(r.state, CommandState::Completed);
        // A refusal (package install running) is an ordinary failure.
        let mut r = reboot(0);
        step(&mut r, Input::Dispatch, T0 + 1);
        step(
            &mut r,
            result(CommandOutcome::Refused {
                reason: "a package install is running".into(),
            }),
            T0 + 2,
        );
        assert_eq!(r.state, CommandState::Failed);
        assert!(!ended_by_deadline(&r));
    }

    #[test]
    fn states_parse_from_their_names() {
        for s in CommandState::ALL {
            assert_eq!(s.as_str().parse::<CommandState>().unwrap(), s);
        }
        assert!("done".parse::<CommandState>().is_err());
    }

    /// Before the fix the cancel stayed requested: every reconnect sent it
    /// again and the reason said "cancelled by X" while the reboot ran.
    #[test]
    fn a_reboot_cancel_that_came_too_late_is_not_sent_again_and_the_reason_says_the_reboot_went_ahead()
     {
        let mut r = CommandRecord::new(
            CommandId([2; 16]),
            DeviceId(7),
            CommandSpec {
                kind: outpost_proto::command::CommandKind::Builtin(
                    outpost_proto::command::BuiltinAction::Reboot { delay_ms: 0 },
                ),
                ..CommandSpec::shell("-", "alice")
            },
            T0,
        );
        step(&mut r, Input::Dispatch, T0 + 1);
        step(&mut r, Input::Started { agent_ms: 1 }, T0 + 2);
        let s = step(&mut r, Input::Cancel { by: "bob".into() }, T0 + 3);
        assert!(s.send_cancel);
        let line = b"too late to cancel: the reboot was due 0 s ago and runs\n";
        assert!(is_cancel_too_late(&r, line));
        assert!(!is_cancel_too_late(&r, b"rebooting\n"));
        let s = step(&mut r, Input::CancelTooLate, T0 + 4);
        assert!(s.changed);
        assert!(!r.cancel_requested);
        assert_eq!(r.reason.as_deref(), Some(CANCEL_TOO_LATE_REASON));
        assert_eq!(r.state, CommandState::Running);
        // A reconnect: nothing to send any more.
        let s = step(&mut r, Input::Dispatch, T0 + 5);
        assert!(!s.send_cancel && !s.send);
        // The answer again (a resend of the output): nothing new.
        assert!(!is_cancel_too_late(&r, line));
        assert!(step(&mut r, Input::CancelTooLate, T0 + 6).duplicate);
        // A shell command's output never counts.
        let mut sh = rec();
        step(&mut sh, Input::Dispatch, T0 + 1);
        step(&mut sh, Input::Cancel { by: "bob".into() }, T0 + 2);
        assert!(!is_cancel_too_late(&sh, line));
    }
}
