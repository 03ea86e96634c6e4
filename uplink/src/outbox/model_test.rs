//! Model-based test of the outbox (in the style of the agent's
//! `buffer_matches_model`): random sequences of pending changes (rollups,
//! device registry and status changes, alert transitions), compactions,
//! acknowledgements (in and out of order, duplicates, unknown numbers),
//! bound drops, sender picks, reconnects, re-joins and restarts run against
//! the real [`Outbox`] on a real RocksDB in a temporary directory, and are
//! compared after every step with a `Vec`-based model.
//!
//! Writes only the tables the outbox reads, the way their producers write
//! them (the registry, the ingest writer's device state, series and rollups
//! with their pending marker in one write, the alert engine's
//! [`push_alert_transition`]); never the outbox's own tables.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use outpost_proto::DeviceId;
use outpost_storage::model::{DeviceRecord, DeviceState, DeviceStatus, Rollup};
use outpost_storage::rollup::UPLINK_PENDING;
use outpost_storage::{Store, keys, registry, rollup};
use proptest::prelude::*;

use super::{Outbox, OutboxConfig, push_alert_transition};
use crate::batch::{
    self, AlertState, AlertTransition, DeviceRollups, DeviceUpdate, SeriesRollup, Severity,
    SiteBatch,
};
use crate::metrics::UplinkMetrics;
use crate::sender::pick_next;

const SITE: &str = "site-1";
const TENANT: &str = "msp";
/// Series every device may report, in the order of the series dictionary
/// (`name 0 label`).
const SERIES: [(&str, &str); 4] = [
    ("cpu", ""),
    ("disk_used_percent", "/"),
    ("disk_used_percent", "/var"),
    ("mem", ""),
];

#[derive(Debug, Clone)]
enum Op {
    /// Enrolls a device or changes its registry facts; revocation sticks.
    Register { dev: u8, hostname: u8, revoke: bool },
    /// The ingest writer moves a device to another status.
    Status { dev: u8, status: u8 },
    /// A heartbeat: only `last_seen` moves, which is worth sending only
    /// once it moved by `last_seen_resend_ms` since the last snapshot sent.
    Seen { dev: u8 },
    /// Rollups of some series of one (device, bucket) are (re)computed and
    /// marked pending in the same write.
    Rollup {
        dev: u8,
        bucket: u8,
        series: u8,
        min: i32,
        span: u16,
        count: u8,
    },
    /// The alert engine records a transition (several may share `at`).
    Alert { dev: Option<u8>, at: u8, state: u8 },
    /// The compaction timer fires.
    Compact,
    /// An acknowledgement of an arbitrary sequence number: stored, already
    /// acknowledged, or never created.
    Ack(u16),
    /// Everything up to a sequence number acknowledged.
    AckUpTo(u16),
    /// The sender sends the batch it picks next.
    Send,
    /// Central acknowledges one of the batches in flight (any order).
    CentralAck(u8),
    /// The connection drops and comes back: central's Welcome acknowledges
    /// everything it already has.
    Reconnect,
    /// The appliance restarts: the store and the outbox are reopened.
    Reopen,
    /// The appliance joins another site: stored batches mean nothing there.
    Rejoin,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0u8..3, prop::bool::weighted(0.1))
            .prop_map(|(dev, hostname, revoke)| Op::Register { dev, hostname, revoke }),
        4 => (0u8..4, 0u8..3).prop_map(|(dev, status)| Op::Status { dev, status }),
        2 => (0u8..4).prop_map(|dev| Op::Seen { dev }),
        12 => (0u8..3, 0u8..4, 1u8..16, -50_000i32..50_000, any::<u16>(), any::<u8>()).prop_map(
            |(dev, bucket, series, min, span, count)| Op::Rollup { dev, bucket, series, min, span, count }
        ),
        6 => (prop::option::of(0u8..4), 0u8..4, 0u8..3)
            .prop_map(|(dev, at, state)| Op::Alert { dev, at, state }),
        10 => Just(Op::Compact),
        4 => any::<u16>().prop_map(Op::Ack),
        2 => any::<u16>().prop_map(Op::AckUpTo),
        6 => Just(Op::Send),
        4 => any::<u8>().prop_map(Op::CentralAck),
        2 => Just(Op::Reconnect),
        2 => Just(Op::Reopen),
        1 => Just(Op::Rejoin),
    ]
}

