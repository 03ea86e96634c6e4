//! The RocksDB backend's in-memory fleet index: what the console's device
//! search and the dashboard's counts read, so neither scans (and decodes)
//! every stored device row per request. A compact entry per device (names
//! lowercased for search, its IPs and tags, the latest CPU/memory/disk
//! averages, open-alert counts), the sites' names and customers, and the
//! open alerts.
//!
//! It is derived: rebuilt from the store at open, updated by the apply
//! path (and acknowledgements) after each durable write, never written to
//! disk. It is a backend detail behind [`crate::store::FleetStore`]'s
//! `search_devices` and `fleet_counts`; a PostgreSQL backend answers those
//! with SQL indexes instead.
//!
//! Pure data structure: no storage, no clock, no locking (the backend
//! holds it in a lock).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use outpost_proto::metric_names as m;
use outpost_proto::{CustomerId, SiteId, TenantId};

use crate::model::{
    AlertRow, AlertState, DeviceFacts, DeviceRow, DeviceStatus, Severity, SiteRecord,
};
use crate::store::{DeviceBrief, DeviceSearch, DeviceSortKey, FleetCounts, SearchPage, SiteCounts};

/// One device.
#[derive(Debug, Clone)]
struct Entry {
    site_id: SiteId,
    device: String,
    customer: CustomerId,
    hostname: String,
    /// Lowercased hostname, OS and device id, for search.
    hostname_lc: String,
    os: String,
    os_lc: String,
    agent_version: String,
    status: DeviceStatus,
    status_since_ms: u64,
    last_seen_ms: u64,
    cpu: Option<f64>,
    memory: Option<f64>,
    disk: Option<f64>,
    open_alerts: u32,
    critical_firing: u32,
    /// Addresses and tags (format 6), as stored.
    ips: Vec<String>,
    tags: Vec<String>,
    /// `tags` lowercased, for search.
    tags_lc: Vec<String>,
}

impl Entry {
    /// Whether a search word (lowercase) matches: a substring of the
    /// hostname, device id, OS or a tag, or the start of an IP address.
    fn matches_word(&self, w: &str) -> bool {
        self.hostname_lc.contains(w)
            || self.os_lc.contains(w)
            || self.ips.iter().any(|ip| ip.to_lowercase().starts_with(w))
            || self.tags_lc.iter().any(|t| t.contains(w))
    }
}

#[derive(Debug, Clone)]
struct SiteEntry {
    name: String,
    name_lc: String,
    customer: CustomerId,
}

#[derive(Debug, Clone, Copy)]
struct OpenAlert {
    severity: Severity,
    state: AlertState,
}

#[derive(Debug, Default)]
struct TenantIndex {
    sites: HashMap<SiteId, SiteEntry>,
    entries: Vec<Entry>,
    by_key: HashMap<(SiteId, String), usize>,
    /// The entries in hostname order (the list's default sort): a page of
    /// it is read in order from the cursor, like a SQL b-tree index, not
    /// selected out of every entry.
    by_hostname: BTreeMap<(String, String, String), usize>,
    /// Pending and firing alerts: (site, alert id) → (device, alert).
    open: HashMap<(SiteId, u64), (Option<String>, OpenAlert)>,
}

/// Most tags [`FleetIndex::tags`] lists.
pub const MAX_TAG_FACETS: usize = 500;

/// See the module docs.
#[derive(Debug, Default)]
pub struct FleetIndex {
    tenants: HashMap<TenantId, TenantIndex>,
}

fn avg(r: &crate::model::Rollup) -> f64 {
    if r.count > 0 {
        r.sum / r.count as f64
    } else {
        r.last
    }
}

/// What the search matches, sorts and shows of a device, derived from its
/// stored row: one definition for this index and for the columns the
/// PostgreSQL backend stores beside the row.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchKeys {
    /// Lowercased hostname, a space and the device id.
    pub host_lc: String,
    pub os_lc: String,
    /// `Revoked` for a revoked device, else its status.
    pub status: DeviceStatus,
    /// Latest 5-minute averages (CPU, memory, the fullest disk).
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    pub disk: Option<f64>,
}

impl SearchKeys {
    /// The status sort's key.
    pub fn status_rank(&self) -> u64 {
        status_rank(self.status)
    }

