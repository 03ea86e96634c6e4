//! LAN patch cache: a real signed apt repository made by the test (real
//! `.deb` files from `dpkg-deb`, `InRelease` signed with a throwaway `gpg`
//! key), served by a local upstream HTTP server, fetched through the
//! appliance by a real, isolated `apt-get` and by raw HTTP clients.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_tests::{Appliance, scratch, wait_for};
use sha2::Digest;

// ---------------------------------------------------------------- helpers

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift), so packages differ.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn rfc2822(epoch_s: u64) -> String {
    run_ok(Command::new("date").args([
        "-u",
        "-d",
        &format!("@{epoch_s}"),
        "+%a, %d %b %Y %H:%M:%S UTC",
    ]))
    .trim()
    .to_string()
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A throwaway OpenPGP signing key in its own GnuPG home.
struct GpgKey {
    home: PathBuf,
    /// Binary public keyring (what apt's signed-by and the cache use).
    keyring: PathBuf,
}

impl GpgKey {
    fn new(dir: &Path, name: &str) -> GpgKey {
        let home = dir.join(format!("gnupg-{name}"));
        std::fs::create_dir_all(&home).unwrap();
        let mut perms = std::fs::metadata(&home).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
        std::fs::set_permissions(&home, perms).unwrap();
        run_ok(Command::new("gpg").arg("--homedir").arg(&home).args([
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            &format!("Outpost Test {name} <{name}@outpost.invalid>"),
            "ed25519",
            "sign",
            "0",
        ]));
        let keyring = dir.join(format!("{name}.gpg"));
        let key = Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--export"])
            .output()
            .unwrap();
        assert!(key.status.success() && !key.stdout.is_empty());
        std::fs::write(&keyring, key.stdout).unwrap();
        GpgKey { home, keyring }
    }

    fn clearsign(&self, text: &[u8]) -> Vec<u8> {
        let input = self.home.join("to-sign");
        let out = self.home.join("signed");
        std::fs::write(&input, text).unwrap();
        run_ok(
            Command::new("gpg")
                .arg("--homedir")
                .arg(&self.home)
                .args([
                    "--batch",
                    "--yes",
                    "--digest-algo",
                    "SHA256",
                    "--clearsign",
                    "-o",
                ])
                .arg(&out)
                .arg(&input),
        );
        std::fs::read(out).unwrap()
    }
}

impl Drop for GpgKey {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// One package of the test repository.
#[derive(Clone)]
struct Pkg {
    name: String,
    /// Path under the repository root (`debian/pool/main/…`).
    path: String,
    bytes: Vec<u8>,
}

/// A signed apt repository on disk: `ROOT/debian/{dists,pool}`.
struct Repo {
    root: PathBuf,
    key: GpgKey,
    arch: String,
    pkgs: Vec<Pkg>,
    /// `Date:` of the last generated Release (epoch seconds).
    date_s: u64,
    /// `Valid-Until:` of generated Releases is `Date:` plus this.
    valid_for_s: u64,
    /// The suite's directory under `dists/` (`stable`, `buster/updates`).
    suite_path: String,
    /// `Suite:` and `Codename:` written in its Release.
    suite_name: String,
}

impl Repo {
    /// Builds real `.deb` files (`dpkg-deb --build`) of the given payload sizes.
    fn build(dir: &Path, packages: &[(&str, usize)]) -> Repo {
        let root = dir.join("upstream");
        let pool = root.join("debian/pool/main");
        std::fs::create_dir_all(&pool).unwrap();
        let arch = run_ok(Command::new("dpkg").arg("--print-architecture"))
            .trim()
            .to_string();
        let key = GpgKey::new(dir, "repo");
        let mut pkgs = Vec::new();
        for (i, (name, size)) in packages.iter().enumerate() {
            let src = dir.join(format!("pkgsrc-{name}"));
            std::fs::create_dir_all(src.join("DEBIAN")).unwrap();
            std::fs::create_dir_all(src.join(format!("usr/share/{name}"))).unwrap();
            std::fs::write(
                src.join("DEBIAN/control"),
                format!(
                    "Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: Outpost Tests <t@outpost.invalid>\n\
                     Description: Outpost cache test package\n"
                ),
            )
            .unwrap();
            std::fs::write(
                src.join(format!("usr/share/{name}/payload")),
                pseudo_random(*size, i as u64 + 1),
            )
            .unwrap();
            let deb = pool.join(format!("{name}_1.0_all.deb"));
            run_ok(
                Command::new("dpkg-deb")
                    .args(["--root-owner-group", "-Znone", "--build"])
                    .arg(&src)
                    .arg(&deb),
            );
            let _ = std::fs::remove_dir_all(&src);
            pkgs.push(Pkg {
                name: name.to_string(),
                path: format!("debian/pool/main/{name}_1.0_all.deb"),
                bytes: std::fs::read(&deb).unwrap(),
            });
        }
        let mut repo = Repo {
            root,
            key,
            arch,
            pkgs,
            date_s: 0,
            valid_for_s: 7 * 86_400,
            suite_path: "stable".into(),
            suite_name: "stable".into(),
        };
        repo.write_indexes(now_s() - 60);
        repo
    }

    fn suite_dir(&self) -> PathBuf {
        self.root.join("debian/dists").join(&self.suite_path)
    }

    fn packages_rel(&self) -> String {
        format!("main/binary-{}/Packages", self.arch)
    }

    /// Packages, Packages.gz, Release and InRelease dated `date_s`.
    fn write_indexes(&mut self, date_s: u64) {
        let mut packages = String::new();
        for p in &self.pkgs {
            packages.push_str(&format!(
                "Package: {}\nVersion: 1.0\nArchitecture: all\nMaintainer: Outpost Tests <t@outpost.invalid>\n\
                 Installed-Size: {}\nFilename: {}\nSize: {}\nSHA256: {}\nDescription: Outpost cache test package\n\n",
                p.name,
                p.bytes.len() / 1024 + 1,
                p.path.trim_start_matches("debian/"),
                p.bytes.len(),
                sha256_hex(&p.bytes)
            ));
        }
        let bin = self.suite_dir().join(format!("main/binary-{}", self.arch));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("Packages"), &packages).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(packages.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        std::fs::write(bin.join("Packages.gz"), &gz).unwrap();
        let rel = self.packages_rel();
        let suite = &self.suite_name;
        let release = format!(
            "Origin: Outpost Test\nLabel: Outpost Test\nSuite: {suite}\nCodename: {suite}\nDate: {}\n\
             Valid-Until: {}\nArchitectures: {} all\nComponents: main\nDescription: cache test\nSHA256:\n \
             {} {} {rel}\n {} {} {rel}.gz\n",
            rfc2822(date_s),
            rfc2822(date_s + self.valid_for_s),
            self.arch,
            sha256_hex(packages.as_bytes()),
            packages.len(),
            sha256_hex(&gz),
            gz.len()
        );
        std::fs::write(self.suite_dir().join("Release"), &release).unwrap();
        std::fs::write(
            self.suite_dir().join("InRelease"),
            self.key.clearsign(release.as_bytes()),
        )
        .unwrap();
        self.date_s = date_s;
    }

    fn pkg(&self, name: &str) -> &Pkg {
        self.pkgs.iter().find(|p| p.name == name).unwrap()
    }
}

/// What the local upstream server saw.
#[derive(Default)]
struct UpstreamLog {
    /// Requests per path.
    hits: HashMap<String, u64>,
    /// Body bytes sent per path.
    bytes: HashMap<String, u64>,
}

/// A small HTTP/1.1 file server on 127.0.0.1 (one thread per connection),
/// counting requests and bytes per path; optionally throttled.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    log: Arc<Mutex<UpstreamLog>>,
    /// (chunk bytes, pause between chunks) for bodies.
    throttle: Arc<Mutex<Option<(usize, Duration)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(root: &Path) -> Upstream {
        Self::start_on(root, "127.0.0.1:0".parse().unwrap())
    }

    fn start_on(root: &Path, addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(UpstreamLog::default()));
        let throttle = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, t2, s2, root) = (
            log.clone(),
            throttle.clone(),
            stop.clone(),
            root.to_path_buf(),
        );
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (l3, t3, r3) = (l2.clone(), t2.clone(), root.clone());
                std::thread::spawn(move || serve_upstream(conn, &r3, &l3, &t3));
            }
        });
        Upstream {
            addr,
            log,
            throttle,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops accepting; the port refuses connections afterwards.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub(crate) fn hits(&self, path: &str) -> u64 {
        self.log
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn bytes(&self, path: &str) -> u64 {
        self.log
            .lock()
            .unwrap()
            .bytes
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Body bytes of every `.deb` sent so far.
    fn deb_bytes(&self) -> u64 {
        let l = self.log.lock().unwrap();
        l.bytes
            .iter()
            .filter(|(p, _)| p.ends_with(".deb"))
            .map(|(_, b)| b)
            .sum()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_upstream(
    mut conn: TcpStream,
    root: &Path,
    log: &Mutex<UpstreamLog>,
    throttle: &Mutex<Option<(usize, Duration)>>,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut parts = head.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("/").to_string(),
    );
    log.lock()
        .unwrap()
        .hits
        .entry(path.clone())
        .and_modify(|n| *n += 1)
        .or_insert(1);
    let file = root.join(path.trim_start_matches('/'));
    let body = match std::fs::read(&file) {
        Ok(b) if file.is_file() => b,
        _ => {
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
    };
    let _ = conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Sat, 17 May 2025 08:49:13 GMT\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    if method == "HEAD" {
        return;
    }
    let t = *throttle.lock().unwrap();
    let (chunk, pause) = t.unwrap_or((1 << 20, Duration::ZERO));
    for c in body.chunks(chunk) {
        if conn.write_all(c).is_err() {
            return;
        }
        *log.lock().unwrap().bytes.entry(path.clone()).or_default() += c.len() as u64;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

/// An HTTP answer as a client sees it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body ended before Content-Length.
    truncated: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request to the cache (`target` is a proxy-style absolute URL or a
/// mirror path), reading the answer to the end.
fn fetch(cache: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    let (mut s, status, headers, mut body) = request(cache, method, target, headers);
    let _ = s.read_to_end(&mut body);
    let truncated = method != "HEAD" && content_length(&headers).is_some_and(|l| body.len() < l);
    Answer {
        status,
        headers,
        body,
        truncated,
    }
}

/// GET streamed into SHA-256 (no buffering of large bodies): status,
/// truncated, hex digest, length.
fn fetch_sha256(cache: SocketAddr, target: &str) -> (u16, bool, String, usize) {
    let (mut s, status, headers, first) = request(cache, "GET", target, &[]);
    let mut h = sha2::Sha256::new();
    h.update(&first);
    let mut len = first.len();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                len += n;
            }
        }
    }
    let truncated = content_length(&headers).is_some_and(|l| len < l);
    (status, truncated, hex::encode(h.finalize()), len)
}

fn content_length(headers: &[(String, String)]) -> Option<usize> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
}

/// Sends one request and reads the answer's head: the stream, status,
/// headers and the body bytes that arrived with the head.
fn request(
    cache: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (TcpStream, u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(cache).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {cache}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut b = [0u8; 16 * 1024];
    let split = loop {
        let from = raw.len().saturating_sub(3);
        let n = s.read(&mut b).unwrap_or(0);
        raw.extend_from_slice(&b[..n]);
        if let Some(p) = raw[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            break from + p;
        }
        assert!(n > 0, "no HTTP head in {:?}", String::from_utf8_lossy(&raw));
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (s, status, headers, body)
}

/// An appliance whose cache allows the local upstream and trusts the repo key.
fn start_appliance(
    root: &Path,
    up: &Upstream,
    keyring: &Path,
    extra_cache: &str,
) -> (Appliance, SocketAddr) {
    let app_dir = root.join("appliance");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::write(
        app_dir.join("outpost.toml"),
        format!(
            "[cache]\nallow_hosts = [\"{}\"]\nallow_apt_sources = false\nkeyrings = [\"{}\"]\n{extra_cache}",
            up.addr,
            keyring.display()
        ),
    )
    .unwrap();
    let app = Appliance::start(root);
    let addr = cache_addr(&app);
    (app, addr)
}

/// For other modules' tests (patches: apt index refresh): a signed
/// repository of `packages` served by a local upstream, and an appliance
/// whose cache allows it: (the repository's keyring, the upstream, the
/// appliance, its cache's address).
pub(crate) fn cached_repo(
    root: &Path,
    packages: &[(&str, usize)],
) -> (PathBuf, Upstream, Appliance, SocketAddr) {
    let repo = Repo::build(root, packages);
    let up = Upstream::start(&repo.root);
    let (app, cache) = start_appliance(root, &up, &repo.key.keyring, "");
    (repo.key.keyring.clone(), up, app, cache)
}

fn cache_addr(app: &Appliance) -> SocketAddr {
    std::fs::read_to_string(app.dir.join("cache.addr"))
        .expect("cache.addr")
        .trim()
        .parse()
        .unwrap()
}

/// A real apt-get, isolated in its own directory, using the cache as proxy.
struct AptClient {
    dir: PathBuf,
    proxy: SocketAddr,
}

impl AptClient {
    fn new(root: &Path, name: &str, proxy: SocketAddr, up: &Upstream, keyring: &Path) -> AptClient {
        let dir = root.join(name);
        for d in [
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "etc/apt/trusted.gpg.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
            "dl",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("var/lib/dpkg/status"), "").unwrap();
        std::fs::write(dir.join("etc/apt/apt.conf"), "").unwrap();
        std::fs::write(
            dir.join("etc/apt/sources.list"),
            format!(
                "deb [signed-by={}] http://{}/debian stable main\n",
                keyring.display(),
                up.addr
            ),
        )
        .unwrap();
        AptClient { dir, proxy }
    }

    fn apt(&self, args: &[&str]) -> std::process::Output {
        let d = self.dir.display();
        let opts = [
            format!("Dir={d}/"),
            format!("Dir::Etc={d}/etc/apt/"),
            format!("Dir::State={d}/var/lib/apt/"),
            format!("Dir::State::status={d}/var/lib/dpkg/status"),
            format!("Dir::Cache={d}/var/cache/apt/"),
            format!("Dir::Log={d}/var/log/apt/"),
            format!("Acquire::http::Proxy=http://{}", self.proxy),
            "Acquire::Retries=0".into(),
            "APT::Sandbox::User=root".into(),
            "Debug::NoLocking=1".into(),
            "Acquire::Languages=none".into(),
        ];
        let mut cmd = Command::new("apt-get");
        // The machine's own apt configuration is not read.
        cmd.current_dir(self.dir.join("dl"))
            .env("APT_CONFIG", self.dir.join("etc/apt/apt.conf"));
        for o in &opts {
            cmd.arg("-o").arg(o);
        }
        cmd.args(["-q", "-y"]).args(args);
        cmd.output().expect("running apt-get")
    }

    fn apt_ok(&self, args: &[&str]) -> String {
        let o = self.apt(args);
        let out = format!(
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "apt-get {args:?} failed:\n{out}");
        assert!(
            !out.contains("\nE:") && !out.contains("\nW:"),
            "apt-get {args:?} warned:\n{out}"
        );
        out
    }

    fn downloaded(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(format!("dl/{name}_1.0_all.deb"))).unwrap()
    }
}

fn metric(app: &Appliance, series: &str) -> f64 {
    app.metric(series)
}

// ---------------------------------------------------------------- tests

#[test]
fn apt_get_through_the_cache_downloads_once_and_a_second_client_is_served_from_cache() {
    let tmp = scratch("cache-apt");
    let repo = Repo::build(
        tmp.path(),
        &[("outpost-hello", 200_000), ("outpost-extra", 30_000)],
    );
    let up = Upstream::start(&repo.root);
    let (app, cache) = start_appliance(tmp.path(), &up, &repo.key.keyring, "");

    // First client: update + download through the proxy.
    let a = AptClient::new(tmp.path(), "client-a", cache, &up, &repo.key.keyring);
    a.apt_ok(&["update"]);
    a.apt_ok(&["download", "outpost-hello"]);
    let hello = repo.pkg("outpost-hello");
    assert_eq!(
        sha256_hex(&a.downloaded("outpost-hello")),
        sha256_hex(&hello.bytes)
    );
    let deb_path = format!("/{}", hello.path);
    assert_eq!(up.hits(&deb_path), 1);
    let upstream_deb_bytes = up.deb_bytes();
    assert_eq!(upstream_deb_bytes, hello.bytes.len() as u64);

    // Second client: zero upstream package bytes.
    let b = AptClient::new(tmp.path(), "client-b", cache, &up, &repo.key.keyring);
    b.apt_ok(&["update"]);
    b.apt_ok(&["download", "outpost-hello"]);
    assert_eq!(b.downloaded("outpost-hello"), hello.bytes);
    assert_eq!(
        up.hits(&deb_path),
        1,
        "the package was fetched upstream again"
    );
    assert_eq!(up.deb_bytes(), upstream_deb_bytes);
    assert!(metric(&app, "outpost_cache_hits_total") >= 1.0);

    // Mirror-path mode reaches the same cache entry (no upstream request).
    let mirror = fetch(cache, "GET", &format!("/{}/{}", up.addr, hello.path), &[]);
    assert_eq!(mirror.status, 200, "{}", mirror.text());
    assert_eq!(mirror.body, hello.bytes);
    assert_eq!(mirror.header("X-Outpost-Cache"), Some("hit"));
    assert_eq!(up.hits(&deb_path), 1);
    // HEAD answers the size without a body.
    let head = fetch(cache, "HEAD", &up.url(&hello.path), &[]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("Content-Length"),
        Some(hello.bytes.len().to_string().as_str())
    );
    assert!(head.body.is_empty());

    // Not an open proxy: other hosts, CONNECT and other methods are refused.
    let forbidden = fetch(cache, "GET", "http://example.com/debian/pool/x.deb", &[]);
    assert_eq!(forbidden.status, 403);
    assert!(
        forbidden.text().contains("example.com is not allowed"),
        "{}",
        forbidden.text()
    );
    let connect = fetch(cache, "CONNECT", "example.com:443", &[]);
    assert_eq!(connect.status, 405);
    assert!(connect.text().contains("CONNECT is not supported"));
    let post = fetch(cache, "POST", &up.url(&hello.path), &[]);
    assert_eq!(post.status, 405);
    assert_eq!(
        metric(
            &app,
            "outpost_cache_refused_total{reason=\"forbidden_host\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&app, "outpost_cache_refused_total{reason=\"method\"}"),
        2.0
    );

    // Operations: stats (text and JSON).
    let text = app.cli_ok(&["cache", "stats"]);
    assert!(text.contains("hit ratio"), "{text}");
    assert!(
        text.contains(&hello.path),
        "top files list the package:\n{text}"
    );
    assert!(text.contains("127.0.0.1"), "per-client counts:\n{text}");
    let stats: serde_json::Value =
        serde_json::from_str(&app.cli_ok(&["cache", "stats", "--json"])).unwrap();
    assert!(stats["hits"].as_u64().unwrap() >= 2, "{stats}");
    assert!(
        stats["bytes_from_cache"].as_u64().unwrap() >= 2 * hello.bytes.len() as u64,
        "{stats}"
    );
    assert_eq!(
        stats["misses"].as_u64().unwrap(),
        3,
        "InRelease, Packages.gz, one .deb: {stats}"
    );
    // Per file, hits and misses apart: each file was downloaded once (a
    // miss, never counted as a hit) and then served from the cache.
    let top = |stats: &serde_json::Value, suffix: &str| -> (u64, u64) {
        let f = stats["top_files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["url"].as_str().unwrap().ends_with(suffix))
            .unwrap_or_else(|| panic!("no top file {suffix}: {stats}"))
            .clone();
        (f["hits"].as_u64().unwrap(), f["misses"].as_u64().unwrap())
    };
    let (in_hits, in_misses) = top(&stats, "/InRelease");
    assert_eq!(in_misses, 1, "{stats}");
    assert_eq!(in_hits, 1, "client b's update: {stats}");
    let (deb_hits, deb_misses) = top(&stats, &hello.path);
    assert_eq!(deb_misses, 1, "{stats}");
    assert!(deb_hits >= 2, "{stats}");
    // The counting period is stated.
    let since = stats["since_ms"].as_u64().unwrap();
    assert!(since > 0 && stats["uptime_s"].as_u64().is_some(), "{stats}");
    assert!(text.contains("counters since"), "{text}");
    assert!(text.contains("restart with the appliance"), "{text}");
    let deb_line = text
        .lines()
        .find(|l| l.ends_with(&hello.path))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        deb_line.split_whitespace().take(2).collect::<Vec<_>>(),
        [deb_hits.to_string(), "1".to_string()],
        "HITS MISSES columns: {text}"
    );

    // Prefetch by index: the other package arrives before anyone asks.
    let extra = repo.pkg("outpost-extra");
    let index = up.url(&format!("debian/dists/stable/{}.gz", repo.packages_rel()));
    let out = app.cli_ok(&[
        "cache",
        "prefetch",
        "--index",
        &index,
        "--package",
        "outpost-extra",
    ]);
    assert!(
        out.contains("fetched") && out.contains(&extra.path),
        "{out}"
    );
    assert_eq!(up.hits(&format!("/{}", extra.path)), 1);
    let again = fetch(cache, "GET", &up.url(&extra.path), &[]);
    assert_eq!(again.header("X-Outpost-Cache"), Some("hit"));
    assert_eq!(again.body, extra.bytes);
    // A file no verified index covers cannot be prefetched.
    let o = app.cli(&["cache", "prefetch", &up.url("debian/README")]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no verified index covers"));

    // After a restart the request counters start again (a new period) and
    // the per-file counts are still there.
    let before: serde_json::Value =
        serde_json::from_str(&app.cli_ok(&["cache", "stats", "--json"])).unwrap();
    let mut app = app;
    app.stop();
    app.restart();
    let after: serde_json::Value =
        serde_json::from_str(&app.cli_ok(&["cache", "stats", "--json"])).unwrap();
    assert!(
        after["since_ms"].as_u64().unwrap() > since,
        "{before}\n{after}"
    );
    assert_eq!(after["requests"].as_u64().unwrap(), 0, "{after}");
    assert_eq!(top(&after, &hello.path), top(&before, &hello.path));
    assert_eq!(top(&after, "/InRelease"), top(&before, "/InRelease"));
    assert_eq!(
        top(&after, &extra.path),
        (1, 1),
        "prefetch, then one hit: {after}"
    );
}

#[test]
fn fifty_concurrent_clients_of_one_uncached_50mb_file_cause_one_upstream_fetch() {
    let tmp = scratch("cache-coalesce");
    let repo = Repo::build(tmp.path(), &[("outpost-big", 50 * 1024 * 1024)]);
    let up = Upstream::start(&repo.root);
    // ~1.6 s for the whole file, so that every client joins mid-download.
    *up.throttle.lock().unwrap() = Some((1 << 20, Duration::from_millis(30)));
    let (app, cache) = start_appliance(tmp.path(), &up, &repo.key.keyring, "");
    let big = repo.pkg("outpost-big").clone();
    let want = sha256_hex(&big.bytes);
    // Learn the indexes first (as apt-get update would).
    assert_eq!(
        fetch(cache, "GET", &up.url("debian/dists/stable/InRelease"), &[]).status,
        200
    );
    let packages = format!("debian/dists/stable/{}.gz", repo.packages_rel());
    assert_eq!(fetch(cache, "GET", &up.url(&packages), &[]).status, 200);

    let url = up.url(&big.path);
    let start = Instant::now();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let (status, truncated, sha, len) = fetch_sha256(cache, &url);
                (i, status, truncated, sha, len)
            })
        })
        .collect();
    for h in handles {
        let (i, status, truncated, sha, len) = h.join().unwrap();
        assert_eq!(status, 200, "client {i}");
        assert!(!truncated, "client {i} got {len} bytes");
        assert_eq!(sha, want, "client {i}");
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        up.hits(&format!("/{}", big.path)),
        1,
        "upstream saw more than one request"
    );
    assert_eq!(up.bytes(&format!("/{}", big.path)), big.bytes.len() as u64);
    assert_eq!(metric(&app, "outpost_cache_misses_total"), 3.0); // InRelease, Packages.gz, the file
    assert_eq!(metric(&app, "outpost_cache_coalesced_total"), 49.0);
    // Per file: 50 requests answered from upstream, none from the cache.
    let stats: serde_json::Value =
        serde_json::from_str(&app.cli_ok(&["cache", "stats", "--json"])).unwrap();
    let f = stats["top_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["url"].as_str().unwrap().ends_with(&big.path))
        .unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(
        (&f["hits"], &f["misses"]),
        (&0.into(), &50.into()),
        "{stats}"
    );
    eprintln!("50 clients x 50 MiB through one upstream fetch in {secs:.1}s");
}

#[test]
fn tampered_packages_indexes_and_release_files_are_never_served() {
    let tmp = scratch("cache-tamper");
    let mut repo = Repo::build(
        tmp.path(),
        &[("outpost-good", 20_000), ("outpost-evil", 20_000)],
    );
    let up = Upstream::start(&repo.root);
    let (app, cache) = start_appliance(
        tmp.path(),
        &up,
        &repo.key.keyring,
        "release_refresh = \"0s\"\n",
    );
    let inrelease = up.url("debian/dists/stable/InRelease");
    let packages = up.url(&format!("debian/dists/stable/{}", repo.packages_rel()));
    assert_eq!(fetch(cache, "GET", &inrelease, &[]).status, 200);
    assert_eq!(fetch(cache, "GET", &packages, &[]).status, 200);

    // A package with the right name and wrong bytes (same size).
    let evil = repo.pkg("outpost-evil").clone();
    let mut bad = evil.bytes.clone();
    let n = bad.len();
    bad[n - 100] ^= 0xFF;
    std::fs::write(repo.root.join(&evil.path), &bad).unwrap();
    let a = fetch(cache, "GET", &up.url(&evil.path), &[]);
    assert_eq!(a.status, 502);
    assert!(
        a.text().contains("integrity check failed") && a.text().contains("quarantined"),
        "{}",
        a.text()
    );
    assert_eq!(
        metric(
            &app,
            "outpost_cache_verify_failures_total{reason=\"package_hash\"}"
        ),
        1.0
    );
    // Never cached: asked again, it is fetched (and refused) again.
    let a = fetch(cache, "GET", &up.url(&evil.path), &[]);
    assert_eq!(a.status, 502);
    assert_eq!(
        metric(
            &app,
            "outpost_cache_verify_failures_total{reason=\"package_hash\"}"
        ),
        2.0
    );
    // A longer body is cut at the stated size (endless-data defence).
    let mut long = evil.bytes.clone();
    long.extend_from_slice(&[0u8; 4096]);
    std::fs::write(repo.root.join(&evil.path), &long).unwrap();
    let a = fetch(cache, "GET", &up.url(&evil.path), &[]);
    assert_eq!(a.status, 502);
    assert!(a.text().contains("sent more than"), "{}", a.text());
    assert_eq!(
        metric(
            &app,
            "outpost_cache_verify_failures_total{reason=\"size_cap\"}"
        ),
        1.0
    );
    let quarantined = std::fs::read_dir(app.dir.join("cache/quarantine"))
        .unwrap()
        .count();
    assert!(quarantined >= 2);
    // The good one is served.
    let good = repo.pkg("outpost-good");
    assert_eq!(
        fetch(cache, "GET", &up.url(&good.path), &[]).body,
        good.bytes
    );

    // A tampered index: Packages.gz whose bytes are not what InRelease states.
    let gz = repo.suite_dir().join(format!("{}.gz", repo.packages_rel()));
    let mut bytes = std::fs::read(&gz).unwrap();
    let l = bytes.len();
    bytes[l - 1] ^= 0x55;
    std::fs::write(&gz, &bytes).unwrap();
    let a = fetch(cache, "GET", &format!("{packages}.gz"), &[]);
    assert_eq!(a.status, 502);
    assert!(a.text().contains("integrity check failed"), "{}", a.text());
    assert_eq!(
        metric(
            &app,
            "outpost_cache_verify_failures_total{reason=\"index_hash\"}"
        ),
        1.0
    );

    // An InRelease signed by an unknown key: the last accepted one is served.
    let accepted = fetch(cache, "GET", &inrelease, &[]).body;
    let other = GpgKey::new(tmp.path(), "intruder");
    let release = std::fs::read(repo.suite_dir().join("Release")).unwrap();
    let forged = other.clearsign(
        String::from_utf8_lossy(&release)
            .replace("cache test", "evil")
            .as_bytes(),
    );
    std::fs::write(repo.suite_dir().join("InRelease"), &forged).unwrap();
    let a = fetch(cache, "GET", &inrelease, &[]);
    assert_eq!(a.status, 200);
    assert_eq!(a.body, accepted, "a forged InRelease was served");
    assert_eq!(a.header("X-Outpost-Cache"), Some("stale"));
    assert_eq!(
        metric(
            &app,
            "outpost_cache_verify_failures_total{reason=\"signature\"}"
        ),
        1.0
    );

    // Rollback: a validly signed InRelease older than the accepted one.
    let date = repo.date_s;
    repo.write_indexes(date - 3600);
    let a = fetch(cache, "GET", &inrelease, &[]);
    assert_eq!(a.body, accepted, "an older InRelease replaced a newer one");
    assert_eq!(
        metric(
            &app,
            "outpost_cache_verify_failures_total{reason=\"rollback\"}"
        ),
        1.0
    );
    // A newer one is accepted.
    repo.write_indexes(date + 60);
    let a = fetch(cache, "GET", &inrelease, &[]);
    assert_eq!(
        a.body,
        std::fs::read(repo.suite_dir().join("InRelease")).unwrap()
    );
    assert_eq!(a.header("X-Outpost-Cache"), Some("miss"));

    // A fresh appliance without any accepted InRelease answers a forged one with a clear error.
    drop(app);
    std::fs::write(repo.suite_dir().join("InRelease"), &forged).unwrap();
    let tmp2 = scratch("cache-tamper2");
    let (app2, cache2) = start_appliance(tmp2.path(), &up, &repo.key.keyring, "");
    let a = fetch(cache2, "GET", &inrelease, &[]);
    assert_eq!(a.status, 502);
    assert!(
        a.text().contains("signature verification failed"),
        "{}",
        a.text()
    );
    assert_eq!(
        metric(
            &app2,
            "outpost_cache_verify_failures_total{reason=\"signature\"}"
        ),
        1.0
    );
}

#[test]
fn with_upstream_down_cached_packages_and_still_valid_indexes_are_served() {
    let tmp = scratch("cache-offline");
    let repo = Repo::build(tmp.path(), &[("outpost-offline", 50_000)]);
    let mut up = Upstream::start(&repo.root);
    let (app, cache) = start_appliance(
        tmp.path(),
        &up,
        &repo.key.keyring,
        "release_refresh = \"0s\"\n",
    );
    let a = AptClient::new(tmp.path(), "client-a", cache, &up, &repo.key.keyring);
    a.apt_ok(&["update"]);
    a.apt_ok(&["download", "outpost-offline"]);
    up.stop();
    // A new client, with the uplink down: update and download still work.
    let b = AptClient::new(tmp.path(), "client-b", cache, &up, &repo.key.keyring);
    b.apt_ok(&["update"]);
    b.apt_ok(&["download", "outpost-offline"]);
    assert_eq!(
        b.downloaded("outpost-offline"),
        repo.pkg("outpost-offline").bytes
    );
    assert!(metric(&app, "outpost_cache_stale_served_total") >= 1.0);
    assert!(metric(&app, "outpost_cache_upstream_errors_total") >= 1.0);
    // Something never cached gives a clear error, not a hang.
    let a = fetch(
        cache,
        "GET",
        &up.url("debian/dists/stable/main/binary-all/Packages"),
        &[],
    );
    assert!(
        a.status == 502 || a.status == 504 || a.status == 200,
        "{}",
        a.status
    );
}

#[test]
fn expired_inrelease_is_refused_and_a_stale_one_is_served_only_until_its_valid_until() {
    let tmp = scratch("cache-valid-until");
    let mut repo = Repo::build(tmp.path(), &[("outpost-vu", 10_000)]);
    let mut up = Upstream::start(&repo.root);
    let (app, cache) = start_appliance(
        tmp.path(),
        &up,
        &repo.key.keyring,
        "release_refresh = \"0s\"\n",
    );
    let inrelease = up.url("debian/dists/stable/InRelease");
    // Validly signed, but its Valid-Until has passed: refused.
    repo.valid_for_s = 30;
    repo.write_indexes(now_s() - 120);
    let a = fetch(cache, "GET", &inrelease, &[]);
    assert_eq!(a.status, 502);
    assert!(a.text().contains("expired (Valid-Until"), "{}", a.text());
    assert_eq!(
        metric(
            &app,
            "outpost_cache_verify_failures_total{reason=\"expired\"}"
        ),
        1.0
    );
    // One valid for a few more seconds is accepted.
    repo.valid_for_s = 64;
    repo.write_indexes(now_s() - 60);
    let valid_until = repo.date_s + repo.valid_for_s;
    let a = fetch(cache, "GET", &inrelease, &[]);
    assert_eq!(a.status, 200, "{}", a.text());
    let accepted = a.body;
    // Upstream down: served stale while still valid...
    up.stop();
    let a = fetch(cache, "GET", &inrelease, &[]);
    assert!(
        now_s() < valid_until,
        "the machine was too slow for this test's window"
    );
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("X-Outpost-Cache"), Some("stale"));
    assert_eq!(a.body, accepted);
    // ...and refused with a clear error once past its Valid-Until.
    while now_s() <= valid_until {
        std::thread::sleep(Duration::from_millis(200));
    }
    let a = fetch(cache, "GET", &inrelease, &[]);
    assert!(a.status >= 500, "{} {}", a.status, a.text());
    assert!(
        a.text().contains("the cached copy expired (Valid-Until"),
        "{}",
        a.text()
    );
    assert_eq!(a.header("X-Outpost-Cache"), Some("error"));
}

#[test]
fn range_requests_are_served_for_complete_and_in_flight_files() {
    let tmp = scratch("cache-range");
    let repo = Repo::build(tmp.path(), &[("outpost-ranged", 8 * 1024 * 1024)]);
    let up = Upstream::start(&repo.root);
    let (_app, cache) = start_appliance(tmp.path(), &up, &repo.key.keyring, "");
    fetch(cache, "GET", &up.url("debian/dists/stable/InRelease"), &[]);
    fetch(
        cache,
        "GET",
        &up.url(&format!("debian/dists/stable/{}.gz", repo.packages_rel())),
        &[],
    );
    let p = repo.pkg("outpost-ranged").clone();
    let url = up.url(&p.path);
    let len = p.bytes.len();

    // In flight: the upstream sends 256 KiB every 100 ms (~3 s in all).
    *up.throttle.lock().unwrap() = Some((256 * 1024, Duration::from_millis(100)));
    let first = {
        let url = url.clone();
        std::thread::spawn(move || fetch(cache, "GET", &url, &[]))
    };
    std::thread::sleep(Duration::from_millis(400));
    let mid = fetch(cache, "GET", &url, &[("Range", "bytes=1000-1999")]);
    assert_eq!(mid.status, 206);
    assert_eq!(
        mid.header("X-Outpost-Cache"),
        Some("miss"),
        "served while in flight"
    );
    assert_eq!(
        mid.header("Content-Range"),
        Some(format!("bytes 1000-1999/{len}").as_str())
    );
    assert_eq!(mid.body, &p.bytes[1000..2000]);
    // Resume near the end while the download is still running.
    let tail = fetch(
        cache,
        "GET",
        &url,
        &[("Range", &format!("bytes={}-", len - 5000))],
    );
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, &p.bytes[len - 5000..]);
    let whole = first.join().unwrap();
    assert_eq!(whole.body, p.bytes);
    assert_eq!(up.hits(&format!("/{}", p.path)), 1);

    // Complete.
    let r = fetch(cache, "GET", &url, &[("Range", "bytes=-10")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("X-Outpost-Cache"), Some("hit"));
    assert_eq!(r.body, &p.bytes[len - 10..]);
    let r = fetch(cache, "GET", &url, &[("Range", "bytes=0-0")]);
    assert_eq!(r.body, &p.bytes[..1]);
    // A last byte position of u64::MAX is the end of the file (it used to
    // overflow: a panic in debug builds, a bogus answer in release).
    let r = fetch(
        cache,
        "GET",
        &url,
        &[("Range", "bytes=5-18446744073709551615")],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &p.bytes[5..]);
    let r = fetch(cache, "GET", &url, &[("Range", &format!("bytes={len}-"))]);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes */{len}").as_str())
    );
    // If-Range with another validator: the whole file.
    let r = fetch(
        cache,
        "GET",
        &url,
        &[("Range", "bytes=0-9"), ("If-Range", "\"other\"")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), len);
}

#[test]
fn eviction_under_the_size_cap_keeps_pinned_files() {
    let tmp = scratch("cache-evict");
    let mb = 1024 * 1024;
    let repo = Repo::build(
        tmp.path(),
        &[
            ("outpost-p1", mb),
            ("outpost-p2", mb),
            ("outpost-p3", mb),
            ("outpost-p4", mb),
        ],
    );
    let up = Upstream::start(&repo.root);
    // Room for the indexes and about two and a half packages.
    let (app, cache) = start_appliance(
        tmp.path(),
        &up,
        &repo.key.keyring,
        &format!("max_bytes = {}\n", 5 * mb / 2 + 64 * 1024),
    );
    fetch(cache, "GET", &up.url("debian/dists/stable/InRelease"), &[]);
    fetch(
        cache,
        "GET",
        &up.url(&format!("debian/dists/stable/{}.gz", repo.packages_rel())),
        &[],
    );
    let url = |n: &str| up.url(&repo.pkg(n).path);
    // Pin p1 (this fetches it), then fill the cache.
    let sha = app.cli_ok(&["cache", "pin", &url("outpost-p1"), "--reason", "rollout 7"]);
    assert_eq!(sha.trim(), sha256_hex(&repo.pkg("outpost-p1").bytes));
    for n in ["outpost-p2", "outpost-p3", "outpost-p4"] {
        assert_eq!(fetch(cache, "GET", &url(n), &[]).status, 200);
    }
    assert!(metric(&app, "outpost_cache_evictions_total") >= 1.0);
    assert!(metric(&app, "outpost_cache_stored_bytes") <= (5 * mb / 2 + 64 * 1024) as f64);
    // The pinned file is still a hit; the least recently used unpinned one was evicted.
    let hits_before = up.hits(&format!("/{}", repo.pkg("outpost-p1").path));
    let a = fetch(cache, "GET", &url("outpost-p1"), &[]);
    assert_eq!(a.header("X-Outpost-Cache"), Some("hit"));
    assert_eq!(
        up.hits(&format!("/{}", repo.pkg("outpost-p1").path)),
        hits_before
    );
    let a = fetch(cache, "GET", &url("outpost-p2"), &[]);
    assert_eq!(
        a.header("X-Outpost-Cache"),
        Some("miss"),
        "p2 should have been evicted"
    );
    let pins: serde_json::Value =
        serde_json::from_str(&app.cli_ok(&["cache", "pins", "--json"])).unwrap();
    assert_eq!(pins[0]["reason"], "rollout 7");
    assert_eq!(pins[0]["cached"], true);
    assert_eq!(metric(&app, "outpost_cache_pinned_files"), 1.0);
    app.cli_ok(&["cache", "unpin", &url("outpost-p1")]);
    assert_eq!(metric(&app, "outpost_cache_pinned_files"), 0.0);
    let o = app.cli(&["cache", "unpin", &url("outpost-p1")]);
    assert!(!o.status.success(), "unpinning twice is an error");
}

#[test]
fn kill9_mid_download_then_restart_never_serves_a_partial_file() {
    let tmp = scratch("cache-kill9");
    let repo = Repo::build(
        tmp.path(),
        &[("outpost-slow", 4 * 1024 * 1024), ("outpost-done", 100_000)],
    );
    let up = Upstream::start(&repo.root);
    let (mut app, cache) = start_appliance(tmp.path(), &up, &repo.key.keyring, "");
    fetch(cache, "GET", &up.url("debian/dists/stable/InRelease"), &[]);
    fetch(
        cache,
        "GET",
        &up.url(&format!("debian/dists/stable/{}.gz", repo.packages_rel())),
        &[],
    );
    let done = repo.pkg("outpost-done").clone();
    assert_eq!(
        fetch(cache, "GET", &up.url(&done.path), &[]).body,
        done.bytes
    );
    // A slow download, killed half way.
    let slow = repo.pkg("outpost-slow").clone();
    *up.throttle.lock().unwrap() = Some((256 * 1024, Duration::from_millis(100)));
    let url = up.url(&slow.path);
    let client = std::thread::spawn(move || fetch(cache, "GET", &url, &[]));
    wait_for(Duration::from_secs(20), "half the download", || {
        (up.bytes(&format!("/{}", slow.path)) > 1024 * 1024).then_some(())
    });
    let partials: Vec<_> = std::fs::read_dir(app.dir.join("cache/tmp"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        !partials.is_empty(),
        "a partial download exists before the kill"
    );
    app.kill9();
    let cut = client.join().unwrap();
    assert!(
        cut.truncated || cut.body.len() < slow.bytes.len(),
        "the client did not get the whole file"
    );
    *up.throttle.lock().unwrap() = None;

    app.restart();
    let cache = cache_addr(&app);
    assert_eq!(
        std::fs::read_dir(app.dir.join("cache/tmp"))
            .unwrap()
            .count(),
        0,
        "partials removed at start"
    );
    // The complete file survived and is a hit; the partial one is fetched again in full.
    let a = fetch(cache, "GET", &up.url(&done.path), &[]);
    assert_eq!(a.header("X-Outpost-Cache"), Some("hit"));
    assert_eq!(a.body, done.bytes);
    let a = fetch(cache, "GET", &up.url(&slow.path), &[]);
    assert_eq!(a.header("X-Outpost-Cache"), Some("miss"));
    assert_eq!(sha256_hex(&a.body), sha256_hex(&slow.bytes));
    // Re-verification finds nothing wrong, then catches a file corrupted on disk.
    let out = app.cli_ok(&["cache", "verify"]);
    assert!(out.contains("checked"), "{out}");
    let blob = app.dir.join(format!(
        "cache/blobs/{}/{}",
        &sha256_hex(&done.bytes)[..2],
        sha256_hex(&done.bytes)
    ));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let o = app.cli(&["cache", "verify"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(&sha256_hex(&done.bytes)));
    assert_eq!(
        metric(
            &app,
            "outpost_cache_verify_failures_total{reason=\"rehash\"}"
        ),
        1.0
    );
    // The corrupted file is fetched again, not served.
    let a = fetch(cache, "GET", &up.url(&done.path), &[]);
    assert_eq!(a.header("X-Outpost-Cache"), Some("miss"));
    assert_eq!(a.body, done.bytes);
}

/// A redirector on 127.0.0.1: every request answers `302 Location:
/// http://{to}{path}` (a mirror redirector, or a repository moved).
fn redirector(to: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let to = to.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: http://{to}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                );
            });
        }
    });
    addr
}

