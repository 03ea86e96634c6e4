//! Storage efficiency: ingest a fixed synthetic day of metric samples through
//! the real ingest writer into a real RocksDB, compact, and divide the bytes
//! on disk (SST + WAL files, not logical sizes) by the samples stored. Then
//! account for the bytes (keys, headers, timestamps, values per series kind,
//! RocksDB's share, head and WAL), read every sample back bit for bit, and
//! time the chunk codecs (format 1 and 2) on the same values.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use outpost_proto::DeviceId;
use outpost_proto::messages::{MetricsSample, Record, RecordBody};
use outpost_storage::chunk;
use outpost_storage::head;
use outpost_storage::ingest::{IncomingRecords, IngestWriter};
use outpost_storage::keys;
use outpost_storage::rollup::{ROLLUPS, device_series};
use outpost_storage::samples::{self, CHUNKS};
use outpost_storage::{Durability, Store, StoreOptions};
use rand::{Rng, SeedableRng};

use crate::report::Report;
use crate::sim;

/// How the synthetic values move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ValueModel {
    /// As the real agent derives them (`agent/src/collect.rs`): network
    /// rates are the counters' increments over the elapsed seconds with two
    /// decimals, memory and disk percentages are used / total, used memory
    /// moves in whole KiB (`/proc/meminfo`), load5 and load15 are the
    /// kernel's exponential averages of the run queue that load1 follows.
    #[default]
    Agent,
    /// The generator before issue 18: every series an independent random
    /// walk (integer rates, byte-exact memory), kept to compare figures.
    Legacy,
}

/// Parameters of the synthetic day.
#[derive(Debug, Clone)]
pub struct StorageRun {
    pub devices: u64,
    pub interval_s: u64,
    pub hours: u64,
    pub values: ValueModel,
}

