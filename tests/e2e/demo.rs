//! `scripts/demo.sh`, the README's first command: with `--check` it starts
//! the appliance, an agent, a central with the site joined, a console login
//! and an example rule, verifies each, and stops them all.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_tests::{bin, free_port, scratch};

/// Addresses the demo listens on.
struct Ports {
    quic: String,
    admin: String,
    cache: String,
    central: String,
    central_http: String,
}

impl Ports {
    fn free() -> Ports {
        let port = || format!("127.0.0.1:{}", free_port());
        Ports {
            quic: port(),
            admin: port(),
            cache: port(),
            central: port(),
            central_http: port(),
        }
    }
}

/// Runs `scripts/demo.sh --check` on `data` with the test binaries; kills
/// its whole process group if it takes longer than `limit`.
fn demo_check(data: &Path, ports: &Ports, limit: Duration) -> (bool, String, String) {
    use std::os::unix::process::CommandExt;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = bin("outpost").parent().unwrap().to_path_buf();
    let _ = bin("outpost-central");
    let out = data.with_extension("stdout");
    let err = data.with_extension("stderr");
    let mut child = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .arg("--check")
        .env("DEMO_NO_BUILD", "1")
        .env("BIN", &bin_dir)
        .env("DATA", data)
        .env("QUIC", &ports.quic)
        .env("ADMIN", &ports.admin)
        .env("CACHE", &ports.cache)
        .env("CENTRAL", &ports.central)
        .env("CENTRAL_HTTP", &ports.central_http)
        .env("UPLINK_INTERVAL", "1s")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .process_group(0)
        .spawn()
        .expect("running scripts/demo.sh");
    let pgid = child.id().to_string();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > limit {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Nothing it started is left running.
    let left = Command::new("kill")
        .args(["-0", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    assert!(!left, "demo.sh left processes running");
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    (
        status.is_some_and(|s| s.success()),
        stdout,
        format!(
            "{stderr}{}",
            if status.is_none() {
                "\n(timed out)"
            } else {
                ""
            }
        ),
    )
}

#[test]
fn demo_check_starts_the_whole_shape_verifies_it_and_stops_cleanly() {
    let tmp = scratch("demo");
    let data = tmp.path().join("demo-data");
    let mut ports = Ports::free();
    let (ok, out, err) = demo_check(&data, &ports, Duration::from_secs(180));
    assert!(ok, "demo.sh --check failed:\n{out}\n{err}");
    assert!(out.contains("demo check passed"), "{out}");
    assert!(
        err.contains("stopped: outpost-central outpost outpost-agent"),
        "{err}"
    );
    // The cache listened where CACHE said.
    let addr = std::fs::read_to_string(data.join("cache.addr")).unwrap();
    assert_eq!(addr.trim(), ports.cache);
    // The console login is kept, private.
    let login = data.join("console-login.txt");
    let text = std::fs::read_to_string(&login).unwrap();
    assert!(
        text.contains("tenant   demo-msp") && text.contains("password "),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&login).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Again on the same state: enrolled, joined and the rule already there.
    let (ok, out, err) = demo_check(&data, &ports, Duration::from_secs(180));
    assert!(ok, "second demo.sh --check failed:\n{out}\n{err}");
    assert!(out.contains("demo check passed"), "{out}");
    let joined = std::fs::read_to_string(data.join("demo-joined")).unwrap();

    // Central moved: the site joins it again.
    ports.central = format!("127.0.0.1:{}", free_port());
    let (ok, out, err) = demo_check(&data, &ports, Duration::from_secs(180));
    assert!(
        ok,
        "demo.sh --check after moving central failed:\n{out}\n{err}"
    );
    let rejoined = std::fs::read_to_string(data.join("demo-joined")).unwrap();
    assert_ne!(joined, rejoined);
    assert!(rejoined.starts_with(&ports.central), "{rejoined}");
}

#[test]
fn demo_binds_the_cache_to_loopback_unless_told_otherwise() {
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo.sh"))
            .unwrap();
    assert!(
        script.contains("CACHE=${CACHE:-127.0.0.1:3142}"),
        "default CACHE"
    );
    assert!(
        script.contains("--cache-listen \"$CACHE\""),
        "CACHE is used"
    );
    assert!(!script.contains("0.0.0.0:3142 ") || script.contains("CACHE=0.0.0.0:3142"));
}
