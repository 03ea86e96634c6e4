//! Admission of new QUIC connections: a bound on handshakes in flight and a
//! token-bucket rate of new handshakes, so that a reconnect storm (an
//! appliance restart, a network blip seen by a whole fleet) costs the
//! appliance little and established sessions keep their share of the CPU.
//!
//! Over either bound, a connection attempt whose address is not validated
//! yet gets a QUIC Retry (a stateless packet carrying an address-validation
//! token: cheap, and a spoofed source never comes back); one that already
//! validated its address (it came back with the token) is refused
//! (`CONNECTION_REFUSED`), and the agent reconnects later with its jittered
//! back-off. Every attempt is counted once by outcome
//! (`outpost_quic_handshakes_total{outcome="accepted"|"retried"|"refused"}`).
//!
//! Owns the decision ([`HandshakeLimiter`], a pure type taking `now`) and
//! its counters; the accept loop ([`super::server`]) hands each `Incoming`
//! to [`Admission::admit`] and keeps the returned [`HandshakePermit`] until
//! the handshake ends. Must not touch sessions or the writer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

/// The highest `agent_reconnect_max` accepted: offline detection after a
/// restart waits that much longer.
pub const MAX_AGENT_RECONNECT_MAX: Duration = Duration::from_secs(3600);

/// `[admission]`: how many new connections the appliance takes on at once
/// and per second. The defaults come from measurements on the 2-core
/// reference machine (benches/RESULTS.md, "Issue 18: reconnect storms and
/// admission", session 33): with 10,000 agents streaming at 1/s while 2,000
/// others reconnect in a loop, 500 handshakes/s (about 320 admitted) made
/// 84–170 of the established sessions time out and reconnect; 200/s made
/// none (and 100/s none). The price is recovery time: 10,000 agents
/// reconnect after a restart in 76 s instead of 49 s. 256 handshakes in
/// flight is the concurrency with which 50,000 agents connected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// TLS handshakes in progress at most; one more is retried or refused.
    pub max_handshakes: usize,
    /// New handshakes per second, sustained (the token bucket's refill).
    pub handshake_rate: u32,
    /// New handshakes at once after a quiet spell (the bucket's size).
    pub handshake_burst: u32,
    /// The longest back-off of the site's agents (their `reconnect_max`):
    /// an agent refused a handshake sleeps up to this long before trying
    /// again. After a restart, the devices online before it are not
    /// declared offline before the fleet can have been readmitted (see
    /// [`crate::ingest::writer::restart_grace`]), which takes this long
    /// past the last refusal. Raise it with the agents' `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub agent_reconnect_max: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_handshakes: 256,
            handshake_rate: 200,
            handshake_burst: 200,
            agent_reconnect_max: outpost_proto::backoff::AGENT_RECONNECT_MAX,
        }
    }
}

impl AdmissionConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_handshakes == 0 {
            anyhow::bail!("admission.max_handshakes must be positive");
        }
        if self.handshake_rate == 0 {
            anyhow::bail!(
                "admission.handshake_rate must be a positive number of handshakes per second"
            );
        }
        if self.handshake_burst == 0 {
            anyhow::bail!("admission.handshake_burst must be positive");
        }
        if self.agent_reconnect_max > MAX_AGENT_RECONNECT_MAX {
            anyhow::bail!(
                "admission.agent_reconnect_max must be at most {} (it holds back offline \
                 detection after a restart by that much)",
                humantime::format_duration(MAX_AGENT_RECONNECT_MAX)
            );
        }
        Ok(())
    }
}

/// A token bucket: `burst` tokens at most, refilled at `rate_per_s`. Time is
/// the caller's (milliseconds of a monotonic clock).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_ms: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate_per_s: f64, burst: u32, now: u64) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate_per_ms: rate_per_s.max(0.0) / 1000.0,
            burst,
            tokens: burst,
            last_ms: now,
        }
    }

    fn refill(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now);
        self.tokens = (self.tokens + elapsed as f64 * self.rate_per_ms).min(self.burst);
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&mut self, now: u64) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: u64) -> u64 {
        self.refill(now);
        self.tokens as u64
    }
}

/// What to do with a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start the handshake (a token was taken).
    Accept,
    /// Over a bound, address not validated yet: answer with a Retry.
    Retry,
    /// Over a bound, address validated: refuse; the agent backs off.
    Refuse(RefuseReason),
}

/// Which bound refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// `max_handshakes` handshakes were in progress.
    HandshakesInFlight,
    /// The token bucket was empty.
    HandshakeRate,
}

