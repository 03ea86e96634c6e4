//! Uplink figures, in process:
//!
//! * **Size**: one simulated hour of a site of `devices` agents with the
//!   real agent's mix (30 s heartbeats, 60 s metrics samples of 28 values).
//!   Raw = bincode bytes of every record the appliance receives (before
//!   framing, TLS and QUIC: the real wire is larger). Uplink = compressed
//!   batches (`batch::encode`, what the outbox stores and sends) at a 60 s
//!   interval: device snapshots once, every closed 5-minute rollup of every
//!   series. Reported per device per hour.
//! * **Apply rate**: central's RocksDB store applying full batches (every
//!   device of a site, every series of one closed bucket: the heaviest
//!   batch a site sends) from `threads` threads, each batch decoded then
//!   applied with a synced write, as the receiver does.
//! * **Apply rate on PostgreSQL** (`--store postgres`): the same batches
//!   through `PgCentralStore` on a private server the bench starts
//!   (`outpost_central::pg::cluster::TestCluster`, default settings:
//!   `fsync` and synchronous commit on), with one central instance (one
//!   pool, `threads` tasks) and with two (two pools, `threads` tasks each,
//!   each instance applying its half of the sites); then both instances
//!   race the same batches on a fresh database: each is applied exactly
//!   once (the bench fails otherwise).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use outpost_central::model::{JoinTokenRecord, SiteRecord};
use outpost_central::pg::cluster::TestCluster;
use outpost_central::pg::{PgCentralStore, PgOptions};
use outpost_central::rocks::RocksCentralStore;
use outpost_central::store::{ApplyOutcome, CentralStore};
use outpost_proto::DeviceId;
use outpost_proto::codec;
use outpost_proto::messages::{Record, RecordBody};
use outpost_uplink::batch::{
    self, DeviceRollups, DeviceStatus, DeviceUpdate, Rollup, SeriesRollup, SiteBatch,
};

use crate::report::Report;
use crate::sim::{Mix, record_body};

#[derive(Debug, Clone)]
pub struct UplinkRun {
    pub devices: u64,
    pub sites: u64,
    pub batches: u64,
    pub threads: usize,
    /// One batch in `full_every` carries a closed bucket (5 with 60 s
    /// batches and 5-minute buckets); the others carry no change. 1 = every
    /// batch is full (worst case).
    pub full_every: u64,
}

const HOUR_MS: u64 = 3_600_000;
const BUCKET_MS: u64 = 300_000;

fn device_update(d: u64, now: u64) -> DeviceUpdate {
    DeviceUpdate {
        device: DeviceId(0x1000 + d),
        customer: "dental".into(),
        hostname: format!("ws-{d:04}"),
        os: "Debian GNU/Linux 12".into(),
        agent_version: "0.1.0".into(),
        enrolled_at_ms: 1,
        revoked: false,
        status: DeviceStatus::Online,
        status_since_ms: 1,
        last_seen_ms: now,
        as_of_ms: now,
    }
}

/// Rollups of one device for the buckets of `[start, start + HOUR)` from
/// the simulated metric samples, and the raw record bytes of that hour.
fn device_hour(d: u64, start: u64) -> (u64, BTreeMap<u64, Vec<SeriesRollup>>) {
    let mut raw = 0u64;
    let mut series: BTreeMap<(String, String), Vec<(u64, f64)>> = BTreeMap::new();
    // Realistic mix: records every 20 s on average: 2 heartbeats, 1 metrics.
    for n in 0..180u64 {
        let ts = start + n * 20_000;
        let body = record_body(Mix::Realistic, n + d * 7);
        let rec = Record {
            seq: n + 1,
            ts_ms: ts,
            body,
        };
        raw += codec::encode(&rec).map(|b| b.len() as u64).unwrap_or(0);
        if let RecordBody::Metrics(m) = &rec.body {
            for v in &m.values {
                series
                    .entry((v.name.clone(), v.label.clone()))
                    .or_default()
                    // Devices differ by 0.01 in every value; the sum is
                    // rounded to two decimals again, as the agent reports
                    // (`x + 0.07` is rarely itself a two-decimal f64, which
                    // sent a third of the rollups to the 8-byte raw column).
                    .push((ts, ((v.value + d as f64 * 0.01) * 100.0).round() / 100.0));
            }
        }
    }
    let mut buckets: BTreeMap<u64, Vec<SeriesRollup>> = BTreeMap::new();
    for ((name, label), samples) in series {
        for (b, r) in outpost_storage::rollup::compute(samples, BUCKET_MS) {
            buckets.entry(b).or_default().push(SeriesRollup {
                name: name.clone(),
                label: label.clone(),
                // The appliance's compactor makes the same copy.
                rollup: Rollup {
                    min: r.min,
                    max: r.max,
                    sum: r.sum,
                    count: r.count,
                    last: r.last,
                    last_ts_ms: r.last_ts_ms,
                },
            });
        }
    }
    (raw, buckets)
}

