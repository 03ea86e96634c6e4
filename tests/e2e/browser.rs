//! The console in a real browser, at central and on the appliance:
//! headless Chromium driven over the DevTools protocol (a minimal
//! WebSocket client below; no driver crate). At central: logs in as a
//! viewer, a technician and a customer-scoped user;
//! checks the dashboard against the API, search and filters, the chart's
//! path against the stored rollups, an acknowledgement with a comment, a
//! status change arriving live (no reload), a viewer without action
//! buttons whose forged POSTs are refused, and a customer's user seeing
//! only its customer. On the appliance
//! ([`site_console_in_headless_chromium_with_real_agents_and_central_unreachable`]):
//! local users and the admin token, real agents, a live offline badge,
//! and the console working with central stopped. Screenshots go to the
//! scratch directory (kept with
//! `OUTPOST_TEST_KEEP=1`); with `OUTPOST_SCREENSHOTS=DIR` the README's
//! are copied there too (`docs/screenshots`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use outpost_tests::*;
use serde_json::{Value, json};

use crate::uplink::{Central, SiteClient};

/// A blocking WebSocket connection (client side, text frames).
pub(crate) struct Ws {
    s: TcpStream,
    next_id: u64,
}

impl Ws {
    pub(crate) fn connect(url: &str) -> Ws {
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

    pub(crate) fn send_text(&mut self, text: &str) {
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

    pub(crate) fn recv_text(&mut self) -> String {
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
    pub(crate) fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
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
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    pub(crate) fn try_eval(&mut self, expr: &str) -> Result<Value, Value> {
        self.try_call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        )
        .map(|r| r["result"]["value"].clone())
    }

    pub(crate) fn eval(&mut self, expr: &str) -> Value {
        self.try_eval(expr)
            .unwrap_or_else(|e| panic!("Runtime.evaluate: {e}"))
    }

    /// Waits until `expr` is true in a fully loaded page. An evaluation
    /// that races a navigation ("Inspected target navigated or closed")
    /// counts as "not yet": the click that started it is asynchronous.
    pub(crate) fn wait_until(&mut self, expr: &str) {
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

    pub(crate) fn body_text(&mut self) -> String {
        self.eval("document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub(crate) fn screenshot(&mut self, path: &Path) {
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

/// One raw HTTP/1.1 POST with any headers; the status code.
pub(crate) fn raw_post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect central");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

pub(crate) struct Browser {
    pub(crate) ws: Ws,
    pub(crate) base: String,
    pub(crate) shots: std::path::PathBuf,
}

impl Browser {
    pub(crate) fn go(&mut self, path: &str) {
        self.ws.call(
            "Page.navigate",
            json!({"url": format!("{}{path}", self.base)}),
        );
    }

    pub(crate) fn login(&mut self, user: &str) {
        self.sign_in(Some("acme"), user, "correct horse battery");
    }

    /// Fills and sends the sign-in form (the tenant field at central).
    pub(crate) fn sign_in(&mut self, tenant: Option<&str>, user: &str, password: &str) {
        self.go("/login");
        self.ws
            .wait_until("location.pathname === '/login' && document.getElementById('signin')");
        let tenant = tenant.map_or_else(String::new, |t| {
            format!("document.getElementById('tenant').value='{t}'; ")
        });
        self.ws.eval(&format!(
            "{tenant}document.getElementById('username').value='{user}'; document.getElementById('password').value='{password}'; document.getElementById('signin').click(); true"
        ));
        self.ws
            .wait_until("location.pathname === '/' && document.getElementById('tiles')");
    }

    pub(crate) fn logout(&mut self) {
        self.ws
            .eval("document.getElementById('signout').click(); true");
        self.ws.wait_until("location.pathname === '/login'");
    }

    pub(crate) fn shot(&mut self, name: &str) {
        // Let the fonts and the live dot settle.
        std::thread::sleep(Duration::from_millis(300));
        self.ws.screenshot(&self.shots.join(name));
    }

    /// The session cookie Chromium holds for central.
    pub(crate) fn cookie(&mut self) -> String {
        self.cookie_named("outpost_session")
    }

    /// The cookie `name` Chromium holds, as a `Cookie` header value.
    pub(crate) fn cookie_named(&mut self, name: &str) -> String {
        let r = self.ws.call("Network.getAllCookies", json!({}));
        let c = r["cookies"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .expect("a session cookie");
        format!("{name}={}", c["value"].as_str().unwrap())
    }

    /// The points a chart's line draws, in data units (ms, value), read
    /// back from the SVG path with the plot box and axes it declares.
    pub(crate) fn chart_points(&mut self, id: &str) -> Vec<(f64, f64)> {
        let v = self.ws.eval(&format!(
            r#"(() => {{ const svg = document.getElementById('{id}');
            const [l, t, w, h] = svg.dataset.plot.split(' ').map(Number);
            const x0 = +svg.dataset.x0, x1 = +svg.dataset.x1, y0 = +svg.dataset.y0, y1 = +svg.dataset.y1;
            const d = svg.querySelector('path.line').getAttribute('d');
            return d.split(/[ML]/).filter(s => s.trim()).map(s => {{
              const [px, py] = s.trim().split(/\s+/).map(Number);
              return [x0 + (px - l) / w * (x1 - x0), y0 + (t + h - py) / h * (y1 - y0)];
            }}); }})()"#
        ));
        v.as_array()
            .expect("chart points")
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
            .collect()
    }

    pub(crate) fn text(&mut self) -> String {
        self.ws.body_text()
    }

    /// The status of `method` `path` fetched by the page itself (its
    /// cookies, its origin) with a form `body`.
    pub(crate) fn fetch_post(&mut self, path: &str, body: &str) -> u16 {
        let r = self.ws.call(
            "Runtime.evaluate",
            json!({
                "expression": format!(
                    "fetch('{path}', {{method: 'POST', headers: {{'content-type': 'application/x-www-form-urlencoded'}}, body: '{body}'}}).then(r => r.status)"
                ),
                "awaitPromise": true,
                "returnByValue": true
            }),
        );
        r["result"]["value"].as_u64().expect("a status") as u16
    }
}

/// Starts headless Chromium with its profile under `root`; the process
/// and a DevTools connection to its page.
pub(crate) fn chromium(root: &Path) -> (Proc, Ws) {
    let port = free_port();
    let profile = root.join("chromium-profile");
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1280,860",
        "--force-prefers-reduced-motion",
    ])
    .arg(format!("--remote-debugging-port={port}"))
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg("about:blank");
    let browser = Proc::spawn("chromium", &mut cmd, root)
        .expect("start chromium (Debian package `chromium`)");
    let devtools = SocketAddr::from(([127, 0, 0, 1], port));
    let ws_url = wait_for(Duration::from_secs(30), "chromium DevTools", || {
        let list: Value = serde_json::from_str(&devtools_get(devtools, "/json/list")?).ok()?;
        list.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
            .as_str()
            .map(str::to_string)
    });
    let mut ws = Ws::connect(&ws_url);
    ws.call("Network.enable", json!({}));
    (browser, ws)
}

#[test]
fn console_in_headless_chromium_dashboard_search_chart_ack_live_and_scopes() {
    let tmp = scratch("central-browser");
    let root = tmp.path();
    let mut central = Central::start(root);
    let mut site = SiteClient::join(root, &central, "acme", "harbour-clinic");
    let now = outpost_uplink::now_ms();
    let base_bucket = now - now % 300_000 - 12 * 300_000;
    let mut first = site.batch(1, 7, 0..12);
    for r in &mut first.rollups {
        r.bucket_start_ms += base_bucket;
    }
    let stored: Vec<(u64, f64)> = first
        .rollups
        .iter()
        .map(|r| {
            let x = &r.series[0].rollup;
            (r.bucket_start_ms, x.sum / x.count as f64)
        })
        .collect();
    // Times of today, so the pages (and the README's screenshots) read
    // like a real fleet's.
    first.devices[0].enrolled_at_ms = now - 40 * 86_400_000;
    first.devices[0].status_since_ms = now - 3 * 3_600_000;
    first.devices[0].last_seen_ms = now - 20_000;
    first.devices[0].as_of_ms = now - 20_000;
    first.alerts[0].at_ms = now - 25 * 60_000;
    let mut other = first.devices[0].clone();
    other.device = outpost_proto::DeviceId(8);
    other.hostname = "backup-8".into();
    other.status = outpost_uplink::batch::DeviceStatus::Offline;
    first.devices.push(other);
    // The site reports a device enrolled under another tenant.
    first.foreign_tenants = vec![outpost_uplink::batch::ForeignTenant {
        tenant: "acme-old".into(),
        devices: 1,
    }];
    assert_eq!(
        site.send(&first),
        outpost_uplink::wire::CentralFrame::Ack { seq: 1 }
    );
    // A second customer, `vet`, with one device.
    let (token, fp) = central.site_add("acme", "vet", "vet-main");
    crate::uplink::join_with(root, &central, "vet-main", &token, &fp).expect("join vet");
    let mut vet = SiteClient::connect(root, &central, "vet-main").expect("vet uplink");
    let mut vb = vet.batch(1, 900, 0..0);
    vb.devices[0].hostname = "vet-xray".into();
    vb.alerts.clear();
    assert_eq!(
        vet.send(&vb),
        outpost_uplink::wire::CentralFrame::Ack { seq: 1 }
    );
    for (name, role, customer) in [
        ("alice", "viewer", None),
        ("tess", "technician", None),
        ("val", "viewer", Some("vet")),
    ] {
        let mut args = vec![
            "user", "add", "--tenant", "acme", "--name", name, "--role", role,
        ];
        if let Some(c) = customer {
            args.extend(["--customer", c]);
        }
        let (ok, _, err) = central.cli(&args, Some("correct horse battery\n"));
        assert!(ok, "{err}");
    }
    let api = central.api_token("acme", "admin");

    let (mut browser, ws) = chromium(root);
    let mut b = Browser {
        ws,
        base: format!("http://{}", central.http),
        shots: root.to_path_buf(),
    };

    // Sign-in page, then the dashboard of a viewer.
    b.go("/");
    b.ws.wait_until("location.pathname === '/login' && document.getElementById('signin')");
    b.shot("01-login.png");
    b.login("alice");
    let text = b.text();
    assert!(
        text.contains("Dashboard") && text.contains("harbour-clinic") && text.contains("dental"),
        "{text}"
    );
    assert!(text.contains("3 devices: 2 online, 1 offline"), "{text}");
    // Every tile is the API's number.
    let summary = central.get("/api/v1/summary", &api);
    for (tile, key) in [
        ("devices", "devices"),
        ("online", "online"),
        ("offline", "offline"),
        ("critical", "critical"),
        ("alerts_firing", "alerts_firing"),
        ("alerts_pending", "alerts_pending"),
    ] {
        let shown = b.ws.eval(&format!(
            "document.querySelector('#tiles [data-k=\"{tile}\"]').textContent"
        ));
        assert_eq!(
            shown.as_str().unwrap(),
            summary["totals"][key].to_string(),
            "tile {tile}"
        );
    }
    b.shot("02-dashboard.png");

    // The site page (from the dashboard's link) with its warning.
    b.ws.eval("document.querySelector('#fleet td.site a').click(); true");
    b.ws.wait_until(
        "location.pathname.startsWith('/sites/') && document.getElementById('devices')",
    );
    let text = b.text();
    assert!(
        text.contains("Site harbour-clinic") && text.contains("host-7") && text.contains("online"),
        "{text}"
    );
    assert!(
        text.contains("Tenant mismatch: 1 device of this site was enrolled under tenant acme-old (1), not acme."),
        "{text}"
    );

    // Search and filters on the device list.
    b.go("/devices");
    b.ws.wait_until("document.getElementById('f-q')");
    b.ws.eval(
        "document.getElementById('f-q').value='BACKUP'; document.getElementById('f-apply').click(); true",
    );
    b.ws.wait_until("location.search.includes('q=BACKUP') && document.getElementById('devices')");
    let rows = b.ws.eval(
        "[...document.querySelectorAll('#devices a.host')].map(a => a.textContent).join(',')",
    );
    assert_eq!(rows, json!("backup-8"), "search is case-insensitive");
    b.go("/devices");
    b.ws.wait_until("document.getElementById('f-status')");
    // Choosing a status applies it at once (console.js submits the form).
    b.ws.eval(
        "const s = document.getElementById('f-status'); s.value='online'; s.dispatchEvent(new Event('change', {bubbles: true})); true",
    );
    b.ws.wait_until(
        "location.search.includes('status=online') && document.getElementById('devices')",
    );
    let rows = b
        .ws
        .eval("[...document.querySelectorAll('#devices a.host')].map(a => a.textContent).sort().join(',')");
    assert_eq!(rows, json!("host-7,vet-xray"));
    b.go("/devices?customer=vet");
    b.ws.wait_until("document.getElementById('devices')");
    let rows = b.ws.eval(
        "[...document.querySelectorAll('#devices a.host')].map(a => a.textContent).join(',')",
    );
    assert_eq!(rows, json!("vet-xray"));
    b.go("/devices?sort=hostname&dir=desc");
    b.ws.wait_until("document.getElementById('devices')");
    let rows = b.ws.eval(
        "[...document.querySelectorAll('#devices a.host')].map(a => a.textContent).join(',')",
    );
    assert_eq!(rows, json!("vet-xray,host-7,backup-8"));
    b.shot("03-devices.png");

    // The device page: the chart's path is the stored rollups.
    b.go("/devices?q=host-7");
    b.ws.wait_until("document.querySelector('#devices a.host')");
    b.ws.eval("document.querySelector('#devices a.host').click(); true");
    b.ws.wait_until("document.getElementById('chart-cpu')");
    let text = b.text();
    assert!(
        text.contains("Device host-7")
            && text.contains("Rollups stored")
            && text.contains("cpu_high"),
        "{text}"
    );
    let rollups = b.ws.eval(
        "[...document.querySelectorAll('#inventory dt')].find(d => d.textContent === 'Rollups stored').nextElementSibling.textContent",
    );
    assert_eq!(rollups, json!("12"));
    let points = b.chart_points("chart-cpu");
    assert_eq!(points.len(), 12, "one point per stored 5-minute rollup");
    let ms_per_px = 24.0 * 3_600_000.0 / 644.0;
    for ((pt, pv), (t, v)) in points.iter().zip(&stored) {
        let (pt, pv) = (*pt, *pv);
        assert!((pt - *t as f64).abs() <= ms_per_px, "time {pt} vs {t}");
        assert!((pv - v).abs() < 0.5, "value {pv} vs {v}");
    }
    let summary_text = b
        .ws
        .eval("document.querySelector('#chart-cpu').closest('figure').querySelector('.chart-summary').textContent");
    assert_eq!(summary_text, json!("min 19 % · max 61 % · last 30 %"));
    // The range selector swaps the charts in place.
    b.ws.eval(
        "window.__kept = 1; document.querySelector('#range a[data-range=\"1h\"]').click(); true",
    );
    b.ws.wait_until("location.search === '?range=1h' && document.querySelector('#range b.current').textContent === '1h' && window.__kept === 1");
    let points = b
        .ws
        .eval("document.querySelector('#chart-cpu path.line').getAttribute('d').split(/[ML]/).filter(s => s.trim()).length");
    assert_eq!(points, json!(12), "the last hour holds every stored point");
    b.shot("04-device.png");
    b.ws.eval(
        "window.__kept = 1; document.querySelector('#range a[data-range=\"7d\"]').click(); true",
    );
    b.ws.wait_until("location.search === '?range=7d' && document.querySelector('#range b.current').textContent === '7d' && window.__kept === 1");

    // A viewer: no action buttons, and its forged POSTs are refused.
    b.go("/alerts");
    b.ws.wait_until("document.getElementById('alerts')");
    assert_eq!(
        b.ws.eval("document.querySelectorAll('.ack-button, form.ack').length"),
        json!(0)
    );
    let alert_path =
        b.ws.eval("document.querySelector('#alerts a[href*=\"/alerts/\"]').getAttribute('href')")
            .as_str()
            .unwrap()
            .to_string();
    let viewer_token =
        b.ws.eval("document.querySelector('input[name=csrf]').value")
            .as_str()
            .unwrap()
            .to_string();
    let post = |body: &str| {
        format!(
            "fetch('{alert_path}/ack', {{method: 'POST', headers: {{'content-type': 'application/x-www-form-urlencoded'}}, body: '{body}'}}).then(r => r.status)"
        )
    };
    let forged = b.ws.call(
        "Runtime.evaluate",
        json!({
            "expression": format!(
                "Promise.all([{}, {}])",
                post("comment=forged"),
                post(&format!("csrf={viewer_token}&comment=forged"))
            ),
            "awaitPromise": true,
            "returnByValue": true
        }),
    )["result"]["value"]
        .clone();
    assert_eq!(forged, json!([403, 403]), "no token; a viewer's own token");
    b.logout();

    // A technician acknowledges with a comment.
    b.login("tess");
    b.go(&alert_path);
    b.ws.wait_until("document.getElementById('ack-comment')");
    let tech_cookie = b.cookie();
    let tech_token =
        b.ws.eval("document.querySelector('form.ack input[name=csrf]').value")
            .as_str()
            .unwrap()
            .to_string();
    // The technician's own cookie and token, posted from another origin: refused.
    for h in [
        ("Origin", "http://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let st = raw_post(
            central.http,
            &format!("{alert_path}/ack"),
            &[("Cookie", &tech_cookie), h],
            &format!("csrf={tech_token}&comment=forged"),
        );
        assert_eq!(st, 403, "{h:?}");
    }
    b.ws.eval("document.getElementById('ack-comment').value = 'Disk swapped, <b>watching</b>'; document.querySelector('#ack .ack-button').click(); true");
    b.ws.wait_until("document.getElementById('history') && document.body.innerText.includes('acknowledged by tess')");
    let text = b.text();
    assert!(
        text.contains("Disk swapped, <b>watching</b>"),
        "escaped, shown as typed: {text}"
    );
    assert!(!text.contains("forged"), "{text}");
    let alerts = central.get("/api/v1/alerts", &api);
    assert!(
        alerts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["acked_by"] == "tess"),
        "{alerts}"
    );
    b.shot("05-alert.png");

    // A status change arrives live: the row's badge changes, no reload.
    b.go("/devices?q=host-7");
    b.ws.wait_until("document.querySelector('#devices [data-field=st]') && document.getElementById('live-status').className === 'live-on'");
    b.ws.eval("window.__no_reload = 1; true");
    let mut second = site.batch(2, 7, 0..0);
    second.devices[0].status = outpost_uplink::batch::DeviceStatus::Offline;
    second.devices[0].status_since_ms = outpost_uplink::now_ms();
    second.devices[0].as_of_ms = outpost_uplink::now_ms();
    second.alerts.clear();
    assert_eq!(
        site.send(&second),
        outpost_uplink::wire::CentralFrame::Ack { seq: 2 }
    );
    b.ws.wait_until("document.querySelector('#devices [data-field=st]').textContent === 'offline' && window.__no_reload === 1");
    assert!(central.metric("outpost_central_console_live_events_sent_total") >= 1.0);
    b.logout();

    // A customer's user sees only that customer.
    b.login("val");
    let text = b.text();
    assert!(text.contains("vet-main"), "{text}");
    for other in ["harbour-clinic", "dental", "host-7", "backup-8"] {
        assert!(!text.contains(other), "val sees {other}: {text}");
    }
    b.go("/devices");
    b.ws.wait_until("document.getElementById('devices')");
    let text = b.text();
    assert!(
        text.contains("vet-xray") && !text.contains("host-7"),
        "{text}"
    );
    b.go(&alert_path);
    b.ws.wait_until("document.getElementById('message')");
    assert!(
        b.text().contains("no site"),
        "another customer's alert is not found"
    );

    // Central stops promptly with a console page (and its event stream)
    // open: the hub ends the streams (graceful shutdown waited for them).
    b.go("/");
    b.ws.wait_until("document.getElementById('live-status').className === 'live-on'");
    let mut proc = central.proc.take().expect("central running");
    let stopping = Instant::now();
    let status = proc.terminate().expect("an exit status");
    assert!(
        status.success() && stopping.elapsed() < Duration::from_secs(10),
        "central stopped with {status:?} after {:?}",
        stopping.elapsed()
    );

    for f in [
        "01-login.png",
        "02-dashboard.png",
        "03-devices.png",
        "04-device.png",
        "05-alert.png",
    ] {
        assert!(std::fs::metadata(root.join(f)).unwrap().len() > 1000, "{f}");
    }
    if let Some(dir) = std::env::var_os("OUTPOST_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["02-dashboard.png", "04-device.png", "05-alert.png"] {
            std::fs::copy(root.join(f), dir.join(f)).unwrap();
        }
    }
    browser.kill9();
}

