//! Running one command's process: its own process group (session leader
//! of nothing, group leader of its tree), stdout and stderr interleaved in
//! one pipe, run-as by uid/gid, and a timeout or cancel that kills the
//! whole group (SIGTERM, then SIGKILL after a grace). Owns no state: the
//! executor ([`super::host`]) records what happens.

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long to keep reading output after the process exited (a
/// background grandchild may hold the pipe open: then the command ends
/// with its leader's exit after this long, and the pipe is closed).
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
    // Read asynchronously: after the drain the read end is simply dropped
    // (no thread stays blocked on a pipe a background child holds open).
    let reader = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
        .map_err(|e| format!("reading the output pipe: {e}"))?;
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
    let deadline = tokio::time::Instant::now() + l.timeout;
    let spawned = cmd.spawn();
    // Our copies of the pipe's write end must go, or the reader never
    // sees the end.
    drop(cmd);
    let mut child = spawned.map_err(|e| format!("{}: {e}", l.program))?;
    let pid = child.id().unwrap_or(0);
    started(pid);

    let stop = CancellationToken::new();
    let mut reading = tokio::spawn(forward_output(reader, output, stop.clone()));

    let group = Pid::from_raw(pid as i32);
    let (end, leader_exited) = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| format!("waiting for the process: {e}"))?;
            (exit_of(status), true)
        }
        _ = tokio::time::sleep_until(deadline) => {
            stop_group(group, &mut child, l.kill_grace).await;
            (End::TimedOut, false)
        }
        _ = cancel.cancelled() => {
            stop_group(group, &mut child, l.kill_grace).await;
            (End::Cancelled, false)
        }
    };
    // Output still in the pipe, for at most DRAIN_AFTER_EXIT: a background
    // child that keeps the pipe open (`nohup app &`, `sleep 30 &`) must
    // not hold the command. A timeout or cancel during the drain stops
    // what is left of the group (the leader exited by itself: its exit is
    // what is reported).
    let drain_until = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
    let mut reader_done = false;
    let mut termed_at = None;
    let mut killed = !leader_exited;
    loop {
        let kill_at = termed_at.map(|t| t + l.kill_grace);
        tokio::select! {
            _ = &mut reading => {
                reader_done = true;
                break;
            }
            _ = tokio::time::sleep_until(drain_until) => break,
            _ = tokio::time::sleep_until(deadline), if termed_at.is_none() && !killed => {
                signal_group(group, Signal::TERM);
                termed_at = Some(tokio::time::Instant::now());
            }
            _ = cancel.cancelled(), if termed_at.is_none() && !killed => {
                signal_group(group, Signal::TERM);
                termed_at = Some(tokio::time::Instant::now());
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or(drain_until)), if kill_at.is_some() && !killed => {
                signal_group(group, Signal::KILL);
                killed = true;
            }
        }
    }
    if termed_at.is_some() && !killed {
        signal_group(group, Signal::KILL);
    }
    // Stop forwarding: the sender goes with the task, so the caller sees
    // the output end; the read end closes (a background child that
    // writes later gets EPIPE, as with Go's `exec.Cmd.WaitDelay`).
    stop.cancel();
    if !reader_done {
        let _ = reading.await;
    }
    Ok(end)
}

/// Reads the output pipe and forwards what it reads until the end of
/// the pipe, the receiver going away, or `stop`.
async fn forward_output(
    mut pipe: pipe::Receiver,
    output: mpsc::Sender<Vec<u8>>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        let n = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = pipe.read(&mut buf) => match r {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            },
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = output.send(buf[..n].to_vec()) => if r.is_err() { return },
        }
    }
}

fn signal_group(group: Option<Pid>, signal: Signal) {
    if let Some(g) = group {
        let _ = kill_process_group(g, signal);
    }
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

    /// Whether process `pid` is gone (or a zombie nobody reaped yet).
    fn gone(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(s) => s
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn a_background_child_holding_the_pipe_does_not_hold_the_command_after_the_drain() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let line = format!("sleep 30 & echo $! > {}; echo x", pid_file.display());
        let t = std::time::Instant::now();
        // `collect` returns once the output's sender is gone too.
        let (r, out) = tokio::time::timeout(
            Duration::from_secs(10),
            collect(launch(&line, 60_000), CancellationToken::new()),
        )
        .await
        .expect("the command ends after the drain, not with its background child");
        assert_eq!(r, Ok(End::Exited(0)));
        assert_eq!(out, b"x\n");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // Not timed out nor cancelled: the background child is left alone.
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let pid = pid.trim();
        assert!(!gone(pid), "the background child was killed");
        let _ = std::process::Command::new("kill").arg(pid).status();
    }

    #[tokio::test]
    async fn a_timeout_during_the_drain_kills_the_background_child_and_keeps_the_exit() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let line = format!("sleep 30 & echo $! > {}; echo x", pid_file.display());
        let t = std::time::Instant::now();
        let (r, out) = tokio::time::timeout(
            Duration::from_secs(10),
            collect(launch(&line, 500), CancellationToken::new()),
        )
        .await
        .expect("bounded");
        assert_eq!(r, Ok(End::Exited(0)));
        assert_eq!(out, b"x\n");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let pid = pid.trim().to_string();
        let t0 = std::time::Instant::now();
        while !gone(&pid) && t0.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone(&pid), "the background child survived the timeout");
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
