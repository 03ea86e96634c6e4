//! Files from central, end to end: real `outpost-central`, `outpost` and
//! `outpost-agent` processes. A push from central's CLI reaches the device
//! through the site's uplink and the agent writes it with its mode after
//! the hash check; a pull comes up to central and downloads with the right
//! SHA-256; a push of many MiB resumes after the uplink is cut (`kill -9`
//! of central mid-transfer) from what the site holds; an upload over the
//! limit is 413 before its body is read, a viewer 403, another tenant
//! 404, a site at an older uplink protocol 409.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use outpost_tests::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::central_commands::{call, join_site};
use crate::uplink::{Central, SiteClient};

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

struct Rig {
    central: Central,
    app: Appliance,
    agent: Agent,
    site: String,
    tech: String,
    viewer: String,
    managed: std::path::PathBuf,
    _cfg: std::path::PathBuf,
}

/// A central (with `central_args`), a joined site and an agent whose
/// `file_roots` is `ROOT/managed`.
fn rig(root: &Path, central_args: &[&str]) -> Rig {
    let central = Central::start_with(root, central_args);
    let (app, mut agent, site, cfg) = join_site(&central, root, "dental", "main-office");
    let managed = root.join("managed");
    std::fs::create_dir_all(&managed).unwrap();
    std::fs::write(
        agent.state.join("agent.toml"),
        format!(
            "command_kill_grace = \"500ms\"\npackage_scan = false\nfile_roots = [{:?}]\n",
            managed.display().to_string()
        ),
    )
    .unwrap();
    agent.stop();
    agent.start();
    let tech = central.api_token("acme", "technician");
    let viewer = central.api_token("acme", "viewer");
    Rig {
        central,
        app,
        agent,
        site,
        tech,
        viewer,
        managed,
        _cfg: cfg,
    }
}

/// One HTTP/1.1 request with a binary body; `claimed` replaces the
/// Content-Length (the body is then not sent): (status, body bytes).
pub(crate) fn http_bin(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
    claimed: Option<u64>,
) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let len = claimed.unwrap_or(body.len() as u64);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    if claimed.is_none() {
        s.write_all(body).unwrap();
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, raw[split + 4..].to_vec())
}

fn central_cli(r: &Rig, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("outpost-central"))
        .arg("files")
        .args(args)
        .env("OUTPOST_CENTRAL_TOKEN", &r.tech)
        .output()
        .expect("outpost-central files")
}

