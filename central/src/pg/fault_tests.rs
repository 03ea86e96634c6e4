//! PostgreSQL failing under a running central (a server of the test's
//! own, killed with `pg_ctl stop -m immediate` and started again): the
//! API answers 503 with a clear message instead of 500 or a hang,
//! `/healthz` answers 503 with the reason, a batch is refused (never
//! acknowledged) while the database is down, and everything recovers
//! without restarting central.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use outpost_uplink::batch::{DEFAULT_ZSTD_LEVEL, encode};
use outpost_uplink::wire::{CentralFrame, RejectReason};
use serde_json::Value;
use tower::ServiceExt;

use crate::Central;
use crate::model::Role;

/// GET `uri` (with `auth`): status, Retry-After, body text.
async fn get(c: &Arc<Central>, uri: &str, auth: Option<&str>) -> (u16, Option<String>, String) {
    let mut req = Request::builder().uri(uri);
    if let Some(a) = auth {
        req = req.header("authorization", format!("Bearer {a}"));
    }
    let started = Instant::now();
    let resp = crate::api::router(c.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    // Bounded: the pool's wait (300 ms here) plus the health check's.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{uri} took {:?}",
        started.elapsed()
    );
    let st = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (st, retry, String::from_utf8_lossy(&bytes).into_owned())
}

async fn batch(c: &Arc<Central>, site: &outpost_proto::SiteId, seq: u64) -> CentralFrame {
    let payload = encode(&crate::testing::batch_of(site, seq), DEFAULT_ZSTD_LEVEL).unwrap();
    crate::receiver::answer_batch(c, &"msp".into(), site, seq, payload).await
}

/// Polls `f` every 100 ms until it holds (at most `within`).
async fn until<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_the_api_and_healthz_answer_503_batches_are_not_acked_and_all_recovers_without_restart()
 {
    let Some(cluster) = tokio::task::spawn_blocking(|| {
        super::cluster::TestCluster::own_or_skip("database_down_503")
    })
    .await
    .unwrap() else {
        return;
    };
    let url = cluster.fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = crate::dir::CentralDir(dir.path().join("central"))
        .init_or_load()
        .unwrap();
    let store = Arc::new(
        super::PgCentralStore::connect(
            &url,
            super::PgOptions {
                pool_size: 4,
                statement_timeout_ms: 2_000,
                pool_wait_ms: 300,
            },
        )
        .await
        .unwrap(),
    );
    let c = Arc::new(Central::with_limits(
        store,
        keys,
        tokio_util::sync::CancellationToken::new(),
        Default::default(),
    ));
    let site = crate::ops::add_site(
        c.store.as_ref(),
        &crate::ops::AddSite {
            tenant: "msp".into(),
            customer: "dental".into(),
            site: "main".into(),
        },
        1,
    )
    .await
    .unwrap()
    .site_id;
    let token = crate::testing::token(&c, "msp", Role::Admin, &[]).await;
    assert!(matches!(
        batch(&c, &site, 1).await,
        CentralFrame::Ack { seq: 1 }
    ));
    assert_eq!(get(&c, "/healthz", None).await.0, 200);
    assert_eq!(get(&c, "/api/v1/sites", Some(&token)).await.0, 200);

    let stop = tokio::task::spawn_blocking(move || {
        cluster.stop_immediately();
        cluster
    });
    let cluster = stop.await.unwrap();

    // Down: 503 with the reason, quickly; the batch is refused as
    // "internal" (the site keeps it and sends it again), never acked.
    let (st, retry, body) = get(&c, "/healthz", None).await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("central storage unavailable"), "{body}");
    let (st, retry_api, body) = get(&c, "/api/v1/sites", Some(&token)).await;
    assert_eq!(st, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("central storage unavailable: postgresql"),
        "{v}"
    );
    assert_eq!(retry_api.as_deref(), Some("5"));
    assert_eq!(retry, None, "healthz is for probes, no Retry-After");
    let (st, _, body) = get(&c, "/api/v1/devices", Some(&token)).await;
    assert_eq!(st, 503, "{body}");
    match batch(&c, &site, 2).await {
        CentralFrame::Reject { seq: 2, reason, .. } => assert_eq!(reason, RejectReason::Internal),
        other => panic!("a batch was answered {other:?} with the database down"),
    }
    let metrics = c.metrics.encode(false);
    let unavailable = metrics
        .lines()
        .find_map(|l| l.strip_prefix("outpost_central_store_errors_total{reason=\"unavailable\"} "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(unavailable >= 3, "{metrics}");

    // Back: the same central serves again, the refused batch is applied
    // when sent again, and nothing applied before is lost.
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart();
        cluster
    })
    .await
    .unwrap();
    until(Duration::from_secs(30), "healthz 200", || async {
        get(&c, "/healthz", None).await.0 == 200
    })
    .await;
    until(Duration::from_secs(30), "the API answering 200", || async {
        get(&c, "/api/v1/sites", Some(&token)).await.0 == 200
    })
    .await;
    assert!(matches!(
        batch(&c, &site, 2).await,
        CentralFrame::Ack { seq: 2 }
    ));
    let s = c.store.site(&"msp".into(), &site).await.unwrap().unwrap();
    assert!(s.is_applied(1) && s.is_applied(2), "{s:?}");
    drop(cluster);
}

