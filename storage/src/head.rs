//! The head of raw samples, in blocks: one key per device, five-minute
//! window of sample time and group commit, holding every sample of that
//! device and window the commit stored. Sealing ([`crate::samples`])
//! moves closed windows into chunks and deletes their blocks.
//!
//! One key per sample (the layout before, [`LEGACY`]) cost the writer
//! thread a memtable insert per value: at the realistic mix (a metrics
//! record carries tens of values) that skip list was over half the
//! writer's CPU. A block costs one insert per device and commit. Heartbeats
//! moved to blocks for the same reason ([`crate::heartbeats`]).
//!
//! Key `device | window start | seq of the block's first record` (unique:
//! sequence numbers are unique per device and stored at most once). Value:
//! a version byte, then 16-byte entries: series id (u32 LE), milliseconds
//! into the window (u32 LE), value (f64 LE), in the order stored. Where
//! two entries hold the same series and timestamp the later one wins
//! (a later block, or later in the block), as the overwrite of a
//! per-sample key did; per-sample entries written before blocks are older
//! than every block.
//!
//! Readers take the device's blocks in one range scan and decode each
//! once, whatever the number of series asked for.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use outpost_proto::DeviceId;

use crate::error::{Result, StorageError};
use crate::keys::{self, SeriesId};
use crate::{Codec, ScanStep, Store, Table};

/// `device | window start | first seq` → block.
pub const BLOCKS: Table = Table::new("sample_blocks").codec(Codec::Raw).bulk();
/// `device | series | ts` → f64 (LE): one key per sample, written before
/// blocks. Read, sealed and expired, never written.
pub const LEGACY: Table = Table::new("samples").codec(Codec::Raw).bulk();

/// Width of a block's time window. Divides the 2-hour seal window and the
/// default 5-minute rollup bucket.
pub const WINDOW_MS: u64 = 5 * 60 * 1000;

const VERSION: u8 = 1;
const ENTRY_BYTES: usize = 16;

/// Start of the window holding `ts_ms`.
pub fn window_start(ts_ms: u64) -> u64 {
    ts_ms - ts_ms % WINDOW_MS
}

/// Key of a block.
pub fn block_key(device: DeviceId, window: u64, first_seq: u64) -> [u8; 24] {
    keys::heartbeat_key(device, window, first_seq)
}

/// The blocks one write batch stores: samples come in any order of devices
/// and windows; each block is written once, at the end.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    open: HashMap<(DeviceId, u64), (u64, Vec<u8>)>,
    samples: usize,
}

/// Where one record's samples go: its device's block for the record's
/// window (see [`BlockBuilder::record`]).
pub struct RecordSamples<'a> {
    buf: &'a mut Vec<u8>,
    ts_off: u32,
    samples: &'a mut usize,
}

impl RecordSamples<'_> {
    /// Adds one value of the record.
    pub fn push(&mut self, series: SeriesId, value: f64) {
        self.buf.extend_from_slice(&series.to_le_bytes());
        self.buf.extend_from_slice(&self.ts_off.to_le_bytes());
        self.buf.extend_from_slice(&value.to_le_bytes());
        *self.samples += 1;
    }
}

impl BlockBuilder {
    /// The block a record of `device` with sequence number `seq` and
    /// timestamp `ts_ms` adds its samples to. Per device, `seq` must be
    /// higher than every earlier one (the writer's dedupe guarantees it).
    pub fn record(&mut self, device: DeviceId, seq: u64, ts_ms: u64) -> RecordSamples<'_> {
        let window = window_start(ts_ms);
        let (_, buf) = self.open.entry((device, window)).or_insert_with(|| {
            let mut buf = Vec::with_capacity(1 + 8 * ENTRY_BYTES);
            buf.push(VERSION);
            (seq, buf)
        });
        RecordSamples {
            buf,
            // Below WINDOW_MS: fits.
            ts_off: (ts_ms - window) as u32,
            samples: &mut self.samples,
        }
    }

    /// Samples added.
    pub fn len(&self) -> usize {
        self.samples
    }

    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    /// The blocks as `(key, value)`, emptying the builder. A record that
    /// pushed no value leaves an empty block, which is skipped.
    pub fn drain(&mut self) -> impl Iterator<Item = ([u8; 24], Vec<u8>)> + '_ {
        self.samples = 0;
        self.open
            .drain()
            .filter(|(_, (_, buf))| buf.len() > 1)
            .map(|((device, window), (first, buf))| (block_key(device, window, first), buf))
    }
}

