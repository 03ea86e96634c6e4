//! Edge alerting end to end: a real agent's metric crosses a threshold, the
//! appliance fires, a real webhook receiver / SMTP server gets the
//! notification; restarts, maintenance windows, escalation, dead letters.
//!
//! The metric the tests control is `process_count{<probe>}`: the agent counts
//! processes named like the test's probe (a copy of `sleep` the test starts
//! and kills; each test has its own name so parallel tests do not see each
//! other's probes).
//!
//! Timing (escalation steps, reminders, windows, no-data, acknowledged
//! alerts staying quiet) is proven with an explicit clock by the appliance's
//! unit tests (`alerts::timers`, `alerts::lifecycle`, `alerts::engine`); the
//! tests here prove the wiring of each feature once, with short durations.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outpost_tests::{Agent, Appliance, WebhookReceiver, num, scratch, wait_for};
use serde_json::{Value, json};

/// The probe process name of a test directory (at most 15 characters, the
/// kernel's limit for process names).
fn probe_name(dir: &Path) -> String {
    let tag: String = dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .rev()
        .take(6)
        .collect();
    format!(
        "oap-{}",
        tag.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
    )
}

/// A process named [`probe_name`] while it lives.
struct Probe(Child);

impl Probe {
    fn start(dir: &Path) -> Probe {
        let exe = dir.join(probe_name(dir));
        if !exe.exists() {
            std::fs::copy("/bin/sleep", &exe).expect("copy sleep");
        }
        Probe(
            Command::new(&exe)
                .arg("600")
                .stdout(Stdio::null())
                .spawn()
                .expect("start probe"),
        )
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An agent reporting `process_count{opt-alert-probe}` every second.
fn probe_agent(root: &Path, app: &Appliance) -> Agent {
    let mut agent = Agent::enroll(root, "agent", app);
    std::fs::write(
        agent.state.join("agent.toml"),
        format!("processes = [\"{}\"]\n", probe_name(root)),
    )
    .unwrap();
    agent.start();
    agent
}

fn probe_rule(root: &Path, id: &str, for_: &str, extra: Value) -> Value {
    let mut r = json!({
        "id": id,
        "name": format!("probe running ({id})"),
        "condition": {"type": "threshold", "metric": "process_count", "label": probe_name(root), "comparison": ">", "threshold": 0, "for": for_},
        "severity": "critical",
    });
    if let (Some(o), Some(e)) = (r.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    r
}

fn create(app: &Appliance, path: &str, body: Value) {
    let (status, out) = app.api_post(path, &body);
    assert_eq!(status, 200, "POST {path}: {out}");
}

fn webhook_channel(app: &Appliance, id: &str, url: String) {
    create(
        app,
        "/api/v1/channels",
        json!({"id": id, "name": id, "type": "webhook", "url": url}),
    );
}

fn alerts(app: &Appliance, query: &str) -> Vec<Value> {
    app.api(&format!("/api/v1/alerts?{query}")).unwrap()
}

fn alert_of_rule(app: &Appliance, rule: &str) -> Option<Value> {
    alerts(app, &format!("rule={rule}")).into_iter().next()
}

fn event(b: &Value) -> &str {
    b["event"].as_str().unwrap_or("")
}

/// The wall clock the appliance stamps its alerts with (ms).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sleeps until the wall clock reads `at_ms`.
fn sleep_until_ms(at_ms: u64) {
    std::thread::sleep(Duration::from_millis(at_ms.saturating_sub(now_ms())));
}

#[test]
fn webhook_gets_firing_then_resolved_from_a_real_agent_metric() {
    let tmp = scratch("alert-webhook");
    let hook = WebhookReceiver::start();
    let app = Appliance::start(tmp.path());
    webhook_channel(&app, "ops", hook.url("/hook"));
    create(
        &app,
        "/api/v1/alert-rules",
        probe_rule(tmp.path(), "probe", "0s", json!({"channels": ["ops"]})),
    );
    let agent = probe_agent(tmp.path(), &app);
    wait_for(Duration::from_secs(20), "agent online", || {
        (app.device(&agent.device_id)["status"] == "online").then_some(())
    });
    assert!(
        hook.bodies("/hook").is_empty(),
        "nothing fires before the metric crosses"
    );

    let probe = Probe::start(tmp.path());
    let fired = hook.wait_for(Duration::from_secs(20), "/hook", "firing webhook", |b| {
        event(b) == "firing"
    });
    let a = &fired["alert"];
    assert_eq!(a["rule_id"], "probe");
    assert_eq!(a["device"], agent.device_id.as_str());
    assert_eq!(a["label"], probe_name(tmp.path()).as_str());
    assert_eq!(a["severity"], "critical");
    assert!(a["value"].as_f64().unwrap() >= 1.0);
    assert_eq!(a["tenant"], "acme");
    assert!(
        fired["summary"]
            .as_str()
            .unwrap()
            .starts_with("[FIRING][critical]")
    );

    drop(probe);
    let resolved = hook.wait_for(Duration::from_secs(20), "/hook", "resolved webhook", |b| {
        event(b) == "resolved"
    });
    assert_eq!(resolved["alert"]["id"], a["id"]);
    assert_eq!(resolved["alert"]["state"], "resolved");
    assert_eq!(resolved["alert"]["value"], 0.0);
    let firing_count = hook
        .bodies("/hook")
        .iter()
        .filter(|b| event(b) == "firing")
        .count();
    assert_eq!(firing_count, 1, "one notification per transition");

    // Persisted lifecycle with timestamps and values, visible in API and CLI.
    let id = a["id"].as_u64().unwrap();
    let detail: Value = app.api(&format!("/api/v1/alerts/{id}")).unwrap();
    let events: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, vec!["firing", "resolved"], "{detail}");
    assert!(num(&detail["alert"], "resolved_ms") >= num(&detail["alert"], "fired_ms").max(1));
    let table = app.cli_ok(&["alerts", "--state", "all"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id.to_string()) && l.contains("resolved")),
        "{table}"
    );
    assert!(app.metric("outpost_notifications_total{channel_type=\"webhook\",event=\"firing\",result=\"delivered\"}") >= 1.0);
    assert!(app.metric("outpost_alert_transitions_total{kind=\"resolved\"}") >= 1.0);
    // Each stage of the path to the webhook is timed: every stored batch
    // queued and evaluated, both transitions written, both deliveries sent.
    for (stage, least) in [
        ("queued", 2.0),
        ("evaluate", 2.0),
        ("persist", 2.0),
        ("send", 2.0),
    ] {
        let n = app.metric(&format!(
            "outpost_alert_stage_seconds_count{{stage=\"{stage}\"}}"
        ));
        assert!(n >= least, "stage {stage}: {n} observations");
    }
}

/// A real SMTP server (Debian's python3-aiosmtpd) printing what it receives.
struct Smtp {
    child: Child,
    out: PathBuf,
    port: u16,
}

impl Smtp {
    fn start(dir: &Path) -> Smtp {
        let port = outpost_tests::free_port();
        let out = dir.join("smtp.out");
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let child = Command::new(python)
            .args([
                "-u",
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("smtp.err")).unwrap(),
            ))
            .spawn()
            .expect("start aiosmtpd (install python3-aiosmtpd)");
        wait_for(Duration::from_secs(15), "SMTP server listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Smtp { child, out, port }
    }

