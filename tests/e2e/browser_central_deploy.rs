//! Central's Deployments pages in headless Chromium: a real central, the
//! site end of the uplink spoken by the test ([`SiteClient`], protocol of
//! this build: it acknowledges the orders central sends down and reports
//! progress as an appliance does). A deployment created through the API
//! shows in the list with its site's state; a technician opens it and
//! pauses it from the page; the pause goes down to the site as an order
//! (actor `tess@central`), the site reports `paused`, and the open page
//! shows the new state without a reload (live stream). A viewer sees no
//! action and its POST is refused. Screenshots in the scratch directory.

use std::time::Duration;

use outpost_tests::*;
use outpost_uplink::deploy_link::{DeployAck, DeployOrder, DeployOrderKind, DeployProgress};
use outpost_uplink::wire::{CentralFrame, SiteFrame};
use serde_json::{Value, json};

use crate::browser::{Browser, chromium};
use crate::central_commands::call;
use crate::uplink::{Central, SiteClient};

/// The next orders central sends the site (other frames skipped).
pub(crate) fn next_orders(site: &mut SiteClient) -> Vec<DeployOrder> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no order from central"
        );
        if let CentralFrame::DeployOrders(v) = site.next_frame() {
            return v;
        }
    }
}

/// The site reports deployment `id` in `phase` (one device, waiting for
/// its window) and reads central's acknowledgement. The site's times are
/// real (a second ago, plus `at` ms: a later report passes a larger `at`,
/// so each is newer than the one before), so the pages show "Updated 1 s
/// ago", not 1970's.
pub(crate) fn report(site: &mut SiteClient, id: &str, at: u64, phase: &str) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let at = now_ms.saturating_sub(1_000) + at;
    let view = json!({
        "summary": {"id": id, "phase": phase, "stage": 0, "stages": 1, "devices": 1,
                    "succeeded": 0, "failed": 0, "target": "all devices", "patches": [],
                    "created_at_ms": at, "created_by": "ann@central", "updated_at_ms": at},
        "stages": [{"figures": {"stage": 0, "devices": 1, "counted": 0, "succeeded": 0,
                    "failed": 0, "in_flight": 0, "waiting": 1}, "gate": "waiting: window"}],
        "devices": [{"device": "0000000000000007", "stage": 0, "state": "waiting_for_window",
                     "attempt": 0, "reason": null}],
    });
    site.send_frame(&SiteFrame::DeployProgress(DeployProgress {
        deployment: id.to_string(),
        updated_at_ms: at,
        from_central: true,
        view_json: view.to_string(),
    }));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "no progress ack");
        if let CentralFrame::DeployProgressAck(a) = site.next_frame() {
            assert_eq!(a.updated_at_ms, at);
            return;
        }
    }
}

