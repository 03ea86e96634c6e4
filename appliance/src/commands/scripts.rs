//! The script library: named, versioned scripts. Editing a script stores
//! a new version; a run records the version it ran (its body travels in
//! the command's spec, so a queued run keeps the version it was queued
//! with whatever edits follow).
//!
//! Table `scripts`: `name | 0x00 | version (4, BE)` → [`ScriptVersion`].
//! Versions are never rewritten or deleted.

use outpost_proto::command::Interpreter;
use outpost_storage::error::Result;
use outpost_storage::{Store, Table};
use serde::{Deserialize, Serialize};

pub const SCRIPTS: Table = Table::new("scripts");

pub use outpost_proto::script::{MAX_BODY_BYTES, validate};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptVersion {
    pub name: String,
    pub version: u32,
    pub interpreter: Interpreter,
    pub body: String,
    /// Timeout of runs that do not give one.
    pub default_timeout_ms: u64,
    /// Names of the positional parameters (`$1`...), for people.
    pub parameters: Vec<String>,
    pub created_ms: u64,
    pub created_by: String,
}

fn key(name: &str, version: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 5);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn prefix(name: &str) -> (Vec<u8>, Vec<u8>) {
    let mut from = name.as_bytes().to_vec();
    from.push(0);
    let mut to = name.as_bytes().to_vec();
    to.push(1);
    (from, to)
}

/// The newest version of `name`.
pub fn latest(store: &Store, name: &str) -> Result<Option<ScriptVersion>> {
    let (from, to) = prefix(name);
    match store.last_in_range(SCRIPTS, &from, &to)? {
        Some((k, _)) => store.get(SCRIPTS, &k),
        None => Ok(None),
    }
}

pub fn get(store: &Store, name: &str, version: u32) -> Result<Option<ScriptVersion>> {
    store.get(SCRIPTS, &key(name, version))
}

/// Every version of `name`, oldest first.
pub fn versions(store: &Store, name: &str) -> Result<Vec<ScriptVersion>> {
    let (from, to) = prefix(name);
    let mut out = Vec::new();
    store.scan(SCRIPTS, &from, Some(&to), |_, v: ScriptVersion| {
        out.push(v);
        true
    })?;
    Ok(out)
}

/// The newest version of every script, by name.
pub fn list(store: &Store) -> Result<Vec<ScriptVersion>> {
    let mut out: Vec<ScriptVersion> = Vec::new();
    store.scan(SCRIPTS, &[], None, |_, v: ScriptVersion| {
        match out.last_mut() {
            Some(last) if last.name == v.name => *last = v,
            _ => out.push(v),
        }
        true
    })?;
    Ok(out)
}

/// Stores `v` as the next version of its script (1 for a new one);
/// returns the version stored. `expect_new`: refuse if the script exists
/// (`Err(Some(latest))`); otherwise refuse if it does not (`Err(None)`).
pub fn put_next(
    store: &Store,
    mut v: ScriptVersion,
    expect_new: bool,
) -> Result<std::result::Result<ScriptVersion, Option<ScriptVersion>>> {
    let cur = latest(store, &v.name)?;
    match (&cur, expect_new) {
        (Some(c), true) => return Ok(Err(Some(c.clone()))),
        (None, false) => return Ok(Err(None)),
        _ => {}
    }
    v.version = cur.map(|c| c.version + 1).unwrap_or(1);
    store.put(SCRIPTS, &key(&v.name, v.version), &v)?;
    Ok(Ok(v))
}

#[cfg(test)]
mod tests {
    use outpost_storage::StoreOptions;

    use super::*;

    fn v(name: &str, body: &str) -> ScriptVersion {
        ScriptVersion {
            name: name.into(),
            version: 0,
            interpreter: Interpreter::Sh,
            body: body.into(),
            default_timeout_ms: 1000,
            parameters: vec![],
            created_ms: 1,
            created_by: "t".into(),
        }
    }

    #[test]
    fn editing_a_script_makes_a_new_version_and_old_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(
            put_next(&s, v("a", "echo 1"), true)
                .unwrap()
                .unwrap()
                .version,
            1
        );
        assert!(
            put_next(&s, v("a", "echo x"), true).unwrap().is_err(),
            "exists"
        );
        assert!(
            put_next(&s, v("b", "echo x"), false).unwrap().is_err(),
            "unknown"
        );
        assert_eq!(
            put_next(&s, v("a", "echo 2"), false)
                .unwrap()
                .unwrap()
                .version,
            2
        );
        // A name that is a prefix of another does not mix with it.
        put_next(&s, v("ab", "echo ab"), true).unwrap().unwrap();
        assert_eq!(latest(&s, "a").unwrap().unwrap().body, "echo 2");
        assert_eq!(get(&s, "a", 1).unwrap().unwrap().body, "echo 1");
        assert_eq!(versions(&s, "a").unwrap().len(), 2);
        let names: Vec<(String, u32)> = list(&s)
            .unwrap()
            .into_iter()
            .map(|v| (v.name, v.version))
            .collect();
        assert_eq!(names, vec![("a".into(), 2), ("ab".into(), 1)]);
    }

    #[test]
    fn bad_names_bodies_and_timeouts_are_refused() {
        assert!(validate("ok-name_1.sh", "echo", 1).is_ok());
        assert!(validate("", "echo", 1).is_err());
        assert!(validate("a/b", "echo", 1).is_err());
        assert!(validate("a", " ", 1).is_err());
        assert!(validate("a", "echo", 0).is_err());
        assert!(validate("a", &"x".repeat(MAX_BODY_BYTES + 1), 1).is_err());
    }
}
