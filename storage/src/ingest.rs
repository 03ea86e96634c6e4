//! The group-commit ingest path.
//!
//! One [`IngestWriter`] (owned by one writer thread) turns groups of decoded
//! records from many connections into a single RocksDB write batch, writes
//! it with the configured durability, and reports per group the sequence
//! number up to which everything is durable: the cumulative ack.
//!
//! Dedupe: a record whose `seq` is at or below the device's stored high-water
//! mark (`DeviceState::last_seq`) is a replay and is acknowledged without
//! being stored again. The high-water mark is written in the same batch as
//! the records, so it can never run ahead of the data or fall behind it.
//! Heartbeats and samples are stored in blocks whose readers keep one
//! heartbeat per `(ts, seq)` and one value per series and millisecond, so
//! even a replay the mark missed would not show twice.
//!
//! Bounds ([`IngestLimits`]): a device has at most `max_series_per_device`
//! series (a value of a new series beyond it is rejected and counted, the
//! existing series keep working), and a record stamped more than
//! `max_future_ms` ahead of the appliance clock is consumed (acknowledged,
//! so the agent's backlog drains) but not stored, and counted. Every
//! computation on an agent's timestamp saturates: no timestamp, however
//! absurd, can overflow here or in the rollup, chunk and retention code.
//!
//! The writer keeps a cache of per-device state (high-water mark, status,
//! series dictionary, the last markers written). Every operation records
//! what it changes in the cache; if anything fails before its batch is
//! written (a read, an encoding, the write itself) every change is undone,
//! so in-memory state never claims what is not on disk: a later `Welcome`
//! can never tell an agent to delete records that were not stored.
//!
//! This module owns the ingest tables below; it does not touch the tables
//! of rollups, chunks or the uplink beyond writing their dirty markers.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use outpost_proto::DeviceId;
use outpost_proto::messages::{Hello, Inventory, MetricValue, Record, RecordBody};
use outpost_proto::metric_names::MAX_NAME_BYTES;
use serde::Serialize;

use crate::error::{Result, StorageError};
use crate::head::BLOCKS as SAMPLE_BLOCKS;
use crate::heartbeats::BLOCKS as HEARTBEAT_BLOCKS;
use crate::keys::{self, SeriesId};
use crate::model::{DeviceState, DeviceStatus, StatusTransition};
use crate::registry::INVENTORY;
use crate::rollup::{ROLLUP_DIRTY, bucket_start};
use crate::samples::{CHUNK_DIRTY, SERIES};
use crate::{Batch, Store, Table};

/// `device` → `DeviceState` (last stored seq, last seen, online status).
pub const DEVICE_STATE: Table = Table::new("device_state").overwritten();
/// `device | ts` → `StatusTransition`.
pub const STATUS_LOG: Table = Table::new("status_log").bulk();
/// `device | seq` → `PackageScanRecord`, as received: the patch
/// subsystem's inbox. Ingest only stores a report (so its ack means
/// durable); the appliance's patch worker applies it off the writer
/// thread and deletes it.
pub const PACKAGE_SCANS_IN: Table = Table::new("package_scans_in");
/// `device | seq` → `PatchStatusRecord`, as received: the deployment
/// subsystem's inbox, kept and drained like [`PACKAGE_SCANS_IN`].
pub const PATCH_STATUS_IN: Table = Table::new("patch_status_in");

/// Records from one connection, in arrival order.
#[derive(Debug)]
pub struct IncomingRecords {
    pub device: DeviceId,
    pub records: Vec<Record>,
}

impl IncomingRecords {
    /// Memory these decoded records hold (inline and heap, by capacity): what
    /// a session is charged against its byte budgets while they wait for the
    /// writer.
    pub fn held_bytes(&self) -> usize {
        records_held_bytes(&self.records)
    }
}

/// Memory a vector of decoded records holds (see [`IncomingRecords::held_bytes`]).
// A `Vec`, not a slice: its capacity is part of what it holds.
#[allow(clippy::ptr_arg)]
pub fn records_held_bytes(records: &Vec<Record>) -> usize {
    let inline = records.capacity() * size_of::<Record>();
    records.iter().fold(inline, |n, r| {
        n.saturating_add(match &r.body {
            RecordBody::Heartbeat(_) => 0,
            RecordBody::Metrics(m) => {
                m.values.capacity() * size_of::<MetricValue>()
                    + m.values
                        .iter()
                        .map(|v| v.name.capacity() + v.label.capacity())
                        .sum::<usize>()
            }
            RecordBody::Inventory(inv) => inventory_held_bytes(inv),
            RecordBody::PackageScan(p) => p.payload.capacity(),
            RecordBody::PatchStatus(p) => p.payload.capacity(),
        })
    })
}

fn inventory_held_bytes(inv: &Inventory) -> usize {
    let strings = [
        &inv.hostname,
        &inv.os_name,
        &inv.os_version,
        &inv.kernel,
        &inv.arch,
        &inv.cpu_model,
        &inv.agent_version,
    ]
    .iter()
    .map(|s| s.capacity())
    .sum::<usize>();
    let disks = inv.disks.capacity() * size_of::<outpost_proto::messages::DiskInventory>()
        + inv
            .disks
            .iter()
            .map(|d| d.mount.capacity() + d.filesystem.capacity())
            .sum::<usize>();
    let nics = inv.nics.capacity() * size_of::<outpost_proto::messages::NicInventory>()
        + inv
            .nics
            .iter()
            .map(|n| {
                n.name.capacity()
                    + n.mac.capacity()
                    + n.ips.capacity() * size_of::<String>()
                    + n.ips.iter().map(String::capacity).sum::<usize>()
            })
            .sum::<usize>();
    size_of::<Inventory>() + strings + disks + nics
}

/// Bounds the writer enforces on what devices send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    /// Series one device may have. A value of a new series beyond it is
    /// rejected and counted ([`GroupOutcome::series_rejected`]); the device's
    /// existing series keep working.
    pub max_series_per_device: usize,
    /// A record stamped more than this far ahead of the appliance clock (the
    /// `now_ms` of [`IngestWriter::apply`]) is consumed — acknowledged, so
    /// the agent's backlog drains — but not stored, and counted
    /// ([`GroupOutcome::bad_timestamps`]).
    pub max_future_ms: u64,
}

impl IngestLimits {
    /// The appliance's defaults: 10,000 series per device, one day ahead.
    pub const DEFAULT: IngestLimits = IngestLimits {
        max_series_per_device: 10_000,
        max_future_ms: 24 * 3600 * 1000,
    };
    /// No bounds: tools and benchmarks that replay fixed timestamps with an
    /// arbitrary clock ([`IngestWriter::new`]).
    pub const NONE: IngestLimits = IngestLimits {
        max_series_per_device: usize::MAX,
        max_future_ms: u64::MAX,
    };
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits::DEFAULT
    }
}

