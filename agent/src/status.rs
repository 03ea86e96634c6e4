//! The running agent's live state, for `outpost-agent status`.
//!
//! The offline buffer (sled) is locked by the running agent, so `status`
//! cannot read it then. Instead the agent keeps `STATE/status.json`
//! ([`LiveStatus`]: pid, connection state, buffer length and bytes, last
//! acknowledgement, last error) up to date: rewritten atomically (temporary
//! file + rename, mode 0644: it holds no secret) when something changed,
//! checked every second, and at least every [`REFRESH_MS`]; on a clean stop
//! it says `stopped`. `status` tells a running agent from a stopped one by
//! the buffer's lock ([`buffer_in_use`]) and the file's pid
//! ([`pid_alive`]); the decision is the pure [`assess`].
//!
//! Owns `status.json` only; the buffer itself belongs to [`crate::buffer`].

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::session::{Shared, now_ms};

/// The file name inside the state directory.
pub const STATUS_FILE: &str = "status.json";
/// An unchanged status is still rewritten this often (`updated_ms` shows
/// the agent is alive and not stuck).
pub const REFRESH_MS: u64 = 30_000;
/// How often the agent checks whether its status changed.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Where the agent's link to the appliance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    /// Starting a session (first attempt or after a backoff).
    Connecting,
    /// Session established; records stream.
    Connected,
    /// The last session failed; waiting to reconnect.
    Disconnected,
    /// The agent stopped (cleanly, or after a permanent refusal).
    Stopped,
}

impl Connection {
    pub fn label(self) -> &'static str {
        match self {
            Connection::Connecting => "connecting",
            Connection::Connected => "connected",
            Connection::Disconnected => "disconnected",
            Connection::Stopped => "stopped",
        }
    }
}

/// What the session loop reports as it runs (kept in [`Shared`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub connection: Connection,
    /// When the current state began (ms).
    pub since_ms: u64,
    /// When the last acknowledgement arrived (ms).
    pub last_ack_ms: Option<u64>,
    /// The last session failure, and when.
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
}

impl LinkState {
    pub fn new(now_ms: u64) -> LinkState {
        LinkState {
            connection: Connection::Connecting,
            since_ms: now_ms,
            last_ack_ms: None,
            last_error: None,
            last_error_ms: None,
        }
    }

    /// Moves to `c` (the time only changes with the state).
    pub fn set(&mut self, c: Connection, now_ms: u64) {
        if self.connection != c {
            self.connection = c;
            self.since_ms = now_ms;
        }
    }

    pub fn error(&mut self, message: String, now_ms: u64) {
        self.last_error = Some(message);
        self.last_error_ms = Some(now_ms);
    }
}

/// `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveStatus {
    /// The agent process.
    pub pid: u32,
    pub started_ms: u64,
    /// When this file was written.
    pub updated_ms: u64,
    pub appliance: String,
    pub connection: Connection,
    /// Since when `connection` holds.
    pub connection_since_ms: u64,
    pub buffered_records: u64,
    pub buffered_bytes: u64,
    pub dropped_records: u64,
    pub acked_seq: u64,
    pub last_ack_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    /// Offline buffer writes that failed (disk full, I/O error) in this
    /// run; each closed the database until it was reopened. Absent from
    /// files of older agents.
    #[serde(default)]
    pub buffer_write_failures: u64,
    /// Buffered records given new sequence numbers in this run because the
    /// appliance had stored more than the buffer ever numbered (a reset
    /// buffer directory). Absent from files of older agents.
    #[serde(default)]
    pub renumbered_records: u64,
}

impl LiveStatus {
    /// Equal apart from the write time.
    fn same_as(&self, other: &LiveStatus) -> bool {
        LiveStatus {
            updated_ms: 0,
            ..self.clone()
        } == LiveStatus {
            updated_ms: 0,
            ..other.clone()
        }
    }
}

