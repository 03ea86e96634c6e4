//! Columnar, lossless encoding of a batch's rollups.
//!
//! Each rollup (min, max, sum, count, last, last_ts) becomes a few small
//! integers in separate columns, which bincode writes as varints and zstd
//! then squeezes across devices:
//!
//! * Values are decimal-scaled: the agent reports two decimals, so
//!   `n = round(v * 10^e)` reproduces `v` bit for bit for the smallest such
//!   `e` (checked, else the four values go to a raw `f64` column).
//! * `max` and `last` are stored as offsets from `min`; `sum` as an offset
//!   from `count * min`, plus a correction in units in the last place, since
//!   a floating-point sum of decimals is rarely itself a short decimal.
//! * A constant series (min = max = last, sum = count * min exactly) stores
//!   `min` alone.
//! * Since format 2, `min` is stored as the difference to the `min` of the
//!   same series in the batch's previous entry (the previous device): a fleet
//!   of like machines reports the same totals, swap 0, similar loads, so most
//!   differences are 0 or small. Each batch stands alone (no reference to an
//!   earlier batch, which the outbox may have dropped).
//! * `count` and `last_ts` are shared by the series of a device and bucket
//!   (they come from the same metric records); exceptions are flagged.
//! * Series names are a per-batch string table.
//!
//! Decoding reproduces every `f64` bit pattern and rejects malformed input
//! with an error, never a panic. Every column is bounded while it is read
//! and the totals (entries, series per entry and in all, names, name
//! lengths, the bytes of the names once each series holds its own) are
//! checked against [`super::limits`] before the rollups are expanded.

use std::collections::HashMap;

use outpost_proto::DeviceId;
use serde::{Deserialize, Serialize};

use super::limits::{self, Limit};
use super::{BatchError, DeviceRollups, Rollup, SeriesRollup};

const RAW: u8 = 15;
const MAX_DECIMALS: u8 = 9;
const CONSTANT: u8 = 1 << 4;
const COUNT_EXCEPTION: u8 = 1 << 5;
const LAST_TS_EXCEPTION: u8 = 1 << 6;
/// Scaled integers stay below 2^53 so that `n as f64` is exact.
const MAX_SCALED: f64 = 9.0e15;

/// The columnar form (see the module docs). Columns are decoded bounded:
/// the per-entry ones by [`limits::MAX_ROLLUP_ENTRIES`], the per-series
/// ones by [`limits::MAX_SERIES_ROLLUPS`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompactRollups {
    #[serde(deserialize_with = "limits::de::series_names")]
    names: Vec<(String, String)>,
    // One entry per (device, bucket).
    #[serde(deserialize_with = "limits::de::rollup_entries")]
    devices: Vec<u64>,
    #[serde(deserialize_with = "limits::de::rollup_entries")]
    bucket_deltas: Vec<i64>,
    #[serde(deserialize_with = "limits::de::rollup_entries")]
    computed_offsets: Vec<i64>,
    #[serde(deserialize_with = "limits::de::rollup_entries")]
    counts: Vec<u64>,
    #[serde(deserialize_with = "limits::de::rollup_entries")]
    last_offsets: Vec<i64>,
    #[serde(deserialize_with = "limits::de::rollup_entries")]
    series_per_entry: Vec<u32>,
    // One entry per series rollup.
    #[serde(deserialize_with = "limits::de::series_rollups")]
    name_refs: Vec<u32>,
    #[serde(deserialize_with = "limits::de::series_rollups")]
    flags: Vec<u8>,
    #[serde(deserialize_with = "limits::de::series_rollups")]
    mins: Vec<i64>,
    #[serde(deserialize_with = "limits::de::series_rollups")]
    spans: Vec<u64>,
    #[serde(deserialize_with = "limits::de::series_rollups")]
    lasts: Vec<u64>,
    #[serde(deserialize_with = "limits::de::series_rollups")]
    sums: Vec<i64>,
    #[serde(deserialize_with = "limits::de::series_rollups")]
    sum_ulps: Vec<i64>,
    #[serde(deserialize_with = "limits::de::raw_values")]
    raw: Vec<f64>,
    #[serde(deserialize_with = "limits::de::series_rollups")]
    exception_counts: Vec<u64>,
    #[serde(deserialize_with = "limits::de::series_rollups")]
    exception_last_offsets: Vec<i64>,
}

