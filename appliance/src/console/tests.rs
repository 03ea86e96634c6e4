//! The site console over a real store, engine and admin router (no
//! socket): served beside the API, sign-in (local users and the admin
//! token), roles, acknowledgements through the engine, live events from
//! the hooks, charts from stored samples.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use outpost_console::backend::DeviceSort;
use outpost_console::live::{Delivery, Scope};
use outpost_proto::messages::{MetricsSample, Record, RecordBody};
use outpost_storage::StoreOptions;
use outpost_storage::ingest::{IncomingRecords, IngestWriter};
use outpost_storage::model::{DeviceRecord, DeviceStatus};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::*;
use crate::alerts::model::{Comparison, Condition, Rule, Scope as RuleScope, Severity};
use crate::api::{ApiState, admin_router};
use crate::metrics::Metrics;
use crate::users::auth::AuthOptions;

const TOKEN: &str = "the-admin-token-0123456789";
const DEV: DeviceId = DeviceId(0x2a);

struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    site: Arc<Site>,
    router: Router,
    alerts: EngineHandle,
    auth: Arc<Auth>,
    shutdown: CancellationToken,
    commands: crate::commands::service::CommandService,
    /// The missing patches the deployment pages see (set by the test).
    fake: Arc<crate::deploy::approvals::tests::FakePatches>,
    /// The console's patch service ([`rig_with_patches`]).
    patches: Option<crate::patches::PatchService>,
    /// The console's file transfers.
    files: crate::files::service::FileService,
    /// What the engine hands the notification dispatcher (kept open).
    _sent: tokio::sync::mpsc::UnboundedReceiver<crate::alerts::model::Notification>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.files.stop();
        self.shutdown.cancel();
    }
}

fn device(n: u64, host: &str) -> DeviceRecord {
    DeviceRecord {
        id: DeviceId(n),
        tenant: "msp".into(),
        customer: "dental".into(),
        hostname: host.into(),
        os: "Debian 12".into(),
        kernel: "6.1".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        enrolled_at_ms: 1_000,
        cert_serial: String::new(),
        revoked_at_ms: None,
    }
}

fn cpu_rule() -> Rule {
    Rule {
        id: "cpu".into(),
        name: "cpu high".into(),
        condition: Condition::Threshold {
            metric: "cpu".into(),
            label: None,
            comparison: Comparison::Gt,
            threshold: 90.0,
            for_: Duration::ZERO,
            keep_firing_for: Duration::ZERO,
            stale_after: None,
        },
        severity: Severity::Critical,
        scope: RuleScope::All,
        enabled: true,
        channels: vec![],
        escalation_policy: None,
        renotify_interval: Duration::ZERO,
        builtin: false,
    }
}

/// An appliance's console over `records` registered devices, with an
/// engine evaluating `cpu > 90` at once.
async fn rig() -> Rig {
    rig_with_patches(false).await
}

/// [`rig`], with a patch service over the same store when asked.
async fn rig_with_patches(with_patches: bool) -> Rig {
    rig_with(
        with_patches,
        Freshness {
            state: Duration::ZERO,
            ips: Duration::ZERO,
        },
    )
    .await
}

