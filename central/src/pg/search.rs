//! The console's device search and the dashboard's fleet counts on
//! PostgreSQL, in SQL over the key columns of schema version 7
//! (`devices.host_lc / os_lc / status_rank / cpu_key`, `sites.name_lc`,
//! `alerts.device`), with the same answers and the same cursor format as
//! the RocksDB backend's in-memory [`crate::fleet_index::FleetIndex`]
//! (the tests run on both backends). No per-request index build.
//!
//! Owns only these two queries and the start-up fill of the key columns
//! for rows written before version 7; the keys themselves are defined in
//! [`crate::fleet_index::search_keys`] (shared), never here.

use std::collections::BTreeMap;

use outpost_proto::{CustomerId, SiteId};
use tokio_postgres::types::ToSql;

use super::{PgCentralStore, be, dec, i, u};
use crate::fleet_index::{Cursor, search_keys, sort_name, status_rank};
use crate::model::{AlertRow, DeviceRow, DeviceStatus, SiteRecord};
use crate::store::{
    CentralStoreError, DeviceBrief, DeviceSearch, DeviceSortKey, FleetCounts, Result, SearchPage,
    SiteCounts,
};
use outpost_proto::alert::Severity;

type Param = Box<dyn ToSql + Sync + Send>;

/// Query parameters being collected: `p(v)` appends one and returns `$n`.
#[derive(Default)]
struct Params(Vec<Param>);

