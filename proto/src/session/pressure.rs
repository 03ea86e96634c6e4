//! Back-pressure instead of reconnects (session protocol 3): the two pure
//! clocks that decide when an appliance tells an agent it is slow, and how
//! long an agent then waits for an acknowledgement before it gives the
//! connection up.
//!
//! Owns the timing rules only: [`StallWatch`] (appliance end) says when a
//! [`crate::messages::Pressure`] frame is due and what it carries;
//! [`AckClock`] (agent end, and `outpost-bench`'s simulated agent, same
//! rule) says when silence with records in flight means a dead appliance.
//! Both take `now` (milliseconds of the caller's monotonic clock) and never
//! read a clock. The session machines ([`super::agent`],
//! [`super::appliance`]) own the frames and the versions.
//!
//! The rule: an appliance holding a session's records longer than
//! [`PRESSURE_AFTER_MS`] without having told the agent anything sends a
//! `Pressure` frame (at most one per [`PRESSURE_AFTER_MS`]) with how long the
//! oldest record has waited and a suggested ack timeout. The agent counts
//! the frame as a sign of life (its ack clock restarts) and extends its
//! patience to the suggestion, clamped between its own `ack_timeout` and its
//! `max_ack_timeout`. An appliance that says nothing at all is still given
//! up after `ack_timeout` (or, right after a `Pressure`, after the patience
//! it granted, never more than `max_ack_timeout`).

use std::collections::VecDeque;

/// An appliance sends `Pressure` once a session's oldest unacknowledged
/// record has waited this long and the agent heard nothing (no `Ack`, no
/// `Pressure`) for this long either; while the stall lasts, again at this
/// period. Well under every agent's ack timeout (10 s for the real agent,
/// 5 s for the simulated one), so the agent hears from a slow appliance
/// several times before it would give up.
pub const PRESSURE_AFTER_MS: u64 = 1_000;

/// The suggested ack timeout is this many times the oldest record's wait
/// (the queue may be draining slower than it filled)...
pub const PRESSURE_HINT_FACTOR: u64 = 4;
/// ...and at least this much.
pub const PRESSURE_HINT_MIN_MS: u64 = 10_000;
/// ...and at most this much (an agent clamps it to its own maximum too).
pub const PRESSURE_HINT_MAX_MS: u64 = 300_000;

/// Frames of received records remembered per session; beyond it, the two
/// oldest entries are merged (keeping the older time: the stall is then
/// over-estimated, never missed).
const MAX_ENTRIES: usize = 64;

/// The suggested ack timeout for a stall of `stalled_ms`.
pub fn ack_timeout_hint_ms(stalled_ms: u64) -> u64 {
    stalled_ms
        .saturating_mul(PRESSURE_HINT_FACTOR)
        .clamp(PRESSURE_HINT_MIN_MS, PRESSURE_HINT_MAX_MS)
}

/// What a due `Pressure` frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PressureDue {
    /// How long the oldest unacknowledged record has waited.
    pub stalled_ms: u64,
    /// [`ack_timeout_hint_ms`] of it.
    pub ack_timeout_hint_ms: u64,
}

/// The appliance end: when records were received, what is acknowledged,
/// and when the agent last heard from the appliance.
#[derive(Debug, Clone, Default)]
pub struct StallWatch {
    /// (highest sequence number of a received frame, when it arrived), in
    /// arrival order; entries at or below the ack are dropped lazily.
    received: VecDeque<(u64, u64)>,
    /// Highest sequence number acknowledged.
    acked: u64,
    /// The ack as seen at the last call with a clock, and when it moved.
    acked_seen: u64,
    /// When the agent was last told something on the records flow (an ack
    /// seen moving, a `Pressure`), as far as this watch knows.
    last_told_ms: u64,
    /// `Pressure` frames due so far (for counters).
    sent: u64,
}

impl StallWatch {
    /// Starts watching after the Welcome (sent at `now`), with everything up
    /// to `acked` stored.
    pub fn new(acked: u64, now: u64) -> StallWatch {
        StallWatch {
            received: VecDeque::new(),
            acked,
            acked_seen: acked,
            last_told_ms: now,
            sent: 0,
        }
    }

    /// Records up to `up_to` arrived at `now`.
    pub fn received(&mut self, up_to: u64, now: u64) {
        self.observe(now);
        if up_to <= self.acked {
            return;
        }
        if self.received.is_empty() {
            // Nothing was waiting: the agent's ack clock starts now too.
            self.last_told_ms = self.last_told_ms.max(now);
        }
        if self.received.len() >= MAX_ENTRIES
            && let Some((_, t)) = self.received.pop_front()
            && let Some(front) = self.received.front_mut()
        {
            front.1 = front.1.min(t);
        }
        self.received.push_back((up_to, now));
    }

    /// Everything up to `up_to` is acknowledged (the time is taken at the
    /// next call that has one).
    pub fn acked(&mut self, up_to: u64) {
        self.acked = self.acked.max(up_to);
    }

