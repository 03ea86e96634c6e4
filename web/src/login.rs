//! What stands between a login route and a password guesser, shared by
//! `outpost-central` and the appliance's admin listener:
//!
//! * [`LoginLimiter`]: failed logins are rate-limited per user key and per
//!   source address (a burst, then one attempt per interval: the generic
//!   cell rate algorithm). The user key is a string the caller builds
//!   (`tenant/user` at central, `user` on the appliance). A pure
//!   structure: `now_ms` is a parameter of every call, so it is tested
//!   with an explicit clock. Its memory is bounded
//!   ([`LimiterConfig::max_keys`] per map).
//! * [`Passwords`]: argon2 runs on the blocking pool behind a semaphore of
//!   a few permits (the number of cores), so many concurrent logins queue
//!   instead of taking every blocking thread and starving the API; an
//!   unknown user is verified against a dummy hash with the same
//!   parameters, so the answer takes as long as for a known one (no user
//!   name oracle by timing).
//! * [`AttemptTurns`]: the attempts for one user key take turns (striped
//!   locks), so concurrent guesses each see the failures recorded before
//!   them instead of all passing the limiter's check at once.
//! * the argon2id helpers ([`hash_password`], [`verify_password`]), the
//!   password policy ([`check_password`]) and the [`Role`] of a user
//!   (viewer < technician < admin).
//!
//! Owns no storage and no HTTP: the login handlers of central and the
//! appliance call these; nothing here knows tenants, sites or users.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// One rate: `burst` failures at once, then one per `interval_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u64,
    pub interval_ms: u64,
}

impl Rate {
    /// The generic cell rate algorithm on one key whose theoretical
    /// arrival time is `tat_ms` (`None`: no failure kept): `Err` with the
    /// wait when one more failure would not fit the rate. What
    /// [`LoginLimiter`] does per key, for callers that keep the times
    /// elsewhere (central's database, shared by several instances).
    pub fn check_tat(self, tat_ms: Option<u64>, now_ms: u64) -> Result<(), RetryAfter> {
        let Some(tat) = tat_ms else {
            return Ok(());
        };
        let next = tat.max(now_ms).saturating_add(self.interval_ms);
        let allowed_until = now_ms.saturating_add(self.burst.saturating_mul(self.interval_ms));
        if next <= allowed_until {
            Ok(())
        } else {
            Err(RetryAfter {
                ms: next - allowed_until,
            })
        }
    }
}

/// Limits of failed logins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimiterConfig {
    /// Per user key (the caller's: `tenant/user`, `user`), known or not.
    pub per_user: Rate,
    /// Per source address (IPv6: per /64).
    pub per_address: Rate,
    /// Most keys tracked per map; beyond it the entry closest to idle is
    /// forgotten first.
    pub max_keys: usize,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            // 5 wrong passwords in a row, then one a minute: 60 guesses an
            // hour at most against one account.
            per_user: Rate {
                burst: 5,
                interval_ms: 60_000,
            },
            // An office behind one address mistypes more than one person.
            per_address: Rate {
                burst: 30,
                interval_ms: 10_000,
            },
            max_keys: 100_000,
        }
    }
}

/// Wait before the next attempt may be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter {
    pub ms: u64,
}

impl RetryAfter {
    /// Whole seconds, rounded up (the `Retry-After` header).
    pub fn secs(self) -> u64 {
        self.ms.div_ceil(1000).max(1)
    }
}

/// The key of a source address: an IPv4 address, or the /64 of an IPv6
/// one (a single host has a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(u128);

impl From<IpAddr> for AddressKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddressKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey(u128::from(u32::from(v4))),
                None => AddressKey((u128::from(v6) >> 64 << 64) | 1 << 32),
            },
        }
    }
}

impl AddressKey {
    /// A stable text form (the key of a shared store).
    pub fn text(self) -> String {
        format!("{:032x}", self.0)
    }
}

/// Theoretical arrival times of one map (GCRA): a key is limited while its
/// time is more than `burst - 1` intervals ahead of now.
#[derive(Debug)]
struct Cells<K> {
    rate: Rate,
    max_keys: usize,
    tat_ms: HashMap<K, u64>,
}

