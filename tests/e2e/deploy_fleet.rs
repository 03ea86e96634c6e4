//! A whole patch deployment over real agents (issue 15, "What must be
//! shown"): one appliance process and ten `outpost-agent` processes, each
//! scanning and installing into its own isolated dpkg root (apt `Dir`
//! options, dpkg `--root`) through the appliance's real LAN cache, from a
//! signed repository served by a local upstream HTTP server (the WAN).
//!
//! The scenario, in order: a test catalog makes `hello-outpost 1.1-1` a
//! missing security patch; it is approved and deployed through the API
//! with an install window in another IANA time zone (`Asia/Tokyo`) that
//! opens in the next minutes: nothing is dispatched before it opens. The
//! pilot device's install fails (its preinst refuses on that device
//! only): the gate fails, the deployment pauses, later stages are never
//! dispatched, and the built-in `builtin-deploy-gate` rule notifies a
//! webhook receiver. `1.1-2` is published, scanned, approved, and the
//! deployment resumed with it; the appliance is `kill -9`ed while a stage
//! is in flight and restarted; every stage completes, every device has
//! `1.1-2`, and each device's preinst ran exactly once for it (a
//! side-effect file in its root). Each `.deb` crossed the WAN once. Then
//! the upstream server stops (the site's uplink and the WAN are gone) and
//! `1.0-1` leaves the repository index: a rollback of the deployment
//! restores `1.0-1` everywhere from the `.deb` files the agents kept.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use outpost_tests::{Agent, Appliance, WebhookReceiver, http_raw, scratch, wait_for};
use serde_json::{Value, json};

use crate::deploy_device::{Repo, Upstream, have_tools, run_ok};

const DEVICES: usize = 10;

/// The packages: `hello-outpost` 1.0-1 (installed), 1.1-1 (refuses on a
/// root holding `etc/outpost-fail`), 1.1-2 (the fix, published later:
/// built into `UP/later`), and `newdep-outpost` that 1.1-x
/// pull in. Each 1.1-x preinst appends `VERSION ACTION` to
/// `$DPKG_ROOT/var/lib/outpost-preinst.log`.
const BUILD: &str = r#"
set -eu
POOL=$1
LATER=$1/../../../later
mk() { # DIR NAME VERSION [DEPENDS] [PREINST]
  out=$1; name=$2; ver=$3; dep=${4:-}; pre=${5:-}
  d=$(mktemp -d)
  mkdir -p "$d/DEBIAN" "$d/usr/share/$name"
  echo "$name $ver" > "$d/usr/share/$name/VERSION"
  { echo "Package: $name"; echo "Version: $ver"; echo "Architecture: all"
    echo "Maintainer: Outpost tests <tests@outpost.invalid>"
    [ -n "$dep" ] && echo "Depends: $dep"
    echo "Description: test package"; echo " for outpost fleet deployment tests"; } > "$d/DEBIAN/control"
  [ -n "$pre" ] && printf '%s\n' "$pre" > "$d/DEBIAN/preinst" && chmod 755 "$d/DEBIAN/preinst"
  dpkg-deb --root-owner-group -Zgzip -b "$d" "$out/${name}_${ver}_all.deb" >/dev/null
  rm -rf "$d"
}
pre() { # VERSION FAIL-ON-MARKER
  printf '#!/bin/sh\necho "%s $1" >> "$DPKG_ROOT/var/lib/outpost-preinst.log"\n' "$1"
  [ "$2" = yes ] && printf 'if [ -e "$DPKG_ROOT/etc/outpost-fail" ]; then echo "preinst of hello-outpost %s refuses on this device"; exit 1; fi\n' "$1"
  echo 'exit 0'
}
mkdir -p "$POOL" "$LATER"
mk "$POOL" hello-outpost 1.0-1
mk "$POOL" hello-outpost 1.1-1 "newdep-outpost (>= 1.0)" "$(pre 1.1-1 yes)"
mk "$POOL" newdep-outpost 1.0-1
mk "$LATER" hello-outpost 1.1-2 "newdep-outpost (>= 1.0)" "$(pre 1.1-2 no)"
"#;

