//! Patch deployments from central end to end (issue 15, "From central"):
//! a real central and a real appliance joined over the uplink (protocol
//! 5), one real agent whose real scan is assessed against a test catalog
//! fixed by a security upgrade apt offers on this machine. An approval and
//! a deployment created at central reach the site once and the deployment
//! runs with the site's orchestrator; its progress (phase, gate figures,
//! per-device state) shows at central's API. A technician's pause from
//! central pauses it at the site; with central killed (`kill -9`) the site
//! goes on (resumed at the site), and central shows the new state once the
//! uplink is back, with nothing applied twice. A viewer is refused 403,
//! another tenant sees 404.
//!
//! The deployment's install window is closed for the whole test (it opens
//! 12 hours from now): the device waits for it, so nothing is installed
//! on this machine's own package database.
//!
//! The second test installs for real from central, on two simulated
//! devices (real agents, each with its own isolated dpkg root as in
//! `deploy_fleet`, packages from a signed test repository through the
//! site's LAN cache): a deployment created with `outpost-central
//! deployments create` (pre-install script from the site's library, no
//! reboot, no snapshot, an install window opening within the next
//! minute) waits for its window, is paused (`outpost-central deployments
//! pause`) and resumed from central, then installs; central shows the
//! options, and its progress reaches `completed` with both devices
//! succeeded; the script's output is in each install's recorded output.
//! A creation naming an unknown script is refused by the site, naming it.

use std::time::Duration;

use outpost_tests::{Agent, Appliance, scratch, stderr, wait_for};
use serde_json::{Value, json};

use crate::central_commands::call;
use crate::uplink::Central;

