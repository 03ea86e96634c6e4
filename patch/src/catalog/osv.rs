//! Import of OSV records (schema: https://ossf.github.io/osv-schema/) for
//! Debian (`DSA-`, `DLA-`, `DEBIAN-CVE-` ids; ecosystem `Debian:12`) and
//! Ubuntu (`UBUNTU-CVE-`, `USN-`; `Ubuntu:22.04:LTS`, `Ubuntu:24.10`).
//!
//! Input: one record, a JSON array of records, or records one after the
//! other (JSON lines). Records are read one at a time, so memory is the
//! catalog plus one record.
//!
//! Per affected package: `ECOSYSTEM` ranges (`introduced`/`fixed`/
//! `last_affected`/`limit`) and `versions` on the source package name;
//! severity from the distribution's own rating when present
//! (`ecosystem_specific.urgency` / `database_specific.urgency` for Debian,
//! severity type `Ubuntu` for Ubuntu), else the highest CVSS v3/v2 base
//! score. CVE ids from the id itself (`CVE-…`, `DEBIAN-CVE-…`,
//! `UBUNTU-CVE-…`) and from `aliases`, `upstream` and `related`.
//!
//! Refused with position: invalid JSON, a value of the wrong type, a
//! record without `id`. Skipped and counted (first ones reported with
//! their path): withdrawn records, other ecosystems, unknown releases,
//! Ubuntu Pro, unparsable versions, events without exactly one known key,
//! non-`ECOSYSTEM` ranges, ranges without `introduced`. Unknown fields are
//! ignored (the schema only grows).

use std::io::{BufRead, BufReader, Read};

use serde::Deserialize;
use serde_json::Value;

use super::builder::{Builder, ImportOptions};
use super::cvss::{cvss2_base_score, cvss3_base_score};
use super::{
    Advisory, Affected, FeedFormat, ImportError, OsvRanges, Position, RangeEvent, SourceCatalog,
};
use crate::release::{OsvEcosystem, osv_ecosystem};
use crate::severity::{Severity, cvss_band, debian_urgency, ubuntu_priority};
use crate::smallstr::SmallStr;
use crate::version::DebVersion;

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct Record {
    id: String,
    #[serde(default)]
    withdrawn: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    aliases: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    related: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    upstream: Vec<String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    details: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    severity: Vec<SeverityEntry>,
    #[serde(default, deserialize_with = "null_as_default")]
    affected: Vec<AffectedEntry>,
    #[serde(default)]
    database_specific: Option<Value>,
}

#[derive(Deserialize)]
struct SeverityEntry {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Deserialize)]
struct AffectedEntry {
    package: Option<Package>,
    #[serde(default, deserialize_with = "null_as_default")]
    severity: Vec<SeverityEntry>,
    #[serde(default, deserialize_with = "null_as_default")]
    ranges: Vec<Range>,
    #[serde(default, deserialize_with = "null_as_default")]
    versions: Vec<String>,
    #[serde(default)]
    ecosystem_specific: Option<Value>,
    #[serde(default)]
    database_specific: Option<Value>,
}

