//! The RocksDB handle: opening the tables the caller declares, typed
//! reads, write batches and the one place writes are made durable.
//!
//! Nothing outside this crate touches RocksDB's handles: subsystems read
//! and write through [`Store`] and [`Batch`] with their own [`Table`]s.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, DB, DBCompressionType, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, StorageError};
use crate::table::{Codec, Layout, Table};

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
    /// Width of a rollup bucket ([`crate::rollup::BUCKET_MS`] in
    /// production; end-to-end tests shorten it so buckets close in seconds).
    pub rollup_bucket_ms: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Sync,
            block_cache_bytes: 64 * 1024 * 1024,
            write_buffer_bytes: 32 * 1024 * 1024,
            rollup_bucket_ms: crate::rollup::BUCKET_MS,
        }
    }
}

/// The shortest rollup bucket [`Store::open`] accepts.
pub const MIN_ROLLUP_BUCKET_MS: u64 = 1000;

struct Inner {
    db: DB,
    durability: Durability,
    /// The tables the opener declared (name → declaration).
    tables: Vec<Table>,
    /// Width of a rollup bucket, fixed for the life of the handle.
    rollup_bucket_ms: u64,
    /// Whether rollup computations record uplink-pending markers (true
    /// while the site is joined to a central; nothing accumulates otherwise).
    uplink_tracking: AtomicBool,
}

/// Where [`Store::scan_raw_seeking`] goes after an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStep {
    /// The next entry.
    Next,
    /// The first entry at or after this key (forward only).
    Seek(Vec<u8>),
    /// Stop the scan.
    Stop,
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

/// Schema version and other singletons of the engine.
pub const META: Table = Table::new("meta");

impl Store {
    /// Opens (creating if needed) the database at `path` with the `tables`
    /// the caller's subsystems declared (each subsystem's `TABLES`; [`META`]
    /// is always opened). Column families found on disk but not declared
    /// (a newer build's tables) are opened with default options and left
    /// alone.
    pub fn open(path: &Path, opts: &StoreOptions, tables: &[Table]) -> Result<Store> {
        if opts.rollup_bucket_ms < MIN_ROLLUP_BUCKET_MS {
            return Err(StorageError::Invalid(format!(
                "rollup bucket of {} ms is too short (minimum {MIN_ROLLUP_BUCKET_MS} ms)",
                opts.rollup_bucket_ms
            )));
        }
        let mut declared: Vec<Table> = vec![META];
        for t in tables {
            match declared.iter().find(|d| d.name == t.name) {
                Some(d) if d == t => {}
                Some(d) => {
                    return Err(StorageError::Invalid(format!(
                        "table {} is declared twice with different settings ({d:?} and {t:?})",
                        t.name
                    )));
                }
                None => declared.push(*t),
            }
        }
        let cache = Cache::new_lru_cache(opts.block_cache_bytes);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_total_wal_size(256 * 1024 * 1024);
        // In-place memtable updates (`Layout::Overwritten`) need the
        // memtable inserts of a write group made one after the other; the
        // ingest writer is one thread anyway.
        if declared.iter().any(|t| t.layout == Layout::Overwritten) {
            db_opts.set_allow_concurrent_memtable_write(false);
        }
        let mut cfs: Vec<ColumnFamilyDescriptor> = declared
            .iter()
            .map(|t| {
                let mut o = Options::default();
                let mut bb = BlockBasedOptions::default();
                bb.set_block_cache(&cache);
                bb.set_block_size(16 * 1024);
                bb.set_bloom_filter(10.0, false);
                o.set_block_based_table_factory(&bb);
                o.set_write_buffer_size(opts.write_buffer_bytes);
                o.set_compression_type(DBCompressionType::Lz4);
                match t.layout {
                    Layout::Small => {}
                    Layout::Bulk => {
                        o.set_bottommost_compression_type(DBCompressionType::Zstd);
                        o.set_level_compaction_dynamic_level_bytes(true);
                    }
                    Layout::Overwritten => o.set_inplace_update_support(true),
                }
                ColumnFamilyDescriptor::new(t.name, o)
            })
            .collect();
        // RocksDB refuses to open a database without every column family it
        // has; a new database has none yet (list_cf fails: nothing to add).
        for name in DB::list_cf(&Options::default(), path).unwrap_or_default() {
            if name != "default" && !declared.iter().any(|t| t.name == name) {
                tracing::debug!(table = %name, "opening an undeclared table");
                cfs.push(ColumnFamilyDescriptor::new(name, Options::default()));
            }
        }
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        let store = Store {
            inner: Arc::new(Inner {
                db,
                durability: opts.durability,
                tables: declared,
                rollup_bucket_ms: opts.rollup_bucket_ms,
                uplink_tracking: AtomicBool::new(false),
            }),
        };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<()> {
        match self.get::<u32>(META, SCHEMA_KEY)? {
            None => self.put(META, SCHEMA_KEY, &SCHEMA_VERSION),
            Some(SCHEMA_VERSION) => Ok(()),
            Some(other) => Err(StorageError::Invalid(format!(
                "database schema version {other} is not supported by this build (expects {SCHEMA_VERSION}); \
                 use a matching outpost version"
            ))),
        }
    }

    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Width of a rollup bucket (see [`StoreOptions::rollup_bucket_ms`]).
    pub fn rollup_bucket_ms(&self) -> u64 {
        self.inner.rollup_bucket_ms
    }

    /// The tables this handle opened, in declaration order.
    pub fn tables(&self) -> &[Table] {
        &self.inner.tables
    }

    /// Whether changes are recorded for the uplink (see
    /// [`crate::rollup::UPLINK_PENDING`]).
    pub fn uplink_tracking(&self) -> bool {
        self.inner.uplink_tracking.load(Ordering::Acquire)
    }

    /// Turns recording of uplink-pending changes on (the site joined a
    /// central) or off.
    pub fn set_uplink_tracking(&self, on: bool) {
        self.inner.uplink_tracking.store(on, Ordering::Release);
    }

    fn cf(&self, table: Table) -> Result<&ColumnFamily> {
        self.inner
            .db
            .cf_handle(table.name)
            .ok_or(StorageError::UndeclaredTable(table.name))
    }

    fn write_options(&self, sync: bool) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(sync);
        w
    }

