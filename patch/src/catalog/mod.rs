//! Vulnerability catalogs: advisories indexed by (release, source package),
//! imported from the Debian Security Tracker JSON ([`tracker`]) and OSV
//! records ([`osv`]).
//!
//! A [`Catalog`] is an immutable value made of imported sources
//! ([`SourceCatalog`], one per feed). Importing builds a new source value
//! or fails with the position and reason; the caller swaps it in with
//! [`Catalog::with_source`], so the previous catalog stays in service
//! until the new one is complete. [`Catalog::changes_since`] tells which
//! (release, source package) pairs differ between two catalogs, for
//! re-assessing only the devices they touch.
//!
//! Owns no I/O beyond reading the `Read` it is given.

pub(crate) mod builder;
pub mod cvss;
pub mod osv;
pub mod tracker;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::release::ReleaseKey;
use crate::severity::Severity;
use crate::smallstr::{FxBuild, SmallStr};
use crate::version::DebVersion;

pub use builder::ImportOptions;

/// Index of a [`Vuln`] within its source.
pub type VulnId = u32;

/// Which feed format a source was imported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeedFormat {
    /// `https://security-tracker.debian.org/tracker/data/json`.
    DebianTracker,
    /// OSV records (`https://osv-vulnerabilities.storage.googleapis.com/Debian/all.zip`
    /// and `…/Ubuntu/all.zip`, unpacked), one record, an array of records,
    /// or one record per line.
    Osv,
}

impl FeedFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedFormat::DebianTracker => "debian-tracker",
            FeedFormat::Osv => "osv",
        }
    }

    pub fn parse(s: &str) -> Option<FeedFormat> {
        match s {
            "debian-tracker" => Some(FeedFormat::DebianTracker),
            "osv" => Some(FeedFormat::Osv),
            _ => None,
        }
    }
}

impl fmt::Display for FeedFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in a feed an import stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// 1-based line and column of the JSON text (0 when not known).
    pub line: usize,
    pub column: usize,
    /// JSON path of the value being read (`$["openssl"]["CVE-2024-1"]…`,
    /// `record 17 (DSA-5555-1): affected[0].ranges[1].events[2]`).
    pub path: String,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}, column {}", self.line, self.column)?;
            if !self.path.is_empty() {
                write!(f, " ({})", self.path)?;
            }
            Ok(())
        } else {
            f.write_str(&self.path)
        }
    }
}

/// Why an import was refused. The catalog in service is untouched.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{format} feed refused at {position}: {reason}")]
    Malformed {
        format: FeedFormat,
        position: Position,
        reason: String,
    },
    #[error("reading the {format} feed: {source}")]
    Io {
        format: FeedFormat,
        #[source]
        source: std::io::Error,
    },
    #[error("{format} feed refused: more than {limit} advisories (ImportOptions::max_advisories)")]
    TooLarge { format: FeedFormat, limit: u64 },
}

/// What an import read, kept with the source for `outpost advisories status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportStats {
    /// Tracker: source packages; OSV: records read.
    pub entries: u64,
    /// Distinct vulnerabilities (CVE/TEMP ids, OSV record ids).
    pub vulns: u64,
    /// (release, package, vulnerability) advisories kept.
    pub advisories: u64,
    /// Advisories kept per release (`debian/bookworm`).
    pub per_release: BTreeMap<String, u64>,
    /// Tracker `resolved` with fixed version `0`: never affected, dropped.
    pub not_affected: u64,
    /// Releases left out by [`ImportOptions::releases`].
    pub filtered_out: u64,
    /// Advisories skipped: unparsable version, unusable range.
    pub skipped: u64,
    /// Urgencies/priorities this build does not know (kept as `unknown`).
    pub unknown_urgency: u64,
    /// OSV: affected entries of other ecosystems, of releases this build
    /// does not know, or of Ubuntu Pro; withdrawn records.
    pub other_ecosystems: u64,
    pub unknown_releases: u64,
    pub ubuntu_pro: u64,
    pub withdrawn: u64,
    /// Descriptions cut to [`ImportOptions::max_description_bytes`].
    pub truncated_descriptions: u64,
    /// The first warnings, with their position.
    pub warnings: Vec<String>,
}

impl ImportStats {
    pub const KEPT_WARNINGS: usize = 20;

