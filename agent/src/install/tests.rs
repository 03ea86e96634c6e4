//! The installer against real apt and dpkg in an isolated root (dpkg
//! `--root`, scripts chrootless; apt `Dir` options), never the test
//! machine's own package database. Skipped (with a line) where
//! dpkg-deb / dpkg-scanpackages / apt-get are missing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_patch::install::BinaryTarget;
use outpost_patch::install::wire::{
    DeviceStatus, InstallRequest, Phase, REQUEST_FORMAT, RebootPolicy, RollbackRequest,
};
use outpost_proto::codec;
use outpost_proto::ids::CommandId;
use outpost_proto::messages::CommandOutcome;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::commands::reboot::RebootConfig;

/// Collects statuses in memory.
#[derive(Default)]
struct Statuses(Mutex<Vec<DeviceStatus>>);

impl StatusWriter for Statuses {
    fn write(&self, s: &DeviceStatus) -> Result<(), String> {
        self.0.lock().unwrap().push(s.clone());
        Ok(())
    }
}

impl Statuses {
    fn of(&self, command: CommandId) -> Vec<DeviceStatus> {
        let c = command.to_string();
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.command == c)
            .cloned()
            .collect()
    }
}

const SETUP: &str = r#"
set -eu
W=$1; R=$W/root; mkdir -p "$W/repo"
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
  dpkg-deb --root-owner-group -Zgzip -b "$d" "$W/repo/${name}_${ver}_all.deb" >/dev/null
  rm -rf "$d"
}
mk hello-outpost 1.0-1
mk hello-outpost 1.1-1 "newdep-outpost (>= 1.0)"
mk newdep-outpost 1.0-1
mk broken-outpost 1.0-1
mk broken-outpost 1.1-1 "" 1
mk held-outpost 1.0-1
mk held-outpost 1.1-1
mk pulling-outpost 1.0-1
mk pulling-outpost 1.1-1 "newdep-outpost (>= 1.0)" 1
mk slow-outpost 1.0-1
mk slow-outpost 1.1-1 "" 0
d=$(mktemp -d); dpkg-deb -R "$W/repo/slow-outpost_1.1-1_all.deb" "$d"
printf '#!/bin/sh\ntouch "%s/preinst-started"\nsleep 120\n' "$W" > "$d/DEBIAN/preinst"
chmod 755 "$d/DEBIAN/preinst"
dpkg-deb --root-owner-group -Zgzip -b "$d" "$W/repo/slow-outpost_1.1-1_all.deb" >/dev/null; rm -rf "$d"
(cd "$W/repo" && dpkg-scanpackages -m . 2>/dev/null > Packages)
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/log/apt" \
  "$R/etc/apt/sources.list.d" "$R/etc/apt/preferences.d" "$R/etc/apt/apt.conf.d" \
  "$R/var/lib/apt/lists/partial" "$R/var/cache/apt/archives/partial" "$R/var/run"
touch "$R/var/lib/dpkg/status"
echo "deb [trusted=yes] file:$W/repo ./" > "$R/etc/apt/sources.list"
dpkg --root="$R" --force-script-chrootless --force-not-root --log="$R/var/log/dpkg.log" \
  -i "$W/repo/hello-outpost_1.0-1_all.deb" "$W/repo/broken-outpost_1.0-1_all.deb" \
  "$W/repo/held-outpost_1.0-1_all.deb" "$W/repo/slow-outpost_1.0-1_all.deb" \
  "$W/repo/pulling-outpost_1.0-1_all.deb" >/dev/null
echo "held-outpost hold" | dpkg --root="$R" --force-not-root --set-selections
"#;

struct Device {
    _tmp: Option<tempfile::TempDir>,
    work: PathBuf,
    root: PathBuf,
    statuses: Arc<Statuses>,
    installer: PatchInstaller,
    boot_id: PathBuf,
    rebooted: PathBuf,
}