    fn received(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn email_notifications_reach_a_real_smtp_server() {
    let tmp = scratch("alert-smtp");
    let smtp = Smtp::start(tmp.path());
    let app = Appliance::start(tmp.path());
    create(
        &app,
        "/api/v1/channels",
        json!({"id": "mail", "name": "on-call mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": smtp.port,
               "tls": "none", "from": "outpost@site.example", "to": ["oncall@msp.example"]}),
    );
    create(
        &app,
        "/api/v1/alert-rules",
        probe_rule(tmp.path(), "probe", "0s", json!({"channels": ["mail"]})),
    );
    let _agent = probe_agent(tmp.path(), &app);
    let probe = Probe::start(tmp.path());
    wait_for(Duration::from_secs(30), "firing e-mail", || {
        smtp.received()
            .contains("Subject: [FIRING][critical]")
            .then_some(())
    });
    let mail = smtp.received();
    assert!(mail.contains("oncall@msp.example"), "{mail}");
    assert!(mail.contains(&probe_name(tmp.path())));
    drop(probe);
    wait_for(Duration::from_secs(30), "resolved e-mail", || {
        smtp.received()
            .contains("Subject: [RESOLVED]")
            .then_some(())
    });
    // The channel's listing does not leak secrets and shows the settings.
    let chans: Vec<Value> = app.api("/api/v1/channels").unwrap();
    assert_eq!(chans[0]["smtp_port"], smtp.port);
    assert!(app.metric("outpost_notifications_total{channel_type=\"email\",event=\"resolved\",result=\"delivered\"}") >= 1.0);
}

#[test]
fn pending_and_firing_alerts_resume_exactly_after_kill9() {
    let tmp = scratch("alert-restart");
    let hook = WebhookReceiver::start();
    let mut app = Appliance::start(tmp.path());
    webhook_channel(&app, "ops", hook.url("/hook"));
    create(
        &app,
        "/api/v1/alert-rules",
        probe_rule(tmp.path(), "now", "0s", json!({"channels": ["ops"]})),
    );
    create(
        &app,
        "/api/v1/alert-rules",
        probe_rule(tmp.path(), "later", "6s", json!({"channels": ["ops"]})),
    );
    let _agent = probe_agent(tmp.path(), &app);
    let _probe = Probe::start(tmp.path());

    hook.wait_for(Duration::from_secs(20), "/hook", "firing of `now`", |b| {
        event(b) == "firing" && b["alert"]["rule_id"] == "now"
    });
    let pending = wait_for(Duration::from_secs(10), "`later` pending", || {
        alert_of_rule(&app, "later").filter(|a| a["state"] == "pending")
    });
    let (started, due) = (num(&pending, "started_ms"), num(&pending, "due_ms"));
    assert_eq!(due - started, 6_000);

    app.kill9();
    std::thread::sleep(Duration::from_secs(2));
    app.restart();

    // The pending alert fires at its original due time, not 6 s after the restart.
    let fired = hook.wait_for(Duration::from_secs(30), "/hook", "firing of `later`", |b| {
        event(b) == "firing" && b["alert"]["rule_id"] == "later"
    });
    let fired_ms = num(&fired["alert"], "fired_ms");
    assert!(
        fired_ms >= due && fired_ms < due + 1_500,
        "fired at {fired_ms}, due {due}"
    );
    assert_eq!(
        num(&fired["alert"], "started_ms"),
        started,
        "same alert, not a new one"
    );

    // The firing alert was not announced again and resolves normally.
    drop(_probe);
    hook.wait_for(Duration::from_secs(30), "/hook", "resolved of `now`", |b| {
        event(b) == "resolved" && b["alert"]["rule_id"] == "now"
    });
    let now_firings = hook
        .bodies("/hook")
        .iter()
        .filter(|b| event(b) == "firing" && b["alert"]["rule_id"] == "now")
        .count();
    assert_eq!(now_firings, 1);
    assert_eq!(
        alerts(&app, "rule=now").len(),
        1,
        "one alert record for `now`"
    );
}

#[test]
fn maintenance_window_records_the_alert_but_suppresses_notifications() {
    let tmp = scratch("alert-window");
    let hook = WebhookReceiver::start();
    let app = Appliance::start(tmp.path());
    webhook_channel(&app, "ops", hook.url("/hook"));
    create(
        &app,
        "/api/v1/alert-rules",
        probe_rule(tmp.path(), "probe", "0s", json!({"channels": ["ops"]})),
    );
    let agent = probe_agent(tmp.path(), &app);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let rfc = |s: i64| {
        let out = Command::new("date")
            .args(["-u", "-d", &format!("@{s}"), "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    create(
        &app,
        "/api/v1/maintenance-windows",
        json!({"id": "patch-night", "name": "patch night", "scope": {"type": "device", "device": agent.device_id},
               "schedule": {"type": "one_off", "start": rfc(now - 60), "end": rfc(now + 3600)}}),
    );
    let _probe = Probe::start(tmp.path());
    let a = wait_for(Duration::from_secs(20), "alert recorded", || {
        alert_of_rule(&app, "probe").filter(|a| a["state"] == "firing")
    });
    assert_eq!(a["silenced_by"], "patch-night");
    // Recorded, not notified: nothing was queued with the firing transition
    // (it is written in the same batch as the alert). That the timers keep
    // it silent while the window lasts is proven in `alerts::timers`.
    assert_eq!(a["notified"], false, "{a}");
    assert_eq!(a["notifications_sent"], 0, "{a}");
    let queue: Vec<Value> = app.api("/api/v1/notifications/queue").unwrap();
    assert!(queue.is_empty(), "nothing queued: {queue:?}");
    assert!(hook.bodies("/hook").is_empty(), "silenced: no notification");

    // Window removed while the alert still fires: it is announced now.
    let (status, _) = app.api_send("DELETE", "/api/v1/maintenance-windows/patch-night", None);
    assert_eq!(status, 200);
    hook.wait_for(
        Duration::from_secs(10),
        "/hook",
        "firing after the window",
        |b| event(b) == "firing",
    );
}

#[test]
fn escalation_reaches_step_two_unless_acknowledged() {
    let tmp = scratch("alert-escalation");
    let hook = WebhookReceiver::start();
    let app = Appliance::start(tmp.path());
    for ch in ["first", "second", "third"] {
        webhook_channel(&app, ch, hook.url(&format!("/{ch}")));
    }
    create(
        &app,
        "/api/v1/escalation-policies",
        json!({"id": "oncall", "name": "on-call", "steps": [
            {"after": "0s", "channels": ["first"]},
            {"after": "1s", "channels": ["second"]},
            {"after": "4s", "channels": ["third"]}]}),
    );
    create(
        &app,
        "/api/v1/alert-rules",
        probe_rule(
            tmp.path(),
            "probe",
            "0s",
            json!({"escalation_policy": "oncall"}),
        ),
    );
    let _agent = probe_agent(tmp.path(), &app);
    let _probe = Probe::start(tmp.path());
    let t0 = Instant::now();
    let first = hook.wait_for(Duration::from_secs(20), "/first", "step 1", |b| {
        event(b) == "firing"
    });
    let step2 = hook.wait_for(Duration::from_secs(10), "/second", "step 2", |b| {
        event(b) == "escalation"
    });
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(step2["alert"]["id"], first["alert"]["id"]);
    // Somebody acknowledges: the third step never comes.
    let id = first["alert"]["id"].as_u64().unwrap().to_string();
    let out = app.cli_ok(&[
        "alerts",
        "ack",
        &id,
        "--comment",
        "looking into it",
        "--by",
        "alice",
    ]);
    assert_eq!(out.trim(), id);
    // Wait until the third step is overdue (4 s after firing, plus a timer
    // tick): the acknowledgement reached the timers, nothing escalated.
    let acked: Value = app.api(&format!("/api/v1/alerts/{id}")).unwrap();
    let fired_ms = num(&acked["alert"], "fired_ms");
    assert!(
        num(&acked["alert"], "acknowledged_ms") < fired_ms + 4_000,
        "acknowledged only after the third step was due: {acked}"
    );
    sleep_until_ms(fired_ms + 4_000 + 1_500);
    assert!(
        hook.bodies("/third").is_empty(),
        "acknowledged alerts do not escalate"
    );
    // Acknowledging again without a comment keeps the first one and
    // records nothing more.
    let out = app.cli_ok(&["alerts", "ack", &id, "--by", "bob"]);
    assert_eq!(out.trim(), id);
    let detail: Value = app.api(&format!("/api/v1/alerts/{id}")).unwrap();
    assert_eq!(detail["alert"]["acknowledged_by"], "alice");
    assert_eq!(
        detail["alert"]["ack_comment"], "looking into it",
        "{detail}"
    );
    assert_eq!(detail["alert"]["escalation_step"], 2, "{detail}");
    let acks = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "acknowledged")
        .count();
    assert_eq!(acks, 1, "{detail}");
    let shown = app.cli_ok(&["alerts", "show", &id]);
    assert!(
        shown.contains("acked by    alice: looking into it"),
        "{shown}"
    );
    let audit: Vec<Value> = app.api("/api/v1/audit").unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "alert.ack" && e["actor"] == "alice")
    );
}

#[test]
fn failing_webhook_is_retried_then_dead_lettered_while_ingest_continues() {
    let tmp = scratch("alert-deadletter");
    let hook = WebhookReceiver::start();
    hook.set_failing(true);
    let app = Appliance::start_with_config(
        tmp.path(),
        "[alerts]\nnotify_retry_for = \"1s\"\nnotify_retry_base = \"200ms\"\nnotify_retry_max = \"1s\"\n",
    );
    webhook_channel(&app, "down", hook.url("/hook"));
    create(
        &app,
        "/api/v1/alert-rules",
        probe_rule(tmp.path(), "probe", "0s", json!({"channels": ["down"]})),
    );
    let agent = probe_agent(tmp.path(), &app);
    let _probe = Probe::start(tmp.path());
    let dead = wait_for(Duration::from_secs(30), "dead letter", || {
        let v: Vec<Value> = app.api("/api/v1/notifications/dead-letters").unwrap();
        v.into_iter().next()
    });
    // Retried for notify_retry_for (1s: attempts at 0, 0.2, 0.6 and 1 s).
    let attempts = dead["attempts"].as_f64().unwrap();
    assert!(attempts >= 2.0, "{dead}");
    assert!(
        dead["last_error"].as_str().unwrap().contains("500"),
        "{dead}"
    );
    assert_eq!(dead["channel_id"], "down");
    assert_eq!(app.metric("outpost_notifications_total{channel_type=\"webhook\",event=\"firing\",result=\"retry\"}"), attempts - 1.0);
    assert_eq!(app.metric("outpost_notifications_total{channel_type=\"webhook\",event=\"firing\",result=\"dead_letter\"}"), 1.0);
    // Meanwhile ingest went on.
    let before = num(&app.device(&agent.device_id), "last_seq");
    wait_for(Duration::from_secs(10), "ingest continues", || {
        (num(&app.device(&agent.device_id), "last_seq") >= before + 3).then_some(())
    });
    let queue: Vec<Value> = app.api("/api/v1/notifications/queue").unwrap();
    assert!(queue.is_empty(), "nothing left queued: {queue:?}");
    // The receiver is back: the admin re-sends the dead letter, delivered.
    hook.set_failing(false);
    let (s, out) = app.api_post(
        "/api/v1/notifications/dead-letters/resend",
        &json!({"ids": [dead["id"]]}),
    );
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["resent"], json!([dead["id"]]), "{out}");
    hook.wait_for(Duration::from_secs(10), "/hook", "re-sent firing", |b| {
        event(b) == "firing"
    });
    let dead: Vec<Value> = app.api("/api/v1/notifications/dead-letters").unwrap();
    assert!(dead.is_empty(), "{dead:?}");
}

#[test]
fn bad_alerting_input_is_refused_with_clear_errors() {
    let tmp = scratch("alert-input");
    let app = Appliance::start(tmp.path());
    let bad_rule = json!({"name": "x", "severity": "critical", "condition": {"type": "threshold", "metric": "", "comparison": ">", "threshold": 1}});
    let (s, out) = app.api_post("/api/v1/alert-rules", &bad_rule);
    assert_eq!(s, 400, "{out}");
    assert!(out["error"].as_str().unwrap().contains("metric"));
    let (s, _) = app.api_post(
        "/api/v1/channels",
        &json!({"name": "x", "type": "webhook", "url": "ftp://nope"}),
    );
    assert_eq!(s, 400);
    let (s, _) = app.api_post(
        "/api/v1/maintenance-windows",
        &json!({"name": "w", "schedule": {"type": "weekly", "days": ["mon"], "start": "25:00", "duration": "1h", "timezone": "UTC"}}),
    );
    assert_eq!(s, 400);
    // Built-in rules exist, can be disabled but not deleted.
    let rules: Vec<Value> = app.api("/api/v1/alert-rules").unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    for b in [
        "builtin-device-offline",
        "builtin-disk-full",
        "builtin-memory-high",
        "builtin-cpu-high",
    ] {
        assert!(ids.contains(&b), "{ids:?}");
    }
    let (s, out) = app.api_send("DELETE", "/api/v1/alert-rules/builtin-cpu-high", None);
    assert_eq!(s, 400, "{out}");
    let mut cpu = rules
        .iter()
        .find(|r| r["id"] == "builtin-cpu-high")
        .unwrap()
        .clone();
    cpu["enabled"] = json!(false);
    let (s, out) = app.api_send("PUT", "/api/v1/alert-rules/builtin-cpu-high", Some(&cpu));
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["enabled"], false);
    assert_eq!(out["builtin"], true);
    let (s, _) = app.api_post("/api/v1/alerts/999/ack", &json!({"comment": "x"}));
    assert_eq!(s, 404);
    let (s, _) = app.api_post("/api/v1/alert-rules", &json!({"id": "bad id!", "name": "n", "severity": "info", "condition": {"type": "device_offline"}}));
    assert_eq!(s, 400);

