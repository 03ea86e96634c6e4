//! The pure core of applying a site batch: from the stored rows a batch
//! touches and the batch itself, the rows to write. Every
//! [`BatchStore`](crate::store::BatchStore) backend shares it: a backend
//! reads the rows [`Touched::of`] names, calls [`plan`] and writes the
//! [`Changes`] in one durable transaction (RocksDB: one synced write under
//! the site's lock; PostgreSQL: one transaction with the unique
//! `(site, seq)` row). It must not touch storage, the network or the clock:
//! the arrival time is a parameter.
//!
//! The rules, each a unit test below:
//!
//! * **Exactly once**: a batch whose sequence number the site already
//!   applied changes nothing ([`ApplyPlan::Duplicate`]). Otherwise its
//!   number joins the site's applied set (contiguous prefix + the numbers
//!   above it, so batches may arrive in any order). That set holds at
//!   most [`MAX_APPLIED_ABOVE`](crate::model::MAX_APPLIED_ABOVE) numbers
//!   above the prefix: one more expires the oldest gap (its numbers are
//!   dead-lettered as `gap_expired`, see [`SiteRecord::expire_gap`]).
//! * **Dead letters**: a batch refused for good is recorded on the site
//!   ([`dead_letter`]) and its number joins the applied set like an applied
//!   one, so the batches after it still fold into the prefix.
//! * **Device snapshots**: the newest `as_of_ms` wins (an equal one applies).
//!   A device's customer is its site's (from the site's enrollment, not
//!   from the batch): a snapshot claiming another customer is not believed,
//!   only counted ([`Changes::customer_mismatches`]). A device first seen in
//!   rollups starts `pending`. A revoked device's
//!   status is `revoked`, whatever its connection status was; its
//!   `last_seen_ms` is the snapshot's (the appliance resends a snapshot
//!   when last-seen moved by more than its bound, so it does not freeze at
//!   the last status change).
//! * **Device IPs and tags** (batch format 6) go with the snapshot: when
//!   a device's snapshot wins, its stored IPs and tags become the batch's
//!   entry for it, or none when the batch has no entry (a site sends an
//!   entry only for a device with an address or a tag); a snapshot that
//!   loses leaves them as stored ([`Changes::facts`]). Entries for a
//!   device without a snapshot in the batch are ignored and counted
//!   ([`Changes::device_facts_ignored`]).
//! * **Rollups**: a series new to its (device, bucket) row is stored and
//!   counted new (and in the device's `rollups_stored`); a stored series is
//!   replaced only by a newer `computed_ms` (counted replaced), never by an
//!   equal or older one. The device's latest rollup of a series follows the
//!   newest bucket stored or replaced.
//! * **Alerts**: transitions are ordered by `(at_ms, state)` with pending <
//!   firing < resolved = cleared (an alert ends one way or the other); an
//!   alert row shows its latest transition, counts every transition
//!   applied and keeps the earliest `at_ms` as `first_ms`. A pending alert
//!   that never fired ends `cleared`, never `resolved`.
//!   Transitions of one alert within one batch fold in batch order, as if
//!   each came in its own batch.
//! * **Patch compliance** and **patch findings** (missing patches and
//!   CVEs): one row each per device (the site's customer), the newest
//!   `as_of_ms` wins (an equal one applies); entries of one device within
//!   one batch fold in batch order. (A backend derives its CVE index from
//!   the findings rows it replaces and writes.)
//! * **Site**: `last_batch_ms` is the arrival time, `last_batch_created_ms`
//!   the newest creation time seen, `batches_applied` and `dropped_rollups`
//!   add up.
//! * **Tenant mismatch**: the devices a batch reports enrolled under
//!   another tenant replace the site's report when the batch is at least
//!   as new (`created_ms`) as the report; every device more than the site
//!   reported before, per tenant, is counted new
//!   ([`Changes::tenant_mismatches_new`]). The rows keep central's tenant.

use std::borrow::Cow;
use std::collections::HashMap;

use outpost_proto::DeviceId;
use outpost_uplink::batch::SiteBatch;

use crate::model::{
    AlertRow, AlertState, BucketRow, BucketSeries, DeadLetter, DeviceFacts, DeviceRow,
    DeviceStatus, ForeignTenantRow, LatestRollup, PatchComplianceRow, PatchFindingsRow, SiteRecord,
    TenantMismatch,
};
use crate::store::{AlertHistoryEntry, ApplyOutcome, FleetDelta};

/// Which stored rows a batch touches: what a backend reads before [`plan`].
/// Each list holds distinct entries in order of first appearance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Touched {
    /// Devices, by their stored id (the appliance's device id in hex):
    /// those of the snapshots, then those only in rollups.
    pub devices: Vec<String>,
    /// Rollup rows: (index into `devices`, bucket start).
    pub buckets: Vec<(usize, u64)>,
    /// Alert ids.
    pub alerts: Vec<u64>,
    /// Devices of the patch compliance entries (stored ids), distinct.
    pub patches: Vec<String>,
    /// Devices of the patch findings entries (stored ids), distinct.
    pub findings: Vec<String>,
    /// Per snapshot of the batch: its index into `devices`.
    device_of_update: Vec<usize>,
    /// Per rollup entry of the batch: (index into `devices`, into `buckets`).
    row_of_rollups: Vec<(usize, usize)>,
    /// Per alert transition of the batch: its index into `alerts`.
    alert_of_transition: Vec<usize>,
    /// Per patch compliance entry of the batch: its index into `patches`.
    patch_of_entry: Vec<usize>,
    /// Per patch findings entry of the batch: its index into `findings`.
    findings_of_entry: Vec<usize>,
}

impl Touched {
    /// The rows `batch` touches (one pass, one id string per device).
    pub fn of(batch: &SiteBatch) -> Touched {
        let mut t = Touched {
            device_of_update: Vec::with_capacity(batch.devices.len()),
            row_of_rollups: Vec::with_capacity(batch.rollups.len()),
            buckets: Vec::with_capacity(batch.rollups.len()),
            alert_of_transition: Vec::with_capacity(batch.alerts.len()),
            ..Touched::default()
        };
        let mut devices: HashMap<DeviceId, usize> = HashMap::new();
        let mut device = |t: &mut Touched, id: DeviceId| {
            *devices.entry(id).or_insert_with(|| {
                t.devices.push(id.to_string());
                t.devices.len() - 1
            })
        };
        for u in &batch.devices {
            let d = device(&mut t, u.device);
            t.device_of_update.push(d);
        }
        let mut buckets: HashMap<(usize, u64), usize> = HashMap::with_capacity(batch.rollups.len());
        for dr in &batch.rollups {
            let d = device(&mut t, dr.device);
            let r = *buckets.entry((d, dr.bucket_start_ms)).or_insert_with(|| {
                t.buckets.push((d, dr.bucket_start_ms));
                t.buckets.len() - 1
            });
            t.row_of_rollups.push((d, r));
        }
        let mut alerts: HashMap<u64, usize> = HashMap::new();
        for a in &batch.alerts {
            let i = *alerts.entry(a.alert_id).or_insert_with(|| {
                t.alerts.push(a.alert_id);
                t.alerts.len() - 1
            });
            t.alert_of_transition.push(i);
        }
        let mut patches: HashMap<DeviceId, usize> = HashMap::new();
        for p in &batch.patch_compliance {
            let i = *patches.entry(p.device).or_insert_with(|| {
                t.patches.push(p.device.to_string());
                t.patches.len() - 1
            });
            t.patch_of_entry.push(i);
        }
        let mut findings: HashMap<DeviceId, usize> = HashMap::new();
        for f in &batch.patch_findings {
            let i = *findings.entry(f.device).or_insert_with(|| {
                t.findings.push(f.device.to_string());
                t.findings.len() - 1
            });
            t.findings_of_entry.push(i);
        }
        t
    }

    /// True when this was computed from `batch` (same shape).
    fn matches(&self, batch: &SiteBatch) -> bool {
        self.device_of_update.len() == batch.devices.len()
            && self.row_of_rollups.len() == batch.rollups.len()
            && self.alert_of_transition.len() == batch.alerts.len()
            && self.patch_of_entry.len() == batch.patch_compliance.len()
            && self.findings_of_entry.len() == batch.patch_findings.len()
    }
}

