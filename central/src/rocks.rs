//! The embedded RocksDB backend of [`CentralStore`].
//!
//! Keys start with the tenant (`tenant \0 site \0 ...`), so a tenant's rows
//! are one prefix and no query can reach another tenant's rows. A batch is
//! applied under its site's lock: the backend reads the rows the batch
//! touches, [`crate::apply::plan`] decides what changes (the merge rules
//! live there, shared by every backend), and one synced write stores the
//! changes together with the site's "applied" sequence set. Every row a
//! batch touches is under its site's key prefix, so different sites apply in
//! parallel (and RocksDB folds their concurrent synced writes into one WAL
//! sync).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use outpost_proto::codec;
use outpost_proto::{CustomerId, SiteId, TenantId};
use outpost_storage::rocksdb::{
    self, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::apply::{self, ApplyPlan, CurrentRows, DeadLetterPlan, Touched};
use crate::bulk::CentralBulk;
use crate::commands::{self, AuditRow, CentralCommand, Change, Outcome, OutputOp};
use crate::fleet_index::FleetIndex;
use crate::model::{
    AlertRow, ApiTokenRecord, BucketRow, CveExposureRow, CveHit, CveSiteExposure, DeadLetter,
    DeviceFacts, DeviceRow, DeviceStatus, JoinTokenRecord, PatchComplianceRow, PatchFindingsRow,
    Rollup, RollupRow, SessionRecord, SiteRecord, UserRecord,
};
use crate::scripts::CentralScript;
use crate::store::{
    AlertFilter, AlertHistoryEntry, AlertPage, ApplyOutcome, AuthStore, BatchStore,
    CentralStoreError, CommandFilter, CommandStore, DeadLetterOutcome, DeviceFilter, DeviceSearch,
    FleetCounts, FleetDelta, FleetStore, NewestAlerts, Page, Result, RollupQuery, SearchPage,
    SeriesQuery, StoreFuture,
};
use outpost_proto::ids::CommandId;
use outpost_uplink::batch::SiteBatch;

const CF_SITES: &str = "sites";
const CF_DEVICES: &str = "devices";
/// `tenant \0 site \0 device \0 bucket_start_be` → [`BucketRow`].
const CF_ROLLUPS: &str = "rollup_buckets";
/// The first layout (one row per series and bucket), dropped on open.
const CF_LEGACY_ROLLUPS: &str = "rollups";
const CF_ALERTS: &str = "alerts";
const CF_AUTH: &str = "auth";
/// Alert histories (`tenant \0 site \0 a \0 alert_be \0 t number_be`
/// for a transition, `... \0 k at_be by` for an acknowledgement) and
/// device status changes (`tenant \0 site \0 d \0 device \0 since_be`).
const CF_HISTORY: &str = "history";
/// Commands from central: `tenant \0 r \0 id_hex` → [`CentralCommand`],
/// `tenant \0 o \0 id_hex` → its output (raw bytes), and the script
/// library: `tenant \0 s \0 name \0 version (4, BE)` →
/// [`crate::scripts::CentralScript`].
const CF_COMMANDS: &str = "commands";
/// Commands not closed: `tenant \0 site \0 id_hex` → empty.
const CF_COMMANDS_OPEN: &str = "commands_open";
/// Central's audit log: `tenant \0 at_be random_be` → [`AuditRow`].
const CF_AUDIT: &str = "audit";
/// Members of bulk runs held at central until a slot of their site frees:
/// `tenant \0 site \0 run_hex \0 command_hex` → empty.
const CF_COMMANDS_HELD: &str = "commands_held";
/// `tenant \0 site \0 device` → [`PatchComplianceRow`].
const CF_PATCH_COMPLIANCE: &str = "patch_compliance";
/// `tenant \0 site \0 device` → [`PatchFindingsRow`].
const CF_PATCH_FINDINGS: &str = "patch_findings";
/// Central's CVE index, derived from the findings rows in the same write:
/// `tenant \0 cve \0 site \0 device` → `Vec<`[`CveHit`]`>`.
const CF_PATCH_CVES: &str = "patch_cves";
/// Deployment orders from central (`tenant\0o\0id`), their deliveries
/// (`tenant\0d\0site\0order`) and the progress sites report
/// (`tenant\0p\0site\0deployment`); derived in the same writes: the
/// deployment list (`tenant\0L\0(MAX - created)_be\0id\0site` →
/// [`crate::deploy::DeploymentEntry`]), a deployment's orders
/// (`tenant\0e\0deployment\0order` → empty) and the sites reporting it
/// (`tenant\0q\0deployment\0site` → empty), built at open for a store
/// written before them ([`DEPLOY_INDEX_MARKER`]).
const CF_DEPLOY: &str = "deploy";
/// Present once the deployment family's derived keys are complete.
const DEPLOY_INDEX_MARKER: &[u8] = b"\0m\0deploy-index-1";
/// `tenant \0 site \0 device` → [`DeviceFacts`] (IPs and tags, batch
/// format 6; no row when the device has neither).
const CF_DEVICE_FACTS: &str = "device_facts";
/// Every column family (`outpost-central migrate` accounts for each).
pub(crate) const CFS: [&str; 15] = [
    CF_SITES,
    CF_DEVICES,
    CF_ROLLUPS,
    CF_ALERTS,
    CF_AUTH,
    CF_HISTORY,
    CF_COMMANDS,
    CF_COMMANDS_OPEN,
    CF_AUDIT,
    CF_COMMANDS_HELD,
    CF_PATCH_COMPLIANCE,
    CF_PATCH_FINDINGS,
    CF_PATCH_CVES,
    CF_DEPLOY,
    CF_DEVICE_FACTS,
];

/// Central's RocksDB store: a cheap handle (clones share the database).
///
/// Its inherent methods are blocking (the bench and the tests call them
/// from threads); the [`BatchStore`], [`FleetStore`] and [`AuthStore`]
/// implementations run the same methods on tokio's blocking pool.
#[derive(Clone)]
pub struct RocksCentralStore {
    db: Arc<DB>,
    /// Site locks, striped by a hash of (tenant, site).
    site_locks: Arc<[Mutex<()>]>,
    /// Join tokens (read, then deleted).
    auth_lock: Arc<Mutex<()>>,
    /// Read-modify-write of commands.
    commands_lock: Arc<Mutex<()>>,
    /// What the console's search and counts read ([`FleetIndex`]):
    /// rebuilt at open, updated after each durable write.
    index: Arc<RwLock<FleetIndex>>,
}

const SITE_LOCK_STRIPES: usize = 64;

/// Most bytes a batch's write reserves before it is filled (it grows past
/// this only by what is actually written).
const WRITE_BATCH_RESERVE_MAX: usize = 8 * 1024 * 1024;

impl std::fmt::Debug for RocksCentralStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksCentralStore").finish_non_exhaustive()
    }
}

fn be(e: rocksdb::Error) -> CentralStoreError {
    CentralStoreError::Backend(e.to_string())
}

/// `a \0 b \0 c ...`
pub fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

fn prefix(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = key(parts);
    k.push(0);
    k
}