#[test]
fn a_repository_that_redirects_is_followed_to_allowed_hosts_only() {
    let tmp = scratch("cache-redirect");
    let repo = Repo::build(tmp.path(), &[("outpost-moved", 4000)]);
    std::fs::write(repo.root.join("debian/README"), b"hello mirror").unwrap();
    let up = Upstream::start(&repo.root);
    let front = redirector(up.addr.to_string());
    // Redirects to a host the cache does not allow.
    let elsewhere = redirector("127.0.0.1:9".into());
    let app_dir = tmp.path().join("appliance");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::write(
        app_dir.join("outpost.toml"),
        format!(
            "[cache]\nallow_hosts = [\"{front}\", \"{}\", \"{elsewhere}\"]\nallow_apt_sources = false\nkeyrings = [\"{}\"]\n",
            up.addr,
            repo.key.keyring.display()
        ),
    )
    .unwrap();
    let app = Appliance::start(tmp.path());
    let cache = cache_addr(&app);
    let via = |path: &str| format!("http://{front}/{path}");
    // The signed index and a package, asked of the redirecting host:
    // verified and cached under the URL asked for.
    let inrelease = fetch(cache, "GET", &via("debian/dists/stable/InRelease"), &[]);
    assert_eq!(inrelease.status, 200, "{}", inrelease.text());
    let packages = format!("debian/dists/stable/{}.gz", repo.packages_rel());
    assert_eq!(fetch(cache, "GET", &via(&packages), &[]).status, 200);
    let pkg = repo.pkg("outpost-moved").clone();
    for want in ["miss", "hit"] {
        let a = fetch(cache, "GET", &via(&pkg.path), &[]);
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.body, pkg.bytes);
        assert_eq!(a.header("X-Outpost-Cache"), Some(want));
    }
    assert_eq!(up.hits(&format!("/{}", pkg.path)), 1);
    // A file no index covers passes through the redirect too.
    let readme = fetch(cache, "GET", &via("debian/README"), &[]);
    assert_eq!(
        (readme.status, readme.body.as_slice()),
        (200, &b"hello mirror"[..])
    );
    // A redirect to a host not allowed is refused, naming it.
    let refused = fetch(
        cache,
        "GET",
        &format!("http://{elsewhere}/debian/README"),
        &[],
    );
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(
        refused.text().contains("not in the cache's allowed hosts"),
        "{}",
        refused.text()
    );
}