fn central_metric(c: &Central, series: &str) -> f64 {
    http_get(c.http, "/metrics", None)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn show(r: &Rig, id: &str) -> Value {
    let (st, v) = call(
        &r.central,
        &r.viewer,
        "GET",
        &format!("/api/v1/files/{id}"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    v
}

#[test]
fn a_push_and_a_pull_from_central_are_hash_checked_and_refusals_are_413_403_404_409() {
    let tmp = scratch("central-files");
    let r = rig(tmp.path(), &["--files-max-bytes", "4000000"]);
    let api = format!("http://{}", r.central.http);
    let dev = r.agent.device_id.clone();

    // Push from central's CLI; --wait returns once the device holds it.
    let body = content(300_000, 1);
    let local = tmp.path().join("app.conf");
    std::fs::write(&local, &body).unwrap();
    let remote = r.managed.join("app.conf");
    let o = central_cli(
        &r,
        &[
            "push",
            "--api",
            &api,
            "--site",
            &r.site,
            "--device",
            &dev,
            "--mode",
            "0640",
            "--wait",
            "--timeout",
            "120s",
            local.to_str().unwrap(),
            remote.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(std::fs::read(&remote).unwrap(), body, "the device holds it");
    let mode = std::fs::metadata(&remote).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640);
    let v = show(&r, &id);
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["direction"], "push", "{v}");
    assert_eq!(v["sha256"], sha_hex(&body), "{v}");
    // The site recorded it as its own transfer, under central's id, and
    // its agent checked the hash.
    let at_site: Value = r
        .app
        .api(&format!("/api/v1/files/{id}"))
        .expect("site record");
    assert_eq!(at_site["state"], "completed", "{at_site}");
    assert_eq!(at_site["sha256"], sha_hex(&body), "{at_site}");

    // Pull to central: the CLI waits for central to hold it, downloads
    // it, checks the hash and prints it.
    let log_body = content(250_000, 2);
    let log = r.managed.join("service.log");
    std::fs::write(&log, &log_body).unwrap();
    let got = tmp.path().join("pulled.log");
    let o = central_cli(
        &r,
        &[
            "pull",
            "--api",
            &api,
            "--site",
            &r.site,
            "--device",
            &dev,
            "--timeout",
            "120s",
            log.to_str().unwrap(),
            got.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        sha_hex(&log_body)
    );
    assert_eq!(std::fs::read(&got).unwrap(), log_body);
    // The CLI lists both, newest first; a cancel of the finished push is
    // refused (409) with the reason.
    let o = central_cli(
        &r,
        &["list", "--api", &api, "--site", &r.site, "--device", &dev],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    // (The pull's final state may still be on its way up.)
    assert_eq!(lines[0].split(' ').nth(1), Some("pull"), "{lines:?}");
    assert!(
        lines[1].starts_with(&format!("completed push {id} {} {dev} ", r.site)),
        "{lines:?}"
    );
    let o = central_cli(&r, &["cancel", "--api", &api, &id]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already finished"), "{}", stderr(&o));
    // The API's download has the same bytes and hash; the pull's command
    // is closed completed at central (its final state came up only after
    // central held the content).
    let pull = {
        let (st, v) = call(
            &r.central,
            &r.tech,
            "POST",
            "/api/v1/files/pull",
            Some(json!({"site": r.site, "device": dev, "path": log.to_str().unwrap()})),
        );
        assert_eq!(st, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    };
    let v = wait_for(
        Duration::from_secs(60),
        "the pull stored at central",
        || {
            let v = show(&r, &pull);
            (v["content_available"] == true && v["state"] == "completed").then_some(v)
        },
    );
    assert_eq!(v["sha256"], sha_hex(&log_body), "{v}");
    assert_eq!(v["size_bytes"], 250_000, "{v}");
    // What a technician pulled, a viewer may not read.
    let (st, _) = http_bin(
        r.central.http,
        "GET",
        &format!("/api/v1/files/{pull}/content"),
        &r.viewer,
        b"",
        None,
    );
    assert_eq!(st, 403);
    let (st, bytes) = http_bin(
        r.central.http,
        "GET",
        &format!("/api/v1/files/{pull}/content"),
        &r.tech,
        b"",
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(sha_hex(&bytes), sha_hex(&log_body));
    assert!(central_metric(&r.central, "outpost_central_files_pulls_stored_total") >= 2.0);

    // Over the limit: 413 from the Content-Length, before the body.
    let push_path = format!(
        "/api/v1/files/push?site={}&device={dev}&path={}",
        r.site,
        r.managed.join("big.bin").display()
    );
    let (st, b) = http_bin(
        r.central.http,
        "POST",
        &push_path,
        &r.tech,
        b"",
        Some(5_000_000),
    );
    assert_eq!(st, 413, "{}", String::from_utf8_lossy(&b));
    assert!(String::from_utf8_lossy(&b).contains("limit"));
    assert!(!r.managed.join("big.bin").exists());
    // A viewer may read, not transfer.
    let (st, _) = http_bin(r.central.http, "POST", &push_path, &r.viewer, b"x", None);
    assert_eq!(st, 403);
    let (st, _) = call(
        &r.central,
        &r.viewer,
        "POST",
        "/api/v1/files/pull",
        Some(json!({"site": r.site, "device": dev, "path": log.to_str().unwrap()})),
    );
    assert_eq!(st, 403);
    // Another tenant sees nothing: its push and reads are 404.
    let zeta = r.central.api_token("zeta", "admin");
    let (st, _) = http_bin(r.central.http, "POST", &push_path, &zeta, b"x", None);
    assert_eq!(st, 404);
    let (st, _) = call(
        &r.central,
        &zeta,
        "GET",
        &format!("/api/v1/files/{pull}"),
        None,
    );
    assert_eq!(st, 404);
    let (st, _) = http_bin(
        r.central.http,
        "GET",
        &format!("/api/v1/files/{pull}/content"),
        &zeta,
        b"",
        None,
    );
    assert_eq!(st, 404);

    // A site whose appliance speaks protocol 6 (before files): 409 naming
    // the site, before any byte is read.
    let old = SiteClient::join_version(tmp.path(), &r.central, "acme", "old-site", 6);
    let old_site = r
        .central
        .get("/api/v1/sites", &r.viewer)
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s["name"] == "old-site")
                .and_then(|s| s["site_id"].as_str().map(str::to_string))
        })
        .expect("the old site listed");
    let (st, b) = http_bin(
        r.central.http,
        "POST",
        &format!("/api/v1/files/push?site={old_site}&device={dev}&path=/tmp/x"),
        &r.tech,
        b"x",
        None,
    );
    let text = String::from_utf8_lossy(&b);
    assert_eq!(st, 409, "{text}");
    assert!(
        text.contains(&old_site) && text.contains("protocol 6"),
        "{text}"
    );
    drop(old);
}

#[test]
fn a_push_from_central_resumes_from_what_the_site_holds_after_the_uplink_is_cut() {
    let tmp = scratch("central-files-resume");
    let mut r = rig(tmp.path(), &[]);
    let api = format!("http://{}", r.central.http);
    let dev = r.agent.device_id.clone();
    let size = 96 * 1024 * 1024;
    let body = content(size, 5);
    let local = tmp.path().join("image.bin");
    std::fs::write(&local, &body).unwrap();
    let remote = r.managed.join("image.bin");
    let o = central_cli(
        &r,
        &[
            "push",
            "--api",
            &api,
            "--site",
            &r.site,
            "--device",
            &dev,
            local.to_str().unwrap(),
            remote.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    // Cut the uplink once part of the content is durable at the site.
    let received = "outpost_files_central_bytes_received_total";
    wait_for(
        Duration::from_secs(60),
        "part of the push at the site",
        || (r.app.metric(received) >= 4.0 * 1024.0 * 1024.0).then_some(()),
    );
    r.central.proc.take().expect("central runs").kill9();
    let held = r.app.metric(received);
    assert!(
        held < size as f64,
        "the whole file arrived before the cut: {held}"
    );
    r.central.restart();
    let v = wait_for(Duration::from_secs(180), "the push completed", || {
        let v = show(&r, &id);
        (v["state"] == "completed" || v["state"] == "failed").then_some(v)
    });
    assert_eq!(v["state"], "completed", "{v}");
    let got = std::fs::read(&remote).unwrap();
    assert_eq!(sha_hex(&got), sha_hex(&body));
    // Central (restarted) went on from what the site held, not from the
    // start: it sent fewer bytes than the file; the site wrote each byte
    // once.
    assert!(central_metric(&r.central, "outpost_central_files_resumes_total") >= 1.0);
    let sent = central_metric(&r.central, "outpost_central_files_push_bytes_sent_total");
    assert!(
        sent > 0.0 && sent < size as f64,
        "central sent {sent} of {size}"
    );
    assert_eq!(r.app.metric(received), size as f64);
}

#[test]
fn a_push_cancelled_at_central_while_its_content_travels_stops_and_the_site_drops_it() {
    let tmp = scratch("central-files-cancel");
    let r = rig(tmp.path(), &[]);
    let api = format!("http://{}", r.central.http);
    let dev = r.agent.device_id.clone();
    let size = 96 * 1024 * 1024;
    let local = tmp.path().join("image.bin");
    std::fs::write(&local, content(size, 7)).unwrap();
    let remote = r.managed.join("image.bin");
    let o = central_cli(
        &r,
        &[
            "push",
            "--api",
            &api,
            "--site",
            &r.site,
            "--device",
            &dev,
            local.to_str().unwrap(),
            remote.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let received = "outpost_files_central_bytes_received_total";
    wait_for(
        Duration::from_secs(60),
        "part of the push at the site",
        || (r.app.metric(received) >= 4.0 * 1024.0 * 1024.0).then_some(()),
    );
    let partial = r.app.dir.join("files").join("partial").join(&id);
    assert!(partial.is_file(), "{} held at the site", partial.display());
    // Cancel from central's CLI while the content travels.
    let o = central_cli(&r, &["cancel", "--api", &api, &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("cancelled push "),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(show(&r, &id)["state"], "cancelled");
    // Central stopped streaming and told the site, which dropped the
    // partial content; nothing reached the device.
    wait_for(
        Duration::from_secs(30),
        "the site dropped the partial",
        || (!partial.exists()).then_some(()),
    );
    assert!(central_metric(&r.central, "outpost_central_files_cancelled_total") >= 1.0);
    let held = r.app.metric(received);
    assert!(held < size as f64, "the whole file arrived: {held}");
    let sent = central_metric(&r.central, "outpost_central_files_push_bytes_sent_total");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        central_metric(&r.central, "outpost_central_files_push_bytes_sent_total"),
        sent,
        "central sends no more of it"
    );
    assert!(!remote.exists());
}
