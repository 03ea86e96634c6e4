//! Bounds of a decoded batch: every count and total a site chooses, with
//! the reason for each value.
//!
//! A batch arrives compressed; what it expands into is chosen by the
//! sender. The decoder ([`super::decode`]) checks each count against its
//! limit *before* it allocates from it (the length prefix of a list is
//! checked before the list is built, the columnar rollups before they are
//! expanded) and refuses a batch over any limit with
//! [`super::BatchError::OverLimit`], naming the limit ([`Limit::label`] is
//! the reason central counts). The appliance's compactor builds batches
//! within the same limits ([`RollupBudget`]), so an honest site never hits
//! one: a large backlog is split over several batches instead.
//!
//! With every limit reached at once, decoding one batch holds at most
//! about 400 MiB (the 64 MiB decompressed buffer, its columns, one
//! million series rollups with their names); central decodes a bounded
//! number of batches at a time.
//!
//! Owns no I/O and must not depend on storage, tokio or tracing: the batch
//! codec is built without the appliance side for fuzzing.

use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, Error as _, SeqAccess, Visitor};

use super::{DeviceRollups, SeriesRollup};

/// Largest decompressed batch: the codec's decode limit. A batch states its
/// size in its zstd frame header; a larger (or unstated) size is refused
/// before anything is decompressed.
pub const MAX_DECODED_BYTES: usize = outpost_proto::codec::DECODE_LIMIT_BYTES;

/// Device snapshots in one batch. The compactor sends every device whose
/// snapshot is due; a site has a few thousand devices (the appliance is
/// measured with 10,000 agents), a site beyond this sends the rest in the
/// next batches. About 150 bytes each decoded, plus their strings.
pub const MAX_DEVICE_UPDATES: usize = 100_000;

/// Alert transitions in one batch (the outbox takes at most 10,000 per
/// batch by default; the rest waits for the next).
pub const MAX_ALERT_TRANSITIONS: usize = 50_000;

/// Patch compliance rows in one batch (reserved: one per device).
pub const MAX_PATCH_COMPLIANCE: usize = MAX_DEVICE_UPDATES;

/// Command summaries in one batch (reserved: one per device).
pub const MAX_COMMAND_SUMMARIES: usize = MAX_DEVICE_UPDATES;

/// Tenants other than the site's that its devices were enrolled under
/// (a mistake report: one or two in practice).
pub const MAX_FOREIGN_TENANTS: usize = 1_024;

/// (device, bucket) rollup entries in one batch. The outbox takes at most
/// 20,000 per batch by default (`max_rollup_buckets_per_batch`, clamped to
/// this).
pub const MAX_ROLLUP_ENTRIES: usize = 100_000;

/// Series of one device in one bucket. An agent reports about 25 series
/// (cpu, load, memory, swap, uptime, processes, 3 per mount, 4 per network
/// interface, watched services and processes); a host with many
/// interfaces a few hundred. The compactor sends at most this many of a
/// device's series per bucket and counts the others dropped.
pub const MAX_SERIES_PER_ENTRY: usize = 16_384;

/// Series rollups in one batch, all entries together: about 96 bytes each
/// decoded. A full default batch of typical agents (20,000 entries × 25
/// series) is half of it; the compactor starts a new batch at this bound.
pub const MAX_SERIES_ROLLUPS: usize = 1_000_000;

/// Distinct (name, label) pairs in a batch's series name table. Labels
/// carry mount points and interface names, so a fleet has more pairs than
/// names, but far fewer than this.
pub const MAX_SERIES_NAMES: usize = 65_536;

/// Longest series name or label: the appliance refuses longer metric
/// names and labels from agents ([`outpost_proto::metric_names::MAX_NAME_BYTES`]).
pub const MAX_NAME_BYTES: usize = outpost_proto::metric_names::MAX_NAME_BYTES;

/// Bytes of series names and labels once expanded: the name table is sent
/// once, but every decoded series rollup holds its own copy of its name
/// and label. Typical names are 3 to 25 bytes: one million series need
/// about 15 MiB.
pub const MAX_EXPANDED_NAME_BYTES: usize = 32 * 1024 * 1024;

