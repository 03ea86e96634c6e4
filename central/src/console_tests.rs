//! The console at central, router-level (tower `oneshot`, no socket):
//! the dashboard's numbers are the API's, a customer-scoped user never
//! sees another customer's names or counts, a viewer cannot acknowledge
//! (no button, and its forged POST is refused), an acknowledgement with
//! a comment lands in the alert's history through the API's ack path, an
//! applied batch reaches a live subscriber as a delta, and devices are
//! found by the IPs and tags their sites send.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use outpost_proto::{DeviceId, SiteId};
use outpost_uplink::batch;
use tower::ServiceExt;

use crate::Central;
use crate::model::Role;
use crate::ops;
use crate::testing::{batch_of, central_with_site};

crate::testing::on_both_backends!(
    the_dashboard_shows_the_apis_numbers_and_links_them_to_filtered_lists,
    a_customer_scoped_user_never_sees_another_customers_names_or_counts,
    a_viewer_gets_no_ack_button_and_its_forged_posts_are_refused,
    an_ack_with_a_comment_goes_through_the_ack_path_into_the_alerts_history,
    search_filter_sort_and_the_device_page_draw_what_is_stored,
    technicians_run_commands_from_the_device_page_and_viewers_cannot,
    the_dashboard_shows_patch_compliance_once_a_site_reports_it,
    technicians_run_library_scripts_from_the_device_page_and_see_scripts_and_bulk_runs,
    the_patch_pages_show_compliance_cves_and_a_devices_missing_patches_within_scope,
    selected_devices_get_one_bulk_run_from_the_list_and_viewers_cannot,
    devices_are_found_by_ip_and_tag_and_the_tag_filter_lists_only_the_viewers_tags,
    an_open_live_stream_ends_with_its_session_or_its_token,
);

async fn send(
    c: &Arc<Central>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, axum::http::HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = crate::api::router(c.clone())
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let st = resp.status().as_u16();
    let h = resp.headers().clone();
    let b = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    (st, h, String::from_utf8_lossy(&b).into_owned())
}

