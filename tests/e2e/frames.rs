//! Hostile frames close only the offending connection, with a counted reason.

use std::time::Duration;

use outpost_proto::messages::CloseReason;
use outpost_tests::{Agent, Appliance, num, raw, scratch, wait_for};

fn bad_frame_closes_only_that_connection(test: &str, payload: Vec<u8>, reason: CloseReason) {
    let tmp = scratch(test);
    let app = Appliance::start(tmp.path());
    let mut good = Agent::enroll(tmp.path(), "good", &app);
    good.start();
    let good_id = good.device_id.clone();
    wait_for(Duration::from_secs(15), "good agent streaming", || {
        (num(&app.device(&good_id), "last_seq") >= 3).then_some(())
    });

    let bad = Agent::enroll(tmp.path(), "bad", &app);
    let ca = std::fs::read_to_string(app.dir.join("ca.crt")).unwrap();
    let cfg = raw::client_config(&bad.state, &ca).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let code = rt.block_on(async {
        let (_ep, conn, mut send, _recv) = raw::session(app.quic, cfg).await.expect("session");
        send.write_all(&payload).await.expect("write");
        raw::close_code(&conn).await
    });
    assert_eq!(
        code,
        Some(u64::from(reason.code())),
        "closed with {reason:?}"
    );
    let series = format!("outpost_rejects_total{{reason=\"{}\"}}", reason.label());
    assert_eq!(app.metric(&series), 1.0, "{}", app.metrics_text());

    // The well-behaved agent keeps streaming on its own connection.
    let before = num(&app.device(&good_id), "last_seq");
    wait_for(
        Duration::from_secs(10),
        "good agent still streaming",
        || (num(&app.device(&good_id), "last_seq") >= before + 2).then_some(()),
    );
    assert_eq!(app.device(&good_id)["connected"], true);
}

