//! The RocksDB handle, its column families and options.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, StorageError};

/// Column families. Each is a table; see [`crate::model`] for value types
/// and [`crate::keys`] for key layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// Schema version and other singletons.
    Meta,
    /// `device` → `DeviceRecord` (registry: identity, facts, revocation).
    Devices,
    /// `device` → `DeviceState` (last stored seq, last seen, online status).
    DeviceState,
    /// `device | ts` → `StatusTransition`.
    StatusLog,
    /// `device` → latest `Inventory`.
    Inventory,
    /// `sha256(token)` → `EnrollToken`.
    Tokens,
    /// `device | name 0 label` → series id (u32 BE).
    Series,
    /// `device | series | ts` → f64 (LE): the head of raw samples.
    Samples,
    /// `device | series | window start` → sealed chunk (see `chunk`).
    Chunks,
    /// `device | window start` → () : windows with head samples to seal.
    ChunkDirty,
    /// `device | ts | seq` → `Heartbeat`.
    Heartbeats,
    /// `device | series | bucket start` → `Rollup`.
    Rollups,
    /// `device | bucket start` → () : buckets with new samples to roll up.
    RollupDirty,
    /// `ts | n` → `AuditEntry`.
    Audit,
    /// LAN patch cache: upstream URL → cached entry (content hash, validators).
    CacheUrls,
    /// LAN patch cache: sha256 → blob metadata (size, last access, hits).
    CacheBlobs,
    /// LAN patch cache: upstream URL → size and sha256 a verified index states.
    CacheExpect,
    /// LAN patch cache: suite URL (`…/dists/SUITE`) → last accepted InRelease.
    CacheSuites,
    /// LAN patch cache: upstream URL → pin (never evicted).
    CachePins,
    /// `device` → tags (JSON list): scopes of alert rules and windows.
    DeviceTags,
    /// `kind/id` → alerting configuration object (JSON): rules, channels,
    /// escalation policies, maintenance windows.
    AlertConfig,
    /// `alert id` → alert record (JSON); `open/rule/device/label` → id.
    Alerts,
    /// `alert id | n` → alert transition (JSON).
    AlertEvents,
    /// `q/seq` → queued notification, `d/seq` → dead letter (JSON).
    Notifications,
    /// Changes not yet compacted into an uplink batch (written only while the
    /// site is joined to a central, see [`Store::uplink_tracking`]):
    /// `'r' | device | bucket start | generation` → () for (re)computed
    /// rollups, `'a' | ts | n` → alert transition (owned by `outpost-uplink`).
    UplinkPending,
    /// `seq` (u64 BE) → outbox batch (owned by `outpost-uplink`): compacted,
    /// compressed batches waiting for central's acknowledgement.
    UplinkOutbox,
}

impl Cf {
    pub const ALL: [Cf; 26] = [
        Cf::Meta,
        Cf::Devices,
        Cf::DeviceState,
        Cf::StatusLog,
        Cf::Inventory,
        Cf::Tokens,
        Cf::Series,
        Cf::Samples,
        Cf::Chunks,
        Cf::ChunkDirty,
        Cf::Heartbeats,
        Cf::Rollups,
        Cf::RollupDirty,
        Cf::Audit,
        Cf::CacheUrls,
        Cf::CacheBlobs,
        Cf::CacheExpect,
        Cf::CacheSuites,
        Cf::CachePins,
        Cf::DeviceTags,
        Cf::AlertConfig,
        Cf::Alerts,
        Cf::AlertEvents,
        Cf::Notifications,
        Cf::UplinkPending,
        Cf::UplinkOutbox,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Devices => "devices",
            Cf::DeviceState => "device_state",
            Cf::StatusLog => "status_log",
            Cf::Inventory => "inventory",
            Cf::Tokens => "tokens",
            Cf::Series => "series",
            Cf::Samples => "samples",
            Cf::Chunks => "chunks",
            Cf::ChunkDirty => "chunk_dirty",
            Cf::Heartbeats => "heartbeats",
            Cf::Rollups => "rollups",
            Cf::RollupDirty => "rollup_dirty",
            Cf::Audit => "audit",
            Cf::CacheUrls => "cache_urls",
            Cf::CacheBlobs => "cache_blobs",
            Cf::CacheExpect => "cache_expect",
            Cf::CacheSuites => "cache_suites",
            Cf::CachePins => "cache_pins",
            Cf::DeviceTags => "device_tags",
            Cf::AlertConfig => "alert_config",
            Cf::Alerts => "alerts",
            Cf::AlertEvents => "alert_events",
            Cf::Notifications => "notifications",
            Cf::UplinkPending => "uplink_pending",
            Cf::UplinkOutbox => "uplink_outbox",
        }
    }

    /// Large, append-mostly time series tables get zstd at the bottom level.
    fn is_bulk(self) -> bool {
        matches!(
            self,
            Cf::Samples | Cf::Chunks | Cf::Heartbeats | Cf::Rollups | Cf::StatusLog
        )
    }
}

