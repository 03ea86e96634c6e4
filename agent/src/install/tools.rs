//! The installer's contact with the host: runs apt, dpkg and scripts
//! (through the command executor's process runner, so a process tree is
//! killed as a whole on timeout), checks free space and dpkg's lock,
//! finds the root file system's type for a snapshot, and keeps `.deb`
//! files. Every path comes from [`InstallTools`], so tests point all of
//! it at an isolated root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_patch::install::{AuditFinding, KeptDeb, PreviousVersion, parse_dpkg_audit};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::InstallTools;
use crate::commands::exec::{self, End, Launch};

/// Bytes of one process's output kept in memory for parsing (the command
/// output streams all of it).
pub const MAX_CAPTURE_BYTES: usize = 4 * 1024 * 1024;

/// Where a process's output goes while it runs.
pub type OutputFn = std::sync::Arc<dyn Fn(Vec<u8>) + Send + Sync>;

/// A finished process: how it ended and (the tail of) what it printed.
#[derive(Debug, Clone)]
pub struct Ran {
    pub end: Result<End, String>,
    pub text: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        matches!(self.end, Ok(End::Exited(0)))
    }

    /// How it ended, in words (`exit 100`, `killed by signal 9`...).
    pub fn how(&self) -> String {
        match &self.end {
            Ok(End::Exited(c)) => format!("exit {c}"),
            Ok(End::Signaled(s)) => format!("killed by signal {s}"),
            Ok(End::TimedOut) => "timed out".into(),
            Ok(End::Cancelled) => "cancelled".into(),
            Err(e) => format!("could not start: {e}"),
        }
    }
}

/// How long a process may run, and its SIGTERM → SIGKILL grace.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub kill_grace: Duration,
}

