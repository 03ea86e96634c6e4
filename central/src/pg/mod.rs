//! The PostgreSQL backend of [`CentralStore`] ([`PgCentralStore`]): for an
//! MSP that runs central over a database engine it already operates.
//!
//! Owns the schema (embedded versioned migrations, [`migrate`]), the pool
//! and the mapping of each store method to SQL; the merge rules stay in
//! [`crate::apply`] and [`crate::commands`] (shared with RocksDB), and this
//! module must not grow its own.
//!
//! * **Tenants**: every row has `tenant_id`; every query filters on it, and
//!   row-level security is the second line: a transaction that serves a
//!   tenant runs as the non-owner role `outpost_api` with
//!   `app.tenant` set to that tenant (both `SET LOCAL`, ended by the
//!   commit), so a query that forgets its tenant filter still sees only
//!   that tenant's rows. Five lookups run before the tenant is known, as
//!   the connecting (owner) role: a join token, an API token and a session
//!   by the SHA-256 of their secret, the expiry sweep of open commands and
//!   the sweep of held bulk-run members (`held(None)`).
//! * **Patch findings** and the **CVE index** (`patch_cves`) are written
//!   in the batch's apply transaction, as RocksDB writes both in one batch.
//! * **Exactly once**: `apply_batch` locks the site row (`FOR UPDATE`),
//!   inserts the unique `(tenant, site, seq)` row of `applied_batches`,
//!   reads the rows the batch touches, runs [`crate::apply::plan`] and
//!   writes its rows, all in one transaction: a second instance applying
//!   the same batch waits for the lock and then sees it applied.
//! * **Rollups** live in a table partitioned by bucket time (one
//!   partition per week, created ahead and on demand); retention drops
//!   whole partitions ([`PgCentralStore::drop_rollup_partitions_before`]).
//! * The console's device search and fleet counts are SQL over key
//!   columns stored beside each row (schema version 7, [`search`]).

pub mod bus;
pub mod cluster;
pub mod maintenance;
pub(crate) mod search;
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use outpost_proto::codec;
use outpost_proto::ids::CommandId;
use outpost_proto::{CustomerId, SiteId, TenantId};
use outpost_uplink::batch::SiteBatch;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::types::ToSql;

use crate::apply::{self, ApplyPlan, CurrentRows, DeadLetterPlan, Touched};
use crate::bulk::CentralBulk;
use crate::commands::{self, AuditRow, CentralCommand, Change, Outcome, OutputOp};
use crate::model::{
    AlertRow, ApiTokenRecord, BucketRow, CveExposureRow, CveHit, CveSiteExposure, DeadLetter,
    DeviceFacts, DeviceRow, DeviceStatus, JoinTokenRecord, PatchComplianceRow, PatchFindingsRow,
    Rollup, RollupRow, SessionRecord, SiteRecord, UserRecord,
};
use crate::scripts::CentralScript;
use crate::store::{
    AlertFilter, AlertHistoryEntry, AlertPage, AlertStates, ApplyOutcome, AuthStore, BatchStore,
    CentralStoreError, CommandFilter, CommandStore, DeadLetterOutcome, DeviceFilter, DeviceSearch,
    FleetCounts, FleetDelta, FleetStore, Page, Result, RollupQuery, SearchPage, SeriesQuery,
    StoreFuture,
};

/// The schema migrations this binary knows, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("V1__init.sql")),
    (
        2,
        "scripts_bulk_findings",
        include_str!("V2__scripts_bulk_findings.sql"),
    ),
    (3, "deployments", include_str!("V3__deployments.sql")),
    (
        4,
        "device_ips_tags",
        include_str!("V4__device_ips_tags.sql"),
    ),
    (5, "central_files", include_str!("V5__central_files.sql")),
    (7, "search_multi", include_str!("V7__search_multi.sql")),
    (
        8,
        "central_files_newest",
        include_str!("V8__central_files_newest.sql"),
    ),
    (9, "fleet_fast", include_str!("V9__fleet_fast.sql")),
    (
        10,
        "migrate_progress",
        include_str!("V10__migrate_progress.sql"),
    ),
    (
        12,
        "device_decisions",
        include_str!("V12__device_decisions.sql"),
    ),
    (
        15,
        "deployment_reads",
        include_str!("V15__deployment_reads.sql"),
    ),
    (
        16,
        "api_token_lists",
        include_str!("V16__api_token_lists.sql"),
    ),
];

/// The apply error of a rollup whose partition was dropped meanwhile
/// (retried once with the partitions asked again).
const PARTITION_GONE: &str = "a rollup partition was dropped meanwhile";

/// Width of a rollup partition (one week of bucket time).
pub const PARTITION_MS: u64 = 7 * 24 * 3600 * 1000;

/// First key of the two-key advisory locks serialising the versions of
/// one script name (`put_script`; two-key locks never meet `LOCK_KEY`).
const SCRIPT_LOCK_CLASS: i32 = 0x6f75_7470;

/// Key of the advisory lock that serialises migrations and partition
/// creation between instances ("outpost" in ASCII).
const LOCK_KEY: i64 = 0x006f_7574_706f_7374;

/// The role a tenant's transactions run as (row-level security applies).
pub const API_ROLE: &str = "outpost_api";

/// Options of the pool.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections at most.
    pub pool_size: usize,
    /// Statement timeout of every connection (milliseconds).
    pub statement_timeout_ms: u64,
    /// How long a request waits for a pooled connection, and for a new
    /// connection to be made, before it is answered "unavailable"
    /// (milliseconds).
    pub pool_wait_ms: u64,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 16,
            statement_timeout_ms: 30_000,
            pool_wait_ms: DEFAULT_POOL_WAIT_MS,
        }
    }
}

/// Default of [`PgOptions::pool_wait_ms`] (`--store-pool-wait-ms`).
pub const DEFAULT_POOL_WAIT_MS: u64 = 5_000;

/// Bounds of the pool's options: what `connect` clamps them to, so a
/// typo can neither disable the timeouts nor make them hang a request
/// for hours.
pub const POOL_SIZE_BOUNDS: (usize, usize) = (1, 1000);
pub const STATEMENT_TIMEOUT_BOUNDS_MS: (u64, u64) = (100, 600_000);
pub const POOL_WAIT_BOUNDS_MS: (u64, u64) = (50, 60_000);

impl PgOptions {
    /// The options clamped to their bounds (see [`POOL_SIZE_BOUNDS`]).
    pub fn bounded(&self) -> PgOptions {
        PgOptions {
            pool_size: self.pool_size.clamp(POOL_SIZE_BOUNDS.0, POOL_SIZE_BOUNDS.1),
            statement_timeout_ms: self
                .statement_timeout_ms
                .clamp(STATEMENT_TIMEOUT_BOUNDS_MS.0, STATEMENT_TIMEOUT_BOUNDS_MS.1),
            pool_wait_ms: self
                .pool_wait_ms
                .clamp(POOL_WAIT_BOUNDS_MS.0, POOL_WAIT_BOUNDS_MS.1),
        }
    }
}

/// See the module docs.
pub struct PgCentralStore {
    pool: Pool,
    /// Rollup partitions known to exist (week numbers).
    partitions: Mutex<HashSet<i64>>,
    /// A search's `total` is counted up to this many matches when no
    /// per-site count answers it (see [`search`]).
    total_cap: u64,
}

impl std::fmt::Debug for PgCentralStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCentralStore").finish_non_exhaustive()
    }
}

/// A database error with its causes (tokio-postgres puts the server's
/// message in the source); [`CentralStoreError::Unavailable`] when
/// [`is_unavailable`] says retrying later can succeed. Counted in
/// `outpost_central_store_errors_total`.
fn be<E: std::error::Error + 'static>(e: E) -> CentralStoreError {
    if is_unavailable(&e) {
        unavailable(describe(&e))
    } else {
        bs(describe(&e))
    }
}

fn unavailable(msg: String) -> CentralStoreError {
    crate::store::count_store_error("unavailable");
    CentralStoreError::Unavailable(format!("postgresql: {msg}"))
}

/// Whether an error (or one of its causes) says the database cannot
/// serve for now rather than that the request is wrong: the connection
/// is closed or failed (I/O), or the server answers a SQLSTATE of class
/// 08 (connection exception), 57P (shutting down, cannot connect now),
/// 53300 (too many connections), 25006 (read-only: a standby during a
/// failover), 57014 (statement timeout) or 55P03 (lock timeout).
pub fn is_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if let Some(pe) = x.downcast_ref::<tokio_postgres::Error>() {
            if pe.is_closed() {
                return true;
            }
            if let Some(code) = pe.code() {
                let c = code.code();
                return c.starts_with("08")
                    || c.starts_with("57P")
                    || matches!(c, "53300" | "25006" | "57014" | "55P03");
            }
        }
        if x.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        cur = x.source();
    }
    false
}

fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn bs(msg: String) -> CentralStoreError {
    crate::store::count_store_error("other");
    CentralStoreError::Backend(format!("postgresql: {msg}"))
}

/// A stored u64 (times, ids) as PostgreSQL's bigint.
pub(crate) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    Ok(codec::encode(v)?)
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    Ok(codec::decode(b)?)
}

/// A command state as stored (its JSON name).
pub(crate) fn state_name(s: crate::commands::CentralCommandState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Creates or upgrades the schema (under an advisory lock, so instances
/// starting together migrate once); refuses a schema newer than
/// [`MIGRATIONS`] knows.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<i32> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(be)?;
    let r = migrate_locked(client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    r
}

async fn migrate_locked(client: &mut tokio_postgres::Client) -> Result<i32> {
    migrate_with(client, MIGRATIONS).await
}

/// [`migrate`] with a given list (tests): applies, in order, every
/// version of `migrations` the database has not applied, so versions
/// numbered apart (branches reserve numbers and merge in any order) are
/// all applied, whichever arrived first.
pub async fn migrate_with(
    client: &mut tokio_postgres::Client,
    migrations: &[(i32, &str, &str)],
) -> Result<i32> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS outpost_schema_version (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_ms bigint NOT NULL)",
        )
        .await
        .map_err(be)?;
    let applied: HashSet<i32> = client
        .query("SELECT version FROM outpost_schema_version", &[])
        .await
        .map_err(be)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let known = migrations.iter().map(|m| m.0).max().unwrap_or(0);
    // A version this binary does not know (newer, or another branch's
    // number in between) means a schema it may not handle.
    if let Some(current) = applied
        .iter()
        .copied()
        .filter(|v| !migrations.iter().any(|m| m.0 == *v))
        .max()
    {
        return Err(CentralStoreError::Backend(format!(
            "the database schema is version {current}, newer than this outpost-central \
             knows ({known}): run the newer outpost-central (or restore a matching backup)"
        )));
    }
    for (version, name, sql) in migrations.iter().filter(|m| !applied.contains(&m.0)) {
        let tx = client.transaction().await.map_err(be)?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| bs(format!("migration {version} ({name}): {}", describe(&e))))?;
        tx.execute(
            "INSERT INTO outpost_schema_version (version, name, applied_ms) VALUES ($1, $2, $3)",
            &[version, name, &i(crate::now_ms())],
        )
        .await
        .map_err(be)?;
        tx.commit().await.map_err(be)?;
    }
    Ok(known)
}

type Client = deadpool_postgres::Object;

impl PgCentralStore {
    /// Connects (`postgres://…` URL or `key=value` string), migrates the
    /// schema and creates the rollup partitions around `now`.
    pub async fn connect(url: &str, opts: PgOptions) -> Result<PgCentralStore> {
        let opts = opts.bounded();
        let (mut cfg, tls) = tls::configure(url)?;
        cfg.options(format!(
            "-c statement_timeout={} -c lock_timeout={}",
            opts.statement_timeout_ms, opts.statement_timeout_ms
        ));
        cfg.application_name("outpost-central");
        let wait = std::time::Duration::from_millis(opts.pool_wait_ms);
        // A server that vanished without closing (failover, cable) is
        // noticed within about a minute, not after the kernel's 2 hours.
        cfg.connect_timeout(wait);
        cfg.keepalives_idle(std::time::Duration::from_secs(30));
        let mgr = Manager::from_config(
            cfg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(opts.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(wait))
            .create_timeout(Some(wait))
            .recycle_timeout(Some(wait))
            .build()
            .map_err(be)?;
        let store = PgCentralStore {
            pool,
            partitions: Mutex::new(HashSet::new()),
            total_cap: search::TOTAL_CAP,
        };
        {
            let mut c = store.client().await?;
            let client: &mut tokio_postgres::Client = &mut c;
            migrate(client).await?;
        }
        store.fill_search_keys().await?;
        store.fill_deployment_keys().await?;
        store.fill_site_counts().await?;
        let now = crate::now_ms();
        let weeks: Vec<u64> = (0..5)
            .map(|w| now.saturating_sub(PARTITION_MS) + w * PARTITION_MS)
            .collect();
        store.ensure_partitions(weeks).await?;
        Ok(store)
    }

    /// A pooled connection, or [`CentralStoreError::Unavailable`] once
    /// none could be had within the pool's wait (a dead connection is
    /// dropped by the pool and a new one made, so the store recovers by
    /// itself when the server is back).
    pub(crate) async fn client(&self) -> Result<Client> {
        self.pool.get().await.map_err(|e| {
            unavailable(format!(
                "no database connection: {}",
                tls::hint(describe(&e))
            ))
        })
    }

    /// Runs `f` in a transaction as the API role scoped to `tenant`.
    async fn tenant_tx<'c>(
        c: &'c mut Client,
        tenant: &str,
    ) -> Result<deadpool_postgres::Transaction<'c>> {
        let tx = c.transaction().await.map_err(be)?;
        tx.execute(
            "SELECT set_config('role', $1, true), set_config('app.tenant', $2, true)",
            &[&API_ROLE, &tenant],
        )
        .await
        .map_err(be)?;
        Ok(tx)
    }

    /// Forgets which rollup partitions exist (another instance's
    /// maintenance may have dropped some): the next apply asks again.
    pub fn forget_partitions(&self) {
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// A rollup insert's error: a row without a partition (dropped by
    /// maintenance since this pool made it) forgets the cache and is
    /// [`PARTITION_GONE`], which the apply retries once.
    fn partition_gone(&self, e: tokio_postgres::Error) -> CentralStoreError {
        if e.code() == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION) {
            self.forget_partitions();
            CentralStoreError::Backend(PARTITION_GONE.into())
        } else {
            be(e)
        }
    }

    /// Creates the weekly rollup partitions holding these bucket times.
    pub async fn ensure_partitions(&self, buckets: impl IntoIterator<Item = u64>) -> Result<()> {
        let missing: Vec<i64> = {
            let known = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
            let mut m: Vec<i64> = buckets
                .into_iter()
                .map(|b| i(b / PARTITION_MS))
                .filter(|w| !known.contains(w))
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(be)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(be)?;
        for w in &missing {
            let from = w * i(PARTITION_MS);
            let to = from + i(PARTITION_MS);
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS rollups_w{w} PARTITION OF rollups \
                 FOR VALUES FROM ({from}) TO ({to})"
            ))
            .await
            .map_err(be)?;
        }
        tx.commit().await.map_err(be)?;
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(missing);
        Ok(())
    }

    /// Retention: drops every rollup partition wholly before `cutoff_ms`;
    /// returns the names dropped.
    pub async fn drop_rollup_partitions_before(&self, cutoff_ms: u64) -> Result<Vec<String>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(be)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(be)?;
        let rows = tx
            .query(
                "SELECT c.relname::text FROM pg_inherits i \
                 JOIN pg_class c ON c.oid = i.inhrelid \
                 JOIN pg_class p ON p.oid = i.inhparent \
                 WHERE p.relname = 'rollups'",
                &[],
            )
            .await
            .map_err(be)?;
        let mut dropped = Vec::new();
        for r in rows {
            let name: String = r.get(0);
            let Some(w) = name
                .strip_prefix("rollups_w")
                .and_then(|w| w.parse::<i64>().ok())
            else {
                continue;
            };
            if (w + 1) * i(PARTITION_MS) <= i(cutoff_ms) {
                tx.batch_execute(&format!("DROP TABLE {name}"))
                    .await
                    .map_err(be)?;
                dropped.push((w, name));
            }
        }
        tx.commit().await.map_err(be)?;
        let mut known = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        for (w, _) in &dropped {
            known.remove(w);
        }
        Ok(dropped.into_iter().map(|(_, n)| n).collect())
    }

    /// A transaction as the API role with `app.tenant` unset (sees no
    /// row): what the row-level security test uses.
    pub async fn query_as_api_role(
        &self,
        tenant: Option<&str>,
        sql: &str,
    ) -> Result<Vec<tokio_postgres::Row>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(be)?;
        tx.execute("SELECT set_config('role', $1, true)", &[&API_ROLE])
            .await
            .map_err(be)?;
        if let Some(t) = tenant {
            tx.execute("SELECT set_config('app.tenant', $1, true)", &[&t])
                .await
                .map_err(be)?;
        }
        let rows = tx.query(sql, &[]).await.map_err(be)?;
        tx.commit().await.map_err(be)?;
        Ok(rows)
    }
}

