//! Uplink and central: agent → appliance → central with real processes;
//! central outage; replayed and out-of-order batches; tenancy and roles.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use outpost_bench::netem::{Impairment, Relay};
use outpost_proto::DeviceId;
use outpost_tests::*;
use outpost_uplink::batch::{
    self, AlertState, AlertTransition, DeviceRollups, DeviceUpdate, SeriesRollup, Severity,
    SiteBatch,
};
use serde_json::Value;

/// A running `outpost-central`.
pub struct Central {
    pub dir: PathBuf,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub proc: Option<Proc>,
    log_dir: PathBuf,
    starts: u32,
    /// More arguments of `serve`.
    extra: Vec<String>,
}

impl Central {
    pub fn start(root: &Path) -> Central {
        Central::start_with(root, &[])
    }

    pub fn start_with(root: &Path, extra: &[&str]) -> Central {
        let mut c = Central::start_unready(root, extra);
        c.wait_ready(Duration::from_secs(30));
        c
    }

    /// Starts the process without waiting for it to be ready (its store
    /// may not answer yet): see [`Central::wait_ready`].
    pub fn start_unready(root: &Path, extra: &[&str]) -> Central {
        let mut c = Central {
            dir: root.join("central"),
            quic: SocketAddr::from(([127, 0, 0, 1], free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            proc: None,
            log_dir: root.to_path_buf(),
            starts: 0,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        c.spawn();
        c
    }

    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready(Duration::from_secs(30));
    }

    /// Starts the process (stopped before) and returns at once.
    pub fn spawn(&mut self) {
        assert!(self.proc.is_none());
        self.starts += 1;
        let _ = std::fs::remove_file(self.dir.join("http.addr"));
        let mut cmd = Command::new(bin("outpost-central"));
        cmd.arg("serve")
            .arg("--data")
            .arg(&self.dir)
            .arg("--listen")
            .arg(self.quic.to_string())
            .arg("--http-listen")
            .arg(self.http.to_string())
            .args(&self.extra);
        self.proc = Some(
            Proc::spawn(&format!("central-{}", self.starts), &mut cmd, &self.log_dir)
                .expect("spawn central"),
        );
    }

    /// Waits until the process wrote `http.addr` and answers `/healthz`
    /// 200 (panics with its stderr if it exits meanwhile).
    pub fn wait_ready(&mut self, timeout: Duration) {
        let addr = self.dir.join("http.addr");
        wait_for(timeout, "central HTTP API", || {
            if let Some(p) = self.proc.as_mut()
                && let Some(st) = p.try_exit()
            {
                panic!("central exited early ({st}):\n{}", p.stderr());
            }
            if !addr.exists() {
                return None;
            }
            http_get(self.http, "/healthz", None).ok()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate();
        }
    }

    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use std::io::Write;
        let mut cmd = Command::new(bin("outpost-central"));
        cmd.args(args).arg("--data").arg(&self.dir);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn outpost-central");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin.unwrap_or("").as_bytes());
        }
        let o = child.wait_with_output().expect("wait");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// `site add`: (token, fingerprint).
    pub fn site_add(&self, tenant: &str, customer: &str, site: &str) -> (String, String) {
        let (ok, out, err) = self.cli(
            &[
                "site",
                "add",
                "--tenant",
                tenant,
                "--customer",
                customer,
                "--site",
                site,
            ],
            None,
        );
        assert!(ok, "site add failed: {err}");
        let mut l = out.lines();
        let token = l.next().expect("token line").to_string();
        let fp = l.next().expect("fingerprint line").to_string();
        assert!(fp.starts_with("sha256:") && fp.len() == 71, "{fp}");
        (token, fp)
    }

    pub fn api_token(&self, tenant: &str, role: &str) -> String {
        let (ok, out, err) = self.cli(
            &["token", "create", "--tenant", tenant, "--role", role],
            None,
        );
        assert!(ok, "token create failed: {err}");
        out.trim().to_string()
    }

    pub fn get(&self, path: &str, token: &str) -> Value {
        let body = http_get(self.http, path, Some(token)).expect(path);
        serde_json::from_str(&body).expect("json")
    }

    pub fn metric(&self, series: &str) -> f64 {
        http_get(self.http, "/metrics", None)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }
}

/// Appliance config with 2 s rollup buckets and fast reconnects.
pub(crate) fn fast_config(root: &Path, extra: &str) -> PathBuf {
    let p = root.join("outpost.toml");
    std::fs::write(
        &p,
        format!(
            "offline_grace = \"1s\"\n[ingest]\nrollup_bucket = \"2s\"\nrollup_settle = \"500ms\"\n[uplink]\nreconnect_base = \"200ms\"\nreconnect_max = \"1s\"\n{extra}"
        ),
    )
    .expect("write config");
    p
}

/// `outpost uplink join` against `central`, with `token` and `fp`.
fn join_cli(app: &Appliance, central: &Central, token: &str, fp: &str) -> std::process::Output {
    join_cli_at(app, central.quic, token, fp)
}

/// `outpost uplink join` against central's QUIC address `at` (central
/// itself, or a relay in front of it), 1 s uplink interval.
fn join_cli_at(app: &Appliance, at: SocketAddr, token: &str, fp: &str) -> std::process::Output {
    app.cli(&[
        "uplink",
        "join",
        "--central",
        &at.to_string(),
        "--token",
        token,
        "--ca-fingerprint",
        fp,
        "--interval",
        "1s",
    ])
}

/// A bad-WAN relay in front of `central`'s QUIC port, run by `rt`.
fn wan_relay(rt: &tokio::runtime::Runtime, central: &Central, wan: &Arc<Impairment>) -> Relay {
    rt.block_on(Relay::start(
        "127.0.0.1:0".parse().unwrap(),
        central.quic,
        wan.clone(),
    ))
    .expect("relay")
}

pub(crate) fn join(app: &Appliance, central: &Central, token: &str, fp: &str) -> String {
    let o = join_cli(app, central, token, fp);
    assert!(o.status.success(), "uplink join failed: {}", stderr(&o));
    let site = stdout(&o).trim().to_string();
    assert!(site.starts_with("s-"), "join prints the site id: {site:?}");
    site
}

pub(crate) fn uplink_status(app: &Appliance) -> Value {
    serde_json::from_str(&app.cli_ok(&["uplink", "status", "--json"])).expect("status json")
}

#[test]
fn agent_to_appliance_to_central_device_and_rollups_appear_in_centrals_api() {
    let tmp = scratch("uplink-e2e");
    let root = tmp.path();
    let central = Central::start(root);
    let (token, fp) = central.site_add("acme", "dental", "main-office");
    let cfg = fast_config(root, "");
    let app = Appliance::start_with(root, &["--config", cfg.to_str().unwrap()]);
    // A wrong fingerprint is refused and says why.
    let bad = join_cli(
        &app,
        &central,
        &token,
        &format!("sha256:{}", "0".repeat(64)),
    );
    assert!(!bad.status.success());
    let site = join(&app, &central, &token, &fp);
    // The token was for one use.
    let again = join_cli(&app, &central, &token, &fp);
    assert!(!again.status.success(), "a site token joins once");
    let mut agent = Agent::enroll(root, "agent-a", &app);
    agent.start();
    let viewer = central.api_token("acme", "viewer");
    let dev = wait_for(
        Duration::from_secs(60),
        "device with rollups at central",
        || {
            let v = central.get(&format!("/api/v1/devices?site={site}"), &viewer);
            let d = v["devices"]
                .as_array()?
                .iter()
                .find(|d| d["device"] == agent.device_id.as_str())?
                .clone();
            (d["status"] == "online" && d["rollups_stored"].as_u64()? >= 4).then_some(d)
        },
    );
    assert_eq!(dev["customer"], "dental");
    let hist = central.get(
        &format!(
            "/api/v1/sites/{site}/devices/{}/metrics?series=cpu",
            agent.device_id
        ),
        &viewer,
    );
    assert!(!hist["points"].as_array().unwrap().is_empty(), "{hist}");
    // ... and in the web view, after a password login.
    let (ok, _, err) = central.cli(
        &[
            "user", "add", "--tenant", "acme", "--name", "ops", "--role", "viewer",
        ],
        Some("correct horse battery\n"),
    );
    assert!(ok, "{err}");
    let (st, head, _) = raw(
        central.http,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "tenant=acme&username=ops&password=correct+horse+battery",
    );
    assert_eq!(st, 303, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_string();
    let (st, _, page) = raw(
        central.http,
        "GET",
        &format!("/sites/{site}/devices/{}", agent.device_id),
        &[("Cookie", &cookie)],
        "",
    );
    assert_eq!(st, 200, "{page}");
    assert!(
        page.contains("<svg id=\"chart-cpu\"") && page.contains("cpu") && page.contains("online"),
        "{page}"
    );
    // A tag set at the site reaches central's search (batch format 6,
    // uplink protocol 6): the Tag filter finds the device.
    let (st, body) = app.api_send(
        "PUT",
        &format!("/api/v1/devices/{}/tags", agent.device_id),
        Some(&serde_json::json!(["e2e-tagged"])),
    );
    assert_eq!(st, 200, "{body}");
    wait_for(
        Duration::from_secs(60),
        "the site's tag in central's device search",
        || {
            let (st, _, page) = raw(
                central.http,
                "GET",
                "/devices?tag=e2e-tagged",
                &[("Cookie", &cookie)],
                "",
            );
            (st == 200 && page.contains(agent.device_id.as_str())).then_some(())
        },
    );
    let s = central.get(&format!("/api/v1/sites/{site}"), &viewer);
    assert_eq!(s["link"], "connected");
    assert_eq!(s["stale"], false);
    let summary = central.get("/api/v1/summary", &viewer);
    assert_eq!(summary["totals"]["online"], 1, "{summary}");
    let st = uplink_status(&app);
    assert_eq!(st["link"], "connected", "{st}");
    assert_eq!(st["site_id"], site.as_str());
    assert!(st["last_acked_seq"].as_u64().unwrap() >= 1);
    let human = app.cli_ok(&["uplink", "status"]);
    assert!(human.contains("connected"), "{human}");
    assert!(central.metric("outpost_central_batches_applied_total") >= 1.0);
    assert!(app.metric("outpost_uplink_batches_acked_total") >= 1.0);

    // An alert raised by the appliance's own engine reaches central.
    let (st, body) = app.api_post(
        "/api/v1/alert-rules",
        &serde_json::json!({
            "id": "cpu-seen", "name": "cpu reported", "severity": "info",
            "condition": {"type": "threshold", "metric": "cpu", "comparison": ">=", "threshold": 0, "for": "0s"},
        }),
    );
    assert_eq!(st, 200, "{body}");
    let alert = wait_for(Duration::from_secs(60), "the alert at central", || {
        let v = central.get(&format!("/api/v1/alerts?site={site}"), &viewer);
        v.as_array()?
            .iter()
            .find(|a| a["rule"] == "cpu reported" && a["state"] == "firing")
            .cloned()
    });
    assert_eq!(alert["device"], agent.device_id.as_str(), "{alert}");
    assert_eq!(alert["customer"], "dental", "{alert}");

    // A pending alert is counted apart from firing ones, and when it
    // clears without firing central shows it cleared, not resolved.
    let (st, body) = app.api_post(
        "/api/v1/alert-rules",
        &serde_json::json!({
            "id": "cpu-wait", "name": "cpu waiting", "severity": "info",
            "condition": {"type": "threshold", "metric": "cpu", "comparison": ">=", "threshold": 0, "for": "1h"},
        }),
    );
    assert_eq!(st, 200, "{body}");
    let count = |alerts: &Value, state: &str| {
        alerts.as_array().map_or(0, |v| {
            v.iter().filter(|a| a["state"] == state).count() as u64
        })
    };
    wait_for(
        Duration::from_secs(60),
        "the pending alert at central, counted apart",
        || {
            let alerts = central.get(&format!("/api/v1/alerts?site={site}"), &viewer);
            let summary = central.get("/api/v1/summary", &viewer);
            let t = &summary["totals"];
            let ours = alerts
                .as_array()?
                .iter()
                .any(|a| a["rule"] == "cpu waiting" && a["state"] == "pending");
            (ours
                && t["alerts_pending"] == count(&alerts, "pending")
                && t["alerts_firing"] == count(&alerts, "firing")
                && t["alerts_firing"].as_u64()? >= 1)
                .then_some(())
        },
    );
    let (st, body) = app.api_send(
        "PUT",
        "/api/v1/alert-rules/cpu-wait",
        Some(&serde_json::json!({
            "name": "cpu waiting", "severity": "info", "enabled": false,
            "condition": {"type": "threshold", "metric": "cpu", "comparison": ">=", "threshold": 0, "for": "1h"},
        })),
    );
    assert_eq!(st, 200, "{body}");
    let cleared = wait_for(Duration::from_secs(60), "cleared at central", || {
        let v = central.get(&format!("/api/v1/alerts?site={site}"), &viewer);
        v.as_array()?
            .iter()
            .find(|a| a["rule"] == "cpu waiting" && a["state"] != "pending")
            .cloned()
    });
    assert_eq!(cleared["state"], "cleared", "{cleared}");
    let active = central.get(&format!("/api/v1/alerts?site={site}&active=true"), &viewer);
    assert!(
        !active
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["rule"] == "cpu waiting"),
        "{active}"
    );
    agent.stop();
}

/// Counts the appliance's stored rollups per device (database closed).
pub(crate) fn appliance_rollups(dir: &Path) -> std::collections::HashMap<String, u64> {
    let store = outpost_appliance::db::open(&dir.join("db"), &Default::default())
        .expect("open appliance db");
    let mut n = std::collections::HashMap::new();
    store
        .scan_raw(outpost_storage::rollup::ROLLUPS, &[], None, |k, _| {
            if let Some(d) = outpost_storage::keys::device_from_key(k) {
                *n.entry(d.to_string()).or_insert(0) += 1;
            }
            Ok(true)
        })
        .expect("scan");
    n
}

#[test]
fn central_outage_every_rollup_arrives_exactly_once_and_status_is_current() {
    let tmp = scratch("uplink-outage");
    let root = tmp.path();
    let mut central = Central::start(root);
    let (token, fp) = central.site_add("acme", "dental", "branch");
    let cfg = fast_config(root, "");
    let mut app = Appliance::start_with(root, &["--config", cfg.to_str().unwrap()]);
    let site = join(&app, &central, &token, &fp);
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| Agent::enroll(root, &format!("agent-{i}"), &app))
        .collect();
    for a in &mut agents {
        a.start();
    }
    let viewer = central.api_token("acme", "viewer");
    wait_for(Duration::from_secs(60), "first rollups at central", || {
        let v = central.get(&format!("/api/v1/devices?site={site}"), &viewer);
        (v["devices"]
            .as_array()?
            .iter()
            .filter(|d| d["rollups_stored"].as_u64().unwrap_or(0) > 0)
            .count()
            == 2)
            .then_some(())
    });
    // Outage: several buckets close while central is down.
    central.stop();
    wait_for(
        Duration::from_secs(30),
        "appliance sees the link down",
        || (uplink_status(&app)["link"] != "connected").then_some(()),
    );
    wait_for(
        Duration::from_secs(30),
        "batches waiting in the outbox",
        || (uplink_status(&app)["backlog_batches"].as_u64()? >= 2).then_some(()),
    );
    central.restart();
    wait_for(Duration::from_secs(30), "link back", || {
        let st = uplink_status(&app);
        (st["link"] == "connected").then_some(())
    });
    // Current status right after reconnection.
    let devs = central.get(&format!("/api/v1/devices?site={site}"), &viewer);
    for d in devs["devices"].as_array().unwrap() {
        assert_eq!(d["status"], "online", "{d}");
    }
    // Stop the agents, let the last buckets close and drain.
    for a in &mut agents {
        a.stop();
    }
    std::thread::sleep(Duration::from_secs(5));
    wait_for(Duration::from_secs(30), "outbox drained", || {
        let st = uplink_status(&app);
        (st["backlog_batches"] == 0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    wait_for(Duration::from_secs(30), "outbox drained", || {
        (uplink_status(&app)["backlog_batches"] == 0).then_some(())
    });
    app.stop();
    let local = appliance_rollups(&app.dir);
    let devs = central.get(&format!("/api/v1/devices?site={site}"), &viewer);
    let mut compared = 0;
    for a in &agents {
        let d = devs["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == a.device_id.as_str())
            .expect("device at central");
        let at_central = d["rollups_stored"].as_u64().unwrap();
        let at_site = local.get(&a.device_id).copied().unwrap_or(0);
        assert!(at_site >= 10, "enough rollups to mean something: {at_site}");
        assert_eq!(
            at_central, at_site,
            "device {}: central {at_central} vs appliance {at_site}",
            a.device_id
        );
        compared += 1;
    }
    assert_eq!(compared, 2);
    assert_eq!(
        central.metric("outpost_central_rollups_replaced_total"),
        0.0
    );
}

/// The uplink over a bad WAN: every datagram between the appliance and
/// central crosses a relay that loses 10 % of them each way and delays
/// them 200 ms (+ up to 20 ms of jitter, so some are reordered), and the
/// link is cut completely for a while. Every rollup the site computed
/// arrives at central exactly once (none missing, none re-applied).
///
/// The impairment is the user-space relay of `outpost_bench::netem` (the
/// kernel's `tc netem` needs the `sch_netem` module, which this kind of
/// machine does not have). `OUTPOST_WAN_CUT_SECS` (default 10) sets the
/// cut; the longer run in benches/RESULTS.md uses 600.
#[test]
fn a_lossy_delayed_and_cut_wan_delivers_every_rollup_exactly_once() {
    let cut_secs: u64 = std::env::var("OUTPOST_WAN_CUT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let tmp = scratch("uplink-wan");
    let root = tmp.path();
    let central = Central::start(root);
    let (token, fp) = central.site_add("acme", "dental", "far-away");
    let cfg = fast_config(root, "");
    let mut app = Appliance::start_with(root, &["--config", cfg.to_str().unwrap()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let wan = Impairment::new(10.0, Duration::from_millis(200), Duration::from_millis(20));
    let relay = wan_relay(&rt, &central, &wan);
    let o = join_cli_at(&app, relay.addr, &token, &fp);
    assert!(o.status.success(), "join over the WAN: {}", stderr(&o));
    let site = stdout(&o).trim().to_string();
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| Agent::enroll(root, &format!("agent-{i}"), &app))
        .collect();
    for a in &mut agents {
        a.start();
    }
    let viewer = central.api_token("acme", "viewer");
    wait_for(Duration::from_secs(90), "first rollups at central", || {
        let v = central.get(&format!("/api/v1/devices?site={site}"), &viewer);
        (v["devices"]
            .as_array()?
            .iter()
            .filter(|d| d["rollups_stored"].as_u64().unwrap_or(0) > 0)
            .count()
            == 2)
            .then_some(())
    });
    // The cut: nothing crosses for `cut_secs` (the scenario's own length,
    // not a wait for something to happen); buckets keep closing meanwhile.
    wan.set_cut(true);
    std::thread::sleep(Duration::from_secs(cut_secs));
    let backlog = uplink_status(&app)["backlog_batches"].as_u64().unwrap_or(0);
    assert!(backlog >= 2, "batches waited out the cut: {backlog}");
    wan.set_cut(false);
    // Stop the agents; the last buckets close and everything drains over
    // the lossy link.
    for a in &mut agents {
        a.stop();
    }
    wait_for(
        Duration::from_secs(180),
        "outbox drained over the WAN",
        || {
            let st = uplink_status(&app);
            (st["backlog_batches"] == 0 && st["link"] == "connected").then_some(())
        },
    );
    // The last 2 s bucket closes (+ 500 ms settle) after the agents
    // stopped: let it, then drain again.
    std::thread::sleep(Duration::from_secs(4));
    wait_for(Duration::from_secs(180), "last buckets drained", || {
        (uplink_status(&app)["backlog_batches"] == 0).then_some(())
    });
    app.stop();
    let local = appliance_rollups(&app.dir);
    let devs = central.get(&format!("/api/v1/devices?site={site}"), &viewer);
    for a in &agents {
        let d = devs["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == a.device_id.as_str())
            .expect("device at central");
        let at_central = d["rollups_stored"].as_u64().unwrap();
        let at_site = local.get(&a.device_id).copied().unwrap_or(0);
        assert!(at_site >= 5, "enough rollups to mean something: {at_site}");
        assert_eq!(
            at_central, at_site,
            "device {}: central {at_central} vs appliance {at_site}",
            a.device_id
        );
    }
    assert_eq!(
        central.metric("outpost_central_rollups_replaced_total"),
        0.0,
        "no rollup applied twice"
    );
    let dropped = relay.stats.lost.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        dropped > 0,
        "the WAN really lost datagrams: {}",
        relay.stats.line()
    );
    eprintln!(
        "WAN: {}; cut {cut_secs} s, backlog at the end of the cut {backlog}; central applied {} batches, {} duplicates",
        relay.stats.line(),
        central.metric("outpost_central_batches_applied_total"),
        central.metric("outpost_central_batches_duplicate_total"),
    );
    drop(relay);
}

/// The join's answer spends the one-time token, so central must not drop
/// the connection while the answer is still crossing a bad WAN: here the
/// link is cut (what is in flight lost too) the moment central has
/// accepted the join, for longer than central used to keep the
/// connection, and the join still completes once the link is back.
#[test]
fn a_join_whose_answer_is_cut_off_completes_when_the_link_returns() {
    let tmp = scratch("uplink-join-cut");
    let root = tmp.path();
    let central = Central::start(root);
    let (token, fp) = central.site_add("acme", "dental", "far-away");
    let app = Appliance::start(root);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // 400 ms each way: the cut below starts well before the answer
    // arrives, and central's retransmissions (timeouts doubling from about
    // 2.4 s) bring it within the appliance's wait once the link is back.
    let wan = Impairment::new(0.0, Duration::from_millis(400), Duration::ZERO);
    let relay = wan_relay(&rt, &central, &wan);
    let cut = Duration::from_secs(6);
    let started = std::time::Instant::now();
    let (joined, done_at, cut_ended_at) = std::thread::scope(|s| {
        let join = s.spawn(|| {
            let o = join_cli_at(&app, relay.addr, &token, &fp);
            (o, started.elapsed())
        });
        // Polled closely: the answer is 400 ms away when this sees the join.
        while central.metric("outpost_central_joins_total") < 1.0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "central never accepted the join (WAN: {})",
                relay.stats.line()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        wan.set_cut(true);
        std::thread::sleep(cut);
        wan.set_cut(false);
        let cut_ended_at = started.elapsed();
        let (o, done_at) = join.join().expect("join thread");
        (o, done_at, cut_ended_at)
    });
    assert!(
        joined.status.success(),
        "join with its answer cut off for {cut:?}: {} (WAN: {})",
        stderr(&joined),
        relay.stats.line()
    );
    assert!(
        stdout(&joined).trim().starts_with("s-"),
        "{}",
        stdout(&joined)
    );
    assert!(
        done_at > cut_ended_at,
        "the answer was held up by the cut (join done at {done_at:?}, cut ended at {cut_ended_at:?})"
    );
    assert_eq!(
        uplink_status(&app)["joined"],
        true,
        "{}",
        uplink_status(&app)
    );
    eprintln!(
        "join across a {cut:?} cut: done at {done_at:?}, cut ended at {cut_ended_at:?}; WAN: {}",
        relay.stats.line()
    );
}

/// `site add` then a join of site `name` as a site client (files in
/// `root/site-NAME`).
fn join_site(
    root: &Path,
    central: &Central,
    tenant: &str,
    name: &str,
) -> anyhow::Result<outpost_uplink::site_files::JoinedSite> {
    let (token, fp) = central.site_add(tenant, "dental", name);
    join_with(root, central, name, &token, &fp)
}

pub fn join_with(
    root: &Path,
    central: &Central,
    name: &str,
    token: &str,
    fp: &str,
) -> anyhow::Result<outpost_uplink::site_files::JoinedSite> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = outpost_uplink::site_files::UplinkDir::new(&root.join(format!("site-{name}")));
    let params = outpost_uplink::join::JoinParams {
        central: central.quic.to_string(),
        token: token.to_string(),
        fingerprint: fp.parse()?,
        interval: Duration::from_secs(1),
    };
    rt.block_on(outpost_uplink::join::join(&dir, &params, "test"))
}

/// A site client speaking the uplink protocol directly (to replay batches).
pub struct SiteClient {
    rt: tokio::runtime::Runtime,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    reader: outpost_proto::frame::FrameReader,
    _ep: quinn::Endpoint,
    site: outpost_proto::SiteId,
    tenant: outpost_proto::TenantId,
}

impl SiteClient {
    pub fn join(root: &Path, central: &Central, tenant: &str, name: &str) -> SiteClient {
        join_site(root, central, tenant, name).expect("join");
        SiteClient::connect(root, central, name).expect("uplink connection")
    }

    /// A new uplink connection of the site `name` joined before.
    pub fn connect(root: &Path, central: &Central, name: &str) -> anyhow::Result<SiteClient> {
        SiteClient::connect_version(
            root,
            central,
            name,
            outpost_uplink::wire::UPLINK_PROTOCOL_VERSION,
        )
    }

    /// Joins the site `name` of `tenant` and connects saying protocol
    /// `version` (1: an appliance from before the command downlink).
    pub fn join_version(
        root: &Path,
        central: &Central,
        tenant: &str,
        name: &str,
        version: u16,
    ) -> SiteClient {
        join_site(root, central, tenant, name).expect("join");
        SiteClient::connect_version(root, central, name, version).expect("uplink connection")
    }

    /// [`SiteClient::connect`] saying protocol `version` in its `Hello`.
    pub fn connect_version(
        root: &Path,
        central: &Central,
        name: &str,
        version: u16,
    ) -> anyhow::Result<SiteClient> {
        use outpost_uplink::wire::*;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .worker_threads(1)
            .build()?;
        let dir = outpost_uplink::site_files::UplinkDir::new(&root.join(format!("site-{name}")));
        let ident = dir
            .load()?
            .ok_or_else(|| anyhow::anyhow!("site {name} not joined"))?;
        let (ep, conn, send, recv, reader) = rt.block_on(async {
            let cfg =
                outpost_uplink::join::quic_client_config(outpost_proto::tls::mtls_client_config(
                    ident.central_ca.clone(),
                    vec![ident.cert.clone()],
                    ident.key.clone_key(),
                    ALPN_UPLINK,
                )?)?;
            let ep = outpost_uplink::join::client_endpoint(central.quic)?;
            let conn = ep
                .connect_with(cfg, central.quic, CENTRAL_SERVER_NAME)?
                .await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            let hello = SiteFrame::Hello(SiteHello {
                protocol_version: version,
                appliance_version: "test".into(),
                interval_ms: 1000,
                backlog_batches: 0,
            });
            send.write_all(&outpost_proto::frame::encode_frame(
                &hello,
                MAX_UPLINK_FRAME_BYTES,
            )?)
            .await?;
            let mut reader = outpost_proto::frame::FrameReader::new(MAX_UPLINK_FRAME_BYTES);
            let w: Option<CentralFrame> =
                tokio::time::timeout(Duration::from_secs(10), reader.next(&mut recv)).await??;
            anyhow::ensure!(matches!(w, Some(CentralFrame::Welcome(_))), "{w:?}");
            anyhow::Ok((ep, conn, send, recv, reader))
        })?;
        Ok(SiteClient {
            rt,
            conn,
            send,
            recv,
            reader,
            _ep: ep,
            site: ident.site.site_id.clone(),
            tenant: ident.site.tenant.clone(),
        })
    }

    pub fn send(&mut self, b: &SiteBatch) -> outpost_uplink::wire::CentralFrame {
        use outpost_uplink::wire::*;
        let payload = batch::encode(b, 3).unwrap();
        let f = SiteFrame::Batch(WireBatch {
            seq: b.seq,
            payload,
        });
        self.rt.block_on(async {
            self.send
                .write_all(&outpost_proto::frame::encode_frame(&f, MAX_UPLINK_FRAME_BYTES).unwrap())
                .await
                .unwrap();
            self.reader.next(&mut self.recv).await.unwrap().unwrap()
        })
    }

    /// Writes one frame to central (no answer read).
    pub fn send_frame(&mut self, f: &outpost_uplink::wire::SiteFrame) {
        use outpost_uplink::wire::MAX_UPLINK_FRAME_BYTES;
        self.rt.block_on(async {
            self.send
                .write_all(&outpost_proto::frame::encode_frame(f, MAX_UPLINK_FRAME_BYTES).unwrap())
                .await
                .unwrap();
        })
    }

    /// The next frame central sends (within 10 s).
    pub fn next_frame(&mut self) -> outpost_uplink::wire::CentralFrame {
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), self.reader.next(&mut self.recv))
                .await
                .expect("a frame from central in time")
                .unwrap()
                .unwrap()
        })
    }

    pub fn batch(&self, seq: u64, device: u64, buckets: std::ops::Range<u64>) -> SiteBatch {
        let rollup = batch::Rollup {
            min: 1.0,
            max: 3.0,
            sum: 6.0,
            count: 3,
            last: 2.0,
            last_ts_ms: 1,
        };
        SiteBatch {
            seq,
            site: self.site.clone(),
            tenant: self.tenant.clone(),
            created_ms: outpost_uplink::now_ms(),
            devices: vec![DeviceUpdate {
                device: DeviceId(device),
                customer: "dental".into(),
                hostname: format!("host-{device}"),
                os: "Debian".into(),
                agent_version: "0.1.0".into(),
                enrolled_at_ms: 1,
                revoked: false,
                status: batch::DeviceStatus::Online,
                status_since_ms: 1,
                last_seen_ms: 1,
                as_of_ms: seq,
            }],
            rollups: buckets
                .map(|b| DeviceRollups {
                    device: DeviceId(device),
                    bucket_start_ms: b * 300_000,
                    computed_ms: 1,
                    series: vec![SeriesRollup {
                        name: "cpu".into(),
                        label: String::new(),
                        // A shape worth charting: 20 + 10 * (b mod 5).
                        rollup: {
                            let v = 20.0 + 10.0 * (b % 5) as f64;
                            batch::Rollup {
                                min: v - 1.0,
                                max: v + 1.0,
                                sum: v * 3.0,
                                last: v,
                                ..rollup
                            }
                        },
                    }],
                })
                .collect(),
            alerts: vec![AlertTransition {
                alert_id: seq,
                device: Some(DeviceId(device)),
                rule: "cpu_high".into(),
                severity: Severity::Critical,
                state: AlertState::Firing,
                at_ms: seq,
                message: "cpu 97 > 90".into(),
                value: Some(97.0),
            }],
            ..Default::default()
        }
    }
}

impl Drop for SiteClient {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"done");
        // Let the endpoint's driver send the close before its runtime goes
        // away: otherwise central learns of it only at its 30 s idle timeout.
        let ep = self._ep.clone();
        self.rt.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        });
    }
}