/// When a write is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync the WAL on every group commit: an acknowledged record survives
    /// power loss. The default.
    #[default]
    Sync,
    /// Write the WAL without fsync: survives a process crash, not power loss.
    Buffered,
}

/// Options for opening a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub durability: Durability,
    /// Shared block cache size.
    pub block_cache_bytes: usize,
    /// Memtable size per column family.
    pub write_buffer_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Sync,
            block_cache_bytes: 64 * 1024 * 1024,
            write_buffer_bytes: 32 * 1024 * 1024,
        }
    }
}

struct Inner {
    db: DB,
    durability: Durability,
    /// Whether rollup computations record uplink-pending markers (true
    /// while the site is joined to a central; nothing accumulates otherwise).
    uplink_tracking: AtomicBool,
}

/// A cheap-to-clone handle on the database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.db.path())
            .finish_non_exhaustive()
    }
}

const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"schema_version";

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, opts: &StoreOptions) -> Result<Store> {
        let cache = Cache::new_lru_cache(opts.block_cache_bytes);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_total_wal_size(256 * 1024 * 1024);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            let mut bb = BlockBasedOptions::default();
            bb.set_block_cache(&cache);
            bb.set_block_size(16 * 1024);
            bb.set_bloom_filter(10.0, false);
            o.set_block_based_table_factory(&bb);
            o.set_write_buffer_size(opts.write_buffer_bytes);
            o.set_compression_type(DBCompressionType::Lz4);
            if cf.is_bulk() {
                o.set_bottommost_compression_type(DBCompressionType::Zstd);
                o.set_level_compaction_dynamic_level_bytes(true);
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        let store = Store {
            inner: Arc::new(Inner {
                db,
                durability: opts.durability,
                uplink_tracking: AtomicBool::new(false),
            }),
        };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<()> {
        match self.get::<u32>(Cf::Meta, SCHEMA_KEY)? {
            None => self.put(Cf::Meta, SCHEMA_KEY, &SCHEMA_VERSION),
            Some(SCHEMA_VERSION) => Ok(()),
            Some(other) => Err(StorageError::Invalid(format!(
                "database schema version {other} is not supported by this build (expects {SCHEMA_VERSION}); \
                 use a matching outpost version"
            ))),
        }
    }

    pub fn db(&self) -> &DB {
        &self.inner.db
    }

    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Whether changes are recorded for the uplink (see [`Cf::UplinkPending`]).
    pub fn uplink_tracking(&self) -> bool {
        self.inner.uplink_tracking.load(Ordering::Acquire)
    }

    /// Turns recording of uplink-pending changes on (the site joined a
    /// central) or off.
    pub fn set_uplink_tracking(&self, on: bool) {
        self.inner.uplink_tracking.store(on, Ordering::Release);
    }

    pub fn cf(&self, cf: Cf) -> Result<&ColumnFamily> {
        self.inner
            .db
            .cf_handle(cf.name())
            .ok_or(StorageError::MissingColumnFamily(cf.name()))
    }

    /// Write options for the configured durability.
    pub fn write_options(&self) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(self.inner.durability == Durability::Sync);
        w
    }

    /// Writes a batch with the configured durability.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        Ok(self.inner.db.write_opt(batch, &self.write_options())?)
    }

    pub fn get_raw(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.db.get_cf(self.cf(cf)?, key)?)
    }

    pub fn get<T: DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>> {
        match self.get_raw(cf, key)? {
            None => Ok(None),
            Some(bytes) => decode(cf, &bytes).map(Some),
        }
    }

    /// Puts one value, durably.
    pub fn put<T: Serialize + ?Sized>(&self, cf: Cf, key: &[u8], value: &T) -> Result<()> {
        let mut b = WriteBatch::default();
        self.batch_put(&mut b, cf, key, value)?;
        self.write(b)
    }

    /// Reads a JSON-encoded value (configuration-like tables whose shape
    /// evolves with optional fields).
    pub fn get_json<T: DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>> {
        match self.get_raw(cf, key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                StorageError::Invalid(format!("corrupt JSON value in {}: {e}", cf.name()))
            }),
        }
    }

    /// Adds a JSON-encoded put to `batch`.
    pub fn batch_put_json<T: Serialize + ?Sized>(
        &self,
        batch: &mut WriteBatch,
        cf: Cf,
        key: &[u8],
        value: &T,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| StorageError::Invalid(format!("encoding JSON for {}: {e}", cf.name())))?;
        batch.put_cf(self.cf(cf)?, key, bytes);
        Ok(())
    }

    /// Iterates JSON values over `[from, to)`; undecodable values are errors.
    pub fn scan_json<T: DeserializeOwned>(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        mut f: impl FnMut(&[u8], T) -> bool,
    ) -> Result<()> {
        self.scan_raw(cf, from, to, |k, v| {
            let value = serde_json::from_slice(v).map_err(|e| {
                StorageError::Invalid(format!("corrupt JSON value in {}: {e}", cf.name()))
            })?;
            Ok(f(k, value))
        })
    }

    /// Adds an encoded put to `batch`.
    pub fn batch_put<T: Serialize + ?Sized>(
        &self,
        batch: &mut WriteBatch,
        cf: Cf,
        key: &[u8],
        value: &T,
    ) -> Result<()> {
        let bytes = encode(cf, value)?;
        batch.put_cf(self.cf(cf)?, key, bytes);
        Ok(())
    }

    /// Iterates `(key, value)` over `[from, to)` in key order, decoding values.
    /// Stops early if `f` returns `false`.
    pub fn scan<T: DeserializeOwned>(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        mut f: impl FnMut(&[u8], T) -> bool,
    ) -> Result<()> {
        self.scan_raw(cf, from, to, |k, v| Ok(f(k, decode(cf, v)?)))
    }

    /// Like [`Store::scan`] with raw values; `f` may fail.
    pub fn scan_raw(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mut ro = ReadOptions::default();
        if let Some(to) = to {
            ro.set_iterate_upper_bound(to.to_vec());
        }
        let iter = self.inner.db.iterator_cf_opt(
            self.cf(cf)?,
            ro,
            IteratorMode::From(from, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// The last `(key, value)` in `[from, to)`, if any.
    pub fn last_in_range(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(from.to_vec());
        ro.set_iterate_upper_bound(to.to_vec());
        let mut iter = self
            .inner
            .db
            .iterator_cf_opt(self.cf(cf)?, ro, IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
        }
    }

    /// Total size of live SST files plus WAL files on disk, in bytes.
    pub fn disk_usage_bytes(&self) -> Result<u64> {
        let sst: u64 = self
            .inner
            .db
            .live_files()?
            .iter()
            .map(|f| f.size as u64)
            .sum();
        let mut wal = 0u64;
        if let Ok(dir) = std::fs::read_dir(self.inner.db.path()) {
            for e in dir.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    wal += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
        Ok(sst + wal)
    }

    /// Bytes of live SST files of one column family.
    pub fn cf_sst_bytes(&self, cf: Cf) -> Result<u64> {
        Ok(self
            .inner
            .db
            .property_int_value_cf(self.cf(cf)?, "rocksdb.total-sst-files-size")?
            .unwrap_or(0))
    }

    /// Flushes memtables and compacts every column family (used by tests,
    /// benchmarks and `outpost` maintenance).
    pub fn compact_all(&self) -> Result<()> {
        for cf in Cf::ALL {
            let h = self.cf(cf)?;
            self.inner.db.flush_cf(h)?;
            self.inner
                .db
                .compact_range_cf::<&[u8], &[u8]>(h, None, None);
        }
        Ok(())
    }
}

pub(crate) fn encode<T: Serialize + ?Sized>(cf: Cf, value: &T) -> Result<Vec<u8>> {
    outpost_proto::codec::encode(value).map_err(|source| StorageError::Encode {
        cf: cf.name(),
        source,
    })
}

pub(crate) fn decode<T: DeserializeOwned>(cf: Cf, bytes: &[u8]) -> Result<T> {
    outpost_proto::codec::decode(bytes).map_err(|source| StorageError::Corrupt {
        cf: cf.name(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_keeps_values_and_checks_schema() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            s.put(Cf::Meta, b"k", &42u64).unwrap();
        }
        let s = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(s.get::<u64>(Cf::Meta, b"k").unwrap(), Some(42));
        s.put(Cf::Meta, SCHEMA_KEY, &99u32).unwrap();
        drop(s);
        let err = Store::open(dir.path(), &StoreOptions::default()).unwrap_err();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }

    #[test]
    fn corrupt_value_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        s.db()
            .put_cf(s.cf(Cf::Devices).unwrap(), b"x", [0xFF; 3])
            .unwrap();
        let err = s
            .get::<crate::model::DeviceRecord>(Cf::Devices, b"x")
            .unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt { cf: "devices", .. }),
            "{err}"
        );
    }
}