/// The appliance's console for its own site, with real agents: local
/// users and the admin token sign in; the dashboard is the API's numbers;
/// search (by tag) and filters; a live offline badge when an agent dies;
/// the CPU chart draws the stored raw samples; a technician acknowledges
/// with a comment; a viewer gets no button and its forged POSTs are
/// refused; with central stopped the console says so and still works
/// (sign-in, pages, acknowledgements).
#[test]
fn site_console_in_headless_chromium_with_real_agents_and_central_unreachable() {
    let tmp = scratch("site-browser");
    let root = tmp.path();
    let mut central = Central::start(root);
    let mut app = Appliance::start(root);
    let (token, fp) = central.site_add("acme", "dental", "harbour-clinic");
    let o = app.cli(&[
        "uplink",
        "join",
        "--central",
        &central.quic.to_string(),
        "--token",
        &token,
        "--ca-fingerprint",
        &fp,
        "--interval",
        "1s",
    ]);
    assert!(o.status.success(), "uplink join: {}", stderr(&o));
    let site_id = stdout(&o).trim().to_string();
    for (name, role) in [("tess", "technician"), ("vera", "viewer")] {
        let (st, out) = app.api_post(
            "/api/v1/users",
            &json!({"name": name, "role": role, "password": "correct horse battery"}),
        );
        assert_eq!(st, 201, "{out}");
    }
    let (st, out) = app.api_post(
        "/api/v1/alert-rules",
        &json!({
            "id": "cpu-seen",
            "name": "cpu reported",
            "condition": {"type": "threshold", "metric": "cpu", "comparison": ">=", "threshold": 0, "for": "0s"},
            "severity": "critical",
        }),
    );
    assert_eq!(st, 200, "{out}");
    let mut web = Agent::enroll(root, "web", &app);
    let mut backup = Agent::enroll(root, "backup", &app);
    for (a, tag) in [(&web, "web"), (&backup, "backup")] {
        let (st, out) = app.api_send(
            "PUT",
            &format!("/api/v1/devices/{}/tags", a.device_id),
            Some(&json!([tag])),
        );
        assert_eq!(st, 200, "{out}");
    }
    web.start();
    backup.start();
    wait_for(
        Duration::from_secs(30),
        "both agents online, both alerts firing",
        || {
            let devices: Vec<Value> = app.api("/api/v1/devices").ok()?;
            let firing: Vec<Value> = app.api("/api/v1/alerts?state=firing").ok()?;
            (devices.iter().all(|d| d["status"] == "online") && firing.len() == 2).then_some(())
        },
    );

    let (mut browser, ws) = chromium(root);
    let mut b = Browser {
        ws,
        base: format!("http://{}", app.admin),
        shots: root.to_path_buf(),
    };
    b.go("/");
    b.ws.wait_until("location.pathname === '/login' && document.getElementById('signin')");
    assert_eq!(
        b.ws.eval("!!document.getElementById('tenant')"),
        json!(false),
        "one site: no tenant to ask for"
    );
    b.shot("site-01-login.png");
    // A wrong password: refused on the form.
    b.go("/login");
    b.ws.wait_until("document.getElementById('signin')");
    b.ws.eval("document.getElementById('username').value='tess'; document.getElementById('password').value='wrong password'; document.getElementById('signin').click(); true");
    b.ws.wait_until("document.getElementById('refused')");
    b.sign_in(None, "tess", "correct horse battery");
    let text = b.text();
    assert!(
        text.contains("site harbour-clinic")
            && text.contains("tess")
            && text.contains("technician"),
        "{text}"
    );
    // Every tile is the API's number. The agents report the host's real
    // CPU: on a busy machine the built-in "CPU above 95 % for 15 min" rule
    // opens pending alerts at any moment, so tiles and API are compared as
    // of the same moment (the page reloaded until a reading agrees).
    let mut reload = false;
    let firing: Vec<Value> = wait_for(
        Duration::from_secs(10),
        "the dashboard's tiles to show the API's numbers (mismatches on stderr)",
        || {
            if std::mem::replace(&mut reload, true) {
                b.go("/");
                b.ws.wait_until("location.pathname === '/' && document.getElementById('tiles')");
            }
            let devices: Vec<Value> = app.api("/api/v1/devices").unwrap();
            let firing: Vec<Value> = app.api("/api/v1/alerts?state=firing").unwrap();
            let pending: Vec<Value> = app.api("/api/v1/alerts?state=pending").unwrap();
            let count = |s: &str| devices.iter().filter(|d| d["status"] == s).count();
            let mut mismatch = String::new();
            for (tile, want) in [
                ("devices", devices.len()),
                ("online", count("online")),
                ("offline", count("offline")),
                ("critical", 2),
                ("alerts_firing", firing.len()),
                ("alerts_pending", pending.len()),
            ] {
                let shown = b.ws.eval(&format!(
                    "document.querySelector('#tiles [data-k=\"{tile}\"]').textContent"
                ));
                if shown != json!(want.to_string()) {
                    mismatch.push_str(&format!("tile {tile}: shown {shown}, API {want}; "));
                }
            }
            if mismatch.is_empty() {
                Some(firing)
            } else {
                eprintln!("{mismatch}");
                None
            }
        },
    );
    b.shot("site-02-dashboard.png");

    // Search (a tag) and filters on the site's devices.
    b.go("/devices");
    b.ws.wait_until("document.getElementById('f-q')");
    b.ws.eval("document.getElementById('f-q').value='BACKUP'; document.getElementById('f-apply').click(); true");
    b.ws.wait_until("location.search.includes('q=BACKUP') && document.getElementById('devices')");
    let keys = |b: &mut Browser| {
        b.ws.eval("[...document.querySelectorAll('#devices tr[data-key]')].map(r => r.dataset.key.split('/')[1]).sort().join(',')")
    };
    // The list reads the console's in-memory index, which merges tags set
    // through the API when a page finds it older than 2 s: reload until it
    // shows them (bounded), rather than racing that merge.
    let shows = |b: &mut Browser, url: &str, want: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = keys(b);
            if got == json!(want) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{url}: rows {got}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(500));
            b.go(url);
            b.ws.wait_until("document.getElementById('devices')");
        }
    };
    shows(&mut b, "/devices?q=BACKUP", &backup.device_id);
    b.go("/devices?tag=web");
    b.ws.wait_until("document.getElementById('devices')");
    shows(&mut b, "/devices?tag=web", &web.device_id);

    // A live status change: the agent dies, its badge turns offline, no reload.
    b.go("/devices");
    b.ws.wait_until("document.getElementById('devices') && document.getElementById('live-status').className === 'live-on'");
    b.ws.eval("window.__no_reload = 1; true");
    backup.kill9();
    let badge = format!(
        "document.querySelector('#devices tr[data-key$=\"/{}\"] [data-field=st]').textContent",
        backup.device_id
    );
    b.ws.wait_until(&format!(
        "{badge} === 'offline' && window.__no_reload === 1"
    ));
    assert!(app.metric("outpost_console_live_events_sent_total") >= 1.0);
    // Choosing a status applies it at once.
    b.ws.eval("const s = document.getElementById('f-status'); s.value='online'; s.dispatchEvent(new Event('change', {bubbles: true})); true");
    b.ws.wait_until(
        "location.search.includes('status=online') && document.getElementById('devices')",
    );
    assert_eq!(keys(&mut b), json!(web.device_id));

    // The chart draws the stored samples (the agent stopped: nothing new).
    web.stop();
    std::thread::sleep(Duration::from_millis(500));
    let stored: Value = app
        .api(&format!(
            "/api/v1/devices/{}/metrics?name=cpu",
            web.device_id
        ))
        .unwrap();
    let stored: Vec<(f64, f64)> = stored["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["ts_ms"].as_f64().unwrap(), p["avg"].as_f64().unwrap()))
        .collect();
    assert!(stored.len() >= 3, "{stored:?}");
    b.go(&format!(
        "/sites/{site_id}/devices/{}?range=1h",
        web.device_id
    ));
    b.ws.wait_until("document.getElementById('chart-cpu')");
    let text = b.text();
    assert!(
        text.contains("CPU (raw samples)") && text.contains("cpu reported"),
        "{text}"
    );
    let points = b.chart_points("chart-cpu");
    assert_eq!(points.len(), stored.len(), "one point per stored sample");
    let ms_per_px = 3_600_000.0 / 600.0;
    for ((pt, pv), (t, v)) in points.iter().zip(&stored) {
        assert!((pt - t).abs() <= ms_per_px, "time {pt} vs {t}");
        assert!((pv - v).abs() < 1.0, "value {pv} vs {v}");
    }
    b.shot("site-03-device.png");

    // A technician acknowledges with a comment; the same cookie and token
    // from another origin are refused.
    b.go("/alerts");
    b.ws.wait_until("document.querySelector('#alerts a[href*=\"/alerts/\"]')");
    let alert_path =
        b.ws.eval("document.querySelector('#alerts a[href*=\"/alerts/\"]').getAttribute('href')")
            .as_str()
            .unwrap()
            .to_string();
    let alert_id = alert_path.rsplit('/').next().unwrap().to_string();
    b.go(&alert_path);
    b.ws.wait_until("document.getElementById('ack-comment')");
    let cookie = b.cookie_named("outpost_site_session");
    let tech_token =
        b.ws.eval("document.querySelector('form.ack input[name=csrf]').value")
            .as_str()
            .unwrap()
            .to_string();
    for h in [
        ("Origin", "http://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let st = raw_post(
            app.admin,
            &format!("{alert_path}/ack"),
            &[("Cookie", &cookie), h],
            &format!("csrf={tech_token}&comment=forged"),
        );
        assert_eq!(st, 403, "{h:?}");
    }
    b.ws.eval("document.getElementById('ack-comment').value = 'Fan replaced, <i>watching</i>'; document.querySelector('#ack .ack-button').click(); true");
    b.ws.wait_until("document.getElementById('history') && document.body.innerText.includes('acknowledged by tess')");
    assert!(
        b.text().contains("Fan replaced, <i>watching</i>"),
        "escaped, shown as typed"
    );
    let a: Value = app.api(&format!("/api/v1/alerts/{alert_id}")).unwrap();
    assert_eq!(a["alert"]["acknowledged_by"], "tess");
    assert_eq!(a["alert"]["ack_comment"], "Fan replaced, <i>watching</i>");
    b.logout();

    // A viewer: no action button; its POSTs are refused, token or not.
    b.sign_in(None, "vera", "correct horse battery");
    b.go("/alerts");
    b.ws.wait_until("document.getElementById('alerts')");
    assert_eq!(
        b.ws.eval("document.querySelectorAll('.ack-button, form.ack').length"),
        json!(0)
    );
    let vera_token =
        b.ws.eval("document.querySelector('input[name=csrf]').value")
            .as_str()
            .unwrap()
            .to_string();
    let other = firing
        .iter()
        .map(|a| a["id"].to_string())
        .find(|id| *id != alert_id)
        .expect("the other alert");
    let path = format!("/sites/{site_id}/alerts/{other}/ack");
    assert_eq!(b.fetch_post(&path, "comment=forged"), 403, "no token");
    assert_eq!(
        b.fetch_post(&path, &format!("csrf={vera_token}&comment=forged")),
        403,
        "a viewer's own token"
    );
    b.logout();

    // Central goes away: the site console says so, and everything works.
    central.stop();
    b.sign_in(None, "admin-token", &app.admin_token());
    wait_for(Duration::from_secs(30), "the uplink-down notice", || {
        b.go(&format!("/sites/{site_id}"));
        b.ws.wait_until("document.getElementById('site-info')");
        (b.ws.eval("!!document.getElementById('uplink-down')") == json!(true)).then_some(())
    });
    let text = b.text();
    assert!(text.contains("Central is out of reach"), "{text}");
    b.shot("site-04-offline.png");
    b.go("/alerts");
    // The other agent's alert (held firing while its device is offline).
    let form = format!("document.querySelector('#alerts tr[data-alert$=\"/{other}\"] form.ack')");
    b.ws.wait_until(&form);
    b.ws.eval(&format!("const f = {form}; f.querySelector('input[name=comment]').value = 'on site, WAN down'; f.querySelector('.ack-button').click(); true"));
    b.ws.wait_until("document.getElementById('history') && document.body.innerText.includes('acknowledged by admin-token')");
    let open: Vec<Value> = app.api("/api/v1/alerts?state=open").unwrap();
    assert!(
        open.iter()
            .any(|a| a["acknowledged_by"] == "admin-token"
                && a["ack_comment"] == "on site, WAN down"),
        "{open:?}"
    );
    b.go("/");
    b.ws.wait_until("document.getElementById('tiles') && document.getElementById('live-status').className === 'live-on'");

    // The appliance stops promptly with a page (and its stream) open.
    let mut proc = app.proc.take().expect("appliance running");
    let stopping = Instant::now();
    let status = proc.terminate().expect("an exit status");
    assert!(
        status.success() && stopping.elapsed() < Duration::from_secs(15),
        "the appliance stopped with {status:?} after {:?}",
        stopping.elapsed()
    );
    for f in [
        "site-01-login.png",
        "site-02-dashboard.png",
        "site-03-device.png",
        "site-04-offline.png",
    ] {
        assert!(std::fs::metadata(root.join(f)).unwrap().len() > 1000, "{f}");
    }
    if let Some(dir) = std::env::var_os("OUTPOST_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            root.join("site-02-dashboard.png"),
            dir.join("06-site-dashboard.png"),
        )
        .unwrap();
    }
    browser.kill9();
}

