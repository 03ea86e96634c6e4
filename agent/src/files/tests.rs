use std::time::Duration;

use outpost_proto::command::{BuiltinAction, CommandKind, CommandSpec};
use outpost_proto::ids::{CommandId, TransferId};
use outpost_proto::messages::{CommandOutcome, FileChunk};
use outpost_proto::session::agent::AgentEvent;
use outpost_proto::transfer::{PULL_HEADER_BYTES, PullHeader, hex_sha};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::remote::{LinkInbox, LinkInput};

#[derive(Debug)]
enum Report {
    Output(String),
    Finished(CommandOutcome),
}

struct Collect(mpsc::UnboundedSender<Report>);

impl Reporter for Collect {
    fn output(&self, id: CommandId, bytes: Vec<u8>) {
        let _ = self.0.send(Report::Output(format!(
            "{id}: {}",
            String::from_utf8_lossy(&bytes)
        )));
    }
    fn finished(&self, id: CommandId, outcome: CommandOutcome) {
        let _ = (id, self.0.send(Report::Finished(outcome)));
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    root: PathBuf,
    files: FileAgent,
    reports: mpsc::UnboundedReceiver<Report>,
    inbox: LinkInbox,
}

fn rig() -> Rig {
    rig_with_idle(None)
}

fn rig_with_idle(idle: Option<Duration>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let root = root.canonicalize().unwrap();
    let files = FileAgent::open(&dir.path().join("store"), vec![root.clone()]).unwrap();
    if let Some(d) = idle {
        files.set_idle_timeout(d);
    }
    let (tx, reports) = mpsc::unbounded_channel();
    assert!(files.attach(Arc::new(Collect(tx))).is_empty());
    let (link, inbox) = RemoteLink::new(16);
    files.session_up(link);
    Rig {
        _dir: dir,
        root,
        files,
        reports,
        inbox,
    }
}

async fn report(r: &mut Rig) -> Report {
    tokio::time::timeout(Duration::from_secs(10), r.reports.recv())
        .await
        .expect("a report")
        .expect("open")
}

/// The end of a command: its output lines and outcome.
async fn end(r: &mut Rig) -> (String, CommandOutcome) {
    let mut out = String::new();
    loop {
        match report(r).await {
            Report::Output(s) => out.push_str(&s),
            Report::Finished(o) => return (out, o),
        }
    }
}

async fn input(r: &mut Rig) -> LinkInput {
    tokio::time::timeout(Duration::from_secs(10), r.inbox.rx.recv())
        .await
        .expect("a link input")
        .expect("open")
}

fn push_spec(t: TransferId, path: &Path, content: &[u8], mode: Option<u32>) -> CommandSpec {
    CommandSpec {
        kind: CommandKind::Builtin(BuiltinAction::PushFile {
            transfer: t,
            path: path.to_string_lossy().into(),
            size_bytes: content.len() as u64,
            sha256: hex_sha(&Sha256::digest(content).into()),
            mode,
            owner: None,
        }),
        ..CommandSpec::shell("-", "t")
    }
}

fn chunk(t: TransferId, offset: u64, bytes: &[u8], last: bool) -> AgentEvent {
    AgentEvent::FileChunk(FileChunk {
        transfer: t,
        offset,
        bytes: bytes.to_vec(),
        last,
    })
}

#[tokio::test]
async fn a_push_is_written_through_a_temporary_file_checked_and_renamed_with_its_mode() {
    let mut r = rig();
    let t = TransferId([1; 16]);
    let target = r.root.join("app.conf");
    let content = b"hello, world\n".repeat(10);
    r.files.start(
        CommandId([1; 16]),
        push_spec(t, &target, &content, Some(0o640)),
        CancellationToken::new(),
    );
    // The agent tells the appliance where to start.
    assert!(matches!(input(&mut r).await, LinkInput::AckFile(x, 0) if x == t));
    r.files.event(chunk(t, 0, &content[..50], false));
    assert!(matches!(input(&mut r).await, LinkInput::AckFile(_, 50)));
    assert!(!target.exists(), "nothing at the target before the end");
    // A resent chunk overlapping what is written: only the tail counts.
    r.files.event(chunk(t, 40, &content[40..100], false));
    assert!(matches!(input(&mut r).await, LinkInput::AckFile(_, 100)));
    // A session break: the next session starts from what is durable.
    r.files.session_down();
    let (link, inbox) = RemoteLink::new(16);
    r.inbox = inbox;
    r.files.session_up(link);
    assert!(matches!(input(&mut r).await, LinkInput::AckFile(x, 100) if x == t));
    r.files.event(chunk(t, 100, &content[100..], true));
    let (out, outcome) = end(&mut r).await;
    assert_eq!(outcome, CommandOutcome::Exited { code: 0 });
    assert!(out.contains("wrote") && out.contains("mode 0640"), "{out}");
    assert_eq!(std::fs::read(&target).unwrap(), content);
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640);
    let leftovers: Vec<_> = std::fs::read_dir(&r.root).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left");
    assert!(r.files.live_commands().is_empty(), "the entry is gone");
}

