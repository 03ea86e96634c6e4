//! File push and pull end to end: real appliance and agent processes.
//! A push is written with its mode and checked by hash; a pull is
//! verified and downloaded; a push of several MiB resumes after the agent
//! is killed (`-9`) mid-transfer and restarted (fewer bytes sent again
//! than the file holds); a file over the limit is refused before any byte
//! moves; a push outside the agent's `file_roots` is refused by the agent
//! with the reason; a viewer may read but not transfer.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use outpost_tests::{Appliance, http_raw, scratch, stderr, wait_for};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::remote::{agent_with, login_as};

fn roots_toml(root: &Path) -> String {
    format!("file_roots = [{:?}]\n", root.display().to_string())
}

fn show(app: &Appliance, id: &str) -> Value {
    app.api(&format!("/api/v1/files/{id}"))
        .expect("show transfer")
}

fn wait_state(app: &Appliance, id: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(secs), &format!("transfer {id}"), || {
        let v = show(app, id);
        pred(&v).then_some(v)
    })
}

fn terminal(v: &Value) -> bool {
    !matches!(v["state"].as_str(), Some("queued" | "transferring"))
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Pseudo-random bytes (no long runs a file system could make sparse).
fn content(n: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ seed as u32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn a_push_and_a_pull_are_hash_checked_and_outside_roots_and_viewers_are_refused() {
    let tmp = scratch("files-basic");
    let root = tmp.path().join("managed");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let app = Appliance::start(tmp.path());
    let a = agent_with(tmp.path(), "a1", &app, &roots_toml(&root), true);
    let dev = a.device_id.clone();

    // Push with a mode; --wait exits 0 once written, verified and renamed.
    let local = tmp.path().join("app.conf");
    let body = content(200_000, 1);
    std::fs::write(&local, &body).unwrap();
    let remote = root.join("etc/app.conf");
    let o = app.cli(&[
        "files",
        "push",
        "--device",
        &dev,
        local.to_str().unwrap(),
        remote.to_str().unwrap(),
        "--mode",
        "0640",
        "--wait",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(std::fs::read(&remote).unwrap(), body);
    let mode = std::fs::metadata(&remote).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640);
    let v = show(&app, &id);
    assert_eq!(v["state"], "completed");
    assert_eq!(v["sha256"], sha_hex(&body));
    assert_eq!(v["bytes_done"], 200_000);
    let states: Vec<&str> = v["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "transferring", "completed"]);
    // Its command says what was written.
    let cmd: Value = app
        .api(&format!(
            "/api/v1/commands/{}",
            v["command"].as_str().unwrap()
        ))
        .unwrap();
    assert!(cmd["output"].as_str().unwrap().contains("wrote"), "{cmd}");

    // Pull: verified here, written locally after the hash check.
    let log = root.join("service.log");
    let log_body = content(150_000, 2);
    std::fs::write(&log, &log_body).unwrap();
    let got = tmp.path().join("pulled.log");
    let o = app.cli(&[
        "files",
        "pull",
        "--device",
        &dev,
        log.to_str().unwrap(),
        got.to_str().unwrap(),
        "--wait",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&got).unwrap(), log_body);
    let pid = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let v = show(&app, &pid);
    assert_eq!(v["state"], "completed");
    assert_eq!(v["sha256"], sha_hex(&log_body));
    assert_eq!(v["size_bytes"], 150_000);
    assert_eq!(v["content_available"], true);
    let (s, head, _) = http_raw(
        app.admin,
        "GET",
        &format!("/api/v1/files/{pid}/content"),
        &[("Authorization", &format!("Bearer {}", app.admin_token()))],
        "",
    );
    assert_eq!(s, 200);
    assert!(
        head.to_lowercase()
            .contains(&format!("x-outpost-sha256: {}", sha_hex(&log_body))),
        "{head}"
    );

    // Outside the roots (and through a link out of them): refused by the
    // agent with the reason; nothing written.
    std::os::unix::fs::symlink(&elsewhere, root.join("out")).unwrap();
    for target in [elsewhere.join("x"), root.join("out/x")] {
        let o = app.cli(&[
            "files",
            "push",
            "--device",
            &dev,
            local.to_str().unwrap(),
            target.to_str().unwrap(),
            "--wait",
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("outside the allowed file roots"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    assert!(app.metric("outpost_files_refusals_total{reason=\"agent_policy\"}") >= 2.0);

    // A viewer reads, may not push or pull.
    let cookie = login_as(&app, "vera", "viewer", "viewer-pass-1");
    let (s, _, out) = http_raw(
        app.admin,
        "POST",
        "/api/v1/files/pull",
        &[("Cookie", &cookie), ("Content-Type", "application/json")],
        &json!({"device": dev, "path": log.to_str().unwrap()}).to_string(),
    );
    assert_eq!(s, 403, "{out}");
    let (s, _, out) = http_raw(
        app.admin,
        "POST",
        &format!("/api/v1/files/push?device={dev}&path=/tmp/x"),
        &[("Cookie", &cookie)],
        "data",
    );
    assert_eq!(s, 403, "{out}");
    let (s, _, _) = http_raw(
        app.admin,
        "GET",
        "/api/v1/files",
        &[("Cookie", &cookie)],
        "",
    );
    assert_eq!(s, 200);
    let list: Vec<Value> = app.api("/api/v1/files").unwrap();
    assert_eq!(list.len(), 4, "the viewer's transfers were not queued");

    // Unknown device: 404 naming it.
    let o = app.cli(&[
        "files",
        "pull",
        "--device",
        "00000000000000aa",
        "/x",
        "/tmp/y",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("404") && stderr(&o).contains("00000000000000aa"),
        "{}",
        stderr(&o)
    );

    // The audit log has each transfer and its result.
    let audit: Vec<Value> = app.api("/api/v1/audit").unwrap();
    let count = |a: &str| audit.iter().filter(|e| e["action"] == a).count();
    assert_eq!(count("file.push"), 3);
    assert_eq!(count("file.pull"), 1);
    assert_eq!(count("file.result"), 4);
}

#[test]
fn a_file_over_the_limit_is_refused_before_any_byte_moves() {
    let tmp = scratch("files-limit");
    let root = tmp.path().join("managed");
    std::fs::create_dir_all(&root).unwrap();
    let app = Appliance::start_with_config(tmp.path(), "[files]\nmax_bytes = 1048576\n");
    let a = agent_with(tmp.path(), "a1", &app, &roots_toml(&root), true);
    let dev = a.device_id.clone();

    // Push: 413 with the limit, no transfer queued.
    let local = tmp.path().join("big");
    std::fs::write(&local, content(1_048_577, 3)).unwrap();
    let o = app.cli(&[
        "files",
        "push",
        "--device",
        &dev,
        local.to_str().unwrap(),
        root.join("big").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("413") && stderr(&o).contains("1048576"),
        "{}",
        stderr(&o)
    );
    let list: Vec<Value> = app.api("/api/v1/files").unwrap();
    assert!(list.is_empty(), "{list:?}");
    assert!(app.metric("outpost_files_refusals_total{reason=\"too_large\"}") >= 1.0);

    // Pull: the agent refuses before sending anything.
    std::fs::write(root.join("big.log"), content(1_048_577, 4)).unwrap();
    let o = app.cli(&[
        "files",
        "pull",
        "--device",
        &dev,
        root.join("big.log").to_str().unwrap(),
        tmp.path().join("got").to_str().unwrap(),
        "--wait",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("limit"), "{}", stderr(&o));
    assert!(!tmp.path().join("got").exists());
    assert_eq!(app.metric("outpost_files_pull_bytes_stored_total"), 0.0);

    // A revoked device takes no transfers: 409.
    app.cli_ok(&["device", "revoke", &dev]);
    let (s, v) = app.api_post(
        "/api/v1/files/pull",
        &json!({"device": dev, "path": root.join("big.log").to_str().unwrap()}),
    );
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("revoked"), "{v}");
}

#[test]
fn a_push_resumes_from_what_the_agent_holds_after_it_is_killed_mid_transfer() {
    let tmp = scratch("files-resume");
    let root = tmp.path().join("managed");
    std::fs::create_dir_all(&root).unwrap();
    let app = Appliance::start(tmp.path());
    let mut a = agent_with(tmp.path(), "a1", &app, &roots_toml(&root), true);
    let dev = a.device_id.clone();
    let size = 48 * 1024 * 1024;
    let body = content(size, 5);
    let local = tmp.path().join("image.bin");
    std::fs::write(&local, &body).unwrap();
    let remote = root.join("image.bin");
    let id = app
        .cli_ok(&[
            "files",
            "push",
            "--device",
            &dev,
            local.to_str().unwrap(),
            remote.to_str().unwrap(),
        ])
        .trim()
        .to_string();
    // Kill the agent once part of the file is durable on the device.
    let v = wait_state(&app, &id, 60, |v| {
        v["bytes_done"].as_u64().unwrap_or(0) >= 4 * 1024 * 1024 || terminal(v)
    });
    assert_eq!(v["state"], "transferring", "{v}");
    a.kill9();
    let held = v["bytes_done"].as_u64().unwrap();
    assert!(held < size as u64, "{v}");
    assert!(!remote.exists(), "nothing at the target before the end");
    a.start();
    let v = wait_state(&app, &id, 120, terminal);
    assert_eq!(v["state"], "completed", "{v}");
    assert!(v["resumes"].as_u64().unwrap() >= 1, "{v}");
    let got = std::fs::read(&remote).unwrap();
    assert_eq!(sha_hex(&got), sha_hex(&body));
    // Bytes sent twice are fewer than the file: it went on from what the
    // agent held, not from the start.
    let sent = app.metric("outpost_files_push_bytes_sent_total");
    let resent = sent - size as f64;
    assert!(resent < size as f64, "sent {sent} for {size}");
    assert!(app.metric("outpost_files_resumes_total") >= 1.0);
    // The command was not interrupted by the restart: it completed once.
    let cmd: Value = app
        .api(&format!(
            "/api/v1/commands/{}",
            v["command"].as_str().unwrap()
        ))
        .unwrap();
    assert_eq!(cmd["state"], "completed", "{cmd}");
    // No temporary file left behind.
    let names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["image.bin"]);
}

#[test]
fn a_pull_survives_kill_9_of_the_appliance_and_a_queued_push_is_cancelled_before_it_is_sent() {
    let tmp = scratch("files-appliance-kill");
    let root = tmp.path().join("managed");
    std::fs::create_dir_all(&root).unwrap();
    let mut app = Appliance::start(tmp.path());
    let mut a = agent_with(tmp.path(), "a1", &app, &roots_toml(&root), true);
    let dev = a.device_id.clone();
    let size = 48 * 1024 * 1024;
    let body = content(size, 6);
    let remote = root.join("dump.bin");
    std::fs::write(&remote, &body).unwrap();
    let (s, v) = app.api_post(
        "/api/v1/files/pull",
        &json!({"device": dev, "path": remote.to_str().unwrap()}),
    );
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let v = wait_state(&app, &id, 60, |v| {
        v["bytes_done"].as_u64().unwrap_or(0) >= 4 * 1024 * 1024 || terminal(v)
    });
    assert_eq!(v["state"], "transferring", "{v}");
    app.kill9();
    app.restart();
    let v = wait_state(&app, &id, 120, terminal);
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["sha256"], sha_hex(&body));
    assert!(v["resumes"].as_u64().unwrap() >= 1, "{v}");
    let got = tmp.path().join("dump.got");
    app.cli_ok(&["files", "download", &id, got.to_str().unwrap()]);
    assert_eq!(sha_hex(&std::fs::read(&got).unwrap()), sha_hex(&body));

    // Offline: a push waits; cancelled, it is never sent.
    a.stop();
    wait_for(Duration::from_secs(30), "the agent gone", || {
        (app.device(&dev)["connected"] != true).then_some(())
    });
    let local = tmp.path().join("late.conf");
    std::fs::write(&local, b"late\n").unwrap();
    let target = root.join("late.conf");
    let id = app
        .cli_ok(&[
            "files",
            "push",
            "--device",
            &dev,
            local.to_str().unwrap(),
            target.to_str().unwrap(),
        ])
        .trim()
        .to_string();
    assert_eq!(show(&app, &id)["state"], "queued");
    let text = app.cli_ok(&["files", "cancel", &id]);
    assert!(text.contains("cancelled"), "{text}");
    a.start();
    // Give the agent a session in which the push would have gone out.
    wait_for(Duration::from_secs(30), "the agent back", || {
        (app.device(&dev)["connected"] == true).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!target.exists(), "a cancelled push is never written");
    assert_eq!(show(&app, &id)["state"], "cancelled");
}
