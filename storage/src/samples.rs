//! Raw samples: the head (written at ingest, in blocks; see [`crate::head`])
//! and sealed chunks (`chunks`; see [`crate::chunk`]): format-2 chunks, one
//! per device, group of [`GROUP_SERIES`] series and day, under
//! `device | GROUP_BASE + group | day start`, and format-1 chunks written by
//! earlier versions, one per series and 2-hour window under
//! `device | series | window start`. Readers see the union; where several
//! hold a timestamp, the newest wins (head over format 2 over format 1).
//! This module owns sealing and reading.

use std::collections::BTreeMap;

use outpost_proto::DeviceId;

use crate::chunk::{self, CHUNK_MS, GROUP_SERIES};
use crate::error::{Result, StorageError};
use crate::head::{self, Series};
use crate::keys::{self, SeriesId};
use crate::{Codec, Store, Table};

/// `device | name 0 label` → series id (u32 BE): each device's series
/// dictionary.
pub const SERIES: Table = Table::new("series").codec(Codec::Raw);
/// `device | GROUP_BASE + series / GROUP_SERIES | day start` → format-2 chunk,
/// and (older databases) `device | series | window start` → format-1 chunk
/// (see [`crate::chunk`]).
pub const CHUNKS: Table = Table::new("chunks").codec(Codec::Raw).bulk();
/// `device | window start` → () : windows with head samples to seal.
pub const CHUNK_DIRTY: Table = Table::new("chunk_dirty").codec(Codec::Raw);

/// The series field of format-2 chunk keys: `GROUP_BASE + group`. Real
/// series ids are dense from 0 and bounded far below it (10,000 per device
/// by default), so the two key families never meet.
pub const GROUP_BASE: SeriesId = 0xFFFF_0000;

/// The series group (format-2 chunk) a series belongs to.
pub fn group_of(series: SeriesId) -> SeriesId {
    GROUP_BASE + series / GROUP_SERIES
}

/// Key of the format-2 chunk holding `series` on the day starting `day`.
pub fn group_chunk_key(device: DeviceId, series: SeriesId, day: u64) -> [u8; 20] {
    keys::series_time_key(device, group_of(series), day)
}