    pub(crate) fn warn(&mut self, w: String) {
        if self.warnings.len() < Self::KEPT_WARNINGS {
            self.warnings.push(w);
        }
    }
}

/// One imported feed's identity and statistics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceInfo {
    /// Unique within a catalog (`debian-tracker`, `osv-ubuntu`…); importing
    /// a source of the same name replaces it.
    pub name: String,
    pub format: FeedFormat,
    /// File or URL it came from (informational).
    pub location: String,
    pub imported_at_ms: u64,
    pub stats: ImportStats,
}

/// Remote or local attack vector, as the tracker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Remote,
    Local,
}

/// A vulnerability as a source describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Vuln {
    /// `CVE-2024-1234`, `TEMP-0000000-ABCDEF`, `DSA-5555-1`,
    /// `DEBIAN-CVE-2024-1234`, `UBUNTU-CVE-2024-1234`, `USN-6000-1`.
    pub id: SmallStr,
    /// The CVE ids it covers (the id itself for a tracker CVE; aliases,
    /// `upstream` and `related` CVEs for OSV). Empty for `TEMP-` ids.
    pub cves: Box<[SmallStr]>,
    pub description: Option<Box<str>>,
    pub scope: Option<Scope>,
    /// Highest CVSS base score the source gives (v3, else v2).
    pub cvss: Option<f32>,
}

impl Vuln {
    /// The ids a device finding is keyed by: the CVEs, or the vuln's own
    /// id when it has none.
    pub fn keys(&self) -> impl Iterator<Item = &SmallStr> {
        let own = if self.cves.is_empty() {
            Some(&self.id)
        } else {
            None
        };
        self.cves.iter().chain(own)
    }
}

/// Why a Debian release carries an open issue without a DSA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoDsa {
    /// `Minor issue`, `Will be fixed via point release`…
    pub note: Box<str>,
    /// `postponed`, `ignored`, `` (tracker's `nodsa_reason`).
    pub reason: Box<str>,
    /// The fix is scheduled for the next point release.
    pub next_point_update: bool,
}

/// One event of an OSV `ECOSYSTEM` range (sorted by version at import).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeEvent {
    /// `None`: `"0"`, before every version.
    Introduced(Option<DebVersion>),
    Fixed(DebVersion),
    LastAffected(DebVersion),
    /// `None`: `"*"`, after every version.
    Limit(Option<DebVersion>),
}

impl RangeEvent {
    fn version(&self) -> Option<&DebVersion> {
        match self {
            RangeEvent::Introduced(v) | RangeEvent::Limit(v) => v.as_ref(),
            RangeEvent::Fixed(v) | RangeEvent::LastAffected(v) => Some(v),
        }
    }

    /// Sort key: `"0"` first, `"*"` last, then by version.
    pub(crate) fn order(a: &RangeEvent, b: &RangeEvent) -> std::cmp::Ordering {
        use std::cmp::Ordering::*;
        let rank = |e: &RangeEvent| match e {
            RangeEvent::Introduced(None) => 0,
            RangeEvent::Limit(None) => 2,
            _ => 1,
        };
        match rank(a).cmp(&rank(b)) {
            Equal => match (a.version(), b.version()) {
                (Some(x), Some(y)) => x.cmp(y),
                _ => Equal,
            },
            o => o,
        }
    }
}

/// General OSV affected ranges of one package in one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsvRanges {
    /// Each range's events, sorted.
    pub ranges: Vec<Vec<RangeEvent>>,
    /// Explicitly listed affected versions.
    pub versions: Vec<DebVersion>,
}

/// Which versions of a source package an advisory affects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affected {
    /// Every version before this fixed one (tracker `resolved`; OSV
    /// `introduced: 0` + `fixed`).
    Before(DebVersion),
    /// Every version; no fix in this release (tracker `open`).
    All,
    /// Not known yet whether the release is affected (`undetermined`).
    Undetermined,
    /// Anything else OSV can say.
    Ranges(Box<OsvRanges>),
}

/// What an advisory means for one installed version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure<'a> {
    NotAffected,
    /// Affected; this version (in the release) fixes it.
    Fixable(&'a DebVersion),
    /// Affected; no fix in the release yet.
    Unfixed,
    /// The source has not determined whether the release is affected.
    Undetermined,
}

impl Exposure<'_> {
    pub fn is_affected(&self) -> bool {
        matches!(self, Exposure::Fixable(_) | Exposure::Unfixed)
    }
}

