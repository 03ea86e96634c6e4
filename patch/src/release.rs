//! Distribution releases: which release a device runs (from its
//! os-release) and which release an advisory speaks of (tracker codenames,
//! OSV ecosystems such as `Debian:12` or `Ubuntu:22.04:LTS`), mapped to one
//! key, [`ReleaseKey`] = distribution + codename.
//!
//! The number → codename tables are the only place that needs extending
//! when Debian or Ubuntu publish a release. A release missing here makes a
//! device "unsupported release" (never silently compliant) and an OSV
//! record for it is skipped and counted by the import.

use std::fmt;

/// A distribution whose advisories Outpost can match.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Distro {
    Debian,
    Ubuntu,
}

impl Distro {
    pub fn as_str(self) -> &'static str {
        match self {
            Distro::Debian => "debian",
            Distro::Ubuntu => "ubuntu",
        }
    }
}

/// A release of a distribution, by codename (`debian/bookworm`,
/// `ubuntu/jammy`): the key the catalog is indexed by.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ReleaseKey {
    pub distro: Distro,
    pub codename: String,
}

impl ReleaseKey {
    pub fn new(distro: Distro, codename: &str) -> ReleaseKey {
        ReleaseKey {
            distro,
            codename: codename.to_ascii_lowercase(),
        }
    }

    pub fn debian(codename: &str) -> ReleaseKey {
        ReleaseKey::new(Distro::Debian, codename)
    }

    pub fn ubuntu(codename: &str) -> ReleaseKey {
        ReleaseKey::new(Distro::Ubuntu, codename)
    }

    /// Parses `debian/bookworm` (what [`fmt::Display`] prints).
    pub fn parse(s: &str) -> Option<ReleaseKey> {
        let (d, c) = s.split_once('/')?;
        let distro = match d {
            "debian" => Distro::Debian,
            "ubuntu" => Distro::Ubuntu,
            _ => return None,
        };
        (!c.is_empty()).then(|| ReleaseKey::new(distro, c))
    }
}

impl fmt::Display for ReleaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.distro.as_str(), self.codename)
    }
}

/// Debian major version → codename (distro-info-data's debian.csv).
const DEBIAN: &[(&str, &str)] = &[
    ("7", "wheezy"),
    ("8", "jessie"),
    ("9", "stretch"),
    ("10", "buster"),
    ("11", "bullseye"),
    ("12", "bookworm"),
    ("13", "trixie"),
    ("14", "forky"),
    ("15", "duke"),
];

/// Ubuntu `YY.MM` → codename (distro-info-data's ubuntu.csv).
const UBUNTU: &[(&str, &str)] = &[
    ("14.04", "trusty"),
    ("16.04", "xenial"),
    ("18.04", "bionic"),
    ("20.04", "focal"),
    ("20.10", "groovy"),
    ("21.04", "hirsute"),
    ("21.10", "impish"),
    ("22.04", "jammy"),
    ("22.10", "kinetic"),
    ("23.04", "lunar"),
    ("23.10", "mantic"),
    ("24.04", "noble"),
    ("24.10", "oracular"),
    ("25.04", "plucky"),
    ("25.10", "questing"),
];

/// `12` or `12.4` → `bookworm`.
pub fn debian_codename(version: &str) -> Option<&'static str> {
    let major = version.split('.').next().unwrap_or(version);
    DEBIAN.iter().find(|(v, _)| *v == major).map(|(_, c)| *c)
}

/// `22.04` or `22.04.3` → `jammy`.
pub fn ubuntu_codename(version: &str) -> Option<&'static str> {
    let mut parts = version.split('.');
    let yymm = match (parts.next(), parts.next()) {
        (Some(y), Some(m)) => format!("{y}.{m}"),
        _ => return None,
    };
    UBUNTU.iter().find(|(v, _)| *v == yymm).map(|(_, c)| *c)
}

/// True for codenames of the tables above (and Debian's `sid`).
pub fn is_known_codename(distro: Distro, codename: &str) -> bool {
    let table = match distro {
        Distro::Debian => {
            if codename == "sid" {
                return true;
            }
            DEBIAN
        }
        Distro::Ubuntu => UBUNTU,
    };
    table.iter().any(|(_, c)| *c == codename)
}

/// What an OSV `affected[].package.ecosystem` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OsvEcosystem {
    /// A Debian or Ubuntu release this build knows.
    Release(ReleaseKey),
    /// Ubuntu Pro (ESM) fixes: they need a subscription; not matched.
    UbuntuPro,
    /// Debian or Ubuntu without a release, or with a release missing from
    /// the tables.
    UnknownRelease(String),
    /// Any other ecosystem (npm, PyPI, Alpine…).
    Other,
}

/// Maps `Debian:12`, `Ubuntu:22.04:LTS`, `Ubuntu:24.10`,
/// `Ubuntu:Pro:18.04:LTS`.
pub fn osv_ecosystem(ecosystem: &str) -> OsvEcosystem {
    let mut parts = ecosystem.split(':');
    match parts.next() {
        Some("Debian") => match parts.next() {
            Some(v) => match debian_codename(v) {
                Some(c) if !v.is_empty() => OsvEcosystem::Release(ReleaseKey::debian(c)),
                _ => OsvEcosystem::UnknownRelease(ecosystem.to_string()),
            },
            None => OsvEcosystem::UnknownRelease(ecosystem.to_string()),
        },
        Some("Ubuntu") => match parts.next() {
            Some("Pro") => OsvEcosystem::UbuntuPro,
            Some(v) => match ubuntu_codename(v) {
                Some(c) => OsvEcosystem::Release(ReleaseKey::ubuntu(c)),
                None => OsvEcosystem::UnknownRelease(ecosystem.to_string()),
            },
            None => OsvEcosystem::UnknownRelease(ecosystem.to_string()),
        },
        _ => OsvEcosystem::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn osv_ecosystems_map_to_codenames() {
        assert_eq!(
            osv_ecosystem("Debian:12"),
            OsvEcosystem::Release(ReleaseKey::debian("bookworm"))
        );
        assert_eq!(
            osv_ecosystem("Ubuntu:22.04:LTS"),
            OsvEcosystem::Release(ReleaseKey::ubuntu("jammy"))
        );
        assert_eq!(
            osv_ecosystem("Ubuntu:24.10"),
            OsvEcosystem::Release(ReleaseKey::ubuntu("oracular"))
        );
        assert_eq!(
            osv_ecosystem("Ubuntu:Pro:18.04:LTS"),
            OsvEcosystem::UbuntuPro
        );
        assert!(matches!(
            osv_ecosystem("Debian:99"),
            OsvEcosystem::UnknownRelease(_)
        ));
        assert!(matches!(
            osv_ecosystem("Debian"),
            OsvEcosystem::UnknownRelease(_)
        ));
        assert_eq!(osv_ecosystem("npm"), OsvEcosystem::Other);
        assert_eq!(osv_ecosystem("Alpine:v3.19"), OsvEcosystem::Other);
    }

    #[test]
    fn release_keys_print_and_parse_back() {
        let k = ReleaseKey::debian("Bookworm");
        assert_eq!(k.to_string(), "debian/bookworm");
        assert_eq!(ReleaseKey::parse("debian/bookworm"), Some(k));
        assert_eq!(ReleaseKey::parse("arch/rolling"), None);
    }
}
