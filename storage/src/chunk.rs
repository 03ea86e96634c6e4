//! Compressed sample chunks: the long-term layout of raw samples.
//!
//! Samples first land one per key in the `samples` (head) table, written in
//! the same WAL-backed batch as everything else, so an acknowledged sample is
//! durable at once. When a 2-hour window ([`CHUNK_MS`]) has closed, the
//! writer seals the window's head samples into the chunks table and
//! range-deletes them from the head (see `crate::samples`). This module owns
//! the chunk encodings only; it must not touch RocksDB or the ingest path.
//!
//! **Format 2 (written since issue 18): one chunk per device, group of 64
//! series ([`GROUP_SERIES`]) and day ([`DAY_CHUNK_MS`]).** Sealing a 2-hour
//! window merges its samples into the day's chunk. The series of a device
//! are collected together, so they share one timestamp column, and the
//! per-series overhead (key, header) is paid once a day:
//!
//! ```text
//! u8 2 | varint n_ts | varint first_ts | zigzag first delta | zigzag dod ...   (union of timestamps)
//! | varint n_series | per series (ids increasing):
//!     varint series id | varint body length | body
//! body: presence | u8 mode | values
//! presence: u8 0 (every timestamp) | u8 1 missing / u8 2 present,
//!           varint n, varint index gaps
//! values, mode e in 0..=9 (every value a decimal with at most e digits):
//!     integers n = v * 10^e, predicted with order k (0: none, 1: previous,
//!     2: linear extrapolation), chosen per series to minimise the width:
//!     u8 k | zigzag first residual | (if more) zigzag min residual
//!     | varint gcd | varint max q | the (count-1) quotients
//!     q = (residual - min) / gcd, packed LSB first as mixed-radix numbers
//!     of base max q + 1, as many digits each as fit 64 bits
//! values, mode 255: 8 bytes each, IEEE bits XOR the previous value's bits
//! ```
//!
//! A counter that grows by random amounts costs the bits of its increments'
//! range, a gauge the bits of its steps' range, a constant (or a steady
//! counter like uptime) nothing; disk bytes that move in whole blocks are
//! divided by their common step. Encoding is lossless: every value decodes to
//! the same `f64` bits, every timestamp to the same `u64`.
//!
//! **Format 1 (read only since issue 18)**: one chunk per series and 2-hour
//! window, keyed by the series' own id:
//!
//! ```text
//! u8 1 | varint count | varint first_ts
//! | zigzag-varint first delta | zigzag-varint delta-of-delta ...   (timestamps)
//! | u8 mode | values (zigzag-varint deltas of v * 10^e, or 8-byte XOR)
//! ```
//!
//! Databases written before keep their format-1 chunks; readers merge both.
//! RocksDB compresses the blocks again (zstd at the bottom level).

/// Width of a sealing window (and of a format-1 chunk).
pub const CHUNK_MS: u64 = 2 * 3600 * 1000;
/// Span of a format-2 chunk: one day.
pub const DAY_CHUNK_MS: u64 = 24 * 3600 * 1000;
/// Series per format-2 chunk: bounds a chunk's size for devices with many
/// series (a query reads the whole chunk of its series' group).
pub const GROUP_SERIES: u32 = 64;

const VERSION: u8 = 1;
const DEVICE_VERSION: u8 = 2;
/// Refuse to decode absurd series counts in one chunk.
const MAX_SERIES: u64 = 1 << 16;
const MODE_RAW: u8 = 255;
const MAX_DECIMALS: u8 = 9;
/// Refuse to decode absurd counts: a chunk spans at most a day, which has
/// this many distinct millisecond timestamps.
const MAX_SAMPLES: u64 = DAY_CHUNK_MS;

/// Start of the chunk window containing `ts_ms`.
pub fn window_start(ts_ms: u64) -> u64 {
    ts_ms - ts_ms % CHUNK_MS
}

/// Start of the day (format-2 chunk span) containing `ts_ms`.
pub fn day_start(ts_ms: u64) -> u64 {
    ts_ms - ts_ms % DAY_CHUNK_MS
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

/// Encodes a format-1 chunk (samples sorted by strictly increasing
/// timestamp). The store no longer writes them; kept for compatibility tests
/// and the storage benchmark's comparison.
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

/// Decodes a format-1 chunk. Never panics on malformed input.
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

/// One series' samples in a format-2 chunk.
pub type SeriesSamples = (u32, Vec<(u64, f64)>);

/// Where the bytes of a chunk go (for storage breakdowns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Anatomy {
    /// Format byte, counts and (format 2) the series directory's ids and lengths.
    pub header_bytes: usize,
    /// The timestamp column(s).
    pub timestamp_bytes: usize,
    pub series: Vec<SeriesAnatomy>,
}

