//! Simulated fleets: bulk enrollment of many agent identities (cached in a
//! state directory so a 50,000-agent run enrolls once), and QUIC client
//! endpoints to spread them over.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use outpost_agent::{enroll, net};
use outpost_proto::messages::DeviceFacts;
use outpost_proto::tls::{self, CaFingerprint};
use outpost_proto::{ALPN_SESSION, DeviceId};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// One cached simulated agent identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredIdentity {
    device_id: String,
    cert_der_hex: String,
    key_pem: String,
}

/// An identity ready to connect.
pub struct SimIdentity {
    pub device_id: DeviceId,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

/// Enrolled identities plus the appliance CA they trust.
pub struct Fleet {
    pub ca: CertificateDer<'static>,
    pub identities: Vec<SimIdentity>,
}

fn fleet_file(state: &Path, pin: &CaFingerprint) -> PathBuf {
    let fp = pin.to_string();
    state.join(format!("fleet-{}.jsonl", &fp[7..23]))
}

fn ca_file(state: &Path, pin: &CaFingerprint) -> PathBuf {
    let fp = pin.to_string();
    state.join(format!("ca-{}.der", &fp[7..23]))
}

/// Loads cached identities for this appliance (by CA fingerprint) and
/// enrolls the missing ones with `token` (a multi-use token).
pub async fn load_or_enroll(
    state: &Path,
    addr: SocketAddr,
    token: &str,
    pin: CaFingerprint,
    n: usize,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Fleet> {
    std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let path = fleet_file(state, &pin);
    let mut stored: Vec<StoredIdentity> = Vec::new();
    if let Ok(f) = std::fs::File::open(&path) {
        for line in std::io::BufReader::new(f).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            stored.push(
                serde_json::from_str(&line)
                    .with_context(|| format!("corrupt line in {}", path.display()))?,
            );
        }
    }
    let missing = n.saturating_sub(stored.len());
    if missing > 0 {
        progress.set_length(missing as u64);
        progress.set_message(format!("enrolling {missing} simulated agents"));
        let endpoint = net::client_endpoint(addr)?;
        let sem = Arc::new(tokio::sync::Semaphore::new(32));
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(missing);
        for i in 0..missing {
            let (endpoint, sem, token, done) = (
                endpoint.clone(),
                sem.clone(),
                token.to_string(),
                done.clone(),
            );
            let pb = progress.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let facts = DeviceFacts {
                    hostname: format!("sim-{i}"),
                    os: "simulated".into(),
                    kernel: "sim".into(),
                    arch: std::env::consts::ARCH.into(),
                    agent_version: "bench".into(),
                };
                let e = enroll::enroll(&endpoint, addr, &token, pin, facts).await?;
                done.fetch_add(1, Ordering::Relaxed);
                pb.inc(1);
                anyhow::Ok(e)
            }));
        }
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut ca_der = None;
        for t in tasks {
            let e = t.await??;
            ca_der.get_or_insert_with(|| e.ca_der.clone());
            let s = StoredIdentity {
                device_id: e.device_id.to_string(),
                cert_der_hex: hex::encode(&e.cert_der),
                key_pem: e.key_pem,
            };
            writeln!(out, "{}", serde_json::to_string(&s)?)?;
            stored.push(s);
        }
        if let Some(ca) = ca_der {
            std::fs::write(ca_file(state, &pin), ca)?;
        }
        endpoint.wait_idle().await;
    }
    let ca_bytes = std::fs::read(ca_file(state, &pin))
        .with_context(|| format!("reading the cached appliance CA in {}", state.display()))?;
    if CaFingerprint::of(&ca_bytes) != pin {
        bail!("cached CA in {} does not match {pin}", state.display());
    }
    let mut seen = HashMap::new();
    let mut identities = Vec::with_capacity(n);
    for s in stored.into_iter().take(n) {
        let device_id: DeviceId = s.device_id.parse()?;
        if seen.insert(device_id, ()).is_some() {
            continue;
        }
        identities.push(SimIdentity {
            device_id,
            cert: CertificateDer::from(hex::decode(&s.cert_der_hex)?),
            key: tls::key_from_pem(&s.key_pem, "cached key")?,
        });
    }
    Ok(Fleet {
        ca: CertificateDer::from(ca_bytes),
        identities,
    })
}

/// [`load_or_enroll`] without a progress bar (tests).
pub async fn load_or_enroll_quiet(
    state: &Path,
    addr: SocketAddr,
    token: &str,
    pin: CaFingerprint,
    n: usize,
) -> anyhow::Result<Fleet> {
    load_or_enroll(
        state,
        addr,
        token,
        pin,
        n,
        &indicatif::ProgressBar::hidden(),
    )
    .await
}

impl Fleet {
    /// The QUIC client configuration of identity `i`.
    pub fn client_config(&self, i: usize) -> anyhow::Result<quinn::ClientConfig> {
        let id = &self.identities[i];
        net::quic_client_config(tls::mtls_client_config(
            self.ca.clone(),
            vec![id.cert.clone()],
            id.key.clone_key(),
            ALPN_SESSION,
        )?)
    }
}

/// Client endpoints: one UDP socket (and one quinn driver) per group of agents.
pub fn endpoints(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<quinn::Endpoint>> {
    (0..count.max(1))
        .map(|_| net::client_endpoint(addr))
        .collect()
}
