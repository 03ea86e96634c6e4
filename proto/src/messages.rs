//! Message types exchanged between agents and the appliance.
//!
//! Two conversations exist, each on its own ALPN:
//!
//! * **Enrollment** ([`crate::ALPN_ENROLL`]): one bidirectional stream, one
//!   [`EnrollRequest`] answered by one [`EnrollResponse`].
//! * **Session** ([`crate::ALPN_SESSION`]): a long-lived bidirectional
//!   session stream on which the agent sends [`AgentFrame`]s (a `Hello`, then
//!   batches of sequenced [`Record`]s) and the appliance answers with
//!   [`ApplianceFrame`]s (a `Welcome`, then cumulative [`Ack`]s once records
//!   are durable); from session protocol 2 on, one more stream per further
//!   [`Flow`] (commands, files). The protocol itself is
//!   [`crate::session`].
//!
//! Compatibility: enums are encoded by variant index, so new variants are only
//! ever appended; a field change means a new protocol version (session
//! frames: [`crate::SESSION_PROTOCOL_VERSION`]; enrollment:
//! [`crate::PROTOCOL_VERSION`]).

use serde::{Deserialize, Serialize};

use crate::ids::{CommandId, TransferId};
use crate::{CustomerId, DeviceId, TenantId};

/// Frames an agent sends on its session stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentFrame {
    /// First frame of every session.
    Hello(Hello),
    /// One or more records, in increasing sequence order.
    Records(Vec<Record>),
    /// The agent is going away cleanly (for example on shutdown).
    Goodbye { reason: String },
    // ---- session protocol 2 (see `crate::session`) ----
    /// First frame of every stream after the session stream: which flow
    /// the stream carries. Only after a `Welcome` of protocol 2 or later.
    OpenFlow(Flow),
    /// On the command flow: acknowledgements, progress, output and results.
    Command(CommandUp),
    /// On the file flow: chunks of pulled files, acknowledgements of pushed ones.
    File(FileFrame),
}

/// Frames the appliance sends on a session stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApplianceFrame {
    /// Answer to `Hello`.
    Welcome(Welcome),
    /// Every record with `seq <= up_to_seq` is durable; the agent may delete it.
    Ack(Ack),
    /// The appliance is closing the session; the reason tells the agent whether
    /// to retry.
    Close(Close),
    // ---- session protocol 2 (see `crate::session`) ----
    /// On the command flow: commands, cancellations and acknowledgements.
    Command(CommandDown),
    /// On the file flow: chunks of pushed files, acknowledgements of pulled ones.
    File(FileFrame),
    // ---- session protocol 3 (see `crate::session::pressure`) ----
    /// On the session stream: the appliance holds this session's records
    /// and is slow to make them durable; the agent keeps the connection and
    /// waits longer for the ack instead of reconnecting. Only to agents
    /// that were welcomed with protocol 3 or later.
    Pressure(Pressure),
}

/// Back-pressure from the appliance (session protocol 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pressure {
    /// How long the session's oldest unacknowledged record has waited in
    /// the appliance's queue.
    pub queue_delay_ms: u32,
    /// How long the agent should wait for an acknowledgement before it
    /// gives the connection up (it clamps this to its own bounds).
    pub ack_timeout_hint_ms: u32,
}

/// Opening message of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u16,
    pub agent_version: String,
    /// The agent's heartbeat interval; the appliance declares the device
    /// offline after two missed intervals plus a grace period.
    pub heartbeat_interval_ms: u32,
    pub metrics_interval_ms: u32,
}

/// Answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u16,
    /// The identity the appliance read from the client certificate.
    pub device_id: DeviceId,
    /// Highest sequence number already stored for this device: the agent can
    /// drop everything up to it without resending (acks lost in a crash).
    pub last_stored_seq: u64,
    pub max_frame_bytes: u32,
}

/// Cumulative acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub up_to_seq: u64,
}

