//! The console's Deployments and Approvals pages at central,
//! router-level (tower `oneshot`, no socket), with the site end of the
//! stream driven directly ([`crate::deploy_link::SiteDeployLink`]): the
//! list and a deployment's page show each site's delivery and progress;
//! technicians pause from the page through the API's order path (the
//! order goes down to the site), viewers see no button and their forged
//! POSTs are refused, a customer-scoped user and another tenant get 404;
//! a deployment created at its site is read-only here; admins approve,
//! add and remove rules from the Approvals page.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use outpost_proto::SiteId;
use outpost_uplink::deploy_link::{DeployAck, DeployProgress};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::Central;
use crate::deploy_link::SiteDeployLink;
use crate::downlink::Down;
use crate::model::Role;
use crate::ops;
use crate::testing::{batch_of, central_with_site};

crate::testing::on_both_backends!(
    the_deployment_pages_show_each_sites_progress_within_scope_and_404_elsewhere,
    technicians_pause_from_the_page_through_the_order_path_and_viewers_are_refused,
    admins_approve_and_add_and_remove_rules_from_the_approvals_page_and_others_cannot,
    admins_create_with_options_from_the_form_and_bad_values_come_back_in_the_form_with_the_reason,
    technicians_roll_back_a_stage_or_a_device_and_resume_with_other_versions_from_the_page,
    the_approvals_page_shows_which_rule_decided_each_patch_of_a_device_as_its_site_sent,
);

struct F {
    c: Arc<Central>,
    site: SiteId,
    branch: SiteId,
    _dir: tempfile::TempDir,
}

