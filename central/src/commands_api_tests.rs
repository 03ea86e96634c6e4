//! Router-level tests of central's `/api/v1/commands` and `/api/v1/audit`:
//! roles, customer scopes, tenants, refusals and the push to a connected
//! site.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use outpost_proto::SiteId;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::Central;
use crate::downlink::Down;
use crate::model::Role;
use crate::ops;

crate::testing::on_both_backends!(
    technicians_run_and_cancel_viewers_read_only_and_other_tenants_and_customers_see_nothing,
    a_command_for_a_connected_site_is_pushed_at_once_and_a_protocol_1_site_is_refused,
    a_file_transfer_is_refused_at_central_and_nothing_is_queued,
    admins_edit_scripts_technicians_run_them_and_a_queued_run_keeps_its_version,
    a_customers_script_is_invisible_outside_it_and_other_tenants_see_no_script,
    a_bulk_run_spans_sites_releases_per_site_slots_and_an_offline_sites_share_waits_until_expiry,
    cancelling_a_bulk_run_cancels_its_held_and_queued_members,
    a_command_change_reaches_live_viewers_of_its_customer_only,
);

/// The device of `testing::sample_batch`.
const DEVICE: &str = "000000000000002a";

struct F {
    c: Arc<Central>,
    site: SiteId,
    _dir: tempfile::TempDir,
}

async fn fixture() -> F {
    let (c, site, dir) = crate::testing::central_with_site(Default::default()).await;
    c.store
        .apply_batch(
            &"msp".into(),
            &site,
            crate::testing::batch_of(&site, 1),
            crate::now_ms(),
        )
        .await
        .unwrap();
    F { c, site, _dir: dir }
}

impl F {
    async fn token(&self, tenant: &str, role: Role, customers: &[&str]) -> String {
        crate::testing::token(&self.c, tenant, role, customers).await
    }