#[test]
fn unverified_files_pass_through_uncached_or_are_refused_per_config() {
    let tmp = scratch("cache-unverified");
    let repo = Repo::build(tmp.path(), &[("outpost-x", 1000)]);
    std::fs::write(repo.root.join("debian/README"), b"hello mirror").unwrap();
    let up = Upstream::start(&repo.root);
    let (app, cache) = start_appliance(tmp.path(), &up, &repo.key.keyring, "");
    for _ in 0..2 {
        let a = fetch(cache, "GET", &up.url("debian/README"), &[]);
        assert_eq!(a.status, 200);
        assert_eq!(a.body, b"hello mirror");
        assert_eq!(a.header("X-Outpost-Cache"), Some("passthrough"));
    }
    assert_eq!(up.hits("/debian/README"), 2, "pass-through is not cached");
    let missing = fetch(cache, "GET", &up.url("debian/nothing"), &[]);
    assert_eq!(missing.status, 404);
    drop(app);

    let tmp2 = scratch("cache-refuse");
    let (app, cache) = start_appliance(
        tmp2.path(),
        &up,
        &repo.key.keyring,
        "unverified = \"refuse\"\n",
    );
    let a = fetch(cache, "GET", &up.url("debian/README"), &[]);
    assert_eq!(a.status, 403);
    assert!(
        a.text().contains("no verified index covers"),
        "{}",
        a.text()
    );
    assert_eq!(
        metric(&app, "outpost_cache_refused_total{reason=\"unverified\"}"),
        1.0
    );
    assert_eq!(up.hits("/debian/README"), 2);
}

