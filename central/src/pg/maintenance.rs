//! Periodic upkeep of a PostgreSQL central: rollup partitions made ahead
//! of time, partitions older than the retention dropped whole (no mass
//! `DELETE`), and `applied_batches` rows that can no longer matter pruned.
//!
//! Owns the maintenance plan ([`plan`], pure: what to do at `now`), its
//! execution ([`PgCentralStore::maintain`]), the task that runs it every
//! interval ([`start`]) and its counters. Must not touch the apply path:
//! pruning is safe because apply checks the site row's applied set
//! (`applied_up_to` and the numbers above it, updated in the same
//! transaction as each batch) before it looks at `(site, seq)` rows; only
//! rows at or below `applied_up_to` go, and each site keeps its highest.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::{PARTITION_MS, PgCentralStore, PgOptions, be, i};
use crate::model::SiteRecord;
use crate::store::Result;

/// Bounds of the interval between runs.
pub const MIN_INTERVAL_MS: u64 = 60_000;
pub const MAX_INTERVAL_MS: u64 = 24 * 3600 * 1000;
/// The retention keeps at least the current and the previous partition.
pub const MIN_RETENTION_MS: u64 = 2 * PARTITION_MS;
/// Partitions made ahead at most.
pub const MAX_AHEAD: u64 = 52;

/// How maintenance runs (`serve --store-maintenance-interval`,
/// `--rollup-retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceConfig {
    pub interval_ms: u64,
    /// Rollups whose whole partition (a week) is older than this go.
    pub rollup_retention_ms: u64,
    /// Weekly partitions made ahead of the current one.
    pub partitions_ahead: u64,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            interval_ms: 3600 * 1000,
            rollup_retention_ms: 400 * 24 * 3600 * 1000,
            partitions_ahead: 4,
        }
    }
}

impl MaintenanceConfig {
    /// The configuration within its bounds.
    pub fn bounded(self) -> MaintenanceConfig {
        MaintenanceConfig {
            interval_ms: self.interval_ms.clamp(MIN_INTERVAL_MS, MAX_INTERVAL_MS),
            rollup_retention_ms: self.rollup_retention_ms.max(MIN_RETENTION_MS),
            partitions_ahead: self.partitions_ahead.clamp(1, MAX_AHEAD),
        }
    }
}

/// What one run does at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Partitions wholly before this go.
    pub drop_before_ms: u64,
    /// One bucket time in each week that must have a partition (the
    /// current one and those ahead).
    pub ensure: Vec<u64>,
}

/// The plan of a run at `now_ms` (bounds applied).
pub fn plan(now_ms: u64, cfg: MaintenanceConfig) -> Plan {
    let cfg = cfg.bounded();
    Plan {
        drop_before_ms: now_ms.saturating_sub(cfg.rollup_retention_ms),
        ensure: (0..=cfg.partitions_ahead)
            .map(|w| now_ms.saturating_add(w * PARTITION_MS))
            .collect(),
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub partitions_dropped: Vec<String>,
    pub partitions_created: u64,
    pub applied_batches_pruned: u64,
}

/// `outpost_central_pg_maintenance_*`.
#[derive(Debug, Clone, Default)]
pub struct MaintenanceMetrics {
    pub runs: Counter,
    pub failures: Counter,
    pub partitions_dropped: Counter,
    pub partitions_created: Counter,
    pub applied_batches_pruned: Counter,
}

impl MaintenanceMetrics {
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("pg_maintenance");
        r.register("runs", "PostgreSQL maintenance runs", self.runs.clone());
        r.register(
            "failures",
            "PostgreSQL maintenance runs that failed (retried next interval)",
            self.failures.clone(),
        );
        r.register(
            "partitions_dropped",
            "Rollup partitions dropped: older than the retention",
            self.partitions_dropped.clone(),
        );
        r.register(
            "partitions_created",
            "Rollup partitions made ahead of time",
            self.partitions_created.clone(),
        );
        r.register(
            "applied_batches_pruned",
            "applied_batches rows pruned (at or below a site's applied_up_to, not its highest)",
            self.applied_batches_pruned.clone(),
        );
    }

    fn record(&self, o: &Outcome) {
        self.runs.inc();
        self.partitions_dropped
            .inc_by(o.partitions_dropped.len() as u64);
        self.partitions_created.inc_by(o.partitions_created);
        self.applied_batches_pruned.inc_by(o.applied_batches_pruned);
    }
}

