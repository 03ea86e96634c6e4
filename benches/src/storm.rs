//! Handshake storm under steady load (issue 18): `agents` established
//! simulated agents stream at `rate` records/s each while `churn` other
//! agents reconnect in a loop (connect, Hello, Welcome, close, again; a
//! refused or failed attempt backs off with full jitter like a real agent).
//! Measures the established sessions' ack latency and reconnects, the
//! handshakes/s the churners completed, the attempts the appliance refused,
//! its admission counters (`outpost_quic_handshakes_total{outcome}`, when
//! it exports them), kernel receive drops and its CPU.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use bytes::BytesMut;
use outpost_agent::backoff::Backoff;
use outpost_proto::frame::{FrameReader, write_frame};
use outpost_proto::messages::{AgentFrame, ApplianceFrame, Hello};
use outpost_proto::tls::CaFingerprint;
use outpost_proto::{APPLIANCE_SERVER_NAME, DEFAULT_MAX_FRAME_BYTES, SESSION_PROTOCOL_VERSION};
use tokio_util::sync::CancellationToken;

use crate::fleet;
use crate::procstat;
use crate::report::Report;
use crate::sim::{self, Control, Mix, RunStats, SimOptions};
use crate::spawn::Spawned;

/// One storm run.
#[derive(Debug, Clone)]
pub struct StormRun {
    /// Established agents streaming through the storm.
    pub agents: usize,
    /// Agents reconnecting in a loop.
    pub churn: usize,
    /// Records per second per established agent.
    pub rate: f64,
    /// Sessions each churning agent opens (0: until the run ends).
    pub churn_sessions: u64,
    pub duration: Duration,
    pub warmup: Duration,
    /// Where enrolled identities are cached (established agents first).
    pub state: PathBuf,
    pub quiet: bool,
}

