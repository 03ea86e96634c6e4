//! Property tests of the ingest writer: random operations with injected
//! failures against a model, and extreme timestamps through every path
//! that computes with them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use outpost_proto::DeviceId;
use outpost_proto::messages::{Heartbeat, Hello, MetricValue, MetricsSample, Record, RecordBody};
use proptest::prelude::*;

use super::tests::FailOnce;
use super::*;
use crate::model::DeviceRecord;
use crate::retention::{self, RetentionPolicy};
use crate::{Durability, StoreOptions, query, registry, rollup};

const T0: u64 = 1_700_000_000_000;
const MIN: u64 = 60_000;
const DEVICES: u64 = 3;
const NAMES: [&str; 5] = ["cpu", "mem", "disk", "net", "load"];
const MAX_SERIES: usize = 3;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        durability: Durability::Buffered,
        ..StoreOptions::default()
    };
    let s = Store::open(dir.path(), &opts, crate::TABLES).unwrap();
    (dir, s)
}

fn hello() -> Hello {
    Hello {
        protocol_version: 1,
        agent_version: "prop".into(),
        heartbeat_interval_ms: 1_000,
        metrics_interval_ms: 1_000,
    }
}

/// A record as generated: (seq, minute, body: None = heartbeat, Some((name, value))).
type RecSpec = (u64, u64, Option<(usize, u8)>);

