//! The content store of file transfers, shared by the appliance and
//! central (each over its own `DATA/files/`): files under `DATA/files/blobs/`
//! named by their SHA-256 (`blobs/ab/abcd…`), written to a temporary file
//! in `DATA/files/tmp/`, `fsync`ed, renamed into place, the directory
//! `fsync`ed. A blob under its name is always whole; one content is kept
//! once however often it is pushed or pulled. Also the partial files of
//! pulls in progress (`DATA/files/partial/<transfer>`).
//!
//! Blocking file I/O: callers run it off the async executor's threads or
//! accept short blocking (a chunk at a time).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use outpost_proto::ids::TransferId;
use outpost_proto::transfer::hex_sha;
use sha2::{Digest, Sha256};

/// A stored blob's hash and length, or (`Err`) the hash of content that
/// did not match the expected one (nothing stored).
pub type Stored = Result<([u8; 32], u64), [u8; 32]>;

#[derive(Debug)]
pub struct Blobs {
    root: PathBuf,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Blobs {
    /// Opens (creating) `root` (`DATA/files`); leftovers of interrupted
    /// uploads are removed.
    pub fn open(root: &Path) -> io::Result<Blobs> {
        for d in ["blobs", "tmp", "partial"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        if let Ok(rd) = std::fs::read_dir(root.join("tmp")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Blobs {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self, sha: &[u8; 32]) -> PathBuf {
        let h = hex_sha(sha);
        self.root.join("blobs").join(&h[..2]).join(h)
    }

    pub fn has(&self, sha: &[u8; 32]) -> bool {
        self.path(sha).is_file()
    }

    /// A new temporary file for content being received.
    pub fn temp(&self) -> io::Result<(PathBuf, File)> {
        let p = self
            .root
            .join("tmp")
            .join(format!("{}.tmp", TransferId::random()));
        let f = File::options().write(true).create_new(true).open(&p)?;
        Ok((p, f))
    }

    /// Puts the (complete, hashed) temporary file `tmp` in place as the
    /// blob `sha`: `fsync`, rename, `fsync` of the directory. If the blob
    /// exists already the temporary file is dropped.
    pub fn adopt(&self, tmp: &Path, sha: &[u8; 32]) -> io::Result<PathBuf> {
        let dest = self.path(sha);
        if dest.is_file() {
            let _ = std::fs::remove_file(tmp);
            // Written again now: the collector's grace counts from here.
            if let Ok(f) = File::options().write(true).open(&dest) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            return Ok(dest);
        }
        File::open(tmp)?.sync_all()?;
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir)?;
        std::fs::rename(tmp, &dest)?;
        sync_dir(&dir)?;
        Ok(dest)
    }

    /// Copies `src` from `skip` on into a new blob while hashing it;
    /// returns the hash and the length (the blob is stored only when
    /// `expect` is `None` or matches).
    pub fn store_from(
        &self,
        src: &Path,
        skip: u64,
        expect: Option<&[u8; 32]>,
    ) -> io::Result<Stored> {
        let mut input = File::open(src)?;
        io::copy(&mut (&mut input).take(skip), &mut io::sink())?;
        let (tmp, mut out) = self.temp()?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n_total = 0u64;
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            n_total += n as u64;
        }
        drop(out);
        let sha: [u8; 32] = h.finalize().into();
        if expect.is_some_and(|e| e != &sha) {
            let _ = std::fs::remove_file(&tmp);
            return Ok(Err(sha));
        }
        self.adopt(&tmp, &sha)?;
        Ok(Ok((sha, n_total)))
    }

    /// Every blob on disk: its hash and metadata (names that are not a
    /// hash are skipped).
    pub fn list(&self) -> io::Result<Vec<([u8; 32], std::fs::Metadata)>> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(self.root.join("blobs"))? {
            let d = d?;
            if !d.file_type()?.is_dir() {
                continue;
            }
            for e in std::fs::read_dir(d.path())? {
                let e = e?;
                let name = e.file_name();
                let Some(sha) = name.to_str().and_then(outpost_proto::transfer::parse_sha) else {
                    continue;
                };
                let meta = e.metadata()?;
                if meta.is_file() {
                    out.push((sha, meta));
                }
            }
        }
        Ok(out)
    }

    /// Deletes the blob `sha` (gone already: fine).
    pub fn remove(&self, sha: &[u8; 32]) -> io::Result<()> {
        match std::fs::remove_file(self.path(sha)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The partial file of a pull in progress.
    pub fn partial(&self, t: TransferId) -> PathBuf {
        self.root.join("partial").join(t.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_stored_once_under_its_hash_and_a_mismatch_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path()).unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, b"HEADERhello").unwrap();
        let want: [u8; 32] = Sha256::digest(b"hello").into();
        let (sha, n) = b.store_from(&src, 6, Some(&want)).unwrap().unwrap();
        assert_eq!((sha, n), (want, 5));
        assert_eq!(std::fs::read(b.path(&sha)).unwrap(), b"hello");
        // Again: the same blob, no leftovers.
        b.store_from(&src, 6, None).unwrap().unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        let other = [9u8; 32];
        let got = b.store_from(&src, 0, Some(&other)).unwrap();
        assert!(got.is_err());
        assert!(!b.has(&other));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn leftover_temporary_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path()).unwrap();
        let (p, _f) = b.temp().unwrap();
        assert!(p.exists());
        Blobs::open(dir.path()).unwrap();
        assert!(!p.exists());
    }
}