#[derive(Deserialize)]
struct Package {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct Range {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    introduced: Option<String>,
    fixed: Option<String>,
    last_affected: Option<String>,
    limit: Option<String>,
}

/// Imports OSV records. On success returns the new source; the caller
/// swaps it into its [`super::Catalog`].
pub fn import_osv<R: Read>(
    reader: R,
    options: ImportOptions,
) -> Result<SourceCatalog, ImportError> {
    let mut builder = Builder::new(FeedFormat::Osv, options);
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let first = loop {
        let buf = reader.fill_buf().map_err(|source| ImportError::Io {
            format: FeedFormat::Osv,
            source,
        })?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let b = buf[i];
                reader.consume(i);
                break Some(b);
            }
            None if buf.is_empty() => break None,
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    let Some(first) = first else {
        return Err(malformed(
            Position::default(),
            "empty feed: no OSV record".into(),
        ));
    };
    let mut index = 0usize;
    if first == b'[' {
        let mut de = serde_json::Deserializer::from_reader(reader);
        let mut failure = None;
        let result = ArraySeed {
            builder: &mut builder,
            index: &mut index,
            failure: &mut failure,
        }
        .deserialize_from(&mut de)
        .and_then(|()| de.end());
        if let Some(f) = failure {
            return Err(f);
        }
        if let Err(e) = result {
            return Err(json_error(&e, index));
        }
    } else {
        let stream = serde_json::Deserializer::from_reader(reader).into_iter::<Value>();
        for value in stream {
            let value = value.map_err(|e| json_error(&e, index))?;
            add_record(&mut builder, value, index)?;
            index += 1;
        }
    }
    Ok(builder.finish())
}

fn malformed(position: Position, reason: String) -> ImportError {
    ImportError::Malformed {
        format: FeedFormat::Osv,
        position,
        reason,
    }
}

fn json_error(e: &serde_json::Error, index: usize) -> ImportError {
    if e.is_io() {
        return ImportError::Io {
            format: FeedFormat::Osv,
            source: std::io::Error::other(e.to_string()),
        };
    }
    let message = e.to_string();
    let reason = match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    };
    malformed(
        Position {
            line: e.line(),
            column: e.column(),
            path: format!("record {index}"),
        },
        reason,
    )
}

/// Visits a top-level array element by element.
struct ArraySeed<'a> {
    builder: &'a mut Builder,
    index: &'a mut usize,
    failure: &'a mut Option<ImportError>,
}

impl ArraySeed<'_> {
    fn deserialize_from<'de, D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ArraySeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of OSV records")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(value) = seq.next_element::<Value>()? {
            if let Err(e) = add_record(self.builder, value, *self.index) {
                *self.failure = Some(e);
                return Err(serde::de::Error::custom("record refused"));
            }
            *self.index += 1;
        }
        Ok(())
    }
}

fn cve_ids(record: &Record) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: &str| {
        if s.starts_with("CVE-") && !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    };
    let own = record
        .id
        .strip_prefix("DEBIAN-")
        .or_else(|| record.id.strip_prefix("UBUNTU-"))
        .unwrap_or(&record.id);
    push(own);
    for s in record
        .aliases
        .iter()
        .chain(&record.upstream)
        .chain(&record.related)
    {
        push(s);
    }
    out
}

/// Highest CVSS base score among severity entries.
fn cvss(entries: &[SeverityEntry]) -> Option<(f64, bool)> {
    let mut best: Option<(f64, bool)> = None;
    for e in entries {
        let score = match e.kind.as_str() {
            "CVSS_V3" => cvss3_base_score(&e.score).map(|s| (s, false)),
            "CVSS_V2" => cvss2_base_score(&e.score).map(|s| (s, true)),
            _ => None,
        };
        if let Some((s, v2)) = score
            && best.is_none_or(|(b, _)| s > b)
        {
            best = Some((s, v2));
        }
    }
    best
}

fn urgency_field(v: &Option<Value>) -> Option<&str> {
    v.as_ref()?.get("urgency")?.as_str()
}