/// Opens the store and the outbox as `outpost serve` does for a joined site.
fn open(dir: &std::path::Path, cfg: &OutboxConfig) -> (Store, Outbox) {
    let store = super::tests::open_store(dir);
    store.set_uplink_tracking(true);
    let ob = Outbox::open(store.clone(), cfg.clone(), UplinkMetrics::default()).unwrap();
    (store, ob)
}

/// What decides whether a device snapshot is sent again: everything but
/// `last_seen_ms` and `as_of_ms`.
fn snapshot_key(u: &DeviceUpdate) -> DeviceUpdate {
    DeviceUpdate {
        last_seen_ms: 0,
        as_of_ms: 0,
        ..u.clone()
    }
}

/// A batch as the model expects it in the outbox, with its encoded size.
#[derive(Debug, Clone)]
struct ModelBatch {
    batch: SiteBatch,
    bytes: u64,
    /// The batch as compacted, before the bound touched it.
    original: SiteBatch,
}

/// The sender's per-connection state.
#[derive(Debug, Clone, Default)]
struct Session {
    in_flight: BTreeSet<u64>,
    sent_max: u64,
}

#[derive(Debug)]
struct Model {
    cfg: OutboxConfig,
    now_ms: u64,
    // What the producers stored.
    devices: BTreeMap<u64, DeviceRecord>,
    states: BTreeMap<u64, DeviceState>,
    /// Per device: (name, label) → series id.
    series: BTreeMap<u64, BTreeMap<(String, String), u32>>,
    /// (device, series id, bucket start) → rollup.
    rollups: BTreeMap<(u64, u32, u64), Rollup>,
    /// Pending rollup markers: (device, bucket start, generation).
    markers: BTreeSet<(u64, u64, u64)>,
    /// Pending alert transitions in the order they are compacted.
    alerts: Vec<AlertTransition>,
    next_alert_id: u64,
    // The outbox.
    batches: Vec<ModelBatch>,
    next_seq: u64,
    acked_up_to: u64,
    dropped_rollups_total: u64,
    /// Per device: the last snapshot sent (as [`snapshot_key`]) and its
    /// `last_seen_ms`.
    sent_snapshots: HashMap<u64, (DeviceUpdate, u64)>,
    /// Counted since the outbox was (re)opened (metrics are per process).
    dropped_since_open: u64,
    over_limit_since_open: u64,
    // Where every alert transition went.
    alerts_recorded: BTreeSet<u64>,
    alerts_delivered: BTreeSet<u64>,
    alerts_discarded_by_rejoin: BTreeSet<u64>,
    // The link.
    session: Session,
    /// Sequence numbers central has stored (of the current site).
    central_has: BTreeSet<u64>,
}

impl Model {
    fn new(cfg: OutboxConfig) -> Model {
        Model {
            cfg,
            now_ms: 1_700_000_000_000,
            devices: BTreeMap::new(),
            states: BTreeMap::new(),
            series: BTreeMap::new(),
            rollups: BTreeMap::new(),
            markers: BTreeSet::new(),
            alerts: Vec::new(),
            next_alert_id: 1,
            batches: Vec::new(),
            next_seq: 1,
            acked_up_to: 0,
            dropped_rollups_total: 0,
            sent_snapshots: HashMap::new(),
            dropped_since_open: 0,
            over_limit_since_open: 0,
            alerts_recorded: BTreeSet::new(),
            alerts_delivered: BTreeSet::new(),
            alerts_discarded_by_rejoin: BTreeSet::new(),
            session: Session::default(),
            central_has: BTreeSet::new(),
        }
    }

    fn seqs(&self) -> Vec<u64> {
        self.batches.iter().map(|b| b.batch.seq).collect()
    }

