//! Start-up while the store does not answer: the retry decision with an
//! explicit clock, what is fatal, the answers while starting, and (with
//! the test PostgreSQL server) the probe's classification and a store
//! that opens once its server is back.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::*;
use crate::pg::cluster::TestCluster;

#[test]
fn the_delay_doubles_from_the_first_and_stops_at_its_bound() {
    let b = Backoff {
        first_ms: 500,
        max_ms: 30_000,
    };
    let delays: Vec<u64> = (1..=9).map(|a| b.delay_ms(a)).collect();
    assert_eq!(
        delays,
        [
            500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000
        ]
    );
    assert_eq!(b.delay_ms(u32::MAX), 30_000, "no overflow");
    assert_eq!(b.delay_ms(0), 500);
    assert_eq!(Backoff::default(), b);
}

#[test]
fn a_failure_retrying_can_fix_is_retried_after_the_delay_and_a_permanent_one_gives_up_at_once() {
    let b = Backoff::default();
    let down = OpenFailure::Retry("postgresql: no database connection".into());
    let now = 1_700_000_000_000;
    assert_eq!(
        next_step(&b, 1, now, &down),
        Next::RetryAt {
            at_ms: now + 500,
            delay_ms: 500
        }
    );
    assert_eq!(
        next_step(&b, 4, now + 10_000, &down),
        Next::RetryAt {
            at_ms: now + 14_000,
            delay_ms: 4_000
        }
    );
    // Long after: still retried, at the bound.
    assert_eq!(
        next_step(&b, 500, now + 86_400_000, &down),
        Next::RetryAt {
            at_ms: now + 86_400_000 + 30_000,
            delay_ms: 30_000
        }
    );
    let auth = OpenFailure::Fatal("PostgreSQL refused the credentials".into());
    assert_eq!(
        next_step(&b, 1, now, &auth),
        Next::GiveUp("PostgreSQL refused the credentials".into())
    );
    assert_eq!(
        next_step(&b, 7, u64::MAX, &down),
        Next::RetryAt {
            at_ms: u64::MAX,
            delay_ms: 30_000,
        }
    );
}

#[test]
fn a_schema_with_a_version_this_binary_does_not_know_is_refused() {
    let known: &[(i32, &str, &str)] = &[(1, "a", ""), (2, "b", ""), (4, "d", "")];
    assert_eq!(unknown_schema(&[], known), None, "a new database");
    assert_eq!(unknown_schema(&[1, 2], known), None, "older: migrated");
    assert_eq!(unknown_schema(&[1, 2, 4], known), None);
    let m = unknown_schema(&[1, 2, 4, 5], known).expect("refused");
    assert!(
        m.contains("version 5, newer than this outpost-central knows (4)"),
        "{m}"
    );
    // Another branch's number in between is as unknown.
    assert!(unknown_schema(&[1, 2, 3], known).is_some());
    assert!(unknown_schema(&[1], crate::pg::MIGRATIONS).is_none());
}

#[test]
fn unavailable_and_unknown_postgresql_errors_are_retried_a_newer_schema_and_rocksdb_are_not() {
    let down = anyhow::Error::new(CentralStoreError::Unavailable("no connection".into()))
        .context("opening the PostgreSQL store");
    assert!(matches!(
        classify_open_error(&down, true),
        OpenFailure::Retry(m) if m.contains("unavailable: no connection")
    ));
    let newer = anyhow::Error::new(CentralStoreError::Backend(
        unknown_schema(&[99], crate::pg::MIGRATIONS).unwrap(),
    ))
    .context("opening the PostgreSQL store");
    assert!(matches!(
        classify_open_error(&newer, true),
        OpenFailure::Fatal(_)
    ));
    let other = anyhow::anyhow!("permission denied for schema public");
    assert!(matches!(
        classify_open_error(&other, true),
        OpenFailure::Retry(_)
    ));
    let rocks = anyhow::anyhow!("IO error: lock hold by current process");
    assert!(matches!(
        classify_open_error(&rocks, false),
        OpenFailure::Fatal(_)
    ));
}

async fn get(r: &axum::Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = r
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (st, h) = (resp.status(), resp.headers().clone());
    let b = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (st, h, String::from_utf8_lossy(&b).into_owned())
}

#[tokio::test]
async fn while_starting_healthz_and_the_api_answer_503_with_the_reason_then_the_real_router() {
    let g = StartGate::new();
    let r = g.router();
    let (st, _, body) = get(&r, "/healthz").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("starting: opening the store"), "{body}");

    let now = crate::now_ms();
    g.failed(
        3,
        "postgresql: no database connection: refused",
        now + 2_000,
    );
    let (st, _, body) = get(&r, "/healthz").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.starts_with("central storage unavailable: starting: attempt 3"),
        "{body}"
    );
    assert!(body.contains("no database connection: refused"), "{body}");
    assert!(body.contains("next attempt in 2 s"), "{body}");
    let (st, h, body) = get(&r, "/api/v1/devices").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        h.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("central storage unavailable: starting"),
        "{v}"
    );
    let (st, _, body) = get(&r, "/metrics").await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        body.contains("outpost_central_starting_refusals_total{reason=\"http\"}"),
        "{body}"
    );
    assert!(!g.is_ready());

    g.set_ready(axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" })));
    assert!(g.is_ready());
    let (st, _, body) = get(&r, "/healthz").await;
    assert_eq!((st, body.as_str()), (StatusCode::OK, "ok\n"));
    let (st, _, _) = get(&r, "/api/v1/devices").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "the real router answers");
}

