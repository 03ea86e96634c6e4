//! The reboot built-in action's guard and verdict on the agent.
//!
//! * refused while a package install is running: the dpkg frontend lock
//!   (`/var/lib/dpkg/lock-frontend`, configurable) is probed with a real
//!   `fcntl(F_GETLK)` write-lock query, so a lock held by apt/dpkg (or any
//!   process holding an fcntl lock on that file) is seen and its holder's
//!   pid named in the reason;
//! * before the reboot is scheduled, the current boot id
//!   (`/proc/sys/kernel/random/boot_id`, configurable) is recorded in the
//!   ledger with the command; the command stays `running`;
//! * after a restart of the agent, a `running` reboot whose recorded boot id
//!   differs from the current one is reported completed (exit 0, with both
//!   ids in its output); with the same boot id it stays `running` (the
//!   reboot may still be pending) and the appliance's deadline decides.
//!
//! * a cancel of a scheduled reboot before it is due runs
//!   `reboot_cancel_command` (default `shutdown -c`); once due it is too
//!   late and refused with the reason ([`cancel_verdict`]). It is due when
//!   the reboot command schedules it ([`scheduled_delay_s`]: the default
//!   `shutdown -r +MINUTES` rounds the delay up to whole minutes).
//!
//! The boot id therefore reaches the appliance inside the command's result
//! and output: the session protocol (Hello, heartbeats) is unchanged.
//! This module runs nothing itself; [`super::host`] does.

use std::path::{Path, PathBuf};

/// Default command that reboots the host. `OUTPOST_REBOOT_DELAY_S` holds
/// the delay in seconds: `shutdown -r +MINUTES` (rounded up) with a delay,
/// `systemctl reboot` without.
pub const DEFAULT_REBOOT_COMMAND: &str = "if [ \"${OUTPOST_REBOOT_DELAY_S:-0}\" -gt 0 ]; then \
     exec shutdown -r +$(( (OUTPOST_REBOOT_DELAY_S + 59) / 60 )); else exec systemctl reboot; fi";

/// Seconds after which `command` reboots the host when asked for a delay
/// of `delay_s` (the command's start counts as now): the reboot is due
/// then, and a cancel is taken until then. The default command schedules
/// `shutdown -r +MINUTES` with the delay rounded up to whole minutes, so
/// its reboot comes at that rounded delay; any other `reboot_command` is
/// taken to reboot after exactly `OUTPOST_REBOOT_DELAY_S` seconds.
pub fn scheduled_delay_s(command: &str, delay_s: u64) -> u64 {
    if command == DEFAULT_REBOOT_COMMAND {
        delay_s.div_ceil(60).saturating_mul(60)
    } else {
        delay_s
    }
}

/// Default command that cancels a scheduled reboot (`reboot_cancel_command`).
pub const DEFAULT_REBOOT_CANCEL_COMMAND: &str = "shutdown -c";

/// Whether a cancel of a scheduled reboot due at `due_ms` can still stop
/// it at `now_ms` (`None`: the due time was not recorded; try). Once due,
/// the reboot runs: the reason says so.
pub fn cancel_verdict(due_ms: Option<u64>, now_ms: u64) -> Result<(), String> {
    match due_ms {
        Some(d) if now_ms >= d => Err(format!(
            "{}: the reboot was due {} s ago and runs",
            outpost_proto::command::REBOOT_CANCEL_TOO_LATE,
            (now_ms - d) / 1000
        )),
        _ => Ok(()),
    }
}

/// Default dpkg frontend lock (held by apt and dpkg during installs).
pub const DEFAULT_DPKG_LOCK: &str = "/var/lib/dpkg/lock-frontend";

/// Default source of the kernel's boot id (new at every boot).
pub const DEFAULT_BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Where the reboot action looks and what it runs (`agent.toml`:
/// `reboot_command`, `dpkg_lock`, `boot_id_path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebootConfig {
    /// Run with `sh -c`; `OUTPOST_REBOOT_DELAY_S` and `OUTPOST_AGENT_PID`
    /// in its environment.
    pub command: String,
    pub dpkg_lock: PathBuf,
    pub boot_id_path: PathBuf,
}

impl Default for RebootConfig {
    fn default() -> Self {
        RebootConfig {
            command: DEFAULT_REBOOT_COMMAND.into(),
            dpkg_lock: DEFAULT_DPKG_LOCK.into(),
            boot_id_path: DEFAULT_BOOT_ID_PATH.into(),
        }
    }
}

/// Whether another process holds an fcntl lock on `path` that would block a
/// write lock: `Ok(None)` if not (or the file does not exist), `Ok(Some(pid))`
/// with the holder's pid (0 if unknown) otherwise.
pub fn lock_holder(path: &Path) -> std::io::Result<Option<i32>> {
    use rustix::process::{Flock, FlockOffsetType, FlockType};
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let probe = Flock {
        start: 0,
        length: 0,
        pid: None,
        typ: FlockType::WriteLock,
        offset_type: FlockOffsetType::Set,
    };
    let held = rustix::process::fcntl_getlk(&f, &probe).map_err(std::io::Error::from)?;
    Ok(held
        .filter(|l| l.typ != FlockType::Unlocked)
        .map(|l| l.pid.map_or(0, |p| p.as_raw_nonzero().get())))
}