/// A user's session cookie (`outpost_session=...`).
async fn session(c: &Arc<Central>, name: &str, role: Role, customers: &[&str]) -> String {
    ops::add_user(
        c.store.as_ref(),
        &ops::AddUser {
            tenant: "msp".into(),
            name: name.into(),
            role,
            customers: customers.iter().map(|c| (*c).into()).collect(),
            password: "correct horse battery".into(),
        },
        1,
        &c.passwords,
    )
    .await
    .unwrap();
    let (st, h, body) = send(
        c,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("tenant=msp&username={name}&password=correct+horse+battery"),
    )
    .await;
    assert_eq!(st, 303, "{body}");
    h[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// The CSRF token a page of this session carries.
fn csrf_in(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a csrf field")
        .to_string()
}

/// Two customers: `dental` (site `main`, 2 devices, a critical alert) and
/// `vet` (site `Vet Clinic`, 1 device).
async fn two_customers() -> (Arc<Central>, SiteId, SiteId, tempfile::TempDir) {
    let (c, dental, dir) = central_with_site(Default::default()).await;
    let vet = ops::add_site(
        c.store.as_ref(),
        &ops::AddSite {
            tenant: "msp".into(),
            customer: "vet".into(),
            site: "Vet Clinic".into(),
        },
        1,
    )
    .await
    .unwrap()
    .site_id;
    let mut b = batch_of(&dental, 1);
    let mut second = b.devices[0].clone();
    second.device = DeviceId(43);
    second.hostname = "db-2".into();
    second.status = batch::DeviceStatus::Offline;
    b.devices.push(second);
    c.store
        .apply_batch(&"msp".into(), &dental, b, 10)
        .await
        .unwrap();
    let mut v = batch_of(&vet, 1);
    v.devices[0].device = DeviceId(77);
    v.devices[0].hostname = "vet-secret-host".into();
    v.devices[0].customer = "vet".into();
    v.rollups.clear();
    v.alerts[0].alert_id = 70;
    v.alerts[0].device = Some(DeviceId(77));
    v.alerts[0].message = "vet-only message".into();
    c.store
        .apply_batch(&"msp".into(), &vet, v, 10)
        .await
        .unwrap();
    (c, dental, vet, dir)
}

async fn the_dashboard_shows_the_apis_numbers_and_links_them_to_filtered_lists() {
    let (c, _, _, _dir) = two_customers().await;
    let admin = session(&c, "ada", Role::Admin, &[]).await;
    let (_, _, json) = send(&c, "GET", "/api/v1/summary", &[("cookie", &admin)], "").await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let t = &v["totals"];
    let (st, h, page) = send(&c, "GET", "/", &[("cookie", &admin)], "").await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(
        h[header::CONTENT_SECURITY_POLICY],
        outpost_console::security::CSP
    );
    for (key, n) in [
        ("devices", &t["devices"]),
        ("online", &t["online"]),
        ("offline", &t["offline"]),
        ("critical", &t["critical"]),
        ("alerts_firing", &t["alerts_firing"]),
    ] {
        let tile = format!("data-tile=\"{key}\"");
        let at = page.find(&tile).unwrap_or_else(|| panic!("{key}: {page}"));
        let num = page[at..]
            .split("data-k=\"")
            .nth(1)
            .and_then(|r| r.split('>').nth(1))
            .and_then(|r| r.split('<').next())
            .unwrap();
        assert_eq!(num, n.to_string(), "{key}");
    }
    assert_eq!(t["devices"], 3);
    assert!(page.contains(r#"href="/devices?status=offline""#), "{page}");
    assert!(page.contains("Vet Clinic") && page.contains("main"));
}

async fn a_customer_scoped_user_never_sees_another_customers_names_or_counts() {
    let (c, dental, vet, _dir) = two_customers().await;
    let vet_user = session(&c, "val", Role::Technician, &["vet"]).await;
    let cookie = [("cookie", vet_user.as_str())];
    for uri in [
        "/",
        "/devices",
        "/devices?q=host",
        "/alerts?state=all",
        "/devices?sort=cpu&dir=desc",
    ] {
        let (st, _, page) = send(&c, "GET", uri, &cookie, "").await;
        assert_eq!(st, 200, "{uri}: {page}");
        for secret in ["web-1", "db-2", "cpu 97 > 90", "dental", ">main<"] {
            assert!(!page.contains(secret), "{uri} shows {secret}: {page}");
        }
    }
    let (_, _, page) = send(&c, "GET", "/devices", &cookie, "").await;
    assert!(page.contains("vet-secret-host"), "its own device: {page}");
    for uri in [
        format!("/sites/{dental}"),
        format!("/sites/{dental}/devices/000000000000002a"),
        format!("/sites/{dental}/alerts/9"),
        format!("/devices?site={dental}"),
    ] {
        let (st, _, page) = send(&c, "GET", &uri, &cookie, "").await;
        assert_eq!(st, 404, "{uri}: {page}");
        assert!(!page.contains("web-1"), "{uri}");
    }
    let (st, _, _) = send(&c, "GET", &format!("/sites/{vet}"), &cookie, "").await;
    assert_eq!(st, 200);
    // Its live stream does not carry dental's changes either.
    let req = Request::get("/console/live")
        .header("cookie", &vet_user)
        .body(Body::empty())
        .unwrap();
    let resp = crate::api::router(c.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut b = batch_of(&dental, 2);
    b.devices[0].status = batch::DeviceStatus::Offline;
    b.devices[0].as_of_ms = 100;
    let payload = outpost_uplink::batch::encode(&b, 1).unwrap();
    crate::receiver::answer_batch(&c, &"msp".into(), &dental, 2, payload).await;
    let mut v = batch_of(&vet, 2);
    v.devices[0].device = DeviceId(77);
    v.devices[0].hostname = "vet-secret-host".into();
    v.devices[0].status = batch::DeviceStatus::Offline;
    v.devices[0].as_of_ms = 100;
    v.rollups.clear();
    v.alerts.clear();
    let payload = outpost_uplink::batch::encode(&v, 1).unwrap();
    crate::receiver::answer_batch(&c, &"msp".into(), &vet, 2, payload).await;
    let mut body = resp.into_body().into_data_stream();
    use futures_util::StreamExt;
    let mut text = String::new();
    while !text.contains("vet-secret-host") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), body.next())
            .await
            .expect("a live event in time")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        !text.contains("web-1") && !text.contains("dental"),
        "{text}"
    );
    assert!(
        text.contains("\"old_status\":\"online\",\"status\":\"offline\""),
        "{text}"
    );
}

async fn a_viewer_gets_no_ack_button_and_its_forged_posts_are_refused() {
    let (c, dental, _, _dir) = two_customers().await;
    let viewer = session(&c, "vic", Role::Viewer, &[]).await;
    let cookie = [("cookie", viewer.as_str())];
    let (_, _, page) = send(&c, "GET", "/alerts", &cookie, "").await;
    assert!(
        page.contains("cpu_high") && !page.contains("ack-button"),
        "{page}"
    );
    let token = csrf_in(&page);
    let form = ("content-type", "application/x-www-form-urlencoded");
    let uri = format!("/sites/{dental}/alerts/9/ack");
    let (st, _, _) = send(
        &c,
        "POST",
        &uri,
        &[cookie[0], form],
        &format!("csrf={token}&comment=x"),
    )
    .await;
    assert_eq!(
        st, 403,
        "a viewer's own token does not make it a technician"
    );
    let tech = session(&c, "tess", Role::Technician, &[]).await;
    let tcookie = ("cookie", tech.as_str());
    let (_, _, page) = send(&c, "GET", "/alerts", &[tcookie], "").await;
    assert!(page.contains("ack-button"), "{page}");
    let good = csrf_in(&page);
    for (extra, body) in [
        (None, "comment=x".to_string()),
        (None, format!("csrf={token}&comment=x")),
        (
            Some(("sec-fetch-site", "cross-site")),
            format!("csrf={good}&comment=x"),
        ),
    ] {
        let mut h = vec![tcookie, form];
        h.extend(extra);
        let (st, _, page) = send(&c, "POST", &uri, &h, &body).await;
        assert_eq!(st, 403, "{body}: {page}");
    }
    let alerts = c.store.alerts(&"msp".into(), Some(&dental)).await.unwrap();
    assert!(
        alerts.iter().all(|a| a.acked_by.is_none()),
        "nothing acknowledged"
    );
    let m = c.metrics.encode(false);
    assert!(
        m.contains("outpost_central_console_refused_total{reason=\"csrf_token\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("outpost_central_console_refused_total{reason=\"forbidden\"} 1"),
        "{m}"
    );
}

async fn an_ack_with_a_comment_goes_through_the_ack_path_into_the_alerts_history() {
    let (c, dental, _, _dir) = two_customers().await;
    let tech = session(&c, "tess", Role::Technician, &[]).await;
    let uri = format!("/sites/{dental}/alerts/9");
    let (st, _, page) = send(&c, "GET", &uri, &[("cookie", &tech)], "").await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("id=\"ack-comment\""), "{page}");
    let token = csrf_in(&page);
    let (st, h, _) = send(
        &c,
        "POST",
        &format!("{uri}/ack"),
        &[
            ("cookie", &tech),
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", "http://central.test"),
            ("host", "central.test"),
            ("sec-fetch-site", "same-origin"),
        ],
        &format!("csrf={token}&comment=Disk+swapped+%3Cb%3E"),
    )
    .await;
    assert_eq!(st, 303);
    assert_eq!(h[header::LOCATION], uri);
    let (_, _, page) = send(&c, "GET", &uri, &[("cookie", &tech)], "").await;
    assert!(page.contains("acknowledged"), "{page}");
    assert!(
        page.contains("Disk swapped &lt;b&gt;"),
        "escaped comment: {page}"
    );
    assert!(page.contains("firing"), "the transition: {page}");
    let (_, _, json) = send(&c, "GET", "/api/v1/alerts", &[("cookie", &tech)], "").await;
    assert!(json.contains("\"acked_by\":\"tess\""), "{json}");
    // The JSON API's ack takes a comment too.
    let token = {
        let t = ops::create_token(
            c.store.as_ref(),
            &ops::CreateToken {
                tenant: "msp".into(),
                role: Role::Technician,
                customers: vec![],
                ttl: None,
            },
            1,
        )
        .await
        .unwrap();
        format!("Bearer {t}")
    };
    let (st, _, body) = send(
        &c,
        "POST",
        &format!("/api/v1/sites/{dental}/alerts/9/ack"),
        &[
            ("authorization", &token),
            ("content-type", "application/json"),
        ],
        r#"{"comment":"rebooted"}"#,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let h = c
        .store
        .alert_history(&"msp".into(), &dental, 9)
        .await
        .unwrap();
    assert_eq!(h.len(), 3, "{h:?}");
    assert!(
        matches!(&h[2], crate::store::AlertHistoryEntry::Ack { comment, .. } if comment == "rebooted")
    );
    // Without a body, as before.
    let (st, _, _) = send(
        &c,
        "POST",
        &format!("/api/v1/sites/{dental}/alerts/9/ack"),
        &[("authorization", &token)],
        "",
    )
    .await;
    assert_eq!(st, 200);
}

async fn search_filter_sort_and_the_device_page_draw_what_is_stored() {
    let (c, dental, _, _dir) = two_customers().await;
    let admin = session(&c, "ada", Role::Admin, &[]).await;
    let ck = [("cookie", admin.as_str())];
    let (_, _, page) = send(&c, "GET", "/devices?q=DB", &ck, "").await;
    assert!(page.contains("db-2") && !page.contains(">web-1<"), "{page}");
    assert!(page.contains("<span id=\"match-count\">1</span>"), "{page}");
    let (_, _, page) = send(&c, "GET", "/devices?status=offline", &ck, "").await;
    assert!(page.contains("db-2") && !page.contains(">web-1<"), "{page}");
    let (_, _, page) = send(&c, "GET", "/devices?status=critical", &ck, "").await;
    assert!(page.contains(">web-1<") && !page.contains("db-2"), "{page}");
    let (_, _, page) = send(&c, "GET", "/devices?sort=hostname&dir=desc", &ck, "").await;
    let (a, b) = (page.find("web-1").unwrap(), page.find("db-2").unwrap());
    assert!(a < b, "descending");
    let (st, _, _) = send(&c, "GET", "/devices?status=asleep", &ck, "").await;
    assert_eq!(st, 400);
    let (st, _, page) = send(
        &c,
        "GET",
        &format!("/sites/{dental}/devices/000000000000002a?range=30d"),
        &ck,
        "",
    )
    .await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("id=\"chart-cpu\""), "{page}");
    assert!(page.contains("Rollups stored"), "{page}");
    let (st, _, _) = send(&c, "GET", &format!("/sites/{dental}/devices/00ff"), &ck, "").await;
    assert_eq!(st, 404);
}

/// The device page offers "Run command" to technicians only; the form
/// queues a command at central and shows its page (reloading while open);
/// a viewer's forged POST and a stale CSRF token are refused; the lists
/// per site and fleet-wide show it; cancel closes a command still queued
/// at central.
async fn technicians_run_commands_from_the_device_page_and_viewers_cannot() {
    let (c, dental, _vet, _dir) = two_customers().await;
    let tech = session(&c, "tina", Role::Technician, &[]).await;
    let viewer = session(&c, "vic", Role::Viewer, &[]).await;
    let dev = "/sites/".to_string() + dental.as_str() + "/devices/000000000000002a";
    let (st, _, page) = send(&c, "GET", &dev, &[("cookie", &tech)], "").await;
    assert_eq!(st, 200);
    assert!(page.contains("id=\"run-command-line\""), "{page}");
    let csrf = csrf_in(&page);
    let (_, _, vpage) = send(&c, "GET", &dev, &[("cookie", &viewer)], "").await;
    assert!(!vpage.contains("run-command-line") && vpage.contains("Recent commands"));
    let form = "application/x-www-form-urlencoded";
    let run = format!("{dev}/commands");
    // A viewer's forged POST (with its own valid token) is refused.
    let vcsrf = csrf_in(&vpage);
    let (st, _, _) = send(
        &c,
        "POST",
        &run,
        &[("cookie", &viewer), ("content-type", form)],
        &format!("csrf={vcsrf}&command=id"),
    )
    .await;
    assert_eq!(st, 403);
    // A stale token is refused.
    let (st, _, _) = send(
        &c,
        "POST",
        &run,
        &[("cookie", &tech), ("content-type", form)],
        "csrf=nope&command=id",
    )
    .await;
    assert_eq!(st, 403);
    let (st, h, body) = send(
        &c,
        "POST",
        &run,
        &[("cookie", &tech), ("content-type", form)],
        &format!("csrf={csrf}&command=uptime&interpreter=bash&timeout_secs=30&run_as="),
    )
    .await;
    assert_eq!(st, 303, "{body}");
    let at = h[header::LOCATION].to_str().unwrap().to_string();
    assert!(at.starts_with("/commands/"), "{at}");
    let (st, h, page) = send(&c, "GET", &at, &[("cookie", &viewer)], "").await;
    assert_eq!(st, 200);
    assert!(
        page.contains("queued_at_central") && page.contains("uptime"),
        "{page}"
    );
    assert!(
        h.get("refresh").is_none() && page.contains("data-live-commands"),
        "an open command's page follows the live stream, it does not reload"
    );
    assert!(
        !page.contains("cancel-command"),
        "viewers get no cancel button"
    );
    for list in ["/commands".to_string(), format!("/sites/{dental}/commands")] {
        let (st, _, page) = send(&c, "GET", &list, &[("cookie", &viewer)], "").await;
        assert_eq!(st, 200, "{list}");
        assert!(page.contains(&at), "{list}: {page}");
    }
    let (_, _, page) = send(&c, "GET", &at, &[("cookie", &tech)], "").await;
    assert!(page.contains("cancel-command"));
    let (st, _, _) = send(
        &c,
        "POST",
        &format!("{at}/cancel"),
        &[("cookie", &tech), ("content-type", form)],
        &format!("csrf={}", csrf_in(&page)),
    )
    .await;
    assert_eq!(st, 303);
    let (_, h, page) = send(&c, "GET", &at, &[("cookie", &tech)], "").await;
    assert!(page.contains("cmd-cancelled"), "{page}");
    assert!(
        h.get("refresh").is_none(),
        "a closed command's page stays put"
    );
}

async fn the_dashboard_shows_patch_compliance_once_a_site_reports_it() {
    let (c, dental, _, _dir) = two_customers().await;
    let admin = session(&c, "ada", Role::Admin, &[]).await;
    let (_, _, page) = send(&c, "GET", "/", &[("cookie", &admin)], "").await;
    assert!(!page.contains("patch compliance"), "no reports yet");
    let mut b = batch_of(&dental, 2);
    b.devices.clear();
    b.rollups.clear();
    b.alerts.clear();
    let entry = |device: u64, compliance| batch::PatchCompliance {
        device: DeviceId(device),
        missing: 1,
        missing_critical: 0,
        installed_pending_reboot: 0,
        as_of_ms: 50,
        detail: Some(batch::PatchDetail {
            compliance,
            security_patches: Default::default(),
            fixable_cves: 0,
            open_cves: 0,
            risk: Some(0),
            scanned_at_ms: 40,
            reboot_required: false,
        }),
    };
    b.patch_compliance = vec![
        entry(42, batch::ComplianceState::Compliant),
        entry(43, batch::ComplianceState::NonCompliant),
    ];
    c.store
        .apply_batch(&"msp".into(), &dental, b, 20)
        .await
        .unwrap();
    let (st, _, page) = send(&c, "GET", "/", &[("cookie", &admin)], "").await;
    assert_eq!(st, 200);
    let at = page.find("patch compliance").expect("the patch tile");
    let tile = &page[at.saturating_sub(120)..at];
    assert!(tile.contains("50 %"), "1 of 2 devices compliant: {tile}");
}

async fn technicians_run_library_scripts_from_the_device_page_and_see_scripts_and_bulk_runs() {
    let (c, dental, _vet, _dir) = two_customers().await;
    let tech = session(&c, "tina", Role::Technician, &[]).await;
    let viewer = session(&c, "vic", Role::Viewer, &[]).await;
    let admin = crate::model::Principal {
        tenant: "msp".into(),
        role: Role::Admin,
        customers: vec![],
        name: "ada".into(),
    };
    let dev = "/sites/".to_string() + dental.as_str() + "/devices/000000000000002a";
    // No script yet: no form.
    let (_, _, page) = send(&c, "GET", &dev, &[("cookie", &tech)], "").await;
    assert!(!page.contains("run-script-name"), "{page}");
    crate::api_scripts::save_script(
        &c,
        &admin,
        "tidy".into(),
        crate::api_scripts::ScriptRequest {
            body: "echo tidy <$1>".into(),
            ..Default::default()
        },
        true,
    )
    .await
    .unwrap();
    let (_, _, page) = send(&c, "GET", &dev, &[("cookie", &tech)], "").await;
    assert!(
        page.contains("id=\"run-script-name\"") && page.contains("tidy (v1)"),
        "{page}"
    );
    let (_, _, vpage) = send(&c, "GET", &dev, &[("cookie", &viewer)], "").await;
    assert!(!vpage.contains("run-script-name"), "viewers get no form");
    let (st, h, body) = send(
        &c,
        "POST",
        &format!("{dev}/scripts"),
        &[
            ("cookie", &tech),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        &format!("csrf={}&script=tidy&args=a+b", csrf_in(&page)),
    )
    .await;
    assert_eq!(st, 303, "{body}");
    let at = h[header::LOCATION].to_str().unwrap().to_string();
    let (_, _, page) = send(&c, "GET", &at, &[("cookie", &viewer)], "").await;
    assert!(page.contains("script tidy v1"), "{page}");
    let id: outpost_proto::ids::CommandId = at.trim_start_matches("/commands/").parse().unwrap();
    let cmd = c.store.command(&"msp".into(), id).await.unwrap().unwrap();
    assert_eq!(cmd.spec.args, vec!["a".to_string(), "b".to_string()]);
    // The library pages escape what they show.
    let (st, _, page) = send(&c, "GET", "/scripts", &[("cookie", &viewer)], "").await;
    assert_eq!(st, 200);
    assert!(page.contains("href=\"/scripts/tidy\""), "{page}");
    let (st, _, page) = send(&c, "GET", "/scripts/tidy", &[("cookie", &viewer)], "").await;
    assert_eq!(st, 200);
    assert!(page.contains("echo tidy &lt;$1&gt;"), "{page}");
    // A bulk run shows in the list and on its own page.
    let run = crate::api_bulk::create_bulk(
        &c,
        &admin,
        serde_json::from_value(serde_json::json!({"target": "all", "command": "uptime"})).unwrap(),
    )
    .await
    .unwrap();
    let (st, _, page) = send(&c, "GET", "/commands/bulk", &[("cookie", &viewer)], "").await;
    assert_eq!(st, 200);
    assert!(
        page.contains(&format!("/commands/bulk/{}", run.id)),
        "{page}"
    );
    let (st, _, page) = send(
        &c,
        "GET",
        &format!("/commands/bulk/{}", run.id),
        &[("cookie", &viewer)],
        "",
    )
    .await;
    assert_eq!(st, 200);
    assert!(
        page.contains("id=\"bulk-members\"") && page.contains("in all"),
        "{page}"
    );
}

/// The Patches pages at central: the overview (compliance per customer,
/// devices by risk, top CVEs), a CVE's page listing the exposed devices
/// by name, the device page's panel with its missing patch, the CSV
/// download; a customer-scoped user sees none of another customer's.
async fn the_patch_pages_show_compliance_cves_and_a_devices_missing_patches_within_scope() {
    let (c, dental, vet, _dir) = two_customers().await;
    let admin = session(&c, "ada", Role::Admin, &[]).await;
    let vet_user = session(&c, "val", Role::Viewer, &["vet"]).await;
    let (_, _, page) = send(&c, "GET", "/patches", &[("cookie", &admin)], "").await;
    assert!(
        page.contains("No device has a patch assessment yet"),
        "{page}"
    );
    let mut b = batch_of(&dental, 2);
    b.devices.clear();
    b.rollups.clear();
    b.alerts.clear();
    b.patch_compliance = vec![batch::PatchCompliance {
        device: DeviceId(42),
        missing: 1,
        missing_critical: 0,
        installed_pending_reboot: 1,
        as_of_ms: 50,
        detail: Some(batch::PatchDetail {
            compliance: batch::ComplianceState::NonCompliant,
            security_patches: batch::PatchSeverityCounts {
                high: 1,
                ..Default::default()
            },
            fixable_cves: 1,
            open_cves: 0,
            risk: Some(61),
            scanned_at_ms: 40,
            reboot_required: true,
        }),
    }];
    b.patch_findings = vec![batch::PatchFindings {
        device: DeviceId(42),
        as_of_ms: 50,
        patches: vec![batch::MissingPatchEntry {
            source: "openssl".into(),
            installed: "3.0.11-1~deb12u1".into(),
            candidate: Some("3.0.15-1~deb12u1".into()),
            binaries: 2,
            security: true,
            severity: Some(batch::FindingSeverity::High),
            cves: vec!["CVE-2026-1234".into()],
            reboot_expected: false,
            first_seen_ms: 30,
        }],
        vulns: vec![batch::VulnGroup {
            source: "openssl".into(),
            installed: "3.0.11-1~deb12u1".into(),
            fixed: Some("3.0.15-1~deb12u1".into()),
            fix_available: true,
            severity: batch::FindingSeverity::High,
            cves: vec!["CVE-2026-1234".into()],
        }],
    }];
    c.store
        .apply_batch(&"msp".into(), &dental, b, 20)
        .await
        .unwrap();

    let (st, _, page) = send(&c, "GET", "/patches", &[("cookie", &admin)], "").await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("id=\"compliance-customers\""), "{page}");
    assert!(
        page.contains("href=\"/patches/cves/CVE-2026-1234\""),
        "{page}"
    );
    assert!(
        page.contains("data-device=\"000000000000002a\""),
        "risk list: {page}"
    );
    assert!(page.contains("web-1"), "names, not ids: {page}");

    let (st, _, page) = send(
        &c,
        "GET",
        "/patches/cves/CVE-2026-1234",
        &[("cookie", &admin)],
        "",
    )
    .await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("data-state=\"fixable\""), "{page}");
    assert!(page.contains(">web-1<"), "{page}");
    assert!(page.contains("3.0.15-1~deb12u1"), "{page}");

    let dev = format!("/sites/{dental}/devices/000000000000002a");
    let (st, _, page) = send(&c, "GET", &dev, &[("cookie", &admin)], "").await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("id=\"missing-patches\""), "{page}");
    assert!(page.contains("data-source=\"openssl\""), "{page}");
    // Which rule decided each of its patches: the Approvals page for
    // this device (SITE/DEVICE).
    assert!(
        page.contains("id=\"which-rule\"")
            && page.contains(&format!(
                "href=\"/approvals?device={dental}%2F000000000000002a\""
            )),
        "{page}"
    );

    let (st, h, csv) = send(
        &c,
        "GET",
        "/patches/report.csv?customer=dental",
        &[("cookie", &admin)],
        "",
    )
    .await;
    assert_eq!(st, 200, "{csv}");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/csv"));
    assert!(
        csv.contains(",web-1,000000000000002a,non-compliant,1,"),
        "{csv}"
    );
    let (st, h, pdf) = send(
        &c,
        "GET",
        "/patches/report.pdf?customer=dental",
        &[("cookie", &admin)],
        "",
    )
    .await;
    assert_eq!(st, 200, "{pdf}");
    assert_eq!(h["content-type"], "application/pdf");
    assert!(pdf.starts_with("%PDF-"), "{pdf}");

    // The vet user: no dental names, the CVE not exposed in its scope,
    // the dental device and report not found.
    let (_, _, page) = send(&c, "GET", "/patches", &[("cookie", &vet_user)], "").await;
    assert!(
        !page.contains("web-1") && !page.contains("CVE-2026-1234"),
        "{page}"
    );
    let (_, _, page) = send(
        &c,
        "GET",
        "/patches/cves/CVE-2026-1234",
        &[("cookie", &vet_user)],
        "",
    )
    .await;
    assert!(
        page.contains("No device in your scope is exposed"),
        "{page}"
    );
    let (st, _, _) = send(
        &c,
        "GET",
        "/patches/report.csv?customer=dental",
        &[("cookie", &vet_user)],
        "",
    )
    .await;
    assert_eq!(st, 404);
    let (st, _, _) = send(
        &c,
        "GET",
        "/patches/report.pdf?customer=dental",
        &[("cookie", &vet_user)],
        "",
    )
    .await;
    assert_eq!(st, 404, "another customer's PDF report");
    let _ = vet;
}

