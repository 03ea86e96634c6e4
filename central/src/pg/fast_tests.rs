//! The fleet queries of schema version 9 on PostgreSQL: per-site counts
//! kept by the apply transaction (two instances racing the same and
//! different batches, replays, a database from before version 9) give
//! the RocksDB backend's answers, and a search's `total` stops at the cap
//! with "more than".

use std::sync::Arc;

use outpost_proto::DeviceId;
use outpost_uplink::batch::{
    AlertState, AlertTransition, DeviceStatus, DeviceUpdate, Severity, SiteBatch,
};

use super::PgCentralStore;
use crate::model::DeviceStatus as Status;
use crate::pg::cluster::TestCluster;
use crate::store::{ApplyOutcome, BatchStore, CentralStore, DeviceSearch, FleetStore};
use crate::store_tests::{s, site, t, tok};

async fn fresh(test: &str) -> Option<String> {
    let test = test.to_string();
    let c = tokio::task::spawn_blocking(move || TestCluster::shared_or_skip(&test))
        .await
        .unwrap()?;
    Some(c.fresh_database().await)
}

async fn pg(url: &str) -> PgCentralStore {
    PgCentralStore::connect(url, Default::default())
        .await
        .unwrap()
}

fn site_name(k: usize) -> String {
    format!("s-{k}")
}

/// Batch `seq` of site `k`: 6 devices whose status turns with `seq`
/// (one revoked at seq 4), one alert per device whose state and severity
/// turn with `seq` (pending, firing, resolved; critical or warning), and
/// a site-wide info alert firing at odd `seq`.
fn batch(k: usize, seq: u64) -> SiteBatch {
    let dev = |d: u64| DeviceId(((k as u64) << 8) | d);
    let statuses = [
        DeviceStatus::Online,
        DeviceStatus::Offline,
        DeviceStatus::Pending,
    ];
    let states = [
        AlertState::Pending,
        AlertState::Firing,
        AlertState::Resolved,
    ];
    SiteBatch {
        seq,
        site: site_name(k).into(),
        tenant: "msp".into(),
        created_ms: 1_700_000_000_000 + seq,
        devices: (0..6)
            .map(|d| DeviceUpdate {
                device: dev(d),
                customer: String::new().into(),
                hostname: format!("host-{k}-{d}"),
                os: "Debian".into(),
                agent_version: "0.1.0".into(),
                enrolled_at_ms: 1,
                revoked: seq == 4 && d == 5,
                status: statuses[((d + seq) % 3) as usize],
                status_since_ms: seq,
                last_seen_ms: seq,
                as_of_ms: 1_000 + seq,
            })
            .collect(),
        alerts: (0..6)
            .map(|d| AlertTransition {
                alert_id: d + 1,
                device: Some(dev(d)),
                rule: "disk_full".into(),
                severity: if (d + k as u64).is_multiple_of(2) {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                state: states[((d * 2 + seq + k as u64) % 3) as usize],
                at_ms: 10 * seq + d,
                message: "disk".into(),
                value: Some(93.0),
            })
            .chain((seq % 2 == 1).then(|| AlertTransition {
                alert_id: 100,
                device: None,
                rule: "site_silent".into(),
                severity: Severity::Info,
                state: AlertState::Firing,
                at_ms: 10 * seq + 9,
                message: "quiet".into(),
                value: None,
            }))
            .collect(),
        ..Default::default()
    }
}

const SITES: usize = 6;
const SEQS: u64 = 8;

async fn add_sites(st: &dyn CentralStore) {
    for k in 0..SITES {
        let mut rec = site("msp", &site_name(k));
        rec.customer = if k % 2 == 0 { "dental" } else { "vet" }.into();
        st.create_site(&rec, &[k as u8 + 1; 32], &tok("msp", &site_name(k)))
            .await
            .unwrap();
    }
}

/// Counts and search totals that must agree between two stores.
async fn answers(st: &dyn CentralStore) -> Vec<String> {
    let mut out = Vec::new();
    for allowed in [vec![], vec!["vet".into()], vec!["nobody".into()]] {
        out.push(format!(
            "{allowed:?} {:?}",
            st.fleet_counts(&t("msp"), &allowed).await.unwrap()
        ));
    }
    let searches: Vec<DeviceSearch> = vec![
        DeviceSearch::default(),
        DeviceSearch {
            critical: true,
            ..Default::default()
        },
        DeviceSearch {
            status: Some(Status::Offline),
            customer: Some("dental".into()),
            ..Default::default()
        },
        DeviceSearch {
            status: Some(Status::Revoked),
            ..Default::default()
        },
        DeviceSearch {
            site_id: Some(s("s-3")),
            critical: true,
            ..Default::default()
        },
        DeviceSearch {
            critical: true,
            status: Some(Status::Online),
            ..Default::default()
        },
        DeviceSearch {
            words: vec!["host-2".into()],
            ..Default::default()
        },
    ];
    for q in searches {
        let q = DeviceSearch { limit: 100, ..q };
        let p = st.search_devices(&t("msp"), &q).await.unwrap();
        let hosts: Vec<&str> = p.items.iter().map(|d| d.hostname.as_str()).collect();
        out.push(format!(
            "{q:?} total={} more={} {hosts:?}",
            p.total, p.total_more
        ));
    }
    out
}

/// Two instances (two pools) apply every site's batches at once, each
/// racing the other for the same batches, then replay some: the per-site
/// counts the dashboard reads, and the totals of searches answered from
/// them, are those of a RocksDB store that applied each batch once.
/// Dropping the counts and reconnecting (a database from before version
/// 9) fills them again to the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_counts_under_two_racing_instances_and_replays_answer_as_rocksdb() {
    let Some(url) = fresh("site_counts_race").await else {
        return;
    };
    let a: Arc<dyn CentralStore> = Arc::new(pg(&url).await);
    let b: Arc<dyn CentralStore> = Arc::new(pg(&url).await);
    add_sites(a.as_ref()).await;
    let run = |st: Arc<dyn CentralStore>, reverse: bool| {
        tokio::spawn(async move {
            let mut applied = 0;
            for seq in 1..=SEQS {
                let sites: Vec<usize> = if reverse {
                    (0..SITES).rev().collect()
                } else {
                    (0..SITES).collect()
                };
                for k in sites {
                    let out = st
                        .apply_batch(&t("msp"), &s(&site_name(k)), batch(k, seq), 2_000 + seq)
                        .await
                        .unwrap();
                    if let ApplyOutcome::Applied { .. } = out {
                        applied += 1;
                    }
                }
            }
            applied
        })
    };
    let (x, y) = (run(a.clone(), false), run(b.clone(), true));
    let applied = x.await.unwrap() + y.await.unwrap();
    assert_eq!(applied, SITES as u64 * SEQS, "each batch applied once");

    let dir = tempfile::tempdir().unwrap();
    let r: Arc<dyn CentralStore> =
        Arc::new(crate::rocks::RocksCentralStore::open(dir.path()).unwrap());
    add_sites(r.as_ref()).await;
    for seq in 1..=SEQS {
        for k in 0..SITES {
            r.apply_batch(&t("msp"), &s(&site_name(k)), batch(k, seq), 2_000 + seq)
                .await
                .unwrap();
        }
    }
    let want = answers(r.as_ref()).await;
    assert!(
        want[0].contains("critical: ") && !want[0].contains("per_site: {}"),
        "{want:?}"
    );
    assert_eq!(answers(a.as_ref()).await, want);
    assert_eq!(answers(b.as_ref()).await, want);

    // Replays change nothing.
    for seq in [1, 4, SEQS] {
        let out = b
            .apply_batch(&t("msp"), &s("s-2"), batch(2, seq), 9_000)
            .await
            .unwrap();
        assert!(matches!(out, ApplyOutcome::Duplicate), "{out:?}");
    }
    assert_eq!(answers(a.as_ref()).await, want);

    // A database from before version 9: no counts, filled at start.
    {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("DELETE FROM site_counts")
            .await
            .unwrap();
    }
    let c = pg(&url).await;
    assert_eq!(answers(&c).await, want);
}

