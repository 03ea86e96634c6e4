//! Runs the package tools and reads the files a scan needs, then hands
//! their text to `outpost_patch::scan`'s parsers. Blocking: call it from
//! `spawn_blocking`.
//!
//! Tools run with `LC_ALL=C` (apt's simulation lines and dpkg's fields
//! are then the stable untranslated ones), a timeout, and a bound on the
//! output read.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outpost_patch::scan::{
    APT_SIMULATE_ARGS, DPKG_QUERY_FORMAT, IndexState, PackageManager, Problems, RPM_QUERY_FORMAT,
    Scan, apply_sizes, apt_cache_selectors, dpkg_reboot_state, parse_apt_cache_show,
    parse_apt_simulation, parse_dpkg_query, parse_os_release, parse_rpm_query, rpm_reboot_state,
};
use serde::{Deserialize, Serialize};

/// Largest tool output read (a host with 100,000 packages prints ~6 MB).
const MAX_TOOL_OUTPUT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest `os-release` / `reboot-required.pkgs` read.
const MAX_SMALL_FILE_BYTES: u64 = 1024 * 1024;

/// Where the package tools and files are (`[package_tools]` in
/// `agent.toml`). The defaults are a stock Debian/Ubuntu or RPM host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PackageTools {
    /// `auto` (dpkg when `dpkg_admindir/status` exists, else rpm when
    /// `rpm_dbpath` exists), `dpkg`, `rpm`, or `none` (no scan).
    pub manager: String,
    pub dpkg_query: PathBuf,
    /// dpkg's database directory (`--admindir`); apt's simulation reads
    /// `status` from it too.
    pub dpkg_admindir: PathBuf,
    pub apt_get: PathBuf,
    /// `apt-cache`, run once per scan with upgrades (`apt-cache show
    /// NAME:ARCH=VERSION ...`, the same options as the simulation) for
    /// the candidates' download sizes (the index's `Size:` field).
    pub apt_cache: PathBuf,
    /// Extra `apt-get` / `apt-cache` arguments before the simulation's (`-o Dir::Etc=...`).
    pub apt_extra_args: Vec<String>,
    /// apt's index directory: its newest file's time is when the indexes
    /// were last refreshed.
    pub apt_lists_dir: PathBuf,
    /// Run `apt-get -s` at all (an image without apt, or a test).
    pub apt_simulate: bool,
    /// Refresh apt's indexes (`apt-get update`) before the scans of the
    /// schedule (at start, every `package_scan_interval`, a full scan on
    /// request; not the scans after a database change), through
    /// `apt_proxy`. Needs root (the packaged agent runs as root). A failed
    /// refresh does not fail the scan: its installed packages and the
    /// upgrades of the old indexes are sent, the indexes marked stale
    /// with the reason.
    pub apt_update: bool,
    /// The HTTP proxy of the refresh: the site's LAN cache, so a site
    /// fetches each index once. Default (when `apt_update` is on): the
    /// appliance the agent enrolled with, port 3142 (`http://HOST:3142/`).
    /// `"direct"`: no proxy.
    pub apt_proxy: Option<String>,
    /// Where apt keeps its binary cache for the agent's simulations
    /// (`Dir::Cache::pkgcache`), when the host's is disabled or not
    /// writable (containers ship with `Dir::Cache::pkgcache ""`, which
    /// makes every simulation rebuild it: ~2 s instead of ~0.3 s).
    pub apt_pkgcache_dir: Option<PathBuf>,
    pub rpm: PathBuf,
    /// rpm's database directory (`--dbpath`).
    pub rpm_dbpath: PathBuf,
    pub os_release: PathBuf,
    /// Debian/Ubuntu's reboot flag; its `.pkgs` sibling lists the packages.
    pub reboot_required: PathBuf,
    /// The running kernel's release (what `uname -r` prints).
    pub kernel_release: PathBuf,
    /// Longest a tool may run before it is killed and the scan fails.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for PackageTools {
    fn default() -> Self {
        PackageTools {
            manager: "auto".into(),
            dpkg_query: "dpkg-query".into(),
            dpkg_admindir: "/var/lib/dpkg".into(),
            apt_get: "apt-get".into(),
            apt_cache: "apt-cache".into(),
            apt_extra_args: Vec::new(),
            apt_lists_dir: "/var/lib/apt/lists".into(),
            apt_simulate: true,
            apt_update: false,
            apt_proxy: None,
            apt_pkgcache_dir: None,
            rpm: "rpm".into(),
            rpm_dbpath: "/var/lib/rpm".into(),
            os_release: "/etc/os-release".into(),
            reboot_required: "/var/run/reboot-required".into(),
            kernel_release: "/proc/sys/kernel/osrelease".into(),
            timeout: Duration::from_secs(120),
        }
    }
}