fn record(spec: &RecSpec) -> Record {
    let (seq, minute, body) = *spec;
    let ts_ms = T0 + minute * MIN;
    Record {
        seq,
        ts_ms,
        body: match body {
            None => RecordBody::Heartbeat(Heartbeat {
                uptime_s: seq,
                buffered_records: 0,
                dropped_records: 0,
            }),
            Some((name, value)) => RecordBody::Metrics(MetricsSample {
                values: vec![MetricValue {
                    name: NAMES[name].into(),
                    label: String::new(),
                    value: f64::from(value),
                }],
            }),
        },
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Groups of (device, records), and a failure to inject: (point, n-th check).
    Apply(Vec<(u64, Vec<RecSpec>)>, Option<(FaultPoint, u32)>),
    Session(u64, Option<(FaultPoint, u32)>),
    Sweep(Option<(FaultPoint, u32)>),
    Restart,
}

fn fault() -> impl Strategy<Value = Option<(FaultPoint, u32)>> {
    prop_oneof![
        2 => Just(None),
        1 => (0u32..2).prop_map(|n| Some((FaultPoint::Load, n))),
        2 => (0u32..12).prop_map(|n| Some((FaultPoint::Put, n))),
        1 => Just(Some((FaultPoint::Write, 0))),
    ]
}

fn rec_spec() -> impl Strategy<Value = RecSpec> {
    (
        1u64..40,
        0u64..300,
        prop_oneof![1 => Just(None), 2 => (0usize..NAMES.len(), any::<u8>()).prop_map(Some)],
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (
            proptest::collection::vec(
                (1..=DEVICES, proptest::collection::vec(rec_spec(), 1..6)),
                1..4
            ),
            fault()
        )
            .prop_map(|(g, f)| Op::Apply(g, f)),
        2 => (1..=DEVICES, fault()).prop_map(|(d, f)| Op::Session(d, f)),
        1 => fault().prop_map(Op::Sweep),
        1 => Just(Op::Restart),
    ]
}

/// What the writer must have stored for one device.
#[derive(Debug, Default, Clone)]
struct ModelDevice {
    last_seq: u64,
    records_stored: u64,
    online: bool,
    /// (ts, seq) of stored heartbeats.
    heartbeats: BTreeSet<(u64, u64)>,
    series: BTreeSet<usize>,
    /// (name, ts) → value.
    samples: BTreeMap<(usize, u64), f64>,
}

impl ModelDevice {
    fn apply(&mut self, records: &[RecSpec]) {
        for spec in records {
            let (seq, minute, body) = *spec;
            if seq <= self.last_seq {
                continue;
            }
            let ts = T0 + minute * MIN;
            match body {
                None => {
                    self.heartbeats.insert((ts, seq));
                }
                Some((name, value)) => {
                    if self.series.contains(&name) || self.series.len() < MAX_SERIES {
                        self.series.insert(name);
                        self.samples.insert((name, ts), f64::from(value));
                    }
                }
            }
            self.last_seq = seq;
            self.records_stored += 1;
        }
        self.online = true;
    }
}

fn snapshot(w: &IngestWriter) -> (u64, BTreeMap<DeviceId, CachedDevice>) {
    let devices = w
        .cached_devices()
        .into_iter()
        .filter_map(|d| w.cached(d).map(|c| (d, c)))
        .collect();
    (w.online_count(), devices)
}

fn check_store(
    w: &mut IngestWriter,
    store: &Store,
    model: &BTreeMap<u64, ModelDevice>,
) -> Result<(), TestCaseError> {
    let online = model.values().filter(|m| m.online).count() as u64;
    prop_assert_eq!(w.online_count(), online, "online devices");
    for (d, m) in model {
        let dev = DeviceId(*d);
        // What the next Welcome would say.
        prop_assert_eq!(w.last_seq(dev).unwrap(), m.last_seq, "Welcome of {}", dev);
        let cached = w.cached(dev).unwrap();
        prop_assert_eq!(cached.state.records_stored, m.records_stored);
        prop_assert_eq!(cached.series, m.series.len(), "series of {}", dev);
        let hbs: BTreeSet<(u64, u64)> = query::heartbeats(store, dev, 0, u64::MAX, 10_000)
            .unwrap()
            .iter()
            .map(|h| (h.ts_ms, h.seq))
            .collect();
        prop_assert_eq!(&hbs, &m.heartbeats, "heartbeats of {}", dev);
        let latest: BTreeMap<String, (u64, f64)> = query::latest_values(store, dev)
            .unwrap()
            .into_iter()
            .map(|v| (v.name, (v.ts_ms, v.value)))
            .collect();
        let want: BTreeMap<String, (u64, f64)> = m
            .series
            .iter()
            .filter_map(|name| {
                m.samples
                    .range((*name, 0)..=(*name, u64::MAX))
                    .next_back()
                    .map(|((_, ts), v)| (NAMES[*name].to_string(), (*ts, *v)))
            })
            .collect();
        prop_assert_eq!(latest, want, "latest values of {}", dev);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever fails (a load, an encoding, the write), the writer's cache
    /// stays what it was, its Welcome answers never run ahead of what is
    /// stored, and what is stored — records, series names, the high-water
    /// mark, rollup and chunk markers — matches a model that only applies
    /// the operations that succeeded.
    #[test]
    fn failures_before_commit_leave_the_cache_and_the_welcome_true(
        ops in proptest::collection::vec(op(), 1..25)
    ) {
        let (_dir, store) = open();
        let limits = IngestLimits { max_series_per_device: MAX_SERIES, max_future_ms: u64::MAX };
        let faults = Arc::new(FailOnce::default());
        let mut now = T0;
        let mut w = IngestWriter::with_limits(store.clone(), now, limits).unwrap();
        w.set_fault_injector(faults.clone());
        let mut model: BTreeMap<u64, ModelDevice> = BTreeMap::new();
        for op in ops {
            now += 1_000;
            let before = snapshot(&w);
            let failed = match &op {
                Op::Apply(groups, fault) => {
                    if let Some((p, n)) = fault { faults.arm(*p, *n); }
                    let incoming: Vec<IncomingRecords> = groups
                        .iter()
                        .map(|(d, rs)| IncomingRecords {
                            device: DeviceId(*d),
                            records: rs.iter().map(record).collect(),
                        })
                        .collect();
                    let r = w.apply(&incoming, now);
                    let fired = faults.fired();
                    prop_assert_eq!(r.is_err(), fired, "{:?}", r.as_ref().err());
                    if let Ok(out) = &r {
                        for ((d, rs), g) in groups.iter().zip(&out.groups) {
                            let m = model.entry(*d).or_default();
                            prop_assert_eq!(g.prev_seq, m.last_seq);
                            m.apply(rs);
                            prop_assert_eq!(g.ack_up_to, m.last_seq);
                        }
                    }
                    r.is_err()
                }
                Op::Session(d, fault) => {
                    if let Some((p, n)) = fault { faults.arm(*p, *n); }
                    let r = w.session_started(DeviceId(*d), &hello(), now);
                    let fired = faults.fired();
                    prop_assert_eq!(r.is_err(), fired);
                    if let Ok((last_seq, _)) = r {
                        let m = model.entry(*d).or_default();
                        prop_assert_eq!(last_seq, m.last_seq, "Welcome of {}", d);
                        m.online = true;
                    }
                    fired
                }
                Op::Sweep(fault) => {
                    if let Some((p, n)) = fault { faults.arm(*p, *n); }
                    now += 60_000;
                    let r = w.sweep_offline(now, 0);
                    // A sweep with nothing to do writes nothing: its fault
                    // may not fire.
                    let fired = faults.fired();
                    prop_assert_eq!(r.is_err(), fired);
                    if r.is_ok() {
                        for m in model.values_mut() { m.online = false; }
                    }
                    fired
                }
                Op::Restart => {
                    drop(w);
                    w = IngestWriter::with_limits(store.clone(), now, limits).unwrap();
                    w.set_fault_injector(faults.clone());
                    false
                }
            };
            if failed {
                let after = snapshot(&w);
                prop_assert_eq!(after.0, before.0, "online count after a failure");
                for (d, c) in &before.1 {
                    prop_assert_eq!(after.1.get(d), Some(c), "cache of {} after {:?}", d, op);
                }
            }
            check_store(&mut w, &store, &model)?;
        }
        // The high-water marks were written with the records they cover.
        drop(w);
        let mut w = IngestWriter::with_limits(store.clone(), now, limits).unwrap();
        check_store(&mut w, &store, &model)?;
        // No rollup marker was lost to a rolled-back cache: every bucket
        // with samples is rolled up, over exactly its samples.
        w.roll_up(u64::MAX, 0, usize::MAX).unwrap();
        w.seal_chunks(u64::MAX, 0, usize::MAX).unwrap();
        for (d, m) in &model {
            let dev = DeviceId(*d);
            for s in rollup::device_series(&store, dev).unwrap() {
                let name = NAMES.iter().position(|n| *n == s.name).unwrap();
                let mut want: BTreeMap<u64, u64> = BTreeMap::new();
                for ((_, ts), _) in m.samples.range((name, 0)..=(name, u64::MAX)) {
                    *want.entry(bucket_start(*ts, rollup::BUCKET_MS)).or_default() += 1;
                }
                let got: BTreeMap<u64, u64> = rollup::rollups_in(&store, dev, s.id, 0, u64::MAX)
                    .unwrap()
                    .into_iter()
                    .map(|(b, r)| (b, r.count))
                    .collect();
                prop_assert_eq!(got, want, "rollups of {} {}", dev, s.name);
                let mut n = 0u64;
                crate::samples::samples_in(&store, dev, s.id, 0, u64::MAX, |_, _| { n += 1; true }).unwrap();
                prop_assert_eq!(n, m.samples.range((name, 0)..=(name, u64::MAX)).count() as u64);
            }
        }
    }
}

/// Timestamps an agent might send: absurd, extreme and ordinary.
fn extreme_ts(now: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        (0u64..1_000_000).prop_map(|d| u64::MAX - d),
        Just(0u64),
        any::<u64>(),
        (0u64..60 * 86_400_000).prop_map(move |d| now.saturating_sub(d)),
        (0u64..2 * 86_400_000).prop_map(move |d| now.saturating_add(d)),
    ]
}

/// The appliance clock: ordinary, or (to prove the arithmetic, not the
/// bound, keeps us safe) anywhere.
fn clock() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (0u64..86_400_000).prop_map(|d| T0 + d),
        1 => any::<u64>(),
        1 => (0u64..1_000_000).prop_map(|d| u64::MAX - d),
        1 => 0u64..1_000_000,
    ]
}