impl<K: Hash + Eq + Clone> Cells<K> {
    fn new(rate: Rate, max_keys: usize) -> Self {
        Cells {
            rate,
            max_keys: max_keys.max(1),
            tat_ms: HashMap::new(),
        }
    }

    /// `Err` with the wait when one more failure would not fit the rate.
    fn check<Q>(&self, k: &Q, now_ms: u64) -> Result<(), RetryAfter>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.rate.check_tat(self.tat_ms.get(k).copied(), now_ms)
    }

    fn fail<Q>(&mut self, k: &Q, now_ms: u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let interval = self.rate.interval_ms;
        if let Some(tat) = self.tat_ms.get_mut(k) {
            *tat = (*tat).max(now_ms).saturating_add(interval);
            return;
        }
        if self.tat_ms.len() >= self.max_keys {
            self.make_room(now_ms);
        }
        self.tat_ms
            .insert(k.to_owned(), now_ms.saturating_add(interval));
    }

    fn forget<Q>(&mut self, k: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.tat_ms.remove(k);
    }

    /// Drops idle keys; if none is idle, the one closest to idle.
    fn make_room(&mut self, now_ms: u64) {
        self.tat_ms.retain(|_, tat| *tat > now_ms);
        if self.tat_ms.len() >= self.max_keys
            && let Some(k) = self
                .tat_ms
                .iter()
                .min_by_key(|(_, tat)| **tat)
                .map(|(k, _)| k.clone())
        {
            self.tat_ms.remove(&k);
        }
    }

    fn len(&self) -> usize {
        self.tat_ms.len()
    }
}

/// Failed-login limits per user name and per source address (see the
/// module docs).
#[derive(Debug)]
pub struct LoginLimiter {
    users: Cells<String>,
    addresses: Cells<AddressKey>,
}

impl LoginLimiter {
    pub fn new(cfg: &LimiterConfig) -> Self {
        LoginLimiter {
            users: Cells::new(cfg.per_user, cfg.max_keys),
            addresses: Cells::new(cfg.per_address, cfg.max_keys),
        }
    }

    /// Whether an attempt for `user` from `addr` may be made now; `Err`
    /// with the longer wait when either limit is reached.
    pub fn check(&self, user: &str, addr: Option<IpAddr>, now_ms: u64) -> Result<(), RetryAfter> {
        let u = self.users.check(user, now_ms);
        let a = match addr {
            Some(ip) => self.addresses.check(&ip.into(), now_ms),
            None => Ok(()),
        };
        match (u, a) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(x), Ok(())) | (Ok(()), Err(x)) => Err(x),
            (Err(x), Err(y)) => Err(RetryAfter { ms: x.ms.max(y.ms) }),
        }
    }

    /// Records a failed attempt.
    pub fn failed(&mut self, user: &str, addr: Option<IpAddr>, now_ms: u64) {
        self.users.fail(user, now_ms);
        if let Some(ip) = addr {
            self.addresses.fail(&ip.into(), now_ms);
        }
    }

    /// Records a failed attempt from `addr` that names no possible user
    /// (the address alone is limited; nothing is kept for the name).
    pub fn failed_address(&mut self, addr: Option<IpAddr>, now_ms: u64) {
        if let Some(ip) = addr {
            self.addresses.fail(&ip.into(), now_ms);
        }
    }

    /// A successful login forgets the user's failures (not the address's).
    pub fn succeeded(&mut self, user: &str) {
        self.users.forget(user);
    }

    /// Keys tracked: (user names, addresses).
    pub fn tracked(&self) -> (usize, usize) {
        (self.users.len(), self.addresses.len())
    }
}

