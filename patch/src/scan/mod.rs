//! Scan inputs: pure parsers of the package tools' output, the scan model
//! a device reports, and deltas between two scans.
//!
//! The agent runs the tools (`dpkg-query`, `apt-get -s`, `rpm -qa`), reads
//! `/etc/os-release` and the reboot files, and hands the text here; nothing
//! in this module runs a process or reads a file.

pub mod apt_cache;
pub mod apt_sim;
pub mod delta;
pub mod dpkg_query;
pub mod legacy;
pub mod model;
pub mod os_release;
pub mod reboot;
pub mod report;
pub mod rpm_qa;

pub use apt_cache::{IndexEntry, apply_sizes, apt_cache_selectors, parse_apt_cache_show};
pub use apt_sim::{
    APT_SIMULATE_ARGS, AptPlan, AptRemoval, is_security_origin, parse_apt_simulation,
};
pub use delta::{DeltaError, PackageKey, ScanDelta};
pub use dpkg_query::{DPKG_QUERY_FORMAT, DpkgQueryOutput, parse_dpkg_query};
pub use model::{
    AptUpgrade, DpkgPackage, IndexState, LineProblem, PackageManager, PkgState, Problems,
    RebootState, RpmPackage, Scan,
};
pub use os_release::{OsInfo, parse_os_release};
pub use reboot::{dpkg_reboot_state, rpm_reboot_state};
pub use report::{
    MAX_REPORT_PLAIN_BYTES, PACKAGE_REPORT_FORMAT, PackageReport, REPORT_FORMATS, ScanDeferred,
};
pub use rpm_qa::{RPM_QUERY_FORMAT, RpmQueryOutput, parse_rpm_query};