    // References that can never work: unknown channels and policies are
    // refused, naming them (create and update); an unknown metric is saved
    // with a warning, and `alerts rules --check` lists it.
    let cpu_rule = |id: &str, metric: &str| {
        json!({"id": id, "name": id, "severity": "warning",
               "condition": {"type": "threshold", "metric": metric, "comparison": ">", "threshold": 90, "for": "1m"}})
    };
    let mut r = cpu_rule("chan", "cpu");
    r["channels"] = json!(["nope", "nada"]);
    let (s, out) = app.api_post("/api/v1/alert-rules", &r);
    assert_eq!(s, 400, "{out}");
    let msg = out["error"].as_str().unwrap();
    assert!(msg.contains("nope") && msg.contains("nada"), "{msg}");
    let mut r = cpu_rule("pol", "cpu");
    r["escalation_policy"] = json!("ghost");
    let (s, out) = app.api_post("/api/v1/alert-rules", &r);
    assert_eq!(s, 400, "{out}");
    assert!(out["error"].as_str().unwrap().contains("ghost"), "{out}");
    let (s, out) = app.api_post(
        "/api/v1/escalation-policies",
        &json!({"id": "p", "name": "p", "steps": [{"after": "0s", "channels": ["nope"]}]}),
    );
    assert_eq!(s, 400, "{out}");
    assert!(out["error"].as_str().unwrap().contains("nope"), "{out}");
    cpu["channels"] = json!(["nope"]);
    let (s, out) = app.api_send("PUT", "/api/v1/alert-rules/builtin-cpu-high", Some(&cpu));
    assert_eq!(s, 400, "{out}");
    assert!(out["error"].as_str().unwrap().contains("nope"), "{out}");
    let rules: Vec<Value> = app.api("/api/v1/alert-rules").unwrap();
    assert!(
        !rules
            .iter()
            .any(|r| ["chan", "pol"].contains(&r["id"].as_str().unwrap())),
        "nothing refused was saved"
    );
    let (s, out) = app.api_post("/api/v1/alert-rules", &cpu_rule("typo", "cpuu"));
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["id"], "typo");
    let warning = out["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("cpuu") && warning.contains("did you mean \"cpu\""),
        "{out}"
    );
    let (s, out) = app.api_post("/api/v1/alert-rules", &cpu_rule("fine", "cpu"));
    assert_eq!(s, 200, "{out}");
    assert!(
        out.get("warnings").is_none(),
        "no warnings, no field: {out}"
    );
    let check = app.cli(&["alerts", "rules", "--check"]);
    assert!(!check.status.success(), "problems: non-zero exit");
    let table = outpost_tests::stdout(&check);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("typo") && l.contains("no device reports metric \"cpuu\"")),
        "{table}"
    );
    let json_check = app.cli(&["alerts", "rules", "--check", "--json"]);
    assert!(!json_check.status.success());
    let problems: Vec<Value> =
        serde_json::from_str(&outpost_tests::stdout(&json_check)).expect("--json");
    assert!(
        problems
            .iter()
            .any(|p| p["rule"] == "typo" && p["problems"][0].as_str().unwrap().contains("cpuu")),
        "{problems:?}"
    );
    let list = app.cli_ok(&["alerts", "rules"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("typo") && l.contains("cpuu > 90 for 1m")),
        "{list}"
    );
}

