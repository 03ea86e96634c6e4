//! Version orders: Debian's (dpkg) and RPM's (rpmvercmp), exact to the
//! tools' own implementations, compared with them on this machine's real
//! package data by `tests/real_versions.rs`.

pub mod dpkg;
pub mod rpm;

pub use dpkg::{DebVersion, VersionError, compare_versions};
pub use rpm::{RpmEvr, rpmvercmp};
