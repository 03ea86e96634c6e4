//! Router-level tests of the console against an in-memory backend (tower
//! `oneshot`, no socket): security headers, CSRF and same-origin refusals,
//! role checks, escaping, scoped live events.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, header};
use tower::ServiceExt;

use crate::backend::*;
use crate::live::{AlertChange, LiveEvent};
use crate::{Console, ConsoleMetrics, CsrfKey, LiveConfig, LiveHub};

/// Two viewers: `tech` (may ack) and `view` (may not), by cookie `s=`.
struct Fake {
    hub: LiveHub,
    acks: Mutex<Vec<(String, u64, String, String)>>,
    /// The one deployment (deployments on when set).
    deployment: Mutex<Option<crate::deployments::DeploymentDetail>>,
    /// Deployment actions the backend was asked for.
    actions: Mutex<Vec<(String, crate::deployments::DeploymentAction)>>,
    /// Viewers whose session ended (signed out): no longer viewers.
    ended: Mutex<Vec<String>>,
}

fn viewer_named(name: &str) -> Option<Viewer> {
    let (role, ack, customers) = match name {
        "tech" => ("technician", true, vec![]),
        "view" => ("viewer", false, vec![]),
        "mgr" => ("technician", true, vec![]),
        "vet" => ("viewer", false, vec!["vet".to_string()]),
        _ => return None,
    };
    Some(Viewer {
        name: name.into(),
        tenant: "msp".into(),
        customers,
        role: role.into(),
        can: Capabilities {
            ack_alerts: ack,
            manage_deployments: name == "mgr",
            ..Default::default()
        },
        csrf_subject: format!("session-of-{name}").into_bytes(),
    })
}

fn alert() -> AlertView {
    AlertView {
        site_id: "s-1".into(),
        site_name: "Harbour".into(),
        customer: "dental".into(),
        alert_id: 7,
        device: Some("2a".into()),
        hostname: Some("web-<1>".into()),
        rule: "cpu_high".into(),
        severity: "critical".into(),
        state: "firing".into(),
        at_ms: 1_700_000_000_000,
        first_ms: 1_700_000_000_000,
        message: "cpu 97 > 90".into(),
        ..Default::default()
    }
}

fn ready<'a, T: Send + 'a>(v: Result<T, ConsoleError>) -> ConsoleFuture<'a, T> {
    Box::pin(async move { v })
}

