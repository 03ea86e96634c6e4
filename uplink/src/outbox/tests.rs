//! Unit tests of the outbox's error paths and edge cases: corrupt stored
//! batches and counters, corrupt or unparseable pending changes, batches
//! missing behind the index, and recording while not joined. The
//! model-based test is in `model_test.rs`.

use outpost_proto::DeviceId;
use outpost_storage::model::Rollup;
use outpost_storage::{Durability, META, StorageError, Store, StoreOptions, Table, keys, rollup};

use super::*;
use crate::batch::{AlertState, Severity};

const SITE: &str = "site-1";
const TENANT: &str = "msp";
const NOW: u64 = 1_700_000_000_000;

/// Opens a store with the tables an appliance running the outbox has: the
/// ingest engine's and the outbox's.
pub(super) fn open_store(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        &StoreOptions {
            durability: Durability::Buffered,
            block_cache_bytes: 1 << 20,
            write_buffer_bytes: 1 << 20,
            ..StoreOptions::default()
        },
        &[outpost_storage::TABLES, super::TABLES].concat(),
    )
    .unwrap()
}

/// Writes bytes as they are (corrupt values, markers) into `table`.
fn raw_put(store: &Store, table: Table, key: &[u8], value: &[u8]) {
    let mut b = store.batch();
    b.put_raw(table, key, value).unwrap();
    store.write(b).unwrap();
}

fn raw_delete(store: &Store, table: Table, key: &[u8]) {
    let mut b = store.batch();
    b.delete(table, key).unwrap();
    store.write(b).unwrap();
}

fn store(dir: &std::path::Path) -> Store {
    let store = open_store(dir);
    store.set_uplink_tracking(true);
    store
}

fn outbox(store: &Store, max_bytes: u64) -> Outbox {
    Outbox::open(
        store.clone(),
        OutboxConfig {
            max_bytes,
            ..OutboxConfig::default()
        },
        UplinkMetrics::default(),
    )
    .unwrap()
}

/// Stores one series' rollup of `device` in `bucket` with its pending
/// marker, as the ingest writer does.
fn pending_rollup(store: &Store, device: u64, bucket: u64) {
    let device = DeviceId(device);
    let mut wb = store.batch();
    wb.put_raw(
        outpost_storage::samples::SERIES,
        &keys::series_name_key(device, "cpu", ""),
        &0u32.to_be_bytes(),
    )
    .unwrap();
    wb.put(
        outpost_storage::rollup::ROLLUPS,
        &keys::series_time_key(device, 0, bucket),
        &Rollup::of(bucket + 1000, 12.5),
    )
    .unwrap();
    wb.put_raw(
        UPLINK_PENDING,
        &rollup::uplink_rollup_marker(device, bucket, NOW),
        &[],
    )
    .unwrap();
    store.write(wb).unwrap();
}

fn transition(alert_id: u64) -> AlertTransition {
    AlertTransition {
        alert_id,
        device: Some(DeviceId(1)),
        rule: "cpu_high".into(),
        severity: Severity::Critical,
        state: AlertState::Firing,
        at_ms: NOW + alert_id,
        message: "cpu 97 > 90".into(),
        value: Some(97.0),
    }
}

fn stored_record(store: &Store, seq: u64) -> OutboxRecord {
    store.get(UPLINK_OUTBOX, &seq_key(seq)).unwrap().unwrap()
}

fn pending_keys(store: &Store) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    store
        .scan_raw(UPLINK_PENDING, &[], None, |k, _| {
            out.push(k.to_vec());
            Ok(true)
        })
        .unwrap();
    out
}

#[test]
fn a_stored_batch_whose_payload_changed_is_refused_with_its_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let ob = outbox(&store, u64::MAX);
    pending_rollup(&store, 1, 0);
    let e = ob.compact(&SITE.into(), &TENANT.into(), NOW).unwrap();
    let mut rec = stored_record(&store, e.seq);
    let last = rec.payload.len() - 1;
    rec.payload[last] ^= 0x55;
    store.put(UPLINK_OUTBOX, &seq_key(e.seq), &rec).unwrap();
    let err = ob.get(e.seq).unwrap_err();
    assert!(
        matches!(err, OutboxError::Checksum { seq } if seq == e.seq),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("corrupt") && msg.contains("re-join"),
        "says what to do: {msg}"
    );
    assert_eq!(ob.get(e.seq + 1).unwrap(), None, "unknown batch: none");
}

