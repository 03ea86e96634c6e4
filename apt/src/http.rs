//! The request side of the cache's HTTP/1.1: a request head parsed from
//! bytes with `httparse` (bounded), and the `Range` header against a body
//! of known length. No I/O: the appliance reads the socket and calls
//! [`parse_request`] on what it has so far.

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

/// Why a request head is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
}

/// Parses one request head at the start of `buf`: the request and the
/// bytes it took, `None` while it is incomplete (read more), or an error
/// (an incomplete head of [`MAX_HEAD_BYTES`] or more is too large).
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
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
            Ok(Some((out, n)))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
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
                // `last` may be u64::MAX: no `+ 1` overflow.
                Ok(last) if last >= start => last.saturating_add(1).min(len),
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

    #[test]
    fn a_range_ending_at_u64_max_does_not_overflow() {
        assert_eq!(
            parse_range(Some("bytes=5-18446744073709551615"), 100),
            RangeAnswer::Partial(ByteRange { start: 5, end: 100 })
        );
        assert_eq!(
            parse_range(Some("bytes=0-18446744073709551615"), u64::MAX),
            RangeAnswer::Partial(ByteRange {
                start: 0,
                end: u64::MAX
            })
        );
        assert_eq!(
            parse_range(Some("bytes=18446744073709551615-18446744073709551615"), 10),
            RangeAnswer::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-18446744073709551615"), 10),
            RangeAnswer::Partial(ByteRange { start: 0, end: 10 })
        );
    }
}
