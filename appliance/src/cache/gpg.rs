//! OpenPGP verification of `InRelease` files with `gpgv` (GnuPG's
//! verify-only tool, the one apt itself uses), run as a subprocess with the
//! configured keyrings. Only the signed text `gpgv` outputs is trusted, never
//! the raw file (text outside the signed part is ignored). gpgv's exit
//! status and `--status-fd` lines are judged like apt does
//! ([`outpost_apt::gpgv::judge`]): a signature by an expired or revoked key
//! (`EXPKEYSIG`, `REVKEYSIG`) does not count, though gpgv prints `VALIDSIG`
//! for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// Keyring files to verify against.
#[derive(Debug, Clone, Default)]
pub struct Keyrings {
    pub files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("no keyring configured (cache.keyrings lists no readable *.gpg file)")]
    NoKeyring,
    #[error("running gpgv failed: {0} (install the `gpgv` package)")]
    Spawn(std::io::Error),
    #[error("gpgv did not finish within 30s")]
    Timeout,
    #[error("{0}")]
    Rejected(#[from] outpost_apt::gpgv::GpgvError),
    #[error("temporary file: {0}")]
    Io(#[from] std::io::Error),
}

impl Keyrings {
    /// Expands configured paths: files as given, directories to their
    /// `*.gpg` files except `*removed*` ones.
    pub fn expand(paths: &[PathBuf]) -> Keyrings {
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let Ok(rd) = std::fs::read_dir(p) else {
                    continue;
                };
                let mut found: Vec<PathBuf> = rd
                    .flatten()
                    .map(|e| e.path())
                    .filter(|f| {
                        let n = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                        n.ends_with(".gpg") && !n.contains("removed")
                    })
                    .collect();
                found.sort();
                files.extend(found);
            } else if p.is_file() {
                files.push(p.clone());
            } else {
                tracing::warn!(keyring = %p.display(), "cache keyring not found");
            }
        }
        Keyrings { files }
    }

    /// Verifies a clear-signed document; returns the signed text.
    pub async fn verify_clearsigned(
        &self,
        document: &[u8],
        scratch: &Path,
    ) -> Result<Vec<u8>, VerifyError> {
        if self.files.is_empty() {
            return Err(VerifyError::NoKeyring);
        }
        let dir = tempfile::Builder::new()
            .prefix("gpgv-")
            .tempdir_in(scratch)?;
        let input = dir.path().join("InRelease");
        let output = dir.path().join("signed");
        std::fs::write(&input, document)?;
        let mut cmd = Command::new("gpgv");
        cmd.arg("--homedir")
            .arg(dir.path())
            .arg("--status-fd")
            .arg("1")
            .arg("--output")
            .arg(&output);
        for k in &self.files {
            cmd.arg("--keyring").arg(k);
        }
        cmd.arg(&input).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .map_err(|_| VerifyError::Timeout)?
            .map_err(VerifyError::Spawn)?;
        let status = String::from_utf8_lossy(&out.stdout);
        if let Err(e) = outpost_apt::gpgv::judge(out.status.code(), &status) {
            let stderr = String::from_utf8_lossy(&out.stderr);
            tracing::debug!(status = %status.trim(), stderr = %stderr.trim(), "gpgv refused a signature");
            return Err(e.into());
        }
        Ok(std::fs::read(&output)?)
    }
}