/// Raw and uplink bytes of one site-hour.
pub fn size(devices: u64) -> anyhow::Result<Report> {
    let start = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS;
    let mut raw = 0u64;
    let mut per_bucket: BTreeMap<u64, Vec<DeviceRollups>> = BTreeMap::new();
    let mut rollups = 0u64;
    for d in 0..devices {
        let (r, buckets) = device_hour(d, start);
        raw += r;
        for (b, series) in buckets {
            rollups += series.len() as u64;
            per_bucket.entry(b).or_default().push(DeviceRollups {
                device: DeviceId(0x1000 + d),
                bucket_start_ms: b,
                computed_ms: b + BUCKET_MS + 120_000,
                series,
            });
        }
    }
    // One batch per minute; a bucket goes out in the minute after it closes
    // (+ settle); the first batch carries every device snapshot.
    let mut uplink = 0u64;
    let mut batches = 0u64;
    let mut decoded_rollups = 0u64;
    // Where the batch bytes go: part → (bincode bytes, zstd of it alone).
    let mut columns: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    for minute in 0..60u64 {
        let now = start + (minute + 1) * 60_000;
        let mut b = SiteBatch {
            seq: minute + 1,
            site: "s-0123456789abcdef".into(),
            tenant: "acme".into(),
            created_ms: now,
            ..Default::default()
        };
        if minute == 0 {
            b.devices = (0..devices).map(|d| device_update(d, now)).collect();
        }
        let ready: Vec<u64> = per_bucket
            .keys()
            .copied()
            .filter(|bk| bk + BUCKET_MS + 120_000 <= now)
            .collect();
        for bk in ready {
            if let Some(v) = per_bucket.remove(&bk) {
                b.rollups.extend(v);
            }
        }
        let bytes = batch::encode(&b, batch::DEFAULT_ZSTD_LEVEL)?;
        decoded_rollups += batch::decode(&bytes)?.rollup_count() as u64;
        uplink += bytes.len() as u64;
        batches += 1;
        tally_columns(&mut columns, &b);
    }
    // Buckets that close after the hour went out in the next hour's batches:
    // count the full hour's rollups by sending them once more here.
    let rest: Vec<DeviceRollups> = per_bucket.into_values().flatten().collect();
    if !rest.is_empty() {
        let b = SiteBatch {
            seq: 61,
            site: "s-0123456789abcdef".into(),
            tenant: "acme".into(),
            rollups: rest,
            ..Default::default()
        };
        let bytes = batch::encode(&b, batch::DEFAULT_ZSTD_LEVEL)?;
        decoded_rollups += batch::decode(&bytes)?.rollup_count() as u64;
        uplink += bytes.len() as u64;
        tally_columns(&mut columns, &b);
    }
    anyhow::ensure!(
        decoded_rollups == rollups,
        "rollups lost in encoding: {decoded_rollups} != {rollups}"
    );
    let mut rep = Report::new("uplink_size");
    rep.int("devices", devices)
        .int("batches_per_hour", batches)
        .int("rollups_per_device_hour", rollups / devices.max(1))
        .int("raw_bytes_per_device_hour", raw / devices.max(1))
        .int("uplink_bytes_per_device_hour", uplink / devices.max(1))
        .num("reduction", raw as f64 / uplink.max(1) as f64);
    let bincode: u64 = columns.values().map(|c| c.0).sum();
    rep.int(
        "parts_bincode_bytes_per_device_hour",
        bincode / devices.max(1),
    );
    eprintln!("uplink bytes per device-hour by part (bincode, zstd of the part alone):");
    for (name, (b, z)) in &columns {
        eprintln!(
            "  {name:<24} {:>8.1} {:>8.1}",
            *b as f64 / devices.max(1) as f64,
            *z as f64 / devices.max(1) as f64
        );
        rep.num(
            &format!("part_{name}_zstd_bytes_per_device_hour"),
            *z as f64 / devices.max(1) as f64,
        );
    }
    Ok(rep)
}

/// Adds the bytes of each part of `b` (device snapshots, alerts, rollup
/// columns) to `columns`.
fn tally_columns(columns: &mut BTreeMap<&'static str, (u64, u64)>, b: &SiteBatch) {
    for (name, raw, z) in batch::part_sizes(b, batch::DEFAULT_ZSTD_LEVEL) {
        let e = columns.entry(name).or_default();
        e.0 += raw as u64;
        e.1 += z as u64;
    }
}