impl Affected {
    /// Evaluates the advisory against an installed source version.
    pub fn exposure(&self, installed: &DebVersion) -> Exposure<'_> {
        match self {
            Affected::Before(fixed) => {
                if installed < fixed {
                    Exposure::Fixable(fixed)
                } else {
                    Exposure::NotAffected
                }
            }
            Affected::All => Exposure::Unfixed,
            Affected::Undetermined => Exposure::Undetermined,
            Affected::Ranges(r) => ranges_exposure(r, installed),
        }
    }
}

/// OSV's range evaluation: walking a range's sorted events, `introduced`
/// at or below the version opens, `fixed` and `limit` at or below close,
/// `last_affected` strictly below closes. An affected version's fix is the
/// next `fixed` event above it; several affecting ranges need the highest
/// of their fixes, and any unfixed one leaves it unfixed.
fn ranges_exposure<'a>(r: &'a OsvRanges, v: &DebVersion) -> Exposure<'a> {
    let mut any = false;
    let mut unfixed = false;
    let mut fix: Option<&DebVersion> = None;
    for events in &r.ranges {
        let mut affected = false;
        for e in events {
            match e {
                RangeEvent::Introduced(None) => affected = true,
                RangeEvent::Introduced(Some(x)) if x <= v => affected = true,
                RangeEvent::Fixed(x) if x <= v => affected = false,
                RangeEvent::LastAffected(x) if x < v => affected = false,
                RangeEvent::Limit(Some(x)) if x <= v => affected = false,
                _ => {}
            }
        }
        if !affected {
            continue;
        }
        any = true;
        let next_fix = events.iter().find_map(|e| match e {
            RangeEvent::Fixed(x) if x > v => Some(x),
            _ => None,
        });
        match next_fix {
            Some(x) => fix = Some(fix.map_or(x, |f| f.max(x))),
            None => unfixed = true,
        }
    }
    if !any && r.versions.iter().any(|x| x == v) {
        return Exposure::Unfixed;
    }
    match (any, unfixed, fix) {
        (false, _, _) => Exposure::NotAffected,
        (true, true, _) | (true, false, None) => Exposure::Unfixed,
        (true, false, Some(f)) => Exposure::Fixable(f),
    }
}

/// One source's statement about one vulnerability in one source package
/// of one release.
#[derive(Debug, Clone, PartialEq)]
pub struct Advisory {
    pub vuln: VulnId,
    /// The vulnerability's first key (its first CVE, or its id), copied
    /// here at import so that assessing needs no trip to the vuln table
    /// for the common case ([`Advisory::single_key`]).
    pub key: SmallStr,
    /// The vulnerability has exactly one key and it is its id (a tracker
    /// CVE): no other key, no `via`.
    pub single_key: bool,
    pub severity: Severity,
    /// The release no longer supports the package (`end-of-life`).
    pub end_of_life: bool,
    pub affected: Affected,
    pub no_dsa: Option<Box<NoDsa>>,
}

/// The advisories of one source package in one release.
#[derive(Debug, Clone, Default)]
pub struct PackageAdvisories {
    pub advisories: Vec<Advisory>,
    /// Content hash (ids, versions, severities; not descriptions), equal
    /// across catalogs when nothing an assessment uses changed.
    pub(crate) fingerprint: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct ReleaseData {
    pub(crate) key: ReleaseKey,
    pub(crate) packages: HashMap<SmallStr, PackageAdvisories, FxBuild>,
}

/// One imported feed.
#[derive(Debug, Clone)]
pub struct SourceCatalog {
    pub info: SourceInfo,
    pub(crate) vulns: Vec<Vuln>,
    pub(crate) cve_index: HashMap<SmallStr, Vec<VulnId>, FxBuild>,
    pub(crate) releases: Vec<ReleaseData>,
}

impl SourceCatalog {
    pub fn vuln(&self, id: VulnId) -> Option<&Vuln> {
        self.vulns.get(id as usize)
    }

    pub fn releases(&self) -> impl Iterator<Item = &ReleaseKey> {
        self.releases.iter().map(|r| &r.key)
    }
}

/// An advisory with the vulnerability and source it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct AdvisoryRef<'a> {
    pub source: &'a SourceInfo,
    pub vuln: &'a Vuln,
    pub advisory: &'a Advisory,
}

