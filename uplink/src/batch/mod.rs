//! The uplink batch: what one site tells central per interval.
//!
//! A [`SiteBatch`] holds what changed since the previous batch: device
//! registry and status snapshots (latest wins), closed 5-minute rollups of
//! every series of a device and bucket, alert transitions, the site's
//! devices enrolled under another tenant ([`ForeignTenant`], a snapshot),
//! and room for patch compliance and command summaries. [`encode`] turns it into bytes (rollups
//! in the columnar [`compact`] form, then the one bincode configuration, then
//! zstd); [`decode`] reverses it with bounded allocation and never panics:
//! every count a sender chooses is checked against [`limits`] before
//! anything is allocated from it. [`open`] decompresses a batch and reads
//! only its [`BatchHeader`] (format, sequence, site, tenant), so a receiver
//! checks who the batch claims to be before it decodes the body.
//!
//! Applying a batch at central is order-independent and idempotent by
//! construction: device snapshots carry `as_of_ms` (last writer wins),
//! rollups carry `computed_ms` (a recomputed bucket replaces an older
//! computation, never the reverse), alert transitions are keyed by
//! `(alert_id, at_ms, state)`. Sequence numbers make each batch apply once.

pub mod compact;
pub mod findings;
pub mod limits;

pub use findings::{FindingSeverity, MissingPatchEntry, PatchFindings, VulnGroup};

use outpost_proto::DeviceId;
use outpost_proto::codec::{self, CodecError};
use outpost_proto::{CustomerId, SiteId, TenantId};
use serde::{Deserialize, Serialize};

pub use outpost_proto::alert::Severity;

/// Newest version of the batch layout inside the payload (this build reads
/// 1 to this one).
/// 2: rollup `min` column relative to the previous entry (see [`compact`]);
/// 3: alert state [`AlertState::Cleared`], and the batch is followed by
///    the [`ForeignTenant`] list;
/// 4: followed by the [`PatchDetail`] of each patch compliance entry;
/// 5: followed by the devices' [`PatchFindings`] (missing patches and
///    CVEs, strings in a per-batch dictionary, see [`findings`]);
/// 6: followed by the [`DeviceIpsTags`] (IP addresses and tags) of the
///    devices whose snapshot the batch carries.
/// Batches of every earlier format (still in an outbox after an upgrade)
/// are decoded too. A batch is written in the oldest format that can carry
/// it ([`format_of`]): 2 unless it holds a `cleared` transition or a
/// foreign tenant, so a central that reads only format 2 refuses only those
/// batches, by their format number (upgrade central first all the same).
/// The sender never sends a central more than it announced it reads
/// ([`crate::wire::max_batch_format`], [`downgrade`]).
pub const BATCH_FORMAT: u16 = 6;
pub use limits::{Limit, MAX_DECODED_BYTES, OverLimit};

/// Everything one batch carries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SiteBatch {
    /// Per-site sequence number, from 1, strictly increasing.
    pub seq: u64,
    /// The site this batch claims to come from (checked against the certificate).
    pub site: SiteId,
    /// The tenant (MSP) it claims (checked against the certificate).
    pub tenant: TenantId,
    /// Appliance clock when the batch was compacted.
    pub created_ms: u64,
    pub devices: Vec<DeviceUpdate>,
    pub rollups: Vec<DeviceRollups>,
    pub alerts: Vec<AlertTransition>,
    /// Reserved for the patch issue: per-device compliance summaries.
    pub patch_compliance: Vec<PatchCompliance>,
    /// Reserved for the commands issue: per-device command summaries.
    pub commands: Vec<CommandSummary>,
    /// Rollup entries removed from this batch by the outbox bound.
    pub dropped_rollups: u64,
    /// The site's devices (not revoked) enrolled under a tenant other than
    /// `tenant`, per tenant, as of `created_ms`: a snapshot, empty when
    /// there are none (and in batches of format 2 or older).
    pub foreign_tenants: Vec<ForeignTenant>,
    /// Since format 5: the missing patches and CVEs of the devices whose
    /// assessment changed (one entry per device, its latest).
    pub patch_findings: Vec<PatchFindings>,
    /// Since format 6: the IP addresses and tags of devices whose snapshot
    /// is in `devices` (at most one entry per device).
    pub device_facts: Vec<DeviceIpsTags>,
}

/// A device's IP addresses (of its interfaces, loopback and link-local
/// left out, no prefix length) and tags, as its site knows them (format
/// 6). Sent with the device's snapshot, whole: central replaces what it
/// had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIpsTags {
    pub device: DeviceId,
    pub ips: Vec<String>,
    pub tags: Vec<String>,
}

/// Most addresses and most tags of one device in a batch.
pub const MAX_DEVICE_FACTS: usize = 64;
/// Longest address or tag (bytes).
pub const MAX_FACT_BYTES: usize = 100;

impl DeviceIpsTags {
    /// Whether it keeps to [`MAX_DEVICE_FACTS`] and [`MAX_FACT_BYTES`].
    pub fn check(&self) -> Result<(), String> {
        for (what, v) in [("addresses", &self.ips), ("tags", &self.tags)] {
            if v.len() > MAX_DEVICE_FACTS {
                return Err(format!(
                    "device {} has {} {what}, more than {MAX_DEVICE_FACTS}",
                    self.device,
                    v.len()
                ));
            }
            if let Some(s) = v.iter().find(|s| s.len() > MAX_FACT_BYTES) {
                return Err(format!(
                    "device {}: {what} entry of {} bytes, more than {MAX_FACT_BYTES}",
                    self.device,
                    s.len()
                ));
            }
        }
        Ok(())
    }
}

/// Devices of a site enrolled under a tenant other than the one the site
/// joined central as (an enrollment token created with a mistyped
/// `--tenant`, or a site created for the wrong tenant). Central keeps its
/// own tenant, the one of the site certificate, and shows the mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignTenant {
    /// The tenant the devices were enrolled under.
    pub tenant: TenantId,
    /// How many of the site's devices (not revoked) were.
    pub devices: u32,
}

