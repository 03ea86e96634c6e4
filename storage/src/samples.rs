//! Raw samples: the head table (`samples`, one key per sample, written at
//! ingest) and sealed chunks (`chunks`, one compressed chunk per series and
//! 2-hour window; see [`crate::chunk`]). Readers see the union; where both
//! hold a timestamp, the head (newer) wins.

use outpost_proto::DeviceId;

use crate::chunk::{self, CHUNK_MS};
use crate::error::{Result, StorageError};
use crate::keys::{self, SeriesId};
use crate::rollup::{SeriesInfo, device_series};
use crate::{Codec, Store, Table};

/// `device | name 0 label` → series id (u32 BE): each device's series
/// dictionary.
pub const SERIES: Table = Table::new("series").codec(Codec::Raw);
/// `device | series | ts` → f64 (LE): the head of raw samples.
pub const SAMPLES: Table = Table::new("samples").codec(Codec::Raw).bulk();
/// `device | series | window start` → sealed chunk (see [`crate::chunk`]).
pub const CHUNKS: Table = Table::new("chunks").codec(Codec::Raw).bulk();
/// `device | window start` → () : windows with head samples to seal.
pub const CHUNK_DIRTY: Table = Table::new("chunk_dirty").codec(Codec::Raw);

/// Decodes a head sample value.
pub fn sample_value(v: &[u8]) -> Option<f64> {
    <[u8; 8]>::try_from(v).ok().map(f64::from_le_bytes)
}

fn head_in(
    store: &Store,
    device: DeviceId,
    series: SeriesId,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<(u64, f64)>> {
    let start = keys::series_time_key(device, series, from_ms);
    let end = keys::series_time_key(device, series, to_ms);
    let mut out = Vec::new();
    store.scan_raw(SAMPLES, &start, Some(&end), |k, v| {
        match (keys::parse_series_time_key(k), sample_value(v)) {
            (Some((_, _, ts)), Some(val)) => {
                out.push((ts, val));
                Ok(true)
            }
            _ => Err(StorageError::Invalid(format!(
                "malformed sample entry ({} key bytes, {} value bytes)",
                k.len(),
                v.len()
            ))),
        }
    })?;
    Ok(out)
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
    let start = keys::series_time_key(device, series, chunk::window_start(from_ms));
    let end = keys::series_time_key(device, series, to_ms);
    let mut out = Vec::new();
    store.scan_raw(CHUNKS, &start, Some(&end), |_, v| {
        out.extend(
            decode_chunk(v)?
                .into_iter()
                .filter(|(t, _)| *t >= from_ms && *t < to_ms),
        );
        Ok(true)
    })?;
    Ok(out)
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

/// The latest sample of one series.
pub fn latest(store: &Store, device: DeviceId, series: SeriesId) -> Result<Option<(u64, f64)>> {
    let from = keys::series_time_key(device, series, 0);
    let to = keys::series_time_key(device, series, u64::MAX);
    let head = match store.last_in_range(SAMPLES, &from, &to)? {
        Some((k, v)) => keys::parse_series_time_key(&k)
            .zip(sample_value(&v))
            .map(|((_, _, t), v)| (t, v)),
        None => None,
    };
    let sealed = match store.last_in_range(CHUNKS, &from, &to)? {
        Some((_, v)) => decode_chunk(&v)?.last().copied(),
        None => None,
    };
    Ok(match (head, sealed) {
        (Some(h), Some(s)) => Some(if s.0 > h.0 { s } else { h }),
        (h, s) => h.or(s),
    })
}

/// Seals up to `max_windows` dirty `(device, window)` pairs whose window
/// closed at least `settle_ms` ago: head samples are merged into the
/// window's chunk (late samples re-open a sealed window) and removed from
/// the head. Returns the pairs sealed.
pub fn seal_dirty(
    store: &Store,
    now_ms: u64,
    settle_ms: u64,
    max_windows: usize,
) -> Result<Vec<(DeviceId, u64)>> {
    let mut ready = Vec::new();
    store.scan_raw(CHUNK_DIRTY, &[], None, |k, _| {
        if let (Some(d), Some(w)) = (keys::device_from_key(k), keys::be_u64(k, 8))
            && w.saturating_add(CHUNK_MS).saturating_add(settle_ms) <= now_ms
        {
            ready.push((d, w));
        }
        Ok(ready.len() < max_windows)
    })?;
    let mut batch = store.batch();
    let mut series_of: Option<DeviceId> = None;
    let mut series: Vec<SeriesInfo> = Vec::new();
    for &(device, w) in &ready {
        if series_of != Some(device) {
            series = device_series(store, device)?;
            series_of = Some(device);
        }
        let end = w.saturating_add(CHUNK_MS);
        for s in &series {
            let head = head_in(store, device, s.id, w, end)?;
            if head.is_empty() {
                continue;
            }
            let key = keys::series_time_key(device, s.id, w);
            let merged = match store.get_raw(CHUNKS, &key)? {
                Some(old) => chunk::merge(&decode_chunk(&old)?, &head),
                None => head,
            };
            batch.put_raw(CHUNKS, &key, &chunk::encode(&merged))?;
            batch.delete_range(SAMPLES, &key, &keys::series_time_key(device, s.id, end))?;
        }
        batch.delete(CHUNK_DIRTY, &keys::device_time_key(device, w))?;
    }
    if !ready.is_empty() {
        store.write(batch)?;
    }
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;
    use crate::ingest::{IncomingRecords, IngestWriter};
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
        w.apply(
            &[IncomingRecords {
                device: d,
                records: recs,
            }],
            0,
        )
        .unwrap();
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
        w.apply(
            &[IncomingRecords {
                device: d,
                records: vec![rec(400, 30_500, 99.5)],
            }],
            0,
        )
        .unwrap();
        assert_eq!(all(&store, d).len(), 361);
        assert_eq!(w.seal_chunks(10 * CHUNK_MS, 0, 100).unwrap(), 1);
        let after = all(&store, d);
        assert_eq!(after.len(), 361);
        assert!(after.contains(&(30_500, 99.5)));
        assert!(after.windows(2).all(|p| p[0].0 < p[1].0), "time order");
    }
}
