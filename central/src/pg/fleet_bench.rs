//! The device list and fleet counts on PostgreSQL at MSP scale (issue 16:
//! 100,000 devices across 1,000 sites, p99 < 100 ms): seeds the test
//! server through the store's apply path (one batch per site: every
//! device's snapshot, CPU/memory/disk rollups, a firing alert per 50
//! devices, 100 customers), then times `search_devices` and
//! `fleet_counts` as the console and `/api/v1/summary` call them.
//!
//! An ignored test (minutes of seeding), run on purpose:
//! `OUTPOST_FLEET_SITES=1000 cargo test -p outpost-central --lib pg::fleet_bench -- --ignored --nocapture`.
//! Prints `RESULT` lines like `outpost-bench`; with `OUTPOST_FLEET_EXPLAIN=1`
//! also each search's `EXPLAIN (ANALYZE, BUFFERS)` as the API role runs it.

use std::sync::Arc;
use std::time::Instant;

use outpost_proto::DeviceId;
use outpost_uplink::batch::{
    AlertState, AlertTransition, DeviceRollups, DeviceStatus, DeviceUpdate, Rollup, SeriesRollup,
    Severity, SiteBatch,
};

use crate::model::{DeviceStatus as Status, JoinTokenRecord, SiteRecord};
use crate::store::{CentralStore, DeviceSearch, DeviceSortKey};

fn rollup(v: f64) -> Rollup {
    Rollup {
        min: v - 2.0,
        max: v + 2.0,
        sum: v * 10.0,
        count: 10,
        last: v,
        last_ts_ms: 0,
    }
}

pub(crate) fn site_id(s: u64) -> String {
    format!("s-{s:05}")
}