#[test]
fn device_offline_rule_fires_and_resolves() {
    let tmp = scratch("alert-offline");
    let hook = WebhookReceiver::start();
    let app = Appliance::start(tmp.path());
    webhook_channel(&app, "ops", hook.url("/hook"));
    let mut rule: Value = app
        .api("/api/v1/alert-rules/builtin-device-offline")
        .unwrap();
    rule["channels"] = json!(["ops"]);
    let (s, out) = app.api_send(
        "PUT",
        "/api/v1/alert-rules/builtin-device-offline",
        Some(&rule),
    );
    assert_eq!(s, 200, "{out}");
    let mut agent = probe_agent(tmp.path(), &app);
    wait_for(Duration::from_secs(20), "online", || {
        (app.device(&agent.device_id)["status"] == "online").then_some(())
    });
    agent.stop();
    let fired = hook.wait_for(Duration::from_secs(20), "/hook", "offline alert", |b| {
        event(b) == "firing"
    });
    assert_eq!(fired["alert"]["rule_id"], "builtin-device-offline");
    agent.start();
    hook.wait_for(Duration::from_secs(20), "/hook", "offline resolved", |b| {
        event(b) == "resolved"
    });
}

#[test]
fn firing_alert_is_reminded_at_the_renotify_interval() {
    let tmp = scratch("alert-reminder");
    let hook = WebhookReceiver::start();
    let app = Appliance::start(tmp.path());
    webhook_channel(&app, "ops", hook.url("/hook"));
    create(
        &app,
        "/api/v1/alert-rules",
        probe_rule(
            tmp.path(),
            "probe",
            "0s",
            json!({"channels": ["ops"], "renotify_interval": "1s"}),
        ),
    );
    let _agent = probe_agent(tmp.path(), &app);
    let _probe = Probe::start(tmp.path());
    let t0 = Instant::now();
    let fired = hook.wait_for(Duration::from_secs(20), "/hook", "firing webhook", |b| {
        event(b) == "firing"
    });
    let reminder = hook.wait_for(Duration::from_secs(10), "/hook", "reminder", |b| {
        event(b) == "reminder"
    });
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(reminder["alert"]["id"], fired["alert"]["id"]);
    assert_eq!(reminder["alert"]["state"], "firing");
    assert!(
        reminder["summary"]
            .as_str()
            .unwrap()
            .starts_with("[REMINDER][critical]"),
        "{reminder}"
    );
    // The receiver answers before the dispatcher counts the delivery:
    // wait for the counter rather than race it.
    outpost_tests::wait_for(
        Duration::from_secs(10),
        "the reminder counted as delivered",
        || {
            (app.metric("outpost_notifications_total{channel_type=\"webhook\",event=\"reminder\",result=\"delivered\"}") >= 1.0)
            .then_some(())
        },
    );
}

