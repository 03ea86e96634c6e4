//! The `outpost-agent` command-line contract.

use std::process::Command;

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(args)
        .output()
        .expect("run agent")
}

#[test]
fn run_without_enrollment_explains_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let o = agent(&["run", "--state", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.contains("not enrolled") && err.contains("outpost-agent enroll"),
        "{err}"
    );
}

#[test]
fn malformed_fingerprint_is_rejected_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let o = agent(&[
        "enroll",
        "--appliance",
        "127.0.0.1:1",
        "--token",
        "t",
        "--ca-fingerprint",
        "md5:abc",
        "--state",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("sha256:"), "{err}");
}

#[test]
fn sub_second_heartbeat_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = agent(&[
        "run",
        "--state",
        dir.path().to_str().unwrap(),
        "--heartbeat-interval",
        "10ms",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("at least 1s"), "{err}");
}
