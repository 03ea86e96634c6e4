//! The deployment create form's options and the action forms' extra
//! fields (both scopes): stages, gate, auto-rollback, install deadline,
//! install window, reboot policy, pre/post scripts, snapshot; a rollback's
//! scope (the whole deployment, one stage, one device) and resume's
//! `patches` override.
//!
//! Everything a form sends is checked here, on the server, before any
//! backend sees it: a bad value gives one clear sentence per field, and
//! the list page shows the form again with what was typed
//! ([`CreateForm`] keeps the raw strings). The site still checks what it
//! receives (a time zone it does not know, a script not in its library).
//!
//! This module owns parsing, checking and the options' fieldset; the
//! pages and routes are [`crate::deployments`], the backends map
//! [`DeploymentOptions`] to their create request ([`DeploymentOptions::json`]
//! is the API's JSON for both).

use maud::{Markup, html};
use serde_json::{Map, Value, json};

use crate::deployments::NewDeployment;

/// Cumulative stage percentages a form may list.
pub const MAX_STAGES: usize = 10;
/// Longest install window (a week), as the site's.
pub const MAX_WINDOW_MINUTES: u32 = 7 * 24 * 60;
/// Longest install deadline the form takes (30 days).
pub const MAX_DEADLINE_MINUTES: u64 = 30 * 24 * 60;
/// The days of an install window, as the API spells them.
pub const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A weekly install window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowOption {
    /// `mon` … `sun`.
    pub days: Vec<String>,
    /// `HH:MM`, local.
    pub start: String,
    pub duration_minutes: u32,
    /// IANA name, or `device` (the device's own zone).
    pub timezone: String,
}

/// The create request's options; `None`: the site's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentOptions {
    /// Cumulative percentages, strictly increasing, ending at 100.
    pub stages: Option<Vec<u8>>,
    /// Gate: minimum share of succeeded among finished devices.
    pub min_success_pct: Option<u8>,
    /// Gate: minimum finished devices before a stage may be promoted.
    pub min_finished: Option<u32>,
    /// Gate: time after a stage's last result before promotion.
    pub soak_minutes: Option<u64>,
    /// Roll a stage back once its failures reach this share (percent).
    pub auto_rollback_failed_pct: Option<u8>,
    pub install_deadline_minutes: Option<u64>,
    pub window: Option<WindowOption>,
    /// `never`, `if_required`, `always`.
    pub reboot: Option<String>,
    pub pre_script: Option<String>,
    pub post_script: Option<String>,
    pub snapshot: Option<bool>,
}

impl DeploymentOptions {
    /// The options as the create request's JSON fields (the sites' API:
    /// `stages`, `gate`, `auto_rollback_failed_pct`,
    /// `install_deadline_ms`, `window`, `reboot`, `pre_script`,
    /// `post_script`, `snapshot`); unset ones are left out.
    pub fn json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(s) = &self.stages {
            m.insert("stages".into(), json!(s));
        }
        let mut gate = Map::new();
        if let Some(p) = self.min_success_pct {
            gate.insert("min_success_pct".into(), json!(p));
        }
        if let Some(n) = self.min_finished {
            gate.insert("min_finished".into(), json!(n));
        }
        if let Some(s) = self.soak_minutes {
            gate.insert("soak_ms".into(), json!(s * 60_000));
        }
        if !gate.is_empty() {
            m.insert("gate".into(), Value::Object(gate));
        }
        if let Some(p) = self.auto_rollback_failed_pct {
            m.insert("auto_rollback_failed_pct".into(), json!(p));
        }
        if let Some(d) = self.install_deadline_minutes {
            m.insert("install_deadline_ms".into(), json!(d * 60_000));
        }
        if let Some(w) = &self.window {
            m.insert(
                "window".into(),
                json!({"days": w.days, "start": w.start, "duration_minutes": w.duration_minutes, "timezone": w.timezone}),
            );
        }
        if let Some(r) = &self.reboot {
            m.insert("reboot".into(), json!(r));
        }
        if let Some(s) = &self.pre_script {
            m.insert("pre_script".into(), json!(s));
        }
        if let Some(s) = &self.post_script {
            m.insert("post_script".into(), json!(s));
        }
        if let Some(s) = self.snapshot {
            m.insert("snapshot".into(), json!(s));
        }
        m
    }

    /// The options in one line (for notices and audit): `stages 5,100 ·
    /// gate 90% …`; empty when all are defaults.
    pub fn summary(&self) -> String {
        self.json()
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

/// The create form as typed (`patch` and `day` repeat, so the body is
/// read as pairs); [`CreateForm::check`] turns it into a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateForm {
    pub csrf: String,
    pub target: String,
    pub patch: Vec<String>,
    pub security_only: bool,
    pub stages: String,
    pub min_success_pct: String,
    pub min_finished: String,
    pub soak_minutes: String,
    pub auto_rollback_failed_pct: String,
    pub deadline_minutes: String,
    pub window_days: Vec<String>,
    pub window_start: String,
    pub window_minutes: String,
    pub window_timezone: String,
    pub reboot: String,
    pub pre_script: String,
    pub post_script: String,
    /// ``, `yes`, `no`.
    pub snapshot: String,
}