/// One series' share of a chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesAnatomy {
    /// The series id (format 2; a format-1 chunk's id is in its key).
    pub id: Option<u32>,
    pub samples: usize,
    /// Presence, mode, predictor and packing parameters.
    pub header_bytes: usize,
    /// The packed values.
    pub value_bytes: usize,
}

fn put_timestamps(out: &mut Vec<u8>, ts: &[u64]) {
    put_varint(out, ts.len() as u64);
    let Some(&first) = ts.first() else {
        return;
    };
    put_varint(out, first);
    let mut prev_ts = first;
    let mut prev_delta = 0i64;
    for (i, &t) in ts.iter().enumerate().skip(1) {
        let delta = t.wrapping_sub(prev_ts) as i64;
        if i == 1 {
            put_varint(out, zigzag(delta));
        } else {
            put_varint(out, zigzag(delta.wrapping_sub(prev_delta)));
        }
        prev_delta = delta;
        prev_ts = t;
    }
}

impl<'a> Reader<'a> {
    fn timestamps(&mut self) -> Result<Vec<u64>, ChunkError> {
        let count = self.varint()?;
        if count > MAX_SAMPLES || count > self.buf.len() as u64 {
            return Err(ChunkError("implausible sample count"));
        }
        let count = count as usize;
        let mut ts = Vec::with_capacity(count);
        if count > 0 {
            let mut cur = self.varint()?;
            ts.push(cur);
            let mut delta = 0i64;
            for i in 1..count {
                let d = unzigzag(self.varint()?);
                delta = if i == 1 { d } else { delta.wrapping_add(d) };
                cur = cur.wrapping_add(delta as u64);
                ts.push(cur);
            }
        }
        Ok(ts)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ChunkError> {
        let end = self.pos.checked_add(n).ok_or(ChunkError("truncated"))?;
        let b = self.buf.get(self.pos..end).ok_or(ChunkError("truncated"))?;
        self.pos = end;
        Ok(b)
    }
}

/// Packs values of `width` bits, least significant bit first.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u128,
    bits: u32,
}

impl BitWriter<'_> {
    fn put(&mut self, v: u64, width: u32) {
        if width == 0 {
            return;
        }
        self.acc |= u128::from(v) << self.bits;
        self.bits += width;
        while self.bits >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.bits -= 8;
        }
    }

    fn finish(self) {
        if self.bits > 0 {
            self.out.push(self.acc as u8);
        }
    }
}

struct BitReader<'a> {
    buf: &'a [u8],
    pos: usize,
    acc: u128,
    bits: u32,
}