/// Writes `status` to `path` atomically: a reader sees the old file or the
/// new one, never a part.
pub fn write(path: &Path, status: &LiveStatus) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(status).context("encoding the agent status")?;
    // A leftover from a crash keeps its mode on truncate: start afresh.
    let _ = std::fs::remove_file(&tmp);
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o644);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&text)
            .and_then(|()| f.write_all(b"\n"))
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Reads `status.json`: `None` if there is none.
pub fn read(path: &Path) -> anyhow::Result<Option<LiveStatus>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The status the agent would write now.
pub fn snapshot(shared: &Shared, appliance: &str, started_ms: u64, now_ms: u64) -> LiveStatus {
    let link = shared.link();
    let b = shared.buffer();
    LiveStatus {
        pid: std::process::id(),
        started_ms,
        updated_ms: now_ms,
        appliance: appliance.to_string(),
        connection: link.connection,
        connection_since_ms: link.since_ms,
        buffered_records: b.len(),
        buffered_bytes: b.size_bytes(),
        dropped_records: b.dropped(),
        acked_seq: b.acked(),
        last_ack_ms: link.last_ack_ms,
        last_error: link.last_error.clone(),
        last_error_ms: link.last_error_ms,
        buffer_write_failures: b.write_failures(),
        renumbered_records: b.renumbered(),
    }
}

/// Whether the status must be rewritten now: it changed, or the last write
/// is [`REFRESH_MS`] old.
pub fn due(last: Option<&LiveStatus>, now: &LiveStatus) -> bool {
    match last {
        None => true,
        Some(l) => !l.same_as(now) || now.updated_ms >= l.updated_ms.saturating_add(REFRESH_MS),
    }
}

/// Keeps `path` up to date until `shutdown`, then writes the final
/// (`stopped`) status. A failed write is logged, never fatal.
pub async fn run_writer(
    path: std::path::PathBuf,
    shared: Arc<Shared>,
    appliance: String,
    started_ms: u64,
    shutdown: CancellationToken,
) {
    let mut last: Option<LiveStatus> = None;
    let mut warned = false;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let now = snapshot(&shared, &appliance, started_ms, now_ms());
        if !due(last.as_ref(), &now) {
            continue;
        }
        match write(&path, &now) {
            Ok(()) => {
                last = Some(now);
                warned = false;
            }
            Err(e) if !warned => {
                tracing::warn!(error = %format!("{e:#}"), "could not write the agent status file");
                warned = true;
            }
            Err(_) => {}
        }
    }
    shared.set_connection(Connection::Stopped);
    let fin = snapshot(&shared, &appliance, started_ms, now_ms());
    if let Err(e) = write(&path, &fin) {
        tracing::warn!(error = %format!("{e:#}"), "could not write the final agent status");
    }
}

/// Whether the running agent holds the offline buffer in `buffer_dir`
/// (sled takes an exclusive `flock` on `buffer_dir/db` while open). Probes
/// with a non-blocking shared lock, released at once.
pub fn buffer_in_use(buffer_dir: &Path) -> std::io::Result<bool> {
    let db = buffer_dir.join("db");
    let f = match std::fs::File::open(&db) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(false),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Whether a process with this id exists (signal 0; a process of another
/// user counts as alive).
pub fn pid_alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// What `status` concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// The buffer is locked and `status.json` is from a live process.
    Running,
    /// The buffer is locked, but `status.json` is missing or names a
    /// process that is gone: something runs (another agent instance of an
    /// older version, a second `run`) that does not report its state.
    RunningWithoutStatus,
    /// Not running; the last run stopped cleanly.
    Stopped,
    /// Not running, and `status.json` says otherwise: the agent was killed
    /// or crashed (its pid is gone, or reused by another process).
    Stale,
    /// Not running and never reported (not run since enrollment, or by a
    /// version without a status file).
    NotRunning,
}

impl Liveness {
    pub fn label(self) -> &'static str {
        match self {
            Liveness::Running => "running",
            Liveness::RunningWithoutStatus => "running_without_status",
            Liveness::Stopped => "stopped",
            Liveness::Stale => "stale",
            Liveness::NotRunning => "not_running",
        }
    }

    pub fn is_running(self) -> bool {
        matches!(self, Liveness::Running | Liveness::RunningWithoutStatus)
    }
}

