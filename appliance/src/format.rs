//! The stored-format marker of the appliance's data directory
//! (`DATA/format`): which version of the on-disk layout (database tables
//! and key encodings, files) the data was last written with.
//!
//! An upgrade in place (a newer `outpost` package over an older data
//! directory) starts, upgrades what needs upgrading and raises the marker;
//! a downgrade (an older `outpost` over data a newer one wrote) is refused
//! before anything is opened, with a message saying what to do, because an
//! older binary could misread or damage data it does not know.
//!
//! Owns only the marker file; the database and keys are opened elsewhere
//! ([`crate::serve`], [`crate::site`]) after this check passes.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The stored format this build writes. Raise it (and add the upgrade step
/// in [`check_and_upgrade`]) whenever a change makes data unreadable for
/// the previous release.
pub const CURRENT: u32 = 1;

/// The marker's file name in the data directory.
pub const FILE: &str = "format";

/// What a data directory's marker says relative to this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// No marker: a new data directory, or one from before markers existed
    /// (format 1 is the format of every release without a marker).
    Absent,
    /// Written by this format.
    Current,
    /// Written by an older format: upgrade in place.
    Older(u32),
    /// Written by a newer format: refuse to start.
    Newer(u32),
}

/// Classifies a marker's text (`"1\n"`).
pub fn classify(text: Option<&str>, current: u32) -> anyhow::Result<Stored> {
    let Some(text) = text else {
        return Ok(Stored::Absent);
    };
    let v: u32 = text.trim().parse().with_context(|| {
        format!("the data directory's format marker holds {text:?}, not a number")
    })?;
    Ok(match v.cmp(&current) {
        std::cmp::Ordering::Equal => Stored::Current,
        std::cmp::Ordering::Less => Stored::Older(v),
        std::cmp::Ordering::Greater => Stored::Newer(v),
    })
}

fn marker(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Checks `dir`'s marker before the appliance opens anything in it: a newer
/// format is refused, an older one upgraded, a missing one written.
pub fn check_and_upgrade(dir: &Path) -> anyhow::Result<()> {
    check_and_upgrade_to(dir, CURRENT)
}

/// [`check_and_upgrade`] against an explicit current format (tests).
pub fn check_and_upgrade_to(dir: &Path, current: u32) -> anyhow::Result<()> {
    let path = marker(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    match classify(text.as_deref(), current)? {
        Stored::Current => Ok(()),
        Stored::Newer(v) => bail!(
            "{} was written by a newer Outpost (stored format {v}; this outpost {} \
             knows formats up to {current}): refusing to start so the data stays intact. \
             Downgrades are not supported: reinstall the newer outpost package \
             (or restore a backup of the data directory made with this version)",
            dir.display(),
            env!("CARGO_PKG_VERSION"),
        ),
        // Format 1 is the first: nothing to upgrade yet. Later formats put
        // their upgrade steps here, before the marker is raised.
        Stored::Absent | Stored::Older(_) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating data directory {}", dir.display()))?;
            write_marker(&path, current)
        }
    }
}

/// Writes the marker atomically (temporary file, then rename).
fn write_marker(path: &Path, v: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{v}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_data_directory_gets_the_current_marker() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        check_and_upgrade_to(&dir, 3).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(FILE)).unwrap(), "3\n");
    }

    #[test]
    fn an_older_marker_is_upgraded_in_place_and_other_files_are_kept() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE), "1\n").unwrap();
        std::fs::write(d.path().join("ca.crt"), "kept").unwrap();
        check_and_upgrade_to(d.path(), 2).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join(FILE)).unwrap(), "2\n");
        assert_eq!(
            std::fs::read_to_string(d.path().join("ca.crt")).unwrap(),
            "kept"
        );
    }

    #[test]
    fn a_newer_marker_is_refused_with_a_message_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE), "7\n").unwrap();
        let e = format!("{:#}", check_and_upgrade_to(d.path(), 1).unwrap_err());
        assert!(e.contains("newer Outpost"), "{e}");
        assert!(e.contains("stored format 7"), "{e}");
        assert!(e.contains("Downgrades are not supported"), "{e}");
        assert_eq!(std::fs::read_to_string(d.path().join(FILE)).unwrap(), "7\n");
    }

    #[test]
    fn a_garbled_marker_is_an_error_not_a_guess() {
        assert!(classify(Some("two"), 1).is_err());
        assert_eq!(classify(Some(" 1 \n"), 1).unwrap(), Stored::Current);
        assert_eq!(classify(None, 1).unwrap(), Stored::Absent);
    }
}
