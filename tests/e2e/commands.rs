//! Remote commands end to end: real appliance and agent processes. Output
//! and exit code through `outpost commands run --wait`; a timeout kills a
//! child that ignores SIGTERM and its grandchildren; cancel while running;
//! a command for an offline agent runs once when it connects; `kill -9` of
//! the appliance between send and result and of the agent mid-run never
//! runs a command twice (a side effect counted in a file) and ends in a
//! terminal state; a viewer is refused.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use outpost_tests::{Agent, Appliance, http_raw, http_request, scratch, stderr, stdout, wait_for};
use serde_json::{Value, json};

/// An agent with a short kill grace (so timeouts end quickly), started.
fn agent(root: &Path, name: &str, app: &Appliance, start: bool) -> Agent {
    crate::remote::agent_with(root, name, app, "", start)
}

/// Queues a command through the CLI and returns its id.
fn queue(app: &Appliance, device: &str, line: &str, extra: &[&str]) -> String {
    let mut args = vec!["commands", "run", "--device", device];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", line]);
    app.cli_ok(&args).trim().to_string()
}

fn show(app: &Appliance, id: &str) -> Value {
    app.api(&format!("/api/v1/commands/{id}"))
        .expect("show command")
}

fn wait_state(app: &Appliance, id: &str, secs: u64, pred: impl Fn(&str) -> bool) -> Value {
    wait_for(
        Duration::from_secs(secs),
        &format!("command {id} state"),
        || {
            let v = show(app, id);
            pred(v["state"].as_str().unwrap_or("")).then_some(v)
        },
    )
}

fn terminal(s: &str) -> bool {
    !matches!(s, "queued" | "sent" | "running")
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_command_returns_its_output_and_exit_code_and_a_viewer_may_not_run_one() {
    let tmp = scratch("cmd-output");
    let app = Appliance::start(tmp.path());
    let a = agent(tmp.path(), "a1", &app, true);
    let dev = a.device_id.clone();

    // --wait prints the output (stdout and stderr) and exits with the code.
    let o = app.cli(&[
        "commands",
        "run",
        "--device",
        &dev,
        "--wait",
        "--",
        "echo hello; echo oops >&2; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello\noops\n");
    // Several words are quoted and joined.
    let o = app.cli(&[
        "commands", "run", "--device", &dev, "--wait", "--", "printf", "%s|", "a b", "c",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "a b|c|");

    let list: Vec<Value> = app.api(&format!("/api/v1/commands?device={dev}")).unwrap();
    assert_eq!(list.len(), 2);
    let failed = list
        .iter()
        .find(|c| c["state"] == "failed")
        .expect("failed one");
    assert_eq!(failed["exit_code"], 3);
    let states: Vec<&str> = failed["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "sent", "running", "failed"]);
    let text = app.cli_ok(&["commands", "list", "--state", "completed"]);
    assert!(
        text.contains("completed") && !text.contains("failed"),
        "{text}"
    );

    // An unknown device: 404 naming it.
    let o = app.cli(&[
        "commands",
        "run",
        "--device",
        "00000000000000aa",
        "--",
        "true",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("00000000000000aa"), "{}", stderr(&o));
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));

    // A viewer reads but may not run or cancel.
    let cookie = crate::remote::login_as(&app, "vera", "viewer", "viewer-pass-1");
    let run = json!({"device": dev, "command": "touch /tmp/viewer-was-here"}).to_string();
    let (s, _, out) = http_raw(
        app.admin,
        "POST",
        "/api/v1/commands",
        &[("Cookie", &cookie), ("Content-Type", "application/json")],
        &run,
    );
    assert_eq!(s, 403, "{out}");
    let (s, _, _) = http_raw(
        app.admin,
        "GET",
        "/api/v1/commands",
        &[("Cookie", &cookie)],
        "",
    );
    assert_eq!(s, 200);
    let list: Vec<Value> = app.api("/api/v1/commands").unwrap();
    assert_eq!(list.len(), 2, "the viewer's command was not queued");
    // The audit log has the runs and their results.
    let audit: Vec<Value> = app.api("/api/v1/audit").unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["action"] == "command.run")
            .count(),
        2
    );
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["action"] == "command.result")
            .count(),
        2
    );
    assert!(app.metric("outpost_commands_transitions_total{state=\"completed\"}") >= 1.0);
    assert!(app.metric("outpost_commands_refusals_total{reason=\"unknown_device\"}") >= 1.0);
}