// ---------------------------------------------------------------- batches

impl PgCentralStore {
    async fn apply_impl(
        &self,
        tenant: &str,
        site_id: &str,
        b: &SiteBatch,
        received_ms: u64,
    ) -> Result<(ApplyOutcome, FleetDelta)> {
        self.ensure_partitions(b.rollups.iter().map(|r| r.bucket_start_ms))
            .await?;
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let row = tx
            .query_opt(
                "SELECT body FROM sites WHERE tenant_id = $1 AND site_id = $2 FOR UPDATE",
                &[&tenant, &site_id],
            )
            .await
            .map_err(be)?
            .ok_or_else(|| CentralStoreError::Conflict(format!("unknown site {site_id}")))?;
        let site = SiteRecord::from_stored(row.get::<_, &[u8]>(0))?;
        if apply::is_duplicate(&site, b) {
            return Ok((ApplyOutcome::Duplicate, FleetDelta::default()));
        }
        let claimed = tx
            .execute(
                "INSERT INTO applied_batches (tenant_id, site_id, seq, applied_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&tenant, &site_id, &i(b.seq), &i(received_ms)],
            )
            .await
            .map_err(be)?;
        if claimed == 0 {
            return Ok((ApplyOutcome::Duplicate, FleetDelta::default()));
        }
        let touched = Touched::of(b);
        let devices = {
            let rows = tx
                .query(
                    "SELECT device, body FROM devices \
                     WHERE tenant_id = $1 AND site_id = $2 AND device = ANY($3)",
                    &[&tenant, &site_id, &touched.devices],
                )
                .await
                .map_err(be)?;
            let mut by: HashMap<String, DeviceRow> = HashMap::with_capacity(rows.len());
            for r in rows {
                by.insert(r.get(0), dec(r.get::<_, &[u8]>(1))?);
            }
            touched.devices.iter().map(|d| by.remove(d)).collect()
        };
        let buckets = {
            let devs: Vec<&str> = touched
                .buckets
                .iter()
                .map(|(d, _)| touched.devices.get(*d).map_or("", |s| s.as_str()))
                .collect();
            let times: Vec<i64> = touched.buckets.iter().map(|(_, t)| i(*t)).collect();
            let rows = tx
                .query(
                    "SELECT r.device, r.bucket_ms, r.body FROM rollups r \
                     JOIN unnest($3::text[], $4::bigint[]) AS k(device, bucket_ms) \
                       ON r.device = k.device AND r.bucket_ms = k.bucket_ms \
                     WHERE r.tenant_id = $1 AND r.site_id = $2",
                    &[&tenant, &site_id, &devs, &times],
                )
                .await
                .map_err(be)?;
            let mut by: HashMap<(String, i64), BucketRow<'static>> = HashMap::new();
            for r in rows {
                by.insert((r.get(0), r.get(1)), dec(r.get::<_, &[u8]>(2))?);
            }
            devs.iter()
                .zip(&times)
                .map(|(d, t)| by.remove(&(d.to_string(), *t)))
                .collect()
        };
        let alerts = {
            let ids: Vec<i64> = touched.alerts.iter().map(|a| i(*a)).collect();
            let rows = tx
                .query(
                    "SELECT alert_id, body FROM alerts \
                     WHERE tenant_id = $1 AND site_id = $2 AND alert_id = ANY($3)",
                    &[&tenant, &site_id, &ids],
                )
                .await
                .map_err(be)?;
            let mut by: HashMap<i64, AlertRow> = HashMap::new();
            for r in rows {
                by.insert(r.get(0), dec(r.get::<_, &[u8]>(1))?);
            }
            ids.iter().map(|a| by.remove(a)).collect()
        };
        let patches = {
            let rows = tx
                .query(
                    "SELECT device, body FROM patch_compliance \
                     WHERE tenant_id = $1 AND site_id = $2 AND device = ANY($3)",
                    &[&tenant, &site_id, &touched.patches],
                )
                .await
                .map_err(be)?;
            let mut by: HashMap<String, PatchComplianceRow> = HashMap::new();
            for r in rows {
                by.insert(r.get(0), dec(r.get::<_, &[u8]>(1))?);
            }
            touched.patches.iter().map(|d| by.remove(d)).collect()
        };
        let findings: Vec<Option<PatchFindingsRow>> = {
            let rows = tx
                .query(
                    "SELECT device, body FROM patch_findings \
                     WHERE tenant_id = $1 AND site_id = $2 AND device = ANY($3)",
                    &[&tenant, &site_id, &touched.findings],
                )
                .await
                .map_err(be)?;
            let mut by: HashMap<String, PatchFindingsRow> = HashMap::new();
            for r in rows {
                by.insert(r.get(0), dec(r.get::<_, &[u8]>(1))?);
            }
            touched.findings.iter().map(|d| by.remove(d)).collect()
        };
        // The CVEs of the findings rows the batch may replace: their index
        // rows go when a replacing row no longer has them (as RocksDB).
        let cves_before: Vec<Vec<String>> = findings
            .iter()
            .map(|r| {
                r.as_ref().map_or_else(Vec::new, |r| {
                    r.cve_hits().into_keys().map(str::to_owned).collect()
                })
            })
            .collect();
        let current = CurrentRows {
            touched,
            site,
            devices,
            buckets,
            alerts,
            patches,
            findings,
        };
        let touched_buckets = current.touched.buckets.clone();
        let touched_devices = current.touched.devices.clone();
        let touched_patches = current.touched.patches.clone();
        let touched_findings = current.touched.findings.clone();
        let changes = match apply::plan(current, b, received_ms)
            .map_err(|e| CentralStoreError::Backend(e.to_string()))?
        {
            ApplyPlan::Duplicate => return Ok((ApplyOutcome::Duplicate, FleetDelta::default())),
            ApplyPlan::Apply(c) => c,
        };
        // Rollup rows the batch changed.
        {
            let (mut devs, mut times, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
            for ((d, t), row) in touched_buckets.iter().zip(&changes.buckets) {
                if let Some(row) = row {
                    devs.push(touched_devices.get(*d).cloned().unwrap_or_default());
                    times.push(i(*t));
                    bodies.push(enc(row)?);
                }
            }
            if !devs.is_empty() {
                tx.execute(
                    "INSERT INTO rollups (tenant_id, site_id, device, bucket_ms, body) \
                     SELECT $1, $2, * FROM unnest($3::text[], $4::bigint[], $5::bytea[]) \
                     ON CONFLICT (tenant_id, site_id, device, bucket_ms) \
                     DO UPDATE SET body = excluded.body",
                    &[&tenant, &site_id, &devs, &times, &bodies],
                )
                .await
                .map_err(|e| self.partition_gone(e))?;
            }
        }
        if !changes.alerts.is_empty() {
            let mut cols = (
                Vec::<i64>::new(),
                Vec::<String>::new(),
                Vec::<&str>::new(),
                Vec::<&str>::new(),
                Vec::<i64>::new(),
            );
            let mut bodies = Vec::new();
            let mut devices: Vec<Option<&str>> = Vec::new();
            for a in &changes.alerts {
                cols.0.push(i(a.alert_id));
                cols.1.push(a.customer.to_string());
                cols.2.push(a.state.as_str());
                cols.3.push(a.severity.as_str());
                cols.4.push(i(a.at_ms));
                bodies.push(enc(a)?);
                devices.push(a.device.as_deref());
            }
            tx.execute(
                "INSERT INTO alerts (tenant_id, site_id, alert_id, customer, state, severity, at_ms, body, device) \
                 SELECT $1, $2, * FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[], \
                 $8::bytea[], $9::text[]) \
                 ON CONFLICT (tenant_id, site_id, alert_id) DO UPDATE SET customer = excluded.customer, \
                 state = excluded.state, severity = excluded.severity, at_ms = excluded.at_ms, body = excluded.body, \
                 device = excluded.device",
                &[&tenant, &site_id, &cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &bodies, &devices],
            )
            .await
            .map_err(be)?;
        }
        if !changes.devices.is_empty() {
            Self::write_devices(&tx, tenant, site_id, &changes.devices).await?;
            Self::write_device_facts(&tx, tenant, site_id, &changes.devices, &changes.facts)
                .await?;
        }
        {
            let (mut devs, mut bodies) = (Vec::new(), Vec::new());
            for (d, row) in touched_patches.iter().zip(&changes.patches) {
                if let Some(row) = row {
                    devs.push(d.clone());
                    bodies.push(enc(row)?);
                }
            }
            if !devs.is_empty() {
                tx.execute(
                    "INSERT INTO patch_compliance (tenant_id, site_id, device, body) \
                     SELECT $1, $2, * FROM unnest($3::text[], $4::bytea[]) \
                     ON CONFLICT (tenant_id, site_id, device) DO UPDATE SET body = excluded.body",
                    &[&tenant, &site_id, &devs, &bodies],
                )
                .await
                .map_err(be)?;
            }
        }
        Self::write_findings(
            &tx,
            tenant,
            site_id,
            &touched_findings,
            &changes.findings,
            &cves_before,
        )
        .await?;
        if !changes.alert_history.is_empty() {
            let (mut ids, mut entries, mut ats, mut bodies) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (alert_id, number, entry) in &changes.alert_history {
                ids.push(i(*alert_id));
                entries.push(format!("t{number:010}"));
                ats.push(i(history_at(entry)));
                bodies.push(enc(entry)?);
            }
            tx.execute(
                "INSERT INTO alert_history (tenant_id, site_id, alert_id, entry, at_ms, body) \
                 SELECT $1, $2, * FROM unnest($3::bigint[], $4::text[], $5::bigint[], $6::bytea[]) \
                 ON CONFLICT (tenant_id, site_id, alert_id, entry) DO UPDATE SET body = excluded.body",
                &[&tenant, &site_id, &ids, &entries, &ats, &bodies],
            )
            .await
            .map_err(be)?;
        }
        if !changes.status_history.is_empty() {
            let (mut devs, mut sinces, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
            for (d, since, status) in &changes.status_history {
                devs.push(
                    changes
                        .devices
                        .get(*d)
                        .map_or(String::new(), |r| r.device.clone()),
                );
                sinces.push(i(*since));
                bodies.push(enc(status)?);
            }
            tx.execute(
                "INSERT INTO status_history (tenant_id, site_id, device, since_ms, body) \
                 SELECT $1, $2, * FROM unnest($3::text[], $4::bigint[], $5::bytea[]) \
                 ON CONFLICT (tenant_id, site_id, device, since_ms) DO UPDATE SET body = excluded.body",
                &[&tenant, &site_id, &devs, &sinces, &bodies],
            )
            .await
            .map_err(be)?;
        }
        if !changes.devices.is_empty() || !changes.alerts.is_empty() {
            search::recount_site(&tx, tenant, site_id).await?;
        }
        Self::write_site(&tx, &changes.site).await?;
        tx.commit().await.map_err(be)?;
        Ok((changes.outcome(), apply::delta(&changes)))
    }

    async fn write_devices(
        tx: &deadpool_postgres::Transaction<'_>,
        tenant: &str,
        site_id: &str,
        rows: &[DeviceRow],
    ) -> Result<()> {
        let mut cols = (
            Vec::<&str>::new(),
            Vec::<String>::new(),
            Vec::<&str>::new(),
            Vec::<&str>::new(),
            Vec::<i64>::new(),
        );
        let mut bodies = Vec::with_capacity(rows.len());
        let mut keys = (
            Vec::<String>::new(),
            Vec::<String>::new(),
            Vec::<i16>::new(),
            Vec::<i64>::new(),
            Vec::<String>::new(),
        );
        for d in rows {
            cols.0.push(&d.device);
            cols.1.push(d.customer.to_string());
            cols.2.push(&d.hostname);
            cols.3.push(d.clone().upgraded().status.as_str());
            cols.4.push(i(d.last_seen_ms));
            bodies.push(enc(d)?);
            let k = crate::fleet_index::search_keys(d);
            keys.2.push(k.status_rank() as i16);
            keys.3.push(i(k.cpu_key()));
            keys.4.push(search::words_lc(&k.host_lc, &k.os_lc, ""));
            keys.0.push(k.host_lc);
            keys.1.push(k.os_lc);
        }
        tx.execute(
            "INSERT INTO devices (tenant_id, site_id, device, customer, hostname, status, last_seen_ms, body, \
             host_lc, os_lc, status_rank, cpu_key, words_lc) \
             SELECT $1, $2, * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bytea[], \
             $9::text[], $10::text[], $11::smallint[], $12::bigint[], $13::text[]) \
             ON CONFLICT (tenant_id, site_id, device) DO UPDATE SET customer = excluded.customer, \
             hostname = excluded.hostname, status = excluded.status, last_seen_ms = excluded.last_seen_ms, \
             body = excluded.body, host_lc = excluded.host_lc, os_lc = excluded.os_lc, \
             status_rank = excluded.status_rank, cpu_key = excluded.cpu_key, \
             words_lc = excluded.host_lc || E'\\n' || excluded.os_lc || E'\\n' || devices.tags_lc",
            &[
                &tenant, &site_id, &cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &bodies, &keys.0,
                &keys.1, &keys.2, &keys.3, &keys.4,
            ],
        )
        .await
        .map_err(be)?;
        Ok(())
    }

    /// The IPs and tags of the devices whose snapshot won (after
    /// [`Self::write_devices`], same transaction): one statement per
    /// device (arrays of arrays do not unnest), only for winning
    /// snapshots.
    async fn write_device_facts(
        tx: &deadpool_postgres::Transaction<'_>,
        tenant: &str,
        site_id: &str,
        rows: &[DeviceRow],
        facts: &[Option<DeviceFacts>],
    ) -> Result<()> {
        for (d, f) in rows.iter().zip(facts) {
            let Some(f) = f else { continue };
            tx.execute(
                "UPDATE devices SET ips = $4, tags = $5, tags_lc = $6, ips_lc = $7, \
                 words_lc = host_lc || E'\\n' || os_lc || E'\\n' || $6 \
                 WHERE tenant_id = $1 AND site_id = $2 AND device = $3",
                &[
                    &tenant,
                    &site_id,
                    &d.device,
                    &f.ips,
                    &f.tags,
                    &search::tags_lc(&f.tags),
                    &search::ips_lc(&f.ips),
                ],
            )
            .await
            .map_err(be)?;
        }
        Ok(())
    }

    /// Findings rows the batch changed, and the CVE index rows derived
    /// from them: index rows of CVEs a row no longer has are deleted, the
    /// others upserted (same transaction as the findings rows).
    async fn write_findings(
        tx: &deadpool_postgres::Transaction<'_>,
        tenant: &str,
        site_id: &str,
        devices: &[String],
        rows: &[Option<PatchFindingsRow>],
        cves_before: &[Vec<String>],
    ) -> Result<()> {
        let (mut devs, mut bodies) = (Vec::new(), Vec::new());
        let (mut gone_cves, mut gone_devs) = (Vec::<String>::new(), Vec::<String>::new());
        let (mut cves, mut cve_devs, mut hits_bodies) =
            (Vec::<String>::new(), Vec::<String>::new(), Vec::new());
        for ((d, row), before) in devices.iter().zip(rows).zip(cves_before) {
            let Some(row) = row else { continue };
            devs.push(d.clone());
            bodies.push(enc(row)?);
            let hits = row.cve_hits();
            for gone in before.iter().filter(|c| !hits.contains_key(c.as_str())) {
                gone_cves.push(gone.clone());
                gone_devs.push(row.device.clone());
            }
            for (cve, h) in &hits {
                cves.push((*cve).to_owned());
                cve_devs.push(row.device.clone());
                hits_bodies.push(enc(h)?);
            }
        }
        if devs.is_empty() {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO patch_findings (tenant_id, site_id, device, body) \
             SELECT $1, $2, * FROM unnest($3::text[], $4::bytea[]) \
             ON CONFLICT (tenant_id, site_id, device) DO UPDATE SET body = excluded.body",
            &[&tenant, &site_id, &devs, &bodies],
        )
        .await
        .map_err(be)?;
        if !gone_cves.is_empty() {
            tx.execute(
                "DELETE FROM patch_cves p USING unnest($3::text[], $4::text[]) AS g(cve, device) \
                 WHERE p.tenant_id = $1 AND p.site_id = $2 AND p.cve = g.cve AND p.device = g.device",
                &[&tenant, &site_id, &gone_cves, &gone_devs],
            )
            .await
            .map_err(be)?;
        }
        if !cves.is_empty() {
            tx.execute(
                "INSERT INTO patch_cves (tenant_id, site_id, cve, device, body) \
                 SELECT $1, $2, * FROM unnest($3::text[], $4::text[], $5::bytea[]) \
                 ON CONFLICT (tenant_id, cve, site_id, device) DO UPDATE SET body = excluded.body",
                &[&tenant, &site_id, &cves, &cve_devs, &hits_bodies],
            )
            .await
            .map_err(be)?;
        }
        Ok(())
    }

    async fn write_site(tx: &deadpool_postgres::Transaction<'_>, site: &SiteRecord) -> Result<()> {
        tx.execute(
            "INSERT INTO sites (tenant_id, site_id, customer, body, name, name_lc) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant_id, site_id) DO UPDATE SET customer = excluded.customer, body = excluded.body, \
             name = excluded.name, name_lc = excluded.name_lc",
            &[
                &site.tenant.as_str(),
                &site.site_id.as_str(),
                &site.customer.as_str(),
                &site.to_stored()?,
                &site.name,
                &site.name.to_lowercase(),
            ],
        )
        .await
        .map_err(be)?;
        Ok(())
    }

    async fn dead_letter_impl(
        &self,
        tenant: &str,
        site_id: &str,
        letter: DeadLetter,
    ) -> Result<DeadLetterOutcome> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let row = tx
            .query_opt(
                "SELECT body FROM sites WHERE tenant_id = $1 AND site_id = $2 FOR UPDATE",
                &[&tenant, &site_id],
            )
            .await
            .map_err(be)?
            .ok_or_else(|| CentralStoreError::Conflict(format!("unknown site {site_id}")))?;
        let site = SiteRecord::from_stored(row.get::<_, &[u8]>(0))?;
        match apply::dead_letter(site, letter) {
            DeadLetterPlan::AlreadyClosed => Ok(DeadLetterOutcome::AlreadyClosed),
            DeadLetterPlan::Record(site, expired) => {
                Self::write_site(&tx, &site).await?;
                tx.commit().await.map_err(be)?;
                Ok(DeadLetterOutcome::Recorded {
                    gaps_expired: expired.len() as u64,
                })
            }
        }
    }
}

fn history_at(e: &AlertHistoryEntry) -> u64 {
    match e {
        AlertHistoryEntry::Transition { at_ms, .. } | AlertHistoryEntry::Ack { at_ms, .. } => {
            *at_ms
        }
    }
}

// ------------------------------------------------------------------ reads

/// A device cursor: hex of `tenant \0 site \0 device` (the last row of
/// a page).
fn device_cursor(tenant: &str, site: &str, device: &str) -> String {
    let mut k = tenant.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(site.as_bytes());
    k.push(0);
    k.extend_from_slice(device.as_bytes());
    hex::encode(k)
}

fn parse_device_cursor(c: &str, tenant: &str, site: Option<&SiteId>) -> Result<(String, String)> {
    let bad = || {
        CentralStoreError::InvalidCursor(format!(
            "cursor {c:?} is not a `next` value of this device list \
             (pass `next` of the previous page unchanged, with the same filters)"
        ))
    };
    let k = hex::decode(c).map_err(|_| bad())?;
    let k = String::from_utf8(k).map_err(|_| bad())?;
    let (t, rest) = k.split_once('\0').ok_or_else(bad)?;
    let (s, d) = rest.split_once('\0').ok_or_else(bad)?;
    if t != tenant || site.is_some_and(|want| want.as_str() != s) {
        return Err(bad());
    }
    Ok((s.to_string(), d.to_string()))
}

impl PgCentralStore {
    async fn devices_impl(&self, tenant: &str, f: &DeviceFilter) -> Result<Page<DeviceRow>> {
        let after = f
            .after
            .as_deref()
            .map(|a| parse_device_cursor(a, tenant, f.site_id.as_ref()))
            .transpose()?;
        let limit = f.limit.max(1);
        let allowed: Vec<&str> = f.customers_allowed.iter().map(|c| c.as_str()).collect();
        let (after_site, after_dev) = after.unzip();
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let rows = tx
            .query(
                "SELECT d.body, s.customer FROM devices d \
                 LEFT JOIN sites s ON s.tenant_id = d.tenant_id AND s.site_id = d.site_id \
                 WHERE d.tenant_id = $1 \
                   AND ($2::text IS NULL OR d.site_id = $2) \
                   AND ($3::text IS NULL OR COALESCE(s.customer, d.customer) = $3) \
                   AND (cardinality($4::text[]) = 0 OR COALESCE(s.customer, d.customer) = ANY($4)) \
                   AND ($5::text IS NULL OR d.status = $5) \
                   AND ($6::text IS NULL OR (d.site_id, d.device) > ($6, $7)) \
                   AND ($9::text IS NULL OR d.tags @> ARRAY[$9::text]) \
                 ORDER BY d.site_id, d.device LIMIT $8",
                &[
                    &tenant,
                    &f.site_id.as_ref().map(|s| s.as_str()),
                    &f.customer.as_ref().map(|c| c.as_str()),
                    &allowed,
                    &f.status.as_deref(),
                    &after_site,
                    &after_dev.unwrap_or_default(),
                    &(limit as i64 + 1),
                    &f.tag.as_deref(),
                ],
            )
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)?;
        let more = rows.len() > limit;
        let mut items = Vec::with_capacity(limit);
        for r in rows.into_iter().take(limit) {
            let mut d: DeviceRow = dec::<DeviceRow>(r.get::<_, &[u8]>(0))?.upgraded();
            if let Some(c) = r.get::<_, Option<String>>(1) {
                d.customer = c.into();
            }
            items.push(d);
        }
        let next = if more {
            items
                .last()
                .map(|d| device_cursor(tenant, &d.site_id, &d.device))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn device_impl(
        &self,
        tenant: &str,
        site_id: &str,
        device: &str,
    ) -> Result<Option<DeviceRow>> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let row = tx
            .query_opt(
                "SELECT d.body, s.customer FROM devices d \
                 LEFT JOIN sites s ON s.tenant_id = d.tenant_id AND s.site_id = d.site_id \
                 WHERE d.tenant_id = $1 AND d.site_id = $2 AND d.device = $3",
                &[&tenant, &site_id, &device],
            )
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)?;
        let Some(r) = row else { return Ok(None) };
        let mut d = dec::<DeviceRow>(r.get::<_, &[u8]>(0))?.upgraded();
        if let Some(c) = r.get::<_, Option<String>>(1) {
            d.customer = c.into();
        }
        Ok(Some(d))
    }