impl PackageTools {
    /// The package manager to scan, `None` when there is none (or
    /// `manager = "none"`).
    pub fn manager(&self) -> Result<Option<PackageManager>, CollectError> {
        match self.manager.as_str() {
            "dpkg" => Ok(Some(PackageManager::Dpkg)),
            "rpm" => Ok(Some(PackageManager::Rpm)),
            "none" => Ok(None),
            "auto" => {
                if self.dpkg_admindir.join("status").is_file() {
                    Ok(Some(PackageManager::Dpkg))
                } else if self.rpm_dbpath.is_dir() {
                    Ok(Some(PackageManager::Rpm))
                } else {
                    Ok(None)
                }
            }
            other => Err(CollectError::Config(format!(
                "package_tools.manager = {other:?}: expected auto, dpkg, rpm or none"
            ))),
        }
    }

    /// The file whose change means the package database changed.
    fn db_file(&self, manager: PackageManager) -> PathBuf {
        match manager {
            PackageManager::Dpkg => self.dpkg_admindir.join("status"),
            PackageManager::Rpm => self.rpm_dbpath.clone(),
        }
    }

    /// dpkg is in the middle of a transaction: its journal
    /// (`updates/`) holds entries. Readable without root, unlike the lock.
    fn dpkg_busy(&self) -> bool {
        std::fs::read_dir(self.dpkg_admindir.join("updates"))
            .map(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name() != "tmp.i")))
            .unwrap_or(false)
    }
}

/// dpkg's frontend lock is held: an install (apt, dpkg, unattended-upgrades)
/// is changing the database, and a scan now could read it between two
/// states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHeld {
    pub path: PathBuf,
    /// The holder's pid, when the kernel tells (fcntl locks).
    pub pid: Option<i32>,
}

impl std::fmt::Display for LockHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dpkg's lock {} is held", self.path.display())?;
        match self.pid {
            Some(p) => write!(f, " by pid {p}"),
            None => Ok(()),
        }
    }
}

/// Probes dpkg's frontend lock (`ADMINDIR/lock-frontend`) the way apt
/// would meet it, without holding it: an fcntl write-lock query
/// (`F_GETLK`: apt and dpkg lock with fcntl) and a non-blocking shared
/// `flock` taken and dropped at once (a holder using flock(2), such as
/// `flock(1)`). `None` when free, when the file does not exist, or when it
/// cannot be opened (no root: the journal check still applies).
pub fn dpkg_lock_held(tools: &PackageTools) -> Option<LockHeld> {
    let path = tools.dpkg_admindir.join("lock-frontend");
    let held = |pid: Option<i32>| LockHeld {
        path: path.clone(),
        pid,
    };
    match crate::commands::reboot::lock_holder(&path) {
        Ok(Some(pid)) => return Some(held((pid > 0).then_some(pid))),
        Ok(None) => {}
        Err(_) => return None,
    }
    let f = std::fs::File::open(&path).ok()?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared) {
        // Dropping the file releases the probe's shared lock.
        Ok(()) => None,
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Some(held(None)),
        Err(_) => None,
    }
}

/// Identity of the package database's state: modification time and size
/// of dpkg's `status` (or the newest file in rpm's database directory).
/// Reading it is one `stat` (or one directory listing): cheap enough to
/// poll every few seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbStamp {
    pub mtime_ns: u128,
    pub size: u64,
}

