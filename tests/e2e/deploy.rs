//! Patch deployment wiring end to end (issue 15): the CLI reaches the
//! running appliance's approvals and deployments API; unknown patches are
//! refused with their name, a deployment with nothing approved with the
//! reason, and schedules and metrics are served. (The orchestrator's
//! behaviour is tested in `appliance/src/deploy/`.)

use outpost_tests::{Agent, Appliance, scratch, stderr};
use serde_json::Value;

#[test]
fn approvals_deployments_and_schedules_are_served_through_the_cli() {
    let tmp = scratch("deploy-wiring");
    let app = Appliance::start(tmp.path());
    let agent = Agent::enroll(tmp.path(), "a1", &app);
    let dev = agent.device_id.clone();

    let out = app.cli_ok(&[
        "approval-rules",
        "add",
        "sec",
        "--scope",
        "tenant:acme",
        "--security-only",
        "--delay-days",
        "7",
    ]);
    assert_eq!(out.trim(), "sec");
    let rules: Value = serde_json::from_str(&app.cli_ok(&["approval-rules", "list", "--json"]))
        .expect("rules as JSON");
    assert_eq!(rules[0]["id"], "sec", "{rules}");
    assert_eq!(rules[0]["rule"]["delay_days"], 7, "{rules}");

    let o = app.cli(&["patches", "approve", "nginx=1.0-1", "--scope", "tag:web"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));
    assert!(stderr(&o).contains("nginx=1.0-1"), "{}", stderr(&o));

    let a: Value =
        serde_json::from_str(&app.cli_ok(&["patches", "approvals", "--device", &dev, "--json"]))
            .unwrap();
    assert_eq!(a["assessed"], false, "{a}");
    assert_eq!(a["scopes"]["customer"], "dental", "{a}");

    let o = app.cli(&["deployments", "create", "--all"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no patch is approved for all devices"),
        "{}",
        stderr(&o)
    );
    assert_eq!(app.cli_ok(&["deployments", "list", "--json"]).trim(), "[]");
    let o = app.cli(&["deployments", "pause", "nope"]);
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));

    let out = app.cli_ok(&[
        "deployments",
        "schedule",
        "add",
        "tuesday",
        "--days",
        "tue",
        "--start",
        "02:00",
        "--tz",
        "Europe/Berlin",
        "--tag",
        "servers",
        "--security-only",
    ]);
    assert_eq!(out.trim(), "tuesday");
    let list = app.cli_ok(&["deployments", "schedule", "list"]);
    assert!(list.contains("tue 02:00 180m Europe/Berlin"), "{list}");
    app.cli_ok(&["deployments", "schedule", "remove", "tuesday"]);

    let m = app.metrics_text();
    assert!(m.contains("outpost_deployments{state=\"paused\"}"), "{m}");
    assert!(m.contains("outpost_deploy_gate_failures_total"), "{m}");
    let rules: Value = app.api("/api/v1/alert-rules").unwrap();
    assert!(
        rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "builtin-deploy-gate"),
        "{rules}"
    );
}
