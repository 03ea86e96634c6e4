//! Streaming import of the Debian Security Tracker JSON
//! (`https://security-tracker.debian.org/tracker/data/json`, built by the
//! tracker's `bin/tracker_service.py`):
//!
//! ```text
//! { "<source package>": {
//!     "<CVE-… or TEMP-…>": {
//!       "description": "…", "debianbug": 123, "scope": "remote"|"local",
//!       "releases": { "<codename>": {
//!           "status": "resolved"|"open"|"undetermined",
//!           "repositories": { "<codename>[-security]": "<version>" },
//!           "fixed_version": "<version>",          (resolved only; "0": never affected)
//!           "urgency": "unimportant"|"low"|"medium"|"high"|"not yet assigned"|"end-of-life",
//!           "nodsa": "…", "nodsa_reason": "…", "next_point_update": true } } } } }
//! ```
//!
//! The ~80 MB document is never held in memory: serde visits it package by
//! package and each CVE's releases become advisories at once (peak memory
//! is the catalog being built plus one CVE). Unknown fields are ignored; a
//! value of the wrong type, an unknown status, a syntax error or a
//! truncated file refuses the whole feed with the line, column and JSON
//! path; an unparsable version skips that advisory (counted, first ones
//! reported with their path).

use std::cell::RefCell;
use std::fmt;
use std::io::{BufReader, Read};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::builder::{Builder, ImportOptions};
use super::{Advisory, Affected, FeedFormat, ImportError, NoDsa, Position, Scope, SourceCatalog};
use crate::release::{Distro, ReleaseKey};
use crate::severity::{Severity, debian_urgency};
use crate::smallstr::SmallStr;
use crate::version::DebVersion;

/// Imports a tracker JSON document. On success returns the new source; the
/// caller swaps it into its [`super::Catalog`].
pub fn import_debian_tracker<R: Read>(
    reader: R,
    options: ImportOptions,
) -> Result<SourceCatalog, ImportError> {
    let state = RefCell::new(State {
        builder: Builder::new(FeedFormat::DebianTracker, options),
        path: Path::default(),
        limit: None,
    });
    let mut de =
        serde_json::Deserializer::from_reader(BufReader::with_capacity(256 * 1024, reader));
    let result = TopSeed(&state).deserialize(&mut de).and_then(|()| de.end());
    let state = state.into_inner();
    if let Some(limit) = state.limit {
        return Err(limit);
    }
    match result {
        Ok(()) => Ok(state.builder.finish()),
        Err(e) if e.is_io() => Err(ImportError::Io {
            format: FeedFormat::DebianTracker,
            source: std::io::Error::other(e.to_string()),
        }),
        Err(e) => Err(ImportError::Malformed {
            format: FeedFormat::DebianTracker,
            position: Position {
                line: e.line(),
                column: e.column(),
                path: state.path.to_string(),
            },
            reason: strip_position(&e.to_string()),
        }),
    }
}

/// serde_json appends " at line L column C" to its messages; the position
/// is reported separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Where the visitor is, for error messages.
#[derive(Default)]
struct Path {
    package: Option<String>,
    vuln: Option<String>,
    field: Option<&'static str>,
    release: Option<String>,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        if let Some(p) = &self.package {
            write!(f, "[{p:?}]")?;
            if let Some(v) = &self.vuln {
                write!(f, "[{v:?}]")?;
                if let Some(field) = self.field {
                    write!(f, ".{field}")?;
                    if let Some(r) = &self.release {
                        write!(f, "[{r:?}]")?;
                    }
                }
            }
        }
        Ok(())
    }
}

struct State {
    builder: Builder,
    path: Path,
    /// Set when a limit refused the feed (reported as such, not as JSON).
    limit: Option<ImportError>,
}

struct TopSeed<'a>(&'a RefCell<State>);

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of source packages")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(package) = map.next_key::<String>()? {
            {
                let mut s = self.0.borrow_mut();
                s.path = Path {
                    package: Some(package.clone()),
                    ..Path::default()
                };
                s.builder.stats.entries += 1;
            }
            map.next_value_seed(PackageSeed {
                state: self.0,
                package: &package,
            })?;
        }
        Ok(())
    }
}

struct PackageSeed<'a> {
    state: &'a RefCell<State>,
    package: &'a str,
}