impl RefuseReason {
    /// The `reason` label of `outpost_rejects_total`.
    pub fn label(self) -> &'static str {
        match self {
            RefuseReason::HandshakesInFlight => "handshakes_in_flight",
            RefuseReason::HandshakeRate => "handshake_rate",
        }
    }
}

/// The admission decision, without I/O: the bucket and the bound.
#[derive(Debug, Clone)]
pub struct HandshakeLimiter {
    bucket: TokenBucket,
    max_in_flight: usize,
}

impl HandshakeLimiter {
    pub fn new(cfg: &AdmissionConfig, now: u64) -> HandshakeLimiter {
        HandshakeLimiter {
            bucket: TokenBucket::new(f64::from(cfg.handshake_rate), cfg.handshake_burst, now),
            max_in_flight: cfg.max_handshakes.max(1),
        }
    }

    /// Decides for an attempt at `now` with `in_flight` handshakes in
    /// progress; `validated`: the attempt carries a Retry token. A Retry
    /// takes no token (the attempt comes back and is decided again).
    pub fn decide(&mut self, in_flight: usize, validated: bool, now: u64) -> Decision {
        let over = if in_flight >= self.max_in_flight {
            Some(RefuseReason::HandshakesInFlight)
        } else if !self.bucket.try_take(now) {
            Some(RefuseReason::HandshakeRate)
        } else {
            None
        };
        match over {
            None => Decision::Accept,
            Some(_) if !validated => Decision::Retry,
            Some(reason) => Decision::Refuse(reason),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// `outpost_quic_handshakes_total{outcome}`, `outpost_quic_handshakes_in_flight`
/// and `outpost_session_pressure_frames_total`.
#[derive(Debug, Default)]
pub struct AdmissionMetrics {
    /// Connection attempts by outcome: `accepted`, `retried`, `refused`.
    pub handshakes: Family<OutcomeLabel, Counter>,
    /// Handshakes in progress.
    pub handshakes_in_flight: Gauge,
    /// `Pressure` frames sent to agents of session protocol 3 (the
    /// appliance was slow to make their records durable).
    pub pressure_frames: Counter,
}

impl AdmissionMetrics {
    pub fn outcome(&self, outcome: &str) {
        self.handshakes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "quic_handshakes",
            "QUIC connection attempts by admission outcome (accepted, retried, refused)",
            self.handshakes.clone(),
        );
        r.register(
            "quic_handshakes_in_flight",
            "QUIC handshakes in progress",
            self.handshakes_in_flight.clone(),
        );
        r.register(
            "session_pressure_frames",
            "Back-pressure frames sent to agents (their records waited for the writer)",
            self.pressure_frames.clone(),
        );
    }
}

/// The shared admission state of every endpoint's accept loop.
pub struct Admission {
    limiter: Mutex<HandshakeLimiter>,
    in_flight: Arc<AtomicUsize>,
    /// The limiter's clock.
    started: Instant,
    metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Held for the duration of one handshake.
#[derive(Debug)]
pub struct HandshakePermit {
    in_flight: Arc<AtomicUsize>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.metrics.admission.handshakes_in_flight.dec();
    }
}

/// What became of an `Incoming`.
#[derive(Debug)]
pub enum Admitted {
    /// The handshake runs: await it, holding the permit until it ends.
    Handshake(quinn::Connecting, HandshakePermit),
    /// Answered (Retry or refusal) or failed at once: nothing to do.
    Done,
}

impl Admission {
    pub fn new(cfg: &AdmissionConfig, metrics: Arc<crate::metrics::Metrics>) -> Admission {
        Admission {
            limiter: Mutex::new(HandshakeLimiter::new(cfg, 0)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            started: Instant::now(),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Accepts, retries or refuses one connection attempt, and counts it.
    pub fn admit(&self, incoming: quinn::Incoming) -> Admitted {
        let validated = incoming.remote_address_validated();
        let decision = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .decide(
                self.in_flight.load(Ordering::Acquire),
                validated,
                self.now_ms(),
            );
        let m = &self.metrics;
        match decision {
            Decision::Accept => match incoming.accept() {
                Ok(connecting) => {
                    self.in_flight.fetch_add(1, Ordering::AcqRel);
                    m.admission.handshakes_in_flight.inc();
                    m.admission.outcome("accepted");
                    Admitted::Handshake(
                        connecting,
                        HandshakePermit {
                            in_flight: self.in_flight.clone(),
                            metrics: m.clone(),
                        },
                    )
                }
                Err(e) => {
                    m.reject("handshake_failed");
                    tracing::debug!(error = %e, "QUIC connection attempt failed at once");
                    Admitted::Done
                }
            },
            Decision::Retry => {
                match incoming.retry() {
                    Ok(()) => m.admission.outcome("retried"),
                    Err(e) => {
                        // Cannot happen for an unvalidated address; refuse.
                        e.into_incoming().refuse();
                        m.admission.outcome("refused");
                        m.reject("handshake_rate");
                    }
                }
                Admitted::Done
            }
            Decision::Refuse(reason) => {
                incoming.refuse();
                m.admission.outcome("refused");
                m.reject(reason.label());
                Admitted::Done
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: u32, burst: u32, max: usize) -> AdmissionConfig {
        AdmissionConfig {
            max_handshakes: max,
            handshake_rate: rate,
            handshake_burst: burst,
            ..AdmissionConfig::default()
        }
    }

    /// `agent_reconnect_max` is read from the file, defaults to the agents'
    /// own default, and is bounded.
    #[test]
    fn the_agents_longest_back_off_is_configured_and_bounded() {
        assert_eq!(
            AdmissionConfig::default().agent_reconnect_max,
            outpost_proto::backoff::AGENT_RECONNECT_MAX
        );
        let c: AdmissionConfig = toml::from_str("agent_reconnect_max = \"5m\"").unwrap();
        c.validate().unwrap();
        assert_eq!(c.agent_reconnect_max, Duration::from_secs(300));
        assert_eq!(c.handshake_rate, 200, "the other keys keep their defaults");
        let c: AdmissionConfig = toml::from_str("agent_reconnect_max = \"2h\"").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("agent_reconnect_max must be at most 1h"), "{e}");
        assert!(toml::from_str::<AdmissionConfig>("agent_reconnect_max = \"soon\"").is_err());
    }

    #[test]
    fn a_full_bucket_takes_a_burst_then_refuses() {
        let mut b = TokenBucket::new(10.0, 5, 0);
        for _ in 0..5 {
            assert!(b.try_take(0));
        }
        assert!(!b.try_take(0));
        assert!(!b.try_take(99), "0.99 of a token");
    }

    #[test]
    fn the_bucket_refills_at_the_rate_up_to_the_burst() {
        let mut b = TokenBucket::new(10.0, 5, 0);
        while b.try_take(0) {}
        // 10/s: one token every 100 ms.
        assert!(b.try_take(100));
        assert!(!b.try_take(150));
        assert!(b.try_take(200));
        // A long quiet spell refills to the burst, not beyond.
        assert_eq!(b.available(3_600_000), 5);
    }

    #[test]
    fn steady_rate_admits_the_rate_per_second() {
        let mut b = TokenBucket::new(200.0, 10, 0);
        let mut taken = 0;
        // An attempt every millisecond for 10 s: 1,000/s offered.
        for t in 0..10_000u64 {
            if b.try_take(t) {
                taken += 1;
            }
        }
        // 10 s × 200/s plus the initial burst of 10.
        assert!((2_000..=2_011).contains(&taken), "{taken}");
    }

    #[test]
    fn a_clock_going_backwards_takes_nothing_extra() {
        let mut b = TokenBucket::new(10.0, 1, 1_000);
        assert!(b.try_take(1_000));
        assert!(!b.try_take(500));
        assert!(!b.try_take(1_050));
        assert!(b.try_take(1_100));
    }

    #[test]
    fn over_the_rate_unvalidated_attempts_are_retried_and_validated_ones_refused() {
        let mut l = HandshakeLimiter::new(&cfg(1, 2, 100), 0);
        assert_eq!(l.decide(0, false, 0), Decision::Accept);
        assert_eq!(l.decide(0, false, 0), Decision::Accept);
        assert_eq!(l.decide(0, false, 0), Decision::Retry);
        assert_eq!(
            l.decide(0, true, 0),
            Decision::Refuse(RefuseReason::HandshakeRate)
        );
        // A second later one token is back.
        assert_eq!(l.decide(0, true, 1_000), Decision::Accept);
    }

    #[test]
    fn too_many_handshakes_in_flight_refuse_without_taking_a_token() {
        let mut l = HandshakeLimiter::new(&cfg(1, 1, 4), 0);
        assert_eq!(
            l.decide(4, true, 0),
            Decision::Refuse(RefuseReason::HandshakesInFlight)
        );
        assert_eq!(l.decide(4, false, 0), Decision::Retry);
        // The token is still there for the next attempt under the bound.
        assert_eq!(l.decide(3, true, 0), Decision::Accept);
    }

    #[test]
    fn defaults_are_valid_and_nonsense_is_refused() {
        assert!(AdmissionConfig::default().validate().is_ok());
        assert!(cfg(0, 1, 1).validate().is_err());
        assert!(cfg(1, 0, 1).validate().is_err());
        assert!(cfg(1, 1, 0).validate().is_err());
    }
}
