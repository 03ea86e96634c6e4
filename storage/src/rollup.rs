//! 5-minute rollups (min, max, sum, count, last) computed from raw samples.
//!
//! The ingest writer marks `(device, bucket)` dirty when it stores a sample in
//! that bucket; [`process_dirty`] later computes the rollups of closed dirty
//! buckets from the raw samples, so a rollup always equals a direct
//! computation over what is stored, including samples replayed late (they
//! re-mark their bucket).

use std::collections::BTreeMap;

use outpost_proto::DeviceId;

use crate::error::Result;
use crate::keys::{self, SeriesId};
use crate::model::Rollup;
use crate::{Codec, Store, Table};

/// `device | series | bucket start` → `Rollup`.
pub const ROLLUPS: Table = Table::new("rollups").bulk();
/// `device | bucket start` → () : buckets with new samples to roll up.
pub const ROLLUP_DIRTY: Table = Table::new("rollup_dirty").codec(Codec::Raw);
/// Changes not yet compacted into an uplink batch, written only while the
/// site is joined to a central (see [`Store::uplink_tracking`]):
/// `'r' | device | bucket start | generation` → () for (re)computed rollups
/// (written here, in the same write as the rollups), `'a' | ts | n` → alert
/// transition (written by the alert engine through `outpost-uplink`),
/// `'p' | device` → patch compliance (the patch subsystem, same way).
/// Consumed by the uplink's compactor, which owns the values' meaning.
pub const UPLINK_PENDING: Table = Table::new("uplink_pending");

/// Rollup bucket width in production. The width in force is the store's
/// ([`Store::rollup_bucket_ms`]); only end-to-end tests shorten it.
pub const BUCKET_MS: u64 = 5 * 60 * 1000;

/// Start of the `width_ms`-wide bucket containing `ts_ms`.
pub fn bucket_start(ts_ms: u64, width_ms: u64) -> u64 {
    ts_ms - ts_ms % width_ms.max(1)
}

/// Key of an uplink-pending rollup marker: `'r' | device | bucket | generation`.
/// A recomputation writes a new generation, so a marker consumed by the
/// uplink compactor never hides a later recomputation of the same bucket.
pub fn uplink_rollup_marker(device: DeviceId, bucket_start_ms: u64, generation: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = UPLINK_ROLLUP_PREFIX;
    k[1..9].copy_from_slice(&device.to_be_bytes());
    k[9..17].copy_from_slice(&bucket_start_ms.to_be_bytes());
    k[17..].copy_from_slice(&generation.to_be_bytes());
    k
}

/// First byte of rollup markers in [`UPLINK_PENDING`].
pub const UPLINK_ROLLUP_PREFIX: u8 = b'r';

/// Splits a rollup marker key into (device, bucket start, generation).
pub fn parse_uplink_rollup_marker(key: &[u8]) -> Option<(DeviceId, u64, u64)> {
    if key.len() != 25 || key[0] != UPLINK_ROLLUP_PREFIX {
        return None;
    }
    Some((
        DeviceId(keys::be_u64(key, 1)?),
        keys::be_u64(key, 9)?,
        keys::be_u64(key, 17)?,
    ))
}

/// Folds `(ts, value)` samples into `width_ms`-wide rollups keyed by bucket
/// start (pure).
pub fn compute(
    samples: impl IntoIterator<Item = (u64, f64)>,
    width_ms: u64,
) -> BTreeMap<u64, Rollup> {
    let mut out: BTreeMap<u64, Rollup> = BTreeMap::new();
    for (ts, v) in samples {
        out.entry(bucket_start(ts, width_ms))
            .and_modify(|r| r.add(ts, v))
            .or_insert_with(|| Rollup::of(ts, v));
    }
    out
}

/// A rollup that was (re)computed.
#[derive(Debug, Clone, PartialEq)]
pub struct RolledUp {
    pub device: DeviceId,
    pub series: SeriesId,
    pub bucket_start_ms: u64,
    pub rollup: Rollup,
}

