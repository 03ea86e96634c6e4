//! `apt-get -s -o Debug::NoLocking=1 dist-upgrade` output: what apt's own
//! resolver would install, upgrade and remove, with each candidate's
//! origins. apt's simulation lines are stable across releases:
//!
//! ```text
//! Inst libssl3 [3.0.11-1~deb12u2] (3.0.15-1~deb12u1 Debian:12.8/stable, Debian-Security:12/stable-security [amd64])
//! Inst newdep (1.0-1 Debian:12.8/stable [amd64])
//! Remv oldpkg [2.0-1]
//! ```
//!
//! Other lines (`Conf`, headers, summaries) are ignored.

use crate::scan::model::{AptUpgrade, Problems};
use crate::version::DebVersion;

/// The arguments the agent passes to `apt-get` (no lock taken: a
/// simulation only reads the cache).
pub const APT_SIMULATE_ARGS: &[&str] = &["-s", "-o", "Debug::NoLocking=1", "dist-upgrade"];

/// A package apt would remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptRemoval {
    pub name: String,
    pub arch: Option<String>,
    pub version: Option<DebVersion>,
}

/// What the simulation said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AptPlan {
    /// Installs and upgrades, in output order.
    pub upgrades: Vec<AptUpgrade>,
    pub removals: Vec<AptRemoval>,
    pub problems: Problems,
}

const TOOL: &str = "apt-get";

/// Parses `apt-get -s dist-upgrade` output.
pub fn parse_apt_simulation(text: &str) -> AptPlan {
    let mut plan = AptPlan::default();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if let Some(rest) = line.strip_prefix("Inst ") {
            match parse_inst(rest) {
                Ok(u) => plan.upgrades.push(u),
                Err(reason) => plan.problems.push(TOOL, number, reason),
            }
        } else if let Some(rest) = line.strip_prefix("Remv ") {
            match parse_remv(rest) {
                Ok(r) => plan.removals.push(r),
                Err(reason) => plan.problems.push(TOOL, number, reason),
            }
        }
    }
    plan
}

/// `name[:arch]` as apt prints it.
fn split_name(full: &str) -> (String, Option<String>) {
    match full.split_once(':') {
        Some((n, a)) if !a.is_empty() => (n.to_string(), Some(a.to_string())),
        _ => (full.to_string(), None),
    }
}

fn parse_inst(rest: &str) -> Result<AptUpgrade, String> {
    let (full_name, mut rest) = rest
        .split_once(' ')
        .ok_or("no candidate after the package name")?;
    if full_name.is_empty() {
        return Err("empty package name".into());
    }
    let (name, mut arch) = split_name(full_name);
    let mut from = None;
    if let Some(r) = rest.strip_prefix('[') {
        let (old, after) = r
            .split_once(']')
            .ok_or("unterminated [installed version]")?;
        from = Some(
            DebVersion::parse(old)
                .map_err(|e| format!("package {name}: installed version {old:?}: {e}"))?,
        );
        rest = after.trim_start();
    }
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.split_once(')'))
        .map(|(inner, _)| inner)
        .ok_or_else(|| format!("package {name}: no (candidate origins) group"))?;
    let (version, mut origins_text) = inner.split_once(' ').unwrap_or((inner, ""));
    let to = DebVersion::parse(version)
        .map_err(|e| format!("package {name}: candidate version {version:?}: {e}"))?;
    // A trailing " [arch]" inside the group.
    if let Some(open) = origins_text.rfind('[')
        && origins_text.ends_with(']')
    {
        let a = &origins_text[open + 1..origins_text.len() - 1];
        if !a.is_empty() && arch.is_none() {
            arch = Some(a.to_string());
        }
        origins_text = origins_text[..open].trim_end();
    }
    let origins: Vec<String> = origins_text
        .split(", ")
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect();
    let security = origins.iter().any(|o| is_security_origin(o));
    Ok(AptUpgrade {
        name,
        arch,
        from,
        to,
        origins,
        security,
        // Filled from `apt-cache show` (see `scan::apt_cache`).
        size_bytes: None,
    })
}

