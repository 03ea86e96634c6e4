//! Harness for Outpost's end-to-end tests: starts real `outpost` and
//! `outpost-agent` processes on 127.0.0.1 with their own data directories,
//! talks to them through the real CLI and admin API, and cleans up.
//!
//! The binaries are the ones `cargo test --workspace` builds into the same
//! target directory as the test binary.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::de::DeserializeOwned;

/// Builds the workspace binaries once per test run, so that
/// `cargo test -p outpost-tests` never runs stale `outpost`/`outpost-agent`
/// binaries (cargo only builds a package's binaries for its own tests).
fn ensure_binaries_built(profile_dir: &Path) {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--bins", "--workspace"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        if let Some(target) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        cmd.arg("--manifest-path").arg(manifest);
        let status = cmd.status().expect("running cargo build for the binaries");
        assert!(status.success(), "building the workspace binaries failed");
    });
}

/// Path of a workspace binary next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/e2e-<hash>  ->  target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    ensure_binaries_built(dir);
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found after building the workspace binaries",
        p.display()
    );
    p
}

/// A free TCP port and a free UDP port on 127.0.0.1 (the same number when possible).
pub fn free_port() -> u16 {
    // Ports come from below the kernel's ephemeral range (32768..61000 by
    // default): a port picked from that range can be taken by any outgoing
    // socket (an agent's QUIC client, an HTTP client) between the probe and
    // the server's bind, which made tests flaky. Each test process walks its
    // own stripe of 10000..32000, offset by its pid, so concurrent test
    // binaries do not hand out the same ports either.
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(997) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        let tcp_free = TcpListener::bind(("127.0.0.1", port)).is_ok();
        if tcp_free && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

/// Held by the tests that load the machine or measure under load (the
/// load-generator smoke runs, the handshake storms, the static agent's
/// compile), so that at most one of them runs at a time.
/// `scripts/test.sh` runs more tests at once than there are cores (most
/// end-to-end tests wait on processes and sockets, not the CPU); two load
/// tests side by side on two cores could starve each other's acks past
/// their timeouts. A test that panicked while holding it releases it.
pub fn load_test_slot() -> std::sync::MutexGuard<'static, ()> {
    static SLOT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SLOT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills a child process on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
    pub stderr_path: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> anyhow::Result<Proc> {
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)?;
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stdout_path)?;
        let child = cmd
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .env("OUTPOST_LOG", "info,outpost_appliance=debug,quinn=warn")
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Proc {
            child: Some(child),
            name: name.to_string(),
            stderr_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded), then SIGKILL.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a command to completion (bounded).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running command")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running appliance with its own data directory and ports.
pub struct Appliance {
    pub dir: PathBuf,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    pub extra_args: Vec<String>,
    pub proc: Option<Proc>,
    pub log_dir: PathBuf,
    /// The LAN cache's port, kept across restarts (agents and apt name it
    /// as their proxy).
    pub cache_port: u16,
    starts: u32,
}

impl Appliance {
    /// Starts an appliance in `root/appliance` with `--offline-grace 1s`.
    pub fn start(root: &Path) -> Appliance {
        Self::start_with(root, &["--offline-grace", "1s"])
    }

    pub fn start_with(root: &Path, extra: &[&str]) -> Appliance {
        let dir = root.join("appliance");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut a = Appliance {
            dir,
            quic: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            proc: None,
            log_dir: root.to_path_buf(),
            cache_port: free_port(),
            starts: 0,
        };
        a.restart();
        a
    }