/// A security upgrade apt offers here: (source package, candidate).
fn a_security_upgrade() -> Option<(String, String)> {
    let out = std::process::Command::new("apt-get")
        .args(["-s", "dist-upgrade"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("Inst ") && l.contains("-security"))?;
    let binary = line.split_whitespace().nth(1)?.to_string();
    let candidate = line
        .split('(')
        .nth(1)?
        .split_whitespace()
        .next()?
        .to_string();
    let q = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${source:Package}", &binary])
        .output()
        .ok()?;
    let source = String::from_utf8_lossy(&q.stdout).trim().to_string();
    (!source.is_empty()).then_some((source, candidate))
}

/// The site's own view of a deployment (`phase`), if it has it.
fn site_phase(app: &Appliance, id: &str) -> Option<String> {
    let v: Value = app.api(&format!("/api/v1/deployments/{id}")).ok()?;
    v["summary"]["phase"].as_str().map(str::to_string)
}

/// Central's view of the deployment at its one site.
fn central_site(central: &Central, token: &str, id: &str) -> Value {
    let (st, v) = call(
        central,
        token,
        "GET",
        &format!("/api/v1/deployments/{id}"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    v["sites"][0].clone()
}

#[test]
fn a_deployment_from_central_runs_at_the_site_its_progress_shows_at_central_and_survives_an_uplink_cut()
 {
    let Some((source, candidate)) = a_security_upgrade() else {
        eprintln!("no security upgrade offered by apt on this machine: skipped");
        return;
    };
    let tmp = scratch("central-deploy");
    let root = tmp.path();
    let mut central = Central::start(root);
    let (token, fp) = central.site_add("acme", "dental", "main-office");
    let cfg = root.join("outpost.toml");
    std::fs::write(
        &cfg,
        "[uplink]\nreconnect_base = \"200ms\"\nreconnect_max = \"1s\"\n[patches.policy]\ngrace_days = 0\n",
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
    assert!(o.status.success(), "uplink join: {}", stderr(&o));
    let site = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let tracker = json!({ source.clone(): {
        "CVE-2099-6000": {"description": "e2e", "releases": {"bookworm": {
            "status": "resolved", "fixed_version": candidate, "urgency": "high"}}}
    }});
    let tracker_path = root.join("tracker.json");
    std::fs::write(&tracker_path, serde_json::to_vec(&tracker).unwrap()).unwrap();
    app.cli_ok(&["advisories", "import", tracker_path.to_str().unwrap()]);
    let mut agent = Agent::enroll(root, "a1", &app);
    std::fs::write(
        agent.state.join("agent.toml"),
        format!(
            "[package_tools]\napt_pkgcache_dir = \"{}\"\n",
            agent.state.display()
        ),
    )
    .unwrap();
    agent.start();
    let dev = agent.device_id.clone();
    // The exact patch (source package and candidate) as the site names it.
    let patch = wait_for(
        Duration::from_secs(90),
        "the device assessed with the patch",
        || {
            let v: Value = app.api(&format!("/api/v1/approvals/devices/{dev}")).ok()?;
            v["decisions"].as_array()?.iter().find_map(|d| {
                (d["patch"]["package"] == source.as_str()).then(|| {
                    format!(
                        "{}={}",
                        d["patch"]["package"].as_str().unwrap_or_default(),
                        d["patch"]["version"].as_str().unwrap_or_default()
                    )
                })
            })
        },
    );

    let admin = central.api_token("acme", "admin");
    let tech = central.api_token("acme", "technician");
    let viewer = central.api_token("acme", "viewer");
    let other = central.api_token("zeta", "admin");

    // Approve at central: applied at the site.
    let (st, v) = call(
        &central,
        &admin,
        "POST",
        "/api/v1/approvals",
        Some(json!({"patch": patch, "verdict": "approve"})),
    );
    assert_eq!(st, 201, "{v}");
    wait_for(Duration::from_secs(30), "the approval delivered", || {
        let (_, v) = call(&central, &viewer, "GET", "/api/v1/approvals", None);
        let d = &v[0]["deliveries"][0];
        assert_ne!(d["state"], "refused", "{v}");
        (d["state"] == "delivered").then_some(())
    });

    // A viewer may not deploy; an admin does, in a window closed now.
    let start = {
        let s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 12 * 3600;
        format!("{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60)
    };
    let body = json!({
        "target": {"type": "all"},
        "stages": [100],
        "window": {"days": ["mon","tue","wed","thu","fri","sat","sun"], "start": start,
                   "duration_minutes": 60, "timezone": "UTC"},
    });
    let (st, _) = call(
        &central,
        &viewer,
        "POST",
        "/api/v1/deployments",
        Some(body.clone()),
    );
    assert_eq!(st, 403);
    let (st, v) = call(&central, &admin, "POST", "/api/v1/deployments", Some(body));
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();

    // It runs at the site, under central's id, and its progress comes up.
    wait_for(
        Duration::from_secs(30),
        "the deployment running at the site",
        || (site_phase(&app, &id).as_deref() == Some("running")).then_some(()),
    );
    let s = wait_for(Duration::from_secs(30), "its progress at central", || {
        let s = central_site(&central, &viewer, &id);
        (s["phase"] == "running").then_some(s)
    });
    assert_eq!(s["site"], site.as_str());
    assert_eq!(s["delivery"], "delivered", "{s}");
    assert_eq!(s["devices"], 1, "{s}");
    assert_eq!(s["device_results"][0]["device"], dev.as_str(), "{s}");
    assert_eq!(s["device_results"][0]["state"], "waiting_for_window", "{s}");
    assert!(s["gates"][0]["figures"].is_object(), "{s}");

    // Another tenant: 404; a viewer may not pause; a technician pauses.
    let (st, _) = call(
        &central,
        &other,
        "GET",
        &format!("/api/v1/deployments/{id}"),
        None,
    );
    assert_eq!(st, 404);
    let (st, _) = call(
        &central,
        &other,
        "POST",
        &format!("/api/v1/deployments/{id}/pause"),
        None,
    );
    assert_eq!(st, 404);
    let (st, _) = call(
        &central,
        &viewer,
        "POST",
        &format!("/api/v1/deployments/{id}/pause"),
        None,
    );
    assert_eq!(st, 403);
    let (st, v) = call(
        &central,
        &tech,
        "POST",
        &format!("/api/v1/deployments/{id}/pause"),
        Some(json!({"note": "from central"})),
    );
    assert_eq!(st, 200, "{v}");
    wait_for(Duration::from_secs(30), "paused at the site", || {
        (site_phase(&app, &id).as_deref() == Some("paused")).then_some(())
    });
    wait_for(Duration::from_secs(30), "paused at central", || {
        (central_site(&central, &viewer, &id)["phase"] == "paused").then_some(())
    });

    // Approval, creation and pause: each acknowledged once.
    assert_eq!(
        central.metric("outpost_central_deploy_orders_acked_total"),
        3.0
    );

    // The uplink cut: the site goes on with its own orchestrator.
    central.proc.as_mut().unwrap().kill9();
    central.proc = None;
    app.cli_ok(&["deployments", "resume", &id]);
    assert_eq!(site_phase(&app, &id).as_deref(), Some("running"));
    central.restart();
    wait_for(
        Duration::from_secs(60),
        "the site's resume shown at central",
        || (central_site(&central, &viewer, &id)["phase"] == "running").then_some(()),
    );

    // Nothing applied twice: one deployment, one approval rule at the site.
    let all: Value = app.api("/api/v1/deployments").unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    let rules: Value = app.api("/api/v1/approvals/rules").unwrap();
    assert_eq!(rules.as_array().unwrap().len(), 1, "{rules}");
    drop(agent);
}

/// The packages of the real-install run: `hello-outpost` 1.0-1
/// (installed on every device) and 1.1-1 (the patch).
const REAL_BUILD: &str = r#"
set -eu
POOL=$1
mk() { # NAME VERSION
  d=$(mktemp -d)
  mkdir -p "$d/DEBIAN" "$d/usr/share/$1"
  echo "$1 $2" > "$d/usr/share/$1/VERSION"
  { echo "Package: $1"; echo "Version: $2"; echo "Architecture: all"
    echo "Maintainer: Outpost tests <tests@outpost.invalid>"
    echo "Description: test package"; echo " for outpost deployments from central"; } > "$d/DEBIAN/control"
  dpkg-deb --root-owner-group -Zgzip -b "$d" "$POOL/${1}_${2}_all.deb" >/dev/null
  rm -rf "$d"
}
mkdir -p "$POOL"
mk hello-outpost 1.0-1
mk hello-outpost 1.1-1
"#;

/// One simulated device: an isolated dpkg root (apt `Dir` options, dpkg
/// `--root`) with `hello-outpost 1.0-1`, and a real agent using it (the
/// host's own package database is never touched). As in `deploy_fleet`.
fn real_device(
    dir: &std::path::Path,
    name: &str,
    repo: &crate::deploy_device::Repo,
    up: &crate::deploy_device::Upstream,
    app: &Appliance,
) -> (std::path::PathBuf, Agent) {
    use crate::deploy_device::run_ok;
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
        std::process::Command::new("dpkg")
            .arg(format!("--root={r}"))
            .args(["--force-script-chrootless", "--force-not-root", "-i"])
            .arg(repo.deb("hello-outpost", "1.0-1")),
    );
    let apt: Vec<String> = [
        format!("Dir={r}"),
        format!("Dir::State::status={r}/var/lib/dpkg/status"),
        format!("Dir::Log={r}/var/log/apt"),
        format!("Dir::Cache={r}/var/cache/apt"),
        format!("Dir::Etc::Parts={r}/etc/apt/apt.conf.d"),
        format!("DPkg::Options::=--root={r}"),
        "DPkg::Options::=--force-script-chrootless".into(),
        "DPkg::Options::=--force-not-root".into(),
        "APT::Sandbox::User=root".into(),
        "Acquire::Languages=none".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect();
    let apt = serde_json::to_string(&apt).unwrap();
    let agent = Agent::enroll(dir, name, app);
    let boot = dir.join(format!("{name}-boot_id"));
    std::fs::write(&boot, "boot-1\n").unwrap();
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
apt_proxy = "http://127.0.0.1:{cache}/"
os_release = "{r}/etc/os-release"
reboot_required = "{r}/var/run/reboot-required"

[patch_install]
apt_extra_args = {apt}
dpkg_extra_args = ["--root={r}", "--force-script-chrootless", "--force-not-root"]
dpkg_repack = "/nonexistent/dpkg-repack"
root = "{r}"
"#,
            boot = boot.display(),
            cache = app.cache_port,
        ),
    )
    .unwrap();
    (root, agent)
}

/// The installed version of `name` in an isolated root.
fn root_version(root: &std::path::Path, name: &str) -> Option<String> {
    let out = std::process::Command::new("dpkg-query")
        .arg(format!("--admindir={}/var/lib/dpkg", root.display()))
        .args(["-W", "-f=${Status}|${Version}", name])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let (status, v) = s.split_once('|')?;
    status.ends_with(" installed").then(|| v.to_string())
}

/// `outpost-central deployments ARGS --api URL` with `token`.
fn central_cli(central: &Central, token: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(outpost_tests::bin("outpost-central"))
        .arg("deployments")
        .args(args)
        .args(["--api", &format!("http://{}", central.http)])
        .env("OUTPOST_CENTRAL_TOKEN", token)
        .output()
        .expect("outpost-central deployments")
}

#[test]
fn a_deployment_created_at_central_with_a_pre_install_script_installs_for_real_on_isolated_devices()
{
    if !crate::deploy_device::have_tools() {
        eprintln!("skipped: dpkg-deb, dpkg-scanpackages, apt-get or gpg missing");
        return;
    }
    let tmp = scratch("central-deploy-real");
    let root = tmp.path();
    let repo = crate::deploy_device::Repo::build_with(root, REAL_BUILD);
    let up = crate::deploy_device::Upstream::start(&repo.up);
    let central = Central::start(root);
    let (token, fp) = central.site_add("acme", "dental", "main-office");
    std::fs::create_dir_all(root.join("appliance")).unwrap();
    std::fs::write(
        root.join("appliance/outpost.toml"),
        format!(
            "[uplink]\nreconnect_base = \"200ms\"\nreconnect_max = \"1s\"\n\n[cache]\nallow_hosts = [\"{}\"]\nallow_apt_sources = false\nkeyrings = [\"{}\"]\nrelease_refresh = \"1s\"\n\n[deploy]\ntick_interval = \"1s\"\n",
            up.addr,
            repo.keyring.display()
        ),
    )
    .unwrap();
    let app = Appliance::start(root);
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
    assert!(o.status.success(), "uplink join: {}", stderr(&o));
    let site = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let tracker = root.join("tracker.json");
    std::fs::write(
        &tracker,
        json!({"hello-outpost": {"CVE-2099-7101": {"description": "e2e", "releases": {"bookworm": {
            "status": "resolved", "fixed_version": "1.1-1", "urgency": "high"}}}}})
        .to_string(),
    )
    .unwrap();
    app.cli_ok(&["advisories", "import", tracker.to_str().unwrap()]);
    // The site's script library holds the pre-install script.
    let (s, b) = app.api_post(
        "/api/v1/scripts",
        &json!({"name": "pre-hello", "interpreter": "sh",
                "body": "echo pre-install check ok", "timeout_ms": 20000}),
    );
    assert_eq!(s, 201, "{b}");
    let mut devices: Vec<(std::path::PathBuf, Agent)> = ["d1", "d2"]
        .iter()
        .map(|n| real_device(root, n, &repo, &up, &app))
        .collect();
    for (_, a) in devices.iter_mut() {
        a.start();
    }
    for (_, a) in &devices {
        let dev = a.device_id.clone();
        wait_for(
            Duration::from_secs(90),
            &format!("device {dev} assessed with hello-outpost=1.1-1 missing"),
            || {
                let v: Value = app.api(&format!("/api/v1/approvals/devices/{dev}")).ok()?;
                v["decisions"]
                    .as_array()?
                    .iter()
                    .any(|d| d["patch"]["package"] == "hello-outpost")
                    .then_some(())
            },
        );
    }
    let admin = central.api_token("acme", "admin");
    let tech = central.api_token("acme", "technician");
    let (st, v) = call(
        &central,
        &admin,
        "POST",
        "/api/v1/approvals",
        Some(json!({"patch": "hello-outpost=1.1-1", "verdict": "approve"})),
    );
    assert_eq!(st, 201, "{v}");

    // An unknown script is refused by the site, naming it.
    let (st, v) = call(
        &central,
        &admin,
        "POST",
        "/api/v1/deployments",
        Some(json!({"target": {"type": "all"}, "pre_script": "no-such-script"})),
    );
    assert_eq!(st, 201, "{v}");
    let bad = v["id"].as_str().unwrap().to_string();
    let s = wait_for(
        Duration::from_secs(30),
        "the bad deployment refused",
        || {
            let s = central_site(&central, &admin, &bad);
            (s["delivery"] == "refused").then_some(s)
        },
    );
    assert!(
        s["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no-such-script"),
        "{s}"
    );

    // Created with the central CLI: two stages, the pre-install script,
    // no reboot, no snapshot, and an install window (UTC) opening at a
    // minute boundary 20..80 s from now.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let mut open_at = (now() / 60 + 1) * 60;
    if open_at - now() < 20 {
        open_at += 60;
    }
    let window = json!({
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "start": format!("{:02}:{:02}", (open_at / 3600) % 24, (open_at / 60) % 60),
        "duration_minutes": 60,
        "timezone": "UTC",
    });
    let more = json!({"gate": {"min_success_pct": 95, "min_finished": 1, "soak_ms": 1000},
                      "window": window});
    let o = central_cli(
        &central,
        &admin,
        &[
            "create",
            "--target",
            "all",
            "--stages",
            "50,100",
            "--pre-script",
            "pre-hello",
            "--reboot",
            "never",
            "--no-snapshot",
            "--options",
            &more.to_string(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(id.starts_with("cdep-"), "{id}");

    // Before the window: it runs at the site, waiting; central shows the
    // options it runs with; a technician pauses it from the CLI and
    // resumes it (API); nothing is installed yet.
    let s = wait_for(Duration::from_secs(30), "running at central", || {
        let s = central_site(&central, &admin, &id);
        assert_ne!(s["delivery"], "refused", "{s}");
        (s["phase"] == "running").then_some(s)
    });
    assert_eq!(s["site"], site.as_str(), "{s}");
    assert_eq!(s["options"]["reboot"], "never", "{s}");
    assert_eq!(s["options"]["snapshot"], false, "{s}");
    assert_eq!(s["options"]["pre_script"]["name"], "pre-hello", "{s}");
    let o = central_cli(&central, &tech, &["show", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&id));
    let o = central_cli(&central, &tech, &["pause", &id, "--note", "cli pause"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_for(Duration::from_secs(30), "paused at central", || {
        (central_site(&central, &tech, &id)["phase"] == "paused").then_some(())
    });
    assert_eq!(site_phase(&app, &id).as_deref(), Some("paused"));
    // The site's audit trail, at central: created and paused by central's
    // users (`NAME@central`), the creation with its options.
    let s = wait_for(
        Duration::from_secs(30),
        "the pause in the audit at central",
        || {
            let s = central_site(&central, &tech, &id);
            s["audit"]
                .as_array()?
                .iter()
                .any(|e| e["action"] == "deployment.pause")
                .then_some(s)
        },
    );
    let audit = s["audit"].as_array().unwrap();
    for action in ["deployment.create", "deployment.pause"] {
        let e = audit.iter().find(|e| e["action"] == action).unwrap();
        assert!(
            e["actor"].as_str().unwrap_or("").ends_with("@central"),
            "{e}"
        );
    }
    let create = audit
        .iter()
        .find(|e| e["action"] == "deployment.create")
        .unwrap();
    assert!(
        create["detail"].as_str().unwrap().contains("pre-hello"),
        "{create}"
    );
    let (st, v) = call(
        &central,
        &tech,
        "POST",
        &format!("/api/v1/deployments/{id}/resume"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    wait_for(Duration::from_secs(30), "running again at the site", || {
        (site_phase(&app, &id).as_deref() == Some("running")).then_some(())
    });
    if now() + 2 < open_at {
        for (r, _) in &devices {
            assert_eq!(root_version(r, "hello-outpost").as_deref(), Some("1.0-1"));
        }
    }

    // The window opens: both stages install for real, the deployment
    // completes, and central's progress reaches succeeded on both.
    let s = wait_for(Duration::from_secs(200), "completed at central", || {
        let s = central_site(&central, &admin, &id);
        (s["phase"] == "completed").then_some(s)
    });
    assert!(now() >= open_at, "installed before the window opened");
    assert_eq!(s["succeeded"], 2, "{s}");
    let results = s["device_results"].as_array().unwrap();
    assert!(results.iter().all(|d| d["state"] == "succeeded"), "{s}");
    for (r, a) in &devices {
        assert_eq!(
            root_version(r, "hello-outpost").as_deref(),
            Some("1.1-1"),
            "device {}",
            a.device_id
        );
    }

    // The pre-install script ran before each install; its output is in
    // the install command's recorded output at the site.
    for (_, a) in &devices {
        let cmds: Value = app
            .api(&format!("/api/v1/commands?device={}", a.device_id))
            .unwrap();
        let outputs: Vec<String> = cmds
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| {
                let v: Value = app
                    .api(&format!("/api/v1/commands/{}", c["id"].as_str()?))
                    .ok()?;
                v["output"].as_str().map(str::to_string)
            })
            .collect();
        assert!(
            outputs
                .iter()
                .any(|o| o.contains("outpost: script pre-hello v1")
                    && o.contains("pre-install check ok")),
            "device {}: {outputs:?}",
            a.device_id
        );
    }
    drop(devices);
}
