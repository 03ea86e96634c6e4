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
    }
}

/// A central on a temporary RocksDB with tenant `msp` and one site of
/// customer `dental` (created, not joined), with `limits`.
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
    let store = crate::rocks::RocksCentralStore::open(&dir.path().join("db")).unwrap();
    let central = std::sync::Arc::new(crate::Central::with_limits(
        std::sync::Arc::new(store),
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