impl BitReader<'_> {
    fn get(&mut self, width: u32) -> Result<u64, ChunkError> {
        if width == 0 {
            return Ok(0);
        }
        while self.bits < width {
            let b = *self.buf.get(self.pos).ok_or(ChunkError("truncated bits"))?;
            self.pos += 1;
            self.acc |= u128::from(b) << self.bits;
            self.bits += 8;
        }
        let v = (self.acc & ((1u128 << width) - 1)) as u64;
        self.acc >>= width;
        self.bits -= width;
        Ok(v)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The prediction of `n[i]` with predictor order `k` (wrapping arithmetic:
/// encoder and decoder compute the same bits whatever the values).
fn predict(n: &[i64], i: usize, k: u8) -> i64 {
    match (k, i) {
        (0, _) | (_, 0) => 0,
        (1, _) | (_, 1) => n[i - 1],
        _ => n[i - 1].wrapping_mul(2).wrapping_sub(n[i - 2]),
    }
}

/// Residuals with order `k`, and (min, gcd, largest quotient) of the
/// packed ones.
fn residuals(n: &[i64], k: u8) -> (Vec<i64>, i64, u64, u64) {
    let r: Vec<i64> = (0..n.len())
        .map(|i| n[i].wrapping_sub(predict(n, i, k)))
        .collect();
    let min = r.iter().skip(1).copied().min().unwrap_or(0);
    let g = r
        .iter()
        .skip(1)
        .fold(0u64, |g, &x| gcd(g, x.wrapping_sub(min) as u64));
    let max_q = r
        .iter()
        .skip(1)
        .map(|&x| (x.wrapping_sub(min) as u64).checked_div(g).unwrap_or(0))
        .max()
        .unwrap_or(0);
    (r, min, g, max_q)
}

/// Quotients in `[0, m)` (`m = max_q + 1`) are packed `per` at a time as one
/// mixed-radix number (`q0 + q1 m + q2 m^2 ...`, the most digits whose
/// product fits 64 bits) in just enough bits: a range of 1,000 values costs
/// 9.97 bits a value, not 10; a power of two costs exactly its bits.
#[derive(Debug, Clone, Copy)]
struct Radix {
    /// `max_q + 1`; 0 stands for 2^64.
    m: u64,
    /// Digits per group.
    per: usize,
    /// Bits of a full group.
    width: u32,
}

impl Radix {
    fn new(max_q: u64) -> Radix {
        let m = max_q.wrapping_add(1);
        if m <= 1 {
            // m = 1: every quotient is 0, nothing is written; m = 2^64: one
            // digit of 64 bits per group.
            return Radix {
                m,
                per: 1,
                width: if m == 0 { 64 } else { 0 },
            };
        }
        let (mut per, mut p) = (1usize, u128::from(m));
        while p * u128::from(m) <= 1u128 << 64 {
            p *= u128::from(m);
            per += 1;
        }
        Radix {
            m,
            per,
            width: Self::bits_of_power(m, per),
        }
    }

    /// Bits of the largest number of `digits` digits: `m^digits - 1`.
    fn bits_of_power(m: u64, digits: usize) -> u32 {
        let p = (0..digits).fold(1u128, |p, _| p * u128::from(m));
        128 - (p - 1).leading_zeros()
    }

    /// Bits of `n` packed quotients.
    fn bits(&self, n: usize) -> u64 {
        if self.m == 1 {
            return 0;
        }
        let full = (n / self.per) as u64 * u64::from(self.width);
        let rest = n % self.per;
        full + if rest == 0 {
            0
        } else {
            u64::from(Self::bits_of_power(self.m, rest))
        }
    }

    fn put(&self, w: &mut BitWriter<'_>, qs: &[u64]) {
        if self.m == 1 {
            return;
        }
        for group in qs.chunks(self.per) {
            let mut v = 0u128;
            for &q in group.iter().rev() {
                v = v * u128::from(self.m) + u128::from(q);
            }
            let width = if group.len() == self.per {
                self.width
            } else {
                Self::bits_of_power(self.m, group.len())
            };
            if self.m == 0 {
                w.put(group[0], 64);
            } else {
                w.put(v as u64, width);
            }
        }
    }

    fn get(&self, r: &mut BitReader<'_>, n: usize, out: &mut Vec<u64>) -> Result<(), ChunkError> {
        if self.m == 1 {
            out.extend(std::iter::repeat_n(0, n));
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            let digits = left.min(self.per);
            left -= digits;
            if self.m == 0 {
                out.push(r.get(64)?);
                continue;
            }
            let width = if digits == self.per {
                self.width
            } else {
                Self::bits_of_power(self.m, digits)
            };
            let mut v = r.get(width)?;
            for _ in 0..digits {
                out.push(v % self.m);
                v /= self.m;
            }
            if v != 0 {
                return Err(ChunkError("packed group out of range"));
            }
        }
        Ok(())
    }
}

fn put_values(out: &mut Vec<u8>, values: &[f64]) {
    let Some(e) = decimals(values) else {
        out.push(MODE_RAW);
        let mut prev = 0u64;
        for &v in values {
            out.extend_from_slice(&(v.to_bits() ^ prev).to_le_bytes());
            prev = v.to_bits();
        }
        return;
    };
    out.push(e);
    let s = 10f64.powi(i32::from(e));
    let n: Vec<i64> = values.iter().map(|&v| (v * s).round() as i64).collect();
    if n.is_empty() {
        out.push(0);
        return;
    }
    let (k, (r, min, g, max_q)) = (0..=2u8)
        .map(|k| (k, residuals(&n, k)))
        .min_by_key(|(k, (_, _, _, max_q))| (Radix::new(*max_q).bits(n.len() - 1), *k))
        .expect("three predictors");
    out.push(k);
    put_varint(out, zigzag(r[0]));
    if n.len() < 2 {
        return;
    }
    put_varint(out, zigzag(min));
    put_varint(out, g);
    put_varint(out, max_q);
    let qs: Vec<u64> = r[1..]
        .iter()
        .map(|&x| (x.wrapping_sub(min) as u64).checked_div(g).unwrap_or(0))
        .collect();
    let mut w = BitWriter {
        out,
        acc: 0,
        bits: 0,
    };
    Radix::new(max_q).put(&mut w, &qs);
    w.finish();
}

fn read_values(r: &mut Reader<'_>, count: usize) -> Result<Vec<f64>, ChunkError> {
    let mode = r.byte()?;
    let mut out = Vec::with_capacity(count);
    match mode {
        MODE_RAW => {
            let mut prev = 0u64;
            for _ in 0..count {
                prev ^= r.u64_le()?;
                out.push(f64::from_bits(prev));
            }
        }
        e if e <= MAX_DECIMALS => {
            let s = 10f64.powi(i32::from(e));
            let k = r.byte()?;
            if k > 2 {
                return Err(ChunkError("unknown predictor"));
            }
            let mut n: Vec<i64> = Vec::with_capacity(count);
            if count == 0 {
                return Ok(out);
            }
            n.push(unzigzag(r.varint()?));
            if count > 1 {
                let min = unzigzag(r.varint()?);
                let g = r.varint()?;
                let radix = Radix::new(r.varint()?);
                let bytes = radix.bits(count - 1).div_ceil(8) as usize;
                let packed = r.take(bytes)?;
                let mut bits = BitReader {
                    buf: packed,
                    pos: 0,
                    acc: 0,
                    bits: 0,
                };
                let mut qs = Vec::with_capacity(count - 1);
                radix.get(&mut bits, count - 1, &mut qs)?;
                for (i, q) in qs.into_iter().enumerate() {
                    let res = min.wrapping_add(q.wrapping_mul(g) as i64);
                    let p = predict(&n, i + 1, k);
                    n.push(p.wrapping_add(res));
                }
            }
            out.extend(n.iter().map(|&x| x as f64 / s));
        }
        _ => return Err(ChunkError("unknown value mode")),
    }
    Ok(out)
}

/// Encodes a format-2 chunk: series sorted by increasing id, each non-empty
/// and sorted by strictly increasing timestamp (what [`merge`] returns).
pub fn encode_device(series: &[SeriesSamples]) -> Vec<u8> {
    debug_assert!(
        series.windows(2).all(|w| w[0].0 < w[1].0),
        "series ids increase"
    );
    debug_assert!(
        series
            .iter()
            .all(|(_, s)| s.windows(2).all(|w| w[0].0 < w[1].0)),
        "timestamps increase"
    );
    let mut union: Vec<u64> = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.0))
        .collect();
    union.sort_unstable();
    union.dedup();
    let total: usize = series.iter().map(|(_, s)| s.len()).sum();
    let mut out = Vec::with_capacity(16 + union.len() * 2 + total * 2);
    out.push(DEVICE_VERSION);
    put_timestamps(&mut out, &union);
    put_varint(&mut out, series.len() as u64);
    let mut body = Vec::new();
    for (id, samples) in series {
        body.clear();
        // Indexes of this series' timestamps in the union.
        let mut present = Vec::with_capacity(samples.len());
        let mut j = 0usize;
        for &(t, _) in samples {
            while union[j] < t {
                j += 1;
            }
            present.push(j);
        }
        if present.len() == union.len() {
            body.push(0);
        } else {
            let mut missing = Vec::with_capacity(union.len() - present.len());
            let mut p = present.iter().peekable();
            for i in 0..union.len() {
                if p.peek() == Some(&&i) {
                    p.next();
                } else {
                    missing.push(i);
                }
            }
            let (kind, list) = if missing.len() <= present.len() {
                (1u8, &missing)
            } else {
                (2u8, &present)
            };
            body.push(kind);
            put_varint(&mut body, list.len() as u64);
            let mut prev = 0usize;
            for (n, &i) in list.iter().enumerate() {
                put_varint(&mut body, (if n == 0 { i } else { i - prev - 1 }) as u64);
                prev = i;
            }
        }
        let values: Vec<f64> = samples.iter().map(|p| p.1).collect();
        put_values(&mut body, &values);
        put_varint(&mut out, u64::from(*id));
        put_varint(&mut out, body.len() as u64);
        out.extend_from_slice(&body);
    }
    out
}