/// A console request (`cookie`, a form `body` for a POST): status,
/// headers, page.
async fn page(
    c: &Arc<Central>,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
    body: &str,
) -> (u16, axum::http::HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ck) = cookie {
        req = req.header("cookie", ck);
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let started = Instant::now();
    let resp = crate::api::router(c.clone())
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{uri} took {:?}",
        started.elapsed()
    );
    let st = resp.status().as_u16();
    let h = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    (st, h, String::from_utf8_lossy(&bytes).into_owned())
}

/// While PostgreSQL is down, a signed-in technician's console pages
/// answer 503 with a page that names the outage and says it retries
/// (`Retry-After` and `Refresh`: it reloads by itself, no script), not
/// 500; once the server is back the same central serves them again.
/// Failed before the fix: 500 "Something failed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_console_pages_answer_503_and_retry_then_200_without_restart() {
    let Some(cluster) = tokio::task::spawn_blocking(|| {
        super::cluster::TestCluster::own_or_skip("console_down_503")
    })
    .await
    .unwrap() else {
        return;
    };
    let url = cluster.fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = crate::dir::CentralDir(dir.path().join("central"))
        .init_or_load()
        .unwrap();
    let store = Arc::new(
        super::PgCentralStore::connect(
            &url,
            super::PgOptions {
                pool_size: 4,
                statement_timeout_ms: 2_000,
                pool_wait_ms: 300,
            },
        )
        .await
        .unwrap(),
    );
    let c = Arc::new(Central::with_limits(
        store,
        keys,
        tokio_util::sync::CancellationToken::new(),
        Default::default(),
    ));
    let site = crate::ops::add_site(
        c.store.as_ref(),
        &crate::ops::AddSite {
            tenant: "msp".into(),
            customer: "dental".into(),
            site: "main".into(),
        },
        1,
    )
    .await
    .unwrap()
    .site_id;
    assert!(matches!(
        batch(&c, &site, 1).await,
        CentralFrame::Ack { seq: 1 }
    ));
    crate::ops::add_user(
        c.store.as_ref(),
        &crate::ops::AddUser {
            tenant: "msp".into(),
            name: "tess".into(),
            role: Role::Technician,
            customers: vec![],
            password: "correct horse battery".into(),
        },
        1,
        &c.passwords,
    )
    .await
    .unwrap();
    let (st, h, body) = page(
        &c,
        "POST",
        "/login",
        None,
        "tenant=msp&username=tess&password=correct+horse+battery",
    )
    .await;
    assert_eq!(st, 303, "{body}");
    let cookie = h["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let uris = ["/", "/devices", "/alerts", "/deployments"];
    for uri in uris {
        let (st, _, body) = page(&c, "GET", uri, Some(&cookie), "").await;
        assert_eq!(st, 200, "{uri}: {body}");
    }

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop_immediately();
        cluster
    })
    .await
    .unwrap();
    for uri in uris {
        let (st, h, body) = page(&c, "GET", uri, Some(&cookie), "").await;
        assert_eq!(st, 503, "{uri}: {body}");
        assert_eq!(h["retry-after"], "5", "{uri}");
        assert_eq!(h["refresh"], "5", "{uri}: reloads by itself");
        assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
        assert!(body.contains("Temporarily unavailable"), "{uri}: {body}");
        assert!(
            body.contains("central storage unavailable: postgresql"),
            "{uri}: says what is wrong: {body}"
        );
        assert!(
            body.contains("tries again by itself every 5 seconds"),
            "{uri}: says it retries: {body}"
        );
    }

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart();
        cluster
    })
    .await
    .unwrap();
    until(
        Duration::from_secs(30),
        "the console answering 200",
        || async { page(&c, "GET", "/", Some(&cookie), "").await.0 == 200 },
    )
    .await;
    for uri in uris {
        let (st, h, body) = page(&c, "GET", uri, Some(&cookie), "").await;
        assert_eq!(st, 200, "{uri}: {body}");
        assert!(h.get("refresh").is_none(), "{uri}");
    }
    drop(cluster);
}