    fn total_bytes(&self) -> u64 {
        self.batches.iter().map(|b| b.bytes).sum()
    }

    fn encoded_len(&self, b: &SiteBatch) -> u64 {
        batch::encode(b, self.cfg.zstd_level).unwrap().len() as u64
    }

    fn compact(&mut self) -> SiteBatch {
        let now = self.now_ms;
        // Devices whose snapshot changed since it was last put in a batch.
        let mut devices = Vec::new();
        for (id, rec) in &self.devices {
            let (status, since, seen) = match self.states.get(id) {
                Some(s) => (s.status, s.status_since_ms, s.last_seen_ms),
                None => (DeviceStatus::Pending, rec.enrolled_at_ms, 0),
            };
            let u = DeviceUpdate {
                device: DeviceId(*id),
                customer: rec.customer.clone(),
                hostname: rec.hostname.clone(),
                os: rec.os.clone(),
                agent_version: rec.agent_version.clone(),
                enrolled_at_ms: rec.enrolled_at_ms,
                revoked: rec.revoked_at_ms.is_some(),
                status: super::compactor::batch_status(status),
                status_since_ms: since,
                last_seen_ms: seen,
                as_of_ms: now,
            };
            let due = match self.sent_snapshots.get(id) {
                None => true,
                Some((key, sent_seen)) => {
                    *key != snapshot_key(&u)
                        || seen.saturating_sub(*sent_seen) >= self.cfg.last_seen_resend_ms
                }
            };
            if due {
                devices.push(u);
            }
        }
        // Up to `max_rollup_buckets_per_batch` (device, bucket) sets, every
        // generation of a set consumed, the newest one carried.
        let mut groups: Vec<(u64, u64, u64)> = Vec::new();
        let mut consumed = Vec::new();
        for &(d, b, g) in &self.markers {
            match groups.last_mut() {
                Some(last) if last.0 == d && last.1 == b => last.2 = last.2.max(g),
                _ => {
                    if groups.len() >= self.cfg.max_rollup_buckets_per_batch {
                        break;
                    }
                    groups.push((d, b, g));
                }
            }
            consumed.push((d, b, g));
        }
        for m in &consumed {
            self.markers.remove(m);
        }
        let mut rollups = Vec::new();
        for (d, b, g) in groups {
            let series: Vec<SeriesRollup> = self
                .series
                .get(&d)
                .into_iter()
                .flatten()
                .filter_map(|((name, label), sid)| {
                    self.rollups.get(&(d, *sid, b)).map(|r| SeriesRollup {
                        name: name.clone(),
                        label: label.clone(),
                        rollup: super::compactor::batch_rollup(r),
                    })
                })
                .collect();
            if !series.is_empty() {
                rollups.push(DeviceRollups {
                    device: DeviceId(d),
                    bucket_start_ms: b,
                    computed_ms: g,
                    series,
                });
            }
        }
        let n = self.alerts.len().min(self.cfg.max_alerts_per_batch);
        let alerts: Vec<AlertTransition> = self.alerts.drain(..n).collect();
        let b = SiteBatch {
            seq: self.next_seq,
            site: SITE.into(),
            tenant: TENANT.into(),
            created_ms: now,
            devices,
            rollups,
            alerts,
            patch_compliance: Vec::new(),
            commands: Vec::new(),
            dropped_rollups: 0,
            foreign_tenants: Vec::new(),
            patch_findings: Vec::new(),
            device_facts: Vec::new(),
        };
        for u in &b.devices {
            self.sent_snapshots
                .insert(u.device.0, (snapshot_key(u), u.last_seen_ms));
        }
        self.next_seq += 1;
        let bytes = self.encoded_len(&b);
        self.batches.push(ModelBatch {
            batch: b.clone(),
            bytes,
            original: b.clone(),
        });
        self.enforce_bound();
        b
    }