pub(crate) fn batch(s: u64, n: u64, now: u64) -> SiteBatch {
    let bucket = now - now % 300_000 - 300_000;
    let dev = |d: u64| DeviceId((s << 20) | d);
    SiteBatch {
        seq: 1,
        site: site_id(s).into(),
        tenant: "acme".into(),
        created_ms: now,
        devices: (0..n)
            .map(|d| {
                let i = s * n + d;
                DeviceUpdate {
                    device: dev(d),
                    customer: String::new().into(),
                    hostname: format!("host-{i:06}"),
                    os: if i.is_multiple_of(3) {
                        "Ubuntu 24.04 LTS"
                    } else {
                        "Debian GNU/Linux 12"
                    }
                    .into(),
                    agent_version: "0.1.0".into(),
                    enrolled_at_ms: now - 86_400_000,
                    revoked: false,
                    status: if i.is_multiple_of(13) {
                        DeviceStatus::Offline
                    } else {
                        DeviceStatus::Online
                    },
                    status_since_ms: now - 3_600_000,
                    last_seen_ms: now,
                    as_of_ms: now,
                }
            })
            .collect(),
        rollups: (0..n)
            .map(|d| {
                let i = (s * n + d) as f64;
                DeviceRollups {
                    device: dev(d),
                    bucket_start_ms: bucket,
                    computed_ms: now,
                    series: vec![
                        SeriesRollup {
                            name: "cpu".into(),
                            label: String::new(),
                            rollup: rollup(i % 97.0),
                        },
                        SeriesRollup {
                            name: "memory".into(),
                            label: String::new(),
                            rollup: rollup(30.0 + i % 60.0),
                        },
                        SeriesRollup {
                            name: "disk_used_percent".into(),
                            label: "/".into(),
                            rollup: rollup(20.0 + i % 75.0),
                        },
                    ],
                }
            })
            .collect(),
        alerts: (0..n)
            .filter(|d| d % 50 == 7)
            .map(|d| AlertTransition {
                alert_id: d + 1,
                device: Some(dev(d)),
                rule: "disk_full".into(),
                severity: if d % 100 == 7 {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                state: AlertState::Firing,
                at_ms: now - 600_000,
                message: "disk / above 90 %".into(),
                value: Some(93.0),
            })
            .collect(),
        ..Default::default()
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn time<F, Fut>(scenario: &str, n: usize, mut f: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..3 {
        f(i).await;
    }
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i).await;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "RESULT {scenario} requests={n} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        pct(&ms, 0.5),
        pct(&ms, 0.99),
        pct(&ms, 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes of seeding; run on purpose (see the module docs)"]
async fn device_list_and_fleet_counts_at_100k_devices() {
    let sites: u64 = std::env::var("OUTPOST_FLEET_SITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let per_site = 100u64;
    let Some(c) =
        tokio::task::spawn_blocking(|| super::cluster::TestCluster::shared_or_skip("fleet_bench"))
            .await
            .unwrap()
    else {
        return;
    };
    let url = c.fresh_database().await;
    let pg = Arc::new(
        super::PgCentralStore::connect(&url, Default::default())
            .await
            .unwrap(),
    );
    let st: Arc<dyn CentralStore> = pg.clone();
    let now = crate::now_ms();
    let t0 = Instant::now();
    for s in 0..sites {
        let site = SiteRecord {
            joined_ms: 1,
            interval_ms: 60_000,
            ..SiteRecord::new(
                "acme".into(),
                format!("customer-{:03}", s % 100).into(),
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
        st.apply_batch(&"acme".into(), &site.site_id, batch(s, per_site, now), now)
            .await
            .unwrap();
    }
    let devices = sites * per_site;
    println!(
        "RESULT pg_fleet_seed devices={devices} sites={sites} seed_s={:.1}",
        t0.elapsed().as_secs_f64()
    );
    // Planner statistics, as autovacuum would have them after a load.
    {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute("ANALYZE").await.unwrap();
    }
    // Keeps the seeded server for a manual look (psql) when asked.
    if let Some(secs) = std::env::var("OUTPOST_FLEET_HOLD_S")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        println!("HOLD {url}");
        tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    }
    let tenant = "acme".into();
    let q = |f: &dyn Fn(&mut DeviceSearch)| {
        let mut s = DeviceSearch {
            limit: 100,
            ..Default::default()
        };
        f(&mut s);
        s
    };
    // A deep cursor: page 500 of the hostname order.
    let mut after = None;
    for _ in 0..(devices / 100 / 2).min(500) {
        let p = st
            .search_devices(&tenant, &q(&|s| s.after = after.clone()))
            .await
            .unwrap();
        after = p.next;
    }
    let n = 200;
    let first = st.search_devices(&tenant, &q(&|_| {})).await.unwrap();
    assert_eq!((first.total, first.total_more), (devices, false));
    if std::env::var_os("OUTPOST_FLEET_EXPLAIN").is_some() {
        let searches: Vec<(&str, DeviceSearch)> = vec![
            ("first_page", q(&|_| {})),
            ("search", q(&|s| s.words = vec!["host-0123".into()])),
            ("search_broad", q(&|s| s.words = vec!["host-0".into()])),
            (
                "filter",
                q(&|s| {
                    s.status = Some(Status::Offline);
                    s.customer = Some("customer-007".into());
                }),
            ),
            (
                "sort_cpu",
                q(&|s| {
                    s.sort = DeviceSortKey::Cpu;
                    s.descending = true;
                }),
            ),
            ("deep_page", q(&|s| s.after = after.clone())),
            ("critical", q(&|s| s.critical = true)),
        ];
        for (name, s) in searches {
            let plan = pg.explain_search("acme", &s).await.unwrap();
            println!("EXPLAIN {name}\n{plan}");
        }
    }
    time("pg_devices_first_page", n, |_| {
        let (st, q) = (st.clone(), q(&|_| {}));
        async move {
            st.search_devices(&"acme".into(), &q).await.unwrap();
        }
    })
    .await;
    time("pg_devices_search", n, |i| {
        let w = format!("host-{:04}", (i as u64 * 37) % (devices / 100).max(1));
        let (st, q) = (st.clone(), q(&|s| s.words = vec![w.clone()]));
        async move {
            let p = st.search_devices(&"acme".into(), &q).await.unwrap();
            assert_eq!(p.total, 100, "{q:?}");
        }
    })
    .await;
    time("pg_devices_search_broad", n, |_| {
        // "host-0" is in every hostname: the total stops at the cap.
        let (st, q) = (st.clone(), q(&|s| s.words = vec!["host-0".into()]));
        async move {
            let p = st.search_devices(&"acme".into(), &q).await.unwrap();
            assert!(p.total_more || p.total < 10_000, "{q:?}");
        }
    })
    .await;
    time("pg_devices_customer", n, |i| {
        let c = format!("customer-{:03}", i % 100);
        let (st, q) = (st.clone(), q(&|s| s.customer = Some(c.as_str().into())));
        async move {
            st.search_devices(&"acme".into(), &q).await.unwrap();
        }
    })
    .await;
    time("pg_devices_filter", n, |_| {
        let (st, q) = (
            st.clone(),
            q(&|s| {
                s.status = Some(Status::Offline);
                s.customer = Some("customer-007".into());
            }),
        );
        async move {
            st.search_devices(&"acme".into(), &q).await.unwrap();
        }
    })
    .await;
    time("pg_devices_sort_cpu", n, |_| {
        let (st, q) = (
            st.clone(),
            q(&|s| {
                s.sort = DeviceSortKey::Cpu;
                s.descending = true;
            }),
        );
        async move {
            st.search_devices(&"acme".into(), &q).await.unwrap();
        }
    })
    .await;
    time("pg_devices_deep_page", n, |_| {
        let (st, q) = (st.clone(), q(&|s| s.after = after.clone()));
        async move {
            st.search_devices(&"acme".into(), &q).await.unwrap();
        }
    })
    .await;
    time("pg_devices_critical", n, |_| {
        let (st, q) = (st.clone(), q(&|s| s.critical = true));
        async move {
            st.search_devices(&"acme".into(), &q).await.unwrap();
        }
    })
    .await;
    time("pg_fleet_counts", n, |_| {
        let st = st.clone();
        async move {
            let c = st.fleet_counts(&"acme".into(), &[]).await.unwrap();
            assert_eq!(c.per_site.len() as u64, sites);
        }
    })
    .await;
}
