//! `outpost-central deployments create|list|show|pause|resume|abort|rollback`,
//! `outpost-central patches approve|decline` and
//! `outpost-central approval-rules add|list|remove`: thin clients over
//! central's `/api/v1/deployments`, `/api/v1/approvals` and
//! `/api/v1/approval-rules` (an API token: `--token` or
//! OUTPOST_CENTRAL_TOKEN). Plain lines on stdout (`--json` for the
//! records), errors on stderr, exit code 0 only on success.
//!
//! Owns the arguments and the output only; every rule is the API's.

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::{Conn, call};

#[derive(Debug, Subcommand)]
pub enum DeploymentsCmd {
    /// Creates a deployment at sites (the same id at each); prints its id.
    Create {
        #[command(flatten)]
        conn: Conn,
        /// A site (repeat; default: every site the token sees).
        #[arg(long = "site")]
        sites: Vec<String>,
        /// `all`, `customer:C`, `tag:T` or `devices:ID,ID`.
        #[arg(long, default_value = "all")]
        target: String,
        /// Only these approved patches (`PKG=VERSION`, repeat).
        #[arg(long = "patch")]
        patches: Vec<String>,
        #[arg(long)]
        security_only: bool,
        /// Cumulative stage percentages, e.g. `1,10,50,100`.
        #[arg(long, value_delimiter = ',')]
        stages: Vec<u8>,
        #[arg(long)]
        auto_rollback_failed_pct: Option<u8>,
        /// Install options and window.
        #[command(flatten)]
        install: Box<InstallFlags>,
        /// More options of the site's request as JSON (`gate`, `window`...).
        #[arg(long)]
        options: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Lists deployments across sites (`ID ORIGIN SITE DELIVERY PHASE STAGE OK/FAILED/DEVICES`).
    List {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
    /// Shows a deployment with its per-device results.
    Show {
        #[command(flatten)]
        conn: Conn,
        id: String,
        /// The site of a deployment created at a site.
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        json: bool,
    },
    Pause {
        #[command(flatten)]
        conn: Conn,
        id: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    Resume {
        #[command(flatten)]
        conn: Conn,
        id: String,
        #[arg(long)]
        retry_failed: bool,
        #[arg(long)]
        force: bool,
    },
    Abort {
        #[command(flatten)]
        conn: Conn,
        id: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Rolls back the deployment, one stage (`--stage`) or one device (`--device`).
    Rollback {
        #[command(flatten)]
        conn: Conn,
        id: String,
        #[arg(long)]
        stage: Option<u32>,
        #[arg(long)]
        device: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PatchesCmd {
    /// Compliance reports (`patches report`).
    #[command(flatten)]
    Report(crate::cli_patches::PatchesCmd),
    /// Approves `PKG=VERSION` at sites.
    Approve {
        #[command(flatten)]
        conn: Conn,
        patch: String,
        /// `tenant` (default), `customer:C`, `tag:T`, `device:ID`.
        #[arg(long)]
        scope: Option<String>,
        #[arg(long = "site")]
        sites: Vec<String>,
    },
    /// Declines `PKG=VERSION` at sites.
    Decline {
        #[command(flatten)]
        conn: Conn,
        patch: String,
        #[arg(long)]
        scope: Option<String>,
        #[arg(long = "site")]
        sites: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApprovalRulesCmd {
    /// Adds an approval rule (the site's rule JSON) at sites.
    Add {
        #[command(flatten)]
        conn: Conn,
        /// e.g. `{"id":"sec","scope":{"type":"tenant","tenant":"msp"},"rule":{"kind":"auto","security_only":true}}`.
        rule: String,
        #[arg(long = "site")]
        sites: Vec<String>,
    },
    /// Lists the rules added from central.
    List {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
    /// Removes a rule at the sites it was sent to.
    Remove {
        #[command(flatten)]
        conn: Conn,
        id: String,
    },
}

fn sites_field(sites: Vec<String>) -> Value {
    if sites.is_empty() {
        Value::Null
    } else {
        json!(sites)
    }
}

/// The install options and window of `deployments create`.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallFlags {
    /// Reboot after the install: `never`, `if-required` or `always`
    /// (sites from protocol 8; default: each site's `[deploy]`).
    #[arg(long)]
    pub reboot: Option<String>,
    /// A script of the sites' libraries run before the install.
    #[arg(long)]
    pub pre_script: Option<String>,
    /// A script of the sites' libraries run after the install.
    #[arg(long)]
    pub post_script: Option<String>,
    /// Snapshot before patching (where the root file system allows it).
    #[arg(long, conflicts_with = "no_snapshot")]
    pub snapshot: bool,
    /// No snapshot before patching.
    #[arg(long)]
    pub no_snapshot: bool,
    /// Install window days, e.g. `tue,thu` (with --window-start).
    #[arg(long, value_delimiter = ',')]
    pub window_days: Vec<String>,
    /// Install window start, `HH:MM` (in --window-tz).
    #[arg(long)]
    pub window_start: Option<String>,
    #[arg(long, default_value_t = 180)]
    pub window_minutes: u32,
    /// IANA time zone of the window.
    #[arg(long, default_value = "UTC")]
    pub window_tz: String,
}

/// The site's install window JSON (every day without `days`).
fn window_json(days: &[String], start: &str, minutes: u32, tz: &str) -> anyhow::Result<Value> {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let days: Vec<String> = if days.is_empty() {
        DAYS.iter().map(|d| d.to_string()).collect()
    } else {
        days.iter().map(|d| d.trim().to_ascii_lowercase()).collect()
    };
    if let Some(d) = days.iter().find(|d| !DAYS.contains(&d.as_str())) {
        bail!("unknown day {d:?} (mon … sun)");
    }
    Ok(json!({"days": days, "start": start, "duration_minutes": minutes, "timezone": tz}))
}

/// Puts the install options of `deployments create` into the request
/// (`reboot` as the site spells it: `if-required` → `if_required`).
fn install_options(
    m: &mut serde_json::Map<String, Value>,
    reboot: Option<&str>,
    pre_script: Option<String>,
    post_script: Option<String>,
    snapshot: Option<bool>,
) -> anyhow::Result<()> {
    if let Some(r) = reboot {
        let r = r.trim().to_ascii_lowercase().replace('-', "_");
        if !["never", "if_required", "always"].contains(&r.as_str()) {
            bail!("--reboot must be never, if-required or always");
        }
        m.insert("reboot".into(), json!(r));
    }
    if let Some(s) = pre_script {
        m.insert("pre_script".into(), json!(s));
    }
    if let Some(s) = post_script {
        m.insert("post_script".into(), json!(s));
    }
    if let Some(s) = snapshot {
        m.insert("snapshot".into(), json!(s));
    }
    Ok(())
}

/// The site's `target` JSON of `all`, `customer:C`, `tag:T`, `devices:A,B`.
pub fn target_json(s: &str) -> anyhow::Result<Value> {
    Ok(match s.split_once(':') {
        None if s == "all" => json!({"type": "all"}),
        Some(("customer", c)) if !c.is_empty() => json!({"type": "customer", "customer": c}),
        Some(("tag", t)) if !t.is_empty() => json!({"type": "tag", "tag": t}),
        Some(("devices", d)) if !d.is_empty() => {
            json!({"type": "devices", "devices": d.split(',').collect::<Vec<_>>()})
        }
        _ => bail!("--target {s:?}: all, customer:C, tag:T or devices:ID,ID"),
    })
}

fn ids_line(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

fn print_deliveries(v: &Value) {
    println!("{}", ids_line(v));
    for d in v["deliveries"].as_array().into_iter().flatten() {
        println!(
            "  {} {}{}",
            d["site"].as_str().unwrap_or("?"),
            d["state"].as_str().unwrap_or("?"),
            d["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
}

fn opt<T: std::fmt::Display>(v: &Value, k: &str, f: impl Fn(&Value) -> Option<T>) -> String {
    f(&v[k])
        .map(|x| x.to_string())
        .unwrap_or_else(|| "-".into())
}

/// One line per site of each deployment.
pub fn list_lines(all: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for d in all.as_array().into_iter().flatten() {
        for s in d["sites"].as_array().into_iter().flatten() {
            out.push(format!(
                "{} {} {} {} {} {}/{} {}/{}/{}",
                d["id"].as_str().unwrap_or("?"),
                d["origin"].as_str().unwrap_or("?"),
                s["site"].as_str().unwrap_or("?"),
                s["delivery"].as_str().unwrap_or("?"),
                opt(s, "phase", |v| v.as_str().map(str::to_string)),
                opt(s, "stage", Value::as_u64),
                opt(s, "stages", Value::as_u64),
                opt(s, "succeeded", Value::as_u64),
                opt(s, "failed", Value::as_u64),
                opt(s, "devices", Value::as_u64),
            ));
        }
    }
    out
}

pub async fn run_deployments(cmd: DeploymentsCmd) -> anyhow::Result<i32> {
    match cmd {
        DeploymentsCmd::Create {
            conn,
            sites,
            target,
            patches,
            security_only,
            stages,
            auto_rollback_failed_pct,
            install,
            options,
            json,
        } => {
            let InstallFlags {
                reboot,
                pre_script,
                post_script,
                snapshot,
                no_snapshot,
                window_days,
                window_start,
                window_minutes,
                window_tz,
            } = *install;
            let mut body = match options {
                Some(o) => serde_json::from_str::<Value>(&o).context("--options is not JSON")?,
                None => json!({}),
            };
            let Some(m) = body.as_object_mut() else {
                bail!("--options must be a JSON object");
            };
            m.insert("target".into(), target_json(&target)?);
            if !patches.is_empty() {
                m.insert("patches".into(), json!(patches));
            }
            if security_only {
                m.insert("security_only".into(), json!(true));
            }
            if !stages.is_empty() {
                m.insert("stages".into(), json!(stages));
            }
            if let Some(p) = auto_rollback_failed_pct {
                m.insert("auto_rollback_failed_pct".into(), json!(p));
            }
            let snapshot = (snapshot || no_snapshot).then_some(snapshot);
            install_options(m, reboot.as_deref(), pre_script, post_script, snapshot)?;
            if let Some(start) = window_start {
                m.insert(
                    "window".into(),
                    window_json(&window_days, &start, window_minutes, &window_tz)?,
                );
            } else if !window_days.is_empty() {
                bail!("--window-days needs --window-start HH:MM");
            }
            if !sites.is_empty() {
                m.insert("sites".into(), json!(sites));
            }
            let v = call(&conn, "POST", "/api/v1/deployments", Some(body)).await?;
            if json {
                println!("{v:#}");
            } else {
                println!("{}", ids_line(&v));
            }
        }
        DeploymentsCmd::List { conn, json } => {
            let v = call(&conn, "GET", "/api/v1/deployments", None).await?;
            if json {
                println!("{v:#}");
            } else {
                for l in list_lines(&v) {
                    println!("{l}");
                }
            }
        }
        DeploymentsCmd::Show {
            conn,
            id,
            site,
            json,
        } => {
            let path = match site {
                Some(s) => format!("/api/v1/deployments/{id}?site={s}"),
                None => format!("/api/v1/deployments/{id}"),
            };
            let v = call(&conn, "GET", &path, None).await?;
            if json {
                println!("{v:#}");
            } else {
                for l in list_lines(&json!([v.clone()])) {
                    println!("{l}");
                }
                for s in v["sites"].as_array().into_iter().flatten() {
                    for d in s["device_results"].as_array().into_iter().flatten() {
                        println!(
                            "  {} {} stage {} {}{}",
                            s["site"].as_str().unwrap_or("?"),
                            d["device"].as_str().unwrap_or("?"),
                            opt(d, "stage", Value::as_u64),
                            d["state"].as_str().unwrap_or("?"),
                            d["reason"]
                                .as_str()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
        }
        DeploymentsCmd::Pause { conn, id, note } => {
            act(&conn, &id, "pause", json!({ "note": note })).await?
        }
        DeploymentsCmd::Abort { conn, id, note } => {
            act(&conn, &id, "abort", json!({ "note": note })).await?
        }
        DeploymentsCmd::Resume {
            conn,
            id,
            retry_failed,
            force,
        } => {
            act(
                &conn,
                &id,
                "resume",
                json!({"retry_failed": retry_failed, "force": force}),
            )
            .await?
        }
        DeploymentsCmd::Rollback {
            conn,
            id,
            stage,
            device,
        } => {
            let body = match (stage, device) {
                (Some(_), Some(_)) => bail!("--stage or --device, not both"),
                (Some(s), None) => json!({"scope": "stage", "stage": s}),
                (None, Some(d)) => json!({"scope": "device", "device": d}),
                (None, None) => json!({"scope": "deployment"}),
            };
            act(&conn, &id, "rollback", body).await?
        }
    }
    Ok(0)
}

async fn act(conn: &Conn, id: &str, action: &str, body: Value) -> anyhow::Result<()> {
    let v = call(
        conn,
        "POST",
        &format!("/api/v1/deployments/{id}/{action}"),
        Some(body),
    )
    .await?;
    print_deliveries(&v);
    Ok(())
}

pub async fn run_patches(cmd: PatchesCmd) -> anyhow::Result<i32> {
    let (conn, patch, scope, sites, verdict) = match cmd {
        PatchesCmd::Report(cmd) => {
            crate::cli_patches::run(cmd).await?;
            return Ok(0);
        }
        PatchesCmd::Approve {
            conn,
            patch,
            scope,
            sites,
        } => (conn, patch, scope, sites, "approve"),
        PatchesCmd::Decline {
            conn,
            patch,
            scope,
            sites,
        } => (conn, patch, scope, sites, "decline"),
    };
    let mut body = json!({"patch": patch, "verdict": verdict});
    if let Some(s) = scope {
        body["scope"] = json!(s);
    }
    if !sites.is_empty() {
        body["sites"] = sites_field(sites);
    }
    let v = call(&conn, "POST", "/api/v1/approvals", Some(body)).await?;
    print_deliveries(&v);
    Ok(0)
}

pub async fn run_rules(cmd: ApprovalRulesCmd) -> anyhow::Result<i32> {
    match cmd {
        ApprovalRulesCmd::Add { conn, rule, sites } => {
            let rule: Value = serde_json::from_str(&rule).context("the rule is not JSON")?;
            let mut body = json!({ "rule": rule });
            if !sites.is_empty() {
                body["sites"] = sites_field(sites);
            }
            let v = call(&conn, "POST", "/api/v1/approval-rules", Some(body)).await?;
            print_deliveries(&v);
        }
        ApprovalRulesCmd::List { conn, json } => {
            let v = call(&conn, "GET", "/api/v1/approval-rules", None).await?;
            if json {
                println!("{v:#}");
            } else {
                for r in v.as_array().into_iter().flatten() {
                    println!("{} {}", r["id"].as_str().unwrap_or("?"), r["rule"]);
                }
            }
        }
        ApprovalRulesCmd::Remove { conn, id } => {
            let v = call(
                &conn,
                "DELETE",
                &format!("/api/v1/approval-rules/{id}"),
                None,
            )
            .await?;
            print_deliveries(&v);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_parses_the_install_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(subcommand)]
            c: DeploymentsCmd,
        }
        let t = T::try_parse_from([
            "t",
            "create",
            "--token",
            "x",
            "--reboot",
            "if-required",
            "--pre-script",
            "stop-app",
            "--no-snapshot",
            "--window-days",
            "tue,thu",
            "--window-start",
            "02:00",
        ])
        .unwrap();
        let DeploymentsCmd::Create { install, .. } = t.c else {
            panic!("not create")
        };
        assert_eq!(install.reboot.as_deref(), Some("if-required"));
        assert_eq!(install.pre_script.as_deref(), Some("stop-app"));
        assert!(install.no_snapshot && !install.snapshot);
        assert_eq!(install.window_days, ["tue", "thu"]);
        assert_eq!(install.window_minutes, 180);
        assert!(
            T::try_parse_from(["t", "create", "--token", "x", "--snapshot", "--no-snapshot"])
                .is_err()
        );
    }

    #[test]
    fn window_flags_map_to_the_sites_window_json() {
        assert_eq!(
            window_json(&["Tue".into(), "thu".into()], "02:00", 120, "Europe/Berlin").unwrap(),
            json!({"days": ["tue", "thu"], "start": "02:00", "duration_minutes": 120,
                   "timezone": "Europe/Berlin"})
        );
        assert_eq!(
            window_json(&[], "23:30", 60, "UTC").unwrap()["days"]
                .as_array()
                .unwrap()
                .len(),
            7
        );
        assert!(window_json(&["someday".into()], "02:00", 60, "UTC").is_err());
    }

    #[test]
    fn install_option_flags_map_to_the_sites_request_fields() {
        let mut m = serde_json::Map::new();
        install_options(
            &mut m,
            Some("if-required"),
            Some("stop-app".into()),
            None,
            Some(false),
        )
        .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"reboot": "if_required", "pre_script": "stop-app", "snapshot": false})
        );
        let mut m = serde_json::Map::new();
        install_options(&mut m, None, None, None, None).unwrap();
        assert!(m.is_empty());
        assert!(install_options(&mut m, Some("sometimes"), None, None, None).is_err());
    }

    #[test]
    fn targets_map_to_the_sites_json() {
        assert_eq!(target_json("all").unwrap(), json!({"type": "all"}));
        assert_eq!(
            target_json("devices:a,b").unwrap(),
            json!({"type": "devices", "devices": ["a", "b"]})
        );
        assert_eq!(
            target_json("tag:pilot").unwrap(),
            json!({"type": "tag", "tag": "pilot"})
        );
        assert!(target_json("nope").is_err());
    }

    #[test]
    fn the_list_prints_one_line_per_site_of_a_deployment() {
        let v = json!([{"id": "cdep-1", "origin": "central", "sites": [
            {"site": "s-1", "delivery": "delivered", "phase": "running", "stage": 0, "stages": 4,
             "succeeded": 1, "failed": 0, "devices": 3},
            {"site": "s-2", "delivery": "queued"}
        ]}]);
        assert_eq!(
            list_lines(&v),
            [
                "cdep-1 central s-1 delivered running 0/4 1/0/3",
                "cdep-1 central s-2 queued - -/- -/-/-"
            ]
        );
    }
}