/// Decides from the buffer's lock, the status file and whether its pid is
/// alive.
pub fn assess(buffer_locked: bool, live: Option<&LiveStatus>, pid_alive: bool) -> Liveness {
    match (buffer_locked, live) {
        (true, Some(s)) if pid_alive && s.connection != Connection::Stopped => Liveness::Running,
        (true, _) => Liveness::RunningWithoutStatus,
        (false, None) => Liveness::NotRunning,
        (false, Some(s)) if s.connection == Connection::Stopped => Liveness::Stopped,
        (false, Some(_)) => Liveness::Stale,
    }
}

/// Buffer figures read from the database (when the agent is not running).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferFigures {
    pub records: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub acked_seq: u64,
}

/// What `outpost-agent status` prints (`--json`: these fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub device_id: String,
    pub appliance: String,
    pub tenant: String,
    pub customer: String,
    /// `running`, `running_without_status`, `stopped`, `stale`, `not_running`.
    pub state: &'static str,
    pub running: bool,
    /// From `status.json` (the last one written, when not running).
    pub pid: Option<u32>,
    pub started_ms: Option<u64>,
    pub status_updated_ms: Option<u64>,
    pub connection: Option<Connection>,
    pub connection_since_ms: Option<u64>,
    /// Live figures while running, else from the buffer on disk (`None`
    /// when a running agent does not report them).
    pub buffered_records: Option<u64>,
    pub buffered_bytes: Option<u64>,
    pub dropped_records: Option<u64>,
    pub acked_seq: Option<u64>,
    pub last_ack_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    /// From `status.json`: failed offline buffer writes of the run.
    pub buffer_write_failures: Option<u64>,
    /// From `status.json`: records renumbered after a buffer reset.
    pub renumbered_records: Option<u64>,
}

/// Who the agent is, from its identity file.
#[derive(Debug, Clone)]
pub struct Who {
    pub device_id: String,
    pub appliance: String,
    pub tenant: String,
    pub customer: String,
}

impl Report {
    /// Combines the assessment, the status file and (when not running) the
    /// buffer's figures.
    pub fn build(
        who: Who,
        liveness: Liveness,
        live: Option<&LiveStatus>,
        db: Option<BufferFigures>,
    ) -> Report {
        // A file that is not the running agent's still tells its last run's
        // pid, connection, ack and error; buffer figures come from the disk.
        let live_figures = matches!(liveness, Liveness::Running);
        let live = match liveness {
            Liveness::RunningWithoutStatus => None,
            _ => live,
        };
        let fig = |from_live: fn(&LiveStatus) -> u64, from_db: fn(&BufferFigures) -> u64| {
            if live_figures {
                live.map(from_live)
            } else {
                db.as_ref().map(from_db)
            }
        };
        Report {
            device_id: who.device_id,
            appliance: who.appliance,
            tenant: who.tenant,
            customer: who.customer,
            state: liveness.label(),
            running: liveness.is_running(),
            pid: live.map(|s| s.pid),
            started_ms: live.map(|s| s.started_ms),
            status_updated_ms: live.map(|s| s.updated_ms),
            connection: live.map(|s| s.connection),
            connection_since_ms: live.map(|s| s.connection_since_ms),
            buffered_records: fig(|s| s.buffered_records, |d| d.records),
            buffered_bytes: fig(|s| s.buffered_bytes, |d| d.bytes),
            dropped_records: fig(|s| s.dropped_records, |d| d.dropped),
            acked_seq: fig(|s| s.acked_seq, |d| d.acked_seq),
            last_ack_ms: live.and_then(|s| s.last_ack_ms),
            last_error: live.and_then(|s| s.last_error.clone()),
            last_error_ms: live.and_then(|s| s.last_error_ms),
            buffer_write_failures: live.map(|s| s.buffer_write_failures),
            renumbered_records: live.map(|s| s.renumbered_records),
        }
    }

