//! Central's newer console pages in headless Chromium, against a real
//! central with the site end of the uplink spoken by the test
//! ([`SiteClient`]): an admin's deployment form with options (a bad value
//! comes back in the form with the reason; good ones reach the API's
//! request), a technician's rollback of one stage from the page (the order
//! the site receives), the Approvals page's approve form (the API lists
//! it), a bulk run's page (counts equal to the API's) cancelled from its
//! button, and the File transfers pages (list and state filter equal to
//! the API, a push cancelled from its page). A viewer sees none of the
//! buttons and its forged POSTs (its own token) are refused. Screenshots
//! in the scratch directory; with `OUTPOST_SCREENSHOTS=DIR` the README's
//! are copied there.
//!
//! Central's Scripts pages against a real site and agent
//! ([`crate::central_commands::rig`]): the list equal to the API's, a
//! script's page (newest version, the older linked), a run on the agent's
//! device from central's device page whose output appears on the command
//! page without a reload, and a bulk run from the device list whose page
//! counts equal the API's; a viewer reads but has no run form and its
//! forged POST is refused.

use std::time::Duration;

use serde_json::{Value, json};

use outpost_tests::*;
use outpost_uplink::deploy_link::{DeployAck, DeployOrderKind};
use outpost_uplink::wire::{CentralFrame, SiteFrame};

use crate::browser::{Browser, chromium};
use crate::browser_central_deploy::{next_orders, report};
use crate::central_commands::call;
use crate::central_files::http_bin;
use crate::uplink::{Central, SiteClient};