impl<'de> DeserializeSeed<'de> for PackageSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PackageSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of CVE ids")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(vuln) = map.next_key::<String>()? {
            {
                let mut s = self.state.borrow_mut();
                s.path.vuln = Some(vuln.clone());
                s.path.field = None;
                s.path.release = None;
            }
            let entry = map.next_value_seed(VulnSeed { state: self.state })?;
            self.state.borrow_mut().path.field = None;
            let added = add_entry(
                &mut self.state.borrow_mut().builder,
                self.package,
                &vuln,
                entry,
            );
            if let Err(e) = added {
                self.state.borrow_mut().limit = Some(e);
                return Err(de::Error::custom("import limit reached"));
            }
        }
        Ok(())
    }
}

/// One release entry as the tracker writes it.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct ReleaseEntry {
    pub(crate) status: Option<String>,
    pub(crate) fixed_version: Option<String>,
    pub(crate) urgency: Option<String>,
    pub(crate) nodsa: Option<String>,
    pub(crate) nodsa_reason: Option<String>,
    pub(crate) next_point_update: Option<bool>,
    #[allow(dead_code)]
    pub(crate) repositories: Option<IgnoredAny>,
}

#[derive(Default)]
pub(crate) struct VulnEntry {
    pub(crate) description: Option<String>,
    pub(crate) scope: Option<String>,
    pub(crate) releases: Vec<(String, ReleaseEntry)>,
}

struct VulnSeed<'a> {
    state: &'a RefCell<State>,
}

impl<'de> DeserializeSeed<'de> for VulnSeed<'_> {
    type Value = VulnEntry;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<VulnEntry, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for VulnSeed<'_> {
    type Value = VulnEntry;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a vulnerability object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VulnEntry, A::Error> {
        let mut entry = VulnEntry::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "description" => {
                    self.state.borrow_mut().path.field = Some("description");
                    entry.description = map.next_value()?;
                }
                "scope" => {
                    self.state.borrow_mut().path.field = Some("scope");
                    entry.scope = map.next_value()?;
                }
                "releases" => {
                    self.state.borrow_mut().path.field = Some("releases");
                    entry.releases = map.next_value_seed(ReleasesSeed { state: self.state })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(entry)
    }
}

struct ReleasesSeed<'a> {
    state: &'a RefCell<State>,
}

impl<'de> DeserializeSeed<'de> for ReleasesSeed<'_> {
    type Value = Vec<(String, ReleaseEntry)>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReleasesSeed<'_> {
    type Value = Vec<(String, ReleaseEntry)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of releases")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(release) = map.next_key::<String>()? {
            self.state.borrow_mut().path.release = Some(release.clone());
            let entry: ReleaseEntry = map.next_value()?;
            match entry.status.as_deref() {
                Some("resolved" | "open" | "undetermined") => {}
                Some(other) => {
                    return Err(de::Error::custom(format_args!(
                        "unknown status {other:?} (expected resolved, open or undetermined)"
                    )));
                }
                None => return Err(de::Error::custom("release entry without a status")),
            }
            out.push((release, entry));
        }
        self.state.borrow_mut().path.release = None;
        Ok(out)
    }
}

