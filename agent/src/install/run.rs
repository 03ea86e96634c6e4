//! The install and rollback sequences (see the module's documentation),
//! and what the installer does at start: an interrupted command's final
//! status, a pending reboot's verdict.

use std::path::Path;
use std::time::Duration;

use outpost_patch::install::wire::{
    DeviceStatus, InstallRequest, MAX_LOG_TAIL_BYTES, MAX_PLAIN_BYTES, Phase, REQUEST_FORMAT,
    RebootPolicy, RollbackRequest, ScriptStep,
};
use outpost_patch::install::{
    BinaryTarget, InstallPlan, KeptDeb, PlanOptions, PreCheck, RollbackStep, Skip, Skipped,
    changes_between, combine_changes, combine_kept, free_space_ok, parse_apt_output, plan_install,
    plan_rollback, unmet_targets,
};
use outpost_patch::scan::Scan;
use outpost_proto::codec;
use outpost_proto::ids::CommandId;
use outpost_proto::messages::CommandOutcome;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::PatchInstaller;
use super::state::{InFlight, InstallRecord, PendingReboot};
use super::tools::{self, Limits, OutputFn, Ran};
use crate::session::now_ms;

/// Why a request cannot be read.
pub fn decode<T: serde::de::DeserializeOwned>(format: u16, bytes: &[u8]) -> Result<T, String> {
    if format != REQUEST_FORMAT {
        return Err(format!(
            "unknown patch request format {format} (this agent reads format {REQUEST_FORMAT}): update the agent"
        ));
    }
    codec::decode_compressed(bytes, MAX_PLAIN_BYTES)
        .map_err(|e| format!("the patch request cannot be decoded: {e}"))
}

/// One line per skipped target (`nginx=1.2: held at 1.1`).
pub fn skipped_line(s: &Skipped) -> String {
    let why = match &s.why {
        Skip::Held { installed } => format!("held at {installed}"),
        Skip::AlreadyInstalled => "already installed".into(),
        Skip::NewerInstalled { installed } => format!("newer version {installed} installed"),
        Skip::NotInstalled => "not installed".into(),
        Skip::AmbiguousArch => "several architectures installed, none named".into(),
        Skip::BadVersion { reason } => format!("bad version: {reason}"),
    };
    format!("{}: {why}", s.target.apt_arg())
}

/// Failed reason from an apt run: the first dpkg failure, the lock, the
/// first error, else how it ended.
fn apt_reason(what: &str, r: &Ran) -> String {
    let o = parse_apt_output(&r.text);
    if let Some(l) = &o.lock {
        return format!(
            "{what}: the dpkg lock is held{}{}",
            l.pid.map(|p| format!(" by pid {p}")).unwrap_or_default(),
            l.process
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        );
    }
    if let Some(f) = o.failures.first() {
        return format!("{what}: {} ({}): {}", f.package, f.stage, f.reason);
    }
    if let Some(e) = o.errors.first() {
        return format!("{what}: {e}");
    }
    format!("{what}: apt-get {}", r.how())
}

/// A status under construction, sent as it changes.
struct Report<'a> {
    inst: &'a PatchInstaller,
    status: DeviceStatus,
    output: &'a OutputFn,
}

impl Report<'_> {
    fn line(&self, s: impl AsRef<str>) {
        (self.output)(format!("outpost: {}\n", s.as_ref()).into_bytes());
    }

    fn send(&mut self, phase: Phase) {
        self.status.phase = phase;
        self.status.at_ms = now_ms();
        if let Err(e) = self.inst.inner.statuses.write(&self.status) {
            warn!(command = %self.status.command, error = %e, "could not buffer a patch status");
        }
    }

    /// The final status: the in-flight marker goes first (a stop between
    /// the two leaves the command `interrupted` in the ledger, never two
    /// final statuses).
    fn finish(&mut self, phase: Phase, reason: Option<String>, log: &str) -> CommandOutcome {
        if let Err(e) = self.inst.inner.state.end(&self.status.command) {
            warn!(error = %e, "removing the in-flight marker");
        }
        if let Some(r) = &reason {
            self.line(format!("{}: {r}", phase.as_str()));
        } else {
            self.line(phase.as_str());
        }
        self.status.reason = reason;
        if !matches!(phase, Phase::Succeeded | Phase::RolledBack) {
            self.status.log_tail = tools::tail(log, MAX_LOG_TAIL_BYTES);
        }
        self.send(phase);
        match phase {
            Phase::Succeeded | Phase::RolledBack | Phase::RebootPending => {
                CommandOutcome::Exited { code: 0 }
            }
            _ => CommandOutcome::Exited { code: 1 },
        }
    }
}

