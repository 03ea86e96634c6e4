//! The scan model, its deltas and assessments go over the device session
//! and the uplink in the project's one bincode configuration
//! (`outpost_proto::codec`: standard, little endian, varint): they must
//! round-trip through it (no skipped fields, no internally tagged enums).

use bincode::config::standard;
use outpost_patch::assess::{Policy, assess_device};
use outpost_patch::catalog::tracker::import_debian_tracker;
use outpost_patch::catalog::{Catalog, ImportOptions};
use outpost_patch::scan::{
    Scan, ScanDelta, dpkg_reboot_state, parse_apt_simulation, parse_dpkg_query, parse_os_release,
    parse_rpm_query,
};

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    let config = standard().with_little_endian().with_variable_int_encoding();
    let bytes = bincode::serde::encode_to_vec(value, config).expect("encodes");
    let (back, read) = bincode::serde::decode_from_slice(&bytes, config).expect("decodes");
    assert_eq!(read, bytes.len());
    back
}

fn scan() -> Scan {
    let mut s = Scan::new_dpkg(
        1_700_000_000_000,
        parse_os_release("ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n"),
    );
    let out = parse_dpkg_query(
        "ii \tlibssl3\tamd64\t3.0.11-1~deb12u2\topenssl\t3.0.11-1~deb12u2\n\
         hi \tbash\tamd64\t5.2.15-2+b8\tbash\t5.2.15-2\n\
         ii \ta-package-with-a-name-longer-than-22-bytes\tall\t1:2.0-1\ta-package-with-a-name-longer-than-22-bytes\t1:2.0-1\n\
         zz \tbroken\tamd64\t1\tbroken\t1\n",
    );
    s.dpkg = out.packages;
    s.problems = out.problems;
    s.upgrades = parse_apt_simulation(
        "Inst libssl3 [3.0.11-1~deb12u2] (3.0.15-1~deb12u1 Debian-Security:12/stable-security [amd64])\n",
    )
    .upgrades;
    s.reboot = dpkg_reboot_state(true, Some("libssl3\n"), Some("6.1.0-18-amd64"), &s.dpkg);
    s.indexes.error = Some("apt-get update failed".into());
    s.normalize();
    s
}

#[test]
fn scans_deltas_and_assessments_round_trip_through_the_wire_codec() {
    let s = scan();
    let back = round_trip(&s);
    assert_eq!(back.digest(), s.digest());
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(&s).unwrap()
    );

    let mut rpm = Scan::new_rpm(5, parse_os_release("ID=rhel\nVERSION_ID=9.3\n"));
    rpm.rpm =
        parse_rpm_query("bash\t(none)\t5.1.8\t9.el9\tx86_64\tbash-5.1.8-9.el9.src.rpm\n").packages;
    assert_eq!(round_trip(&rpm).digest(), rpm.digest());

    let delta: ScanDelta = Scan::new_dpkg(0, Default::default()).diff(&s);
    assert_eq!(round_trip(&delta), delta);

    let json = r#"{"openssl": {"CVE-2024-0001": {"releases": {"bookworm":
        {"status": "resolved", "fixed_version": "3.0.13-1~deb12u1", "urgency": "high"}}}}}"#;
    let catalog = Catalog::new().with_source(
        import_debian_tracker(json.as_bytes(), ImportOptions::new("t", "t", 0)).unwrap(),
    );
    let a = assess_device(&s, &catalog, &Policy::default(), None, 1_700_000_100_000);
    assert_eq!(a.fixable().count(), 1);
    assert_eq!(round_trip(&a), a);
}