impl RocksCentralStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<RocksCentralStore> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        opts.increase_parallelism(2);
        let cache = rocksdb::Cache::new_lru_cache(64 * 1024 * 1024);
        let cfs = CFS.iter().map(|n| {
            let mut o = Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            // Existence checks of new rollup keys mostly miss: bloom filters.
            let mut bb = rocksdb::BlockBasedOptions::default();
            bb.set_block_cache(&cache);
            bb.set_bloom_filter(10.0, false);
            o.set_block_based_table_factory(&bb);
            o.set_write_buffer_size(64 * 1024 * 1024);
            ColumnFamilyDescriptor::new(*n, o)
        });
        let legacy = DB::list_cf(&opts, path)
            .map(|cfs| cfs.iter().any(|c| c == CF_LEGACY_ROLLUPS))
            .unwrap_or(false);
        let cfs: Vec<ColumnFamilyDescriptor> = cfs
            .chain(
                legacy.then(|| ColumnFamilyDescriptor::new(CF_LEGACY_ROLLUPS, Options::default())),
            )
            .collect();
        let mut db = DB::open_cf_descriptors(&opts, path, cfs).map_err(be)?;
        if legacy {
            tracing::warn!(
                "dropping the rollups of the pre-release per-series layout; sites resend nothing, \
                 history before this upgrade is gone"
            );
            db.drop_cf(CF_LEGACY_ROLLUPS).map_err(be)?;
        }
        let st = RocksCentralStore {
            db: Arc::new(db),
            site_locks: (0..SITE_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            auth_lock: Arc::new(Mutex::new(())),
            commands_lock: Arc::new(Mutex::new(())),
            index: Arc::new(RwLock::new(FleetIndex::default())),
        };
        st.rebuild_index()?;
        st.ensure_deploy_index()?;
        Ok(st)
    }

    /// Builds the fleet index from the stored sites, devices and alerts
    /// (devices before alerts: an alert finds its device).
    fn rebuild_index(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let mut ix = FleetIndex::default();
        let it = self.db.iterator_cf(self.cf(CF_SITES)?, IteratorMode::Start);
        let mut customers: HashMap<(String, String), CustomerId> = HashMap::new();
        for item in it {
            let (_, v) = item.map_err(be)?;
            let s = SiteRecord::from_stored(&v)?;
            customers.insert(
                (s.tenant.to_string(), s.site_id.to_string()),
                s.customer.clone(),
            );
            ix.upsert_site(&s);
        }
        let mut devices = 0u64;
        self.scan::<DeviceRow>(CF_DEVICES, &[], &[], |_, d| {
            let mut d = d.upgraded();
            if let Some(c) = customers.get(&(d.tenant.to_string(), d.site_id.to_string())) {
                d.customer = c.clone();
            }
            ix.upsert_device(&d);
            devices += 1;
            true
        })?;
        self.scan::<DeviceFacts>(CF_DEVICE_FACTS, &[], &[], |k, f| {
            let mut parts = k.splitn(3, |&b| b == 0);
            if let (Some(t), Some(s), Some(d)) = (parts.next(), parts.next(), parts.next()) {
                let (t, s, d) = (
                    String::from_utf8_lossy(t),
                    String::from_utf8_lossy(s),
                    String::from_utf8_lossy(d),
                );
                ix.set_facts(&t, &SiteId::from(s.as_ref()), &d, &f);
            }
            true
        })?;
        self.scan::<AlertRow>(CF_ALERTS, &[], &[], |_, a| {
            if a.state.is_open() {
                ix.upsert_alert(&a);
            }
            true
        })?;
        tracing::info!(
            devices,
            ms = started.elapsed().as_millis() as u64,
            "fleet index built"
        );
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = ix;
        Ok(())
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, FleetIndex> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, FleetIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Serialises read-modify-write of one site's rows.
    fn lock_site(&self, tenant: &str, site_id: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (tenant, site_id).hash(&mut h);
        let i = (h.finish() % SITE_LOCK_STRIPES as u64) as usize;
        self.site_locks[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| CentralStoreError::Backend(format!("column family {name} missing")))
    }

    fn get<T: DeserializeOwned>(&self, cf: &str, k: &[u8]) -> Result<Option<T>> {
        match self.db.get_cf(self.cf(cf)?, k).map_err(be)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    fn put<T: Serialize>(&self, wb: &mut WriteBatch, cf: &str, k: &[u8], v: &T) -> Result<()> {
        wb.put_cf(self.cf(cf)?, k, codec::encode(v)?);
        Ok(())
    }

    fn write(&self, wb: WriteBatch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo).map_err(be)
    }

    fn put_one<T: Serialize>(&self, cf: &str, k: &[u8], v: &T) -> Result<()> {
        let mut wb = WriteBatch::default();
        self.put(&mut wb, cf, k, v)?;
        self.write(wb)
    }

    /// Visits rows under `prefix` starting at `start` (inclusive) until `f`
    /// returns false.
    fn scan<T: DeserializeOwned>(
        &self,
        cf: &str,
        prefix: &[u8],
        start: &[u8],
        mut f: impl FnMut(&[u8], T) -> bool,
    ) -> Result<()> {
        let it = self
            .db
            .iterator_cf(self.cf(cf)?, IteratorMode::From(start, Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(be)?;
            if !k.starts_with(prefix) {
                break;
            }
            if !f(&k, codec::decode(&v)?) {
                break;
            }
        }
        Ok(())
    }
}

/// A raw row: key and value bytes as stored.
pub(crate) type RawRow = (Box<[u8]>, Box<[u8]>);

/// Raw rows for `outpost-central migrate` ([`crate::migrate`]).
impl RocksCentralStore {
    /// Up to `limit` raw rows of column family `cf` whose keys come after
    /// `after` (from the first row when `None`), in key order.
    pub(crate) fn raw_rows_after(
        &self,
        cf: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<RawRow>> {
        let mode = match after {
            Some(k) => IteratorMode::From(k, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf)?, mode) {
            let (k, v) = item.map_err(be)?;
            if after.is_some_and(|a| *k == *a) {
                continue;
            }
            out.push((k, v));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

/// Site rows have their own layout ([`SiteRecord::to_stored`]).
impl RocksCentralStore {
    fn get_site(&self, k: &[u8]) -> Result<Option<SiteRecord>> {
        match self.db.get_cf(self.cf(CF_SITES)?, k).map_err(be)? {
            Some(v) => Ok(Some(SiteRecord::from_stored(&v)?)),
            None => Ok(None),
        }
    }

    fn put_site(&self, wb: &mut WriteBatch, k: &[u8], site: &SiteRecord) -> Result<()> {
        wb.put_cf(self.cf(CF_SITES)?, k, site.to_stored()?);
        Ok(())
    }
}

impl RocksCentralStore {
    /// The rows of `keys` in one multi-get, `None` where absent.
    fn multi_get<T: DeserializeOwned>(&self, cf: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<T>>> {
        let handle = self.cf(cf)?;
        let found = self
            .db
            .multi_get_cf(keys.iter().map(|k| (handle, k.as_slice())));
        if found.len() != keys.len() {
            return Err(CentralStoreError::Backend(
                "multi-get answered fewer keys than asked".into(),
            ));
        }
        found
            .into_iter()
            .map(|got| match got.map_err(be)? {
                Some(v) => Ok(Some(codec::decode(&v)?)),
                None => Ok(None),
            })
            .collect()
    }
}

fn auth_key(kind: u8, hash: &[u8]) -> Vec<u8> {
    let mut k = vec![kind, b'/'];
    k.extend_from_slice(hash);
    k
}

fn user_key(tenant: &str, name: &str) -> Vec<u8> {
    auth_key(b'u', &key(&[tenant.as_bytes(), name.as_bytes()]))
}

/// The blocking API: the operations of the store traits.
impl RocksCentralStore {
    pub fn create_site(
        &self,
        site: &SiteRecord,
        hash: &[u8; 32],
        token: &JoinTokenRecord,
    ) -> Result<()> {
        let _g = self.lock_site(&site.tenant, &site.site_id);
        let k = key(&[site.tenant.as_bytes(), site.site_id.as_bytes()]);
        if self.get_site(&k)?.is_some() {
            return Err(CentralStoreError::Conflict(format!(
                "site {} exists",
                site.site_id
            )));
        }
        let mut wb = WriteBatch::default();
        self.put_site(&mut wb, &k, site)?;
        self.put(&mut wb, CF_AUTH, &auth_key(b'j', hash), token)?;
        self.write(wb)?;
        self.index_mut().upsert_site(site);
        Ok(())
    }

    pub fn take_join_token(&self, hash: &[u8; 32]) -> Result<Option<JoinTokenRecord>> {
        let _g = self.auth_lock.lock().unwrap_or_else(|p| p.into_inner());
        let k = auth_key(b'j', hash);
        let t = self.get::<JoinTokenRecord>(CF_AUTH, &k)?;
        if t.is_some() {
            let mut wb = WriteBatch::default();
            wb.delete_cf(self.cf(CF_AUTH)?, &k);
            self.write(wb)?;
        }
        Ok(t)
    }

    pub fn site(&self, tenant: &str, site_id: &str) -> Result<Option<SiteRecord>> {
        self.get_site(&key(&[tenant.as_bytes(), site_id.as_bytes()]))
    }

    pub fn sites(&self, tenant: &str) -> Result<Vec<SiteRecord>> {
        let p = prefix(&[tenant.as_bytes()]);
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_SITES)?,
            IteratorMode::From(&p, Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(be)?;
            if !k.starts_with(&p) {
                break;
            }
            out.push(SiteRecord::from_stored(&v)?);
        }
        Ok(out)
    }

    pub fn update_site(&self, site: &SiteRecord) -> Result<()> {
        let _g = self.lock_site(&site.tenant, &site.site_id);
        let mut wb = WriteBatch::default();
        self.put_site(
            &mut wb,
            &key(&[site.tenant.as_bytes(), site.site_id.as_bytes()]),
            site,
        )?;
        self.write(wb)?;
        self.index_mut().upsert_site(site);
        Ok(())
    }

    pub fn apply_batch(
        &self,
        tenant: &str,
        site_id: &str,
        b: &SiteBatch,
        received_ms: u64,
    ) -> Result<ApplyOutcome> {
        self.apply_batch_delta(tenant, site_id, b, received_ms)
            .map(|(o, _)| o)
    }

    /// [`RocksCentralStore::apply_batch`], and what changed for viewers.
    pub fn apply_batch_delta(
        &self,
        tenant: &str,
        site_id: &str,
        b: &SiteBatch,
        received_ms: u64,
    ) -> Result<(ApplyOutcome, FleetDelta)> {
        let _g = self.lock_site(tenant, site_id);
        let sk = key(&[tenant.as_bytes(), site_id.as_bytes()]);
        let site: SiteRecord = self
            .get_site(&sk)?
            .ok_or_else(|| CentralStoreError::Conflict(format!("unknown site {site_id}")))?;
        if apply::is_duplicate(&site, b) {
            return Ok((ApplyOutcome::Duplicate, FleetDelta::default()));
        }
        // Read every row the batch touches (one multi-get per table; bloom
        // filters: new buckets mostly miss), keeping the keys for the write.
        let touched = Touched::of(b);
        let (t, s) = (tenant.as_bytes(), site_id.as_bytes());
        let device_keys: Vec<Vec<u8>> = touched
            .devices
            .iter()
            .map(|d| key(&[t, s, d.as_bytes()]))
            .collect();
        let bucket_keys: Vec<Vec<u8>> = touched
            .buckets
            .iter()
            .map(|&(d, bucket)| {
                let dev = touched.devices.get(d).map_or(&[][..], |d| d.as_bytes());
                let mut k = prefix(&[t, s, dev]);
                k.extend_from_slice(&bucket.to_be_bytes());
                k
            })
            .collect();
        let alert_keys: Vec<Vec<u8>> = touched
            .alerts
            .iter()
            .map(|id| key(&[t, s, &id.to_be_bytes()]))
            .collect();
        let patch_keys: Vec<Vec<u8>> = touched
            .patches
            .iter()
            .map(|d| key(&[t, s, d.as_bytes()]))
            .collect();
        let finding_keys: Vec<Vec<u8>> = touched
            .findings
            .iter()
            .map(|d| key(&[t, s, d.as_bytes()]))
            .collect();
        let current = CurrentRows {
            devices: self.multi_get(CF_DEVICES, &device_keys)?,
            buckets: self.multi_get(CF_ROLLUPS, &bucket_keys)?,
            alerts: self.multi_get(CF_ALERTS, &alert_keys)?,
            patches: self.multi_get(CF_PATCH_COMPLIANCE, &patch_keys)?,
            findings: self.multi_get(CF_PATCH_FINDINGS, &finding_keys)?,
            touched,
            site,
        };
        // The CVEs of the findings rows the batch may replace: their index
        // entries go when a replacing row no longer has them.
        let cves_before: Vec<Vec<String>> = current
            .findings
            .iter()
            .map(|r| {
                r.as_ref().map_or_else(Vec::new, |r| {
                    r.cve_hits().into_keys().map(str::to_owned).collect()
                })
            })
            .collect();
        let changes = match apply::plan(current, b, received_ms)
            .map_err(|e| CentralStoreError::Backend(e.to_string()))?
        {
            ApplyPlan::Duplicate => return Ok((ApplyOutcome::Duplicate, FleetDelta::default())),
            ApplyPlan::Apply(c) => c,
        };
        // About 110 bytes per stored rollup and 2 KB per device row: sized
        // once instead of grown by doubling, but never more than
        // WRITE_BATCH_RESERVE_MAX ahead of what is written (the counts are
        // the site's).
        let estimate = b
            .rollup_count()
            .saturating_mul(110)
            .saturating_add(b.rollups.len().saturating_mul(2048))
            .saturating_add(4096);
        let mut wb = WriteBatch::with_capacity_bytes(estimate.min(WRITE_BATCH_RESERVE_MAX));
        for (k, row) in bucket_keys.iter().zip(&changes.buckets) {
            if let Some(row) = row {
                self.put(&mut wb, CF_ROLLUPS, k, row)?;
            }
        }
        for (k, row) in alert_keys.iter().zip(&changes.alerts) {
            self.put(&mut wb, CF_ALERTS, k, row)?;
        }
        for (k, row) in device_keys.iter().zip(&changes.devices) {
            self.put(&mut wb, CF_DEVICES, k, row)?;
        }
        for (k, f) in device_keys.iter().zip(&changes.facts) {
            match f {
                Some(f) if f.is_empty() => wb.delete_cf(self.cf(CF_DEVICE_FACTS)?, k),
                Some(f) => self.put(&mut wb, CF_DEVICE_FACTS, k, f)?,
                None => {}
            }
        }
        for (k, row) in patch_keys.iter().zip(&changes.patches) {
            if let Some(row) = row {
                self.put(&mut wb, CF_PATCH_COMPLIANCE, k, row)?;
            }
        }
        for ((k, row), before) in finding_keys.iter().zip(&changes.findings).zip(&cves_before) {
            let Some(row) = row else { continue };
            self.put(&mut wb, CF_PATCH_FINDINGS, k, row)?;
            let hits = row.cve_hits();
            let dev = row.device.as_bytes();
            let cves = self.cf(CF_PATCH_CVES)?;
            for gone in before.iter().filter(|c| !hits.contains_key(c.as_str())) {
                wb.delete_cf(cves, key(&[t, gone.as_bytes(), s, dev]));
            }
            for (cve, h) in &hits {
                self.put(
                    &mut wb,
                    CF_PATCH_CVES,
                    &key(&[t, cve.as_bytes(), s, dev]),
                    h,
                )?;
            }
        }
        for (alert_id, number, entry) in &changes.alert_history {
            let mut k = prefix(&[t, s, b"a", &alert_id.to_be_bytes()]);
            k.push(b't');
            k.extend_from_slice(&number.to_be_bytes());
            self.put(&mut wb, CF_HISTORY, &k, entry)?;
        }
        for (d, since, status) in &changes.status_history {
            let dev = changes.devices.get(*d).map_or("", |r| r.device.as_str());
            let mut k = prefix(&[t, s, b"d", dev.as_bytes()]);
            k.extend_from_slice(&since.to_be_bytes());
            self.put(&mut wb, CF_HISTORY, &k, status)?;
        }
        self.put_site(&mut wb, &sk, &changes.site)?;
        self.write(wb)?;
        {
            let mut ix = self.index_mut();
            ix.upsert_site(&changes.site);
            for (d, f) in changes.devices.iter().zip(&changes.facts) {
                ix.upsert_device(d);
                if let Some(f) = f {
                    ix.set_facts(tenant, &d.site_id, &d.device, f);
                }
            }
            for a in &changes.alerts {
                ix.upsert_alert(a);
            }
        }
        Ok((changes.outcome(), apply::delta(&changes)))
    }

    /// Records a dead letter ([`apply::dead_letter`]) under the site's lock.
    pub fn dead_letter(
        &self,
        tenant: &str,
        site_id: &str,
        letter: DeadLetter,
    ) -> Result<DeadLetterOutcome> {
        let _g = self.lock_site(tenant, site_id);
        let sk = key(&[tenant.as_bytes(), site_id.as_bytes()]);
        let site: SiteRecord = self
            .get_site(&sk)?
            .ok_or_else(|| CentralStoreError::Conflict(format!("unknown site {site_id}")))?;
        match apply::dead_letter(site, letter) {
            DeadLetterPlan::AlreadyClosed => Ok(DeadLetterOutcome::AlreadyClosed),
            DeadLetterPlan::Record(site, expired) => {
                let mut wb = WriteBatch::default();
                self.put_site(&mut wb, &sk, &site)?;
                self.write(wb)?;
                Ok(DeadLetterOutcome::Recorded {
                    gaps_expired: expired.len() as u64,
                })
            }
        }
    }

    /// Customer of each site of `tenant`: a device's customer is its site's.
    fn site_customers(&self, tenant: &str) -> Result<HashMap<SiteId, CustomerId>> {
        Ok(self
            .sites(tenant)?
            .into_iter()
            .map(|s| (s.site_id, s.customer))
            .collect())
    }

    pub fn devices(&self, tenant: &str, f: &DeviceFilter) -> Result<Page<DeviceRow>> {
        let customers = self.site_customers(tenant)?;
        let p = match &f.site_id {
            Some(s) => prefix(&[tenant.as_bytes(), s.as_bytes()]),
            None => prefix(&[tenant.as_bytes()]),
        };
        let mut start = p.clone();
        if let Some(a) = &f.after {
            // A cursor is a key of this listing (hex), as `next` gave it.
            match hex::decode(a) {
                Ok(mut k) if k.len() > p.len() && k.starts_with(&p) => {
                    k.push(0);
                    start = k;
                }
                _ => {
                    return Err(CentralStoreError::InvalidCursor(format!(
                        "cursor {a:?} is not a `next` value of this device list \
                         (pass `next` of the previous page unchanged, with the same filters)"
                    )));
                }
            }
        }
        let limit = f.limit.max(1);
        let mut items = Vec::new();
        let mut last = None;
        let mut more = false;
        // The tag filter reads the device's facts row (same key); a read
        // error counts as untagged and is reported after the scan.
        let mut facts_error = None;
        let mut tagged = |k: &[u8], tag: &String| match self.get::<DeviceFacts>(CF_DEVICE_FACTS, k)
        {
            Ok(f) => f.is_some_and(|f| f.tags.contains(tag)),
            Err(e) => {
                facts_error = Some(e);
                false
            }
        };
        self.scan::<DeviceRow>(CF_DEVICES, &p, &start, |k, d| {
            let mut d = d.upgraded();
            if let Some(c) = customers.get(&d.site_id) {
                d.customer = c.clone();
            }
            let ok = f.customer.as_ref().is_none_or(|c| *c == d.customer)
                && (f.customers_allowed.is_empty() || f.customers_allowed.contains(&d.customer))
                && f.status.as_ref().is_none_or(|s| s == d.status.as_str())
                && f.tag.as_ref().is_none_or(|t| tagged(k, t));
            if !ok {
                return true;
            }
            if items.len() == limit {
                more = true;
                return false;
            }
            last = Some(k.to_vec());
            items.push(d);
            true
        })?;
        if let Some(e) = facts_error {
            return Err(e);
        }
        Ok(Page {
            items,
            next: if more { last.map(hex::encode) } else { None },
        })
    }

    pub fn device(&self, tenant: &str, site_id: &str, device: &str) -> Result<Option<DeviceRow>> {
        let Some(d) = self.get::<DeviceRow>(
            CF_DEVICES,
            &key(&[tenant.as_bytes(), site_id.as_bytes(), device.as_bytes()]),
        )?
        else {
            return Ok(None);
        };
        let mut d = d.upgraded();
        if let Some(site) = self.site(tenant, site_id)? {
            d.customer = site.customer;
        }
        Ok(Some(d))
    }

    /// Patch compliance rows of `tenant`, of one site when `site_id` is
    /// given, each with its site's current customer (rows of a site no
    /// longer known are left out).
    pub fn patch_compliance(
        &self,
        tenant: &str,
        site_id: Option<&str>,
    ) -> Result<Vec<PatchComplianceRow>> {
        let customers = self.site_customers(tenant)?;
        let p = match site_id {
            Some(s) => prefix(&[tenant.as_bytes(), s.as_bytes()]),
            None => prefix(&[tenant.as_bytes()]),
        };
        let mut out = Vec::new();
        self.scan::<PatchComplianceRow>(CF_PATCH_COMPLIANCE, &p, &p, |_, mut r| {
            if let Some(c) = customers.get(&r.site_id) {
                r.customer = c.clone();
                out.push(r);
            }
            true
        })?;
        Ok(out)
    }

    /// One device's patch findings row (its site's current customer).
    pub fn device_patch_findings(
        &self,
        tenant: &str,
        site_id: &str,
        device: &str,
    ) -> Result<Option<PatchFindingsRow>> {
        let Some(mut r) = self.get::<PatchFindingsRow>(
            CF_PATCH_FINDINGS,
            &key(&[tenant.as_bytes(), site_id.as_bytes(), device.as_bytes()]),
        )?
        else {
            return Ok(None);
        };
        if let Some(site) = self.site(tenant, site_id)? {
            r.customer = site.customer;
        }
        Ok(Some(r))
    }

    /// Findings rows of `tenant`, of one site when given (rows of a site no
    /// longer known are left out), each with its site's current customer.
    pub fn patch_findings(
        &self,
        tenant: &str,
        site_id: Option<&str>,
    ) -> Result<Vec<PatchFindingsRow>> {
        let customers = self.site_customers(tenant)?;
        let p = match site_id {
            Some(s) => prefix(&[tenant.as_bytes(), s.as_bytes()]),
            None => prefix(&[tenant.as_bytes()]),
        };
        let mut out = Vec::new();
        self.scan::<PatchFindingsRow>(CF_PATCH_FINDINGS, &p, &p, |_, mut r| {
            if let Some(c) = customers.get(&r.site_id) {
                r.customer = c.clone();
                out.push(r);
            }
            true
        })?;
        Ok(out)
    }

    /// The devices of `tenant` exposed to `cve` (from the CVE index): (site,
    /// device, how), at most `limit`.
    pub fn cve_exposure(
        &self,
        tenant: &str,
        cve: &str,
        limit: usize,
    ) -> Result<Vec<CveExposureRow>> {
        let p = prefix(&[tenant.as_bytes(), cve.as_bytes()]);
        let mut out = Vec::new();
        self.scan::<Vec<CveHit>>(CF_PATCH_CVES, &p, &p, |k, hits| {
            let rest = k.get(p.len()..).unwrap_or_default();
            let mut parts = rest.splitn(2, |b| *b == 0);
            let site = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let device = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            out.push(CveExposureRow {
                site_id: SiteId::from(site),
                device,
                hits,
            });
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Per (CVE, site) exposure from the CVE index (one prefix scan of the
    /// tenant's index entries; findings rows are not read).
    pub fn cve_site_exposure(
        &self,
        tenant: &str,
        site_id: Option<&str>,
    ) -> Result<Vec<CveSiteExposure>> {
        let p = prefix(&[tenant.as_bytes()]);
        let mut out = Vec::new();
        self.scan::<Vec<CveHit>>(CF_PATCH_CVES, &p, &p, |k, hits| {
            let rest = k.get(p.len()..).unwrap_or_default();
            let mut parts = rest.splitn(3, |b| *b == 0);
            let cve = String::from_utf8_lossy(parts.next().unwrap_or_default());
            let site = String::from_utf8_lossy(parts.next().unwrap_or_default());
            if site_id.is_none_or(|s| s == site) {
                CveSiteExposure::fold(&mut out, &cve, &SiteId::from(site.into_owned()), &hits);
            }
            true
        })?;
        Ok(out)
    }

    /// One device's patch compliance row.
    pub fn device_patch_compliance(
        &self,
        tenant: &str,
        site_id: &str,
        device: &str,
    ) -> Result<Option<PatchComplianceRow>> {
        let Some(mut r) = self.get::<PatchComplianceRow>(
            CF_PATCH_COMPLIANCE,
            &key(&[tenant.as_bytes(), site_id.as_bytes(), device.as_bytes()]),
        )?
        else {
            return Ok(None);
        };
        if let Some(site) = self.site(tenant, site_id)? {
            r.customer = site.customer;
        }
        Ok(Some(r))
    }

    pub fn rollups(&self, tenant: &str, q: &RollupQuery) -> Result<Vec<(u64, RollupRow)>> {
        let p = prefix(&[tenant.as_bytes(), q.site_id.as_bytes(), q.device.as_bytes()]);
        let mut start = p.clone();
        start.extend_from_slice(&q.from_ms.to_be_bytes());
        let mut out = Vec::new();
        if q.limit == 0 {
            return Ok(out);
        }
        self.scan::<BucketRow>(CF_ROLLUPS, &p, &start, |k, row| {
            let Some(b) = k.get(p.len()..).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                return true;
            };
            let bucket = u64::from_be_bytes(b);
            if bucket >= q.to_ms {
                return false;
            }
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
        })?;
        Ok(out)
    }

    pub fn alerts(&self, tenant: &str, site_id: Option<&str>) -> Result<Vec<AlertRow>> {
        let p = match site_id {
            Some(s) => prefix(&[tenant.as_bytes(), s.as_bytes()]),
            None => prefix(&[tenant.as_bytes()]),
        };
        let mut out = Vec::new();
        self.scan::<AlertRow>(CF_ALERTS, &p, &p, |_, a| {
            out.push(a);
            true
        })?;
        Ok(out)
    }

    /// The newest alerts matching `f` and their count. Open-only filters
    /// read just the open alerts the fleet index lists (one point read
    /// each); others scan the tenant's (or site's) alerts keeping only the
    /// newest `limit` in memory.
    pub fn alert_page(&self, tenant: &str, f: &AlertFilter) -> Result<AlertPage> {
        let mut keep = NewestAlerts::new(f.limit);
        if f.states.open_only() {
            let open = self.index().open_alerts(tenant, f.site.as_ref());
            for (site, id) in open {
                let k = key(&[tenant.as_bytes(), site.as_bytes(), &id.to_be_bytes()]);
                if let Some(a) = self.get::<AlertRow>(CF_ALERTS, &k)?
                    && f.matches(&a)
                {
                    keep.push(a);
                }
            }
        } else {
            let p = match &f.site {
                Some(s) => prefix(&[tenant.as_bytes(), s.as_bytes()]),
                None => prefix(&[tenant.as_bytes()]),
            };
            self.scan::<AlertRow>(CF_ALERTS, &p, &p, |_, a| {
                if f.matches(&a) {
                    keep.push(a);
                }
                true
            })?;
        }
        Ok(keep.finish())
    }

    /// Acknowledges an alert; its history keeps who, when and why. The
    /// alert as it is now, `None` if the tenant has no such alert.
    pub fn ack_alert(
        &self,
        tenant: &str,
        site_id: &str,
        alert_id: u64,
        by: &str,
        comment: &str,
        now_ms: u64,
    ) -> Result<Option<AlertRow>> {
        let _g = self.lock_site(tenant, site_id);
        let (t, s) = (tenant.as_bytes(), site_id.as_bytes());
        let k = key(&[t, s, &alert_id.to_be_bytes()]);
        let Some(mut a) = self.get::<AlertRow>(CF_ALERTS, &k)? else {
            return Ok(None);
        };
        a.acked_by = Some(by.to_string());
        a.acked_ms = now_ms;
        let mut wb = WriteBatch::default();
        self.put(&mut wb, CF_ALERTS, &k, &a)?;
        let mut hk = prefix(&[t, s, b"a", &alert_id.to_be_bytes()]);
        hk.push(b'k');
        hk.extend_from_slice(&now_ms.to_be_bytes());
        hk.extend_from_slice(by.as_bytes());
        let entry = AlertHistoryEntry::Ack {
            at_ms: now_ms,
            by: by.to_string(),
            comment: comment.to_string(),
        };
        self.put(&mut wb, CF_HISTORY, &hk, &entry)?;
        self.write(wb)?;
        self.index_mut().upsert_alert(&a);
        Ok(Some(a))
    }

    /// An alert's history, oldest first.
    pub fn alert_history(
        &self,
        tenant: &str,
        site_id: &str,
        alert_id: u64,
    ) -> Result<Vec<AlertHistoryEntry>> {
        let p = prefix(&[
            tenant.as_bytes(),
            site_id.as_bytes(),
            b"a",
            &alert_id.to_be_bytes(),
        ]);
        let mut out = Vec::new();
        self.scan::<AlertHistoryEntry>(CF_HISTORY, &p, &p, |_, e| {
            out.push(e);
            out.len() < 10_000
        })?;
        let at = |e: &AlertHistoryEntry| match e {
            AlertHistoryEntry::Transition { at_ms, .. } | AlertHistoryEntry::Ack { at_ms, .. } => {
                *at_ms
            }
        };
        out.sort_by_key(at);
        Ok(out)
    }

    /// A device's status changes, newest first, at most `limit`.
    pub fn status_history(
        &self,
        tenant: &str,
        site_id: &str,
        device: &str,
        limit: usize,
    ) -> Result<Vec<(u64, DeviceStatus)>> {
        let p = prefix(&[
            tenant.as_bytes(),
            site_id.as_bytes(),
            b"d",
            device.as_bytes(),
        ]);
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_HISTORY)?,
            IteratorMode::From(
                &{
                    let mut end = p.clone();
                    end.extend_from_slice(&u64::MAX.to_be_bytes());
                    end
                },
                Direction::Reverse,
            ),
        );
        for item in it {
            let (k, v) = item.map_err(be)?;
            if !k.starts_with(&p) || out.len() >= limit {
                break;
            }
            let Some(since) = k.get(p.len()..).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                continue;
            };
            out.push((u64::from_be_bytes(since), codec::decode(&v)?));
        }
        Ok(out)
    }

    /// The console's device search, from the fleet index.
    pub fn search_devices(&self, tenant: &str, q: &DeviceSearch) -> Result<SearchPage> {
        self.index()
            .search(tenant, q)
            .map_err(|e| CentralStoreError::InvalidCursor(e.to_string()))
    }

    /// A device's IPs and tags (empty when its site sent none).
    pub fn device_facts(&self, tenant: &str, site_id: &str, device: &str) -> Result<DeviceFacts> {
        Ok(self
            .get::<DeviceFacts>(
                CF_DEVICE_FACTS,
                &key(&[tenant.as_bytes(), site_id.as_bytes(), device.as_bytes()]),
            )?
            .unwrap_or_default())
    }

    /// Several devices' IPs and tags in one multi-get, in order.
    pub fn device_facts_many(
        &self,
        tenant: &str,
        devices: &[(SiteId, String)],
    ) -> Result<Vec<DeviceFacts>> {
        let keys: Vec<Vec<u8>> = devices
            .iter()
            .map(|(s, d)| key(&[tenant.as_bytes(), s.as_bytes(), d.as_bytes()]))
            .collect();
        Ok(self
            .multi_get::<DeviceFacts>(CF_DEVICE_FACTS, &keys)?
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    }

    /// Counts per site, from the fleet index.
    pub fn fleet_counts(&self, tenant: &str, allowed: &[CustomerId]) -> FleetCounts {
        self.index().counts(tenant, allowed)
    }

    /// Several series of one device in one scan of its bucket rows.
    pub fn series_rollups(&self, tenant: &str, q: &SeriesQuery) -> Result<Vec<Vec<(u64, Rollup)>>> {
        let p = prefix(&[tenant.as_bytes(), q.site_id.as_bytes(), q.device.as_bytes()]);
        let mut start = p.clone();
        start.extend_from_slice(&q.from_ms.to_be_bytes());
        let mut out: Vec<Vec<(u64, Rollup)>> = vec![Vec::new(); q.series.len()];
        self.scan::<BucketRow>(CF_ROLLUPS, &p, &start, |k, row| {
            let Some(b) = k.get(p.len()..).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                return true;
            };
            let bucket = u64::from_be_bytes(b);
            if bucket >= q.to_ms {
                return false;
            }
            for (i, (name, label)) in q.series.iter().enumerate() {
                if let Some(sr) = row
                    .series
                    .iter()
                    .find(|s| s.name == *name && s.label == *label)
                    && let Some(list) = out.get_mut(i)
                {
                    list.push((bucket, sr.rollup));
                }
            }
            true
        })?;
        Ok(out)
    }

    /// Token rows have their own layout ([`ApiTokenRecord::to_stored`]).
    pub fn put_api_token(&self, hash: &[u8; 32], rec: &ApiTokenRecord) -> Result<()> {
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(CF_AUTH)?, auth_key(b't', hash), rec.to_stored()?);
        self.write(wb)
    }
    pub fn api_token(&self, hash: &[u8; 32]) -> Result<Option<ApiTokenRecord>> {
        match self
            .db
            .get_cf(self.cf(CF_AUTH)?, auth_key(b't', hash))
            .map_err(be)?
        {
            Some(v) => Ok(Some(ApiTokenRecord::from_stored(&v)?)),
            None => Ok(None),
        }
    }
    /// The tokens of `tenant` with their keys (tokens are few: the scan
    /// over every tenant's token rows is the listing's whole cost).
    fn api_tokens_keyed(&self, tenant: &str) -> Result<Vec<(Vec<u8>, ApiTokenRecord)>> {
        let p = auth_key(b't', &[]);
        let it = self.db.iterator_cf(
            self.cf(CF_AUTH)?,
            IteratorMode::From(&p, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item.map_err(be)?;
            if !k.starts_with(&p) {
                break;
            }
            let t = ApiTokenRecord::from_stored(&v)?;
            if t.principal.tenant.as_str() == tenant {
                out.push((k.to_vec(), t));
            }
        }
        out.sort_by(|a, b| (a.1.created_ms, &a.1.id).cmp(&(b.1.created_ms, &b.1.id)));
        Ok(out)
    }
    pub fn api_tokens(&self, tenant: &str) -> Result<Vec<ApiTokenRecord>> {
        Ok(self
            .api_tokens_keyed(tenant)?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }
    /// See [`AuthStore::revoke_api_token`].
    pub fn revoke_api_token(
        &self,
        tenant: &str,
        id: &str,
        by: &str,
        now_ms: u64,
        audit: &AuditRow,
    ) -> Result<Option<(ApiTokenRecord, bool)>> {
        let _g = self.auth_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some((k, mut t)) = self
            .api_tokens_keyed(tenant)?
            .into_iter()
            .find(|(_, t)| t.id == id)
        else {
            return Ok(None);
        };
        if t.life.revoked_ms.is_some() {
            return Ok(Some((t, false)));
        }
        t.life.revoked_ms = Some(now_ms);
        t.life.revoked_by = Some(by.to_string());
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(CF_AUTH)?, k, t.to_stored()?);
        self.put_audit(&mut wb, audit)?;
        self.write(wb)?;
        Ok(Some((t, true)))
    }
    /// See [`AuthStore::remove_user`].
    pub fn remove_user(
        &self,
        tenant: &str,
        name: &str,
        audit: &AuditRow,
        now_ms: u64,
    ) -> Result<Option<u64>> {
        let _g = self.auth_lock.lock().unwrap_or_else(|p| p.into_inner());
        let k = user_key(tenant, name);
        if self.get::<UserRecord>(CF_AUTH, &k)?.is_none() {
            return Ok(None);
        }
        let mut wb = WriteBatch::default();
        let ended = self.end_sessions_into(&mut wb, tenant, name, now_ms)?;
        wb.delete_cf(self.cf(CF_AUTH)?, &k);
        self.put_audit(&mut wb, audit)?;
        self.write(wb)?;
        Ok(Some(ended))
    }
    /// Stores (or replaces) a user; a replaced user's sessions end.
    pub fn put_user(&self, u: &UserRecord, now_ms: u64) -> Result<u64> {
        let _g = self.auth_lock.lock().unwrap_or_else(|p| p.into_inner());
        let k = user_key(&u.tenant, &u.name);
        let mut wb = WriteBatch::default();
        let ended = if self.get::<UserRecord>(CF_AUTH, &k)?.is_some() {
            self.end_sessions_into(&mut wb, &u.tenant, &u.name, now_ms)?
        } else {
            0
        };
        self.put(&mut wb, CF_AUTH, &k, u)?;
        self.write(wb)?;
        Ok(ended)
    }
    /// Stores a new user; `Conflict` if the tenant has one of that name.
    pub fn create_user(&self, u: &UserRecord) -> Result<()> {
        let _g = self.auth_lock.lock().unwrap_or_else(|p| p.into_inner());
        let k = user_key(&u.tenant, &u.name);
        if self.get::<UserRecord>(CF_AUTH, &k)?.is_some() {
            return Err(CentralStoreError::Conflict(format!(
                "user {} exists; change a password with PUT /api/v1/users/{}/password",
                u.name, u.name
            )));
        }
        self.put_one(CF_AUTH, &k, u)
    }
    pub fn user(&self, tenant: &str, name: &str) -> Result<Option<UserRecord>> {
        self.get(CF_AUTH, &user_key(tenant, name))
    }
    /// Replaces a user's password hash and ends their sessions, in one
    /// write; `None` if there is no such user.
    pub fn set_password(
        &self,
        tenant: &str,
        name: &str,
        password_hash: &str,
        now_ms: u64,
    ) -> Result<Option<u64>> {
        let _g = self.auth_lock.lock().unwrap_or_else(|p| p.into_inner());
        let k = user_key(tenant, name);
        let Some(mut u) = self.get::<UserRecord>(CF_AUTH, &k)? else {
            return Ok(None);
        };
        u.password_hash = password_hash.to_string();
        let mut wb = WriteBatch::default();
        let ended = self.end_sessions_into(&mut wb, tenant, name, now_ms)?;
        self.put(&mut wb, CF_AUTH, &k, &u)?;
        self.write(wb)?;
        Ok(Some(ended))
    }
    /// Adds to `wb` the deletion of every session of user `name` of
    /// `tenant`, and of every expired session met on the way; returns the
    /// number of the user's sessions.
    fn end_sessions_into(
        &self,
        wb: &mut WriteBatch,
        tenant: &str,
        name: &str,
        now_ms: u64,
    ) -> Result<u64> {
        let cf = self.cf(CF_AUTH)?;
        let p = auth_key(b's', &[]);
        let mut ended = 0;
        let mut doomed = Vec::new();
        self.scan::<SessionRecord>(CF_AUTH, &p, &p, |k, s| {
            let mine = s.principal.tenant.as_str() == tenant && s.principal.name == name;
            if mine {
                ended += 1;
            }
            if mine || s.expires_ms <= now_ms {
                doomed.push(k.to_vec());
            }
            true
        })?;
        for k in doomed {
            wb.delete_cf(cf, k);
        }
        Ok(ended)
    }
    pub fn put_session(&self, hash: &[u8; 32], s: &SessionRecord) -> Result<()> {
        self.put_one(CF_AUTH, &auth_key(b's', hash), s)
    }
    pub fn session(&self, hash: &[u8; 32]) -> Result<Option<SessionRecord>> {
        self.get(CF_AUTH, &auth_key(b's', hash))
    }
    pub fn delete_session(&self, hash: &[u8; 32]) -> Result<()> {
        let mut wb = WriteBatch::default();
        wb.delete_cf(self.cf(CF_AUTH)?, auth_key(b's', hash));
        self.write(wb)
    }
}

fn command_key(tenant: &str, kind: u8, id: outpost_proto::ids::CommandId) -> Vec<u8> {
    key(&[tenant.as_bytes(), &[kind], id.to_string().as_bytes()])
}

/// Commands from central (blocking; see [`CommandStore`]).
impl RocksCentralStore {
    fn open_key(c: &CentralCommand) -> Vec<u8> {
        key(&[
            c.tenant.as_bytes(),
            c.site_id.as_bytes(),
            c.id.to_string().as_bytes(),
        ])
    }

    fn commands_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.commands_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_audit(&self, wb: &mut WriteBatch, row: &AuditRow) -> Result<()> {
        let mut k = prefix(&[row.tenant.as_bytes()]);
        k.extend_from_slice(&row.at_ms.to_be_bytes());
        k.extend_from_slice(&rand::random::<u64>().to_be_bytes());
        self.put(wb, CF_AUDIT, &k, row)
    }

    pub fn create_command(&self, c: &CentralCommand, audit: &AuditRow) -> Result<()> {
        let _g = self.commands_guard();
        let k = command_key(&c.tenant, b'r', c.id);
        if self
            .db
            .get_cf(self.cf(CF_COMMANDS)?, &k)
            .map_err(be)?
            .is_some()
        {
            return Err(CentralStoreError::Conflict(format!(
                "command {} exists",
                c.id
            )));
        }
        let mut wb = WriteBatch::default();
        self.put(&mut wb, CF_COMMANDS, &k, c)?;
        if !c.closed {
            wb.put_cf(self.cf(CF_COMMANDS_OPEN)?, Self::open_key(c), b"");
        }
        self.put_audit(&mut wb, audit)?;
        self.write(wb)
    }

    pub fn command(
        &self,
        tenant: &str,
        id: outpost_proto::ids::CommandId,
    ) -> Result<Option<CentralCommand>> {
        self.get(CF_COMMANDS, &command_key(tenant, b'r', id))
    }

    pub fn command_output(
        &self,
        tenant: &str,
        id: outpost_proto::ids::CommandId,
    ) -> Result<Vec<u8>> {
        Ok(self
            .db
            .get_cf(self.cf(CF_COMMANDS)?, command_key(tenant, b'o', id))
            .map_err(be)?
            .unwrap_or_default())
    }

    /// Scans a tenant's command records (a PostgreSQL backend indexes
    /// `(tenant, created_ms)`, `(tenant, site)` and `(tenant, device)`).
    pub fn commands(&self, tenant: &str, f: &CommandFilter) -> Result<Vec<CentralCommand>> {
        let p = prefix(&[tenant.as_bytes(), b"r"]);
        let mut v = Vec::new();
        self.scan::<CentralCommand>(CF_COMMANDS, &p, &p, |_, c| {
            let ok = f.site_id.as_ref().is_none_or(|s| *s == c.site_id)
                && f.device.as_ref().is_none_or(|d| *d == c.device)
                && f.state.is_none_or(|s| s == c.state)
                && (f.customers_allowed.is_empty() || f.customers_allowed.contains(&c.customer))
                && f.after_cursor(c.created_ms, &c.id);
            if ok {
                v.push(c);
            }
            true
        })?;
        v.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.0.cmp(&a.id.0)));
        v.truncate(f.limit.max(1));
        Ok(v)
    }

    pub fn open_commands(&self, site: Option<(&str, &str)>) -> Result<Vec<CentralCommand>> {
        let p = match site {
            Some((t, s)) => prefix(&[t.as_bytes(), s.as_bytes()]),
            None => Vec::new(),
        };
        let mut keys = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_COMMANDS_OPEN)?,
            IteratorMode::From(&p, Direction::Forward),
        );
        for item in it {
            let (k, _) = item.map_err(be)?;
            if !k.starts_with(&p) {
                break;
            }
            let parts: Vec<&[u8]> = k.split(|b| *b == 0).collect();
            if let [t, _s, id] = parts[..] {
                let (Ok(t), Ok(id)) = (std::str::from_utf8(t), std::str::from_utf8(id)) else {
                    continue;
                };
                if let Ok(id) = id.parse() {
                    keys.push(command_key(t, b'r', id));
                }
            }
        }
        Ok(self
            .multi_get::<CentralCommand>(CF_COMMANDS, &keys)?
            .into_iter()
            .flatten()
            .collect())
    }

    pub fn change_command(
        &self,
        tenant: &str,
        id: outpost_proto::ids::CommandId,
        change: Change,
        now_ms: u64,
        audit: Option<AuditRow>,
    ) -> Result<Option<(CentralCommand, Outcome)>> {
        let _g = self.commands_guard();
        let k = command_key(tenant, b'r', id);
        let Some(mut c) = self.get::<CentralCommand>(CF_COMMANDS, &k)? else {
            return Ok(None);
        };
        let o = commands::apply(&mut c, change, now_ms);
        if !o.changed {
            return Ok(Some((c, o)));
        }
        let mut wb = WriteBatch::default();
        self.put(&mut wb, CF_COMMANDS, &k, &c)?;
        let ok = command_key(tenant, b'o', id);
        match &o.output {
            OutputOp::Keep => {}
            OutputOp::Replace(b) => wb.put_cf(self.cf(CF_COMMANDS)?, &ok, b),
            OutputOp::Append(b) => {
                let mut cur = self
                    .db
                    .get_cf(self.cf(CF_COMMANDS)?, &ok)
                    .map_err(be)?
                    .unwrap_or_default();
                cur.extend_from_slice(b);
                wb.put_cf(self.cf(CF_COMMANDS)?, &ok, cur);
            }
        }
        if c.closed {
            wb.delete_cf(self.cf(CF_COMMANDS_OPEN)?, Self::open_key(&c));
        } else {
            wb.put_cf(self.cf(CF_COMMANDS_OPEN)?, Self::open_key(&c), b"");
        }
        if let Some(a) = &audit {
            self.put_audit(&mut wb, a)?;
        }
        if let Some(a) = commands::result_audit(&c, &o, now_ms) {
            self.put_audit(&mut wb, &a)?;
        }
        self.write(wb)?;
        Ok(Some((c, o)))
    }

    fn script_key(tenant: &str, name: &str, version: u32) -> Vec<u8> {
        key(&[
            tenant.as_bytes(),
            b"s",
            name.as_bytes(),
            &version.to_be_bytes(),
        ])
    }

    /// Versions of script `name`, oldest first (names hold no NUL, so
    /// `tenant \0 s \0 name \0` is this name's prefix alone).
    fn script_versions(&self, tenant: &str, name: &str) -> Result<Vec<CentralScript>> {
        let p = prefix(&[tenant.as_bytes(), b"s", name.as_bytes()]);
        let mut v = Vec::new();
        self.scan::<CentralScript>(CF_COMMANDS, &p, &p, |_, s| {
            v.push(s);
            true
        })?;
        Ok(v)
    }

    pub fn script(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<CentralScript>> {
        match version {
            Some(n) => self.get(CF_COMMANDS, &Self::script_key(tenant, name, n)),
            None => Ok(self.script_versions(tenant, name)?.pop()),
        }
    }

    pub fn scripts(&self, tenant: &str) -> Result<Vec<CentralScript>> {
        let p = prefix(&[tenant.as_bytes(), b"s"]);
        let mut out: Vec<CentralScript> = Vec::new();
        self.scan::<CentralScript>(CF_COMMANDS, &p, &p, |_, s| {
            match out.last_mut() {
                Some(last) if last.name == s.name => *last = s,
                _ => out.push(s),
            }
            true
        })?;
        Ok(out)
    }

    pub fn put_script(
        &self,
        tenant: &str,
        mut s: CentralScript,
        expect_new: bool,
        audit: &AuditRow,
    ) -> Result<std::result::Result<CentralScript, Option<CentralScript>>> {
        let _g = self.commands_guard();
        let versions = self.script_versions(tenant, &s.name)?;
        let (first, cur) = (versions.first(), versions.last());
        match (cur, expect_new) {
            (Some(c), true) => return Ok(Err(Some(c.clone()))),
            (None, false) => return Ok(Err(None)),
            _ => {}
        }
        if let Some(f) = first {
            s.customer = f.customer.clone();
        }
        s.version = cur.map(|c| c.version + 1).unwrap_or(1);
        let mut audit = audit.clone();
        audit.detail = format!("{} version {}", s.name, s.version);
        let mut wb = WriteBatch::default();
        self.put(
            &mut wb,
            CF_COMMANDS,
            &Self::script_key(tenant, &s.name, s.version),
            &s,
        )?;
        self.put_audit(&mut wb, &audit)?;
        self.write(wb)?;
        Ok(Ok(s))
    }

    fn held_key(tenant: &str, site: &str, run: CommandId, cmd: CommandId) -> Vec<u8> {
        key(&[
            tenant.as_bytes(),
            site.as_bytes(),
            run.to_string().as_bytes(),
            cmd.to_string().as_bytes(),
        ])
    }

    pub fn create_bulk(
        &self,
        run: &CentralBulk,
        cmds: &[CentralCommand],
        held: &[CommandId],
        audit: &AuditRow,
    ) -> Result<()> {
        let _g = self.commands_guard();
        let t = run.tenant.as_str();
        let mut wb = WriteBatch::default();
        self.put(&mut wb, CF_COMMANDS, &command_key(t, b'u', run.id), run)?;
        let held: std::collections::HashSet<CommandId> = held.iter().copied().collect();
        for c in cmds {
            self.put(&mut wb, CF_COMMANDS, &command_key(t, b'r', c.id), c)?;
            wb.put_cf(self.cf(CF_COMMANDS_OPEN)?, Self::open_key(c), b"");
            if held.contains(&c.id) {
                wb.put_cf(
                    self.cf(CF_COMMANDS_HELD)?,
                    Self::held_key(t, &c.site_id, run.id, c.id),
                    b"",
                );
            }
        }
        self.put_audit(&mut wb, audit)?;
        self.write(wb)
    }

    pub fn bulk(&self, tenant: &str, id: CommandId) -> Result<Option<CentralBulk>> {
        self.get(CF_COMMANDS, &command_key(tenant, b'u', id))
    }

    pub fn bulks(&self, tenant: &str, limit: usize) -> Result<Vec<CentralBulk>> {
        let p = prefix(&[tenant.as_bytes(), b"u"]);
        let mut v = Vec::new();
        self.scan::<CentralBulk>(CF_COMMANDS, &p, &p, |_, b| {
            v.push(b);
            true
        })?;
        v.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.0.cmp(&a.id.0)));
        v.truncate(limit.max(1));
        Ok(v)
    }

    pub fn cancel_bulk(
        &self,
        tenant: &str,
        id: CommandId,
        by: &str,
        now_ms: u64,
        audit: &AuditRow,
    ) -> Result<Option<CentralBulk>> {
        let _g = self.commands_guard();
        let k = command_key(tenant, b'u', id);
        let Some(mut run) = self.get::<CentralBulk>(CF_COMMANDS, &k)? else {
            return Ok(None);
        };
        if run.cancelled.is_none() {
            run.cancelled = Some((now_ms, by.to_string()));
            let mut wb = WriteBatch::default();
            self.put(&mut wb, CF_COMMANDS, &k, &run)?;
            self.put_audit(&mut wb, audit)?;
            self.write(wb)?;
        }
        Ok(Some(run))
    }

    pub fn held(
        &self,
        site: Option<(&str, &str)>,
    ) -> Result<Vec<(TenantId, SiteId, CommandId, CommandId)>> {
        let p = match site {
            Some((t, s)) => prefix(&[t.as_bytes(), s.as_bytes()]),
            None => Vec::new(),
        };
        let mut v = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_COMMANDS_HELD)?,
            IteratorMode::From(&p, Direction::Forward),
        );
        for item in it {
            let (k, _) = item.map_err(be)?;
            if !k.starts_with(&p) {
                break;
            }
            let parts: Vec<&[u8]> = k.split(|b| *b == 0).collect();
            if let [t, s, r, c] = parts[..] {
                let parsed = (
                    std::str::from_utf8(t),
                    std::str::from_utf8(s),
                    std::str::from_utf8(r).ok().and_then(|r| r.parse().ok()),
                    std::str::from_utf8(c).ok().and_then(|c| c.parse().ok()),
                );
                if let (Ok(t), Ok(s), Some(r), Some(c)) = parsed {
                    v.push((t.into(), s.into(), r, c));
                }
            }
        }
        Ok(v)
    }

    pub fn unhold(
        &self,
        tenant: &str,
        site: &str,
        run: CommandId,
        cmds: &[CommandId],
    ) -> Result<()> {
        let mut wb = WriteBatch::default();
        for c in cmds {
            wb.delete_cf(
                self.cf(CF_COMMANDS_HELD)?,
                Self::held_key(tenant, site, run, *c),
            );
        }
        self.write(wb)
    }

    pub fn commands_by_id(
        &self,
        tenant: &str,
        ids: &[CommandId],
    ) -> Result<Vec<Option<CentralCommand>>> {
        let keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| command_key(tenant, b'r', *id))
            .collect();
        self.multi_get(CF_COMMANDS, &keys)
    }

    pub fn append_audit(&self, row: &AuditRow) -> Result<()> {
        let mut wb = WriteBatch::default();
        self.put_audit(&mut wb, row)?;
        self.write(wb)
    }

    pub fn audit(&self, tenant: &str, limit: usize) -> Result<Vec<AuditRow>> {
        let p = prefix(&[tenant.as_bytes()]);
        let mut end = p.clone();
        end.extend_from_slice(&[0xff; 17]);
        let mut v = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_AUDIT)?,
            IteratorMode::From(&end, Direction::Reverse),
        );
        for item in it {
            let (k, val) = item.map_err(be)?;
            if !k.starts_with(&p) {
                break;
            }
            v.push(codec::decode(&val)?);
            if v.len() >= limit.max(1) {
                break;
            }
        }
        Ok(v)
    }
}