/// Devices with patch findings in one batch (format 5). The compactor
/// takes fewer: it stops at [`MAX_EXPANDED_FINDING_BYTES`] (the rest waits
/// for the next batch).
pub const MAX_PATCH_FINDINGS: usize = 20_000;

/// Strings in a batch's finding dictionary (source packages, versions and
/// CVE ids of every device together; a release has ~30,000 source
/// packages and the tracker ~45,000 CVEs).
pub const MAX_FINDING_STRINGS: usize = 1_000_000;

/// Missing patches, and CVE groups, of one device (each list): a host has
/// ~1,500 to ~5,000 packages.
pub const MAX_FINDING_ENTRIES: usize = 20_000;

/// CVE ids of one missing patch or CVE group (a kernel update fixes a few
/// hundred).
pub const MAX_FINDING_CVES: usize = 4_096;

/// Bytes the finding strings expand into once decoded (every reference is
/// its own copy): a typical device of ~100 findings expands into ~10 KB,
/// so a batch carries a few thousand devices' findings.
pub const MAX_EXPANDED_FINDING_BYTES: usize = 64 * 1024 * 1024;

/// Values in the raw `f64` column of the rollups: at most four per series
/// rollup (min, max, sum, last of a value that is not a short decimal).
pub const MAX_RAW_VALUES: usize = 4 * MAX_SERIES_ROLLUPS;

// One entry always fits an empty batch, so a compactor that starts a new
// batch when the next entry does not fit never stalls on one.
const _: () = assert!(
    MAX_SERIES_PER_ENTRY <= MAX_SERIES_ROLLUPS
        && MAX_SERIES_PER_ENTRY <= MAX_SERIES_NAMES
        && MAX_SERIES_PER_ENTRY * 2 * MAX_NAME_BYTES <= MAX_EXPANDED_NAME_BYTES
);

/// Elements preallocated for a list before its elements are actually read:
/// a length prefix alone (a few bytes) never reserves more.
const PREALLOCATE_MAX: usize = 4_096;

/// One of the limits above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    DecodedBytes,
    DeviceUpdates,
    AlertTransitions,
    PatchCompliance,
    CommandSummaries,
    ForeignTenants,
    RollupEntries,
    SeriesPerEntry,
    SeriesRollups,
    SeriesNames,
    NameBytes,
    ExpandedNameBytes,
    RawValues,
    PatchFindings,
    FindingStrings,
    FindingEntries,
    FindingCves,
    ExpandedFindingBytes,
}

impl Limit {
    pub const ALL: [Limit; 18] = [
        Limit::DecodedBytes,
        Limit::DeviceUpdates,
        Limit::AlertTransitions,
        Limit::PatchCompliance,
        Limit::CommandSummaries,
        Limit::ForeignTenants,
        Limit::RollupEntries,
        Limit::SeriesPerEntry,
        Limit::SeriesRollups,
        Limit::SeriesNames,
        Limit::NameBytes,
        Limit::ExpandedNameBytes,
        Limit::RawValues,
        Limit::PatchFindings,
        Limit::FindingStrings,
        Limit::FindingEntries,
        Limit::FindingCves,
        Limit::ExpandedFindingBytes,
    ];

    /// The bound.
    pub const fn max(self) -> usize {
        match self {
            Limit::DecodedBytes => MAX_DECODED_BYTES,
            Limit::DeviceUpdates => MAX_DEVICE_UPDATES,
            Limit::AlertTransitions => MAX_ALERT_TRANSITIONS,
            Limit::PatchCompliance => MAX_PATCH_COMPLIANCE,
            Limit::CommandSummaries => MAX_COMMAND_SUMMARIES,
            Limit::ForeignTenants => MAX_FOREIGN_TENANTS,
            Limit::RollupEntries => MAX_ROLLUP_ENTRIES,
            Limit::SeriesPerEntry => MAX_SERIES_PER_ENTRY,
            Limit::SeriesRollups => MAX_SERIES_ROLLUPS,
            Limit::SeriesNames => MAX_SERIES_NAMES,
            Limit::NameBytes => MAX_NAME_BYTES,
            Limit::ExpandedNameBytes => MAX_EXPANDED_NAME_BYTES,
            Limit::RawValues => MAX_RAW_VALUES,
            Limit::PatchFindings => MAX_PATCH_FINDINGS,
            Limit::FindingStrings => MAX_FINDING_STRINGS,
            Limit::FindingEntries => MAX_FINDING_ENTRIES,
            Limit::FindingCves => MAX_FINDING_CVES,
            Limit::ExpandedFindingBytes => MAX_EXPANDED_FINDING_BYTES,
        }
    }