impl SiteBatch {
    /// Number of (device, bucket, series) rollups.
    pub fn rollup_count(&self) -> usize {
        self.rollups.iter().map(|r| r.series.len()).sum()
    }
}

/// Snapshot of one device: registry facts and current status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceUpdate {
    pub device: DeviceId,
    pub customer: CustomerId,
    pub hostname: String,
    pub os: String,
    pub agent_version: String,
    pub enrolled_at_ms: u64,
    pub revoked: bool,
    pub status: DeviceStatus,
    pub status_since_ms: u64,
    pub last_seen_ms: u64,
    /// When the appliance took this snapshot (last writer wins at central).
    pub as_of_ms: u64,
}

/// Online status of a device, as the batch carries it. The batch's own
/// type (not the appliance's storage model), so that a change in the
/// appliance's tables cannot change the batch format; the compactor
/// converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Enrolled, never heard from on a session.
    Pending,
    Online,
    Offline,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Online => "online",
            DeviceStatus::Offline => "offline",
        }
    }
}

/// Min/max/sum/count/last of one series over one 5-minute bucket, as the
/// batch carries it (the batch's own type, like [`DeviceStatus`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rollup {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: u64,
    pub last: f64,
    /// Timestamp of `last`.
    pub last_ts_ms: u64,
}

/// Rollups of every series of one device for one closed bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRollups {
    pub device: DeviceId,
    pub bucket_start_ms: u64,
    /// When the appliance (re)computed the bucket: a later computation
    /// (late samples) replaces an earlier one at central, never the reverse.
    pub computed_ms: u64,
    pub series: Vec<SeriesRollup>,
}

/// One series' rollup in a bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesRollup {
    pub name: String,
    pub label: String,
    pub rollup: Rollup,
}

/// Lifecycle state an alert moved to. Encoded by position: new states
/// only at the end, each with a new [`BATCH_FORMAT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Pending,
    Firing,
    /// firing → resolved.
    Resolved,
    /// pending → cleared: the condition stopped (or its series went stale)
    /// before the alert fired. Format 3.
    Cleared,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
            AlertState::Cleared => "cleared",
        }
    }

    /// The first batch format that can carry this state.
    fn since_format(self) -> u16 {
        match self {
            AlertState::Pending | AlertState::Firing | AlertState::Resolved => 1,
            AlertState::Cleared => 3,
        }
    }
}

/// One alert lifecycle transition, as the appliance's alert engine records
/// it. Feed it to the uplink with `outbox::push_alert_transition` (or
/// `outbox::alert_transition_into` inside the engine's own write batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertTransition {
    /// Stable id of the alert instance on this appliance (same id for its
    /// pending, firing and resolved transitions).
    pub alert_id: u64,
    /// The device concerned, if any (site-wide alerts have none).
    pub device: Option<DeviceId>,
    /// Name of the rule that raised it (`cpu_high`, `device_offline`, ...).
    pub rule: String,
    pub severity: Severity,
    /// The state entered at `at_ms`.
    pub state: AlertState,
    pub at_ms: u64,
    /// Human-readable summary (`cpu 97.5 > 90 for 5m`).
    pub message: String,
    /// The observed value that caused the transition, if any.
    pub value: Option<f64>,
}

/// Patch compliance of one device: a snapshot of its assessment at the
/// site, sent when the assessment changed (latest `as_of_ms` wins at
/// central).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchCompliance {
    pub device: DeviceId,
    /// Missing patches (upgradable packages).
    pub missing: u32,
    /// Missing security patches of critical severity.
    pub missing_critical: u32,
    /// 1 when the device waits for a reboot, 0 otherwise (the site does
    /// not count installed patches per reboot).
    pub installed_pending_reboot: u32,
    /// When the site assessed the device (appliance clock).
    pub as_of_ms: u64,
    /// Since format 4: the rest of the assessment. `None` in batches of
    /// format 3 or older (which carry only the fields above).
    pub detail: Option<PatchDetail>,
}

/// What format 4 adds to a [`PatchCompliance`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchDetail {
    pub compliance: ComplianceState,
    /// Missing security patches by (effective) severity.
    pub security_patches: PatchSeverityCounts,
    /// Vulnerable and fixable CVEs (not unimportant).
    pub fixable_cves: u32,
    /// Vulnerable CVEs without a fix yet (not unimportant).
    pub open_cves: u32,
    /// 0–100; `None` when the device is not assessed.
    pub risk: Option<u32>,
    /// When the device's package scan was taken (its clock).
    pub scanned_at_ms: u64,
    pub reboot_required: bool,
}

/// A device's patch compliance, as the batch carries it (the batch's own
/// type: new states are appended, never reordered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComplianceState {
    Compliant,
    NonCompliant,
    /// A release the site's catalog does not know (or RPM): never counted
    /// as compliant.
    UnsupportedRelease,
    /// The site has no advisories imported yet.
    NoCatalog,
}

impl ComplianceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ComplianceState::Compliant => "compliant",
            ComplianceState::NonCompliant => "non-compliant",
            ComplianceState::UnsupportedRelease => "unsupported-release",
            ComplianceState::NoCatalog => "no-catalog",
        }
    }
}

/// Counts by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchSeverityCounts {
    pub critical: u32,
    pub high: u32,
    pub medium: u32,
    pub low: u32,
    pub unknown: u32,
}

/// The fields of a [`PatchCompliance`] every format carries (the layout
/// of formats 1 to 3).
#[derive(Debug, Serialize, Deserialize)]
struct WirePatchCompliance {
    device: DeviceId,
    missing: u32,
    missing_critical: u32,
    installed_pending_reboot: u32,
    as_of_ms: u64,
}

/// Command counts of one device since the previous batch (filled by the
/// commands issue).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandSummary {
    pub device: DeviceId,
    pub completed: u32,
    pub failed: u32,
    pub timed_out: u32,
    pub as_of_ms: u64,
}