impl CommandStore for RocksCentralStore {
    fn create_command<'a>(
        &'a self,
        cmd: &'a CentralCommand,
        audit: &'a AuditRow,
    ) -> StoreFuture<'a, ()> {
        let (st, c, a) = (self.clone(), cmd.clone(), audit.clone());
        blocking(move || st.create_command(&c, &a))
    }

    fn command<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::CommandId,
    ) -> StoreFuture<'a, Option<CentralCommand>> {
        let (st, t) = (self.clone(), tenant.to_owned());
        blocking(move || st.command(&t, id))
    }

    fn command_output<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::CommandId,
    ) -> StoreFuture<'a, Vec<u8>> {
        let (st, t) = (self.clone(), tenant.to_owned());
        blocking(move || st.command_output(&t, id))
    }

    fn commands<'a>(
        &'a self,
        tenant: &'a TenantId,
        f: &'a CommandFilter,
    ) -> StoreFuture<'a, Vec<CentralCommand>> {
        let (st, t, f) = (self.clone(), tenant.to_owned(), f.clone());
        blocking(move || st.commands(&t, &f))
    }

    fn open_commands<'a>(
        &'a self,
        site: Option<(&'a TenantId, &'a SiteId)>,
    ) -> StoreFuture<'a, Vec<CentralCommand>> {
        let st = self.clone();
        let site = site.map(|(t, s)| (t.to_string(), s.to_string()));
        blocking(move || st.open_commands(site.as_ref().map(|(t, s)| (t.as_str(), s.as_str()))))
    }

    fn change_command<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::CommandId,
        change: Change,
        now_ms: u64,
        audit: Option<AuditRow>,
    ) -> StoreFuture<'a, Option<(CentralCommand, Outcome)>> {
        let (st, t) = (self.clone(), tenant.to_owned());
        blocking(move || st.change_command(&t, id, change, now_ms, audit))
    }

    fn put_script<'a>(
        &'a self,
        tenant: &'a TenantId,
        script: CentralScript,
        expect_new: bool,
        audit: AuditRow,
    ) -> StoreFuture<'a, std::result::Result<CentralScript, Option<CentralScript>>> {
        let (st, t) = (self.clone(), tenant.to_owned());
        blocking(move || st.put_script(&t, script, expect_new, &audit))
    }

    fn script<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a str,
        version: Option<u32>,
    ) -> StoreFuture<'a, Option<CentralScript>> {
        let (st, t, n) = (self.clone(), tenant.to_owned(), name.to_owned());
        blocking(move || st.script(&t, &n, version))
    }

    fn scripts<'a>(&'a self, tenant: &'a TenantId) -> StoreFuture<'a, Vec<CentralScript>> {
        let (st, t) = (self.clone(), tenant.to_owned());
        blocking(move || st.scripts(&t))
    }

    fn create_bulk<'a>(
        &'a self,
        run: &'a CentralBulk,
        cmds: &'a [CentralCommand],
        held: &'a [CommandId],
        audit: &'a AuditRow,
    ) -> StoreFuture<'a, ()> {
        let (st, r, c, h, a) = (
            self.clone(),
            run.clone(),
            cmds.to_vec(),
            held.to_vec(),
            audit.clone(),
        );
        blocking(move || st.create_bulk(&r, &c, &h, &a))
    }

    fn bulk<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: CommandId,
    ) -> StoreFuture<'a, Option<CentralBulk>> {
        let (st, t) = (self.clone(), tenant.to_owned());
        blocking(move || st.bulk(&t, id))
    }

    fn bulks<'a>(
        &'a self,
        tenant: &'a TenantId,
        limit: usize,
    ) -> StoreFuture<'a, Vec<CentralBulk>> {
        let (st, t) = (self.clone(), tenant.to_owned());
        blocking(move || st.bulks(&t, limit))
    }

    fn cancel_bulk<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: CommandId,
        by: &'a str,
        now_ms: u64,
        audit: AuditRow,
    ) -> StoreFuture<'a, Option<CentralBulk>> {
        let (st, t, b) = (self.clone(), tenant.to_owned(), by.to_owned());
        blocking(move || st.cancel_bulk(&t, id, &b, now_ms, &audit))
    }

    fn held<'a>(
        &'a self,
        site: Option<(&'a TenantId, &'a SiteId)>,
    ) -> StoreFuture<'a, Vec<(TenantId, SiteId, CommandId, CommandId)>> {
        let st = self.clone();
        let site = site.map(|(t, s)| (t.to_string(), s.to_string()));
        blocking(move || st.held(site.as_ref().map(|(t, s)| (t.as_str(), s.as_str()))))
    }

    fn unhold<'a>(
        &'a self,
        tenant: &'a TenantId,
        site: &'a SiteId,
        run: CommandId,
        cmds: &'a [CommandId],
    ) -> StoreFuture<'a, ()> {
        let (st, t, s, c) = (
            self.clone(),
            tenant.to_owned(),
            site.to_owned(),
            cmds.to_vec(),
        );
        blocking(move || st.unhold(&t, &s, run, &c))
    }

    fn commands_by_id<'a>(
        &'a self,
        tenant: &'a TenantId,
        ids: &'a [CommandId],
    ) -> StoreFuture<'a, Vec<Option<CentralCommand>>> {
        let (st, t, i) = (self.clone(), tenant.to_owned(), ids.to_vec());
        blocking(move || st.commands_by_id(&t, &i))
    }

    fn append_audit<'a>(&'a self, row: &'a AuditRow) -> StoreFuture<'a, ()> {
        let (st, r) = (self.clone(), row.clone());
        blocking(move || st.append_audit(&r))
    }

    fn audit<'a>(&'a self, tenant: &'a TenantId, limit: usize) -> StoreFuture<'a, Vec<AuditRow>> {
        let (st, t) = (self.clone(), tenant.to_owned());
        blocking(move || st.audit(&t, limit))
    }
}

