//! What central stores: tenants' sites, devices, rollups and alerts, and the
//! credentials of people and sites. Values are encoded with the proto codec
//! by the RocksDB backend; a PostgreSQL backend maps each struct to a table.
//!
//! These are central's own types: neither the appliance's storage models
//! nor the uplink batch's wire types appear in a stored row (except the
//! shared [`Severity`] of `outpost-proto`), so a change on the appliance
//! cannot change central's on-disk format. The apply plan converts.

use std::borrow::Cow;

use outpost_proto::{CustomerId, SiteId, TenantId};

use outpost_uplink::batch;
use serde::{Deserialize, Serialize};

pub use outpost_proto::alert::Severity;

/// Status of a device, as central stores and shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Enrolled, never heard from on a session.
    Pending,
    Online,
    Offline,
    /// Its certificate was revoked at the site: it will not come back, so
    /// it is neither offline nor counted with the offline devices.
    /// (Appended: stored rows encode the variant index.)
    Revoked,
}

impl DeviceStatus {
    /// Every status, in the order the API and the web view show them.
    pub const ALL: [DeviceStatus; 4] = [
        DeviceStatus::Pending,
        DeviceStatus::Online,
        DeviceStatus::Offline,
        DeviceStatus::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Online => "online",
            DeviceStatus::Offline => "offline",
            DeviceStatus::Revoked => "revoked",
        }
    }
}

impl From<batch::DeviceStatus> for DeviceStatus {
    fn from(s: batch::DeviceStatus) -> Self {
        match s {
            batch::DeviceStatus::Pending => DeviceStatus::Pending,
            batch::DeviceStatus::Online => DeviceStatus::Online,
            batch::DeviceStatus::Offline => DeviceStatus::Offline,
        }
    }
}

/// Min/max/sum/count/last of one series over one 5-minute bucket.
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

impl From<batch::Rollup> for Rollup {
    fn from(r: batch::Rollup) -> Self {
        Rollup {
            min: r.min,
            max: r.max,
            sum: r.sum,
            count: r.count,
            last: r.last,
            last_ts_ms: r.last_ts_ms,
        }
    }
}

/// Lifecycle state of an alert, as central stores and shows it. Stored by
/// position: new states only at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The condition holds, waiting for the rule's `for`: not (yet) an
    /// alert anybody was told about.
    Pending,
    Firing,
    /// firing → resolved.
    Resolved,
    /// pending → cleared: it never fired.
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

    /// Pending or firing (not closed).
    pub fn is_open(self) -> bool {
        matches!(self, AlertState::Pending | AlertState::Firing)
    }
}

impl From<batch::AlertState> for AlertState {
    fn from(s: batch::AlertState) -> Self {
        match s {
            batch::AlertState::Pending => AlertState::Pending,
            batch::AlertState::Firing => AlertState::Firing,
            batch::AlertState::Resolved => AlertState::Resolved,
            batch::AlertState::Cleared => AlertState::Cleared,
        }
    }
}

/// A site (one appliance) of a customer of a tenant (MSP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteRecord {
    pub tenant: TenantId,
    pub customer: CustomerId,
    pub site_id: SiteId,
    pub name: String,
    pub created_ms: u64,
    /// When the appliance joined (0 = token not used yet).
    pub joined_ms: u64,
    /// Every batch with `seq <= applied_up_to` is applied.
    pub applied_up_to: u64,
    /// Applied batches above `applied_up_to` (arrived out of order).
    pub applied_above: Vec<u64>,
    /// Arrival time and creation time (appliance clock) of the newest batch.
    pub last_batch_ms: u64,
    pub last_batch_created_ms: u64,
    pub batches_applied: u64,
    pub duplicates: u64,
    /// The appliance's compaction interval (from its Hello).
    pub interval_ms: u64,
    /// Rollups the appliance reported dropped because its outbox was full.
    pub dropped_rollups: u64,
    /// Devices the site reported enrolled under another tenant. Not in the
    /// record's own encoding (rows stored before it existed keep decoding):
    /// stored after it, see [`SiteRecord::to_stored`].
    #[serde(skip)]
    pub tenant_mismatch: TenantMismatch,
    /// Batches refused for good (their numbers are in the applied set, so
    /// the sequence closes). Stored after the mismatch section.
    #[serde(skip)]
    pub dead_letters: DeadLetters,
}

/// Most numbers kept in [`SiteRecord::applied_above`]. A site sends its
/// backlog oldest first, so an honest one has a handful there; when a
/// batch would add one more, the oldest gap expires instead
/// ([`SiteRecord::expire_gap`]: those numbers are dead-lettered as
/// `gap_expired`), so the record, rewritten by every batch, stays small
/// and the site always makes progress.
pub const MAX_APPLIED_ABOVE: usize = 4_096;

/// Reason of the dead letter of an expired gap.
pub const GAP_EXPIRED: &str = "gap_expired";

/// Dead letters kept per site (the newest; all are counted).
pub const MAX_DEAD_LETTERS: usize = 100;

/// Longest reason message kept in a dead letter.
pub const MAX_DEAD_LETTER_MESSAGE: usize = 512;

/// The batches of a site that central refused for good.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeadLetters {
    /// Every batch dead-lettered, including those no longer in `recent`.
    pub total: u64,
    /// The newest [`MAX_DEAD_LETTERS`], oldest first.
    pub recent: Vec<DeadLetter>,
}

/// A batch central refused for good (or a range of numbers it will never
/// apply: an expired gap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub seq: u64,
    /// The last number this covers (`seq` but for an expired gap).
    pub last_seq: u64,
    /// Why: the reason label of `outpost_central_batch_rejects_total`
    /// (`malformed_batch`, `over_limit`, `identity_mismatch`,
    /// `sequence_mismatch`), or [`GAP_EXPIRED`].
    pub reason: String,
    /// What was wrong, as told to the site (at most
    /// [`MAX_DEAD_LETTER_MESSAGE`] bytes).
    pub message: String,
    /// When central refused it.
    pub at_ms: u64,
}

