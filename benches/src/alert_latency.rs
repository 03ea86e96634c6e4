//! The alert-latency scenario: how long from a sample crossing a threshold
//! leaving an agent to the webhook notification arriving, with or without
//! background ingest load; and, with the webhook down, whether ingest
//! throughput suffers while notifications fail and retry.
//!
//! A probe agent (its own enrolled identity and QUIC session) alternates
//! `bench_probe=100` and `bench_probe=0`; a rule `bench_probe > 50` (for 0 s)
//! notifies a webhook served by this process. Each firing and each resolved
//! notification is matched to the sample that caused it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use outpost_proto::frame::{FrameReader, write_frame};
use outpost_proto::messages::{
    AgentFrame, ApplianceFrame, Hello, MetricValue, MetricsSample, Record, RecordBody,
};
use outpost_proto::{APPLIANCE_SERVER_NAME, DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::report::Report;

/// The metric the probe reports and the rule watches.
pub const PROBE_METRIC: &str = "bench_probe";

/// One notification as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: String,
    pub device: String,
    pub at: Instant,
}

/// A minimal HTTP/1.1 webhook receiver (keep-alive, Content-Length bodies)
/// that forwards each notification's event and device with its arrival time.
pub struct Receiver {
    pub rx: mpsc::UnboundedReceiver<Delivery>,
}

impl Receiver {
    /// Serves `listener` on the current runtime.
    pub fn serve(listener: tokio::net::TcpListener) -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                tokio::spawn(serve_conn(sock, tx.clone()));
            }
        });
        Receiver { rx }
    }
}

async fn serve_conn(mut sock: tokio::net::TcpStream, tx: mpsc::UnboundedSender<Delivery>) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        // Headers.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let at = Instant::now();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf[head_end..head_end + len]) {
            let _ = tx.send(Delivery {
                event: v["event"].as_str().unwrap_or_default().to_string(),
                device: v["alert"]["device"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                at,
            });
        }
        buf.drain(..head_end + len);
        if sock
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The rule and channel the scenario installs (admin API bodies).
pub fn rule_and_channel(webhook_url: &str) -> (serde_json::Value, serde_json::Value) {
    let channel = serde_json::json!({
        "id": "bench-hook", "name": "bench webhook", "type": "webhook", "url": webhook_url,
    });
    let rule = serde_json::json!({
        "id": "bench-probe",
        "name": "bench probe over 50",
        "condition": {"type": "threshold", "metric": PROBE_METRIC, "comparison": ">", "threshold": 50, "for": "0s"},
        "severity": "warning",
        "channels": ["bench-hook"],
    });
    (channel, rule)
}