    /// The CPU sort's key (0 = no value, below every value).
    pub fn cpu_key(&self) -> u64 {
        cpu_key(self.cpu)
    }
}

/// See [`SearchKeys`].
pub fn search_keys(d: &DeviceRow) -> SearchKeys {
    let latest = |name: &str| {
        d.latest
            .iter()
            .filter(|l| l.series == name)
            .map(|l| avg(&l.rollup))
            .reduce(f64::max)
    };
    SearchKeys {
        host_lc: format!("{} {}", d.hostname.to_lowercase(), d.device),
        os_lc: d.os.to_lowercase(),
        status: if d.revoked {
            DeviceStatus::Revoked
        } else {
            d.status
        },
        cpu: latest(m::CPU),
        memory: latest(m::MEMORY),
        disk: latest(m::DISK_USED_PERCENT),
    }
}

fn cpu_key(cpu: Option<f64>) -> u64 {
    cpu.map_or(0, |c| 1 + (c.max(0.0) * 1000.0) as u64)
}

/// The status sort's rank of a status.
pub fn status_rank(s: DeviceStatus) -> u64 {
    match s {
        DeviceStatus::Offline => 0,
        DeviceStatus::Pending => 1,
        DeviceStatus::Online => 2,
        DeviceStatus::Revoked => 3,
    }
}

/// The sort key of an entry, borrowed (compared field by field).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key<'a> {
    num: u64,
    text: &'a str,
    text2: &'a str,
    host: &'a str,
    site: &'a str,
    device: &'a str,
}

/// A cursor: the sort and the last key of the previous page (the same
/// format on both backends).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Cursor {
    pub(crate) sort: String,
    pub(crate) desc: bool,
    pub(crate) num: u64,
    pub(crate) text: String,
    pub(crate) text2: String,
    pub(crate) host: String,
    pub(crate) site: String,
    pub(crate) device: String,
}

impl Cursor {
    /// The cursor of `after` for this search, if it is one.
    pub(crate) fn decode(q: &DeviceSearch) -> Result<Option<Cursor>, BadCursor> {
        match &q.after {
            None => Ok(None),
            Some(a) => hex::decode(a)
                .ok()
                .and_then(|b| serde_json::from_slice::<Cursor>(&b).ok())
                .filter(|c| c.sort == sort_name(q.sort) && c.desc == q.descending)
                .map(Some)
                .ok_or_else(|| BadCursor(a.clone())),
        }
    }

    pub(crate) fn encode(&self) -> String {
        hex::encode(serde_json::to_vec(self).unwrap_or_default())
    }
}

impl Cursor {
    fn key(&self) -> Key<'_> {
        Key {
            num: self.num,
            text: &self.text,
            text2: &self.text2,
            host: &self.host,
            site: &self.site,
            device: &self.device,
        }
    }
}

pub(crate) fn sort_name(s: DeviceSortKey) -> &'static str {
    match s {
        DeviceSortKey::Hostname => "hostname",
        DeviceSortKey::Status => "status",
        DeviceSortKey::LastSeen => "last_seen",
        DeviceSortKey::Site => "site",
        DeviceSortKey::Customer => "customer",
        DeviceSortKey::Cpu => "cpu",
    }
}

impl TenantIndex {
    fn site_name_lc(&self, site: &SiteId) -> &str {
        self.sites.get(site).map_or("", |s| s.name_lc.as_str())
    }

    fn key<'a>(&'a self, e: &'a Entry, sort: DeviceSortKey) -> Key<'a> {
        let base = Key {
            num: 0,
            text: "",
            text2: "",
            host: &e.hostname_lc,
            site: e.site_id.as_str(),
            device: &e.device,
        };
        match sort {
            DeviceSortKey::Hostname => base,
            DeviceSortKey::Status => Key {
                num: status_rank(e.status),
                ..base
            },
            DeviceSortKey::LastSeen => Key {
                num: e.last_seen_ms,
                ..base
            },
            DeviceSortKey::Site => Key {
                text: self.site_name_lc(&e.site_id),
                ..base
            },
            DeviceSortKey::Customer => Key {
                text: e.customer.as_str(),
                text2: self.site_name_lc(&e.site_id),
                ..base
            },
            DeviceSortKey::Cpu => Key {
                num: cpu_key(e.cpu),
                ..base
            },
        }
    }

