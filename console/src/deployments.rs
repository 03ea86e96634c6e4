//! The console's Deployments and Approvals pages (backends with
//! [`crate::backend::Features::deployments`]: the appliance and central):
//! `/deployments` (every deployment: phase, stage i/n, the current
//! stage's gate figures, failures, who created it and when; admins also
//! get the create form: approved patches × a target), `/deployments/{id}`
//! (its stages with their gate, every device's phase and failure reason,
//! and pause / resume / abort / rollback for those whose role allows),
//! and `/approvals` (approval rules, manual approvals and declines, and
//! for a chosen device which rule decided each of its missing patches).
//!
//! Central's rows span sites ([`DeploymentRow::sites`]: each site's
//! delivery and reported phase) and list the actions it sent
//! ([`DeploymentDetail::actions`]); a row with
//! [`DeploymentRow::read_only`] offers no action. Backends with
//! [`crate::backend::Features::edit_approvals`] also get the approve /
//! decline and rule forms on `/approvals` (`POST /approvals`,
//! `/approval-rules`, `/approval-rules/{id}/delete`).
//!
//! A backend without deployments gets one page saying where they will
//! come from; nothing is made up.
//!
//! This module owns those pages and routes only; the backend reads,
//! checks roles and acts (`ConsoleBackend::deployments`, `deployment`,
//! `deployment_action`, `create_deployment`, `approvals`). POSTs go
//! through the same origin check and CSRF token as every console form.
//! A finished deployment (completed or aborted) still offers *Roll back*
//! (the whole deployment, or one device that ran) to those who manage
//! deployments: a patch can break machines after the run ended. That
//! rollback asks for a confirmation first ([`confirm_rollback_page`]:
//! the form again with `confirm=1`).
//!
//! Open deployment pages follow the live stream's `command` events (the
//! installs are commands) and read themselves again, like the command
//! pages.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use outpost_web::{Form, Path, Query};
use serde::Deserialize;

use crate::Console;
use crate::backend::{ConsoleError, Viewer};
pub use crate::deploy_form::{CreateForm, DeploymentOptions, RollbackTarget};
use crate::pages::layout::{self, badge, device_href, enc, time};
use crate::routes::{CsrfOnly, error_page, form_viewer, html as page, refuse, render, viewer};

/// One stage's figures and gate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageView {
    /// 0-based (shown 1-based).
    pub stage: u32,
    pub devices: u32,
    /// Dispatched (had their window).
    pub counted: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub in_flight: u32,
    pub waiting: u32,
    /// `holds`, `waiting: …`, `fails: …`.
    pub gate: String,
}

/// A deployment as lists show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentRow {
    pub id: String,
    /// `pending`, `running`, `paused`, `completed`, `aborted`,
    /// `rolling_back`, `rolled_back`.
    pub phase: String,
    /// The stage reached (0-based), while running, paused or rolling back.
    pub stage: Option<u32>,
    pub stages: u32,
    pub target: String,
    /// `PKG=VERSION`.
    pub patches: Vec<String>,
    pub devices: u32,
    pub succeeded: u32,
    pub failed: u32,
    /// The reached stage's figures and gate.
    pub current: Option<StageView>,
    pub created_ms: u64,
    pub created_by: String,
    pub updated_ms: u64,
    /// Its sites (central: one deployment over several sites); empty
    /// where the console runs on the site itself.
    pub sites: Vec<SiteLine>,
    /// Why no action is offered here (a deployment created at its site,
    /// seen from central: act on it there).
    pub read_only: Option<String>,
}

/// One site of a deployment seen from central: the delivery of its
/// creation and the progress the site reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteLine {
    pub site_id: String,
    pub site_name: String,
    pub customer: String,
    /// `queued`, `delivered`, `refused`, or `site` (created there).
    pub delivery: String,
    /// Why the site refused it.
    pub reason: Option<String>,
    /// The site's phase, once it reported.
    pub phase: Option<String>,
    pub stage: Option<u32>,
    pub stages: u32,
    pub devices: u32,
    pub succeeded: u32,
    pub failed: u32,
    /// The site's time of the state shown.
    pub updated_ms: Option<u64>,
}

impl SiteLine {
    /// The phase, or where the order stands while the site has not
    /// reported (`queued`, `refused`).
    pub fn state(&self) -> &str {
        self.phase.as_deref().unwrap_or(&self.delivery)
    }
}

/// An action sent from central (pause, resume...) and its delivery.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActionLine {
    pub action: String,
    pub by: String,
    pub at_ms: u64,
    /// The action's body in one line (note, options).
    pub detail: String,
    /// `delivered 1/2 · queued 1/2`.
    pub delivery: String,
}

impl DeploymentRow {
    /// Whether it can still move (actions make sense).
    pub fn is_open(&self) -> bool {
        !matches!(self.phase.as_str(), "completed" | "aborted" | "rolled_back")
    }

    /// Finished without being rolled back: a rollback is still accepted
    /// (after a confirmation).
    pub fn finished_rollbackable(&self) -> bool {
        matches!(self.phase.as_str(), "completed" | "aborted")
    }
}

/// One device of a deployment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentDevice {
    pub site_id: String,
    pub device: String,
    pub hostname: String,
    pub stage: u32,
    /// `pending`, `waiting_for_window`, `queued`, `installing`,
    /// `succeeded`, `failed`, `rolled_back`, …
    pub state: String,
    pub attempt: u32,
    /// Why it failed (or what the technician said).
    pub reason: Option<String>,
    /// Its last report, or its dispatch.
    pub at_ms: u64,
}

/// A deployment with its stages and devices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentDetail {
    pub row: DeploymentRow,
    /// Why it is paused, or the abort's note.
    pub note: Option<String>,
    pub stages: Vec<StageView>,
    pub devices: Vec<DeploymentDevice>,
    /// Actions sent from central, oldest first (central only).
    pub actions: Vec<ActionLine>,
}

/// What a technician or an admin asks of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentAction {
    Pause {
        note: String,
    },
    Resume {
        retry_failed: bool,
        force: bool,
        /// `PKG=VERSION` replacing the versions to install (empty: keep).
        patches: Vec<String>,
    },
    Abort {
        note: String,
    },
    /// Roll back the whole deployment, one stage or one device.
    Rollback {
        scope: RollbackTarget,
    },
}

