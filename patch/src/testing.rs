//! Synthetic catalogs and scans for benchmarks and examples (feature
//! `testing`). Deterministic for a given seed.
//!
//! The model: source package `i` is named `src-NNNNN` and has a base
//! version `B(i)` (`a.b.c-d`). In release `r` (with tag `debNN`) the tracker
//! fixes a CVE of package `i` at `B(i)+debNNuK` (K in 1..=5); a device runs
//! `B(i)+debNNuM` (M in 0..=5, `B(i)` when 0), so it is vulnerable when
//! M < K; some devices have an upgrade to a higher M. Statuses and
//! urgencies follow roughly the real tracker's mix (60 % resolved, 15 %
//! open, 5 % undetermined, 20 % never affected).

use std::io::{self, Write};

use crate::catalog::builder::{Builder, ImportOptions};
use crate::catalog::tracker::{ReleaseEntry, VulnEntry, add_entry};
use crate::catalog::{Catalog, FeedFormat};
use crate::scan::model::{AptUpgrade, DpkgPackage, PkgState, Scan};
use crate::scan::os_release::OsInfo;
use crate::version::DebVersion;

/// Release codenames and their version tags, in the order used.
pub const SYNTHETIC_RELEASES: [(&str, &str); 5] = [
    ("bookworm", "deb12"),
    ("bullseye", "deb11"),
    ("trixie", "deb13"),
    ("forky", "deb14"),
    ("buster", "deb10"),
];

/// splitmix64.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x05ee_d0f0_u64)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The name of synthetic source package `i`.
pub fn package_name(i: u32) -> String {
    format!("src-{i:05}")
}

/// The base version `B(i)` of synthetic package `i`.
pub fn base_version(i: u32) -> String {
    let h = Rng::new(u64::from(i)).next_u64();
    format!(
        "{}.{}.{}-{}",
        1 + h % 9,
        (h >> 8) % 20,
        (h >> 16) % 30,
        1 + (h >> 24) % 4
    )
}

/// `B(i)+debNNuK`, or `B(i)` for K = 0.
pub fn release_version(i: u32, release: usize, k: u64) -> String {
    let (_, tag) = SYNTHETIC_RELEASES[release % SYNTHETIC_RELEASES.len()];
    if k == 0 {
        base_version(i)
    } else {
        format!("{}+{tag}u{k}", base_version(i))
    }
}

