//! The notice connection between central instances ([`super::bus`]):
//! reconnecting after it was killed, and the console's live changes of
//! one instance reaching the pages of another.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use outpost_uplink::wire::CentralFrame;
use serde_json::Value;
use tower::ServiceExt;

use crate::Central;
use crate::model::Role;

struct Instances {
    a: Arc<Central>,
    b: Arc<Central>,
    url: String,
    site: outpost_proto::SiteId,
    /// B's listener state.
    listening: tokio::sync::watch::Receiver<bool>,
    _dirs: Vec<tempfile::TempDir>,
    _stop: tokio_util::sync::DropGuard,
}

/// Instances A and B over a fresh database of the shared test server,
/// B with its notice listener (A with one too when `a_listens`), tenant
/// `msp` with one site; `None` when PostgreSQL is not installed.
async fn instances(test: &str, a_listens: bool) -> Option<Instances> {
    let test = test.to_string();
    let cluster =
        tokio::task::spawn_blocking(move || super::cluster::TestCluster::shared_or_skip(&test))
            .await
            .unwrap()?;
    let url = cluster.fresh_database().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut dirs = Vec::new();
    let central = async |dirs: &mut Vec<tempfile::TempDir>| {
        let dir = tempfile::tempdir().unwrap();
        let keys = crate::dir::CentralDir(dir.path().join("central"))
            .init_or_load()
            .unwrap();
        dirs.push(dir);
        Arc::new(Central::with_limits(
            Arc::new(
                super::PgCentralStore::connect(&url, Default::default())
                    .await
                    .unwrap(),
            ),
            keys,
            stop.clone(),
            Default::default(),
        ))
    };
    let a = central(&mut dirs).await;
    let b = central(&mut dirs).await;
    let mut listening = super::bus::start(url.clone(), &b, stop.clone());
    tokio::time::timeout(Duration::from_secs(10), listening.wait_for(|l| *l))
        .await
        .expect("listening within 10 s")
        .unwrap();
    if a_listens {
        let mut la = super::bus::start(url.clone(), &a, stop.clone());
        tokio::time::timeout(Duration::from_secs(10), la.wait_for(|l| *l))
            .await
            .expect("listening within 10 s")
            .unwrap();
    }
    let site = crate::ops::add_site(
        a.store.as_ref(),
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
    Some(Instances {
        a,
        b,
        url,
        site,
        listening,
        _dirs: dirs,
        _stop: stop.drop_guard(),
    })
}

/// The notice listener's connection is killed (`pg_terminate_backend`)
/// and a command is created while it is down (its notice goes nowhere):
/// when the listener is back, the site stream held by this instance is
/// asked to send its open work again, and that work holds the command.
/// Fails without the reopen on reconnect (nothing reaches the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_notice_listener_reconnects_site_streams_resend_work_noticed_meanwhile() {
    // A without a listener: its notices are lost as if B were not
    // listening. B holds the site's stream.
    let Some(Instances {
        a,
        b,
        url,
        site,
        mut listening,
        _dirs,
        _stop,
    }) = instances("listener_reconnect", false).await
    else {
        return;
    };
    a.store
        .apply_batch(
            &"msp".into(),
            &site,
            crate::testing::batch_of(&site, 1),
            crate::now_ms(),
        )
        .await
        .unwrap();
    let (_conn, rx) = b.downlinks.register(
        &"msp".into(),
        &site,
        outpost_uplink::wire::COMMANDS_PROTOCOL_VERSION,
    );
    let mut rx = rx.expect("a downlink");

    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'outpost-central downlink'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1);
    tokio::time::timeout(Duration::from_secs(10), listening.wait_for(|l| !*l))
        .await
        .expect("the listener notices within 10 s")
        .unwrap();

    // Meanwhile, a command for the site (created on A).
    let tech = crate::testing::token(&a, "msp", Role::Technician, &[]).await;
    let resp = crate::api::router(a.clone())
        .oneshot(
            Request::post("/api/v1/commands")
                .header("authorization", format!("Bearer {tech}"))
                .header("content-type", "application/json")
                .body(Body::from(
                    serde_json::json!({"site": site, "device": "000000000000002a",
                                       "command": "echo hi", "timeout_ms": 60000})
                    .to_string(),
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let v: Value = serde_json::from_slice(
        &axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    let id: outpost_proto::ids::CommandId = v["id"].as_str().unwrap().parse().unwrap();

    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the stream on B is asked to resend within 10 s of the reconnect");
    assert_eq!(got, Some(crate::downlink::Down::Reopen));
    // What the stream then sends holds the command.
    let frames = crate::downlink::SiteDownlink::new(&b, &"msp".into(), &site)
        .opening(crate::now_ms())
        .await;
    let sent: Vec<_> = frames
        .iter()
        .flat_map(|f| match f {
            CentralFrame::Commands(v) => v.iter().map(|c| c.id).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(sent, vec![id]);
    // The stream is told first, the counter follows: wait for it (bounded).
    let counted = "outpost_central_downlink_notices_total{reason=\"reopened\"} 1";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut m = b.metrics.encode(false);
    while !m.contains(counted) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = b.metrics.encode(false);
    }
    assert!(m.contains(counted), "{m}");
}

/// The next live event of `sub` within `within`, if any.
async fn next_event(
    sub: &mut outpost_console::live::Subscription,
    within: Duration,
) -> Option<Arc<outpost_console::live::LiveEvent>> {
    match tokio::time::timeout(within, sub.next()).await {
        Ok(Some(outpost_console::live::Delivery::Event(e))) => Some(e),
        _ => None,
    }
}

/// A page connected to instance B sees the device that instance A's
/// apply brought and the alert acknowledged on A, once each; A's own
/// page sees them once too (its notices coming back are skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_one_instance_sees_the_changes_another_instance_applied_once() {
    let Some(i) = instances("live_across", true).await else {
        return;
    };
    let scope = outpost_console::live::Scope {
        tenant: "msp".into(),
        customers: vec![],
    };
    let mut on_b = i.b.live.subscribe(scope.clone()).unwrap();
    let mut on_a = i.a.live.subscribe(scope).unwrap();
    // A bank customer's page on B sees nothing of dental's.
    let mut other =
        i.b.live
            .subscribe(outpost_console::live::Scope {
                tenant: "msp".into(),
                customers: vec!["bank".into()],
            })
            .unwrap();
    let payload = outpost_uplink::batch::encode(
        &crate::testing::batch_of(&i.site, 1),
        outpost_uplink::batch::DEFAULT_ZSTD_LEVEL,
    )
    .unwrap();
    let answer = crate::receiver::answer_batch(&i.a, &"msp".into(), &i.site, 1, payload).await;
    assert!(matches!(answer, CentralFrame::Ack { seq: 1 }), "{answer:?}");
    let e = next_event(&mut on_b, Duration::from_secs(5))
        .await
        .expect("B's page sees A's apply within 5 s");
    assert_eq!(e.kind, "device");
    assert_eq!(e.customer, "dental");
    assert!(e.data.contains("web-1"), "{}", e.data);
    let mine = next_event(&mut on_a, Duration::from_secs(1))
        .await
        .expect("A's own page");
    assert_eq!(mine.data, e.data);
    // Each once: no echo of A's notice on A, no second copy on B.
    let mut seen_b = Vec::new();
    while let Some(e) = next_event(&mut on_b, Duration::from_millis(500)).await {
        seen_b.push(e);
    }
    let mut seen_a = Vec::new();
    while let Some(e) = next_event(&mut on_a, Duration::from_millis(100)).await {
        seen_a.push(e);
    }
    assert_eq!(
        seen_a.iter().map(|e| &e.data).collect::<Vec<_>>(),
        seen_b.iter().map(|e| &e.data).collect::<Vec<_>>(),
        "the same changes on both pages, once"
    );
    assert!(seen_b.iter().all(|e| e.kind != "device"), "{seen_b:?}");
    assert!(
        next_event(&mut other, Duration::from_millis(100))
            .await
            .is_none()
    );
    let m = i.b.metrics.encode(false);
    assert!(
        m.contains("outpost_central_downlink_notices_total{reason=\"live_received\"}"),
        "{m}"
    );
}

#[test]
fn live_changes_are_packed_into_bounded_notices_in_order_and_an_instance_skips_its_own() {
    let ev = |n: usize, size: usize| outpost_console::live::LiveEvent {
        tenant: "msp".into(),
        customer: "dental".into(),
        kind: "device",
        data: format!("{n}:{}", "x".repeat(size)),
    };
    let events: Vec<_> = (0..50).map(|n| ev(n, 300)).collect();
    let (payloads, skipped) = super::bus::live_payloads(7, &events, 2_000);
    assert_eq!(skipped, 0);
    assert!(payloads.len() > 5, "{}", payloads.len());
    assert!(payloads.iter().all(|p| p.len() <= 2_000));
    let back: Vec<_> = payloads
        .iter()
        .flat_map(|p| super::bus::live_decode(8, p).unwrap())
        .collect();
    assert_eq!(back, events);
    // Its own notice: nothing to publish.
    assert_eq!(super::bus::live_decode(7, &payloads[0]), Some(vec![]));
    // One change too big for any notice is left out, counted.
    let (payloads, skipped) =
        super::bus::live_payloads(7, &[ev(1, 10), ev(2, 5_000), ev(3, 10)], 2_000);
    assert_eq!(skipped, 1);
    let back: Vec<_> = payloads
        .iter()
        .flat_map(|p| super::bus::live_decode(8, p).unwrap())
        .collect();
    assert_eq!(back, vec![ev(1, 10), ev(3, 10)]);
    assert_eq!(super::bus::live_decode(8, "not json"), None);
}