/// The device list's bulk bar at central: a technician selects two
/// devices of two sites and runs a command line on them as one bulk run
/// (through `/commands/bulk`'s own path); a viewer gets no form and its
/// POST is refused; a device of another customer's scope is refused.
async fn selected_devices_get_one_bulk_run_from_the_list_and_viewers_cannot() {
    let (c, dental, vet, _dir) = two_customers().await;
    let tech = session(&c, "tina", Role::Technician, &[]).await;
    let viewer = session(&c, "vic", Role::Viewer, &[]).await;
    let scoped = session(&c, "dora", Role::Technician, &["dental"]).await;
    let (_, _, page) = send(&c, "GET", "/devices", &[("cookie", &tech)], "").await;
    assert!(
        page.contains("id=\"bulk-run\"") && page.contains("form=\"bulk-form\""),
        "{page}"
    );
    // Tags are set from central through its sites (protocol 9).
    assert!(page.contains("id=\"bulk-tag\""), "{page}");
    let (_, _, vpage) = send(&c, "GET", "/devices", &[("cookie", &viewer)], "").await;
    assert!(!vpage.contains("id=\"bulk-run\""), "{vpage}");
    assert!(!vpage.contains("id=\"bulk-tag\""), "{vpage}");
    let form = ("content-type", "application/x-www-form-urlencoded");
    let body = |csrf: &str| {
        format!(
            "csrf={csrf}&action=run&command=uptime&device={}%2F000000000000002a&device={}%2F000000000000004d",
            dental.as_str(),
            vet.as_str()
        )
    };
    let (st, _, _) = send(
        &c,
        "POST",
        "/devices/bulk",
        &[("cookie", &viewer), form],
        &body(&csrf_in(&vpage)),
    )
    .await;
    assert_eq!(st, 403);
    let (_, _, spage) = send(&c, "GET", "/devices", &[("cookie", &scoped)], "").await;
    let (st, _, _) = send(
        &c,
        "POST",
        "/devices/bulk",
        &[("cookie", &scoped), form],
        &body(&csrf_in(&spage)),
    )
    .await;
    assert_eq!(st, 404, "another customer's device is not found");
    let (st, h, out) = send(
        &c,
        "POST",
        "/devices/bulk",
        &[("cookie", &tech), form],
        &body(&csrf_in(&page)),
    )
    .await;
    assert_eq!(st, 303, "{out}");
    let at = h[header::LOCATION].to_str().unwrap().to_string();
    assert!(at.starts_with("/commands/bulk/"), "{at}");
    let (st, _, page) = send(&c, "GET", &at, &[("cookie", &viewer)], "").await;
    assert_eq!(st, 200, "{page}");
    assert!(
        page.contains("2 in all") && page.contains("uptime"),
        "{page}"
    );
}