/// Values that move like real hosts: random walks for gauges, growing
/// counters, near-constant sizes; values rounded as the agent reports them.
fn evolve_legacy(
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

fn percent(used: f64, total: f64) -> f64 {
    if total == 0.0 {
        0.0
    } else {
        used * 100.0 / total
    }
}

/// The same magnitudes as [`evolve_legacy`], derived the way the agent
/// derives its values. `secs` is the time since the previous sample.
fn evolve_agent(
    prev: &mut [f64],
    rng: &mut rand::rngs::StdRng,
    tmpl: &MetricsSample,
    t: u64,
    secs: f64,
) -> MetricsSample {
    let mut values = tmpl.values.clone();
    let find = |name: &str, label: &str| {
        tmpl.values
            .iter()
            .position(|v| v.name == name && v.label == label)
    };
    let mut increments: HashMap<(&str, &str), f64> = HashMap::new();
    // Primary readings.
    for (i, v) in tmpl.values.iter().enumerate() {
        let p = &mut prev[i];
        match v.name.as_str() {
            "cpu" => *p = (*p + rng.random_range(-5.0..5.0)).clamp(0.0, 100.0),
            "load1" => *p = (*p + rng.random_range(-0.1..0.1)).max(0.0),
            "uptime_seconds" => *p = v.value + t as f64,
            "net_rx_bytes" | "net_tx_bytes" => {
                let d = rng.random_range(0.0..200_000.0f64).floor();
                *p += d;
                increments.insert((v.name.as_str(), v.label.as_str()), d);
            }
            "processes" => *p = (*p + rng.random_range(-2.0..2.0f64)).round().max(1.0),
            // `/proc/meminfo` counts KiB.
            "memory_used_bytes" => {
                *p = (((*p + rng.random_range(-2e7..2e7f64)) / 1024.0).floor() * 1024.0).max(0.0)
            }
            // statvfs counts blocks.
            "disk_used_bytes" => {
                *p = (*p + 4096.0 * rng.random_range(-10.0..20.0f64).floor()).max(0.0)
            }
            _ => {}
        }
    }
    // Derived readings.
    let at = |prev: &[f64], name: &str, label: &str| find(name, label).map(|i| prev[i]);
    for (i, v) in tmpl.values.iter().enumerate() {
        let label = v.label.as_str();
        let derived = match v.name.as_str() {
            "memory" => at(&*prev, "memory_used_bytes", "")
                .zip(at(&*prev, "memory_total_bytes", ""))
                .map(|(u, t)| percent(u, t)),
            "disk_used_percent" => at(&*prev, "disk_used_bytes", label)
                .zip(at(&*prev, "disk_total_bytes", label))
                .map(|(u, t)| percent(u, t)),
            "load5" => at(&*prev, "load1", "")
                .map(|l1| prev[i] + (l1 - prev[i]) * (1.0 - (-1.0f64 / 5.0).exp())),
            "load15" => at(&*prev, "load1", "")
                .map(|l1| prev[i] + (l1 - prev[i]) * (1.0 - (-1.0f64 / 15.0).exp())),
            "net_rx_bytes_per_sec" => increments.get(&("net_rx_bytes", label)).map(|d| d / secs),
            "net_tx_bytes_per_sec" => increments.get(&("net_tx_bytes", label)).map(|d| d / secs),
            _ => None,
        };
        if let Some(d) = derived {
            prev[i] = d;
        }
    }
    for (i, v) in values.iter_mut().enumerate() {
        // The agent reports two decimals (collect.rs `round2`).
        v.value = (prev[i] * 100.0).round() / 100.0;
    }
    MetricsSample { values }
}

/// Counters (monotonic totals); every other series is a gauge.
fn is_counter(name: &str) -> bool {
    matches!(name, "net_rx_bytes" | "net_tx_bytes" | "uptime_seconds")
}

/// Bytes of the sample chunks by component, from the stored chunks.
#[derive(Debug, Default)]
struct Breakdown {
    chunks: u64,
    format1: u64,
    format2: u64,
    key_bytes: u64,
    header_bytes: u64,
    timestamp_bytes: u64,
    /// series name → (value bytes, series header bytes, samples)
    by_kind: BTreeMap<String, (u64, u64, u64)>,
    samples: u64,
}

fn breakdown(store: &Store) -> anyhow::Result<Breakdown> {
    let mut b = Breakdown::default();
    let mut names: HashMap<DeviceId, HashMap<u32, String>> = HashMap::new();
    let mut failure: Option<anyhow::Error> = None;
    store.scan_raw(CHUNKS, &[], None, |k, v| {
        let Some((device, field, _)) = keys::parse_series_time_key(k) else {
            failure = Some(anyhow::anyhow!("malformed chunk key"));
            return Ok(false);
        };
        if let std::collections::hash_map::Entry::Vacant(e) = names.entry(device) {
            e.insert(
                device_series(store, device)?
                    .into_iter()
                    .map(|s| (s.id, s.name))
                    .collect(),
            );
        }
        let a = match chunk::anatomy(v) {
            Ok(a) => a,
            Err(e) => {
                failure = Some(e.into());
                return Ok(false);
            }
        };
        b.chunks += 1;
        if chunk::is_device_chunk(v) {
            b.format2 += 1;
        } else {
            b.format1 += 1;
        }
        b.key_bytes += k.len() as u64;
        b.header_bytes += a.header_bytes as u64;
        b.timestamp_bytes += a.timestamp_bytes as u64;
        for s in &a.series {
            let id = s.id.unwrap_or(field);
            let name = names
                .get(&device)
                .and_then(|m| m.get(&id))
                .cloned()
                .unwrap_or_else(|| "?".into());
            let e = b.by_kind.entry(name).or_default();
            e.0 += s.value_bytes as u64;
            e.1 += s.header_bytes as u64;
            e.2 += s.samples as u64;
            b.samples += s.samples as u64;
        }
        Ok(true)
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(b)
}

/// Sizes and CPU seconds of the two chunk formats on the same values.
#[derive(Debug, Default)]
struct CodecFigures {
    /// Format 1: bytes, encode and decode seconds.
    b1: u64,
    e1: f64,
    d1: f64,
    /// Format 2: bytes, encode seconds, seconds decoding each series alone.
    b2: u64,
    e2: f64,
    d2: f64,
    /// Where each format's bytes go (keys counted at 20 bytes a chunk).
    parts1: Parts,
    parts2: Parts,
}

/// Logical bytes of chunks by component.
#[derive(Debug, Default)]
struct Parts {
    keys: u64,
    headers: u64,
    timestamps: u64,
    /// series name → (value bytes + series header bytes, samples)
    kinds: BTreeMap<String, (u64, u64)>,
}

impl Parts {
    fn add(&mut self, a: &chunk::Anatomy, name: &dyn Fn(usize, Option<u32>) -> String) {
        self.keys += 20;
        self.headers += a.header_bytes as u64;
        self.timestamps += a.timestamp_bytes as u64;
        for (i, s) in a.series.iter().enumerate() {
            let e = self.kinds.entry(name(i, s.id)).or_default();
            e.0 += (s.header_bytes + s.value_bytes) as u64;
            e.1 += s.samples as u64;
        }
    }
}

/// Times the format-1 and format-2 codecs on the generated values
/// (`series[device][i]`), in memory (no RocksDB).
fn codec_micro(series: &[Vec<Vec<(u64, f64)>>], names: &[String]) -> CodecFigures {
    let (mut b1, mut e1, mut d1, mut b2, mut e2, mut d2) = (0u64, 0.0, 0.0, 0u64, 0.0, 0.0);
    let (mut parts1, mut parts2) = (Parts::default(), Parts::default());
    for dev in series {
        // Format 1: one chunk per series and 2-hour window.
        for (si, s) in dev.iter().enumerate() {
            let mut i = 0;
            while i < s.len() {
                let w = chunk::window_start(s[i].0);
                let j = i + s[i..]
                    .iter()
                    .take_while(|p| chunk::window_start(p.0) == w)
                    .count();
                let t = Instant::now();
                let bytes = chunk::encode(&s[i..j]);
                e1 += t.elapsed().as_secs_f64();
                b1 += bytes.len() as u64;
                if let Ok(a) = chunk::anatomy(&bytes) {
                    parts1.add(&a, &|_, _| names[si].clone());
                }
                let t = Instant::now();
                let n = chunk::decode(&bytes).map(|v| v.len()).unwrap_or(0);
                d1 += t.elapsed().as_secs_f64();
                assert_eq!(n, j - i);
                i = j;
            }
        }
        // Format 2: one chunk per device and day.
        let mut days: BTreeMap<u64, Vec<chunk::SeriesSamples>> = BTreeMap::new();
        for (id, s) in dev.iter().enumerate() {
            for &(t, v) in s {
                let day = days.entry(chunk::day_start(t)).or_default();
                if day.last().is_none_or(|(last, _)| *last != id as u32) {
                    day.push((id as u32, Vec::new()));
                }
                if let Some((_, vals)) = day.last_mut() {
                    vals.push((t, v));
                }
            }
        }
        for group in days.values() {
            let t = Instant::now();
            let bytes = chunk::encode_device(group);
            e2 += t.elapsed().as_secs_f64();
            b2 += bytes.len() as u64;
            if let Ok(a) = chunk::anatomy(&bytes) {
                parts2.add(&a, &|_, id| {
                    id.and_then(|i| names.get(i as usize))
                        .cloned()
                        .unwrap_or_default()
                });
            }
            for (id, s) in group {
                let t = Instant::now();
                let n = chunk::decode_device_series(&bytes, *id)
                    .ok()
                    .flatten()
                    .map(|v| v.len())
                    .unwrap_or(0);
                d2 += t.elapsed().as_secs_f64();
                assert_eq!(n, s.len());
            }
        }
    }
    CodecFigures {
        b1,
        e1,
        d1,
        b2,
        e2,
        d2,
        parts1,
        parts2,
    }
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
    // What was sent, to read back bit for bit: [device][series index].
    let mut sent: Vec<Vec<Vec<(u64, f64)>>> =
        vec![vec![Vec::new(); tmpl.values.len()]; r.devices as usize];
    let steps = r.hours * 3600 / r.interval_s;
    let day0 = 1_700_000_000_000u64;
    let started = Instant::now();
    let mut seal_secs = 0.0f64;
    let mut samples = 0u64;
    let mut prev_ts = day0;
    for step in 0..steps {
        // The agent collects on a fixed schedule; scheduling adds a few ms.
        let ts = day0 + step * r.interval_s * 1000 + rng.random_range(0..5);
        let secs = if step == 0 {
            r.interval_s as f64
        } else {
            (ts - prev_ts) as f64 / 1000.0
        };
        prev_ts = ts;
        let groups: Vec<IncomingRecords> = (0..r.devices)
            .map(|d| {
                let t = step * r.interval_s;
                let prev = &mut state[d as usize];
                let m = match r.values {
                    ValueModel::Agent => evolve_agent(prev, &mut rng, &tmpl, t, secs),
                    ValueModel::Legacy => evolve_legacy(prev, &mut rng, &tmpl, t),
                };
                samples += m.values.len() as u64;
                for (i, v) in m.values.iter().enumerate() {
                    sent[d as usize][i].push((ts, v.value));
                }
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
            let t = Instant::now();
            w.seal_chunks(ts, 0, usize::MAX)?;
            seal_secs += t.elapsed().as_secs_f64();
        }
    }
    let end = day0 + (r.hours + 3) * 3_600_000;
    w.roll_up(end, 0, usize::MAX)?;
    let t = Instant::now();
    w.seal_chunks(end, 0, usize::MAX)?;
    seal_secs += t.elapsed().as_secs_f64();
    let ingest_secs = started.elapsed().as_secs_f64();
    store.compact_all()?;
    let total = store.disk_usage_bytes()?;
    let head_sst = store.table_sst_bytes(head::BLOCKS)? + store.table_sst_bytes(head::LEGACY)?;
    let chunk_sst = store.table_sst_bytes(CHUNKS)?;
    let sample_sst = head_sst + chunk_sst;
    let rollup_sst = store.table_sst_bytes(ROLLUPS)?;
    let wal = wal_bytes(dir);

    // Every sample back, bit for bit, through the query path.
    let t = Instant::now();
    let mut read = 0u64;
    let mut mismatches = 0u64;
    for (d, per_series) in sent.iter().enumerate() {
        let device = DeviceId(d as u64 + 1);
        let ids: HashMap<(String, String), u32> = device_series(&store, device)?
            .into_iter()
            .map(|s| ((s.name, s.label), s.id))
            .collect();
        for (i, want) in per_series.iter().enumerate() {
            let v = &tmpl.values[i];
            let Some(&id) = ids.get(&(v.name.clone(), v.label.clone())) else {
                mismatches += want.len() as u64;
                continue;
            };
            let mut got = Vec::with_capacity(want.len());
            samples::samples_in(&store, device, id, 0, u64::MAX, |t, x| {
                got.push((t, x));
                true
            })?;
            read += got.len() as u64;
            if got.len() != want.len()
                || got
                    .iter()
                    .zip(want)
                    .any(|(a, b)| a.0 != b.0 || a.1.to_bits() != b.1.to_bits())
            {
                mismatches += 1;
            }
        }
    }
    let query_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        mismatches == 0 && read == samples,
        "read back {read} of {samples} samples, {mismatches} series differ"
    );

    let b = breakdown(&store)?;
    let names: Vec<String> = tmpl.values.iter().map(|v| v.name.clone()).collect();
    let CodecFigures {
        b1,
        e1,
        d1,
        b2,
        e2,
        d2,
        parts1,
        parts2,
    } = codec_micro(&sent, &names);

    let per = |x: u64| x as f64 / samples as f64;
    let ns = |s: f64| s * 1e9 / samples as f64;
    let mut rep = Report::new("storage");
    rep.int("devices", r.devices)
        .int("samples", samples)
        .int("interval_s", r.interval_s)
        .int("hours", r.hours)
        .text(
            "values",
            match r.values {
                ValueModel::Agent => "agent",
                ValueModel::Legacy => "legacy",
            },
        )
        .int("bytes_on_disk", total)
        .num("bytes_per_sample", per(total))
        .num("sample_table_bytes_per_sample", per(sample_sst))
        .num("rollup_bytes_per_sample", per(rollup_sst))
        .num("ingest_samples_per_sec", samples as f64 / ingest_secs)
        // Where the sample-table bytes go.
        .num("head_sst_bytes_per_sample", per(head_sst))
        .num("chunk_sst_bytes_per_sample", per(chunk_sst))
        .num("wal_bytes_per_sample", per(wal))
        .int("chunks", b.chunks)
        .int("chunks_format1", b.format1)
        .int("chunks_format2", b.format2)
        .num("chunk_key_bytes_per_sample", per(b.key_bytes))
        .num("chunk_header_bytes_per_sample", per(b.header_bytes))
        .num("chunk_timestamp_bytes_per_sample", per(b.timestamp_bytes));
    let series_headers: u64 = b.by_kind.values().map(|e| e.1).sum();
    let value_bytes: u64 = b.by_kind.values().map(|e| e.0).sum();
    let logical = b.key_bytes + b.header_bytes + b.timestamp_bytes + series_headers + value_bytes;
    rep.num("chunk_series_header_bytes_per_sample", per(series_headers))
        .num("chunk_value_bytes_per_sample", per(value_bytes))
        .num("chunk_logical_bytes_per_sample", per(logical))
        .num(
            "chunk_sst_over_logical",
            chunk_sst as f64 / logical.max(1) as f64,
        );
    let (mut cv, mut cs, mut gv, mut gs) = (0u64, 0u64, 0u64, 0u64);
    for (name, (v, _, n)) in &b.by_kind {
        if is_counter(name) {
            cv += v;
            cs += n;
        } else {
            gv += v;
            gs += n;
        }
    }
    rep.num(
        "counter_value_bytes_per_sample",
        cv as f64 / cs.max(1) as f64,
    )
    .num("gauge_value_bytes_per_sample", gv as f64 / gs.max(1) as f64);
    for (name, (v, h, n)) in &b.by_kind {
        rep.num(
            &format!("values_{name}"),
            (*v + *h) as f64 / (*n).max(1) as f64,
        );
    }
    rep.num("seal_ns_per_sample", ns(seal_secs))
        .num("query_ns_per_sample", ns(query_secs))
        .num("format1_bytes_per_sample_logical", per(b1))
        .num("format1_encode_ns_per_sample", ns(e1))
        .num("format1_decode_ns_per_sample", ns(d1))
        .num("format2_bytes_per_sample_logical", per(b2))
        .num("format2_encode_ns_per_sample", ns(e2))
        .num("format2_decode_series_ns_per_sample", ns(d2))
        .int("roundtrip_mismatches", mismatches);
    for (tag, p) in [("format1", &parts1), ("format2", &parts2)] {
        rep.num(&format!("{tag}_logical_key_bytes_per_sample"), per(p.keys))
            .num(
                &format!("{tag}_logical_header_bytes_per_sample"),
                per(p.headers),
            )
            .num(
                &format!("{tag}_logical_timestamp_bytes_per_sample"),
                per(p.timestamps),
            );
        for (name, (v, n)) in &p.kinds {
            rep.num(
                &format!("{tag}_values_{name}"),
                *v as f64 / (*n).max(1) as f64,
            );
        }
    }
    eprintln!("in memory, same values: bytes per sample, format 1 | format 2");
    eprintln!(
        "  {:<24} {:>8.3} {:>8.3}",
        "keys (20 B a chunk)",
        per(parts1.keys),
        per(parts2.keys)
    );
    eprintln!(
        "  {:<24} {:>8.3} {:>8.3}",
        "chunk headers",
        per(parts1.headers),
        per(parts2.headers)
    );
    eprintln!(
        "  {:<24} {:>8.3} {:>8.3}",
        "timestamps",
        per(parts1.timestamps),
        per(parts2.timestamps)
    );
    for (name, (v, n)) in &parts1.kinds {
        let (v2, n2) = parts2.kinds.get(name).copied().unwrap_or_default();
        eprintln!(
            "  {name:<24} {:>8.3} {:>8.3}  per sample of this kind ({})",
            *v as f64 / (*n).max(1) as f64,
            v2 as f64 / n2.max(1) as f64,
            if is_counter(name) { "counter" } else { "gauge" }
        );
    }
    eprintln!("stored (this run's format), values + series headers, before RocksDB:");
    for (name, (v, h, n)) in &b.by_kind {
        eprintln!(
            "  {name:<24} {:>8.3} B/sample  ({} samples, {})",
            (*v + *h) as f64 / (*n).max(1) as f64,
            n,
            if is_counter(name) { "counter" } else { "gauge" }
        );
    }
    Ok(rep)
}

/// Bytes of the WAL files in the database directory.
fn wal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}
