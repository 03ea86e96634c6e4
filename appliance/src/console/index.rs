//! The console's in-memory view of the site's devices ([`DeviceIndex`]):
//! one [`Row`] per enrolled device with what the device list shows, and
//! the open alerts, so a page of the list (search, filters, sort, cursor)
//! and the dashboard's counts never scan the database per request.
//!
//! It is kept current three ways:
//!
//! * the ingest writer's hooks, as they happen: status transitions
//!   ([`DeviceIndex::on_transition`]) and the latest CPU, memory and disk
//!   values of each group commit ([`DeviceIndex::on_samples`]);
//! * the alert engine's observer ([`DeviceIndex::on_alert`]): open alerts
//!   by id, so a change heard twice counts once;
//! * a periodic merge of what only the database knows (new devices,
//!   hostnames, revocations, tags, last-seen times from heartbeats, IP
//!   addresses), read outside the lock by [`Snapshot::read`] and merged by
//!   [`DeviceIndex::merge`]; a status written by a hook after the snapshot
//!   was read is newer and is kept.
//!
//! It owns no table and writes nothing; queries are pure functions of the
//! rows ([`DeviceIndex::query`], [`DeviceIndex::counts`]).

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use outpost_console::backend::{Counts, DeviceQuery, DeviceSort, DeviceView, SeverityCounts};
use outpost_proto::DeviceId;
use outpost_proto::messages::{Inventory, MetricValue};
use outpost_proto::metric_names as m;
use outpost_storage::error::Result;
use outpost_storage::ingest::DEVICE_STATE;
use outpost_storage::model::{DeviceRecord, DeviceState, DeviceStatus, StatusTransition};
use outpost_storage::registry::{DEVICE_TAGS, DEVICES, INVENTORY};
use outpost_storage::{Store, keys};

use crate::alerts::model::{Alert, AlertState, Severity};

/// A device as the list shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: DeviceId,
    pub hostname: String,
    pub customer: String,
    pub os: String,
    pub agent_version: String,
    pub revoked: bool,
    pub status: DeviceStatus,
    pub status_since_ms: u64,
    pub last_seen_ms: u64,
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    /// The latest used percent of each mount point.
    pub disks: Vec<(String, f64)>,
    pub ips: Vec<String>,
    pub tags: Vec<String>,
    /// Lower-case hostname, device id, OS, IPs and tags: what a search
    /// word is matched against.
    haystack: String,
    /// Lower-case hostname (the sort's tie-breaker).
    host_lc: String,
    /// `status_since_ms` of the last status a hook wrote (0: none): a
    /// merged state older than it is not taken.
    hooked_ms: u64,
}

impl Row {
    /// A row of a registry record, with no state yet (`pending`).
    pub fn of_record(r: &DeviceRecord) -> Row {
        let mut row = Row {
            id: r.id,
            hostname: String::new(),
            customer: String::new(),
            os: String::new(),
            agent_version: String::new(),
            revoked: false,
            status: DeviceStatus::Pending,
            status_since_ms: r.enrolled_at_ms,
            last_seen_ms: 0,
            cpu: None,
            memory: None,
            disks: Vec::new(),
            ips: Vec::new(),
            tags: Vec::new(),
            haystack: String::new(),
            host_lc: String::new(),
            hooked_ms: 0,
        };
        row.set_record(r);
        row
    }

    fn set_record(&mut self, r: &DeviceRecord) {
        self.hostname.clone_from(&r.hostname);
        self.customer = r.customer.to_string();
        self.os.clone_from(&r.os);
        self.agent_version.clone_from(&r.agent_version);
        self.revoked = r.revoked_at_ms.is_some();
        self.reindex();
    }

    fn reindex(&mut self) {
        self.host_lc = self.hostname.to_lowercase();
        let mut h = format!("{} {} {}", self.host_lc, self.id, self.os.to_lowercase());
        for ip in &self.ips {
            h.push(' ');
            h.push_str(&ip.to_lowercase());
        }
        for t in &self.tags {
            h.push(' ');
            h.push_str(&t.to_lowercase());
        }
        self.haystack = h;
    }

    /// A state read from the database: its status unless a hook already
    /// recorded a newer one; the later last-seen time.
    fn merge_state(&mut self, s: &DeviceState) {
        if s.status_since_ms >= self.hooked_ms {
            self.status = s.status;
            self.status_since_ms = s.status_since_ms;
        }
        self.last_seen_ms = self.last_seen_ms.max(s.last_seen_ms);
    }