/// The page's CSRF token (the sign-out form's when it has no other).
fn csrf(b: &mut Browser) -> String {
    b.ws.eval("document.querySelector('input[name=csrf]') ? document.querySelector('input[name=csrf]').value : ''")
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn central_scripts_pages_run_a_script_on_a_real_agent_live_and_a_bulk_run_in_headless_chromium() {
    let tmp = scratch("central-scripts-browser");
    let root = tmp.path();
    let r = crate::central_commands::rig(root);
    let dev = r.agent.device_id.clone();
    for (name, role) in [("tess", "technician"), ("vera", "viewer")] {
        let (ok, _, err) = r.central.cli(
            &[
                "user", "add", "--tenant", "acme", "--name", name, "--role", role,
            ],
            Some("correct horse battery\n"),
        );
        assert!(ok, "{err}");
    }
    let admin = r.central.api_token("acme", "admin");
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
        &admin,
        "PUT",
        "/api/v1/scripts/greet",
        Some(json!({"body": "echo \"greet v2 <$1> on $(uname -s)\"", "interpreter": "bash"})),
    );
    assert_eq!((st, &v["version"]), (200, &json!(2)), "{v}");

    let (mut browser, ws) = chromium(root);
    let mut b = Browser {
        ws,
        base: format!("http://{}", r.central.http),
        shots: root.to_path_buf(),
    };
    b.login("tess");
    // Scripts from the navigation: the API's list.
    b.ws.eval("document.querySelector('nav.main a[href=\"/scripts\"]').click(); true");
    b.ws.wait_until("document.querySelector('#scripts tr[data-script=\"greet\"]')");
    let (_, listed) = call(&r.central, &r.tech, "GET", "/api/v1/scripts", None);
    let names: Vec<Value> = listed
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(
        b.ws.eval("[...document.querySelectorAll('#scripts tbody tr')].map(r => r.dataset.script)"),
        json!(names)
    );
    b.ws.eval("document.querySelector('#scripts a[href=\"/scripts/greet\"]').click(); true");
    b.ws.wait_until("document.getElementById('script-body')");
    assert_eq!(
        b.ws.eval("document.getElementById('script-version').textContent"),
        json!("2")
    );
    assert!(
        b.ws.eval("document.getElementById('script-body').textContent")
            .as_str()
            .unwrap()
            .contains("greet v2 <$1>"),
        "the body, escaped and shown as stored"
    );
    assert_eq!(
        b.ws.eval("!!document.querySelector('a[href=\"/scripts/greet?version=1\"]')"),
        json!(true)
    );
    b.shot("central-scripts-01-script.png");

    // Run it on the agent's device from central's device page: the
    // output appears on the command page without a reload.
    b.go(&format!("/sites/{}/devices/{dev}", r.site));
    b.ws.wait_until("document.getElementById('run-script-name')");
    b.ws.eval("document.getElementById('run-script-name').value = 'greet'; document.getElementById('run-script-args').value = 'from-chromium'; document.getElementById('run-script-submit').click(); true");
    b.ws.wait_until(
        "location.pathname.startsWith('/commands/') && document.getElementById('command')",
    );
    b.ws.eval("window.__no_reload = 1; true");
    let id =
        b.ws.eval("location.pathname.split('/').pop()")
            .as_str()
            .unwrap()
            .to_string();
    b.ws.wait_until("document.getElementById('output') && document.getElementById('output').textContent.includes('greet v2 <from-chromium> on Linux') && window.__no_reload === 1");
    let c = r.wait_closed(&id, 60);
    assert_eq!(c["state"], "completed", "{c}");
    assert_eq!(c["requested_by"], "tess", "{c}");
    assert_eq!(c["spec"]["requested_by"], "tess@central", "{c}");
    b.ws.wait_until("document.getElementById('exit-code') && document.getElementById('exit-code').textContent === '0' && window.__no_reload === 1");
    b.shot("central-scripts-02-output.png");

    // The device list's bulk action: a run of the script on the selected
    // device, whose page counts are the API's once it finished.
    b.go("/devices");
    b.ws.wait_until("document.getElementById('devices') && document.getElementById('bulk-form')");
    b.ws.eval(&format!(
        "const c = document.querySelector('#devices input[name=device][value$=\"/{dev}\"]'); c.checked = true; c.dispatchEvent(new Event('change', {{bubbles: true}})); true"
    ));
    b.ws.wait_until("!document.getElementById('bulk-bar').hidden");
    b.ws.eval("document.getElementById('bulk-script').value = 'greet'; document.getElementById('bulk-args').value = 'bulk'; document.getElementById('bulk-run').click(); true");
    b.ws.wait_until("location.pathname.startsWith('/commands/bulk/') && document.getElementById('bulk-members')");
    let run =
        b.ws.eval("location.pathname.split('/').pop()")
            .as_str()
            .unwrap()
            .to_string();
    let api = wait_for(Duration::from_secs(90), "the bulk run finished", || {
        let (_, v) = call(
            &r.central,
            &r.tech,
            "GET",
            &format!("/api/v1/commands/bulk/{run}"),
            None,
        );
        (v["summary"]["finished"] == true).then_some(v)
    });
    assert_eq!(api["summary"]["done"], 1, "{api}");
    assert_eq!(api["created_by"], "tess", "{api}");
    b.ws.wait_until("document.querySelector('#bulk-members tr[data-state=\"completed\"]') && document.getElementById('bulk').dataset.finished === 'true'");
    let summary =
        b.ws.eval("document.getElementById('bulk-summary').innerText")
            .as_str()
            .unwrap()
            .to_string();
    assert!(
        summary.contains(&format!("{} in all", api["summary"]["total"]))
            && summary.contains(&format!("{} done", api["summary"]["done"])),
        "{summary} vs {api}"
    );
    assert_eq!(
        b.ws.eval("document.querySelectorAll('#bulk-members tbody tr').length"),
        json!(api["devices"].as_array().unwrap().len())
    );
    b.shot("central-scripts-03-bulk.png");
    b.logout();

    // A viewer reads the script, has no run form; its POST is refused.
    b.login("vera");
    b.go("/scripts/greet");
    b.ws.wait_until("document.getElementById('script-body')");
    b.go(&format!("/sites/{}/devices/{dev}", r.site));
    b.ws.wait_until("document.getElementById('device-info')");
    assert_eq!(
        b.ws.eval(
            "!!document.getElementById('run-script') || !!document.getElementById('bulk-form')"
        ),
        json!(false)
    );
    let token = csrf(&mut b);
    assert_eq!(
        b.fetch_post(
            &format!("/sites/{}/devices/{dev}/scripts", r.site),
            &format!("csrf={token}&script=greet&args=forged")
        ),
        403
    );
    let (_, all) = call(&r.central, &r.tech, "GET", "/api/v1/commands", None);
    assert!(
        !all.to_string().contains("forged"),
        "the viewer's POST made no command: {all}"
    );
    for f in [
        "central-scripts-01-script.png",
        "central-scripts-02-output.png",
        "central-scripts-03-bulk.png",
    ] {
        assert!(std::fs::metadata(root.join(f)).unwrap().len() > 1000, "{f}");
    }
    browser.kill9();
}

