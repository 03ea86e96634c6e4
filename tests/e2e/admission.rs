//! Handshake admission with real sockets: a burst of connection attempts
//! over the appliance's handshake rate is retried and refused (and counted
//! so at /metrics), the refused agents connect later with their back-off,
//! and established sessions keep streaming and being acknowledged through
//! the storm.

use std::time::Duration;

use outpost_bench::spawn::Spawned;
use outpost_bench::storm::{self, StormRun};
use outpost_tests::{bin, load_test_slot, scratch};

#[test]
fn a_connection_storm_over_the_rate_is_retried_and_refused_while_established_sessions_stream() {
    let _slot = load_test_slot();
    let tmp = scratch("admission-storm");
    let data = tmp.path().join("appliance");
    let state = tmp.path().join("fleet");
    let (agents, churn) = (4usize, 30usize);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Enroll the fleet with the default admission settings...
    let mut app = Spawned::start(&bin("outpost"), &data, &[]).unwrap();
    let token = app.token(agents + churn).unwrap();
    let pin = app.fingerprint().unwrap();
    rt.block_on(outpost_bench::fleet::load_or_enroll_quiet(
        &state,
        app.quic,
        &token,
        pin,
        agents + churn,
    ))
    .unwrap();
    // ...then restart it admitting 10 handshakes/s (5 at once, 4 in flight).
    app.stop(Duration::from_secs(10)).unwrap();
    std::fs::write(
        data.join("outpost.toml"),
        "[admission]\nmax_handshakes = 4\nhandshake_rate = 10\nhandshake_burst = 5\n",
    )
    .unwrap();
    app.restart().unwrap();

    // 30 agents connect at once (each once), beside 4 streaming ones.
    let out = rt
        .block_on(storm::run(
            &StormRun {
                agents,
                churn,
                rate: 20.0,
                churn_sessions: 1,
                duration: Duration::from_secs(10),
                warmup: Duration::ZERO,
                state,
                quiet: true,
            },
            &app,
        ))
        .unwrap();
    let line = out.report.line();
    // The storm was over the rate: retried and refused, and counted.
    let [accepted, retried, refused] = out.admission.expect("admission counters at /metrics");
    assert!(retried > 0, "no Retry: {line}");
    assert!(refused > 0, "no refusal: {line}");
    assert!(out.churn_failures > 0, "no agent saw a refusal: {line}");
    assert!(
        accepted >= (agents + churn) as u64,
        "{accepted} accepted: {line}"
    );
    // The refused agents connected later, with their back-off.
    assert_eq!(out.churn_connected, churn as u64, "{line}");
    // The established sessions were neither dropped nor starved.
    assert_eq!(out.reconnects, 0, "{line}");
    assert_eq!(out.errors, 0, "{line}");
    assert!(out.latency_count > 0, "no ack during the storm: {line}");
    assert_eq!(out.acked, out.sent, "{line}");
    let metrics = rt.block_on(app.metrics()).unwrap();
    // Each refusal says which bound it hit.
    assert!(
        metrics.contains("outpost_rejects_total{reason=\"handshake_rate\"}")
            || metrics.contains("outpost_rejects_total{reason=\"handshakes_in_flight\"}"),
        "{metrics}"
    );
}

/// Enrollment is a handshake like any other: a whole site enrolling at once
/// is over the appliance's handshake rate, and every refused device retries
/// with back-off until it is in (it used to fail at the first refusal,
/// which aborted `outpost-bench ingest --spawn` with 1,000 agents).
#[test]
fn devices_enrolling_over_the_handshake_rate_are_refused_then_enroll_with_back_off() {
    let _slot = load_test_slot();
    let tmp = scratch("admission-enroll");
    let data = tmp.path().join("appliance");
    let devices = 24usize;
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("outpost.toml"),
        "[admission]\nmax_handshakes = 2\nhandshake_rate = 8\nhandshake_burst = 2\n",
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = Spawned::start(&bin("outpost"), &data, &[]).unwrap();
    let token = app.token(devices).unwrap();
    let pin = app.fingerprint().unwrap();
    // 24 devices at once (32 enrollments in flight) against 8/s: most are
    // refused at least once.
    let fleet = rt
        .block_on(outpost_bench::fleet::load_or_enroll_quiet(
            &tmp.path().join("fleet"),
            app.quic,
            &token,
            pin,
            devices,
        ))
        .expect("every device enrolls despite the refusals");
    assert_eq!(fleet.identities.len(), devices);
    let metrics = rt.block_on(app.metrics()).unwrap();
    let [accepted, _retried, refused] =
        storm::admission_counters(&metrics).expect("admission counters at /metrics");
    assert!(refused > 0, "no handshake was refused:\n{metrics}");
    assert!(accepted >= devices as u64, "{accepted} accepted");
}