impl DeploymentAction {
    pub fn name(&self) -> &'static str {
        match self {
            DeploymentAction::Pause { .. } => "pause",
            DeploymentAction::Resume { .. } => "resume",
            DeploymentAction::Abort { .. } => "abort",
            DeploymentAction::Rollback { .. } => "rollback",
        }
    }
}

/// The create form's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewDeployment {
    /// `all`, `tag:T`, `customer:C`, or `device:ID`.
    pub target: String,
    /// `PKG=VERSION`; empty: every patch approved on the target.
    pub patches: Vec<String>,
    pub security_only: bool,
    /// Stages, gate, window, install options (unset: the site's defaults).
    pub options: DeploymentOptions,
}

/// One approval rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleRow {
    pub id: String,
    /// `tenant msp`, `tag web`, `device 00…2a`.
    pub scope: String,
    /// `approve`, `decline` (manual), or `auto`.
    pub kind: String,
    /// The patch of a manual verdict.
    pub patch: Option<String>,
    /// What an auto rule asks, in one line.
    pub detail: String,
}

/// One missing patch of a device and what decided it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecisionRow {
    pub patch: String,
    /// `approved`, `declined`, `deferred`, `unapproved`.
    pub outcome: String,
    /// The deciding rule's id and scope.
    pub rule: Option<String>,
    pub explanation: String,
}

/// A device's decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceDecisions {
    pub site_id: String,
    pub device: String,
    pub hostname: String,
    /// It has an assessment (else no decision).
    pub assessed: bool,
    pub rows: Vec<DecisionRow>,
    /// Missing patches that cannot be named exactly (never approvable).
    pub unnamed: Vec<String>,
}

/// The approvals page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApprovalsView {
    pub rules: Vec<RuleRow>,
    /// Devices to choose from (id, hostname).
    pub devices: Vec<(String, String)>,
    /// The chosen device's decisions.
    pub device: Option<DeviceDecisions>,
    /// Targets the create form offers (value, label).
    pub targets: Vec<(String, String)>,
    /// The viewer may approve, decline, add and remove rules here (the
    /// forms are shown; the backend checks again).
    pub editable: bool,
    /// Rules that can be removed here (ids).
    pub removable: Vec<String>,
    /// Said instead of the per-device decisions where there are none
    /// (central: each site decides).
    pub decisions_note: Option<String>,
}

/// An approve/decline form's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerdictRequest {
    /// `PKG=VERSION`.
    pub patch: String,
    /// `approve` or `decline`.
    pub verdict: String,
    /// `tenant` (default), `customer:C`, `tag:T`, `device:ID`.
    pub scope: String,
}

/// A new approval rule (rule-based approval).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRule {
    pub id: String,
    /// `tenant` (default), `customer:C`, `tag:T`, `device:ID`.
    pub scope: String,
    /// `low`, `medium`, `high`, `critical`; `None`: any.
    pub min_severity: Option<String>,
    pub security_only: bool,
    pub delay_days: u32,
    /// Source packages it is limited to (empty: all).
    pub allow: Vec<String>,
    /// Source packages it declines.
    pub deny: Vec<String>,
}

impl ApprovalsView {
    /// Patches approved by hand (the create form's choices), sorted.
    pub fn approved(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.kind == "approve")
            .filter_map(|r| r.patch.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The page of a deployment.
pub fn deployment_href(id: &str) -> String {
    format!("/deployments/{}", enc(id))
}

fn stage_of(r: &DeploymentRow) -> Markup {
    html! {
        @match r.stage {
            Some(s) => { "stage " (s + 1) "/" (r.stages) }
            None => span.muted { (r.stages) " stages" }
        }
    }
}

fn figures(s: &StageView) -> Markup {
    html! {
        span.counts data-field="figures" {
            (s.succeeded) " ok · " (s.failed) " failed · " (s.in_flight) " in flight · "
            (s.waiting) " waiting · " (s.devices) " in stage"
        }
    }
}

fn tabs(here: &str) -> Markup {
    html! {
        p.tabs #deploy-tabs {
            @for (href, text) in [("/deployments", "Deployments"), ("/approvals", "Approvals")] {
                @if href == here { b { (text) } } @else { a href=(href) { (text) } }
                " "
            }
        }
    }
}

/// The list of deployments (and, for admins, the create form).
pub fn deployment_list(rows: &[DeploymentRow], form: Option<&ApprovalsView>, csrf: &str) -> Markup {
    deployment_list_again(rows, form, csrf, None)
}

/// The list with the create form filled with what was typed and why it
/// was refused (`again`).
pub fn deployment_list_again(
    rows: &[DeploymentRow],
    form: Option<&ApprovalsView>,
    csrf: &str,
    again: Option<(&CreateForm, &str)>,
) -> Markup {
    let with_sites = rows.iter().any(|r| !r.sites.is_empty());
    html! {
        (tabs("/deployments"))
        div #deployment-list data-live-commands {
            @if rows.is_empty() { p.empty #no-deployments { "No deployment yet." } } @else {
                div.scroll { table.grid #deployments {
                    thead { tr { th { "Deployment" } th { "State" } th { "Stage" } th { "Gate" } th { "Devices" } th { "Failures" } th { "Target" } @if with_sites { th { "Sites" } } th { "Created by" } th { "Created" } } }
                    tbody { @for r in rows {
                        tr data-deployment=(r.id) data-phase=(r.phase) {
                            td { a href=(deployment_href(&r.id)) { code { (r.id) } } }
                            td { (badge("dep", &r.phase)) }
                            td { (stage_of(r)) }
                            td { @if let Some(s) = &r.current { (figures(s)) br; span.muted { (s.gate) } } }
                            td.n { (r.succeeded) "/" (r.devices) }
                            td.n data-field="failed" { (r.failed) }
                            td { (r.target) }
                            @if with_sites { td data-field="sites" { (site_summary(&r.sites)) } }
                            td { (r.created_by) }
                            td { (time(r.created_ms, true)) }
                        }
                    } }
                } }
            }
        }
        @if let Some(f) = form { (create_form(f, csrf, again)) }
    }
}

/// Each site's state in one line: `main-office running · branch queued`.
fn site_summary(sites: &[SiteLine]) -> Markup {
    html! {
        @for (i, l) in sites.iter().enumerate() {
            @if i > 0 { " · " }
            span data-site=(l.site_id) { (l.site_name) " " (badge("dep", l.state())) }
        }
    }
}