/// The site console's Scripts pages with a real agent and no central: a
/// technician opens Scripts, reads the script's newest version (older ones
/// linked), runs it on the agent's device from the device page and sees
/// its output on the command page (live, no reload); the device list's
/// *Run script…* on the selected device opens the bulk run's page, which
/// shows the device's command completed. A viewer reads the scripts, has
/// no run form, and its POST (with its own token) is refused.
#[test]
fn site_console_runs_a_library_script_on_a_real_agent_in_headless_chromium() {
    let tmp = scratch("site-scripts-browser");
    let root = tmp.path();
    let app = Appliance::start(root);
    for (name, role) in [("tess", "technician"), ("vera", "viewer")] {
        let (st, out) = app.api_post(
            "/api/v1/users",
            &json!({"name": name, "role": role, "password": "correct horse battery"}),
        );
        assert_eq!(st, 201, "{out}");
    }
    let v1 = root.join("greet-v1.sh");
    std::fs::write(&v1, "echo \"greet v1 $1\"\n").unwrap();
    let v2 = root.join("greet-v2.sh");
    std::fs::write(&v2, "echo \"greet v2 <$1> on $(uname -s)\"\n").unwrap();
    app.cli_ok(&["scripts", "add", "greet", "--file", v1.to_str().unwrap()]);
    app.cli_ok(&["scripts", "edit", "greet", "--file", v2.to_str().unwrap()]);
    let web = crate::remote::agent_with(root, "web", &app, "", true);
    let dev = web.device_id.clone();
    wait_for(Duration::from_secs(30), "the agent online", || {
        let devices: Vec<Value> = app.api("/api/v1/devices").ok()?;
        devices
            .iter()
            .any(|d| d["status"] == "online")
            .then_some(())
    });

    let (mut browser, ws) = chromium(root);
    let mut b = Browser {
        ws,
        base: format!("http://{}", app.admin),
        shots: root.to_path_buf(),
    };
    b.sign_in(None, "tess", "correct horse battery");
    // Scripts is in the navigation, enabled.
    b.ws.eval("document.querySelector('nav.main a[href=\"/scripts\"]').click(); true");
    b.ws.wait_until("document.querySelector('#scripts tr[data-script=\"greet\"]')");
    assert!(b.text().contains("greet"), "{}", b.text());
    b.ws.eval("document.querySelector('#scripts a[href=\"/scripts/greet\"]').click(); true");
    b.ws.wait_until("document.getElementById('script-body')");
    assert_eq!(
        b.ws.eval("document.getElementById('script-version').textContent"),
        json!("2")
    );
    assert!(
        b.ws.eval("document.getElementById('script-body').textContent")
            .as_str()
            .unwrap()
            .contains("greet v2 <$1>"),
        "the body, escaped and shown as stored"
    );
    assert_eq!(
        b.ws.eval("!!document.querySelector('a[href=\"/scripts/greet?version=1\"]')"),
        json!(true)
    );
    b.shot("site-scripts-01-script.png");

    // Run it on the agent's device from the device page.
    b.go(&format!("/sites/local/devices/{dev}"));
    b.ws.wait_until("document.getElementById('run-script-name')");
    b.ws.eval("document.getElementById('run-script-name').value = 'greet'; document.getElementById('run-script-args').value = 'from-chromium'; document.getElementById('run-script-submit').click(); true");
    b.ws.wait_until(
        "location.pathname.startsWith('/commands/') && document.getElementById('command')",
    );
    b.ws.eval("window.__no_reload = 1; true");
    b.ws.wait_until("document.getElementById('command').dataset.state === 'completed' && document.getElementById('output').textContent.includes('greet v2 <from-chromium> on Linux') && window.__no_reload === 1");
    let id =
        b.ws.eval("document.getElementById('command').dataset.command")
            .as_str()
            .unwrap()
            .to_string();
    let c: Value = app.api(&format!("/api/v1/commands/{id}")).unwrap();
    assert_eq!(c["requested_by"], "tess", "{c}");
    assert_eq!(c["exit_code"], 0, "{c}");
    b.shot("site-scripts-02-output.png");

    // The device list's bulk action opens the run's page.
    b.go("/devices");
    b.ws.wait_until("document.getElementById('devices') && document.getElementById('bulk-form')");
    b.ws.eval(&format!(
        "const c = document.querySelector('#devices input[name=device][value$=\"/{dev}\"]'); c.checked = true; c.dispatchEvent(new Event('change', {{bubbles: true}})); true"
    ));
    b.ws.wait_until("!document.getElementById('bulk-bar').hidden");
    b.ws.eval("document.getElementById('bulk-script').value = 'greet'; document.getElementById('bulk-args').value = 'bulk'; document.getElementById('bulk-run').click(); true");
    b.ws.wait_until("location.pathname.startsWith('/commands/bulk/') && document.getElementById('bulk-members')");
    b.ws.wait_until("document.querySelector('#bulk-members tr[data-state=\"completed\"]') && document.getElementById('bulk').dataset.finished === 'true'");
    assert!(b.text().contains("1 done"), "{}", b.text());
    let runs: Vec<Value> = app.api("/api/v1/commands/bulk").unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["created_by"], "tess", "{runs:?}");
    b.shot("site-scripts-03-bulk.png");
    b.logout();

    // A viewer reads, cannot run.
    b.sign_in(None, "vera", "correct horse battery");
    b.go("/scripts/greet");
    b.ws.wait_until("document.getElementById('script-body')");
    b.go(&format!("/sites/local/devices/{dev}"));
    b.ws.wait_until("document.getElementById('device-info')");
    assert_eq!(
        b.ws.eval(
            "!!document.getElementById('run-script') || !!document.getElementById('bulk-form')"
        ),
        json!(false)
    );
    let token =
        b.ws.eval("document.querySelector('input[name=csrf]').value")
            .as_str()
            .unwrap()
            .to_string();
    assert_eq!(
        b.fetch_post(
            &format!("/sites/local/devices/{dev}/scripts"),
            &format!("csrf={token}&script=greet&args=forged")
        ),
        403
    );
    let all: Vec<Value> = app.api("/api/v1/commands").unwrap();
    assert_eq!(all.len(), 2, "the viewer's POST made no command: {all:?}");
    for f in [
        "site-scripts-01-script.png",
        "site-scripts-02-output.png",
        "site-scripts-03-bulk.png",
    ] {
        assert!(std::fs::metadata(root.join(f)).unwrap().len() > 1000, "{f}");
    }
    if let Some(dir) = std::env::var_os("OUTPOST_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            root.join("site-scripts-02-output.png"),
            dir.join("11-site-script-output.png"),
        )
        .unwrap();
    }
    drop(web);
    browser.kill9();
}
