//! Two central instances (two `Central`s, each with its own pool and its
//! own downlink notice connection) over one PostgreSQL database: what a
//! user or a site sees must not depend on which instance answers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use outpost_proto::SiteId;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::Central;
use crate::downlink::Down;
use crate::model::Role;
use crate::ops;

struct Pair {
    a: Arc<Central>,
    b: Arc<Central>,
    site: SiteId,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    _stop: tokio_util::sync::DropGuard,
}

async fn instance(
    url: &str,
    limits: crate::CentralLimits,
    shutdown: &tokio_util::sync::CancellationToken,
) -> (Arc<Central>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let keys = crate::dir::CentralDir(dir.path().join("central"))
        .init_or_load()
        .unwrap();
    let store = Arc::new(
        super::PgCentralStore::connect(url, Default::default())
            .await
            .unwrap(),
    );
    let c = Arc::new(Central::with_limits(store, keys, shutdown.clone(), limits));
    let mut listening = super::bus::start(url.to_string(), &c, shutdown.clone());
    tokio::time::timeout(Duration::from_secs(10), listening.wait_for(|l| *l))
        .await
        .expect("listening within 10 s")
        .unwrap();
    (c, dir)
}

/// Instances A and B over a fresh database, tenant `msp` with one site
/// (customer `dental`) and the sample device; `None` (test skipped) when
/// PostgreSQL is not installed.
async fn pair(test: &str, limits: crate::CentralLimits) -> Option<Pair> {
    let cluster = tokio::task::spawn_blocking({
        let test = test.to_string();
        move || super::cluster::TestCluster::shared_or_skip(&test)
    })
    .await
    .unwrap()?;
    let url = cluster.fresh_database().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (a, da) = instance(&url, limits.clone(), &stop).await;
    let (b, db) = instance(&url, limits, &stop).await;
    let site = ops::add_site(
        a.store.as_ref(),
        &ops::AddSite {
            tenant: "msp".into(),
            customer: "dental".into(),
            site: "main".into(),
        },
        1,
    )
    .await
    .unwrap()
    .site_id;
    a.store
        .apply_batch(
            &"msp".into(),
            &site,
            crate::testing::batch_of(&site, 1),
            crate::now_ms(),
        )
        .await
        .unwrap();
    Some(Pair {
        a,
        b,
        site,
        _dirs: (da, db),
        _stop: stop.drop_guard(),
    })
}

async fn token(c: &Central, tenant: &str, role: Role) -> String {
    ops::create_token(
        c.store.as_ref(),
        &ops::CreateToken {
            tenant: tenant.into(),
            role,
            customers: vec![],
            ttl: None,
        },
        1,
    )
    .await
    .unwrap()
}