/// A step of the writer where a test can make it fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// Loading a device's state into the cache (a database read).
    Load,
    /// Adding one write to the batch (encoding a value).
    Put,
    /// Writing the batch.
    Write,
}

/// Failure injection for tests: a test hands the writer one of these
/// ([`IngestWriter::set_fault_injector`]); production never sets one. It
/// belongs to one writer, not to the process, so tests running in parallel
/// do not see each other's faults.
pub trait FaultInjector: Send + Sync + std::fmt::Debug {
    /// Called before each step; an error fails the step as a real failure
    /// of that step would.
    fn check(&self, point: FaultPoint) -> Result<()>;
}

/// What happened to one [`IncomingRecords`] group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupOutcome {
    /// Every record of this device with `seq <= ack_up_to` is durable.
    pub ack_up_to: u64,
    /// The high-water mark before this group: its records with a higher
    /// sequence number were consumed by this batch, the others were replays.
    pub prev_seq: u64,
    pub stored: u32,
    pub duplicates: u32,
    /// Metric values dropped as invalid (non-finite, oversize name).
    pub rejected_values: u32,
    /// Metric values dropped because they would create a series beyond
    /// [`IngestLimits::max_series_per_device`].
    pub series_rejected: u32,
    /// Records consumed but not stored: stamped too far in the future
    /// ([`IngestLimits::max_future_ms`]).
    pub bad_timestamps: u32,
}

/// Totals for one committed batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub groups: Vec<GroupOutcome>,
    pub records: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub rejected_values: u64,
    pub series_rejected: u64,
    pub bad_timestamps: u64,
    pub samples: u64,
    pub transitions: Vec<(DeviceId, StatusTransition)>,
}

/// Per-device state cached by the writer.
#[derive(Debug)]
struct DeviceCache {
    state: DeviceState,
    /// Series dictionary keyed by a 64-bit hash of (name, label): compact for
    /// tens of thousands of devices; the authoritative names live in `Series`.
    series: HashMap<u64, SeriesId>,
    next_series: SeriesId,
    /// Bucket whose rollup-dirty marker was last written (avoids a marker write
    /// per sample).
    last_dirty_bucket: Option<u64>,
    /// Chunk window whose seal marker was last written.
    last_chunk_window: Option<u64>,
}

/// A copy of what the writer caches about one device (diagnostics, tests).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedDevice {
    pub state: DeviceState,
    /// Series in the dictionary.
    pub series: usize,
    pub next_series: SeriesId,
    pub last_dirty_bucket: Option<u64>,
    pub last_chunk_window: Option<u64>,
}

/// The cached fields of a device an operation may change (the series
/// dictionary only grows: its additions are listed in [`Undo`]).
#[derive(Debug)]
struct Saved {
    state: DeviceState,
    next_series: SeriesId,
    last_dirty_bucket: Option<u64>,
    last_chunk_window: Option<u64>,
}

/// What one operation changed in the cache, to put back if its batch is not
/// written ([`IngestWriter::rollback`]).
#[derive(Debug)]
struct Undo {
    online: u64,
    /// State of each device before the operation first changed it.
    saved: HashMap<DeviceId, Saved>,
    /// Series the operation added to dictionaries: (device, hash).
    new_series: Vec<(DeviceId, u64)>,
}

impl Undo {
    fn new(online: u64) -> Undo {
        Undo {
            online,
            saved: HashMap::new(),
            new_series: Vec::new(),
        }
    }

    /// Remembers `c` as it is, unless the operation already changed it.
    fn save(&mut self, device: DeviceId, c: &DeviceCache) {
        if let Entry::Vacant(e) = self.saved.entry(device) {
            e.insert(Saved {
                state: c.state.clone(),
                next_series: c.next_series,
                last_dirty_bucket: c.last_dirty_bucket,
                last_chunk_window: c.last_chunk_window,
            });
        }
    }
}

/// A batch whose every addition passes the writer's fault injector first.
struct Staged {
    batch: Batch,
    faults: Option<Arc<dyn FaultInjector>>,
}

impl Staged {
    fn check(&self, point: FaultPoint) -> Result<()> {
        match &self.faults {
            Some(f) => f.check(point),
            None => Ok(()),
        }
    }

    fn put<T: Serialize + ?Sized>(&mut self, table: Table, key: &[u8], value: &T) -> Result<()> {
        self.check(FaultPoint::Put)?;
        self.batch.put(table, key, value)
    }

    fn put_raw(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.check(FaultPoint::Put)?;
        self.batch.put_raw(table, key, value)
    }
}

fn series_hash(name: &str, label: &str) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    label.hash(&mut h);
    h.finish()
}

/// The single writer of telemetry. See the module docs.
#[derive(Debug)]
pub struct IngestWriter {
    store: Store,
    devices: HashMap<DeviceId, DeviceCache>,
    /// Devices loaded as online at start get this much time to reconnect
    /// before they can be declared offline (an appliance restart is not a
    /// fleet outage).
    started_ms: u64,
    /// Further time, after `started_ms`, that devices online at start and
    /// not heard from since get before they can be declared offline: the
    /// appliance's own handshake admission readmits a large fleet at a
    /// bounded rate (see [`IngestWriter::set_restart_grace`]).
    restart_grace_ms: u64,
    /// Devices currently online (all of them are in `devices`).
    online: u64,
    /// Bounds on what devices send.
    limits: IngestLimits,
    /// Test-only failure injection (None in production).
    faults: Option<Arc<dyn FaultInjector>>,
}

impl IngestWriter {
    /// Creates a writer without bounds ([`IngestLimits::NONE`]; tools and
    /// benchmarks). See [`IngestWriter::with_limits`].
    pub fn new(store: Store, now_ms: u64) -> Result<IngestWriter> {
        Self::with_limits(store, now_ms, IngestLimits::NONE)
    }

    /// Creates the writer and loads every device currently marked online, so
    /// the offline sweep covers devices that never reconnect after a restart.
    pub fn with_limits(store: Store, now_ms: u64, limits: IngestLimits) -> Result<IngestWriter> {
        let mut w = IngestWriter {
            store,
            devices: HashMap::new(),
            started_ms: now_ms,
            restart_grace_ms: 0,
            online: 0,
            limits,
            faults: None,
        };
        w.load_online()?;
        Ok(w)
    }

    /// Gives the devices that were online when this writer started (and are
    /// not heard from since) `grace_ms` more to reconnect before the offline
    /// sweep's usual deadline (two heartbeat intervals plus its grace)
    /// starts to count: an appliance that readmits 50,000 agents at 200
    /// handshakes a second needs minutes, and a device still waiting its
    /// turn is not offline. Devices heard from since the start keep the
    /// usual deadline from their last contact.
    pub fn set_restart_grace(&mut self, grace_ms: u64) {
        self.restart_grace_ms = grace_ms;
    }

