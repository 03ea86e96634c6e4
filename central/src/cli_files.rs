//! `outpost-central files push|pull|show|list|cancel`: a thin client over
//! central's `/api/v1/files` (like the appliance's `outpost files`). `push`
//! prints the transfer id (`--wait`: waits for the device to hold the
//! file); `pull` waits until central holds the verified content, downloads
//! it, checks its SHA-256 and writes LOCAL, then prints the hash; `show`
//! and `cancel` print `STATE DIRECTION ID PATH SIZE SHA256` (`--json`: the
//! record); `list` prints one `STATE DIRECTION ID SITE DEVICE PATH SIZE`
//! line per transfer, newest first (`--json`: the records).
//!
//! This module owns the CLI's arguments and output only; every rule is
//! the API's.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cli::{Conn, call, call_raw};

#[derive(Debug, Subcommand)]
pub enum FilesCmd {
    /// Pushes LOCAL to REMOTE on a device of a site; prints the transfer id.
    Push {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        site: String,
        #[arg(long)]
        device: String,
        /// Octal mode of the written file, e.g. 0644.
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        /// Wait until the device holds the file (exit 1 if it failed).
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        local: std::path::PathBuf,
        remote: String,
    },
    /// Pulls REMOTE from a device of a site into LOCAL (waits for it,
    /// checks its SHA-256); prints the hash.
    Pull {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        site: String,
        #[arg(long)]
        device: String,
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        remote: String,
        local: std::path::PathBuf,
    },
    /// Lists the transfers you may see, newest first.
    List {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        device: Option<String>,
        /// The command's state, e.g. `completed` or `queued_at_central`.
        #[arg(long)]
        state: Option<String>,
        /// At most this many (the API caps it at 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Cancels a transfer (its command); a push still streaming to the
    /// site stops there.
    Cancel {
        #[command(flatten)]
        conn: Conn,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Shows one transfer.
    Show {
        #[command(flatten)]
        conn: Conn,
        id: String,
        #[arg(long)]
        json: bool,
    },
}

fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// `STATE DIRECTION ID PATH SIZE SHA256`.
pub fn show_line(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
    format!(
        "{} {} {} {} {} {}",
        s("state"),
        s("direction"),
        s("id"),
        s("path"),
        v.get("size_bytes")
            .and_then(|x| x.as_u64())
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into()),
        s("sha256"),
    )
}

/// `STATE DIRECTION ID SITE DEVICE PATH SIZE` (a line of `files list`).
pub fn list_line(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
    format!(
        "{} {} {} {} {} {} {}",
        s("state"),
        s("direction"),
        s("id"),
        s("site"),
        s("device"),
        s("path"),
        v.get("size_bytes")
            .and_then(|x| x.as_u64())
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into()),
    )
}

/// The query of `GET /api/v1/files` for `files list`.
pub fn list_path(
    site: Option<&str>,
    device: Option<&str>,
    state: Option<&str>,
    limit: usize,
) -> String {
    let mut p = format!("/api/v1/files?limit={limit}");
    for (k, v) in [("site", site), ("device", device), ("state", state)] {
        if let Some(v) = v {
            p.push_str(&format!("&{k}={}", enc(v)));
        }
    }
    p
}

const TERMINAL: [&str; 6] = [
    "completed",
    "failed",
    "timed_out",
    "cancelled",
    "expired",
    "interrupted",
];

fn state(v: &Value) -> &str {
    v.get("state").and_then(|s| s.as_str()).unwrap_or("")
}

