//! apt/dpkg install output and `dpkg --audit`: parsed without panics,
//! within the parser's bounds, and the rollback plan of whatever changes
//! were read is built without panics and names each change once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_patch::install::outcome::MAX_ITEMS;
use outpost_patch::install::{parse_apt_output, parse_dpkg_audit, plan_rollback};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let out = parse_apt_output(&text);
    assert!(out.changes.len() <= MAX_ITEMS && out.failures.len() <= MAX_ITEMS);
    assert!(out.changes.iter().all(|c| !c.name.is_empty()));
    if out.lock.is_some() || out.held_refused || !out.failures.is_empty() {
        assert!(!out.succeeded());
    }
    let plan = plan_rollback(&out.changes, &[], None);
    assert!(plan.steps.len() <= out.changes.len());
    assert!(parse_dpkg_audit(&text).len() <= MAX_ITEMS);
});
