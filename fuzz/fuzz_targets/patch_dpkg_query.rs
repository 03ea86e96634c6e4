//! `dpkg-query -W -f` output (and rpm -qa, os-release, reboot files):
//! parsed without panics; the scan built from it survives a diff/apply
//! round trip against an empty scan.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_patch::scan::{
    Scan, dpkg_reboot_state, parse_dpkg_query, parse_os_release, parse_rpm_query,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let out = parse_dpkg_query(&text);
    assert!(out.problems.first.len() <= outpost_patch::scan::Problems::KEPT);
    let _ = parse_rpm_query(&text);
    let os = parse_os_release(&text);
    let _ = os.release();
    let mut scan = Scan::new_dpkg(1, os);
    scan.reboot = dpkg_reboot_state(false, Some(&text), Some("6.1.0-18-amd64"), &out.packages);
    scan.dpkg = out.packages;
    scan.problems = out.problems;
    scan.normalize();
    let mut empty = Scan::new_dpkg(0, Default::default());
    let delta = empty.diff(&scan);
    empty
        .apply(&delta)
        .expect("a fresh delta applies to its base");
    assert_eq!(empty.digest(), scan.digest());
});