#[test]
fn the_bound_never_rewrites_a_corrupt_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let e = {
        let ob = outbox(&store, u64::MAX);
        pending_rollup(&store, 1, 0);
        ob.compact(&SITE.into(), &TENANT.into(), NOW).unwrap()
    };
    let mut rec = stored_record(&store, e.seq);
    rec.payload[0] ^= 0x55;
    store.put(UPLINK_OUTBOX, &seq_key(e.seq), &rec).unwrap();
    // Restarted with a bound the stored batch exceeds.
    let ob = outbox(&store, 1);
    let err = ob.enforce_bound().unwrap_err();
    assert!(
        matches!(err, OutboxError::Checksum { seq } if seq == e.seq),
        "{err:?}"
    );
    assert_eq!(stored_record(&store, e.seq), rec, "left as it was");
    assert_eq!(ob.stats().dropped_rollups_total, 0);
    assert_eq!(ob.metrics.rollups_dropped.get(), 0);
}

#[test]
fn a_checksummed_batch_that_does_not_decode_is_a_batch_error_for_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let payload = b"not a zstd frame".to_vec();
    let rec = OutboxRecord {
        seq: 1,
        created_ms: NOW,
        crc32: crc32fast::hash(&payload),
        rollups: 3,
        devices: 0,
        alerts: 0,
        payload,
    };
    store.put(UPLINK_OUTBOX, &seq_key(1), &rec).unwrap();
    let ob = outbox(&store, 1);
    assert_eq!(ob.seqs(), vec![1]);
    assert_eq!(
        ob.get(1).unwrap(),
        Some(rec.clone()),
        "the checksum matches: the sender gets the bytes (central rejects them)"
    );
    let err = ob.enforce_bound().unwrap_err();
    assert!(matches!(err, OutboxError::Batch(_)), "{err:?}");
    assert_eq!(stored_record(&store, 1), rec, "left as it was");
}

#[test]
fn an_undecodable_outbox_record_fails_open_with_a_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    raw_put(&store, UPLINK_OUTBOX, &seq_key(7), &[0xFF; 3]);
    let err = Outbox::open(
        store.clone(),
        OutboxConfig::default(),
        UplinkMetrics::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, OutboxError::Storage(StorageError::Corrupt { .. })),
        "{err:?}"
    );
}

#[test]
fn undecodable_outbox_counters_fail_open_with_a_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    raw_put(&store, META, META_KEY, &[0xFF; 2]);
    let err = Outbox::open(
        store.clone(),
        OutboxConfig::default(),
        UplinkMetrics::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, OutboxError::Storage(StorageError::Corrupt { .. })),
        "{err:?}"
    );
}

#[test]
fn numbering_continues_above_the_newest_stored_batch_even_if_the_counters_lag() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    {
        let ob = outbox(&store, u64::MAX);
        for i in 0..3 {
            ob.compact(&SITE.into(), &TENANT.into(), NOW + i).unwrap();
        }
    }
    // Counters from before the last two batches.
    store
        .put(
            META,
            META_KEY,
            &OutboxMeta {
                next_seq: 2,
                acked_up_to: 0,
                dropped_rollups_total: 0,
            },
        )
        .unwrap();
    let ob = outbox(&store, u64::MAX);
    assert_eq!(ob.stats().next_seq, 4);
    assert_eq!(
        ob.compact(&SITE.into(), &TENANT.into(), NOW + 9)
            .unwrap()
            .seq,
        4
    );
}

#[test]
fn a_batch_missing_behind_the_index_is_forgotten_by_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    {
        let ob = outbox(&store, u64::MAX);
        pending_rollup(&store, 1, 0);
        ob.compact(&SITE.into(), &TENANT.into(), NOW).unwrap();
        pending_rollup(&store, 2, 0);
        ob.compact(&SITE.into(), &TENANT.into(), NOW + 1).unwrap();
    }
    let ob = outbox(&store, 1);
    assert_eq!(ob.seqs(), vec![1, 2]);
    raw_delete(&store, UPLINK_OUTBOX, &seq_key(1));
    // Batch 1 vanished: forgotten without counting drops; batch 2 then
    // loses its rollup to the bound.
    assert_eq!(ob.enforce_bound().unwrap(), 1);
    assert_eq!(ob.seqs(), vec![2]);
    let s = ob.stats();
    assert_eq!(s.dropped_rollups_total, 1);
    assert_eq!(
        s.backlog_bytes,
        stored_record(&store, 2).payload.len() as u64
    );
    let b = batch::decode(&stored_record(&store, 2).payload).unwrap();
    assert!(b.rollups.is_empty());
    assert_eq!(b.dropped_rollups, 1);
    assert_eq!(b.devices.len(), 0);
}