#[test]
fn a_timeout_kills_a_child_that_ignores_sigterm_and_its_grandchildren() {
    let tmp = scratch("cmd-timeout");
    let app = Appliance::start(tmp.path());
    let a = agent(tmp.path(), "a1", &app, true);
    let mark = tmp.path().join("grandchild-alive");
    let line = format!(
        "trap '' TERM; (trap '' TERM; sleep 3; echo alive > {m}) & echo started; while :; do sleep 0.2; done",
        m = mark.display()
    );
    let o = app.cli(&[
        "commands",
        "run",
        "--device",
        &a.device_id,
        "--timeout",
        "1s",
        "--wait",
        "--",
        &line,
    ]);
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    assert_eq!(stdout(&o), "started\n", "the output so far is kept");
    std::thread::sleep(Duration::from_secs(4));
    assert!(!mark.exists(), "a grandchild survived the timeout");
    let list: Vec<Value> = app.api("/api/v1/commands").unwrap();
    assert_eq!(list[0]["state"], "timed_out");
}

#[test]
fn a_running_command_is_cancelled_and_a_queued_one_never_sent() {
    let tmp = scratch("cmd-cancel");
    let app = Appliance::start(tmp.path());
    let mut a = agent(tmp.path(), "a1", &app, true);
    let id = queue(&app, &a.device_id, "echo begun; sleep 60", &[]);
    wait_state(&app, &id, 30, |s| s == "running");
    let out = app.cli_ok(&["commands", "cancel", &id]);
    assert!(out.contains(&id), "{out}");
    let v = wait_state(&app, &id, 30, terminal);
    assert_eq!(v["state"], "cancelled");
    assert_eq!(v["output"], "begun\n");
    // Cancelling again: refused, it is finished.
    let o = app.cli(&["commands", "cancel", &id]);
    assert!(!o.status.success() && stderr(&o).contains("already finished"));

    // Offline: a queued command is cancelled before it is ever sent.
    a.stop();
    let marker = tmp.path().join("never");
    let id = queue(
        &app,
        &a.device_id,
        &format!("touch {}", marker.display()),
        &[],
    );
    assert_eq!(show(&app, &id)["state"], "queued");
    app.cli_ok(&["commands", "cancel", &id]);
    assert_eq!(show(&app, &id)["state"], "cancelled");
    a.start();
    let probe = queue(&app, &a.device_id, "true", &[]);
    wait_state(&app, &probe, 30, |s| s == "completed");
    assert!(!marker.exists(), "a cancelled queued command ran");
}

#[test]
fn a_command_for_an_offline_agent_runs_once_when_it_connects() {
    let tmp = scratch("cmd-offline");
    let app = Appliance::start(tmp.path());
    let mut a = agent(tmp.path(), "a1", &app, false);
    let counter = tmp.path().join("count");
    let id = queue(
        &app,
        &a.device_id,
        &format!("echo ran >> {}", counter.display()),
        &[],
    );
    assert_eq!(show(&app, &id)["state"], "queued");
    a.start();
    let v = wait_state(&app, &id, 60, terminal);
    assert_eq!(v["state"], "completed", "{v}");
    // Reconnects do not run it again.
    a.stop();
    a.start();
    let probe = queue(&app, &a.device_id, "true", &[]);
    wait_state(&app, &probe, 30, |s| s == "completed");
    assert_eq!(lines(&counter), 1);
}