    /// Takes note of acks that moved since the last call with a clock.
    fn observe(&mut self, now: u64) {
        if self.acked != self.acked_seen {
            self.acked_seen = self.acked;
            self.last_told_ms = self.last_told_ms.max(now);
        }
        while self.received.front().is_some_and(|(s, _)| *s <= self.acked) {
            self.received.pop_front();
        }
    }

    /// When the oldest unacknowledged record arrived.
    fn oldest_pending_ms(&self) -> Option<u64> {
        self.received
            .iter()
            .find(|(s, _)| *s > self.acked)
            .map(|(_, t)| *t)
    }

    /// When [`StallWatch::poll`] may next have a frame due (`None`: nothing
    /// is waiting).
    pub fn next_check(&self) -> Option<u64> {
        let oldest = self.oldest_pending_ms()?;
        Some(
            oldest
                .saturating_add(PRESSURE_AFTER_MS)
                .max(self.last_told_ms.saturating_add(PRESSURE_AFTER_MS)),
        )
    }

    /// A `Pressure` frame due at `now`, if any (then counted as told).
    pub fn poll(&mut self, now: u64) -> Option<PressureDue> {
        self.observe(now);
        let oldest = self.oldest_pending_ms()?;
        let stalled_ms = now.saturating_sub(oldest);
        if stalled_ms < PRESSURE_AFTER_MS
            || now.saturating_sub(self.last_told_ms) < PRESSURE_AFTER_MS
        {
            return None;
        }
        self.last_told_ms = now;
        self.sent += 1;
        Some(PressureDue {
            stalled_ms,
            ack_timeout_hint_ms: ack_timeout_hint_ms(stalled_ms),
        })
    }

    /// `Pressure` frames due so far.
    pub fn frames_due(&self) -> u64 {
        self.sent
    }
}

/// The agent end: when silence with records in flight means the appliance
/// is gone.
#[derive(Debug, Clone)]
pub struct AckClock {
    /// Silence that ends a session when the appliance asked for nothing more.
    base_ms: u64,
    /// The longest patience a `Pressure` frame can ask for.
    max_ms: u64,
    /// When the appliance was last heard (any frame), or when records went
    /// in flight with nothing in flight before.
    last_rx_ms: u64,
    /// Patience granted by the last `Pressure` frame: no timeout before.
    patient_until_ms: u64,
}

impl AckClock {
    /// `base_ms` is the agent's ack timeout, `max_ms` the most a `Pressure`
    /// frame may extend it to (at least `base_ms`).
    pub fn new(base_ms: u64, max_ms: u64, now: u64) -> AckClock {
        AckClock {
            base_ms,
            max_ms: max_ms.max(base_ms),
            last_rx_ms: now,
            patient_until_ms: 0,
        }
    }

    /// Something arrived from the appliance.
    pub fn heard(&mut self, now: u64) {
        self.last_rx_ms = self.last_rx_ms.max(now);
    }

    /// Records went in flight with none in flight before: the clock starts.
    pub fn started_waiting(&mut self, now: u64) {
        self.last_rx_ms = self.last_rx_ms.max(now);
    }

    /// A `Pressure` frame asked for `hint_ms` of patience (clamped to
    /// `[base, max]`). Patience only grows: a later, smaller hint does not
    /// shorten what an earlier one granted.
    pub fn pressure(&mut self, hint_ms: u64, now: u64) {
        self.heard(now);
        let patience = hint_ms.clamp(self.base_ms, self.max_ms);
        self.patient_until_ms = self.patient_until_ms.max(now.saturating_add(patience));
    }

    /// When, with records in flight, the session is given up.
    pub fn deadline(&self) -> u64 {
        self.last_rx_ms
            .saturating_add(self.base_ms)
            .max(self.patient_until_ms)
    }

    /// Whether, with records in flight, the appliance counts as gone at `now`.
    pub fn expired(&self, now: u64) -> bool {
        now >= self.deadline()
    }