    async fn patch_compliance_impl(
        &self,
        tenant: &str,
        site_id: Option<&str>,
        device: Option<&str>,
    ) -> Result<Vec<PatchComplianceRow>> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let rows = tx
            .query(
                "SELECT p.body, s.customer FROM patch_compliance p \
                 JOIN sites s ON s.tenant_id = p.tenant_id AND s.site_id = p.site_id \
                 WHERE p.tenant_id = $1 AND ($2::text IS NULL OR p.site_id = $2) \
                   AND ($3::text IS NULL OR p.device = $3) \
                 ORDER BY p.site_id, p.device",
                &[&tenant, &site_id, &device],
            )
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)?;
        rows.into_iter()
            .map(|r| {
                let mut p: PatchComplianceRow = dec(r.get::<_, &[u8]>(0))?;
                p.customer = r.get::<_, String>(1).into();
                Ok(p)
            })
            .collect()
    }

    /// Findings rows of the tenant (of one site), each with its site's
    /// current customer; rows of a site no longer known are left out.
    async fn patch_findings_impl(
        &self,
        tenant: &str,
        site_id: Option<&str>,
    ) -> Result<Vec<PatchFindingsRow>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT p.body, s.customer FROM patch_findings p \
                 JOIN sites s ON s.tenant_id = p.tenant_id AND s.site_id = p.site_id \
                 WHERE p.tenant_id = $1 AND ($2::text IS NULL OR p.site_id = $2) \
                 ORDER BY p.site_id, p.device",
                &[&tenant, &site_id],
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                let mut p: PatchFindingsRow = dec(r.get::<_, &[u8]>(0))?;
                p.customer = r.get::<_, String>(1).into();
                Ok(p)
            })
            .collect()
    }

    /// One device's findings row, with its site's customer when the site
    /// is known (as RocksDB: the row is returned either way).
    async fn device_patch_findings_impl(
        &self,
        tenant: &str,
        site_id: &str,
        device: &str,
    ) -> Result<Option<PatchFindingsRow>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT p.body, s.customer FROM patch_findings p \
                 LEFT JOIN sites s ON s.tenant_id = p.tenant_id AND s.site_id = p.site_id \
                 WHERE p.tenant_id = $1 AND p.site_id = $2 AND p.device = $3",
                &[&tenant, &site_id, &device],
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let mut p: PatchFindingsRow = dec(r.get::<_, &[u8]>(0))?;
        if let Some(c) = r.get::<_, Option<String>>(1) {
            p.customer = c.into();
        }
        Ok(Some(p))
    }

    /// The tenant's devices exposed to `cve`, from the CVE index, in
    /// (site, device) order; at least one row is read even with a zero
    /// limit, as the RocksDB scan does.
    async fn cve_exposure_impl(
        &self,
        tenant: &str,
        cve: &str,
        limit: usize,
    ) -> Result<Vec<CveExposureRow>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT site_id, device, body FROM patch_cves \
                 WHERE tenant_id = $1 AND cve = $2 ORDER BY site_id, device LIMIT $3",
                &[&tenant, &cve, &i(limit.max(1) as u64)],
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(CveExposureRow {
                    site_id: SiteId::from(r.get::<_, String>(0)),
                    device: r.get(1),
                    hits: dec::<Vec<CveHit>>(r.get::<_, &[u8]>(2))?,
                })
            })
            .collect()
    }

    async fn cve_site_exposure_impl(
        &self,
        tenant: &str,
        site_id: Option<&str>,
    ) -> Result<Vec<CveSiteExposure>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT cve, site_id, body FROM patch_cves \
                 WHERE tenant_id = $1 AND ($2::text IS NULL OR site_id = $2) \
                 ORDER BY cve, site_id",
                &[&tenant, &site_id],
            )
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let hits = dec::<Vec<CveHit>>(r.get::<_, &[u8]>(2))?;
            CveSiteExposure::fold(
                &mut out,
                r.get::<_, &str>(0),
                &SiteId::from(r.get::<_, String>(1)),
                &hits,
            );
        }
        Ok(out)
    }

    /// Visits the bucket rows of one device in `[from, to)`, oldest first,
    /// in pages of 1,000, until `f` returns false.
    async fn scan_buckets(
        &self,
        tenant: &str,
        site_id: &str,
        device: &str,
        from_ms: u64,
        to_ms: u64,
        mut f: impl FnMut(u64, BucketRow<'static>) -> bool + Send,
    ) -> Result<()> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let mut from = i(from_ms);
        loop {
            let rows = tx
                .query(
                    "SELECT bucket_ms, body FROM rollups \
                     WHERE tenant_id = $1 AND site_id = $2 AND device = $3 \
                       AND bucket_ms >= $4 AND bucket_ms < $5 \
                     ORDER BY bucket_ms LIMIT 1000",
                    &[&tenant, &site_id, &device, &from, &i(to_ms)],
                )
                .await
                .map_err(be)?;
            let n = rows.len();
            for r in rows {
                let at: i64 = r.get(0);
                from = at + 1;
                if !f(u(at), dec(r.get::<_, &[u8]>(1))?) {
                    return Ok(());
                }
            }
            if n < 1000 {
                break;
            }
        }
        tx.commit().await.map_err(be)?;
        Ok(())
    }

    async fn rollups_impl(&self, tenant: &str, q: &RollupQuery) -> Result<Vec<(u64, RollupRow)>> {
        let mut out = Vec::new();
        if q.limit == 0 {
            return Ok(out);
        }
        self.scan_buckets(
            tenant,
            &q.site_id,
            &q.device,
            q.from_ms,
            q.to_ms,
            |bucket, row| {
                if let Some(s) = row
                    .series
                    .into_iter()
                    .find(|s| s.name == q.series && s.label == q.label)
                {
                    out.push((
                        bucket,
                        RollupRow {
                            computed_ms: s.computed_ms,
                            rollup: s.rollup,
                        },
                    ));
                }
                out.len() < q.limit
            },
        )
        .await?;
        Ok(out)
    }

    async fn series_rollups_impl(
        &self,
        tenant: &str,
        q: &SeriesQuery,
    ) -> Result<Vec<Vec<(u64, Rollup)>>> {
        let mut out: Vec<Vec<(u64, Rollup)>> = vec![Vec::new(); q.series.len()];
        self.scan_buckets(
            tenant,
            &q.site_id,
            &q.device,
            q.from_ms,
            q.to_ms,
            |bucket, row| {
                for (idx, (name, label)) in q.series.iter().enumerate() {
                    if let Some(sr) = row
                        .series
                        .iter()
                        .find(|s| s.name == *name && s.label == *label)
                        && let Some(list) = out.get_mut(idx)
                    {
                        list.push((bucket, sr.rollup));
                    }
                }
                true
            },
        )
        .await?;
        Ok(out)
    }

    async fn alerts_impl(&self, tenant: &str, site_id: Option<&str>) -> Result<Vec<AlertRow>> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let rows = tx
            .query(
                "SELECT body FROM alerts WHERE tenant_id = $1 AND ($2::text IS NULL OR site_id = $2) \
                 ORDER BY site_id, alert_id",
                &[&tenant, &site_id],
            )
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)?;
        rows.iter().map(|r| dec(r.get::<_, &[u8]>(0))).collect()
    }

    async fn alert_page_impl(&self, tenant: &str, f: &AlertFilter) -> Result<AlertPage> {
        let states: Vec<&str> = match f.states {
            AlertStates::Open => vec!["pending", "firing"],
            AlertStates::All => vec![],
            AlertStates::Only(s) => vec![s.as_str()],
        };
        let allowed: Vec<&str> = f.customers_allowed.iter().map(|c| c.as_str()).collect();
        let site = f.site.as_ref().map(|s| s.as_str());
        let customer = f.customer.as_ref().map(|c| c.as_str());
        let severity = f.severity.map(|s| s.as_str());
        let filter = "tenant_id = $1 AND ($2::text IS NULL OR site_id = $2) \
             AND (cardinality($3::text[]) = 0 OR customer = ANY($3)) \
             AND ($4::text IS NULL OR customer = $4) AND ($5::text IS NULL OR severity = $5) \
             AND (cardinality($6::text[]) = 0 OR state = ANY($6))";
        let params: [&(dyn ToSql + Sync); 6] =
            [&tenant, &site, &allowed, &customer, &severity, &states];
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let total: i64 = tx
            .query_one(
                &format!("SELECT count(*) FROM alerts WHERE {filter}"),
                &params,
            )
            .await
            .map_err(be)?
            .get(0);
        let mut p: Vec<&(dyn ToSql + Sync)> = params.to_vec();
        let limit = f.limit.max(1) as i64;
        p.push(&limit);
        let rows = tx
            .query(
                &format!(
                    "SELECT body FROM alerts WHERE {filter} \
                     ORDER BY at_ms DESC, site_id DESC, alert_id DESC LIMIT $7"
                ),
                &p,
            )
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)?;
        Ok(AlertPage {
            rows: rows
                .iter()
                .map(|r| dec(r.get::<_, &[u8]>(0)))
                .collect::<Result<_>>()?,
            total: u(total),
        })
    }

    async fn ack_alert_impl(
        &self,
        tenant: &str,
        site_id: &str,
        alert_id: u64,
        by: &str,
        comment: &str,
        now_ms: u64,
    ) -> Result<Option<AlertRow>> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let Some(row) = tx
            .query_opt(
                "SELECT body FROM alerts WHERE tenant_id = $1 AND site_id = $2 AND alert_id = $3 FOR UPDATE",
                &[&tenant, &site_id, &i(alert_id)],
            )
            .await
            .map_err(be)?
        else {
            return Ok(None);
        };
        let mut a: AlertRow = dec(row.get::<_, &[u8]>(0))?;
        a.acked_by = Some(by.to_string());
        a.acked_ms = now_ms;
        tx.execute(
            "UPDATE alerts SET body = $4 WHERE tenant_id = $1 AND site_id = $2 AND alert_id = $3",
            &[&tenant, &site_id, &i(alert_id), &enc(&a)?],
        )
        .await
        .map_err(be)?;
        let entry = AlertHistoryEntry::Ack {
            at_ms: now_ms,
            by: by.to_string(),
            comment: comment.to_string(),
        };
        tx.execute(
            "INSERT INTO alert_history (tenant_id, site_id, alert_id, entry, at_ms, body) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, site_id, alert_id, entry) \
             DO UPDATE SET body = excluded.body",
            &[
                &tenant,
                &site_id,
                &i(alert_id),
                &format!("k{now_ms:020}{by}"),
                &i(now_ms),
                &enc(&entry)?,
            ],
        )
        .await
        .map_err(be)?;
        tx.commit().await.map_err(be)?;
        Ok(Some(a))
    }

    async fn alert_history_impl(
        &self,
        tenant: &str,
        site_id: &str,
        alert_id: u64,
    ) -> Result<Vec<AlertHistoryEntry>> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let rows = tx
            .query(
                "SELECT body FROM alert_history WHERE tenant_id = $1 AND site_id = $2 AND alert_id = $3 \
                 ORDER BY entry LIMIT 10000",
                &[&tenant, &site_id, &i(alert_id)],
            )
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)?;
        let mut out: Vec<AlertHistoryEntry> = rows
            .iter()
            .map(|r| dec(r.get::<_, &[u8]>(0)))
            .collect::<Result<_>>()?;
        out.sort_by_key(history_at);
        Ok(out)
    }

    async fn status_history_impl(
        &self,
        tenant: &str,
        site_id: &str,
        device: &str,
        limit: usize,
    ) -> Result<Vec<(u64, DeviceStatus)>> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let rows = tx
            .query(
                "SELECT since_ms, body FROM status_history \
                 WHERE tenant_id = $1 AND site_id = $2 AND device = $3 \
                 ORDER BY since_ms DESC LIMIT $4",
                &[&tenant, &site_id, &device, &(limit as i64)],
            )
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)?;
        rows.iter()
            .map(|r| Ok((u(r.get(0)), dec(r.get::<_, &[u8]>(1))?)))
            .collect()
    }

    async fn hostnames_impl(
        &self,
        tenant: &str,
        devices: &[(SiteId, String)],
    ) -> Result<Vec<Option<String>>> {
        let sites: Vec<&str> = devices.iter().map(|(s, _)| s.as_str()).collect();
        let devs: Vec<&str> = devices.iter().map(|(_, d)| d.as_str()).collect();
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let rows = tx
            .query(
                "SELECT d.site_id, d.device, d.hostname FROM devices d \
                 JOIN unnest($2::text[], $3::text[]) AS k(site_id, device) \
                   ON d.site_id = k.site_id AND d.device = k.device \
                 WHERE d.tenant_id = $1",
                &[&tenant, &sites, &devs],
            )
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)?;
        let mut by: HashMap<(String, String), String> = HashMap::new();
        for r in rows {
            by.insert((r.get(0), r.get(1)), r.get(2));
        }
        Ok(devices
            .iter()
            .map(|(s, d)| {
                by.get(&(s.to_string(), d.clone()))
                    .filter(|h| !h.is_empty())
                    .cloned()
            })
            .collect())
    }
}

