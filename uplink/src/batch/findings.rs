//! Batch format 5: what each device misses and which CVEs it is exposed
//! to ([`PatchFindings`]), so central answers "which of my customers are
//! exposed to CVE-X" and shows a device's missing patches without asking
//! the site.
//!
//! In memory a finding holds plain strings; on the wire every string of
//! the section (source packages, versions, CVE ids) is sent once in a
//! per-batch dictionary and referenced by index ([`WireFindings`]): a
//! fleet on one release misses the same patches and shares most CVE ids,
//! so the dictionary is shared by every device of the batch. Measured in
//! [`tests::a_typical_device_costs_3_kib_alone_and_tens_of_bytes_in_a_fleet`].
//!
//! Decoding is bounded like the rest of the batch: every list by its
//! [`Limit`], every string index checked against the dictionary, and the
//! bytes the strings expand into (each reference becomes its own `String`)
//! against [`Limit::ExpandedFindingBytes`] *before* they are built.
//!
//! Owns only this section's types and codec; no I/O.

use outpost_proto::DeviceId;
use serde::{Deserialize, Serialize};

use super::BatchError;
use super::limits::{self, Limit, OverLimit};

/// What one device misses and is exposed to, as its site last assessed it
/// (a snapshot: the newest `as_of_ms` replaces the device's findings at
/// central).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchFindings {
    pub device: DeviceId,
    /// When the site assessed the device (appliance clock).
    pub as_of_ms: u64,
    /// Missing patches (apt's candidate upgrades per source package).
    pub patches: Vec<MissingPatchEntry>,
    /// Vulnerable CVEs (fixable and open, not `unimportant`), grouped by
    /// (source package, fixed version, severity).
    pub vulns: Vec<VulnGroup>,
}

/// A missing patch: an upgrade apt offers for an installed source package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingPatchEntry {
    pub source: String,
    /// Installed source version.
    pub installed: String,
    /// The candidate's source version (`None`: binaries versioned apart).
    pub candidate: Option<String>,
    /// Binary packages the upgrade touches.
    pub binaries: u32,
    /// Offered by a security pocket.
    pub security: bool,
    /// Highest severity of the CVEs it fixes (`None` without CVEs).
    pub severity: Option<FindingSeverity>,
    /// CVEs the candidate fixes (not unimportant ones).
    pub cves: Vec<String>,
    pub reboot_expected: bool,
    /// When the site first saw the device missing it (appliance clock).
    pub first_seen_ms: u64,
}

/// CVEs of one installed source package that share a fixed version and a
/// severity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VulnGroup {
    pub source: String,
    /// Installed source version.
    pub installed: String,
    /// The release's fixed version; `None`: open (no fix yet).
    pub fixed: Option<String>,
    /// A candidate upgrade of the device reaches the fix (fixable now);
    /// fixable but `false`: the fix is not in its repositories.
    pub fix_available: bool,
    pub severity: FindingSeverity,
    pub cves: Vec<String>,
}

impl VulnGroup {
    /// No fix in the release yet.
    pub fn is_open(&self) -> bool {
        self.fixed.is_none()
    }
}