/// One synthetic tracker entry: (package, CVE id, description, releases).
fn for_each_entry(
    cves: u32,
    packages: u32,
    releases: usize,
    seed: u64,
    extra: &dyn Fn(u32) -> bool,
    mut f: impl FnMut(u32, &str, String, Vec<(String, ReleaseEntry)>) -> io::Result<()>,
) -> io::Result<()> {
    let mut rng = Rng::new(seed);
    // Which packages each CVE touches (1 to 4, mostly 1), grouped by
    // package as the tracker is.
    let mut by_package: Vec<Vec<u32>> = vec![Vec::new(); packages.max(1) as usize];
    for cve in 0..cves {
        let n = match rng.below(100) {
            0..=49 => 1,
            50..=74 => 2,
            75..=89 => 3,
            _ => 4,
        };
        for _ in 0..n {
            let p = rng.below(u64::from(packages.max(1))) as usize;
            if by_package[p].last() != Some(&cve) {
                by_package[p].push(cve);
            }
        }
    }
    let words = [
        "buffer",
        "overflow",
        "in",
        "the",
        "parser",
        "allows",
        "remote",
        "attackers",
        "to",
        "cause",
        "a",
        "denial",
        "of",
        "service",
        "via",
        "crafted",
        "input",
        "use-after-free",
        "heap",
        "memory",
        "corruption",
        "when",
        "handling",
        "certificates",
        "integer",
        "out-of-bounds",
        "read",
        "write",
        "function",
    ];
    for (p, list) in by_package.iter().enumerate() {
        let p = p as u32;
        for &cve in list {
            let mut drng = Rng::new(u64::from(cve) ^ seed);
            let len = 22 + drng.below(36);
            let mut description = String::new();
            for w in 0..len {
                if w > 0 {
                    description.push(' ');
                }
                description.push_str(words[drng.below(words.len() as u64) as usize]);
            }
            let mut rel = Vec::new();
            for r in 0..releases {
                let (codename, _) = SYNTHETIC_RELEASES[r % SYNTHETIC_RELEASES.len()];
                let urgency = match rng.below(100) {
                    0..=19 => "unimportant",
                    20..=44 => "low",
                    45..=69 => "medium",
                    70..=79 => "high",
                    _ => "not yet assigned",
                };
                let entry = match rng.below(100) {
                    0..=59 => ReleaseEntry {
                        status: Some("resolved".into()),
                        fixed_version: Some(release_version(p, r, 1 + rng.below(5))),
                        urgency: Some(urgency.into()),
                        ..ReleaseEntry::default()
                    },
                    60..=74 => ReleaseEntry {
                        status: Some("open".into()),
                        urgency: Some(urgency.into()),
                        nodsa: rng.chance(30).then(|| "Minor issue".to_string()),
                        nodsa_reason: Some(String::new()),
                        ..ReleaseEntry::default()
                    },
                    75..=79 => ReleaseEntry {
                        status: Some("undetermined".into()),
                        urgency: Some("not yet assigned".into()),
                        ..ReleaseEntry::default()
                    },
                    _ => ReleaseEntry {
                        status: Some("resolved".into()),
                        fixed_version: Some("0".into()),
                        urgency: Some(urgency.into()),
                        ..ReleaseEntry::default()
                    },
                };
                rel.push((codename.to_string(), entry));
            }
            f(
                p,
                &format!("CVE-{}-{:05}", 2000 + cve % 26, cve),
                description,
                rel,
            )?;
        }
        if extra(p) {
            // A new high-urgency CVE fixed in every release: the update.
            let rel = (0..releases)
                .map(|r| {
                    let (codename, _) = SYNTHETIC_RELEASES[r % SYNTHETIC_RELEASES.len()];
                    let entry = ReleaseEntry {
                        status: Some("resolved".into()),
                        fixed_version: Some(release_version(p, r, 4)),
                        urgency: Some("high".into()),
                        ..ReleaseEntry::default()
                    };
                    (codename.to_string(), entry)
                })
                .collect();
            f(
                p,
                &format!("CVE-2099-{p:05}"),
                "A newly published flaw".to_string(),
                rel,
            )?;
        }
    }
    Ok(())
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Writes a synthetic Debian Security Tracker JSON document (streamed:
/// memory stays small whatever the size). Returns the bytes written.
/// `cves = 45_000, packages = 30_000, releases = 4` gives ~80 MB, the size
/// of the real tracker.
pub fn write_synthetic_tracker<W: Write>(
    mut w: W,
    cves: u32,
    packages: u32,
    releases: usize,
    seed: u64,
) -> io::Result<u64> {
    let mut written = 0u64;
    let mut out = |w: &mut W, s: &str| -> io::Result<()> {
        written += s.len() as u64;
        w.write_all(s.as_bytes())
    };
    out(&mut w, "{")?;
    let mut current: Option<u32> = None;
    for_each_entry(
        cves,
        packages,
        releases,
        seed,
        &|_| false,
        |p, cve, description, rel| {
            let mut s = String::new();
            match current {
                Some(c) if c == p => s.push(','),
                Some(_) => {
                    s.push_str("},");
                    s.push_str(&json_str(&package_name(p)));
                    s.push_str(":{");
                }
                None => {
                    s.push_str(&json_str(&package_name(p)));
                    s.push_str(":{");
                }
            }
            current = Some(p);
            s.push_str(&format!(
                "{}:{{\"description\":{},\"scope\":\"remote\",\"releases\":{{",
                json_str(cve),
                json_str(&description)
            ));
            for (i, (codename, r)) in rel.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!(
                    "{}:{{\"status\":{},\"repositories\":{{{}:{},{}:{}}}",
                    json_str(codename),
                    json_str(r.status.as_deref().unwrap_or("open")),
                    json_str(codename),
                    json_str(&base_version(p)),
                    json_str(&format!("{codename}-security")),
                    json_str(&release_version(p, 0, 1)),
                ));
                if let Some(f) = &r.fixed_version {
                    s.push_str(&format!(",\"fixed_version\":{}", json_str(f)));
                }
                if let Some(u) = &r.urgency {
                    s.push_str(&format!(",\"urgency\":{}", json_str(u)));
                }
                if let Some(n) = &r.nodsa {
                    s.push_str(&format!(",\"nodsa\":{},\"nodsa_reason\":\"\"", json_str(n)));
                }
                s.push('}');
            }
            s.push_str("}}");
            out(&mut w, &s)
        },
    )?;
    if current.is_some() {
        out(&mut w, "}")?;
    }
    out(&mut w, "}")?;
    w.flush()?;
    Ok(written)
}

