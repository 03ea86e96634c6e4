//! TLS configurations for Outpost's QUIC endpoints.
//!
//! * Servers (appliance, central) present `[server cert, CA cert]` and accept
//!   optional client certificates signed by their CA; whether one is required
//!   is decided per ALPN by the caller (enrollment needs none, sessions do).
//! * Enrolling clients know only the CA's SHA-256 fingerprint:
//!   [`PinnedCaVerifier`] finds the CA with that fingerprint in the presented
//!   chain and verifies the server certificate against it.
//! * Enrolled clients verify the server against the stored CA certificate and
//!   present their own client certificate.
//!
//! One crypto provider (ring) everywhere; TLS 1.3 only (QUIC requires it).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::pki::sha256;

/// SHA-256 fingerprint of a CA certificate, written `sha256:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaFingerprint(pub [u8; 32]);

impl CaFingerprint {
    pub fn of(cert_der: &[u8]) -> CaFingerprint {
        CaFingerprint(sha256(cert_der))
    }
}

impl fmt::Display for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaFingerprint({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid CA fingerprint {0:?}: expected sha256: followed by 64 hex digits (as printed by `outpost ca-fingerprint`)"
)]
pub struct BadFingerprint(String);

impl FromStr for CaFingerprint {
    type Err = BadFingerprint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BadFingerprint(s.chars().take(100).collect());
        let hex_part = s
            .trim()
            .strip_prefix("sha256:")
            .or_else(|| s.trim().strip_prefix("SHA256:"))
            .ok_or_else(err)?;
        let cleaned: String = hex_part.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(cleaned).map_err(|_| err())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| err())?;
        Ok(CaFingerprint(arr))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("invalid PEM in {what}: {detail}")]
    Pem { what: &'static str, detail: String },
}

/// The one crypto provider of every Outpost process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses the first certificate of a PEM file.
pub fn cert_from_pem(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what,
        detail: e.to_string(),
    })
}

/// Parses a PEM private key.
pub fn key_from_pem(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what,
        detail: e.to_string(),
    })
}

/// Server configuration: presents `chain` (leaf first, then the CA), accepts
/// client certificates issued by `client_ca` but does not require them; the
/// caller enforces "certificate required" for its mutual-TLS ALPNs.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: CertificateDer<'static>,
    alpns: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(client_ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// Client configuration for enrollment: no client certificate, server
/// verified against the CA whose fingerprint is pinned.
pub fn pinned_client_config(
    verifier: Arc<PinnedCaVerifier>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// Client configuration for a mutual-TLS session: the server is verified
/// against `ca`, we present `chain`/`key`.
pub fn mtls_client_config(
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// Verifies a server whose CA is known only by fingerprint.
///
/// Records the fingerprints it was shown when none matched, so the caller can
/// tell the operator exactly what the server presented.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: CaFingerprint,
    provider: Arc<CryptoProvider>,
    /// Fingerprints presented by the last server that failed the pin.
    mismatch: Mutex<Option<Vec<CaFingerprint>>>,
    /// The CA certificate that matched the pin, once a handshake succeeded.
    matched: Mutex<Option<CertificateDer<'static>>>,
}

impl PinnedCaVerifier {
    pub fn new(pin: CaFingerprint) -> Arc<Self> {
        Arc::new(PinnedCaVerifier {
            pin,
            provider: provider(),
            mismatch: Mutex::new(None),
            matched: Mutex::new(None),
        })
    }

    /// The fingerprints a mismatching server presented, if any.
    pub fn mismatch(&self) -> Option<Vec<CaFingerprint>> {
        self.mismatch.lock().ok().and_then(|g| g.clone())
    }

    /// The pinned CA certificate as presented by the server.
    pub fn matched_ca(&self) -> Option<CertificateDer<'static>> {
        self.matched.lock().ok().and_then(|g| g.clone())
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| CaFingerprint::of(c) == self.pin)
        else {
            let seen = intermediates.iter().map(|c| CaFingerprint::of(c)).collect();
            if let Ok(mut g) = self.mismatch.lock() {
                *g = Some(seen);
            }
            return Err(rustls::Error::General(format!(
                "server CA does not match the pinned fingerprint {}",
                self.pin
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified =
            inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        if let Ok(mut g) = self.matched.lock() {
            *g = Some(ca.clone().into_owned());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_text_round_trips() {
        let fp = CaFingerprint([0xab; 32]);
        let s = fp.to_string();
        assert!(s.starts_with("sha256:"));
        assert_eq!(s.len(), 7 + 64);
        assert_eq!(s.parse::<CaFingerprint>().unwrap(), fp);
        assert_eq!(
            s.to_uppercase()
                .replace("SHA256", "sha256")
                .parse::<CaFingerprint>()
                .unwrap(),
            fp
        );
    }

    #[test]
    fn bad_fingerprints_are_rejected() {
        for bad in [
            "",
            "sha256:",
            "abcd",
            "sha256:zz",
            &format!("sha1:{}", "ab".repeat(32)),
            &format!("sha256:{}", "ab".repeat(31)),
        ] {
            assert!(bad.parse::<CaFingerprint>().is_err(), "{bad:?}");
        }
    }
}
