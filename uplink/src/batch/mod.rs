//! The uplink batch: what one site tells central per interval.
//!
//! A [`SiteBatch`] holds what changed since the previous batch: device
//! registry and status snapshots (latest wins), closed 5-minute rollups of
//! every series of a device and bucket, alert transitions, the site's
//! devices enrolled under another tenant ([`ForeignTenant`], a snapshot),
//! and room for patch compliance and command summaries. [`encode`] turns it into bytes (rollups
//! in the columnar [`compact`] form, then the one bincode configuration, then
//! zstd); [`decode`] reverses it with bounded allocation and never panics.
//!
//! Applying a batch at central is order-independent and idempotent by
//! construction: device snapshots carry `as_of_ms` (last writer wins),
//! rollups carry `computed_ms` (a recomputed bucket replaces an older
//! computation, never the reverse), alert transitions are keyed by
//! `(alert_id, at_ms, state)`. Sequence numbers make each batch apply once.

pub mod compact;

use outpost_proto::DeviceId;
use outpost_proto::codec::{self, CodecError};
use outpost_proto::{CustomerId, SiteId, TenantId};
use serde::{Deserialize, Serialize};

pub use outpost_proto::alert::Severity;

/// Newest version of the batch layout inside the payload (this build reads
/// 1 to this one).
/// 2: rollup `min` column relative to the previous entry (see [`compact`]);
/// 3: alert state [`AlertState::Cleared`], and the batch is followed by
///    the [`ForeignTenant`] list.
/// Batches of every earlier format (still in an outbox after an upgrade)
/// are decoded too. A batch is written in the oldest format that can carry
/// it ([`format_of`]): 2 unless it holds a `cleared` transition or a
/// foreign tenant, so a central that reads only format 2 refuses only those
/// batches, by their format number (upgrade central first all the same).
pub const BATCH_FORMAT: u16 = 3;
/// Largest decompressed batch accepted (the codec's decode limit).
pub const MAX_DECODED_BYTES: usize = outpost_proto::codec::DECODE_LIMIT_BYTES;

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

/// Patch compliance of one device (filled by the patch issue).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchCompliance {
    pub device: DeviceId,
    pub missing: u32,
    pub missing_critical: u32,
    pub installed_pending_reboot: u32,
    pub as_of_ms: u64,
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

/// The encoded layout (bincode), rollups in columnar form.
#[derive(Debug, Serialize, Deserialize)]
struct WireSiteBatch {
    format: u16,
    seq: u64,
    site: SiteId,
    tenant: TenantId,
    created_ms: u64,
    devices: Vec<DeviceUpdate>,
    rollups: compact::CompactRollups,
    alerts: Vec<AlertTransition>,
    patch_compliance: Vec<PatchCompliance>,
    commands: Vec<CommandSummary>,
    dropped_rollups: u64,
}

/// What format 3 appends after the [`WireSiteBatch`].
#[derive(Debug, Serialize, Deserialize)]
struct WireFormat3 {
    foreign_tenants: Vec<ForeignTenant>,
}

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
}

/// Default zstd level (batches are small; level 9 costs < 1 ms per 100 KB).
pub const DEFAULT_ZSTD_LEVEL: i32 = 9;

/// The oldest format (from 2, the rollup layout this build writes) that can
/// carry `batch`.
pub fn format_of(batch: &SiteBatch) -> u16 {
    let base = if batch.foreign_tenants.is_empty() {
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
        patch_compliance: batch.patch_compliance.clone(),
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
    zstd::bulk::compress(&raw, level).map_err(BatchError::Compression)
}

/// Decodes a batch; allocation is bounded by [`MAX_DECODED_BYTES`].
pub fn decode(payload: &[u8]) -> Result<SiteBatch, BatchError> {
    let raw =
        zstd::bulk::decompress(payload, MAX_DECODED_BYTES).map_err(BatchError::Compression)?;
    let (wire, used): (WireSiteBatch, usize) = codec::decode_prefix(&raw)?;
    if !(1..=BATCH_FORMAT).contains(&wire.format) {
        return Err(BatchError::Format(wire.format));
    }
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
    let rest = raw.get(used..).unwrap_or_default();
    let foreign_tenants = if wire.format >= 3 {
        codec::decode::<WireFormat3>(rest)?.foreign_tenants
    } else if rest.is_empty() {
        Vec::new()
    } else {
        return Err(CodecError::TrailingBytes(rest.len()).into());
    };
    Ok(SiteBatch {
        seq: wire.seq,
        site: wire.site,
        tenant: wire.tenant,
        created_ms: wire.created_ms,
        devices: wire.devices,
        rollups: wire
            .rollups
            .decode_format(wire.format)
            .map_err(BatchError::Malformed)?,
        alerts: wire.alerts,
        patch_compliance: wire.patch_compliance,
        commands: wire.commands,
        dropped_rollups: wire.dropped_rollups,
        foreign_tenants,
    })
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
}