/// The encoded layout (bincode), rollups in columnar form. Every list is
/// decoded bounded by its [`limits`].
#[derive(Debug, Serialize, Deserialize)]
struct WireSiteBatch {
    format: u16,
    seq: u64,
    site: SiteId,
    tenant: TenantId,
    created_ms: u64,
    #[serde(deserialize_with = "limits::de::device_updates")]
    devices: Vec<DeviceUpdate>,
    rollups: compact::CompactRollups,
    #[serde(deserialize_with = "limits::de::alert_transitions")]
    alerts: Vec<AlertTransition>,
    #[serde(deserialize_with = "limits::de::patch_compliance")]
    patch_compliance: Vec<WirePatchCompliance>,
    #[serde(deserialize_with = "limits::de::command_summaries")]
    commands: Vec<CommandSummary>,
    dropped_rollups: u64,
}

/// What format 3 appends after the [`WireSiteBatch`].
#[derive(Debug, Serialize, Deserialize)]
struct WireFormat3 {
    #[serde(deserialize_with = "limits::de::foreign_tenants")]
    foreign_tenants: Vec<ForeignTenant>,
}

/// What format 6 appends after the findings of format 5.
#[derive(Debug, Serialize, Deserialize)]
struct WireFormat6 {
    #[serde(deserialize_with = "limits::de::device_updates")]
    device_facts: Vec<DeviceIpsTags>,
}

/// What format 4 appends after the [`WireFormat3`]: the [`PatchDetail`] of
/// each patch compliance entry, in the same order (as many entries).
#[derive(Debug, Serialize, Deserialize)]
struct WireFormat4 {
    #[serde(deserialize_with = "limits::de::patch_compliance")]
    patch_details: Vec<Option<PatchDetail>>,
}

/// The first fields of every batch format: who the batch claims to be,
/// readable before the rest is decoded ([`open`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    /// Batch layout version ([`BATCH_FORMAT`]).
    pub format: u16,
    /// Per-site sequence number.
    pub seq: u64,
    /// The site the batch claims to come from.
    pub site: SiteId,
    /// The tenant it claims.
    pub tenant: TenantId,
}

/// The header is read from at most this many decompressed bytes (a site id
/// and a tenant are at most 64 characters each).
const HEADER_MAX_BYTES: usize = 1024;

/// Why a batch could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("batch codec: {0}")]
    Codec(#[from] CodecError),
    #[error("batch compression: {0}")]
    Compression(std::io::Error),
    #[error("malformed batch: {0}")]
    Malformed(String),
    #[error("batch format {0} is not supported by this build (reads 1 to {BATCH_FORMAT})")]
    Format(u16),
    /// A count or total above one of the [`limits`]: refused before it
    /// was allocated.
    #[error("{0}")]
    OverLimit(#[from] OverLimit),
}

impl BatchError {
    /// A codec error, or the [`OverLimit`] a bounded list reported through
    /// it.
    fn from_codec(e: CodecError) -> BatchError {
        match OverLimit::from_error_text(&e.to_string()) {
            Some(o) => BatchError::OverLimit(o),
            None => BatchError::Codec(e),
        }
    }
}

/// Default zstd level (batches are small; level 9 costs < 1 ms per 100 KB).
pub const DEFAULT_ZSTD_LEVEL: i32 = 9;

/// The oldest format (from 2, the rollup layout this build writes) that can
/// carry `batch`.
pub fn format_of(batch: &SiteBatch) -> u16 {
    let base = if !batch.device_facts.is_empty() {
        6
    } else if !batch.patch_findings.is_empty() {
        5
    } else if batch.patch_compliance.iter().any(|p| p.detail.is_some()) {
        4
    } else if batch.foreign_tenants.is_empty() {
        2
    } else {
        3
    };
    batch
        .alerts
        .iter()
        .map(|a| a.state.since_format())
        .fold(base, u16::max)
}

/// Encodes a batch in [`format_of`] it: columnar rollups, bincode, zstd at
/// `level`.
pub fn encode(batch: &SiteBatch, level: i32) -> Result<Vec<u8>, BatchError> {
    let format = format_of(batch);
    let wire = WireSiteBatch {
        format,
        seq: batch.seq,
        site: batch.site.clone(),
        tenant: batch.tenant.clone(),
        created_ms: batch.created_ms,
        devices: batch.devices.clone(),
        rollups: compact::CompactRollups::encode(&batch.rollups),
        alerts: batch.alerts.clone(),
        patch_compliance: batch
            .patch_compliance
            .iter()
            .map(|p| WirePatchCompliance {
                device: p.device,
                missing: p.missing,
                missing_critical: p.missing_critical,
                installed_pending_reboot: p.installed_pending_reboot,
                as_of_ms: p.as_of_ms,
            })
            .collect(),
        commands: batch.commands.clone(),
        dropped_rollups: batch.dropped_rollups,
    };
    let mut raw = codec::encode(&wire)?;
    if format >= 3 {
        codec::encode_into(
            &WireFormat3 {
                foreign_tenants: batch.foreign_tenants.clone(),
            },
            &mut raw,
        )?;
    }
    if format >= 4 {
        codec::encode_into(
            &WireFormat4 {
                patch_details: batch
                    .patch_compliance
                    .iter()
                    .map(|p| p.detail.clone())
                    .collect(),
            },
            &mut raw,
        )?;
    }
    if format >= 5 {
        codec::encode_into(
            &findings::WireFindings::encode(&batch.patch_findings),
            &mut raw,
        )?;
    }
    if format >= 6 {
        codec::encode_into(
            &WireFormat6 {
                device_facts: batch.device_facts.clone(),
            },
            &mut raw,
        )?;
    }
    zstd::bulk::compress(&raw, level).map_err(BatchError::Compression)
}

/// Bytes of each part of `batch` as [`encode`] lays it out: (part, bincode
/// bytes, bytes once that part alone is zstd-compressed at `level`). For
/// size breakdowns (benchmarks); [`encode`] compresses the parts together.
pub fn part_sizes(batch: &SiteBatch, level: i32) -> Vec<(&'static str, usize, usize)> {
    let mut parts = compact::CompactRollups::encode(&batch.rollups).column_sizes(level);
    let mut other = |name: &'static str, raw: Vec<u8>| {
        let z = zstd::bulk::compress(&raw, level)
            .map(|z| z.len())
            .unwrap_or(raw.len());
        parts.push((name, raw.len(), z));
    };
    other(
        "device_snapshots",
        codec::encode(&batch.devices).unwrap_or_default(),
    );
    other("alerts", codec::encode(&batch.alerts).unwrap_or_default());
    parts
}

