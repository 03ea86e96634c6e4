//! `outpost-central commands run|list|show`: a thin client over central's
//! `/api/v1/commands` (like the appliance's `outpost commands`), for
//! technicians with an API token (`outpost-central token create ... --role
//! technician`). Plain values on stdout (`--json` for the records), errors
//! on stderr, exit code 0 only on success; `run --wait` exits with the
//! command's code ([`exit_code`]).
//!
//! This module owns the CLI's arguments, its HTTP client and its output
//! only; every rule is the API's.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::commands::CentralCommandState;

/// Where the API is and who asks.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// Central's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    pub api: String,
    /// An API token (or a session's), e.g. from `outpost-central token create`.
    #[arg(long, env = "OUTPOST_CENTRAL_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Debug, Subcommand)]
pub enum CommandsCmd {
    /// Queues a command line (or a script of central's library) for a
    /// device of a site; prints the command's id.
    Run {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        site: String,
        #[arg(long)]
        device: String,
        /// Kill it after this long (default 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Drop it if the site or device stays offline this long (default 24h).
        #[arg(long, value_parser = humantime::parse_duration)]
        expiry: Option<Duration>,
        #[arg(long)]
        run_as: Option<String>,
        /// Run this script of the library instead of a command line (the
        /// trailing words are its arguments).
        #[arg(long)]
        script: Option<String>,
        #[arg(long, requires = "script")]
        script_version: Option<u32>,
        /// Wait for the end: print the output and exit with the command's code.
        #[arg(long)]
        wait: bool,
        /// The command line (or the script's arguments).
        #[arg(last = true)]
        words: Vec<String>,
    },
    /// Lists commands, newest first (`STATE ID SITE DEVICE COMMAND`).
    List {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Runs a command line (or a script of central's library) on many
    /// devices as one bulk run; prints the run's id.
    Bulk {
        #[command(flatten)]
        conn: Conn,
        /// `all`, `customer:C`, `site:S`, `tag:T`, or `SITE/DEVICE[,SITE/DEVICE...]`.
        #[arg(long)]
        target: String,
        /// Members released to one site at once (default 50).
        #[arg(long)]
        concurrency: Option<u32>,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[arg(long)]
        script: Option<String>,
        #[arg(long, requires = "script")]
        script_version: Option<u32>,
        /// The command line (or the script's arguments).
        #[arg(last = true)]
        words: Vec<String>,
    },
    /// Shows one command with its output.
    Show {
        #[command(flatten)]
        conn: Conn,
        id: String,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn call(
    c: &Conn,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let bytes = call_raw(c, method, path, body, Duration::from_secs(30)).await?;
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The answer's bytes of one API request (an error naming the API's
/// `error` text for a non-success status), within `timeout`.
pub(crate) async fn call_raw(
    c: &Conn,
    method: &str,
    path: &str,
    body: Option<Value>,
    timeout: Duration,
) -> anyhow::Result<Bytes> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{}{}", c.api.trim_end_matches('/'), path);
    let mut req = Request::builder()
        .method(method)
        .uri(&url)
        .header("authorization", format!("Bearer {}", c.token));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let req = req
        .body(Full::new(Bytes::from(bytes)))
        .with_context(|| format!("building a request to {url}"))?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| anyhow!("{url}: no answer within {} s", timeout.as_secs()))?
        .with_context(|| format!("cannot reach central's API at {url} (is it running? --api)"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer from {url}"))?
        .to_bytes();
    if !status.is_success() {
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let msg = v
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("{status}: {msg}");
    }
    Ok(bytes)
}

/// The body of `POST /api/v1/commands` for `run`.
#[allow(clippy::too_many_arguments)]
pub fn run_body(
    site: &str,
    device: &str,
    timeout: Option<Duration>,
    expiry: Option<Duration>,
    run_as: Option<&str>,
    script: Option<&str>,
    script_version: Option<u32>,
    words: &[String],
) -> anyhow::Result<Value> {
    let mut b = json!({"site": site, "device": device});
    match script {
        Some(name) => {
            b["script"] = json!({"name": name, "version": script_version});
            b["args"] = json!(words);
        }
        None => {
            if words.is_empty() {
                bail!("give the command line after `--` (or --script NAME)");
            }
            b["command"] = json!(outpost_proto::command::shell_join(words));
        }
    }
    if let Some(t) = timeout {
        b["timeout_ms"] = json!(t.as_millis() as u64);
    }
    if let Some(e) = expiry {
        b["expiry_ms"] = json!(e.as_millis() as u64);
    }
    if let Some(u) = run_as {
        b["run_as"] = json!(u);
    }
    Ok(b)
}

/// The bulk API's target of `--target` (`all`, `customer:C`, `site:S`,
/// `tag:T`, `SITE/DEVICE[,...]`).
pub fn bulk_target(s: &str) -> anyhow::Result<Value> {
    let s = s.trim();
    let need = |v: &str, what: &str| {
        let v = v.trim();
        if v.is_empty() {
            bail!("--target {what}: needs a value ({what}:NAME)")
        }
        Ok(v.to_string())
    };
    Ok(match s.split_once(':') {
        None if s == "all" => json!("all"),
        Some(("customer", v)) => json!({"customer": need(v, "customer")?}),
        Some(("site", v)) => json!({"site": need(v, "site")?}),
        Some(("tag", v)) => json!({"tag": need(v, "tag")?}),
        None if s.contains('/') => {
            let mut v = Vec::new();
            for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                let Some((site, device)) = d.split_once('/') else {
                    bail!("--target {d:?}: not SITE/DEVICE");
                };
                v.push(json!({"site": site, "device": device}));
            }
            json!({ "devices": v })
        }
        _ => {
            bail!("--target {s:?}: all, customer:C, site:S, tag:T or SITE/DEVICE[,SITE/DEVICE...]")
        }
    })
}

/// `--wait`'s exit code (the appliance's rule): the command's own; 128+N
/// for a signal; 124 for a timeout; 130 for a cancel; 1 otherwise.
pub fn exit_code(v: &Value) -> i32 {
    let state: Option<CentralCommandState> = v["state"].as_str().and_then(|s| s.parse().ok());
    match state {
        Some(CentralCommandState::Completed) => 0,
        Some(CentralCommandState::TimedOut) => 124,
        Some(CentralCommandState::Cancelled) => 130,
        _ => match (v["exit_code"].as_i64(), v["signal"].as_i64()) {
            (Some(c), _) if c != 0 => c as i32,
            (_, Some(s)) => 128 + s as i32,
            _ => 1,
        },
    }
}

/// One line of `list`.
pub fn list_line(v: &Value) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        v["state"].as_str().unwrap_or("?"),
        v["id"].as_str().unwrap_or("?"),
        v["site"].as_str().unwrap_or("?"),
        v["hostname"]
            .as_str()
            .filter(|h| !h.is_empty())
            .or(v["device"].as_str())
            .unwrap_or("?"),
        v["command"].as_str().unwrap_or("")
    )
}

/// Runs a `commands` subcommand; the process's exit code.
pub async fn run(cmd: CommandsCmd) -> anyhow::Result<i32> {
    match cmd {
        CommandsCmd::Run {
            conn,
            site,
            device,
            timeout,
            expiry,
            run_as,
            script,
            script_version,
            wait,
            words,
        } => {
            let body = run_body(
                &site,
                &device,
                timeout,
                expiry,
                run_as.as_deref(),
                script.as_deref(),
                script_version,
                &words,
            )?;
            let v = call(&conn, "POST", "/api/v1/commands", Some(body)).await?;
            let id = v["id"]
                .as_str()
                .ok_or_else(|| anyhow!("central answered without an id: {v}"))?
                .to_string();
            if !wait {
                println!("{id}");
                return Ok(0);
            }
            let path = format!("/api/v1/commands/{id}");
            loop {
                let v = call(&conn, "GET", &path, None).await?;
                if v["closed"] == true {
                    print!("{}", v["output"].as_str().unwrap_or(""));
                    if let Some(r) = v["reason"].as_str() {
                        eprintln!("{}: {r}", v["state"].as_str().unwrap_or("?"));
                    }
                    return Ok(exit_code(&v));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        CommandsCmd::List {
            conn,
            site,
            device,
            state,
            limit,
            json,
        } => {
            let mut q = vec![format!("limit={limit}")];
            for (k, v) in [("site", site), ("device", device), ("state", state)] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(&v)));
                }
            }
            let v = call(
                &conn,
                "GET",
                &format!("/api/v1/commands?{}", q.join("&")),
                None,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for c in v.as_array().map(Vec::as_slice).unwrap_or_default() {
                    println!("{}", list_line(c));
                }
            }
            Ok(0)
        }
        CommandsCmd::Bulk {
            conn,
            target,
            concurrency,
            timeout,
            script,
            script_version,
            words,
        } => {
            let mut body = run_body(
                "",
                "",
                timeout,
                None,
                None,
                script.as_deref(),
                script_version,
                &words,
            )?;
            if let Some(m) = body.as_object_mut() {
                m.remove("site");
                m.remove("device");
            }
            body["target"] = bulk_target(&target)?;
            if let Some(n) = concurrency {
                body["concurrency"] = json!(n);
            }
            let v = call(&conn, "POST", "/api/v1/commands/bulk", Some(body)).await?;
            let id = v["id"]
                .as_str()
                .ok_or_else(|| anyhow!("central answered without an id: {v}"))?;
            println!("{id}");
            Ok(0)
        }
        CommandsCmd::Show { conn, id, json } => {
            let v = call(
                &conn,
                "GET",
                &format!("/api/v1/commands/{}", enc(&id)),
                None,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", list_line(&v));
                if let Some(c) = v["exit_code"].as_i64() {
                    println!("exit code {c}");
                }
                if let Some(r) = v["reason"].as_str() {
                    println!("reason: {r}");
                }
                print!("{}", v["output"].as_str().unwrap_or(""));
            }
            Ok(0)
        }
    }
}

/// Percent-encodes a query or path value.
pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_exits_with_the_commands_code_or_its_state_s() {
        let v = |state: &str, code: Option<i64>, sig: Option<i64>| json!({"state": state, "exit_code": code, "signal": sig});
        assert_eq!(exit_code(&v("completed", Some(0), None)), 0);
        assert_eq!(exit_code(&v("failed", Some(3), None)), 3);
        assert_eq!(exit_code(&v("failed", None, Some(9))), 137);
        assert_eq!(exit_code(&v("timed_out", None, Some(15))), 124);
        assert_eq!(exit_code(&v("cancelled", None, None)), 130);
        assert_eq!(exit_code(&v("expired", None, None)), 1);
    }