    /// The human-readable form.
    pub fn text(&self, now_ms: u64) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12}{v}\n"));
        line("device", self.device_id.clone());
        line("appliance", self.appliance.clone());
        line("tenant", format!("{} / {}", self.tenant, self.customer));
        let when = |ms: Option<u64>| {
            ms.map(|t| format!("{} ({})", ago(t, now_ms), rfc3339(t)))
                .unwrap_or_else(|| "never".into())
        };
        let pid = self.pid.unwrap_or(0);
        let agent = match self.state {
            "running" => format!(
                "running (pid {pid}, started {}; status updated {})",
                when(self.started_ms),
                ago(self.status_updated_ms.unwrap_or(now_ms), now_ms)
            ),
            "running_without_status" => "running (its buffer is locked), but it reports no \
                 status: status.json is missing or names a process that is gone; \
                 is an older agent or a second `outpost-agent run` using this state directory?"
                .to_string(),
            "stopped" => format!(
                "not running (pid {pid} stopped cleanly {})",
                when(self.status_updated_ms)
            ),
            "stale" => format!(
                "not running: status.json is stale, pid {pid} is gone (killed or crashed); \
                 its last report was {}",
                when(self.status_updated_ms)
            ),
            _ => "not running (no status recorded yet)".to_string(),
        };
        line("agent", agent);
        if let Some(c) = self.connection {
            let prefix = if self.running { "" } else { "last: " };
            line(
                "connection",
                format!(
                    "{prefix}{} since {}",
                    c.label(),
                    when(self.connection_since_ms)
                ),
            );
        }
        let n = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "?".into());
        line(
            "buffered",
            format!(
                "{} records ({} bytes)",
                n(self.buffered_records),
                n(self.buffered_bytes)
            ),
        );
        line("dropped", n(self.dropped_records));
        line("acked seq", n(self.acked_seq));
        if self.pid.is_some() {
            line("last ack", when(self.last_ack_ms));
            line(
                "last error",
                match &self.last_error {
                    Some(e) => format!("{} : {e}", when(self.last_error_ms)),
                    None => "none".into(),
                },
            );
        }
        if let Some(n) = self.buffer_write_failures.filter(|n| *n > 0) {
            line(
                "buffer",
                format!("{n} write failures (disk full?); the buffer is reopened after each"),
            );
        }
        out
    }
}