/// One block's entries as `(series, ts, value)`, checked.
pub fn decode_block(key: &[u8], value: &[u8]) -> Result<Vec<(SeriesId, u64, f64)>> {
    let bad = |why: &str| {
        StorageError::Invalid(format!(
            "malformed sample block ({} key bytes, {} value bytes): {why}",
            key.len(),
            value.len()
        ))
    };
    let window = match (key.len(), keys::be_u64(key, 8)) {
        (24, Some(w)) => w,
        _ => return Err(bad("bad key")),
    };
    let Some((&version, entries)) = value.split_first() else {
        return Err(bad("empty"));
    };
    if version != VERSION {
        return Err(bad(&format!("unknown version {version}")));
    }
    if entries.len() % ENTRY_BYTES != 0 {
        return Err(bad("truncated entry"));
    }
    let mut out = Vec::with_capacity(entries.len() / ENTRY_BYTES);
    for e in entries.chunks_exact(ENTRY_BYTES) {
        let field = |at: usize| -> [u8; 4] { [e[at], e[at + 1], e[at + 2], e[at + 3]] };
        let series = u32::from_le_bytes(field(0));
        let off = u64::from(u32::from_le_bytes(field(4)));
        if off >= WINDOW_MS {
            return Err(bad("timestamp outside its window"));
        }
        let mut v = [0u8; 8];
        v.copy_from_slice(&e[8..16]);
        out.push((series, window + off, f64::from_le_bytes(v)));
    }
    Ok(out)
}

/// Which series a read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    One(SeriesId),
    All,
}

impl Series {
    fn wants(self, s: SeriesId) -> bool {
        match self {
            Series::One(x) => x == s,
            Series::All => true,
        }
    }
}

/// Head samples of one device, by series, each in time order with one
/// value per timestamp (the newest write).
pub type HeadSamples = BTreeMap<SeriesId, Vec<(u64, f64)>>;

/// What [`read`] found.
#[derive(Debug, Default)]
pub struct Head {
    pub samples: HeadSamples,
    /// Series that had per-sample ([`LEGACY`]) entries in the range.
    pub legacy_series: BTreeSet<SeriesId>,
}

/// Head samples of `device` in `[from, to)` for `series`.
pub fn read(
    store: &Store,
    device: DeviceId,
    series: Series,
    from_ms: u64,
    to_ms: u64,
) -> Result<Head> {
    let mut head = Head::default();
    if from_ms >= to_ms {
        return Ok(head);
    }
    read_legacy(store, device, series, from_ms, to_ms, &mut head)?;
    // Oldest write first: legacy entries, then blocks in key order (per
    // window, in commit order), each in its stored order.
    store.scan_raw(
        BLOCKS,
        &block_key(device, window_start(from_ms), 0),
        Some(&block_key(device, to_ms, 0)),
        |k, v| {
            for (s, ts, val) in decode_block(k, v)? {
                if series.wants(s) && ts >= from_ms && ts < to_ms {
                    head.samples.entry(s).or_default().push((ts, val));
                }
            }
            Ok(true)
        },
    )?;
    for samples in head.samples.values_mut() {
        newest_per_timestamp(samples);
    }
    Ok(head)
}

/// Sorts by time and keeps, of each timestamp, the value written last
/// (the stable sort keeps equal timestamps in write order).
fn newest_per_timestamp(samples: &mut Vec<(u64, f64)>) {
    samples.sort_by_key(|s| s.0);
    let mut out: Vec<(u64, f64)> = Vec::with_capacity(samples.len());
    for &s in samples.iter() {
        match out.last_mut() {
            Some(last) if last.0 == s.0 => *last = s,
            _ => out.push(s),
        }
    }
    *samples = out;
}

/// A legacy entry's series, timestamp and value.
fn legacy_entry(k: &[u8], v: &[u8]) -> Result<(SeriesId, u64, f64)> {
    match (
        keys::parse_series_time_key(k),
        <[u8; 8]>::try_from(v).ok().map(f64::from_le_bytes),
    ) {
        (Some((_, series, ts)), Some(val)) => Ok((series, ts, val)),
        _ => Err(StorageError::Invalid(format!(
            "malformed sample entry ({} key bytes, {} value bytes)",
            k.len(),
            v.len()
        ))),
    }
}