/// Runs `program args` with `env`, streaming its output to `output` (if
/// any) and keeping the last [`MAX_CAPTURE_BYTES`].
pub async fn run(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    cwd: &Path,
    limits: Limits,
    cancel: CancellationToken,
    output: Option<&OutputFn>,
) -> Ran {
    let Limits {
        timeout,
        kill_grace,
    } = limits;
    let mut env = env.to_vec();
    env.push(("LC_ALL".into(), "C".into()));
    let launch = Launch {
        program: program.to_string(),
        args: args.to_vec(),
        env,
        cwd: cwd.display().to_string(),
        user: None,
        timeout,
        kill_grace,
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let out = output.cloned();
    let collect = tokio::spawn(async move {
        let mut text: Vec<u8> = Vec::new();
        while let Some(b) = rx.recv().await {
            text.extend_from_slice(&b);
            if text.len() > MAX_CAPTURE_BYTES {
                let cut = text.len() - MAX_CAPTURE_BYTES;
                text.drain(..cut);
            }
            if let Some(o) = &out {
                o(b);
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    let end = exec::run(launch, tx, cancel, |_| {}).await;
    let text = collect.await.unwrap_or_default();
    Ran { end, text }
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// `path` (absolute on the device) under the configured root.
pub fn under_root(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Bytes available to unprivileged users on the file system holding
/// `path` (or its nearest existing ancestor).
pub fn available_bytes(path: &Path) -> Result<u64, String> {
    let mut p = path;
    loop {
        if p.exists() {
            break;
        }
        p = p
            .parent()
            .ok_or_else(|| format!("{}: no existing ancestor", path.display()))?;
    }
    let s = rustix::fs::statvfs(p).map_err(|e| format!("statvfs {}: {e}", p.display()))?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Why dpkg's lock is not free, naming its holder, or `None`.
pub fn lock_held(lock: &Path) -> Option<String> {
    match crate::commands::reboot::lock_holder(lock) {
        Ok(None) => None,
        Ok(Some(pid)) => {
            let comm = (pid > 0)
                .then(|| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
                .flatten()
                .map(|c| c.trim().to_string());
            Some(format!(
                "the dpkg lock {} is held{}{}: another package operation is running",
                lock.display(),
                if pid > 0 {
                    format!(" by pid {pid}")
                } else {
                    String::new()
                },
                comm.map(|c| format!(" ({c})")).unwrap_or_default()
            ))
        }
        Err(e) => Some(format!(
            "cannot tell whether the dpkg lock {} is free: {e}",
            lock.display()
        )),
    }
}

/// `dpkg --audit`'s findings (an unrunnable dpkg is an error).
pub async fn audit(
    tools: &InstallTools,
    kill_grace: Duration,
) -> Result<Vec<AuditFinding>, String> {
    let mut args = tools.dpkg_extra_args.clone();
    args.push("--audit".into());
    let r = run(
        &tools.dpkg.display().to_string(),
        &args,
        &[],
        Path::new("/"),
        Limits {
            timeout: Duration::from_secs(120),
            kill_grace,
        },
        CancellationToken::new(),
        None,
    )
    .await;
    if let Err(e) = &r.end {
        return Err(format!("dpkg --audit: {e}"));
    }
    Ok(parse_dpkg_audit(&r.text))
}

/// `dpkg --configure --pending`: finishes configuring what a failed
/// transaction left unpacked (apt's advice after a failure, limited to
/// the pending packages). Returns dpkg's output.
pub async fn configure_pending(
    tools: &InstallTools,
    kill_grace: Duration,
) -> Result<String, String> {
    let mut args = tools.dpkg_extra_args.clone();
    args.extend(["--configure".to_string(), "--pending".to_string()]);
    let env = [("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string())];
    let r = run(
        &tools.dpkg.display().to_string(),
        &args,
        &env,
        Path::new("/"),
        Limits {
            timeout: tools.apt_timeout,
            kill_grace,
        },
        CancellationToken::new(),
        None,
    )
    .await;
    match &r.end {
        Err(e) => Err(format!("dpkg --configure --pending: {e}")),
        Ok(_) if !r.ok() => Err(format!(
            "dpkg --configure --pending failed: {}",
            r.text.trim()
        )),
        Ok(_) => Ok(r.text),
    }
}

/// One line per finding (`pkg: problem; ...`).
pub fn audit_line(findings: &[AuditFinding]) -> String {
    findings
        .iter()
        .map(|f| format!("{}: {}", f.package, f.problem))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>())
}

/// The root file system's type and source (from `/proc/self/mounts`: the
/// longest mount point containing `root`).
pub fn root_fs(mounts: &str, root: &Path) -> Option<(String, String, String)> {
    let mut best: Option<(usize, String, String, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let mp = f[1].replace("\\040", " ");
        if root.starts_with(&mp) && best.as_ref().is_none_or(|b| mp.len() >= b.0) {
            best = Some((mp.len(), f[2].to_string(), f[0].to_string(), mp));
        }
    }
    best.map(|(_, fs, src, mp)| (fs, src, mp))
}

/// Takes a snapshot of the root file system before the install: its name
/// (`btrfs:/.snapshots/outpost-ID`, `zfs:pool/root@outpost-ID`), or why
/// none was taken (`not available: ...`).
pub async fn snapshot(
    tools: &InstallTools,
    command: &str,
    kill_grace: Duration,
    output: &OutputFn,
) -> Result<String, String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let Some((fs, source, mount)) = root_fs(&mounts, &tools.root) else {
        return Err("not available: the root file system is not in /proc/self/mounts".into());
    };
    let name = format!("outpost-{}", &command[..command.len().min(16)]);
    let (program, args, label) = match fs.as_str() {
        "btrfs" => {
            let dir = Path::new(&mount).join(".snapshots");
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("failed: creating {}: {e}", dir.display()))?;
            let target = dir.join(&name).display().to_string();
            (
                tools.btrfs.display().to_string(),
                vec![
                    "subvolume".into(),
                    "snapshot".into(),
                    "-r".into(),
                    mount.clone(),
                    target.clone(),
                ],
                format!("btrfs:{target}"),
            )
        }
        "zfs" => {
            let snap = format!("{source}@{name}");
            (
                tools.zfs.display().to_string(),
                vec!["snapshot".into(), snap.clone()],
                format!("zfs:{snap}"),
            )
        }
        other => {
            return Err(format!(
                "not available: the root file system is {other} (snapshots need btrfs or ZFS; LVM thin is not supported yet)"
            ));
        }
    };
    let r = run(
        &program,
        &args,
        &[],
        Path::new("/"),
        Limits {
            timeout: Duration::from_secs(300),
            kill_grace,
        },
        CancellationToken::new(),
        Some(output),
    )
    .await;
    if r.ok() {
        Ok(label)
    } else {
        Err(format!("failed: {program} {}: {}", args.join(" "), r.how()))
    }
}

/// A `.deb` file name for a kept version (`:` of an epoch escaped).
fn kept_name(p: &PreviousVersion, version: &str) -> String {
    format!("{}_{}_{}.deb", p.name, version.replace(':', "%3a"), p.arch)
}

/// Keeps the `.deb` of a version about to be replaced: downloaded with
/// `apt-get download` (through the proxy), else rebuilt from the
/// installed files with `dpkg-repack`. Its SHA-256 is recorded.
pub async fn keep_deb(
    tools: &InstallTools,
    debs: &Path,
    p: &PreviousVersion,
    proxy: Option<&str>,
    kill_grace: Duration,
    output: &OutputFn,
) -> Result<KeptDeb, String> {
    let version = p
        .version
        .clone()
        .ok_or_else(|| format!("{}: not installed before", p.name))?;
    let work = debs.join(format!(".work-{}-{}", p.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let mut args = tools.apt_args();
    if let Some(px) = proxy {
        args.push("-o".into());
        args.push(format!("Acquire::http::Proxy={px}"));
    }
    args.push("download".into());
    args.push(format!("{}:{}={}", p.name, p.arch, version));
    let timeout = Duration::from_secs(600);
    let r = run(
        &tools.apt_get.display().to_string(),
        &args,
        &[],
        &work,
        Limits {
            timeout,
            kill_grace,
        },
        CancellationToken::new(),
        Some(output),
    )
    .await;
    let mut how = format!("apt-get download: {}", r.how());
    if !r.ok() || find_deb(&work).is_none() {
        // Not in the index any more (or no uplink): rebuild it.
        let mut args = tools.dpkg_repack_args.clone();
        args.push(p.name.clone());
        let r2 = run(
            &tools.dpkg_repack.display().to_string(),
            &args,
            &[],
            &work,
            Limits {
                timeout,
                kill_grace,
            },
            CancellationToken::new(),
            Some(output),
        )
        .await;
        how = format!("{how}; dpkg-repack: {}", r2.how());
    }
    let Some(found) = find_deb(&work) else {
        let _ = std::fs::remove_dir_all(&work);
        return Err(format!("{}={version}: no .deb kept ({how})", p.name));
    };
    let dest = debs.join(kept_name(p, &version));
    std::fs::rename(&found, &dest).map_err(|e| format!("keeping {}: {e}", dest.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    let sha256 = sha256_file(&dest)?;
    Ok(KeptDeb {
        name: p.name.clone(),
        arch: p.arch.clone(),
        version,
        path: dest.display().to_string(),
        sha256,
    })
}

fn find_deb(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_file_system_is_the_longest_mount_point_holding_the_root() {
        let mounts =
            "/dev/vda / ext4 rw 0 0\n/dev/vdb /srv btrfs rw 0 0\npool/srv/x /srv/x zfs rw 0 0\n";
        assert_eq!(
            root_fs(mounts, Path::new("/")).unwrap(),
            ("ext4".into(), "/dev/vda".into(), "/".into())
        );
        assert_eq!(root_fs(mounts, Path::new("/srv/dev1")).unwrap().0, "btrfs");
        assert_eq!(
            root_fs(mounts, Path::new("/srv/x/root")).unwrap().1,
            "pool/srv/x"
        );
    }

    #[test]
    fn a_log_tail_is_cut_at_a_character_boundary() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("ab", 10), "ab");
    }
}
