//! Bulk actions on the device list (both scopes): select devices, then
//! "Run script…" (one bulk run through the backend's bulk API: central's
//! `/commands/bulk`, the appliance's command service) or "Tag…" (the
//! appliance's device tags). The bar is a form (`POST /devices/bulk`)
//! whose checkboxes sit in the table (`form="bulk-form"`), so selecting
//! works without script; `console.js` only shows the bar and its count.
//!
//! This module owns the bar's markup and its route; the backend checks
//! roles and scopes and acts (`ConsoleBackend::bulk_run`,
//! `tag_devices`). The POST goes through the same origin check and CSRF
//! token as every console form.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use outpost_web::Form;

use crate::Console;
use crate::backend::ConsoleError;
use crate::routes::{error_page, form_viewer, refuse};

/// Most devices one bulk action takes from the list (a page is 100).
pub const MAX_SELECTED: usize = 1000;
/// Most tags one "Tag…" adds.
pub const MAX_TAGS: usize = 16;

/// A selected device: (site id, device id).
pub type DeviceKey = (String, String);

/// What "Run script…" asks: a script of the library, or a command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BulkRunRequest {
    pub script: Option<String>,
    pub command: Option<String>,
    pub args: Vec<String>,
}

/// What the bar offers this viewer.
#[derive(Debug, Clone, Copy, Default)]
pub struct BulkBar<'a> {
    pub csrf: &'a str,
    /// "Run script…" (the backend has commands and the viewer runs them).
    pub run: bool,
    /// "Tag…" (the backend has tags and the viewer may set them).
    pub tag: bool,
    /// Script names offered (the library's, where readable).
    pub scripts: &'a [String],
    /// The list is filtered by this tag and the backend runs by tag:
    /// "Run on every device tagged T" (no selection needed).
    pub by_tag: Option<&'a str>,
}

/// The bar shown above the device list once devices are selected.
pub fn bar(b: &BulkBar) -> Markup {
    html! {
        @if let Some(t) = b.by_tag {
            form.run #tag-run-form method="post" action="/devices/bulk" data-tag=(t) {
                input type="hidden" name="csrf" value=(b.csrf);
                input type="hidden" name="target_tag" value=(t);
                label { span { "Script" } input type="text" name="script" list="bulk-scripts" placeholder="script name"; }
                label { span { "or command" } input type="text" name="command" id="tag-command" placeholder="e.g. uptime"; }
                label { span { "Arguments" } input type="text" name="args" placeholder="space-separated"; }
                button type="submit" name="action" value="run_tag" id="tag-run" { "Run on every device tagged " (t) }
            }
        }
        div.bulk #bulk-bar hidden {
            span #bulk-count { "0" } " selected · "
            @if b.run || b.tag {
                form.run #bulk-form method="post" action="/devices/bulk" {
                    input type="hidden" name="csrf" value=(b.csrf);
                    @if b.run {
                        label { span { "Script" }
                            input type="text" name="script" id="bulk-script" list="bulk-scripts" placeholder="script name";
                        }
                        datalist #bulk-scripts { @for s in b.scripts { option value=(s) {} } }
                        label { span { "or command" } input type="text" name="command" id="bulk-command" placeholder="e.g. uptime"; }
                        label { span { "Arguments" } input type="text" name="args" id="bulk-args" placeholder="space-separated"; }
                        button type="submit" name="action" value="run" id="bulk-run" { "Run script…" }
                    }
                    @if b.tag {
                        label { span { "Tags" } input type="text" name="tags" id="bulk-tags" placeholder="web, db"; }
                        button type="submit" name="action" value="tag" id="bulk-tag" { "Tag…" }
                    }
                }
            } @else {
                button type="button" disabled title="Your role cannot act on devices" { "Run script…" }
                " "
                button type="button" disabled title="Your role cannot act on devices" { "Tag…" }
            }
        }
    }
}

/// The bar's fields (`device` repeats: the body is read as pairs).
#[derive(Debug, Default, PartialEq)]
pub struct BulkForm {
    pub csrf: String,
    pub action: String,
    pub devices: Vec<DeviceKey>,
    pub script: String,
    pub command: String,
    pub args: String,
    pub tags: String,
    /// `run_tag`: the tag whose devices run it.
    pub target_tag: String,
}