/// The flows of a device session beyond records, each on its own QUIC
/// stream (see `crate::session` for the mapping and flow control).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Flow {
    /// The session stream: Hello/Welcome, records and their acks, Close.
    Records,
    /// Commands down; acknowledgements, output and results up.
    Commands,
    /// File chunks both ways, each direction acknowledged by the other.
    Files,
}

impl Flow {
    pub const ALL: [Flow; 3] = [Flow::Records, Flow::Commands, Flow::Files];

    /// Stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Flow::Records => "records",
            Flow::Commands => "commands",
            Flow::Files => "files",
        }
    }
}

/// A command pushed to an agent. The session carries `spec` without
/// reading it (what to run, how, limits: the command executor's format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Idempotency key: the agent runs a given id at most once.
    pub id: CommandId,
    #[serde(with = "raw_bytes")]
    pub spec: Vec<u8>,
}

/// Command-flow frames from the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandDown {
    /// Run this command (at-least-once: re-sent after reconnects until acked).
    Command(Command),
    /// Stop the command if it runs; forget it if it has not started.
    Cancel { id: CommandId },
    /// The command's result is durable on the appliance: the agent may
    /// forget it (and stops re-sending it).
    ResultAck { id: CommandId },
    /// The command's output up to this byte offset is durable on the appliance.
    OutputAck { id: CommandId, up_to: u64 },
}

/// Command-flow frames from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandUp {
    /// The agent recorded the command id durably (whether it was new or a
    /// redelivery): the appliance stops re-sending it.
    Ack { id: CommandId },
    /// The command's process started.
    Started { id: CommandId, started_ms: u64 },
    /// A piece of the command's output (stdout and stderr interleaved as
    /// produced), at a byte offset: re-sent pieces are recognised by it.
    Output(CommandOutput),
    /// The command ended (or never started): sent until `ResultAck`.
    Result(CommandResult),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutput {
    pub id: CommandId,
    pub offset: u64,
    #[serde(with = "raw_bytes")]
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: CommandId,
    pub outcome: CommandOutcome,
    /// Output bytes the command produced in total (the output flow carries
    /// at most this many).
    pub output_bytes: u64,
    pub finished_ms: u64,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    Exited {
        code: i32,
    },
    /// Killed by a signal it did not expect (not a timeout or cancel).
    Signaled {
        signal: i32,
    },
    TimedOut,
    Cancelled,
    /// It was running when the agent or its host died; never re-run.
    Interrupted,
    /// The agent's policy refused it (never started).
    Refused {
        reason: String,
    },
    /// It could not be started (interpreter missing, bad working directory...).
    FailedToStart {
        message: String,
    },
}

/// File-flow frames, the same in both directions: the sender of a transfer
/// sends chunks, its receiver acknowledges them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileFrame {
    Chunk(FileChunk),
    /// The receiver holds the transfer's bytes durably up to this offset:
    /// the sender's window moves, and after a reconnect it resumes here.
    Ack {
        transfer: TransferId,
        up_to: u64,
    },
    /// Either side gives the transfer up.
    Abort {
        transfer: TransferId,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChunk {
    pub transfer: TransferId,
    pub offset: u64,
    #[serde(with = "raw_bytes")]
    pub bytes: Vec<u8>,
    /// The last chunk: the transfer's size is `offset + bytes.len()`.
    pub last: bool,
}

/// Byte payloads as one byte string rather than a sequence of `u8`
/// values: the same bincode encoding (a length, then the bytes), copied in
/// one piece instead of decoded byte by byte.
pub(crate) mod raw_bytes {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Human-readable formats write bytes as a list of numbers.
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                v.push(b);
            }
            Ok(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }
}

/// Why the appliance closes a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Close {
    pub reason: CloseReason,
    pub message: String,
}

