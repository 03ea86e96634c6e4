//! `outpost-central devices tag|tag-order`: a thin client over central's
//! `POST /api/v1/devices/tags` and `GET /api/v1/devices/tags/{order}`.
//!
//! `tag --add T --remove T SITE/DEVICE...` prints one `RESULT SITE/DEVICE
//! [ORDER]` line per device (`queued`, `unknown device`, `unknown site`);
//! `--wait` then waits for each site's answer and prints `STATE ORDER
//! SITE [REASON]` per order (`delivered` or `refused`). Exit code 0 only
//! when every device was queued (and, with `--wait`, every order
//! delivered). `--json` prints the API's answer instead.
//!
//! This module owns the CLI's arguments and output only; every rule is
//! the API's.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::{Conn, call};

#[derive(Debug, Subcommand)]
pub enum DevicesCmd {
    /// Adds and removes tags on devices (`SITE/DEVICE`, several sites
    /// allowed); the tags are set at each site.
    Tag {
        #[command(flatten)]
        conn: Conn,
        /// A tag to add (repeatable).
        #[arg(long = "add")]
        add: Vec<String>,
        /// A tag to remove (repeatable).
        #[arg(long = "remove")]
        remove: Vec<String>,
        /// Wait for every site's answer.
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[arg(long)]
        json: bool,
        /// `SITE/DEVICE` (device id: 16 hex digits).
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Shows a tag order: `STATE ORDER SITE [REASON]` per site.
    TagOrder {
        #[command(flatten)]
        conn: Conn,
        id: String,
        #[arg(long)]
        json: bool,
    },
}

/// `SITE/DEVICE` → `{"site": S, "device": D}`. Pure.
pub fn device_refs(words: &[String]) -> anyhow::Result<Vec<Value>> {
    words
        .iter()
        .map(|w| {
            let (s, d) = w
                .split_once('/')
                .filter(|(s, d)| !s.is_empty() && !d.is_empty())
                .ok_or_else(|| anyhow!("{w:?}: name a device as SITE/DEVICE"))?;
            Ok(json!({"site": s, "device": d}))
        })
        .collect()
}

fn delivery_lines(order: &Value) -> (Vec<String>, bool, bool) {
    let id = order["id"].as_str().unwrap_or("?");
    let mut lines = Vec::new();
    let (mut open, mut ok) = (false, true);
    for d in order["deliveries"].as_array().into_iter().flatten() {
        let state = d["state"].as_str().unwrap_or("?");
        open |= state == "queued";
        ok &= state == "delivered";
        let mut line = format!("{state} {id} {}", d["site"].as_str().unwrap_or("?"));
        if let Some(r) = d["reason"].as_str() {
            line.push(' ');
            line.push_str(r);
        }
        lines.push(line);
    }
    (lines, open, ok)
}

pub async fn run(cmd: DevicesCmd) -> anyhow::Result<i32> {
    match cmd {
        DevicesCmd::Tag {
            conn,
            add,
            remove,
            wait,
            timeout,
            json,
            devices,
        } => {
            let body = json!({"devices": device_refs(&devices)?, "add": add, "remove": remove});
            let v = call(&conn, "POST", "/api/v1/devices/tags", Some(body)).await?;
            let mut all_queued = true;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            for d in v["devices"].as_array().into_iter().flatten() {
                let result = d["result"].as_str().unwrap_or("?");
                all_queued &= result == "queued";
                if !json {
                    let mut line = format!(
                        "{result} {}/{}",
                        d["site"].as_str().unwrap_or("?"),
                        d["device"].as_str().unwrap_or("?")
                    );
                    if let Some(o) = d["order"].as_str() {
                        line.push(' ');
                        line.push_str(o);
                    }
                    println!("{line}");
                }
            }
            if !wait {
                return Ok(if all_queued { 0 } else { 1 });
            }
            let ids: Vec<String> = v["orders"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o["id"].as_str().map(String::from))
                .collect();
            let until = Instant::now() + timeout;
            let mut all_ok = all_queued;
            for id in ids {
                loop {
                    let o = call(&conn, "GET", &format!("/api/v1/devices/tags/{id}"), None).await?;
                    let (lines, open, ok) = delivery_lines(&o);
                    if !open {
                        for l in lines {
                            println!("{l}");
                        }
                        all_ok &= ok;
                        break;
                    }
                    if Instant::now() >= until {
                        bail!("order {id} still queued after {timeout:?} (its site is offline?)");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            Ok(if all_ok { 0 } else { 1 })
        }
        DevicesCmd::TagOrder { conn, id, json } => {
            let o = call(&conn, "GET", &format!("/api/v1/devices/tags/{id}"), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&o)?);
                return Ok(0);
            }
            let (lines, _, ok) = delivery_lines(&o);
            for l in lines {
                println!("{l}");
            }
            Ok(if ok { 0 } else { 1 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_named_site_slash_device() {
        let v = device_refs(&["s-1/00000000000000aa".into()]).unwrap();
        assert_eq!(
            v,
            vec![json!({"site": "s-1", "device": "00000000000000aa"})]
        );
        assert!(device_refs(&["s-1".into()]).is_err());
        assert!(device_refs(&["/aa".into()]).is_err());
    }

    #[test]
    fn an_order_prints_one_line_per_site_and_is_ok_only_when_delivered() {
        let o = json!({"id": "ord-1", "deliveries": [
            {"site": "s-1", "state": "delivered"},
            {"site": "s-2", "state": "refused", "reason": "device 00000000000000aa: unknown at the site"}
        ]});
        let (lines, open, ok) = delivery_lines(&o);
        assert_eq!(
            lines,
            vec![
                "delivered ord-1 s-1".to_string(),
                "refused ord-1 s-2 device 00000000000000aa: unknown at the site".to_string()
            ]
        );
        assert!(!open && !ok);
    }
}
