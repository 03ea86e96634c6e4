//! Retention: deletes data older than its window with range deletions, off
//! the ingest path (a background job calls [`enforce`]).
//!
//! A range is deleted only when it holds something: every range tombstone
//! stays until compaction drops it, and each one costs every iterator
//! opened over its keys. Deleting every series' range of every device on
//! every pass (as before) left 4 million tombstones per hourly pass at
//! 50,000 devices, and the next start of the appliance spent more than ten
//! minutes reading the devices' latest values through them.

use std::time::Duration;

use crate::Store;
use crate::error::Result;
use crate::ingest::STATUS_LOG;
use crate::keys;
use crate::model::DeviceRecord;
use crate::registry::DEVICES;
use crate::rollup::ROLLUPS;
use crate::samples::CHUNKS;

/// How long each kind of data is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Raw samples and heartbeats.
    pub raw: Duration,
    /// 5-minute rollups and status transitions.
    pub rollups: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            raw: Duration::from_secs(30 * 24 * 3600),
            rollups: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// What one retention pass covered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    pub devices: u64,
    pub ranges_deleted: u64,
    pub raw_cutoff_ms: u64,
    pub rollup_cutoff_ms: u64,
}

/// Deletes, for every device, samples and heartbeats older than
/// `now - policy.raw`, and rollups and status transitions older than
/// `now - policy.rollups`.
pub fn enforce(store: &Store, now_ms: u64, policy: &RetentionPolicy) -> Result<RetentionReport> {
    let raw_cutoff = now_ms.saturating_sub(policy.raw.as_millis() as u64);
    let rollup_cutoff = now_ms.saturating_sub(policy.rollups.as_millis() as u64);
    let mut report = RetentionReport {
        raw_cutoff_ms: raw_cutoff,
        rollup_cutoff_ms: rollup_cutoff,
        ..RetentionReport::default()
    };
    let mut devices = Vec::new();
    store.scan::<DeviceRecord>(DEVICES, &[], None, |_, d| {
        devices.push(d.id);
        true
    })?;
    report.devices = devices.len() as u64;
    let mut batch = store.batch();
    // Adds the range deletion of `[from, to)` in `table` if it holds a key.
    let mut drop_range = |table: crate::Table, from: &[u8], to: &[u8]| -> Result<()> {
        let mut held = false;
        store.scan_raw(table, from, Some(to), |_, _| {
            held = true;
            Ok(false)
        })?;
        if held {
            batch.delete_range(table, from, to)?;
            report.ranges_deleted += 1;
        }
        Ok(())
    };
    for device in devices {
        let series: Vec<u32> = crate::rollup::device_series(store, device)?
            .into_iter()
            .map(|s| s.id)
            .collect();
        // Format-2 chunks span a day: a day is dropped once it is wholly
        // older than the cutoff (raw samples live up to a day longer).
        let mut groups: Vec<u32> = series
            .iter()
            .map(|s| crate::samples::group_of(*s))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        for g in groups {
            drop_range(
                CHUNKS,
                &keys::series_time_key(device, g, 0),
                &keys::series_time_key(device, g, crate::chunk::day_start(raw_cutoff)),
            )?;
        }
        for sid in series {
            drop_range(
                crate::head::LEGACY,
                &keys::series_time_key(device, sid, 0),
                &keys::series_time_key(device, sid, raw_cutoff),
            )?;
            drop_range(
                CHUNKS,
                &keys::series_time_key(device, sid, 0),
                &keys::series_time_key(device, sid, crate::chunk::window_start(raw_cutoff)),
            )?;
            drop_range(
                ROLLUPS,
                &keys::series_time_key(device, sid, 0),
                &keys::series_time_key(device, sid, rollup_cutoff),
            )?;
        }
        let (from, to) = crate::head::expired_blocks(device, raw_cutoff);
        drop_range(crate::head::BLOCKS, &from, &to)?;
        for (table, from, to) in crate::heartbeats::expired_ranges(device, raw_cutoff) {
            drop_range(table, &from, &to)?;
        }
        drop_range(
            STATUS_LOG,
            &keys::device_time_key(device, 0),
            &keys::device_time_key(device, rollup_cutoff),
        )?;
    }
    store.write(batch)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;
    use crate::ingest::{IncomingRecords, IngestWriter};
    use crate::model::DeviceRecord;
    use crate::rollup::BUCKET_MS;
    use outpost_proto::DeviceId;
    use outpost_proto::messages::{Heartbeat, MetricValue, MetricsSample, Record, RecordBody};

    const DAY: u64 = 24 * 3600 * 1000;

    #[test]
    fn retention_removes_only_what_is_older_than_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default(), crate::TABLES).unwrap();
        let devs = [DeviceId(1), DeviceId(2)];
        for d in devs {
            crate::registry::register(
                &store,
                &DeviceRecord {
                    id: d,
                    tenant: "t".into(),
                    customer: Default::default(),
                    hostname: "h".into(),
                    os: String::new(),
                    kernel: String::new(),
                    arch: String::new(),
                    agent_version: String::new(),
                    enrolled_at_ms: 0,
                    cert_serial: String::new(),
                    revoked_at_ms: None,
                },
            )
            .unwrap();
        }
        let mut w = IngestWriter::new(store.clone(), 0).unwrap();
        // One sample and one heartbeat every 6 hours for 40 days.
        let times: Vec<u64> = (0..160).map(|i| i * DAY / 4 + 1).collect();
        for d in devs {
            let mut recs = Vec::new();
            for (i, t) in times.iter().enumerate() {
                recs.push(Record {
                    seq: 2 * i as u64 + 1,
                    ts_ms: *t,
                    body: RecordBody::Heartbeat(Heartbeat {
                        uptime_s: 0,
                        buffered_records: 0,
                        dropped_records: 0,
                    }),
                });
                recs.push(Record {
                    seq: 2 * i as u64 + 2,
                    ts_ms: *t,
                    body: RecordBody::Metrics(MetricsSample {
                        values: vec![MetricValue {
                            name: "cpu".into(),
                            label: String::new(),
                            value: i as f64,
                        }],
                    }),
                });
            }
            w.apply(
                &[IncomingRecords {
                    device: d,
                    records: recs,
                }],
                0,
            )
            .unwrap();
        }
        let now = 40 * DAY;
        w.roll_up(now, 0, usize::MAX).unwrap();
        let policy = RetentionPolicy {
            raw: std::time::Duration::from_secs(30 * 24 * 3600),
            rollups: std::time::Duration::from_secs(35 * 24 * 3600),
        };
        let report = enforce(&store, now, &policy).unwrap();
        assert_eq!(report.devices, 2);
        // Per device: the old samples' day chunks and head, the old
        // heartbeats and rollups (nothing in the status log, no format-1
        // chunks).
        assert!(report.ranges_deleted > 0, "{report:?}");
        // A second pass finds nothing old: it writes no range tombstone.
        let again = enforce(&store, now, &policy).unwrap();
        assert_eq!((again.devices, again.ranges_deleted), (2, 0), "{again:?}");
        let raw_cutoff = now - 30 * DAY;
        let rollup_cutoff = now - 35 * DAY;
        for d in devs {
            let mut kept = Vec::new();
            crate::samples::samples_in(&store, d, 0, 0, u64::MAX, |ts, _| {
                kept.push(ts);
                true
            })
            .unwrap();
            let want: Vec<u64> = times.iter().copied().filter(|t| *t >= raw_cutoff).collect();
            assert_eq!(kept, want, "samples of {d}");
            let hbs: Vec<u64> = crate::query::heartbeats(&store, d, 0, u64::MAX, 10_000)
                .unwrap()
                .iter()
                .map(|h| h.ts_ms)
                .collect();
            assert_eq!(hbs, want, "heartbeats of {d}");
            let rollups: Vec<u64> = crate::rollup::rollups_in(&store, d, 0, 0, u64::MAX)
                .unwrap()
                .iter()
                .map(|r| r.0)
                .collect();
            let want_r: Vec<u64> = times
                .iter()
                .map(|t| t - t % BUCKET_MS)
                .filter(|b| *b >= rollup_cutoff)
                .collect();
            assert_eq!(rollups, want_r, "rollups of {d}");
        }
    }
}
