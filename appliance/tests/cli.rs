//! The `outpost` command-line contract (DESIGN.md § Interfaces).

use std::process::Command;

fn outpost(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .output()
        .expect("run outpost")
}

#[test]
fn help_lists_the_documented_commands_and_flags() {
    let top = String::from_utf8(outpost(&["--help"]).stdout).unwrap();
    for cmd in ["serve", "ca-fingerprint", "token", "devices", "device"] {
        assert!(top.contains(cmd), "missing {cmd} in:\n{top}");
    }
    let serve = String::from_utf8(outpost(&["serve", "--help"]).stdout).unwrap();
    for flag in [
        "--data",
        "--config",
        "--quic-listen",
        "--admin-listen",
        "--cache-listen",
    ] {
        assert!(serve.contains(flag), "missing {flag} in:\n{serve}");
    }
}

#[test]
fn ca_fingerprint_without_data_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = outpost(&[
        "ca-fingerprint",
        "--data",
        dir.path().join("none").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "errors go to stderr only");
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("outpost serve"), "{err}");
}

#[test]
fn admin_commands_without_a_running_appliance_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let o = outpost(&["devices", "--data", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.contains("admin.addr") && err.contains("running"),
        "{err}"
    );
}
