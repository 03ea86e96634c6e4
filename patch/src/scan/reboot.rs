//! Whether a device waits for a reboot: Debian/Ubuntu's
//! `/var/run/reboot-required` (and `.pkgs`), and the running kernel
//! compared with the newest installed one.
//!
//! The caller reads the files and `uname -r`; this only decides.

use crate::scan::model::{DpkgPackage, RebootState, RpmPackage};

/// Decides the reboot state of a dpkg system.
///
/// `required_file`: `/var/run/reboot-required` exists; `pkgs_file`: the
/// content of `/var/run/reboot-required.pkgs`; `running_kernel`: `uname -r`.
/// The kernel is pending when an installed `linux-image-<release>` package
/// matches the running release and a newer one (by package version) is
/// installed; with no package for the running kernel (a custom or a
/// container's kernel) nothing is concluded.
pub fn dpkg_reboot_state(
    required_file: bool,
    pkgs_file: Option<&str>,
    running_kernel: Option<&str>,
    installed: &[DpkgPackage],
) -> RebootState {
    let mut packages: Vec<String> = pkgs_file
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    packages.sort();
    packages.dedup();
    let kernels: Vec<(&str, &DpkgPackage)> = installed
        .iter()
        .filter_map(|p| {
            let release = p.name.strip_prefix("linux-image-")?;
            let release = release.strip_suffix("-unsigned").unwrap_or(release);
            let real = release.starts_with(|c: char| c.is_ascii_digit())
                && !release.ends_with("-dbg")
                && !release.ends_with("-dbgsym");
            real.then_some((release, p))
        })
        .collect();
    let newest = kernels
        .iter()
        .max_by(|a, b| a.1.version.cmp(&b.1.version).then_with(|| a.0.cmp(b.0)))
        .map(|(r, _)| r.to_string());
    let running = running_kernel.map(str::trim).filter(|r| !r.is_empty());
    let kernel_pending = match (running, &newest) {
        (Some(r), Some(n)) => kernels.iter().any(|(k, _)| *k == r) && r != n,
        _ => false,
    };
    RebootState {
        required: required_file || kernel_pending,
        packages,
        running_kernel: running.map(str::to_string),
        newest_kernel: newest,
        kernel_pending,
    }
}

/// Decides the reboot state of an RPM system: the running kernel
/// (`uname -r` = `version-release.arch`) against the newest installed
/// `kernel-core` (or `kernel`) package.
pub fn rpm_reboot_state(running_kernel: Option<&str>, installed: &[RpmPackage]) -> RebootState {
    let kernels: Vec<(String, &RpmPackage)> = installed
        .iter()
        .filter(|p| p.name == "kernel-core" || p.name == "kernel")
        .map(|p| {
            let release = p.evr.release.as_deref().unwrap_or("");
            (format!("{}-{}.{}", p.evr.version, release, p.arch), p)
        })
        .collect();
    let newest = kernels
        .iter()
        .max_by(|a, b| a.1.evr.compare(&b.1.evr))
        .map(|(r, _)| r.clone());
    let running = running_kernel.map(str::trim).filter(|r| !r.is_empty());
    let kernel_pending = match (running, &newest) {
        (Some(r), Some(n)) => kernels.iter().any(|(k, _)| k == r) && r != n,
        _ => false,
    };
    RebootState {
        required: kernel_pending,
        packages: Vec::new(),
        running_kernel: running.map(str::to_string),
        newest_kernel: newest,
        kernel_pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::model::PkgState;
    use crate::version::{DebVersion, RpmEvr};

    fn deb(name: &str, version: &str) -> DpkgPackage {
        DpkgPackage {
            name: name.into(),
            arch: "amd64".into(),
            version: DebVersion::parse(version).unwrap(),
            source: Some("linux-signed-amd64".into()),
            source_version: None,
            state: PkgState::Installed,
            held: false,
        }
    }

    #[test]
    fn an_older_running_kernel_than_the_newest_installed_requires_a_reboot() {
        let installed = [
            deb("linux-image-6.1.0-17-amd64", "6.1.69-1"),
            deb("linux-image-6.1.0-18-amd64", "6.1.76-1"),
            deb("linux-image-amd64", "6.1.76-1"),
        ];
        let s = dpkg_reboot_state(false, None, Some("6.1.0-17-amd64\n"), &installed);
        assert!(s.kernel_pending && s.required);
        assert_eq!(s.newest_kernel.as_deref(), Some("6.1.0-18-amd64"));
        let s = dpkg_reboot_state(false, None, Some("6.1.0-18-amd64"), &installed);
        assert!(!s.kernel_pending && !s.required);
    }

    #[test]
    fn a_kernel_without_a_package_concludes_nothing() {
        let installed = [deb("linux-image-6.1.0-18-amd64", "6.1.76-1")];
        let s = dpkg_reboot_state(false, None, Some("6.18.44-custom"), &installed);
        assert!(!s.kernel_pending && !s.required);
    }

    #[test]
    fn the_reboot_required_file_and_its_package_list_are_reported() {
        let s = dpkg_reboot_state(true, Some("libc6\nlibssl3\nlibc6\n\n"), None, &[]);
        assert!(s.required && !s.kernel_pending);
        assert_eq!(s.packages, vec!["libc6", "libssl3"]);
    }

    #[test]
    fn rpm_kernels_are_compared_by_evr() {
        let k = |v: &str| RpmPackage {
            name: "kernel-core".into(),
            evr: RpmEvr::parse(v),
            arch: "x86_64".into(),
            source_rpm: None,
        };
        let installed = [k("5.14.0-362.8.1.el9_3"), k("5.14.0-427.13.1.el9_4")];
        let s = rpm_reboot_state(Some("5.14.0-362.8.1.el9_3.x86_64"), &installed);
        assert!(s.kernel_pending);
        assert_eq!(
            s.newest_kernel.as_deref(),
            Some("5.14.0-427.13.1.el9_4.x86_64")
        );
        assert!(!rpm_reboot_state(Some("5.14.0-427.13.1.el9_4.x86_64"), &installed).required);
    }
}
