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