#[tokio::test]
async fn a_push_whose_bytes_do_not_match_the_hash_writes_nothing_and_fails_with_the_reason() {
    let mut r = rig();
    let t = TransferId([2; 16]);
    let target = r.root.join("x");
    r.files.start(
        CommandId([2; 16]),
        push_spec(t, &target, b"good", None),
        CancellationToken::new(),
    );
    assert!(matches!(input(&mut r).await, LinkInput::AckFile(_, 0)));
    r.files.event(chunk(t, 0, b"evil", true));
    let (out, outcome) = end(&mut r).await;
    assert_eq!(outcome, CommandOutcome::Exited { code: 1 });
    assert!(out.contains("sha256 mismatch"), "{out}");
    assert!(!target.exists());
    assert_eq!(std::fs::read_dir(&r.root).unwrap().count(), 0);
}

#[tokio::test]
async fn a_push_outside_the_roots_or_to_a_missing_owner_is_refused_with_the_reason() {
    let mut r = rig();
    let t = TransferId([3; 16]);
    r.files.start(
        CommandId([3; 16]),
        push_spec(t, Path::new("/etc/outpost-test"), b"x", None),
        CancellationToken::new(),
    );
    let (_, outcome) = end(&mut r).await;
    match outcome {
        CommandOutcome::Refused { reason } => assert!(reason.contains("outside"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let mut spec = push_spec(t, &r.root.join("y"), b"x", None);
    if let CommandKind::Builtin(BuiltinAction::PushFile { owner, .. }) = &mut spec.kind {
        *owner = Some("no-such-user-here".into());
    }
    r.files
        .start(CommandId([4; 16]), spec, CancellationToken::new());
    let (_, outcome) = end(&mut r).await;
    assert!(
        matches!(&outcome, CommandOutcome::Refused { reason } if reason.contains("does not exist")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_cancelled_push_removes_its_temporary_file_and_tells_the_appliance() {
    let mut r = rig();
    let t = TransferId([5; 16]);
    let cancel = CancellationToken::new();
    r.files.start(
        CommandId([5; 16]),
        push_spec(t, &r.root.join("z"), b"0123456789", None),
        cancel.clone(),
    );
    assert!(matches!(input(&mut r).await, LinkInput::AckFile(_, 0)));
    r.files.event(chunk(t, 0, b"01234", false));
    assert!(matches!(input(&mut r).await, LinkInput::AckFile(_, 5)));
    cancel.cancel();
    let (_, outcome) = end(&mut r).await;
    assert_eq!(outcome, CommandOutcome::Cancelled);
    assert!(matches!(input(&mut r).await, LinkInput::AbortFile(x, _) if x == t));
    assert_eq!(std::fs::read_dir(&r.root).unwrap().count(), 0);
}

#[tokio::test]
async fn a_push_without_progress_beyond_file_idle_timeout_fails_with_the_reason() {
    // Wiring only: the rule itself is tested with an explicit clock in idle.rs.
    let mut r = rig_with_idle(Some(Duration::from_millis(300)));
    let t = TransferId([6; 16]);
    r.files.start(
        CommandId([6; 16]),
        push_spec(t, &r.root.join("idle"), b"0123456789", None),
        CancellationToken::new(),
    );
    assert!(matches!(input(&mut r).await, LinkInput::AckFile(_, 0)));
    r.files.event(chunk(t, 0, b"01234", false));
    assert!(matches!(input(&mut r).await, LinkInput::AckFile(_, 5)));
    let (out, outcome) = end(&mut r).await;
    assert_eq!(outcome, CommandOutcome::Exited { code: 1 });
    assert!(out.contains("file_idle_timeout"), "{out}");
    assert!(matches!(input(&mut r).await, LinkInput::AbortFile(x, _) if x == t));
    assert_eq!(std::fs::read_dir(&r.root).unwrap().count(), 0);
}

#[tokio::test]
async fn a_pull_announces_size_and_hash_then_streams_and_completes_once_acknowledged() {
    let mut r = rig();
    let t = TransferId([6; 16]);
    let content: Vec<u8> = (0..100u8).collect();
    let path = r.root.join("log");
    std::fs::write(&path, &content).unwrap();
    let spec = CommandSpec {
        kind: CommandKind::Builtin(BuiltinAction::PullFile {
            transfer: t,
            path: path.to_string_lossy().into(),
            max_bytes: 1000,
        }),
        ..CommandSpec::shell("-", "t")
    };
    r.files
        .start(CommandId([6; 16]), spec.clone(), CancellationToken::new());
    let mut stream = Vec::new();
    loop {
        let c = tokio::time::timeout(Duration::from_secs(10), r.inbox.files.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.offset as usize, stream.len());
        assert!(c.bytes.len() <= 16, "chunks within the link's limit");
        stream.extend(c.bytes);
        if c.last {
            break;
        }
    }
    let h = PullHeader::decode(&stream).unwrap();
    assert_eq!(h.size_bytes, 100);
    assert_eq!(h.sha256, <[u8; 32]>::from(Sha256::digest(&content)));
    assert_eq!(&stream[PULL_HEADER_BYTES as usize..], &content[..]);
    r.files.event(AgentEvent::FileAcked {
        transfer: t,
        up_to: h.stream_len(),
    });
    let (out, outcome) = end(&mut r).await;
    assert_eq!(outcome, CommandOutcome::Exited { code: 0 });
    assert!(out.contains("sent"), "{out}");

    // Over the appliance's limit: refused before anything is sent.
    let mut big = spec;
    if let CommandKind::Builtin(BuiltinAction::PullFile { max_bytes, .. }) = &mut big.kind {
        *max_bytes = 99;
    }
    r.files
        .start(CommandId([7; 16]), big, CancellationToken::new());
    let (_, outcome) = end(&mut r).await;
    assert!(
        matches!(&outcome, CommandOutcome::Refused { reason } if reason.contains("limit")),
        "{outcome:?}"
    );
    assert!(r.inbox.files.try_recv().is_err(), "nothing sent");
}

#[tokio::test]
async fn after_a_restart_a_push_resumes_from_its_temporary_file_and_one_that_lost_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let root = root.canonicalize().unwrap();
    let store_dir = dir.path().join("store");
    let content = b"0123456789abcdef".to_vec();
    let (t1, t2) = (TransferId([1; 16]), TransferId([2; 16]));
    // What a killed agent leaves: two entries, one temporary file with
    // 6 durable bytes, the other's temporary file gone.
    {
        let s = store::FileStore::open(&store_dir).unwrap();
        for (t, id, name) in [(t1, 1u8, "a"), (t2, 2, "b")] {
            s.put(
                t,
                &Entry::Push {
                    command: CommandId([id; 16]),
                    target: root.join(name).to_string_lossy().into(),
                    temp: root.join(format!(".{name}.part")).to_string_lossy().into(),
                    size: content.len() as u64,
                    sha256: Sha256::digest(&content).into(),
                    mode: None,
                    owner: None,
                },
            )
            .unwrap();
        }
        s.flush().await.unwrap();
        std::fs::write(root.join(".a.part"), &content[..6]).unwrap();
    }
    let files = FileAgent::open(&store_dir, vec![root.clone()]).unwrap();
    assert_eq!(files.live_commands().len(), 2);
    let (tx, mut reports) = mpsc::unbounded_channel();
    let tokens = files.attach(Arc::new(Collect(tx)));
    assert_eq!(
        tokens.len(),
        1,
        "only the resumable one keeps a cancel handle"
    );
    // The one without its file ends failed with the reason.
    let mut out = String::new();
    loop {
        match reports.recv().await.unwrap() {
            Report::Output(s) => out.push_str(&s),
            Report::Finished(o) => {
                assert_eq!(o, CommandOutcome::Exited { code: 1 });
                break;
            }
        }
    }
    assert!(out.contains("could not resume"), "{out}");
    // The other resumes at 6 on the next session.
    let (link, mut inbox) = RemoteLink::new(16);
    files.session_up(link);
    let first = tokio::time::timeout(Duration::from_secs(10), inbox.rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(first, LinkInput::AckFile(x, 6) if x == t1),
        "{first:?}"
    );
    files.event(chunk(t1, 6, &content[6..], true));
    loop {
        if let Report::Finished(o) = reports.recv().await.unwrap() {
            assert_eq!(o, CommandOutcome::Exited { code: 0 });
            break;
        }
    }
    assert_eq!(std::fs::read(root.join("a")).unwrap(), content);
}

#[test]
fn a_pull_of_a_growing_file_hashes_exactly_the_prefix_of_the_size_it_announces() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let path = root.join("syslog");
    let first = b"line 1\nline 2\n".to_vec();
    std::fs::write(&path, &first).unwrap();
    // The log grows between the size read and the hash.
    let grow = || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&b"line 3\n".repeat(1000)).unwrap();
    };
    let (entry, _) = prepare_pull_with(
        CommandId([30; 16]),
        std::slice::from_ref(&root),
        &path.to_string_lossy(),
        1 << 20,
        grow,
    )
    .unwrap();
    let Entry::Pull { size, sha256, .. } = entry else {
        panic!("a pull entry");
    };
    assert_eq!(size, first.len() as u64);
    assert_eq!(sha256, <[u8; 32]>::from(Sha256::digest(&first)));
    // A file that shrinks meanwhile is refused with the reason.
    let shrink = || std::fs::write(&path, b"x").unwrap();
    let e = prepare_pull_with(
        CommandId([31; 16]),
        std::slice::from_ref(&root),
        &path.to_string_lossy(),
        1 << 20,
        shrink,
    )
    .unwrap_err();
    assert!(e.contains("shrank"), "{e}");
}

#[tokio::test]
async fn a_live_log_that_keeps_growing_is_pulled_as_a_consistent_prefix() {
    let mut r = rig();
    let t = TransferId([32; 16]);
    // Chunks of 64 KiB, as a real session's.
    r.files.session_down();
    let (link, inbox) = RemoteLink::new(64 * 1024);
    r.inbox = inbox;
    r.files.session_up(link);
    let path = r.root.join("syslog");
    std::fs::write(&path, b"boot\n").unwrap();
    // A writer appends all along, as a logger does.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            // Unbuffered lines until the pull is over (at most 32 MiB).
            let (mut n, mut written) = (0u64, 0usize);
            while !stop.load(Ordering::Relaxed) && written < 32 << 20 {
                let line = format!("event {n:09}\n");
                let _ = f.write_all(line.as_bytes());
                written += line.len();
                n += 1;
            }
        })
    };
    // The pull starts while the log grows.
    let t0 = std::time::Instant::now();
    while std::fs::metadata(&path).unwrap().len() < 4096 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let spec = CommandSpec {
        kind: CommandKind::Builtin(BuiltinAction::PullFile {
            transfer: t,
            path: path.to_string_lossy().into(),
            max_bytes: 1 << 30,
        }),
        ..CommandSpec::shell("-", "t")
    };
    r.files
        .start(CommandId([32; 16]), spec, CancellationToken::new());
    let mut stream = Vec::new();
    loop {
        let c = tokio::time::timeout(Duration::from_secs(20), r.inbox.files.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.offset as usize, stream.len());
        stream.extend(c.bytes);
        if c.last {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let h = PullHeader::decode(&stream).unwrap();
    let content = &stream[PULL_HEADER_BYTES as usize..];
    assert_eq!(content.len() as u64, h.size_bytes);
    assert_eq!(
        h.sha256,
        <[u8; 32]>::from(Sha256::digest(content)),
        "what the appliance checks"
    );
    let now = std::fs::read(&path).unwrap();
    assert_eq!(content, &now[..content.len()], "a prefix of the file");
    r.files.event(AgentEvent::FileAcked {
        transfer: t,
        up_to: h.stream_len(),
    });
    let (_, outcome) = end(&mut r).await;
    assert_eq!(outcome, CommandOutcome::Exited { code: 0 });
}
