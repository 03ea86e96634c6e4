//! Reconnect backoff: exponential with full jitter, so that many clients
//! cut off at once (agents by an appliance restart, sites by a central
//! outage) spread their reconnects over the whole window instead of
//! arriving together. Shared by `outpost-agent` and `outpost-uplink`.

use std::time::Duration;

/// The agent's default longest wait between two reconnect attempts
/// (`reconnect_max` in its configuration). The appliance counts on it when
/// it readmits its fleet after a restart: an agent refused a handshake may
/// sleep this long before it tries again.
pub const AGENT_RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Exponential backoff with full jitter: attempt `n` sleeps a uniformly
/// random time in `[0, min(cap, base * 2^n)]`.
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

    /// Upper bound of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay, drawn with `unit` in `[0, 1)` (injected for tests).
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let d = self.ceiling().mul_f64(unit.clamp(0.0, 1.0));
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// The next delay, randomly jittered.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    /// Call after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// `interval` ± `fraction` of it, drawn with `unit` in `[0, 1)`.
pub fn jittered(interval: Duration, fraction: f64, unit: f64) -> Duration {
    let spread = interval.as_secs_f64() * fraction;
    let secs = interval.as_secs_f64() - spread + 2.0 * spread * unit.clamp(0.0, 1.0);
    Duration::from_secs_f64(secs.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings: Vec<u128> = (0..8)
            .map(|_| {
                let c = b.ceiling().as_millis();
                b.next_with(0.5);
                c
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.next_with(0.0), Duration::ZERO);
        assert_eq!(b.next_with(1.0), Duration::from_millis(200));
        // Many attempts never overflow.
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
    }

    #[test]
    fn a_fleet_cut_off_at_once_spreads_its_reconnects() {
        // 1,000 agents lose the appliance at the same instant: their first
        // delays spread over the whole first ceiling instead of coinciding.
        let ceiling = Duration::from_millis(500);
        let mut buckets = [0u32; 10];
        for _ in 0..1000 {
            let mut b = Backoff::new(ceiling, Duration::from_secs(30));
            let d = b.next_delay();
            assert!(d <= ceiling);
            let i = (d.as_millis() as usize * 10 / 500).min(9);
            buckets[i] += 1;
        }
        // About 100 per 50 ms slice; none holds a fifth of the fleet.
        assert!(buckets.iter().all(|n| *n < 200), "{buckets:?}");
    }

    #[test]
    fn heartbeat_jitter_is_ten_percent() {
        let i = Duration::from_secs(30);
        assert_eq!(jittered(i, 0.1, 0.0), Duration::from_secs(27));
        assert_eq!(jittered(i, 0.1, 1.0), Duration::from_secs(33));
        assert_eq!(jittered(i, 0.1, 0.5), Duration::from_secs(30));
    }
}
