//! Scan deltas: what changed between the last scan the appliance
//! acknowledged and the new one, so that a daily scan of an unchanged
//! device sends a few bytes instead of 1,500 packages.
//!
//! A delta names the digest of the scan it applies to and of the result:
//! applied to anything else it is refused ([`DeltaError`]) and the
//! appliance asks for a full scan. Applying is atomic: on error the scan is
//! left as it was.

use std::collections::BTreeMap;

use crate::scan::model::{
    AptUpgrade, DpkgPackage, IndexState, PackageManager, Problems, RebootState, RpmPackage, Scan,
};
use crate::scan::os_release::OsInfo;

/// A dpkg package's identity within a scan.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct PackageKey {
    pub name: String,
    pub arch: String,
}

/// The difference between two scans of one device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScanDelta {
    /// [`Scan::digest`] of the scan this applies to.
    pub base_digest: u64,
    /// [`Scan::digest`] of the scan it produces.
    pub result_digest: u64,
    pub scanned_at_ms: u64,
    /// Replacements of whole fields, `None` when unchanged.
    pub os: Option<OsInfo>,
    pub manager: Option<PackageManager>,
    /// dpkg packages added or changed (sorted by name, arch).
    pub dpkg_upserts: Vec<DpkgPackage>,
    /// dpkg packages removed.
    pub dpkg_removed: Vec<PackageKey>,
    /// RPM packages added and removed (whole identities: an upgrade is a
    /// removal and an addition).
    pub rpm_added: Vec<RpmPackage>,
    pub rpm_removed: Vec<RpmPackage>,
    /// The upgrade list, replaced whole when any entry changed (it is
    /// short and changes together when apt's indexes move).
    pub upgrades: Option<Vec<AptUpgrade>>,
    pub indexes: Option<IndexState>,
    pub reboot: Option<RebootState>,
    pub problems: Option<Problems>,
}

/// Why a delta was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error(
        "delta applies to scan {expected:016x}, the stored scan is {actual:016x}: send a full scan"
    )]
    BaseMismatch { expected: u64, actual: u64 },
    #[error(
        "delta should produce scan {expected:016x} but produced {actual:016x}: send a full scan"
    )]
    ResultMismatch { expected: u64, actual: u64 },
}

impl ScanDelta {
    /// True when nothing but the scan time changed.
    pub fn is_empty(&self) -> bool {
        self.os.is_none()
            && self.manager.is_none()
            && self.dpkg_upserts.is_empty()
            && self.dpkg_removed.is_empty()
            && self.rpm_added.is_empty()
            && self.rpm_removed.is_empty()
            && self.upgrades.is_none()
            && self.indexes.is_none()
            && self.reboot.is_none()
            && self.problems.is_none()
    }

    /// Source packages whose installed versions changed (for re-assessing
    /// only what moved). Removed packages are named by binary name.
    pub fn changed_packages(&self) -> impl Iterator<Item = &str> {
        self.dpkg_upserts
            .iter()
            .map(|p| p.source_name())
            .chain(self.dpkg_removed.iter().map(|k| k.name.as_str()))
    }
}

fn key(p: &DpkgPackage) -> PackageKey {
    PackageKey {
        name: p.name.clone(),
        arch: p.arch.clone(),
    }
}

fn same_upgrades(a: &[AptUpgrade], b: &[AptUpgrade]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_as(y))
}

fn changed<T: PartialEq + Clone>(old: &T, new: &T) -> Option<T> {
    (old != new).then(|| new.clone())
}

impl Scan {
    /// The delta that turns `self` (the acknowledged scan) into `new`.
    /// Both must be normalized ([`Scan::normalize`]).
    pub fn diff(&self, new: &Scan) -> ScanDelta {
        let mut dpkg_upserts = Vec::new();
        let mut dpkg_removed = Vec::new();
        let old_by_key: BTreeMap<PackageKey, &DpkgPackage> =
            self.dpkg.iter().map(|p| (key(p), p)).collect();
        let new_by_key: BTreeMap<PackageKey, &DpkgPackage> =
            new.dpkg.iter().map(|p| (key(p), p)).collect();
        for (k, p) in &new_by_key {
            match old_by_key.get(k) {
                Some(old) if old.same_as(p) => {}
                _ => dpkg_upserts.push((*p).clone()),
            }
        }
        for k in old_by_key.keys() {
            if !new_by_key.contains_key(k) {
                dpkg_removed.push(k.clone());
            }
        }
        let rpm_added = new
            .rpm
            .iter()
            .filter(|p| !self.rpm.contains(p))
            .cloned()
            .collect();
        let rpm_removed = self
            .rpm
            .iter()
            .filter(|p| !new.rpm.contains(p))
            .cloned()
            .collect();
        ScanDelta {
            base_digest: self.digest(),
            result_digest: new.digest(),
            scanned_at_ms: new.scanned_at_ms,
            os: changed(&self.os, &new.os),
            manager: changed(&self.manager, &new.manager),
            dpkg_upserts,
            dpkg_removed,
            rpm_added,
            rpm_removed,
            upgrades: (!same_upgrades(&self.upgrades, &new.upgrades)).then(|| new.upgrades.clone()),
            indexes: changed(&self.indexes, &new.indexes),
            reboot: changed(&self.reboot, &new.reboot),
            problems: changed(&self.problems, &new.problems),
        }
    }