#[test]
fn a_corrupt_pending_alert_transition_is_dropped_and_the_others_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let ob = outbox(&store, u64::MAX);
    assert!(push_alert_transition(&store, &transition(1)).unwrap());
    let mut bad = vec![ALERT_PREFIX];
    bad.extend_from_slice(&(NOW + 1).to_be_bytes());
    bad.extend_from_slice(&u32::MAX.to_be_bytes());
    raw_put(&store, UPLINK_PENDING, &bad, &[0xFF; 4]);
    assert!(push_alert_transition(&store, &transition(3)).unwrap());
    let e = ob.compact(&SITE.into(), &TENANT.into(), NOW + 10).unwrap();
    let b = batch::decode(&ob.get(e.seq).unwrap().unwrap().payload).unwrap();
    assert_eq!(b.alerts, vec![transition(1), transition(3)]);
    assert_eq!(pending_keys(&store), Vec::<Vec<u8>>::new(), "all consumed");
}

#[test]
fn an_unparseable_rollup_marker_is_consumed_without_a_rollup() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let ob = outbox(&store, u64::MAX);
    raw_put(
        &store,
        UPLINK_PENDING,
        &[rollup::UPLINK_ROLLUP_PREFIX, 1, 2, 3],
        &[],
    );
    pending_rollup(&store, 4, 0);
    let e = ob.compact(&SITE.into(), &TENANT.into(), NOW).unwrap();
    assert_eq!(e.rollups, 1, "the valid marker's rollup");
    assert_eq!(pending_keys(&store), Vec::<Vec<u8>>::new(), "all consumed");
}

#[test]
fn a_marker_whose_rollups_are_gone_is_consumed_without_an_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let ob = outbox(&store, u64::MAX);
    raw_put(
        &store,
        UPLINK_PENDING,
        &rollup::uplink_rollup_marker(DeviceId(9), 0, NOW),
        &[],
    );
    let e = ob.compact(&SITE.into(), &TENANT.into(), NOW).unwrap();
    let b = batch::decode(&ob.get(e.seq).unwrap().unwrap().payload).unwrap();
    assert!(b.rollups.is_empty());
    assert_eq!(pending_keys(&store), Vec::<Vec<u8>>::new());
}

#[test]
fn alert_transitions_are_not_recorded_while_the_site_is_not_joined() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    store.set_uplink_tracking(false);
    assert!(!push_alert_transition(&store, &transition(1)).unwrap());
    let mut wb = store.batch();
    assert!(!alert_transition_into(&store, &mut wb, &transition(2)).unwrap());
    assert_eq!(wb.len(), 0, "nothing added to the caller's batch");
    assert_eq!(pending_keys(&store), Vec::<Vec<u8>>::new());
}

#[test]
fn acknowledging_an_unknown_batch_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let ob = outbox(&store, u64::MAX);
    let e = ob.compact(&SITE.into(), &TENANT.into(), NOW).unwrap();
    let before = ob.stats();
    assert!(!ob.ack(e.seq + 5).unwrap());
    assert!(!ob.ack(0).unwrap());
    assert_eq!(ob.stats(), before, "the acknowledged mark does not move");
    assert!(ob.ack(e.seq).unwrap());
    assert!(!ob.ack(e.seq).unwrap(), "a duplicate ack is a no-op");
    assert_eq!(ob.stats().last_acked_seq, e.seq);
    assert_eq!(ob.metrics.batches_acked.get(), 1);
}

/// Stores `n` series of `device` with the longest names and labels the
/// appliance accepts (the same `n` names for every device), each with a
/// rollup in `bucket`, and the bucket's pending marker.
fn pending_wide_rollups(store: &Store, device: u64, bucket: u64, n: u32) {
    let device = DeviceId(device);
    let long = |c: char, i: u32| format!("{c}{i:0>127}");
    let mut wb = store.batch();
    for i in 0..n {
        wb.put_raw(
            outpost_storage::samples::SERIES,
            &keys::series_name_key(device, &long('n', i), &long('l', i)),
            &i.to_be_bytes(),
        )
        .unwrap();
        wb.put(
            outpost_storage::rollup::ROLLUPS,
            &keys::series_time_key(device, i, bucket),
            &Rollup::of(bucket + 1000, 12.5),
        )
        .unwrap();
    }
    wb.put_raw(
        UPLINK_PENDING,
        &rollup::uplink_rollup_marker(device, bucket, NOW),
        &[],
    )
    .unwrap();
    store.write(wb).unwrap();
}

