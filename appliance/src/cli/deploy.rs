//! `outpost patches approve|decline|approvals`, `outpost approval-rules
//! add|list|remove` and `outpost deployments
//! create|list|show|pause|resume|abort|rollback`: approvals and patch
//! deployments of the running appliance (`/api/v1/approvals/...`,
//! `/api/v1/deployments/...`).

use clap::{Args, Subcommand};
use outpost_patch::approval::{ApprovalRule, AutoRule, Outcome, PatchKey, RuleKind, Verdict};
use outpost_patch::install::wire::RebootPolicy;
use outpost_patch::rollout::{GateSpec, RollbackScope};
use outpost_patch::severity::Severity;
use outpost_patch::window::{Day, InstallWindow};
use outpost_proto::DeviceId;

use super::table::{ago, print_table};
use crate::client::AdminClient;
use crate::deploy::api::{DeploymentSummary, DeploymentView, ManualBody, NoteBody, ResumeBody};
use crate::deploy::approvals::{DeviceApprovals, parse_patch, parse_scope};
use crate::deploy::options::DeployOptions;
use crate::deploy::orchestrator::CreateRequest;
use crate::deploy::store::DeployTarget;

#[derive(Subcommand, Debug)]
pub enum ApprovalRulesCmd {
    /// Add an auto-approval rule for a scope.
    Add {
        /// The rule's id (unique).
        id: String,
        /// `tenant[:T]`, `customer:C`, `tag:T` or `device:ID`.
        #[arg(long, default_value = "tenant")]
        scope: String,
        /// Only patches at least this severe (low, medium, high, critical).
        #[arg(long)]
        min_severity: Option<String>,
        /// Only security updates.
        #[arg(long)]
        security_only: bool,
        /// Only once the fix has been published this many days.
        #[arg(long, default_value_t = 0)]
        delay_days: u32,
        /// Only these source packages (repeatable).
        #[arg(long)]
        allow: Vec<String>,
        /// Decline these source packages (repeatable).
        #[arg(long)]
        deny: Vec<String>,
    },
    /// Every rule (manual verdicts included).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a rule by id.
    Remove { id: String },
}

/// `outpost patches approve|decline PKG=VERSION [--scope S]`.
#[derive(Args, Debug)]
pub struct VerdictArgs {
    /// `PKG=VERSION` (source package and exact version).
    pub patch: String,
    /// `device:ID`, `tag:T`, `customer:C` or `tenant[:T]` (default: the
    /// site's tenant).
    #[arg(long, default_value = "tenant")]
    pub scope: String,
}

