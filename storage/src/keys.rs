//! Key encodings. Every multi-part key is big-endian and fixed-width where it
//! matters for ordering, so that lexicographic byte order equals the logical
//! order (device, then series, then time) and every range query is a prefix
//! or range scan.

use std::sync::atomic::{AtomicU64, Ordering};

use outpost_proto::DeviceId;

/// Width of a device id prefix.
pub const DEVICE_BYTES: usize = 8;
/// Width of a series id.
pub const SERIES_BYTES: usize = 4;
/// Width of a timestamp.
pub const TS_BYTES: usize = 8;

/// Per-device series identifier (dense, allocated in order of first sight).
pub type SeriesId = u32;

/// Reads a big-endian u64 at `at`, if there are 8 bytes there.
pub fn be_u64(key: &[u8], at: usize) -> Option<u64> {
    key.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

/// Reads a big-endian u32 at `at`, if there are 4 bytes there.
pub fn be_u32(key: &[u8], at: usize) -> Option<u32> {
    key.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
}

pub fn device_key(device: DeviceId) -> [u8; DEVICE_BYTES] {
    device.to_be_bytes()
}

pub fn device_from_key(key: &[u8]) -> Option<DeviceId> {
    be_u64(key, 0).map(DeviceId)
}

/// `device | ts_ms`: per-device time-ordered logs (status transitions).
pub fn device_time_key(device: DeviceId, ts_ms: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&device.to_be_bytes());
    k[8..].copy_from_slice(&ts_ms.to_be_bytes());
    k
}

/// `device | ts_ms | seq`: heartbeats. The sequence number makes the key
/// unique and deterministic, so a replayed record overwrites itself.
pub fn heartbeat_key(device: DeviceId, ts_ms: u64, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&device.to_be_bytes());
    k[8..16].copy_from_slice(&ts_ms.to_be_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `device | series | ts_ms`: samples and rollups.
pub fn series_time_key(device: DeviceId, series: SeriesId, ts_ms: u64) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..8].copy_from_slice(&device.to_be_bytes());
    k[8..12].copy_from_slice(&series.to_be_bytes());
    k[12..].copy_from_slice(&ts_ms.to_be_bytes());
    k
}

/// Splits a `device | series | ts_ms` key.
pub fn parse_series_time_key(key: &[u8]) -> Option<(DeviceId, SeriesId, u64)> {
    if key.len() != 20 {
        return None;
    }
    Some((DeviceId(be_u64(key, 0)?), be_u32(key, 8)?, be_u64(key, 12)?))
}

/// `device | name 0x00 label`: the per-device series dictionary.
pub fn series_name_key(device: DeviceId, name: &str, label: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len() + 1 + label.len());
    k.extend_from_slice(&device.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(label.as_bytes());
    k
}

/// Splits a series dictionary key into (device, name, label).
pub fn parse_series_name_key(key: &[u8]) -> Option<(DeviceId, String, String)> {
    let device = device_from_key(key)?;
    let rest = key.get(8..)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let name = std::str::from_utf8(&rest[..nul]).ok()?.to_string();
    let label = std::str::from_utf8(&rest[nul + 1..]).ok()?.to_string();
    Some((device, name, label))
}

/// The smallest key strictly greater than every key starting with `prefix`
/// (for exclusive upper bounds of prefix scans). `None` if the prefix is all
/// 0xFF bytes (no upper bound needed).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut v = prefix.to_vec();
    while let Some(last) = v.pop() {
        if last != 0xFF {
            v.push(last + 1);
            return Some(v);
        }
    }
    None
}

/// Makes [`time_counter_key`]s written in the same millisecond distinct.
static SAME_MS_COUNTER: AtomicU64 = AtomicU64::new(0);

/// `prefix | ts_ms (u64 BE) | n (W bytes BE)`: a key for logs whose entries
/// are ordered by time and may share a millisecond (audit entries, alert
/// events, uplink alert transitions). `n` comes from one process-wide
/// counter (its low `W` bytes), so two keys made by one process never
/// collide within a millisecond unless `W` bytes wrap in between. Readers
/// range-scan by `prefix | ts_ms` and never parse `n`.
pub fn time_counter_key<const W: usize>(prefix: &[u8], ts_ms: u64) -> Vec<u8> {
    const { assert!(W >= 1 && W <= 8) };
    let n = SAME_MS_COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .to_be_bytes();
    let mut k = Vec::with_capacity(prefix.len() + 8 + W);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&ts_ms.to_be_bytes());
    k.extend_from_slice(&n[8 - W..]);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn series_time_key_order_matches_tuple_order(
            a in (any::<u64>(), any::<u32>(), any::<u64>()),
            b in (any::<u64>(), any::<u32>(), any::<u64>()),
        ) {
            let ka = series_time_key(DeviceId(a.0), a.1, a.2);
            let kb = series_time_key(DeviceId(b.0), b.1, b.2);
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(parse_series_time_key(&ka), Some((DeviceId(a.0), a.1, a.2)));
        }

        #[test]
        fn heartbeat_key_order_matches_tuple_order(
            a in (any::<u64>(), any::<u64>(), any::<u64>()),
            b in (any::<u64>(), any::<u64>(), any::<u64>()),
        ) {
            let ka = heartbeat_key(DeviceId(a.0), a.1, a.2);
            let kb = heartbeat_key(DeviceId(b.0), b.1, b.2);
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn device_time_key_order_matches_tuple_order(
            a in (any::<u64>(), any::<u64>()),
            b in (any::<u64>(), any::<u64>()),
        ) {
            prop_assert_eq!(
                device_time_key(DeviceId(a.0), a.1).cmp(&device_time_key(DeviceId(b.0), b.1)),
                a.cmp(&b)
            );
        }

        #[test]
        fn series_name_keys_round_trip_and_group_by_device(
            d1 in any::<u64>(), d2 in any::<u64>(),
            n in "[a-z_]{1,20}", l in "[a-z0-9/]{0,20}",
        ) {
            let k = series_name_key(DeviceId(d1), &n, &l);
            prop_assert_eq!(parse_series_name_key(&k), Some((DeviceId(d1), n.clone(), l.clone())));
            let k2 = series_name_key(DeviceId(d2), &n, &l);
            // Device order dominates name order.
            prop_assert_eq!(k < k2, d1 < d2);
        }

        #[test]
        fn prefix_successor_bounds_every_extension(
            prefix in proptest::collection::vec(any::<u8>(), 1..10),
            ext in proptest::collection::vec(any::<u8>(), 0..10),
        ) {
            let mut key = prefix.clone();
            key.extend_from_slice(&ext);
            if let Some(succ) = prefix_successor(&prefix) {
                prop_assert!(key < succ);
                prop_assert!(prefix < succ);
            } else {
                prop_assert!(prefix.iter().all(|b| *b == 0xFF));
            }
        }
    }

    #[test]
    fn time_counter_keys_are_unique_within_a_millisecond_and_time_ordered() {
        let a = time_counter_key::<4>(b"p", 7);
        let b = time_counter_key::<4>(b"p", 7);
        let c = time_counter_key::<4>(b"p", 6);
        assert_eq!(a.len(), 1 + 8 + 4);
        assert_eq!(&a[..9], &[b'p', 0, 0, 0, 0, 0, 0, 0, 7]);
        assert_ne!(a, b);
        assert!(c < a && c < b, "an earlier millisecond sorts first");
        assert_eq!(time_counter_key::<8>(&[], 1).len(), 16);
    }

    #[test]
    fn prefix_successor_examples() {
        assert_eq!(prefix_successor(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
    }
}
