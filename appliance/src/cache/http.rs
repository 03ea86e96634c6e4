//! The client side of the cache's HTTP/1.1: request heads parsed with
//! `httparse` (bounded), responses written directly to the socket, and
//! file bodies sent with `sendfile(2)` from the page cache to the socket
//! (zero-copy: hyper's server cannot hand a file descriptor to the kernel,
//! and cache hits are the cache's hot path). Keep-alive, HEAD, single
//! byte ranges. No request bodies: the cache serves GET and HEAD only.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Largest request head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// HTTP/1.x minor version.
    pub minor: u8,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection stays open after the answer.
    pub fn keep_alive(&self) -> bool {
        let conn = self
            .header("connection")
            .or_else(|| self.header("proxy-connection"))
            .map(str::to_ascii_lowercase);
        match conn.as_deref() {
            Some(c) if c.contains("close") => false,
            Some(c) if c.contains("keep-alive") => true,
            _ => self.minor >= 1,
        }
    }

    pub fn has_body(&self) -> bool {
        self.header("transfer-encoding").is_some()
            || self
                .header("content-length")
                .is_some_and(|v| v.trim() != "0")
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
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
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let out = Request {
                        method: req.method.unwrap_or("").to_string(),
                        target: req.path.unwrap_or("").to_string(),
                        minor: req.version.unwrap_or(0),
                        headers: req
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(h.value).trim().to_string(),
                                )
                            })
                            .collect(),
                    };
                    buf.advance(n);
                    return Ok(Some(out));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(ReadError::Malformed(e.to_string())),
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

/// A byte range of a body of known length: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// Result of applying a `Range` header to a body of length `len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No (usable) range: the whole body, 200.
    Full,
    /// 206 with this range.
    Partial(ByteRange),
    /// 416.
    Unsatisfiable,
}

/// Single `bytes=` ranges only; anything else is ignored (a full answer is
/// allowed by RFC 9110).
pub fn parse_range(header: Option<&str>, len: u64) -> RangeAnswer {
    let Some(h) = header else {
        return RangeAnswer::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        // Suffix: the last N bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeAnswer::Full;
        };
        if n == 0 || len == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        ByteRange {
            start: len.saturating_sub(n),
            end: len,
        }
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return RangeAnswer::Full;
        };
        let end = if b.is_empty() {
            len
        } else {
            match b.parse::<u64>() {
                Ok(last) if last >= start => (last + 1).min(len),
                _ => return RangeAnswer::Full,
            }
        };
        if start >= len {
            return RangeAnswer::Unsatisfiable;
        }
        ByteRange { start, end }
    };
    RangeAnswer::Partial(range)
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
pub async fn write_head(stream: &mut TcpStream, head: &Head, keep_alive: bool) -> io::Result<bool> {
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
    stream: &mut TcpStream,
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
    stream: &TcpStream,
    file: &File,
    start: u64,
    end: u64,
) -> io::Result<u64> {
    let mut off = start;
    while off < end {
        let want = usize::try_from((end - off).min(8 * 1024 * 1024)).unwrap_or(8 * 1024 * 1024);
        let res = stream
            .async_io(Interest::WRITABLE, || {
                let mut o = off;
                rustix::fs::sendfile(stream.as_fd(), file.as_fd(), Some(&mut o), want)
                    .map_err(io::Error::from)
            })
            .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |h: &str| parse_range(Some(h), 100);
        assert_eq!(
            r("bytes=0-9"),
            RangeAnswer::Partial(ByteRange { start: 0, end: 10 })
        );
        assert_eq!(
            r("bytes=90-"),
            RangeAnswer::Partial(ByteRange {
                start: 90,
                end: 100
            })
        );
        assert_eq!(
            r("bytes=-5"),
            RangeAnswer::Partial(ByteRange {
                start: 95,
                end: 100
            })
        );
        assert_eq!(
            r("bytes=50-500"),
            RangeAnswer::Partial(ByteRange {
                start: 50,
                end: 100
            })
        );
        assert_eq!(r("bytes=100-"), RangeAnswer::Unsatisfiable);
        assert_eq!(r("bytes=5-1"), RangeAnswer::Full);
        assert_eq!(r("bytes=0-1,5-6"), RangeAnswer::Full);
        assert_eq!(r("items=0-1"), RangeAnswer::Full);
        assert_eq!(parse_range(None, 100), RangeAnswer::Full);
    }
}