/// Whether `bytes` is a format-2 chunk.
pub fn is_device_chunk(bytes: &[u8]) -> bool {
    bytes.first() == Some(&DEVICE_VERSION)
}

/// Parses a format-2 chunk; calls `f(id, body reader)` for each series
/// (`f` returns whether to decode the body, or skips it).
fn walk_device(
    bytes: &[u8],
    mut f: impl FnMut(u32, &[u64], &[u8]) -> Result<bool, ChunkError>,
) -> Result<Vec<u64>, ChunkError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    if r.byte()? != DEVICE_VERSION {
        return Err(ChunkError("not a format-2 chunk"));
    }
    let union = r.timestamps()?;
    let n_series = r.varint()?;
    if n_series > MAX_SERIES || n_series > bytes.len() as u64 {
        return Err(ChunkError("implausible series count"));
    }
    let mut last_id: Option<u32> = None;
    for _ in 0..n_series {
        let id = u32::try_from(r.varint()?).map_err(|_| ChunkError("series id over 32 bits"))?;
        if last_id.is_some_and(|l| l >= id) {
            return Err(ChunkError("series ids out of order"));
        }
        last_id = Some(id);
        let len = usize::try_from(r.varint()?).map_err(|_| ChunkError("series too long"))?;
        let body = r.take(len)?;
        if !f(id, &union, body)? {
            break;
        }
    }
    Ok(union)
}