/// The [`LEGACY`] part of [`read`]: one iterator over the device's
/// entries, seeking to `from` in each series and past `to` to the next.
fn read_legacy(
    store: &Store,
    device: DeviceId,
    series: Series,
    lo: u64,
    hi: u64,
    head: &mut Head,
) -> Result<()> {
    let (from, to) = match series {
        Series::One(s) => (
            keys::series_time_key(device, s, lo).to_vec(),
            Some(keys::series_time_key(device, s, hi).to_vec()),
        ),
        Series::All => (
            keys::series_time_key(device, 0, lo).to_vec(),
            keys::prefix_successor(&keys::device_key(device)),
        ),
    };
    store.scan_raw_seeking(LEGACY, &from, to.as_deref(), |k, v| {
        let (s, ts, val) = legacy_entry(k, v)?;
        if ts < lo {
            return Ok(ScanStep::Seek(
                keys::series_time_key(device, s, lo).to_vec(),
            ));
        }
        if ts >= hi {
            return Ok(match s.checked_add(1) {
                Some(next) => ScanStep::Seek(keys::series_time_key(device, next, lo).to_vec()),
                None => ScanStep::Stop,
            });
        }
        head.legacy_series.insert(s);
        head.samples.entry(s).or_default().push((ts, val));
        Ok(ScanStep::Next)
    })
}

/// The newest head sample of one series.
pub fn latest(store: &Store, device: DeviceId, series: SeriesId) -> Result<Option<(u64, f64)>> {
    // Blocks: the device's newest window holding the series (a series that
    // stopped reporting is absent from later windows).
    let lo = block_key(device, 0, 0);
    let mut hi =
        keys::prefix_successor(&keys::device_key(device)).unwrap_or_else(|| vec![0xFF; 25]);
    let mut newest = None;
    while let Some((k, _)) = store.last_in_range(BLOCKS, &lo, &hi)? {
        let Some(window) = keys::be_u64(&k, 8) else {
            return Err(StorageError::Invalid(format!(
                "malformed sample block key ({} bytes)",
                k.len()
            )));
        };
        let head = read(
            store,
            device,
            Series::One(series),
            window,
            window.saturating_add(WINDOW_MS),
        )?;
        if let Some(last) = head.samples.get(&series).and_then(|s| s.last()) {
            newest = Some(*last);
            break;
        }
        hi = block_key(device, window, 0).to_vec();
    }
    // Legacy entries are older than every block: only without one.
    if newest.is_none() {
        let from = keys::series_time_key(device, series, 0);
        let to = keys::series_time_key(device, series, u64::MAX);
        if let Some((k, v)) = store.last_in_range(LEGACY, &from, &to)? {
            let (_, ts, val) = legacy_entry(&k, &v)?;
            newest = Some((ts, val));
        }
    }
    Ok(newest)
}

/// Adds to `batch` the deletion of `device`'s head in `[from, to)`
/// (window-aligned), given the series [`read`] found legacy entries of.
pub fn delete_window(
    batch: &mut crate::Batch,
    device: DeviceId,
    from_ms: u64,
    to_ms: u64,
    legacy_series: &BTreeSet<SeriesId>,
) -> Result<()> {
    batch.delete_range(
        BLOCKS,
        &block_key(device, from_ms, 0),
        &block_key(device, to_ms, 0),
    )?;
    for &s in legacy_series {
        batch.delete_range(
            LEGACY,
            &keys::series_time_key(device, s, from_ms),
            &keys::series_time_key(device, s, to_ms),
        )?;
    }
    Ok(())
}