#[test]
fn kill_9_of_the_appliance_between_send_and_result_never_runs_a_command_twice() {
    let tmp = scratch("cmd-kill-appliance");
    let mut app = Appliance::start(tmp.path());
    let a = agent(tmp.path(), "a1", &app, true);
    let counter = tmp.path().join("count");
    let id = queue(
        &app,
        &a.device_id,
        &format!("echo ran >> {}; sleep 3; echo finished", counter.display()),
        &[],
    );
    wait_state(&app, &id, 30, |s| s == "running");
    app.kill9();
    app.restart();
    let v = wait_state(&app, &id, 60, terminal);
    assert_eq!(v["state"], "completed", "{v}");
    assert!(v["output"].as_str().unwrap().contains("finished"), "{v}");
    assert_eq!(lines(&counter), 1, "the command ran twice");
    drop(a);
}

#[test]
fn kill_9_of_the_agent_mid_run_reports_interrupted_and_never_reruns() {
    let tmp = scratch("cmd-kill-agent");
    let app = Appliance::start(tmp.path());
    let mut a = agent(tmp.path(), "a1", &app, true);
    let counter = tmp.path().join("count");
    let id = queue(
        &app,
        &a.device_id,
        &format!("echo ran >> {}; sleep 20", counter.display()),
        &[],
    );
    wait_state(&app, &id, 30, |s| s == "running");
    a.kill9();
    a.start();
    let v = wait_state(&app, &id, 60, terminal);
    assert_eq!(v["state"], "interrupted", "{v}");
    let probe = queue(&app, &a.device_id, "true", &[]);
    wait_state(&app, &probe, 30, |s| s == "completed");
    assert_eq!(lines(&counter), 1, "the command ran twice");
    // The revoked device is refused.
    app.cli_ok(&["device", "revoke", &a.device_id]);
    let (s, body) = http_request(
        app.admin,
        "POST",
        "/api/v1/commands",
        Some(&app.admin_token()),
        Some(&json!({"device": a.device_id, "command": "true"}).to_string()),
    )
    .unwrap();
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("revoked"), "{body}");
}

#[test]
fn restart_service_runs_systemctl_on_the_device_and_reports_the_unit_state() {
    // Restarting a real unit would disturb the machine running the tests:
    // a unit that does not exist proves the wiring (systemctl's failure and
    // the unit's state come back). Without systemd, systemctl fails too and
    // the output says so.
    let tmp = scratch("cmd-restart-service");
    let app = Appliance::start(tmp.path());
    let a = agent(tmp.path(), "a1", &app, true);
    let o = app.cli(&[
        "device",
        "restart-service",
        &a.device_id,
        "outpost-no-such-unit.service",
    ]);
    assert!(!o.status.success(), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.contains("outpost-no-such-unit.service:"), "{out}");
    if Path::new("/run/systemd/system").exists() {
        assert!(out.contains("inactive") || out.contains("unknown"), "{out}");
    } else {
        eprintln!("systemd is not running here: only the failure path is checked");
    }
    let list: Vec<Value> = app.api("/api/v1/commands").unwrap();
    assert_eq!(list[0]["state"], "failed");
    assert_eq!(
        list[0]["command"],
        "restart-service outpost-no-such-unit.service"
    );
    // A reboot is refused until it has its guard.
    let (s, body) = http_request(
        app.admin,
        "POST",
        "/api/v1/commands",
        Some(&app.admin_token()),
        Some(&json!({"device": a.device_id, "action": {"reboot": {"delay_ms": 0}}}).to_string()),
    )
    .unwrap();
    assert_eq!(s, 400, "{body}");
}