    async fn call(
        &self,
        token: &str,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp = crate::api::router(self.c.clone())
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let st = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (st, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn run_body(&self) -> Value {
        json!({"site": self.site, "device": DEVICE, "command": "echo hi", "timeout_ms": 60000})
    }
}

async fn technicians_run_and_cancel_viewers_read_only_and_other_tenants_and_customers_see_nothing()
{
    let f = fixture().await;
    let tech = f.token("msp", Role::Technician, &[]).await;
    let viewer = f.token("msp", Role::Viewer, &[]).await;
    let admin = f.token("msp", Role::Admin, &[]).await;
    let other_tenant = f.token("zeta", Role::Admin, &[]).await;
    let other_customer = f.token("msp", Role::Technician, &["ortho"]).await;

    let (st, v) = f
        .call(&tech, "POST", "/api/v1/commands", Some(f.run_body()))
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["state"], "queued_at_central");
    assert_eq!(v["hostname"], "web-1");
    assert_eq!(
        v["spec"]["requested_by"],
        format!(
            "token:{}@central",
            v["requested_by"]
                .as_str()
                .unwrap()
                .trim_start_matches("token:")
        )
    );
    let id = v["id"].as_str().unwrap().to_string();

    // A viewer may not run, may read.
    let (st, v) = f
        .call(&viewer, "POST", "/api/v1/commands", Some(f.run_body()))
        .await;
    assert_eq!(st, 403, "{v}");
    let (st, v) = f.call(&viewer, "GET", "/api/v1/commands", None).await;
    assert_eq!((st, v.as_array().unwrap().len()), (200, 1));
    let (st, v) = f
        .call(&viewer, "GET", &format!("/api/v1/commands/{id}"), None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["output"], "");

    // Another tenant: nothing, and 404 on everything of this one's.
    let (st, v) = f.call(&other_tenant, "GET", "/api/v1/commands", None).await;
    assert_eq!((st, v.as_array().unwrap().len()), (200, 0));
    for (m, uri, body) in [
        ("GET", format!("/api/v1/commands/{id}"), None),
        ("POST", format!("/api/v1/commands/{id}/cancel"), None),
        ("POST", "/api/v1/commands".to_string(), Some(f.run_body())),
    ] {
        let (st, v) = f.call(&other_tenant, m, &uri, body).await;
        assert_eq!(st, 404, "{m} {uri}: {v}");
    }
    // A technician limited to another customer: the same.
    let (st, v) = f
        .call(&other_customer, "GET", "/api/v1/commands", None)
        .await;
    assert_eq!((st, v.as_array().unwrap().len()), (200, 0));
    let (st, _) = f
        .call(
            &other_customer,
            "GET",
            &format!("/api/v1/commands/{id}"),
            None,
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = f
        .call(
            &other_customer,
            "POST",
            "/api/v1/commands",
            Some(f.run_body()),
        )
        .await;
    assert_eq!(st, 404);

    // Unknown device: 404 naming it; bad state filter: 400.
    let mut b = f.run_body();
    b["device"] = json!("00000000000000ff");
    let (st, v) = f.call(&tech, "POST", "/api/v1/commands", Some(b)).await;
    assert_eq!(st, 404);
    assert!(
        v["error"].as_str().unwrap().contains("00000000000000ff"),
        "{v}"
    );
    let (st, _) = f
        .call(&tech, "GET", "/api/v1/commands?state=nope", None)
        .await;
    assert_eq!(st, 400);
    let (st, v) = f
        .call(
            &tech,
            "GET",
            &format!(
                "/api/v1/commands?site={}&device={DEVICE}&state=queued_at_central",
                f.site
            ),
            None,
        )
        .await;
    assert_eq!((st, v.as_array().unwrap().len()), (200, 1));

    // Cancel: a viewer may not; a technician closes a command still
    // queued at central; a second cancel is a conflict.
    let (st, _) = f
        .call(
            &viewer,
            "POST",
            &format!("/api/v1/commands/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(st, 403);
    let (st, v) = f
        .call(
            &tech,
            "POST",
            &format!("/api/v1/commands/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["closed"].as_bool()),
        (Some("cancelled"), Some(true))
    );
    let (st, _) = f
        .call(
            &tech,
            "POST",
            &format!("/api/v1/commands/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(st, 409);

    // The audit log: run and cancel, admin only.
    let (st, v) = f.call(&admin, "GET", "/api/v1/audit", None).await;
    assert_eq!(st, 200);
    let mut actions: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.pop(), Some("command.run"), "oldest last");
    actions.sort();
    assert_eq!(actions, ["command.cancel", "command.result"]);
    let (st, _) = f.call(&tech, "GET", "/api/v1/audit", None).await;
    assert_eq!(st, 403);
}

async fn a_command_for_a_connected_site_is_pushed_at_once_and_a_protocol_1_site_is_refused() {
    let f = fixture().await;
    let tech = f.token("msp", Role::Technician, &[]).await;
    let tenant = "msp".into();
    let (_conn, rx) = f.c.downlinks.register(&tenant, &f.site, 2);
    let mut rx = rx.expect("a version-2 site has a downlink");
    let (st, v) = f
        .call(&tech, "POST", "/api/v1/commands", Some(f.run_body()))
        .await;
    assert_eq!(st, 201, "{v}");
    let id: outpost_proto::ids::CommandId = v["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(rx.try_recv().unwrap(), Down::Command(id));

    let (conn, rx) = f.c.downlinks.register(&tenant, &f.site, 1);
    assert!(rx.is_none());
    let (st, v) = f
        .call(&tech, "POST", "/api/v1/commands", Some(f.run_body()))
        .await;
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("site does not support commands"),
        "{v}"
    );
    // The one queued before shows why it waits.
    let (_, v) = f
        .call(&tech, "GET", &format!("/api/v1/commands/{id}"), None)
        .await;
    assert!(
        v["note"]
            .as_str()
            .unwrap()
            .contains("does not support commands"),
        "{v}"
    );
    f.c.downlinks.unregister(&tenant, &f.site, conn);
    let (st, _) = f
        .call(&tech, "POST", "/api/v1/commands", Some(f.run_body()))
        .await;
    assert_eq!(st, 201, "an offline site's commands wait at central");
}

/// A file action is refused at central with the reason (its content and
/// limits live in the site's file service): 400, nothing queued.
async fn a_file_transfer_is_refused_at_central_and_nothing_is_queued() {
    let f = fixture().await;
    let tech = f.token("msp", Role::Technician, &[]).await;
    let action = serde_json::to_value(outpost_proto::command::BuiltinAction::PullFile {
        transfer: outpost_proto::ids::TransferId::random(),
        path: "/etc/passwd".into(),
        max_bytes: 1 << 20,
    })
    .unwrap();
    let (st, v) = f
        .call(
            &tech,
            "POST",
            "/api/v1/commands",
            Some(json!({"site": f.site, "device": DEVICE, "action": action})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("file transfers"), "{v}");
    let (st, v) = f.call(&tech, "GET", "/api/v1/commands", None).await;
    assert_eq!((st, v.as_array().unwrap().len()), (200, 0));
}

// ---- the script library (`/api/v1/scripts`) ----

fn script_body(name: &str, body: &str) -> Value {
    json!({"name": name, "body": body, "interpreter": "bash", "timeout_ms": 30000, "parameters": ["path"]})
}

async fn admins_edit_scripts_technicians_run_them_and_a_queued_run_keeps_its_version() {
    let f = fixture().await;
    let admin = f.token("msp", Role::Admin, &[]).await;
    let tech = f.token("msp", Role::Technician, &[]).await;
    let viewer = f.token("msp", Role::Viewer, &[]).await;
    let tenant: outpost_proto::TenantId = "msp".into();
    let (_conn, rx) = f.c.downlinks.register(&tenant, &f.site, 2);
    let mut rx = rx.expect("a version-2 site has a downlink");

    let (st, _) = f
        .call(
            &tech,
            "POST",
            "/api/v1/scripts",
            Some(script_body("cleanup", "echo v1")),
        )
        .await;
    assert_eq!(st, 403, "technicians do not edit the library");
    let (st, v) = f
        .call(
            &admin,
            "POST",
            "/api/v1/scripts",
            Some(script_body("cleanup", "echo v1")),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["version"], 1);
    assert_eq!(v["interpreter"], "bash");
    assert_eq!(v["default_timeout_ms"], 30000);
    assert_eq!(v["customer"], Value::Null);
    let (st, _) = f
        .call(
            &admin,
            "POST",
            "/api/v1/scripts",
            Some(script_body("cleanup", "echo again")),
        )
        .await;
    assert_eq!(st, 409);

    // A viewer reads, may not run.
    let (st, v) = f.call(&viewer, "GET", "/api/v1/scripts", None).await;
    assert_eq!(st, 200);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let run = json!({"site": f.site, "device": DEVICE, "args": ["/tmp"]});
    let (st, _) = f
        .call(
            &viewer,
            "POST",
            "/api/v1/scripts/cleanup/run",
            Some(run.clone()),
        )
        .await;
    assert_eq!(st, 403);

    // A technician's run carries version 1's body and goes down at once.
    let (st, v) = f
        .call(
            &tech,
            "POST",
            "/api/v1/scripts/cleanup/run",
            Some(run.clone()),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["command"], "script cleanup v1");
    assert_eq!(v["spec"]["timeout_ms"], 30000);
    let queued: outpost_proto::ids::CommandId = v["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(rx.try_recv().unwrap(), Down::Command(queued));

    // An edit makes version 2; the queued run keeps version 1's body.
    let (st, v) = f
        .call(
            &admin,
            "PUT",
            "/api/v1/scripts/cleanup",
            Some(json!({"body": "echo v2", "interpreter": "bash"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["version"], 2);
    let rec = f.c.store.command(&tenant, queued).await.unwrap().unwrap();
    let sent = crate::downlink::down_command(&rec, crate::now_ms()).unwrap();
    let spec = outpost_proto::command::CommandSpec::decode(&sent.spec).unwrap();
    assert_eq!(
        spec.kind,
        outpost_proto::command::CommandKind::Script {
            name: "cleanup".into(),
            version: 1,
            body: "echo v1".into()
        }
    );
    // New runs take the newest unless told; old versions stay readable.
    let (_, v) = f
        .call(
            &tech,
            "POST",
            "/api/v1/scripts/cleanup/run",
            Some(run.clone()),
        )
        .await;
    assert_eq!(v["command"], "script cleanup v2");
    let (_, v) = f
        .call(
            &tech,
            "POST",
            "/api/v1/commands",
            Some(json!({"site": f.site, "device": DEVICE, "script": {"name": "cleanup", "version": 1}})),
        )
        .await;
    assert_eq!(v["command"], "script cleanup v1", "{v}");
    let (st, v) = f
        .call(&viewer, "GET", "/api/v1/scripts/cleanup?version=1", None)
        .await;
    assert_eq!((st, v["body"].as_str()), (200, Some("echo v1")));

    // Unknown names and versions answer 404 naming them.
    let (st, v) = f
        .call(&tech, "POST", "/api/v1/scripts/nope/run", Some(run.clone()))
        .await;
    assert_eq!(st, 404);
    assert!(v.to_string().contains("nope"), "{v}");
    let (st, _) = f
        .call(&viewer, "GET", "/api/v1/scripts/cleanup?version=9", None)
        .await;
    assert_eq!(st, 404);
    // Edits and runs are audited.
    let (_, v) = f.call(&admin, "GET", "/api/v1/audit", None).await;
    let actions: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"script.add") && actions.contains(&"script.edit"),
        "{actions:?}"
    );
}

async fn a_customers_script_is_invisible_outside_it_and_other_tenants_see_no_script() {
    let f = fixture().await;
    let admin = f.token("msp", Role::Admin, &[]).await;
    let dental_admin = f.token("msp", Role::Admin, &["dental"]).await;
    let ortho_tech = f.token("msp", Role::Technician, &["ortho"]).await;
    let other_tenant = f.token("zeta", Role::Admin, &[]).await;

    // A customer's admin may not add a script for the whole tenant.
    let (st, _) = f
        .call(
            &dental_admin,
            "POST",
            "/api/v1/scripts",
            Some(script_body("fix", "echo")),
        )
        .await;
    assert_eq!(st, 403);
    let mut body = script_body("fix", "echo dental");
    body["customer"] = json!("dental");
    let (st, v) = f
        .call(&dental_admin, "POST", "/api/v1/scripts", Some(body))
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["customer"], "dental");
    let mut body = script_body("other", "echo");
    body["customer"] = json!("ortho");
    let (st, _) = f.call(&admin, "POST", "/api/v1/scripts", Some(body)).await;
    assert_eq!(st, 404, "no site of customer ortho");

    for t in [&ortho_tech, &other_tenant] {
        let (st, _) = f.call(t, "GET", "/api/v1/scripts/fix", None).await;
        assert_eq!(st, 404);
        let (_, v) = f.call(t, "GET", "/api/v1/scripts", None).await;
        assert_eq!(v, json!([]));
    }
    let (st, _) = f
        .call(
            &other_tenant,
            "POST",
            "/api/v1/scripts/fix/run",
            Some(json!({"site": f.site, "device": DEVICE})),
        )
        .await;
    assert_eq!(st, 404);
    // Within the customer it runs; an edit keeps the customer.
    let (st, v) = f
        .call(
            &dental_admin,
            "POST",
            "/api/v1/scripts/fix/run",
            Some(json!({"site": f.site, "device": DEVICE})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = f
        .call(
            &admin,
            "PUT",
            "/api/v1/scripts/fix",
            Some(json!({"body": "echo 2"})),
        )
        .await;
    assert_eq!((st, &v["customer"]), (200, &json!("dental")), "{v}");
}

// ---- bulk runs (`/api/v1/commands/bulk`) ----

async fn a_bulk_run_spans_sites_releases_per_site_slots_and_an_offline_sites_share_waits_until_expiry()
 {
    let f = fixture().await;
    let tenant: outpost_proto::TenantId = "msp".into();
    // A second device at the first site; a second site (customer ortho)
    // with one device, never connected.
    let mut b = crate::testing::batch_of(&f.site, 2);
    let mut d2 = b.devices[0].clone();
    d2.device = outpost_proto::DeviceId(43);
    d2.hostname = "web-2".into();
    b.devices = vec![d2];
    (b.rollups, b.alerts) = (vec![], vec![]);
    f.c.store
        .apply_batch(&tenant, &f.site, b, crate::now_ms())
        .await
        .unwrap();
    let other = ops::add_site(
        f.c.store.as_ref(),
        &ops::AddSite {
            tenant: "msp".into(),
            customer: "ortho".into(),
            site: "branch".into(),
        },
        1,
    )
    .await
    .unwrap()
    .site_id;
    f.c.store
        .apply_batch(
            &tenant,
            &other,
            crate::testing::batch_of(&other, 1),
            crate::now_ms(),
        )
        .await
        .unwrap();
    let tech = f.token("msp", Role::Technician, &[]).await;
    let viewer = f.token("msp", Role::Viewer, &[]).await;
    let dental_tech = f.token("msp", Role::Technician, &["dental"]).await;
    let other_tenant = f.token("zeta", Role::Admin, &[]).await;
    let (_conn, rx) = f.c.downlinks.register(&tenant, &f.site, 2);
    let mut rx = rx.unwrap();

    let body = json!({"target": "all", "command": "uptime", "concurrency": 1, "expiry_ms": 60000});
    let (st, _) = f
        .call(&viewer, "POST", "/api/v1/commands/bulk", Some(body.clone()))
        .await;
    assert_eq!(st, 403);
    let (st, v) = f
        .call(&tech, "POST", "/api/v1/commands/bulk", Some(body.clone()))
        .await;
    assert_eq!(st, 201, "{v}");
    let run = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["summary"]["total"], 3);
    assert_eq!(v["sites"].as_array().unwrap().len(), 2);
    // One slot per site: one member of each site released, one held.
    assert_eq!(v["summary"]["held"], 1, "{v}");
    let first = rx
        .try_recv()
        .expect("the connected site gets its first member");
    assert!(rx.try_recv().is_err(), "concurrency 1: one at a time");
    // A reconnect (Welcome) sends the released member, not the held one.
    let frames = crate::downlink::SiteDownlink::new(&f.c, &tenant, &f.site)
        .opening(crate::now_ms())
        .await;
    assert!(
        matches!(&frames[..], [outpost_uplink::wire::CentralFrame::Commands(v)] if v.len() == 1),
        "{frames:?}"
    );
    let Down::Command(first) = first else {
        panic!("{first:?}")
    };
    // The first finishes (cancelled here): the pump releases the next.
    f.c.store
        .change_command(
            &tenant,
            first,
            crate::commands::Change::Cancel { by: "t".into() },
            1,
            None,
        )
        .await
        .unwrap();
    crate::api_bulk::pump_all(&f.c).await;
    assert!(matches!(rx.try_recv(), Ok(Down::Command(id)) if id != first));
    let (st, v) = f
        .call(
            &viewer,
            "GET",
            &format!("/api/v1/commands/bulk/{run}"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["summary"]["held"], 0, "{v}");
    assert_eq!(v["summary"]["by_state"]["queued_at_central"], 2, "{v}");
    assert_eq!(v["summary"]["by_state"]["cancelled"], 1, "{v}");
    assert_eq!(v["devices"].as_array().unwrap().len(), 3);

    // Scopes: a customer-limited technician does not see a run reaching
    // another customer, nor can target one; another tenant sees nothing.
    for t in [&dental_tech, &other_tenant] {
        let (st, _) = f
            .call(t, "GET", &format!("/api/v1/commands/bulk/{run}"), None)
            .await;
        assert_eq!(st, 404);
    }
    let (st, _) = f
        .call(
            &dental_tech,
            "POST",
            "/api/v1/commands/bulk",
            Some(json!({"target": {"customer": "ortho"}, "command": "uptime"})),
        )
        .await;
    assert_eq!(st, 404);
    let (st, v) = f
        .call(&dental_tech, "POST", "/api/v1/commands/bulk", Some(body))
        .await;
    assert_eq!(
        (st, &v["summary"]["total"]),
        (201, &json!(2)),
        "all = the caller's scope"
    );
    let (_, v) = f
        .call(&dental_tech, "GET", "/api/v1/commands/bulk", None)
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");

    // The offline site's share waits at central until its expiry.
    let (_, v) = f
        .call(&tech, "GET", &format!("/api/v1/commands/bulk/{run}"), None)
        .await;
    let offline: Vec<&Value> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["site"] == json!(other))
        .collect();
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0]["state"], "queued_at_central");
    crate::downlink::sweep(&f.c, crate::now_ms() + 61_000).await;
    let (_, v) = f
        .call(&tech, "GET", &format!("/api/v1/commands/bulk/{run}"), None)
        .await;
    assert_eq!(v["summary"]["expired"], 2, "{v}");
    assert_eq!(v["summary"]["finished"], true, "{v}");
}

async fn cancelling_a_bulk_run_cancels_its_held_and_queued_members() {
    let f = fixture().await;
    let tech = f.token("msp", Role::Technician, &[]).await;
    let (st, v) = f
        .call(
            &tech,
            "POST",
            "/api/v1/commands/bulk",
            Some(json!({"target": {"devices": [{"site": f.site, "device": DEVICE}]}, "command": "uptime"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let run = v["id"].as_str().unwrap().to_string();
    let (st, v) = f
        .call(
            &tech,
            "POST",
            &format!("/api/v1/commands/bulk/{run}/cancel"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["summary"]["cancelled"], 1, "{v}");
    assert_eq!(
        v["cancelled_by"].as_str().map(|s| s.starts_with("token:")),
        Some(true)
    );
    // Unknown devices answer 404 naming them.
    let (st, v) = f
        .call(
            &tech,
            "POST",
            "/api/v1/commands/bulk",
            Some(json!({"target": {"devices": [{"site": f.site, "device": "00000000000000ff"}]}, "command": "uptime"})),
        )
        .await;
    assert_eq!(st, 404);
    assert!(v.to_string().contains("00000000000000ff"));
}

async fn a_command_change_reaches_live_viewers_of_its_customer_only() {
    use outpost_console::live::{Delivery, Scope};
    let f = fixture().await;
    let tech = f.token("msp", Role::Technician, &[]).await;
    let scope = |c: &[&str]| Scope {
        tenant: "msp".into(),
        customers: c.iter().map(|x| x.to_string()).collect(),
    };
    let mut dental = f.c.live.subscribe(scope(&["dental"])).unwrap();
    let mut ortho = f.c.live.subscribe(scope(&["ortho"])).unwrap();
    let (st, v) = f
        .call(&tech, "POST", "/api/v1/commands", Some(f.run_body()))
        .await;
    assert_eq!(st, 201);
    let id = v["id"].as_str().unwrap().to_string();
    async fn next(s: &mut outpost_console::live::Subscription) -> Option<Delivery> {
        tokio::time::timeout(std::time::Duration::from_millis(500), s.next())
            .await
            .ok()
            .flatten()
    }
    match next(&mut dental).await {
        Some(Delivery::Event(e)) => {
            assert_eq!(e.kind, "command");
            let c: outpost_console::live::CommandChange = serde_json::from_str(&e.data).unwrap();
            assert_eq!(
                (c.id.as_str(), c.state.as_str()),
                (id.as_str(), "queued_at_central")
            );
        }
        d => panic!("{d:?}"),
    }
    // The site's acknowledgement moves it: another event.
    let tenant: outpost_proto::TenantId = "msp".into();
    let mut dl = crate::downlink::SiteDownlink::new(&f.c, &tenant, &f.site);
    dl.on_ack(
        outpost_uplink::downlink::CommandAck::accepted(id.parse().unwrap()),
        crate::now_ms(),
    )
    .await;
    match next(&mut dental).await {
        Some(Delivery::Event(e)) => assert!(e.data.contains("delivered_to_site"), "{}", e.data),
        d => panic!("{d:?}"),
    }
    assert!(
        next(&mut ortho).await.is_none(),
        "another customer hears nothing"
    );
}
