//! Enrollment to live device: the newcomer's path.

use std::time::Duration;

use outpost_tests::{Agent, Appliance, num, scratch, text, wait_for};
use serde_json::Value;

#[test]
fn enrolled_agent_is_online_with_real_metrics_and_goes_offline_when_stopped() {
    let tmp = scratch("online");
    let app = Appliance::start(tmp.path());
    let fp = app.fingerprint();
    assert!(fp.starts_with("sha256:") && fp.len() == 71, "{fp}");
    // The appliance prints the same fingerprint on stdout at start.
    let printed = std::fs::read_to_string(tmp.path().join("appliance-1.stdout")).unwrap();
    assert_eq!(printed.trim(), fp);

    let mut agent = Agent::enroll(tmp.path(), "agent", &app);
    agent.start();
    let id = agent.device_id.clone();

    // Online with real metrics within a few seconds.
    let dev = wait_for(
        Duration::from_secs(15),
        "device online with cpu metric",
        || {
            let d = app.device(&id);
            let has_cpu = d["metrics"].as_array()?.iter().any(|m| m["name"] == "cpu");
            (d["status"] == "online" && has_cpu).then_some(d)
        },
    );
    assert_eq!(text(&dev, "tenant"), "acme");
    assert_eq!(text(&dev, "customer"), "dental");
    assert!(!text(&dev, "hostname").is_empty());
    let metrics = dev["metrics"].as_array().unwrap();
    for name in [
        "cpu",
        "memory",
        "swap",
        "load1",
        "processes",
        "memory_total_bytes",
    ] {
        assert!(
            metrics.iter().any(|m| m["name"] == name),
            "missing {name}: {dev}"
        );
    }
    let mem = metrics
        .iter()
        .find(|m| m["name"] == "memory_total_bytes")
        .unwrap();
    assert!(
        mem["value"].as_f64().unwrap() > 1e6,
        "real memory size: {mem}"
    );
    assert!(dev["inventory"]["cpu_cores"].as_u64().unwrap() >= 1);

    // The CLI shows it, as a table and as JSON.
    let table = app.cli_ok(&["devices"]);
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("no row for {id}:\n{table}"));
    assert!(row.contains("online") && row.contains("acme"), "{row}");
    let json: Vec<Value> = serde_json::from_str(&app.cli_ok(&["devices", "--json"])).unwrap();
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["id"], id.as_str());
    assert_eq!(json[0]["connected"], true);

    // Metric history through the API, raw.
    let hist: Value = app
        .api(&format!("/api/v1/devices/{id}/metrics?name=cpu&from=-5m"))
        .unwrap();
    assert_eq!(hist["resolution"], "raw");
    assert!(!hist["points"].as_array().unwrap().is_empty());
    let disk = metrics
        .iter()
        .find(|m| m["name"] == "disk_used_percent")
        .expect("a disk metric");
    let label = disk["label"].as_str().unwrap();
    let hist: Value = app
        .api(&format!(
            "/api/v1/devices/{id}/metrics?name=disk_used_percent&label={label}&from=-5m"
        ))
        .unwrap();
    assert!(
        !hist["points"].as_array().unwrap().is_empty(),
        "labelled series: {hist}"
    );

    // Stop the agent: offline after 2 missed 1 s heartbeats + 1 s grace (+1 s sweep).
    let stopped_at = std::time::Instant::now();
    agent.stop();
    wait_for(Duration::from_secs(10), "device offline", || {
        (app.device(&id)["status"] == "offline").then_some(())
    });
    assert!(
        stopped_at.elapsed() < Duration::from_secs(8),
        "offline took {:?}",
        stopped_at.elapsed()
    );
    let log: Vec<Value> = app
        .api(&format!("/api/v1/devices/{id}/status-log"))
        .unwrap();
    let states: Vec<&str> = log.iter().map(|t| t["to"].as_str().unwrap()).collect();
    assert_eq!(states, vec!["online", "offline"], "{log:?}");
    assert!(num(&log[1], "at_ms") >= num(&log[0], "at_ms"));
    assert!(app.metric("outpost_devices_online") == 0.0);
}

