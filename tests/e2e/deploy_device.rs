//! Patch deployment on the device side, end to end below the orchestrator:
//! real `.deb` files (`dpkg-deb`) in a signed apt repository (throwaway
//! `gpg` key) served by a local upstream HTTP server, the real appliance's
//! LAN cache as apt's proxy, and the agent's installer
//! (`outpost_agent::install`) running the real apt and dpkg into an
//! isolated root per simulated device.
//!
//! The command path (appliance → agent, the ledger, statuses back) is
//! proven by the agent's and the device link's own tests; queueing an
//! install in a running appliance needs the deployments API (issue 15,
//! the orchestrator's), so this module drives the installer directly and
//! the real cache supplies every package.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_agent::install::tools::OutputFn;
use outpost_agent::install::{InstallTools, PatchInstaller, StatusWriter};
use outpost_patch::install::BinaryTarget;
use outpost_patch::install::wire::{
    DeviceStatus, InstallRequest, Phase, REQUEST_FORMAT, RebootPolicy, RollbackRequest,
};
use outpost_proto::codec;
use outpost_proto::ids::CommandId;
use outpost_proto::messages::CommandOutcome;
use outpost_tests::{Appliance, scratch};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn rfc2822(epoch_s: u64) -> String {
    run_ok(Command::new("date").args([
        "-u",
        "-d",
        &format!("@{epoch_s}"),
        "+%a, %d %b %Y %H:%M:%S UTC",
    ]))
    .trim()
    .to_string()
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Builds the packages into `UP/debian/pool/main` and installs the first
/// versions into a device root (`scripts/…` in the manner of
/// `patch/tests/data/install/capture.sh`).
const BUILD: &str = r#"
set -eu
POOL=$1
mk() { # NAME VERSION [DEPENDS] [PREINST-EXIT]
  name=$1; ver=$2; dep=${3:-}; pre=${4:-}
  d=$(mktemp -d)
  mkdir -p "$d/DEBIAN" "$d/usr/share/$name" "$d/etc/$name"
  echo "$name $ver" > "$d/usr/share/$name/VERSION"
  echo "setting=$ver" > "$d/etc/$name/$name.conf"
  echo "/etc/$name/$name.conf" > "$d/DEBIAN/conffiles"
  { echo "Package: $name"; echo "Version: $ver"; echo "Architecture: all"
    echo "Maintainer: Outpost tests <tests@outpost.invalid>"
    [ -n "$dep" ] && echo "Depends: $dep"
    echo "Description: test package"; echo " for outpost deployment tests"; } > "$d/DEBIAN/control"
  [ -n "$pre" ] && printf '#!/bin/sh\necho "preinst of %s refuses"\nexit %s\n' "$name" "$pre" > "$d/DEBIAN/preinst" && chmod 755 "$d/DEBIAN/preinst"
  dpkg-deb --root-owner-group -Zgzip -b "$d" "$POOL/${name}_${ver}_all.deb" >/dev/null
  rm -rf "$d"
}
mkdir -p "$POOL"
mk hello-outpost 1.0-1
mk hello-outpost 1.1-1 "newdep-outpost (>= 1.0)"
mk newdep-outpost 1.0-1
mk broken-outpost 1.0-1
mk broken-outpost 1.1-1 "" 1
"#;

/// A signed repository `UP/debian` (suite `stable`, component `main`).
pub(crate) struct Repo {
    pub(crate) up: PathBuf,
    home: PathBuf,
    pub(crate) keyring: PathBuf,
    arch: String,
}

impl Repo {
    fn build(dir: &Path) -> Repo {
        Repo::build_with(dir, BUILD)
    }

    /// A repository whose pool `script` fills (its `$1`).
    pub(crate) fn build_with(dir: &Path, script: &str) -> Repo {
        let up = dir.join("upstream");
        let pool = up.join("debian/pool/main");
        run_ok(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg("sh")
                .arg(&pool),
        );
        let home = dir.join("gnupg");
        std::fs::create_dir_all(&home).unwrap();
        let mut perms = std::fs::metadata(&home).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
        std::fs::set_permissions(&home, perms).unwrap();
        run_ok(Command::new("gpg").arg("--homedir").arg(&home).args([
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            "Outpost Test deploy <deploy@outpost.invalid>",
            "ed25519",
            "sign",
            "0",
        ]));
        let key = Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--export"])
            .output()
            .unwrap();
        let keyring = dir.join("repo.gpg");
        std::fs::write(&keyring, key.stdout).unwrap();
        let arch = run_ok(Command::new("dpkg").arg("--print-architecture"))
            .trim()
            .to_string();
        let r = Repo {
            up,
            home,
            keyring,
            arch,
        };
        r.index();
        r
    }

    /// Packages (every version in the pool), Release and InRelease.
    pub(crate) fn index(&self) {
        let debian = self.up.join("debian");
        let packages = run_ok(
            Command::new("dpkg-scanpackages")
                .current_dir(&debian)
                .args(["-m", "pool/main"]),
        );
        let rel = format!("main/binary-{}/Packages", self.arch);
        let suite = debian.join("dists/stable");
        std::fs::create_dir_all(suite.join(format!("main/binary-{}", self.arch))).unwrap();
        std::fs::write(suite.join(&rel), &packages).unwrap();
        let date = now_s() - 60;
        let release = format!(
            "Origin: Outpost Test\nLabel: Outpost Test\nSuite: stable\nCodename: stable\nDate: {}\n\
             Valid-Until: {}\nArchitectures: {} all\nComponents: main\nDescription: deploy test\nSHA256:\n {} {} {rel}\n",
            rfc2822(date),
            rfc2822(date + 7 * 86_400),
            self.arch,
            hex::encode(sha2::Sha256::digest(packages.as_bytes())),
            packages.len(),
        );
        std::fs::write(suite.join("Release"), &release).unwrap();
        let _ = std::fs::remove_file(suite.join("InRelease"));
        run_ok(
            Command::new("gpg")
                .arg("--homedir")
                .arg(&self.home)
                .args([
                    "--batch",
                    "--yes",
                    "--digest-algo",
                    "SHA256",
                    "--clearsign",
                    "-o",
                ])
                .arg(suite.join("InRelease"))
                .arg(suite.join("Release")),
        );
    }

    pub(crate) fn deb(&self, name: &str, version: &str) -> PathBuf {
        self.up
            .join(format!("debian/pool/main/{name}_{version}_all.deb"))
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// A small HTTP/1.1 file server counting requests per path.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, u64>>>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub(crate) fn start(root: &Path) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s, root) = (hits.clone(), stop.clone(), root.to_path_buf());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (h, root) = (h.clone(), root.clone());
                std::thread::spawn(move || serve(conn, &root, &h));
            }
        });
        Upstream { addr, hits, stop }
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }

    pub(crate) fn hits(&self, path: &str) -> u64 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut conn: TcpStream, root: &Path, hits: &Mutex<HashMap<String, u64>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    *hits.lock().unwrap().entry(path.to_string()).or_default() += 1;
    let file = root.join(path.trim_start_matches('/'));
    let Ok(body) = std::fs::read(&file) else {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    // The file's own time: an index rewritten later is newer (apt and the
    // cache revalidate with If-Modified-Since).
    let modified = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let _ = conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: {}\r\nConnection: close\r\n\r\n",
            body.len(),
            http_date(modified)
        )
        .as_bytes(),
    );
    if method != "HEAD" {
        let _ = conn.write_all(&body);
    }
}