#[test]
fn replayed_and_out_of_order_batches_apply_once_and_foreign_claims_are_rejected() {
    let tmp = scratch("uplink-replay");
    replay_scenario(tmp.path(), &[]);
}

/// The same on `serve --store postgres://…` (the operator CLI goes through
/// the running central's API: `site add` in `SiteClient::join`).
#[test]
fn on_postgres_replayed_and_out_of_order_batches_apply_once_and_foreign_claims_are_rejected() {
    use outpost_central::pg::cluster::TestCluster;
    let Some(pg) = TestCluster::shared_or_skip("uplink-replay-postgres") else {
        return;
    };
    let db = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pg.create_database());
    let tmp = scratch("uplink-replay-pg");
    replay_scenario(tmp.path(), &["--store", &pg.postgres_url(&db)]);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("central/store")).unwrap(),
        "postgres\n"
    );
    assert!(
        !tmp.path().join("central/db").exists(),
        "no RocksDB was made beside the PostgreSQL central"
    );
}

fn replay_scenario(root: &Path, central_args: &[&str]) {
    use outpost_uplink::wire::{CentralFrame, RejectReason};
    let central = Central::start_with(root, central_args);
    let mut c = SiteClient::join(root, &central, "acme", "replay");
    let viewer = central.api_token("acme", "viewer");
    let b2 = c.batch(2, 7, 10..14);
    assert_eq!(c.send(&b2), CentralFrame::Ack { seq: 2 });
    assert_eq!(
        c.send(&b2),
        CentralFrame::Ack { seq: 2 },
        "a duplicate is acknowledged"
    );
    let b1 = c.batch(1, 7, 5..10);
    assert_eq!(
        c.send(&b1),
        CentralFrame::Ack { seq: 1 },
        "an old batch out of order applies"
    );
    assert_eq!(c.send(&b1), CentralFrame::Ack { seq: 1 });
    let dev = central.get(
        &format!("/api/v1/sites/{}/devices/0000000000000007", c.site),
        &viewer,
    );
    assert_eq!(dev["device"]["rollups_stored"], 9, "{dev}");
    assert_eq!(dev["device"]["hostname"], "host-7");
    let site = central.get(&format!("/api/v1/sites/{}", c.site), &viewer);
    assert_eq!(site["applied_up_to"], 2);
    assert_eq!(site["batches_applied"], 2);
    assert_eq!(
        central.metric("outpost_central_batches_duplicate_total"),
        2.0
    );
    // A batch claiming another tenant (or site) is refused and counted.
    let mut foreign = c.batch(3, 8, 0..2);
    foreign.tenant = "other-msp".into();
    assert!(matches!(
        c.send(&foreign),
        CentralFrame::Reject {
            seq: 3,
            reason: RejectReason::IdentityMismatch,
            ..
        }
    ));
    let mut foreign = c.batch(3, 8, 0..2);
    foreign.site = "s-someone-else".into();
    assert!(matches!(
        c.send(&foreign),
        CentralFrame::Reject {
            seq: 3,
            reason: RejectReason::IdentityMismatch,
            ..
        }
    ));
    assert_eq!(
        central.metric("outpost_central_batch_rejects_total{reason=\"identity_mismatch\"}"),
        2.0
    );
    // Refused for good: not applied, but dead-lettered on the site so the
    // sequence closes over it (issue 11, item 6: it used to stay a gap).
    let site = central.get(&format!("/api/v1/sites/{}", c.site), &viewer);
    assert_eq!(
        site["batches_applied"], 2,
        "rejected batches are not applied"
    );
    assert_eq!(site["applied_up_to"], 3, "{site}");
    assert_eq!(site["dead_lettered"], 1, "{site}");
    assert_eq!(site["dead_letters"][0]["seq"], 3, "{site}");
    assert_eq!(site["dead_letters"][0]["reason"], "identity_mismatch");
    let devs = central.get("/api/v1/devices", &viewer);
    assert_eq!(devs["devices"].as_array().unwrap().len(), 1);
    // The next batches fold into the prefix.
    assert_eq!(c.send(&c.batch(5, 7, 20..21)), CentralFrame::Ack { seq: 5 });
    assert_eq!(c.send(&c.batch(4, 7, 21..22)), CentralFrame::Ack { seq: 4 });
    let site = central.get(&format!("/api/v1/sites/{}", c.site), &viewer);
    assert_eq!(site["applied_up_to"], 5, "{site}");
    assert_eq!(
        central.metric("outpost_central_batches_dead_lettered_total"),
        1.0
    );
}