/// The stored rows a batch touches, as the backend read them: each list
/// aligned with the same list of [`CurrentRows::touched`], `None` where no
/// row is stored. Taken by value: [`plan`] updates the rows in place.
#[derive(Debug, Clone)]
pub struct CurrentRows {
    pub touched: Touched,
    pub site: SiteRecord,
    pub devices: Vec<Option<DeviceRow>>,
    pub buckets: Vec<Option<BucketRow<'static>>>,
    pub alerts: Vec<Option<AlertRow>>,
    pub patches: Vec<Option<PatchComplianceRow>>,
    pub findings: Vec<Option<PatchFindingsRow>>,
}

impl CurrentRows {
    /// No stored row yet besides the site (a site's first batch).
    pub fn empty(site: SiteRecord, batch: &SiteBatch) -> CurrentRows {
        let touched = Touched::of(batch);
        CurrentRows {
            devices: vec![None; touched.devices.len()],
            buckets: vec![None; touched.buckets.len()],
            alerts: vec![None; touched.alerts.len()],
            patches: vec![None; touched.patches.len()],
            findings: vec![None; touched.findings.len()],
            touched,
            site,
        }
    }
}

/// What applying a batch does.
// One plan per batch, matched at once: boxing `Changes` would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyPlan<'b> {
    /// Already applied: write nothing, acknowledge.
    Duplicate,
    /// Write these rows, all together.
    Apply(Changes<'b>),
}

/// The rows to write, aligned with the lists of the [`Touched`] the plan
/// was made from. Stored rollup rows borrow series names from the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Changes<'b> {
    /// The site with the batch marked applied.
    pub site: SiteRecord,
    /// Every touched device.
    pub devices: Vec<DeviceRow>,
    /// Aligned with `devices`: the IPs and tags to store where the
    /// device's snapshot in the batch won (empty: delete what is stored),
    /// `None` where they stay as stored.
    pub facts: Vec<Option<DeviceFacts>>,
    /// Rollup rows: `Some` where the batch changed the row, `None` where it
    /// left the row as stored (nothing to write).
    pub buckets: Vec<Option<BucketRow<'b>>>,
    /// Every touched alert.
    pub alerts: Vec<AlertRow>,
    /// Patch compliance rows: `Some` where the batch changed the row,
    /// `None` where the stored one is newer (nothing to write).
    pub patches: Vec<Option<PatchComplianceRow>>,
    /// Patch findings rows: `Some` where the batch changed the row, `None`
    /// where the stored one is newer (nothing to write).
    pub findings: Vec<Option<PatchFindingsRow>>,
    pub rollups_new: u64,
    pub rollups_replaced: u64,
    /// Devices reported under another tenant beyond the site's previous
    /// report (see the module docs).
    pub tenant_mismatches_new: u64,
    /// Device snapshots of the batch claiming a customer other than the
    /// site's (not believed: the device stays the site's customer's).
    pub customer_mismatches: u64,
    /// IP and tag entries of the batch for a device without a snapshot in
    /// it (ignored: a site sends them only with a snapshot).
    pub device_facts_ignored: u64,
    /// Gaps of the applied set that expired to make room for this batch.
    pub gaps_expired: Vec<DeadLetter>,
    /// Per touched device, its status before the batch (`None`: new).
    pub status_before: Vec<Option<DeviceStatus>>,
    /// Per touched alert, its state before the batch (`None`: new).
    pub state_before: Vec<Option<AlertState>>,
    /// Lines to append to alerts' histories: (alert id, its transition
    /// number, the transition). Numbers are unique per alert (the row's
    /// transition count), so a history row is written once.
    pub alert_history: Vec<(u64, u32, AlertHistoryEntry)>,
    /// Status changes to append to devices' histories: (index into
    /// `devices`, since, status).
    pub status_history: Vec<(usize, u64, DeviceStatus)>,
}

impl Changes<'_> {
    pub fn outcome(&self) -> ApplyOutcome {
        ApplyOutcome::Applied {
            rollups_new: self.rollups_new,
            rollups_replaced: self.rollups_replaced,
            tenant_mismatches_new: self.tenant_mismatches_new,
            customer_mismatches: self.customer_mismatches,
            device_facts_ignored: self.device_facts_ignored,
            gaps_expired: self.gaps_expired.len() as u64,
        }
    }
}

/// What recording a dead letter does ([`dead_letter`]).
#[derive(Debug, Clone, PartialEq)]
pub enum DeadLetterPlan {
    /// Store the site (its applied set closes over the batch's number),
    /// and these gaps expired to make room.
    Record(Box<SiteRecord>, Vec<DeadLetter>),
    /// The number is already in the applied set (applied, or
    /// dead-lettered before): write nothing.
    AlreadyClosed,
}

/// Records `letter` on `site`: the batch is refused for good, its number
/// joins the applied set (expiring the oldest gap if the set is full), the
/// newest dead letters are kept.
pub fn dead_letter(mut site: SiteRecord, letter: DeadLetter) -> DeadLetterPlan {
    if site.is_applied(letter.seq) {
        return DeadLetterPlan::AlreadyClosed;
    }
    let expired = site.make_room(letter.seq, letter.at_ms);
    site.mark_applied(letter.seq);
    site.dead_letters.push(letter);
    DeadLetterPlan::Record(Box::new(site), expired)
}

/// The rows read do not belong to the batch (a backend bug).
#[derive(Debug, thiserror::Error)]
#[error("the rows read for batch {seq} do not match it ({what})")]
pub struct OutOfStep {
    pub seq: u64,
    pub what: &'static str,
}

/// True when `site` already applied `batch` (a backend may check this
/// before reading the other rows; [`plan`] checks it too).
pub fn is_duplicate(site: &SiteRecord, batch: &SiteBatch) -> bool {
    site.is_applied(batch.seq)
}

/// Order of alert states at the same `at_ms`.
fn rank(s: AlertState) -> u8 {
    match s {
        AlertState::Pending => 0,
        AlertState::Firing => 1,
        AlertState::Resolved | AlertState::Cleared => 2,
    }
}

