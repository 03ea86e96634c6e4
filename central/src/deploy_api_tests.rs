//! Router-level tests of central's `/api/v1/deployments`,
//! `/api/v1/approvals` and `/api/v1/approval-rules`, with the site end
//! of the stream driven directly ([`crate::deploy_link::SiteDeployLink`]):
//! roles, customer scopes, tenants, the protocol refusal, delivery
//! exactly once and progress.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use outpost_proto::SiteId;
use outpost_uplink::deploy_link::{DeployAck, DeployProgress};
use outpost_uplink::wire::CentralFrame;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::Central;
use crate::deploy_link::SiteDeployLink;
use crate::downlink::Down;
use crate::model::Role;
use crate::ops;

crate::testing::on_both_backends!(
    admins_deploy_technicians_pause_viewers_read_and_other_tenants_and_customers_get_404,
    a_connected_site_below_protocol_5_is_refused_with_its_name_and_version,
    install_options_need_protocol_8_at_creation_and_at_delivery_and_come_back_with_the_audit,
    approvals_and_rules_go_to_every_site_and_a_removed_rule_leaves_the_list,
    the_paged_deployment_list_never_shows_another_tenants_or_an_out_of_scope_customers_deployments,
);

struct F {
    c: Arc<Central>,
    site: SiteId,
    branch: SiteId,
    _dir: tempfile::TempDir,
}

