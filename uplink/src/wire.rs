//! The uplink conversation between an appliance and `outpost-central`.
//!
//! Two ALPNs on central's QUIC listener:
//!
//! * **Join** ([`ALPN_UPLINK_JOIN`]): server-authenticated TLS, the appliance
//!   pins central's CA by fingerprint, sends one [`JoinRequest`] (one-time
//!   site token + CSR) and receives one [`JoinResponse`] carrying the site
//!   certificate. The private key never leaves the appliance.
//! * **Uplink** ([`ALPN_UPLINK`]): mutual TLS. The site and tenant come from
//!   the client certificate. One long-lived bidirectional stream: the
//!   appliance sends a [`SiteFrame::Hello`], central answers
//!   [`CentralFrame::Welcome`] with what it already applied, then the
//!   appliance streams [`SiteFrame::Batch`]es and central answers each with
//!   [`CentralFrame::Ack`] once the batch is durable (or was already applied),
//!   or [`CentralFrame::Reject`].
//!
//! * **Downlink** (protocol version 2, on the same stream): central sends
//!   [`CentralFrame::Commands`] (pushed at once, all of a site's open ones
//!   again after each `Welcome`) and [`CentralFrame::Cancel`]; the site
//!   answers [`SiteFrame::CommandAck`] once the command is durable at the
//!   site and streams [`SiteFrame::CommandUpdate`]s (state and output),
//!   each answered by [`CentralFrame::CommandUpdateAck`]. A site that says
//!   version 1 in its `Hello` is never sent a downlink frame. See
//!   [`crate::downlink`].
//! * **Deployments** (protocol version 5, same stream): central sends
//!   [`CentralFrame::DeployOrders`]; the site answers each with
//!   [`SiteFrame::DeployAck`] and reports [`SiteFrame::DeployProgress`],
//!   each answered by [`CentralFrame::DeployProgressAck`]. A site below
//!   version 5 is never sent an order. See [`crate::deploy_link`].
//!
//! Frames use `outpost_proto::frame` (length prefix checked before
//! allocation) and the one bincode configuration. Enums are encoded by
//! variant index: new variants are only appended.

use outpost_proto::{CustomerId, SiteId, TenantId};
use serde::{Deserialize, Serialize};

/// ALPN of site enrollment at central.
pub const ALPN_UPLINK_JOIN: &[u8] = b"outpost-uplink-join/1";
/// ALPN of the batch stream (mutual TLS).
pub const ALPN_UPLINK: &[u8] = b"outpost-uplink/1";
/// TLS server name appliances use for central; central's server certificate
/// carries it, and appliances pin central's own CA, so the name is fixed.
pub const CENTRAL_SERVER_NAME: &str = "outpost-central";
/// Version of the uplink protocol of this build (2: the downlink of
/// commands; 3: central reads batch formats 4 and 5, patch details and
/// findings; 4: unused (the file frames are defined and gated on
/// [`FILES_PROTOCOL_VERSION`], not wired yet); 5: the downlink of patch
/// deployments; 6: central reads and stores batch format 6, devices' IP
/// addresses and tags, [`DEVICE_TAGS_PROTOCOL_VERSION`], so a site sends
/// them to a central announcing 6; 7: files pushed and pulled from
/// central, [`FILES_PROTOCOL_VERSION`]; 8: the site applies
/// per-deployment install options, [`DEPLOY_OPTIONS_PROTOCOL_VERSION`];
/// 9: tag orders from central, [`TAGS_PROTOCOL_VERSION`]).
pub const UPLINK_PROTOCOL_VERSION: u16 = 9;
/// Oldest site protocol central still accepts (a version-1 site gets
/// batches acknowledged and no downlink frames).
pub const MIN_UPLINK_PROTOCOL_VERSION: u16 = 1;
/// First protocol version that carries the downlink of commands.
pub const COMMANDS_PROTOCOL_VERSION: u16 = 2;
/// First protocol version that carries file bytes ([`crate::files`]:
/// pushes and pulls from central). Central sends file frames only to
/// sites at or above it, and refuses a transfer for a site below it.
pub const FILES_PROTOCOL_VERSION: u16 = 7;
/// First protocol version whose central reads patch details and findings
/// (batch formats 4 and 5).
pub const PATCH_FINDINGS_PROTOCOL_VERSION: u16 = 3;
/// First protocol version whose central reads devices' IP addresses and
/// tags (batch format 6).
pub const DEVICE_TAGS_PROTOCOL_VERSION: u16 = 6;
/// First protocol version that carries deployment orders and progress
/// ([`crate::deploy_link`]).
pub const DEPLOY_PROTOCOL_VERSION: u16 = 5;
/// First protocol version whose site applies a deployment's install
/// options (`reboot`, `pre_script`, `post_script`, `snapshot` in the
/// create request's JSON). An older site would ignore them (its request
/// type skips unknown fields), so central refuses to send such a
/// deployment to it (409 at creation naming the site, or a `refused`
/// delivery for a site that connects later with an older build). The
/// frames are unchanged: the options travel in the JSON.
pub const DEPLOY_OPTIONS_PROTOCOL_VERSION: u16 = 8;
/// First protocol version whose site decodes and applies tag orders, and
/// whose central reads devices' approval decisions
/// ([`SiteFrame::ApprovalDecisions`])
/// (`crate::deploy_link::DeployOrderKind::SetTags`, appended last). Central
/// never sends one to an older site (it could not decode the frame):
/// refused at the API (409 naming the site) or, for a site that connects
/// later with an older build, recorded `refused` on delivery.
pub const TAGS_PROTOCOL_VERSION: u16 = 9;