/// The block key range of `device`'s head older than `cutoff_ms`, for
/// retention: whole windows.
pub fn expired_blocks(device: DeviceId, cutoff_ms: u64) -> ([u8; 24], [u8; 24]) {
    (
        block_key(device, 0, 0),
        block_key(device, window_start(cutoff_ms), 0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::temp_store as open;

    fn write(store: &Store, b: &mut BlockBuilder) {
        let mut batch = store.batch();
        for (key, block) in b.drain() {
            batch.put_raw(BLOCKS, &key, &block).unwrap();
        }
        store.write(batch).unwrap();
    }

    #[test]
    fn a_block_round_trips_and_reads_filter_by_series_and_time() {
        let (_dir, store) = open();
        let d = DeviceId(5);
        let mut b = BlockBuilder::default();
        // Two records in one window, one in the next, one of another device.
        let mut r = b.record(d, 1, 1_000);
        r.push(0, 1.5);
        r.push(1, 2.5);
        let mut r = b.record(d, 2, 61_000);
        r.push(0, 3.5);
        b.record(d, 3, WINDOW_MS + 7).push(1, 4.5);
        b.record(DeviceId(6), 1, 1_000).push(0, 9.0);
        assert_eq!(b.len(), 5);
        write(&store, &mut b);
        assert!(b.is_empty());

        let all = read(&store, d, Series::All, 0, u64::MAX).unwrap();
        assert_eq!(all.samples[&0], vec![(1_000, 1.5), (61_000, 3.5)]);
        assert_eq!(all.samples[&1], vec![(1_000, 2.5), (WINDOW_MS + 7, 4.5)]);
        assert!(all.legacy_series.is_empty());
        let one = read(&store, d, Series::One(1), 1_001, WINDOW_MS + 8).unwrap();
        assert_eq!(one.samples.len(), 1);
        assert_eq!(one.samples[&1], vec![(WINDOW_MS + 7, 4.5)]);
        assert_eq!(latest(&store, d, 0).unwrap(), Some((61_000, 3.5)));
        assert_eq!(latest(&store, d, 1).unwrap(), Some((WINDOW_MS + 7, 4.5)));
        assert_eq!(latest(&store, d, 2).unwrap(), None);
        assert_eq!(latest(&store, DeviceId(7), 0).unwrap(), None);
    }

    #[test]
    fn the_newest_write_of_a_timestamp_wins_over_blocks_and_legacy_entries() {
        let (_dir, store) = open();
        let d = DeviceId(5);
        let mut batch = store.batch();
        batch
            .put_raw(
                LEGACY,
                &keys::series_time_key(d, 0, 10),
                &1.0f64.to_le_bytes(),
            )
            .unwrap();
        batch
            .put_raw(
                LEGACY,
                &keys::series_time_key(d, 0, 20),
                &2.0f64.to_le_bytes(),
            )
            .unwrap();
        store.write(batch).unwrap();
        let mut b = BlockBuilder::default();
        b.record(d, 5, 20).push(0, 3.0);
        write(&store, &mut b);
        // A later commit, and a later record in it, at the same time again.
        b.record(d, 6, 20).push(0, 4.0);
        b.record(d, 7, 20).push(0, 5.0);
        write(&store, &mut b);
        let head = read(&store, d, Series::All, 0, 100).unwrap();
        assert_eq!(head.samples[&0], vec![(10, 1.0), (20, 5.0)]);
        assert_eq!(head.legacy_series, BTreeSet::from([0]));
        assert_eq!(latest(&store, d, 0).unwrap(), Some((20, 5.0)));
    }

    #[test]
    fn latest_walks_back_to_the_window_that_holds_the_series() {
        let (_dir, store) = open();
        let d = DeviceId(5);
        let mut b = BlockBuilder::default();
        b.record(d, 1, 10).push(3, 1.25);
        b.record(d, 2, 5 * WINDOW_MS).push(4, 2.0);
        write(&store, &mut b);
        assert_eq!(latest(&store, d, 3).unwrap(), Some((10, 1.25)));
        // Legacy entries only count without any block of the series.
        let mut batch = store.batch();
        batch
            .put_raw(
                LEGACY,
                &keys::series_time_key(d, 9, 7),
                &6.0f64.to_le_bytes(),
            )
            .unwrap();
        store.write(batch).unwrap();
        assert_eq!(latest(&store, d, 9).unwrap(), Some((7, 6.0)));
    }

    #[test]
    fn malformed_blocks_are_clear_errors() {
        let key = block_key(DeviceId(1), WINDOW_MS, 1);
        let mut good = vec![VERSION];
        good.extend_from_slice(&7u32.to_le_bytes());
        good.extend_from_slice(&5u32.to_le_bytes());
        good.extend_from_slice(&2.5f64.to_le_bytes());
        assert_eq!(
            decode_block(&key, &good).unwrap(),
            vec![(7, WINDOW_MS + 5, 2.5)]
        );
        let cases: [(&[u8], &[u8], &str); 5] = [
            (&key, &[], "empty"),
            (&key, &[9], "unknown version 9"),
            (&key, &good[..10], "truncated entry"),
            (&key[..20], &good, "bad key"),
            (
                &key,
                &[
                    &[VERSION][..],
                    &0u32.to_le_bytes(),
                    &(WINDOW_MS as u32).to_le_bytes(),
                    &[0; 8],
                ]
                .concat(),
                "outside its window",
            ),
        ];
        for (k, v, want) in cases {
            let e = decode_block(k, v).unwrap_err().to_string();
            assert!(
                e.contains("malformed sample block") && e.contains(want),
                "{e}"
            );
        }
    }

    #[test]
    fn a_record_without_values_leaves_no_block_and_retention_covers_whole_windows() {
        let mut b = BlockBuilder::default();
        b.record(DeviceId(1), 1, 5);
        assert_eq!(b.drain().count(), 0);
        let (from, to) = expired_blocks(DeviceId(1), WINDOW_MS + 1);
        assert_eq!(from, block_key(DeviceId(1), 0, 0));
        assert_eq!(to, block_key(DeviceId(1), WINDOW_MS, 0));
    }
}