/// A word search counts its matches up to the cap, then says "more than
/// the cap"; totals that per-site counts answer stay exact above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_word_search_total_stops_at_the_cap_and_says_more_than() {
    let Some(url) = fresh("total_cap").await else {
        return;
    };
    let st = pg(&url).await.with_search_total_cap(3);
    add_sites(&st).await;
    st.apply_batch(&t("msp"), &s("s-1"), batch(1, 1), 2_001)
        .await
        .unwrap();
    let search = |q: DeviceSearch| {
        let st = &st;
        async move {
            let p = st
                .search_devices(&t("msp"), &DeviceSearch { limit: 2, ..q })
                .await
                .unwrap();
            (p.total, p.total_more, p.items.len(), p.next.is_some())
        }
    };
    let word = |w: &str| DeviceSearch {
        words: vec![w.into()],
        ..Default::default()
    };
    // 6 devices match "host-1": counted up to 3, then "more than 3"; the
    // page and its cursor are whole.
    assert_eq!(search(word("host-1")).await, (3, true, 2, true));
    // 1 match: exact.
    assert_eq!(search(word("host-1-4")).await, (1, false, 1, false));
    // No word: the per-site counts, exact above the cap.
    assert_eq!(search(DeviceSearch::default()).await, (6, false, 2, true));
    // A tag search counts too (none match).
    let tag = DeviceSearch {
        tag: Some("x".into()),
        ..Default::default()
    };
    assert_eq!(search(tag).await, (0, false, 0, false));
}