/// Login attempts for one user key, one at a time: a login holds its
/// key's turn from the limiter's check until its failure (or success) is
/// recorded, so N concurrent guesses are N consecutive ones and the
/// limiter stops them after its burst. Striped (a fixed number of locks,
/// keys hashed with a per-process random key): bounded memory, and two
/// users sharing a stripe only wait for each other's password check.
#[derive(Debug)]
pub struct AttemptTurns {
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl AttemptTurns {
    pub fn new(stripes: usize) -> Self {
        AttemptTurns {
            stripes: (0..stripes.max(1))
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Waits for `key`'s turn; the turn lasts as long as the guard.
    pub async fn turn(&self, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let i = (self.hasher.hash_one(key) % self.stripes.len() as u64) as usize;
        self.stripes[i].lock().await
    }
}

impl Default for AttemptTurns {
    /// 64 stripes.
    fn default() -> Self {
        AttemptTurns::new(64)
    }
}

/// argon2 on a bounded pool, with a dummy hash for unknown users (see the
/// module docs).
#[derive(Debug, Clone)]
pub struct Passwords {
    slots: Arc<Semaphore>,
    /// How long a login waits for a slot before it is told to retry.
    wait: Duration,
    dummy: Arc<OnceLock<String>>,
}

/// Every slot stayed busy for the whole wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password checks are busy; retry in a second")]
pub struct Busy;

impl Passwords {
    /// `slots` hashes at once (at least one); a caller waits at most `wait`.
    pub fn new(slots: usize, wait: Duration) -> Self {
        Passwords {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            wait,
            dummy: Arc::new(OnceLock::new()),
        }
    }

    /// One slot per core, waiting up to 10 s.
    pub fn per_core() -> Self {
        Passwords::new(cores(), Duration::from_secs(10))
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let permit = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|_| Busy)
    }

    /// Whether `password` matches `phc`; with no user (`None`) the same
    /// work is done against a dummy hash, and the answer is `false`.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, Busy> {
        let dummy = self.dummy.clone();
        self.run(move || match phc {
            Some(h) => verify_password(&password, &h),
            None => {
                let d = dummy.get_or_init(|| {
                    let pw = format!("{:032x}", rand::random::<u128>());
                    hash_password(&pw).unwrap_or_default()
                });
                let _ = verify_password(&password, d);
                false
            }
        })
        .await
    }

    /// The argon2id PHC string of `password`.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.run(move || hash_password(&password)).await?
    }

    /// Slots free now (tests).
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }
}

/// Cores of this machine (at least one).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Hashing a password failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error("hashing the password: {0}")]
    Argon2(String),
}

/// The argon2id PHC string of `pw` (default parameters, random salt).
pub fn hash_password(pw: &str) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| HashError::Argon2(format!("salt: {e}")))?;
    Ok(Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map_err(|e| HashError::Argon2(e.to_string()))?
        .to_string())
}

/// Whether `pw` matches the PHC string `phc` (a malformed hash matches
/// nothing).
pub fn verify_password(pw: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Longest password accepted (argon2 hashes any length; a bound keeps a
/// request from making it hash megabytes).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A password the policy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("the password must have at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
}

/// The password policy: at least [`MIN_PASSWORD_CHARS`] characters, at
/// most [`MAX_PASSWORD_BYTES`] bytes.
pub fn check_password(pw: &str) -> Result<(), WeakPassword> {
    if pw.chars().count() < MIN_PASSWORD_CHARS {
        return Err(WeakPassword::TooShort);
    }
    if pw.len() > MAX_PASSWORD_BYTES {
        return Err(WeakPassword::TooLong);
    }
    Ok(())
}

/// Role of a user or API token: viewer < technician < admin. Sent (JSON)
/// as its lowercase name (`"admin"`, `"technician"`, `"viewer"`); bincode
/// tables store the variant's index, so variants are appended, never
/// reordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including users and credentials.
    Admin,
    /// Reads everything, acknowledges alerts (and acts on devices).
    Technician,
    /// Reads.
    Viewer,
}

