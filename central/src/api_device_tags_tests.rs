//! Device IPs and tags at central's API (router-level, both stores):
//! `GET /api/v1/devices` and a device's detail carry the `ips` and `tags`
//! its site last sent, and a bulk run's `tag` target (API, console)
//! resolves within the caller's customers only.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use outpost_proto::{DeviceId, SiteId};
use outpost_uplink::batch;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::Central;
use crate::model::Role;
use crate::ops;
use crate::testing::{batch_of, central_with_site};

crate::testing::on_both_backends!(
    the_device_json_of_the_list_and_the_detail_carries_the_ips_and_tags_its_site_sent,
    a_tag_target_runs_on_the_callers_devices_with_the_tag_and_never_on_another_customers,
    tags_set_from_central_become_one_order_per_site_with_unknown_devices_reported_and_roles_kept,
);

/// `dental` (site main: 2a tagged web and eu, 2b tagged db) and `vet`
/// (site Vet Clinic: 4d tagged web).
async fn fleet() -> (Arc<Central>, SiteId, SiteId, tempfile::TempDir) {
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
    let facts = |device: u64, ips: &[&str], tags: &[&str]| batch::DeviceIpsTags {
        device: DeviceId(device),
        ips: ips.iter().map(|s| s.to_string()).collect(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
    };
    let mut b = batch_of(&dental, 1);
    b.rollups.clear();
    b.alerts.clear();
    let mut db = b.devices[0].clone();
    db.device = DeviceId(43);
    db.hostname = "db-2".into();
    b.devices.push(db);
    b.device_facts = vec![
        facts(42, &["10.20.0.5", "fe80::1"], &["web", "eu"]),
        facts(43, &["10.30.0.7"], &["db"]),
    ];
    c.store
        .apply_batch(&"msp".into(), &dental, b, 10)
        .await
        .unwrap();
    let mut v = batch_of(&vet, 1);
    v.rollups.clear();
    v.alerts.clear();
    v.devices[0].device = DeviceId(77);
    v.devices[0].hostname = "vet-host".into();
    v.devices[0].customer = "vet".into();
    v.device_facts = vec![facts(77, &["10.20.9.9"], &["web"])];
    c.store
        .apply_batch(&"msp".into(), &vet, v, 10)
        .await
        .unwrap();
    (c, dental, vet, dir)
}

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

async fn token(c: &Arc<Central>, role: Role, customers: &[&str]) -> String {
    crate::testing::token(c, "msp", role, customers).await
}

async fn api(
    c: &Arc<Central>,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let mut h = vec![("authorization", auth.as_str())];
    if body.is_some() {
        h.push(("content-type", "application/json"));
    }
    let b = body.map(|b| b.to_string()).unwrap_or_default();
    let (st, _, text) = send(c, method, uri, &h, &b).await;
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn members(v: &Value) -> Vec<String> {
    let mut m: Vec<String> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap().to_string())
        .collect();
    m.sort();
    m
}

async fn the_device_json_of_the_list_and_the_detail_carries_the_ips_and_tags_its_site_sent() {
    let (c, dental, vet, _dir) = fleet().await;
    let t = token(&c, Role::Viewer, &[]).await;
    let (st, v) = api(&c, &t, "GET", "/api/v1/devices", None).await;
    assert_eq!(st, 200, "{v}");
    let find = |id: &str| {
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} in {v}"))
    };
    let web = find("000000000000002a");
    assert_eq!(web["ips"], json!(["10.20.0.5", "fe80::1"]));
    assert_eq!(web["tags"], json!(["web", "eu"]));
    assert_eq!(
        web["hostname"], "web-1",
        "the row's fields stay where they were"
    );
    assert_eq!(find("000000000000002b")["tags"], json!(["db"]));
    assert_eq!(find("000000000000004d")["ips"], json!(["10.20.9.9"]));
    let (st, d) = api(
        &c,
        &t,
        "GET",
        &format!("/api/v1/sites/{dental}/devices/000000000000002b"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["device"]["ips"], json!(["10.30.0.7"]));
    assert_eq!(d["device"]["tags"], json!(["db"]));
    assert_eq!(d["device"]["hostname"], "db-2");
    // A device whose site sent none: empty lists, not missing fields.
    let mut b = batch_of(&vet, 2);
    b.rollups.clear();
    b.alerts.clear();
    b.devices[0].device = DeviceId(78);
    b.devices[0].customer = "vet".into();
    c.store
        .apply_batch(&"msp".into(), &vet, b, 20)
        .await
        .unwrap();
    let (_, d) = api(
        &c,
        &t,
        "GET",
        &format!("/api/v1/sites/{vet}/devices/000000000000004e"),
        None,
    )
    .await;
    assert_eq!(
        (d["device"]["ips"].clone(), d["device"]["tags"].clone()),
        (json!([]), json!([])),
        "{d}"
    );
    // The typed page still reads (the CLI's and the console's view).
    let (_, page) = api(&c, &t, "GET", "/api/v1/devices?tag=db", None).await;
    let typed: crate::api::DevicePage = serde_json::from_value(page).unwrap();
    assert_eq!(typed.devices.len(), 1);
    assert_eq!(typed.devices[0].hostname, "db-2");
    assert_eq!(typed.devices[0].tags, vec!["db".to_string()]);
}

async fn a_tag_target_runs_on_the_callers_devices_with_the_tag_and_never_on_another_customers() {
    let (c, _dental, _vet, _dir) = fleet().await;
    let body = json!({"target": {"tag": "web"}, "command": "uptime"});
    // A dental technician: its web device only, never vet's.
    let dental_tech = token(&c, Role::Technician, &["dental"]).await;
    let (st, v) = api(
        &c,
        &dental_tech,
        "POST",
        "/api/v1/commands/bulk",
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(members(&v), vec!["000000000000002a".to_string()]);
    assert_eq!(v["target"], json!({"tag": "web"}));
    // The whole tenant: both.
    let tech = token(&c, Role::Technician, &[]).await;
    let (st, v) = api(
        &c,
        &tech,
        "POST",
        "/api/v1/commands/bulk",
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        members(&v),
        vec![
            "000000000000002a".to_string(),
            "000000000000004d".to_string()
        ]
    );
    // Exact tags; none matching is 404; an empty tag 400; viewers 403.
    let (st, _) = api(
        &c,
        &tech,
        "POST",
        "/api/v1/commands/bulk",
        Some(json!({"target": {"tag": "WEB"}, "command": "uptime"})),
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = api(
        &c,
        &tech,
        "POST",
        "/api/v1/commands/bulk",
        Some(json!({"target": {"tag": " "}, "command": "uptime"})),
    )
    .await;
    assert_eq!(st, 400);
    let vet_only = token(&c, Role::Technician, &["vet"]).await;
    let (st, _) = api(
        &c,
        &vet_only,
        "POST",
        "/api/v1/commands/bulk",
        Some(json!({"target": {"tag": "db"}, "command": "uptime"})),
    )
    .await;
    assert_eq!(st, 404, "dental's db tag is not vet's");
    let viewer = token(&c, Role::Viewer, &[]).await;
    let (st, _) = api(&c, &viewer, "POST", "/api/v1/commands/bulk", Some(body)).await;
    assert_eq!(st, 403);

    // The console: the list filtered by a tag offers the run; a dental
    // technician's run has dental's device only.
    ops::add_user(
        c.store.as_ref(),
        &ops::AddUser {
            tenant: "msp".into(),
            name: "dora".into(),
            role: Role::Technician,
            customers: vec!["dental".into()],
            password: "correct horse battery".into(),
        },
        1,
        &c.passwords,
    )
    .await
    .unwrap();
    let (st, h, _) = send(
        &c,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        "tenant=msp&username=dora&password=correct+horse+battery",
    )
    .await;
    assert_eq!(st, 303);
    let cookie = h[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (st, _, page) = send(&c, "GET", "/devices", &[("cookie", &cookie)], "").await;
    assert_eq!(st, 200);
    assert!(!page.contains("tag-run-form"), "no tag filter, no tag run");
    let (_, _, page) = send(&c, "GET", "/devices?tag=web", &[("cookie", &cookie)], "").await;
    assert!(page.contains("id=\"tag-run-form\""), "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let (st, h, body) = send(
        &c,
        "POST",
        "/devices/bulk",
        &[
            ("cookie", &cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        &format!("csrf={csrf}&action=run_tag&target_tag=web&command=uptime"),
    )
    .await;
    assert_eq!(st, 303, "{body}");
    let to = h[header::LOCATION].to_str().unwrap().to_string();
    let id = to.rsplit('/').next().unwrap();
    let (st, v) = api(
        &c,
        &tech,
        "GET",
        &format!("/api/v1/commands/bulk/{id}"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(members(&v), vec!["000000000000002a".to_string()]);
    assert_eq!(v["created_by"], "dora");
}

/// `POST /api/v1/devices/tags`: technicians+ only, tag syntax checked
/// (400), another customer's site and a device central never heard of
/// reported per device (nothing sent for them), one order per site pushed
/// to a connected site of protocol 9, a connected older site refused (409
/// naming it, nothing stored), the order readable by its customers only,
/// and audited at central.
async fn tags_set_from_central_become_one_order_per_site_with_unknown_devices_reported_and_roles_kept()
 {
    let (c, dental, vet, _dir) = fleet().await;
    let tenant: outpost_proto::TenantId = "msp".into();
    let viewer = token(&c, Role::Viewer, &[]).await;
    let dental_tech = token(&c, Role::Technician, &["dental"]).await;
    let vet_tech = token(&c, Role::Technician, &["vet"]).await;
    let body = |add: &[&str]| {
        json!({
            "devices": [
                {"site": dental.to_string(), "device": "000000000000002a"},
                {"site": dental.to_string(), "device": "000000000000002B"},
                {"site": dental.to_string(), "device": "00000000000000ff"},
                {"site": vet.to_string(), "device": "000000000000004d"},
            ],
            "add": add,
            "remove": ["db"],
        })
    };
    let (st, v) = api(
        &c,
        &viewer,
        "POST",
        "/api/v1/devices/tags",
        Some(body(&["pci"])),
    )
    .await;
    assert_eq!(st, 403, "{v}");
    let (st, v) = api(
        &c,
        &dental_tech,
        "POST",
        "/api/v1/devices/tags",
        Some(body(&["a,b"])),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no commas"), "{v}");

    // A connected site too old for tag orders: 409 naming it, nothing stored.
    let (conn, _rx) = c.downlinks.register(&tenant, &dental, 8);
    let (st, v) = api(
        &c,
        &dental_tech,
        "POST",
        "/api/v1/devices/tags",
        Some(body(&["pci"])),
    )
    .await;
    assert_eq!(st, 409, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains(&format!("site {dental} speaks uplink protocol 8")),
        "{e}"
    );
    assert!(c.store.orders(&tenant).await.unwrap().is_empty());
    c.downlinks.unregister(&tenant, &dental, conn);

    let (_conn, rx) = c.downlinks.register(&tenant, &dental, 9);
    let mut rx = rx.unwrap();
    let (st, v) = api(
        &c,
        &dental_tech,
        "POST",
        "/api/v1/devices/tags",
        Some(body(&["pci"])),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let orders = v["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 1, "{v}");
    let id = orders[0]["id"].as_str().unwrap().to_string();
    assert_eq!(orders[0]["kind"], "tags");
    assert_eq!(
        orders[0]["detail"],
        json!({"devices": ["000000000000002a", "000000000000002b"], "add": ["pci"], "remove": ["db"]})
    );
    assert_eq!(orders[0]["deliveries"][0]["state"], "queued");
    let results: Vec<(String, String, Option<String>)> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device"].as_str().unwrap().to_string(),
                d["result"].as_str().unwrap().to_string(),
                d["order"].as_str().map(String::from),
            )
        })
        .collect();
    assert_eq!(
        results,
        vec![
            ("000000000000002a".into(), "queued".into(), Some(id.clone())),
            ("000000000000002b".into(), "queued".into(), Some(id.clone())),
            ("00000000000000ff".into(), "unknown device".into(), None),
            ("000000000000004d".into(), "unknown site".into(), None),
        ]
    );
    assert_eq!(
        rx.try_recv().unwrap(),
        crate::downlink::Down::DeployOrder(id.clone())
    );
    assert!(rx.try_recv().is_err(), "one order for one site");

    // Readable by who sees its site; not a deployment or approval.
    let uri = format!("/api/v1/devices/tags/{id}");
    let (st, o) = api(&c, &viewer, "GET", &uri, None).await;
    assert_eq!(st, 200, "{o}");
    assert_eq!(o["deliveries"][0]["site"], dental.to_string());
    let (st, _) = api(&c, &vet_tech, "GET", &uri, None).await;
    assert_eq!(st, 404);
    let (_, deps) = api(&c, &viewer, "GET", "/api/v1/deployments", None).await;
    assert!(!deps.to_string().contains(&id), "{deps}");

    // The site's answer moves the delivery.
    c.store
        .acknowledge_order(
            &tenant,
            &dental,
            &outpost_uplink::deploy_link::DeployAck {
                id: id.clone(),
                refused: None,
            },
            99,
        )
        .await
        .unwrap();
    let (_, o) = api(&c, &viewer, "GET", &uri, None).await;
    assert_eq!(o["deliveries"][0]["state"], "delivered", "{o}");

    // Audited at central.
    let admin = token(&c, Role::Admin, &[]).await;
    let (st, a) = api(&c, &admin, "GET", "/api/v1/audit", None).await;
    assert_eq!(st, 200, "{a}");
    assert!(a.to_string().contains("device.tags"), "{a}");
}