#[tokio::test]
async fn a_shutdown_while_waiting_for_the_store_ends_start_up_without_an_error() {
    // A port nothing listens on: every attempt fails and is retried.
    let loc = StoreLocation::parse("postgres://outpost@127.0.0.1:1/none", 2, 1_000)
        .unwrap()
        .with_pool_wait_ms(200);
    let g = StartGate::new();
    let sd = CancellationToken::new();
    let (sd2, g2) = (sd.clone(), g.clone());
    let stop = tokio::spawn(async move {
        // Until two attempts failed.
        for _ in 0..200 {
            if g2.reason(0).contains("attempt 2") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        sd2.cancel();
    });
    let b = Backoff {
        first_ms: 50,
        max_ms: 100,
    };
    let r = tokio::time::timeout(Duration::from_secs(20), open_store(&loc, &g, &b, &sd))
        .await
        .expect("start-up ends");
    stop.await.unwrap();
    assert!(matches!(r, Ok(None)), "{:?}", r.map(|s| s.is_some()));
    assert!(g.reason(0).contains("attempt 2"), "{}", g.reason(0));
}

fn own_cluster(test: &'static str) -> Option<TestCluster> {
    TestCluster::own_or_skip(test)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_refuses_a_bad_url_refused_credentials_and_a_newer_schema_and_retries_a_stopped_server()
 {
    let Some(pg) = tokio::task::spawn_blocking(|| own_cluster("startup_probe"))
        .await
        .unwrap()
    else {
        return;
    };
    let db = pg.create_database().await;
    let url = pg.postgres_url(&db);
    let wait = Duration::from_secs(5);
    probe(&url, wait).await.expect("a fresh database is fine");

    let bad = probe(
        "postgres://a@b/c?sslmode=verify-full&sslrootcert=/nonexistent",
        wait,
    )
    .await;
    assert!(
        matches!(&bad, Err(OpenFailure::Fatal(m)) if m.contains("--store URL is not usable")),
        "{bad:?}"
    );
    let stranger = url.replace(&format!("user={}", pg.user), "user=nobody_here");
    assert_ne!(stranger, url);
    let r = probe(&stranger, wait).await;
    assert!(
        matches!(&r, Err(OpenFailure::Fatal(m)) if m.contains("refused the credentials")),
        "{r:?}"
    );

    // A schema a newer binary migrated.
    let store = crate::pg::PgCentralStore::connect(&url, Default::default())
        .await
        .unwrap();
    drop(store);
    let (client, conn) = tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    client
        .execute(
            "INSERT INTO outpost_schema_version (version, name, applied_ms) VALUES (9999, 'future', 0)",
            &[],
        )
        .await
        .unwrap();
    let r = probe(&url, wait).await;
    assert!(
        matches!(&r, Err(OpenFailure::Fatal(m)) if m.contains("version 9999, newer")),
        "{r:?}"
    );
    let loc = StoreLocation::parse(&url, 2, 5_000).unwrap();
    let g = StartGate::new();
    let r = open_store(&loc, &g, &Backoff::default(), &CancellationToken::new()).await;
    assert!(
        r.as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("newer")),
        "{:?}",
        r.map(|s| s.is_some())
    );
    client
        .execute(
            "DELETE FROM outpost_schema_version WHERE version = 9999",
            &[],
        )
        .await
        .unwrap();
    drop(client);
    let _ = task.await;

    let pg = Arc::new(pg);
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop_immediately())
        .await
        .unwrap();
    let r = probe(&url, Duration::from_millis(500)).await;
    assert!(matches!(&r, Err(OpenFailure::Retry(_))), "{r:?}");

    // The store opens by itself once the server is back.
    let p = pg.clone();
    let back = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(1_500));
        p.restart();
    });
    let loc = StoreLocation::parse(&url, 2, 5_000)
        .unwrap()
        .with_pool_wait_ms(300);
    let g = StartGate::new();
    let b = Backoff {
        first_ms: 100,
        max_ms: 400,
    };
    let store = tokio::time::timeout(
        Duration::from_secs(60),
        open_store(&loc, &g, &b, &CancellationToken::new()),
    )
    .await
    .expect("opened within a minute")
    .expect("no fatal error")
    .expect("not shut down");
    back.await.unwrap();
    assert!(
        g.reason(0).contains("attempt"),
        "it failed first: {}",
        g.reason(0)
    );
    store.check().await.expect("the store answers");
}