impl PgCentralStore {
    async fn partition_count(&self) -> Result<u64> {
        let c = self.client().await?;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent \
                 WHERE p.relname = 'rollups'",
                &[],
            )
            .await
            .map_err(be)?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// One maintenance run at `now_ms`.
    pub async fn maintain(&self, now_ms: u64, cfg: MaintenanceConfig) -> Result<Outcome> {
        let p = plan(now_ms, cfg);
        let before = self.partition_count().await?;
        // This pool's cache may hold partitions another instance dropped:
        // ask the catalogue.
        self.forget_partitions();
        self.ensure_partitions(p.ensure).await?;
        let created = self.partition_count().await?.saturating_sub(before);
        let dropped = self.drop_rollup_partitions_before(p.drop_before_ms).await?;
        let pruned = self.prune_applied_batches().await?;
        Ok(Outcome {
            partitions_dropped: dropped,
            partitions_created: created,
            applied_batches_pruned: pruned,
        })
    }

    /// Deletes the `applied_batches` rows of each site at or below its
    /// `applied_up_to`, except its highest row; returns how many went.
    pub async fn prune_applied_batches(&self) -> Result<u64> {
        let c = self.client().await?;
        let rows = c.query("SELECT body FROM sites", &[]).await.map_err(be)?;
        let (mut tenants, mut sites, mut upto) = (Vec::new(), Vec::new(), Vec::new());
        for r in rows {
            let s = SiteRecord::from_stored(r.get::<_, &[u8]>(0))?;
            if s.applied_up_to == 0 {
                continue;
            }
            tenants.push(s.tenant.to_string());
            sites.push(s.site_id.to_string());
            upto.push(i(s.applied_up_to));
        }
        let mut pruned = 0;
        for ((t, s), u) in tenants
            .chunks(1000)
            .zip(sites.chunks(1000))
            .zip(upto.chunks(1000))
        {
            pruned += c
                .execute(
                    "DELETE FROM applied_batches a \
                     USING unnest($1::text[], $2::text[], $3::bigint[]) AS s(tenant_id, site_id, upto) \
                     WHERE a.tenant_id = s.tenant_id AND a.site_id = s.site_id AND a.seq <= s.upto \
                       AND a.seq < (SELECT max(m.seq) FROM applied_batches m \
                                    WHERE m.tenant_id = s.tenant_id AND m.site_id = s.site_id)",
                    &[&t, &s, &u],
                )
                .await
                .map_err(be)?;
        }
        Ok(pruned)
    }
}

