//! `outpost scripts add|edit|list|show|run`: the versioned script library
//! through the admin API (`/api/v1/scripts`).

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use outpost_proto::command::Interpreter;

use super::table::{ago, print_table};
use crate::api::commands::{CommandView, ScriptRequest, ScriptRunRequest};
use crate::client::AdminClient;
use crate::commands::scripts::ScriptVersion;

#[derive(Subcommand, Debug)]
pub enum ScriptsCmd {
    /// Add a script (version 1) from a file (`-` for stdin).
    Add {
        name: String,
        #[arg(long)]
        file: String,
        /// sh (default), bash or python3.
        #[arg(long)]
        interpreter: Option<Interpreter>,
        /// Default timeout of its runs (default 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Names of its positional parameters, for people (repeatable).
        #[arg(long = "param")]
        params: Vec<String>,
    },
    /// Store a new version of a script (queued runs keep theirs).
    Edit {
        name: String,
        #[arg(long)]
        file: String,
        #[arg(long)]
        interpreter: Option<Interpreter>,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[arg(long = "param")]
        params: Vec<String>,
    },
    /// List scripts (their newest versions).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a script's body (the newest version, or --version N).
    Show {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Run a script on a device; prints the command id (see `outpost
    /// commands show`), or with --wait its output and exit code.
    Run {
        name: String,
        #[arg(long)]
        device: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[arg(long)]
        run_as: Option<String>,
        #[arg(long)]
        wait: bool,
        /// Arguments ($1...).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn read_body(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
    }
}

pub async fn run(cmd: ScriptsCmd, c: AdminClient) -> anyhow::Result<()> {
    match cmd {
        ScriptsCmd::Add {
            name,
            file,
            interpreter,
            timeout,
            params,
        } => {
            let req = ScriptRequest {
                name: Some(name.clone()),
                interpreter,
                body: read_body(&file)?,
                timeout_ms: timeout.map(|d| d.as_millis() as u64),
                parameters: params,
            };
            let v: ScriptVersion = c
                .post("/api/v1/scripts", &req)
                .await
                .with_context(|| format!("adding script {name}"))?;
            println!("{} v{}", v.name, v.version);
            Ok(())
        }
        ScriptsCmd::Edit {
            name,
            file,
            interpreter,
            timeout,
            params,
        } => {
            let req = ScriptRequest {
                name: None,
                interpreter,
                body: read_body(&file)?,
                timeout_ms: timeout.map(|d| d.as_millis() as u64),
                parameters: params,
            };
            let b = c
                .request(
                    "PUT",
                    &format!("/api/v1/scripts/{name}"),
                    Some(serde_json::to_vec(&req)?),
                )
                .await
                .with_context(|| format!("editing script {name}"))?;
            let v: ScriptVersion = serde_json::from_slice(&b)?;
            println!("{} v{}", v.name, v.version);
            Ok(())
        }
        ScriptsCmd::List { json } => {
            if json {
                println!(
                    "{}",
                    String::from_utf8_lossy(&c.get_raw("/api/v1/scripts").await?)
                );
                return Ok(());
            }
            let list: Vec<ScriptVersion> = c.get("/api/v1/scripts").await?;
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        v.version.to_string(),
                        v.interpreter.to_string(),
                        ago(v.created_ms),
                        v.created_by.clone(),
                    ]
                })
                .collect();
            print_table(&["NAME", "VERSION", "INTERPRETER", "EDITED", "BY"], &rows);
            Ok(())
        }
        ScriptsCmd::Show {
            name,
            version,
            json,
        } => {
            let mut path = format!("/api/v1/scripts/{name}");
            if let Some(v) = version {
                path.push_str(&format!("?version={v}"));
            }
            if json {
                println!("{}", String::from_utf8_lossy(&c.get_raw(&path).await?));
                return Ok(());
            }
            let v: ScriptVersion = c.get(&path).await?;
            println!(
                "# {} v{} ({}, timeout {} ms, by {})",
                v.name, v.version, v.interpreter, v.default_timeout_ms, v.created_by
            );
            print!("{}", v.body);
            Ok(())
        }
        ScriptsCmd::Run {
            name,
            device,
            version,
            timeout,
            run_as,
            wait,
            args,
        } => {
            let req = ScriptRunRequest {
                device: device.clone(),
                version,
                args,
                env: Vec::new(),
                cwd: None,
                run_as,
                timeout_ms: timeout.map(|d| d.as_millis() as u64),
                expiry_ms: None,
            };
            let v: CommandView = c
                .post(&format!("/api/v1/scripts/{name}/run"), &req)
                .await
                .with_context(|| format!("running script {name} on device {device}"))?;
            if wait {
                super::commands::finish_waiting(&c, &v.id).await
            } else {
                println!("{}", v.id);
                Ok(())
            }
        }
    }
}