/// The IPs and tags sites send (batch format 6) reach the console: the
/// search finds a device by an IP prefix and a tag, the Tag filter offers
/// the tags of the devices the viewer may see and keeps exact matches, the
/// list and the device page show them; tags cannot be set at central (no
/// Tag… action, its POST refused).
async fn devices_are_found_by_ip_and_tag_and_the_tag_filter_lists_only_the_viewers_tags() {
    let (c, dental, vet, _dir) = two_customers().await;
    let facts = |device: u64, ips: &[&str], tags: &[&str]| batch::DeviceIpsTags {
        device: DeviceId(device),
        ips: ips.iter().map(|s| s.to_string()).collect(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
    };
    let mut b = batch_of(&dental, 2);
    b.rollups.clear();
    b.alerts.clear();
    b.devices[0].as_of_ms += 1;
    let mut db = b.devices[0].clone();
    db.device = DeviceId(43);
    db.hostname = "db-2".into();
    db.status = batch::DeviceStatus::Offline;
    b.devices.push(db);
    b.device_facts = vec![
        facts(42, &["10.20.0.5"], &["web", "eu"]),
        facts(43, &["10.30.0.7"], &["db"]),
    ];
    c.store
        .apply_batch(&"msp".into(), &dental, b, 20)
        .await
        .unwrap();
    let mut v = batch_of(&vet, 2);
    v.rollups.clear();
    v.alerts.clear();
    v.devices[0].device = DeviceId(77);
    v.devices[0].hostname = "vet-secret-host".into();
    v.devices[0].as_of_ms += 1;
    v.device_facts = vec![facts(77, &["10.20.9.9"], &["vet-secret-tag"])];
    c.store
        .apply_batch(&"msp".into(), &vet, v, 20)
        .await
        .unwrap();
    let admin = session(&c, "ada", Role::Admin, &[]).await;
    let ck = [("cookie", admin.as_str())];
    let (st, _, page) = send(&c, "GET", "/devices?q=10.30", &ck, "").await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("db-2") && !page.contains(">web-1<"), "{page}");
    assert!(page.contains("10.30.0.7"), "the list shows the IPs: {page}");
    let (_, _, page) = send(&c, "GET", "/devices?q=eu", &ck, "").await;
    assert!(page.contains(">web-1<") && !page.contains("db-2"), "{page}");
    let (_, _, page) = send(&c, "GET", "/devices?tag=db", &ck, "").await;
    assert!(page.contains("db-2") && !page.contains(">web-1<"), "{page}");
    assert!(page.contains("<span id=\"match-count\">1</span>"), "{page}");
    assert!(page.contains("name=\"tag\""), "the Tag filter: {page}");
    for t in ["web", "eu", "db", "vet-secret-tag"] {
        assert!(
            page.contains(&format!("<option value=\"{t}\"")),
            "{t}: {page}"
        );
    }
    let (_, _, page) = send(&c, "GET", "/devices?tag=DB", &ck, "").await;
    assert!(
        page.contains("<span id=\"match-count\">0</span>"),
        "exact: {page}"
    );
    assert!(
        page.contains("id=\"bulk-tag\""),
        "tags are set from central through the sites: {page}"
    );
    let (_, _, page) = send(
        &c,
        "GET",
        &format!("/sites/{dental}/devices/000000000000002a"),
        &ck,
        "",
    )
    .await;
    assert!(
        page.contains("IP addresses") && page.contains("10.20.0.5") && page.contains(">eu<"),
        "{page}"
    );
    // A dental-scoped user: no vet tag offered, nothing of vet found.
    let scoped = session(&c, "dora", Role::Technician, &["dental"]).await;
    let sk = [("cookie", scoped.as_str())];
    let (_, _, page) = send(&c, "GET", "/devices?q=10.20", &sk, "").await;
    assert!(page.contains(">web-1<"), "{page}");
    assert!(!page.contains("vet-secret"), "{page}");
    let (_, _, page) = send(&c, "GET", "/devices?tag=vet-secret-tag", &sk, "").await;
    assert!(page.contains("<span id=\"match-count\">0</span>"), "{page}");
    // Tag… at central (through the sites).
    let form = ("content-type", "application/x-www-form-urlencoded");
    let (_, _, page) = send(&c, "GET", "/devices", &ck, "").await;
    let (st, _, out) = send(
        &c,
        "POST",
        "/devices/bulk",
        &[("cookie", &admin), form],
        &format!(
            "csrf={}&action=tag&tags=x&device={}%2F000000000000002a",
            csrf_in(&page),
            dental.as_str()
        ),
    )
    .await;
    // Central sets tags through the site: one tag order, back to the list.
    assert_eq!(st, 303, "{out}");
    let orders = c.store.orders(&"msp".into()).await.unwrap();
    assert!(
        orders.iter().any(|o| matches!(
            &o.kind,
            outpost_uplink::deploy_link::DeployOrderKind::SetTags { add, .. } if add == &["x".to_string()]
        )),
        "{orders:?}"
    );
}