fn site_table(r: &DeploymentRow) -> Markup {
    html! {
        h2 { "Sites" }
        div.scroll { table.grid #deployment-sites {
            thead { tr { th { "Site" } th { "Customer" } th { "Order" } th { "State" } th { "Stage" } th { "Devices" } th { "Failures" } th { "Reported" } } }
            tbody { @for l in &r.sites {
                tr data-site=(l.site_id) data-state=(l.state()) {
                    td { a href=(format!("/sites/{}", enc(&l.site_id))) { (l.site_name) } }
                    td { (l.customer) }
                    td { (badge("delivery", &l.delivery)) @if let Some(w) = &l.reason { " " span.muted data-field="reason" { (w) } } }
                    td { @match &l.phase { Some(p) => (badge("dep", p)), None => span.muted { "not reported yet" } } }
                    td { @match l.stage { Some(s) => { (s + 1) "/" (l.stages) } None => span.muted { "–" } } }
                    td.n { (l.succeeded) "/" (l.devices) }
                    td.n { (l.failed) }
                    td { @match l.updated_ms { Some(t) => (time(t, true)), None => span.muted { "–" } } }
                }
            } }
        } }
    }
}

fn action_table(actions: &[ActionLine]) -> Markup {
    html! {
        h2 { "Actions from central" }
        div.scroll { table.grid #deployment-orders {
            thead { tr { th { "Action" } th { "By" } th { "When" } th { "Detail" } th { "Delivery" } } }
            tbody { @for a in actions {
                tr data-action=(a.action) {
                    td { (a.action) }
                    td { (a.by) }
                    td { (time(a.at_ms, true)) }
                    td { (a.detail) }
                    td data-field="delivery" { (a.delivery) }
                }
            } }
        } }
    }
}

fn create_form(f: &ApprovalsView, csrf: &str, again: Option<(&CreateForm, &str)>) -> Markup {
    let approved = f.approved();
    let empty = CreateForm::default();
    let typed = again.map(|(t, _)| t).unwrap_or(&empty);
    html! {
        section #new-deployment {
            h2 { "New deployment" }
            @if let Some((_, why)) = again { p.error #dep-error role="alert" { (why) } }
            @if approved.is_empty() {
                p.empty { "No patch is approved by hand yet: approve one ("
                    a href="/approvals" { "Approvals" } ") or leave the choice empty to deploy what the rules approve." }
            }
            form.run #create-deployment method="post" action="/deployments" {
                input type="hidden" name="csrf" value=(csrf);
                label { span { "Target" }
                    select name="target" id="dep-target" {
                        @for (v, l) in &f.targets { option value=(v) selected[typed.target == *v] { (l) } }
                    }
                }
                @if !approved.is_empty() {
                    fieldset #dep-patches {
                        legend { "Patches (none checked: every approved patch of the target)" }
                        @for p in &approved {
                            label.check { input type="checkbox" name="patch" value=(p) checked[typed.patch.contains(p)]; " " code { (p) } }
                        }
                    }
                }
                label.check { input type="checkbox" name="security_only" value="1" id="dep-security" checked[typed.security_only]; " security updates only" }
                (crate::deploy_form::options_fieldset(typed))
                button type="submit" id="dep-create" { "Create deployment" }
            }
        }
    }
}

fn action_form(id: &str, action: &str, label: &str, csrf: &str, extra: Markup) -> Markup {
    html! {
        form.run.dep-action method="post" action=(format!("{}/{action}", deployment_href(id))) data-action=(action) {
            input type="hidden" name="csrf" value=(csrf);
            (extra)
            button type="submit" class=(format!("dep-{action}")) { (label) }
        }
    }
}

/// The page of one deployment. Actions are shown to those whose role
/// allows them (the backend checks again).
pub fn deployment_page(d: &DeploymentDetail, v: &Viewer, csrf: &str) -> Markup {
    let r = &d.row;
    let phase = r.phase.as_str();
    let manage = v.can.manage_deployments && r.is_open() && r.read_only.is_none();
    let admin = v.can.create_deployments && r.is_open() && r.read_only.is_none();
    // Finished: only a rollback (whole or per device), confirmed first.
    let late = v.can.manage_deployments && r.finished_rollbackable() && r.read_only.is_none();
    let device_rollback = manage || late;
    html! {
        section #deployment data-deployment=(r.id) data-phase=(r.phase) data-live-commands {
            p.facts #deployment-summary {
                (badge("dep", &r.phase)) " · " (stage_of(r)) " · "
                (r.succeeded) " of " (r.devices) " succeeded · " (r.failed) " failed"
                @if let Some(n) = &d.note { " · " span #deployment-note { (n) } }
            }
            @if let Some(why) = &r.read_only { p.notice #deployment-read-only { (why) } }
            dl.inventory {
                dt { "Target" } dd { (r.target) }
                dt { "Patches" } dd { @for p in &r.patches { code { (p) } " " } }
                dt { "Created by" } dd { (r.created_by) " · " (time(r.created_ms, false)) }
                dt { "Updated" } dd { (time(r.updated_ms, true)) }
            }
            @if manage || admin {
                div #deployment-actions {
                    @if manage && phase == "running" {
                        (action_form(&r.id, "pause", "Pause", csrf, html! { input type="text" name="note" placeholder="note"; }))
                    }
                    @if manage && phase == "paused" {
                        (action_form(&r.id, "resume", "Resume", csrf, html! {
                            label.check { input type="checkbox" name="retry_failed" value="1"; " retry failed" }
                            label.check { input type="checkbox" name="force" value="1"; " override the gate" }
                            input type="text" name="patches" id="resume-patches" placeholder="replace versions: PKG=VERSION, …";
                        }))
                    }
                    @if manage && phase != "rolling_back" {
                        (action_form(&r.id, "rollback", "Roll back", csrf, html! {
                            select name="scope" id="rollback-scope" {
                                option value="deployment" { "whole deployment" }
                                @for s in d.stages.iter().filter(|s| r.stage.is_some_and(|at| s.stage <= at)) {
                                    option value=(format!("stage:{}", s.stage + 1)) { "stage " (s.stage + 1) }
                                }
                            }
                        }))
                    }
                    @if admin {
                        (action_form(&r.id, "abort", "Abort", csrf, html! { input type="text" name="note" placeholder="note"; }))
                    }
                }
            }
            @if late {
                div #deployment-actions {
                    (action_form(&r.id, "rollback", "Roll back…", csrf, html! {
                        input type="hidden" name="scope" value="deployment";
                        span.muted { "The deployment is " (r.phase) ": rolling it back reinstalls the previous versions on every device that ran it (you confirm first)." }
                    }))
                }
            }
            @if !r.sites.is_empty() { (site_table(r)) }
            @if !d.actions.is_empty() { (action_table(&d.actions)) }
            h2 { "Stages" }
            div.scroll { table.grid #stages {
                thead { tr { th { "Stage" } th { "Figures" } th { "Gate" } } }
                tbody { @for s in &d.stages {
                    tr data-stage=(s.stage) {
                        td { (s.stage + 1) "/" (r.stages) @if r.stage == Some(s.stage) { " " b { "current" } } }
                        td { (figures(s)) }
                        td data-field="gate" { (s.gate) }
                    }
                } }
            } }
            h2 { "Devices" }
            div.scroll { table.grid #deployment-devices {
                thead { tr { th { "Device" } th { "Stage" } th { "Phase" } th { "Attempt" } th { "Reason" } th { "When" } @if device_rollback { th { } } } }
                tbody { @for m in &d.devices {
                    tr data-device=(m.device) data-state=(m.state) {
                        td { a href=(device_href(&m.site_id, &m.device)) { (if m.hostname.is_empty() { &m.device } else { &m.hostname }) } }
                        td.n { (m.stage + 1) }
                        td { (badge("dev", &m.state)) }
                        td.n { (m.attempt) }
                        td data-field="reason" { @if let Some(w) = &m.reason { (w) } }
                        td { (time(m.at_ms, true)) }
                        @if device_rollback { td { @if rollbackable(&m.state) {
                            form.inline.dev-rollback method="post" action=(format!("{}/rollback", deployment_href(&r.id))) data-device=(m.device) {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="scope" value=(format!("device:{}", m.device));
                                button type="submit" class="dev-rollback" { "Roll back" }
                            }
                        } } }
                    }
                } }
            } }
        }
    }
}