async fn fixture() -> F {
    let (c, site, dir) = crate::testing::central_with_site(Default::default()).await;
    let branch = ops::add_site(
        c.store.as_ref(),
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
    F {
        c,
        site,
        branch,
        _dir: dir,
    }
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
}

fn order_ids(frames: &[CentralFrame]) -> Vec<String> {
    frames
        .iter()
        .flat_map(|f| match f {
            CentralFrame::DeployOrders(v) => v.iter().map(|o| o.id.clone()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

fn view(phase: &str, failed_device: Option<&str>) -> String {
    let mut devices = vec![
        json!({"device": "000000000000002a", "stage": 0, "state": "succeeded", "attempt": 1, "reason": null}),
    ];
    if let Some(d) = failed_device {
        devices.push(json!({"device": d, "stage": 0, "state": "failed", "attempt": 1, "reason": "preinst failed"}));
    }
    json!({
        "summary": {"id": "x", "phase": phase, "stage": 0, "stages": 2, "devices": devices.len(),
                    "succeeded": 1, "failed": u32::from(failed_device.is_some()),
                    "created_at_ms": 1, "created_by": "ann@central"},
        "stages": [{"figures": {"devices": 2}, "gate": "fails: 50% failed"}],
        "devices": devices,
    })
    .to_string()
}

async fn admins_deploy_technicians_pause_viewers_read_and_other_tenants_and_customers_get_404() {
    let f = fixture().await;
    let tenant: outpost_proto::TenantId = "msp".into();
    let admin = f.token("msp", Role::Admin, &[]).await;
    let tech = f.token("msp", Role::Technician, &[]).await;
    let viewer = f.token("msp", Role::Viewer, &[]).await;
    let dental_viewer = f.token("msp", Role::Viewer, &["dental"]).await;
    let other_tenant = f.token("zeta", Role::Admin, &[]).await;
    let (_conn, rx) = f.c.downlinks.register(&tenant, &f.site, 5);
    let mut rx = rx.unwrap();

    let body = json!({"target": {"type": "all"}, "stages": [50, 100]});
    for t in [&viewer, &tech] {
        let (st, v) = f
            .call(t, "POST", "/api/v1/deployments", Some(body.clone()))
            .await;
        assert_eq!(st, 403, "{v}");
    }
    let (st, v) = f
        .call(&admin, "POST", "/api/v1/deployments", Some(body.clone()))
        .await;
    assert_eq!(st, 201, "{v}");
    let dep = v["id"].as_str().unwrap().to_string();
    assert!(dep.starts_with("cdep-"));
    assert_eq!(
        v["request"]["id"],
        dep.as_str(),
        "central's id is the site's"
    );
    assert_eq!(v["sites"].as_array().unwrap().len(), 2, "every site: {v}");
    assert!(
        v["sites"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["delivery"] == "queued")
    );
    // Pushed at once to the connected site.
    let Ok(Down::DeployOrder(order)) = rx.try_recv() else {
        panic!("the connected site gets the order at once")
    };

    // The site's stream: the order goes down after Welcome (oldest first),
    // the site acknowledges; acknowledged again after a reconnect (a
    // redelivery) nothing changes and it is not sent again.
    let mut link = SiteDeployLink::new(&f.c, &tenant, &f.site, &"dental".into(), 5);
    assert_eq!(
        order_ids(&link.opening(1_000).await),
        std::slice::from_ref(&order)
    );
    assert!(link.next_resend().is_some());
    link.on_ack(
        DeployAck {
            id: order.clone(),
            refused: None,
        },
        1_001,
    )
    .await;
    assert_eq!(link.next_resend(), None);
    let mut again = SiteDeployLink::new(&f.c, &tenant, &f.site, &"dental".into(), 5);
    assert!(
        again.opening(2_000).await.is_empty(),
        "delivered: not sent again"
    );
    again
        .on_ack(
            DeployAck {
                id: order.clone(),
                refused: Some("late".into()),
            },
            2_001,
        )
        .await;
    // A protocol-4 stream of the same site gets nothing.
    let mut old = SiteDeployLink::new(&f.c, &tenant, &f.branch, &"ortho".into(), 4);
    assert!(old.opening(2_000).await.is_empty());

    // Progress comes up, acknowledged; a stale one is not stored.
    let p = |at, phase| DeployProgress {
        deployment: dep.clone(),
        updated_at_ms: at,
        from_central: true,
        view_json: view(phase, Some("000000000000002b")),
    };
    assert!(matches!(
        link.on_progress(p(10, "paused"), 3_000).await,
        Some(CentralFrame::DeployProgressAck(a)) if a.updated_at_ms == 10
    ));
    assert!(link.on_progress(p(9, "running"), 3_001).await.is_some());
    let (st, v) = f.call(&viewer, "GET", "/api/v1/deployments", None).await;
    assert_eq!(st, 200);
    let d = v
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == dep.as_str())
        .unwrap();
    let s = d["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"] == f.site.to_string())
        .unwrap();
    assert_eq!(s["delivery"], "delivered");
    assert_eq!(s["phase"], "paused", "the newest report stands");
    assert_eq!(s["failures"][0]["reason"], "preinst failed");
    assert_eq!(s["gates"][0]["gate"], "fails: 50% failed");
    let (st, v) = f
        .call(&viewer, "GET", &format!("/api/v1/deployments/{dep}"), None)
        .await;
    assert_eq!(st, 200);
    let s = v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"] == f.site.to_string())
        .unwrap();
    assert_eq!(s["device_results"].as_array().unwrap().len(), 2);

    // Actions: technicians pause/resume/roll back, admins abort, viewers none.
    let (st, _) = f
        .call(
            &viewer,
            "POST",
            &format!("/api/v1/deployments/{dep}/pause"),
            None,
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = f
        .call(
            &tech,
            "POST",
            &format!("/api/v1/deployments/{dep}/abort"),
            None,
        )
        .await;
    assert_eq!(st, 403);
    let (st, v) = f
        .call(
            &tech,
            "POST",
            &format!("/api/v1/deployments/{dep}/pause"),
            Some(json!({"note": "wait"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["kind"], "action");
    assert!(matches!(rx.try_recv(), Ok(Down::DeployOrder(id)) if id == v["id"]));
    let (st, _) = f
        .call(
            &tech,
            "POST",
            &format!("/api/v1/deployments/{dep}/rollback"),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 400, "a rollback names its scope");

    // Another tenant and a customer that does not see every site: 404.
    for t in [&other_tenant, &dental_viewer] {
        let (st, _) = f
            .call(t, "GET", &format!("/api/v1/deployments/{dep}"), None)
            .await;
        assert_eq!(st, 404);
    }
    let (st, _) = f
        .call(
            &other_tenant,
            "POST",
            &format!("/api/v1/deployments/{dep}/pause"),
            None,
        )
        .await;
    assert_eq!(st, 404);

    // A deployment created at the site shows read-only.
    link.on_progress(
        DeployProgress {
            deployment: "dep-local".into(),
            updated_at_ms: 5,
            from_central: false,
            view_json: view("running", None),
        },
        3_002,
    )
    .await;
    let (_, v) = f
        .call(&dental_viewer, "GET", "/api/v1/deployments", None)
        .await;
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["dep-local"],
        "the dental viewer sees its site's own only"
    );
    assert_eq!(v[0]["origin"], "site");
    let (st, _) = f
        .call(&tech, "POST", "/api/v1/deployments/dep-local/pause", None)
        .await;
    assert_eq!(st, 409);
    let m = f.c.metrics.encode(false);
    assert!(
        m.contains("outpost_central_deploy_orders_sent_total 1"),
        "{m}"
    );
    assert!(
        m.contains("outpost_central_deploy_orders_acked_total 1"),
        "{m}"
    );
    assert!(
        m.contains("outpost_central_deploy_progress_ignored_total 1"),
        "{m}"
    );
}

async fn a_connected_site_below_protocol_5_is_refused_with_its_name_and_version() {
    let f = fixture().await;
    let tenant: outpost_proto::TenantId = "msp".into();
    let admin = f.token("msp", Role::Admin, &[]).await;
    let _link = f.c.downlinks.register(&tenant, &f.branch, 3);
    let (st, v) = f
        .call(
            &admin,
            "POST",
            "/api/v1/deployments",
            Some(json!({"target": {"type": "all"}})),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    let msg = v["error"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains(&f.branch.to_string()) && msg.contains("protocol 3"),
        "{msg}"
    );
    let (_, v) = f.call(&admin, "GET", "/api/v1/deployments", None).await;
    assert_eq!(v, json!([]), "nothing stored");
    // Only the other site: accepted (it is offline: queued).
    let (st, v) = f
        .call(
            &admin,
            "POST",
            "/api/v1/deployments",
            Some(json!({"target": {"type": "all"}, "sites": [f.site]})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, _) = f
        .call(
            &admin,
            "POST",
            "/api/v1/deployments",
            Some(json!({"target": {"type": "all"}, "sites": ["nope"]})),
        )
        .await;
    assert_eq!(st, 404);
    assert!(
        f.c.metrics
            .encode(false)
            .contains("outpost_central_deploy_refusals_total{reason=\"protocol\"} 1")
    );
}

async fn approvals_and_rules_go_to_every_site_and_a_removed_rule_leaves_the_list() {
    let f = fixture().await;
    let admin = f.token("msp", Role::Admin, &[]).await;
    let tech = f.token("msp", Role::Technician, &[]).await;
    let body = json!({"patch": "openssl=3.0.15-1", "verdict": "approve", "scope": "tag:pilot"});
    let (st, _) = f
        .call(&tech, "POST", "/api/v1/approvals", Some(body.clone()))
        .await;
    assert_eq!(st, 403);
    let (st, v) = f
        .call(&admin, "POST", "/api/v1/approvals", Some(body))
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["deliveries"].as_array().unwrap().len(), 2);
    assert_eq!(v["detail"]["scope"], "tag:pilot");
    let (st, _) = f
        .call(
            &admin,
            "POST",
            "/api/v1/approvals",
            Some(json!({"patch": "openssl", "verdict": "approve"})),
        )
        .await;
    assert_eq!(st, 400, "PKG=VERSION");
    let (_, v) = f.call(&tech, "GET", "/api/v1/approvals", None).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    let rule = json!({"id": "sec", "scope": {"type": "tenant", "tenant": "msp"}, "rule": {"kind": "auto"}});
    let (st, v) = f
        .call(
            &admin,
            "POST",
            "/api/v1/approval-rules",
            Some(json!({"rule": rule, "sites": [f.site]})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (_, v) = f.call(&tech, "GET", "/api/v1/approval-rules", None).await;
    assert_eq!(v[0]["id"], "sec");
    let (st, v) = f
        .call(&admin, "DELETE", "/api/v1/approval-rules/sec", None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["deliveries"][0]["site"],
        f.site.to_string(),
        "where it was added"
    );
    let (_, v) = f.call(&tech, "GET", "/api/v1/approval-rules", None).await;
    assert_eq!(v, json!([]));
    let (st, _) = f
        .call(&admin, "DELETE", "/api/v1/approval-rules/sec", None)
        .await;
    assert_eq!(st, 404);

    // One id added to one site, then to another: live at both, and its
    // removal goes to both (it went to the last one only).
    let sites_of = |v: &Value| {
        let mut s: Vec<String> = v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["site"].as_str().unwrap().to_string())
            .collect();
        s.sort();
        s
    };
    let mut both = vec![f.site.to_string(), f.branch.to_string()];
    both.sort();
    for site in [&f.site, &f.branch] {
        let (st, v) = f
            .call(
                &admin,
                "POST",
                "/api/v1/approval-rules",
                Some(json!({"rule": rule, "sites": [site]})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let (_, v) = f.call(&admin, "GET", "/api/v1/approval-rules", None).await;
    let mut live: Vec<String> = serde_json::from_value(v[0]["sites"].clone()).unwrap();
    live.sort();
    assert_eq!(live, both, "{v}");
    let (st, v) = f
        .call(&admin, "DELETE", "/api/v1/approval-rules/sec", None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(sites_of(&v), both, "removed wherever it is live");
    let (_, v) = f.call(&admin, "GET", "/api/v1/approval-rules", None).await;
    assert_eq!(v, json!([]));

    // The tenant admin's rule at both sites; an admin of the site's
    // customer sees it at his site only (not the branch), re-adds and
    // removes the same id there: the tenant admin still sees it live at
    // the branch, and removes it there.
    let (st, _) = f
        .call(
            &admin,
            "POST",
            "/api/v1/approval-rules",
            Some(json!({"rule": rule})),
        )
        .await;
    assert_eq!(st, 201);
    let dental = f.token("msp", Role::Admin, &["dental"]).await;
    let (_, v) = f.call(&dental, "GET", "/api/v1/approval-rules", None).await;
    assert_eq!(v[0]["sites"], json!([f.site.to_string()]), "{v}");
    assert_eq!(sites_of(&v[0]["added"]), vec![f.site.to_string()], "{v}");
    let (st, _) = f
        .call(
            &dental,
            "POST",
            "/api/v1/approval-rules",
            Some(json!({"rule": rule})),
        )
        .await;
    assert_eq!(st, 201);
    let (st, v) = f
        .call(&dental, "DELETE", "/api/v1/approval-rules/sec", None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(sites_of(&v), vec![f.site.to_string()]);
    let (_, v) = f.call(&admin, "GET", "/api/v1/approval-rules", None).await;
    assert_eq!(v[0]["sites"], json!([f.branch.to_string()]), "{v}");
    let (st, v) = f
        .call(&admin, "DELETE", "/api/v1/approval-rules/sec", None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(sites_of(&v), vec![f.branch.to_string()]);
}

async fn install_options_need_protocol_8_at_creation_and_at_delivery_and_come_back_with_the_audit()
{
    let f = fixture().await;
    let tenant: outpost_proto::TenantId = "msp".into();
    let admin = f.token("msp", Role::Admin, &[]).await;
    let with_options = json!({"target": {"type": "all"}, "reboot": "always",
                              "pre_script": "stop-app", "snapshot": false});
    // A bad option value: 400, nothing stored.
    let (st, v) = f
        .call(
            &admin,
            "POST",
            "/api/v1/deployments",
            Some(json!({"target": {"type": "all"}, "reboot": "sometimes"})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("reboot"), "{v}");
    // The branch is connected at protocol 6: refused, naming it.
    let (conn6, _rx6) = f.c.downlinks.register(&tenant, &f.branch, 6);
    let (st, v) = f
        .call(
            &admin,
            "POST",
            "/api/v1/deployments",
            Some(with_options.clone()),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    let msg = v["error"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains(&format!("site {}", f.branch))
            && msg.contains("protocol 6")
            && msg.contains("8"),
        "{msg}"
    );
    let (_, v) = f.call(&admin, "GET", "/api/v1/deployments", None).await;
    assert_eq!(v, json!([]), "nothing stored");
    // Without options the same site takes it.
    let (st, v) = f
        .call(
            &admin,
            "POST",
            "/api/v1/deployments",
            Some(json!({"target": {"type": "all"}, "sites": [f.branch]})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    f.c.downlinks.unregister(&tenant, &f.branch, conn6);
    // Both offline: accepted and queued; the branch then connects with
    // protocol 6 and the order is refused for it (never sent), the main
    // site connects with 8 and gets it.
    let (st, v) = f
        .call(&admin, "POST", "/api/v1/deployments", Some(with_options))
        .await;
    assert_eq!(st, 201, "{v}");
    let dep = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["request"]["pre_script"], "stop-app", "{v}");
    let mut old = SiteDeployLink::new(&f.c, &tenant, &f.branch, &"ortho".into(), 6);
    let sent = order_ids(&old.opening(1_000).await);
    assert_eq!(sent.len(), 1, "only the order without options: {sent:?}");
    let mut new = SiteDeployLink::new(&f.c, &tenant, &f.site, &"dental".into(), 8);
    let sent = order_ids(&new.opening(1_000).await);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (_, v) = f
        .call(&admin, "GET", &format!("/api/v1/deployments/{dep}"), None)
        .await;
    let branch = v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"] == f.branch.to_string())
        .unwrap()
        .clone();
    assert_eq!(branch["delivery"], "refused", "{v}");
    assert!(
        branch["reason"].as_str().unwrap().contains("protocol 6"),
        "{branch}"
    );
    // The main site applies it and reports the options it runs with and
    // who did what (the audit trail), shown in the deployment's JSON.
    new.on_ack(
        DeployAck {
            id: sent[0].clone(),
            refused: None,
        },
        1_001,
    )
    .await;
    let view = json!({
        "summary": {"id": dep, "phase": "running", "stage": 0, "stages": 1, "devices": 1,
                    "succeeded": 0, "failed": 0, "created_at_ms": 1, "created_by": "ann@central",
                    "options": {"reboot": "always", "pre_script": {"name": "stop-app", "version": 2},
                                "post_script": null, "snapshot": false}},
        "stages": [],
        "devices": [],
        "audit": [{"at_ms": 2, "actor": "ann@central", "action": "deployment.create",
                   "target": dep, "detail": "1 patches"},
                  {"at_ms": 3, "actor": "bob", "action": "deployment.pause",
                   "target": dep, "detail": "{}"}],
    });
    assert!(
        new.on_progress(
            DeployProgress {
                deployment: dep.clone(),
                updated_at_ms: 5,
                from_central: true,
                view_json: view.to_string(),
            },
            2_000,
        )
        .await
        .is_some()
    );
    let (_, v) = f
        .call(&admin, "GET", &format!("/api/v1/deployments/{dep}"), None)
        .await;
    let main = v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"] == f.site.to_string())
        .unwrap()
        .clone();
    assert_eq!(main["options"]["pre_script"]["version"], 2, "{main}");
    assert_eq!(main["audit"][1]["actor"], "bob", "{main}");
    assert_eq!(main["audit"][1]["action"], "deployment.pause", "{main}");
    // The list stays light: options yes, audit only in `show`.
    let (_, v) = f.call(&admin, "GET", "/api/v1/deployments", None).await;
    let listed = v
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == dep.as_str())
        .unwrap();
    let s = listed["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"] == f.site.to_string())
        .unwrap();
    assert_eq!(s["options"]["reboot"], "always");
    assert!(s.get("audit").is_none(), "{s}");
}

/// Every page of `uri` (`limit=N`, following `next`): the ids in order,
/// and each page's (total, total_more, limit).
async fn pages(f: &F, token: &str, limit: usize) -> (Vec<String>, Vec<(u64, bool, u64)>) {
    let (mut ids, mut meta) = (Vec::new(), Vec::new());
    let mut after = String::new();
    loop {
        let (st, v) = f
            .call(
                token,
                "GET",
                &format!("/api/v1/deployments?limit={limit}{after}"),
                None,
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let items = v["deployments"].as_array().unwrap();
        assert!(items.len() <= limit, "{v}");
        ids.extend(items.iter().map(|d| d["id"].as_str().unwrap().to_string()));
        meta.push((
            v["total"].as_u64().unwrap(),
            v["total_more"].as_bool().unwrap(),
            v["limit"].as_u64().unwrap(),
        ));
        match v["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => break,
        }
    }
    (ids, meta)
}

/// `GET /api/v1/deployments?limit=N&after=C`: pages newest first with
/// `next`, `total` and `limit`, covering exactly what the caller sees; a
/// customer-scoped technician never gets a deployment touching another
/// customer's site (nor one made at such a site), another tenant's
/// never shows, a bad cursor is 400, and without `limit`/`after` the
/// answer is still the array of every deployment.
async fn the_paged_deployment_list_never_shows_another_tenants_or_an_out_of_scope_customers_deployments()
 {
    let f = fixture().await;
    let admin = f.token("msp", Role::Admin, &[]).await;
    let dental_tech = f.token("msp", Role::Technician, &["dental"]).await;
    let zeta = ops::add_site(
        f.c.store.as_ref(),
        &ops::AddSite {
            tenant: "zeta".into(),
            customer: "dental".into(),
            site: "z".into(),
        },
        1,
    )
    .await
    .unwrap()
    .site_id;
    let zeta_admin = f.token("zeta", Role::Admin, &[]).await;
    let create = |token: String, sites: Vec<SiteId>| {
        let f = &f;
        async move {
            let body = json!({"target": {"type": "all"}, "sites": sites});
            let (st, v) = f
                .call(&token, "POST", "/api/v1/deployments", Some(body))
                .await;
            assert_eq!(st, 201, "{v}");
            v["id"].as_str().unwrap().to_string()
        }
    };
    let d1 = create(admin.clone(), vec![f.site.clone()]).await;
    let d2 = create(admin.clone(), vec![f.branch.clone()]).await;
    let d3 = create(admin.clone(), vec![f.site.clone(), f.branch.clone()]).await;
    let d4 = create(admin.clone(), vec![f.site.clone()]).await;
    let z1 = create(zeta_admin.clone(), vec![zeta.clone()]).await;
    // Made at the ortho branch (mirrored, read-only).
    f.c.store
        .put_site_deployment(&crate::deploy::SiteDeploymentRecord {
            tenant: "msp".into(),
            site: f.branch.clone(),
            customer: "ortho".into(),
            deployment: "dep-branch".into(),
            from_central: false,
            updated_at_ms: 5,
            received_ms: 5,
            view_json: view("running", None),
        })
        .await
        .unwrap();

    let (st, v) = f.call(&admin, "GET", "/api/v1/deployments", None).await;
    assert_eq!(st, 200);
    let legacy: Vec<(String, u64)> = v
        .as_array()
        .expect("still an array without limit/after")
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["created_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    let ids = |v: &[(String, u64)]| v.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>();
    // Central's by creation (then order id), then the sites'.
    assert_eq!(legacy.len(), 5, "{legacy:?}");
    assert_eq!(legacy[4].0, "dep-branch");
    assert!(
        legacy[..4].windows(2).all(|w| w[0].1 <= w[1].1),
        "{legacy:?}"
    );
    let mut expect = ids(&legacy);
    expect.sort();
    assert_eq!(expect, {
        let mut e = vec![
            d1.clone(),
            d2.clone(),
            d3.clone(),
            d4.clone(),
            "dep-branch".into(),
        ];
        e.sort();
        e
    });
    // Newest first, then by id (the site's reports time 1: the oldest).
    let mut newest: Vec<(String, u64)> = legacy[..4].to_vec();
    newest.sort_by(|a, b| (std::cmp::Reverse(a.1), &a.0).cmp(&(std::cmp::Reverse(b.1), &b.0)));
    newest.push(legacy[4].clone());
    for limit in [1, 2, 5, 500] {
        let (got, meta) = pages(&f, &admin, limit).await;
        assert!(
            meta.iter().all(|m| *m == (5, false, limit as u64)),
            "{meta:?}"
        );
        assert_eq!(
            got,
            ids(&newest),
            "limit {limit}: every one once, newest first"
        );
    }
    let (got, meta) = pages(&f, &dental_tech, 1).await;
    let dental: Vec<String> = ids(&newest)
        .into_iter()
        .filter(|i| *i == d1 || *i == d4)
        .collect();
    assert_eq!(got, dental, "dental's sites only");
    assert!(meta.iter().all(|m| *m == (2, false, 1)), "{meta:?}");
    for id in [&d2, &d3, &"dep-branch".to_string(), &z1] {
        let (st, _) = f
            .call(
                &dental_tech,
                "GET",
                &format!("/api/v1/deployments/{id}"),
                None,
            )
            .await;
        assert_eq!(st, 404, "{id}");
    }
    let (ids, _) = pages(&f, &zeta_admin, 10).await;
    assert_eq!(ids, std::slice::from_ref(&z1), "another tenant's own only");
    let (ids, _) = pages(&f, &admin, 10).await;
    assert!(!ids.contains(&z1));
    // A cursor of nothing handed out, and limits out of range: 400.
    for q in ["after=zz", "after=1..", "limit=0", "limit=501"] {
        let (st, v) = f
            .call(&admin, "GET", &format!("/api/v1/deployments?{q}"), None)
            .await;
        assert_eq!(st, 400, "{q}: {v}");
    }
}