impl Params {
    fn p(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(v));
        format!("${}", self.0.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The SQL of the sort key: (number, text, text2) expressions; the
/// hostname, site and device always follow.
fn key_exprs(sort: DeviceSortKey) -> (&'static str, &'static str, &'static str) {
    match sort {
        DeviceSortKey::Hostname => ("0::bigint", "''", "''"),
        DeviceSortKey::Status => ("d.status_rank::bigint", "''", "''"),
        DeviceSortKey::LastSeen => ("d.last_seen_ms", "''", "''"),
        DeviceSortKey::Site => ("0::bigint", "COALESCE(s.name_lc, '')", "''"),
        DeviceSortKey::Customer => ("0::bigint", "d.customer", "COALESCE(s.name_lc, '')"),
        DeviceSortKey::Cpu => ("d.cpu_key", "''", "''"),
    }
}

/// `devices.tags_lc`: the lowercased tags, one per line.
pub(crate) fn tags_lc(tags: &[String]) -> String {
    tags.iter()
        .map(|t| t.to_lowercase())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `devices.ips_lc`: each lowercased address after a tab.
pub(crate) fn ips_lc(ips: &[String]) -> String {
    ips.iter()
        .map(|ip| format!("\t{}", ip.to_lowercase()))
        .collect()
}

/// `devices.words_lc` (what the store writes; SQL keeps it on updates).
pub(crate) fn words_lc(host_lc: &str, os_lc: &str, tags_lc: &str) -> String {
    format!("{host_lc}\n{os_lc}\n{tags_lc}")
}

/// `w` as a literal inside a `LIKE` pattern (backslash escapes).
fn like_literal(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    for c in w.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn severity(s: &str) -> Option<Severity> {
    [Severity::Info, Severity::Warning, Severity::Critical]
        .into_iter()
        .find(|v| v.as_str() == s)
}

impl PgCentralStore {
    /// Fills the version 7 key columns of rows written before it (owner
    /// role, at start; a no-op once done).
    pub(super) async fn fill_search_keys(&self) -> Result<()> {
        let c = self.client().await?;
        loop {
            let rows = c
                .query(
                    "SELECT body, ips, tags FROM devices WHERE host_lc IS NULL OR words_lc IS NULL \
                     LIMIT 1000",
                    &[],
                )
                .await
                .map_err(be)?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let d: DeviceRow = dec(r.get::<_, &[u8]>(0))?;
                let (ips, tags): (Vec<String>, Vec<String>) = (r.get(1), r.get(2));
                let k = search_keys(&d);
                let tl = tags_lc(&tags);
                c.execute(
                    "UPDATE devices SET host_lc = $4, os_lc = $5, status_rank = $6, cpu_key = $7, \
                     tags_lc = $8, ips_lc = $9, words_lc = $10 \
                     WHERE tenant_id = $1 AND site_id = $2 AND device = $3",
                    &[
                        &d.tenant.as_str(),
                        &d.site_id.as_str(),
                        &d.device,
                        &k.host_lc,
                        &k.os_lc,
                        &(k.status_rank() as i16),
                        &i(k.cpu_key()),
                        &tl,
                        &ips_lc(&ips),
                        &words_lc(&k.host_lc, &k.os_lc, &tl),
                    ],
                )
                .await
                .map_err(be)?;
            }
        }
        let rows = c
            .query("SELECT body FROM sites WHERE name IS NULL", &[])
            .await
            .map_err(be)?;
        for r in &rows {
            let s = SiteRecord::from_stored(r.get::<_, &[u8]>(0))?;
            c.execute(
                "UPDATE sites SET name = $3, name_lc = $4 WHERE tenant_id = $1 AND site_id = $2",
                &[
                    &s.tenant.as_str(),
                    &s.site_id.as_str(),
                    &s.name,
                    &s.name.to_lowercase(),
                ],
            )
            .await
            .map_err(be)?;
        }
        // Open alerts only (what search and counts read); a site-wide
        // alert keeps a NULL device, so this reads those few again.
        let rows = c
            .query(
                "SELECT body FROM alerts WHERE device IS NULL AND state IN ('pending', 'firing')",
                &[],
            )
            .await
            .map_err(be)?;
        for r in &rows {
            let a: AlertRow = dec(r.get::<_, &[u8]>(0))?;
            if let Some(d) = &a.device {
                c.execute(
                    "UPDATE alerts SET device = $4 WHERE tenant_id = $1 AND site_id = $2 AND alert_id = $3",
                    &[&a.tenant.as_str(), &a.site_id.as_str(), &i(a.alert_id), d],
                )
                .await
                .map_err(be)?;
            }
        }
        Ok(())
    }

    pub(super) async fn search_devices_sql(
        &self,
        tenant: &str,
        q: &DeviceSearch,
    ) -> Result<SearchPage> {
        let cursor =
            Cursor::decode(q).map_err(|e| CentralStoreError::InvalidCursor(e.to_string()))?;
        let mut ps = Params::default();
        let t = ps.p(tenant.to_string());
        let mut filter = format!("d.tenant_id = {t}");
        if let Some(s) = &q.site_id {
            filter += &format!(" AND d.site_id = {}", ps.p(s.to_string()));
        }
        if let Some(c) = &q.customer {
            filter += &format!(" AND d.customer = {}", ps.p(c.to_string()));
        }
        if !q.customers_allowed.is_empty() {
            let allowed: Vec<String> = q.customers_allowed.iter().map(|c| c.to_string()).collect();
            filter += &format!(" AND d.customer = ANY({})", ps.p(allowed));
        }
        if let Some(st) = q.status {
            filter += &format!(" AND d.status_rank = {}", ps.p(status_rank(st) as i16));
        }
        if q.critical {
            filter += " AND EXISTS (SELECT 1 FROM alerts a WHERE a.tenant_id = d.tenant_id \
                       AND a.site_id = d.site_id AND a.device = d.device \
                       AND a.state = 'firing' AND a.severity = 'critical')";
        }
        if let Some(tag) = &q.tag {
            filter += &format!(" AND d.tags @> ARRAY[{}::text]", ps.p(tag.clone()));
        }
        for w in &q.words {
            // A substring of hostname, device id, OS or a tag, or the
            // start of an address (trigram indexes).
            let lit = like_literal(w);
            let words = ps.p(format!("%{lit}%"));
            let ips = ps.p(format!("%\t{lit}%"));
            filter += &format!(" AND (d.words_lc LIKE {words} OR d.ips_lc LIKE {ips})");
        }
        let (num, text, text2) = key_exprs(q.sort);
        // Only the non-constant parts of the key order and compare (so the
        // hostname sort reads `devices_search_host` from the cursor).
        let mut key: Vec<&str> = Vec::new();
        for (e, constant) in [
            (num, num == "0::bigint"),
            (text, text == "''"),
            (text2, text2 == "''"),
        ] {
            if !constant {
                key.push(e);
            }
        }
        key.extend(["d.host_lc", "d.site_id", "d.device"]);
        let mut page_filter = filter.clone();
        if let Some(c) = &cursor {
            let mut vals: Vec<String> = Vec::new();
            if num != "0::bigint" {
                vals.push(ps.p(i(c.num)));
            }
            if text != "''" {
                vals.push(format!("{}::text", ps.p(c.text.clone())));
            }
            if text2 != "''" {
                vals.push(format!("{}::text", ps.p(c.text2.clone())));
            }
            vals.push(format!("{}::text", ps.p(c.host.clone())));
            vals.push(format!("{}::text", ps.p(c.site.clone())));
            vals.push(format!("{}::text", ps.p(c.device.clone())));
            let op = if q.descending { "<" } else { ">" };
            page_filter += &format!(" AND ({}) {op} ({})", key.join(", "), vals.join(", "));
        }
        let dir = if q.descending { " DESC" } else { "" };
        let order: Vec<String> = key.iter().map(|k| format!("{k}{dir}")).collect();
        // The same order over the page's own columns (the outer query).
        let outer: Vec<String> = key
            .iter()
            .map(|k| {
                let col = match *k {
                    k if k == num => "p.k_num",
                    k if k == text => "p.k_text",
                    k if k == text2 => "p.k_text2",
                    "d.host_lc" => "p.host_lc",
                    "d.site_id" => "p.site_id",
                    _ => "p.device",
                };
                format!("{col}{dir}")
            })
            .collect();
        let limit = q.limit.max(1);
        let lim = ps.p((limit + 1) as i64);
        // The page is chosen over the key columns only; bodies, site
        // names and alert counts are read for its rows alone.
        let page_sql = format!(
            "WITH p AS ( \
               SELECT d.site_id, d.device, {num} AS k_num, {text}::text AS k_text, \
                 {text2}::text AS k_text2, d.host_lc \
               FROM devices d LEFT JOIN sites s ON s.tenant_id = d.tenant_id AND s.site_id = d.site_id \
               WHERE {page_filter} ORDER BY {} LIMIT {lim}) \
             SELECT d.body, d.ips, d.tags, COALESCE(s.name, d.site_id), \
             (SELECT count(*) FROM alerts a WHERE a.tenant_id = d.tenant_id AND a.site_id = d.site_id \
              AND a.device = d.device AND a.state IN ('pending', 'firing')), \
             EXISTS (SELECT 1 FROM alerts a WHERE a.tenant_id = d.tenant_id AND a.site_id = d.site_id \
              AND a.device = d.device AND a.state = 'firing' AND a.severity = 'critical'), \
             p.k_num, p.k_text, p.k_text2, p.host_lc \
             FROM p JOIN devices d ON d.tenant_id = {t} AND d.site_id = p.site_id AND d.device = p.device \
             LEFT JOIN sites s ON s.tenant_id = d.tenant_id AND s.site_id = d.site_id \
             ORDER BY {}",
            order.join(", "),
            outer.join(", ")
        );
        // The count reads the same filter without the cursor (its
        // parameters are a prefix of the page's, unused ones excepted).
        let count_sql = format!("SELECT count(*) FROM devices d WHERE {filter}");
        let refs = ps.refs();
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let rows = tx.query(&page_sql, &refs).await.map_err(be)?;
        let n_count = count_params(&filter);
        let total: i64 = tx
            .query_one(&count_sql, &refs[..n_count])
            .await
            .map_err(be)?
            .get(0);
        tx.commit().await.map_err(be)?;
        let more = rows.len() > limit;
        let mut items = Vec::with_capacity(limit);
        let mut last = None;
        for r in rows.iter().take(limit) {
            let d: DeviceRow = dec(r.get::<_, &[u8]>(0))?;
            let k = search_keys(&d);
            let open: i64 = r.get(4);
            last = Some(Cursor {
                sort: sort_name(q.sort).into(),
                desc: q.descending,
                num: u(r.get(6)),
                text: r.get(7),
                text2: r.get(8),
                host: r.get(9),
                site: d.site_id.to_string(),
                device: d.device.clone(),
            });
            items.push(DeviceBrief {
                site_name: r.get(3),
                customer: d.customer.clone(),
                hostname: d.hostname.clone(),
                os: d.os.clone(),
                agent_version: d.agent_version.clone(),
                status: k.status,
                status_since_ms: d.status_since_ms,
                last_seen_ms: d.last_seen_ms,
                cpu: k.cpu,
                memory: k.memory,
                disk: k.disk,
                open_alerts: open as u32,
                critical: r.get(5),
                ips: r.get(1),
                tags: r.get(2),
                site_id: d.site_id,
                device: d.device,
            });
        }
        Ok(SearchPage {
            items,
            total: u(total),
            next: if more { last.map(|c| c.encode()) } else { None },
        })
    }

    pub(super) async fn fleet_counts_sql(
        &self,
        tenant: &str,
        allowed: &[CustomerId],
    ) -> Result<FleetCounts> {
        let allowed: Vec<&str> = allowed.iter().map(|c| c.as_str()).collect();
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let devices = tx
            .query(
                "SELECT d.site_id, d.status_rank, count(*), count(cr.device) \
                 FROM devices d LEFT JOIN ( \
                   SELECT DISTINCT site_id, device FROM alerts \
                   WHERE tenant_id = $1 AND state = 'firing' AND severity = 'critical' \
                     AND device IS NOT NULL) cr \
                   ON cr.site_id = d.site_id AND cr.device = d.device \
                 WHERE d.tenant_id = $1 AND (cardinality($2::text[]) = 0 OR d.customer = ANY($2)) \
                 GROUP BY 1, 2",
                &[&tenant, &allowed],
            )
            .await
            .map_err(be)?;
        let alerts = tx
            .query(
                "SELECT a.site_id, a.state, a.severity, count(*) FROM alerts a \
                 JOIN sites s ON s.tenant_id = a.tenant_id AND s.site_id = a.site_id \
                 WHERE a.tenant_id = $1 AND a.state IN ('pending', 'firing') \
                   AND (cardinality($2::text[]) = 0 OR s.customer = ANY($2)) \
                 GROUP BY 1, 2, 3",
                &[&tenant, &allowed],
            )
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)?;
        let mut per_site: BTreeMap<SiteId, SiteCounts> = BTreeMap::new();
        for r in &devices {
            let site = SiteId::from(r.get::<_, String>(0));
            let rank: Option<i16> = r.get(1);
            let n = u(r.get(2));
            let c = per_site.entry(site).or_default();
            c.devices += n;
            c.critical += u(r.get(3));
            let status = DeviceStatus::ALL
                .into_iter()
                .find(|s| rank == Some(status_rank(*s) as i16));
            match status {
                Some(DeviceStatus::Online) => c.online += n,
                Some(DeviceStatus::Offline) => c.offline += n,
                Some(DeviceStatus::Pending) => c.pending += n,
                Some(DeviceStatus::Revoked) => c.revoked += n,
                None => {}
            }
        }
        let mut sev: BTreeMap<Severity, u64> = BTreeMap::new();
        for r in &alerts {
            let site = SiteId::from(r.get::<_, String>(0));
            let state: &str = r.get(1);
            let n = u(r.get(3));
            let c = per_site.entry(site).or_default();
            if state == "firing" {
                c.alerts_firing += n;
                if let Some(s) = severity(r.get(2)) {
                    *sev.entry(s).or_default() += n;
                }
            } else {
                c.alerts_pending += n;
            }
        }
        Ok(FleetCounts {
            per_site,
            firing_by_severity: sev.into_iter().collect(),
        })
    }
}

/// The highest `$n` a SQL fragment uses (the count query passes only
/// the parameters up to it).
fn count_params(sql: &str) -> usize {
    let mut max = 0;
    let b = sql.as_bytes();
    let mut k = 0;
    while k < b.len() {
        if b[k] == b'$' {
            let mut j = k + 1;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if let Ok(n) = sql[k + 1..j].parse::<usize>() {
                max = max.max(n);
            }
            k = j;
        } else {
            k += 1;
        }
    }
    max
}