#[test]
fn no_data_rule_fires_when_a_series_stops_and_resolves_when_it_reports_again() {
    let tmp = scratch("alert-nodata");
    let hook = WebhookReceiver::start();
    let app = Appliance::start(tmp.path());
    webhook_channel(&app, "ops", hook.url("/hook"));
    create(
        &app,
        "/api/v1/alert-rules",
        json!({"id": "quiet", "name": "probe count not reported", "severity": "warning", "channels": ["ops"],
               "condition": {"type": "no_data", "metric": "process_count", "label": probe_name(tmp.path()), "for": "2s"}}),
    );
    let mut agent = probe_agent(tmp.path(), &app);
    wait_for(Duration::from_secs(20), "the series reported", || {
        (app.metric("outpost_samples_stored_total") > 0.0).then_some(())
    });
    assert!(hook.bodies("/hook").is_empty(), "reporting: no alert");
    agent.stop();
    let fired = hook.wait_for(Duration::from_secs(20), "/hook", "no-data alert", |b| {
        event(b) == "firing"
    });
    assert_eq!(fired["alert"]["rule_id"], "quiet");
    assert_eq!(fired["alert"]["label"], probe_name(tmp.path()).as_str());
    assert_eq!(fired["alert"]["device"], agent.device_id.as_str());
    agent.start();
    let resolved = hook.wait_for(Duration::from_secs(20), "/hook", "no-data resolved", |b| {
        event(b) == "resolved"
    });
    assert_eq!(resolved["alert"]["id"], fired["alert"]["id"]);
    assert_eq!(resolved["alert"]["state"], "resolved");
}