#[test]
fn oversize_frame_closes_only_that_connection() {
    // A length prefix one byte over the 1 MiB limit, and no payload at all:
    // the limit is checked before anything is allocated or awaited.
    let len = (outpost_proto::DEFAULT_MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
    bad_frame_closes_only_that_connection("oversize", len.to_vec(), CloseReason::OversizeFrame);
}

#[test]
fn malformed_frame_closes_only_that_connection() {
    let mut payload = 6u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    bad_frame_closes_only_that_connection("malformed", payload, CloseReason::MalformedFrame);
}

fn status_json(agent: &Agent) -> serde_json::Value {
    let path = agent.state.join("status.json");
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// An appliance configured with a small `max_frame_bytes` gets an agent's
/// whole backlog in frames that fit it (the agent used to build 256 KiB
/// frames whatever the appliance announced: its session failed and
/// reconnected forever, the backlog never drained).
#[test]
fn a_backlog_drains_through_a_small_max_frame_bytes() {
    let tmp = scratch("small-frames");
    let mut app = Appliance::start_with_config(tmp.path(), "max_frame_bytes = 4096\n");
    let mut agent = Agent::enroll(tmp.path(), "agent", &app);
    let id = agent.device_id.clone();
    // A backlog of several frames' worth: the agent collects while the
    // appliance is down.
    assert_eq!(app.stop().map(|s| s.success()), Some(true));
    agent.start();
    let backlog = wait_for(Duration::from_secs(60), "a backlog of 12 KiB", || {
        let s = status_json(&agent);
        (s["buffered_bytes"].as_u64()? >= 12 * 1024).then(|| s["buffered_records"].as_u64())?
    });
    app.restart();
    wait_for(Duration::from_secs(60), "backlog delivered", || {
        (num(&app.device(&id), "last_seq") >= backlog).then_some(())
    });
    agent.stop();
    let status = status_json(&agent);
    assert_eq!(status["dropped_records"], 0, "{status}");
    assert_eq!(
        app.metric("outpost_rejects_total{reason=\"oversize_frame\"}"),
        0.0,
        "{}",
        app.metrics_text()
    );
    let dev = app.device(&id);
    assert_eq!(
        num(&dev, "records_stored"),
        num(&dev, "last_seq"),
        "every record stored once: {dev}"
    );
}

/// A session that floods the appliance is slowed down by its byte budget,
/// not refused and not queued without bound; the values that would create
/// series beyond the device's cap and the records stamped far in the
/// future are acknowledged but not stored, and counted.
#[test]
fn a_flooding_session_is_slowed_and_its_excess_series_and_future_records_are_refused() {
    use bytes::BytesMut;
    use outpost_proto::frame::{FrameReader, write_frame};
    use outpost_proto::messages::{
        AgentFrame, ApplianceFrame, Heartbeat, MetricValue, MetricsSample, Record, RecordBody,
    };

    let tmp = scratch("flood");
    let app = Appliance::start_with_config(
        tmp.path(),
        "[ingest]\nsession_max_bytes = 65536\nqueue_max_bytes = 131072\nmax_series_per_device = 4\n",
    );
    let agent = Agent::enroll(tmp.path(), "flood", &app);
    let ca = std::fs::read_to_string(app.dir.join("ca.crt")).unwrap();
    let cfg = raw::client_config(&agent.state, &ca).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let heartbeat = |seq: u64, ts_ms: u64| Record {
        seq,
        ts_ms,
        body: RecordBody::Heartbeat(Heartbeat {
            uptime_s: seq,
            buffered_records: 0,
            dropped_records: 0,
        }),
    };
    let mut out = BytesMut::new();
    let mut seq = 0u64;
    // 6 frames of 10,000 heartbeats: each holds far more memory decoded
    // than the session's 64 KiB budget.
    for _ in 0..6 {
        let records = (0..10_000)
            .map(|_| {
                seq += 1;
                heartbeat(seq, now)
            })
            .collect();
        write_frame(&AgentFrame::Records(records), &mut out, 1 << 20).unwrap();
    }
    // Ten series for a device capped at four, and two records from the far future.
    let values = (0..10)
        .map(|i| MetricValue {
            name: format!("series_{i}"),
            label: String::new(),
            value: 1.0,
        })
        .collect();
    let last = seq + 3;
    let tail = vec![
        Record {
            seq: seq + 1,
            ts_ms: now,
            body: RecordBody::Metrics(MetricsSample { values }),
        },
        heartbeat(seq + 2, u64::MAX),
        heartbeat(seq + 3, now + 30 * 86_400_000),
    ];
    write_frame(&AgentFrame::Records(tail), &mut out, 1 << 20).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked = rt.block_on(async {
        let (_ep, conn, mut send, mut recv) = raw::session(app.quic, cfg).await.expect("session");
        let writer = tokio::spawn(async move {
            send.write_all(&out).await.expect("write");
            send
        });
        let mut reader = FrameReader::new(1 << 20);
        let mut acked = 0;
        while acked < last {
            match tokio::time::timeout(
                Duration::from_secs(120),
                reader.next::<ApplianceFrame, _>(&mut recv),
            )
            .await
            {
                Ok(Ok(Some(ApplianceFrame::Ack(a)))) => acked = a.up_to_seq,
                other => panic!("expected acks up to {last}, got {other:?} after {acked}"),
            }
        }
        let _send = writer.await;
        conn.close(0u32.into(), b"done");
        acked
    });
    assert_eq!(acked, last);
    let dev = app.device(&agent.device_id);
    assert_eq!(num(&dev, "last_seq"), last);
    assert_eq!(num(&dev, "records_stored"), last - 2, "{dev}");
    let m = |s: &str| app.metric(s);
    // Whether this session had to wait depends on whether the writer
    // committed a group before the session decoded the next frame: a race
    // this test cannot steer. The wait itself is proven deterministically
    // by the writer's unit test
    // `a_session_over_its_byte_budget_waits_while_other_sessions_go_on`;
    // here the budgets must let every record through and release every byte.
    eprintln!(
        "budget waits: session {}, queue {}",
        m("outpost_ingest_budget_waits_total{budget=\"session\"}"),
        m("outpost_ingest_budget_waits_total{budget=\"queue\"}")
    );
    wait_for(Duration::from_secs(10), "queue memory released", || {
        (m("outpost_writer_queue_bytes") == 0.0).then_some(())
    });
    assert_eq!(m("outpost_rejects_total{reason=\"series_cap\"}"), 6.0);
    assert_eq!(m("outpost_rejects_total{reason=\"bad_timestamp\"}"), 2.0);
    let series = dev["metrics"].as_array().map(|a| a.len());
    assert_eq!(series, Some(4), "the first four series only: {dev}");
}