    /// Above the bound, the oldest batch that still has rollups loses them
    /// (counted); when none has any, the outbox stays above (counted).
    fn enforce_bound(&mut self) {
        while self.total_bytes() > self.cfg.max_bytes {
            let Some(i) = self.batches.iter().position(|b| b.batch.rollup_count() > 0) else {
                self.over_limit_since_open += 1;
                break;
            };
            let mut b = self.batches[i].batch.clone();
            let n = b.rollup_count() as u64;
            b.rollups.clear();
            b.dropped_rollups += n;
            self.batches[i].bytes = self.encoded_len(&b);
            self.batches[i].batch = b;
            self.dropped_rollups_total += n;
            self.dropped_since_open += n;
        }
    }

    fn ack(&mut self, seq: u64) -> bool {
        let Some(i) = self.batches.iter().position(|b| b.batch.seq == seq) else {
            return false;
        };
        let b = self.batches.remove(i);
        self.acked_up_to = self.acked_up_to.max(seq);
        self.alerts_delivered
            .extend(b.batch.alerts.iter().map(|a| a.alert_id));
        self.central_has.insert(seq);
        true
    }

    /// The sender's choice: the newest unsent batch if it is newer than
    /// anything sent on this connection, else the oldest unsent one.
    fn pick(&self, session: &Session) -> Option<u64> {
        let unsent: Vec<u64> = self
            .seqs()
            .into_iter()
            .filter(|s| !session.in_flight.contains(s))
            .collect();
        let newest = *unsent.last()?;
        if newest > session.sent_max {
            Some(newest)
        } else {
            unsent.first().copied()
        }
    }

    /// Central's Welcome: the contiguous prefix it has, and the numbers
    /// above it.
    fn welcome(&self) -> (u64, Vec<u64>) {
        let mut up_to = 0;
        while self.central_has.contains(&(up_to + 1)) {
            up_to += 1;
        }
        let above = self.central_has.range(up_to + 1..).copied().collect();
        (up_to, above)
    }
}

/// The order in which a sender would send every stored batch, starting
/// from `session` and assuming nothing is acknowledged meanwhile.
fn real_send_order(stored: &[u64], session: &Session) -> Vec<u64> {
    let mut s = session.clone();
    let mut out = Vec::new();
    while let Some(seq) = pick_next(stored, &s.in_flight, s.sent_max) {
        out.push(seq);
        s.in_flight.insert(seq);
        s.sent_max = s.sent_max.max(seq);
    }
    out
}

fn model_send_order(m: &Model, session: &Session) -> Vec<u64> {
    let mut s = session.clone();
    let mut out = Vec::new();
    while let Some(seq) = m.pick(&s) {
        out.push(seq);
        s.in_flight.insert(seq);
        s.sent_max = s.sent_max.max(seq);
    }
    out
}

