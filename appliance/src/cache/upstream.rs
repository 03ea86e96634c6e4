//! Requests to upstream repositories (hyper client, plain HTTP, pooled
//! connections), with a connect/first-byte timeout. Bodies are read frame
//! by frame by the caller so that every download is bounded by the size a
//! verified index states.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::allow::AllowList;
use super::url::UpstreamUrl;

/// An upstream answer whose body is still to be read.
pub type UpstreamResponse = hyper::Response<Incoming>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {0} unreachable: {1}")]
    Unreachable(String, String),
    #[error("upstream {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("upstream {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("upstream {url} sent more than the {limit} bytes {why}")]
    TooLarge {
        url: String,
        limit: u64,
        why: &'static str,
    },
    #[error("upstream {url} closed the body after {got} of {want} bytes")]
    Short { url: String, got: u64, want: u64 },
    #[error("reading the body from upstream {0}: {1}")]
    Body(String, String),
    #[error("upstream {url} redirected {why}")]
    Redirect { url: String, why: String },
    #[error("upstream {url} redirected to {to}, which is not in the cache's allowed hosts")]
    RedirectNotAllowed { url: String, to: String },
}

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// Conditional request validators.
#[derive(Debug, Clone, Default)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// The shared upstream client. Follows redirects (up to
/// [`MAX_REDIRECTS`]) to hosts the allow list names; the answer is the
/// final one, and callers keep the URL they asked for as the file's name.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
    allow: AllowList,
}

impl Upstream {
    pub fn new(timeout: Duration, allow: AllowList) -> Upstream {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(timeout));
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .build(conn);
        Upstream {
            client,
            timeout,
            allow,
        }
    }

    /// Sends a request and waits for the response head, following
    /// redirects (301, 302, 303, 307, 308) to allowed hosts.
    pub async fn request(
        &self,
        method: &str,
        url: &UpstreamUrl,
        validators: &Validators,
        range_from: Option<u64>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut at = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let resp = self
                .request_once(method, &at, validators, range_from)
                .await?;
            if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(resp);
            }
            let location = resp
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| UpstreamError::Redirect {
                    url: at.to_string(),
                    why: "without a Location".into(),
                })?;
            let next = at.redirect(location).map_err(|e| UpstreamError::Redirect {
                url: at.to_string(),
                why: format!("to {location:?}: {e}"),
            })?;
            if !self.allow.allows(&next) {
                return Err(UpstreamError::RedirectNotAllowed {
                    url: at.to_string(),
                    to: next.authority(),
                });
            }
            tracing::debug!(from = %at, to = %next, "following an upstream redirect");
            at = next;
        }
        Err(UpstreamError::Redirect {
            url: url.to_string(),
            why: format!("more than {MAX_REDIRECTS} times"),
        })
    }

    async fn request_once(
        &self,
        method: &str,
        url: &UpstreamUrl,
        validators: &Validators,
        range_from: Option<u64>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(url.to_string())
            .header("host", url.authority())
            .header(
                "user-agent",
                concat!("outpost-cache/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(e) = &validators.etag {
            b = b.header("if-none-match", e);
        }
        if let Some(lm) = &validators.last_modified {
            b = b.header("if-modified-since", lm);
        }
        if let Some(from) = range_from {
            b = b.header("range", format!("bytes={from}-"));
        }
        let req = b
            .body(Empty::new())
            .map_err(|e| UpstreamError::Unreachable(url.to_string(), e.to_string()))?;
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(url.to_string(), self.timeout)),
            Ok(Err(e)) => Err(UpstreamError::Unreachable(url.to_string(), error_chain(&e))),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Next body chunk within the timeout; `None` at the end.
    pub async fn next_chunk(
        &self,
        url: &UpstreamUrl,
        body: &mut Incoming,
    ) -> Result<Option<Bytes>, UpstreamError> {
        loop {
            match tokio::time::timeout(self.timeout, body.frame()).await {
                Err(_) => return Err(UpstreamError::Timeout(url.to_string(), self.timeout)),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(UpstreamError::Body(url.to_string(), e.to_string()));
                }
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        return Ok(Some(d));
                    }
                }
            }
        }
    }

    /// Reads a whole body, refusing more than `limit` bytes.
    pub async fn read_body(
        &self,
        url: &UpstreamUrl,
        mut body: Incoming,
        limit: u64,
    ) -> Result<Vec<u8>, UpstreamError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk(url, &mut body).await? {
            if (out.len() + chunk.len()) as u64 > limit {
                return Err(UpstreamError::TooLarge {
                    url: url.to_string(),
                    limit,
                    why: "allowed for this file",
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