    /// (Re)starts the process on the same directory and ports.
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "appliance already running");
        let _ = std::fs::remove_file(self.dir.join("admin.addr"));
        self.starts += 1;
        let mut cmd = Command::new(bin("outpost"));
        cmd.arg("serve")
            .arg("--data")
            .arg(&self.dir)
            .arg("--quic-listen")
            .arg(self.quic.to_string())
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .arg("--cache-listen")
            .arg(format!("127.0.0.1:{}", self.cache_port))
            .args(&self.extra_args);
        let p = Proc::spawn(
            &format!("appliance-{}", self.starts),
            &mut cmd,
            &self.log_dir,
        )
        .expect("spawn appliance");
        self.proc = Some(p);
        let admin_addr = self.dir.join("admin.addr");
        wait_for(Duration::from_secs(30), "appliance admin API", || {
            if let Some(p) = self.proc.as_mut()
                && let Some(st) = p.try_exit()
            {
                panic!("appliance exited early ({st}):\n{}", p.stderr());
            }
            if !admin_addr.exists() {
                return None;
            }
            http_get(self.admin, "/healthz", None).ok()
        });
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.take().and_then(|mut p| p.terminate())
    }

    pub fn stderr(&self) -> String {
        self.proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }

    /// Runs `outpost --data DIR <args>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(Command::new(bin("outpost"))
            .arg("--data")
            .arg(&self.dir)
            .args(args))
    }

    /// Runs the CLI and returns stdout, failing the test on error.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "outpost {args:?} failed: {}",
            stderr(&o)
        );
        stdout(&o)
    }

    pub fn fingerprint(&self) -> String {
        self.cli_ok(&["ca-fingerprint"]).trim().to_string()
    }

    pub fn token(&self, tenant: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--tenant", tenant];
        args.extend_from_slice(extra);
        self.cli_ok(&args).trim().to_string()
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_string()
    }

    /// GET an admin API path as JSON.
    pub fn api<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let body = http_get(self.admin, path, Some(&self.admin_token()))?;
        serde_json::from_str(&body).with_context(|| format!("decoding {path}: {body}"))
    }

    /// The Prometheus exposition.
    pub fn metrics_text(&self) -> String {
        http_get(self.admin, "/metrics", None).unwrap_or_default()
    }

    /// Value of one sample line of `/metrics` (exact series text), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn device(&self, id: &str) -> serde_json::Value {
        self.api(&format!("/api/v1/devices/{id}")).expect("device")
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Minimal HTTP/1.1 GET over a std TcpStream (no client runtime in the harness).
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<String> {
    http_request(addr, "GET", path, token, None).and_then(|(status, body)| {
        if status == 200 {
            Ok(body)
        } else {
            bail!("GET {path}: {status} {body}")
        }
    })
}

/// One HTTP/1.1 request; returns (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("bad HTTP answer: {text}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line: {head}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// An agent state directory, enrolled or not, and its process.
pub struct Agent {
    pub state: PathBuf,
    pub proc: Option<Proc>,
    pub log_dir: PathBuf,
    pub name: String,
    pub device_id: String,
    runs: u32,
}

impl Agent {
    /// Enrolls a new agent against `app` with a fresh token.
    pub fn enroll(root: &Path, name: &str, app: &Appliance) -> Agent {
        let token = app.token("acme", &["--customer", "dental"]);
        let state = root.join(name);
        let o = Self::enroll_cmd(&state, &app.quic.to_string(), &token, &app.fingerprint());
        assert!(o.status.success(), "enroll failed: {}", stderr(&o));
        let device_id = stdout(&o).trim().to_string();
        assert_eq!(
            device_id.len(),
            16,
            "enroll prints the device id: {device_id:?}"
        );
        // Package scans off unless a test's own agent.toml turns them on
        // (tests/e2e/patches.rs): tests that account for every record kind
        // (durability, frames) count heartbeats, metrics and inventories,
        // and each scan runs `apt-get -s` (seconds of CPU on this machine).
        std::fs::write(state.join("agent.toml"), "package_scan = false\n")
            .expect("write agent.toml");
        Agent {
            state,
            proc: None,
            log_dir: root.to_path_buf(),
            name: name.to_string(),
            device_id,
            runs: 0,
        }
    }

    pub fn enroll_cmd(state: &Path, appliance: &str, token: &str, fingerprint: &str) -> Output {
        run(Command::new(bin("outpost-agent"))
            .args([
                "enroll",
                "--appliance",
                appliance,
                "--token",
                token,
                "--ca-fingerprint",
                fingerprint,
                "--state",
            ])
            .arg(state))
    }

    /// Starts `outpost-agent run` with 1 s heartbeats and metrics.
    pub fn start(&mut self) {
        self.start_with(&["--heartbeat-interval", "1s", "--metrics-interval", "1s"]);
    }

    pub fn start_with(&mut self, args: &[&str]) {
        assert!(self.proc.is_none(), "agent already running");
        self.runs += 1;
        let mut cmd = Command::new(bin("outpost-agent"));
        cmd.arg("run").arg("--state").arg(&self.state).args(args);
        self.proc = Some(
            Proc::spawn(
                &format!("{}-{}", self.name, self.runs),
                &mut cmd,
                &self.log_dir,
            )
            .expect("spawn agent"),
        );
    }

    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.take().and_then(|mut p| p.terminate())
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn stderr(&self) -> String {
        self.proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }
}

