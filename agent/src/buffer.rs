//! The agent's offline buffer: every record waits here, on disk, until the
//! appliance acknowledges it.
//!
//! Layout (sled): tree `records` maps `seq` (big-endian) to
//! `crc32(payload) | payload`, where the payload is the encoded
//! [`Record`]; tree `meta` holds `next_seq`, the acked high-water mark and the
//! dropped count. Invariants:
//!
//! * sequence numbers are strictly increasing and never reused, across
//!   restarts (`next_seq` is persisted and also derived from the last key);
//! * a record is removed only by [`Buffer::ack`] (the appliance stored it) or
//!   by the size bound, oldest first, counted in `dropped`;
//! * a record that fails its checksum on read is removed and counted in
//!   `corrupt`, never sent.
//!
//! sled keeps the first I/O error it meets (a full disk, a file size limit)
//! for the life of the open database: every later write fails with it, even
//! once the cause is gone. So any sled error closes the store
//! ([`Buffer::is_closed`]); operations then fail with
//! [`BufferError::Closed`] until [`Buffer::reopen`] opens the database
//! again. The in-memory figures survive the reopen: `next_seq`, `acked` and
//! `dropped` never go backwards (a record whose write failed may have been
//! sent already, so its sequence number is not handed out again).

use std::path::{Path, PathBuf};

use outpost_proto::codec;
use outpost_proto::messages::{Record, RecordBody};

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("offline buffer (sled): {0}")]
    Sled(#[from] sled::Error),
    #[error("offline buffer: cannot encode record: {0}")]
    Encode(#[from] codec::CodecError),
    #[error(
        "offline buffer: closed after a write failure (disk full? file size limit?); \
         reopening it with back-off, records collected meanwhile are lost"
    )]
    Closed,
}

pub type Result<T> = std::result::Result<T, BufferError>;

const NEXT_SEQ: &[u8] = b"next_seq";
const ACKED: &[u8] = b"acked";
const DROPPED: &[u8] = b"dropped";
const CRC_BYTES: usize = 4;

/// Bytes of sled page cache: explicit (the 1 GiB default costs RSS).
const SLED_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// The open sled database and its trees.
struct Store {
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
}

/// What the database on disk holds, read when it is opened.
struct OnDisk {
    next_seq: u64,
    acked: u64,
    dropped: u64,
    bytes: u64,
    count: u64,
}

impl Store {
    fn open(dir: &Path) -> Result<(Store, OnDisk)> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(Some(200))
            .open()?;
        let records = db.open_tree("records")?;
        let meta = db.open_tree("meta")?;
        let mut next_seq = read_u64(&meta, NEXT_SEQ)?.max(1);
        if let Some((k, _)) = records.last()?
            && let Some(s) = seq_of(&k)
        {
            next_seq = next_seq.max(s + 1);
        }
        let mut bytes = 0u64;
        let mut count = 0u64;
        for item in records.iter() {
            let (_, v) = item?;
            bytes += v.len() as u64;
            count += 1;
        }
        let disk = OnDisk {
            next_seq,
            acked: read_u64(&meta, ACKED)?,
            dropped: read_u64(&meta, DROPPED)?,
            bytes,
            count,
        };
        Ok((Store { db, records, meta }, disk))
    }
}