/// `batch` as a central that reads formats up to `max_format` can take it:
/// without device facts below format 6, without findings below format 5,
/// without patch details below format 4 (the counts every format carries
/// stay). Alert states and foreign
/// tenants need format 3, the oldest any central still announces.
/// Returns whether anything was removed.
pub fn downgrade(batch: &mut SiteBatch, max_format: u16) -> bool {
    let mut changed = false;
    if max_format < 6 && !batch.device_facts.is_empty() {
        batch.device_facts.clear();
        changed = true;
    }
    if max_format < 5 && !batch.patch_findings.is_empty() {
        batch.patch_findings.clear();
        changed = true;
    }
    if max_format < 4 {
        for p in &mut batch.patch_compliance {
            changed |= p.detail.take().is_some();
        }
    }
    changed
}

/// The stored `payload` re-encoded for a central that reads formats up to
/// `max_format` ([`downgrade`]), or `None` when it can take it as it is.
pub fn reencode_for(
    payload: &[u8],
    max_format: u16,
    level: i32,
) -> Result<Option<Vec<u8>>, BatchError> {
    Ok(reencode_noting_findings(payload, max_format, level)?.map(|(p, _)| p))
}

/// [`reencode_for`], also saying whether patch findings were left out
/// (the site owes them to central: [`crate::resend`]).
pub fn reencode_noting_findings(
    payload: &[u8],
    max_format: u16,
    level: i32,
) -> Result<Option<(Vec<u8>, bool)>, BatchError> {
    let opened = open(payload)?;
    if opened.header().format <= max_format {
        return Ok(None);
    }
    let mut b = opened.decode()?;
    let had_findings = !b.patch_findings.is_empty();
    downgrade(&mut b, max_format);
    Ok(Some((
        encode(&b, level)?,
        had_findings && b.patch_findings.is_empty(),
    )))
}

/// A decompressed batch whose [`BatchHeader`] is read and whose body is
/// not decoded yet.
#[derive(Debug)]
pub struct OpenedBatch {
    raw: Vec<u8>,
    header: BatchHeader,
}

/// Decompresses `payload` (refused before anything is allocated when its
/// zstd frame does not state a size of at most [`MAX_DECODED_BYTES`]) and
/// reads its header: the format (checked), sequence, site and tenant.
pub fn open(payload: &[u8]) -> Result<OpenedBatch, BatchError> {
    let raw = decompress(payload)?;
    let head = raw
        .get(..HEADER_MAX_BYTES.min(raw.len()))
        .unwrap_or_default();
    let (header, _): (BatchHeader, usize) =
        codec::decode_prefix(head).map_err(BatchError::from_codec)?;
    if !(1..=BATCH_FORMAT).contains(&header.format) {
        return Err(BatchError::Format(header.format));
    }
    Ok(OpenedBatch { raw, header })
}

/// Decompresses one zstd frame whose header states its decompressed size,
/// into a buffer of exactly that size.
fn decompress(payload: &[u8]) -> Result<Vec<u8>, BatchError> {
    let size = match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(n)) => n,
        Ok(None) => {
            return Err(BatchError::Malformed(
                "the zstd frame does not state its decompressed size".into(),
            ));
        }
        Err(_) => {
            return Err(BatchError::Compression(std::io::Error::other(
                "not a zstd frame",
            )));
        }
    };
    Limit::DecodedBytes.check(size)?;
    // `size` fits: it is at most MAX_DECODED_BYTES.
    let raw = zstd::bulk::decompress(payload, size as usize).map_err(BatchError::Compression)?;
    if raw.len() as u64 != size {
        return Err(BatchError::Malformed(format!(
            "the zstd frame states {size} bytes but holds {}",
            raw.len()
        )));
    }
    Ok(raw)
}

impl OpenedBatch {
    /// Who the batch claims to be.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Bytes after decompression.
    pub fn decoded_bytes(&self) -> usize {
        self.raw.len()
    }

