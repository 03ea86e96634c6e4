//! Building one [`SourceCatalog`] while a feed streams in: vulnerabilities
//! are interned by id, advisories appended per (release, package), limits
//! enforced, statistics counted. Shared by both importers.

use std::collections::{BTreeSet, HashMap};

use super::{
    Advisory, Affected, FeedFormat, ImportError, ImportStats, PackageAdvisories, RangeEvent,
    ReleaseData, Scope, SourceCatalog, SourceInfo, Vuln, VulnId,
};
use crate::release::ReleaseKey;
use crate::scan::model::Fnv;
use crate::smallstr::{FxBuild, SmallStr};

/// How to import a feed.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The source's name in the catalog (importing the same name again
    /// replaces it).
    pub name: String,
    /// File or URL, for `outpost advisories status`.
    pub location: String,
    /// The caller's clock (Unix ms).
    pub imported_at_ms: u64,
    /// Keep only these releases (`None`: all). A site that runs only
    /// bookworm keeps a quarter of the tracker.
    pub releases: Option<BTreeSet<ReleaseKey>>,
    /// Longer descriptions are cut (counted): bounds memory.
    pub max_description_bytes: usize,
    /// More advisories than this refuse the feed: bounds memory against a
    /// runaway or hostile feed. The real tracker has ~1M over all releases.
    pub max_advisories: u64,
}

impl ImportOptions {
    pub fn new(name: &str, location: &str, imported_at_ms: u64) -> ImportOptions {
        ImportOptions {
            name: name.to_string(),
            location: location.to_string(),
            imported_at_ms,
            releases: None,
            max_description_bytes: 2048,
            max_advisories: 5_000_000,
        }
    }
}

/// Advisories of one release being built, by source package.
type ReleaseBuild = (ReleaseKey, HashMap<SmallStr, Vec<Advisory>, FxBuild>);

pub(crate) struct Builder {
    format: FeedFormat,
    options: ImportOptions,
    pub(crate) stats: ImportStats,
    vulns: Vec<Vuln>,
    vuln_index: HashMap<SmallStr, VulnId, FxBuild>,
    releases: Vec<ReleaseBuild>,
}

impl Builder {
    pub(crate) fn new(format: FeedFormat, options: ImportOptions) -> Builder {
        Builder {
            format,
            options,
            stats: ImportStats::default(),
            vulns: Vec::new(),
            vuln_index: HashMap::default(),
            releases: Vec::new(),
        }
    }

    /// Whether advisories of this release are kept (counts the others).
    pub(crate) fn wants(&mut self, release: &ReleaseKey) -> bool {
        let keep = self
            .options
            .releases
            .as_ref()
            .is_none_or(|r| r.contains(release));
        if !keep {
            self.stats.filtered_out += 1;
        }
        keep
    }

    fn cut(&mut self, text: Option<String>) -> Option<Box<str>> {
        let mut text = text?;
        let max = self.options.max_description_bytes;
        if text.len() > max {
            let mut end = max;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            self.stats.truncated_descriptions += 1;
        }
        Some(text.into_boxed_str())
    }

    /// Interns a vulnerability by id; the first description and scope seen
    /// win, CVEs are merged, the highest CVSS is kept.
    pub(crate) fn vuln(
        &mut self,
        id: &str,
        cves: Vec<String>,
        description: Option<String>,
        scope: Option<Scope>,
        cvss: Option<f32>,
    ) -> VulnId {
        if let Some(&existing) = self.vuln_index.get(id.as_bytes()) {
            let description = match self.vulns[existing as usize].description.is_none() {
                true => self.cut(description),
                false => None,
            };
            let v = &mut self.vulns[existing as usize];
            if description.is_some() {
                v.description = description;
            }
            if v.scope.is_none() {
                v.scope = scope;
            }
            if let Some(c) = cvss {
                v.cvss = Some(v.cvss.map_or(c, |old| old.max(c)));
            }
            if cves.iter().any(|c| !v.cves.iter().any(|o| **o == **c)) {
                let mut all: Vec<SmallStr> = v.cves.to_vec();
                for c in cves {
                    if !all.iter().any(|o| **o == *c) {
                        all.push(c.into());
                    }
                }
                v.cves = all.into_boxed_slice();
            }
            return existing;
        }
        let id_arc = SmallStr::new(id);
        let vuln = Vuln {
            id: id_arc.clone(),
            cves: cves.into_iter().map(SmallStr::from).collect(),
            description: self.cut(description),
            scope,
            cvss,
        };
        let index = self.vulns.len() as VulnId;
        self.vulns.push(vuln);
        self.vuln_index.insert(id_arc, index);
        index
    }