impl Role {
    /// Admin 2, technician 1, viewer 0: a role may grant its rank or less.
    pub fn rank(self) -> u8 {
        match self {
            Role::Admin => 2,
            Role::Technician => 1,
            Role::Viewer => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Technician => "technician",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role may do what needs `min`.
    pub fn allows(self, min: Role) -> bool {
        self.rank() >= min.rank()
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not `admin`, `technician` or `viewer`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: admin, technician or viewer")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "admin" => Ok(Role::Admin),
            "technician" => Ok(Role::Technician),
            "viewer" => Ok(Role::Viewer),
            _ => Err(UnknownRole(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: &str) -> String {
        format!("msp/{n}")
    }

    const ADDR: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)));

    fn limiter() -> LoginLimiter {
        LoginLimiter::new(&LimiterConfig {
            per_user: Rate {
                burst: 3,
                interval_ms: 60_000,
            },
            per_address: Rate {
                burst: 5,
                interval_ms: 10_000,
            },
            max_keys: 100,
        })
    }

    #[test]
    fn a_user_gets_a_burst_of_failures_then_one_per_interval() {
        let mut l = limiter();
        let alice = user("alice");
        let t0 = 1_000_000;
        for i in 0..3 {
            assert_eq!(l.check(&alice, None, t0 + i), Ok(()), "attempt {i}");
            l.failed(&alice, None, t0 + i);
        }
        let wait = l.check(&alice, None, t0 + 3).unwrap_err();
        assert_eq!(
            wait.ms,
            60_000 - 3,
            "until the first failure's interval passed"
        );
        assert_eq!(wait.secs(), 60);
        assert_eq!(
            l.check(&alice, None, t0 + 59_000).map_err(|e| e.secs()),
            Err(1)
        );
        assert_eq!(
            l.check(&alice, None, t0 + 60_001),
            Ok(()),
            "one more after an interval"
        );
        l.failed(&alice, None, t0 + 60_001);
        assert!(
            l.check(&alice, None, t0 + 60_002).is_err(),
            "and then again one interval"
        );
        // Another user is not affected; after a long pause the burst is back.
        assert_eq!(l.check(&user("bob"), None, t0), Ok(()));
        let later = t0 + 10 * 60_000;
        for _ in 0..3 {
            assert_eq!(l.check(&alice, None, later), Ok(()));
            l.failed(&alice, None, later);
        }
        assert!(l.check(&alice, None, later).is_err());
    }

    #[test]
    fn an_address_guessing_many_users_is_limited_and_a_success_forgets_the_user_only() {
        let mut l = limiter();
        let t0 = 5_000;
        for i in 0..5 {
            let u = user(&format!("u{i}"));
            assert_eq!(l.check(&u, ADDR, t0), Ok(()));
            l.failed(&u, ADDR, t0);
        }
        let fresh = user("never-tried");
        let wait = l.check(&fresh, ADDR, t0).unwrap_err();
        assert_eq!(wait.ms, 10_000);
        assert_eq!(l.check(&fresh, None, t0), Ok(()), "from elsewhere: allowed");
        // The same /64 is the same address; another /64 is not.
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        for _ in 0..5 {
            l.failed(&fresh, v6("2001:db8:1:2::1"), t0);
        }
        assert!(l.check(&user("x"), v6("2001:db8:1:2:ffff::9"), t0).is_err());
        assert_eq!(l.check(&user("x"), v6("2001:db8:1:3::1"), t0), Ok(()));
        // A success resets the user, not the address.
        let mut l = limiter();
        let alice = user("alice");
        for _ in 0..3 {
            l.failed(&alice, ADDR, t0);
        }
        assert!(l.check(&alice, None, t0).is_err());
        l.succeeded(&alice);
        assert_eq!(l.check(&alice, None, t0), Ok(()));
        l.failed_address(ADDR, t0);
        l.failed_address(ADDR, t0);
        assert!(
            l.check(&user("y"), ADDR, t0).is_err(),
            "3 + 2 address failures"
        );
    }

    #[test]
    fn the_limiter_tracks_a_bounded_number_of_keys() {
        let mut l = limiter();
        for i in 0..1_000u64 {
            l.failed(&user(&format!("spray{i}")), None, 1_000 + i);
        }
        assert!(l.tracked().0 <= 100, "{:?}", l.tracked());
        // The newest failures are the ones kept.
        assert!(
            l.check(&user("spray999"), None, 2_000).is_ok(),
            "one failure is within the burst"
        );
        assert!(l.users.tat_ms.contains_key(user("spray999").as_str()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_checks_run_on_a_bounded_pool_and_unknown_users_cost_a_hash() {
        let p = Passwords::new(1, Duration::from_millis(50));
        let h = p.hash("correct horse".into()).await.unwrap();
        assert_eq!(
            p.verify("correct horse".into(), Some(h.clone())).await,
            Ok(true)
        );
        assert_eq!(p.verify("wrong".into(), Some(h.clone())).await, Ok(false));
        // Unknown user: false, after a real argon2 verification.
        let started = std::time::Instant::now();
        assert_eq!(p.verify("x".into(), None).await, Ok(false));
        let dummy = p.dummy.get().expect("the dummy hash was made").clone();
        assert!(dummy.starts_with("$argon2id$"), "{dummy}");
        let known = std::time::Instant::now();
        let _ = p.verify("x".into(), Some(h)).await;
        let (unknown_t, known_t) = (known - started, known.elapsed());
        // The first unknown check also made the dummy; later ones only verify.
        let again = std::time::Instant::now();
        assert_eq!(p.verify("y".into(), None).await, Ok(false));
        let again_t = again.elapsed();
        // Timings on a shared machine are noisy: an order of magnitude.
        assert!(
            again_t * 10 > known_t,
            "unknown {again_t:?} vs known {known_t:?} (first unknown {unknown_t:?})"
        );
        // One slot, held: the next check waits its 50 ms and is told busy.
        let held = p.slots.clone().acquire_owned().await.unwrap();
        assert_eq!(p.free_slots(), 0);
        assert_eq!(p.verify("x".into(), None).await, Err(Busy));
        drop(held);
        assert_eq!(p.verify("x".into(), None).await, Ok(false));
    }

    #[test]
    fn roles_are_ordered_viewer_technician_admin_and_stored_by_name() {
        use Role::*;
        assert!(Admin.allows(Technician) && Admin.allows(Viewer) && Admin.allows(Admin));
        assert!(Technician.allows(Viewer) && Technician.allows(Technician));
        assert!(!Technician.allows(Admin));
        assert!(Viewer.allows(Viewer) && !Viewer.allows(Technician));
        assert_eq!(
            serde_json::to_string(&Technician).unwrap(),
            "\"technician\""
        );
        assert_eq!(serde_json::from_str::<Role>("\"viewer\"").unwrap(), Viewer);
        for r in [Admin, Technician, Viewer] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn the_password_policy_wants_8_characters_and_at_most_1_kib() {
        assert_eq!(check_password("1234567"), Err(WeakPassword::TooShort));
        assert_eq!(check_password("12345678"), Ok(()));
        // Characters, not bytes: eight accented letters are enough.
        assert_eq!(check_password("éééééééé"), Ok(()));
        assert_eq!(
            check_password(&"x".repeat(1025)),
            Err(WeakPassword::TooLong)
        );
        let h = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_attempts_for_one_key_take_turns_and_each_sees_the_failures_before_it() {
        // Burst 5: of 15 concurrent wrong guesses, 5 are checked, 10 refused.
        let turns = Arc::new(AttemptTurns::new(4));
        let limiter = Arc::new(std::sync::Mutex::new(LoginLimiter::new(&LimiterConfig {
            per_user: Rate {
                burst: 5,
                interval_ms: 60_000,
            },
            ..LimiterConfig::default()
        })));
        let checked = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..15 {
            let (turns, limiter, checked) = (turns.clone(), limiter.clone(), checked.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = turns.turn("acme/ann").await;
                if limiter
                    .lock()
                    .unwrap()
                    .check("acme/ann", None, 1_000)
                    .is_err()
                {
                    return;
                }
                checked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // The password check takes a while, then fails.
                tokio::time::sleep(Duration::from_millis(5)).await;
                limiter.lock().unwrap().failed("acme/ann", None, 1_000);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(checked.load(std::sync::atomic::Ordering::SeqCst), 5);
    }
}
