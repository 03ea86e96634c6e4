//! `outpost-bench commands`: N simulated protocol-2 agents (real QUIC, each
//! with its client certificate) hold a session and answer every command at
//! once (ack, started, exit 0, no output). Two figures:
//!
//! * **dispatch latency**: from the admin API call (`POST
//!   /api/v1/commands`, sent by this process over HTTP) until the target
//!   agent receives the command frame: the agent would start the process
//!   there, so this is the start-of-process proxy. One command at a time,
//!   to random agents, p50/p99 over `--singles` commands;
//! * **bulk**: one `POST /api/v1/commands/bulk` to all N devices (with
//!   concurrency N) until `GET /api/v1/commands/bulk/{id}` says every result
//!   is stored (`summary.finished`, all `done`).
//!
//! The agents never send records: this measures the command path alone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use outpost_agent::backoff::Backoff;
use outpost_proto::frame::{FrameReader, encode_frame, write_frame};
use outpost_proto::ids::CommandId;
use outpost_proto::messages::{
    AgentFrame, ApplianceFrame, CommandDown, CommandOutcome, CommandResult, CommandUp, Flow, Hello,
};
use outpost_proto::{APPLIANCE_SERVER_NAME, DEFAULT_MAX_FRAME_BYTES, SESSION_PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::fleet;
use crate::report::Report;
use crate::spawn::Spawned;

pub struct CommandsRun {
    pub agents: usize,
    /// Single commands for the dispatch-latency figure.
    pub singles: usize,
    /// Skip the bulk figure.
    pub no_bulk: bool,
    pub state: PathBuf,
    pub quiet: bool,
}

/// What the simulated agents saw.
#[derive(Default)]
struct Shared {
    /// When each command frame arrived at its agent.
    received: std::sync::Mutex<HashMap<CommandId, Instant>>,
    arrived: tokio::sync::Notify,
    connected: AtomicU64,
    commands: AtomicU64,
    result_acks: AtomicU64,
    errors: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One simulated agent: a session that answers commands, reconnecting
/// until `stop`.
async fn agent(
    endpoint: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    shared: Arc<Shared>,
    gate: Arc<tokio::sync::Semaphore>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut first = true;
    while !stop.is_cancelled() {
        let r = tokio::select! {
            r = session(&endpoint, &cfg, addr, &shared, &gate, &mut first) => r,
            _ = stop.cancelled() => return,
        };
        if let Err(e) = r {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "simulated agent session ended");
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn session(
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    addr: SocketAddr,
    shared: &Shared,
    gate: &Arc<tokio::sync::Semaphore>,
    first: &mut bool,
) -> anyhow::Result<()> {
    let permit = gate.clone().acquire_owned().await?;
    let conn = endpoint
        .connect_with(cfg.clone(), addr, APPLIANCE_SERVER_NAME)?
        .await
        .map_err(|e| anyhow!("connect: {e}"))?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut out = BytesMut::new();
    write_frame(
        &AgentFrame::Hello(Hello {
            protocol_version: SESSION_PROTOCOL_VERSION,
            agent_version: "bench-commands".into(),
            // No records are sent: announce a long interval so the device
            // is not declared offline during the run.
            heartbeat_interval_ms: 3_600_000,
            metrics_interval_ms: 3_600_000,
        }),
        &mut out,
        DEFAULT_MAX_FRAME_BYTES,
    )?;
    send.write_all(&out).await?;
    let mut reader = FrameReader::new(DEFAULT_MAX_FRAME_BYTES);
    let welcome = tokio::time::timeout(
        Duration::from_secs(60),
        reader.next::<ApplianceFrame, _>(&mut recv),
    )
    .await
    .map_err(|_| anyhow!("welcome: timeout"))??;
    let Some(ApplianceFrame::Welcome(w)) = welcome else {
        bail!("welcome: got {welcome:?}");
    };
    if w.protocol_version < 2 {
        bail!("the appliance speaks protocol {}", w.protocol_version);
    }
    let (mut cs, mut cr) = conn.open_bi().await?;
    cs.write_all(&encode_frame(
        &AgentFrame::OpenFlow(Flow::Commands),
        DEFAULT_MAX_FRAME_BYTES,
    )?)
    .await?;
    let (mut fs, _fr) = conn.open_bi().await?;
    fs.write_all(&encode_frame(
        &AgentFrame::OpenFlow(Flow::Files),
        DEFAULT_MAX_FRAME_BYTES,
    )?)
    .await?;
    drop(permit);
    if std::mem::take(first) {
        shared.connected.fetch_add(1, Ordering::Relaxed);
    }
    let mut creader = FrameReader::new(DEFAULT_MAX_FRAME_BYTES);
    let mut sbuf = [0u8; 512];
    loop {
        tokio::select! {
            // The session stream: only a Close (or the end) comes here.
            n = recv.read(&mut sbuf) => {
                match n {
                    Ok(Some(_)) => {}
                    _ => bail!("session stream closed"),
                }
            }
            r = creader.fill(&mut cr) => {
                if !r.map_err(|e| anyhow!("command stream: {e}"))? {
                    bail!("command stream closed");
                }
                let mut up = BytesMut::new();
                while let Some(f) = creader.try_next::<ApplianceFrame>()? {
                    match f {
                        ApplianceFrame::Command(CommandDown::Command(c)) => {
                            let at = Instant::now();
                            shared.commands.fetch_add(1, Ordering::Relaxed);
                            shared
                                .received
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(c.id, at);
                            shared.arrived.notify_waiters();
                            let t = now_ms();
                            for m in [
                                CommandUp::Ack { id: c.id },
                                CommandUp::Started { id: c.id, started_ms: t },
                                CommandUp::Result(CommandResult {
                                    id: c.id,
                                    outcome: CommandOutcome::Exited { code: 0 },
                                    output_bytes: 0,
                                    finished_ms: t,
                                }),
                            ] {
                                write_frame(&AgentFrame::Command(m), &mut up, DEFAULT_MAX_FRAME_BYTES)?;
                            }
                        }
                        ApplianceFrame::Command(CommandDown::ResultAck { .. }) => {
                            shared.result_acks.fetch_add(1, Ordering::Relaxed);
                        }
                        ApplianceFrame::Command(_) => {}
                        ApplianceFrame::Close(c) => bail!("closed: {}", c.reason.label()),
                        other => bail!("unexpected frame on the command flow: {other:?}"),
                    }
                }
                if !up.is_empty() {
                    cs.write_all(&up).await?;
                }
            }
        }
    }
}

/// A minimal HTTP/1.1 client for the admin API (one connection per call:
/// loopback, so the connect costs microseconds).
pub struct Admin {
    pub addr: SocketAddr,
    pub token: String,
}

impl Admin {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = tokio::net::TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("{method} {path}: no HTTP body"))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("{method} {path}: bad status line"))?;
        // Chunked answers: take the JSON between the first chunk size and
        // the terminator.
        let json_text = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            let mut out = String::new();
            let mut r = rest;
            while let Some((size, tail)) = r.split_once("\r\n") {
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                if n == 0 || tail.len() < n {
                    break;
                }
                out.push_str(&tail[..n]);
                r = tail[n..].trim_start_matches("\r\n");
            }
            out
        } else {
            rest.to_string()
        };
        let v = serde_json::from_str(&json_text)
            .unwrap_or(serde_json::Value::String(json_text.clone()));
        Ok((status, v))
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub async fn run(r: &CommandsRun, app: &Spawned) -> anyhow::Result<Report> {
    let pin = app.fingerprint()?;
    let token = app.token(r.agents)?;
    let pb = if r.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    let fleet =
        Arc::new(fleet::load_or_enroll(&r.state, app.quic, &token, pin, r.agents, &pb).await?);
    let n = fleet.identities.len();
    let endpoints = fleet::endpoints(app.quic, 16.min(n))?;
    let shared = Arc::new(Shared::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(512));
    let stop = CancellationToken::new();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tasks.push(tokio::spawn(agent(
            endpoints[i % endpoints.len()].clone(),
            fleet.client_config(i)?,
            app.quic,
            shared.clone(),
            gate.clone(),
            stop.clone(),
        )));
    }
    let t_connect = Instant::now();
    while (shared.connected.load(Ordering::Relaxed) as usize) < n {
        if t_connect.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {} of {n} agents connected in 10 min",
                shared.connected.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_secs = t_connect.elapsed().as_secs_f64();
    if !r.quiet {
        eprintln!("{n} agents connected in {connect_secs:.1} s");
    }
    // The appliance registers each session's command link asynchronously:
    // give the last ones a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let token = std::fs::read_to_string(app.data.join("admin.token"))
        .context("reading the appliance's admin token")?;
    let admin = Admin {
        addr: app.admin,
        token: token.trim().to_string(),
    };

    // (a) Dispatch latency, one command at a time.
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for k in 0..r.singles {
        let dev = fleet.identities[rand::random_range(0..n)].device_id;
        let t0 = Instant::now();
        let (status, v) = admin
            .call(
                "POST",
                "/api/v1/commands",
                Some(&serde_json::json!({"device": dev.to_string(), "command": "true"})),
            )
            .await?;
        if status != 201 {
            bail!("single command {k}: HTTP {status}: {v}");
        }
        let id: CommandId = v["id"]
            .as_str()
            .ok_or_else(|| anyhow!("no id in {v}"))?
            .parse()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let at = loop {
            let notified = shared.arrived.notified();
            if let Some(at) = shared
                .received
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .copied()
            {
                break at;
            }
            if Instant::now() > deadline {
                bail!("command {id} never reached its agent");
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        };
        h.record(at.saturating_duration_since(t0).as_micros().max(1) as u64)?;
    }

    // (b) One bulk command to every device.
    let mut bulk_secs = f64::NAN;
    let mut bulk_done = 0u64;
    if !r.no_bulk {
        let t0 = Instant::now();
        let (status, v) = admin
            .call(
                "POST",
                "/api/v1/commands/bulk",
                Some(&serde_json::json!({
                    "target": "all",
                    "command": "true",
                    "concurrency": n,
                })),
            )
            .await?;
        if status != 201 {
            bail!("bulk: HTTP {status}: {v}");
        }
        let id = v["id"].as_str().unwrap_or_default().to_string();
        let path = format!("/api/v1/commands/bulk/{id}");
        loop {
            let (status, v) = admin.call("GET", &path, None).await?;
            if status != 200 {
                bail!("bulk show: HTTP {status}: {v}");
            }
            if v["summary"]["finished"] == true {
                bulk_secs = t0.elapsed().as_secs_f64();
                bulk_done = v["summary"]["done"].as_u64().unwrap_or(0);
                break;
            }
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("bulk run not finished after 10 min: {}", v["summary"]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let mut rep = Report::new("commands");
    rep.int("agents", n as u64)
        .num("connect_secs", connect_secs)
        .int("singles", h.len())
        .num("dispatch_p50_ms", ms(h.value_at_quantile(0.50)))
        .num("dispatch_p99_ms", ms(h.value_at_quantile(0.99)))
        .num("dispatch_max_ms", ms(h.max()))
        .int("bulk_devices", if r.no_bulk { 0 } else { n as u64 })
        .num("bulk_secs", bulk_secs)
        .int("bulk_done", bulk_done)
        .int("commands_received", shared.commands.load(Ordering::Relaxed))
        .int("result_acks", shared.result_acks.load(Ordering::Relaxed))
        .int("session_errors", shared.errors.load(Ordering::Relaxed));
    Ok(rep)
}