    fn recount_alerts(&mut self, site: &SiteId, device: &str) {
        let Some(&i) = self.by_key.get(&(site.clone(), device.to_string())) else {
            return;
        };
        let (mut open, mut crit) = (0, 0);
        for ((s, _), (d, a)) in &self.open {
            if s == site && d.as_deref() == Some(device) {
                open += 1;
                if a.state == AlertState::Firing && a.severity == Severity::Critical {
                    crit += 1;
                }
            }
        }
        if let Some(e) = self.entries.get_mut(i) {
            e.open_alerts = open;
            e.critical_firing = crit;
        }
    }

    fn brief(&self, e: &Entry) -> DeviceBrief {
        DeviceBrief {
            site_id: e.site_id.clone(),
            site_name: self
                .sites
                .get(&e.site_id)
                .map_or_else(|| e.site_id.to_string(), |s| s.name.clone()),
            customer: e.customer.clone(),
            device: e.device.clone(),
            hostname: e.hostname.clone(),
            os: e.os.clone(),
            agent_version: e.agent_version.clone(),
            status: e.status,
            status_since_ms: e.status_since_ms,
            last_seen_ms: e.last_seen_ms,
            cpu: e.cpu,
            memory: e.memory,
            disk: e.disk,
            open_alerts: e.open_alerts,
            critical: e.critical_firing > 0,
            ips: e.ips.clone(),
            tags: e.tags.clone(),
        }
    }
}

/// A cursor the index did not hand out for this search.
#[derive(Debug, thiserror::Error)]
#[error(
    "cursor {0:?} is not a `next` value of this device search (pass `next` of the previous page unchanged, with the same sort)"
)]
pub struct BadCursor(pub String);

impl FleetIndex {
    /// The open (pending or firing) alerts of a tenant, of one site or all:
    /// (site, alert id).
    pub fn open_alerts(&self, tenant: &str, site: Option<&SiteId>) -> Vec<(SiteId, u64)> {
        self.tenants.get(tenant).map_or_else(Vec::new, |t| {
            t.open
                .keys()
                .filter(|(s, _)| site.is_none_or(|w| w == s))
                .cloned()
                .collect()
        })
    }

    pub fn upsert_site(&mut self, s: &SiteRecord) {
        let t = self.tenants.entry(s.tenant.clone()).or_default();
        t.sites.insert(
            s.site_id.clone(),
            SiteEntry {
                name: s.name.clone(),
                name_lc: s.name.to_lowercase(),
                customer: s.customer.clone(),
            },
        );
    }

    /// Adds or replaces a device (its row as stored, customer included).
    pub fn upsert_device(&mut self, d: &DeviceRow) {
        let t = self.tenants.entry(d.tenant.clone()).or_default();
        let k = search_keys(d);
        let e = Entry {
            site_id: d.site_id.clone(),
            device: d.device.clone(),
            customer: d.customer.clone(),
            hostname_lc: k.host_lc,
            hostname: d.hostname.clone(),
            os_lc: k.os_lc,
            os: d.os.clone(),
            agent_version: d.agent_version.clone(),
            status: k.status,
            status_since_ms: d.status_since_ms,
            last_seen_ms: d.last_seen_ms,
            cpu: k.cpu,
            memory: k.memory,
            disk: k.disk,
            open_alerts: 0,
            critical_firing: 0,
            ips: Vec::new(),
            tags: Vec::new(),
            tags_lc: Vec::new(),
        };
        let key = (d.site_id.clone(), d.device.clone());
        let order = |e: &Entry| {
            (
                e.hostname_lc.clone(),
                e.site_id.to_string(),
                e.device.clone(),
            )
        };
        match t.by_key.get(&key) {
            Some(&i) => {
                if let Some(old) = t.entries.get_mut(i) {
                    if old.hostname_lc != e.hostname_lc {
                        t.by_hostname.remove(&order(old));
                        t.by_hostname.insert(order(&e), i);
                    }
                    let (open, crit) = (old.open_alerts, old.critical_firing);
                    let ips = std::mem::take(&mut old.ips);
                    let tags = std::mem::take(&mut old.tags);
                    let tags_lc = std::mem::take(&mut old.tags_lc);
                    *old = Entry {
                        open_alerts: open,
                        critical_firing: crit,
                        ips,
                        tags,
                        tags_lc,
                        ..e
                    };
                }
            }
            None => {
                let i = t.entries.len();
                t.by_hostname.insert(order(&e), i);
                t.entries.push(e);
                t.by_key.insert(key, i);
                t.recount_alerts(&d.site_id, &d.device);
            }
        }
    }