impl ConsoleBackend for Fake {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            product: "test".into(),
            scope: ScopeKind::Tenant,
            login_tenant: true,
            features: Features {
                deployments: self.deployment.lock().unwrap().is_some(),
                ..Features::default()
            },
        }
    }
    fn live(&self) -> &LiveHub {
        &self.hub
    }
    fn viewer<'a>(&'a self, h: &'a HeaderMap) -> ConsoleFuture<'a, Option<Viewer>> {
        let name = h
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("s="))
            .unwrap_or("");
        if self.ended.lock().unwrap().iter().any(|n| n == name) {
            return ready(Ok(None));
        }
        ready(Ok(viewer_named(name)))
    }
    fn login<'a>(
        &'a self,
        f: LoginForm,
        _peer: Option<IpAddr>,
        _h: &'a HeaderMap,
    ) -> ConsoleFuture<'a, LoginOutcome> {
        ready(Ok(match f.password.as_str() {
            "right" => LoginOutcome::Success {
                set_cookie: HeaderValue::from_static("s=tech; Path=/; HttpOnly"),
            },
            "slow" => LoginOutcome::Throttled {
                retry_after_secs: 42,
            },
            _ => LoginOutcome::Refused,
        }))
    }
    fn logout<'a>(&'a self, _h: &'a HeaderMap) -> ConsoleFuture<'a, Option<HeaderValue>> {
        ready(Ok(Some(HeaderValue::from_static("s=; Max-Age=0"))))
    }
    fn dashboard<'a>(&'a self, _v: &'a Viewer) -> ConsoleFuture<'a, Dashboard> {
        ready(Ok(Dashboard::default()))
    }
    fn site<'a>(&'a self, _v: &'a Viewer, site: &'a str) -> ConsoleFuture<'a, SiteDetail> {
        ready(Err(ConsoleError::NotFound(format!("no site {site}"))))
    }
    fn devices<'a>(&'a self, _v: &'a Viewer, _q: &'a DeviceQuery) -> ConsoleFuture<'a, DeviceList> {
        ready(Ok(DeviceList::default()))
    }
    fn device<'a>(
        &'a self,
        _v: &'a Viewer,
        _s: &'a str,
        d: &'a str,
    ) -> ConsoleFuture<'a, DeviceDetail> {
        ready(Err(ConsoleError::NotFound(format!("no device {d}"))))
    }
    fn series<'a>(
        &'a self,
        _v: &'a Viewer,
        _s: &'a str,
        _d: &'a str,
        _k: &'a [MetricKey],
        _r: Range,
        _now: u64,
    ) -> ConsoleFuture<'a, Vec<MetricSeries>> {
        ready(Ok(vec![]))
    }
    fn alerts<'a>(&'a self, _v: &'a Viewer, _q: &'a AlertQuery) -> ConsoleFuture<'a, AlertList> {
        ready(Ok(AlertList {
            rows: vec![alert()],
            total: 1,
            facets: Facets::default(),
        }))
    }
    fn alert<'a>(
        &'a self,
        _v: &'a Viewer,
        _s: &'a str,
        _id: u64,
    ) -> ConsoleFuture<'a, AlertDetail> {
        ready(Ok(AlertDetail {
            alert: alert(),
            history: vec![],
        }))
    }
    fn ack_alert<'a>(
        &'a self,
        v: &'a Viewer,
        site: &'a str,
        id: u64,
        comment: &'a str,
    ) -> ConsoleFuture<'a, ()> {
        if !v.can.ack_alerts {
            return ready(Err(ConsoleError::Forbidden("no".into())));
        }
        self.acks
            .lock()
            .unwrap()
            .push((site.to_string(), id, v.name.clone(), comment.to_string()));
        ready(Ok(()))
    }
    fn deployment<'a>(
        &'a self,
        _v: &'a Viewer,
        id: &'a str,
    ) -> ConsoleFuture<'a, crate::deployments::DeploymentDetail> {
        let d = self.deployment.lock().unwrap().clone();
        ready(
            d.filter(|d| d.row.id == id)
                .ok_or_else(|| ConsoleError::NotFound(format!("no deployment {id}"))),
        )
    }
    fn deployment_action<'a>(
        &'a self,
        _v: &'a Viewer,
        id: &'a str,
        action: &'a crate::deployments::DeploymentAction,
    ) -> ConsoleFuture<'a, ()> {
        self.actions
            .lock()
            .unwrap()
            .push((id.to_string(), action.clone()));
        ready(Ok(()))
    }
}

fn console() -> (Arc<Console>, Arc<Fake>) {
    let fake = Arc::new(Fake {
        hub: LiveHub::new(LiveConfig::default()),
        acks: Mutex::new(vec![]),
        deployment: Mutex::new(None),
        actions: Mutex::new(vec![]),
        ended: Mutex::new(vec![]),
    });
    let c = Arc::new(Console {
        backend: fake.clone(),
        csrf: CsrfKey::from_bytes(b"test key"),
        metrics: ConsoleMetrics::default(),
    });
    (c, fake)
}

async fn send(
    c: &Arc<Console>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = crate::router::<()>(c.clone())
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, h, String::from_utf8_lossy(&bytes).into_owned())
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