// ------------------------------------------------------------------- auth

impl PgCentralStore {
    /// A transaction as the connecting role (no tenant yet: credential
    /// lookups by secret hash, the expiry sweep).
    async fn owner_query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let c = self.client().await?;
        c.query(sql, params).await.map_err(be)
    }

    async fn create_site_impl(
        &self,
        site: &SiteRecord,
        hash: &[u8; 32],
        token: &JoinTokenRecord,
    ) -> Result<()> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, &site.tenant).await?;
        let n = tx
            .execute(
                "INSERT INTO sites (tenant_id, site_id, customer, body, name, name_lc) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    &site.tenant.as_str(),
                    &site.site_id.as_str(),
                    &site.customer.as_str(),
                    &site.to_stored()?,
                    &site.name,
                    &site.name.to_lowercase(),
                ],
            )
            .await
            .map_err(be)?;
        if n == 0 {
            return Err(CentralStoreError::Conflict(format!(
                "site {} exists",
                site.site_id
            )));
        }
        tx.execute(
            "INSERT INTO join_tokens (token_hash, tenant_id, body) VALUES ($1, $2, $3) \
             ON CONFLICT (token_hash) DO UPDATE SET body = excluded.body",
            &[&&hash[..], &token.tenant.as_str(), &enc(token)?],
        )
        .await
        .map_err(be)?;
        tx.commit().await.map_err(be)?;
        Ok(())
    }

    async fn sites_impl(&self, tenant: &str, site_id: Option<&str>) -> Result<Vec<SiteRecord>> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let rows = tx
            .query(
                "SELECT body FROM sites WHERE tenant_id = $1 AND ($2::text IS NULL OR site_id = $2) \
                 ORDER BY site_id",
                &[&tenant, &site_id],
            )
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)?;
        rows.iter()
            .map(|r| Ok(SiteRecord::from_stored(r.get::<_, &[u8]>(0))?))
            .collect()
    }

    /// Deletes the sessions of `name` (counted) and the expired ones of
    /// the tenant, in `tx`.
    async fn end_sessions(
        tx: &deadpool_postgres::Transaction<'_>,
        tenant: &str,
        name: &str,
        now_ms: u64,
    ) -> Result<u64> {
        let ended = tx
            .execute(
                "DELETE FROM sessions WHERE tenant_id = $1 AND user_name = $2",
                &[&tenant, &name],
            )
            .await
            .map_err(be)?;
        tx.execute(
            "DELETE FROM sessions WHERE tenant_id = $1 AND expires_ms <= $2",
            &[&tenant, &i(now_ms)],
        )
        .await
        .map_err(be)?;
        Ok(ended)
    }

    async fn put_user_impl(&self, user: &UserRecord, create: bool) -> Result<u64> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, &user.tenant).await?;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM users WHERE tenant_id = $1 AND name = $2 FOR UPDATE",
                &[&user.tenant.as_str(), &user.name],
            )
            .await
            .map_err(be)?
            .is_some();
        if exists && create {
            return Err(CentralStoreError::Conflict(format!(
                "user {} exists; change a password with PUT /api/v1/users/{}/password",
                user.name, user.name
            )));
        }
        let ended = if exists {
            Self::end_sessions(&tx, &user.tenant, &user.name, crate::now_ms()).await?
        } else {
            0
        };
        let r = tx
            .execute(
                "INSERT INTO users (tenant_id, name, body) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant_id, name) DO UPDATE SET body = excluded.body",
                &[&user.tenant.as_str(), &user.name, &enc(user)?],
            )
            .await;
        match r {
            Ok(_) => {}
            // Two creations racing: the loser is a conflict.
            Err(e)
                if create
                    && e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
            {
                return Err(CentralStoreError::Conflict(format!(
                    "user {} exists; change a password with PUT /api/v1/users/{}/password",
                    user.name, user.name
                )));
            }
            Err(e) => return Err(be(e)),
        }
        tx.commit().await.map_err(be)?;
        Ok(ended)
    }

    async fn set_password_impl(&self, tenant: &str, name: &str, hash: &str) -> Result<Option<u64>> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let Some(row) = tx
            .query_opt(
                "SELECT body FROM users WHERE tenant_id = $1 AND name = $2 FOR UPDATE",
                &[&tenant, &name],
            )
            .await
            .map_err(be)?
        else {
            return Ok(None);
        };
        let mut user: UserRecord = dec(row.get::<_, &[u8]>(0))?;
        user.password_hash = hash.to_string();
        let ended = Self::end_sessions(&tx, tenant, name, crate::now_ms()).await?;
        tx.execute(
            "UPDATE users SET body = $3 WHERE tenant_id = $1 AND name = $2",
            &[&tenant, &name, &enc(&user)?],
        )
        .await
        .map_err(be)?;
        tx.commit().await.map_err(be)?;
        Ok(Some(ended))
    }

    async fn tenant_exec(
        &self,
        tenant: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let n = tx.execute(sql, params).await.map_err(be)?;
        tx.commit().await.map_err(be)?;
        Ok(n)
    }

    async fn tenant_query(
        &self,
        tenant: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let rows = tx.query(sql, params).await.map_err(be)?;
        tx.commit().await.map_err(be)?;
        Ok(rows)
    }
}

// --------------------------------------------------------------- commands

async fn insert_audit(tx: &deadpool_postgres::Transaction<'_>, row: &AuditRow) -> Result<()> {
    tx.execute(
        "INSERT INTO audit (tenant_id, at_ms, body) VALUES ($1, $2, $3)",
        &[&row.tenant.as_str(), &i(row.at_ms), &enc(row)?],
    )
    .await
    .map_err(be)?;
    Ok(())
}