fn apply_input(store: &Store, m: &mut Model, op: &Op) {
    let now = m.now_ms;
    match *op {
        Op::Register {
            dev,
            hostname,
            revoke,
        } => {
            let id = u64::from(dev);
            let prev = m.devices.get(&id);
            let rec = DeviceRecord {
                id: DeviceId(id),
                tenant: TENANT.into(),
                customer: format!("customer-{}", id % 2).into(),
                hostname: format!("host-{id}-{hostname}"),
                os: "Debian 12".into(),
                kernel: "6.1".into(),
                arch: "x86_64".into(),
                agent_version: "0.1.0".into(),
                enrolled_at_ms: prev.map_or(now, |p| p.enrolled_at_ms),
                cert_serial: format!("{id:02x}"),
                revoked_at_ms: prev.and_then(|p| p.revoked_at_ms).or(revoke.then_some(now)),
            };
            registry::register(store, &rec).unwrap();
            m.devices.insert(id, rec);
        }
        Op::Status { dev, status } => {
            let id = u64::from(dev);
            let status = [
                DeviceStatus::Pending,
                DeviceStatus::Online,
                DeviceStatus::Offline,
            ][usize::from(status)];
            let mut st = m
                .states
                .get(&id)
                .cloned()
                .unwrap_or_else(|| DeviceState::new(now));
            if st.status != status {
                st.status = status;
                st.status_since_ms = now;
            }
            st.last_seen_ms = now;
            store
                .put(
                    outpost_storage::ingest::DEVICE_STATE,
                    &keys::device_key(DeviceId(id)),
                    &st,
                )
                .unwrap();
            m.states.insert(id, st);
        }
        Op::Seen { dev } => {
            let id = u64::from(dev);
            if let Some(st) = m.states.get_mut(&id) {
                st.last_seen_ms = now;
                store
                    .put(
                        outpost_storage::ingest::DEVICE_STATE,
                        &keys::device_key(DeviceId(id)),
                        &*st,
                    )
                    .unwrap();
            }
        }
        Op::Rollup {
            dev,
            bucket,
            series,
            min,
            span,
            count,
        } => {
            let id = u64::from(dev);
            let device = DeviceId(id);
            let bucket = u64::from(bucket) * rollup::BUCKET_MS;
            let mut wb = store.batch();
            for (i, (name, label)) in SERIES.iter().enumerate() {
                if series & (1 << i) == 0 {
                    continue;
                }
                let dict = m.series.entry(id).or_default();
                let next = dict.len() as u32;
                let sid = *dict
                    .entry((name.to_string(), label.to_string()))
                    .or_insert_with(|| {
                        wb.put_raw(
                            outpost_storage::samples::SERIES,
                            &keys::series_name_key(device, name, label),
                            &next.to_be_bytes(),
                        )
                        .unwrap();
                        next
                    });
                let count = u64::from(count) + 1;
                let min = f64::from(min) / 100.0 + i as f64;
                let max = min + f64::from(span) / 10.0;
                let r = Rollup {
                    min,
                    max,
                    sum: min * count as f64 + f64::from(span) / 7.0,
                    count,
                    last: max,
                    last_ts_ms: bucket + 1000 * count,
                };
                wb.put(
                    outpost_storage::rollup::ROLLUPS,
                    &keys::series_time_key(device, sid, bucket),
                    &r,
                )
                .unwrap();
                m.rollups.insert((id, sid, bucket), r);
            }
            wb.put_raw(
                UPLINK_PENDING,
                &rollup::uplink_rollup_marker(device, bucket, now),
                &[],
            )
            .unwrap();
            store.write(wb).unwrap();
            m.markers.insert((id, bucket, now));
        }
        Op::Alert { dev, at, state } => {
            let t = AlertTransition {
                alert_id: m.next_alert_id,
                device: dev.map(|d| DeviceId(u64::from(d))),
                rule: "cpu_high".into(),
                severity: [Severity::Info, Severity::Warning, Severity::Critical]
                    [m.next_alert_id as usize % 3],
                state: [
                    AlertState::Pending,
                    AlertState::Firing,
                    AlertState::Resolved,
                ][usize::from(state)],
                // Transitions share a few instants: order within one is the
                // order of recording.
                at_ms: 1_700_000_000_000 + u64::from(at) * 1000,
                message: format!("cpu {} > 90 for 5m", 90 + m.next_alert_id),
                value: Some(90.5 + m.next_alert_id as f64),
            };
            m.next_alert_id += 1;
            assert!(push_alert_transition(store, &t).unwrap());
            m.alerts_recorded.insert(t.alert_id);
            let pos = m.alerts.partition_point(|a| a.at_ms <= t.at_ms);
            m.alerts.insert(pos, t);
        }
        _ => unreachable!("not an input: {op:?}"),
    }
}