/// A release resolved against one catalog (an index per source), so that
/// per-package lookups do not compare release names. Only valid with the
/// catalog that made it.
#[derive(Debug, Clone)]
pub struct ReleaseHandle {
    key: ReleaseKey,
    per_source: Vec<Option<usize>>,
}

impl ReleaseHandle {
    pub fn key(&self) -> &ReleaseKey {
        &self.key
    }
}

/// The catalog in service: the imported sources, in import order.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    sources: Vec<Arc<SourceCatalog>>,
}

impl Catalog {
    pub fn new() -> Catalog {
        Catalog::default()
    }

    /// A catalog with `source` added, or replacing the source of the same
    /// name. `self` is unchanged (sources are shared, not copied).
    pub fn with_source(&self, source: SourceCatalog) -> Catalog {
        let mut sources = self.sources.clone();
        match sources.iter().position(|s| s.info.name == source.info.name) {
            Some(i) => sources[i] = Arc::new(source),
            None => sources.push(Arc::new(source)),
        }
        Catalog { sources }
    }

    /// A catalog without the named source.
    pub fn without_source(&self, name: &str) -> Catalog {
        Catalog {
            sources: self
                .sources
                .iter()
                .filter(|s| s.info.name != name)
                .cloned()
                .collect(),
        }
    }

    pub fn sources(&self) -> impl Iterator<Item = &SourceCatalog> {
        self.sources.iter().map(|s| &**s)
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Every release some source has advisories for.
    pub fn releases(&self) -> BTreeSet<ReleaseKey> {
        self.sources
            .iter()
            .flat_map(|s| s.releases.iter().map(|r| r.key.clone()))
            .collect()
    }

    /// Resolves a release; `None` when no source knows it (the device is
    /// then on an unsupported release).
    pub fn release(&self, key: &ReleaseKey) -> Option<ReleaseHandle> {
        let per_source: Vec<Option<usize>> = self
            .sources
            .iter()
            .map(|s| s.releases.iter().position(|r| &r.key == key))
            .collect();
        per_source
            .iter()
            .any(Option::is_some)
            .then(|| ReleaseHandle {
                key: key.clone(),
                per_source,
            })
    }

    /// The advisories of a source package in a release, from every source.
    pub fn advisories<'a>(
        &'a self,
        release: &ReleaseHandle,
        package: &str,
    ) -> impl Iterator<Item = AdvisoryRef<'a>> {
        self.sources
            .iter()
            .zip(release.per_source.iter())
            .filter_map(move |(source, index)| {
                let data = source.releases.get((*index)?)?;
                let entry = data.packages.get(package.as_bytes())?;
                Some((source, entry))
            })
            .flat_map(|(source, entry)| {
                entry.advisories.iter().filter_map(move |advisory| {
                    Some(AdvisoryRef {
                        source: &source.info,
                        vuln: source.vulns.get(advisory.vuln as usize)?,
                        advisory,
                    })
                })
            })
    }

    /// The package's advisories with the catalog's shared copy of its name.
    pub fn package_advisories<'a>(
        &'a self,
        release: &ReleaseHandle,
        package: &str,
    ) -> Option<(&'a SmallStr, impl Iterator<Item = AdvisoryRef<'a>>)> {
        let mut name = None;
        for (source, index) in self.sources.iter().zip(release.per_source.iter()) {
            if let Some(data) = index.and_then(|i| source.releases.get(i))
                && let Some((k, _)) = data.packages.get_key_value(package.as_bytes())
            {
                name = Some(k);
                break;
            }
        }
        Some((name?, self.advisories(release, package)))
    }

    /// The raw advisories of a package with their source (vulns looked up
    /// only when needed) and the catalog's copy of the package name.
    pub(crate) fn package_entries<'a>(
        &'a self,
        release: &ReleaseHandle,
        package: &str,
    ) -> Option<(
        &'a SmallStr,
        impl Iterator<Item = (&'a SourceCatalog, &'a Advisory)>,
    )> {
        let mut name = None;
        let mut found: [Option<(&'a SourceCatalog, &'a PackageAdvisories)>; 4] = [None; 4];
        let mut extra: Vec<(&'a SourceCatalog, &'a PackageAdvisories)> = Vec::new();
        let mut n = 0;
        for (source, index) in self.sources.iter().zip(release.per_source.iter()) {
            let Some(data) = index.and_then(|i| source.releases.get(i)) else {
                continue;
            };
            if let Some((k, entry)) = data.packages.get_key_value(package.as_bytes()) {
                name.get_or_insert(k);
                if n < found.len() {
                    found[n] = Some((&**source, entry));
                } else {
                    extra.push((&**source, entry));
                }
                n += 1;
            }
        }
        let name = name?;
        Some((
            name,
            found
                .into_iter()
                .flatten()
                .chain(extra)
                .flat_map(|(source, entry)| entry.advisories.iter().map(move |a| (source, a))),
        ))
    }

    /// Whether any source has advisories for this package in this release.
    pub fn has_package(&self, release: &ReleaseHandle, package: &str) -> bool {
        self.advisories(release, package).next().is_some()
    }

    /// Every vulnerability (of every source) covering a CVE id (or having
    /// this id).
    pub fn vulns_for(&self, id: &str) -> Vec<(&SourceInfo, &Vuln)> {
        let mut out = Vec::new();
        for s in &self.sources {
            if let Some(ids) = s.cve_index.get(id.as_bytes()) {
                out.extend(
                    ids.iter()
                        .filter_map(|v| Some((&s.info, s.vulns.get(*v as usize)?))),
                );
            }
        }
        out
    }

    /// Which (release, source package) pairs differ from `old`: what a
    /// re-assessment after this catalog update must look at.
    pub fn changes_since(&self, old: &Catalog) -> ChangeSet {
        let mut changes = ChangeSet::default();
        let mut names: BTreeSet<&str> = BTreeSet::new();
        names.extend(self.sources.iter().map(|s| s.info.name.as_str()));
        names.extend(old.sources.iter().map(|s| s.info.name.as_str()));
        for name in names {
            let new = self.sources.iter().find(|s| s.info.name == name);
            let before = old.sources.iter().find(|s| s.info.name == name);
            match (new, before) {
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {}
                (a, b) => diff_sources(a.map(|s| &**s), b.map(|s| &**s), &mut changes),
            }
        }
        changes
    }
}