/// A device whose install can be rolled back (it ran or failed).
fn rollbackable(state: &str) -> bool {
    matches!(
        state,
        "succeeded" | "failed" | "reboot_pending" | "rollback_failed"
    )
}

/// The approvals page: rules, then the chosen device's decisions.
pub fn approvals_page(a: &ApprovalsView, csrf: &str) -> Markup {
    html! {
        (tabs("/approvals"))
        section #approvals {
            @if a.editable { (approval_forms(csrf)) }
            h2 { "Approved and declined patches" }
            @let manual: Vec<&RuleRow> = a.rules.iter().filter(|r| r.kind != "auto").collect();
            @if manual.is_empty() { p.empty #no-manual { "No patch approved or declined by hand." } } @else {
                div.scroll { table.grid #manual {
                    thead { tr { th { "Patch" } th { "Verdict" } th { "Scope" } th { "Rule" } @if has_detail(&manual) { th { "Sent" } } } }
                    tbody { @for r in &manual {
                        tr data-rule=(r.id) {
                            td { @if let Some(p) = &r.patch { code { (p) } } }
                            td { (badge("verdict", &r.kind)) }
                            td { (r.scope) }
                            td { code { (r.id) } (remove_button(a, &r.id, csrf)) }
                            @if has_detail(&manual) { td { (r.detail) } }
                        }
                    } }
                } }
            }
            h2 { "Rules" }
            @let auto: Vec<&RuleRow> = a.rules.iter().filter(|r| r.kind == "auto").collect();
            @if auto.is_empty() { p.empty #no-rules { "No approval rule." } } @else {
                div.scroll { table.grid #rules {
                    thead { tr { th { "Rule" } th { "Scope" } th { "Approves" } } }
                    tbody { @for r in auto {
                        tr data-rule=(r.id) { td { code { (r.id) } (remove_button(a, &r.id, csrf)) } td { (r.scope) } td { (r.detail) } }
                    } }
                } }
            }
            h2 { "Which rule decided" }
            @if let Some(n) = &a.decisions_note { p.muted #decisions-note { (n) } }
            @if !a.devices.is_empty() {
            form.filters #decided method="get" action="/approvals" {
                label { span { "Device" }
                    select name="device" id="ap-device" {
                        @for (id, host) in &a.devices {
                            @let chosen = a.device.as_ref().is_some_and(|d| &d.device == id);
                            option value=(id) selected[chosen] { (if host.is_empty() { id } else { host }) }
                        }
                    }
                }
                button type="submit" id="ap-show" { "Show" }
            }
            }
            @if let Some(d) = &a.device {
                div #decisions data-device=(d.device) {
                    @if !d.assessed { p.empty { (d.hostname) " has no patch assessment yet." } }
                    @else if d.rows.is_empty() { p.empty { (d.hostname) " misses no patch." } }
                    @else {
                        div.scroll { table.grid #device-decisions {
                            thead { tr { th { "Patch" } th { "Outcome" } th { "Decided by" } th { "Why" } } }
                            tbody { @for r in &d.rows {
                                tr data-patch=(r.patch) data-outcome=(r.outcome) {
                                    td { code { (r.patch) } }
                                    td { (badge("outcome", &r.outcome)) }
                                    td data-field="rule" { @match &r.rule { Some(x) => (x), None => span.muted { "no rule" } } }
                                    td { (r.explanation) }
                                }
                            } }
                        } }
                    }
                    @if !d.unnamed.is_empty() {
                        p.muted { "Not approvable (no exact version known): " (d.unnamed.join(", ")) }
                    }
                }
            }
        }
    }
}

fn has_detail(rows: &[&RuleRow]) -> bool {
    rows.iter().any(|r| !r.detail.is_empty())
}

fn remove_button(a: &ApprovalsView, id: &str, csrf: &str) -> Markup {
    html! {
        @if a.editable && a.removable.iter().any(|r| r == id) {
            " "
            form.inline.rule-remove method="post" action=(format!("/approval-rules/{}/delete", enc(id))) data-rule=(id) {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" class="rule-remove" { "Remove" }
            }
        }
    }
}