    /// Decodes the body, every list and total bounded by [`limits`].
    pub fn decode(self) -> Result<SiteBatch, BatchError> {
        let raw = self.raw;
        let (wire, used): (WireSiteBatch, usize) =
            codec::decode_prefix(&raw).map_err(BatchError::from_codec)?;
        if let Some(a) = wire
            .alerts
            .iter()
            .find(|a| a.state.since_format() > wire.format)
        {
            return Err(BatchError::Malformed(format!(
                "alert {} state {} in a format {} batch",
                a.alert_id,
                a.state.as_str(),
                wire.format
            )));
        }
        let mut rest = raw.get(used..).unwrap_or_default();
        /// Decodes the next part of the tail and moves past it.
        fn take<T: serde::de::DeserializeOwned>(rest: &mut &[u8]) -> Result<T, BatchError> {
            let (v, n): (T, usize) = codec::decode_prefix(rest).map_err(BatchError::from_codec)?;
            *rest = rest.get(n..).unwrap_or_default();
            Ok(v)
        }
        let foreign_tenants = if wire.format >= 3 {
            take::<WireFormat3>(&mut rest)?.foreign_tenants
        } else {
            Vec::new()
        };
        let patch_details = if wire.format >= 4 {
            let f4: WireFormat4 = take(&mut rest)?;
            if f4.patch_details.len() != wire.patch_compliance.len() {
                return Err(BatchError::Malformed(format!(
                    "{} patch details for {} patch compliance entries",
                    f4.patch_details.len(),
                    wire.patch_compliance.len()
                )));
            }
            f4.patch_details
        } else {
            vec![None; wire.patch_compliance.len()]
        };
        let patch_findings = if wire.format >= 5 {
            take::<findings::WireFindings>(&mut rest)?.decode()?
        } else {
            Vec::new()
        };
        let device_facts = if wire.format >= 6 {
            let f6: WireFormat6 = take(&mut rest)?;
            for f in &f6.device_facts {
                f.check().map_err(BatchError::Malformed)?;
            }
            f6.device_facts
        } else {
            Vec::new()
        };
        if !rest.is_empty() {
            return Err(CodecError::TrailingBytes(rest.len()).into());
        }
        let patch_compliance = wire
            .patch_compliance
            .into_iter()
            .zip(patch_details)
            .map(|(p, detail)| PatchCompliance {
                device: p.device,
                missing: p.missing,
                missing_critical: p.missing_critical,
                installed_pending_reboot: p.installed_pending_reboot,
                as_of_ms: p.as_of_ms,
                detail,
            })
            .collect();
        let rollups = wire.rollups.decode_format(wire.format)?;
        Ok(SiteBatch {
            seq: wire.seq,
            site: wire.site,
            tenant: wire.tenant,
            created_ms: wire.created_ms,
            devices: wire.devices,
            rollups,
            alerts: wire.alerts,
            patch_compliance,
            commands: wire.commands,
            dropped_rollups: wire.dropped_rollups,
            foreign_tenants,
            patch_findings,
            device_facts,
        })
    }
}

/// Decodes a batch ([`open`], then [`OpenedBatch::decode`]): allocation is
/// bounded by [`MAX_DECODED_BYTES`] and the [`limits`].
pub fn decode(payload: &[u8]) -> Result<SiteBatch, BatchError> {
    open(payload)?.decode()
}