/// Nine devices of 16,384 series with 256 bytes of name and label each
/// expand to 36 MiB of names: more than one batch may carry
/// (`limits::MAX_EXPANDED_NAME_BYTES`). The compactor fills a batch up to
/// the limits and leaves the rest pending for the next, so central never
/// has to refuse a batch an honest site built; one more series than a
/// device may send in a bucket is left out and counted.
#[test]
fn batches_are_built_within_the_decoder_limits_and_the_rest_waits() {
    use crate::batch::limits::{self, MAX_SERIES_PER_ENTRY};
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let ob = outbox(&store, u64::MAX);
    let per = MAX_SERIES_PER_ENTRY as u32;
    for d in 1..=8 {
        pending_wide_rollups(&store, d, 300_000, per);
    }
    pending_wide_rollups(&store, 9, 300_000, per + 1);
    let e1 = ob.compact(&SITE.into(), &TENANT.into(), NOW).unwrap();
    let b1 = batch::decode(&stored_record(&store, e1.seq).payload).unwrap();
    b1.check_limits().unwrap();
    assert_eq!(
        b1.rollups.len(),
        8,
        "8 × 4 MiB of names fill the first batch"
    );
    let expanded: u64 = b1
        .rollups
        .iter()
        .flat_map(|e| &e.series)
        .map(limits::name_bytes)
        .sum();
    assert_eq!(expanded, limits::MAX_EXPANDED_NAME_BYTES as u64);
    let keys = pending_keys(&store);
    assert_eq!(keys.len(), 1, "device 9 waits: {keys:?}");
    let e2 = ob.compact(&SITE.into(), &TENANT.into(), NOW + 1).unwrap();
    let b2 = batch::decode(&stored_record(&store, e2.seq).payload).unwrap();
    b2.check_limits().unwrap();
    assert_eq!(b2.rollups.len(), 1);
    assert_eq!(b2.rollups[0].device, DeviceId(9));
    assert_eq!(b2.rollups[0].series.len(), MAX_SERIES_PER_ENTRY);
    assert_eq!(
        b2.dropped_rollups, 1,
        "the one series above the entry limit"
    );
    assert_eq!(ob.stats().dropped_rollups_total, 1);
    assert!(pending_keys(&store).is_empty());
}

fn compliance(device: u64, missing: u32, as_of_ms: u64) -> batch::PatchCompliance {
    batch::PatchCompliance {
        device: DeviceId(device),
        missing,
        missing_critical: 0,
        installed_pending_reboot: 0,
        as_of_ms,
        detail: Some(batch::PatchDetail {
            compliance: batch::ComplianceState::NonCompliant,
            security_patches: Default::default(),
            fixable_cves: missing,
            open_cves: 0,
            risk: Some(10),
            scanned_at_ms: as_of_ms,
            reboot_required: false,
        }),
    }
}

#[test]
fn a_devices_latest_patch_compliance_goes_up_once_in_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let ob = outbox(&store, u64::MAX);
    let push = |p: &batch::PatchCompliance| {
        let mut wb = store.batch();
        assert!(patch_compliance_into(&store, &mut wb, p).unwrap());
        store.write(wb).unwrap();
    };
    push(&compliance(1, 3, NOW));
    push(&compliance(2, 1, NOW));
    push(&compliance(1, 4, NOW + 1));
    let e = ob.compact(&SITE.into(), &TENANT.into(), NOW + 10).unwrap();
    let b = batch::decode(&ob.get(e.seq).unwrap().unwrap().payload).unwrap();
    assert_eq!(
        b.patch_compliance,
        vec![compliance(1, 4, NOW + 1), compliance(2, 1, NOW)],
        "one entry per device, its latest"
    );
    assert_eq!(pending_keys(&store), Vec::<Vec<u8>>::new(), "all consumed");
    let e = ob.compact(&SITE.into(), &TENANT.into(), NOW + 20).unwrap();
    let b = batch::decode(&ob.get(e.seq).unwrap().unwrap().payload).unwrap();
    assert!(b.patch_compliance.is_empty(), "sent once");
}

#[test]
fn patch_compliance_is_not_recorded_while_the_site_is_not_joined() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    store.set_uplink_tracking(false);
    let mut wb = store.batch();
    assert!(!patch_compliance_into(&store, &mut wb, &compliance(1, 1, NOW)).unwrap());
    assert_eq!(wb.len(), 0);
}

