//! A private PostgreSQL server for tests: `initdb` + `postgres` on a
//! temporary directory, listening only on a Unix socket inside it, started
//! once per test process and stopped when that process exits (a watchdog
//! shell stops the server and removes the directory when the test process
//! is gone, so no server outlives `cargo test`). Each test gets its own
//! database ([`TestCluster::fresh_database`]), so tests run in parallel.
//!
//! As root (CI, developer machines here), the server runs as the
//! `postgres` system user through `setpriv` (`initdb` refuses root). The
//! binaries are looked up in `PATH` and in `/usr/lib/postgresql/*/bin`
//! (Debian's `postgresql` package); without them [`TestCluster::shared`]
//! returns `None` and the caller prints a skip message
//! (`scripts/deps.sh --test` installs them, so CI never skips).
//!
//! Test code only: it owns no production behaviour and must not be used by
//! `serve`. It lives in the library (not `#[cfg(test)]`) so the end-to-end
//! tests crate can start the same server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A running private server (see the module docs).
#[derive(Debug)]
pub struct TestCluster {
    /// Directory of the Unix socket (also the data directory's parent).
    pub socket_dir: PathBuf,
    pub port: u16,
    /// The superuser to connect as.
    pub user: String,
    next_db: AtomicU64,
    /// `pg_ctl` and the server's options, for a server of its own
    /// ([`TestCluster::own`]) that tests stop and start again.
    ctl: Option<Ctl>,
}

#[derive(Debug)]
struct Ctl {
    pg_ctl: PathBuf,
    data: PathBuf,
    options: String,
    root: bool,
}

/// Becoming the `postgres` user (as root): `setpriv` execs the program.
const SETPRIV: [&str; 5] = [
    "--reuid=postgres",
    "--regid=postgres",
    "--init-groups",
    "--reset-env",
    "--",
];

static SHARED: OnceLock<Option<TestCluster>> = OnceLock::new();