/// What is wrong with a form: one sentence per field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormErrors(pub Vec<String>);

impl std::fmt::Display for FormErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    errs: &mut Vec<String>,
    label: &str,
    raw: &str,
    min: T,
    max: T,
) -> Option<T> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    match s.parse::<T>() {
        Ok(v) if v >= min && v <= max => Some(v),
        _ => {
            errs.push(format!(
                "{label}: \"{s}\" is not a whole number from {min} to {max}."
            ));
            None
        }
    }
}

fn some_text(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Checks `PKG=VERSION`.
pub fn check_patch(p: &str) -> Result<String, String> {
    let p = p.trim();
    match p.split_once('=') {
        Some((pkg, ver)) if !pkg.trim().is_empty() && !ver.trim().is_empty() => Ok(p.to_string()),
        _ => Err(format!("Patch \"{p}\" is not PKG=VERSION.")),
    }
}

/// A comma- or space-separated list of `PKG=VERSION`.
pub fn patch_list(s: &str) -> Result<Vec<String>, String> {
    s.split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(check_patch)
        .collect()
}

fn valid_hhmm(s: &str) -> bool {
    let Some((h, m)) = s.split_once(':') else {
        return false;
    };
    !h.is_empty()
        && h.len() <= 2
        && m.len() == 2
        && h.parse::<u8>().is_ok_and(|h| h < 24)
        && m.parse::<u8>().is_ok_and(|m| m < 60)
}

fn valid_name(s: &str) -> bool {
    s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl CreateForm {
    pub fn of(pairs: Vec<(String, String)>) -> CreateForm {
        let mut f = CreateForm::default();
        for (k, v) in pairs {
            match k.as_str() {
                "csrf" => f.csrf = v,
                "target" => f.target = v,
                "patch" => f.patch.push(v),
                "security_only" => f.security_only = true,
                "stages" => f.stages = v,
                "min_success_pct" => f.min_success_pct = v,
                "min_finished" => f.min_finished = v,
                "soak_minutes" => f.soak_minutes = v,
                "auto_rollback_failed_pct" => f.auto_rollback_failed_pct = v,
                "deadline_minutes" => f.deadline_minutes = v,
                "day" => f.window_days.push(v),
                "window_start" => f.window_start = v,
                "window_minutes" => f.window_minutes = v,
                "window_timezone" => f.window_timezone = v,
                "reboot" => f.reboot = v,
                "pre_script" => f.pre_script = v,
                "post_script" => f.post_script = v,
                "snapshot" => f.snapshot = v,
                _ => {}
            }
        }
        f
    }

    /// The request, or every field that is wrong.
    pub fn check(&self) -> Result<NewDeployment, FormErrors> {
        let mut errs = Vec::new();
        let mut patches = Vec::new();
        for p in self.patch.iter().filter(|p| !p.trim().is_empty()) {
            match check_patch(p) {
                Ok(p) => patches.push(p),
                Err(e) => errs.push(e),
            }
        }
        let stages = some_text(&self.stages).and_then(|s| {
            let parsed: Result<Vec<u8>, _> = s
                .split([',', ' '])
                .filter(|x| !x.is_empty())
                .map(|x| x.trim_end_matches('%').parse::<u8>())
                .collect();
            match parsed {
                Ok(v)
                    if !v.is_empty()
                        && v.len() <= MAX_STAGES
                        && v[0] >= 1
                        && v.windows(2).all(|w| w[0] < w[1])
                        && v.last() == Some(&100) =>
                {
                    Some(v)
                }
                _ => {
                    errs.push(format!(
                        "Stages: \"{s}\" must be up to {MAX_STAGES} cumulative percentages, strictly increasing from 1, ending at 100 (e.g. 5,25,100)."
                    ));
                    None
                }
            }
        });
        let min_success_pct = number(&mut errs, "Gate success %", &self.min_success_pct, 0u8, 100);
        let min_finished = number(
            &mut errs,
            "Gate minimum finished devices",
            &self.min_finished,
            1u32,
            100_000,
        );
        let soak_minutes = number(
            &mut errs,
            "Gate soak minutes",
            &self.soak_minutes,
            0u64,
            MAX_DEADLINE_MINUTES,
        );
        let auto_rollback_failed_pct = number(
            &mut errs,
            "Auto-rollback failure %",
            &self.auto_rollback_failed_pct,
            1u8,
            100,
        );
        let install_deadline_minutes = number(
            &mut errs,
            "Install deadline minutes",
            &self.deadline_minutes,
            1u64,
            MAX_DEADLINE_MINUTES,
        );
        let window = self.window(&mut errs);
        let reboot = some_text(&self.reboot);
        if let Some(r) = &reboot
            && !["never", "if_required", "always"].contains(&r.as_str())
        {
            errs.push(format!(
                "Reboot: \"{r}\" is not never, if_required or always."
            ));
        }
        let mut script = |label: &str, raw: &str| {
            let s = some_text(raw)?;
            if valid_name(&s) {
                Some(s)
            } else {
                errs.push(format!(
                    "{label}: \"{s}\" is not a script name (letters, digits, - _ .)."
                ));
                None
            }
        };
        let pre_script = script("Pre-install script", &self.pre_script);
        let post_script = script("Post-install script", &self.post_script);
        let snapshot = match self.snapshot.trim() {
            "" => None,
            "yes" => Some(true),
            "no" => Some(false),
            other => {
                errs.push(format!("Snapshot: \"{other}\" is not yes or no."));
                None
            }
        };
        if !errs.is_empty() {
            return Err(FormErrors(errs));
        }
        Ok(NewDeployment {
            target: self.target.trim().to_string(),
            patches,
            security_only: self.security_only,
            options: DeploymentOptions {
                stages,
                min_success_pct,
                min_finished,
                soak_minutes,
                auto_rollback_failed_pct,
                install_deadline_minutes,
                window,
                reboot,
                pre_script,
                post_script,
                snapshot,
            },
        })
    }

    /// The install window, when any of its fields is filled.
    fn window(&self, errs: &mut Vec<String>) -> Option<WindowOption> {
        let start = self.window_start.trim();
        let minutes = self.window_minutes.trim();
        if self.window_days.is_empty() && start.is_empty() && minutes.is_empty() {
            return None;
        }
        let before = errs.len();
        let mut days = Vec::new();
        for d in &self.window_days {
            let d = d.trim().to_ascii_lowercase();
            if !DAYS.contains(&d.as_str()) {
                errs.push(format!("Window: \"{d}\" is not a day (mon … sun)."));
            } else if !days.contains(&d) {
                days.push(d);
            }
        }
        if self.window_days.is_empty() {
            errs.push("Window: choose at least one day.".into());
        }
        if !valid_hhmm(start) {
            errs.push(format!(
                "Window start: \"{start}\" is not a time HH:MM (e.g. 22:00)."
            ));
        }
        let duration = if minutes.is_empty() {
            errs.push("Window length: give the window's length in minutes.".into());
            0
        } else {
            number(errs, "Window length", minutes, 1u32, MAX_WINDOW_MINUTES).unwrap_or(0)
        };
        // The sites check the name against the tz database; each device's
        // own zone is not known to them, so a window names its zone.
        let timezone = self.window_timezone.trim();
        if timezone.is_empty() {
            errs.push(
                "Window time zone: name the zone the window's times are in (an IANA name such as Europe/Berlin, or UTC).".into(),
            );
        } else if timezone.eq_ignore_ascii_case("device") {
            errs.push(
                "Window time zone: each device's own zone is not supported; name an IANA zone (Europe/Berlin, or UTC).".into(),
            );
        } else if timezone.len() > 64
            || !timezone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
        {
            errs.push(format!(
                "Window time zone: \"{timezone}\" is not an IANA name (Europe/Berlin, or UTC)."
            ));
        }
        (errs.len() == before).then(|| WindowOption {
            days,
            start: start.to_string(),
            duration_minutes: duration,
            timezone: timezone.to_string(),
        })
    }
}

/// The create form's options fieldset, filled with `f` (what was typed
/// before an error).
pub fn options_fieldset(f: &CreateForm) -> Markup {
    let sel = |v: &str, want: &str| v.trim() == want;
    html! {
        details #dep-options open[!f.stages.is_empty() || !f.min_success_pct.is_empty() || !f.window_days.is_empty() || !f.reboot.is_empty() || !f.pre_script.is_empty() || !f.post_script.is_empty() || !f.snapshot.is_empty() || !f.auto_rollback_failed_pct.is_empty() || !f.deadline_minutes.is_empty() || !f.min_finished.is_empty() || !f.soak_minutes.is_empty()] {
            summary { "Options (empty: the site's defaults)" }
            fieldset #dep-rollout {
                legend { "Rollout" }
                label { span { "Stages %" } input type="text" name="stages" id="dep-stages" value=(f.stages) placeholder="1,10,50,100"; }
                label { span { "Gate: success %" } input type="number" name="min_success_pct" id="dep-gate-pct" min="0" max="100" value=(f.min_success_pct) placeholder="95"; }
                label { span { "Gate: min finished" } input type="number" name="min_finished" id="dep-gate-min" min="1" value=(f.min_finished) placeholder="1"; }
                label { span { "Gate: soak minutes" } input type="number" name="soak_minutes" id="dep-soak" min="0" value=(f.soak_minutes) placeholder="60"; }
                label { span { "Auto-rollback at failure %" } input type="number" name="auto_rollback_failed_pct" id="dep-auto-rollback" min="1" max="100" value=(f.auto_rollback_failed_pct) placeholder="never"; }
                label { span { "Install deadline minutes" } input type="number" name="deadline_minutes" id="dep-deadline" min="1" value=(f.deadline_minutes) placeholder="240"; }
            }
            fieldset #dep-window {
                legend { "Install window (none: install at once)" }
                span.days { @for d in DAYS {
                    label.check { input type="checkbox" name="day" value=(d) checked[f.window_days.iter().any(|x| x == d)]; " " (d) }
                } }
                label { span { "Start" } input type="text" name="window_start" id="dep-window-start" value=(f.window_start) placeholder="22:00"; }
                label { span { "Minutes" } input type="number" name="window_minutes" id="dep-window-minutes" min="1" max=(MAX_WINDOW_MINUTES) value=(f.window_minutes) placeholder="240"; }
                label { span { "Time zone" } input type="text" name="window_timezone" id="dep-window-tz" value=(f.window_timezone) placeholder="Europe/Berlin"; }
            }
            fieldset #dep-install {
                legend { "Install" }
                label { span { "Reboot" }
                    select name="reboot" id="dep-reboot" {
                        option value="" selected[sel(&f.reboot, "")] { "site default" }
                        @for r in ["never", "if_required", "always"] { option value=(r) selected[sel(&f.reboot, r)] { (r) } }
                    }
                }
                label { span { "Pre-install script" } input type="text" name="pre_script" id="dep-pre" value=(f.pre_script) placeholder="script name"; }
                label { span { "Post-install script" } input type="text" name="post_script" id="dep-post" value=(f.post_script) placeholder="script name"; }
                label { span { "Snapshot" }
                    select name="snapshot" id="dep-snapshot" {
                        option value="" selected[sel(&f.snapshot, "")] { "site default" }
                        option value="yes" selected[sel(&f.snapshot, "yes")] { "yes" }
                        option value="no" selected[sel(&f.snapshot, "no")] { "no" }
                    }
                }
            }
        }
    }
}