    /// Stable name (logs, reject messages).
    pub const fn label(self) -> &'static str {
        match self {
            Limit::DecodedBytes => "decoded_bytes",
            Limit::DeviceUpdates => "device_updates",
            Limit::AlertTransitions => "alert_transitions",
            Limit::PatchCompliance => "patch_compliance",
            Limit::CommandSummaries => "command_summaries",
            Limit::ForeignTenants => "foreign_tenants",
            Limit::RollupEntries => "rollup_entries",
            Limit::SeriesPerEntry => "series_per_entry",
            Limit::SeriesRollups => "series_rollups",
            Limit::SeriesNames => "series_names",
            Limit::NameBytes => "name_bytes",
            Limit::ExpandedNameBytes => "expanded_name_bytes",
            Limit::RawValues => "raw_values",
            Limit::PatchFindings => "patch_findings",
            Limit::FindingStrings => "finding_strings",
            Limit::FindingEntries => "finding_entries",
            Limit::FindingCves => "finding_cves",
            Limit::ExpandedFindingBytes => "expanded_finding_bytes",
        }
    }

    fn from_label(s: &str) -> Option<Limit> {
        Limit::ALL.into_iter().find(|l| l.label() == s)
    }

    /// `Err` when `got` is above the bound.
    pub fn check(self, got: u64) -> Result<(), OverLimit> {
        if got > self.max() as u64 {
            Err(OverLimit { limit: self, got })
        } else {
            Ok(())
        }
    }
}

/// A batch exceeds one of the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("batch over limit {}: {got} > {}", limit.label(), limit.max())]
pub struct OverLimit {
    pub limit: Limit,
    /// What the batch has (or claims), at least.
    pub got: u64,
}

/// Prefix of the serde error message that carries an [`OverLimit`] out of
/// a bounded list (serde errors are strings).
const TAG: &str = "batch over limit ";

impl OverLimit {
    fn to_serde_message(self) -> String {
        format!("{TAG}{} {}", self.limit.label(), self.got)
    }

    /// The [`OverLimit`] a bounded list reported through serde, if the
    /// text of a decoding error carries one (the codec wraps the message).
    pub(crate) fn from_error_text(text: &str) -> Option<OverLimit> {
        let at = text.find(TAG)?;
        let rest = text.get(at + TAG.len()..)?;
        let (label, rest) = rest.split_once(' ')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .map_or(rest, |end| rest.get(..end).unwrap_or_default());
        Some(OverLimit {
            limit: Limit::from_label(label)?,
            got: digits.parse().ok()?,
        })
    }
}

/// A list decoded with at most `limit.max()` elements: the length prefix
/// is checked before anything is reserved, and at most
/// [`PREALLOCATE_MAX`] elements are reserved ahead of reading them.
/// Encodes exactly like `Vec<T>`.
fn bounded<'de, D, T>(d: D, limit: Limit) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T>(Limit, PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {} elements", self.0.max())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let limit = self.0;
            let claimed = seq.size_hint().unwrap_or(0);
            limit
                .check(claimed as u64)
                .map_err(|e| A::Error::custom(e.to_serde_message()))?;
            let mut v = Vec::with_capacity(claimed.min(PREALLOCATE_MAX));
            while let Some(x) = seq.next_element()? {
                if v.len() == limit.max() {
                    let e = OverLimit {
                        limit,
                        got: v.len() as u64 + 1,
                    };
                    return Err(A::Error::custom(e.to_serde_message()));
                }
                v.push(x);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(Bounded(limit, PhantomData))
}

/// Serde `deserialize_with` functions, one per limit of a list.
pub(crate) mod de {
    use super::*;

