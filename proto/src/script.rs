//! Rules of a library script that the site and central share: its name,
//! body and default timeout ([`validate`]). The script records themselves
//! live with their stores (the appliance's `commands::scripts`, central's
//! `scripts`); this module owns no storage and no I/O.

use crate::command::MAX_TIMEOUT_MS;

/// Largest script body.
pub const MAX_BODY_BYTES: usize = 128 * 1024;

/// Checks a script's name and contents.
pub fn validate(name: &str, body: &str, timeout_ms: u64) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "script name {name:?} must be 1-64 characters of [A-Za-z0-9._-]"
        ));
    }
    if body.trim().is_empty() {
        return Err("the script body is empty".into());
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(format!(
            "the script body is {} bytes; the limit is {MAX_BODY_BYTES}",
            body.len()
        ));
    }
    if body.contains('\0') {
        return Err("the script body contains a NUL byte".into());
    }
    if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
        return Err(format!(
            "timeout {timeout_ms} ms is out of range (1 ms to 24 h)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
