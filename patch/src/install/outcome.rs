//! Parsers of what apt and dpkg print during an install or a rollback,
//! and the changes between two scans. Pure and total: any input gives an
//! answer (fuzzed by `fuzz/fuzz_targets/patch_apt_outcome.rs`); lines it
//! does not know are ignored.
//!
//! dpkg's progress lines are stable across releases (they are what
//! `dpkg.log` readers and unattended-upgrades rely on):
//!
//! ```text
//! Selecting previously unselected package newdep-outpost.
//! Unpacking hello-outpost (1.1-1) over (1.0-1) ...
//! Unpacking newdep-outpost (1.0-1) ...
//! Setting up hello-outpost (1.1-1) ...
//! Removing newdep-outpost (1.0-1) ...
//! dpkg: warning: downgrading hello-outpost from 1.1-1 to 1.0-1
//! dpkg: error processing archive /x/broken-outpost_1.1-1_all.deb (--unpack):
//! dpkg: error processing package badpost-outpost (--configure):
//!  <reason>
//! E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 21815 (python3)
//! dpkg: error: dpkg frontend lock was locked by another process with pid 21367
//! ```
//!
//! Scans before and after ([`changes_between`]) are the ground truth of
//! what changed; the parsed output tells why something failed.

use crate::scan::model::{PkgState, Scan};
use std::collections::BTreeMap;

/// One package changed by a transaction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackageChange {
    pub name: String,
    /// As printed (`libssl3:amd64`); `None` when dpkg printed no
    /// architecture (`all` packages, or a single-architecture system).
    pub arch: Option<String>,
    /// `None`: newly installed.
    pub from: Option<String>,
    /// `None`: removed.
    pub to: Option<String>,
    /// dpkg configured the new version (`Setting up`); removals count as
    /// done.
    pub configured: bool,
}

/// A package or archive dpkg failed on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DpkgFailure {
    /// The package name (taken from the archive's file name for unpack
    /// errors).
    pub package: String,
    /// `--unpack`, `--install`, `--configure`, `--remove`.
    pub stage: String,
    pub reason: String,
}

/// Who holds dpkg's lock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockHolder {
    pub pid: Option<u32>,
    pub process: Option<String>,
}

/// What one apt (or dpkg) run did, as far as its output tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AptOutcome {
    /// In first-seen order.
    pub changes: Vec<PackageChange>,
    pub failures: Vec<DpkgFailure>,
    /// `E:` lines (apt) and `dpkg: error:` lines.
    pub errors: Vec<String>,
    /// The dpkg lock was held by someone else: nothing was changed.
    pub lock: Option<LockHolder>,
    /// apt refused because held packages would change.
    pub held_refused: bool,
    /// Locally modified conffiles kept (the package's version set aside).
    pub conffiles_kept: Vec<String>,
    /// Conffiles replaced by the package's version (never modified).
    pub conffiles_replaced: Vec<String>,
}

impl AptOutcome {
    /// No error, and every unpacked package configured.
    pub fn succeeded(&self) -> bool {
        self.errors.is_empty()
            && self.failures.is_empty()
            && self.lock.is_none()
            && !self.held_refused
            && self.changes.iter().all(|c| c.configured)
    }
}

/// Bounds of what is kept from one output (an output is capped by the
/// agent too).
pub const MAX_ITEMS: usize = 10_000;
const MAX_TEXT: usize = 500;

fn clip(s: &str) -> String {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn split_arch(full: &str) -> (String, Option<String>) {
    match full.split_once(':') {
        Some((n, a)) if !n.is_empty() && !a.is_empty() => (n.to_string(), Some(a.to_string())),
        _ => (full.to_string(), None),
    }
}

/// `NAME (VERSION)` at the start of `s`, and the rest.
fn name_version(s: &str) -> Option<(&str, &str, &str)> {
    let (name, rest) = s.split_once(" (")?;
    let (version, rest) = rest.split_once(')')?;
    if name.is_empty() || name.contains(' ') || version.is_empty() || version.contains(' ') {
        return None;
    }
    Some((name, version, rest))
}

/// The package of an archive path (`/x/name_1.0-1_all.deb` → `name`).
fn archive_package(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split('_').next().unwrap_or(file).to_string()
}

fn change<'a>(
    out: &'a mut AptOutcome,
    index: &mut BTreeMap<(String, Option<String>), usize>,
    full: &str,
) -> Option<&'a mut PackageChange> {
    let (name, arch) = split_arch(full);
    let key = (name.clone(), arch.clone());
    let i = match index.get(&key) {
        Some(&i) => i,
        None => {
            if out.changes.len() >= MAX_ITEMS {
                return None;
            }
            out.changes.push(PackageChange {
                name,
                arch,
                from: None,
                to: None,
                configured: false,
            });
            index.insert(key, out.changes.len() - 1);
            out.changes.len() - 1
        }
    };
    out.changes.get_mut(i)
}