fn scale(e: u8) -> f64 {
    10f64.powi(i32::from(e))
}

fn scaled(v: f64, e: u8) -> Option<i64> {
    let s = scale(e);
    let n = (v * s).round();
    (n.abs() < MAX_SCALED && ((n as i64) as f64 / s).to_bits() == v.to_bits()).then_some(n as i64)
}

/// The smallest number of decimals that represents every value exactly.
fn decimals(values: &[f64]) -> Option<u8> {
    (0..=MAX_DECIMALS).find(|&e| values.iter().all(|&v| scaled(v, e).is_some()))
}

fn unscale(n: i64, e: u8) -> f64 {
    n as f64 / scale(e)
}

fn is_constant(r: &Rollup) -> bool {
    r.min.to_bits() == r.max.to_bits()
        && r.min.to_bits() == r.last.to_bits()
        && (r.min * r.count as f64).to_bits() == r.sum.to_bits()
}

impl CompactRollups {
    /// Encodes rollups (lossless).
    pub fn encode(entries: &[DeviceRollups]) -> CompactRollups {
        let mut c = CompactRollups::default();
        let mut name_index: HashMap<(&str, &str), u32> = HashMap::new();
        let mut prev_bucket = 0u64;
        // Scaled `min` of each series in the previous entry that had it.
        let mut prev_min: Vec<i64> = Vec::new();
        for e in entries {
            c.devices.push(e.device.0);
            c.bucket_deltas
                .push(e.bucket_start_ms.wrapping_sub(prev_bucket) as i64);
            prev_bucket = e.bucket_start_ms;
            c.computed_offsets
                .push(e.computed_ms.wrapping_sub(e.bucket_start_ms) as i64);
            let (count, last_ts) = e
                .series
                .first()
                .map(|s| (s.rollup.count, s.rollup.last_ts_ms))
                .unwrap_or((0, e.bucket_start_ms));
            c.counts.push(count);
            c.last_offsets
                .push(last_ts.wrapping_sub(e.bucket_start_ms) as i64);
            c.series_per_entry.push(e.series.len() as u32);
            for s in &e.series {
                let next = c.names.len() as u32;
                let idx = *name_index
                    .entry((s.name.as_str(), s.label.as_str()))
                    .or_insert_with(|| {
                        c.names.push((s.name.clone(), s.label.clone()));
                        next
                    });
                c.name_refs.push(idx);
                if prev_min.len() <= idx as usize {
                    prev_min.resize(idx as usize + 1, 0);
                }
                let r = &s.rollup;
                let mut flags = 0u8;
                if r.count != count {
                    flags |= COUNT_EXCEPTION;
                    c.exception_counts.push(r.count);
                }
                if r.last_ts_ms != last_ts {
                    flags |= LAST_TS_EXCEPTION;
                    c.exception_last_offsets
                        .push(r.last_ts_ms.wrapping_sub(e.bucket_start_ms) as i64);
                }
                let constant = is_constant(r);
                if constant {
                    flags |= CONSTANT;
                }
                let values: &[f64] = if constant {
                    &[r.min]
                } else {
                    &[r.min, r.max, r.last]
                };
                let e_dec = decimals(values)
                    .filter(|&d| constant || (r.sum * scale(d)).round().abs() < MAX_SCALED);
                match e_dec {
                    Some(d) => {
                        flags |= d;
                        // Checked representable above.
                        let n_min = scaled(r.min, d).unwrap_or_default();
                        let prev = &mut prev_min[idx as usize];
                        c.mins.push(n_min.wrapping_sub(*prev));
                        *prev = n_min;
                        if !constant {
                            let n_max = scaled(r.max, d).unwrap_or_default();
                            let n_last = scaled(r.last, d).unwrap_or_default();
                            c.spans.push(n_max.wrapping_sub(n_min) as u64);
                            c.lasts.push(n_last.wrapping_sub(n_min) as u64);
                            let n_sum = (r.sum * scale(d)).round() as i64;
                            c.sums
                                .push(n_sum.wrapping_sub(n_min.wrapping_mul(r.count as i64)));
                            let approx = unscale(n_sum, d).to_bits();
                            c.sum_ulps.push(r.sum.to_bits().wrapping_sub(approx) as i64);
                        }
                    }
                    None => {
                        flags |= RAW;
                        c.raw.push(r.min);
                        if !constant {
                            c.raw.extend_from_slice(&[r.max, r.sum, r.last]);
                        }
                    }
                }
                c.flags.push(flags);
            }
        }
        c
    }

