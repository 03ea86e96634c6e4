use std::sync::{Arc, Mutex};

use outpost_patch::install::BinaryTarget;
use outpost_patch::install::wire::{DeviceStatus, InstallRequest, Phase, RebootPolicy};
use outpost_proto::codec;
use outpost_proto::command::{BuiltinAction, CommandKind, CommandSpec};
use outpost_proto::ids::{CommandId, DeviceId};
use outpost_proto::messages::PatchStatusRecord;
use outpost_storage::ingest::PATCH_STATUS_IN;
use outpost_storage::{Store, StoreOptions};

use super::*;
use crate::commands::model::{CommandRecord, CommandState};
use crate::commands::service::{CommandOptions, CommandService};
use crate::deploy::{Installer, StatusSink, command_id};
use crate::metrics::Metrics;

#[derive(Default)]
struct Sink(Mutex<Vec<(DeviceId, DeviceStatus)>>);

impl StatusSink for Sink {
    fn status(&self, device: DeviceId, status: &DeviceStatus) {
        self.0.lock().unwrap().push((device, status.clone()));
    }
}

fn enrolled(store: &Store, id: u64) -> DeviceId {
    let d = DeviceId(id);
    outpost_storage::registry::register(
        store,
        &outpost_storage::model::DeviceRecord {
            id: d,
            tenant: outpost_proto::TenantId::new("acme"),
            customer: outpost_proto::CustomerId::new("dental"),
            hostname: "h".into(),
            os: "linux".into(),
            kernel: "6".into(),
            arch: "x86_64".into(),
            agent_version: "0".into(),
            enrolled_at_ms: 1,
            cert_serial: "00".into(),
            revoked_at_ms: None,
        },
    )
    .unwrap();
    d
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    metrics: Arc<Metrics>,
    commands: CommandService,
    link: DeviceLink,
    sink: Arc<Sink>,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::db::open(dir.path(), &StoreOptions::default()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let (commands, _h) =
        CommandService::start(store.clone(), metrics.clone(), CommandOptions::default()).unwrap();
    let link = DeviceLink::open(commands.clone(), store.clone(), metrics.clone(), 1000).unwrap();
    let sink = Arc::new(Sink::default());
    link.set_sink(sink.clone());
    Rig {
        _dir: dir,
        store,
        metrics,
        commands,
        link,
        sink,
    }
}

fn request() -> InstallRequest {
    InstallRequest {
        deployment: "dep-1".into(),
        attempt: 1,
        targets: vec![BinaryTarget {
            name: "hello".into(),
            arch: None,
            version: "1.1-1".into(),
        }],
        proxy: Some("http://10.0.0.1:3142".into()),
        reboot: RebootPolicy::IfRequired,
        min_free_root_bytes: 1 << 20,
        keep_previous_debs: true,
        pre_script: None,
        post_script: None,
        snapshot: false,
    }
}

fn status(command: CommandId, phase: Phase, log_tail: String) -> DeviceStatus {
    DeviceStatus {
        command: command.to_string(),
        deployment: "dep-1".into(),
        attempt: 1,
        rollback: false,
        phase,
        reason: None,
        changes: Vec::new(),
        kept: Vec::new(),
        skipped: Vec::new(),
        snapshot: None,
        boot_id: Some("b1".into()),
        reboot_required: false,
        log_tail,
        at_ms: 5,
    }
}

/// Stores `payload` as the parts the agent would send, from record `seq`.
fn put_parts(store: &Store, dev: DeviceId, seq: u64, format: u16, payload: &[u8]) -> u64 {
    let chunks: Vec<&[u8]> = payload.chunks(768).collect();
    let parts = chunks.len() as u32;
    for (i, c) in chunks.iter().enumerate() {
        let r = PatchStatusRecord {
            format,
            part: i as u32,
            parts,
            payload: c.to_vec(),
        };
        store
            .put(
                PATCH_STATUS_IN,
                &outpost_storage::keys::device_time_key(dev, seq + i as u64),
                &r,
            )
            .unwrap();
    }
    parts as u64
}

fn inbox_len(store: &Store) -> usize {
    let mut n = 0;
    store
        .scan_raw(PATCH_STATUS_IN, &[], None, |_, _| {
            n += 1;
            Ok(true)
        })
        .unwrap();
    n
}

/// Incompressible text (a status over several parts).
fn noise(n: usize) -> String {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

fn metric(m: &Metrics, needle: &str) -> bool {
    m.encode().contains(needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_queues_one_command_under_the_keys_id_however_often_it_is_applied() {
    let r = rig();
    let dev = enrolled(&r.store, 7);
    let key = "dep-1/7/install/1";
    r.link.install(dev, key, &request(), "alice").await.unwrap();
    r.link.install(dev, key, &request(), "alice").await.unwrap();
    let cmd = r.commands.get(command_id(key)).unwrap().expect("queued");
    assert_eq!(cmd.device, dev);
    assert_eq!(cmd.spec.requested_by, "alice");
    match &cmd.spec.kind {
        CommandKind::Builtin(BuiltinAction::InstallPatches {
            format,
            request: bytes,
        }) => {
            assert_eq!(*format, REQUEST_FORMAT);
            let back: InstallRequest = codec::decode_compressed(bytes, MAX_PLAIN_BYTES).unwrap();
            assert_eq!(back, request());
        }
        k => panic!("{k:?}"),
    }
    let f = crate::commands::store::ListFilter {
        device: Some(dev),
        state: None,
        before_ms: None,
        before_id: None,
        limit: 10,
    };
    assert_eq!(r.commands.list(&f).unwrap().len(), 1, "one command");
    let linked = r.link.get(key).unwrap().unwrap();
    assert_eq!(linked.key, key);
    assert!(!linked.rollback);
    // An unknown device is named as such.
    let e = r
        .link
        .install(DeviceId(99), "dep-1/99/install/1", &request(), "alice")
        .await
        .unwrap_err();
    assert!(matches!(e, LinkError::UnknownDevice(DeviceId(99))), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_in_parts_is_assembled_stored_handed_on_and_its_inbox_entries_deleted() {
    let r = rig();
    let dev = enrolled(&r.store, 7);
    let key = "dep-1/7/install/1";
    r.link.install(dev, key, &request(), "alice").await.unwrap();
    let id = command_id(key);
    let s = status(id, Phase::Failed, noise(4000));
    let payload = codec::encode_compressed(&s).unwrap();
    let parts = put_parts(&r.store, dev, 10, STATUS_FORMAT, &payload);
    assert!(parts >= 3, "{parts} parts");
    // Only the first parts arrived: nothing is consumed yet.
    let mut b = r.store.batch();
    b.delete(
        PATCH_STATUS_IN,
        &outpost_storage::keys::device_time_key(dev, 10 + parts - 1),
    )
    .unwrap();
    r.store.write(b).unwrap();
    assert_eq!(r.link.process_inbox().unwrap(), 0);
    assert!(r.sink.0.lock().unwrap().is_empty());
    put_parts(&r.store, dev, 10, STATUS_FORMAT, &payload);
    assert_eq!(r.link.process_inbox().unwrap() as u64, parts);
    assert_eq!(inbox_len(&r.store), 0);
    let got = r.sink.0.lock().unwrap().clone();
    assert_eq!(got, vec![(dev, s.clone())]);
    let linked = r.link.get(key).unwrap().unwrap();
    assert_eq!(linked.latest, Some(s));
    assert!(linked.is_final() && !linked.synthesized);
    assert!(metric(
        &r.metrics,
        "outpost_deploy_device_statuses_total{phase=\"failed\"} 1"
    ));
    // A final status: nothing is synthesized when the command ends.
    r.commands.cancel(id, "bob").await.unwrap();
    assert_eq!(r.link.check_commands(u64::MAX / 2).unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_formats_corrupt_payloads_and_other_devices_commands_are_refused_and_counted() {
    let r = rig();
    let dev = enrolled(&r.store, 7);
    let other = enrolled(&r.store, 8);
    let key = "dep-1/7/install/1";
    r.link.install(dev, key, &request(), "alice").await.unwrap();
    let id = command_id(key);
    let payload = codec::encode_compressed(&status(id, Phase::Installing, String::new())).unwrap();
    put_parts(&r.store, dev, 1, STATUS_FORMAT + 1, &payload);
    put_parts(&r.store, dev, 2, STATUS_FORMAT, b"not zstd at all");
    // Device 8 reports about device 7's command.
    put_parts(&r.store, other, 1, STATUS_FORMAT, &payload);
    // A status of a command that is no install.
    let shell = r
        .commands
        .create(dev, CommandSpec::shell("true", "t"))
        .await
        .unwrap();
    let p2 = codec::encode_compressed(&status(shell.id, Phase::Succeeded, String::new())).unwrap();
    put_parts(&r.store, dev, 3, STATUS_FORMAT, &p2);
    assert_eq!(r.link.process_inbox().unwrap(), 4);
    assert_eq!(inbox_len(&r.store), 0, "refused entries are deleted");
    assert!(r.sink.0.lock().unwrap().is_empty());
    for reason in [
        "unknown_format",
        "malformed",
        "wrong_device",
        "unknown_command",
    ] {
        assert!(
            metric(
                &r.metrics,
                &format!("outpost_deploy_status_rejected_total{{reason=\"{reason}\"}} 1")
            ),
            "{reason}"
        );
    }
    assert!(r.link.get(key).unwrap().unwrap().latest.is_none());
}

fn record(state: CommandState, acked: bool, reason: Option<&str>) -> CommandRecord {
    let mut c = CommandRecord::new(
        CommandId([1; 16]),
        DeviceId(7),
        CommandSpec::shell("-", "t"),
        0,
    );
    c.state = state;
    c.acked = acked;
    c.reason = reason.map(String::from);
    c
}

fn linked(rollback: bool) -> LinkedCommand {
    LinkedCommand {
        key: "k".into(),
        device: DeviceId(7),
        deployment: "dep-1".into(),
        attempt: 1,
        rollback,
        latest: None,
        ended_seen_ms: None,
        synthesized: false,
    }
}

#[test]
fn a_final_status_is_synthesized_only_for_an_ended_command_without_one_after_the_grace() {
    let l = linked(false);
    // Still running: nothing.
    assert!(
        synthesize(
            &l,
            &record(CommandState::Running, true, None),
            0,
            10_000,
            100
        )
        .is_none()
    );
    // Ended, acked by the agent: its own status may still be on its way.
    let interrupted = record(CommandState::Interrupted, true, None);
    assert!(synthesize(&l, &interrupted, 1000, 1099, 100).is_none());
    let s = synthesize(&l, &interrupted, 1000, 1100, 100).unwrap();
    assert_eq!(s.phase, Phase::Failed);
    assert_eq!(s.at_ms, 1100);
    assert!(s.reason.unwrap().contains("interrupted"));
    // Never reached the agent: at once.
    let refused = record(CommandState::Expired, false, None);
    let s = synthesize(&l, &refused, 1000, 1000, 100).unwrap();
    assert!(s.reason.unwrap().contains("did not come online"));
    let r = record(
        CommandState::Failed,
        false,
        Some("refused: patch installs are disabled"),
    );
    let s = synthesize(&linked(true), &r, 0, 0, 100).unwrap();
    assert_eq!(s.phase, Phase::RollbackFailed);
    assert!(s.rollback);
    assert!(s.reason.unwrap().contains("patch installs are disabled"));
    // A final status is known: nothing.
    let mut done = linked(false);
    done.latest = Some(status(CommandId([1; 16]), Phase::Succeeded, String::new()));
    assert!(synthesize(&done, &interrupted, 0, 1 << 40, 100).is_none());
    // A completed install waiting for its reboot is not ended.
    let mut rebooting = linked(false);
    rebooting.latest = Some(status(
        CommandId([1; 16]),
        Phase::RebootPending,
        String::new(),
    ));
    let completed = record(CommandState::Completed, true, None);
    assert!(synthesize(&rebooting, &completed, 0, 1 << 40, 100).is_none());
    // But a completed install that never said anything final is failed.
    let s = synthesize(&linked(false), &completed, 0, 1 << 40, 100).unwrap();
    assert!(s.reason.unwrap().contains("no final status"));
    // A last non-final status is kept (its changes) and made final.
    let mut mid = linked(false);
    mid.latest = Some(status(CommandId([1; 16]), Phase::Installing, "log".into()));
    let s = synthesize(&mid, &interrupted, 0, 1 << 40, 100).unwrap();
    assert_eq!((s.phase, s.log_tail.as_str()), (Phase::Failed, "log"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_install_that_never_reached_the_device_gets_a_synthesized_failed_status() {
    let r = rig();
    let dev = enrolled(&r.store, 7);
    let key = "dep-1/7/install/1";
    r.link.install(dev, key, &request(), "alice").await.unwrap();
    assert_eq!(r.link.check_commands(1).unwrap(), 0, "queued: nothing");
    r.link.cancel(key, "bob").await.unwrap();
    // Cancelling an unknown key is not an error (idempotent).
    r.link.cancel("dep-1/7/install/9", "bob").await.unwrap();
    assert_eq!(r.link.check_commands(2).unwrap(), 1);
    let got = r.sink.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, dev);
    assert_eq!(got[0].1.phase, Phase::Failed);
    // The orchestrator tells a withdrawn install (abort) from a failure by
    // this prefix (`Report::Cancelled`).
    let reason = got[0].1.reason.as_deref().unwrap();
    assert!(
        reason.starts_with(outpost_patch::install::wire::CANCELLED_REASON_PREFIX),
        "{reason}"
    );
    let l = r.link.get(key).unwrap().unwrap();
    assert!(l.synthesized && l.is_final());
    // Once.
    assert_eq!(r.link.check_commands(3).unwrap(), 0);
    // And after a restart of the link (open commands reloaded): still once.
    let again =
        DeviceLink::open(r.commands.clone(), r.store.clone(), r.metrics.clone(), 1000).unwrap();
    again.set_sink(r.sink.clone());
    assert_eq!(again.check_commands(4).unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_started_worker_hands_on_a_status_that_ingest_stored() {
    let r = rig();
    let dev = enrolled(&r.store, 7);
    let sink = Arc::new(Sink::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let (link, worker) = DeviceLink::start(
        r.commands.clone(),
        r.store.clone(),
        r.metrics.clone(),
        sink.clone(),
        std::time::Duration::from_millis(50),
        stop.clone(),
    )
    .unwrap();
    let key = "dep-1/7/install/1";
    link.install(dev, key, &request(), "alice").await.unwrap();
    let s = status(command_id(key), Phase::Downloading, String::new());
    put_parts(
        &r.store,
        dev,
        1,
        STATUS_FORMAT,
        &codec::encode_compressed(&s).unwrap(),
    );
    let t0 = std::time::Instant::now();
    while sink.0.lock().unwrap().is_empty() && t0.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(sink.0.lock().unwrap().clone(), vec![(dev, s)]);
    stop.cancel();
    worker.await.unwrap();
}