/// Severity of a finding, as the batch carries it (the batch's own type;
/// new values only at the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FindingSeverity {
    Unimportant,
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl FindingSeverity {
    pub const ALL: [FindingSeverity; 6] = [
        FindingSeverity::Unimportant,
        FindingSeverity::Unknown,
        FindingSeverity::Low,
        FindingSeverity::Medium,
        FindingSeverity::High,
        FindingSeverity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingSeverity::Unimportant => "unimportant",
            FindingSeverity::Unknown => "unknown",
            FindingSeverity::Low => "low",
            FindingSeverity::Medium => "medium",
            FindingSeverity::High => "high",
            FindingSeverity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<FindingSeverity> {
        FindingSeverity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl PatchFindings {
    /// What the strings of these findings cost once decoded (each
    /// reference its own `String`), as [`Limit::ExpandedFindingBytes`]
    /// counts them.
    pub fn expanded_bytes(&self) -> u64 {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, |s| s.len() as u64);
        let list = |v: &[String]| v.iter().map(|s| s.len() as u64).sum::<u64>();
        let p: u64 = self
            .patches
            .iter()
            .map(|p| {
                (p.source.len() + p.installed.len()) as u64 + opt(&p.candidate) + list(&p.cves)
            })
            .sum();
        let v: u64 = self
            .vulns
            .iter()
            .map(|v| (v.source.len() + v.installed.len()) as u64 + opt(&v.fixed) + list(&v.cves))
            .sum();
        p + v
    }

    /// Checks one device's findings against the per-device limits.
    pub fn check_limits(&self) -> Result<(), OverLimit> {
        Limit::FindingEntries.check((self.patches.len() + self.vulns.len()) as u64)?;
        for c in self
            .patches
            .iter()
            .map(|p| &p.cves)
            .chain(self.vulns.iter().map(|v| &v.cves))
        {
            Limit::FindingCves.check(c.len() as u64)?;
        }
        Ok(())
    }
}

/// Checks a batch's findings: per device, and the expanded bytes of all.
pub fn check_all(all: &[PatchFindings]) -> Result<(), OverLimit> {
    Limit::PatchFindings.check(all.len() as u64)?;
    let mut total = 0u64;
    for f in all {
        f.check_limits()?;
        total += f.expanded_bytes();
    }
    Limit::ExpandedFindingBytes.check(total)
}

/// The format 5 section: the dictionary, then each device's findings by
/// index.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct WireFindings {
    #[serde(deserialize_with = "limits::de::finding_strings")]
    strings: Vec<String>,
    #[serde(deserialize_with = "limits::de::patch_findings")]
    devices: Vec<WireDevice>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireDevice {
    device: DeviceId,
    as_of_ms: u64,
    #[serde(deserialize_with = "limits::de::finding_entries")]
    patches: Vec<WirePatch>,
    #[serde(deserialize_with = "limits::de::finding_entries")]
    vulns: Vec<WireVuln>,
}

/// Flags of a [`WirePatch`].
const SECURITY: u8 = 1;
const REBOOT: u8 = 2;

#[derive(Debug, Serialize, Deserialize)]
struct WirePatch {
    source: u32,
    installed: u32,
    candidate: Option<u32>,
    binaries: u32,
    flags: u8,
    severity: Option<FindingSeverity>,
    #[serde(deserialize_with = "limits::de::finding_cves")]
    cves: Vec<u32>,
    first_seen_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireVuln {
    source: u32,
    installed: u32,
    fixed: Option<u32>,
    fix_available: bool,
    severity: FindingSeverity,
    #[serde(deserialize_with = "limits::de::finding_cves")]
    cves: Vec<u32>,
}

/// Interns strings into the dictionary.
#[derive(Default)]
struct Dict<'a> {
    index: std::collections::HashMap<&'a str, u32>,
    strings: Vec<String>,
}

impl<'a> Dict<'a> {
    fn id(&mut self, s: &'a str) -> u32 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = self.strings.len() as u32;
        self.strings.push(s.to_string());
        self.index.insert(s, i);
        i
    }

    fn ids(&mut self, v: &'a [String]) -> Vec<u32> {
        v.iter().map(|s| self.id(s)).collect()
    }
}

impl WireFindings {
    pub(super) fn encode(all: &[PatchFindings]) -> WireFindings {
        let mut d = Dict::default();
        let devices = all
            .iter()
            .map(|f| WireDevice {
                device: f.device,
                as_of_ms: f.as_of_ms,
                patches: f
                    .patches
                    .iter()
                    .map(|p| WirePatch {
                        source: d.id(&p.source),
                        installed: d.id(&p.installed),
                        candidate: p.candidate.as_deref().map(|c| d.id(c)),
                        binaries: p.binaries,
                        flags: if p.security { SECURITY } else { 0 }
                            | if p.reboot_expected { REBOOT } else { 0 },
                        severity: p.severity,
                        cves: d.ids(&p.cves),
                        first_seen_ms: p.first_seen_ms,
                    })
                    .collect(),
                vulns: f
                    .vulns
                    .iter()
                    .map(|v| WireVuln {
                        source: d.id(&v.source),
                        installed: d.id(&v.installed),
                        fixed: v.fixed.as_deref().map(|c| d.id(c)),
                        fix_available: v.fix_available,
                        severity: v.severity,
                        cves: d.ids(&v.cves),
                    })
                    .collect(),
            })
            .collect();
        WireFindings {
            strings: d.strings,
            devices,
        }
    }

    /// The findings, every index checked and the expanded bytes bounded
    /// before the strings are copied.
    pub(super) fn decode(self) -> Result<Vec<PatchFindings>, BatchError> {
        let WireFindings { strings, devices } = self;
        let len = |i: u32| -> Result<u64, BatchError> {
            strings
                .get(i as usize)
                .map(|s| s.len() as u64)
                .ok_or_else(|| {
                    BatchError::Malformed(format!(
                        "finding string {i} of a dictionary of {}",
                        strings.len()
                    ))
                })
        };
        // First pass: indices valid, expanded size within the limit.
        let mut total = 0u64;
        for d in &devices {
            for p in &d.patches {
                total += len(p.source)? + len(p.installed)?;
                if let Some(c) = p.candidate {
                    total += len(c)?;
                }
                for c in &p.cves {
                    total += len(*c)?;
                }
            }
            for v in &d.vulns {
                total += len(v.source)? + len(v.installed)?;
                if let Some(c) = v.fixed {
                    total += len(c)?;
                }
                for c in &v.cves {
                    total += len(*c)?;
                }
            }
            Limit::ExpandedFindingBytes.check(total)?;
        }
        // Every index is valid: `s` cannot miss.
        let s = |i: u32| strings.get(i as usize).cloned().unwrap_or_default();
        Ok(devices
            .into_iter()
            .map(|d| PatchFindings {
                device: d.device,
                as_of_ms: d.as_of_ms,
                patches: d
                    .patches
                    .into_iter()
                    .map(|p| MissingPatchEntry {
                        source: s(p.source),
                        installed: s(p.installed),
                        candidate: p.candidate.map(s),
                        binaries: p.binaries,
                        security: p.flags & SECURITY != 0,
                        severity: p.severity,
                        cves: p.cves.into_iter().map(s).collect(),
                        reboot_expected: p.flags & REBOOT != 0,
                        first_seen_ms: p.first_seen_ms,
                    })
                    .collect(),
                vulns: d
                    .vulns
                    .into_iter()
                    .map(|v| VulnGroup {
                        source: s(v.source),
                        installed: s(v.installed),
                        fixed: v.fixed.map(s),
                        fix_available: v.fix_available,
                        severity: v.severity,
                        cves: v.cves.into_iter().map(s).collect(),
                    })
                    .collect(),
            })
            .collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::batch::{self, MAX_DECODED_BYTES};

    /// A device of a typical fleet: `missing` patches of which a third
    /// fix CVEs, and `vulns` CVE groups over packages `pkg-0..`, with CVE
    /// ids shared across devices of the same release (`offset` shifts
    /// which).
    pub fn typical_device(
        device: u64,
        missing: usize,
        vulns: usize,
        offset: usize,
    ) -> PatchFindings {
        let cve = |i: usize| {
            format!(
                "CVE-20{}-{}",
                20 + i % 6,
                10_000 + (i * 37 + offset) % 40_000
            )
        };
        PatchFindings {
            device: DeviceId(device),
            as_of_ms: 1_700_000_000_000 + device,
            patches: (0..missing)
                .map(|i| MissingPatchEntry {
                    source: format!("pkg-{i}"),
                    installed: format!("1.{i}.2-1+deb12u{}", i % 3),
                    candidate: Some(format!("1.{i}.2-1+deb12u{}", i % 3 + 1)),
                    binaries: 1 + (i % 4) as u32,
                    security: i % 3 == 0,
                    severity: (i % 3 == 0).then_some(FindingSeverity::High),
                    cves: if i % 3 == 0 {
                        vec![cve(i), cve(i + 1)]
                    } else {
                        vec![]
                    },
                    reboot_expected: i == 0,
                    first_seen_ms: 1_699_000_000_000,
                })
                .collect(),
            vulns: (0..vulns)
                .map(|i| VulnGroup {
                    source: format!("pkg-{}", i * 3),
                    installed: format!("1.{}.2-1+deb12u{}", i * 3, (i * 3) % 3),
                    fixed: (i % 4 != 0).then(|| format!("1.{}.2-1+deb12u9", i * 3)),
                    fix_available: i % 4 == 1,
                    severity: FindingSeverity::ALL[i % 6],
                    cves: (0..3).map(|k| cve(i * 3 + k)).collect(),
                })
                .collect(),
        }
    }

    fn with_findings(f: Vec<PatchFindings>) -> batch::SiteBatch {
        let mut b = batch::tests::sample_batch(5);
        b.patch_findings = f;
        b
    }

    #[test]
    fn findings_round_trip_through_the_dictionary() {
        let b = with_findings(vec![
            typical_device(42, 30, 100, 0),
            typical_device(43, 2, 0, 5),
        ]);
        assert_eq!(batch::format_of(&b), 5);
        let back = batch::decode(&batch::encode(&b, 3).unwrap()).unwrap();
        assert_eq!(back, b);
    }

    /// The measurement the section was designed against: a 1,500-package
    /// host with ~100 findings (30 missing patches, 100 CVE groups of 3)
    /// costs this many bytes per device, alone and among 100 devices of
    /// the same release (printed; `cargo test -- --nocapture`).
    #[test]
    fn a_typical_device_costs_3_kib_alone_and_tens_of_bytes_in_a_fleet() {
        let size = |devices: Vec<PatchFindings>| {
            let b = with_findings(devices);
            let plain = batch::encode(&with_findings(vec![]), batch::DEFAULT_ZSTD_LEVEL)
                .unwrap()
                .len();
            let bytes = batch::encode(&b, batch::DEFAULT_ZSTD_LEVEL).unwrap();
            let raw = zstd::bulk::decompress(&bytes, MAX_DECODED_BYTES)
                .unwrap()
                .len();
            (bytes.len() - plain, raw)
        };
        let (one, one_raw) = size(vec![typical_device(1, 30, 100, 0)]);
        let fleet: Vec<_> = (0..100)
            .map(|d| typical_device(d, 30, 100, (d % 2) as usize))
            .collect();
        let (hundred, hundred_raw) = size(fleet);
        println!(
            "RESULT patch_findings one_device_bytes={one} one_device_raw={one_raw} \
             per_device_of_100={} raw_per_device_of_100={}",
            hundred / 100,
            hundred_raw / 100
        );
        assert!(one < 4096, "one device {one} bytes");
        assert!(
            hundred / 100 < 1024,
            "{} bytes per device of 100",
            hundred / 100
        );
    }

    #[test]
    fn an_index_outside_the_dictionary_is_malformed() {
        let mut w = WireFindings::encode(&[typical_device(1, 3, 3, 0)]);
        w.strings.truncate(2);
        assert!(matches!(w.decode(), Err(BatchError::Malformed(_))));
    }

    /// One short string referenced by far more entries than the bytes of
    /// the batch would suggest: refused on the expanded size before the
    /// strings are copied.
    #[test]
    fn references_expanding_beyond_the_limit_are_refused_before_copying() {
        let long = "x".repeat(64 * 1024);
        let w = WireFindings {
            strings: vec![long],
            devices: vec![WireDevice {
                device: DeviceId(1),
                as_of_ms: 1,
                patches: vec![],
                vulns: (0..limits::MAX_FINDING_ENTRIES / 4)
                    .map(|_| WireVuln {
                        source: 0,
                        installed: 0,
                        fixed: None,
                        fix_available: false,
                        severity: FindingSeverity::Low,
                        cves: vec![0; 8],
                    })
                    .collect(),
            }],
        };
        match w.decode() {
            Err(BatchError::OverLimit(o)) => assert_eq!(o.limit, Limit::ExpandedFindingBytes),
            other => panic!("expected the expanded-bytes limit, got {other:?}"),
        }
    }

    #[test]
    fn severities_keep_their_names_and_order() {
        for s in FindingSeverity::ALL {
            assert_eq!(FindingSeverity::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!(FindingSeverity::High > FindingSeverity::Medium);
    }
}