    /// Test seam: from now on every load, batch addition and write asks
    /// `faults` first (see [`FaultInjector`]).
    pub fn set_fault_injector(&mut self, faults: Arc<dyn FaultInjector>) {
        self.faults = Some(faults);
    }

    pub fn limits(&self) -> IngestLimits {
        self.limits
    }

    fn load_online(&mut self) -> Result<()> {
        let mut online = Vec::new();
        self.store
            .scan::<DeviceState>(DEVICE_STATE, &[], None, |k, st| {
                if st.status == DeviceStatus::Online
                    && let Some(d) = keys::device_from_key(k)
                {
                    online.push(d);
                }
                true
            })?;
        self.online = online.len() as u64;
        for d in online {
            self.cache(d)?;
        }
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn check(&self, point: FaultPoint) -> Result<()> {
        match &self.faults {
            Some(f) => f.check(point),
            None => Ok(()),
        }
    }

    fn staged(&self) -> Staged {
        Staged {
            batch: self.store.batch(),
            faults: self.faults.clone(),
        }
    }

    fn cache(&mut self, device: DeviceId) -> Result<&mut DeviceCache> {
        if !self.devices.contains_key(&device) {
            self.check(FaultPoint::Load)?;
            let state = self
                .store
                .get::<DeviceState>(DEVICE_STATE, &keys::device_key(device))?
                .unwrap_or_else(|| DeviceState::new(self.started_ms));
            let mut series = HashMap::new();
            let mut next_series = 0;
            let prefix = keys::device_key(device);
            let end = keys::prefix_successor(&prefix);
            self.store
                .scan_raw(SERIES, &prefix, end.as_deref(), |k, v| {
                    if let (Some((_, name, label)), Ok(id)) =
                        (keys::parse_series_name_key(k), <[u8; 4]>::try_from(v))
                    {
                        let id = u32::from_be_bytes(id);
                        series.insert(series_hash(&name, &label), id);
                        next_series = next_series.max(id.saturating_add(1));
                    }
                    Ok(true)
                })?;
            self.devices.insert(
                device,
                DeviceCache {
                    state,
                    series,
                    next_series,
                    last_dirty_bucket: None,
                    last_chunk_window: None,
                },
            );
        }
        // Just inserted or already present.
        self.devices
            .get_mut(&device)
            .ok_or_else(|| StorageError::Invalid("device cache vanished".into()))
    }

    /// Highest stored sequence number of a device (for the session Welcome).
    pub fn last_seq(&mut self, device: DeviceId) -> Result<u64> {
        Ok(self.cache(device)?.state.last_seq)
    }

    /// A copy of the cached state of a device, if it is cached.
    pub fn cached(&self, device: DeviceId) -> Option<CachedDevice> {
        self.devices.get(&device).map(|c| CachedDevice {
            state: c.state.clone(),
            series: c.series.len(),
            next_series: c.next_series,
            last_dirty_bucket: c.last_dirty_bucket,
            last_chunk_window: c.last_chunk_window,
        })
    }

    /// Devices in the cache.
    pub fn cached_devices(&self) -> Vec<DeviceId> {
        self.devices.keys().copied().collect()
    }

    /// Runs `op`, which changes the cache (recording how in its [`Undo`])
    /// and returns the batch that makes the changes durable; writes the
    /// batch. If `op` or the write fails, the cache is put back as it was.
    fn transact<T>(
        &mut self,
        op: impl FnOnce(&mut IngestWriter, &mut Undo) -> Result<(T, Option<Staged>)>,
    ) -> Result<T> {
        let mut undo = Undo::new(self.online);
        let result = op(self, &mut undo).and_then(|(value, staged)| {
            if let Some(staged) = staged {
                staged.check(FaultPoint::Write)?;
                self.store.write(staged.batch)?;
            }
            Ok(value)
        });
        if result.is_err() {
            self.rollback(undo);
        }
        result
    }

    /// Puts back what a failed operation changed in the cache.
    fn rollback(&mut self, undo: Undo) {
        self.online = undo.online;
        for (device, hash) in undo.new_series {
            if let Some(c) = self.devices.get_mut(&device) {
                c.series.remove(&hash);
            }
        }
        for (device, s) in undo.saved {
            if let Some(c) = self.devices.get_mut(&device) {
                c.state = s.state;
                c.next_series = s.next_series;
                c.last_dirty_bucket = s.last_dirty_bucket;
                c.last_chunk_window = s.last_chunk_window;
            }
        }
    }

    /// Records a session start: the device is seen now and declares its
    /// heartbeat interval. Returns the high-water mark and any transition.
    pub fn session_started(
        &mut self,
        device: DeviceId,
        hello: &Hello,
        now_ms: u64,
    ) -> Result<(u64, Option<StatusTransition>)> {
        self.transact(|w, undo| {
            let mut batch = w.staged();
            let c = w.cache(device)?;
            undo.save(device, c);
            c.state.heartbeat_interval_ms = hello.heartbeat_interval_ms.max(1000);
            let t = mark_seen(c, now_ms);
            let last_seq = c.state.last_seq;
            let state = c.state.clone();
            if t.is_some() {
                w.online += 1;
            }
            if let Some(t) = &t {
                batch.put(STATUS_LOG, &keys::device_time_key(device, t.at_ms), t)?;
            }
            batch.put(DEVICE_STATE, &keys::device_key(device), &state)?;
            Ok(((last_seq, t), Some(batch)))
        })
    }

    /// Stores every group in one batch and returns per-group acks. On any
    /// error nothing is stored and the cache is as it was before the call.
    pub fn apply(&mut self, groups: &[IncomingRecords], now_ms: u64) -> Result<BatchOutcome> {
        self.transact(|w, undo| {
            let mut batch = w.staged();
            let out = w.stage(groups, now_ms, &mut batch, undo)?;
            Ok((out, Some(batch)))
        })
    }

    /// The body of [`IngestWriter::apply`]: changes the cache and fills the batch.
    fn stage(
        &mut self,
        groups: &[IncomingRecords],
        now_ms: u64,
        batch: &mut Staged,
        undo: &mut Undo,
    ) -> Result<BatchOutcome> {
        let mut out = BatchOutcome {
            groups: Vec::with_capacity(groups.len()),
            ..BatchOutcome::default()
        };
        let bucket_width = self.store.rollup_bucket_ms();
        let limits = self.limits;
        let newest_ok_ms = now_ms.saturating_add(limits.max_future_ms);
        let mut went_online = 0u64;
        let mut beats = crate::heartbeats::BlockBuilder::default();
        let mut samples = crate::head::BlockBuilder::default();
        for g in groups {
            let device = g.device;
            let c = self.cache(device)?;
            undo.save(device, c);
            let mut go = GroupOutcome {
                prev_seq: c.state.last_seq,
                ..GroupOutcome::default()
            };
            for rec in &g.records {
                out.records += 1;
                if rec.seq <= c.state.last_seq {
                    go.duplicates += 1;
                    continue;
                }
                if rec.ts_ms > newest_ok_ms {
                    // Consumed, not stored: the agent's clock is wrong (or
                    // hostile); storing it would pin "latest" values forever.
                    go.bad_timestamps += 1;
                    c.state.last_seq = rec.seq;
                    continue;
                }
                match &rec.body {
                    RecordBody::Heartbeat(h) => {
                        beats.add(device, rec.ts_ms, rec.seq, *h);
                        if rec.ts_ms >= c.state.last_heartbeat_ts_ms {
                            c.state.last_heartbeat = Some(*h);
                            c.state.last_heartbeat_ts_ms = rec.ts_ms;
                        }
                    }
                    RecordBody::Metrics(m) => {
                        let bucket = bucket_start(rec.ts_ms, bucket_width);
                        let mut any = false;
                        let mut block = samples.record(device, rec.seq, rec.ts_ms);
                        for v in &m.values {
                            if !v.value.is_finite()
                                || v.name.is_empty()
                                || v.name.len() > MAX_NAME_BYTES
                                || v.label.len() > MAX_NAME_BYTES
                                || v.name.contains('\0')
                                || v.label.contains('\0')
                            {
                                go.rejected_values += 1;
                                continue;
                            }
                            let Some(sid) = series_id(
                                batch,
                                device,
                                c,
                                &v.name,
                                &v.label,
                                limits.max_series_per_device,
                                undo,
                            )?
                            else {
                                go.series_rejected += 1;
                                continue;
                            };
                            block.push(sid, v.value);
                            out.samples += 1;
                            any = true;
                        }
                        if any && c.last_dirty_bucket != Some(bucket) {
                            batch.put_raw(
                                ROLLUP_DIRTY,
                                &keys::device_time_key(device, bucket),
                                &[],
                            )?;
                            c.last_dirty_bucket = Some(bucket);
                        }
                        let window = crate::chunk::window_start(rec.ts_ms);
                        if any && c.last_chunk_window != Some(window) {
                            batch.put_raw(
                                CHUNK_DIRTY,
                                &keys::device_time_key(device, window),
                                &[],
                            )?;
                            c.last_chunk_window = Some(window);
                        }
                    }
                    RecordBody::Inventory(inv) => {
                        batch.put(INVENTORY, &keys::device_key(device), inv.as_ref())?;
                    }
                    RecordBody::PackageScan(p) => {
                        batch.put(PACKAGE_SCANS_IN, &keys::device_time_key(device, rec.seq), p)?;
                    }
                    RecordBody::PatchStatus(p) => {
                        batch.put(PATCH_STATUS_IN, &keys::device_time_key(device, rec.seq), p)?;
                    }
                }
                c.state.last_seq = rec.seq;
                c.state.records_stored += 1;
                go.stored += 1;
            }
            if let Some(t) = mark_seen(c, now_ms) {
                went_online += 1;
                batch.put(STATUS_LOG, &keys::device_time_key(device, t.at_ms), &t)?;
                out.transitions.push((device, t));
            }
            go.ack_up_to = c.state.last_seq;
            out.stored += u64::from(go.stored);
            out.duplicates += u64::from(go.duplicates);
            out.rejected_values += u64::from(go.rejected_values);
            out.series_rejected += u64::from(go.series_rejected);
            out.bad_timestamps += u64::from(go.bad_timestamps);
            out.groups.push(go);
        }
        for (key, block) in beats.drain() {
            batch.put(HEARTBEAT_BLOCKS, &key, &block)?;
        }
        for (key, block) in samples.drain() {
            batch.put_raw(SAMPLE_BLOCKS, &key, &block)?;
        }
        // Every device the batch touched: its new state, in the same write.
        for d in undo.saved.keys() {
            if let Some(c) = self.devices.get(d) {
                batch.put(DEVICE_STATE, &keys::device_key(*d), &c.state)?;
            }
        }
        self.online += went_online;
        Ok(out)
    }

    /// Declares offline every online device silent for longer than two
    /// heartbeat intervals plus `grace_ms`.
    pub fn sweep_offline(
        &mut self,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Vec<(DeviceId, StatusTransition)>> {
        self.transact(|w, undo| {
            let mut batch = w.staged();
            let mut out = Vec::new();
            let started_ms = w.started_ms;
            let readmitted_by_ms = started_ms.saturating_add(w.restart_grace_ms);
            for (d, c) in w.devices.iter_mut() {
                let st = &c.state;
                if st.status != DeviceStatus::Online {
                    continue;
                }
                // Not heard from since the start: its silence counts from
                // when the fleet has had its turn to reconnect.
                let seen = if st.last_seen_ms >= started_ms {
                    st.last_seen_ms
                } else {
                    readmitted_by_ms
                };
                let deadline = seen
                    .saturating_add(2 * u64::from(st.heartbeat_interval_ms))
                    .saturating_add(grace_ms);
                if now_ms < deadline {
                    continue;
                }
                undo.save(*d, c);
                let st = &mut c.state;
                let t = StatusTransition {
                    at_ms: now_ms,
                    from: st.status,
                    to: DeviceStatus::Offline,
                    last_seen_ms: st.last_seen_ms,
                };
                st.status = DeviceStatus::Offline;
                st.status_since_ms = now_ms;
                batch.put(STATUS_LOG, &keys::device_time_key(*d, now_ms), &t)?;
                batch.put(DEVICE_STATE, &keys::device_key(*d), st)?;
                out.push((*d, t));
            }
            w.online = w.online.saturating_sub(out.len() as u64);
            let write = (!out.is_empty()).then_some(batch);
            Ok((out, write))
        })
    }

    /// Devices currently online (every online device is cached: loaded at
    /// start or seen since).
    pub fn online_count(&self) -> u64 {
        self.online
    }

    /// Computes rollups for up to `max_buckets` closed dirty buckets (see
    /// [`crate::rollup`]): a whole pass over the markers, in one call.
    pub fn roll_up(
        &mut self,
        now_ms: u64,
        settle_ms: u64,
        max_buckets: usize,
    ) -> Result<Vec<crate::rollup::RolledUp>> {
        let (mut rolled, mut buckets) = (Vec::new(), 0);
        let mut from = Vec::new();
        while buckets < max_buckets {
            let slice = self.roll_up_slice(&from, now_ms, settle_ms, max_buckets - buckets)?;
            buckets += slice.cleared.len();
            rolled.extend(slice.rolled);
            match slice.resume {
                Some(k) => from = k,
                None => break,
            }
        }
        Ok(rolled)
    }

    /// One slice of a roll-up pass: up to `max_buckets` closed dirty buckets
    /// from marker key `from` on (see [`crate::dirty`]). On the writer, so
    /// no marker can be written between a bucket's read and the marker's
    /// deletion; in slices, so commits go on between them.
    pub fn roll_up_slice(
        &mut self,
        from: &[u8],
        now_ms: u64,
        settle_ms: u64,
        max_buckets: usize,
    ) -> Result<crate::rollup::DirtyPass> {
        let pass = crate::rollup::process_dirty(&self.store, from, now_ms, settle_ms, max_buckets)?;
        for &(device, bucket) in &pass.cleared {
            if let Some(c) = self.devices.get_mut(&device)
                && c.last_dirty_bucket == Some(bucket)
            {
                c.last_dirty_bucket = None;
            }
        }
        Ok(pass)
    }

    /// Seals up to `max_windows` closed chunk windows (see
    /// [`crate::samples::seal_dirty`]): a whole pass, in one call. Rollups
    /// of a window must be computed before or after sealing, never lost:
    /// both read the union of head and chunks.
    pub fn seal_chunks(
        &mut self,
        now_ms: u64,
        settle_ms: u64,
        max_windows: usize,
    ) -> Result<usize> {
        let mut sealed = 0;
        let mut from = Vec::new();
        while sealed < max_windows {
            let (n, resume) =
                self.seal_chunks_slice(&from, now_ms, settle_ms, max_windows - sealed)?;
            sealed += n;
            match resume {
                Some(k) => from = k,
                None => break,
            }
        }
        Ok(sealed)
    }

    /// One slice of a sealing pass, on the writer for the same reason as
    /// [`IngestWriter::roll_up_slice`]: the windows sealed and where the
    /// pass resumes.
    pub fn seal_chunks_slice(
        &mut self,
        from: &[u8],
        now_ms: u64,
        settle_ms: u64,
        max_windows: usize,
    ) -> Result<(usize, crate::dirty::Resume)> {
        let (sealed, resume) =
            crate::samples::seal_dirty(&self.store, from, now_ms, settle_ms, max_windows)?;
        for (device, window) in &sealed {
            if let Some(c) = self.devices.get_mut(device)
                && c.last_chunk_window == Some(*window)
            {
                c.last_chunk_window = None;
            }
        }
        Ok((sealed.len(), resume))
    }

    /// Retires a device (revoked): marks it offline if it was online and
    /// drops it from the cache (only once that is durable).
    pub fn retire(&mut self, device: DeviceId, now_ms: u64) -> Result<Option<StatusTransition>> {
        let Some(c) = self.devices.get(&device) else {
            return Ok(None);
        };
        if c.state.status != DeviceStatus::Online {
            self.devices.remove(&device);
            return Ok(None);
        }
        let mut state = c.state.clone();
        let t = StatusTransition {
            at_ms: now_ms,
            from: DeviceStatus::Online,
            to: DeviceStatus::Offline,
            last_seen_ms: state.last_seen_ms,
        };
        state.status = DeviceStatus::Offline;
        state.status_since_ms = now_ms;
        let t = self.transact(|w, _| {
            let mut batch = w.staged();
            batch.put(STATUS_LOG, &keys::device_time_key(device, now_ms), &t)?;
            batch.put(DEVICE_STATE, &keys::device_key(device), &state)?;
            Ok((t, Some(batch)))
        })?;
        self.devices.remove(&device);
        self.online = self.online.saturating_sub(1);
        Ok(Some(t))
    }
}

/// Marks a device as heard from now; returns a transition if it was not online.
fn mark_seen(c: &mut DeviceCache, now_ms: u64) -> Option<StatusTransition> {
    let st = &mut c.state;
    st.last_seen_ms = now_ms;
    if st.status == DeviceStatus::Online {
        return None;
    }
    let t = StatusTransition {
        at_ms: now_ms,
        from: st.status,
        to: DeviceStatus::Online,
        last_seen_ms: now_ms,
    };
    st.status = DeviceStatus::Online;
    st.status_since_ms = now_ms;
    Some(t)
}

/// The id of a device's series, created (and recorded in `undo`) if new and
/// the device is below `max_series`; `None` when the cap refuses it.
fn series_id(
    batch: &mut Staged,
    device: DeviceId,
    c: &mut DeviceCache,
    name: &str,
    label: &str,
    max_series: usize,
    undo: &mut Undo,
) -> Result<Option<SeriesId>> {
    let h = series_hash(name, label);
    if let Some(id) = c.series.get(&h) {
        return Ok(Some(*id));
    }
    if c.series.len() >= max_series {
        return Ok(None);
    }
    let id = c.next_series;
    let next = id.checked_add(1).ok_or_else(|| {
        StorageError::Invalid(format!("device {device} has used every series id"))
    })?;
    batch.put_raw(
        SERIES,
        &keys::series_name_key(device, name, label),
        &id.to_be_bytes(),
    )?;
    c.next_series = next;
    c.series.insert(h, id);
    undo.new_series.push((device, h));
    Ok(Some(id))
}

#[cfg(test)]
#[path = "ingest_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;
    use crate::query;
    use outpost_proto::messages::{Heartbeat, MetricValue, MetricsSample};

    fn hb(seq: u64, ts: u64) -> Record {
        Record {
            seq,
            ts_ms: ts,
            body: RecordBody::Heartbeat(Heartbeat {
                uptime_s: seq,
                buffered_records: 0,
                dropped_records: 0,
            }),
        }
    }

    fn metric(seq: u64, ts: u64, name: &str, v: f64) -> Record {
        Record {
            seq,
            ts_ms: ts,
            body: RecordBody::Metrics(MetricsSample {
                values: vec![MetricValue {
                    name: name.into(),
                    label: String::new(),
                    value: v,
                }],
            }),
        }
    }

    use crate::temp_store as open;

    #[test]
    fn package_scans_are_stored_once_in_the_inbox_by_device_and_seq() {
        use outpost_proto::messages::PackageScanRecord;
        let (_d, store) = open();
        let dev = DeviceId(3);
        let mut w = IngestWriter::new(store.clone(), 1_000).unwrap();
        let scan = |seq: u64| Record {
            seq,
            ts_ms: 1_000 + seq,
            body: RecordBody::PackageScan(PackageScanRecord {
                format: 1,
                full: seq == 1,
                part: 0,
                parts: 1,
                payload: vec![seq as u8; 10],
            }),
        };
        let group = |records: Vec<Record>| IncomingRecords {
            device: dev,
            records,
        };
        w.apply(&[group(vec![hb(1, 1_001), scan(2), scan(3)])], 2_000)
            .unwrap();
        // Replayed: acknowledged, not stored again.
        let out = w.apply(&[group(vec![scan(3)])], 2_000).unwrap();
        assert_eq!(out.duplicates, 1);
        let mut inbox = Vec::new();
        store
            .scan::<PackageScanRecord>(PACKAGE_SCANS_IN, &[], None, |k, v| {
                inbox.push((k.to_vec(), v.payload[0]));
                true
            })
            .unwrap();
        assert_eq!(
            inbox,
            vec![
                (keys::device_time_key(dev, 2).to_vec(), 2),
                (keys::device_time_key(dev, 3).to_vec(), 3)
            ]
        );
    }

    #[test]
    fn replayed_heartbeats_are_stored_once() {
        let (_d, store) = open();
        let dev = DeviceId(7);
        let mut w = IngestWriter::new(store.clone(), 1_000).unwrap();
        let first: Vec<Record> = (1..=10).map(|s| hb(s, 1_000 + s)).collect();
        let out = w
            .apply(
                &[IncomingRecords {
                    device: dev,
                    records: first.clone(),
                }],
                2_000,
            )
            .unwrap();
        assert_eq!(
            out.groups[0],
            GroupOutcome {
                ack_up_to: 10,
                prev_seq: 0,
                stored: 10,
                duplicates: 0,
                rejected_values: 0,
                series_rejected: 0,
                bad_timestamps: 0,
            }
        );
        // Replay 5..=15 (the agent lost some acks), in two groups of one batch.
        let replay: Vec<Record> = (5..=15).map(|s| hb(s, 1_000 + s)).collect();
        let out = w
            .apply(
                &[
                    IncomingRecords {
                        device: dev,
                        records: replay[..3].to_vec(),
                    },
                    IncomingRecords {
                        device: dev,
                        records: replay[3..].to_vec(),
                    },
                ],
                3_000,
            )
            .unwrap();
        assert_eq!(out.duplicates, 6);
        assert_eq!(out.stored, 5);
        assert_eq!(out.groups[1].ack_up_to, 15);
        let seqs: Vec<u64> = query::heartbeats(&store, dev, 0, u64::MAX, 1000)
            .unwrap()
            .iter()
            .map(|h| h.seq)
            .collect();
        assert_eq!(seqs, (1..=15).collect::<Vec<_>>());
    }

    #[test]
    fn a_commit_stores_a_devices_heartbeats_as_one_key_per_minute() {
        let (_d, store) = open();
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        // Two devices; device 1 sends 120 heartbeats over two minutes in
        // two groups of the same commit, device 2 sends 5.
        let d1: Vec<Record> = (1..=120).map(|s| hb(s, 60_000 + s * 1_000)).collect();
        let out = w
            .apply(
                &[
                    IncomingRecords {
                        device: DeviceId(1),
                        records: d1[..70].to_vec(),
                    },
                    IncomingRecords {
                        device: DeviceId(2),
                        records: (1..=5).map(|s| hb(s, 60_000 + s)).collect(),
                    },
                    IncomingRecords {
                        device: DeviceId(1),
                        records: d1[70..].to_vec(),
                    },
                ],
                200_000,
            )
            .unwrap();
        assert_eq!(out.stored, 125);
        let mut blocks = 0;
        store
            .scan_raw(HEARTBEAT_BLOCKS, &[], None, |_, _| {
                blocks += 1;
                Ok(true)
            })
            .unwrap();
        // Device 1: minutes 1, 2 and 3 (seq 120 lands on 180,000); device 2: one.
        assert_eq!(blocks, 4);
        let got: Vec<(u64, u64)> = query::heartbeats(&store, DeviceId(1), 0, u64::MAX, 1000)
            .unwrap()
            .iter()
            .map(|h| (h.seq, h.ts_ms))
            .collect();
        assert_eq!(
            got,
            (1..=120)
                .map(|s| (s, 60_000 + s * 1_000))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn high_water_mark_survives_restart() {
        let (dir, store) = open();
        let dev = DeviceId(9);
        {
            let mut w = IngestWriter::new(store.clone(), 0).unwrap();
            w.apply(
                &[IncomingRecords {
                    device: dev,
                    records: (1..=3).map(|s| hb(s, s)).collect(),
                }],
                10,
            )
            .unwrap();
        }
        drop(store);
        let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        assert_eq!(w.last_seq(dev).unwrap(), 3);
        let out = w
            .apply(
                &[IncomingRecords {
                    device: dev,
                    records: (1..=4).map(|s| hb(s, s)).collect(),
                }],
                20,
            )
            .unwrap();
        assert_eq!((out.stored, out.duplicates), (1, 3));
    }

    #[test]
    fn a_restart_shows_each_devices_last_contact_as_of_its_last_commit() {
        let (dir, store) = open();
        let (a, b) = (DeviceId(1), DeviceId(2));
        let group = |device: DeviceId, seqs: std::ops::RangeInclusive<u64>| IncomingRecords {
            device,
            records: seqs.map(|s| hb(s, s)).collect(),
        };
        {
            // The appliance clock is explicit (ms).
            let mut w = IngestWriter::new(store.clone(), 0).unwrap();
            w.apply(&[group(a, 1..=3), group(b, 1..=2)], 10_000)
                .unwrap();
            w.apply(&[group(a, 4..=4)], 12_500).unwrap();
            // A replay (nothing new stored) is contact too.
            w.apply(&[group(b, 1..=2)], 13_000).unwrap();
            // Several groups of one device in one commit: one state.
            w.apply(&[group(a, 5..=6), group(a, 7..=9)], 14_000)
                .unwrap();
        }
        drop(store);
        let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let w = IngestWriter::new(store, 20_000).unwrap();
        let (sa, sb) = (w.cached(a).unwrap().state, w.cached(b).unwrap().state);
        assert_eq!((sa.last_seen_ms, sa.last_seq), (14_000, 9));
        assert_eq!((sb.last_seen_ms, sb.last_seq), (13_000, 2));
    }

    #[test]
    fn invalid_values_are_rejected_and_counted() {
        let (_d, store) = open();
        let dev = DeviceId(1);
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        let recs = vec![
            metric(1, 100, "cpu", f64::NAN),
            metric(2, 200, &"x".repeat(MAX_NAME_BYTES + 1), 1.0),
            metric(3, 300, "cpu", 5.0),
            metric(4, 400, "bad\0name", 1.0),
        ];
        let out = w
            .apply(
                &[IncomingRecords {
                    device: dev,
                    records: recs,
                }],
                1000,
            )
            .unwrap();
        assert_eq!(out.rejected_values, 3);
        assert_eq!(
            out.groups[0].ack_up_to, 4,
            "records with bad values are still consumed"
        );
        let latest = query::latest_values(&store, dev).unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!((latest[0].name.as_str(), latest[0].value), ("cpu", 5.0));
    }

    #[test]
    fn online_offline_transitions_are_persisted() {
        let (_d, store) = open();
        let dev = DeviceId(5);
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        let hello = Hello {
            protocol_version: 1,
            agent_version: "t".into(),
            heartbeat_interval_ms: 1_000,
            metrics_interval_ms: 1_000,
        };
        let (_, t) = w.session_started(dev, &hello, 10_000).unwrap();
        assert_eq!(t.unwrap().to, DeviceStatus::Online);
        // 2 intervals + 500 ms grace after last seen.
        assert!(w.sweep_offline(12_400, 500).unwrap().is_empty());
        let off = w.sweep_offline(12_500, 500).unwrap();
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].1.to, DeviceStatus::Offline);
        assert!(
            w.sweep_offline(20_000, 500).unwrap().is_empty(),
            "no repeated transition"
        );
        let out = w
            .apply(
                &[IncomingRecords {
                    device: dev,
                    records: vec![hb(1, 1)],
                }],
                21_000,
            )
            .unwrap();
        assert_eq!(out.transitions.len(), 1);
        let log = query::status_log(&store, dev, 0, u64::MAX, 10).unwrap();
        let states: Vec<_> = log.iter().map(|t| t.to).collect();
        assert_eq!(
            states,
            vec![
                DeviceStatus::Online,
                DeviceStatus::Offline,
                DeviceStatus::Online
            ]
        );
        let st = store
            .get::<DeviceState>(DEVICE_STATE, &keys::device_key(dev))
            .unwrap()
            .unwrap();
        assert_eq!(st.status, DeviceStatus::Online);
        assert_eq!(st.last_seq, 1);
    }

    #[test]
    fn devices_online_before_restart_get_a_grace_period() {
        let (_d, store) = open();
        let dev = DeviceId(5);
        let hello = Hello {
            protocol_version: 1,
            agent_version: "t".into(),
            heartbeat_interval_ms: 1_000,
            metrics_interval_ms: 1_000,
        };
        IngestWriter::new(store.clone(), 0)
            .unwrap()
            .session_started(dev, &hello, 1_000)
            .unwrap();
        // Appliance restarts much later: the device is loaded as online and
        // is not declared offline before it had a chance to reconnect.
        let mut w = IngestWriter::new(store.clone(), 100_000).unwrap();
        assert!(w.sweep_offline(100_001, 500).unwrap().is_empty());
        assert_eq!(w.sweep_offline(102_500, 500).unwrap().len(), 1);
    }

    #[test]
    fn a_restart_grace_holds_devices_not_yet_back_and_not_those_heard_from_since() {
        let (_d, store) = open();
        let hello = Hello {
            protocol_version: 1,
            agent_version: "t".into(),
            heartbeat_interval_ms: 1_000,
            metrics_interval_ms: 1_000,
        };
        let mut before = IngestWriter::new(store.clone(), 0).unwrap();
        for d in 1..=3 {
            before.session_started(DeviceId(d), &hello, 1_000).unwrap();
        }
        drop(before);
        // Restart at 100 s with 60 s of readmission grace.
        let mut w = IngestWriter::new(store.clone(), 100_000).unwrap();
        assert_eq!(w.online_count(), 3);
        w.set_restart_grace(60_000);
        // Device 3 reconnects at once, then falls silent: its own deadline.
        w.session_started(DeviceId(3), &hello, 100_500).unwrap();
        let offline = |w: &mut IngestWriter, now| -> Vec<u64> {
            let mut v: Vec<u64> = w
                .sweep_offline(now, 500)
                .unwrap()
                .into_iter()
                .map(|(d, _)| d.0)
                .collect();
            v.sort_unstable();
            v
        };
        // Without the grace devices 1 and 2 would be offline at 102.5 s.
        assert_eq!(offline(&mut w, 103_000), vec![3]);
        assert!(offline(&mut w, 140_000).is_empty(), "still in their turn");
        // Device 2 comes back within the grace, then falls silent: from
        // then on its deadline counts from its last contact.
        w.session_started(DeviceId(2), &hello, 150_000).unwrap();
        assert!(offline(&mut w, 152_000).is_empty());
        assert_eq!(offline(&mut w, 152_500), vec![2]);
        // Device 1 never comes back: offline once the grace and the usual
        // deadline after it have passed.
        assert!(offline(&mut w, 162_499).is_empty(), "still in its turn");
        assert_eq!(offline(&mut w, 162_500), vec![1]);
    }

    fn metric_values(seq: u64, ts: u64, names: &[&str]) -> Record {
        Record {
            seq,
            ts_ms: ts,
            body: RecordBody::Metrics(MetricsSample {
                values: names
                    .iter()
                    .map(|n| MetricValue {
                        name: (*n).into(),
                        label: String::new(),
                        value: 1.0,
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn new_series_beyond_the_cap_are_rejected_and_counted_existing_keep_working() {
        let (_d, store) = open();
        let dev = DeviceId(3);
        let limits = IngestLimits {
            max_series_per_device: 2,
            ..IngestLimits::DEFAULT
        };
        let mut w = IngestWriter::with_limits(store.clone(), 0, limits).unwrap();
        let out = w
            .apply(
                &[IncomingRecords {
                    device: dev,
                    records: vec![
                        metric_values(1, 1_000, &["cpu", "mem"]),
                        metric_values(2, 2_000, &["cpu", "mem", "disk", "net"]),
                    ],
                }],
                10_000,
            )
            .unwrap();
        assert_eq!(out.series_rejected, 2, "disk and net are over the cap");
        assert_eq!(out.groups[0].series_rejected, 2);
        assert_eq!(out.samples, 4);
        assert_eq!(out.groups[0].ack_up_to, 2, "the records are consumed");
        // Existing series keep working, across a restart (the cap counts the
        // stored dictionary).
        drop(w);
        let mut w = IngestWriter::with_limits(store.clone(), 0, limits).unwrap();
        let out = w
            .apply(
                &[IncomingRecords {
                    device: dev,
                    records: vec![metric_values(3, 3_000, &["mem", "disk"])],
                }],
                10_000,
            )
            .unwrap();
        assert_eq!((out.samples, out.series_rejected), (1, 1));
        let names: Vec<String> = crate::rollup::device_series(&store, dev)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, vec!["cpu".to_string(), "mem".to_string()]);
        let mem = query::latest_values(&store, dev).unwrap();
        assert_eq!(mem.iter().find(|v| v.name == "mem").unwrap().ts_ms, 3_000);
        // Another device has its own allowance.
        let out = w
            .apply(
                &[IncomingRecords {
                    device: DeviceId(4),
                    records: vec![metric_values(1, 1_000, &["disk", "net"])],
                }],
                10_000,
            )
            .unwrap();
        assert_eq!((out.samples, out.series_rejected), (2, 0));
    }

    #[test]
    fn records_stamped_too_far_ahead_are_consumed_not_stored() {
        let (_d, store) = open();
        let dev = DeviceId(8);
        let now = 1_700_000_000_000u64;
        let day = 24 * 3600 * 1000;
        let mut w = IngestWriter::with_limits(store.clone(), now, IngestLimits::DEFAULT).unwrap();
        let out = w
            .apply(
                &[IncomingRecords {
                    device: dev,
                    records: vec![
                        hb(1, now - 30 * day),
                        hb(2, now + day),
                        hb(3, now + day + 1),
                        metric(4, u64::MAX, "cpu", 1.0),
                        hb(5, u64::MAX),
                        metric(6, now, "cpu", 2.0),
                    ],
                }],
                now,
            )
            .unwrap();
        assert_eq!(out.bad_timestamps, 3);
        assert_eq!(out.stored, 3);
        assert_eq!(out.groups[0].ack_up_to, 6, "rejected records are consumed");
        let ts: Vec<u64> = query::heartbeats(&store, dev, 0, u64::MAX, 100)
            .unwrap()
            .iter()
            .map(|h| h.ts_ms)
            .collect();
        assert_eq!(ts, vec![now - 30 * day, now + day]);
        let latest = query::latest_values(&store, dev).unwrap();
        assert_eq!((latest[0].ts_ms, latest[0].value), (now, 2.0));
        let st = w.cached(dev).unwrap().state;
        assert_eq!(st.last_heartbeat_ts_ms, now + day);
        assert_eq!(st.records_stored, 3);
    }

    /// Fails the `n`-th (from 0) check of one point, once.
    #[derive(Debug, Default)]
    pub(super) struct FailOnce {
        armed: std::sync::Mutex<Option<(FaultPoint, u32)>>,
        fired: std::sync::atomic::AtomicBool,
    }

    impl FailOnce {
        pub(super) fn arm(&self, point: FaultPoint, n: u32) {
            *self.armed.lock().unwrap() = Some((point, n));
        }
        /// Disarms; returns whether the failure happened since the last call.
        pub(super) fn fired(&self) -> bool {
            self.armed.lock().unwrap().take();
            self.fired.swap(false, std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl FaultInjector for FailOnce {
        fn check(&self, point: FaultPoint) -> Result<()> {
            let mut g = self.armed.lock().unwrap();
            if let Some((p, n)) = g.as_mut()
                && *p == point
            {
                if *n == 0 {
                    *g = None;
                    self.fired.store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(StorageError::Invalid(format!("injected {point:?} failure")));
                }
                *n -= 1;
            }
            Ok(())
        }
    }

    fn snapshot(w: &IngestWriter) -> (u64, Vec<(DeviceId, CachedDevice)>) {
        let mut devices: Vec<_> = w
            .cached_devices()
            .into_iter()
            .filter_map(|d| w.cached(d).map(|c| (d, c)))
            .collect();
        devices.sort_by_key(|(d, _)| *d);
        (w.online_count(), devices)
    }

    #[test]
    fn a_failed_apply_leaves_the_cache_as_it_was() {
        for point in [FaultPoint::Put, FaultPoint::Write, FaultPoint::Load] {
            let (_d, store) = open();
            let (a, b) = (DeviceId(1), DeviceId(2));
            let faults = Arc::new(FailOnce::default());
            let mut w = IngestWriter::new(store.clone(), 0).unwrap();
            w.set_fault_injector(faults.clone());
            w.apply(
                &[IncomingRecords {
                    device: a,
                    records: vec![metric(1, 1_000, "cpu", 1.0)],
                }],
                2_000,
            )
            .unwrap();
            let before = snapshot(&w);
            // New records, a new series, a new rollup bucket and chunk
            // window for `a`; a device not cached yet (`b`); the failure
            // comes late in the batch (at `b`, the second group).
            faults.arm(point, if point == FaultPoint::Put { 6 } else { 0 });
            let groups = [
                IncomingRecords {
                    device: a,
                    records: vec![
                        metric(2, 10 * 3_600_000, "cpu", 2.0),
                        metric(3, 10 * 3_600_000, "mem", 3.0),
                        hb(4, 10 * 3_600_000),
                    ],
                },
                IncomingRecords {
                    device: b,
                    records: vec![hb(1, 5_000), hb(2, 6_000)],
                },
            ];
            let err = match w.apply(&groups, 3_000) {
                Ok(out) => panic!("{point:?} did not fail: {out:?}"),
                Err(e) => e,
            };
            assert!(faults.fired(), "{point:?}");
            assert!(err.to_string().contains("injected"), "{err}");
            assert_eq!(snapshot(&w).0, before.0, "{point:?}: online count");
            for (d, c) in &before.1 {
                assert_eq!(w.cached(*d).as_ref(), Some(c), "{point:?}: cache of {d}");
            }
            // The Welcome answers what is stored, not what was attempted.
            let hello = Hello {
                protocol_version: 1,
                agent_version: "t".into(),
                heartbeat_interval_ms: 1_000,
                metrics_interval_ms: 1_000,
            };
            assert_eq!(
                w.session_started(a, &hello, 4_000).unwrap().0,
                1,
                "{point:?}"
            );
            assert_eq!(
                w.session_started(b, &hello, 4_000).unwrap().0,
                0,
                "{point:?}"
            );
            // The agents resend; everything is stored, with its series
            // name and its rollup and chunk markers.
            w.apply(&groups, 5_000).unwrap();
            let st = store
                .get::<DeviceState>(DEVICE_STATE, &keys::device_key(a))
                .unwrap()
                .unwrap();
            assert_eq!((st.last_seq, st.records_stored), (4, 4), "{point:?}");
            let names: Vec<String> = query::latest_values(&store, a)
                .unwrap()
                .into_iter()
                .map(|v| v.name)
                .collect();
            assert_eq!(names, vec!["cpu", "mem"], "{point:?}");
            let rolled = w.roll_up(u64::MAX, 0, 100).unwrap();
            assert!(
                rolled
                    .iter()
                    .any(|r| r.device == a && r.bucket_start_ms == 10 * 3_600_000),
                "{point:?}: the new bucket is rolled up"
            );
            assert!(w.seal_chunks(u64::MAX, 0, 100).unwrap() >= 2, "{point:?}");
        }
    }

    #[test]
    fn a_failed_sweep_or_session_start_leaves_the_cache_as_it_was() {
        let (_d, store) = open();
        let dev = DeviceId(6);
        let faults = Arc::new(FailOnce::default());
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        w.set_fault_injector(faults.clone());
        let hello = Hello {
            protocol_version: 1,
            agent_version: "t".into(),
            heartbeat_interval_ms: 1_000,
            metrics_interval_ms: 1_000,
        };
        faults.arm(FaultPoint::Write, 0);
        assert!(w.session_started(dev, &hello, 1_000).is_err());
        assert_eq!(w.online_count(), 0);
        assert_eq!(w.cached(dev).unwrap().state.status, DeviceStatus::Pending);
        w.session_started(dev, &hello, 1_000).unwrap();
        let before = snapshot(&w);
        faults.arm(FaultPoint::Put, 1);
        assert!(w.sweep_offline(100_000, 0).is_err());
        assert_eq!(snapshot(&w), before);
        faults.arm(FaultPoint::Write, 0);
        assert!(w.retire(dev, 100_000).is_err());
        assert_eq!(snapshot(&w), before, "a failed retire keeps the device");
        assert_eq!(w.sweep_offline(100_000, 0).unwrap().len(), 1);
        assert_eq!(w.online_count(), 0);
    }
}
