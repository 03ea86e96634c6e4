//! The central web view in a real browser: headless Chromium driven over
//! the DevTools protocol (a minimal WebSocket client below; no driver
//! crate). Logs in, navigates overview → site → device, asserts the
//! content and saves screenshots in the scratch directory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use outpost_tests::*;
use serde_json::{Value, json};

use crate::uplink::{Central, SiteClient};

/// A blocking WebSocket connection (client side, text frames).
struct Ws {
    s: TcpStream,
    next_id: u64,
}

impl Ws {
    fn connect(url: &str) -> Ws {
        let rest = url.strip_prefix("ws://").expect("ws url");
        let (host, path) = rest.split_once('/').expect("ws path");
        let mut s = TcpStream::connect(host).expect("connect devtools");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let req = format!(
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).expect("handshake");
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Ws { s, next_id: 0 }
    }

    fn send_text(&mut self, text: &str) {
        let p = text.as_bytes();
        let mut f = vec![0x81u8];
        if p.len() < 126 {
            f.push(0x80 | p.len() as u8);
        } else if p.len() < 65536 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(p.len() as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(p.len() as u64).to_be_bytes());
        }
        f.extend_from_slice(&[0, 0, 0, 0]); // mask key 0: payload unchanged
        f.extend_from_slice(p);
        self.s.write_all(&f).unwrap();
    }

    fn recv_text(&mut self) -> String {
        let mut msg = Vec::new();
        loop {
            let mut h = [0u8; 2];
            self.s.read_exact(&mut h).expect("frame header");
            let fin = h[0] & 0x80 != 0;
            let mut len = u64::from(h[1] & 0x7f);
            if len == 126 {
                let mut l = [0u8; 2];
                self.s.read_exact(&mut l).unwrap();
                len = u64::from(u16::from_be_bytes(l));
            } else if len == 127 {
                let mut l = [0u8; 8];
                self.s.read_exact(&mut l).unwrap();
                len = u64::from_be_bytes(l);
            }
            let mut p = vec![0u8; len as usize];
            self.s.read_exact(&mut p).unwrap();
            msg.extend_from_slice(&p);
            if fin {
                return String::from_utf8_lossy(&msg).into_owned();
            }
        }
    }

    /// Sends a DevTools command and returns its `result`, or the error
    /// object DevTools answered with.
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        self.send_text(&json!({"id": id, "method": method, "params": params}).to_string());
        loop {
            let v: Value = serde_json::from_str(&self.recv_text()).expect("devtools json");
            if v["id"] == id {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    /// Sends a DevTools command and returns its `result`.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn try_eval(&mut self, expr: &str) -> Result<Value, Value> {
        self.try_call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        )
        .map(|r| r["result"]["value"].clone())
    }

    fn eval(&mut self, expr: &str) -> Value {
        self.try_eval(expr)
            .unwrap_or_else(|e| panic!("Runtime.evaluate: {e}"))
    }

    /// Waits until `expr` is true in a fully loaded page. An evaluation
    /// that races a navigation ("Inspected target navigated or closed")
    /// counts as "not yet": the click that started it is asynchronous.
    fn wait_until(&mut self, expr: &str) {
        let start = Instant::now();
        loop {
            let full = format!("document.readyState === 'complete' && !!({expr})");
            if self.try_eval(&full) == Ok(json!(true)) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "page never satisfied {expr}: {:?}",
                self.try_eval("location.href + ' ' + document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn body_text(&mut self) -> String {
        self.eval("document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = b64(r["data"].as_str().expect("png data"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }
}

/// GET from Chromium's DevTools HTTP server, which keeps connections open:
/// read exactly Content-Length bytes.
fn devtools_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).ok()?;
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}

fn b64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for ch in bytes.chunks(4) {
        let n = ch.iter().enumerate().fold(0u32, |acc, (i, c)| {
            acc | (u32::from(val(*c)) << (18 - 6 * i))
        });
        out.push((n >> 16) as u8);
        if ch.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if ch.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

#[test]
fn web_view_in_headless_chromium_login_overview_site_device() {
    let tmp = scratch("central-browser");
    let root = tmp.path();
    let central = Central::start(root);
    let mut site = SiteClient::join(root, &central, "acme", "harbour-clinic");
    let mut first = site.batch(1, 7, 0..12);
    // The site reports a device enrolled under another tenant.
    first.foreign_tenants = vec![outpost_uplink::batch::ForeignTenant {
        tenant: "acme-old".into(),
        devices: 1,
    }];
    assert_eq!(
        site.send(&first),
        outpost_uplink::wire::CentralFrame::Ack { seq: 1 }
    );
    let (ok, _, err) = central.cli(
        &[
            "user", "add", "--tenant", "acme", "--name", "alice", "--role", "viewer",
        ],
        Some("correct horse battery\n"),
    );
    assert!(ok, "{err}");

    let port = free_port();
    let profile = root.join("chromium-profile");
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1200,900",
    ])
    .arg(format!("--remote-debugging-port={port}"))
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg("about:blank");
    let mut browser = Proc::spawn("chromium", &mut cmd, root)
        .expect("start chromium (Debian package `chromium`)");
    let devtools = SocketAddr::from(([127, 0, 0, 1], port));
    let ws_url = wait_for(Duration::from_secs(30), "chromium DevTools", || {
        let list: Value = serde_json::from_str(&devtools_get(devtools, "/json/list")?).ok()?;
        list.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
            .as_str()
            .map(str::to_string)
    });
    let mut ws = Ws::connect(&ws_url);
    let base = format!("http://{}", central.http);

    ws.call("Page.navigate", json!({"url": format!("{base}/")}));
    ws.wait_until("location.pathname === '/login' && document.getElementById('signin')");
    ws.screenshot(&root.join("01-login.png"));
    ws.eval("document.getElementById('tenant').value='acme'; document.getElementById('username').value='alice'; document.getElementById('password').value='correct horse battery'; document.getElementById('signin').click(); true");
    ws.wait_until("location.pathname === '/' && document.getElementById('fleet')");
    let text = ws.body_text();
    assert!(
        text.contains("Fleet overview")
            && text.contains("harbour-clinic")
            && text.contains("dental"),
        "{text}"
    );
    assert!(text.contains("1 devices: 1 online"), "{text}");
    ws.screenshot(&root.join("02-overview.png"));

    ws.eval("document.querySelector('#fleet a').click(); true");
    ws.wait_until("location.pathname.startsWith('/sites/') && document.getElementById('devices')");
    let text = ws.body_text();
    assert!(
        text.contains("Site harbour-clinic") && text.contains("host-7") && text.contains("online"),
        "{text}"
    );
    assert!(
        text.contains("Tenant mismatch: 1 device of this site was enrolled under tenant acme-old (1), not acme."),
        "{text}"
    );
    ws.screenshot(&root.join("03-site.png"));

    ws.eval("document.querySelector('#devices a').click(); true");
    ws.wait_until("document.getElementById('chart')");
    let text = ws.body_text();
    assert!(
        text.contains("Device host-7") && text.contains("12 rollups") && text.contains("cpu_high"),
        "{text}"
    );
    let points = ws.eval(
        "document.querySelector('#chart polyline').getAttribute('points').trim().split(' ').length",
    );
    assert_eq!(points, json!(12), "one chart point per 5-minute rollup");
    ws.screenshot(&root.join("04-device.png"));
    for f in [
        "01-login.png",
        "02-overview.png",
        "03-site.png",
        "04-device.png",
    ] {
        assert!(std::fs::metadata(root.join(f)).unwrap().len() > 1000, "{f}");
    }
    browser.kill9();
}
