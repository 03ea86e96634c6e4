//! Scaffolding shared by the remote management tests (`commands`,
//! `files`): an agent with its `agent.toml`, and a viewer's session cookie.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use outpost_tests::{Agent, Appliance, bin, http_raw};
use serde_json::json;

/// An agent whose `agent.toml` is `toml` (plus a short kill grace, so
/// timeouts end quickly), started if `start`.
pub fn agent_with(root: &Path, name: &str, app: &Appliance, toml: &str, start: bool) -> Agent {
    let mut a = Agent::enroll(root, name, app);
    // Package scans (apt-get -s, ~2 s of CPU each here) are not what these
    // tests exercise: off unless the test's own settings name them.
    let scans = if toml.contains("package_scan") {
        ""
    } else {
        "package_scan = false\n"
    };
    std::fs::write(
        a.state.join("agent.toml"),
        format!("command_kill_grace = \"500ms\"\n{scans}{toml}"),
    )
    .unwrap();
    if start {
        a.start();
    }
    a
}

/// Adds a local user with `role` and logs in: the session cookie.
pub fn login_as(app: &Appliance, user: &str, role: &str, password: &str) -> String {
    let mut child = Command::new(bin("outpost"))
        .arg("--data")
        .arg(&app.dir)
        .args(["users", "add", user, "--role", role, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let (s, head, body) = http_raw(
        app.admin,
        "POST",
        "/api/v1/login",
        &[("Content-Type", "application/json")],
        &json!({"user": user, "password": password}).to_string(),
    );
    assert_eq!(s, 200, "{body}");
    head.lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or(l.strip_prefix("Set-Cookie: "))
        })
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}