/// A synthetic catalog (one `debian-tracker` source) with the same content
/// [`write_synthetic_tracker`] writes, built without JSON.
pub fn synthetic_catalog(cves: u32, packages: u32, releases: usize, seed: u64) -> Catalog {
    synthetic_catalog_update(cves, packages, releases, seed, 0)
}

/// The catalog of [`synthetic_catalog`] after an update that touches
/// `touched` source packages (spread over the name space): each gets a new
/// high-urgency CVE fixed in every release. Swapping its source in place
/// of the first one's gives a [`crate::catalog::ChangeSet`] of `touched`
/// packages per release.
pub fn synthetic_catalog_update(
    cves: u32,
    packages: u32,
    releases: usize,
    seed: u64,
    touched: u32,
) -> Catalog {
    let step = packages.checked_div(touched).map_or(u32::MAX, |s| s.max(1));
    let extra = move |p: u32| touched > 0 && p.is_multiple_of(step) && p / step < touched;
    let mut b = Builder::new(
        FeedFormat::DebianTracker,
        ImportOptions::new("debian-tracker", "synthetic", 0),
    );
    let result = for_each_entry(
        cves,
        packages,
        releases,
        seed,
        &extra,
        |p, cve, description, rel| {
            let entry = VulnEntry {
                description: Some(description),
                scope: Some("remote".into()),
                releases: rel,
            };
            add_entry(&mut b, &package_name(p), cve, entry).map_err(io::Error::other)
        },
    );
    // The default limits are far above what a benchmark asks for.
    debug_assert!(result.is_ok());
    Catalog::new().with_source(b.finish())
}