/// Issue 11, item 7: central holds at most `--max-connections`
/// connections (more are refused at once, counted) and at most
/// `--max-connections-per-site` uplinks of one site; a freed slot takes
/// the next connection.
#[test]
fn central_caps_connections_in_all_and_per_site() {
    let tmp = scratch("uplink-conn-cap");
    let root = tmp.path();
    let central = Central::start_with(
        root,
        &["--max-connections", "2", "--max-connections-per-site", "1"],
    );
    let mut a = SiteClient::join(root, &central, "acme", "cap-a");
    assert!(
        SiteClient::connect(root, &central, "cap-a").is_err(),
        "a second uplink of the same site is refused"
    );
    wait_for(
        Duration::from_secs(10),
        "the per-site refusal counted",
        || {
            (central.metric(
                "outpost_central_connection_rejects_total{reason=\"site_connection_limit\"}",
            ) == 1.0)
                .then_some(())
        },
    );
    join_site(root, &central, "acme", "cap-b").expect("join b");
    // The join's slot frees when its connection closes.
    let b = wait_for(Duration::from_secs(10), "b's uplink", || {
        SiteClient::connect(root, &central, "cap-b").ok()
    });
    // Two connections open: a third is refused at once, the join token kept.
    let (token, fp) = central.site_add("acme", "dental", "cap-c");
    assert!(join_with(root, &central, "cap-c", &token, &fp).is_err());
    assert!(
        central.metric("outpost_central_connection_rejects_total{reason=\"connection_limit\"}")
            >= 1.0
    );
    drop(b);
    wait_for(Duration::from_secs(15), "a freed slot", || {
        join_with(root, &central, "cap-c", &token, &fp).ok()
    });
    // The first site was never disturbed.
    assert_eq!(
        a.send(&a.batch(1, 7, 0..2)),
        outpost_uplink::wire::CentralFrame::Ack { seq: 1 }
    );
}

