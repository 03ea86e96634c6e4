//! Debian packages, systemd units and the agent installer (README,
//! "Install on a site", "Install central", "Upgrading").
//!
//! The packages are built by `scripts/package.sh` from this test build's
//! binaries (no extra compile) and installed with the real `dpkg` into an
//! isolated root: `--root` and `--admindir` inside a scratch directory,
//! never the machine's own database, and `--force-script-chrootless` so the
//! maintainer scripts run with `DPKG_ROOT` set — they create the system
//! user in the root's `/etc/passwd` (systemd-sysusers --root), own its data
//! directories, and leave the machine's systemd alone (what this proves is
//! exactly their `DPKG_ROOT` path; the live-system path differs only in the
//! `systemctl daemon-reload/start/try-restart/stop` calls). Needs root
//! (dpkg sets file owners); skipped with the reason otherwise.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use outpost_tests::{
    Appliance, Proc, bin, free_port, load_test_slot, scratch, stderr, stdout, wait_for,
};

/// One set of packages: outpost, outpost-agent, outpost-central, and the
/// agent's tarball for hosts without dpkg.
struct Set {
    outpost: PathBuf,
    agent: PathBuf,
    central: PathBuf,
    tarball: PathBuf,
}

/// The packages at the workspace version, and the same binaries packaged
/// as a newer version (an upgrade).
struct Debs {
    v1: Set,
    v2: Set,
}

const V2: &str = "0.1.1-1";

/// Why these tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| stdout(&o).trim() == "0")
        .unwrap_or(false);
    if !is_root {
        return Some(
            "packaging tests need root (dpkg sets file owners in the isolated root)".into(),
        );
    }
    for tool in [
        "dpkg",
        "dpkg-deb",
        "dpkg-query",
        "flock",
        "systemd-sysusers",
        "setpriv",
        "curl",
        "musl-gcc",
        "readelf",
    ] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!(
                "{tool} is not installed (scripts/deps.sh --test installs it)"
            ));
        }
    }
    None
}

fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            true
        }
        None => false,
    }
}

/// The target directory of this test build's binaries.
fn target_dir() -> PathBuf {
    bin("outpost")
        .parent()
        .and_then(Path::parent)
        .expect("the binaries are in a target directory")
        .to_path_buf()
}

fn package(out: &Path, version: Option<&str>) -> Set {
    let bin_dir = bin("outpost").parent().unwrap().to_path_buf();
    let target_dir = target_dir();
    let _ = bin("outpost-agent");
    let _ = bin("outpost-central");
    let profile = if bin_dir.file_name().is_some_and(|n| n == "release") {
        "release"
    } else {
        "dev"
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    static_agent(&root, &target_dir, profile);
    // cargo-deb stages (and strips) the binaries in the shared target
    // directory. Under a runner that starts a process per test (`cargo
    // nextest`), several processes package at once: util-linux's `flock`
    // on a file there makes them take turns, so none packages a binary
    // another is rewriting.
    let mut cmd = Command::new("flock");
    cmd.arg(target_dir.join("outpost-packaging-tests.lock"))
        .arg(root.join("scripts/package.sh"))
        .args(["--profile", profile, "--out"])
        .arg(out)
        .env("CARGO_TARGET_DIR", &target_dir);
    if let Some(v) = version {
        cmd.args(["--deb-version", v]);
    }
    let o = cmd.output().expect("running flock scripts/package.sh");
    assert!(
        o.status.success(),
        "scripts/package.sh failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    let paths: Vec<PathBuf> = stdout(&o).lines().map(PathBuf::from).collect();
    assert_eq!(paths.len(), 4, "package.sh prints four paths: {paths:?}");
    for p in &paths {
        assert!(p.exists(), "{} missing", p.display());
    }
    Set {
        outpost: paths[0].clone(),
        agent: paths[1].clone(),
        central: paths[2].clone(),
        tarball: paths[3].clone(),
    }
}

/// Builds the agent for the tarball (musl, statically linked) into the
/// same target directory, once per test run: the one compile packaging
/// needs beyond the test build (the agent links no RocksDB).
fn static_agent(root: &Path, target_dir: &Path, profile: &str) {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        // Two cores' worth of compiling: not beside a load test.
        let _slot = load_test_slot();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(root)
            .args([
                "build",
                "--quiet",
                "-p",
                "outpost-agent",
                "--bin",
                "outpost-agent",
                "--target",
                "x86_64-unknown-linux-musl",
            ])
            .env("CARGO_TARGET_DIR", target_dir);
        if profile == "release" {
            cmd.arg("--release");
        }
        let o = cmd
            .output()
            .expect("running cargo build for the static agent");
        assert!(
            o.status.success(),
            "the static agent does not build (rustup target add x86_64-unknown-linux-musl; \
             apt-get install musl-tools):\n{}",
            stderr(&o)
        );
    });
}

