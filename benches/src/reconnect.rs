//! Reconnect storm: all agents connected and streaming; the appliance is
//! killed (-9) and restarted; measure how long until every agent has a
//! session again and its backlog is acknowledged, how many devices the
//! restarted appliance declared offline meanwhile, and its peak RSS.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use outpost_proto::tls::CaFingerprint;
use tokio_util::sync::CancellationToken;

use crate::fleet;
use crate::procstat;
use crate::report::Report;
use crate::sim::{self, Control, Mix, RunStats, SimOptions};
use crate::spawn::Spawned;

pub struct ReconnectRun {
    pub agents: usize,
    pub rate: f64,
    pub down: Duration,
    pub state: std::path::PathBuf,
    pub quiet: bool,
}

pub async fn run(r: &ReconnectRun, app: &mut Spawned) -> anyhow::Result<Report> {
    let pin: CaFingerprint = app.fingerprint()?;
    let token = app.token(r.agents)?;
    let pb = if r.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    let fleet =
        Arc::new(fleet::load_or_enroll(&r.state, app.quic, &token, pin, r.agents, &pb).await?);
    let endpoints = fleet::endpoints(app.quic, 16.min(r.agents))?;
    let stats = RunStats::new(16);
    let opts = Arc::new(SimOptions {
        addr: app.quic,
        rate: Some(r.rate),
        window: 100_000,
        batch: 256,
        mix: Mix::Heartbeat,
        announced_interval: Duration::from_secs_f64((1.0 / r.rate).max(1.0)),
    });
    let ctl = Control {
        start: CancellationToken::new(),
        stop: CancellationToken::new(),
        gate: Arc::new(tokio::sync::Semaphore::new(512)),
        drain: Duration::from_secs(30),
    };
    let mut tasks = Vec::new();
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
    let deadline = Instant::now() + Duration::from_secs(300);
    while (stats.connected.load(Ordering::Relaxed) as usize) < r.agents && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ctl.start.cancel();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sessions_before = stats.sessions.load(Ordering::Relaxed);

    app.kill9();
    tokio::time::sleep(r.down).await;
    let backlog_at_restart = stats
        .sent
        .load(Ordering::Relaxed)
        .saturating_sub(stats.acked.load(Ordering::Relaxed))
        + (r.agents as f64 * r.rate * r.down.as_secs_f64()) as u64;
    let restarted = Instant::now();
    app.restart()?;
    let pid = app.pid();
    let mut peak_rss = 0u64;
    let mut reconnect_secs = None;
    let mut drained_secs = None;
    // In-flight records in steady state: about one interval's worth per agent.
    let steady = (r.agents as f64 * r.rate * 1.0).max(r.agents as f64) as u64;
    while restarted.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(rss) = pid.and_then(procstat::rss_bytes) {
            peak_rss = peak_rss.max(rss);
        }
        let sessions = stats.sessions.load(Ordering::Relaxed);
        if reconnect_secs.is_none() && sessions >= sessions_before + r.agents as u64 {
            reconnect_secs = Some(restarted.elapsed().as_secs_f64());
        }
        let outstanding = stats
            .sent
            .load(Ordering::Relaxed)
            .saturating_sub(stats.acked.load(Ordering::Relaxed));
        if reconnect_secs.is_some() && outstanding <= steady {
            drained_secs = Some(restarted.elapsed().as_secs_f64());
            break;
        }
    }
    // Devices the restarted appliance declared offline while the fleet was
    // coming back (none should be: every agent was trying to reconnect).
    let offline_declared = crate::alert_latency::metric_sum(
        &app.metrics().await.unwrap_or_default(),
        "outpost_status_transitions_total",
        &["kind=\"offline\""],
    ) as u64;
    ctl.stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let mut rep = Report::new("reconnect");
    rep.int("agents", r.agents as u64)
        .num("rate_per_agent", r.rate)
        .num("down_secs", r.down.as_secs_f64())
        .int("backlog_records", backlog_at_restart)
        .num("reconnect_secs", reconnect_secs.unwrap_or(f64::NAN))
        .num("backlog_acked_secs", drained_secs.unwrap_or(f64::NAN))
        .int("offline_declared", offline_declared)
        .num("appliance_peak_rss_mb", peak_rss as f64 / 1048576.0)
        .int("sent", stats.sent.load(Ordering::Relaxed))
        .int("acked", stats.acked.load(Ordering::Relaxed));
    Ok(rep)
}
