//! Server time of the deployments list, one deployment's page and the
//! device list at MSP scale, on either store: 1,000 central deployments
//! (one site each, 100 devices in each site's progress report, a pause
//! on every fourth) plus 100 deployments made at sites, over 100,000
//! devices across 1,000 sites (seeded through the store's apply path),
//! timed through the API router in process (routing, reads, JSON).
//!
//! Ignored tests (a minute or more of seeding), run on purpose:
//! `cargo test -p outpost-central --lib deploy_bench -- --ignored --nocapture --test-threads 1`
//! (`OUTPOST_BENCH_SITES`, `OUTPOST_BENCH_DEPLOYMENTS` scale it down).
//! Prints `RESULT` lines like `outpost-bench`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use outpost_uplink::deploy_link::DeployOrderKind;
use tower::ServiceExt;

use crate::Central;
use crate::deploy::{Delivery, OrderRecord, SiteDeploymentRecord};
use crate::model::{JoinTokenRecord, Role, SiteRecord};
use crate::pg::fleet_bench::{batch, site_id};
use crate::store::CentralStore;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn customer(s: u64) -> String {
    format!("customer-{:03}", s % 100)
}

/// A site's progress report of `dep` over its 100 devices.
fn progress_view(s: u64, dep: &str, created_ms: u64) -> String {
    let devices: Vec<serde_json::Value> = (0..100u64)
        .map(|d| {
            serde_json::json!({
                "device": format!("{:016x}", (s << 20) | d),
                "stage": d % 4,
                "state": if d % 17 == 3 { "failed" } else { "succeeded" },
                "attempt": 1,
                "reason": if d % 17 == 3 { Some("dpkg: error processing package openssl") } else { None },
            })
        })
        .collect();
    serde_json::json!({
        "summary": {"id": dep, "phase": "completed", "stage": 3, "stages": 4, "devices": 100,
                    "succeeded": 94, "failed": 6, "created_at_ms": created_ms,
                    "created_by": "ann@central"},
        "stages": [{"figures": {"devices": 1}}, {"figures": {"devices": 10}},
                   {"figures": {"devices": 50}}, {"figures": {"devices": 100}}],
        "devices": devices,
    })
    .to_string()
}

async fn seed(st: &Arc<dyn CentralStore>, sites: u64, deployments: u64) {
    let now = crate::now_ms();
    let t0 = Instant::now();
    for s in 0..sites {
        let site = SiteRecord {
            joined_ms: 1,
            interval_ms: 60_000,
            ..SiteRecord::new(
                "acme".into(),
                customer(s).into(),
                site_id(s).into(),
                format!("Site {s:04}"),
                1,
            )
        };
        let tok = JoinTokenRecord {
            tenant: "acme".into(),
            site_id: site.site_id.clone(),
            expires_ms: 0,
        };
        st.create_site(
            &site,
            &outpost_proto::pki::sha256(site.site_id.as_bytes()),
            &tok,
        )
        .await
        .unwrap();
        st.apply_batch(&"acme".into(), &site.site_id, batch(s, 100, now), now)
            .await
            .unwrap();
    }
    let seeded_devices = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let audit = crate::commands::AuditRow {
        at_ms: now,
        tenant: "acme".into(),
        actor: "ann".into(),
        action: "deployment.create".into(),
        target: String::new(),
        detail: String::new(),
    };
    for d in 0..deployments {
        let s = d % sites;
        let dep = format!("cdep-{d:08x}");
        let created = now - (deployments - d) * 60_000;
        let mut o = OrderRecord {
            tenant: "acme".into(),
            id: format!("ord-{d:016x}"),
            created_ms: created,
            created_by: "ann".into(),
            deployment: Some(dep.clone()),
            sites: vec![site_id(s).into()],
            customers: vec![customer(s).into()],
            kind: DeployOrderKind::CreateDeployment {
                request_json: serde_json::json!({"id": dep, "target": {"type": "all"},
                    "patches": ["openssl=3.0.15-1~deb12u1"]})
                .to_string(),
            },
        };
        let dl: Vec<Delivery> = o.sites.iter().map(|x| Delivery::queued(&o, x)).collect();
        st.create_order(&o, &dl, &audit).await.unwrap();
        if d % 4 == 0 {
            o.id = format!("ord-p{d:015x}");
            o.created_ms += 1_000;
            o.kind = DeployOrderKind::Act {
                deployment: dep.clone(),
                action: "pause".into(),
                body_json: "{}".into(),
            };
            let dl: Vec<Delivery> = o.sites.iter().map(|x| Delivery::queued(&o, x)).collect();
            st.create_order(&o, &dl, &audit).await.unwrap();
        }
        st.put_site_deployment(&SiteDeploymentRecord {
            tenant: "acme".into(),
            site: site_id(s).into(),
            customer: customer(s).into(),
            deployment: dep.clone(),
            from_central: true,
            updated_at_ms: created + 5_000,
            received_ms: created + 5_000,
            view_json: progress_view(s, &dep, created),
        })
        .await
        .unwrap();
    }
    for d in 0..deployments / 10 {
        let s = (d * 7) % sites;
        let dep = format!("dep-site-{d:04}");
        let created = now - (deployments - d * 10) * 60_000 + 30_000;
        st.put_site_deployment(&SiteDeploymentRecord {
            tenant: "acme".into(),
            site: site_id(s).into(),
            customer: customer(s).into(),
            deployment: dep.clone(),
            from_central: false,
            updated_at_ms: created + 5_000,
            received_ms: created + 5_000,
            view_json: progress_view(s, &dep, created),
        })
        .await
        .unwrap();
    }
    println!(
        "RESULT deploy_bench_seed devices={} sites={sites} deployments={deployments} \
         devices_s={seeded_devices:.1} deployments_s={:.1}",
        sites * 100,
        t1.elapsed().as_secs_f64()
    );
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// GETs `uri(i)` `n` times (after 2 warm-ups) and prints the times.
async fn time(
    c: &Arc<Central>,
    token: &str,
    scenario: &str,
    n: usize,
    uri: impl Fn(usize) -> String,
) {
    let mut ms = Vec::with_capacity(n);
    let mut bytes = 0;
    for i in 0..n + 2 {
        let req = Request::builder()
            .uri(uri(i))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let t = Instant::now();
        let resp = crate::api::router(c.clone()).oneshot(req).await.unwrap();
        let st = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 30)
            .await
            .unwrap();
        let took = t.elapsed().as_secs_f64() * 1000.0;
        assert!(st.is_success(), "{}: {st}", uri(i));
        if i >= 2 {
            ms.push(took);
            bytes = body.len();
        }
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "RESULT {scenario} requests={n} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} body_bytes={bytes}",
        pct(&ms, 0.5),
        pct(&ms, 0.99),
        pct(&ms, 1.0)
    );
}