fn diff_sources(new: Option<&SourceCatalog>, old: Option<&SourceCatalog>, changes: &mut ChangeSet) {
    let empty: Vec<ReleaseData> = Vec::new();
    let new_releases = new.map_or(&empty, |s| &s.releases);
    let old_releases = old.map_or(&empty, |s| &s.releases);
    let mut keys: BTreeSet<&ReleaseKey> = new_releases.iter().map(|r| &r.key).collect();
    keys.extend(old_releases.iter().map(|r| &r.key));
    for key in keys {
        let a = new_releases.iter().find(|r| &r.key == key);
        let b = old_releases.iter().find(|r| &r.key == key);
        let mut changed: Vec<&str> = Vec::new();
        if let Some(a) = a {
            for (pkg, entry) in &a.packages {
                let same = b
                    .and_then(|b| b.packages.get(pkg))
                    .is_some_and(|old| old.fingerprint == entry.fingerprint);
                if !same {
                    changed.push(pkg);
                }
            }
        }
        if let Some(b) = b {
            for pkg in b.packages.keys() {
                if a.is_none_or(|a| !a.packages.contains_key(pkg)) {
                    changed.push(pkg);
                }
            }
        }
        if !changed.is_empty() {
            let set = changes.changed.entry(key.clone()).or_default();
            set.extend(changed.into_iter().map(str::to_string));
        }
    }
}

/// The (release, source package) pairs whose advisories differ between two
/// catalogs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeSet {
    pub changed: BTreeMap<ReleaseKey, BTreeSet<String>>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }

    /// Number of (release, package) pairs changed.
    pub fn len(&self) -> usize {
        self.changed.values().map(BTreeSet::len).sum()
    }

    /// Whether a device on `release` with these installed source packages
    /// needs re-assessing.
    pub fn touches<'a>(
        &self,
        release: Option<&ReleaseKey>,
        mut source_packages: impl Iterator<Item = &'a str>,
    ) -> bool {
        let Some(release) = release else {
            return false;
        };
        match self.changed.get(release) {
            Some(set) => source_packages.any(|p| set.contains(p)),
            None => false,
        }
    }

    /// Whether a device with this scan needs re-assessing.
    pub fn touches_scan(&self, scan: &crate::scan::Scan) -> bool {
        self.touches(
            scan.release().as_ref(),
            scan.dpkg.iter().map(|p| p.source_name()),
        )
    }
}