fn mtime_ns(m: &std::fs::Metadata) -> u128 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The database's current stamp, `None` when it cannot be read.
pub fn db_stamp(tools: &PackageTools, manager: PackageManager) -> Option<DbStamp> {
    let path = tools.db_file(manager);
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_dir() {
        return Some(DbStamp {
            mtime_ns: mtime_ns(&meta),
            size: meta.len(),
        });
    }
    let mut stamp = DbStamp {
        mtime_ns: mtime_ns(&meta),
        size: 0,
    };
    for e in std::fs::read_dir(&path).ok()?.flatten() {
        if let Ok(m) = e.metadata() {
            stamp.mtime_ns = stamp.mtime_ns.max(mtime_ns(&m));
            stamp.size = stamp.size.wrapping_add(m.len());
        }
    }
    Some(stamp)
}

/// Why a scan could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("{0}")]
    Config(String),
    #[error("no package manager found (no {0}/status, no rpm database): nothing to scan")]
    NoPackageManager(String),
    #[error("running {tool}: {message}")]
    Tool { tool: String, message: String },
}

/// A scan and how it went.
#[derive(Debug, Clone)]
pub struct Collected {
    pub scan: Scan,
    /// The database's stamp read before the tools ran.
    pub stamp: Option<DbStamp>,
    /// dpkg was in the middle of a transaction: the scan may be between
    /// two states (the caller retries, then reports it).
    pub busy: bool,
    /// Time spent waiting for the tools (their own CPU and I/O).
    pub tools_elapsed: Duration,
    /// Everything else: reading files, parsing, building the scan.
    pub own_elapsed: Duration,
}

/// The LAN cache of the appliance at `appliance` (`HOST:PORT` as the
/// agent enrolled): `http://HOST:3142/`.
pub fn default_apt_proxy(appliance: &str) -> Option<String> {
    let host = match appliance.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        _ => appliance,
    };
    (!host.is_empty()).then(|| format!("http://{host}:{APPLIANCE_CACHE_PORT}/"))
}

/// The appliance's patch cache port (`outpost serve --cache-listen`).
pub const APPLIANCE_CACHE_PORT: u16 = 3142;

/// The `apt-get update` of a refresh through the configured proxy, and
/// how it goes ("through PROXY", "directly") for the error.
fn refresh_command(tools: &PackageTools) -> (Command, String) {
    let mut a = Command::new(&tools.apt_get);
    let via = match tools.apt_proxy.as_deref() {
        // apt's own configuration (its proxy, if any) applies.
        Some("direct") | None => "directly".to_string(),
        Some(p) => {
            a.arg("-o").arg(format!("Acquire::http::Proxy={p}"));
            format!("through {p}")
        }
    };
    // apt-get update exits 0 when an index cannot be fetched (a warning
    // only, "old ones used instead"): an unreachable cache would never
    // show as stale. `Error-Mode=any` (apt >= 2.1; older apt ignores the
    // key) makes any failed fetch exit 100.
    a.args(["-o", "APT::Update::Error-Mode=any"]);
    a.args(&tools.apt_extra_args).args(["-q", "update"]);
    (a, via)
}

/// Takes a scan of this host.
pub fn collect(tools: &PackageTools, now_ms: u64) -> Result<Collected, CollectError> {
    collect_with(tools, now_ms, false)
}