fn push_bounded<T>(v: &mut Vec<T>, item: T) {
    if v.len() < MAX_ITEMS {
        v.push(item);
    }
}

/// Parses the combined stdout and stderr of `apt-get install`, `dpkg -i`
/// or `dpkg -r`.
pub fn parse_apt_output(text: &str) -> AptOutcome {
    let mut out = AptOutcome::default();
    let mut index = BTreeMap::new();
    // An error whose reason is on the next (indented) line.
    let mut awaiting_reason: Option<usize> = None;
    let mut conffile: Option<String> = None;
    for line in text.lines() {
        if let Some(i) = awaiting_reason.take()
            && let Some(reason) = line.strip_prefix(' ')
            && let Some(f) = out.failures.get_mut(i)
        {
            f.reason = clip(reason.trim());
            continue;
        }
        if let Some(rest) = line.strip_prefix("Unpacking ") {
            if let Some((full, version, rest)) = name_version(rest) {
                let from = rest
                    .strip_prefix(" over (")
                    .and_then(|r| r.split_once(')'))
                    .map(|(v, _)| v.to_string());
                if let Some(c) = change(&mut out, &mut index, full) {
                    // The first `from` is the version before the run.
                    if c.from.is_none() && c.to.is_none() {
                        c.from = from;
                    }
                    c.to = Some(version.to_string());
                    c.configured = false;
                }
            }
        } else if let Some(rest) = line.strip_prefix("Setting up ") {
            if let Some((full, version, _)) = name_version(rest)
                && let Some(c) = change(&mut out, &mut index, full)
            {
                if c.to.is_none() && c.from.is_none() {
                    // Configured only (a package left unpacked before).
                    c.from = Some(version.to_string());
                }
                c.to = Some(version.to_string());
                c.configured = true;
            }
        } else if let Some(rest) = line.strip_prefix("Removing ") {
            if let Some((full, version, _)) = name_version(rest)
                && let Some(c) = change(&mut out, &mut index, full)
            {
                if c.from.is_none() && c.to.is_none() {
                    c.from = Some(version.to_string());
                }
                c.to = None;
                c.configured = true;
            }
        } else if let Some(rest) = line.strip_prefix("dpkg: error processing ") {
            let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let (target, stage) = match rest.rsplit_once(" (") {
                Some((t, s)) => (t, s.trim_end_matches(':').trim_end_matches(')')),
                None => (rest.trim_end_matches(':'), ""),
            };
            let package = if kind == "archive" {
                archive_package(target)
            } else {
                split_arch(target).0
            };
            if stage == "--configure"
                && let Some(&i) = index.get(&split_arch(target))
                && let Some(c) = out.changes.get_mut(i)
            {
                c.configured = false;
            }
            if out.failures.len() < MAX_ITEMS {
                out.failures.push(DpkgFailure {
                    package: clip(&package),
                    stage: clip(stage),
                    reason: String::new(),
                });
                awaiting_reason = Some(out.failures.len() - 1);
            }
        } else if let Some(rest) = line.strip_prefix("E: ") {
            if rest.contains("lock")
                && (rest.starts_with("Could not get lock") || rest.starts_with("Unable to acquire"))
            {
                let holder = out.lock.get_or_insert(LockHolder {
                    pid: None,
                    process: None,
                });
                if let Some((_, p)) = rest.split_once("held by process ") {
                    let (pid, process) = p.split_once(' ').unwrap_or((p, ""));
                    holder.pid = holder.pid.or(pid.trim_end_matches('.').parse().ok());
                    let process = process.trim().trim_start_matches('(').trim_end_matches(')');
                    if !process.is_empty() {
                        holder.process = Some(clip(process));
                    }
                }
            }
            if rest.starts_with("Held packages were changed") {
                out.held_refused = true;
            }
            push_bounded(&mut out.errors, clip(rest));
        } else if let Some(rest) = line.strip_prefix("dpkg: error: ") {
            if let Some((_, pid)) = rest.split_once("lock was locked by another process with pid ")
            {
                let holder = out.lock.get_or_insert(LockHolder {
                    pid: None,
                    process: None,
                });
                holder.pid = pid.trim().parse().ok();
            }
            push_bounded(&mut out.errors, clip(rest));
        } else if let Some(rest) = line.strip_prefix("Configuration file '") {
            conffile = rest.split_once('\'').map(|(p, _)| clip(p));
        } else if line
            .trim_start()
            .starts_with("==> Keeping old config file as default")
        {
            if let Some(p) = conffile.take() {
                push_bounded(&mut out.conffiles_kept, p);
            }
        } else if let Some(rest) = line.strip_prefix("Installing new version of config file ") {
            push_bounded(
                &mut out.conffiles_replaced,
                clip(rest.trim_end_matches(" ...")),
            );
        }
    }
    out
}