/// Issue 10: a threshold alert pending on a busy device must not fire from
/// the last value once the agent is dead (`kill -9`); a firing one does not
/// stay firing forever on one old sample; deleting a rule tells the
/// channels its alerts resolved. The exact rules are unit-tested with an
/// explicit clock (`alerts::eval`, `alerts::lifecycle`, `alerts::engine`).
#[test]
fn a_killed_agent_s_pending_alert_never_fires_and_its_firing_one_resolves_stale() {
    let tmp = scratch("alert-stale");
    let hook = WebhookReceiver::start();
    let app = Appliance::start(tmp.path());
    webhook_channel(&app, "ops", hook.url("/hook"));
    create(
        &app,
        "/api/v1/alert-rules",
        probe_rule(tmp.path(), "later", "12s", json!({"channels": ["ops"]})),
    );
    let mut now_rule = probe_rule(tmp.path(), "now", "0s", json!({"channels": ["ops"]}));
    now_rule["condition"]["stale_after"] = json!("4s");
    create(&app, "/api/v1/alert-rules", now_rule);
    create(
        &app,
        "/api/v1/alert-rules",
        probe_rule(tmp.path(), "gone", "0s", json!({"channels": ["ops"]})),
    );
    let mut agent = probe_agent(tmp.path(), &app);
    let _probe = Probe::start(tmp.path());
    for rule in ["now", "gone"] {
        hook.wait_for(Duration::from_secs(20), "/hook", "firing", |b| {
            event(b) == "firing" && b["alert"]["rule_id"] == rule
        });
    }
    // Deleting a rule resolves its alert and says so.
    let (status, out) = app.api_send("DELETE", "/api/v1/alert-rules/gone", None);
    assert_eq!(status, 200, "{out}");
    hook.wait_for(
        Duration::from_secs(10),
        "/hook",
        "resolved on delete",
        |b| event(b) == "resolved" && b["alert"]["rule_id"] == "gone",
    );

    let pending = wait_for(Duration::from_secs(10), "`later` pending", || {
        alert_of_rule(&app, "later").filter(|a| a["state"] == "pending")
    });
    let due = num(&pending, "due_ms");
    agent.kill9();

    // Offline: the pending alert is cleared at once, stale.
    let cleared = wait_for(Duration::from_secs(15), "`later` cleared", || {
        alert_of_rule(&app, "later").filter(|a| a["state"] == "cleared")
    });
    assert_eq!(cleared["stale"], "device offline", "{cleared}");
    assert!(num(&cleared, "resolved_ms") < due, "{cleared}");
    // The firing one is held, then resolves stale after 4 s of silence.
    let resolved = hook.wait_for(Duration::from_secs(20), "/hook", "stale resolution", |b| {
        event(b) == "resolved" && b["alert"]["rule_id"] == "now"
    });
    assert_eq!(resolved["alert"]["stale"], "no sample for 4s", "{resolved}");
    assert!(
        resolved["summary"]
            .as_str()
            .unwrap()
            .contains("(stale: no sample for 4s)"),
        "{resolved}"
    );
    // The offline alert covers the device.
    let offline = wait_for(Duration::from_secs(10), "device offline alert", || {
        alert_of_rule(&app, "builtin-device-offline").filter(|a| a["state"] == "firing")
    });
    assert_eq!(offline["device"], agent.device_id.as_str());

    // Past the due time (and a timer tick): `later` never fired.
    sleep_until_ms(due + 1_500);
    assert!(
        !hook
            .bodies("/hook")
            .iter()
            .any(|b| b["alert"]["rule_id"] == "later"),
        "a dead device's pending alert must not fire"
    );
    let id = cleared["id"].as_u64().unwrap();
    let detail: Value = app.api(&format!("/api/v1/alerts/{id}")).unwrap();
    let events: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, vec!["pending", "cleared"], "{detail}");
    assert_eq!(detail["alert"]["fired_ms"], Value::Null);
}
