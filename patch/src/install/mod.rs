//! The device side of a deployment, pure: from the approved exact
//! versions and the device's scan, the install plan (pre-checks, the apt
//! command line, the previous versions to record, held packages reported
//! rather than forced); from the package changes, the rollback plan; and
//! the parsers of what apt and dpkg print ([`outcome`]).
//!
//! Owns these plans and parsers; must not run anything, touch the file
//! system or the clock (the agent runs the commands, measures free space,
//! hashes kept `.deb` files, and feeds the outputs back here).
//!
//! # apt invocation and conffile policy
//!
//! ```text
//! apt-get install -y --no-install-recommends \
//!   -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
//!   [-o Acquire::http::Proxy=http://APPLIANCE:3142] pkg[:arch]=version …
//! ```
//!
//! with `DEBIAN_FRONTEND=noninteractive` (no debconf prompts),
//! `APT_LISTCHANGES_FRONTEND=none`, `NEEDRESTART_MODE=l` (Ubuntu's
//! needrestart lists, never restarts services by itself) and
//! `UCF_FORCE_CONFFOLD=1`. Conffiles: `--force-confdef` takes the
//! package's new version of a configuration file the administrator never
//! changed; `--force-confold` keeps a locally modified one (the package's
//! version is left beside it as `*.dpkg-dist`); dpkg never prompts. A
//! rollback uses the same policy, so local edits survive both ways
//! (captured from real apt in `patch/tests/data/install/`).
//!
//! Exact versions only (`pkg=version`), never `--allow-downgrades` on
//! install, never `--allow-change-held-packages`: a held package is left
//! out of the command and reported ([`Skip::Held`]). Recommends are not
//! pulled in; new dependencies are (apt's resolver), and the rollback
//! removes them.
//!
//! # Rollback
//!
//! The changes of an install (from apt's output, or better from the scans
//! before and after, [`changes_between`]) give the rollback: every
//! upgraded package back to its previous version, every package the
//! install pulled in removed, every package it removed reinstalled, in
//! one apt transaction (`--allow-downgrades`, `name-` to remove). A
//! previous version is installed from its kept `.deb` when there is one
//! (pinned in the site cache or rebuilt before the upgrade, its SHA-256
//! verified first: [`PreCheck::VerifyDeb`]), so a rollback works with the
//! uplink down and the old version gone from the repository index; else
//! from the repositories.

pub mod outcome;
#[cfg(test)]
mod tests;
pub mod wire;

use crate::assess::MissingPatch;
use crate::scan::model::{DpkgPackage, PkgState, Scan};
use crate::version::DebVersion;
use std::cmp::Ordering;

pub use outcome::{
    AptOutcome, AuditFinding, LockHolder, PackageChange, changes_between, combine_changes,
    combine_kept, parse_apt_output, parse_dpkg_audit,
};

/// One binary package at an exact version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BinaryTarget {
    pub name: String,
    /// `None`: the package's only installed architecture.
    pub arch: Option<String>,
    pub version: String,
}

impl BinaryTarget {
    /// The binaries of a missing patch (what the assessment saw apt offer
    /// on this device).
    pub fn from_missing(p: &MissingPatch) -> Vec<BinaryTarget> {
        p.binaries
            .iter()
            .map(|b| BinaryTarget {
                name: b.name.clone(),
                arch: b.arch.clone(),
                version: b.to.as_str().to_string(),
            })
            .collect()
    }

    /// apt's `name[:arch]=version`.
    pub fn apt_arg(&self) -> String {
        format!(
            "{}={}",
            qualified(&self.name, self.arch.as_deref()),
            self.version
        )
    }
}

fn qualified(name: &str, arch: Option<&str>) -> String {
    match arch {
        Some(a) => format!("{name}:{a}"),
        None => name.to_string(),
    }
}

/// Why a target is not in the command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "skip", rename_all = "snake_case")]
pub enum Skip {
    /// Held (`apt-mark hold`): reported, never forced.
    Held {
        installed: String,
    },
    /// Already at the version.
    AlreadyInstalled,
    /// A newer version is installed: installing would downgrade.
    NewerInstalled {
        installed: String,
    },
    /// Not installed on this device (a deployment upgrades what is there;
    /// new packages come only as dependencies).
    NotInstalled,
    /// Several architectures are installed and the target names none.
    AmbiguousArch,
    BadVersion {
        reason: String,
    },
}

/// A target left out, with why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub target: BinaryTarget,
    pub why: Skip,
}

/// A package's version before the install (`None`: not installed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreviousVersion {
    pub name: String,
    pub arch: String,
    pub version: Option<String>,
}

