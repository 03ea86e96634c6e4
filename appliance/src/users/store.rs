//! The local users' tables (bincode):
//!
//! * `users`: user name → [`UserRecord`] (role, argon2id PHC string,
//!   creation and last password change);
//! * `sessions`: SHA-256 of the session secret → [`SessionRecord`]. The
//!   secret itself is only in the browser's cookie (or the caller's
//!   memory): a copy of the database opens no session.
//!
//! A session is valid while it has not expired, its user exists and the
//! user's password is the one it was opened with ([`SessionRecord::credential`]),
//! so removing a user or changing a password ends its sessions even if a
//! session was being opened at that moment; the rows are also deleted in
//! the same write. Sessions of one user are found by scanning the table,
//! which is bounded ([`MAX_SESSIONS_PER_USER`] per user, [`MAX_USERS`]
//! users, expired rows pruned at every login).
//!
//! Owns these two tables only. Writes that read first (add, password,
//! remove) are serialised by the caller ([`super::auth::Auth`]).

use outpost_storage::error::Result;
use outpost_storage::{Store, Table};
use outpost_web::login::Role;
use serde::{Deserialize, Serialize};

/// User name → [`UserRecord`].
pub const USERS: Table = Table::new("users");
/// SHA-256 of a session secret → [`SessionRecord`].
pub const SESSIONS: Table = Table::new("sessions");

/// Every table of the local users, for `Store::open`.
pub const TABLES: &[Table] = &[USERS, SESSIONS];

/// Most users an appliance keeps.
pub const MAX_USERS: usize = 1_000;
/// Most open sessions of one user; a new login beyond it ends the oldest.
pub const MAX_SESSIONS_PER_USER: usize = 32;

/// A local user. (bincode: fields are appended, never reordered; `Role`'s
/// variants likewise.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub role: Role,
    /// argon2id PHC string.
    pub password_hash: String,
    pub created_ms: u64,
    pub password_changed_ms: u64,
}

impl UserRecord {
    /// What a session opened now records of the password
    /// ([`SessionRecord::credential`]).
    pub fn credential(&self) -> [u8; 32] {
        outpost_proto::pki::sha256(self.password_hash.as_bytes())
    }
}

/// An open session, stored under the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// SHA-256 of the user's password hash when the session was opened: a
    /// session outlives no password change.
    pub credential: [u8; 32],
}

impl SessionRecord {
    /// Whether this session, of `user` (as stored now), is valid at `now_ms`.
    pub fn valid_for(&self, user: &UserRecord, now_ms: u64) -> bool {
        self.user == user.name && now_ms < self.expires_ms && self.credential == user.credential()
    }
}

/// A user name the appliance refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "user name {0:?} must be 1-64 characters of letters, digits, '.', '_', '-' or '@', starting with a letter or digit"
)]
pub struct BadUserName(pub String);

/// User names: 1-64 ASCII letters, digits, `.`, `_`, `-`, `@`, starting
/// with a letter or digit (they appear in URLs, audit entries and logs).
pub fn check_user_name(name: &str) -> std::result::Result<(), BadUserName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(BadUserName(name.to_string()))
    }
}

pub fn get_user(store: &Store, name: &str) -> Result<Option<UserRecord>> {
    store.get(USERS, name.as_bytes())
}

/// Every user, by name.
pub fn list_users(store: &Store) -> Result<Vec<UserRecord>> {
    let mut out = Vec::new();
    store.scan::<UserRecord>(USERS, &[], None, |_, u| {
        out.push(u);
        true
    })?;
    Ok(out)
}

/// Number of users.
pub fn count_users(store: &Store) -> Result<usize> {
    let mut n = 0;
    store.scan_raw(USERS, &[], None, |_, _| {
        n += 1;
        Ok(true)
    })?;
    Ok(n)
}

/// Why a user was not added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddRefused {
    Exists,
    TooMany,
}

/// Adds `user` unless one of that name exists or there are
/// [`MAX_USERS`] already.
pub fn add_user(store: &Store, user: &UserRecord) -> Result<std::result::Result<(), AddRefused>> {
    if get_user(store, &user.name)?.is_some() {
        return Ok(Err(AddRefused::Exists));
    }
    if count_users(store)? >= MAX_USERS {
        return Ok(Err(AddRefused::TooMany));
    }
    store.put(USERS, user.name.as_bytes(), user)?;
    Ok(Ok(()))
}