/// What a rollback covers, from the form's `scope` (`deployment`,
/// `stage:N` 1-based as shown, `device:ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTarget {
    Deployment,
    /// 0-based.
    Stage(u32),
    Device(String),
}

impl RollbackTarget {
    pub fn parse(s: &str) -> Result<RollbackTarget, String> {
        let s = s.trim();
        match s.split_once(':') {
            None if s.is_empty() || s == "deployment" => Ok(RollbackTarget::Deployment),
            Some(("stage", n)) => match n.trim().parse::<u32>() {
                Ok(n) if n >= 1 => Ok(RollbackTarget::Stage(n - 1)),
                _ => Err(format!(
                    "Rollback: \"{n}\" is not a stage number (1, 2, …)."
                )),
            },
            Some(("device", d)) if !d.trim().is_empty() => {
                Ok(RollbackTarget::Device(d.trim().to_string()))
            }
            _ => Err(format!(
                "Rollback: \"{s}\" is not deployment, stage:N or device:ID."
            )),
        }
    }

    /// The sites' API body (`{"scope": …}`).
    pub fn json(&self) -> Value {
        match self {
            RollbackTarget::Deployment => json!({"scope": "deployment"}),
            RollbackTarget::Stage(n) => json!({"scope": "stage", "stage": n}),
            RollbackTarget::Device(d) => json!({"scope": "device", "device": d}),
        }
    }

