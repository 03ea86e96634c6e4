//! Test fixtures: a representative site batch (the same one the uplink
//! crate's batch tests use).

use outpost_proto::DeviceId;
use outpost_uplink::batch::{
    AlertState, AlertTransition, DeviceRollups, DeviceStatus, DeviceUpdate, Rollup, SeriesRollup,
    Severity, SiteBatch,
};

pub fn rollup(v: f64) -> Rollup {
    Rollup {
        min: v,
        max: v + 1.5,
        sum: v * 3.0 + 1.5,
        count: 3,
        last: v + 1.0,
        last_ts_ms: 1_700_000_040_000,
    }
}

pub fn sample_batch(seq: u64) -> SiteBatch {
    SiteBatch {
        seq,
        site: "s-1".into(),
        tenant: "msp".into(),
        created_ms: 1_700_000_100_000,
        devices: vec![DeviceUpdate {
            device: DeviceId(42),
            customer: "dental".into(),
            hostname: "web-1".into(),
            os: "Debian".into(),
            agent_version: "0.1.0".into(),
            enrolled_at_ms: 1,
            revoked: false,
            status: DeviceStatus::Online,
            status_since_ms: 2,
            last_seen_ms: 3,
            as_of_ms: 4,
        }],
        rollups: vec![DeviceRollups {
            device: DeviceId(42),
            bucket_start_ms: 1_700_000_000_000 - 1_700_000_000_000 % 300_000,
            computed_ms: 1_700_000_100_000,
            series: vec![
                SeriesRollup {
                    name: "cpu".into(),
                    label: String::new(),
                    rollup: rollup(12.25),
                },
                SeriesRollup {
                    name: "disk_used_percent".into(),
                    label: "/".into(),
                    rollup: rollup(71.5),
                },
            ],
        }],
        alerts: vec![AlertTransition {
            alert_id: 9,
            device: Some(DeviceId(42)),
            rule: "cpu_high".into(),
            severity: Severity::Critical,
            state: AlertState::Firing,
            at_ms: 5,
            message: "cpu 97 > 90".into(),
            value: Some(97.0),
        }],
        patch_compliance: vec![],
        commands: vec![],
        dropped_rollups: 0,
        foreign_tenants: vec![],
        patch_findings: vec![],
        device_facts: vec![],
    }
}

/// Which store backend [`central_with_site`] opens: RocksDB unless the
/// test runs inside [`BACKEND`]`.scope(Backend::Postgres, ...)` (what
/// [`on_both_backends!`] does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Rocks,
    Postgres,
}

tokio::task_local! {
    pub static BACKEND: Backend;
}

/// Runs each named `async fn()` of the enclosing module once per store
/// backend, as `rocks_backend::NAME` and `pg_backend::NAME` (the latter
/// skipped with a message only when PostgreSQL is not installed).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod rocks_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::testing::BACKEND
                        .scope($crate::testing::Backend::Rocks, super::$name())
                        .await;
                }
            )*
        }
        mod pg_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let name = stringify!($name);
                    let up = tokio::task::spawn_blocking(move || {
                        $crate::pg::cluster::TestCluster::shared_or_skip(name).is_some()
                    })
                    .await
                    .unwrap();
                    if up {
                        $crate::testing::BACKEND
                            .scope($crate::testing::Backend::Postgres, super::$name())
                            .await;
                    }
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

/// The store of [`BACKEND`] (RocksDB in `dir`, or a fresh PostgreSQL
/// database of the test server).
pub async fn test_store(dir: &std::path::Path) -> std::sync::Arc<dyn crate::store::CentralStore> {
    match BACKEND.try_with(|b| *b).unwrap_or(Backend::Rocks) {
        Backend::Rocks => {
            std::sync::Arc::new(crate::rocks::RocksCentralStore::open(&dir.join("db")).unwrap())
        }
        Backend::Postgres => crate::store_tests::pg_store("central_with_site")
            .await
            .expect("PostgreSQL checked by on_both_backends"),
    }
}

/// A central on a temporary store (RocksDB, or see [`Backend`]) with
/// tenant `msp` and one site of customer `dental` (created, not joined),
/// with `limits`.
pub async fn central_with_site(
    limits: crate::CentralLimits,
) -> (
    std::sync::Arc<crate::Central>,
    outpost_proto::SiteId,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let keys = crate::dir::CentralDir(dir.path().join("central"))
        .init_or_load()
        .unwrap();
    let store = test_store(dir.path()).await;
    let central = std::sync::Arc::new(crate::Central::with_limits(
        store,
        keys,
        tokio_util::sync::CancellationToken::new(),
        limits,
    ));
    let site = crate::ops::add_site(
        central.store.as_ref(),
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
    (central, site, dir)
}

/// The sample batch `seq` of `site` of tenant `msp`.
pub fn batch_of(site: &outpost_proto::SiteId, seq: u64) -> SiteBatch {
    let mut b = sample_batch(seq);
    (b.site, b.tenant) = (site.clone(), "msp".into());
    b
}

/// An API token of `role` in `tenant`, limited to `customers` (none: the
/// whole tenant): the router tests' login.
pub async fn token(
    c: &crate::Central,
    tenant: &str,
    role: crate::model::Role,
    customers: &[&str],
) -> String {
    crate::ops::create_token(
        c.store.as_ref(),
        &crate::ops::CreateToken {
            tenant: tenant.into(),
            role,
            customers: customers.iter().map(|c| (*c).into()).collect(),
            ttl: None,
        },
        1,
    )
    .await
    .expect("creating a test token")
}