    /// Applies a delta made against this scan. On error `self` is
    /// unchanged.
    pub fn apply(&mut self, delta: &ScanDelta) -> Result<(), DeltaError> {
        let actual = self.digest();
        if actual != delta.base_digest {
            return Err(DeltaError::BaseMismatch {
                expected: delta.base_digest,
                actual,
            });
        }
        let mut next = self.clone();
        next.scanned_at_ms = delta.scanned_at_ms;
        if let Some(os) = &delta.os {
            next.os = os.clone();
        }
        if let Some(m) = delta.manager {
            next.manager = m;
        }
        if !delta.dpkg_upserts.is_empty() || !delta.dpkg_removed.is_empty() {
            let mut by_key: BTreeMap<PackageKey, DpkgPackage> = std::mem::take(&mut next.dpkg)
                .into_iter()
                .map(|p| (key(&p), p))
                .collect();
            for k in &delta.dpkg_removed {
                by_key.remove(k);
            }
            for p in &delta.dpkg_upserts {
                by_key.insert(key(p), p.clone());
            }
            next.dpkg = by_key.into_values().collect();
        }
        if !delta.rpm_added.is_empty() || !delta.rpm_removed.is_empty() {
            next.rpm.retain(|p| !delta.rpm_removed.contains(p));
            next.rpm.extend(delta.rpm_added.iter().cloned());
        }
        if let Some(u) = &delta.upgrades {
            next.upgrades = u.clone();
        }
        if let Some(i) = &delta.indexes {
            next.indexes = i.clone();
        }
        if let Some(r) = &delta.reboot {
            next.reboot = r.clone();
        }
        if let Some(p) = &delta.problems {
            next.problems = p.clone();
        }
        next.normalize();
        let produced = next.digest();
        if produced != delta.result_digest {
            return Err(DeltaError::ResultMismatch {
                expected: delta.result_digest,
                actual: produced,
            });
        }
        *self = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::dpkg_query::parse_dpkg_query;
    use crate::scan::model::PkgState;
    use crate::scan::os_release::parse_os_release;
    use crate::version::DebVersion;

    fn scan(lines: &str, at: u64) -> Scan {
        let mut s = Scan::new_dpkg(
            at,
            parse_os_release("ID=debian\nVERSION_CODENAME=bookworm\n"),
        );
        s.dpkg = parse_dpkg_query(lines).packages;
        s.normalize();
        s
    }

    const OLD: &str = "ii \ta\tamd64\t1.0-1\ta\t1.0-1\nii \tb\tamd64\t2.0-1\tbsrc\t2.0-1\nii \tc\tall\t3.0\tc\t3.0\n";
    const NEW: &str =
        "ii \ta\tamd64\t1.0-2\ta\t1.0-2\nii \tc\tall\t3.0\tc\t3.0\nii \td\tamd64\t4.0\td\t4.0\n";

    #[test]
    fn applying_the_diff_to_the_old_scan_gives_the_new_scan() {
        let old = scan(OLD, 1);
        let mut new = scan(NEW, 2);
        new.upgrades.push(AptUpgrade {
            name: "c".into(),
            arch: Some("all".into()),
            from: Some(DebVersion::parse("3.0").unwrap()),
            to: DebVersion::parse("3.1").unwrap(),
            origins: vec!["Debian-Security:12/stable-security".into()],
            security: true,
            size_bytes: Some(1234),
        });
        new.reboot.required = true;
        let delta = old.diff(&new);
        assert_eq!(delta.dpkg_upserts.len(), 2, "a changed, d added");
        assert_eq!(
            delta.dpkg_removed,
            vec![PackageKey {
                name: "b".into(),
                arch: "amd64".into()
            }]
        );
        assert!(delta.upgrades.is_some() && delta.reboot.is_some() && delta.os.is_none());
        let mut applied = old.clone();
        applied.apply(&delta).unwrap();
        assert_eq!(applied.digest(), new.digest());
        assert_eq!(
            serde_json::to_value(&applied).unwrap(),
            serde_json::to_value(&new).unwrap()
        );
    }

    #[test]
    fn an_unchanged_device_sends_an_empty_delta() {
        let old = scan(OLD, 1);
        let again = scan(OLD, 99);
        let delta = old.diff(&again);
        assert!(delta.is_empty());
        let mut applied = old.clone();
        applied.apply(&delta).unwrap();
        assert_eq!(applied.scanned_at_ms, 99);
    }

    #[test]
    fn a_delta_against_another_base_is_refused_and_the_scan_is_unchanged() {
        let old = scan(OLD, 1);
        let new = scan(NEW, 2);
        let delta = old.diff(&new);
        let mut other = scan(NEW, 5);
        let before = other.clone();
        let err = other.apply(&delta).unwrap_err();
        assert!(matches!(err, DeltaError::BaseMismatch { .. }), "{err}");
        assert_eq!(other, before);
    }

    #[test]
    fn a_tampered_delta_is_refused_by_the_result_digest() {
        let old = scan(OLD, 1);
        let new = scan(NEW, 2);
        let mut delta = old.diff(&new);
        delta.dpkg_removed.clear();
        let mut applied = old.clone();
        let err = applied.apply(&delta).unwrap_err();
        assert!(matches!(err, DeltaError::ResultMismatch { .. }), "{err}");
        assert_eq!(applied, old);
    }

    #[test]
    fn a_textual_version_change_that_dpkg_calls_equal_is_still_sent() {
        let old = scan("ii \ta\tamd64\t1.0\ta\t1.0\n", 1);
        let new = scan("ii \ta\tamd64\t1.00\ta\t1.00\n", 2);
        let delta = old.diff(&new);
        assert_eq!(delta.dpkg_upserts.len(), 1);
        assert_eq!(delta.dpkg_upserts[0].state, PkgState::Installed);
    }

    #[test]
    fn the_delta_round_trips_through_json() {
        let delta = scan(OLD, 1).diff(&scan(NEW, 2));
        let text = serde_json::to_string(&delta).unwrap();
        let back: ScanDelta = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }
}