/// One problem `dpkg --audit` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditFinding {
    pub package: String,
    /// The first line of dpkg's explanation.
    pub problem: String,
}

/// Parses `dpkg --audit` (empty output: clean). dpkg prints a paragraph
/// per problem, then the affected packages indented by one space.
pub fn parse_dpkg_audit(text: &str) -> Vec<AuditFinding> {
    let mut out = Vec::new();
    let mut problem = String::new();
    let mut in_header = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            in_header = false;
            continue;
        }
        if let Some(rest) = line.strip_prefix(' ') {
            in_header = false;
            if let Some(pkg) = rest.split_whitespace().next()
                && out.len() < MAX_ITEMS
            {
                out.push(AuditFinding {
                    package: clip(pkg),
                    problem: problem.clone(),
                });
            }
        } else if !in_header {
            problem = clip(line.trim());
            in_header = true;
        }
    }
    out
}

/// What changed between two scans of one device: upgrades, downgrades,
/// new and removed packages (by name and architecture), sorted. Packages
/// not fully installed after count as not configured.
pub fn changes_between(before: &Scan, after: &Scan) -> Vec<PackageChange> {
    let key = |p: &crate::scan::model::DpkgPackage| (p.name.clone(), p.arch.clone());
    let old: BTreeMap<_, _> = before.dpkg.iter().map(|p| (key(p), p)).collect();
    let new: BTreeMap<_, _> = after.dpkg.iter().map(|p| (key(p), p)).collect();
    let mut out = Vec::new();
    for (k, n) in &new {
        let from = old.get(k).map(|o| o.version.as_str().to_string());
        if from.as_deref() != Some(n.version.as_str()) {
            out.push(PackageChange {
                name: k.0.clone(),
                arch: Some(k.1.clone()),
                from,
                to: Some(n.version.as_str().to_string()),
                configured: n.state == PkgState::Installed,
            });
        }
    }
    for (k, o) in &old {
        if !new.contains_key(k) {
            out.push(PackageChange {
                name: k.0.clone(),
                arch: Some(k.1.clone()),
                from: Some(o.version.as_str().to_string()),
                to: None,
                configured: true,
            });
        }
    }
    out.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    out
}

/// The net change of several installs on one device (the attempts of one
/// deployment), in any order: per package, the version before the first
/// change and after the last. Changes chain by version (an install only
/// upgrades or adds), so the earlier change of two is the one from the
/// lower version (`None`, not installed, lowest) whatever order the
/// reports arrived in; a package changed back to where it started drops
/// out. What a rollback of all the attempts undoes.
pub fn combine_changes<'a>(
    attempts: impl IntoIterator<Item = &'a [PackageChange]>,
) -> Vec<PackageChange> {
    let mut net: BTreeMap<(String, Option<String>), PackageChange> = BTreeMap::new();
    for c in attempts.into_iter().flatten() {
        let key = (c.name.clone(), c.arch.clone());
        match net.get_mut(&key) {
            None => {
                net.insert(key, c.clone());
            }
            Some(have) => {
                let (first, last) = match version_order(&c.from, &have.from) {
                    std::cmp::Ordering::Less => (c.clone(), have.clone()),
                    std::cmp::Ordering::Greater => (have.clone(), c.clone()),
                    // The same starting version twice (a report repeated):
                    // the further one.
                    std::cmp::Ordering::Equal => match version_order(&c.to, &have.to) {
                        std::cmp::Ordering::Greater => (have.clone(), c.clone()),
                        _ => (c.clone(), have.clone()),
                    },
                };
                *have = PackageChange {
                    from: first.from,
                    ..last
                };
            }
        }
    }
    net.into_values().filter(|c| c.from != c.to).collect()
}

/// The `.deb` files kept by several installs, each path once.
pub fn combine_kept<'a>(
    attempts: impl IntoIterator<Item = &'a [super::KeptDeb]>,
) -> Vec<super::KeptDeb> {
    let mut by_path: BTreeMap<&str, &super::KeptDeb> = BTreeMap::new();
    for k in attempts.into_iter().flatten() {
        by_path.entry(k.path.as_str()).or_insert(k);
    }
    by_path.into_values().cloned().collect()
}

/// dpkg's order of two optional versions (`None` first); a version dpkg
/// cannot parse compares as text.
fn version_order(a: &Option<String>, b: &Option<String>) -> std::cmp::Ordering {
    match (a, b) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(a), Some(b)) => crate::version::compare_versions(a, b).unwrap_or_else(|_| a.cmp(b)),
    }
}