impl SiteBatch {
    /// Checks this batch against the [`limits`] the decoder applies (what
    /// the compactor keeps to).
    pub fn check_limits(&self) -> Result<(), OverLimit> {
        Limit::DeviceUpdates.check(self.devices.len() as u64)?;
        Limit::AlertTransitions.check(self.alerts.len() as u64)?;
        Limit::PatchCompliance.check(self.patch_compliance.len() as u64)?;
        Limit::CommandSummaries.check(self.commands.len() as u64)?;
        Limit::ForeignTenants.check(self.foreign_tenants.len() as u64)?;
        Limit::DeviceUpdates.check(self.device_facts.len() as u64)?;
        findings::check_all(&self.patch_findings)?;
        let mut names = std::collections::HashSet::new();
        let mut budget = limits::RollupBudget::default();
        for e in &self.rollups {
            let mut new = 0;
            for s in &e.series {
                limits::check_name(&s.name)?;
                limits::check_name(&s.label)?;
                if names.insert((s.name.as_str(), s.label.as_str())) {
                    new += 1;
                }
            }
            budget = budget.with_entry(e, new)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn rollup(v: f64) -> Rollup {
        Rollup {
            min: v,
            max: v + 1.5,
            sum: v * 3.0 + 1.5,
            count: 3,
            last: v + 1.0,
            last_ts_ms: 1_700_000_040_000,
        }
    }

    pub fn sample_batch(seq: u64) -> SiteBatch {
        SiteBatch {
            seq,
            site: "s-1".into(),
            tenant: "msp".into(),
            created_ms: 1_700_000_100_000,
            devices: vec![DeviceUpdate {
                device: DeviceId(42),
                customer: "dental".into(),
                hostname: "web-1".into(),
                os: "Debian".into(),
                agent_version: "0.1.0".into(),
                enrolled_at_ms: 1,
                revoked: false,
                status: DeviceStatus::Online,
                status_since_ms: 2,
                last_seen_ms: 3,
                as_of_ms: 4,
            }],
            rollups: vec![DeviceRollups {
                device: DeviceId(42),
                bucket_start_ms: 1_700_000_000_000 - 1_700_000_000_000 % 300_000,
                computed_ms: 1_700_000_100_000,
                series: vec![
                    SeriesRollup {
                        name: "cpu".into(),
                        label: String::new(),
                        rollup: rollup(12.25),
                    },
                    SeriesRollup {
                        name: "disk_used_percent".into(),
                        label: "/".into(),
                        rollup: rollup(71.5),
                    },
                ],
            }],
            alerts: vec![AlertTransition {
                alert_id: 9,
                device: Some(DeviceId(42)),
                rule: "cpu_high".into(),
                severity: Severity::Critical,
                state: AlertState::Firing,
                at_ms: 5,
                message: "cpu 97 > 90".into(),
                value: Some(97.0),
            }],
            patch_compliance: vec![],
            commands: vec![],
            dropped_rollups: 0,
            foreign_tenants: vec![],
            patch_findings: vec![],
            device_facts: vec![],
        }
    }

    #[test]
    fn batch_round_trips() {
        let b = sample_batch(3);
        let bytes = encode(&b, DEFAULT_ZSTD_LEVEL).unwrap();
        assert_eq!(decode(&bytes).unwrap(), b);
    }

    #[test]
    fn format_1_batches_still_decode_and_unknown_formats_are_refused() {
        let b = sample_batch(4);
        let wire = |format| WireSiteBatch {
            format,
            seq: b.seq,
            site: b.site.clone(),
            tenant: b.tenant.clone(),
            created_ms: b.created_ms,
            devices: b.devices.clone(),
            // One device: its minimums are absolute in both formats.
            rollups: compact::CompactRollups::encode(&b.rollups),
            alerts: b.alerts.clone(),
            patch_compliance: vec![],
            commands: vec![],
            dropped_rollups: 0,
        };
        let bytes =
            |format| zstd::bulk::compress(&codec::encode(&wire(format)).unwrap(), 3).unwrap();
        assert_eq!(decode(&bytes(1)).unwrap(), b);
        let err = decode(&bytes(BATCH_FORMAT + 1)).unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
    }

    /// Foreign tenants travel in format 3 (format 2 and the section after
    /// it); a batch without them stays format 2, byte for byte.
    #[test]
    fn foreign_tenants_round_trip_in_format_3_and_only_then() {
        let raw = |b: &SiteBatch| {
            zstd::bulk::decompress(&encode(b, 1).unwrap(), MAX_DECODED_BYTES).unwrap()
        };
        let plain = sample_batch(5);
        let plain_raw = raw(&plain);
        assert_eq!(plain_raw[0], 2, "format 2 without foreign tenants");
        let mut b = sample_batch(5);
        b.foreign_tenants = vec![ForeignTenant {
            tenant: "acme-msp".into(),
            devices: 2,
        }];
        let with = raw(&b);
        assert_eq!(with[0], 3);
        assert_eq!(
            with[1..plain_raw.len()],
            plain_raw[1..],
            "format 2's layout, then the section"
        );
        assert_eq!(decode(&encode(&b, 1).unwrap()).unwrap(), b);
        // A format 2 batch with bytes after it is malformed, not ignored.
        let mut junk = plain_raw.clone();
        junk.push(0);
        let junk = zstd::bulk::compress(&junk, 1).unwrap();
        assert!(decode(&junk).is_err());
    }

    /// The encoded bytes (bincode, before zstd) of a batch with every
    /// section filled, and of one alert transition as the outbox stores
    /// it, captured before the batch had its own wire types (it embedded
    /// the appliance's storage models): the batch format changes only
    /// with `BATCH_FORMAT`, never by accident.
    #[test]
    fn encoded_batches_keep_their_bytes() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut b = sample_batch(7);
        b.devices.push(DeviceUpdate {
            device: DeviceId(43),
            customer: Default::default(),
            hostname: "db-1".into(),
            os: "Rocky".into(),
            agent_version: "0.1.0".into(),
            enrolled_at_ms: 5,
            revoked: true,
            status: DeviceStatus::Offline,
            status_since_ms: 6,
            last_seen_ms: 7,
            as_of_ms: 8,
        });
        b.devices[0].status = DeviceStatus::Pending;
        b.patch_compliance.push(PatchCompliance {
            device: DeviceId(42),
            missing: 3,
            missing_critical: 1,
            installed_pending_reboot: 0,
            as_of_ms: 9,
            detail: None,
        });
        b.commands.push(CommandSummary {
            device: DeviceId(43),
            completed: 4,
            failed: 1,
            timed_out: 2,
            as_of_ms: 10,
        });
        b.dropped_rollups = 11;
        let raw = zstd::bulk::decompress(&encode(&b, 1).unwrap(), MAX_DECODED_BYTES).unwrap();
        let alert = codec::encode(&b.alerts[0]).unwrap();
        assert_eq!(hex(&raw), GOLDEN_BATCH);
        assert_eq!(hex(&alert), GOLDEN_ALERT);
        assert_eq!(decode(&encode(&b, 1).unwrap()).unwrap(), b);
    }

    /// Devices' addresses and tags go up in format 6, after the format-5
    /// findings, and come back; a central that reads up to 5 gets the
    /// batch re-encoded without them (the rest unchanged), one that reads
    /// 6 gets it as stored. Before format 6 no batch carried them.
    #[test]
    fn device_facts_round_trip_in_format_6_and_are_left_out_for_an_older_central() {
        let mut b = sample_batch(12);
        b.patch_findings = vec![findings::tests::typical_device(42, 2, 3, 0)];
        assert_eq!(format_of(&b), 5);
        b.device_facts = vec![DeviceIpsTags {
            device: DeviceId(42),
            ips: vec!["10.0.0.5".into(), "2001:db8::5".into()],
            tags: vec!["web".into(), "eu-west".into()],
        }];
        assert_eq!(format_of(&b), 6);
        let stored = encode(&b, 3).unwrap();
        assert_eq!(open(&stored).unwrap().header().format, 6);
        assert_eq!(decode(&stored).unwrap(), b);
        assert_eq!(reencode_for(&stored, 6, 3).unwrap(), None);
        let older = reencode_for(&stored, 5, 3).unwrap().expect("re-encoded");
        assert_eq!(open(&older).unwrap().header().format, 5);
        let back = decode(&older).unwrap();
        assert!(back.device_facts.is_empty());
        assert_eq!(back.patch_findings, b.patch_findings);
        assert_eq!((back.seq, &back.devices), (b.seq, &b.devices));
        assert_eq!(
            crate::wire::max_batch_format(crate::wire::PATCH_FINDINGS_PROTOCOL_VERSION),
            5
        );
        assert_eq!(
            crate::wire::max_batch_format(crate::wire::DEVICE_TAGS_PROTOCOL_VERSION),
            6
        );
    }

    /// A device's facts beyond their bounds are refused, never stored.
    #[test]
    fn too_many_or_too_long_device_facts_are_refused() {
        let mut b = sample_batch(13);
        b.device_facts = vec![DeviceIpsTags {
            device: DeviceId(42),
            ips: vec![],
            tags: (0..=MAX_DEVICE_FACTS).map(|i| format!("t{i}")).collect(),
        }];
        let err = decode(&encode(&b, 3).unwrap()).unwrap_err();
        assert!(
            matches!(&err, BatchError::Malformed(m) if m.contains("tags")),
            "{err}"
        );
        b.device_facts[0].tags = vec!["x".repeat(MAX_FACT_BYTES + 1)];
        let err = decode(&encode(&b, 3).unwrap()).unwrap_err();
        assert!(
            matches!(&err, BatchError::Malformed(m) if m.contains("bytes")),
            "{err}"
        );
        // Trailing bytes after the last part are refused too.
        b.device_facts[0].tags = vec!["ok".into()];
        let mut raw = zstd::bulk::decompress(&encode(&b, 1).unwrap(), MAX_DECODED_BYTES).unwrap();
        raw.push(0);
        let payload = zstd::bulk::compress(&raw, 1).unwrap();
        assert!(decode(&payload).is_err());
    }

    /// Captured with the storage-model types (commit "outpost-central in
    /// its own crate").
    const GOLDEN_BATCH: &str = "020703732d31036d7370fda0eee6cf8b010000022a0664656e74616c057765622d310644656269616e05302e312e300100000203042b000464622d3105526f636b7905302e312e30050102060708020363707500116469736b5f757365645f70657263656e74012f012a01fd80b5c49f1703000001fcc0270900010301fc00530700010202000102020102fb9209fb960502960f02640a02fb2c011e0200000000000109012a086370755f686967680201050b637075203937203e203930010000000000405840012a03010009012b0401020a0b";
    const GOLDEN_ALERT: &str =
        "09012a086370755f686967680201050b637075203937203e203930010000000000405840";

    /// A batch with a `cleared` transition, as format 3 writes it (bincode,
    /// before zstd): the state is the next position after `resolved`.
    #[test]
    fn a_cleared_transition_goes_up_as_cleared_in_format_3() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut b = sample_batch(8);
        assert_eq!(format_of(&b), 2, "nothing new: the format central reads");
        b.alerts[0].state = AlertState::Cleared;
        assert_eq!(format_of(&b), 3);
        let bytes = encode(&b, 1).unwrap();
        let raw = zstd::bulk::decompress(&bytes, MAX_DECODED_BYTES).unwrap();
        assert_eq!(raw[0], 3, "format 3");
        assert_eq!(
            hex(&codec::encode(&b.alerts[0]).unwrap()),
            GOLDEN_ALERT.replacen("0201050b", "0203050b", 1),
            "state byte 3, everything else as before"
        );
        let back = decode(&bytes).unwrap();
        assert_eq!(back.alerts[0].state, AlertState::Cleared);
        assert_eq!(back, b);
    }