/// Probe outcome: latencies in microseconds from the sample's send to the
/// notification's arrival.
pub struct ProbeStats {
    pub firing: Histogram<u64>,
    pub resolved: Histogram<u64>,
    pub missed: u64,
    /// Probe samples sent in the measured window (each flips the alert).
    pub flips: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the probe agent (identity `idx` of `fleet`) until `stop`; records
/// only while `measure` is cancelled (the measured window has started).
/// With `rx = None` (webhook down) it flips the value every `interval`
/// without waiting for notifications.
#[allow(clippy::too_many_arguments)]
pub async fn probe(
    endpoint: quinn::Endpoint,
    fleet: Arc<Fleet>,
    idx: usize,
    addr: SocketAddr,
    mut rx: Option<&mut mpsc::UnboundedReceiver<Delivery>>,
    interval: Duration,
    measure: CancellationToken,
    stop: CancellationToken,
) -> anyhow::Result<ProbeStats> {
    let device = fleet
        .identities
        .get(idx)
        .ok_or_else(|| anyhow!("no identity {idx} for the probe"))?
        .device_id
        .to_string();
    let conn = endpoint
        .connect_with(fleet.client_config(idx)?, addr, APPLIANCE_SERVER_NAME)?
        .await
        .context("probe connect")?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut out = BytesMut::new();
    write_frame(
        &AgentFrame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "bench-probe".into(),
            heartbeat_interval_ms: 30_000,
            metrics_interval_ms: 30_000,
        }),
        &mut out,
        DEFAULT_MAX_FRAME_BYTES,
    )?;
    send.write_all(&out).await?;
    let mut reader = FrameReader::new(DEFAULT_MAX_FRAME_BYTES);
    let Some(ApplianceFrame::Welcome(w)) = reader
        .next::<ApplianceFrame, _>(&mut recv)
        .await
        .context("probe welcome")?
    else {
        bail!("probe: no Welcome");
    };
    // Acks are read (and ignored) so that flow control never stalls the probe.
    let acks = tokio::spawn(async move {
        while let Ok(Some(_)) = reader.next::<ApplianceFrame, _>(&mut recv).await {}
    });
    let mut seq = w.last_stored_seq + 1;
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3);
    let mut stats = ProbeStats {
        firing: new_hist()?,
        resolved: new_hist()?,
        missed: 0,
        flips: 0,
    };
    let mut high = true;
    while !stop.is_cancelled() {
        let value = if high { 100.0 } else { 0.0 };
        out.clear();
        write_frame(
            &AgentFrame::Records(vec![Record {
                seq,
                ts_ms: now_ms(),
                body: RecordBody::Metrics(MetricsSample {
                    values: vec![MetricValue {
                        name: PROBE_METRIC.into(),
                        label: String::new(),
                        value,
                    }],
                }),
            }]),
            &mut out,
            DEFAULT_MAX_FRAME_BYTES,
        )?;
        seq += 1;
        let sent_at = Instant::now();
        send.write_all(&out).await?;
        let want = if high { "firing" } else { "resolved" };
        high = !high;
        if measure.is_cancelled() {
            stats.flips += 1;
        }
        let Some(rx) = rx.as_deref_mut() else {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => {}
            }
            continue;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let arrived = loop {
            tokio::select! {
                d = rx.recv() => match d {
                    Some(d) if d.event == want && d.device == device => break Some(d.at),
                    Some(_) => continue,
                    None => bail!("webhook receiver stopped"),
                },
                _ = tokio::time::sleep_until(deadline) => break None,
            }
        };
        if measure.is_cancelled() {
            match arrived {
                Some(at) => {
                    let us = at.duration_since(sent_at).as_micros().max(1) as u64;
                    let h = if want == "firing" {
                        &mut stats.firing
                    } else {
                        &mut stats.resolved
                    };
                    let _ = h.record(us);
                }
                None => stats.missed += 1,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => {}
        }
    }
    let _ = send.finish();
    conn.close(0u32.into(), b"bench done");
    acks.abort();
    Ok(stats)
}

/// Adds the probe's figures to a report.
pub fn report(rep: &mut Report, s: &ProbeStats) {
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    rep.int("probes", s.firing.len() + s.resolved.len());
    rep.int("missed", s.missed);
    rep.num("fire_p50_ms", q(&s.firing, 0.5));
    rep.num("fire_p99_ms", q(&s.firing, 0.99));
    rep.num("fire_max_ms", s.firing.max() as f64 / 1000.0);
    rep.num("resolve_p50_ms", q(&s.resolved, 0.5));
    rep.num("resolve_p99_ms", q(&s.resolved, 0.99));
}

/// Everything an alert-latency run needs.
#[derive(Debug, Clone)]
pub struct AlertRun {
    /// Background agents (0 = the probe alone, "low load").
    pub agents: usize,
    /// Background records per agent per second; `None` = as fast as acks allow.
    pub rate: Option<f64>,
    pub mix: crate::sim::Mix,
    pub duration: Duration,
    pub warmup: Duration,
    pub state: std::path::PathBuf,
    /// Pause between two probe samples.
    pub interval: Duration,
    /// Point the webhook at a closed port (every delivery fails and retries).
    pub webhook_down: bool,
    pub quiet: bool,
}