fn parse_remv(rest: &str) -> Result<AptRemoval, String> {
    let (full_name, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if full_name.is_empty() {
        return Err("empty package name".into());
    }
    let (name, arch) = split_name(full_name);
    let version = match rest
        .trim_start()
        .strip_prefix('[')
        .and_then(|r| r.split_once(']'))
    {
        Some((v, _)) => {
            Some(DebVersion::parse(v).map_err(|e| format!("package {name}: version {v:?}: {e}"))?)
        }
        None => None,
    };
    Ok(AptRemoval {
        name,
        arch,
        version,
    })
}

/// An origin is a security pocket when its archive (after the `/`) ends
/// in `-security` (`bookworm-security`, `jammy-security`,
/// `oldstable-security`) or its label (before the `:` or `/`) ends in
/// `Security` (`Debian-Security`).
pub fn is_security_origin(origin: &str) -> bool {
    let (label, archive) = match origin.split_once('/') {
        Some((l, a)) => (l, a),
        None => (origin, ""),
    };
    let label = label.split(':').next().unwrap_or(label);
    archive.ends_with("-security") || label.ends_with("Security") || label.ends_with("-security")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Reading package lists...
Building dependency tree...
Calculating upgrade...
The following packages will be upgraded:
  base-files libgcrypt20 liblzma5
3 upgraded, 1 newly installed, 1 to remove and 0 not upgraded.
Remv oldpkg [2.0-1]
Inst base-files [12.4+deb12u11] (12.4+deb12u15 Debian:12.15/oldstable [amd64])
Inst libgcrypt20 [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64])
Inst liblzma-dev [5.4.1-1] (5.4.1-1+deb12u2 Debian-Security:12/oldstable-security [amd64]) []
Inst libc6:i386 [2.36-9+deb12u4] (2.36-9+deb12u7 Debian:12.15/oldstable [i386])
Inst newdep (1:1.0-1 Ubuntu:22.04/jammy-security [all])
Conf base-files (12.4+deb12u15 Debian:12.15/oldstable [amd64])
";

    #[test]
    fn inst_lines_give_installed_candidate_origins_and_security() {
        let plan = parse_apt_simulation(SAMPLE);
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
        assert_eq!(plan.upgrades.len(), 5);
        let base = &plan.upgrades[0];
        assert_eq!(base.name, "base-files");
        assert_eq!(
            base.from.as_ref().map(DebVersion::as_str),
            Some("12.4+deb12u11")
        );
        assert_eq!(base.to.as_str(), "12.4+deb12u15");
        assert_eq!(base.origins, vec!["Debian:12.15/oldstable"]);
        assert_eq!(base.arch.as_deref(), Some("amd64"));
        assert!(!base.security);
        let gcrypt = &plan.upgrades[1];
        assert_eq!(gcrypt.origins.len(), 2);
        assert!(gcrypt.security);
        assert!(
            plan.upgrades[2].security,
            "trailing [] after the group is ignored"
        );
        let libc = &plan.upgrades[3];
        assert_eq!(
            (libc.name.as_str(), libc.arch.as_deref()),
            ("libc6", Some("i386"))
        );
        let new = &plan.upgrades[4];
        assert_eq!(new.from, None);
        assert_eq!(new.to.as_str(), "1:1.0-1");
        assert!(new.security);
        assert_eq!(plan.removals.len(), 1);
        assert_eq!(
            plan.removals[0].version.as_ref().map(DebVersion::as_str),
            Some("2.0-1")
        );
    }

    #[test]
    fn malformed_inst_lines_are_reported_with_their_line() {
        let plan = parse_apt_simulation(
            "Inst a [1.0] (2.0 X/y [amd64])\nInst b [1.0 (2.0)\nInst c [1.0] 2.0\nInst d [1:] (2.0 X/y)\nInst\n",
        );
        assert_eq!(plan.upgrades.len(), 1);
        assert_eq!(plan.problems.total, 3);
        let lines: Vec<u32> = plan.problems.first.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![2, 3, 4]);
    }

    #[test]
    fn security_origins_are_recognised_for_debian_and_ubuntu() {
        assert!(is_security_origin("Debian-Security:12/stable-security"));
        assert!(is_security_origin("Ubuntu:22.04/jammy-security"));
        assert!(!is_security_origin("Ubuntu:22.04/jammy-updates"));
        assert!(!is_security_origin("Debian:12.8/stable"));
        assert!(!is_security_origin("Security-Team-PPA-Lookalike:1/stable"));
    }

    #[test]
    fn this_machines_apt_simulation_parses_without_problems() {
        let Ok(out) = std::process::Command::new("apt-get")
            .args(APT_SIMULATE_ARGS)
            .output()
        else {
            eprintln!("SKIPPED: apt-get is not installed");
            return;
        };
        let plan = parse_apt_simulation(&String::from_utf8_lossy(&out.stdout));
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    }
}