#[test]
fn an_inrelease_of_another_suite_or_from_the_future_is_refused_and_reset_suite_recovers() {
    let tmp = scratch("cache-trust");
    let mut repo = Repo::build(tmp.path(), &[("outpost-trust", 1000)]);
    let up = Upstream::start(&repo.root);
    let (app, cache) = start_appliance(
        tmp.path(),
        &up,
        &repo.key.keyring,
        "release_refresh = \"0s\"\n",
    );
    let inrelease = up.url("debian/dists/stable/InRelease");
    // Signed by the archive key, but for another suite: refused.
    repo.suite_name = "oldstable".into();
    repo.write_indexes(now_s() - 60);
    let a = fetch(cache, "GET", &inrelease, &[]);
    assert_eq!(a.status, 502, "{}", a.text());
    assert!(a.text().contains("for another suite"), "{}", a.text());
    assert_eq!(
        metric(
            &app,
            "outpost_cache_verify_failures_total{reason=\"suite_mismatch\"}"
        ),
        1.0
    );
    // Dated a day ahead of the clock: refused (it would freeze the suite).
    repo.suite_name = "stable".into();
    repo.write_indexes(now_s() + 86_400);
    let a = fetch(cache, "GET", &inrelease, &[]);
    assert_eq!(a.status, 502, "{}", a.text());
    assert!(
        a.text().contains("ahead of this appliance's clock"),
        "{}",
        a.text()
    );
    assert_eq!(
        metric(
            &app,
            "outpost_cache_verify_failures_total{reason=\"future_date\"}"
        ),
        1.0
    );
    // A good one is accepted; an older one afterwards is a rollback...
    repo.write_indexes(now_s() - 60);
    assert_eq!(fetch(cache, "GET", &inrelease, &[]).status, 200);
    repo.write_indexes(now_s() - 3600);
    let a = fetch(cache, "GET", &inrelease, &[]);
    assert_eq!(a.header("X-Outpost-Cache"), Some("stale"), "{}", a.text());
    assert!(
        metric(
            &app,
            "outpost_cache_verify_failures_total{reason=\"rollback\"}"
        ) >= 1.0
    );
    // ...until an operator resets the suite (e.g. a rebuilt repository).
    let out = app.cli_ok(&["cache", "reset-suite", &up.url("debian/dists/stable")]);
    assert!(out.contains("its accepted InRelease forgotten"), "{out}");
    let a = fetch(cache, "GET", &inrelease, &[]);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("X-Outpost-Cache"), Some("miss"));
    assert_eq!(
        a.body,
        std::fs::read(repo.suite_dir().join("InRelease")).unwrap()
    );
    // An upstream failure is remembered briefly: the second ask does not reach upstream.
    let missing = up.url("debian/dists/nosuch/InRelease");
    assert_eq!(fetch(cache, "GET", &missing, &[]).status, 404);
    assert_eq!(fetch(cache, "GET", &missing, &[]).status, 404);
    assert_eq!(up.hits("/debian/dists/nosuch/InRelease"), 1);
    assert_eq!(
        metric(&app, "outpost_cache_release_negative_hits_total"),
        1.0
    );
}

