//! The ingest scenarios: N simulated agents against an appliance, measuring
//! durable-acked records/s, ack latency, errors, appliance CPU and RSS, and
//! client CPU.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use outpost_proto::tls::CaFingerprint;
use tokio_util::sync::CancellationToken;

use crate::fleet;
use crate::procstat;
use crate::report::Report;
use crate::sim::{self, Mix, RunStats, SimOptions};

/// Everything an ingest run needs.
#[derive(Debug, Clone)]
pub struct IngestRun {
    pub scenario: String,
    pub addr: SocketAddr,
    pub token: String,
    pub pin: CaFingerprint,
    pub agents: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub state: PathBuf,
    pub rate: Option<f64>,
    pub window: usize,
    pub batch: usize,
    pub mix: Mix,
    pub appliance_pid: Option<u32>,
    pub endpoints: usize,
    pub connect_concurrency: usize,
    pub quiet: bool,
    /// Told when the measured window starts and ends (for scenarios that
    /// measure something else under this load, e.g. alert latency).
    pub window_signals: Option<WindowSignals>,
}

/// Cancelled when the measured window of an ingest run starts / ends.
#[derive(Debug, Clone, Default)]
pub struct WindowSignals {
    pub started: CancellationToken,
    pub ended: CancellationToken,
}