/// Approve/decline a patch, and add a rule (those who may).
fn approval_forms(csrf: &str) -> Markup {
    const SCOPE_HINT: &str = "tenant, customer:C, tag:T or device:ID";
    html! {
        div.forms #approval-forms {
            form.run #verdict-form method="post" action="/approvals" {
                h2 { "Approve or decline a patch" }
                input type="hidden" name="csrf" value=(csrf);
                label { span { "Patch" } input type="text" name="patch" placeholder="PKG=VERSION" required; }
                label { span { "Verdict" }
                    select name="verdict" { option value="approve" { "approve" } option value="decline" { "decline" } }
                }
                label { span { "Scope" } input type="text" name="scope" placeholder=(SCOPE_HINT); }
                button type="submit" id="verdict-send" { "Send" }
            }
            form.run #rule-form method="post" action="/approval-rules" {
                h2 { "Add an approval rule" }
                input type="hidden" name="csrf" value=(csrf);
                label { span { "Id" } input type="text" name="id" required; }
                label { span { "Scope" } input type="text" name="scope" placeholder=(SCOPE_HINT); }
                label { span { "Minimum severity" }
                    select name="min_severity" {
                        option value="" { "any" }
                        @for s in ["low", "medium", "high", "critical"] { option value=(s) { (s) } }
                    }
                }
                label.check { input type="checkbox" name="security_only" value="1"; " security updates only" }
                label { span { "After days" } input type="number" name="delay_days" min="0" value="0"; }
                label { span { "Only packages" } input type="text" name="allow" placeholder="comma-separated"; }
                label { span { "Never packages" } input type="text" name="deny" placeholder="comma-separated"; }
                button type="submit" id="rule-add" { "Add rule" }
            }
        }
    }
}

/// What a backend without deployments shows.
pub fn later_page() -> Markup {
    html! {
        p.notice #deployments-later {
            "Deployments are not available on this server. Each site runs its own: "
            "open the site's console, or use "
            code { "outpost deployments" } " on the appliance."
        }
    }
}

// ---- routes ----

type C = State<Arc<Console>>;

fn later(c: &Console, v: &Viewer, title: &str) -> Response {
    page(
        StatusCode::OK,
        render(
            c,
            Some(v),
            layout::Section::Deployments,
            title,
            vec![layout::crumb("Dashboard", "/"), layout::here(title)],
            later_page(),
        ),
    )
}

/// `GET /deployments`.
pub async fn list(State(c): C, h: HeaderMap) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.deployments {
        return later(&c, &v, "Deployments");
    }
    let rows = match c.backend.deployments(&v).await {
        Ok(r) => r,
        Err(e) => return error_page(&c, Some(&v), e),
    };
    let form = if v.can.create_deployments {
        match c.backend.approvals(&v, None).await {
            Ok(a) => Some(a),
            Err(e) => return error_page(&c, Some(&v), e),
        }
    } else {
        None
    };
    let csrf = c.csrf.token(&v.csrf_subject);
    page(
        StatusCode::OK,
        render(
            &c,
            Some(&v),
            layout::Section::Deployments,
            "Deployments",
            vec![layout::crumb("Dashboard", "/"), layout::here("Deployments")],
            deployment_list(&rows, form.as_ref(), &csrf),
        ),
    )
}