/// Turns one (package, CVE) entry into advisories.
pub(crate) fn add_entry(
    b: &mut Builder,
    package: &str,
    vuln_id: &str,
    entry: VulnEntry,
) -> Result<(), ImportError> {
    let scope = match entry.scope.as_deref() {
        Some("remote") => Some(Scope::Remote),
        Some("local") => Some(Scope::Local),
        _ => None,
    };
    let cves = if vuln_id.starts_with("CVE-") {
        vec![vuln_id.to_string()]
    } else {
        Vec::new()
    };
    let mut vuln = None;
    let mut description = entry.description;
    for (codename, r) in entry.releases {
        let release = ReleaseKey::new(Distro::Debian, &codename);
        if !b.wants(&release) {
            continue;
        }
        let where_ = || format!("$[{package:?}][{vuln_id:?}].releases[{codename:?}]");
        let (severity, end_of_life) = match r.urgency.as_deref().map(debian_urgency) {
            Some(Some(u)) => u,
            None => (Severity::Unknown, false),
            Some(None) => {
                b.stats.unknown_urgency += 1;
                (Severity::Unknown, false)
            }
        };
        let affected = match r.status.as_deref() {
            Some("resolved") => match r.fixed_version.as_deref() {
                None | Some("0") => {
                    b.stats.not_affected += 1;
                    continue;
                }
                Some(v) => match DebVersion::parse(v) {
                    Ok(v) => Affected::Before(v),
                    Err(e) => {
                        b.stats.skipped += 1;
                        b.stats.warn(format!(
                            "{}: fixed_version {v:?}: {e}; advisory skipped",
                            where_()
                        ));
                        continue;
                    }
                },
            },
            Some("open") => Affected::All,
            _ => Affected::Undetermined,
        };
        let no_dsa = if r.nodsa.is_some() || r.next_point_update == Some(true) {
            Some(Box::new(NoDsa {
                note: r.nodsa.unwrap_or_default().into(),
                reason: r.nodsa_reason.unwrap_or_default().into(),
                next_point_update: r.next_point_update == Some(true),
            }))
        } else {
            None
        };
        let id = match vuln {
            Some(id) => id,
            None => {
                let id = b.vuln(vuln_id, cves.clone(), description.take(), scope, None);
                vuln = Some(id);
                id
            }
        };
        b.add(
            &release,
            package,
            Advisory {
                vuln: id,
                key: SmallStr::new(""),
                single_key: false,
                severity,
                end_of_life,
                affected,
                no_dsa,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Exposure};

    fn opts() -> ImportOptions {
        ImportOptions::new("debian-tracker", "test", 1_000)
    }

    const SAMPLE: &str = r#"{
  "openssl": {
    "CVE-2024-0001": {
      "description": "Use after free",
      "scope": "remote",
      "debianbug": 12345,
      "releases": {
        "bookworm": {"status": "resolved", "repositories": {"bookworm": "3.0.11-1~deb12u2", "bookworm-security": "3.0.13-1~deb12u1"},
                     "fixed_version": "3.0.13-1~deb12u1", "urgency": "high"},
        "bullseye": {"status": "open", "repositories": {"bullseye": "1.1.1w-0+deb11u1"}, "urgency": "low",
                     "nodsa": "Minor issue", "nodsa_reason": "postponed"},
        "trixie": {"status": "resolved", "fixed_version": "0", "urgency": "unimportant"},
        "sid": {"status": "undetermined", "urgency": "not yet assigned", "future_field": [1, 2]}
      }
    },
    "TEMP-0000000-ABCDEF": {
      "releases": {"bookworm": {"status": "open", "urgency": "unimportant"}}
    }
  },
  "curl": {
    "CVE-2024-0001": {"description": "Same id, other package",
      "releases": {"bookworm": {"status": "resolved", "fixed_version": "7.88.1-10+deb12u6", "urgency": "medium"}}}
  }
}"#;

    #[test]
    fn tracker_entries_become_advisories_by_release_and_source_package() {
        let source = import_debian_tracker(SAMPLE.as_bytes(), opts()).unwrap();
        let st = &source.info.stats;
        assert_eq!(st.entries, 2);
        assert_eq!(st.vulns, 2, "CVE-2024-0001 interned once across packages");
        assert_eq!(st.advisories, 5);
        assert_eq!(st.not_affected, 1);
        let catalog = Catalog::new().with_source(source);
        let bookworm = catalog.release(&ReleaseKey::debian("bookworm")).unwrap();
        let adv: Vec<_> = catalog.advisories(&bookworm, "openssl").collect();
        assert_eq!(adv.len(), 2);
        let cve = adv.iter().find(|a| &*a.vuln.id == "CVE-2024-0001").unwrap();
        assert_eq!(cve.advisory.severity, Severity::High);
        assert_eq!(cve.vuln.description.as_deref(), Some("Use after free"));
        assert_eq!(cve.vuln.scope, Some(Scope::Remote));
        let installed = DebVersion::parse("3.0.11-1~deb12u2").unwrap();
        assert_eq!(
            cve.advisory.affected.exposure(&installed),
            Exposure::Fixable(&DebVersion::parse("3.0.13-1~deb12u1").unwrap())
        );
        let temp = adv.iter().find(|a| a.vuln.id.starts_with("TEMP-")).unwrap();
        assert!(temp.vuln.cves.is_empty());
        assert_eq!(temp.advisory.affected, Affected::All);

        let bullseye = catalog.release(&ReleaseKey::debian("bullseye")).unwrap();
        let open: Vec<_> = catalog.advisories(&bullseye, "openssl").collect();
        assert_eq!(open[0].advisory.affected, Affected::All);
        let nodsa = open[0].advisory.no_dsa.as_ref().unwrap();
        assert_eq!((&*nodsa.note, &*nodsa.reason), ("Minor issue", "postponed"));
        let sid = catalog.release(&ReleaseKey::debian("sid")).unwrap();
        assert_eq!(
            catalog
                .advisories(&sid, "openssl")
                .next()
                .unwrap()
                .advisory
                .affected,
            Affected::Undetermined
        );
        assert!(
            catalog.release(&ReleaseKey::debian("trixie")).is_none(),
            "only not-affected entries"
        );
        assert_eq!(catalog.vulns_for("CVE-2024-0001").len(), 1);
    }

    #[test]
    fn a_release_filter_keeps_only_the_fleets_releases() {
        let mut o = opts();
        o.releases = Some([ReleaseKey::debian("bookworm")].into());
        let source = import_debian_tracker(SAMPLE.as_bytes(), o).unwrap();
        assert_eq!(source.info.stats.advisories, 3);
        assert_eq!(source.info.stats.filtered_out, 3);
    }

    fn refused(text: &str) -> (Position, String) {
        match import_debian_tracker(text.as_bytes(), opts()) {
            Err(ImportError::Malformed {
                position, reason, ..
            }) => (position, reason),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_truncated_feed_is_refused_with_its_position() {
        let cut = &SAMPLE[..SAMPLE.len() / 2];
        let (pos, reason) = refused(cut);
        assert!(reason.contains("EOF"), "{reason}");
        assert!(pos.line > 1, "{pos}");
        assert!(pos.path.starts_with("$[\"openssl\"]"), "{pos}");
    }

    #[test]
    fn a_wrong_type_is_refused_with_line_column_and_json_path() {
        let text = "{\"a\": {\"CVE-1\": {\"releases\": {\"bookworm\": {\"status\": 5}}}}}";
        let (pos, reason) = refused(text);
        assert!(reason.contains("invalid type"), "{reason}");
        assert_eq!(pos.line, 1);
        assert!(pos.column > 40, "{pos}");
        assert_eq!(pos.path, "$[\"a\"][\"CVE-1\"].releases[\"bookworm\"]");
    }

    #[test]
    fn an_unknown_status_is_refused() {
        let (pos, reason) = refused(
            "{\"a\": {\"CVE-1\": {\"releases\": {\"bookworm\": {\"status\": \"fixed\"}}}}}",
        );
        assert!(reason.contains("unknown status \"fixed\""), "{reason}");
        assert_eq!(pos.path, "$[\"a\"][\"CVE-1\"].releases[\"bookworm\"]");
    }

    #[test]
    fn not_an_object_and_trailing_garbage_are_refused() {
        let (_, reason) = refused("[1, 2]");
        assert!(reason.contains("invalid type"), "{reason}");
        let (_, reason) = refused("{} x");
        assert!(reason.contains("trailing"), "{reason}");
        let (_, reason) = refused("");
        assert!(reason.contains("EOF"), "{reason}");
    }

    #[test]
    fn an_unparsable_fixed_version_skips_the_advisory_and_says_where() {
        let text = r#"{"a": {"CVE-1": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "1:"}}},
                             "CVE-2": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "1.0"}}}}}"#;
        let source = import_debian_tracker(text.as_bytes(), opts()).unwrap();
        assert_eq!(source.info.stats.skipped, 1);
        assert_eq!(source.info.stats.advisories, 1);
        assert!(
            source.info.stats.warnings[0].contains("$[\"a\"][\"CVE-1\"].releases[\"bookworm\"]")
        );
    }

    #[test]
    fn the_advisory_limit_refuses_a_runaway_feed() {
        let mut o = opts();
        o.max_advisories = 2;
        let err = import_debian_tracker(SAMPLE.as_bytes(), o).unwrap_err();
        assert!(
            matches!(err, ImportError::TooLarge { limit: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn long_descriptions_are_cut_on_a_character_boundary() {
        let mut o = opts();
        o.max_description_bytes = 5;
        let text = r#"{"a": {"CVE-1": {"description": "ééééé", "releases": {"bookworm": {"status": "open"}}}}}"#;
        let source = import_debian_tracker(text.as_bytes(), o).unwrap();
        assert_eq!(source.vulns[0].description.as_deref(), Some("éé"));
        assert_eq!(source.info.stats.truncated_descriptions, 1);
    }

    #[test]
    fn changes_between_two_imports_name_only_the_packages_that_moved() {
        let old =
            Catalog::new().with_source(import_debian_tracker(SAMPLE.as_bytes(), opts()).unwrap());
        let edited = SAMPLE
            .replace("7.88.1-10+deb12u6", "7.88.1-10+deb12u7")
            .replace("Use after free", "UAF");
        let new = old.with_source(import_debian_tracker(edited.as_bytes(), opts()).unwrap());
        let changes = new.changes_since(&old);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(changes.changed[&ReleaseKey::debian("bookworm")].contains("curl"));
        assert!(new.changes_since(&new).is_empty());
        let removed = Catalog::new().changes_since(&old);
        assert_eq!(removed.len(), 4, "{removed:?}");
    }
}