/// A check the agent runs before installing; any failure fails the
/// device with its reason, before anything changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "check", rename_all = "snake_case")]
pub enum PreCheck {
    /// At least `min_bytes` available on the file system holding `path`.
    FreeSpace { path: String, min_bytes: u64 },
    /// Nobody holds dpkg's lock (`/var/lib/dpkg/lock-frontend`).
    DpkgLockFree,
    /// `dpkg --audit` prints nothing (no half-installed package).
    DpkgAuditClean,
    /// A kept `.deb` still has its recorded SHA-256 (rollbacks).
    VerifyDeb { path: String, sha256: String },
}

/// Tunables of a plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PlanOptions {
    /// The site cache as apt proxy (`http://appliance:3142`).
    pub proxy: Option<String>,
    /// Free space needed under `/var/cache/apt/archives` (default 500 MiB).
    pub min_free_archives_bytes: u64,
    /// Free space needed on `/` (default 200 MiB).
    pub min_free_root_bytes: u64,
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions {
            proxy: None,
            min_free_archives_bytes: 500 << 20,
            min_free_root_bytes: 200 << 20,
        }
    }
}

/// What the agent does for one install.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstallPlan {
    /// Targets in the command, in order.
    pub install: Vec<BinaryTarget>,
    pub skipped: Vec<Skipped>,
    /// Versions to record before installing (and whose `.deb` to keep).
    pub previous: Vec<PreviousVersion>,
    pub prechecks: Vec<PreCheck>,
    /// `apt-get …`; empty when there is nothing to install.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl InstallPlan {
    /// Held packages (reported in the device's status).
    pub fn held(&self) -> impl Iterator<Item = &Skipped> {
        self.skipped
            .iter()
            .filter(|s| matches!(s.why, Skip::Held { .. }))
    }
}

/// The environment of every apt run.
pub fn apt_env() -> Vec<(String, String)> {
    [
        ("DEBIAN_FRONTEND", "noninteractive"),
        ("APT_LISTCHANGES_FRONTEND", "none"),
        ("NEEDRESTART_MODE", "l"),
        ("UCF_FORCE_CONFFOLD", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn apt_base(proxy: Option<&str>, downgrades: bool) -> Vec<String> {
    let mut argv: Vec<String> = ["apt-get", "install", "-y", "--no-install-recommends"]
        .into_iter()
        .map(String::from)
        .collect();
    if downgrades {
        argv.push("--allow-downgrades".into());
    }
    for o in [
        "Dpkg::Options::=--force-confdef",
        "Dpkg::Options::=--force-confold",
        "Dpkg::Use-Pty=0",
    ] {
        argv.push("-o".into());
        argv.push(o.into());
    }
    if let Some(p) = proxy {
        argv.push("-o".into());
        argv.push(format!("Acquire::http::Proxy={p}"));
    }
    argv
}

/// The installed packages a target may mean.
fn installed<'a>(scan: &'a Scan, t: &BinaryTarget) -> Vec<&'a DpkgPackage> {
    scan.dpkg
        .iter()
        .filter(|p| p.name == t.name && t.arch.as_deref().is_none_or(|a| a == p.arch))
        .collect()
}

/// The install plan of `targets` on the device of `scan`.
pub fn plan_install(targets: &[BinaryTarget], scan: &Scan, opts: &PlanOptions) -> InstallPlan {
    let mut plan = InstallPlan {
        install: Vec::new(),
        skipped: Vec::new(),
        previous: Vec::new(),
        prechecks: Vec::new(),
        argv: Vec::new(),
        env: apt_env(),
    };
    for t in targets {
        let skip = |why| Skipped {
            target: t.clone(),
            why,
        };
        let want = match DebVersion::parse(&t.version) {
            Ok(v) => v,
            Err(e) => {
                plan.skipped.push(skip(Skip::BadVersion {
                    reason: e.to_string(),
                }));
                continue;
            }
        };
        let pkgs = installed(scan, t);
        let p = match pkgs.as_slice() {
            [] => {
                plan.skipped.push(skip(Skip::NotInstalled));
                continue;
            }
            [p] => *p,
            _ => {
                plan.skipped.push(skip(Skip::AmbiguousArch));
                continue;
            }
        };
        match p.version.compare(&want) {
            Ordering::Equal => {
                plan.skipped.push(skip(Skip::AlreadyInstalled));
                continue;
            }
            Ordering::Greater => {
                plan.skipped.push(skip(Skip::NewerInstalled {
                    installed: p.version.as_str().to_string(),
                }));
                continue;
            }
            Ordering::Less => {}
        }
        if p.held {
            plan.skipped.push(skip(Skip::Held {
                installed: p.version.as_str().to_string(),
            }));
            continue;
        }
        if plan
            .install
            .iter()
            .any(|i| i.name == p.name && i.arch.as_deref() == Some(&p.arch))
        {
            continue;
        }
        plan.previous.push(PreviousVersion {
            name: p.name.clone(),
            arch: p.arch.clone(),
            version: Some(p.version.as_str().to_string()),
        });
        plan.install.push(BinaryTarget {
            name: t.name.clone(),
            arch: t.arch.clone(),
            version: t.version.clone(),
        });
    }
    if plan.install.is_empty() {
        return plan;
    }
    plan.prechecks = vec![
        PreCheck::DpkgLockFree,
        PreCheck::DpkgAuditClean,
        PreCheck::FreeSpace {
            path: "/var/cache/apt/archives".into(),
            min_bytes: opts.min_free_archives_bytes,
        },
        PreCheck::FreeSpace {
            path: "/".into(),
            min_bytes: opts.min_free_root_bytes,
        },
    ];
    plan.argv = apt_base(opts.proxy.as_deref(), false);
    plan.argv
        .extend(plan.install.iter().map(BinaryTarget::apt_arg));
    plan
}

/// A `.deb` kept for rollbacks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptDeb {
    pub name: String,
    pub arch: String,
    pub version: String,
    /// Absolute path on the device.
    pub path: String,
    /// Lowercase hex SHA-256 recorded when it was kept.
    pub sha256: String,
}

