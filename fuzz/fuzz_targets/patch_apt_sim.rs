//! `apt-get -s dist-upgrade` output: parsed without panics, security
//! flags agree with the origins, and a device with these upgrades is
//! assessed without panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_patch::assess::{Policy, assess_device};
use outpost_patch::catalog::Catalog;
use outpost_patch::scan::{Scan, is_security_origin, parse_apt_simulation, parse_os_release};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let plan = parse_apt_simulation(&text);
    for u in &plan.upgrades {
        assert_eq!(u.security, u.origins.iter().any(|o| is_security_origin(o)));
    }
    let mut scan = Scan::new_dpkg(
        0,
        parse_os_release("ID=debian\nVERSION_CODENAME=bookworm\n"),
    );
    scan.upgrades = plan.upgrades;
    scan.normalize();
    let a = assess_device(&scan, &Catalog::new(), &Policy::default(), None, 0);
    assert!(a.patches.len() <= scan.upgrades.len());
});