fn add_record(b: &mut Builder, value: Value, index: usize) -> Result<(), ImportError> {
    let id_hint = value
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let record: Record = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = match e.path().to_string() {
            root if root == "." => format!("record {index} ({id_hint})"),
            inner => format!("record {index} ({id_hint}): {inner}"),
        };
        malformed(
            Position {
                line: 0,
                column: 0,
                path,
            },
            e.into_inner().to_string(),
        )
    })?;
    b.stats.entries += 1;
    if record.withdrawn.is_some() {
        b.stats.withdrawn += 1;
        return Ok(());
    }
    let cves = cve_ids(&record);
    let description = record
        .summary
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| record.details.clone());
    let record_cvss = cvss(&record.severity);
    let mut vuln = None;
    for (ai, affected) in record.affected.iter().enumerate() {
        let where_ = || format!("record {index} ({}): affected[{ai}]", record.id);
        let Some(package) = &affected.package else {
            b.stats.other_ecosystems += 1;
            continue;
        };
        let release = match osv_ecosystem(&package.ecosystem) {
            OsvEcosystem::Release(r) => r,
            OsvEcosystem::UbuntuPro => {
                b.stats.ubuntu_pro += 1;
                continue;
            }
            OsvEcosystem::UnknownRelease(e) => {
                b.stats.unknown_releases += 1;
                b.stats.warn(format!(
                    "{}: ecosystem {e:?} is not a release this build knows",
                    where_()
                ));
                continue;
            }
            OsvEcosystem::Other => {
                b.stats.other_ecosystems += 1;
                continue;
            }
        };
        if !b.wants(&release) {
            continue;
        }
        let affected_cvss = cvss(&affected.severity).or(record_cvss);
        // The distribution's own rating first, then CVSS.
        let mut severity = None;
        let mut end_of_life = false;
        let urgency = urgency_field(&affected.ecosystem_specific)
            .or_else(|| urgency_field(&affected.database_specific))
            .or_else(|| urgency_field(&record.database_specific));
        if let Some(u) = urgency {
            match debian_urgency(u) {
                Some((s, eol)) => {
                    severity = Some(s);
                    end_of_life = eol;
                }
                None => b.stats.unknown_urgency += 1,
            }
        }
        let ubuntu = affected
            .severity
            .iter()
            .chain(&record.severity)
            .find(|s| s.kind == "Ubuntu");
        if let Some(u) = ubuntu
            && severity.is_none()
        {
            match ubuntu_priority(&u.score) {
                Some(s) => severity = Some(s),
                None => b.stats.unknown_urgency += 1,
            }
        }
        let severity = match (severity, affected_cvss) {
            (Some(Severity::Unknown), Some((score, v2))) => cvss_band(score, v2),
            (Some(s), _) => s,
            (None, Some((score, v2))) => cvss_band(score, v2),
            (None, None) => Severity::Unknown,
        };
        let Some(affected_versions) = convert_affected(b, affected, &where_) else {
            continue;
        };
        let id = match vuln {
            Some(id) => id,
            None => {
                let id = b.vuln(
                    &record.id,
                    cves.clone(),
                    description.clone(),
                    None,
                    record_cvss.map(|(s, _)| s as f32),
                );
                vuln = Some(id);
                id
            }
        };
        b.add(
            &release,
            &package.name,
            Advisory {
                vuln: id,
                key: SmallStr::new(""),
                single_key: false,
                severity,
                end_of_life,
                affected: affected_versions,
                no_dsa: None,
            },
        )?;
    }
    Ok(())
}

fn parse_version(
    b: &mut Builder,
    v: &str,
    where_: &dyn Fn() -> String,
    field: &str,
) -> Option<DebVersion> {
    match DebVersion::parse(v) {
        Ok(v) => Some(v),
        Err(e) => {
            b.stats.skipped += 1;
            b.stats
                .warn(format!("{}.{field} {v:?}: {e}; entry skipped", where_()));
            None
        }
    }
}