/// Builds both sets once per test process.
///
/// A static is never dropped, so the packages (~100 MB) do not go in a
/// temporary directory, which would be left behind by every run: they go in
/// `TARGET/outpost-test-debs/PID/`, and a run first removes the directories
/// of processes that have ended (`cargo nextest` runs a process per test,
/// several at once).
fn debs() -> &'static Debs {
    static DEBS: OnceLock<Debs> = OnceLock::new();
    DEBS.get_or_init(|| {
        let dir = own_debs_dir(&target_dir().join("outpost-test-debs"));
        let v1 = package(&dir.join("v1"), None);
        let v2 = package(&dir.join("v2"), Some(V2));
        Debs { v1, v2 }
    })
}

/// This process's directory under `base`, empty; the directories of
/// processes no longer running are removed.
fn own_debs_dir(base: &Path) -> PathBuf {
    std::fs::create_dir_all(base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    let entries = std::fs::read_dir(base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    for entry in entries.flatten() {
        let name = entry.file_name();
        let ended = name
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists());
        if ended {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let own = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&own);
    std::fs::create_dir_all(&own).unwrap_or_else(|e| panic!("{}: {e}", own.display()));
    own
}

/// An isolated root with an empty dpkg database and a minimal passwd.
struct Root {
    path: PathBuf,
}

impl Root {
    fn new(path: PathBuf) -> Root {
        for d in [
            "var/lib/dpkg/info",
            "var/lib/dpkg/updates",
            "var/log",
            "etc",
            "tmp",
        ] {
            std::fs::create_dir_all(path.join(d)).unwrap();
        }
        std::fs::write(path.join("var/lib/dpkg/status"), "").unwrap();
        std::fs::write(path.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(path.join("etc/group"), "root:x:0:\n").unwrap();
        Root { path }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel.trim_start_matches('/'))
    }

    /// dpkg on this root only.
    fn dpkg(&self, args: &[&str]) -> Output {
        Command::new("dpkg")
            .arg(format!("--root={}", self.path.display()))
            .arg(format!("--admindir={}", self.p("var/lib/dpkg").display()))
            .arg(format!("--log={}", self.p("var/log/dpkg.log").display()))
            // Maintainer scripts run here with DPKG_ROOT set; the root has
            // no libc etc. to satisfy Depends.
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-unsafe-io",
            ])
            .args(args)
            .output()
            .expect("running dpkg")
    }

    fn dpkg_ok(&self, args: &[&str]) {
        let o = self.dpkg(args);
        assert!(
            o.status.success(),
            "dpkg {args:?} failed:\n{}\n{}",
            stdout(&o),
            stderr(&o)
        );
    }

    fn install(&self, deb: &Path) {
        self.dpkg_ok(&["-i", deb.to_str().unwrap()]);
    }

    fn query(&self, package: &str, format: &str) -> String {
        let o = Command::new("dpkg-query")
            .arg(format!("--admindir={}", self.p("var/lib/dpkg").display()))
            .args(["-W", "-f", format, package])
            .output()
            .expect("dpkg-query");
        stdout(&o)
    }

    /// uid and gid of `user` in this root's passwd.
    fn user(&self, user: &str) -> (u32, u32) {
        let passwd = std::fs::read_to_string(self.p("etc/passwd")).unwrap();
        let line = passwd
            .lines()
            .find(|l| l.split(':').next() == Some(user))
            .unwrap_or_else(|| panic!("no user {user} in the root's passwd:\n{passwd}"));
        let f: Vec<&str> = line.split(':').collect();
        (f[2].parse().unwrap(), f[3].parse().unwrap())
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// A configuration file whose every line is a comment or blank.
fn assert_all_commented(p: &Path) {
    let text = std::fs::read_to_string(p).unwrap();
    assert!(text.lines().count() > 5, "{} is nearly empty", p.display());
    for l in text.lines() {
        let t = l.trim();
        assert!(
            t.is_empty() || t.starts_with('#'),
            "{}: uncommented line {l:?} (defaults ship commented)",
            p.display()
        );
    }
}

/// Runs the installed appliance on the installed data directory as its
/// service user, the way outpost.service does, until it is ready; stops it.
fn serve_once(root: &Root, test_root: &Path, name: &str) -> Result<(), String> {
    let (uid, gid) = root.user("outpost");
    let data = root.p("var/lib/outpost");
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(root.p("usr/bin/outpost"))
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .arg("--config")
        .arg(root.p("etc/outpost/outpost.toml"))
        .arg("--quic-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--cache-listen")
        .arg(format!("127.0.0.1:{}", free_port()));
    let _ = std::fs::remove_file(data.join("admin.addr"));
    let mut p = Proc::spawn(name, &mut cmd, test_root).unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Some(st) = p.try_exit() {
            return Err(format!("exited ({st}): {}", p.stderr()));
        }
        if data.join("admin.addr").exists() && p.stderr().contains("appliance ready") {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("not ready in 30 s: {}", p.stderr()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = p.terminate().expect("appliance exit status");
    assert!(st.success(), "appliance stopped with {st}: {}", p.stderr());
    Ok(())
}

#[test]
fn appliance_package_installs_upgrades_keeping_data_and_config_removes_and_purges() {
    if skip("appliance_package_installs_upgrades_keeping_data_and_config_removes_and_purges") {
        return;
    }
    let debs = debs();
    let t = scratch("pkg-appliance");
    let root = Root::new(t.path().join("root"));

    // Install.
    root.install(&debs.v1.outpost);
    assert_eq!(root.query("outpost", "${Status}"), "install ok installed");
    assert_eq!(mode(&root.p("usr/bin/outpost")), 0o755);
    assert!(root.p("usr/lib/systemd/system/outpost.service").is_file());
    assert!(root.p("usr/lib/sysusers.d/outpost.conf").is_file());
    let conf = root.p("etc/outpost/outpost.toml");
    assert_eq!(mode(&conf), 0o644);
    assert_all_commented(&conf);
    assert!(
        root.query("outpost", "${Conffiles}")
            .contains("/etc/outpost/outpost.toml"),
        "outpost.toml is a conffile"
    );
    // The agent package the appliance serves to endpoints.
    let shipped: Vec<_> = std::fs::read_dir(root.p("usr/share/outpost/agent"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut shipped = shipped;
    shipped.sort();
    assert_eq!(shipped.len(), 2, "{shipped:?}");
    assert!(shipped[0].starts_with("outpost-agent_") && shipped[0].ends_with(".deb"));
    assert!(shipped[1].starts_with("outpost-agent_") && shipped[1].ends_with(".tar.gz"));
    // postinst: system user, data directory owned by it, unit enabled.
    let (uid, gid) = root.user("outpost");
    assert!(uid > 0 && uid < 1000, "a system uid: {uid}");
    let data = root.p("var/lib/outpost");
    assert_eq!(owner(&data), (uid, gid));
    assert_eq!(mode(&data), 0o750);
    assert!(
        std::fs::symlink_metadata(
            root.p("etc/systemd/system/multi-user.target.wants/outpost.service")
        )
        .is_ok(),
        "outpost.service enabled"
    );

    // The installed binary runs as the service user with the packaged
    // (all-commented) configuration: keys 0600, everything owned by it.
    serve_once(&root, t.path(), "appliance-v1").expect("installed appliance starts");
    for key in ["ca.key", "server.key", "admin.token", "reset.key"] {
        let p = data.join(key);
        assert_eq!(mode(&p), 0o600, "{key}");
        assert_eq!(owner(&p), (uid, gid), "{key}");
    }
    assert_eq!(owner(&data.join("db")), (uid, gid));
    assert_eq!(std::fs::read_to_string(data.join("format")).unwrap(), "1\n");
    let ca = std::fs::read(data.join("ca.crt")).unwrap();

    // Upgrade: a site edit of the conffile and all data are kept.
    let mut edited = std::fs::read_to_string(&conf).unwrap();
    edited.push_str("offline_grace = \"20s\"  # site edit\n");
    std::fs::write(&conf, &edited).unwrap();
    root.install(&debs.v2.outpost);
    assert_eq!(root.query("outpost", "${Version}"), V2);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), edited);
    assert_eq!(std::fs::read(data.join("ca.crt")).unwrap(), ca);
    assert_eq!(owner(&data), (uid, gid));
    serve_once(&root, t.path(), "appliance-v2").expect("upgraded appliance starts on the old data");
    assert_eq!(
        std::fs::read(data.join("ca.crt")).unwrap(),
        ca,
        "same site CA"
    );

    // Data written by a newer stored format (a downgrade): refused, with
    // the reason, and the data left as it was.
    std::fs::write(data.join("format"), "2\n").unwrap();
    let err = serve_once(&root, t.path(), "appliance-downgrade").expect_err("refused");
    assert!(
        err.contains("newer Outpost") && err.contains("Downgrades are not supported"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(data.join("format")).unwrap(), "2\n");
    std::fs::write(data.join("format"), "1\n").unwrap();

    // Remove: binary gone, data and configuration kept.
    root.dpkg_ok(&["-r", "outpost"]);
    assert_eq!(
        root.query("outpost", "${Status}"),
        "deinstall ok config-files"
    );
    assert!(!root.p("usr/bin/outpost").exists());
    assert_eq!(std::fs::read(data.join("ca.crt")).unwrap(), ca);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), edited);

    // Purge: data and configuration gone.
    root.dpkg_ok(&["-P", "outpost"]);
    assert!(!data.exists(), "purge removes /var/lib/outpost");
    assert!(!conf.exists(), "purge removes the conffile");
    assert!(
        std::fs::symlink_metadata(
            root.p("etc/systemd/system/multi-user.target.wants/outpost.service")
        )
        .is_err()
    );
}

#[test]
fn central_and_agent_packages_install_upgrade_and_purge() {
    if skip("central_and_agent_packages_install_upgrade_and_purge") {
        return;
    }
    let debs = debs();
    let t = scratch("pkg-central-agent");
    let root = Root::new(t.path().join("root"));
    root.install(&debs.v1.central);
    root.install(&debs.v1.agent);

    // central: user, data dir, unit, options conffile.
    let (uid, gid) = root.user("outpost-central");
    let cdata = root.p("var/lib/outpost-central");
    assert_eq!(owner(&cdata), (uid, gid));
    assert_eq!(mode(&cdata), 0o750);
    assert_eq!(mode(&root.p("usr/bin/outpost-central")), 0o755);
    assert!(
        root.p("usr/lib/systemd/system/outpost-central.service")
            .is_file()
    );
    assert_all_commented(&root.p("etc/default/outpost-central"));
    assert!(
        root.query("outpost-central", "${Conffiles}")
            .contains("/etc/default/outpost-central")
    );

    // agent: root-owned state directory 0700 (the device key lives there),
    // agent.toml linked to the conffile (relative, so inside the root).
    let state = root.p("var/lib/outpost-agent");
    assert_eq!(owner(&state), (0, 0));
    assert_eq!(mode(&state), 0o700);
    assert_all_commented(&state.join("agent.toml"));
    assert!(
        root.query("outpost-agent", "${Conffiles}")
            .contains("/etc/outpost/agent.toml")
    );
    assert!(
        root.p("usr/lib/systemd/system/outpost-agent.service")
            .is_file()
    );

    // Upgrade keeps what is in the data directories.
    std::fs::write(cdata.join("kept"), "x").unwrap();
    std::fs::write(state.join("kept"), "x").unwrap();
    root.install(&debs.v2.central);
    root.install(&debs.v2.agent);
    assert_eq!(root.query("outpost-agent", "${Version}"), V2);
    assert!(cdata.join("kept").exists() && state.join("kept").exists());
    root.dpkg_ok(&["-r", "outpost-central", "outpost-agent"]);
    assert!(cdata.join("kept").exists() && state.join("kept").exists());
    root.dpkg_ok(&["-P", "outpost-central", "outpost-agent"]);
    assert!(!cdata.exists() && !state.exists());
    assert!(!root.p("etc/default/outpost-central").exists());
    assert!(!root.p("etc/outpost/agent.toml").exists());
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("SKIPPED units_pass_systemd_analyze_verify: systemd-analyze is not installed");
        return;
    }
    // The units as shipped, with ExecStart pointed at this build's
    // binaries (verify checks that the command exists).
    let t = scratch("units");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let mut units = Vec::new();
    for (dir, unit, binary) in [
        ("outpost", "outpost.service", "outpost"),
        ("central", "outpost-central.service", "outpost-central"),
        ("agent", "outpost-agent.service", "outpost-agent"),
    ] {
        let text = std::fs::read_to_string(src.join(dir).join(unit)).unwrap();
        let exec = format!("ExecStart=/usr/bin/{binary} ");
        assert!(text.contains(&exec), "{unit} runs /usr/bin/{binary}");
        let text = text.replace(&exec, &format!("ExecStart={} ", bin(binary).display()));
        let p = t.path().join(unit);
        std::fs::write(&p, text).unwrap();
        units.push(p);
    }
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze");
    let err = stderr(&o);
    // Users (outpost, outpost-central) exist only where the packages are
    // installed; everything else must be clean.
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains("Failed to resolve user") && !l.contains("Failed to resolve group"))
        .filter(|l| !l.contains("/etc/systemd/system") && !l.contains("/lib/systemd/system/"))
        .collect();
    assert!(
        o.status.success() || problems.is_empty(),
        "systemd-analyze verify failed ({}):\n{err}",
        o.status
    );
    assert!(
        problems.is_empty(),
        "systemd-analyze verify complained:\n{err}"
    );
}

/// Stand-ins for what the installer line calls on a real endpoint, so it
/// runs unchanged against an isolated root: `dpkg` installs into the root,
/// `outpost-agent` is the binary the package installed there (its state
/// directory mapped into the root), `systemctl enable --now outpost-agent`
/// starts that binary the way the unit's ExecStart does. Every call is
/// logged.
fn shims(dir: &Path) -> PathBuf {
    let shims = dir.join("shims");
    std::fs::create_dir_all(&shims).unwrap();
    let write = |name: &str, body: &str| {
        let p = shims.join(name);
        std::fs::write(
            &p,
            format!("#!/bin/sh\necho \"{name} $*\" >> \"$SHIM_LOG\"\n{body}"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write(
        "dpkg",
        r#"exec /usr/bin/dpkg --root="$ROOT" --admindir="$ROOT/var/lib/dpkg" --log="$ROOT/var/log/dpkg.log" \
  --force-script-chrootless --force-depends --force-unsafe-io "$@"
"#,
    );
    write(
        "outpost-agent",
        r#"for a; do
  shift
  [ "$a" = /var/lib/outpost-agent ] && a="$ROOT/var/lib/outpost-agent"
  set -- "$@" "$a"
done
bin="$ROOT/usr/bin/outpost-agent"
[ -x "$bin" ] || bin="$ROOT/usr/local/bin/outpost-agent"
exec "$bin" "$@"
"#,
    );
    write(
        "systemctl",
        r#"case "$1" in --root=*) exec /usr/bin/systemctl "$@" ;; esac
if [ "$*" = "enable --now outpost-agent" ]; then
  bin="$ROOT/usr/bin/outpost-agent"
  [ -x "$bin" ] || bin="$ROOT/usr/local/bin/outpost-agent"
  "$bin" run --state "$ROOT/var/lib/outpost-agent" --heartbeat-interval 1s \
    >"$ROOT/agent.log" 2>&1 </dev/null &
  echo $! >"$ROOT/agent.pid"
fi
"#,
    );
    shims
}

/// Kills the agent a shim started, when the test ends.
struct AgentPid(PathBuf);

impl Drop for AgentPid {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        }
    }
}

fn run_line(line: &str, root: &Root, shims: &Path, log: &Path) -> Output {
    let path = format!(
        "{}:{}",
        shims.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .args(["-c", line])
        .env("PATH", path)
        .env("ROOT", &root.path)
        .env("SHIM_LOG", log)
        .env("TMPDIR", root.p("tmp"))
        // The tarball's install.sh installs into this root.
        .env("DESTDIR", &root.path)
        .output()
        .expect("running the installer line")
}

#[test]
fn installer_line_installs_enrolls_and_starts_the_agent_and_a_tampered_package_is_refused() {
    if skip(
        "installer_line_installs_enrolls_and_starts_the_agent_and_a_tampered_package_is_refused",
    ) {
        return;
    }
    let debs = debs();
    let t = scratch("installer");
    let pkg_dir = t.path().join("agent-package");
    std::fs::create_dir_all(&pkg_dir).unwrap();
    let served = pkg_dir.join(debs.v1.agent.file_name().unwrap());
    std::fs::copy(&debs.v1.agent, &served).unwrap();
    std::fs::copy(
        &debs.v1.tarball,
        pkg_dir.join(debs.v1.tarball.file_name().unwrap()),
    )
    .unwrap();
    let app = Appliance::start_with_config(
        t.path(),
        &format!("[cache]\nagent_package_dir = \"{}\"\n", pkg_dir.display()),
    );

    let out = app.cli_ok(&[
        "agent-installer",
        "--tenant",
        "acme-msp",
        "--customer",
        "dental-clinic",
        "--uses",
        "2",
        "--host",
        "127.0.0.1",
    ]);
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    let line = out.trim();
    assert!(line.contains(&app.fingerprint()), "{line}");
    assert!(
        line.contains(&format!("127.0.0.1:{}", app.quic.port())),
        "{line}"
    );

    // A clean endpoint: the line installs, enrolls and starts the agent.
    let endpoint = Root::new(t.path().join("endpoint"));
    let shims = shims(t.path());
    let log = t.path().join("shim.log");
    let _agent = AgentPid(endpoint.p("agent.pid"));
    let o = run_line(line, &endpoint, &shims, &log);
    assert!(
        o.status.success(),
        "installer line failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    assert_eq!(
        endpoint.query("outpost-agent", "${Status}"),
        "install ok installed"
    );
    let key = endpoint.p("var/lib/outpost-agent/device.key");
    assert_eq!(mode(&key), 0o600, "device key");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.contains("systemctl enable --now outpost-agent"),
        "{calls}"
    );
    wait_for(Duration::from_secs(30), "the new device online", || {
        let devices: Vec<serde_json::Value> = app.api("/api/v1/devices").ok()?;
        devices
            .iter()
            .find(|d| d["status"] == "online")
            .map(|d| assert_eq!(d["customer"], "dental-clinic", "{d}"))
    });

    // A host without dpkg: the tarball line, same checks.
    let tar_line = app.cli_ok(&[
        "agent-installer",
        "--tenant",
        "acme-msp",
        "--customer",
        "dental-clinic",
        "--host",
        "127.0.0.1",
        "--tarball",
    ]);
    let tar_host = Root::new(t.path().join("endpoint-tar"));
    let log_tar = t.path().join("shim-tar.log");
    let _agent_tar = AgentPid(tar_host.p("agent.pid"));
    let o = run_line(tar_line.trim(), &tar_host, &shims, &log_tar);
    assert!(
        o.status.success(),
        "tarball line failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    assert_eq!(mode(&tar_host.p("usr/local/bin/outpost-agent")), 0o755);
    // The tarball's agent is statically linked: no program interpreter, so
    // it runs whatever C library the host has.
    let headers = Command::new("readelf")
        .arg("-l")
        .arg(tar_host.p("usr/local/bin/outpost-agent"))
        .output()
        .expect("readelf");
    assert!(headers.status.success(), "{}", stderr(&headers));
    assert!(
        !stdout(&headers).contains("program interpreter"),
        "the tarball's agent is dynamically linked:\n{}",
        stdout(&headers)
    );
    assert_eq!(mode(&tar_host.p("var/lib/outpost-agent")), 0o700);
    assert_eq!(mode(&tar_host.p("var/lib/outpost-agent/device.key")), 0o600);
    let unit =
        std::fs::read_to_string(tar_host.p("etc/systemd/system/outpost-agent.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/outpost-agent run"),
        "{unit}"
    );
    let calls = std::fs::read_to_string(&log_tar).unwrap();
    assert!(!calls.contains("dpkg"), "{calls}");
    wait_for(Duration::from_secs(30), "both devices online", || {
        let devices: Vec<serde_json::Value> = app.api("/api/v1/devices").ok()?;
        (devices.iter().filter(|d| d["status"] == "online").count() == 2).then_some(())
    });

    assert!(
        app.metric("outpost_cache_requests_total{result=\"agent_package\"}") >= 2.0,
        "agent package downloads are counted"
    );

    // The served package differs from the one the line names (tampered
    // with, or a different build): refused before anything is installed.
    let mut bytes = std::fs::read(&served).unwrap();
    bytes.push(0);
    std::fs::write(&served, bytes).unwrap();
    let victim = Root::new(t.path().join("endpoint-2"));
    let log2 = t.path().join("shim-2.log");
    let o = run_line(line, &victim, &shims, &log2);
    assert!(!o.status.success(), "a tampered package must be refused");
    assert!(
        stderr(&o).contains("FAILED") || stdout(&o).contains("FAILED"),
        "sha256sum says why: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let calls = std::fs::read_to_string(&log2).unwrap_or_default();
    assert!(!calls.contains("dpkg"), "dpkg never ran: {calls}");
    assert!(!calls.contains("outpost-agent"), "no enrollment: {calls}");
    assert!(!victim.p("usr/bin/outpost-agent").exists());
    assert_eq!(victim.query("outpost-agent", "${Status}"), "");
    let leftovers: Vec<_> = std::fs::read_dir(victim.p("tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "the refused download is deleted");
}

/// Uncomments `# key = value` and `# [section]` lines (the packaged
/// defaults); examples are written `#   key = …` and stay comments.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.starts_with(|c: char| c.is_ascii_lowercase())
                        && rest.contains(" = ") =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn packaged_configuration_files_show_the_built_in_defaults() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let text = std::fs::read_to_string(src.join("outpost/outpost.toml")).unwrap();
    let parsed: outpost_appliance::config::Config =
        toml::from_str(&uncommented(&text)).expect("uncommented outpost.toml parses");
    assert_eq!(parsed, outpost_appliance::config::Config::default());
    // As shipped (all commented) it is the defaults too.
    let parsed: outpost_appliance::config::Config = toml::from_str(&text).unwrap();
    assert_eq!(parsed, outpost_appliance::config::Config::default());

    let text = std::fs::read_to_string(src.join("agent/agent.toml")).unwrap();
    let parsed: outpost_agent::config::AgentConfig =
        toml::from_str(&uncommented(&text)).expect("uncommented agent.toml parses");
    assert_eq!(parsed, outpost_agent::config::AgentConfig::default());
    every_key_is_shown(&text, &outpost_agent::config::AgentConfig::default());
    let text = std::fs::read_to_string(src.join("outpost/outpost.toml")).unwrap();
    every_key_is_shown(&text, &outpost_appliance::config::Config::default());
}

/// Every setting of `defaults` (top-level keys and the keys of its tables)
/// is written out in the packaged file `text`: a setting added to the code
/// but not to the commented file fails here.
fn every_key_is_shown<T: serde::Serialize>(text: &str, defaults: &T) {
    let shown = uncommented(text);
    let v = toml::Value::try_from(defaults).expect("defaults serialize");
    let top = v.as_table().expect("a table");
    let mentioned = |table: Option<&str>, key: &str| {
        let mut current: Option<String> = None;
        shown.lines().any(|l| {
            let l = l.split('#').next().unwrap_or("").trim();
            if l.starts_with('[') {
                current = Some(l.trim_matches(|c| c == '[' || c == ']').to_string());
                return false;
            }
            current.as_deref() == table && l.split('=').next().is_some_and(|k| k.trim() == key)
        })
    };
    for (k, val) in top {
        match val.as_table() {
            Some(t) => {
                for (sub, sv) in t {
                    if sv.is_table()
                        || sv
                            .as_array()
                            .is_some_and(|a| a.iter().any(|e| e.is_table()))
                    {
                        let name = format!("{k}.{sub}");
                        assert!(
                            shown.contains(&format!("[{name}]"))
                                || shown.contains(&format!("[[{name}]]")),
                            "[{name}] is not in the packaged file"
                        );
                    } else {
                        assert!(
                            mentioned(Some(k), sub),
                            "{k}.{sub} is not in the packaged file"
                        );
                    }
                }
            }
            None => assert!(mentioned(None, k), "{k} is not in the packaged file"),
        }
    }
}

/// Receives one sd_notify datagram (bounded wait).
fn notified(sock: &std::os::unix::net::UnixDatagram, what: &str) -> String {
    let mut buf = [0u8; 1024];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no {what} notification: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// What the Type=notify units rely on: READY=1 on $NOTIFY_SOCKET once the
/// listeners are bound (they answer when it arrives), STOPPING=1 on SIGTERM.
#[test]
fn appliance_and_central_tell_systemd_they_are_ready_once_listening() {
    use std::os::unix::net::UnixDatagram;
    let t = scratch("notify");
    let sock_path = t.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let port = || format!("127.0.0.1:{}", free_port());

    let admin = port();
    let mut cmd = Command::new(bin("outpost"));
    cmd.arg("serve")
        .arg("--data")
        .arg(t.path().join("appliance"))
        .args(["--quic-listen", &port(), "--admin-listen", &admin])
        .args(["--cache-listen", &port()])
        .env("NOTIFY_SOCKET", &sock_path);
    let mut p = Proc::spawn("appliance", &mut cmd, t.path()).unwrap();
    let msg = notified(&sock, "appliance READY");
    assert!(msg.contains("READY=1"), "{msg}");
    outpost_tests::http_get(admin.parse().unwrap(), "/healthz", None)
        .expect("the admin API answers once READY=1 is sent");
    p.terminate();
    let msg = notified(&sock, "appliance STOPPING");
    assert!(msg.contains("STOPPING=1"), "{msg}");

    let http = port();
    let mut cmd = Command::new(bin("outpost-central"));
    cmd.arg("serve")
        .arg("--data")
        .arg(t.path().join("central"))
        .args(["--listen", &port(), "--http-listen", &http])
        .env("NOTIFY_SOCKET", &sock_path);
    let mut c = Proc::spawn("central", &mut cmd, t.path()).unwrap();
    let msg = notified(&sock, "central READY");
    assert!(msg.contains("READY=1"), "{msg}");
    outpost_tests::http_get(http.parse().unwrap(), "/metrics", None)
        .expect("central's HTTP listener answers once READY=1 is sent");
    c.terminate();
}
