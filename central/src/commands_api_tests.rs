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
        ops::create_token(
            self.c.store.as_ref(),
            &ops::CreateToken {
                tenant: tenant.into(),
                role,
                customers: customers.iter().map(|c| (*c).into()).collect(),
            },
            1,
        )
        .await
        .unwrap()
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