/// Runs maintenance every interval until `shutdown` on its own connection
/// (a failed run is counted, logged and retried next interval).
pub fn start(
    url: String,
    cfg: MaintenanceConfig,
    metrics: MaintenanceMetrics,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let cfg = cfg.bounded();
    tokio::spawn(async move {
        let mut store: Option<Arc<PgCentralStore>> = None;
        loop {
            if store.is_none() {
                let opts = PgOptions {
                    pool_size: 1,
                    ..PgOptions::default()
                };
                match PgCentralStore::connect(&url, opts).await {
                    Ok(s) => store = Some(Arc::new(s)),
                    Err(e) => {
                        metrics.failures.inc();
                        tracing::warn!(error = %e, "PostgreSQL maintenance: connecting");
                    }
                }
            }
            if let Some(s) = &store {
                match s.maintain(crate::now_ms(), cfg).await {
                    Ok(o) => {
                        metrics.record(&o);
                        tracing::info!(
                            dropped = ?o.partitions_dropped,
                            created = o.partitions_created,
                            pruned = o.applied_batches_pruned,
                            "PostgreSQL maintenance done"
                        );
                    }
                    Err(e) => {
                        metrics.failures.inc();
                        tracing::warn!(error = %e, "PostgreSQL maintenance failed");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(cfg.interval_ms)) => {}
            }
        }
    })
}

#[cfg(test)]
mod pg_tests {
    //! Maintenance against the test server, with an explicit clock.

    use std::sync::Arc;

    use super::*;
    use crate::store::{ApplyOutcome, CentralStore, RollupQuery};
    use crate::store_tests::{add_site, s, t};
    use crate::testing::sample_batch;

    async fn fresh(test: &'static str) -> Option<String> {
        let c = tokio::task::spawn_blocking(move || {
            crate::pg::cluster::TestCluster::shared_or_skip(test)
        })
        .await
        .unwrap()?;
        Some(c.fresh_database().await)
    }

    async fn store(url: &str) -> Arc<PgCentralStore> {
        Arc::new(
            PgCentralStore::connect(url, Default::default())
                .await
                .unwrap(),
        )
    }

    fn cpu() -> RollupQuery {
        RollupQuery {
            site_id: "s-1".into(),
            device: "000000000000002a".into(),
            series: "cpu".into(),
            label: String::new(),
            from_ms: 0,
            to_ms: u64::MAX,
            limit: 10,
        }
    }

    async fn applied_rows(pg: &PgCentralStore, site: &str) -> Vec<i64> {
        let c = pg.client().await.unwrap();
        c.query(
            "SELECT seq FROM applied_batches WHERE site_id = $1 ORDER BY seq",
            &[&site],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_drops_the_weeks_past_the_retention_makes_the_weeks_ahead_and_counts_them() {
        let Some(url) = fresh("maintenance_partitions").await else {
            return;
        };
        let pg = store(&url).await;
        let st: Arc<dyn CentralStore> = pg.clone();
        add_site(&st, "msp", "s-1", 1).await;
        let b = sample_batch(1);
        let week = b.rollups[0].bucket_start_ms / PARTITION_MS;
        st.apply_batch(&t("msp"), &s("s-1"), b, 1).await.unwrap();
        assert_eq!(st.rollups(&t("msp"), &cpu()).await.unwrap().len(), 1);
        let cfg = MaintenanceConfig {
            interval_ms: MIN_INTERVAL_MS,
            rollup_retention_ms: 10 * PARTITION_MS,
            partitions_ahead: 3,
        };
        // Ten weeks after the rollup's week ended: kept.
        let o = pg
            .maintain((week + 11) * PARTITION_MS - 1, cfg)
            .await
            .unwrap();
        assert!(o.partitions_dropped.is_empty(), "{o:?}");
        assert_eq!(st.rollups(&t("msp"), &cpu()).await.unwrap().len(), 1);
        // A week later: dropped with its rows; the four weeks from now on
        // exist (made by this run or the one before).
        let now = (week + 12) * PARTITION_MS;
        let o = pg.maintain(now, cfg).await.unwrap();
        assert_eq!(o.partitions_dropped, vec![format!("rollups_w{week}")]);
        assert!(st.rollups(&t("msp"), &cpu()).await.unwrap().is_empty());
        let c = pg.client().await.unwrap();
        for w in 0..=3 {
            let name = format!("rollups_w{}", now / PARTITION_MS + w);
            let n: i64 = c
                .query_one("SELECT count(*) FROM pg_class WHERE relname = $1", &[&name])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 1, "{name}");
        }
        // Nothing left to do at the same time; the counters add up.
        let again = pg.maintain(now, cfg).await.unwrap();
        assert_eq!(again, Outcome::default());
        let m = MaintenanceMetrics::default();
        m.record(&o);
        m.record(&again);
        assert_eq!((m.runs.get(), m.partitions_dropped.get()), (2, 1));
        assert_eq!(m.partitions_created.get(), o.partitions_created);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pruned_applied_batches_keep_each_sites_highest_and_a_pruned_replay_is_still_a_duplicate()
     {
        let Some(url) = fresh("maintenance_prune").await else {
            return;
        };
        let pg = store(&url).await;
        let st: Arc<dyn CentralStore> = pg.clone();
        add_site(&st, "msp", "s-1", 1).await;
        add_site(&st, "msp", "s-2", 2).await;
        for seq in [1, 2, 3, 4, 5, 7] {
            st.apply_batch(&t("msp"), &s("s-1"), sample_batch(seq), seq)
                .await
                .unwrap();
        }
        let mut other = sample_batch(1);
        other.site = "s-2".into();
        st.apply_batch(&t("msp"), &s("s-2"), other, 1)
            .await
            .unwrap();

        // s-1: applied up to 5, and 7 above; s-2: only 1, its highest.
        assert_eq!(pg.prune_applied_batches().await.unwrap(), 5);
        assert_eq!(applied_rows(&pg, "s-1").await, vec![7]);
        assert_eq!(applied_rows(&pg, "s-2").await, vec![1]);
        let before = st.site(&t("msp"), &s("s-1")).await.unwrap().unwrap();
        for seq in [1, 3, 5, 7] {
            let o = st
                .apply_batch(&t("msp"), &s("s-1"), sample_batch(seq), 100 + seq)
                .await
                .unwrap();
            assert_eq!(o, ApplyOutcome::Duplicate, "seq {seq}");
        }
        let after = st.site(&t("msp"), &s("s-1")).await.unwrap().unwrap();
        assert_eq!(after.batches_applied, before.batches_applied);
        assert_eq!(
            after.last_batch_ms, before.last_batch_ms,
            "nothing re-applied"
        );
        // The gap fills; 6 then goes too, 7 stays the highest.
        let o = st
            .apply_batch(&t("msp"), &s("s-1"), sample_batch(6), 6)
            .await
            .unwrap();
        assert!(matches!(o, ApplyOutcome::Applied { .. }), "{o:?}");
        assert_eq!(pg.prune_applied_batches().await.unwrap(), 1);
        assert_eq!(applied_rows(&pg, "s-1").await, vec![7]);
        let o = st
            .apply_batch(&t("msp"), &s("s-1"), sample_batch(6), 200)
            .await
            .unwrap();
        assert_eq!(o, ApplyOutcome::Duplicate);
        assert_eq!(pg.prune_applied_batches().await.unwrap(), 0);
    }

    /// Instance B's maintenance drops a week instance A made before: A's
    /// next late batch for that week makes it again (no stuck site).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_week_dropped_by_another_instance_is_made_again_for_a_late_batch() {
        let Some(url) = fresh("maintenance_other_instance").await else {
            return;
        };
        let a = store(&url).await;
        let b = store(&url).await;
        let st: Arc<dyn CentralStore> = a.clone();
        add_site(&st, "msp", "s-1", 1).await;
        let first = sample_batch(1);
        let week = first.rollups[0].bucket_start_ms / PARTITION_MS;
        st.apply_batch(&t("msp"), &s("s-1"), first, 1)
            .await
            .unwrap();
        let o = b
            .maintain(
                (week + 20) * PARTITION_MS,
                MaintenanceConfig {
                    rollup_retention_ms: 10 * PARTITION_MS,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(o.partitions_dropped, vec![format!("rollups_w{week}")]);
        let mut late = sample_batch(2);
        late.created_ms += 1;
        let o = st
            .apply_batch(&t("msp"), &s("s-1"), late, 2)
            .await
            .map_err(|e| e.to_string());
        assert!(matches!(o, Ok(ApplyOutcome::Applied { .. })), "{o:?}");
        assert_eq!(st.rollups(&t("msp"), &cpu()).await.unwrap().len(), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_drops_before_the_retention_and_makes_the_weeks_ahead() {
        let now = 1_000 * PARTITION_MS + 123;
        let p = plan(
            now,
            MaintenanceConfig {
                interval_ms: 1,
                rollup_retention_ms: 10 * PARTITION_MS,
                partitions_ahead: 2,
            },
        );
        assert_eq!(p.drop_before_ms, 990 * PARTITION_MS + 123);
        assert_eq!(
            p.ensure,
            vec![now, now + PARTITION_MS, now + 2 * PARTITION_MS]
        );
    }

    #[test]
    fn the_configuration_is_bounded() {
        let b = MaintenanceConfig {
            interval_ms: 0,
            rollup_retention_ms: 0,
            partitions_ahead: 10_000,
        }
        .bounded();
        assert_eq!(
            (b.interval_ms, b.rollup_retention_ms, b.partitions_ahead),
            (MIN_INTERVAL_MS, MIN_RETENTION_MS, MAX_AHEAD)
        );
        let b = MaintenanceConfig {
            interval_ms: u64::MAX,
            ..Default::default()
        }
        .bounded();
        assert_eq!(b.interval_ms, MAX_INTERVAL_MS);
        // The retention never reaches the current week.
        let p = plan(
            5 * PARTITION_MS,
            MaintenanceConfig {
                rollup_retention_ms: 1,
                ..Default::default()
            },
        );
        assert_eq!(p.drop_before_ms, 3 * PARTITION_MS);
    }
}