#[test]
fn a_devices_latest_patch_findings_go_up_once_and_a_large_backlog_spreads_over_batches() {
    use crate::batch::findings::tests::typical_device;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let ob = outbox(&store, u64::MAX);
    let push = |f: &batch::PatchFindings| {
        let mut wb = store.batch();
        assert!(patch_findings_into(&store, &mut wb, f).unwrap());
        store.write(wb).unwrap();
    };
    push(&typical_device(1, 3, 4, 0));
    push(&typical_device(2, 1, 1, 0));
    let newer = typical_device(1, 5, 2, 0);
    push(&newer);
    let e = ob.compact(&SITE.into(), &TENANT.into(), NOW + 10).unwrap();
    let b = batch::decode(&ob.get(e.seq).unwrap().unwrap().payload).unwrap();
    assert_eq!(
        b.patch_findings,
        vec![newer, typical_device(2, 1, 1, 0)],
        "one entry per device, its latest"
    );
    assert_eq!(pending_keys(&store), Vec::<Vec<u8>>::new(), "all consumed");
    let e = ob.compact(&SITE.into(), &TENANT.into(), NOW + 20).unwrap();
    let b = batch::decode(&ob.get(e.seq).unwrap().unwrap().payload).unwrap();
    assert!(b.patch_findings.is_empty(), "sent once");

    // Devices whose findings together expand beyond the batch limit go
    // up over several batches, none lost, each batch within the limits.
    let big = typical_device(0, 2_000, 2_000, 0);
    let per = big.expanded_bytes();
    let n = crate::batch::limits::MAX_EXPANDED_FINDING_BYTES as u64 / per + 2;
    for d in 0..n {
        push(&batch::PatchFindings {
            device: DeviceId(100 + d),
            ..big.clone()
        });
    }
    let mut seen = 0;
    for i in 0..4 {
        let e = ob
            .compact(&SITE.into(), &TENANT.into(), NOW + 30 + i)
            .unwrap();
        let b = batch::decode(&ob.get(e.seq).unwrap().unwrap().payload).unwrap();
        assert!(b.check_limits().is_ok());
        seen += b.patch_findings.len() as u64;
    }
    assert_eq!(seen, n);
}

#[test]
fn patch_findings_are_not_recorded_while_the_site_is_not_joined() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    store.set_uplink_tracking(false);
    let mut wb = store.batch();
    let f = crate::batch::findings::tests::typical_device(1, 1, 1, 0);
    assert!(!patch_findings_into(&store, &mut wb, &f).unwrap());
    assert_eq!(wb.len(), 0);
}

/// A device's tags go up with its snapshot (batch format 6), and a tag
/// change alone makes the snapshot due again; a device without addresses
/// or tags adds no facts (its batch keeps the older format).
#[test]
fn a_devices_tags_go_up_with_its_snapshot_and_a_tag_change_resends_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let ob = outbox(&store, 1 << 30);
    let rec = outpost_storage::model::DeviceRecord {
        id: DeviceId(7),
        tenant: TENANT.into(),
        customer: "dental".into(),
        hostname: "web-7".into(),
        os: "Debian 12".into(),
        kernel: "6.1".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        enrolled_at_ms: NOW,
        cert_serial: String::new(),
        revoked_at_ms: None,
    };
    outpost_storage::registry::register(&store, &rec).unwrap();
    let e = ob.compact(&SITE.into(), &TENANT.into(), NOW).unwrap();
    let b = batch::decode(&ob.get(e.seq).unwrap().unwrap().payload).unwrap();
    assert_eq!(b.devices.len(), 1);
    assert!(b.device_facts.is_empty());
    assert!(
        batch::open(&ob.get(e.seq).unwrap().unwrap().payload)
            .unwrap()
            .header()
            .format
            < 6
    );
    // Unchanged: not due.
    let e = ob.compact(&SITE.into(), &TENANT.into(), NOW + 1).unwrap();
    let b = batch::decode(&ob.get(e.seq).unwrap().unwrap().payload).unwrap();
    assert!(b.devices.is_empty(), "{b:?}");
    outpost_storage::registry::set_tags(&store, DeviceId(7), &["web".into(), "eu".into()]).unwrap();
    let e = ob.compact(&SITE.into(), &TENANT.into(), NOW + 2).unwrap();
    let payload = ob.get(e.seq).unwrap().unwrap().payload;
    assert_eq!(batch::open(&payload).unwrap().header().format, 6);
    let b = batch::decode(&payload).unwrap();
    assert_eq!(b.devices.len(), 1);
    assert_eq!(
        b.device_facts,
        vec![batch::DeviceIpsTags {
            device: DeviceId(7),
            ips: vec![],
            tags: vec!["web".into(), "eu".into()],
        }]
    );
}