impl BulkForm {
    pub fn of(pairs: Vec<(String, String)>) -> Result<BulkForm, ConsoleError> {
        let mut f = BulkForm::default();
        for (k, v) in pairs {
            match k.as_str() {
                "csrf" => f.csrf = v,
                "action" => f.action = v,
                "device" => {
                    let (site, dev) = v.split_once('/').ok_or_else(|| {
                        ConsoleError::BadRequest(format!("{v:?} is not SITE/DEVICE"))
                    })?;
                    if !f.devices.iter().any(|(s, d)| s == site && d == dev) {
                        f.devices.push((site.to_string(), dev.to_string()));
                    }
                }
                "script" => f.script = v.trim().to_string(),
                "command" => f.command = v.trim().to_string(),
                "args" => f.args = v,
                "tags" => f.tags = v,
                "target_tag" => f.target_tag = v.trim().to_string(),
                _ => {}
            }
        }
        Ok(f)
    }

    /// The tags asked for: split on commas and spaces, deduplicated.
    pub fn tag_list(&self) -> Result<Vec<String>, ConsoleError> {
        let mut out: Vec<String> = Vec::new();
        for t in self
            .tags
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
        {
            if t.len() > 64 {
                return Err(ConsoleError::BadRequest(format!(
                    "tag {t:?} is longer than 64 characters"
                )));
            }
            if !out.iter().any(|o| o == t) {
                out.push(t.to_string());
            }
        }
        if out.is_empty() {
            return Err(ConsoleError::BadRequest("Give at least one tag.".into()));
        }
        if out.len() > MAX_TAGS {
            return Err(ConsoleError::BadRequest(format!(
                "At most {MAX_TAGS} tags at once."
            )));
        }
        Ok(out)
    }

    /// The run asked for: exactly one of a script and a command line.
    pub fn run_request(&self) -> Result<BulkRunRequest, ConsoleError> {
        let args = self.args.split_whitespace().map(str::to_string).collect();
        match (self.script.is_empty(), self.command.is_empty()) {
            (false, true) => Ok(BulkRunRequest {
                script: Some(self.script.clone()),
                command: None,
                args,
            }),
            (true, false) => Ok(BulkRunRequest {
                script: None,
                command: Some(self.command.clone()),
                args,
            }),
            _ => Err(ConsoleError::BadRequest(
                "Give a script or a command line (one of them).".into(),
            )),
        }
    }
}

type C = State<Arc<Console>>;

