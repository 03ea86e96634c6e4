//! Commands from central, end to end: real `outpost-central`, `outpost`
//! and `outpost-agent` processes. A command queued at central's API
//! reaches the agent through the site's uplink and its output and exit
//! code come back to central; a viewer is refused and another tenant sees
//! nothing; `kill -9` of central between send and result never runs the
//! command twice (a side effect counted in a file) and central ends with
//! the terminal state; an offline site keeps the command queued at central
//! and runs it once when it connects, and one past its expiry never runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_tests::*;
use serde_json::{Value, json};

use crate::uplink::Central;

/// A central, a joined appliance (1 s uplink interval) and a running
/// agent whose device central already lists.
pub struct Rig {
    pub central: Central,
    pub app: Appliance,
    pub agent: Agent,
    pub site: String,
    pub tech: String,
    pub viewer: String,
    _cfg: PathBuf,
}

pub fn rig(root: &Path) -> Rig {
    let central = Central::start(root);
    let (app, agent, site, cfg) = join_site(&central, root, "dental", "main-office");
    let tech = central.api_token("acme", "technician");
    let viewer = central.api_token("acme", "viewer");
    Rig {
        central,
        app,
        agent,
        site,
        tech,
        viewer,
        _cfg: cfg,
    }
}

/// A new site of `customer` under `root` joined to `central` (1 s uplink
/// interval), with one running agent that central lists online.
pub fn join_site(
    central: &Central,
    root: &Path,
    customer: &str,
    name: &str,
) -> (Appliance, Agent, String, PathBuf) {
    let (token, fp) = central.site_add("acme", customer, name);
    let cfg = root.join("outpost.toml");
    std::fs::write(
        &cfg,
        "offline_grace = \"1s\"\n[uplink]\nreconnect_base = \"200ms\"\nreconnect_max = \"1s\"\n",
    )
    .unwrap();
    let app = Appliance::start_with(root, &["--config", cfg.to_str().unwrap()]);
    let o = app.cli(&[
        "uplink",
        "join",
        "--central",
        &central.quic.to_string(),
        "--token",
        &token,
        "--ca-fingerprint",
        &fp,
        "--interval",
        "1s",
    ]);
    assert!(o.status.success(), "uplink join failed: {}", stderr(&o));
    let site = stdout(&o).trim().to_string();
    let mut agent = Agent::enroll(root, "agent-a", &app);
    std::fs::write(
        agent.state.join("agent.toml"),
        "command_kill_grace = \"500ms\"\npackage_scan = false\n",
    )
    .unwrap();
    agent.start();
    let viewer = central.api_token("acme", "viewer");
    wait_for(Duration::from_secs(60), "the device at central", || {
        let v = central.get(&format!("/api/v1/devices?site={site}"), &viewer);
        v["devices"]
            .as_array()?
            .iter()
            .any(|d| d["device"] == agent.device_id.as_str() && d["status"] == "online")
            .then_some(())
    });
    (app, agent, site, cfg)
}

