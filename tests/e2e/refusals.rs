//! Everything that must be refused is refused, with a clear message and a
//! counter.

use std::time::Duration;

use outpost_tests::{Agent, Appliance, raw, scratch, wait_for};
use serde_json::Value;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn enrollment_refuses_wrong_fingerprint_and_bad_tokens() {
    let tmp = scratch("enrollrefuse");
    let app = Appliance::start(tmp.path());
    let fp = app.fingerprint();
    let addr = app.quic.to_string();

    // Wrong CA fingerprint: refused by the agent before the token is sent.
    let token = app.token("acme", &[]);
    let wrong = format!("sha256:{}", "00".repeat(32));
    let state = tmp.path().join("wrongfp");
    let o = Agent::enroll_cmd(&state, &addr, &token, &wrong);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("refusing to enroll") && err.contains(&fp),
        "{err}"
    );
    assert!(!state.join("identity.toml").exists());
    // The token was not spent: it still enrolls with the right fingerprint.
    let o = Agent::enroll_cmd(&tmp.path().join("ok"), &addr, &token, &fp);
    assert!(o.status.success(), "{}", stderr(&o));

    // Unknown token.
    let o = Agent::enroll_cmd(&tmp.path().join("unknown"), &addr, "opt_nope", &fp);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown_token"), "{}", stderr(&o));

    // Used-up token (uses = 1, already used above).
    let o = Agent::enroll_cmd(&tmp.path().join("usedup"), &addr, &token, &fp);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("token_used_up"), "{}", stderr(&o));

    // Multi-use token works exactly N times.
    let multi = app.token("acme", &["--uses", "2"]);
    for i in 0..2 {
        let o = Agent::enroll_cmd(&tmp.path().join(format!("multi{i}")), &addr, &multi, &fp);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = Agent::enroll_cmd(&tmp.path().join("multi2"), &addr, &multi, &fp);
    assert!(stderr(&o).contains("token_used_up"));

    // Expired token.
    let short = app.token("acme", &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let o = Agent::enroll_cmd(&tmp.path().join("expired"), &addr, &short, &fp);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("expired_token"), "{}", stderr(&o));

    assert!(app.metric("outpost_enrollments_total{result=\"unknown_token\"}") >= 1.0);
    assert!(app.metric("outpost_enrollments_total{result=\"token_used_up\"}") >= 2.0);
    assert!(app.metric("outpost_enrollments_total{result=\"expired_token\"}") >= 1.0);
    assert_eq!(
        app.metric("outpost_enrollments_total{result=\"accepted\"}"),
        3.0
    );
    let devices: Vec<Value> = app.api("/api/v1/devices").unwrap();
    assert_eq!(devices.len(), 3);
    // Enrollments and token creations are audited.
    let audit: Vec<Value> = app.api("/api/v1/audit").unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["action"] == "device.enroll")
            .count(),
        3
    );
    assert!(audit.iter().any(|e| e["action"] == "token.create"));
    // Refused enrollments are audited too: who tried (the peer address),
    // with which token (its reference, or unknown) and why.
    let refused: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "device.enroll_refused")
        .collect();
    let reasons: Vec<&str> = refused
        .iter()
        .map(|e| e["detail"].as_str().unwrap().split(':').next().unwrap())
        .collect();
    assert_eq!(
        reasons,
        vec![
            "unknown_token",
            "token_used_up",
            "token_used_up",
            "expired_token"
        ],
        "{refused:?}"
    );
    for e in &refused {
        let actor = e["actor"].as_str().unwrap();
        assert!(
            actor
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback()),
            "{e}"
        );
    }
    assert_eq!(refused[0]["target"], "unknown", "an unknown token");
    let used_up = refused[1]["target"].as_str().unwrap();
    assert!(
        used_up.starts_with("token:") && used_up.len() == 18,
        "{used_up}"
    );
    assert!(!used_up.contains(&token[4..]), "never the secret");
    // The reference matches the token's creation entry.
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "token.create"
                && e["detail"].as_str().unwrap().ends_with(used_up)),
        "{audit:?}"
    );

    // A CSR that is not one: refused and audited, the token not spent.
    let good = app.token("acme", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let resp = rt
        .block_on(outpost_tests::raw_enroll::send(
            app.quic,
            &fp,
            &outpost_proto::messages::EnrollRequest {
                protocol_version: outpost_proto::PROTOCOL_VERSION,
                token: good.clone(),
                csr_der: b"not a CSR".to_vec(),
                facts: outpost_proto::messages::DeviceFacts {
                    hostname: "bad-csr".into(),
                    os: String::new(),
                    kernel: String::new(),
                    arch: String::new(),
                    agent_version: String::new(),
                },
            },
        ))
        .expect("an answer");
    assert!(
        matches!(
            resp,
            outpost_proto::messages::EnrollResponse::Rejected {
                reason: outpost_proto::messages::EnrollRejectReason::BadCsr,
                ..
            }
        ),
        "{resp:?}"
    );
    let audit: Vec<Value> = app.api("/api/v1/audit").unwrap();
    let last = audit
        .iter()
        .rev()
        .find(|e| e["action"] == "device.enroll_refused")
        .unwrap();
    assert!(
        last["detail"].as_str().unwrap().starts_with("bad_csr: "),
        "{last}"
    );
    assert!(
        last["target"].as_str().unwrap().starts_with("token:"),
        "{last}"
    );
    let o = Agent::enroll_cmd(&tmp.path().join("after-bad-csr"), &addr, &good, &fp);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn revoked_device_is_disconnected_and_refused_afterwards() {
    let tmp = scratch("revoke");
    let app = Appliance::start(tmp.path());
    let mut agent = Agent::enroll(tmp.path(), "agent", &app);
    agent.start();
    let id = agent.device_id.clone();
    wait_for(Duration::from_secs(15), "connected", || {
        (app.device(&id)["connected"] == true).then_some(())
    });

    let out = app.cli_ok(&["device", "revoke", &id]);
    assert_eq!(out.trim(), id);
    // The running agent is told and stops for good.
    let status = wait_for(Duration::from_secs(15), "agent exits", || {
        agent.proc.as_mut().and_then(|p| p.try_exit())
    });
    assert!(!status.success());
    assert!(agent.stderr().contains("revoked"), "{}", agent.stderr());
    agent.proc = None;

    // A new connection with the same certificate is refused.
    agent.start();
    let status = wait_for(Duration::from_secs(15), "agent refused", || {
        agent.proc.as_mut().and_then(|p| p.try_exit())
    });
    assert!(!status.success());
    assert!(agent.stderr().contains("revoked"));
    agent.proc = None;

    let dev = app.device(&id);
    assert_eq!(dev["revoked"], true);
    assert_eq!(dev["status"], "offline");
    assert!(app.metric("outpost_rejects_total{reason=\"revoked\"}") >= 1.0);
    let table = app.cli_ok(&["devices"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("revoked")),
        "{table}"
    );
    // Revoking an unknown device is an error with a clear message.
    let o = app.cli(&["device", "revoke", "00000000000000ff"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no device"), "{}", stderr(&o));
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let tmp_a = scratch("ca-a");
    let tmp_b = scratch("ca-b");
    let app_a = Appliance::start(tmp_a.path());
    let app_b = Appliance::start(tmp_b.path());
    // A device enrolled on B tries a session on A (trusting A's server).
    let agent_b = Agent::enroll(tmp_b.path(), "agent", &app_b);
    let ca_a = std::fs::read_to_string(app_a.dir.join("ca.crt")).unwrap();
    let cfg = raw::client_config(&agent_b.state, &ca_a).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(raw::session(app_a.quic, cfg));
    assert!(result.is_err(), "a foreign certificate got a session");
    wait_for(Duration::from_secs(5), "handshake reject counted", || {
        (app_a.metric("outpost_rejects_total{reason=\"handshake_failed\"}") >= 1.0).then_some(())
    });
    let devices: Vec<Value> = app_a.api("/api/v1/devices").unwrap();
    assert!(devices.is_empty());
}