    pub(crate) fn add(
        &mut self,
        release: &ReleaseKey,
        package: &str,
        advisory: Advisory,
    ) -> Result<(), ImportError> {
        if self.stats.advisories >= self.options.max_advisories {
            return Err(ImportError::TooLarge {
                format: self.format,
                limit: self.options.max_advisories,
            });
        }
        let slot = match self.releases.iter().position(|(k, _)| k == release) {
            Some(i) => i,
            None => {
                self.releases.push((release.clone(), HashMap::default()));
                self.releases.len() - 1
            }
        };
        let packages = &mut self.releases[slot].1;
        match packages.get_mut(package.as_bytes()) {
            Some(list) => list.push(advisory),
            None => {
                packages.insert(package.into(), vec![advisory]);
            }
        }
        self.stats.advisories += 1;
        *self
            .stats
            .per_release
            .entry(release.to_string())
            .or_default() += 1;
        Ok(())
    }

    pub(crate) fn finish(mut self) -> SourceCatalog {
        self.stats.vulns = self.vulns.len() as u64;
        let mut cve_index: HashMap<SmallStr, Vec<VulnId>, FxBuild> = HashMap::default();
        for (i, v) in self.vulns.iter().enumerate() {
            for key in v.cves.iter().chain(std::iter::once(&v.id)) {
                let ids = cve_index.entry(key.clone()).or_default();
                if !ids.contains(&(i as VulnId)) {
                    ids.push(i as VulnId);
                }
            }
        }
        let vulns = self.vulns;
        let releases = self
            .releases
            .into_iter()
            .map(|(key, packages)| ReleaseData {
                key,
                packages: packages
                    .into_iter()
                    .map(|(name, mut advisories)| {
                        advisories.shrink_to_fit();
                        for a in &mut advisories {
                            if let Some(v) = vulns.get(a.vuln as usize) {
                                let mut keys = v.keys();
                                if let Some(first) = keys.next() {
                                    a.key = first.clone();
                                }
                                a.single_key = keys.next().is_none() && a.key == v.id;
                            }
                        }
                        let fingerprint = fingerprint(&vulns, &advisories);
                        (
                            name,
                            PackageAdvisories {
                                advisories,
                                fingerprint,
                            },
                        )
                    })
                    .collect(),
            })
            .collect();
        SourceCatalog {
            info: SourceInfo {
                name: self.options.name,
                format: self.format,
                location: self.options.location,
                imported_at_ms: self.options.imported_at_ms,
                stats: self.stats,
            },
            vulns,
            cve_index,
            releases,
        }
    }
}

/// A content hash of a package's advisories that does not depend on
/// import order or vuln indexes: equal in two catalogs when an assessment
/// would not change.
fn fingerprint(vulns: &[Vuln], advisories: &[Advisory]) -> u64 {
    let mut lines: Vec<String> = advisories
        .iter()
        .map(|a| {
            let v = vulns.get(a.vuln as usize);
            let mut line = format!(
                "{}|{}|{:?}|{}|{}|{}",
                v.map_or("", |v| &v.id),
                v.map(|v| v
                    .cves
                    .iter()
                    .map(SmallStr::as_str)
                    .collect::<Vec<_>>()
                    .join(","))
                    .unwrap_or_default(),
                v.and_then(|v| v.cvss),
                a.severity,
                a.end_of_life,
                a.no_dsa.as_ref().map_or(String::new(), |n| format!(
                    "{}/{}/{}",
                    n.note, n.reason, n.next_point_update
                )),
            );
            match &a.affected {
                Affected::Before(f) => line.push_str(&format!("|<{f}")),
                Affected::All => line.push_str("|all"),
                Affected::Undetermined => line.push_str("|?"),
                Affected::Ranges(r) => {
                    for range in &r.ranges {
                        line.push('|');
                        for e in range {
                            match e {
                                RangeEvent::Introduced(v) => line.push_str(&format!("i{v:?}")),
                                RangeEvent::Fixed(v) => line.push_str(&format!("f{v}")),
                                RangeEvent::LastAffected(v) => line.push_str(&format!("l{v}")),
                                RangeEvent::Limit(v) => line.push_str(&format!("m{v:?}")),
                            }
                        }
                    }
                    for v in &r.versions {
                        line.push_str(&format!("|v{v}"));
                    }
                }
            }
            line
        })
        .collect();
    lines.sort();
    let mut h = Fnv::new();
    for l in &lines {
        h.write(l.as_bytes());
        h.write(b"\n");
    }
    h.finish()
}
