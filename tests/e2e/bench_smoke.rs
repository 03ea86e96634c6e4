//! Smoke runs of every load scenario (seconds, few agents): the harness
//! measures something real. Figures live in benches/RESULTS.md, not here.

use std::time::Duration;

use outpost_bench::alert_latency::{self, AlertRun};
use outpost_bench::ingest::{self, IngestRun};
use outpost_bench::reconnect::{self, ReconnectRun};
use outpost_bench::sim::Mix;
use outpost_bench::spawn::Spawned;
use outpost_bench::storage_eff::{self, StorageRun};
use outpost_tests::{bin, load_test_slot, scratch};

fn run(
    spawned: &Spawned,
    state: &std::path::Path,
    rate: Option<f64>,
    mix: Mix,
) -> ingest::IngestOutcome {
    let r = IngestRun {
        scenario: "smoke".into(),
        addr: spawned.quic,
        token: spawned.token(8).unwrap(),
        pin: spawned.fingerprint().unwrap(),
        agents: 4,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(200),
        state: state.to_path_buf(),
        rate,
        window: 64,
        batch: 16,
        mix,
        appliance_pid: spawned.pid(),
        endpoints: 2,
        connect_concurrency: 4,
        quiet: true,
        window_signals: None,
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(ingest::run(&r))
        .unwrap()
}

#[test]
fn ingest_scenarios_measure_durable_acks_and_latency() {
    let _slot = load_test_slot();
    let tmp = scratch("bench-ingest");
    let app = Spawned::start(&bin("outpost"), &tmp.path().join("appliance"), &[]).unwrap();
    let state = tmp.path().join("fleet");
    for (rate, mix) in [(None, Mix::Heartbeat), (Some(50.0), Mix::Realistic)] {
        let out = run(&app, &state, rate, mix);
        assert!(out.sent > 0, "nothing sent");
        assert_eq!(out.acked, out.sent, "every record sent was acknowledged");
        assert!(out.latency_count > 0, "latency histogram empty");
        assert_eq!(out.errors, 0, "{}", out.report.line());
        assert!(out.records_per_sec > 0.0);
        let line = out.report.line();
        assert!(line.starts_with("RESULT smoke agents=4 "), "{line}");
        for key in [
            "records_per_sec=",
            "p50_ms=",
            "p99_ms=",
            "appliance_cpu_s_per_million=",
            "appliance_rss_mb=",
        ] {
            assert!(line.contains(key), "missing {key}: {line}");
        }
    }
    // Identities were enrolled once and reused by the second run.
    let lines = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("fleet-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap().lines().count())
        .sum::<usize>();
    assert_eq!(lines, 4);
}

/// The smoke version of issue 18's 50,000-agent scenario: the same code path
/// (every agent its own QUIC connection streaming at 1 record/s) with 300
/// agents over an appliance listening with four QUIC endpoints (four
/// `SO_REUSEPORT` sockets); a reconnect loop or kernel receive drops on any
/// of the appliance's sockets after the handshake phase fail it, and the
/// agents must have been spread over several sockets.
#[test]
fn scale_smoke_streaming_agents_neither_reconnect_nor_lose_datagrams() {
    let _slot = load_test_slot();
    let tmp = scratch("bench-scale-smoke");
    let app = Spawned::start(
        &bin("outpost"),
        &tmp.path().join("appliance"),
        &["--quic-endpoints", "4"],
    )
    .unwrap();
    let agents = 300;
    let r = IngestRun {
        scenario: "scale_smoke".into(),
        addr: app.quic,
        token: app.token(agents).unwrap(),
        pin: app.fingerprint().unwrap(),
        agents,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        state: tmp.path().join("fleet"),
        rate: Some(1.0),
        window: 64,
        batch: 16,
        mix: Mix::Realistic,
        appliance_pid: app.pid(),
        endpoints: 8,
        connect_concurrency: 64,
        quiet: true,
        window_signals: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt.block_on(ingest::run(&r)).unwrap();
    let line = out.report.line();
    assert!(line.contains(&format!(" connected={agents} ")), "{line}");
    assert_eq!(out.reconnects, 0, "reconnect loop: {line}");
    assert_eq!(out.udp_sockets, 4, "one socket per endpoint: {line}");
    assert!(line.contains(" udp_sockets=4"), "{line}");
    assert_eq!(out.udp_drops, Some(0), "kernel receive drops: {line}");
    // The 8 client sockets' sessions spread over the appliance's sockets.
    let metrics = rt.block_on(app.metrics()).unwrap();
    let busy: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("outpost_quic_socket_incoming_total{"))
        .filter(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"))
        .collect();
    assert!(busy.len() >= 2, "agents on one socket only: {busy:?}");
    assert!(
        metrics.contains("outpost_quic_socket_udp_receive_drops_total{socket=\"3\"} "),
        "every socket's drops are exported: {metrics}"
    );
    assert_eq!(out.errors, 0, "{line}");
    assert!(
        out.sent >= agents as u64 * 5,
        "agents did not stream: {line}"
    );
    assert_eq!(out.acked, out.sent, "{line}");
}

#[test]
fn storage_scenario_measures_real_files() {
    let _slot = load_test_slot();
    let tmp = scratch("bench-storage");
    let rep = storage_eff::run(
        &StorageRun {
            devices: 3,
            interval_s: 60,
            hours: 2,
            values: storage_eff::ValueModel::Agent,
        },
        &tmp.path().join("db"),
    )
    .unwrap();
    let samples: u64 = rep.get("samples").unwrap().parse().unwrap();
    assert_eq!(samples, 3 * 120 * 28);
    // Every sample was read back bit for bit (the run fails otherwise).
    assert_eq!(rep.get("roundtrip_mismatches"), Some("0"));
    let bytes: u64 = rep.get("bytes_on_disk").unwrap().parse().unwrap();
    let on_disk: u64 = walk(&tmp.path().join("db"));
    assert!(
        bytes > 0 && bytes <= on_disk,
        "reported {bytes}, directory holds {on_disk}"
    );
}

fn walk(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

#[test]
fn reconnect_scenario_recovers_every_agent() {
    let _slot = load_test_slot();
    let tmp = scratch("bench-reconnect");
    let mut app = Spawned::start(&bin("outpost"), &tmp.path().join("appliance"), &[]).unwrap();
    let rep = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(reconnect::run(
            &ReconnectRun {
                agents: 4,
                rate: 20.0,
                down: Duration::from_secs(1),
                state: tmp.path().join("fleet"),
                quiet: true,
            },
            &mut app,
        ))
        .unwrap();
    let secs: f64 = rep.get("reconnect_secs").unwrap().parse().unwrap();
    assert!(secs.is_finite() && secs < 30.0, "{}", rep.line());
    let drained: f64 = rep.get("backlog_acked_secs").unwrap().parse().unwrap();
    assert!(drained.is_finite(), "{}", rep.line());
    assert_eq!(rep.get("sent"), rep.get("acked"), "{}", rep.line());
}

/// An appliance restarted with a slow handshake admission (one a second)
/// readmits its fleet more slowly than the usual offline deadline (two
/// heartbeat intervals of 1 s plus a 1 s grace): no device is declared
/// offline while it waits its turn, and every one comes back.
#[test]
fn a_restart_declares_no_device_offline_while_the_fleet_is_readmitted() {
    let _slot = load_test_slot();
    let tmp = scratch("bench-reconnect-offline");
    let data = tmp.path().join("appliance");
    let mut app = Spawned::start(&bin("outpost"), &data, &[]).unwrap();
    // Read by the restarted appliance, not by this one. The simulated
    // agents back off up to 5 s (`sim`), and the appliance is told so.
    std::fs::write(
        data.join("outpost.toml"),
        "offline_grace = \"1s\"\n[admission]\nmax_handshakes = 1\nhandshake_rate = 1\nhandshake_burst = 1\nagent_reconnect_max = \"5s\"\n",
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rep = rt
        .block_on(reconnect::run(
            &ReconnectRun {
                agents: 8,
                rate: 2.0,
                down: Duration::from_secs(1),
                state: tmp.path().join("fleet"),
                quiet: true,
            },
            &mut app,
        ))
        .unwrap();
    let line = rep.line();
    eprintln!("{line}");
    let secs: f64 = rep.get("reconnect_secs").unwrap().parse().unwrap();
    assert!(
        secs.is_finite() && secs > 4.0,
        "the fleet must come back slower than the 3 s offline deadline for this to show anything: {line}"
    );
    assert_eq!(rep.get("offline_declared"), Some("0"), "{line}");
    assert_eq!(rep.get("sent"), rep.get("acked"), "{line}");
    // The grace the restarted appliance took: its online devices at one
    // handshake a second, plus the configured 5 s.
    let metrics = rt.block_on(app.metrics()).unwrap();
    let grace = alert_latency::metric_sum(&metrics, "outpost_restart_grace_seconds", &[]);
    assert!(
        (6.0..=8.0 + 5.0).contains(&grace),
        "1 to 8 devices online at 1 handshake/s, plus 5 s: {grace}"
    );
}

#[test]
fn alert_scenario_measures_sample_to_webhook_latency_and_survives_a_dead_webhook() {
    let _slot = load_test_slot();
    let tmp = scratch("bench-alerts");
    let app = Spawned::start(&bin("outpost"), &tmp.path().join("appliance"), &[]).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = |agents: usize, webhook_down: bool| AlertRun {
        agents,
        rate: Some(20.0),
        mix: Mix::Realistic,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(300),
        state: tmp.path().join("fleet"),
        interval: Duration::from_millis(20),
        webhook_down,
        quiet: true,
    };
    let rep = rt
        .block_on(alert_latency::run(&run(2, false), &app))
        .unwrap();
    let line = rep.line();
    let probes: u64 = rep.get("probes").unwrap().parse().unwrap();
    assert!(probes >= 4, "{line}");
    assert_eq!(rep.get("missed"), Some("0"), "{line}");
    let p50: f64 = rep.get("fire_p50_ms").unwrap().parse().unwrap();
    assert!(p50 > 0.0, "{line}");
    let delivered: u64 = rep.get("notify_delivered").unwrap().parse().unwrap();
    assert!(delivered >= probes, "every probe was notified: {line}");
    assert!(rep.get("records_per_sec").is_some(), "{line}");

    // Webhook down: ingest goes on, deliveries fail and are retried.
    let rep = rt
        .block_on(alert_latency::run(&run(2, true), &app))
        .unwrap();
    let line = rep.line();
    assert!(line.starts_with("RESULT alerts_webhook_down "), "{line}");
    assert_eq!(rep.get("ingest_errors"), Some("0"), "{line}");
    let rps: f64 = rep.get("records_per_sec").unwrap().parse().unwrap();
    assert!(rps > 0.0, "{line}");
    let retries: u64 = rep.get("notify_retries").unwrap().parse().unwrap();
    assert!(retries >= 1, "{line}");
    let flips: u64 = rep.get("probes").unwrap().parse().unwrap();
    assert!(flips >= 4, "{line}");
}

#[test]
fn chaos_kill9_loop_loses_and_duplicates_no_acknowledged_record() {
    let _slot = load_test_slot();
    let tmp = scratch("bench-chaos");
    let mut app = Spawned::start(&bin("outpost"), &tmp.path().join("appliance"), &[]).unwrap();
    let run = outpost_bench::chaos::ChaosRun {
        agents: 12,
        rate: 20.0,
        kills: 3,
        up: (Duration::from_millis(700), Duration::from_millis(1500)),
        down: (Duration::ZERO, Duration::from_millis(500)),
        state: tmp.path().join("fleet"),
        seed: 7,
        quiet: true,
    };
    let rep = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(outpost_bench::chaos::run(&run, &mut app))
        .unwrap();
    let line = rep.line();
    let int = |k: &str| -> u64 { rep.get(k).and_then(|v| v.parse().ok()).expect(k) };
    assert_eq!(int("kills"), 3, "{line}");
    assert!(int("acked") > 0 && int("stored") >= int("acked"), "{line}");
    assert!(
        int("sessions") > 12,
        "agents reconnected after the kills: {line}"
    );
    assert_eq!(int("lost"), 0, "{line}");
    assert_eq!(int("duplicated"), 0, "{line}");
    assert_eq!(int("gaps"), 0, "{line}");
}

#[test]
fn commands_scenario_measures_dispatch_latency_and_a_bulk_run_to_every_agent() {
    let _slot = load_test_slot();
    let tmp = scratch("bench-commands");
    let app = Spawned::start(&bin("outpost"), &tmp.path().join("appliance"), &[]).unwrap();
    let r = outpost_bench::commands::CommandsRun {
        agents: 12,
        singles: 20,
        no_bulk: false,
        state: tmp.path().join("fleet"),
        quiet: true,
    };
    let rep = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(outpost_bench::commands::run(&r, &app))
        .unwrap();
    let line = rep.line();
    assert!(line.starts_with("RESULT commands agents=12 "), "{line}");
    assert_eq!(rep.get("singles"), Some("20"), "{line}");
    assert_eq!(rep.get("bulk_done"), Some("12"), "{line}");
    assert_eq!(rep.get("commands_received"), Some("32"), "{line}");
    assert_eq!(rep.get("session_errors"), Some("0"), "{line}");
    for key in ["dispatch_p50_ms", "dispatch_p99_ms", "bulk_secs"] {
        let v: f64 = rep.get(key).unwrap().parse().unwrap();
        assert!(v > 0.0, "{key}: {line}");
    }
}

/// `benches/ingest-side-by-side.sh` at toy scale: the same stream reaches
/// Outpost, VictoriaMetrics and a Zabbix proxy, each stores exactly what it
/// accepted, and the table is printed.
#[test]
fn side_by_side_script_feeds_outpost_victoria_metrics_and_zabbix_the_same_stream() {
    let _slot = load_test_slot();
    let tmp = scratch("bench-side-by-side");
    let bin_dir = bin("outpost-bench")
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/ingest-side-by-side.sh");
    let out = tmp.path().join("out");
    let result = std::process::Command::new("bash")
        .arg(&script)
        .arg(&out)
        .env("BIN", &bin_dir)
        .env("DEVICES", "10")
        .env("RATE", "2")
        .env("DURATION", "2s")
        .env("WARMUP", "1s")
        .env("PHASES", "fixed")
        .env("VM_PORT", outpost_tests::free_port().to_string())
        .env("ZBX_PORT", outpost_tests::free_port().to_string())
        .env("KEEP", "1")
        .output()
        .expect("running the side-by-side script");
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "script failed: {stdout}\n{stderr}");
    assert!(
        stdout.contains("| accepted samples/s |"),
        "no results table: {stdout}"
    );
    let read = |name: &str| -> serde_json::Value {
        let p = out.join(name);
        serde_json::from_str(
            &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .unwrap()
    };
    let f = |v: &serde_json::Value, k: &str| -> f64 {
        v.get(k)
            .and_then(|x| x.as_f64())
            .unwrap_or_else(|| panic!("no {k} in {v}"))
    };
    let outpost = read("outpost-fixed.json");
    assert!(f(&outpost, "samples_acked_total") > 0.0, "{outpost}");
    assert_eq!(f(&outpost, "errors"), 0.0, "{outpost}");
    let disk = read("outpost-fixed-disk.json");
    assert_eq!(f(&disk, "samples"), f(&outpost, "samples_acked_total"));
    // Counted back from the database: every acknowledged value is there,
    // none folded into another of the same millisecond.
    assert_eq!(
        f(&disk, "stored"),
        f(&outpost, "samples_acked_total"),
        "{disk}"
    );
    assert!(f(&disk, "bytes_per_sample") > 0.0, "{disk}");
    for peer in ["vm-fixed.json", "zbx-fixed.json"] {
        let v = read(peer);
        let accepted = f(&v, "samples_accepted_total");
        assert!(accepted > 0.0, "{peer}: {v}");
        assert_eq!(
            f(&v, "stored"),
            accepted,
            "{peer} stored what it accepted: {v}"
        );
        assert_eq!(f(&v, "samples_refused"), 0.0, "{peer}: {v}");
        // Measured (the key is there); at toy scale a peer's CPU over the
        // 2 s window can be below one clock tick, so 0 is a valid figure.
        assert!(f(&v, "cpu_s_per_million_samples") >= 0.0, "{peer}: {v}");
    }
}