/// One series of a device: its name, label and per-device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesInfo {
    pub name: String,
    pub label: String,
    pub id: SeriesId,
}

/// All series of a device.
pub fn device_series(store: &Store, device: DeviceId) -> Result<Vec<SeriesInfo>> {
    let prefix = keys::device_key(device);
    let end = keys::prefix_successor(&prefix);
    let mut out = Vec::new();
    store.scan_raw(crate::samples::SERIES, &prefix, end.as_deref(), |k, v| {
        if let (Some((_, name, label)), Ok(id)) =
            (keys::parse_series_name_key(k), <[u8; 4]>::try_from(v))
        {
            out.push(SeriesInfo {
                name,
                label,
                id: u32::from_be_bytes(id),
            });
        }
        Ok(true)
    })?;
    Ok(out)
}

/// What one [`process_dirty`] slice did.
#[derive(Debug, Default)]
pub struct DirtyPass {
    /// Rollups written.
    pub rolled: Vec<RolledUp>,
    /// `(device, bucket start)` markers cleared.
    pub cleared: Vec<(DeviceId, u64)>,
    /// Where the pass resumes (`None`: it reached the last marker).
    pub resume: crate::dirty::Resume,
}

/// Computes rollups for up to `max_buckets` dirty buckets, from marker key
/// `from` on, that closed at least `settle_ms` ago (one slice of a pass, see
/// [`crate::dirty`]).
///
/// The write is not synced: rollups are derived from durable samples, and
/// losing them loses their markers' deletion too, so they are computed
/// again; the next synced write makes them durable.
pub fn process_dirty(
    store: &Store,
    from: &[u8],
    now_ms: u64,
    settle_ms: u64,
    max_buckets: usize,
) -> Result<DirtyPass> {
    let width = store.rollup_bucket_ms();
    let track = store.uplink_tracking();
    let (ready, resume) = crate::dirty::ready_markers(
        store,
        ROLLUP_DIRTY,
        from,
        width,
        settle_ms,
        now_ms,
        max_buckets,
    )?;
    let mut batch = store.batch();
    let mut done = Vec::new();
    // Markers are in device order: load each device's series once.
    let mut series_of: Option<DeviceId> = None;
    let mut series: Vec<SeriesInfo> = Vec::new();
    for &(device, bucket) in &ready {
        if series_of != Some(device) {
            series = device_series(store, device)?;
            series_of = Some(device);
        }
        let ids: Vec<SeriesId> = series.iter().map(|s| s.id).collect();
        let end = bucket.saturating_add(width);
        // The device's head is read once for all its series.
        for (sid, samples) in crate::samples::device_samples_in(store, device, &ids, bucket, end)? {
            let mut r: Option<Rollup> = None;
            for (ts, v) in samples {
                match &mut r {
                    Some(r) => r.add(ts, v),
                    None => r = Some(Rollup::of(ts, v)),
                }
            }
            if let Some(rollup) = r {
                batch.put(
                    ROLLUPS,
                    &keys::series_time_key(device, sid, bucket),
                    &rollup,
                )?;
                done.push(RolledUp {
                    device,
                    series: sid,
                    bucket_start_ms: bucket,
                    rollup,
                });
            }
        }
        batch.delete(ROLLUP_DIRTY, &keys::device_time_key(device, bucket))?;
        if track {
            // Same batch as the rollups: the uplink learns of exactly what
            // became durable, even across a crash.
            batch.put_raw(
                UPLINK_PENDING,
                &uplink_rollup_marker(device, bucket, now_ms),
                &[],
            )?;
        }
    }
    if !ready.is_empty() {
        store.write_unsynced(batch)?;
    }
    Ok(DirtyPass {
        rolled: done,
        cleared: ready,
        resume,
    })
}

