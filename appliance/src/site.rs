//! The appliance's data directory: site CA, server certificate, admin token,
//! admin address and the database.
//!
//! ```text
//! DATA/ca.crt  ca.key (0600)          site CA (signs device certificates)
//! DATA/server.crt  server.key (0600)  QUIC server certificate
//! DATA/admin.token (0600)             bearer token of the admin API
//! DATA/admin.addr                     where the running admin API listens
//! DATA/db/                            RocksDB
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use outpost_proto::APPLIANCE_SERVER_NAME;
use outpost_proto::pki::{CertAuthority, write_private_file};
use outpost_proto::tls::{self, CaFingerprint};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Paths in a data directory.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.0.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.0.join("server.key")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.0.join("admin.token")
    }
    pub fn admin_addr(&self) -> PathBuf {
        self.0.join("admin.addr")
    }
    pub fn reset_key(&self) -> PathBuf {
        self.0.join("reset.key")
    }
    pub fn db(&self) -> PathBuf {
        self.0.join("db")
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("outpost.toml")
    }
}

/// Key material the running appliance needs.
pub struct SiteKeys {
    pub ca: CertAuthority,
    /// Server certificate then CA certificate.
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
    pub admin_token: String,
    /// Secret keying QUIC stateless resets (stable across restarts).
    pub reset_secret: [u8; 32],
    /// True when this call created the CA (first start).
    pub created: bool,
}

impl std::fmt::Debug for SiteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteKeys")
            .field("ca", &self.ca)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

/// Loads the site's keys, creating the CA, server certificate and admin
/// token on first start.
pub fn init_or_load(dir: &DataDir) -> anyhow::Result<SiteKeys> {
    std::fs::create_dir_all(&dir.0)
        .with_context(|| format!("creating data directory {}", dir.0.display()))?;
    let created = !dir.ca_cert().exists();
    let ca = if created {
        if dir.ca_key().exists() {
            bail!(
                "{} exists without {}: refusing to overwrite a CA key; restore ca.crt or remove both",
                dir.ca_key().display(),
                dir.ca_cert().display()
            );
        }
        let ca = CertAuthority::generate("Outpost site CA").context("generating the site CA")?;
        write_private_file(&dir.ca_key(), ca.key_pem().as_bytes()).context("writing ca.key")?;
        std::fs::write(dir.ca_cert(), ca.cert_pem()).context("writing ca.crt")?;
        ca
    } else {
        CertAuthority::from_pem(&read(&dir.ca_cert())?, &read(&dir.ca_key())?)
            .with_context(|| format!("loading the site CA from {}", dir.0.display()))?
    };
    if !dir.server_cert().exists() || !dir.server_key().exists() {
        let hostname = std::env::var("HOSTNAME").unwrap_or_default();
        let mut names = vec![APPLIANCE_SERVER_NAME, "localhost"];
        if !hostname.is_empty() && hostname.is_ascii() {
            names.push(hostname.as_str());
        }
        let issued = ca
            .issue_server_cert(&names)
            .context("issuing the server certificate")?;
        write_private_file(&dir.server_key(), issued.key_pem.as_bytes())
            .context("writing server.key")?;
        std::fs::write(dir.server_cert(), &issued.cert_pem).context("writing server.crt")?;
    }
    let server_cert = tls::cert_from_pem(&read(&dir.server_cert())?, "server.crt")?;
    let server_key = tls::key_from_pem(&read(&dir.server_key())?, "server.key")?;
    let admin_token = if dir.admin_token().exists() {
        read(&dir.admin_token())?.trim().to_string()
    } else {
        let t = format!("opa_{}", hex::encode(rand::random::<[u8; 24]>()));
        write_private_file(&dir.admin_token(), format!("{t}\n").as_bytes())
            .context("writing admin.token")?;
        t
    };
    let reset_secret: [u8; 32] = match std::fs::read(dir.reset_key()) {
        Ok(b) => b.try_into().map_err(|_| {
            anyhow::anyhow!(
                "{} must hold exactly 32 bytes; delete it to regenerate",
                dir.reset_key().display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s: [u8; 32] = rand::random();
            write_private_file(&dir.reset_key(), &s).context("writing reset.key")?;
            s
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.reset_key().display())),
    };
    if admin_token.len() < 16 {
        bail!(
            "{} holds a token shorter than 16 characters",
            dir.admin_token().display()
        );
    }
    Ok(SiteKeys {
        server_chain: vec![server_cert, ca.cert_der().clone()],
        server_key,
        ca,
        admin_token,
        reset_secret,
        created,
    })
}

/// The CA fingerprint of an existing data directory.
pub fn ca_fingerprint(dir: &DataDir) -> anyhow::Result<CaFingerprint> {
    let pem = std::fs::read_to_string(dir.ca_cert()).with_context(|| {
        format!(
            "reading {} (has `outpost serve --data {}` run once?)",
            dir.ca_cert().display(),
            dir.0.display()
        )
    })?;
    Ok(CaFingerprint::of(&tls::cert_from_pem(&pem, "ca.crt")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_and_later_starts_reuse() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir(tmp.path().join("data"));
        let a = init_or_load(&dir).unwrap();
        assert!(a.created);
        let b = init_or_load(&dir).unwrap();
        assert!(!b.created);
        assert_eq!(a.ca.fingerprint(), b.ca.fingerprint());
        assert_eq!(a.admin_token, b.admin_token);
        assert_eq!(a.reset_secret, b.reset_secret);
        assert_eq!(ca_fingerprint(&dir).unwrap(), a.ca.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [dir.admin_token(), dir.ca_key(), dir.server_key()] {
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", p.display());
            }
        }
    }

    #[test]
    fn orphaned_ca_key_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir(tmp.path().to_path_buf());
        std::fs::write(dir.ca_key(), "precious").unwrap();
        let err = init_or_load(&dir).unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.ca_key()).unwrap(), "precious");
    }
}
