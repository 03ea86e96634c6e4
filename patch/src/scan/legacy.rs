//! Package report format 1 (before download sizes): the shapes older
//! agents send and older appliances stored, and their conversion to the
//! current model (sizes unknown).
//!
//! Bincode encodes a struct as its fields in order, so a field added to
//! [`AptUpgrade`] changes the encoding of every value that holds one: a
//! report or a stored scan of the old shape must be decoded with these
//! types and converted. Owns only these frozen shapes; never change them.

use crate::scan::delta::{PackageKey, ScanDelta};
use crate::scan::model::{
    AptUpgrade, DpkgPackage, IndexState, PackageManager, Problems, RebootState, RpmPackage, Scan,
};
use crate::scan::os_release::OsInfo;
use crate::scan::report::PackageReport;
use crate::version::DebVersion;

/// [`AptUpgrade`] of format 1: no size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AptUpgradeV1 {
    pub name: String,
    pub arch: Option<String>,
    pub from: Option<DebVersion>,
    pub to: DebVersion,
    pub origins: Vec<String>,
    pub security: bool,
}

impl From<AptUpgradeV1> for AptUpgrade {
    fn from(u: AptUpgradeV1) -> AptUpgrade {
        AptUpgrade {
            name: u.name,
            arch: u.arch,
            from: u.from,
            to: u.to,
            origins: u.origins,
            security: u.security,
            size_bytes: None,
        }
    }
}

impl From<&AptUpgrade> for AptUpgradeV1 {
    fn from(u: &AptUpgrade) -> AptUpgradeV1 {
        AptUpgradeV1 {
            name: u.name.clone(),
            arch: u.arch.clone(),
            from: u.from.clone(),
            to: u.to.clone(),
            origins: u.origins.clone(),
            security: u.security,
        }
    }
}

/// [`Scan`] of format 1.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScanV1 {
    pub scanned_at_ms: u64,
    pub os: OsInfo,
    pub manager: PackageManager,
    pub dpkg: Vec<DpkgPackage>,
    pub rpm: Vec<RpmPackage>,
    pub upgrades: Vec<AptUpgradeV1>,
    pub indexes: IndexState,
    pub reboot: RebootState,
    pub problems: Problems,
}

impl From<ScanV1> for Scan {
    fn from(s: ScanV1) -> Scan {
        Scan {
            scanned_at_ms: s.scanned_at_ms,
            os: s.os,
            manager: s.manager,
            dpkg: s.dpkg,
            rpm: s.rpm,
            upgrades: s.upgrades.into_iter().map(AptUpgrade::from).collect(),
            indexes: s.indexes,
            reboot: s.reboot,
            problems: s.problems,
        }
    }
}

impl From<&Scan> for ScanV1 {
    /// The format-1 shape of a scan (sizes dropped): what an older agent
    /// sent; tests use it to prove old reports still decode.
    fn from(s: &Scan) -> ScanV1 {
        ScanV1 {
            scanned_at_ms: s.scanned_at_ms,
            os: s.os.clone(),
            manager: s.manager,
            dpkg: s.dpkg.clone(),
            rpm: s.rpm.clone(),
            upgrades: s.upgrades.iter().map(AptUpgradeV1::from).collect(),
            indexes: s.indexes.clone(),
            reboot: s.reboot.clone(),
            problems: s.problems.clone(),
        }
    }
}

/// [`ScanDelta`] of format 1.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScanDeltaV1 {
    pub base_digest: u64,
    pub result_digest: u64,
    pub scanned_at_ms: u64,
    pub os: Option<OsInfo>,
    pub manager: Option<PackageManager>,
    pub dpkg_upserts: Vec<DpkgPackage>,
    pub dpkg_removed: Vec<PackageKey>,
    pub rpm_added: Vec<RpmPackage>,
    pub rpm_removed: Vec<RpmPackage>,
    pub upgrades: Option<Vec<AptUpgradeV1>>,
    pub indexes: Option<IndexState>,
    pub reboot: Option<RebootState>,
    pub problems: Option<Problems>,
}

impl From<ScanDeltaV1> for ScanDelta {
    fn from(d: ScanDeltaV1) -> ScanDelta {
        ScanDelta {
            base_digest: d.base_digest,
            result_digest: d.result_digest,
            scanned_at_ms: d.scanned_at_ms,
            os: d.os,
            manager: d.manager,
            dpkg_upserts: d.dpkg_upserts,
            dpkg_removed: d.dpkg_removed,
            rpm_added: d.rpm_added,
            rpm_removed: d.rpm_removed,
            upgrades: d
                .upgrades
                .map(|u| u.into_iter().map(AptUpgrade::from).collect()),
            indexes: d.indexes,
            reboot: d.reboot,
            problems: d.problems,
        }
    }
}

