//! Heartbeats, stored in blocks: one key per device, minute of heartbeat
//! time and group commit, holding every heartbeat of that device and
//! minute the commit stored.
//!
//! One key per heartbeat (the layout before, [`LEGACY`]) cost a memtable
//! insert per record on the writer thread and, worse, made compaction
//! rewrite every earlier heartbeat on each flush: keys lead with the
//! device, so every flushed file overlaps the whole table and each
//! compaction into the bottom level merged all of it again (at 1 M
//! heartbeats/s: 48 of the first 60 s of compaction CPU, writes stalled on
//! 20 level-0 files). A block holds every heartbeat a commit brings for a
//! device and minute: under load tens of records per key, at real cadence
//! (one heartbeat per 30 s) one, as before.
//!
//! Key `device | minute start | seq of the block's first record`, value a
//! bincode [`Block`]: each entry's offset into the minute, its sequence
//! number's offset from the first, and the heartbeat. Sequence numbers are
//! unique per device (the writer stores each at most once, and the key's
//! first sequence number is a stored one), so keys never collide; a reader
//! still drops a repeated `(ts, seq)` should one be stored twice.
//!
//! Databases written before blocks keep their per-record keys in
//! [`LEGACY`]; readers see the union and retention empties both.

use std::collections::HashMap;

use outpost_proto::DeviceId;
use outpost_proto::messages::Heartbeat;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::keys;
use crate::{Store, Table};

/// `device | minute start | first seq` → [`Block`].
pub const BLOCKS: Table = Table::new("heartbeat_blocks").bulk();
/// `device | ts | seq` → `Heartbeat`: one key per heartbeat, written before
/// blocks. Read and expired, never written.
pub const LEGACY: Table = Table::new("heartbeats").bulk();

/// Width of a block's time window.
pub const WINDOW_MS: u64 = 60_000;

/// Start of the window holding `ts_ms`.
pub fn window_start(ts_ms: u64) -> u64 {
    ts_ms - ts_ms % WINDOW_MS
}

/// One heartbeat in a block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Milliseconds after the window's start (below [`WINDOW_MS`]).
    pub ts_off_ms: u32,
    /// Sequence number minus the block's first.
    pub seq_off: u64,
    pub heartbeat: Heartbeat,
}

/// A block's value: its heartbeats in the order they were stored.
pub type Block = Vec<Entry>;

/// A stored heartbeat, as readers see it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatEntry {
    pub ts_ms: u64,
    pub seq: u64,
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
}

/// The blocks one write batch stores: heartbeats are added in any order of
/// devices and windows, each block is written once at the end.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    open: HashMap<(DeviceId, u64), (u64, Block)>,
}

impl BlockBuilder {
    /// Adds a heartbeat. Per device, `seq` must be higher than every
    /// earlier one added (the writer's dedupe guarantees it).
    pub fn add(&mut self, device: DeviceId, ts_ms: u64, seq: u64, heartbeat: Heartbeat) {
        let window = window_start(ts_ms);
        let (first, block) = self
            .open
            .entry((device, window))
            .or_insert_with(|| (seq, Vec::new()));
        block.push(Entry {
            // Below WINDOW_MS: fits.
            ts_off_ms: (ts_ms - window) as u32,
            seq_off: seq.saturating_sub(*first),
            heartbeat,
        });
    }