impl DeadLetter {
    pub fn new(seq: u64, reason: &str, message: &str, at_ms: u64) -> DeadLetter {
        let mut end = message.len().min(MAX_DEAD_LETTER_MESSAGE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        DeadLetter {
            seq,
            last_seq: seq,
            reason: reason.to_string(),
            message: message.get(..end).unwrap_or_default().to_string(),
            at_ms,
        }
    }

    /// Whether this covers `seq`.
    pub fn covers(&self, seq: u64) -> bool {
        self.seq <= seq && seq <= self.last_seq
    }
}

impl DeadLetters {
    /// The dead letter covering `seq`, if it is still kept.
    pub fn find(&self, seq: u64) -> Option<&DeadLetter> {
        self.recent.iter().rev().find(|d| d.covers(seq))
    }

    /// Records one, keeping the newest [`MAX_DEAD_LETTERS`].
    pub fn push(&mut self, d: DeadLetter) {
        self.total += 1;
        self.recent.push(d);
        if self.recent.len() > MAX_DEAD_LETTERS {
            let extra = self.recent.len() - MAX_DEAD_LETTERS;
            self.recent.drain(..extra);
        }
    }
}

/// Devices a site reported enrolled under a tenant other than the site's
/// (central's tenant, from the site certificate, stays the one it lists
/// them under): the newest report wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantMismatch {
    /// Creation time (appliance clock) of the batch that reported it.
    pub as_of_ms: u64,
    /// Per tenant claimed, the number of devices; empty when none.
    pub tenants: Vec<ForeignTenantRow>,
}

/// One tenant a site's devices were enrolled under, other than the site's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignTenantRow {
    pub tenant: TenantId,
    pub devices: u64,
}

impl From<&batch::ForeignTenant> for ForeignTenantRow {
    fn from(f: &batch::ForeignTenant) -> Self {
        ForeignTenantRow {
            tenant: f.tenant.clone(),
            devices: u64::from(f.devices),
        }
    }
}

impl SiteRecord {
    /// A site just added: not joined, nothing applied, no counters.
    /// Callers set what differs with struct update syntax
    /// (`SiteRecord { joined_ms: 1, ..SiteRecord::new(…) }`), so a field
    /// added to the record has one default here.
    pub fn new(
        tenant: TenantId,
        customer: CustomerId,
        site_id: SiteId,
        name: String,
        created_ms: u64,
    ) -> SiteRecord {
        SiteRecord {
            tenant,
            customer,
            site_id,
            name,
            created_ms,
            joined_ms: 0,
            applied_up_to: 0,
            applied_above: Vec::new(),
            last_batch_ms: 0,
            last_batch_created_ms: 0,
            batches_applied: 0,
            duplicates: 0,
            interval_ms: 0,
            dropped_rollups: 0,
            tenant_mismatch: TenantMismatch::default(),
            dead_letters: DeadLetters::default(),
        }
    }

    /// The stored bytes of a site: the record's encoding, followed by its
    /// [`TenantMismatch`] once the site reported one, then its
    /// [`DeadLetters`] once it has some (so rows written before central
    /// knew of either decode unchanged).
    pub fn to_stored(&self) -> Result<Vec<u8>, outpost_proto::codec::CodecError> {
        let mut out = outpost_proto::codec::encode(self)?;
        let dead = self.dead_letters != DeadLetters::default();
        if dead || self.tenant_mismatch != TenantMismatch::default() {
            outpost_proto::codec::encode_into(&self.tenant_mismatch, &mut out)?;
        }
        if dead {
            outpost_proto::codec::encode_into(&self.dead_letters, &mut out)?;
        }
        Ok(out)
    }

    /// Decodes what [`SiteRecord::to_stored`] wrote (or a row written
    /// before either section existed).
    pub fn from_stored(bytes: &[u8]) -> Result<SiteRecord, outpost_proto::codec::CodecError> {
        let (mut site, used): (SiteRecord, usize) = outpost_proto::codec::decode_prefix(bytes)?;
        let rest = bytes.get(used..).unwrap_or_default();
        if !rest.is_empty() {
            let (m, used): (TenantMismatch, usize) = outpost_proto::codec::decode_prefix(rest)?;
            site.tenant_mismatch = m;
            let rest = rest.get(used..).unwrap_or_default();
            if !rest.is_empty() {
                site.dead_letters = outpost_proto::codec::decode(rest)?;
            }
        }
        Ok(site)
    }

    /// Whether `seq` was applied (or dead-lettered): its number is in the
    /// applied set.
    pub fn is_applied(&self, seq: u64) -> bool {
        seq <= self.applied_up_to || self.applied_above.binary_search(&seq).is_ok()
    }

    /// Whether `seq` can join the applied set without it growing above
    /// [`MAX_APPLIED_ABOVE`] numbers.
    pub fn can_mark(&self, seq: u64) -> bool {
        self.is_applied(seq)
            || Some(seq) == self.applied_up_to.checked_add(1)
            || self.applied_above.len() < MAX_APPLIED_ABOVE
    }

    /// Closes the oldest gap (the numbers between `applied_up_to` and the
    /// lowest number above it) as dead-lettered [`GAP_EXPIRED`] at `now_ms`,
    /// folding what follows into the prefix. `None` without a gap.
    pub fn expire_gap(&mut self, now_ms: u64) -> Option<DeadLetter> {
        let first = self.applied_up_to.checked_add(1)?;
        let above = *self.applied_above.first()?;
        let last = above.checked_sub(1)?;
        if last < first {
            return None;
        }
        let message = format!(
            "never received while {} later batches were applied; batches {first} to {last} count as lost",
            self.applied_above.len()
        );
        self.applied_up_to = last;
        self.fold();
        let mut d = DeadLetter::new(first, GAP_EXPIRED, &message, now_ms);
        d.last_seq = last;
        self.dead_letters.push(d.clone());
        Some(d)
    }