/// Every session: (key, record).
fn all_sessions(store: &Store) -> Result<Vec<(Vec<u8>, SessionRecord)>> {
    let mut out = Vec::new();
    store.scan::<SessionRecord>(SESSIONS, &[], None, |k, s| {
        out.push((k.to_vec(), s));
        true
    })?;
    Ok(out)
}

/// Sessions of `name` (valid or not): (key, record).
pub fn sessions_of(store: &Store, name: &str) -> Result<Vec<(Vec<u8>, SessionRecord)>> {
    Ok(all_sessions(store)?
        .into_iter()
        .filter(|(_, s)| s.user == name)
        .collect())
}

/// Open (unexpired) sessions per user name.
pub fn open_sessions(
    store: &Store,
    now_ms: u64,
) -> Result<std::collections::HashMap<String, usize>> {
    let mut out = std::collections::HashMap::new();
    for (_, s) in all_sessions(store)? {
        if s.expires_ms > now_ms {
            *out.entry(s.user).or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// Sets `name`'s password hash and deletes its sessions, in one write.
/// `None` if there is no such user; else the sessions ended.
pub fn set_password(
    store: &Store,
    name: &str,
    password_hash: &str,
    now_ms: u64,
) -> Result<Option<usize>> {
    let Some(mut user) = get_user(store, name)? else {
        return Ok(None);
    };
    user.password_hash = password_hash.to_string();
    user.password_changed_ms = now_ms;
    let sessions = sessions_of(store, name)?;
    let mut b = store.batch();
    b.put(USERS, name.as_bytes(), &user)?;
    for (k, _) in &sessions {
        b.delete(SESSIONS, k)?;
    }
    store.write(b)?;
    Ok(Some(sessions.len()))
}

/// Removes `name` and its sessions, in one write. `None` if there is no
/// such user; else the removed record and the sessions ended.
pub fn remove_user(store: &Store, name: &str) -> Result<Option<(UserRecord, usize)>> {
    let Some(user) = get_user(store, name)? else {
        return Ok(None);
    };
    let sessions = sessions_of(store, name)?;
    let mut b = store.batch();
    b.delete(USERS, name.as_bytes())?;
    for (k, _) in &sessions {
        b.delete(SESSIONS, k)?;
    }
    store.write(b)?;
    Ok(Some((user, sessions.len())))
}

/// The keys to delete before opening one more session of `user` at
/// `now_ms`: every expired session, and the oldest of `user`'s so that it
/// keeps at most `max_per_user` with the new one. Pure.
pub fn sessions_to_prune(
    sessions: &[(Vec<u8>, SessionRecord)],
    user: &str,
    now_ms: u64,
    max_per_user: usize,
) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut live: Vec<&(Vec<u8>, SessionRecord)> = Vec::new();
    for s in sessions {
        if s.1.expires_ms <= now_ms {
            out.push(s.0.clone());
        } else if s.1.user == user {
            live.push(s);
        }
    }
    let keep = max_per_user.saturating_sub(1);
    if live.len() > keep {
        live.sort_by_key(|(k, s)| (s.created_ms, k.clone()));
        let excess = live.len() - keep;
        out.extend(live.into_iter().take(excess).map(|(k, _)| k.clone()));
    }
    out
}

/// Stores a new session under `secret_sha256`, pruning expired sessions
/// and `user`'s oldest beyond [`MAX_SESSIONS_PER_USER`] in the same write.
/// Returns the sessions pruned.
pub fn open_session(
    store: &Store,
    secret_sha256: &[u8; 32],
    session: &SessionRecord,
    now_ms: u64,
) -> Result<usize> {
    let prune = sessions_to_prune(
        &all_sessions(store)?,
        &session.user,
        now_ms,
        MAX_SESSIONS_PER_USER,
    );
    let mut b = store.batch();
    for k in &prune {
        b.delete(SESSIONS, k)?;
    }
    b.put(SESSIONS, secret_sha256, session)?;
    store.write(b)?;
    Ok(prune.len())
}

/// The session stored under `secret_sha256`, valid or not.
pub fn session(store: &Store, secret_sha256: &[u8; 32]) -> Result<Option<SessionRecord>> {
    store.get::<SessionRecord>(SESSIONS, secret_sha256)
}

/// The session stored under `secret_sha256` and its user, if the session
/// is valid at `now_ms` ([`SessionRecord::valid_for`]).
pub fn session_user(
    store: &Store,
    secret_sha256: &[u8; 32],
    now_ms: u64,
) -> Result<Option<(SessionRecord, UserRecord)>> {
    let Some(s) = store.get::<SessionRecord>(SESSIONS, secret_sha256)? else {
        return Ok(None);
    };
    let Some(u) = get_user(store, &s.user)? else {
        return Ok(None);
    };
    Ok(s.valid_for(&u, now_ms).then_some((s, u)))
}

/// Deletes one session (logout). Whether it existed.
pub fn close_session(store: &Store, secret_sha256: &[u8; 32]) -> Result<bool> {
    if store.get_raw(SESSIONS, secret_sha256)?.is_none() {
        return Ok(false);
    }
    let mut b = store.batch();
    b.delete(SESSIONS, secret_sha256)?;
    store.write(b)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_storage::StoreOptions;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
        (dir, s)
    }

    fn user(name: &str, role: Role, hash: &str) -> UserRecord {
        UserRecord {
            name: name.into(),
            role,
            password_hash: hash.into(),
            created_ms: 1_000,
            password_changed_ms: 1_000,
        }
    }

    fn session(u: &UserRecord, created_ms: u64, expires_ms: u64) -> SessionRecord {
        SessionRecord {
            user: u.name.clone(),
            created_ms,
            expires_ms,
            credential: u.credential(),
        }
    }

    #[test]
    fn user_names_are_short_plain_and_start_with_a_letter_or_digit() {
        for ok in [
            "alice",
            "a",
            "bob.smith",
            "t-1_x",
            "ops@site",
            &"x".repeat(64),
        ] {
            assert_eq!(check_user_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a b",
            "a/b",
            "é",
            "a\0",
            "x\n",
            &"x".repeat(65),
        ] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn users_are_added_once_listed_by_name_and_the_database_keeps_no_secret() {
        let (_d, s) = store();
        let bob = user("bob", Role::Viewer, "$argon2id$bob");
        let alice = user("alice", Role::Admin, "$argon2id$alice");
        assert_eq!(add_user(&s, &bob).unwrap(), Ok(()));
        assert_eq!(add_user(&s, &alice).unwrap(), Ok(()));
        assert_eq!(add_user(&s, &bob).unwrap(), Err(AddRefused::Exists));
        let names: Vec<String> = list_users(&s)
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(get_user(&s, "bob").unwrap(), Some(bob.clone()));
        // A session is stored under the hash of its secret, never the secret.
        let secret = "s3cr3t-session-value";
        let key = outpost_proto::pki::sha256(secret.as_bytes());
        open_session(&s, &key, &session(&bob, 2_000, 10_000), 2_000).unwrap();
        let mut raw_keys = Vec::new();
        s.scan_raw(SESSIONS, &[], None, |k, v| {
            raw_keys.push(k.to_vec());
            assert!(!v.windows(secret.len()).any(|w| w == secret.as_bytes()));
            Ok(true)
        })
        .unwrap();
        assert_eq!(raw_keys, vec![key.to_vec()]);
    }

    #[test]
    fn a_session_is_valid_until_it_expires_and_only_with_the_password_it_was_opened_with() {
        let (_d, s) = store();
        let bob = user("bob", Role::Technician, "$argon2id$one");
        add_user(&s, &bob).unwrap().unwrap();
        let key = [7u8; 32];
        open_session(&s, &key, &session(&bob, 2_000, 10_000), 2_000).unwrap();
        let (sess, u) = session_user(&s, &key, 9_999).unwrap().expect("valid");
        assert_eq!((sess.user.as_str(), u.role), ("bob", Role::Technician));
        assert!(session_user(&s, &key, 10_000).unwrap().is_none(), "expired");
        assert!(
            session_user(&s, &[8u8; 32], 3_000).unwrap().is_none(),
            "unknown"
        );
        // A session opened with the old password (a login racing a change)
        // is not valid with the new one, even if its row survived.
        let stale = session(&bob, 2_000, 10_000);
        assert_eq!(
            set_password(&s, "bob", "$argon2id$two", 3_000).unwrap(),
            Some(1)
        );
        assert!(
            session_user(&s, &key, 3_000).unwrap().is_none(),
            "row deleted"
        );
        s.put(SESSIONS, &key, &stale).unwrap();
        assert!(
            session_user(&s, &key, 3_000).unwrap().is_none(),
            "old credential"
        );
        let now = get_user(&s, "bob").unwrap().unwrap();
        assert_eq!(now.password_changed_ms, 3_000);
        assert_eq!(now.created_ms, 1_000);
        assert_eq!(set_password(&s, "nobody", "x", 3_000).unwrap(), None);
        // Logout.
        let fresh = [9u8; 32];
        open_session(&s, &fresh, &session(&now, 3_000, 10_000), 3_000).unwrap();
        assert!(close_session(&s, &fresh).unwrap());
        assert!(!close_session(&s, &fresh).unwrap());
        assert!(session_user(&s, &fresh, 3_000).unwrap().is_none());
    }

    #[test]
    fn removing_a_user_ends_its_sessions_and_no_one_elses() {
        let (_d, s) = store();
        let bob = user("bob", Role::Viewer, "$argon2id$b");
        let eve = user("eve", Role::Viewer, "$argon2id$e");
        add_user(&s, &bob).unwrap().unwrap();
        add_user(&s, &eve).unwrap().unwrap();
        for i in 0..3u8 {
            open_session(&s, &[i; 32], &session(&bob, 2_000, 10_000), 2_000).unwrap();
        }
        open_session(&s, &[50; 32], &session(&eve, 2_000, 10_000), 2_000).unwrap();
        assert_eq!(open_sessions(&s, 2_000).unwrap().get("bob"), Some(&3));
        let (gone, ended) = remove_user(&s, "bob").unwrap().unwrap();
        assert_eq!((gone.name.as_str(), ended), ("bob", 3));
        assert!(get_user(&s, "bob").unwrap().is_none());
        assert!(sessions_of(&s, "bob").unwrap().is_empty());
        assert!(session_user(&s, &[50; 32], 2_000).unwrap().is_some());
        assert_eq!(remove_user(&s, "bob").unwrap(), None);
        // A user of the same name added later does not inherit a session.
        s.put(SESSIONS, &[1u8; 32], &session(&bob, 2_000, 10_000))
            .unwrap();
        add_user(&s, &user("bob", Role::Admin, "$argon2id$new"))
            .unwrap()
            .unwrap();
        assert!(session_user(&s, &[1u8; 32], 2_000).unwrap().is_none());
    }

    #[test]
    fn opening_a_session_prunes_expired_ones_and_keeps_each_user_bounded() {
        let k = |i: u8| vec![i; 32];
        let rec = |user: &str, created_ms: u64, expires_ms: u64| SessionRecord {
            user: user.into(),
            created_ms,
            expires_ms,
            credential: [0; 32],
        };
        let sessions = vec![
            (k(1), rec("bob", 100, 500)),   // expired
            (k(2), rec("eve", 100, 5_000)), // other user, live
            (k(3), rec("bob", 300, 5_000)),
            (k(4), rec("bob", 200, 5_000)),
            (k(5), rec("eve", 50, 900)), // expired
        ];
        // Max 2 per user: bob keeps his newest one plus the new session.
        let mut p = sessions_to_prune(&sessions, "bob", 1_000, 2);
        p.sort();
        assert_eq!(p, vec![k(1), k(4), k(5)]);
        // Max 3: nothing of bob's live sessions goes.
        let mut p = sessions_to_prune(&sessions, "bob", 1_000, 3);
        p.sort();
        assert_eq!(p, vec![k(1), k(5)]);
        // Through the store: the bound holds.
        let (_d, s) = store();
        let bob = user("bob", Role::Viewer, "$argon2id$b");
        add_user(&s, &bob).unwrap().unwrap();
        for i in 0..(MAX_SESSIONS_PER_USER as u64 + 5) {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&i.to_be_bytes());
            open_session(&s, &key, &session(&bob, 2_000 + i, 100_000), 2_000 + i).unwrap();
        }
        assert_eq!(sessions_of(&s, "bob").unwrap().len(), MAX_SESSIONS_PER_USER);
    }
}
