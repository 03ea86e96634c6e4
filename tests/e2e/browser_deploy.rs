//! The site console's Deployments and Approvals pages in headless
//! Chromium, over real data: a real agent scans this machine's packages
//! (its upgradable ones are the device's missing patches), one is
//! approved by hand for the device, and a deployment of it is created
//! through the API with an install window that is not open today (so
//! nothing is installed on this machine: the device waits for its
//! window). The pages show that deployment; a technician pauses it from
//! the page; a viewer sees no action and its POSTs (its own token, none)
//! are refused, as is a technician's from another origin; an action
//! taken elsewhere reaches an open page without a reload (live stream);
//! the approvals page says which rule decided. Then the device list's
//! bulk bar: a technician tags the selected device and runs a command
//! line on the selection as one bulk run.
//!
//! The site has an advisory catalog (a Debian tracker written here from
//! this machine's installed `dpkg` source: one CVE fixed above its
//! version, one without a fix): the Patches page's figures and download
//! size, and that CVE's page (its exposed device and counts) equal
//! `/api/v1/patches/summary` and `/api/v1/patches/cves/{id}`.

use std::time::Duration;

use outpost_tests::*;
use serde_json::{Value, json};

use crate::browser::{Browser, chromium, raw_post};

/// The catalog's CVE of the installed dpkg source fixed above its version.
const CVE_FIXED: &str = "CVE-2099-5001";
/// The catalog's CVE of that source without a fix.
const CVE_OPEN: &str = "CVE-2099-5002";

/// The `csrf` field of a page.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..].split('"').next().unwrap().to_string()
}

/// A weekday (UTC) three days from now, as the window's days name it.
fn not_today() -> &'static str {
    let days_since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    // 1970-01-01 was a Thursday.
    ["thu", "fri", "sat", "sun", "mon", "tue", "wed"][((days_since_epoch + 3) % 7) as usize]
}