impl PgCentralStore {
    async fn create_command_impl(&self, cmd: &CentralCommand, audit: &AuditRow) -> Result<()> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, &cmd.tenant).await?;
        let n = tx
            .execute(
                "INSERT INTO commands (tenant_id, id, site_id, device, customer, state, created_ms, closed, body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                &[
                    &cmd.tenant.as_str(),
                    &cmd.id.to_string(),
                    &cmd.site_id.as_str(),
                    &cmd.device,
                    &cmd.customer.as_str(),
                    &state_name(cmd.state),
                    &i(cmd.created_ms),
                    &cmd.closed,
                    &enc(cmd)?,
                ],
            )
            .await
            .map_err(be)?;
        if n == 0 {
            return Err(CentralStoreError::Conflict(format!(
                "command {} exists",
                cmd.id
            )));
        }
        insert_audit(&tx, audit).await?;
        tx.commit().await.map_err(be)?;
        Ok(())
    }

    async fn script_one(
        tx: &deadpool_postgres::Transaction<'_>,
        tenant: &str,
        name: &str,
        newest: bool,
    ) -> Result<Option<CentralScript>> {
        let sql = if newest {
            "SELECT body FROM scripts WHERE tenant_id = $1 AND name = $2 \
             ORDER BY version DESC LIMIT 1"
        } else {
            "SELECT body FROM scripts WHERE tenant_id = $1 AND name = $2 \
             ORDER BY version ASC LIMIT 1"
        };
        let row = tx.query_opt(sql, &[&tenant, &name]).await.map_err(be)?;
        row.map(|r| dec(r.get::<_, &[u8]>(0))).transpose()
    }

    async fn put_script_impl(
        &self,
        tenant: &str,
        mut s: CentralScript,
        expect_new: bool,
        audit: &AuditRow,
    ) -> Result<std::result::Result<CentralScript, Option<CentralScript>>> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        // One writer per (tenant, name) at a time, across instances (the
        // two-key form: a lock space apart from the migration lock).
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2 || '/' || $3))",
            &[&SCRIPT_LOCK_CLASS, &tenant, &s.name],
        )
        .await
        .map_err(be)?;
        let cur = Self::script_one(&tx, tenant, &s.name, true).await?;
        match (&cur, expect_new) {
            (Some(c), true) => return Ok(Err(Some(c.clone()))),
            (None, false) => return Ok(Err(None)),
            _ => {}
        }
        if cur.is_some()
            && let Some(f) = Self::script_one(&tx, tenant, &s.name, false).await?
        {
            s.customer = f.customer;
        }
        s.version = cur.map(|c| c.version + 1).unwrap_or(1);
        let mut audit = audit.clone();
        audit.detail = format!("{} version {}", s.name, s.version);
        tx.execute(
            "INSERT INTO scripts (tenant_id, name, version, body) VALUES ($1, $2, $3, $4)",
            &[&tenant, &s.name, &i64::from(s.version), &enc(&s)?],
        )
        .await
        .map_err(be)?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.map_err(be)?;
        Ok(Ok(s))
    }

    async fn script_impl(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<CentralScript>> {
        let rows = match version {
            Some(v) => {
                self.tenant_query(
                    tenant,
                    "SELECT body FROM scripts WHERE tenant_id = $1 AND name = $2 AND version = $3",
                    &[&tenant, &name, &i64::from(v)],
                )
                .await?
            }
            None => {
                self.tenant_query(
                    tenant,
                    "SELECT body FROM scripts WHERE tenant_id = $1 AND name = $2 \
                     ORDER BY version DESC LIMIT 1",
                    &[&tenant, &name],
                )
                .await?
            }
        };
        rows.first().map(|r| dec(r.get::<_, &[u8]>(0))).transpose()
    }

    async fn scripts_impl(&self, tenant: &str) -> Result<Vec<CentralScript>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT DISTINCT ON (name) body FROM scripts WHERE tenant_id = $1 \
                 ORDER BY name, version DESC",
                &[&tenant],
            )
            .await?;
        rows.iter().map(|r| dec(r.get::<_, &[u8]>(0))).collect()
    }

    async fn create_bulk_impl(
        &self,
        run: &CentralBulk,
        cmds: &[CentralCommand],
        held: &[CommandId],
        audit: &AuditRow,
    ) -> Result<()> {
        let t = run.tenant.as_str();
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, t).await?;
        tx.execute(
            "INSERT INTO bulks (tenant_id, id, created_ms, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, id) DO UPDATE SET created_ms = excluded.created_ms, \
             body = excluded.body",
            &[&t, &run.id.to_string(), &i(run.created_ms), &enc(run)?],
        )
        .await
        .map_err(be)?;
        let held: HashSet<CommandId> = held.iter().copied().collect();
        let mut cols = (
            Vec::<String>::new(),
            Vec::<&str>::new(),
            Vec::<&str>::new(),
            Vec::<&str>::new(),
            Vec::<String>::new(),
            Vec::<i64>::new(),
            Vec::<bool>::new(),
        );
        let mut bodies = Vec::with_capacity(cmds.len());
        let (mut held_sites, mut held_cmds) = (Vec::<&str>::new(), Vec::<String>::new());
        for cmd in cmds {
            cols.0.push(cmd.id.to_string());
            cols.1.push(cmd.site_id.as_str());
            cols.2.push(&cmd.device);
            cols.3.push(cmd.customer.as_str());
            cols.4.push(state_name(cmd.state));
            cols.5.push(i(cmd.created_ms));
            cols.6.push(cmd.closed);
            bodies.push(enc(cmd)?);
            if held.contains(&cmd.id) {
                held_sites.push(cmd.site_id.as_str());
                held_cmds.push(cmd.id.to_string());
            }
        }
        if !cmds.is_empty() {
            tx.execute(
                "INSERT INTO commands (tenant_id, id, site_id, device, customer, state, created_ms, closed, body) \
                 SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                   $7::bigint[], $8::boolean[], $9::bytea[]) \
                 ON CONFLICT (tenant_id, id) DO UPDATE SET site_id = excluded.site_id, \
                 device = excluded.device, customer = excluded.customer, state = excluded.state, \
                 created_ms = excluded.created_ms, closed = excluded.closed, body = excluded.body",
                &[&t, &cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &cols.5, &cols.6, &bodies],
            )
            .await
            .map_err(be)?;
        }
        if !held_cmds.is_empty() {
            tx.execute(
                "INSERT INTO commands_held (tenant_id, site_id, run_id, command_id) \
                 SELECT $1, s, $2, c FROM unnest($3::text[], $4::text[]) AS h(s, c) \
                 ON CONFLICT DO NOTHING",
                &[&t, &run.id.to_string(), &held_sites, &held_cmds],
            )
            .await
            .map_err(be)?;
        }
        insert_audit(&tx, audit).await?;
        tx.commit().await.map_err(be)?;
        Ok(())
    }

    async fn bulk_impl(&self, tenant: &str, id: CommandId) -> Result<Option<CentralBulk>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT body FROM bulks WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &id.to_string()],
            )
            .await?;
        rows.first().map(|r| dec(r.get::<_, &[u8]>(0))).transpose()
    }

    async fn bulks_impl(&self, tenant: &str, limit: usize) -> Result<Vec<CentralBulk>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT body FROM bulks WHERE tenant_id = $1 \
                 ORDER BY created_ms DESC, id DESC LIMIT $2",
                &[&tenant, &i(limit.max(1) as u64)],
            )
            .await?;
        rows.iter().map(|r| dec(r.get::<_, &[u8]>(0))).collect()
    }

    async fn cancel_bulk_impl(
        &self,
        tenant: &str,
        id: CommandId,
        by: &str,
        now_ms: u64,
        audit: &AuditRow,
    ) -> Result<Option<CentralBulk>> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let ids = id.to_string();
        let Some(row) = tx
            .query_opt(
                "SELECT body FROM bulks WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
                &[&tenant, &ids],
            )
            .await
            .map_err(be)?
        else {
            return Ok(None);
        };
        let mut run: CentralBulk = dec(row.get::<_, &[u8]>(0))?;
        if run.cancelled.is_none() {
            run.cancelled = Some((now_ms, by.to_string()));
            tx.execute(
                "UPDATE bulks SET body = $3 WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &ids, &enc(&run)?],
            )
            .await
            .map_err(be)?;
            insert_audit(&tx, audit).await?;
            tx.commit().await.map_err(be)?;
        }
        Ok(Some(run))
    }

    async fn held_impl(
        &self,
        site: Option<(&str, &str)>,
    ) -> Result<Vec<(TenantId, SiteId, CommandId, CommandId)>> {
        let rows = match site {
            Some((t, s)) => {
                self.tenant_query(
                    t,
                    "SELECT tenant_id, site_id, run_id, command_id FROM commands_held \
                     WHERE tenant_id = $1 AND site_id = $2 ORDER BY run_id, command_id",
                    &[&t, &s],
                )
                .await?
            }
            // Every tenant's (the release sweep): as the owner.
            None => {
                self.owner_query(
                    "SELECT tenant_id, site_id, run_id, command_id FROM commands_held \
                     ORDER BY tenant_id, site_id, run_id, command_id",
                    &[],
                )
                .await?
            }
        };
        Ok(rows
            .iter()
            .filter_map(|r| {
                let run = r.get::<_, &str>(2).parse().ok()?;
                let cmd = r.get::<_, &str>(3).parse().ok()?;
                Some((
                    TenantId::from(r.get::<_, String>(0)),
                    SiteId::from(r.get::<_, String>(1)),
                    run,
                    cmd,
                ))
            })
            .collect())
    }

    async fn unhold_impl(
        &self,
        tenant: &str,
        site: &str,
        run: CommandId,
        cmds: &[CommandId],
    ) -> Result<()> {
        let ids: Vec<String> = cmds.iter().map(|c| c.to_string()).collect();
        self.tenant_exec(
            tenant,
            "DELETE FROM commands_held WHERE tenant_id = $1 AND site_id = $2 \
             AND run_id = $3 AND command_id = ANY($4)",
            &[&tenant, &site, &run.to_string(), &ids],
        )
        .await?;
        Ok(())
    }

    async fn commands_by_id_impl(
        &self,
        tenant: &str,
        ids: &[CommandId],
    ) -> Result<Vec<Option<CentralCommand>>> {
        let keys: Vec<String> = ids.iter().map(|c| c.to_string()).collect();
        let rows = self
            .tenant_query(
                tenant,
                "SELECT id, body FROM commands WHERE tenant_id = $1 AND id = ANY($2)",
                &[&tenant, &keys],
            )
            .await?;
        let mut by: HashMap<String, CentralCommand> = HashMap::with_capacity(rows.len());
        for r in rows {
            by.insert(r.get(0), dec(r.get::<_, &[u8]>(1))?);
        }
        // The same id asked twice gets its row twice.
        Ok(keys.iter().map(|k| by.get(k).cloned()).collect())
    }

    async fn commands_impl(&self, tenant: &str, f: &CommandFilter) -> Result<Vec<CentralCommand>> {
        let allowed: Vec<&str> = f.customers_allowed.iter().map(|c| c.as_str()).collect();
        let rows = self
            .tenant_query(
                tenant,
                "SELECT body FROM commands WHERE tenant_id = $1 \
                   AND ($2::text IS NULL OR site_id = $2) AND ($3::text IS NULL OR device = $3) \
                   AND ($4::text IS NULL OR state = $4) \
                   AND (cardinality($5::text[]) = 0 OR customer = ANY($5)) \
                   AND ($6::bigint IS NULL OR created_ms < $6 \
                        OR (created_ms = $6 AND $8::text IS NOT NULL AND id < $8)) \
                 ORDER BY created_ms DESC, id DESC LIMIT $7",
                &[
                    &tenant,
                    &f.site_id.as_ref().map(|s| s.as_str()),
                    &f.device.as_deref(),
                    &f.state.map(state_name),
                    &allowed,
                    &f.before_ms.map(i),
                    &(f.limit.max(1) as i64),
                    &f.before_id.map(|id| id.to_string()),
                ],
            )
            .await?;
        rows.iter().map(|r| dec(r.get::<_, &[u8]>(0))).collect()
    }

    async fn open_commands_impl(&self, site: Option<(&str, &str)>) -> Result<Vec<CentralCommand>> {
        let rows = match site {
            Some((t, s)) => {
                self.tenant_query(
                    t,
                    "SELECT body FROM commands WHERE tenant_id = $1 AND site_id = $2 AND NOT closed \
                     ORDER BY site_id, id",
                    &[&t, &s],
                )
                .await?
            }
            None => {
                self.owner_query(
                    "SELECT body FROM commands WHERE NOT closed ORDER BY tenant_id, site_id, id",
                    &[],
                )
                .await?
            }
        };
        rows.iter().map(|r| dec(r.get::<_, &[u8]>(0))).collect()
    }

    async fn change_command_impl(
        &self,
        tenant: &str,
        id: CommandId,
        change: Change,
        now_ms: u64,
        audit: Option<AuditRow>,
    ) -> Result<Option<(CentralCommand, Outcome)>> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let ids = id.to_string();
        let Some(row) = tx
            .query_opt(
                "SELECT body FROM commands WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
                &[&tenant, &ids],
            )
            .await
            .map_err(be)?
        else {
            return Ok(None);
        };
        let mut cmd: CentralCommand = dec(row.get::<_, &[u8]>(0))?;
        let o = commands::apply(&mut cmd, change, now_ms);
        if !o.changed {
            return Ok(Some((cmd, o)));
        }
        let params: [&(dyn ToSql + Sync); 5] = [
            &tenant,
            &ids,
            &state_name(cmd.state),
            &cmd.closed,
            &enc(&cmd)?,
        ];
        match &o.output {
            OutputOp::Keep => {
                tx.execute(
                    "UPDATE commands SET state = $3, closed = $4, body = $5 \
                     WHERE tenant_id = $1 AND id = $2",
                    &params,
                )
                .await
            }
            OutputOp::Replace(b) => {
                let mut p = params.to_vec();
                p.push(b);
                tx.execute(
                    "UPDATE commands SET state = $3, closed = $4, body = $5, output = $6 \
                     WHERE tenant_id = $1 AND id = $2",
                    &p,
                )
                .await
            }
            OutputOp::Append(b) => {
                let mut p = params.to_vec();
                p.push(b);
                tx.execute(
                    "UPDATE commands SET state = $3, closed = $4, body = $5, output = output || $6 \
                     WHERE tenant_id = $1 AND id = $2",
                    &p,
                )
                .await
            }
        }
        .map_err(be)?;
        if let Some(a) = &audit {
            insert_audit(&tx, a).await?;
        }
        if let Some(a) = commands::result_audit(&cmd, &o, now_ms) {
            insert_audit(&tx, &a).await?;
        }
        tx.commit().await.map_err(be)?;
        Ok(Some((cmd, o)))
    }
}

// ------------------------------------------------------------ the traits