    /// A patch compliance entry with its detail goes up in format 4: the
    /// bytes of format 3 (with an empty foreign-tenant list), then the
    /// details; without details the batch stays in the older format.
    #[test]
    fn patch_details_go_up_in_format_4_after_the_format_3_layout() {
        let mut b = sample_batch(9);
        b.patch_compliance.push(PatchCompliance {
            device: DeviceId(42),
            missing: 5,
            missing_critical: 1,
            installed_pending_reboot: 1,
            as_of_ms: 9,
            detail: None,
        });
        assert_eq!(format_of(&b), 2, "no detail: format 2 carries it");
        let plain = zstd::bulk::decompress(&encode(&b, 1).unwrap(), MAX_DECODED_BYTES).unwrap();
        b.patch_compliance[0].detail = Some(PatchDetail {
            compliance: ComplianceState::NonCompliant,
            security_patches: PatchSeverityCounts {
                critical: 1,
                high: 2,
                medium: 0,
                low: 1,
                unknown: 0,
            },
            fixable_cves: 7,
            open_cves: 3,
            risk: Some(64),
            scanned_at_ms: 8,
            reboot_required: true,
        });
        assert_eq!(format_of(&b), 4);
        let bytes = encode(&b, 1).unwrap();
        let raw = zstd::bulk::decompress(&bytes, MAX_DECODED_BYTES).unwrap();
        assert_eq!(raw[0], 4);
        assert_eq!(raw[1..plain.len()], plain[1..], "format 2's layout first");
        assert_eq!(raw[plain.len()], 0, "then an empty foreign-tenant list");
        assert_eq!(decode(&bytes).unwrap(), b);
        // Fewer details than entries is malformed.
        let mut short = raw.clone();
        let tail = codec::encode(&WireFormat4 {
            patch_details: vec![],
        })
        .unwrap();
        short.truncate(plain.len() + 1);
        short.extend(tail);
        let short = zstd::bulk::compress(&short, 1).unwrap();
        assert!(matches!(decode(&short), Err(BatchError::Malformed(_))));
    }