impl PatchInstaller {
    /// apt's proxy for a request: the request's own, else the scanner's
    /// (`[package_tools] apt_proxy`: the site's LAN cache), `"direct"`
    /// meaning none.
    pub fn proxy_for(&self, requested: Option<String>) -> Option<String> {
        requested
            .or_else(|| self.inner.scan.apt_proxy.clone())
            .filter(|p| p != "direct")
    }

    fn boot_id(&self) -> Option<String> {
        crate::commands::reboot::boot_id(&self.inner.reboot).ok()
    }

    async fn scan(&self) -> Result<Scan, String> {
        let mut t = self.inner.scan.clone();
        // Installed versions only: apt's simulation is not needed.
        t.apt_simulate = false;
        tokio::task::spawn_blocking(move || {
            crate::scan::collect(&t, now_ms())
                .map(|c| c.scan)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("the scan task failed: {e}"))?
    }

    /// apt-get with the acquire bounds and the configured extra options.
    async fn apt(
        &self,
        argv: &[String],
        env: &[(String, String)],
        extra: &[&str],
        cancel: CancellationToken,
        output: &OutputFn,
    ) -> Ran {
        let t = &self.inner.tools;
        let mut args = t.apt_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(argv.iter().skip(1).cloned());
        (output)(
            format!(
                "outpost: $ {} {}\n",
                t.apt_get.display(),
                argv[1..].join(" ")
            )
            .into_bytes(),
        );
        tools::run(
            &t.apt_get.display().to_string(),
            &args,
            env,
            Path::new("/"),
            Limits {
                timeout: t.apt_timeout,
                kill_grace: self.inner.kill_grace,
            },
            cancel,
            Some(output),
        )
        .await
    }

    async fn script(&self, step: &ScriptStep, output: &OutputFn) -> Result<(), String> {
        let program = match step.interpreter.as_str() {
            "sh" | "bash" | "python3" => step.interpreter.clone(),
            other => return Err(format!("script {}: unknown interpreter {other}", step.name)),
        };
        (output)(format!("outpost: script {} v{}\n", step.name, step.version).into_bytes());
        let r = tools::run(
            &program,
            &["-c".into(), step.body.clone()],
            &[],
            Path::new("/"),
            Limits {
                timeout: Duration::from_millis(step.timeout_ms.max(1000)),
                kill_grace: self.inner.kill_grace,
            },
            CancellationToken::new(),
            Some(output),
        )
        .await;
        if r.ok() {
            Ok(())
        } else {
            Err(format!(
                "script {} v{}: {}",
                step.name,
                step.version,
                r.how()
            ))
        }
    }

    /// The pre-checks of a plan, in order; the first failure's reason.
    async fn prechecks(&self, checks: &[PreCheck]) -> Result<(), String> {
        let t = &self.inner.tools;
        for c in checks {
            match c {
                PreCheck::DpkgLockFree => {
                    if let Some(why) = tools::lock_held(&self.inner.reboot.dpkg_lock) {
                        return Err(why);
                    }
                }
                PreCheck::DpkgAuditClean => {
                    let f = tools::audit(t, self.inner.kill_grace).await?;
                    if !f.is_empty() {
                        return Err(format!(
                            "dpkg --audit is not clean: {}",
                            tools::audit_line(&f)
                        ));
                    }
                }
                PreCheck::FreeSpace { path, .. } => {
                    let avail = tools::available_bytes(&tools::under_root(&t.root, path))?;
                    free_space_ok(c, avail)?;
                }
                PreCheck::VerifyDeb { path, sha256 } => {
                    let p = Path::new(path);
                    if !self.inner.state.is_kept_path(p) {
                        return Err(format!(
                            "kept .deb {path} is outside the agent's kept-deb directory: refused"
                        ));
                    }
                    let got = tools::sha256_file(p)?;
                    if !got.eq_ignore_ascii_case(sha256) {
                        return Err(format!(
                            "kept .deb {path} has SHA-256 {got}, {sha256} was recorded: refused"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// `InstallPatches`: runs the whole sequence; the command's outcome.
    pub async fn install(
        &self,
        id: CommandId,
        format: u16,
        request: &[u8],
        output: OutputFn,
        cancel: CancellationToken,
    ) -> CommandOutcome {
        let mut req: InstallRequest = match decode(format, request) {
            Ok(r) => r,
            Err(reason) => return CommandOutcome::Refused { reason },
        };
        req.proxy = self.proxy_for(req.proxy.take());
        let command = id.to_string();
        let mut rep = Report {
            inst: self,
            status: DeviceStatus {
                command: command.clone(),
                deployment: req.deployment.clone(),
                attempt: req.attempt,
                rollback: false,
                phase: Phase::Downloading,
                reason: None,
                changes: Vec::new(),
                kept: Vec::new(),
                skipped: Vec::new(),
                snapshot: None,
                boot_id: self.boot_id(),
                reboot_required: false,
                log_tail: String::new(),
                at_ms: now_ms(),
            },
            output: &output,
        };
        if let Err(e) = self.inner.state.begin(&InFlight {
            command: command.clone(),
            deployment: req.deployment.clone(),
            attempt: req.attempt,
            rollback: false,
        }) {
            return rep.finish(
                Phase::Failed,
                Some(format!("recording the install's start failed: {e}")),
                "",
            );
        }
        info!(%command, deployment = %req.deployment, targets = req.targets.len(), "patch install");
        let before = match self.scan().await {
            Ok(s) => s,
            Err(e) => {
                return rep.finish(
                    Phase::Failed,
                    Some(format!("scan before the install: {e}")),
                    "",
                );
            }
        };
        let opts = PlanOptions {
            proxy: req.proxy.clone(),
            min_free_root_bytes: req.min_free_root_bytes,
            ..PlanOptions::default()
        };
        let plan = plan_install(&req.targets, &before, &opts);
        rep.status.skipped = plan.skipped.iter().map(skipped_line).collect();
        for s in &rep.status.skipped {
            rep.line(format!("skipped {s}"));
        }
        if plan.install.is_empty() {
            return rep.finish(Phase::Succeeded, None, "");
        }
        if let Err(why) = self.prechecks(&plan.prechecks).await {
            return rep.finish(Phase::Failed, Some(format!("pre-check: {why}")), "");
        }
        if let Some(s) = &req.pre_script
            && let Err(e) = self.script(s, &output).await
        {
            return rep.finish(Phase::Failed, Some(format!("pre-script: {e}")), "");
        }
        if req.snapshot {
            match tools::snapshot(&self.inner.tools, &command, self.inner.kill_grace, &output).await
            {
                Ok(name) => {
                    rep.line(format!("snapshot {name}"));
                    rep.status.snapshot = Some(name);
                }
                Err(why) => rep.line(format!("snapshot {why}")),
            }
        }
        // Fresh indexes through the site cache (the approved version may
        // be newer than the device's lists); a failure is only logged: the
        // download below says whether the version is reachable.
        let mut update = vec![
            self.inner.tools.apt_get.display().to_string(),
            "update".into(),
        ];
        if let Some(p) = &req.proxy {
            update.push("-o".into());
            update.push(format!("Acquire::http::Proxy={p}"));
        }
        let u = self
            .apt(&update, &plan.env, &[], cancel.clone(), &output)
            .await;
        if !u.ok() {
            rep.line(format!(
                "apt-get update: {} (going on with the current indexes)",
                u.how()
            ));
        }
        if req.keep_previous_debs {
            rep.status.kept = self.keep_debs(&plan, req.proxy.as_deref(), &rep).await;
        }
        rep.send(Phase::Downloading);
        if cancel.is_cancelled() {
            return rep.finish(
                Phase::Failed,
                Some(format!(
                    "{} before the install",
                    outpost_patch::install::wire::CANCELLED_REASON_PREFIX
                )),
                "",
            );
        }
        let r = self
            .apt(
                &plan.argv,
                &plan.env,
                &["--download-only"],
                cancel.clone(),
                &output,
            )
            .await;
        if !r.ok() {
            return rep.finish(Phase::Failed, Some(apt_reason("download", &r)), &r.text);
        }
        rep.send(Phase::Installing);
        // Not cancellable from here: dpkg is never killed on purpose.
        let r = self
            .apt(
                &plan.argv,
                &plan.env,
                &[],
                CancellationToken::new(),
                &output,
            )
            .await;
        if !r.ok() {
            // A failed transaction leaves what it unpacked unconfigured
            // (a new dependency of the package that failed): configure it
            // so dpkg's database is clean for the next attempt (the
            // failed package itself stays at its old version).
            match tools::configure_pending(&self.inner.tools, self.inner.kill_grace).await {
                Ok(_) => rep.line("configured the packages the failed install left unpacked"),
                Err(e) => rep.line(e),
            }
        }
        let after = self.scan().await;
        if let Ok(after) = &after {
            rep.status.changes = changes_between(&before, after);
        }
        let _ = self.inner.state.put_record(
            &command,
            &InstallRecord {
                changes: rep.status.changes.clone(),
                kept: rep.status.kept.clone(),
                deployment: req.deployment.clone(),
                attempt: req.attempt,
            },
        );
        if !r.ok() {
            return rep.finish(Phase::Failed, Some(apt_reason("install", &r)), &r.text);
        }
        let after = match after {
            Ok(a) => a,
            Err(e) => {
                return rep.finish(
                    Phase::Failed,
                    Some(format!("scan after the install: {e}")),
                    &r.text,
                );
            }
        };
        let unmet = unmet_targets(&plan, &after);
        if !unmet.is_empty() {
            return rep.finish(
                Phase::Failed,
                Some(format!("not installed after apt: {}", unmet.join(", "))),
                &r.text,
            );
        }
        if let Some(s) = &req.post_script
            && let Err(e) = self.script(s, &output).await
        {
            return rep.finish(Phase::Failed, Some(format!("post-script: {e}")), &r.text);
        }
        rep.status.reboot_required = self.inner.scan.reboot_required.exists();
        let reboot = match req.reboot {
            RebootPolicy::Never => false,
            RebootPolicy::IfRequired => rep.status.reboot_required,
            RebootPolicy::Always => true,
        };
        if !reboot {
            return rep.finish(Phase::Succeeded, None, &r.text);
        }
        self.reboot(rep, plan.install.clone(), &r.text).await
    }

    /// Keeps the `.deb` of each version the plan replaces (a failure is a
    /// log line: the rollback then needs the repositories for it).
    async fn keep_debs(
        &self,
        plan: &InstallPlan,
        proxy: Option<&str>,
        rep: &Report<'_>,
    ) -> Vec<KeptDeb> {
        let debs = self.inner.state.debs();
        if let Err(e) = std::fs::create_dir_all(&debs) {
            rep.line(format!(
                "keeping previous .debs: creating {}: {e}",
                debs.display()
            ));
            return Vec::new();
        }
        let mut kept = Vec::new();
        for p in &plan.previous {
            match tools::keep_deb(
                &self.inner.tools,
                &debs,
                p,
                proxy,
                self.inner.kill_grace,
                rep.output,
            )
            .await
            {
                Ok(k) => {
                    rep.line(format!("kept {} sha256 {}", k.path, k.sha256));
                    kept.push(k);
                }
                Err(e) => rep.line(format!("keeping the previous .deb: {e}")),
            }
        }
        kept
    }

    /// Reboot after the install: recorded on disk with the boot id and the
    /// expected versions, `reboot_pending` sent, then the reboot command
    /// (under the reboot action's guard).
    async fn reboot(
        &self,
        mut rep: Report<'_>,
        expected: Vec<BinaryTarget>,
        log: &str,
    ) -> CommandOutcome {
        let reboot = &self.inner.reboot;
        if let Err(why) = crate::commands::reboot::guard(reboot) {
            return rep.finish(Phase::Failed, Some(format!("reboot: {why}")), log);
        }
        let Some(boot_id) = self.boot_id() else {
            return rep.finish(
                Phase::Failed,
                Some("reboot: the boot id is unreadable".into()),
                log,
            );
        };
        rep.status.phase = Phase::RebootPending;
        rep.status.boot_id = Some(boot_id.clone());
        if let Err(e) = self.inner.state.put_reboot(&PendingReboot {
            status: rep.status.clone(),
            boot_id,
            expected,
        }) {
            return rep.finish(
                Phase::Failed,
                Some(format!("recording the pending reboot: {e}")),
                log,
            );
        }
        let delay_s = self.inner.tools.reboot_delay.as_secs();
        let r = tools::run(
            "sh",
            &["-c".into(), reboot.command.clone(), "outpost-reboot".into()],
            &[
                ("OUTPOST_REBOOT_DELAY_S".into(), delay_s.to_string()),
                ("OUTPOST_AGENT_PID".into(), std::process::id().to_string()),
            ],
            Path::new("/"),
            Limits {
                timeout: Duration::from_secs(60),
                kill_grace: self.inner.kill_grace,
            },
            CancellationToken::new(),
            Some(rep.output),
        )
        .await;
        if !r.ok() {
            let _ = self.inner.state.remove_reboot(&rep.status.command);
            return rep.finish(
                Phase::Failed,
                Some(format!("the reboot command failed: {}", r.how())),
                &r.text,
            );
        }
        rep.line(format!("rebooting in {delay_s} s"));
        rep.finish(Phase::RebootPending, None, log)
    }

    /// `RollbackPatches`.
    pub async fn rollback(
        &self,
        id: CommandId,
        format: u16,
        request: &[u8],
        output: OutputFn,
        _cancel: CancellationToken,
    ) -> CommandOutcome {
        let mut req: RollbackRequest = match decode(format, request) {
            Ok(r) => r,
            Err(reason) => return CommandOutcome::Refused { reason },
        };
        req.proxy = self.proxy_for(req.proxy.take());
        let command = id.to_string();
        let mut rep = Report {
            inst: self,
            status: DeviceStatus {
                command: command.clone(),
                deployment: req.deployment.clone(),
                attempt: req.attempt,
                rollback: true,
                phase: Phase::Installing,
                reason: None,
                changes: Vec::new(),
                kept: Vec::new(),
                skipped: Vec::new(),
                snapshot: None,
                boot_id: self.boot_id(),
                reboot_required: false,
                log_tail: String::new(),
                at_ms: now_ms(),
            },
            output: &output,
        };
        if let Err(e) = self.inner.state.begin(&InFlight {
            command: command.clone(),
            deployment: req.deployment.clone(),
            attempt: req.attempt,
            rollback: true,
        }) {
            return rep.finish(
                Phase::RollbackFailed,
                Some(format!("recording the rollback's start failed: {e}")),
                "",
            );
        }
        // Every attempt of the deployment is undone: the agent's own
        // records of them, the one the appliance named (a record written
        // before records named their deployment), and what the appliance
        // was told (all the agent has if it lost its records).
        let mut records = self.inner.state.records_of(&req.deployment);
        if let Some(named) = self.inner.state.record(&req.install_command) {
            records.push(named);
        }
        records.push(InstallRecord {
            changes: req.changes.clone(),
            kept: req.kept.clone(),
            deployment: req.deployment.clone(),
            attempt: req.attempt,
        });
        let changes = combine_changes(records.iter().map(|r| r.changes.as_slice()));
        let kept = combine_kept(records.iter().map(|r| r.kept.as_slice()));
        let plan = plan_rollback(&changes, &kept, req.proxy.as_deref());
        if plan.steps.is_empty() {
            return rep.finish(Phase::RolledBack, None, "");
        }
        for r in &plan.from_repository {
            rep.line(format!("{r}: no kept .deb, from the repositories"));
        }
        let before = self.scan().await.ok();
        if let Err(why) = self.prechecks(&plan.prechecks).await {
            let out = rep.finish(Phase::RollbackFailed, Some(format!("pre-check: {why}")), "");
            return match out {
                CommandOutcome::Exited { .. } => CommandOutcome::Refused {
                    reason: format!("pre-check: {why}"),
                },
                o => o,
            };
        }
        rep.send(Phase::Installing);
        let r = self
            .apt(
                &plan.argv,
                &plan.env,
                &[],
                CancellationToken::new(),
                &output,
            )
            .await;
        let after = self.scan().await;
        if let (Some(b), Ok(a)) = (&before, &after) {
            rep.status.changes = changes_between(b, a);
        }
        if !r.ok() {
            return rep.finish(
                Phase::RollbackFailed,
                Some(apt_reason("rollback", &r)),
                &r.text,
            );
        }
        let after = match after {
            Ok(a) => a,
            Err(e) => {
                return rep.finish(
                    Phase::RollbackFailed,
                    Some(format!("scan after the rollback: {e}")),
                    &r.text,
                );
            }
        };
        let wrong = rollback_unmet(&plan.steps, &after);
        if !wrong.is_empty() {
            return rep.finish(
                Phase::RollbackFailed,
                Some(format!("not rolled back: {}", wrong.join(", "))),
                &r.text,
            );
        }
        rep.finish(Phase::RolledBack, None, &r.text)
    }

    /// At start: every install or rollback cut short by the last stop is
    /// reported `failed` ("interrupted", with `dpkg --audit`'s findings);
    /// every pending reboot whose boot id changed is verified.
    pub async fn recover(&self) {
        let st = &self.inner.state;
        for m in st.in_flight() {
            let f = match m {
                Ok(f) => f,
                Err(path) => {
                    warn!(path = %path.display(), "unreadable in-flight marker removed");
                    let _ = std::fs::remove_file(path);
                    continue;
                }
            };
            let audit = match tools::audit(&self.inner.tools, self.inner.kill_grace).await {
                Ok(a) if a.is_empty() => "dpkg --audit is clean".to_string(),
                Ok(a) => format!("dpkg --audit: {}", tools::audit_line(&a)),
                Err(e) => e,
            };
            let reason = format!(
                "interrupted: the agent stopped during the {}; {audit}",
                if f.rollback { "rollback" } else { "install" }
            );
            warn!(command = %f.command, %reason, "patch command interrupted");
            let status = DeviceStatus {
                command: f.command.clone(),
                deployment: f.deployment,
                attempt: f.attempt,
                rollback: f.rollback,
                phase: if f.rollback {
                    Phase::RollbackFailed
                } else {
                    Phase::Failed
                },
                reason: Some(reason),
                changes: Vec::new(),
                kept: Vec::new(),
                skipped: Vec::new(),
                snapshot: None,
                boot_id: self.boot_id(),
                reboot_required: false,
                log_tail: String::new(),
                at_ms: now_ms(),
            };
            let _ = st.end(&f.command);
            if let Err(e) = self.inner.statuses.write(&status) {
                warn!(error = %e, "could not buffer the interrupted status");
            }
        }
        let current = self.boot_id();
        for p in st.reboots() {
            if !crate::commands::reboot::rebooted(&p.boot_id, current.as_deref()) {
                continue;
            }
            let mut status = p.status.clone();
            status.boot_id = current.clone();
            status.at_ms = now_ms();
            match self.scan().await {
                Ok(scan) => {
                    let plan = InstallPlan {
                        install: p.expected.clone(),
                        skipped: Vec::new(),
                        previous: Vec::new(),
                        prechecks: Vec::new(),
                        argv: Vec::new(),
                        env: Vec::new(),
                    };
                    let unmet = unmet_targets(&plan, &scan);
                    if unmet.is_empty() {
                        status.phase = Phase::Succeeded;
                    } else {
                        status.phase = Phase::Failed;
                        status.reason = Some(format!(
                            "after the reboot, not installed: {}",
                            unmet.join(", ")
                        ));
                    }
                }
                Err(e) => {
                    status.phase = Phase::Failed;
                    status.reason = Some(format!("scan after the reboot: {e}"));
                }
            }
            info!(command = %status.command, phase = status.phase.as_str(), "reboot completed");
            let _ = st.remove_reboot(&status.command);
            if let Err(e) = self.inner.statuses.write(&status) {
                warn!(error = %e, "could not buffer the status after the reboot");
            }
        }
    }
}

/// Rollback steps a scan shows undone (`name=version` or `name-`).
pub fn rollback_unmet(steps: &[RollbackStep], after: &Scan) -> Vec<String> {
    let mut wrong = Vec::new();
    for s in steps {
        match s {
            RollbackStep::Restore {
                name,
                arch,
                version,
                ..
            } => {
                let ok = after.dpkg.iter().any(|p| {
                    p.name == *name
                        && (arch.is_empty() || p.arch == *arch)
                        && p.version.as_str() == version
                });
                if !ok {
                    wrong.push(format!("{name}={version}"));
                }
            }
            RollbackStep::Remove { name, arch } => {
                let present = after.dpkg.iter().any(|p| {
                    p.name == *name
                        && (arch.is_empty() || p.arch == *arch)
                        && p.state == outpost_patch::scan::model::PkgState::Installed
                });
                if present {
                    wrong.push(format!("{name}-"));
                }
            }
        }
    }
    wrong
}