/// Everything the real outbox shows must equal the model.
fn check(store: &Store, ob: &Outbox, m: &Model) -> Result<(), TestCaseError> {
    // The stored batches, oldest first, byte for byte what the model built.
    let seqs = ob.seqs();
    prop_assert_eq!(&seqs, &m.seqs());
    for mb in &m.batches {
        let seq = mb.batch.seq;
        let rec = ob.get(seq).unwrap();
        prop_assert!(rec.is_some(), "batch {} missing", seq);
        let rec = rec.unwrap();
        prop_assert_eq!(rec.seq, seq);
        prop_assert_eq!(rec.payload.len() as u64, mb.bytes, "size of batch {}", seq);
        prop_assert_eq!(rec.rollups as usize, mb.batch.rollup_count());
        prop_assert_eq!(rec.devices as usize, mb.batch.devices.len());
        prop_assert_eq!(rec.alerts as usize, mb.batch.alerts.len());
        let got = batch::decode(&rec.payload).unwrap();
        prop_assert_eq!(&got, &mb.batch, "content of batch {}", seq);
        // Only rollups are ever dropped, and each drop is counted in the batch.
        prop_assert_eq!(&got.devices, &mb.original.devices);
        prop_assert_eq!(&got.alerts, &mb.original.alerts);
        prop_assert!(
            got.rollups == mb.original.rollups
                || (got.rollups.is_empty()
                    && got.dropped_rollups == mb.original.rollup_count() as u64),
            "batch {} lost rollups without counting them",
            seq
        );
    }
    // What the sender would send next: on a fresh connection the newest
    // batch first, then the backlog oldest first; on the current one, as
    // far as it got.
    let fresh = real_send_order(&seqs, &Session::default());
    let mut want: Vec<u64> = m.seqs();
    if let Some(newest) = want.pop() {
        want.insert(0, newest);
    }
    prop_assert_eq!(&fresh, &want, "send order after a reconnect");
    prop_assert_eq!(
        real_send_order(&seqs, &m.session),
        model_send_order(m, &m.session),
        "send order on the current connection"
    );
    // Counters and the bound.
    let s = ob.stats();
    prop_assert_eq!(s.backlog_batches, m.batches.len() as u64);
    prop_assert_eq!(s.backlog_bytes, m.total_bytes());
    prop_assert_eq!(s.next_seq, m.next_seq);
    prop_assert_eq!(s.last_acked_seq, m.acked_up_to);
    prop_assert_eq!(
        s.oldest_backlog_ms,
        m.batches.first().map(|b| b.batch.created_ms)
    );
    prop_assert_eq!(s.dropped_rollups_total, m.dropped_rollups_total);
    prop_assert!(
        s.backlog_bytes <= m.cfg.max_bytes || m.batches.iter().all(|b| b.batch.rollups.is_empty()),
        "{} bytes above the bound {} while rollups are left",
        s.backlog_bytes,
        m.cfg.max_bytes
    );
    prop_assert_eq!(ob.metrics.rollups_dropped.get(), m.dropped_since_open);
    prop_assert_eq!(ob.metrics.outbox_over_limit.get(), m.over_limit_since_open);
    prop_assert_eq!(ob.metrics.backlog_batches.get(), m.batches.len() as i64);
    prop_assert_eq!(ob.metrics.backlog_bytes.get(), m.total_bytes() as i64);
    // Pending changes: nothing consumed without being in a batch, nothing
    // left behind that is in one.
    let mut markers = BTreeSet::new();
    let mut alerts = Vec::new();
    store
        .scan_raw(UPLINK_PENDING, &[], None, |k, v| {
            if let Some((d, b, g)) = rollup::parse_uplink_rollup_marker(k) {
                markers.insert((d.0, b, g));
            } else {
                alerts.push(outpost_proto::codec::decode::<AlertTransition>(v).unwrap());
            }
            Ok(true)
        })
        .unwrap();
    prop_assert_eq!(&markers, &m.markers);
    prop_assert_eq!(&alerts, &m.alerts);
    // Every alert transition recorded is pending, in a stored batch,
    // delivered, or was discarded by joining another site: never lost.
    let mut seen: BTreeSet<u64> = m.alerts.iter().map(|a| a.alert_id).collect();
    for b in &m.batches {
        seen.extend(b.batch.alerts.iter().map(|a| a.alert_id));
    }
    seen.extend(&m.alerts_delivered);
    seen.extend(&m.alerts_discarded_by_rejoin);
    prop_assert_eq!(&seen, &m.alerts_recorded);
    Ok(())
}

