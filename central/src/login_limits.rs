//! Where central keeps failed-login limits: in the process
//! ([`crate::Central::login_limiter`], one instance on RocksDB) or in the
//! store when it says it shares them
//! ([`crate::store::AuthStore::shares_login_limits`], PostgreSQL: every
//! instance sees the same failures, so a guesser gains nothing by
//! spreading attempts over instances).
//!
//! Owns only this choice and the keys (`u:tenant/user`, `a:address`);
//! the rate rule is [`outpost_web::login::Rate::check_tat`] (shared with
//! the in-process limiter) and the login route stays in [`crate::api`].

use std::net::IpAddr;

use outpost_web::login::{AddressKey, RetryAfter};

use crate::Central;
use crate::store::Result;

fn user_key(user: &str) -> String {
    format!("u:{user}")
}

fn address_key(ip: IpAddr) -> String {
    format!("a:{}", AddressKey::from(ip).text())
}

impl Central {
    fn in_process(&self) -> std::sync::MutexGuard<'_, outpost_web::login::LoginLimiter> {
        self.login_limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a login for `user` (`tenant/name`) from `addr` may be
    /// tried now; the inner `Err` carries the wait.
    pub async fn login_check(
        &self,
        user: &str,
        addr: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<std::result::Result<(), RetryAfter>> {
        if !self.store.shares_login_limits() {
            return Ok(self.in_process().check(user, addr, now_ms));
        }
        let mut keys = vec![user_key(user)];
        keys.extend(addr.map(address_key));
        let tats = self.store.login_tats(&keys).await?;
        let cfg = &self.limits.login;
        let u = cfg
            .per_user
            .check_tat(tats.first().copied().flatten(), now_ms);
        let a = match tats.get(1) {
            Some(t) => cfg.per_address.check_tat(*t, now_ms),
            None => Ok(()),
        };
        Ok(match (u, a) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(x), Ok(())) | (Ok(()), Err(x)) => Err(x),
            (Err(x), Err(y)) => Err(RetryAfter { ms: x.ms.max(y.ms) }),
        })
    }

    /// Records a failed login: for `user` (when the name could be a user)
    /// and for the address.
    pub async fn login_failed(&self, user: Option<&str>, addr: Option<IpAddr>, now_ms: u64) {
        if !self.store.shares_login_limits() {
            let mut l = self.in_process();
            match user {
                Some(u) => l.failed(u, addr, now_ms),
                None => l.failed_address(addr, now_ms),
            }
            return;
        }
        let cfg = &self.limits.login;
        let mut keys = Vec::new();
        if let Some(u) = user {
            keys.push((user_key(u), cfg.per_user.interval_ms));
        }
        if let Some(ip) = addr {
            keys.push((address_key(ip), cfg.per_address.interval_ms));
        }
        if let Err(e) = self.store.login_failed(&keys, now_ms).await {
            self.metrics.login_limit_errors.inc();
            tracing::warn!(error = %e, "recording a failed login in the store");
        }
    }

    /// A successful login forgets the user's failures.
    pub async fn login_succeeded(&self, user: &str) {
        if !self.store.shares_login_limits() {
            self.in_process().succeeded(user);
            return;
        }
        if let Err(e) = self.store.login_forget(&user_key(user)).await {
            self.metrics.login_limit_errors.inc();
            tracing::warn!(error = %e, "forgetting a user's failed logins in the store");
        }
    }
}
