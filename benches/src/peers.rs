//! Side-by-side ingest (issue 18): the metric sample stream that
//! `outpost-bench ingest --mix metrics` sends to an appliance, sent instead
//! to a peer a user might pick — VictoriaMetrics (Prometheus text through its
//! import API) or a Zabbix proxy (trapper items, the sender protocol) — with
//! the same devices, values and cadence, measuring accepted samples/s, the
//! acceptance latency of each request, and the peer's CPU per million
//! samples. Also: the SQL that declares the stream's hosts and trapper items
//! in a Zabbix proxy's database, and Outpost's bytes on disk per sample
//! after sealing and compaction. Nothing here touches an appliance's QUIC
//! path (that is [`crate::ingest`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::procstat;
use crate::report::Report;
use crate::sim::{self, METRICS_VALUES};

/// Where the stream goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// `POST http://ADDR/api/v1/import/prometheus` (one request per sender
    /// tick; VictoriaMetrics answers 204 once the rows are in its in-memory
    /// buffers, flushed to disk about every second).
    VictoriaMetrics { addr: SocketAddr },
    /// A Zabbix proxy's trapper port (sender protocol, one TCP connection per
    /// request as `zabbix_sender` does; the proxy answers `processed: N`
    /// once the values are in its history cache, written to its database by
    /// the history syncers about every second).
    Zabbix { addr: SocketAddr },
}

impl Target {
    fn label(&self) -> &'static str {
        match self {
            Target::VictoriaMetrics { .. } => "victoria-metrics",
            Target::Zabbix { .. } => "zabbix-proxy",
        }
    }
}

/// One side-by-side run against a peer.
#[derive(Debug, Clone)]
pub struct PeerRun {
    pub target: Target,
    /// Simulated devices (host names `dev-000000`…).
    pub devices: usize,
    /// Samples (records of [`METRICS_VALUES`] values) per device per second.
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    /// Connections the stream is spread over (devices `k, k+S, …` share
    /// sender `k`); each sends what its devices produced in the last tick.
    pub senders: usize,
    /// The peer's pid, for CPU and memory (with its descendants: the
    /// proxy's workers are processes of their own).
    pub pid: Option<u32>,
    pub quiet: bool,
}

/// The host name of simulated device `d` (the same at every peer).
pub fn device_name(d: usize) -> String {
    format!("dev-{d:06}")
}

/// The Zabbix item key of one value of a sample: `name` or `name[label]`.
pub fn zabbix_key(name: &str, label: &str) -> String {
    if label.is_empty() {
        name.to_string()
    } else {
        format!("{name}[{label}]")
    }
}

/// SQL declaring `devices` monitored hosts, each with one trapper item
/// (numeric float) per value of the stream, for a Zabbix proxy's SQLite
/// database created from the package's `schema.sql`. A passive proxy loads
/// its configuration from this database at start, so no Zabbix server is
/// needed for the proxy to accept the stream.
pub fn zabbix_seed_sql(devices: usize) -> String {
    let tmpl = sim::metrics_sample(0);
    let mut sql = String::from("BEGIN;\n");
    let mut item = 100_000u64;
    for d in 0..devices {
        let hostid = 10_000 + d as u64;
        let host = device_name(d);
        let _ = writeln!(
            sql,
            "INSERT INTO hosts(hostid,host,name,name_upper,status) VALUES ({hostid},'{host}','{host}','{}',0);",
            host.to_uppercase()
        );
        for v in &tmpl.values {
            item += 1;
            let key = zabbix_key(&v.name, &v.label);
            let _ = writeln!(
                sql,
                "INSERT INTO items(itemid,type,hostid,name,key_,value_type,status,history,trends) VALUES ({item},2,{hostid},'{key}','{key}',0,0,'1d','0');\nINSERT INTO item_rtdata(itemid) VALUES ({item});"
            );
        }
    }
    sql.push_str("COMMIT;\n");
    sql
}

