//! Dirty markers: `device | time` keys that name work to do later (a rollup
//! bucket to compute, a chunk window to seal), and passes over them that can
//! stop after a few markers and resume where they stopped.
//!
//! A pass that resumes never revisits a marker it has passed; a marker
//! written behind the cursor (a late sample re-opening an old bucket) waits
//! for the next pass, exactly as a marker written after a one-shot pass did.

use outpost_proto::DeviceId;

use crate::error::Result;
use crate::{Store, Table, keys};

/// Where a pass stands: the key to scan from next, or `None` once it has
/// reached the end of the markers.
pub type Resume = Option<Vec<u8>>;

/// Markers examined per ready marker wanted, at most: a slice that finds
/// nothing ready (every device's current bucket is still open) stays small.
const EXAMINE_PER_READY: usize = 8;

/// Up to `max` markers of `table`, from `from` on, whose span
/// `[time, time + span_ms)` closed at least `settle_ms` before `now_ms`,
/// examining at most `max × 8` markers; and where to resume.
pub fn ready_markers(
    store: &Store,
    table: Table,
    from: &[u8],
    span_ms: u64,
    settle_ms: u64,
    now_ms: u64,
    max: usize,
) -> Result<(Vec<(DeviceId, u64)>, Resume)> {
    let mut ready = Vec::new();
    let budget = max.saturating_mul(EXAMINE_PER_READY).max(1);
    let mut examined = 0usize;
    let mut last: Option<Vec<u8>> = None;
    let mut stopped = false;
    store.scan_raw(table, from, None, |k, _| {
        if let (Some(d), Some(t)) = (keys::device_from_key(k), keys::be_u64(k, 8))
            && t.saturating_add(span_ms).saturating_add(settle_ms) <= now_ms
        {
            ready.push((d, t));
        }
        examined += 1;
        if ready.len() >= max || examined >= budget {
            last = Some(k.to_vec());
            stopped = true;
            return Ok(false);
        }
        Ok(true)
    })?;
    // The key right after the last one examined: `key | 0x00`.
    let resume = match (stopped, last) {
        (true, Some(mut k)) => {
            k.push(0);
            Some(k)
        }
        _ => None,
    };
    Ok((ready, resume))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;
    use crate::rollup::ROLLUP_DIRTY;

    #[test]
    fn a_pass_in_slices_yields_each_ready_marker_once_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let mut batch = store.batch();
        // Three devices, buckets 0..5 of width 10; at now = 40 buckets 0..=2
        // are closed (with settle 5: t + 10 + 5 <= 40).
        for d in 1..=3u64 {
            for b in 0..5u64 {
                batch
                    .put_raw(
                        ROLLUP_DIRTY,
                        &keys::device_time_key(DeviceId(d), b * 10),
                        &[],
                    )
                    .unwrap();
            }
        }
        store.write(batch).unwrap();
        let mut seen = Vec::new();
        let mut from = Vec::new();
        let mut slices = 0;
        loop {
            let (ready, resume) = ready_markers(&store, ROLLUP_DIRTY, &from, 10, 5, 40, 2).unwrap();
            assert!(ready.len() <= 2, "a slice holds at most max");
            seen.extend(ready);
            slices += 1;
            match resume {
                Some(k) => from = k,
                None => break,
            }
            assert!(slices < 20, "the pass ends");
        }
        let want: Vec<(DeviceId, u64)> = (1..=3u64)
            .flat_map(|d| (0..3u64).map(move |b| (DeviceId(d), b * 10)))
            .collect();
        assert_eq!(seen, want);
        assert!(slices >= 5, "9 ready markers in slices of 2");
    }

    #[test]
    fn a_slice_that_finds_nothing_ready_stops_after_its_examine_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let mut batch = store.batch();
        for d in 1..=100u64 {
            batch
                .put_raw(
                    ROLLUP_DIRTY,
                    &keys::device_time_key(DeviceId(d), 1_000),
                    &[],
                )
                .unwrap();
        }
        store.write(batch).unwrap();
        // Nothing is closed at now = 0: one slice of max 2 examines 16.
        let (ready, resume) = ready_markers(&store, ROLLUP_DIRTY, &[], 10, 0, 0, 2).unwrap();
        assert!(ready.is_empty());
        let resume = resume.expect("the pass has more markers");
        assert_eq!(
            keys::device_from_key(&resume),
            Some(DeviceId(16)),
            "resumes right after the 16th marker"
        );
        assert!(resume > keys::device_time_key(DeviceId(16), 1_000).to_vec());
        assert!(resume < keys::device_time_key(DeviceId(17), 0).to_vec());
        // An empty table: the pass ends at once.
        let (_, end) =
            ready_markers(&store, crate::samples::CHUNK_DIRTY, &[], 10, 0, 0, 2).unwrap();
        assert_eq!(end, None);
    }
}