#[test]
fn api_requires_the_admin_token_and_reports_bad_input() {
    let tmp = scratch("api");
    let app = Appliance::start(tmp.path());
    let (status, body) =
        outpost_tests::http_request(app.admin, "GET", "/api/v1/devices", None, None).unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, _) = outpost_tests::http_request(
        app.admin,
        "GET",
        "/api/v1/devices",
        Some("wrong-token-xxxxxxxx"),
        None,
    )
    .unwrap();
    assert_eq!(status, 401);
    let tok = app.admin_token();
    let (status, body) =
        outpost_tests::http_request(app.admin, "GET", "/api/v1/devices/zz", Some(&tok), None)
            .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, _) = outpost_tests::http_request(
        app.admin,
        "GET",
        "/api/v1/devices/00000000000000aa",
        Some(&tok),
        None,
    )
    .unwrap();
    assert_eq!(status, 404);
    let (status, body) = outpost_tests::http_request(
        app.admin,
        "POST",
        "/api/v1/tokens",
        Some(&tok),
        Some(r#"{"tenant":""}"#),
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(app.metric("outpost_rejects_total{reason=\"api_missing_token\"}") >= 1.0);
    assert!(app.metric("outpost_rejects_total{reason=\"api_bad_token\"}") >= 1.0);
    // Token file is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(app.dir.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn api_cli_sends_bodies_inline_and_from_files_and_reports_errors() {
    let tmp = scratch("api-cli");
    let app = Appliance::start(tmp.path());
    let body = r#"{"id":"ops","name":"ops","type":"webhook","url":"http://127.0.0.1:9/hook"}"#;
    let out = app.cli_ok(&["api", "POST", "/api/v1/channels", "--body", body]);
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["id"], "ops", "{out}");
    let file = tmp.path().join("channel.json");
    std::fs::write(&file, body.replace("\"ops\"", "\"ops2\"")).unwrap();
    app.cli_ok(&[
        "api",
        "POST",
        "/api/v1/channels",
        "--body",
        &format!("@{}", file.display()),
    ]);
    let list: Value =
        serde_json::from_str(&app.cli_ok(&["api", "GET", "/api/v1/channels"])).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert!(ids.contains(&"ops") && ids.contains(&"ops2"), "{list}");
    // Bad JSON: non-zero exit, the API's message on stderr.
    let o = app.cli(&["api", "POST", "/api/v1/channels", "--body", "{not json"]);
    assert!(!o.status.success());
    assert!(
        outpost_tests::stderr(&o).contains("400"),
        "{}",
        outpost_tests::stderr(&o)
    );
    // A missing body file is named.
    let o = app.cli(&[
        "api",
        "POST",
        "/api/v1/channels",
        "--body",
        "@/nonexistent/x.json",
    ]);
    assert!(!o.status.success());
    assert!(outpost_tests::stderr(&o).contains("/nonexistent/x.json"));
}

#[test]
fn restart_reuses_the_ca_and_admin_token() {
    let tmp = scratch("reuse");
    let mut app = Appliance::start(tmp.path());
    let fp = app.fingerprint();
    let token = app.admin_token();
    app.stop();
    app.restart();
    assert_eq!(app.fingerprint(), fp);
    assert_eq!(app.admin_token(), token);
}