/// Reasons for closing a connection. Also sent as the QUIC application error
/// code ([`CloseReason::code`]) so a peer learns it even without the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CloseReason {
    /// Normal close.
    Normal,
    UnsupportedVersion,
    MalformedFrame,
    OversizeFrame,
    /// The device's certificate was revoked: do not retry.
    Revoked,
    /// The certificate names a device this appliance does not know.
    UnknownDevice,
    /// A newer session of the same device replaced this one.
    Superseded,
    ShuttingDown,
    /// A frame was valid but not allowed here (for example records before Hello).
    ProtocolViolation,
    /// The session ALPN was used without a client certificate.
    ClientCertificateRequired,
    Internal,
}

impl CloseReason {
    const ALL: [CloseReason; 11] = [
        CloseReason::Normal,
        CloseReason::UnsupportedVersion,
        CloseReason::MalformedFrame,
        CloseReason::OversizeFrame,
        CloseReason::Revoked,
        CloseReason::UnknownDevice,
        CloseReason::Superseded,
        CloseReason::ShuttingDown,
        CloseReason::ProtocolViolation,
        CloseReason::ClientCertificateRequired,
        CloseReason::Internal,
    ];

    /// QUIC application error code.
    pub fn code(self) -> u32 {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0) as u32
    }

    pub fn from_code(code: u64) -> Option<CloseReason> {
        usize::try_from(code)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// Stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::UnsupportedVersion => "unsupported_version",
            CloseReason::MalformedFrame => "malformed_frame",
            CloseReason::OversizeFrame => "oversize_frame",
            CloseReason::Revoked => "revoked",
            CloseReason::UnknownDevice => "unknown_device",
            CloseReason::Superseded => "superseded",
            CloseReason::ShuttingDown => "shutting_down",
            CloseReason::ProtocolViolation => "protocol_violation",
            CloseReason::ClientCertificateRequired => "client_certificate_required",
            CloseReason::Internal => "internal",
        }
    }

    /// Whether an agent should stop reconnecting after this reason.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            CloseReason::Revoked | CloseReason::UnknownDevice | CloseReason::UnsupportedVersion
        )
    }
}

/// One sequenced, acknowledged unit of telemetry.
///
/// `seq` is per device, strictly increasing, assigned by the agent when the
/// record enters its buffer. The appliance stores each `seq` once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Collection time on the agent, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub body: RecordBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecordBody {
    Heartbeat(Heartbeat),
    Metrics(MetricsSample),
    Inventory(Box<Inventory>),
    /// A package scan (issue 14): a full scan or a delta against the
    /// previous one, in the patch subsystem's own versioned encoding.
    PackageScan(PackageScanRecord),
    /// A patch deployment's status on this device (issue 15), in the
    /// patch subsystem's own versioned encoding.
    PatchStatus(PatchStatusRecord),
}

impl RecordBody {
    /// Every kind's label, indexed by [`RecordBody::kind_index`].
    pub const KINDS: [&'static str; 5] = [
        "heartbeat",
        "metrics",
        "inventory",
        "package_scan",
        "patch_status",
    ];

    /// The kind's label (metrics, logs).
    pub fn kind(&self) -> &'static str {
        Self::KINDS[self.kind_index()]
    }

    /// The kind's position in [`RecordBody::KINDS`]: per-kind counters
    /// without a label lookup per record.
    pub fn kind_index(&self) -> usize {
        match self {
            RecordBody::Heartbeat(_) => 0,
            RecordBody::Metrics(_) => 1,
            RecordBody::Inventory(_) => 2,
            RecordBody::PackageScan(_) => 3,
            RecordBody::PatchStatus(_) => 4,
        }
    }
}