#[test]
fn central_deployment_pages_in_headless_chromium_a_pause_reaches_the_site_and_its_state_shows_live()
{
    let tmp = scratch("central-deploy-browser");
    let root = tmp.path();
    let central = Central::start(root);
    let mut site = SiteClient::join(root, &central, "acme", "harbour-clinic");
    let mut b1 = site.batch(1, 7, 0..0);
    b1.devices[0].hostname = "till-7".into();
    b1.alerts.clear();
    assert_eq!(site.send(&b1), CentralFrame::Ack { seq: 1 });
    for (name, role) in [("tess", "technician"), ("vera", "viewer")] {
        let (ok, _, err) = central.cli(
            &[
                "user", "add", "--tenant", "acme", "--name", name, "--role", role,
            ],
            Some("correct horse battery\n"),
        );
        assert!(ok, "{err}");
    }
    let admin = central.api_token("acme", "admin");
    let (st, v) = call(
        &central,
        &admin,
        "POST",
        "/api/v1/deployments",
        Some(
            json!({"target": {"type": "all"}, "patches": [{"package": "openssl", "version": "3.0.2-1"}]}),
        ),
    );
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // The site gets the creation, acknowledges it and reports it running.
    let orders = next_orders(&mut site);
    assert!(
        orders
            .iter()
            .any(|o| matches!(o.kind, DeployOrderKind::CreateDeployment { .. })),
        "{orders:?}"
    );
    for o in &orders {
        site.send_frame(&SiteFrame::DeployAck(DeployAck {
            id: o.id.clone(),
            refused: None,
        }));
    }
    report(&mut site, &id, 10, "running");

    let (mut browser, ws) = chromium(root);
    let mut b = Browser {
        ws,
        base: format!("http://{}", central.http),
        shots: root.to_path_buf(),
    };
    // A technician: the list, then the deployment.
    b.login("tess");
    b.go("/deployments");
    let row_sel = format!("#deployments tr[data-deployment=\"{id}\"]");
    b.ws.wait_until(&format!("document.querySelector('{row_sel}')"));
    let row =
        b.ws.eval(&format!("document.querySelector('{row_sel}').innerText"));
    let row = row.as_str().unwrap();
    assert!(
        row.contains("running") && row.contains("harbour-clinic") && row.contains("stage 1/1"),
        "{row}"
    );
    assert_eq!(
        b.ws.eval("!!document.getElementById('create-deployment')"),
        json!(false),
        "technicians do not create"
    );
    b.shot("central-deploy-01-list.png");
    b.ws.eval(&format!(
        "document.querySelector('{row_sel} a').click(); true"
    ));
    b.ws.wait_until("document.getElementById('deployment-sites')");
    let text = b.text();
    assert!(
        text.contains("till-7") && text.contains("waiting_for_window"),
        "{text}"
    );
    assert_eq!(
        b.ws.eval(
            "[...document.querySelectorAll('form.dep-action')].map(f => f.dataset.action).join(',')"
        ),
        json!("pause,rollback")
    );
    b.ws.eval("const f = document.querySelector('form.dep-action[data-action=pause]'); f.querySelector('input[name=note]').value = 'from the browser'; f.querySelector('button').click(); true");
    b.ws.wait_until("document.querySelector('#deployment-orders tr[data-action=pause]')");
    assert_eq!(
        b.ws.eval("document.getElementById('deployment').dataset.phase"),
        json!("running"),
        "central shows the site's state: not paused until the site says so"
    );
    // The pause goes down to the site as central's order.
    let orders = next_orders(&mut site);
    let pause = orders
        .iter()
        .find(|o| matches!(&o.kind, DeployOrderKind::Act { action, deployment, .. } if action == "pause" && deployment == &id))
        .unwrap_or_else(|| panic!("{orders:?}"));
    assert_eq!(pause.actor, "tess@central");
    let DeployOrderKind::Act { body_json, .. } = &pause.kind else {
        unreachable!()
    };
    let body: Value = serde_json::from_str(body_json).unwrap();
    assert_eq!(body["note"], "from the browser");
    site.send_frame(&SiteFrame::DeployAck(DeployAck {
        id: pause.id.clone(),
        refused: None,
    }));
    // The site reports it paused: the open page follows without a reload.
    b.ws.wait_until("document.getElementById('live-status').className === 'live-on'");
    b.ws.eval("window.__no_reload = 1; true");
    report(&mut site, &id, 20, "paused");
    b.ws.wait_until("document.querySelector('#deployment[data-phase=paused]')");
    assert_eq!(
        b.ws.eval("window.__no_reload === 1"),
        json!(true),
        "updated in place, not reloaded"
    );
    assert!(b.text().contains("paused from central by tess"));
    b.ws.wait_until("document.querySelector('form.dep-action[data-action=resume]')");
    b.shot("central-deploy-02-paused.png");
    b.logout();

    // A viewer: the same page without actions; its POST is refused.
    b.login("vera");
    b.go(&format!("/deployments/{id}"));
    b.ws.wait_until("document.getElementById('deployment-sites')");
    assert_eq!(
        b.ws.eval("document.querySelectorAll('form.dep-action, #deployment-actions').length"),
        json!(0)
    );
    let token = b
        .ws
        .eval("document.querySelector('input[name=csrf]') ? document.querySelector('input[name=csrf]').value : ''")
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        b.fetch_post(
            &format!("/deployments/{id}/resume"),
            &format!("csrf={token}")
        ),
        403
    );
    let (_, v) = call(
        &central,
        &admin,
        "GET",
        &format!("/api/v1/deployments/{id}"),
        None,
    );
    assert_eq!(v["actions"].as_array().unwrap().len(), 1, "{v}");
    if let Some(dir) = std::env::var_os("OUTPOST_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            root.join("central-deploy-02-paused.png"),
            dir.join("07-central-deployment.png"),
        )
        .unwrap();
    }
    browser.kill9();
}