    /// Makes room for `seq` in the applied set ([`SiteRecord::can_mark`]),
    /// expiring the oldest gaps as needed; returns the dead letters of the
    /// expired gaps.
    pub fn make_room(&mut self, seq: u64, now_ms: u64) -> Vec<DeadLetter> {
        let mut expired = Vec::new();
        while !self.can_mark(seq) {
            match self.expire_gap(now_ms) {
                Some(d) => expired.push(d),
                None => break,
            }
        }
        expired
    }

    /// Marks `seq` applied, folding contiguous numbers into `applied_up_to`.
    pub fn mark_applied(&mut self, seq: u64) {
        if self.is_applied(seq) {
            return;
        }
        if let Err(at) = self.applied_above.binary_search(&seq) {
            self.applied_above.insert(at, seq);
        }
        self.fold();
    }

    /// Moves the numbers of `applied_above` that continue the prefix into
    /// `applied_up_to`.
    fn fold(&mut self) {
        let mut folded = 0;
        while let Some(next) = self.applied_up_to.checked_add(1)
            && self.applied_above.get(folded) == Some(&next)
        {
            self.applied_up_to = next;
            folded += 1;
        }
        self.applied_above.drain(..folded);
    }
}

impl DeviceRow {
    /// The row as this version shows it: rows stored before revoked
    /// devices had a status of their own say `revoked: true` with the
    /// connection status they had (`offline`); they read as `revoked`.
    pub fn upgraded(mut self) -> DeviceRow {
        if self.revoked {
            self.status = DeviceStatus::Revoked;
        }
        self
    }
}

/// A device as central knows it (latest snapshot wins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRow {
    pub tenant: TenantId,
    pub site_id: SiteId,
    /// The appliance's device id (hex).
    pub device: String,
    pub customer: CustomerId,
    pub hostname: String,
    pub os: String,
    pub agent_version: String,
    pub enrolled_at_ms: u64,
    pub revoked: bool,
    pub status: DeviceStatus,
    pub status_since_ms: u64,
    pub last_seen_ms: u64,
    pub as_of_ms: u64,
    /// Distinct (series, bucket) rollups stored for this device.
    pub rollups_stored: u64,
    /// Latest bucket seen per series: `name[label]` → (bucket start, rollup).
    pub latest: Vec<LatestRollup>,
}

/// A device's IP addresses and tags as its site last reported them (batch
/// format 6, sent whole with the device's snapshot). Stored apart from
/// the [`DeviceRow`] (keyed alike; RocksDB: its own column family,
/// PostgreSQL: the `ips` and `tags` columns of `devices`), replaced only
/// together with a snapshot that wins (see [`crate::apply`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// Interface addresses (no prefix length), as the site sent them.
    pub ips: Vec<String>,
    /// The device's tags at its site.
    pub tags: Vec<String>,
}

impl DeviceFacts {
    /// No address and no tag (nothing to store).
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.tags.is_empty()
    }
}

/// A device's patch compliance as its site last reported it (the newest
/// `as_of_ms` wins). Stored apart from the [`DeviceRow`] (keyed alike),
/// so a site without patch assessment stores none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchComplianceRow {
    pub tenant: TenantId,
    pub site_id: SiteId,
    /// The site's customer.
    pub customer: CustomerId,
    /// The appliance's device id (hex).
    pub device: String,
    /// `None` when the site sent only the format-3 summary (no detail).
    pub compliance: Option<batch::ComplianceState>,
    /// Missing patches (upgradable packages).
    pub missing: u32,
    /// Missing security patches by severity.
    pub security_patches: batch::PatchSeverityCounts,
    pub fixable_cves: u32,
    pub open_cves: u32,
    /// 0–100.
    pub risk: Option<u32>,
    /// When the device's package scan was taken (0: unknown).
    pub last_scan_ms: u64,
    pub reboot_required: bool,
    /// When the site assessed it.
    pub as_of_ms: u64,
}

/// A device's missing patches and vulnerable CVEs as its site last
/// reported them (batch format 5; the newest `as_of_ms` wins). Stored
/// apart from the [`PatchComplianceRow`] (keyed alike); central's CVE
/// index (`tenant, CVE, site, device`) is derived from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchFindingsRow {
    pub tenant: TenantId,
    pub site_id: SiteId,
    /// The site's customer.
    pub customer: CustomerId,
    /// The appliance's device id (hex).
    pub device: String,
    /// When the site assessed it.
    pub as_of_ms: u64,
    pub patches: Vec<batch::MissingPatchEntry>,
    pub vulns: Vec<batch::VulnGroup>,
}

impl PatchFindingsRow {
    pub fn from_batch(site: &SiteRecord, f: &batch::PatchFindings) -> Self {
        PatchFindingsRow {
            tenant: site.tenant.clone(),
            site_id: site.site_id.clone(),
            customer: site.customer.clone(),
            device: f.device.to_string(),
            as_of_ms: f.as_of_ms,
            patches: f.patches.clone(),
            vulns: f.vulns.clone(),
        }
    }

    /// Each CVE of the device with how it is exposed (a CVE in several
    /// source packages has several hits), ordered by CVE id.
    pub fn cve_hits(&self) -> std::collections::BTreeMap<&str, Vec<CveHit>> {
        let mut out: std::collections::BTreeMap<&str, Vec<CveHit>> = Default::default();
        for v in &self.vulns {
            for c in &v.cves {
                out.entry(c.as_str()).or_default().push(CveHit::of(v));
            }
        }
        out
    }
}

