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
//! Keys are deterministic too (`device | ts | seq`), so even a replay the
//! mark missed would overwrite itself rather than duplicate.
//!
//! The writer keeps a cache of per-device state (high-water mark, status,
//! series dictionary). If a write fails the cache is dropped and reloaded
//! from the database, so in-memory state never claims what is not on disk.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use outpost_proto::DeviceId;
use outpost_proto::messages::{Hello, Record, RecordBody};
use outpost_proto::metric_names::MAX_NAME_BYTES;

use crate::error::Result;
use crate::keys::{self, SeriesId};
use crate::model::{DeviceState, DeviceStatus, StatusTransition};
use crate::registry::INVENTORY;
use crate::rollup::{ROLLUP_DIRTY, bucket_start};
use crate::samples::{CHUNK_DIRTY, SAMPLES, SERIES};
use crate::{Batch, Store, Table};

/// `device` → `DeviceState` (last stored seq, last seen, online status).
pub const DEVICE_STATE: Table = Table::new("device_state");
/// `device | ts` → `StatusTransition`.
pub const STATUS_LOG: Table = Table::new("status_log").bulk();
/// `device | ts | seq` → `Heartbeat`.
pub const HEARTBEATS: Table = Table::new("heartbeats").bulk();

/// Records from one connection, in arrival order.
#[derive(Debug)]
pub struct IncomingRecords {
    pub device: DeviceId,
    pub records: Vec<Record>,
}

/// What happened to one [`IncomingRecords`] group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupOutcome {
    /// Every record of this device with `seq <= ack_up_to` is durable.
    pub ack_up_to: u64,
    /// The high-water mark before this group: its records with a higher
    /// sequence number were stored by this batch, the others were replays.
    pub prev_seq: u64,
    pub stored: u32,
    pub duplicates: u32,
    /// Metric values dropped as invalid (non-finite, oversize name).
    pub rejected_values: u32,
}

/// Totals for one committed batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub groups: Vec<GroupOutcome>,
    pub records: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub rejected_values: u64,
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
    /// State changed in the current batch and must be persisted.
    dirty: bool,
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
    /// Devices currently online (all of them are in `devices`).
    online: u64,
}