/// A synthetic device scan: `installed` distinct source packages drawn
/// from `0..packages` (each one binary package; every tenth named
/// `lib…` with its source apart), in release `release` (an index into
/// [`SYNTHETIC_RELEASES`]); about 5 % have an upgrade (70 % of those from
/// the security pocket).
pub fn synthetic_scan(packages: u32, installed: usize, release: usize, device_seed: u64) -> Scan {
    let mut rng = Rng::new(device_seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let (codename, tag) = SYNTHETIC_RELEASES[release % SYNTHETIC_RELEASES.len()];
    let os = OsInfo {
        id: "debian".into(),
        id_like: Vec::new(),
        version_id: Some(tag.trim_start_matches("deb").to_string()),
        codename: Some(codename.into()),
        ubuntu_codename: None,
        pretty_name: Some(format!("Debian GNU/Linux ({codename})")),
    };
    let mut scan = Scan::new_dpkg(0, os);
    let mut chosen = std::collections::BTreeSet::new();
    let want = installed.min(packages as usize);
    while chosen.len() < want {
        chosen.insert(rng.below(u64::from(packages)) as u32);
    }
    for p in chosen {
        let m = rng.below(6);
        let version_text = release_version(p, release, m);
        let Ok(version) = DebVersion::parse(&version_text) else {
            continue;
        };
        let lib = p % 10 == 0;
        let name = if lib {
            format!("lib{}", package_name(p))
        } else {
            package_name(p)
        };
        if rng.chance(5) {
            let to = release_version(p, release, m + 1 + rng.below(6 - m));
            if let Ok(to) = DebVersion::parse(&to) {
                let security = rng.chance(70);
                scan.upgrades.push(AptUpgrade {
                    name: name.clone(),
                    arch: Some("amd64".into()),
                    from: Some(version.clone()),
                    to,
                    origins: vec![if security {
                        format!("Debian-Security:12/{codename}-security")
                    } else {
                        format!("Debian:12.8/{codename}")
                    }],
                    security,
                    size_bytes: None,
                });
            }
        }
        scan.dpkg.push(DpkgPackage {
            name,
            arch: "amd64".into(),
            version,
            source: lib.then(|| package_name(p)),
            source_version: None,
            state: PkgState::Installed,
            held: false,
        });
    }
    scan.normalize();
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tracker::import_debian_tracker;

    #[test]
    fn the_written_tracker_imports_to_the_same_catalog_as_synthetic_catalog() {
        let mut json = Vec::new();
        let bytes = write_synthetic_tracker(&mut json, 300, 100, 3, 7).unwrap();
        assert_eq!(bytes as usize, json.len());
        let imported = import_debian_tracker(
            json.as_slice(),
            ImportOptions::new("debian-tracker", "x", 0),
        )
        .unwrap();
        let direct = synthetic_catalog(300, 100, 3, 7);
        let changes = Catalog::new().with_source(imported).changes_since(&direct);
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn an_update_touching_n_packages_changes_n_packages_per_release() {
        let old = synthetic_catalog(2000, 500, 2, 3);
        let new = old.with_source(
            synthetic_catalog_update(2000, 500, 2, 3, 10)
                .sources()
                .next()
                .unwrap()
                .clone(),
        );
        let changes = new.changes_since(&old);
        assert_eq!(changes.len(), 20, "{changes:?}");
    }

    #[test]
    fn reassessing_after_an_update_equals_a_full_assessment() {
        use crate::assess::{Policy, assess_device, reassess_device};
        let old = synthetic_catalog(3000, 400, 2, 9);
        let new = old.with_source(
            synthetic_catalog_update(3000, 400, 2, 9, 40)
                .sources()
                .next()
                .unwrap()
                .clone(),
        );
        let changes = new.changes_since(&old);
        let policy = Policy::default();
        for device in 0..20u64 {
            let scan = synthetic_scan(400, 120, (device % 2) as usize, device);
            let before = assess_device(&scan, &old, &policy, None, 1_000);
            let full = assess_device(&scan, &new, &policy, Some(&before), 2_000);
            let incremental = reassess_device(&before, &scan, &new, &changes, &policy, 2_000);
            assert_eq!(incremental, full, "device {device}");
        }
    }

    /// FNV-1a: a digest that does not depend on this crate's hasher.
    fn fnv(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// The assessments and fleet views of a generated fleet are exactly
    /// those of the implementation before the table hasher changed (the
    /// digest was computed with it): performance work on the catalog's
    /// tables must not change a result, nor an order.
    #[test]
    fn a_generated_fleet_assesses_exactly_as_before_the_hasher_change() {
        use crate::assess::fleet::{cve_list, fleet_summary, patch_list};
        use crate::assess::{Policy, assess_device, reassess_device};
        let old = synthetic_catalog(3000, 600, 3, 11);
        let new = old.with_source(
            synthetic_catalog_update(3000, 600, 3, 11, 40)
                .sources()
                .next()
                .unwrap()
                .clone(),
        );
        let changes = new.changes_since(&old);
        let policy = Policy::default();
        let mut assessments = Vec::new();
        let mut text = String::new();
        for device in 0..60u64 {
            let scan = synthetic_scan(600, 200, (device % 3) as usize, device);
            let a = assess_device(&scan, &old, &policy, None, 1_000);
            let again = reassess_device(&a, &scan, &new, &changes, &policy, 2_000);
            // In the shape of the time (download sizes came later; these
            // scans have none).
            let old_shape = |a: &crate::assess::DeviceAssessment| {
                assert!(a.patches.iter().all(|p| p.download_bytes.is_none()));
                serde_json::to_string(&crate::assess::legacy::DeviceAssessmentV1::from(a)).unwrap()
            };
            text.push_str(&old_shape(&a));
            text.push_str(&old_shape(&again));
            assessments.push(a);
        }
        text.push_str(&serde_json::to_string(&cve_list(assessments.iter())).unwrap());
        // Without the later `download` field of each patch.
        let mut patches = serde_json::to_string(&patch_list(assessments.iter())).unwrap();
        while let Some(at) = patches.find(",\"download\":{") {
            let end = at + patches[at..].find('}').unwrap() + 1;
            patches.replace_range(at..end, "");
        }
        text.push_str(&patches);
        text.push_str(&serde_json::to_string(&fleet_summary(assessments.iter())).unwrap());
        text.push_str(&format!("{:?}", changes));
        assert_eq!(
            (text.len(), fnv(text.as_bytes())),
            (19_398_207, 12_295_404_295_079_645_102)
        );
    }

    #[test]
    fn synthetic_scans_are_deterministic_and_sized() {
        let a = synthetic_scan(1000, 150, 0, 42);
        let b = synthetic_scan(1000, 150, 0, 42);
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.dpkg.len(), 150);
        assert_eq!(a.release().map(|r| r.codename), Some("bookworm".into()));
    }
}