/// A scratch directory, kept (and printed) when `OUTPOST_TEST_KEEP` is set.
pub fn scratch(test: &str) -> tempfile::TempDir {
    let keep = std::env::var_os("OUTPOST_TEST_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix(&format!("outpost-{test}-"))
        .disable_cleanup(keep)
        .tempdir()
        .expect("tempdir");
    if keep {
        eprintln!("test {test}: keeping {}", dir.path().display());
    }
    dir
}

/// Reads a JSON number field.
pub fn num(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key)
        .and_then(|x| x.as_u64())
        .unwrap_or_else(|| panic!("no numeric {key} in {v}"))
}

/// Reads a JSON string field.
pub fn text<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key)
        .and_then(|x| x.as_str())
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
}

/// Raw QUIC access with a real agent identity, for protocol-abuse tests.
pub mod raw {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::time::Duration;

    use anyhow::Context;
    use outpost_agent::identity::{self, StateDir};
    use outpost_agent::net;
    use outpost_proto::messages::{AgentFrame, ApplianceFrame, Hello};
    use outpost_proto::{ALPN_SESSION, APPLIANCE_SERVER_NAME, PROTOCOL_VERSION, tls};

    /// Client config trusting `server_ca_pem` and presenting the identity in `state`.
    pub fn client_config(state: &Path, server_ca_pem: &str) -> anyhow::Result<quinn::ClientConfig> {
        let ident = identity::load(&StateDir(state.to_path_buf()))?;
        let ca = tls::cert_from_pem(server_ca_pem, "server CA")?;
        net::quic_client_config(tls::mtls_client_config(
            ca,
            vec![ident.cert],
            ident.key,
            ALPN_SESSION,
        )?)
    }

    /// Opens a session and completes Hello/Welcome.
    pub async fn session(
        addr: SocketAddr,
        cfg: quinn::ClientConfig,
    ) -> anyhow::Result<(
        quinn::Endpoint,
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
    )> {
        let ep = net::client_endpoint(addr)?;
        let conn = ep
            .connect_with(cfg, addr, APPLIANCE_SERVER_NAME)?
            .await
            .context("connect")?;
        let (mut send, mut recv) = conn.open_bi().await.context("open stream")?;
        let hello = outpost_proto::frame::encode_frame(
            &AgentFrame::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                agent_version: "raw-test".into(),
                heartbeat_interval_ms: 60_000,
                metrics_interval_ms: 60_000,
            }),
            outpost_proto::DEFAULT_MAX_FRAME_BYTES,
        )?;
        send.write_all(&hello).await?;
        let mut reader =
            outpost_proto::frame::FrameReader::new(outpost_proto::DEFAULT_MAX_FRAME_BYTES);
        let welcome = tokio::time::timeout(
            Duration::from_secs(10),
            reader.next::<ApplianceFrame, _>(&mut recv),
        )
        .await
        .context("welcome timeout")??;
        match welcome {
            Some(ApplianceFrame::Welcome(_)) => Ok((ep, conn, send, recv)),
            other => anyhow::bail!("expected Welcome, got {other:?}"),
        }
    }

    /// Waits for the connection to close and returns the application error code.
    pub async fn close_code(conn: &quinn::Connection) -> Option<u64> {
        match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(a)) => Some(a.error_code.into_inner()),
            _ => None,
        }
    }
}

/// A real HTTP server on 127.0.0.1 that records webhook POSTs.
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value, Instant)>>>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WebhookReceiver {
    pub fn start() -> WebhookReceiver {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook receiver");
        let addr = listener.local_addr().expect("addr");
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (reqs, fail) = (requests.clone(), failing.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let (reqs, fail) = (reqs.clone(), fail.clone());
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head_end, len) = loop {
                        let Ok(n) = s.read(&mut chunk) else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (p + 4, len);
                        }
                    };
                    while buf.len() < head_end + len {
                        let Ok(n) = s.read(&mut chunk) else { return };
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let body: serde_json::Value =
                        serde_json::from_slice(&buf[head_end..(head_end + len).min(buf.len())])
                            .unwrap_or(serde_json::Value::Null);
                    let failing = fail.load(std::sync::atomic::Ordering::SeqCst);
                    if !failing {
                        reqs.lock().unwrap().push((path, body, Instant::now()));
                    }
                    let status = if failing {
                        "500 Internal Server Error"
                    } else {
                        "200 OK"
                    };
                    let _ = write!(
                        s,
                        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                });
            }
        });
        WebhookReceiver {
            addr,
            requests,
            failing,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer 500 to everything (and record nothing) while set.
    pub fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Bodies received on `path`.
    pub fn bodies(&self, path: &str) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, b, _)| b.clone())
            .collect()
    }

    /// Waits for a body on `path` matching `pred`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        path: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(timeout, what, || {
            self.bodies(path).into_iter().find(|b| pred(b))
        })
    }
}