/// `GET /deployments/{id}`.
pub async fn show(State(c): C, h: HeaderMap, Path(id): Path<String>) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.deployments {
        return later(&c, &v, "Deployments");
    }
    match c.backend.deployment(&v, &id).await {
        Ok(d) => {
            let csrf = c.csrf.token(&v.csrf_subject);
            page(
                StatusCode::OK,
                render(
                    &c,
                    Some(&v),
                    layout::Section::Deployments,
                    &format!("Deployment {id}"),
                    vec![
                        layout::crumb("Dashboard", "/"),
                        layout::crumb("Deployments", "/deployments"),
                        layout::here(id.clone()),
                    ],
                    deployment_page(&d, &v, &csrf),
                ),
            )
        }
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// `POST /deployments` (admins).
pub async fn create(
    State(c): C,
    h: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let f = CreateForm::of(pairs);
    let v = match form_viewer(&c, &h, &f.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !v.can.create_deployments {
        return refuse(
            &c,
            Some(&v),
            "forbidden",
            &format!("Role {} may not create deployments.", v.role),
        );
    }
    let req = match f.check() {
        Ok(r) => r,
        Err(e) => return create_again(&c, &v, &f, &e.to_string()).await,
    };
    match c.backend.create_deployment(&v, &req).await {
        Ok(id) => {
            c.backend.live().publish(crate::live::LiveEvent::command(
                &v.tenant,
                &crate::live::CommandChange {
                    id: String::new(),
                    site_id: String::new(),
                    customer: String::new(),
                    state: String::new(),
                    finished: false,
                },
            ));
            Redirect::to(&deployment_href(&id)).into_response()
        }
        Err(ConsoleError::Forbidden(m)) => refuse(&c, Some(&v), "forbidden", &m),
        // Refused for what was asked (a site's check, an unknown
        // customer): the form again, with the reason.
        Err(ConsoleError::BadRequest(m) | ConsoleError::NotFound(m)) => {
            create_again(&c, &v, &f, &m).await
        }
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// The list page with the create form as typed and why it was refused
/// (400).
async fn create_again(c: &Console, v: &Viewer, f: &CreateForm, why: &str) -> Response {
    let rows = match c.backend.deployments(v).await {
        Ok(r) => r,
        Err(e) => return error_page(c, Some(v), e),
    };
    let form = match c.backend.approvals(v, None).await {
        Ok(a) => a,
        Err(e) => return error_page(c, Some(v), e),
    };
    let csrf = c.csrf.token(&v.csrf_subject);
    page(
        StatusCode::BAD_REQUEST,
        render(
            c,
            Some(v),
            layout::Section::Deployments,
            "Deployments",
            vec![layout::crumb("Dashboard", "/"), layout::here("Deployments")],
            deployment_list_again(&rows, Some(&form), &csrf, Some((f, why))),
        ),
    )
}

/// An action form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub retry_failed: Option<String>,
    #[serde(default)]
    pub force: Option<String>,
    /// Resume: `PKG=VERSION, …` replacing the versions to install.
    #[serde(default)]
    pub patches: String,
    /// Rollback: `deployment`, `stage:N` (1-based), `device:ID`.
    #[serde(default)]
    pub scope: String,
    /// Rollback of a finished deployment: `1` once confirmed.
    #[serde(default)]
    pub confirm: String,
}

/// What a rollback scope means, in words (`the whole deployment`,
/// `stage 2`, `device web-1`).
fn scope_words(scope: &RollbackTarget, d: &DeploymentDetail) -> String {
    match scope {
        RollbackTarget::Deployment => "the whole deployment".into(),
        RollbackTarget::Stage(n) => format!("stage {}", n + 1),
        RollbackTarget::Device(id) => {
            let host = d
                .devices
                .iter()
                .find(|m| &m.device == id)
                .map(|m| m.hostname.as_str())
                .filter(|h| !h.is_empty())
                .unwrap_or(id);
            format!("device {host}")
        }
    }
}

/// The confirmation asked before rolling back a finished deployment:
/// what will happen, the form again with `confirm=1`, and a way back.
pub fn confirm_rollback_page(d: &DeploymentDetail, scope: &str, words: &str, csrf: &str) -> Markup {
    let r = &d.row;
    let ran = d.devices.iter().filter(|m| rollbackable(&m.state)).count();
    html! {
        section #confirm-rollback data-deployment=(r.id) {
            p.notice {
                "Deployment " code { (r.id) } " is " (badge("dep", &r.phase)) ". Roll back " b { (words) } "? "
                "Each device that ran it reinstalls the versions it had before ("
                (ran) " of " (r.devices) " devices ran it)."
            }
            form.run method="post" action=(format!("{}/rollback", deployment_href(&r.id))) {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="scope" value=(scope);
                input type="hidden" name="confirm" value="1";
                button type="submit" id="confirm-rollback-button" { "Roll back " (words) }
                " "
                a href=(deployment_href(&r.id)) #keep-deployment { "Keep it as it is" }
            }
        }
    }
}

/// `POST /deployments/{id}/{action}`: pause, resume and rollback need
/// [`crate::backend::Capabilities::manage_deployments`], abort
/// `create_deployments`.
pub async fn act(
    State(c): C,
    h: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    let v = match form_viewer(&c, &h, &f.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let note: String = f
        .note
        .trim()
        .chars()
        .take(crate::backend::MAX_COMMENT_CHARS)
        .collect();
    let a = match action.as_str() {
        "pause" => DeploymentAction::Pause { note },
        "resume" => match crate::deploy_form::patch_list(&f.patches) {
            Ok(patches) => DeploymentAction::Resume {
                retry_failed: f.retry_failed.is_some(),
                force: f.force.is_some(),
                patches,
            },
            Err(m) => return error_page(&c, Some(&v), ConsoleError::BadRequest(m)),
        },
        "abort" => DeploymentAction::Abort { note },
        "rollback" => match RollbackTarget::parse(&f.scope) {
            Ok(scope) => DeploymentAction::Rollback { scope },
            Err(m) => return error_page(&c, Some(&v), ConsoleError::BadRequest(m)),
        },
        other => {
            return error_page(
                &c,
                Some(&v),
                ConsoleError::NotFound(format!("no action {other}")),
            );
        }
    };
    let allowed = match a {
        DeploymentAction::Abort { .. } => v.can.create_deployments,
        _ => v.can.manage_deployments,
    };
    if !allowed {
        return refuse(
            &c,
            Some(&v),
            "forbidden",
            &format!("Role {} may not {} deployments.", v.role, a.name()),
        );
    }
    // Rolling back a finished deployment: confirmed first.
    if let DeploymentAction::Rollback { scope } = &a
        && f.confirm != "1"
    {
        let d = match c.backend.deployment(&v, &id).await {
            Ok(d) => d,
            Err(e) => return error_page(&c, Some(&v), e),
        };
        if d.row.finished_rollbackable() {
            let csrf = c.csrf.token(&v.csrf_subject);
            let words = scope_words(scope, &d);
            return page(
                StatusCode::OK,
                render(
                    &c,
                    Some(&v),
                    layout::Section::Deployments,
                    "Roll back a finished deployment?",
                    vec![
                        layout::crumb("Dashboard", "/"),
                        layout::crumb("Deployments", "/deployments"),
                        layout::crumb(id.clone(), deployment_href(&id)),
                        layout::here("Roll back"),
                    ],
                    confirm_rollback_page(&d, &f.scope, &words, &csrf),
                ),
            );
        }
    }
    match c.backend.deployment_action(&v, &id, &a).await {
        Ok(()) => {
            c.backend.live().publish(crate::live::LiveEvent::command(
                &v.tenant,
                &crate::live::CommandChange {
                    id: String::new(),
                    site_id: String::new(),
                    customer: String::new(),
                    state: String::new(),
                    finished: false,
                },
            ));
            Redirect::to(&deployment_href(&id)).into_response()
        }
        Err(ConsoleError::Forbidden(m)) => refuse(&c, Some(&v), "forbidden", &m),
        Err(e) => error_page(&c, Some(&v), e),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ApprovalParams {
    pub device: Option<String>,
}

/// `GET /approvals[?device=ID]`.
pub async fn approvals(State(c): C, h: HeaderMap, Query(p): Query<ApprovalParams>) -> Response {
    let v = match viewer(&c, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !c.backend.info().features.deployments {
        return later(&c, &v, "Approvals");
    }
    let device = p
        .device
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty());
    let csrf = c.csrf.token(&v.csrf_subject);
    match c.backend.approvals(&v, device.as_deref()).await {
        Ok(a) => page(
            StatusCode::OK,
            render(
                &c,
                Some(&v),
                layout::Section::Deployments,
                "Approvals",
                vec![
                    layout::crumb("Dashboard", "/"),
                    layout::crumb("Deployments", "/deployments"),
                    layout::here("Approvals"),
                ],
                approvals_page(&a, &csrf),
            ),
        ),
        Err(e) => error_page(&c, Some(&v), e),
    }
}

/// The approve/decline form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct VerdictForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub patch: String,
    #[serde(default)]
    pub verdict: String,
    #[serde(default)]
    pub scope: String,
}

/// The rule form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct RuleForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub min_severity: String,
    #[serde(default)]
    pub security_only: Option<String>,
    #[serde(default)]
    pub delay_days: String,
    #[serde(default)]
    pub allow: String,
    #[serde(default)]
    pub deny: String,
}

/// A comma-separated list, trimmed, empty items left out.
fn list_of(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// An approvals form's viewer, refused unless it may edit approvals.
async fn approval_editor(c: &Console, h: &HeaderMap, csrf: &str) -> Result<Viewer, Response> {
    let v = form_viewer(c, h, csrf).await?;
    if !v.can.approve_patches || !c.backend.info().features.edit_approvals {
        return Err(refuse(
            c,
            Some(&v),
            "forbidden",
            &format!("Role {} may not change approvals here.", v.role),
        ));
    }
    Ok(v)
}

fn after_approval(c: &Console, v: &Viewer, r: Result<(), ConsoleError>) -> Response {
    match r {
        Ok(()) => Redirect::to("/approvals").into_response(),
        Err(ConsoleError::Forbidden(m)) => refuse(c, Some(v), "forbidden", &m),
        Err(e) => error_page(c, Some(v), e),
    }
}

/// `POST /approvals`: approve or decline a patch (backends with
/// [`crate::backend::Features::edit_approvals`]).
pub async fn verdict(State(c): C, h: HeaderMap, Form(f): Form<VerdictForm>) -> Response {
    let v = match approval_editor(&c, &h, &f.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let req = VerdictRequest {
        patch: f.patch.trim().to_string(),
        verdict: f.verdict.trim().to_string(),
        scope: f.scope.trim().to_string(),
    };
    let r = c.backend.set_verdict(&v, &req).await;
    after_approval(&c, &v, r)
}

/// `POST /approval-rules`: adds a rule.
pub async fn add_rule(State(c): C, h: HeaderMap, Form(f): Form<RuleForm>) -> Response {
    let v = match approval_editor(&c, &h, &f.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let delay = f.delay_days.trim();
    let delay_days = if delay.is_empty() {
        0
    } else {
        match delay.parse::<u32>() {
            Ok(d) => d,
            Err(_) => {
                return error_page(
                    &c,
                    Some(&v),
                    ConsoleError::BadRequest(format!("\"{delay}\" is not a number of days")),
                );
            }
        }
    };
    let min = f.min_severity.trim();
    let req = NewRule {
        id: f.id.trim().to_string(),
        scope: f.scope.trim().to_string(),
        min_severity: (!min.is_empty()).then(|| min.to_string()),
        security_only: f.security_only.is_some(),
        delay_days,
        allow: list_of(&f.allow),
        deny: list_of(&f.deny),
    };
    let r = c.backend.add_approval_rule(&v, &req).await;
    after_approval(&c, &v, r)
}

/// `POST /approval-rules/{id}/delete`: removes a rule.
pub async fn remove_rule(
    State(c): C,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let v = match approval_editor(&c, &h, &f.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let r = c.backend.remove_approval_rule(&v, &id).await;
    after_approval(&c, &v, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Capabilities;

    fn viewer(manage: bool, admin: bool) -> Viewer {
        Viewer {
            name: "t".into(),
            tenant: "site".into(),
            customers: vec![],
            role: "x".into(),
            can: Capabilities {
                manage_deployments: manage,
                create_deployments: admin,
                ..Default::default()
            },
            csrf_subject: vec![],
        }
    }

    fn detail(phase: &str) -> DeploymentDetail {
        DeploymentDetail {
            row: DeploymentRow {
                id: "dep-1".into(),
                phase: phase.into(),
                stage: Some(0),
                stages: 2,
                target: "all devices".into(),
                patches: vec!["openssl=3.0.2-1".into()],
                devices: 2,
                failed: 1,
                ..Default::default()
            },
            note: Some("gate: 1 of 1 devices failed".into()),
            stages: vec![StageView {
                stage: 0,
                devices: 1,
                failed: 1,
                gate: "fails: <b>1 of 1</b>".into(),
                ..Default::default()
            }],
            devices: vec![DeploymentDevice {
                site_id: "local".into(),
                device: "000000000000002a".into(),
                hostname: "web-1".into(),
                state: "failed".into(),
                reason: Some("dpkg: <error>".into()),
                ..Default::default()
            }],
            actions: vec![],
        }
    }

    #[test]
    fn a_deployment_over_sites_shows_each_sites_state_and_one_created_at_its_site_offers_no_action()
    {
        let mut d = detail("running");
        d.row.sites = vec![
            SiteLine {
                site_id: "s-1".into(),
                site_name: "main <office>".into(),
                customer: "dental".into(),
                delivery: "delivered".into(),
                phase: Some("paused".into()),
                stage: Some(0),
                stages: 2,
                devices: 1,
                ..Default::default()
            },
            SiteLine {
                site_id: "s-2".into(),
                site_name: "branch".into(),
                delivery: "refused".into(),
                reason: Some("unknown <patch>".into()),
                ..Default::default()
            },
        ];
        d.actions = vec![ActionLine {
            action: "pause".into(),
            by: "tess".into(),
            detail: "note: <x>".into(),
            delivery: "delivered 1/2".into(),
            ..Default::default()
        }];
        let tech = deployment_page(&d, &viewer(true, false), "tok").into_string();
        assert!(tech.contains("id=\"deployment-sites\""), "{tech}");
        assert!(
            tech.contains("data-site=\"s-1\" data-state=\"paused\"")
                && tech.contains("data-site=\"s-2\" data-state=\"refused\""),
            "{tech}"
        );
        assert!(
            tech.contains("main &lt;office&gt;")
                && tech.contains("unknown &lt;patch&gt;")
                && tech.contains("note: &lt;x&gt;"),
            "escaped: {tech}"
        );
        assert!(tech.contains("class=\"dep-pause\""), "{tech}");
        let list = deployment_list(std::slice::from_ref(&d.row), None, "tok").into_string();
        assert!(list.contains("data-field=\"sites\""), "{list}");
        d.row.read_only = Some("Created at site main: act on it there.".into());
        let ro = deployment_page(&d, &viewer(true, true), "tok").into_string();
        assert!(
            !ro.contains("dep-action") && ro.contains("deployment-read-only"),
            "{ro}"
        );
    }

    #[test]
    fn approval_forms_and_remove_buttons_show_only_when_the_backend_says_editable() {
        let mut a = ApprovalsView {
            rules: vec![RuleRow {
                id: "r1".into(),
                kind: "auto".into(),
                scope: "tenant msp".into(),
                ..Default::default()
            }],
            removable: vec!["r1".into()],
            decisions_note: Some("each site decides".into()),
            ..Default::default()
        };
        let ro = approvals_page(&a, "tok").into_string();
        assert!(
            !ro.contains("<form") && ro.contains("each site decides"),
            "{ro}"
        );
        a.editable = true;
        let ed = approvals_page(&a, "tok").into_string();
        assert!(
            ed.contains("id=\"verdict-form\"")
                && ed.contains("id=\"rule-form\"")
                && ed.contains("action=\"/approval-rules/r1/delete\""),
            "{ed}"
        );
    }

    #[test]
    fn a_paused_deployment_offers_resume_and_rollback_to_technicians_abort_to_admins_nothing_to_viewers()
     {
        let d = detail("paused");
        let tech = deployment_page(&d, &viewer(true, false), "tok").into_string();
        assert!(
            tech.contains("class=\"dep-resume\"") && tech.contains("class=\"dep-rollback\""),
            "{tech}"
        );
        assert!(
            !tech.contains("class=\"dep-abort\"") && !tech.contains("class=\"dep-pause\""),
            "{tech}"
        );
        let admin = deployment_page(&d, &viewer(true, true), "tok").into_string();
        assert!(admin.contains("class=\"dep-abort\""), "{admin}");
        let view = deployment_page(&d, &viewer(false, false), "tok").into_string();
        assert!(
            !view.contains("dep-action") && !view.contains("<form"),
            "{view}"
        );
        // Agent-supplied text is escaped.
        assert!(
            view.contains("dpkg: &lt;error&gt;") && view.contains("&lt;b&gt;1 of 1"),
            "{view}"
        );
        // A finished deployment offers only a rollback (confirmed first:
        // a patch can break machines after the run ended), never pause,
        // resume or abort; a viewer gets nothing.
        let done = deployment_page(&detail("completed"), &viewer(true, true), "tok").into_string();
        assert!(
            done.contains("class=\"dep-rollback\"") && done.contains("you confirm first"),
            "{done}"
        );
        assert!(
            !done.contains("class=\"dep-abort\"")
                && !done.contains("class=\"dep-pause\"")
                && !done.contains("class=\"dep-resume\"")
                && !done.contains("rollback-scope"),
            "{done}"
        );
        assert!(
            done.contains(r#"value="device:000000000000002a""#),
            "a device that ran can be rolled back alone: {done}"
        );
        let seen =
            deployment_page(&detail("completed"), &viewer(false, false), "tok").into_string();
        assert!(!seen.contains("<form"), "{seen}");
        // Rolled back: nothing left to do.
        let gone =
            deployment_page(&detail("rolled_back"), &viewer(true, true), "tok").into_string();
        assert!(
            !gone.contains("dep-action") && !gone.contains("dev-rollback"),
            "{gone}"
        );
    }

    #[test]
    fn the_rollback_confirmation_names_what_is_rolled_back_and_posts_it_confirmed() {
        let d = detail("completed");
        let words = scope_words(&RollbackTarget::Device("000000000000002a".into()), &d);
        let h = confirm_rollback_page(&d, "device:000000000000002a", &words, "tok").into_string();
        assert!(
            h.contains(r#"name="confirm" value="1""#)
                && h.contains(r#"name="scope" value="device:000000000000002a""#)
                && h.contains(r#"name="csrf" value="tok""#),
            "{h}"
        );
        assert!(h.contains("id=\"keep-deployment\""), "{h}");
        assert_eq!(
            scope_words(&RollbackTarget::Deployment, &d),
            "the whole deployment"
        );
    }

    #[test]
    fn technicians_get_a_rollback_scope_per_stage_reached_a_button_per_device_that_ran_and_a_versions_override()
     {
        let mut d = detail("paused");
        d.row.stage = Some(1);
        d.stages.push(StageView {
            stage: 1,
            ..Default::default()
        });
        d.stages.push(StageView {
            stage: 2,
            ..Default::default()
        });
        d.devices.push(DeploymentDevice {
            site_id: "local".into(),
            device: "000000000000002b".into(),
            state: "waiting_for_window".into(),
            ..Default::default()
        });
        let tech = deployment_page(&d, &viewer(true, false), "tok").into_string();
        assert!(
            tech.contains(r#"value="stage:1""#)
                && tech.contains(r#"value="stage:2""#)
                && !tech.contains(r#"value="stage:3""#),
            "stages reached only: {tech}"
        );
        assert!(
            tech.contains(r#"value="device:000000000000002a""#)
                && !tech.contains(r#"value="device:000000000000002b""#),
            "the failed device, not the waiting one: {tech}"
        );
        assert!(tech.contains(r#"name="patches""#), "{tech}");
        let view = deployment_page(&d, &viewer(false, false), "tok").into_string();
        assert!(
            !view.contains("dev-rollback") && !view.contains("rollback-scope"),
            "{view}"
        );
    }

    #[test]
    fn a_refused_create_form_comes_back_as_typed_with_the_reason() {
        let a = ApprovalsView {
            targets: vec![
                ("all".into(), "all devices".into()),
                ("tag:web".into(), "tag web".into()),
            ],
            ..Default::default()
        };
        let typed = CreateForm {
            target: "tag:web".into(),
            stages: "5,<b>".into(),
            reboot: "never".into(),
            ..Default::default()
        };
        let m = deployment_list_again(&[], Some(&a), "tok", Some((&typed, "Stages: <b> is bad.")))
            .into_string();
        assert!(
            m.contains("Stages: &lt;b&gt; is bad."),
            "escaped reason: {m}"
        );
        assert!(m.contains(r#"value="tag:web" selected"#), "{m}");
        assert!(m.contains(r#"value="5,&lt;b&gt;""#), "{m}");
        assert!(m.contains(r#"value="never" selected"#), "{m}");
        assert!(m.contains("<details id=\"dep-options\" open"), "{m}");
    }

    #[test]
    fn the_create_form_offers_the_patches_approved_by_hand_once_each() {
        let a = ApprovalsView {
            rules: vec![
                RuleRow {
                    id: "m1".into(),
                    kind: "approve".into(),
                    patch: Some("openssl=3.0.2-1".into()),
                    ..Default::default()
                },
                RuleRow {
                    id: "m2".into(),
                    kind: "approve".into(),
                    patch: Some("openssl=3.0.2-1".into()),
                    ..Default::default()
                },
                RuleRow {
                    id: "m3".into(),
                    kind: "decline".into(),
                    patch: Some("curl=8.0-1".into()),
                    ..Default::default()
                },
            ],
            targets: vec![("all".into(), "all devices".into())],
            ..Default::default()
        };
        assert_eq!(a.approved(), vec!["openssl=3.0.2-1".to_string()]);
        let m = deployment_list(&[], Some(&a), "tok").into_string();
        assert_eq!(m.matches("name=\"patch\"").count(), 1, "{m}");
        assert!(m.contains("no-deployments"), "{m}");
    }
}