    #[test]
    fn batches_without_cleared_transitions_keep_format_2_and_old_formats_cannot_claim_cleared() {
        let b = sample_batch(9);
        let raw = zstd::bulk::decompress(&encode(&b, 1).unwrap(), MAX_DECODED_BYTES).unwrap();
        assert_eq!(raw[0], 2);
        // A format 2 (or 1) batch carrying a state it could not express is
        // malformed, not silently accepted.
        let mut alerts = b.alerts.clone();
        alerts[0].state = AlertState::Cleared;
        for format in [1, 2] {
            let wire = WireSiteBatch {
                format,
                seq: b.seq,
                site: b.site.clone(),
                tenant: b.tenant.clone(),
                created_ms: b.created_ms,
                devices: b.devices.clone(),
                rollups: compact::CompactRollups::encode(&b.rollups),
                alerts: alerts.clone(),
                patch_compliance: vec![],
                commands: vec![],
                dropped_rollups: 0,
            };
            let bytes = zstd::bulk::compress(&codec::encode(&wire).unwrap(), 3).unwrap();
            let err = decode(&bytes).unwrap_err();
            assert!(
                err.to_string().contains("cleared in a format"),
                "{format}: {err}"
            );
        }
        for s in [
            AlertState::Pending,
            AlertState::Firing,
            AlertState::Resolved,
            AlertState::Cleared,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"not zstd").is_err());
        let junk = zstd::bulk::compress(&[0xFF; 64], 1).unwrap();
        assert!(decode(&junk).is_err());
        let mut bytes = encode(&sample_batch(1), 1).unwrap();
        let n = bytes.len();
        bytes.truncate(n / 2);
        assert!(decode(&bytes).is_err());
    }

    /// The bincode of a batch's first fields (format 2), up to and
    /// including `created_ms`: what a hostile sender writes before a list
    /// claiming more elements than it sends.
    fn head(seq: u64) -> Vec<u8> {
        codec::encode(&(2u16, seq, "s-1", "msp", 7u64)).unwrap()
    }

    fn over(r: Result<SiteBatch, BatchError>) -> Limit {
        match r {
            Err(BatchError::OverLimit(o)) => o.limit,
            other => panic!("expected an over-limit error, got {other:?}"),
        }
    }

    /// A few bytes claiming 2^40 device snapshots are refused on the claim,
    /// and a batch really holding one more than the limit on its length.
    #[test]
    fn a_list_longer_than_its_limit_is_refused_before_it_is_built() {
        let mut raw = head(1);
        codec::encode_into(&(1u64 << 40), &mut raw).unwrap();
        let bytes = zstd::bulk::compress(&raw, 1).unwrap();
        assert_eq!(over(decode(&bytes)), Limit::DeviceUpdates);

        let mut b = sample_batch(2);
        let d = b.devices[0].clone();
        b.devices = (0..limits::MAX_DEVICE_UPDATES as u64 + 1)
            .map(|i| DeviceUpdate {
                device: DeviceId(i),
                ..d.clone()
            })
            .collect();
        assert_eq!(
            b.check_limits().map_err(|e| e.limit),
            Err(Limit::DeviceUpdates)
        );
        let bytes = encode(&b, 1).unwrap();
        assert_eq!(over(decode(&bytes)), Limit::DeviceUpdates);
        b.devices.pop();
        assert!(b.check_limits().is_ok());
        assert_eq!(decode(&encode(&b, 1).unwrap()).unwrap(), b);
    }

    /// Every list of the batch is bounded, the format 3 section included.
    #[test]
    fn every_list_of_a_batch_is_bounded() {
        // Each list in layout order; the ones before it are empty.
        let lists = [
            Limit::DeviceUpdates,
            Limit::AlertTransitions,
            Limit::PatchCompliance,
            Limit::CommandSummaries,
            Limit::ForeignTenants,
        ];
        for (i, limit) in lists.into_iter().enumerate() {
            let mut raw = codec::encode(&(3u16, 1u64, "s-1", "msp", 7u64)).unwrap();
            for j in 0..i {
                codec::encode_into(&0u64, &mut raw).unwrap(); // an empty list
                if j == 0 {
                    codec::encode_into(&compact::CompactRollups::default(), &mut raw).unwrap();
                }
            }
            if limit == Limit::ForeignTenants {
                codec::encode_into(&0u64, &mut raw).unwrap(); // dropped_rollups
            }
            codec::encode_into(&(limit.max() as u64 + 1), &mut raw).unwrap();
            let bytes = zstd::bulk::compress(&raw, 1).unwrap();
            assert_eq!(over(decode(&bytes)), limit, "{limit:?}");
        }
    }

    /// The decompressed size is read from the zstd frame header and
    /// checked before anything is decompressed; a frame that does not
    /// state it is refused.
    #[test]
    fn the_decompressed_size_is_checked_before_decompressing() {
        let big = vec![0u8; MAX_DECODED_BYTES + 1];
        let bytes = zstd::bulk::compress(&big, 1).unwrap();
        drop(big);
        assert!(bytes.len() < 64 * 1024, "{}", bytes.len());
        assert_eq!(over(decode(&bytes)), Limit::DecodedBytes);
        let raw = zstd::bulk::decompress(&encode(&sample_batch(1), 1).unwrap(), 4096).unwrap();
        let unsized_frame = zstd::stream::encode_all(&raw[..], 1).unwrap();
        let err = decode(&unsized_frame).unwrap_err();
        assert!(err.to_string().contains("does not state"), "{err}");
    }

    /// The header (who the batch claims to be) is read without decoding the
    /// body: a receiver checks it first.
    #[test]
    fn the_header_is_read_before_the_body_is_decoded() {
        let b = sample_batch(6);
        let opened = open(&encode(&b, 1).unwrap()).unwrap();
        assert_eq!(
            opened.header(),
            &BatchHeader {
                format: 2,
                seq: 6,
                site: "s-1".into(),
                tenant: "msp".into(),
            }
        );
        assert_eq!(opened.decode().unwrap(), b);
        // A valid head and a body of garbage: the head reads, the body fails.
        let mut raw = head(9);
        raw.extend_from_slice(&[0xFF; 32]);
        let opened = open(&zstd::bulk::compress(&raw, 1).unwrap()).unwrap();
        assert_eq!(opened.header().seq, 9);
        assert!(opened.decode().is_err());
        // An unknown format is refused at the head.
        let raw = codec::encode(&(BATCH_FORMAT + 1, 1u64, "s-1", "msp")).unwrap();
        let err = open(&zstd::bulk::compress(&raw, 1).unwrap()).unwrap_err();
        assert!(
            matches!(err, BatchError::Format(f) if f == BATCH_FORMAT + 1),
            "{err}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Valid batches with a few bytes changed (before compression, so
        /// the codec sees them) decode to a batch or an error, never a
        /// panic, and whatever decodes is within the limits.
        #[test]
        fn mutated_batches_decode_or_fail_without_panicking(
            edits in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..6),
            truncate in proptest::option::of(0usize..4096),
        ) {
            let mut b = sample_batch(3);
            b.foreign_tenants = vec![ForeignTenant { tenant: "acme".into(), devices: 2 }];
            let mut more = b.rollups[0].clone();
            more.device = DeviceId(43);
            more.series[1].rollup.min = 0.1 + 0.2;
            b.rollups.push(more);
            let mut raw = zstd::bulk::decompress(&encode(&b, 1).unwrap(), MAX_DECODED_BYTES).unwrap();
            for (at, byte) in edits {
                let n = raw.len();
                raw[at % n] = byte;
            }
            if let Some(t) = truncate {
                raw.truncate(t % (raw.len() + 1));
            }
            if let Ok(back) = decode(&zstd::bulk::compress(&raw, 1).unwrap()) {
                proptest::prop_assert!(back.check_limits().is_ok());
            }
        }
    }
}