#[test]
fn an_expired_inrelease_is_refused_even_when_upstream_sends_the_same_bytes_again() {
    let tmp = scratch("cache-expired-same");
    let mut repo = Repo::build(tmp.path(), &[("outpost-same", 1000)]);
    let up = Upstream::start(&repo.root);
    let (app, cache) = start_appliance(
        tmp.path(),
        &up,
        &repo.key.keyring,
        "release_refresh = \"0s\"\n",
    );
    let inrelease = up.url("debian/dists/stable/InRelease");
    repo.valid_for_s = 63;
    repo.write_indexes(now_s() - 60);
    let valid_until = repo.date_s + repo.valid_for_s;
    assert_eq!(fetch(cache, "GET", &inrelease, &[]).status, 200);
    while now_s() <= valid_until {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Upstream still serves the same, now expired, file: it used to be a hit.
    let a = fetch(cache, "GET", &inrelease, &[]);
    assert_eq!(a.status, 502, "{}", a.text());
    assert!(a.text().contains("expired (Valid-Until"), "{}", a.text());
    assert_eq!(
        metric(
            &app,
            "outpost_cache_verify_failures_total{reason=\"expired\"}"
        ),
        1.0
    );
}

#[test]
fn a_suite_with_a_slash_is_verified_and_its_packages_cached() {
    let tmp = scratch("cache-slash-suite");
    let mut repo = Repo::build(tmp.path(), &[("outpost-sec", 20_000)]);
    repo.suite_path = "buster/updates".into();
    repo.suite_name = "buster".into();
    repo.write_indexes(now_s() - 60);
    let up = Upstream::start(&repo.root);
    let (_app, cache) = start_appliance(tmp.path(), &up, &repo.key.keyring, "");
    // An index first (as a client with a warm list would): the cache
    // finds the suite buster/updates (there is no dists/buster/InRelease).
    let idx = fetch(
        cache,
        "GET",
        &up.url(&format!(
            "debian/dists/buster/updates/{}.gz",
            repo.packages_rel()
        )),
        &[],
    );
    assert_eq!(idx.status, 200, "{}", idx.text());
    assert_eq!(idx.header("X-Outpost-Cache"), Some("miss"));
    let p = repo.pkg("outpost-sec").clone();
    let a = fetch(cache, "GET", &up.url(&p.path), &[]);
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("X-Outpost-Cache"),
        Some("miss"),
        "verified, not passed through"
    );
    assert_eq!(a.body, p.bytes);
    assert_eq!(
        fetch(cache, "GET", &up.url(&p.path), &[]).header("X-Outpost-Cache"),
        Some("hit")
    );
}