/// "5s ago" for a past time.
pub fn ago(then_ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

/// RFC 3339 (seconds, UTC).
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(connection: Connection) -> LiveStatus {
        LiveStatus {
            pid: 4242,
            started_ms: 1_000,
            updated_ms: 5_000,
            appliance: "127.0.0.1:4433".into(),
            connection,
            connection_since_ms: 2_000,
            buffered_records: 3,
            buffered_bytes: 300,
            dropped_records: 0,
            acked_seq: 17,
            last_ack_ms: Some(4_900),
            last_error: None,
            last_error_ms: None,
            buffer_write_failures: 0,
            renumbered_records: 0,
        }
    }

    #[test]
    fn a_locked_buffer_with_a_live_pid_is_a_running_agent() {
        let s = live(Connection::Connected);
        assert_eq!(assess(true, Some(&s), true), Liveness::Running);
        assert_eq!(
            assess(true, Some(&s), false),
            Liveness::RunningWithoutStatus
        );
        assert_eq!(assess(true, None, false), Liveness::RunningWithoutStatus);
    }

    #[test]
    fn a_status_file_left_by_a_dead_agent_is_stale() {
        let s = live(Connection::Connected);
        // kill -9: the lock is gone with the process, the file says connected.
        assert_eq!(assess(false, Some(&s), false), Liveness::Stale);
        // Its pid reused by an unrelated process: still stale.
        assert_eq!(assess(false, Some(&s), true), Liveness::Stale);
        assert_eq!(
            assess(false, Some(&live(Connection::Stopped)), false),
            Liveness::Stopped
        );
        assert_eq!(assess(false, None, false), Liveness::NotRunning);
    }

    #[test]
    fn status_is_rewritten_on_change_or_when_old() {
        let a = live(Connection::Connected);
        assert!(due(None, &a));
        let mut b = a.clone();
        b.updated_ms += 1_000;
        assert!(!due(Some(&a), &b), "nothing changed");
        b.buffered_records += 1;
        assert!(due(Some(&a), &b), "buffer grew");
        let mut c = a.clone();
        c.updated_ms += REFRESH_MS;
        assert!(due(Some(&a), &c), "refresh");
    }

    #[test]
    fn status_file_is_replaced_atomically_and_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(STATUS_FILE);
        assert_eq!(read(&p).unwrap(), None);
        let a = live(Connection::Connected);
        write(&p, &a).unwrap();
        let mut b = a.clone();
        b.connection = Connection::Stopped;
        write(&p, &b).unwrap();
        assert_eq!(read(&p).unwrap(), Some(b));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATUS_FILE], "no temporary file left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o600, 0o600, "{mode:o}");
            assert_eq!(mode & 0o022, 0, "{mode:o}");
        }
    }

    #[test]
    fn an_open_buffer_is_seen_as_in_use_and_released_when_closed() {
        let dir = tempfile::tempdir().unwrap();
        let bdir = dir.path().join("buffer");
        assert!(!buffer_in_use(&bdir).unwrap(), "no buffer yet");
        let b = crate::buffer::Buffer::open(&bdir, 1 << 20).unwrap();
        assert!(buffer_in_use(&bdir).unwrap());
        drop(b);
        // sled's flusher thread releases the file shortly after the drop.
        let released = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !buffer_in_use(&bdir).unwrap()
        });
        assert!(released);
    }

    fn who() -> Who {
        Who {
            device_id: "e8ec9480c5af0e3b".into(),
            appliance: "127.0.0.1:4433".into(),
            tenant: "acme".into(),
            customer: "dental".into(),
        }
    }

    #[test]
    fn running_report_shows_the_live_state_from_the_status_file() {
        let s = live(Connection::Connected);
        let r = Report::build(who(), Liveness::Running, Some(&s), None);
        assert!(r.running);
        assert_eq!(r.buffered_records, Some(3));
        assert_eq!(r.acked_seq, Some(17));
        let t = r.text(6_000);
        assert!(t.contains("running (pid 4242"), "{t}");
        assert!(t.contains("connected since 4s ago"), "{t}");
        assert!(t.contains("last ack    1s ago"), "{t}");
        assert!(t.contains("last error  none"), "{t}");
        let j = serde_json::to_value(&r).unwrap();
        for k in [
            "pid",
            "connection",
            "buffered_records",
            "buffered_bytes",
            "last_ack_ms",
            "last_error",
            "state",
            "running",
        ] {
            assert!(j.get(k).is_some(), "{k} missing in {j}");
        }
        assert_eq!(j["connection"], "connected");
        assert_eq!(j["state"], "running");
    }

    #[test]
    fn stale_report_names_the_dead_pid_and_reads_the_buffer_from_disk() {
        let mut s = live(Connection::Connected);
        s.last_error = Some("connecting: timed out".into());
        s.last_error_ms = Some(4_000);
        let db = BufferFigures {
            records: 9,
            bytes: 900,
            dropped: 1,
            acked_seq: 20,
        };
        let r = Report::build(who(), Liveness::Stale, Some(&s), Some(db));
        assert!(!r.running);
        assert_eq!(r.state, "stale");
        assert_eq!(
            r.buffered_records,
            Some(9),
            "figures from disk, not the old file"
        );
        let t = r.text(65_000);
        assert!(t.contains("status.json is stale, pid 4242 is gone"), "{t}");
        assert!(t.contains("last: connected"), "{t}");
        assert!(t.contains("connecting: timed out"), "{t}");
    }

    #[test]
    fn running_without_a_status_file_says_so_without_figures() {
        let r = Report::build(who(), Liveness::RunningWithoutStatus, None, None);
        assert!(r.running);
        assert_eq!(r.buffered_records, None);
        let t = r.text(0);
        assert!(t.contains("running (its buffer is locked)"), "{t}");
    }

    #[test]
    fn our_own_pid_is_alive_and_an_unused_one_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }
}