#[test]
fn central_deploy_form_options_rollback_approvals_bulk_cancel_and_file_pages_in_headless_chromium()
{
    let tmp = scratch("central-pages-browser");
    let root = tmp.path();
    let central = Central::start(root);
    let mut site = SiteClient::join(root, &central, "acme", "harbour-clinic");
    let mut b1 = site.batch(1, 7, 0..0);
    b1.devices[0].hostname = "till-7".into();
    b1.alerts.clear();
    assert_eq!(site.send(&b1), CentralFrame::Ack { seq: 1 });
    for (name, role) in [("ann", "admin"), ("tess", "technician"), ("vera", "viewer")] {
        let (ok, _, err) = central.cli(
            &[
                "user", "add", "--tenant", "acme", "--name", name, "--role", role,
            ],
            Some("correct horse battery\n"),
        );
        assert!(ok, "{err}");
    }
    let admin = central.api_token("acme", "admin");
    let tech = central.api_token("acme", "technician");

    let (mut browser, ws) = chromium(root);
    let mut b = Browser {
        ws,
        base: format!("http://{}", central.http),
        shots: root.to_path_buf(),
    };

    // ---- An admin's deployment form with options.
    b.login("ann");
    b.go("/deployments");
    b.ws.wait_until("document.getElementById('create-deployment')");
    b.ws.eval(
        "document.getElementById('dep-stages').value = '50,10';
         document.getElementById('dep-gate-pct').value = '90';
         document.querySelector('input[name=day][value=sat]').checked = true;
         document.getElementById('dep-window-start').value = '25:00';
         document.getElementById('dep-window-minutes').value = '120';
         document.getElementById('dep-create').click(); true",
    );
    b.ws.wait_until("document.getElementById('dep-error')");
    let err =
        b.ws.eval("document.getElementById('dep-error').innerText")
            .as_str()
            .unwrap()
            .to_string();
    assert!(
        err.contains("Stages: \"50,10\"") && err.contains("Window start: \"25:00\""),
        "{err}"
    );
    assert_eq!(
        b.ws.eval("[document.getElementById('dep-stages').value, document.getElementById('dep-gate-pct').value, document.querySelector('input[name=day][value=sat]').checked]"),
        json!(["50,10", "90", true]),
        "the form as typed"
    );
    let (_, v) = call(&central, &admin, "GET", "/api/v1/deployments", None);
    assert_eq!(v, json!([]), "nothing sent");
    b.shot("central-pages-01-form-error.png");
    b.ws.eval(
        "document.getElementById('dep-stages').value = '10,100';
         document.getElementById('dep-window-start').value = '22:00';
         document.getElementById('dep-window-tz').value = 'Europe/Berlin';
         document.getElementById('dep-reboot').value = 'never';
         document.getElementById('dep-create').click(); true",
    );
    b.ws.wait_until("document.getElementById('deployment')");
    let id =
        b.ws.eval("document.getElementById('deployment').dataset.deployment")
            .as_str()
            .unwrap()
            .to_string();
    let (_, v) = call(
        &central,
        &admin,
        "GET",
        &format!("/api/v1/deployments/{id}"),
        None,
    );
    let r = &v["request"];
    assert_eq!(r["stages"], json!([10, 100]), "{v}");
    assert_eq!(r["gate"], json!({"min_success_pct": 90}), "{v}");
    assert_eq!(
        r["window"],
        json!({"days": ["sat"], "start": "22:00", "duration_minutes": 120, "timezone": "Europe/Berlin"})
    );
    assert_eq!(r["reboot"], "never");
    // The site gets the creation with the options, acknowledges it and
    // reports it paused in its first stage.
    let orders = next_orders(&mut site);
    let create = orders
        .iter()
        .find_map(|o| match &o.kind {
            DeployOrderKind::CreateDeployment { request_json } => Some(request_json.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{orders:?}"));
    let create: Value = serde_json::from_str(&create).unwrap();
    assert_eq!(create["stages"], json!([10, 100]), "{create}");
    for o in &orders {
        site.send_frame(&SiteFrame::DeployAck(DeployAck {
            id: o.id.clone(),
            refused: None,
        }));
    }
    report(&mut site, &id, 10, "paused");
    b.logout();

    // ---- A technician rolls stage 1 back from the page.
    b.login("tess");
    b.go(&format!("/deployments/{id}"));
    b.ws.wait_until("document.querySelector('#deployment[data-phase=paused]') && document.getElementById('rollback-scope')");
    assert_eq!(
        b.ws.eval(
            "[...document.querySelectorAll('#rollback-scope option')].map(o => o.value).join(',')"
        ),
        json!("deployment,stage:1")
    );
    b.ws.eval("document.getElementById('rollback-scope').value = 'stage:1'; document.querySelector('form.dep-action[data-action=rollback] button').click(); true");
    b.ws.wait_until("document.querySelector('#deployment-orders tr[data-action=rollback]')");
    let orders = next_orders(&mut site);
    let body = orders
        .iter()
        .find_map(|o| match &o.kind {
            DeployOrderKind::Act {
                action, body_json, ..
            } if action == "rollback" => Some(body_json.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{orders:?}"));
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, json!({"scope": "stage", "stage": 0}));
    for o in &orders {
        site.send_frame(&SiteFrame::DeployAck(DeployAck {
            id: o.id.clone(),
            refused: None,
        }));
    }

    // ---- A bulk run: its page's counts are the API's; cancel it.
    let (st, v) = call(
        &central,
        &tech,
        "POST",
        "/api/v1/commands/bulk",
        Some(json!({"target": "all", "command": "sleep 600"})),
    );
    assert_eq!(st, 201, "{v}");
    let run = v["id"].as_str().unwrap().to_string();
    b.go(&format!("/commands/bulk/{run}"));
    b.ws.wait_until("document.getElementById('bulk-summary')");
    let (_, api) = call(
        &central,
        &tech,
        "GET",
        &format!("/api/v1/commands/bulk/{run}"),
        None,
    );
    let summary =
        b.ws.eval("document.getElementById('bulk-summary').innerText")
            .as_str()
            .unwrap()
            .to_string();
    assert!(
        summary.contains(&format!("{} in all", api["summary"]["total"])),
        "{summary} vs {api}"
    );
    assert_eq!(
        b.ws.eval("document.querySelectorAll('#bulk-members tbody tr').length"),
        json!(api["devices"].as_array().unwrap().len())
    );
    assert!(b.text().contains("till-7"));
    b.ws.eval("document.getElementById('cancel-bulk').click(); true");
    b.ws.wait_until("document.getElementById('bulk-cancelled-by')");
    assert!(b.text().contains("cancelled by tess"));
    let (_, api) = call(
        &central,
        &tech,
        "GET",
        &format!("/api/v1/commands/bulk/{run}"),
        None,
    );
    assert_eq!(api["cancelled_by"], "tess", "{api}");
    assert_eq!(
        b.ws.eval("!!document.getElementById('cancel-bulk')"),
        json!(false)
    );

    // ---- File transfers: a push, listed as the API lists it; cancelled
    // from its page.
    let site_id = central
        .get("/api/v1/sites", &tech)
        .as_array()
        .and_then(|a| {
            a.first()
                .and_then(|s| s["site_id"].as_str().map(str::to_string))
        })
        .expect("the site listed");
    let (st, out) = http_bin(
        central.http,
        "POST",
        &format!(
            "/api/v1/files/push?site={}&device=0000000000000007&path=/etc/app.conf",
            site_id
        ),
        &tech,
        &[b'x'; 3000],
        None,
    );
    assert_eq!(st, 201, "{}", String::from_utf8_lossy(&out));
    let push: Value = serde_json::from_slice(&out).unwrap();
    let file = push["id"].as_str().unwrap().to_string();
    b.go("/commands");
    b.ws.wait_until("document.getElementById('files-link')");
    b.ws.eval("document.getElementById('files-link').click(); true");
    b.ws.wait_until("document.getElementById('file-list')");
    let (_, listed) = call(&central, &tech, "GET", "/api/v1/files", None);
    assert_eq!(
        b.ws.eval("[...document.querySelectorAll('#files tbody tr')].map(r => r.dataset.file)"),
        json!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].clone())
                .collect::<Vec<_>>()
        )
    );
    let row =
        b.ws.eval(&format!(
            "document.querySelector('#files tr[data-file=\"{file}\"]').innerText"
        ))
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        row.contains("till-7") && row.contains("/etc/app.conf") && row.contains("2.9 KiB"),
        "{row}"
    );
    b.shot("central-pages-02-files.png");
    b.ws.eval(&format!(
        "document.querySelector('#files tr[data-file=\"{file}\"] a').click(); true"
    ));
    b.ws.wait_until("document.getElementById('cancel-file')");
    b.ws.eval("document.getElementById('cancel-file').click(); true");
    b.ws.wait_until("document.querySelector('#file[data-state=cancelled]')");
    let (_, v) = call(
        &central,
        &tech,
        "GET",
        &format!("/api/v1/files/{file}"),
        None,
    );
    assert_eq!(v["state"], "cancelled", "{v}");
    b.go("/files?state=cancelled");
    b.ws.wait_until("document.getElementById('file-list')");
    assert_eq!(
        b.ws.eval("document.querySelectorAll('#files tbody tr').length"),
        json!(1)
    );
    b.logout();

    // ---- Approvals: an admin approves a patch for a tag from the page.
    b.login("ann");
    b.go("/approvals");
    b.ws.wait_until("document.getElementById('verdict-form')");
    b.ws.eval(
        "const f = document.getElementById('verdict-form');
         f.querySelector('input[name=patch]').value = 'curl=8.5.0-2';
         f.querySelector('select[name=verdict]').value = 'decline';
         f.querySelector('input[name=scope]').value = 'tag:web';
         document.getElementById('verdict-send').click(); true",
    );
    b.ws.wait_until("location.pathname === '/approvals' && document.querySelector('#manual')");
    let manual =
        b.ws.eval("document.getElementById('manual').innerText")
            .as_str()
            .unwrap()
            .to_string();
    assert!(
        manual.contains("curl=8.5.0-2") && manual.contains("decline") && manual.contains("web"),
        "{manual}"
    );
    let (_, v) = call(&central, &admin, "GET", "/api/v1/approvals", None);
    assert_eq!(v[0]["detail"]["patch"], "curl=8.5.0-2", "{v}");
    assert_eq!(v[0]["detail"]["verdict"], "decline", "{v}");
    assert_eq!(v[0]["detail"]["scope"], "tag:web", "{v}");
    b.shot("central-pages-03-approvals.png");
    b.logout();

    // ---- A viewer: no button anywhere; forged POSTs refused.
    b.login("vera");
    b.go(&format!("/deployments/{id}"));
    b.ws.wait_until("document.getElementById('deployment')");
    assert_eq!(
        b.ws.eval(
            "document.querySelectorAll('#rollback-scope, .dev-rollback, #resume-patches').length"
        ),
        json!(0)
    );
    let token = csrf(&mut b);
    assert_eq!(
        b.fetch_post(
            &format!("/deployments/{id}/rollback"),
            &format!("csrf={token}&scope=deployment")
        ),
        403
    );
    b.go(&format!("/commands/bulk/{run}"));
    b.ws.wait_until("document.getElementById('bulk-summary')");
    assert_eq!(
        b.ws.eval("!!document.getElementById('cancel-bulk')"),
        json!(false)
    );
    assert_eq!(
        b.fetch_post(
            &format!("/commands/bulk/{run}/cancel"),
            &format!("csrf={token}")
        ),
        403
    );
    b.go(&format!("/files/{file}"));
    b.ws.wait_until("document.getElementById('file')");
    assert_eq!(
        b.fetch_post(&format!("/files/{file}/cancel"), &format!("csrf={token}")),
        403
    );
    b.go("/approvals");
    b.ws.wait_until("document.getElementById('approvals')");
    assert_eq!(
        b.ws.eval("!!document.getElementById('verdict-form')"),
        json!(false)
    );
    assert_eq!(
        b.fetch_post(
            "/approvals",
            &format!("csrf={token}&patch=curl%3D1-1&verdict=approve")
        ),
        403
    );
    let (_, v) = call(&central, &admin, "GET", "/api/v1/approvals", None);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let (_, v) = call(
        &central,
        &admin,
        "GET",
        &format!("/api/v1/deployments/{id}"),
        None,
    );
    assert_eq!(
        v["actions"].as_array().unwrap().len(),
        1,
        "only tess's rollback: {v}"
    );

    for f in [
        "central-pages-01-form-error.png",
        "central-pages-02-files.png",
        "central-pages-03-approvals.png",
    ] {
        assert!(std::fs::metadata(root.join(f)).unwrap().len() > 1000, "{f}");
    }
    if let Some(dir) = std::env::var_os("OUTPOST_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            root.join("central-pages-02-files.png"),
            dir.join("09-central-files.png"),
        )
        .unwrap();
    }
    browser.kill9();
}