/// Runs blocking store work on tokio's blocking pool.
fn blocking<T, F>(f: F) -> StoreFuture<'static, T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    Box::pin(async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| CentralStoreError::Backend(format!("store task failed: {e}")))?
    })
}

impl BatchStore for RocksCentralStore {
    fn apply_batch_delta<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        batch: SiteBatch,
        received_ms: u64,
    ) -> StoreFuture<'a, (ApplyOutcome, FleetDelta)> {
        let (st, t, s) = (self.clone(), tenant.to_owned(), site_id.to_owned());
        blocking(move || st.apply_batch_delta(&t, &s, &batch, received_ms))
    }

    fn dead_letter<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        letter: DeadLetter,
    ) -> StoreFuture<'a, DeadLetterOutcome> {
        let (st, t, s) = (self.clone(), tenant.to_owned(), site_id.to_owned());
        blocking(move || st.dead_letter(&t, &s, letter))
    }
}

impl FleetStore for RocksCentralStore {
    fn patch_findings<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: Option<&'a SiteId>,
    ) -> StoreFuture<'a, Vec<PatchFindingsRow>> {
        let (st, t, s) = (self.clone(), tenant.to_owned(), site_id.cloned());
        blocking(move || st.patch_findings(&t, s.as_deref()))
    }

    fn device_patch_findings<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, Option<PatchFindingsRow>> {
        let (st, t, s, d) = (
            self.clone(),
            tenant.to_owned(),
            site_id.to_owned(),
            device.to_owned(),
        );
        blocking(move || st.device_patch_findings(&t, &s, &d))
    }

    fn cve_exposure<'a>(
        &'a self,
        tenant: &'a TenantId,
        cve: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<CveExposureRow>> {
        let (st, t, c) = (self.clone(), tenant.to_owned(), cve.to_owned());
        blocking(move || st.cve_exposure(&t, &c, limit))
    }

    fn cve_site_exposure<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: Option<&'a SiteId>,
    ) -> StoreFuture<'a, Vec<CveSiteExposure>> {
        let (st, t, s) = (self.clone(), tenant.to_owned(), site_id.cloned());
        blocking(move || st.cve_site_exposure(&t, s.as_deref()))
    }

    fn patch_compliance<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: Option<&'a SiteId>,
    ) -> StoreFuture<'a, Vec<PatchComplianceRow>> {
        let (st, t, s) = (self.clone(), tenant.to_owned(), site_id.cloned());
        blocking(move || st.patch_compliance(&t, s.as_deref()))
    }

    fn device_patch_compliance<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, Option<PatchComplianceRow>> {
        let (st, t, s, d) = (
            self.clone(),
            tenant.to_owned(),
            site_id.to_owned(),
            device.to_owned(),
        );
        blocking(move || st.device_patch_compliance(&t, &s, &d))
    }

    fn devices<'a>(
        &'a self,
        tenant: &'a TenantId,
        filter: &'a DeviceFilter,
    ) -> StoreFuture<'a, Page<DeviceRow>> {
        let (st, t, f) = (self.clone(), tenant.to_owned(), filter.clone());
        blocking(move || st.devices(&t, &f))
    }

    fn device<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, Option<DeviceRow>> {
        let (st, t, s, d) = (
            self.clone(),
            tenant.to_owned(),
            site_id.to_owned(),
            device.to_owned(),
        );
        blocking(move || st.device(&t, &s, &d))
    }

    fn rollups<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a RollupQuery,
    ) -> StoreFuture<'a, Vec<(u64, RollupRow)>> {
        let (st, t, q) = (self.clone(), tenant.to_owned(), q.clone());
        blocking(move || st.rollups(&t, &q))
    }

    fn alerts<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: Option<&'a SiteId>,
    ) -> StoreFuture<'a, Vec<AlertRow>> {
        let (st, t, s) = (self.clone(), tenant.to_owned(), site_id.cloned());
        blocking(move || st.alerts(&t, s.as_deref()))
    }

    fn alert_page<'a>(
        &'a self,
        tenant: &'a TenantId,
        filter: &'a AlertFilter,
    ) -> StoreFuture<'a, AlertPage> {
        let (st, t, f) = (self.clone(), tenant.to_owned(), filter.clone());
        blocking(move || st.alert_page(&t, &f))
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
        let (st, t, s, by, comment) = (
            self.clone(),
            tenant.to_owned(),
            site_id.to_owned(),
            by.to_owned(),
            comment.to_owned(),
        );
        blocking(move || st.ack_alert(&t, &s, alert_id, &by, &comment, now_ms))
    }

    fn alert_history<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        alert_id: u64,
    ) -> StoreFuture<'a, Vec<AlertHistoryEntry>> {
        let (st, t, s) = (self.clone(), tenant.to_owned(), site_id.to_owned());
        blocking(move || st.alert_history(&t, &s, alert_id))
    }

    fn status_history<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(u64, DeviceStatus)>> {
        let (st, t, s, d) = (
            self.clone(),
            tenant.to_owned(),
            site_id.to_owned(),
            device.to_owned(),
        );
        blocking(move || st.status_history(&t, &s, &d, limit))
    }

    /// Answered from memory (the fleet index), on the calling task: a
    /// search over 100,000 devices takes a few milliseconds of CPU.
    fn search_devices<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a DeviceSearch,
    ) -> StoreFuture<'a, SearchPage> {
        let r = RocksCentralStore::search_devices(self, tenant, q);
        Box::pin(async move { r })
    }

    fn device_tags<'a>(
        &'a self,
        tenant: &'a TenantId,
        customers_allowed: &'a [CustomerId],
    ) -> StoreFuture<'a, Vec<String>> {
        let r = self.index().tags(tenant, customers_allowed);
        Box::pin(async move { Ok(r) })
    }

    fn device_facts<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, DeviceFacts> {
        let (st, t, s, d) = (
            self.clone(),
            tenant.to_owned(),
            site_id.to_owned(),
            device.to_owned(),
        );
        blocking(move || st.device_facts(&t, &s, &d))
    }

    fn device_facts_many<'a>(
        &'a self,
        tenant: &'a TenantId,
        devices: &'a [(SiteId, String)],
    ) -> StoreFuture<'a, Vec<DeviceFacts>> {
        let (st, t, d) = (self.clone(), tenant.to_owned(), devices.to_vec());
        blocking(move || st.device_facts_many(&t, &d))
    }

    fn fleet_counts<'a>(
        &'a self,
        tenant: &'a TenantId,
        customers_allowed: &'a [CustomerId],
    ) -> StoreFuture<'a, FleetCounts> {
        let r = RocksCentralStore::fleet_counts(self, tenant, customers_allowed);
        Box::pin(async move { Ok(r) })
    }

    fn hostnames<'a>(
        &'a self,
        tenant: &'a TenantId,
        devices: &'a [(SiteId, String)],
    ) -> StoreFuture<'a, Vec<Option<String>>> {
        let ix = self.index();
        let r = devices
            .iter()
            .map(|(s, d)| ix.hostname(tenant, s, d))
            .collect();
        Box::pin(async move { Ok(r) })
    }

    fn series_rollups<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a SeriesQuery,
    ) -> StoreFuture<'a, Vec<Vec<(u64, Rollup)>>> {
        let (st, t, q) = (self.clone(), tenant.to_owned(), q.clone());
        blocking(move || st.series_rollups(&t, &q))
    }
}

