//! `dpkg-query -W -f FORMAT` output: installed binary packages with their
//! source package and source version, and holds.
//!
//! The format puts one package per line, fields separated by tabs (none of
//! the fields can contain a tab or a newline: package names, versions and
//! architectures are restricted by dpkg).

use crate::scan::model::{DpkgPackage, PkgState, Problems};
use crate::version::DebVersion;

/// The `-f` argument the agent passes to `dpkg-query -W`.
pub const DPKG_QUERY_FORMAT: &str = "${db:Status-Abbrev}\t${Package}\t${Architecture}\t${Version}\t${source:Package}\t${source:Version}\n";

/// What `dpkg-query` reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DpkgQueryOutput {
    /// Installed packages (in any installed state), in output order.
    pub packages: Vec<DpkgPackage>,
    /// Packages known to dpkg but not installed (`config-files`,
    /// `not-installed`): not part of the scan.
    pub not_installed: u32,
    /// Lines skipped: wrong field count, unknown status, bad version.
    pub problems: Problems,
}

const TOOL: &str = "dpkg-query";

/// Parses the output of `dpkg-query -W -f` [`DPKG_QUERY_FORMAT`].
pub fn parse_dpkg_query(text: &str) -> DpkgQueryOutput {
    let mut out = DpkgQueryOutput::default();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 6 {
            out.problems.push(
                TOOL,
                number,
                format!("expected 6 tab-separated fields, found {}", fields.len()),
            );
            continue;
        }
        let [status, name, arch, version, source, source_version] = [
            fields[0], fields[1], fields[2], fields[3], fields[4], fields[5],
        ];
        let status = status.as_bytes();
        if status.len() < 2 {
            out.problems.push(
                TOOL,
                number,
                format!("status {:?} is not dpkg's abbreviation", fields[0]),
            );
            continue;
        }
        let held = match status[0] {
            b'h' => true,
            b'u' | b'i' | b'r' | b'p' => false,
            _ => {
                out.problems.push(
                    TOOL,
                    number,
                    format!("unknown selection in status {:?}", fields[0]),
                );
                continue;
            }
        };
        let state = match status[1] {
            b'i' => PkgState::Installed,
            b't' => PkgState::TriggersPending,
            b'W' => PkgState::TriggersAwaited,
            b'F' => PkgState::HalfConfigured,
            b'U' => PkgState::Unpacked,
            b'H' => PkgState::HalfInstalled,
            b'n' | b'c' => {
                out.not_installed = out.not_installed.saturating_add(1);
                continue;
            }
            _ => {
                out.problems.push(
                    TOOL,
                    number,
                    format!("unknown state in status {:?}", fields[0]),
                );
                continue;
            }
        };
        if name.is_empty() {
            out.problems.push(TOOL, number, "empty package name");
            continue;
        }
        let version_parsed = match DebVersion::parse(version) {
            Ok(v) => v,
            Err(e) => {
                out.problems.push(
                    TOOL,
                    number,
                    format!("package {name}: version {version:?}: {e}"),
                );
                continue;
            }
        };
        let source = if source.is_empty() || source == name {
            None
        } else {
            Some(source.to_string())
        };
        let source_version = if source_version.is_empty() || source_version == version {
            None
        } else {
            match DebVersion::parse(source_version) {
                Ok(v) => Some(v),
                Err(e) => {
                    out.problems.push(
                        TOOL,
                        number,
                        format!("package {name}: source version {source_version:?}: {e}"),
                    );
                    continue;
                }
            }
        };
        out.packages.push(DpkgPackage {
            name: name.to_string(),
            arch: arch.to_string(),
            version: version_parsed,
            source,
            source_version,
            state,
            held,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_packages_with_sources_and_holds_are_read() {
        let text = "ii \tbash\tamd64\t5.2.15-2+b8\tbash\t5.2.15-2\n\
                    hi \tlibssl3\tamd64\t3.0.15-1~deb12u1\topenssl\t3.0.15-1~deb12u1\n\
                    ii \tadduser\tall\t3.134\tadduser\t3.134\n\
                    rc \told-thing\tamd64\t1.0\told-thing\t1.0\n\
                    iU \thalf\tamd64\t1:2.0-1\thalf-src\t1:2.0-1\n";
        let out = parse_dpkg_query(text);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.not_installed, 1);
        assert_eq!(out.packages.len(), 4);
        let bash = &out.packages[0];
        assert_eq!(
            (bash.source_name(), bash.source_version().as_str()),
            ("bash", "5.2.15-2")
        );
        assert_eq!(bash.source, None);
        let ssl = &out.packages[1];
        assert!(ssl.held);
        assert_eq!(
            (ssl.source_name(), ssl.source_version().as_str()),
            ("openssl", "3.0.15-1~deb12u1")
        );
        assert_eq!(ssl.source_version, None);
        assert_eq!(out.packages[3].state, PkgState::Unpacked);
    }

    #[test]
    fn unparsable_lines_are_skipped_counted_and_reported_with_their_line() {
        let text = "ii \tgood\tamd64\t1.0-1\tgood\t1.0-1\n\
                    ii \tbad\tamd64\t1.0 -1\tbad\t1.0-1\n\
                    ii \ttoo\tfew\n\
                    zz \todd\tamd64\t1.0\todd\t1.0\n\
                    ii \tbadsrc\tamd64\t1.0\tsrc\t:1\n";
        let out = parse_dpkg_query(text);
        assert_eq!(out.packages.len(), 1);
        assert_eq!(out.problems.total, 4);
        let lines: Vec<u32> = out.problems.first.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
        assert!(
            out.problems.first[0].reason.contains("embedded spaces"),
            "{:?}",
            out.problems.first[0]
        );
    }

    #[test]
    fn only_the_first_problems_are_kept_but_all_are_counted() {
        let text = "nonsense\n".repeat(100);
        let out = parse_dpkg_query(&text);
        assert_eq!(out.problems.total, 100);
        assert_eq!(out.problems.first.len(), Problems::KEPT);
    }

    #[test]
    fn this_machines_dpkg_database_parses_without_problems() {
        let Ok(out) = std::process::Command::new("dpkg-query")
            .args(["-W", "-f", DPKG_QUERY_FORMAT])
            .output()
        else {
            eprintln!("SKIPPED: dpkg-query is not installed");
            return;
        };
        let parsed = parse_dpkg_query(&String::from_utf8_lossy(&out.stdout));
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert!(!parsed.packages.is_empty());
    }
}