/// `Sun, 30 Nov 2026 00:20:33 GMT` (days to civil date: H. Hinnant's
/// algorithm).
fn http_date(epoch_s: u64) -> String {
    let days = (epoch_s / 86_400) as i64;
    let secs = epoch_s % 86_400;
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {name} {year} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[test]
fn http_dates_are_rfc_7231() {
    assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(http_date(1_796_000_000), rfc2822_gmt(1_796_000_000));
}

fn rfc2822_gmt(epoch_s: u64) -> String {
    run_ok(Command::new("date").args([
        "-u",
        "-d",
        &format!("@{epoch_s}"),
        "+%a, %d %b %Y %H:%M:%S GMT",
    ]))
    .trim()
    .to_string()
}

#[derive(Default)]
struct Statuses(Mutex<Vec<DeviceStatus>>);

impl StatusWriter for Statuses {
    fn write(&self, s: &DeviceStatus) -> Result<(), String> {
        self.0.lock().unwrap().push(s.clone());
        Ok(())
    }
}

/// One simulated device: an isolated dpkg/apt root and its installer.
struct Device {
    root: PathBuf,
    statuses: Arc<Statuses>,
    installer: PatchInstaller,
}

/// Makes `root` an empty dpkg/apt root (the directories dpkg and apt
/// expect, no package installed): one simulated device.
pub(crate) fn empty_dpkg_root(root: &Path) {
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/log/apt",
        "etc/apt/sources.list.d",
        "etc/apt/preferences.d",
        "etc/apt/apt.conf.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/run",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
}

impl Device {
    fn new(dir: &Path, name: &str, repo: &Repo, up: &Upstream) -> Device {
        let root = dir.join(name);
        empty_dpkg_root(&root);
        std::fs::write(
            root.join("etc/apt/sources.list"),
            format!(
                "deb [signed-by={}] http://{}/debian stable main\n",
                repo.keyring.display(),
                up.addr
            ),
        )
        .unwrap();
        let r = root.display().to_string();
        run_ok(
            Command::new("dpkg")
                .arg(format!("--root={r}"))
                .args(["--force-script-chrootless", "--force-not-root", "-i"])
                .arg(repo.deb("hello-outpost", "1.0-1"))
                .arg(repo.deb("broken-outpost", "1.0-1")),
        );
        let apt_extra_args = [
            format!("Dir={r}"),
            format!("Dir::State::status={r}/var/lib/dpkg/status"),
            format!("Dir::Log={r}/var/log/apt"),
            format!("Dir::Cache={r}/var/cache/apt"),
            format!("Dir::Etc::Parts={r}/etc/apt/apt.conf.d"),
            format!("DPkg::Options::=--root={r}"),
            "DPkg::Options::=--force-script-chrootless".into(),
            "DPkg::Options::=--force-not-root".into(),
            "APT::Sandbox::User=root".into(),
            "Acquire::Retries=0".into(),
            "Acquire::Languages=none".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        let tools = InstallTools {
            apt_extra_args,
            dpkg_extra_args: vec![
                format!("--root={r}"),
                "--force-script-chrootless".into(),
                "--force-not-root".into(),
            ],
            dpkg_repack: "/nonexistent/dpkg-repack".into(),
            root: root.clone(),
            ..InstallTools::default()
        };
        let scan = outpost_agent::scan::PackageTools {
            manager: "dpkg".into(),
            dpkg_admindir: root.join("var/lib/dpkg"),
            apt_simulate: false,
            os_release: root.join("etc/os-release"),
            reboot_required: root.join("var/run/reboot-required"),
            ..outpost_agent::scan::PackageTools::default()
        };
        let boot = dir.join(format!("{name}-boot_id"));
        std::fs::write(&boot, "boot-1\n").unwrap();
        let reboot = outpost_agent::commands::reboot::RebootConfig {
            command: "true".into(),
            dpkg_lock: root.join("var/lib/dpkg/lock-frontend"),
            boot_id_path: boot,
        };
        let statuses = Arc::new(Statuses::default());
        let installer = PatchInstaller::new(
            tools,
            scan,
            reboot,
            Duration::from_secs(1),
            dir.join(format!("{name}-state")),
            statuses.clone(),
        );
        Device {
            root,
            statuses,
            installer,
        }
    }

    fn version(&self, name: &str) -> Option<String> {
        let out = Command::new("dpkg-query")
            .arg(format!("--admindir={}/var/lib/dpkg", self.root.display()))
            .args(["-W", "-f=${Status}|${Version}", name])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        let (status, v) = s.split_once('|')?;
        status.ends_with(" installed").then(|| v.to_string())
    }

    fn of(&self, id: u8) -> Vec<DeviceStatus> {
        let c = CommandId([id; 16]).to_string();
        self.statuses
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.command == c)
            .cloned()
            .collect()
    }

    async fn install(&self, id: u8, target: (&str, &str), cache: SocketAddr) -> CommandOutcome {
        let req = InstallRequest {
            deployment: "dep-1".into(),
            attempt: 1,
            targets: vec![BinaryTarget {
                name: target.0.into(),
                arch: None,
                version: target.1.into(),
            }],
            proxy: Some(format!("http://{cache}")),
            reboot: RebootPolicy::Never,
            min_free_root_bytes: 1,
            keep_previous_debs: true,
            pre_script: None,
            post_script: None,
            snapshot: false,
        };
        let out: OutputFn = Arc::new(|_| {});
        self.installer
            .install(
                CommandId([id; 16]),
                REQUEST_FORMAT,
                &codec::encode_compressed(&req).unwrap(),
                out,
                CancellationToken::new(),
            )
            .await
    }
}

pub(crate) fn have_tools() -> bool {
    ["dpkg-deb", "dpkg-scanpackages", "apt-get", "gpg"]
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok())
}