impl Appliance {
    /// Starts an appliance whose data directory holds `outpost.toml` = `toml`.
    pub fn start_with_config(root: &Path, toml: &str) -> Appliance {
        std::fs::create_dir_all(root.join("appliance")).expect("mkdir");
        std::fs::write(root.join("appliance").join("outpost.toml"), toml).expect("write config");
        Self::start(root)
    }

    /// POSTs JSON to the admin API; returns (status, body).
    pub fn api_post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.api_send("POST", path, Some(body))
    }

    pub fn api_send(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let text = body.map(|b| b.to_string());
        let (status, out) = http_request(
            self.admin,
            method,
            path,
            Some(&self.admin_token()),
            text.as_deref(),
        )
        .expect("api request");
        (
            status,
            serde_json::from_str(&out).unwrap_or(serde_json::Value::String(out)),
        )
    }
}

/// One HTTP/1.1 request with the given headers, sent as is (no
/// Content-Type added): (status, head, body).
pub fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, head.to_string(), body)
}

impl Agent {
    /// Enrolls a new agent against `app` with a token of `tenant` and
    /// `customer`.
    pub fn enroll_as(
        root: &Path,
        name: &str,
        app: &Appliance,
        tenant: &str,
        customer: &str,
    ) -> Agent {
        let token = app.token(tenant, &["--customer", customer]);
        let state = root.join(name);
        let o = Self::enroll_cmd(&state, &app.quic.to_string(), &token, &app.fingerprint());
        assert!(o.status.success(), "enroll failed: {}", stderr(&o));
        let device_id = stdout(&o).trim().to_string();
        Agent {
            state,
            proc: None,
            log_dir: root.to_path_buf(),
            name: name.to_string(),
            device_id,
            runs: 0,
        }
    }
}

/// Enrollment requests built by hand (a CSR the agent would never send).
pub mod raw_enroll {
    use std::net::SocketAddr;
    use std::time::Duration;

    use anyhow::{Context, anyhow};
    use outpost_agent::net;
    use outpost_proto::frame::{FrameReader, encode_frame};
    use outpost_proto::messages::{EnrollRequest, EnrollResponse};
    use outpost_proto::tls::{self, CaFingerprint, PinnedCaVerifier};
    use outpost_proto::{ALPN_ENROLL, APPLIANCE_SERVER_NAME, DEFAULT_MAX_FRAME_BYTES};

    /// Sends `req` to the appliance at `addr` (CA pinned to `fingerprint`)
    /// and returns its answer.
    pub async fn send(
        addr: SocketAddr,
        fingerprint: &str,
        req: &EnrollRequest,
    ) -> anyhow::Result<EnrollResponse> {
        let pin: CaFingerprint = fingerprint.parse().map_err(|e| anyhow!("{e}"))?;
        let cfg = net::quic_client_config(tls::pinned_client_config(
            PinnedCaVerifier::new(pin),
            ALPN_ENROLL,
        )?)?;
        let ep = net::client_endpoint(addr)?;
        let conn = ep
            .connect_with(cfg, addr, APPLIANCE_SERVER_NAME)?
            .await
            .context("connect")?;
        let (mut send, mut recv) = conn.open_bi().await.context("open stream")?;
        send.write_all(&encode_frame(req, DEFAULT_MAX_FRAME_BYTES)?)
            .await?;
        let _ = send.finish();
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME_BYTES);
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            reader.next::<EnrollResponse, _>(&mut recv),
        )
        .await
        .context("answer timeout")??
        .ok_or_else(|| anyhow!("no answer"))?;
        conn.close(0u32.into(), b"done");
        Ok(resp)
    }
}