fn config() -> impl Strategy<Value = OutboxConfig> {
    (120u64..2000, 1usize..5, 1usize..5, 1_000u64..30_000).prop_map(
        |(max_bytes, buckets, alerts, last_seen_resend_ms)| OutboxConfig {
            max_bytes,
            max_rollup_buckets_per_batch: buckets,
            max_alerts_per_batch: alerts,
            last_seen_resend_ms,
            ..OutboxConfig::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// The outbox behaves like a Vec-based model across pending changes,
    /// compactions, acknowledgements in any order, bound drops, sender
    /// picks, reconnects, re-joins and restarts.
    #[test]
    fn outbox_matches_model(cfg in config(), ops in proptest::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut ob) = open(dir.path(), &cfg);
        let mut m = Model::new(cfg.clone());
        for op in ops {
            m.now_ms += 1000;
            match op {
                Op::Register { .. } | Op::Status { .. } | Op::Seen { .. } | Op::Rollup { .. } | Op::Alert { .. } => {
                    apply_input(&store, &mut m, &op);
                }
                Op::Compact => {
                    let want = m.compact();
                    let e = ob.compact(&SITE.into(), &TENANT.into(), m.now_ms).unwrap();
                    prop_assert_eq!(e.seq, want.seq);
                    prop_assert_eq!(e.created_ms, m.now_ms);
                }
                Op::Ack(n) => {
                    let seq = u64::from(n) % (m.next_seq + 1);
                    prop_assert_eq!(ob.ack(seq).unwrap(), m.ack(seq), "ack {}", seq);
                }
                Op::AckUpTo(n) => {
                    let up_to = u64::from(n) % (m.next_seq + 1);
                    let want = m.seqs().into_iter().filter(|s| *s <= up_to).map(|s| u64::from(m.ack(s))).sum::<u64>();
                    prop_assert_eq!(ob.ack_up_to(up_to).unwrap(), want, "ack up to {}", up_to);
                }
                Op::Send => {
                    let seq = pick_next(&ob.seqs(), &m.session.in_flight, m.session.sent_max);
                    prop_assert_eq!(seq, m.pick(&m.session));
                    if let Some(seq) = seq {
                        let rec = ob.get(seq).unwrap().unwrap();
                        let want = &m.batches.iter().find(|b| b.batch.seq == seq).unwrap().batch;
                        prop_assert_eq!(&batch::decode(&rec.payload).unwrap(), want);
                        m.session.in_flight.insert(seq);
                        m.session.sent_max = m.session.sent_max.max(seq);
                        m.central_has.insert(seq);
                    }
                }
                Op::CentralAck(i) => {
                    if let Some(&seq) = m.session.in_flight.iter().nth(usize::from(i) % m.session.in_flight.len().max(1)) {
                        m.session.in_flight.remove(&seq);
                        prop_assert_eq!(ob.ack(seq).unwrap(), m.ack(seq), "central ack {}", seq);
                    }
                }
                Op::Reconnect => {
                    m.session = Session::default();
                    let (up_to, above) = m.welcome();
                    let mut want = 0;
                    for s in m.seqs() {
                        if s <= up_to {
                            want += u64::from(m.ack(s));
                        }
                    }
                    prop_assert_eq!(ob.ack_up_to(up_to).unwrap(), want);
                    for s in above {
                        prop_assert_eq!(ob.ack(s).unwrap(), m.ack(s), "welcome ack {}", s);
                    }
                }
                Op::Reopen => {
                    drop(ob);
                    drop(store);
                    (store, ob) = open(dir.path(), &cfg);
                    // Snapshots are sent once more after a restart; the
                    // connection and the process's counters start afresh.
                    m.sent_snapshots.clear();
                    m.session = Session::default();
                    m.dropped_since_open = 0;
                    m.over_limit_since_open = 0;
                }
                Op::Rejoin => {
                    ob.reset_for_new_site().unwrap();
                    for b in m.batches.drain(..) {
                        m.alerts_discarded_by_rejoin.extend(b.batch.alerts.iter().map(|a| a.alert_id));
                    }
                    m.next_seq = 1;
                    m.acked_up_to = 0;
                    m.sent_snapshots.clear();
                    m.session = Session::default();
                    m.central_has.clear();
                }
            }
            check(&store, &ob, &m)?;
        }
    }
}
