//! The agent installer: the `outpost-agent` Debian package the appliance
//! hands to its site's endpoints, and the one command line
//! (`outpost agent-installer`) a technician pastes on an endpoint to fetch,
//! verify, install, enroll and start it.
//!
//! Trust model: the package is downloaded over plain HTTP from the cache
//! port, so the download itself proves nothing. What the technician copied
//! from the appliance (over the admin session they trust) carries the
//! package's SHA-256 and the site CA's fingerprint: `sha256sum -c` refuses
//! a package that differs before `dpkg` sees it, and `outpost-agent enroll`
//! refuses an appliance whose CA differs before the token is sent.
//!
//! Owns: finding the package in the configured directory, its hash, the
//! `/outpost/agent/FILE` route of the cache port and the line's text. Does
//! not touch enrollment tokens (the admin API's token machinery makes them)
//! nor the cache's verified apt content.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// URL path prefix under which the cache port serves the agent package.
pub const URL_PREFIX: &str = "/outpost/agent/";

/// File in the data directory naming the address the QUIC listener is
/// bound to (written by `outpost serve`).
pub const QUIC_ADDR_FILE: &str = "quic.addr";

/// Default directory of the agent package (the `outpost` Debian package
/// installs the matching `outpost-agent` .deb there).
pub const DEFAULT_PACKAGE_DIR: &str = "/usr/share/outpost/agent";

/// The agent package the appliance serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPackage {
    /// File name (`outpost-agent_0.1.0-1_amd64.deb`), also the URL's last segment.
    pub file: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    pub size_bytes: u64,
    /// Path on the cache port: `/outpost/agent/FILE`.
    pub path: String,
}

/// The two forms of the agent package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageKind {
    /// `outpost-agent_*.deb`, installed with dpkg.
    Deb,
    /// `outpost-agent_*.tar.gz` with `install.sh`, for hosts without dpkg.
    Tarball,
}

impl PackageKind {
    fn suffix(self) -> &'static str {
        match self {
            PackageKind::Deb => ".deb",
            PackageKind::Tarball => ".tar.gz",
        }
    }

    /// The kind a served file name is, if it is one.
    pub fn of_name(name: &str) -> Option<PackageKind> {
        [PackageKind::Deb, PackageKind::Tarball]
            .into_iter()
            .find(|k| is_agent_package_name(name, *k))
    }
}

/// Whether `name` looks like an agent package of `kind` (and nothing else:
/// no path separators, no hidden files).
fn is_agent_package_name(name: &str, kind: PackageKind) -> bool {
    name.starts_with("outpost-agent_")
        && name.ends_with(kind.suffix())
        && !name.contains('/')
        && !name.contains("..")
}

/// The agent packages the appliance serves, as `GET /api/v1/agent-package`
/// answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPackages {
    pub deb: Option<AgentPackage>,
    pub tarball: Option<AgentPackage>,
}

/// The agent package of `kind` in `dir`: the one `outpost-agent_*` file
/// (the greatest name when several, which for one architecture is the
/// newest version in Debian's usual naming). `None` when there is none.
pub fn find_package_file(
    dir: &Path,
    kind: PackageKind,
) -> anyhow::Result<Option<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut best: Option<String> = None;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !is_agent_package_name(&name, kind) || !entry.path().is_file() {
            continue;
        }
        if best.as_ref().is_none_or(|b| name > *b) {
            best = Some(name);
        }
    }
    Ok(best.map(|n| {
        let p = dir.join(&n);
        (n, p)
    }))
}

/// Hashes the agent packages in `dir` (blocking: run it off the async
/// threads).
pub fn describe_all(dir: &Path) -> anyhow::Result<AgentPackages> {
    Ok(AgentPackages {
        deb: describe(dir, PackageKind::Deb)?,
        tarball: describe(dir, PackageKind::Tarball)?,
    })
}

