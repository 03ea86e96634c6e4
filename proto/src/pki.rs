//! Certificates: the site CA, server certificates, and client certificates
//! issued from certificate signing requests.
//!
//! Identity lives in the certificate subject: `CN` is `device:<16 hex>` (or
//! `site:<id>` for appliance uplink certificates), `O` the tenant, `OU` the
//! customer. [`CertIdentity::from_der`] is the only parser of that convention.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::tls::CaFingerprint;
use crate::{CustomerId, DeviceId, SiteId, TenantId};

/// Certificates are back-dated by this much to tolerate clock skew.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Lifetime of a CA certificate.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Lifetime of a server certificate.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a device or site client certificate.
pub const CLIENT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),
    #[error("invalid certificate: {0}")]
    BadCertificate(String),
}

/// A certificate and its private key, PEM-encoded, as written to disk.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority able to sign server and client certificates.
pub struct CertAuthority {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("fingerprint", &self.fingerprint().to_string())
            .finish_non_exhaustive()
    }
}

/// Who a client certificate is issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSubject {
    pub principal: Principal,
    pub tenant: TenantId,
    pub customer: CustomerId,
}

/// The kind of principal a client certificate identifies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Device(DeviceId),
    Site(SiteId),
}

impl Principal {
    fn common_name(&self) -> String {
        match self {
            Principal::Device(id) => format!("device:{id}"),
            Principal::Site(id) => format!("site:{id}"),
        }
    }

    fn parse(cn: &str) -> Option<Principal> {
        if let Some(hex) = cn.strip_prefix("device:") {
            return hex.parse().ok().map(Principal::Device);
        }
        cn.strip_prefix("site:")
            .filter(|s| !s.is_empty())
            .map(|s| Principal::Site(SiteId::from(s)))
    }
}

/// The identity carried by a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    pub principal: Principal,
    pub tenant: TenantId,
    pub customer: CustomerId,
    /// Certificate serial number, lower-case hex.
    pub serial_hex: String,
}

impl CertIdentity {
    /// Reads the identity from a DER certificate (already verified by TLS).
    pub fn from_der(der: &[u8]) -> Result<CertIdentity, PkiError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        let subject = cert.subject();
        let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
            it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
        };
        let cn = first(&mut subject.iter_common_name())
            .ok_or_else(|| PkiError::BadCertificate("no common name".into()))?;
        let principal = Principal::parse(&cn).ok_or_else(|| {
            PkiError::BadCertificate(format!("common name {cn:?} names no device or site"))
        })?;
        let tenant = first(&mut subject.iter_organization())
            .ok_or_else(|| PkiError::BadCertificate("no organization (tenant)".into()))?;
        let customer = first(&mut subject.iter_organizational_unit()).unwrap_or_default();
        Ok(CertIdentity {
            principal,
            tenant: tenant.into(),
            customer: customer.into(),
            serial_hex: hex::encode(cert.raw_serial()),
        })
    }
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

fn random_serial() -> SerialNumber {
    // 16 random bytes with the top bit cleared: positive, unique enough.
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

impl CertAuthority {
    /// Creates a new self-signed CA with a fresh P-256 key.
    pub fn generate(common_name: &str) -> Result<CertAuthority, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Outpost");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        Ok(CertAuthority {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// Loads a CA from its PEM certificate and PEM PKCS#8 key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertAuthority, PkiError> {
        use rustls::pki_types::pem::PemObject;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::BadCertificate(format!("CA certificate PEM: {e}")))?;
        let key = KeyPair::from_pem(key_pem)?;
        // Check the key belongs to the certificate before we sign anything with it.
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::BadCertificate(
                "CA key does not match CA certificate".into(),
            ));
        }
        Ok(CertAuthority {
            cert_der,
            cert_pem: cert_pem.to_string(),
            key,
        })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the CA certificate (what installers pin).
    pub fn fingerprint(&self) -> CaFingerprint {
        CaFingerprint::of(&self.cert_der)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }

    /// Issues a server certificate (fresh key) for the given DNS names.
    pub fn issue_server_cert(&self, dns_names: &[&str]) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            dns_names.first().copied().unwrap_or("outpost"),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = dns_names
            .iter()
            .map(|n| {
                Ok(SanType::DnsName(
                    (*n).try_into()
                        .map_err(|e: rcgen::Error| PkiError::Rcgen(e))?,
                ))
            })
            .collect::<Result<_, PkiError>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, SERVER_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a client certificate for the public key in `csr_der`.
    ///
    /// Everything the CSR asks for except its public key is ignored: the
    /// subject and extensions come from `subject`, never from the requester.
    pub fn sign_client_csr(
        &self,
        csr_der: &[u8],
        subject: &ClientSubject,
        lifetime: Duration,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, subject.principal.common_name());
        dn.push(
            DnType::OrganizationName,
            DnValue::Utf8String(subject.tenant.to_string()),
        );
        if !subject.customer.is_empty() {
            dn.push(
                DnType::OrganizationalUnitName,
                DnValue::Utf8String(subject.customer.to_string()),
            );
        }
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, lifetime);
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.der().clone())
    }
}

