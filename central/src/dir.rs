//! Central's data directory:
//!
//! ```text
//! DATA/ca.crt  ca.key (0600)          central CA (signs site certificates)
//! DATA/server.crt  server.key (0600)  QUIC server certificate ("outpost-central")
//! DATA/admin.token (0600)             operator token (admin endpoints, CLI)
//! DATA/http.addr                      where the running HTTP API listens
//! DATA/db/                            RocksDB
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use outpost_proto::pki::{CertAuthority, write_private_file};
use outpost_proto::tls;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use outpost_uplink::wire::CENTRAL_SERVER_NAME;

#[derive(Debug, Clone)]
pub struct CentralDir(pub PathBuf);

pub struct CentralKeys {
    pub ca: CertAuthority,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
    pub admin_token: String,
}

impl std::fmt::Debug for CentralKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CentralKeys")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

impl CentralDir {
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn db(&self) -> PathBuf {
        self.path("db")
    }
    pub fn http_addr(&self) -> PathBuf {
        self.path("http.addr")
    }
    /// Says which backend `serve` last ran on (`rocksdb` or `postgres`,
    /// never the connection string), so the operator CLI does not open a
    /// stray RocksDB next to a PostgreSQL central.
    pub fn store_kind(&self) -> PathBuf {
        self.path("store")
    }
    /// True when `serve` last ran on PostgreSQL.
    pub fn uses_postgres(&self) -> bool {
        std::fs::read_to_string(self.store_kind()).is_ok_and(|s| s.trim() == "postgres")
    }

    /// Loads the keys, creating the CA, server certificate and operator
    /// token on first use.
    pub fn init_or_load(&self) -> anyhow::Result<CentralKeys> {
        std::fs::create_dir_all(&self.0)
            .with_context(|| format!("creating data directory {}", self.0.display()))?;
        let (crt, key) = (self.path("ca.crt"), self.path("ca.key"));
        let ca = if !crt.exists() {
            if key.exists() {
                bail!(
                    "{} exists without {}: refusing to overwrite a CA key",
                    key.display(),
                    crt.display()
                );
            }
            let ca = CertAuthority::generate("Outpost central CA")
                .context("generating the central CA")?;
            write_private_file(&key, ca.key_pem().as_bytes()).context("writing ca.key")?;
            std::fs::write(&crt, ca.cert_pem()).context("writing ca.crt")?;
            ca
        } else {
            CertAuthority::from_pem(&read(&crt)?, &read(&key)?)
                .with_context(|| format!("loading the central CA from {}", self.0.display()))?
        };
        let (scrt, skey) = (self.path("server.crt"), self.path("server.key"));
        if !scrt.exists() || !skey.exists() {
            let issued = ca
                .issue_server_cert(&[CENTRAL_SERVER_NAME, "localhost"])
                .context("issuing the server certificate")?;
            write_private_file(&skey, issued.key_pem.as_bytes()).context("writing server.key")?;
            std::fs::write(&scrt, &issued.cert_pem).context("writing server.crt")?;
        }
        let server_cert = tls::cert_from_pem(&read(&scrt)?, "server.crt")?;
        let server_key = tls::key_from_pem(&read(&skey)?, "server.key")?;
        let tp = self.path("admin.token");
        let admin_token = if tp.exists() {
            read(&tp)?.trim().to_string()
        } else {
            let t = format!("opc_{}", hex::encode(rand::random::<[u8; 24]>()));
            write_private_file(&tp, format!("{t}\n").as_bytes()).context("writing admin.token")?;
            t
        };
        if admin_token.len() < 16 {
            bail!("{} holds a token shorter than 16 characters", tp.display());
        }
        Ok(CentralKeys {
            server_chain: vec![server_cert, ca.cert_der().clone()],
            server_key,
            ca,
            admin_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory whose central ran on PostgreSQL says so (and no
    /// connection string), so the CLI never opens a stray RocksDB there.
    #[test]
    fn the_data_directory_remembers_a_postgres_store() {
        let d = tempfile::tempdir().unwrap();
        let dir = CentralDir(d.path().to_path_buf());
        assert!(!dir.uses_postgres(), "no marker: RocksDB");
        std::fs::write(dir.store_kind(), "rocksdb\n").unwrap();
        assert!(!dir.uses_postgres());
        std::fs::write(dir.store_kind(), "postgres\n").unwrap();
        assert!(dir.uses_postgres());
    }
}