/// Applies the rules of the module docs to `current`, for `batch` arrived
/// at `received_ms`.
pub fn plan<'b>(
    current: CurrentRows,
    batch: &'b SiteBatch,
    received_ms: u64,
) -> Result<ApplyPlan<'b>, OutOfStep> {
    let CurrentRows {
        touched,
        mut site,
        devices,
        buckets,
        alerts,
        patches,
        findings,
    } = current;
    if is_duplicate(&site, batch) {
        return Ok(ApplyPlan::Duplicate);
    }
    let gaps_expired = site.make_room(batch.seq, received_ms);
    let out_of_step = |what| OutOfStep {
        seq: batch.seq,
        what,
    };
    if !touched.matches(batch) {
        return Err(out_of_step("touched rows of another batch"));
    }
    if devices.len() != touched.devices.len()
        || buckets.len() != touched.buckets.len()
        || alerts.len() != touched.alerts.len()
        || patches.len() != touched.patches.len()
        || findings.len() != touched.findings.len()
    {
        return Err(out_of_step("row count"));
    }

    let status_before: Vec<Option<DeviceStatus>> = devices
        .iter()
        .map(|d| {
            d.as_ref().map(|d| match d.revoked {
                true => DeviceStatus::Revoked,
                false => d.status,
            })
        })
        .collect();
    let mut devices: Vec<DeviceRow> = devices
        .into_iter()
        .zip(&touched.devices)
        .map(|(row, id)| row.map_or_else(|| new_device(&site, id), DeviceRow::upgraded))
        .collect();
    let mut status_history = Vec::new();
    // The site's customer, whatever a row stored before said.
    for row in &mut devices {
        if row.customer != site.customer {
            row.customer = site.customer.clone();
        }
    }
    let mut customer_mismatches = 0;
    let mut facts: Vec<Option<DeviceFacts>> = vec![None; devices.len()];
    let facts_of: HashMap<outpost_proto::DeviceId, &outpost_uplink::batch::DeviceIpsTags> =
        batch.device_facts.iter().map(|f| (f.device, f)).collect();
    let device_facts_ignored = {
        let with_snapshot: std::collections::HashSet<outpost_proto::DeviceId> =
            batch.devices.iter().map(|u| u.device).collect();
        batch
            .device_facts
            .iter()
            .filter(|f| !with_snapshot.contains(&f.device))
            .count() as u64
    };
    for (u, &d) in batch.devices.iter().zip(&touched.device_of_update) {
        let row = devices
            .get_mut(d)
            .ok_or_else(|| out_of_step("device index"))?;
        if !u.customer.is_empty() && u.customer != site.customer {
            customer_mismatches += 1;
        }
        if row.as_of_ms > u.as_of_ms {
            continue;
        }
        row.hostname = u.hostname.clone();
        row.os = u.os.clone();
        row.agent_version = u.agent_version.clone();
        row.enrolled_at_ms = u.enrolled_at_ms;
        row.revoked = u.revoked;
        let status = if u.revoked {
            DeviceStatus::Revoked
        } else {
            u.status.into()
        };
        if status != row.status || u.status_since_ms != row.status_since_ms {
            status_history.push((d, u.status_since_ms, status));
        }
        row.status = status;
        row.status_since_ms = u.status_since_ms;
        row.last_seen_ms = u.last_seen_ms;
        row.as_of_ms = u.as_of_ms;
        if let Some(slot) = facts.get_mut(d) {
            *slot = Some(
                facts_of
                    .get(&u.device)
                    .map_or_else(DeviceFacts::default, |f| DeviceFacts {
                        ips: f.ips.clone(),
                        tags: f.tags.clone(),
                    }),
            );
        }
    }

    let (mut new, mut replaced) = (0u64, 0u64);
    let mut rows: Vec<Option<BucketRow<'b>>> = buckets;
    let mut dirty = vec![false; rows.len()];
    for (dr, &(d, r)) in batch.rollups.iter().zip(&touched.row_of_rollups) {
        let (Some(dev_row), Some(slot), Some(dirty)) =
            (devices.get_mut(d), rows.get_mut(r), dirty.get_mut(r))
        else {
            return Err(out_of_step("rollup row index"));
        };
        let row = slot.get_or_insert_with(BucketRow::default);
        for (i, sr) in dr.series.iter().enumerate() {
            let entry = BucketSeries {
                name: Cow::Borrowed(&sr.name),
                label: Cow::Borrowed(&sr.label),
                computed_ms: dr.computed_ms,
                rollup: sr.rollup.into(),
            };
            match row.position(&sr.name, &sr.label, i) {
                None => {
                    new += 1;
                    dev_row.rollups_stored += 1;
                    row.series.push(entry);
                }
                Some(p) if row.series[p].computed_ms < dr.computed_ms => {
                    replaced += 1;
                    row.series[p] = entry;
                }
                Some(_) => continue,
            }
            *dirty = true;
            // Batches list a device's series in the same order: try `i` first.
            let latest = dev_row
                .latest
                .get(i)
                .filter(|l| l.series == sr.name && l.label == sr.label)
                .map(|_| i)
                .or_else(|| {
                    dev_row
                        .latest
                        .iter()
                        .position(|l| l.series == sr.name && l.label == sr.label)
                });
            match latest.and_then(|p| dev_row.latest.get_mut(p)) {
                Some(l) if l.bucket_start_ms <= dr.bucket_start_ms => {
                    l.bucket_start_ms = dr.bucket_start_ms;
                    l.rollup = sr.rollup.into();
                }
                Some(_) => {}
                None => dev_row.latest.push(LatestRollup {
                    series: sr.name.clone(),
                    label: sr.label.clone(),
                    bucket_start_ms: dr.bucket_start_ms,
                    rollup: sr.rollup.into(),
                }),
            }
        }
    }
    for (row, dirty) in rows.iter_mut().zip(dirty) {
        if !dirty {
            *row = None;
        }
    }

    let mut alert_rows: Vec<Option<AlertRow>> = alerts;
    let state_before: Vec<Option<AlertState>> = alert_rows
        .iter()
        .map(|a| a.as_ref().map(|a| a.state))
        .collect();
    let mut alert_history = Vec::with_capacity(batch.alerts.len());
    for (a, &i) in batch.alerts.iter().zip(&touched.alert_of_transition) {
        let slot = alert_rows
            .get_mut(i)
            .ok_or_else(|| out_of_step("alert index"))?;
        let state = AlertState::from(a.state);
        let number = slot.as_ref().map_or(1, |e| e.transitions.saturating_add(1));
        alert_history.push((
            a.alert_id,
            number,
            AlertHistoryEntry::Transition {
                at_ms: a.at_ms,
                state,
                message: a.message.clone(),
                value: a.value,
            },
        ));
        match slot {
            Some(e) => {
                e.transitions += 1;
                if (a.at_ms, rank(state)) >= (e.at_ms, rank(e.state)) {
                    e.state = state;
                    e.at_ms = a.at_ms;
                    e.message = a.message.clone();
                    e.value = a.value;
                    e.severity = a.severity;
                }
                e.first_ms = e.first_ms.min(a.at_ms);
            }
            None => {
                *slot = Some(AlertRow {
                    tenant: site.tenant.clone(),
                    site_id: site.site_id.clone(),
                    customer: site.customer.clone(),
                    alert_id: a.alert_id,
                    device: a.device.map(|d| d.to_string()),
                    rule: a.rule.clone(),
                    severity: a.severity,
                    state,
                    at_ms: a.at_ms,
                    first_ms: a.at_ms,
                    message: a.message.clone(),
                    value: a.value,
                    transitions: 1,
                    acked_by: None,
                    acked_ms: 0,
                })
            }
        }
    }
    // Every touched alert has at least one transition, hence a row.
    let alerts: Vec<AlertRow> = alert_rows.into_iter().flatten().collect();
    if alerts.len() != touched.alerts.len() {
        return Err(out_of_step("alert without a transition"));
    }

    let mut patch_rows = patches;
    let mut patch_dirty = vec![false; patch_rows.len()];
    for (p, &i) in batch.patch_compliance.iter().zip(&touched.patch_of_entry) {
        let (Some(slot), Some(dirty)) = (patch_rows.get_mut(i), patch_dirty.get_mut(i)) else {
            return Err(out_of_step("patch compliance index"));
        };
        if slot.as_ref().is_some_and(|r| r.as_of_ms > p.as_of_ms) {
            continue;
        }
        *slot = Some(PatchComplianceRow::from_batch(&site, p));
        *dirty = true;
    }
    for (row, dirty) in patch_rows.iter_mut().zip(patch_dirty) {
        if !dirty {
            *row = None;
        }
    }
    let mut finding_rows = findings;
    let mut finding_dirty = vec![false; finding_rows.len()];
    for (f, &i) in batch.patch_findings.iter().zip(&touched.findings_of_entry) {
        let (Some(slot), Some(dirty)) = (finding_rows.get_mut(i), finding_dirty.get_mut(i)) else {
            return Err(out_of_step("patch findings index"));
        };
        if slot.as_ref().is_some_and(|r| r.as_of_ms > f.as_of_ms) {
            continue;
        }
        *slot = Some(PatchFindingsRow::from_batch(&site, f));
        *dirty = true;
    }
    for (row, dirty) in finding_rows.iter_mut().zip(finding_dirty) {
        if !dirty {
            *row = None;
        }
    }

    let mut tenant_mismatches_new = 0;
    if batch.created_ms >= site.tenant_mismatch.as_of_ms {
        let before = &site.tenant_mismatch.tenants;
        let now: Vec<ForeignTenantRow> = batch.foreign_tenants.iter().map(Into::into).collect();
        for t in &now {
            let had = before
                .iter()
                .find(|b| b.tenant == t.tenant)
                .map_or(0, |b| b.devices);
            tenant_mismatches_new += t.devices.saturating_sub(had);
        }
        site.tenant_mismatch = TenantMismatch {
            as_of_ms: batch.created_ms,
            tenants: now,
        };
    }

    site.mark_applied(batch.seq);
    site.last_batch_ms = received_ms;
    site.last_batch_created_ms = site.last_batch_created_ms.max(batch.created_ms);
    site.batches_applied += 1;
    site.dropped_rollups += batch.dropped_rollups;
    Ok(ApplyPlan::Apply(Changes {
        site,
        devices,
        facts,
        buckets: rows,
        alerts,
        patches: patch_rows,
        findings: finding_rows,
        rollups_new: new,
        rollups_replaced: replaced,
        tenant_mismatches_new,
        customer_mismatches,
        device_facts_ignored,
        gaps_expired,
        status_before,
        state_before,
        alert_history,
        status_history,
    }))
}

