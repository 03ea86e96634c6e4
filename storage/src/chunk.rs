//! Compressed sample chunks: the long-term layout of raw samples.
//!
//! Samples first land one per key in the `samples` (head) table, written in
//! the same WAL-backed batch as everything else, so an acknowledged sample is
//! durable at once. When a 2-hour window has closed, the writer seals the
//! window's head samples of each series into one chunk in the `chunks` table
//! and range-deletes them from the head.
//!
//! A chunk is self-describing (format byte 1):
//!
//! ```text
//! u8 version | varint count | varint first_ts
//! | zigzag-varint first delta | zigzag-varint delta-of-delta ...   (timestamps)
//! | u8 mode | values                                                 (values)
//! ```
//!
//! Values use mode `e` in 0..=9 when every value is a decimal with at most
//! `e` fractional digits (the agent reports percentages with two): they are
//! stored as integers `v * 10^e`, the first as a zigzag varint and the rest
//! as zigzag-varint deltas. Otherwise mode 255 stores the IEEE bits XOR the
//! previous value's bits (8 bytes each; equal neighbours become zeros).
//! Encoding is lossless: every value decodes to the same `f64` bits. RocksDB
//! compresses the blocks again (zstd at the bottom level), which removes the
//! timestamp columns that series of one device share.

/// Width of a chunk window.
pub const CHUNK_MS: u64 = 2 * 3600 * 1000;

const VERSION: u8 = 1;
const MODE_RAW: u8 = 255;
const MAX_DECIMALS: u8 = 9;
/// Refuse to decode absurd counts (a chunk holds one series for 2 hours).
const MAX_SAMPLES: u64 = 1 << 22;

/// Start of the chunk window containing `ts_ms`.
pub fn window_start(ts_ms: u64) -> u64 {
    ts_ms - ts_ms % CHUNK_MS
}