#[test]
fn a_queued_script_run_keeps_its_version_when_the_script_is_edited() {
    let tmp = scratch("cmd-scripts");
    let app = Appliance::start(tmp.path());
    let mut a = agent(tmp.path(), "a1", &app, false);
    let v1 = tmp.path().join("v1.sh");
    std::fs::write(&v1, "echo \"v1 $1\"\n").unwrap();
    let v2 = tmp.path().join("v2.sh");
    std::fs::write(&v2, "echo \"v2 $1\"\n").unwrap();
    let out = app.cli_ok(&["scripts", "add", "greet", "--file", v1.to_str().unwrap()]);
    assert_eq!(out.trim(), "greet v1");
    // Adding it again is refused; editing makes version 2.
    let o = app.cli(&["scripts", "add", "greet", "--file", v1.to_str().unwrap()]);
    assert!(
        !o.status.success() && stderr(&o).contains("exists"),
        "{}",
        stderr(&o)
    );
    // Queued while the device is offline: version 1.
    let queued = app
        .cli_ok(&[
            "scripts",
            "run",
            "greet",
            "--device",
            &a.device_id,
            "--",
            "world",
        ])
        .trim()
        .to_string();
    let out = app.cli_ok(&["scripts", "edit", "greet", "--file", v2.to_str().unwrap()]);
    assert_eq!(out.trim(), "greet v2");
    a.start();
    let v = wait_state(&app, &queued, 60, terminal);
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["output"], "v1 world\n");
    assert_eq!(v["command"], "script greet v1");
    // A new run takes the newest version; an older one on request.
    let o = app.cli(&[
        "scripts",
        "run",
        "greet",
        "--device",
        &a.device_id,
        "--wait",
        "--",
        "x",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "v2 x\n");
    let o = app.cli(&[
        "scripts",
        "run",
        "greet",
        "--device",
        &a.device_id,
        "--version",
        "1",
        "--wait",
    ]);
    assert_eq!(stdout(&o), "v1 \n");
    assert!(
        app.cli_ok(&["scripts", "show", "greet", "--version", "1"])
            .contains("v1 $1")
    );
    assert!(app.cli_ok(&["scripts", "list"]).contains("greet"));
    // Unknown script: 404 with its name.
    let o = app.cli(&["scripts", "run", "nope", "--device", &a.device_id]);
    assert!(
        stderr(&o).contains("404") && stderr(&o).contains("nope"),
        "{}",
        stderr(&o)
    );
    let audit: Vec<Value> = app.api("/api/v1/audit").unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "script.edit" && e["detail"] == "version 2")
    );
}

