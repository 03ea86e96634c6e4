//! Nothing acknowledged is lost; nothing replayed is stored twice.

use std::time::Duration;

use outpost_tests::{Agent, Appliance, num, scratch, wait_for};
use serde_json::Value;

/// Checks that records 1..=last_seq of the device were each stored exactly
/// once: the stored count equals the high-water mark, heartbeat sequence
/// numbers are unique, and heartbeats + metric samples + inventories add up
/// to the high-water mark. Returns the heartbeats.
fn assert_exactly_once(app: &Appliance, id: &str, inventories: u64) -> Vec<Value> {
    let dev = app.device(id);
    let last_seq = num(&dev, "last_seq");
    let stored = num(&dev, "records_stored");
    assert_eq!(
        stored, last_seq,
        "every sequence number up to {last_seq} stored once: {dev}"
    );
    let hbs: Vec<Value> = app
        .api(&format!(
            "/api/v1/devices/{id}/heartbeats?from=0&limit=100000"
        ))
        .unwrap();
    let seqs: Vec<u64> = hbs.iter().map(|h| num(h, "seq")).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        seqs.len(),
        "duplicate heartbeat sequence numbers"
    );
    let cpu: Value = app
        .api(&format!(
            "/api/v1/devices/{id}/metrics?name=cpu&from=0&limit=100000"
        ))
        .unwrap();
    let samples = cpu["points"].as_array().unwrap().len() as u64;
    assert_eq!(
        seqs.len() as u64 + samples + inventories,
        last_seq,
        "heartbeats {} + metric records {samples} + inventories {inventories} != {last_seq}",
        seqs.len()
    );
    hbs
}

fn last_seq(app: &Appliance, id: &str) -> u64 {
    num(&app.device(id), "last_seq")
}

#[test]
fn kill9_of_the_appliance_while_streaming_loses_and_duplicates_nothing() {
    let tmp = scratch("kill9");
    let mut app = Appliance::start(tmp.path());
    let mut agent = Agent::enroll(tmp.path(), "agent", &app);
    agent.start();
    let id = agent.device_id.clone();
    wait_for(Duration::from_secs(20), "10 records stored", || {
        (last_seq(&app, &id) >= 10).then_some(())
    });
    let before = last_seq(&app, &id);
    app.kill9();
    std::thread::sleep(Duration::from_secs(3));
    app.restart();
    // The agent reconnects (backoff) and replays its buffer.
    wait_for(
        Duration::from_secs(30),
        "agent caught up after restart",
        || {
            (last_seq(&app, &id) >= before + 8 && app.device(&id)["connected"] == true)
                .then_some(())
        },
    );
    // Graceful agent stop: its last records are acked before it leaves.
    agent.stop();
    assert_exactly_once(&app, &id, 1);
}

#[test]
fn appliance_outage_is_buffered_by_the_agent_and_delivered_after() {
    let tmp = scratch("outage");
    let mut app = Appliance::start(tmp.path());
    let mut agent = Agent::enroll(tmp.path(), "agent", &app);
    agent.start();
    let id = agent.device_id.clone();
    wait_for(Duration::from_secs(20), "records stored", || {
        (last_seq(&app, &id) >= 4).then_some(())
    });
    assert_eq!(app.stop().map(|s| s.success()), Some(true), "graceful stop");
    let down_at = outpost_storage_now();
    std::thread::sleep(Duration::from_secs(5));
    app.restart();
    let up_at = outpost_storage_now();
    wait_for(Duration::from_secs(30), "backlog delivered", || {
        let d = app.device(&id);
        (num(&d, "last_heartbeat_ts_ms") > up_at + 1_000).then_some(())
    });
    agent.stop();
    let hbs = assert_exactly_once(&app, &id, 1);
    // Heartbeats generated while the appliance was down are all there: no
    // gap longer than a jittered interval across the outage.
    let ts: Vec<u64> = hbs.iter().map(|h| num(h, "ts_ms")).collect();
    let during = ts.iter().filter(|t| **t > down_at && **t < up_at).count();
    assert!(during >= 4, "only {during} heartbeats from the 5 s outage");
    let max_gap = ts.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(max_gap < 2_000, "gap of {max_gap} ms in heartbeats");
}

#[test]
fn agent_kill9_and_restart_continues_its_sequence() {
    let tmp = scratch("agentkill");
    let app = Appliance::start(tmp.path());
    let mut agent = Agent::enroll(tmp.path(), "agent", &app);
    agent.start();
    let id = agent.device_id.clone();
    wait_for(Duration::from_secs(20), "records stored", || {
        (last_seq(&app, &id) >= 5).then_some(())
    });
    agent.kill9();
    let before = last_seq(&app, &id);
    agent.start();
    wait_for(Duration::from_secs(30), "agent streams again", || {
        (last_seq(&app, &id) >= before + 5).then_some(())
    });
    agent.stop();
    // Two runs, two inventories; no sequence number reused or skipped.
    assert_exactly_once(&app, &id, 2);
}

fn outpost_storage_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn agent_reconnects_when_a_hung_appliance_stops_acknowledging() {
    let tmp = scratch("hung");
    let app = Appliance::start(tmp.path());
    let mut agent = Agent::enroll(tmp.path(), "agent", &app);
    std::fs::write(
        agent.state.join("agent.toml"),
        "ack_timeout = \"2s\"\npackage_scan = false\n",
    )
    .unwrap();
    agent.start();
    let id = agent.device_id.clone();
    wait_for(Duration::from_secs(20), "records stored", || {
        (last_seq(&app, &id) >= 3).then_some(())
    });
    // Freeze the appliance: no acks, no close, no stateless reset.
    let pid = app.proc.as_ref().unwrap().pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for(Duration::from_secs(20), "agent noticed the silence", || {
        agent.stderr().contains("no acknowledgement").then_some(())
    });
    let before = last_seq(&app, &id);
    wait_for(Duration::from_secs(30), "agent streams again", || {
        (last_seq(&app, &id) >= before + 3).then_some(())
    });
    agent.stop();
    assert_exactly_once(&app, &id, 1);
}