/// Reads an SSE body until the stream ends (within 10 s), returning it.
async fn until_end(resp: axum::response::Response) -> String {
    use futures_util::StreamExt;
    let mut body = resp.into_body().into_data_stream();
    let mut text = String::new();
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), body.next())
            .await
            .expect("the stream ends in time")
        {
            Some(chunk) => text.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            None => return text,
        }
    }
}

/// The wiring at central: the live stream asks central's credential
/// check again at each keep-alive (50 ms here) and ends when the session
/// logged out or the token was revoked; the console backend reports the
/// session's expiry (the stream's latest end).
async fn an_open_live_stream_ends_with_its_session_or_its_token() {
    use outpost_console::ConsoleBackend;
    let (c, _site, _dir) = central_with_site(crate::CentralLimits {
        live: outpost_console::LiveConfig {
            keep_alive: std::time::Duration::from_millis(50),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let cookie = session(&c, "ann", Role::Technician, &[]).await;
    let backend = crate::console::CentralConsole { central: c.clone() };
    let mut h = axum::http::HeaderMap::new();
    h.insert(header::COOKIE, cookie.parse().unwrap());
    let (v, until) = backend.viewer_until(&h).await.unwrap().unwrap();
    assert_eq!(v.name, "ann");
    let stored = c
        .store
        .session(&ops::sha256(cookie.trim_start_matches("outpost_session=")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(until, Some(stored.expires_ms));

    let open = |k: &'static str, v: String| {
        let c = c.clone();
        async move {
            let req = Request::get("/console/live")
                .header(k, v)
                .body(Body::empty())
                .unwrap();
            crate::api::router(c).oneshot(req).await.unwrap()
        }
    };
    let resp = open("cookie", cookie.clone()).await;
    assert_eq!(resp.status(), 200);
    let (st, _, body) = send(&c, "POST", "/api/v1/logout", &[("cookie", &cookie)], "").await;
    assert_eq!(st, 200, "{body}");
    let text = until_end(resp).await;
    assert!(
        text.contains(r#"event: reload"#) && text.contains("credential"),
        "{text}"
    );

    let token = ops::create_token(
        c.store.as_ref(),
        &ops::CreateToken {
            tenant: "msp".into(),
            role: Role::Viewer,
            customers: vec![],
            ttl: None,
        },
        1,
    )
    .await
    .unwrap();
    let resp = open("authorization", format!("Bearer {token}")).await;
    assert_eq!(resp.status(), 200);
    let id = c.store.api_tokens(&"msp".into()).await.unwrap()[0]
        .id
        .clone();
    ops::revoke_token(
        c.store.as_ref(),
        &"msp".into(),
        &id,
        "operator",
        crate::now_ms(),
    )
    .await
    .unwrap()
    .unwrap();
    let text = until_end(resp).await;
    assert!(text.contains("credential"), "{text}");
    assert_eq!(c.live.subscribers(), 0);
    assert_eq!(c.live.metrics.credential_ended.get(), 2);
}