    /// Sets a device's IPs and tags (after [`FleetIndex::upsert_device`];
    /// a device not in the index is left out).
    pub fn set_facts(&mut self, tenant: &str, site: &SiteId, device: &str, f: &DeviceFacts) {
        let Some(t) = self.tenants.get_mut(tenant) else {
            return;
        };
        let Some(&i) = t.by_key.get(&(site.clone(), device.to_string())) else {
            return;
        };
        if let Some(e) = t.entries.get_mut(i) {
            e.ips = f.ips.clone();
            e.tags = f.tags.clone();
            e.tags_lc = f.tags.iter().map(|t| t.to_lowercase()).collect();
        }
    }

    /// The distinct tags of `tenant`'s devices within `allowed` customers
    /// (empty = all), sorted: the console's tag filter.
    pub fn tags(&self, tenant: &str, allowed: &[CustomerId]) -> Vec<String> {
        let Some(t) = self.tenants.get(tenant) else {
            return Vec::new();
        };
        let mut out: Vec<String> = t
            .entries
            .iter()
            .filter(|e| allowed.is_empty() || allowed.contains(&e.customer))
            .flat_map(|e| e.tags.iter().cloned())
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect();
        out.truncate(MAX_TAG_FACETS);
        out
    }

    /// Adds, moves or closes an alert.
    pub fn upsert_alert(&mut self, a: &AlertRow) {
        let t = self.tenants.entry(a.tenant.clone()).or_default();
        let k = (a.site_id.clone(), a.alert_id);
        let before = t.open.remove(&k);
        if a.state.is_open() {
            t.open.insert(
                k,
                (
                    a.device.clone(),
                    OpenAlert {
                        severity: a.severity,
                        state: a.state,
                    },
                ),
            );
        }
        let mut devices: Vec<String> = a.device.iter().cloned().collect();
        if let Some((Some(d), _)) = before
            && a.device.as_deref() != Some(d.as_str())
        {
            devices.push(d);
        }
        for d in devices {
            t.recount_alerts(&a.site_id, &d);
        }
    }

    /// The hostname of a device, if it has one.
    pub fn hostname(&self, tenant: &str, site: &SiteId, device: &str) -> Option<String> {
        let t = self.tenants.get(tenant)?;
        let i = *t.by_key.get(&(site.clone(), device.to_string()))?;
        t.entries
            .get(i)
            .map(|e| e.hostname.clone())
            .filter(|h| !h.is_empty())
    }