/// `POST /devices/bulk`: the selected devices, then `action=run` (a bulk
/// run; to its page) or `action=tag` (back to the list).
pub async fn submit(
    State(c): C,
    h: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let f = match BulkForm::of(pairs) {
        Ok(f) => f,
        Err(e) => return error_page(&c, None, e),
    };
    let v = match form_viewer(&c, &h, &f.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !v.can.run_commands {
        return refuse(
            &c,
            Some(&v),
            "forbidden",
            &format!("Role {} may not act on devices.", v.role),
        );
    }
    let info = c.backend.info();
    if f.action == "run_tag" && info.features.bulk_by_tag {
        let done = match (f.run_request(), f.target_tag.is_empty()) {
            (_, true) => Err(ConsoleError::BadRequest("Give a tag.".into())),
            (Ok(req), false) => c.backend.bulk_run_tag(&v, &f.target_tag, &req).await,
            (Err(e), false) => Err(e),
        };
        return match done {
            Ok(id) => Redirect::to(&crate::scripts::bulk_href(&id)).into_response(),
            Err(ConsoleError::Forbidden(m)) => refuse(&c, Some(&v), "forbidden", &m),
            Err(e) => error_page(&c, Some(&v), e),
        };
    }
    if f.devices.is_empty() {
        return error_page(
            &c,
            Some(&v),
            ConsoleError::BadRequest("Select at least one device.".into()),
        );
    }
    if f.devices.len() > MAX_SELECTED {
        return error_page(
            &c,
            Some(&v),
            ConsoleError::BadRequest(format!("At most {MAX_SELECTED} devices at once.")),
        );
    }
    let done = match f.action.as_str() {
        "run" if info.features.commands => match f.run_request() {
            Ok(req) => c.backend.bulk_run(&v, &f.devices, &req).await.map(|id| {
                if info.features.scripts {
                    crate::scripts::bulk_href(&id)
                } else {
                    "/commands".to_string()
                }
            }),
            Err(e) => Err(e),
        },
        "tag" if info.features.tag_devices => match f.tag_list() {
            Ok(tags) => c
                .backend
                .tag_devices(&v, &f.devices, &tags)
                .await
                .map(|()| "/devices".to_string()),
            Err(e) => Err(e),
        },
        other => Err(ConsoleError::BadRequest(format!(
            "No bulk action {other:?} here."
        ))),
    };
    match done {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(ConsoleError::Forbidden(m)) => refuse(&c, Some(&v), "forbidden", &m),
        Err(e) => error_page(&c, Some(&v), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_form_reads_repeated_devices_once_each_and_one_of_script_or_command() {
        let f = BulkForm::of(pairs(&[
            ("csrf", "t"),
            ("action", "run"),
            ("device", "s-1/a"),
            ("device", "s-1/b"),
            ("device", "s-1/a"),
            ("script", " restart-nginx "),
            ("args", "one  two"),
        ]))
        .unwrap();
        assert_eq!(
            f.devices,
            vec![("s-1".into(), "a".into()), ("s-1".into(), "b".into())]
        );
        let r = f.run_request().unwrap();
        assert_eq!(r.script.as_deref(), Some("restart-nginx"));
        assert_eq!(r.args, vec!["one", "two"]);
        let both = BulkForm {
            script: "x".into(),
            command: "y".into(),
            ..Default::default()
        };
        assert!(both.run_request().is_err());
        assert!(BulkForm::default().run_request().is_err());
        assert!(BulkForm::of(pairs(&[("device", "no-slash")])).is_err());
    }

    #[test]
    fn tags_split_on_commas_and_spaces_and_an_empty_or_overlong_list_is_refused() {
        let f = BulkForm {
            tags: "web, db web,,edge".into(),
            ..Default::default()
        };
        assert_eq!(f.tag_list().unwrap(), vec!["web", "db", "edge"]);
        assert!(BulkForm::default().tag_list().is_err());
        let long = BulkForm {
            tags: "x".repeat(65),
            ..Default::default()
        };
        assert!(long.tag_list().is_err());
    }

    #[test]
    fn a_viewer_gets_a_bar_without_a_form() {
        let none = bar(&BulkBar::default()).into_string();
        assert!(
            !none.contains("<form") && none.contains("disabled"),
            "{none}"
        );
        let both = bar(&BulkBar {
            csrf: "tok",
            run: true,
            tag: true,
            scripts: &["restart-nginx".to_string()],
            by_tag: None,
        })
        .into_string();
        assert!(
            both.contains("id=\"bulk-run\"")
                && both.contains("id=\"bulk-tag\"")
                && both.contains("value=\"restart-nginx\""),
            "{both}"
        );
        assert!(!both.contains("tag-run-form"), "{both}");
    }

    #[test]
    fn a_list_filtered_by_a_tag_offers_a_run_on_every_device_with_it() {
        let b = bar(&BulkBar {
            csrf: "tok",
            run: true,
            by_tag: Some("web<1>"),
            ..Default::default()
        })
        .into_string();
        assert!(
            b.contains("id=\"tag-run-form\"")
                && b.contains("name=\"target_tag\" value=\"web&lt;1&gt;\"")
                && b.contains("value=\"run_tag\""),
            "{b}"
        );
        let f = BulkForm::of(vec![
            ("action".into(), "run_tag".into()),
            ("target_tag".into(), " web ".into()),
            ("command".into(), "uptime".into()),
        ])
        .unwrap();
        assert_eq!(f.target_tag, "web");
        assert!(f.devices.is_empty());
    }
}