/// Appends the Prometheus text lines of one sample of device `d`.
fn prometheus_lines(buf: &mut String, d: usize, n: u64, ts_ms: u64) {
    let host = device_name(d);
    for v in sim::metrics_sample(n).values {
        if v.label.is_empty() {
            let _ = writeln!(buf, "{}{{host=\"{host}\"}} {} {ts_ms}", v.name, v.value);
        } else {
            let _ = writeln!(
                buf,
                "{}{{host=\"{host}\",instance=\"{}\"}} {} {ts_ms}",
                v.name, v.label, v.value
            );
        }
    }
}

/// Appends the sender-protocol data items of one sample of device `d`.
fn zabbix_items(items: &mut Vec<serde_json::Value>, d: usize, n: u64, ts_ms: u64) {
    let host = device_name(d);
    for v in sim::metrics_sample(n).values {
        items.push(serde_json::json!({
            "host": host,
            "key": zabbix_key(&v.name, &v.label),
            "value": v.value.to_string(),
            "clock": ts_ms / 1000,
            "ns": (ts_ms % 1000) * 1_000_000,
        }));
    }
}

/// A sender-protocol message: `ZBXD\x01`, data length and reserved (u32
/// little-endian each), the JSON.
fn zabbix_frame(json: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(13 + json.len());
    m.extend_from_slice(b"ZBXD\x01");
    m.extend_from_slice(&(json.len() as u32).to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(json);
    m
}

/// `(processed, failed)` from a trapper's reply frame.
fn zabbix_reply(frame: &[u8]) -> anyhow::Result<(u64, u64)> {
    if frame.len() < 13 || &frame[..4] != b"ZBXD" {
        bail!("not a Zabbix reply ({} bytes)", frame.len());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&frame[13..]).context("Zabbix reply is not JSON")?;
    if v["response"] != "success" {
        bail!("Zabbix refused the request: {v}");
    }
    let info = v["info"].as_str().unwrap_or_default();
    let field = |name: &str| -> anyhow::Result<u64> {
        info.split(';')
            .find_map(|p| p.trim().strip_prefix(name))
            .and_then(|x| x.trim().parse().ok())
            .ok_or_else(|| anyhow!("no `{name}` in Zabbix reply {info:?}"))
    };
    Ok((field("processed:")?, field("failed:")?))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Counters of a run, shared by the senders.
#[derive(Default)]
struct Stats {
    /// Samples the peer accepted (whole run).
    accepted: AtomicU64,
    /// Samples it refused (Zabbix `failed`, VictoriaMetrics non-2xx).
    refused: AtomicU64,
    requests: AtomicU64,
    errors: std::sync::Mutex<BTreeMap<String, u64>>,
    /// Request round trips in microseconds (reset after warm-up).
    latency: std::sync::Mutex<Option<Histogram<u64>>>,
}

impl Stats {
    fn error(&self, kind: &str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind.to_string())
            .or_default() += 1;
    }

    fn record(&self, took: Duration) {
        let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = h.as_mut() {
            let _ = h.record(took.as_micros().max(1) as u64);
        }
    }

    fn reset_latency(&self) -> anyhow::Result<()> {
        *self.latency.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Histogram::new_with_bounds(1, 600_000_000, 3)?);
        Ok(())
    }
}

/// Tick of each sender: what its devices produced since the last tick
/// leaves as one request (as the simulated agents send per 100 ms tick).
const TICK: Duration = Duration::from_millis(100);

/// Most samples one request carries. A peer slower than the offered load
/// leaves a backlog; it stays a count (what each device still owes), and
/// each request takes at most this much of it, so the generator's memory
/// is bounded however far behind the peer falls (an unbounded request
/// grew to 22 GB against the Zabbix proxy at 560,000 samples/s).
/// 10,000 is above what one tick carries at the default loads (8 senders:
/// 350 samples at 28,000/s, 7,000 at 560,000/s), so a peer that keeps up
/// sees the same requests as before.
const MAX_REQUEST_SAMPLES: u64 = 10_000;