impl IngestWriter {
    /// Creates the writer and loads every device currently marked online, so
    /// the offline sweep covers devices that never reconnect after a restart.
    pub fn new(store: Store, now_ms: u64) -> Result<IngestWriter> {
        let mut w = IngestWriter {
            store,
            devices: HashMap::new(),
            started_ms: now_ms,
            online: 0,
        };
        w.load_online()?;
        Ok(w)
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

    fn cache(&mut self, device: DeviceId) -> Result<&mut DeviceCache> {
        if !self.devices.contains_key(&device) {
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
                        next_series = next_series.max(id + 1);
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
                    dirty: false,
                },
            );
        }
        // Just inserted or already present.
        self.devices
            .get_mut(&device)
            .ok_or_else(|| crate::StorageError::Invalid("device cache vanished".into()))
    }

    /// Highest stored sequence number of a device (for the session Welcome).
    pub fn last_seq(&mut self, device: DeviceId) -> Result<u64> {
        Ok(self.cache(device)?.state.last_seq)
    }

    /// Records a session start: the device is seen now and declares its
    /// heartbeat interval. Returns the high-water mark and any transition.
    pub fn session_started(
        &mut self,
        device: DeviceId,
        hello: &Hello,
        now_ms: u64,
    ) -> Result<(u64, Option<StatusTransition>)> {
        let mut batch = self.store.batch();
        let c = self.cache(device)?;
        c.state.heartbeat_interval_ms = hello.heartbeat_interval_ms.max(1000);
        let t = mark_seen(c, now_ms);
        if t.is_some() {
            self.online += 1;
        }
        let last_seq = self
            .devices
            .get(&device)
            .map(|c| c.state.last_seq)
            .unwrap_or(0);
        let state = self.devices.get(&device).map(|c| c.state.clone());
        if let Some(t) = &t {
            batch.put(STATUS_LOG, &keys::device_time_key(device, t.at_ms), t)?;
        }
        if let Some(state) = state {
            batch.put(DEVICE_STATE, &keys::device_key(device), &state)?;
        }
        self.commit(batch)?;
        Ok((last_seq, t))
    }

    /// Stores every group in one batch and returns per-group acks.
    pub fn apply(&mut self, groups: &[IncomingRecords], now_ms: u64) -> Result<BatchOutcome> {
        let mut batch = self.store.batch();
        let mut out = BatchOutcome {
            groups: Vec::with_capacity(groups.len()),
            ..BatchOutcome::default()
        };
        let store = self.store.clone();
        let bucket_width = store.rollup_bucket_ms();
        let mut touched: Vec<DeviceId> = Vec::new();
        let mut went_online = 0u64;
        for g in groups {
            let device = g.device;
            let c = self.cache(device)?;
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
                match &rec.body {
                    RecordBody::Heartbeat(h) => {
                        batch.put(
                            HEARTBEATS,
                            &keys::heartbeat_key(device, rec.ts_ms, rec.seq),
                            h,
                        )?;
                        if rec.ts_ms >= c.state.last_heartbeat_ts_ms {
                            c.state.last_heartbeat = Some(*h);
                            c.state.last_heartbeat_ts_ms = rec.ts_ms;
                        }
                    }
                    RecordBody::Metrics(m) => {
                        let bucket = bucket_start(rec.ts_ms, bucket_width);
                        let mut any = false;
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
                            let sid = series_id(&mut batch, device, c, &v.name, &v.label)?;
                            batch.put_raw(
                                SAMPLES,
                                &keys::series_time_key(device, sid, rec.ts_ms),
                                &v.value.to_le_bytes(),
                            )?;
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
            if !c.dirty {
                c.dirty = true;
                touched.push(device);
            }
            go.ack_up_to = c.state.last_seq;
            out.stored += u64::from(go.stored);
            out.duplicates += u64::from(go.duplicates);
            out.rejected_values += u64::from(go.rejected_values);
            out.groups.push(go);
        }
        for d in touched {
            if let Some(c) = self.devices.get_mut(&d) {
                c.dirty = false;
                batch.put(DEVICE_STATE, &keys::device_key(d), &c.state)?;
            }
        }
        self.online += went_online;
        self.commit(batch)?;
        Ok(out)
    }

    /// Declares offline every online device silent for longer than two
    /// heartbeat intervals plus `grace_ms`.
    pub fn sweep_offline(
        &mut self,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Vec<(DeviceId, StatusTransition)>> {
        let mut batch = self.store.batch();
        let mut out = Vec::new();
        for (d, c) in self.devices.iter_mut() {
            let st = &mut c.state;
            if st.status != DeviceStatus::Online {
                continue;
            }
            let seen = st.last_seen_ms.max(self.started_ms);
            let deadline = seen + 2 * u64::from(st.heartbeat_interval_ms) + grace_ms;
            if now_ms < deadline {
                continue;
            }
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
        self.online = self.online.saturating_sub(out.len() as u64);
        if !out.is_empty() {
            self.commit(batch)?;
        }
        Ok(out)
    }

    /// Devices currently online (every online device is cached: loaded at
    /// start or seen since).
    pub fn online_count(&self) -> u64 {
        self.online
    }

    /// Computes rollups for closed dirty buckets (see [`crate::rollup`]) on
    /// the writer, so no marker can be written between a bucket's read and
    /// the marker's deletion.
    pub fn roll_up(
        &mut self,
        now_ms: u64,
        settle_ms: u64,
        max_buckets: usize,
    ) -> Result<Vec<crate::rollup::RolledUp>> {
        let pass = crate::rollup::process_dirty(&self.store, now_ms, settle_ms, max_buckets)?;
        for (device, bucket) in pass.cleared {
            if let Some(c) = self.devices.get_mut(&device)
                && c.last_dirty_bucket == Some(bucket)
            {
                c.last_dirty_bucket = None;
            }
        }
        Ok(pass.rolled)
    }

    /// Seals closed chunk windows (see [`crate::samples::seal_dirty`]) on the
    /// writer, for the same reason as [`IngestWriter::roll_up`]. Rollups of
    /// a window must be computed before or after sealing, never lost: both
    /// read the union of head and chunks.
    pub fn seal_chunks(
        &mut self,
        now_ms: u64,
        settle_ms: u64,
        max_windows: usize,
    ) -> Result<usize> {
        let sealed = crate::samples::seal_dirty(&self.store, now_ms, settle_ms, max_windows)?;
        for (device, window) in &sealed {
            if let Some(c) = self.devices.get_mut(device)
                && c.last_chunk_window == Some(*window)
            {
                c.last_chunk_window = None;
            }
        }
        Ok(sealed.len())
    }

    /// Retires a device (revoked): marks it offline if it was online and
    /// drops it from the cache.
    pub fn retire(&mut self, device: DeviceId, now_ms: u64) -> Result<Option<StatusTransition>> {
        let Some(mut c) = self.devices.remove(&device) else {
            return Ok(None);
        };
        if c.state.status != DeviceStatus::Online {
            return Ok(None);
        }
        self.online = self.online.saturating_sub(1);
        let t = StatusTransition {
            at_ms: now_ms,
            from: DeviceStatus::Online,
            to: DeviceStatus::Offline,
            last_seen_ms: c.state.last_seen_ms,
        };
        c.state.status = DeviceStatus::Offline;
        c.state.status_since_ms = now_ms;
        let mut batch = self.store.batch();
        batch.put(STATUS_LOG, &keys::device_time_key(device, now_ms), &t)?;
        batch.put(DEVICE_STATE, &keys::device_key(device), &c.state)?;
        self.commit(batch)?;
        Ok(Some(t))
    }

    fn commit(&mut self, batch: Batch) -> Result<()> {
        if let Err(e) = self.store.write(batch) {
            // Nothing of this batch is durable: forget every cached mutation
            // and start again from what the database holds.
            self.devices.clear();
            if let Err(reload) = self.load_online() {
                tracing::error!(error = %reload, "reloading device state after a failed write");
            }
            return Err(e);
        }
        Ok(())
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

fn series_id(
    batch: &mut Batch,
    device: DeviceId,
    c: &mut DeviceCache,
    name: &str,
    label: &str,
) -> Result<SeriesId> {
    let h = series_hash(name, label);
    if let Some(id) = c.series.get(&h) {
        return Ok(*id);
    }
    let id = c.next_series;
    c.next_series += 1;
    batch.put_raw(
        SERIES,
        &keys::series_name_key(device, name, label),
        &id.to_be_bytes(),
    )?;
    c.series.insert(h, id);
    Ok(id)
}

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

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        (dir, s)
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
                rejected_values: 0
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
}