#[tokio::test]
async fn every_page_carries_the_csp_and_pages_without_a_session_go_to_sign_in() {
    let (c, _) = console();
    let (st, h, _) = send(&c, "GET", "/", &[], "").await;
    assert_eq!(st, 303);
    assert_eq!(h[header::LOCATION], "/login");
    assert_eq!(h[header::CONTENT_SECURITY_POLICY], crate::security::CSP);
    let (st, h, body) = send(&c, "GET", "/alerts", &[("cookie", "s=view")], "").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h[header::REFERRER_POLICY], "same-origin");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    assert!(body.contains("web-&lt;1&gt;"), "escaped: {body}");
    let (st, h, js) = send(&c, "GET", "/console/console.js", &[], "").await;
    assert_eq!(st, 200);
    assert!(
        h[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.contains("EventSource"));
    let (_, h, _) = send(&c, "GET", "/console/console.css", &[], "").await;
    assert!(
        h[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
}

#[tokio::test]
async fn a_viewer_sees_no_ack_button_and_its_forged_post_is_refused() {
    let (c, fake) = console();
    let (_, _, page) = send(&c, "GET", "/alerts", &[("cookie", "s=view")], "").await;
    assert!(
        !page.contains("ack-button") && !page.contains("/ack\""),
        "{page}"
    );
    let (_, _, page) = send(
        &c,
        "GET",
        "/sites/s-1/alerts/7",
        &[("cookie", "s=view")],
        "",
    )
    .await;
    assert!(!page.contains("ack-comment"), "{page}");
    // Even with its own valid token, a viewer's POST is refused.
    let token = c.csrf.token(b"session-of-view");
    let (st, _, body) = send(
        &c,
        "POST",
        "/sites/s-1/alerts/7/ack",
        &[("cookie", "s=view"), FORM],
        &format!("csrf={token}&comment=x"),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    assert!(fake.acks.lock().unwrap().is_empty());
    // The technician sees the buttons.
    let (_, _, page) = send(&c, "GET", "/alerts", &[("cookie", "s=tech")], "").await;
    assert!(page.contains("ack-button"), "{page}");
}

#[tokio::test]
async fn an_ack_needs_the_sessions_csrf_token_and_the_same_origin() {
    let (c, fake) = console();
    let good = c.csrf.token(b"session-of-tech");
    let other = c.csrf.token(b"session-of-view");
    let post = |headers: Vec<(&'static str, String)>, body: String| {
        let c = c.clone();
        async move {
            let mut h: Vec<(&str, &str)> = vec![("cookie", "s=tech"), FORM];
            h.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            send(&c, "POST", "/sites/s-1/alerts/7/ack", &h, &body).await
        }
    };
    for body in [
        "comment=x".to_string(),
        "csrf=&comment=x".to_string(),
        format!("csrf={other}&comment=x"),
        "csrf=00ff&comment=x".to_string(),
    ] {
        let (st, _, page) = post(vec![], body.clone()).await;
        assert_eq!(st, 403, "{body}: {page}");
    }
    let (st, _, _) = post(
        vec![("sec-fetch-site", "cross-site".into())],
        format!("csrf={good}&comment=x"),
    )
    .await;
    assert_eq!(st, 403, "cross-site");
    let (st, _, _) = post(
        vec![
            ("origin", "http://evil.example".into()),
            ("host", "console.example".into()),
        ],
        format!("csrf={good}&comment=x"),
    )
    .await;
    assert_eq!(st, 403, "another origin");
    assert!(fake.acks.lock().unwrap().is_empty(), "nothing acknowledged");
    let (st, h, _) = post(
        vec![
            ("origin", "http://console.example".into()),
            ("host", "console.example".into()),
            ("sec-fetch-site", "same-origin".into()),
        ],
        format!("csrf={good}&comment=disk+replaced"),
    )
    .await;
    assert_eq!(st, 303);
    assert_eq!(h[header::LOCATION], "/sites/s-1/alerts/7");
    assert_eq!(
        fake.acks.lock().unwrap().clone(),
        vec![(
            "s-1".to_string(),
            7,
            "tech".to_string(),
            "disk replaced".to_string()
        )]
    );
    let refused = |reason: &str| {
        c.metrics
            .refused
            .get_or_create(&crate::ReasonLabel {
                reason: reason.into(),
            })
            .get()
    };
    assert_eq!(refused("csrf_token"), 4);
    assert_eq!(refused("cross_site"), 1);
    assert_eq!(refused("origin_mismatch"), 1);
}

#[tokio::test]
async fn sign_in_sets_the_backends_cookie_and_says_why_it_refuses() {
    let (c, _) = console();
    let (st, _, page) = send(&c, "GET", "/login", &[], "").await;
    assert_eq!(st, 200);
    assert!(page.contains("id=\"tenant\"") && page.contains("id=\"signin\""));
    let (st, h, _) = send(
        &c,
        "POST",
        "/login",
        &[FORM],
        "tenant=msp&username=a&password=right",
    )
    .await;
    assert_eq!(st, 303);
    assert!(
        h[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .starts_with("s=tech")
    );
    let (st, _, page) = send(
        &c,
        "POST",
        "/login",
        &[FORM],
        "tenant=msp&username=a&password=no",
    )
    .await;
    assert_eq!(st, 401);
    assert!(page.contains("Wrong tenant, user name or password."));
    let (st, h, page) = send(
        &c,
        "POST",
        "/login",
        &[FORM],
        "tenant=msp&username=a&password=slow",
    )
    .await;
    assert_eq!(st, 429);
    assert_eq!(h[header::RETRY_AFTER], "42");
    assert!(page.contains("id=\"throttled\""));
    let (st, _, _) = send(
        &c,
        "POST",
        "/login",
        &[FORM, ("sec-fetch-site", "cross-site")],
        "tenant=msp&username=a&password=right",
    )
    .await;
    assert_eq!(st, 403, "login CSRF");
    // Sign-out is a form with the token too.
    let (st, _, _) = send(
        &c,
        "POST",
        "/logout",
        &[("cookie", "s=tech"), FORM],
        "csrf=bad",
    )
    .await;
    assert_eq!(st, 403);
    let t = c.csrf.token(b"session-of-tech");
    let (st, h, _) = send(
        &c,
        "POST",
        "/logout",
        &[("cookie", "s=tech"), FORM],
        &format!("csrf={t}"),
    )
    .await;
    assert_eq!(st, 303);
    assert!(
        h[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

/// The stream of a viewer limited to customer `vet` never carries an
/// event of `dental` (the filter runs before sending).
#[tokio::test]
async fn the_live_stream_of_a_scoped_viewer_carries_only_its_customers_events() {
    let (c, fake) = console();
    let (st, _, _) = send(&c, "GET", "/console/live", &[], "").await;
    assert_eq!(st, 401);
    let req = Request::get("/console/live")
        .header("cookie", "s=vet")
        .body(Body::empty())
        .unwrap();
    let resp = crate::router::<()>(c.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let change = |customer: &str, id: u64| AlertChange {
        site_id: "s-1".into(),
        site_name: format!("site of {customer}"),
        customer: customer.into(),
        alert_id: id,
        device: None,
        hostname: None,
        rule: "r".into(),
        severity: "critical".into(),
        old_state: None,
        state: "firing".into(),
        at_ms: 1,
        message: String::new(),
        acked_by: None,
    };
    fake.hub
        .publish(LiveEvent::alert("msp", &change("dental", 1)));
    fake.hub
        .publish(LiveEvent::alert("other", &change("vet", 2)));
    fake.hub.publish(LiveEvent::alert("msp", &change("vet", 3)));
    // Close the hub's sender side by dropping every reference: the
    // stream ends after what it was sent.
    let body = resp.into_body();
    drop(c);
    drop(fake);
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("\"alert_id\":3"), "{text}");
    assert!(
        !text.contains("dental") && !text.contains("\"alert_id\":2"),
        "{text}"
    );
}

/// An open stream whose session ends (here: signed out) ends at its next
/// check with a `reload` event, and an in-scope event published after
/// that is not delivered. Explicit clock: tokio's paused time, advanced by
/// one keep-alive interval.
#[tokio::test(start_paused = true)]
async fn a_live_stream_ends_with_its_session_and_delivers_nothing_after() {
    let (c, fake) = console();
    let req = Request::get("/console/live")
        .header("cookie", "s=tech")
        .body(Body::empty())
        .unwrap();
    let resp = crate::router::<()>(c.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(fake.hub.subscribers(), 1);
    fake.ended.lock().unwrap().push("tech".into());
    tokio::time::advance(fake.hub.config.keep_alive).await;
    fake.hub.publish(LiveEvent::alert(
        "msp",
        &AlertChange {
            site_id: "s-1".into(),
            site_name: "Harbour".into(),
            customer: "dental".into(),
            alert_id: 5,
            device: None,
            hostname: None,
            rule: "r".into(),
            severity: "critical".into(),
            old_state: None,
            state: "firing".into(),
            at_ms: 1,
            message: String::new(),
            acked_by: None,
        },
    ));
    // The stream ends by itself (the hub and the console are still up).
    let bytes = tokio::time::timeout(
        std::time::Duration::from_secs(3600),
        axum::body::to_bytes(resp.into_body(), 1 << 20),
    )
    .await
    .expect("the stream ends with its session")
    .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("event: reload\ndata: {\"reason\":\"credential\"}"),
        "{text}"
    );
    assert!(!text.contains("alert_id"), "{text}");
    assert_eq!(fake.hub.metrics.sent.get(), 0);
    assert_eq!(fake.hub.metrics.credential_ended.get(), 1);
    assert_eq!(fake.hub.subscribers(), 0);
    // Signed out, the stream does not open again.
    let (st, _, _) = send(&c, "GET", "/console/live", &[("cookie", "s=tech")], "").await;
    assert_eq!(st, 401);
}

/// Streams beyond the hub's cap are refused with 503 and `Retry-After`,
/// and counted; the page still works without them.
#[tokio::test]
async fn a_stream_beyond_the_cap_is_a_503_and_counted() {
    let fake = Arc::new(Fake {
        hub: LiveHub::new(LiveConfig {
            max_subscribers: 1,
            ..Default::default()
        }),
        acks: Mutex::new(vec![]),
        deployment: Mutex::new(None),
        actions: Mutex::new(vec![]),
        ended: Mutex::new(vec![]),
    });
    let c = Arc::new(Console {
        backend: fake.clone(),
        csrf: CsrfKey::from_bytes(b"k"),
        metrics: ConsoleMetrics::default(),
    });
    let open = |c: Arc<Console>| async move {
        let req = Request::get("/console/live")
            .header("cookie", "s=tech")
            .body(Body::empty())
            .unwrap();
        crate::router::<()>(c).oneshot(req).await.unwrap()
    };
    let first = open(c.clone()).await;
    assert_eq!(first.status(), 200);
    let second = open(c.clone()).await;
    assert_eq!(second.status(), 503);
    assert_eq!(second.headers()[header::RETRY_AFTER], "30");
    assert_eq!(fake.hub.metrics.refused.get(), 1);
    drop(first);
    assert_eq!(open(c.clone()).await.status(), 200, "a slot freed");
    let (st, _, _) = send(&c, "GET", "/alerts", &[("cookie", "s=tech")], "").await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn a_backend_without_deployments_says_where_they_will_come_from_and_shows_nothing_made_up() {
    let (c, _) = console();
    for path in ["/deployments", "/deployments/dep-1", "/approvals"] {
        let (st, _, body) = send(&c, "GET", path, &[("cookie", "s=tech")], "").await;
        assert_eq!(st, 200, "{path}: {body}");
        assert!(
            body.contains("deployments-later") && body.contains("Each site runs its own"),
            "{path}: {body}"
        );
        assert!(!body.contains("id=\"deployments\""), "{path}: {body}");
    }
}

/// Rolling back a finished deployment asks first: the POST without
/// `confirm` answers the confirmation page (nothing sent to the backend),
/// the confirmed POST rolls back; an open deployment's rollback goes
/// through at once, as before.
#[tokio::test]
async fn rolling_back_a_completed_deployment_is_confirmed_first_then_sent() {
    use crate::deployments::{
        DeploymentAction, DeploymentDetail, DeploymentDevice, DeploymentRow, RollbackTarget,
    };
    let (c, fake) = console();
    let detail = |phase: &str| DeploymentDetail {
        row: DeploymentRow {
            id: "dep-1".into(),
            phase: phase.into(),
            devices: 1,
            succeeded: 1,
            ..Default::default()
        },
        devices: vec![DeploymentDevice {
            site_id: "s-1".into(),
            device: "000000000000002a".into(),
            hostname: "web-1".into(),
            state: "succeeded".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    *fake.deployment.lock().unwrap() = Some(detail("completed"));
    let (st, _, page) = send(&c, "GET", "/deployments/dep-1", &[("cookie", "s=mgr")], "").await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("class=\"dep-rollback\""), "{page}");
    let token = c.csrf.token(b"session-of-mgr");
    let (st, _, page) = send(
        &c,
        "POST",
        "/deployments/dep-1/rollback",
        &[("cookie", "s=mgr"), FORM],
        &format!("csrf={token}&scope=device%3A000000000000002a"),
    )
    .await;
    assert_eq!(st, 200, "{page}");
    assert!(
        page.contains("id=\"confirm-rollback\"") && page.contains("device web-1"),
        "{page}"
    );
    assert!(fake.actions.lock().unwrap().is_empty(), "nothing sent yet");
    let (st, h, _) = send(
        &c,
        "POST",
        "/deployments/dep-1/rollback",
        &[("cookie", "s=mgr"), FORM],
        &format!("csrf={token}&scope=device%3A000000000000002a&confirm=1"),
    )
    .await;
    assert_eq!(st, 303);
    assert_eq!(h[header::LOCATION], "/deployments/dep-1");
    assert_eq!(
        fake.actions.lock().unwrap().clone(),
        vec![(
            "dep-1".to_string(),
            DeploymentAction::Rollback {
                scope: RollbackTarget::Device("000000000000002a".into())
            }
        )]
    );
    // A paused deployment: at once, no confirmation.
    *fake.deployment.lock().unwrap() = Some(detail("paused"));
    let (st, _, _) = send(
        &c,
        "POST",
        "/deployments/dep-1/rollback",
        &[("cookie", "s=mgr"), FORM],
        &format!("csrf={token}&scope=deployment"),
    )
    .await;
    assert_eq!(st, 303);
    assert_eq!(fake.actions.lock().unwrap().len(), 2);
    // A viewer's confirmed POST is refused.
    let view = c.csrf.token(b"session-of-view");
    let (st, _, _) = send(
        &c,
        "POST",
        "/deployments/dep-1/rollback",
        &[("cookie", "s=view"), FORM],
        &format!("csrf={view}&scope=deployment&confirm=1"),
    )
    .await;
    assert_eq!(st, 403);
    assert_eq!(fake.actions.lock().unwrap().len(), 2);
}