/// A package scan as the session carries it: opaque to the session and to
/// ingest (which stores it for the patch subsystem as is). `payload` is
/// `outpost_patch::scan::PackageReport` encoded with
/// [`crate::codec::encode_compressed`]; `format` names that encoding
/// (`outpost_patch::scan::PACKAGE_REPORT_FORMAT`), so an appliance that
/// does not know a format refuses the record with a reason and asks for a
/// full scan instead of guessing.
///
/// A report larger than [`PackageScanRecord::MAX_PART_BYTES`] is sent as
/// several records (`part` 0..`parts`, in sequence order, possibly
/// interleaved with other kinds): every part fits the smallest frame an
/// appliance may configure, so no report is ever undeliverable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageScanRecord {
    pub format: u16,
    /// A whole scan (else a delta against the device's previous scan).
    pub full: bool,
    /// This record's index among the report's parts, and their number.
    pub part: u32,
    pub parts: u32,
    #[serde(with = "raw_bytes")]
    pub payload: Vec<u8>,
}

impl PackageScanRecord {
    /// Payload bytes per record: with the frame, record and field overhead
    /// (under 100 bytes) it fits `session::MIN_FRAME_BYTES` (1 KiB).
    pub const MAX_PART_BYTES: usize = 768;
    /// Parts one report may have (768 KiB compressed, ~50,000 packages).
    pub const MAX_PARTS: u32 = 1024;
}

/// A report's payload as part records carry it: `(part, parts, bytes)`,
/// each at most [`PackageScanRecord::MAX_PART_BYTES`] (the sender checks
/// the total against [`PackageScanRecord::MAX_PARTS`] first).
pub fn split_parts(payload: &[u8]) -> impl Iterator<Item = (u32, u32, &[u8])> {
    let chunks = payload.chunks(PackageScanRecord::MAX_PART_BYTES);
    let parts = chunks.len().max(1) as u32;
    chunks.enumerate().map(move |(i, c)| (i as u32, parts, c))
}

/// Where the next report stands among a device's stored part records
/// ([`PackageScanRecord`] and [`PatchStatusRecord`] share the scheme), see
/// [`next_parts_group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartsGroup {
    /// The first `n` records are the whole report.
    Complete(usize),
    /// Its first parts are here, in order; the rest has not arrived yet.
    Waiting,
    /// The first record does not start a well-formed report (a part
    /// without its start, a part missing, another report's part between):
    /// the caller refuses that one record and looks again.
    Broken,
}

/// Classifies the report starting at `records[0]` (in sequence order);
/// `header` gives a record's `(part, parts, kind)`, where `kind` (format,
/// full or delta...) must be the same for every part of one report.
pub fn next_parts_group<T, K: PartialEq>(
    records: &[T],
    header: impl Fn(&T) -> (u32, u32, K),
) -> PartsGroup {
    let Some(first) = records.first() else {
        return PartsGroup::Waiting;
    };
    let (part, parts, kind) = header(first);
    if part != 0 || parts == 0 || parts > PackageScanRecord::MAX_PARTS {
        return PartsGroup::Broken;
    }
    let n = parts as usize;
    let in_order = records.iter().take(n).enumerate().all(|(j, r)| {
        let (p, ps, k) = header(r);
        p as usize == j && ps == parts && k == kind
    });
    match (in_order, records.len() >= n) {
        (true, true) => PartsGroup::Complete(n),
        (true, false) => PartsGroup::Waiting,
        (false, _) => PartsGroup::Broken,
    }
}

/// One status report of a patch install or rollback on the device, opaque
/// to the session and to ingest: `payload` is
/// `outpost_patch::install::wire::DeviceStatus` encoded with
/// [`crate::codec::encode_compressed`], `format` its encoding
/// (`outpost_patch::install::wire::STATUS_FORMAT`). Split into parts as
/// [`PackageScanRecord`] is, with the same limits, so every part fits the
/// smallest frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchStatusRecord {
    pub format: u16,
    pub part: u32,
    pub parts: u32,
    #[serde(with = "raw_bytes")]
    pub payload: Vec<u8>,
}

/// "I am alive", with the cheapest facts worth having at heartbeat rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub uptime_s: u64,
    /// Records waiting in the agent's buffer (backlog visibility).
    pub buffered_records: u32,
    /// Records the agent dropped because its buffer was full, since install.
    pub dropped_records: u64,
}