/// apt's options for an isolated root.
fn apt_args(root: &Path) -> Vec<String> {
    let r = root.display().to_string();
    [
        format!("Dir={r}"),
        format!("Dir::State::status={r}/var/lib/dpkg/status"),
        format!("Dir::Log={r}/var/log/apt"),
        format!("Dir::Cache={r}/var/cache/apt"),
        format!("Dir::Etc::Parts={r}/etc/apt/apt.conf.d"),
        format!("DPkg::Options::=--root={r}"),
        "DPkg::Options::=--force-script-chrootless".into(),
        "DPkg::Options::=--force-not-root".into(),
        "APT::Sandbox::User=root".into(),
        // No Acquire::Retries / Acquire::http::Timeout here: the agent's
        // `[patch_install]` defaults (3 retries, 30 s) carry the installs
        // in flight over the appliance's kill -9 and restart.
        "Acquire::Languages=none".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect()
}

fn toml_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap()
}

/// One simulated device: an isolated root and a real agent using it.
struct Device {
    root: PathBuf,
    agent: Agent,
}

impl Device {
    fn new(dir: &Path, i: usize, repo: &Repo, up: &Upstream, app: &Appliance) -> Device {
        let name = format!("dev{i}");
        let root = dir.join(format!("{name}-root"));
        crate::deploy_device::empty_dpkg_root(&root);
        std::fs::write(
            root.join("etc/os-release"),
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/apt/sources.list"),
            format!(
                "deb [signed-by={}] http://{}/debian stable main\n",
                repo.keyring.display(),
                up.addr
            ),
        )
        .unwrap();
        let r = root.display().to_string();
        run_ok(
            Command::new("dpkg")
                .arg(format!("--root={r}"))
                .args(["--force-script-chrootless", "--force-not-root", "-i"])
                .arg(repo.deb("hello-outpost", "1.0-1")),
        );
        let agent = Agent::enroll(dir, &name, app);
        let boot = dir.join(format!("{name}-boot_id"));
        std::fs::write(&boot, "boot-1\n").unwrap();
        let apt = toml_list(&apt_args(&root));
        let cache = format!("http://127.0.0.1:{}/", app.cache_port);
        std::fs::write(
            agent.state.join("agent.toml"),
            format!(
                r#"package_db_poll_interval = "1s"
reboot_command = "true"
dpkg_lock = "{r}/var/lib/dpkg/lock-frontend"
boot_id_path = "{boot}"

[package_tools]
manager = "dpkg"
dpkg_admindir = "{r}/var/lib/dpkg"
apt_extra_args = {apt}
apt_lists_dir = "{r}/var/lib/apt/lists"
apt_simulate = true
apt_update = true
apt_proxy = "{cache}"
os_release = "{r}/etc/os-release"
reboot_required = "{r}/var/run/reboot-required"

[patch_install]
apt_extra_args = {apt}
dpkg_extra_args = ["--root={r}", "--force-script-chrootless", "--force-not-root"]
dpkg_repack = "/nonexistent/dpkg-repack"
root = "{r}"
"#,
                boot = boot.display(),
            ),
        )
        .unwrap();
        Device { root, agent }
    }

    fn version(&self, name: &str) -> Option<String> {
        let out = Command::new("dpkg-query")
            .arg(format!("--admindir={}/var/lib/dpkg", self.root.display()))
            .args(["-W", "-f=${Status}|${Version}", name])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        let (status, v) = s.split_once('|')?;
        status.ends_with(" installed").then(|| v.to_string())
    }