fn extreme_records() -> impl Strategy<Value = (u64, Vec<(u64, u64, bool)>)> {
    clock().prop_flat_map(|now| {
        (
            Just(now),
            proptest::collection::vec((1u64..60, extreme_ts(now), any::<bool>()), 1..30),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// No timestamp overflows anything: ingest, rollups, chunk sealing,
    /// retention, the offline sweep and every read path run without a
    /// panic or an error, with or without the future bound; with it,
    /// exactly the records stamped beyond it are rejected (and consumed).
    #[test]
    fn extreme_timestamps_overflow_nothing(
        batches in proptest::collection::vec(extreme_records(), 1..5),
        bounded in any::<bool>(),
    ) {
        let (_dir, store) = open();
        let limits = if bounded { IngestLimits::DEFAULT } else { IngestLimits::NONE };
        let dev = DeviceId(77);
        registry::register(&store, &DeviceRecord {
            id: dev,
            tenant: outpost_proto::TenantId::new("t"),
            customer: outpost_proto::CustomerId::new("c"),
            hostname: "h".into(),
            os: String::new(),
            kernel: String::new(),
            arch: String::new(),
            agent_version: String::new(),
            enrolled_at_ms: 0,
            cert_serial: String::new(),
            revoked_at_ms: None,
        }).unwrap();
        let mut w = IngestWriter::with_limits(store.clone(), batches[0].0, limits).unwrap();
        let mut last_seq = 0u64;
        for (now, recs) in &batches {
            let now = *now;
            let records: Vec<Record> = recs
                .iter()
                .map(|(seq, ts, metric)| Record {
                    seq: last_seq + seq,
                    ts_ms: *ts,
                    body: if *metric {
                        RecordBody::Metrics(MetricsSample {
                            values: vec![MetricValue { name: "cpu".into(), label: String::new(), value: *seq as f64 }],
                        })
                    } else {
                        RecordBody::Heartbeat(Heartbeat { uptime_s: 1, buffered_records: 0, dropped_records: 0 })
                    },
                })
                .collect();
            let mut hwm = last_seq;
            let mut want_bad = 0u64;
            for r in &records {
                if r.seq > hwm {
                    hwm = r.seq;
                    if r.ts_ms > now.saturating_add(limits.max_future_ms) {
                        want_bad += 1;
                    }
                }
            }
            w.session_started(dev, &hello(), now).unwrap();
            let out = w.apply(&[IncomingRecords { device: dev, records }], now).unwrap();
            prop_assert_eq!(out.bad_timestamps, want_bad);
            prop_assert_eq!(out.groups[0].ack_up_to, hwm);
            last_seq = hwm;
            w.roll_up(now, 0, 1_000).unwrap();
            w.seal_chunks(now, 0, 1_000).unwrap();
            w.roll_up(u64::MAX, u64::MAX, 1_000).unwrap();
            w.seal_chunks(u64::MAX, u64::MAX, 1_000).unwrap();
            w.sweep_offline(now, u64::MAX).unwrap();
            w.sweep_offline(now, 0).unwrap();
            retention::enforce(&store, now, &RetentionPolicy::default()).unwrap();
            for step_ms in [0, 1, 60_000, rollup::BUCKET_MS, u64::MAX] {
                for (from, to) in [(0, u64::MAX), (now, u64::MAX), (u64::MAX - 1, u64::MAX)] {
                    query::history(&store, dev, &query::HistoryQuery {
                        name: "cpu".into(),
                        label: String::new(),
                        from_ms: from,
                        to_ms: to,
                        step_ms,
                        limit: 1_000,
                    }).unwrap();
                }
            }
            query::latest_values(&store, dev).unwrap();
            query::status_log(&store, dev, 0, u64::MAX, 1_000).unwrap();
            let hbs = query::heartbeats(&store, dev, 0, u64::MAX, 10_000).unwrap();
            if bounded {
                let newest_ok = batches.iter().map(|(n, _)| n.saturating_add(limits.max_future_ms)).max().unwrap();
                prop_assert!(hbs.iter().all(|h| h.ts_ms <= newest_ok));
            }
        }
        // And the state survives a restart.
        drop(w);
        let mut w = IngestWriter::with_limits(store.clone(), 0, limits).unwrap();
        prop_assert_eq!(w.last_seq(dev).unwrap(), last_seq);
    }
}
