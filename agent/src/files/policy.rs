//! Where the appliance may write and read files on this device: the
//! `file_roots` of `agent.toml`. A path is taken only if it is absolute,
//! has no `..`, and — once the file system resolved every symbolic link
//! (`canonicalize`) — lies inside one of the roots (also resolved). So a
//! link inside a root that points outside it is refused, as is `..`.
//!
//! Pure decisions over the file system's answers (no state); refusals are
//! sentences the technician reads.

use std::path::{Component, Path, PathBuf};

/// Reason given when no root is configured.
pub const NO_ROOTS: &str =
    "file transfers are disabled on this device (no file_roots in agent.toml)";

/// Checks what can be checked without the file system.
fn lexical(path: &str) -> Result<&Path, String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("{path:?} is not an absolute path"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("{path:?} contains `..`"));
    }
    if path.ends_with('/') || p.file_name().is_none() {
        return Err(format!("{path:?} does not name a file"));
    }
    Ok(p)
}

/// The roots as the file system resolves them (roots that do not exist
/// are skipped: nothing can be inside them).
fn resolved_roots(roots: &[PathBuf]) -> Vec<PathBuf> {
    roots.iter().filter_map(|r| r.canonicalize().ok()).collect()
}

fn inside(roots: &[PathBuf], p: &Path, path: &str) -> Result<(), String> {
    if roots.iter().any(|r| p.starts_with(r)) {
        Ok(())
    } else {
        Err(format!(
            "{path:?} is outside the allowed file roots ({}) of this device (file_roots in agent.toml)",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Where a pushed file goes: `target`, written through a temporary file in
/// `dir` (the same file system, so the final rename is atomic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub dir: PathBuf,
    pub target: PathBuf,
}

/// May the appliance write `path`? Its directory must exist (it is not
/// created) and resolve inside a root; an existing target must be a
/// regular file (not a directory, not a symbolic link).
pub fn resolve_push(roots: &[PathBuf], path: &str) -> Result<PushTarget, String> {
    if roots.is_empty() {
        return Err(NO_ROOTS.into());
    }
    let p = lexical(path)?;
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(format!("{path:?} does not name a file"));
    };
    let dir = parent
        .canonicalize()
        .map_err(|e| format!("directory {} is not usable: {e}", parent.display()))?;
    let target = dir.join(name);
    inside(&resolved_roots(roots), &target, path)?;
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(format!(
                "{path:?} is a symbolic link; push to the file it points to"
            ));
        }
        Ok(m) if !m.is_file() => return Err(format!("{path:?} exists and is not a regular file")),
        _ => {}
    }
    Ok(PushTarget { dir, target })
}

/// May the appliance read `path`? It must resolve (links followed) to a
/// regular file inside a root.
pub fn resolve_pull(roots: &[PathBuf], path: &str) -> Result<PathBuf, String> {
    if roots.is_empty() {
        return Err(NO_ROOTS.into());
    }
    let p = lexical(path)?;
    let real = p
        .canonicalize()
        .map_err(|e| format!("{path:?} cannot be read: {e}"))?;
    inside(&resolved_roots(roots), &real, path)?;
    let m = std::fs::metadata(&real).map_err(|e| format!("{path:?} cannot be read: {e}"))?;
    if !m.is_file() {
        return Err(format!("{path:?} is not a regular file"));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::fs::write(root.join("sub/file"), "f").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("link")).unwrap();
        (t, root, outside)
    }

    #[test]
    fn without_roots_every_transfer_is_refused_with_the_reason() {
        assert_eq!(resolve_push(&[], "/tmp/x"), Err(NO_ROOTS.into()));
        assert_eq!(resolve_pull(&[], "/tmp/x"), Err(NO_ROOTS.into()));
    }

    #[test]
    fn a_push_inside_a_root_is_taken_and_relative_dotdot_and_outside_paths_are_refused() {
        let (_t, root, outside) = setup();
        let roots = vec![root.clone()];
        let real_root = root.canonicalize().unwrap();
        let ok = resolve_push(&roots, &format!("{}/sub/new.conf", root.display())).unwrap();
        assert_eq!(ok.target, real_root.join("sub/new.conf"));
        assert_eq!(ok.dir, real_root.join("sub"));
        for bad in [
            "relative/x".to_string(),
            format!("{}/sub/../../outside/x", root.display()),
            format!("{}/x", outside.display()),
            format!("{}/escape/x", root.display()),
            format!("{}/link", root.display()),
            format!("{}/sub", root.display()),
            format!("{}/missing/x", root.display()),
            format!("{}/sub/", root.display()),
        ] {
            let e = resolve_push(&roots, &bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        let e = resolve_push(&roots, &format!("{}/escape/x", root.display())).unwrap_err();
        assert!(e.contains("outside the allowed file roots"), "{e}");
    }

    #[test]
    fn a_pull_follows_links_only_while_they_stay_inside_a_root() {
        let (_t, root, outside) = setup();
        let roots = vec![root.clone()];
        assert!(resolve_pull(&roots, &format!("{}/sub/file", root.display())).is_ok());
        let e = resolve_pull(&roots, &format!("{}/link", root.display())).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        let e = resolve_pull(&roots, &format!("{}/secret", outside.display())).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        let e = resolve_pull(&roots, &format!("{}/sub", root.display())).unwrap_err();
        assert!(
            e.contains("does not name a file") || e.contains("regular"),
            "{e}"
        );
        assert!(resolve_pull(&roots, &format!("{}/nope", root.display())).is_err());
        // A root given through a link works once resolved.
        let t2 = tempfile::tempdir().unwrap();
        let alias = t2.path().join("alias");
        std::os::unix::fs::symlink(&root, &alias).unwrap();
        assert!(resolve_pull(&[alias], &format!("{}/sub/file", root.display())).is_ok());
    }
}
