//! The transfer inactivity timeout: which transfers made no progress for
//! longer than `file_idle_timeout` (agent.toml) while a session was up.
//! Pure (times are passed in); the worker ([`super`]) ticks it and fails
//! what it returns. It must not touch files, the store or the session.

use std::collections::HashMap;

use outpost_proto::ids::TransferId;

/// Default `file_idle_timeout`: 10 minutes.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// Last progress of each transfer in progress. Time without a session does
/// not count: the transfer waits for the next session (its command's
/// expiry or a cancel end it otherwise); a session coming up restarts
/// every clock.
#[derive(Debug, Clone)]
pub struct IdleClock {
    timeout_ms: u64,
    session_up: bool,
    last: HashMap<TransferId, u64>,
}

impl IdleClock {
    pub fn new(timeout_ms: u64) -> IdleClock {
        IdleClock {
            timeout_ms,
            session_up: false,
            last: HashMap::new(),
        }
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// A transfer started or moved (a chunk written, an ack received).
    pub fn progress(&mut self, t: TransferId, now_ms: u64) {
        self.last.insert(t, now_ms);
    }

    /// The transfer ended.
    pub fn forget(&mut self, t: TransferId) {
        self.last.remove(&t);
    }

    /// A session came up: every transfer's clock starts again.
    pub fn up(&mut self, now_ms: u64) {
        self.session_up = true;
        for v in self.last.values_mut() {
            *v = now_ms;
        }
    }

    pub fn down(&mut self) {
        self.session_up = false;
    }

    /// Transfers idle for longer than the timeout with a session up,
    /// with how long they have been idle (ms). Sorted by transfer id.
    pub fn idle_due(&self, now_ms: u64) -> Vec<(TransferId, u64)> {
        if !self.session_up || self.timeout_ms == 0 {
            return Vec::new();
        }
        let mut v: Vec<(TransferId, u64)> = self
            .last
            .iter()
            .filter_map(|(t, last)| {
                let idle = now_ms.saturating_sub(*last);
                (idle > self.timeout_ms).then_some((*t, idle))
            })
            .collect();
        v.sort_by_key(|(t, _)| *t);
        v
    }

    /// The reason a transfer idle for `idle_ms` is failed with.
    pub fn reason(&self, idle_ms: u64) -> String {
        format!(
            "no progress for {} s with the appliance connected (file_idle_timeout {} s in agent.toml): the transfer was given up",
            idle_ms / 1000,
            self.timeout_ms / 1000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u8) -> TransferId {
        TransferId([n; 16])
    }

    #[test]
    fn a_transfer_without_progress_beyond_the_timeout_is_due_and_progress_resets_it() {
        let mut c = IdleClock::new(600_000);
        c.up(0);
        c.progress(t(1), 1_000);
        c.progress(t(2), 1_000);
        assert!(
            c.idle_due(601_000).is_empty(),
            "exactly the timeout is not over it"
        );
        c.progress(t(2), 500_000);
        assert_eq!(c.idle_due(601_001), vec![(t(1), 600_001)]);
        c.forget(t(1));
        assert!(c.idle_due(1_000_000).is_empty());
        assert_eq!(c.idle_due(1_100_001), vec![(t(2), 600_001)]);
    }

    #[test]
    fn time_without_a_session_does_not_count_and_a_new_session_restarts_the_clock() {
        let mut c = IdleClock::new(600_000);
        c.up(0);
        c.progress(t(1), 0);
        c.down();
        assert!(
            c.idle_due(10_000_000).is_empty(),
            "no session: nothing is due"
        );
        c.up(10_000_000);
        assert!(c.idle_due(10_500_000).is_empty());
        assert_eq!(c.idle_due(10_600_001), vec![(t(1), 600_001)]);
        assert!(c.reason(600_001).contains("file_idle_timeout 600 s"));
    }
}
