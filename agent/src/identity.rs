//! The agent's identity on disk, in its state directory:
//!
//! * `identity.toml`: device id, appliance address, tenant, customer, CA pin;
//! * `device.key` (0600): the private key, generated here, never sent;
//! * `device.crt`, `ca.crt`: the client certificate and the appliance CA;
//! * `buffer/` (the offline buffer) and `status.json` (live state of the
//!   running agent) are not identity: [`crate::buffer`], [`crate::status`].

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use outpost_proto::pki::{CertIdentity, Principal, cert_der_to_pem, write_private_file};
use outpost_proto::tls::{self, CaFingerprint};
use outpost_proto::{CustomerId, DeviceId, TenantId};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

const IDENTITY_FILE: &str = "identity.toml";
const KEY_FILE: &str = "device.key";
const CERT_FILE: &str = "device.crt";
const CA_FILE: &str = "ca.crt";

/// What `identity.toml` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityFile {
    pub device_id: String,
    pub appliance: String,
    pub tenant: TenantId,
    pub customer: CustomerId,
    pub ca_fingerprint: String,
    pub enrolled_at: String,
}

/// A loaded, consistent identity.
pub struct Identity {
    pub device_id: DeviceId,
    pub appliance: String,
    pub tenant: TenantId,
    pub customer: CustomerId,
    pub ca: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("device_id", &self.device_id)
            .field("appliance", &self.appliance)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// Paths inside a state directory.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    pub fn identity(&self) -> PathBuf {
        self.0.join(IDENTITY_FILE)
    }
    pub fn buffer(&self) -> PathBuf {
        self.0.join("buffer")
    }
    /// The command ledger (see [`crate::commands::ledger`]).
    pub fn commands(&self) -> PathBuf {
        self.0.join("commands")
    }
    /// The running agent's live state (see [`crate::status`]).
    pub fn status(&self) -> PathBuf {
        self.0.join(crate::status::STATUS_FILE)
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("agent.toml")
    }
    pub fn is_enrolled(&self) -> bool {
        self.identity().exists()
    }
}

/// Result of a successful enrollment, to be saved.
pub struct Enrolled {
    pub device_id: DeviceId,
    pub tenant: TenantId,
    pub customer: CustomerId,
    pub cert_der: Vec<u8>,
    pub ca_der: Vec<u8>,
    pub key_pem: String,
}

/// Writes an enrollment to `dir` (key last-but-one, identity file last, so a
/// half-written directory is never mistaken for an enrolled one).
pub fn save(dir: &StateDir, appliance: &str, e: &Enrolled) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir.0)
        .with_context(|| format!("creating state directory {}", dir.0.display()))?;
    std::fs::write(dir.0.join(CA_FILE), cert_der_to_pem(&e.ca_der)).context("writing ca.crt")?;
    std::fs::write(dir.0.join(CERT_FILE), cert_der_to_pem(&e.cert_der))
        .context("writing device.crt")?;
    write_private_file(&dir.0.join(KEY_FILE), e.key_pem.as_bytes())
        .context("writing device.key")?;
    let ident = IdentityFile {
        device_id: e.device_id.to_string(),
        appliance: appliance.to_string(),
        tenant: e.tenant.clone(),
        customer: e.customer.clone(),
        ca_fingerprint: CaFingerprint::of(&e.ca_der).to_string(),
        enrolled_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let text = toml::to_string(&ident).context("encoding identity.toml")?;
    write_private_file(&dir.identity(), text.as_bytes()).context("writing identity.toml")?;
    Ok(())
}

/// Loads and cross-checks the identity in `dir`.
pub fn load(dir: &StateDir) -> anyhow::Result<Identity> {
    let path = dir.identity();
    if !path.exists() {
        bail!(
            "{} is not enrolled (no {}): run `outpost-agent enroll --state {}` first",
            dir.0.display(),
            IDENTITY_FILE,
            dir.0.display()
        );
    }
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let ident: IdentityFile =
        toml::from_str(&read(&path)?).with_context(|| format!("parsing {}", path.display()))?;
    let device_id: DeviceId = ident
        .device_id
        .parse()
        .with_context(|| format!("device_id in {}", path.display()))?;
    let ca = tls::cert_from_pem(&read(&dir.0.join(CA_FILE))?, "ca.crt")?;
    let cert = tls::cert_from_pem(&read(&dir.0.join(CERT_FILE))?, "device.crt")?;
    let key = tls::key_from_pem(&read(&dir.0.join(KEY_FILE))?, "device.key")?;
    let pin: CaFingerprint = ident.ca_fingerprint.parse()?;
    if CaFingerprint::of(&ca) != pin {
        bail!(
            "ca.crt in {} does not match the pinned fingerprint {pin}",
            dir.0.display()
        );
    }
    let cert_ident = CertIdentity::from_der(&cert).context("reading device.crt")?;
    if cert_ident.principal != Principal::Device(device_id) {
        bail!(
            "device.crt in {} is for {:?}, not device {device_id}",
            dir.0.display(),
            cert_ident.principal
        );
    }
    Ok(Identity {
        device_id,
        appliance: ident.appliance,
        tenant: ident.tenant,
        customer: ident.customer,
        ca,
        cert,
        key,
    })
}