    /// `revoked`, or the online status.
    pub fn status_str(&self) -> &'static str {
        if self.revoked {
            "revoked"
        } else {
            self.status.as_str()
        }
    }

    /// The fullest disk, percent.
    pub fn disk(&self) -> Option<f64> {
        self.disks.iter().map(|d| d.1).reduce(f64::max)
    }

    fn note_value(&mut self, v: &MetricValue) {
        match v.name.as_str() {
            m::CPU => self.cpu = Some(v.value),
            m::MEMORY => self.memory = Some(v.value),
            m::DISK_USED_PERCENT => {
                let n = self.disks.len();
                match self.disks.iter_mut().find(|d| d.0 == v.label) {
                    Some(d) => d.1 = v.value,
                    None if n < MAX_DISKS => self.disks.push((v.label.clone(), v.value)),
                    None => {}
                }
            }
            _ => {}
        }
    }
}

/// Mount points remembered per device (the fullest of them is shown).
const MAX_DISKS: usize = 64;

/// An open alert, as counted.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAlert {
    pub device: DeviceId,
    pub customer: String,
    pub severity: Severity,
    pub state: AlertState,
}

impl OpenAlert {
    pub fn of(a: &Alert) -> OpenAlert {
        OpenAlert {
            device: a.device,
            customer: a.customer.to_string(),
            severity: a.severity,
            state: a.state,
        }
    }
}

/// What the database says, read outside the index's lock.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub records: Vec<DeviceRecord>,
    pub states: HashMap<DeviceId, DeviceState>,
    pub tags: HashMap<DeviceId, Vec<String>>,
    /// IP addresses by device, when the inventory was read.
    pub ips: Option<HashMap<DeviceId, Vec<String>>>,
    /// Latest CPU, memory and disk values of the devices new to the index.
    pub values: HashMap<DeviceId, Vec<MetricValue>>,
}

impl Snapshot {
    /// Reads the registry, the device states and tags, the inventories'
    /// IP addresses if `with_ips`, and the latest values of the devices
    /// not in `known`.
    pub fn read(store: &Store, known: &HashSet<DeviceId>, with_ips: bool) -> Result<Snapshot> {
        let mut s = Snapshot::default();
        store.scan::<DeviceRecord>(DEVICES, &[], None, |_, r| {
            s.records.push(r);
            true
        })?;
        store.scan::<DeviceState>(DEVICE_STATE, &[], None, |k, st| {
            if let Some(d) = keys::device_from_key(k) {
                s.states.insert(d, st);
            }
            true
        })?;
        store.scan::<Vec<String>>(DEVICE_TAGS, &[], None, |k, t| {
            if let Some(d) = keys::device_from_key(k) {
                s.tags.insert(d, t);
            }
            true
        })?;
        if with_ips {
            let mut ips = HashMap::new();
            store.scan::<Inventory>(INVENTORY, &[], None, |k, inv| {
                if let Some(d) = keys::device_from_key(k) {
                    ips.insert(d, inventory_ips(&inv));
                }
                true
            })?;
            s.ips = Some(ips);
        }
        for r in &s.records {
            if !known.contains(&r.id) {
                s.values.insert(r.id, latest_values(store, r.id)?);
            }
        }
        Ok(s)
    }
}

/// The addresses of a device's interfaces (loopback and IPv6 link-local
/// left out, prefix lengths dropped).
pub fn inventory_ips(inv: &Inventory) -> Vec<String> {
    let mut out: Vec<String> = inv
        .nics
        .iter()
        .flat_map(|n| n.ips.iter())
        .map(|ip| ip.split('/').next().unwrap_or(ip).to_string())
        .filter(|ip| !ip.starts_with("127.") && ip != "::1" && !ip.starts_with("fe80:"))
        .collect();
    out.dedup();
    out.truncate(16);
    out
}

/// The latest CPU, memory and disk values of `device`.
pub fn latest_values(store: &Store, device: DeviceId) -> Result<Vec<MetricValue>> {
    let mut out = Vec::new();
    for s in outpost_storage::rollup::device_series(store, device)? {
        if !matches!(s.name.as_str(), m::CPU | m::MEMORY | m::DISK_USED_PERCENT) {
            continue;
        }
        if let Some((_, value)) = outpost_storage::samples::latest(store, device, s.id)? {
            out.push(MetricValue {
                name: s.name,
                label: s.label,
                value,
            });
        }
    }
    Ok(out)
}