    #[test]
    fn run_joins_the_words_as_one_command_line_or_passes_them_to_the_script() {
        let w = vec!["echo".to_string(), "a b".to_string()];
        let b = run_body(
            "s",
            "d",
            Some(Duration::from_secs(2)),
            None,
            None,
            None,
            None,
            &w,
        )
        .unwrap();
        assert_eq!(b["command"], "echo 'a b'");
        assert_eq!(b["timeout_ms"], 2000);
        let b = run_body("s", "d", None, None, Some("www"), Some("tidy"), Some(2), &w).unwrap();
        assert_eq!(b["script"], json!({"name": "tidy", "version": 2}));
        assert_eq!(b["args"], json!(["echo", "a b"]));
        assert_eq!(b["run_as"], "www");
        assert!(run_body("s", "d", None, None, None, None, None, &[]).is_err());
    }

    #[test]
    fn bulk_targets_name_all_a_customer_a_site_a_tag_or_devices() {
        assert_eq!(bulk_target("all").unwrap(), json!("all"));
        assert_eq!(bulk_target("tag:web").unwrap(), json!({"tag": "web"}));
        assert_eq!(
            bulk_target("customer:dental").unwrap(),
            json!({"customer": "dental"})
        );
        assert_eq!(bulk_target("site:s-1").unwrap(), json!({"site": "s-1"}));
        assert_eq!(
            bulk_target("s-1/2a, s-2/2b").unwrap(),
            json!({"devices": [{"site": "s-1", "device": "2a"}, {"site": "s-2", "device": "2b"}]})
        );
        for bad in ["tag:", "everything", "role:x"] {
            assert!(bulk_target(bad).is_err(), "{bad}");
        }
    }
}