#[test]
fn a_bulk_run_over_several_agents_keeps_its_concurrency_and_a_cancel_stops_the_queued() {
    let tmp = scratch("cmd-bulk");
    let app = Appliance::start(tmp.path());
    let a1 = agent(tmp.path(), "a1", &app, true);
    let a2 = agent(tmp.path(), "a2", &app, true);
    let a3 = agent(tmp.path(), "a3", &app, false);
    for a in [&a1, &a2] {
        let (s, b) = app.api_send(
            "PUT",
            &format!("/api/v1/devices/{}/tags", a.device_id),
            Some(&json!(["web"])),
        );
        assert_eq!(s, 200, "{b}");
    }
    // Wait for both sessions (a probe each).
    for a in [&a1, &a2] {
        let p = queue(&app, &a.device_id, "true", &[]);
        wait_state(&app, &p, 30, |s| s == "completed");
    }
    // Concurrency 1: the two devices never run at the same time.
    let log = tmp.path().join("log");
    let line = format!(
        "echo start >> {l}; sleep 1; echo end >> {l}",
        l = log.display()
    );
    let out = app.cli_ok(&[
        "commands",
        "bulk",
        "--tag",
        "web",
        "--concurrency",
        "1",
        "--wait",
        "--",
        &line,
    ]);
    assert!(out.contains("done 2"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "start\nend\nstart\nend\n",
        "the two ran at once"
    );
    let runs: Vec<Value> = app.api("/api/v1/commands/bulk").unwrap();
    assert_eq!(runs.len(), 1);
    let run_id = runs[0]["id"].as_str().unwrap().to_string();
    let v: Value = app.api(&format!("/api/v1/commands/bulk/{run_id}")).unwrap();
    assert_eq!(v["summary"]["done"], 2, "{v}");
    assert_eq!(v["devices"].as_array().unwrap().len(), 2);
    for m in v["devices"].as_array().unwrap() {
        assert_eq!(m["state"], "completed");
        let c = show(&app, m["command"].as_str().unwrap());
        assert_eq!(c["device"], m["device"]);
    }

    // All devices, one offline: it stays pending; a cancel removes it.
    let marker = tmp.path().join("never");
    let (s, v) = app.api_post(
        "/api/v1/commands/bulk",
        &json!({"target": "all", "command": format!("touch {}.$(hostname)-$$", marker.display()), "concurrency": 5}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["summary"]["total"], 3);
    let id = v["id"].as_str().unwrap().to_string();
    let v = wait_for(Duration::from_secs(30), "two of three done", || {
        let v: Value = app.api(&format!("/api/v1/commands/bulk/{id}")).unwrap();
        (v["summary"]["done"] == 2).then_some(v)
    });
    assert_eq!(v["summary"]["pending"], 1, "{v}");
    assert_eq!(v["summary"]["finished"], false);
    let out = app.cli_ok(&["commands", "bulk-cancel", &id]);
    assert!(out.contains("cancelled 1"), "{out}");
    let out = app.cli_ok(&["commands", "bulk-show", &id]);
    assert!(
        out.contains(&a3.device_id) && out.contains("cancelled"),
        "{out}"
    );
    let v: Value = app.api(&format!("/api/v1/commands/bulk/{id}")).unwrap();
    assert_eq!(v["summary"]["finished"], true, "{v}");
    assert!(v["cancelled_by"].is_string());

    // Bad targets: an unknown tag or device is a 404 naming it.
    let (s, v) = app.api_post(
        "/api/v1/commands/bulk",
        &json!({"target": {"tag": "nope"}, "command": "true"}),
    );
    assert_eq!(s, 404, "{v}");
    assert!(v.to_string().contains("nope"), "{v}");
    let (s, v) = app.api_post(
        "/api/v1/commands/bulk",
        &json!({"target": {"devices": ["00000000000000ff"]}, "command": "true"}),
    );
    assert_eq!(s, 404, "{v}");
    assert!(v.to_string().contains("00000000000000ff"), "{v}");
    // One audit entry per run (and per cancel).
    let audit: Vec<Value> = app.api("/api/v1/audit").unwrap();
    let n = |a: &str| audit.iter().filter(|e| e["action"] == a).count();
    assert_eq!(n("command.bulk"), 2);
    assert_eq!(n("command.bulk_cancel"), 1);
}

#[test]
fn a_reboot_needs_confirmation_is_refused_during_an_install_and_completes_on_a_new_boot_id() {
    let tmp = scratch("cmd-reboot");
    let app = Appliance::start(tmp.path());
    let mut a = Agent::enroll(tmp.path(), "a1", &app);
    let boot = tmp.path().join("boot_id");
    std::fs::write(&boot, "boot-1\n").unwrap();
    let lock = tmp.path().join("lock-frontend");
    let count = tmp.path().join("reboots");
    // The "reboot": counted, then the agent dies as with a real reboot.
    let script = format!(
        "echo \"$OUTPOST_REBOOT_DELAY_S\" >> {}; kill -9 \"$OUTPOST_AGENT_PID\"",
        count.display()
    );
    std::fs::write(
        a.state.join("agent.toml"),
        format!(
            "package_scan = false\nreboot_command = {script:?}\ndpkg_lock = {:?}\nboot_id_path = {:?}\n",
            lock.display().to_string(),
            boot.display().to_string()
        ),
    )
    .unwrap();
    a.start();
    let probe = queue(&app, &a.device_id, "true", &[]);
    wait_state(&app, &probe, 30, |s| s == "completed");

    // Without confirmation: refused by the CLI and the API.
    let o = app.cli(&["device", "reboot", &a.device_id]);
    assert!(!o.status.success() && stderr(&o).contains("--confirm"));
    let (s, v) = app.api_post(
        "/api/v1/commands",
        &json!({"device": a.device_id, "action": {"reboot": {"delay_s": 0}}}),
    );
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("confirm"), "{v}");

    // A package install holds the dpkg lock: refused with the reason.
    let ready = tmp.path().join("ready");
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg("import fcntl,sys,time\nf=open(sys.argv[1],'w')\nfcntl.lockf(f,fcntl.LOCK_EX)\nopen(sys.argv[2],'w').close()\ntime.sleep(60)")
        .arg(&lock)
        .arg(&ready)
        .spawn()
        .expect("python3 holds the lock");
    wait_for(Duration::from_secs(10), "the lock holder", || {
        ready.exists().then_some(())
    });
    let o = app.cli(&["device", "reboot", &a.device_id, "--confirm"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("package install is running"),
        "{}",
        stderr(&o)
    );
    assert!(!count.exists(), "the reboot ran during an install");

    // Confirmed, no install: the agent records boot-1, runs the reboot
    // command (which kills it), stays running.
    let id = app
        .cli_ok(&[
            "device",
            "reboot",
            &a.device_id,
            "--confirm",
            "--delay",
            "90s",
            "--no-wait",
        ])
        .trim()
        .to_string();
    // The agent records it durably before running the reboot command, but
    // the kill may come before its ack or `started` frame leaves the
    // socket: the appliance may learn of it only after the restart below.
    wait_for(
        Duration::from_secs(30),
        "the agent killed by the reboot",
        || a.proc.as_mut().and_then(|p| p.try_exit()),
    );
    a.proc = None;
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "90\n");
    // The agent starts again with the same boot id: not rebooted, still running.
    a.start();
    // Re-sent on the new session, deduplicated by the agent's ledger: acked,
    // not run again, and still open (the boot id did not change).
    let v = wait_for(Duration::from_secs(30), "the reboot acked", || {
        let v = show(&app, &id);
        (v["acked"] == true).then_some(v)
    });
    std::thread::sleep(Duration::from_secs(2));
    let st = show(&app, &id)["state"].as_str().unwrap().to_string();
    assert!(st == "sent" || st == "running", "{st} {v}");
    assert_eq!(lines(&count), 1, "the reboot ran again after the restart");
    a.stop();
    // Back on a new boot id: completed, both ids in the output, run once.
    std::fs::write(&boot, "boot-2\n").unwrap();
    a.start();
    let v = wait_state(&app, &id, 60, terminal);
    assert_eq!(v["state"], "completed", "{v}");
    let out = v["output"].as_str().unwrap();
    assert!(
        out.contains("boot id boot-1") && out.contains("boot id boot-2"),
        "{out}"
    );
    assert_eq!(lines(&count), 1, "the reboot ran twice");
}

#[test]
fn a_scheduled_reboot_cancelled_before_it_is_due_is_stopped_on_the_device_and_ends_cancelled() {
    let tmp = scratch("cmd-reboot-cancel");
    let app = Appliance::start(tmp.path());
    let mut a = Agent::enroll(tmp.path(), "a1", &app);
    let boot = tmp.path().join("boot_id");
    std::fs::write(&boot, "boot-1\n").unwrap();
    let scheduled = tmp.path().join("scheduled");
    let undone = tmp.path().join("undone");
    std::fs::write(
        a.state.join("agent.toml"),
        format!(
            "package_scan = false\nreboot_command = {:?}\nreboot_cancel_command = {:?}\ndpkg_lock = {:?}\nboot_id_path = {:?}\n",
            format!("echo \"$OUTPOST_REBOOT_DELAY_S\" >> {}", scheduled.display()),
            format!("echo cancelled >> {}", undone.display()),
            tmp.path().join("lock-frontend").display().to_string(),
            boot.display().to_string()
        ),
    )
    .unwrap();
    a.start();
    let id = app
        .cli_ok(&[
            "device",
            "reboot",
            &a.device_id,
            "--confirm",
            "--delay",
            "10m",
            "--no-wait",
        ])
        .trim()
        .to_string();
    wait_for(Duration::from_secs(30), "the reboot scheduled", || {
        scheduled.exists().then_some(())
    });
    wait_state(&app, &id, 30, |s| s == "running");
    // Its scheduling command has ended; the reboot is pending on the device.
    std::thread::sleep(Duration::from_millis(500));
    app.cli_ok(&["commands", "cancel", &id]);
    let v = wait_state(&app, &id, 30, terminal);
    assert_eq!(v["state"], "cancelled", "{v}");
    assert!(
        v["output"].as_str().unwrap().contains("reboot cancelled"),
        "{v}"
    );
    assert_eq!(std::fs::read_to_string(&undone).unwrap(), "cancelled\n");
    assert_eq!(std::fs::read_to_string(&scheduled).unwrap(), "600\n");
}