/// Takes a scan of this host, refreshing apt's indexes first when
/// `refresh` and [`PackageTools::apt_update`] (dpkg hosts).
pub fn collect_with(
    tools: &PackageTools,
    now_ms: u64,
    refresh: bool,
) -> Result<Collected, CollectError> {
    let started = Instant::now();
    let manager = tools
        .manager()?
        .ok_or_else(|| CollectError::NoPackageManager(tools.dpkg_admindir.display().to_string()))?;
    let stamp = db_stamp(tools, manager);
    let os = parse_os_release(&read_small(&tools.os_release).unwrap_or_default());
    let kernel = read_small(&tools.kernel_release);
    let mut tools_elapsed = Duration::ZERO;
    let mut timed = |cmd: Command, name: &str| {
        let t = Instant::now();
        let r = run_tool(cmd, name, tools.timeout);
        tools_elapsed += t.elapsed();
        r
    };
    let (scan, busy) = match manager {
        PackageManager::Dpkg => {
            let busy = tools.dpkg_busy();
            let mut q = Command::new(&tools.dpkg_query);
            q.arg(format!("--admindir={}", tools.dpkg_admindir.display()))
                .arg("-W")
                .arg("-f")
                .arg(DPKG_QUERY_FORMAT);
            let text = timed(q, "dpkg-query")?;
            let parsed = parse_dpkg_query(&text);
            let mut scan = Scan::new_dpkg(now_ms, os);
            scan.dpkg = parsed.packages;
            scan.problems = parsed.problems;
            let refresh_error = if refresh && tools.apt_update {
                let (cmd, via) = refresh_command(tools);
                timed(cmd, "apt-get update")
                    .err()
                    .map(|e| format!("refreshing apt's indexes {via} failed ({e})"))
            } else {
                None
            };
            if tools.apt_simulate {
                let mut a = Command::new(&tools.apt_get);
                a.args(apt_options(tools)).args(APT_SIMULATE_ARGS);
                match timed(a, "apt-get") {
                    Ok(text) => {
                        let plan = parse_apt_simulation(&text);
                        // Upgrades of installed packages only: a package
                        // newly pulled in is not a missing patch.
                        scan.upgrades = plan.upgrades;
                        scan.problems.extend(plan.problems);
                        // Download sizes from the same indexes: one
                        // `apt-cache show` per 1,000 upgrades.
                        let selectors = apt_cache_selectors(&scan.upgrades);
                        let mut entries = Vec::new();
                        for chunk in selectors.chunks(1000) {
                            let mut c = Command::new(&tools.apt_cache);
                            c.args(apt_options(tools)).arg("show").args(chunk);
                            match timed(c, "apt-cache") {
                                Ok(text) => {
                                    let (e, problems) = parse_apt_cache_show(&text);
                                    entries.extend(e);
                                    scan.problems.extend(problems);
                                }
                                Err(e) => {
                                    scan.problems.push(
                                        "apt-cache",
                                        0,
                                        format!("download sizes unknown: {e}"),
                                    );
                                    break;
                                }
                            }
                        }
                        apply_sizes(&mut scan.upgrades, &entries);
                        scan.indexes = IndexState {
                            refreshed_at_ms: lists_refreshed_ms(&tools.apt_lists_dir),
                            error: None,
                        };
                    }
                    Err(e) => {
                        scan.indexes = IndexState {
                            refreshed_at_ms: lists_refreshed_ms(&tools.apt_lists_dir),
                            error: Some(format!("{e}: upgrades unknown")),
                        };
                    }
                }
            } else {
                scan.indexes.refreshed_at_ms = lists_refreshed_ms(&tools.apt_lists_dir);
            }
            if let Some(e) = refresh_error {
                // The upgrades are those of the old indexes: stale.
                let age = scan.indexes.refreshed_at_ms.map_or_else(
                    || "never refreshed".to_string(),
                    |t| format!("last refreshed at {t} (Unix ms)"),
                );
                let e = format!("{e}; indexes {age}");
                scan.indexes.error = Some(match scan.indexes.error.take() {
                    Some(prev) => format!("{e}; {prev}"),
                    None => e,
                });
            }
            let pkgs_file = {
                let mut p = tools.reboot_required.clone().into_os_string();
                p.push(".pkgs");
                read_small(Path::new(&p))
            };
            scan.reboot = dpkg_reboot_state(
                tools.reboot_required.exists(),
                pkgs_file.as_deref(),
                kernel.as_deref(),
                &scan.dpkg,
            );
            (scan, busy)
        }
        PackageManager::Rpm => {
            let mut q = Command::new(&tools.rpm);
            q.arg("--dbpath")
                .arg(&tools.rpm_dbpath)
                .arg("-qa")
                .arg("--qf")
                .arg(RPM_QUERY_FORMAT);
            let text = timed(q, "rpm")?;
            let parsed = parse_rpm_query(&text);
            let mut scan = Scan::new_rpm(now_ms, os);
            scan.rpm = parsed.packages;
            scan.problems = parsed.problems;
            scan.reboot = rpm_reboot_state(kernel.as_deref(), &scan.rpm);
            (scan, false)
        }
    };
    let mut scan = scan;
    scan.normalize();
    let total = started.elapsed();
    Ok(Collected {
        scan,
        stamp,
        busy,
        tools_elapsed,
        own_elapsed: total.saturating_sub(tools_elapsed),
    })
}