/// OSV ranges → [`Affected`]; `None` (counted) when unusable.
fn convert_affected(
    b: &mut Builder,
    a: &AffectedEntry,
    where_: &dyn Fn() -> String,
) -> Option<Affected> {
    let mut ranges = Vec::new();
    for (ri, range) in a.ranges.iter().enumerate() {
        let here = || format!("{}.ranges[{ri}]", where_());
        if range.kind != "ECOSYSTEM" {
            b.stats.skipped += 1;
            b.stats
                .warn(format!("{}: range type {:?} ignored", here(), range.kind));
            continue;
        }
        let mut events = Vec::new();
        for (ei, e) in range.events.iter().enumerate() {
            let at = || format!("{}.events[{ei}]", here());
            let set = [&e.introduced, &e.fixed, &e.last_affected, &e.limit]
                .iter()
                .filter(|x| x.is_some())
                .count();
            if set != 1 {
                b.stats.skipped += 1;
                b.stats
                    .warn(format!("{}: an event must have exactly one key", at()));
                return None;
            }
            let event = if let Some(v) = &e.introduced {
                if v == "0" {
                    RangeEvent::Introduced(None)
                } else {
                    RangeEvent::Introduced(Some(parse_version(b, v, &at, "introduced")?))
                }
            } else if let Some(v) = &e.fixed {
                RangeEvent::Fixed(parse_version(b, v, &at, "fixed")?)
            } else if let Some(v) = &e.last_affected {
                RangeEvent::LastAffected(parse_version(b, v, &at, "last_affected")?)
            } else if let Some(v) = &e.limit {
                if v == "*" {
                    RangeEvent::Limit(None)
                } else {
                    RangeEvent::Limit(Some(parse_version(b, v, &at, "limit")?))
                }
            } else {
                return None;
            };
            events.push(event);
        }
        if !events
            .iter()
            .any(|e| matches!(e, RangeEvent::Introduced(_)))
        {
            b.stats.skipped += 1;
            b.stats.warn(format!(
                "{}: range without an introduced event ignored",
                here()
            ));
            continue;
        }
        events.sort_by(RangeEvent::order);
        ranges.push(events);
    }
    let mut versions = Vec::new();
    for (vi, v) in a.versions.iter().enumerate() {
        let at = || format!("{}.versions[{vi}]", where_());
        versions.push(parse_version(b, v, &at, "version")?);
    }
    if ranges.is_empty() && versions.is_empty() {
        b.stats.skipped += 1;
        b.stats
            .warn(format!("{}: no usable range or version", where_()));
        return None;
    }
    // The two shapes the tracker also has, stored compactly.
    if versions.is_empty() && ranges.len() == 1 {
        match ranges[0].as_slice() {
            [RangeEvent::Introduced(None)] => return Some(Affected::All),
            [RangeEvent::Introduced(None), RangeEvent::Fixed(f)] => {
                return Some(Affected::Before(f.clone()));
            }
            _ => {}
        }
    }
    Some(Affected::Ranges(Box::new(OsvRanges { ranges, versions })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Exposure};
    use crate::release::ReleaseKey;

    fn opts() -> ImportOptions {
        ImportOptions::new("osv", "test", 1)
    }

    fn v(s: &str) -> DebVersion {
        DebVersion::parse(s).unwrap()
    }

    const DEBIAN_CVE: &str = r#"{
      "id": "DEBIAN-CVE-2024-1111", "upstream": ["CVE-2024-1111"], "summary": "A flaw.",
      "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
      "affected": [
        {"package": {"ecosystem": "Debian:12", "name": "openssl"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.13-1~deb12u1"}]}],
         "ecosystem_specific": {"urgency": "not yet assigned"}},
        {"package": {"ecosystem": "Debian:11", "name": "openssl"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
         "ecosystem_specific": {"urgency": "low"}},
        {"package": {"ecosystem": "npm", "name": "left-pad"}, "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]}
      ]}"#;

    const USN: &str = r#"{"id": "USN-6000-1", "aliases": null, "related": ["CVE-2024-2222", "CVE-2024-3333", "GHSA-x"],
      "details": "Several issues.",
      "affected": [
        {"package": {"ecosystem": "Ubuntu:22.04:LTS", "name": "curl"},
         "severity": [{"type": "Ubuntu", "score": "medium"}],
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "7.81.0-1ubuntu1.16"}]}],
         "versions": ["7.81.0-1", "7.81.0-1ubuntu1.15"]},
        {"package": {"ecosystem": "Ubuntu:Pro:18.04:LTS", "name": "curl"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "7.58.0-2ubuntu3.24+esm4"}]}]}
      ]}"#;

    #[test]
    fn debian_and_ubuntu_records_become_advisories_with_cves_and_severities() {
        let feed = format!("{DEBIAN_CVE}\n{USN}\n");
        let source = import_osv(feed.as_bytes(), opts()).unwrap();
        let st = &source.info.stats;
        assert_eq!(
            (
                st.entries,
                st.advisories,
                st.other_ecosystems,
                st.ubuntu_pro
            ),
            (2, 3, 1, 1)
        );
        let catalog = Catalog::new().with_source(source);

        let bookworm = catalog.release(&ReleaseKey::debian("bookworm")).unwrap();
        let a = catalog.advisories(&bookworm, "openssl").next().unwrap();
        assert_eq!(&*a.vuln.id, "DEBIAN-CVE-2024-1111");
        assert_eq!(
            a.vuln.cves.iter().map(|c| &**c).collect::<Vec<_>>(),
            vec!["CVE-2024-1111"]
        );
        assert_eq!(
            a.advisory.severity,
            Severity::Critical,
            "not-yet-assigned urgency falls back to CVSS 9.8"
        );
        assert_eq!(a.advisory.affected, Affected::Before(v("3.0.13-1~deb12u1")));
        let bullseye = catalog.release(&ReleaseKey::debian("bullseye")).unwrap();
        let open = catalog.advisories(&bullseye, "openssl").next().unwrap();
        assert_eq!(
            (open.advisory.severity, &open.advisory.affected),
            (Severity::Low, &Affected::All)
        );

        let jammy = catalog.release(&ReleaseKey::ubuntu("jammy")).unwrap();
        let usn = catalog.advisories(&jammy, "curl").next().unwrap();
        assert_eq!(usn.vuln.cves.len(), 2);
        assert_eq!(usn.advisory.severity, Severity::Medium);
        assert_eq!(usn.vuln.description.as_deref(), Some("Several issues."));
        assert_eq!(
            usn.advisory.affected.exposure(&v("7.81.0-1ubuntu1.15")),
            Exposure::Fixable(&v("7.81.0-1ubuntu1.16"))
        );
        assert_eq!(
            usn.advisory.affected.exposure(&v("7.81.0-1ubuntu1.16")),
            Exposure::NotAffected
        );
        assert_eq!(catalog.vulns_for("CVE-2024-3333").len(), 1);
    }

    #[test]
    fn an_array_of_records_is_read_element_by_element() {
        let feed = format!("[{DEBIAN_CVE}, {USN}]");
        let source = import_osv(feed.as_bytes(), opts()).unwrap();
        assert_eq!(source.info.stats.entries, 2);
    }

    #[test]
    fn ranges_with_introduced_last_affected_and_several_fixes_are_evaluated_like_osv() {
        let rec = r#"{"id": "DSA-1-1", "affected": [{"package": {"ecosystem": "Debian:12", "name": "p"},
          "ranges": [{"type": "ECOSYSTEM", "events": [{"fixed": "1.5"}, {"introduced": "1.0"}, {"introduced": "2.0"}, {"fixed": "2.3"}]},
                     {"type": "ECOSYSTEM", "events": [{"introduced": "3.0"}, {"last_affected": "3.2"}]}]}]}"#;
        let catalog = Catalog::new().with_source(import_osv(rec.as_bytes(), opts()).unwrap());
        let r = catalog.release(&ReleaseKey::debian("bookworm")).unwrap();
        let a = catalog
            .advisories(&r, "p")
            .next()
            .unwrap()
            .advisory
            .affected
            .clone();
        assert_eq!(a.exposure(&v("0.9")), Exposure::NotAffected);
        assert_eq!(a.exposure(&v("1.0")), Exposure::Fixable(&v("1.5")));
        assert_eq!(a.exposure(&v("1.5")), Exposure::NotAffected);
        assert_eq!(a.exposure(&v("2.1")), Exposure::Fixable(&v("2.3")));
        assert_eq!(a.exposure(&v("3.2")), Exposure::Unfixed);
        assert_eq!(a.exposure(&v("3.2.1")), Exposure::NotAffected);
    }

    fn refused(feed: &str) -> (Position, String) {
        match import_osv(feed.as_bytes(), opts()) {
            Err(ImportError::Malformed {
                position, reason, ..
            }) => (position, reason),
            other => panic!("expected a refusal, got {:?}", other.map(|s| s.info)),
        }
    }

    #[test]
    fn a_wrong_type_is_refused_with_the_records_json_path() {
        let bad = DEBIAN_CVE.replace(r#""name": "openssl"}"#, r#""name": 7}"#);
        let (pos, reason) = refused(&format!("{USN}\n{bad}"));
        assert_eq!(
            pos.path,
            "record 1 (DEBIAN-CVE-2024-1111): affected[0].package.name"
        );
        assert!(reason.contains("invalid type"), "{reason}");
    }

    #[test]
    fn events_without_exactly_one_known_key_are_skipped_and_a_record_without_id_is_refused() {
        let two = r#"{"id": "X", "affected": [{"package": {"ecosystem": "Debian:12", "name": "p"},
           "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0", "fixed": "1"}]}]}]}"#;
        let source = import_osv(two.as_bytes(), opts()).unwrap();
        assert_eq!(source.info.stats.advisories, 0);
        assert_eq!(source.info.stats.skipped, 1);
        let unknown_key = r#"{"id": "X", "affected": [{"package": {"ecosystem": "Debian:12", "name": "p"},
           "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixd": "1"}]}]}]}"#;
        let source = import_osv(unknown_key.as_bytes(), opts()).unwrap();
        assert_eq!(source.info.stats.skipped, 1);
        assert!(source.info.stats.warnings[0].contains("affected[0].ranges[0].events[1]"));
        let (pos, reason) = refused(r#"{"affected": []}"#);
        assert!(reason.contains("missing field `id`"), "{reason}");
        assert!(pos.path.starts_with("record 0"), "{pos}");
    }

    #[test]
    fn syntax_errors_and_truncation_are_refused_with_line_and_column() {
        let (pos, reason) = refused(&format!("{USN}\n{{\"id\": \"A\", \"affected\": [}}"));
        assert!(pos.line >= 2, "{pos}");
        assert_eq!(pos.path, "record 1");
        assert!(!reason.is_empty());
        let cut = &USN[..USN.len() - 10];
        let (pos, reason) = refused(cut);
        assert!(reason.contains("EOF"), "{reason} at {pos}");
        let (_, reason) = refused("   ");
        assert!(reason.contains("empty feed"), "{reason}");
        let (pos, _) = refused(&format!("[{USN}, 5]"));
        assert_eq!(pos.path, "record 1 (?)", "{pos}");
    }

    #[test]
    fn withdrawn_records_unknown_releases_and_bad_versions_are_skipped_and_counted() {
        let feed = r#"{"id": "W", "withdrawn": "2024-01-01T00:00:00Z", "affected": [{"package": {"ecosystem": "Debian:12", "name": "p"}, "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]}]}
{"id": "U", "affected": [{"package": {"ecosystem": "Debian:42", "name": "p"}, "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]}]}
{"id": "B", "affected": [{"package": {"ecosystem": "Debian:12", "name": "p"}, "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1:"}]}]}]}"#;
        let source = import_osv(feed.as_bytes(), opts()).unwrap();
        let st = &source.info.stats;
        assert_eq!(
            (st.withdrawn, st.unknown_releases, st.skipped, st.advisories),
            (1, 1, 1, 0)
        );
        assert!(
            st.warnings
                .iter()
                .any(|w| w.contains("record 2 (B): affected[0].ranges[0].events[1].fixed")),
            "{:?}",
            st.warnings
        );
    }
}