fn start_appliance(root: &Path, up: &Upstream, keyring: &Path) -> (Appliance, SocketAddr) {
    let app_dir = root.join("appliance");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::write(
        app_dir.join("outpost.toml"),
        format!(
            "[cache]\nallow_hosts = [\"{}\"]\nallow_apt_sources = false\nkeyrings = [\"{}\"]\n",
            up.addr,
            keyring.display()
        ),
    )
    .unwrap();
    let app = Appliance::start(root);
    let addr = std::fs::read_to_string(app.dir.join("cache.addr"))
        .expect("cache.addr")
        .trim()
        .parse()
        .unwrap();
    (app, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_go_through_the_cache_once_per_site_and_a_rollback_works_without_the_index_or_uplink()
 {
    if !have_tools() {
        eprintln!("skipped: dpkg-deb, dpkg-scanpackages, apt-get or gpg missing");
        return;
    }
    let tmp = scratch("deploy-device");
    let repo = Repo::build(tmp.path());
    let up = Upstream::start(&repo.up);
    let (app, cache) = start_appliance(tmp.path(), &up, &repo.keyring);
    let d1 = Device::new(tmp.path(), "device-1", &repo, &up);
    let d2 = Device::new(tmp.path(), "device-2", &repo, &up);

    let o = d1.install(1, ("hello-outpost", "1.1-1"), cache).await;
    let s = d1.of(1);
    assert_eq!(o, CommandOutcome::Exited { code: 0 }, "{s:?}");
    assert_eq!(
        s.iter().map(|s| s.phase).collect::<Vec<_>>(),
        vec![Phase::Downloading, Phase::Installing, Phase::Succeeded]
    );
    assert_eq!(d1.version("hello-outpost").as_deref(), Some("1.1-1"));
    assert_eq!(d1.version("newdep-outpost").as_deref(), Some("1.0-1"));
    let last = s.last().unwrap();
    assert!(last.changes.iter().any(|c| c.name == "hello-outpost"
        && c.from.as_deref() == Some("1.0-1")
        && c.to.as_deref() == Some("1.1-1")));
    // The previous version was kept, fetched through the cache.
    assert_eq!(last.kept.len(), 1, "{last:?}");
    let kept = &last.kept[0];
    assert_eq!(kept.version, "1.0-1");
    assert_eq!(
        hex::encode(sha2::Sha256::digest(std::fs::read(&kept.path).unwrap())),
        kept.sha256
    );
    let new_deb = "/debian/pool/main/hello-outpost_1.1-1_all.deb";
    assert_eq!(up.hits(new_deb), 1);
    assert_eq!(up.hits("/debian/pool/main/hello-outpost_1.0-1_all.deb"), 1);

    // A second device of the site: its packages come from the cache.
    let o = d2.install(2, ("hello-outpost", "1.1-1"), cache).await;
    assert_eq!(o, CommandOutcome::Exited { code: 0 }, "{:?}", d2.of(2));
    assert_eq!(d2.version("hello-outpost").as_deref(), Some("1.1-1"));
    assert_eq!(up.hits(new_deb), 1, "fetched upstream once per site");
    assert!(app.metric("outpost_cache_hits_total") >= 1.0);

    // The old version leaves the repository index and the uplink goes
    // down: the kept .deb rolls device 1 back.
    std::fs::remove_file(repo.deb("hello-outpost", "1.0-1")).unwrap();
    repo.index();
    up.stop();
    let req = RollbackRequest {
        deployment: "dep-1".into(),
        attempt: 1,
        install_command: CommandId([1; 16]).to_string(),
        changes: Vec::new(),
        kept: Vec::new(),
        proxy: Some(format!("http://{cache}")),
    };
    let out: OutputFn = Arc::new(|_| {});
    let o = d1
        .installer
        .rollback(
            CommandId([3; 16]),
            REQUEST_FORMAT,
            &codec::encode_compressed(&req).unwrap(),
            out,
            CancellationToken::new(),
        )
        .await;
    let s = d1.of(3);
    assert_eq!(o, CommandOutcome::Exited { code: 0 }, "{s:?}");
    assert_eq!(s.last().unwrap().phase, Phase::RolledBack);
    assert_eq!(d1.version("hello-outpost").as_deref(), Some("1.0-1"));
    assert_eq!(d1.version("newdep-outpost"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_preinst_through_the_cache_fails_the_device_with_dpkgs_reason_and_log_tail() {
    if !have_tools() {
        eprintln!("skipped: dpkg-deb, dpkg-scanpackages, apt-get or gpg missing");
        return;
    }
    let tmp = scratch("deploy-device-fail");
    let repo = Repo::build(tmp.path());
    let up = Upstream::start(&repo.up);
    let (_app, cache) = start_appliance(tmp.path(), &up, &repo.keyring);
    let d = Device::new(tmp.path(), "device-1", &repo, &up);
    let o = d.install(1, ("broken-outpost", "1.1-1"), cache).await;
    assert_eq!(o, CommandOutcome::Exited { code: 1 });
    let last = d.of(1).pop().unwrap();
    assert_eq!(last.phase, Phase::Failed);
    let reason = last.reason.unwrap();
    assert!(reason.contains("broken-outpost"), "{reason}");
    assert!(
        last.log_tail.contains("preinst of broken-outpost refuses"),
        "{}",
        last.log_tail
    );
    assert_eq!(d.version("broken-outpost").as_deref(), Some("1.0-1"));
    assert_eq!(up.hits("/debian/pool/main/broken-outpost_1.1-1_all.deb"), 1);
}
