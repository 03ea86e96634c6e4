//! The cache's listener: one task per client connection (bounded by a
//! semaphore), keep-alive, and the request path: refuse what is not ours
//! (methods, hosts), then serve `InRelease` (revalidated), verified files
//! (hit → sendfile from disk; miss → join or start the one download and
//! stream it as it arrives) or unverified files (pass through uncached, or
//! refuse, per configuration).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::Cache;
use super::fetch::{InFlight, Progress};
use super::http::{self, ClientStream, Head, RangeAnswer, ReadError, Request};
use super::index::{Expect, Sha256};
use super::limits::Requester;
use super::suite::ReleaseSource;
use super::upstream::Validators;
use super::url::{FileKind, UpstreamUrl};
use crate::config::Unverified;

/// Idle keep-alive connections are closed after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Downloads of files up to this size are verified before the answer
/// starts, so a failure reaches the client as a clear error status.
const BUFFER_BEFORE_ANSWER_BYTES: u64 = 4 * 1024 * 1024;

/// Accepts clients until shutdown, then waits (bounded) for open ones.
pub async fn accept_loop(listener: TcpListener, cache: Arc<Cache>) {
    let sem = Arc::new(Semaphore::new(cache.cfg.max_connections));
    let conns = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = cache.shutdown.cancelled() => break,
            p = sem.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = cache.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let c = cache.clone();
                conns.spawn(async move {
                    connection(c, stream, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cache accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
}

struct ActiveGuard<'a>(&'a Cache);
impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.cache.connections_active.dec();
    }
}

async fn connection(cache: Arc<Cache>, stream: TcpStream, peer: SocketAddr) {
    cache.metrics.cache.connections_active.inc();
    let _g = ActiveGuard(&cache);
    let mut stream = ClientStream {
        inner: stream,
        write_timeout: cache.cfg.client_write_timeout,
    };
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let read = tokio::select! {
            _ = cache.shutdown.cancelled() => return,
            r = tokio::time::timeout(IDLE_TIMEOUT, http::read_request(&mut stream.inner, &mut buf)) => r,
        };
        let req = match read {
            Err(_) | Ok(Ok(None)) => return,
            Ok(Err(ReadError::Io(_))) => return,
            Ok(Err(e @ ReadError::TooLarge)) => {
                cache.metrics.cache.refuse("bad_request");
                let _ = http::write_text(&mut stream, 431, &e.to_string(), false, false).await;
                return;
            }
            Ok(Err(e)) => {
                cache.metrics.cache.refuse("bad_request");
                let _ = http::write_text(&mut stream, 400, &e.to_string(), false, false).await;
                return;
            }
            Ok(Ok(Some(r))) => r,
        };
        let span = tracing::info_span!("cache_request", method = %req.method, target = %req.target, client = %peer.ip());
        let keep = match handle(&cache, &mut stream, &req, peer.ip())
            .instrument(span)
            .await
        {
            Ok(k) => k,
            Err(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    cache.metrics.cache.write_timeouts.inc();
                    tracing::info!(client = %peer.ip(), error = %e, "closing a client that stopped reading");
                } else {
                    tracing::debug!(error = %e, "cache connection ended");
                }
                return;
            }
        };
        if !keep {
            let _ = stream.inner.shutdown().await;
            return;
        }
    }
}

/// What answering one request did.
struct Served {
    keep: bool,
    hit: bool,
    bytes: u64,
}

impl Served {
    fn plain(keep: bool) -> Served {
        Served {
            keep,
            hit: false,
            bytes: 0,
        }
    }
}

async fn handle(
    cache: &Arc<Cache>,
    s: &mut ClientStream,
    req: &Request,
    client: IpAddr,
) -> io::Result<bool> {
    let served = route(cache, s, req, client).await?;
    cache.count_client(client, served.hit, served.bytes);
    Ok(served.keep)
}

