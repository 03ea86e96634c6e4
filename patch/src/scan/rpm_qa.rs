//! `rpm -qa --qf FORMAT` output: installed RPM packages with epoch,
//! version, release, architecture and source RPM.

use crate::scan::model::{Problems, RpmPackage};
use crate::version::RpmEvr;

/// The `--qf` argument the agent passes to `rpm -qa`. rpm prints `(none)`
/// for a missing tag.
pub const RPM_QUERY_FORMAT: &str =
    "%{NAME}\\t%{EPOCH}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{SOURCERPM}\\n";

/// What `rpm -qa` reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpmQueryOutput {
    pub packages: Vec<RpmPackage>,
    /// `gpg-pubkey` pseudo-packages (imported signing keys), not software.
    pub pubkeys: u32,
    pub problems: Problems,
}

const TOOL: &str = "rpm";
const NONE: &str = "(none)";

/// Parses the output of `rpm -qa --qf` [`RPM_QUERY_FORMAT`].
pub fn parse_rpm_query(text: &str) -> RpmQueryOutput {
    let mut out = RpmQueryOutput::default();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 6 {
            out.problems.push(
                TOOL,
                number,
                format!("expected 6 tab-separated fields, found {}", f.len()),
            );
            continue;
        }
        let (name, epoch, version, release, arch, source) = (f[0], f[1], f[2], f[3], f[4], f[5]);
        if name == "gpg-pubkey" {
            out.pubkeys = out.pubkeys.saturating_add(1);
            continue;
        }
        if name.is_empty() || version.is_empty() || version == NONE {
            out.problems.push(
                TOOL,
                number,
                format!("package {name:?} has no name or version"),
            );
            continue;
        }
        let epoch = if epoch == NONE || epoch.is_empty() {
            None
        } else {
            match epoch.parse::<u64>() {
                Ok(e) => Some(e),
                Err(_) => {
                    out.problems.push(
                        TOOL,
                        number,
                        format!("package {name}: epoch {epoch:?} is not a number"),
                    );
                    continue;
                }
            }
        };
        let release = (release != NONE && !release.is_empty()).then(|| release.to_string());
        out.packages.push(RpmPackage {
            name: name.to_string(),
            evr: RpmEvr {
                epoch,
                version: version.to_string(),
                release,
            },
            arch: if arch == NONE {
                String::new()
            } else {
                arch.to_string()
            },
            source_rpm: (source != NONE && !source.is_empty()).then(|| source.to_string()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_with_and_without_epochs_are_read_and_pubkeys_set_apart() {
        let text = "openssl-libs\t1\t3.0.7\t27.el9\tx86_64\topenssl-3.0.7-27.el9.src.rpm\n\
                    bash\t(none)\t5.1.8\t9.el9\tx86_64\tbash-5.1.8-9.el9.src.rpm\n\
                    gpg-pubkey\t(none)\tfd431d51\t4ae0493b\t(none)\t(none)\n\
                    kernel-core\t(none)\t5.14.0\t362.8.1.el9_3\tx86_64\tkernel-5.14.0-362.8.1.el9_3.src.rpm\n";
        let out = parse_rpm_query(text);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.pubkeys, 1);
        assert_eq!(out.packages.len(), 3);
        assert_eq!(out.packages[0].evr.to_string(), "1:3.0.7-27.el9");
        assert_eq!(out.packages[1].evr.epoch, None);
        assert_eq!(
            out.packages[2].source_rpm.as_deref(),
            Some("kernel-5.14.0-362.8.1.el9_3.src.rpm")
        );
    }

    #[test]
    fn malformed_lines_are_reported() {
        let out = parse_rpm_query("a\tb\n\tx\t1\t1\tx86_64\t(none)\nz\tE\t1\t1\tx86_64\t(none)\n");
        assert_eq!(out.packages.len(), 0);
        assert_eq!(out.problems.total, 3);
    }
}