impl AuthStore for RocksCentralStore {
    fn create_site<'a>(
        &'a self,
        site: &'a SiteRecord,
        join_token_hash: &'a [u8; 32],
        token: &'a JoinTokenRecord,
    ) -> StoreFuture<'a, ()> {
        let (st, site, hash, token) = (self.clone(), site.clone(), *join_token_hash, token.clone());
        blocking(move || st.create_site(&site, &hash, &token))
    }

    fn take_join_token<'a>(
        &'a self,
        token_hash: &'a [u8; 32],
    ) -> StoreFuture<'a, Option<JoinTokenRecord>> {
        let (st, hash) = (self.clone(), *token_hash);
        blocking(move || st.take_join_token(&hash))
    }

    fn site<'a>(
        &'a self,
        tenant: &'a TenantId,
        site_id: &'a SiteId,
    ) -> StoreFuture<'a, Option<SiteRecord>> {
        let (st, t, s) = (self.clone(), tenant.to_owned(), site_id.to_owned());
        blocking(move || st.site(&t, &s))
    }

    fn sites<'a>(&'a self, tenant: &'a TenantId) -> StoreFuture<'a, Vec<SiteRecord>> {
        let (st, t) = (self.clone(), tenant.to_owned());
        blocking(move || st.sites(&t))
    }

    fn update_site<'a>(&'a self, site: &'a SiteRecord) -> StoreFuture<'a, ()> {
        let (st, site) = (self.clone(), site.clone());
        blocking(move || st.update_site(&site))
    }

    fn put_api_token<'a>(
        &'a self,
        hash: &'a [u8; 32],
        rec: &'a ApiTokenRecord,
    ) -> StoreFuture<'a, ()> {
        let (st, hash, rec) = (self.clone(), *hash, rec.clone());
        blocking(move || st.put_api_token(&hash, &rec))
    }

    fn api_token<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, Option<ApiTokenRecord>> {
        let (st, hash) = (self.clone(), *hash);
        blocking(move || st.api_token(&hash))
    }

    fn api_tokens<'a>(&'a self, tenant: &'a TenantId) -> StoreFuture<'a, Vec<ApiTokenRecord>> {
        let (st, t) = (self.clone(), tenant.to_owned());
        blocking(move || st.api_tokens(&t))
    }

    fn revoke_api_token<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: &'a str,
        by: &'a str,
        now_ms: u64,
        audit: &'a AuditRow,
    ) -> StoreFuture<'a, Option<(ApiTokenRecord, bool)>> {
        let (st, t, id, by, audit) = (
            self.clone(),
            tenant.to_owned(),
            id.to_owned(),
            by.to_owned(),
            audit.clone(),
        );
        blocking(move || st.revoke_api_token(&t, &id, &by, now_ms, &audit))
    }

    fn remove_user<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a str,
        audit: &'a AuditRow,
    ) -> StoreFuture<'a, Option<u64>> {
        let (st, t, n, audit) = (
            self.clone(),
            tenant.to_owned(),
            name.to_owned(),
            audit.clone(),
        );
        blocking(move || st.remove_user(&t, &n, &audit, crate::now_ms()))
    }

    fn put_user<'a>(&'a self, user: &'a UserRecord) -> StoreFuture<'a, u64> {
        let (st, user) = (self.clone(), user.clone());
        blocking(move || st.put_user(&user, crate::now_ms()))
    }

    fn create_user<'a>(&'a self, user: &'a UserRecord) -> StoreFuture<'a, ()> {
        let (st, user) = (self.clone(), user.clone());
        blocking(move || st.create_user(&user))
    }

    fn set_password<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a str,
        password_hash: &'a str,
    ) -> StoreFuture<'a, Option<u64>> {
        let (st, t, n, h) = (
            self.clone(),
            tenant.to_owned(),
            name.to_owned(),
            password_hash.to_owned(),
        );
        blocking(move || st.set_password(&t, &n, &h, crate::now_ms()))
    }

    fn user<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a str,
    ) -> StoreFuture<'a, Option<UserRecord>> {
        let (st, t, n) = (self.clone(), tenant.to_owned(), name.to_owned());
        blocking(move || st.user(&t, &n))
    }

    fn put_session<'a>(&'a self, hash: &'a [u8; 32], s: &'a SessionRecord) -> StoreFuture<'a, ()> {
        let (st, hash, s) = (self.clone(), *hash, s.clone());
        blocking(move || st.put_session(&hash, &s))
    }

    fn session<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, Option<SessionRecord>> {
        let (st, hash) = (self.clone(), *hash);
        blocking(move || st.session(&hash))
    }

    fn delete_session<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, ()> {
        let (st, hash) = (self.clone(), *hash);
        blocking(move || st.delete_session(&hash))
    }
}