/// The newest batch format a central that announced `protocol_version` in
/// its Welcome reads: 6 from [`DEVICE_TAGS_PROTOCOL_VERSION`], 5 from
/// [`PATCH_FINDINGS_PROTOCOL_VERSION`], else 3
/// (what centrals of versions 1 and 2 were released reading). The sender
/// re-encodes a stored batch above it ([`crate::batch::reencode_for`])
/// rather than have it refused for good.
pub fn max_batch_format(protocol_version: u16) -> u16 {
    if protocol_version >= DEVICE_TAGS_PROTOCOL_VERSION {
        crate::batch::BATCH_FORMAT
    } else if protocol_version >= PATCH_FINDINGS_PROTOCOL_VERSION {
        5
    } else {
        3
    }
}
/// Largest uplink frame (a batch is compressed and bounded well below it).
pub const MAX_UPLINK_FRAME_BYTES: usize = 32 * 1024 * 1024;

/// Frames an appliance sends on the uplink stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SiteFrame {
    Hello(SiteHello),
    Batch(WireBatch),
    /// A command of central's is durable at the site (or refused for good).
    CommandAck(crate::downlink::CommandAck),
    /// Where a command of central's stands at the site, with output.
    CommandUpdate(crate::downlink::CommandUpdate),
    /// Protocol 7 ([`FILES_PROTOCOL_VERSION`]): a pull's verified content
    /// (see [`crate::files`]).
    FileChunk(crate::files::UpFileChunk),
    /// The site holds a push's content up to `up_to`.
    FileAck(crate::files::UpFileAck),
    /// The site gives a stream up (either direction).
    FileAbort(crate::files::UpFileAbort),
    /// A deployment order of central's is applied at the site (or refused
    /// for good). Protocol 5.
    DeployAck(crate::deploy_link::DeployAck),
    /// Where a deployment of the site stands. Protocol 5.
    DeployProgress(crate::deploy_link::DeployProgress),
    /// Devices' approval decisions (which rule decided each missing
    /// patch). Protocol 9 ([`TAGS_PROTOCOL_VERSION`]): sent only to a
    /// central that announced it; no answer (a derived view, sent again
    /// on every new stream).
    ApprovalDecisions(Vec<crate::deploy_link::DeviceDecisions>),
}

/// Opening frame of an uplink stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteHello {
    pub protocol_version: u16,
    pub appliance_version: String,
    /// How often the appliance compacts a batch: central calls a site stale
    /// after a few missed intervals.
    pub interval_ms: u64,
    /// Batches waiting in the outbox when the stream opened.
    pub backlog_batches: u64,
}

/// One compacted batch: `payload` is `batch::encode` output (bincode + zstd).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireBatch {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// Frames central sends on the uplink stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CentralFrame {
    Welcome(CentralWelcome),
    /// Batch `seq` is durable at central (newly applied or a duplicate).
    Ack {
        seq: u64,
    },
    /// Batch `seq` was refused and will never be applied.
    Reject {
        seq: u64,
        reason: RejectReason,
        message: String,
    },
    /// Commands for devices of the site (idempotent by id).
    Commands(Vec<crate::downlink::DownCommand>),
    /// Stop a command (idempotent; unknown ids are ignored).
    Cancel {
        id: outpost_proto::ids::CommandId,
        by: String,
    },
    /// Central stored a [`SiteFrame::CommandUpdate`].
    CommandUpdateAck(crate::downlink::UpdateAck),
    /// Protocol 7 ([`FILES_PROTOCOL_VERSION`]): a push's content (see
    /// [`crate::files`]).
    FileChunk(crate::files::UpFileChunk),
    /// Central holds a pull's content up to `up_to`.
    FileAck(crate::files::UpFileAck),
    /// Central gives a stream up (either direction).
    FileAbort(crate::files::UpFileAbort),
    /// Deployment orders for the site (idempotent by id). Protocol 5.
    DeployOrders(Vec<crate::deploy_link::DeployOrder>),
    /// Central stored a [`SiteFrame::DeployProgress`]. Protocol 5.
    DeployProgressAck(crate::deploy_link::DeployProgressAck),
}