/// Why a chunk could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt sample chunk: {0}")]
pub struct ChunkError(pub &'static str);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, ChunkError> {
        let b = *self.buf.get(self.pos).ok_or(ChunkError("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, ChunkError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ChunkError("varint too long"))
    }

    fn u64_le(&mut self) -> Result<u64, ChunkError> {
        let b = self
            .buf
            .get(self.pos..self.pos + 8)
            .ok_or(ChunkError("truncated value"))?;
        self.pos += 8;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// The number of decimals that represents every value exactly, if any.
fn decimals(values: &[f64]) -> Option<u8> {
    (0..=MAX_DECIMALS).find(|&e| {
        let s = 10f64.powi(i32::from(e));
        values.iter().all(|&v| {
            let scaled = (v * s).round();
            scaled.abs() < 9.0e15 && ((scaled as i64) as f64 / s).to_bits() == v.to_bits()
        })
    })
}

/// Encodes samples sorted by strictly increasing timestamp.
pub fn encode(samples: &[(u64, f64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + samples.len() * 3);
    out.push(VERSION);
    put_varint(&mut out, samples.len() as u64);
    let Some(&(first, _)) = samples.first() else {
        return out;
    };
    put_varint(&mut out, first);
    let mut prev_ts = first;
    let mut prev_delta = 0i64;
    for (i, &(ts, _)) in samples.iter().enumerate().skip(1) {
        let delta = ts.wrapping_sub(prev_ts) as i64;
        if i == 1 {
            put_varint(&mut out, zigzag(delta));
        } else {
            put_varint(&mut out, zigzag(delta.wrapping_sub(prev_delta)));
        }
        prev_delta = delta;
        prev_ts = ts;
    }
    let values: Vec<f64> = samples.iter().map(|s| s.1).collect();
    match decimals(&values) {
        Some(e) => {
            out.push(e);
            let s = 10f64.powi(i32::from(e));
            let mut prev = 0i64;
            for &v in &values {
                let n = (v * s).round() as i64;
                put_varint(&mut out, zigzag(n.wrapping_sub(prev)));
                prev = n;
            }
        }
        None => {
            out.push(MODE_RAW);
            let mut prev = 0u64;
            for &v in &values {
                out.extend_from_slice(&(v.to_bits() ^ prev).to_le_bytes());
                prev = v.to_bits();
            }
        }
    }
    out
}

/// Decodes a chunk. Never panics on malformed input.
pub fn decode(bytes: &[u8]) -> Result<Vec<(u64, f64)>, ChunkError> {
    decode_with_mode(bytes).map(|(s, _)| s)
}

/// Decodes a chunk and reports its value mode (decimals, or 255 for raw).
fn decode_with_mode(bytes: &[u8]) -> Result<(Vec<(u64, f64)>, u8), ChunkError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    if r.byte()? != VERSION {
        return Err(ChunkError("unknown version"));
    }
    let count = r.varint()?;
    if count > MAX_SAMPLES || count > bytes.len() as u64 {
        return Err(ChunkError("implausible sample count"));
    }
    let count = count as usize;
    let mut ts = Vec::with_capacity(count);
    if count > 0 {
        let mut cur = r.varint()?;
        ts.push(cur);
        let mut delta = 0i64;
        for i in 1..count {
            let d = unzigzag(r.varint()?);
            delta = if i == 1 { d } else { delta.wrapping_add(d) };
            cur = cur.wrapping_add(delta as u64);
            ts.push(cur);
        }
    }
    let mut out = Vec::with_capacity(count);
    if count == 0 {
        return Ok((out, 0));
    }
    let mode = r.byte()?;
    match mode {
        MODE_RAW => {
            let mut prev = 0u64;
            for t in ts {
                let bits = r.u64_le()? ^ prev;
                prev = bits;
                out.push((t, f64::from_bits(bits)));
            }
        }
        e if e <= MAX_DECIMALS => {
            let s = 10f64.powi(i32::from(e));
            let mut prev = 0i64;
            for t in ts {
                prev = prev.wrapping_add(unzigzag(r.varint()?));
                out.push((t, prev as f64 / s));
            }
        }
        _ => return Err(ChunkError("unknown value mode")),
    }
    if r.pos != bytes.len() {
        return Err(ChunkError("trailing bytes"));
    }
    Ok((out, mode))
}

/// Merges sorted `older` with sorted `newer`; on equal timestamps `newer` wins.
pub fn merge(older: &[(u64, f64)], newer: &[(u64, f64)]) -> Vec<(u64, f64)> {
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let (mut i, mut j) = (0, 0);
    loop {
        match (older.get(i), newer.get(j)) {
            (Some(x), Some(y)) if x.0 < y.0 => {
                out.push(*x);
                i += 1;
            }
            (Some(x), Some(y)) if x.0 == y.0 => {
                out.push(*y);
                i += 1;
                j += 1;
            }
            (_, Some(y)) => {
                out.push(*y);
                j += 1;
            }
            (Some(x), None) => {
                out.push(*x);
                i += 1;
            }
            (None, None) => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same(a: &[(u64, f64)], b: &[(u64, f64)]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits())
    }

    proptest! {
        #[test]
        fn any_samples_round_trip_bit_exactly(
            ts in proptest::collection::btree_set(any::<u64>(), 0..200),
            vals in proptest::collection::vec(any::<f64>(), 200),
        ) {
            let s: Vec<(u64, f64)> = ts.into_iter().zip(vals).collect();
            prop_assert!(same(&decode(&encode(&s)).unwrap(), &s));
        }

        #[test]
        fn decimal_samples_round_trip_bit_exactly(
            start in 0u64..1u64 << 42,
            gaps in proptest::collection::vec(1u64..120_000, 1..200),
            cents in proptest::collection::vec(-1_000_000i64..1_000_000, 200),
        ) {
            let mut t = start;
            let s: Vec<(u64, f64)> = gaps.iter().zip(cents.iter()).map(|(g, c)| { t += g; (t, *c as f64 / 100.0) }).collect();
            let (decoded, mode) = decode_with_mode(&encode(&s)).unwrap();
            prop_assert!(mode <= 2, "decimal mode used, got {}", mode);
            prop_assert!(same(&decoded, &s));
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn merge_keeps_order_and_prefers_newer(
            a in proptest::collection::btree_map(0u64..500, 0i32..100, 0..50),
            b in proptest::collection::btree_map(0u64..500, 100i32..200, 0..50),
        ) {
            let older: Vec<(u64, f64)> = a.iter().map(|(k, v)| (*k, f64::from(*v))).collect();
            let newer: Vec<(u64, f64)> = b.iter().map(|(k, v)| (*k, f64::from(*v))).collect();
            let m = merge(&older, &newer);
            let mut want = a.iter().map(|(k, v)| (*k, f64::from(*v))).collect::<std::collections::BTreeMap<_, _>>();
            for (k, v) in &b { want.insert(*k, f64::from(*v)); }
            let want: Vec<(u64, f64)> = want.into_iter().collect();
            prop_assert!(same(&m, &want));
        }
    }

    #[test]
    fn regular_percent_series_costs_about_two_bytes_per_sample() {
        let s: Vec<(u64, f64)> = (0..120u64)
            .map(|i| {
                (
                    1_700_000_000_000 + i * 60_000 + (i * 7) % 13,
                    ((i * 37) % 900) as f64 / 100.0,
                )
            })
            .collect();
        let n = encode(&s).len();
        assert!(n < 3 * 120, "{n} bytes");
        assert!(same(&decode(&encode(&s)).unwrap(), &s));
    }

    #[test]
    fn corrupt_chunks_are_errors() {
        assert_eq!(decode(&[]), Err(ChunkError("truncated")));
        assert_eq!(decode(&[9]), Err(ChunkError("unknown version")));
        let mut good = encode(&[(1, 1.0), (2, 2.0)]);
        good.push(0);
        assert_eq!(decode(&good), Err(ChunkError("trailing bytes")));
    }
}