#[test]
fn site_deployment_pages_in_headless_chromium_with_a_real_agent_and_roles() {
    let tmp = scratch("site-deploy-browser");
    let root = tmp.path();
    let app = Appliance::start(root);
    for (name, role) in [("tess", "technician"), ("vera", "viewer")] {
        let (st, out) = app.api_post(
            "/api/v1/users",
            &json!({"name": name, "role": role, "password": "correct horse battery"}),
        );
        assert_eq!(st, 201, "{out}");
    }
    // The advisory catalog, before the agent's first scan: two CVEs of
    // the installed dpkg source (one fixed above its version, one open).
    let sources = crate::patches::installed_sources();
    let (src, installed) = sources
        .get_key_value("dpkg")
        .or_else(|| sources.iter().next())
        .map(|(s, v)| (s.clone(), v.clone()))
        .expect("an installed source package");
    let tracker = json!({ src.clone(): {
        CVE_FIXED: {"description": "e2e", "releases": {"bookworm": {
            "status": "resolved", "fixed_version": format!("{installed}+outpost1"), "urgency": "high"}}},
        CVE_OPEN: {"description": "e2e", "releases": {"bookworm": {"status": "open", "urgency": "medium"}}},
    }});
    let tracker_path = root.join("tracker.json");
    std::fs::write(&tracker_path, tracker.to_string()).unwrap();
    let out = app.cli_ok(&["advisories", "import", tracker_path.to_str().unwrap()]);
    assert!(out.contains("imported debian-tracker"), "{out}");
    let mut web = Agent::enroll(root, "web", &app);
    // One scan at start (the harness turns scans off by default): dpkg
    // and `apt-get -s` of this machine, nothing installed.
    std::fs::write(
        web.state.join("agent.toml"),
        "package_db_poll_interval = \"1h\"\npackage_scan_interval = \"24h\"\n",
    )
    .unwrap();
    web.start();
    let dev = web.device_id.clone();
    // The agent's scan (apt-get -s) gives the device its missing patches.
    let patch: Value = wait_for(
        Duration::from_secs(240),
        "the device's missing patches",
        || {
            let d: Value = app.api(&format!("/api/v1/approvals/devices/{dev}")).ok()?;
            d["decisions"]
                .as_array()?
                .first()
                .map(|x| x["patch"].clone())
        },
    );
    let key = format!(
        "{}={}",
        patch["package"].as_str().unwrap(),
        patch["version"].as_str().unwrap()
    );
    let (st, out) = app.api_post(
        "/api/v1/approvals",
        &json!({"patch": key, "scope": format!("device:{dev}"), "verdict": "approve"}),
    );
    assert_eq!(st, 201, "{out}");
    let (st, out) = app.api_post(
        "/api/v1/deployments",
        &json!({
            "id": "dep-browser",
            "target": {"type": "all"},
            "patches": [patch],
            "window": {"days": [not_today()], "start": "00:00", "duration_minutes": 60, "timezone": "UTC"},
        }),
    );
    assert_eq!(st, 201, "{out}");
    assert_eq!(out["summary"]["phase"], "running", "{out}");

    let (mut browser, ws) = chromium(root);
    let mut b = Browser {
        ws,
        base: format!("http://{}", app.admin),
        shots: root.to_path_buf(),
    };
    // An admin: the list with the deployment, and the create form.
    b.sign_in(None, "admin-token", &app.admin_token());
    b.go("/deployments");
    b.ws.wait_until("document.querySelector('#deployments tr[data-deployment=\"dep-browser\"]')");
    let row = b.ws.eval(
        "document.querySelector('#deployments tr[data-deployment=\"dep-browser\"]').innerText",
    );
    let row = row.as_str().unwrap();
    assert!(
        row.contains("running") && row.contains("stage 1/") && row.contains("admin-token"),
        "{row}"
    );
    assert_eq!(
        b.ws.eval(&format!(
            "!!document.querySelector('#dep-patches input[value=\"{key}\"]')"
        )),
        json!(true),
        "the approved patch is offered"
    );
    b.shot("site-deploy-01-list.png");
    // The Patches page: the compliance figures are the API's, one row per
    // assessed device (at most 25).
    let summary: Value = app.api("/api/v1/patches/summary").unwrap();
    b.go("/patches");
    b.ws.wait_until("document.getElementById('fleet-compliance')");
    let facts =
        b.ws.eval("document.querySelector('#patch-summary p.facts').innerText")
            .as_str()
            .unwrap()
            .to_string();
    for want in [
        format!("{} devices assessed", summary["fleet"]["devices"]),
        format!("{} non-compliant", summary["fleet"]["non_compliant"]),
        format!(
            "{} waiting for a reboot",
            summary["fleet"]["reboot_required"]
        ),
    ] {
        assert!(facts.contains(&want), "{want} in {facts} ({summary})");
    }
    let assessed = summary["devices"].as_array().map_or(0, Vec::len).min(25);
    assert_eq!(
        b.ws.eval("document.querySelectorAll('#risky-devices tbody tr').length"),
        json!(assessed),
        "{summary}"
    );
    if assessed > 0 {
        assert_eq!(
            b.ws.eval(&format!(
                "!!document.querySelector('#risky-devices tr[data-device=\"{dev}\"]')"
            )),
            json!(true)
        );
    }
    // Its download size, as the API's summary says it.
    let download: outpost_patch::assess::DownloadSize =
        serde_json::from_value(summary["download"].clone()).unwrap();
    assert_eq!(
        b.ws.eval("document.getElementById('fleet-download') ? document.getElementById('fleet-download').innerText : ''"),
        json!(download.display()),
        "{summary}"
    );
    b.shot("site-deploy-05-patches.png");

    // The CVE fixed above the installed version: its page's device and
    // figures are the API's.
    let cve: Value = wait_for(Duration::from_secs(60), "the CVE's exposed device", || {
        let v: Value = app.api(&format!("/api/v1/patches/cves/{CVE_FIXED}")).ok()?;
        v["devices"]
            .as_array()?
            .iter()
            .any(|d| d["device"] == dev.as_str())
            .then_some(v)
    });
    let api_row = cve["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == dev.as_str())
        .unwrap()
        .clone();
    b.go("/patches");
    b.ws.wait_until(&format!(
        "document.querySelector('#top-cves tr[data-cve=\"{CVE_FIXED}\"]')"
    ));
    b.ws.eval(&format!(
        "document.querySelector('#top-cves tr[data-cve=\"{CVE_FIXED}\"] a').click(); true"
    ));
    b.ws.wait_until(&format!(
        "document.querySelector('#cve[data-cve=\"{CVE_FIXED}\"]')"
    ));
    let exposed = cve["fixable_now"].as_u64().unwrap()
        + cve["fix_not_in_repositories"].as_u64().unwrap()
        + cve["open"].as_u64().unwrap();
    assert_eq!(
        b.ws.eval("document.getElementById('exposed-devices').innerText"),
        json!(exposed.to_string()),
        "{cve}"
    );
    let facts =
        b.ws.eval("document.querySelector('#cve p.facts').innerText")
            .as_str()
            .unwrap()
            .to_string();
    for want in [
        format!("{} fixable now", cve["fixable_now"]),
        format!(
            "{} fix not in their repositories",
            cve["fix_not_in_repositories"]
        ),
        format!("{} without a fix yet", cve["open"]),
    ] {
        assert!(facts.contains(&want), "{want} in {facts} ({cve})");
    }
    // The device's row: its state as the API's (a fix above what its
    // repositories offer), the package and the versions.
    let want_state = match (
        api_row["state"].as_str(),
        api_row["fix_available"].as_bool(),
    ) {
        (Some("fixable"), Some(true)) => "fixable",
        (Some("fixable"), _) => "fix-not-in-repositories",
        (Some(s), _) => s,
        _ => panic!("{api_row}"),
    }
    .to_string();
    let row_sel = format!("#exposed tr[data-device=\"{dev}\"]");
    assert_eq!(
        b.ws.eval(&format!(
            "document.querySelector('{row_sel}').dataset.state"
        )),
        json!(want_state),
        "{api_row}"
    );
    let row =
        b.ws.eval(&format!("document.querySelector('{row_sel}').innerText"))
            .as_str()
            .unwrap()
            .to_string();
    assert!(
        row.contains(&src) && row.contains(&format!("{installed}+outpost1")),
        "{row} ({api_row})"
    );
    b.shot("site-deploy-06-cve.png");
    b.logout();

    // A technician: pause and roll back, no abort; a post from another
    // origin is refused; the page's own form pauses.
    b.sign_in(None, "tess", "correct horse battery");
    b.go("/deployments/dep-browser");
    b.ws.wait_until("document.getElementById('deployment-devices')");
    // The device (named by its hostname, this machine's) waits for its
    // window.
    let devices: Vec<Value> = app.api("/api/v1/devices").unwrap();
    let host = devices[0]["hostname"].as_str().unwrap().to_string();
    let row = b.ws.eval(&format!(
        "document.querySelector('#deployment-devices tr[data-device=\"{dev}\"]').innerText"
    ));
    let row = row.as_str().unwrap();
    assert!(
        row.contains(&host) && row.contains("waiting_for_window"),
        "{row}"
    );
    assert_eq!(
        b.ws.eval(
            "[...document.querySelectorAll('form.dep-action')].map(f => f.dataset.action).join(',')"
        ),
        json!("pause,rollback")
    );
    let cookie = b.cookie_named("outpost_site_session");
    let token =
        b.ws.eval("document.querySelector('form.dep-action input[name=csrf]').value")
            .as_str()
            .unwrap()
            .to_string();
    let st = raw_post(
        app.admin,
        "/deployments/dep-browser/pause",
        &[("Cookie", &cookie), ("Origin", "http://evil.example")],
        &format!("csrf={token}&note=forged"),
    );
    assert_eq!(st, 403);
    let d: Value = app.api("/api/v1/deployments/dep-browser").unwrap();
    assert_eq!(d["summary"]["phase"], "running");
    b.ws.eval("const f = document.querySelector('form.dep-action[data-action=pause]'); f.querySelector('input[name=note]').value = 'from the browser'; f.querySelector('button').click(); true");
    b.ws.wait_until("document.querySelector('#deployment[data-phase=paused]') && document.getElementById('deployment-note')");
    assert!(b.text().contains("paused: from the browser"));
    let d: Value = app.api("/api/v1/deployments/dep-browser").unwrap();
    assert_eq!(d["summary"]["phase"], "paused", "{d}");
    b.shot("site-deploy-02-deployment.png");
    b.logout();

    // A viewer: no action; its POSTs are refused, its own token or none.
    b.sign_in(None, "vera", "correct horse battery");
    b.go("/deployments/dep-browser");
    b.ws.wait_until("document.getElementById('deployment-devices')");
    assert_eq!(
        b.ws.eval("document.querySelectorAll('form.dep-action, #deployment-actions, #create-deployment').length"),
        json!(0)
    );
    let vera_token =
        b.ws.eval("document.querySelector('input[name=csrf]').value")
            .as_str()
            .unwrap()
            .to_string();
    let path = "/deployments/dep-browser/resume";
    assert_eq!(b.fetch_post(path, ""), 403, "no token");
    assert_eq!(
        b.fetch_post(path, &format!("csrf={vera_token}")),
        403,
        "a viewer's own token"
    );
    let d: Value = app.api("/api/v1/deployments/dep-browser").unwrap();
    assert_eq!(d["summary"]["phase"], "paused");

    // Live: an admin resumes from another client; the open page follows.
    b.ws.wait_until("document.getElementById('live-status').className === 'live-on'");
    b.ws.eval("window.__no_reload = 1; true");
    let (st, page) = http_request(
        app.admin,
        "GET",
        "/deployments/dep-browser",
        Some(&app.admin_token()),
        None,
    )
    .unwrap();
    assert_eq!(st, 200, "{page}");
    let admin_csrf = csrf_of(&page);
    let st = raw_post(
        app.admin,
        path,
        &[("Authorization", &format!("Bearer {}", app.admin_token()))],
        &format!("csrf={admin_csrf}"),
    );
    assert_eq!(st, 303);
    b.ws.wait_until(
        "document.querySelector('#deployment[data-phase=running]') && window.__no_reload === 1",
    );

    // Approvals: the manual approval and the rule that decided.
    b.go(&format!("/approvals?device={dev}"));
    b.ws.wait_until("document.getElementById('device-decisions')");
    let decided = b.ws.eval(&format!(
        "document.querySelector('#device-decisions tr[data-patch=\"{key}\"]').innerText"
    ));
    let decided = decided.as_str().unwrap();
    assert!(
        decided.contains("approved") && decided.contains(&format!("device {dev}")),
        "{decided}"
    );
    assert!(b.text().contains(&key));
    b.shot("site-deploy-03-approvals.png");
    b.logout();

    // Bulk actions on the device list: a technician selects the device,
    // tags it, then runs a command line on the selection as a bulk run.
    b.sign_in(None, "tess", "correct horse battery");
    b.go("/devices");
    b.ws.wait_until("document.getElementById('devices') && document.getElementById('bulk-form')");
    let select = format!(
        "const c = document.querySelector('#devices input[name=device][value$=\"/{dev}\"]'); c.checked = true; c.dispatchEvent(new Event('change', {{bubbles: true}})); true"
    );
    b.ws.eval(&select);
    b.ws.wait_until("!document.getElementById('bulk-bar').hidden && document.getElementById('bulk-count').textContent === '1'");
    b.shot("site-deploy-04-bulk.png");
    b.ws.eval("document.getElementById('bulk-tags').value = 'bulk-e2e, patched'; document.getElementById('bulk-tag').click(); true");
    b.ws.wait_until(
        "location.pathname === '/devices' && !!document.querySelector('#devices .tag')",
    );
    let shown = b.text();
    assert!(
        shown.contains("bulk-e2e") && shown.contains("patched"),
        "{shown}"
    );
    b.ws.eval(&select);
    b.ws.eval("document.getElementById('bulk-command').value = 'true'; document.getElementById('bulk-run').click(); true");
    b.ws.wait_until("location.pathname.startsWith('/commands/bulk/')");
    let runs: Vec<Value> = app.api("/api/v1/commands/bulk").unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["created_by"], "tess", "{runs:?}");
    for f in [
        "site-deploy-01-list.png",
        "site-deploy-02-deployment.png",
        "site-deploy-03-approvals.png",
        "site-deploy-04-bulk.png",
        "site-deploy-06-cve.png",
    ] {
        assert!(std::fs::metadata(root.join(f)).unwrap().len() > 1000, "{f}");
    }
    if let Some(dir) = std::env::var_os("OUTPOST_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (from, to) in [
            ("site-deploy-02-deployment.png", "08-site-deployment.png"),
            ("site-deploy-05-patches.png", "10-site-patches.png"),
        ] {
            std::fs::copy(root.join(from), dir.join(to)).unwrap();
        }
    }
    web.stop();
    browser.kill9();
}
