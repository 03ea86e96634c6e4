//! Storage efficiency: ingest a fixed synthetic day of metric samples through
//! the real ingest writer into a real RocksDB, compact, and divide the bytes
//! on disk (SST + WAL files, not logical sizes) by the samples stored.

use std::path::Path;
use std::time::Instant;

use outpost_proto::DeviceId;
use outpost_proto::messages::{MetricsSample, Record, RecordBody};
use outpost_storage::ingest::{IncomingRecords, IngestWriter};
use outpost_storage::rollup::ROLLUPS;
use outpost_storage::samples::{CHUNKS, SAMPLES};
use outpost_storage::{Durability, Store, StoreOptions};
use rand::{Rng, SeedableRng};

use crate::report::Report;
use crate::sim;

/// Parameters of the synthetic day.
#[derive(Debug, Clone)]
pub struct StorageRun {
    pub devices: u64,
    pub interval_s: u64,
    pub hours: u64,
}

/// Values that move like real hosts: random walks for gauges, growing
/// counters, near-constant sizes; values rounded as the agent reports them.
fn evolve(
    prev: &mut [f64],
    rng: &mut rand::rngs::StdRng,
    tmpl: &MetricsSample,
    t: u64,
) -> MetricsSample {
    let mut values = tmpl.values.clone();
    for (i, v) in values.iter_mut().enumerate() {
        let p = &mut prev[i];
        *p = match v.name.as_str() {
            "cpu" => (*p + rng.random_range(-5.0..5.0)).clamp(0.0, 100.0),
            "memory" => (*p + rng.random_range(-0.3..0.3)).clamp(0.0, 100.0),
            "disk_used_percent" => (*p + rng.random_range(-0.01..0.02)).clamp(0.0, 100.0),
            "swap" => *p,
            "load1" | "load5" | "load15" => (*p + rng.random_range(-0.1..0.1)).max(0.0),
            "uptime_seconds" => v.value + t as f64,
            "net_rx_bytes" | "net_tx_bytes" => *p + rng.random_range(0.0..200_000.0f64).floor(),
            "net_rx_bytes_per_sec" | "net_tx_bytes_per_sec" => {
                rng.random_range(0.0..4000.0f64).floor()
            }
            "processes" => (*p + rng.random_range(-2.0..2.0f64)).round().max(1.0),
            "memory_used_bytes" => (*p + rng.random_range(-2e7..2e7f64)).floor().max(0.0),
            "disk_used_bytes" => (*p + 4096.0 * rng.random_range(-10.0..20.0f64).floor()).max(0.0),
            _ => *p,
        };
        // The agent reports two decimals (see outpost-agent collect.rs).
        v.value = (*p * 100.0).round() / 100.0;
    }
    MetricsSample { values }
}

pub fn run(r: &StorageRun, dir: &Path) -> anyhow::Result<Report> {
    let store = Store::open(
        dir,
        &StoreOptions {
            durability: Durability::Buffered,
            ..StoreOptions::default()
        },
        outpost_storage::TABLES,
    )?;
    let mut w = IngestWriter::new(store.clone(), 0)?;
    let tmpl = match sim::record_body(sim::Mix::Realistic, 2) {
        RecordBody::Metrics(m) => m,
        _ => anyhow::bail!("template is not a metrics sample"),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut state: Vec<Vec<f64>> = (0..r.devices)
        .map(|_| tmpl.values.iter().map(|v| v.value).collect())
        .collect();
    let steps = r.hours * 3600 / r.interval_s;
    let day0 = 1_700_000_000_000u64;
    let started = Instant::now();
    let mut samples = 0u64;
    for step in 0..steps {
        // The agent collects on a fixed schedule; scheduling adds a few ms.
        let ts = day0 + step * r.interval_s * 1000 + rng.random_range(0..5);
        let groups: Vec<IncomingRecords> = (0..r.devices)
            .map(|d| {
                let m = evolve(&mut state[d as usize], &mut rng, &tmpl, step * r.interval_s);
                samples += m.values.len() as u64;
                IncomingRecords {
                    device: DeviceId(d + 1),
                    records: vec![Record {
                        seq: step + 1,
                        ts_ms: ts,
                        body: RecordBody::Metrics(m),
                    }],
                }
            })
            .collect();
        w.apply(&groups, ts)?;
        if step % 5 == 4 {
            w.roll_up(ts + 10 * 60_000, 0, usize::MAX)?;
            w.seal_chunks(ts, 0, usize::MAX)?;
        }
    }
    let end = day0 + (r.hours + 3) * 3_600_000;
    w.roll_up(end, 0, usize::MAX)?;
    w.seal_chunks(end, 0, usize::MAX)?;
    let ingest_secs = started.elapsed().as_secs_f64();
    store.compact_all()?;
    let total = store.disk_usage_bytes()?;
    let sample_sst = store.table_sst_bytes(SAMPLES)? + store.table_sst_bytes(CHUNKS)?;
    let rollup_sst = store.table_sst_bytes(ROLLUPS)?;
    let mut rep = Report::new("storage");
    rep.int("devices", r.devices)
        .int("samples", samples)
        .int("interval_s", r.interval_s)
        .int("hours", r.hours)
        .int("bytes_on_disk", total)
        .num("bytes_per_sample", total as f64 / samples as f64)
        .num(
            "sample_table_bytes_per_sample",
            sample_sst as f64 / samples as f64,
        )
        .num(
            "rollup_bytes_per_sample",
            rollup_sst as f64 / samples as f64,
        )
        .num("ingest_samples_per_sec", samples as f64 / ingest_secs);
    Ok(rep)
}
