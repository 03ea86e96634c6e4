//! What the scanner does while dpkg is busy (an install holds its lock,
//! or its journal is not empty): waits with a bounded back-off, then
//! gives up. Pure: the caller passes the clock.
//!
//! Owns only this decision; the probing is in [`super::tools`], the
//! waiting and reporting in [`super::task`].

/// The back-off between scan attempts while dpkg is busy: `first_delay`,
/// doubling up to `max_delay`, until `give_up_after` has passed since the
/// first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyBackoff {
    pub first_delay_ms: u64,
    pub max_delay_ms: u64,
    pub give_up_after_ms: u64,
}

impl Default for BusyBackoff {
    /// 1 s, 2 s, 4 s, 8 s, 15 s, 15 s… for at most 60 s: an install of a
    /// few packages ends within it; a longer one defers the scan, and the
    /// scan after the install follows from the database's change.
    fn default() -> Self {
        BusyBackoff {
            first_delay_ms: 1_000,
            max_delay_ms: 15_000,
            give_up_after_ms: 60_000,
        }
    }
}

impl BusyBackoff {
    /// After attempt `attempt` (1-based) found dpkg busy: how long to wait
    /// before the next one, or `None` to give up. `started_ms` is when the
    /// first attempt began. Never waits past the budget.
    pub fn next_delay_ms(&self, attempt: u32, started_ms: u64, now_ms: u64) -> Option<u64> {
        let elapsed = now_ms.saturating_sub(started_ms);
        if elapsed >= self.give_up_after_ms {
            return None;
        }
        let shift = attempt.saturating_sub(1).min(32);
        let delay = self
            .first_delay_ms
            .saturating_mul(1u64 << shift)
            .min(self.max_delay_ms)
            .max(1);
        Some(delay.min(self.give_up_after_ms - elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The delays, driven by an explicit clock: doubling, capped, and
    /// never beyond the budget; then give up.
    #[test]
    fn the_back_off_doubles_is_capped_and_gives_up_after_its_budget() {
        let b = BusyBackoff::default();
        let mut now = 5_000u64;
        let start = now;
        let mut delays = Vec::new();
        let mut attempt = 1;
        while let Some(d) = b.next_delay_ms(attempt, start, now) {
            delays.push(d);
            now += d + 10; // each attempt takes 10 ms
            attempt += 1;
        }
        assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 15_000, 15_000, 14_940]);
        assert!(now - start >= b.give_up_after_ms);
        assert_eq!(b.next_delay_ms(1, start, start + 60_000), None);
        assert_eq!(
            b.next_delay_ms(u32::MAX, start, start),
            Some(15_000),
            "no overflow"
        );
    }
}