    /// A new, empty write batch on this store.
    pub fn batch(&self) -> Batch {
        Batch {
            store: self.clone(),
            inner: WriteBatch::default(),
        }
    }

    /// Writes a batch atomically with the configured durability.
    pub fn write(&self, batch: Batch) -> Result<()> {
        let sync = self.inner.durability == Durability::Sync;
        Ok(self
            .inner
            .db
            .write_opt(batch.inner, &self.write_options(sync))?)
    }

    /// Writes a batch atomically without syncing the WAL, whatever the
    /// configured durability: only for state whose loss in a power cut is
    /// harmless (e.g. the patch cache's access times).
    pub fn write_unsynced(&self, batch: Batch) -> Result<()> {
        Ok(self
            .inner
            .db
            .write_opt(batch.inner, &self.write_options(false))?)
    }

    pub fn get_raw(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.db.get_cf(self.cf(table)?, key)?)
    }

    /// Reads and decodes one value with the table's codec.
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &[u8]) -> Result<Option<T>> {
        match self.get_raw(table, key)? {
            None => Ok(None),
            Some(bytes) => decode(table, &bytes).map(Some),
        }
    }

    /// Puts one value, durably.
    pub fn put<T: Serialize + ?Sized>(&self, table: Table, key: &[u8], value: &T) -> Result<()> {
        let mut b = self.batch();
        b.put(table, key, value)?;
        self.write(b)
    }

    /// Iterates `(key, value)` over `[from, to)` in key order, decoding values
    /// with the table's codec (an undecodable value is an error). Stops early
    /// if `f` returns `false`.
    pub fn scan<T: DeserializeOwned>(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        mut f: impl FnMut(&[u8], T) -> bool,
    ) -> Result<()> {
        self.scan_raw(table, from, to, |k, v| Ok(f(k, decode(table, v)?)))
    }

    /// Like [`Store::scan`] with raw values; `f` may fail.
    pub fn scan_raw(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        self.scan_raw_seeking(table, from, to, |k, v| {
            Ok(if f(k, v)? {
                ScanStep::Next
            } else {
                ScanStep::Stop
            })
        })
    }

    /// Like [`Store::scan_raw`], but `f` says where to go next: the next
    /// entry, a seek forward past entries it does not need (one iterator
    /// for the whole scan, however many seeks), or stop.
    pub fn scan_raw_seeking(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<ScanStep>,
    ) -> Result<()> {
        let mut ro = ReadOptions::default();
        if let Some(to) = to {
            ro.set_iterate_upper_bound(to.to_vec());
        }
        // The raw iterator lends each entry: no allocation per key and value.
        let mut iter = self.inner.db.raw_iterator_cf_opt(self.cf(table)?, ro);
        iter.seek(from);
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            match f(k, v)? {
                ScanStep::Next => iter.next(),
                ScanStep::Seek(key) if key.as_slice() > k => iter.seek(&key),
                // A seek backwards would loop: take it as the next entry.
                ScanStep::Seek(_) => iter.next(),
                ScanStep::Stop => return Ok(()),
            }
        }
        iter.status()?;
        Ok(())
    }

    /// The last `(key, value)` in `[from, to)`, if any.
    pub fn last_in_range(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(from.to_vec());
        ro.set_iterate_upper_bound(to.to_vec());
        let mut iter = self
            .inner
            .db
            .iterator_cf_opt(self.cf(table)?, ro, IteratorMode::End);
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

    /// Bytes of live SST files of one table.
    pub fn table_sst_bytes(&self, table: Table) -> Result<u64> {
        Ok(self
            .inner
            .db
            .property_int_value_cf(self.cf(table)?, "rocksdb.total-sst-files-size")?
            .unwrap_or(0))
    }

    /// Flushes memtables and compacts every declared table down to and
    /// including the bottom level (used by tests, benchmarks and `outpost`
    /// maintenance). The bottom level is rewritten too: RocksDB's default
    /// skips it, which left the range tombstones of sealed head windows
    /// (about 0.5 bytes per stored sample) and the data they delete on disk.
    pub fn compact_all(&self) -> Result<()> {
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        for t in &self.inner.tables {
            let h = self.cf(*t)?;
            self.inner.db.flush_cf(h)?;
            self.inner
                .db
                .compact_range_cf_opt::<&[u8], &[u8]>(h, None, None, &opts);
        }
        Ok(())
    }
}