/// Whether one more sample would take a request over MAX_REQUEST_SAMPLES.
fn request_full(samples: u64) -> bool {
    samples + METRICS_VALUES as u64 > MAX_REQUEST_SAMPLES
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Sends one request carrying `body` and returns the samples accepted.
async fn send(
    target: &Target,
    http: &HttpClient,
    samples: u64,
    body: Vec<u8>,
) -> anyhow::Result<(u64, u64)> {
    match target {
        Target::VictoriaMetrics { addr } => {
            let req = hyper::Request::post(format!("http://{addr}/api/v1/import/prometheus"))
                .body(Full::new(Bytes::from(body)))
                .context("building the import request")?;
            let resp = http.request(req).await.context("import request")?;
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok((samples, 0))
            } else {
                bail!("VictoriaMetrics answered {status}")
            }
        }
        Target::Zabbix { addr } => {
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to the trapper at {addr}"))?;
            s.set_nodelay(true).ok();
            s.write_all(&zabbix_frame(&body)).await?;
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).await?;
            zabbix_reply(&reply)
        }
    }
}

/// One sender: devices `k, k+S, …`, each producing `rate` samples a second
/// from a phase of its own, until `stop`.
async fn sender(
    run: Arc<PeerRun>,
    k: usize,
    http: HttpClient,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let s = run.senders.max(1);
    let mine: Vec<usize> = (k..run.devices).step_by(s).collect();
    // Spread the devices over one period, as real agents are.
    let period = 1.0 / run.rate.max(1e-6);
    let phase: Vec<f64> = mine
        .iter()
        .map(|d| ((*d as u64).wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0 * period)
        .collect();
    let mut generated = vec![0u64; mine.len()];
    // Where the next request starts among `mine`: with a backlog, requests
    // take turns over the devices instead of always serving the first.
    let mut next = 0usize;
    let start = Instant::now();
    let start_ms = now_ms();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set when the last request stopped at MAX_REQUEST_SAMPLES: the next
    // one leaves at once instead of waiting for the tick.
    let mut behind = false;
    loop {
        if behind {
            if stop.is_cancelled() {
                return;
            }
        } else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
        }
        let t = start.elapsed().as_secs_f64();
        let mut prom = String::new();
        let mut items = Vec::new();
        let mut samples = 0u64;
        for j in 0..mine.len() {
            let i = (next + j) % mine.len();
            let d = &mine[i];
            let due = ((t - phase[i]) * run.rate).floor().max(0.0) as u64;
            while generated[i] < due && !request_full(samples) {
                // Each sample carries the time it was due: one device's
                // samples never share a millisecond (every store here keeps
                // one value per series and timestamp, or dedups them).
                let ts = start_ms + ((phase[i] + generated[i] as f64 / run.rate) * 1000.0) as u64;
                match run.target {
                    Target::VictoriaMetrics { .. } => {
                        prometheus_lines(&mut prom, *d, generated[i], ts)
                    }
                    Target::Zabbix { .. } => zabbix_items(&mut items, *d, generated[i], ts),
                }
                generated[i] += 1;
                samples += METRICS_VALUES as u64;
            }
            if request_full(samples) {
                next = (i + 1) % mine.len();
                break;
            }
        }
        behind = request_full(samples);
        if samples == 0 {
            continue;
        }
        let body = match run.target {
            Target::VictoriaMetrics { .. } => prom.into_bytes(),
            Target::Zabbix { .. } => {
                match serde_json::to_vec(
                    &serde_json::json!({"request": "sender data", "data": items}),
                ) {
                    Ok(b) => b,
                    Err(e) => {
                        stats.error(&format!("encode: {e}"));
                        continue;
                    }
                }
            }
        };
        let t0 = Instant::now();
        match send(&run.target, &http, samples, body).await {
            Ok((ok, refused)) => {
                stats.record(t0.elapsed());
                stats.accepted.fetch_add(ok, Ordering::Relaxed);
                stats.refused.fetch_add(refused, Ordering::Relaxed);
                stats.requests.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.error(&format!("{e:#}").chars().take(80).collect::<String>());
                // A refusing peer is not retried in a tight loop.
                behind = false;
            }
        }
    }
}