fn have_tools() -> bool {
    ["dpkg-deb", "dpkg-scanpackages", "apt-get", "dpkg"]
        .iter()
        .all(|t| {
            std::process::Command::new(t)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn apt_args(root: &Path) -> Vec<String> {
    let r = root.display();
    [
        format!("Dir={r}"),
        format!("Dir::State::status={r}/var/lib/dpkg/status"),
        format!("Dir::Log={r}/var/log/apt"),
        format!("Dir::Cache={r}/var/cache/apt"),
        format!("Dir::Etc::Parts={r}/etc/apt/apt.conf.d"),
        format!("DPkg::Options::=--root={r}"),
        "DPkg::Options::=--force-script-chrootless".into(),
        "DPkg::Options::=--force-not-root".into(),
        format!("DPkg::Options::=--log={r}/var/log/dpkg.log"),
        "APT::Sandbox::User=root".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect()
}

fn sh(script: &str, args: &[&str]) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Device {
    fn new() -> Option<Device> {
        if !have_tools() {
            eprintln!("skipped: dpkg-deb, dpkg-scanpackages or apt-get missing");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().to_path_buf();
        let root = work.join("root");
        sh(SETUP, &[work.to_str().unwrap()]);
        let d = Device::with(Some(tmp), work, root);
        d.apt_update();
        Some(d)
    }

    fn with(tmp: Option<tempfile::TempDir>, work: PathBuf, root: PathBuf) -> Device {
        let boot_id = work.join("boot_id");
        std::fs::write(&boot_id, "boot-1\n").unwrap();
        let rebooted = work.join("rebooted");
        let r = root.display().to_string();
        let tools = InstallTools {
            apt_extra_args: apt_args(&root),
            dpkg_extra_args: vec![
                format!("--root={r}"),
                "--force-script-chrootless".into(),
                "--force-not-root".into(),
            ],
            dpkg_repack: "/nonexistent/dpkg-repack".into(),
            root: root.clone(),
            ..InstallTools::default()
        };
        let scan = crate::scan::PackageTools {
            manager: "dpkg".into(),
            dpkg_admindir: root.join("var/lib/dpkg"),
            apt_simulate: false,
            os_release: work.join("no-os-release"),
            reboot_required: root.join("var/run/reboot-required"),
            ..crate::scan::PackageTools::default()
        };
        let reboot = RebootConfig {
            command: format!("echo \"$OUTPOST_REBOOT_DELAY_S\" > {}", rebooted.display()),
            dpkg_lock: root.join("var/lib/dpkg/lock-frontend"),
            boot_id_path: boot_id.clone(),
        };
        let statuses = Arc::new(Statuses::default());
        let installer = PatchInstaller::new(
            tools,
            scan,
            reboot,
            Duration::from_secs(1),
            work.join("state"),
            statuses.clone(),
        );
        Device {
            _tmp: tmp,
            work,
            root,
            statuses,
            installer,
            boot_id,
            rebooted,
        }
    }

    /// The same device after an agent restart (same state and root).
    fn restarted(self) -> Device {
        let Device {
            _tmp, work, root, ..
        } = self;
        Device::with(_tmp, work, root)
    }

    fn apt_update(&self) {
        let mut cmd = std::process::Command::new("apt-get");
        cmd.args(apt_args(&self.root)).arg("update");
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    fn version(&self, name: &str) -> Option<String> {
        let out = std::process::Command::new("dpkg-query")
            .arg(format!("--admindir={}/var/lib/dpkg", self.root.display()))
            .args(["-W", "-f=${Status}|${Version}", name])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        let (status, v) = s.split_once('|')?;
        status.ends_with(" installed").then(|| v.to_string())
    }

    fn request(&self, targets: &[(&str, &str)]) -> InstallRequest {
        InstallRequest {
            deployment: "dep-1".into(),
            attempt: 1,
            targets: targets
                .iter()
                .map(|(n, v)| BinaryTarget {
                    name: n.to_string(),
                    arch: None,
                    version: v.to_string(),
                })
                .collect(),
            proxy: None,
            reboot: RebootPolicy::Never,
            min_free_root_bytes: 1,
            keep_previous_debs: true,
            pre_script: None,
            post_script: None,
            snapshot: false,
        }
    }

    async fn install(&self, id: u8, req: &InstallRequest) -> (CommandOutcome, String) {
        let bytes = codec::encode_compressed(req).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let out: tools::OutputFn = Arc::new(move |b| l.lock().unwrap().extend(b));
        let o = self
            .installer
            .install(
                CommandId([id; 16]),
                REQUEST_FORMAT,
                &bytes,
                out,
                CancellationToken::new(),
            )
            .await;
        let text = String::from_utf8_lossy(&log.lock().unwrap()).to_string();
        (o, text)
    }

    async fn rollback(&self, id: u8, req: &RollbackRequest) -> CommandOutcome {
        let bytes = codec::encode_compressed(req).unwrap();
        let out: tools::OutputFn = Arc::new(|_| {});
        self.installer
            .rollback(
                CommandId([id; 16]),
                REQUEST_FORMAT,
                &bytes,
                out,
                CancellationToken::new(),
            )
            .await
    }
}

fn phases(s: &[DeviceStatus]) -> Vec<Phase> {
    s.iter().map(|s| s.phase).collect()
}

fn rollback_of(install: u8) -> RollbackRequest {
    RollbackRequest {
        deployment: "dep-1".into(),
        attempt: 1,
        install_command: CommandId([install; 16]).to_string(),
        changes: Vec::new(),
        kept: Vec::new(),
        proxy: None,
    }
}

#[tokio::test]
async fn an_install_upgrades_records_the_previous_version_keeps_its_deb_and_rolls_back_without_the_index()
 {
    let Some(d) = Device::new() else { return };
    let (o, log) = d
        .install(1, &d.request(&[("hello-outpost", "1.1-1")]))
        .await;
    assert_eq!(o, CommandOutcome::Exited { code: 0 }, "{log}");
    assert_eq!(d.version("hello-outpost").as_deref(), Some("1.1-1"));
    assert_eq!(d.version("newdep-outpost").as_deref(), Some("1.0-1"));
    let s = d.statuses.of(CommandId([1; 16]));
    assert_eq!(
        phases(&s),
        vec![Phase::Downloading, Phase::Installing, Phase::Succeeded],
        "{log}"
    );
    let last = s.last().unwrap();
    let hello = last
        .changes
        .iter()
        .find(|c| c.name == "hello-outpost")
        .expect("hello changed");
    assert_eq!(hello.from.as_deref(), Some("1.0-1"));
    assert_eq!(hello.to.as_deref(), Some("1.1-1"));
    assert!(
        last.changes
            .iter()
            .any(|c| c.name == "newdep-outpost" && c.from.is_none())
    );
    assert_eq!(last.kept.len(), 1, "{log}");
    let k = &last.kept[0];
    assert_eq!(
        (k.name.as_str(), k.version.as_str()),
        ("hello-outpost", "1.0-1")
    );
    assert_eq!(tools::sha256_file(Path::new(&k.path)).unwrap(), k.sha256);
    assert!(log.contains("Setting up hello-outpost (1.1-1)"), "{log}");
    assert!(!d.rebooted.exists(), "never: no reboot");

    // The old version leaves the repository index: the kept .deb rolls
    // the device back, and the pulled-in dependency goes.
    std::fs::remove_file(d.work.join("repo/hello-outpost_1.0-1_all.deb")).unwrap();
    sh(
        "cd \"$1\" && dpkg-scanpackages -m . 2>/dev/null > Packages",
        &[d.work.join("repo").to_str().unwrap()],
    );
    d.apt_update();
    let o = d.rollback(2, &rollback_of(1)).await;
    let s = d.statuses.of(CommandId([2; 16]));
    assert_eq!(o, CommandOutcome::Exited { code: 0 }, "{s:?}");
    assert_eq!(phases(&s), vec![Phase::Installing, Phase::RolledBack]);
    assert!(s.iter().all(|s| s.rollback));
    assert_eq!(d.version("hello-outpost").as_deref(), Some("1.0-1"));
    assert_eq!(d.version("newdep-outpost"), None);
}

#[tokio::test]
async fn a_kept_deb_whose_hash_changed_is_refused_for_a_rollback() {
    let Some(d) = Device::new() else { return };
    let (o, log) = d
        .install(1, &d.request(&[("hello-outpost", "1.1-1")]))
        .await;
    assert_eq!(o, CommandOutcome::Exited { code: 0 }, "{log}");
    let kept = d.statuses.of(CommandId([1; 16])).last().unwrap().kept[0].clone();
    std::fs::write(&kept.path, b"tampered").unwrap();
    match d.rollback(2, &rollback_of(1)).await {
        CommandOutcome::Refused { reason } => assert!(reason.contains("SHA-256"), "{reason}"),
        o => panic!("expected a refusal, got {o:?}"),
    }
    let s = d.statuses.of(CommandId([2; 16]));
    assert_eq!(phases(&s), vec![Phase::RollbackFailed]);
    assert_eq!(d.version("hello-outpost").as_deref(), Some("1.1-1"));
}

#[tokio::test]
async fn a_failing_preinst_fails_the_install_with_dpkgs_reason_and_the_log_tail() {
    let Some(d) = Device::new() else { return };
    let (o, log) = d
        .install(1, &d.request(&[("broken-outpost", "1.1-1")]))
        .await;
    assert_eq!(o, CommandOutcome::Exited { code: 1 }, "{log}");
    let s = d.statuses.of(CommandId([1; 16]));
    let last = s.last().unwrap();
    assert_eq!(last.phase, Phase::Failed);
    let reason = last.reason.clone().unwrap();
    assert!(reason.contains("broken-outpost"), "{reason}");
    assert!(
        last.log_tail.contains("preinst of broken-outpost refuses"),
        "{}",
        last.log_tail
    );
    assert_eq!(d.version("broken-outpost").as_deref(), Some("1.0-1"));
}

#[tokio::test]
async fn a_failed_install_leaves_dpkg_clean_so_the_next_attempt_passes_its_prechecks() {
    let Some(d) = Device::new() else { return };
    // pulling-outpost 1.1-1 pulls in newdep-outpost, then its preinst fails:
    // apt stops with newdep unpacked but not configured.
    let (o, _) = d
        .install(31, &d.request(&[("pulling-outpost", "1.1-1")]))
        .await;
    assert_eq!(o, CommandOutcome::Exited { code: 1 });
    assert_eq!(d.version("pulling-outpost").as_deref(), Some("1.0-1"));
    let audit = tools::audit(&d.installer.inner.tools, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(audit.is_empty(), "{audit:?}");
    // The next install (another package needing newdep) is not refused by
    // the dpkg --audit pre-check.
    let (o, log) = d
        .install(32, &d.request(&[("hello-outpost", "1.1-1")]))
        .await;
    assert_eq!(
        o,
        CommandOutcome::Exited { code: 0 },
        "{log}\n{:?}",
        d.statuses.of(CommandId([32; 16]))
    );
    assert_eq!(d.version("hello-outpost").as_deref(), Some("1.1-1"));
}

#[tokio::test]
async fn a_rollback_undoes_every_attempt_of_its_deployment() {
    let Some(d) = Device::new() else { return };
    // Attempt 1 pulls in newdep-outpost, then fails on pulling-outpost.
    let (o, _) = d
        .install(41, &d.request(&[("pulling-outpost", "1.1-1")]))
        .await;
    assert_eq!(o, CommandOutcome::Exited { code: 1 });
    assert_eq!(d.version("newdep-outpost").as_deref(), Some("1.0-1"));
    // Attempt 2 (another target) upgrades hello-outpost; newdep is there.
    let mut second = d.request(&[("hello-outpost", "1.1-1")]);
    second.attempt = 2;
    let (o, log) = d.install(42, &second).await;
    assert_eq!(o, CommandOutcome::Exited { code: 0 }, "{log}");
    let s = d.statuses.of(CommandId([42; 16]));
    assert!(
        s.last()
            .unwrap()
            .changes
            .iter()
            .all(|c| c.name != "newdep-outpost"),
        "{s:?}"
    );
    // The rollback names attempt 2 (and sends none of its changes): the
    // device is back where it was before the deployment, newdep gone too.
    let mut rb = rollback_of(42);
    rb.attempt = 2;
    let o = d.rollback(43, &rb).await;
    let s = d.statuses.of(CommandId([43; 16]));
    assert_eq!(o, CommandOutcome::Exited { code: 0 }, "{s:?}");
    assert_eq!(s.last().unwrap().phase, Phase::RolledBack, "{s:?}");
    assert_eq!(d.version("hello-outpost").as_deref(), Some("1.0-1"));
    assert_eq!(d.version("pulling-outpost").as_deref(), Some("1.0-1"));
    assert_eq!(d.version("newdep-outpost"), None);
}

#[tokio::test]
async fn a_rollback_finds_the_record_under_the_id_the_appliance_names() {
    let Some(d) = Device::new() else { return };
    let (o, log) = d
        .install(51, &d.request(&[("hello-outpost", "1.1-1")]))
        .await;
    assert_eq!(o, CommandOutcome::Exited { code: 0 }, "{log}");
    // A record written before records named their deployment: found by
    // the command id alone.
    let path = d
        .work
        .join("state/records")
        .join(format!("{}.json", CommandId([51; 16])));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("deployment");
    obj.remove("attempt");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = d.rollback(52, &rollback_of(51)).await;
    let s = d.statuses.of(CommandId([52; 16]));
    assert_eq!(o, CommandOutcome::Exited { code: 0 }, "{s:?}");
    assert_eq!(d.version("hello-outpost").as_deref(), Some("1.0-1"));
    assert_eq!(d.version("newdep-outpost"), None);
}

#[tokio::test]
async fn a_held_package_is_reported_never_forced() {
    let Some(d) = Device::new() else { return };
    let (o, log) = d.install(1, &d.request(&[("held-outpost", "1.1-1")])).await;
    assert_eq!(o, CommandOutcome::Exited { code: 0 }, "{log}");
    let s = d.statuses.of(CommandId([1; 16]));
    assert_eq!(phases(&s), vec![Phase::Succeeded]);
    assert_eq!(s[0].skipped, vec!["held-outpost=1.1-1: held at 1.0-1"]);
    assert_eq!(d.version("held-outpost").as_deref(), Some("1.0-1"));
}

#[tokio::test]
async fn an_unknown_request_format_is_refused_with_the_reason() {
    let Some(d) = Device::new() else { return };
    let out: tools::OutputFn = Arc::new(|_| {});
    let o = d
        .installer
        .install(CommandId([1; 16]), 99, b"x", out, CancellationToken::new())
        .await;
    match o {
        CommandOutcome::Refused { reason } => assert!(reason.contains("format 99"), "{reason}"),
        o => panic!("{o:?}"),
    }
    assert!(d.statuses.of(CommandId([1; 16])).is_empty());
}

#[tokio::test]
async fn a_held_dpkg_lock_fails_the_install_naming_the_lock_and_its_holder() {
    let Some(d) = Device::new() else { return };
    let lock = d.root.join("var/lib/dpkg/lock-frontend");
    let ready = d.work.join("ready");
    let Ok(mut holder) = std::process::Command::new("python3")
        .arg("-c")
        .arg("import fcntl,sys,time\nf=open(sys.argv[1],'w')\nfcntl.lockf(f,fcntl.LOCK_EX)\nopen(sys.argv[2],'w').close()\ntime.sleep(30)")
        .arg(&lock)
        .arg(&ready)
        .spawn()
    else {
        eprintln!("skipped: python3 is not available to hold an fcntl lock");
        return;
    };
    let t0 = std::time::Instant::now();
    while !ready.exists() && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (o, log) = d
        .install(1, &d.request(&[("hello-outpost", "1.1-1")]))
        .await;
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(o, CommandOutcome::Exited { code: 1 }, "{log}");
    let last = d.statuses.of(CommandId([1; 16])).pop().unwrap();
    assert_eq!(last.phase, Phase::Failed);
    let reason = last.reason.unwrap();
    assert!(
        reason.contains("lock-frontend") && reason.contains(&format!("pid {}", holder.id())),
        "{reason}"
    );
    assert_eq!(d.version("hello-outpost").as_deref(), Some("1.0-1"));
}

#[tokio::test]
async fn an_install_cut_short_by_a_stop_is_reported_failed_interrupted_once_with_the_audit() {
    let Some(d) = Device::new() else { return };
    // The agent stopped after the start mark, with dpkg half-way.
    d.installer
        .inner
        .state
        .begin(&state::InFlight {
            command: CommandId([1; 16]).to_string(),
            deployment: "dep-1".into(),
            attempt: 1,
            rollback: false,
        })
        .unwrap();
    sh(
        "dpkg --root=\"$1\" --force-script-chrootless --force-not-root --unpack \"$2\" >/dev/null 2>&1",
        &[
            d.root.to_str().unwrap(),
            d.work
                .join("repo/newdep-outpost_1.0-1_all.deb")
                .to_str()
                .unwrap(),
        ],
    );
    let d = d.restarted();
    d.installer.recover().await;
    let s = d.statuses.of(CommandId([1; 16]));
    assert_eq!(phases(&s), vec![Phase::Failed]);
    let reason = s[0].reason.clone().unwrap();
    assert!(reason.starts_with("interrupted"), "{reason}");
    assert!(reason.contains("newdep-outpost"), "{reason}");
    // Reported once.
    let d = d.restarted();
    d.installer.recover().await;
    assert!(d.statuses.of(CommandId([1; 16])).is_empty());
}

#[tokio::test]
async fn a_reboot_pending_install_succeeds_after_the_agent_starts_on_a_new_boot_id() {
    let Some(d) = Device::new() else { return };
    let mut req = d.request(&[("hello-outpost", "1.1-1")]);
    req.reboot = RebootPolicy::Always;
    let (o, log) = d.install(1, &req).await;
    assert_eq!(o, CommandOutcome::Exited { code: 0 }, "{log}");
    let s = d.statuses.of(CommandId([1; 16]));
    assert_eq!(s.last().unwrap().phase, Phase::RebootPending, "{log}");
    assert_eq!(std::fs::read_to_string(&d.rebooted).unwrap(), "60\n");
    // Same boot: still pending, nothing reported.
    let d = d.restarted();
    d.installer.recover().await;
    assert!(d.statuses.of(CommandId([1; 16])).is_empty());
    // New boot id: verified and reported.
    std::fs::write(&d.boot_id, "boot-2\n").unwrap();
    let d = d.restarted();
    std::fs::write(&d.boot_id, "boot-2\n").unwrap();
    d.installer.recover().await;
    let s = d.statuses.of(CommandId([1; 16]));
    assert_eq!(phases(&s), vec![Phase::Succeeded]);
    assert_eq!(s[0].boot_id.as_deref(), Some("boot-2"));
    d.installer.recover().await;
    assert_eq!(d.statuses.of(CommandId([1; 16])).len(), 1, "reported once");
}

/// The child agent of the next test: runs the install through the
/// executor until it is killed (does nothing unless asked).
#[tokio::test]
#[ignore = "a child process of a_killed_agent_reports_the_install_interrupted_once_and_never_reruns_it"]
async fn child_agent_installing_until_killed() {
    let Ok(work) = std::env::var("OUTPOST_TEST_CHILD_WORK") else {
        return;
    };
    let work = PathBuf::from(work);
    let d = Device::with(None, work.clone(), work.join("root"));
    let ex = crate::commands::Executor::start_full(
        &work.join("ledger"),
        child_policy(),
        None,
        None,
        Some(d.installer.clone()),
    )
    .unwrap();
    let (link, mut inbox) = crate::remote::RemoteLink::new(64 * 1024);
    crate::remote::RemoteHost::session_up(&ex, link);
    crate::remote::RemoteHost::event(&ex, child_command(&d));
    // The executor sends output from its ledger: once the package's name
    // has been sent, apt's log up to here is stored, and the parent may
    // kill this agent (else the kill could beat the output into the
    // ledger, which is allowed: unstored output is not promised).
    let mut seen = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(120));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            Some(o) = inbox.output.recv() => {
                seen.extend_from_slice(&o.bytes);
                if String::from_utf8_lossy(&seen).contains("slow-outpost") {
                    let _ = std::fs::write(work.join("output-stored"), b"");
                }
            }
            _ = &mut deadline => return,
        }
    }
}

fn child_policy() -> crate::commands::Policy {
    crate::commands::Policy {
        enabled: true,
        allowed_run_as: Vec::new(),
        kill_grace: Duration::from_secs(1),
        reboot: RebootConfig::default(),
    }
}

fn child_command(d: &Device) -> outpost_proto::session::agent::AgentEvent {
    let mut req = d.request(&[("slow-outpost", "1.1-1")]);
    req.keep_previous_debs = false;
    let spec = outpost_proto::command::CommandSpec {
        kind: outpost_proto::command::CommandKind::Builtin(
            outpost_proto::command::BuiltinAction::InstallPatches {
                format: REQUEST_FORMAT,
                request: codec::encode_compressed(&req).unwrap(),
            },
        ),
        ..outpost_proto::command::CommandSpec::shell("-", "t")
    };
    outpost_proto::session::agent::AgentEvent::Command(outpost_proto::messages::Command {
        id: CommandId([21; 16]),
        spec: spec.encode().unwrap(),
    })
}

/// Every process whose command line names `dir` (apt, dpkg and the
/// maintainer script of the child's install), killed as systemd kills
/// the agent's control group.
fn kill_processes_naming(dir: &Path) {
    let needle = dir.display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle)
            && let Some(p) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

#[tokio::test]
async fn a_killed_agent_reports_the_install_interrupted_once_and_never_reruns_it() {
    let Some(d) = Device::new() else { return };
    let marker = d.work.join("preinst-started");
    let stored = d.work.join("output-stored");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "install::tests::child_agent_installing_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("OUTPOST_TEST_CHILD_WORK", &d.work)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !(marker.exists() && stored.exists()) && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(marker.exists(), "the child's install reached the preinst");
    assert!(
        stored.exists(),
        "the child stored apt's log naming the package"
    );
    // The ledger (sled) flushes stored output every 200 ms: what was not
    // flushed when the agent dies is not promised (the appliance has what
    // it acknowledged). Give the flusher a few periods before the kill.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // kill -9 of the agent and of everything it started.
    child.kill().unwrap();
    child.wait().unwrap();
    kill_processes_naming(&d.work);
    std::fs::remove_file(&marker).unwrap();
    // The agent starts again on the same ledger and state.
    let d = d.restarted();
    let ex = crate::commands::Executor::start_full(
        &d.work.join("ledger"),
        child_policy(),
        None,
        None,
        Some(d.installer.clone()),
    )
    .unwrap();
    d.installer.recover().await;
    let (link, mut inbox) = crate::remote::RemoteLink::new(64 * 1024);
    crate::remote::RemoteHost::session_up(&ex, link);
    let id = CommandId([21; 16]);
    // The output the child stored (apt's log up to the kill) goes first,
    // then the result.
    let mut log = Vec::new();
    let result = loop {
        tokio::select! {
            i = inbox.rx.recv() => {
                if let Some(crate::remote::LinkInput::Result(r)) = i {
                    break r;
                }
            }
            Some(o) = inbox.output.recv() => {
                log.extend_from_slice(&o.bytes);
                crate::remote::RemoteHost::event(
                    &ex,
                    outpost_proto::session::agent::AgentEvent::OutputAcked {
                        id: o.id,
                        up_to: o.offset + o.bytes.len() as u64,
                    },
                );
            }
            _ = tokio::time::sleep(Duration::from_secs(15)) => panic!("no result"),
        }
    };
    assert!(
        String::from_utf8_lossy(&log).contains("slow-outpost"),
        "the log up to the kill is kept"
    );
    assert_eq!(result.id, id);
    assert_eq!(result.outcome, CommandOutcome::Interrupted);
    let s = d.statuses.of(id);
    assert_eq!(phases(&s), vec![Phase::Failed], "{s:?}");
    let reason = s[0].reason.clone().unwrap();
    assert!(reason.starts_with("interrupted"), "{reason}");
    assert!(
        reason.contains("slow-outpost"),
        "the audit names it: {reason}"
    );
    // Delivered again: never re-run.
    crate::remote::RemoteHost::event(&ex, child_command(&d));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!marker.exists(), "the install ran again");
    assert_eq!(d.statuses.of(id).len(), 1);
}

#[test]
fn the_patch_install_section_of_agent_toml_parses_and_unknown_keys_are_errors() {
    let cfg: crate::config::AgentConfig = toml::from_str(
        "[patch_install]\nenabled = false\napt_extra_args = [\"-o\", \"Dir=/srv/d1\"]\nroot = \"/srv/d1\"\napt_timeout = \"1h\"\nreboot_delay = \"60s\"\n",
    )
    .unwrap();
    assert!(!cfg.patch_install.enabled);
    assert_eq!(cfg.patch_install.root, PathBuf::from("/srv/d1"));
    assert_eq!(cfg.patch_install.apt_timeout, Duration::from_secs(3600));
    assert!(
        PatchInstaller::from_config(&cfg, Path::new("/x"), Arc::new(Statuses::default())).is_none()
    );
    assert!(
        toml::from_str::<crate::config::AgentConfig>("[patch_install]\nforce = true\n").is_err()
    );
    let on = crate::config::AgentConfig::default();
    let i =
        PatchInstaller::from_config(&on, Path::new("/x"), Arc::new(Statuses::default())).unwrap();
    assert_eq!(i.inner.state.0, PathBuf::from("/x/install"));
}

#[test]
fn a_request_without_a_proxy_goes_through_the_scanners_site_cache_and_direct_means_none() {
    let dir = tempfile::tempdir().unwrap();
    let make = |proxy: Option<&str>| {
        PatchInstaller::new(
            InstallTools::default(),
            crate::scan::PackageTools {
                apt_proxy: proxy.map(str::to_string),
                ..crate::scan::PackageTools::default()
            },
            RebootConfig {
                command: "true".into(),
                dpkg_lock: dir.path().join("lock"),
                boot_id_path: dir.path().join("boot_id"),
            },
            Duration::from_secs(1),
            dir.path().join("state"),
            Arc::new(Statuses::default()),
        )
    };
    let site = make(Some("http://cache:3142/"));
    assert_eq!(site.proxy_for(None).as_deref(), Some("http://cache:3142/"));
    assert_eq!(
        site.proxy_for(Some("http://other:8080".into())).as_deref(),
        Some("http://other:8080"),
        "the appliance's proxy wins"
    );
    assert_eq!(make(Some("direct")).proxy_for(None), None);
    assert_eq!(make(None).proxy_for(None), None);
}

#[tokio::test]
async fn every_apt_run_of_an_install_bounds_a_stalled_download_and_retries_it() {
    let Some(d) = Device::new() else { return };
    // apt-get that records its arguments (one run a line) and fails.
    let calls = d.work.join("apt-calls");
    let fake = d.work.join("fake-apt-get");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$*\" >> {}\nexit 100\n", calls.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let inner = &d.installer.inner;
    let installer = PatchInstaller::new(
        InstallTools {
            apt_get: fake,
            ..inner.tools.clone()
        },
        inner.scan.clone(),
        inner.reboot.clone(),
        inner.kill_grace,
        d.work.join("state-fake"),
        d.statuses.clone(),
    );
    let bytes = codec::encode_compressed(&d.request(&[("hello-outpost", "1.1-1")])).unwrap();
    let out: tools::OutputFn = Arc::new(|_| {});
    let o = installer
        .install(
            CommandId([9; 16]),
            REQUEST_FORMAT,
            &bytes,
            out,
            CancellationToken::new(),
        )
        .await;
    assert_eq!(o, CommandOutcome::Exited { code: 1 });
    let calls = std::fs::read_to_string(&calls).unwrap();
    let runs: Vec<&str> = calls.lines().collect();
    // update, download of the previous version's .deb, download-only.
    assert_eq!(runs.len(), 3, "{calls}");
    assert!(runs[0].ends_with(" update"), "{calls}");
    assert!(
        runs[1].contains(" download hello-outpost:all=1.0-1"),
        "{calls}"
    );
    assert!(runs[2].contains("--download-only"), "{calls}");
    for run in &runs {
        assert!(
            run.starts_with("-o Acquire::http::Timeout=30 -o Acquire::Retries=3 -o Dir="),
            "the acquire bounds come first, the configured options may override them: {run}"
        );
    }
}

#[test]
fn the_apt_acquire_bounds_are_configurable_in_patch_install() {
    let cfg: crate::config::AgentConfig = toml::from_str(
        "[patch_install]\napt_http_timeout = \"1500ms\"\napt_retries = 0\napt_extra_args = [\"-o\", \"Acquire::Retries=8\"]\n",
    )
    .unwrap();
    assert_eq!(
        cfg.patch_install.apt_args(),
        [
            "-o",
            "Acquire::http::Timeout=2",
            "-o",
            "Acquire::Retries=0",
            "-o",
            "Acquire::Retries=8"
        ]
    );
    let d = InstallTools::default();
    assert_eq!(d.apt_http_timeout, Duration::from_secs(30));
    assert_eq!(d.apt_retries, 3);
}