    /// In words, for notices.
    pub fn describe(&self) -> String {
        match self {
            RollbackTarget::Deployment => "the whole deployment".into(),
            RollbackTarget::Stage(n) => format!("stage {}", n + 1),
            RollbackTarget::Device(d) => format!("device {d}"),
        }
    }
}

/// `PKG=VERSION` as the API's `{"package", "version"}`.
pub fn patch_json(p: &str) -> Value {
    let (pkg, ver) = p.split_once('=').unwrap_or((p, ""));
    json!({"package": pkg.trim(), "version": ver.trim()})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> CreateForm {
        CreateForm::of(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_filled_options_form_becomes_the_sites_create_request_json() {
        let f = form(&[
            ("target", "tag:web"),
            ("patch", "openssl=3.0.2-1"),
            ("stages", "5, 50,100"),
            ("min_success_pct", "90"),
            ("min_finished", "2"),
            ("soak_minutes", "0"),
            ("auto_rollback_failed_pct", "30"),
            ("deadline_minutes", "120"),
            ("day", "sat"),
            ("day", "sun"),
            ("window_start", "22:00"),
            ("window_minutes", "240"),
            ("window_timezone", "Europe/Berlin"),
            ("reboot", "never"),
            ("pre_script", "stop-app"),
            ("post_script", "start-app"),
            ("snapshot", "no"),
        ]);
        let req = f.check().expect("valid");
        assert_eq!(req.patches, vec!["openssl=3.0.2-1".to_string()]);
        assert_eq!(
            Value::Object(req.options.json()),
            json!({
                "stages": [5, 50, 100],
                "gate": {"min_success_pct": 90, "min_finished": 2, "soak_ms": 0},
                "auto_rollback_failed_pct": 30,
                "install_deadline_ms": 7_200_000,
                "window": {"days": ["sat", "sun"], "start": "22:00", "duration_minutes": 240, "timezone": "Europe/Berlin"},
                "reboot": "never",
                "pre_script": "stop-app",
                "post_script": "start-app",
                "snapshot": false,
            })
        );
        // Nothing filled: no option at all (the site's defaults).
        let plain = form(&[("target", "all")]).check().expect("valid");
        assert!(plain.options.json().is_empty());
    }

    #[test]
    fn every_bad_field_gets_its_own_sentence() {
        let f = form(&[
            ("stages", "50,10"),
            ("min_success_pct", "101"),
            ("auto_rollback_failed_pct", "0"),
            ("deadline_minutes", "soon"),
            ("day", "funday"),
            ("window_start", "25:00"),
            ("reboot", "sometimes"),
            ("pre_script", "rm -rf /"),
            ("snapshot", "maybe"),
            ("patch", "openssl"),
        ]);
        let e = f.check().expect_err("invalid").0;
        for want in [
            "Stages: \"50,10\"",
            "Gate success %: \"101\"",
            "Auto-rollback failure %: \"0\"",
            "Install deadline minutes: \"soon\"",
            "\"funday\" is not a day",
            "Window start: \"25:00\"",
            "Window length",
            "Reboot: \"sometimes\"",
            "Pre-install script: \"rm -rf /\"",
            "Snapshot: \"maybe\"",
            "Patch \"openssl\" is not PKG=VERSION",
        ] {
            assert!(e.iter().any(|s| s.contains(want)), "{want} in {e:?}");
        }
        // A window needs days, a start and a length.
        let e = form(&[("window_start", "22:00")])
            .check()
            .expect_err("no days")
            .0;
        assert!(e.iter().any(|s| s.contains("at least one day")), "{e:?}");
        // Stages must end at 100.
        assert!(form(&[("stages", "10,50")]).check().is_err());
        // A window names its zone: empty or "device" (which every site
        // refuses: devices do not report theirs) is an error here.
        let window = |tz: &'static str| {
            form(&[
                ("day", "sat"),
                ("window_start", "22:00"),
                ("window_minutes", "240"),
                ("window_timezone", tz),
            ])
            .check()
        };
        for (tz, want) in [("", "name the zone"), ("device", "not supported")] {
            let e = window(tz).expect_err(tz).0;
            assert!(
                e.iter()
                    .any(|s| s.starts_with("Window time zone") && s.contains(want)),
                "{tz:?}: {e:?}"
            );
        }
        assert!(window("UTC").is_ok());
    }

    #[test]
    fn a_rollback_scope_is_the_whole_deployment_a_stage_shown_one_based_or_a_device() {
        assert_eq!(
            RollbackTarget::parse("").unwrap(),
            RollbackTarget::Deployment
        );
        assert_eq!(
            RollbackTarget::parse("stage:2").unwrap().json(),
            json!({"scope": "stage", "stage": 1})
        );
        assert_eq!(
            RollbackTarget::parse("device:000000000000002a")
                .unwrap()
                .json(),
            json!({"scope": "device", "device": "000000000000002a"})
        );
        assert!(RollbackTarget::parse("stage:0").is_err());
        assert!(RollbackTarget::parse("site:x").is_err());
        assert_eq!(
            patch_list("a=1, b=2").unwrap(),
            vec!["a=1".to_string(), "b=2".to_string()]
        );
        assert!(patch_list("a").is_err());
    }
}
