//! Cached files on disk, content-addressed by SHA-256:
//! `DIR/blobs/ab/abcdef…` (complete, verified), `DIR/tmp/` (downloads in
//! progress: never served as complete, removed at start), `DIR/quarantine/`
//! (files that failed verification, kept for inspection, bounded).
//!
//! A file becomes complete only by: write to `tmp/`, fsync, verify its
//! hash, rename into `blobs/`, fsync the directory; the database index is
//! written after that. A crash at any point leaves either no file or a
//! complete verified one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::Digest;

use super::index::Sha256;

/// How many quarantined files are kept (oldest removed first).
const QUARANTINE_KEEP: usize = 32;

/// The cache's directory.
#[derive(Debug, Clone)]
pub struct BlobDir {
    root: PathBuf,
}

impl BlobDir {
    /// Creates the directories and removes leftovers of interrupted downloads.
    pub fn open(root: &Path) -> io::Result<(BlobDir, usize)> {
        for d in ["blobs", "tmp", "quarantine"] {
            fs::create_dir_all(root.join(d))?;
        }
        let mut removed = 0;
        for e in fs::read_dir(root.join("tmp"))?.flatten() {
            let p = e.path();
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            if r.is_ok() {
                removed += 1;
            }
        }
        Ok((
            BlobDir {
                root: root.to_path_buf(),
            },
            removed,
        ))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn path(&self, sha: &Sha256) -> PathBuf {
        let h = hex::encode(sha);
        self.root.join("blobs").join(&h[..2]).join(h)
    }

    /// A new, empty temporary file (read + write).
    pub fn temp_file(&self) -> io::Result<(PathBuf, File)> {
        let name = format!("{:016x}.part", rand::random::<u64>());
        let p = self.tmp_dir().join(name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)?;
        Ok((p, f))
    }

    /// Moves a verified, fsync'd temporary file to its content address.
    pub fn commit(&self, tmp: &Path, sha: &Sha256) -> io::Result<PathBuf> {
        let dest = self.path(sha);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)?;
        fs::rename(tmp, &dest)?;
        File::open(&dir)?.sync_all()?;
        Ok(dest)
    }

    /// Writes `bytes` as a complete file (small files such as InRelease).
    pub fn store_bytes(&self, bytes: &[u8], sha: &Sha256) -> io::Result<PathBuf> {
        use std::io::Write;
        let (p, mut f) = self.temp_file()?;
        f.write_all(bytes)?;
        f.sync_all()?;
        self.commit(&p, sha)
    }

    /// Moves a bad file aside; keeps the newest [`QUARANTINE_KEEP`].
    pub fn quarantine(&self, file: &Path, url: &str) -> io::Result<PathBuf> {
        let safe: String = url
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .rev()
            .take(80)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let dest = self
            .root
            .join("quarantine")
            .join(format!("{}-{safe}", outpost_storage::now_ms()));
        fs::rename(file, &dest)?;
        let mut all: Vec<PathBuf> = fs::read_dir(self.root.join("quarantine"))?
            .flatten()
            .map(|e| e.path())
            .collect();
        if all.len() > QUARANTINE_KEEP {
            all.sort();
            for old in &all[..all.len() - QUARANTINE_KEEP] {
                let _ = fs::remove_file(old);
            }
        }
        Ok(dest)
    }

    /// Every complete file on disk: (sha, size). Files whose names are not
    /// a hex SHA-256 are ignored.
    pub fn list(&self) -> io::Result<Vec<(Sha256, u64)>> {
        let mut out = Vec::new();
        for sub in fs::read_dir(self.root.join("blobs"))?.flatten() {
            if !sub.path().is_dir() {
                continue;
            }
            for e in fs::read_dir(sub.path())?.flatten() {
                let name = e.file_name();
                let Some(sha) = name.to_str().and_then(outpost_apt::release::parse_sha256) else {
                    continue;
                };
                if let Ok(m) = e.metadata() {
                    out.push((sha, m.len()));
                }
            }
        }
        Ok(out)
    }

    pub fn remove(&self, sha: &Sha256) -> io::Result<()> {
        match fs::remove_file(self.path(sha)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> io::Result<(Sha256, u64)> {
    let mut f = File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((h.finalize().into(), n))
}

pub fn sha256(bytes: &[u8]) -> Sha256 {
    sha2::Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_names_files_by_hash_and_start_removes_partials() {
        let d = tempfile::tempdir().unwrap();
        let (dir, _) = BlobDir::open(d.path()).unwrap();
        let sha = sha256(b"abc");
        let p = dir.store_bytes(b"abc", &sha).unwrap();
        assert!(p.ends_with(format!("blobs/ba/{}", hex::encode(sha))));
        assert_eq!(hash_file(&p).unwrap(), (sha, 3));
        let (partial, _) = dir.temp_file().unwrap();
        assert!(partial.exists());
        let (dir, removed) = BlobDir::open(d.path()).unwrap();
        assert_eq!(removed, 1);
        assert!(!partial.exists());
        assert_eq!(dir.list().unwrap(), vec![(sha, 3)]);
        let q = dir.quarantine(&p, "http://h/x.deb").unwrap();
        assert!(q.exists() && dir.list().unwrap().is_empty());
    }
}