#[test]
fn the_pool_options_are_kept_within_their_bounds() {
    let o = super::PgOptions {
        pool_size: 0,
        statement_timeout_ms: 0,
        pool_wait_ms: u64::MAX,
    }
    .bounded();
    assert_eq!(
        (o.pool_size, o.statement_timeout_ms, o.pool_wait_ms),
        (1, 100, 60_000)
    );
    let o = super::PgOptions {
        pool_size: 1_000_000,
        statement_timeout_ms: u64::MAX,
        pool_wait_ms: 0,
    }
    .bounded();
    assert_eq!(
        (o.pool_size, o.statement_timeout_ms, o.pool_wait_ms),
        (1000, 600_000, 50)
    );
    let d = super::PgOptions::default();
    let b = d.bounded();
    assert_eq!(
        (d.pool_size, d.statement_timeout_ms, d.pool_wait_ms),
        (b.pool_size, b.statement_timeout_ms, b.pool_wait_ms)
    );
}

/// Which errors mean "retry later": a server's SQLSTATE decides, so a
/// wrong request (a unique violation) stays a 500 and never hides as 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_connection_shutdown_and_timeout_errors_count_as_unavailable() {
    let Some(cluster) = tokio::task::spawn_blocking(|| {
        super::cluster::TestCluster::shared_or_skip("unavailable_classes")
    })
    .await
    .unwrap() else {
        return;
    };
    let url = cluster.fresh_database().await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let wrong = client.simple_query("SELECT 1/0").await.unwrap_err();
    assert!(!super::is_unavailable(&wrong), "{wrong}");
    client
        .batch_execute("SET statement_timeout = 50")
        .await
        .unwrap();
    let slow = client.simple_query("SELECT pg_sleep(1)").await.unwrap_err();
    assert!(super::is_unavailable(&slow), "{slow}");
    let shutdown = client
        .simple_query("SELECT pg_terminate_backend(pg_backend_pid())")
        .await
        .unwrap_err();
    assert!(super::is_unavailable(&shutdown), "{shutdown}");
    let closed = client.simple_query("SELECT 1").await.unwrap_err();
    assert!(super::is_unavailable(&closed), "{closed}");
    let store_err = super::be(wrong);
    assert!(!store_err.is_unavailable());
    assert_eq!(crate::api::internal_error(store_err).status().as_u16(), 500);
    assert_eq!(
        crate::api::internal_error(super::be(closed))
            .status()
            .as_u16(),
        503
    );
}
