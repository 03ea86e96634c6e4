//! `outpost-central migrate --from rocksdb:DIR --to postgres://…` as a
//! real process (issue 16, migration): killed with SIGKILL in the middle
//! of the copy, run again to completion, the target holds every row once
//! (counts, a sample of rows, the per-site fleet counts), and a third run
//! copies nothing.

use std::process::Command;
use std::time::Duration;

use outpost_central::store::{AuthStore, BatchStore, FleetStore, RollupQuery};
use outpost_proto::{DeviceId, SiteId, TenantId};
use outpost_tests::*;
use outpost_uplink::batch::{self, DeviceRollups, DeviceUpdate, SeriesRollup, SiteBatch};

/// Sites × devices × buckets of the source: 50,000 rollup rows (one per
/// device and bucket, both series in it), enough for a copy that takes
/// seconds in chunks of 200.
const SITES: u64 = 4;
const DEVICES_PER_SITE: u64 = 50;
const BUCKETS: u64 = 250;
const SERIES: [&str; 2] = ["cpu", "mem"];

/// One device's batch: its snapshot and `BUCKETS` five-minute rollups of
/// each series ending before `now_ms`.
fn device_batch(tenant: &TenantId, site: &SiteId, seq: u64, device: u64, now_ms: u64) -> SiteBatch {
    let first = now_ms / 300_000 - BUCKETS - 1;
    SiteBatch {
        seq,
        site: site.clone(),
        tenant: tenant.clone(),
        created_ms: now_ms,
        devices: vec![DeviceUpdate {
            device: DeviceId(device),
            customer: "dental".into(),
            hostname: format!("host-{device}"),
            os: "Debian".into(),
            agent_version: "0.1.0".into(),
            enrolled_at_ms: 1,
            revoked: false,
            status: if device.is_multiple_of(3) {
                batch::DeviceStatus::Offline
            } else {
                batch::DeviceStatus::Online
            },
            status_since_ms: 1,
            last_seen_ms: now_ms,
            as_of_ms: seq,
        }],
        rollups: (first..first + BUCKETS)
            .map(|b| DeviceRollups {
                device: DeviceId(device),
                bucket_start_ms: b * 300_000,
                computed_ms: now_ms,
                series: SERIES
                    .iter()
                    .map(|s| SeriesRollup {
                        name: s.to_string(),
                        label: String::new(),
                        rollup: batch::Rollup {
                            min: (b % 7) as f64,
                            max: (b % 7) as f64 + 2.0,
                            sum: 3.0 * ((b % 7) as f64 + 1.0),
                            count: 3,
                            last: (b % 7) as f64 + 1.0,
                            last_ts_ms: b * 300_000 + 1,
                        },
                    })
                    .collect(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Runs `outpost-central ARGS` to its end (bounded): (success, stdout, stderr).
fn run_central(root: &std::path::Path, name: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(bin("outpost-central"));
    cmd.args(args);
    let mut p = Proc::spawn(name, &mut cmd, root).expect("spawn outpost-central");
    let st = wait_for(Duration::from_secs(300), name, || p.try_exit());
    let out = std::fs::read_to_string(root.join(format!("{name}.stdout"))).unwrap_or_default();
    (st.success(), out, p.stderr())
}

#[test]
fn a_migrate_killed_mid_copy_resumes_to_every_row_once_and_a_third_run_copies_nothing() {
    use outpost_central::pg::cluster::TestCluster;
    let Some(pg) = TestCluster::shared_or_skip("central-migrate-killed") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(pg.create_database());
    let url = pg.postgres_url(&db);
    let tmp = scratch("central-migrate-killed");
    let root = tmp.path();
    let source = root.join("central").join("db");
    let tenant: TenantId = "acme".into();
    let now = outpost_central::now_ms();

    // The source: a RocksDB central filled through the apply path.
    std::fs::create_dir_all(&source).unwrap();
    let sites: Vec<SiteId> = rt.block_on(async {
        let store = outpost_central::rocks::RocksCentralStore::open(&source).unwrap();
        let mut sites = Vec::new();
        for s in 0..SITES {
            let site = outpost_central::ops::add_site(
                &store,
                &outpost_central::ops::AddSite {
                    tenant: tenant.clone(),
                    customer: "dental".into(),
                    site: format!("site-{s}"),
                },
                now,
            )
            .await
            .unwrap()
            .site_id;
            for d in 0..DEVICES_PER_SITE {
                BatchStore::apply_batch(
                    &store,
                    &tenant,
                    &site,
                    device_batch(&tenant, &site, d + 1, 1_000 * s + d + 1, now),
                    now,
                )
                .await
                .unwrap();
            }
            sites.push(site);
        }
        sites
    });
    let rollups = SITES * DEVICES_PER_SITE * BUCKETS;
    let from = format!("rocksdb:{}", source.display());
    let args = [
        "migrate",
        "--from",
        &from,
        "--to",
        &url,
        "--chunk-rows",
        "200",
    ];

    // First run: killed once some rollups are copied, before the end.
    let count = |sql: &str| -> i64 {
        let (sql, conn_url) = (sql.to_string(), pg.url(&db));
        rt.block_on(async move {
            let (c, conn) = tokio_postgres::connect(&conn_url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let t = tokio::spawn(conn);
            let n = c
                .query_opt(sql.as_str(), &[])
                .await
                .ok()
                .flatten()
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0);
            drop(c);
            let _ = t.await;
            n
        })
    };
    let mut cmd = Command::new(bin("outpost-central"));
    cmd.args(args);
    let mut first = Proc::spawn("migrate-1", &mut cmd, root).unwrap();
    wait_for(Duration::from_secs(120), "rollups being copied", || {
        if let Some(st) = first.try_exit() {
            panic!(
                "migrate ended before it was killed ({st}):\n{}",
                first.stderr()
            );
        }
        (count("SELECT copied FROM outpost_migrate_progress WHERE step = 'rollups'") >= 400)
            .then_some(())
    });
    first.kill9();
    let copied_then = count("SELECT count(*) FROM rollups");
    assert!(
        copied_then > 0 && (copied_then as u64) < rollups,
        "killed mid-copy: {copied_then} of {rollups} rollups"
    );

    // Second run: to the end; counts match.
    let (ok, out, err) = run_central(root, "migrate-2", &args);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("counts match"), "{out}");
    assert!(!out.contains("MISMATCH"), "{out}");
    let rollups_line = out
        .lines()
        .find(|l| l.starts_with("rollups "))
        .expect("a rollups line");
    let cols: Vec<&str> = rollups_line.split_whitespace().collect();
    assert_eq!(cols[1], rollups.to_string(), "source: {rollups_line}");
    assert_eq!(cols[2], rollups.to_string(), "target: {rollups_line}");
    assert_eq!(
        cols[3].parse::<i64>().unwrap(),
        rollups as i64 - copied_then,
        "the second run copied only what the first had not: {rollups_line}"
    );
    assert_eq!(count("SELECT count(*) FROM rollups"), rollups as i64);
    assert_eq!(
        count("SELECT count(*) FROM devices"),
        (SITES * DEVICES_PER_SITE) as i64
    );
    assert_eq!(count("SELECT count(*) FROM sites"), SITES as i64);

    // A sample of rows and the fleet counts read the same on both stores.
    rt.block_on(async {
        let rocks = outpost_central::rocks::RocksCentralStore::open(&source).unwrap();
        let pgs = outpost_central::pg::PgCentralStore::connect(&url, Default::default())
            .await
            .unwrap();
        assert_eq!(
            format!(
                "{:?}",
                FleetStore::fleet_counts(&pgs, &tenant, &[]).await.unwrap()
            ),
            format!(
                "{:?}",
                FleetStore::fleet_counts(&rocks, &tenant, &[])
                    .await
                    .unwrap()
            ),
            "site_counts: PostgreSQL then RocksDB"
        );
        for (i, site) in sites.iter().enumerate() {
            assert_eq!(
                format!("{:?}", AuthStore::site(&pgs, &tenant, site).await.unwrap()),
                format!(
                    "{:?}",
                    AuthStore::site(&rocks, &tenant, site).await.unwrap()
                ),
            );
            let device = format!(
                "{:016x}",
                1_000 * i as u64 + (7 * i as u64) % DEVICES_PER_SITE + 1
            );
            assert_eq!(
                format!(
                    "{:?}",
                    FleetStore::device(&pgs, &tenant, site, &device)
                        .await
                        .unwrap()
                ),
                format!(
                    "{:?}",
                    FleetStore::device(&rocks, &tenant, site, &device)
                        .await
                        .unwrap()
                ),
            );
            for series in SERIES {
                let q = RollupQuery {
                    site_id: site.clone(),
                    device: device.clone(),
                    series: series.into(),
                    label: String::new(),
                    from_ms: 0,
                    to_ms: u64::MAX,
                    limit: 1_000,
                };
                let (a, b) = (
                    FleetStore::rollups(&pgs, &tenant, &q).await.unwrap(),
                    FleetStore::rollups(&rocks, &tenant, &q).await.unwrap(),
                );
                assert_eq!(a.len() as u64, BUCKETS, "{site} {device} {series}");
                assert_eq!(
                    format!("{a:?}"),
                    format!("{b:?}"),
                    "{site} {device} {series}"
                );
            }
        }
    });

    // Third run: nothing to copy.
    let (ok, out, err) = run_central(root, "migrate-3", &args);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("nothing new to copy"), "{out}");
    assert_eq!(count("SELECT count(*) FROM rollups"), rollups as i64);
}