    /// The preinst runs of `version` on this device.
    fn preinst_runs(&self, version: &str) -> usize {
        std::fs::read_to_string(self.root.join("var/lib/outpost-preinst.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(version))
            .filter(|l| !l.contains("abort"))
            .count()
    }
}

/// The device's patches the appliance knows as missing (`PKG=VERSION`).
fn missing(app: &Appliance, dev: &str) -> Vec<String> {
    let Ok(v) = app.api::<Value>(&format!("/api/v1/approvals/devices/{dev}")) else {
        return Vec::new();
    };
    v["decisions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    format!(
                        "{}={}",
                        d["patch"]["package"].as_str().unwrap_or(""),
                        d["patch"]["version"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn deployment(app: &Appliance, id: &str) -> Value {
    app.api(&format!("/api/v1/deployments/{id}"))
        .unwrap_or(Value::Null)
}

/// Polls deployment `id` until `pred` holds; panics with its last state.
fn wait_deployment(
    app: &Appliance,
    id: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let d = deployment(app, id);
        if pred(&d) {
            return d;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}: {d:#}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn phase(d: &Value) -> &str {
    d["summary"]["phase"].as_str().unwrap_or("")
}

/// `device -> state` of the deployment.
fn states(d: &Value) -> Vec<(String, String, u64)> {
    d["stored"]["deployment"]["devices"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, r)| {
                    (
                        k.clone(),
                        r["state"].as_str().unwrap_or("").to_string(),
                        r["stage"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn dispatched(d: &Value) -> usize {
    d["stored"]["deployment"]["devices"]
        .as_object()
        .map(|m| {
            m.values()
                .filter(|r| !r["dispatched_at_ms"].is_null())
                .count()
        })
        .unwrap_or(0)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `HH:MM` in `zone` at `epoch_s`.
fn local_hhmm(zone: &str, epoch_s: u64) -> String {
    run_ok(
        Command::new("date")
            .env("TZ", zone)
            .args(["-d", &format!("@{epoch_s}"), "+%H:%M"]),
    )
    .trim()
    .to_string()
}

#[test]
fn a_fleet_deployment_pauses_on_the_pilots_failure_resumes_with_a_fix_survives_a_kill_and_rolls_back_offline()
 {
    if !have_tools() {
        eprintln!("skipped: dpkg-deb, dpkg-scanpackages, apt-get or gpg missing");
        return;
    }
    let tmp = scratch("deploy-fleet");
    let repo = Repo::build_with(tmp.path(), BUILD);
    let later = repo.up.join("later");
    let up = Upstream::start(&repo.up);

    let app_dir = tmp.path().join("appliance");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::write(
        app_dir.join("outpost.toml"),
        format!(
            "[cache]\nallow_hosts = [\"{}\"]\nallow_apt_sources = false\nkeyrings = [\"{}\"]\nrelease_refresh = \"1s\"\n\n[deploy]\ntick_interval = \"1s\"\n",
            up.addr,
            repo.keyring.display()
        ),
    )
    .unwrap();
    let mut app = Appliance::start(tmp.path());
    let started = Instant::now();

    // The gate's notification goes to a webhook.
    let hook = WebhookReceiver::start();
    let (s, b) = app.api_post(
        "/api/v1/channels",
        &json!({"id": "ops", "name": "ops", "type": "webhook", "url": hook.url("/hook")}),
    );
    assert_eq!(s, 200, "{b}");
    let mut rule: Value = app.api("/api/v1/alert-rules/builtin-deploy-gate").unwrap();
    rule["channels"] = json!(["ops"]);
    let (s, b) = app.api_send(
        "PUT",
        "/api/v1/alert-rules/builtin-deploy-gate",
        Some(&rule),
    );
    assert_eq!(s, 200, "{b}");

    // The catalog: hello-outpost 1.1-1 fixes a high CVE.
    let tracker = tmp.path().join("tracker.json");
    std::fs::write(
        &tracker,
        json!({"hello-outpost": {"CVE-2099-7001": {"description": "e2e", "releases": {"bookworm": {
            "status": "resolved", "fixed_version": "1.1-1", "urgency": "high"}}}}})
        .to_string(),
    )
    .unwrap();
    app.cli_ok(&["advisories", "import", tracker.to_str().unwrap()]);

    let mut devices: Vec<Device> = (0..DEVICES)
        .map(|i| Device::new(tmp.path(), i, &repo, &up, &app))
        .collect();
    // Device 0 is the pilot, and its install of 1.1-1 fails.
    std::fs::write(devices[0].root.join("etc/outpost-fail"), "").unwrap();
    let pilot = devices[0].agent.device_id.clone();
    let (s, b) = app.api_send(
        "PUT",
        &format!("/api/v1/devices/{pilot}/tags"),
        Some(&json!(["pilot"])),
    );
    assert_eq!(s, 200, "{b}");
    for d in devices.iter_mut() {
        d.agent.start();
    }
    for d in &devices {
        let dev = d.agent.device_id.clone();
        wait_for(
            Duration::from_secs(90),
            &format!("device {dev} assessed with hello-outpost=1.1-1 missing"),
            || {
                missing(&app, &dev)
                    .contains(&"hello-outpost=1.1-1".to_string())
                    .then_some(())
            },
        );
    }
    eprintln!("fleet assessed after {:?}", started.elapsed());
    app.cli_ok(&["patches", "approve", "hello-outpost=1.1-1"]);

    // An install window in Tokyo opening at a minute boundary 15..75 s
    // from now: before it, nothing is dispatched.
    let mut open_at = (now_s() / 60 + 1) * 60;
    if open_at - now_s() < 15 {
        open_at += 60;
    }
    let window = json!({
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "start": local_hhmm("Asia/Tokyo", open_at),
        "duration_minutes": 120,
        "timezone": "Asia/Tokyo",
    });
    let (s, b) = app.api_post(
        "/api/v1/deployments",
        &json!({
            "id": "fleet",
            "target": {"type": "all"},
            "stages": [10, 50, 100],
            "gate": {"min_success_pct": 95, "min_finished": 1, "soak_ms": 1000},
            "window": window,
        }),
    );
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["summary"]["devices"], DEVICES as u64, "{b}");
    while now_s() + 2 < open_at {
        let d = deployment(&app, "fleet");
        assert_eq!(dispatched(&d), 0, "dispatched before the window: {d}");
        assert!(
            states(&d)
                .iter()
                .all(|(_, s, _)| s == "pending" || s == "waiting_for_window"),
            "{d}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(devices.iter().all(|d| d.preinst_runs("1.1-1") == 0));
    // Before the window the appliance fetched and pinned the new version
    // in the site cache (prefetch at the deployment's start).
    let new_deb = "/debian/pool/main/hello-outpost_1.1-1_all.deb";
    assert_eq!(up.hits(new_deb), 1, "prefetched before the window");
    assert!(app.metric("outpost_deploy_prefetch_bytes_total") > 0.0);
    let pins: Value = app.api("/api/v1/cache/pins").unwrap();
    assert!(
        pins.to_string().contains("hello-outpost_1.1-1_all.deb"),
        "{pins}"
    );

    // The window opens: the pilot installs, fails; the gate pauses.
    let d = wait_deployment(
        &app,
        "fleet",
        Duration::from_secs(120),
        "the deployment to pause",
        |d| phase(d) == "paused",
    );
    eprintln!("paused after {:?}", started.elapsed());
    let st = states(&d);
    for (dev, state, stage) in &st {
        if *dev == pilot {
            assert_eq!(state, "failed", "{d}");
            assert_eq!(*stage, 0, "the pilot is in the first stage: {d}");
        } else {
            assert_eq!(state, "pending", "later stages never start: {d}");
        }
    }
    assert_eq!(dispatched(&d), 1, "{d}");
    let reason = d["stored"]["deployment"]["devices"][&pilot]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(reason.contains("hello-outpost"), "{reason}");
    assert_eq!(devices[0].preinst_runs("1.1-1"), 1);
    assert_eq!(
        devices[0].version("hello-outpost").as_deref(),
        Some("1.0-1")
    );
    for dv in &devices[1..] {
        assert_eq!(dv.preinst_runs("1.1-1"), 0);
        assert_eq!(dv.version("hello-outpost").as_deref(), Some("1.0-1"));
    }
    let fired = hook.wait_for(
        Duration::from_secs(30),
        "/hook",
        "the gate's webhook",
        |b| b["event"] == "firing" && b["alert"]["rule_id"] == "builtin-deploy-gate",
    );
    assert_eq!(fired["alert"]["label"], "fleet", "{fired}");
    assert!(app.metric("outpost_deploy_gate_failures_total") >= 1.0);

    // The fix is published; the devices see it; it is approved.
    for f in std::fs::read_dir(&later).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(
            &f,
            repo.up
                .join("debian/pool/main")
                .join(f.file_name().unwrap()),
        )
        .unwrap();
    }
    repo.index();
    // The site cache serves an InRelease it confirmed upstream less than
    // `release_refresh` ago without asking again (the pilot's install has
    // just refreshed it): a rescan requested before that lapses sees the
    // old index. Wait until the cache serves the new InRelease.
    let fresh = std::fs::read_to_string(repo.up.join("debian/dists/stable/InRelease")).unwrap();
    let cache: std::net::SocketAddr = format!("127.0.0.1:{}", app.cache_port).parse().unwrap();
    let release_url = format!("http://{}/debian/dists/stable/InRelease", up.addr);
    wait_for(
        Duration::from_secs(30),
        "the site cache to serve the new InRelease",
        || {
            let (status, _, body) = http_raw(cache, "GET", &release_url, &[], "");
            (status == 200 && body == fresh).then_some(())
        },
    );
    for d in &devices {
        let dev = &d.agent.device_id;
        let (s, b) = app.api_post(&format!("/api/v1/patches/devices/{dev}/scan"), &json!({}));
        assert!(s == 200 || s == 201 || s == 202, "{s} {b}");
    }
    for d in &devices {
        let dev = d.agent.device_id.clone();
        wait_for(
            Duration::from_secs(60),
            &format!("device {dev} to miss hello-outpost=1.1-2"),
            || {
                missing(&app, &dev)
                    .contains(&"hello-outpost=1.1-2".to_string())
                    .then_some(())
            },
        );
    }
    app.cli_ok(&["patches", "approve", "hello-outpost=1.1-2"]);
    let (s, b) = app.api_post(
        "/api/v1/deployments/fleet/resume",
        &json!({"retry_failed": true, "patches": [{"package": "hello-outpost", "version": "1.1-2"}]}),
    );
    assert_eq!(s, 200, "{b}");

    // kill -9 of the appliance while a later stage is in flight.
    wait_deployment(
        &app,
        "fleet",
        Duration::from_secs(90),
        "a later stage in flight",
        |d| {
            states(d).iter().any(|(_, s, stage)| {
                *stage >= 1 && matches!(s.as_str(), "queued" | "downloading" | "installing")
            })
        },
    );
    app.kill9();
    eprintln!("killed after {:?}", started.elapsed());
    app.restart();

    let d = wait_deployment(
        &app,
        "fleet",
        Duration::from_secs(120),
        "every stage to complete",
        |d| phase(d) == "completed",
    );
    eprintln!("completed after {:?}", started.elapsed());
    assert!(states(&d).iter().all(|(_, s, _)| s == "succeeded"), "{d}");
    for dv in &devices {
        assert_eq!(
            dv.version("hello-outpost").as_deref(),
            Some("1.1-2"),
            "{}",
            dv.agent.device_id
        );
        assert_eq!(
            dv.preinst_runs("1.1-2"),
            1,
            "device {} installed once",
            dv.agent.device_id
        );
    }
    // Each .deb crossed the WAN once for the whole site.
    for deb in [
        "hello-outpost_1.1-1_all.deb",
        "hello-outpost_1.1-2_all.deb",
        "newdep-outpost_1.0-1_all.deb",
        "hello-outpost_1.0-1_all.deb",
    ] {
        assert_eq!(up.hits(&format!("/debian/pool/main/{deb}")), 1, "{deb}");
    }

    // The WAN goes away and 1.0-1 leaves the index: roll back.
    std::fs::remove_file(repo.deb("hello-outpost", "1.0-1")).unwrap();
    repo.index();
    up.stop();
    let (s, b) = app.api_post(
        "/api/v1/deployments/fleet/rollback",
        &json!({"scope": "deployment"}),
    );
    assert_eq!(s, 200, "{b}");
    let d = wait_deployment(
        &app,
        "fleet",
        Duration::from_secs(90),
        "the rollback",
        |d| phase(d) == "rolled_back",
    );
    assert!(states(&d).iter().all(|(_, s, _)| s == "rolled_back"), "{d}");
    for dv in &devices {
        assert_eq!(
            dv.version("hello-outpost").as_deref(),
            Some("1.0-1"),
            "{}",
            dv.agent.device_id
        );
    }
    for dv in &devices[1..] {
        assert_eq!(dv.version("newdep-outpost"), None, "{}", dv.agent.device_id);
    }
    assert!(app.metric("outpost_deploy_rollbacks_total") >= DEVICES as f64);
    eprintln!("rolled back after {:?}", started.elapsed());
}