/// Every error the admin API answers is `{"error": "..."}` (JSON) with a
/// message naming what is wrong: malformed JSON, a missing field, a wrong
/// type, no Content-Type, a wrong method, an unknown route, a bad query
/// parameter, a limit out of range, a ttl that is not a duration.
#[test]
fn every_admin_api_error_is_json_naming_the_field() {
    let tmp = scratch("api-errors");
    let app = Appliance::start(tmp.path());
    let tok = app.admin_token();
    let auth = format!("Bearer {tok}");
    let json = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let bare = [("Authorization", auth.as_str())];
    let error = |(status, head, body): (u16, String, String)| -> (u16, String) {
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{status} {head}\n{body}"
        );
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {body:?}"));
        assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
        (
            status,
            v["error"].as_str().expect("error message").to_string(),
        )
    };
    let send = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        error(outpost_tests::http_raw(
            app.admin, method, path, headers, body,
        ))
    };

    let (st, m) = send("POST", "/api/v1/tokens", &json, "{not json");
    assert_eq!(st, 400, "{m}");
    assert!(m.starts_with("malformed JSON body"), "{m}");
    let (st, m) = send("POST", "/api/v1/tokens", &json, r#"{"customer":"c"}"#);
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("missing field `tenant`"), "{m}");
    let (st, m) = send(
        "POST",
        "/api/v1/tokens",
        &json,
        r#"{"tenant":"a","uses":"x"}"#,
    );
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("uses: invalid type"), "{m}");
    let (st, m) = send("POST", "/api/v1/tokens", &bare, r#"{"tenant":"a"}"#);
    assert_eq!(st, 415, "{m}");
    assert!(m.contains("Content-Type: application/json"), "{m}");
    let (st, m) = send(
        "POST",
        "/api/v1/tokens",
        &json,
        r#"{"tenant":"a","ttl":"forever"}"#,
    );
    assert_eq!(st, 400, "{m}");
    assert!(
        m.starts_with("ttl \"forever\" is not a duration") && m.contains("24h"),
        "{m}"
    );
    let (st, m) = send("GET", "/api/v1/tokens", &bare, "");
    assert_eq!(st, 405, "{m}");
    assert!(m.contains("GET is not allowed on /api/v1/tokens"), "{m}");
    let (st, m) = send("DELETE", "/api/v1/cache/stats", &bare, "");
    assert_eq!(st, 405, "{m}");
    let (st, m) = send("POST", "/api/v1/cache/pins", &json, "{}");
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("missing field"), "{m}");
    let (st, m) = send("GET", "/api/v1/nope", &bare, "");
    assert_eq!((st, m.as_str()), (404, "no such route: /api/v1/nope"));
    let (st, _) = send("GET", "/api/v1/devices", &[], "");
    assert_eq!(st, 401);
    let (st, m) = send("GET", "/api/v1/audit?limit=lots", &bare, "");
    assert_eq!(st, 400, "{m}");
    assert!(m.starts_with("invalid query string: limit"), "{m}");
    // Every limited route refuses a limit outside its range, saying which.
    let agent = Agent::enroll(tmp.path(), "agent-e", &app);
    let id = &agent.device_id;
    for (path, max) in [
        ("/api/v1/audit?", 100_000),
        ("/api/v1/alerts?", 100_000),
        (
            &format!("/api/v1/devices/{id}/metrics?name=cpu&") as &str,
            100_000,
        ),
        (&format!("/api/v1/devices/{id}/heartbeats?"), 100_000),
        (&format!("/api/v1/devices/{id}/status-log?"), 100_000),
    ] {
        for limit in [0, max + 1] {
            let (st, m) = send("GET", &format!("{path}limit={limit}"), &bare, "");
            assert_eq!(st, 400, "{path}limit={limit}: {m}");
            assert_eq!(m, format!("limit must be between 1 and {max}, not {limit}"));
        }
    }
}

/// `outpost-agent status --state DIR [--json]`.
fn agent_status(agent: &Agent, json: bool) -> std::process::Output {
    let mut cmd = std::process::Command::new(outpost_tests::bin("outpost-agent"));
    cmd.arg("status").arg("--state").arg(&agent.state);
    if json {
        cmd.arg("--json");
    }
    outpost_tests::run(&mut cmd)
}