/// Checks that `csr_der` is a well-formed CSR with a valid self-signature.
pub fn verify_csr(csr_der: &[u8]) -> Result<(), PkiError> {
    CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
        .map(|_| ())
        .map_err(|e| PkiError::BadCsr(e.to_string()))
}

/// A fresh key pair and a CSR for it. Returns (key PEM, CSR DER).
pub fn generate_csr(common_name: &str) -> Result<(String, Vec<u8>), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// PEM-encodes a DER certificate.
pub fn cert_der_to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Writes a secret (private key, token) atomically, readable only by the
/// owner (mode 0600 on Unix).
pub fn write_private_file(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// SHA-256 of arbitrary bytes (token hashing, fingerprints).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_is_signed_with_the_subject_we_choose() {
        let ca = CertAuthority::generate("test CA").unwrap();
        let (_key, csr) = generate_csr("i-claim-to-be-someone-else").unwrap();
        let id = DeviceId(0x1234);
        let subject = ClientSubject {
            principal: Principal::Device(id),
            tenant: "acme".into(),
            customer: "dental".into(),
        };
        let der = ca.sign_client_csr(&csr, &subject, CLIENT_VALIDITY).unwrap();
        let ident = CertIdentity::from_der(&der).unwrap();
        assert_eq!(ident.principal, Principal::Device(id));
        assert_eq!(ident.tenant, "acme");
        assert_eq!(ident.customer, "dental");
        assert_eq!(ident.serial_hex.len(), 32);
    }

    #[test]
    fn tampered_csr_is_rejected() {
        let ca = CertAuthority::generate("test CA").unwrap();
        let (_key, mut csr) = generate_csr("x").unwrap();
        let n = csr.len();
        csr[n - 5] ^= 0xff; // inside the signature
        let subject = ClientSubject {
            principal: Principal::Device(DeviceId(1)),
            tenant: "t".into(),
            customer: CustomerId::default(),
        };
        assert!(matches!(
            ca.sign_client_csr(&csr, &subject, CLIENT_VALIDITY),
            Err(PkiError::BadCsr(_))
        ));
        assert!(
            ca.sign_client_csr(b"garbage", &subject, CLIENT_VALIDITY)
                .is_err()
        );
        assert!(verify_csr(&csr).is_err());
        assert!(verify_csr(&generate_csr("ok").unwrap().1).is_ok());
    }

    #[test]
    fn ca_survives_pem_round_trip_and_rejects_foreign_key() {
        let ca = CertAuthority::generate("test CA").unwrap();
        let again = CertAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        let other = CertAuthority::generate("other").unwrap();
        assert!(CertAuthority::from_pem(ca.cert_pem(), &other.key_pem()).is_err());
    }

    #[test]
    fn pem_encoding_matches_rcgen() {
        let ca = CertAuthority::generate("test CA").unwrap();
        assert_eq!(
            cert_der_to_pem(ca.cert_der()),
            ca.cert_pem().replace("\r\n", "\n")
        );
    }

    #[test]
    fn site_principal_round_trips() {
        let ca = CertAuthority::generate("c").unwrap();
        let (_k, csr) = generate_csr("x").unwrap();
        let subject = ClientSubject {
            principal: Principal::Site("s-42".into()),
            tenant: "msp".into(),
            customer: "cust".into(),
        };
        let der = ca.sign_client_csr(&csr, &subject, CLIENT_VALIDITY).unwrap();
        assert_eq!(
            CertIdentity::from_der(&der).unwrap().principal,
            Principal::Site("s-42".into())
        );
    }
}
