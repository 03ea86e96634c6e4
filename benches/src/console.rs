//! `outpost-bench console`: the console at central with a big fleet.
//!
//! Seeds a central database through the store's real apply path (one
//! batch per site: every device's snapshot, a CPU/memory/disk rollup, a
//! firing alert per 50 devices), reopens it (the fleet index is rebuilt
//! from disk, timed), serves central's HTTP router on loopback in this
//! process, and measures pages with a plain HTTP/1.1 client (one
//! connection per request, sequential): p50/p99/max of the time from
//! connect to the last byte. Then opens N live-update streams and
//! measures their memory and the cost of fanning out status changes that
//! go through the apply path, as the uplink receiver does it.
//!
//! Client and server share the process (and the 2 cores): the latencies
//! and CPU figures are upper bounds of the server's.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use outpost_central::model::{JoinTokenRecord, SiteRecord};
use outpost_central::rocks::RocksCentralStore;
use outpost_central::store::DeviceSearch;
use outpost_proto::DeviceId;
use outpost_uplink::batch::{
    AlertState, AlertTransition, DeviceRollups, DeviceStatus, DeviceUpdate, Rollup, SeriesRollup,
    Severity, SiteBatch,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procstat;
use crate::report::Report;

/// What to seed and measure.
#[derive(Debug, Clone)]
pub struct ConsoleRun {
    pub sites: u64,
    pub devices_per_site: u64,
    /// Requests per page scenario.
    pub requests: usize,
    pub subscribers: usize,
    /// Status changes fanned out to the subscribers.
    pub events: u64,
}

fn rollup(v: f64) -> Rollup {
    Rollup {
        min: v - 2.0,
        max: v + 2.0,
        sum: v * 10.0,
        count: 10,
        last: v,
        last_ts_ms: 0,
    }
}

fn site_id(s: u64) -> String {
    format!("s-{s:05}")
}

fn device(s: u64, d: u64) -> DeviceId {
    DeviceId((s << 20) | d)
}

/// The batch `seq` of site `s`: every device, one bucket of rollups.
fn site_batch(run: &ConsoleRun, s: u64, seq: u64, now: u64, flip: u64) -> SiteBatch {
    let bucket = now - now % 300_000 - 300_000;
    let n = run.devices_per_site;
    SiteBatch {
        seq,
        site: site_id(s).into(),
        tenant: "acme".into(),
        created_ms: now,
        devices: (0..n)
            .map(|d| {
                let i = s * n + d;
                let offline = i.is_multiple_of(13) ^ (d < flip);
                DeviceUpdate {
                    device: device(s, d),
                    customer: String::new().into(),
                    hostname: format!("host-{i:06}"),
                    os: if i.is_multiple_of(3) {
                        "Ubuntu 24.04 LTS"
                    } else {
                        "Debian GNU/Linux 12"
                    }
                    .into(),
                    agent_version: "0.1.0".into(),
                    enrolled_at_ms: now - 86_400_000,
                    revoked: false,
                    status: if offline {
                        DeviceStatus::Offline
                    } else {
                        DeviceStatus::Online
                    },
                    status_since_ms: now - 3_600_000 + seq,
                    last_seen_ms: now,
                    as_of_ms: now + seq,
                }
            })
            .collect(),
        rollups: if flip > 0 {
            vec![]
        } else {
            (0..n)
                .map(|d| {
                    let i = (s * n + d) as f64;
                    DeviceRollups {
                        device: device(s, d),
                        bucket_start_ms: bucket,
                        computed_ms: now,
                        series: vec![
                            SeriesRollup {
                                name: "cpu".into(),
                                label: String::new(),
                                rollup: rollup(i % 97.0),
                            },
                            SeriesRollup {
                                name: "memory".into(),
                                label: String::new(),
                                rollup: rollup(30.0 + i % 60.0),
                            },
                            SeriesRollup {
                                name: "disk_used_percent".into(),
                                label: "/".into(),
                                rollup: rollup(20.0 + i % 75.0),
                            },
                        ],
                    }
                })
                .collect()
        },
        alerts: if flip > 0 {
            vec![]
        } else {
            (0..n)
                .filter(|d| d % 50 == 7)
                .map(|d| AlertTransition {
                    alert_id: d + 1,
                    device: Some(device(s, d)),
                    rule: "disk_full".into(),
                    severity: if d % 100 == 7 {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    },
                    state: AlertState::Firing,
                    at_ms: now - 600_000,
                    message: "disk / above 90 %".into(),
                    value: Some(93.0),
                })
                .collect()
        },
        ..Default::default()
    }
}

/// Seeds `dir` (a central data directory) with the fleet: seconds taken.
fn seed(run: &ConsoleRun, dir: &Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    let store = RocksCentralStore::open(&dir.join("db"))?;
    let now = outpost_storage::now_ms();
    for s in 0..run.sites {
        let site = SiteRecord {
            joined_ms: 1,
            interval_ms: 60_000,
            ..SiteRecord::new(
                "acme".into(),
                format!("customer-{:03}", s % 100).into(),
                site_id(s).into(),
                format!("Site {s:04}"),
                1,
            )
        };
        let tok = JoinTokenRecord {
            tenant: "acme".into(),
            site_id: site.site_id.clone(),
            expires_ms: 0,
        };
        store.create_site(
            &site,
            &outpost_proto::pki::sha256(site.site_id.as_bytes()),
            &tok,
        )?;
        store.apply_batch("acme", &site_id(s), &site_batch(run, s, 1, now, 0), now)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// One GET: (status, body bytes, seconds from connect to the last byte).
async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    auth: &str,
) -> anyhow::Result<(u16, usize, f64)> {
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(64 * 1024);
    s.read_to_end(&mut buf).await?;
    let secs = started.elapsed().as_secs_f64();
    let status = std::str::from_utf8(buf.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, buf.len(), secs))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Measures `paths` (one per request, cycled) `n` times.
async fn measure(
    scenario: &str,
    addr: std::net::SocketAddr,
    auth: &str,
    n: usize,
    paths: &[String],
) -> anyhow::Result<Report> {
    // Warm-up (first-touch allocations, page cache).
    for p in paths.iter().take(3) {
        get(addr, p, auth).await?;
    }
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0usize;
    for i in 0..n {
        let p = &paths[i % paths.len()];
        let (status, len, secs) = get(addr, p, auth).await?;
        anyhow::ensure!(status == 200, "{scenario}: GET {p} answered {status}");
        times.push(secs * 1000.0);
        bytes += len;
    }
    times.sort_by(f64::total_cmp);
    let mut r = Report::new(scenario);
    r.int("requests", n as u64)
        .num("p50_ms", percentile(&times, 0.5))
        .num("p99_ms", percentile(&times, 0.99))
        .num("max_ms", percentile(&times, 1.0))
        .int("avg_bytes", (bytes / n.max(1)) as u64);
    eprintln!("{}", r.line());
    Ok(r)
}

/// Runs the whole benchmark (see the module docs) in `dir`.
pub async fn run(run: &ConsoleRun, dir: &Path) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    let devices = run.sites * run.devices_per_site;
    let (r2, d2) = (run.clone(), dir.to_path_buf());
    let seed_s = tokio::task::spawn_blocking(move || seed(&r2, &d2)).await??;
    eprintln!(
        "seeded {devices} devices across {} sites in {seed_s:.1} s",
        run.sites
    );
    // Reopen: the fleet index is rebuilt from the stored rows.
    let rss_before_open = procstat::rss_bytes(std::process::id()).unwrap_or(0);
    let started = Instant::now();
    let d3 = dir.to_path_buf();
    let store =
        tokio::task::spawn_blocking(move || RocksCentralStore::open(&d3.join("db"))).await??;
    let open_s = started.elapsed().as_secs_f64();
    let rss_after_open = procstat::rss_bytes(std::process::id()).unwrap_or(0);
    let mut seed_r = Report::new("console_seed");
    seed_r
        .int("devices", devices)
        .int("sites", run.sites)
        .num("seed_s", seed_s)
        .num("index_rebuild_s", open_s)
        .num(
            "open_rss_delta_mib",
            rss_after_open.saturating_sub(rss_before_open) as f64 / 1048576.0,
        );
    eprintln!("{}", seed_r.line());
    reports.push(seed_r);

    // Baseline: what the dashboard read before the fleet index (every
    // device row of the tenant, decoded, 10,000 per page), 3 times.
    let mut scans = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let mut after = None;
        let mut n = 0usize;
        loop {
            let p = store.devices(
                "acme",
                &outpost_central::store::DeviceFilter {
                    after: after.clone(),
                    limit: 10_000,
                    ..Default::default()
                },
            )?;
            n += p.items.len();
            match p.next {
                Some(x) => after = Some(x),
                None => break,
            }
        }
        anyhow::ensure!(n as u64 == devices, "scanned {n} devices");
        scans.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    scans.sort_by(f64::total_cmp);
    let mut base = Report::new("console_baseline_full_scan");
    base.int("devices", devices)
        .num("min_ms", scans[0])
        .num("max_ms", scans[scans.len() - 1]);
    eprintln!("{}", base.line());
    reports.push(base);

    // A deep cursor (page 500 of the hostname order).
    let mut after = None;
    for _ in 0..(devices / 100 / 2).min(500) {
        let p = store.search_devices(
            "acme",
            &DeviceSearch {
                limit: 100,
                after: after.clone(),
                ..Default::default()
            },
        )?;
        after = p.next;
    }
    let deep = after.context("a deep cursor")?;

    let keys = outpost_central::dir::CentralDir(dir.to_path_buf()).init_or_load()?;
    let limits = outpost_central::CentralLimits {
        live: outpost_console::LiveConfig {
            max_subscribers: run.subscribers + 16,
            ..Default::default()
        },
        ..Default::default()
    };
    let store: Arc<dyn outpost_central::store::CentralStore> = Arc::new(store);
    let central = Arc::new(outpost_central::Central::with_limits(
        store,
        keys,
        tokio_util::sync::CancellationToken::new(),
        limits,
    ));
    let token = outpost_central::ops::create_token(
        central.store.as_ref(),
        &outpost_central::ops::CreateToken {
            tenant: "acme".into(),
            role: outpost_central::model::Role::Admin,
            customers: vec![],
            ttl: None,
        },
        1,
    )
    .await?;
    let auth = format!("Bearer {token}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = outpost_central::api::router(central.clone())
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });

    let n = run.requests;
    let one = |p: &str| vec![p.to_string()];
    let searches: Vec<String> = (0..50)
        .map(|i| format!("/devices?q=host-{:04}", (i * 37) % (devices / 100).max(1)))
        .collect();
    let pages: Vec<String> = (0..50u64)
        .map(|i| {
            let s = (i * 19) % run.sites;
            let d = device(s, (i * 7) % run.devices_per_site);
            format!("/sites/{}/devices/{}", site_id(s), d)
        })
        .collect();
    for (scenario, paths) in [
        ("console_dashboard", one("/")),
        ("console_devices_first_page", one("/devices")),
        ("console_devices_search", searches),
        (
            "console_devices_filter",
            one("/devices?status=offline&customer=customer-007"),
        ),
        (
            "console_devices_sort_cpu",
            one("/devices?sort=cpu&dir=desc"),
        ),
        (
            "console_devices_deep_page",
            vec![format!("/devices?after={deep}")],
        ),
        ("console_device_page", pages),
        ("console_alerts", one("/alerts")),
        ("api_summary", one("/api/v1/summary")),
    ] {
        reports.push(measure(scenario, addr, &auth, n, &paths).await?);
    }

    // Live: N subscribers, then status changes through the apply path.
    let pid = std::process::id();
    let rss0 = procstat::rss_bytes(pid).unwrap_or(0);
    let received = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..run.subscribers {
        let (received, ready, auth) = (received.clone(), ready.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            let req = format!(
                "GET /console/live HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nAccept: text/event-stream\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await?;
            let mut buf = vec![0u8; 16 * 1024];
            let mut first = true;
            let mut carry = Vec::new();
            loop {
                let k = s.read(&mut buf).await?;
                if k == 0 {
                    return anyhow::Ok(());
                }
                if first {
                    first = false;
                    ready.fetch_add(1, Ordering::Relaxed);
                }
                carry.extend_from_slice(&buf[..k]);
                let text = String::from_utf8_lossy(&carry);
                let events = text.matches("event: device\n").count();
                if events > 0 {
                    received.fetch_add(events, Ordering::Relaxed);
                    let last = text.rfind("event: device\n").unwrap_or(0) + 14;
                    carry = carry.split_off(last.min(carry.len()));
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < run.subscribers {
        anyhow::ensure!(Instant::now() < deadline, "subscribers did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss1 = procstat::rss_bytes(pid).unwrap_or(0);
    let subs = central.live.subscribers();
    // Flip `events` devices of site 0 through the apply path.
    let cpu0 = procstat::cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let now = outpost_storage::now_ms();
    let b = site_batch(run, 0, 2, now, run.events.min(run.devices_per_site));
    let (outcome, delta) = central
        .store
        .apply_batch_delta(&"acme".into(), &site_id(0).into(), b, now)
        .await?;
    anyhow::ensure!(
        matches!(
            outcome,
            outpost_central::store::ApplyOutcome::Applied { .. }
        ),
        "{outcome:?}"
    );
    let events = delta.devices.len();
    outpost_central::console::publish_delta(
        &central.live,
        &"acme".into(),
        &site_id(0).into(),
        &delta,
    );
    let want = events * run.subscribers;
    while received.load(Ordering::Relaxed) < want {
        anyhow::ensure!(
            Instant::now() < deadline + Duration::from_secs(60),
            "only {} of {want} events arrived",
            received.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let fanout_s = started.elapsed().as_secs_f64();
    let cpu = procstat::cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    let m = central.metrics.encode(false);
    let metric = |name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or("?")
            .to_string()
    };
    let mut live = Report::new("console_live");
    live.int("subscribers", subs as u64)
        .num(
            "rss_per_subscriber_kib",
            rss1.saturating_sub(rss0) as f64 / 1024.0 / run.subscribers.max(1) as f64,
        )
        .int("events", events as u64)
        .int("deliveries", want as u64)
        .num("fanout_ms", fanout_s * 1000.0)
        .num("cpu_ms", cpu * 1000.0)
        .num("cpu_us_per_delivery", cpu * 1e6 / want.max(1) as f64)
        .text(
            "sent",
            &metric("outpost_central_console_live_events_sent_total"),
        )
        .text(
            "lagged",
            &metric("outpost_central_console_live_lagged_total"),
        );
    eprintln!("{}", live.line());
    reports.push(live);
    // One more than the cap is refused (503), counted.
    for t in tasks {
        t.abort();
    }
    Ok(reports)
}