/// Stored rollups of one series in `[from, to)` (bucket starts).
pub fn rollups_in(
    store: &Store,
    device: DeviceId,
    series: SeriesId,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<(u64, Rollup)>> {
    let start = keys::series_time_key(
        device,
        series,
        bucket_start(from_ms, store.rollup_bucket_ms()),
    );
    let end = keys::series_time_key(device, series, to_ms);
    let mut out = Vec::new();
    store.scan::<Rollup>(ROLLUPS, &start, Some(&end), |k, r| {
        if let Some((_, _, ts)) = keys::parse_series_time_key(k) {
            out.push((ts, r));
        }
        true
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;
    use crate::ingest::{IncomingRecords, IngestWriter};
    use outpost_proto::messages::{MetricValue, MetricsSample, Record, RecordBody};
    use proptest::prelude::*;

    fn sample(seq: u64, ts: u64, v: f64) -> Record {
        Record {
            seq,
            ts_ms: ts,
            body: RecordBody::Metrics(MetricsSample {
                values: vec![MetricValue {
                    name: "cpu".into(),
                    label: String::new(),
                    value: v,
                }],
            }),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Rollups computed by the pipeline (ingest in random groups, late
        /// samples after a first roll-up) equal a direct computation over
        /// the raw samples.
        #[test]
        fn rollups_equal_direct_computation(
            ts_set in proptest::collection::btree_set(0u64..(6 * BUCKET_MS), 1..200),
            values in proptest::collection::vec(-1e6f64..1e6, 200),
            split in 0usize..200,
            shuffle_seed in any::<u64>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
            let dev = DeviceId(3);
            let mut samples: Vec<(u64, f64)> =
                ts_set.iter().zip(values.iter()).map(|(t, v)| (*t, *v)).collect();
            // Arrival order is not time order.
            let n = samples.len();
            for i in 0..n {
                let j = (shuffle_seed.wrapping_mul(i as u64 + 1) % n as u64) as usize;
                samples.swap(i, j);
            }
            let records: Vec<Record> = samples
                .iter()
                .enumerate()
                .map(|(i, (t, v))| sample(i as u64 + 1, *t, *v))
                .collect();
            let cut = split.min(records.len());
            let mut w = IngestWriter::new(store.clone(), 0).unwrap();
            let far = 100 * BUCKET_MS;
            w.apply(&[IncomingRecords { device: dev, records: records[..cut].to_vec() }], 1).unwrap();
            w.roll_up(far, 0, usize::MAX).unwrap();
            // Late arrivals re-open their buckets.
            w.apply(&[IncomingRecords { device: dev, records: records[cut..].to_vec() }], 2).unwrap();
            w.roll_up(far, 0, usize::MAX).unwrap();

            let stored = rollups_in(&store, dev, 0, 0, far).unwrap();
            let mut expected = Vec::new();
            for b in 0..6 {
                let start = b * BUCKET_MS;
                let in_bucket: Vec<&(u64, f64)> =
                    samples.iter().filter(|(t, _)| *t >= start && *t < start + BUCKET_MS).collect();
                if in_bucket.is_empty() { continue; }
                let min = in_bucket.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
                let max = in_bucket.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
                let count = in_bucket.len() as u64;
                let last = in_bucket.iter().max_by_key(|s| s.0).unwrap();
                expected.push((start, min, max, count, last.1, last.0));
            }
            prop_assert_eq!(stored.len(), expected.len());
            for ((ts, r), (start, min, max, count, last, last_ts)) in stored.iter().zip(expected.iter()) {
                prop_assert_eq!(*ts, *start);
                prop_assert_eq!(r.min, *min);
                prop_assert_eq!(r.max, *max);
                prop_assert_eq!(r.count, *count);
                prop_assert_eq!(r.last, *last);
                prop_assert_eq!(r.last_ts_ms, *last_ts);
                let direct_sum: f64 = samples.iter().filter(|(t, _)| bucket_start(*t, BUCKET_MS) == *start).map(|s| s.1).sum();
                prop_assert!((r.sum - direct_sum).abs() <= 1e-6 * direct_sum.abs().max(1.0));
            }
        }
    }

    #[test]
    fn open_buckets_wait_for_settle_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let dev = DeviceId(3);
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        w.apply(
            &[IncomingRecords {
                device: dev,
                records: vec![sample(1, 1000, 1.0)],
            }],
            0,
        )
        .unwrap();
        assert!(
            w.roll_up(BUCKET_MS + 59_000, 60_000, 100)
                .unwrap()
                .is_empty()
        );
        let done = w.roll_up(BUCKET_MS + 60_000, 60_000, 100).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].rollup.count, 1);
        // Marker cleared: nothing more to do.
        assert!(w.roll_up(10 * BUCKET_MS, 0, 100).unwrap().is_empty());
    }

    #[test]
    fn bucket_width_belongs_to_each_store_not_the_process() {
        // Two stores in one process with different widths: each rolls up
        // with its own (this was a process-wide knob).
        let samples = [(1_000, 1.0), (61_000, 2.0), (121_000, 3.0)];
        let mut counts = Vec::new();
        for width in [60_000, BUCKET_MS] {
            let dir = tempfile::tempdir().unwrap();
            let opts = StoreOptions {
                rollup_bucket_ms: width,
                ..StoreOptions::default()
            };
            let store = Store::open(dir.path(), &opts, crate::TABLES).unwrap();
            assert_eq!(store.rollup_bucket_ms(), width);
            let mut w = IngestWriter::new(store.clone(), 0).unwrap();
            let records = samples
                .iter()
                .enumerate()
                .map(|(i, (t, v))| sample(i as u64 + 1, *t, *v))
                .collect();
            w.apply(
                &[IncomingRecords {
                    device: DeviceId(1),
                    records,
                }],
                0,
            )
            .unwrap();
            w.roll_up(10 * BUCKET_MS, 0, 100).unwrap();
            let stored = rollups_in(&store, DeviceId(1), 0, 0, 10 * BUCKET_MS).unwrap();
            assert_eq!(
                stored.iter().map(|(b, _)| *b).collect::<Vec<_>>(),
                compute(samples, width).into_keys().collect::<Vec<_>>()
            );
            counts.push(stored.len());
        }
        assert_eq!(counts, vec![3, 1]);
    }

    #[test]
    fn compute_folds_samples_into_buckets_of_the_given_width() {
        let r = compute([(0, 1.0), (59_999, 3.0), (60_000, 5.0)], 60_000);
        assert_eq!(r.len(), 2);
        assert_eq!((r[&0].count, r[&0].min, r[&0].max), (2, 1.0, 3.0));
        assert_eq!(r[&60_000].last, 5.0);
        assert_eq!(bucket_start(60_001, 60_000), 60_000);
    }

    #[test]
    fn rollups_leave_uplink_markers_only_while_tracking() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let dev = DeviceId(7);
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        let markers = |store: &Store| {
            let mut out = Vec::new();
            store
                .scan_raw(UPLINK_PENDING, &[], None, |k, _| {
                    out.push(parse_uplink_rollup_marker(k).unwrap());
                    Ok(true)
                })
                .unwrap();
            out
        };
        w.apply(
            &[IncomingRecords {
                device: dev,
                records: vec![sample(1, 1000, 1.0)],
            }],
            0,
        )
        .unwrap();
        w.roll_up(10 * BUCKET_MS, 0, 100).unwrap();
        assert!(markers(&store).is_empty(), "not joined: nothing pending");
        store.set_uplink_tracking(true);
        w.apply(
            &[IncomingRecords {
                device: dev,
                records: vec![sample(2, 2000, 2.0)],
            }],
            0,
        )
        .unwrap();
        w.roll_up(10 * BUCKET_MS, 0, 100).unwrap();
        assert_eq!(markers(&store), vec![(dev, 0, 10 * BUCKET_MS)]);
        // A late sample recomputes the bucket under a new generation.
        w.apply(
            &[IncomingRecords {
                device: dev,
                records: vec![sample(3, 3000, 3.0)],
            }],
            0,
        )
        .unwrap();
        w.roll_up(11 * BUCKET_MS, 0, 100).unwrap();
        assert_eq!(markers(&store).len(), 2);
    }
}