async fn route(
    cache: &Arc<Cache>,
    s: &mut ClientStream,
    req: &Request,
    client: IpAddr,
) -> io::Result<Served> {
    let ka = req.keep_alive() && !req.has_body();
    let head_only = req.is_head();
    let m = &cache.metrics.cache;
    if req.method == "CONNECT" {
        m.refuse("method");
        let k = http::write_text(
            s,
            405,
            "CONNECT is not supported: the Outpost patch cache is not a tunnel. \
             Use http:// repositories with Acquire::http::Proxy.",
            false,
            false,
        )
        .await?;
        return Ok(Served::plain(k));
    }
    if req.method != "GET" && req.method != "HEAD" {
        m.refuse("method");
        let k = http::write_text(
            s,
            405,
            &format!(
                "method {} not allowed: the patch cache serves GET and HEAD only",
                req.method
            ),
            ka,
            false,
        )
        .await?;
        return Ok(Served::plain(k));
    }
    if let Some(file) = req.target.strip_prefix(crate::installer::URL_PREFIX) {
        return serve_agent_package(cache, s, req, file, ka).await;
    }
    let url = match UpstreamUrl::parse_target(&req.target) {
        Ok(u) => u,
        Err(e) => {
            m.refuse("bad_target");
            let k = http::write_text(s, 400, &e.to_string(), ka, head_only).await?;
            return Ok(Served::plain(k));
        }
    };
    if !cache.allow.allows(&url) {
        m.refuse("forbidden_host");
        let k = http::write_text(
            s,
            403,
            &format!(
                "upstream host {} is not allowed by this patch cache: add it to [cache] allow_hosts \
                 or to the appliance's apt sources",
                url.authority()
            ),
            ka,
            head_only,
        )
        .await?;
        return Ok(Served::plain(k));
    }
    if url.kind() == FileKind::InRelease {
        return serve_release(cache, s, req, &url, ka).await;
    }
    let expect = match cache.expected(&url).await {
        Ok(e) => e,
        Err((status, msg)) => {
            m.request("error");
            let k = http::write_text(s, status, &msg, ka, head_only).await?;
            return Ok(Served::plain(k));
        }
    };
    match expect {
        Some(e) => serve_verified(cache, s, req, &url, e, ka, client).await,
        None => serve_unverified(cache, s, req, &url, ka, client).await,
    }
}

/// `GET /outpost/agent/FILE`: the agent package `outpost agent-installer`
/// points endpoints at (only the file [`crate::installer`] finds in the
/// configured directory; any other name is 404). Not verified here: the
/// installer line carries its SHA-256 and checks it on the endpoint.
async fn serve_agent_package(
    cache: &Arc<Cache>,
    s: &mut ClientStream,
    req: &Request,
    file: &str,
    ka: bool,
) -> io::Result<Served> {
    let m = &cache.metrics.cache;
    let head_only = req.is_head();
    let dir = cache.cfg.agent_package_dir.clone();
    let found = match crate::installer::PackageKind::of_name(file) {
        Some(kind) => {
            tokio::task::spawn_blocking(move || crate::installer::find_package_file(&dir, kind))
                .await
                .map_err(io::Error::other)?
        }
        None => Ok(None),
    };
    let path = match found {
        Ok(Some((name, path))) if name == file => path,
        Ok(_) => {
            m.refuse("agent_package_not_found");
            let k = http::write_text(
                s,
                404,
                &format!(
                    "no agent package {file:?} here (`outpost agent-installer` prints the current line)"
                ),
                ka,
                head_only,
            )
            .await?;
            return Ok(Served::plain(k));
        }
        Err(e) => {
            m.request("error");
            tracing::warn!(error = %format!("{e:#}"), "agent package directory");
            let k =
                http::write_text(s, 500, "the agent package cannot be read", ka, head_only).await?;
            return Ok(Served::plain(k));
        }
    };
    let f = std::fs::File::open(&path)?;
    let size = f.metadata()?.len();
    let content_type = if file.ends_with(".deb") {
        "application/vnd.debian.binary-package"
    } else {
        "application/gzip"
    };
    let head = Head::new(200, Some(size)).with("Content-Type", content_type);
    let keep = http::write_head(s, &head, ka).await?;
    if head_only {
        return Ok(Served::plain(keep));
    }
    let n = http::send_file_range(s, &f, 0, size).await?;
    m.request("agent_package");
    Ok(Served {
        keep,
        hit: false,
        bytes: n,
    })
}

fn etag_of(sha: &Sha256) -> String {
    format!("\"{}\"", hex::encode(sha))
}

fn content_type(url: &UpstreamUrl) -> &'static str {
    let n = url.file_name();
    if n.ends_with(".deb") || n.ends_with(".udeb") || n.ends_with(".ddeb") {
        "application/vnd.debian.binary-package"
    } else if n == "InRelease" || n == "Release" || !n.contains('.') {
        "text/plain"
    } else {
        "application/octet-stream"
    }
}