/// Where a previous version comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum DebSource {
    Repository,
    Kept { path: String, sha256: String },
}

/// One step of a rollback.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum RollbackStep {
    /// Back to the previous version (a downgrade, or a reinstall of a
    /// package the install removed).
    Restore {
        name: String,
        arch: String,
        version: String,
        source: DebSource,
    },
    /// Remove a package the install newly pulled in.
    Remove { name: String, arch: String },
}

/// What the agent does to roll a device back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RollbackPlan {
    pub steps: Vec<RollbackStep>,
    /// Lock, audit, and the kept `.deb` hashes.
    pub prechecks: Vec<PreCheck>,
    /// Previous versions with no kept `.deb`: they need the repositories
    /// (a rollback with the uplink down or the version gone fails for
    /// them; reported before starting).
    pub from_repository: Vec<String>,
    /// `apt-get …`; empty when there is nothing to roll back.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// The rollback of `changes` (what the install changed), preferring the
/// kept `.deb` of each previous version.
pub fn plan_rollback(
    changes: &[PackageChange],
    kept: &[KeptDeb],
    proxy: Option<&str>,
) -> RollbackPlan {
    let mut plan = RollbackPlan {
        steps: Vec::new(),
        prechecks: Vec::new(),
        from_repository: Vec::new(),
        argv: Vec::new(),
        env: apt_env(),
    };
    let mut args = Vec::new();
    for c in changes {
        let arch = c.arch.clone().unwrap_or_default();
        let q = qualified(&c.name, c.arch.as_deref());
        match (&c.from, &c.to) {
            (Some(from), to) if to.as_ref() != Some(from) => {
                let k = kept.iter().find(|k| {
                    k.name == c.name && k.version == *from && (c.arch.is_none() || k.arch == arch)
                });
                let source = match k {
                    Some(k) => {
                        plan.prechecks.push(PreCheck::VerifyDeb {
                            path: k.path.clone(),
                            sha256: k.sha256.clone(),
                        });
                        args.push(k.path.clone());
                        DebSource::Kept {
                            path: k.path.clone(),
                            sha256: k.sha256.clone(),
                        }
                    }
                    None => {
                        plan.from_repository.push(format!("{q}={from}"));
                        args.push(format!("{q}={from}"));
                        DebSource::Repository
                    }
                };
                plan.steps.push(RollbackStep::Restore {
                    name: c.name.clone(),
                    arch,
                    version: from.clone(),
                    source,
                });
            }
            (None, Some(_)) => {
                args.push(format!("{q}-"));
                plan.steps.push(RollbackStep::Remove {
                    name: c.name.clone(),
                    arch,
                });
            }
            _ => {}
        }
    }
    if plan.steps.is_empty() {
        return plan;
    }
    plan.prechecks
        .splice(0..0, [PreCheck::DpkgLockFree, PreCheck::DpkgAuditClean]);
    plan.argv = apt_base(proxy, true);
    plan.argv.extend(args);
    plan
}

/// Whether a free-space pre-check passes.
pub fn free_space_ok(check: &PreCheck, available_bytes: u64) -> Result<(), String> {
    match check {
        PreCheck::FreeSpace { path, min_bytes } if available_bytes < *min_bytes => Err(format!(
            "{path}: {} MiB free, {} MiB needed",
            available_bytes >> 20,
            min_bytes >> 20
        )),
        _ => Ok(()),
    }
}

/// Packages whose installed version is not the planned one after the
/// install (read from a fresh scan): the install did not take.
pub fn unmet_targets(plan: &InstallPlan, after: &Scan) -> Vec<String> {
    plan.install
        .iter()
        .filter(|t| {
            !installed(after, t)
                .iter()
                .any(|p| p.version.as_str() == t.version && p.state == PkgState::Installed)
        })
        .map(BinaryTarget::apt_arg)
        .collect()
}