/// Hashes the agent package of `kind` in `dir` (blocking).
pub fn describe(dir: &Path, kind: PackageKind) -> anyhow::Result<Option<AgentPackage>> {
    let Some((file, path)) = find_package_file(dir, kind)? else {
        return Ok(None);
    };
    let mut f =
        std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let size_bytes =
        std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(AgentPackage {
        path: format!("{URL_PREFIX}{file}"),
        file,
        sha256: hex::encode(h.finalize()),
        size_bytes,
    }))
}

/// What the installer line needs to say.
#[derive(Debug, Clone)]
pub struct LineParts<'a> {
    /// Host (name or IP) endpoints reach the appliance at.
    pub host: &'a str,
    pub cache_port: u16,
    pub quic_port: u16,
    pub package: &'a AgentPackage,
    pub token: &'a str,
    /// `sha256:HEX`.
    pub ca_fingerprint: &'a str,
}

/// Where the installed agent keeps its state (the unit's StateDirectory).
pub const AGENT_STATE_DIR: &str = "/var/lib/outpost-agent";

fn host_for_url(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The one line a technician pastes (as root) on an endpoint: download
/// (curl, else wget), `sha256sum -c` against the hash in the line, install
/// (`dpkg -i` the .deb, or unpack the tarball and run its `install.sh`),
/// enroll with the token and CA fingerprint in the line, start the unit.
/// Each step runs only if the previous one succeeded; a package whose hash
/// differs is deleted and nothing is installed.
pub fn line(p: &LineParts<'_>, kind: PackageKind) -> anyhow::Result<String> {
    // Everything interpolated is checked to be shell-inert, so the line
    // needs no quoting beyond what it has.
    let inert = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:[]".contains(c))
    };
    for (what, v) in [
        ("host", p.host),
        ("package file", p.package.file.as_str()),
        ("token", p.token),
        ("CA fingerprint", p.ca_fingerprint),
        ("package hash", p.package.sha256.as_str()),
    ] {
        if !inert(v) {
            bail!("the {what} {v:?} cannot go into a shell line");
        }
    }
    let host = host_for_url(p.host);
    let url = format!("http://{host}:{}{}", p.cache_port, p.package.path);
    let (install, agent) = match kind {
        PackageKind::Deb => ("dpkg -i \"$d/p\"", "outpost-agent"),
        // install.sh puts the binary in /usr/local/bin, which a root
        // shell's PATH may lack (sudo's secure_path): put it first.
        PackageKind::Tarball => (
            "tar -xzf \"$d/p\" -C \"$d\" && sh \"$d/outpost-agent/install.sh\"",
            "PATH=/usr/local/bin:$PATH outpost-agent",
        ),
    };
    Ok(format!(
        "d=$(mktemp -d) && {{ curl -fsS -o \"$d/p\" {url} || wget -q -O \"$d/p\" {url}; }} \
         && {{ echo \"{sha}  $d/p\" | sha256sum -c --quiet - || {{ rm -rf \"$d\"; false; }}; }} \
         && {install} && rm -rf \"$d\" \
         && {agent} enroll --appliance {host}:{quic} --token {token} \
         --ca-fingerprint {fp} --state {state} \
         && systemctl enable --now outpost-agent",
        sha = p.package.sha256,
        quic = p.quic_port,
        token = p.token,
        fp = p.ca_fingerprint,
        state = AGENT_STATE_DIR,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg() -> AgentPackage {
        AgentPackage {
            file: "outpost-agent_0.1.0-1_amd64.deb".into(),
            sha256: "ab".repeat(32),
            size_bytes: 3,
            path: "/outpost/agent/outpost-agent_0.1.0-1_amd64.deb".into(),
        }
    }

    #[test]
    fn the_line_carries_hash_token_and_fingerprint_and_checks_before_installing() {
        let p = pkg();
        let fp = format!("sha256:{}", "cd".repeat(32));
        let l = line(
            &LineParts {
                host: "10.0.0.5",
                cache_port: 3142,
                quic_port: 4433,
                package: &p,
                token: "opt_abc",
                ca_fingerprint: &fp,
            },
            PackageKind::Deb,
        )
        .unwrap();
        assert!(!l.contains('\n'));
        let verify = l.find("sha256sum -c").unwrap();
        let install = l.find("dpkg -i").unwrap();
        let enroll = l.find("outpost-agent enroll").unwrap();
        assert!(verify < install && install < enroll, "{l}");
        assert!(l.contains(&format!("echo \"{}  $d/p\"", p.sha256)));
        assert!(l.contains("http://10.0.0.5:3142/outpost/agent/outpost-agent_0.1.0-1_amd64.deb"));
        assert!(l.contains("--appliance 10.0.0.5:4433 --token opt_abc"));
        assert!(l.contains(&format!(
            "--ca-fingerprint {fp} --state /var/lib/outpost-agent"
        )));
        assert!(l.ends_with("systemctl enable --now outpost-agent"));
    }

    #[test]
    fn the_tarball_line_verifies_then_runs_install_sh() {
        let mut p = pkg();
        p.file = "outpost-agent_0.1.0-1_amd64.tar.gz".into();
        p.path = format!("{URL_PREFIX}{}", p.file);
        let fp = format!("sha256:{}", "cd".repeat(32));
        let l = line(
            &LineParts {
                host: "10.0.0.5",
                cache_port: 3142,
                quic_port: 4433,
                package: &p,
                token: "opt_abc",
                ca_fingerprint: &fp,
            },
            PackageKind::Tarball,
        )
        .unwrap();
        let verify = l.find("sha256sum -c").unwrap();
        let unpack = l.find("tar -xzf").unwrap();
        assert!(verify < unpack, "{l}");
        assert!(l.contains("install.sh") && !l.contains("dpkg"), "{l}");
        assert!(
            l.contains("PATH=/usr/local/bin:$PATH outpost-agent enroll"),
            "{l}"
        );
        assert_eq!(PackageKind::of_name(&p.file), Some(PackageKind::Tarball));
        assert_eq!(
            PackageKind::of_name("outpost-agent_1_amd64.deb"),
            Some(PackageKind::Deb)
        );
        assert_eq!(PackageKind::of_name("../outpost-agent_1_amd64.deb"), None);
        assert_eq!(PackageKind::of_name("other_1_amd64.deb"), None);
    }

    #[test]
    fn ipv6_hosts_are_bracketed_and_shell_metacharacters_are_refused() {
        let p = pkg();
        let fp = format!("sha256:{}", "cd".repeat(32));
        let mut parts = LineParts {
            host: "fd00::5",
            cache_port: 3142,
            quic_port: 4433,
            package: &p,
            token: "opt_abc",
            ca_fingerprint: &fp,
        };
        let deb = PackageKind::Deb;
        assert!(
            line(&parts, deb)
                .unwrap()
                .contains("http://[fd00::5]:3142/")
        );
        parts.host = "x;reboot";
        assert!(line(&parts, deb).is_err());
        parts.host = "h";
        parts.token = "$(id)";
        assert!(line(&parts, deb).is_err());
    }

    #[test]
    fn the_package_is_found_by_name_and_hashed() {
        let d = tempfile::tempdir().unwrap();
        let deb = PackageKind::Deb;
        assert_eq!(describe(d.path(), deb).unwrap(), None);
        std::fs::write(d.path().join("README"), "x").unwrap();
        std::fs::write(d.path().join("outpost-agent_0.1.0-1_amd64.deb"), "old").unwrap();
        std::fs::write(d.path().join("outpost-agent_0.2.0-1_amd64.deb"), "abc").unwrap();
        std::fs::write(d.path().join("outpost-agent_0.2.0-1_amd64.tar.gz"), "t").unwrap();
        let all = describe_all(d.path()).unwrap();
        assert_eq!(
            all.tarball.unwrap().file,
            "outpost-agent_0.2.0-1_amd64.tar.gz"
        );
        let p = describe(d.path(), deb).unwrap().unwrap();
        assert_eq!(p.file, "outpost-agent_0.2.0-1_amd64.deb");
        assert_eq!(p.size_bytes, 3);
        // sha256("abc")
        assert_eq!(
            p.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(p.path, "/outpost/agent/outpost-agent_0.2.0-1_amd64.deb");
        assert_eq!(describe(&d.path().join("missing"), deb).unwrap(), None);
    }
}