impl BatchStore for PgCentralStore {
    fn check(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let c = self.client().await?;
            c.simple_query("SELECT 1").await.map_err(be)?;
            Ok(())
        })
    }

    fn apply_batch_delta<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        batch: SiteBatch,
        received_ms: u64,
    ) -> StoreFuture<'a, (ApplyOutcome, FleetDelta)> {
        Box::pin(async move {
            match self.apply_impl(tenant, site_id, &batch, received_ms).await {
                Err(CentralStoreError::Backend(m)) if m == PARTITION_GONE => {
                    self.apply_impl(tenant, site_id, &batch, received_ms).await
                }
                r => r,
            }
        })
    }

    fn dead_letter<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        letter: DeadLetter,
    ) -> StoreFuture<'a, DeadLetterOutcome> {
        Box::pin(self.dead_letter_impl(tenant, site_id, letter))
    }
}

impl FleetStore for PgCentralStore {
    fn patch_findings<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: Option<&'a SiteId>,
    ) -> StoreFuture<'a, Vec<PatchFindingsRow>> {
        Box::pin(self.patch_findings_impl(tenant, site_id.map(|s| s.as_str())))
    }

    fn device_patch_findings<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, Option<PatchFindingsRow>> {
        Box::pin(self.device_patch_findings_impl(tenant, site_id, device))
    }

    fn cve_exposure<'a>(
        &'a self,
        tenant: &'a TenantId,
        cve: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<CveExposureRow>> {
        Box::pin(self.cve_exposure_impl(tenant, cve, limit))
    }

    fn cve_site_exposure<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: Option<&'a SiteId>,
    ) -> StoreFuture<'a, Vec<CveSiteExposure>> {
        Box::pin(self.cve_site_exposure_impl(tenant, site_id.map(|s| s.as_str())))
    }

    fn patch_compliance<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: Option<&'a SiteId>,
    ) -> StoreFuture<'a, Vec<PatchComplianceRow>> {
        Box::pin(self.patch_compliance_impl(tenant, site_id.map(|s| s.as_str()), None))
    }

    fn device_patch_compliance<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, Option<PatchComplianceRow>> {
        Box::pin(async move {
            Ok(self
                .patch_compliance_impl(tenant, Some(site_id), Some(device))
                .await?
                .pop())
        })
    }

    fn devices<'a>(
        &'a self,
        tenant: &'a TenantId,
        filter: &'a DeviceFilter,
    ) -> StoreFuture<'a, Page<DeviceRow>> {
        Box::pin(self.devices_impl(tenant, filter))
    }

    fn device<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, Option<DeviceRow>> {
        Box::pin(self.device_impl(tenant, site_id, device))
    }

    fn rollups<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a RollupQuery,
    ) -> StoreFuture<'a, Vec<(u64, RollupRow)>> {
        Box::pin(self.rollups_impl(tenant, q))
    }

    fn alerts<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: Option<&'a SiteId>,
    ) -> StoreFuture<'a, Vec<AlertRow>> {
        Box::pin(self.alerts_impl(tenant, site_id.map(|s| s.as_str())))
    }

    fn alert_page<'a>(
        &'a self,
        tenant: &'a TenantId,
        filter: &'a AlertFilter,
    ) -> StoreFuture<'a, AlertPage> {
        Box::pin(self.alert_page_impl(tenant, filter))
    }

    fn ack_alert<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        alert_id: u64,
        by: &'a str,
        comment: &'a str,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<AlertRow>> {
        Box::pin(self.ack_alert_impl(tenant, site_id, alert_id, by, comment, now_ms))
    }

    fn alert_history<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        alert_id: u64,
    ) -> StoreFuture<'a, Vec<AlertHistoryEntry>> {
        Box::pin(self.alert_history_impl(tenant, site_id, alert_id))
    }

    fn status_history<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(u64, DeviceStatus)>> {
        Box::pin(self.status_history_impl(tenant, site_id, device, limit))
    }

    fn search_devices<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a DeviceSearch,
    ) -> StoreFuture<'a, SearchPage> {
        Box::pin(self.search_devices_sql(tenant, q))
    }

    fn device_tags<'a>(
        &'a self,
        tenant: &'a TenantId,
        customers_allowed: &'a [CustomerId],
    ) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let allowed: Vec<&str> = customers_allowed.iter().map(|c| c.as_str()).collect();
            let rows = self
                .tenant_query(
                    tenant,
                    "SELECT DISTINCT t FROM devices d \
                     LEFT JOIN sites s ON s.tenant_id = d.tenant_id AND s.site_id = d.site_id \
                     CROSS JOIN LATERAL unnest(d.tags) AS t \
                     WHERE d.tenant_id = $1 \
                       AND (cardinality($2::text[]) = 0 OR COALESCE(s.customer, d.customer) = ANY($2)) \
                     ORDER BY t LIMIT $3",
                    &[
                        &tenant.as_str(),
                        &allowed,
                        &(crate::fleet_index::MAX_TAG_FACETS as i64),
                    ],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn device_facts<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, DeviceFacts> {
        Box::pin(async move {
            let rows = self
                .tenant_query(
                    tenant,
                    "SELECT ips, tags FROM devices \
                     WHERE tenant_id = $1 AND site_id = $2 AND device = $3",
                    &[&tenant.as_str(), &site_id.as_str(), &device],
                )
                .await?;
            Ok(rows
                .first()
                .map_or_else(DeviceFacts::default, |r| DeviceFacts {
                    ips: r.get(0),
                    tags: r.get(1),
                }))
        })
    }

    fn device_facts_many<'a>(
        &'a self,
        tenant: &'a TenantId,
        devices: &'a [(SiteId, String)],
    ) -> StoreFuture<'a, Vec<DeviceFacts>> {
        Box::pin(async move {
            if devices.is_empty() {
                return Ok(Vec::new());
            }
            let mut sites: Vec<&str> = devices.iter().map(|(s, _)| s.as_str()).collect();
            sites.sort_unstable();
            sites.dedup();
            let ids: Vec<&str> = devices.iter().map(|(_, d)| d.as_str()).collect();
            // One query over the primary key; pairs of a site asked and a
            // device asked elsewhere are left out below.
            let rows = self
                .tenant_query(
                    tenant,
                    "SELECT site_id, device, ips, tags FROM devices \
                     WHERE tenant_id = $1 AND site_id = ANY($2) AND device = ANY($3)",
                    &[&tenant.as_str(), &sites, &ids],
                )
                .await?;
            let found: HashMap<(String, String), DeviceFacts> = rows
                .iter()
                .map(|r| {
                    (
                        (r.get::<_, String>(0), r.get::<_, String>(1)),
                        DeviceFacts {
                            ips: r.get(2),
                            tags: r.get(3),
                        },
                    )
                })
                .collect();
            Ok(devices
                .iter()
                .map(|(s, d)| {
                    let k = (s.to_string(), d.clone());
                    // A device asked twice gets its facts twice.
                    found.get(&k).cloned().unwrap_or_default()
                })
                .collect())
        })
    }

    fn fleet_counts<'a>(
        &'a self,
        tenant: &'a TenantId,
        customers_allowed: &'a [CustomerId],
    ) -> StoreFuture<'a, FleetCounts> {
        Box::pin(self.fleet_counts_sql(tenant, customers_allowed))
    }

    fn hostnames<'a>(
        &'a self,
        tenant: &'a TenantId,
        devices: &'a [(SiteId, String)],
    ) -> StoreFuture<'a, Vec<Option<String>>> {
        Box::pin(self.hostnames_impl(tenant, devices))
    }

    fn series_rollups<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a SeriesQuery,
    ) -> StoreFuture<'a, Vec<Vec<(u64, Rollup)>>> {
        Box::pin(self.series_rollups_impl(tenant, q))
    }
}

impl AuthStore for PgCentralStore {
    fn create_site<'a>(
        &'a self,
        site: &'a SiteRecord,
        join_token_hash: &'a [u8; 32],
        token: &'a JoinTokenRecord,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.create_site_impl(site, join_token_hash, token))
    }

    fn take_join_token<'a>(
        &'a self,
        token_hash: &'a [u8; 32],
    ) -> StoreFuture<'a, Option<JoinTokenRecord>> {
        Box::pin(async move {
            let rows = self
                .owner_query(
                    "DELETE FROM join_tokens WHERE token_hash = $1 RETURNING body",
                    &[&&token_hash[..]],
                )
                .await?;
            rows.first().map(|r| dec(r.get::<_, &[u8]>(0))).transpose()
        })
    }

    fn site<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
    ) -> StoreFuture<'a, Option<SiteRecord>> {
        Box::pin(async move { Ok(self.sites_impl(tenant, Some(site_id)).await?.pop()) })
    }

    fn sites<'a>(&'a self, tenant: &'a TenantId) -> StoreFuture<'a, Vec<SiteRecord>> {
        Box::pin(self.sites_impl(tenant, None))
    }

    fn update_site<'a>(&'a self, site: &'a SiteRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = Self::tenant_tx(&mut c, &site.tenant).await?;
            Self::write_site(&tx, site).await?;
            tx.commit().await.map_err(be)
        })
    }

    fn put_api_token<'a>(
        &'a self,
        hash: &'a [u8; 32],
        rec: &'a ApiTokenRecord,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.tenant_exec(
                &rec.principal.tenant,
                "INSERT INTO api_tokens (token_hash, tenant_id, body) VALUES ($1, $2, $3) \
                 ON CONFLICT (token_hash) DO UPDATE SET body = excluded.body",
                &[
                    &&hash[..],
                    &rec.principal.tenant.as_str(),
                    &rec.to_stored()?,
                ],
            )
            .await
            .map(|_| ())
        })
    }

    fn api_token<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, Option<ApiTokenRecord>> {
        Box::pin(async move {
            let rows = self
                .owner_query(
                    "SELECT body FROM api_tokens WHERE token_hash = $1",
                    &[&&hash[..]],
                )
                .await?;
            rows.first()
                .map(|r| Ok(ApiTokenRecord::from_stored(r.get::<_, &[u8]>(0))?))
                .transpose()
        })
    }

    fn api_tokens<'a>(&'a self, tenant: &'a TenantId) -> StoreFuture<'a, Vec<ApiTokenRecord>> {
        Box::pin(async move {
            let rows = self
                .tenant_query(
                    tenant,
                    "SELECT body FROM api_tokens WHERE tenant_id = $1",
                    &[&tenant.as_str()],
                )
                .await?;
            let mut v = rows
                .iter()
                .map(|r| Ok(ApiTokenRecord::from_stored(r.get::<_, &[u8]>(0))?))
                .collect::<Result<Vec<_>>>()?;
            v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
            Ok(v)
        })
    }

    fn revoke_api_token<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: &'a str,
        by: &'a str,
        now_ms: u64,
        audit: &'a AuditRow,
    ) -> StoreFuture<'a, Option<(ApiTokenRecord, bool)>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = Self::tenant_tx(&mut c, tenant).await?;
            let rows = tx
                .query(
                    "SELECT token_hash, body FROM api_tokens WHERE tenant_id = $1 FOR UPDATE",
                    &[&tenant.as_str()],
                )
                .await
                .map_err(be)?;
            let mut found = None;
            for r in &rows {
                let t = ApiTokenRecord::from_stored(r.get::<_, &[u8]>(1))?;
                if t.id == id {
                    found = Some((r.get::<_, Vec<u8>>(0), t));
                    break;
                }
            }
            let Some((hash, mut t)) = found else {
                return Ok(None);
            };
            if t.life.revoked_ms.is_some() {
                return Ok(Some((t, false)));
            }
            t.life.revoked_ms = Some(now_ms);
            t.life.revoked_by = Some(by.to_string());
            tx.execute(
                "UPDATE api_tokens SET body = $2 WHERE token_hash = $1",
                &[&hash, &t.to_stored()?],
            )
            .await
            .map_err(be)?;
            insert_audit(&tx, audit).await?;
            tx.commit().await.map_err(be)?;
            Ok(Some((t, true)))
        })
    }

    fn remove_user<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a str,
        audit: &'a AuditRow,
    ) -> StoreFuture<'a, Option<u64>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = Self::tenant_tx(&mut c, tenant).await?;
            let removed = tx
                .execute(
                    "DELETE FROM users WHERE tenant_id = $1 AND name = $2",
                    &[&tenant.as_str(), &name],
                )
                .await
                .map_err(be)?;
            if removed == 0 {
                return Ok(None);
            }
            let ended = Self::end_sessions(&tx, tenant, name, crate::now_ms()).await?;
            insert_audit(&tx, audit).await?;
            tx.commit().await.map_err(be)?;
            Ok(Some(ended))
        })
    }

    fn put_user<'a>(&'a self, user: &'a UserRecord) -> StoreFuture<'a, u64> {
        Box::pin(self.put_user_impl(user, false))
    }

    fn create_user<'a>(&'a self, user: &'a UserRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.put_user_impl(user, true).await.map(|_| ()) })
    }

    fn user<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a str,
    ) -> StoreFuture<'a, Option<UserRecord>> {
        Box::pin(async move {
            let rows = self
                .tenant_query(
                    tenant,
                    "SELECT body FROM users WHERE tenant_id = $1 AND name = $2",
                    &[&tenant.as_str(), &name],
                )
                .await?;
            rows.first().map(|r| dec(r.get::<_, &[u8]>(0))).transpose()
        })
    }

    fn set_password<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a str,
        password_hash: &'a str,
    ) -> StoreFuture<'a, Option<u64>> {
        Box::pin(self.set_password_impl(tenant, name, password_hash))
    }

    fn put_session<'a>(&'a self, hash: &'a [u8; 32], s: &'a SessionRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let t = s.principal.tenant.as_str();
            self.tenant_exec(
                t,
                "INSERT INTO sessions (token_hash, tenant_id, user_name, expires_ms, body) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token_hash) DO UPDATE SET \
                 user_name = excluded.user_name, expires_ms = excluded.expires_ms, body = excluded.body",
                &[&&hash[..], &t, &s.principal.name, &i(s.expires_ms), &enc(s)?],
            )
            .await
            .map(|_| ())
        })
    }

    fn session<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, Option<SessionRecord>> {
        Box::pin(async move {
            let rows = self
                .owner_query(
                    "SELECT body FROM sessions WHERE token_hash = $1",
                    &[&&hash[..]],
                )
                .await?;
            rows.first().map(|r| dec(r.get::<_, &[u8]>(0))).transpose()
        })
    }

    fn delete_session<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.owner_query(
                "DELETE FROM sessions WHERE token_hash = $1 RETURNING 1",
                &[&&hash[..]],
            )
            .await
            .map(|_| ())
        })
    }

    fn shares_login_limits(&self) -> bool {
        true
    }

    fn login_tats<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<u64>>> {
        Box::pin(async move {
            let rows = self
                .owner_query(
                    "SELECT key, tat_ms FROM login_limits WHERE key = ANY($1)",
                    &[&keys],
                )
                .await?;
            let m: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            Ok(keys.iter().map(|k| m.get(k).map(|t| u(*t))).collect())
        })
    }

    fn login_failed<'a>(&'a self, keys: &'a [(String, u64)], now_ms: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let c = self.client().await?;
            for (k, interval) in keys {
                c.execute(
                    "INSERT INTO login_limits (key, tat_ms) VALUES ($1, $2::bigint + $3::bigint) \
                     ON CONFLICT (key) DO UPDATE SET tat_ms = GREATEST(login_limits.tat_ms, $2::bigint) + $3::bigint",
                    &[k, &i(now_ms), &i(*interval)],
                )
                .await
                .map_err(be)?;
            }
            c.execute("DELETE FROM login_limits WHERE tat_ms <= $1", &[&i(now_ms)])
                .await
                .map_err(be)?;
            Ok(())
        })
    }

    fn login_forget<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let c = self.client().await?;
            c.execute("DELETE FROM login_limits WHERE key = $1", &[&key])
                .await
                .map_err(be)?;
            Ok(())
        })
    }
}