/// Runs the stream against the peer and reports what it accepted.
pub async fn run(run: &PeerRun) -> anyhow::Result<Report> {
    anyhow::ensure!(run.devices > 0 && run.rate > 0.0, "no devices or no rate");
    let stats = Arc::new(Stats::default());
    stats.reset_latency()?;
    let stop = CancellationToken::new();
    let http: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(run.senders.max(1))
            .build_http();
    let shared = Arc::new(run.clone());
    let tasks: Vec<_> = (0..run.senders.max(1).min(run.devices))
        .map(|k| {
            tokio::spawn(sender(
                shared.clone(),
                k,
                http.clone(),
                stats.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(run.warmup).await;
    stats.reset_latency()?;
    let accepted0 = stats.accepted.load(Ordering::Relaxed);
    let cpu0 = run.pid.and_then(procstat::tree_cpu_seconds);
    let self0 = procstat::self_cpu_seconds();
    let t0 = Instant::now();
    let mut peak_pss = 0u64;
    while t0.elapsed() < run.duration {
        tokio::time::sleep(Duration::from_millis(500).min(run.duration)).await;
        if let Some(pss) = run.pid.and_then(procstat::tree_pss_bytes) {
            peak_pss = peak_pss.max(pss);
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let accepted_window = stats.accepted.load(Ordering::Relaxed) - accepted0;
    let cpu = run
        .pid
        .and_then(procstat::tree_cpu_seconds)
        .zip(cpu0)
        .map(|(a, b)| a - b);
    let self_cpu = procstat::self_cpu_seconds() - self0;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let hist = stats
        .latency
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| anyhow!("latency histogram missing"))?;
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let errors = stats
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut rep = Report::new(&format!("peer_{}", run.target.label().replace('-', "_")));
    rep.int("devices", run.devices as u64)
        .num("rate_per_device", run.rate)
        .int("senders", run.senders as u64)
        .num("samples_per_sec", accepted_window as f64 / elapsed)
        .num(
            "offered_samples_per_sec",
            run.devices as f64 * run.rate * METRICS_VALUES as f64,
        )
        .num("p50_ms", q(0.5))
        .num("p99_ms", q(0.99))
        .num("max_ms", hist.max() as f64 / 1000.0)
        .int(
            "samples_accepted_total",
            stats.accepted.load(Ordering::Relaxed),
        )
        .int("samples_refused", stats.refused.load(Ordering::Relaxed))
        .int("requests", stats.requests.load(Ordering::Relaxed))
        .int("errors", errors.values().sum());
    if !errors.is_empty() {
        rep.text(
            "error_kinds",
            &errors
                .iter()
                .map(|(k, n)| format!("{k}:{n}"))
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    if let (Some(cpu), true) = (cpu, accepted_window > 0) {
        rep.num(
            "cpu_s_per_million_samples",
            cpu / (accepted_window as f64 / 1e6),
        )
        .num("cpu_pct", cpu / elapsed * 100.0);
    }
    if peak_pss > 0 {
        rep.num("peak_pss_mb", peak_pss as f64 / 1048576.0);
    }
    rep.num("client_cpu_pct", self_cpu / elapsed * 100.0);
    if !run.quiet {
        eprintln!(
            "{}: {:.0} accepted samples/s ({} devices × {}/s × {METRICS_VALUES} values offered), request p99 {:.2} ms, errors {:?}",
            run.target.label(),
            accepted_window as f64 / elapsed,
            run.devices,
            run.rate,
            q(0.99),
            errors
        );
    }
    Ok(rep)
}

/// Outpost's bytes on disk per stored sample: opens a stopped appliance's
/// database, seals every raw sample into chunks and rolls up (what the
/// appliance does once a window settles), compacts, and divides the bytes on
/// disk by `samples`.
pub fn outpost_disk(db: &Path, samples: u64) -> anyhow::Result<Report> {
    use outpost_storage::ingest::IngestWriter;
    use outpost_storage::{Durability, Store, StoreOptions};
    anyhow::ensure!(samples > 0, "no samples to divide by");
    let store = Store::open(
        db,
        &StoreOptions {
            durability: Durability::Buffered,
            ..StoreOptions::default()
        },
        outpost_storage::TABLES,
    )
    .with_context(|| format!("opening the appliance database {}", db.display()))?;
    let before = store.disk_usage_bytes()?;
    let mut w = IngestWriter::new(store.clone(), now_ms())?;
    w.roll_up(u64::MAX, 0, usize::MAX)
        .context("rolling up the stored samples")?;
    let sealed = w
        .seal_chunks(u64::MAX, 0, usize::MAX)
        .context("sealing the head samples into chunks")?;
    store.compact_all()?;
    let after = store.disk_usage_bytes()?;
    let stored = stored_samples(&store).context("counting the stored samples")?;
    let mut rep = Report::new("outpost_disk");
    rep.int("samples", samples)
        .int("stored", stored)
        .int("chunks_sealed", sealed as u64)
        .int("bytes_before_compaction", before)
        .int("bytes_on_disk", after)
        .num("bytes_per_sample", after as f64 / stored.max(1) as f64);
    Ok(rep)
}

/// Values stored in the raw-sample tables, counted back: every sealed
/// chunk decoded, plus head samples not sealed yet. A value counts once
/// per (device, series, millisecond): two acknowledged samples of one
/// series with the same timestamp are one stored sample (the newer wins),
/// which is why the bytes per sample divide by this, not by what was
/// acknowledged.
fn stored_samples(store: &outpost_storage::Store) -> anyhow::Result<u64> {
    use outpost_storage::{chunk, samples};
    let mut n = 0u64;
    let invalid = |e: chunk::ChunkError| outpost_storage::StorageError::Invalid(e.to_string());
    store.scan_raw(samples::CHUNKS, &[], None, |_, v| {
        // Format 2 (one chunk per device, series group and day) beside
        // format 1 (one per series and 2-hour window), as readers do.
        n += if chunk::is_device_chunk(v) {
            chunk::decode_device(v)
                .map_err(invalid)?
                .iter()
                .map(|(_, s)| s.len() as u64)
                .sum::<u64>()
        } else {
            chunk::decode(v).map_err(invalid)?.len() as u64
        };
        Ok(true)
    })?;
    // The head (normally empty once sealed): each device's distinct
    // (series, millisecond) pairs, blocks and per-sample entries alike.
    let mut devices = std::collections::BTreeSet::new();
    for table in [outpost_storage::head::BLOCKS, outpost_storage::head::LEGACY] {
        store.scan_raw(table, &[], None, |k, _| {
            if let Some(d) = outpost_storage::keys::device_from_key(k) {
                devices.insert(d);
            }
            Ok(true)
        })?;
    }
    for d in devices {
        let head =
            outpost_storage::head::read(store, d, outpost_storage::head::Series::All, 0, u64::MAX)?;
        n += head.samples.values().map(|s| s.len() as u64).sum::<u64>();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_has_the_announced_number_of_values() {
        assert_eq!(sim::metrics_sample(7).values.len(), METRICS_VALUES);
    }

    #[test]
    fn prometheus_lines_carry_every_value_with_host_and_instance() {
        let mut buf = String::new();
        prometheus_lines(&mut buf, 12, 3, 1_700_000_000_123);
        let lines: Vec<&str> = buf.lines().collect();
        assert_eq!(lines.len(), METRICS_VALUES);
        assert!(lines.iter().all(|l| l.ends_with(" 1700000000123")));
        assert!(
            lines[0].starts_with("cpu{host=\"dev-000012\"} "),
            "{}",
            lines[0]
        );
        assert!(
            lines
                .iter()
                .any(|l| l
                    .starts_with("disk_used_percent{host=\"dev-000012\",instance=\"/var\"} 48 ")),
            "{buf}"
        );
    }

    #[test]
    fn zabbix_frames_and_replies_follow_the_sender_protocol() {
        let f = zabbix_frame(b"{}");
        assert_eq!(&f[..5], b"ZBXD\x01");
        assert_eq!(u32::from_le_bytes([f[5], f[6], f[7], f[8]]), 2);
        assert_eq!(&f[13..], b"{}");
        let reply = zabbix_frame(
            br#"{"response":"success","info":"processed: 28; failed: 2; total: 30; seconds spent: 0.000134"}"#,
        );
        assert_eq!(zabbix_reply(&reply).unwrap(), (28, 2));
        let refused = zabbix_frame(br#"{"response":"failed","info":"no"}"#);
        assert!(zabbix_reply(&refused).is_err());
        assert!(zabbix_reply(b"HTTP/1.1 400").is_err());
    }

    #[test]
    fn zabbix_items_match_the_seeded_item_keys() {
        let mut items = Vec::new();
        zabbix_items(&mut items, 1, 0, 1_700_000_000_500);
        let sql = zabbix_seed_sql(2);
        for it in &items {
            let key = it["key"].as_str().unwrap();
            assert!(
                sql.contains(&format!("'{key}','{key}'")),
                "{key} not seeded"
            );
            assert_eq!(it["host"], "dev-000001");
            assert_eq!(it["clock"], 1_700_000_000);
            assert_eq!(it["ns"], 500_000_000);
        }
        assert_eq!(sql.matches("INSERT INTO hosts").count(), 2);
        assert_eq!(
            sql.matches("INSERT INTO item_rtdata").count(),
            2 * METRICS_VALUES
        );
    }

    /// A trapper that takes 300 ms per request, far slower than 20,000
    /// samples/s: the generator must keep each request at most
    /// MAX_REQUEST_SAMPLES (it used to put the whole backlog in the next
    /// one and ran out of memory) and still send back to back.
    #[tokio::test]
    async fn a_slow_peer_gets_bounded_requests_however_far_behind() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sizes = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
        let seen = sizes.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = [0u8; 13];
                    if s.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
                    let mut body = vec![0u8; len];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let n = v["data"].as_array().map_or(0, |a| a.len());
                    seen.lock().unwrap().push(n);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let info = format!(
                        r#"{{"response":"success","info":"processed: {n}; failed: 0; total: {n}"}}"#
                    );
                    let _ = s.write_all(&zabbix_frame(info.as_bytes())).await;
                });
            }
        });
        let run = PeerRun {
            target: Target::Zabbix { addr },
            devices: 1000,
            rate: 20.0,
            duration: Duration::from_millis(1500),
            warmup: Duration::from_millis(100),
            senders: 1,
            pid: None,
            quiet: true,
        };
        let rep = super::run(&run).await.unwrap();
        let sizes = sizes.lock().unwrap().clone();
        assert!(sizes.len() >= 3, "requests: {sizes:?}");
        assert!(
            sizes.iter().all(|n| *n as u64 <= MAX_REQUEST_SAMPLES),
            "a request above {MAX_REQUEST_SAMPLES} samples: {sizes:?}"
        );
        // Behind from the first request on: every request is full, and
        // they leave back to back (300 ms each), not one per tick.
        assert!(
            sizes.iter().filter(|n| request_full(**n as u64)).count() >= 3,
            "{sizes:?}"
        );
        let accepted: u64 = rep.get("samples_accepted_total").unwrap().parse().unwrap();
        assert_eq!(accepted, sizes.iter().map(|n| *n as u64).sum::<u64>());
    }
}