    /// Devices of `tenant` in the index (tests, the bench).
    pub fn len(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.entries.len())
    }

    /// Whether `tenant` has no device here.
    pub fn is_empty(&self, tenant: &str) -> bool {
        self.len(tenant) == 0
    }

    /// The console's search (see [`DeviceSearch`]).
    pub fn search(&self, tenant: &str, q: &DeviceSearch) -> Result<SearchPage, BadCursor> {
        let Some(t) = self.tenants.get(tenant) else {
            return Ok(SearchPage {
                items: vec![],
                total: 0,
                total_more: false,
                next: None,
            });
        };
        let cursor = Cursor::decode(q)?;
        let matches = |e: &Entry| {
            q.site_id.as_ref().is_none_or(|s| *s == e.site_id)
                && q.customer.as_ref().is_none_or(|c| *c == e.customer)
                && (q.customers_allowed.is_empty() || q.customers_allowed.contains(&e.customer))
                && q.status.is_none_or(|s| s == e.status)
                && (!q.critical || e.critical_firing > 0)
                && q.tag.as_ref().is_none_or(|t| e.tags.contains(t))
                && q.words.iter().all(|w| e.matches_word(w))
        };
        let order = |a: &Key, b: &Key| {
            let o = a.cmp(b);
            if q.descending { o.reverse() } else { o }
        };
        let unfiltered = q.site_id.is_none()
            && q.customer.is_none()
            && q.customers_allowed.is_empty()
            && q.status.is_none()
            && !q.critical
            && q.tag.is_none()
            && q.words.is_empty();
        let limit = q.limit.max(1);
        let total;
        let mut page: Vec<usize> = Vec::new();
        if q.sort == DeviceSortKey::Hostname {
            // Read the ordered index from the cursor: O(page) when most
            // entries match.
            total = if unfiltered {
                t.entries.len() as u64
            } else {
                t.entries.iter().filter(|e| matches(e)).count() as u64
            };
            let from = cursor
                .as_ref()
                .map(|c| (c.host.clone(), c.site.clone(), c.device.clone()));
            let ids: Box<dyn Iterator<Item = &usize>> = match (&from, q.descending) {
                (None, false) => Box::new(t.by_hostname.values()),
                (None, true) => Box::new(t.by_hostname.values().rev()),
                (Some(k), false) => Box::new(
                    t.by_hostname
                        .range((Bound::Excluded(k.clone()), Bound::Unbounded))
                        .map(|(_, i)| i),
                ),
                (Some(k), true) => Box::new(
                    t.by_hostname
                        .range((Bound::Unbounded, Bound::Excluded(k.clone())))
                        .rev()
                        .map(|(_, i)| i),
                ),
            };
            for &i in ids {
                if t.entries.get(i).is_some_and(matches) {
                    page.push(i);
                    if page.len() > limit {
                        break;
                    }
                }
            }
        } else {
            let mut n = 0u64;
            for (i, e) in t.entries.iter().enumerate() {
                if !matches(e) {
                    continue;
                }
                n += 1;
                if let Some(c) = &cursor
                    && order(&t.key(e, q.sort), &c.key()) != Ordering::Greater
                {
                    continue;
                }
                page.push(i);
            }
            total = n;
        }
        let cmp = |a: &usize, b: &usize| {
            order(
                &t.key(&t.entries[*a], q.sort),
                &t.key(&t.entries[*b], q.sort),
            )
        };
        let more = page.len() > limit;
        if more && q.sort != DeviceSortKey::Hostname {
            page.select_nth_unstable_by(limit, cmp);
        }
        page.truncate(limit);
        page.sort_unstable_by(cmp);
        let next = if more {
            page.last().map(|&i| {
                let k = t.key(&t.entries[i], q.sort);
                let c = Cursor {
                    sort: sort_name(q.sort).into(),
                    desc: q.descending,
                    num: k.num,
                    text: k.text.into(),
                    text2: k.text2.into(),
                    host: k.host.into(),
                    site: k.site.into(),
                    device: k.device.into(),
                };
                c.encode()
            })
        } else {
            None
        };
        Ok(SearchPage {
            items: page.iter().map(|&i| t.brief(&t.entries[i])).collect(),
            total,
            total_more: false,
            next,
        })
    }

    /// Counts per site of `tenant`, within `allowed` customers (empty =
    /// all): one pass over the devices and the open alerts.
    pub fn counts(&self, tenant: &str, allowed: &[CustomerId]) -> FleetCounts {
        let Some(t) = self.tenants.get(tenant) else {
            return FleetCounts::default();
        };
        let sees = |c: &CustomerId| allowed.is_empty() || allowed.contains(c);
        let mut per_site: BTreeMap<SiteId, SiteCounts> = BTreeMap::new();
        for e in t.entries.iter().filter(|e| sees(&e.customer)) {
            let c = per_site.entry(e.site_id.clone()).or_default();
            c.devices += 1;
            match e.status {
                DeviceStatus::Online => c.online += 1,
                DeviceStatus::Offline => c.offline += 1,
                DeviceStatus::Pending => c.pending += 1,
                DeviceStatus::Revoked => c.revoked += 1,
            }
            if e.critical_firing > 0 {
                c.critical += 1;
            }
        }
        let mut sev: BTreeMap<Severity, u64> = BTreeMap::new();
        for ((site, _), (_, a)) in &t.open {
            let visible = t.sites.get(site).is_some_and(|s| sees(&s.customer));
            if !visible {
                continue;
            }
            let c = per_site.entry(site.clone()).or_default();
            match a.state {
                AlertState::Firing => {
                    c.alerts_firing += 1;
                    *sev.entry(a.severity).or_default() += 1;
                }
                _ => c.alerts_pending += 1,
            }
        }
        FleetCounts {
            per_site,
            firing_by_severity: sev.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LatestRollup, Rollup};

    fn site(id: &str, name: &str, customer: &str) -> SiteRecord {
        SiteRecord {
            joined_ms: 1,
            ..SiteRecord::new("msp".into(), customer.into(), id.into(), name.into(), 1)
        }
    }

    fn dev(
        site: &str,
        customer: &str,
        n: u64,
        host: &str,
        status: DeviceStatus,
        cpu: f64,
    ) -> DeviceRow {
        DeviceRow {
            tenant: "msp".into(),
            site_id: site.into(),
            device: format!("{n:016x}"),
            customer: customer.into(),
            hostname: host.into(),
            os: if n.is_multiple_of(2) {
                "Debian 12"
            } else {
                "Ubuntu 24.04"
            }
            .into(),
            agent_version: "0.1.0".into(),
            enrolled_at_ms: 1,
            revoked: false,
            status,
            status_since_ms: 1,
            last_seen_ms: 1000 + n,
            as_of_ms: 1,
            rollups_stored: 1,
            latest: vec![LatestRollup {
                series: "cpu".into(),
                label: String::new(),
                bucket_start_ms: 0,
                rollup: Rollup {
                    min: cpu,
                    max: cpu,
                    sum: cpu * 2.0,
                    count: 2,
                    last: cpu,
                    last_ts_ms: 0,
                },
            }],
        }
    }

    fn alert(site: &str, id: u64, device: &str, state: AlertState, sev: Severity) -> AlertRow {
        AlertRow {
            tenant: "msp".into(),
            site_id: site.into(),
            customer: "dental".into(),
            alert_id: id,
            device: Some(device.into()),
            rule: "r".into(),
            severity: sev,
            state,
            at_ms: 1,
            first_ms: 1,
            message: String::new(),
            value: None,
            transitions: 1,
            acked_by: None,
            acked_ms: 0,
        }
    }

    fn index() -> FleetIndex {
        let mut ix = FleetIndex::default();
        ix.upsert_site(&site("s-1", "Harbour", "dental"));
        ix.upsert_site(&site("s-2", "Vet Main", "vet"));
        for n in 0..10u64 {
            let (s, c) = if n < 6 {
                ("s-1", "dental")
            } else {
                ("s-2", "vet")
            };
            let st = if n % 3 == 0 {
                DeviceStatus::Offline
            } else {
                DeviceStatus::Online
            };
            ix.upsert_device(&dev(s, c, n, &format!("host-{n:02}"), st, n as f64 * 10.0));
        }
        ix
    }

    fn search(ix: &FleetIndex, f: impl FnOnce(&mut DeviceSearch)) -> SearchPage {
        let mut q = DeviceSearch {
            limit: 100,
            ..Default::default()
        };
        f(&mut q);
        ix.search("msp", &q).unwrap()
    }

    fn hosts(p: &SearchPage) -> Vec<String> {
        p.items.iter().map(|d| d.hostname.clone()).collect()
    }

    #[test]
    fn search_matches_every_word_in_hostname_os_or_id_within_the_filters() {
        let ix = index();
        assert_eq!(search(&ix, |_| {}).total, 10);
        let p = search(&ix, |q| q.words = vec!["debian".into(), "host-0".into()]);
        assert_eq!(
            hosts(&p),
            ["host-00", "host-02", "host-04", "host-06", "host-08"]
        );
        let p = search(&ix, |q| q.words = vec!["000000000000000b".into()]);
        assert!(p.items.is_empty(), "no such id");
        let p = search(&ix, |q| q.words = vec!["0000000000000007".into()]);
        assert_eq!(hosts(&p), ["host-07"]);
        let p = search(&ix, |q| {
            q.status = Some(DeviceStatus::Offline);
            q.customers_allowed = vec!["dental".into()];
        });
        assert_eq!(hosts(&p), ["host-00", "host-03"]);
        let p = search(&ix, |q| q.site_id = Some("s-2".into()));
        assert_eq!(p.total, 4);
        assert_eq!(p.items[0].site_name, "Vet Main");
        let p = search(&ix, |q| q.customer = Some("vet".into()));
        assert_eq!(p.total, 4);
    }

    #[test]
    fn pages_follow_the_cursor_in_every_sort_without_gaps_or_repeats() {
        let ix = index();
        for sort in [
            DeviceSortKey::Hostname,
            DeviceSortKey::Status,
            DeviceSortKey::LastSeen,
            DeviceSortKey::Site,
            DeviceSortKey::Customer,
            DeviceSortKey::Cpu,
        ] {
            for desc in [false, true] {
                let all = search(&ix, |q| {
                    q.sort = sort;
                    q.descending = desc;
                });
                let mut seen = Vec::new();
                let mut after = None;
                loop {
                    let p = search(&ix, |q| {
                        q.sort = sort;
                        q.descending = desc;
                        q.limit = 3;
                        q.after = after.clone();
                    });
                    assert_eq!(p.total, 10);
                    seen.extend(hosts(&p));
                    match p.next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                assert_eq!(seen, hosts(&all), "{sort:?} desc={desc}");
            }
        }
        let p = search(&ix, |q| q.sort = DeviceSortKey::Cpu);
        assert_eq!(p.items[0].hostname, "host-00");
        let p = search(&ix, |q| {
            q.sort = DeviceSortKey::Cpu;
            q.descending = true;
        });
        assert_eq!(p.items[0].hostname, "host-09");
        assert_eq!(p.items[0].cpu, Some(90.0));
        let p = search(&ix, |q| q.sort = DeviceSortKey::Status);
        assert_eq!(p.items[0].status, DeviceStatus::Offline, "offline first");
    }

    #[test]
    fn a_cursor_of_another_sort_or_garbage_is_refused() {
        let ix = index();
        let p = search(&ix, |q| q.limit = 2);
        let next = p.next.unwrap();
        let mut q = DeviceSearch {
            limit: 2,
            after: Some(next.clone()),
            sort: DeviceSortKey::Cpu,
            ..Default::default()
        };
        assert!(ix.search("msp", &q).is_err());
        q.after = Some("zz".into());
        assert!(ix.search("msp", &q).is_err());
        q.sort = DeviceSortKey::Hostname;
        q.after = Some(next);
        assert!(ix.search("msp", &q).is_ok());
    }

    #[test]
    fn counts_follow_devices_and_open_alerts_within_the_customers_allowed() {
        let mut ix = index();
        let d1 = format!("{:016x}", 1);
        ix.upsert_alert(&alert(
            "s-1",
            1,
            &d1,
            AlertState::Firing,
            Severity::Critical,
        ));
        ix.upsert_alert(&alert(
            "s-1",
            2,
            &d1,
            AlertState::Pending,
            Severity::Warning,
        ));
        let c = ix.counts("msp", &[]);
        let s1 = c.per_site[&SiteId::from("s-1")];
        assert_eq!((s1.devices, s1.online, s1.offline), (6, 4, 2));
        assert_eq!(
            (s1.critical, s1.alerts_firing, s1.alerts_pending),
            (1, 1, 1)
        );
        assert_eq!(c.firing_by_severity, vec![(Severity::Critical, 1)]);
        let p = search(&ix, |q| q.critical = true);
        assert_eq!(hosts(&p), ["host-01"]);
        assert_eq!(p.items[0].open_alerts, 2);
        let vet = ix.counts("msp", &["vet".into()]);
        assert_eq!(vet.per_site.len(), 1, "dental's site not even named");
        assert!(vet.firing_by_severity.is_empty());
        // The alert resolves: the device is no longer critical.
        ix.upsert_alert(&alert(
            "s-1",
            1,
            &d1,
            AlertState::Resolved,
            Severity::Critical,
        ));
        assert!(search(&ix, |q| q.critical = true).items.is_empty());
        // A device replaced by a newer snapshot keeps its alert counts.
        ix.upsert_device(&dev(
            "s-1",
            "dental",
            1,
            "host-01",
            DeviceStatus::Offline,
            5.0,
        ));
        let p = search(&ix, |q| q.words = vec!["host-01".into()]);
        assert_eq!(
            (p.items[0].open_alerts, p.items[0].status),
            (1, DeviceStatus::Offline)
        );
        assert_eq!(ix.len("msp"), 10);
    }
}
