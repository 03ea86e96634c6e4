//! `outpost files push|pull|list|show|download|cancel`: file transfer
//! through the admin API (`/api/v1/files`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use sha2::{Digest, Sha256};

use super::table::{ago, print_table};
use crate::client::AdminClient;
use crate::files::api::{PullRequest, TransferView};
use crate::files::model::TransferState;

#[derive(Subcommand, Debug)]
pub enum FilesCmd {
    /// Push LOCAL to REMOTE on a device (written through a temporary file,
    /// SHA-256 checked, renamed); prints the transfer id.
    Push {
        #[arg(long)]
        device: String,
        local: PathBuf,
        remote: String,
        /// File mode on the device, octal (default 0644).
        #[arg(long)]
        mode: Option<String>,
        /// Owner on the device (the agent must run as root to change it).
        #[arg(long)]
        owner: Option<String>,
        /// Wait for the end; exit 0 only if the file was written.
        #[arg(long)]
        wait: bool,
    },
    /// Pull REMOTE from a device; with --wait, write it to LOCAL once its
    /// SHA-256 is verified (else print the transfer id: `outpost files
    /// download ID LOCAL` later).
    Pull {
        #[arg(long)]
        device: String,
        remote: String,
        local: PathBuf,
        #[arg(long)]
        wait: bool,
    },
    /// Transfers, newest first.
    List {
        #[arg(long)]
        device: Option<String>,
        /// queued, transferring, completed, failed, cancelled, expired.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One transfer with its transitions.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a completed pull's content to LOCAL (SHA-256 verified).
    Download { id: String, local: PathBuf },
    /// Cancel a transfer (removed if still queued).
    Cancel { id: String },
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn wait_end(c: &AdminClient, id: &str) -> anyhow::Result<TransferView> {
    let path = format!("/api/v1/files/{id}");
    let mut delay = Duration::from_millis(50);
    loop {
        let v: TransferView = c.get(&path).await?;
        if v.state.is_terminal() {
            return Ok(v);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

fn describe(v: &TransferView) -> String {
    let mut s = format!("transfer {} {}", v.id, v.state);
    if let Some(r) = &v.reason {
        s.push_str(&format!(": {r}"));
    }
    s
}

/// Downloads a transfer's content, checks its SHA-256 and writes `local`
/// (through a temporary file renamed into place).
async fn download(c: &AdminClient, v: &TransferView, local: &Path) -> anyhow::Result<()> {
    let bytes = c
        .get_raw(&format!("/api/v1/files/{}/content", v.id))
        .await?;
    let got = hex::encode(Sha256::digest(&bytes));
    let want = v.sha256.clone().unwrap_or_default();
    if got != want {
        bail!(
            "the downloaded content's sha256 is {got}, the appliance recorded {want}: not written"
        );
    }
    let tmp = local.with_extension("outpost-part");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, local).with_context(|| format!("writing {}", local.display()))?;
    eprintln!(
        "wrote {} ({} bytes, sha256 {got})",
        local.display(),
        bytes.len()
    );
    Ok(())
}

pub async fn run(cmd: FilesCmd, c: AdminClient) -> anyhow::Result<()> {
    match cmd {
        FilesCmd::Push {
            device,
            local,
            remote,
            mode,
            owner,
            wait,
        } => {
            let body =
                std::fs::read(&local).with_context(|| format!("reading {}", local.display()))?;
            let mut q = format!("device={}&path={}", enc(&device), enc(&remote));
            if let Some(m) = mode {
                q.push_str(&format!("&mode={}", enc(&m)));
            }
            if let Some(o) = owner {
                q.push_str(&format!("&owner={}", enc(&o)));
            }
            let b = c
                .post_bytes(&format!("/api/v1/files/push?{q}"), body)
                .await?;
            let v: TransferView = serde_json::from_slice(&b).context("decoding the transfer")?;
            println!("{}", v.id);
            if wait {
                let v = wait_end(&c, &v.id).await?;
                if v.state != TransferState::Completed {
                    eprintln!("{}", describe(&v));
                    std::process::exit(1);
                }
            }
            Ok(())
        }
        FilesCmd::Pull {
            device,
            remote,
            local,
            wait,
        } => {
            let v: TransferView = c
                .post(
                    "/api/v1/files/pull",
                    &PullRequest {
                        device,
                        path: remote,
                    },
                )
                .await?;
            println!("{}", v.id);
            if wait {
                let v = wait_end(&c, &v.id).await?;
                if v.state != TransferState::Completed {
                    eprintln!("{}", describe(&v));
                    std::process::exit(1);
                }
                download(&c, &v, &local).await?;
            }
            Ok(())
        }
        FilesCmd::Download { id, local } => {
            let v: TransferView = c.get(&format!("/api/v1/files/{id}")).await?;
            if v.state != TransferState::Completed {
                bail!("{}", describe(&v));
            }
            download(&c, &v, &local).await
        }
        FilesCmd::List {
            device,
            state,
            limit,
            json,
        } => {
            let mut q = format!("limit={limit}");
            if let Some(d) = device {
                q.push_str(&format!("&device={}", enc(&d)));
            }
            if let Some(s) = state {
                q.push_str(&format!("&state={}", enc(&s)));
            }
            let vs: Vec<TransferView> = c.get(&format!("/api/v1/files?{q}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vs)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = vs
                .iter()
                .map(|v| {
                    vec![
                        v.id.clone(),
                        v.device.clone(),
                        v.direction.as_str().to_string(),
                        v.state.to_string(),
                        v.path.clone(),
                        v.size_bytes.map(|s| s.to_string()).unwrap_or("-".into()),
                        ago(v.created_ms),
                    ]
                })
                .collect();
            print_table(
                &["ID", "DEVICE", "DIR", "STATE", "PATH", "BYTES", "CREATED"],
                &rows,
            );
            Ok(())
        }
        FilesCmd::Show { id, json } => {
            let v: TransferView = c.get(&format!("/api/v1/files/{id}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "id:        {}", v.id)?;
            writeln!(out, "device:    {}", v.device)?;
            writeln!(out, "direction: {}", v.direction.as_str())?;
            writeln!(out, "path:      {}", v.path)?;
            writeln!(out, "state:     {}", v.state)?;
            if let Some(s) = v.size_bytes {
                writeln!(out, "size:      {s} bytes ({} done)", v.bytes_done)?;
            }
            if let Some(h) = &v.sha256 {
                writeln!(out, "sha256:    {h}")?;
            }
            if let Some(m) = &v.mode {
                writeln!(out, "mode:      {m}")?;
            }
            if let Some(o) = &v.owner {
                writeln!(out, "owner:     {o}")?;
            }
            writeln!(out, "by:        {}", v.requested_by)?;
            if let Some(cmd) = &v.command {
                writeln!(out, "command:   {cmd}")?;
            }
            if v.resumes > 0 {
                writeln!(out, "resumes:   {}", v.resumes)?;
            }
            if let Some(r) = &v.reason {
                writeln!(out, "reason:    {r}")?;
            }
            for t in &v.transitions {
                writeln!(out, "  {:<13} {}", t.state.as_str(), ago(t.at_ms))?;
            }
            Ok(())
        }
        FilesCmd::Cancel { id } => {
            let v: TransferView = c
                .post(
                    &format!("/api/v1/files/{id}/cancel"),
                    &serde_json::json!({}),
                )
                .await?;
            println!("{}", describe(&v));
            Ok(())
        }
    }
}