/// A device exposed to a CVE, as central's CVE index holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CveExposureRow {
    pub site_id: SiteId,
    /// The appliance's device id (hex).
    pub device: String,
    pub hits: Vec<CveHit>,
}

/// How a device is exposed to one CVE through one source package: an
/// entry of central's CVE index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CveHit {
    pub source: String,
    pub installed: String,
    /// `None`: open (no fix in the release yet).
    pub fixed: Option<String>,
    /// A candidate upgrade of the device reaches the fix.
    pub fix_available: bool,
    pub severity: batch::FindingSeverity,
}

/// One site's devices exposed to one CVE (from central's CVE index): the
/// counts of the top-CVE list without reading any findings row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CveSiteExposure {
    pub cve: String,
    pub site_id: SiteId,
    /// Highest severity of the CVE on any of these devices.
    pub severity: batch::FindingSeverity,
    pub devices: u32,
    /// Devices whose best hit is fixable (see [`CveHit::best`]).
    pub fixable: u32,
    pub fix_not_in_repositories: u32,
    pub open: u32,
}

impl CveSiteExposure {
    /// Adds one device's index entry to `out`, whose entries come in
    /// (CVE, site) order (the index's key order): the same (CVE, site)
    /// as the last line adds to it, another starts a line.
    pub fn fold(out: &mut Vec<CveSiteExposure>, cve: &str, site_id: &SiteId, hits: &[CveHit]) {
        let (Some(best), Some(top)) = (CveHit::best(hits), hits.iter().map(|h| h.severity).max())
        else {
            return;
        };
        let line = match out.last_mut() {
            Some(l) if l.cve == cve && &l.site_id == site_id => l,
            _ => {
                out.push(CveSiteExposure {
                    cve: cve.to_string(),
                    site_id: site_id.clone(),
                    severity: top,
                    devices: 0,
                    fixable: 0,
                    fix_not_in_repositories: 0,
                    open: 0,
                });
                match out.last_mut() {
                    Some(l) => l,
                    None => return,
                }
            }
        };
        line.severity = line.severity.max(top);
        line.devices += 1;
        match best.state() {
            "fixable" => line.fixable += 1,
            "open" => line.open += 1,
            _ => line.fix_not_in_repositories += 1,
        }
    }
}

impl CveHit {
    /// The CVE's state on a device from its hits (a CVE in several source
    /// packages has several): the best one, fixable before fix not in
    /// repositories before open, then the most severe.
    pub fn best(hits: &[CveHit]) -> Option<&CveHit> {
        let rank = |h: &CveHit| match h.state() {
            "fixable" => 0,
            "fix-not-in-repositories" => 1,
            _ => 2,
        };
        hits.iter()
            .min_by_key(|h| (rank(h), std::cmp::Reverse(h.severity)))
    }

    pub fn of(v: &batch::VulnGroup) -> CveHit {
        CveHit {
            source: v.source.clone(),
            installed: v.installed.clone(),
            fixed: v.fixed.clone(),
            fix_available: v.fix_available,
            severity: v.severity,
        }
    }

    /// `fixable` (an upgrade is offered), `fix-not-in-repositories` (the
    /// release has a fix the device's repositories do not offer) or `open`
    /// (no fix yet).
    pub fn state(&self) -> &'static str {
        match (&self.fixed, self.fix_available) {
            (None, _) => "open",
            (Some(_), true) => "fixable",
            (Some(_), false) => "fix-not-in-repositories",
        }
    }
}

impl PatchComplianceRow {
    /// The row for `p`, reported by `site`.
    pub fn from_batch(site: &SiteRecord, p: &batch::PatchCompliance) -> Self {
        let d = p.detail.as_ref();
        PatchComplianceRow {
            tenant: site.tenant.clone(),
            site_id: site.site_id.clone(),
            customer: site.customer.clone(),
            device: p.device.to_string(),
            compliance: d.map(|d| d.compliance),
            missing: p.missing,
            security_patches: d
                .map(|d| d.security_patches)
                .unwrap_or(batch::PatchSeverityCounts {
                    critical: p.missing_critical,
                    ..Default::default()
                }),
            fixable_cves: d.map_or(0, |d| d.fixable_cves),
            open_cves: d.map_or(0, |d| d.open_cves),
            risk: d.and_then(|d| d.risk),
            last_scan_ms: d.map_or(0, |d| d.scanned_at_ms),
            reboot_required: d.map_or(p.installed_pending_reboot > 0, |d| d.reboot_required),
            as_of_ms: p.as_of_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatestRollup {
    pub series: String,
    pub label: String,
    pub bucket_start_ms: u64,
    pub rollup: Rollup,
}

/// One stored rollup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollupRow {
    pub computed_ms: u64,
    pub rollup: Rollup,
}

/// Every series' rollup of one device and 5-minute bucket, stored as one
/// row: a batch of 100 devices × 28 series writes 100 rows, not 2,800.
/// Names are `Cow`: the apply path stores them borrowed from the batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketRow<'a> {
    pub series: Vec<BucketSeries<'a>>,
}

/// One series in a [`BucketRow`]; `computed_ms` is per series, so a
/// recomputation of some series of a bucket replaces only those.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketSeries<'a> {
    pub name: Cow<'a, str>,
    pub label: Cow<'a, str>,
    pub computed_ms: u64,
    pub rollup: Rollup,
}