async fn wait_for(
    conn: &Conn,
    id: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let until = Instant::now() + timeout;
    loop {
        let v = call(conn, "GET", &format!("/api/v1/files/{id}"), None).await?;
        if done(&v) {
            return Ok(v);
        }
        if TERMINAL.contains(&state(&v)) && state(&v) != "completed" {
            let why = v
                .get("reason")
                .and_then(|r| r.as_str())
                .or_else(|| v.get("failure").and_then(|r| r.as_str()))
                .unwrap_or("no reason given");
            bail!("transfer {id} {}: {why}", state(&v));
        }
        if let Some(f) = v.get("failure").and_then(|f| f.as_str()) {
            bail!("transfer {id} failed: {f}");
        }
        if Instant::now() >= until {
            bail!(
                "transfer {id} is still {} after {}",
                state(&v),
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn upload(conn: &Conn, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{}{}", conn.api.trim_end_matches('/'), path);
    let req = Request::builder()
        .method("POST")
        .uri(&url)
        .header("authorization", format!("Bearer {}", conn.token))
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body)))
        .with_context(|| format!("building a request to {url}"))?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("cannot reach central's API at {url} (is it running? --api)"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer from {url}"))?
        .to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = v
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("{status}: {msg}");
    }
    Ok(v)
}

pub async fn run(cmd: FilesCmd) -> anyhow::Result<i32> {
    match cmd {
        FilesCmd::Push {
            conn,
            site,
            device,
            mode,
            owner,
            wait,
            timeout,
            local,
            remote,
        } => {
            let body = tokio::fs::read(&local)
                .await
                .with_context(|| format!("reading {}", local.display()))?;
            let mut path = format!(
                "/api/v1/files/push?site={}&device={}&path={}",
                enc(&site),
                enc(&device),
                enc(&remote)
            );
            if let Some(m) = mode {
                path.push_str(&format!("&mode={}", enc(&m)));
            }
            if let Some(o) = owner {
                path.push_str(&format!("&owner={}", enc(&o)));
            }
            let v = upload(&conn, &path, body).await?;
            let id = v
                .get("id")
                .and_then(|i| i.as_str())
                .ok_or_else(|| anyhow!("central answered no transfer id"))?
                .to_string();
            println!("{id}");
            if wait {
                wait_for(&conn, &id, timeout, |v| state(v) == "completed").await?;
            }
            Ok(0)
        }
        FilesCmd::Pull {
            conn,
            site,
            device,
            timeout,
            remote,
            local,
        } => {
            let v = call(
                &conn,
                "POST",
                "/api/v1/files/pull",
                Some(json!({"site": site, "device": device, "path": remote})),
            )
            .await?;
            let id = v
                .get("id")
                .and_then(|i| i.as_str())
                .ok_or_else(|| anyhow!("central answered no transfer id"))?
                .to_string();
            let v = wait_for(&conn, &id, timeout, |v| {
                v.get("content_available").and_then(|b| b.as_bool()) == Some(true)
            })
            .await?;
            let want = v
                .get("sha256")
                .and_then(|s| s.as_str())
                .ok_or_else(|| anyhow!("transfer {id} has no hash"))?
                .to_string();
            let bytes = call_raw(
                &conn,
                "GET",
                &format!("/api/v1/files/{id}/content"),
                None,
                timeout,
            )
            .await?;
            let got = hex::encode(Sha256::digest(&bytes));
            if got != want {
                bail!("downloaded content has sha256 {got}, central announced {want}");
            }
            tokio::fs::write(&local, &bytes)
                .await
                .with_context(|| format!("writing {}", local.display()))?;
            println!("{got}");
            Ok(0)
        }
        FilesCmd::List {
            conn,
            site,
            device,
            state,
            limit,
            json,
        } => {
            let path = list_path(site.as_deref(), device.as_deref(), state.as_deref(), limit);
            let v = call(&conn, "GET", &path, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for t in v.as_array().into_iter().flatten() {
                    println!("{}", list_line(t));
                }
            }
            Ok(0)
        }
        FilesCmd::Cancel { conn, id, json } => {
            let v = call(
                &conn,
                "POST",
                &format!("/api/v1/files/{}/cancel", enc(&id)),
                None,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", show_line(&v));
            }
            Ok(0)
        }
        FilesCmd::Show { conn, id, json } => {
            let v = call(&conn, "GET", &format!("/api/v1/files/{}", enc(&id)), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", show_line(&v));
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_list_builds_its_query_and_prints_one_line_per_transfer() {
        assert_eq!(list_path(None, None, None, 100), "/api/v1/files?limit=100");
        assert_eq!(
            list_path(Some("s 1"), Some("00ff"), Some("completed"), 5),
            "/api/v1/files?limit=5&site=s%201&device=00ff&state=completed"
        );
        let v = json!({"state": "completed", "direction": "pull", "id": "t1",
            "site": "s-1", "device": "00ff", "path": "/etc/hosts", "size_bytes": 12});
        assert_eq!(list_line(&v), "completed pull t1 s-1 00ff /etc/hosts 12");
        let v = json!({"state": "queued_at_central", "direction": "pull", "id": "t2",
            "site": "s-1", "device": "00ff", "path": "/x", "size_bytes": null});
        assert_eq!(list_line(&v), "queued_at_central pull t2 s-1 00ff /x -");
    }
}
