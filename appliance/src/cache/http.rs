//! The client side of the cache's HTTP/1.1: request heads read from the
//! socket and parsed by [`outpost_apt::http`] (bounded), responses written
//! directly to the socket, and
//! file bodies sent with `sendfile(2)` from the page cache to the socket
//! (zero-copy: hyper's server cannot hand a file descriptor to the kernel,
//! and cache hits are the cache's hot path). Keep-alive, HEAD, single
//! byte ranges. No request bodies: the cache serves GET and HEAD only.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use bytes::{Buf, BytesMut};
use outpost_apt::http::HeadError;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

pub use outpost_apt::http::{ByteRange, MAX_HEAD_BYTES, RangeAnswer, Request, parse_range};

/// A client connection whose writes fail with `TimedOut` when the client
/// accepts no bytes for `write_timeout` (a client that stops reading
/// frees its connection slot).
#[derive(Debug)]
pub struct ClientStream {
    pub inner: TcpStream,
    pub write_timeout: std::time::Duration,
}

fn timed_out(t: std::time::Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the client accepted no bytes for {t:?}"),
    )
}

impl ClientStream {
    /// Writes all of `buf`, each wait for the socket bounded by `write_timeout`.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let t = self.write_timeout;
        let mut off = 0;
        while off < buf.len() {
            let n = tokio::time::timeout(t, self.inner.write(&buf[off..]))
                .await
                .map_err(|_| timed_out(t))??;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            off += n;
        }
        Ok(())
    }
}

/// Why reading a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("request head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one request head; `None` at a clean end of the connection.
pub async fn read_request(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Option<Request>, ReadError> {
    loop {
        if !buf.is_empty() {
            match outpost_apt::http::parse_request(buf) {
                Ok(Some((req, n))) => {
                    buf.advance(n);
                    return Ok(Some(req));
                }
                Ok(None) => {}
                Err(HeadError::TooLarge) => return Err(ReadError::TooLarge),
                Err(HeadError::Malformed(m)) => return Err(ReadError::Malformed(m)),
            }
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(ReadError::TooLarge);
        }
        buf.reserve(4096);
        let n = stream.read_buf(buf).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Malformed("connection closed mid-request".into()))
            };
        }
    }
}

/// A response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// `None`: body delimited by closing the connection.
    pub content_length: Option<u64>,
}

impl Head {
    pub fn new(status: u16, content_length: Option<u64>) -> Head {
        Head {
            status,
            headers: Vec::new(),
            content_length,
        }
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Head {
        self.headers.push((name, value.into()));
        self
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Writes a response head. Returns whether the connection may be reused.
pub async fn write_head(
    stream: &mut ClientStream,
    head: &Head,
    keep_alive: bool,
) -> io::Result<bool> {
    let keep = keep_alive && (head.content_length.is_some() || head.status == 304);
    let mut s = format!("HTTP/1.1 {} {}\r\n", head.status, reason(head.status));
    for (k, v) in &head.headers {
        s.push_str(k);
        s.push_str(": ");
        s.push_str(v);
        s.push_str("\r\n");
    }
    if let Some(n) = head.content_length {
        s.push_str(&format!("Content-Length: {n}\r\n"));
    }
    s.push_str(if keep {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    stream.write_all(s.as_bytes()).await?;
    Ok(keep)
}

/// Writes a complete small response (errors, refusals).
pub async fn write_text(
    stream: &mut ClientStream,
    status: u16,
    message: &str,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<bool> {
    let body = format!("{message}\n");
    let head = Head::new(status, Some(body.len() as u64))
        .with("Content-Type", "text/plain; charset=utf-8")
        .with("X-Outpost-Cache", "error");
    let keep = write_head(stream, &head, keep_alive).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    Ok(keep)
}

/// Sends `file[start..end)` to the socket with `sendfile(2)`; the file's
/// own position is not used, so many connections share one descriptor.
pub async fn send_file_range(
    client: &ClientStream,
    file: &File,
    start: u64,
    end: u64,
) -> io::Result<u64> {
    let stream = &client.inner;
    let t = client.write_timeout;
    let mut off = start;
    while off < end {
        let want = usize::try_from((end - off).min(8 * 1024 * 1024)).unwrap_or(8 * 1024 * 1024);
        let res = tokio::time::timeout(
            t,
            stream.async_io(Interest::WRITABLE, || {
                let mut o = off;
                rustix::fs::sendfile(stream.as_fd(), file.as_fd(), Some(&mut o), want)
                    .map_err(io::Error::from)
            }),
        )
        .await
        .map_err(|_| timed_out(t))?;
        match res {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached file shorter than its index entry",
                ));
            }
            Ok(n) => off += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(off - start)
}