impl BucketRow<'_> {
    /// Index of series `name[label]`, trying `hint` first (batches list a
    /// device's series in the same order every bucket).
    pub fn position(&self, name: &str, label: &str, hint: usize) -> Option<usize> {
        let is = |s: &BucketSeries| s.name == name && s.label == label;
        match self.series.get(hint) {
            Some(s) if is(s) => Some(hint),
            _ => self.series.iter().position(is),
        }
    }
}

/// The latest state of one alert instance of a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRow {
    pub tenant: TenantId,
    pub site_id: SiteId,
    pub customer: CustomerId,
    pub alert_id: u64,
    pub device: Option<String>,
    pub rule: String,
    pub severity: Severity,
    pub state: AlertState,
    pub at_ms: u64,
    pub first_ms: u64,
    pub message: String,
    pub value: Option<f64>,
    pub transitions: u32,
    /// Who acknowledged it at central (technician or admin), and when.
    #[serde(default)]
    pub acked_by: Option<String>,
    #[serde(default)]
    pub acked_ms: u64,
}

/// Role of a user or API token within its tenant (viewer < technician <
/// admin; shared with the appliance's local users).
pub use outpost_web::login::Role;

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Principal {
    pub tenant: TenantId,
    pub role: Role,
    /// Customers this principal is limited to (empty = all of the tenant).
    pub customers: Vec<CustomerId>,
    /// User name, or `token:<id>`.
    pub name: String,
}

impl Principal {
    pub fn sees_customer(&self, c: &CustomerId) -> bool {
        self.customers.is_empty() || self.customers.contains(c)
    }

    /// Tenant-wide: not limited to some customers.
    pub fn is_tenant_wide(&self) -> bool {
        self.customers.is_empty()
    }

    /// Whether this principal may give a credential (token or user) `role`
    /// over `customers` (empty = every customer of the tenant): only a
    /// subset of its own scope, never a higher role. `Err` says why not.
    pub fn may_grant(&self, role: Role, customers: &[CustomerId]) -> Result<(), String> {
        if role.rank() > self.role.rank() {
            return Err(format!(
                "role {} may not grant role {}",
                self.role.as_str(),
                role.as_str()
            ));
        }
        if self.is_tenant_wide() {
            return Ok(());
        }
        if customers.is_empty() {
            return Err(format!(
                "limited to customers {}: name them (`customers`), an empty list means every customer",
                self.customers
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        match customers.iter().find(|c| !self.customers.contains(c)) {
            Some(c) => Err(format!("not allowed for customer {c}")),
            None => Ok(()),
        }
    }
}

/// An API token (stored by SHA-256 of the secret, in the layout of
/// [`ApiTokenRecord::to_stored`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub id: String,
    pub principal: Principal,
    pub created_ms: u64,
    /// Expiry, creator and revocation: stored after the record's own
    /// bytes (the codec cannot take a new trailing field), default for a
    /// token stored before they existed.
    #[serde(skip)]
    pub life: TokenLife,
}

/// What an API token carries beside its principal: when it ends and who
/// made and revoked it. A later addition goes in a further section after
/// this one (see [`ApiTokenRecord::to_stored`]), never inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenLife {
    /// Refused from this time on (`None`: no expiry).
    pub expires_ms: Option<u64>,
    /// The principal that created it (`operator` for the CLI), when known
    /// (`None` for a token created before central recorded it).
    pub created_by: Option<String>,
    /// Refused from this time on.
    pub revoked_ms: Option<u64>,
    pub revoked_by: Option<String>,
}

/// Why a stored API token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    Revoked { at_ms: u64, by: Option<String> },
    Expired { at_ms: u64 },
}

impl TokenRefusal {
    /// The reason label of `outpost_central_api_rejects_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenRefusal::Revoked { .. } => "token_revoked",
            TokenRefusal::Expired { .. } => "token_expired",
        }
    }
}

impl ApiTokenRecord {
    /// The principal name of the token (`token:ID`): its name in the
    /// audit log, in `created_by`, and its id in listings.
    pub fn name(&self) -> String {
        format!("token:{}", self.id)
    }

    /// Why the token is refused at `now_ms`, if it is: revoked (first), or
    /// expired (from its expiry time on).
    pub fn refusal(&self, now_ms: u64) -> Option<TokenRefusal> {
        if let Some(at_ms) = self.life.revoked_ms {
            return Some(TokenRefusal::Revoked {
                at_ms,
                by: self.life.revoked_by.clone(),
            });
        }
        match self.life.expires_ms {
            Some(at_ms) if now_ms >= at_ms => Some(TokenRefusal::Expired { at_ms }),
            _ => None,
        }
    }

    /// The stored bytes: the record's encoding, followed by its
    /// [`TokenLife`] unless that is the default (a token without expiry,
    /// creator or revocation keeps the bytes it always had).
    pub fn to_stored(&self) -> Result<Vec<u8>, outpost_proto::codec::CodecError> {
        let mut out = outpost_proto::codec::encode(self)?;
        if self.life != TokenLife::default() {
            outpost_proto::codec::encode_into(&self.life, &mut out)?;
        }
        Ok(out)
    }

    /// Decodes what [`ApiTokenRecord::to_stored`] wrote (or a row written
    /// before the [`TokenLife`] section existed).
    pub fn from_stored(bytes: &[u8]) -> Result<ApiTokenRecord, outpost_proto::codec::CodecError> {
        let (mut t, used): (ApiTokenRecord, usize) = outpost_proto::codec::decode_prefix(bytes)?;
        let rest = bytes.get(used..).unwrap_or_default();
        if !rest.is_empty() {
            t.life = outpost_proto::codec::decode(rest)?;
        }
        Ok(t)
    }
}

/// A web user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub tenant: TenantId,
    pub name: String,
    pub role: Role,
    pub customers: Vec<CustomerId>,
    /// argon2id PHC string.
    pub password_hash: String,
    pub created_ms: u64,
}