pub fn call(
    c: &Central,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let b = body.map(|b| b.to_string());
    let (st, text) = http_request(c.http, method, path, Some(token), b.as_deref())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

impl Rig {
    pub fn run(&self, line: &str, extra: Value) -> String {
        let mut body = json!({"site": self.site, "device": self.agent.device_id, "command": line});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (st, v) = call(
            &self.central,
            &self.tech,
            "POST",
            "/api/v1/commands",
            Some(body),
        );
        assert_eq!(st, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub fn show(&self, id: &str) -> Value {
        let (st, v) = call(
            &self.central,
            &self.viewer,
            "GET",
            &format!("/api/v1/commands/{id}"),
            None,
        );
        assert_eq!(st, 200, "{v}");
        v
    }

    pub fn wait_closed(&self, id: &str, secs: u64) -> Value {
        wait_for(
            Duration::from_secs(secs),
            &format!("command {id} closed at central"),
            || {
                let v = self.show(id);
                (v["closed"] == true).then_some(v)
            },
        )
    }
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_command_from_central_runs_on_the_agent_and_its_output_and_exit_code_show_at_central() {
    let tmp = scratch("central-cmd");
    let r = rig(tmp.path());
    let started = std::time::Instant::now();
    let id = r.run(
        "echo hello-from-central; echo to-stderr >&2; exit 3",
        json!({"timeout_ms": 60000}),
    );
    let v = r.wait_closed(&id, 60);
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["exit_code"], 3, "{v}");
    let out = v["output"].as_str().unwrap();
    assert!(
        out.contains("hello-from-central") && out.contains("to-stderr"),
        "{out}"
    );
    let central_states: Vec<&str> = v["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(central_states[0], "queued_at_central", "{v}");
    assert!(central_states.contains(&"delivered_to_site"), "{v}");
    let site_states: Vec<&str> = v["site_transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(site_states.first(), Some(&"queued"), "{v}");
    assert!(
        site_states.contains(&"running") && site_states.last() == Some(&"failed"),
        "{v}"
    );
    // Prompt: not waiting for batches (the interval is 1 s here, but a
    // round trip through every hop takes well under the 60-s default).
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // The appliance holds it under central's id, asked by the central user.
    let at_site: Value = r
        .app
        .api(&format!("/api/v1/commands/{id}"))
        .expect("the site's command");
    assert_eq!(at_site["state"], "failed");
    assert!(
        at_site["requested_by"]
            .as_str()
            .unwrap()
            .ends_with("@central"),
        "{at_site}"
    );

    // A viewer may read, not run; another tenant sees nothing.
    let body = json!({"site": r.site, "device": r.agent.device_id, "command": "true"});
    let (st, _) = call(
        &r.central,
        &r.viewer,
        "POST",
        "/api/v1/commands",
        Some(body.clone()),
    );
    assert_eq!(st, 403);
    let zeta = r.central.api_token("zeta", "admin");
    let (st, _) = call(
        &r.central,
        &zeta,
        "GET",
        &format!("/api/v1/commands/{id}"),
        None,
    );
    assert_eq!(st, 404);
    let (st, _) = call(&r.central, &zeta, "POST", "/api/v1/commands", Some(body));
    assert_eq!(st, 404);
    let (st, v) = call(&r.central, &zeta, "GET", "/api/v1/commands", None);
    assert_eq!((st, v.as_array().map(Vec::len)), (200, Some(0)));

    // Audited at central.
    let admin = r.central.api_token("acme", "admin");
    let (st, v) = call(&r.central, &admin, "GET", "/api/v1/audit", None);
    assert_eq!(st, 200);
    let actions: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"command.run") && actions.contains(&"command.result"),
        "{v}"
    );
    assert!(r.central.metric("outpost_central_commands_created_total") >= 1.0);
}

#[test]
fn kill_9_of_central_between_send_and_result_never_runs_the_command_twice() {
    let tmp = scratch("central-cmd-kill");
    let mut r = rig(tmp.path());
    let effect = tmp.path().join("effect");
    let id = r.run(
        &format!("echo ran >> {}; sleep 3; echo finished", effect.display()),
        json!({}),
    );
    wait_for(Duration::from_secs(60), "the command running", || {
        (lines(&effect) == 1).then_some(())
    });
    r.central.proc.as_mut().unwrap().kill9();
    r.central.proc = None;
    // The command ends at the site while central is down.
    std::thread::sleep(Duration::from_secs(4));
    r.central.restart();
    let v = r.wait_closed(&id, 60);
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["exit_code"], 0);
    assert!(v["output"].as_str().unwrap().contains("finished"), "{v}");
    // Central re-sent it on reconnect; the site answered from its record.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lines(&effect), 1, "ran exactly once");
}

#[test]
fn an_offline_site_keeps_commands_queued_at_central_runs_them_once_on_connect_and_expires_the_late()
{
    let tmp = scratch("central-cmd-offline");
    let mut r = rig(tmp.path());
    r.app.stop();
    wait_for(
        Duration::from_secs(30),
        "the site offline at central",
        || {
            let (_, v) = call(
                &r.central,
                &r.viewer,
                "GET",
                &format!("/api/v1/sites/{}", r.site),
                None,
            );
            (v["link"] == "disconnected").then_some(())
        },
    );
    let effect = tmp.path().join("effect");
    let late = tmp.path().join("late");
    let id = r.run(&format!("echo ran >> {}", effect.display()), json!({}));
    let expiring = r.run(
        &format!("echo ran >> {}", late.display()),
        json!({"expiry_ms": 1500}),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(r.show(&id)["state"], "queued_at_central");
    let e = r.show(&expiring);
    assert_eq!(
        (e["state"].as_str(), e["closed"].as_bool()),
        (Some("expired"), Some(true)),
        "{e}"
    );
    r.app.restart();
    let v = r.wait_closed(&id, 60);
    assert_eq!(v["state"], "completed", "{v}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lines(&effect), 1, "ran once");
    assert_eq!(lines(&late), 0, "an expired command never runs");
    assert_eq!(r.show(&expiring)["state"], "expired");
}

/// The web view: a technician runs a command from the device page in
/// headless Chromium, the command page follows it live (it reloads
/// itself while open) to its output and exit code; a viewer gets no run
/// form; the site's commands page lists it.
#[test]
fn a_technician_runs_a_command_from_centrals_device_page_in_headless_chromium() {
    use crate::browser::{Browser, chromium};
    let tmp = scratch("central-cmd-browser");
    let r = rig(tmp.path());
    for (name, role) in [("tess", "technician"), ("vic", "viewer")] {
        let (ok, _, err) = r.central.cli(
            &[
                "user", "add", "--tenant", "acme", "--name", name, "--role", role,
            ],
            Some("correct horse battery\n"),
        );
        assert!(ok, "{err}");
    }
    let (mut proc, ws) = chromium(tmp.path());
    let mut b = Browser {
        ws,
        base: format!("http://{}", r.central.http),
        shots: tmp.path().to_path_buf(),
    };
    let device_page = format!("/sites/{}/devices/{}", r.site, r.agent.device_id);
    b.login("vic");
    b.go(&device_page);
    b.ws.wait_until("document.getElementById('run-command')");
    assert_eq!(
        b.ws.eval("document.getElementById('run-command-line') === null"),
        json!(true),
        "a viewer gets no run form"
    );
    b.logout();
    b.login("tess");
    b.go(&device_page);
    b.ws.wait_until("document.getElementById('run-command-line')");
    b.ws.eval(
        "document.getElementById('run-command-line').value = 'echo from-the-browser; sleep 3; exit 4'; \
         document.getElementById('run-timeout').value = '60'; \
         document.getElementById('run-submit').click(); true",
    );
    b.ws.wait_until("location.pathname.startsWith('/commands/')");
    let id =
        b.ws.eval("location.pathname.split('/').pop()")
            .as_str()
            .unwrap()
            .to_string();
    // The page follows the live stream: never reloaded (the marker stays),
    // it shows the output while running and the exit code within a second
    // of central storing it.
    b.ws.eval("window.__sameDocument = true; true");
    b.ws.wait_until("document.getElementById('output').textContent.includes('from-the-browser')");
    let closed_at = wait_for(Duration::from_secs(60), "closed at central", || {
        (r.show(&id)["closed"] == true).then(std::time::Instant::now)
    });
    b.ws.wait_until(
        "document.getElementById('exit-code') && document.getElementById('exit-code').textContent === '4'",
    );
    assert!(
        closed_at.elapsed() < Duration::from_millis(1_500),
        "the page showed the result {:?} after central stored it",
        closed_at.elapsed()
    );
    assert_eq!(
        b.ws.eval("window.__sameDocument === true"),
        json!(true),
        "the page was updated in place, not reloaded"
    );
    let text = b.text();
    assert!(
        text.contains("from-the-browser") && text.contains("failed"),
        "{text}"
    );
    b.shot("command-page.png");
    let v = r.show(&id);
    assert_eq!(
        (v["exit_code"].as_i64(), v["closed"].as_bool()),
        (Some(4), Some(true)),
        "{v}"
    );
    b.go(&format!("/sites/{}/commands", r.site));
    b.ws.wait_until("document.getElementById('commands')");
    assert!(b.text().contains("echo from-the-browser"));
    proc.kill9();
}

/// An appliance from before the downlink (uplink protocol 1) is sent no
/// command frame: a command for its site answers 409 while it is
/// connected, one queued while it was away shows why it waits, and its
/// batches are acknowledged as before. The same site speaking version 2
/// gets the queued command at once after `Welcome`.
#[test]
fn a_protocol_1_site_is_sent_no_commands_and_central_says_so() {
    use crate::uplink::SiteClient;
    use outpost_uplink::wire::CentralFrame;
    let tmp = scratch("central-cmd-v1");
    let root = tmp.path();
    let central = Central::start(root);
    let mut old = SiteClient::join_version(root, &central, "acme", "old-site", 1);
    let b = old.batch(1, 7, 0..0);
    let site = b.site.to_string();
    assert_eq!(old.send(&b), CentralFrame::Ack { seq: 1 });
    let tech = central.api_token("acme", "technician");
    let body = json!({"site": site, "device": "0000000000000007", "command": "uptime"});
    let (st, v) = call(
        &central,
        &tech,
        "POST",
        "/api/v1/commands",
        Some(body.clone()),
    );
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("site does not support commands"),
        "{v}"
    );
    drop(old);
    let id = wait_for(Duration::from_secs(30), "the old site disconnected", || {
        let (st, v) = call(
            &central,
            &tech,
            "POST",
            "/api/v1/commands",
            Some(body.clone()),
        );
        (st == 201).then(|| v["id"].as_str().unwrap().to_string())
    });
    let mut old = SiteClient::connect_version(root, &central, "old-site", 1).unwrap();
    let b2 = old.batch(2, 7, 0..0);
    assert_eq!(
        old.send(&b2),
        CentralFrame::Ack { seq: 2 },
        "no command frame first"
    );
    let (_, v) = call(
        &central,
        &tech,
        "GET",
        &format!("/api/v1/commands/{id}"),
        None,
    );
    assert_eq!(v["state"], "queued_at_central");
    assert!(
        v["note"]
            .as_str()
            .unwrap()
            .contains("does not support commands"),
        "{v}"
    );
    drop(old);
    std::thread::sleep(Duration::from_secs(1));
    let mut new = SiteClient::connect(root, &central, "old-site").unwrap();
    match new.next_frame() {
        CentralFrame::Commands(v) => {
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].id.to_string(), id);
        }
        f => panic!("expected the queued command, got {f:?}"),
    }
}

/// `kill -9` of the appliance while central's command runs: the agent
/// finishes it, the restarted appliance reports it, central shows the
/// final state; the side effect happened once.
#[test]
fn kill_9_of_the_appliance_while_centrals_command_runs_never_runs_it_twice() {
    let tmp = scratch("central-cmd-app-kill");
    let mut r = rig(tmp.path());
    let effect = tmp.path().join("effect");
    let id = r.run(
        &format!("echo ran >> {}; sleep 3; echo finished", effect.display()),
        json!({}),
    );
    wait_for(Duration::from_secs(60), "the command running", || {
        (lines(&effect) == 1).then_some(())
    });
    r.app.kill9();
    std::thread::sleep(Duration::from_secs(1));
    r.app.restart();
    let v = r.wait_closed(&id, 90);
    assert_eq!(v["state"], "completed", "{v}");
    assert!(v["output"].as_str().unwrap().contains("finished"), "{v}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lines(&effect), 1, "ran exactly once");
}

#[test]
fn a_script_and_a_bulk_run_from_central_reach_agents_of_two_sites_with_the_version_they_were_queued_with()
 {
    let tmp = scratch("central-scripts");
    let r = rig(tmp.path());
    let branch_root = tmp.path().join("branch");
    std::fs::create_dir_all(&branch_root).unwrap();
    let (_app2, agent2, site2, _cfg2) = join_site(&r.central, &branch_root, "ortho", "branch");
    let admin = r.central.api_token("acme", "admin");

    // The library: an admin adds version 1; a technician runs it.
    let (st, v) = call(
        &r.central,
        &admin,
        "POST",
        "/api/v1/scripts",
        Some(json!({"name": "greet", "body": "echo \"greet v1 $1\"", "interpreter": "bash"})),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = call(
        &r.central,
        &r.viewer,
        "POST",
        "/api/v1/scripts/greet/run",
        Some(json!({"site": r.site, "device": r.agent.device_id})),
    );
    assert_eq!(st, 403, "a viewer may not run: {v}");
    let (st, v) = call(
        &r.central,
        &r.tech,
        "POST",
        "/api/v1/scripts/greet/run",
        Some(json!({"site": r.site, "device": r.agent.device_id, "args": ["there"]})),
    );
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // Edited at once: the queued run keeps version 1.
    let (st, v) = call(
        &r.central,
        &admin,
        "PUT",
        "/api/v1/scripts/greet",
        Some(json!({"body": "echo \"greet v2 $1\"", "interpreter": "bash"})),
    );
    assert_eq!((st, &v["version"]), (200, &json!(2)), "{v}");
    let v = r.wait_closed(&id, 60);
    assert_eq!(v["state"], "completed", "{v}");
    assert!(
        v["output"].as_str().unwrap().contains("greet v1 there"),
        "{v}"
    );

    // A bulk run of the newest version over both sites.
    let (st, v) = call(
        &r.central,
        &r.tech,
        "POST",
        "/api/v1/commands/bulk",
        Some(
            json!({"target": "all", "script": {"name": "greet"}, "args": ["all"], "concurrency": 1}),
        ),
    );
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["summary"]["total"], 2, "{v}");
    assert_eq!(v["sites"].as_array().unwrap().len(), 2, "{v}");
    let run = v["id"].as_str().unwrap().to_string();
    let v = wait_for(Duration::from_secs(90), "the bulk run finished", || {
        let (_, v) = call(
            &r.central,
            &r.viewer,
            "GET",
            &format!("/api/v1/commands/bulk/{run}"),
            None,
        );
        (v["summary"]["finished"] == true).then_some(v)
    });
    assert_eq!(v["summary"]["done"], 2, "{v}");
    for d in v["devices"].as_array().unwrap() {
        let c = r.wait_closed(d["command"].as_str().unwrap(), 30);
        assert!(
            c["output"].as_str().unwrap().contains("greet v2 all"),
            "{c}"
        );
        assert!(
            [r.agent.device_id.as_str(), agent2.device_id.as_str()]
                .contains(&d["device"].as_str().unwrap())
        );
    }
    let _ = site2;

    // The CLI: a thin client over the API; --wait prints the output and
    // exits with the command's code.
    let api = format!("http://{}", r.central.http);
    let cli = |args: &[&str]| {
        std::process::Command::new(bin("outpost-central"))
            .arg("commands")
            .args(args)
            .env("OUTPOST_CENTRAL_TOKEN", &r.tech)
            .output()
            .expect("outpost-central commands")
    };
    let o = cli(&[
        "run",
        "--api",
        &api,
        "--site",
        &r.site,
        "--device",
        &r.agent.device_id,
        "--wait",
        "--",
        "echo cli-says-hi; exit 5",
    ]);
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("cli-says-hi"));
    let o = cli(&["list", "--api", &api, "--site", &r.site]);
    assert!(o.status.success());
    let listed = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(listed.contains("echo cli-says-hi"), "{listed}");
    let o = std::process::Command::new(bin("outpost-central"))
        .args(["commands", "list", "--api", &api, "--token", &r.viewer])
        .output()
        .unwrap();
    assert!(o.status.success(), "viewers read");
    let o = std::process::Command::new(bin("outpost-central"))
        .args([
            "commands", "run", "--api", &api, "--token", &r.viewer, "--site", &r.site,
        ])
        .args(["--device", &r.agent.device_id, "--", "true"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "viewers may not run");
    assert!(String::from_utf8_lossy(&o.stderr).contains("403"));
}

/// Tags set from central (uplink protocol 9): `outpost-central devices
/// tag` queues one order for the site, the site applies it once (its own
/// audit log names the central user), and central's device list shows
/// the new tags after the site's next batch; a removal from the API goes
/// the same way; a viewer is refused 403 and an unknown device is
/// reported per device, not sent.
#[test]
fn tags_set_from_central_are_applied_at_the_site_and_show_in_centrals_device_list() {
    let tmp = scratch("central-tags");
    let r = rig(tmp.path());
    let dev = r.agent.device_id.clone();
    let target = format!("{}/{dev}", r.site);
    let out = std::process::Command::new(outpost_tests::bin("outpost-central"))
        .args(["devices", "tag", "--add", "pci", "--add", "web", "--wait"])
        .args(["--api", &format!("http://{}", r.central.http)])
        .arg(&target)
        .env("OUTPOST_CENTRAL_TOKEN", &r.tech)
        .output()
        .expect("outpost-central devices tag");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    assert!(
        stdout.contains(&format!("queued {target} ord-")),
        "{stdout}"
    );
    assert!(stdout.contains("delivered ord-"), "{stdout}");

    // Applied at the site, audited there as central's user.
    let audit: Value = r.app.api("/api/v1/audit").unwrap();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "device.tags"
                && e["target"] == dev.as_str()
                && e["actor"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("@central")),
        "{audit}"
    );
    let tags_at_central = || {
        let (st, v) = call(&r.central, &r.viewer, "GET", "/api/v1/devices", None);
        assert_eq!(st, 200, "{v}");
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == dev.as_str())
            .map(|d| d["tags"].clone())
    };
    wait_for(
        Duration::from_secs(30),
        "the new tags in central's device list",
        || (tags_at_central()? == json!(["pci", "web"])).then_some(()),
    );

    // A viewer may not; an unknown device is reported, not sent.
    let body =
        |device: &str| json!({"devices": [{"site": r.site, "device": device}], "remove": ["web"]});
    let (st, _) = call(
        &r.central,
        &r.viewer,
        "POST",
        "/api/v1/devices/tags",
        Some(body(&dev)),
    );
    assert_eq!(st, 403);
    let (st, v) = call(
        &r.central,
        &r.tech,
        "POST",
        "/api/v1/devices/tags",
        Some(body("00000000000000ff")),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["devices"][0]["result"], "unknown device", "{v}");
    assert_eq!(v["orders"], json!([]));
    let (st, v) = call(
        &r.central,
        &r.tech,
        "POST",
        "/api/v1/devices/tags",
        Some(body(&dev)),
    );
    assert_eq!(st, 200, "{v}");
    wait_for(
        Duration::from_secs(30),
        "the removal in central's device list",
        || (tags_at_central()? == json!(["pci"])).then_some(()),
    );
}
