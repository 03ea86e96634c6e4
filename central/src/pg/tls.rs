//! TLS to PostgreSQL: `sslmode` and `sslrootcert` in the `--store`
//! connection string.
//!
//! Owns reading those two settings out of the connection string (the rest
//! goes to `tokio_postgres::Config` unchanged) and the rustls client
//! configuration (`tokio-postgres-rustls`, ring provider, as the rest of
//! Outpost). Must not touch pools or queries: [`configure`] returns the
//! config and the connector every connection of central uses.
//!
//! * no `sslmode`, or `disable`: plain connection (a Unix socket or a
//!   trusted network), as before.
//! * `require` or `verify-ca`: TLS; the server's certificate must chain to
//!   `sslrootcert` (stricter than libpq's `require`, which checks nothing).
//! * `verify-full`: the same and the certificate must name the host.
//! * `prefer` and `allow` are refused: central never falls back to plain
//!   text silently.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::{CentralStoreError, Result};

/// What `sslmode` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    /// The chain is checked, not the name (`require`, `verify-ca`).
    VerifyCa,
    /// The chain and the host name (`verify-full`).
    VerifyFull,
}

fn err(msg: String) -> CentralStoreError {
    CentralStoreError::Backend(format!("postgresql: {msg}"))
}

/// Takes `sslmode` and `sslrootcert` out of `url` (a `postgres://` URL's
/// query, or `key=value` words): the rest, the mode, the CA file.
pub fn split(url: &str) -> Result<(String, TlsMode, Option<String>)> {
    let mut mode = None;
    let mut root = None;
    let mut take = |k: &str, v: &str| -> bool {
        match k {
            "sslmode" => {
                mode = Some(v.to_string());
                true
            }
            "sslrootcert" => {
                root = Some(v.to_string());
                true
            }
            _ => false,
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        !take(k, v)
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        }
    } else {
        url.split_whitespace()
            .filter(|w| {
                let (k, v) = w.split_once('=').unwrap_or((w, ""));
                !take(k.trim(), v.trim())
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mode = match mode.as_deref() {
        None | Some("disable") => TlsMode::Disable,
        Some("require") | Some("verify-ca") => TlsMode::VerifyCa,
        Some("verify-full") => TlsMode::VerifyFull,
        Some(m @ ("prefer" | "allow")) => {
            return Err(err(format!(
                "sslmode={m} is not supported (it may fall back to plain text): use disable, \
                 require, verify-ca or verify-full"
            )));
        }
        Some(m) => {
            return Err(err(format!(
                "unknown sslmode={m:?}: use disable, require, verify-ca or verify-full"
            )));
        }
    };
    if mode != TlsMode::Disable && root.is_none() {
        return Err(err(
            "sslmode=require/verify-ca/verify-full needs sslrootcert=FILE: the PEM CA \
             certificate(s) that signed the server's certificate"
                .into(),
        ));
    }
    Ok((rest, mode, root))
}

/// The TLS connector of every central connection: rustls, or none when
/// `sslmode` is off (tokio-postgres still asks for a connector per host,
/// and a Unix socket's path is no DNS name: a placeholder stands in, never
/// used since TLS is off).
#[derive(Clone)]
pub struct PgTls {
    inner: MakeRustlsConnect,
    plain: bool,
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for PgTls
where
    MakeRustlsConnect: tokio_postgres::tls::MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Error;

    fn make_tls_connect(
        &mut self,
        domain: &str,
    ) -> std::result::Result<Self::TlsConnect, Self::Error> {
        let domain = if self.plain { "localhost" } else { domain };
        tokio_postgres::tls::MakeTlsConnect::<S>::make_tls_connect(&mut self.inner, domain)
    }
}

/// The connection config and TLS connector for `url`.
pub fn configure(url: &str) -> Result<(tokio_postgres::Config, PgTls)> {
    let (rest, mode, root) = split(url)?;
    let mut cfg: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| err(format!("connection string: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(format!("TLS: {e}")))?;
    let config = match (mode, root.clone()) {
        (TlsMode::Disable, _) | (_, None) => {
            cfg.ssl_mode(SslMode::Disable);
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
        (mode, Some(path)) => {
            cfg.ssl_mode(SslMode::Require);
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(&path)
                .map_err(|e| err(format!("sslrootcert {path}: {e}")))?;
            for c in certs {
                let c = c.map_err(|e| err(format!("sslrootcert {path}: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| err(format!("sslrootcert {path}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(err(format!("sslrootcert {path}: no certificate in it")));
            }
            let roots = Arc::new(roots);
            if mode == TlsMode::VerifyFull {
                builder.with_root_certificates(roots).with_no_client_auth()
            } else {
                let inner =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| err(format!("sslrootcert {path}: {e}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                    .with_no_client_auth()
            }
        }
    };
    Ok((
        cfg,
        PgTls {
            inner: MakeRustlsConnect::new(config),
            plain: mode == TlsMode::Disable,
        },
    ))
}

/// A connection error's text, with what to check when the server's
/// certificate was refused.
pub fn hint(msg: String) -> String {
    if msg.contains("invalid peer certificate") {
        format!(
            "{msg} (the server's certificate is not signed by a CA in sslrootcert, or does \
             not name the host under sslmode=verify-full)"
        )
    } else {
        msg
    }
}

/// `verify-ca`: the webpki chain check without the name check.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