// ------------------------------------------------------------- deployments

impl RocksCentralStore {
    fn order_key(tenant: &str, id: &str) -> Vec<u8> {
        key(&[tenant.as_bytes(), b"o", id.as_bytes()])
    }

    fn delivery_key(tenant: &str, site: &str, order: &str) -> Vec<u8> {
        key(&[tenant.as_bytes(), b"d", site.as_bytes(), order.as_bytes()])
    }

    fn progress_key(tenant: &str, site: &str, dep: &str) -> Vec<u8> {
        key(&[tenant.as_bytes(), b"p", site.as_bytes(), dep.as_bytes()])
    }

    fn list_key(tenant: &str, c: &crate::deploy::DeploymentCursor) -> Vec<u8> {
        key(&[
            tenant.as_bytes(),
            b"L",
            &(u64::MAX - c.created_ms).to_be_bytes(),
            c.id.as_bytes(),
            c.site.as_bytes(),
        ])
    }

    fn deployment_order_key(tenant: &str, dep: &str, order: &str) -> Vec<u8> {
        key(&[tenant.as_bytes(), b"e", dep.as_bytes(), order.as_bytes()])
    }

    fn deployment_site_key(tenant: &str, dep: &str, site: &str) -> Vec<u8> {
        key(&[tenant.as_bytes(), b"q", dep.as_bytes(), site.as_bytes()])
    }

    /// The derived keys of an order: its deployment's, and the list's
    /// line of a create order.
    fn index_order(&self, wb: &mut WriteBatch, o: &crate::deploy::OrderRecord) -> Result<()> {
        if let Some(dep) = &o.deployment {
            self.put(
                wb,
                CF_DEPLOY,
                &Self::deployment_order_key(&o.tenant, dep, &o.id),
                &(),
            )?;
        }
        if let Some(e) = crate::deploy::DeploymentEntry::of_order(o) {
            self.put(wb, CF_DEPLOY, &Self::list_key(&o.tenant, &e.cursor()), &e)?;
        }
        Ok(())
    }

    /// The derived keys of a progress report (replacing `held`'s list
    /// line if it moved).
    fn index_progress(
        &self,
        wb: &mut WriteBatch,
        r: &crate::deploy::SiteDeploymentRecord,
        held: Option<&crate::deploy::SiteDeploymentRecord>,
    ) -> Result<()> {
        self.put(
            wb,
            CF_DEPLOY,
            &Self::deployment_site_key(&r.tenant, &r.deployment, &r.site),
            &(),
        )?;
        let new = crate::deploy::DeploymentEntry::of_site(r);
        if let Some(old) = held.and_then(crate::deploy::DeploymentEntry::of_site)
            && new.as_ref().is_none_or(|n| n.cursor() != old.cursor())
        {
            wb.delete_cf(
                self.cf(CF_DEPLOY)?,
                Self::list_key(&r.tenant, &old.cursor()),
            );
        }
        if let Some(e) = new {
            self.put(wb, CF_DEPLOY, &Self::list_key(&r.tenant, &e.cursor()), &e)?;
        }
        Ok(())
    }

