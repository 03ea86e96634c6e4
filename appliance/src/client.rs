//! The admin CLI's client for the running appliance's admin API. Finds the
//! API address and token in the data directory (`admin.addr`,
//! `admin.token`) unless `--api`/`--token` are given.

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::site::DataDir;

/// Where and how to reach the admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: String,
}

impl AdminClient {
    /// From explicit values, or the data directory.
    pub fn locate(
        data: &DataDir,
        api: Option<String>,
        token: Option<String>,
    ) -> anyhow::Result<AdminClient> {
        let base = match api {
            Some(a) => a.trim_end_matches('/').to_string(),
            None => {
                let p = data.admin_addr();
                let addr = std::fs::read_to_string(&p).with_context(|| {
                    format!(
                        "reading {} (is `outpost serve --data {}` running? or pass --api URL)",
                        p.display(),
                        data.0.display()
                    )
                })?;
                format!("http://{}", addr.trim())
            }
        };
        let token = match token {
            Some(t) => t,
            None => {
                let p = data.admin_token();
                std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {} (or pass --token)", p.display()))?
                    .trim()
                    .to_string()
            }
        };
        Ok(AdminClient { base, token })
    }

    /// One request; non-2xx answers become errors carrying the API's message.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Bytes> {
        let ct = body.as_ref().map(|_| "application/json");
        self.request_typed(method, path, body, ct, 30).await
    }

    /// POST a raw body (`application/octet-stream`), returning the answer
    /// (30 s, plus a second per MiB of body for the upload).
    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Bytes> {
        let secs = 30 + (body.len() as u64 >> 20);
        self.request_typed(
            "POST",
            path,
            Some(body),
            Some("application/octet-stream"),
            secs,
        )
        .await
    }

    async fn request_typed(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
        timeout_secs: u64,
    ) -> anyhow::Result<Bytes> {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .with_context(|| format!("building request to {url}"))?;
        let resp = tokio::time::timeout(
            std::time::Duration::from_secs(timeout_secs),
            client.request(req),
        )
        .await
        .map_err(|_| anyhow!("{url}: no answer within {timeout_secs}s"))?
        .with_context(|| {
            format!("cannot reach the admin API at {url} (is the appliance running?)")
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer from {url}"))?
            .to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{status}: {msg}");
        }
        Ok(bytes)
    }

    /// GET returning JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let b = self.request("GET", path, None).await?;
        serde_json::from_slice(&b).with_context(|| format!("decoding the answer of {path}"))
    }

    /// GET returning the raw body.
    pub async fn get_raw(&self, path: &str) -> anyhow::Result<Bytes> {
        self.request("GET", path, None).await
    }

    /// POST a JSON body, returning JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.post_waiting(path, body, 30).await
    }

    /// [`Self::post`] for a request that may take up to `timeout_secs`
    /// (one that waits on the network beyond the appliance).
    pub async fn post_waiting<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout_secs: u64,
    ) -> anyhow::Result<T> {
        let b = self
            .request_typed(
                "POST",
                path,
                Some(serde_json::to_vec(body)?),
                Some("application/json"),
                timeout_secs,
            )
            .await?;
        serde_json::from_slice(&b).with_context(|| format!("decoding the answer of {path}"))
    }
}