#[test]
fn downloads_are_bounded_per_client_and_by_the_disk_reserve() {
    let tmp = scratch("cache-bounds");
    let mb = 1024 * 1024;
    let repo = Repo::build(tmp.path(), &[("outpost-b1", 2 * mb), ("outpost-b2", mb)]);
    let up = Upstream::start(&repo.root);
    let (app, cache) = start_appliance(
        tmp.path(),
        &up,
        &repo.key.keyring,
        "max_downloads_per_client = 1\n",
    );
    fetch(cache, "GET", &up.url("debian/dists/stable/InRelease"), &[]);
    fetch(
        cache,
        "GET",
        &up.url(&format!("debian/dists/stable/{}.gz", repo.packages_rel())),
        &[],
    );
    // One slow download in progress for this client...
    *up.throttle.lock().unwrap() = Some((128 * 1024, Duration::from_millis(100)));
    let b1 = up.url(&repo.pkg("outpost-b1").path);
    let first = std::thread::spawn(move || fetch(cache, "GET", &b1, &[]));
    wait_for(Duration::from_secs(20), "the first download", || {
        (metric(&app, "outpost_cache_downloads_active") >= 1.0).then_some(())
    });
    // ...so a second one is refused with a reason, and counted.
    let a = fetch(cache, "GET", &up.url(&repo.pkg("outpost-b2").path), &[]);
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(
        a.text().contains("max_downloads_per_client"),
        "{}",
        a.text()
    );
    assert_eq!(
        metric(
            &app,
            "outpost_cache_refused_total{reason=\"client_downloads\"}"
        ),
        1.0
    );
    assert_eq!(first.join().unwrap().body, repo.pkg("outpost-b1").bytes);
    *up.throttle.lock().unwrap() = None;
    drop(app);

    // A disk reserve larger than the disk: nothing is downloaded.
    let tmp2 = scratch("cache-reserve");
    let (app, cache) = start_appliance(
        tmp2.path(),
        &up,
        &repo.key.keyring,
        "min_free_bytes = 1000000000000000000\n",
    );
    fetch(cache, "GET", &up.url("debian/dists/stable/InRelease"), &[]);
    let a = fetch(
        cache,
        "GET",
        &up.url(&format!("debian/dists/stable/{}.gz", repo.packages_rel())),
        &[],
    );
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(a.text().contains("min_free_bytes"), "{}", a.text());
    assert_eq!(
        metric(&app, "outpost_cache_refused_total{reason=\"disk_reserve\"}"),
        1.0
    );
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_its_download_cancelled() {
    let tmp = scratch("cache-stalled");
    let repo = Repo::build(tmp.path(), &[("outpost-stall", 24 * 1024 * 1024)]);
    let up = Upstream::start(&repo.root);
    let (app, cache) = start_appliance(
        tmp.path(),
        &up,
        &repo.key.keyring,
        "client_write_timeout = \"1s\"\nmax_connections = 1\n",
    );
    fetch(cache, "GET", &up.url("debian/dists/stable/InRelease"), &[]);
    fetch(
        cache,
        "GET",
        &up.url(&format!("debian/dists/stable/{}.gz", repo.packages_rel())),
        &[],
    );
    let p = repo.pkg("outpost-stall").clone();
    // A slow upstream (~8 s for the file) and a client that never reads.
    *up.throttle.lock().unwrap() = Some((256 * 1024, Duration::from_millis(80)));
    let stalled = {
        let mut s = TcpStream::connect(cache).unwrap();
        s.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", up.url(&p.path)).as_bytes())
            .unwrap();
        s
    };
    wait_for(Duration::from_secs(30), "the write timeout", || {
        (metric(&app, "outpost_cache_write_timeouts_total") >= 1.0).then_some(())
    });
    wait_for(Duration::from_secs(10), "the download cancelled", || {
        (metric(&app, "outpost_cache_downloads_cancelled_total") >= 1.0).then_some(())
    });
    assert!(
        (up.bytes(&format!("/{}", p.path)) as usize) < p.bytes.len(),
        "the upstream transfer stopped early"
    );
    wait_for(Duration::from_secs(10), "tmp/ emptied", || {
        (std::fs::read_dir(app.dir.join("cache/tmp"))
            .unwrap()
            .count()
            == 0)
            .then_some(())
    });
    // The connection slot is free again (max_connections = 1).
    *up.throttle.lock().unwrap() = None;
    let a = fetch(cache, "GET", &up.url(&p.path), &[]);
    assert_eq!(a.status, 200);
    assert_eq!(sha256_hex(&a.body), sha256_hex(&p.bytes));
    drop(stalled);
}
