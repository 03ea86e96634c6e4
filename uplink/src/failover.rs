//! Which central address a site connects to when it knows several
//! (`[uplink] central = ["a:4433", "b:4433"]`, instances of one central
//! over PostgreSQL): the first, the next one after a failure (connect or
//! lost session, in turn, round the list), and back to the first after a
//! session on another one lasted [`Failover::fail_back_after_ms`] (so a
//! recovered first instance gets its sites back; if it still fails, the
//! list goes on from there).
//!
//! A pure structure: no network, no clock (`now_ms` is a parameter); the
//! sender ([`crate::sender`]) owns the connections. Exactly-once is not
//! its concern: every instance reads the same store, and a batch sent to
//! two instances is applied once by central.

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    addrs: Vec<String>,
    current: usize,
    fail_back_after_ms: u64,
    /// When the current session (on an address other than the first)
    /// was established.
    away_since_ms: Option<u64>,
}

impl Failover {
    /// `addrs` in order of preference (at least one: an empty list is
    /// `fallback` alone).
    pub fn new(addrs: &[String], fallback: &str, fail_back_after_ms: u64) -> Failover {
        let addrs = if addrs.is_empty() {
            vec![fallback.to_string()]
        } else {
            addrs.to_vec()
        };
        Failover {
            addrs,
            current: 0,
            fail_back_after_ms,
            away_since_ms: None,
        }
    }

    /// The address to connect to now.
    pub fn current(&self) -> &str {
        &self.addrs[self.current.min(self.addrs.len() - 1)]
    }

    /// The addresses, in order.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The attempt on [`Failover::current`] failed or its session ended
    /// with an error: the next address (round the list).
    pub fn failed(&mut self) {
        self.current = (self.current + 1) % self.addrs.len();
        self.away_since_ms = None;
    }

    /// A session on [`Failover::current`] is established.
    pub fn connected(&mut self, now_ms: u64) {
        self.away_since_ms = (self.current != 0).then_some(now_ms);
    }

    /// When the current session should end to return to the first
    /// address (`None`: on the first, or not connected).
    pub fn fail_back_at_ms(&self) -> Option<u64> {
        self.away_since_ms
            .map(|t| t.saturating_add(self.fail_back_after_ms))
    }

    /// The session ended to fail back: the first address next.
    pub fn fail_back(&mut self) {
        self.current = 0;
        self.away_since_ms = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Vec<String> {
        vec!["a:1".into(), "b:1".into(), "c:1".into()]
    }

    #[test]
    fn failures_walk_the_list_in_turn_and_wrap_round() {
        let mut f = Failover::new(&list(), "x:1", 60_000);
        assert_eq!(f.current(), "a:1");
        f.failed();
        assert_eq!(f.current(), "b:1");
        f.failed();
        assert_eq!(f.current(), "c:1");
        f.failed();
        assert_eq!(f.current(), "a:1");
    }

    #[test]
    fn a_session_away_from_the_first_returns_to_it_after_the_back_off() {
        let mut f = Failover::new(&list(), "x:1", 60_000);
        f.connected(1_000);
        assert_eq!(f.fail_back_at_ms(), None, "on the first: stays");
        f.failed();
        f.connected(5_000);
        assert_eq!(f.fail_back_at_ms(), Some(65_000));
        f.fail_back();
        assert_eq!(f.current(), "a:1");
        assert_eq!(f.fail_back_at_ms(), None);
        // The first still down: on to the next again, a new back-off.
        f.failed();
        f.connected(70_000);
        assert_eq!((f.current(), f.fail_back_at_ms()), ("b:1", Some(130_000)));
    }

    #[test]
    fn without_a_list_the_joined_address_is_the_only_one() {
        let mut f = Failover::new(&[], "joined:4433", 60_000);
        f.failed();
        f.connected(1);
        assert_eq!((f.current(), f.fail_back_at_ms()), ("joined:4433", None));
        assert_eq!(f.addrs(), ["joined:4433"]);
    }
}