/// Seeds `st`, then times each scenario; `analyze`: a PostgreSQL URL
/// to gather planner statistics at (as autovacuum would after a load).
async fn run(st: Arc<dyn CentralStore>, label: &str, analyze: Option<&str>) {
    let sites = env("OUTPOST_BENCH_SITES", 1000);
    let deployments = env("OUTPOST_BENCH_DEPLOYMENTS", 1000);
    seed(&st, sites, deployments).await;
    if let Some(url) = analyze {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute("ANALYZE").await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = crate::dir::CentralDir(dir.path().join("central"))
        .init_or_load()
        .unwrap();
    let c = Arc::new(Central::with_limits(
        st,
        keys,
        tokio_util::sync::CancellationToken::new(),
        Default::default(),
    ));
    let token = crate::testing::token(&c, "acme", Role::Admin, &[]).await;
    let dep = |i: usize| format!("cdep-{:08x}", (i as u64 * 7919) % deployments);
    time(&c, &token, &format!("{label}_deployments_all"), 10, |_| {
        "/api/v1/deployments".into()
    })
    .await;
    time(
        &c,
        &token,
        &format!("{label}_deployments_page50"),
        50,
        |_| "/api/v1/deployments?limit=50".into(),
    )
    .await;
    time(&c, &token, &format!("{label}_deployment_show"), 50, |i| {
        format!("/api/v1/deployments/{}", dep(i))
    })
    .await;
    time(&c, &token, &format!("{label}_devices_page100"), 50, |_| {
        "/api/v1/devices?limit=100".into()
    })
    .await;
    time(&c, &token, &format!("{label}_devices_page1000"), 20, |_| {
        "/api/v1/devices?limit=1000".into()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute of seeding; run on purpose (see the module docs)"]
async fn rocks_deployments_and_device_list_at_scale() {
    let dir = tempfile::tempdir().unwrap();
    let st = Arc::new(crate::rocks::RocksCentralStore::open(&dir.path().join("db")).unwrap());
    run(st, "rocks", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes of seeding; run on purpose (see the module docs)"]
async fn pg_deployments_and_device_list_at_scale() {
    let Some(c) = tokio::task::spawn_blocking(|| {
        crate::pg::cluster::TestCluster::shared_or_skip("deploy_bench")
    })
    .await
    .unwrap() else {
        return;
    };
    let url = c.fresh_database().await;
    let st = Arc::new(
        crate::pg::PgCentralStore::connect(&url, Default::default())
            .await
            .unwrap(),
    );
    run(st, "pg", Some(&url)).await;
}