    /// Writes the derived keys of every order and report once (a store
    /// written before they existed), then [`DEPLOY_INDEX_MARKER`].
    fn ensure_deploy_index(&self) -> Result<()> {
        let cf = self.cf(CF_DEPLOY)?;
        if self
            .db
            .get_cf(cf, DEPLOY_INDEX_MARKER)
            .map_err(be)?
            .is_some()
        {
            return Ok(());
        }
        let mut wb = WriteBatch::default();
        let (mut orders, mut reports) = (0u64, 0u64);
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(be)?;
            let mut parts = k.splitn(3, |&b| b == 0);
            match (parts.next(), parts.next()) {
                (Some(_), Some(b"o")) => {
                    self.index_order(&mut wb, &codec::decode(&v)?)?;
                    orders += 1;
                }
                (Some(_), Some(b"p")) => {
                    self.index_progress(&mut wb, &codec::decode(&v)?, None)?;
                    reports += 1;
                }
                _ => {}
            }
        }
        wb.put_cf(cf, DEPLOY_INDEX_MARKER, b"");
        self.write(wb)?;
        if orders + reports > 0 {
            tracing::info!(orders, reports, "deployment list and keys built");
        }
        Ok(())
    }

    /// A device's approval decisions (protocol 9), in the deployment
    /// family under `a`.
    fn decisions_key(tenant: &str, site: &str, device: &str) -> Vec<u8> {
        key(&[tenant.as_bytes(), b"a", site.as_bytes(), device.as_bytes()])
    }

    pub fn put_decisions(&self, recs: &[crate::deploy::DecisionsRecord]) -> Result<usize> {
        let _g = self.commands_guard();
        let mut n = 0;
        for r in recs {
            let k = Self::decisions_key(&r.tenant, &r.site, &r.decisions.device);
            let held = self.get::<crate::deploy::DecisionsRecord>(CF_DEPLOY, &k)?;
            if crate::deploy::newer_decisions(held.as_ref(), r) {
                self.put_one(CF_DEPLOY, &k, r)?;
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn decisions(
        &self,
        tenant: &str,
        site: &str,
        device: &str,
    ) -> Result<Option<crate::deploy::DecisionsRecord>> {
        self.get(CF_DEPLOY, &Self::decisions_key(tenant, site, device))
    }

    pub fn create_order(
        &self,
        o: &crate::deploy::OrderRecord,
        deliveries: &[crate::deploy::Delivery],
        audit: &AuditRow,
    ) -> Result<()> {
        let _g = self.commands_guard();
        let k = Self::order_key(&o.tenant, &o.id);
        if self
            .db
            .get_cf(self.cf(CF_DEPLOY)?, &k)
            .map_err(be)?
            .is_some()
        {
            return Err(CentralStoreError::Conflict(format!(
                "order {} exists already",
                o.id
            )));
        }
        let mut wb = WriteBatch::default();
        self.put(&mut wb, CF_DEPLOY, &k, o)?;
        self.index_order(&mut wb, o)?;
        for d in deliveries {
            self.put(
                &mut wb,
                CF_DEPLOY,
                &Self::delivery_key(&d.tenant, &d.site, &d.order),
                d,
            )?;
        }
        self.put_audit(&mut wb, audit)?;
        self.write(wb)
    }

    pub fn order(&self, tenant: &str, id: &str) -> Result<Option<crate::deploy::OrderRecord>> {
        self.get(CF_DEPLOY, &Self::order_key(tenant, id))
    }

    pub fn orders(&self, tenant: &str) -> Result<Vec<crate::deploy::OrderRecord>> {
        let p = prefix(&[tenant.as_bytes(), b"o"]);
        let mut v: Vec<crate::deploy::OrderRecord> = Vec::new();
        self.scan(CF_DEPLOY, &p, &p, |_, o| {
            v.push(o);
            true
        })?;
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(v)
    }

    pub fn deliveries(&self, tenant: &str) -> Result<Vec<crate::deploy::Delivery>> {
        let p = prefix(&[tenant.as_bytes(), b"d"]);
        let mut v = Vec::new();
        self.scan(CF_DEPLOY, &p, &p, |_, d| {
            v.push(d);
            true
        })?;
        Ok(v)
    }

    pub fn open_orders(&self, tenant: &str, site: &str) -> Result<Vec<crate::deploy::OrderRecord>> {
        let p = prefix(&[tenant.as_bytes(), b"d", site.as_bytes()]);
        let mut ids = Vec::new();
        self.scan::<crate::deploy::Delivery>(CF_DEPLOY, &p, &p, |_, d| {
            if d.is_open() {
                ids.push(d.order);
            }
            true
        })?;
        let mut v = Vec::new();
        for id in ids {
            if let Some(o) = self.order(tenant, &id)? {
                v.push(o);
            }
        }
        Ok(crate::deploy::opening_order(v))
    }

    pub fn acknowledge_order(
        &self,
        tenant: &str,
        site: &str,
        ack: &outpost_uplink::deploy_link::DeployAck,
        now_ms: u64,
    ) -> Result<Option<crate::deploy::Delivery>> {
        let _g = self.commands_guard();
        let k = Self::delivery_key(tenant, site, &ack.id);
        let Some(d) = self.get::<crate::deploy::Delivery>(CF_DEPLOY, &k)? else {
            return Ok(None);
        };
        let Some(n) = crate::deploy::acknowledge(&d, ack, now_ms) else {
            return Ok(None);
        };
        self.put_one(CF_DEPLOY, &k, &n)?;
        Ok(Some(n))
    }

    pub fn put_site_deployment(&self, r: &crate::deploy::SiteDeploymentRecord) -> Result<bool> {
        let _g = self.commands_guard();
        let k = Self::progress_key(&r.tenant, &r.site, &r.deployment);
        let held = self.get::<crate::deploy::SiteDeploymentRecord>(CF_DEPLOY, &k)?;
        if !crate::deploy::newer(held.as_ref(), r) {
            return Ok(false);
        }
        let mut wb = WriteBatch::default();
        self.put(&mut wb, CF_DEPLOY, &k, r)?;
        self.index_progress(&mut wb, r, held.as_ref())?;
        self.write(wb)?;
        Ok(true)
    }

    pub fn site_deployments(
        &self,
        tenant: &str,
    ) -> Result<Vec<crate::deploy::SiteDeploymentRecord>> {
        let p = prefix(&[tenant.as_bytes(), b"p"]);
        let mut v = Vec::new();
        self.scan(CF_DEPLOY, &p, &p, |_, r| {
            v.push(r);
            true
        })?;
        Ok(v)
    }

    /// One page of the list's own keys (see
    /// [`crate::store::DeployStore::deployment_page`]): visible lines are
    /// counted up to the cap, the page is the first `limit` after the
    /// cursor.
    pub fn deployment_page(
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
        let p = prefix(&[tenant.as_bytes(), b"L"]);
        let mut page = crate::store::DeploymentPage::default();
        let mut more = false;
        self.scan::<crate::deploy::DeploymentEntry>(CF_DEPLOY, &p, &p, |_, e| {
            if !e.visible_to(&q.customers_allowed) {
                return true;
            }
            if page.total < cap {
                page.total += 1;
            } else {
                page.total_more = true;
            }
            if after.as_ref().is_none_or(|a| a.before(&e)) {
                if page.items.len() < limit {
                    page.items.push(e);
                } else {
                    more = true;
                }
            }
            // Done once the page has one more and the count its cap.
            !(more && page.total_more)
        })?;
        if more {
            page.next = page.items.last().map(|e| e.cursor().encode());
        }
        Ok(page)
    }

    pub fn orders_by_id(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<crate::deploy::OrderRecord>> {
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| Self::order_key(tenant, id)).collect();
        Ok(self
            .multi_get::<crate::deploy::OrderRecord>(CF_DEPLOY, &keys)?
            .into_iter()
            .flatten()
            .collect())
    }

    pub fn deployment_orders(
        &self,
        tenant: &str,
        dep: &str,
    ) -> Result<Vec<crate::deploy::OrderRecord>> {
        let p = prefix(&[tenant.as_bytes(), b"e", dep.as_bytes()]);
        let mut ids = Vec::new();
        self.scan::<()>(CF_DEPLOY, &p, &p, |k, ()| {
            ids.push(String::from_utf8_lossy(&k[p.len()..]).into_owned());
            true
        })?;
        let mut v = self.orders_by_id(tenant, &ids)?;
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(v)
    }

    pub fn order_deliveries(
        &self,
        tenant: &str,
        orders: &[crate::deploy::OrderRecord],
    ) -> Result<Vec<crate::deploy::Delivery>> {
        let keys: Vec<Vec<u8>> = orders
            .iter()
            .flat_map(|o| o.sites.iter().map(|s| Self::delivery_key(tenant, s, &o.id)))
            .collect();
        Ok(self
            .multi_get::<crate::deploy::Delivery>(CF_DEPLOY, &keys)?
            .into_iter()
            .flatten()
            .collect())
    }

    pub fn deployment_progress(
        &self,
        tenant: &str,
        deps: &[String],
    ) -> Result<Vec<crate::deploy::SiteDeploymentRecord>> {
        let mut deps: Vec<&String> = deps.iter().collect();
        deps.sort();
        deps.dedup();
        let mut keys = Vec::new();
        for dep in deps {
            let p = prefix(&[tenant.as_bytes(), b"q", dep.as_bytes()]);
            self.scan::<()>(CF_DEPLOY, &p, &p, |k, ()| {
                let site = String::from_utf8_lossy(&k[p.len()..]).into_owned();
                keys.push(Self::progress_key(tenant, &site, dep));
                true
            })?;
        }
        Ok(self
            .multi_get::<crate::deploy::SiteDeploymentRecord>(CF_DEPLOY, &keys)?
            .into_iter()
            .flatten()
            .collect())
    }
}

impl crate::store::DeployStore for RocksCentralStore {
    fn create_order<'a>(
        &'a self,
        order: &'a crate::deploy::OrderRecord,
        deliveries: &'a [crate::deploy::Delivery],
        audit: &'a AuditRow,
    ) -> StoreFuture<'a, ()> {
        let (st, o, d, a) = (
            self.clone(),
            order.clone(),
            deliveries.to_vec(),
            audit.clone(),
        );
        blocking(move || st.create_order(&o, &d, &a))
    }

    fn order<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: &'a str,
    ) -> StoreFuture<'a, Option<crate::deploy::OrderRecord>> {
        let (st, t, id) = (self.clone(), tenant.to_owned(), id.to_owned());
        blocking(move || st.order(&t, &id))
    }

    fn orders<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> StoreFuture<'a, Vec<crate::deploy::OrderRecord>> {
        let (st, t) = (self.clone(), tenant.to_owned());
        blocking(move || st.orders(&t))
    }

    fn deliveries<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> StoreFuture<'a, Vec<crate::deploy::Delivery>> {
        let (st, t) = (self.clone(), tenant.to_owned());
        blocking(move || st.deliveries(&t))
    }

    fn open_orders<'a>(
        &'a self,
        tenant: &'a TenantId,
        site: &'a SiteId,
    ) -> StoreFuture<'a, Vec<crate::deploy::OrderRecord>> {
        let (st, t, s) = (self.clone(), tenant.to_owned(), site.to_owned());
        blocking(move || st.open_orders(&t, &s))
    }

    fn acknowledge_order<'a>(
        &'a self,
        tenant: &'a TenantId,
        site: &'a SiteId,
        ack: &'a outpost_uplink::deploy_link::DeployAck,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<crate::deploy::Delivery>> {
        let (st, t, s, a) = (
            self.clone(),
            tenant.to_owned(),
            site.to_owned(),
            ack.clone(),
        );
        blocking(move || st.acknowledge_order(&t, &s, &a, now_ms))
    }

    fn put_site_deployment<'a>(
        &'a self,
        rec: &'a crate::deploy::SiteDeploymentRecord,
    ) -> StoreFuture<'a, bool> {
        let (st, r) = (self.clone(), rec.clone());
        blocking(move || st.put_site_deployment(&r))
    }

    fn site_deployments<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> StoreFuture<'a, Vec<crate::deploy::SiteDeploymentRecord>> {
        let (st, t) = (self.clone(), tenant.to_owned());
        blocking(move || st.site_deployments(&t))
    }

    fn deployment_page<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a crate::store::DeploymentQuery,
    ) -> StoreFuture<'a, crate::store::DeploymentPage> {
        let (st, t, q) = (self.clone(), tenant.to_owned(), q.clone());
        blocking(move || st.deployment_page(&t, &q))
    }

    fn orders_by_id<'a>(
        &'a self,
        tenant: &'a TenantId,
        ids: &'a [String],
    ) -> StoreFuture<'a, Vec<crate::deploy::OrderRecord>> {
        let (st, t, ids) = (self.clone(), tenant.to_owned(), ids.to_vec());
        blocking(move || st.orders_by_id(&t, &ids))
    }

    fn deployment_orders<'a>(
        &'a self,
        tenant: &'a TenantId,
        deployment: &'a str,
    ) -> StoreFuture<'a, Vec<crate::deploy::OrderRecord>> {
        let (st, t, d) = (self.clone(), tenant.to_owned(), deployment.to_owned());
        blocking(move || st.deployment_orders(&t, &d))
    }

    fn order_deliveries<'a>(
        &'a self,
        tenant: &'a TenantId,
        orders: &'a [crate::deploy::OrderRecord],
    ) -> StoreFuture<'a, Vec<crate::deploy::Delivery>> {
        let (st, t, o) = (self.clone(), tenant.to_owned(), orders.to_vec());
        blocking(move || st.order_deliveries(&t, &o))
    }

    fn deployment_progress<'a>(
        &'a self,
        tenant: &'a TenantId,
        deployments: &'a [String],
    ) -> StoreFuture<'a, Vec<crate::deploy::SiteDeploymentRecord>> {
        let (st, t, d) = (self.clone(), tenant.to_owned(), deployments.to_vec());
        blocking(move || st.deployment_progress(&t, &d))
    }

    fn put_decisions<'a>(
        &'a self,
        recs: &'a [crate::deploy::DecisionsRecord],
    ) -> StoreFuture<'a, usize> {
        let (st, r) = (self.clone(), recs.to_vec());
        blocking(move || st.put_decisions(&r))
    }

    fn decisions<'a>(
        &'a self,
        tenant: &'a TenantId,
        site: &'a SiteId,
        device: &'a str,
    ) -> StoreFuture<'a, Option<crate::deploy::DecisionsRecord>> {
        let (st, t, s, d) = (
            self.clone(),
            tenant.to_owned(),
            site.to_string(),
            device.to_string(),
        );
        blocking(move || st.decisions(&t, &s, &d))
    }
}

// ------------------------------------------------------------------ files

impl RocksCentralStore {
    /// `0xff \0 tenant \0 transfer_hex` in [`CF_COMMANDS`] (0xff never
    /// opens a tenant's UTF-8 name, so tenant scans never meet it).
    fn file_key(tenant: &str, id: outpost_proto::ids::TransferId) -> Vec<u8> {
        key(&[&[0xff], tenant.as_bytes(), id.to_string().as_bytes()])
    }

    pub fn put_file(&self, rec: &crate::files::CentralFile) -> Result<()> {
        self.put_one(CF_COMMANDS, &Self::file_key(&rec.tenant, rec.id), rec)
    }

    pub fn file(
        &self,
        tenant: &str,
        id: outpost_proto::ids::TransferId,
    ) -> Result<Option<crate::files::CentralFile>> {
        self.get(CF_COMMANDS, &Self::file_key(tenant, id))
    }

    /// One tenant's transfers (a scan of its key prefix only), newest
    /// first.
    pub fn files(
        &self,
        tenant: &str,
        f: &crate::store::FileFilter,
    ) -> Result<Vec<crate::files::CentralFile>> {
        let p = prefix(&[&[0xff], tenant.as_bytes()]);
        let mut v = Vec::new();
        self.scan::<crate::files::CentralFile>(CF_COMMANDS, &p, &p, |_, r| {
            if r.tenant == tenant && f.matches(&r) {
                v.push(r);
            }
            true
        })?;
        v.sort_by(|a, b| {
            b.created_ms
                .cmp(&a.created_ms)
                .then(b.id.to_string().cmp(&a.id.to_string()))
        });
        v.truncate(f.limit.max(1));
        Ok(v)
    }

    pub fn all_files(&self) -> Result<Vec<crate::files::CentralFile>> {
        let p = [0xffu8, 0];
        let mut v = Vec::new();
        self.scan(CF_COMMANDS, &p, &p, |_, f| {
            v.push(f);
            true
        })?;
        Ok(v)
    }

    pub fn delete_file(&self, tenant: &str, id: outpost_proto::ids::TransferId) -> Result<()> {
        let mut wb = WriteBatch::default();
        wb.delete_cf(self.cf(CF_COMMANDS)?, Self::file_key(tenant, id));
        self.write(wb)
    }
}

impl crate::store::FileStore for RocksCentralStore {
    fn put_file<'a>(&'a self, rec: &'a crate::files::CentralFile) -> StoreFuture<'a, ()> {
        let (st, r) = (self.clone(), rec.clone());
        blocking(move || st.put_file(&r))
    }