impl CommandStore for PgCentralStore {
    fn create_command<'a>(
        &'a self,
        cmd: &'a CentralCommand,
        audit: &'a AuditRow,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.create_command_impl(cmd, audit))
    }

    fn command<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: CommandId,
    ) -> StoreFuture<'a, Option<CentralCommand>> {
        Box::pin(async move {
            let rows = self
                .tenant_query(
                    tenant,
                    "SELECT body FROM commands WHERE tenant_id = $1 AND id = $2",
                    &[&tenant.as_str(), &id.to_string()],
                )
                .await?;
            rows.first().map(|r| dec(r.get::<_, &[u8]>(0))).transpose()
        })
    }

    fn command_output<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: CommandId,
    ) -> StoreFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let rows = self
                .tenant_query(
                    tenant,
                    "SELECT output FROM commands WHERE tenant_id = $1 AND id = $2",
                    &[&tenant.as_str(), &id.to_string()],
                )
                .await?;
            Ok(rows.first().map(|r| r.get(0)).unwrap_or_default())
        })
    }

    fn commands<'a>(
        &'a self,
        tenant: &'a TenantId,
        f: &'a CommandFilter,
    ) -> StoreFuture<'a, Vec<CentralCommand>> {
        Box::pin(self.commands_impl(tenant, f))
    }

    fn open_commands<'a>(
        &'a self,
        site: Option<(&'a TenantId, &'a SiteId)>,
    ) -> StoreFuture<'a, Vec<CentralCommand>> {
        Box::pin(self.open_commands_impl(site.map(|(t, s)| (t.as_str(), s.as_str()))))
    }

    fn change_command<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: CommandId,
        change: Change,
        now_ms: u64,
        audit: Option<AuditRow>,
    ) -> StoreFuture<'a, Option<(CentralCommand, Outcome)>> {
        Box::pin(self.change_command_impl(tenant, id, change, now_ms, audit))
    }

    fn put_script<'a>(
        &'a self,
        tenant: &'a TenantId,
        script: CentralScript,
        expect_new: bool,
        audit: AuditRow,
    ) -> StoreFuture<'a, std::result::Result<CentralScript, Option<CentralScript>>> {
        Box::pin(async move {
            self.put_script_impl(tenant, script, expect_new, &audit)
                .await
        })
    }

    fn script<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a str,
        version: Option<u32>,
    ) -> StoreFuture<'a, Option<CentralScript>> {
        Box::pin(self.script_impl(tenant, name, version))
    }

    fn scripts<'a>(&'a self, tenant: &'a TenantId) -> StoreFuture<'a, Vec<CentralScript>> {
        Box::pin(self.scripts_impl(tenant))
    }

    fn create_bulk<'a>(
        &'a self,
        run: &'a CentralBulk,
        cmds: &'a [CentralCommand],
        held: &'a [CommandId],
        audit: &'a AuditRow,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.create_bulk_impl(run, cmds, held, audit))
    }

    fn bulk<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: CommandId,
    ) -> StoreFuture<'a, Option<CentralBulk>> {
        Box::pin(self.bulk_impl(tenant, id))
    }

    fn bulks<'a>(
        &'a self,
        tenant: &'a TenantId,
        limit: usize,
    ) -> StoreFuture<'a, Vec<CentralBulk>> {
        Box::pin(self.bulks_impl(tenant, limit))
    }

    fn cancel_bulk<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: CommandId,
        by: &'a str,
        now_ms: u64,
        audit: AuditRow,
    ) -> StoreFuture<'a, Option<CentralBulk>> {
        Box::pin(async move { self.cancel_bulk_impl(tenant, id, by, now_ms, &audit).await })
    }

    fn held<'a>(
        &'a self,
        site: Option<(&'a TenantId, &'a SiteId)>,
    ) -> StoreFuture<'a, Vec<(TenantId, SiteId, CommandId, CommandId)>> {
        Box::pin(self.held_impl(site.map(|(t, s)| (t.as_str(), s.as_str()))))
    }

    fn unhold<'a>(
        &'a self,
        tenant: &'a TenantId,
        site: &'a SiteId,
        run: CommandId,
        cmds: &'a [CommandId],
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.unhold_impl(tenant, site, run, cmds))
    }

    fn commands_by_id<'a>(
        &'a self,
        tenant: &'a TenantId,
        ids: &'a [CommandId],
    ) -> StoreFuture<'a, Vec<Option<CentralCommand>>> {
        Box::pin(self.commands_by_id_impl(tenant, ids))
    }

    fn append_audit<'a>(&'a self, row: &'a AuditRow) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = Self::tenant_tx(&mut c, &row.tenant).await?;
            insert_audit(&tx, row).await?;
            tx.commit().await.map_err(be)
        })
    }

    fn audit<'a>(&'a self, tenant: &'a TenantId, limit: usize) -> StoreFuture<'a, Vec<AuditRow>> {
        Box::pin(async move {
            let rows = self
                .tenant_query(
                    tenant,
                    "SELECT body FROM audit WHERE tenant_id = $1 ORDER BY at_ms DESC, id DESC LIMIT $2",
                    &[&tenant.as_str(), &(limit.max(1) as i64)],
                )
                .await?;
            rows.iter().map(|r| dec(r.get::<_, &[u8]>(0))).collect()
        })
    }
}

// ------------------------------------------------------------- deployments

impl PgCentralStore {
    async fn create_order_impl(
        &self,
        o: &crate::deploy::OrderRecord,
        deliveries: &[crate::deploy::Delivery],
        audit: &AuditRow,
    ) -> Result<()> {
        let t = o.tenant.as_str();
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, t).await?;
        let n = tx
            .execute(
                "INSERT INTO deploy_orders (tenant_id, id, created_ms, body, kind, deployment, \
                 customers) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                &[
                    &t,
                    &o.id,
                    &i(o.created_ms),
                    &enc(o)?,
                    &o.kind.label(),
                    &o.deployment,
                    &customer_strs(&o.customers),
                ],
            )
            .await
            .map_err(be)?;
        if n == 0 {
            return Err(CentralStoreError::Conflict(format!(
                "order {} exists already",
                o.id
            )));
        }
        for d in deliveries {
            tx.execute(
                "INSERT INTO deploy_deliveries (tenant_id, site_id, order_id, open, body) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&t, &d.site.as_str(), &d.order, &d.is_open(), &enc(d)?],
            )
            .await
            .map_err(be)?;
        }
        insert_audit(&tx, audit).await?;
        tx.commit().await.map_err(be)?;
        Ok(())
    }

    async fn order_impl(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<crate::deploy::OrderRecord>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT body FROM deploy_orders WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &id],
            )
            .await?;
        rows.first().map(|r| dec(r.get::<_, &[u8]>(0))).transpose()
    }

    async fn orders_impl(&self, tenant: &str) -> Result<Vec<crate::deploy::OrderRecord>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT body FROM deploy_orders WHERE tenant_id = $1 ORDER BY created_ms, id",
                &[&tenant],
            )
            .await?;
        rows.iter().map(|r| dec(r.get::<_, &[u8]>(0))).collect()
    }

    async fn deliveries_impl(&self, tenant: &str) -> Result<Vec<crate::deploy::Delivery>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT body FROM deploy_deliveries WHERE tenant_id = $1",
                &[&tenant],
            )
            .await?;
        rows.iter().map(|r| dec(r.get::<_, &[u8]>(0))).collect()
    }

    async fn open_orders_impl(
        &self,
        tenant: &str,
        site: &str,
    ) -> Result<Vec<crate::deploy::OrderRecord>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT o.body FROM deploy_deliveries d JOIN deploy_orders o \
                 ON o.tenant_id = d.tenant_id AND o.id = d.order_id \
                 WHERE d.tenant_id = $1 AND d.site_id = $2 AND d.open",
                &[&tenant, &site],
            )
            .await?;
        let v: Vec<crate::deploy::OrderRecord> = rows
            .iter()
            .map(|r| dec(r.get::<_, &[u8]>(0)))
            .collect::<Result<_>>()?;
        Ok(crate::deploy::opening_order(v))
    }

    async fn acknowledge_order_impl(
        &self,
        tenant: &str,
        site: &str,
        ack: &outpost_uplink::deploy_link::DeployAck,
        now_ms: u64,
    ) -> Result<Option<crate::deploy::Delivery>> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let rows = tx
            .query(
                "SELECT body FROM deploy_deliveries WHERE tenant_id = $1 AND site_id = $2 \
                 AND order_id = $3 FOR UPDATE",
                &[&tenant, &site, &ack.id],
            )
            .await
            .map_err(be)?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let d: crate::deploy::Delivery = dec(row.get::<_, &[u8]>(0))?;
        let Some(n) = crate::deploy::acknowledge(&d, ack, now_ms) else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE deploy_deliveries SET open = $4, body = $5 \
             WHERE tenant_id = $1 AND site_id = $2 AND order_id = $3",
            &[&tenant, &site, &ack.id, &n.is_open(), &enc(&n)?],
        )
        .await
        .map_err(be)?;
        tx.commit().await.map_err(be)?;
        Ok(Some(n))
    }

    async fn put_site_deployment_impl(
        &self,
        r: &crate::deploy::SiteDeploymentRecord,
    ) -> Result<bool> {
        let t = r.tenant.as_str();
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, t).await?;
        // Only a newer state replaces the one held (one statement: two
        // reports racing keep the newest).
        let n = tx
            .execute(
                "INSERT INTO site_deployments (tenant_id, site_id, deployment, updated_at_ms, body, \
                 created_ms, customer, from_central) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (tenant_id, site_id, deployment) DO UPDATE \
                 SET updated_at_ms = excluded.updated_at_ms, body = excluded.body, \
                 created_ms = excluded.created_ms, customer = excluded.customer, \
                 from_central = excluded.from_central \
                 WHERE site_deployments.updated_at_ms < excluded.updated_at_ms",
                &[
                    &t,
                    &r.site.as_str(),
                    &r.deployment,
                    &i(r.updated_at_ms),
                    &enc(r)?,
                    &i(crate::deploy::site_created_ms(&r.view_json)),
                    &r.customer.as_str(),
                    &r.from_central,
                ],
            )
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)?;
        Ok(n > 0)
    }

    async fn put_decisions_impl(&self, recs: &[crate::deploy::DecisionsRecord]) -> Result<usize> {
        let mut n = 0;
        // One transaction per tenant (a site's frame has one).
        let mut by_tenant: std::collections::BTreeMap<&str, Vec<&crate::deploy::DecisionsRecord>> =
            Default::default();
        for r in recs {
            by_tenant.entry(r.tenant.as_str()).or_default().push(r);
        }
        for (t, recs) in by_tenant {
            let mut c = self.client().await?;
            let tx = Self::tenant_tx(&mut c, t).await?;
            for r in recs {
                // Only a later computation replaces the one held.
                n += tx
                    .execute(
                        "INSERT INTO device_decisions (tenant_id, site_id, device, computed_ms, body) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (tenant_id, site_id, device) DO UPDATE \
                         SET computed_ms = excluded.computed_ms, body = excluded.body \
                         WHERE device_decisions.computed_ms < excluded.computed_ms",
                        &[
                            &t,
                            &r.site.as_str(),
                            &r.decisions.device,
                            &i(r.decisions.computed_ms),
                            &enc(r)?,
                        ],
                    )
                    .await
                    .map_err(be)? as usize;
            }
            tx.commit().await.map_err(be)?;
        }
        Ok(n)
    }

    async fn decisions_impl(
        &self,
        tenant: &str,
        site: &str,
        device: &str,
    ) -> Result<Option<crate::deploy::DecisionsRecord>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT body FROM device_decisions WHERE tenant_id = $1 AND site_id = $2 AND device = $3",
                &[&tenant, &site, &device],
            )
            .await?;
        rows.first().map(|r| dec(r.get::<_, &[u8]>(0))).transpose()
    }

    async fn site_deployments_impl(
        &self,
        tenant: &str,
    ) -> Result<Vec<crate::deploy::SiteDeploymentRecord>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT body FROM site_deployments WHERE tenant_id = $1",
                &[&tenant],
            )
            .await?;
        rows.iter().map(|r| dec(r.get::<_, &[u8]>(0))).collect()
    }

    /// Fills the key columns of schema 15 in rows written before it
    /// (NULL there), from their bodies; a few statements when none is
    /// left.
    async fn fill_deployment_keys(&self) -> Result<()> {
        let c = self.client().await?;
        let (mut orders, mut reports) = (0u64, 0u64);
        loop {
            let rows = c
                .query(
                    "SELECT body FROM deploy_orders WHERE kind IS NULL LIMIT 1000",
                    &[],
                )
                .await
                .map_err(be)?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let o: crate::deploy::OrderRecord = dec(r.get::<_, &[u8]>(0))?;
                c.execute(
                    "UPDATE deploy_orders SET kind = $3, deployment = $4, customers = $5 \
                     WHERE tenant_id = $1 AND id = $2",
                    &[
                        &o.tenant.as_str(),
                        &o.id,
                        &o.kind.label(),
                        &o.deployment,
                        &customer_strs(&o.customers),
                    ],
                )
                .await
                .map_err(be)?;
                orders += 1;
            }
        }
        loop {
            let rows = c
                .query(
                    "SELECT body FROM site_deployments WHERE created_ms IS NULL LIMIT 1000",
                    &[],
                )
                .await
                .map_err(be)?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let d: crate::deploy::SiteDeploymentRecord = dec(r.get::<_, &[u8]>(0))?;
                c.execute(
                    "UPDATE site_deployments SET created_ms = $4, customer = $5, from_central = $6 \
                     WHERE tenant_id = $1 AND site_id = $2 AND deployment = $3",
                    &[
                        &d.tenant.as_str(),
                        &d.site.as_str(),
                        &d.deployment,
                        &i(crate::deploy::site_created_ms(&d.view_json)),
                        &d.customer.as_str(),
                        &d.from_central,
                    ],
                )
                .await
                .map_err(be)?;
                reports += 1;
            }
        }
        if orders + reports > 0 {
            tracing::info!(orders, reports, "deployment key columns filled");
        }
        Ok(())
    }

    /// The deployment list's lines (`created_ms, id, site, order_id,
    /// customers`; `site` empty for central's) of tenant `$1` that the
    /// customers `$2` see (NULL: all).
    const DEPLOYMENT_LINES: &str = "SELECT created_ms, id, site, order_id, customers FROM ( \
         SELECT o.created_ms, o.deployment AS id, ''::text COLLATE \"C\" AS site, \
                o.id AS order_id, o.customers \
           FROM deploy_orders o WHERE o.tenant_id = $1 AND o.kind = 'deployment' \
         UNION ALL \
         SELECT s.created_ms, s.deployment, s.site_id, NULL, ARRAY[s.customer::text] \
           FROM site_deployments s WHERE s.tenant_id = $1 AND NOT s.from_central \
        ) x WHERE ($2::text[] IS NULL OR x.customers <@ $2::text[])";

    async fn deployment_page_impl(
        &self,
        tenant: &str,
        q: &crate::store::DeploymentQuery,
    ) -> Result<crate::store::DeploymentPage> {
        let after = q
            .after
            .as_deref()
            .map(crate::deploy::DeploymentCursor::decode)
            .transpose()
            .map_err(CentralStoreError::InvalidCursor)?;
        let limit = q.limit.max(1);
        let cap = crate::deploy::DEPLOYMENT_TOTAL_CAP;
        let allowed: Option<Vec<String>> =
            (!q.customers_allowed.is_empty()).then(|| customer_strs(&q.customers_allowed));
        let (at, id, site) = match &after {
            Some(c) => (Some(i(c.created_ms)), c.id.clone(), c.site.clone()),
            None => (None, String::new(), String::new()),
        };
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let rows = tx
            .query(
                &format!(
                    "{} AND ($3::bigint IS NULL OR x.created_ms < $3 OR (x.created_ms = $3 \
                     AND (x.id COLLATE \"C\", x.site COLLATE \"C\") > ($4::text COLLATE \"C\", \
                     $5::text COLLATE \"C\"))) \
                     ORDER BY x.created_ms DESC, x.id COLLATE \"C\", x.site COLLATE \"C\" LIMIT $6",
                    Self::DEPLOYMENT_LINES
                ),
                &[&tenant, &allowed, &at, &id, &site, &(limit as i64 + 1)],
            )
            .await
            .map_err(be)?;
        let count = tx
            .query_one(
                &format!(
                    "SELECT count(*) FROM ({} LIMIT $3) y",
                    Self::DEPLOYMENT_LINES
                ),
                &[&tenant, &allowed, &(cap as i64 + 1)],
            )
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)?;
        let mut items: Vec<crate::deploy::DeploymentEntry> = rows
            .iter()
            .map(|r| {
                let site: String = r.get(2);
                let customers: Vec<String> = r.get(4);
                crate::deploy::DeploymentEntry {
                    created_ms: r.get::<_, i64>(0) as u64,
                    id: r.get(1),
                    site: (!site.is_empty()).then(|| SiteId::from(site.as_str())),
                    order: r.get(3),
                    customers: customers
                        .iter()
                        .map(|c| CustomerId::from(c.as_str()))
                        .collect(),
                }
            })
            .collect();
        let more = items.len() > limit;
        items.truncate(limit);
        let n = count.get::<_, i64>(0) as u64;
        Ok(crate::store::DeploymentPage {
            next: more
                .then(|| items.last().map(|e| e.cursor().encode()))
                .flatten(),
            items,
            total: n.min(cap),
            total_more: n > cap,
        })
    }

    async fn orders_by_id_impl(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<crate::deploy::OrderRecord>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT body FROM deploy_orders WHERE tenant_id = $1 AND id = ANY($2)",
                &[&tenant, &ids],
            )
            .await?;
        let mut v: Vec<crate::deploy::OrderRecord> = rows
            .iter()
            .map(|r| dec(r.get::<_, &[u8]>(0)))
            .collect::<Result<_>>()?;
        // In the order asked (as RocksDB's multi-get answers).
        v.sort_by_key(|o| ids.iter().position(|x| *x == o.id));
        Ok(v)
    }

    async fn deployment_orders_impl(
        &self,
        tenant: &str,
        dep: &str,
    ) -> Result<Vec<crate::deploy::OrderRecord>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT body FROM deploy_orders WHERE tenant_id = $1 AND deployment = $2 \
                 ORDER BY created_ms, id",
                &[&tenant, &dep],
            )
            .await?;
        rows.iter().map(|r| dec(r.get::<_, &[u8]>(0))).collect()
    }

    async fn order_deliveries_impl(
        &self,
        tenant: &str,
        orders: &[crate::deploy::OrderRecord],
    ) -> Result<Vec<crate::deploy::Delivery>> {
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = orders.iter().map(|o| o.id.as_str()).collect();
        let rows = self
            .tenant_query(
                tenant,
                "SELECT body FROM deploy_deliveries WHERE tenant_id = $1 AND order_id = ANY($2)",
                &[&tenant, &ids],
            )
            .await?;
        let mut v: Vec<crate::deploy::Delivery> = rows
            .iter()
            .map(|r| dec(r.get::<_, &[u8]>(0)))
            .collect::<Result<_>>()?;
        // Orders asked first to last, each by its sites (RocksDB's order).
        let rank = |d: &crate::deploy::Delivery| {
            orders
                .iter()
                .position(|o| o.id == d.order)
                .map(|k| (k, orders[k].sites.iter().position(|s| *s == d.site)))
        };
        v.sort_by_key(|d| rank(d));
        Ok(v)
    }

    async fn deployment_progress_impl(
        &self,
        tenant: &str,
        deps: &[String],
    ) -> Result<Vec<crate::deploy::SiteDeploymentRecord>> {
        if deps.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .tenant_query(
                tenant,
                "SELECT body FROM site_deployments WHERE tenant_id = $1 AND deployment = ANY($2) \
                 ORDER BY deployment, site_id",
                &[&tenant, &deps],
            )
            .await?;
        rows.iter().map(|r| dec(r.get::<_, &[u8]>(0))).collect()
    }
}