    /// Bytes of each column: (name, bincode bytes, bytes once that column
    /// alone is zstd-compressed at `level`), for size breakdowns (the
    /// batch compresses all columns together, so the last figures only
    /// rank the columns).
    pub fn column_sizes(&self, level: i32) -> Vec<(&'static str, usize, usize)> {
        fn one<T: Serialize + ?Sized>(
            name: &'static str,
            v: &T,
            level: i32,
        ) -> (&'static str, usize, usize) {
            let raw = outpost_proto::codec::encode(v).unwrap_or_default();
            let z = zstd::bulk::compress(&raw, level)
                .map(|z| z.len())
                .unwrap_or(raw.len());
            (name, raw.len(), z)
        }
        vec![
            one("names", &self.names, level),
            one("devices", &self.devices, level),
            one("bucket_deltas", &self.bucket_deltas, level),
            one("computed_offsets", &self.computed_offsets, level),
            one("counts", &self.counts, level),
            one("last_offsets", &self.last_offsets, level),
            one("series_per_entry", &self.series_per_entry, level),
            one("name_refs", &self.name_refs, level),
            one("flags", &self.flags, level),
            one("mins", &self.mins, level),
            one("spans", &self.spans, level),
            one("lasts", &self.lasts, level),
            one("sums", &self.sums, level),
            one("sum_ulps", &self.sum_ulps, level),
            one("raw", &self.raw, level),
            one("exception_counts", &self.exception_counts, level),
            one(
                "exception_last_offsets",
                &self.exception_last_offsets,
                level,
            ),
        ]
    }

    /// Decodes back to rollups, exactly as encoded (by this build).
    pub fn decode(&self) -> Result<Vec<DeviceRollups>, BatchError> {
        self.decode_format(super::BATCH_FORMAT)
    }

    /// Checks the shape and the totals against [`limits`] without
    /// expanding anything: the columns agree in length, every count, name
    /// and name reference is within bounds.
    fn check(&self) -> Result<(), BatchError> {
        let malformed = |m: &str| BatchError::Malformed(m.into());
        let n = self.devices.len();
        Limit::RollupEntries.check(n as u64)?;
        if [
            self.bucket_deltas.len(),
            self.computed_offsets.len(),
            self.counts.len(),
            self.last_offsets.len(),
            self.series_per_entry.len(),
        ]
        .iter()
        .any(|l| *l != n)
        {
            return Err(malformed("rollup entry columns differ in length"));
        }
        Limit::SeriesNames.check(self.names.len() as u64)?;
        for (name, label) in &self.names {
            limits::check_name(name)?;
            limits::check_name(label)?;
        }
        let mut total = 0u64;
        for &k in &self.series_per_entry {
            Limit::SeriesPerEntry.check(u64::from(k))?;
            total += u64::from(k);
        }
        Limit::SeriesRollups.check(total)?;
        if total != self.name_refs.len() as u64 || total != self.flags.len() as u64 {
            return Err(malformed("rollup series columns differ in length"));
        }
        let mut expanded = 0u64;
        for &r in &self.name_refs {
            let (name, label) = self
                .names
                .get(r as usize)
                .ok_or_else(|| malformed("rollup names a series outside the table"))?;
            expanded += (name.len() + label.len()) as u64;
        }
        Limit::ExpandedNameBytes.check(expanded)?;
        Ok(())
    }

    /// Decodes rollups written in batch `format` 1 (absolute `min`) or 2
    /// and later (`min` relative to the same series' previous entry),
    /// after [`CompactRollups::check`].
    pub fn decode_format(&self, format: u16) -> Result<Vec<DeviceRollups>, BatchError> {
        self.check()?;
        self.expand(format).map_err(BatchError::Malformed)
    }

