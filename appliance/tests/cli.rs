//! The `outpost` command-line contract (DESIGN.md § Interfaces).

use std::process::Command;

fn outpost(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .output()
        .expect("run outpost")
}

#[test]
fn help_lists_the_documented_commands_and_flags() {
    let top = String::from_utf8(outpost(&["--help"]).stdout).unwrap();
    for cmd in ["serve", "ca-fingerprint", "token", "devices", "device"] {
        assert!(top.contains(cmd), "missing {cmd} in:\n{top}");
    }
    let serve = String::from_utf8(outpost(&["serve", "--help"]).stdout).unwrap();
    for flag in [
        "--data",
        "--config",
        "--quic-listen",
        "--admin-listen",
        "--cache-listen",
    ] {
        assert!(serve.contains(flag), "missing {flag} in:\n{serve}");
    }
}

#[test]
fn ca_fingerprint_without_data_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = outpost(&[
        "ca-fingerprint",
        "--data",
        dir.path().join("none").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "errors go to stderr only");
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("outpost serve"), "{err}");
}

#[test]
fn admin_commands_without_a_running_appliance_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let o = outpost(&["devices", "--data", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.contains("admin.addr") && err.contains("running"),
        "{err}"
    );
}

#[test]
fn help_suggests_body_for_api_requests_not_the_data_directory_flag() {
    let top = String::from_utf8(outpost(&["--help"]).stdout).unwrap();
    assert!(top.contains("--body @channel.json"), "{top}");
    assert!(!top.contains("--data @"), "{top}");
    let api = String::from_utf8(outpost(&["api", "--help"]).stdout).unwrap();
    assert!(api.contains("--body <JSON|@FILE>"), "{api}");
}

/// A one-shot HTTP server: answers one request with `answer` (JSON) and
/// hands back the request it received.
fn one_shot_server(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap();
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .unwrap();
        String::from_utf8_lossy(&req).into_owned()
    });
    (url, h)
}

#[test]
fn api_sends_the_body_file_and_prints_json_on_one_line_with_a_newline() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("channel.json");
    std::fs::write(&body, r#"{"id":"ops","type":"webhook"}"#).unwrap();
    let (url, server) = one_shot_server("{ \"id\": \"ops\",\n  \"steps\": [1, 2] }\n");
    let o = outpost(&[
        "api",
        "post",
        "/api/v1/channels",
        "--body",
        &format!("@{}", body.display()),
        "--api",
        &url,
        "--token",
        "t",
    ]);
    let req = server.join().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(req.starts_with("POST /api/v1/channels "), "{req}");
    assert!(req.ends_with(r#"{"id":"ops","type":"webhook"}"#), "{req}");
    // Not a terminal: one line, one newline.
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        "{\"id\":\"ops\",\"steps\":[1,2]}\n"
    );
}

#[test]
fn api_with_a_missing_body_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("channel.json");
    let o = outpost(&[
        "--data",
        dir.path().to_str().unwrap(),
        "api",
        "POST",
        "/api/v1/channels",
        "--body",
        &format!("@{}", missing.display()),
    ]);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(!err.contains("admin.addr"), "the body is read first: {err}");
}