fn head_in(
    store: &Store,
    device: DeviceId,
    series: SeriesId,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<(u64, f64)>> {
    let mut head = head::read(store, device, Series::One(series), from_ms, to_ms)?;
    Ok(head.samples.remove(&series).unwrap_or_default())
}

fn decode_chunk(v: &[u8]) -> Result<Vec<(u64, f64)>> {
    chunk::decode(v).map_err(|e| StorageError::Invalid(e.to_string()))
}

fn chunks_in(
    store: &Store,
    device: DeviceId,
    series: SeriesId,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<(u64, f64)>> {
    let in_range = |t: &u64| *t >= from_ms && *t < to_ms;
    // Format 1 (written before issue 18).
    let start = keys::series_time_key(device, series, chunk::window_start(from_ms));
    let end = keys::series_time_key(device, series, to_ms);
    let mut old = Vec::new();
    store.scan_raw(CHUNKS, &start, Some(&end), |_, v| {
        old.extend(decode_chunk(v)?.into_iter().filter(|(t, _)| in_range(t)));
        Ok(true)
    })?;
    // Format 2.
    let start = group_chunk_key(device, series, chunk::day_start(from_ms));
    let end = group_chunk_key(device, series, to_ms);
    let mut new = Vec::new();
    store.scan_raw(CHUNKS, &start, Some(&end), |_, v| {
        if let Some(s) = decode_group_series(v, series)? {
            new.extend(s.into_iter().filter(|(t, _)| in_range(t)));
        }
        Ok(true)
    })?;
    Ok(if old.is_empty() {
        new
    } else {
        chunk::merge(&old, &new)
    })
}

fn decode_group_series(v: &[u8], series: SeriesId) -> Result<Option<Vec<(u64, f64)>>> {
    chunk::decode_device_series(v, series).map_err(|e| StorageError::Invalid(e.to_string()))
}

fn decode_group(v: &[u8]) -> Result<Vec<chunk::SeriesSamples>> {
    chunk::decode_device(v).map_err(|e| StorageError::Invalid(e.to_string()))
}

/// Samples of one series in `[from, to)`, in time order. Stops early if `f`
/// returns `false`.
pub fn samples_in(
    store: &Store,
    device: DeviceId,
    series: SeriesId,
    from_ms: u64,
    to_ms: u64,
    mut f: impl FnMut(u64, f64) -> bool,
) -> Result<()> {
    let sealed = chunks_in(store, device, series, from_ms, to_ms)?;
    let head = head_in(store, device, series, from_ms, to_ms)?;
    for (t, v) in chunk::merge(&sealed, &head) {
        if !f(t, v) {
            break;
        }
    }
    Ok(())
}

/// Samples of each of `series` in `[from, to)`, each in time order; series
/// without any are left out. The device's head is read once for all.
pub fn device_samples_in(
    store: &Store,
    device: DeviceId,
    series: &[SeriesId],
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<chunk::SeriesSamples>> {
    let mut head = head::read(store, device, Series::All, from_ms, to_ms)?.samples;
    let mut out = Vec::new();
    for &s in series {
        let sealed = chunks_in(store, device, s, from_ms, to_ms)?;
        let h = head.remove(&s).unwrap_or_default();
        let all = if sealed.is_empty() {
            h
        } else {
            chunk::merge(&sealed, &h)
        };
        if !all.is_empty() {
            out.push((s, all));
        }
    }
    Ok(out)
}

/// The latest sample of one series.
pub fn latest(store: &Store, device: DeviceId, series: SeriesId) -> Result<Option<(u64, f64)>> {
    let from = keys::series_time_key(device, series, 0);
    let to = keys::series_time_key(device, series, u64::MAX);
    let head = head::latest(store, device, series)?;
    let old = match store.last_in_range(CHUNKS, &from, &to)? {
        Some((_, v)) => decode_chunk(&v)?.last().copied(),
        None => None,
    };
    // The newest format-2 chunk of the group that holds the series (a
    // series that stopped reporting is absent from later days' chunks).
    let lo = group_chunk_key(device, series, 0);
    let mut hi = group_chunk_key(device, series, u64::MAX).to_vec();
    let mut new = None;
    while let Some((k, v)) = store.last_in_range(CHUNKS, &lo, &hi)? {
        if let Some(s) = decode_group_series(&v, series)? {
            new = s.last().copied();
            break;
        }
        hi = k;
    }
    let newest = |a: Option<(u64, f64)>, b: Option<(u64, f64)>| match (a, b) {
        // On equal timestamps the newer store (b) wins.
        (Some(a), Some(b)) => Some(if a.0 > b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    Ok(newest(newest(old, new), head))
}

/// Seals up to `max_windows` dirty `(device, window)` pairs, from marker
/// key `from` on, whose window closed at least `settle_ms` ago: head samples
/// are merged into the window's chunk (late samples re-open a sealed window)
/// and removed from the head. Returns the pairs sealed and where the pass
/// resumes (see [`crate::dirty`]).
///
/// The write is not synced: losing it loses the head's deletion with the
/// chunk, so the window is sealed again from the head.
pub fn seal_dirty(
    store: &Store,
    from: &[u8],
    now_ms: u64,
    settle_ms: u64,
    max_windows: usize,
) -> Result<(Vec<(DeviceId, u64)>, crate::dirty::Resume)> {
    let (ready, resume) = crate::dirty::ready_markers(
        store,
        CHUNK_DIRTY,
        from,
        CHUNK_MS,
        settle_ms,
        now_ms,
        max_windows,
    )?;
    let mut batch = store.batch();
    // Markers come in key order: each device's ready windows together.
    for windows in ready.chunk_by(|a, b| a.0 == b.0) {
        let device = windows[0].0;
        let windows: Vec<u64> = windows.iter().map(|&(_, w)| w).collect();
        // The device's day chunks being sealed, by key: several windows of
        // one pass may fall on the same day; each chunk is written once.
        let mut open: OpenChunks = BTreeMap::new();
        for &w in &windows {
            let end = w.saturating_add(CHUNK_MS);
            let window = head::read(store, device, Series::All, w, end)?;
            for (series, head) in window.samples {
                let key = group_chunk_key(device, series, chunk::day_start(w));
                let group = match open.entry(key) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        let stored = match store.get_raw(CHUNKS, &key)? {
                            Some(v) => decode_group(&v)?.into_iter().collect(),
                            None => BTreeMap::new(),
                        };
                        e.insert(stored)
                    }
                };
                let merged = match group.remove(&series) {
                    Some(old) => chunk::merge(&old, &head),
                    None => head,
                };
                group.insert(series, merged);
            }
            head::delete_window(&mut batch, device, w, end, &window.legacy_series)?;
        }
        for &w in &windows {
            batch.delete(CHUNK_DIRTY, &keys::device_time_key(device, w))?;
        }
        flush(&mut batch, open)?;
    }
    if !ready.is_empty() {
        store.write_unsynced(batch)?;
    }
    Ok((ready, resume))
}

/// Day chunks being sealed: chunk key → series → samples.
type OpenChunks = BTreeMap<[u8; 20], BTreeMap<SeriesId, Vec<(u64, f64)>>>;

/// Encodes the open day chunks into `batch`.
fn flush(batch: &mut crate::Batch, open: OpenChunks) -> Result<()> {
    for (key, group) in open {
        let series: Vec<chunk::SeriesSamples> = group.into_iter().collect();
        batch.put_raw(CHUNKS, &key, &chunk::encode_device(&series))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;
    use crate::ingest::{IncomingRecords, IngestWriter};
    use crate::rollup::device_series;
    use outpost_proto::messages::{MetricValue, MetricsSample, Record, RecordBody};

    fn rec(seq: u64, ts: u64, v: f64) -> Record {
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

    /// Applies `records` of device `d` through the ingest writer.
    fn put(w: &mut IngestWriter, d: DeviceId, records: Vec<Record>) {
        w.apply(&[IncomingRecords { device: d, records }], 0)
            .unwrap();
    }

    fn all(store: &Store, d: DeviceId) -> Vec<(u64, f64)> {
        let mut v = Vec::new();
        samples_in(store, d, 0, 0, u64::MAX, |t, x| {
            v.push((t, x));
            true
        })
        .unwrap();
        v
    }

    #[test]
    fn sealing_moves_samples_to_chunks_without_changing_what_readers_see() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let d = DeviceId(1);
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        // Three windows of one-minute samples.
        let recs: Vec<Record> = (0..360u64)
            .map(|i| rec(i + 1, i * 60_000, (i % 50) as f64 / 4.0))
            .collect();
        put(&mut w, d, recs);
        let before = all(&store, d);
        assert_eq!(before.len(), 360);
        // Only closed windows are sealed.
        assert_eq!(w.seal_chunks(CHUNK_MS + 1, 0, 100).unwrap(), 1);
        assert_eq!(w.seal_chunks(10 * CHUNK_MS, 0, 100).unwrap(), 2);
        assert_eq!(all(&store, d), before);
        let head = head_in(&store, d, 0, 0, u64::MAX).unwrap();
        assert!(head.is_empty(), "head emptied: {} left", head.len());
        assert_eq!(
            latest(&store, d, 0).unwrap(),
            Some((359 * 60_000, (359 % 50) as f64 / 4.0))
        );

        // A late sample (replayed after an outage) re-opens its window.
        put(&mut w, d, vec![rec(400, 30_500, 99.5)]);
        assert_eq!(all(&store, d).len(), 361);
        assert_eq!(w.seal_chunks(10 * CHUNK_MS, 0, 100).unwrap(), 1);
        let after = all(&store, d);
        assert_eq!(after.len(), 361);
        assert!(after.contains(&(30_500, 99.5)));
        assert!(after.windows(2).all(|p| p[0].0 < p[1].0), "time order");
    }

    #[test]
    fn one_pass_seals_every_ready_window_of_each_device_and_leaves_the_open_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        // Two devices, three windows each (10-minute samples); the third
        // window is still open when the pass runs.
        let devices = [DeviceId(11), DeviceId(12)];
        for (n, &d) in devices.iter().enumerate() {
            let recs: Vec<Record> = (0..36u64)
                .map(|i| rec(i + 1, i * 600_000 + n as u64, i as f64 + n as f64 / 10.0))
                .collect();
            put(&mut w, d, recs);
        }
        let before: Vec<_> = devices.iter().map(|&d| all(&store, d)).collect();
        assert_eq!(w.seal_chunks(2 * CHUNK_MS + 1, 0, 100).unwrap(), 4);
        for (n, &d) in devices.iter().enumerate() {
            assert_eq!(all(&store, d), before[n], "readers see the same samples");
            let head = head_in(&store, d, 0, 0, u64::MAX).unwrap();
            assert_eq!(head.len(), 12, "only the open window stays in the head");
            assert!(head.iter().all(|&(t, _)| t >= 2 * CHUNK_MS));
            let sealed = chunks_in(&store, d, 0, 0, u64::MAX).unwrap();
            assert_eq!(
                sealed,
                before[n][..24].to_vec(),
                "both closed windows sealed"
            );
        }
        assert_eq!(count_chunks(&store), 2, "one day chunk per device");
    }

    #[test]
    fn a_malformed_head_entry_fails_the_seal_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let d = DeviceId(13);
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        put(&mut w, d, vec![rec(1, 60_000, 1.5)]);
        // A per-sample entry written before blocks, and a block.
        let bad: [(Table, Vec<u8>, &str); 2] = [
            (
                head::LEGACY,
                keys::series_time_key(d, 0, 120_000).to_vec(),
                "malformed sample entry",
            ),
            (
                head::BLOCKS,
                head::block_key(d, 0, 99).to_vec(),
                "malformed sample block",
            ),
        ];
        for (table, key, want) in bad {
            let mut b = store.batch();
            b.put_raw(table, &key, &[1, 2, 3]).unwrap();
            store.write(b).unwrap();
            let e = w.seal_chunks(10 * CHUNK_MS, 0, 100).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(count_chunks(&store), 0, "nothing half-sealed");
            let mut b = store.batch();
            b.delete(table, &key).unwrap();
            store.write(b).unwrap();
            assert_eq!(
                all(&store, d),
                vec![(60_000, 1.5)],
                "the good sample is still there"
            );
        }
        assert_eq!(w.seal_chunks(10 * CHUNK_MS, 0, 100).unwrap(), 1);
        assert_eq!(all(&store, d), vec![(60_000, 1.5)]);
    }

    /// A format-1 chunk as the code before issue 18 wrote it (series 0,
    /// samples 12.34 @ 1_700_000_000_000, 12.5 @ +60_003 ms, 99.99 @
    /// +120_001 ms). Frozen bytes: old databases hold exactly these.
    const OLD_CHUNK: [u8; 19] = [
        1, 3, 128, 208, 149, 255, 188, 49, 198, 169, 7, 9, 2, 164, 19, 32, 218, 136, 1,
    ];
    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn format_one_chunks_written_before_issue_18_are_still_read_and_merged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let d = DeviceId(7);
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        // The series dictionary exists (the device reported "cpu" before).
        put(&mut w, d, vec![rec(1, T0 + 5 * CHUNK_MS, 1.0)]);
        let mut b = store.batch();
        b.put_raw(
            CHUNKS,
            &keys::series_time_key(d, 0, chunk::window_start(T0)),
            &OLD_CHUNK,
        )
        .unwrap();
        store.write(b).unwrap();
        let old = vec![
            (T0, 12.34),
            (T0 + 60_003, 12.5),
            (T0 + 120_001, 99.99),
            (T0 + 5 * CHUNK_MS, 1.0),
        ];
        assert_eq!(all(&store, d), old);
        w.seal_chunks(T0 + 10 * CHUNK_MS, 0, 100).unwrap();
        assert_eq!(all(&store, d), old, "after sealing the head into format 2");
        // A late sample and a replay of an old one land in format 2; the
        // newer value wins, nothing is duplicated.
        put(
            &mut w,
            d,
            vec![rec(2, T0 + 30_000, 5.5), rec(3, T0 + 60_003, 12.75)],
        );
        w.seal_chunks(T0 + 10 * CHUNK_MS, 0, 100).unwrap();
        assert!(head_in(&store, d, 0, 0, u64::MAX).unwrap().is_empty());
        assert_eq!(
            all(&store, d),
            vec![
                (T0, 12.34),
                (T0 + 30_000, 5.5),
                (T0 + 60_003, 12.75),
                (T0 + 120_001, 99.99),
                (T0 + 5 * CHUNK_MS, 1.0),
            ]
        );
        assert_eq!(
            latest(&store, d, 0).unwrap(),
            Some((T0 + 5 * CHUNK_MS, 1.0))
        );
        let mut v = Vec::new();
        samples_in(&store, d, 0, T0 + 1, T0 + 120_001, |t, x| {
            v.push((t, x));
            true
        })
        .unwrap();
        assert_eq!(v, vec![(T0 + 30_000, 5.5), (T0 + 60_003, 12.75)]);
    }

    fn count_chunks(store: &Store) -> usize {
        let mut n = 0;
        store
            .scan_raw(CHUNKS, &[], None, |_, _| {
                n += 1;
                Ok(true)
            })
            .unwrap();
        n
    }

    #[test]
    fn a_day_of_windows_sealed_one_by_one_is_one_chunk_per_series_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let d = DeviceId(3);
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        let day = chunk::DAY_CHUNK_MS;
        let mut seq = 0;
        for i in 0..(day / 60_000) {
            seq += 1;
            let ts = day + i * 60_000;
            put(&mut w, d, vec![rec(seq, ts, (i % 97) as f64 / 100.0)]);
            // The appliance seals every window soon after it closes.
            w.seal_chunks(ts, 0, 100).unwrap();
        }
        w.seal_chunks(3 * day, 0, 100).unwrap();
        assert_eq!(count_chunks(&store), 1, "one day, one group");
        let got = all(&store, d);
        assert_eq!(got.len(), 1440);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, &(t, v))| t == day + i as u64 * 60_000
                    && v.to_bits() == (((i % 97) as f64) / 100.0).to_bits())
        );
        assert_eq!(latest(&store, d, 0).unwrap(), got.last().copied());
    }

    #[test]
    fn latest_finds_a_series_absent_from_the_newest_day_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let d = DeviceId(4);
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        let two = |seq, ts, names: &[&str]| Record {
            seq,
            ts_ms: ts,
            body: RecordBody::Metrics(MetricsSample {
                values: names
                    .iter()
                    .map(|n| MetricValue {
                        name: (*n).into(),
                        label: String::new(),
                        value: 2.5,
                    })
                    .collect(),
            }),
        };
        let day = chunk::DAY_CHUNK_MS;
        put(
            &mut w,
            d,
            vec![
                two(1, day + 10, &["cpu", "memory"]),
                two(2, 3 * day, &["cpu"]),
            ],
        );
        w.seal_chunks(10 * day, 0, 100).unwrap();
        assert_eq!(count_chunks(&store), 2);
        let mem = device_series(&store, d)
            .unwrap()
            .into_iter()
            .find(|s| s.name == "memory")
            .unwrap()
            .id;
        assert_eq!(latest(&store, d, mem).unwrap(), Some((day + 10, 2.5)));
    }
}