/// What the churning agents saw.
#[derive(Default)]
struct ChurnStats {
    /// Sessions that reached Welcome.
    sessions: AtomicU64,
    /// Churning agents that reached Welcome at least once.
    agents_connected: AtomicU64,
    /// Attempts that failed, by kind.
    failures: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl ChurnStats {
    fn failed(&self, kind: &str) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind.to_string())
            .or_default() += 1;
    }

    fn failures(&self) -> u64 {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

/// What a storm run measured (the smoke test checks it).
#[derive(Debug, Clone)]
pub struct StormOutcome {
    pub report: Report,
    /// Sessions the established agents opened during the window (0: none
    /// of them was dropped by the storm).
    pub reconnects: u64,
    /// Errors of the established agents (all run long).
    pub errors: u64,
    pub sent: u64,
    pub acked: u64,
    pub latency_count: u64,
    /// Churning agents that got a session at least once.
    pub churn_connected: u64,
    /// Churning attempts that failed (refused, timed out).
    pub churn_failures: u64,
    /// The appliance's admission counters at the end (accepted, retried,
    /// refused), when it exports them.
    pub admission: Option<[u64; 3]>,
}

/// `outpost_quic_handshakes_total{outcome=...}` of a `/metrics` text.
pub fn admission_counters(metrics: &str) -> Option<[u64; 3]> {
    let mut out = [0u64; 3];
    let mut seen = false;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("outpost_quic_handshakes_total{outcome=\"") else {
            continue;
        };
        let Some((outcome, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let i = match outcome {
            "accepted" => 0,
            "retried" => 1,
            "refused" => 2,
            _ => continue,
        };
        out[i] = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        seen = true;
    }
    seen.then_some(out)
}

/// One churning agent: sessions in a loop until `stop` (or `sessions`).
async fn churn_agent(
    endpoint: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    sessions: u64,
    stats: Arc<ChurnStats>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut done = 0u64;
    while !stop.is_cancelled() && (sessions == 0 || done < sessions) {
        let attempt = tokio::select! {
            r = churn_session(&endpoint, &cfg, addr) => r,
            _ = stop.cancelled() => return,
        };
        match attempt {
            Ok(()) => {
                if done == 0 {
                    stats.agents_connected.fetch_add(1, Ordering::Relaxed);
                }
                done += 1;
                stats.sessions.fetch_add(1, Ordering::Relaxed);
                backoff.reset();
            }
            Err(e) => {
                let msg = e.to_string();
                let kind = if msg.contains("refused") || msg.contains("REFUSED") {
                    "refused"
                } else {
                    msg.split(':').next().unwrap_or("error")
                };
                stats.failed(kind);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// Connect, Hello, Welcome, close.
async fn churn_session(
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    let conn = endpoint
        .connect_with(cfg.clone(), addr, APPLIANCE_SERVER_NAME)
        .map_err(|e| anyhow!("connect: {e}"))?
        .await
        .map_err(|e| anyhow!("connect: {e}"))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| anyhow!("stream: {e}"))?;
    let mut out = BytesMut::new();
    write_frame(
        &AgentFrame::Hello(Hello {
            protocol_version: SESSION_PROTOCOL_VERSION,
            agent_version: "bench-churn".into(),
            heartbeat_interval_ms: 3_600_000,
            metrics_interval_ms: 3_600_000,
        }),
        &mut out,
        DEFAULT_MAX_FRAME_BYTES,
    )?;
    send.write_all(&out)
        .await
        .map_err(|e| anyhow!("write: {e}"))?;
    let mut reader = FrameReader::new(DEFAULT_MAX_FRAME_BYTES);
    let welcome = tokio::time::timeout(
        Duration::from_secs(30),
        reader.next::<ApplianceFrame, _>(&mut recv),
    )
    .await
    .map_err(|_| anyhow!("welcome: timeout"))?
    .map_err(|e| anyhow!("welcome: {e}"))?;
    let result = match welcome {
        Some(ApplianceFrame::Welcome(_)) => Ok(()),
        other => Err(anyhow!("welcome: got {other:?}")),
    };
    let _ = send.finish();
    conn.close(0u32.into(), b"churn");
    result
}

pub async fn run(r: &StormRun, app: &Spawned) -> anyhow::Result<StormOutcome> {
    let pin: CaFingerprint = app.fingerprint()?;
    let total = r.agents + r.churn;
    let token = app.token(total)?;
    let pb = if r.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    let fleet = Arc::new(fleet::load_or_enroll(&r.state, app.quic, &token, pin, total, &pb).await?);
    anyhow::ensure!(
        fleet.identities.len() >= total,
        "only {} identities for {total} agents",
        fleet.identities.len()
    );
    let pid = app.pid();
    let endpoints = fleet::endpoints(app.quic, 16.min(total).max(1))?;
    let stats = RunStats::new(16);
    let opts = Arc::new(SimOptions {
        addr: app.quic,
        rate: Some(r.rate),
        window: 100_000,
        batch: 256,
        mix: Mix::Heartbeat,
        announced_interval: Duration::from_secs_f64((1.0 / r.rate.max(1e-6)).max(1.0)),
    });
    let ctl = Control {
        start: CancellationToken::new(),
        stop: CancellationToken::new(),
        gate: Arc::new(tokio::sync::Semaphore::new(256)),
        drain: Duration::from_secs(30),
    };
    let mut tasks = Vec::with_capacity(r.agents);
    for i in 0..r.agents {
        tasks.push(tokio::spawn(sim::run_agent(
            endpoints[i % endpoints.len()].clone(),
            fleet.client_config(i)?,
            opts.clone(),
            stats.clone(),
            i % 16,
            ctl.clone(),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(120 + r.agents as u64 / 100);
    while (stats.connected.load(Ordering::Relaxed) as usize) < r.agents && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected = stats.connected.load(Ordering::Relaxed);
    ctl.start.cancel();

    // The storm.
    let churn = Arc::new(ChurnStats::default());
    let churn_stop = CancellationToken::new();
    let mut churners = Vec::with_capacity(r.churn);
    for j in 0..r.churn {
        let i = r.agents + j;
        churners.push(tokio::spawn(churn_agent(
            endpoints[i % endpoints.len()].clone(),
            fleet.client_config(i)?,
            app.quic,
            r.churn_sessions,
            churn.clone(),
            churn_stop.clone(),
        )));
    }
    if !r.warmup.is_zero() {
        tokio::time::sleep(r.warmup).await;
    }
    stats.reset_latency();
    let acked0 = stats.acked.load(Ordering::Relaxed);
    let sessions0 = stats.sessions.load(Ordering::Relaxed);
    let churn0 = churn.sessions.load(Ordering::Relaxed);
    let fail0 = churn.failures();
    let drops0 = procstat::udp_drops(app.quic.port());
    let adm0 = app
        .metrics()
        .await
        .ok()
        .and_then(|m| admission_counters(&m));
    let cpu0 = pid.and_then(procstat::cpu_seconds);
    let t0 = Instant::now();
    tokio::time::sleep(r.duration).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let acked_window = stats.acked.load(Ordering::Relaxed) - acked0;
    let reconnects = stats.sessions.load(Ordering::Relaxed) - sessions0;
    let churn_window = churn.sessions.load(Ordering::Relaxed) - churn0;
    let fail_window = churn.failures() - fail0;
    let drops = procstat::udp_drops(app.quic.port())
        .zip(drops0)
        .map(|(a, b)| a.saturating_sub(b));
    let cpu = pid
        .and_then(procstat::cpu_seconds)
        .zip(cpu0)
        .map(|(a, b)| a - b);
    let adm1 = app
        .metrics()
        .await
        .ok()
        .and_then(|m| admission_counters(&m));
    let hist = stats.merged_latency();

    churn_stop.cancel();
    for c in churners {
        let _ = c.await;
    }
    ctl.stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    for ep in &endpoints {
        ep.close(0u32.into(), b"bench done");
    }
    let sent = stats.sent.load(Ordering::Relaxed);
    let acked = stats.acked.load(Ordering::Relaxed);
    let errors_map = stats
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let errors: u64 = errors_map.values().sum();
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let mut rep = Report::new("storm");
    rep.int("agents", r.agents as u64)
        .int("connected", connected)
        .int("churn", r.churn as u64)
        .num("rate_per_agent", r.rate)
        .num("records_per_sec", acked_window as f64 / elapsed)
        .num("p50_ms", q(0.5))
        .num("p99_ms", q(0.99))
        .num("p999_ms", q(0.999))
        .num("max_ms", hist.max() as f64 / 1000.0)
        .int("reconnects_in_window", reconnects)
        .num("handshakes_per_sec", churn_window as f64 / elapsed)
        .num("churn_failures_per_sec", fail_window as f64 / elapsed)
        .int(
            "churn_connected",
            churn.agents_connected.load(Ordering::Relaxed),
        )
        .int("pressure_frames", stats.pressure.load(Ordering::Relaxed))
        .int("sent", sent)
        .int("acked", acked)
        .int("errors", errors);
    if let Some(d) = drops {
        rep.int("udp_drops_in_window", d);
    }
    if let (Some(a), Some(b)) = (adm1, adm0) {
        let per_sec = |i: usize| a[i].saturating_sub(b[i]) as f64 / elapsed;
        rep.num("admitted_per_sec", per_sec(0))
            .num("retried_per_sec", per_sec(1))
            .num("refused_per_sec", per_sec(2));
    }
    if let Some(cpu) = cpu {
        rep.num("appliance_cpu_pct", cpu / elapsed * 100.0);
    }
    let kinds = churn
        .failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, n)| format!("{k}:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    if !kinds.is_empty() {
        rep.text(
            "churn_failure_kinds",
            &kinds.replace(char::is_whitespace, "_"),
        );
    }
    let ekinds = errors_map
        .iter()
        .map(|(k, n)| format!("{k}:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    if !ekinds.is_empty() {
        rep.text("error_kinds", &ekinds);
    }
    if !r.quiet {
        eprintln!("{}", rep.line());
    }
    Ok(StormOutcome {
        reconnects,
        errors,
        sent,
        acked,
        latency_count: hist.len(),
        churn_connected: churn.agents_connected.load(Ordering::Relaxed),
        churn_failures: churn.failures(),
        admission: adm1,
        report: rep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counters_are_read_from_the_exposition() {
        let text = "# HELP x\noutpost_quic_handshakes_total{outcome=\"accepted\"} 12\n\
                    outpost_quic_handshakes_total{outcome=\"retried\"} 3\n\
                    outpost_quic_handshakes_total{outcome=\"refused\"} 4\n";
        assert_eq!(admission_counters(text), Some([12, 3, 4]));
        assert_eq!(admission_counters("outpost_connections_active 3\n"), None);
    }
}