    /// Heartbeats added.
    pub fn len(&self) -> usize {
        self.open.values().map(|(_, b)| b.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The blocks as `(key, block)`, emptying the builder.
    pub fn drain(&mut self) -> impl Iterator<Item = ([u8; 24], Block)> + '_ {
        self.open.drain().map(|((device, window), (first, block))| {
            (keys::heartbeat_key(device, window, first), block)
        })
    }
}

/// Heartbeats of `device` in `[from, to)`, oldest first (by time, then
/// sequence number), at most `limit`.
pub fn read(
    store: &Store,
    device: DeviceId,
    from_ms: u64,
    to_ms: u64,
    limit: usize,
) -> Result<Vec<HeartbeatEntry>> {
    let mut old = Vec::new();
    if limit == 0 || from_ms >= to_ms {
        return Ok(old);
    }
    store.scan::<Heartbeat>(
        LEGACY,
        &keys::heartbeat_key(device, from_ms, 0),
        Some(&keys::heartbeat_key(device, to_ms, 0)),
        |k, heartbeat| {
            if let (Some(ts_ms), Some(seq)) = (keys::be_u64(k, 8), keys::be_u64(k, 16)) {
                old.push(HeartbeatEntry {
                    ts_ms,
                    seq,
                    heartbeat,
                });
            }
            old.len() < limit
        },
    )?;
    let new = read_blocks(store, device, from_ms, to_ms, limit)?;
    let mut out = if old.is_empty() {
        new
    } else {
        let mut all = old;
        all.extend(new);
        in_order(&mut all);
        all
    };
    out.truncate(limit);
    Ok(out)
}

/// Sorts heartbeats by time, then sequence number, dropping a repeat.
fn in_order(beats: &mut Vec<HeartbeatEntry>) {
    beats.sort_by_key(|b| (b.ts_ms, b.seq));
    beats.dedup_by_key(|b| (b.ts_ms, b.seq));
}

/// The blocks' part of [`read`]: window by window (a window's blocks may
/// interleave in time: a late heartbeat lands in its own minute's window
/// in a later commit), until `limit` heartbeats are in.
fn read_blocks(
    store: &Store,
    device: DeviceId,
    from_ms: u64,
    to_ms: u64,
    limit: usize,
) -> Result<Vec<HeartbeatEntry>> {
    let mut out = Vec::new();
    let mut window: Vec<HeartbeatEntry> = Vec::new();
    let mut current = None;
    // Sorts the finished window's heartbeats into `out`; false once full.
    let finish = |window: &mut Vec<HeartbeatEntry>, out: &mut Vec<HeartbeatEntry>| {
        in_order(window);
        out.append(window);
        out.len() < limit
    };
    let mut full = false;
    store.scan::<Block>(
        BLOCKS,
        &keys::heartbeat_key(device, window_start(from_ms), 0),
        Some(&keys::heartbeat_key(device, to_ms, 0)),
        |k, block| {
            let (Some(start), Some(first)) = (keys::be_u64(k, 8), keys::be_u64(k, 16)) else {
                return true;
            };
            if current != Some(start) {
                if !finish(&mut window, &mut out) {
                    full = true;
                    return false;
                }
                current = Some(start);
            }
            window.extend(block.into_iter().filter_map(|e| {
                let ts_ms = start.saturating_add(u64::from(e.ts_off_ms));
                (ts_ms >= from_ms && ts_ms < to_ms).then_some(HeartbeatEntry {
                    ts_ms,
                    seq: first.saturating_add(e.seq_off),
                    heartbeat: e.heartbeat,
                })
            }));
            true
        },
    )?;
    if !full {
        finish(&mut window, &mut out);
    }
    Ok(out)
}

/// The key ranges of `device`'s heartbeats older than `cutoff_ms`, per
/// table, for retention: whole windows (a window straddling the cutoff
/// stays until it is wholly older).
pub fn expired_ranges(device: DeviceId, cutoff_ms: u64) -> [(Table, [u8; 24], [u8; 24]); 2] {
    [
        (
            BLOCKS,
            keys::heartbeat_key(device, 0, 0),
            keys::heartbeat_key(device, window_start(cutoff_ms), 0),
        ),
        (
            LEGACY,
            keys::heartbeat_key(device, 0, 0),
            keys::heartbeat_key(device, cutoff_ms, 0),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(uptime_s: u64) -> Heartbeat {
        Heartbeat {
            uptime_s,
            buffered_records: 0,
            dropped_records: 0,
        }
    }

    use crate::temp_store as open;

    fn write(store: &Store, b: &mut BlockBuilder) {
        let mut batch = store.batch();
        for (key, block) in b.drain() {
            batch.put(BLOCKS, &key, &block).unwrap();
        }
        store.write(batch).unwrap();
    }

    fn commit(store: &Store, beats: &[(u64, u64, u64)]) {
        let d = DeviceId(1);
        let mut b = BlockBuilder::default();
        for &(ts, seq, up) in beats {
            b.add(d, ts, seq, hb(up));
        }
        write(store, &mut b);
        assert!(b.is_empty());
    }

    fn beats(store: &Store, from: u64, to: u64, limit: usize) -> Vec<(u64, u64)> {
        read(store, DeviceId(1), from, to, limit)
            .unwrap()
            .into_iter()
            .map(|b| (b.ts_ms, b.seq))
            .collect()
    }

    #[test]
    fn a_commit_stores_one_block_per_device_and_minute() {
        let (_d, store) = open();
        let mut b = BlockBuilder::default();
        // 100 heartbeats of device 1 across two minutes, 10 of device 2.
        for i in 0..100u64 {
            b.add(DeviceId(1), 30_000 + i * 600, i + 1, hb(i));
        }
        for i in 0..10u64 {
            b.add(DeviceId(2), 1_000 + i, i + 1, hb(i));
        }
        assert_eq!(b.len(), 110);
        write(&store, &mut b);
        let mut keys_seen = Vec::new();
        store
            .scan_raw(BLOCKS, &[], None, |k, _| {
                keys_seen.push(k.to_vec());
                Ok(true)
            })
            .unwrap();
        assert_eq!(keys_seen.len(), 3, "device 1: two minutes; device 2: one");
        let got = read(&store, DeviceId(1), 0, u64::MAX, usize::MAX).unwrap();
        assert_eq!(got.len(), 100);
        for (i, g) in got.iter().enumerate() {
            let i = i as u64;
            assert_eq!(
                (g.ts_ms, g.seq, g.heartbeat),
                (30_000 + i * 600, i + 1, hb(i))
            );
        }
        assert_eq!(
            read(&store, DeviceId(2), 0, u64::MAX, 100).unwrap().len(),
            10
        );
    }

    #[test]
    fn reads_are_in_time_order_across_blocks_and_honour_range_and_limit() {
        let (_d, store) = open();
        // Commit 1: minute 1 and minute 3. Commit 2: a late heartbeat in
        // minute 1 between two earlier ones, and minute 2.
        commit(&store, &[(60_000, 1, 1), (60_500, 2, 2), (180_000, 3, 3)]);
        commit(&store, &[(60_250, 4, 4), (120_000, 5, 5)]);
        assert_eq!(
            beats(&store, 0, u64::MAX, 100),
            vec![
                (60_000, 1),
                (60_250, 4),
                (60_500, 2),
                (120_000, 5),
                (180_000, 3)
            ]
        );
        // The range is half-open and cuts inside windows.
        assert_eq!(
            beats(&store, 60_250, 180_000, 100),
            vec![(60_250, 4), (60_500, 2), (120_000, 5)]
        );
        // The limit takes the oldest.
        assert_eq!(
            beats(&store, 0, u64::MAX, 2),
            vec![(60_000, 1), (60_250, 4)]
        );
        assert_eq!(beats(&store, 0, u64::MAX, 4).len(), 4);
        assert!(beats(&store, 0, u64::MAX, 0).is_empty());
        assert!(beats(&store, 200_000, 100_000, 10).is_empty());
    }

    #[test]
    fn legacy_per_record_heartbeats_are_read_with_the_blocks() {
        let (_d, store) = open();
        let d = DeviceId(1);
        let mut batch = store.batch();
        for (ts, seq) in [(10_000u64, 1u64), (70_000, 2)] {
            batch
                .put(LEGACY, &keys::heartbeat_key(d, ts, seq), &hb(seq))
                .unwrap();
        }
        store.write(batch).unwrap();
        commit(&store, &[(65_000, 3, 3), (130_000, 4, 4)]);
        assert_eq!(
            beats(&store, 0, u64::MAX, 100),
            vec![(10_000, 1), (65_000, 3), (70_000, 2), (130_000, 4)]
        );
        assert_eq!(
            beats(&store, 0, u64::MAX, 2),
            vec![(10_000, 1), (65_000, 3)]
        );
        let got = read(&store, d, 70_000, 70_001, 10).unwrap();
        assert_eq!(got[0].heartbeat, hb(2));
    }

    #[test]
    fn a_heartbeat_stored_twice_is_read_once() {
        let (_d, store) = open();
        commit(&store, &[(60_000, 1, 1), (60_100, 2, 2)]);
        // The same records again (as if the high-water mark had been lost)
        // make another block only if the first seq differs; here it does not,
        // so the block overwrites itself; a shifted replay makes a second
        // block that readers dedupe.
        commit(&store, &[(60_000, 1, 1), (60_100, 2, 2)]);
        commit(&store, &[(60_100, 2, 2)]);
        assert_eq!(
            beats(&store, 0, u64::MAX, 100),
            vec![(60_000, 1), (60_100, 2)]
        );
    }

    #[test]
    fn an_undecodable_block_is_an_error_not_a_panic() {
        let (_d, store) = open();
        let mut batch = store.batch();
        batch
            .put_raw(
                BLOCKS,
                &keys::heartbeat_key(DeviceId(1), 60_000, 1),
                &[0xff; 3],
            )
            .unwrap();
        store.write(batch).unwrap();
        let e = read(&store, DeviceId(1), 0, u64::MAX, 10).unwrap_err();
        assert!(e.to_string().contains("heartbeat_blocks"), "{e}");
    }

    #[test]
    fn expired_ranges_cover_whole_windows_before_the_cutoff() {
        let (_d, store) = open();
        commit(&store, &[(60_000, 1, 1), (120_000, 2, 2), (150_000, 3, 3)]);
        let mut batch = store.batch();
        for (table, from, to) in expired_ranges(DeviceId(1), 150_000) {
            batch.delete_range(table, &from, &to).unwrap();
        }
        store.write(batch).unwrap();
        // Minute 1 is gone; minute 2 straddles the cutoff and stays whole.
        assert_eq!(
            beats(&store, 0, u64::MAX, 100),
            vec![(120_000, 2), (150_000, 3)]
        );
    }
}