fn site_record(s: u64) -> (SiteRecord, JoinTokenRecord) {
    let site = SiteRecord {
        joined_ms: 1,
        interval_ms: 60_000,
        ..SiteRecord::new(
            "acme".into(),
            format!("c{}", s % 50).into(),
            format!("s-{s:06}").into(),
            format!("site {s}"),
            1,
        )
    };
    let tok = JoinTokenRecord {
        tenant: "acme".into(),
        site_id: site.site_id.clone(),
        expires_ms: 0,
    };
    (site, tok)
}

/// The run's encoded batches (batch `i` is site `i % sites`, seq
/// `i / sites + 1`) and the series per device.
fn encoded_batches(run: &UplinkRun) -> anyhow::Result<(Vec<Vec<u8>>, u64)> {
    // One template bucket of `devices` devices.
    let (_, buckets) = device_hour(0, 0);
    let template: Vec<SeriesRollup> = buckets.into_values().next().unwrap_or_default();
    let series = template.len() as u64;
    let payloads: Vec<Vec<u8>> = (0..run.batches)
        .map(|i| {
            let site = i % run.sites;
            let seq = i / run.sites + 1;
            let full = i % run.full_every.max(1) == 0;
            let n = if full { run.devices } else { 0 };
            let b = SiteBatch {
                seq,
                site: format!("s-{site:06}").into(),
                tenant: "acme".into(),
                created_ms: 1,
                devices: (0..n).map(|d| device_update(d, seq)).collect(),
                rollups: (0..n)
                    .map(|d| DeviceRollups {
                        device: DeviceId(0x1000 + d),
                        bucket_start_ms: seq * BUCKET_MS,
                        computed_ms: 1,
                        series: template.clone(),
                    })
                    .collect(),
                ..Default::default()
            };
            batch::encode(&b, batch::DEFAULT_ZSTD_LEVEL)
        })
        .collect::<Result<_, _>>()?;
    Ok((payloads, series))
}

/// Central batch apply rate.
pub fn apply(run: &UplinkRun, dir: &Path) -> anyhow::Result<Report> {
    let store = Arc::new(RocksCentralStore::open(dir)?);
    for s in 0..run.sites {
        let (site, tok) = site_record(s);
        store.create_site(
            &site,
            &outpost_proto::pki::sha256(site.site_id.as_bytes()),
            &tok,
        )?;
    }
    let (payloads, series) = encoded_batches(run)?;
    let payloads = Arc::new(payloads);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|sc| -> anyhow::Result<()> {
        let mut hs = Vec::new();
        for _ in 0..run.threads.max(1) {
            let (store, payloads, next) = (store.clone(), payloads.clone(), next.clone());
            hs.push(sc.spawn(move || -> anyhow::Result<()> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(p) = payloads.get(i) else {
                        return Ok(());
                    };
                    let b = batch::decode(p)?;
                    store.apply_batch(&b.tenant, &b.site, &b, 2)?;
                }
            }));
        }
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("apply thread panicked"))??;
        }
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    let bps = run.batches as f64 / secs;
    let mut rep = Report::new("uplink_apply");
    rep.text("store", "rocksdb")
        .int("sites", run.sites)
        .int("devices_per_batch", run.devices)
        .int("series_per_device", series)
        .int("batches", run.batches)
        .int("threads", run.threads as u64)
        .int("full_every", run.full_every)
        .num("seconds", secs)
        .num("batches_per_s", bps)
        .num(
            "device_rollup_sets_per_s",
            bps * run.devices as f64 / run.full_every.max(1) as f64,
        )
        .num("sites_per_minute", bps * 60.0);
    Ok(rep)
}

/// A private PostgreSQL server for the bench (the tests' server: a
/// temporary directory, a Unix socket, stopped when the process exits).
async fn pg_server() -> anyhow::Result<&'static TestCluster> {
    tokio::task::spawn_blocking(TestCluster::shared)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "PostgreSQL server binaries (initdb, postgres) not found: install Debian's \
                 `postgresql` package (scripts/deps.sh --test)"
            )
        })
}

/// `instances` stores (pools) over a fresh database of `server`, every
/// site of the run created.
async fn pg_instances(
    server: &TestCluster,
    run: &UplinkRun,
    instances: usize,
) -> anyhow::Result<Vec<Arc<dyn CentralStore>>> {
    let url = server.fresh_database().await;
    let mut out: Vec<Arc<dyn CentralStore>> = Vec::new();
    for _ in 0..instances.max(1) {
        let opts = PgOptions {
            pool_size: run.threads.max(1) + 1,
            ..Default::default()
        };
        out.push(Arc::new(PgCentralStore::connect(&url, opts).await?));
    }
    for s in 0..run.sites {
        let (site, tok) = site_record(s);
        out[0]
            .create_site(
                &site,
                &outpost_proto::pki::sha256(site.site_id.as_bytes()),
                &tok,
            )
            .await?;
    }
    Ok(out)
}

