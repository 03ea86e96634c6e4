//! Reconnect backoff: exponential with full jitter (attempt `n` waits a
//! uniformly random time in `[0, min(cap, base * 2^n)]`), so that many
//! sites cut off by one central outage do not all come back at once.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// Upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay for a draw `unit` in `[0, 1)`.
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let d = self.ceiling().mul_f64(unit.clamp(0.0, 1.0));
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// The next delay, randomly jittered.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.next_with(1.0), Duration::from_millis(100));
        assert_eq!(b.next_with(1.0), Duration::from_millis(200));
        assert_eq!(b.next_with(0.5), Duration::from_millis(200));
        for _ in 0..30 {
            assert!(b.next_with(1.0) <= Duration::from_secs(2));
        }
        assert_eq!(b.next_with(0.0), Duration::ZERO);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
