//! Per-deployment install options (issue 15): the reboot policy, the
//! pre-install and post-install scripts (by name from the site's script
//! library), and the snapshot before patching. Asked for on creation
//! (site API and CLI, central through its create order, a recurring
//! schedule), resolved once against `[deploy]`'s defaults and the script
//! library ([`resolve`]: an unknown script is refused, naming it), stored
//! with the deployment ([`StoredOptions`]) and mapped into every
//! `InstallRequest` ([`StoredOptions::apply`]). The per-deployment
//! install window is the create request's `window` (already stored).
//!
//! Owns only this mapping. Must not store deployments (the orchestrator
//! does, through `super::store`) nor edit the script library.

use outpost_patch::install::wire::{InstallRequest, RebootPolicy, ScriptStep};
use outpost_storage::Store;
use serde::{Deserialize, Serialize};

use crate::commands::scripts::{self, ScriptVersion};

/// The options as asked (create request, schedule): every field unset
/// takes `[deploy]`'s default. Flattened into the request JSON:
/// `"reboot":"always"`, `"pre_script":"stop-app"`, `"snapshot":false`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployOptions {
    /// `never`, `if_required` or `always` (only inside the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<RebootPolicy>,
    /// A script of the library run before the install (its newest
    /// version at creation); the install fails if it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_script: Option<String>,
    /// A script of the library run after a successful install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_script: Option<String>,
    /// Take a file-system snapshot before patching where the root allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<bool>,
}

impl DeployOptions {
    /// Any option set (central refuses these for a site too old to know
    /// them, instead of letting it ignore them).
    pub fn is_set(&self) -> bool {
        self.reboot.is_some()
            || self.pre_script.is_some()
            || self.post_script.is_some()
            || self.snapshot.is_some()
    }
}

/// One library script pinned at creation: later edits of the script do
/// not change a deployment already made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptPin {
    pub name: String,
    pub version: u32,
}

/// The options a deployment runs with (stored with it, shown in its
/// JSON as `stored.options`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOptions {
    pub reboot: RebootPolicy,
    #[serde(default)]
    pub pre_script: Option<ScriptPin>,
    #[serde(default)]
    pub post_script: Option<ScriptPin>,
    pub snapshot: bool,
}

/// `[deploy]`'s defaults, for options not asked for and for deployments
/// stored before options existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub reboot: RebootPolicy,
    pub snapshot: bool,
}

impl StoredOptions {
    /// What a deployment without stored options (made by an older build)
    /// runs with: today's defaults, no scripts.
    pub fn defaults(d: Defaults) -> StoredOptions {
        StoredOptions {
            reboot: d.reboot,
            pre_script: None,
            post_script: None,
            snapshot: d.snapshot,
        }
    }

    /// Puts these options into `req` (reboot, snapshot, and the scripts'
    /// bodies looked up by `lookup`). Err: a pinned script version is
    /// gone (the install is reported failed with the reason).
    pub fn apply(
        &self,
        req: &mut InstallRequest,
        lookup: impl Fn(&ScriptPin) -> Result<Option<ScriptVersion>, String>,
    ) -> Result<(), String> {
        req.reboot = self.reboot;
        req.snapshot = self.snapshot;
        req.pre_script = self
            .pre_script
            .as_ref()
            .map(|p| step(p, &lookup, "pre-install"))
            .transpose()?;
        req.post_script = self
            .post_script
            .as_ref()
            .map(|p| step(p, &lookup, "post-install"))
            .transpose()?;
        Ok(())
    }
}

fn step(
    pin: &ScriptPin,
    lookup: &impl Fn(&ScriptPin) -> Result<Option<ScriptVersion>, String>,
    what: &str,
) -> Result<ScriptStep, String> {
    let v = lookup(pin)?.ok_or_else(|| {
        format!(
            "{what} script {:?} version {} is not in the script library",
            pin.name, pin.version
        )
    })?;
    Ok(script_step(&v))
}

/// A library script as an install step (same rules as a script command:
/// its body travels with the request, its default timeout applies).
pub fn script_step(v: &ScriptVersion) -> ScriptStep {
    ScriptStep {
        name: v.name.clone(),
        version: v.version,
        interpreter: v.interpreter.as_str().to_string(),
        body: v.body.clone(),
        timeout_ms: v.default_timeout_ms,
    }
}

/// Why options cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// Bad input (the API answers 400, naming it).
    #[error("{0}")]
    Invalid(String),
    #[error("reading the script library failed: {0}")]
    Store(#[from] outpost_storage::StorageError),
}

/// Resolves asked options against `[deploy]`'s defaults and the script
/// library (`latest`: the newest version of a script by name). An
/// unknown script is [`OptionsError::Invalid`], naming it.
pub fn resolve_with(
    asked: &DeployOptions,
    defaults: Defaults,
    latest: impl Fn(&str) -> Result<Option<ScriptVersion>, outpost_storage::StorageError>,
) -> Result<StoredOptions, OptionsError> {
    let pin = |name: &Option<String>, what: &str| -> Result<Option<ScriptPin>, OptionsError> {
        let Some(name) = name else {
            return Ok(None);
        };
        match latest(name)? {
            Some(v) => Ok(Some(ScriptPin {
                name: v.name,
                version: v.version,
            })),
            None => Err(OptionsError::Invalid(format!(
                "unknown {what} script {name:?}: add it to the script library first (outpost scripts add)"
            ))),
        }
    };
    Ok(StoredOptions {
        reboot: asked.reboot.unwrap_or(defaults.reboot),
        pre_script: pin(&asked.pre_script, "pre-install")?,
        post_script: pin(&asked.post_script, "post-install")?,
        snapshot: asked.snapshot.unwrap_or(defaults.snapshot),
    })
}

