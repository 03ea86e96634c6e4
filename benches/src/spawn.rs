//! Starting an appliance for a scenario (temporary data directory, loopback
//! ports) and creating a multi-use enrollment token through its CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use outpost_proto::tls::CaFingerprint;

/// A running appliance started by the harness.
pub struct Spawned {
    pub bin: PathBuf,
    pub data: PathBuf,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    pub extra: Vec<String>,
    pub child: Option<Child>,
}

/// The `outpost` binary next to this executable (same target directory).
pub fn sibling_outpost() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join("outpost");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no `outpost` binary next to {}; pass --outpost PATH",
        exe.display()
    )
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Spawned {
    pub fn start(bin: &Path, data: &Path, extra: &[&str]) -> anyhow::Result<Spawned> {
        let mut s = Spawned {
            bin: bin.to_path_buf(),
            data: data.to_path_buf(),
            quic: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            extra: extra.iter().map(|x| x.to_string()).collect(),
            child: None,
        };
        s.restart()?;
        Ok(s)
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        let addr_file = self.data.join("admin.addr");
        let _ = std::fs::remove_file(&addr_file);
        std::fs::create_dir_all(&self.data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.join("appliance.log"))?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--data")
            .arg(&self.data)
            .arg("--quic-listen")
            .arg(self.quic.to_string())
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .arg("--cache-listen")
            .arg(format!("127.0.0.1:{}", free_port()?))
            .args(&self.extra)
            .env("OUTPOST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let t = Instant::now();
        while !addr_file.exists() {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "appliance exited ({st}); see {}",
                    self.data.join("appliance.log").display()
                );
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("appliance did not start within 60s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the appliance gracefully (SIGTERM: it acks what is durable and
    /// exits) and waits up to `timeout`, then kills it.
    pub fn stop(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed", c.id());
        }
        let t = Instant::now();
        while t.elapsed() < timeout {
            if c.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        bail!("appliance did not stop within {timeout:?} of SIGTERM; killed")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn fingerprint(&self) -> anyhow::Result<CaFingerprint> {
        let out = Command::new(&self.bin)
            .arg("ca-fingerprint")
            .arg("--data")
            .arg(&self.data)
            .output()?;
        if !out.status.success() {
            bail!("ca-fingerprint: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    }

    /// A token for `uses` enrollments.
    pub fn token(&self, uses: usize) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .arg("--data")
            .arg(&self.data)
            .args([
                "token", "create", "--tenant", "bench", "--ttl", "30d", "--uses",
            ])
            .arg(uses.max(1).to_string())
            .output()?;
        if !out.status.success() {
            bail!("token create: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Spawned {
    /// Calls the admin API through `outpost api` (the CLI reads the admin
    /// token and address from the data directory); returns the JSON answer.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(&self.bin)
            .arg("--data")
            .arg(&self.data)
            .args(["api", method, path, "--body"])
            .arg(body.to_string())
            .output()?;
        if !out.status.success() {
            bail!(
                "{method} {path}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("{method} {path}: not JSON"))
    }

    /// The appliance's `/metrics` exposition.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.admin).await?;
        s.write_all(
            format!(
                "GET /metrics HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
                self.admin
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .ok_or_else(|| anyhow::anyhow!("no HTTP body from /metrics"))?;
        Ok(body)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
