//! `/etc/os-release` (os-release(5)): shell-style `KEY=value` lines, and
//! the release the device runs.
//!
//! Lenient like systemd: a line it cannot read is skipped, never fatal.

use crate::release::{Distro, ReleaseKey, debian_codename, ubuntu_codename};

/// The fields of os-release that assessment and reports use.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OsInfo {
    /// `ID` (`debian`, `ubuntu`, `rhel`…), lowercase.
    pub id: String,
    /// `ID_LIKE`, space-separated in the file.
    pub id_like: Vec<String>,
    /// `VERSION_ID` (`12`, `22.04`); missing on Debian testing/unstable.
    pub version_id: Option<String>,
    /// `VERSION_CODENAME` (or `UBUNTU_CODENAME`, or the codename in
    /// `VERSION="12 (bookworm)"`).
    pub codename: Option<String>,
    /// `UBUNTU_CODENAME` of Ubuntu derivatives (Mint, Pop!_OS…).
    pub ubuntu_codename: Option<String>,
    pub pretty_name: Option<String>,
}

/// Reads os-release text.
pub fn parse_os_release(text: &str) -> OsInfo {
    let mut info = OsInfo::default();
    let mut version = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let Some(value) = unquote(raw) else {
            continue;
        };
        match key.trim() {
            "ID" => info.id = value.to_ascii_lowercase(),
            "ID_LIKE" => {
                info.id_like = value
                    .split_whitespace()
                    .map(str::to_ascii_lowercase)
                    .collect()
            }
            "VERSION_ID" => info.version_id = Some(value),
            "VERSION_CODENAME" if !value.is_empty() => {
                info.codename = Some(value.to_ascii_lowercase())
            }
            "UBUNTU_CODENAME" if !value.is_empty() => {
                info.ubuntu_codename = Some(value.to_ascii_lowercase())
            }
            "PRETTY_NAME" => info.pretty_name = Some(value),
            "VERSION" => version = Some(value),
            _ => {}
        }
    }
    if info.codename.is_none() {
        info.codename = info.ubuntu_codename.clone().or_else(|| {
            // VERSION="12 (bookworm)" or VERSION="18.04.6 LTS (Bionic Beaver)".
            let v = version?;
            let inner = v.split_once('(')?.1.split_once(')')?.0;
            let word = inner.split_whitespace().next()?;
            Some(word.to_ascii_lowercase())
        });
    }
    info
}

/// A shell word: `"double"` (with `\"`, `\\`, `\$`, `` \` `` escapes),
/// `'single'`, or bare (with backslash escapes). `None` when malformed.
fn unquote(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let mut out = String::new();
    let mut chars = raw.chars();
    match raw.chars().next() {
        Some('"') => {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => {
                        let c = chars.next()?;
                        if !matches!(c, '"' | '\\' | '$' | '`') {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
        }
        Some('\'') => {
            chars.next();
            loop {
                match chars.next()? {
                    '\'' => break,
                    c => out.push(c),
                }
            }
        }
        _ => {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?),
                    c if c.is_whitespace() => return None,
                    c => out.push(c),
                }
            }
            return Some(out);
        }
    }
    // Nothing but blanks may follow the closing quote.
    chars.as_str().trim().is_empty().then_some(out)
}

impl OsInfo {
    /// The release whose advisories apply to this device, or `None` when
    /// it is not a Debian or Ubuntu system Outpost can assess (the device
    /// is then "unsupported release").
    pub fn release(&self) -> Option<ReleaseKey> {
        let is = |id: &str| self.id == id;
        let like = |id: &str| self.id_like.iter().any(|l| l == id);
        if is("ubuntu") || (like("ubuntu") && self.ubuntu_codename.is_some()) {
            let codename = self
                .ubuntu_codename
                .clone()
                .or_else(|| self.codename.clone())
                .or_else(|| ubuntu_codename(self.version_id.as_deref()?).map(str::to_string))?;
            return Some(ReleaseKey::new(Distro::Ubuntu, &codename));
        }
        if is("debian") || is("raspbian") {
            let codename = self
                .codename
                .clone()
                .or_else(|| debian_codename(self.version_id.as_deref()?).map(str::to_string))?;
            return Some(ReleaseKey::new(Distro::Debian, &codename));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_os_release_gives_its_codename() {
        let info = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n",
        );
        assert_eq!(info.id, "debian");
        assert_eq!(info.version_id.as_deref(), Some("12"));
        assert_eq!(
            info.pretty_name.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(info.release(), Some(ReleaseKey::debian("bookworm")));
    }

    #[test]
    fn ubuntu_and_its_derivatives_use_the_ubuntu_codename() {
        let ubuntu = parse_os_release(
            "ID=ubuntu\nVERSION_ID=\"22.04\"\nVERSION_CODENAME=jammy\nUBUNTU_CODENAME=jammy\n",
        );
        assert_eq!(ubuntu.release(), Some(ReleaseKey::ubuntu("jammy")));
        let mint = parse_os_release(
            "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\nVERSION_CODENAME=virginia\nUBUNTU_CODENAME=jammy\n",
        );
        assert_eq!(mint.release(), Some(ReleaseKey::ubuntu("jammy")));
    }

    #[test]
    fn a_missing_codename_is_taken_from_version_or_the_version_table() {
        let old = parse_os_release("ID=debian\nVERSION_ID=\"9\"\nVERSION=\"9 (stretch)\"\n");
        assert_eq!(old.release(), Some(ReleaseKey::debian("stretch")));
        let bare = parse_os_release("ID=debian\nVERSION_ID=11\n");
        assert_eq!(bare.release(), Some(ReleaseKey::debian("bullseye")));
        let bionic = parse_os_release(
            "ID=ubuntu\nVERSION=\"18.04.6 LTS (Bionic Beaver)\"\nVERSION_ID=\"18.04\"\n",
        );
        assert_eq!(bionic.release(), Some(ReleaseKey::ubuntu("bionic")));
    }

    #[test]
    fn other_systems_have_no_assessable_release() {
        let rhel = parse_os_release("ID=\"rhel\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"9.3\"\n");
        assert_eq!(rhel.release(), None);
        let kali = parse_os_release("ID=kali\nID_LIKE=debian\nVERSION_CODENAME=kali-rolling\n");
        assert_eq!(kali.release(), None);
        assert_eq!(parse_os_release("").release(), None);
    }

    #[test]
    fn quoting_escapes_and_bad_lines_are_handled_like_a_shell() {
        let info = parse_os_release(
            "# comment\nPRETTY_NAME='Single \"quoted\"'\nID=\"deb\\\"ian\"\nbroken line\nVERSION_ID=\"unterminated\nVERSION_CODENAME=a\\ b\n",
        );
        assert_eq!(info.pretty_name.as_deref(), Some("Single \"quoted\""));
        assert_eq!(info.id, "deb\"ian");
        assert_eq!(info.version_id, None);
        assert_eq!(info.codename.as_deref(), Some("a b"));
    }
}