    macro_rules! bounded_fn {
        ($($name:ident => $limit:expr),* $(,)?) => {$(
            pub(crate) fn $name<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
            where
                D: Deserializer<'de>,
                T: Deserialize<'de>,
            {
                bounded(d, $limit)
            }
        )*};
    }

    bounded_fn! {
        device_updates => Limit::DeviceUpdates,
        alert_transitions => Limit::AlertTransitions,
        patch_compliance => Limit::PatchCompliance,
        command_summaries => Limit::CommandSummaries,
        foreign_tenants => Limit::ForeignTenants,
        rollup_entries => Limit::RollupEntries,
        series_rollups => Limit::SeriesRollups,
        series_names => Limit::SeriesNames,
        raw_values => Limit::RawValues,
        patch_findings => Limit::PatchFindings,
        finding_strings => Limit::FindingStrings,
        finding_entries => Limit::FindingEntries,
        finding_cves => Limit::FindingCves,
    }
}

/// What a batch's rollups add up to, against the limits: the compactor
/// adds entries while [`RollupBudget::fits`] (a new batch takes the rest),
/// the decoder checks the totals of what it received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupBudget {
    pub entries: u64,
    pub series: u64,
    pub names: u64,
    pub expanded_name_bytes: u64,
}

impl RollupBudget {
    /// The budget after adding `entry`, whose series names not yet in the
    /// batch are `new_names` (count) — or the limit it would exceed.
    pub fn with_entry(&self, entry: &DeviceRollups, new_names: u64) -> Result<Self, OverLimit> {
        let series = entry.series.len() as u64;
        Limit::SeriesPerEntry.check(series)?;
        let mut next = self.clone();
        next.entries += 1;
        next.series += series;
        next.names += new_names;
        next.expanded_name_bytes += entry.series.iter().map(name_bytes).sum::<u64>();
        next.check()?;
        Ok(next)
    }

    /// Checks the totals.
    pub fn check(&self) -> Result<(), OverLimit> {
        Limit::RollupEntries.check(self.entries)?;
        Limit::SeriesRollups.check(self.series)?;
        Limit::SeriesNames.check(self.names)?;
        Limit::ExpandedNameBytes.check(self.expanded_name_bytes)
    }
}

/// What a series rollup's name and label cost once decoded.
pub fn name_bytes(s: &SeriesRollup) -> u64 {
    (s.name.len() + s.label.len()) as u64
}

/// Checks one series name or label.
pub fn check_name(name: &str) -> Result<(), OverLimit> {
    Limit::NameBytes.check(name.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_round_trips_through_a_serde_message() {
        for l in Limit::ALL {
            let e = OverLimit { limit: l, got: 7 };
            let wrapped = format!("malformed message: OtherString({:?})", e.to_serde_message());
            assert_eq!(OverLimit::from_error_text(&wrapped), Some(e));
            assert!(e.to_string().contains(l.label()), "{e}");
        }
        assert_eq!(OverLimit::from_error_text("malformed"), None);
        assert_eq!(OverLimit::from_error_text("batch over limit nope 3"), None);
    }

    #[test]
    fn a_bounded_list_refuses_its_length_prefix_before_reserving() {
        #[derive(Debug, Deserialize)]
        struct Tenants(#[serde(deserialize_with = "de::foreign_tenants")] Vec<u64>);
        let ok = outpost_proto::codec::encode(&vec![1u64; MAX_FOREIGN_TENANTS]).unwrap();
        let back: Tenants = outpost_proto::codec::decode(&ok).unwrap();
        assert_eq!(back.0.len(), MAX_FOREIGN_TENANTS);
        let over = outpost_proto::codec::encode(&vec![1u64; MAX_FOREIGN_TENANTS + 1]).unwrap();
        let err = outpost_proto::codec::decode::<Tenants>(&over).unwrap_err();
        assert!(err.to_string().contains("foreign_tenants 1025"), "{err}");
        // A claim of 2^62 elements in a few bytes: refused on the claim.
        let mut huge = Vec::new();
        outpost_proto::codec::encode_into(&(1u64 << 62), &mut huge).unwrap();
        let err = outpost_proto::codec::decode::<Tenants>(&huge).unwrap_err();
        assert!(
            err.to_string().contains("batch over limit foreign_tenants"),
            "{err}"
        );
    }
}