/// The options apt-get's simulation and apt-cache share: dpkg's status
/// file, the agent's own binary cache when configured, the extra args.
fn apt_options(tools: &PackageTools) -> Vec<String> {
    let mut o = vec![
        "-o".to_string(),
        format!(
            "Dir::State::status={}",
            tools.dpkg_admindir.join("status").display()
        ),
    ];
    if let Some(dir) = &tools.apt_pkgcache_dir {
        o.extend([
            "-o".to_string(),
            format!(
                "Dir::Cache::pkgcache={}",
                dir.join("pkgcache.bin").display()
            ),
            "-o".to_string(),
            format!(
                "Dir::Cache::srcpkgcache={}",
                dir.join("srcpkgcache.bin").display()
            ),
        ]);
    }
    o.extend(tools.apt_extra_args.iter().cloned());
    o
}

/// Notes in the scan that dpkg stayed busy through every attempt.
pub fn note_busy(problems: &mut Problems, attempts: u32) {
    problems.push(
        "dpkg",
        0,
        format!(
            "dpkg was in the middle of a transaction through {attempts} attempts: \
             the package list may be between two states"
        ),
    );
}

fn read_small(path: &Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    f.take(MAX_SMALL_FILE_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// The newest modification time of apt's index files (Unix ms).
fn lists_refreshed_ms(dir: &Path) -> Option<u64> {
    let mut newest: Option<SystemTime> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let name = e.file_name();
        if name == "lock" || name == "partial" || name == "auxfiles" {
            continue;
        }
        if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
            newest = Some(newest.map_or(t, |n| n.max(t)));
        }
    }
    newest
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
}