/// What a run measured (also what the smoke tests check).
#[derive(Debug, Clone)]
pub struct IngestOutcome {
    pub report: Report,
    /// Sessions opened during the measured window (reconnects).
    pub reconnects: u64,
    /// Datagrams the kernel dropped on the appliance's sockets (all of
    /// them: one per QUIC endpoint) during the window (`None`: the sockets
    /// are not visible from here).
    pub udp_drops: Option<u64>,
    /// The same while the fleet connected (handshakes), before the window.
    pub udp_drops_connecting: Option<u64>,
    /// UDP sockets bound to the appliance's port (its QUIC endpoints), as
    /// the kernel lists them; 0 when not visible from here.
    pub udp_sockets: usize,
    pub sent: u64,
    pub acked: u64,
    pub latency_count: u64,
    pub records_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

fn progress(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

pub async fn run(r: &IngestRun) -> anyhow::Result<IngestOutcome> {
    let pb = progress(r.quiet);
    let fleet =
        Arc::new(fleet::load_or_enroll(&r.state, r.addr, &r.token, r.pin, r.agents, &pb).await?);
    anyhow::ensure!(
        fleet.identities.len() >= r.agents,
        "only {} identities available for {} agents",
        fleet.identities.len(),
        r.agents
    );
    let app_pid = r
        .appliance_pid
        .or_else(|| procstat::pid_of_udp_port(r.addr.port()));
    let rss_before = app_pid.and_then(procstat::rss_bytes);

    let endpoints = fleet::endpoints(r.addr, r.endpoints.min(r.agents).max(1))?;
    let drops_before_connect = procstat::udp_drops(r.addr.port());
    let udp_sockets = procstat::udp_socket_drops(r.addr.port()).len();
    let stats = RunStats::new(16);
    let opts = Arc::new(SimOptions {
        addr: r.addr,
        rate: r.rate,
        window: r.window,
        batch: r.batch,
        mix: r.mix,
        announced_interval: r
            .rate
            .map(|x| Duration::from_secs_f64((1.0 / x).max(1.0)))
            .unwrap_or(Duration::from_secs(30)),
    });
    let start = CancellationToken::new();
    let stop = CancellationToken::new();
    pb.set_length(r.agents as u64);
    pb.set_position(0);
    pb.set_message(format!("connecting {} agents", r.agents));
    let connect_started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(r.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(r.agents);
    for i in 0..r.agents {
        let cfg = fleet.client_config(i)?;
        let (ep, opts, stats, start, stop, gate) = (
            endpoints[i % endpoints.len()].clone(),
            opts.clone(),
            stats.clone(),
            start.clone(),
            stop.clone(),
            gate.clone(),
        );
        tasks.push(tokio::spawn(sim::run_agent(
            ep,
            cfg,
            opts,
            stats,
            i % 16,
            sim::Control {
                start,
                stop,
                gate,
                drain: Duration::from_secs(15),
            },
        )));
    }
    // Wait until every agent has a session (or give up after a while).
    let connect_deadline = Instant::now() + Duration::from_secs(120 + r.agents as u64 / 100);
    loop {
        let c = stats.connected.load(Ordering::Relaxed);
        pb.set_position(c);
        if c as usize >= r.agents || Instant::now() > connect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let connected = stats.connected.load(Ordering::Relaxed);
    let rss_connected = app_pid.and_then(procstat::rss_bytes);

    // Warm-up, then the measured window.
    start.cancel();
    pb.set_length(0);
    if !r.warmup.is_zero() {
        pb.set_message("warming up");
        tokio::time::sleep(r.warmup).await;
    }
    stats.reset_latency();
    if let Some(w) = &r.window_signals {
        w.started.cancel();
    }
    let acked0 = stats.acked.load(Ordering::Relaxed);
    // Reconnects and kernel receive drops after the handshake phase (the
    // scale targets: both must stay 0).
    let sessions0 = stats.sessions.load(Ordering::Relaxed);
    let drops0 = procstat::udp_drops(r.addr.port());
    let app_cpu0 = app_pid.and_then(procstat::cpu_seconds);
    let self_cpu0 = procstat::self_cpu_seconds();
    let t0 = Instant::now();
    let mut peak_rss = rss_connected.unwrap_or(0);
    let mut last = (t0, acked0);
    while t0.elapsed() < r.duration {
        tokio::time::sleep(Duration::from_millis(500).min(r.duration)).await;
        if let Some(rss) = app_pid.and_then(procstat::rss_bytes) {
            peak_rss = peak_rss.max(rss);
        }
        let now = (Instant::now(), stats.acked.load(Ordering::Relaxed));
        let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
        pb.set_message(format!(
            "{:.0} acked records/s, {} sessions",
            rate,
            stats.sessions.load(Ordering::Relaxed)
        ));
        pb.tick();
        last = now;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    if let Some(w) = &r.window_signals {
        w.ended.cancel();
    }
    let acked_window = stats.acked.load(Ordering::Relaxed) - acked0;
    let reconnects = stats.sessions.load(Ordering::Relaxed) - sessions0;
    let udp_drops = procstat::udp_drops(r.addr.port())
        .zip(drops0)
        .map(|(a, b)| a.saturating_sub(b));
    let udp_drops_connecting = drops0
        .zip(drops_before_connect)
        .map(|(a, b)| a.saturating_sub(b));
    let app_cpu = app_pid
        .and_then(procstat::cpu_seconds)
        .zip(app_cpu0)
        .map(|(a, b)| a - b);
    let self_cpu = procstat::self_cpu_seconds() - self_cpu0;
    let hist = stats.merged_latency();

    // Stop and drain so that acked == sent.
    pb.set_message("draining");
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    for ep in &endpoints {
        ep.close(0u32.into(), b"bench done");
    }
    pb.finish_and_clear();

    let sent = stats.sent.load(Ordering::Relaxed);
    let acked = stats.acked.load(Ordering::Relaxed);
    let error_map = stats
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let errors: u64 = error_map.values().sum();
    let error_kinds = error_map
        .iter()
        .map(|(k, n)| format!("{k}:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let rps = acked_window as f64 / elapsed;
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let mut rep = Report::new(&r.scenario);
    rep.int("agents", r.agents as u64)
        .int("connected", connected)
        .num("records_per_sec", rps)
        .num("p50_ms", q(0.5))
        .num("p99_ms", q(0.99))
        .num("p999_ms", q(0.999))
        .num("max_ms", hist.max() as f64 / 1000.0)
        .int("sent", sent)
        .int("acked", acked)
        .int("errors", errors)
        .num("connect_secs", connect_secs)
        .int("reconnects_in_window", reconnects)
        .int("pressure_frames", stats.pressure.load(Ordering::Relaxed));
    if let Some(d) = udp_drops {
        rep.int("udp_drops_in_window", d);
    }
    if let Some(d) = udp_drops_connecting {
        rep.int("udp_drops_connecting", d);
    }
    if udp_sockets > 0 {
        rep.int("udp_sockets", udp_sockets as u64);
    }
    if !error_kinds.is_empty() {
        rep.text("error_kinds", &error_kinds);
    }
    if let Some(rate) = r.rate {
        rep.num("rate_per_agent", rate);
    }
    if let (Some(cpu), true) = (app_cpu, acked_window > 0) {
        rep.num(
            "appliance_cpu_s_per_million",
            cpu / (acked_window as f64 / 1e6),
        );
        rep.num("appliance_cpu_pct", cpu / elapsed * 100.0);
    }
    if peak_rss > 0 {
        rep.num("appliance_rss_mb", peak_rss as f64 / 1048576.0);
    }
    if let (Some(before), Some(after)) = (rss_before, rss_connected)
        && connected > 0
    {
        rep.num(
            "rss_per_conn_kb",
            (after.saturating_sub(before)) as f64 / 1024.0 / connected as f64,
        );
    }
    rep.num("client_cpu_pct", self_cpu / elapsed * 100.0);
    rep.text("mix", r.mix.label());
    if r.mix == Mix::Metrics {
        // The side-by-side figures: every record is one sample of
        // METRICS_VALUES values.
        let per = sim::METRICS_VALUES as f64;
        rep.num("samples_per_sec", rps * per)
            .int("samples_acked_total", acked * sim::METRICS_VALUES as u64);
        if let (Some(cpu), true) = (app_cpu, acked_window > 0) {
            rep.num(
                "cpu_s_per_million_samples",
                cpu / (acked_window as f64 * per / 1e6),
            );
        }
    }
    if !r.quiet {
        let errs = stats
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        eprintln!(
            "{}: {} agents ({} connected in {:.1}s), {:.0} durable records/s over {:.1}s; ack latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; sent {} acked {}; errors {:?}",
            r.scenario,
            r.agents,
            connected,
            connect_secs,
            rps,
            elapsed,
            q(0.5),
            q(0.99),
            q(0.999),
            hist.max() as f64 / 1000.0,
            sent,
            acked,
            errs
        );
        if app_pid.is_none() {
            eprintln!(
                "(appliance process not found: no appliance CPU/RSS figures; pass --appliance-pid)"
            );
        }
    }
    Ok(IngestOutcome {
        reconnects,
        udp_drops,
        udp_drops_connecting,
        udp_sockets,
        records_per_sec: rps,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        latency_count: hist.len(),
        sent,
        acked,
        errors,
        report: rep,
    })
}