/// Why a reboot is refused now, if it is.
pub fn guard(cfg: &RebootConfig) -> Result<(), String> {
    match lock_holder(&cfg.dpkg_lock) {
        Ok(None) => Ok(()),
        Ok(Some(pid)) => Err(format!(
            "a package install is running (the dpkg lock {} is held{}): reboot refused",
            cfg.dpkg_lock.display(),
            if pid > 0 {
                format!(" by pid {pid}")
            } else {
                String::new()
            }
        )),
        Err(e) => Err(format!(
            "cannot tell whether a package install is running ({}: {e}): reboot refused",
            cfg.dpkg_lock.display()
        )),
    }
}

/// The current boot id (trimmed).
pub fn boot_id(cfg: &RebootConfig) -> Result<String, String> {
    let s = std::fs::read_to_string(&cfg.boot_id_path)
        .map_err(|e| format!("reading the boot id {}: {e}", cfg.boot_id_path.display()))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(format!("{} is empty", cfg.boot_id_path.display()));
    }
    Ok(s)
}

/// After a restart: did the host reboot since `recorded`? (`current` is
/// `None` when the boot id cannot be read: not decided, keep waiting.)
pub fn rebooted(recorded: &str, current: Option<&str>) -> bool {
    current.is_some_and(|c| c != recorded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reboot_can_be_cancelled_only_before_it_is_due() {
        assert!(cancel_verdict(Some(60_000), 59_999).is_ok());
        let late = cancel_verdict(Some(60_000), 62_000).unwrap_err();
        assert!(
            late.contains("too late") && late.contains("2 s ago"),
            "{late}"
        );
        assert!(cancel_verdict(Some(60_000), 60_000).is_err());
        assert!(cancel_verdict(None, 1).is_ok(), "no due time recorded: try");
    }

    #[test]
    fn the_due_time_of_the_default_command_is_the_whole_minutes_shutdown_is_given() {
        // The default command, run with a stand-in for shutdown(8) on
        // PATH: the minutes it passes, times 60, are what
        // `scheduled_delay_s` says.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("shutdown");
        std::fs::write(&fake, "#!/bin/sh\necho \"$@\"\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        for delay_s in [1u64, 59, 60, 61, 90, 120, 3599, 86_400] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(DEFAULT_REBOOT_COMMAND)
                .env("PATH", &path)
                .env("OUTPOST_REBOOT_DELAY_S", delay_s.to_string())
                .output()
                .unwrap();
            let line = String::from_utf8(out.stdout).unwrap();
            let minutes: u64 = line.trim().strip_prefix("-r +").unwrap().parse().unwrap();
            assert_eq!(
                minutes * 60,
                scheduled_delay_s(DEFAULT_REBOOT_COMMAND, delay_s),
                "delay {delay_s} s: {line:?}"
            );
        }
        assert_eq!(scheduled_delay_s(DEFAULT_REBOOT_COMMAND, 90), 120);
        assert_eq!(scheduled_delay_s(DEFAULT_REBOOT_COMMAND, 0), 0);
        assert_eq!(
            scheduled_delay_s("my-reboot --in \"$OUTPOST_REBOOT_DELAY_S\"", 90),
            90
        );
    }

    #[test]
    fn a_new_boot_id_means_the_host_rebooted_and_the_same_or_none_does_not() {
        assert!(rebooted("a", Some("b")));
        assert!(!rebooted("a", Some("a")));
        assert!(!rebooted("a", None));
    }

    #[test]
    fn a_missing_lock_file_is_not_held_and_an_unlocked_one_neither() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock-frontend");
        assert_eq!(lock_holder(&p).unwrap(), None);
        std::fs::write(&p, b"").unwrap();
        assert_eq!(lock_holder(&p).unwrap(), None);
        let cfg = RebootConfig {
            dpkg_lock: p,
            ..RebootConfig::default()
        };
        assert!(guard(&cfg).is_ok());
    }

    #[test]
    fn a_lock_held_by_another_process_refuses_the_reboot_naming_the_holder() {
        if std::process::Command::new("python3")
            .arg("-c")
            .arg("1")
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            eprintln!("skipped: python3 is not available to hold an fcntl lock");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock-frontend");
        std::fs::write(&p, b"").unwrap();
        let ready = dir.path().join("ready");
        // dpkg takes its lock with fcntl(F_SETLK), as lockf does here.
        let mut holder = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import fcntl,sys,time\nf=open(sys.argv[1],'r+')\nfcntl.lockf(f,fcntl.LOCK_EX)\nopen(sys.argv[2],'w').close()\ntime.sleep(30)",
            )
            .arg(&p)
            .arg(&ready)
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while !ready.exists() && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let cfg = RebootConfig {
            dpkg_lock: p.clone(),
            ..RebootConfig::default()
        };
        let got = lock_holder(&p).unwrap();
        let reason = guard(&cfg).unwrap_err();
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert_eq!(got, Some(holder.id() as i32));
        assert!(reason.contains("package install is running"), "{reason}");
        assert!(reason.contains(&holder.id().to_string()), "{reason}");
        assert_eq!(lock_holder(&p).unwrap(), None, "released with its holder");
    }

    #[test]
    fn the_boot_id_is_read_trimmed_and_an_empty_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boot_id");
        std::fs::write(&p, "abc-123\n").unwrap();
        let mut cfg = RebootConfig {
            boot_id_path: p.clone(),
            ..RebootConfig::default()
        };
        assert_eq!(boot_id(&cfg).unwrap(), "abc-123");
        std::fs::write(&p, "\n").unwrap();
        assert!(boot_id(&cfg).is_err());
        cfg.boot_id_path = dir.path().join("missing");
        assert!(boot_id(&cfg).is_err());
    }
}