/// Runs a tool, returns its stdout; a non-zero exit, a timeout or an
/// output beyond the bound is an error with the tool's stderr.
fn run_tool(mut cmd: Command, name: &str, timeout: Duration) -> Result<String, CollectError> {
    let err = |message: String| CollectError::Tool {
        tool: name.to_string(),
        message,
    };
    cmd.env("LC_ALL", "C")
        .env("LANG", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| err(format!("cannot start: {e}")))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout {
            let _ = s.take(MAX_TOOL_OUTPUT_BYTES + 1).read_to_end(&mut buf);
        }
        buf
    });
    let errs = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr {
            let _ = s.take(64 * 1024).read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err(format!("no answer within {timeout:?}: killed")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(err(format!("waiting: {e}"))),
        }
    };
    let out = out.join().unwrap_or_default();
    let errs = errs.join().unwrap_or_default();
    if !status.success() {
        let text = String::from_utf8_lossy(&errs);
        let text = text.trim();
        return Err(err(format!(
            "{status}{}{}",
            if text.is_empty() { "" } else { ": " },
            text.lines().take(5).collect::<Vec<_>>().join(" / ")
        )));
    }
    if out.len() as u64 > MAX_TOOL_OUTPUT_BYTES {
        return Err(err(format!(
            "output larger than {MAX_TOOL_OUTPUT_BYTES} bytes"
        )));
    }
    String::from_utf8(out).map_err(|e| err(format!("output is not UTF-8: {e}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A throwaway dpkg database with the given `status` paragraphs.
    pub(crate) fn admindir(status: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("status"), status).unwrap();
        std::fs::create_dir_all(d.path().join("updates")).unwrap();
        std::fs::create_dir_all(d.path().join("info")).unwrap();
        d
    }

    pub(crate) const STATUS: &str = "Package: hello\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.10-3\n\nPackage: libfoo1\nStatus: hold ok installed\nArchitecture: amd64\nSource: foo (1.2-1)\nVersion: 1.2-1+b1\n\nPackage: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 0.1\n\n";

    pub(crate) fn tools(dir: &Path) -> PackageTools {
        PackageTools {
            manager: "auto".into(),
            dpkg_admindir: dir.to_path_buf(),
            apt_simulate: false,
            os_release: dir.join("os-release"),
            reboot_required: dir.join("reboot-required"),
            kernel_release: dir.join("osrelease"),
            apt_lists_dir: dir.join("lists"),
            ..PackageTools::default()
        }
    }

    pub(crate) fn have_dpkg() -> bool {
        Command::new("dpkg-query").arg("--version").output().is_ok()
    }

    #[test]
    fn a_scan_of_a_throwaway_dpkg_database_lists_its_installed_packages() {
        if !have_dpkg() {
            eprintln!("skipped: no dpkg-query");
            return;
        }
        let d = admindir(STATUS);
        std::fs::write(
            d.path().join("os-release"),
            "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
        )
        .unwrap();
        std::fs::write(d.path().join("reboot-required"), "").unwrap();
        std::fs::write(d.path().join("reboot-required.pkgs"), "libfoo1\n").unwrap();
        let c = collect(&tools(d.path()), 1234).unwrap();
        let s = &c.scan;
        assert_eq!(s.scanned_at_ms, 1234);
        assert_eq!(s.manager, PackageManager::Dpkg);
        let names: Vec<&str> = s.dpkg.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["hello", "libfoo1"],
            "config-files only is not installed"
        );
        let foo = &s.dpkg[1];
        assert_eq!(foo.source_name(), "foo");
        assert_eq!(foo.source_version().as_str(), "1.2-1");
        assert!(foo.held);
        assert!(s.reboot.required);
        assert_eq!(s.reboot.packages, ["libfoo1"]);
        assert_eq!(s.os.codename.as_deref(), Some("bookworm"));
        assert!(!c.busy);
        assert!(c.stamp.is_some());
    }

    #[test]
    fn a_pending_dpkg_journal_marks_the_scan_busy() {
        if !have_dpkg() {
            return;
        }
        let d = admindir(STATUS);
        std::fs::write(d.path().join("updates").join("0000"), "Package: x\n").unwrap();
        let c = collect(&tools(d.path()), 1).unwrap();
        assert!(c.busy);
    }

    #[test]
    fn a_failing_apt_marks_the_indexes_stale_and_keeps_the_installed_packages() {
        if !have_dpkg() {
            return;
        }
        let d = admindir(STATUS);
        let t = PackageTools {
            apt_simulate: true,
            apt_get: d.path().join("no-such-apt-get"),
            ..tools(d.path())
        };
        let c = collect(&t, 1).unwrap();
        assert_eq!(c.scan.dpkg.len(), 2);
        let e = c.scan.indexes.error.as_deref().unwrap();
        assert!(e.contains("apt-get") && e.contains("cannot start"), "{e}");
    }

    /// A fake `apt-get` that records its arguments in `args.log` and
    /// fails `update` when `fail_update`.
    fn fake_apt(dir: &Path, fail_update: bool) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let log = dir.join("args.log");
        let p = dir.join("apt-get");
        let fail = if fail_update {
            "echo 'E: Could not open lock file' >&2; exit 100"
        } else {
            "exit 0"
        };
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\ncase \"$*\" in *update*) {fail};; esac\nexit 0\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// A scheduled scan refreshes the indexes through the site's cache
    /// before the simulation; a scan after a database change does not.
    #[test]
    fn a_scheduled_scan_refreshes_apts_indexes_through_the_sites_cache_first() {
        if !have_dpkg() {
            return;
        }
        let d = admindir(STATUS);
        let t = PackageTools {
            apt_simulate: true,
            apt_update: true,
            apt_proxy: default_apt_proxy("10.0.0.2:4433"),
            apt_get: fake_apt(d.path(), false),
            ..tools(d.path())
        };
        let c = collect_with(&t, 1, true).unwrap();
        assert_eq!(c.scan.indexes.error, None);
        let log = std::fs::read_to_string(d.path().join("args.log")).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(
            lines[0].contains("Acquire::http::Proxy=http://10.0.0.2:3142/")
                && lines[0].contains("-o APT::Update::Error-Mode=any")
                && lines[0].ends_with("-q update"),
            "{log}"
        );
        assert!(!lines[1].contains("update"), "then the simulation: {log}");
        std::fs::remove_file(d.path().join("args.log")).unwrap();
        collect_with(&t, 2, false).unwrap();
        let log = std::fs::read_to_string(d.path().join("args.log")).unwrap();
        assert_eq!(log.lines().count(), 1, "no refresh: {log}");
    }

    /// A refresh that fails (no root, cache unreachable) keeps the scan:
    /// installed packages and the old indexes' upgrades, the indexes
    /// marked stale with the reason and the proxy.
    #[test]
    fn a_failed_index_refresh_is_reported_stale_and_the_scan_still_goes() {
        if !have_dpkg() {
            return;
        }
        let d = admindir(STATUS);
        let t = PackageTools {
            apt_simulate: true,
            apt_update: true,
            apt_proxy: Some("http://cache:3142/".into()),
            apt_get: fake_apt(d.path(), true),
            ..tools(d.path())
        };
        let c = collect_with(&t, 1, true).unwrap();
        assert_eq!(c.scan.dpkg.len(), 2);
        let e = c.scan.indexes.error.as_deref().unwrap();
        assert!(
            e.contains("through http://cache:3142/") && e.contains("Could not open lock file"),
            "{e}"
        );
        assert!(e.contains("never refreshed"), "{e}");
    }

    /// A throwaway Debian root with real dpkg and apt: `hello-outpost`
    /// 1.0-1 and `big-outpost` 1.0-1 installed, 1.1-1 of both in a local
    /// repository (`file:`), apt's indexes updated. `None` (skipped) where
    /// dpkg-deb, dpkg-scanpackages or apt-get are missing.
    pub(crate) struct AptRoot {
        pub(crate) _tmp: tempfile::TempDir,
        pub(crate) work: PathBuf,
        pub(crate) root: PathBuf,
    }

    const APT_ROOT_SETUP: &str = r#"
set -eu
W=$1; R=$W/root; mkdir -p "$W/repo"
mk() { # NAME VERSION PAYLOAD-KIB
  d=$(mktemp -d); mkdir -p "$d/DEBIAN" "$d/usr/share/$1"
  head -c $(($3 * 1024)) /dev/urandom > "$d/usr/share/$1/data"
  printf 'Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: Outpost tests <t@outpost.invalid>\nDescription: test\n x\n' "$1" "$2" > "$d/DEBIAN/control"
  dpkg-deb --root-owner-group -Zgzip -b "$d" "$W/repo/${1}_${2}_all.deb" >/dev/null; rm -rf "$d"
}
mk hello-outpost 1.0-1 1; mk hello-outpost 1.1-1 2
mk big-outpost 1.0-1 1; mk big-outpost 1.1-1 300
(cd "$W/repo" && dpkg-scanpackages -m . 2>/dev/null > Packages)
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/log/apt" \
  "$R/etc/apt/sources.list.d" "$R/etc/apt/preferences.d" "$R/etc/apt/apt.conf.d" \
  "$R/var/lib/apt/lists/partial" "$R/var/cache/apt/archives/partial"
touch "$R/var/lib/dpkg/status"
echo "deb [trusted=yes] file:$W/repo ./" > "$R/etc/apt/sources.list"
dpkg --root="$R" --force-script-chrootless --force-not-root --log="$R/var/log/dpkg.log" \
  -i "$W/repo/hello-outpost_1.0-1_all.deb" "$W/repo/big-outpost_1.0-1_all.deb" >/dev/null
"#;

    impl AptRoot {
        pub(crate) fn new() -> Option<AptRoot> {
            let have = [
                "dpkg-deb",
                "dpkg-scanpackages",
                "apt-get",
                "apt-cache",
                "dpkg",
            ]
            .iter()
            .all(|t| {
                Command::new(t)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
            if !have {
                eprintln!("skipped: dpkg-deb, dpkg-scanpackages, apt-get or apt-cache missing");
                return None;
            }
            let tmp = tempfile::tempdir().unwrap();
            let work = tmp.path().to_path_buf();
            let out = Command::new("sh")
                .arg("-c")
                .arg(APT_ROOT_SETUP)
                .arg("sh")
                .arg(&work)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let root = work.join("root");
            let r = AptRoot {
                _tmp: tmp,
                work,
                root,
            };
            let out = Command::new("apt-get")
                .args(r.apt_args())
                .arg("update")
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            Some(r)
        }

        /// apt's options for this root (never the host's database).
        pub(crate) fn apt_args(&self) -> Vec<String> {
            let r = self.root.display();
            [
                format!("Dir={r}"),
                format!("Dir::State::status={r}/var/lib/dpkg/status"),
                format!("Dir::Cache={r}/var/cache/apt"),
                format!("Dir::Etc::Parts={r}/etc/apt/apt.conf.d"),
                "APT::Sandbox::User=root".into(),
            ]
            .into_iter()
            .flat_map(|o| ["-o".to_string(), o])
            .collect()
        }

        pub(crate) fn tools(&self) -> PackageTools {
            PackageTools {
                manager: "dpkg".into(),
                dpkg_admindir: self.root.join("var/lib/dpkg"),
                apt_simulate: true,
                apt_extra_args: self.apt_args(),
                apt_lists_dir: self.root.join("var/lib/apt/lists"),
                os_release: self.work.join("no-os-release"),
                reboot_required: self.root.join("var/run/reboot-required"),
                kernel_release: self.work.join("no-osrelease"),
                ..PackageTools::default()
            }
        }
    }

    /// The sizes come from apt's own index entry of each exact candidate:
    /// they equal the candidate .deb files' sizes in the repository.
    #[test]
    fn every_upgrade_carries_its_candidates_download_size_from_apts_index() {
        let Some(r) = AptRoot::new() else { return };
        let c = collect(&r.tools(), 1).unwrap();
        assert!(c.scan.problems.is_empty(), "{:?}", c.scan.problems);
        assert_eq!(c.scan.indexes.error, None);
        let got: Vec<(&str, &str, Option<u64>)> = c
            .scan
            .upgrades
            .iter()
            .map(|u| (u.name.as_str(), u.to.as_str(), u.size_bytes))
            .collect();
        let size = |f: &str| {
            std::fs::metadata(r.work.join("repo").join(f))
                .unwrap()
                .len()
        };
        assert_eq!(
            got,
            [
                (
                    "big-outpost",
                    "1.1-1",
                    Some(size("big-outpost_1.1-1_all.deb"))
                ),
                (
                    "hello-outpost",
                    "1.1-1",
                    Some(size("hello-outpost_1.1-1_all.deb"))
                ),
            ]
        );
        assert!(got[0].2.unwrap() > 300 * 1024, "{got:?}");
    }

    /// apt-cache failing leaves the sizes unknown and says so; the scan
    /// still goes with its upgrades.
    #[test]
    fn a_failing_apt_cache_leaves_the_sizes_unknown_and_keeps_the_upgrades() {
        let Some(r) = AptRoot::new() else { return };
        let t = PackageTools {
            apt_cache: r.work.join("no-such-apt-cache"),
            ..r.tools()
        };
        let c = collect(&t, 1).unwrap();
        assert_eq!(c.scan.upgrades.len(), 2);
        assert!(c.scan.upgrades.iter().all(|u| u.size_bytes.is_none()));
        let p = &c.scan.problems.first[0];
        assert!(
            p.tool == "apt-cache" && p.reason.contains("download sizes unknown"),
            "{p:?}"
        );
    }

    #[test]
    fn the_default_proxy_is_the_enrolled_appliances_cache_port() {
        assert_eq!(
            default_apt_proxy("appliance.lan:4433").as_deref(),
            Some("http://appliance.lan:3142/")
        );
        assert_eq!(
            default_apt_proxy("[fd00::2]:4433").as_deref(),
            Some("http://[fd00::2]:3142/")
        );
        assert_eq!(
            default_apt_proxy("host").as_deref(),
            Some("http://host:3142/")
        );
        assert_eq!(default_apt_proxy(""), None);
    }

    #[test]
    fn a_tool_that_does_not_answer_is_killed_at_its_timeout() {
        let mut c = Command::new("sleep");
        c.arg("5");
        let t = Instant::now();
        let e = run_tool(c, "sleep", Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn no_package_database_is_a_clear_error_and_an_unknown_manager_too() {
        let d = tempfile::tempdir().unwrap();
        let mut t = tools(d.path());
        t.rpm_dbpath = d.path().join("no-rpm");
        let e = collect(&t, 1).unwrap_err();
        assert!(e.to_string().contains("no package manager"), "{e}");
        t.manager = "pacman".into();
        assert!(collect(&t, 1).unwrap_err().to_string().contains("pacman"));
    }

    #[test]
    fn the_database_stamp_moves_when_dpkg_status_changes() {
        let d = admindir(STATUS);
        let t = tools(d.path());
        let a = db_stamp(&t, PackageManager::Dpkg).unwrap();
        std::fs::write(d.path().join("status"), format!("{STATUS}\n")).unwrap();
        let b = db_stamp(&t, PackageManager::Dpkg).unwrap();
        assert_ne!(a, b);
    }
}