/// Where the PostgreSQL server binaries are, if installed.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Some(paths) = std::env::var_os("PATH") {
        for p in std::env::split_paths(&paths) {
            if p.join("initdb").is_file() && p.join("postgres").is_file() {
                return Some(p);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    // No libc dependency: the effective uid from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

impl TestCluster {
    /// The server of this test process, started on first use; `None` when
    /// the PostgreSQL binaries are not installed. Panics if they are
    /// installed but the server does not start (a broken set-up must fail
    /// the tests, not skip them).
    pub fn shared() -> Option<&'static TestCluster> {
        SHARED
            .get_or_init(|| {
                let bin = find_bin_dir()?;
                Some(TestCluster::start(&bin).unwrap_or_else(|e| {
                    panic!(
                        "starting the test PostgreSQL server from {}: {e}",
                        bin.display()
                    )
                }))
            })
            .as_ref()
    }

    /// Like [`TestCluster::shared`], printing why tests are skipped.
    pub fn shared_or_skip(test: &str) -> Option<&'static TestCluster> {
        let c = Self::shared();
        if c.is_none() {
            eprintln!(
                "SKIP {test}: PostgreSQL server binaries (initdb, postgres) not found; \
                 install Debian's `postgresql` package (scripts/deps.sh --test)"
            );
        }
        c
    }

    /// A server of the caller's own (not shared with other tests), which
    /// [`TestCluster::stop_immediately`] kills and [`TestCluster::restart`]
    /// starts again on the same data, socket and port (fault tests). It is
    /// stopped and removed when the test process exits. `None` when the
    /// binaries are not installed (skip message printed).
    pub fn own_or_skip(test: &str) -> Option<TestCluster> {
        let Some(bin) = find_bin_dir() else {
            Self::shared_or_skip(test);
            return None;
        };
        Some(
            TestCluster::start_with(&bin, true)
                .unwrap_or_else(|e| panic!("starting a test PostgreSQL server: {e}")),
        )
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let ctl = self
            .ctl
            .as_ref()
            .ok_or("only a server of a test's own is stopped and started")?;
        let mut cmd = if ctl.root {
            let mut c = Command::new("setpriv");
            c.args(SETPRIV).arg(&ctl.pg_ctl);
            c
        } else {
            Command::new(&ctl.pg_ctl)
        };
        cmd.arg("-D").arg(&ctl.data).args(args);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Kills the server as a crash would (`pg_ctl stop -m immediate`):
    /// connections drop, nothing is shut down cleanly.
    pub fn stop_immediately(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"])
            .unwrap_or_else(|e| panic!("stopping the test server: {e}"));
    }

    /// Starts the server again after [`TestCluster::stop_immediately`]
    /// (crash recovery replays the log) and waits until it accepts
    /// connections.
    pub fn restart(&self) {
        let (log, options) = match &self.ctl {
            Some(c) => (
                // The first log is the watchdog's (written as the caller);
                // pg_ctl writes its own as the server's user.
                self.socket_dir.join("log-restarted").display().to_string(),
                c.options.clone(),
            ),
            None => panic!("only a server of a test's own is restarted"),
        };
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", &log, "-o", &options])
            .unwrap_or_else(|e| panic!("starting the test server again: {e}"));
    }

    fn start(bin: &Path) -> Result<TestCluster, String> {
        Self::start_with(bin, false)
    }

    fn start_with(bin: &Path, own: bool) -> Result<TestCluster, String> {
        let root = is_root();
        let dir = std::env::temp_dir().join(format!(
            "outpost-pg-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let data = dir.join("data");
        let as_server = |program: &Path| -> Command {
            if root {
                let mut c = Command::new("setpriv");
                c.args(SETPRIV).arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        if root {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .map_err(|e| format!("chown: {e}"))?
                .success();
            if !ok {
                return Err("chown of the cluster directory to postgres failed".into());
            }
        }
        let user = if root {
            "postgres".to_string()
        } else {
            std::env::var("USER").unwrap_or_else(|_| "postgres".into())
        };
        let out = as_server(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", &user, "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let port = 5432;
        // A server of a test's own is killed (`stop -m immediate`): a
        // commit must be in the log when it returns (synchronous_commit
        // on), as in production; fsync stays off (the machine does not
        // crash, the OS keeps what was written).
        let options = format!(
            "-k {} -c listen_addresses= -p {port} -c fsync=off \
             -c synchronous_commit={} -c full_page_writes=off -c max_connections=200",
            dir.display(),
            if own { "on" } else { "off" }
        );
        let ctl = Ctl {
            pg_ctl: bin.join("pg_ctl"),
            data: data.clone(),
            options: options.clone(),
            root,
        };
        // The watchdog: starts postgres, then stops it (fast shutdown) and
        // removes the directory once the test process is gone.
        let postgres = bin.join("postgres");
        let server = format!("{} -D {} {options}", postgres.display(), data.display());
        let server = if root {
            // setpriv execs (no child in between), so the watchdog's
            // signal reaches postgres itself.
            format!("setpriv {} {server}", SETPRIV.join(" "))
        } else {
            server
        };
        let script = if own {
            // Tests stop and start this one: the watchdog follows the
            // test process only and stops whatever server runs then.
            let stop = format!(
                "{}{} -D {} stop -m immediate -w",
                if root {
                    format!("setpriv {} ", SETPRIV.join(" "))
                } else {
                    String::new()
                },
                ctl.pg_ctl.display(),
                data.display()
            );
            format!(
                "{server} >>{log} 2>&1 & \
                 while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; \
                 {stop} >/dev/null 2>&1; rm -rf {dir}",
                log = dir.join("log").display(),
                parent = std::process::id(),
                dir = dir.display(),
            )
        } else {
            format!(
                "{server} >{log} 2>&1 & pid=$!; \
                 while kill -0 {parent} 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 0.5; done; \
                 kill -INT $pid 2>/dev/null; wait $pid; rm -rf {dir}",
                log = dir.join("log").display(),
                parent = std::process::id(),
                dir = dir.display(),
            )
        };
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting postgres: {e}"))?;
        let socket = dir.join(format!(".s.PGSQL.{port}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = || {
            socket.exists()
                && std::fs::read_to_string(data.join("postmaster.pid"))
                    .is_ok_and(|p| p.lines().any(|l| l.trim() == "ready"))
        };
        while !ready() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
                return Err(format!("the server did not start within 30 s: {log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(TestCluster {
            socket_dir: dir,
            port,
            user,
            next_db: AtomicU64::new(0),
            ctl: own.then_some(ctl),
        })
    }

    /// Connection string of database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port={} user={} dbname={db}",
            self.socket_dir.display(),
            self.port,
            self.user
        )
    }

    /// Database `db` as a `postgres://` URL (what `serve --store` takes).
    pub fn postgres_url(&self, db: &str) -> String {
        format!(
            "postgresql:///{db}?host={}&port={}&user={}",
            self.socket_dir.display(),
            self.port,
            self.user
        )
    }

    /// Creates a new empty database and returns its connection string.
    pub async fn fresh_database(&self) -> String {
        let name = self.create_database().await;
        self.url(&name)
    }

    /// Creates a new empty database and returns its name.
    pub async fn create_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{n}");
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test server: {e}"));
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        drop(client);
        let _ = task.await;
        name
    }
}