    fn file<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::TransferId,
    ) -> StoreFuture<'a, Option<crate::files::CentralFile>> {
        let (st, t) = (self.clone(), tenant.to_string());
        blocking(move || st.file(&t, id))
    }

    fn files<'a>(
        &'a self,
        tenant: &'a TenantId,
        f: &'a crate::store::FileFilter,
    ) -> StoreFuture<'a, Vec<crate::files::CentralFile>> {
        let (st, t, f) = (self.clone(), tenant.to_string(), f.clone());
        blocking(move || st.files(&t, &f))
    }

    fn all_files(&self) -> StoreFuture<'_, Vec<crate::files::CentralFile>> {
        let st = self.clone();
        blocking(move || st.all_files())
    }

    fn delete_file<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: outpost_proto::ids::TransferId,
    ) -> StoreFuture<'a, ()> {
        let (st, t) = (self.clone(), tenant.to_string());
        blocking(move || st.delete_file(&t, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_batch;

    fn site(tenant: &str, id: &str) -> SiteRecord {
        SiteRecord::new(tenant.into(), "dental".into(), id.into(), "main".into(), 1)
    }

    fn tok(t: &str, s: &str) -> JoinTokenRecord {
        JoinTokenRecord {
            tenant: t.into(),
            site_id: s.into(),
            expires_ms: u64::MAX,
        }
    }

    /// (bucket, min) of `series`, whose label is "/" for disk series.
    fn query(st: &RocksCentralStore, device: &str, series: &str, limit: usize) -> Vec<(u64, f64)> {
        st.rollups(
            "msp",
            &RollupQuery {
                site_id: "s-1".into(),
                device: device.into(),
                series: series.into(),
                label: if series.starts_with("disk") { "/" } else { "" }.into(),
                from_ms: 0,
                to_ms: u64::MAX,
                limit,
            },
        )
        .unwrap()
        .into_iter()
        .map(|(b, r)| (b, r.rollup.min))
        .collect()
    }

    /// Rows hold every series of a device and bucket, but each series keeps
    /// its own computation time: a recomputation of one series replaces
    /// that series only, an older computation replaces nothing, and the
    /// per-series query finds each series in its buckets.
    #[test]
    fn bucket_rows_merge_series_by_computation_time() {
        use crate::testing::rollup;
        let dir = tempfile::tempdir().unwrap();
        let st = RocksCentralStore::open(dir.path()).unwrap();
        st.create_site(&site("msp", "s-1"), &[1; 32], &tok("msp", "s-1"))
            .unwrap();
        let mut b = sample_batch(1);
        let first = b.rollups[0].clone();
        let mut second = first.clone();
        second.bucket_start_ms += 300_000;
        second.series.truncate(1); // cpu only
        b.rollups = vec![first.clone(), second.clone()];
        assert_eq!(
            st.apply_batch("msp", "s-1", &b, 1).unwrap(),
            ApplyOutcome::Applied {
                rollups_new: 3,
                rollups_replaced: 0,
                tenant_mismatches_new: 0,
                customer_mismatches: 0,
                device_facts_ignored: 0,
                gaps_expired: 0
            }
        );
        let dev = first.device.to_string();
        let (b0, b1) = (first.bucket_start_ms, second.bucket_start_ms);
        assert_eq!(query(&st, &dev, "cpu", 10), vec![(b0, 12.25), (b1, 12.25)]);
        assert_eq!(query(&st, &dev, "cpu", 1), vec![(b0, 12.25)], "limit");
        assert_eq!(query(&st, &dev, "disk_used_percent", 10), vec![(b0, 71.5)]);
        assert!(query(&st, "99", "cpu", 10).is_empty(), "other device");

        // Bucket b0 recomputed for cpu only (late samples), then a stale
        // computation of both series arrives out of order.
        let mut recomputed = first.clone();
        recomputed.computed_ms += 60_000;
        recomputed.series.truncate(1);
        recomputed.series[0].rollup = rollup(50.0);
        let mut stale = first.clone();
        stale.computed_ms -= 1;
        stale.series[0].rollup = rollup(1.0);
        stale.series[1].rollup = rollup(2.0);
        let mut b2 = sample_batch(2);
        b2.rollups = vec![recomputed, stale];
        assert_eq!(
            st.apply_batch("msp", "s-1", &b2, 2).unwrap(),
            ApplyOutcome::Applied {
                rollups_new: 0,
                rollups_replaced: 1,
                tenant_mismatches_new: 0,
                customer_mismatches: 0,
                device_facts_ignored: 0,
                gaps_expired: 0
            }
        );
        assert_eq!(query(&st, &dev, "cpu", 10), vec![(b0, 50.0), (b1, 12.25)]);
        assert_eq!(query(&st, &dev, "disk_used_percent", 10), vec![(b0, 71.5)]);
        let d = st.device("msp", "s-1", &dev).unwrap().unwrap();
        assert_eq!(d.rollups_stored, 3);
        let cpu = d.latest.iter().find(|l| l.series == "cpu").unwrap();
        assert_eq!((cpu.bucket_start_ms, cpu.rollup.min), (b1, 12.25));
    }

    /// A database from the first (per-series) layout opens: the old column
    /// family is dropped, the store works.
    #[test]
    fn the_pre_release_rollup_layout_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut o = Options::default();
            o.create_if_missing(true);
            o.create_missing_column_families(true);
            let db = DB::open_cf(&o, dir.path(), [CF_SITES, CF_LEGACY_ROLLUPS]).unwrap();
            db.put_cf(db.cf_handle(CF_LEGACY_ROLLUPS).unwrap(), b"k", b"v")
                .unwrap();
        }
        let st = RocksCentralStore::open(dir.path()).unwrap();
        st.create_site(&site("msp", "s-1"), &[1; 32], &tok("msp", "s-1"))
            .unwrap();
        assert!(st.db.cf_handle(CF_LEGACY_ROLLUPS).is_none());
        drop(st);
        let cfs = DB::list_cf(&Options::default(), dir.path()).unwrap();
        assert!(!cfs.iter().any(|c| c == CF_LEGACY_ROLLUPS), "{cfs:?}");
        RocksCentralStore::open(dir.path()).unwrap();
    }

    /// Two threads per site race to apply the same 20 batches, two sites at
    /// once: each batch of each site applies exactly once.
    /// Behind one `Arc<dyn CentralStore>` (what `serve` holds), the async
    /// traits reach the same rows as the blocking API, whose work they run
    /// on the blocking pool.
    #[tokio::test]
    async fn the_async_store_traits_work_behind_one_dyn_store() {
        use crate::store::CentralStore;
        let dir = tempfile::tempdir().unwrap();
        let st: std::sync::Arc<dyn CentralStore> =
            std::sync::Arc::new(RocksCentralStore::open(dir.path()).unwrap());
        st.create_site(&site("msp", "s-1"), &[1; 32], &tok("msp", "s-1"))
            .await
            .unwrap();
        assert!(st.take_join_token(&[1; 32]).await.unwrap().is_some());
        assert!(st.take_join_token(&[1; 32]).await.unwrap().is_none());
        assert!(matches!(
            st.apply_batch(&"msp".into(), &"s-1".into(), sample_batch(1), 10)
                .await
                .unwrap(),
            ApplyOutcome::Applied { rollups_new: 2, .. }
        ));
        assert_eq!(
            st.apply_batch(&"msp".into(), &"s-1".into(), sample_batch(1), 11)
                .await
                .unwrap(),
            ApplyOutcome::Duplicate
        );
        let filter = DeviceFilter {
            limit: 10,
            ..Default::default()
        };
        let page = st.devices(&"msp".into(), &filter).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(
            st.ack_alert(&"msp".into(), &"s-1".into(), 9, "alice", "seen", 12)
                .await
                .unwrap()
                .is_some()
        );
        let alerts = st.alerts(&"msp".into(), Some(&"s-1".into())).await.unwrap();
        assert_eq!(alerts[0].acked_by.as_deref(), Some("alice"));
        // Each part is usable on its own.
        let auth: &dyn AuthStore = st.as_ref();
        assert_eq!(
            auth.sites(&"msp".into()).await.unwrap()[0].batches_applied,
            1
        );
    }

    /// Creating a user that exists is a conflict (it used to replace it);
    /// a password change replaces the hash and ends that user's sessions,
    /// not others', in one write (expired sessions met on the way go too).
    /// A device row stored with a customer other than its site's (by a
    /// central that believed the batch) reads as the site's customer, in
    /// the list (and its customer filters) and in the detail.
    #[test]
    fn device_reads_carry_their_sites_customer() {
        let dir = tempfile::tempdir().unwrap();
        let st = RocksCentralStore::open(dir.path()).unwrap();
        st.create_site(&site("msp", "s-1"), &[1; 32], &tok("msp", "s-1"))
            .unwrap();
        st.apply_batch("msp", "s-1", &sample_batch(1), 1).unwrap();
        let dev = "000000000000002a";
        let k = key(&[b"msp", b"s-1", dev.as_bytes()]);
        let mut row: DeviceRow = st.get(CF_DEVICES, &k).unwrap().unwrap();
        row.customer = "vet".into();
        st.put_one(CF_DEVICES, &k, &row).unwrap();
        assert_eq!(
            st.device("msp", "s-1", dev).unwrap().unwrap().customer,
            "dental"
        );
        let list = |customer: Option<&str>, allowed: &[&str]| {
            st.devices(
                "msp",
                &DeviceFilter {
                    customer: customer.map(Into::into),
                    customers_allowed: allowed.iter().map(|c| (*c).into()).collect(),
                    limit: 10,
                    ..Default::default()
                },
            )
            .unwrap()
            .items
        };
        assert!(list(None, &["vet"]).is_empty(), "vet's scope sees nothing");
        assert!(list(Some("vet"), &[]).is_empty());
        let l = list(None, &["dental"]);
        assert_eq!((l.len(), l[0].customer.as_str()), (1, "dental"));
        assert_eq!(list(Some("dental"), &[]).len(), 1);
    }

    /// The fleet index follows applied batches and is rebuilt from the
    /// store at open (what a batch reports and writes is tested on every
    /// backend in `store_tests`).
    #[test]
    fn a_store_written_before_the_deployment_keys_gets_them_at_open_once() {
        use crate::deploy::{Delivery, OrderRecord, SiteDeploymentRecord};
        use crate::store::DeploymentQuery;
        let dir = tempfile::tempdir().unwrap();
        let st = RocksCentralStore::open(dir.path()).unwrap();
        let o = OrderRecord {
            tenant: "msp".into(),
            id: "ord-1".into(),
            created_ms: 7,
            created_by: "ann".into(),
            deployment: Some("cdep-1".into()),
            sites: vec!["s-1".into()],
            customers: vec!["dental".into()],
            kind: outpost_uplink::deploy_link::DeployOrderKind::CreateDeployment {
                request_json: "{}".into(),
            },
        };
        let audit = AuditRow {
            at_ms: 7,
            tenant: "msp".into(),
            actor: "ann".into(),
            action: "deployment.create".into(),
            target: "cdep-1".into(),
            detail: String::new(),
        };
        st.create_order(&o, &[Delivery::queued(&o, &"s-1".into())], &audit)
            .unwrap();
        st.put_site_deployment(&SiteDeploymentRecord {
            tenant: "msp".into(),
            site: "s-2".into(),
            customer: "dental".into(),
            deployment: "dep-2".into(),
            from_central: false,
            updated_at_ms: 9,
            received_ms: 9,
            view_json: r#"{"summary":{"created_at_ms":8}}"#.into(),
        })
        .unwrap();
        let page = |st: &RocksCentralStore| {
            st.deployment_page(
                "msp",
                &DeploymentQuery {
                    limit: 10,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let before = page(&st);
        assert_eq!(before.total, 2);
        // As a store written before them: no derived key, no marker.
        let cf = st.cf(CF_DEPLOY).unwrap();
        let mut wb = WriteBatch::default();
        for item in st.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item.unwrap();
            let kind = k.splitn(3, |&b| b == 0).nth(1).unwrap_or_default().to_vec();
            if [&b"L"[..], b"e", b"q", b"m"].contains(&kind.as_slice()) {
                wb.delete_cf(cf, &k);
            }
        }
        st.write(wb).unwrap();
        assert_eq!(page(&st).total, 0);
        assert!(st.deployment_orders("msp", "cdep-1").unwrap().is_empty());
        drop(st);
        let st = RocksCentralStore::open(dir.path()).unwrap();
        assert_eq!(page(&st), before, "built at open");
        assert_eq!(st.deployment_orders("msp", "cdep-1").unwrap(), vec![o]);
        assert_eq!(
            st.deployment_progress("msp", &["dep-2".into()])
                .unwrap()
                .len(),
            1
        );
        // Once: a line deleted now stays deleted at the next open.
        let cf = st.cf(CF_DEPLOY).unwrap();
        let first = RocksCentralStore::list_key("msp", &before.items[0].cursor());
        st.db.delete_cf(cf, &first).unwrap();
        drop(st);
        let st = RocksCentralStore::open(dir.path()).unwrap();
        assert_eq!(page(&st).total, 1, "the marker keeps open from rescanning");
    }

    #[test]
    fn the_fleet_index_is_rebuilt_from_the_store_at_open() {
        use crate::model::DeviceStatus;
        use crate::store::DeviceSearch;
        let dir = tempfile::tempdir().unwrap();
        let st = RocksCentralStore::open(dir.path()).unwrap();
        st.create_site(&site("msp", "s-1"), &[1; 32], &tok("msp", "s-1"))
            .unwrap();
        st.apply_batch("msp", "s-1", &sample_batch(1), 1).unwrap();
        let mut b = sample_batch(3);
        b.devices[0].as_of_ms = 20;
        b.devices[0].status = outpost_uplink::batch::DeviceStatus::Offline;
        b.devices[0].status_since_ms = 30;
        b.alerts.clear();
        b.device_facts = vec![crate::store_tests::ips_tags(42, &["10.0.1.5"], &["eu"])];
        st.apply_batch("msp", "s-1", &b, 3).unwrap();
        let search = |st: &RocksCentralStore| {
            st.search_devices(
                "msp",
                &DeviceSearch {
                    words: vec!["web".into(), "10.0.1".into()],
                    tag: Some("eu".into()),
                    limit: 10,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let p = search(&st);
        assert_eq!((p.total, p.items[0].status), (1, DeviceStatus::Offline));
        drop(st);
        let st = RocksCentralStore::open(dir.path()).unwrap();
        assert_eq!(
            search(&st).items,
            p.items,
            "rebuilt at open (IPs and tags too)"
        );
        assert_eq!(st.index().tags("msp", &[]), ["eu"]);
        let c = st.fleet_counts("msp", &[]);
        assert_eq!(c.per_site[&SiteId::from("s-1")].offline, 1);
    }

    #[test]
    fn applied_set_folds_contiguous_sequences() {
        let mut s = site("t", "s");
        for q in [3, 1, 5, 2] {
            s.mark_applied(q);
        }
        assert_eq!((s.applied_up_to, s.applied_above.clone()), (3, vec![5]));
        assert!(s.is_applied(5) && !s.is_applied(4));
    }
}