/// Decodes one series body of a format-2 chunk against its timestamp union.
fn decode_body(union: &[u64], body: &[u8]) -> Result<Vec<(u64, f64)>, ChunkError> {
    let mut r = Reader { buf: body, pos: 0 };
    let ts = presence(&mut r, union)?;
    let values = read_values(&mut r, ts.len())?;
    if r.pos != body.len() {
        return Err(ChunkError("trailing bytes in a series"));
    }
    Ok(ts.into_iter().zip(values).collect())
}

fn presence(r: &mut Reader<'_>, union: &[u64]) -> Result<Vec<u64>, ChunkError> {
    let kind = r.byte()?;
    if kind == 0 {
        return Ok(union.to_vec());
    }
    if kind > 2 {
        return Err(ChunkError("unknown presence kind"));
    }
    let n = r.varint()?;
    if n > union.len() as u64 {
        return Err(ChunkError("presence list longer than the timestamps"));
    }
    let mut list = Vec::with_capacity(n as usize);
    let mut prev = 0u64;
    for i in 0..n {
        let g = r.varint()?;
        let idx = if i == 0 {
            g
        } else {
            prev.checked_add(g)
                .and_then(|x| x.checked_add(1))
                .ok_or(ChunkError("presence index overflow"))?
        };
        if idx >= union.len() as u64 {
            return Err(ChunkError("presence index out of range"));
        }
        list.push(idx as usize);
        prev = idx;
    }
    Ok(if kind == 2 {
        list.iter().map(|&i| union[i]).collect()
    } else {
        let mut m = list.iter().peekable();
        let mut out = Vec::with_capacity(union.len() - list.len());
        for (i, &t) in union.iter().enumerate() {
            if m.peek() == Some(&&i) {
                m.next();
            } else {
                out.push(t);
            }
        }
        out
    })
}

/// Decodes every series of a format-2 chunk. Never panics on malformed input.
pub fn decode_device(bytes: &[u8]) -> Result<Vec<SeriesSamples>, ChunkError> {
    let mut out = Vec::new();
    walk_device(bytes, |id, union, body| {
        out.push((id, decode_body(union, body)?));
        Ok(true)
    })?;
    Ok(out)
}

/// Decodes one series of a format-2 chunk (skipping the others' values):
/// `None` if the chunk does not hold it.
pub fn decode_device_series(bytes: &[u8], id: u32) -> Result<Option<Vec<(u64, f64)>>, ChunkError> {
    let mut found = None;
    walk_device(bytes, |sid, union, body| {
        if sid == id {
            found = Some(decode_body(union, body)?);
            return Ok(false);
        }
        Ok(sid < id)
    })?;
    Ok(found)
}