/// Applies `payloads[i]` for the indexes of `share` from `threads` tasks
/// on `store`; returns (applied, duplicates).
async fn apply_share(
    store: Arc<dyn CentralStore>,
    payloads: Arc<Vec<Vec<u8>>>,
    share: Arc<Vec<usize>>,
    threads: usize,
) -> anyhow::Result<(u64, u64)> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..threads.max(1) {
        let (store, payloads, share, next) =
            (store.clone(), payloads.clone(), share.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut applied, mut dup) = (0u64, 0u64);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&i) = share.get(k) else {
                    return anyhow::Ok((applied, dup));
                };
                let b = batch::decode(&payloads[i])?;
                let (tenant, site) = (b.tenant.clone(), b.site.clone());
                match store.apply_batch(&tenant, &site, b, 2).await? {
                    ApplyOutcome::Duplicate => dup += 1,
                    _ => applied += 1,
                }
            }
        }));
    }
    let (mut applied, mut dup) = (0, 0);
    for t in tasks {
        let (a, d) = t.await??;
        applied += a;
        dup += d;
    }
    Ok((applied, dup))
}

/// Central batch apply rate on PostgreSQL with `instances` central
/// instances, each applying the batches of its share of the sites
/// (`site % instances`) from `run.threads` tasks.
pub async fn apply_postgres(run: &UplinkRun, instances: usize) -> anyhow::Result<Report> {
    let server = pg_server().await?;
    let stores = pg_instances(server, run, instances).await?;
    let (payloads, series) = encoded_batches(run)?;
    let payloads = Arc::new(payloads);
    let n = stores.len();
    let started = Instant::now();
    let mut runs = Vec::new();
    for (k, st) in stores.iter().enumerate() {
        let share: Vec<usize> = (0..payloads.len())
            .filter(|i| (*i as u64 % run.sites) as usize % n == k)
            .collect();
        runs.push(tokio::spawn(apply_share(
            st.clone(),
            payloads.clone(),
            Arc::new(share),
            run.threads,
        )));
    }
    let mut applied = 0;
    for r in runs {
        applied += r.await??.0;
    }
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        applied == run.batches,
        "{applied} of {} batches applied",
        run.batches
    );
    let bps = run.batches as f64 / secs;
    let mut rep = Report::new("uplink_apply");
    rep.text("store", "postgres")
        .int("instances", n as u64)
        .int("sites", run.sites)
        .int("devices_per_batch", run.devices)
        .int("series_per_device", series)
        .int("batches", run.batches)
        .int("threads_per_instance", run.threads as u64)
        .int("full_every", run.full_every)
        .num("seconds", secs)
        .num("batches_per_s", bps)
        .num(
            "device_rollup_sets_per_s",
            bps * run.devices as f64 / run.full_every.max(1) as f64,
        )
        .num("sites_per_minute", bps * 60.0);
    Ok(rep)
}

/// Two instances race every batch of the run (each applies all of them,
/// in the same order, `run.threads` tasks each) on a fresh database: each
/// batch must be applied exactly once (an error otherwise).
pub async fn race_postgres(run: &UplinkRun) -> anyhow::Result<Report> {
    let server = pg_server().await?;
    let stores = pg_instances(server, run, 2).await?;
    let (payloads, _) = encoded_batches(run)?;
    let payloads = Arc::new(payloads);
    let all = Arc::new((0..payloads.len()).collect::<Vec<_>>());
    let started = Instant::now();
    let runs: Vec<_> = stores
        .iter()
        .map(|st| {
            tokio::spawn(apply_share(
                st.clone(),
                payloads.clone(),
                all.clone(),
                run.threads,
            ))
        })
        .collect();
    let (mut applied, mut dup) = (0, 0);
    for r in runs {
        let (a, d) = r.await??;
        applied += a;
        dup += d;
    }
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        applied == run.batches && dup == run.batches,
        "two instances racing {} batches applied {applied} and refused {dup} as duplicates",
        run.batches
    );
    let mut rep = Report::new("uplink_apply_race");
    rep.text("store", "postgres")
        .int("instances", 2)
        .int("batches", run.batches)
        .int("applied", applied)
        .int("duplicates", dup)
        .num("seconds", secs);
    Ok(rep)
}