    fn expand(&self, format: u16) -> Result<Vec<DeviceRollups>, String> {
        let min_deltas = format >= 2;
        let mut prev_min = vec![0i64; self.names.len()];
        fn take<T: Copy>(it: &mut std::slice::Iter<'_, T>, what: &str) -> Result<T, String> {
            it.next()
                .copied()
                .ok_or_else(|| format!("rollup column {what} too short"))
        }
        let n = self.devices.len();
        let mut name_refs = self.name_refs.iter();
        let mut flags_it = self.flags.iter();
        let mut mins = self.mins.iter();
        let mut spans = self.spans.iter();
        let mut lasts = self.lasts.iter();
        let mut sums = self.sums.iter();
        let mut ulps = self.sum_ulps.iter();
        let mut raw = self.raw.iter();
        let mut exc_counts = self.exception_counts.iter();
        let mut exc_last = self.exception_last_offsets.iter();
        let mut out = Vec::with_capacity(n);
        let mut bucket = 0u64;
        for i in 0..n {
            bucket = bucket.wrapping_add(self.bucket_deltas[i] as u64);
            let count0 = self.counts[i];
            let last0 = bucket.wrapping_add(self.last_offsets[i] as u64);
            let k = self.series_per_entry[i] as usize;
            // `k` was checked against the limit.
            let mut series = Vec::with_capacity(k);
            for _ in 0..k {
                let idx = take(&mut name_refs, "names")? as usize;
                let (name, label) = self
                    .names
                    .get(idx)
                    .cloned()
                    .ok_or("rollup names a series outside the table")?;
                let flags = take(&mut flags_it, "flags")?;
                let count = if flags & COUNT_EXCEPTION != 0 {
                    take(&mut exc_counts, "counts")?
                } else {
                    count0
                };
                let last_ts_ms = if flags & LAST_TS_EXCEPTION != 0 {
                    bucket.wrapping_add(take(&mut exc_last, "last offsets")? as u64)
                } else {
                    last0
                };
                let constant = flags & CONSTANT != 0;
                let d = flags & 0x0F;
                let (min, max, sum, last) = if d == RAW {
                    let min = take(&mut raw, "raw")?;
                    if constant {
                        (min, min, min * count as f64, min)
                    } else {
                        (
                            min,
                            take(&mut raw, "raw")?,
                            take(&mut raw, "raw")?,
                            take(&mut raw, "raw")?,
                        )
                    }
                } else if d <= MAX_DECIMALS {
                    let mut n_min = take(&mut mins, "mins")?;
                    if min_deltas {
                        // `idx` was checked against the names table above.
                        let prev = &mut prev_min[idx];
                        n_min = n_min.wrapping_add(*prev);
                        *prev = n_min;
                    }
                    let min = unscale(n_min, d);
                    if constant {
                        (min, min, min * count as f64, min)
                    } else {
                        let max = unscale(n_min.wrapping_add(take(&mut spans, "spans")? as i64), d);
                        let last =
                            unscale(n_min.wrapping_add(take(&mut lasts, "lasts")? as i64), d);
                        let n_sum =
                            take(&mut sums, "sums")?.wrapping_add(n_min.wrapping_mul(count as i64));
                        let approx = unscale(n_sum, d).to_bits();
                        let sum = f64::from_bits(
                            approx.wrapping_add(take(&mut ulps, "sum ulps")? as u64),
                        );
                        (min, max, sum, last)
                    }
                } else {
                    return Err(format!("unknown value mode {d}"));
                };
                series.push(SeriesRollup {
                    name,
                    label,
                    rollup: Rollup {
                        min,
                        max,
                        sum,
                        count,
                        last,
                        last_ts_ms,
                    },
                });
            }
            out.push(DeviceRollups {
                device: DeviceId(self.devices[i]),
                bucket_start_ms: bucket,
                computed_ms: bucket.wrapping_add(self.computed_offsets[i] as u64),
                series,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Folds samples the way the appliance's rollup writer does.
    fn fold(samples: &[(u64, f64)]) -> Rollup {
        let (t0, v0) = samples[0];
        let mut r = Rollup {
            min: v0,
            max: v0,
            sum: v0,
            count: 1,
            last: v0,
            last_ts_ms: t0,
        };
        for &(t, v) in &samples[1..] {
            r.min = r.min.min(v);
            r.max = r.max.max(v);
            r.sum += v;
            r.count += 1;
            if t >= r.last_ts_ms {
                r.last = v;
                r.last_ts_ms = t;
            }
        }
        r
    }

    fn bits(r: &Rollup) -> [u64; 6] {
        [
            r.min.to_bits(),
            r.max.to_bits(),
            r.sum.to_bits(),
            r.count,
            r.last.to_bits(),
            r.last_ts_ms,
        ]
    }

    fn assert_exact(a: &[DeviceRollups], b: &[DeviceRollups]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(
                (x.device, x.bucket_start_ms, x.computed_ms),
                (y.device, y.bucket_start_ms, y.computed_ms)
            );
            assert_eq!(x.series.len(), y.series.len());
            for (s, t) in x.series.iter().zip(&y.series) {
                assert_eq!((&s.name, &s.label), (&t.name, &t.label));
                assert_eq!(bits(&s.rollup), bits(&t.rollup), "{s:?} vs {t:?}");
            }
        }
    }

    proptest! {
        /// Rollups folded from realistic two-decimal samples, and from
        /// arbitrary f64 values, decode to the same bits.
        #[test]
        fn encoding_is_lossless(
            devices in proptest::collection::vec(
                (any::<u64>(), 0u64..1_000_000, proptest::collection::vec(
                    (0usize..6, proptest::collection::vec((0u64..300_000, -1.0e7f64..1.0e7), 1..8), any::<bool>()),
                    0..6)),
                0..5),
        ) {
            let names = ["cpu", "memory", "disk_used_percent", "net_rx_bytes", "load1", "uptime_seconds"];
            let mut entries = Vec::new();
            for (dev, bucket_idx, series) in &devices {
                let bucket = bucket_idx * 300_000;
                let mut ss = Vec::new();
                for (name, samples, decimal) in series {
                    let samples: Vec<(u64, f64)> = samples
                        .iter()
                        .map(|(t, v)| (bucket + t, if *decimal { (v * 100.0).round() / 100.0 } else { *v }))
                        .collect();
                    ss.push(SeriesRollup {
                        name: names[*name].into(),
                        label: if *name == 2 { "/".into() } else { String::new() },
                        rollup: fold(&samples),
                    });
                }
                entries.push(DeviceRollups {
                    device: DeviceId(*dev),
                    bucket_start_ms: bucket,
                    computed_ms: bucket + 420_000,
                    series: ss,
                });
            }
            let c = CompactRollups::encode(&entries);
            let back = c.decode().unwrap();
            assert_exact(&back, &entries);
        }
    }

    #[test]
    fn special_values_survive() {
        let weird = [
            0.0,
            -0.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            1e300,
            -1e-300,
            0.1 + 0.2,
        ];
        let series = weird
            .iter()
            .map(|&v| SeriesRollup {
                name: "x".into(),
                label: String::new(),
                rollup: fold(&[(1, v), (2, v / 3.0), (3, v)]),
            })
            .collect();
        let e = vec![DeviceRollups {
            device: DeviceId(1),
            bucket_start_ms: 0,
            computed_ms: 5,
            series,
        }];
        assert_exact(&CompactRollups::encode(&e).decode().unwrap(), &e);
    }

    /// Like machines report like values: the `min` column holds the first
    /// device's values and then only differences, which are 0 here.
    #[test]
    fn like_devices_store_min_differences() {
        let entry = |dev: u64, cpu: f64| DeviceRollups {
            device: DeviceId(dev),
            bucket_start_ms: 600_000,
            computed_ms: 1_020_000,
            series: ["memory_total_bytes", "swap", "cpu"]
                .iter()
                .zip([8.0e9, 0.0, cpu])
                .map(|(n, v)| SeriesRollup {
                    name: (*n).into(),
                    label: String::new(),
                    rollup: fold(&[(600_001, v), (660_001, v)]),
                })
                .collect(),
        };
        let e: Vec<DeviceRollups> = (0..4).map(|d| entry(d, 12.5 + d as f64)).collect();
        let c = CompactRollups::encode(&e);
        assert_eq!(&c.mins[..3], &[8_000_000_000, 0, 125]);
        assert_eq!(&c.mins[3..], &[0, 0, 10, 0, 0, 10, 0, 0, 10]);
        assert_exact(&c.decode().unwrap(), &e);
        // Read as format 1 (absolute minimums) the same columns mean
        // something else: the format number matters.
        assert_ne!(c.decode_format(1).unwrap(), e);
        assert_exact(&c.decode_format(1).unwrap()[..1], &e[..1]);
    }

    #[test]
    fn malformed_columns_are_errors() {
        let e = vec![DeviceRollups {
            device: DeviceId(1),
            bucket_start_ms: 0,
            computed_ms: 5,
            series: vec![SeriesRollup {
                name: "cpu".into(),
                label: String::new(),
                rollup: fold(&[(1, 1.25), (2, 2.5)]),
            }],
        }];
        let good = CompactRollups::encode(&e);
        let mut c = good.clone();
        c.mins.clear();
        assert!(c.decode().is_err());
        let mut c = good.clone();
        c.name_refs[0] = 99;
        assert!(c.decode().is_err());
        let mut c = good.clone();
        c.series_per_entry[0] = u32::MAX;
        assert!(c.decode().is_err());
        let mut c = good;
        c.flags[0] = 0x0C;
        assert!(c.decode().is_err());
    }

    fn over(r: Result<Vec<DeviceRollups>, BatchError>) -> Limit {
        match r {
            Err(BatchError::OverLimit(o)) => o.limit,
            other => panic!("expected an over-limit error, got {other:?}"),
        }
    }

    /// `entries` entries of `k` constant series each, all naming table
    /// entry 0: the columns of a batch that claims far more than it sends.
    fn claiming(names: Vec<(String, String)>, entries: usize, k: u32) -> CompactRollups {
        let total = entries * k as usize;
        CompactRollups {
            names,
            devices: vec![1; entries],
            bucket_deltas: vec![0; entries],
            computed_offsets: vec![0; entries],
            counts: vec![1; entries],
            last_offsets: vec![0; entries],
            series_per_entry: vec![k; entries],
            name_refs: vec![0; total],
            flags: vec![CONSTANT; total],
            mins: vec![0; total],
            ..CompactRollups::default()
        }
    }

    /// The name table is sent once but each decoded series holds its own
    /// copy: one 128-byte name and label referenced by 327,680 series
    /// (a few hundred KB compressed) would expand to 80 MiB of names. The
    /// total is checked before anything is expanded.
    #[test]
    fn names_referenced_by_many_series_are_bounded_before_they_are_copied() {
        let long = ("n".repeat(MAX_NAME_BYTES_T), "l".repeat(MAX_NAME_BYTES_T));
        let c = claiming(vec![long.clone()], 20, 16_384);
        assert_eq!(over(c.decode()), Limit::ExpandedNameBytes);
        // Short names, the same number of series: fine.
        let c = claiming(vec![("cpu".into(), String::new())], 20, 16_384);
        assert_eq!(c.decode().unwrap().len(), 20);
        // Within the bound, long names decode too.
        let c = claiming(vec![long], 2, 100);
        assert_eq!(
            c.decode().unwrap()[1].series[99].name.len(),
            MAX_NAME_BYTES_T
        );
    }

    const MAX_NAME_BYTES_T: usize = limits::MAX_NAME_BYTES;

    #[test]
    fn counts_and_name_lengths_above_the_limits_are_refused() {
        let c = claiming(
            vec![("x".repeat(MAX_NAME_BYTES_T + 1), String::new())],
            1,
            1,
        );
        assert_eq!(over(c.decode()), Limit::NameBytes);
        let c = claiming(
            vec![(String::new(), "y".repeat(MAX_NAME_BYTES_T + 1))],
            1,
            1,
        );
        assert_eq!(over(c.decode()), Limit::NameBytes);
        let mut c = claiming(vec![("cpu".into(), String::new())], 1, 1);
        c.series_per_entry[0] = limits::MAX_SERIES_PER_ENTRY as u32 + 1;
        assert_eq!(over(c.decode()), Limit::SeriesPerEntry);
        // Series in all: 61 entries of 16,384 fit, 62 do not.
        let c = claiming(vec![("cpu".into(), String::new())], 61, 16_384);
        assert!(c.check().is_ok());
        let c = claiming(vec![("cpu".into(), String::new())], 62, 16_384);
        assert_eq!(over(c.decode()), Limit::SeriesRollups);
    }

    /// Decoding the columns from bytes: a column longer than its limit is
    /// refused on its length prefix, before it is read.
    #[test]
    fn a_column_claiming_more_than_its_limit_is_refused_on_its_length() {
        let mut bytes = Vec::new();
        // names: empty; devices: claims 2^40 entries in 6 bytes.
        outpost_proto::codec::encode_into(&Vec::<(String, String)>::new(), &mut bytes).unwrap();
        outpost_proto::codec::encode_into(&(1u64 << 40), &mut bytes).unwrap();
        let err = outpost_proto::codec::decode::<CompactRollups>(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("batch over limit rollup_entries"),
            "{err}"
        );
    }
}