/// Customers as the text array SQL compares.
fn customer_strs(c: &[CustomerId]) -> Vec<String> {
    c.iter().map(|c| c.to_string()).collect()
}

impl crate::store::DeployStore for PgCentralStore {
    fn create_order<'a>(
        &'a self,
        order: &'a crate::deploy::OrderRecord,
        deliveries: &'a [crate::deploy::Delivery],
        audit: &'a AuditRow,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.create_order_impl(order, deliveries, audit))
    }

    fn order<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: &'a str,
    ) -> StoreFuture<'a, Option<crate::deploy::OrderRecord>> {
        Box::pin(self.order_impl(tenant, id))
    }

    fn orders<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> StoreFuture<'a, Vec<crate::deploy::OrderRecord>> {
        Box::pin(self.orders_impl(tenant))
    }

    fn deliveries<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> StoreFuture<'a, Vec<crate::deploy::Delivery>> {
        Box::pin(self.deliveries_impl(tenant))
    }

    fn open_orders<'a>(
        &'a self,
        tenant: &'a TenantId,
        site: &'a SiteId,
    ) -> StoreFuture<'a, Vec<crate::deploy::OrderRecord>> {
        Box::pin(self.open_orders_impl(tenant, site))
    }

    fn acknowledge_order<'a>(
        &'a self,
        tenant: &'a TenantId,
        site: &'a SiteId,
        ack: &'a outpost_uplink::deploy_link::DeployAck,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<crate::deploy::Delivery>> {
        Box::pin(self.acknowledge_order_impl(tenant, site, ack, now_ms))
    }

    fn put_site_deployment<'a>(
        &'a self,
        rec: &'a crate::deploy::SiteDeploymentRecord,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.put_site_deployment_impl(rec))
    }

    fn site_deployments<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> StoreFuture<'a, Vec<crate::deploy::SiteDeploymentRecord>> {
        Box::pin(self.site_deployments_impl(tenant))
    }

    fn deployment_page<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a crate::store::DeploymentQuery,
    ) -> StoreFuture<'a, crate::store::DeploymentPage> {
        Box::pin(self.deployment_page_impl(tenant, q))
    }

    fn orders_by_id<'a>(
        &'a self,
        tenant: &'a TenantId,
        ids: &'a [String],
    ) -> StoreFuture<'a, Vec<crate::deploy::OrderRecord>> {
        Box::pin(self.orders_by_id_impl(tenant, ids))
    }

    fn deployment_orders<'a>(
        &'a self,
        tenant: &'a TenantId,
        deployment: &'a str,
    ) -> StoreFuture<'a, Vec<crate::deploy::OrderRecord>> {
        Box::pin(self.deployment_orders_impl(tenant, deployment))
    }

    fn order_deliveries<'a>(
        &'a self,
        tenant: &'a TenantId,
        orders: &'a [crate::deploy::OrderRecord],
    ) -> StoreFuture<'a, Vec<crate::deploy::Delivery>> {
        Box::pin(self.order_deliveries_impl(tenant, orders))
    }

    fn deployment_progress<'a>(
        &'a self,
        tenant: &'a TenantId,
        deployments: &'a [String],
    ) -> StoreFuture<'a, Vec<crate::deploy::SiteDeploymentRecord>> {
        Box::pin(self.deployment_progress_impl(tenant, deployments))
    }

    fn put_decisions<'a>(
        &'a self,
        recs: &'a [crate::deploy::DecisionsRecord],
    ) -> StoreFuture<'a, usize> {
        Box::pin(self.put_decisions_impl(recs))
    }

    fn decisions<'a>(
        &'a self,
        tenant: &'a TenantId,
        site: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, Option<crate::deploy::DecisionsRecord>> {
        Box::pin(self.decisions_impl(tenant, site.as_str(), device))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod multi_tests;

#[cfg(test)]
mod fault_tests;

#[cfg(test)]
mod bus_tests;

#[cfg(test)]
pub(crate) mod fleet_bench;

#[cfg(test)]
mod fast_tests;

// ------------------------------------------------------------------ files

impl PgCentralStore {
    async fn put_file_impl(&self, r: &crate::files::CentralFile) -> Result<()> {
        let t = r.tenant.as_str();
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, t).await?;
        tx.execute(
            "INSERT INTO central_files (tenant_id, id, site_id, created_ms, body) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, id) DO UPDATE SET body = excluded.body",
            &[
                &t,
                &r.id.to_string(),
                &r.site_id.as_str(),
                &i(r.created_ms),
                &enc(r)?,
            ],
        )
        .await
        .map_err(be)?;
        tx.commit().await.map_err(be)?;
        Ok(())
    }

    async fn file_impl(
        &self,
        tenant: &str,
        id: outpost_proto::ids::TransferId,
    ) -> Result<Option<crate::files::CentralFile>> {
        let rows = self
            .tenant_query(
                tenant,
                "SELECT body FROM central_files WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &id.to_string()],
            )
            .await?;
        rows.first().map(|r| dec(r.get::<_, &[u8]>(0))).transpose()
    }

    /// Pages down the tenant's `(tenant_id, created_ms, id)` index (V8),
    /// newest first, filtering on the decoded record (device and customer
    /// are not columns) until `f.limit` matched.
    async fn files_impl(
        &self,
        tenant: &str,
        f: &crate::store::FileFilter,
    ) -> Result<Vec<crate::files::CentralFile>> {
        self.files_paged(tenant, f, 500).await
    }

    /// [`Self::files_impl`] reading `page` rows per query (tests page small).
    pub(crate) async fn files_paged(
        &self,
        tenant: &str,
        f: &crate::store::FileFilter,
        page: i64,
    ) -> Result<Vec<crate::files::CentralFile>> {
        let page = page.max(1);
        let limit = f.limit.max(1);
        let mut v = Vec::new();
        // Keyset: rows strictly below (created_ms, id).
        let mut below: Option<(i64, String)> = None;
        loop {
            let (ms, id) = match &below {
                Some((ms, id)) => (Some(*ms), Some(id.clone())),
                None => (f.before_ms.map(i), None),
            };
            let rows = self
                .tenant_query(
                    tenant,
                    "SELECT body, created_ms, id FROM central_files WHERE tenant_id = $1 \
                       AND ($2::text IS NULL OR site_id = $2) \
                       AND ($3::bigint IS NULL OR created_ms < $3 \
                            OR ($4::text IS NOT NULL AND created_ms = $3 AND id < $4)) \
                     ORDER BY created_ms DESC, id DESC LIMIT $5",
                    &[
                        &tenant,
                        &f.site_id.as_ref().map(|s| s.as_str()),
                        &ms,
                        &id.as_deref(),
                        &page,
                    ],
                )
                .await?;
            for r in &rows {
                let rec: crate::files::CentralFile = dec(r.get::<_, &[u8]>(0))?;
                if f.matches(&rec) {
                    v.push(rec);
                    if v.len() >= limit {
                        return Ok(v);
                    }
                }
            }
            match rows.last() {
                Some(r) if rows.len() as i64 == page => {
                    below = Some((r.get::<_, i64>(1), r.get::<_, String>(2)));
                }
                _ => return Ok(v),
            }
        }
    }

    async fn all_files_impl(&self) -> Result<Vec<crate::files::CentralFile>> {
        let rows = self
            .owner_query("SELECT body FROM central_files ORDER BY tenant_id, id", &[])
            .await?;
        rows.iter().map(|r| dec(r.get::<_, &[u8]>(0))).collect()
    }

    async fn delete_file_impl(
        &self,
        tenant: &str,
        id: outpost_proto::ids::TransferId,
    ) -> Result<()> {
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        tx.execute(
            "DELETE FROM central_files WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id.to_string()],
        )
        .await
        .map_err(be)?;
        tx.commit().await.map_err(be)?;
        Ok(())
    }
}

impl crate::store::FileStore for PgCentralStore {
    fn put_file<'a>(&'a self, rec: &'a crate::files::CentralFile) -> StoreFuture<'a, ()> {
        Box::pin(self.put_file_impl(rec))
    }

    fn file<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::TransferId,
    ) -> StoreFuture<'a, Option<crate::files::CentralFile>> {
        Box::pin(self.file_impl(tenant, id))
    }

    fn files<'a>(
        &'a self,
        tenant: &'a TenantId,
        f: &'a crate::store::FileFilter,
    ) -> StoreFuture<'a, Vec<crate::files::CentralFile>> {
        Box::pin(self.files_impl(tenant, f))
    }

    fn all_files(&self) -> StoreFuture<'_, Vec<crate::files::CentralFile>> {
        Box::pin(self.all_files_impl())
    }

    fn delete_file<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::TransferId,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.delete_file_impl(tenant, id))
    }
}
