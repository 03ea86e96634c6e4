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