/// One request: (status, headers, JSON body or Null).
async fn call(
    c: &Arc<Central>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = crate::api::router(c.clone())
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let st = resp.status().as_u16();
    let h = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (st, h, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn login(c: &Arc<Central>, user: &str, password: &str) -> (u16, axum::http::HeaderMap) {
    let (st, h, _) = call(
        c,
        "POST",
        "/api/v1/login",
        &[],
        Some(json!({"tenant": "msp", "username": user, "password": password})),
    )
    .await;
    (st, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_instance_works_on_the_other_and_failed_logins_count_on_both() {
    let mut limits = crate::CentralLimits::default();
    limits.login.per_user.burst = 3;
    let Some(p) = pair("multi_session", limits).await else {
        return;
    };
    let admin = token(&p.a, "msp", Role::Admin).await;
    let auth = format!("Bearer {admin}");
    let (st, _, v) = call(
        &p.a,
        "POST",
        "/api/v1/users",
        &[("authorization", &auth)],
        Some(json!({"name": "alice", "role": "viewer", "password": "correct horse"})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, h) = login(&p.a, "alice", "correct horse").await;
    assert_eq!(st, 200);
    let cookie = h[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (st, _, me) = call(&p.b, "GET", "/api/v1/me", &[("cookie", &cookie)], None).await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["name"], "alice", "{me}");
    // Logging out on B ends the session on A too.
    let (st, _, _) = call(&p.b, "POST", "/api/v1/logout", &[("cookie", &cookie)], None).await;
    assert!(st < 300, "{st}");
    let (st, _, _) = call(&p.a, "GET", "/api/v1/me", &[("cookie", &cookie)], None).await;
    assert_eq!(st, 401);
    // Failures spread over both instances count together: two on A and
    // one on B reach the burst of 3, so the next try on either is 429.
    assert_eq!(login(&p.a, "alice", "wrong").await.0, 401);
    assert_eq!(login(&p.a, "alice", "wrong").await.0, 401);
    assert_eq!(login(&p.b, "alice", "wrong").await.0, 401);
    assert_eq!(login(&p.a, "alice", "correct horse").await.0, 429);
    assert_eq!(login(&p.b, "alice", "correct horse").await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_created_on_one_instance_reaches_the_site_connected_to_the_other_within_a_second()
{
    let Some(p) = pair("multi_downlink", Default::default()).await else {
        return;
    };
    // The site's stream is on B.
    let (_conn, rx) = p.b.downlinks.register(
        &"msp".into(),
        &p.site,
        outpost_uplink::wire::COMMANDS_PROTOCOL_VERSION,
    );
    let mut rx = rx.expect("a downlink");
    let tech = token(&p.a, "msp", Role::Technician).await;
    let auth = format!("Bearer {tech}");
    let (st, _, v) = call(
        &p.a,
        "POST",
        "/api/v1/commands",
        &[("authorization", &auth)],
        Some(json!({"site": p.site, "device": "000000000000002a",
                    "command": "echo hi", "timeout_ms": 60000})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id: outpost_proto::ids::CommandId = v["id"].as_str().unwrap().parse().unwrap();
    let got = tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .expect("delivered through B within a second");
    assert_eq!(got, Some(Down::Command(id)));
    // And its cancel, made on A, too.
    let (st, _, v) = call(
        &p.a,
        "POST",
        &format!("/api/v1/commands/{id}/cancel"),
        &[("authorization", &auth)],
        None,
    )
    .await;
    assert!(st < 300, "{st} {v}");
    let got = tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .expect("the cancel within a second");
    assert!(
        matches!(got, Some(Down::Cancel { id: c, .. }) if c == id),
        "{got:?}"
    );
    // B counts a notice before handing it to the stream.
    let m = p.b.metrics.encode(false);
    assert!(
        m.contains("outpost_central_downlink_notices_total{reason=\"received\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_of_one_tenant_sees_none_of_another_tenants_rows_on_either_instance() {
    let Some(p) = pair("multi_tenants", Default::default()).await else {
        return;
    };
    // Tenant `zeta` with its own site and device, written through B.
    let zsite = ops::add_site(
        p.b.store.as_ref(),
        &ops::AddSite {
            tenant: "zeta".into(),
            customer: "bank".into(),
            site: "hq".into(),
        },
        1,
    )
    .await
    .unwrap()
    .site_id;
    let mut zb = crate::testing::sample_batch(1);
    (zb.site, zb.tenant) = (zsite.clone(), "zeta".into());
    zb.devices[0].customer = "bank".into();
    zb.devices[0].hostname = "zeta-vault".into();
    p.b.store
        .apply_batch(&"zeta".into(), &zsite, zb, crate::now_ms())
        .await
        .unwrap();
    let viewer = token(&p.a, "msp", Role::Viewer).await;
    let auth = format!("Bearer {viewer}");
    for c in [&p.a, &p.b] {
        let (st, _, v) = call(
            c,
            "GET",
            "/api/v1/devices",
            &[("authorization", &auth)],
            None,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert!(!v.to_string().contains("zeta"), "{v}");
        assert!(v.to_string().contains("web-1"), "its own device: {v}");
        for uri in [
            format!("/api/v1/devices?site={zsite}"),
            "/api/v1/devices?q=zeta-vault".to_string(),
            "/api/v1/devices?tenant=zeta".to_string(),
            "/api/v1/devices?customer=bank".to_string(),
        ] {
            let (st, _, v) = call(c, "GET", &uri, &[("authorization", &auth)], None).await;
            assert!(!v.to_string().contains("zeta-vault"), "{uri}: {st} {v}");
        }
        let (st, _, v) = call(
            c,
            "GET",
            &format!("/api/v1/sites/{zsite}"),
            &[("authorization", &auth)],
            None,
        )
        .await;
        assert_eq!(st, 404, "{v}");
    }
}