/// What a planned batch changes for live viewers: devices whose status
/// changed or that are new, and every alert it moved (a transition that
/// lost to a newer stored one still counts: the alert was touched).
pub fn delta(c: &Changes) -> FleetDelta {
    let devices: Vec<(DeviceRow, Option<DeviceStatus>)> = c
        .devices
        .iter()
        .zip(&c.status_before)
        .filter(|(d, before)| **before != Some(d.status))
        .map(|(d, before)| (d.clone(), *before))
        .collect();
    let alerts = c
        .alerts
        .iter()
        .zip(&c.state_before)
        .map(|(a, before)| {
            let host = a.device.as_ref().and_then(|id| {
                c.devices
                    .iter()
                    .find(|d| &d.device == id && !d.hostname.is_empty())
                    .map(|d| d.hostname.clone())
            });
            (a.clone(), *before, host)
        })
        .collect();
    FleetDelta {
        site_name: c.site.name.clone(),
        devices,
        alerts,
    }
}

/// The row of a device central has not seen yet.
fn new_device(site: &SiteRecord, device: &str) -> DeviceRow {
    DeviceRow {
        tenant: site.tenant.clone(),
        site_id: site.site_id.clone(),
        device: device.to_string(),
        customer: site.customer.clone(),
        hostname: String::new(),
        os: String::new(),
        agent_version: String::new(),
        enrolled_at_ms: 0,
        revoked: false,
        status: DeviceStatus::Pending,
        status_since_ms: 0,
        last_seen_ms: 0,
        as_of_ms: 0,
        rollups_stored: 0,
        latest: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use outpost_uplink::batch::{self, AlertTransition, DeviceRollups, SeriesRollup, Severity};

    use super::*;
    use crate::testing::{rollup, sample_batch};

    const BUCKET: u64 = 1_700_000_000_000 - 1_700_000_000_000 % 300_000;
    const DEV: &str = "000000000000002a";

    fn site() -> SiteRecord {
        SiteRecord {
            joined_ms: 2,
            interval_ms: 60_000,
            ..SiteRecord::new(
                "msp".into(),
                "dental".into(),
                "s-1".into(),
                "main".into(),
                1,
            )
        }
    }

    /// A batch of `seq` with nothing in it.
    fn bare(seq: u64) -> SiteBatch {
        SiteBatch {
            devices: vec![],
            rollups: vec![],
            alerts: vec![],
            ..sample_batch(seq)
        }
    }

    fn changes<'b>(p: ApplyPlan<'b>) -> Changes<'b> {
        match p {
            ApplyPlan::Apply(c) => c,
            ApplyPlan::Duplicate => panic!("expected changes, got a duplicate"),
        }
    }

    /// The rows of one site, as a minimal backend keeps them: reads what
    /// [`Touched`] names, applies the plan, writes every change.
    #[derive(Debug, Clone, PartialEq)]
    struct Memory {
        site: SiteRecord,
        devices: HashMap<String, DeviceRow>,
        buckets: HashMap<(String, u64), BucketRow<'static>>,
        alerts: HashMap<u64, AlertRow>,
        patches: HashMap<String, PatchComplianceRow>,
        findings: HashMap<String, PatchFindingsRow>,
        facts: HashMap<String, DeviceFacts>,
    }

    impl Memory {
        fn new() -> Memory {
            Memory {
                site: site(),
                devices: HashMap::new(),
                buckets: HashMap::new(),
                alerts: HashMap::new(),
                patches: HashMap::new(),
                findings: HashMap::new(),
                facts: HashMap::new(),
            }
        }

        fn read(&self, b: &SiteBatch) -> CurrentRows {
            let touched = Touched::of(b);
            CurrentRows {
                site: self.site.clone(),
                devices: touched
                    .devices
                    .iter()
                    .map(|d| self.devices.get(d).cloned())
                    .collect(),
                buckets: touched
                    .buckets
                    .iter()
                    .map(|(d, t)| {
                        self.buckets
                            .get(&(touched.devices[*d].clone(), *t))
                            .cloned()
                    })
                    .collect(),
                alerts: touched
                    .alerts
                    .iter()
                    .map(|a| self.alerts.get(a).cloned())
                    .collect(),
                patches: touched
                    .patches
                    .iter()
                    .map(|d| self.patches.get(d).cloned())
                    .collect(),
                findings: touched
                    .findings
                    .iter()
                    .map(|d| self.findings.get(d).cloned())
                    .collect(),
                touched,
            }
        }

        fn apply(&mut self, b: &SiteBatch, received_ms: u64) -> ApplyOutcome {
            let touched = Touched::of(b);
            let c = match plan(self.read(b), b, received_ms).unwrap() {
                ApplyPlan::Duplicate => return ApplyOutcome::Duplicate,
                ApplyPlan::Apply(c) => c,
            };
            let outcome = c.outcome();
            self.site = c.site;
            for (id, row) in touched.devices.iter().zip(c.devices) {
                self.devices.insert(id.clone(), row);
            }
            for (id, f) in touched.devices.iter().zip(c.facts) {
                match f {
                    Some(f) if f.is_empty() => {
                        self.facts.remove(id);
                    }
                    Some(f) => {
                        self.facts.insert(id.clone(), f);
                    }
                    None => {}
                }
            }
            for ((d, t), row) in touched.buckets.iter().zip(c.buckets) {
                if let Some(row) = row {
                    let owned = BucketRow {
                        series: row
                            .series
                            .into_iter()
                            .map(|s| BucketSeries {
                                name: Cow::Owned(s.name.into_owned()),
                                label: Cow::Owned(s.label.into_owned()),
                                ..s
                            })
                            .collect(),
                    };
                    self.buckets
                        .insert((touched.devices[*d].clone(), *t), owned);
                }
            }
            for (id, row) in touched.alerts.iter().zip(c.alerts) {
                self.alerts.insert(*id, row);
            }
            for (id, row) in touched.patches.iter().zip(c.patches) {
                if let Some(row) = row {
                    self.patches.insert(id.clone(), row);
                }
            }
            for (id, row) in touched.findings.iter().zip(c.findings) {
                if let Some(row) = row {
                    self.findings.insert(id.clone(), row);
                }
            }
            outcome
        }
    }

    fn findings(device: u64, patches: usize, as_of_ms: u64) -> batch::PatchFindings {
        let mut f = outpost_uplink::batch::PatchFindings {
            device: DeviceId(device),
            as_of_ms,
            patches: vec![],
            vulns: vec![],
        };
        for i in 0..patches {
            f.patches.push(batch::MissingPatchEntry {
                source: format!("pkg-{i}"),
                installed: "1.0-1".into(),
                candidate: Some("1.0-2".into()),
                binaries: 1,
                security: true,
                severity: Some(batch::FindingSeverity::High),
                cves: vec![format!("CVE-2026-{i}")],
                reboot_expected: false,
                first_seen_ms: 1,
            });
            f.vulns.push(batch::VulnGroup {
                source: format!("pkg-{i}"),
                installed: "1.0-1".into(),
                fixed: Some("1.0-2".into()),
                fix_available: true,
                severity: batch::FindingSeverity::High,
                cves: vec![format!("CVE-2026-{i}")],
            });
        }
        f
    }

    #[test]
    fn patch_findings_keep_the_newest_assessment_in_any_order_and_applies_once() {
        let mut older = bare(1);
        older.patch_findings = vec![findings(42, 5, 100)];
        let mut newer = bare(2);
        newer.patch_findings = vec![findings(42, 2, 200), findings(43, 1, 150)];
        let mut in_order = Memory::new();
        in_order.apply(&older, 10);
        in_order.apply(&newer, 11);
        let mut reversed = Memory::new();
        reversed.apply(&newer, 10);
        reversed.apply(&older, 11);
        assert_eq!(in_order.findings, reversed.findings);
        let row = &in_order.findings[&DeviceId(42).to_string()];
        assert_eq!((row.patches.len(), row.as_of_ms), (2, 200));
        assert_eq!(row.customer, site().customer, "the site's customer");
        assert_eq!(row.cve_hits().len(), 2);
        assert_eq!(in_order.apply(&newer, 12), ApplyOutcome::Duplicate);
        // An older entry for a stored device writes nothing.
        let mut stale = bare(3);
        stale.patch_findings = vec![findings(42, 9, 150)];
        let c = changes(plan(in_order.read(&stale), &stale, 13).unwrap());
        assert_eq!(c.findings, vec![None]);
    }

    fn compliance(device: u64, missing: u32, as_of_ms: u64) -> batch::PatchCompliance {
        batch::PatchCompliance {
            device: DeviceId(device),
            missing,
            missing_critical: 1,
            installed_pending_reboot: 1,
            as_of_ms,
            detail: Some(batch::PatchDetail {
                compliance: batch::ComplianceState::NonCompliant,
                security_patches: batch::PatchSeverityCounts {
                    critical: 1,
                    high: 2,
                    ..Default::default()
                },
                fixable_cves: 4,
                open_cves: 1,
                risk: Some(70),
                scanned_at_ms: as_of_ms - 1,
                reboot_required: true,
            }),
        }
    }

    #[test]
    fn patch_compliance_keeps_the_newest_assessment_in_any_order_and_applies_once() {
        let mut older = bare(1);
        older.patch_compliance = vec![compliance(42, 5, 100)];
        let mut newer = bare(2);
        newer.patch_compliance = vec![compliance(42, 2, 200), compliance(43, 1, 150)];
        let mut in_order = Memory::new();
        in_order.apply(&older, 10);
        in_order.apply(&newer, 11);
        let mut reversed = Memory::new();
        reversed.apply(&newer, 10);
        reversed.apply(&older, 11);
        assert_eq!(in_order.patches, reversed.patches);
        let row = &in_order.patches[&DeviceId(42).to_string()];
        assert_eq!((row.missing, row.as_of_ms), (2, 200));
        assert_eq!(row.customer, site().customer, "the site's customer");
        assert_eq!(row.compliance, Some(batch::ComplianceState::NonCompliant));
        assert_eq!(row.security_patches.high, 2);
        assert_eq!(
            (row.risk, row.last_scan_ms, row.reboot_required),
            (Some(70), 199, true)
        );
        assert_eq!(in_order.patches.len(), 2);
        // A replayed batch changes nothing.
        let before = in_order.clone();
        assert_eq!(in_order.apply(&older, 12), ApplyOutcome::Duplicate);
        assert_eq!(in_order, before);
        // An older entry than the stored one writes nothing.
        let mut stale = bare(3);
        stale.patch_compliance = vec![compliance(42, 9, 150)];
        let c = changes(plan(in_order.read(&stale), &stale, 13).unwrap());
        assert_eq!(c.patches, vec![None]);
    }

    #[test]
    fn a_summary_without_detail_is_stored_with_unknown_compliance() {
        let mut b = bare(1);
        let mut p = compliance(42, 3, 100);
        p.detail = None;
        b.patch_compliance = vec![p];
        let mut m = Memory::new();
        m.apply(&b, 10);
        let row = &m.patches[&DeviceId(42).to_string()];
        assert_eq!(row.compliance, None);
        assert_eq!((row.missing, row.security_patches.critical), (3, 1));
        assert!(row.reboot_required);
    }

    #[test]
    fn touched_rows_are_distinct_and_each_entry_knows_its_row() {
        let mut b = sample_batch(1);
        let mut other_bucket = b.rollups[0].clone();
        other_bucket.bucket_start_ms += 300_000;
        let mut other_device = b.rollups[0].clone();
        other_device.device = DeviceId(7);
        b.rollups = vec![
            b.rollups[0].clone(),
            other_bucket,
            b.rollups[0].clone(),
            other_device,
        ];
        let mut t2 = b.alerts[0].clone();
        t2.state = batch::AlertState::Resolved;
        b.alerts.push(t2);
        let t = Touched::of(&b);
        assert_eq!(t.devices, vec![DEV.to_string(), "0000000000000007".into()]);
        assert_eq!(
            t.buckets,
            vec![(0, BUCKET), (0, BUCKET + 300_000), (1, BUCKET)]
        );
        assert_eq!(t.row_of_rollups, vec![(0, 0), (0, 1), (0, 0), (1, 2)]);
        assert_eq!(t.device_of_update, vec![0]);
        assert_eq!(t.alerts, vec![9]);
        assert_eq!(t.alert_of_transition, vec![0, 0]);
    }

    #[test]
    fn an_applied_sequence_number_is_a_duplicate_and_changes_nothing() {
        let mut s = site();
        s.applied_up_to = 3;
        s.applied_above = vec![5];
        for seq in [1, 3, 5] {
            let b = sample_batch(seq);
            assert!(is_duplicate(&s, &b));
            assert_eq!(
                plan(CurrentRows::empty(s.clone(), &b), &b, 10).unwrap(),
                ApplyPlan::Duplicate,
                "seq {seq}"
            );
        }
        let b = sample_batch(4);
        assert!(!is_duplicate(&s, &b));
        let c = changes(plan(CurrentRows::empty(s, &b), &b, 10).unwrap());
        assert_eq!((c.site.applied_up_to, c.site.applied_above), (5, vec![]));
    }

    #[test]
    fn out_of_order_batches_apply_once_each_and_fold_into_the_applied_set() {
        let mut m = Memory::new();
        let created = |seq: u64, created_ms: u64, dropped: u64| {
            let mut b = bare(seq);
            b.created_ms = created_ms;
            b.dropped_rollups = dropped;
            b
        };
        let (b3, b1, b2) = (created(3, 300, 1), created(1, 100, 2), created(2, 200, 0));
        assert!(matches!(m.apply(&b3, 1_000), ApplyOutcome::Applied { .. }));
        assert_eq!(
            (m.site.applied_up_to, m.site.applied_above.clone()),
            (0, vec![3])
        );
        assert!(matches!(m.apply(&b1, 1_001), ApplyOutcome::Applied { .. }));
        assert_eq!(m.apply(&b3, 1_002), ApplyOutcome::Duplicate);
        assert!(matches!(m.apply(&b2, 1_003), ApplyOutcome::Applied { .. }));
        assert_eq!(m.apply(&b1, 1_004), ApplyOutcome::Duplicate);
        let s = &m.site;
        assert_eq!((s.applied_up_to, s.applied_above.clone()), (3, vec![]));
        assert_eq!(s.batches_applied, 3);
        assert_eq!(
            s.last_batch_ms, 1_003,
            "arrival time of the last applied batch"
        );
        assert_eq!(
            s.last_batch_created_ms, 300,
            "newest creation time, not the last"
        );
        assert_eq!(s.dropped_rollups, 3);
    }

    /// A batch refused for good closes its number like an applied one:
    /// batches after it fold into the prefix; recording it twice (or
    /// recording an applied number) changes nothing.
    #[test]
    fn after_a_dead_lettered_batch_the_next_ones_fold_into_the_prefix() {
        let mut m = Memory::new();
        m.apply(&bare(1), 1);
        let letter = DeadLetter::new(2, "malformed_batch", "bad", 5);
        let DeadLetterPlan::Record(site, expired) = dead_letter(m.site.clone(), letter.clone())
        else {
            panic!("recorded");
        };
        assert!(expired.is_empty());
        m.site = *site;
        assert_eq!(
            dead_letter(m.site.clone(), letter),
            DeadLetterPlan::AlreadyClosed
        );
        assert_eq!(
            dead_letter(m.site.clone(), DeadLetter::new(1, "x", "", 6)),
            DeadLetterPlan::AlreadyClosed,
            "applied"
        );
        for seq in 3..=5 {
            assert!(matches!(
                m.apply(&bare(seq), seq),
                ApplyOutcome::Applied { .. }
            ));
        }
        let s = &m.site;
        assert_eq!((s.applied_up_to, s.applied_above.clone()), (5, vec![]));
        assert_eq!((s.batches_applied, s.dead_letters.total), (4, 1));
        assert_eq!(m.apply(&bare(2), 9), ApplyOutcome::Duplicate, "closed");
        // A full applied set: a batch far ahead expires the oldest gap
        // (6, never received: dead-lettered as gap_expired) and applies.
        m.site.applied_above = (7..7 + crate::model::MAX_APPLIED_ABOVE as u64).collect();
        let o = m.apply(&bare(1_000_000), 10);
        assert!(
            matches!(
                o,
                ApplyOutcome::Applied {
                    gaps_expired: 1,
                    ..
                }
            ),
            "{o:?}"
        );
        assert_eq!(m.site.applied_above, vec![1_000_000]);
        let d = m.site.dead_letters.find(6).expect("the expired gap");
        assert_eq!(
            (d.seq, d.last_seq, d.reason.as_str()),
            (6, 6, "gap_expired")
        );
        assert_eq!(m.apply(&bare(6), 11), ApplyOutcome::Duplicate, "closed");
        // The same for a dead letter far ahead.
        m.site.applied_above =
            (2_000_000..2_000_000 + crate::model::MAX_APPLIED_ABOVE as u64).collect();
        let DeadLetterPlan::Record(site, expired) =
            dead_letter(m.site.clone(), DeadLetter::new(9_000_000, "x", "", 12))
        else {
            panic!("recorded");
        };
        assert_eq!(expired.len(), 1);
        assert!(site.applied_above.len() <= crate::model::MAX_APPLIED_ABOVE);
    }

    #[test]
    fn a_device_snapshot_replaces_an_older_one_never_a_newer_one() {
        let mut m = Memory::new();
        let snap = |seq: u64, as_of_ms: u64, hostname: &str, customer: &str| {
            let mut b = bare(seq);
            let mut u = sample_batch(seq).devices[0].clone();
            u.as_of_ms = as_of_ms;
            u.hostname = hostname.into();
            u.customer = customer.into();
            b.devices = vec![u];
            b
        };
        m.apply(&snap(1, 100, "new", "dental"), 1);
        assert_eq!(m.devices[DEV].hostname, "new");
        assert_eq!(m.devices[DEV].customer, "dental");
        assert_eq!(m.devices[DEV].status, DeviceStatus::Online);
        m.apply(&snap(2, 50, "stale", "clinic"), 2);
        assert_eq!(m.devices[DEV].hostname, "new", "older snapshot ignored");
        m.apply(&snap(3, 100, "same time", ""), 3);
        assert_eq!(
            m.devices[DEV].hostname, "same time",
            "an equal as_of applies"
        );
        assert_eq!(
            m.devices[DEV].customer, "dental",
            "empty customer: the site's"
        );
        m.apply(&snap(4, 200, "newer", "dental"), 4);
        assert_eq!(m.devices[DEV].as_of_ms, 200);
        assert_eq!(m.devices[DEV].hostname, "newer");
    }

    fn facts_of(device: u64, ips: &[&str], tags: &[&str]) -> batch::DeviceIpsTags {
        batch::DeviceIpsTags {
            device: outpost_proto::DeviceId(device),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A device's IPs and tags follow its winning snapshot: an older
    /// snapshot's never overwrite a newer one's, an equal one applies, a
    /// winning snapshot without an entry clears them, and an entry for a
    /// device without a snapshot in the batch is ignored.
    #[test]
    fn device_ips_and_tags_follow_the_winning_snapshot_only() {
        let mut m = Memory::new();
        let snap = |seq: u64, as_of_ms: u64, facts: Vec<batch::DeviceIpsTags>| {
            let mut b = bare(seq);
            let mut u = sample_batch(seq).devices[0].clone();
            u.as_of_ms = as_of_ms;
            b.devices = vec![u];
            b.device_facts = facts;
            b
        };
        let want = |ips: &[&str], tags: &[&str]| DeviceFacts {
            ips: ips.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        };
        m.apply(
            &snap(1, 100, vec![facts_of(42, &["10.0.0.5"], &["web"])]),
            1,
        );
        assert_eq!(m.facts[DEV], want(&["10.0.0.5"], &["web"]));
        m.apply(&snap(2, 50, vec![facts_of(42, &["10.9.9.9"], &["old"])]), 2);
        assert_eq!(
            m.facts[DEV],
            want(&["10.0.0.5"], &["web"]),
            "an older snapshot's facts are ignored"
        );
        m.apply(&snap(3, 100, vec![facts_of(42, &["10.0.0.6"], &["db"])]), 3);
        assert_eq!(
            m.facts[DEV],
            want(&["10.0.0.6"], &["db"]),
            "equal as_of applies"
        );
        // An entry without a snapshot: ignored.
        let mut b = bare(4);
        b.device_facts = vec![facts_of(42, &["1.1.1.1"], &["x"])];
        assert!(matches!(
            m.apply(&b, 4),
            ApplyOutcome::Applied {
                device_facts_ignored: 1,
                ..
            }
        ));
        assert_eq!(m.facts[DEV], want(&["10.0.0.6"], &["db"]));
        // A newer snapshot without an entry: the device has none now.
        m.apply(&snap(5, 200, vec![]), 5);
        assert!(!m.facts.contains_key(DEV), "{:?}", m.facts);
    }

    /// A device's customer is its site's (the site's enrollment): a batch
    /// claiming another customer for it is not believed, only counted,
    /// and a row stored with another customer (before this rule) is
    /// corrected when the batch touches it.
    #[test]
    fn a_device_claiming_another_customer_stays_the_sites_and_is_counted() {
        let mut m = Memory::new();
        let mut b = bare(1);
        let mut u = sample_batch(1).devices[0].clone();
        u.customer = "vet".into();
        b.devices = vec![u.clone()];
        let o = m.apply(&b, 1);
        assert_eq!(m.devices[DEV].customer, "dental", "the site's customer");
        assert!(
            matches!(
                o,
                ApplyOutcome::Applied {
                    customer_mismatches: 1,
                    device_facts_ignored: 0,
                    ..
                }
            ),
            "{o:?}"
        );
        // A row stored with the claimed customer (older central) is put
        // back under the site's by the next batch touching it, even by
        // its rollups alone.
        m.devices.get_mut(DEV).unwrap().customer = "vet".into();
        let o = m.apply(&with_rollups(2, vec![entry(BUCKET, 1, "cpu", 1.0)]), 2);
        assert_eq!(m.devices[DEV].customer, "dental");
        assert!(
            matches!(
                o,
                ApplyOutcome::Applied {
                    customer_mismatches: 0,
                    device_facts_ignored: 0,
                    ..
                }
            ),
            "{o:?}"
        );
        // Alerts carry the site's customer too.
        let mut b = bare(3);
        b.alerts = sample_batch(3).alerts;
        m.apply(&b, 3);
        assert_eq!(m.alerts[&9].customer, "dental");
    }

    /// A snapshot at `as_of_ms` of device 42 with `last_seen_ms`, revoked
    /// or not, in connection status `status`.
    fn seen(
        seq: u64,
        as_of_ms: u64,
        last_seen_ms: u64,
        revoked: bool,
        status: batch::DeviceStatus,
    ) -> SiteBatch {
        let mut u = sample_batch(seq).devices[0].clone();
        (u.as_of_ms, u.last_seen_ms, u.revoked, u.status) =
            (as_of_ms, last_seen_ms, revoked, status);
        SiteBatch {
            devices: vec![u],
            ..bare(seq)
        }
    }

    #[test]
    fn last_seen_follows_the_newest_snapshot_even_without_a_status_change() {
        use batch::DeviceStatus::Online;
        let mut m = Memory::new();
        m.apply(&seen(1, 1_000, 900, false, Online), 1);
        m.apply(&seen(2, 400_000, 390_000, false, Online), 2);
        let d = &m.devices[DEV];
        assert_eq!((d.status, d.last_seen_ms), (DeviceStatus::Online, 390_000));
        // An older snapshot arriving late does not move it back.
        m.apply(&seen(3, 200_000, 190_000, false, Online), 3);
        assert_eq!(m.devices[DEV].last_seen_ms, 390_000);
    }

    #[test]
    fn a_revoked_device_is_revoked_not_offline() {
        use batch::DeviceStatus::{Offline, Online};
        let mut m = Memory::new();
        m.apply(&seen(1, 100, 90, false, Online), 1);
        // Revoked while connected, then its session closed: revoked both times.
        m.apply(&seen(2, 200, 190, true, Online), 2);
        assert_eq!(m.devices[DEV].status, DeviceStatus::Revoked);
        m.apply(&seen(3, 300, 190, true, Offline), 3);
        let d = &m.devices[DEV];
        assert_eq!((d.status, d.revoked), (DeviceStatus::Revoked, true));
        assert_eq!(d.status.as_str(), "revoked");
        // A row stored before revoked had a status of its own (revoked,
        // offline) reads as revoked when a batch touches it.
        let row = m.devices.get_mut(DEV).unwrap();
        row.status = DeviceStatus::Offline;
        m.apply(&with_rollups(4, vec![entry(BUCKET, 1, "cpu", 1.0)]), 4);
        assert_eq!(m.devices[DEV].status, DeviceStatus::Revoked);
    }

    /// A batch created at `created_ms` reporting devices of `tenants`.
    fn reporting(seq: u64, created_ms: u64, tenants: &[(&str, u32)]) -> SiteBatch {
        let mut b = sample_batch(seq);
        b.created_ms = created_ms;
        b.rollups.clear();
        b.alerts.clear();
        b.foreign_tenants = tenants
            .iter()
            .map(|(t, n)| batch::ForeignTenant {
                tenant: (*t).into(),
                devices: *n,
            })
            .collect();
        b
    }

    fn mismatches_new(o: ApplyOutcome) -> u64 {
        match o {
            ApplyOutcome::Applied {
                tenant_mismatches_new,
                ..
            } => tenant_mismatches_new,
            o => panic!("not applied: {o:?}"),
        }
    }

    #[test]
    fn the_newest_tenant_mismatch_report_wins_and_new_devices_are_counted_once() {
        let mut m = Memory::new();
        let shown = |m: &Memory| -> Vec<(String, u64)> {
            m.site
                .tenant_mismatch
                .tenants
                .iter()
                .map(|t| (t.tenant.to_string(), t.devices))
                .collect()
        };
        let n = mismatches_new(m.apply(&reporting(1, 100, &[("acme-msp", 2)]), 1));
        assert_eq!(n, 2);
        assert_eq!(shown(&m), vec![("acme-msp".into(), 2)]);
        assert_eq!(m.site.tenant_mismatch.as_of_ms, 100);
        // The device rows keep central's tenant, the site's.
        assert_eq!(m.devices[DEV].tenant, "msp");
        // The same devices reported again are not counted again; more are.
        let n = mismatches_new(m.apply(&reporting(2, 200, &[("acme-msp", 2)]), 2));
        assert_eq!(n, 0);
        let n = mismatches_new(m.apply(&reporting(3, 300, &[("acme-msp", 3), ("zeta", 1)]), 3));
        assert_eq!(n, 2);
        // An older report arriving late changes nothing.
        let n = mismatches_new(m.apply(&reporting(4, 150, &[]), 4));
        assert_eq!(n, 0);
        assert_eq!(shown(&m), vec![("acme-msp".into(), 3), ("zeta".into(), 1)]);
        // A newer empty report clears it; devices reported again count again.
        m.apply(&reporting(5, 400, &[]), 5);
        assert!(shown(&m).is_empty());
        assert_eq!(m.site.tenant_mismatch.as_of_ms, 400);
        let n = mismatches_new(m.apply(&reporting(6, 500, &[("acme-msp", 1)]), 6));
        assert_eq!(n, 1);
    }

    #[test]
    fn a_device_first_seen_in_rollups_starts_pending_with_the_sites_customer() {
        let mut b = sample_batch(1);
        b.devices.clear();
        b.alerts.clear();
        let c = changes(plan(CurrentRows::empty(site(), &b), &b, 1).unwrap());
        let d = &c.devices[0];
        assert_eq!(
            (d.tenant.as_str(), d.site_id.as_str(), d.device.as_str()),
            ("msp", "s-1", DEV)
        );
        assert_eq!(
            (d.customer.as_str(), d.status),
            ("dental", DeviceStatus::Pending)
        );
        assert_eq!((d.as_of_ms, d.rollups_stored, d.latest.len()), (0, 2, 2));
    }

    /// One series `name` of device 42 in `bucket`, computed at `computed_ms`.
    fn entry(bucket: u64, computed_ms: u64, name: &str, v: f64) -> DeviceRollups {
        DeviceRollups {
            device: DeviceId(42),
            bucket_start_ms: bucket,
            computed_ms,
            series: vec![SeriesRollup {
                name: name.into(),
                label: String::new(),
                rollup: rollup(v),
            }],
        }
    }

    fn with_rollups(seq: u64, rollups: Vec<DeviceRollups>) -> SiteBatch {
        SiteBatch {
            rollups,
            ..bare(seq)
        }
    }

    #[test]
    fn a_stored_rollup_is_replaced_only_by_a_newer_computation() {
        let mut m = Memory::new();
        let b1 = with_rollups(1, vec![entry(BUCKET, 100, "cpu", 1.0)]);
        assert_eq!(
            m.apply(&b1, 1),
            ApplyOutcome::Applied {
                rollups_new: 1,
                rollups_replaced: 0,
                tenant_mismatches_new: 0,
                customer_mismatches: 0,
                device_facts_ignored: 0,
                gaps_expired: 0
            }
        );
        // Older and equal computations: nothing to write for the row.
        for (seq, computed) in [(2, 50), (3, 100)] {
            let b = with_rollups(seq, vec![entry(BUCKET, computed, "cpu", 9.0)]);
            let c = changes(plan(m.read(&b), &b, seq).unwrap());
            assert_eq!((c.rollups_new, c.rollups_replaced), (0, 0));
            assert_eq!(c.buckets, vec![None], "computed {computed}: row unchanged");
            m.apply(&b, seq);
        }
        assert_eq!(m.buckets[&(DEV.into(), BUCKET)].series[0].rollup.min, 1.0);
        // A newer computation of cpu and a series new to the row.
        let b4 = with_rollups(
            4,
            vec![
                entry(BUCKET, 150, "cpu", 5.0),
                entry(BUCKET, 150, "mem", 6.0),
            ],
        );
        assert_eq!(
            m.apply(&b4, 4),
            ApplyOutcome::Applied {
                rollups_new: 1,
                rollups_replaced: 1,
                tenant_mismatches_new: 0,
                customer_mismatches: 0,
                device_facts_ignored: 0,
                gaps_expired: 0
            }
        );
        let row = &m.buckets[&(DEV.into(), BUCKET)];
        let got: Vec<(&str, u64, f64)> = row
            .series
            .iter()
            .map(|s| (s.name.as_ref(), s.computed_ms, s.rollup.min))
            .collect();
        assert_eq!(got, vec![("cpu", 150, 5.0), ("mem", 150, 6.0)]);
        assert_eq!(
            m.devices[DEV].rollups_stored, 2,
            "a replacement is not a new rollup"
        );
    }

    #[test]
    fn the_latest_rollup_of_a_series_follows_the_newest_bucket() {
        let mut m = Memory::new();
        m.apply(
            &with_rollups(1, vec![entry(BUCKET + 300_000, 1, "cpu", 2.0)]),
            1,
        );
        // An older bucket arriving later is stored, but is not the latest.
        m.apply(&with_rollups(2, vec![entry(BUCKET, 1, "cpu", 1.0)]), 2);
        let l = &m.devices[DEV].latest;
        assert_eq!(
            (l.len(), l[0].bucket_start_ms, l[0].rollup.min),
            (1, BUCKET + 300_000, 2.0)
        );
        // A recomputation of the latest bucket updates it.
        m.apply(
            &with_rollups(3, vec![entry(BUCKET + 300_000, 2, "cpu", 3.0)]),
            3,
        );
        assert_eq!(m.devices[DEV].latest[0].rollup.min, 3.0);
        // A newer bucket moves it.
        m.apply(
            &with_rollups(4, vec![entry(BUCKET + 600_000, 1, "cpu", 4.0)]),
            4,
        );
        let l = &m.devices[DEV].latest[0];
        assert_eq!((l.bucket_start_ms, l.rollup.min), (BUCKET + 600_000, 4.0));
        assert_eq!(m.devices[DEV].rollups_stored, 3);
    }

    fn transition(at_ms: u64, state: batch::AlertState, message: &str) -> AlertTransition {
        AlertTransition {
            alert_id: 9,
            device: Some(DeviceId(42)),
            rule: "cpu_high".into(),
            severity: Severity::Critical,
            state,
            at_ms,
            message: message.into(),
            value: Some(97.0),
        }
    }

    fn with_alerts(seq: u64, alerts: Vec<AlertTransition>) -> SiteBatch {
        SiteBatch {
            alerts,
            ..bare(seq)
        }
    }

    #[test]
    fn an_alert_shows_its_latest_transition_by_time_then_state() {
        use batch::AlertState::{Firing, Pending, Resolved};
        let mut m = Memory::new();
        m.apply(&with_alerts(1, vec![transition(10, Firing, "firing")]), 1);
        let a = &m.alerts[&9];
        assert_eq!(
            (a.state, a.at_ms, a.first_ms, a.transitions),
            (AlertState::Firing, 10, 10, 1)
        );
        assert_eq!(
            (a.customer.as_str(), a.device.as_deref()),
            ("dental", Some(DEV))
        );
        // An older transition arriving late: counted, sets first_ms, does
        // not change the state.
        m.apply(&with_alerts(2, vec![transition(5, Pending, "pending")]), 2);
        let a = &m.alerts[&9];
        assert_eq!(
            (
                a.state,
                a.at_ms,
                a.first_ms,
                a.transitions,
                a.message.as_str()
            ),
            (AlertState::Firing, 10, 5, 2, "firing")
        );
        // Same time: a lower state loses, a higher one wins.
        m.apply(
            &with_alerts(3, vec![transition(10, Pending, "pending again")]),
            3,
        );
        assert_eq!(m.alerts[&9].state, AlertState::Firing);
        m.apply(
            &with_alerts(4, vec![transition(10, Resolved, "resolved")]),
            4,
        );
        let a = &m.alerts[&9];
        assert_eq!(
            (a.state, a.message.as_str(), a.transitions),
            (AlertState::Resolved, "resolved", 4)
        );
    }

    #[test]
    fn a_pending_alert_that_never_fired_ends_cleared_not_resolved() {
        use batch::AlertState::{Cleared, Pending};
        let mut m = Memory::new();
        m.apply(&with_alerts(1, vec![transition(10, Pending, "pending")]), 1);
        assert_eq!(m.alerts[&9].state, AlertState::Pending);
        m.apply(&with_alerts(2, vec![transition(20, Cleared, "cleared")]), 2);
        let a = &m.alerts[&9];
        assert_eq!(
            (
                a.state,
                a.at_ms,
                a.first_ms,
                a.transitions,
                a.message.as_str()
            ),
            (AlertState::Cleared, 20, 10, 2, "cleared")
        );
        // Same time: the end wins over the start, in either order.
        let mut together = Memory::new();
        together.apply(
            &with_alerts(
                1,
                vec![
                    transition(30, Cleared, "cleared"),
                    transition(30, Pending, "pending"),
                ],
            ),
            1,
        );
        assert_eq!(together.alerts[&9].state, AlertState::Cleared);
        // Out of order: the late pending transition does not reopen it.
        let mut late = Memory::new();
        late.apply(&with_alerts(2, vec![transition(20, Cleared, "cleared")]), 1);
        late.apply(&with_alerts(1, vec![transition(10, Pending, "pending")]), 2);
        assert_eq!(late.alerts[&9].state, AlertState::Cleared);
        assert_eq!(late.alerts[&9].first_ms, 10);
    }

    /// A batch as an appliance of the previous release wrote it (format 2,
    /// no `cleared`) still applies, and its states mean what they meant.
    #[test]
    fn format_2_batches_from_older_appliances_still_apply() {
        use batch::AlertState::{Firing, Resolved};
        let b = with_alerts(
            1,
            vec![
                transition(10, Firing, "firing"),
                transition(20, Resolved, "resolved"),
            ],
        );
        assert_eq!(batch::format_of(&b), 2, "written as format 2");
        let bytes = batch::encode(&b, 1).unwrap();
        let back = batch::decode(&bytes).unwrap();
        let mut m = Memory::new();
        m.apply(&back, 1);
        assert_eq!(m.alerts[&9].state, AlertState::Resolved);
    }

    #[test]
    fn an_acknowledgement_survives_later_transitions() {
        use batch::AlertState::{Firing, Resolved};
        let mut m = Memory::new();
        m.apply(&with_alerts(1, vec![transition(10, Firing, "firing")]), 1);
        let a = m.alerts.get_mut(&9).unwrap();
        (a.acked_by, a.acked_ms) = (Some("alice".into()), 11);
        m.apply(
            &with_alerts(2, vec![transition(20, Resolved, "resolved")]),
            2,
        );
        let a = &m.alerts[&9];
        assert_eq!((a.acked_by.as_deref(), a.acked_ms), (Some("alice"), 11));
    }

    /// Transitions of one alert in one batch give the same row as the same
    /// transitions in separate batches.
    #[test]
    fn transitions_of_one_alert_in_one_batch_fold_in_order() {
        use batch::AlertState::{Firing, Pending, Resolved};
        let ts = [
            transition(1, Pending, "pending"),
            transition(2, Firing, "firing"),
            transition(3, Resolved, "resolved"),
        ];
        let mut together = Memory::new();
        together.apply(&with_alerts(1, ts.to_vec()), 1);
        let mut apart = Memory::new();
        for (i, t) in ts.iter().enumerate() {
            apart.apply(&with_alerts(i as u64 + 1, vec![t.clone()]), 1);
        }
        let a = &together.alerts[&9];
        assert_eq!(
            (a.state, a.at_ms, a.first_ms, a.transitions),
            (AlertState::Resolved, 3, 1, 3)
        );
        assert_eq!(together.alerts, apart.alerts);
    }

    /// Any order of the same batches stores the same rows.
    #[test]
    fn batches_applied_in_any_order_store_the_same_rows() {
        use batch::AlertState::{Firing, Resolved};
        let mut b1 = sample_batch(1);
        b1.rollups[0].computed_ms = 100;
        let mut b2 = sample_batch(2);
        b2.devices[0].as_of_ms = 50;
        b2.devices[0].hostname = "renamed".into();
        b2.rollups[0].computed_ms = 200;
        b2.rollups[0].series[0].rollup = rollup(50.0);
        b2.rollups.push(entry(BUCKET + 300_000, 200, "cpu", 60.0));
        b2.alerts = vec![transition(20, Resolved, "resolved")];
        let mut b3 = sample_batch(3);
        b3.devices[0].as_of_ms = 10;
        b3.rollups[0].computed_ms = 150;
        b3.alerts = vec![transition(10, Firing, "again")];
        let orders = [[0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0]];
        let batches = [b1, b2, b3];
        let results: Vec<Memory> = orders
            .iter()
            .map(|order| {
                let mut m = Memory::new();
                for &i in order {
                    m.apply(&batches[i], 7);
                }
                m
            })
            .collect();
        for (order, r) in orders.iter().zip(&results).skip(1) {
            assert_eq!(r, &results[0], "order {order:?}");
        }
        let m = &results[0];
        assert_eq!(m.devices[DEV].hostname, "renamed");
        let cpu = &m.buckets[&(DEV.into(), BUCKET)].series[0];
        assert_eq!((cpu.computed_ms, cpu.rollup.min), (200, 50.0));
        assert_eq!(m.alerts[&9].state, AlertState::Resolved);
    }

    #[test]
    fn rows_read_for_another_batch_are_an_error_not_a_wrong_write() {
        let b = sample_batch(1);
        let mut rows = CurrentRows::empty(site(), &b);
        rows.buckets.clear();
        assert!(plan(rows, &b, 1).is_err());
        let other = bare(1);
        let rows = CurrentRows::empty(site(), &other);
        let err = plan(rows, &b, 1).unwrap_err();
        assert!(err.to_string().contains("do not match"), "{err}");
    }
}