    /// How long the appliance has been silent at `now`.
    pub fn silent_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_rx_ms)
    }

    /// Whether a `Pressure` frame's patience is still running at `now`.
    pub fn under_pressure(&self, now: u64) -> bool {
        now < self.patient_until_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_is_four_times_the_stall_between_ten_seconds_and_five_minutes() {
        assert_eq!(ack_timeout_hint_ms(0), 10_000);
        assert_eq!(ack_timeout_hint_ms(1_000), 10_000);
        assert_eq!(ack_timeout_hint_ms(5_000), 20_000);
        assert_eq!(ack_timeout_hint_ms(3_600_000), 300_000);
        assert_eq!(ack_timeout_hint_ms(u64::MAX), 300_000);
    }

    #[test]
    fn no_pressure_while_acks_keep_up() {
        let mut w = StallWatch::new(0, 0);
        // Records every 100 ms, each acknowledged 50 ms later.
        for i in 1..100u64 {
            let t = i * 100;
            w.received(i, t);
            assert_eq!(w.poll(t + 10), None);
            w.acked(i);
            assert_eq!(w.poll(t + 50), None);
        }
        assert_eq!(w.next_check(), None, "nothing waits");
        assert_eq!(w.frames_due(), 0);
    }

    #[test]
    fn stalled_records_make_pressure_due_once_per_period() {
        let mut w = StallWatch::new(10, 0);
        w.received(20, 5_000);
        assert_eq!(w.next_check(), Some(6_000));
        assert_eq!(w.poll(5_999), None);
        assert_eq!(
            w.poll(6_000),
            Some(PressureDue {
                stalled_ms: 1_000,
                ack_timeout_hint_ms: 10_000
            })
        );
        // Told at 6,000: not again before 7,000.
        assert_eq!(w.poll(6_500), None);
        assert_eq!(w.next_check(), Some(7_000));
        let p = w.poll(9_000).expect("still stalled");
        assert_eq!(p.stalled_ms, 4_000);
        assert_eq!(p.ack_timeout_hint_ms, 16_000);
        assert_eq!(w.frames_due(), 2);
        // Acked: nothing waits any more.
        w.acked(20);
        assert_eq!(w.poll(12_000), None);
        assert_eq!(w.next_check(), None);
    }

    #[test]
    fn an_ack_that_moved_counts_as_telling_the_agent() {
        let mut w = StallWatch::new(0, 0);
        w.received(5, 0);
        w.received(10, 500);
        // Half acknowledged; the watch sees it at 1,200.
        w.acked(5);
        assert_eq!(w.poll(1_200), None, "the agent heard an ack just now");
        // The oldest pending record (up to 10) arrived at 500; told at 1,200.
        assert_eq!(w.next_check(), Some(2_200));
        let p = w.poll(2_200).expect("due");
        assert_eq!(p.stalled_ms, 1_700);
    }

    #[test]
    fn merged_entries_keep_the_oldest_time() {
        let mut w = StallWatch::new(0, 0);
        for i in 1..=(MAX_ENTRIES as u64 * 3) {
            w.received(i, i);
        }
        assert!(w.received.len() <= MAX_ENTRIES);
        w.acked(1);
        // The oldest remaining entry keeps a time no later than the real
        // oldest unacknowledged record's (2).
        assert!(w.oldest_pending_ms().unwrap() <= 2);
    }

    #[test]
    fn replayed_records_already_acked_do_not_count() {
        let mut w = StallWatch::new(100, 0);
        w.received(50, 10);
        assert_eq!(w.next_check(), None);
        assert_eq!(w.poll(60_000), None);
    }

    #[test]
    fn silent_appliance_times_out_after_the_base_timeout() {
        let mut c = AckClock::new(5_000, 60_000, 0);
        c.started_waiting(1_000);
        assert!(!c.expired(5_999));
        assert!(c.expired(6_000));
        assert_eq!(c.silent_ms(6_000), 5_000);
    }

    #[test]
    fn any_frame_restarts_the_clock() {
        let mut c = AckClock::new(5_000, 60_000, 0);
        c.heard(4_000);
        assert!(!c.expired(8_999));
        assert!(c.expired(9_000));
    }

    #[test]
    fn pressure_extends_patience_to_the_clamped_hint() {
        let mut c = AckClock::new(5_000, 60_000, 0);
        c.pressure(20_000, 1_000);
        assert!(c.under_pressure(1_000));
        assert_eq!(c.deadline(), 21_000);
        assert!(!c.expired(20_999));
        assert!(c.expired(21_000));
        // A hint above the maximum is clamped to it.
        let mut c = AckClock::new(5_000, 60_000, 0);
        c.pressure(3_600_000, 0);
        assert_eq!(c.deadline(), 60_000);
        // A hint below the base still gives the base.
        let mut c = AckClock::new(5_000, 60_000, 0);
        c.pressure(1, 0);
        assert_eq!(c.deadline(), 5_000);
    }

    #[test]
    fn a_smaller_later_hint_does_not_shorten_patience() {
        let mut c = AckClock::new(5_000, 60_000, 0);
        c.pressure(40_000, 0);
        c.pressure(10_000, 1_000);
        assert_eq!(c.deadline(), 40_000);
    }

    #[test]
    fn patience_ends_for_an_appliance_that_dies_after_a_pressure_frame() {
        let mut c = AckClock::new(5_000, 60_000, 0);
        c.pressure(30_000, 10_000);
        // Nothing more: given up 30 s after the last frame, not never.
        assert!(!c.expired(39_999));
        assert!(c.expired(40_000));
        assert!(!c.under_pressure(40_000));
    }

    #[test]
    fn max_below_base_is_raised_to_base() {
        let mut c = AckClock::new(5_000, 1_000, 0);
        c.pressure(60_000, 0);
        assert_eq!(c.deadline(), 5_000);
    }
}