/// A login session (stored by SHA-256 of the cookie value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub principal: Principal,
    pub expires_ms: u64,
}

/// A one-time site join token (stored by SHA-256 of the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub tenant: TenantId,
    pub site_id: SiteId,
    pub expires_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn rollup(v: f64) -> Rollup {
        Rollup {
            min: v,
            max: v + 1.5,
            sum: v * 3.0 + 1.5,
            count: 3,
            last: v + 1.0,
            last_ts_ms: 1_700_000_040_000,
        }
    }

    fn site() -> SiteRecord {
        SiteRecord {
            tenant: "msp".into(),
            customer: "dental".into(),
            site_id: "s-1".into(),
            name: "main".into(),
            created_ms: 1,
            joined_ms: 2,
            applied_up_to: 7,
            applied_above: vec![9, 12],
            last_batch_ms: 1_700_000_100_000,
            last_batch_created_ms: 1_700_000_099_000,
            batches_applied: 9,
            duplicates: 1,
            interval_ms: 60_000,
            dropped_rollups: 3,
            tenant_mismatch: TenantMismatch::default(),
            dead_letters: DeadLetters::default(),
        }
    }

    fn device() -> DeviceRow {
        DeviceRow {
            tenant: "msp".into(),
            site_id: "s-1".into(),
            device: "000000000000002a".into(),
            customer: "dental".into(),
            hostname: "web-1".into(),
            os: "Debian".into(),
            agent_version: "0.1.0".into(),
            enrolled_at_ms: 1,
            revoked: true,
            status: DeviceStatus::Offline,
            status_since_ms: 2,
            last_seen_ms: 3,
            as_of_ms: 4,
            rollups_stored: 2,
            latest: vec![LatestRollup {
                series: "disk_used_percent".into(),
                label: "/".into(),
                bucket_start_ms: 1_699_999_800_000,
                rollup: rollup(71.5),
            }],
        }
    }

    fn alert() -> AlertRow {
        AlertRow {
            tenant: "msp".into(),
            site_id: "s-1".into(),
            customer: "dental".into(),
            alert_id: 9,
            device: Some("000000000000002a".into()),
            rule: "cpu_high".into(),
            severity: Severity::Warning,
            state: AlertState::Resolved,
            at_ms: 5,
            first_ms: 4,
            message: "cpu 97 > 90".into(),
            value: Some(97.0),
            transitions: 2,
            acked_by: Some("alice".into()),
            acked_ms: 6,
        }
    }

    fn bucket() -> BucketRow<'static> {
        BucketRow {
            series: vec![
                BucketSeries {
                    name: "cpu".into(),
                    label: "".into(),
                    computed_ms: 1_700_000_100_000,
                    rollup: rollup(12.25),
                },
                BucketSeries {
                    name: "disk_used_percent".into(),
                    label: "/".into(),
                    computed_ms: 1_700_000_160_000,
                    rollup: rollup(71.5),
                },
            ],
        }
    }

    fn principal() -> Principal {
        Principal {
            tenant: "msp".into(),
            role: Role::Technician,
            customers: vec!["dental".into()],
            name: "alice".into(),
        }
    }

    fn enc<T: Serialize>(v: &T) -> String {
        hex(&outpost_proto::codec::encode(v).expect("encodes"))
    }

    /// The stored bytes of every row central keeps, captured before central
    /// had its own row types (they embedded the appliance's storage models):
    /// a change of these bytes is a change of central's on-disk format.
    #[test]
    fn stored_rows_keep_their_bytes() {
        let rows = [
            ("site", enc(&site())),
            ("device", enc(&device())),
            ("latest", enc(&device().latest[0])),
            (
                "rollup",
                enc(&RollupRow {
                    computed_ms: 8,
                    rollup: rollup(12.25),
                }),
            ),
            ("bucket", enc(&bucket())),
            ("alert", enc(&alert())),
            (
                "api token",
                enc(&ApiTokenRecord {
                    id: "ab12".into(),
                    principal: principal(),
                    created_ms: 9,
                    life: TokenLife::default(),
                }),
            ),
            (
                "user",
                enc(&UserRecord {
                    tenant: "msp".into(),
                    name: "alice".into(),
                    role: Role::Admin,
                    customers: vec![],
                    password_hash: "$argon2id$x".into(),
                    created_ms: 10,
                }),
            ),
            (
                "session",
                enc(&SessionRecord {
                    principal: principal(),
                    expires_ms: 11,
                }),
            ),
            (
                "join token",
                enc(&JoinTokenRecord {
                    tenant: "msp".into(),
                    site_id: "s-1".into(),
                    expires_ms: 12,
                }),
            ),
        ];
        for ((what, got), want) in rows.iter().zip(GOLDEN) {
            assert_eq!(got, want, "{what}");
        }
    }

    /// A cleared alert is stored after the three states that existed before
    /// it (a new position, old rows read as before) and shown `cleared`.
    #[test]
    fn a_cleared_alert_row_adds_a_state_without_changing_old_rows() {
        let mut a = alert();
        a.state = AlertState::Cleared;
        assert_eq!(
            enc(&a),
            GOLDEN[5].replacen("010205040b", "010305040b", 1),
            "state byte 3"
        );
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains(r#""state":"cleared""#), "{json}");
        assert!(!AlertState::Cleared.is_open() && !AlertState::Resolved.is_open());
        assert!(AlertState::Pending.is_open() && AlertState::Firing.is_open());
        for (b, c) in [
            (batch::AlertState::Pending, AlertState::Pending),
            (batch::AlertState::Firing, AlertState::Firing),
            (batch::AlertState::Resolved, AlertState::Resolved),
            (batch::AlertState::Cleared, AlertState::Cleared),
        ] {
            assert_eq!(AlertState::from(b), c);
            assert_eq!(b.as_str(), c.as_str());
        }
    }

    /// A site row stored before the mismatch section decodes with none; one
    /// with a mismatch keeps it, after the record's unchanged bytes.
    #[test]
    fn site_rows_carry_the_tenant_mismatch_after_the_record() {
        let old = (0..GOLDEN[0].len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&GOLDEN[0][i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>();
        let s = SiteRecord::from_stored(&old).unwrap();
        assert_eq!(s, site());
        assert_eq!(s.to_stored().unwrap(), old, "no section without a mismatch");
        let mut m = site();
        m.tenant_mismatch = TenantMismatch {
            as_of_ms: 5,
            tenants: vec![ForeignTenantRow {
                tenant: "acme-msp".into(),
                devices: 2,
            }],
        };
        let bytes = m.to_stored().unwrap();
        assert!(bytes.starts_with(&old), "the record's bytes first");
        assert_eq!(SiteRecord::from_stored(&bytes).unwrap(), m);
        assert!(SiteRecord::from_stored(&bytes[..bytes.len() - 1]).is_err());
    }

    /// Dead letters are stored after the mismatch section (an empty one is
    /// written before them when the site has no mismatch); rows without
    /// either keep their bytes.
    #[test]
    fn site_rows_carry_dead_letters_after_the_mismatch_section() {
        let plain = site();
        let old = plain.to_stored().unwrap();
        let mut d = site();
        d.dead_letters
            .push(DeadLetter::new(8, "malformed_batch", "bad", 99));
        let bytes = d.to_stored().unwrap();
        assert!(bytes.starts_with(&old));
        assert_eq!(SiteRecord::from_stored(&bytes).unwrap(), d);
        let mut both = d.clone();
        both.tenant_mismatch = TenantMismatch {
            as_of_ms: 5,
            tenants: vec![ForeignTenantRow {
                tenant: "acme-msp".into(),
                devices: 2,
            }],
        };
        let bytes = both.to_stored().unwrap();
        assert_eq!(SiteRecord::from_stored(&bytes).unwrap(), both);
        assert!(SiteRecord::from_stored(&bytes[..bytes.len() - 1]).is_err());
    }

    /// A token row stored before expiry and revocation existed decodes
    /// with none (never refused); one with them keeps them after the
    /// record's unchanged bytes, and is refused from the expiry on, or
    /// once revoked whatever its expiry.
    #[test]
    fn token_rows_carry_expiry_and_revocation_after_the_record() {
        let old_bytes = (0..GOLDEN[6].len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&GOLDEN[6][i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>();
        let old = ApiTokenRecord::from_stored(&old_bytes).unwrap();
        assert_eq!(old.life, TokenLife::default());
        assert_eq!(old.refusal(u64::MAX), None);
        assert_eq!(
            old.to_stored().unwrap(),
            old_bytes,
            "no section without one"
        );
        assert_eq!(old.name(), "token:ab12");
        let mut t = old.clone();
        t.life = TokenLife {
            expires_ms: Some(1_000),
            created_by: Some("alice".into()),
            revoked_ms: None,
            revoked_by: None,
        };
        let bytes = t.to_stored().unwrap();
        assert!(bytes.starts_with(&old_bytes));
        assert_eq!(ApiTokenRecord::from_stored(&bytes).unwrap(), t);
        assert!(ApiTokenRecord::from_stored(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(t.refusal(999), None);
        assert_eq!(
            t.refusal(1_000),
            Some(TokenRefusal::Expired { at_ms: 1_000 })
        );
        t.life.revoked_ms = Some(500);
        t.life.revoked_by = Some("bob".into());
        let r = t.refusal(10).unwrap();
        assert_eq!(
            r,
            TokenRefusal::Revoked {
                at_ms: 500,
                by: Some("bob".into())
            }
        );
        assert_eq!(r.reason(), "token_revoked");
        assert_eq!(
            t.refusal(2_000).map(|r| r.reason()),
            Some("token_revoked"),
            "revoked first"
        );
    }

    #[test]
    fn dead_letters_keep_the_newest_count_all_and_cut_long_messages() {
        let mut d = DeadLetters::default();
        for seq in 0..(MAX_DEAD_LETTERS as u64 + 5) {
            d.push(DeadLetter::new(seq, "over_limit", "x", seq));
        }
        assert_eq!(d.total, MAX_DEAD_LETTERS as u64 + 5);
        assert_eq!(d.recent.len(), MAX_DEAD_LETTERS);
        assert_eq!(d.recent[0].seq, 5);
        assert!(d.find(4).is_none() && d.find(5).is_some());
        let long = DeadLetter::new(1, "malformed_batch", &"é".repeat(600), 1);
        assert!(long.message.len() <= MAX_DEAD_LETTER_MESSAGE);
    }

    /// The applied set folds contiguous numbers into its prefix and takes
    /// at most MAX_APPLIED_ABOVE numbers above it (one that extends the
    /// prefix always fits).
    #[test]
    fn the_applied_set_is_bounded_and_folds_into_its_prefix() {
        let mut s = site();
        (s.applied_up_to, s.applied_above) = (0, vec![]);
        for seq in [3, 1, 5, 2] {
            assert!(s.can_mark(seq));
            s.mark_applied(seq);
        }
        assert_eq!((s.applied_up_to, s.applied_above.clone()), (3, vec![5]));
        s.applied_above = (5..5 + MAX_APPLIED_ABOVE as u64).collect();
        assert!(!s.can_mark(100_000), "full");
        assert!(s.can_mark(4), "extends the prefix");
        assert!(s.can_mark(7), "already in the set");
        s.mark_applied(4);
        assert_eq!(s.applied_up_to, 4 + MAX_APPLIED_ABOVE as u64);
        assert!(s.applied_above.is_empty());
        assert!(s.can_mark(100_000));
        // Full with gaps: the oldest gap expires (dead-lettered as one
        // range), what follows folds, and there is room again.
        (s.applied_up_to, s.applied_above) = (10, vec![]);
        s.applied_above = (0..MAX_APPLIED_ABOVE as u64).map(|i| 20 + 2 * i).collect();
        assert!(s.make_room(4, 7).is_empty(), "applied already");
        let expired = s.make_room(1_000_000, 7);
        assert_eq!(expired.len(), 1);
        let d = &expired[0];
        assert_eq!(
            (d.seq, d.last_seq, d.reason.as_str(), d.at_ms),
            (11, 19, GAP_EXPIRED, 7)
        );
        assert_eq!(s.applied_up_to, 20);
        assert_eq!(s.applied_above.len(), MAX_APPLIED_ABOVE - 1);
        assert!(s.can_mark(1_000_000));
        assert!(
            s.dead_letters
                .find(15)
                .is_some_and(|x| x.covers(11) && x.covers(19))
        );
        assert!(s.dead_letters.find(21).is_none());
        (s.applied_up_to, s.applied_above) = (u64::MAX - 1, vec![]);
        s.mark_applied(u64::MAX);
        assert_eq!(s.applied_up_to, u64::MAX, "no overflow at the end");
    }

    #[test]
    fn a_principal_grants_a_subset_of_its_scope_and_no_higher_role() {
        let p = |role, customers: &[&str]| Principal {
            tenant: "msp".into(),
            role,
            customers: customers.iter().map(|c| (*c).into()).collect(),
            name: "x".into(),
        };
        let c = |cs: &[&str]| cs.iter().map(|c| (*c).into()).collect::<Vec<CustomerId>>();
        let wide = p(Role::Admin, &[]);
        assert!(wide.may_grant(Role::Admin, &[]).is_ok());
        assert!(wide.may_grant(Role::Viewer, &c(&["any"])).is_ok());
        let scoped = p(Role::Admin, &["a", "b"]);
        assert!(scoped.may_grant(Role::Admin, &c(&["a"])).is_ok());
        assert!(scoped.may_grant(Role::Viewer, &c(&["a", "b"])).is_ok());
        assert!(scoped.may_grant(Role::Viewer, &[]).is_err(), "empty = all");
        assert!(scoped.may_grant(Role::Viewer, &c(&["a", "c"])).is_err());
        let tech = p(Role::Technician, &[]);
        assert!(tech.may_grant(Role::Admin, &[]).is_err(), "higher role");
        assert!(tech.may_grant(Role::Technician, &[]).is_ok());
        assert!(
            p(Role::Viewer, &["a"])
                .may_grant(Role::Technician, &c(&["a"]))
                .is_err()
        );
    }

    /// The JSON the API answers with for devices and alerts (same capture).
    #[test]
    fn api_rows_keep_their_json() {
        let d = serde_json::to_string(&device()).unwrap();
        let a = serde_json::to_string(&alert()).unwrap();
        assert_eq!(d, GOLDEN_JSON[0]);
        assert_eq!(a, GOLDEN_JSON[1]);
    }

    /// Captured with the storage-model row types (commit "outpost-central
    /// in its own crate"), in the order of `stored_rows_keep_their_bytes`.
    const GOLDEN: [&str; 10] = [
        "036d73700664656e74616c03732d31046d61696e01020702090cfda0eee6cf8b010000fdb8eae6cf8b0100000901fb60ea03",
        "036d737003732d3110303030303030303030303030303032610664656e74616c057765622d310644656269616e05302e312e300101020203040201116469736b5f757365645f70657263656e74012ffdc05ae2cf8b0100000000000000e0514000000000004052400000000000006b40030000000000205240fd4004e6cf8b010000",
        "116469736b5f757365645f70657263656e74012ffdc05ae2cf8b0100000000000000e0514000000000004052400000000000006b40030000000000205240fd4004e6cf8b010000",
        "0800000000008028400000000000802b400000000000204340030000000000802a40fd4004e6cf8b010000",
        "020363707500fda0eee6cf8b01000000000000008028400000000000802b400000000000204340030000000000802a40fd4004e6cf8b010000116469736b5f757365645f70657263656e74012ffd00d9e7cf8b0100000000000000e0514000000000004052400000000000006b40030000000000205240fd4004e6cf8b010000",
        "036d737003732d310664656e74616c09011030303030303030303030303030303261086370755f68696768010205040b637075203937203e203930010000000000405840020105616c69636506",
        "0461623132036d737001010664656e74616c05616c69636509",
        "036d737005616c69636500000b246172676f6e32696424780a",
        "036d737001010664656e74616c05616c6963650b",
        "036d737003732d310c",
    ];
    const GOLDEN_JSON: [&str; 2] = [
        r#"{"tenant":"msp","site_id":"s-1","device":"000000000000002a","customer":"dental","hostname":"web-1","os":"Debian","agent_version":"0.1.0","enrolled_at_ms":1,"revoked":true,"status":"offline","status_since_ms":2,"last_seen_ms":3,"as_of_ms":4,"rollups_stored":2,"latest":[{"series":"disk_used_percent","label":"/","bucket_start_ms":1699999800000,"rollup":{"min":71.5,"max":73.0,"sum":216.0,"count":3,"last":72.5,"last_ts_ms":1700000040000}}]}"#,
        r#"{"tenant":"msp","site_id":"s-1","customer":"dental","alert_id":9,"device":"000000000000002a","rule":"cpu_high","severity":"warning","state":"resolved","at_ms":5,"first_ms":4,"message":"cpu 97 > 90","value":97.0,"transitions":2,"acked_by":"alice","acked_ms":6}"#,
    ];
}