impl From<&ScanDelta> for ScanDeltaV1 {
    fn from(d: &ScanDelta) -> ScanDeltaV1 {
        ScanDeltaV1 {
            base_digest: d.base_digest,
            result_digest: d.result_digest,
            scanned_at_ms: d.scanned_at_ms,
            os: d.os.clone(),
            manager: d.manager,
            dpkg_upserts: d.dpkg_upserts.clone(),
            dpkg_removed: d.dpkg_removed.clone(),
            rpm_added: d.rpm_added.clone(),
            rpm_removed: d.rpm_removed.clone(),
            upgrades: d
                .upgrades
                .as_ref()
                .map(|u| u.iter().map(AptUpgradeV1::from).collect()),
            indexes: d.indexes.clone(),
            reboot: d.reboot.clone(),
            problems: d.problems.clone(),
        }
    }
}

/// [`PackageReport`] of format 1.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PackageReportV1 {
    Full(Box<ScanV1>),
    Delta(Box<ScanDeltaV1>),
}

impl From<PackageReportV1> for PackageReport {
    fn from(r: PackageReportV1) -> PackageReport {
        match r {
            PackageReportV1::Full(s) => PackageReport::Full(Box::new(Scan::from(*s))),
            PackageReportV1::Delta(d) => PackageReport::Delta(Box::new(ScanDelta::from(*d))),
        }
    }
}

impl PackageReportV1 {
    /// The format-1 shape of a report (sizes dropped): what an older agent
    /// sent; tests use it to prove old reports still decode. `None` for a
    /// deferred scan, which format 1 cannot say.
    pub fn from_current(r: &PackageReport) -> Option<PackageReportV1> {
        match r {
            PackageReport::Full(s) => {
                Some(PackageReportV1::Full(Box::new(ScanV1::from(s.as_ref()))))
            }
            PackageReport::Delta(d) => Some(PackageReportV1::Delta(Box::new(ScanDeltaV1::from(
                d.as_ref(),
            )))),
            PackageReport::Deferred(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{parse_apt_simulation, parse_dpkg_query, parse_os_release};

    fn scan() -> Scan {
        let mut s = Scan::new_dpkg(
            7,
            parse_os_release("ID=debian\nVERSION_CODENAME=bookworm\n"),
        );
        s.dpkg = parse_dpkg_query("ii \tbash\tamd64\t5.2-1\tbash\t5.2-1\n").packages;
        s.upgrades = parse_apt_simulation(
            "Inst bash [5.2-1] (5.2-2 Debian-Security:12/stable-security [amd64])\n",
        )
        .upgrades;
        s.normalize();
        s
    }

    const FORMAT_1_DIGEST: u64 = 0xbf4b_a490_1195_1b2f;

    fn cfg() -> bincode::config::Configuration {
        bincode::config::standard()
    }

    /// Fails before format 2 was read through these shapes: the format-1
    /// bytes of an older agent do not decode as the current report.
    #[test]
    fn a_format_1_report_decodes_through_the_old_shape_with_sizes_unknown() {
        let s = scan();
        let old = PackageReportV1::from_current(&PackageReport::Full(Box::new(s.clone()))).unwrap();
        let bytes = bincode::serde::encode_to_vec(&old, cfg()).unwrap();
        assert!(
            bincode::serde::decode_from_slice::<PackageReport, _>(&bytes, cfg())
                .map(|(_, used)| used != bytes.len())
                .unwrap_or(true),
            "the old bytes are not the new shape"
        );
        let (back, _): (PackageReportV1, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg()).unwrap();
        let PackageReport::Full(got) = PackageReport::from(back) else {
            panic!("full")
        };
        assert_eq!(*got, s);
        assert_eq!(got.upgrades[0].size_bytes, None);
    }

    /// An older agent's digests (no sizes) equal this build's for a scan
    /// without sizes, so its deltas still apply; a size changes the digest.
    #[test]
    fn the_digest_of_a_scan_without_sizes_is_the_format_1_digest() {
        let s = scan();
        // Pinned: the digest format 1 gives this scan (the code path of a
        // scan without sizes is format 1's, unchanged; a change here breaks
        // every older agent's deltas).
        assert_eq!(s.digest(), FORMAT_1_DIGEST, "{:#x}", s.digest());
        let mut sized = s.clone();
        sized.upgrades[0].size_bytes = Some(1000);
        assert_ne!(sized.digest(), s.digest());
        let mut other = s.clone();
        other.upgrades[0].size_bytes = Some(1001);
        assert_ne!(sized.digest(), other.digest());
    }
}