fn agent_status_json(agent: &Agent) -> Value {
    let o = agent_status(agent, true);
    assert!(o.status.success(), "{}", outpost_tests::stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn agent_status_shows_a_running_agents_live_state_and_recognises_a_killed_one() {
    let tmp = scratch("agent-status");
    let app = Appliance::start(tmp.path());
    let mut agent = Agent::enroll(tmp.path(), "agent", &app);
    agent.start();
    let pid = agent.proc.as_ref().unwrap().pid();

    // Running: the live state from status.json, not a sled lock error.
    let live = wait_for(Duration::from_secs(20), "agent connected and acked", || {
        let s = agent_status_json(&agent);
        (s["connection"] == "connected" && s["last_ack_ms"].is_u64()).then_some(s)
    });
    assert_eq!(live["state"], "running", "{live}");
    assert_eq!(live["running"], true);
    assert_eq!(num(&live, "pid"), u64::from(pid), "{live}");
    assert_eq!(text(&live, "device_id"), agent.device_id);
    for k in ["buffered_records", "buffered_bytes", "acked_seq"] {
        num(&live, k);
    }
    assert!(live["last_error"].is_null(), "{live}");
    let o = agent_status(&agent, false);
    let out = outpost_tests::stdout(&o);
    assert!(o.status.success(), "{}", outpost_tests::stderr(&o));
    assert!(out.contains(&format!("running (pid {pid}")), "{out}");
    assert!(out.contains("connected since"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(agent.state.join("status.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o022, 0, "not writable by others: {mode:o}");
    }

    // kill -9: the file still says connected; status sees the pid is gone.
    agent.kill9();
    let s = wait_for(Duration::from_secs(10), "buffer lock released", || {
        let o = agent_status(&agent, true);
        o.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&o.stdout).unwrap())
    });
    assert_eq!(s["state"], "stale", "{s}");
    assert_eq!(s["running"], false);
    assert_eq!(num(&s, "pid"), u64::from(pid));
    num(&s, "buffered_records");
    let out = outpost_tests::stdout(&agent_status(&agent, false));
    assert!(
        out.contains(&format!("status.json is stale, pid {pid} is gone")),
        "{out}"
    );

    // A clean stop says so.
    agent.start();
    let pid = u64::from(agent.proc.as_ref().unwrap().pid());
    // The killed agent's status.json also says "connected": wait for the
    // new process's own report.
    wait_for(Duration::from_secs(20), "agent running again", || {
        let s = agent_status_json(&agent);
        (s["state"] == "running" && s["connection"] == "connected" && num(&s, "pid") == pid)
            .then_some(())
    });
    agent.stop();
    let s = agent_status_json(&agent);
    assert_eq!(s["state"], "stopped", "{s}");
    assert_eq!(s["connection"], "stopped", "{s}");
}

/// Runs `cmd` with stderr to a file (not a terminal) until it has logged a
/// line, then kills it; returns what it logged.
fn log_file_of(name: &str, cmd: &mut std::process::Command, dir: &std::path::Path) -> String {
    let path = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&path).unwrap();
    let mut child = cmd
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
    let logged = wait_for(
        Duration::from_secs(30),
        &format!("a log line from {name}"),
        || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains('\n') {
                return Some(text);
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("{name} exited ({st}) without logging: {text}");
            }
            None
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    logged
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let tmp = scratch("log-colour");
    let dir = tmp.path();
    let port = || format!("127.0.0.1:{}", outpost_tests::free_port());
    let zero_pin = format!("sha256:{}", "0".repeat(64));
    let bin = outpost_tests::bin;
    let logs = [
        log_file_of(
            "outpost",
            std::process::Command::new(bin("outpost"))
                .env("OUTPOST_LOG", "info")
                .args(["serve", "--data"])
                .arg(dir.join("appliance"))
                .args(["--quic-listen", &port(), "--admin-listen", &port()])
                .args(["--cache-listen", &port()]),
            dir,
        ),
        log_file_of(
            "outpost-agent",
            std::process::Command::new(bin("outpost-agent"))
                .env("OUTPOST_LOG", "trace")
                .args(["enroll", "--appliance", "127.0.0.1:9", "--token", "t"])
                .args(["--ca-fingerprint", &zero_pin, "--state"])
                .arg(dir.join("agent")),
            dir,
        ),
        log_file_of(
            "outpost-central",
            std::process::Command::new(bin("outpost-central"))
                .env("RUST_LOG", "info")
                .args(["serve", "--data"])
                .arg(dir.join("central"))
                .args(["--listen", &port(), "--http-listen", &port()]),
            dir,
        ),
        log_file_of(
            "outpost-bench",
            std::process::Command::new(bin("outpost-bench"))
                .env("OUTPOST_LOG", "trace")
                .args(["ingest", "--appliance", "127.0.0.1:9", "--token", "t"])
                .args(["--ca-fingerprint", &zero_pin, "--agents", "1", "--state"])
                .arg(dir.join("bench")),
            dir,
        ),
    ];
    for (name, log) in [
        "outpost",
        "outpost-agent",
        "outpost-central",
        "outpost-bench",
    ]
    .iter()
    .zip(&logs)
    {
        assert!(
            !log.contains('\u{1b}'),
            "{name} logged colour codes:\n{log}"
        );
        assert!(
            log.contains("INFO") || log.contains("DEBUG") || log.contains("TRACE"),
            "{name}: {log}"
        );
    }
}