/// One key of the list's order: the sort column, the lower-case hostname,
/// the device id.
#[derive(Debug, Clone, PartialEq)]
enum Primary {
    Text(String),
    Int(u64),
    /// Missing values after every value.
    Num(Option<f64>),
}

type SortKey = (Primary, String, u64);

fn cmp_primary(a: &Primary, b: &Primary) -> Ordering {
    match (a, b) {
        (Primary::Text(x), Primary::Text(y)) => x.cmp(y),
        (Primary::Int(x), Primary::Int(y)) => x.cmp(y),
        (Primary::Num(x), Primary::Num(y)) => match (x, y) {
            (Some(x), Some(y)) => x.total_cmp(y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        },
        _ => Ordering::Equal,
    }
}

fn cmp_key(a: &SortKey, b: &SortKey) -> Ordering {
    cmp_primary(&a.0, &b.0)
        .then_with(|| a.1.cmp(&b.1))
        .then_with(|| a.2.cmp(&b.2))
}

fn sort_key(r: &Row, sort: DeviceSort) -> SortKey {
    let p = match sort {
        DeviceSort::Hostname | DeviceSort::Site => Primary::Text(String::new()),
        DeviceSort::Status => Primary::Text(r.status_str().to_string()),
        DeviceSort::Customer => Primary::Text(r.customer.clone()),
        DeviceSort::LastSeen => Primary::Int(r.last_seen_ms),
        DeviceSort::Cpu => Primary::Num(r.cpu),
    };
    (p, r.host_lc.clone(), r.id.0)
}

/// The cursor of the page after the row with `k`: `t<hex>`, `i<n>` or
/// `n<bits hex>`/`n-`, then `.` the hostname in hex, `.` the device id.
fn encode_cursor(k: &SortKey) -> String {
    let p = match &k.0 {
        Primary::Text(s) => format!("t{}", hex::encode(s)),
        Primary::Int(n) => format!("i{n}"),
        Primary::Num(Some(f)) => format!("n{:016x}", f.to_bits()),
        Primary::Num(None) => "n-".to_string(),
    };
    format!("{p}.{}.{:016x}", hex::encode(&k.1), k.2)
}

fn decode_cursor(c: &str, sort: DeviceSort) -> Option<SortKey> {
    let mut parts = c.split('.');
    let (p, host, id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let text = |h: &str| String::from_utf8(hex::decode(h).ok()?).ok();
    let primary = match (sort, p.split_at_checked(1)?) {
        (DeviceSort::LastSeen, ("i", n)) => Primary::Int(n.parse().ok()?),
        (DeviceSort::Cpu, ("n", "-")) => Primary::Num(None),
        (DeviceSort::Cpu, ("n", b)) => {
            Primary::Num(Some(f64::from_bits(u64::from_str_radix(b, 16).ok()?)))
        }
        (
            DeviceSort::Hostname | DeviceSort::Site | DeviceSort::Status | DeviceSort::Customer,
            ("t", h),
        ) => Primary::Text(text(h)?),
        _ => return None,
    };
    Some((primary, text(host)?, u64::from_str_radix(id, 16).ok()?))
}

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("status {0:?}: use online, offline, pending, revoked or critical")]
    Status(String),
    #[error("the page cursor {0:?} is not one this list gave (or the sort changed)")]
    Cursor(String),
}

/// One page of the list: the rows (views built by the caller's
/// `site` names), the matches, the next page's cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub rows: Vec<DeviceView>,
    pub total: u64,
    pub next: Option<String>,
}

/// The site's identity, for views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRef {
    pub id: String,
    pub name: String,
}

/// Counts of the dashboard: the site's, and per customer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteCounts {
    pub totals: Counts,
    pub by_customer: Vec<(String, Counts)>,
    pub firing_by_severity: SeverityCounts,
}

#[derive(Debug, Default)]
struct Inner {
    rows: HashMap<DeviceId, Row>,
    open_alerts: HashMap<u64, OpenAlert>,
}

