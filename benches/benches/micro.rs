//! Micro-benchmarks: frame encode/decode, key encoding, the group-commit
//! write path per record, rollup computation.
//!
//!     cargo bench -p outpost-bench --bench micro

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use outpost_bench::sim::{Mix, record_body};
use outpost_proto::DeviceId;
use outpost_proto::frame::{decode_payload, split_frame, write_frame};
use outpost_proto::messages::{AgentFrame, Record};
use outpost_storage::ingest::{IncomingRecords, IngestWriter};
use outpost_storage::{Durability, Store, StoreOptions, keys, rollup};

fn records(mix: Mix, n: u64) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            seq: i + 1,
            ts_ms: 1_700_000_000_000 + i * 1000,
            body: record_body(mix, i),
        })
        .collect()
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for (name, mix) in [("heartbeat", Mix::Heartbeat), ("metrics", Mix::Realistic)] {
        // One record per frame: the cost per message.
        let rec = records(mix, 3).pop().expect("record");
        let frame = AgentFrame::Records(vec![rec]);
        let mut buf = BytesMut::new();
        write_frame(&frame, &mut buf, 1 << 20).expect("encode");
        eprintln!("{name}: {} bytes per framed record", buf.len());
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("encode_{name}"), |b| {
            let mut out = BytesMut::with_capacity(4096);
            b.iter(|| {
                out.clear();
                write_frame(black_box(&frame), &mut out, 1 << 20).expect("encode");
            })
        });
        g.bench_function(format!("decode_{name}"), |b| {
            b.iter_batched(
                || buf.clone(),
                |mut bytes| {
                    let p = split_frame(&mut bytes, 1 << 20)
                        .expect("split")
                        .expect("whole");
                    black_box(decode_payload::<AgentFrame>(&p).expect("decode"))
                },
                BatchSize::SmallInput,
            )
        });
    }
    // 64 heartbeats per frame, as the harness sends them.
    let frame = AgentFrame::Records(records(Mix::Heartbeat, 64));
    let mut buf = BytesMut::new();
    write_frame(&frame, &mut buf, 1 << 20).expect("encode");
    g.throughput(Throughput::Elements(64));
    g.bench_function("decode_64_heartbeats", |b| {
        b.iter_batched(
            || buf.clone(),
            |mut bytes| {
                let p = split_frame(&mut bytes, 1 << 20)
                    .expect("split")
                    .expect("whole");
                black_box(decode_payload::<AgentFrame>(&p).expect("decode"))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn key_encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("keys");
    g.throughput(Throughput::Elements(1));
    g.bench_function("series_time_key", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(keys::series_time_key(DeviceId(black_box(i)), 7, i * 1000))
        })
    });
    g.bench_function("parse_series_time_key", |b| {
        let k = keys::series_time_key(DeviceId(42), 7, 1_700_000_000_000);
        b.iter(|| black_box(keys::parse_series_time_key(black_box(&k))))
    });
    g.finish();
}

fn group_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_commit");
    g.sample_size(20);
    for (name, durability) in [
        ("sync", Durability::Sync),
        ("buffered", Durability::Buffered),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(
            dir.path(),
            &StoreOptions {
                durability,
                ..StoreOptions::default()
            },
            outpost_storage::TABLES,
        )
        .expect("open");
        let mut w = IngestWriter::new(store, 0).expect("writer");
        let mut seq = 0u64;
        // 1,000 heartbeats from 100 devices per commit.
        g.throughput(Throughput::Elements(1000));
        g.bench_function(format!("1000_heartbeats_{name}"), |b| {
            b.iter_batched(
                || {
                    let groups: Vec<IncomingRecords> = (0..100u64)
                        .map(|d| IncomingRecords {
                            device: DeviceId(d + 1),
                            records: (0..10)
                                .map(|i| Record {
                                    seq: seq + i + 1,
                                    ts_ms: 1_700_000_000_000 + (seq + i) * 10,
                                    body: record_body(Mix::Heartbeat, i),
                                })
                                .collect(),
                        })
                        .collect();
                    seq += 10;
                    groups
                },
                |groups| black_box(w.apply(&groups, 1).expect("apply")),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn rollups(c: &mut Criterion) {
    let mut g = c.benchmark_group("rollup");
    let samples: Vec<(u64, f64)> = (0..10_000u64)
        .map(|i| (i * 1000, (i % 97) as f64))
        .collect();
    g.throughput(Throughput::Elements(samples.len() as u64));
    g.bench_function("compute_10k_samples", |b| {
        b.iter(|| {
            black_box(rollup::compute(
                black_box(samples.iter().copied()),
                rollup::BUCKET_MS,
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, frames, key_encoding, group_commit, rollups);
criterion_main!(benches);