/// A set of metric values collected at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSample {
    pub values: Vec<MetricValue>,
}

/// One value of one series. A series is a metric name plus an optional label
/// (a mount point for disk metrics, an interface for network metrics; empty
/// when the metric has none). See [`crate::metric_names`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricValue {
    pub name: String,
    pub label: String,
    pub value: f64,
}

/// Hardware and software inventory, sent at start and daily.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Inventory {
    pub hostname: String,
    pub os_name: String,
    pub os_version: String,
    pub kernel: String,
    pub arch: String,
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub memory_total_bytes: u64,
    pub disks: Vec<DiskInventory>,
    pub nics: Vec<NicInventory>,
    pub agent_version: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DiskInventory {
    pub mount: String,
    pub filesystem: String,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NicInventory {
    pub name: String,
    pub mac: String,
    pub ips: Vec<String>,
}

/// Facts a device reports about itself when enrolling.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeviceFacts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub agent_version: String,
}

/// Enrollment request: a one-time token and a certificate signing request.
/// The private key never leaves the endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub protocol_version: u16,
    pub token: String,
    /// DER-encoded PKCS#10 certificate signing request.
    pub csr_der: Vec<u8>,
    pub facts: DeviceFacts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EnrollResponse {
    Accepted {
        device_id: DeviceId,
        tenant: TenantId,
        customer: CustomerId,
        /// The device's client certificate, DER.
        cert_der: Vec<u8>,
        /// The appliance CA certificate, DER (its SHA-256 is the pinned fingerprint).
        ca_cert_der: Vec<u8>,
    },
    Rejected {
        reason: EnrollRejectReason,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrollRejectReason {
    UnknownToken,
    ExpiredToken,
    TokenUsedUp,
    BadCsr,
    UnsupportedVersion,
    Internal,
}

impl EnrollRejectReason {
    pub fn label(self) -> &'static str {
        match self {
            EnrollRejectReason::UnknownToken => "unknown_token",
            EnrollRejectReason::ExpiredToken => "expired_token",
            EnrollRejectReason::TokenUsedUp => "token_used_up",
            EnrollRejectReason::BadCsr => "bad_csr",
            EnrollRejectReason::UnsupportedVersion => "unsupported_version",
            EnrollRejectReason::Internal => "internal",
        }
    }
}

/// A few valid frames of every kind, for codec tests.
#[cfg(test)]
pub(crate) fn sample_agent_frames() -> Vec<AgentFrame> {
    vec![
        AgentFrame::Hello(Hello {
            protocol_version: crate::PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            heartbeat_interval_ms: 30_000,
            metrics_interval_ms: 60_000,
        }),
        AgentFrame::Records(vec![Record {
            seq: 1,
            ts_ms: 1_700_000_000_000,
            body: RecordBody::Heartbeat(Heartbeat {
                uptime_s: 3600,
                buffered_records: 0,
                dropped_records: 0,
            }),
        }]),
        AgentFrame::Records(vec![Record {
            seq: 2,
            ts_ms: 1_700_000_000_500,
            body: RecordBody::Metrics(MetricsSample {
                values: vec![
                    MetricValue {
                        name: "cpu".into(),
                        label: String::new(),
                        value: 12.5,
                    },
                    MetricValue {
                        name: "disk_used_percent".into(),
                        label: "/".into(),
                        value: 71.0,
                    },
                ],
            }),
        }]),
        AgentFrame::Records(vec![Record {
            seq: 3,
            ts_ms: 1_700_000_001_000,
            body: RecordBody::Inventory(Box::new(Inventory {
                hostname: "web-1".into(),
                os_name: "Debian GNU/Linux".into(),
                cpu_cores: 4,
                disks: vec![DiskInventory {
                    mount: "/".into(),
                    filesystem: "ext4".into(),
                    total_bytes: 1 << 40,
                }],
                nics: vec![NicInventory {
                    name: "eth0".into(),
                    mac: "00:11:22:33:44:55".into(),
                    ips: vec!["10.0.0.5".into()],
                }],
                ..Inventory::default()
            })),
        }]),
        AgentFrame::Goodbye {
            reason: "shutdown".into(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_payload_is_parts_in_order_that_join_back() {
        let payload: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
        let parts: Vec<_> = split_parts(&payload).collect();
        assert_eq!(parts.len(), 3);
        assert!(
            parts
                .iter()
                .enumerate()
                .all(|(i, p)| p.0 == i as u32 && p.1 == 3)
        );
        assert!(
            parts
                .iter()
                .all(|p| p.2.len() <= PackageScanRecord::MAX_PART_BYTES)
        );
        assert_eq!(
            parts
                .iter()
                .flat_map(|p| p.2.iter().copied())
                .collect::<Vec<_>>(),
            payload
        );
        let one: Vec<_> = split_parts(b"x").collect();
        assert_eq!(one, vec![(0, 1, &b"x"[..])]);
    }

    #[test]
    fn parts_groups_are_complete_waiting_or_broken() {
        let h = |r: &(u32, u32, u16)| *r;
        let g = |v: &[(u32, u32, u16)]| next_parts_group(v, h);
        assert_eq!(g(&[(0, 1, 1)]), PartsGroup::Complete(1));
        assert_eq!(
            g(&[(0, 2, 1), (1, 2, 1), (0, 1, 1)]),
            PartsGroup::Complete(2)
        );
        assert_eq!(g(&[(0, 3, 1), (1, 3, 1)]), PartsGroup::Waiting);
        assert_eq!(g(&[]), PartsGroup::Waiting);
        // A part without its start, zero or too many parts, a missing
        // part, another report's part between, another kind.
        assert_eq!(g(&[(1, 2, 1)]), PartsGroup::Broken);
        assert_eq!(g(&[(0, 0, 1)]), PartsGroup::Broken);
        let too_many = PackageScanRecord::MAX_PARTS + 1;
        assert_eq!(g(&[(0, too_many, 1)]), PartsGroup::Broken);
        assert_eq!(g(&[(0, 3, 1), (2, 3, 1)]), PartsGroup::Broken);
        assert_eq!(g(&[(0, 2, 1), (0, 1, 1)]), PartsGroup::Broken);
        assert_eq!(g(&[(0, 2, 1), (1, 2, 2)]), PartsGroup::Broken);
    }

    #[test]
    fn byte_payloads_encode_like_a_vec_of_u8_and_round_trip() {
        let chunk = FileChunk {
            transfer: TransferId([1; 16]),
            offset: 300,
            bytes: (0..=255u8).collect(),
            last: true,
        };
        let plain = (
            chunk.transfer,
            chunk.offset,
            chunk.bytes.clone(),
            chunk.last,
        );
        let bin = crate::codec::encode(&chunk).unwrap();
        assert_eq!(bin, crate::codec::encode(&plain).unwrap());
        assert_eq!(crate::codec::decode::<FileChunk>(&bin).unwrap(), chunk);
        let json = serde_json::to_string(&chunk).unwrap();
        assert_eq!(serde_json::from_str::<FileChunk>(&json).unwrap(), chunk);
        // A length beyond the input fails, without allocating it.
        let mut bad = crate::codec::encode(&Command {
            id: CommandId([0; 16]),
            spec: vec![],
        })
        .unwrap();
        bad.truncate(16);
        bad.extend_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0x7f]);
        assert!(crate::codec::decode::<Command>(&bad).is_err());
    }

    #[test]
    fn close_reason_codes_round_trip() {
        for r in CloseReason::ALL {
            assert_eq!(CloseReason::from_code(r.code() as u64), Some(r));
        }
        assert_eq!(CloseReason::from_code(999), None);
    }
}