/// Changes to several tables, applied atomically by [`Store::write`].
/// Typed puts encode with the table's codec.
pub struct Batch {
    /// The store whose tables the batch names (a handle clone: cheap).
    store: Store,
    inner: WriteBatch,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.inner.len())
            .finish_non_exhaustive()
    }
}

impl Batch {
    /// Adds a put of `value` encoded with the table's codec.
    pub fn put<T: Serialize + ?Sized>(
        &mut self,
        table: Table,
        key: &[u8],
        value: &T,
    ) -> Result<()> {
        let bytes = encode(table, value)?;
        self.inner.put_cf(self.store.cf(table)?, key, bytes);
        Ok(())
    }

    /// Adds a put of bytes as they are (tables with a layout of their own).
    pub fn put_raw(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.put_cf(self.store.cf(table)?, key, value);
        Ok(())
    }

    pub fn delete(&mut self, table: Table, key: &[u8]) -> Result<()> {
        self.inner.delete_cf(self.store.cf(table)?, key);
        Ok(())
    }

    /// Deletes every key in `[from, to)`.
    pub fn delete_range(&mut self, table: Table, from: &[u8], to: &[u8]) -> Result<()> {
        self.inner.delete_range_cf(self.store.cf(table)?, from, to);
        Ok(())
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Encoded size of the batch in bytes.
    pub fn size_in_bytes(&self) -> usize {
        self.inner.size_in_bytes()
    }
}

pub(crate) fn encode<T: Serialize + ?Sized>(table: Table, value: &T) -> Result<Vec<u8>> {
    match table.codec {
        Codec::Bincode => {
            outpost_proto::codec::encode(value).map_err(|source| StorageError::Encode {
                cf: table.name,
                source,
            })
        }
        Codec::Json => serde_json::to_vec(value)
            .map_err(|e| StorageError::Invalid(format!("encoding JSON for {}: {e}", table.name))),
        Codec::Raw => Err(StorageError::RawTable(table.name)),
    }
}

pub(crate) fn decode<T: DeserializeOwned>(table: Table, bytes: &[u8]) -> Result<T> {
    match table.codec {
        Codec::Bincode => {
            outpost_proto::codec::decode(bytes).map_err(|source| StorageError::Corrupt {
                cf: table.name,
                source,
            })
        }
        Codec::Json => serde_json::from_slice(bytes).map_err(|e| {
            StorageError::Invalid(format!("corrupt JSON value in {}: {e}", table.name))
        }),
        Codec::Raw => Err(StorageError::RawTable(table.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::DEVICES;

    fn open(dir: &Path, tables: &[Table]) -> Result<Store> {
        Store::open(dir, &StoreOptions::default(), tables)
    }

    #[test]
    fn an_overwritten_table_keeps_one_memtable_entry_per_key_and_reads_every_latest_value() {
        const STATE: Table = Table::new("test_state").codec(Codec::Raw).overwritten();
        const LOG: Table = Table::new("test_log").codec(Codec::Raw);
        let tables = [STATE, LOG];
        let dir = tempfile::tempdir().unwrap();
        let entries = |s: &Store, t: Table| {
            s.inner
                .db
                .property_int_value_cf(s.cf(t).unwrap(), "rocksdb.num-entries-active-mem-table")
                .unwrap()
                .unwrap()
        };
        let latest = |s: &Store, t: Table, dev: u64| s.get_raw(t, &dev.to_be_bytes()).unwrap();
        let put = |s: &Store, t: Table, dev: u64, v: &[u8]| {
            let mut b = s.batch();
            b.put_raw(t, &dev.to_be_bytes(), v).unwrap();
            s.write(b).unwrap();
        };
        {
            let s = open(dir.path(), &tables).unwrap();
            // A commit per round, each rewriting every device's state.
            for round in 0..500u64 {
                let mut b = s.batch();
                for dev in 0..10u64 {
                    let v = (round * 10 + dev).to_be_bytes();
                    b.put_raw(STATE, &dev.to_be_bytes(), &v).unwrap();
                    b.put_raw(LOG, &dev.to_be_bytes(), &v).unwrap();
                }
                s.write(b).unwrap();
            }
            assert_eq!(
                entries(&s, STATE),
                10,
                "one entry per key, rewritten in place"
            );
            assert_eq!(entries(&s, LOG), 5000, "a version per write");
            for dev in 0..10u64 {
                let want = (4990 + dev).to_be_bytes().to_vec();
                assert_eq!(latest(&s, STATE, dev), Some(want.clone()));
                assert_eq!(latest(&s, LOG, dev), Some(want));
            }
            // A larger value cannot go in place: it is added, and read.
            put(&s, STATE, 0, &[7u8; 16]);
            assert_eq!(entries(&s, STATE), 11);
            assert_eq!(latest(&s, STATE, 0), Some(vec![7u8; 16]));
            // A smaller one overwrites the larger one.
            put(&s, STATE, 0, b"small");
            assert_eq!(entries(&s, STATE), 11);
            assert_eq!(latest(&s, STATE, 0), Some(b"small".to_vec()));
            let mut seen = 0;
            s.scan_raw(STATE, &[], None, |_, _| {
                seen += 1;
                Ok(true)
            })
            .unwrap();
            assert_eq!(seen, 10, "a scan sees each key once");
        }
        // After a restart (the WAL replayed) and after a flush to a table
        // file, every key reads its latest value.
        let s = open(dir.path(), &tables).unwrap();
        let check = |s: &Store| {
            assert_eq!(latest(s, STATE, 0), Some(b"small".to_vec()));
            for dev in 1..10u64 {
                assert_eq!(
                    latest(s, STATE, dev),
                    Some((4990 + dev).to_be_bytes().to_vec())
                );
            }
        };
        check(&s);
        s.inner.db.flush_cf(s.cf(STATE).unwrap()).unwrap();
        check(&s);
    }

    #[test]
    fn reopen_keeps_values_and_checks_schema() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), crate::TABLES).unwrap();
            s.put(META, b"k", &42u64).unwrap();
        }
        let s = open(dir.path(), crate::TABLES).unwrap();
        assert_eq!(s.get::<u64>(META, b"k").unwrap(), Some(42));
        s.put(META, SCHEMA_KEY, &99u32).unwrap();
        drop(s);
        let err = open(dir.path(), crate::TABLES).unwrap_err();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }

    #[test]
    fn a_seeking_scan_skips_forward_stops_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), crate::TABLES).unwrap();
        let mut b = s.batch();
        for k in [b"a1", b"a2", b"a3", b"a4", b"b1", b"b2", b"c1"] {
            b.put_raw(META, k, b"v").unwrap();
        }
        s.write(b).unwrap();
        let scan = |steps: &dyn Fn(&[u8]) -> ScanStep| {
            let mut seen = Vec::new();
            s.scan_raw_seeking(META, b"a2", Some(b"c"), |k, _| {
                seen.push(String::from_utf8_lossy(k).into_owned());
                Ok(steps(k))
            })
            .unwrap();
            seen
        };
        assert_eq!(
            scan(&|k| if k == b"a2" {
                ScanStep::Seek(b"b".to_vec())
            } else {
                ScanStep::Next
            }),
            ["a2", "b1", "b2"],
            "a seek skips what it passes; the upper bound holds"
        );
        assert_eq!(
            scan(&|k| if k == b"a3" {
                ScanStep::Stop
            } else {
                ScanStep::Next
            }),
            ["a2", "a3"]
        );
        assert_eq!(
            scan(&|k| if k == b"b1" {
                ScanStep::Seek(b"a".to_vec())
            } else {
                ScanStep::Next
            }),
            ["a2", "a3", "a4", "b1", "b2"],
            "a seek backwards moves on instead of looping"
        );
    }

    #[test]
    fn corrupt_value_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), crate::TABLES).unwrap();
        let mut b = s.batch();
        b.put_raw(DEVICES, b"x", &[0xFF; 3]).unwrap();
        s.write(b).unwrap();
        let err = s
            .get::<crate::model::DeviceRecord>(DEVICES, b"x")
            .unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt { cf: "devices", .. }),
            "{err}"
        );
    }

    const NOTES: Table = Table::new("test_notes").codec(Codec::Json);
    const MARKS: Table = Table::new("test_marks").codec(Codec::Raw);

    #[test]
    fn a_table_declared_by_its_owner_is_opened_with_its_codec() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), &[NOTES, MARKS]).unwrap();
        s.put(NOTES, b"a", &vec!["x".to_string()]).unwrap();
        // JSON on disk: readable by anything that reads the table raw.
        assert_eq!(s.get_raw(NOTES, b"a").unwrap().unwrap(), br#"["x"]"#);
        assert_eq!(
            s.get::<Vec<String>>(NOTES, b"a").unwrap(),
            Some(vec!["x".to_string()])
        );
        let err = s.put(MARKS, b"a", &1u32).unwrap_err();
        assert!(matches!(err, StorageError::RawTable("test_marks")), "{err}");
        let mut b = s.batch();
        b.put_raw(MARKS, b"a", &[]).unwrap();
        s.write(b).unwrap();
        assert!(matches!(
            s.get::<u32>(MARKS, b"a").unwrap_err(),
            StorageError::RawTable("test_marks")
        ));
    }

    #[test]
    fn a_table_not_declared_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), &[]).unwrap();
        let err = s.get_raw(NOTES, b"a").unwrap_err();
        assert!(err.to_string().contains("test_notes"), "{err}");
    }

    #[test]
    fn tables_on_disk_that_this_build_does_not_declare_still_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), &[NOTES]).unwrap();
            s.put(NOTES, b"a", &1u8).unwrap();
        }
        // An older build (or another subsystem set) opens the same data.
        let s = open(dir.path(), &[]).unwrap();
        assert_eq!(s.tables(), &[META]);
        drop(s);
        let s = open(dir.path(), &[NOTES]).unwrap();
        assert_eq!(s.get::<u8>(NOTES, b"a").unwrap(), Some(1));
    }

    #[test]
    fn conflicting_declarations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = open(dir.path(), &[NOTES, NOTES.codec(Codec::Bincode)]).unwrap_err();
        assert!(err.to_string().contains("declared twice"), "{err}");
        // The same declaration twice (two subsystems sharing a table) is fine.
        open(dir.path(), &[NOTES, NOTES]).unwrap();
    }

    #[test]
    fn a_rollup_bucket_under_a_second_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            rollup_bucket_ms: 10,
            ..StoreOptions::default()
        };
        let err = Store::open(dir.path(), &opts, &[]).unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
    }
}
