//! The appliance's uplink identity on disk, under `DATA/uplink/`:
//!
//! ```text
//! site.key (0600)   private key of the site certificate (generated here)
//! site.crt          site client certificate issued by central
//! central-ca.crt    central's CA (pinned by fingerprint at join)
//! uplink.json       central address, site id/name, tenant, customer, interval
//! ```
//!
//! Written atomically at join; read at every start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use outpost_proto::pki::write_private_file;
use outpost_proto::tls;
use outpost_proto::{CustomerId, SiteId, TenantId};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// What `uplink.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinedSite {
    /// `HOST:PORT` of central's QUIC listener.
    pub central: String,
    pub site_id: SiteId,
    pub site_name: String,
    pub tenant: TenantId,
    pub customer: CustomerId,
    /// Compaction interval chosen at join (overrides the config default).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub joined_at_ms: u64,
}

/// The uplink directory of a data directory.
#[derive(Debug, Clone)]
pub struct UplinkDir(pub PathBuf);

/// Everything needed to open the mutual-TLS uplink.
pub struct SiteIdentity {
    pub site: JoinedSite,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub central_ca: CertificateDer<'static>,
}

impl std::fmt::Debug for SiteIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteIdentity")
            .field("site", &self.site)
            .finish_non_exhaustive()
    }
}

impl UplinkDir {
    pub fn new(data: &Path) -> UplinkDir {
        UplinkDir(data.join("uplink"))
    }
    fn key(&self) -> PathBuf {
        self.0.join("site.key")
    }
    fn cert(&self) -> PathBuf {
        self.0.join("site.crt")
    }
    fn ca(&self) -> PathBuf {
        self.0.join("central-ca.crt")
    }
    fn state(&self) -> PathBuf {
        self.0.join("uplink.json")
    }

    pub fn is_joined(&self) -> bool {
        self.state().exists()
    }

    /// Stores a new identity (replacing any previous one).
    pub fn store(
        &self,
        site: &JoinedSite,
        key_pem: &str,
        cert_der: &[u8],
        ca_der: &[u8],
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.0)
            .with_context(|| format!("creating {}", self.0.display()))?;
        write_private_file(&self.key(), key_pem.as_bytes()).context("writing uplink/site.key")?;
        let pem = |der: &[u8]| outpost_proto::pki::cert_der_to_pem(der);
        write_atomic(&self.cert(), pem(cert_der).as_bytes())?;
        write_atomic(&self.ca(), pem(ca_der).as_bytes())?;
        // The state file last: its presence means "joined".
        write_atomic(&self.state(), &serde_json::to_vec_pretty(site)?)?;
        Ok(())
    }

    /// Loads the identity, `None` if the site never joined.
    pub fn load(&self) -> anyhow::Result<Option<SiteIdentity>> {
        if !self.is_joined() {
            return Ok(None);
        }
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let site: JoinedSite = serde_json::from_str(&read(self.state())?)
            .with_context(|| format!("parsing {}", self.state().display()))?;
        Ok(Some(SiteIdentity {
            site,
            cert: tls::cert_from_pem(&read(self.cert())?, "uplink/site.crt")?,
            key: tls::key_from_pem(&read(self.key())?, "uplink/site.key")?,
            central_ca: tls::cert_from_pem(&read(self.ca())?, "uplink/central-ca.crt")?,
        }))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