/// Where the bytes of a chunk (either format) go.
pub fn anatomy(bytes: &[u8]) -> Result<Anatomy, ChunkError> {
    match bytes.first() {
        Some(&VERSION) => {
            let mut r = Reader { buf: bytes, pos: 1 };
            let ts = r.timestamps()?;
            let ts_end = r.pos;
            let first_ts_end = if ts.is_empty() {
                ts_end
            } else {
                // version + count + first timestamp are the header.
                let mut h = Reader { buf: bytes, pos: 1 };
                h.varint()?;
                h.varint()?;
                h.pos
            };
            Ok(Anatomy {
                header_bytes: first_ts_end,
                timestamp_bytes: ts_end - first_ts_end,
                series: vec![SeriesAnatomy {
                    id: None,
                    samples: ts.len(),
                    header_bytes: usize::from(!ts.is_empty()),
                    value_bytes: bytes.len() - ts_end - usize::from(!ts.is_empty()),
                }],
            })
        }
        Some(&DEVICE_VERSION) => {
            let mut a = Anatomy::default();
            let union = walk_device(bytes, |id, union, body| {
                let mut r = Reader { buf: body, pos: 0 };
                let n = presence(&mut r, union)?.len();
                let mode = r.byte()?;
                let header_end = if mode == MODE_RAW || n == 0 {
                    r.pos
                } else {
                    r.byte()?;
                    r.varint()?;
                    if n > 1 {
                        r.varint()?;
                        r.varint()?;
                        r.varint()?;
                    }
                    r.pos
                };
                a.series.push(SeriesAnatomy {
                    id: Some(id),
                    samples: n,
                    header_bytes: header_end,
                    value_bytes: body.len() - header_end,
                });
                Ok(true)
            })?;
            let mut ts = Vec::new();
            put_timestamps(&mut ts, &union);
            a.timestamp_bytes = ts.len();
            let body_total: usize = a
                .series
                .iter()
                .map(|s| s.header_bytes + s.value_bytes)
                .sum();
            a.header_bytes = bytes.len() - a.timestamp_bytes - body_total;
            Ok(a)
        }
        _ => Err(ChunkError("unknown version")),
    }
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

    /// Random series of a device: ids increasing, each a random subset of
    /// a shared set of timestamps with random values of a random kind.
    fn device_series() -> impl Strategy<Value = Vec<SeriesSamples>> {
        (
            proptest::collection::btree_set(any::<u64>(), 1..150),
            proptest::collection::btree_set(0u32..1000, 1..8),
        )
            .prop_flat_map(|(ts, ids)| {
                let ts: Vec<u64> = ts.into_iter().collect();
                let n = ts.len();
                let one = (
                    proptest::collection::vec(any::<bool>(), n),
                    prop_oneof![
                        proptest::collection::vec(any::<f64>(), n),
                        proptest::collection::vec(
                            (-100_000i64..100_000).prop_map(|c| c as f64 / 100.0),
                            n
                        ),
                        proptest::collection::vec(any::<i64>().prop_map(|c| c as f64), n),
                        proptest::collection::vec(0u64..50, n).prop_map(|steps| {
                            let mut acc = 1e9;
                            steps
                                .into_iter()
                                .map(|s| {
                                    acc += s as f64 * 4096.0;
                                    acc
                                })
                                .collect()
                        }),
                    ],
                );
                (
                    Just(ts),
                    Just(ids.into_iter().collect::<Vec<u32>>()),
                    proptest::collection::vec(one, 8),
                )
            })
            .prop_map(|(ts, ids, cols)| {
                ids.iter()
                    .zip(cols)
                    .map(|(id, (keep, vals))| {
                        let mut s: Vec<(u64, f64)> = ts
                            .iter()
                            .zip(keep.iter())
                            .zip(vals)
                            .filter(|((_, k), _)| **k)
                            .map(|((t, _), v)| (*t, v))
                            .collect();
                        if s.is_empty() {
                            s.push((ts[0], 1.5));
                        }
                        (*id, s)
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn any_device_chunk_round_trips_bit_exactly(series in device_series()) {
            let bytes = encode_device(&series);
            let back = decode_device(&bytes).unwrap();
            prop_assert_eq!(back.len(), series.len());
            for ((id, s), (bid, b)) in series.iter().zip(&back) {
                prop_assert_eq!(id, bid);
                prop_assert!(same(s, b));
                let one = decode_device_series(&bytes, *id).unwrap().unwrap();
                prop_assert!(same(s, &one));
            }
            prop_assert_eq!(decode_device_series(&bytes, 5000).unwrap(), None);
            let a = anatomy(&bytes).unwrap();
            let total = a.header_bytes + a.timestamp_bytes
                + a.series.iter().map(|s| s.header_bytes + s.value_bytes).sum::<usize>();
            prop_assert_eq!(total, bytes.len());
        }

        #[test]
        fn decoding_garbage_as_a_device_chunk_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(b) = bytes.first_mut() { *b = DEVICE_VERSION; }
            let _ = decode_device(&bytes);
            let _ = decode_device_series(&bytes, 3);
            let _ = anatomy(&bytes);
        }
    }

    proptest! {
        #[test]
        fn mixed_radix_packing_round_trips_in_the_announced_bits(
            max_q in prop_oneof![0u64..3, 0u64..1000, any::<u64>(), Just(u64::MAX)],
            seeds in proptest::collection::vec(any::<u64>(), 0..300),
        ) {
            let qs: Vec<u64> = seeds
                .iter()
                .map(|s| if max_q == u64::MAX { *s } else { s % (max_q + 1) })
                .collect();
            let radix = Radix::new(max_q);
            let mut out = Vec::new();
            let mut w = BitWriter { out: &mut out, acc: 0, bits: 0 };
            radix.put(&mut w, &qs);
            w.finish();
            prop_assert_eq!(out.len() as u64, radix.bits(qs.len()).div_ceil(8));
            let mut r = BitReader { buf: &out, pos: 0, acc: 0, bits: 0 };
            let mut back = Vec::new();
            radix.get(&mut r, qs.len(), &mut back).unwrap();
            prop_assert_eq!(back, qs);
        }
    }

    #[test]
    fn a_range_of_21_values_costs_under_five_bits_a_value() {
        // 14 digits of base 21 (4.39 bits each) fit 62 bits: 4.43 bits a value.
        assert_eq!(Radix::new(20).bits(14), 62);
        assert_eq!(Radix::new(20).bits(15), 62 + 5);
        assert_eq!(Radix::new(255).bits(10), 80);
        assert_eq!(Radix::new(0).bits(1000), 0);
    }

    #[test]
    fn the_cheapest_predictor_is_chosen_per_series() {
        let ts: Vec<u64> = (0..1440u64)
            .map(|i| 1_700_000_000_000 + i * 60_000)
            .collect();
        let col = |f: &dyn Fn(u64) -> f64| {
            ts.iter()
                .map(|&t| (t, f((t - ts[0]) / 60_000)))
                .collect::<Vec<_>>()
        };
        let series = vec![
            (0, col(&|_| 8.0e9)),                            // constant
            (1, col(&|i| 86_400.0 + i as f64 * 60.0)),       // uptime: steady counter
            (2, col(&|i| 6.1e10 + (i % 7) as f64 * 4096.0)), // whole blocks
        ];
        let bytes = encode_device(&series);
        let a = anatomy(&bytes).unwrap();
        // Nothing but headers for the first two; whole blocks are counted in
        // blocks (at most 3 bits a sample), not bytes.
        assert_eq!(a.series[0].value_bytes, 0);
        assert_eq!(a.series[1].value_bytes, 0);
        assert!(a.series[2].value_bytes <= (1439 * 3usize).div_ceil(8));
        let back = decode_device(&bytes).unwrap();
        assert!(
            series
                .iter()
                .zip(&back)
                .all(|(a, b)| a.0 == b.0 && same(&a.1, &b.1))
        );
    }

    #[test]
    fn a_series_missing_some_timestamps_shares_the_column() {
        let a: Vec<(u64, f64)> = (0..100u64).map(|i| (i * 1000, 1.0)).collect();
        let b: Vec<(u64, f64)> = (1..100u64).map(|i| (i * 1000, i as f64)).collect();
        let series = vec![(0, a), (1, b)];
        let back = decode_device(&encode_device(&series)).unwrap();
        assert!(
            series
                .iter()
                .zip(&back)
                .all(|(x, y)| x.0 == y.0 && same(&x.1, &y.1))
        );
    }
}
