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

#[test]
fn install_requests_and_device_statuses_round_trip_through_the_wire_codec() {
    use outpost_patch::install::wire::{
        DeviceStatus, InstallRequest, Phase, RebootPolicy, RollbackRequest, ScriptStep,
    };
    use outpost_patch::install::{BinaryTarget, KeptDeb, PackageChange};
    let req = InstallRequest {
        deployment: "dep-7".into(),
        attempt: 2,
        targets: vec![BinaryTarget {
            name: "libssl3".into(),
            arch: Some("amd64".into()),
            version: "3.0.15-1~deb12u1".into(),
        }],
        proxy: Some("http://10.0.0.2:3142".into()),
        reboot: RebootPolicy::IfRequired,
        min_free_root_bytes: 500 << 20,
        keep_previous_debs: true,
        pre_script: Some(ScriptStep {
            name: "stop-app".into(),
            version: 3,
            interpreter: "sh".into(),
            body: "systemctl stop app".into(),
            timeout_ms: 60_000,
        }),
        post_script: None,
        snapshot: false,
    };
    assert_eq!(round_trip(&req), req);
    let change = PackageChange {
        name: "libssl3".into(),
        arch: Some("amd64".into()),
        from: Some("3.0.11-1~deb12u2".into()),
        to: Some("3.0.15-1~deb12u1".into()),
        configured: true,
    };
    let kept = KeptDeb {
        name: "libssl3".into(),
        arch: "amd64".into(),
        version: "3.0.11-1~deb12u2".into(),
        path: "/var/lib/outpost-agent/debs/libssl3_3.0.11-1~deb12u2_amd64.deb".into(),
        sha256: "ab".repeat(32),
    };
    let rb = RollbackRequest {
        deployment: "dep-7".into(),
        attempt: 2,
        install_command: "dep-7/dev/install/2".into(),
        changes: vec![change.clone()],
        kept: vec![kept.clone()],
        proxy: None,
    };
    assert_eq!(round_trip(&rb), rb);
    let status = DeviceStatus {
        command: "dep-7/dev/install/2".into(),
        deployment: "dep-7".into(),
        attempt: 2,
        rollback: false,
        phase: Phase::Failed,
        reason: Some("preinst of libssl3 exited 1".into()),
        changes: vec![change],
        kept: vec![kept],
        skipped: vec!["nginx: held at 1.22.1-9".into()],
        snapshot: None,
        boot_id: Some("0f1e".into()),
        reboot_required: false,
        log_tail: "dpkg: error processing archive".into(),
        at_ms: 1_700_000_000_000,
    };
    assert_eq!(round_trip(&status), status);
    assert!(status.phase.is_final() && !Phase::RebootPending.is_final());
}
