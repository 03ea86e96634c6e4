//! Download sizes of apt's candidates: the arguments of one `apt-cache
//! show` for every upgrade of a scan, and the parser of its output (the
//! `Package`, `Version`, `Architecture` and `Size` fields of each
//! paragraph: the package index's own entry of that exact version).
//!
//! Pure: the agent runs the tool. Owns nothing else of the scan.

use crate::scan::model::{AptUpgrade, Problems};

/// The selectors of one `apt-cache show` call: `name:arch=version` for an
/// upgrade of a given foreign or native architecture, `name=version` when
/// apt printed none or `all` (apt resolves `all` packages by bare name).
pub fn apt_cache_selectors(upgrades: &[AptUpgrade]) -> Vec<String> {
    upgrades
        .iter()
        .map(|u| match u.arch.as_deref() {
            Some(a) if a != "all" && !a.is_empty() => {
                format!("{}:{}={}", u.name, a, u.to.as_str())
            }
            _ => format!("{}={}", u.name, u.to.as_str()),
        })
        .collect()
}

/// One paragraph of `apt-cache show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub package: String,
    pub version: String,
    pub arch: String,
    pub size_bytes: u64,
}

/// Reads the paragraphs of `apt-cache show` output; a paragraph without
/// a usable `Size` is counted in the problems (line of its `Package`).
pub fn parse_apt_cache_show(text: &str) -> (Vec<IndexEntry>, Problems) {
    let mut out = Vec::new();
    let mut problems = Problems::default();
    let mut cur: [Option<&str>; 4] = [None; 4];
    let mut start = 0usize;
    let mut flush = |cur: &mut [Option<&str>; 4], line: usize, problems: &mut Problems| {
        if let [Some(p), Some(v), a, s] = *cur {
            match s.map(|s| s.parse::<u64>()) {
                Some(Ok(n)) => out.push(IndexEntry {
                    package: p.to_string(),
                    version: v.to_string(),
                    arch: a.unwrap_or("").to_string(),
                    size_bytes: n,
                }),
                Some(Err(_)) => {
                    problems.push("apt-cache", line, format!("{p} {v}: Size is not a number"))
                }
                None => problems.push("apt-cache", line, format!("{p} {v}: no Size field")),
            }
        }
        *cur = [None; 4];
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            flush(&mut cur, start, &mut problems);
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let slot = match k {
            "Package" => {
                start = i + 1;
                0
            }
            "Version" => 1,
            "Architecture" => 2,
            "Size" => 3,
            _ => continue,
        };
        cur[slot] = Some(v);
    }
    flush(&mut cur, start, &mut problems);
    (out, problems)
}

/// Sets each upgrade's `size_bytes` from the index entries of its exact
/// candidate (name, version, architecture; an upgrade without an
/// architecture takes the first entry of its name and version). Returns
/// how many upgrades are left without a size.
pub fn apply_sizes(upgrades: &mut [AptUpgrade], entries: &[IndexEntry]) -> usize {
    let mut unknown = 0;
    for u in upgrades.iter_mut() {
        let hit = entries.iter().find(|e| {
            e.package == u.name
                && e.version == u.to.as_str()
                && u.arch.as_deref().is_none_or(|a| a == e.arch)
        });
        u.size_bytes = hit.map(|e| e.size_bytes);
        if u.size_bytes.is_none() {
            unknown += 1;
        }
    }
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::DebVersion;

    fn up(name: &str, arch: Option<&str>, to: &str) -> AptUpgrade {
        AptUpgrade {
            name: name.into(),
            arch: arch.map(str::to_string),
            from: None,
            to: DebVersion::parse(to).unwrap(),
            origins: vec![],
            security: false,
            size_bytes: None,
        }
    }

    const SHOW: &str = "Package: bash
Version: 5.2.15-2+b13
Architecture: amd64
Description: GNU Bourne Again SHell
 with a continuation line: Size: 1
Size: 1490652

Package: libc6
Version: 2.36-9+deb12u7
Architecture: i386
Size: 2800000

Package: libc6
Version: 2.36-9+deb12u7
Architecture: amd64
Size: 2900000

Package: tzdata
Version: 2026f-0+deb12u1
Architecture: all
Size: 256000

Package: broken
Version: 1
Architecture: all
Size: many
";

    #[test]
    fn each_upgrade_gets_the_size_of_its_exact_candidate_and_architecture() {
        let (entries, problems) = parse_apt_cache_show(SHOW);
        assert_eq!(entries.len(), 4);
        assert_eq!(problems.total, 1);
        assert_eq!(problems.first[0].line, 23);
        let mut ups = vec![
            up("bash", Some("amd64"), "5.2.15-2+b13"),
            up("libc6", Some("amd64"), "2.36-9+deb12u7"),
            up("libc6", Some("i386"), "2.36-9+deb12u7"),
            up("tzdata", Some("all"), "2026f-0+deb12u1"),
            up("bash", None, "9.9"),
        ];
        assert_eq!(apply_sizes(&mut ups, &entries), 1);
        let sizes: Vec<Option<u64>> = ups.iter().map(|u| u.size_bytes).collect();
        assert_eq!(
            sizes,
            [
                Some(1_490_652),
                Some(2_900_000),
                Some(2_800_000),
                Some(256_000),
                None
            ]
        );
    }

    #[test]
    fn selectors_name_the_architecture_except_for_all() {
        let ups = [
            up("bash", Some("amd64"), "5.2"),
            up("tzdata", Some("all"), "1:2026f"),
            up("x", None, "1"),
        ];
        assert_eq!(
            apt_cache_selectors(&ups),
            ["bash:amd64=5.2", "tzdata=1:2026f", "x=1"]
        );
    }
}
