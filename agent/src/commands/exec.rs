//! Running one command's process: its own process group (session leader
//! of nothing, group leader of its tree), stdout and stderr interleaved in
//! one pipe, run-as by uid/gid, and a timeout or cancel that kills the
//! whole group (SIGTERM, then SIGKILL after a grace). Owns no state: the
//! executor ([`super::host`]) records what happens.

use std::io::Read;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long to keep reading output after the process exited (a
/// background grandchild may hold the pipe open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Bytes per read of the output pipe.
const READ_BYTES: usize = 16 * 1024;

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// Switch to this uid/gid (the agent must be root to do so).
    pub user: Option<(u32, u32)>,
    pub timeout: Duration,
    pub kill_grace: Duration,
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    Cancelled,
}

/// Starts the process; `started` is called with its pid once it runs.
/// Output goes to `output` as it is produced. Returns how it ended, or why
/// it could not start.
pub async fn run(
    l: Launch,
    output: mpsc::Sender<Vec<u8>>,
    cancel: CancellationToken,
    started: impl FnOnce(u32),
) -> Result<End, String> {
    let (reader, writer) = std::io::pipe().map_err(|e| format!("creating a pipe: {e}"))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| format!("duplicating a pipe: {e}"))?;
    let mut cmd = tokio::process::Command::new(&l.program);
    cmd.args(&l.args)
        .envs(l.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&l.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0)
        .kill_on_drop(false);
    if let Some((uid, gid)) = l.user {
        cmd.uid(uid).gid(gid);
    }
    let spawned = cmd.spawn();
    // Our copies of the pipe's write end must go, or the reader never
    // sees the end.
    drop(cmd);
    let mut child = spawned.map_err(|e| format!("{}: {e}", l.program))?;
    let pid = child.id().unwrap_or(0);
    started(pid);

    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("command-output".into())
        .spawn(move || {
            let mut reader = reader;
            let mut buf = vec![0u8; READ_BYTES];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if output.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = done_tx.send(());
        })
        .map_err(|e| format!("starting the output reader: {e}"))?;

    let group = Pid::from_raw(pid as i32);
    let end = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| format!("waiting for the process: {e}"))?;
            exit_of(status)
        }
        _ = tokio::time::sleep(l.timeout) => {
            stop_group(group, &mut child, l.kill_grace).await;
            End::TimedOut
        }
        _ = cancel.cancelled() => {
            stop_group(group, &mut child, l.kill_grace).await;
            End::Cancelled
        }
    };
    // Output still in the pipe (bounded wait: a daemonised grandchild may
    // keep it open).
    let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut done_rx).await;
    Ok(end)
}

fn exit_of(status: std::process::ExitStatus) -> End {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => End::Exited(c),
        (None, Some(s)) => End::Signaled(s),
        _ => End::Exited(-1),
    }
}

/// SIGTERM to the group, SIGKILL to the group after `grace` (always: a
/// child that ignores SIGTERM or a grandchild that outlives the leader
/// dies too), then reaps the leader.
async fn stop_group(group: Option<Pid>, child: &mut tokio::process::Child, grace: Duration) {
    if let Some(g) = group {
        let _ = kill_process_group(g, Signal::TERM);
    }
    let _ = tokio::time::timeout(grace, child.wait()).await;
    if let Some(g) = group {
        let _ = kill_process_group(g, Signal::KILL);
    }
    let _ = child.wait().await;
}

/// Looks up a local user in `/etc/passwd`: (uid, gid, home). Names only
/// from the local file (no NSS): run-as is for local service accounts.
pub fn lookup_user(passwd: &str, name: &str) -> Option<(u32, u32, String)> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 7 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?, f[5].to_string()))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(line: &str, timeout_ms: u64) -> Launch {
        Launch {
            program: "sh".into(),
            args: vec!["-c".into(), line.into(), "sh".into()],
            env: vec![("OUTPOST_T".into(), "v".into())],
            cwd: "/".into(),
            user: None,
            timeout: Duration::from_millis(timeout_ms),
            kill_grace: Duration::from_millis(300),
        }
    }

    async fn collect(l: Launch, cancel: CancellationToken) -> (Result<End, String>, Vec<u8>) {
        let (tx, mut rx) = mpsc::channel(16);
        let h = tokio::spawn(async move {
            let mut all = Vec::new();
            while let Some(b) = rx.recv().await {
                all.extend(b);
            }
            all
        });
        let r = run(l, tx, cancel, |_| {}).await;
        (r, h.await.unwrap())
    }

    #[tokio::test]
    async fn output_of_both_streams_and_the_exit_code_are_reported() {
        let (r, out) = collect(
            launch("echo out; echo err >&2; echo $OUTPOST_T; exit 3", 10_000),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(r, Ok(End::Exited(3)));
        assert_eq!(String::from_utf8(out).unwrap(), "out\nerr\nv\n");
    }

    #[tokio::test]
    async fn a_timeout_kills_a_child_that_ignores_sigterm_and_its_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("alive");
        // The grandchild ignores TERM and would touch the file after 2 s.
        let line = format!(
            "trap '' TERM; (trap '' TERM; sleep 2; touch {m}) & echo started; while :; do sleep 0.1; done",
            m = mark.display()
        );
        let t = std::time::Instant::now();
        let (r, out) = collect(launch(&line, 300), CancellationToken::new()).await;
        assert_eq!(r, Ok(End::TimedOut));
        assert!(String::from_utf8_lossy(&out).contains("started"));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!mark.exists(), "the grandchild survived the kill");
    }

    #[tokio::test]
    async fn cancel_stops_a_running_command() {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.cancel();
        });
        let (r, out) = collect(launch("echo a; sleep 30", 60_000), cancel).await;
        assert_eq!(r, Ok(End::Cancelled));
        assert_eq!(out, b"a\n");
    }

    #[tokio::test]
    async fn a_missing_program_or_directory_fails_to_start() {
        let mut l = launch("true", 1000);
        l.program = "/nonexistent/interpreter".into();
        assert!(collect(l, CancellationToken::new()).await.0.is_err());
        let mut l = launch("true", 1000);
        l.cwd = "/nonexistent-dir".into();
        assert!(collect(l, CancellationToken::new()).await.0.is_err());
    }

    #[test]
    fn users_are_looked_up_in_passwd() {
        let p = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(
            lookup_user(p, "nobody"),
            Some((65534, 65534, "/nonexistent".into()))
        );
        assert_eq!(lookup_user(p, "alice"), None);
    }
}