/// Disk-backed FIFO of unacknowledged records.
pub struct Buffer {
    /// Where the database lives (to reopen it).
    dir: PathBuf,
    /// The open database; `None` after a sled error closed it (sled's
    /// error is sticky), until [`Buffer::reopen`] succeeds.
    store: Option<Store>,
    /// Sled errors that closed the store (this process).
    write_failures: u64,
    /// Next sequence number to assign.
    next_seq: u64,
    /// Highest sequence number the appliance acknowledged.
    acked: u64,
    /// Records dropped because the buffer was full (lifetime).
    dropped: u64,
    /// Records removed because their checksum failed (this process).
    corrupt: u64,
    /// Records given new sequence numbers because the appliance had stored
    /// more than this buffer ever numbered (this process; see
    /// [`Buffer::renumber_above`]).
    renumbered: u64,
    /// Sum of stored value sizes, kept below `max_bytes`.
    bytes: u64,
    max_bytes: u64,
    count: u64,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("next_seq", &self.next_seq)
            .field("acked", &self.acked)
            .field("count", &self.count)
            .field("bytes", &self.bytes)
            .field("closed", &self.store.is_none())
            .finish_non_exhaustive()
    }
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64> {
    Ok(tree
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// The stored form of a record: `crc32(payload) | payload`.
fn encode_value(rec: &Record) -> Result<Vec<u8>> {
    let payload = codec::encode(rec)?;
    let mut value = Vec::with_capacity(CRC_BYTES + payload.len());
    value.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    value.extend_from_slice(&payload);
    Ok(value)
}

/// The record in a stored value, if its checksum and encoding hold.
fn decode_value(v: &[u8]) -> Option<Record> {
    if v.len() < CRC_BYTES {
        return None;
    }
    let (crc, payload) = v.split_at(CRC_BYTES);
    (crc == crc32fast::hash(payload).to_le_bytes())
        .then(|| codec::decode::<Record>(payload).ok())
        .flatten()
}

fn seq_of(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

impl Buffer {
    /// Opens (creating) the buffer in `dir`, bounded to `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Buffer> {
        let (store, disk) = Store::open(dir)?;
        let mut b = Buffer {
            dir: dir.to_path_buf(),
            store: Some(store),
            write_failures: 0,
            acked: disk.acked,
            dropped: disk.dropped,
            corrupt: 0,
            renumbered: 0,
            next_seq: disk.next_seq,
            bytes: disk.bytes,
            max_bytes,
            count: disk.count,
        };
        b.enforce_bound()?;
        Ok(b)
    }

    /// The open store, or [`BufferError::Closed`].
    fn store(&self) -> Result<&Store> {
        self.store.as_ref().ok_or(BufferError::Closed)
    }

    /// Passes `r` through; a sled error closes the store (sled would fail
    /// every later write with it) and is counted.
    fn guard<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(BufferError::Sled(e)) = &r {
            tracing::warn!(error = %e, "offline buffer: closing the database after a sled error; it will be reopened");
            self.store = None;
            self.write_failures += 1;
        }
        r
    }

    /// Whether a sled error closed the database (see [`Buffer::reopen`]).
    pub fn is_closed(&self) -> bool {
        self.store.is_none()
    }

    /// Sled errors that closed the database in this process.
    pub fn write_failures(&self) -> u64 {
        self.write_failures
    }

    /// Opens the database again after a sled error closed it (a no-op when
    /// it is open). What is on disk is what survived; `next_seq`, `acked`
    /// and `dropped` keep the larger of the disk's and the memory's value,
    /// and are written back. On failure the store stays closed.
    pub fn reopen(&mut self) -> Result<()> {
        if self.store.is_some() {
            return Ok(());
        }
        let (store, disk) = Store::open(&self.dir)?;
        self.store = Some(store);
        self.next_seq = self.next_seq.max(disk.next_seq);
        self.acked = self.acked.max(disk.acked);
        self.dropped = self.dropped.max(disk.dropped);
        self.bytes = disk.bytes;
        self.count = disk.count;
        let r = self.persist_after_reopen();
        self.guard(r)
    }

    fn persist_after_reopen(&mut self) -> Result<()> {
        let st = self.store()?;
        st.meta.insert(NEXT_SEQ, &self.next_seq.to_be_bytes())?;
        st.meta.insert(ACKED, &self.acked.to_be_bytes())?;
        self.enforce_bound()?;
        self.store()?.db.flush()?;
        Ok(())
    }

    /// Appends a record; returns its sequence number. Drops the oldest
    /// records if the buffer exceeds its bound.
    pub fn append(&mut self, ts_ms: u64, body: RecordBody) -> Result<u64> {
        let r = self.append_inner(ts_ms, body);
        self.guard(r)
    }

    fn append_inner(&mut self, ts_ms: u64, body: RecordBody) -> Result<u64> {
        self.store()?;
        let seq = self.next_seq;
        let value = encode_value(&Record { seq, ts_ms, body })?;
        self.next_seq += 1;
        let len = value.len() as u64;
        {
            let st = self.store()?;
            st.meta.insert(NEXT_SEQ, &self.next_seq.to_be_bytes())?;
            st.records.insert(seq.to_be_bytes(), value)?;
        }
        self.bytes += len;
        self.count += 1;
        self.enforce_bound()?;
        // Durable before anyone can see it: a crash must neither lose the
        // record nor hand its sequence number to another one.
        self.store()?.db.flush()?;
        Ok(seq)
    }

    fn enforce_bound(&mut self) -> Result<()> {
        while self.bytes > self.max_bytes {
            let Some((_, v)) = self.store()?.records.pop_min()? else {
                self.bytes = 0;
                self.count = 0;
                break;
            };
            self.bytes = self.bytes.saturating_sub(v.len() as u64);
            self.count = self.count.saturating_sub(1);
            self.dropped += 1;
        }
        self.store()?
            .meta
            .insert(DROPPED, &self.dropped.to_be_bytes())?;
        Ok(())
    }

    /// Removes every record with `seq <= up_to`: the appliance stored them.
    pub fn ack(&mut self, up_to: u64) -> Result<()> {
        let r = self.ack_inner(up_to);
        self.guard(r)
    }

    fn ack_inner(&mut self, up_to: u64) -> Result<()> {
        while let Some((k, v)) = self.store()?.records.first()? {
            match seq_of(&k) {
                Some(s) if s <= up_to => {
                    self.store()?.records.remove(&k)?;
                    self.bytes = self.bytes.saturating_sub(v.len() as u64);
                    self.count = self.count.saturating_sub(1);
                }
                _ => break,
            }
        }
        self.acked = self.acked.max(up_to);
        self.store()?
            .meta
            .insert(ACKED, &self.acked.to_be_bytes())?;
        Ok(())
    }

    /// Makes sure new records get sequence numbers above `stored`: the
    /// appliance's high-water mark for this device (protects against a lost
    /// buffer directory restarting the sequence).
    pub fn ensure_next_seq_above(&mut self, stored: u64) -> Result<()> {
        if self.next_seq <= stored {
            let next = stored + 1;
            let r = self
                .store()
                .and_then(|st| Ok(st.meta.insert(NEXT_SEQ, &next.to_be_bytes())?));
            self.guard(r)?;
            self.next_seq = next;
        }
        Ok(())
    }

    /// Gives every buffered record a new sequence number above `stored`, in
    /// order, when `stored` (the appliance's high-water mark for this
    /// device) is at or above [`Buffer::next_seq`]: the appliance stored
    /// numbers this buffer never handed out, so the buffer was reset (its
    /// directory lost, numbering from 1 again) and its records, though
    /// numbered at or below `stored`, were never sent. Acknowledging them
    /// up to `stored` would delete them unsent; renumbered, they are sent.
    /// Does nothing otherwise. Atomic (one sled batch); corrupt records are
    /// dropped and counted as in [`Buffer::read_from`]. Returns how many
    /// were renumbered (also counted in [`Buffer::renumbered`]).
    pub fn renumber_above(&mut self, stored: u64) -> Result<u64> {
        let r = self.renumber_inner(stored);
        self.guard(r)
    }

    fn renumber_inner(&mut self, stored: u64) -> Result<u64> {
        if stored < self.next_seq {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        let mut next = stored.saturating_add(1);
        let (mut bytes, mut count, mut corrupt) = (0u64, 0u64, 0u64);
        for item in self.store()?.records.iter() {
            let (k, v) = item?;
            batch.remove(k);
            let Some(mut rec) = decode_value(&v) else {
                corrupt += 1;
                continue;
            };
            rec.seq = next;
            let value = encode_value(&rec)?;
            bytes += value.len() as u64;
            count += 1;
            batch.insert(&next.to_be_bytes(), value);
            next = next.saturating_add(1);
        }
        // The batch first: a crash after it leaves the new keys, from which
        // `next_seq` is derived on open.
        let st = self.store()?;
        st.records.apply_batch(batch)?;
        st.meta.insert(NEXT_SEQ, &next.to_be_bytes())?;
        st.db.flush()?;
        self.next_seq = next;
        self.bytes = bytes;
        self.count = count;
        self.corrupt += corrupt;
        self.renumbered += count;
        // Larger numbers may encode a byte or two longer.
        self.enforce_bound()?;
        Ok(count)
    }

    /// Up to `max_records` records with `seq >= from`, in order, whose
    /// stored sizes add up to at most `max_bytes` (the first record is
    /// returned even if it alone is larger, so that the caller sees it).
    /// Corrupt entries are removed and counted.
    pub fn read_from(
        &mut self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        let r = self.read_from_inner(from, max_records, max_bytes);
        self.guard(r)
    }

    fn read_from_inner(
        &mut self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut size = 0usize;
        let mut bad = Vec::new();
        for item in self.store()?.records.range(from.to_be_bytes()..) {
            let (k, v) = item?;
            match decode_value(&v) {
                Some(rec) => {
                    if !out.is_empty() && size.saturating_add(v.len()) > max_bytes {
                        break;
                    }
                    size += v.len();
                    out.push(rec);
                    if out.len() >= max_records || size >= max_bytes {
                        break;
                    }
                }
                None => bad.push((k, v.len())),
            }
        }
        for (k, len) in bad {
            tracing::warn!(seq = ?seq_of(&k), "offline buffer: dropping a record that failed its checksum");
            self.store()?.records.remove(&k)?;
            self.bytes = self.bytes.saturating_sub(len as u64);
            self.count = self.count.saturating_sub(1);
            self.corrupt += 1;
        }
        Ok(out)
    }

    /// Removes record `seq`, which can never be delivered (larger than the
    /// appliance's frame limit), and counts it in `dropped` like a record
    /// the size bound dropped. Returns whether it was there.
    pub fn drop_undeliverable(&mut self, seq: u64) -> Result<bool> {
        let r = self.drop_undeliverable_inner(seq);
        self.guard(r)
    }

    fn drop_undeliverable_inner(&mut self, seq: u64) -> Result<bool> {
        let Some(v) = self.store()?.records.remove(seq.to_be_bytes())? else {
            return Ok(false);
        };
        self.bytes = self.bytes.saturating_sub(v.len() as u64);
        self.count = self.count.saturating_sub(1);
        self.dropped += 1;
        self.store()?
            .meta
            .insert(DROPPED, &self.dropped.to_be_bytes())?;
        Ok(true)
    }

    /// Sequence number of the oldest buffered record.
    pub fn first_seq(&self) -> Result<Option<u64>> {
        Ok(self.store()?.records.first()?.and_then(|(k, _)| seq_of(&k)))
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn corrupt(&self) -> u64 {
        self.corrupt
    }

    pub fn renumbered(&self) -> u64 {
        self.renumbered
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn size_bytes(&self) -> u64 {
        self.bytes
    }

    /// Forces buffered writes to disk.
    pub fn flush(&mut self) -> Result<()> {
        let r = self.store().and_then(|st| Ok(st.db.flush().map(drop)?));
        self.guard(r)
    }

    /// Test hook: overwrite a stored value (to simulate disk corruption).
    #[cfg(test)]
    fn corrupt_entry(&self, seq: u64) {
        let k = seq.to_be_bytes();
        let records = &self.store().unwrap().records;
        if let Some(v) = records.get(k).unwrap() {
            let mut v = v.to_vec();
            let last = v.len() - 1;
            v[last] ^= 0xFF;
            records.insert(k, v).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::messages::Heartbeat;
    use proptest::prelude::*;

    fn body(n: u64) -> RecordBody {
        RecordBody::Heartbeat(Heartbeat {
            uptime_s: n,
            buffered_records: 0,
            dropped_records: 0,
        })
    }

    #[test]
    fn records_survive_reopen_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut b = Buffer::open(dir.path(), 1 << 20).unwrap();
            for i in 0..10 {
                assert_eq!(b.append(i, body(i)).unwrap(), i + 1);
            }
            b.ack(4).unwrap();
            b.flush().unwrap();
        }
        let mut b = Buffer::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(b.len(), 6);
        assert_eq!(b.acked(), 4);
        let seqs: Vec<u64> = b
            .read_from(0, 100, 1 << 20)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, (5..=10).collect::<Vec<_>>());
        assert_eq!(
            b.append(0, body(0)).unwrap(),
            11,
            "sequence continues after reopen"
        );
    }

    #[test]
    fn full_buffer_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Buffer::open(dir.path(), 200).unwrap();
        for i in 0..100 {
            b.append(i, body(i)).unwrap();
        }
        assert!(b.size_bytes() <= 200);
        assert!(b.dropped() > 0);
        assert_eq!(b.dropped() + b.len(), 100);
        let recs = b.read_from(0, 1000, 1 << 20).unwrap();
        assert_eq!(recs.last().unwrap().seq, 100, "newest kept");
    }

    #[test]
    fn corrupt_record_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Buffer::open(dir.path(), 1 << 20).unwrap();
        for i in 0..5 {
            b.append(i, body(i)).unwrap();
        }
        b.corrupt_entry(3);
        let seqs: Vec<u64> = b
            .read_from(0, 100, 1 << 20)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 4, 5]);
        assert_eq!(b.corrupt(), 1);
        assert_eq!(b.len(), 4);
    }

    #[test]
    fn sequence_jumps_above_appliance_high_water_mark() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Buffer::open(dir.path(), 1 << 20).unwrap();
        b.ensure_next_seq_above(41).unwrap();
        assert_eq!(b.append(0, body(0)).unwrap(), 42);
        b.ensure_next_seq_above(10).unwrap();
        assert_eq!(b.append(0, body(0)).unwrap(), 43);
    }

    #[test]
    fn a_reset_buffer_is_renumbered_above_the_appliances_mark() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Buffer::open(dir.path(), 1 << 20).unwrap();
        for i in 1..=5 {
            b.append(i, body(i)).unwrap();
        }
        b.corrupt_entry(3);
        assert_eq!(
            b.renumber_above(4).unwrap(),
            0,
            "not a reset buffer: 5 < next_seq 6"
        );
        assert_eq!(b.renumber_above(1000).unwrap(), 4);
        assert_eq!(
            (b.len(), b.renumbered(), b.corrupt(), b.dropped()),
            (4, 4, 1, 0)
        );
        let recs = b.read_from(0, 100, usize::MAX).unwrap();
        let got: Vec<(u64, u64)> = recs.iter().map(|r| (r.seq, r.ts_ms)).collect();
        assert_eq!(
            got,
            [(1001, 1), (1002, 2), (1003, 4), (1004, 5)],
            "order and contents kept"
        );
        assert_eq!(b.append(6, body(6)).unwrap(), 1005);
        b.flush().unwrap();
        drop(b);
        let b = reopen(dir.path(), 1 << 20);
        assert_eq!(
            (b.next_seq(), b.len(), b.first_seq().unwrap()),
            (1006, 5, Some(1001))
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append,
        Ack(u8),
        Reopen,
        Read(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Append),
            2 => any::<u8>().prop_map(Op::Ack),
            1 => Just(Op::Reopen),
            1 => any::<u8>().prop_map(Op::Read),
        ]
    }

    fn reopen(dir: &Path, cap: u64) -> Buffer {
        crate::reopen_sled(|| Buffer::open(dir, cap))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The buffer behaves like a Vec-based model across appends, acks,
        /// bounded drops and restarts.
        #[test]
        fn buffer_matches_model(ops in proptest::collection::vec(op(), 1..120), cap in 100u64..2000) {
            let dir = tempfile::tempdir().unwrap();
            let mut b = Buffer::open(dir.path(), cap).unwrap();
            // Model: (seq, value size) of pending records.
            let mut model: Vec<(u64, u64)> = Vec::new();
            let mut next = 1u64;
            let mut acked = 0u64;
            let mut dropped = 0u64;
            for op in ops {
                match op {
                    Op::Append => {
                        let seq = b.append(next, body(next)).unwrap();
                        prop_assert_eq!(seq, next);
                        let size = CRC_BYTES as u64 + codec::encode(&Record { seq, ts_ms: next, body: body(next) }).unwrap().len() as u64;
                        model.push((seq, size));
                        next += 1;
                        while model.iter().map(|m| m.1).sum::<u64>() > cap {
                            model.remove(0);
                            dropped += 1;
                        }
                    }
                    Op::Ack(n) => {
                        let up_to = acked + u64::from(n % 8);
                        b.ack(up_to).unwrap();
                        model.retain(|m| m.0 > up_to);
                        acked = acked.max(up_to);
                    }
                    Op::Reopen => {
                        b.flush().unwrap();
                        drop(b);
                        b = reopen(dir.path(), cap);
                    }
                    Op::Read(from) => {
                        let from = u64::from(from);
                        let got: Vec<u64> = b.read_from(from, 1000, usize::MAX).unwrap().iter().map(|r| r.seq).collect();
                        let want: Vec<u64> = model.iter().map(|m| m.0).filter(|s| *s >= from).collect();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(b.len(), model.len() as u64);
                prop_assert_eq!(b.size_bytes(), model.iter().map(|m| m.1).sum::<u64>());
                prop_assert_eq!(b.dropped(), dropped);
                prop_assert_eq!(b.next_seq(), next);
                prop_assert_eq!(b.first_seq().unwrap(), model.first().map(|m| m.0));
            }
        }
    }
}