/// [`rig_with_patches`], its index merged again only when `freshness`
/// says (the appliance's is 2 s).
async fn rig_with(with_patches: bool, freshness: Freshness) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::db::open(&dir.path().join("db"), &StoreOptions::default()).unwrap();
    registry::register(&store, &device(DEV.0, "web-1")).unwrap();
    alert_store::put_config(&store, alert_store::ConfigKind::Rule, "cpu", &cpu_rule()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let uplink = Uplink::new(
        store.clone(),
        dir.path(),
        Default::default(),
        metrics.uplink.clone(),
        shutdown.clone(),
        tracker.clone(),
    )
    .unwrap();
    let mut hub = LiveHub::new(Default::default());
    hub.metrics = metrics.console_live.clone();
    let site = Site::load(
        store.clone(),
        uplink.clone(),
        "harbour".into(),
        hub,
        freshness,
    )
    .unwrap();
    let (notify, sent) = crate::alerts::notify::NotifyHandle::for_tests();
    let mut engine = crate::alerts::engine::Engine::load(
        store.clone(),
        metrics.clone(),
        notify.clone(),
        outpost_storage::now_ms(),
    )
    .unwrap();
    let s = site.clone();
    engine.set_observer(Arc::new(move |a, before| s.on_alert(a, before)));
    let alerts = crate::alerts::engine::spawn(engine, 16, shutdown.clone(), &tracker)
        .expect("starting the alert engine");
    let (writer, _thread) = crate::ingest::writer::spawn(
        store.clone(),
        crate::ingest::writer::WriterOptions::for_tests(),
        metrics.clone(),
        crate::ingest::writer::Sinks::none(),
    )
    .unwrap();
    let auth = Arc::new(Auth::new(
        store.clone(),
        metrics.clone(),
        TOKEN.into(),
        AuthOptions::default(),
    ));
    let sessions = Arc::new(LiveSessions::default());
    let (commands, _commands_thread) = crate::commands::service::CommandService::start(
        store.clone(),
        metrics.clone(),
        crate::commands::service::CommandOptions::default(),
    )
    .unwrap();
    let patches = with_patches.then(|| {
        crate::patches::PatchService::open(
            store.clone(),
            dir.path(),
            metrics.clone(),
            Default::default(),
        )
        .unwrap()
    });
    let (files, _files_thread) = crate::files::service::FileService::start(
        store.clone(),
        metrics.clone(),
        &dir.path().join("files"),
        Default::default(),
        commands.clone(),
    )
    .unwrap();
    let fake = Arc::new(crate::deploy::approvals::tests::FakePatches::default());
    let patch_view: Arc<dyn crate::deploy::approvals::MissingPatches> = fake.clone();
    let orchestrator = Arc::new(crate::deploy::orchestrator::Orchestrator::new(
        store.clone(),
        Arc::new(crate::deploy::NoDeviceLink),
        Arc::new(crate::deploy::orchestrator::SiteEnv {
            store: store.clone(),
            patches: patch_view.clone(),
            alerts: None,
            cache: Default::default(),
        }),
        metrics.clone(),
        crate::deploy::orchestrator::InstallOptions::default(),
    ));
    let console = Arc::new(outpost_console::Console {
        backend: Arc::new(SiteConsole {
            site: site.clone(),
            auth: auth.clone(),
            alerts: alerts.clone(),
            sessions: sessions.clone(),
            commands: Some(commands.clone()),
            patches: patches.clone(),
            deployments: Some(crate::deploy::api::DeployApi {
                store: store.clone(),
                patches: patch_view,
                orchestrator,
            }),
            files: Some(files.clone()),
        }),
        csrf: outpost_console::CsrfKey::from_bytes(b"test key"),
        metrics: metrics.console.clone(),
    });
    let state = Arc::new(ApiState {
        store: store.clone(),
        commands: commands.clone(),
        metrics,
        auth: auth.clone(),
        writer,
        live: sessions,
        alerts: alerts.clone(),
        notify,
        started: std::time::Instant::now(),
        uplink,
        on_tags: {
            let site = site.clone();
            Some(Arc::new(move |d, tags: &[String]| site.on_tags(d, tags)))
        },
    });
    // The site's patch API beside the console (the pages' figures are
    // compared with it).
    let patch_api = patches
        .as_ref()
        .map(|p| crate::patches::api::router(p.clone()));
    let router = admin_router(state, patch_api, Some(console));
    Rig {
        _dir: dir,
        store,
        site,
        router,
        alerts,
        auth,
        shutdown,
        commands,
        fake,
        patches,
        files,
        _sent: sent,
    }
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Rig {
    async fn call(&self, method: &str, path: &str, h: &[(&str, &str)], body: &str) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in h {
            req = req.header(*k, *v);
        }
        if method == "POST" {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// Signs in through the console's form; the `Cookie` header value.
    async fn sign_in(&self, user: &str, password: &str) -> String {
        let body = format!("username={user}&password={password}");
        let r = self.call("POST", "/login", &[], &body).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        assert_eq!(r.headers[header::LOCATION], "/");
        let set = r.headers[header::SET_COOKIE].to_str().unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        set.split(';').next().unwrap().to_string()
    }

    async fn add_user(&self, name: &str, role: Role) {
        self.auth
            .add_user("test", name, role, "correct horse battery".into())
            .await
            .unwrap();
    }

    /// Stores samples of `cpu` for DEV at `ts` (ms) through the writer's
    /// own code, and tells the engine.
    fn store_cpu(&self, points: &[(u64, f64)]) {
        let mut w = IngestWriter::new(self.store.clone(), outpost_storage::now_ms()).unwrap();
        let last = w.last_seq(DEV).unwrap();
        let records = points
            .iter()
            .enumerate()
            .map(|(i, (ts, v))| Record {
                seq: last + 1 + i as u64,
                ts_ms: *ts,
                body: RecordBody::Metrics(MetricsSample {
                    values: vec![MetricValue {
                        name: "cpu".into(),
                        label: String::new(),
                        value: *v,
                    }],
                }),
            })
            .collect();
        let out = w
            .apply(
                &[IncomingRecords {
                    device: DEV,
                    records,
                }],
                outpost_storage::now_ms(),
            )
            .unwrap();
        self.site.on_transitions(&out.transitions);
        let values = points
            .iter()
            .map(|(_, v)| MetricValue {
                name: "cpu".into(),
                label: String::new(),
                value: *v,
            })
            .collect();
        self.site
            .on_samples(&[(DEV, values)], outpost_storage::now_ms());
        self.alerts.samples(vec![(
            DEV,
            vec![MetricValue {
                name: "cpu".into(),
                label: String::new(),
                value: points.last().unwrap().1,
            }],
        )]);
    }

    /// Waits for the engine to open an alert for DEV; its id.
    async fn firing_alert(&self) -> u64 {
        for _ in 0..200 {
            let open = alert_store::load_open(&self.store).unwrap();
            if let Some(a) = open.iter().find(|a| a.rule_id == "cpu") {
                return a.id;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no alert fired");
    }
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 64].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_beside_the_api_with_its_headers_and_the_api_is_unchanged() {
    let rig = rig().await;
    let r = rig.call("GET", "/", &[], "").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/login");
    let r = rig.call("GET", "/login", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.contains("id=\"username\"") && !r.body.contains("id=\"tenant\""),
        "{}",
        r.body
    );
    assert_eq!(
        r.headers[header::CONTENT_SECURITY_POLICY],
        outpost_console::security::CSP
    );
    assert_eq!(r.headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let r = rig.call("GET", "/console/console.js", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    // The API as before: JSON errors, bearer token, health, metrics.
    let r = rig.call("GET", "/api/v1/devices", &[], "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.starts_with("{\"error\""), "{}", r.body);
    let bearer = format!("Bearer {TOKEN}");
    let r = rig
        .call("GET", "/api/v1/devices", &[("authorization", &bearer)], "")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("web-1"));
    let r = rig.call("GET", "/no/such/route", &[], "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("no such route"), "{}", r.body);
    assert_eq!(
        rig.call("GET", "/healthz", &[], "").await.status,
        StatusCode::OK
    );
    // The admin token as a bearer sees the console too (scripts, curl).
    let r = rig
        .call("GET", "/", &[("authorization", &bearer)], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.contains("site harbour")
            && r.body.contains("1 devices: 0 online, 0 offline, 1 pending"),
        "{}",
        r.body
    );
    let r = rig.call("GET", "/metrics", &[], "").await;
    assert!(
        r.body.contains("outpost_console_live_subscribers"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("outpost_api_requests_total{method=\"GET\",route=\"/\",status=\"200\"}"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_users_and_the_admin_token_sign_in_and_roles_decide_the_buttons() {
    let rig = rig().await;
    rig.add_user("vera", Role::Viewer).await;
    rig.add_user("tess", Role::Technician).await;
    // A wrong password: the form again, 401.
    let r = rig
        .call("POST", "/login", &[], "username=vera&password=wrong-one")
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("id=\"refused\""), "{}", r.body);
    // A login from another origin is refused before the password is read.
    let r = rig
        .call(
            "POST",
            "/login",
            &[("host", "a:1"), ("origin", "http://evil.example")],
            "username=vera&password=correct+horse+battery",
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let vera = rig.sign_in("vera", "correct+horse+battery").await;
    let tess = rig.sign_in("tess", "correct+horse+battery").await;
    let admin = rig.sign_in("admin-token", TOKEN).await;
    rig.store_cpu(&[(outpost_storage::now_ms(), 97.0)]);
    let id = rig.firing_alert().await;
    let page = format!("/sites/local/alerts/{id}");
    let r = rig.call("GET", &page, &[("cookie", &vera)], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("<span class=\"user\">vera</span>"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("ack-button"), "a viewer gets no button");
    // Its own token does not make a viewer's POST pass.
    let vera_csrf = csrf_of(&r.body);
    let r = rig
        .call(
            "POST",
            &format!("{page}/ack"),
            &[("cookie", &vera)],
            &format!("csrf={vera_csrf}&comment=forged"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    for who in [&tess, &admin] {
        let r = rig.call("GET", &page, &[("cookie", who)], "").await;
        assert!(r.body.contains("ack-button"), "{}", r.body);
    }
    let r = rig.call("GET", &page, &[("cookie", &tess)], "").await;
    let tess_csrf = csrf_of(&r.body);
    // No token, another session's token: refused.
    for body in [
        "comment=x".to_string(),
        format!("csrf={vera_csrf}&comment=x"),
    ] {
        let r = rig
            .call("POST", &format!("{page}/ack"), &[("cookie", &tess)], &body)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{body}");
    }
    let r = rig
        .call(
            "POST",
            &format!("{page}/ack"),
            &[("cookie", &tess)],
            &format!("csrf={tess_csrf}&comment=disk+swapped"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let a = alert_store::get_alert(&rig.store, id).unwrap().unwrap();
    assert_eq!(
        (a.acknowledged_by.as_deref(), a.ack_comment.as_deref()),
        (Some("tess"), Some("disk swapped"))
    );
    let r = rig.call("GET", &page, &[("cookie", &vera)], "").await;
    assert!(
        r.body.contains("acknowledged")
            && r.body.contains("<b>tess</b>")
            && r.body.contains("disk swapped"),
        "{}",
        r.body
    );
    let audit = registry::audit_log(&rig.store, 0, u64::MAX, 100).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "alert.ack" && e.actor == "tess"),
        "{audit:?}"
    );
    // Signing out ends the session.
    let r = rig.call("GET", "/", &[("cookie", &admin)], "").await;
    let admin_csrf = csrf_of(&r.body);
    let r = rig
        .call(
            "POST",
            "/logout",
            &[("cookie", &admin)],
            &format!("csrf={admin_csrf}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = rig.call("GET", "/", &[("cookie", &admin)], "").await;
    assert_eq!(r.headers[header::LOCATION], "/login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_and_alert_transitions_are_published_once_with_names() {
    let rig = rig().await;
    let mut sub = rig
        .site
        .hub
        .subscribe(Scope {
            tenant: LIVE_TENANT.into(),
            customers: vec![],
        })
        .unwrap();
    let t = |from, to, at| StatusTransition {
        at_ms: at,
        from,
        to,
        last_seen_ms: 5,
    };
    rig.site
        .on_transitions(&[(DEV, t(DeviceStatus::Pending, DeviceStatus::Online, 10))]);
    // A device enrolled after the index was loaded.
    registry::register(&rig.store, &device(7, "new-one")).unwrap();
    rig.site.on_transitions(&[(
        DeviceId(7),
        t(DeviceStatus::Pending, DeviceStatus::Online, 11),
    )]);
    let next = |d: Option<Delivery>| match d {
        Some(Delivery::Event(e)) => (
            e.kind,
            serde_json::from_str::<serde_json::Value>(&e.data).unwrap(),
        ),
        other => panic!("{other:?}"),
    };
    let (kind, d) = next(sub.next().await);
    assert_eq!(kind, "device");
    assert_eq!(
        (
            &d["site_id"],
            &d["site_name"],
            &d["hostname"],
            &d["old_status"],
            &d["status"]
        ),
        (
            &serde_json::json!("local"),
            &serde_json::json!("harbour"),
            &serde_json::json!("web-1"),
            &serde_json::json!("pending"),
            &serde_json::json!("online")
        )
    );
    assert_eq!(d["device"], DEV.to_string());
    let (_, d) = next(sub.next().await);
    assert_eq!(
        (&d["hostname"], &d["old_status"]),
        (&serde_json::json!("new-one"), &serde_json::Value::Null)
    );
    assert_eq!(rig.site.index.counts().totals.online, 2);
    // An alert transition, from the engine (after the device events of
    // the samples' commit, and the built-in rule's pending alert).
    rig.store_cpu(&[(outpost_storage::now_ms(), 99.0)]);
    let a = loop {
        match next(sub.next().await) {
            ("alert", a) if a["rule"] == "cpu high" => break a,
            ("alert", _) => continue,
            ("device", _) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        (&a["state"], &a["old_state"], &a["severity"], &a["hostname"]),
        (
            &serde_json::json!("firing"),
            &serde_json::Value::Null,
            &serde_json::json!("critical"),
            &serde_json::json!("web-1")
        )
    );
    assert!(a["message"].as_str().unwrap().contains("99 > 90"), "{a}");
    let c = rig.site.index.counts();
    assert_eq!((c.totals.alerts_firing, c.totals.critical), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_list_and_device_page_show_the_stored_site() {
    let rig = rig().await;
    for (n, h) in [(3, "db-1"), (4, "backup-4")] {
        registry::register(&rig.store, &device(n, h)).unwrap();
    }
    let now = outpost_storage::now_ms();
    let points: Vec<(u64, f64)> = (0..30)
        .map(|i| (now - (30 - i) * 60_000, 10.0 + i as f64))
        .collect();
    rig.store_cpu(&points);
    let cookie = rig.sign_in("admin-token", TOKEN).await;
    let h = [("cookie", cookie.as_str())];
    let r = rig.call("GET", "/", &h, "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.contains("3 devices: 1 online, 0 offline, 2 pending"),
        "{}",
        r.body
    );
    let r = rig.call("GET", "/devices?q=BACKUP", &h, "").await;
    assert!(
        r.body.contains("backup-4") && !r.body.contains(">db-1<"),
        "{}",
        r.body
    );
    let r = rig.call("GET", "/devices?status=online", &h, "").await;
    assert!(
        r.body.contains(">web-1<") && !r.body.contains(">db-1<"),
        "{}",
        r.body
    );
    let r = rig.call("GET", "/devices?status=nonsense", &h, "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = rig.call("GET", "/sites/local", &h, "").await;
    assert!(
        r.body.contains("Site harbour") && r.body.contains("uplink not joined"),
        "{}",
        r.body
    );
    assert_eq!(
        rig.call("GET", "/sites/elsewhere", &h, "").await.status,
        StatusCode::NOT_FOUND
    );
    let page = format!("/sites/local/devices/{DEV}?range=1h");
    let r = rig.call("GET", &page, &h, "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("id=\"chart-cpu\"") && r.body.contains("raw samples"),
        "{}",
        r.body
    );
    // The 1 h chart draws every stored sample of the last hour.
    let path = r.body.split("<path class=\"line").nth(1).expect("a line");
    let d = path
        .split("d=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(d.matches(['M', 'L']).count(), 30, "{d}");
    let r = rig
        .call(
            "GET",
            &format!("/sites/local/devices/{DEV}?range=7d"),
            &h,
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.contains("No metrics") || r.body.contains("rollups"),
        "{}",
        r.body
    );
    let r = rig
        .call("GET", "/sites/local/devices/0000000000000063", &h, "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[test]
fn capabilities_follow_the_role_table() {
    let c = |role| Caller {
        user: "u".into(),
        role,
        credential: Credential::Session,
    };
    let v = viewer_of(&c(Role::Viewer), [1; 32]);
    assert!(!v.can.ack_alerts && !v.can.administer);
    assert!(!v.can.manage_deployments && !v.can.create_deployments);
    assert_eq!(caller_of(&v), c(Role::Viewer));
    let t = viewer_of(&c(Role::Technician), [1; 32]);
    assert!(t.can.ack_alerts && !t.can.administer);
    assert!(t.can.manage_deployments && !t.can.create_deployments);
    let a = viewer_of(&c(Role::Admin), [1; 32]);
    assert!(a.can.ack_alerts && a.can.administer);
    assert!(a.can.manage_deployments && a.can.create_deployments);
    assert_eq!(a.scope().tenant, LIVE_TENANT);
}

#[test]
fn raw_points_are_spaced_by_their_median_gap() {
    let p = |t| ChartPoint {
        t_ms: t,
        avg: 1.0,
        min: 1.0,
        max: 1.0,
    };
    assert_eq!(
        point_step(&[p(0), p(60_000), p(120_000), p(600_000)], 0),
        60_000
    );
    assert_eq!(point_step(&[p(0)], 0), 60_000);
    assert_eq!(point_step(&[p(0), p(10)], 0), 1_000);
    assert_eq!(point_step(&[], 300_000), 300_000);
    assert_eq!(range_step(Range::H1), 0);
}

#[test]
fn ack_history_lines_name_who_and_what() {
    let e = |event, detail: &str| crate::alerts::model::AlertEvent {
        alert_id: 1,
        at_ms: 5,
        event,
        value: Some(3.0),
        detail: detail.into(),
    };
    let h = history_event(&e(EventKind::Acknowledged, "by tess: disk: swapped"));
    assert_eq!(
        (h.what.as_str(), h.by.as_deref(), h.text.as_str(), h.value),
        ("acknowledged", Some("tess"), "disk: swapped", None)
    );
    let h = history_event(&e(EventKind::Acknowledged, "by tess: "));
    assert_eq!((h.by.as_deref(), h.text.as_str()), (Some("tess"), ""));
    let h = history_event(&e(EventKind::Firing, "cpu 97 > 90"));
    assert_eq!(
        (h.what.as_str(), h.by, h.value),
        ("firing", None, Some(3.0))
    );
}

/// The site console at the appliance's scale: 10,000 devices with CPU,
/// memory and two disks each. Prints what each step costs (a debug
/// build: release is several times faster) and bounds it loosely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_list_of_10000_devices_is_answered_from_the_index_in_milliseconds() {
    const N: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let store = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
    let now = outpost_storage::now_ms();
    let mut b = store.batch();
    for n in 1..=N {
        let mut d = device(n, &format!("host-{n:05}"));
        d.customer = if n % 10 == 0 { "vet" } else { "dental" }.into();
        b.put(
            outpost_storage::registry::DEVICES,
            &outpost_storage::keys::device_key(d.id),
            &d,
        )
        .unwrap();
    }
    store.write(b).unwrap();
    let mut w = IngestWriter::new(store.clone(), now).unwrap();
    let groups: Vec<IncomingRecords> = (1..=N)
        .map(|n| IncomingRecords {
            device: DeviceId(n),
            records: vec![Record {
                seq: 1,
                ts_ms: now - 1_000,
                body: RecordBody::Metrics(MetricsSample {
                    values: [
                        ("cpu", "", (n % 100) as f64),
                        ("memory", "", 50.0),
                        ("disk_used_percent", "/", 40.0),
                        ("disk_used_percent", "/srv", (n % 97) as f64),
                    ]
                    .into_iter()
                    .map(|(name, label, value)| MetricValue {
                        name: name.into(),
                        label: label.into(),
                        value,
                    })
                    .collect(),
                }),
            }],
        })
        .collect();
    for chunk in groups.chunks(1000) {
        w.apply(chunk, now).unwrap();
    }
    let metrics = Metrics::new();
    let uplink = Uplink::new(
        store.clone(),
        dir.path(),
        Default::default(),
        metrics.uplink.clone(),
        CancellationToken::new(),
        TaskTracker::new(),
    )
    .unwrap();
    let t = Instant::now();
    let site = Site::load(
        store.clone(),
        uplink,
        "big".into(),
        LiveHub::new(Default::default()),
        Freshness::default(),
    )
    .unwrap();
    let load = t.elapsed();
    assert_eq!(site.index.len(), N as usize);
    let t = Instant::now();
    site.merge_now(false).unwrap();
    let merge = t.elapsed();
    let t = Instant::now();
    site.merge_now(true).unwrap();
    let merge_ips = t.elapsed();
    let me = site.identity();
    let timed = |q: &DeviceQuery| {
        let mut times: Vec<Duration> = (0..5)
            .map(|_| {
                let t = Instant::now();
                site.index.query(q, &me).unwrap();
                t.elapsed()
            })
            .collect();
        times.sort();
        (times[2], site.index.query(q, &me).unwrap())
    };
    let q = DeviceQuery {
        limit: 100,
        ..Default::default()
    };
    let (first, page) = timed(&q);
    assert_eq!((page.total, page.rows.len()), (N, 100));
    assert_eq!(page.rows[0].hostname, "host-00001");
    let mut deep = q.clone();
    for _ in 0..49 {
        deep.after = site.index.query(&deep, &me).unwrap().next;
    }
    let (page50, p) = timed(&deep);
    assert_eq!(p.rows[0].hostname, "host-04901");
    let mut search = q.clone();
    search.text = "HOST-0999".into();
    let (search_t, p) = timed(&search);
    assert_eq!(p.total, 10, "host-09990 to host-09999");
    let mut cpu = q.clone();
    cpu.sort = DeviceSort::Cpu;
    cpu.descending = true;
    cpu.status = Some("online".into());
    cpu.customer = Some("dental".into());
    let (filter_sort, p) = timed(&cpu);
    assert_eq!((p.total, p.rows[0].cpu), (9_000, Some(99.0)));
    let t = Instant::now();
    let c = site.index.counts();
    let counts = t.elapsed();
    assert_eq!((c.totals.devices, c.totals.online), (N, N));
    println!(
        "RESULT console_site_index devices={N} load_ms={} merge_ms={} merge_with_ips_ms={} first_page_ms={:.1} page50_ms={:.1} search_ms={:.1} filter_sort_ms={:.1} counts_ms={:.1} (debug build)",
        load.as_millis(),
        merge.as_millis(),
        merge_ips.as_millis(),
        first.as_secs_f64() * 1e3,
        page50.as_secs_f64() * 1e3,
        search_t.as_secs_f64() * 1e3,
        filter_sort.as_secs_f64() * 1e3,
        counts.as_secs_f64() * 1e3,
    );
    // Loose bounds (a debug build on a shared 2-core machine).
    for (what, d) in [
        ("first page", first),
        ("page 50", page50),
        ("search", search_t),
        ("filter and sort", filter_sort),
    ] {
        assert!(d < Duration::from_millis(500), "{what}: {d:?}");
    }
    assert!(merge < Duration::from_secs(5), "merge: {merge:?}");
}

/// The site console gets central's command pages for its own devices:
/// the run form for technicians (a viewer sees none and its POST is
/// refused), the command page, the site's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_console_runs_commands_for_its_devices_and_viewers_cannot() {
    let rig = rig().await;
    rig.add_user("tess", Role::Technician).await;
    rig.add_user("val", Role::Viewer).await;
    let tech = rig.sign_in("tess", "correct+horse+battery").await;
    let viewer = rig.sign_in("val", "correct+horse+battery").await;
    let page = format!("/sites/local/devices/{DEV}");
    let r = rig.call("GET", &page, &[("cookie", &tech)], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("id=\"run-command-line\""), "{}", r.body);
    let csrf = csrf_of(&r.body);
    let v = rig.call("GET", &page, &[("cookie", &viewer)], "").await;
    assert!(!v.body.contains("run-command-line"));
    let r = rig
        .call(
            "POST",
            &format!("{page}/commands"),
            &[("cookie", &viewer)],
            &format!("csrf={}&command=id", csrf_of(&v.body)),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = rig
        .call(
            "POST",
            &format!("{page}/commands"),
            &[("cookie", &tech)],
            &format!("csrf={csrf}&command=uptime&interpreter=sh&timeout_secs=20"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let at = r.headers[header::LOCATION].to_str().unwrap().to_string();
    let r = rig.call("GET", &at, &[("cookie", &viewer)], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("cmd-queued") && r.body.contains("uptime"),
        "{}",
        r.body
    );
    let r = rig
        .call("GET", "/sites/local/commands", &[("cookie", &viewer)], "")
        .await;
    assert!(r.body.contains(&at), "{}", r.body);
}

#[tokio::test]
async fn a_stored_command_change_tells_open_command_pages_through_the_live_stream() {
    let rig = rig().await;
    rig.add_user("tess", Role::Technician).await;
    let tech = rig.sign_in("tess", "correct+horse+battery").await;
    let mut sub = rig
        .site
        .hub
        .subscribe(Scope {
            tenant: LIVE_TENANT.into(),
            customers: vec![],
        })
        .unwrap();
    tokio::spawn(super::commands::live_loop(
        rig.commands.clone(),
        rig.site.clone(),
        Duration::ZERO,
        rig.shutdown.clone(),
    ));
    let page = format!("/sites/local/devices/{DEV}");
    let r = rig.call("GET", &page, &[("cookie", &tech)], "").await;
    let r = rig
        .call(
            "POST",
            &format!("{page}/commands"),
            &[("cookie", &tech)],
            &format!("csrf={}&command=uptime", csrf_of(&r.body)),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let d = tokio::time::timeout(Duration::from_secs(1), sub.next())
        .await
        .expect("an event within a second");
    match d {
        Some(outpost_console::live::Delivery::Event(e)) => assert_eq!(e.kind, "command"),
        d => panic!("{d:?}"),
    }
}

#[tokio::test]
async fn the_site_consoles_command_list_pages_back_through_older_commands() {
    let rig = rig().await;
    rig.add_user("tess", Role::Technician).await;
    let tech = rig.sign_in("tess", "correct+horse+battery").await;
    let page = format!("/sites/local/devices/{DEV}");
    let mut ids = Vec::new();
    for line in ["echo first", "echo second"] {
        let r = rig.call("GET", &page, &[("cookie", &tech)], "").await;
        let r = rig
            .call(
                "POST",
                &format!("{page}/commands"),
                &[("cookie", &tech)],
                &format!(
                    "csrf={}&command={}",
                    csrf_of(&r.body),
                    line.replace(' ', "+")
                ),
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        ids.push(r.headers[header::LOCATION].to_str().unwrap().to_string());
        // Distinct queue times (paging is by time).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = rig
        .call(
            "GET",
            "/sites/local/commands?limit=1",
            &[("cookie", &tech)],
            "",
        )
        .await;
    assert!(
        r.body.contains(&ids[1]) && !r.body.contains(&ids[0]),
        "{}",
        r.body
    );
    let href = r
        .body
        .split("id=\"older-commands\" href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("an older-commands link")
        .replace("&amp;", "&");
    let r = rig.call("GET", &href, &[("cookie", &tech)], "").await;
    assert_eq!(r.status, StatusCode::OK, "{href}: {}", r.body);
    assert!(
        r.body.contains(&ids[0]) && !r.body.contains(&ids[1]),
        "{}",
        r.body
    );
}

/// The Deployments and Approvals pages over the real orchestrator: an
/// admin creates a deployment of a patch approved by hand; with no device
/// link its install fails, the gate pauses it, and the pages show the
/// stage, the device's failure reason and the deciding rule. A technician
/// may resume and roll back but not abort; a viewer gets no button and
/// its POSTs (its own token, or none) are refused, as is a cross-site one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pages_show_real_deployments_and_only_allowed_roles_act() {
    use crate::deploy::approvals::tests::missing;
    let rig = rig().await;
    rig.fake
        .0
        .lock()
        .unwrap()
        .insert(DEV, vec![missing("openssl", "3.0.1-1", "3.0.2-1", true)]);
    crate::deploy::approvals::set_manual(
        &rig.store,
        rig.fake.as_ref(),
        outpost_patch::approval::PatchKey::new("openssl", "3.0.2-1"),
        outpost_patch::approval::ApprovalScope::Tenant {
            tenant: "msp".into(),
        },
        outpost_patch::approval::Verdict::Approve,
        "admin",
        outpost_storage::now_ms(),
    )
    .unwrap();
    rig.add_user("tess", Role::Technician).await;
    rig.add_user("vera", Role::Viewer).await;
    let tess = rig.sign_in("tess", "correct+horse+battery").await;
    let vera = rig.sign_in("vera", "correct+horse+battery").await;
    let admin = rig.sign_in("admin-token", TOKEN).await;

    // Nothing yet; the admin gets the form with the approved patch.
    let r = rig
        .call("GET", "/deployments", &[("cookie", &admin)], "")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("no-deployments"), "{}", r.body);
    assert!(
        r.body.contains("value=\"openssl=3.0.2-1\"") && r.body.contains("id=\"dep-create\""),
        "{}",
        r.body
    );
    let admin_csrf = csrf_of(&r.body);
    let r = rig
        .call("GET", "/deployments", &[("cookie", &vera)], "")
        .await;
    assert!(!r.body.contains("dep-create"), "a viewer gets no form");
    let vera_csrf = csrf_of(&r.body);
    for body in [
        "target=all&patch=openssl%3D3.0.2-1".to_string(),
        format!("csrf={vera_csrf}&target=all&patch=openssl%3D3.0.2-1"),
    ] {
        let r = rig
            .call("POST", "/deployments", &[("cookie", &vera)], &body)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{body}");
    }
    let r = rig
        .call(
            "POST",
            "/deployments",
            &[("cookie", &admin), ("sec-fetch-site", "cross-site")],
            &format!("csrf={admin_csrf}&target=all&patch=openssl%3D3.0.2-1"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "cross-site");
    let r = rig
        .call(
            "POST",
            "/deployments",
            &[("cookie", &admin)],
            &format!("csrf={admin_csrf}&target=all&patch=openssl%3D3.0.2-1"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let at = r.headers[header::LOCATION].to_str().unwrap().to_string();
    let id = at.rsplit('/').next().unwrap().to_string();
    assert!(id.starts_with("dep-"), "{at}");
    let stored = crate::deploy::store::get(&rig.store, &id).unwrap().unwrap();
    assert_eq!(stored.created_by, "admin-token");

    // The install fails (no device link): the gate pauses the deployment.
    let r = rig.call("GET", &at, &[("cookie", &vera)], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("dep-paused"), "{}", r.body);
    assert!(r.body.contains("stage 1/"), "{}", r.body);
    assert!(r.body.contains("device link not available"), "{}", r.body);
    assert!(
        r.body.contains("web-1") && r.body.contains("dev-failed"),
        "{}",
        r.body
    );
    assert!(r.body.contains("gate failed"), "{}", r.body);
    assert!(!r.body.contains("dep-action"), "a viewer gets no action");
    let r = rig
        .call("GET", "/deployments", &[("cookie", &vera)], "")
        .await;
    assert!(
        r.body.contains(&format!("data-deployment=\"{id}\""))
            && r.body.contains("dep-paused")
            && r.body.contains("admin-token"),
        "{}",
        r.body
    );
    for action in ["resume", "rollback", "abort"] {
        let r = rig
            .call(
                "POST",
                &format!("{at}/{action}"),
                &[("cookie", &vera)],
                &format!("csrf={vera_csrf}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "viewer {action}");
    }
    // A technician: resume and roll back, no abort.
    let r = rig.call("GET", &at, &[("cookie", &tess)], "").await;
    assert!(
        r.body.contains("dep-resume") && r.body.contains("dep-rollback"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("class=\"dep-abort\""), "{}", r.body);
    let tess_csrf = csrf_of(&r.body);
    let r = rig
        .call(
            "POST",
            &format!("{at}/abort"),
            &[("cookie", &tess)],
            &format!("csrf={tess_csrf}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The admin aborts.
    let r = rig.call("GET", &at, &[("cookie", &admin)], "").await;
    assert!(r.body.contains("class=\"dep-abort\""), "{}", r.body);
    let r = rig
        .call(
            "POST",
            &format!("{at}/abort"),
            &[("cookie", &admin)],
            &format!("csrf={admin_csrf}&note=wrong+window"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = rig.call("GET", &at, &[("cookie", &vera)], "").await;
    assert!(
        r.body.contains("dep-aborted") && r.body.contains("aborted: wrong window"),
        "{}",
        r.body
    );

    // Approvals: the manual approval, and which rule decided for web-1.
    let r = rig
        .call(
            "GET",
            &format!("/approvals?device={DEV}"),
            &[("cookie", &vera)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("openssl=3.0.2-1") && r.body.contains("verdict-approve"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("outcome-approved") && r.body.contains("(tenant msp)"),
        "{}",
        r.body
    );
}

/// The device list's bulk bar on the site: a technician runs a command
/// line on two selected devices as one bulk run of the command service,
/// and tags them (added to their tags, audited, shown in the list); a
/// viewer gets no form and its POST is refused, as is one from another
/// origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selected_devices_are_run_on_as_one_bulk_run_and_tagged_and_viewers_cannot() {
    let rig = rig().await;
    registry::register(&rig.store, &device(0x2b, "web-2")).unwrap();
    registry::set_tags(&rig.store, DeviceId(0x2b), &["old".into()]).unwrap();
    rig.site.merge_now(true).unwrap();
    rig.add_user("tess", Role::Technician).await;
    rig.add_user("vera", Role::Viewer).await;
    let tess = rig.sign_in("tess", "correct+horse+battery").await;
    let vera = rig.sign_in("vera", "correct+horse+battery").await;
    let r = rig.call("GET", "/devices", &[("cookie", &tess)], "").await;
    assert!(
        r.body.contains("id=\"bulk-run\"") && r.body.contains("id=\"bulk-tag\""),
        "{}",
        r.body
    );
    let tess_csrf = csrf_of(&r.body);
    let v = rig.call("GET", "/devices", &[("cookie", &vera)], "").await;
    assert!(!v.body.contains("bulk-form\" method"), "{}", v.body);
    let sel = "device=local%2F000000000000002a&device=local%2F000000000000002b";
    let r = rig
        .call(
            "POST",
            "/devices/bulk",
            &[("cookie", &vera)],
            &format!("csrf={}&action=tag&tags=x&{sel}", csrf_of(&v.body)),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = rig
        .call(
            "POST",
            "/devices/bulk",
            &[("cookie", &tess), ("origin", "http://evil.example")],
            &format!("csrf={tess_csrf}&action=tag&tags=x&{sel}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        registry::tags(&rig.store, DEV).unwrap(),
        Vec::<String>::new()
    );
    // Run.
    let r = rig
        .call(
            "POST",
            "/devices/bulk",
            &[("cookie", &tess)],
            &format!("csrf={tess_csrf}&action=run&command=uptime&{sel}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let runs = rig.commands.list_runs(10).unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].members.len(), 2);
    assert_eq!(runs[0].created_by, "tess");
    // Tag.
    let r = rig
        .call(
            "POST",
            "/devices/bulk",
            &[("cookie", &tess)],
            &format!("csrf={tess_csrf}&action=tag&tags=web%2C+patched&{sel}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(
        registry::tags(&rig.store, DeviceId(0x2b)).unwrap(),
        vec!["old", "web", "patched"]
    );
    assert_eq!(
        registry::tags(&rig.store, DEV).unwrap(),
        vec!["web", "patched"]
    );
    let r = rig
        .call("GET", "/devices?tag=patched", &[("cookie", &vera)], "")
        .await;
    assert!(
        r.body.contains("web-1") && r.body.contains("web-2"),
        "{}",
        r.body
    );
    let audit = registry::audit_log(&rig.store, 0, u64::MAX, 100).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "device.tags" && e.actor == "tess"),
        "{audit:?}"
    );
}

/// The site's patch pages through the console's router, over a patch
/// service whose assessments are in RocksDB: the overview, a CVE's page,
/// the device page's panel and both report downloads (CSV, and a PDF
/// whose text names the device), each read on the blocking pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_patch_pages_show_the_stored_assessments_through_the_router() {
    let rig = rig_with_patches(true).await;
    crate::patches::service::tests::assess_two_customers(&rig.store, rig.patches.as_ref().unwrap());
    rig.add_user("val", Role::Viewer).await;
    let viewer = rig.sign_in("val", "correct+horse+battery").await;
    let get = |path: &'static str| {
        let (rig, viewer) = (&rig, viewer.clone());
        async move { rig.call("GET", path, &[("cookie", &viewer)], "").await }
    };
    // The dashboard's tile (as central's): the same figure, linked.
    let r = get("/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body
            .contains("<a class=\"tile\" href=\"/patches\"><span class=\"num\">100 %</span>"),
        "{}",
        r.body
    );
    let r = get("/patches").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for want in [
        "id=\"fleet-compliance\">100 %",
        "web-1",
        "db-1",
        "CVE-2024-0001",
        "report.pdf",
    ] {
        assert!(r.body.contains(want), "{want} not in {}", r.body);
    }
    let r = get("/patches/cves/CVE-2024-0001").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("web-1") && r.body.contains("fixable") && !r.body.contains("db-1"),
        "{}",
        r.body
    );
    let r = get("/sites/local/devices/000000000000000b").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("id=\"device-patches\"") && r.body.contains("openssl"),
        "{}",
        r.body
    );
    let r = get("/patches/report.csv?customer=dental").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        r.body.contains(",web-1,dental,") && !r.body.contains("db-1"),
        "{}",
        r.body
    );

    let req = Request::builder()
        .uri("/patches/report.pdf?customer=dental")
        .header("cookie", &viewer)
        .body(Body::empty())
        .unwrap();
    let resp = rig.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/pdf");
    let pdf = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    if let Some(text) = crate::patches::service::tests::pdftotext(&pdf) {
        assert!(
            text.contains("Customer: dental") && text.contains("web-1"),
            "{text}"
        );
        assert!(!text.contains("db-1"), "{text}");
    }
}

/// Two customers' devices whose agents reported apt's download sizes (one
/// unknown), the second one's next scan deferred (dpkg's lock held):
/// web-1 (dental) misses openssl (12.3 MiB) and bash (size unknown),
/// db-1 (vet) misses openssl (12.3 MiB).
fn assess_with_sizes(store: &Store, svc: &crate::patches::PatchService) {
    use crate::patches::service::tests::{TRACKER, V1, put_report, scan};
    use outpost_patch::scan::{AptUpgrade, PACKAGE_REPORT_FORMAT, PackageReport, ScanDeferred};
    use outpost_patch::version::DebVersion;
    svc.import(
        outpost_patch::catalog::FeedFormat::DebianTracker,
        None,
        "t",
        TRACKER.as_bytes(),
    )
    .unwrap();
    let upgrade = |name: &str, from: &str, to: &str, size: Option<u64>| AptUpgrade {
        name: name.into(),
        arch: Some("amd64".into()),
        from: Some(DebVersion::parse(from).unwrap()),
        to: DebVersion::parse(to).unwrap(),
        origins: vec!["Debian-Security:12/stable-security".into()],
        security: true,
        size_bytes: size,
    };
    for (n, host, customer, with_bash) in
        [(11, "web-1", "dental", true), (12, "db-1", "vet", false)]
    {
        let mut r = device(n, host);
        r.customer = customer.into();
        registry::register(store, &r).unwrap();
        let mut s = scan(V1, 1);
        s.upgrades.push(upgrade(
            "libssl3",
            "3.0.11-1~deb12u2",
            "3.0.15-1~deb12u1",
            Some(12_897_485),
        ));
        if with_bash {
            s.upgrades
                .push(upgrade("bash", "5.2.15-2+b2", "5.2.15-3", None));
        }
        s.normalize();
        put_report(
            store,
            DeviceId(n),
            1,
            &PackageReport::Full(Box::new(s)),
            PACKAGE_REPORT_FORMAT,
        );
    }
    svc.process_reports(10).unwrap();
    put_report(
        store,
        DeviceId(12),
        2,
        &PackageReport::Deferred(Box::new(ScanDeferred {
            at_ms: 20,
            reason: "dpkg is locked by apt (pid 123)".into(),
            attempts: 7,
            waited_ms: 60_000,
        })),
        PACKAGE_REPORT_FORMAT,
    );
    svc.process_reports(30).unwrap();
}

/// The `<tr>` of table `table` whose attribute `attr` (`data-x="v"`) it
/// has, up to its `</tr>`.
fn table_row<'a>(body: &'a str, table: &str, attr: &str) -> &'a str {
    let t = body
        .find(&format!("id=\"{table}\""))
        .unwrap_or_else(|| panic!("no table {table} in {body}"));
    let rest = &body[t..];
    let r = rest
        .find(attr)
        .unwrap_or_else(|| panic!("no row {attr} in table {table}: {rest}"));
    let row = &rest[r..];
    &row[..row.find("</tr>").unwrap_or(row.len())]
}

/// The site's Patches pages show what the site API returns: download
/// sizes (the site's, per customer, per device, per missing patch across
/// the fleet and on the device page), the per-customer breakdown, and a
/// deferred scan's reason; every figure equal to the JSON API's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_patch_pages_show_sizes_customers_and_deferred_scans_as_the_api_returns_them() {
    use crate::patches::service::{DevicePatches, Summary};
    use outpost_patch::assess::DownloadSize;
    use outpost_patch::assess::fleet::PatchSummary;
    let rig = rig_with_patches(true).await;
    assess_with_sizes(&rig.store, rig.patches.as_ref().unwrap());
    rig.add_user("val", Role::Viewer).await;
    let viewer = rig.sign_in("val", "correct+horse+battery").await;
    let bearer = format!("Bearer {TOKEN}");
    let api = |path: String| {
        let (rig, bearer) = (&rig, bearer.clone());
        async move {
            let r = rig
                .call("GET", &path, &[("authorization", &bearer)], "")
                .await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
            r.body
        }
    };
    let page = |path: String| {
        let (rig, viewer) = (&rig, viewer.clone());
        async move {
            let r = rig.call("GET", &path, &[("cookie", &viewer)], "").await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
            r.body
        }
    };
    let summary: Summary =
        serde_json::from_str(&api("/api/v1/patches/summary".into()).await).unwrap();
    let patches: Vec<PatchSummary> =
        serde_json::from_str(&api("/api/v1/patches".into()).await).unwrap();

    let o = page("/patches".into()).await;
    // The site's total (two openssl and one bash download, one unknown).
    assert_eq!(
        summary.download.display(),
        "at least 24.6 MiB (1 size unknown)"
    );
    assert!(
        o.contains(&format!(
            "id=\"fleet-download\">{}</b>",
            summary.download.display()
        )),
        "{o}"
    );
    // Per customer: the API's lines, each with its compliance and size.
    assert_eq!(summary.customers.len(), 2);
    for cu in &summary.customers {
        let row = table_row(
            &o,
            "compliance-customers",
            &format!("data-customer=\"{}\"", cu.customer),
        );
        let percent = cu
            .summary
            .compliance_percent
            .map_or("–".into(), outpost_console::format::percent);
        assert!(
            row.contains(&format!("<td class=\"n compliance\">{percent}</td>"))
                && row.contains(&format!("<td class=\"n\">{}</td>", cu.summary.devices))
                && row.contains(&format!(
                    "<td class=\"n download\">{}</td>",
                    cu.download.display()
                )),
            "{}: {row}",
            cu.customer
        );
    }
    // Per device on the risk list.
    assert_eq!(summary.devices.len(), 2);
    for d in &summary.devices {
        let row = table_row(
            &o,
            "risky-devices",
            &format!("data-device=\"{}\"", d.device),
        );
        assert!(
            row.contains(&format!(
                "<td class=\"n download\">{}</td>",
                d.download.display()
            )),
            "{}: {row}",
            d.device
        );
    }
    // Per missing patch across the site (the API's list, its order).
    assert_eq!(patches.len(), 2, "{patches:?}");
    for p in &patches {
        let row = table_row(
            &o,
            "missing-across",
            &format!("data-source=\"{}\"", p.source),
        );
        assert!(
            row.contains(&format!("<td class=\"n devices\">{}</td>", p.devices))
                && row.contains(&format!(
                    "<td class=\"n download\">{}</td>",
                    p.download.display()
                )),
            "{}: {row}",
            p.source
        );
    }
    let openssl = patches.iter().find(|p| p.source == "openssl").unwrap();
    assert_eq!(
        (openssl.devices, openssl.download.display().as_str()),
        (2, "24.6 MiB")
    );

    // A device's page: its total and each missing patch's size, as the
    // device API says; no deferred scan.
    let web = "000000000000000b";
    let dp: DevicePatches =
        serde_json::from_str(&api(format!("/api/v1/patches/devices/{web}")).await).unwrap();
    let a = dp.assessment.as_ref().unwrap();
    let body = page(format!("/sites/local/devices/{web}")).await;
    assert!(
        body.contains(&format!(
            "id=\"device-download\">{}</b>",
            a.download_size().display()
        )),
        "{body}"
    );
    assert_eq!(a.patches.len(), 2);
    for m in &a.patches {
        let mut one = DownloadSize::default();
        one.add(m);
        let row = table_row(
            &body,
            "missing-patches",
            &format!("data-source=\"{}\"", m.source),
        );
        assert!(
            row.contains(&format!("<td class=\"n download\">{}</td>", one.display())),
            "{}: {row}",
            m.source
        );
    }
    assert!(
        body.contains("<td class=\"n download\">unknown</td>"),
        "bash's size is unknown: {body}"
    );
    assert!(!body.contains("scan-deferred"), "{body}");
    // Which rule decided: the site's Approvals page for this device.
    assert!(
        body.contains("id=\"which-rule\"")
            && body.contains(&format!("href=\"/approvals?device={web}\"")),
        "{body}"
    );

    // db-1's last scan was deferred: the reason the API gives, beside the
    // kept assessment.
    let db = "000000000000000c";
    let dp: DevicePatches =
        serde_json::from_str(&api(format!("/api/v1/patches/devices/{db}")).await).unwrap();
    let why = dp.deferred.clone().unwrap();
    assert!(
        why.starts_with("scan deferred: dpkg is locked by apt (pid 123)"),
        "{why}"
    );
    let body = page(format!("/sites/local/devices/{db}")).await;
    assert!(
        body.contains(&format!("id=\"scan-deferred\">{why}")),
        "{body}"
    );
    assert!(
        body.contains("id=\"device-download\">12.3 MiB</b>"),
        "{body}"
    );
}

/// The site's File transfers pages (their own navigation entry): a pull
/// queued through the file service is listed with its device's name and
/// state, its page shows it; a viewer gets no cancel button and a forged
/// cancel is refused; a technician cancels it from the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_file_transfer_pages_list_show_and_cancel_a_transfer() {
    let rig = rig().await;
    let rec = rig
        .files
        .pull(DEV, "/etc/hosts".into(), "tess".into())
        .await
        .unwrap();
    let id = rec.id.to_string();
    rig.add_user("val", Role::Viewer).await;
    rig.add_user("tess", Role::Technician).await;
    let viewer = rig.sign_in("val", "correct+horse+battery").await;
    let tech = rig.sign_in("tess", "correct+horse+battery").await;

    let r = rig.call("GET", "/files", &[("cookie", &viewer)], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body
            .contains(r#"<a href="/files" class="current">File transfers</a>"#),
        "its own navigation entry: {}",
        r.body
    );
    assert!(
        r.body
            .contains(&format!(r#"data-file="{id}" data-state="queued""#))
            && r.body.contains(">web-1<")
            && r.body.contains("/etc/hosts"),
        "{}",
        r.body
    );
    // The state filter: running transfers only (none), then queued ones.
    let r = rig
        .call("GET", "/files?state=running", &[("cookie", &viewer)], "")
        .await;
    assert!(r.body.contains("no-files"), "{}", r.body);
    let r = rig
        .call("GET", "/files?state=queued", &[("cookie", &viewer)], "")
        .await;
    assert!(
        r.body.contains(&format!("data-file=\"{id}\"")),
        "{}",
        r.body
    );

    let page = format!("/files/{id}");
    let r = rig.call("GET", &page, &[("cookie", &viewer)], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(!r.body.contains("cancel-file"), "viewer: {}", r.body);
    let csrf = csrf_of(&r.body);
    let r = rig
        .call(
            "POST",
            &format!("{page}/cancel"),
            &[("cookie", &viewer)],
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    let r = rig.call("GET", &page, &[("cookie", &tech)], "").await;
    assert!(r.body.contains("id=\"cancel-file\""), "{}", r.body);
    let csrf = csrf_of(&r.body);
    let r = rig
        .call(
            "POST",
            &format!("{page}/cancel"),
            &[("cookie", &tech)],
            &format!("csrf={csrf}"),
        )
        .await;
    assert!(r.status.is_redirection(), "{} {}", r.status, r.body);
    // The file service records the cancelled command (its worker).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = rig.files.get(rec.id).unwrap().unwrap();
        if after.state == crate::files::model::TransferState::Cancelled {
            break;
        }
        assert!(Instant::now() < deadline, "not cancelled: {after:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = rig.call("GET", &page, &[("cookie", &tech)], "").await;
    assert!(
        r.body.contains("data-state=\"cancelled\"") && !r.body.contains("id=\"cancel-file\""),
        "{}",
        r.body
    );
}

/// Tags set through the API (`PUT /api/v1/devices/{id}/tags`) show in a
/// search of the device list at once, although the index was merged a
/// moment ago and would not merge again for an hour (before: only once
/// a page found it older than its freshness, 2 s on an appliance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_set_through_the_api_are_found_by_a_search_right_after() {
    let rig = rig_with(
        false,
        Freshness {
            state: Duration::from_secs(3600),
            ips: Duration::from_secs(3600),
        },
    )
    .await;
    rig.add_user("val", Role::Viewer).await;
    let viewer = rig.sign_in("val", "correct+horse+battery").await;
    let r = rig
        .call("GET", "/devices?q=frontdesk", &[("cookie", &viewer)], "")
        .await;
    assert!(
        !r.body.contains("data-key=\"local/000000000000002a\""),
        "{}",
        r.body
    );
    let r = rig
        .call(
            "PUT",
            "/api/v1/devices/000000000000002a/tags",
            &[
                ("authorization", &format!("Bearer {TOKEN}")),
                ("content-type", "application/json"),
            ],
            r#"["frontdesk","web"]"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = rig
        .call("GET", "/devices?q=frontdesk", &[("cookie", &viewer)], "")
        .await;
    assert!(
        r.body.contains("data-key=\"local/000000000000002a\""),
        "{}",
        r.body
    );
    let r = rig
        .call("GET", "/devices?tag=web", &[("cookie", &viewer)], "")
        .await;
    assert!(
        r.body.contains("data-key=\"local/000000000000002a\""),
        "{}",
        r.body
    );
}

/// Without a patch service the pages say so instead of failing.
#[tokio::test]
async fn the_site_patch_pages_say_when_patches_are_not_available() {
    let rig = rig().await;
    rig.add_user("val", Role::Viewer).await;
    let viewer = rig.sign_in("val", "correct+horse+battery").await;
    for path in ["/patches", "/patches/report.pdf"] {
        let r = rig.call("GET", path, &[("cookie", &viewer)], "").await;
        assert!(
            r.body.contains("not available"),
            "{path}: {} {}",
            r.status,
            r.body
        );
    }
}

fn all_commands() -> crate::commands::store::ListFilter {
    crate::commands::store::ListFilter {
        limit: 100,
        ..Default::default()
    }
}

/// Stores version `n` of script `name` (a body that names the version).
fn put_script(rig: &Rig, name: &str, n: u32) {
    let v = crate::commands::scripts::ScriptVersion {
        name: name.into(),
        version: 0,
        interpreter: outpost_proto::command::Interpreter::Sh,
        body: format!("echo <v{n}> \"$1\""),
        default_timeout_ms: 30_000,
        parameters: vec!["who".into()],
        created_ms: outpost_storage::now_ms(),
        created_by: "ada".into(),
    };
    rig.commands.put_script(v, n == 1).unwrap().unwrap();
}

/// The site's Scripts pages over the appliance's script library: the
/// navigation enables Scripts, the list shows each script's newest
/// version, a script's page shows a version's body (older ones by
/// `?version=`), an unknown script or version is 404; a technician runs
/// a script on a device from the device page (a command of the script's
/// newest version, its arguments, asked by the technician), a viewer
/// sees no run form and its POST is refused (403) with no command made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_scripts_pages_list_show_and_run_scripts_and_viewers_cannot_run() {
    let rig = rig().await;
    put_script(&rig, "hello", 1);
    put_script(&rig, "hello", 2);
    put_script(&rig, "disk-free", 1);
    rig.add_user("tess", Role::Technician).await;
    rig.add_user("vera", Role::Viewer).await;
    let tess = rig.sign_in("tess", "correct+horse+battery").await;
    let vera = rig.sign_in("vera", "correct+horse+battery").await;
    let r = rig.call("GET", "/scripts", &[("cookie", &vera)], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("data-script=\"hello\"") && r.body.contains("data-script=\"disk-free\""),
        "{}",
        r.body
    );
    assert!(r.body.contains(r#"href="/scripts""#), "{}", r.body);
    assert!(
        !r.body.contains(r#"aria-disabled="true">Scripts</span>"#),
        "Scripts must be enabled in the navigation: {}",
        r.body
    );
    let r = rig
        .call("GET", "/scripts/hello", &[("cookie", &vera)], "")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("data-version=\"2\"") && r.body.contains("echo &lt;v2&gt;"),
        "{}",
        r.body
    );
    assert!(r.body.contains("/scripts/hello?version=1"), "{}", r.body);
    let r = rig
        .call("GET", "/scripts/hello?version=1", &[("cookie", &vera)], "")
        .await;
    assert!(r.body.contains("echo &lt;v1&gt;"), "{}", r.body);
    for missing in ["/scripts/nope", "/scripts/hello?version=9"] {
        let r = rig.call("GET", missing, &[("cookie", &vera)], "").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}: {}", r.body);
    }
    // The device page: a run form for the technician only.
    let page = format!("/sites/local/devices/{DEV}");
    let t = rig.call("GET", &page, &[("cookie", &tess)], "").await;
    assert!(
        t.body.contains("id=\"run-script-name\"") && t.body.contains("hello (v2)"),
        "{}",
        t.body
    );
    let v = rig.call("GET", &page, &[("cookie", &vera)], "").await;
    assert!(!v.body.contains("run-script"), "{}", v.body);
    let r = rig
        .call(
            "POST",
            &format!("{page}/scripts"),
            &[("cookie", &vera)],
            &format!("csrf={}&script=hello&args=x", csrf_of(&v.body)),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(rig.commands.list(&all_commands()).unwrap().is_empty());
    let csrf = csrf_of(&t.body);
    let r = rig
        .call(
            "POST",
            &format!("{page}/scripts"),
            &[("cookie", &tess)],
            &format!("csrf={csrf}&script=nope&args="),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = rig
        .call(
            "POST",
            &format!("{page}/scripts"),
            &[("cookie", &tess)],
            &format!("csrf={csrf}&script=hello&args=world+again"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let at = r.headers[header::LOCATION].to_str().unwrap().to_string();
    let cmds = rig.commands.list(&all_commands()).unwrap();
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    let c = &cmds[0];
    assert_eq!(at, format!("/commands/{}", c.id));
    assert_eq!(c.device, DEV);
    assert_eq!(c.spec.requested_by, "tess");
    assert_eq!(c.spec.args, vec!["world", "again"]);
    assert_eq!(c.spec.timeout_ms, 30_000);
    match &c.spec.kind {
        outpost_proto::command::CommandKind::Script {
            name,
            version,
            body,
        } => {
            assert_eq!((name.as_str(), *version), ("hello", 2));
            assert!(body.contains("<v2>"), "{body}");
        }
        k => panic!("not a script run: {k:?}"),
    }
    let r = rig.call("GET", &at, &[("cookie", &vera)], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("cmd-queued"), "{}", r.body);
}

/// The site's bulk runs: "Run script…" on two selected devices opens the
/// run's page, which shows each device (hostname, its command's state and
/// a link to its output) and the counts; the run is listed at
/// `/commands/bulk` (a viewer reads both); an unknown run is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_lists_bulk_run_opens_the_runs_page_with_each_devices_state() {
    let rig = rig().await;
    put_script(&rig, "hello", 1);
    registry::register(&rig.store, &device(0x2b, "web-2")).unwrap();
    rig.site.merge_now(true).unwrap();
    rig.add_user("tess", Role::Technician).await;
    rig.add_user("vera", Role::Viewer).await;
    let tess = rig.sign_in("tess", "correct+horse+battery").await;
    let vera = rig.sign_in("vera", "correct+horse+battery").await;
    let r = rig.call("GET", "/devices", &[("cookie", &tess)], "").await;
    assert!(
        r.body.contains(r#"<option value="hello">"#),
        "the bar offers the library's scripts: {}",
        r.body
    );
    let csrf = csrf_of(&r.body);
    let sel = "device=local%2F000000000000002a&device=local%2F000000000000002b";
    let r = rig
        .call(
            "POST",
            "/devices/bulk",
            &[("cookie", &tess)],
            &format!("csrf={csrf}&action=run&script=hello&args=x&{sel}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let runs = rig.commands.list_runs(10).unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    let at = r.headers[header::LOCATION].to_str().unwrap().to_string();
    assert_eq!(at, format!("/commands/bulk/{}", run.id));
    let r = rig.call("GET", &at, &[("cookie", &vera)], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("web-1") && r.body.contains("web-2"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("2 pending") && r.body.contains("2 in all"),
        "{}",
        r.body
    );
    for (_, cid) in &run.members {
        assert!(
            r.body
                .contains(&format!(r#"data-command="{cid}" data-state="queued""#)),
            "{cid}: {}",
            r.body
        );
        assert!(r.body.contains(&format!("/commands/{cid}")), "{}", r.body);
    }
    assert!(r.body.contains("data-live-commands"), "{}", r.body);
    let r = rig.call("GET", "/commands", &[("cookie", &vera)], "").await;
    assert!(
        r.body
            .contains(r#"id="bulk-runs-link" href="/commands/bulk""#),
        "the command list links the bulk runs: {}",
        r.body
    );
    let r = rig
        .call("GET", "/commands/bulk", &[("cookie", &vera)], "")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains(&format!("data-bulk=\"{}\"", run.id)) && r.body.contains("hello"),
        "{}",
        r.body
    );
    let r = rig
        .call(
            "GET",
            "/commands/bulk/00000000000000000000000000000000",
            &[("cookie", &vera)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = rig
        .call("GET", "/commands/bulk/zz", &[("cookie", &vera)], "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
}

/// The site's create form takes the deployment's options (stages, gate,
/// window, install options) into the stored spec; a value the site
/// refuses (an unknown time zone) brings the form back with the reason;
/// a technician rolls one device back and resumes with other versions
/// from the page; a stage out of range is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_deployments_take_the_forms_options_and_technicians_roll_back_one_device() {
    use crate::deploy::approvals::tests::missing;
    let rig = rig().await;
    rig.fake
        .0
        .lock()
        .unwrap()
        .insert(DEV, vec![missing("openssl", "3.0.1-1", "3.0.2-1", true)]);
    crate::deploy::approvals::set_manual(
        &rig.store,
        rig.fake.as_ref(),
        outpost_patch::approval::PatchKey::new("openssl", "3.0.2-1"),
        outpost_patch::approval::ApprovalScope::Tenant {
            tenant: "msp".into(),
        },
        outpost_patch::approval::Verdict::Approve,
        "admin",
        outpost_storage::now_ms(),
    )
    .unwrap();
    rig.add_user("tess", Role::Technician).await;
    let tess = rig.sign_in("tess", "correct+horse+battery").await;
    let admin = rig.sign_in("admin-token", TOKEN).await;
    let r = rig
        .call("GET", "/deployments", &[("cookie", &admin)], "")
        .await;
    assert!(r.body.contains("id=\"dep-options\""), "{}", r.body);
    let csrf = csrf_of(&r.body);
    let base = format!("csrf={csrf}&target=all&patch=openssl%3D3.0.2-1");
    // The site refuses a zone it does not know: the form again, with it.
    let r = rig
        .call(
            "POST",
            "/deployments",
            &[("cookie", &admin)],
            &format!(
                "{base}&day=sat&window_start=22%3A00&window_minutes=60&window_timezone=Mars%2FBase"
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.body.contains("id=\"dep-error\"") && r.body.contains("Mars/Base"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("value=\"Mars/Base\""),
        "kept as typed: {}",
        r.body
    );
    // A bad value never reaches the orchestrator.
    let r = rig
        .call(
            "POST",
            "/deployments",
            &[("cookie", &admin)],
            &format!("{base}&stages=100%2C50"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("Stages: &quot;100,50&quot;"), "{}", r.body);
    assert!(
        crate::deploy::store::list(&rig.store).unwrap().is_empty(),
        "nothing created"
    );
    let r = rig
        .call(
            "POST",
            "/deployments",
            &[("cookie", &admin)],
            &format!("{base}&stages=50%2C100&min_success_pct=90&min_finished=1&soak_minutes=0&deadline_minutes=30&reboot=never&snapshot=no"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let at = r.headers[header::LOCATION].to_str().unwrap().to_string();
    let id = at.rsplit('/').next().unwrap().to_string();
    let stored = crate::deploy::store::get(&rig.store, &id).unwrap().unwrap();
    let spec = &stored.deployment.spec;
    assert_eq!(spec.stages, vec![50, 100]);
    assert_eq!(spec.gate.min_success_pct, 90);
    assert_eq!(spec.gate.soak_ms, 0);
    assert_eq!(spec.install_deadline_ms, 1_800_000);
    let o = stored.options.expect("options stored");
    assert_eq!(o.reboot, outpost_patch::install::wire::RebootPolicy::Never);
    assert!(!o.snapshot);

    // The install failed (no device link): the device has its own
    // rollback button; stage 3 does not exist.
    let r = rig.call("GET", &at, &[("cookie", &tess)], "").await;
    assert!(
        r.body.contains(&format!("value=\"device:{DEV}\""))
            && r.body.contains("id=\"resume-patches\""),
        "{}",
        r.body
    );
    let csrf = csrf_of(&r.body);
    let r = rig
        .call(
            "POST",
            &format!("{at}/rollback"),
            &[("cookie", &tess)],
            &format!("csrf={csrf}&scope=stage%3A3"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = rig
        .call(
            "POST",
            &format!("{at}/rollback"),
            &[("cookie", &tess)],
            &format!("csrf={csrf}&scope=device%3A{DEV}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = rig.call("GET", &at, &[("cookie", &tess)], "").await;
    assert!(
        r.body.contains(&format!(
            "data-device=\"{DEV}\" data-state=\"rolling_back\""
        )) || r.body.contains(&format!(
            "data-device=\"{DEV}\" data-state=\"rollback_failed\""
        )),
        "the device's rollback was taken: {}",
        r.body
    );
    let r = rig
        .call(
            "POST",
            &format!("{at}/resume"),
            &[("cookie", &tess)],
            &format!("csrf={csrf}&patches=openssl"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "not PKG=VERSION");
}

/// A bulk run's page offers Cancel to technicians while the run is open:
/// the cancel goes through the command service (its queued members are
/// cancelled, the run says who cancelled it, the button is gone); a
/// viewer sees no button and its POST (its own token) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technicians_cancel_a_bulk_run_from_its_page_and_viewers_cannot() {
    let rig = rig().await;
    put_script(&rig, "hello", 1);
    rig.add_user("tess", Role::Technician).await;
    rig.add_user("vera", Role::Viewer).await;
    let tess = rig.sign_in("tess", "correct+horse+battery").await;
    let vera = rig.sign_in("vera", "correct+horse+battery").await;
    let r = rig.call("GET", "/devices", &[("cookie", &tess)], "").await;
    let csrf = csrf_of(&r.body);
    let r = rig
        .call(
            "POST",
            "/devices/bulk",
            &[("cookie", &tess)],
            &format!("csrf={csrf}&action=run&script=hello&device=local%2F000000000000002a"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let at = r.headers[header::LOCATION].to_str().unwrap().to_string();
    let run = rig.commands.list_runs(10).unwrap().remove(0);
    // The viewer: no button; its own token is refused; nothing changes.
    let r = rig.call("GET", &at, &[("cookie", &vera)], "").await;
    assert!(!r.body.contains("cancel-bulk"), "{}", r.body);
    let vcsrf = csrf_of(&r.body);
    let r = rig
        .call(
            "POST",
            &format!("{at}/cancel"),
            &[("cookie", &vera)],
            &format!("csrf={vcsrf}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        rig.commands
            .get_run(run.id)
            .unwrap()
            .unwrap()
            .cancelled
            .is_none()
    );
    // The technician cancels from the page.
    let r = rig.call("GET", &at, &[("cookie", &tess)], "").await;
    assert!(r.body.contains("id=\"cancel-bulk\""), "{}", r.body);
    let r = rig
        .call(
            "POST",
            &format!("{at}/cancel"),
            &[("cookie", &tess)],
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let stored = rig.commands.get_run(run.id).unwrap().unwrap();
    assert_eq!(stored.cancelled.map(|c| c.1), Some("tess".to_string()));
    let r = rig.call("GET", &at, &[("cookie", &tess)], "").await;
    assert!(
        r.body.contains("cancelled by tess") && !r.body.contains("id=\"cancel-bulk\""),
        "{}",
        r.body
    );
    assert!(r.body.contains("1 cancelled"), "{}", r.body);
    // An unknown run: 404.
    let r = rig
        .call(
            "POST",
            "/commands/bulk/00000000000000000000000000000000/cancel",
            &[("cookie", &tess)],
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