/// Answer to [`SiteHello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CentralWelcome {
    pub protocol_version: u16,
    /// The site id central read from the client certificate.
    pub site_id: SiteId,
    /// Every batch with `seq <= applied_up_to` is applied.
    pub applied_up_to: u64,
    /// Batches above `applied_up_to` already applied (sent out of order).
    pub applied_above: Vec<u64>,
}

/// Why central refused a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RejectReason {
    /// The batch claims another site or tenant than the certificate's.
    IdentityMismatch,
    /// The payload does not decode.
    Malformed,
    /// The frame's sequence number differs from the payload's.
    SequenceMismatch,
    /// Central could not store it (retry later).
    Internal,
}

impl RejectReason {
    /// Stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::IdentityMismatch => "identity_mismatch",
            RejectReason::Malformed => "malformed_batch",
            RejectReason::SequenceMismatch => "sequence_mismatch",
            RejectReason::Internal => "internal",
        }
    }

    /// Whether resending the same batch can ever succeed.
    pub fn is_permanent(self) -> bool {
        !matches!(self, RejectReason::Internal)
    }
}

/// Site enrollment request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub protocol_version: u16,
    /// One-time token printed by `outpost-central site add`.
    pub token: String,
    /// DER PKCS#10 request for the site's client certificate.
    pub csr_der: Vec<u8>,
    pub appliance_version: String,
    pub hostname: String,
}

/// Answer to [`JoinRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JoinResponse {
    Accepted {
        site_id: SiteId,
        site_name: String,
        tenant: TenantId,
        customer: CustomerId,
        /// The site's client certificate, DER.
        cert_der: Vec<u8>,
        /// Central's CA certificate, DER (its SHA-256 is the pinned fingerprint).
        ca_cert_der: Vec<u8>,
    },
    Rejected {
        message: String,
    },
}

/// QUIC application close codes of the uplink.
pub mod close {
    pub const NORMAL: u32 = 0;
    pub const PROTOCOL: u32 = 1;
    pub const UNKNOWN_SITE: u32 = 2;
    pub const SUPERSEDED: u32 = 3;
    pub const SHUTTING_DOWN: u32 = 4;
    pub const UNSUPPORTED_VERSION: u32 = 5;
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::frame::{FrameReader, encode_frame};

    #[test]
    fn frames_round_trip_through_the_framing() {
        let frames = vec![
            SiteFrame::Hello(SiteHello {
                protocol_version: UPLINK_PROTOCOL_VERSION,
                appliance_version: "0.1.0".into(),
                interval_ms: 60_000,
                backlog_batches: 3,
            }),
            SiteFrame::Batch(WireBatch {
                seq: 7,
                payload: vec![1, 2, 3],
            }),
            SiteFrame::FileChunk(crate::files::UpFileChunk {
                transfer: outpost_proto::ids::TransferId([3; 16]),
                offset: 262_144,
                bytes: vec![9; 100],
                last: true,
            }),
            SiteFrame::FileAck(crate::files::UpFileAck {
                transfer: outpost_proto::ids::TransferId([4; 16]),
                up_to: 5,
            }),
            SiteFrame::FileAbort(crate::files::UpFileAbort {
                transfer: outpost_proto::ids::TransferId([4; 16]),
                reason: "hash mismatch".into(),
            }),
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            bytes.extend_from_slice(&encode_frame(f, MAX_UPLINK_FRAME_BYTES).unwrap());
        }
        let mut r = FrameReader::new(MAX_UPLINK_FRAME_BYTES);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut slice: &[u8] = &bytes;
        let got: Vec<SiteFrame> = rt.block_on(async {
            let mut v = Vec::new();
            while let Some(f) = r.next::<SiteFrame, _>(&mut slice).await.unwrap() {
                v.push(f);
            }
            v
        });
        assert_eq!(got, frames);
    }
}