impl Inner {
    /// Open alerts and firing critical alerts per device.
    fn alert_counts(&self) -> HashMap<DeviceId, (u32, bool)> {
        let mut out: HashMap<DeviceId, (u32, bool)> = HashMap::new();
        for a in self.open_alerts.values() {
            let e = out.entry(a.device).or_default();
            e.0 += 1;
            e.1 |= a.state == AlertState::Firing && a.severity == Severity::Critical;
        }
        out
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct DeviceIndex {
    inner: RwLock<Inner>,
}

impl DeviceIndex {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The devices the index has rows of.
    pub fn known(&self) -> HashSet<DeviceId> {
        self.read().rows.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.read().rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of one row.
    pub fn row(&self, d: DeviceId) -> Option<Row> {
        self.read().rows.get(&d).cloned()
    }

    /// Adds a row (a device a hook heard of before a merge did).
    pub fn insert(&self, row: Row) {
        self.write().rows.entry(row.id).or_insert(row);
    }

    /// Sets a device's tags (the tags API wrote them); `false` when the
    /// index has no row of it.
    pub fn set_tags(&self, d: DeviceId, tags: &[String]) -> bool {
        let mut inner = self.write();
        let Some(row) = inner.rows.get_mut(&d) else {
            return false;
        };
        row.tags = tags.to_vec();
        row.reindex();
        true
    }

    /// Merges what the database said (see the module docs).
    pub fn merge(&self, s: Snapshot) {
        let mut inner = self.write();
        for r in &s.records {
            let row = inner.rows.entry(r.id).or_insert_with(|| Row::of_record(r));
            row.set_record(r);
            if let Some(st) = s.states.get(&r.id) {
                row.merge_state(st);
            }
            row.tags = s.tags.get(&r.id).cloned().unwrap_or_default();
            if let Some(ips) = &s.ips {
                row.ips = ips.get(&r.id).cloned().unwrap_or_default();
            }
            if let Some(vals) = s.values.get(&r.id) {
                for v in vals {
                    row.note_value(v);
                }
            }
            row.reindex();
        }
    }

    /// Sets the open alerts (at start, before the engine runs).
    pub fn load_alerts(&self, open: &[Alert]) {
        let mut inner = self.write();
        inner.open_alerts = open
            .iter()
            .filter(|a| a.state.is_open())
            .map(|a| (a.id, OpenAlert::of(a)))
            .collect();
    }

    /// A status transition of `d` (the writer's hook). The row before and
    /// after, if the index has it.
    pub fn on_transition(&self, d: DeviceId, t: &StatusTransition) -> Option<(Row, Row)> {
        let mut inner = self.write();
        let row = inner.rows.get_mut(&d)?;
        let before = row.clone();
        row.status = t.to;
        row.status_since_ms = t.at_ms;
        row.hooked_ms = t.at_ms;
        let seen = if t.to == DeviceStatus::Online {
            t.at_ms
        } else {
            t.last_seen_ms
        };
        row.last_seen_ms = row.last_seen_ms.max(seen);
        Some((before, row.clone()))
    }

    /// Values a group commit stored (the writer's hook): the latest CPU,
    /// memory and disks; the device was seen at `now_ms`.
    pub fn on_samples(&self, batch: &[(DeviceId, Vec<MetricValue>)], now_ms: u64) {
        let mut inner = self.write();
        for (d, values) in batch {
            let Some(row) = inner.rows.get_mut(d) else {
                continue;
            };
            row.last_seen_ms = row.last_seen_ms.max(now_ms);
            for v in values {
                row.note_value(v);
            }
        }
    }

    /// An alert change (the engine's observer).
    pub fn on_alert(&self, a: &Alert) {
        let mut inner = self.write();
        if a.state.is_open() {
            inner.open_alerts.insert(a.id, OpenAlert::of(a));
        } else {
            inner.open_alerts.remove(&a.id);
        }
    }

    /// The dashboard's counts.
    pub fn counts(&self) -> SiteCounts {
        let inner = self.read();
        let alerts = inner.alert_counts();
        let mut out = SiteCounts::default();
        let mut by: HashMap<String, Counts> = HashMap::new();
        for r in inner.rows.values() {
            let critical = alerts.get(&r.id).is_some_and(|a| a.1);
            for c in [&mut out.totals, by.entry(r.customer.clone()).or_default()] {
                c.devices += 1;
                match r.status_str() {
                    "online" => c.online += 1,
                    "offline" => c.offline += 1,
                    "pending" => c.pending += 1,
                    _ => c.revoked += 1,
                }
                if critical {
                    c.critical += 1;
                }
            }
        }
        for a in inner.open_alerts.values() {
            let customer = by.entry(a.customer.clone()).or_default();
            for c in [&mut out.totals, customer] {
                match a.state {
                    AlertState::Firing => c.alerts_firing += 1,
                    _ => c.alerts_pending += 1,
                }
            }
            if a.state == AlertState::Firing {
                let s = &mut out.firing_by_severity;
                match a.severity {
                    Severity::Critical => s.critical += 1,
                    Severity::Warning => s.warning += 1,
                    Severity::Info => s.info += 1,
                }
            }
        }
        out.by_customer = by.into_iter().collect();
        out.by_customer.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Customers and tags of the site's devices, sorted.
    pub fn facets(&self) -> (Vec<String>, Vec<String>) {
        let inner = self.read();
        let mut customers = BTreeSet::new();
        let mut tags = BTreeSet::new();
        for r in inner.rows.values() {
            customers.insert(r.customer.clone());
            tags.extend(r.tags.iter().cloned());
        }
        (customers.into_iter().collect(), tags.into_iter().collect())
    }

    /// One page of the list for `q` (its `site` is the caller's to check).
    pub fn query(&self, q: &DeviceQuery, site: &SiteRef) -> std::result::Result<Page, QueryError> {
        let critical_only = match q.status.as_deref() {
            None => false,
            Some("critical") => true,
            Some("online" | "offline" | "pending" | "revoked") => false,
            Some(s) => return Err(QueryError::Status(s.to_string())),
        };
        let after = match &q.after {
            Some(c) => Some(decode_cursor(c, q.sort).ok_or_else(|| QueryError::Cursor(c.clone()))?),
            None => None,
        };
        let words: Vec<String> = q
            .text
            .to_lowercase()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        // Under the lock only the filter and the keys; the sort after it.
        let mut keys: Vec<SortKey> = {
            let inner = self.read();
            let alerts = if critical_only {
                inner.alert_counts()
            } else {
                HashMap::new()
            };
            inner
                .rows
                .values()
                .filter(|r| {
                    q.customer.as_deref().is_none_or(|c| r.customer == c)
                        && q.tag
                            .as_deref()
                            .is_none_or(|t| r.tags.iter().any(|x| x == t))
                        && match q.status.as_deref() {
                            None => true,
                            Some("critical") => alerts.get(&r.id).is_some_and(|a| a.1),
                            Some(s) => r.status_str() == s,
                        }
                        && words.iter().all(|w| r.haystack.contains(w.as_str()))
                })
                .map(|r| sort_key(r, q.sort))
                .collect()
        };
        let total = keys.len() as u64;
        let order = |a: &SortKey, b: &SortKey| {
            let o = cmp_key(a, b);
            if q.descending { o.reverse() } else { o }
        };
        keys.sort_unstable_by(order);
        let start = match &after {
            Some(c) => keys.partition_point(|k| order(k, c) != Ordering::Greater),
            None => 0,
        };
        let limit = q.limit.max(1);
        let end = (start + limit).min(keys.len());
        let next = (end < keys.len() && end > start).then(|| encode_cursor(&keys[end - 1]));
        let inner = self.read();
        let alerts = inner.alert_counts();
        let rows = keys[start..end]
            .iter()
            .filter_map(|k| inner.rows.get(&DeviceId(k.2)))
            .map(|r| view(r, site, alerts.get(&r.id).copied().unwrap_or_default()))
            .collect();
        Ok(Page { rows, total, next })
    }

    /// The view of one device, if the index has it.
    pub fn view(&self, d: DeviceId, site: &SiteRef) -> Option<DeviceView> {
        let inner = self.read();
        let alerts = inner.alert_counts();
        inner
            .rows
            .get(&d)
            .map(|r| view(r, site, alerts.get(&d).copied().unwrap_or_default()))
    }
}

/// A row as the console's list shows it.
pub fn view(r: &Row, site: &SiteRef, (open, critical): (u32, bool)) -> DeviceView {
    DeviceView {
        site_id: site.id.clone(),
        site_name: site.name.clone(),
        customer: r.customer.clone(),
        device: r.id.to_string(),
        hostname: r.hostname.clone(),
        os: r.os.clone(),
        agent_version: r.agent_version.clone(),
        status: r.status_str().to_string(),
        status_since_ms: r.status_since_ms,
        last_seen_ms: r.last_seen_ms,
        cpu: r.cpu,
        memory: r.memory,
        disk: r.disk(),
        open_alerts: open,
        critical,
        ips: r.ips.clone(),
        tags: r.tags.clone(),
    }
}

#[cfg(test)]
mod tests;