/// `outpost patches approvals --device ID`.
#[derive(Args, Debug)]
pub struct ApprovalsArgs {
    #[arg(long)]
    pub device: DeviceId,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum DeploymentsCmd {
    /// Deploy the approved patches to a target (pilot → 10 % → 50 % →
    /// 100 % by default); prints the deployment id.
    Create {
        /// Target devices (repeatable), or --tag / --customer / --all.
        #[arg(long)]
        device: Vec<DeviceId>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        all: bool,
        /// Only these patches, `PKG=VERSION` (repeatable; default: every
        /// approved patch).
        #[arg(long)]
        patch: Vec<String>,
        /// Only security updates among the approved patches.
        #[arg(long)]
        security_only: bool,
        /// Cumulative stage percentages, e.g. `1,10,50,100`.
        #[arg(long, value_delimiter = ',')]
        stages: Vec<u8>,
        /// Gate: minimum success rate in percent (default 95).
        #[arg(long)]
        min_success: Option<u8>,
        /// Gate: minimum finished devices per stage (default 1).
        #[arg(long)]
        min_finished: Option<u32>,
        /// Gate: soak time after a stage's last result, minutes (default 60).
        #[arg(long)]
        soak_minutes: Option<u64>,
        /// Roll a stage back once this percentage of it failed.
        #[arg(long)]
        auto_rollback: Option<u8>,
        /// Install window days, e.g. `tue,thu` (with --window-start).
        #[arg(long, value_delimiter = ',')]
        window_days: Vec<String>,
        /// Install window start, `HH:MM`.
        #[arg(long)]
        window_start: Option<String>,
        #[arg(long, default_value_t = 180)]
        window_minutes: u32,
        /// IANA time zone of the window.
        #[arg(long, default_value = "UTC")]
        window_tz: String,
        /// Deployment id (default: generated).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        options: OptionArgs,
        #[arg(long)]
        json: bool,
    },
    /// Every deployment with its state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One deployment: stages, gate figures, devices.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop dispatching (installs under way finish).
    Pause {
        id: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Continue a paused deployment.
    Resume {
        id: String,
        /// Give failed devices a new attempt.
        #[arg(long)]
        retry_failed: bool,
        /// Override the current stage's gate.
        #[arg(long)]
        force: bool,
        /// Install these versions instead, `PKG=VERSION` (repeatable).
        #[arg(long)]
        patch: Vec<String>,
    },
    /// Stop the deployment for good (queued installs are withdrawn).
    Abort {
        id: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Roll back one device, one stage, or the whole deployment.
    Rollback {
        id: String,
        #[arg(long, conflicts_with = "stage")]
        device: Option<DeviceId>,
        #[arg(long)]
        stage: Option<u32>,
    },
    /// Recurring deployments: add, list, remove.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCmd {
    /// Every week on --days at --start (--tz), deploy the approved patches
    /// to the target, installing within --minutes.
    Add {
        id: String,
        #[arg(long, value_delimiter = ',', required = true)]
        days: Vec<String>,
        /// `HH:MM`.
        #[arg(long)]
        start: String,
        #[arg(long, default_value_t = 180)]
        minutes: u32,
        /// IANA time zone.
        #[arg(long, default_value = "UTC")]
        tz: String,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        security_only: bool,
        #[command(flatten)]
        options: OptionArgs,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Remove {
        id: String,
    },
}

/// The per-deployment install options of `deployments create` and
/// `deployments schedule add` (unset: the appliance's `[deploy]` default).
#[derive(Args, Debug, Clone, Default)]
pub struct OptionArgs {
    /// Reboot after the install: `never`, `if-required` or `always`
    /// (only inside the install window).
    #[arg(long, value_parser = parse_reboot)]
    pub reboot: Option<RebootPolicy>,
    /// Run this script of the library before the install (its newest
    /// version; the install fails if the script fails).
    #[arg(long)]
    pub pre_script: Option<String>,
    /// Run this script of the library after a successful install.
    #[arg(long)]
    pub post_script: Option<String>,
    /// Take a file-system snapshot before patching (btrfs, LVM thin, ZFS).
    #[arg(long, conflicts_with = "no_snapshot")]
    pub snapshot: bool,
    /// Do not take a snapshot before patching.
    #[arg(long)]
    pub no_snapshot: bool,
}

impl OptionArgs {
    pub fn options(&self) -> DeployOptions {
        DeployOptions {
            reboot: self.reboot,
            pre_script: self.pre_script.clone(),
            post_script: self.post_script.clone(),
            snapshot: if self.snapshot {
                Some(true)
            } else if self.no_snapshot {
                Some(false)
            } else {
                None
            },
        }
    }
}

/// `never`, `if-required` (or `if_required`), `always`.
pub fn parse_reboot(s: &str) -> Result<RebootPolicy, String> {
    match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
        "never" => Ok(RebootPolicy::Never),
        "if_required" => Ok(RebootPolicy::IfRequired),
        "always" => Ok(RebootPolicy::Always),
        _ => Err(format!(
            "unknown reboot policy {s:?}: never, if-required or always"
        )),
    }
}

fn parse_days(days: &[String]) -> anyhow::Result<Vec<Day>> {
    days.iter()
        .map(|d| {
            serde_json::from_value::<Day>(serde_json::Value::String(d.trim().to_lowercase()))
                .map_err(|_| anyhow::anyhow!("unknown day {d:?} (mon … sun)"))
        })
        .collect()
}

async fn run_schedule(cmd: ScheduleCmd, c: AdminClient) -> anyhow::Result<()> {
    use crate::deploy::schedules::DeploySchedule;
    match cmd {
        ScheduleCmd::Add {
            id,
            days,
            start,
            minutes,
            tz,
            tag,
            customer,
            all,
            security_only,
            options,
        } => {
            let target = match (tag, customer, all) {
                (Some(tag), None, false) => DeployTarget::Tag { tag },
                (None, Some(customer), false) => DeployTarget::Customer { customer },
                (None, None, true) => DeployTarget::All,
                _ => anyhow::bail!("name one target: --tag T, --customer C or --all"),
            };
            let s = DeploySchedule {
                id,
                window: InstallWindow {
                    days: parse_days(&days)?,
                    start,
                    duration_minutes: minutes,
                    timezone: tz,
                },
                target,
                security_only,
                stages: None,
                gate: None,
                options: options.options(),
                created_by: String::new(),
                last_run_ms: None,
                last_result: None,
            };
            let s: DeploySchedule = c.post("/api/v1/deploy-schedules", &s).await?;
            println!("{}", s.id);
        }
        ScheduleCmd::List { json } => {
            let all: Vec<DeploySchedule> = c.get("/api/v1/deploy-schedules").await?;
            if json {
                println!("{}", serde_json::to_string(&all)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    let days: Vec<String> = s
                        .window
                        .days
                        .iter()
                        .map(|d| {
                            serde_json::to_value(d)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                                .unwrap_or_default()
                        })
                        .collect();
                    vec![
                        s.id.clone(),
                        format!(
                            "{} {} {}m {}",
                            days.join(","),
                            s.window.start,
                            s.window.duration_minutes,
                            s.window.timezone
                        ),
                        s.target.to_string(),
                        if s.security_only {
                            "security"
                        } else {
                            "all approved"
                        }
                        .to_string(),
                        s.last_result.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(&["ID", "WHEN", "TARGET", "PATCHES", "LAST"], &rows);
        }
        ScheduleCmd::Remove { id } => {
            c.request(
                "DELETE",
                &format!("/api/v1/deploy-schedules/{}", path_escape(&id)),
                None,
            )
            .await?;
        }
    }
    Ok(())
}

fn patches(list: &[String]) -> anyhow::Result<Vec<PatchKey>> {
    list.iter()
        .map(|p| parse_patch(p).map_err(anyhow::Error::msg))
        .collect()
}

pub async fn run_verdict(
    args: VerdictArgs,
    verdict: Verdict,
    c: AdminClient,
) -> anyhow::Result<()> {
    parse_patch(&args.patch).map_err(anyhow::Error::msg)?;
    let rule: ApprovalRule = c
        .post(
            "/api/v1/approvals",
            &ManualBody {
                patch: args.patch,
                scope: Some(args.scope),
                verdict,
            },
        )
        .await?;
    println!("{}", rule.id);
    Ok(())
}

pub async fn run_approvals(args: ApprovalsArgs, c: AdminClient) -> anyhow::Result<()> {
    let a: DeviceApprovals = c
        .get(&format!("/api/v1/approvals/devices/{}", args.device))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string(&a)?);
        return Ok(());
    }
    if !a.assessed {
        println!("device {} has no assessment yet", a.device);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = a
        .decisions
        .iter()
        .map(|d| {
            let outcome = match d.decision.outcome {
                Outcome::Approved => "approved".to_string(),
                Outcome::Declined => "declined".to_string(),
                Outcome::Deferred { at_ms } => format!("deferred until {at_ms}"),
                Outcome::Unapproved => "unapproved".to_string(),
            };
            vec![
                d.patch.to_string(),
                outcome,
                d.decision
                    .rule
                    .as_ref()
                    .map_or("-".to_string(), |r| r.id.clone()),
                d.decision.explanation.clone(),
            ]
        })
        .collect();
    print_table(&["PATCH", "DECISION", "RULE", "WHY"], &rows);
    for u in &a.unnamed {
        println!("{u}: cannot be approved (the candidate's source version is unknown)");
    }
    Ok(())
}

pub async fn run_rules(cmd: ApprovalRulesCmd, c: AdminClient) -> anyhow::Result<()> {
    match cmd {
        ApprovalRulesCmd::Add {
            id,
            scope,
            min_severity,
            security_only,
            delay_days,
            allow,
            deny,
        } => {
            let tenant = tenant_of(&c, &scope).await?;
            let scope = parse_scope(&scope, tenant.as_deref()).map_err(anyhow::Error::msg)?;
            let min_severity = min_severity
                .map(|s| {
                    Severity::parse(&s).ok_or_else(|| anyhow::anyhow!("unknown severity {s:?}"))
                })
                .transpose()?;
            let rule = ApprovalRule {
                id,
                scope,
                rule: RuleKind::Auto(AutoRule {
                    min_severity,
                    security_only,
                    delay_days,
                    allow,
                    deny,
                }),
            };
            let r: ApprovalRule = c.post("/api/v1/approvals/rules", &rule).await?;
            println!("{}", r.id);
        }
        ApprovalRulesCmd::List { json } => {
            let rules: Vec<ApprovalRule> = c.get("/api/v1/approvals/rules").await?;
            if json {
                println!("{}", serde_json::to_string(&rules)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = rules
                .iter()
                .map(|r| {
                    let what = match &r.rule {
                        RuleKind::Manual { patch, verdict } => format!(
                            "{} {patch}",
                            match verdict {
                                Verdict::Approve => "approve",
                                Verdict::Decline => "decline",
                            }
                        ),
                        RuleKind::Auto(a) => serde_json::to_string(a).unwrap_or_default(),
                    };
                    vec![r.id.clone(), r.scope.to_string(), what]
                })
                .collect();
            print_table(&["ID", "SCOPE", "RULE"], &rows);
        }
        ApprovalRulesCmd::Remove { id } => {
            c.request(
                "DELETE",
                &format!("/api/v1/approvals/rules/{}", path_escape(&id)),
                None,
            )
            .await?;
        }
    }
    Ok(())
}

/// A bare `tenant` scope is resolved by the appliance; nothing to ask here.
async fn tenant_of(_c: &AdminClient, scope: &str) -> anyhow::Result<Option<String>> {
    if scope == "tenant" {
        anyhow::bail!("an auto rule needs its tenant named: --scope tenant:NAME");
    }
    Ok(None)
}

fn path_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn print_view(v: &DeploymentView) {
    let s = &v.summary;
    println!(
        "deployment {}  {}  stage {}/{}  target {}  created {} by {}",
        s.id,
        s.phase,
        s.stage.map_or("-".into(), |k| (k + 1).to_string()),
        s.stages,
        s.target,
        ago(s.created_at_ms),
        s.created_by
    );
    let patches: Vec<String> = s.patches.iter().map(|p| p.to_string()).collect();
    println!("patches {}", patches.join(" "));
    if let Some(d) = &v.download {
        println!(
            "download {} on {} devices still missing them ({} through the site cache)",
            d.devices.display(),
            d.devices_missing,
            d.site.display()
        );
    }
    let rows: Vec<Vec<String>> = v
        .stages
        .iter()
        .map(|st| {
            let f = &st.figures;
            vec![
                (f.stage + 1).to_string(),
                f.devices.to_string(),
                f.succeeded.to_string(),
                f.failed.to_string(),
                f.in_flight.to_string(),
                f.waiting.to_string(),
                st.gate.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "STAGE",
            "DEVICES",
            "OK",
            "FAILED",
            "IN FLIGHT",
            "WAITING",
            "GATE",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = v
        .stored
        .deployment
        .devices
        .iter()
        .map(|(d, r)| {
            vec![
                d.clone(),
                (r.stage + 1).to_string(),
                r.state.as_str().to_string(),
                r.attempt.to_string(),
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["DEVICE", "STAGE", "STATE", "ATTEMPT", "REASON"], &rows);
}

pub async fn run_deployments(cmd: DeploymentsCmd, c: AdminClient) -> anyhow::Result<()> {
    match cmd {
        DeploymentsCmd::Create {
            device,
            tag,
            customer,
            all,
            patch,
            security_only,
            stages,
            min_success,
            min_finished,
            soak_minutes,
            auto_rollback,
            window_days,
            window_start,
            window_minutes,
            window_tz,
            id,
            options,
            json,
        } => {
            let chosen = usize::from(!device.is_empty())
                + usize::from(tag.is_some())
                + usize::from(customer.is_some())
                + usize::from(all);
            if chosen != 1 {
                anyhow::bail!("name one target: --device ID..., --tag T, --customer C or --all");
            }
            let target = if !device.is_empty() {
                DeployTarget::Devices {
                    devices: device.iter().map(|d| d.to_string()).collect(),
                }
            } else if let Some(tag) = tag {
                DeployTarget::Tag { tag }
            } else if let Some(customer) = customer {
                DeployTarget::Customer { customer }
            } else {
                DeployTarget::All
            };
            let gate = (min_success.is_some() || min_finished.is_some() || soak_minutes.is_some())
                .then(|| {
                    let d = GateSpec::default();
                    GateSpec {
                        min_success_pct: min_success.unwrap_or(d.min_success_pct),
                        min_finished: min_finished.unwrap_or(d.min_finished),
                        soak_ms: soak_minutes.map_or(d.soak_ms, |m| m * 60_000),
                    }
                });
            let window = match window_start {
                None => None,
                Some(start) => {
                    let days = parse_days(&window_days)?;
                    Some(InstallWindow {
                        days,
                        start,
                        duration_minutes: window_minutes,
                        timezone: window_tz,
                    })
                }
            };
            let req = CreateRequest {
                id,
                target,
                patches: if patch.is_empty() {
                    None
                } else {
                    Some(patches(&patch)?)
                },
                security_only,
                stages: (!stages.is_empty()).then_some(stages),
                gate,
                auto_rollback_failed_pct: auto_rollback,
                install_deadline_ms: None,
                window,
                options: options.options(),
                start: true,
            };
            let v: DeploymentView = c.post("/api/v1/deployments", &req).await?;
            if json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!("{}", v.summary.id);
            }
        }
        DeploymentsCmd::List { json } => {
            let all: Vec<DeploymentSummary> = c.get("/api/v1/deployments").await?;
            if json {
                println!("{}", serde_json::to_string(&all)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        s.phase.clone(),
                        s.stage
                            .map_or("-".into(), |k| format!("{}/{}", k + 1, s.stages)),
                        s.devices.to_string(),
                        s.succeeded.to_string(),
                        s.failed.to_string(),
                        s.target.clone(),
                        ago(s.created_at_ms),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID", "STATE", "STAGE", "DEVICES", "OK", "FAILED", "TARGET", "CREATED",
                ],
                &rows,
            );
        }
        DeploymentsCmd::Show { id, json } => {
            let v: DeploymentView = c
                .get(&format!("/api/v1/deployments/{}", path_escape(&id)))
                .await?;
            if json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                print_view(&v);
            }
        }
        DeploymentsCmd::Pause { id, note } => {
            let v: DeploymentView = c
                .post(
                    &format!("/api/v1/deployments/{}/pause", path_escape(&id)),
                    &NoteBody { note },
                )
                .await?;
            println!("{}", v.summary.phase);
        }
        DeploymentsCmd::Resume {
            id,
            retry_failed,
            force,
            patch,
        } => {
            let body = ResumeBody {
                retry_failed,
                force,
                patches: if patch.is_empty() {
                    None
                } else {
                    Some(patches(&patch)?)
                },
            };
            let v: DeploymentView = c
                .post(
                    &format!("/api/v1/deployments/{}/resume", path_escape(&id)),
                    &body,
                )
                .await?;
            println!("{}", v.summary.phase);
        }
        DeploymentsCmd::Abort { id, note } => {
            let v: DeploymentView = c
                .post(
                    &format!("/api/v1/deployments/{}/abort", path_escape(&id)),
                    &NoteBody { note },
                )
                .await?;
            println!("{}", v.summary.phase);
        }
        DeploymentsCmd::Rollback { id, device, stage } => {
            let scope = match (device, stage) {
                (Some(d), _) => RollbackScope::Device {
                    device: d.to_string(),
                },
                (None, Some(s)) => RollbackScope::Stage {
                    stage: s.saturating_sub(1),
                },
                (None, None) => RollbackScope::Deployment,
            };
            let v: DeploymentView = c
                .post(
                    &format!("/api/v1/deployments/{}/rollback", path_escape(&id)),
                    &scope,
                )
                .await?;
            println!("{}", v.summary.phase);
        }
        DeploymentsCmd::Schedule(cmd) => run_schedule(cmd, c).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use outpost_patch::approval::ApprovalScope;

    #[derive(Parser, Debug)]
    struct T {
        #[command(subcommand)]
        cmd: DeploymentsCmd,
    }

    #[test]
    fn deployments_create_parses_target_stages_and_window() {
        let t = T::try_parse_from([
            "t",
            "create",
            "--tag",
            "servers",
            "--stages",
            "5,50,100",
            "--window-days",
            "tue",
            "--window-start",
            "02:00",
        ])
        .unwrap();
        match t.cmd {
            DeploymentsCmd::Create {
                tag,
                stages,
                window_days,
                ..
            } => {
                assert_eq!(tag.as_deref(), Some("servers"));
                assert_eq!(stages, vec![5, 50, 100]);
                assert_eq!(window_days, vec!["tue".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            T::try_parse_from(["t", "rollback", "d", "--device", "x", "--stage", "1"]).is_err()
        );
    }

    #[test]
    fn a_bare_tenant_scope_resolves_at_the_appliance_for_verdicts() {
        assert_eq!(
            parse_scope("customer:dental", None).unwrap(),
            ApprovalScope::Customer {
                customer: "dental".into()
            }
        );
    }
}