async fn serve_release(
    cache: &Arc<Cache>,
    s: &mut ClientStream,
    req: &Request,
    url: &UpstreamUrl,
    ka: bool,
) -> io::Result<Served> {
    let m = &cache.metrics.cache;
    let (entry, src) = match cache.release(url).await {
        Ok(x) => x,
        Err((status, msg)) => {
            m.request("error");
            let k = http::write_text(s, status, &msg, ka, req.is_head()).await?;
            return Ok(Served::plain(k));
        }
    };
    let label = match src {
        ReleaseSource::Cached => {
            m.hits.inc();
            "hit"
        }
        ReleaseSource::Fetched => {
            m.misses.inc();
            "miss"
        }
        ReleaseSource::Stale => "stale",
    };
    {
        let mut ix = cache.blobs();
        if src == ReleaseSource::Fetched {
            // Just stored (most recently used already): a miss, not a hit.
            ix.note_miss(&entry.sha256);
        } else {
            // Served from the cached copy (fresh, or stale with upstream down).
            ix.touch(&entry.sha256, outpost_storage::now_ms(), &url.to_string());
        }
    }
    // apt revalidates its own copy with If-Modified-Since.
    if let (Some(ims), Some(lm)) = (
        req.header("if-modified-since"),
        entry.last_modified.as_deref(),
    ) && let (Ok(ims), Ok(lm)) = (
        httpdate::parse_http_date(ims),
        httpdate::parse_http_date(lm),
    ) && lm <= ims
    {
        m.request("not_modified");
        let head = Head::new(304, None)
            .with("ETag", etag_of(&entry.sha256))
            .with(
                "Last-Modified",
                entry.last_modified.clone().unwrap_or_default(),
            );
        let k = http::write_head(s, &head, ka).await?;
        return Ok(Served::plain(k));
    }
    m.request(label);
    let path = cache.dir.path(&entry.sha256);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            cache.drop_blob(&entry.sha256);
            let k = http::write_text(
                s,
                500,
                &format!("cached {url} unreadable: {e}"),
                ka,
                req.is_head(),
            )
            .await?;
            return Ok(Served::plain(k));
        }
    };
    let mut extra = vec![("X-Outpost-Cache", label.to_string())];
    if let Some(lm) = &entry.last_modified {
        extra.push(("Last-Modified", lm.clone()));
    }
    serve_file(
        cache,
        s,
        req,
        url,
        &file,
        entry.size,
        &entry.sha256,
        ka,
        extra,
        label == "hit",
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn serve_file(
    cache: &Cache,
    s: &mut ClientStream,
    req: &Request,
    url: &UpstreamUrl,
    file: &std::fs::File,
    size: u64,
    sha: &Sha256,
    ka: bool,
    extra: Vec<(&'static str, String)>,
    hit: bool,
) -> io::Result<Served> {
    let etag = etag_of(sha);
    if req.header("if-none-match") == Some(etag.as_str()) {
        cache.metrics.cache.request("not_modified");
        let k = http::write_head(s, &Head::new(304, None).with("ETag", etag), ka).await?;
        return Ok(Served::plain(k));
    }
    let if_range_ok = req.header("if-range").is_none_or(|v| v == etag);
    let range = if if_range_ok {
        http::parse_range(req.header("range"), size)
    } else {
        RangeAnswer::Full
    };
    let (head, start, end) = match range {
        RangeAnswer::Full => (Head::new(200, Some(size)), 0, size),
        RangeAnswer::Partial(r) => (
            Head::new(206, Some(r.end - r.start)).with(
                "Content-Range",
                format!("bytes {}-{}/{size}", r.start, r.end - 1),
            ),
            r.start,
            r.end,
        ),
        RangeAnswer::Unsatisfiable => {
            cache.metrics.cache.refuse("bad_range");
            let head = Head::new(416, Some(0)).with("Content-Range", format!("bytes */{size}"));
            let k = http::write_head(s, &head, ka).await?;
            return Ok(Served::plain(k));
        }
    };
    let mut head = head
        .with("Content-Type", content_type(url))
        .with("ETag", etag)
        .with("Accept-Ranges", "bytes");
    head.headers.extend(extra);
    let keep = http::write_head(s, &head, ka).await?;
    if req.is_head() {
        return Ok(Served {
            keep,
            hit,
            bytes: 0,
        });
    }
    let n = http::send_file_range(s, file, start, end).await?;
    cache.metrics.cache.served_cache_bytes.inc_by(n);
    Ok(Served {
        keep,
        hit,
        bytes: n,
    })
}

async fn serve_verified(
    cache: &Arc<Cache>,
    s: &mut ClientStream,
    req: &Request,
    url: &UpstreamUrl,
    e: Expect,
    ka: bool,
    client: IpAddr,
) -> io::Result<Served> {
    let m = &cache.metrics.cache;
    let now = outpost_storage::now_ms();
    let url_s = url.to_string();
    if cache.blobs().touch(&e.sha256, now, &url_s) {
        let path = cache.dir.path(&e.sha256);
        match std::fs::File::open(&path) {
            Ok(file) => {
                // The same index reached through another mirror: its package
                // entries are relative to that mirror's root.
                if !e.index_name.is_empty()
                    && outpost_apt::packages::package_index(&e.index_name).is_some()
                    && !cache.index_recorded(url, &e.sha256)
                    && let Err(err) = cache
                        .record_index_entries(url, &e.index_name, &path, e.sha256)
                        .await
                {
                    tracing::warn!(%url, error = %err, "recording package entries");
                }
                m.hits.inc();
                m.request("hit");
                return serve_file(
                    cache,
                    s,
                    req,
                    url,
                    &file,
                    e.size,
                    &e.sha256,
                    ka,
                    vec![("X-Outpost-Cache", "hit".into())],
                    true,
                )
                .await;
            }
            Err(err) => {
                tracing::warn!(%url, error = %err, "cached file missing; fetching again");
                cache.drop_blob(&e.sha256);
            }
        }
    }
    if req.is_head() {
        // The verified index states size and hash: no download needed.
        m.request("head");
        let head = Head::new(200, Some(e.size))
            .with("Content-Type", content_type(url))
            .with("ETag", etag_of(&e.sha256))
            .with("Accept-Ranges", "bytes")
            .with("X-Outpost-Cache", "miss");
        let k = http::write_head(s, &head, ka).await?;
        return Ok(Served::plain(k));
    }
    let (fl, started, _interest) = match cache
        .join_or_start(url, &e, Requester::Client(client))
        .await
    {
        Ok(x) => x,
        Err((status, msg)) => {
            m.request("error");
            let k = http::write_text(s, status, &msg, ka, false).await?;
            return Ok(Served::plain(k));
        }
    };
    if started {
        m.misses.inc();
        m.request("miss");
    } else {
        m.coalesced.inc();
        m.request("coalesced");
    }
    serve_inflight(cache, s, req, url, &fl, ka).await
}

/// Streams a download in progress; the last byte is held back until the
/// file is verified.
async fn serve_inflight(
    cache: &Cache,
    s: &mut ClientStream,
    req: &Request,
    url: &UpstreamUrl,
    fl: &InFlight,
    ka: bool,
) -> io::Result<Served> {
    let size = fl.expect.size;
    let mut rx = fl.progress.subscribe();
    let wait_all = size <= BUFFER_BEFORE_ANSWER_BYTES;
    loop {
        let p = rx.borrow_and_update().clone();
        match p {
            Progress::Failed { status, message } => {
                let k = http::write_text(s, status, &message, ka, false).await?;
                return Ok(Served::plain(k));
            }
            Progress::Complete => break,
            Progress::Receiving(n) if !wait_all && n > 0 => break,
            Progress::Receiving(_) => {}
        }
        // Waiting for a small file to be verified: notice a client that
        // goes away meanwhile (its interest then ends, and the download
        // with it if nobody else wants it).
        tokio::select! {
            r = rx.changed() => if r.is_err() {
                return Err(io::Error::other("download vanished"));
            },
            _ = client_gone(&s.inner) => {
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the client went away"));
            }
        }
    }
    let etag = etag_of(&fl.expect.sha256);
    let (head, start, end) = match http::parse_range(req.header("range"), size) {
        RangeAnswer::Full => (Head::new(200, Some(size)), 0, size),
        RangeAnswer::Partial(r) => (
            Head::new(206, Some(r.end - r.start)).with(
                "Content-Range",
                format!("bytes {}-{}/{size}", r.start, r.end - 1),
            ),
            r.start,
            r.end,
        ),
        RangeAnswer::Unsatisfiable => {
            cache.metrics.cache.refuse("bad_range");
            let head = Head::new(416, Some(0)).with("Content-Range", format!("bytes */{size}"));
            let k = http::write_head(s, &head, ka).await?;
            return Ok(Served::plain(k));
        }
    };
    let head = head
        .with("Content-Type", content_type(url))
        .with("ETag", etag)
        .with("Accept-Ranges", "bytes")
        .with("X-Outpost-Cache", "miss");
    let keep = http::write_head(s, &head, ka).await?;
    let mut off = start;
    let mut sent = 0u64;
    loop {
        let avail = match &*rx.borrow_and_update() {
            Progress::Receiving(n) => (*n).min(size.saturating_sub(1)),
            Progress::Complete => size,
            Progress::Failed { message, .. } => {
                tracing::warn!(%url, %message, "closing a client mid-download: verification failed");
                return Err(io::Error::other(message.to_string()));
            }
        };
        let upto = avail.min(end);
        if off < upto {
            let n = http::send_file_range(s, &fl.file, off, upto).await?;
            cache.metrics.cache.served_upstream_bytes.inc_by(n);
            sent += n;
            off = upto;
            continue;
        }
        if off >= end {
            break;
        }
        if rx.changed().await.is_err() {
            return Err(io::Error::other("download vanished"));
        }
    }
    Ok(Served {
        keep,
        hit: false,
        bytes: sent,
    })
}

/// Resolves when the client closed its side of the connection (a
/// pipelined next request is not a close: then it never resolves).
async fn client_gone(s: &TcpStream) {
    let mut b = [0u8; 1];
    match s.peek(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

async fn serve_unverified(
    cache: &Arc<Cache>,
    s: &mut ClientStream,
    req: &Request,
    url: &UpstreamUrl,
    ka: bool,
    client: IpAddr,
) -> io::Result<Served> {
    let m = &cache.metrics.cache;
    if cache.cfg.unverified == Unverified::Refuse {
        m.refuse("unverified");
        let k = http::write_text(
            s,
            403,
            &format!(
                "no verified index covers {url}, and this cache refuses unverified files \
                 ([cache] unverified = \"refuse\")"
            ),
            ka,
            req.is_head(),
        )
        .await?;
        return Ok(Served::plain(k));
    }
    // A pass-through is an upstream download too: it needs a slot.
    let _slot = match cache.download_slot(Requester::Client(client)).await {
        Ok(slot) => slot,
        Err((status, msg)) => {
            let k = http::write_text(s, status, &msg, ka, req.is_head()).await?;
            return Ok(Served::plain(k));
        }
    };
    m.request("passthrough");
    m.upstream_requests.inc();
    let validators = Validators {
        etag: req.header("if-none-match").map(str::to_string),
        last_modified: req.header("if-modified-since").map(str::to_string),
    };
    let resp = match cache
        .upstream
        .request(&req.method, url, &validators, None)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let (status, msg) = cache.upstream_failure(e);
            let k = http::write_text(s, status, &msg, ka, req.is_head()).await?;
            return Ok(Served::plain(k));
        }
    };
    let status = resp.status().as_u16();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let length: Option<u64> = h("content-length").and_then(|v| v.parse().ok());
    let cap = cache.cfg.max_unverified_bytes;
    if length.is_some_and(|l| l > cap) {
        m.refuse("too_large");
        let k = http::write_text(
            s,
            502,
            &format!("{url} is larger than [cache] max_unverified_bytes ({cap}) and no verified index covers it"),
            ka,
            req.is_head(),
        )
        .await?;
        return Ok(Served::plain(k));
    }
    let no_body = req.is_head() || status == 304 || status == 204;
    let mut head = Head::new(status, length).with("X-Outpost-Cache", "passthrough");
    for name in ["content-type", "last-modified", "etag"] {
        if let Some(v) = h(name) {
            head.headers.push((
                match name {
                    "content-type" => "Content-Type",
                    "last-modified" => "Last-Modified",
                    _ => "ETag",
                },
                v,
            ));
        }
    }
    if no_body && head.content_length.is_none() {
        head.content_length = Some(0);
    }
    let keep = http::write_head(s, &head, ka).await?;
    if no_body {
        return Ok(Served::plain(keep));
    }
    let mut body = resp.into_body();
    let mut sent = 0u64;
    loop {
        let chunk = match cache.upstream.next_chunk(url, &mut body).await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                cache.upstream_failure(e);
                return Err(io::Error::other("upstream body failed"));
            }
        };
        sent += chunk.len() as u64;
        m.upstream_bytes.inc_by(chunk.len() as u64);
        if sent > cap || length.is_some_and(|l| sent > l) {
            m.refuse("too_large");
            return Err(io::Error::other("pass-through body over its cap"));
        }
        s.write_all(&chunk).await?;
        m.served_upstream_bytes.inc_by(chunk.len() as u64);
    }
    Ok(Served {
        keep,
        hit: false,
        bytes: sent,
    })
}