/// Issue 11, items 4 and 7, over real sockets: failed logins from one
/// address are limited (429 with Retry-After), and `/metrics` names sites
/// only for the operator token.
#[test]
fn logins_are_limited_per_address_and_site_metrics_need_the_operator_token() {
    let tmp = scratch("uplink-login-limits");
    let root = tmp.path();
    let central = Central::start(root);
    let h = central.http;
    let mut a = SiteClient::join(root, &central, "acme", "metrics-a");
    assert_eq!(
        a.send(&a.batch(1, 7, 0..2)),
        outpost_uplink::wire::CentralFrame::Ack { seq: 1 }
    );
    let open = http_get(h, "/metrics", None).unwrap();
    assert!(
        open.contains("outpost_central_batches_applied_total 1"),
        "{open}"
    );
    assert!(
        !open.contains(a.site.as_str()) && !open.contains("acme"),
        "{open}"
    );
    let admin = std::fs::read_to_string(central.dir.join("admin.token")).unwrap();
    let all = http_get(h, "/metrics", Some(admin.trim())).unwrap();
    assert!(
        all.contains(&format!(
            "site_lag_seconds{{tenant=\"acme\",site=\"{}\"}}",
            a.site
        )),
        "{all}"
    );
    // 30 failed logins from 127.0.0.1 (any names), then 429.
    let login = |user: &str| {
        raw(
            h,
            "POST",
            "/api/v1/login",
            &[("Content-Type", "application/json")],
            &format!(r#"{{"tenant":"acme","username":"{user}","password":"nope nope"}}"#),
        )
    };
    for i in 0..30 {
        let (st, _, body) = login(&format!("guess{i}"));
        assert_eq!(st, 401, "attempt {i}: {body}");
    }
    let (st, head, body) = login("guess-more");
    assert_eq!(st, 429, "{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    assert_eq!(
        central.metric("outpost_central_logins_throttled_total"),
        1.0
    );
    assert_eq!(central.metric("outpost_central_logins_failed_total"), 30.0);
}

/// One HTTP request with extra headers: (status, head, body).
fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), rest.to_string())
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn tenants_are_isolated_viewers_cannot_change_anything_and_logins_use_secure_cookies() {
    let tmp = scratch("uplink-rbac");
    let root = tmp.path();
    let central = Central::start(root);
    let mut a = SiteClient::join(root, &central, "acme", "a-site");
    let mut b = SiteClient::join(root, &central, "beta", "b-site");
    assert_eq!(
        a.send(&a.batch(1, 7, 0..3)),
        outpost_uplink::wire::CentralFrame::Ack { seq: 1 }
    );
    assert_eq!(
        b.send(&b.batch(1, 8, 0..3)),
        outpost_uplink::wire::CentralFrame::Ack { seq: 1 }
    );
    let tok = |t: &str, r: &str| central.api_token(t, r);
    let (a_admin, a_tech, a_viewer, b_admin) = (
        tok("acme", "admin"),
        tok("acme", "technician"),
        tok("acme", "viewer"),
        tok("beta", "admin"),
    );
    let (ok, scoped, err) = central.cli(
        &[
            "token",
            "create",
            "--tenant",
            "acme",
            "--role",
            "viewer",
            "--customer",
            "someone-else",
        ],
        None,
    );
    assert!(ok, "{err}");
    let scoped = scoped.trim().to_string();
    let h = central.http;
    let dev_a = "0000000000000007";
    // Every route that names an acme object.
    let object_routes = [
        format!("/api/v1/sites/{}", a.site),
        format!("/api/v1/sites/{}/devices/{dev_a}", a.site),
        format!(
            "/api/v1/sites/{}/devices/{dev_a}/metrics?series=cpu",
            a.site
        ),
        format!("/api/v1/devices?site={}", a.site),
        format!("/api/v1/alerts?site={}", a.site),
        format!("/sites/{}", a.site),
        format!("/sites/{}/devices/{dev_a}", a.site),
    ];
    for r in &object_routes {
        let (st, _, body) = raw(h, "GET", r, &[("Authorization", &bearer(&a_viewer))], "");
        if r.starts_with("/api") {
            assert_eq!(st, 200, "acme viewer GET {r}: {body}");
        }
        for other in [&b_admin, &scoped] {
            let (st, _, body) = raw(h, "GET", r, &[("Authorization", &bearer(other))], "");
            if r.starts_with("/api") {
                assert_eq!(st, 404, "foreign GET {r} must be 404: {body}");
            }
        }
        let (st, _, _) = raw(h, "GET", r, &[], "");
        assert!(
            st == 401 || (st == 303 && !r.starts_with("/api")),
            "anonymous GET {r}: {st}"
        );
    }
    // Lists of the other tenant show nothing of acme.
    for r in [
        "/api/v1/sites",
        "/api/v1/devices",
        "/api/v1/alerts",
        "/api/v1/summary",
        "/api/v1/customers",
        "/api/v1/me",
    ] {
        let (st, _, body) = raw(h, "GET", r, &[("Authorization", &bearer(&b_admin))], "");
        assert_eq!(st, 200, "{r}: {body}");
        assert!(
            !body.contains(a.site.as_str()) && !body.contains("acme"),
            "beta sees acme in {r}: {body}"
        );
        let (st, _, body) = raw(h, "GET", r, &[("Authorization", &bearer(&a_viewer))], "");
        assert_eq!(st, 200, "{r}: {body}");
        assert!(
            !body.contains(b.site.as_str()) && !body.contains("beta"),
            "acme sees beta in {r}: {body}"
        );
    }
    // Alert acknowledgement: technicians and admins; viewers cannot; another
    // tenant gets 404.
    let ack = format!("/api/v1/sites/{}/alerts/1/ack", a.site);
    let (st, _, _) = raw(
        h,
        "POST",
        &ack,
        &[("Authorization", &bearer(&a_viewer))],
        "",
    );
    assert_eq!(st, 403, "a viewer cannot acknowledge");
    let (st, _, _) = raw(h, "POST", &ack, &[("Authorization", &bearer(&b_admin))], "");
    assert_eq!(st, 404, "another tenant's alert is 404");
    let (st, _, body) = raw(h, "POST", &ack, &[("Authorization", &bearer(&a_tech))], "");
    assert_eq!(st, 200, "{body}");
    let al = central.get(&format!("/api/v1/alerts?site={}", a.site), &a_viewer);
    assert!(
        al[0]["acked_by"].as_str().unwrap().starts_with("token:"),
        "{al}"
    );
    let (st, _, _) = raw(
        h,
        "POST",
        &format!("/api/v1/sites/{}/alerts/99/ack", a.site),
        &[("Authorization", &bearer(&a_admin))],
        "",
    );
    assert_eq!(st, 404);
    // Changes: viewers and technicians cannot; admins can (in their tenant only).
    let writes = [
        ("/api/v1/sites", r#"{"customer":"dental","site":"new"}"#),
        ("/api/v1/tokens", r#"{"role":"viewer"}"#),
        (
            "/api/v1/users",
            r#"{"name":"bob","role":"viewer","password":"hunter22hunter"}"#,
        ),
    ];
    for (r, body) in writes {
        for t in [&a_viewer, &a_tech] {
            let (st, _, resp) = raw(
                h,
                "POST",
                r,
                &[
                    ("Authorization", &bearer(t)),
                    ("Content-Type", "application/json"),
                ],
                body,
            );
            assert_eq!(st, 403, "POST {r} by a non-admin: {resp}");
        }
        let (st, _, resp) = raw(
            h,
            "POST",
            r,
            &[
                ("Authorization", &bearer(&a_admin)),
                ("Content-Type", "application/json"),
            ],
            body,
        );
        assert_eq!(st, 201, "POST {r} by an admin: {resp}");
        let (st, _, _) = raw(
            h,
            "POST",
            &format!("/api/v1/admin{}", &r[7..]),
            &[
                ("Authorization", &bearer(&a_admin)),
                ("Content-Type", "application/json"),
            ],
            body,
        );
        assert_eq!(st, 401, "operator endpoints refuse tenant tokens");
    }
    // Password login: argon2, Secure/HttpOnly/SameSite session cookie.
    let (ok, _, err) = central.cli(
        &[
            "user", "add", "--tenant", "acme", "--name", "alice", "--role", "viewer",
        ],
        Some("correct horse battery\n"),
    );
    assert!(ok, "{err}");
    let login = |pw: &str| {
        raw(
            h,
            "POST",
            "/api/v1/login",
            &[("Content-Type", "application/json")],
            &format!(r#"{{"tenant":"acme","username":"alice","password":"{pw}"}}"#),
        )
    };
    let (st, _, _) = login("wrong horse");
    assert_eq!(st, 401);
    let (st, head, _) = raw(
        h,
        "POST",
        "/api/v1/login",
        &[("Content-Type", "application/json")],
        r#"{"tenant":"beta","username":"alice","password":"correct horse battery"}"#,
    );
    assert_eq!(st, 401, "a user belongs to one tenant: {head}");
    let (st, head, _) = login("correct horse battery");
    assert_eq!(st, 200, "{head}");
    let set = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("Set-Cookie")
        .to_string();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set.contains(flag), "{set}");
    }
    let cookie = set
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (st, _, body) = raw(h, "GET", "/api/v1/me", &[("Cookie", &cookie)], "");
    assert_eq!(st, 200);
    assert!(body.contains("alice") && body.contains("viewer"), "{body}");
    let (st, _, body) = raw(h, "GET", "/", &[("Cookie", &cookie)], "");
    assert_eq!(st, 200);
    assert!(
        body.contains("a-site") && !body.contains("b-site"),
        "{body}"
    );
    let (st, _, _) = raw(
        h,
        "GET",
        &format!("/sites/{}", b.site),
        &[("Cookie", &cookie)],
        "",
    );
    assert_eq!(st, 404, "another tenant's site page is 404");
    let (st, _, _) = raw(
        h,
        "POST",
        "/api/v1/sites",
        &[("Cookie", &cookie), ("Content-Type", "application/json")],
        writes[0].1,
    );
    assert_eq!(st, 403, "a viewer session cannot change anything");
    let (st, _, _) = raw(h, "POST", "/api/v1/logout", &[("Cookie", &cookie)], "");
    assert_eq!(st, 200);
    let (st, _, _) = raw(h, "GET", "/api/v1/me", &[("Cookie", &cookie)], "");
    assert_eq!(st, 401, "logged out");
    assert!(central.metric("outpost_central_logins_failed_total") >= 2.0);
}

#[test]
fn a_full_outbox_drops_the_oldest_rollups_first_and_keeps_device_status() {
    let tmp = scratch("uplink-bound");
    let root = tmp.path();
    let mut central = Central::start(root);
    let (token, fp) = central.site_add("acme", "dental", "tiny");
    let cfg = fast_config(root, "outbox_max_bytes = 1200\n");
    let app = Appliance::start_with(root, &["--config", cfg.to_str().unwrap()]);
    let site = join(&app, &central, &token, &fp);
    central.stop();
    let mut agent = Agent::enroll(root, "agent-b", &app);
    agent.start();
    wait_for(
        Duration::from_secs(60),
        "rollups dropped by the bound",
        || (app.metric("outpost_uplink_rollups_dropped_total") > 0.0).then_some(()),
    );
    let st = uplink_status(&app);
    assert!(st["dropped_rollups_total"].as_u64().unwrap() > 0, "{st}");
    assert!(
        st["backlog_bytes"].as_u64().unwrap() <= 1200
            || app.metric("outpost_uplink_outbox_over_limit_total") > 0.0,
        "{st}"
    );
    central.restart();
    let viewer = central.api_token("acme", "viewer");
    let d = wait_for(
        Duration::from_secs(30),
        "device status at central despite drops",
        || {
            let v = central.get(&format!("/api/v1/devices?site={site}"), &viewer);
            v["devices"]
                .as_array()?
                .iter()
                .find(|d| d["device"] == agent.device_id.as_str() && d["status"] == "online")
                .cloned()
        },
    );
    assert_eq!(d["customer"], "dental");
    let s = wait_for(
        Duration::from_secs(30),
        "dropped count reported to central",
        || {
            let s = central.get(&format!("/api/v1/sites/{site}"), &viewer);
            (s["dropped_rollups"].as_u64()? > 0).then_some(s)
        },
    );
    assert_eq!(s["link"], "connected");
    agent.stop();
}

/// Issue 10, item 6: after a re-join the old sender, still closing its
/// connection, must not report the link down once the new one is up.
#[test]
fn after_a_rejoin_the_link_stays_connected() {
    let tmp = scratch("uplink-rejoin");
    let root = tmp.path();
    let central = Central::start(root);
    let (token_a, fp) = central.site_add("acme", "dental", "first");
    let (token_b, _) = central.site_add("acme", "dental", "second");
    let cfg = fast_config(root, "");
    let app = Appliance::start_with(root, &["--config", cfg.to_str().unwrap()]);
    join(&app, &central, &token_a, &fp);
    wait_for(Duration::from_secs(30), "first site connected", || {
        (uplink_status(&app)["link"] == "connected").then_some(())
    });
    let site_b = join(&app, &central, &token_b, &fp);
    wait_for(Duration::from_secs(30), "second site connected", || {
        let st = uplink_status(&app);
        (st["link"] == "connected" && st["site_id"] == site_b.as_str()).then_some(())
    });
    // The old connection's close takes a few hundred milliseconds: watch
    // well past it.
    for _ in 0..30 {
        let st = uplink_status(&app);
        assert_eq!(st["link"], "connected", "{st}");
        assert_eq!(app.metric("outpost_uplink_connected"), 1.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    let viewer = central.api_token("acme", "viewer");
    let s = central.get(&format!("/api/v1/sites/{site_b}"), &viewer);
    assert_eq!(s["link"], "connected", "{s}");
}

/// Issue 10, items 7 and 8: a device enrolled under another tenant than
/// the site's is listed under the site's tenant with the mismatch shown on
/// the site, counted at central and warned about by `outpost uplink
/// status`; central's last-seen moves while the device stays online; a
/// revoked device is `revoked` at central, not offline.
#[test]
fn tenant_mismatch_is_shown_last_seen_moves_and_revoked_is_its_own_state() {
    let tmp = scratch("uplink-tenant");
    let root = tmp.path();
    let central = Central::start(root);
    let (token, fp) = central.site_add("typo-msp", "dental", "main");
    let cfg = fast_config(root, "last_seen_resend = \"2s\"\n");
    let app = Appliance::start_with(root, &["--config", cfg.to_str().unwrap()]);
    let site = join(&app, &central, &token, &fp);
    let mut agent = Agent::enroll_as(root, "agent-t", &app, "acme-msp", "dental");
    agent.start();

    // The appliance warns.
    let st = uplink_status(&app);
    assert_eq!(
        st["foreign_tenants"],
        serde_json::json!([{"tenant": "acme-msp", "devices": 1}]),
        "{st}"
    );
    let human = app.cli_ok(&["uplink", "status"]);
    assert!(
        human.contains("WARNING")
            && human.contains("enrolled under tenant acme-msp")
            && human.contains("joined central as tenant typo-msp"),
        "{human}"
    );

    // Central lists the device under its own tenant and shows the mismatch.
    let viewer = central.api_token("typo-msp", "viewer");
    let first = wait_for(Duration::from_secs(60), "device online at central", || {
        let v = central.get(&format!("/api/v1/devices?site={site}"), &viewer);
        let d = v["devices"]
            .as_array()?
            .iter()
            .find(|d| d["device"] == agent.device_id.as_str())?
            .clone();
        (d["status"] == "online" && d["last_seen_ms"].as_u64()? > 0).then_some(d)
    });
    assert_eq!(first["tenant"], "typo-msp", "{first}");
    let s = wait_for(Duration::from_secs(30), "the mismatch on the site", || {
        let s = central.get(&format!("/api/v1/sites/{site}"), &viewer);
        (!s["tenant_mismatch"].as_array()?.is_empty()).then_some(s)
    });
    assert_eq!(
        s["tenant_mismatch"],
        serde_json::json!([{"tenant": "acme-msp", "devices": 1}]),
        "{s}"
    );
    // Last-seen moves at central while the status does not change.
    let seen = first["last_seen_ms"].as_u64().unwrap();
    let later = wait_for(Duration::from_secs(30), "last seen moving", || {
        let d = central.get(
            &format!("/api/v1/sites/{site}/devices/{}", agent.device_id),
            &viewer,
        )["device"]
            .clone();
        (d["last_seen_ms"].as_u64()? >= seen + 2_000).then_some(d)
    });
    assert_eq!(later["status"], "online", "{later}");
    assert_eq!(
        later["status_since_ms"], first["status_since_ms"],
        "{later}"
    );
    // Counted once, however many batches repeat the report.
    assert_eq!(
        central.metric("outpost_central_tenant_mismatches_total"),
        1.0
    );

    // Revoked: its own state at central, and no longer a mismatch.
    app.cli_ok(&["device", "revoke", &agent.device_id]);
    let _ = agent.stop();
    let d = wait_for(Duration::from_secs(30), "revoked at central", || {
        let d = central.get(
            &format!("/api/v1/sites/{site}/devices/{}", agent.device_id),
            &viewer,
        )["device"]
            .clone();
        (d["status"] == "revoked").then_some(d)
    });
    assert_eq!(d["revoked"], true, "{d}");
    let summary = wait_for(Duration::from_secs(30), "summary counts", || {
        let s = central.get("/api/v1/summary", &viewer);
        (s["totals"]["revoked"] == 1).then_some(s)
    });
    assert_eq!(summary["totals"]["offline"], 0, "{summary}");
    wait_for(Duration::from_secs(30), "the mismatch cleared", || {
        let s = central.get(&format!("/api/v1/sites/{site}"), &viewer);
        s["tenant_mismatch"].as_array()?.is_empty().then_some(())
    });
    assert!(
        uplink_status(&app)["foreign_tenants"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(!app.cli_ok(&["uplink", "status"]).contains("WARNING"));
    assert_eq!(
        central.metric("outpost_central_tenant_mismatches_total"),
        1.0
    );
}