async fn fixture() -> F {
    let (c, site, dir) = central_with_site(Default::default()).await;
    c.store
        .apply_batch(&"msp".into(), &site, batch_of(&site, 1), 10)
        .await
        .unwrap();
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
    async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, axum::http::HeaderMap, String) {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = crate::api::router(self.c.clone())
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

    /// A user's session cookie.
    async fn session(&self, tenant: &str, name: &str, role: Role, customers: &[&str]) -> String {
        ops::add_user(
            self.c.store.as_ref(),
            &ops::AddUser {
                tenant: tenant.into(),
                name: name.into(),
                role,
                customers: customers.iter().map(|c| (*c).into()).collect(),
                password: "correct horse battery".into(),
            },
            1,
            &self.c.passwords,
        )
        .await
        .unwrap();
        let (st, h, body) = self
            .send(
                "POST",
                "/login",
                &[("content-type", "application/x-www-form-urlencoded")],
                &format!("tenant={tenant}&username={name}&password=correct+horse+battery"),
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

    async fn page(&self, cookie: &str, uri: &str) -> (u16, String) {
        let (st, _, b) = self.send("GET", uri, &[("cookie", cookie)], "").await;
        (st, b)
    }

    /// A form POST of a session (same origin).
    async fn post(&self, cookie: &str, uri: &str, body: &str) -> u16 {
        self.send(
            "POST",
            uri,
            &[
                ("cookie", cookie),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            body,
        )
        .await
        .0
    }

    async fn api(&self, token: &str, method: &str, uri: &str, body: Option<Value>) -> (u16, Value) {
        let auth = format!("Bearer {token}");
        let mut h = vec![("authorization", auth.as_str())];
        if body.is_some() {
            h.push(("content-type", "application/json"));
        }
        let b = body.map(|b| b.to_string()).unwrap_or_default();
        let (st, _, text) = self.send(method, uri, &h, &b).await;
        (st, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn token(&self, role: Role) -> String {
        crate::testing::token(&self.c, "msp", role, &[]).await
    }

    /// A deployment created at central over both sites; the main site
    /// acknowledges it and reports `phase` (its device 2a waiting).
    async fn deployment(&self, phase: &str) -> String {
        let admin = self.token(Role::Admin).await;
        let (st, v) = self
            .api(
                &admin,
                "POST",
                "/api/v1/deployments",
                Some(json!({"target": {"type": "all"}, "patches": [{"package": "openssl", "version": "3.0.2-1"}]})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        let dep = v["id"].as_str().unwrap().to_string();
        let mut link = SiteDeployLink::new(&self.c, &"msp".into(), &self.site, &"dental".into(), 5);
        for f in link.opening(1_000).await {
            if let outpost_uplink::wire::CentralFrame::DeployOrders(v) = f {
                for o in v {
                    link.on_ack(
                        DeployAck {
                            id: o.id,
                            refused: None,
                        },
                        1_001,
                    )
                    .await;
                }
            }
        }
        self.progress(&dep, 10, phase, true).await;
        dep
    }

    async fn progress(&self, dep: &str, at: u64, phase: &str, from_central: bool) {
        let mut link = SiteDeployLink::new(&self.c, &"msp".into(), &self.site, &"dental".into(), 5);
        let view = json!({
            "summary": {"id": dep, "phase": phase, "stage": 0, "stages": 1, "devices": 1,
                        "succeeded": 0, "failed": 0, "target": "all devices", "patches": [],
                        "created_at_ms": 1, "created_by": "site-admin", "updated_at_ms": at},
            "stages": [{"figures": {"stage": 0, "devices": 1, "counted": 0, "succeeded": 0,
                        "failed": 0, "in_flight": 0, "waiting": 1}, "gate": "waiting: <window>"}],
            "devices": [{"device": "000000000000002a", "stage": 0, "state": "waiting_for_window",
                         "attempt": 0, "reason": null}],
        });
        let p = DeployProgress {
            deployment: dep.to_string(),
            updated_at_ms: at,
            from_central,
            view_json: view.to_string(),
        };
        assert!(link.on_progress(p, 2_000).await.is_some());
    }
}

fn csrf_in(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a csrf field")
        .to_string()
}

async fn the_deployment_pages_show_each_sites_progress_within_scope_and_404_elsewhere() {
    let f = fixture().await;
    let dep = f.deployment("running").await;
    let viewer = f.session("msp", "vera", Role::Viewer, &[]).await;
    let (st, list) = f.page(&viewer, "/deployments").await;
    assert_eq!(st, 200, "{list}");
    assert!(
        list.contains(&format!("data-deployment=\"{dep}\" data-phase=\"running\"")),
        "{list}"
    );
    assert!(
        list.contains(&format!("data-site=\"{}\"", f.site))
            && list.contains(&format!("data-site=\"{}\"", f.branch)),
        "both sites: {list}"
    );
    assert!(
        !list.contains("create-deployment"),
        "viewers create nothing"
    );
    let (st, page) = f.page(&viewer, &format!("/deployments/{dep}")).await;
    assert_eq!(st, 200, "{page}");
    // Each site: main reported running; branch still queued.
    assert!(
        page.contains(&format!("data-site=\"{}\" data-state=\"running\"", f.site))
            && page.contains(&format!("data-site=\"{}\" data-state=\"queued\"", f.branch)),
        "{page}"
    );
    // The device by its hostname, the gate escaped, no action for a viewer.
    assert!(
        page.contains("web-1") && page.contains("waiting_for_window"),
        "{page}"
    );
    assert!(page.contains("waiting: &lt;window&gt;"), "{page}");
    assert!(!page.contains("dep-action"), "{page}");
    assert!(page.contains("openssl=3.0.2-1"), "{page}");

    // An admin gets the create form.
    let admin = f.session("msp", "ann", Role::Admin, &[]).await;
    let (_, list) = f.page(&admin, "/deployments").await;
    assert!(list.contains("id=\"create-deployment\""), "{list}");

    // A dental user does not see an order to ortho's site too; another
    // tenant's admin gets 404.
    let dental = f
        .session("msp", "dora", Role::Technician, &["dental"])
        .await;
    let (st, list) = f.page(&dental, "/deployments").await;
    assert_eq!(st, 200);
    assert!(!list.contains(&dep), "{list}");
    let (st, _) = f.page(&dental, &format!("/deployments/{dep}")).await;
    assert_eq!(st, 404);
    let zeta = f.session("zeta", "zed", Role::Admin, &[]).await;
    let (st, _) = f.page(&zeta, &format!("/deployments/{dep}")).await;
    assert_eq!(st, 404);
    let (_, list) = f.page(&zeta, "/deployments").await;
    assert!(!list.contains(&dep) && !list.contains("web-1"), "{list}");
}

async fn technicians_pause_from_the_page_through_the_order_path_and_viewers_are_refused() {
    let f = fixture().await;
    let (_conn, rx) = f.c.downlinks.register(&"msp".into(), &f.site, 5);
    let mut rx = rx.unwrap();
    let dep = f.deployment("running").await;
    while rx.try_recv().is_ok() {}
    let uri = format!("/deployments/{dep}");

    // A viewer: no button, and its own token is refused.
    let viewer = f.session("msp", "vera", Role::Viewer, &[]).await;
    let (_, page) = f.page(&viewer, &uri).await;
    assert!(!page.contains("dep-action"));
    let token = csrf_in(&page);
    assert_eq!(
        f.post(
            &viewer,
            &format!("{uri}/pause"),
            &format!("csrf={token}&note=x")
        )
        .await,
        403
    );
    // A technician: pause and roll back, no abort.
    let tech = f.session("msp", "tess", Role::Technician, &[]).await;
    let (_, page) = f.page(&tech, &uri).await;
    assert!(
        page.contains("class=\"dep-pause\"") && page.contains("class=\"dep-rollback\""),
        "{page}"
    );
    assert!(!page.contains("class=\"dep-abort\""), "{page}");
    let token = csrf_in(&page);
    assert_eq!(
        f.post(
            &tech,
            &format!("{uri}/abort"),
            &format!("csrf={token}&note=x")
        )
        .await,
        403
    );
    // Forged (no token): refused.
    assert_eq!(f.post(&tech, &format!("{uri}/pause"), "note=x").await, 403);
    let admin = f.token(Role::Admin).await;
    let (_, v) = f
        .api(&admin, "GET", &format!("/api/v1/deployments/{dep}"), None)
        .await;
    assert_eq!(v["actions"], json!([]), "nothing sent yet: {v}");

    // The page's pause: one order through the API's path, pushed to the
    // connected site at once, shown on the page.
    assert_eq!(
        f.post(
            &tech,
            &format!("{uri}/pause"),
            &format!("csrf={token}&note=from+the+page")
        )
        .await,
        303
    );
    let (_, v) = f
        .api(&admin, "GET", &format!("/api/v1/deployments/{dep}"), None)
        .await;
    let acts = v["actions"].as_array().unwrap();
    assert_eq!(acts.len(), 1, "{v}");
    assert_eq!(acts[0]["detail"]["action"], "pause");
    assert_eq!(acts[0]["detail"]["body"]["note"], "from the page");
    assert_eq!(acts[0]["created_by"], "tess");
    assert!(matches!(rx.try_recv(), Ok(Down::DeployOrder(_))));
    let (_, page) = f.page(&tech, &uri).await;
    assert!(
        page.contains("id=\"deployment-orders\"") && page.contains("note: from the page"),
        "{page}"
    );
    // The site reports it paused: the page's state changes.
    f.progress(&dep, 20, "paused", true).await;
    let (_, page) = f.page(&tech, &uri).await;
    assert!(page.contains("data-phase=\"paused\""), "{page}");
    assert!(page.contains("class=\"dep-resume\""), "{page}");
    assert!(page.contains("paused from central by tess"), "{page}");

    // Another tenant's technician: 404, nothing sent.
    let zeta = f.session("zeta", "zed", Role::Technician, &[]).await;
    let (_, zpage) = f.page(&zeta, "/deployments").await;
    let ztoken = csrf_in(&zpage);
    assert_eq!(
        f.post(&zeta, &format!("{uri}/resume"), &format!("csrf={ztoken}"))
            .await,
        404
    );
    // A deployment created at its site is read-only here.
    f.progress("dep-local", 30, "running", false).await;
    let local = format!("/deployments/dep-local@{}", f.site);
    let (st, page) = f.page(&tech, &local).await;
    assert_eq!(st, 200, "{page}");
    assert!(
        page.contains("deployment-read-only") && !page.contains("dep-action"),
        "{page}"
    );
    assert_eq!(
        f.post(&tech, &format!("{local}/pause"), &format!("csrf={token}"))
            .await,
        400
    );
    let (_, v) = f
        .api(&admin, "GET", &format!("/api/v1/deployments/{dep}"), None)
        .await;
    assert_eq!(v["actions"].as_array().unwrap().len(), 1, "{v}");
}

async fn admins_approve_and_add_and_remove_rules_from_the_approvals_page_and_others_cannot() {
    let f = fixture().await;
    let admin_token = f.token(Role::Admin).await;
    let tech = f.session("msp", "tess", Role::Technician, &[]).await;
    let (st, page) = f.page(&tech, "/approvals").await;
    assert_eq!(st, 200, "{page}");
    assert!(
        !page.contains("verdict-form") && !page.contains("rule-form"),
        "{page}"
    );
    assert!(page.contains("decisions-note"), "{page}");
    let token = csrf_in(&page);
    assert_eq!(
        f.post(
            &tech,
            "/approvals",
            &format!("csrf={token}&patch=openssl%3D3.0.2-1&verdict=approve")
        )
        .await,
        403
    );
    let (_, v) = f.api(&admin_token, "GET", "/api/v1/approvals", None).await;
    assert_eq!(v, json!([]));

    let admin = f.session("msp", "ann", Role::Admin, &[]).await;
    let (_, page) = f.page(&admin, "/approvals").await;
    assert!(
        page.contains("id=\"verdict-form\"") && page.contains("id=\"rule-form\""),
        "{page}"
    );
    let token = csrf_in(&page);
    assert_eq!(
        f.post(
            &admin,
            "/approvals",
            &format!("csrf={token}&patch=openssl%3D3.0.2-1&verdict=approve&scope=")
        )
        .await,
        303
    );
    let (_, v) = f.api(&admin_token, "GET", "/api/v1/approvals", None).await;
    assert_eq!(v[0]["detail"]["patch"], "openssl=3.0.2-1", "{v}");
    assert_eq!(v[0]["detail"]["scope"], "tenant", "{v}");
    assert_eq!(v[0]["deliveries"].as_array().unwrap().len(), 2, "{v}");
    // A bad patch or rule is refused with the reason, nothing sent.
    assert_eq!(
        f.post(
            &admin,
            "/approvals",
            &format!("csrf={token}&patch=openssl&verdict=approve")
        )
        .await,
        400
    );
    assert_eq!(
        f.post(
            &admin,
            "/approval-rules",
            &format!("csrf={token}&id=x&min_severity=apocalyptic")
        )
        .await,
        400
    );
    assert_eq!(
        f.post(
            &admin,
            "/approval-rules",
            &format!("csrf={token}&id=crit&scope=tag%3Aweb&min_severity=high&security_only=1&delay_days=2&allow=openssl%2C+curl")
        )
        .await,
        303
    );
    let (_, v) = f
        .api(&admin_token, "GET", "/api/v1/approval-rules", None)
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["rule"]["scope"], json!({"type": "tag", "tag": "web"}));
    assert_eq!(v[0]["rule"]["rule"]["allow"], json!(["openssl", "curl"]));
    let (_, page) = f.page(&admin, "/approvals").await;
    assert!(
        page.contains("data-rule=\"crit\"")
            && page.contains("action=\"/approval-rules/crit/delete\""),
        "{page}"
    );
    assert!(page.contains("severity ≥ high"), "{page}");
    // The technician sees the rule, without a remove button; its POST is refused.
    let (_, tpage) = f.page(&tech, "/approvals").await;
    assert!(
        tpage.contains("data-rule=\"crit\"") && !tpage.contains("/delete"),
        "{tpage}"
    );
    let ttoken = csrf_in(&tpage);
    assert_eq!(
        f.post(
            &tech,
            "/approval-rules/crit/delete",
            &format!("csrf={ttoken}")
        )
        .await,
        403
    );
    assert_eq!(
        f.post(
            &admin,
            "/approval-rules/crit/delete",
            &format!("csrf={token}")
        )
        .await,
        303
    );
    let (_, v) = f
        .api(&admin_token, "GET", "/api/v1/approval-rules", None)
        .await;
    assert_eq!(v, json!([]));
    assert_eq!(
        f.post(
            &admin,
            "/approval-rules/crit/delete",
            &format!("csrf={token}")
        )
        .await,
        404
    );
}

async fn admins_create_with_options_from_the_form_and_bad_values_come_back_in_the_form_with_the_reason()
 {
    let f = fixture().await;
    let admin_token = f.token(Role::Admin).await;
    let admin = f.session("msp", "ann", Role::Admin, &[]).await;
    let (_, list) = f.page(&admin, "/deployments").await;
    assert!(
        list.contains("id=\"dep-options\"") && list.contains("name=\"stages\""),
        "{list}"
    );
    let token = csrf_in(&list);
    let form = |extra: &str| {
        format!("csrf={token}&target=customer%3Adental&patch=openssl%3D3.0.2-1{extra}")
    };
    // Bad values: 400, the list page with the form as typed and every
    // reason; nothing is sent.
    let bad = form(
        "&stages=50%2C10&min_success_pct=101&day=sat&window_start=25%3A00&window_minutes=60&reboot=sometimes",
    );
    let (st, _, page) = f
        .send(
            "POST",
            "/deployments",
            &[
                ("cookie", admin.as_str()),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            &bad,
        )
        .await;
    assert_eq!(st, 400, "{page}");
    assert!(page.contains("id=\"dep-error\""), "{page}");
    for why in [
        "Stages: &quot;50,10&quot;",
        "Gate success %: &quot;101&quot;",
        "Window start: &quot;25:00&quot;",
        "Reboot: &quot;sometimes&quot;",
    ] {
        assert!(page.contains(why), "{why}: {page}");
    }
    assert!(
        page.contains("value=\"50,10\"") && page.contains("value=\"25:00\""),
        "typed values kept: {page}"
    );
    assert!(
        page.contains("value=\"sat\" checked"),
        "the day stays checked: {page}"
    );
    let (_, v) = f
        .api(&admin_token, "GET", "/api/v1/deployments", None)
        .await;
    assert_eq!(v, json!([]), "nothing created");
    // An unknown customer: the backend's refusal, shown in the form too.
    let (st, _, page) = f
        .send(
            "POST",
            "/deployments",
            &[
                ("cookie", admin.as_str()),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            &format!("csrf={token}&target=customer%3Alaw"),
        )
        .await;
    assert_eq!(st, 400, "{page}");
    assert!(
        page.contains("id=\"dep-error\"") && page.contains("no customer law"),
        "{page}"
    );

    // Good values: created with each option as the API takes them.
    let good = form(
        "&stages=10%2C100&min_success_pct=90&min_finished=2&soak_minutes=5&auto_rollback_failed_pct=40&deadline_minutes=90&day=sat&day=sun&window_start=22%3A00&window_minutes=240&window_timezone=Europe%2FBerlin&reboot=never&pre_script=stop-app&post_script=start-app&snapshot=no",
    );
    assert_eq!(f.post(&admin, "/deployments", &good).await, 303);
    let (_, v) = f
        .api(&admin_token, "GET", "/api/v1/deployments", None)
        .await;
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    let r = &v[0]["request"];
    assert_eq!(r["stages"], json!([10, 100]), "{r}");
    assert_eq!(
        r["gate"],
        json!({"min_success_pct": 90, "min_finished": 2, "soak_ms": 300_000})
    );
    assert_eq!(r["auto_rollback_failed_pct"], 40);
    assert_eq!(r["install_deadline_ms"], 5_400_000);
    assert_eq!(
        r["window"],
        json!({"days": ["sat", "sun"], "start": "22:00", "duration_minutes": 240, "timezone": "Europe/Berlin"})
    );
    assert_eq!(
        (
            &r["reboot"],
            &r["pre_script"],
            &r["post_script"],
            &r["snapshot"]
        ),
        (
            &json!("never"),
            &json!("stop-app"),
            &json!("start-app"),
            &json!(false)
        )
    );
    // The customer target: only dental's site.
    assert_eq!(v[0]["sites"].as_array().map(Vec::len), Some(1), "{v}");
    // A technician cannot create, whatever the options.
    let tech = f.session("msp", "tess", Role::Technician, &[]).await;
    let (_, tpage) = f.page(&tech, "/deployments").await;
    assert!(!tpage.contains("dep-options"), "{tpage}");
    let ttoken = csrf_in_or_none(&tpage);
    assert_eq!(
        f.post(
            &tech,
            "/deployments",
            &format!("csrf={ttoken}&target=all&stages=10%2C100")
        )
        .await,
        403
    );
}

/// The page's CSRF token, or none where the page has no form.
fn csrf_in_or_none(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_string()
}

async fn technicians_roll_back_a_stage_or_a_device_and_resume_with_other_versions_from_the_page() {
    let f = fixture().await;
    let dep = f.deployment("paused").await;
    let uri = format!("/deployments/{dep}");
    let admin_token = f.token(Role::Admin).await;
    let tech = f.session("msp", "tess", Role::Technician, &[]).await;
    let (_, page) = f.page(&tech, &uri).await;
    // The rollback form offers the stage reached; each device that ran
    // has its own button (2a waits: none).
    assert!(
        page.contains("value=\"stage:1\"") && page.contains("id=\"resume-patches\""),
        "{page}"
    );
    assert!(!page.contains("class=\"dev-rollback\""), "{page}");
    let token = csrf_in(&page);
    assert_eq!(
        f.post(
            &tech,
            &format!("{uri}/rollback"),
            &format!("csrf={token}&scope=stage%3A1")
        )
        .await,
        303
    );
    assert_eq!(
        f.post(
            &tech,
            &format!("{uri}/rollback"),
            &format!("csrf={token}&scope=device%3A000000000000002a")
        )
        .await,
        303
    );
    assert_eq!(
        f.post(
            &tech,
            &format!("{uri}/resume"),
            &format!("csrf={token}&force=1&patches=openssl%3D3.0.2-2")
        )
        .await,
        303
    );
    // Bad scope or patch: 400, nothing sent.
    for (action, body) in [
        ("rollback", "scope=stage%3A0"),
        ("rollback", "scope=site%3Ax"),
        ("resume", "patches=openssl"),
    ] {
        assert_eq!(
            f.post(
                &tech,
                &format!("{uri}/{action}"),
                &format!("csrf={token}&{body}")
            )
            .await,
            400,
            "{action} {body}"
        );
    }
    let (_, v) = f
        .api(
            &admin_token,
            "GET",
            &format!("/api/v1/deployments/{dep}"),
            None,
        )
        .await;
    let bodies: Vec<Value> = v["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["detail"].clone())
        .collect();
    assert_eq!(
        bodies,
        vec![
            json!({"action": "rollback", "body": {"scope": "stage", "stage": 0}}),
            json!({"action": "rollback", "body": {"scope": "device", "device": "000000000000002a"}}),
            json!({"action": "resume", "body": {"retry_failed": false, "force": true, "patches": [{"package": "openssl", "version": "3.0.2-2"}]}}),
        ],
        "{v}"
    );
    // A viewer: no rollback or resume form, and a forged POST is refused.
    let viewer = f.session("msp", "vera", Role::Viewer, &[]).await;
    let (_, vpage) = f.page(&viewer, &uri).await;
    assert!(
        !vpage.contains("rollback-scope") && !vpage.contains("resume-patches"),
        "{vpage}"
    );
    let vtoken = csrf_in_or_none(&vpage);
    assert_eq!(
        f.post(
            &viewer,
            &format!("{uri}/rollback"),
            &format!("csrf={vtoken}&scope=deployment")
        )
        .await,
        403
    );
}

/// Which rule decided, per device, at central (protocol 9): the site's
/// decisions stored through the stream's handler show on the Approvals
/// page for `?device=SITE/DEVICE` (rule, outcome, explanation); an older
/// report never replaces them; a device central holds none of says so;
/// another customer's site is 404.
async fn the_approvals_page_shows_which_rule_decided_each_patch_of_a_device_as_its_site_sent() {
    use outpost_uplink::deploy_link::{DecisionUp, DeviceDecisions};
    let f = fixture().await;
    let decisions = |at: u64, outcome: &str| DeviceDecisions {
        device: "000000000000002a".into(),
        computed_ms: at,
        assessed: true,
        rows: vec![DecisionUp {
            patch: "openssl=3.0.2-1".into(),
            outcome: outcome.into(),
            rule: Some("r-web (tag:web)".into()),
            explanation: format!("{outcome} by the web rule"),
        }],
        unnamed: vec![],
        truncated: 0,
    };
    let mut link = SiteDeployLink::new(&f.c, &"msp".into(), &f.site, &"dental".into(), 9);
    link.on_decisions(vec![decisions(20, "declined")], 3_000)
        .await;
    link.on_decisions(vec![decisions(10, "approved")], 3_001)
        .await;
    let held =
        f.c.store
            .decisions(&"msp".into(), &f.site, "000000000000002a")
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        held.decisions.computed_ms, 20,
        "the older report is ignored"
    );
    assert_eq!(held.customer.as_str(), "dental");

    let viewer = f.session("msp", "vera", Role::Viewer, &[]).await;
    let uri = format!("/approvals?device={}%2F000000000000002a", f.site);
    let (st, page) = f.page(&viewer, &uri).await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("id=\"device-decisions\""), "{page}");
    assert!(page.contains("r-web (tag:web)"), "{page}");
    assert!(page.contains("data-outcome=\"declined\""), "{page}");
    assert!(page.contains("declined by the web rule"), "{page}");
    assert!(!page.contains("id=\"decisions-note\""), "{page}");

    // A device central holds no decisions of: the page says so.
    f.c.store
        .apply_batch(
            &"msp".into(),
            &f.site,
            {
                let mut b = batch_of(&f.site, 2);
                b.devices[0].device = outpost_proto::DeviceId(0x2b);
                b
            },
            20,
        )
        .await
        .unwrap();
    let (st, page) = f
        .page(
            &viewer,
            &format!("/approvals?device={}%2F000000000000002b", f.site),
        )
        .await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("no decisions of this device yet"), "{page}");

    // Another customer's user: 404.
    let ortho = f.session("msp", "olga", Role::Viewer, &["ortho"]).await;
    let (st, _) = f.page(&ortho, &uri).await;
    assert_eq!(st, 404);
}