/// Sums the samples of a Prometheus counter family whose line contains all
/// of `must` (e.g. a label value).
pub fn metric_sum(exposition: &str, name: &str, must: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && must.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `q` quantile of what a Prometheus histogram family (the lines of
/// `name_bucket` containing all of `must`) observed between two
/// expositions, as the upper bound of the bucket it falls in (`None`: no
/// observations in between).
pub fn bucket_quantile(
    before: &str,
    after: &str,
    name: &str,
    must: &[&str],
    q: f64,
) -> Option<f64> {
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{");
        let mut v: Vec<(f64, f64)> = text
            .lines()
            .filter(|l| l.starts_with(&prefix) && must.iter().all(|m| l.contains(m)))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let (b, a) = (buckets(before), buckets(after));
    let count = |v: &[(f64, f64)], le: f64| v.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
    let delta: Vec<(f64, f64)> = a.iter().map(|&(le, n)| (le, n - count(&b, le))).collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|x| x.1 >= q * total).map(|x| x.0)
}

/// Creates an object, or replaces it when it exists (a reused appliance).
fn upsert(
    app: &crate::spawn::Spawned,
    path: &str,
    id: &str,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    match app.api("POST", path, body) {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("409") => {
            app.api("PUT", &format!("{path}/{id}"), body).map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Runs the scenario against an appliance started by the harness.
pub async fn run(r: &AlertRun, app: &crate::spawn::Spawned) -> anyhow::Result<Report> {
    // The probe agent and the webhook receiver run on their own thread and
    // runtime, as a real agent and a real receiver are other processes:
    // their timings do not queue behind the background fleet's tasks.
    let listener = if r.webhook_down {
        None
    } else {
        let l =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding the webhook receiver")?;
        l.set_nonblocking(true)?;
        Some(l)
    };
    let url = match &listener {
        Some(l) => format!("http://{}/hook", l.local_addr()?),
        None => {
            // A port that was just free: connections are refused.
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            format!("http://{}/hook", l.local_addr()?)
        }
    };
    let (channel, rule) = rule_and_channel(&url);
    upsert(app, "/api/v1/channels", "bench-hook", &channel)?;
    upsert(app, "/api/v1/alert-rules", "bench-probe", &rule)?;

    let pin = app.fingerprint()?;
    let token = app.token(r.agents + 1)?;
    let pb = indicatif::ProgressBar::hidden();
    let fleet = Arc::new(
        crate::fleet::load_or_enroll(&r.state, app.quic, &token, pin, r.agents + 1, &pb).await?,
    );
    anyhow::ensure!(fleet.identities.len() > r.agents, "probe identity missing");
    let metrics_before = app.metrics().await.unwrap_or_default();

    let signals = crate::ingest::WindowSignals::default();
    let background = (r.agents > 0).then(|| {
        let run = crate::ingest::IngestRun {
            scenario: "alerts".into(),
            addr: app.quic,
            token: token.clone(),
            pin,
            agents: r.agents,
            duration: r.duration,
            warmup: r.warmup,
            state: r.state.clone(),
            rate: r.rate,
            window: 256,
            batch: 64,
            mix: r.mix,
            appliance_pid: app.pid(),
            endpoints: 8,
            connect_concurrency: 256,
            quiet: r.quiet,
            window_signals: Some(signals.clone()),
        };
        tokio::spawn(async move { crate::ingest::run(&run).await })
    });
    if background.is_none() {
        let s = signals.clone();
        let (warmup, duration) = (r.warmup, r.duration);
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            s.started.cancel();
            tokio::time::sleep(duration).await;
            s.ended.cancel();
        });
    }
    let (quic, agents, interval) = (app.quic, r.agents, r.interval);
    let (started, ended) = (signals.started.clone(), signals.ended.clone());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-probe".into())
        .spawn(move || {
            let probe_run = async move {
                let mut receiver = match listener {
                    Some(l) => Some(Receiver::serve(tokio::net::TcpListener::from_std(l)?)),
                    None => None,
                };
                let endpoint = outpost_agent::net::client_endpoint(quic)?;
                let stats = probe(
                    endpoint.clone(),
                    fleet,
                    agents,
                    quic,
                    receiver.as_mut().map(|x| &mut x.rx),
                    interval,
                    started,
                    ended,
                )
                .await;
                endpoint.close(0u32.into(), b"bench done");
                stats
            };
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the probe's runtime")
                .and_then(|rt| rt.block_on(probe_run));
            let _ = done_tx.send(result);
        })
        .context("starting the probe's thread")?;
    let probe_stats = done_rx
        .await
        .map_err(|_| anyhow!("the probe's thread ended without a result"))??;
    let ingest = match background {
        Some(t) => Some(t.await.map_err(|e| anyhow!("background ingest: {e}"))??),
        None => None,
    };
    let metrics_after = app.metrics().await.unwrap_or_default();
    let delta = |name: &str, must: &[&str]| {
        (metric_sum(&metrics_after, name, must) - metric_sum(&metrics_before, name, must)).max(0.0)
            as u64
    };

    let mut rep = Report::new(if r.webhook_down {
        "alerts_webhook_down"
    } else {
        "alerts"
    });
    rep.int("agents", r.agents as u64);
    rep.text(
        "rate",
        &r.rate
            .map(|x| x.to_string())
            .unwrap_or_else(|| "max".into()),
    );
    if let Some(i) = &ingest {
        rep.num("records_per_sec", i.records_per_sec);
        rep.num("ack_p99_ms", i.p99_ms);
        rep.int("ingest_errors", i.errors);
    }
    if r.webhook_down {
        rep.int("probes", probe_stats.flips);
    } else {
        report(&mut rep, &probe_stats);
    }
    rep.int(
        "notify_delivered",
        delta("outpost_notifications_total", &["result=\"delivered\""]),
    );
    rep.int(
        "notify_retries",
        delta("outpost_notifications_total", &["result=\"retry\""]),
    );
    rep.int(
        "notify_dead_letters",
        delta("outpost_notifications_total", &["result=\"dead_letter\""]),
    );
    rep.int(
        "alert_inputs_dropped",
        delta("outpost_alert_inputs_dropped_total", &[]),
    );
    // Where the appliance's part of the latency went, by stage.
    for stage in ["queued", "evaluate", "persist", "send"] {
        let label = format!("stage=\"{stage}\"");
        let name = "outpost_alert_stage_seconds";
        let sum = |text: &str, what: &str| metric_sum(text, &format!("{name}_{what}"), &[&label]);
        let n = sum(&metrics_after, "count") - sum(&metrics_before, "count");
        if n > 0.0 {
            let mean = (sum(&metrics_after, "sum") - sum(&metrics_before, "sum")) / n;
            rep.num(&format!("{stage}_mean_ms"), mean * 1000.0);
        }
        if let Some(p99) = bucket_quantile(&metrics_before, &metrics_after, name, &[&label], 0.99) {
            rep.num(&format!("{stage}_p99_le_ms"), p99 * 1000.0);
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::bucket_quantile;

    const NAME: &str = "outpost_alert_stage_seconds";

    fn exposition(stage: &str, counts: &[(&str, u64)]) -> String {
        counts
            .iter()
            .map(|(le, n)| format!("{NAME}_bucket{{le=\"{le}\",stage=\"{stage}\"}} {n}\n"))
            .collect()
    }

    #[test]
    fn quantiles_come_from_the_observations_between_two_expositions() {
        let before = exposition("send", &[("0.001", 10), ("0.01", 10), ("+Inf", 10)])
            + &exposition("persist", &[("0.001", 0), ("0.01", 50), ("+Inf", 50)]);
        // In between: 90 at most 1 ms, 9 up to 10 ms, 1 beyond.
        let after = exposition("send", &[("0.001", 100), ("0.01", 109), ("+Inf", 110)])
            + &exposition("persist", &[("0.001", 0), ("0.01", 50), ("+Inf", 50)]);
        let send = ["stage=\"send\""];
        assert_eq!(
            bucket_quantile(&before, &after, NAME, &send, 0.5),
            Some(0.001)
        );
        assert_eq!(
            bucket_quantile(&before, &after, NAME, &send, 0.9),
            Some(0.001)
        );
        assert_eq!(
            bucket_quantile(&before, &after, NAME, &send, 0.99),
            Some(0.01)
        );
        assert_eq!(
            bucket_quantile(&before, &after, NAME, &send, 1.0),
            Some(f64::INFINITY)
        );
        // Nothing observed in between, or nothing at all: no quantile.
        assert_eq!(
            bucket_quantile(&before, &after, NAME, &["stage=\"persist\""], 0.99),
            None
        );
        assert_eq!(bucket_quantile("", "", NAME, &send, 0.99), None);
    }
}