/// [`resolve_with`] over the site's script library.
pub fn resolve(
    store: &Store,
    asked: &DeployOptions,
    defaults: Defaults,
) -> Result<StoredOptions, OptionsError> {
    resolve_with(asked, defaults, |name| scripts::latest(store, name))
}

/// The pinned version's body from the site's script library.
pub fn lookup(store: &Store, pin: &ScriptPin) -> Result<Option<ScriptVersion>, String> {
    scripts::get(store, &pin.name, pin.version)
        .map_err(|e| format!("reading script {:?} failed: {e}", pin.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::command::Interpreter;

    fn script(name: &str, version: u32) -> ScriptVersion {
        ScriptVersion {
            name: name.into(),
            version,
            interpreter: Interpreter::Bash,
            body: format!("echo {name} v{version}"),
            default_timeout_ms: 30_000,
            parameters: vec![],
            created_ms: 1,
            created_by: "admin".into(),
        }
    }

    const DEFAULTS: Defaults = Defaults {
        reboot: RebootPolicy::IfRequired,
        snapshot: true,
    };

    fn library(name: &str) -> Result<Option<ScriptVersion>, outpost_storage::StorageError> {
        Ok((name == "stop-app").then(|| script("stop-app", 3)))
    }

    fn request() -> InstallRequest {
        InstallRequest {
            deployment: "dep-1".into(),
            attempt: 1,
            targets: vec![],
            proxy: None,
            reboot: RebootPolicy::IfRequired,
            min_free_root_bytes: 0,
            keep_previous_debs: true,
            pre_script: None,
            post_script: None,
            snapshot: true,
        }
    }

    #[test]
    fn unset_options_take_the_deploy_defaults_and_set_ones_win() {
        let none = resolve_with(&DeployOptions::default(), DEFAULTS, library).unwrap();
        assert_eq!(none, StoredOptions::defaults(DEFAULTS));
        let asked = DeployOptions {
            reboot: Some(RebootPolicy::Always),
            pre_script: Some("stop-app".into()),
            post_script: None,
            snapshot: Some(false),
        };
        let o = resolve_with(&asked, DEFAULTS, library).unwrap();
        assert_eq!(o.reboot, RebootPolicy::Always);
        assert!(!o.snapshot);
        assert_eq!(
            o.pre_script,
            Some(ScriptPin {
                name: "stop-app".into(),
                version: 3
            })
        );
        assert_eq!(o.post_script, None);
    }

    #[test]
    fn an_unknown_script_is_refused_naming_it_and_its_role() {
        let asked = DeployOptions {
            post_script: Some("no-such".into()),
            ..Default::default()
        };
        let e = resolve_with(&asked, DEFAULTS, library).unwrap_err();
        assert!(matches!(e, OptionsError::Invalid(_)), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("\"no-such\"") && m.contains("post-install"),
            "{m}"
        );
    }

    #[test]
    fn stored_options_map_into_the_install_request_with_the_pinned_script_bodies() {
        let o = StoredOptions {
            reboot: RebootPolicy::Never,
            pre_script: Some(ScriptPin {
                name: "stop-app".into(),
                version: 2,
            }),
            post_script: Some(ScriptPin {
                name: "start-app".into(),
                version: 1,
            }),
            snapshot: false,
        };
        let mut req = request();
        o.apply(&mut req, |p| Ok(Some(script(&p.name, p.version))))
            .unwrap();
        assert_eq!(req.reboot, RebootPolicy::Never);
        assert!(!req.snapshot);
        let pre = req.pre_script.unwrap();
        assert_eq!(
            (pre.name.as_str(), pre.version, pre.interpreter.as_str()),
            ("stop-app", 2, "bash")
        );
        assert_eq!(pre.body, "echo stop-app v2");
        assert_eq!(pre.timeout_ms, 30_000);
        assert_eq!(req.post_script.unwrap().name, "start-app");
        // A pinned version that is gone fails the install with the reason.
        let mut req = request();
        let e = o.apply(&mut req, |_| Ok(None)).unwrap_err();
        assert!(e.contains("\"stop-app\" version 2"), "{e}");
    }

    #[test]
    fn options_read_from_flat_request_json_and_an_empty_set_writes_nothing() {
        let o: DeployOptions = serde_json::from_str(
            r#"{"reboot":"always","pre_script":"a","post_script":"b","snapshot":false}"#,
        )
        .unwrap();
        assert!(o.is_set());
        assert_eq!(o.reboot, Some(RebootPolicy::Always));
        assert_eq!(
            serde_json::to_string(&DeployOptions::default()).unwrap(),
            "{}"
        );
        assert!(!DeployOptions::default().is_set());
        assert!(serde_json::from_str::<DeployOptions>(r#"{"reboot":"sometimes"}"#).is_err());
    }
}
